import { afterEach, describe, expect, it } from 'vitest';
import { Tensor } from '../src/tensor/index.js';
import { mse, reduce, type ReduceOp } from '../src/kernels/reduce.js';
import { setWindowLimitForTests } from '../src/kernels/elementwise.js';
import { expectClose, getDevice, randn } from './helpers/gpu.js';
import { prod } from './helpers/cpuref.js';

afterEach(() => setWindowLimitForTests(null));

function reduceRef(x: Float32Array, shape: number[], axis: number, op: ReduceOp): Float64Array {
  const outer = prod(shape.slice(0, axis));
  const n = shape[axis]!;
  const inner = prod(shape.slice(axis + 1));
  const out = new Float64Array(outer * inner);
  for (let o = 0; o < outer; o++)
    for (let i = 0; i < inner; i++) {
      let acc = op === 'max' ? -Infinity : op === 'min' ? Infinity : 0;
      for (let r = 0; r < n; r++) {
        const v = x[(o * n + r) * inner + i]!;
        acc = op === 'max' ? Math.max(acc, v) : op === 'min' ? Math.min(acc, v) : acc + v;
      }
      out[o * inner + i] = op === 'mean' ? acc / n : acc;
    }
  return out;
}

function mseRef(a: Float32Array, b: Float32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += (a[i]! - b[i]!) ** 2;
  return s / a.length;
}

async function run(windowed: boolean): Promise<void> {
  const dev = await getDevice();
  if (windowed) setWindowLimitForTests(1024);
  let seed = windowed ? 70 : 7;
  for (const [shape, axis] of [
    [[7], 0],
    [[257], 0],
    [[2, 77, 5], 1],
    [[2, 77, 5], 2],
    [[2, 77, 5], 0],
    [[3, 1000], 1],
    [[5000, 3], 0],
    [[1, 1], 1],
    [[2, 3, 4, 5, 6], 3],
    [[20000], 0],
  ] as [number[], number][]) {
    const xs = randn(prod(shape), seed++, 2);
    const x = Tensor.fromArray(dev, xs, shape);
    for (const op of ['sum', 'mean', 'max', 'min'] as ReduceOp[]) {
      const out = reduce(x, axis, op);
      expect(out.shape).toEqual(shape.filter((_, i) => i !== axis));
      const ref = reduceRef(xs, shape, axis, op);
      expectClose(await out.toArray(), ref, 1e-5, `${op} ${shape} axis ${axis}`);
      out.release();
    }
    const k = reduce(x, axis - shape.length, 'sum', true);
    expect(k.shape).toEqual(shape.map((d, i) => (i === axis ? 1 : d)));
  }
  for (const n of [1, 7, 77, 257, 4 * 64 * 64, 100003]) {
    const a = randn(n, n, 3);
    const b = randn(n, n + 1, 3);
    const got = (await mse(Tensor.fromArray(dev, a, [n]), Tensor.fromArray(dev, b, [n])).toArray())[0]!;
    const ref = mseRef(a, b);
    expect(Math.abs(got - ref) / ref).toBeLessThan(1e-5);
  }
}

describe('reduce', () => {
  it('sum / mean / max / min over any axis, and mse, match float64 references', async () => {
    await run(false);
  });
  it('the same with a tiny binding limit (windowed)', async () => {
    await run(true);
  });
  it('mse of latent-shaped tensors is (1) and accurate to 1e-5 relative', async () => {
    const dev = await getDevice();
    const shape = [2, 4, 64, 64];
    const a = randn(prod(shape), 1);
    const b = Float32Array.from(a, (v, i) => v + 1e-3 * Math.sin(i));
    const out = mse(Tensor.fromArray(dev, a, shape), Tensor.fromArray(dev, b, shape));
    expect(out.shape).toEqual([1]);
    const ref = mseRef(a, b);
    expect(Math.abs((await out.toArray())[0]! - ref) / ref).toBeLessThan(1e-5);
    expect(() => mse(Tensor.zeros(dev, [2, 3]), Tensor.zeros(dev, [3, 2]))).toThrow(/mse: shapes differ: a \(2x3\) vs b \(3x2\)/);
  });
});
