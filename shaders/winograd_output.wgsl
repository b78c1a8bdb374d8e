// Winograd F(TM x TM, 3x3), output side: Y = A^T M A for every tile and four output channels,
// from the batched matmul's TA * TA matrices M[e] (tiles, Co) (a buffer, or a texture on a CPU
// adapter: M_TEX) of a chunk of Co output
// channels starting at co0; then bias, activation (none or SiLU) and residual, stored into
// the (B, CoAll, Ho, Wo) output (edge tiles clipped). The transform code is generated from A^T
// by winograd.ts.
struct P { B: u32, Co: u32, Ho: u32, Wo: u32, tx: u32, t0: u32, nt: u32, nx: u32, flags: u32, unused: u32, co0: u32, CoAll: u32 }
@group(0) @binding(0) var<uniform> p: P;
//#if M_TEX
// M as the matmul wrote it into a texture: texel (c4, tile, e) (on lavapipe a vectorised fetch)
@group(0) @binding(1) var mT: texture_2d_array<f32>;
//#else
@group(0) @binding(1) var<storage, read> m: array<vec4<f32>>;
//#endif
//#if BIAS_F16
@group(0) @binding(2) var<storage, read> bias: array<u32>;
fn ldBias(i: u32) -> f32 { return unpack2x16float(bias[i >> 1u])[i & 1u]; }
//#else
@group(0) @binding(2) var<storage, read> bias: array<f32>;
fn ldBias(i: u32) -> f32 { return bias[i]; }
//#endif
//#if OUT_V4
// TM = 4 or 8 and Wo % 4 == 0: each tile row of a channel is TM / 4 aligned vec4 (each all in or all out)
@group(0) @binding(3) var<storage, read> res: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> out: array<vec4<f32>>;
//#elif OUT_V2
// TM = 6 and Wo % 2 == 0: each tile row of a channel is three aligned vec2 (all in or all out)
@group(0) @binding(3) var<storage, read> res: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read_write> out: array<vec2<f32>>;
//#else
@group(0) @binding(3) var<storage, read> res: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
//#endif

// flags: the bias only (matmul.ts FLAG.BIAS). The activation (winogradApplies admits none or
// silu) and the residual are defines, ACT_SILU and RES: measured faster on lavapipe than
// branches on uniforms (VAE encoder, all output transforms 781-818 -> 694-727 ms)
const HAS_BIAS = 1u;

//#include winograd_tile
const TA = {{TA}}u;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x + gid.y * p.nx * 64u;
  let c4n = p.Co / 4u;
  if (i >= p.nt * c4n) { return; }
  let tile = tileOf(i, c4n, p.t0, p.tx, p.Ho);
  var q: array<vec4<f32>, {{TAA}}>;
//#if M_TEX
  for (var e = 0u; e < {{TAA}}u; e++) { q[e] = textureLoad(mT, vec2<u32>(tile.c4, tile.tl), e, 0); }
//#else
  let plane = p.nt * c4n;
  let o = tile.tl * c4n + tile.c4;
  for (var e = 0u; e < {{TAA}}u; e++) { q[e] = m[e * plane + o]; }
//#endif
  // y[TM * r + c]: output (TM ty + r, TM tx + c)
  var y: array<vec4<f32>, {{TMM}}>;
{{TRANSFORM}}
  var bv = vec4<f32>(0.0);
  if ((p.flags & HAS_BIAS) != 0u) {
    let co = p.co0 + 4u * tile.c4;
    bv = vec4<f32>(ldBias(co), ldBias(co + 1u), ldBias(co + 2u), ldBias(co + 3u));
  }
  let hw = p.Ho * p.Wo;
//#if OUT_V4
  for (var r = 0u; r < TM; r++) {
    let oy = TM * tile.ty + r;
    if (oy < p.Ho) {
      for (var k = 0u; k < 4u; k++) {
        let row = ((tile.b * p.CoAll + p.co0 + 4u * tile.c4 + k) * hw + oy * p.Wo + TM * tile.tx) >> 2u;
        for (var j = 0u; j < TM / 4u; j++) {
          if (TM * tile.tx + 4u * j < p.Wo) {
            let c = TM * r + 4u * j;
            var val = vec4<f32>(y[c][k], y[c + 1u][k], y[c + 2u][k], y[c + 3u][k]) + vec4<f32>(bv[k]);
//#if ACT_SILU
            val = val / (vec4<f32>(1.0) + exp(-val));
//#endif
            let o = row + j;
//#if RES
            val += res[o];
//#endif
            out[o] = val;
          }
        }
      }
    }
  }
//#elif OUT_V2
  for (var r = 0u; r < TM; r++) {
    let oy = TM * tile.ty + r;
    if (oy < p.Ho) {
      for (var k = 0u; k < 4u; k++) {
        let row = (tile.b * p.CoAll + p.co0 + 4u * tile.c4 + k) * hw + oy * p.Wo + TM * tile.tx;
        for (var j = 0u; j < 3u; j++) {
          if (TM * tile.tx + 2u * j < p.Wo) {
            var val = vec2<f32>(y[TM * r + 2u * j][k], y[TM * r + 2u * j + 1u][k]) + vec2<f32>(bv[k]);
//#if ACT_SILU
            val = val / (vec2<f32>(1.0) + exp(-val));
//#endif
            let o = (row >> 1u) + j;
//#if RES
            val += res[o];
//#endif
            out[o] = val;
          }
        }
      }
    }
  }
//#else
  for (var r = 0u; r < TM; r++) {
    let oy = TM * tile.ty + r;
    for (var c = 0u; c < TM; c++) {
      let ox = TM * tile.tx + c;
      if (oy < p.Ho && ox < p.Wo) {
        var val = y[TM * r + c] + bv;
//#if ACT_SILU
        val = val / (vec4<f32>(1.0) + exp(-val));
//#endif
        let base = (tile.b * p.CoAll + p.co0 + 4u * tile.c4) * hw + oy * p.Wo + ox;
        for (var k = 0u; k < 4u; k++) {
          var z = val[k];
//#if RES
          z += res[base + k * hw];
//#endif
          out[base + k * hw] = z;
        }
      }
    }
  }
//#endif
}
