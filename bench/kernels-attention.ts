// Attention and normalisation timings at SD 1.5 shapes, the naive variant beside each.
// `npm run bench -- kernels` prints these; `tsx bench/kernels-attention.ts [--json]
// [--quick] [filter]` runs them alone (--quick skips the naive variant).
import { Tensor, type Device } from '../src/tensor/index.js';
import { attention } from '../src/kernels/attention.js';
import { groupNorm, layerNorm } from '../src/kernels/norm.js';
import { kernelMeasurement, printKernel, rand, timeGpu, workerCpuSeconds, type KernelMeasurement } from './common.js';

export async function benchAttentionNorm(dev: Device, json: boolean, opts: { filter?: string; skipNaive?: boolean } = {}): Promise<KernelMeasurement[]> {
  const results: KernelMeasurement[] = [];
  const variants = opts.skipNaive ? [dev.kind] : ['naive', dev.kind];
  const want = (s: string): boolean => !opts.filter || s.includes(opts.filter);
  const measure = async (op: string, shape: string, variant: string, flops: number, runs: number, run: () => void): Promise<void> => {
    // Warm-up (pays the pipeline compile) outside the CPU-time window; CPU time is counted in
    // 10 ms ticks, hence many runs of the millisecond kernels.
    run();
    await dev.sync();
    const c0 = workerCpuSeconds();
    const ms = await timeGpu(dev, run, { warmup: 0, runs });
    const c1 = workerCpuSeconds();
    const m = kernelMeasurement(op, shape, 'f32', variant, ms, flops);
    printKernel(m, json);
    results.push(m);
    if (!json && c0 !== undefined && c1 !== undefined && c1 > c0) {
      const idleMs = (((c1 - c0) / 2) * 1000) / runs;
      console.log(`${''.padEnd(12)} ${''.padEnd(34)} ${''.padEnd(4)} ${''.padEnd(12)} by worker CPU time: ${idleMs.toFixed(2).padStart(9)} ms ${(flops / idleMs / 1e6).toFixed(1).padStart(8)} GFLOP/s on 2 idle cores`);
    }
  };
  // The naive kernels take tens of seconds at 4096 tokens: one timed run after the warm-up.
  const runsOf = (variant: string, big: boolean): number => (variant === 'naive' ? 1 : big ? 3 : 5);

  const H = 8;
  const d = 40;
  // Self-attention at SD 1.5's 64x64 latent (4096 tokens) and cross-attention to 77 tokens.
  for (const [Nq, Nk, probs] of [[4096, 4096, false], [4096, 4096, true], [4096, 77, false], [4096, 77, true]] as const) {
    const shape = `q(1x${Nq}x${H * d}) k(1x${Nk}x${H * d}) H${H}${probs ? ' +probs' : ''}`;
    if (!want(`attention ${shape}`)) continue;
    const q = Tensor.fromArray(dev, rand(Nq * H * d, 1, 1), [1, Nq, H * d]);
    const k = Tensor.fromArray(dev, rand(Nk * H * d, 2, 1), [1, Nk, H * d]);
    const v = Tensor.fromArray(dev, rand(Nk * H * d, 3, 1), [1, Nk, H * d]);
    const probsOut = probs ? Tensor.zeros(dev, [Nq, Nk]) : undefined;
    for (const variant of variants) {
      // QK^T and PV: 4 * Nq * Nk * d * H (the probs pass's extra QK^T is not counted).
      const run = (): void => attention(q, k, v, H, { probsOut, variant: variant as 'naive' }).release();
      await measure('attention', shape, variant, 4 * Nq * Nk * d * H, runsOf(variant, Nk > 1000), run);
    }
    for (const t of [q, k, v, probsOut]) t?.release();
  }

  // GroupNorm alone (the shape) and with the SiLU the UNet's resnets fuse into it.
  for (const silu of [false, true]) {
    const [C, HW, G] = [320, 64, 32];
    const shape = `(1x${C}x${HW}x${HW}) G${G}${silu ? ' +silu' : ''}`;
    if (want(`groupNorm ${shape}`)) {
      const x = Tensor.fromArray(dev, rand(C * HW * HW, 4, 2), [1, C, HW, HW]);
      const g = Tensor.fromArray(dev, rand(C, 5, 1), [C]);
      const b = Tensor.fromArray(dev, rand(C, 6, 1), [C]);
      for (const variant of variants) {
        // ~6 flops per element (statistics, affine; SiLU 2 more), for the ratio only: read the ms.
        const run = (): void => groupNorm(x, G, g, b, 1e-5, { silu, variant: variant as 'naive' }).release();
        await measure('groupNorm', shape, variant, (silu ? 8 : 6) * C * HW * HW, variant === 'naive' ? 9 : 60, run);
      }
      for (const t of [x, g, b]) t.release();
    }
  }
  {
    const [M, C] = [4096, 320];
    const shape = `(${M}x${C})`;
    if (want(`layerNorm ${shape}`)) {
      const x = Tensor.fromArray(dev, rand(M * C, 7, 2), [M, C]);
      const g = Tensor.fromArray(dev, rand(C, 8, 1), [C]);
      const b = Tensor.fromArray(dev, rand(C, 9, 1), [C]);
      for (const variant of variants) {
        const run = (): void => layerNorm(x, g, b, 1e-5, { variant: variant as 'naive' }).release();
        await measure('layerNorm', shape, variant, 7 * M * C, variant === 'naive' ? 9 : 60, run);
      }
      for (const t of [x, g, b]) t.release();
    }
  }
  return results;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { Device } = await import('../src/tensor/index.js');
  const dev = await Device.get();
  const args = process.argv.slice(2);
  const json = args.includes('--json');
  const filter = args.find((a) => !a.startsWith('--'));
  await benchAttentionNorm(dev, json, { filter, skipNaive: args.includes('--quick') });
  dev.destroy();
}
