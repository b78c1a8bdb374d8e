// Generic strided map: out[io] = OP(a[ia], b[ib]) over a domain of up to 6 dims, each
// operand with its own element strides (0 = broadcast) and base offset inside its bound
// window. Serves broadcast binary ops, unary ops on any input, geglu and every layout copy
// (permute / slice / concat). The kernel is the 'naive' variant: one element per invocation.
// Inputs and loaders (ld_a, ld_b) are declared by the dispatcher, f32 or packed f16.
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
@group(0) @binding({{OUT_BINDING}}) var<storage, read_write> o: array<f32>;

fn op(x: f32, y: f32) -> f32 {
  return {{OP}};
}

@compute @workgroup_size({{WG}})
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  let i = g.x + g.y * p.nx * {{WG}}u;
  if (i >= p.n) { return; }
  var rem = i;
  var io = p.bo;
  var ia = p.ba;
  var ib = p.bb;
  for (var k = i32(p.rank) - 1; k >= 0; k--) {
    let q = u32(k) >> 2u;
    let r = u32(k) & 3u;
    let d = p.dims[q][r];
    let idx = rem % d;
    rem = rem / d;
    io += idx * p.so[q][r];
    ia += idx * p.sa[q][r];
    ib += idx * p.sb[q][r];
  }
  o[io] = op(ld_a(ia), {{LOAD_B}});
}
