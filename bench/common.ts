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
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)]!;
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
