// Naive GroupNorm (+ optional SiLU): one invocation per (batch, group), scalar loads, two
// passes for the statistics and one to write. The reference variant 'naive'.
struct P {
  items: u32, n: u32, S: u32, Cg: u32,
  G: u32, item0: u32, base: u32, silu: u32,
  eps: f32, nx: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let w = (wid.x + wid.y * p.nx) * 64u + li;
  if (w >= p.items) { return; }
  let g = (p.item0 + w) % p.G;
  let off = p.base + w * p.n;
  var s = 0.0;
  for (var e = 0u; e < p.n; e++) { s += x[off + e]; }
  let mean = s / f32(p.n);
  var s2 = 0.0;
  for (var e = 0u; e < p.n; e++) { let d = x[off + e] - mean; s2 += d * d; }
  let rstd = inverseSqrt(s2 / f32(p.n) + p.eps);
  for (var e = 0u; e < p.n; e++) {
    let c = g * p.Cg + e / p.S;
    var v = (x[off + e] - mean) * rstd * gamma[c] + beta[c];
    if (p.silu != 0u) { v = v / (1.0 + exp(-v)); }
    y[off + e] = v;
  }
}
