// Winograd F(TM x TM, 3x3), weight side: U = G g G^T for every (co, ci), written as TA * TA
// matrices U[e] (Co, Ci), e = TA * i + j, the transB operand of one batched matmul per conv.
// g[ky][kx] is read at wOff + co * wCo + ci * wCi + (3 * ky + kx) * wTap, which covers the
// (Co, Ci, 3, 3) layout of a checkpoint and the (ci, ky, kx, co) layout of prepared weights.
// The transform code is generated from G by winograd.ts.
struct P { Co: u32, Ci: u32, nx: u32, wOff: u32, wCo: u32, wCi: u32, wTap: u32, pad: u32 }
@group(0) @binding(0) var<uniform> p: P;
//#if F16
@group(0) @binding(1) var<storage, read> w: array<u32>;
fn ldw(i: u32) -> f32 { return unpack2x16float(w[i >> 1u])[i & 1u]; }
//#else
@group(0) @binding(1) var<storage, read> w: array<f32>;
fn ldw(i: u32) -> f32 { return w[i]; }
//#endif
@group(0) @binding(2) var<storage, read_write> u: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x + gid.y * p.nx * 64u;
  if (i >= p.Co * p.Ci) { return; }
  let co = i / p.Ci;
  let ci = i % p.Ci;
  let base = p.wOff + co * p.wCo + ci * p.wCi;
  var g: array<f32, 9>;
  for (var t = 0u; t < 9u; t++) { g[t] = ldw(base + t * p.wTap); }
  let plane = p.Co * p.Ci;
{{TRANSFORM}}
}
