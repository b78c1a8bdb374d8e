// Naive fused attention: one invocation per (batch, head, query row), scalar loads, online
// softmax over the keys, one pass over the keys per 64 output channels. The reference the
// faster variants are checked against; kept as the variant 'naive'.
struct P {
  B: u32, Nq: u32, Nk: u32, H: u32,
  d: u32, HD: u32, causal: u32, hasMask: u32,
  wantStats: u32, nx: u32, nRG: u32, scale2: f32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> mask: array<f32>;
@group(0) @binding(5) var<storage, read_write> o: array<f32>;
@group(0) @binding(6) var<storage, read_write> stats: array<f32>;

// Scores are kept in log2 units (scale2 = scale * log2(e)) and masked keys are skipped, so
// a finite sentinel serves as -inf (WGSL has no infinity literal).
const NEG = -3.0e38;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let idx = (wid.x + wid.y * p.nx) * 64u + li;
  if (idx >= p.B * p.H * p.Nq) { return; }
  let i = idx % p.Nq;
  let bh = idx / p.Nq;
  let h = bh % p.H;
  let b = bh / p.H;
  let qo = (b * p.Nq + i) * p.HD + h * p.d;
  var kend = p.Nk;
  if (p.causal != 0u) { kend = min(p.Nk, i + 1u); }
  for (var c0 = 0u; c0 < p.d; c0 += 64u) {
    let cn = min(64u, p.d - c0);
    var acc: array<f32, 64>;
    for (var c = 0u; c < 64u; c++) { acc[c] = 0.0; }
    var m = NEG;
    var l = 0.0;
    for (var j = 0u; j < kend; j++) {
      if (p.hasMask != 0u && mask[b * p.Nk + j] == 0.0) { continue; }
      let ko = (b * p.Nk + j) * p.HD + h * p.d;
      var s = 0.0;
      for (var c = 0u; c < p.d; c++) { s += q[qo + c] * k[ko + c]; }
      s *= p.scale2;
      let mn = max(m, s);
      let a = exp2(m - mn);
      let pj = exp2(s - mn);
      l = l * a + pj;
      for (var c = 0u; c < cn; c++) { acc[c] = acc[c] * a + pj * v[ko + c0 + c]; }
      m = mn;
    }
    // A query with no visible key (all masked) gets zeros rather than NaN.
    let inv = select(0.0, 1.0 / l, l > 0.0);
    for (var c = 0u; c < cn; c++) { o[qo + c0 + c] = acc[c] * inv; }
    if (p.wantStats != 0u && c0 == 0u) {
      stats[idx * 2u] = m;
      stats[idx * 2u + 1u] = l;
    }
  }
}
