// Softmax over the last axis, one invocation per row (the lavapipe shape; also 'naive' with
// V = f32): max, then the sum of exp(x - max), then the write; f32 throughout.
// x and y may be windows of larger buffers: `base` is the window's element offset of row 0.
struct P { rows: u32, N: u32, base: u32, nx: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<{{V}}>;
@group(0) @binding(2) var<storage, read_write> y: array<{{V}}>;

const W = {{W}}u;

{{HELPERS}}

@compute @workgroup_size({{WG}})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let row = (wid.x + wid.y * p.nx) * {{WG}}u + li;
  if (row >= p.rows) { return; }
  let nv = p.N / W;
  let off = (p.base + row * p.N) / W;
  var m = x[off];
  for (var c = 1u; c < nv; c++) { m = max(m, x[off + c]); }
  let mx = hmax(m);
  var s = {{V}}(0.0);
  for (var c = 0u; c < nv; c++) { s += exp(x[off + c] - mx); }
  let inv = 1.0 / hsum(s);
  for (var c = 0u; c < nv; c++) { y[off + c] = exp(x[off + c] - mx) * inv; }
}
