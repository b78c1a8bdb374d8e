// Matmul and conv2d throughput per variant on the shapes Stable Diffusion's UNet spends
// its time in. `npm run bench -- kernels` prints these; `tsx bench/kernels-matmul.ts
// [--json] [--quick] [filter]` runs them alone.
import { Tensor, type Device } from '../src/tensor/index.js';
import { matmul } from '../src/kernels/matmul.js';
import { conv2d } from '../src/kernels/conv.js';
import { kernelMeasurement, printKernel, timeGpu, type KernelMeasurement } from './common.js';

function rand(n: number, seed: number, scale: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = (s / 4294967296 - 0.5) * 2 * scale;
  }
  return out;
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
        const runs = variant === 'naive' ? 1 : 5;
        const ms = await timeGpu(dev, () => matmul(a, b, { transB: true, variant: variant as 'naive' }).release(), { warmup: 1, runs });
        const m = kernelMeasurement('matmul', `${shape} b^T`, dtype, variant, ms, 2 * M * N * K);
        printKernel(m, json);
        results.push(m);
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
        const runs = variant === 'naive' ? 1 : 5;
        const ms = await timeGpu(dev, () => conv2d(x, w, { bias, padding: 1, variant: variant as 'naive' }).release(), { warmup: 1, runs });
        const m = kernelMeasurement('conv2d', shape, dtype, variant, ms, 2 * Co * Ci * 9 * HW * HW);
        printKernel(m, json);
        results.push(m);
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
