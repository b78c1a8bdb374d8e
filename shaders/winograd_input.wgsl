// Winograd F(2x2, 3x3), input side: for every 2x2 output tile (stride 1, padding 1) and four
// input channels, V = B^T d B of the 4x4 input patch d (zero outside the image), written as
// 16 matrices V[e] (tiles, Ci), e = 4 * i + j: the a operand of one batched matmul.
// One invocation per (tile, 4 channels), channels fastest.
struct P { B: u32, Ci: u32, H: u32, W: u32, tx: u32, t0: u32, nt: u32, nx: u32, xOff: u32, p0: u32, p1: u32, p2: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> v: array<vec4<f32>>;

//#include winograd_tile

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x + gid.y * p.nx * 64u;
  let c4n = p.Ci / 4u;
  if (i >= p.nt * c4n) { return; }
  let tile = tileOf(i, c4n, p.t0, p.tx, p.H);
  let hw = p.H * p.W;
  let cb = p.xOff + (tile.b * p.Ci + 4u * tile.c4) * hw;
  // d[r][c]: input pixel (2ty - 1 + r, 2tx - 1 + c) of the four channels
  var d: array<vec4<f32>, 16>;
  for (var r = 0u; r < 4u; r++) {
    let y = i32(2u * tile.ty + r) - 1;
    for (var c = 0u; c < 4u; c++) {
      let xx = i32(2u * tile.tx + c) - 1;
      if (y >= 0 && y < i32(p.H) && xx >= 0 && xx < i32(p.W)) {
        let o = cb + u32(y) * p.W + u32(xx);
        d[4u * r + c] = vec4<f32>(x[o], x[o + hw], x[o + 2u * hw], x[o + 3u * hw]);
      } else {
        d[4u * r + c] = vec4<f32>(0.0);
      }
    }
  }
  // t = B^T d, B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]]
  var s: array<vec4<f32>, 16>;
  for (var c = 0u; c < 4u; c++) {
    s[c] = d[c] - d[8u + c];
    s[4u + c] = d[4u + c] + d[8u + c];
    s[8u + c] = d[8u + c] - d[4u + c];
    s[12u + c] = d[4u + c] - d[12u + c];
  }
  // V = t B
  let plane = p.nt * c4n;
  let o = tile.tl * c4n + tile.c4;
  for (var r = 0u; r < 4u; r++) {
    v[(4u * r) * plane + o] = s[4u * r] - s[4u * r + 2u];
    v[(4u * r + 1u) * plane + o] = s[4u * r + 1u] + s[4u * r + 2u];
    v[(4u * r + 2u) * plane + o] = s[4u * r + 2u] - s[4u * r + 1u];
    v[(4u * r + 3u) * plane + o] = s[4u * r + 1u] - s[4u * r + 3u];
  }
}
