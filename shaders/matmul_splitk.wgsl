// Second pass of a split-K GEMM (matmul_gpu2.wgsl with p.ks > 1): adds up the ks partial
// sums of each output, bound as `a` (f32: split s, batch z, element (m, n) at
// aOff + s * sStride + z * aBs + m * aRs + n), and finishes them through the shared epilogue
// (alpha, bias, accumulate, activation, residual; GLU pairs when built with GLU). One
// invocation per 4 neighbouring columns; workgroup (x, y) flattened with p.nx.
//#include matmul_common

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  // b is not read, but auto layouts keep only bindings the entry point uses.
  _ = &b;
  let nq = (p.N + 3u) / 4u;
  let idx = (wid.x + wid.y * p.nx) * 256u + li;
  if (idx >= p.batch * p.M * nq) { return; }
  let n0 = 4u * (idx % nq);
  let mz = idx / nq;
  let m = mz % p.M;
  let z = mz / p.M;
  let base = p.aOff + z * p.aBs + m * p.aRs + n0;
  var v = vec4<f32>(0.0);
  for (var s = 0u; s < p.ks; s++) {
    let o = base + s * p.sStride;
    for (var j = 0u; j < 4u; j++) {
      if (n0 + j < p.N) { v[j] += a[o + j]; }
    }
  }
  epilogue4(v, m, n0, z);
}
