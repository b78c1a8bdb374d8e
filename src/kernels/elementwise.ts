// Elementwise ops: numpy-broadcast binary ops, scalar ops, activations, geglu, casts.
// One generic strided kernel (shaders/elementwise.wgsl, variant 'naive') serves every shape
// and dtype; same-shape contiguous f32 work takes the vec4 kernel (variant 'vec4').
// Tensors above the storage-binding limit are processed in windows (planChunks), which the
// layout, reduce and resize kernels share.
import { Device, GpuError, Tensor, fillTemplate, grid1d, loadShader, shapeStr, uniforms, type Binding, type DType, type Shape } from '../tensor/index.js';

// ---------------------------------------------------------------- binding windows

let windowLimitOverride: number | null = null;

/**
 * Test hook: behave as if storage bindings were limited to `bytes` (null restores the
 * adapter's limit), so the windowed paths run on small shapes. `bytes` must be >= 1024.
 */
export function setWindowLimitForTests(bytes: number | null): void {
  if (bytes !== null && !(bytes >= 1024)) throw new GpuError(`setWindowLimitForTests: limit must be >= 1024 bytes, got ${bytes}`);
  windowLimitOverride = bytes;
}

/** The largest storage binding a kernel may use, in bytes (a multiple of 4). */
export function windowLimitBytes(dev: Device): number {
  const lim = dev.limits.maxStorageBufferBindingSize;
  return Math.floor((windowLimitOverride === null ? lim : Math.min(lim, windowLimitOverride)) / 4) * 4;
}

/** One operand of a strided kernel: element strides over the domain, base element offset. */
export interface MapOperand {
  tensor: Tensor;
  strides: readonly number[];
  base?: number;
  /** Elements beyond the strided span the kernel reads (e.g. a whole plane per index). */
  extra?: number;
}

/** One dispatch of a windowed op: a box of the domain and each operand's window. */
export interface WindowChunk {
  /** Extents of the box per domain dim (domain rank). */
  dims: number[];
  /** First index of the box per domain dim. */
  starts: number[];
  /** Element offset of the box's first element inside each operand's window. */
  bases: number[];
  windows: Binding[];
  numel: number;
}

const ALIGN = 256; // minStorageBufferOffsetAlignment

function elemBytes(t: Tensor): number {
  return t.dtype === 'f32' ? 4 : 2;
}

/**
 * Splits `domain` into boxes such that each operand's touched elements fit one storage
 * binding window (offset a multiple of 256 bytes). Boxes are runs of `step`-multiples along
 * one dim with every inner dim whole. One box (whole bindings) when everything fits.
 */
export function planChunks(label: string, dev: Device, domain: readonly number[], ops: readonly MapOperand[], step = 1): WindowChunk[] {
  const r = domain.length;
  const limit = windowLimitBytes(dev);
  const numel = domain.reduce((a, b) => a * b, 1);
  if (numel === 0) return [];
  const span = (o: MapOperand, dims: readonly number[]): number => {
    let s = 1 + (o.extra ?? 0);
    dims.forEach((d, i) => (s += (d - 1) * o.strides[i]!));
    return s;
  };
  if (ops.every((o) => o.tensor.byteSize <= limit)) {
    return [{ dims: [...domain], starts: domain.map(() => 0), bases: ops.map((o) => o.base ?? 0), windows: ops.map((o) => o.tensor.binding()), numel }];
  }
  const fits = (o: MapOperand, dims: readonly number[]): boolean => span(o, dims) * elemBytes(o.tensor) + ALIGN + 4 <= limit;
  // Smallest k such that a box with dims [0, k) of extent 1 and [k, r) whole fits.
  let k = 0;
  const box = [...domain];
  while (k < r && !ops.every((o) => fits(o, box))) box[k++] = 1;
  if (k === 0) k = 1; // everything fits as one box along dim 0
  const cd = k - 1; // chunked dim
  if (!ops.every((o) => fits(o, box.map((d, i) => (i === cd ? 1 : d))))) {
    throw new GpuError(`${label}: cannot split the work into storage-binding windows of ${limit} bytes`);
  }
  // Largest run c along dim cd (a multiple of `step` where possible).
  let c = domain[cd]!;
  for (const o of ops) {
    const s = o.strides[cd]!;
    if (s === 0) continue;
    const inner = span(o, box.map((d, i) => (i === cd ? 1 : d)));
    const room = Math.floor((limit - ALIGN - 4) / elemBytes(o.tensor)) - inner;
    c = Math.min(c, Math.floor(room / s) + 1);
  }
  if (c >= step) c -= c % step;
  c = Math.max(1, c);
  const chunks: WindowChunk[] = [];
  const outer = domain.slice(0, cd);
  const outerCount = outer.reduce((a, b) => a * b, 1);
  for (let oi = 0; oi < outerCount; oi++) {
    const starts = new Array<number>(r).fill(0);
    let rem = oi;
    for (let d = cd - 1; d >= 0; d--) {
      starts[d] = rem % domain[d]!;
      rem = Math.floor(rem / domain[d]!);
    }
    for (let j0 = 0; j0 < domain[cd]!; j0 += c) {
      const st = [...starts];
      st[cd] = j0;
      const dims = domain.map((d, i) => (i < cd ? 1 : i === cd ? Math.min(c, d - j0) : d));
      const bases: number[] = [];
      const windows: Binding[] = [];
      for (const o of ops) {
        const eb = elemBytes(o.tensor);
        let first = o.base ?? 0;
        st.forEach((s, i) => (first += s * o.strides[i]!));
        const startByte = first * eb;
        const off = Math.floor(startByte / ALIGN) * ALIGN;
        const end = Math.min(Math.ceil(((first + span(o, dims)) * eb) / 4) * 4, o.tensor.bufferSize);
        bases.push((startByte - off) / eb);
        windows.push(o.tensor.window(off, Math.max(4, end - off)));
      }
      chunks.push({ dims, starts: st, bases, windows, numel: dims.reduce((a, b) => a * b, 1) });
    }
  }
  return chunks;
}

/** Row-major contiguous strides of a shape. */
export function contiguousStrides(shape: Shape): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i]!;
  }
  return s;
}

/** Drops extent-1 dims and merges dims that are contiguous for every stride set. */
export function collapseDims(dims: readonly number[], strideSets: readonly (readonly number[])[]): { dims: number[]; strides: number[][] } {
  const outD: number[] = [];
  const outS: number[][] = strideSets.map(() => []);
  dims.forEach((d, i) => {
    if (d === 1) return;
    const last = outD.length - 1;
    if (last >= 0 && strideSets.every((s, j) => outS[j]![last] === s[i]! * d)) {
      outD[last]! *= d;
      strideSets.forEach((s, j) => (outS[j]![last] = s[i]!));
      return;
    }
    outD.push(d);
    strideSets.forEach((s, j) => outS[j]!.push(s[i]!));
  });
  if (outD.length === 0) {
    outD.push(1);
    outS.forEach((s) => s.push(0));
  }
  return { dims: outD, strides: outS };
}

// ---------------------------------------------------------------- ops

export type UnaryOp = 'silu' | 'gelu' | 'gelu_tanh' | 'quick_gelu' | 'exp' | 'sqrt' | 'neg' | 'abs' | 'sigmoid' | 'tanh' | 'relu' | 'square' | 'log';
export type BinaryOp = 'add' | 'sub' | 'mul' | 'div';
/**
 * 'naive': the strided kernel, one element per invocation; 'strided4': the strided kernel
 * with four outputs per invocation where the innermost dim allows; 'vec4': the contiguous
 * same-shape kernel (other shapes fall back to 'strided4'). Default: the fastest that fits.
 */
export type ElementwiseVariant = 'naive' | 'strided4' | 'vec4';

const UNARY_EXPR: Record<UnaryOp, string> = {
  silu: 'x * sigmoid_f(x)',
  gelu: 'gelu_f(x)',
  gelu_tanh: 'gelu_tanh_f(x)',
  quick_gelu: 'x * sigmoid_f(1.702 * x)',
  exp: 'exp(x)',
  sqrt: 'sqrt(x)',
  neg: '-x',
  abs: 'abs(x)',
  sigmoid: 'sigmoid_f(x)',
  tanh: 'tanh_f(x)',
  relu: 'max(x, 0.0)',
  square: 'x * x',
  log: 'log(x)',
};

const BINARY_EXPR: Record<BinaryOp, string> = { add: 'x + y', sub: 'x - y', mul: 'x * y', div: 'x / y' };

// Expressions of the scalar ops; s0 and s1 come from the uniforms.
const SCALAR_EXPR = {
  addScalar: 'x + p.s0',
  mulScalar: 'x * p.s0',
  affine: 'p.s0 * x + p.s1',
  powScalar: 'pow_f(x, p.s0)',
  clamp: 'clamp(x, p.s0, p.s1)',
  copy: 'x',
} as const;

/** Workgroup size per kernel kind: lavapipe runs 8 lanes per SIMD op (PLATFORM.md). */
function wgSize(dev: Device): number {
  return dev.kind === 'cpu' ? 64 : 256;
}

/** Names of the elementwise kernel variants (for `doctor` and tests). */
export function elementwiseVariants(): ElementwiseVariant[] {
  return ['naive', 'strided4', 'vec4'];
}

/** How the kernel reads an operand: scalar f32, packed f16, vec4 of f32, or one f32 splat to vec4. */
type ReadMode = 'f32' | 'f16' | 'vec' | 'splat';

function inputDecl(name: string, binding: number, mode: ReadMode): string {
  const v = `@group(0) @binding(${binding}) var<storage, read> ${name}`;
  switch (mode) {
    case 'f32':
      return `${v}: array<f32>;\nfn ld_${name}(i: u32) -> f32 { return ${name}[i]; }`;
    case 'f16':
      return `${v}: array<u32>;\nfn ld_${name}(i: u32) -> f32 { return unpack2x16float(${name}[i >> 1u])[i & 1u]; }`;
    case 'vec':
      return `${v}: array<vec4<f32>>;\nfn ld_${name}(i: u32) -> vec4<f32> { return ${name}[i]; }`;
    case 'splat':
      return `${v}: array<f32>;\nfn ld_${name}(i: u32) -> vec4<f32> { return vec4<f32>(${name}[i]); }`;
  }
}

/** Index code unrolled for `rank` dims: one div/mod per dim but the outermost. */
function indexCode(rank: number, names: readonly string[]): string {
  const f = (k: number): string => `[${k >> 2}].${'xyzw'[k & 3]}`;
  const lines: string[] = [];
  if (rank === 1) lines.push('  let i0 = i;');
  else {
    lines.push('  var rem = i;');
    for (let k = rank - 1; k >= 1; k--) lines.push(`  let i${k} = rem % p.dims${f(k)}; rem = rem / p.dims${f(k)};`);
    lines.push('  let i0 = rem;');
  }
  for (const nm of names) {
    const terms = [...Array(rank).keys()].map((k) => `i${k} * p.s${nm}${f(k)}`);
    lines.push(`  let i${nm} = p.b${nm} + ${terms.join(' + ')};`);
  }
  return lines.join('\n');
}

function stridedPipeline(dev: Device, expr: string, rank: number, ma: ReadMode, mb: ReadMode | null, vec: boolean): GPUComputePipeline {
  const wg = wgSize(dev);
  const key = `elementwise/strided/${rank}/${ma}/${mb ?? '-'}/${vec ? 'v' : 's'}/${wg}/${expr}`;
  const outBinding = mb ? 3 : 2;
  const body = vec
    ? `  let x = ld_a(ia);\n  let y = ${mb ? 'ld_b(ib)' : 'vec4<f32>(0.0)'};\n  o[io] = vec4<f32>(op(x.x, y.x), op(x.y, y.y), op(x.z, y.z), op(x.w, y.w));`
    : `  o[io] = op(ld_a(ia), ${mb ? 'ld_b(ib)' : '0.0'});`;
  return dev.pipeline(key, () =>
    loadShader('elementwise_funcs') +
    fillTemplate(loadShader('elementwise'), {
      DECL: [
        inputDecl('a', 1, ma),
        ...(mb ? [inputDecl('b', 2, mb)] : []),
        `@group(0) @binding(${outBinding}) var<storage, read_write> o: array<${vec ? 'vec4<f32>' : 'f32'}>;`,
      ].join('\n'),
      OP: expr,
      WG: wg,
      INDEX: indexCode(rank, mb ? ['o', 'a', 'b'] : ['o', 'a']),
      BODY: body,
    }),
  );
}

function vec4Pipeline(dev: Device, expr: string, binary: boolean): GPUComputePipeline {
  const wg = wgSize(dev);
  const key = `elementwise/vec4/${binary ? 2 : 1}/${wg}/${expr}`;
  return dev.pipeline(key, () =>
    loadShader('elementwise_funcs') +
    fillTemplate(loadShader('elementwise_vec4'), {
      DECL_B: binary ? '@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;' : '',
      OUT_BINDING: binary ? 3 : 2,
      OP: expr,
      WG: wg,
      LOAD_B: binary ? 'b[p.bb + i]' : 'vec4<f32>(0.0)',
    }),
  );
}

function padTo8(v: readonly number[], fill: number): number[] {
  const out = [...v];
  while (out.length < 8) out.push(fill);
  return out;
}

/**
 * Records out[idx] = expr(a[idx], b[idx]) over `domain` with per-operand strides (the
 * generic kernel). `out` is always f32. Max 6 domain dims after collapsing. With `vec`
 * (default), an innermost dim that is contiguous or broadcast everywhere and a multiple
 * of 4 runs four outputs per invocation.
 */
export function stridedMap(
  label: string,
  expr: string,
  domain: readonly number[],
  out: MapOperand,
  a: MapOperand,
  b: MapOperand | null,
  scalars: readonly [number, number] = [0, 0],
  vec = true,
): void {
  const dev = out.tensor.device;
  if (out.tensor.dtype !== 'f32') throw new GpuError(`${label}: output dtype ${out.tensor.dtype} is not supported (f32 only)`);
  const ops = b ? [out, a, b] : [out, a];
  const col = collapseDims(domain, ops.map((o) => o.strides));
  const rank = col.dims.length;
  if (rank > 6) throw new GpuError(`${label}: more than 6 non-mergeable dims (${shapeStr(domain)})`);
  const cops: MapOperand[] = ops.map((o, i) => ({ ...o, strides: col.strides[i]! }));
  // Read modes per operand in the vec4 form: 'vec' needs every stride and the base % 4 == 0.
  const last = rank - 1;
  const useVec =
    vec &&
    col.dims[last]! % 4 === 0 &&
    cops[0]!.strides[last] === 1 &&
    cops.every((o) => o.tensor.dtype === 'f32' && (o.strides[last] === 0 || (o.strides[last] === 1 && o.strides.every((st, k) => k === last || st % 4 === 0) && (o.base ?? 0) % 4 === 0)));
  const modes: ReadMode[] = cops.map((o) => (useVec ? (o.strides[last] === 1 ? 'vec' : 'splat') : o.tensor.dtype));
  const pipeline = stridedPipeline(dev, expr, rank, modes[1]!, b ? modes[2]! : null, useVec);
  const wg = wgSize(dev);
  for (const ch of planChunks(label, dev, col.dims, cops, useVec ? 4 : 1)) {
    let dims = ch.dims;
    let strides = cops.map((o) => o.strides);
    let bases = ch.bases;
    let n = ch.numel;
    if (useVec) {
      dims = dims.map((d, k) => (k === last ? d / 4 : d));
      strides = cops.map((o, j) => (modes[j] === 'vec' ? o.strides.map((st, k) => (k === last ? 1 : st / 4)) : o.strides));
      bases = bases.map((bs, j) => (modes[j] === 'vec' ? bs / 4 : bs));
      n /= 4;
    }
    const [nx, ny] = grid1d(Math.ceil(n / wg));
    const u = uniforms([
      ['u', n], ['u', nx], ['u', rank], ['u', bases[0]!],
      ['u', bases[1]!], ['u', bases[2] ?? 0], ['f', scalars[0]], ['f', scalars[1]],
      ...padTo8(dims, 1).map((v) => ['u', v] as const),
      ...padTo8(strides[0]!, 0).map((v) => ['u', v] as const),
      ...padTo8(strides[1]!, 0).map((v) => ['u', v] as const),
      ...padTo8(strides[2] ?? [], 0).map((v) => ['u', v] as const),
    ]);
    // Shader bindings: inputs first, then the output.
    const bindings = [...ch.windows.slice(1), ch.windows[0]!];
    dev.dispatch({ label, family: 'elementwise', pipeline, uniforms: u, bindings, workgroups: [nx, ny] });
  }
}

/** Contiguous same-shape f32 map with vec4 loads, windowed in runs of 128 elements. */
function vec4Map(label: string, expr: string, out: Tensor, a: Tensor, b: Tensor | null, scalars: readonly [number, number]): void {
  const dev = out.device;
  const n = out.numel;
  const ops: MapOperand[] = [out, a, ...(b ? [b] : [])].map((t) => ({ tensor: t, strides: [1] }));
  const pipeline = vec4Pipeline(dev, expr, b !== null);
  const wg = wgSize(dev);
  for (const ch of planChunks(label, dev, [n], ops, 128)) {
    const n4 = ch.numel / 4;
    const [nx, ny] = grid1d(Math.ceil(n4 / wg));
    const u = uniforms([
      ['u', n4], ['u', nx], ['u', ch.bases[1]! / 4], ['u', (ch.bases[2] ?? 0) / 4],
      ['u', ch.bases[0]! / 4], ['f', scalars[0]], ['f', scalars[1]], ['u', 0],
    ]);
    // Shader bindings: inputs first, then the output.
    const bindings = [...ch.windows.slice(1), ch.windows[0]!];
    dev.dispatch({ label, family: 'elementwise', pipeline, uniforms: u, bindings, workgroups: [nx, ny] });
  }
}

/** Whether the vec4 kernel can run: f32, contiguous, numel % 4 == 0. */
function vec4Ok(ts: readonly Tensor[]): boolean {
  return ts.every((t) => t.dtype === 'f32') && ts[0]!.numel % 4 === 0;
}

function pickVariant(variant: ElementwiseVariant | undefined, vec4Possible: boolean): ElementwiseVariant {
  if ((variant === undefined || variant === 'vec4') && vec4Possible) return 'vec4';
  return variant === 'naive' ? 'naive' : 'strided4';
}

function checkDtype(op: string, t: Tensor): void {
  if (t.dtype !== 'f32' && t.dtype !== 'f16') throw new GpuError(`${op}: unsupported dtype ${String(t.dtype)}`);
}

/** A same-shape map of one input: out (f32) = expr(x). */
function mapUnary(label: string, expr: string, x: Tensor, scalars: readonly [number, number], variant?: ElementwiseVariant): Tensor {
  checkDtype(label, x);
  const dev = x.device;
  const out = Tensor.empty(dev, x.shape, 'f32');
  if (x.numel === 0) return out;
  const lbl = `${label} ${shapeStr(x.shape)}`;
  const v = pickVariant(variant, vec4Ok([x]));
  if (v === 'vec4') vec4Map(lbl, expr, out, x, null, scalars);
  else stridedMap(lbl, expr, [x.numel], { tensor: out, strides: [1] }, { tensor: x, strides: [1] }, null, scalars, v === 'strided4');
  return out;
}

/** numpy broadcast of two shapes; throws naming both. */
export function broadcastShapes(op: string, a: Shape, b: Shape): number[] {
  const r = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < r; i++) {
    const da = a[a.length - r + i] ?? 1;
    const db = b[b.length - r + i] ?? 1;
    if (da !== db && da !== 1 && db !== 1) throw new GpuError(`${op}: shapes a ${shapeStr(a)} and b ${shapeStr(b)} do not broadcast`);
    out.push(da === 1 ? db : da);
  }
  return out;
}

/** Strides of `shape` seen through the broadcast output shape (0 on broadcast dims). */
function broadcastStrides(shape: Shape, outShape: Shape): number[] {
  const cs = contiguousStrides(shape);
  const off = outShape.length - shape.length;
  return outShape.map((_, i) => (i < off || shape[i - off] === 1 ? 0 : cs[i - off]!));
}

/** Binary op with numpy broadcasting; inputs f32 or f16, output f32 of the broadcast shape. */
export function binary(op: BinaryOp, a: Tensor, b: Tensor, opts: { variant?: ElementwiseVariant } = {}): Tensor {
  checkDtype(op, a);
  checkDtype(op, b);
  const shape = broadcastShapes(op, a.shape, b.shape);
  const dev = a.device;
  const out = Tensor.empty(dev, shape, 'f32');
  if (out.numel === 0) return out;
  const label = `${op} ${shapeStr(a.shape)},${shapeStr(b.shape)}`;
  const same = a.numel === out.numel && b.numel === out.numel;
  const v = pickVariant(opts.variant, same && vec4Ok([a, b]));
  if (v === 'vec4') {
    vec4Map(label, BINARY_EXPR[op], out, a, b, [0, 0]);
  } else {
    stridedMap(
      label,
      BINARY_EXPR[op],
      shape,
      { tensor: out, strides: contiguousStrides(shape) },
      { tensor: a, strides: broadcastStrides(a.shape, shape) },
      { tensor: b, strides: broadcastStrides(b.shape, shape) },
      [0, 0],
      v === 'strided4',
    );
  }
  return out;
}

/** a + b with numpy broadcasting. */
export function add(a: Tensor, b: Tensor, opts?: { variant?: ElementwiseVariant }): Tensor {
  return binary('add', a, b, opts);
}
/** a - b with numpy broadcasting. */
export function sub(a: Tensor, b: Tensor, opts?: { variant?: ElementwiseVariant }): Tensor {
  return binary('sub', a, b, opts);
}
/** a * b with numpy broadcasting. */
export function mul(a: Tensor, b: Tensor, opts?: { variant?: ElementwiseVariant }): Tensor {
  return binary('mul', a, b, opts);
}
/** a / b with numpy broadcasting. */
export function div(a: Tensor, b: Tensor, opts?: { variant?: ElementwiseVariant }): Tensor {
  return binary('div', a, b, opts);
}

/** x + s. */
export function addScalar(x: Tensor, s: number, opts?: { variant?: ElementwiseVariant }): Tensor {
  return mapUnary('addScalar', SCALAR_EXPR.addScalar, x, [s, 0], opts?.variant);
}
/** x * s. */
export function mulScalar(x: Tensor, s: number, opts?: { variant?: ElementwiseVariant }): Tensor {
  return mapUnary('mulScalar', SCALAR_EXPR.mulScalar, x, [s, 0], opts?.variant);
}
/** a * x + b. */
export function affine(x: Tensor, a: number, b: number, opts?: { variant?: ElementwiseVariant }): Tensor {
  return mapUnary('affine', SCALAR_EXPR.affine, x, [a, b], opts?.variant);
}
/** x ** p (torch semantics for negative bases with integer exponents). */
export function powScalar(x: Tensor, p: number, opts?: { variant?: ElementwiseVariant }): Tensor {
  return mapUnary('powScalar', SCALAR_EXPR.powScalar, x, [p, 0], opts?.variant);
}

/** min(max(x, lo), hi). */
export function clamp(x: Tensor, lo: number, hi: number, opts?: { variant?: ElementwiseVariant }): Tensor {
  if (!(lo <= hi)) throw new GpuError(`clamp: lo ${lo} must be <= hi ${hi}`);
  return mapUnary('clamp', SCALAR_EXPR.clamp, x, [lo, hi], opts?.variant);
}

/** An activation or math function applied elementwise; input f32 or f16, output f32. */
export function unary(x: Tensor, op: UnaryOp, opts?: { variant?: ElementwiseVariant }): Tensor {
  const expr = UNARY_EXPR[op];
  if (!expr) throw new GpuError(`unary: unknown op "${String(op)}"`);
  return mapUnary(op, expr, x, [0, 0], opts?.variant);
}

export const silu = (x: Tensor): Tensor => unary(x, 'silu');
export const gelu = (x: Tensor): Tensor => unary(x, 'gelu');
export const geluTanh = (x: Tensor): Tensor => unary(x, 'gelu_tanh');
export const quickGelu = (x: Tensor): Tensor => unary(x, 'quick_gelu');
export const sigmoid = (x: Tensor): Tensor => unary(x, 'sigmoid');
export const relu = (x: Tensor): Tensor => unary(x, 'relu');
export const exp = (x: Tensor): Tensor => unary(x, 'exp');
export const sqrt = (x: Tensor): Tensor => unary(x, 'sqrt');
export const neg = (x: Tensor): Tensor => unary(x, 'neg');
export const abs = (x: Tensor): Tensor => unary(x, 'abs');
export const tanh = (x: Tensor): Tensor => unary(x, 'tanh');
export const square = (x: Tensor): Tensor => unary(x, 'square');
export const log = (x: Tensor): Tensor => unary(x, 'log');

/**
 * diffusers GEGLU after the projection: x (..., 2F) -> (..., F) =
 * x[..., :F] * gelu(x[..., F:]) (hidden, gate = chunk(2)). x f32 or f16; out f32.
 */
export function geglu(x: Tensor): Tensor {
  checkDtype('geglu', x);
  const last = x.shape[x.shape.length - 1];
  if (last === undefined || last % 2 !== 0) throw new GpuError(`geglu: last dim of x ${shapeStr(x.shape)} must be even`);
  const f = last / 2;
  const rows = x.numel / Math.max(last, 1);
  const shape = [...x.shape.slice(0, -1), f];
  const out = Tensor.empty(x.device, shape, 'f32');
  if (out.numel === 0) return out;
  stridedMap(
    `geglu ${shapeStr(x.shape)}`,
    'x * gelu_f(y)',
    [rows, f],
    { tensor: out, strides: [f, 1] },
    { tensor: x, strides: [last, 1] },
    { tensor: x, strides: [last, 1], base: f },
  );
  return out;
}

/** Converts between f32 and f16 (packed two per u32); the same dtype gives a copy. */
export function cast(x: Tensor, dtype: DType): Tensor {
  checkDtype('cast', x);
  if (dtype !== 'f32' && dtype !== 'f16') throw new GpuError(`cast: unsupported target dtype ${String(dtype)}`);
  if (x.dtype === dtype) return copy(x);
  const dev = x.device;
  const out = Tensor.empty(dev, x.shape, dtype);
  const n = x.numel;
  if (n === 0) return out;
  const toF16 = dtype === 'f16';
  const wg = wgSize(dev);
  const body = toF16
    ? `var hi = 0.0;
  if (e + 1u < p.n) { hi = src[p.b32 + e + 1u]; }
  dst[p.b16 + w] = half_bits(src[p.b32 + e]) | (half_bits(hi) << 16u);`
    : `let v = unpack2x16float(src[p.b16 + w]);
  dst[p.b32 + e] = v.x;
  if (e + 1u < p.n) { dst[p.b32 + e + 1u] = v.y; }`;
  const pipeline = dev.pipeline(`elementwise/cast/${dtype}/${wg}`, () =>
    fillTemplate(loadShader('elementwise_cast'), { SRC: toF16 ? 'f32' : 'u32', DST: toF16 ? 'u32' : 'f32', WG: wg, BODY: body }),
  );
  const label = `cast ${shapeStr(x.shape)} ${x.dtype}->${dtype}`;
  // Runs of 128 elements keep both sides' windows 256-byte aligned at offset 0.
  const ops: MapOperand[] = [
    { tensor: x, strides: [1] },
    { tensor: out, strides: [1] },
  ];
  for (const ch of planChunks(label, dev, [n], ops, 128)) {
    const words = Math.ceil(ch.numel / 2);
    const [nx, ny] = grid1d(Math.ceil(words / wg));
    const b32 = toF16 ? ch.bases[0]! : ch.bases[1]!;
    const b16 = (toF16 ? ch.bases[1]! : ch.bases[0]!) / 2;
    dev.dispatch({ label, family: 'elementwise', pipeline, uniforms: uniforms([['u', ch.numel], ['u', nx], ['u', b32], ['u', b16]]), bindings: ch.windows, workgroups: [nx, ny] });
  }
  return out;
}

/** A new tensor with the same shape, dtype and values (a buffer copy, no size limit). */
export function copy(x: Tensor): Tensor {
  const out = Tensor.empty(x.device, x.shape, x.dtype);
  if (x.numel > 0) x.device.copy(x.buffer, 0, out.buffer, 0, x.byteSize);
  return out;
}
