// Direct convolution for lavapipe (PLATFORM.md): workgroup of 8, no shared memory. Each
// invocation owns PW neighbouring output pixels of one row times 4*CV output channels.
// For every input channel and kernel row it loads the input row segment once (SEG values,
// zero outside the image) and reuses it for all KW taps; weights come re-laid out as
// (ci, ky, kx, co), so one vec4 (W_V4) or vec4<u32> of halves (W_H8) holds 4 or 8 output
// channels of a tap.
//
// a = weights: element (co, ci, tap) at aOff + co + ci * aCs + tap * e0 (e0 = all Co).
// b = input: bOff + z * bBs + ci * bRs + y * W + x.
//#include matmul_common

const KH = {{KH}}u;
const KW = {{KW}}u;
const S = {{S}}u;       // stride
const PW = {{PW}}u;     // output pixels per invocation
const CV = {{CV}}u;     // vec4 groups of output channels per invocation
const CN = {{CN}}u;     // = 4 * CV
const SEG = {{SEG}}u;   // = (PW - 1) * S + KW input values per row segment
const NW = {{NW}}u;     // SG_W: weight vectors per (ci, ky): KW taps x CV (f32) or CV / 2 (f16)
const WPL = {{WPL}}u;   // SG_W: of which each lane loads WPL = ceil(NW / 8)

fn ldW(i: u32) -> f32 {
//#if W_V4
  return a[i >> 2u][i & 3u];
//#elif W_H8
  return unpack2x16float(a[i >> 3u][(i >> 1u) & 3u])[i & 1u];
//#elif A_F16
  return unpack2x16float(a[i >> 1u])[i & 1u];
//#else
  return a[i];
//#endif
}

fn unpack8(q: vec4<u32>) -> array<f32, 8> {
  let x = unpack2x16float(q.x);
  let y = unpack2x16float(q.y);
  let z = unpack2x16float(q.z);
  let w = unpack2x16float(q.w);
  return array<f32, 8>(x.x, x.y, y.x, y.y, z.x, z.y, w.x, w.y);
}

@compute @workgroup_size(8)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let tilesPerRow = (p.Wo + PW - 1u) / PW;
  let t0 = wid.x * 8u + lid.x;
  let alive = t0 < tilesPerRow * p.Ho;
//#if SG_W
  // SG_W: the 8 lanes (one subgroup) share the workgroup's output channels, so each loads
  // a slice of the weights and subgroupBroadcast hands it round; every lane must stay
  // alive through the loop, past-the-end lanes compute a clamped tile and do not store.
  let t = min(t0, tilesPerRow * p.Ho - 1u);
//#else
  if (!alive) { return; }
  let t = t0;
//#endif
  let oy = t / tilesPerRow;
  let ox0 = (t % tilesPerRow) * PW;
  let co0 = wid.y * CN;
  let z = wid.z;
  let xB = p.bOff + z * p.bBs;

  // input columns of the segment, clamped, and whether each lies inside the image
  let ix0 = i32(ox0 * S) - i32(p.pad);
  var xc: array<u32, SEG>;
  var xin: array<bool, SEG>;
  for (var j = 0u; j < SEG; j++) {
    let ix = ix0 + i32(j);
    xin[j] = ix >= 0 && ix < i32(p.W);
    xc[j] = u32(clamp(ix, 0, i32(p.W) - 1));
  }
//#if W_V4
  var wc: array<u32, CV>;
  for (var c = 0u; c < CV; c++) { wc[c] = p.aOff + min(co0 + 4u * c, p.M - 4u); }
//#elif W_H8
  var wc: array<u32, CV / 2u>;
  for (var c = 0u; c < CV / 2u; c++) { wc[c] = p.aOff + min(co0 + 8u * c, p.M - 8u); }
//#else
  var wc: array<u32, CN>;
  for (var c = 0u; c < CN; c++) { wc[c] = p.aOff + min(co0 + c, p.M - 1u); }
//#endif

  var acc: array<array<vec4<f32>, CV>, PW>;
  for (var ci = 0u; ci < p.K; ci = ci + 1u) {
    let xCh = xB + ci * p.bRs;
    let wCh = ci * p.aCs;
    for (var ky = 0u; ky < KH; ky++) {
      let iy = i32(oy * S + ky) - i32(p.padT);
      let rowIn = iy >= 0 && iy < i32(p.H);
      let xRow = xCh + u32(clamp(iy, 0, i32(p.H) - 1)) * p.W;
      var xs: array<f32, SEG>;
      for (var j = 0u; j < SEG; j++) { xs[j] = select(0.0, b[xRow + xc[j]], rowIn && xin[j]); }
//#if SG_W && W_V4
      var mine: array<vec4<f32>, WPL>;
      for (var j = 0u; j < WPL; j++) {
        let q = min(lid.x + 8u * j, NW - 1u);
        mine[j] = a[(wCh + (ky * KW + q / CV) * p.e0 + p.aOff + min(co0 + 4u * (q % CV), p.M - 4u)) >> 2u];
      }
//#elif SG_W && W_H8
      var mine: array<vec4<u32>, WPL>;
      for (var j = 0u; j < WPL; j++) {
        let q = min(lid.x + 8u * j, NW - 1u);
        mine[j] = a[(wCh + (ky * KW + q / (CV / 2u)) * p.e0 + p.aOff + min(co0 + 8u * (q % (CV / 2u)), p.M - 8u)) >> 3u];
      }
//#endif
      for (var kx = 0u; kx < KW; kx++) {
        let wT = wCh + (ky * KW + kx) * p.e0;
        var wv: array<vec4<f32>, CV>;
//#if SG_W && W_V4
        for (var c = 0u; c < CV; c++) { wv[c] = subgroupBroadcast(mine[(kx * CV + c) / 8u], (kx * CV + c) % 8u); }
//#elif SG_W && W_H8
        for (var c = 0u; c < CV / 2u; c++) {
          let h = unpack8(subgroupBroadcast(mine[(kx * (CV / 2u) + c) / 8u], (kx * (CV / 2u) + c) % 8u));
          wv[2u * c] = vec4<f32>(h[0], h[1], h[2], h[3]);
          wv[2u * c + 1u] = vec4<f32>(h[4], h[5], h[6], h[7]);
        }
//#elif W_V4
        for (var c = 0u; c < CV; c++) { wv[c] = a[(wT + wc[c]) >> 2u]; }
//#elif W_H8
        for (var c = 0u; c < CV / 2u; c++) {
          let h = unpack8(a[(wT + wc[c]) >> 3u]);
          wv[2u * c] = vec4<f32>(h[0], h[1], h[2], h[3]);
          wv[2u * c + 1u] = vec4<f32>(h[4], h[5], h[6], h[7]);
        }
//#else
        for (var c = 0u; c < CN; c++) { wv[c / 4u][c % 4u] = ldW(wT + wc[c]); }
//#endif
        for (var px = 0u; px < PW; px++) {
          let xv = xs[px * S + kx];
          for (var c = 0u; c < CV; c++) { acc[px][c] += xv * wv[c]; }
        }
      }
    }
  }

  // Rolled epilogue over a copy of the block (see matmul_cpu.wgsl).
  var fin = acc;
  for (var px = 0u; px < PW; px = px + 1u) {
    let ox = ox0 + px;
    if (alive && ox < p.Wo) {
      let n = oy * p.Wo + ox;
      for (var c = 0u; c < CV; c = c + 1u) { epilogue4r(fin[px][c], co0 + 4u * c, n, z); }
    }
  }
}
