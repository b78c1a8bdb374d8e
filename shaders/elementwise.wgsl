// Generic strided map: out[io] = OP(a[ia], b[ib]) over a domain of up to 6 dims, each
// operand with its own element strides (0 = broadcast) and base offset inside its bound
// window. Serves broadcast binary ops, unary ops on any input, geglu and every layout copy
// (permute / slice / concat). The dispatcher generates the index code unrolled for the
// domain's rank (no dynamic uniform indexing, one div/mod per inner dim) and, when the
// innermost dim allows, a vec4 form that handles four outputs per invocation.
// Inputs and loaders are declared by the dispatcher (f32, vec4 of f32, or packed f16).
struct P {
  n: u32, nx: u32, rank: u32, bo: u32,
  ba: u32, bb: u32, s0: f32, s1: f32,
  dims: array<vec4<u32>, 2>,
  so: array<vec4<u32>, 2>,
  sa: array<vec4<u32>, 2>,
  sb: array<vec4<u32>, 2>,
}
@group(0) @binding(0) var<uniform> p: P;
{{DECL}}

fn op(x: f32, y: f32) -> f32 {
  return {{OP}};
}

@compute @workgroup_size({{WG}})
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  let i = g.x + g.y * p.nx * {{WG}}u;
  if (i >= p.n) { return; }
{{INDEX}}
{{BODY}}
}
