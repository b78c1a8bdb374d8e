// Parameters, bindings and tile bookkeeping shared by the head-mean probability kernels
// (attention_probs_cpu, attention_probs_gpu), included with //#include. ELEM: the element of
// q and k (vec4<f32> where the cpu kernel reads vec4s, else f32). nRB / nKB: row and key
// blocks per output plane, each kernel's own block sizes.
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

// Workgroup w's block: key block, row block, plane within the bound window of probs, and the
// batches it sums (its own, or all of them with sumBatch).
struct ProbsTile { kb: u32, rb: u32, pl: u32, b0: u32, b1: u32 }
fn probsTile(w: u32) -> ProbsTile {
  let pl = w / (p.nKB * p.nRB);
  var t = ProbsTile(w % p.nKB, (w / p.nKB) % p.nRB, pl, p.bOut0 + pl, p.bOut0 + pl + 1u);
  if (p.sumBatch != 0u) {
    t.b0 = 0u;
    t.b1 = p.B;
  }
  return t;
}
