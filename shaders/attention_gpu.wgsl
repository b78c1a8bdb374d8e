// Fused attention in the usual GPU shape: a workgroup of 64 invocations, one query row each,
// of one (batch, head); K and V come through shared memory in tiles of TK keys (TK * d4 vec4
// each, filled cooperatively and coalesced), then each invocation scores its row against the
// tile and does one online-softmax update (flash attention, f32 max / sum) per tile.
// q / k / v are read as f32 so any head size works; d <= 4 * DMAX4 (a template bucket).
//#include attention_common

const WG = 64u;
const DMAX4 = {{DMAX4}}u;
const TILE = 512u;  // vec4 per shared tile: 8 KiB each for K and V
const NEG = -3.0e38;

var<workgroup> ks: array<vec4<f32>, TILE>;
var<workgroup> vs: array<vec4<f32>, TILE>;

fn ld4(buf: u32, base: u32, c4: u32) -> vec4<f32> {
  let c = c4 * 4u;
  var r = vec4<f32>(0.0);
  for (var e = 0u; e < 4u; e++) {
    if (c + e < p.d) {
      if (buf == 0u) { r[e] = qb[base + c + e]; } else if (buf == 1u) { r[e] = kb[base + c + e]; } else { r[e] = vb[base + c + e]; }
    }
  }
  return r;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let w = wid.x + wid.y * p.nx;
  if (w >= p.B * p.H * p.nRG) { return; }
  let rg = w % p.nRG;
  let bh = w / p.nRG;
  let h = bh % p.H;
  let b = bh / p.H;
  let i = rg * WG + t;
  let d4 = p.d4;
  let qo = (b * p.Nq + min(i, p.Nq - 1u)) * p.HD + h * p.d;
  var q: array<vec4<f32>, DMAX4>;
  var o: array<vec4<f32>, DMAX4>;
  for (var c = 0u; c < d4; c++) {
    q[c] = ld4(0u, qo, c) * p.scale2;
    o[c] = vec4<f32>(0.0);
  }
  var m = NEG;
  var l = 0.0;
  var kend = p.Nk;
  if (p.causal != 0u) { kend = min(p.Nk, (rg + 1u) * WG); }
  for (var j0 = 0u; j0 < kend; j0 += p.TK) {
    workgroupBarrier();
    for (var e = t; e < p.TK * d4; e += WG) {
      let j = min(j0 + e / d4, p.Nk - 1u);
      let ko = (b * p.Nk + j) * p.HD + h * p.d;
      ks[e] = ld4(1u, ko, e % d4);
      vs[e] = ld4(2u, ko, e % d4);
    }
    workgroupBarrier();
    let tn = min(p.TK, kend - j0);
    var sc: array<f32, 128>;
    var mx = m;
    for (var jj = 0u; jj < tn; jj++) {
      let j = j0 + jj;
      var s = 0.0;
      for (var c = 0u; c < d4; c++) { s += dot(q[c], ks[jj * d4 + c]); }
      var ok = p.causal == 0u || j <= i;
      if (p.hasMask != 0u) { ok = ok && mask[b * p.Nk + j] != 0.0; }
      s = select(NEG, s, ok);
      sc[jj] = s;
      mx = max(mx, s);
    }
    let al = exp2(m - mx);
    l *= al;
    for (var c = 0u; c < d4; c++) { o[c] *= al; }
    for (var jj = 0u; jj < tn; jj++) {
      let pj = select(0.0, exp2(sc[jj] - mx), sc[jj] > 0.5 * NEG);
      l += pj;
      for (var c = 0u; c < d4; c++) { o[c] += pj * vs[jj * d4 + c]; }
    }
    m = mx;
  }
  if (i < p.Nq) {
    let inv = select(0.0, 1.0 / l, l > 0.0);
    for (var c = 0u; c < d4; c++) {
      let v = o[c] * inv;
      for (var e = 0u; e < 4u; e++) { if (c * 4u + e < p.d) { ob[qo + c * 4u + e] = v[e]; } }
    }
    if (p.wantStats != 0u) {
      let si = (bh * p.Nq + i) * 2u;
      stats[si] = m;
      stats[si + 1u] = l;
    }
  }
}
