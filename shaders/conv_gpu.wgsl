// Implicit-GEMM conv2d for real GPUs: out (Co, Ho*Wo) = w (Co, Ci*kh*kw) @ im2col(x), the
// im2col matrix never stored: each BK x TILE slice of it is gathered into workgroup
// memory. 256 invocations, 4 x 4 outputs each. Correct on lavapipe, fast only on a GPU.
// a = weights (Co, Ci, kh, kw): aOff + co * aRs + k (k = ci * kh * kw + ky * kw + kx).
//#include matmul_common

const T = {{TILE}}u;
const BK = 16u;
var<workgroup> As: array<f32, BK * T>;  // [k][co]
var<workgroup> Bs: array<f32, BK * T>;  // [k][pixel]

fn ldW(i: u32) -> f32 {
//#if A_F16
  return unpack2x16float(a[i >> 1u])[i & 1u];
//#else
  return a[i];
//#endif
}

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let m0 = wid.y * T;
  let n0 = wid.x * T;
  let z = wid.z;
  let taps = p.kh * p.kw;
  let Kt = p.K * taps;
  let xB = p.bOff + z * p.bBs;
  var acc: array<array<f32, 4>, 4>;
  for (var k0 = 0u; k0 < Kt; k0 += BK) {
    for (var i = 0u; i < 4u; i++) {
      let e = li + i * 256u;
      // weights: consecutive threads along k (contiguous in memory)
      let mm = e / BK;
      let ka = e % BK;
      let m = m0 + mm;
      let kw_ = k0 + ka;
      var va = 0.0;
      if (m < p.M && kw_ < Kt) { va = ldW(p.aOff + m * p.aRs + kw_); }
      As[ka * T + mm] = va;
      // input: consecutive threads along pixels
      let nn = e % T;
      let kb = e / T;
      let n = n0 + nn;
      let kx_ = k0 + kb;
      var vb = 0.0;
      if (n < p.N && kx_ < Kt) {
        let ci = kx_ / taps;
        let tap = kx_ % taps;
        let iy = i32((n / p.Wo) * p.stride + tap / p.kw) - i32(p.padT);
        let ix = i32((n % p.Wo) * p.stride + tap % p.kw) - i32(p.pad);
        if (iy >= 0 && iy < i32(p.H) && ix >= 0 && ix < i32(p.W)) {
          vb = b[xB + ci * p.bRs + u32(iy) * p.W + u32(ix)];
        }
      }
      Bs[kb * T + nn] = vb;
    }
    workgroupBarrier();
    for (var kk = 0u; kk < BK; kk++) {
      var av: array<f32, 4>;
      var bv: array<f32, 4>;
      for (var i = 0u; i < 4u; i++) {
        av[i] = As[kk * T + lid.y + 16u * i];
        bv[i] = Bs[kk * T + lid.x + 16u * i];
      }
      for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) { acc[i][j] += av[i] * bv[j]; }
      }
    }
    workgroupBarrier();
  }
  for (var i = 0u; i < 4u; i++) {
    let m = m0 + lid.y + 16u * i;
    for (var j = 0u; j < 4u; j++) {
      let n = n0 + lid.x + 16u * j;
      if (m < p.M && n < p.N) { epilogue(acc[i][j], m, n, z); }
    }
  }
}
