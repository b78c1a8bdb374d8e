// Matmul and conv2d throughput per variant on the shapes Stable Diffusion's UNet spends
// its time in. `npm run bench -- kernels` prints these; `tsx bench/kernels-matmul.ts
// [--json] [--quick] [filter]` runs them alone.
import { Tensor, type Device } from '../src/tensor/index.js';
import { matmul } from '../src/kernels/matmul.js';
import { conv2d } from '../src/kernels/conv.js';
import { kernelMeasurement, printKernel, rand, timeGpu, workerCpuSeconds, type KernelMeasurement } from './common.js';

async function measure(dev: Device, json: boolean, op: string, shape: string, dtype: string, variant: string, flops: number, run: () => void): Promise<KernelMeasurement> {
  const runs = variant === 'naive' ? 1 : 5;
  // Warm-up (pays the pipeline compile) outside the CPU-time window.
  run();
  await dev.sync();
  const c0 = workerCpuSeconds();
  const ms = await timeGpu(dev, run, { warmup: 0, runs });
  const c1 = workerCpuSeconds();
  const m = kernelMeasurement(op, shape, dtype, variant, ms, flops);
  printKernel(m, json);
  if (!json && c0 !== undefined && c1 !== undefined && c1 > c0) {
    const idle = (flops * runs) / ((c1 - c0) / 2) / 1e9;
    console.log(`${''.padEnd(12)} ${''.padEnd(34)} ${''.padEnd(4)} ${''.padEnd(12)} ${'by worker CPU time:'.padStart(21)} ${idle.toFixed(1).padStart(5)} GFLOP/s on 2 idle cores`);
  }
  return m;
}

const MATMUL_SHAPES: [number, number, number][] = [
  [4096, 320, 320],
  [4096, 320, 1280],
  [4096, 1280, 320],
];
const CONV_SHAPES: [number, number, number][] = [
  [320, 320, 64],
  [640, 640, 32],
];

export async function benchMatmulConv(dev: Device, json: boolean, opts: { filter?: string; skipNaive?: boolean } = {}): Promise<KernelMeasurement[]> {
  const results: KernelMeasurement[] = [];
  const variants = opts.skipNaive ? [dev.kind] : ['naive', dev.kind];
  const want = (s: string): boolean => !opts.filter || s.includes(opts.filter);
  for (const [M, K, N] of MATMUL_SHAPES) {
    for (const dtype of dev.hasF16 ? (['f32', 'f16'] as const) : (['f32'] as const)) {
      const shape = `(${M}x${K})@(${K}x${N})`;
      if (!want(`matmul ${shape} ${dtype}`)) continue;
      const a = Tensor.fromArray(dev, rand(M * K, 1, 1), [M, K]);
      // Weights in the nn.Linear layout (N, K): the layout every UNet projection uses.
      const b = Tensor.fromArray(dev, rand(N * K, 2, 0.05), [N, K], dtype);
      for (const variant of variants) {
        const run = (): void => matmul(a, b, { transB: true, variant: variant as 'naive' }).release();
        results.push(await measure(dev, json, 'matmul', `${shape} b^T`, dtype, variant, 2 * M * N * K, run));
      }
      a.release();
      b.release();
    }
  }
  for (const [Ci, Co, HW] of CONV_SHAPES) {
    for (const dtype of dev.hasF16 ? (['f32', 'f16'] as const) : (['f32'] as const)) {
      const shape = `3x3 ${Ci}->${Co} at ${HW}x${HW}`;
      if (!want(`conv2d ${shape} ${dtype}`)) continue;
      const x = Tensor.fromArray(dev, rand(Ci * HW * HW, 3, 1), [1, Ci, HW, HW]);
      const w = Tensor.fromArray(dev, rand(Co * Ci * 9, 4, 0.05), [Co, Ci, 3, 3], dtype);
      const bias = Tensor.fromArray(dev, rand(Co, 5, 0.1), [Co]);
      for (const variant of variants) {
        const run = (): void => conv2d(x, w, { bias, padding: 1, variant: variant as 'naive' }).release();
        results.push(await measure(dev, json, 'conv2d', shape, dtype, variant, 2 * Co * Ci * 9 * HW * HW, run));
      }
      x.release();
      w.release();
      bias.release();
    }
  }
  return results;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { Device } = await import('../src/tensor/index.js');
  const dev = await Device.get();
  const args = process.argv.slice(2);
  await benchMatmulConv(dev, args.includes('--json'), { skipNaive: args.includes('--quick'), filter: args.find((a) => !a.startsWith('--')) });
  dev.destroy();
}
