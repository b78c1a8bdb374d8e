// im2col for conv2d's lavapipe path (src/kernels/im2col.ts): for output pixels
// [n0, n0 + nn) of one image, rows of K = Ci * kh * kw values in the weight's (ci, ky, kx)
// order, col[n * K + k] = x[ci, oy * stride + ky - pt, ox * stride + kx - pl] (0 in the
// padding), K a multiple of 4. One invocation per 4 consecutive k of one pixel.
struct P { Ci: u32, H: u32, W: u32, Wo: u32, kh: u32, kw: u32, stride: u32, pt: u32, pl: u32, n0: u32, nn: u32, K4: u32, xOff: u32, nx: u32, p0: u32, p1: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> col: array<vec4<f32>>;

fn tap(oy: u32, ox: u32, k: u32) -> f32 {
  let T = p.kh * p.kw;
  let ci = k / T;
  let t = k % T;
  let iy = i32(oy * p.stride + t / p.kw) - i32(p.pt);
  let ix = i32(ox * p.stride + t % p.kw) - i32(p.pl);
  if (iy < 0 || iy >= i32(p.H) || ix < 0 || ix >= i32(p.W)) { return 0.0; }
  return x[p.xOff + (ci * p.H + u32(iy)) * p.W + u32(ix)];
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x + gid.y * p.nx * 64u;
  if (i >= p.nn * p.K4) { return; }
  let o = p.n0 + i / p.K4;
  let oy = o / p.Wo;
  let ox = o % p.Wo;
  let k = 4u * (i % p.K4);
  col[i] = vec4<f32>(tap(oy, ox, k), tap(oy, ox, k + 1u), tap(oy, ox, k + 2u), tap(oy, ox, k + 3u));
}
