import { afterEach, describe, expect, it } from 'vitest';
import { Tensor } from '../src/tensor/index.js';
import { concat, layoutVariants, permute, slice, transpose } from '../src/kernels/layout.js';
import { setWindowLimitForTests } from '../src/kernels/elementwise.js';
import { getDevice, randn } from './helpers/gpu.js';
import { prod, unravel } from './helpers/cpuref.js';

afterEach(() => setWindowLimitForTests(null));

function permuteRef(x: Float32Array, shape: number[], dims: number[]): Float32Array {
  const outShape = dims.map((d) => shape[d]!);
  const xs = shape.map((_, i) => prod(shape.slice(i + 1)));
  const out = new Float32Array(x.length);
  const idx = new Array<number>(shape.length).fill(0);
  for (let i = 0; i < out.length; i++) {
    unravel(i, outShape, idx);
    let src = 0;
    dims.forEach((d, k) => (src += idx[k]! * xs[d]!));
    out[i] = x[src]!;
  }
  return out;
}

function sliceRef(x: Float32Array, shape: number[], axis: number, start: number, end: number): Float32Array {
  const outer = prod(shape.slice(0, axis));
  const inner = prod(shape.slice(axis + 1));
  const out: number[] = [];
  for (let o = 0; o < outer; o++) for (let a = start; a < end; a++) for (let i = 0; i < inner; i++) out.push(x[(o * shape[axis]! + a) * inner + i]!);
  return Float32Array.from(out);
}

function concatRef(xs: Float32Array[], shapes: number[][], axis: number): Float32Array {
  const outer = prod(shapes[0]!.slice(0, axis));
  const out: number[] = [];
  for (let o = 0; o < outer; o++) {
    xs.forEach((x, j) => {
      const run = prod(shapes[j]!.slice(axis));
      for (let i = 0; i < run; i++) out.push(x[o * run + i]!);
    });
  }
  return Float32Array.from(out);
}

async function checkAll(windowed: boolean): Promise<void> {
  const dev = await getDevice();
  if (windowed) setWindowLimitForTests(1024);
  let seed = windowed ? 500 : 1;
  for (const [shape, dims] of [
    [[2, 77, 8, 40], [0, 2, 1, 3]],
    [[7, 257], [1, 0]],
    [[1], [0]],
    [[2, 3, 4, 5, 6, 7], [5, 4, 3, 2, 1, 0]],
    [[2, 3, 5, 7], [0, 2, 3, 1]],
    [[3, 1, 7], [2, 0, 1]],
    [[2, 8, 12], [0, 2, 1]], // batched 2-D transposes: the tile kernel
    [[2, 4, 6, 8], [0, 2, 3, 1]],
    [[2, 48, 4], [0, 2, 1]],
    [[16, 20], [1, 0]],
    [[2, 77, 8, 40], [0, 2, 1, 3]], // contiguous last dim: strided vec4
  ] as [number[], number[]][]) {
    const xs = randn(prod(shape), seed++);
    for (const variant of layoutVariants()) {
      const out = permute(Tensor.fromArray(dev, xs, shape), dims, { variant });
      expect(out.shape).toEqual(dims.map((d) => shape[d]));
      expect(Array.from(await out.toArray())).toEqual(Array.from(permuteRef(xs, shape, dims)));
    }
  }
  const tx = randn(2 * 77 * 9, seed++);
  const t = transpose(Tensor.fromArray(dev, tx, [2, 77, 9]), -1, 1);
  expect(t.shape).toEqual([2, 9, 77]);
  expect(Array.from(await t.toArray())).toEqual(Array.from(permuteRef(tx, [2, 77, 9], [0, 2, 1])));
  for (const [shape, axis, s, e] of [
    [[2, 10, 7], 1, 3, 8],
    [[10, 7], 0, 2, 9],
    [[4, 77, 2 * 33], 2, 33, 66],
    [[257], 0, 1, 256],
    [[3, 5], 1, 0, 0],
    [[100, 10, 7], 1, 3, 8], // > 64 runs: the strided kernel
  ] as [number[], number, number, number][]) {
    const xs = randn(prod(shape), seed++);
    const out = slice(Tensor.fromArray(dev, xs, shape), axis, s, e);
    expect(Array.from(await out.toArray())).toEqual(Array.from(sliceRef(xs, shape, axis, s, e)));
  }
  for (const [shapes, axis] of [
    [[[2, 3, 4, 5], [2, 7, 4, 5]], 1],
    [[[2, 320, 8, 8], [2, 640, 8, 8]], 1],
    [[[3, 7], [3, 1], [3, 77]], 1],
    [[[1, 7], [2, 7]], 0],
    [[[2, 5, 3], [2, 5, 1]], 2],
    [[[70, 3, 4], [70, 5, 4]], 1], // > 64 runs: the strided kernel
  ] as [number[][], number][]) {
    const xs = shapes.map((s) => randn(prod(s), seed++));
    const out = concat(xs.map((x, j) => Tensor.fromArray(dev, x, shapes[j]!)), axis);
    expect(Array.from(await out.toArray())).toEqual(Array.from(concatRef(xs, shapes, axis)));
  }
}

describe('layout', () => {
  it('permute, transpose, slice and concat match the CPU', async () => {
    await checkAll(false);
  });

  it('the same with a tiny binding limit (windowed)', async () => {
    await checkAll(true);
  });

  it('f16 contiguous slices and concats are buffer copies', async () => {
    const dev = await getDevice();
    if (!dev.hasF16) return;
    const xs = randn(6 * 8, 3);
    const x = Tensor.fromArray(dev, xs, [6, 8], 'f16');
    const s = slice(x, 0, 2, 5);
    expect(s.dtype).toBe('f16');
    const full = await x.toArray();
    expect(Array.from(await s.toArray())).toEqual(Array.from(full.slice(16, 40)));
    const c = concat([x, s], 0);
    expect(Array.from(await c.toArray())).toEqual([...full, ...full.slice(16, 40)]);
    expect(() => permute(x, [1, 0])).toThrow(/permute: dtype f16 is not supported/);
  });

  it('errors name the shapes', async () => {
    const dev = await getDevice();
    const a = Tensor.zeros(dev, [2, 3, 4]);
    expect(() => permute(a, [0, 0, 1])).toThrow(/permute: dims \[0, 0, 1\] are not a permutation of the 3 dims of \(2x3x4\)/);
    expect(() => slice(a, 1, 2, 4)).toThrow(/slice: range \[2, 4\) is not within 0..3 on axis 1 of \(2x3x4\)/);
    expect(() => concat([a, Tensor.zeros(dev, [2, 5, 5])], 1)).toThrow(/concat: shape \(2x5x5\) does not match \(2x3x4\) outside axis 1/);
  });
});
