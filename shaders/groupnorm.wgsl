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
  eps: f32, nx: u32, imgW: u32, pad: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<{{V}}>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
//#if OUT_TEX
// y into the Winograd input transform's x texture (winograd_input.wgsl, X_TEX): texel (col,
// row, image * C / 4 + c / 4) holds channels c .. c + 3 of one pixel. Needs V = vec4 (S % 4
// == 0) and Cg % 4 == 0, so that a texel's four channels are of one group.
@group(0) @binding(5) var yT: texture_storage_2d_array<rgba32float, write>;
//#else
@group(0) @binding(4) var<storage, read_write> y: array<{{V}}>;
//#endif

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

//#if OUT_TEX
  // Four channels x four pixels per step: four vec4 loads, four texel stores.
  let item = p.item0 + w;
  let layer0 = (item / p.G) * (p.G * p.Cg / 4u) + g * (p.Cg / 4u);
  for (var q = 0u; q < p.Cg / 4u; q++) {
    let c = g * p.Cg + 4u * q;
    let sc = rstd * vec4<f32>(gamma[c], gamma[c + 1u], gamma[c + 2u], gamma[c + 3u]);
    let sh = vec4<f32>(beta[c], beta[c + 1u], beta[c + 2u], beta[c + 3u]) - mean * sc;
    let o = off + 4u * q * sv;
    for (var i = t; i < sv; i += WG) {
      let v0 = x[o + i];
      let v1 = x[o + sv + i];
      let v2 = x[o + 2u * sv + i];
      let v3 = x[o + 3u * sv + i];
      // imgW % 4 == 0: the four pixels are on one row
      let row = (4u * i) / p.imgW;
      let col = 4u * i - row * p.imgW;
      for (var j = 0u; j < 4u; j++) {
        var v = vec4<f32>(v0[j], v1[j], v2[j], v3[j]) * sc + sh;
        if (p.silu != 0u) { v = v / (1.0 + exp(-v)); }
        textureStore(yT, vec2<u32>(col + j, row), layer0 + q, v);
      }
    }
  }
//#else
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
//#endif
}
