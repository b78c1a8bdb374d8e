// GroupNorm (+ optional SiLU), one workgroup of {{WG}} per (batch, group): a group is a
// contiguous run of n = (C / G) * S elements in NCHW. Two passes for f32 statistics (mean,
// then the biased variance around it, as torch), a third writes
// y = (x - mean) * rstd * gamma[c] + beta[c]. The group (at most a few MiB) stays in cache
// between passes. V is vec4<f32> when S % 4 == 0 (every channel row starts on a vec4), else f32.
// x and y may be windows of larger buffers: `base` is the window's element offset of item 0.
struct P {
  items: u32, n: u32, S: u32, Cg: u32,
  G: u32, item0: u32, base: u32, silu: u32,
  eps: f32, nx: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<{{V}}>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<{{V}}>;

const WG = {{WG}}u;
const W = {{W}}u;
var<workgroup> red: array<f32, WG>;

{{HELPERS}}

fn wgSum(v: f32, t: u32) -> f32 {
  red[t] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (t < s) { red[t] += red[t + s]; }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}

@compute @workgroup_size({{WG}})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let w = wid.x + wid.y * p.nx;
  if (w >= p.items) { return; }
  let g = (p.item0 + w) % p.G;
  let off = (p.base + w * p.n) / W;
  let nv = p.n / W;
  let sv = p.S / W;
  let fn_ = f32(p.n);

  // Two accumulators per lane: the loop is load-bound and this halves the dependency chain.
  var a0 = {{V}}(0.0);
  var a1 = {{V}}(0.0);
  var e = t;
  for (; e + WG < nv; e += 2u * WG) {
    a0 += x[off + e];
    a1 += x[off + e + WG];
  }
  if (e < nv) { a0 += x[off + e]; }
  let mean = wgSum(hsum(a0 + a1), t) / fn_;

  a0 = {{V}}(0.0);
  a1 = {{V}}(0.0);
  e = t;
  for (; e + WG < nv; e += 2u * WG) {
    let d0 = x[off + e] - mean;
    let d1 = x[off + e + WG] - mean;
    a0 += d0 * d0;
    a1 += d1 * d1;
  }
  if (e < nv) { let d0 = x[off + e] - mean; a0 += d0 * d0; }
  let rstd = inverseSqrt(wgSum(hsum(a0 + a1), t) / fn_ + p.eps);

  for (var ch = 0u; ch < p.Cg; ch++) {
    let c = g * p.Cg + ch;
    let sc = rstd * gamma[c];
    let sh = beta[c] - mean * sc;
    let o = off + ch * sv;
    for (var i = t; i < sv; i += WG) {
      var v = x[o + i] * sc + sh;
      if (p.silu != 0u) { v = v / (1.0 + exp(-v)); }
      y[o + i] = v;
    }
  }
}
