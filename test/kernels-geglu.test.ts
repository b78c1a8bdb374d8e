// GEGLU fused into the matmul epilogue (glu: 'geglu'), against a plain-TS reference of
// diffusers' GEGLU on the checkpoint (chunked) layout: h = x @ W^T + b,
// out = h[..., :F] * gelu(h[..., F:]); the kernel gets W and b re-laid by gluInterleave.
import { afterEach, describe, expect, it } from 'vitest';
import { Tensor, roundToF16, type Device } from '../src/tensor/index.js';
import { gluInterleave, linear, matmul, setMaxBindingBytes } from '../src/kernels/matmul.js';
import { UNARY_REF } from './helpers/cpuref.js';
import { asVariant, gemmVariants, type TestVariant } from './helpers/variants.js';
import { expectClose, getDevice, randn } from './helpers/gpu.js';

const gelu = UNARY_REF.gelu!;
const VARIANTS = gemmVariants();
const VARIANTS_WHOLE = gemmVariants({ whole: true });
let dev: Device;

/**
 * x (batch, M, K) with w (2F, K) [transB] or (K, 2F), chunked: out (batch, M, F) =
 * (alpha h[j] + bias[j]) * gelu(alpha h[j + F] + bias[j + F]) + residual.
 */
function refGeglu(x: Float32Array, w: Float32Array, rows: number, F: number, K: number, o: { transB?: boolean; bias?: Float32Array; residual?: Float32Array; alpha?: number } = {}): Float32Array {
  const N = 2 * F;
  const out = new Float32Array(rows * F);
  const h = new Float64Array(N);
  for (let m = 0; m < rows; m++) {
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += x[m * K + k]! * (o.transB === false ? w[k * N + n]! : w[n * K + k]!);
      h[n] = (o.alpha ?? 1) * s + (o.bias ? o.bias[n]! : 0);
    }
    for (let j = 0; j < F; j++) out[m * F + j] = h[j]! * gelu(h[j + F]!) + (o.residual ? o.residual[m * F + j]! : 0);
  }
  return out;
}

/** linear(x (M, K), w (2F, K), glu 'geglu') against the reference; weights re-laid on the GPU. */
async function checkLinear(variant: TestVariant, M: number, K: number, F: number, o: { f16?: boolean; bias?: boolean; residual?: boolean; lead?: number[] } = {}): Promise<void> {
  const N = 2 * F;
  const seed = M * 7919 + K * 31 + F;
  const x = randn(M * K, seed);
  let w = randn(N * K, seed + 1);
  if (o.f16) w = roundToF16(w);
  const bias = o.bias ? randn(N, seed + 2) : undefined;
  const residual = o.residual ? randn(M * F, seed + 3) : undefined;
  const lead = o.lead ?? [M];
  const xt = Tensor.fromArray(dev, x, [...lead, K]);
  const wChunked = Tensor.fromArray(dev, w, [N, K], o.f16 ? 'f16' : 'f32');
  const bChunked = bias ? Tensor.fromArray(dev, bias, [N]) : undefined;
  const wt = gluInterleave(wChunked);
  const bt = bChunked ? gluInterleave(bChunked) : undefined;
  expect(wt.dtype).toBe(o.f16 ? 'f16' : 'f32');
  const rt = residual ? Tensor.fromArray(dev, residual, [...lead, F]) : undefined;
  const out = linear(xt, wt, bt, { glu: 'geglu', residual: rt, variant: asVariant(variant) });
  expect(out.shape).toEqual([...lead, F]);
  const ref = refGeglu(x, w, M, F, K, { bias, residual });
  expectClose(await out.toArray(), ref, o.f16 ? 2e-2 : 1e-4, `geglu linear ${variant} M=${M} K=${K} F=${F} ${JSON.stringify(o)}`);
  for (const t of [xt, wChunked, bChunked, wt, bt, rt, out]) t?.release();
}

describe('matmul glu: geglu', () => {
  afterEach(() => setMaxBindingBytes(undefined));

  it('every variant matches the reference on odd shapes, f32 weights, with and without bias', async () => {
    dev = await getDevice();
    for (const variant of VARIANTS_WHOLE) {
      for (const M of [1, 7, 77, 257]) {
        for (const K of [7, 40, 320]) {
          for (const F of [3, 10, 160]) {
            for (const bias of [true, false]) await checkLinear(variant, M, K, F, { bias });
          }
        }
      }
    }
  });

  it('every variant matches the reference on odd shapes, f16 weights, with and without bias', async () => {
    dev = await getDevice();
    if (!dev.hasF16) return;
    for (const variant of VARIANTS) {
      for (const M of [1, 7, 77, 257]) {
        for (const K of [7, 40, 320]) {
          for (const F of [3, 10, 160]) {
            for (const bias of [true, false]) await checkLinear(variant, M, K, F, { bias, f16: true });
          }
        }
      }
    }
  });

  it('adds the residual after the GLU, over leading batch dims', async () => {
    dev = await getDevice();
    for (const variant of VARIANTS) {
      await checkLinear(variant, 2 * 33, 40, 10, { bias: true, residual: true, lead: [2, 33] });
      await checkLinear(variant, 1, 40, 10, { bias: true, residual: true, lead: [1, 1] });
      if (dev.hasF16) await checkLinear(variant, 77, 24, 16, { f16: true, bias: true, residual: true });
    }
  });

  it('matmul with a (K, 2F) b (interleaved along axis 1), alpha, batch and residual', async () => {
    dev = await getDevice();
    const [B, M, K, F] = [3, 19, 24, 13];
    const x = randn(B * M * K, 1);
    const w = randn(K * 2 * F, 2);
    const bias = randn(2 * F, 3);
    const residual = randn(B * M * F, 4);
    const xt = Tensor.fromArray(dev, x, [B, M, K]);
    const wc = Tensor.fromArray(dev, w, [K, 2 * F]);
    const bc = Tensor.fromArray(dev, bias, [2 * F]);
    const wt = gluInterleave(wc, 1);
    const bt = gluInterleave(bc);
    const rt = Tensor.fromArray(dev, residual, [B, M, F]);
    const ref = refGeglu(x, w, B * M, F, K, { transB: false, bias, residual, alpha: 0.7 });
    for (const variant of VARIANTS) {
      const out = matmul(xt, wt, { glu: 'geglu', bias: bt, residual: rt, alpha: 0.7, variant: asVariant(variant) });
      expect(out.shape).toEqual([B, M, F]);
      expectClose(await out.toArray(), ref, 1e-4, `geglu matmul ${variant}`);
      out.release();
    }
    for (const t of [xt, wc, bc, wt, bt, rt]) t.release();
  });

  it('splits along M, N (at even columns) and K (through the scratch pass) under a small binding limit', async () => {
    dev = await getDevice();
    setMaxBindingBytes(4096);
    for (const variant of VARIANTS) {
      // x and out split along M, w (70 rows of 40) along N into pieces of odd length
      // unless kept even.
      await checkLinear(variant, 77, 40, 35, { bias: true, residual: true });
      // A row of x (1100 f32) exceeds the limit: K splits, and the GLU runs after the last chunk.
      await checkLinear(variant, 9, 1100, 3, { bias: true, residual: true });
      await checkLinear(variant, 1, 1100, 5, { bias: true });
      if (dev.hasF16) await checkLinear(variant, 7, 2100, 3, { f16: true, bias: true, residual: true });
    }
  });

  it('gluInterleave moves f16 bits exactly (subnormals included)', async () => {
    dev = await getDevice();
    if (!dev.hasF16) return;
    const [F, K] = [5, 3];
    const bits = new Uint16Array(2 * F * K);
    for (let i = 0; i < bits.length; i++) bits[i] = (i * 2654435761) >>> 16;
    bits[0] = 0x0001; // smallest subnormal
    bits[1] = 0x83ff; // negative subnormal
    bits[2] = 0x8000; // -0
    const t = Tensor.fromF16Bits(dev, bits, [2 * F, K]);
    const r = gluInterleave(t);
    const got = await r.toF16Bits();
    const want = new Uint16Array(bits.length);
    for (let s = 0; s < 2; s++) for (let j = 0; j < F; j++) for (let k = 0; k < K; k++) want[(2 * j + s) * K + k] = bits[(s * F + j) * K + k]!;
    // NaN payloads may change; every finite value must survive bit for bit.
    for (let i = 0; i < want.length; i++) if ((want[i]! & 0x7c00) !== 0x7c00) expect(got[i], `element ${i}`).toBe(want[i]);
    t.release();
    r.release();
  });

  it('rejects an odd N, naming the shapes and the option', async () => {
    dev = await getDevice();
    const x = Tensor.zeros(dev, [7, 40]);
    const w = Tensor.zeros(dev, [7, 40]);
    expect(() => linear(x, w, undefined, { glu: 'geglu' })).toThrow(
      "linear: glu 'geglu' needs an even number of output features ((value, gate) pairs), but x (7x40) @ weight (7x40)^T gives N = 7",
    );
    expect(() => linear(Tensor.zeros(dev, [1, 40]), w, undefined, { glu: 'geglu' })).toThrow(/gemv: glu 'geglu' needs an even number .* w \(7x40\)\^T gives N = 7/);
    expect(() => matmul(x, Tensor.zeros(dev, [40, 9]), { glu: 'geglu' })).toThrow(/matmul: glu 'geglu' needs an even number .* a \(7x40\) @ b \(40x9\) gives N = 9/);
    expect(() => linear(x, Tensor.zeros(dev, [8, 40]), undefined, { glu: 'geglu', act: 'silu' })).toThrow(/act 'silu' cannot be combined with glu 'geglu'/);
    expect(() => gluInterleave(w)).toThrow(/gluInterleave: \(7x40\) has 7 entries along axis 0/);
  });
});
