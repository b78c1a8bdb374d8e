// Full-size model benchmarks with random weights (no checkpoint needed): the SD 1.5 UNet
// at 64x64 latents, the VAE encoder at 512x512, the CLIP-L text encoder, and one whole
// segmentation of a 512x512 image with two classes at the reference's timesteps.
import { readFileSync, writeFileSync } from 'node:fs';
import { Device, Tensor, scope } from '../src/tensor/index.js';
import { ClipTextModel, parseClipTextConfig } from '../src/models/clip.js';
import { UNet2DConditionModel, parseUNetConfig, type UNetConfig } from '../src/models/unet.js';
import { RandomWeights } from '../src/models/weights.js';
import { median } from './common.js';

export interface ModelMeasurement {
  model: string;
  dtype: string;
  batch: number;
  seconds: number;
  tflops: number;
  peak_mb: number;
  /** Process RSS at the end, and its peak over the process's life so far (weights included). */
  rss_mb: number;
  peak_rss_mb: number;
  load_seconds?: number;
  /** Each timed run's seconds, in order (seconds is their median): this machine varies. */
  run_seconds?: number[];
  /** segment: the weights as loaded, and the memory budget (weights + 1.5 GiB). */
  weights_mb?: number;
  budget_mb?: number;
}

/** SD 1.5's published unet/config.json (the keys it carries). */
export const SD15_UNET = {
  sample_size: 64,
  in_channels: 4,
  out_channels: 4,
  down_block_types: ['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D'],
  up_block_types: ['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D'],
  block_out_channels: [320, 640, 1280, 1280],
  layers_per_block: 2,
  attention_head_dim: 8,
  cross_attention_dim: 768,
  norm_num_groups: 32,
};

/** SDXL base's unet/config.json (the keys that shape the network). */
export const SDXL_UNET = {
  sample_size: 128,
  in_channels: 4,
  out_channels: 4,
  down_block_types: ['DownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D'],
  up_block_types: ['CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'UpBlock2D'],
  block_out_channels: [320, 640, 1280],
  layers_per_block: 2,
  attention_head_dim: [5, 10, 20],
  transformer_layers_per_block: [1, 2, 10],
  cross_attention_dim: 2048,
  use_linear_projection: true,
  addition_embed_type: 'text_time',
  addition_time_embed_dim: 256,
  projection_class_embeddings_input_dim: 2816,
  norm_num_groups: 32,
};

/** CLIP ViT-L/14 text tower (SD 1.x text encoder). */
export const CLIP_L_TEXT = { vocab_size: 49408, hidden_size: 768, intermediate_size: 3072, num_hidden_layers: 12, num_attention_heads: 12, max_position_embeddings: 77, hidden_act: 'quick_gelu' };

/**
 * The process's RSS now and its peak (in MiB): the kernel's high-water mark VmHWM on Linux,
 * which resetPeakRss() can restart, else getrusage's maxrss (since the process began).
 */
export function rss(): { rss_mb: number; peak_rss_mb: number } {
  return { rss_mb: process.memoryUsage().rss / 2 ** 20, peak_rss_mb: hwmKb() / 1024 };
}

function hwmKb(): number {
  try {
    const m = /^VmHWM:\s+(\d+) kB/m.exec(readFileSync('/proc/self/status', 'utf8'));
    if (m) return Number(m[1]);
  } catch {
    // not Linux
  }
  return process.resourceUsage().maxRSS;
}

/**
 * Restarts the RSS high-water mark (Linux: `5` to /proc/self/clear_refs), so that a
 * measurement's peak leaves out what came before it (building random weights stages them in
 * host memory, which loading a checkpoint does not). False where the system has no such reset.
 */
export function resetPeakRss(): boolean {
  try {
    writeFileSync('/proc/self/clear_refs', '5');
    return true;
  } catch {
    return false;
  }
}

/** FLOPs of one UNet forward per batch item, counted from the config (matmuls, convs, attention). */
export function unetFlops(c: UNetConfig, side: number, ctxLen = 77): number {
  let f = 0;
  const conv = (ci: number, co: number, k: number, hw: number): number => 2 * ci * co * k * k * hw;
  const resnet = (ci: number, co: number, hw: number): number => conv(ci, co, 3, hw) + conv(co, co, 3, hw) + (ci !== co ? conv(ci, co, 1, hw) : 0);
  const transformer = (C: number, hw: number, depth: number): number => {
    const lin = (i: number, o: number, n: number): number => 2 * i * o * n;
    let t = 2 * lin(C, C, hw); // proj_in / proj_out
    for (let d = 0; d < depth; d++) {
      t += 4 * lin(C, C, hw) + 4 * hw * hw * C; // attn1: q k v o + QK^T, PV
      t += 2 * lin(C, C, hw) + 2 * lin(c.crossAttentionDim, C, ctxLen) + 4 * hw * ctxLen * C; // attn2
      t += lin(C, 8 * C, hw) + lin(4 * C, C, hw); // GEGLU FF
    }
    return t;
  };
  const ch = c.blockOutChannels;
  let s = side;
  f += conv(c.inChannels, ch[0]!, 3, s * s);
  let prev = ch[0]!;
  const skips: number[] = [prev];
  ch.forEach((co, i) => {
    for (let j = 0; j < c.layersPerBlock; j++) {
      f += resnet(j === 0 ? prev : co, co, s * s);
      if (c.downBlockTypes[i] === 'CrossAttnDownBlock2D') f += transformer(co, s * s, c.transformerLayers[i]!);
      skips.push(co);
    }
    prev = co;
    if (i < ch.length - 1) {
      f += conv(co, co, 3, (s / 2) * (s / 2));
      s /= 2;
      skips.push(co);
    }
  });
  const last = ch[ch.length - 1]!;
  f += 2 * resnet(last, last, s * s) + transformer(last, s * s, c.transformerLayers[c.transformerLayers.length - 1]!);
  const rev = [...ch].reverse();
  rev.forEach((co, i) => {
    for (let j = 0; j < c.layersPerBlock + 1; j++) {
      f += resnet(prev + skips.pop()!, co, s * s);
      prev = co;
      if (c.upBlockTypes[i] === 'CrossAttnUpBlock2D') f += transformer(co, s * s, [...c.transformerLayers].reverse()[i]!);
    }
    if (i < ch.length - 1) {
      s *= 2;
      f += conv(co, co, 3, s * s);
    }
  });
  f += conv(ch[0]!, c.outChannels, 3, s * s);
  return f;
}

/**
 * Runs `run` once under GPU timestamps (where the adapter has them) and prints time per
 * kernel family; with `shapes`, also the `shapes` costliest dispatch labels (op and shapes).
 */
export async function printProfile(dev: Device, what: string, run: () => void, shapes = 0): Promise<void> {
  if (!dev.features.timestamp) {
    console.log(`profile: this adapter lacks timestamp-query; no profile of ${what}`);
    return;
  }
  dev.startProfile({ byLabel: shapes > 0 });
  run();
  const prof = await dev.stopProfile();
  const byFamily = new Map<string, { ms: number; count: number }>();
  for (const [key, v] of prof) {
    const fam = shapes > 0 ? key.slice(0, key.indexOf(': ')) : key;
    const e = byFamily.get(fam) ?? { ms: 0, count: 0 };
    byFamily.set(fam, { ms: e.ms + v.ms, count: e.count + v.count });
  }
  const total = [...byFamily.values()].reduce((a, b) => a + b.ms, 0);
  const line = (name: string, v: { ms: number; count: number }, width: number): string =>
    `  ${name.padEnd(width)} ${v.ms.toFixed(1).padStart(9)} ms ${((100 * v.ms) / total).toFixed(1).padStart(5)}%  ${String(v.count).padStart(5)} dispatches`;
  console.log(`profile of ${what} (GPU timestamps, ${total.toFixed(0)} ms in kernels):`);
  for (const [fam, v] of [...byFamily.entries()].sort((a, b) => b[1].ms - a[1].ms)) console.log(line(fam, v, 16));
  if (shapes > 0) {
    console.log(`costliest ${shapes} ops by label:`);
    for (const [key, v] of [...prof.entries()].sort((a, b) => b[1].ms - a[1].ms).slice(0, shapes)) console.log(line(key, v, 72));
  }
}

/** Seconds of each of `runs` runs, and their median. */
export async function timeIt(dev: Device, runs: number, fn: () => void): Promise<{ seconds: number; run_seconds: number[]; record_seconds: number }> {
  const times: number[] = [];
  const records: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    fn();
    // JS time spent recording (bind groups, uniforms, submits every few hundred dispatches):
    // when it nears the run's time, the host and not the GPU sets the pace.
    records.push((performance.now() - t0) / 1000);
    await dev.sync();
    times.push((performance.now() - t0) / 1000);
  }
  return { seconds: median(times), run_seconds: times, record_seconds: median(records) };
}

export interface ModelBenchOptions {
  dtype: 'f32' | 'f16';
  batch: number;
  runs: number;
  config: 'sd15' | 'sdxl';
  profile: boolean;
  /** With profile: also list this many costliest dispatch labels. */
  profileShapes?: number;
  /** Run one untimed forward first (pipeline compiles); off for very long single runs. */
  warmup: boolean;
  /** segment: config overrides KEY=VALUE (e.g. fewer timesteps for a quick memory check). */
  overrides?: string[];
}

export async function benchUnet(dev: Device, o: ModelBenchOptions): Promise<ModelMeasurement> {
  const raw = o.config === 'sdxl' ? SDXL_UNET : SD15_UNET;
  const config = parseUNetConfig(raw as Record<string, unknown>, `${o.config} unet config`);
  const t0 = performance.now();
  const w = new RandomWeights(dev, { matrixDtype: o.dtype });
  const unet = UNet2DConditionModel.fromWeights(dev, config, w);
  await dev.sync();
  const loadSeconds = (performance.now() - t0) / 1000;
  const side = config.sampleSize;
  const B = o.batch;
  const sample = Tensor.fromArray(dev, new Float32Array(B * 4 * side * side).map((_, i) => Math.sin(i)), [B, 4, side, side]);
  const ctx = Tensor.fromArray(dev, new Float32Array(B * 77 * config.crossAttentionDim).map((_, i) => Math.cos(i) * 0.5), [B, 77, config.crossAttentionDim]);
  const extra =
    o.config === 'sdxl'
      ? { textEmbeds: Tensor.fromArray(dev, new Float32Array(B * 1280).fill(0.1), [B, 1280]), timeIds: [[1024, 1024, 0, 0, 1024, 1024]] }
      : {};
  const run = (): void => {
    scope(() => {
      unet.forward({ sample, timesteps: [500], encoderHiddenStates: ctx, ...extra });
    });
  };
  if (o.warmup) {
    const tw = performance.now();
    run(); // warm-up: pipeline compiles
    await dev.sync();
    if (!process.argv.includes('--json')) console.error(`first forward (pipeline compiles included): ${((performance.now() - tw) / 1000).toFixed(2)} s; ${dev.compileSummary()}`);
  }
  dev.resetPeak();
  if (o.profile) await printProfile(dev, 'one UNet forward', run, o.profileShapes ?? 0);
  const d0 = dev.dispatchCount;
  const { seconds, run_seconds, record_seconds } = await timeIt(dev, o.runs, run);
  if (!process.argv.includes('--json')) {
    console.error(`one forward: ${Math.round((dev.dispatchCount - d0) / o.runs)} dispatches, recorded by JS in ${(record_seconds * 1000).toFixed(1)} ms of its ${(seconds * 1000).toFixed(1)} ms (medians)`);
  }
  const flops = unetFlops(config, side) * B;
  return { model: o.config === 'sdxl' ? 'unet-sdxl' : 'unet', dtype: w.matrixDtype, batch: B, seconds, tflops: flops / seconds / 1e12, peak_mb: dev.peakLiveBytes / 2 ** 20, ...rss(), load_seconds: loadSeconds, run_seconds };
}

export async function benchText(dev: Device, o: ModelBenchOptions): Promise<ModelMeasurement> {
  const config = parseClipTextConfig(CLIP_L_TEXT, 'CLIP-L text config');
  const w = new RandomWeights(dev, { matrixDtype: o.dtype });
  const model = ClipTextModel.fromWeights(dev, config, w, 'text_model.', 'text_projection.weight');
  const ids = Array.from({ length: o.batch }, () => [49406, ...Array.from({ length: 20 }, (_, i) => 320 + i), ...Array(56).fill(49407)]);
  const run = (): void => {
    scope(() => {
      model.forward(ids);
    });
  };
  run();
  await dev.sync();
  dev.resetPeak();
  const { seconds, run_seconds } = await timeIt(dev, o.runs, run);
  const H = 768;
  const flops = o.batch * 12 * (2 * 77 * (4 * H * H + 2 * H * 3072) + 4 * 77 * 77 * H);
  return { model: 'text', dtype: w.matrixDtype, batch: o.batch, seconds, tflops: flops / seconds / 1e12, peak_mb: dev.peakLiveBytes / 2 ** 20, ...rss(), run_seconds };
}
