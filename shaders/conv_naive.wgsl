// Direct 2-D convolution, NCHW, one output element per invocation (the reference variant).
// Weights (Co, Ci, kh, kw) are f32, or f16 packed two per u32 when W_F16 is set.
// A chunk covers input channels [ci0, ci0 + ciN) of the full Ci and output channels
// [co0, co0 + coN); with ACCUM the chunk's sum is added to what out already holds.
struct P {
  B: u32, Ci: u32, H: u32, W: u32,
  Co: u32, Ho: u32, Wo: u32, kh: u32,
  kw: u32, stride: u32, pad: u32, ci0: u32,
  ciN: u32, co0: u32, coN: u32, flags: u32,   // flags: 1 bias, 2 residual, 4 accumulate, 8 silu
  xBase: u32, oBase: u32, rBase: u32, nx: u32,
  xBatch: u32, oBatch: u32, total: u32, padT: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<{{WTYPE}}>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> res: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

fn wAt(i: u32) -> f32 {
{{WREAD}}
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
  let idx = g.x + g.y * nw.x * 64u;
  if (idx >= p.total) { return; }
  // idx over (b, co in chunk, oy, ox)
  let ox = idx % p.Wo;
  let oy = (idx / p.Wo) % p.Ho;
  let col = (idx / (p.Wo * p.Ho)) % p.coN;
  let b = idx / (p.Wo * p.Ho * p.coN);
  let co = p.co0 + col;
  var acc = 0.0;
  let iy0 = i32(oy * p.stride) - i32(p.padT);
  let ix0 = i32(ox * p.stride) - i32(p.pad);
  for (var c = 0u; c < p.ciN; c++) {
    let xc = p.xBase + b * p.xBatch + c * p.H * p.W;
    let wc = ((co * p.Ci) + p.ci0 + c) * p.kh * p.kw;
    for (var ky = 0u; ky < p.kh; ky++) {
      let iy = iy0 + i32(ky);
      if (iy < 0 || iy >= i32(p.H)) { continue; }
      for (var kx = 0u; kx < p.kw; kx++) {
        let ix = ix0 + i32(kx);
        if (ix < 0 || ix >= i32(p.W)) { continue; }
        acc += x[xc + u32(iy) * p.W + u32(ix)] * wAt(wc + ky * p.kw + kx);
      }
    }
  }
  let o = p.oBase + b * p.oBatch + col * p.Ho * p.Wo + oy * p.Wo + ox;
  if ((p.flags & 1u) != 0u) { acc += bias[co]; }
  if ((p.flags & 8u) != 0u) { acc = acc / (1.0 + exp(-acc)); }
  if ((p.flags & 2u) != 0u) { acc += res[p.rBase + b * p.oBatch + col * p.Ho * p.Wo + oy * p.Wo + ox]; }
  if ((p.flags & 4u) != 0u) { acc += out[o]; }
  out[o] = acc;
}
