// Naive matmul (reference variant): one output element per invocation (GLU: one pair),
// scalar loads through the strides, so it serves every layout.
//#include matmul_common
//#include matmul_loads


@compute @workgroup_size(8, 8)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
//#if GLU
  // GLU: one (value, gate) pair of columns n, n + 1 per invocation.
  let n = 2u * g.x;
//#else
  let n = g.x;
//#endif
  let m = g.y;
  let z = g.z;
  if (n >= p.N || m >= p.M) { return; }
  let ab = p.aOff + z * p.aBs + m * p.aRs;
  let bb = p.bOff + z * p.bBs + n * p.bCs;
  var acc = 0.0;
//#if GLU
  var gate = 0.0;
  for (var k = 0u; k < p.K; k++) {
    let x = ldA(ab + k * p.aCs);
    acc += x * ldB(bb + k * p.bRs);
    gate += x * ldB(bb + p.bCs + k * p.bRs);
  }
  epilogueGlu(acc, gate, m, n, z);
//#else
  for (var k = 0u; k < p.K; k++) {
    acc += ldA(ab + k * p.aCs) * ldB(bb + k * p.bRs);
  }
  epilogue(acc, m, n, z);
//#endif
}
