// f32 -> IEEE f16 bits, rounded to nearest even, from integer and float adds only. On
// lavapipe pack2x16float (and a float -> int conversion) cost more than the stores that f16
// output saves: the Winograd weight transform 1280->1280 F(2x2), GPU timestamps, f32 U 27 ms,
// f16 U by pack2x16float 54 ms, by u32(round(..)) for subnormals 44 ms, this 22 ms.
// Finite x beyond the f16 range (|x| >= 65520) gives infinity, as does NaN (callers that
// keep NaN test for it first). Normal halves: the exponent rebiased 127 -> 15 and 13
// mantissa bits dropped with round-half-even carries; subnormal halves (|x| < 2^-14) are
// |x| / 2^-24 rounded to an integer, which adding 0.5 (ulp 2^-24) makes the float adder do.
fn f16_bits(x: f32) -> u32 {
  let b = bitcast<u32>(x);
  let a = b & 0x7fffffffu;
  let n = a - 0x38000000u;
  let hn = (n + 0x0fffu + ((n >> 13u) & 1u)) >> 13u;
  let hs = bitcast<u32>(abs(x) + 0.5) - 0x3f000000u;
  return ((b >> 16u) & 0x8000u) | min(select(hn, hs, a < 0x38800000u), 0x7c00u);
}
