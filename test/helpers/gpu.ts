// Shared test helpers: the device, seeded random data and tolerance checks.
import { Device } from '../../src/tensor/index.js';

export function getDevice(): Promise<Device> {
  return Device.get();
}

/** Mulberry32: seeded uniform [0, 1). */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Seeded values uniform in [-scale, scale). */
export function randn(n: number, seed: number, scale = 1): Float32Array {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (r() * 2 - 1) * scale;
  return out;
}

export function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]!));
  return m;
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i]! - b[i]!);
    if (!(d <= m)) m = Number.isNaN(d) ? Infinity : d;
  }
  return m;
}

/**
 * Asserts max|a-b| <= rtol * max(1, max|ref|) (the engine's f32 kernel tolerance is
 * rtol = 1e-4; f16 paths use 2e-2).
 */
export function expectClose(got: ArrayLike<number>, ref: ArrayLike<number>, rtol: number, what = 'values'): void {
  const err = maxAbsDiff(got, ref);
  const bound = rtol * Math.max(1, maxAbs(ref));
  if (!(err <= bound)) throw new Error(`${what}: max abs error ${err} > ${bound} (rtol ${rtol}, max|ref| ${maxAbs(ref)})`);
}
