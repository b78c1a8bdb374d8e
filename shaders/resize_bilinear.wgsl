// Bilinear resize of (B*C, H, W) planes, torch interpolate(mode='bilinear',
// align_corners=False, antialias=False): source = max(scale * (dst + 0.5) - 0.5, 0) with
// scale = in / out, upper neighbour clamped at the edge (ATen upsample_bilinear2d).
// One output element per invocation; y0/x0 are the window box's first output row/column.
struct P {
  total: u32, nx: u32, bi: u32, bo: u32,
  h: u32, w: u32, bh: u32, bw: u32,
  y0: u32, x0: u32, oh: u32, ow: u32,
  sh: f32, sw: f32, pad0: u32, pad1: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size({{WG}})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x + gid.y * p.nx * {{WG}}u;
  if (i >= p.total) { return; }
  // (plane, row, col) inside the box of bh x bw outputs per plane
  let lc = i % p.bw;
  let t = i / p.bw;
  let lr = t % p.bh;
  let plane = t / p.bh;
  let oy = p.y0 + lr;
  let ox = p.x0 + lc;
  let sy = max(p.sh * (f32(oy) + 0.5) - 0.5, 0.0);
  let sx = max(p.sw * (f32(ox) + 0.5) - 0.5, 0.0);
  let y1 = u32(sy);
  let x1 = u32(sx);
  let ly = sy - f32(y1);
  let lx = sx - f32(x1);
  let dy = select(0u, p.w, y1 < p.h - 1u);
  let dx = select(0u, 1u, x1 < p.w - 1u);
  let b = p.bi + plane * p.h * p.w + y1 * p.w + x1;
  let top = (1.0 - lx) * x[b] + lx * x[b + dx];
  let bot = (1.0 - lx) * x[b + dy] + lx * x[b + dy + dx];
  y[p.bo + plane * p.oh * p.ow + lr * p.ow + lc] = (1.0 - ly) * top + ly * bot;
}
