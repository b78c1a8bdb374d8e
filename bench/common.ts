// Shared benchmark helpers: timing of GPU work (median of runs after a warm-up that also
// pays the pipeline compile) and the printed / JSON measurement format.
import { readFileSync, readdirSync } from 'node:fs';
import type { Device } from '../src/tensor/index.js';

export interface KernelMeasurement {
  op: string;
  shape: string;
  dtype: string;
  variant: string;
  ms: number;
  gflops: number;
}

/** The median: the middle value, or the mean of the two middle values of an even count (of
 *  two runs, their mean, not the slower one). */
export function median(a: readonly number[]): number {
  if (a.length === 0) throw new Error('median of no values');
  const s = [...a].sort((x, y) => x - y);
  const h = s.length >> 1;
  return s.length % 2 ? s[h]! : (s[h - 1]! + s[h]!) / 2;
}

/** Median wall time in ms of `run` (which records GPU work), synced after each run. */
export async function timeGpu(dev: Device, run: () => void, opts: { warmup?: number; runs?: number } = {}): Promise<number> {
  const warmup = opts.warmup ?? 1;
  const runs = opts.runs ?? 5;
  for (let i = 0; i < warmup; i++) {
    run();
    await dev.sync();
  }
  const times: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    run();
    await dev.sync();
    times.push(performance.now() - t0);
  }
  return median(times);
}

export function kernelMeasurement(op: string, shape: string, dtype: string, variant: string, ms: number, flops: number): KernelMeasurement {
  return { op, shape, dtype, variant, ms: Number(ms.toFixed(3)), gflops: Number((flops / ms / 1e6).toFixed(2)) };
}

export function printKernel(m: KernelMeasurement, json: boolean): void {
  if (json) console.log(JSON.stringify(m));
  else console.log(`${m.op.padEnd(12)} ${m.shape.padEnd(34)} ${m.dtype.padEnd(4)} ${m.variant.padEnd(12)} ${m.ms.toFixed(2).padStart(9)} ms ${m.gflops.toFixed(1).padStart(8)} GFLOP/s`);
}

/** Seeded values uniform in [-scale, scale) (an LCG: fast enough for 100M-element weights). */
export function rand(n: number, seed: number, scale: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = (s / 4294967296 - 0.5) * 2 * scale;
  }
  return out;
}

/**
 * CPU seconds spent by this process's threads other than the JS main thread (lavapipe's
 * workers), or undefined off Linux. On a machine shared with other jobs, work per worker
 * CPU second x 2 cores estimates what the kernel does on the idle 2-core machine.
 */
export function workerCpuSeconds(): number | undefined {
  try {
    let s = 0;
    for (const tid of readdirSync('/proc/self/task')) {
      if (tid === String(process.pid)) continue;
      const st = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
      const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
      s += (Number(f[11]) + Number(f[12])) / 100;
    }
    return s;
  } catch {
    return undefined;
  }
}

/** Setters of the choices an A/B benchmark compares, by name. */
export type Choices = Record<string, () => void>;

/**
 * Median ms per call under each choice (a setter): `rounds` rounds, each timing `reps` calls
 * of every choice in turn, so that a machine whose speed drifts (this one: 16-34 GFLOP/s for
 * the same matmul within minutes) slows every choice alike. The first call of each choice
 * (its pipeline compiles) is not timed.
 */
export async function alternate(dev: Device, choices: Choices, fn: () => void, reps: number, rounds: number): Promise<Map<string, number>> {
  const times = new Map<string, number[]>();
  for (const set of Object.values(choices)) {
    set();
    fn();
    await dev.sync();
  }
  for (let r = 0; r < rounds; r++) {
    for (const [name, set] of Object.entries(choices)) {
      set();
      const t0 = performance.now();
      for (let i = 0; i < reps; i++) fn();
      await dev.sync();
      times.set(name, [...(times.get(name) ?? []), (performance.now() - t0) / reps]);
    }
  }
  return new Map([...times].map(([k, v]) => [k, median(v)]));
}

/** One line per op of an A/B benchmark: each choice's ms, rate and speed relative to the first. */
export function row(op: string, shape: string, flops: number, t: Map<string, number>, json: boolean, unit: 'TF/s' | 'GFLOP/s' = 'TF/s'): void {
  const tf = (ms: number): number => flops / ms / 1e9;
  if (json) {
    for (const [k, ms] of t) console.log(JSON.stringify({ op, shape, variant: k, ms: Number(ms.toFixed(4)), tflops: Number(tf(ms).toFixed(4)) }));
    return;
  }
  const first = [...t.values()][0]!;
  const rate = (ms: number): string => (unit === 'TF/s' ? tf(ms).toFixed(2).padStart(6) : (tf(ms) * 1000).toFixed(1).padStart(6));
  const cells = [...t].map(([k, ms]) => `${k} ${ms.toFixed(3).padStart(7)} ms ${rate(ms)} ${unit} x${(first / ms).toFixed(2)}`);
  console.log(`${op.padEnd(10)} ${shape.padEnd(30)} ${cells.join(' | ')}`);
}
