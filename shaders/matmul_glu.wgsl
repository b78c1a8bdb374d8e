// GLU epilogue of a matmul whose K was split into chunks (matmul.ts runGemm): the chunks
// accumulate the (value, gate) columns into a scratch buffer, bound as `a` (f32, element
// (m, n) at aOff + z * aBs + m * aRs + n * aCs, bias already added); this pass reads each
// pair and writes out column n / 2 through the shared GLU epilogue (alpha = 1, no bias).
// One pair per invocation. Built with GLU defined.
//#include matmul_common

@compute @workgroup_size(8, 8)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  // b is not read, but auto layouts keep only bindings the entry point uses.
  _ = &b;
  let n = 2u * g.x;
  let m = g.y;
  let z = g.z;
  if (n >= p.N || m >= p.M) { return; }
  let i = p.aOff + z * p.aBs + m * p.aRs + n * p.aCs;
  epilogueGlu(a[i], a[i + p.aCs], m, n, z);
}
