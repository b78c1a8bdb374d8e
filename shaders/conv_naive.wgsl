// Naive conv2d (reference variant), NCHW: one output element per invocation.
// a = weights (Co, Ci, kh, kw) with aRs per output channel and aCs per input channel,
// b = input with bRs per channel and bBs per image; out rows are output channels
// (oRs = Ho * Wo), columns pixels. Padding: padT rows on top, pad columns on the left.
//#include matmul_common

fn ldW(i: u32) -> f32 {
//#if A_F16
  return unpack2x16float(a[i >> 1u])[i & 1u];
//#else
  return a[i];
//#endif
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  let n = g.x;
  let m = g.y;
  let z = g.z;
  if (n >= p.N || m >= p.M) { return; }
  let oy = n / p.Wo;
  let ox = n % p.Wo;
  let xb = p.bOff + z * p.bBs;
  let wb = p.aOff + m * p.aRs;
  var acc = 0.0;
  for (var ci = 0u; ci < p.K; ci = ci + 1u) {
    for (var ky = 0u; ky < p.kh; ky = ky + 1u) {
      let iy = i32(oy * p.stride + ky) - i32(p.padT);
      if (iy < 0 || iy >= i32(p.H)) { continue; }
      for (var kx = 0u; kx < p.kw; kx = kx + 1u) {
        let ix = i32(ox * p.stride + kx) - i32(p.pad);
        if (ix < 0 || ix >= i32(p.W)) { continue; }
        acc += b[xb + ci * p.bRs + u32(iy) * p.W + u32(ix)] * ldW(wb + ci * p.aCs + ky * p.kw + kx);
      }
    }
  }
  epilogue(acc, m, n, z);
}
