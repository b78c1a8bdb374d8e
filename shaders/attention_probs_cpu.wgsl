{{ENABLE}}
// Head-mean attention probabilities for lavapipe: workgroup of 8, each invocation owns R
// query rows x JB keys of one output plane (keys t, t+8, ... of the workgroup's key block)
// and sums exp2(s - max) / sum over heads (and batches when summing over them) in registers
// before one read-modify-write of probsOut. Scores are recomputed with the statistics the
// forward pass stored, so the per-head probabilities never exist. The body is generated
// (unrolled) by src/kernels/attention.ts, as for attention_cpu.wgsl.
// Template: ELEM, LOADERS (ldq / ldk), BODY.
struct P {
  B: u32, Nq: u32, Nk: u32, H: u32,
  d: u32, HD: u32, causal: u32, hasMask: u32,
  sumBatch: u32, nx: u32, bOut0: u32, nOut: u32,
  scale2: f32, invH: f32, nRB: u32, nKB: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> qb: array<{{ELEM}}>;
@group(0) @binding(2) var<storage, read> kb: array<{{ELEM}}>;
@group(0) @binding(3) var<storage, read> mask: array<f32>;
@group(0) @binding(4) var<storage, read> stats: array<f32>;
@group(0) @binding(5) var<storage, read_write> probs: array<f32>;

{{LOADERS}}

@compute @workgroup_size(8)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let w = wid.x + wid.y * p.nx;
  if (w >= p.nOut * p.nRB * p.nKB) { return; }
  let kbk = w % p.nKB;
  let rb = (w / p.nKB) % p.nRB;
  let pl = w / (p.nKB * p.nRB);
  let plane = p.bOut0 + pl;
  var b0 = plane;
  var b1 = plane + 1u;
  if (p.sumBatch != 0u) { b0 = 0u; b1 = p.B; }
  let i0 = rb * {{R}}u;
  let j0 = kbk * 8u * {{JB}}u + t;
  // Causal: blocks entirely above the diagonal hold nothing.
  if (p.causal != 0u && kbk * 8u * {{JB}}u > i0 + {{R}}u - 1u) { return; }
{{BODY}}
}
