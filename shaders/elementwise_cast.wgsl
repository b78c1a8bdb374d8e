// f32 <-> packed f16 conversion, two elements (one u32 of halves) per invocation.
// The dispatcher supplies the body (to f16 or to f32). b32 counts f32 elements, b16 u32 words
// of halves (window bases are even elements).
struct P { n: u32, nx: u32, b32: u32, b16: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> src: array<{{SRC}}>;
@group(0) @binding(2) var<storage, read_write> dst: array<{{DST}}>;

//#include half_bits

// One value to f16 bits: overflow becomes +-inf (what torch's .half() gives), NaN stays NaN.
fn half_bits(x: f32) -> u32 {
  if (x != x) { return 0x7e00u; }
  return f16_bits(x);
}

@compute @workgroup_size({{WG}})
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  let w = g.x + g.y * p.nx * {{WG}}u;
  let e = w * 2u;
  if (e >= p.n) { return; }
  {{BODY}}
}
