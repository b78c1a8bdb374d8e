// Layout ops: permute, transpose, slice, concat. Each is one strided copy through the
// generic elementwise kernel (shaders/elementwise.wgsl with OP = x); contiguous pieces
// become plain buffer copies, which have no binding-size limit.
import { GpuError, Tensor, shapeStr } from '../tensor/index.js';
import { contiguousStrides, stridedMap } from './elementwise.js';

function normAxis(op: string, axis: number, rank: number, shape: readonly number[]): number {
  const a = axis < 0 ? axis + rank : axis;
  if (!Number.isInteger(a) || a < 0 || a >= rank) throw new GpuError(`${op}: axis ${axis} out of range for shape ${shapeStr(shape)}`);
  return a;
}

function needF32(op: string, t: Tensor): void {
  if (t.dtype !== 'f32') throw new GpuError(`${op}: dtype ${t.dtype} is not supported for strided copies (f32 only); cast first`);
}

/** Copies x's elements with strides `inStrides` over `domain` into a new contiguous tensor. */
function gather(op: string, x: Tensor, outShape: readonly number[], inStrides: readonly number[], base = 0): Tensor {
  needF32(op, x);
  const out = Tensor.empty(x.device, outShape, 'f32');
  if (out.numel === 0) return out;
  stridedMap(`${op} ${shapeStr(x.shape)}->${shapeStr(outShape)}`, 'x', outShape, { tensor: out, strides: contiguousStrides(outShape) }, { tensor: x, strides: inStrides, base }, null);
  return out;
}

/** x with its dims reordered: out.shape[i] = x.shape[dims[i]] (like torch.permute). */
export function permute(x: Tensor, dims: readonly number[]): Tensor {
  const r = x.rank;
  const d = dims.map((a) => (a < 0 ? a + r : a));
  if (d.length !== r || new Set(d).size !== r || d.some((a) => !Number.isInteger(a) || a < 0 || a >= r)) {
    throw new GpuError(`permute: dims [${dims.join(', ')}] are not a permutation of the ${r} dims of ${shapeStr(x.shape)}`);
  }
  const xs = contiguousStrides(x.shape);
  return gather('permute', x, d.map((a) => x.shape[a]!), d.map((a) => xs[a]!));
}

/** x with dims d0 and d1 swapped (negative dims count from the end). */
export function transpose(x: Tensor, d0: number, d1: number): Tensor {
  const r = x.rank;
  const a = normAxis('transpose', d0, r, x.shape);
  const b = normAxis('transpose', d1, r, x.shape);
  const dims = [...Array(r).keys()];
  dims[a] = b;
  dims[b] = a;
  return permute(x, dims);
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
  if (outer === 1 && off % 4 === 0 && bytes % 4 === 0) {
    // A contiguous range: one buffer copy, any dtype.
    const out = Tensor.empty(x.device, shape, x.dtype);
    if (bytes > 0) x.device.copy(x.buffer, off, out.buffer, 0, bytes);
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
      if (outer === 1 && off % 4 === 0 && (t.byteSize === t.numel * eb || at + len === shape[ax])) {
        dev.copy(t.buffer, 0, out.buffer, off, t.byteSize);
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
