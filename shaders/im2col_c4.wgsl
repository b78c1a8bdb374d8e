// im2col for input channels in multiples of 4 (src/kernels/im2col.ts): one invocation per
// output pixel and 4 input channels writes their 4 * KH * KW consecutive values of the
// pixel's row, col[n * K + ci * KH * KW + KW * ky + kx] = x[ci, oy S + ky - pt, ox S + kx - pl]
// (0 in the padding), as KH * KW aligned vec4. Kernel size and stride are baked in, so the
// only divisions by uniforms are the pixel's row and column and the channel group (the
// generic im2col.wgsl divides per value: on lavapipe each is a per-lane scalar division).
struct P { Ci: u32, H: u32, W: u32, Wo: u32, kh: u32, kw: u32, stride: u32, pt: u32, pl: u32, n0: u32, nn: u32, K4: u32, xOff: u32, nx: u32, p0: u32, p1: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> col: array<vec4<f32>>;

const KH = {{KH}}u;
const KW = {{KW}}u;
const S = {{S}}u;
const T = KH * KW;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x + gid.y * p.nx * 64u;
  let c4n = p.Ci / 4u;
  if (i >= p.nn * c4n) { return; }
  let c4 = i % c4n;
  let o = p.n0 + i / c4n;
  let oy = o / p.Wo;
  let ox = o % p.Wo;
  let hw = p.H * p.W;
  let iy0 = i32(oy * S) - i32(p.pt);
  let ix0 = i32(ox * S) - i32(p.pl);
  // v[T * cc + KW * ky + kx]
  var v: array<f32, 4u * T>;
  for (var cc = 0u; cc < 4u; cc++) {
    let cb = p.xOff + (4u * c4 + cc) * hw;
    for (var ky = 0u; ky < KH; ky++) {
      let iy = iy0 + i32(ky);
      let rowIn = iy >= 0 && iy < i32(p.H);
      for (var kx = 0u; kx < KW; kx++) {
        let ix = ix0 + i32(kx);
        var val = 0.0;
        if (rowIn && ix >= 0 && ix < i32(p.W)) { val = x[cb + u32(iy) * p.W + u32(ix)]; }
        v[T * cc + KW * ky + kx] = val;
      }
    }
  }
  // the row of pixel n - n0 starts at vec4 (n - n0) * K4; this group's values at c4 * T
  let base = (o - p.n0) * p.K4 + c4 * T;
  for (var j = 0u; j < T; j++) { col[base + j] = vec4<f32>(v[4u * j], v[4u * j + 1u], v[4u * j + 2u], v[4u * j + 3u]); }
}
