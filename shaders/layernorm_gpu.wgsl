// LayerNorm over the last axis, one workgroup of 64 per row with a shared-memory tree
// reduction (the usual GPU shape). Same statistics as layernorm.wgsl.
struct P { rows: u32, C: u32, base: u32, nx: u32, eps: f32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<{{V}}>;
@group(0) @binding(2) var<storage, read> gamma: array<{{V}}>;
@group(0) @binding(3) var<storage, read> beta: array<{{V}}>;
@group(0) @binding(4) var<storage, read_write> y: array<{{V}}>;

const WG = 64u;
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

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let row = wid.x + wid.y * p.nx;
  if (row >= p.rows) { return; }
  let cv = p.C / W;
  let off = (p.base + row * p.C) / W;
  var a = {{V}}(0.0);
  for (var c = t; c < cv; c += WG) { a += x[off + c]; }
  let mean = wgSum(hsum(a), t) / f32(p.C);
  a = {{V}}(0.0);
  for (var c = t; c < cv; c += WG) { let d = x[off + c] - mean; a += d * d; }
  let rstd = inverseSqrt(wgSum(hsum(a), t) / f32(p.C) + p.eps);
  for (var c = t; c < cv; c += WG) { y[off + c] = (x[off + c] - mean) * rstd * gamma[c] + beta[c]; }
}
