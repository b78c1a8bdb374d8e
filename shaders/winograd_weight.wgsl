// Winograd F(2x2, 3x3), weight side: U = G g G^T for every (co, ci), written as 16 matrices
// U[e] (Co, Ci), e = 4 * i + j, the transB operand of one batched matmul per conv.
// g[ky][kx] is read at wOff + co * wCo + ci * wCi + (3 * ky + kx) * wTap, which covers the
// (Co, Ci, 3, 3) layout of a checkpoint and the (ci, ky, kx, co) layout of prepared weights.
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
  // tmp = G g (4x3), G = [[1,0,0],[.5,.5,.5],[.5,-.5,.5],[0,0,1]]
  var tmp: array<f32, 12>;
  for (var x = 0u; x < 3u; x++) {
    let a = g[x];
    let b = g[3u + x];
    let c = g[6u + x];
    tmp[x] = a;
    tmp[3u + x] = 0.5 * (a + b + c);
    tmp[6u + x] = 0.5 * (a - b + c);
    tmp[9u + x] = c;
  }
  // U = tmp G^T (4x4)
  let plane = p.Co * p.Ci;
  for (var r = 0u; r < 4u; r++) {
    let a = tmp[3u * r];
    let b = tmp[3u * r + 1u];
    let c = tmp[3u * r + 2u];
    u[(4u * r) * plane + i] = a;
    u[(4u * r + 1u) * plane + i] = 0.5 * (a + b + c);
    u[(4u * r + 2u) * plane + i] = 0.5 * (a - b + c);
    u[(4u * r + 3u) * plane + i] = c;
  }
}
