// conv2d with weights converted at load time by prepareConvWeight (issue #7: the 'cpu'
// variant's re-laid (ci, ky, kx, co) copy made on first use doubled 3x3 conv weight memory).
import { describe, expect, it } from 'vitest';
import { Tensor, roundToF16, type Device } from '../src/tensor/index.js';
import { conv2d, convWeightShape, isPreparedConvWeight, prepareConvWeight, trimConvWeightCache, type ConvVariant } from '../src/kernels/conv.js';
import { getDevice, randn, expectClose } from './helpers/gpu.js';
import { im2colTuning } from '../src/kernels/im2col.js';

interface Case { Ci: number; Co: number; H: number; W: number; k: number; stride: number; pad: number }

/** Plain-TS NCHW reference (PyTorch Conv2d semantics), B = 1, with bias. */
function refConv(x: Float32Array, w: Float32Array, bias: Float32Array, c: Case): { out: Float32Array; Ho: number; Wo: number } {
  const { Ci, Co, H, W, k, stride: s, pad: p } = c;
  const Ho = Math.floor((H + 2 * p - k) / s) + 1;
  const Wo = Math.floor((W + 2 * p - k) / s) + 1;
  const out = new Float32Array(Co * Ho * Wo);
  for (let co = 0; co < Co; co++)
    for (let oy = 0; oy < Ho; oy++)
      for (let ox = 0; ox < Wo; ox++) {
        let sum = bias[co]!;
        for (let ci = 0; ci < Ci; ci++)
          for (let ky = 0; ky < k; ky++) {
            const iy = oy * s + ky - p;
            if (iy < 0 || iy >= H) continue;
            for (let kx = 0; kx < k; kx++) {
              const ix = ox * s + kx - p;
              if (ix < 0 || ix >= W) continue;
              sum += x[(ci * H + iy) * W + ix]! * w[((co * Ci + ci) * k + ky) * k + kx]!;
            }
          }
        out[(co * Ho + oy) * Wo + ox] = sum;
      }
  return { out, Ho, Wo };
}

let dev: Device;

/**
 * Preparing converts only where the 'cpu' (lavapipe) kernels run; on GPU adapters it is the
 * identity (checked here), and the prepared-layout tests below have nothing to test.
 */
async function lavapipeOnly(): Promise<boolean> {
  dev = await getDevice();
  if (dev.kind === 'cpu') return true;
  const w = Tensor.zeros(dev, [8, 3, 3, 3]);
  expect(prepareConvWeight(w)).toBe(w);
  expect(isPreparedConvWeight(w)).toBe(false);
  w.release();
  return false;
}

describe('prepareConvWeight', () => {
  it('gives the same conv2d results as the original weight (f32 and f16, every variant)', async () => {
    if (!(await lavapipeOnly())) return;
    const dtypes = dev.hasF16 ? (['f32', 'f16'] as const) : (['f32'] as const);
    for (const dtype of dtypes) {
      for (const stride of [1, 2]) {
        const c: Case = { Ci: 7, Co: 12, H: 9, W: 11, k: 3, stride, pad: 1 };
        const xd = randn(c.Ci * c.H * c.W, 11 + stride);
        let wd = randn(c.Co * c.Ci * c.k * c.k, 12 + stride, 0.5);
        if (dtype === 'f16') wd = roundToF16(wd);
        const bd = randn(c.Co, 13);
        const ref = refConv(xd, wd, bd, c);
        const x = Tensor.fromArray(dev, xd, [1, c.Ci, c.H, c.W]);
        const bias = Tensor.fromArray(dev, bd, [c.Co]);
        const w = Tensor.fromArray(dev, wd, [c.Co, c.Ci, c.k, c.k], dtype);
        const opts = { bias, stride, padding: c.pad };
        const plain = await conv2d(x, w, { ...opts, variant: 'cpu' }).toArrayAndRelease();

        const p = prepareConvWeight(w);
        expect(p).not.toBe(w);
        expect(isPreparedConvWeight(p)).toBe(true);
        expect(p.shape).toEqual([c.Ci, c.k, c.k, c.Co]);
        expect(p.dtype).toBe(dtype);
        expect(convWeightShape(p)).toEqual([c.Co, c.Ci, c.k, c.k]);
        expect(prepareConvWeight(p)).toBe(p); // idempotent
        w.release();
        trimConvWeightCache();

        const what = `${dtype} stride ${stride}`;
        const got = await conv2d(x, p, { ...opts, variant: 'cpu' }).toArrayAndRelease();
        expect(got.length).toBe(ref.out.length);
        expect(got).toEqual(plain); // same kernel, same data: bit-identical
        expectClose(got, ref.out, dtype === 'f16' ? 2e-2 : 1e-4, `cpu ${what}`);
        for (const variant of ['naive', 'gpu'] as ConvVariant[]) {
          const out = conv2d(x, p, { ...opts, variant });
          expect(out.shape).toEqual([1, c.Co, ref.Ho, ref.Wo]);
          expectClose(await out.toArrayAndRelease(), ref.out, dtype === 'f16' ? 2e-2 : 1e-4, `${variant} ${what}`);
        }
        // The prepared weight still holds the same values, in (ci, ky, kx, co) order.
        const pd = await p.toArray();
        const taps = c.k * c.k;
        for (let i = 0; i < pd.length; i++) {
          const co = i % c.Co;
          const q = Math.floor(i / c.Co);
          const expected = wd[(co * c.Ci + Math.floor(q / taps)) * taps + (q % taps)]!;
          if (pd[i] !== expected) {
            throw new Error(`prepared ${what}: element ${i} is ${pd[i]}, expected ${expected}`);
          }
        }
        for (const t of [x, bias, p]) t.release();
      }
    }
  });

  it('adds no memory per conv: no re-laid copy, and temporaries of other variants are freed', async () => {
    if (!(await lavapipeOnly())) return;
    const w = Tensor.fromArray(dev, randn(12 * 7 * 9, 21, 0.5), [12, 7, 3, 3]);
    const x = Tensor.fromArray(dev, randn(7 * 9 * 11, 22), [1, 7, 9, 11]);
    const p = prepareConvWeight(w);
    w.release();
    trimConvWeightCache();
    for (const variant of ['cpu', 'naive', 'gpu', undefined] as (ConvVariant | undefined)[]) {
      const before = dev.liveBytes;
      const out = conv2d(x, p, { padding: 1, variant });
      out.release();
      expect(dev.liveBytes, `variant ${variant ?? 'default'}`).toBe(before);
    }
    // An ordinary weight, by contrast, gets a cached copy that outlives the conv.
    const w2 = Tensor.fromArray(dev, randn(12 * 7 * 9, 23, 0.5), [12, 7, 3, 3]);
    const before = dev.liveBytes;
    conv2d(x, w2, { padding: 1, variant: 'cpu' }).release();
    expect(dev.liveBytes).toBeGreaterThan(before);
    // Preparing it adopts that copy rather than making another.
    const live = dev.liveBytes;
    const p2 = prepareConvWeight(w2);
    expect(dev.liveBytes).toBe(live);
    w2.release();
    trimConvWeightCache();
    expect(dev.liveBytes).toBe(before); // the copy took the original's place
    for (const t of [x, p, p2]) t.release();
    // A 3x3 weight left as stored (channels in multiples of 4) on the direct kernel (too few
    // tiles for Winograd; im2col, which takes such small images, turned off): a temporary
    // re-laid copy, freed with the conv's other temporaries.
    const x8 = Tensor.fromArray(dev, randn(8 * 5 * 5, 24), [1, 8, 5, 5]);
    const w8 = Tensor.fromArray(dev, randn(8 * 8 * 9, 25, 0.5), [8, 8, 3, 3]);
    expect(prepareConvWeight(w8)).toBe(w8);
    const live8 = dev.liveBytes;
    const s1 = im2colTuning.s1MaxPixels;
    im2colTuning.s1MaxPixels = 0;
    dev.startProfile();
    try {
      conv2d(x8, w8, { padding: 1, variant: 'cpu' }).release();
    } finally {
      im2colTuning.s1MaxPixels = s1;
    }
    const prof = await dev.stopProfile();
    expect([...prof.keys()]).toEqual(['conv2d']);
    expect(prof.get('conv2d')!.count).toBe(2); // the re-layout and the conv
    expect(dev.liveBytes).toBe(live8);
    for (const t of [x8, w8]) t.release();
  });

  it('leaves 1x1 weights alone', async () => {
    dev = await getDevice();
    const w = Tensor.fromArray(dev, randn(12 * 7, 31), [12, 7, 1, 1]);
    expect(prepareConvWeight(w)).toBe(w);
    expect(isPreparedConvWeight(w)).toBe(false);
    expect(convWeightShape(w)).toEqual([12, 7, 1, 1]);
    w.release();
  });

  it('names both shapes on a mismatch', async () => {
    if (!(await lavapipeOnly())) return;
    const x = Tensor.zeros(dev, [1, 4, 8, 8]);
    const w = Tensor.zeros(dev, [8, 3, 3, 3]);
    // Unchanged for ordinary weights ...
    expect(() => conv2d(x, w)).toThrow('conv2d: input channels differ: x (1x4x8x8) vs w (8x3x3x3)');
    // ... and in (Co, Ci, kh, kw) terms for prepared ones.
    const p = prepareConvWeight(w);
    for (const variant of ['cpu', 'naive', 'gpu'] as ConvVariant[]) {
      expect(() => conv2d(x, p, { variant })).toThrow('conv2d: input channels differ: x (1x4x8x8) vs w (8x3x3x3) (prepared, stored as (3x3x3x8))');
    }
    // (Co = 7: 3x3 weights with both channel counts multiples of 4 are left as stored)
    const w4 = Tensor.zeros(dev, [7, 4, 3, 3]);
    const p4 = prepareConvWeight(w4);
    expect(() => conv2d(x, p4, { bias: Tensor.zeros(dev, [6]) })).toThrow('conv2d: bias (6) does not match w (7x4x3x3) (prepared, stored as (4x3x3x7))');
    expect(() => conv2d(x, p4, { padding: 1, residual: Tensor.zeros(dev, [1, 7, 7, 7]) })).toThrow(/residual \(1x7x7x7\) does not match the output \(1x7x8x8\)/);
    const out = conv2d(x, p4, { padding: 1 });
    expect(out.shape).toEqual([1, 7, 8, 8]);
    for (const t of [x, w, p, w4, p4, out]) t.release();
  });
});
