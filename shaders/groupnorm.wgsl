// GroupNorm (+ optional SiLU), one workgroup of {{WG}} per (batch, group): a group is a
// contiguous run of n = (C / G) * S elements in NCHW. One pass of shifted f32 sums gives the
// mean and the biased variance (as torch), a second writes
// y = (x - mean) * rstd * gamma[c] + beta[c]. The group (at most a few MiB) stays in cache
// between passes. V is vec4<f32> when S % 4 == 0 (every channel row starts on a vec4), else f32.
// x and y may be windows of larger buffers: `base` is the window's element offset of item 0.
// Tried on lavapipe (2026-11-26, 320x64x64 G32 +silu, worker CPU time), all slower than this:
// reading x once into a private array of compile-time size (one workgroup of 8..1024 per
// group, every loop unrolled so the indices are constants): 2-3.5x slower, the larger the
// workgroup the worse; the same with the channel loop rolled (array indexed by a uniform
// counter): 2x slower; every lane of a subgroup loading the same vec4s (hoping for the
// uniform-address load path): ~3x slower; workgroups of 16 / 64 instead of 8: 5-20% slower;
// two vec4 per loop iteration: no measurable change. Each vec4 load / store is ~35 x86
// instructions (a per-lane, per-word bounds-checked sequence), a rolled loop keeps them in
// the op cache, and straight-line code of that size does not fit it. 2026-11-27: the group
// in registers with one subgroupAdd + barrier per reduction (workgroups of 256-1024, RC vec4
// per channel per invocation) was 2.2-3.6x slower, and ~2x slower even with the reductions
// removed (docs/KERNELS.md): large workgroups with unrolled loops are slow on lavapipe.
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

  // One pass of shifted sums over x - K: the cancellation in E[(x-K)^2] - E[x-K]^2 costs
  // digits in proportion to ((mean - K) / std)^2, so K is the mean of the group's first
  // (up to) 64 values, which every lane computes alike. Cheaper than a second pass over the
  // group (the loads are the cost on lavapipe) and within 1e-4 of the two-pass reference
  // on offset data (test/kernels-norm.test.ts).
  let nk = min(nv, 64u / W);
  var k0 = {{V}}(0.0);
  for (var e = 0u; e < nk; e++) { k0 += x[off + e]; }
  let K = hsum(k0) / f32(nk * W);
  var a0 = {{V}}(0.0);
  var a1 = {{V}}(0.0);
  for (var e = t; e < nv; e += WG) {
    let d0 = x[off + e] - K;
    a0 += d0;
    a1 += d0 * d0;
  }
  let m1 = wgSum(hsum(a0), t) / fn_;
  let m2 = wgSum(hsum(a1), t) / fn_;
  let mean = K + m1;
  let rstd = inverseSqrt(max(m2 - m1 * m1, 0.0) + p.eps);

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
