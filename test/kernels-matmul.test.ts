import { afterEach, describe, expect, it } from 'vitest';
import { Tensor, roundToF16, type Device } from '../src/tensor/index.js';
import { matmul, linear, gemv, setMaxBindingBytes, sgRowsPerLane, cpuGemmTuning, packTuning, type Act } from '../src/kernels/matmul.js';
import { getDevice, randn, expectClose } from './helpers/gpu.js';
import { asVariant, cpuTestOverrides, gemmVariants, type TestVariant } from './helpers/variants.js';

const ACTS: Record<Act, (x: number) => number> = {
  none: (x) => x,
  silu: (x) => x / (1 + Math.exp(-x)),
  gelu: (x) => 0.5 * x * (1 + erf(x / Math.SQRT2)),
  gelu_tanh: (x) => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3))),
  quick_gelu: (x) => x / (1 + Math.exp(-1.702 * x)),
};

// Abramowitz-Stegun 7.1.26 is too coarse for a reference: use a series / continued fraction.
function erf(x: number): number {
  const z = Math.abs(x);
  let r: number;
  if (z < 3) {
    let term = z;
    let sum = z;
    for (let n = 1; n < 100; n++) {
      term *= (-z * z) / n;
      sum += term / (2 * n + 1);
    }
    r = (2 / Math.sqrt(Math.PI)) * sum;
  } else {
    r = 1 - Math.exp(-z * z) / (z * Math.sqrt(Math.PI)) * (1 - 1 / (2 * z * z) + 3 / (4 * z ** 4));
  }
  return x < 0 ? -r : r;
}

interface RefOpts {
  transA?: boolean;
  transB?: boolean;
  bias?: Float32Array;
  residual?: Float32Array;
  act?: Act;
  alpha?: number;
  bBatched?: boolean;
}

/** Plain-TS reference: a (batch, M, K) or (batch, K, M); b (K, N)/(N, K), per batch if bBatched. */
function refMatmul(a: Float32Array, b: Float32Array, batch: number, M: number, N: number, K: number, o: RefOpts = {}): Float32Array {
  const out = new Float32Array(batch * M * N);
  const act = ACTS[o.act ?? 'none'];
  for (let z = 0; z < batch; z++) {
    const ab = z * M * K;
    const bb = o.bBatched ? z * K * N : 0;
    for (let m = 0; m < M; m++) {
      for (let n = 0; n < N; n++) {
        let s = 0;
        for (let k = 0; k < K; k++) {
          const av = o.transA ? a[ab + k * M + m]! : a[ab + m * K + k]!;
          const bv = o.transB ? b[bb + n * K + k]! : b[bb + k * N + n]!;
          s += av * bv;
        }
        let v = (o.alpha ?? 1) * s + (o.bias ? o.bias[n]! : 0);
        v = act(v);
        const i = z * M * N + m * N + n;
        if (o.residual) v += o.residual[i]!;
        out[i] = v;
      }
    }
  }
  return out;
}

let dev: Device;
const VARIANTS = gemmVariants();
const VARIANTS_WHOLE = gemmVariants({ whole: true });

async function check(variant: TestVariant, batch: number, M: number, N: number, K: number, o: RefOpts & { f16?: boolean; seed?: number } = {}): Promise<void> {
  const seed = o.seed ?? M * 1000 + N * 10 + K;
  const aData = randn(batch * M * K, seed);
  let bData = randn((o.bBatched ? batch : 1) * K * N, seed + 1);
  if (o.f16) bData = roundToF16(bData);
  const bias = o.bias ? randn(N, seed + 2) : undefined;
  const residual = o.residual ? randn(batch * M * N, seed + 3) : undefined;
  const aShape = batch > 1 ? [batch, o.transA ? K : M, o.transA ? M : K] : [o.transA ? K : M, o.transA ? M : K];
  const bInner = o.transB ? [N, K] : [K, N];
  const bShape = o.bBatched ? [batch, ...bInner] : bInner;
  const a = Tensor.fromArray(dev, aData, aShape);
  const b = Tensor.fromArray(dev, bData, bShape, o.f16 ? 'f16' : 'f32');
  const biasT = bias ? Tensor.fromArray(dev, bias, [N]) : undefined;
  const outShape = batch > 1 ? [batch, M, N] : [M, N];
  const resT = residual ? Tensor.fromArray(dev, residual, outShape) : undefined;
  const out = matmul(a, b, { transA: o.transA, transB: o.transB, bias: biasT, residual: resT, act: o.act, alpha: o.alpha, variant: asVariant(variant) });
  expect(out.shape).toEqual(outShape);
  const got = await out.toArray();
  const ref = refMatmul(aData, bData, batch, M, N, K, { ...o, bias, residual });
  const what = `${variant} ${batch}x${M}x${N}x${K} ${JSON.stringify({ ...o, bias: !!bias, residual: !!residual })}`;
  expectClose(got, ref, o.f16 ? 2e-2 : 1e-4, what);
  for (const t of [a, b, biasT, resT, out]) t?.release();
}

describe('matmul', () => {
  afterEach(() => setMaxBindingBytes(undefined));

  it('variants agree with the CPU reference on odd shapes', async () => {
    dev = await getDevice();
    const shapes: [number, number, number][] = [
      [1, 1, 1], [7, 7, 7], [77, 257, 33], [1, 77, 257], [257, 1, 77], [33, 20, 16], [64, 64, 64], [17, 40, 37],
    ];
    for (const variant of VARIANTS_WHOLE) {
      for (const [M, N, K] of shapes) {
        await check(variant, 1, M, N, K);
      }
    }
  });

  it('cpu: few rows take 2 or 1 rows per lane (no workgroup of mostly clamped rows), and agree', async () => {
    dev = await getDevice();
    const Ms = [2, 8, 9, 16, 17, 24, 40, 64, 77, 4096];
    expect(Ms.map((m) => sgRowsPerLane(m))).toEqual([1, 1, 2, 2, 4, 4, 2, 4, 4, 4]);
    // The 8-row tile of the texture path.
    expect(Ms.map((m) => sgRowsPerLane(m, 8))).toEqual([1, 1, 2, 2, 4, 4, 2, 8, 2, 8]);
    // Winograd's 8x8 images: 16 rows in 16 batches; and 5 rows (1 per lane), f32 and f16 b.
    for (const variant of ['cpu', 'cpu-buf'] as const) {
      for (const f16 of dev.hasF16 ? [false, true] : [false]) {
        await check(variant, 16, 16, 40, 48, { transB: true, f16, bBatched: true });
        await check(variant, 2, 5, 24, 36, { transB: true, f16, bias: new Float32Array(), act: 'silu' });
        await check(variant, 1, 40, 72, 32, { transB: true, f16 });
        await check(variant, 1, 77, 64, 40, { transB: true, f16 });
        // a transposed and read as 4-row vec4s (a 1x1 conv of a 4x4 image) keeps 4 rows per lane.
        await check(variant, 2, 16, 24, 32, { transA: true, transB: true, f16 });
        await check(variant, 1, 8, 40, 12, { transA: true, transB: true, f16 });
      }
    }
  });

  it('handles transposes, batches, broadcast b and the fused epilogue', async () => {
    dev = await getDevice();
    for (const variant of VARIANTS) {
      for (const transA of [false, true]) {
        for (const transB of [false, true]) {
          await check(variant, 1, 37, 41, 19, { transA, transB });
          await check(variant, 1, 64, 48, 32, { transA, transB });
          await check(variant, 3, 20, 24, 40, { transA, transB, bBatched: true });
          await check(variant, 2, 9, 13, 8, { transA, transB });
        }
      }
      for (const act of Object.keys(ACTS) as Act[]) {
        await check(variant, 2, 19, 36, 24, { act, bias: new Float32Array(), residual: new Float32Array(), alpha: 0.7 });
      }
    }
  });

  // f16 b in the nn.Linear layout (transB) is read 4 halves of K per load where K % 4 == 0
  // (the cpu kernel's B_TH4, the default) or 8 where K % 8 == 0 (B_TH8, f16K4 off); K = 36
  // and 44 reach B_TH4 only, 72 and 16 both, 33 and 17 neither (scalar loads).
  it('reads f16 b (packed two per u32) in every layout', async () => {
    dev = await getDevice();
    if (!dev.hasF16) return;
    for (const f16K4 of [true, false]) {
      cpuTestOverrides.f16K4 = f16K4;
      try {
        for (const variant of VARIANTS) {
          for (const transB of [false, true]) {
            await check(variant, 1, 77, 257, 33, { f16: true, transB });
            await check(variant, 1, 40, 64, 72, { f16: true, transB });
            await check(variant, 1, 70, 40, 36, { f16: true, transB, bias: new Float32Array(), residual: new Float32Array() });
            await check(variant, 3, 9, 12, 44, { f16: true, transB });
            await check(variant, 2, 16, 24, 16, { f16: true, transB, bias: new Float32Array(), act: 'gelu' });
            await check(variant, 1, 1, 33, 17, { f16: true, transB });
          }
        }
      } finally {
        delete cpuTestOverrides.f16K4;
      }
    }
    if (dev.kind === 'cpu') {
      // both load modes were compiled (and so taken) by the cpu variant, with the SG_B block
      const keys = dev.compileLog.map((c) => c.key).filter((k) => k.startsWith('matmul_cpu:'));
      expect(keys.some((k) => k.includes('B_TH4') && k.includes('SG_B'))).toBe(true);
      expect(keys.some((k) => k.includes('B_TH8') && k.includes('SG_B'))).toBe(true);
    }
  });

  it('linear and gemv match nn.Linear', async () => {
    dev = await getDevice();
    for (const variant of VARIANTS) {
      for (const [rows, N, K] of [[1, 77, 33], [1, 320, 1280], [5, 48, 64], [12, 7, 9]] as const) {
        for (const f16 of dev.hasF16 ? [false, true] : [false]) {
          const x = randn(rows * K, 11);
          let w = randn(N * K, 12);
          if (f16) w = roundToF16(w);
          const bias = randn(N, 13);
          const res = randn(rows * N, 14);
          const xt = Tensor.fromArray(dev, x, [rows, K]);
          const wt = Tensor.fromArray(dev, w, [N, K], f16 ? 'f16' : 'f32');
          const bt = Tensor.fromArray(dev, bias, [N]);
          const rt = Tensor.fromArray(dev, res, [rows, N]);
          const out = linear(xt, wt, bt, { act: 'silu', residual: rt, variant: asVariant(variant) });
          expect(out.shape).toEqual([rows, N]);
          const ref = refMatmul(x, w, 1, rows, N, K, { transB: true, bias, residual: res, act: 'silu' });
          expectClose(await out.toArray(), ref, f16 ? 2e-2 : 1e-4, `linear ${variant} ${rows}x${N}x${K} f16=${f16}`);
          if (rows === 1) {
            const g = gemv(xt, wt, undefined, { variant: asVariant(variant) });
            expectClose(await g.toArray(), refMatmul(x, w, 1, 1, N, K, { transB: true }), f16 ? 2e-2 : 1e-4, `gemv ${variant}`);
            g.release();
          }
          for (const t of [xt, wt, bt, rt, out]) t.release();
        }
      }
    }
  });

  it('splits operands larger than the storage binding limit', async () => {
    dev = await getDevice();
    setMaxBindingBytes(4096);
    for (const variant of VARIANTS) {
      // a, out split along M; a transposed splits along K (accumulating); b split along N / K.
      await check(variant, 1, 200, 24, 36, { bias: new Float32Array(), act: 'gelu', residual: new Float32Array() });
      await check(variant, 1, 40, 24, 200, { transA: true, bias: new Float32Array(), act: 'silu' });
      await check(variant, 1, 24, 100, 40, { transB: true, act: 'quick_gelu', bias: new Float32Array() });
      await check(variant, 1, 24, 100, 40, { act: 'gelu_tanh', residual: new Float32Array() });
      await check(variant, 3, 30, 20, 40, { bBatched: true });
      if (dev.hasF16) await check(variant, 1, 24, 160, 48, { transB: true, f16: true });
    }
  });

  it('cpu: splits rows and batches that exceed the texture limits of the texture-read a; copies or packs it', async () => {
    dev = await getDevice();
    cpuGemmTuning.textureLimit = { rows: 16, layers: 2 };
    try {
      // 37 rows in 16-row pieces, 3 batches in 2-layer pieces, with every epilogue input.
      await check('cpu', 3, 37, 24, 20, { bias: new Float32Array(), residual: new Float32Array(), act: 'silu', alpha: 0.5 });
      await check('cpu', 3, 37, 24, 20, { transA: true, transB: true, bBatched: true });
      if (dev.hasF16) await check('cpu', 1, 50, 40, 24, { transB: true, f16: true });
      // K = 64: rows of 256 bytes go by a buffer-to-texture copy; then the same by the pack kernel.
      for (const copy of [true, false]) {
        packTuning.copy = copy;
        await check('cpu', 3, 37, 24, 64, { bias: new Float32Array(), residual: new Float32Array() });
        await check('cpu', 1, 20, 12, 128, { transB: true });
      }
      // a transposed with M % 4 == 0 (a 1x1 conv's x): 4x4 blocks per invocation, or one
      // value at a time; K = 30 leaves a partial last texel.
      for (const t4 of [true, false]) {
        packTuning.transposed4 = t4;
        await check('cpu', 3, 36, 20, 30, { transA: true, transB: true, bBatched: true });
        await check('cpu', 1, 40, 16, 64, { transA: true, bias: new Float32Array() });
      }
    } finally {
      cpuGemmTuning.textureLimit = undefined;
      packTuning.copy = true;
      packTuning.transposed4 = true;
    }
  });

  it('runs with an output above the adapter binding limit (sampled check)', async () => {
    dev = await getDevice();
    const limit = dev.limits.maxStorageBufferBindingSize;
    const N = 4100;
    const M = Math.ceil(limit / (N * 4)) + 9;
    const K = 12;
    const ad = randn(M * K, 7);
    const bd = randn(N * K, 8);
    const a = Tensor.fromArray(dev, ad, [M, K]);
    const b = Tensor.fromArray(dev, bd, [N, K]);
    const out = linear(a, b);
    const got = await out.toArray();
    for (const [m, n] of [[0, 0], [M - 1, N - 1], [M >> 1, 17], [M - 3, 0], [5000, 4099]] as const) {
      let ref = 0;
      for (let k = 0; k < K; k++) ref += ad[m * K + k]! * bd[n * K + k]!;
      expect(Math.abs(got[m * N + n]! - ref)).toBeLessThanOrEqual(1e-4 * Math.max(1, Math.abs(ref)));
    }
    for (const t of [a, b, out]) t.release();
  });

  it('names both shapes on a mismatch', async () => {
    dev = await getDevice();
    const a = Tensor.zeros(dev, [4096, 320]);
    const b = Tensor.zeros(dev, [300, 320]);
    expect(() => matmul(a, b)).toThrow('matmul: inner dims differ: a (4096x320) vs b (300x320)');
    expect(() => linear(a, Tensor.zeros(dev, [10, 300]))).toThrow(/linear: inner dims differ: x \(4096x320\) vs weight \(10x300\)/);
    expect(() => matmul(Tensor.zeros(dev, [2, 3, 4]), Tensor.zeros(dev, [3, 4, 5]))).toThrow(/batch dims differ: a \(2x3x4\) vs b \(3x4x5\)/);
    expect(() => matmul(a, Tensor.zeros(dev, [320, 8]), { bias: Tensor.zeros(dev, [7]) })).toThrow(/bias \(7\)/);
  });
});
