// Nearest 2x upsampling of (B, C, H, W) viewed as rows (B*C*H, W): input row r becomes
// output rows 2r and 2r+1 (plane*2H + 2y = 2r), each element repeated twice.
// One input element per invocation, four stores.
struct P {
  total: u32, cols: u32, nx: u32, bi: u32,
  bo: u32, si: u32, so: u32, ow: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size({{WG}})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x + gid.y * p.nx * {{WG}}u;
  if (i >= p.total) { return; }
  let c = i % p.cols;
  let r = i / p.cols;
  let v = x[p.bi + r * p.si + c];
  let o = p.bo + r * p.so + 2u * c;
  y[o] = v;
  y[o + 1u] = v;
  y[o + p.ow] = v;
  y[o + p.ow + 1u] = v;
}
