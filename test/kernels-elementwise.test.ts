import { afterEach, describe, expect, it } from 'vitest';
import { Tensor, roundToF16 } from '../src/tensor/index.js';
import {
  add, affine, binary, cast, clamp, copy, div, elementwiseVariants, geglu, mul, mulScalar, addScalar, powScalar, setWindowLimitForTests, sub, unary,
  type BinaryOp, type UnaryOp,
} from '../src/kernels/elementwise.js';
import { expectClose, getDevice, maxAbsDiff, randn } from './helpers/gpu.js';
import { UNARY_REF, broadcastRef, erf64, prod } from './helpers/cpuref.js';

const BIN: Record<BinaryOp, (x: number, y: number) => number> = {
  add: (x, y) => x + y,
  sub: (x, y) => x - y,
  mul: (x, y) => x * y,
  div: (x, y) => x / y,
};

afterEach(() => setWindowLimitForTests(null));

describe('elementwise', () => {
  it('erf reference agrees with known values', () => {
    expect(erf64(0.5)).toBeCloseTo(0.5204998778130465, 14);
    expect(erf64(1)).toBeCloseTo(0.8427007929497149, 14);
    expect(erf64(3)).toBeCloseTo(0.9999779095030014, 14);
    expect(1 - erf64(4)).toBeCloseTo(1.541725790028002e-8, 15);
  });

  it('binary ops broadcast like numpy (every variant)', async () => {
    const dev = await getDevice();
    const cases: [number[], number[]][] = [
      [[2, 1, 7], [77, 1]],
      [[1], [257]],
      [[257], [1]],
      [[2, 3, 5, 7], [3, 1, 1]],
      [[2, 4, 8, 8], [4, 1, 1]],
      [[7], [7]],
      [[4, 77], [4, 77]],
      [[3, 1, 5], [1, 4, 1]],
      [[1, 1, 1, 1, 2, 3], [5, 1, 1, 1, 1, 3]],
    ];
    let seed = 10;
    for (const variant of elementwiseVariants()) {
      for (const [sa, sb] of cases) {
        const av = randn(prod(sa), seed++, 3);
        const bv = randn(prod(sb), seed++, 3).map((v) => (Math.abs(v) < 0.3 ? 0.3 + v : v));
        const a = Tensor.fromArray(dev, av, sa);
        const b = Tensor.fromArray(dev, bv, sb);
        for (const op of ['add', 'sub', 'mul', 'div'] as BinaryOp[]) {
          const ref = broadcastRef(av, sa, bv, sb, BIN[op]);
          const out = binary(op, a, b, { variant });
          expect(out.shape).toEqual(ref.shape);
          expectClose(await out.toArray(), ref.out, 1e-4, `${op} ${variant} ${sa} ${sb}`);
          out.release();
        }
        a.release();
        b.release();
      }
    }
  });

  it('binary ops on f16 inputs (packed)', async () => {
    const dev = await getDevice();
    if (!dev.hasF16) return;
    for (const [sa, sb] of [[[7, 3], [3]], [[257], [257]], [[2, 77], [2, 77]]] as [number[], number[]][]) {
      const av = roundToF16(randn(prod(sa), 1, 2));
      const bv = randn(prod(sb), 2, 2);
      const a = Tensor.fromArray(dev, av, sa, 'f16');
      const b = Tensor.fromArray(dev, bv, sb);
      const out = add(b, a);
      expectClose(await out.toArray(), broadcastRef(bv, sb, av, sa, BIN.add).out, 1e-4, `f16 add ${sa}`);
      const out2 = mul(a, a);
      expectClose(await out2.toArray(), broadcastRef(av, sa, av, sa, BIN.mul).out, 1e-4, `f16 mul ${sa}`);
      [a, b, out, out2].forEach((t) => t.release());
    }
  });

  it('broadcast mismatch names both shapes', async () => {
    const dev = await getDevice();
    const a = Tensor.zeros(dev, [2, 3]);
    const b = Tensor.zeros(dev, [4, 3]);
    expect(() => sub(a, b)).toThrow(/sub: shapes a \(2x3\) and b \(4x3\) do not broadcast/);
    a.release();
    b.release();
  });

  it('unary ops match float64 references (every variant, f32 and f16 input)', async () => {
    const dev = await getDevice();
    const ops = Object.keys(UNARY_REF) as UnaryOp[];
    for (const variant of elementwiseVariants()) {
      for (const n of [1, 7, 77, 257, 1024]) {
        const raw = randn(n, n + 5, 6);
        for (const op of ops) {
          const xs = op === 'sqrt' || op === 'log' ? raw.map((v) => Math.abs(v) + 1e-3) : op === 'exp' ? raw.map((v) => v * 1.5) : raw;
          const x = Tensor.fromArray(dev, xs, [n]);
          const out = unary(x, op, { variant });
          const ref = Array.from(xs, UNARY_REF[op]!);
          const got = await out.toArray();
          expectClose(got, ref, 1e-4, `${op} ${variant} n=${n}`);
          if (op === 'gelu') expect(maxAbsDiff(got, ref)).toBeLessThan(2e-6 * 6); // erf good to f32 precision
          out.release();
          x.release();
          if (dev.hasF16 && variant === 'naive') {
            const xh = roundToF16(xs);
            const th = Tensor.fromArray(dev, xh, [n], 'f16');
            const oh = unary(th, op);
            expectClose(await oh.toArray(), Array.from(xh, UNARY_REF[op]!), 1e-4, `${op} f16-input n=${n}`);
            oh.release();
            th.release();
          }
        }
      }
    }
  });

  it('gelu erf form is accurate across the whole range', async () => {
    const dev = await getDevice();
    const n = 4001;
    const xs = Float32Array.from({ length: n }, (_, i) => -10 + (20 * i) / (n - 1));
    const x = Tensor.fromArray(dev, xs, [n]);
    const got = await unary(x, 'gelu').toArray();
    for (let i = 0; i < n; i++) {
      const ref = UNARY_REF.gelu!(xs[i]!);
      expect(Math.abs(got[i]! - ref)).toBeLessThanOrEqual(1e-6 * Math.max(1, Math.abs(ref)));
    }
  });

  it('scalar ops: addScalar, mulScalar, affine, powScalar', async () => {
    const dev = await getDevice();
    for (const variant of elementwiseVariants()) {
      for (const n of [1, 7, 77, 256, 257]) {
        const xs = randn(n, n, 3);
        const x = Tensor.fromArray(dev, xs, [n]);
        expectClose(await addScalar(x, 0.25, { variant }).toArray(), Array.from(xs, (v) => v + 0.25), 1e-4, 'addScalar');
        expectClose(await mulScalar(x, -1.5, { variant }).toArray(), Array.from(xs, (v) => v * -1.5), 1e-4, 'mulScalar');
        expectClose(await affine(x, 2, -0.5, { variant }).toArray(), Array.from(xs, (v) => 2 * v - 0.5), 1e-4, 'affine');
        expectClose(await clamp(x, -1, 0.5, { variant }).toArray(), Array.from(xs, (v) => Math.min(Math.max(v, -1), 0.5)), 0, 'clamp');
        for (const p of [2, 3, 0, 1, 0.5, -1]) {
          const src = p === 0.5 ? xs.map(Math.abs) : xs;
          const t = Tensor.fromArray(dev, src, [n]);
          expectClose(await powScalar(t, p, { variant }).toArray(), Array.from(src, (v) => v ** p), 1e-4, `pow ${p}`);
        }
        const pos = xs.map((v) => Math.abs(v) + 0.1);
        const tp = Tensor.fromArray(dev, pos, [n]);
        expectClose(await powScalar(tp, 1.7, { variant }).toArray(), Array.from(pos, (v) => v ** 1.7), 1e-4, 'pow 1.7');
      }
    }
  });

  it('geglu = hidden * gelu(gate)', async () => {
    const dev = await getDevice();
    for (const shape of [[2, 7, 10], [77, 24], [1, 2], [3, 257 * 2]]) {
      const xs = randn(prod(shape), 3, 3);
      const f = shape[shape.length - 1]! / 2;
      const rows = prod(shape) / (2 * f);
      const ref: number[] = [];
      for (let r = 0; r < rows; r++) for (let j = 0; j < f; j++) ref.push(xs[r * 2 * f + j]! * UNARY_REF.gelu!(xs[r * 2 * f + f + j]!));
      const x = Tensor.fromArray(dev, xs, shape);
      const out = geglu(x);
      expect(out.shape).toEqual([...shape.slice(0, -1), f]);
      expectClose(await out.toArray(), ref, 1e-4, `geglu ${shape}`);
      if (dev.hasF16) {
        const xh = roundToF16(xs);
        const refh: number[] = [];
        for (let r = 0; r < rows; r++) for (let j = 0; j < f; j++) refh.push(xh[r * 2 * f + j]! * UNARY_REF.gelu!(xh[r * 2 * f + f + j]!));
        expectClose(await geglu(Tensor.fromArray(dev, xs, shape, 'f16')).toArray(), refh, 1e-4, `geglu f16 ${shape}`);
      }
    }
    expect(() => geglu(Tensor.zeros(dev, [3, 5]))).toThrow(/geglu: last dim of x \(3x5\) must be even/);
  });

  it('cast f32 <-> f16 with odd counts, and copy', async () => {
    const dev = await getDevice();
    for (const n of [1, 7, 77, 257, 1024]) {
      const xs = randn(n, n, 100);
      // Round-to-nearest-even cases: halfway between halves (1 + 2^-11, 1 + 3 * 2^-11), the
      // largest half (65504; 65519 rounds down to it, 65520 in xs[0] overflows), subnormal
      // halves and the values halfway between them, below the smallest one (2^-25 rounds to 0), -0.
      const special = [65519, -65504, 1 + 2 ** -11, 1 + 3 * 2 ** -11, -(1 + 2 ** -11 + 2 ** -20), 6.1e-5, 2 ** -14 - 2 ** -25, 3 * 2 ** -25, -(5 * 2 ** -25), 2 ** -25, 2 ** -26, -0, 2 ** -24, 1e-7];
      special.forEach((v, i) => { if (i + 1 < n) xs[i + 1] = v; });
      xs[0] = 70000; // overflows to inf like torch .half()
      const x = Tensor.fromArray(dev, xs, [n]);
      const c = copy(x);
      expect(Array.from(await c.toArray())).toEqual(Array.from(xs));
      if (!dev.hasF16) continue;
      const h = cast(x, 'f16');
      expect(h.dtype).toBe('f16');
      const bits = await h.toF16Bits();
      const want = Tensor.fromArray(dev, xs, [n], 'f16');
      const wantBits = await want.toF16Bits();
      // bit for bit the host's round-to-nearest-even (shaders/half_bits.wgsl)
      expect(Array.from(bits)).toEqual(Array.from(wantBits));
      expect(bits[0]).toBe(0x7c00);
      const back = cast(h, 'f32');
      expect(back.dtype).toBe('f32');
      const hb = await h.toArray();
      expect(Array.from(await back.toArray())).toEqual(Array.from(hb));
      const rel = Array.from(xs).slice(1);
      expectClose(Array.from(hb).slice(1), rel, 2e-2, 'f16 round trip');
    }
  });

  it('windowed paths (tiny binding limit) give the same results', async () => {
    const dev = await getDevice();
    setWindowLimitForTests(1024);
    let seed = 100;
    for (const variant of elementwiseVariants()) {
      for (const [sa, sb] of [
        [[2, 300, 7], [300, 1]],
        [[1000], [1000]],
        [[3, 257], [1]],
        [[2, 3, 40, 40], [3, 1, 1]],
        [[5, 1, 301], [1, 4, 301]],
      ] as [number[], number[]][]) {
        const av = randn(prod(sa), seed++, 2);
        const bv = randn(prod(sb), seed++, 2);
        const ta = Tensor.fromArray(dev, av, sa);
        const tb = Tensor.fromArray(dev, bv, sb);
        const before = dev.dispatchCount;
        const out = mul(ta, tb, { variant });
        expect(dev.dispatchCount - before).toBeGreaterThan(1); // really split into windows
        expectClose(await out.toArray(), broadcastRef(av, sa, bv, sb, BIN.mul).out, 1e-4, `windowed mul ${variant} ${sa} ${sb}`);
      }
      const xs = randn(1001, 7, 3);
      expectClose(await unary(Tensor.fromArray(dev, xs, [1001]), 'silu', { variant }).toArray(), Array.from(xs, UNARY_REF.silu!), 1e-4, 'windowed silu');
      const x4 = randn(1024 * 3, 8, 3);
      expectClose(await affine(Tensor.fromArray(dev, x4, [3, 1024]), 3, 1, { variant }).toArray(), Array.from(x4, (v) => 3 * v + 1), 1e-4, 'windowed affine');
    }
    const g = randn(9 * 600, 9, 3);
    const gr: number[] = [];
    for (let r = 0; r < 9; r++) for (let j = 0; j < 300; j++) gr.push(g[r * 600 + j]! * UNARY_REF.gelu!(g[r * 600 + 300 + j]!));
    expectClose(await geglu(Tensor.fromArray(dev, g, [9, 600])).toArray(), gr, 1e-4, 'windowed geglu');
    if (dev.hasF16) {
      const cs = randn(2001, 11, 5);
      const h = cast(Tensor.fromArray(dev, cs, [2001]), 'f16');
      const back = await cast(h, 'f32').toArray();
      expectClose(back, cs, 2e-2, 'windowed cast');
      expect(Array.from(back)).toEqual(Array.from(roundToF16(cs)));
      const hs = roundToF16(randn(901, 12, 2));
      const th = Tensor.fromArray(dev, hs, [901], 'f16');
      expectClose(await unary(th, 'neg').toArray(), Array.from(hs, (v) => -v), 1e-6, 'windowed f16 unary');
    }
  });

  it('div by broadcast scalar tensor and add of (B,C,H,W) with (C,1,1)', async () => {
    const dev = await getDevice();
    const x = randn(2 * 320 * 8 * 8, 1);
    const bias = randn(320, 2);
    const out = add(Tensor.fromArray(dev, x, [2, 320, 8, 8]), Tensor.fromArray(dev, bias, [320, 1, 1]));
    expectClose(await out.toArray(), broadcastRef(x, [2, 320, 8, 8], bias, [320, 1, 1], BIN.add).out, 1e-4, 'bias add');
    const d = div(Tensor.fromArray(dev, x, [2, 320, 8, 8]), Tensor.fromArray(dev, [4], [1]));
    expectClose(await d.toArray(), Array.from(x, (v) => v / 4), 1e-4, 'div scalar tensor');
  });
});
