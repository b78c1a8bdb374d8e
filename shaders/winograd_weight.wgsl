// Winograd F(TM x TM, 3x3), weight side: U = G g G^T for every (co, ci), written as TA * TA
// matrices U[e] (Co, Ci), e = TA * i + j, the transB operand of one batched matmul per conv.
// g[ky][kx] is read at wOff + co * wCo + ci * wCi + (3 * ky + kx) * wTap, which covers the
// (Co, Ci, 3, 3) layout of a checkpoint and the (ci, ky, kx, co) layout of prepared weights.
// V4 (the checkpoint layout, Ci % 4 == 0, wOff % 4 == 0): an invocation transforms 4
// neighbouring input channels, whose 36 weights are contiguous: 9 vec4 loads (f16: 9
// vec2<u32>) and TA * TA vec4 stores instead of 36 and 4 * TA * TA scalar ones. The
// transform is write-bound on lavapipe, where each scalar store is a per-lane loop.
// UH (f16 weights): U is written as f16, packed two per u32 (the matmul reads it as its
// f16 b): half the stores here and half the loads there. The one-channel path then takes
// two neighbouring input channels per invocation, so that each store is a whole u32.
// The transform code is generated from G by winograd.ts; every store goes through st().
struct P { Co: u32, Ci: u32, nx: u32, wOff: u32, wCo: u32, wCi: u32, wTap: u32, pad: u32 }
@group(0) @binding(0) var<uniform> p: P;
//#if V4
//#if F16
@group(0) @binding(1) var<storage, read> w: array<vec2<u32>>;
//#else
@group(0) @binding(1) var<storage, read> w: array<vec4<f32>>;
//#endif
//#if UH
@group(0) @binding(2) var<storage, read_write> u: array<vec2<u32>>;
fn st(v: vec4<f32>) -> vec2<u32> { return vec2<u32>(f16_bits(v.x) | (f16_bits(v.y) << 16u), f16_bits(v.z) | (f16_bits(v.w) << 16u)); }
//#else
@group(0) @binding(2) var<storage, read_write> u: array<vec4<f32>>;
fn st(v: vec4<f32>) -> vec4<f32> { return v; }
//#endif
//#else
//#if F16
@group(0) @binding(1) var<storage, read> w: array<u32>;
fn ldw(i: u32) -> f32 { return unpack2x16float(w[i >> 1u])[i & 1u]; }
//#else
@group(0) @binding(1) var<storage, read> w: array<f32>;
fn ldw(i: u32) -> f32 { return w[i]; }
//#endif
//#if UH
@group(0) @binding(2) var<storage, read_write> u: array<u32>;
fn st(v: vec2<f32>) -> u32 { return f16_bits(v.x) | (f16_bits(v.y) << 16u); }
//#else
@group(0) @binding(2) var<storage, read_write> u: array<f32>;
fn st(v: f32) -> f32 { return v; }
//#endif
//#endif

//#if UH
//#include half_bits
//#endif

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x + gid.y * p.nx * 64u;
//#if V4
  // i: (co, c4) with c4 the vec4 of input channels 4 c4 .. 4 c4 + 3; U's vec4 index too.
  let c4n = p.Ci / 4u;
  if (i >= p.Co * c4n) { return; }
  let co = i / c4n;
  let c4 = i % c4n;
  let q0 = (p.wOff + co * p.wCo + c4 * 36u) / 4u;
  var f: array<f32, 36>;  // the 36 weights in memory order: channel 4 c4 + f / 9, tap f % 9
  for (var q = 0u; q < 9u; q++) {
//#if F16
    let h = w[q0 + q];
    let lo = unpack2x16float(h.x);
    let hi = unpack2x16float(h.y);
    f[4u * q] = lo.x; f[4u * q + 1u] = lo.y; f[4u * q + 2u] = hi.x; f[4u * q + 3u] = hi.y;
//#else
    let v = w[q0 + q];
    f[4u * q] = v.x; f[4u * q + 1u] = v.y; f[4u * q + 2u] = v.z; f[4u * q + 3u] = v.w;
//#endif
  }
  var g: array<vec4<f32>, 9>;
  for (var t = 0u; t < 9u; t++) { g[t] = vec4<f32>(f[t], f[9u + t], f[18u + t], f[27u + t]); }
  let plane = p.Co * c4n;
//#elif UH
  // i: (co, c2) with c2 the pair of input channels 2 c2, 2 c2 + 1; U's u32 index too.
  let c2n = p.Ci / 2u;
  if (i >= p.Co * c2n) { return; }
  let co = i / c2n;
  let base = p.wOff + co * p.wCo + (i % c2n) * 2u * p.wCi;
  var g: array<vec2<f32>, 9>;
  for (var t = 0u; t < 9u; t++) { g[t] = vec2<f32>(ldw(base + t * p.wTap), ldw(base + p.wCi + t * p.wTap)); }
  let plane = p.Co * c2n;
//#else
  if (i >= p.Co * p.Ci) { return; }
  let co = i / p.Ci;
  let ci = i % p.Ci;
  let base = p.wOff + co * p.wCo + ci * p.wCi;
  var g: array<f32, 9>;
  for (var t = 0u; t < 9u; t++) { g[t] = ldw(base + t * p.wTap); }
  let plane = p.Co * p.Ci;
//#endif
{{TRANSFORM}}
}
