// Big-tile GEMM for real GPUs (matmul, and conv2d as implicit GEMM with CONV defined): a
// 256-invocation workgroup computes a 128 x 128 block of the output, 8 x 8 per invocation
// (rows 4ty..4ty+3 and 64+4ty..64+4ty+3, columns likewise with tx), from BK = 8 deep slices
// of a and b staged in workgroup memory as vec4 rows. Twice the outputs per invocation of
// matmul_gpu.wgsl, so each value read from workgroup memory feeds 8 multiply-adds, not 4.
//
// Split K (p.ks > 1): workgroup z = batch * ks + split; split s covers k in
// [s * kc, (s + 1) * kc) and writes its raw sums to out at oOff + s * sStride + z * oBs +
// m * oRs + n * oCs, for matmul_splitk.wgsl to add up and finish with the epilogue.
//
// CONV: a = weights (Co, Ci * kh * kw) at aOff + m * aRs + k; b = the input planes gathered
// as im2col (k = ci * kh * kw + ky * kw + kx, n = output pixel), never stored.
//#include matmul_common
//#include matmul_loads

const BM = 128u;
const BK = 8u;
const RS = 33u;  // vec4 per staged k row: 32 + 1 of padding against bank conflicts on stores
var<workgroup> As: array<vec4<f32>, BK * RS>;  // As[k * RS + m / 4][m % 4]
var<workgroup> Bs: array<vec4<f32>, BK * RS>;


@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let tx = li % 16u;
  let ty = li / 16u;
  let m0 = wid.y * BM;
  let n0 = wid.x * BM;
  let ks = max(p.ks, 1u);
  let z = wid.z / ks;
  let s = wid.z % ks;
//#if CONV
  let taps = p.kh * p.kw;
  let Kt = p.K * taps;
  let bB = p.bOff + z * p.bBs;
  // This invocation always stages the same pixel column of b: n0 + li % 128.
  let nb = n0 + li % BM;
  let oy = i32((nb / p.Wo) * p.stride) - i32(p.padT);
  let ox = i32((nb % p.Wo) * p.stride) - i32(p.pad);
  let aB = p.aOff;
//#else
  let Kt = p.K;
  let aB = p.aOff + z * p.aBs;
  let bB = p.bOff + z * p.bBs;
  let aAlongM = p.aRs <= p.aCs;
  let bAlongN = p.bCs <= p.bRs;
//#endif
  let kc = select(Kt, p.kc, ks > 1u);
  let kBeg = s * kc;
  let kEnd = min(Kt, kBeg + kc);
  var acc: array<vec4<f32>, 16>;  // row r, column block c: acc[2r + c]
  for (var k0 = kBeg; k0 < kEnd; k0 += BK) {
    for (var i = 0u; i < 4u; i++) {
      let e = li + i * 256u;
//#if CONV
      // a: consecutive invocations along k (contiguous weights)
      let mm = e / BK;
      let ka = e % BK;
//#else
      var mm = e / BK;
      var ka = e % BK;
      if (aAlongM) { mm = e % BM; ka = e / BM; }
//#endif
      let m = m0 + mm;
      let kA = k0 + ka;
      var va = 0.0;
//#if CONV
      if (m < p.M && kA < kEnd) { va = ldA(aB + m * p.aRs + kA); }
//#else
      if (m < p.M && kA < kEnd) { va = ldA(aB + m * p.aRs + kA * p.aCs); }
//#endif
      As[ka * RS + mm / 4u][mm % 4u] = va;
//#if CONV
      let nn = li % BM;
      let kb = li / BM + 2u * i;
      let kB = k0 + kb;
      var vb = 0.0;
      if (nb < p.N && kB < kEnd) {
        let ci = kB / taps;
        let tap = kB % taps;
        let iy = oy + i32(tap / p.kw);
        let ix = ox + i32(tap % p.kw);
        if (iy >= 0 && iy < i32(p.H) && ix >= 0 && ix < i32(p.W)) {
          vb = ldB(bB + ci * p.bRs + u32(iy) * p.W + u32(ix));
        }
      }
//#else
      var nn = e / BK;
      var kb = e % BK;
      if (bAlongN) { nn = e % BM; kb = e / BM; }
      let n = n0 + nn;
      let kB = k0 + kb;
      var vb = 0.0;
      if (n < p.N && kB < kEnd) { vb = ldB(bB + kB * p.bRs + n * p.bCs); }
//#endif
      Bs[kb * RS + nn / 4u][nn % 4u] = vb;
    }
    workgroupBarrier();
    for (var kk = 0u; kk < BK; kk++) {
      let a0 = As[kk * RS + ty];
      let a1 = As[kk * RS + 16u + ty];
      let b0 = Bs[kk * RS + tx];
      let b1 = Bs[kk * RS + 16u + tx];
      for (var r = 0u; r < 4u; r++) {
        acc[2u * r] += a0[r] * b0;
        acc[2u * r + 1u] += a0[r] * b1;
        acc[8u + 2u * r] += a1[r] * b0;
        acc[8u + 2u * r + 1u] += a1[r] * b1;
      }
    }
    workgroupBarrier();
  }
  for (var r = 0u; r < 8u; r++) {
    let m = m0 + select(4u * ty + r, 60u + 4u * ty + r, r >= 4u);
    if (m < p.M) {
      for (var c = 0u; c < 2u; c++) {
        let n = n0 + 64u * c + 4u * tx;
        let v = acc[2u * r + c];
        if (ks > 1u) {
          let o = p.oOff + s * p.sStride + z * p.oBs + m * p.oRs;
          for (var j = 0u; j < 4u; j++) { if (n + j < p.N) { out[o + (n + j) * p.oCs] = v[j]; } }
        } else {
          epilogue4(v, m, n, z);
        }
      }
    }
  }
}
