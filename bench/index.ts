// `npm run bench -- <what> [options]`: prints figures and ratios; never pass/fail.
//   kernels                     kernel GFLOP/s at SD 1.5 shapes, naive variant beside each
//   unet [--config sd15|sdxl]   one UNet forward with random weights (64x64 / 128x128 latents)
//   text                        the CLIP-L text encoder
//   vae                         the VAE encoder at 512x512
//   segment                     one whole segmentation of a 512x512 image, two classes
//   ab                          the 'gpu' variant's kernel choices side by side (for a GPU)
//   cpu-ab                      the 'cpu' variant's switches side by side, alternated (lavapipe)
//   record                      the host's cost of recording one UNet forward (submits off)
//   compile --record F | --replay F [--sync] [--what unet|segment]
//                               pipeline compile time: where it goes, and compiling in parallel
// options: --dtype f32|f16  --batch N  --runs N  --json  --profile  --profile-shapes N (the
//          profile plus the N costliest dispatches by op and shapes)  --no-warmup (one timed run
//          that includes pipeline compiles: for the full-size SDXL UNet on a CPU adapter)
//          --set KEY=VALUE (segment: a config override, e.g. --set 'elbo_timesteps=[[1,999,500]]'
//          for a short run with the same memory pattern)
import { parseArgs } from 'node:util';
import { Device } from '../src/tensor/index.js';
import type { KernelMeasurement } from './common.js';
import { benchText, benchUnet, type ModelBenchOptions, type ModelMeasurement } from './models.js';

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      dtype: { type: 'string', default: 'f32' },
      batch: { type: 'string', default: '1' },
      runs: { type: 'string' },
      json: { type: 'boolean', default: false },
      profile: { type: 'boolean', default: false },
      'profile-shapes': { type: 'string' },
      config: { type: 'string', default: 'sd15' },
      'no-warmup': { type: 'boolean', default: false },
      record: { type: 'string' },
      replay: { type: 'string' },
      sync: { type: 'boolean', default: false },
      what: { type: 'string', default: 'unet' },
      set: { type: 'string', multiple: true },
    },
  });
  const what = positionals[0] ?? 'kernels';
  const dev = await Device.get();
  const json = values.json!;
  if (!json) console.error(`adapter: ${dev.adapter.description || dev.adapter.device} (${dev.kind} kernels), f16 ${dev.hasF16 ? 'yes' : 'no'}`);
  if (what === 'kernels') {
    const all: KernelMeasurement[] = [];
    const mm = await import('./kernels-matmul.js').catch(() => null);
    if (mm) all.push(...(await mm.benchMatmulConv(dev, json)));
    const at = await import('./kernels-attention.js').catch(() => null);
    if (at) all.push(...(await at.benchAttentionNorm(dev, json)));
    if (!json) printRatios(all);
  } else if (what === 'ab') {
    const { benchGpuAb } = await import('./gpu-ab.js');
    await benchGpuAb(dev, json);
  } else if (what === 'cpu-ab') {
    const { benchCpuAb } = await import('./cpu-ab.js');
    await benchCpuAb(dev, json);
  } else {
    const o: ModelBenchOptions = {
      dtype: values.dtype === 'f16' ? 'f16' : 'f32',
      batch: Number(values.batch),
      runs: Number(values.runs ?? (what === 'text' ? 5 : what === 'segment' ? 1 : 2)),
      config: values.config === 'sdxl' ? 'sdxl' : 'sd15',
      profile: values.profile! || values['profile-shapes'] !== undefined,
      profileShapes: Number(values['profile-shapes'] ?? 0),
      warmup: !values['no-warmup'],
      overrides: values.set ?? [],
    };
    let m: ModelMeasurement;
    if (what === 'compile') {
      const { benchCompile } = await import('./compile.js');
      await benchCompile(dev, o, { record: values.record, replay: values.replay, sync: values.sync!, what: values.what! });
      dev.destroy();
      return;
    }
    if (what === 'record') {
      const { benchRecord } = await import('./record.js');
      await benchRecord(dev, o, json);
      dev.destroy();
      return;
    }
    if (what === 'unet') m = await benchUnet(dev, o);
    else if (what === 'text') m = await benchText(dev, o);
    else if (what === 'vae' || what === 'segment') {
      const mod = await import('./segment.js');
      m = what === 'vae' ? await mod.benchVae(dev, o) : await mod.benchSegment(dev, o);
    } else throw new Error(`bench: unknown benchmark "${what}" (kernels, unet, text, vae, segment, ab, cpu-ab, compile, record)`);
    const runs = m.run_seconds && m.run_seconds.length > 1 ? m.run_seconds : undefined;
    if (json) console.log(JSON.stringify({ ...m, seconds: round(m.seconds, 3), tflops: round(m.tflops, 4), peak_mb: round(m.peak_mb, 1), rss_mb: round(m.rss_mb, 1), peak_rss_mb: round(m.peak_rss_mb, 1), run_seconds: m.run_seconds?.map((x) => round(x, 3)) }));
    else {
      console.log(
        `${m.model} ${m.dtype} batch ${m.batch}: ${m.seconds.toFixed(2)} s` +
          (runs ? ` (median of ${runs.length} runs, ${Math.min(...runs).toFixed(2)}-${Math.max(...runs).toFixed(2)} s)` : '') +
          `, ${(m.tflops * 1000).toFixed(1)} GFLOP/s, ` +
          `peak GPU (live engine bytes) ${m.peak_mb.toFixed(0)} MB, process RSS ${m.rss_mb.toFixed(0)} MB (peak ${m.peak_rss_mb.toFixed(0)} MB)` +
          (m.load_seconds !== undefined ? `, weights built in ${m.load_seconds.toFixed(1)} s` : ''),
      );
    }
  }
  dev.destroy();
}

function round(x: number, d: number): number {
  return Number(x.toFixed(d));
}

/** Prints, per op and shape, the speed-up of the best variant over the naive one. */
function printRatios(all: KernelMeasurement[]): void {
  const groups = new Map<string, KernelMeasurement[]>();
  for (const m of all) {
    const k = `${m.op} ${m.shape} ${m.dtype}`;
    groups.set(k, [...(groups.get(k) ?? []), m]);
  }
  console.log('\nspeed-up over the naive variant:');
  for (const [k, ms] of groups) {
    const naive = ms.find((m) => m.variant === 'naive');
    const best = ms.filter((m) => m.variant !== 'naive').sort((a, b) => a.ms - b.ms)[0];
    if (naive && best) console.log(`  ${k.padEnd(56)} ${best.variant.padEnd(10)} x${(naive.ms / best.ms).toFixed(1)}`);
  }
}

await main();
