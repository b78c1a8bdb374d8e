// Softmax over the last axis, one workgroup of 64 per row with shared-memory tree
// reductions for the max and the sum (the usual GPU shape).
struct P { rows: u32, N: u32, base: u32, nx: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<{{V}}>;
@group(0) @binding(2) var<storage, read_write> y: array<{{V}}>;

const WG = 64u;
const W = {{W}}u;
var<workgroup> red: array<f32, WG>;

{{HELPERS}}

fn wgReduce(v: f32, t: u32, isMax: bool) -> f32 {
  red[t] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (t < s) { red[t] = select(red[t] + red[t + s], max(red[t], red[t + s]), isMax); }
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
  let nv = p.N / W;
  let off = (p.base + row * p.N) / W;
  var m = -3.0e38;
  for (var c = t; c < nv; c += WG) { m = max(m, hmax(x[off + c])); }
  let mx = wgReduce(m, t, true);
  var s = {{V}}(0.0);
  for (var c = t; c < nv; c += WG) { s += exp(x[off + c] - mx); }
  let inv = 1.0 / wgReduce(hsum(s), t, false);
  for (var c = t; c < nv; c += WG) { y[off + c] = exp(x[off + c] - mx) * inv; }
}
