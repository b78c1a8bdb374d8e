// Parameters and bindings shared by the fused attention forward kernels (attention_cpu,
// attention_gpu, attention_gpu2), included with //#include. ELEM: vec4<f32> when d % 4 == 0
// and the kernel reads vec4s, else f32. d4 and TK (vec4 per head row, keys per shared tile)
// are read by the 'gpu' kernels only.
struct P {
  B: u32, Nq: u32, Nk: u32, H: u32,
  d: u32, HD: u32, causal: u32, hasMask: u32,
  wantStats: u32, nx: u32, nRG: u32, scale2: f32,
  d4: u32, TK: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> qb: array<{{ELEM}}>;
@group(0) @binding(2) var<storage, read> kb: array<{{ELEM}}>;
@group(0) @binding(3) var<storage, read> vb: array<{{ELEM}}>;
@group(0) @binding(4) var<storage, read> mask: array<f32>;
@group(0) @binding(5) var<storage, read_write> ob: array<{{ELEM}}>;
@group(0) @binding(6) var<storage, read_write> stats: array<f32>;
