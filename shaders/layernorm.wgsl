// LayerNorm over the last axis, one invocation per row (no barriers: the lavapipe shape;
// also the 'naive' variant with V = f32). Two passes for f32 statistics (mean, then the
// biased variance around it) and one to write. V is vec4<f32> when C % 4 == 0.
// x and y may be windows of larger buffers: `base` is the window's element offset of row 0.
struct P { rows: u32, C: u32, base: u32, nx: u32, eps: f32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<{{V}}>;
@group(0) @binding(2) var<storage, read> gamma: array<{{V}}>;
@group(0) @binding(3) var<storage, read> beta: array<{{V}}>;
@group(0) @binding(4) var<storage, read_write> y: array<{{V}}>;

const W = {{W}}u;

{{HELPERS}}

@compute @workgroup_size({{WG}})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let row = (wid.x + wid.y * p.nx) * {{WG}}u + li;
  if (row >= p.rows) { return; }
  let cv = p.C / W;
  let off = (p.base + row * p.C) / W;
  var a = {{V}}(0.0);
  for (var c = 0u; c < cv; c++) { a += x[off + c]; }
  let mean = hsum(a) / f32(p.C);
  a = {{V}}(0.0);
  for (var c = 0u; c < cv; c++) { let d = x[off + c] - mean; a += d * d; }
  let rstd = inverseSqrt(hsum(a) / f32(p.C) + p.eps);
  for (var c = 0u; c < cv; c++) { y[off + c] = (x[off + c] - mean) * rstd * gamma[c] + beta[c]; }
}
