// Shared by every matmul / conv kernel: the parameter block, the storage bindings and the
// fused epilogue out = act(alpha * acc + bias [+ out]) + residual.
//
// GLU (define, matmul only): b's columns hold (value, gate) pairs [v0, g0, v1, g1, ...]
// and column pair (n, n + 1), n even, writes out column n / 2 =
// (alpha * acc[n] + bias[n]) * act(alpha * acc[n + 1] + bias[n + 1]) + residual
// (act is the gate's activation: gelu for GEGLU). Every GLU dispatch is a FINAL one
// without ACCUM (matmul.ts sends a K split through a scratch buffer and matmul_glu.wgsl).
//
// Element (m, k) of a lives at aOff + batch * aBs + m * aRs + k * aCs (likewise b with
// (k, n) and out / residual with (m, n)): the strides express transposes, broadcast b
// (bBs = 0), the NCHW output of a 1x1 conv, and chunks of a problem bound as windows.
struct P {
  M: u32, N: u32, K: u32, nx: u32,
  aOff: u32, aRs: u32, aCs: u32, aBs: u32,
  bOff: u32, bRs: u32, bCs: u32, bBs: u32,
  oOff: u32, oRs: u32, oCs: u32, oBs: u32,
  rOff: u32, biasOff: u32, flags: u32, act: u32,
  alpha: f32, batch: u32, e0: u32, padT: u32,
  // conv2d only: input and output planes, kernel, stride, left padding (padT: top)
  H: u32, W: u32, Ho: u32, Wo: u32,
  kh: u32, kw: u32, stride: u32, pad: u32,
  // matmul_gpu2 / matmul_splitk: K splits, k per split, the scratch's split stride
  ks: u32, kc: u32, sStride: u32, e1: u32,
}

// flags
const HAS_BIAS = 1u;   // add bias[biasOff + n]
const ACCUM = 2u;      // add the value already in out (a chunk of K / input channels)
const FINAL = 4u;      // apply the activation (and residual); off for all but the last chunk
const HAS_RES = 8u;    // add residual after the activation
const BIAS_ROW = 16u;  // bias indexed by m (conv output channel) instead of n

@group(0) @binding(0) var<uniform> p: P;
// {{A_VEC}} / {{B_VEC}}: f32, vec4<f32>, or u32 / vec4<u32> holding f16 pairs.
@group(0) @binding(1) var<storage, read> a: array<{{A_VEC}}>;
@group(0) @binding(2) var<storage, read> b: array<{{B_VEC}}>;
//#if BIAS_F16
@group(0) @binding(3) var<storage, read> bias: array<u32>;
fn loadBias(i: u32) -> f32 { return unpack2x16float(bias[i >> 1u])[i & 1u]; }
//#else
@group(0) @binding(3) var<storage, read> bias: array<f32>;
fn loadBias(i: u32) -> f32 { return bias[i]; }
//#endif
@group(0) @binding(4) var<storage, read> res: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

// erf with |error| < 1.2e-7 (Numerical Recipes erfc, Chebyshev fit): WGSL has no erf.
fn erf_(x: f32) -> f32 {
  let z = abs(x);
  let t = 1.0 / (1.0 + 0.5 * z);
  let y = t * exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
    t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
    t * (-0.82215223 + t * 0.17087277)))))))));
  return select(y - 1.0, 1.0 - y, x >= 0.0);
}

// 0 none, 1 silu, 2 gelu (erf), 3 gelu_tanh, 4 quick_gelu
fn activate(x: f32, kind: u32) -> f32 {
  switch kind {
    case 1u: { return x / (1.0 + exp(-x)); }
    case 2u: { return 0.5 * x * (1.0 + erf_(x * 0.70710678118654752)); }
    case 3u: {
      // tanh through exp, argument clamped: large |u| must give +-1, not inf/inf.
      let u = clamp(0.7978845608028654 * (x + 0.044715 * x * x * x), -15.0, 15.0);
      let e = exp(2.0 * u);
      return 0.5 * x * (1.0 + (e - 1.0) / (e + 1.0));
    }
    case 4u: { return x / (1.0 + exp(-1.702 * x)); }
    default: { return x; }
  }
}

fn epilogue(acc: f32, m: u32, n: u32, z: u32) {
  let o = z * p.oBs + m * p.oRs + n * p.oCs;
  var v = p.alpha * acc;
  if ((p.flags & HAS_BIAS) != 0u) { v += loadBias(p.biasOff + select(n, m, (p.flags & BIAS_ROW) != 0u)); }
  if ((p.flags & ACCUM) != 0u) { v += out[p.oOff + o]; }
  if ((p.flags & FINAL) != 0u) {
//#if !ACT_NONE
    // ACT_NONE (a define where the caller knows act is 'none'): on lavapipe every case of
    // the switch runs under a mask, so leaving it out saves ~8% of a K = 320 matmul.
    v = activate(v, p.act);
//#endif
    if ((p.flags & HAS_RES) != 0u) { v += res[p.rOff + o]; }
  }
  out[p.oOff + o] = v;
}

//#if GLU
// Value column n and gate column n + 1 (n even) of row m -> out column n / 2.
fn epilogueGlu(x: f32, g: f32, m: u32, n: u32, z: u32) {
  let o = z * p.oBs + m * p.oRs + (n >> 1u) * p.oCs;
  var v = p.alpha * x;
  var gate = p.alpha * g;
  if ((p.flags & HAS_BIAS) != 0u) {
    v += loadBias(p.biasOff + n);
    gate += loadBias(p.biasOff + n + 1u);
  }
  v *= activate(gate, p.act);
  if ((p.flags & HAS_RES) != 0u) { v += res[p.rOff + o]; }
  out[p.oOff + o] = v;
}
//#endif

// Four neighbouring columns n0 .. n0 + 3 of row m. The loop stays rolled (the unroller
// only takes `i++` / `i += S` loops): inlining the epilogue once per output element made
// lavapipe's compile of the register-blocked kernels take minutes.
fn epilogue4(v: vec4<f32>, m: u32, n0: u32, z: u32) {
//#if GLU
  // Pairs (n0, n0 + 1) and (n0 + 2, n0 + 3): n0 and N are even, so a pair lies wholly
  // inside or wholly past the edge.
  for (var j = 0u; j < 4u; j = j + 2u) {
    if (n0 + j < p.N) { epilogueGlu(v[j], v[j + 1u], m, n0 + j, z); }
  }
//#else
  for (var j = 0u; j < 4u; j = j + 1u) {
    if (n0 + j < p.N) { epilogue(v[j], m, n0 + j, z); }
  }
//#endif
}

// Four neighbouring rows m0 .. m0 + 3 of column n (conv: four output channels of a pixel).
fn epilogue4r(v: vec4<f32>, m0: u32, n: u32, z: u32) {
  for (var j = 0u; j < 4u; j = j + 1u) {
    if (m0 + j < p.M) { epilogue(v[j], m0 + j, n, z); }
  }
}
