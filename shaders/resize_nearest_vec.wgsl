// Nearest 2x upsampling, two input elements per invocation: vec4(a, a, b, b) stored into
// output rows 2r and 2r+1 (two vec4 stores instead of eight scalar ones). Needs W even;
// the output side is indexed in vec4 units (bo, so, ow in vec4s).
struct P {
  total: u32, cols: u32, nx: u32, bi: u32,
  bo: u32, si: u32, so: u32, ow: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<vec4<f32>>;

@compute @workgroup_size({{WG}})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x + gid.y * p.nx * {{WG}}u;
  if (i >= p.total) { return; }
  let c = i % p.cols; // pair index within the row
  let r = i / p.cols;
  let s = p.bi + r * p.si + 2u * c;
  let a = x[s];
  let b = x[s + 1u];
  let v = vec4<f32>(a, a, b, b);
  let o = p.bo + r * p.so + c;
  y[o] = v;
  y[o + p.ow] = v;
}
