// Weights (Co, Ci, T = kh*kw) -> (Ci, T, Co) for the direct conv: there each tap's output
// channels are contiguous, so one vec4 load feeds four output channels. f16 stays packed:
// each invocation writes one u32 (two halves).
struct R { Co: u32, Ci: u32, T: u32, n: u32, nx: u32, e0: u32, e1: u32, e2: u32 }
@group(0) @binding(0) var<uniform> r: R;
@group(0) @binding(1) var<storage, read> src: array<{{ELEM}}>;
@group(0) @binding(2) var<storage, read_write> dst: array<{{ELEM}}>;

fn srcIndex(o: u32) -> u32 {
  let co = o % r.Co;
  let q = o / r.Co;
  return (co * r.Ci + q / r.T) * r.T + q % r.T;
}

//#if F16
fn half(i: u32) -> u32 { return (src[i >> 1u] >> ((i & 1u) * 16u)) & 0xffffu; }
//#endif

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let i = (wid.x + wid.y * r.nx) * 64u + li;
//#if F16
  let o = 2u * i;
  if (o >= r.n) { return; }
  var hi = 0u;
  if (o + 1u < r.n) { hi = half(srcIndex(o + 1u)); }
  dst[i] = half(srcIndex(o)) | (hi << 16u);
//#else
  if (i >= r.n) { return; }
  dst[i] = src[srcIndex(i)];
//#endif
}
