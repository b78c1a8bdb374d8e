import { afterEach, describe, expect, it } from 'vitest';
import { Tensor } from '../src/tensor/index.js';
import { groupNorm, groupNormIntoTexture, groupNormTextureFits, layerNorm, normVariants, setNormMaxBindingBytes, softmax, type NormVariant } from '../src/kernels/norm.js';
import { expectClose, getDevice, randn } from './helpers/gpu.js';
import { refGroupNorm } from './helpers/cpuref.js';

const ALL = normVariants() as NormVariant[];

function refLayerNorm(x: Float32Array, C: number, gamma: Float32Array, beta: Float32Array, eps: number): Float64Array {
  const y = new Float64Array(x.length);
  for (let off = 0; off < x.length; off += C) {
    let s = 0;
    for (let c = 0; c < C; c++) s += x[off + c]!;
    const mean = s / C;
    let v = 0;
    for (let c = 0; c < C; c++) v += (x[off + c]! - mean) ** 2;
    const rstd = 1 / Math.sqrt(v / C + eps);
    for (let c = 0; c < C; c++) y[off + c] = (x[off + c]! - mean) * rstd * gamma[c]! + beta[c]!;
  }
  return y;
}

function refSoftmax(x: Float32Array, N: number): Float64Array {
  const y = new Float64Array(x.length);
  for (let off = 0; off < x.length; off += N) {
    let m = -Infinity;
    for (let c = 0; c < N; c++) m = Math.max(m, x[off + c]!);
    let s = 0;
    for (let c = 0; c < N; c++) s += Math.exp(x[off + c]! - m);
    for (let c = 0; c < N; c++) y[off + c] = Math.exp(x[off + c]! - m) / s;
  }
  return y;
}

afterEach(() => setNormMaxBindingBytes(undefined));

async function checkGroupNorm(variant: NormVariant, shape: number[], G: number, silu: boolean, offset = 0) {
  const dev = await getDevice();
  const [B, C] = shape as [number, number];
  const S = shape.slice(2).reduce((a, b) => a * b, 1);
  const seed = B * 1000 + C * 10 + S;
  // An offset mean makes a one-pass E[x^2] - E[x]^2 lose digits; two passes do not.
  const xa = randn(B * C * S, seed, 2).map((v) => v + offset);
  const ga = randn(C, seed + 1, 1);
  const ba = randn(C, seed + 2, 1);
  const x = Tensor.fromArray(dev, xa, shape);
  const g = Tensor.fromArray(dev, ga, [C]);
  const b = Tensor.fromArray(dev, ba, [C]);
  const y = groupNorm(x, G, g, b, 1e-5, { silu, variant });
  expect(y.shape).toEqual(shape);
  expectClose(await y.toArray(), refGroupNorm(xa, B, C, S, G, ga, ba, 1e-5, silu), 1e-4, `groupNorm ${variant} ${shape.join('x')} G${G}${silu ? ' silu' : ''}`);
  for (const t of [x, g, b, y]) t.release();
}

describe('groupNorm', () => {
  for (const variant of ALL) {
    it(`${variant}: matches torch semantics on odd and SD shapes, with and without SiLU`, async () => {
      await checkGroupNorm(variant, [1, 4, 1, 1], 2, false);
      await checkGroupNorm(variant, [2, 6, 7], 3, true);
      await checkGroupNorm(variant, [1, 32, 77], 32, false);
      await checkGroupNorm(variant, [2, 64, 16, 16], 32, true, 3);
      await checkGroupNorm(variant, [1, 12, 257], 4, true);
      await checkGroupNorm(variant, [1, 320, 64, 64], 32, true);
      await checkGroupNorm(variant, [1, 8, 4, 4, 4], 2, false);
      // Mean far from zero relative to the spread (std ~1.2 around 100).
      await checkGroupNorm(variant, [1, 64, 32, 32], 32, false, 100);
    });

    it(`${variant}: binds windows per range of (batch, group) above the binding limit`, async () => {
      // 1 KiB of limit: every window holds one or two groups and most start mid-256 bytes.
      setNormMaxBindingBytes(1024);
      await checkGroupNorm(variant, [3, 12, 5, 4], 6, true);
      await checkGroupNorm(variant, [2, 8, 7, 3], 4, false);
      setNormMaxBindingBytes(4096);
      await checkGroupNorm(variant, [2, 64, 8, 8], 32, false);
    });
  }

  // Above lavapipe's 128 MiB binding limit, so there it goes through windows; adapters with
  // larger bindings (an H100 allows 2 GiB) run it whole, and the result must agree either way.
  it('handles a 256 MiB tensor (1, 256, 512, 512) under the real binding limit', async () => {
    const dev = await getDevice();
    const [C, HW, G] = [256, 512, 32];
    const S = HW * HW;
    const n = C * S;
    if (dev.kind === 'cpu') expect(n * 4).toBeGreaterThan(dev.limits.maxStorageBufferBindingSize);
    const xa = randn(n, 77, 2);
    const ga = randn(C, 78);
    const ba = randn(C, 79);
    const x = Tensor.fromArray(dev, xa, [1, C, HW, HW]);
    const g = Tensor.fromArray(dev, ga, [C]);
    const b = Tensor.fromArray(dev, ba, [C]);
    const y = await groupNorm(x, G, g, b, 1e-5, { silu: true }).toArray();
    x.release();
    // Check the first group, one in the middle of the second window and the last.
    const per = (C / G) * S;
    for (const grp of [0, 17, G - 1]) {
      const xs = xa.subarray(grp * per, (grp + 1) * per);
      const cs = C / G;
      const ref = refGroupNorm(xs, 1, cs, S, 1, ga.subarray(grp * cs, (grp + 1) * cs), ba.subarray(grp * cs, (grp + 1) * cs), 1e-5, true);
      expectClose(y.subarray(grp * per, (grp + 1) * per), ref, 1e-4, `groupNorm 256 MiB group ${grp}`);
    }
    for (const t of [g, b]) t.release();
  });

  it('names the shapes on bad arguments', async () => {
    const dev = await getDevice();
    const x = Tensor.zeros(dev, [1, 6, 4, 4]);
    const g = Tensor.zeros(dev, [6]);
    const g5 = Tensor.zeros(dev, [5]);
    expect(() => groupNorm(x, 4, g, g, 1e-5)).toThrow(/6 channels of x \(1x6x4x4\) are not divisible into 4 groups/);
    expect(() => groupNorm(x, 3, g5, g, 1e-5)).toThrow(/gamma \(5\) and beta \(6\) must have 6 elements for x \(1x6x4x4\)/);
    setNormMaxBindingBytes(64);
    expect(() => groupNorm(x, 1, g, g, 1e-5)).toThrow(/exceeds the storage binding limit/);
    setNormMaxBindingBytes(undefined);
    // into a texture: groups of 3 channels cannot fill a texel's 4 (conv2d then takes the buffer)
    const tex = dev.allocTexture(4, 4, 2, 'test texture');
    expect(groupNormTextureFits(x, 2)).toBe(false);
    expect(() => groupNormIntoTexture(x, 2, g, g, 1e-5, true, tex)).toThrow('groupNorm: x (1x6x4x4) with 2 groups cannot be written into a texture (see groupNormTextureFits)');
    const x8 = Tensor.zeros(dev, [1, 8, 4, 8]);
    const g8 = Tensor.zeros(dev, [8]);
    if (groupNormTextureFits(x8, 2)) {
      // a texture of another size: named, nothing written out of its bounds
      expect(() => groupNormIntoTexture(x8, 2, g8, g8, 1e-5, true, tex)).toThrow('groupNorm: x (1x8x4x8) needs a 8x4x2 texture, got 4x4x2');
    }
    dev.freeTexture(tex);
    for (const t of [x, g, g5, x8, g8]) t.release();
  });
});

async function checkLayerNorm(variant: NormVariant, shape: number[]) {
  const dev = await getDevice();
  const C = shape[shape.length - 1]!;
  const n = shape.reduce((a, b) => a * b, 1);
  const xa = randn(n, n + C, 3).map((v) => v + 1.5);
  const ga = randn(C, C + 1);
  const ba = randn(C, C + 2);
  const x = Tensor.fromArray(dev, xa, shape);
  const g = Tensor.fromArray(dev, ga, [C]);
  const b = Tensor.fromArray(dev, ba, [C]);
  const y = layerNorm(x, g, b, 1e-5, { variant });
  expectClose(await y.toArray(), refLayerNorm(xa, C, ga, ba, 1e-5), 1e-4, `layerNorm ${variant} ${shape.join('x')}`);
  for (const t of [x, g, b, y]) t.release();
}

describe('layerNorm', () => {
  for (const variant of ALL) {
    it(`${variant}: matches torch semantics`, async () => {
      await checkLayerNorm(variant, [1]);
      await checkLayerNorm(variant, [7, 5]);
      await checkLayerNorm(variant, [2, 77, 64]);
      await checkLayerNorm(variant, [257, 12]);
      await checkLayerNorm(variant, [4096, 320]);
      await checkLayerNorm(variant, [3, 1280]);
      setNormMaxBindingBytes(1024);
      await checkLayerNorm(variant, [33, 20]);
      await checkLayerNorm(variant, [9, 7]);
    });
  }
  it('names the shapes on bad arguments', async () => {
    const dev = await getDevice();
    const x = Tensor.zeros(dev, [3, 8]);
    const g = Tensor.zeros(dev, [7]);
    expect(() => layerNorm(x, g, g, 1e-5)).toThrow(/gamma \(7\) and beta \(7\) must have 8 elements for x \(3x8\)/);
    for (const t of [x, g]) t.release();
  });
});

async function checkSoftmax(variant: NormVariant, shape: number[], scale: number) {
  const dev = await getDevice();
  const N = shape[shape.length - 1]!;
  const n = shape.reduce((a, b) => a * b, 1);
  const xa = randn(n, n + N, scale);
  const x = Tensor.fromArray(dev, xa, shape);
  const y = softmax(x, { variant });
  expectClose(await y.toArray(), refSoftmax(xa, N), 1e-4, `softmax ${variant} ${shape.join('x')}`);
  for (const t of [x, y]) t.release();
}

describe('softmax', () => {
  for (const variant of ALL) {
    it(`${variant}: is stable for large logits`, async () => {
      await checkSoftmax(variant, [1], 1);
      await checkSoftmax(variant, [7, 77], 50);
      await checkSoftmax(variant, [3, 257], 200);
      await checkSoftmax(variant, [2, 8, 4096], 30);
      await checkSoftmax(variant, [1, 1, 16], 1e4);
      setNormMaxBindingBytes(1024);
      await checkSoftmax(variant, [20, 36], 5);
      await checkSoftmax(variant, [9, 77], 5);
    });
  }
});
