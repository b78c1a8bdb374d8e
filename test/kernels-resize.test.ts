import { afterEach, describe, expect, it } from 'vitest';
import { Tensor } from '../src/tensor/index.js';
import { resizeBilinear, resizeVariants, upsampleNearest2x } from '../src/kernels/resize.js';
import { setWindowLimitForTests } from '../src/kernels/elementwise.js';
import { expectClose, getDevice, randn } from './helpers/gpu.js';

afterEach(() => setWindowLimitForTests(null));

function nearestRef(x: Float32Array, [b, c, h, w]: number[]): Float32Array {
  const out = new Float32Array(b! * c! * 4 * h! * w!);
  for (let p = 0; p < b! * c!; p++)
    for (let y = 0; y < 2 * h!; y++)
      for (let xx = 0; xx < 2 * w!; xx++) out[(p * 2 * h! + y) * 2 * w! + xx] = x[(p * h! + (y >> 1)) * w! + (xx >> 1)]!;
  return out;
}

/** ATen upsample_bilinear2d (align_corners=False, no scale factors), in float64. */
function bilinearRef(x: Float32Array, [b, c, h, w]: number[], oh: number, ow: number): Float64Array {
  const out = new Float64Array(b! * c! * oh * ow);
  const src = (scale: number, d: number): number => Math.max(scale * (d + 0.5) - 0.5, 0);
  const sh = Math.fround(h! / oh);
  const sw = Math.fround(w! / ow);
  for (let p = 0; p < b! * c!; p++)
    for (let oy = 0; oy < oh; oy++) {
      const sy = src(sh, oy);
      const y1 = Math.floor(sy);
      const y1p = y1 < h! - 1 ? 1 : 0;
      const ly = sy - y1;
      for (let ox = 0; ox < ow; ox++) {
        const sx = src(sw, ox);
        const x1 = Math.floor(sx);
        const x1p = x1 < w! - 1 ? 1 : 0;
        const lx = sx - x1;
        const at = (yy: number, xx: number): number => x[(p * h! + yy) * w! + xx]!;
        out[(p * oh + oy) * ow + ox] =
          (1 - ly) * ((1 - lx) * at(y1, x1) + lx * at(y1, x1 + x1p)) + ly * ((1 - lx) * at(y1 + y1p, x1) + lx * at(y1 + y1p, x1 + x1p));
      }
    }
  return out;
}

async function run(windowed: boolean): Promise<void> {
  const dev = await getDevice();
  // A 4 KiB binding limit: planes of up to ~950 elements, tensors split across windows.
  if (windowed) setWindowLimitForTests(4096);
  let seed = windowed ? 50 : 1;
  const nearestShapes = windowed ? [[4, 8, 8, 8], [2, 7, 1, 77], [1, 3, 21, 13], [3, 5, 9, 10]] : [[1, 1, 1, 1], [2, 3, 7, 5], [1, 4, 8, 8], [2, 7, 1, 77], [1, 2, 16, 33]];
  for (const shape of nearestShapes) {
    const xs = randn(shape.reduce((a, b) => a * b, 1), seed++);
    for (const variant of resizeVariants()) {
      const out = upsampleNearest2x(Tensor.fromArray(dev, xs, shape), { variant });
      expect(out.shape).toEqual([shape[0], shape[1], 2 * shape[2]!, 2 * shape[3]!]);
      expect(Array.from(await out.toArray())).toEqual(Array.from(nearestRef(xs, shape)));
    }
  }
  const bilinearCases = windowed
    ? [[[2, 8, 8, 8], 16, 16], [[2, 8, 8, 8], 5, 3], [[1, 1, 33, 17], 257, 7], [[3, 5, 7, 9], 77, 1]]
    : [
    [[1, 3, 8, 8], 16, 16],
    [[2, 3, 7, 5], 3, 11],
    [[1, 2, 64, 64], 8, 8],
    [[1, 1, 5, 9], 5, 9],
    [[1, 2, 1, 1], 4, 3],
    [[1, 4, 16, 16], 77, 1],
    [[1, 1, 33, 17], 257, 7],
  ];
  for (const [shape, oh, ow] of bilinearCases as [number[], number, number][]) {
    const xs = randn(shape.reduce((a, b) => a * b, 1), seed++);
    const out = resizeBilinear(Tensor.fromArray(dev, xs, shape), oh, ow);
    expect(out.shape).toEqual([shape[0], shape[1], oh, ow]);
    expectClose(await out.toArray(), bilinearRef(xs, shape, oh, ow), 1e-5, `bilinear ${shape}->${oh}x${ow}`);
  }
}

describe('resize', () => {
  it('nearest 2x and bilinear (up and down) match the CPU references', async () => {
    await run(false);
  });
  it('the same with a tiny binding limit (windowed)', async () => {
    await run(true);
  });
  it('bilinear agrees with a torch value', async () => {
    // torch.nn.functional.interpolate(torch.arange(4.).view(1,1,2,2), size=(3,3), mode='bilinear')
    const dev = await getDevice();
    const out = await resizeBilinear(Tensor.fromArray(dev, [0, 1, 2, 3], [1, 1, 2, 2]), 3, 3).toArray();
    const want = [0, 0.5, 1, 1, 1.5, 2, 2, 2.5, 3];
    expectClose(out, want, 1e-6, 'torch 2x2->3x3');
  });
  it('rejects non-4-d input', async () => {
    const dev = await getDevice();
    expect(() => upsampleNearest2x(Tensor.zeros(dev, [3, 4]))).toThrow(/upsampleNearest2x: x must be \(B, C, H, W\), got \(3x4\)/);
  });
});
