// `npm run bench -- record [--dtype f16] [--batch N]`: the host's cost of recording one SD 1.5
// UNet forward (bind groups, uniforms, the kernels' own JS, Dawn's encoding), with submits
// switched off (Device.skipSubmit) so the GPU's time is out of the figure. On a fast GPU this
// is what a forward costs (H100, 2026-11-27: 731 dispatches recorded in 88 ms of a 100 ms
// forward). Bind-group cache on and off (bindCache.enabled), alternated in one process.
// ELBO_KERNELS=gpu records the 'gpu' kernels on any adapter; on a CPU adapter add ELBO_POOL_MB=2048
// ELBO_MAX_BATCH=128 for a GPU's pool and submits (a CPU adapter's own defaults evict buffers every
// forward, so most bind groups miss).
import { Tensor, bindCache, scope, type Device } from '../src/tensor/index.js';
import { UNet2DConditionModel, parseUNetConfig } from '../src/models/unet.js';
import { RandomWeights } from '../src/models/weights.js';
import { SD15_UNET, type ModelBenchOptions } from './models.js';
import { median } from './common.js';

export async function benchRecord(dev: Device, o: ModelBenchOptions, json: boolean): Promise<void> {
  const config = parseUNetConfig(SD15_UNET as Record<string, unknown>, 'SD 1.5 unet config');
  const unet = UNet2DConditionModel.fromWeights(dev, config, new RandomWeights(dev, { matrixDtype: o.dtype }));
  const B = o.batch;
  const sample = Tensor.fromArray(dev, new Float32Array(B * 4 * 64 * 64).fill(0.1), [B, 4, 64, 64]);
  const ctx = Tensor.fromArray(dev, new Float32Array(B * 77 * 768).fill(0.1), [B, 77, 768]);
  await dev.sync();
  const saved = bindCache.enabled;
  dev.skipSubmit = true;
  try {
    const run = (): void => {
      scope(() => {
        unet.forward({ sample, timesteps: [500], encoderHiddenStates: ctx });
      });
      dev.flush();
    };
    // Compiles, JIT warm-up, and the pool and caches settling.
    for (let i = 0; i < 6; i++) run();
    const reps = 7;
    const times = new Map<string, number[]>();
    const misses = new Map<string, number>();
    let dispatches = 0;
    for (let round = 0; round < 3; round++) {
      for (const on of [true, false]) {
        bindCache.enabled = on;
        const k = on ? 'bind cache on' : 'bind cache off';
        const d0 = dev.dispatchCount;
        const m0 = dev.bindGroupMisses;
        for (let i = 0; i < reps; i++) {
          const t0 = performance.now();
          run();
          times.set(k, [...(times.get(k) ?? []), performance.now() - t0]);
        }
        dispatches = (dev.dispatchCount - d0) / reps;
        if (on) misses.set(k, (misses.get(k) ?? 0) + (dev.bindGroupMisses - m0) / reps / 3);
      }
    }
    for (const [k, t] of times) {
      const ms = median(t);
      const m = misses.get(k);
      const miss = m === undefined ? undefined : Math.round(m);
      if (json) console.log(JSON.stringify({ op: 'record unet forward', kernels: dev.kind, dtype: o.dtype, batch: B, variant: k, dispatches, ms: Number(ms.toFixed(2)), ...(miss === undefined ? {} : { bind_group_misses: miss }) }));
      else console.log(`recording one UNet forward (${dev.kind} kernels, ${o.dtype}, batch ${B}, ${dispatches} dispatches), ${k.padEnd(14)}: ${ms.toFixed(1).padStart(6)} ms, ${((1000 * ms) / dispatches).toFixed(1)} us per dispatch${miss === undefined ? '' : `, ${miss} bind-group misses per forward`}`);
    }
    if (!json && dev.hostMemory && (dev.kind === 'cpu' || dev.poolCap < 2 * 2 ** 30 || dev.maxBatch < 128)) {
      // A CPU adapter's defaults evict pooled buffers every forward (new buffers, so new
      // bind groups) and submit every few dispatches: not what a GPU records.
      console.log(`(CPU adapter: a ${Math.round(dev.poolCap / 2 ** 20)} MiB pool and ${dev.maxBatch} dispatches per submit; ELBO_KERNELS=gpu ELBO_POOL_MB=2048 ELBO_MAX_BATCH=128 records as on a GPU)`);
    }
  } finally {
    dev.skipSubmit = false;
    bindCache.enabled = saved;
  }
}
