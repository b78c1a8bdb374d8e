// Winograd F(TM x TM, 3x3), input side: for every TM x TM output tile (stride 1, padding 1)
// and four input channels, V = B^T d B of the TA x TA input patch d (TA = TM + 2, zero
// outside the image), written as TA * TA matrices V[e] (tiles, Ci), e = TA * i + j: the a
// operand of one batched matmul. One invocation per (tile, 4 channels), channels fastest.
// The transform code is generated from B^T by winograd.ts (zero terms left out).
struct P { B: u32, Ci: u32, H: u32, W: u32, tx: u32, t0: u32, nt: u32, nx: u32, xOff: u32, p0: u32, p1: u32, p2: u32 }
@group(0) @binding(0) var<uniform> p: P;
//#if X_TEX
// x as an rgba32float 2D-array texture: texel (col, row, image * Ci / 4 + c / 4) holds
// channels c .. c + 3 of one pixel, so a patch point of the four channels is one fetch.
@group(0) @binding(4) var xT: texture_2d_array<f32>;
//#elif IN_V4
// TM = 4 or 8 and W % 4 == 0: each patch row is x[TM tx - 1], TM / 4 aligned vec4, x[TM tx + TM]
// (xs: the same buffer as scalars, for the two edge values: cheaper than a vec4 load)
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> xs: array<f32>;
fn ldx(i: u32) -> f32 { return xs[i]; }
//#elif IN_V2
// TM = 6 and W % 2 == 0: each patch row is x[6 tx - 1], three aligned vec2, x[6 tx + 6]
@group(0) @binding(1) var<storage, read> x: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read> xs: array<f32>;
fn ldx(i: u32) -> f32 { return xs[i]; }
//#else
@group(0) @binding(1) var<storage, read> x: array<f32>;
//#endif
@group(0) @binding(2) var<storage, read_write> v: array<vec4<f32>>;

//#include winograd_tile
const TA = {{TA}}u;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x + gid.y * p.nx * 64u;
  let c4n = p.Ci / 4u;
  if (i >= p.nt * c4n) { return; }
  let tile = tileOf(i, c4n, p.t0, p.tx, p.H);
  let hw = p.H * p.W;
  let cb = p.xOff + (tile.b * p.Ci + 4u * tile.c4) * hw;
  // d[TA * r + c]: input pixel (TM ty - 1 + r, TM tx - 1 + c) of the four channels
  var d: array<vec4<f32>, {{TAA}}>;
//#if X_TEX
  let layer = tile.b * c4n + tile.c4;
  for (var r = 0u; r < TA; r++) {
    let y = i32(TM * tile.ty + r) - 1;
    let yin = y >= 0 && y < i32(p.H);
    for (var c = 0u; c < TA; c++) {
      let xx = i32(TM * tile.tx + c) - 1;
      let t = textureLoad(xT, vec2<i32>(clamp(xx, 0, i32(p.W) - 1), clamp(y, 0, i32(p.H) - 1)), layer, 0);
      d[TA * r + c] = select(vec4<f32>(0.0), t, yin && xx >= 0 && xx < i32(p.W));
    }
  }
//#elif IN_V4
  let x0 = TM * tile.tx;
  for (var r = 0u; r < TA; r++) {
    let y = i32(TM * tile.ty + r) - 1;
    for (var k = 0u; k < 4u; k++) {
      var left = 0.0;
      var mid = array<vec4<f32>, TM / 4u>();
      var right = 0.0;
      if (y >= 0 && y < i32(p.H)) {
        let o = cb + k * hw + u32(y) * p.W + x0;
        for (var j = 0u; j < TM / 4u; j++) {
          if (x0 + 4u * j < p.W) { mid[j] = x[(o >> 2u) + j]; }
        }
        if (x0 > 0u) { left = ldx(o - 1u); }
        if (x0 + TM < p.W) { right = ldx(o + TM); }
      }
      d[TA * r][k] = left;
      for (var j = 0u; j < TM / 4u; j++) {
        d[TA * r + 1u + 4u * j][k] = mid[j].x;
        d[TA * r + 2u + 4u * j][k] = mid[j].y;
        d[TA * r + 3u + 4u * j][k] = mid[j].z;
        d[TA * r + 4u + 4u * j][k] = mid[j].w;
      }
      d[TA * r + TM + 1u][k] = right;
    }
  }
//#elif IN_V2
  let x0 = TM * tile.tx;
  for (var r = 0u; r < TA; r++) {
    let y = i32(TM * tile.ty + r) - 1;
    for (var k = 0u; k < 4u; k++) {
      var left = 0.0;
      var mid = array<vec2<f32>, 3>();
      var right = 0.0;
      if (y >= 0 && y < i32(p.H)) {
        let o = cb + k * hw + u32(y) * p.W + x0;
        for (var j = 0u; j < 3u; j++) {
          if (x0 + 2u * j < p.W) { mid[j] = x[(o >> 1u) + j]; }
        }
        if (x0 > 0u) { left = ldx(o - 1u); }
        if (x0 + 6u < p.W) { right = ldx(o + 6u); }
      }
      d[TA * r][k] = left;
      for (var j = 0u; j < 3u; j++) {
        d[TA * r + 1u + 2u * j][k] = mid[j].x;
        d[TA * r + 2u + 2u * j][k] = mid[j].y;
      }
      d[TA * r + 7u][k] = right;
    }
  }
//#else
  for (var r = 0u; r < TA; r++) {
    let y = i32(TM * tile.ty + r) - 1;
    for (var c = 0u; c < TA; c++) {
      let xx = i32(TM * tile.tx + c) - 1;
      if (y >= 0 && y < i32(p.H) && xx >= 0 && xx < i32(p.W)) {
        let o = cb + u32(y) * p.W + u32(xx);
        d[TA * r + c] = vec4<f32>(x[o], x[o + hw], x[o + 2u * hw], x[o + 3u * hw]);
      } else {
        d[TA * r + c] = vec4<f32>(0.0);
      }
    }
  }
//#endif
  let plane = p.nt * c4n;
  let o = tile.tl * c4n + tile.c4;
{{TRANSFORM}}
}
