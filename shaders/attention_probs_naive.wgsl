// Naive head-mean attention probabilities: one invocation per element of probsOut, which
// recomputes the score of every head (and batch, when summing over it) with the softmax
// max / sum the forward pass left in `stats`, and adds the mean over heads.
struct P {
  B: u32, Nq: u32, Nk: u32, H: u32,
  d: u32, HD: u32, causal: u32, hasMask: u32,
  sumBatch: u32, nx: u32, bOut0: u32, nOut: u32,
  scale2: f32, invH: f32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> mask: array<f32>;
@group(0) @binding(4) var<storage, read> stats: array<f32>;
@group(0) @binding(5) var<storage, read_write> probs: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  // idx runs over the bound window of probsOut: nOut planes of (Nq, Nk) from plane bOut0.
  let idx = (wid.x + wid.y * p.nx) * 64u + li;
  if (idx >= p.nOut * p.Nq * p.Nk) { return; }
  let j = idx % p.Nk;
  let i = (idx / p.Nk) % p.Nq;
  let plane = p.bOut0 + idx / (p.Nk * p.Nq);
  var b0 = plane;
  var b1 = plane + 1u;
  if (p.sumBatch != 0u) { b0 = 0u; b1 = p.B; }
  if (p.causal != 0u && j > i) { return; }
  var acc = 0.0;
  for (var b = b0; b < b1; b++) {
    if (p.hasMask != 0u && mask[b * p.Nk + j] == 0.0) { continue; }
    for (var h = 0u; h < p.H; h++) {
      let qo = (b * p.Nq + i) * p.HD + h * p.d;
      let ko = (b * p.Nk + j) * p.HD + h * p.d;
      var s = 0.0;
      for (var c = 0u; c < p.d; c++) { s += q[qo + c] * k[ko + c]; }
      let si = ((b * p.H + h) * p.Nq + i) * 2u;
      acc += exp2(s * p.scale2 - stats[si]) / stats[si + 1u];
    }
  }
  probs[idx] += acc * p.invH;
}
