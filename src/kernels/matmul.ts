// Matrix multiply with a fused epilogue: out = act(alpha * a@b + bias) + residual.
// shaders/matmul_naive.wgsl (one output per invocation, the reference variant),
// shaders/matmul_cpu.wgsl (lavapipe: register blocks, vec4 loads, workgroup of 8) and
// shaders/matmul_gpu.wgsl (shared-memory tiles) share shaders/matmul_common.wgsl.
//
// Every op lowers to one strided GEMM description (`Gemm`): operands are (offset, row
// stride, column stride, batch stride) over a tensor's storage, so transposes, broadcast
// weights, the NCHW output of a 1x1 conv and chunks of a problem larger than one storage
// binding are all the same kernel with other numbers.
import { GpuError, Tensor, keep, loadShader, fillTemplate, uniforms, shapeStr, type Binding, type Device } from '../tensor/index.js';

export type Act = 'none' | 'silu' | 'gelu' | 'gelu_tanh' | 'quick_gelu';
export type MatmulVariant = 'naive' | 'cpu' | 'gpu';

export const ACT_CODE: Record<Act, number> = { none: 0, silu: 1, gelu: 2, gelu_tanh: 3, quick_gelu: 4 };

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
  variant?: MatmulVariant;
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
 * loadShader + `//#include name`, `//#if A || !B && C` / `//#elif` / `//#else` / `//#endif`
 * (each on its own line) and `{{KEY}}` substitution.
 */
export function buildShader(name: string, defines: Record<string, boolean>, values: Record<string, string | number> = {}): string {
  const src = loadShader(name).replace(/^\/\/#include (\w+)[ \t]*$/gm, (_, inc: string) => loadShader(inc));
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
  return unroll(fillTemplate(out.join('\n'), { A_VEC: 'f32', B_VEC: 'f32', ...values }));
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
  /** Adds to the values already in out (before the activation). */
  accum?: boolean;
  variant: MatmulVariant;
  /** 'gemv' selects the one-row register block of the cpu kernel. */
  shape?: 'gemm' | 'gemv';
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
export function windowFor(dev: Device, t: Tensor, lo: number, hi: number): { binding: Binding; off: number; bytes: number } {
  const es = bytesOf(t);
  const align = bindingAlign(dev);
  const start = Math.floor((lo * es) / align) * align;
  const end = Math.ceil(((hi + 1) * es) / 16) * 16;
  const size = Math.min(end, t.buffer.size) - start;
  return { binding: { buffer: t.buffer, offset: start, size }, off: lo - start / es, bytes: size };
}

function parseTile(s: string | undefined): { TM: number; NV: number } | undefined {
  const m = s ? /^(\d+)x(\d+)$/.exec(s) : null;
  return m ? { TM: Number(m[1]), NV: Number(m[2]) } : undefined;
}

// Tile shapes of the cpu kernel (benchmarked in bench/kernels-matmul.ts).
const TILE_OVERRIDE = parseTile(process.env.ELBO_MATMUL_TILE);
const CPU_TILE = TILE_OVERRIDE ?? { TM: 16, NV: 4 };
// With SG_B (by worker CPU time, 4096x320x1280: f32 4x8 ~15 vs 16x4 without SG_B ~9;
// f16 8x4 ~12.5 vs ~8).
const SG_TILE_F32 = { TM: 4, NV: 8 };
const SG_TILE_F16 = { TM: 8, NV: 4 };
const GEMV_TILE = { TM: 1, NV: 2 };
const COL_LANES = process.env.ELBO_COL_LANES === '1';
const SG = process.env.ELBO_SG !== '0';

/** True when a workgroup of 8 always lies within one subgroup (lavapipe: exactly 8). */
export function subgroupsOf8(dev: Device): boolean {
  if (!dev.features.subgroups) return false;
  const info = (dev.gpu as unknown as { adapterInfo?: { subgroupMinSize?: number } }).adapterInfo;
  return (info?.subgroupMinSize ?? 0) >= 8;
}
const GPU_TILE = 64;

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
    else if (b.rs === 1 && m8(b.cs) && m8(b.bs) && m8(bOff)) d.B_TH8 = true;
  }
  return d;
}

function pipelineFor(dev: Device, g: Gemm, c: Chunk): { pipeline: GPUComputePipeline; tile: [number, number] } {
  const biasF16 = g.bias?.t.dtype === 'f16';
  if (g.variant === 'naive' || g.variant === 'gpu') {
    const defines = { A_F16: g.a.t.dtype === 'f16', B_F16: g.b.t.dtype === 'f16', BIAS_F16: biasF16 };
    const key = `matmul_${g.variant}:${Object.keys(defines).filter((k) => defines[k as keyof typeof defines]).join(',')}`;
    const vec = { A_VEC: g.a.t.dtype === 'f16' ? 'u32' : 'f32', B_VEC: g.b.t.dtype === 'f16' ? 'u32' : 'f32' };
    const pipeline = dev.pipeline(key, () => buildShader(`matmul_${g.variant}`, defines, { ...vec, TILE: GPU_TILE }));
    return { pipeline, tile: g.variant === 'naive' ? [8, 8] : [GPU_TILE, GPU_TILE] };
  }
  if (g.a.t.dtype !== 'f32') throw new GpuError(`${g.label}: the cpu matmul kernel reads a as f32, got ${g.a.t.dtype}`);
  let { TM, NV } = g.shape === 'gemv' ? GEMV_TILE : CPU_TILE;
  const d = cpuModes(g, c.M, c.N, c.a.off, c.b.off, NV);
  // b in the nn.Linear layout with subgroups of >= 8 lanes: the 8 lanes share the block's
  // columns of b, each loads 1/8 of them and broadcasts (SG_B in shaders/matmul_cpu.wgsl).
  // b then costs little, so the block turns wide and short.
  const sg = Boolean(g.shape !== 'gemv' && !COL_LANES && SG && subgroupsOf8(dev) && (d.B_T4 || d.B_TH8));
  if (sg) ({ TM, NV } = TILE_OVERRIDE ?? (d.B_TH8 ? SG_TILE_F16 : SG_TILE_F32));
  d.BIAS_F16 = biasF16;
  // One row (gemv): lanes must span columns, or 7 of 8 would idle.
  const colLanes = COL_LANES || g.shape === 'gemv';
  d.COL_LANES = colLanes;
  if (sg && NV % 2 === 0) d.SG_B = true;
  const KS = d.B_H8 || d.B_TH8 ? 8 : 4;
  const A_VEC = d.A_V4 || d.A_T4 ? 'vec4<f32>' : 'f32';
  const B_VEC = d.B_V4 || d.B_T4 ? 'vec4<f32>' : d.B_H8 || d.B_TH8 ? 'vec4<u32>' : d.B_F16 ? 'u32' : 'f32';
  const key = `matmul_cpu:${TM}x${NV}:${Object.keys(d).filter((k) => d[k]).sort().join(',')}`;
  const pipeline = dev.pipeline(key, () => (d.SG_B ? 'enable subgroups;\n' : '') + buildShader('matmul_cpu', d, { TM, NV, TN: 4 * NV, KS, A_VEC, B_VEC, CPL: Math.max(1, NV / 2) }));
  return { pipeline, tile: colLanes ? [TM, 4 * NV * 8] : [TM * 8, 4 * NV] };
}

/** Splits [0, n) into about `count` pieces, starting at multiples of 8 while pieces are that long. */
function pieces(n: number, count: number): [number, number][] {
  const raw = Math.ceil(n / count);
  const size = raw >= 8 ? Math.ceil(raw / 8) * 8 : raw;
  const out: [number, number][] = [];
  for (let s = 0; s < n; s += size) out.push([s, Math.min(n, s + size)]);
  return out;
}

/**
 * Records a strided GEMM. Problems whose operands do not fit one storage binding are
 * split: each operand along its major axis (the one with the larger stride: rows of a
 * row-major a, K rows of a transposed one, ...), K splits accumulating into out.
 */
export function runGemm(dev: Device, g: Gemm): void {
  const { M, N, K, batch } = g;
  if (M === 0 || N === 0 || batch === 0) return;
  if (K === 0) throw new GpuError(`${g.label}: K = 0 is not supported`);
  const limit = maxBindingBytes(dev);
  const fits = (t: Tensor, lo: number, hi: number): boolean => windowFor(dev, t, lo, hi).bytes <= limit;
  const res = g.res ? { t: g.res.t, off: g.res.off, rs: g.out.rs, cs: g.out.cs, bs: g.out.bs } : undefined;

  // Whole batches at once when everything fits; otherwise one batch at a time, split further.
  const all = (o: Operand, rows: number, cols: number): boolean => fits(o.t, ...span(o, 0, batch, 0, rows, 0, cols));
  const wholeFits = all(g.a, M, K) && all(g.b, K, N) && all(g.out, M, N) && (!res || all(res, M, N));
  const zGroups: [number, number][] = wholeFits ? [[0, batch]] : Array.from({ length: batch }, (_, z) => [z, z + 1]);

  for (const [z0, z1] of zGroups) {
    let sm = 1;
    let sn = 1;
    let sk = 1;
    // Grow the split of the axis along which an oversized operand is contiguous.
    for (let guard = 0; ; guard++) {
      if (guard > 64) throw new GpuError(`${g.label}: cannot split the problem into storage bindings of ${limit} bytes`);
      const mP = pieces(M, sm);
      const nP = pieces(N, sn);
      const kP = pieces(K, sk);
      const worst = (o: Operand, rP: [number, number][], cP: [number, number][]): boolean =>
        rP.every(([r0, r1]) => cP.every(([c0, c1]) => fits(o.t, ...span(o, z0, z1, r0, r1, c0, c1))));
      let grew = false;
      const dims = { m: M, n: N, k: K };
      const splits = { m: sm, n: sn, k: sk };
      const grow = (o: Operand, rowAxis: 'm' | 'n' | 'k', colAxis: 'm' | 'n' | 'k'): void => {
        // The major axis first; the other once single rows still do not fit.
        const canSplit = (ax: 'm' | 'n' | 'k'): boolean => pieces(dims[ax], splits[ax]).length < dims[ax];
        const major = o.rs >= o.cs ? rowAxis : colAxis;
        const minor = major === rowAxis ? colAxis : rowAxis;
        const axis = canSplit(major) ? major : minor;
        if (!canSplit(axis)) return;
        if (axis === 'm') sm *= 2;
        else if (axis === 'n') sn *= 2;
        else sk *= 2;
        grew = true;
      };
      if (!worst(g.a, mP, kP)) grow(g.a, 'm', 'k');
      else if (!worst(g.b, kP, nP)) grow(g.b, 'k', 'n');
      else if (!worst(g.out, mP, nP)) grow(g.out, 'm', 'n');
      else if (res && !worst(res, mP, nP)) grow(res, 'm', 'n');
      if (grew) continue;
      if (!(worst(g.a, mP, kP) && worst(g.b, kP, nP) && worst(g.out, mP, nP) && (!res || worst(res, mP, nP)))) {
        throw new GpuError(`${g.label}: cannot split the problem into storage bindings of ${limit} bytes`);
      }
      for (const [m0, m1] of mP) {
        for (const [n0, n1] of nP) {
          kP.forEach(([k0, k1], ki) => {
            const first = ki === 0;
            const last = ki === kP.length - 1;
            const wa = windowFor(dev, g.a.t, ...span(g.a, z0, z1, m0, m1, k0, k1));
            const wb = windowFor(dev, g.b.t, ...span(g.b, z0, z1, k0, k1, n0, n1));
            const wo = windowFor(dev, g.out.t, ...span(g.out, z0, z1, m0, m1, n0, n1));
            const wr = res ? windowFor(dev, res.t, ...span(res, z0, z1, m0, m1, n0, n1)) : undefined;
            dispatchGemm(dev, g, {
              M: m1 - m0,
              N: n1 - n0,
              K: k1 - k0,
              batch: z1 - z0,
              a: wa,
              b: wb,
              out: wo,
              res: wr,
              biasOff: g.bias ? g.bias.off + n0 : 0,
              accum: Boolean(g.accum) || !first,
              bias: first && Boolean(g.bias),
              final: last,
            });
          });
        }
      }
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
}

export function gemmUniforms(q: GemmParams): ArrayBuffer {
  return uniforms([
    ['u', q.M], ['u', q.N], ['u', q.K], ['u', 0],
    ['u', q.aOff], ['u', q.aRs], ['u', q.aCs], ['u', q.aBs],
    ['u', q.bOff], ['u', q.bRs], ['u', q.bCs], ['u', q.bBs],
    ['u', q.oOff], ['u', q.oRs], ['u', q.oCs], ['u', q.oBs],
    ['u', q.rOff], ['u', q.biasOff], ['u', q.flags], ['u', q.act],
    ['f', q.alpha], ['u', q.batch], ['u', q.e0 ?? 0], ['u', q.padT ?? 0],
    ['u', q.H ?? 0], ['u', q.W ?? 0], ['u', q.Ho ?? 0], ['u', q.Wo ?? 0],
    ['u', q.kh ?? 0], ['u', q.kw ?? 0], ['u', q.stride ?? 0], ['u', q.pad ?? 0],
  ]);
}

/** Epilogue flags (shaders/matmul_common.wgsl). */
export const FLAG = { BIAS: 1, ACCUM: 2, FINAL: 4, RES: 8, BIAS_ROW: 16 } as const;

interface Chunk {
  M: number;
  N: number;
  K: number;
  batch: number;
  a: { binding: Binding; off: number };
  b: { binding: Binding; off: number };
  out: { binding: Binding; off: number };
  res?: { binding: Binding; off: number };
  biasOff: number;
  accum: boolean;
  bias: boolean;
  final: boolean;
}

function dispatchGemm(dev: Device, g: Gemm, c: Chunk): void {
  const { pipeline, tile } = pipelineFor(dev, g, c);
  const flags = (c.bias ? 1 : 0) | (c.accum ? 2 : 0) | (c.final ? 4 : 0) | (c.final && c.res ? 8 : 0);
  const u = gemmUniforms({
    M: c.M, N: c.N, K: c.K,
    aOff: c.a.off, aRs: g.a.rs, aCs: g.a.cs, aBs: g.a.bs,
    bOff: c.b.off, bRs: g.b.rs, bCs: g.b.cs, bBs: g.b.bs,
    oOff: c.out.off, oRs: g.out.rs, oCs: g.out.cs, oBs: g.out.bs,
    rOff: c.res?.off ?? 0, biasOff: c.biasOff, flags, act: ACT_CODE[g.act], alpha: g.alpha, batch: c.batch,
  });
  const d = dummy(dev).binding();
  const biasBinding = c.bias && g.bias ? g.bias.t.binding() : d;
  const workgroups: [number, number, number] =
    g.variant === 'cpu'
      ? [Math.ceil(c.M / tile[0]), Math.ceil(c.N / tile[1]), c.batch]
      : [Math.ceil(c.N / tile[1]), Math.ceil(c.M / tile[0]), c.batch];
  dev.dispatch({
    label: g.label,
    family: 'matmul',
    pipeline,
    uniforms: u,
    bindings: [c.a.binding, c.b.binding, biasBinding, c.res?.binding ?? d, c.out.binding],
    workgroups,
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
  const outShape = [...batchDims, M, N];
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
    out: { t: out, off: 0, rs: N, cs: 1, bs: M * N },
    res: opts.residual ? { t: opts.residual, off: 0 } : undefined,
    bias: opts.bias ? { t: opts.bias, off: 0 } : undefined,
    alpha: opts.alpha ?? 1,
    act: opts.act ?? 'none',
    variant: pickVariant(dev, opts.variant),
  });
  return out;
}

export interface LinearOptions {
  act?: Act;
  /** (..., N) like the output, added after the activation. */
  residual?: Tensor;
  variant?: MatmulVariant;
}

/** x (..., K) @ weight (N, K)^T [+ bias (N)] -> (..., N): torch.nn.Linear. weight may be f16. */
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
  const outShape = [...x.shape.slice(0, -1), N];
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
    out: { t: out, off: 0, rs: N, cs: 1, bs: 0 },
    res: opts.residual ? { t: opts.residual, off: 0 } : undefined,
    bias: bias ? { t: bias, off: 0 } : undefined,
    alpha: 1,
    act: opts.act ?? 'none',
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
  const outShape = [...x.shape.slice(0, -1), N];
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
    out: { t: out, off: 0, rs: N, cs: 1, bs: 0 },
    res: opts.residual ? { t: opts.residual, off: 0 } : undefined,
    bias: bias ? { t: bias, off: 0 } : undefined,
    alpha: 1,
    act: opts.act ?? 'none',
    // The one-row register block of the cpu kernel is the gemv on every adapter except
    // when a variant is forced (tests).
    variant: variant === 'naive' ? 'naive' : opts.variant === 'gpu' ? 'gpu' : 'cpu',
    shape: 'gemv',
  });
  return out;
}
