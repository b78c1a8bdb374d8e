// Copies the a operand of a cpu-kernel GEMM into an rgba32float 2D-array texture that
// matmul_cpu.wgsl (A_TEX) reads with textureLoad: texel (x, m, z) holds
// a[z, m, 4x .. 4x + 3] (zeros past K). On lavapipe a textureLoad is a vectorised fetch of
// 8 lanes' texels, where a storage-buffer load at per-lane addresses is a loop over the
// lanes with a branch and a bounds check per word (docs/KERNELS.md). packTexture
// (matmul.ts) uses a buffer-to-texture copy instead where rows are 256-byte multiples.
// V4: a is contiguous along K with 4-aligned rows and offset (one vec4 load per texel).
// T4: a is contiguous along M (a transposed, e.g. the x of a 1x1 conv), M, offset, column
// and batch strides multiples of 4: an invocation loads 4 vec4 (4 k of 4 rows) and writes
// the 4 texels of those rows, a 4x4 transpose in registers instead of 16 scalar loads.
struct P {
  M: u32, K: u32, K4: u32, batch: u32,
  aOff: u32, aRs: u32, aCs: u32, aBs: u32,
}
@group(0) @binding(0) var<uniform> p: P;
//#if V4 || T4
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
//#else
@group(0) @binding(1) var<storage, read> a: array<f32>;
//#endif
@group(0) @binding(2) var dst: texture_storage_2d_array<rgba32float, write>;

@compute @workgroup_size(8)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let x = gid.x;
  let z = gid.z;
  if (x >= p.K4) { return; }
//#if T4
  // gid.y: the block of rows 4 gid.y .. 4 gid.y + 3 (aRs == 1)
  let m0 = 4u * gid.y;
  let base = p.aOff + z * p.aBs + m0;
  var c: array<vec4<f32>, 4>;  // c[j]: rows m0 .. m0 + 3 of column k = 4x + j (zeros past K)
  for (var j = 0u; j < 4u; j++) {
    let k = 4u * x + j;
    c[j] = select(vec4<f32>(0.0), a[(base + min(k, p.K - 1u) * p.aCs) >> 2u], k < p.K);
  }
  for (var r = 0u; r < 4u; r++) {
    textureStore(dst, vec2<u32>(x, m0 + r), z, vec4<f32>(c[0][r], c[1][r], c[2][r], c[3][r]));
  }
//#else
  let m = gid.y;
  let base = p.aOff + z * p.aBs + m * p.aRs;
//#if V4
  let v = a[(base >> 2u) + x];
//#else
  var v = vec4<f32>(0.0);
  for (var j = 0u; j < 4u; j++) {
    let k = 4u * x + j;
    if (k < p.K) { v[j] = a[base + k * p.aCs]; }
  }
//#endif
  textureStore(dst, vec2<u32>(x, m), z, v);
//#endif
}
