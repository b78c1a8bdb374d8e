// Full-size VAE encoder and whole-segmentation benchmarks with random weights.
import { fileURLToPath } from 'node:url';
import { Device, Tensor, scope } from '../src/tensor/index.js';
import { defaultConfig, applyOverrides, parseTimesteps } from '../src/elbo/config.js';
import { segmentImage } from '../src/elbo/segment.js';
import { ClipTextModel, parseClipTextConfig } from '../src/models/clip.js';
import { StableDiffusionPipeline } from '../src/models/pipeline.js';
import { DDIMSchedule } from '../src/models/scheduler.js';
import { CLIPTokenizer } from '../src/models/tokenizer.js';
import { UNet2DConditionModel, parseUNetConfig } from '../src/models/unet.js';
import { AutoencoderKL, parseVaeConfig } from '../src/models/vae.js';
import { RandomWeights } from '../src/models/weights.js';
import { CLIP_L_TEXT, SD15_UNET, printProfile, resetPeakRss, rss, timeIt, unetFlops, type ModelBenchOptions, type ModelMeasurement } from './models.js';

/** SD 1.5's vae/config.json. */
export const SD15_VAE = {
  block_out_channels: [128, 256, 512, 512],
  down_block_types: ['DownEncoderBlock2D', 'DownEncoderBlock2D', 'DownEncoderBlock2D', 'DownEncoderBlock2D'],
  up_block_types: ['UpDecoderBlock2D', 'UpDecoderBlock2D', 'UpDecoderBlock2D', 'UpDecoderBlock2D'],
  in_channels: 3,
  out_channels: 3,
  latent_channels: 4,
  layers_per_block: 2,
  norm_num_groups: 32,
  sample_size: 512,
};

/** Counted FLOPs of the VAE encoder (convs + mid attention) at side S. */
function vaeEncoderFlops(S: number): number {
  const ch = SD15_VAE.block_out_channels;
  const conv = (ci: number, co: number, k: number, hw: number): number => 2 * ci * co * k * k * hw;
  let f = conv(3, ch[0]!, 3, S * S);
  let s = S;
  let prev = ch[0]!;
  ch.forEach((co, i) => {
    for (let j = 0; j < 2; j++) {
      const ci = j === 0 ? prev : co;
      f += conv(ci, co, 3, s * s) + conv(co, co, 3, s * s) + (ci !== co ? conv(ci, co, 1, s * s) : 0);
    }
    prev = co;
    if (i < ch.length - 1) {
      s /= 2;
      f += conv(co, co, 3, s * s);
    }
  });
  const c = ch[ch.length - 1]!;
  const hw = s * s;
  f += 2 * (conv(c, c, 3, hw) * 2) + 4 * 2 * c * c * hw + 4 * hw * hw * c;
  f += conv(c, 8, 3, hw) + conv(8, 8, 1, hw);
  return f;
}

/** The SD 1.5 VAE with random weights, without the decoder (as `segment` loads it: it only encodes). */
function randomVae(dev: Device): AutoencoderKL {
  const config = parseVaeConfig(SD15_VAE, 'SD 1.5 vae config');
  return AutoencoderKL.fromWeights(dev, config, new RandomWeights(dev, { matrixDtype: 'f32' }), { decoder: false });
}

export async function benchVae(dev: Device, o: ModelBenchOptions): Promise<ModelMeasurement> {
  const vae = randomVae(dev);
  const S = 512;
  const x = Tensor.fromArray(dev, new Float32Array(o.batch * 3 * S * S).map((_, i) => Math.sin(i * 0.001)), [o.batch, 3, S, S]);
  const run = (): void => {
    scope(() => {
      vae.encode(x);
    });
  };
  run();
  await dev.sync();
  dev.resetPeak();
  if (o.profile) await printProfile(dev, 'one VAE encode', run, o.profileShapes ?? 0);
  const { seconds, run_seconds } = await timeIt(dev, o.runs, run);
  return { model: 'vae-encoder', dtype: 'f32', batch: o.batch, seconds, tflops: (vaeEncoderFlops(S) * o.batch) / seconds / 1e12, peak_mb: dev.peakLiveBytes / 2 ** 20, ...rss(), run_seconds };
}

/** One whole segmentation of a 512x512 image with two classes, reference timesteps (20 + 10). */
export async function benchSegment(dev: Device, o: ModelBenchOptions): Promise<ModelMeasurement> {
  const tokDir = fileURLToPath(new URL('../weights/sd15-tiny/tokenizer', import.meta.url));
  const schedDir = fileURLToPath(new URL('../weights/sd15-tiny/scheduler/scheduler_config.json', import.meta.url));
  const { readJsonConfig } = await import('../src/io/modelFolder.js');
  const w = new RandomWeights(dev, { matrixDtype: o.dtype });
  // As a loaded pipeline, the text encoder can be freed once the prompts are embedded (segment
  // does so on a CPU adapter) and made again: here with fresh random weights.
  const clipL = (src: RandomWeights): ClipTextModel => ClipTextModel.fromWeights(dev, parseClipTextConfig(CLIP_L_TEXT, 'CLIP-L'), src, 'text_model.', 'text_projection.weight');
  const pipe = StableDiffusionPipeline.fromParts(dev, {
    tokenizer: CLIPTokenizer.fromFolder(tokDir),
    textEncoder: clipL(w),
    loadTextEncoder: async () => clipL(new RandomWeights(dev, { matrixDtype: o.dtype })),
    unet: UNet2DConditionModel.fromWeights(dev, parseUNetConfig(SD15_UNET, 'SD 1.5 unet'), w),
    vae: randomVae(dev),
    schedule: DDIMSchedule.fromConfig(readJsonConfig(schedDir), schedDir),
  });
  const S = 512;
  const img = { width: S, height: S, data: new Uint8Array(S * S * 3).map((_, i) => (i * 7) % 256) };
  const config = applyOverrides(defaultConfig(), o.overrides ?? []);
  const nElbo = parseTimesteps(config.elbo_timesteps, config.seed).length;
  const nCollect = parseTimesteps(config.collect_timesteps, config.seed + 1).length;
  // --runs N segments the image N times in one process and reports the last: the first
  // includes every pipeline compile (seconds on a GPU with a cold driver cache).
  // JS time spent recording UNet forwards (per run), beside the run's time: on a fast GPU
  // the host's share of each step shows here.
  const unet = pipe.unet;
  const forward = unet.forward.bind(unet);
  let recordMs = 0;
  let forwards = 0;
  let dispatches = 0;
  let misses = 0;
  let evictions = 0;
  unet.forward = (...args: Parameters<typeof forward>): ReturnType<typeof forward> => {
    const t = performance.now();
    const d = dev.dispatchCount;
    const m = dev.bindGroupMisses;
    const o = dev.poolEvictions;
    try {
      return forward(...args);
    } finally {
      recordMs += performance.now() - t;
      dispatches += dev.dispatchCount - d;
      misses += dev.bindGroupMisses - m;
      evictions += dev.poolEvictions - o;
      forwards++;
    }
  };
  let seconds = 0;
  await dev.sync();
  // The budget of the speed-and-memory issue: the weights as loaded plus 1.5 GiB.
  const weightBytes = dev.liveBytes;
  // The peak RSS of the segmentation itself: the random weights' host staging (up to here)
  // is the benchmark's own, not the pipeline's (checkpoints upload tensor by tensor).
  const buildPeak = rss().peak_rss_mb;
  const resetOk = resetPeakRss();
  process.stderr.write(`RSS high-water while building the weights: ${buildPeak.toFixed(0)} MB${resetOk ? ' (restarted for the run)' : ' (no reset on this system: the peak below includes it)'}\n`);
  // Where the process's RSS peaks (sampled twice a second; the JS thread idles while the
  // adapter works), with the engine's live and pooled bytes at that moment.
  let phase = 'load';
  let peak = { rss: 0, at: '', live: 0, pooled: 0 };
  // The engine's live peak is a running maximum: a rise is put down to the phase it rose in.
  let livePeak = { bytes: 0, at: '' };
  // The phase in which the high-water mark last rose (it also catches peaks between samples).
  let hwm = { mb: 0, at: '' };
  const sample = (): void => {
    const r = process.memoryUsage().rss;
    if (r > peak.rss) peak = { rss: r, at: phase, live: dev.liveBytes, pooled: dev.poolBytes };
    const h = rss().peak_rss_mb;
    if (h > hwm.mb) hwm = { mb: h, at: phase };
    if (dev.peakLiveBytes > livePeak.bytes) livePeak = { bytes: dev.peakLiveBytes, at: phase };
  };
  const sampler = setInterval(sample, 500);
  sampler.unref();
  for (let r = 0; r < Math.max(1, o.runs); r++) {
    recordMs = 0;
    forwards = 0;
    dispatches = 0;
    misses = 0;
    evictions = 0;
    dev.resetPeak();
    const t0 = performance.now();
    let last = '';
    await segmentImage(pipe, img, ['cat', 'dog'], {
      config,
      maxBatch: o.batch > 1 ? o.batch : 2,
      onProgress: (p) => {
        const s = `${p.phase} ${p.done}/${p.total}`;
        sample();
        phase = `run ${r + 1} ${s}`;
        // a line per step where stderr is a log file (a full-size run takes many minutes there)
        if (s !== last) process.stderr.write(`${process.stderr.isTTY ? '\r' : ''}${s} ${((performance.now() - t0) / 1000).toFixed(0)}s${process.stderr.isTTY ? '   ' : '\n'}`);
        last = s;
      },
    });
    seconds = (performance.now() - t0) / 1000;
    if (process.stderr.isTTY) process.stderr.write('\n');
    if (o.runs > 1) process.stderr.write(`run ${r + 1}/${o.runs}: ${seconds.toFixed(2)} s\n`);
    if (r === 0) process.stderr.write(`first run: ${dev.compileSummary()}\n`);
    process.stderr.write(`run ${r + 1}: ${forwards} UNet forwards (${Math.round(dispatches / Math.max(1, forwards))} dispatches each) recorded by JS in ${(recordMs / 1000).toFixed(2)} s of the run's ${seconds.toFixed(2)} s; per forward ${Math.round(misses / Math.max(1, forwards))} bind-group misses, ${Math.round(evictions / Math.max(1, forwards))} pool evictions\n`);
  }
  clearInterval(sampler);
  sample();
  // What the process holds besides live tensors: the pool's free buffers (host memory on lavapipe).
  const mb = (b: number): string => (b / 2 ** 20).toFixed(0);
  process.stderr.write(`at the end: ${mb(dev.liveBytes)} MB live, ${mb(dev.poolBytes)} MB of free buffers pooled\n`);
  process.stderr.write(`sampled RSS peak ${mb(peak.rss)} MB during "${peak.at}" (${mb(peak.live)} MB live, ${mb(peak.pooled)} MB pooled then); RSS high-water ${hwm.mb.toFixed(0)} MB reached during "${hwm.at}"; live peak ${mb(livePeak.bytes)} MB during "${livePeak.at}"\n`);
  const budget = weightBytes + 1.5 * 2 ** 30;
  const peakRss = rss().peak_rss_mb * 2 ** 20;
  const verdict = (b: number): string => `${mb(b)} MB (${b <= budget ? 'within' : 'over by ' + mb(b - budget) + ' MB'})`;
  process.stderr.write(`budget: weights ${mb(weightBytes)} MB + 1536 MB = ${mb(budget)} MB; peak live ${verdict(dev.peakLiveBytes)}, peak RSS ${verdict(peakRss)}\n`);
  const unetF = unetFlops(parseUNetConfig(SD15_UNET, 'SD 1.5 unet'), 64);
  const flops = (nElbo * 2 + nCollect) * unetF + vaeEncoderFlops(S);
  return { model: 'segment', dtype: w.matrixDtype, batch: 2, seconds, tflops: flops / seconds / 1e12, peak_mb: dev.peakLiveBytes / 2 ** 20, ...rss(), weights_mb: weightBytes / 2 ** 20, budget_mb: budget / 2 ** 20 };
}
