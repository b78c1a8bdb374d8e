// Shared-memory tiled matmul for real GPUs: a 256-invocation workgroup computes a
// TILE x TILE block of the output, 4 x 4 per invocation, staging BK-deep slices of a
// and b in workgroup memory. Loads go through the strides (any layout), zero-filled
// past the edges. On lavapipe this is correct but slow (PLATFORM.md). An invocation's
// columns are n0 + lid.x + 16j, or n0 + 4 lid.x + j with GLU (pairs in one invocation).
//#include matmul_common
//#include matmul_loads

const T = {{TILE}}u;
const BK = 16u;
var<workgroup> As: array<f32, BK * T>;  // [BK][T]: As[k * T + m]
var<workgroup> Bs: array<f32, BK * T>;  // [BK][T]: Bs[k * T + n]


@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let m0 = wid.y * T;
  let n0 = wid.x * T;
  let z = wid.z;
  let aB = p.aOff + z * p.aBs;
  let bB = p.bOff + z * p.bBs;
  // Threads walk a tile along the operand's contiguous axis, so neighbours load neighbours.
  let aAlongM = p.aRs <= p.aCs;
  let bAlongN = p.bCs <= p.bRs;
  var acc: array<array<f32, 4>, 4>;
  for (var k0 = 0u; k0 < p.K; k0 += BK) {
    for (var i = 0u; i < 4u; i++) {
      let e = li + i * 256u;
      var mm = e % T;
      var ka = e / T;
      if (!aAlongM) { mm = e / BK; ka = e % BK; }
      let m = m0 + mm;
      let ki = k0 + ka;
      var va = 0.0;
      if (m < p.M && ki < p.K) { va = ldA(aB + m * p.aRs + ki * p.aCs); }
      As[ka * T + mm] = va;
      var nn = e % T;
      var kb = e / T;
      if (!bAlongN) { nn = e / BK; kb = e % BK; }
      let n = n0 + nn;
      let kj = k0 + kb;
      var vb = 0.0;
      if (n < p.N && kj < p.K) { vb = ldB(bB + kj * p.bRs + n * p.bCs); }
      Bs[kb * T + nn] = vb;
    }
    workgroupBarrier();
    for (var kk = 0u; kk < BK; kk++) {
      var av: array<f32, 4>;
      var bv: array<f32, 4>;
      for (var i = 0u; i < 4u; i++) {
        av[i] = As[kk * T + lid.y + 16u * i];
//#if GLU
        bv[i] = Bs[kk * T + 4u * lid.x + i];
//#else
        bv[i] = Bs[kk * T + lid.x + 16u * i];
//#endif
      }
      for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) { acc[i][j] += av[i] * bv[j]; }
      }
    }
    workgroupBarrier();
  }
//#if GLU
  // GLU: an invocation owns 4 neighbouring columns, so both columns of each pair.
  for (var i = 0u; i < 4u; i++) {
    let m = m0 + lid.y + 16u * i;
    if (m < p.M) { epilogue4(vec4<f32>(acc[i][0], acc[i][1], acc[i][2], acc[i][3]), m, n0 + 4u * lid.x, z); }
  }
//#else
  for (var i = 0u; i < 4u; i++) {
    let m = m0 + lid.y + 16u * i;
    for (var j = 0u; j < 4u; j++) {
      let n = n0 + lid.x + 16u * j;
      if (m < p.M && n < p.N) { epilogue(acc[i][j], m, n, z); }
    }
  }
//#endif
}
