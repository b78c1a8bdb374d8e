// Register-blocked matmul for lavapipe (PLATFORM.md): workgroup of 8, no shared memory,
// each invocation owns a TM x (4*NV) block of the output and walks K in steps of KS,
// loading vec4s (f32) or vec4<u32>s (8 packed halves) where the layout allows.
// Rows / columns past the edge are clamped on load and masked on store; the last
// K % KS values go through a scalar tail.
//
// Load modes (one per operand, chosen by the dispatcher from strides and alignment):
//   A_V4  a contiguous along K, a: array<vec4<f32>>       (row-major a)
//   A_T4  a contiguous along M, a: array<vec4<f32>>       (transA, M % 4 == 0)
//   else  a: array<f32>, any strides
//   A_TEX a from the rgba32float 2D-array texture aT that matmul_pack_a.wgsl wrote
//         (texel (k / 4, m, z)): on lavapipe far cheaper per value than any buffer load,
//         because the 8 lanes' rows differ (the a modes above are then unused)
//   B_V4  b contiguous along N, f32 vec4                 (row-major b, N % 4 == 0)
//   B_T4  b contiguous along K, f32 vec4                 (transB / nn.Linear weight)
//   B_H8  b contiguous along N, f16 as vec4<u32>         (N % 8 == 0)
//   B_TH4 b contiguous along K, f16 as vec2<u32>         (transB f16 weight; 4 halves of K per
//         load, the default: the f32 K step with half the words)
//   B_TH8 b contiguous along K, f16 as vec4<u32>         (the same, 8 halves: f16K4 off)
//   else  b: array<f32> or array<u32> (B_F16), any strides
//#include matmul_common

const TM = {{TM}}u;      // output rows per invocation
const NV = {{NV}}u;      // vec4 column groups per invocation
const TN = {{TN}}u;      // = 4 * NV output columns per invocation
const KS = {{KS}}u;      // K per main-loop step: 4, or 8 when b is read as vec4<u32>
const CPL = {{CPL}}u;    // SG_B: columns of b each lane loads (TN / 8)

//#if A_TEX
@group(0) @binding(6) var aT: texture_2d_array<f32>;
//#endif
//#if OUT_TEX
// The result as texels (n / 4, m, z) of a texture (N % 4 == 0, no epilogue): one vectorised
// store per vec4 on lavapipe, for a consumer that reads it with textureLoad
@group(0) @binding(7) var outT: texture_storage_2d_array<rgba32float, write>;
//#endif

fn ldA(i: u32) -> f32 {
//#if A_V4 || A_T4
  return a[i >> 2u][i & 3u];
//#else
  return a[i];
//#endif
}

fn ldB(i: u32) -> f32 {
//#if B_V4 || B_T4
  return b[i >> 2u][i & 3u];
//#elif B_H8 || B_TH8
  return unpack2x16float(b[i >> 3u][(i >> 1u) & 3u])[i & 1u];
//#elif B_TH4
  return unpack2x16float(b[i >> 2u][(i >> 1u) & 1u])[i & 1u];
//#elif B_F16
  return unpack2x16float(b[i >> 1u])[i & 1u];
//#else
  return b[i];
//#endif
}

//#if B_T4 || B_TH4
// b[i .. i + 3] along K (i % 4 == 0) as f32: one vec4, or 4 packed halves (B_TH4)
fn ldB4(i: u32) -> vec4<f32> {
//#if B_TH4
  let h = b[i >> 2u];
  return vec4<f32>(unpack2x16float(h.x), unpack2x16float(h.y));
//#else
  return b[i >> 2u];
//#endif
}
//#endif

fn unpack8(q: vec4<u32>) -> array<f32, 8> {
  let x = unpack2x16float(q.x);
  let y = unpack2x16float(q.y);
  let z = unpack2x16float(q.z);
  let w = unpack2x16float(q.w);
  return array<f32, 8>(x.x, x.y, y.x, y.y, z.x, z.y, w.x, w.y);
}

@compute @workgroup_size(8)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
//#if COL_LANES
  let row0 = wid.x * TM;
  let col0 = (wid.y * 8u + lid.x) * TN;
  let z = wid.z;
  if (col0 >= p.N) { return; }
//#else
  let row0 = (wid.x * 8u + lid.x) * TM;
  let col0 = wid.y * TN;
  let z = wid.z;
//#if !SG_B
  if (row0 >= p.M) { return; }
//#endif
//#endif
  let aB = p.aOff + z * p.aBs;
  let bB = p.bOff + z * p.bBs;

  var acc: array<array<vec4<f32>, NV>, TM>;
  // element offset of each (clamped) row of a and column of b
  var ar: array<u32, TM>;
  for (var r = 0u; r < TM; r++) { ar[r] = aB + min(row0 + r, p.M - 1u) * p.aRs; }
  var bc: array<u32, TN>;
  for (var c = 0u; c < TN; c++) { bc[c] = bB + min(col0 + c, p.N - 1u) * p.bCs; }
//#if A_TEX
  var am: array<u32, TM>;  // texture row of each (clamped) row of the block
  for (var r = 0u; r < TM; r++) { am[r] = min(row0 + r, p.M - 1u); }
//#endif
//#if A_T4
  var ar4: array<u32, TM / 4u>;  // a block of 4 rows starts here (M % 4 == 0: blocks never straddle M)
  for (var r = 0u; r < TM / 4u; r++) { ar4[r] = aB + min(row0 + 4u * r, p.M - 4u); }
//#endif
//#if SG_B
  // SG_B: the 8 lanes share the block's columns, so each loads TN / 8 of them and
  // subgroupBroadcast hands them to the others (a broadcast is a register shuffle on
  // lavapipe, a load is 8 bounds-checked scalar loads). Needs all 8 lanes alive: no early return.
  var myc: array<u32, CPL>;
  for (var j = 0u; j < CPL; j++) { myc[j] = bB + min(col0 + lid.x * CPL + j, p.N - 1u) * p.bCs; }
//#endif
//#if B_V4
  var bc4: array<u32, NV>;
  for (var c = 0u; c < NV; c++) { bc4[c] = bB + min(col0 + 4u * c, p.N - 4u); }
//#elif B_H8
  var bc8: array<u32, NV / 2u>;
  for (var c = 0u; c < NV / 2u; c++) { bc8[c] = bB + min(col0 + 8u * c, p.N - 8u); }
//#endif

  let kMain = p.K - p.K % KS;
  var k = 0u;
  for (; k < kMain; k += KS) {
    // avs[s / 4][r]: a[row0 + r, k + s .. k + s + 3], loaded for the whole step before b
    // (measured faster: with f16 b the unpacking then overlaps the loads).
    var avs: array<array<vec4<f32>, TM>, KS / 4u>;
    for (var s = 0u; s < KS; s += 4u) {
//#if A_TEX
      for (var r = 0u; r < TM; r++) { avs[s / 4u][r] = textureLoad(aT, vec2<u32>((k + s) >> 2u, am[r]), z, 0); }
//#elif A_V4
      for (var r = 0u; r < TM; r++) { avs[s / 4u][r] = a[(ar[r] + k + s) >> 2u]; }
//#elif A_T4
      for (var kk = 0u; kk < 4u; kk++) {
        for (var r = 0u; r < TM / 4u; r++) {
          let v = a[(ar4[r] + (k + s + kk) * p.aCs) >> 2u];
          for (var j = 0u; j < 4u; j++) { avs[s / 4u][4u * r + j][kk] = v[j]; }
        }
      }
//#else
      for (var r = 0u; r < TM; r++) {
        let o = ar[r] + (k + s) * p.aCs;
        avs[s / 4u][r] = vec4<f32>(ldA(o), ldA(o + p.aCs), ldA(o + 2u * p.aCs), ldA(o + 3u * p.aCs));
      }
//#endif
    }
    // bv[kk][c]: b[k + kk, col0 + 4c .. 4c + 3]
    var bv: array<array<vec4<f32>, NV>, KS>;
//#if B_V4
    for (var kk = 0u; kk < KS; kk++) {
      for (var c = 0u; c < NV; c++) { bv[kk][c] = b[(bc4[c] + (k + kk) * p.bRs) >> 2u]; }
    }
//#elif B_T4 && SG_B || B_TH4 && SG_B
    // (f16 b: 4 halves of K per load, unpacked once by the lane that loads them)
    var mine: array<vec4<f32>, CPL>;
    for (var j = 0u; j < CPL; j++) { mine[j] = ldB4(myc[j] + k); }
    for (var c = 0u; c < TN; c++) {
      let w = subgroupBroadcast(mine[c % CPL], c / CPL);
      for (var kk = 0u; kk < 4u; kk++) { bv[kk][c / 4u][c % 4u] = w[kk]; }
    }
//#elif B_TH8 && SG_B
    // Each lane unpacks its own columns once, then broadcasts f32s: unpacking after the
    // broadcast would convert every column in every lane.
    var mine: array<array<f32, 8>, CPL>;
    for (var j = 0u; j < CPL; j++) { mine[j] = unpack8(b[(myc[j] + k) >> 3u]); }
    for (var c = 0u; c < NV; c++) {
      for (var kk = 0u; kk < 8u; kk++) {
        bv[kk][c] = vec4<f32>(subgroupBroadcast(mine[(4u * c) % CPL][kk], (4u * c) / CPL),
                              subgroupBroadcast(mine[(4u * c + 1u) % CPL][kk], (4u * c + 1u) / CPL),
                              subgroupBroadcast(mine[(4u * c + 2u) % CPL][kk], (4u * c + 2u) / CPL),
                              subgroupBroadcast(mine[(4u * c + 3u) % CPL][kk], (4u * c + 3u) / CPL));
      }
    }
//#elif B_T4 || B_TH4
    for (var c = 0u; c < TN; c++) {
      let w = ldB4(bc[c] + k);
      for (var kk = 0u; kk < 4u; kk++) { bv[kk][c / 4u][c % 4u] = w[kk]; }
    }
//#elif B_H8
    for (var kk = 0u; kk < KS; kk++) {
      for (var c = 0u; c < NV / 2u; c++) {
        let h = unpack8(b[(bc8[c] + (k + kk) * p.bRs) >> 3u]);
        bv[kk][2u * c] = vec4<f32>(h[0], h[1], h[2], h[3]);
        bv[kk][2u * c + 1u] = vec4<f32>(h[4], h[5], h[6], h[7]);
      }
    }
//#elif B_TH8
    for (var c = 0u; c < TN; c++) {
      let h = unpack8(b[(bc[c] + k) >> 3u]);
      for (var kk = 0u; kk < 8u; kk++) { bv[kk][c / 4u][c % 4u] = h[kk]; }
    }
//#else
    for (var kk = 0u; kk < KS; kk++) {
      for (var c = 0u; c < TN; c++) { bv[kk][c / 4u][c % 4u] = ldB(bc[c] + (k + kk) * p.bRs); }
    }
//#endif
    // Each accumulator takes its 4 products as a pairwise sum, then one add: 4x fewer
    // read-modify-writes of the (spilled) block than one multiply-add per product.
    for (var r = 0u; r < TM; r++) {
      for (var c = 0u; c < NV; c++) {
        for (var s = 0u; s < KS; s += 4u) {
          let x = avs[s / 4u][r];
          acc[r][c] += (x.x * bv[s][c] + x.y * bv[s + 1u][c]) + (x.z * bv[s + 2u][c] + x.w * bv[s + 3u][c]);
        }
      }
    }
  }
  for (; k < p.K; k++) {
    var bs: array<vec4<f32>, NV>;
    for (var c = 0u; c < TN; c++) { bs[c / 4u][c % 4u] = ldB(bc[c] + k * p.bRs); }
    for (var r = 0u; r < TM; r++) {
//#if A_TEX
      let x = textureLoad(aT, vec2<u32>(k >> 2u, am[r]), z, 0)[k & 3u];
//#else
      let x = ldA(ar[r] + k * p.aCs);
//#endif
      for (var c = 0u; c < NV; c++) { acc[r][c] += x * bs[c]; }
    }
  }

  // The epilogue runs in rolled loops over a copy of the block: unrolled, its 4*TM*NV
  // inlined copies made lavapipe's compile take minutes; indexing acc itself dynamically
  // would move the accumulators to memory for the whole K loop.
  var fin = acc;
  for (var r = 0u; r < TM; r = r + 1u) {
    let m = row0 + r;
    if (m < p.M) {
//#if OUT_TEX
      for (var c = 0u; c < NV; c = c + 1u) {
        if (col0 + 4u * c < p.N) { textureStore(outT, vec2<u32>((col0 >> 2u) + c, m), z, fin[r][c]); }
      }
//#else
      for (var c = 0u; c < NV; c = c + 1u) { epilogue4(fin[r][c], m, col0 + 4u * c, z); }
//#endif
    }
  }
}
