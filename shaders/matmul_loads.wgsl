// Scalar element loads of a and b through any strides (included after matmul_common by the
// kernels that bind them as array<f32> or, with A_F16 / B_F16, as f16 pairs in array<u32>).
fn ldA(i: u32) -> f32 {
//#if A_F16
  return unpack2x16float(a[i >> 1u])[i & 1u];
//#else
  return a[i];
//#endif
}
fn ldB(i: u32) -> f32 {
//#if B_F16
  return unpack2x16float(b[i >> 1u])[i & 1u];
//#else
  return b[i];
//#endif
}
