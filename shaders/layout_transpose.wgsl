// Batched 2-D transpose out[b, p, q] = x[b, q, p] in 4x4 tiles: four vec4 loads, four vec4
// stores per invocation, no shared memory (lavapipe: loads are the cost, PLATFORM.md).
// Needs P % 4 == 0 and Q % 4 == 0. Sizes and bases are in vec4 units; tp x tq tiles per
// batch in this window box, p4 / q4 the full row lengths.
struct P {
  total: u32, nx: u32, tp: u32, tq: u32,
  p4: u32, q4: u32, bi: u32, bo: u32,
  pq4: u32, pad0: u32, pad1: u32, pad2: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> y: array<vec4<f32>>;

@compute @workgroup_size({{WG}})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x + gid.y * p.nx * {{WG}}u;
  if (i >= p.total) { return; }
  let tq = i % p.tq;
  let t = i / p.tq;
  let tp = t % p.tp;
  let b = t / p.tp;
  // input rows q .. q+3 (length P), columns p .. p+3
  let src = p.bi + b * p.pq4 + tq * 4u * p.p4 + tp;
  let r0 = x[src];
  let r1 = x[src + p.p4];
  let r2 = x[src + 2u * p.p4];
  let r3 = x[src + 3u * p.p4];
  let dst = p.bo + b * p.pq4 + tp * 4u * p.q4 + tq;
  y[dst] = vec4<f32>(r0.x, r1.x, r2.x, r3.x);
  y[dst + p.q4] = vec4<f32>(r0.y, r1.y, r2.y, r3.y);
  y[dst + 2u * p.q4] = vec4<f32>(r0.z, r1.z, r2.z, r3.z);
  y[dst + 3u * p.q4] = vec4<f32>(r0.w, r1.w, r2.w, r3.w);
}
