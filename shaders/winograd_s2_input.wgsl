// Winograd F(TM x TM, 2x2) on a stride-2 3x3 conv with padding 0 top/left and 1 bottom/right
// (diffusers' Downsample2D in the VAE encoder), input side. The conv is a 2x2 stride-1 conv
// over x split into its four phases: channel (ci, p, q) of the split image at (i, j) is
// x[ci, 2i + p, 2j + q], zero past the bottom and right edges (winograd.ts, winogradS2Applies).
// Per TM x TM output tile and input channel ci, V = B^T d B of the TA x TA (TA = TM + 1)
// patch d of the four phases (one vec4: phase 2p + q), written as TA * TA matrices V[e]
// (tiles, 4 Ci): the a operand of one batched matmul with K = 4 Ci. One invocation per
// (tile, ci), ci fastest. Each of the patch's 2 TA rows of x is read as RV aligned vec4
// (W % 4 == 0, so each vec4 is wholly in or out of the row).
struct P { B: u32, Ci: u32, H: u32, W: u32, tx: u32, t0: u32, nt: u32, nx: u32, xOff: u32, Ho: u32, p1: u32, p2: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> v: array<vec4<f32>>;

//#include winograd_tile
const TA = {{TA}}u;
const RV = (2u * TA + 3u) / 4u;  // vec4 per row of the patch

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x + gid.y * p.nx * 64u;
  if (i >= p.nt * p.Ci) { return; }
  let tile = tileOf(i, p.Ci, p.t0, p.tx, p.Ho);  // tile.c4: the input channel here
  let hw = p.H * p.W;
  let cb = p.xOff + (tile.b * p.Ci + tile.c4) * hw;
  let x0 = 2u * TM * tile.tx;
  // d[TA * r + c]: phases (p, q) of split pixel (TM ty + r, TM tx + c) as (00, 01, 10, 11)
  var d: array<vec4<f32>, {{TAA}}>;
  for (var r = 0u; r < TA; r++) {
    for (var ph = 0u; ph < 2u; ph++) {
      let y = 2u * (TM * tile.ty + r) + ph;
      var row = array<vec4<f32>, RV>();
      if (y < p.H) {
        let o = (cb + y * p.W + x0) >> 2u;
        for (var j = 0u; j < RV; j++) {
          if (x0 + 4u * j < p.W) { row[j] = x[o + j]; }
        }
      }
      for (var c = 0u; c < TA; c++) {
        d[TA * r + c][2u * ph] = row[c / 2u][2u * (c % 2u)];
        d[TA * r + c][2u * ph + 1u] = row[c / 2u][2u * (c % 2u) + 1u];
      }
    }
  }
  let plane = p.nt * p.Ci;
  let o = tile.tl * p.Ci + tile.c4;
{{TRANSFORM}}
}
