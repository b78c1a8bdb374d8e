// One stage of a reduction over the middle axis of x viewed as (outer, R, inner):
// out[o, g, c] = COMBINE over r in [g*CH, min(R, g*CH + CH)) of LOAD(x[o, r, c]), times
// `scale`. Chained stages (CH = 64) form a tree, so long sums stay accurate in f32.
// Indices are local to the dispatched window box (ng groups x ni inner positions per outer
// index); g0 is the box's first group, `inner` the row stride of x.
struct P {
  total: u32, ng: u32, ni: u32, nx: u32,
  r: u32, ch: u32, g0: u32, bi: u32,
  bo: u32, s_in: u32, s_out: u32, scale: f32,
  inner: u32, pad0: u32, pad1: u32, pad2: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
{{DECL}}

fn load(i: u32) -> f32 {
  {{LOAD}}
}

fn combine(a: f32, b: f32) -> f32 {
  return {{COMBINE}};
}

@compute @workgroup_size({{WG}})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x + gid.y * p.nx * {{WG}}u;
  if (i >= p.total) { return; }
  let c = i % p.ni;
  let t = i / p.ni;
  let gl = t % p.ng;
  let o = t / p.ng;
  let r0 = (p.g0 + gl) * p.ch;
  let cnt = min(p.r - r0, p.ch);
  var idx = p.bi + o * p.s_in + gl * p.ch * p.inner + c;
  var acc = load(idx);
  for (var k = 1u; k < cnt; k++) {
    idx += p.inner;
    acc = combine(acc, load(idx));
  }
  out[p.bo + o * p.s_out + gl * p.inner + c] = acc * p.scale;
}
