// Reductions over one axis (sum / mean / max / min) and the mean squared error used as the
// ELBO loss. Each stage reduces runs of at most CH elements per invocation; stages chain
// into a tree (accurate f32 sums without shared memory, which is slow on lavapipe).
import { Device, GpuError, Tensor, fillTemplate, grid1d, loadShader, shapeStr, uniforms } from '../tensor/index.js';
import { planChunks, stridedMap, windowLimitBytes, type MapOperand } from './elementwise.js';

export type ReduceOp = 'sum' | 'mean' | 'max' | 'min';

/** Run length per invocation in multi-stage reductions. */
const CH = 64;
/** Axes up to this length are reduced in one stage. */
const ONE_STAGE = 256;

const COMBINE: Record<'sum' | 'max' | 'min', string> = { sum: 'a + b', max: 'max(a, b)', min: 'min(a, b)' };

function pipelineFor(dev: Device, combine: 'sum' | 'max' | 'min', sqdiff: boolean, size: number): GPUComputePipeline {
  return dev.pipeline(`reduce/${combine}/${sqdiff ? 'sqdiff' : 'plain'}/${size}`, () =>
    fillTemplate(loadShader('reduce'), {
      DECL: sqdiff
        ? '@group(0) @binding(2) var<storage, read> y: array<f32>;\n@group(0) @binding(3) var<storage, read_write> out: array<f32>;'
        : '@group(0) @binding(2) var<storage, read_write> out: array<f32>;',
      LOAD: sqdiff ? 'let d = x[i] - y[i];\n  return d * d;' : 'return x[i];',
      COMBINE: COMBINE[combine],
      WG: size,
    }),
  );
}

/**
 * Reduces x viewed as (outer, r, inner) over the middle axis into (outer, 1, inner) in
 * stages, scaling the final stage by `scale`. With `y`, the first stage reads (x - y)^2.
 */
function reduceMiddle(label: string, x: Tensor, y: Tensor | null, outer: number, r: number, inner: number, combine: 'sum' | 'max' | 'min', scale: number): Tensor {
  const dev = x.device;
  const size = dev.kind === 'cpu' ? 64 : 256;
  let cur = x;
  let curR = r;
  let first = true;
  // A run of ch rows spans (ch - 1) * inner + 1 elements: it must fit one binding window.
  const room = Math.floor((windowLimitBytes(dev) - 260) / 4);
  const maxCh = Math.floor((room - 1) / inner) + 1;
  if (maxCh < 2 && r > 1) return reduceWide(label, x, y, outer, r, inner, combine, scale);
  for (;;) {
    const ch = Math.min(curR <= ONE_STAGE ? curR : CH, maxCh);
    const g = Math.ceil(curR / ch);
    const out = Tensor.empty(dev, [outer, g, inner], 'f32');
    const sq = first && y !== null;
    const pipeline = pipelineFor(dev, combine, sq, size);
    const ops = [
      { tensor: cur, strides: [curR * inner, ch * inner, 1], extra: (ch - 1) * inner },
      ...(sq ? [{ tensor: y, strides: [curR * inner, ch * inner, 1], extra: (ch - 1) * inner }] : []),
      { tensor: out, strides: [g * inner, inner, 1] },
    ];
    for (const box of planChunks(label, dev, [outer, g, inner], ops)) {
      const [nx, ny] = grid1d(Math.ceil(box.numel / size));
      const u = uniforms([
        ['u', box.numel], ['u', box.dims[1]!], ['u', box.dims[2]!], ['u', nx],
        ['u', curR], ['u', ch], ['u', box.starts[1]!], ['u', box.bases[0]!],
        ['u', box.bases[ops.length - 1]!], ['u', curR * inner], ['u', g * inner], ['f', g === 1 ? scale : 1],
        ['u', inner], ['u', 0], ['u', 0], ['u', 0],
      ]);
      dev.dispatch({ label, family: 'reduce', pipeline, uniforms: u, bindings: box.windows, workgroups: [nx, ny] });
    }
    if (!first) cur.release();
    if (g === 1) return out;
    cur = out;
    curR = g;
    first = false;
  }
}

/**
 * reduceMiddle for rows too long for two of them to share a binding window: folds the r
 * rows one at a time with the windowed elementwise kernel (r dispatches).
 */
function reduceWide(label: string, x: Tensor, y: Tensor | null, outer: number, r: number, inner: number, combine: 'sum' | 'max' | 'min', scale: number): Tensor {
  const dev = x.device;
  const dom = [outer, inner];
  const row = (t: Tensor, k: number): MapOperand => ({ tensor: t, strides: [r * inner, 1], base: k * inner });
  const load = y ? '(x - y) * (x - y)' : 'x';
  const fold = combine === 'sum' ? 'x + ' : `${combine}(x, `;
  const close = combine === 'sum' ? '' : ')';
  let acc = Tensor.empty(dev, [outer, 1, inner], 'f32');
  const accOp = (t: Tensor): MapOperand => ({ tensor: t, strides: [inner, 1] });
  stridedMap(label, load, dom, accOp(acc), row(x, 0), y ? row(y, 0) : null);
  for (let k = 1; k < r; k++) {
    const next = Tensor.empty(dev, [outer, 1, inner], 'f32');
    if (y) {
      const d = Tensor.empty(dev, [outer, 1, inner], 'f32');
      stridedMap(label, load, dom, accOp(d), row(x, k), row(y, k));
      stridedMap(label, `${fold}y${close}`, dom, accOp(next), accOp(acc), accOp(d));
      d.release();
    } else {
      stridedMap(label, `${fold}y${close}`, dom, accOp(next), accOp(acc), row(x, k));
    }
    acc.release();
    acc = next;
  }
  if (scale !== 1) {
    const scaled = Tensor.empty(dev, [outer, 1, inner], 'f32');
    stridedMap(label, 'x * p.s0', dom, accOp(scaled), accOp(acc), null, [scale, 0]);
    acc.release();
    acc = scaled;
  }
  return acc;
}

/**
 * Reduces x over `axis` (negative counts from the end): (..., n, ...) -> (...) or, with
 * keepdim, (..., 1, ...). f32; mean divides the f32 sum by n.
 */
export function reduce(x: Tensor, axis: number, op: ReduceOp, keepdim = false): Tensor {
  if (x.dtype !== 'f32') throw new GpuError(`reduce ${op}: dtype ${x.dtype} is not supported (f32 only)`);
  if (!['sum', 'mean', 'max', 'min'].includes(op)) throw new GpuError(`reduce: unknown op "${String(op)}"`);
  const rank = x.rank;
  const ax = axis < 0 ? axis + rank : axis;
  if (!Number.isInteger(ax) || ax < 0 || ax >= rank) throw new GpuError(`reduce ${op}: axis ${axis} out of range for shape ${shapeStr(x.shape)}`);
  const n = x.shape[ax]!;
  const outShape = keepdim ? x.shape.map((d, i) => (i === ax ? 1 : d)) : x.shape.filter((_, i) => i !== ax);
  const outer = x.shape.slice(0, ax).reduce((a, b) => a * b, 1);
  const inner = x.shape.slice(ax + 1).reduce((a, b) => a * b, 1);
  if (n === 0) {
    if (op === 'sum' || outer * inner === 0) return Tensor.zeros(x.device, outShape);
    throw new GpuError(`reduce ${op}: axis ${axis} of ${shapeStr(x.shape)} is empty`);
  }
  if (outer * inner === 0) return Tensor.empty(x.device, outShape);
  const combine = op === 'mean' ? 'sum' : op;
  const res = reduceMiddle(`reduce ${op} ${shapeStr(x.shape)} axis ${ax}`, x, null, outer, n, inner, combine, op === 'mean' ? 1 / n : 1);
  const view = res.reshape(outShape);
  res.release();
  return view;
}

/** Mean over all elements of (a - b)^2, accumulated in f32 by a tree of partial sums: (1) f32. */
export function mse(a: Tensor, b: Tensor): Tensor {
  if (a.dtype !== 'f32' || b.dtype !== 'f32') throw new GpuError(`mse: dtypes ${a.dtype}, ${b.dtype} are not supported (f32 only)`);
  if (a.numel !== b.numel || a.shape.length !== b.shape.length || a.shape.some((d, i) => d !== b.shape[i])) {
    throw new GpuError(`mse: shapes differ: a ${shapeStr(a.shape)} vs b ${shapeStr(b.shape)}`);
  }
  const n = a.numel;
  if (n === 0) throw new GpuError(`mse: empty tensors ${shapeStr(a.shape)}`);
  const res = reduceMiddle(`mse ${shapeStr(a.shape)}`, a, b, 1, n, 1, 'sum', 1 / n);
  const view = res.reshape([1]);
  res.release();
  return view;
}
