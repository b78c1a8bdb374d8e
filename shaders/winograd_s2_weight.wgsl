// Winograd F(TM x TM, 2x2) on a stride-2 3x3 conv (see winograd_s2_input.wgsl), weight side:
// the 3x3 kernel g of (co, ci) splits into four 2x2 kernels, one per input phase (p, q):
// g_pq[dy][dx] = g[2 dy + p][2 dx + q] (zero where that tap would be 3). U = G g_pq G^T, all
// four phases as one vec4 (phase 2p + q), written as TA * TA matrices U[e] (Co, 4 Ci): the
// transB operand of the batched matmul. g[ky][kx] is read at wOff + co * wCo + ci * wCi +
// (3 ky + kx) * wTap (the checkpoint's (Co, Ci, 3, 3) or prepared (ci, ky, kx, co) layout).
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
@group(0) @binding(2) var<storage, read_write> u: array<vec4<f32>>;
fn st(v: vec4<f32>) -> vec4<f32> { return v; }

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x + gid.y * p.nx * 64u;
  if (i >= p.Co * p.Ci) { return; }
  let base = p.wOff + (i / p.Ci) * p.wCo + (i % p.Ci) * p.wCi;
  var k: array<f32, 9>;
  for (var t = 0u; t < 9u; t++) { k[t] = ldw(base + t * p.wTap); }
  // g[2 dy + dx]: tap (dy, dx) of the four phases' 2x2 kernels
  var g: array<vec4<f32>, 4>;
  g[0] = vec4<f32>(k[0], k[1], k[3], k[4]);
  g[1] = vec4<f32>(k[2], 0.0, k[5], 0.0);
  g[2] = vec4<f32>(k[6], k[7], 0.0, 0.0);
  g[3] = vec4<f32>(k[8], 0.0, 0.0, 0.0);
  let plane = p.Co * p.Ci;
{{TRANSFORM}}
}
