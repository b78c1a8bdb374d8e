// Layout ops: permute, transpose, slice, concat. Each is one strided copy through the
// generic elementwise kernel (shaders/elementwise.wgsl with OP = x); contiguous pieces
// become plain buffer copies, which have no binding-size limit.
import { Device, GpuError, Tensor, fillTemplate, grid1d, loadShader, shapeStr, uniforms } from '../tensor/index.js';
import { collapseDims, contiguousStrides, planChunks, stridedMap } from './elementwise.js';

/** 'naive': the generic strided copy; 'tile4': 4x4-tile kernel for batched 2-D transposes. */
export type LayoutVariant = 'naive' | 'tile4';

/** Names of the permute kernel variants (for `doctor` and tests). */
export function layoutVariants(): LayoutVariant[] {
  return ['naive', 'tile4'];
}

/** Up to this many contiguous runs, slice / concat use buffer copies instead of a kernel. */
const MAX_COPIES = 64;

function normAxis(op: string, axis: number, rank: number, shape: readonly number[]): number {
  const a = axis < 0 ? axis + rank : axis;
  if (!Number.isInteger(a) || a < 0 || a >= rank) throw new GpuError(`${op}: axis ${axis} out of range for shape ${shapeStr(shape)}`);
  return a;
}

function needF32(op: string, t: Tensor): void {
  if (t.dtype !== 'f32') throw new GpuError(`${op}: dtype ${t.dtype} is not supported for strided copies (f32 only); cast first`);
}

/**
 * out[b, p, q] = x[b, q, p] with the tile kernel when the collapsed copy is a batched 2-D
 * transpose with both sides multiples of 4; returns false otherwise.
 */
function tryTranspose(label: string, x: Tensor, out: Tensor, outShape: readonly number[], inStrides: readonly number[]): boolean {
  const col = collapseDims(outShape, [contiguousStrides(outShape), inStrides]);
  let dims = col.dims;
  let si = col.strides[1]!;
  if (dims.length === 2) {
    dims = [1, ...dims];
    si = [0, ...si];
  }
  if (dims.length !== 3) return false;
  const [nb, np, nq] = dims as [number, number, number];
  if (si[0] !== np * nq || si[1] !== 1 || si[2] !== np || np % 4 !== 0 || nq % 4 !== 0) return false;
  const dev: Device = x.device;
  const size = dev.kind === 'cpu' ? 64 : 256;
  const pipeline = dev.pipeline(`layout/transpose4/${size}`, () => fillTemplate(loadShader('layout_transpose'), { WG: size }));
  // Plan on tiles: domain (B, P/4, Q/4) with element strides of each tile's first element;
  // a tile also reads/writes 3 more rows (extra).
  const chunks = planChunks(label, dev, [nb, np / 4, nq / 4], [
    { tensor: x, strides: [np * nq, 4, 4 * np], extra: 3 * np + 3 },
    { tensor: out, strides: [np * nq, 4 * nq, 4], extra: 3 * nq + 3 },
  ]);
  for (const ch of chunks) {
    const [nx, ny] = grid1d(Math.ceil(ch.numel / size));
    const u = uniforms([
      ['u', ch.numel], ['u', nx], ['u', ch.dims[1]!], ['u', ch.dims[2]!],
      ['u', np / 4], ['u', nq / 4], ['u', ch.bases[0]! / 4], ['u', ch.bases[1]! / 4],
      ['u', (np * nq) / 4], ['u', 0], ['u', 0], ['u', 0],
    ]);
    dev.dispatch({ label, family: 'layout', pipeline, uniforms: u, bindings: ch.windows, workgroups: [nx, ny] });
  }
  return true;
}

/** Copies x's elements with strides `inStrides` over `domain` into a new contiguous tensor. */
function gather(op: string, x: Tensor, outShape: readonly number[], inStrides: readonly number[], base = 0, variant?: LayoutVariant): Tensor {
  needF32(op, x);
  const out = Tensor.empty(x.device, outShape, 'f32');
  if (out.numel === 0) return out;
  const label = `${op} ${shapeStr(x.shape)}->${shapeStr(outShape)}`;
  if (variant !== 'naive' && base === 0 && tryTranspose(label, x, out, outShape, inStrides)) return out;
  stridedMap(label, 'x', outShape, { tensor: out, strides: contiguousStrides(outShape) }, { tensor: x, strides: inStrides, base }, null, [0, 0], variant !== 'naive');
  return out;
}

/** x with its dims reordered: out.shape[i] = x.shape[dims[i]] (like torch.permute). */
export function permute(x: Tensor, dims: readonly number[], opts: { variant?: LayoutVariant } = {}): Tensor {
  const r = x.rank;
  const d = dims.map((a) => (a < 0 ? a + r : a));
  if (d.length !== r || new Set(d).size !== r || d.some((a) => !Number.isInteger(a) || a < 0 || a >= r)) {
    throw new GpuError(`permute: dims [${dims.join(', ')}] are not a permutation of the ${r} dims of ${shapeStr(x.shape)}`);
  }
  const xs = contiguousStrides(x.shape);
  return gather('permute', x, d.map((a) => x.shape[a]!), d.map((a) => xs[a]!), 0, opts.variant);
}

/** x with dims d0 and d1 swapped (negative dims count from the end). */
export function transpose(x: Tensor, d0: number, d1: number, opts: { variant?: LayoutVariant } = {}): Tensor {
  const r = x.rank;
  const a = normAxis('transpose', d0, r, x.shape);
  const b = normAxis('transpose', d1, r, x.shape);
  const dims = [...Array(r).keys()];
  dims[a] = b;
  dims[b] = a;
  return permute(x, dims, opts);
}

/** x[..., start:end, ...] along `axis` (0 <= start <= end <= size). */
export function slice(x: Tensor, axis: number, start: number, end: number): Tensor {
  const ax = normAxis('slice', axis, x.rank, x.shape);
  const size = x.shape[ax]!;
  if (!Number.isInteger(start) || !Number.isInteger(end) || start < 0 || end > size || start > end) {
    throw new GpuError(`slice: range [${start}, ${end}) is not within 0..${size} on axis ${axis} of ${shapeStr(x.shape)}`);
  }
  const shape = [...x.shape];
  shape[ax] = end - start;
  const xs = contiguousStrides(x.shape);
  const outer = x.shape.slice(0, ax).reduce((p, q) => p * q, 1);
  const eb = x.dtype === 'f32' ? 4 : 2;
  const off = start * xs[ax]! * eb;
  const bytes = (end - start) * xs[ax]! * eb;
  const rowBytes = x.shape[ax]! * xs[ax]! * eb;
  if (outer <= MAX_COPIES && off % 4 === 0 && bytes % 4 === 0 && rowBytes % 4 === 0) {
    // Few contiguous runs: buffer copies (any dtype, no binding limit).
    const out = Tensor.empty(x.device, shape, x.dtype);
    if (bytes > 0) for (let o = 0; o < outer; o++) x.device.copy(x.buffer, o * rowBytes + off, out.buffer, o * bytes, bytes);
    return out;
  }
  return gather('slice', x, shape, xs, start * xs[ax]!);
}

/** Joins tensors along `axis`; all other dims must match (e.g. UNet skips on channels). */
export function concat(tensors: readonly Tensor[], axis: number): Tensor {
  const first = tensors[0];
  if (!first) throw new GpuError('concat: no tensors');
  const r = first.rank;
  const ax = normAxis('concat', axis, r, first.shape);
  for (const t of tensors) {
    const ok = t.rank === r && t.shape.every((d, i) => i === ax || d === first.shape[i]);
    if (!ok) throw new GpuError(`concat: shape ${shapeStr(t.shape)} does not match ${shapeStr(first.shape)} outside axis ${axis}`);
    if (t.dtype !== first.dtype) throw new GpuError(`concat: dtypes differ (${first.dtype} vs ${t.dtype})`);
  }
  const shape = [...first.shape];
  shape[ax] = tensors.reduce((s, t) => s + t.shape[ax]!, 0);
  const dev = first.device;
  const out = Tensor.empty(dev, shape, first.dtype);
  const os = contiguousStrides(shape);
  const outer = shape.slice(0, ax).reduce((p, q) => p * q, 1);
  const eb = first.dtype === 'f32' ? 4 : 2;
  let at = 0;
  for (const t of tensors) {
    const len = t.shape[ax]!;
    if (t.numel > 0) {
      const off = at * os[ax]! * eb;
      const run = len * os[ax]! * eb; // bytes of t per outer index
      const outRun = shape[ax]! * os[ax]! * eb;
      if (outer === 1 && off % 4 === 0 && (t.byteSize === t.numel * eb || at + len === shape[ax])) {
        dev.copy(t.buffer, 0, out.buffer, off, t.byteSize);
      } else if (outer <= MAX_COPIES && off % 4 === 0 && run % 4 === 0 && outRun % 4 === 0) {
        for (let o = 0; o < outer; o++) dev.copy(t.buffer, o * run, out.buffer, o * outRun + off, run);
      } else {
        needF32('concat', t);
        stridedMap(
          `concat ${shapeStr(t.shape)}->${shapeStr(shape)}`,
          'x',
          t.shape,
          { tensor: out, strides: os, base: at * os[ax]! },
          { tensor: t, strides: contiguousStrides(t.shape) },
          null,
        );
      }
    }
    at += len;
  }
  return out;
}
