// Matrix multiply with a fused epilogue: out = act(alpha * a@b + bias) + residual.
// shaders/matmul_naive.wgsl (one output per invocation, the reference variant),
// shaders/matmul_cpu.wgsl (lavapipe: register blocks, vec4 loads, workgroup of 8) and
// shaders/matmul_gpu.wgsl (shared-memory tiles) share shaders/matmul_common.wgsl.
//
// Every op lowers to one strided GEMM description (`Gemm`): operands are (offset, row
// stride, column stride, batch stride) over a tensor's storage, so transposes, broadcast
// weights, the NCHW output of a 1x1 conv and chunks of a problem larger than one storage
// binding are all the same kernel with other numbers.
//
// GLU epilogues (`glu: 'geglu'`): b's N columns hold (value, gate) pairs interleaved
// [v0, g0, v1, g1, ...] (gluInterleave() re-lays a checkpoint's chunked weight once, at
// load), so the two columns of a pair are neighbours in every variant's register block
// and the kernel writes out (..., M, N/2) = value * gelu(gate) directly.
import { GpuError, Tensor, keep, loadShader, fillTemplate, grid1d, uniforms, shapeStr, type Binding, type BufferBinding, type DType, type Device } from '../tensor/index.js';
import { cast, stridedMap } from './elementwise.js';

export type Act = 'none' | 'silu' | 'gelu' | 'gelu_tanh' | 'quick_gelu';
export type MatmulVariant = 'naive' | 'cpu' | 'gpu';

export const ACT_CODE: Record<Act, number> = { none: 0, silu: 1, gelu: 2, gelu_tanh: 3, quick_gelu: 4 };

/** Gated linear units fused into the epilogue, and the activation each applies to the gate. */
export type Glu = 'geglu';
export const GLU_ACT: Record<Glu, Act> = { geglu: 'gelu' };

export interface MatmulOptions {
  /** a is stored (..., K, M). */
  transA?: boolean;
  /** b is stored (..., N, K) (the nn.Linear weight layout). */
  transB?: boolean;
  /** (N), added before the activation. */
  bias?: Tensor;
  act?: Act;
  /** (..., M, N) like the output, added after the activation. */
  residual?: Tensor;
  /** Scales a@b before bias (default 1). */
  alpha?: number;
  /**
   * 'geglu': b's N (even) columns are (value, gate) pairs [v0, g0, v1, g1, ...] (see
   * gluInterleave) and the output has N/2 columns: out[.., m, j] = h[.., m, 2j] *
   * gelu(h[.., m, 2j + 1]) + residual with h = alpha * a@b + bias. Excludes `act`.
   */
  glu?: Glu;
  variant?: MatmulVariant;
  /** Kernel family in profiles (default 'matmul'), e.g. 'winograd matmul'. */
  family?: string;
}

/** Kernel variants of matmul / linear / gemv, for `doctor` and tests. */
export function variants(): string[] {
  return ['naive', 'cpu', 'gpu'];
}

// ------------------------------------------------------------------ binding size limit
let maxBindingOverride: number | undefined;

/**
 * Test hook: pretend the adapter's maxStorageBufferBindingSize is `bytes` (undefined
 * restores the real limit), so the split paths run on small shapes.
 */
export function setMaxBindingBytes(bytes: number | undefined): void {
  maxBindingOverride = bytes;
}

export function maxBindingBytes(dev: Device): number {
  const real = dev.limits.maxStorageBufferBindingSize;
  return maxBindingOverride === undefined ? real : Math.min(real, maxBindingOverride);
}

/** Alignment of a storage binding's offset (minStorageBufferOffsetAlignment, 256 on lavapipe). */
export function bindingAlign(dev: Device): number {
  return (dev.gpu.limits as unknown as { minStorageBufferOffsetAlignment?: number }).minStorageBufferOffsetAlignment ?? 256;
}

// ------------------------------------------------------------------ shader preprocessing
/**
 * loadShader (which resolves `//#include name`) + `//#if A || !B && C` / `//#elif` / `//#else` / `//#endif`
 * (each on its own line) and `{{KEY}}` substitution.
 */
export function buildShader(name: string, defines: Record<string, boolean>, values: Record<string, string | number> = {}, opts: { unroll?: boolean } = {}): string {
  const src = loadShader(name);
  const test = (expr: string): boolean =>
    expr.split('||').some((alt) =>
      alt.split('&&').every((term) => {
        const t = term.trim();
        return t.startsWith('!') ? !defines[t.slice(1).trim()] : Boolean(defines[t]);
      }),
    );
  const out: string[] = [];
  const stack: { parent: boolean; active: boolean; taken: boolean }[] = [];
  const active = (): boolean => (stack.length ? stack[stack.length - 1]!.active : true);
  for (const line of src.split('\n')) {
    const t = line.trim();
    let m: RegExpExecArray | null;
    if ((m = /^\/\/#if (.+)$/.exec(t))) {
      const parent = active();
      const c = test(m[1]!);
      stack.push({ parent, active: parent && c, taken: c });
    } else if ((m = /^\/\/#elif (.+)$/.exec(t))) {
      const top = stack[stack.length - 1]!;
      const c = !top.taken && test(m[1]!);
      top.active = top.parent && c;
      top.taken ||= c;
    } else if (t === '//#else') {
      const top = stack[stack.length - 1]!;
      top.active = top.parent && !top.taken;
      top.taken = true;
    } else if (t === '//#endif') {
      stack.pop();
    } else if (active()) {
      out.push(line);
    }
  }
  if (stack.length) throw new GpuError(`shader ${name}: unterminated //#if`);
  const filled = fillTemplate(out.join('\n'), { A_VEC: 'f32', B_VEC: 'f32', ...values });
  return opts.unroll === false ? filled : unroll(filled);
}

/**
 * Unrolls every `for (var i = 0u; i < BOUND; i++)` (or `i += Su`) whose bound is a
 * constant: lavapipe's compiler keeps big loops rolled, and a rolled loop indexes the
 * register-block arrays dynamically, which puts them in memory (20x slower). Each
 * iteration becomes a `{ ... }` block with the index as a literal.
 */
function unroll(src: string): string {
  const consts = new Map<string, number>();
  for (const m of src.matchAll(/^const (\w+) = (\d+)u;/gm)) consts.set(m[1]!, Number(m[2]));
  const evalBound = (expr: string): number | undefined => {
    const e = expr.trim().replace(/\b([A-Z_][A-Z0-9_]*)\b/g, (w) => (consts.has(w) ? String(consts.get(w)) : w)).replace(/(\d+)u\b/g, '$1');
    const m = /^(\d+)(?:\s*([*/+-])\s*(\d+))?$/.exec(e);
    if (!m) return undefined;
    const x = Number(m[1]);
    const y = Number(m[3]);
    switch (m[2]) {
      case undefined: return x;
      case '*': return x * y;
      case '/': return Math.floor(x / y);
      case '+': return x + y;
      default: return x - y;
    }
  };
  const head = /for \(var (\w+) = 0u; \1 < ([^;]+); \1(?:\+\+| \+= (\d+)u)\) \{/g;
  for (;;) {
    head.lastIndex = 0;
    let m: RegExpExecArray | null;
    let found: { m: RegExpExecArray; bound: number } | undefined;
    while ((m = head.exec(src))) {
      const bound = evalBound(m[2]!);
      if (bound !== undefined) {
        found = { m, bound };
        break;
      }
    }
    if (!found) return src;
    const { m: hm, bound } = found;
    const v = hm[1]!;
    const step = hm[3] ? Number(hm[3]) : 1;
    const open = hm.index + hm[0].length;
    let depth = 1;
    let i = open;
    for (; depth > 0; i++) {
      if (src[i] === '{') depth++;
      else if (src[i] === '}') depth--;
      if (i >= src.length) throw new GpuError('unroll: unbalanced braces');
    }
    const body = src.slice(open, i - 1);
    const re = new RegExp(`(?<![\\w.])${v}(?!\\w)`, 'g');
    let rep = '';
    for (let k = 0; k < bound; k += step) rep += `{${body.replace(re, `${k}u`)}}`;
    src = src.slice(0, hm.index) + rep + src.slice(i);
  }
}

// ------------------------------------------------------------------ strided GEMM
/** A matrix view over a tensor's storage: element (z, r, c) at off + z*bs + r*rs + c*cs. */
export interface Operand {
  t: Tensor;
  off: number;
  rs: number;
  cs: number;
  bs: number;
}

/** out[z, m, n] (=|+=) act(alpha * sum_k a[z, m, k] b[z, k, n] + bias[n]) + res[z, m, n]. */
export interface Gemm {
  label: string;
  M: number;
  N: number;
  K: number;
  batch: number;
  a: Operand;
  b: Operand;
  out: Operand;
  /** Same strides as out (its own tensor and offset). */
  res?: { t: Tensor; off: number };
  bias?: { t: Tensor; off: number };
  alpha: number;
  act: Act;
  /**
   * b's columns are (value, gate) pairs (n even, n + 1): out (M, N/2) column n/2 =
   * value * act(gate) + res, `out` / `res` strides over the N/2 output columns.
   */
  glu?: boolean;
  /** Adds to the values already in out (before the activation). */
  accum?: boolean;
  variant: MatmulVariant;
  /** 'gemv' selects the one-row register block of the cpu kernel. */
  shape?: 'gemm' | 'gemv';
  /** Kernel family in profiles (default 'matmul'). */
  family?: string;
  /**
   * The result goes into this rgba32float 2D-array texture instead of `out`: texel
   * (n / 4, m, z) = out[z, m, n .. n + 3] (the cpu kernel with a from its texture; N % 4 == 0,
   * no bias, activation, residual or GLU, one dispatch: see runGemmIntoTexture).
   */
  outTexture?: GPUTexture;
  /** The bias is indexed by the output row m (a conv's output channel) instead of n. */
  biasRow?: boolean;
}

const dummies = new WeakMap<Device, Tensor>();
export function dummy(dev: Device): Tensor {
  let t = dummies.get(dev);
  if (!t) {
    // Outlives every scope: bound where an optional input (bias, residual) is absent.
    t = keep(Tensor.zeros(dev, [4]));
    dummies.set(dev, t);
  }
  return t;
}

function bytesOf(t: Tensor): number {
  return t.dtype === 'f32' ? 4 : 2;
}

/** Element range [lo, hi] touched by an operand over a (z, r, c) box. */
function span(o: Operand, z0: number, z1: number, r0: number, r1: number, c0: number, c1: number): [number, number] {
  const lo = o.off + z0 * o.bs + r0 * o.rs + c0 * o.cs;
  const hi = o.off + (z1 - 1) * o.bs + (r1 - 1) * o.rs + (c1 - 1) * o.cs;
  return [lo, hi];
}

/** A binding window covering elements [lo, hi] and the element offset of lo inside it. */
export function windowFor(dev: Device, t: Tensor, lo: number, hi: number): { binding: BufferBinding; off: number; bytes: number } {
  const es = bytesOf(t);
  const align = bindingAlign(dev);
  const start = Math.floor((lo * es) / align) * align;
  const end = Math.ceil(((hi + 1) * es) / 16) * 16;
  const size = Math.min(end, t.bufferSize) - start;
  return { binding: { buffer: t.buffer, offset: start, size }, off: lo - start / es, bytes: size };
}

function parseTile(s: string | undefined): { TM: number; NV: number } | undefined {
  const m = s ? /^(\d+)x(\d+)$/.exec(s) : null;
  return m ? { TM: Number(m[1]), NV: Number(m[2]) } : undefined;
}

// Tile shapes of the cpu kernel (benchmarked in bench/kernels-matmul.ts).
const TILE_OVERRIDE = parseTile(process.env.ELBO_MATMUL_TILE);
const CPU_TILE = TILE_OVERRIDE ?? { TM: 16, NV: 4 };
// With SG_B, f32 or f16 b, by CPU time at 4096x320x1280: f32 4x8 ~15 vs 16x4 without SG_B
// ~9 (before the pairwise products; 15-19 after); f16 b 4x8 ~13 vs 8x4 ~11 in one process.
const GEMV_TILE = { TM: 1, NV: 2 };

/**
 * Rows per lane of the SG_B tile for a problem of M rows: `maxRows` (the tile's), or fewer
 * when a workgroup of 8 x maxRows rows would mostly compute clamped copies of the last row
 * (the Winograd matmuls of 8x8 images have 16 rows). Picks the least padded rows weighted
 * by the measured cost of a row at fewer rows per lane (4: 1.15x, 2: 1.3x, 1: 1.7x). Batch
 * 16, K = N = 1280, CPU time: M = 16, 4 -> 2 rows per lane 8.4 -> 17.0 GFLOP/s; M = 8,
 * 4 -> 1 3.9 -> 10.6; M = 24 within noise.
 */
export function sgRowsPerLane(M: number, maxRows = 4): number {
  const options = ([[maxRows, 1], [4, 1.15], [2, 1.3], [1, 1.7]] as [rows: number, costPerRow: number][]).filter(([r]) => r <= maxRows);
  const cost = ([tm, w]: [number, number]): number => Math.ceil(M / (8 * tm)) * 8 * tm * w;
  let best = options[0]!;
  for (const o of options) if (cost(o) < cost(best)) best = o;
  return best[0];
}
const COL_LANES = process.env.ELBO_COL_LANES === '1';

/**
 * Choices of the cpu GEMM kernel. `aTexture` (default on; ELBO_MATMUL_ATEX=0 for off):
 * a is copied into an rgba32float texture and read with textureLoad (A_TEX in
 * shaders/matmul_cpu.wgsl). On lavapipe that is a vectorised fetch of the 8 lanes' texels
 * instead of a per-lane loop of bounds-checked buffer loads (with the 8-row tile below:
 * 4096x320x1280 f32 17.4 -> 20.5 GFLOP/s in one process).
 */
export const cpuGemmTuning = {
  aTexture: process.env.ELBO_MATMUL_ATEX !== '0',
  /**
   * Rows per lane x vec4 columns of the SG_B block (fewer rows for short problems) with a
   * from the texture (f32 b, then f16 b), and with a from its buffer. With the texture, loads
   * of a are cheap enough that 8 rows per lane (each broadcast column of b used 8 times) beat
   * 4 on a 2-core Zen 4: 4096x320x1280 f32 17.4 -> 20.5 GFLOP/s, f16 b 19.2 -> 22.1, one
   * process; without it 4 rows stay best. On a 2-core Zen 5 (2026-11-27, alternated, median
   * of 6; 4096x320x1280, 1024x640x640, 4096x1280x320, 256x1280x10240): f32 b 6 rows x1.06-1.26
   * over 8 (7 rows about the same as 6; 5, 4 and 8x4, 8x6, 6x6, 6x10, 4x16 slower); f16 b
   * read 4 halves per load (f16K4) 8 rows x1.39-1.47 over f32 b's 8 rows, 6 rows x1.19-1.27.
   */
  sgTile: { TM: 6, NV: 8 },
  /** The same with f16 b (B_TH4, or B_TH8 when f16K4 is off). */
  sgTileF16: { TM: 8, NV: 8 },
  sgTileBuffer: { TM: 4, NV: 8 },
  /**
   * f16 b in the nn.Linear layout read 4 halves of K per load (B_TH4, K % 4 == 0; KS = 4, as
   * f32 b) instead of 8 (B_TH8, K % 8 == 0; KS = 8, twice the broadcast block live per step).
   * ELBO_MATMUL_F16_K4=0 for B_TH8.
   */
  f16K4: process.env.ELBO_MATMUL_F16_K4 !== '0',
  /** Test hook: texture rows / layers below the adapter's limits (exercises the splits). */
  textureLimit: undefined as { rows: number; layers: number } | undefined,
};
const SG = process.env.ELBO_SG !== '0';

/** True when a workgroup of 8 always lies within one subgroup (lavapipe: exactly 8). */
export function subgroupsOf8(dev: Device): boolean {
  if (!dev.features.subgroups) return false;
  const info = (dev.gpu as unknown as { adapterInfo?: { subgroupMinSize?: number } }).adapterInfo;
  return (info?.subgroupMinSize ?? 0) >= 8;
}
/**
 * Rows of a that one workgroup of the cpu kernel covers on a long problem (8 lanes x the tile's
 * rows per lane), with a from its texture and b in the nn.Linear layout (SG_B) where the
 * adapter has subgroups: the Winograd matmuls round their chunks of tiles to it.
 */
export function cpuGemmRowBlock(dev: Device, bDtype: DType): number {
  const sg = !COL_LANES && SG && subgroupsOf8(dev);
  const tile = TILE_OVERRIDE ?? (!sg ? CPU_TILE : !cpuGemmTuning.aTexture ? cpuGemmTuning.sgTileBuffer : bDtype === 'f16' ? cpuGemmTuning.sgTileF16 : cpuGemmTuning.sgTile);
  return 8 * tile.TM;
}
const GPU_TILE = 64;

/**
 * The 'gpu' variant's GEMM kernels (matmul and conv2d). 'v1': 64 x 64 tiles, 4 x 4 per
 * invocation (matmul_gpu.wgsl, conv_gpu.wgsl). 'v2' (default; ELBO_GPU_GEMM=v1 for the
 * other): 128 x 128 tiles, 8 x 8 per invocation (matmul_gpu2.wgsl), with K split over more
 * workgroups when the output has few tiles (the UNet's 1280-channel convs at 8x8 have 10):
 * partial sums go to a scratch buffer that matmul_splitk.wgsl adds up and finishes with the
 * epilogue. On the H100 v2 ran the UNet's 3x3 convs at 16x16 and 8x8 3.7-7.8x faster than
 * v1 and its big linears 1.5-1.6x; a few small products lost up to 18% (docs/GPU.md).
 */
export const gpuGemmTuning = {
  kernel: (process.env.ELBO_GPU_GEMM === 'v1' ? 'v1' : 'v2') as 'v1' | 'v2',
  /** Split K until about this many workgroups run (two per SM of a 132-SM GPU). */
  targetWorkgroups: 264,
  /** Each split at least this deep. */
  minSplitK: 256,
  /**
   * 3x3 stride-1 convs of the 'gpu' variant by Winograd (winograd.ts) with the 'gpu' matmul:
   * 'f4' where F(4x4, 3x3) is chosen (images of 32x32 and up), 'all' also F(2x2, 3x3) below,
   * 'off' never. On the H100 F(4x4) beat the direct v2 kernel 1.4-4.4x at 64x64 and 32x32,
   * while at 16x16 and 8x8 F(2x2) tied or lost (0.6x at 8x8) (docs/GPU.md).
   */
  winograd: (['off', 'all'].includes(process.env.ELBO_GPU_WINOGRAD ?? '') ? process.env.ELBO_GPU_WINOGRAD : 'f4') as 'off' | 'f4' | 'all',
};

const GPU2_TILE = 128;

/** K splits for a 'v2' problem: [splits, k per split (a multiple of the kernel's BK = 8)]. */
export function gpu2Splits(M: number, N: number, Kt: number, batch: number): [number, number] {
  const tiles = Math.ceil(M / GPU2_TILE) * Math.ceil(N / GPU2_TILE) * batch;
  let ks = 1;
  if (tiles < gpuGemmTuning.targetWorkgroups) ks = Math.max(1, Math.min(Math.floor(gpuGemmTuning.targetWorkgroups / tiles), Math.floor(Kt / gpuGemmTuning.minSplitK)));
  const kc = Math.ceil(Kt / ks / 8) * 8;
  return [Math.ceil(Kt / kc), kc];
}

/** The defines of matmul_gpu2.wgsl, in the order of its pipeline keys. */
const GPU2_DEFINES = ['A_F16', 'BIAS_F16', 'B_F16', 'CONV', 'GLU'] as const;
type Gpu2Defines = Partial<Record<(typeof GPU2_DEFINES)[number], boolean>>;
const gpu2Keys: string[] = [];

/** matmul_gpu2's pipeline key for a set of defines: from a bit mask, no strings built per dispatch. */
function gpu2Key(defines: Gpu2Defines): string {
  let mask = 0;
  for (let i = 0; i < GPU2_DEFINES.length; i++) if (defines[GPU2_DEFINES[i]!]) mask |= 1 << i;
  return (gpu2Keys[mask] ??= `matmul_gpu2:${GPU2_DEFINES.filter((_, i) => mask & (1 << i)).join(',')}`);
}

/**
 * Records a 'v2' GEMM (matmul_gpu2.wgsl; CONV for the implicit-GEMM conv): `q` as for a
 * plain dispatch, `bindings` [a, b, bias, res, out], `Kt` the reduction length (conv:
 * channels x taps). Splits K when the output has few tiles (gpu2Splits).
 */
export function dispatchGpu2(
  dev: Device,
  g: { label: string; family: string; defines: Gpu2Defines; q: GemmParams; bindings: Binding[]; Kt: number },
): void {
  const { q, defines } = g;
  // lavapipe runs this kernel only in tests: there the loops stay rolled (written out, one
  // pipeline took 15-24 s to compile there, cold).
  const pipeline = dev.pipeline(gpu2Key(defines), () =>
    buildShader('matmul_gpu2', defines, { A_VEC: defines.A_F16 ? 'u32' : 'f32', B_VEC: defines.B_F16 ? 'u32' : 'f32' }, { unroll: !dev.adapter.isFallback }),
  );
  const tilesN = Math.ceil(q.N / GPU2_TILE);
  const tilesM = Math.ceil(q.M / GPU2_TILE);
  let [ks, kc] = gpu2Splits(q.M, q.N, g.Kt, q.batch);
  const scratchBytes = ks * q.batch * q.M * q.N * 4;
  if (ks > 1 && scratchBytes > maxBindingBytes(dev)) [ks, kc] = [1, g.Kt];
  if (ks === 1) {
    dev.dispatch({ label: g.label, family: g.family, pipeline, uniforms: gemmUniforms(q), bindings: g.bindings, workgroups: [tilesN, tilesM, q.batch] });
    return;
  }
  const sStride = q.batch * q.M * q.N;
  const scratch = Tensor.empty(dev, [ks * sStride], 'f32', `${g.label} split-K scratch`);
  try {
    const d = dummy(dev).binding();
    const [a, b, bias, res, out] = g.bindings as [Binding, Binding, Binding, Binding, Binding];
    dev.dispatch({
      label: g.label,
      family: g.family,
      pipeline,
      uniforms: gemmUniformsWith(q, { oOff: 0, oRs: q.N, oCs: 1, oBs: q.M * q.N, ks, kc, sStride, flags: 0 }),
      bindings: [a, b, d, d, scratch.binding()],
      workgroups: [tilesN, tilesM, q.batch * ks],
    });
    const rd = { BIAS_F16: Boolean(defines.BIAS_F16), GLU: Boolean(defines.GLU) };
    const rPipe = dev.pipeline(`matmul_splitk:${Object.keys(rd).filter((k) => rd[k as keyof typeof rd]).join(',')}`, () => buildShader('matmul_splitk', rd, { A_VEC: 'f32', B_VEC: 'f32' }));
    const wg = grid1d(Math.ceil((q.batch * q.M * Math.ceil(q.N / 4)) / 256));
    dev.dispatch({
      label: `${g.label} split-K sum`,
      family: g.family,
      pipeline: rPipe,
      uniforms: gemmUniformsWith(q, { aOff: 0, aRs: q.N, aCs: 1, aBs: q.M * q.N, ks, kc, sStride, nx: wg[0] }),
      bindings: [scratch.binding(), d, bias, res, out],
      workgroups: [wg[0], wg[1], 1],
    });
  } finally {
    scratch.release();
  }
}

/** Picks load modes for the cpu kernel from strides and alignment. */
function cpuModes(g: Gemm, M: number, N: number, aOff: number, bOff: number, NV: number): Record<string, boolean> {
  const { a, b } = g;
  const d: Record<string, boolean> = {};
  const m4 = (x: number): boolean => x % 4 === 0;
  const m8 = (x: number): boolean => x % 8 === 0;
  if (a.t.dtype === 'f32') {
    if (a.cs === 1 && m4(a.rs) && m4(a.bs) && m4(aOff)) d.A_V4 = true;
    else if (a.rs === 1 && m4(a.cs) && m4(a.bs) && m4(aOff) && m4(M) && M > 0) d.A_T4 = true;
  }
  if (b.t.dtype === 'f32') {
    if (b.cs === 1 && m4(b.rs) && m4(b.bs) && m4(bOff) && m4(N) && N > 0) d.B_V4 = true;
    else if (b.rs === 1 && m4(b.cs) && m4(b.bs) && m4(bOff)) d.B_T4 = true;
  } else {
    d.B_F16 = true;
    if (b.cs === 1 && m8(b.rs) && m8(b.bs) && m8(bOff) && m8(N) && N > 0 && NV % 2 === 0) d.B_H8 = true;
    else if (b.rs === 1 && m8(b.cs) && m8(b.bs) && m8(bOff) && !cpuGemmTuning.f16K4) d.B_TH8 = true;
    else if (b.rs === 1 && m4(b.cs) && m4(b.bs) && m4(bOff)) d.B_TH4 = true;
  }
  return d;
}

function pipelineFor(dev: Device, g: Gemm, c: Chunk, aTex = false): { pipeline: GPUComputePipeline; tile: [number, number] } {
  const biasF16 = g.bias?.t.dtype === 'f16';
  const glu = Boolean(g.glu);
  if (g.variant === 'naive' || g.variant === 'gpu') {
    const defines = { A_F16: g.a.t.dtype === 'f16', B_F16: g.b.t.dtype === 'f16', BIAS_F16: biasF16, GLU: glu };
    const key = `matmul_${g.variant}:${Object.keys(defines).filter((k) => defines[k as keyof typeof defines]).join(',')}`;
    const vec = { A_VEC: g.a.t.dtype === 'f16' ? 'u32' : 'f32', B_VEC: g.b.t.dtype === 'f16' ? 'u32' : 'f32' };
    // The 'gpu' kernel's loops stay rolled on lavapipe, where it runs only in tests (compile time).
    const pipeline = dev.pipeline(key, () => buildShader(`matmul_${g.variant}`, defines, { ...vec, TILE: GPU_TILE }, { unroll: !dev.adapter.isFallback }));
    // naive with GLU: an invocation computes a pair of columns.
    return { pipeline, tile: g.variant === 'naive' ? [8, glu ? 16 : 8] : [GPU_TILE, GPU_TILE] };
  }
  if (g.a.t.dtype !== 'f32') throw new GpuError(`${g.label}: the cpu matmul kernel reads a as f32, got ${g.a.t.dtype}`);
  let { TM, NV } = g.shape === 'gemv' ? GEMV_TILE : CPU_TILE;
  const d = cpuModes(g, c.M, c.N, c.a.off, c.b.off, NV);
  if (aTex) {
    d.A_V4 = d.A_T4 = false;
    d.A_TEX = true;
    d.OUT_TEX = Boolean(g.outTexture);
  }
  // b in the nn.Linear layout with subgroups of >= 8 lanes: the 8 lanes share the block's
  // columns of b, each loads 1/8 of them and broadcasts (SG_B in shaders/matmul_cpu.wgsl).
  // b then costs little, so the block turns wide and short.
  const sg = Boolean(g.shape !== 'gemv' && !COL_LANES && SG && subgroupsOf8(dev) && (d.B_T4 || d.B_TH8 || d.B_TH4));
  // Fewer rows per lane for short problems, except with a read as 4-row vec4s (A_T4).
  const sgTile = aTex ? (g.b.t.dtype === 'f16' ? cpuGemmTuning.sgTileF16 : cpuGemmTuning.sgTile) : cpuGemmTuning.sgTileBuffer;
  if (sg) ({ TM, NV } = TILE_OVERRIDE ?? { NV: sgTile.NV, TM: d.A_T4 ? sgTile.TM : sgRowsPerLane(c.M, sgTile.TM) });
  d.BIAS_F16 = biasF16;
  // GLU: epilogue4 gets 4 neighbouring columns starting at a multiple of 4, two whole pairs.
  d.GLU = glu;
  // No activation: its runtime switch left out of the epilogue (K = 320, N = 1280: +8%).
  d.ACT_NONE = !glu && g.act === 'none';
  // One row (gemv): lanes must span columns, or 7 of 8 would idle.
  const colLanes = COL_LANES || g.shape === 'gemv';
  d.COL_LANES = colLanes;
  if (sg && NV % 2 === 0) d.SG_B = true;
  const KS = d.B_H8 || d.B_TH8 ? 8 : 4;
  const A_VEC = d.A_V4 || d.A_T4 ? 'vec4<f32>' : 'f32';
  const B_VEC = d.B_V4 || d.B_T4 ? 'vec4<f32>' : d.B_H8 || d.B_TH8 ? 'vec4<u32>' : d.B_TH4 ? 'vec2<u32>' : d.B_F16 ? 'u32' : 'f32';
  const key = `matmul_cpu:${TM}x${NV}:${Object.keys(d).filter((k) => d[k]).sort().join(',')}`;
  const pipeline = dev.pipeline(key, () => (d.SG_B ? 'enable subgroups;\n' : '') + buildShader('matmul_cpu', d, { TM, NV, TN: 4 * NV, KS, A_VEC, B_VEC, CPL: Math.max(1, NV / 2) }));
  return { pipeline, tile: colLanes ? [TM, 4 * NV * 8] : [TM * 8, 4 * NV] };
}

/**
 * Splits [0, n) into about `count` pieces, starting at multiples of 8 while pieces are that
 * long, and always at multiples of `align` (2: GLU column pairs stay whole).
 */
function pieces(n: number, count: number, align = 1): [number, number][] {
  const raw = Math.ceil(n / count);
  const size = raw >= 8 ? Math.ceil(raw / 8) * 8 : Math.ceil(raw / align) * align;
  const out: [number, number][] = [];
  for (let s = 0; s < n; s += size) out.push([s, Math.min(n, s + size)]);
  return out;
}

/**
 * Records a strided GEMM. Problems whose operands do not fit one storage binding are
 * split: each operand along its major axis (the one with the larger stride: rows of a
 * row-major a, K rows of a transposed one, ...), K splits accumulating into out. With
 * GLU, N pieces start at even columns, and a K split accumulates each (M, N) piece into a
 * scratch buffer (out has only N/2 columns) that a last pass (matmul_glu.wgsl) finishes.
 */
export function runGemm(dev: Device, g: Gemm): void {
  const { M, N, K, batch } = g;
  if (M === 0 || N === 0 || batch === 0) return;
  if (K === 0) throw new GpuError(`${g.label}: K = 0 is not supported`);
  if (g.outTexture) {
    runGemmIntoTexture(dev, g, g.outTexture);
    return;
  }
  const glu = Boolean(g.glu);
  if (glu && N % 2 !== 0) throw new GpuError(`${g.label}: glu needs an even N ((value, gate) column pairs), got N = ${N}`);
  if (glu && g.accum) throw new GpuError(`${g.label}: glu cannot accumulate into out`);
  const limit = maxBindingBytes(dev);
  const res = g.res ? { t: g.res.t, off: g.res.off, rs: g.out.rs, cs: g.out.cs, bs: g.out.bs } : undefined;
  // The common case first, without the planner's closures (each costs ~0.3 us to make under
  // tsx, whose keepNames names every one): every operand within one binding, one dispatch.
  {
    const outN = glu ? N / 2 : N;
    const wa = windowFor(dev, g.a.t, ...span(g.a, 0, batch, 0, M, 0, K));
    const wb = windowFor(dev, g.b.t, ...span(g.b, 0, batch, 0, K, 0, N));
    const wo = windowFor(dev, g.out.t, ...span(g.out, 0, batch, 0, M, 0, outN));
    const wr = res ? windowFor(dev, res.t, ...span(res, 0, batch, 0, M, 0, outN)) : undefined;
    if (wa.bytes <= limit && wb.bytes <= limit && wo.bytes <= limit && (!wr || wr.bytes <= limit)) {
      dispatchGemm(dev, g, { M, N, K, batch, a: wa, b: wb, out: wo, res: wr, biasOff: g.bias ? g.bias.off : 0, accum: Boolean(g.accum), bias: Boolean(g.bias), final: true });
      return;
    }
  }
  const fits = (t: Tensor, lo: number, hi: number): boolean => windowFor(dev, t, lo, hi).bytes <= limit;
  // Output columns of b's columns [n0, n1): one per pair with GLU.
  const oc = ([n0, n1]: [number, number]): [number, number] => (glu ? [n0 / 2, n1 / 2] : [n0, n1]);
  const nAlign = glu ? 2 : 1;

  // Whole batches at once when everything fits; otherwise one batch at a time, split further.
  const all = (o: Operand, rows: number, cols: number): boolean => fits(o.t, ...span(o, 0, batch, 0, rows, 0, cols));
  const outN = oc([0, N])[1];
  const wholeFits = all(g.a, M, K) && all(g.b, K, N) && all(g.out, M, outN) && (!res || all(res, M, outN));
  const zGroups: [number, number][] = wholeFits ? [[0, batch]] : Array.from({ length: batch }, (_, z) => [z, z + 1]);

  for (const [z0, z1] of zGroups) {
    let sm = 1;
    let sn = 1;
    let sk = 1;
    // Grow the split of the axis along which an oversized operand is contiguous.
    for (let guard = 0; ; guard++) {
      if (guard > 64) throw new GpuError(`${g.label}: cannot split the problem into storage bindings of ${limit} bytes`);
      const mP = pieces(M, sm);
      const nP = pieces(N, sn, nAlign);
      const kP = pieces(K, sk);
      const oP = nP.map(oc);
      const worst = (o: Operand, rP: [number, number][], cP: [number, number][]): boolean =>
        rP.every(([r0, r1]) => cP.every(([c0, c1]) => fits(o.t, ...span(o, z0, z1, r0, r1, c0, c1))));
      // GLU with a K split: the f32 scratch of one (M, N) piece must fit a binding too.
      const scratchFits = (): boolean => !glu || kP.length === 1 || (z1 - z0) * (mP[0]![1] - mP[0]![0]) * (nP[0]![1] - nP[0]![0]) * 4 <= limit;
      let grew = false;
      const dims = { m: M, n: N, k: K };
      const splits = { m: sm, n: sn, k: sk };
      const align = { m: 1, n: nAlign, k: 1 };
      const canSplit = (ax: 'm' | 'n' | 'k'): boolean => pieces(dims[ax], splits[ax], align[ax]).length < Math.ceil(dims[ax] / align[ax]);
      const split = (ax: 'm' | 'n' | 'k'): void => {
        if (ax === 'm') sm *= 2;
        else if (ax === 'n') sn *= 2;
        else sk *= 2;
        grew = true;
      };
      const grow = (o: Operand, rowAxis: 'm' | 'n' | 'k', colAxis: 'm' | 'n' | 'k'): void => {
        // The major axis first; the other once single rows still do not fit.
        const major = o.rs >= o.cs ? rowAxis : colAxis;
        const minor = major === rowAxis ? colAxis : rowAxis;
        const axis = canSplit(major) ? major : minor;
        if (canSplit(axis)) split(axis);
      };
      // The scratch path dispatches single columns of b when a pair of them (two rows of
      // an nn.Linear weight) is too long for one binding.
      const splitGlu = glu && kP.length > 1;
      const single = (ps: [number, number][]): [number, number][] => ps.flatMap(([n0, n1]) => Array.from({ length: n1 - n0 }, (_, i): [number, number] => [n0 + i, n0 + i + 1]));
      const pairsFit = worst(g.b, kP, nP);
      const okA = worst(g.a, mP, kP);
      const okB = pairsFit || (splitGlu && worst(g.b, kP, single(nP)));
      const okOut = worst(g.out, mP, oP);
      const okRes = !res || worst(res, mP, oP);
      const okScratch = scratchFits();
      if (!okA) grow(g.a, 'm', 'k');
      else if (!okB) grow(g.b, 'k', 'n');
      else if (!okOut) grow(g.out, 'm', 'n');
      else if (!okRes) grow(res!, 'm', 'n');
      else if (!okScratch) {
        if (canSplit('m')) split('m');
        else if (canSplit('n')) split('n');
      }
      if (grew) continue;
      if (!(okA && okB && okOut && okRes && okScratch)) {
        throw new GpuError(`${g.label}: cannot split the problem into storage bindings of ${limit} bytes`);
      }
      const scratch = splitGlu ? Tensor.empty(dev, [(z1 - z0) * (mP[0]![1] - mP[0]![0]) * (nP[0]![1] - nP[0]![0])], 'f32', 'matmul glu scratch') : undefined;
      for (const [m0, m1] of mP) {
        nP.forEach(([n0, n1], ni) => {
          const [o0, o1] = oP[ni]!;
          const wo = windowFor(dev, g.out.t, ...span(g.out, z0, z1, m0, m1, o0, o1));
          const wr = res ? windowFor(dev, res.t, ...span(res, z0, z1, m0, m1, o0, o1)) : undefined;
          const [mc, nc, zc] = [m1 - m0, n1 - n0, z1 - z0];
          // GLU with a K split: the chunks accumulate plain (value, gate) columns into scratch.
          const ws = scratch ? windowFor(dev, scratch, 0, zc * mc * nc - 1) : undefined;
          const kg: Gemm = scratch ? { ...g, glu: false, act: 'none', res: undefined, out: { t: scratch, off: 0, rs: nc, cs: 1, bs: mc * nc } } : g;
          const cols: [number, number][] = pairsFit ? [[n0, n1]] : single([[n0, n1]]);
          kP.forEach(([k0, k1], ki) => {
            const first = ki === 0;
            const last = ki === kP.length - 1;
            const wa = windowFor(dev, g.a.t, ...span(g.a, z0, z1, m0, m1, k0, k1));
            for (const [c0, c1] of cols) {
              const wb = windowFor(dev, g.b.t, ...span(g.b, z0, z1, k0, k1, c0, c1));
              dispatchGemm(dev, kg, {
                M: mc,
                N: c1 - c0,
                K: k1 - k0,
                batch: zc,
                a: wa,
                b: wb,
                out: ws ? { binding: ws.binding, off: ws.off + c0 - n0 } : wo,
                res: ws ? undefined : wr,
                biasOff: g.bias ? g.bias.off + (g.biasRow ? m0 : c0) : 0,
                accum: Boolean(g.accum) || !first,
                bias: first && Boolean(g.bias),
                final: last && !ws,
              });
            }
          });
          if (ws) dispatchGluFinish(dev, g, { M: mc, N: nc, batch: zc, src: ws, out: wo, res: wr });
        });
      }
      scratch?.release();
      break;
    }
  }
}

/** Fields of the `P` block in shaders/matmul_common.wgsl (conv fields default to 0). */
export interface GemmParams {
  M: number; N: number; K: number;
  aOff: number; aRs: number; aCs: number; aBs: number;
  bOff: number; bRs: number; bCs: number; bBs: number;
  oOff: number; oRs: number; oCs: number; oBs: number;
  rOff: number; biasOff: number; flags: number; act: number; alpha: number; batch: number;
  e0?: number; padT?: number;
  H?: number; W?: number; Ho?: number; Wo?: number; kh?: number; kw?: number; stride?: number; pad?: number;
  nx?: number; ks?: number; kc?: number; sStride?: number;
}

export function gemmUniforms(q: GemmParams): ArrayBuffer {
  // Written straight into a typed array: every matmul dispatch packs these, and a list of
  // (type, value) pairs for uniforms() was a visible share of recording a forward.
  const u = new Uint32Array(36);
  u[0] = q.M; u[1] = q.N; u[2] = q.K; u[3] = q.nx ?? 0;
  u[4] = q.aOff; u[5] = q.aRs; u[6] = q.aCs; u[7] = q.aBs;
  u[8] = q.bOff; u[9] = q.bRs; u[10] = q.bCs; u[11] = q.bBs;
  u[12] = q.oOff; u[13] = q.oRs; u[14] = q.oCs; u[15] = q.oBs;
  u[16] = q.rOff; u[17] = q.biasOff; u[18] = q.flags; u[19] = q.act;
  new Float32Array(u.buffer, 80, 1)[0] = q.alpha;
  u[21] = q.batch; u[22] = q.e0 ?? 0; u[23] = q.padT ?? 0;
  u[24] = q.H ?? 0; u[25] = q.W ?? 0; u[26] = q.Ho ?? 0; u[27] = q.Wo ?? 0;
  u[28] = q.kh ?? 0; u[29] = q.kw ?? 0; u[30] = q.stride ?? 0; u[31] = q.pad ?? 0;
  u[32] = q.ks ?? 0; u[33] = q.kc ?? 0; u[34] = q.sStride ?? 0;
  return u.buffer;
}

/** Each field's word in gemmUniforms' block. */
const GEMM_WORD: Record<keyof GemmParams, number> = {
  M: 0, N: 1, K: 2, nx: 3, aOff: 4, aRs: 5, aCs: 6, aBs: 7, bOff: 8, bRs: 9, bCs: 10, bBs: 11,
  oOff: 12, oRs: 13, oCs: 14, oBs: 15, rOff: 16, biasOff: 17, flags: 18, act: 19, alpha: 20, batch: 21,
  e0: 22, padT: 23, H: 24, W: 25, Ho: 26, Wo: 27, kh: 28, kw: 29, stride: 30, pad: 31, ks: 32, kc: 33, sStride: 34,
};

/**
 * gemmUniforms of q with some integer fields replaced: the same block as gemmUniforms({ ...q,
 * ...over }) without spreading q (an object spread of its ~25 fields cost several us: a tenth
 * of recording a UNet forward with the 'gpu' kernels, whose split-K matmuls made two).
 */
export function gemmUniformsWith(q: GemmParams, over: Partial<Record<Exclude<keyof GemmParams, 'alpha'>, number>>): ArrayBuffer {
  const u = new Uint32Array(gemmUniforms(q));
  for (const k in over) u[GEMM_WORD[k as keyof typeof over]] = over[k as keyof typeof over]!;
  return u.buffer;
}

/** Epilogue flags (shaders/matmul_common.wgsl). */
export const FLAG = { BIAS: 1, ACCUM: 2, FINAL: 4, RES: 8, BIAS_ROW: 16 } as const;

interface Chunk {
  M: number;
  N: number;
  K: number;
  batch: number;
  a: { binding: BufferBinding; off: number };
  b: { binding: BufferBinding; off: number };
  out: { binding: BufferBinding; off: number };
  res?: { binding: BufferBinding; off: number };
  biasOff: number;
  accum: boolean;
  bias: boolean;
  final: boolean;
}

function dispatchGemm(dev: Device, g: Gemm, c: Chunk): void {
  if (g.glu && (c.accum || !c.final)) throw new GpuError(`${g.label}: internal: a GLU dispatch must be one final chunk`);
  const flags = (c.bias ? FLAG.BIAS | (g.biasRow ? FLAG.BIAS_ROW : 0) : 0) | (c.accum ? FLAG.ACCUM : 0) | (c.final ? FLAG.FINAL : 0) | (c.final && c.res ? FLAG.RES : 0);
  const q: GemmParams = {
    M: c.M, N: c.N, K: c.K,
    aOff: c.a.off, aRs: g.a.rs, aCs: g.a.cs, aBs: g.a.bs,
    bOff: c.b.off, bRs: g.b.rs, bCs: g.b.cs, bBs: g.b.bs,
    oOff: c.out.off, oRs: g.out.rs, oCs: g.out.cs, oBs: g.out.bs,
    rOff: c.res?.off ?? 0, biasOff: c.biasOff, flags, act: ACT_CODE[g.act], alpha: g.alpha, batch: c.batch,
  };
  const d = dummy(dev).binding();
  const biasBinding = c.bias && g.bias ? g.bias.t.binding() : d;
  if (g.variant === 'gpu' && gpuGemmTuning.kernel === 'v2') {
    const defines = { A_F16: g.a.t.dtype === 'f16', B_F16: g.b.t.dtype === 'f16', BIAS_F16: g.bias?.t.dtype === 'f16', GLU: Boolean(g.glu) };
    dispatchGpu2(dev, { label: g.label, family: g.family ?? 'matmul', defines, q, bindings: [c.a.binding, c.b.binding, biasBinding, c.res?.binding ?? d, c.out.binding], Kt: c.K });
    return;
  }
  if (g.variant === 'cpu' && aTextureFits(dev, g, c)) {
    dispatchCpuATexture(dev, g, c, q, biasBinding);
    return;
  }
  const { pipeline, tile } = pipelineFor(dev, g, c);
  const u = gemmUniforms(q);
  const workgroups: [number, number, number] =
    g.variant === 'cpu'
      ? [Math.ceil(c.M / tile[0]), Math.ceil(c.N / tile[1]), c.batch]
      : [Math.ceil(c.N / tile[1]), Math.ceil(c.M / tile[0]), c.batch];
  dev.dispatch({
    label: g.label,
    family: g.family ?? 'matmul',
    pipeline,
    uniforms: u,
    bindings: [c.a.binding, c.b.binding, biasBinding, c.res?.binding ?? d, c.out.binding],
    workgroups,
  });
}

/** cpu kernel: read a through a texture (matmul_pack_a.wgsl + A_TEX) where the adapter's
 *  texture limits allow K (rows and batch are split to fit). */
function aTextureFits(dev: Device, g: Gemm, c: Chunk): boolean {
  return cpuGemmTuning.aTexture && g.a.t.dtype === 'f32' && Math.ceil(c.K / 4) <= dev.limits.maxTextureDimension2D;
}

/**
 * Copies an (batch, M, K) f32 operand (element (z, m, k) at off + z*bs + m*rs + k*cs of
 * `binding`) into a pooled rgba32float 2D-array texture of (ceil(K / 4), M, batch) texels,
 * texel (x, m, z) = elements 4x .. 4x + 3 of row m of batch z, zeros past K
 * (shaders/matmul_pack_a.wgsl). The caller returns it with dev.freeTexture once the
 * dispatches that read it are recorded.
 */
export function packTexture(
  dev: Device,
  src: { binding: BufferBinding; off: number; rs: number; cs: number; bs: number },
  M: number,
  K: number,
  batch: number,
  label: string,
  family: string,
): GPUTexture {
  const K4 = Math.ceil(K / 4);
  const tex = dev.allocTexture(K4, M, batch, label);
  // Rows of 256-byte multiples, 16-byte aligned, batches M rows (or more) apart: a plain
  // buffer-to-texture copy (a memcpy on lavapipe, several times cheaper than the kernel).
  const byteOff = (src.binding.offset ?? 0) + src.off * 4;
  const rowsPerImage = src.rs > 0 ? src.bs / src.rs : 0;
  if (
    packTuning.copy && src.cs === 1 && K % 4 === 0 && (src.rs * 4) % 256 === 0 && byteOff % 16 === 0 &&
    (batch === 1 || (Number.isInteger(rowsPerImage) && rowsPerImage >= M))
  ) {
    dev.copyToTexture(src.binding.buffer, byteOff, src.rs * 4, batch === 1 ? M : rowsPerImage, tex, [K4, M, batch]);
    return tex;
  }
  const v4 = src.cs === 1 && K % 4 === 0 && src.rs % 4 === 0 && (batch === 1 || src.bs % 4 === 0) && src.off % 4 === 0;
  // a transposed (a 1x1 conv's x): 4 rows x 4 k per invocation from 4 vec4 loads.
  const t4 = !v4 && packTuning.transposed4 && src.rs === 1 && M % 4 === 0 && src.cs % 4 === 0 && (batch === 1 || src.bs % 4 === 0) && src.off % 4 === 0;
  const pack = dev.pipeline(`matmul_pack_a:${v4 ? 'V4' : t4 ? 'T4' : ''}`, () => buildShader('matmul_pack_a', { V4: v4, T4: t4 }));
  dev.dispatch({
    label,
    family,
    pipeline: pack,
    uniforms: uniforms([['u', M], ['u', K], ['u', K4], ['u', batch], ['u', src.off], ['u', src.rs], ['u', src.cs], ['u', src.bs]]),
    bindings: [src.binding, textureBinding(tex)],
    workgroups: [Math.ceil(K4 / 8), t4 ? M / 4 : M, batch],
  });
  return tex;
}

const views = new WeakMap<GPUTexture, GPUTextureView>();

/** The binding of a whole packTexture texture (a 2D array, as the kernels declare it); one
 *  view per texture, so a pooled texture keeps matching its cached bind groups. */
export function textureBinding(tex: GPUTexture): Binding {
  let v = views.get(tex);
  if (!v) views.set(tex, (v = tex.createView({ dimension: '2d-array' })));
  return { texture: v };
}

/** packTexture's choices (tests run both sides): `copy` false always runs the pack kernel;
 *  `transposed4` false reads a transposed a one value at a time. */
export const packTuning = { copy: true, transposed4: true };

/** True when packTexture can hold (batch, M, K) in one texture on this adapter. */
export function textureHolds(dev: Device, M: number, K: number, batch: number): boolean {
  const maxDim = dev.limits.maxTextureDimension2D;
  return Math.ceil(K / 4) <= maxDim && M <= maxDim && batch <= dev.limits.maxTextureArrayLayers && M <= dev.limits.maxComputeWorkgroupsPerDimension;
}

/**
 * Records a cpu-kernel chunk with a read from a texture: per piece of at most
 * maxTextureDimension2D rows and maxTextureArrayLayers batches, packTexture copies that
 * piece of a into a pooled rgba32float texture and matmul_cpu.wgsl (A_TEX) reads it.
 */
function dispatchCpuATexture(dev: Device, g: Gemm, c: Chunk, q: GemmParams, biasBinding: Binding): void {
  const { maxRows, maxLayers } = texturePieceLimits(dev);
  for (let z0 = 0; z0 < c.batch; z0 += maxLayers) {
    const zc = Math.min(maxLayers, c.batch - z0);
    for (let m0 = 0; m0 < c.M; m0 += maxRows) {
      const mc = Math.min(maxRows, c.M - m0);
      const src = { binding: c.a.binding, off: c.a.off + z0 * g.a.bs + m0 * g.a.rs, rs: g.a.rs, cs: g.a.cs, bs: g.a.bs };
      const tex = packTexture(dev, src, mc, c.K, zc, `${g.label} pack a`, g.family ?? 'matmul');
      try {
        const oShift = z0 * g.out.bs + m0 * g.out.rs;
        const pu = gemmUniformsWith(q, {
          M: mc,
          batch: zc,
          bOff: q.bOff + z0 * g.b.bs,
          oOff: q.oOff + oShift,
          rOff: q.rOff + (c.res ? oShift : 0),
          biasOff: q.biasOff + (g.biasRow ? m0 : 0),
        });
        dispatchTexturePiece(dev, g, mc === c.M && zc === c.batch ? c : { ...c, M: mc, batch: zc }, pu, tex, biasBinding);
      } finally {
        dev.freeTexture(tex);
      }
    }
  }
}

/** Rows and batches of a per packed texture (the adapter's limits, or the test hook's lower ones). */
function texturePieceLimits(dev: Device): { maxRows: number; maxLayers: number } {
  return {
    maxRows: Math.min(dev.limits.maxTextureDimension2D, cpuGemmTuning.textureLimit?.rows ?? Infinity),
    maxLayers: Math.min(dev.limits.maxTextureArrayLayers, cpuGemmTuning.textureLimit?.layers ?? Infinity),
  };
}

/** One cpu-kernel dispatch of a piece whose a is in `tex` (packTexture's layout). */
function dispatchTexturePiece(dev: Device, g: Gemm, piece: Chunk, pu: ArrayBuffer, tex: GPUTexture, biasBinding: Binding): void {
  const { pipeline, tile } = pipelineFor(dev, g, piece, true);
  dev.dispatch({
    label: g.label,
    family: g.family ?? 'matmul',
    pipeline,
    uniforms: pu,
    // (into a texture: bias, residual and out are left out of the shader, so unbound)
    bindings: g.outTexture
      ? [null, piece.b.binding, null, null, null, textureBinding(tex), textureBinding(g.outTexture)]
      : [null, piece.b.binding, biasBinding, piece.res?.binding ?? dummy(dev).binding(), piece.out.binding, textureBinding(tex)],
    workgroups: [Math.ceil(piece.M / tile[0]), Math.ceil(piece.N / tile[1]), piece.batch],
  });
}

/**
 * A GEMM whose result goes into a texture (Gemm.outTexture), for a consumer that reads it
 * with textureLoad (the Winograd output transform: on lavapipe far cheaper than its per-lane
 * buffer loads, and no copy). One dispatch of the cpu kernel: a and b each within one
 * storage binding, the texture within the adapter's limits.
 */
function runGemmIntoTexture(dev: Device, g: Gemm, tex: GPUTexture): void {
  const { M, N, K, batch } = g;
  const bad = (why: string): never => {
    throw new GpuError(`${g.label}: internal: a GEMM into a texture ${why}`);
  };
  if (g.variant !== 'cpu' || g.a.t.dtype !== 'f32' || !cpuGemmTuning.aTexture) bad('needs the cpu kernel with a (f32) from a texture');
  if (g.bias || g.res || g.glu || g.accum || g.act !== 'none' || g.alpha !== 1 || N % 4 !== 0) bad('takes no epilogue and N % 4 == 0');
  // One piece of a (dispatchCpuATexture would offset later pieces in a, not in the texture).
  const { maxRows, maxLayers } = texturePieceLimits(dev);
  if (tex.width * 4 < N || tex.height < M || tex.depthOrArrayLayers < batch || M > maxRows || batch > maxLayers || !textureHolds(dev, M, K, batch)) bad(`does not fit (${batch}, ${M}, ${N})`);
  const lim = maxBindingBytes(dev);
  const wa = windowFor(dev, g.a.t, ...span(g.a, 0, batch, 0, M, 0, K));
  const wb = windowFor(dev, g.b.t, ...span(g.b, 0, batch, 0, K, 0, N));
  if (wa.bytes > lim || wb.bytes > lim) bad(`has an operand above one storage binding of ${lim} bytes`);
  const d = dummy(dev).binding();
  dispatchGemm(dev, g, { M, N, K, batch, a: wa, b: wb, out: { binding: d, off: 0 }, biasOff: 0, accum: false, bias: false, final: true });
}

/**
 * The GLU epilogue over a K-split piece's scratch (src: (batch, M, N) f32, bias already
 * added): out column n/2 = value * act(gate) [+ res] (shaders/matmul_glu.wgsl).
 */
function dispatchGluFinish(
  dev: Device,
  g: Gemm,
  c: { M: number; N: number; batch: number; src: { binding: Binding; off: number }; out: { binding: Binding; off: number }; res?: { binding: Binding; off: number } },
): void {
  const pipeline = dev.pipeline('matmul_glu', () => buildShader('matmul_glu', { GLU: true }));
  const u = gemmUniforms({
    M: c.M, N: c.N, K: 0,
    aOff: c.src.off, aRs: c.N, aCs: 1, aBs: c.M * c.N,
    bOff: 0, bRs: 0, bCs: 0, bBs: 0,
    oOff: c.out.off, oRs: g.out.rs, oCs: g.out.cs, oBs: g.out.bs,
    rOff: c.res?.off ?? 0, biasOff: 0, flags: FLAG.FINAL | (c.res ? FLAG.RES : 0), act: ACT_CODE[g.act], alpha: 1, batch: c.batch,
  });
  const d = dummy(dev).binding();
  dev.dispatch({
    label: `${g.label} glu`,
    family: g.family ?? 'matmul',
    pipeline,
    uniforms: u,
    bindings: [c.src.binding, d, d, c.res?.binding ?? d, c.out.binding],
    workgroups: [Math.ceil(c.N / 16), Math.ceil(c.M / 8), c.batch],
  });
}

// ------------------------------------------------------------------ public ops
function pickVariant(dev: Device, v: MatmulVariant | undefined): MatmulVariant {
  return v ?? dev.kind;
}

function checkF32(op: string, what: string, t: Tensor): void {
  if (t.dtype !== 'f32') throw new GpuError(`${op}: ${what} must be f32, got ${t.dtype}`);
}

function checkBias(op: string, bias: Tensor | undefined, N: number): void {
  if (bias && bias.numel !== N) throw new GpuError(`${op}: bias ${shapeStr(bias.shape)} does not match ${N} output features`);
}

/**
 * Validates `glu` against `act` and N; returns the number of output columns. `shapes`
 * describes the operands for the message.
 */
function checkGlu(op: string, glu: Glu | undefined, act: Act | undefined, N: number, shapes: string): number {
  if (glu === undefined) return N;
  if (!Object.hasOwn(GLU_ACT, glu)) throw new GpuError(`${op}: unknown glu '${String(glu)}' (supported: ${Object.keys(GLU_ACT).join(', ')})`);
  if (act !== undefined && act !== 'none') {
    throw new GpuError(`${op}: act '${act}' cannot be combined with glu '${glu}' (which applies ${GLU_ACT[glu]} to the gate)`);
  }
  if (N % 2 !== 0) {
    throw new GpuError(`${op}: glu '${glu}' needs an even number of output features ((value, gate) pairs), but ${shapes} gives N = ${N}`);
  }
  return N / 2;
}

/** The Gemm's activation and GLU flag from a public op's options (glu applies its own activation). */
function epilogueOf(opts: { act?: Act; glu?: Glu }): { act: Act; glu: boolean } {
  return { act: opts.glu ? GLU_ACT[opts.glu] : opts.act ?? 'none', glu: Boolean(opts.glu) };
}

function checkResidual(op: string, res: Tensor | undefined, outShape: readonly number[]): void {
  if (!res) return;
  checkF32(op, 'residual', res);
  if (res.shape.length !== outShape.length || res.shape.some((d, i) => d !== outShape[i])) {
    throw new GpuError(`${op}: residual ${shapeStr(res.shape)} does not match the output ${shapeStr(outShape)}`);
  }
}

/**
 * a (..., M, K) [(..., K, M) with transA] @ b (..., K, N) [(..., N, K) with transB]
 * -> (..., M, N) f32; out = act(alpha * a@b + bias) + residual. A 2-D b (or a) broadcasts
 * over the other's batch dims. b may be f16 (packed weights); accumulation is f32.
 * With `glu`, -> (..., M, N/2) (MatmulOptions.glu).
 */
export function matmul(a: Tensor, b: Tensor, opts: MatmulOptions = {}): Tensor {
  const dev = a.device;
  const op = 'matmul';
  checkF32(op, 'a', a);
  if (a.rank < 2 || b.rank < 2) throw new GpuError(`${op}: a ${shapeStr(a.shape)} and b ${shapeStr(b.shape)} must have at least 2 dims`);
  const [ar, ac] = a.shape.slice(-2) as [number, number];
  const [br, bc] = b.shape.slice(-2) as [number, number];
  const [M, K] = opts.transA ? [ac, ar] : [ar, ac];
  const [Kb, N] = opts.transB ? [bc, br] : [br, bc];
  if (K !== Kb) throw new GpuError(`${op}: inner dims differ: a ${shapeStr(a.shape)} vs b ${shapeStr(b.shape)}${opts.transA ? ' (transA)' : ''}${opts.transB ? ' (transB)' : ''}`);
  const aBatch = a.shape.slice(0, -2);
  const bBatch = b.shape.slice(0, -2);
  let batchDims: readonly number[];
  if (bBatch.length === 0) batchDims = aBatch;
  else if (aBatch.length === 0) batchDims = bBatch;
  else if (aBatch.length === bBatch.length && aBatch.every((d, i) => d === bBatch[i])) batchDims = aBatch;
  else throw new GpuError(`${op}: batch dims differ: a ${shapeStr(a.shape)} vs b ${shapeStr(b.shape)} (only a 2-D operand broadcasts)`);
  const batch = batchDims.reduce((x, y) => x * y, 1);
  const outN = checkGlu(op, opts.glu, opts.act, N, `a ${shapeStr(a.shape)} @ b ${shapeStr(b.shape)}${opts.transB ? ' (transB)' : ''}`);
  const outShape = [...batchDims, M, outN];
  checkBias(op, opts.bias, N);
  checkResidual(op, opts.residual, outShape);
  const out = Tensor.empty(dev, outShape, 'f32', 'matmul out');
  runGemm(dev, {
    label: `${op} ${shapeStr(a.shape)}@${shapeStr(b.shape)}`,
    M,
    N,
    K,
    batch,
    a: { t: a, off: 0, rs: opts.transA ? 1 : K, cs: opts.transA ? M : 1, bs: aBatch.length ? M * K : 0 },
    b: { t: b, off: 0, rs: opts.transB ? 1 : N, cs: opts.transB ? K : 1, bs: bBatch.length ? K * N : 0 },
    out: { t: out, off: 0, rs: outN, cs: 1, bs: M * outN },
    res: opts.residual ? { t: opts.residual, off: 0 } : undefined,
    bias: opts.bias ? { t: opts.bias, off: 0 } : undefined,
    alpha: opts.alpha ?? 1,
    ...epilogueOf(opts),
    variant: pickVariant(dev, opts.variant),
    family: opts.family,
  });
  return out;
}

export interface LinearOptions {
  act?: Act;
  /** (..., N) like the output (N/2 with glu), added after the activation. */
  residual?: Tensor;
  /**
   * 'geglu': weight rows (and bias) are (value, gate) pairs, as gluInterleave() lays out
   * a diffusers GEGLU projection; the output is (..., N/2) = value * gelu(gate).
   */
  glu?: Glu;
  variant?: MatmulVariant;
}

/**
 * x (..., K) @ weight (N, K)^T [+ bias (N)] -> (..., N): torch.nn.Linear. weight may be f16.
 * With `glu`, -> (..., N/2).
 */
export function linear(x: Tensor, weight: Tensor, bias?: Tensor, opts: LinearOptions = {}): Tensor {
  const op = 'linear';
  checkF32(op, 'x', x);
  if (weight.rank !== 2) throw new GpuError(`${op}: weight ${shapeStr(weight.shape)} must be (N, K)`);
  if (x.rank < 1) throw new GpuError(`${op}: x ${shapeStr(x.shape)} must have a feature dim`);
  const [N, K] = weight.shape as [number, number];
  const xk = x.shape[x.rank - 1]!;
  if (xk !== K) throw new GpuError(`${op}: inner dims differ: x ${shapeStr(x.shape)} vs weight ${shapeStr(weight.shape)}`);
  const M = x.numel / K;
  if (M === 1) return gemv(x, weight, bias, { ...opts, transB: true });
  const outN = checkGlu(op, opts.glu, opts.act, N, `x ${shapeStr(x.shape)} @ weight ${shapeStr(weight.shape)}^T`);
  const outShape = [...x.shape.slice(0, -1), outN];
  checkBias(op, bias, N);
  checkResidual(op, opts.residual, outShape);
  const out = Tensor.empty(x.device, outShape, 'f32', 'linear out');
  runGemm(x.device, {
    label: `${op} ${shapeStr(x.shape)}@${shapeStr(weight.shape)}^T`,
    M,
    N,
    K,
    batch: 1,
    a: { t: x, off: 0, rs: K, cs: 1, bs: 0 },
    b: { t: weight, off: 0, rs: 1, cs: K, bs: 0 },
    out: { t: out, off: 0, rs: outN, cs: 1, bs: 0 },
    res: opts.residual ? { t: opts.residual, off: 0 } : undefined,
    bias: bias ? { t: bias, off: 0 } : undefined,
    alpha: 1,
    ...epilogueOf(opts),
    variant: pickVariant(x.device, opts.variant),
  });
  return out;
}

export interface GemvOptions extends LinearOptions {
  /** w is stored (N, K) (nn.Linear layout, the default) rather than (K, N). */
  transB?: boolean;
}

/**
 * One row: x (..., K) with a single row (numel K) times w -> (..., N), where w is (N, K)
 * (transB, default) or (K, N). [+ bias (N)]. w may be f16.
 */
export function gemv(x: Tensor, w: Tensor, bias?: Tensor, opts: GemvOptions = {}): Tensor {
  const op = 'gemv';
  checkF32(op, 'x', x);
  const transB = opts.transB ?? true;
  if (w.rank !== 2) throw new GpuError(`${op}: w ${shapeStr(w.shape)} must be 2-D`);
  const [N, K] = transB ? (w.shape as [number, number]) : ([w.shape[1]!, w.shape[0]!] as [number, number]);
  if (x.numel !== K || x.shape[x.rank - 1] !== K) throw new GpuError(`${op}: x ${shapeStr(x.shape)} must be one row of ${K} to match w ${shapeStr(w.shape)}`);
  const outN = checkGlu(op, opts.glu, opts.act, N, `x ${shapeStr(x.shape)} @ w ${shapeStr(w.shape)}${transB ? '^T' : ''}`);
  const outShape = [...x.shape.slice(0, -1), outN];
  checkBias(op, bias, N);
  checkResidual(op, opts.residual, outShape);
  const out = Tensor.empty(x.device, outShape, 'f32', 'gemv out');
  const variant = pickVariant(x.device, opts.variant);
  runGemm(x.device, {
    label: `${op} ${shapeStr(x.shape)}@${shapeStr(w.shape)}${transB ? '^T' : ''}`,
    M: 1,
    N,
    K,
    batch: 1,
    a: { t: x, off: 0, rs: K, cs: 1, bs: 0 },
    b: { t: w, off: 0, rs: transB ? 1 : N, cs: transB ? K : 1, bs: 0 },
    out: { t: out, off: 0, rs: outN, cs: 1, bs: 0 },
    res: opts.residual ? { t: opts.residual, off: 0 } : undefined,
    bias: bias ? { t: bias, off: 0 } : undefined,
    alpha: 1,
    ...epilogueOf(opts),
    // The one-row register block of the cpu kernel is the gemv on every adapter except
    // when a variant is forced (tests).
    variant: variant === 'naive' ? 'naive' : opts.variant === 'gpu' ? 'gpu' : 'cpu',
    shape: 'gemv',
  });
  return out;
}

/**
 * Re-lays a (value, gate) projection from the chunked layout of a checkpoint (diffusers
 * GEGLU: `hidden, gate = proj(x).chunk(2, dim=-1)`) into the pairs that `glu` reads:
 * along `axis` (length 2F) entry s * F + j moves to 2j + s. An nn.Linear weight (2F, K)
 * and its bias (2F) use axis 0 (whole rows move, so f16 packing is no concern); a
 * (K, 2F) matmul b uses axis 1. Returns a new tensor of t's dtype (f16 goes through an
 * exact f32 copy); meant to run once, at load.
 */
export function gluInterleave(t: Tensor, axis = 0): Tensor {
  const op = 'gluInterleave';
  const ax = axis < 0 ? axis + t.rank : axis;
  if (!Number.isInteger(ax) || ax < 0 || ax >= t.rank) throw new GpuError(`${op}: axis ${axis} out of range for ${shapeStr(t.shape)}`);
  const L = t.shape[ax]!;
  if (L % 2 !== 0) throw new GpuError(`${op}: ${shapeStr(t.shape)} has ${L} entries along axis ${axis}, not two equal (value, gate) halves`);
  const F = L / 2;
  const outer = t.shape.slice(0, ax).reduce((x, y) => x * y, 1);
  const inner = t.shape.slice(ax + 1).reduce((x, y) => x * y, 1);
  const f32 = Tensor.empty(t.device, t.shape, 'f32', op);
  if (t.numel > 0) {
    // out (outer, F, 2, inner) <- t (outer, 2, F, inner)
    stridedMap(`${op} ${shapeStr(t.shape)}`, 'x', [outer, F, 2, inner], { tensor: f32, strides: [L * inner, 2 * inner, inner, 1] }, { tensor: t, strides: [L * inner, inner, F * inner, 1] }, null);
  }
  if (t.dtype === 'f32') return f32;
  const half = cast(f32, t.dtype);
  f32.release();
  return half;
}
