// Head-mean attention probabilities for GPUs (the 'gpu' variant; attention_probs_cpu.wgsl is
// lavapipe's): a workgroup of 16 x 16 invocations owns a 64 x 64 tile of one output plane
// (query rows x keys), invocation (x, y) the rows y + 16 rr and keys x + 16 cc (rr, cc < 4),
// so that 16 neighbours write 16 neighbouring keys. Per batch and head, q and k pass through
// workgroup memory in slices of 16 channels, stored channel-major so that the 16 lanes of a
// row read 16 neighbouring words. The scores are recomputed with the max and sum the forward
// pass stored, exponentiated, and summed over heads (and batches, when summing over them)
// in registers before one read-modify-write of probs. Masked keys and, when causal, keys
// after the query get 0; a query whose sum is 0 (every key masked) gets 0.
// Parameters and bindings: attention_probs_common.wgsl (nRB / nKB count tiles of 64 rows /
// 64 keys here). Template: ELEM (f32).
//#include attention_probs_common

const T = 64u;  // rows and keys per tile
const C = 16u;  // channels per slice
var<workgroup> qsT: array<f32, 1024>;  // [c][row]
var<workgroup> ksT: array<f32, 1024>;  // [c][key]
var<workgroup> st: array<vec2<f32>, 64>;  // (max, 1 / sum) of the tile's rows, this batch and head
var<workgroup> keepKey: array<f32, 64>;  // 1 / 0: the tile's keys under this batch's mask

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let w = wid.x + wid.y * p.nx;
  if (w >= p.nOut * p.nRB * p.nKB) { return; }
  let tile = probsTile(w);
  let pl = tile.pl;
  let i0 = tile.rb * T;
  let j0 = tile.kb * T;
  // Causal: a tile entirely above the diagonal holds nothing.
  if (p.causal != 0u && j0 > i0 + T - 1u) { return; }

  var a = array<array<f32, 4>, 4>();
  for (var b = tile.b0; b < tile.b1; b++) {
    workgroupBarrier();  // the last head's readers of keepKey are done
    if (li < T) {
      let j = min(j0 + li, p.Nk - 1u);
      keepKey[li] = select(1.0, mask[b * p.Nk + j], p.hasMask != 0u);
    }
    for (var h = 0u; h < p.H; h++) {
      workgroupBarrier();  // the last head's readers of st are done
      if (li < T) {
        let si = ((b * p.H + h) * p.Nq + min(i0 + li, p.Nq - 1u)) * 2u;
        let l = stats[si + 1u];
        st[li] = vec2<f32>(stats[si], select(0.0, 1.0 / l, l > 0.0));
      }
      let hoff = h * p.d;
      // Explicitly zeroed: on lavapipe a plain `var s: array<...>;` in a loop kept the last
      // iteration's values (attention_gpu2.wgsl saw the same).
      var s = array<array<f32, 4>, 4>();
      for (var c0 = 0u; c0 < p.d; c0 += C) {
        workgroupBarrier();
        for (var e = li; e < T * C; e += 256u) {
          let r = e / C;
          let c = e % C;
          let ch = c0 + c;
          let inside = ch < p.d;
          let qi = min(i0 + r, p.Nq - 1u);
          let kj = min(j0 + r, p.Nk - 1u);
          qsT[c * T + r] = select(0.0, qb[(b * p.Nq + qi) * p.HD + hoff + min(ch, p.d - 1u)], inside);
          ksT[c * T + r] = select(0.0, kb[(b * p.Nk + kj) * p.HD + hoff + min(ch, p.d - 1u)], inside);
        }
        workgroupBarrier();
        for (var c = 0u; c < C; c++) {
          var qv: array<f32, 4>;
          var kv: array<f32, 4>;
          for (var rr = 0u; rr < 4u; rr++) { qv[rr] = qsT[c * T + lid.y + 16u * rr]; }
          for (var cc = 0u; cc < 4u; cc++) { kv[cc] = ksT[c * T + lid.x + 16u * cc]; }
          for (var rr = 0u; rr < 4u; rr++) {
            for (var cc = 0u; cc < 4u; cc++) { s[rr][cc] += qv[rr] * kv[cc]; }
          }
        }
      }
      for (var rr = 0u; rr < 4u; rr++) {
        let ml = st[lid.y + 16u * rr];
        let i = i0 + lid.y + 16u * rr;
        for (var cc = 0u; cc < 4u; cc++) {
          let j = j0 + lid.x + 16u * cc;
          // A masked key may score above the row max: select, never multiply, to drop it.
          let keep = keepKey[lid.x + 16u * cc] != 0.0 && (p.causal == 0u || j <= i);
          a[rr][cc] += select(0.0, exp2(s[rr][cc] * p.scale2 - ml.x) * ml.y, keep);
        }
      }
    }
  }
  for (var rr = 0u; rr < 4u; rr++) {
    let i = i0 + lid.y + 16u * rr;
    if (i >= p.Nq) { continue; }
    for (var cc = 0u; cc < 4u; cc++) {
      let j = j0 + lid.x + 16u * cc;
      if (j < p.Nk && (p.causal == 0u || j <= i)) {
        let pi = (pl * p.Nq + i) * p.Nk + j;
        probs[pi] += a[rr][cc] * p.invH;
      }
    }
  }
}
