// Contiguous same-shape map, four elements per invocation through vec4 loads (loads are
// what costs on lavapipe, PLATFORM.md). Needs numel % 4 == 0 and 16-byte aligned bases.
struct P {
  n4: u32, nx: u32, ba: u32, bb: u32,
  bo: u32, s0: f32, s1: f32, pad: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
{{DECL_B}}
@group(0) @binding({{OUT_BINDING}}) var<storage, read_write> o: array<vec4<f32>>;

fn op(x: f32, y: f32) -> f32 {
  return {{OP}};
}

@compute @workgroup_size({{WG}})
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  let i = g.x + g.y * p.nx * {{WG}}u;
  if (i >= p.n4) { return; }
  let x = a[p.ba + i];
  let y = {{LOAD_B}};
  o[p.bo + i] = vec4<f32>(op(x.x, y.x), op(x.y, y.y), op(x.z, y.z), op(x.w, y.w));
}
