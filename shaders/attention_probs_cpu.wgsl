{{ENABLE}}
// Head-mean attention probabilities for lavapipe: workgroup of 8, each invocation owns R
// query rows x JB keys of one output plane (keys t, t+8, ... of the workgroup's key block)
// and sums exp2(s - max) / sum over heads (and batches when summing over them) in registers
// before one read-modify-write of probsOut. Scores are recomputed with the statistics the
// forward pass stored, so the per-head probabilities never exist. The body is generated
// (unrolled) by src/kernels/attention.ts, as for attention_cpu.wgsl.
// Template: ELEM, LOADERS (ldq / ldk), BODY.
//#include attention_probs_common

{{LOADERS}}

@compute @workgroup_size(8)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let w = wid.x + wid.y * p.nx;
  if (w >= p.nOut * p.nRB * p.nKB) { return; }
  let tile = probsTile(w);
  let kbk = tile.kb;
  let pl = tile.pl;
  let b0 = tile.b0;
  let b1 = tile.b1;
  let i0 = tile.rb * {{R}}u;
  let j0 = kbk * 8u * {{JB}}u + t;
  // Causal: blocks entirely above the diagonal hold nothing.
  if (p.causal != 0u && kbk * 8u * {{JB}}u > i0 + {{R}}u - 1u) { return; }
{{BODY}}
}
