// ELBO-T2IAlign zero-shot segmentation of one image (ALGORITHM.md section 1): ELBO per
// class -> temperatures; attention collected over the collect timesteps; cross-attention
// per class calibrated by its temperature and propagated by self-attention.
import { preprocessForVae, type ImageRGB } from '../io/image.js';
import { AttentionStore } from '../models/attentionStore.js';
import type { DiffusionPipeline } from '../models/pipeline.js';
import { Tensor, scope, type Device } from '../tensor/index.js';
import { gemv } from '../kernels/matmul.js';
import {
  aggregateCross,
  applySelf,
  applySelfMany,
  buildSelf,
  checkSelfWeightSums,
  crossLayerWeights,
  selfLayerWeights,
  type LayerMap,
} from './aggregate.js';
import { parseTimesteps, type SegmentConfig } from './config.js';
import { minMax, resizeBilinear } from './interp.js';

export interface SegmentNoise {
  /** (nElbo, C, h, w) noise per ELBO timestep, shared by all classes. */
  elbo: Float32Array;
  /** (nCollect, C, h, w) noise per collect timestep. */
  collect: Float32Array;
}

export interface SegmentProgress {
  phase: 'encode' | 'elbo' | 'collect' | 'aggregate';
  /** Work units done / total in this phase (UNet batch items for elbo and collect). */
  done: number;
  total: number;
  timestep?: number;
}

export interface SegmentOptions {
  config: SegmentConfig;
  /** Reference noise to inject; otherwise drawn from config.seed. */
  noise?: SegmentNoise;
  /** ELBO prompt per class (elbo_text.type "file": "a photo of <phrase>"); default elbo_text.prompt. */
  elboTexts?: readonly string[];
  /** Source prompt override (source_text.type "file": the prompt filled with the image's phrases). */
  sourceText?: string;
  /** Per class, the text whose tokens locate it in the source prompt (default: the class name). */
  positionTexts?: readonly string[];
  /** Normalised ELBO per class (the elbo_path file's entry for this image). */
  normalizedElbo?: Record<string, number>;
  /** Build the full (N, N) self-attention operator (for --dump). */
  wantSelfMatrix?: boolean;
  /** Largest UNet batch (classes at one timestep, or collect timesteps). */
  maxBatch?: number;
  /** ELBO UNet calls recorded ahead of the oldest one's readback (default ELBO_IN_FLIGHT or 2;
   *  1 runs them one at a time). The results do not depend on it. */
  elboInFlight?: number;
  /** Reproduce the reference even where it breaks (a zero self_weight row gives NaN masks). */
  referenceExact?: boolean;
  /**
   * Free the text encoder once this image's prompts are embedded (the next image's new
   * prompts load it again). Default: on a CPU adapter, where GPU memory is host RAM (SD 1.5's
   * CLIP-L: 492 MB in f32 that would sit beside the UNet's peak); off on a GPU.
   */
  offloadTextEncoder?: boolean;
  onProgress?: (p: SegmentProgress) => void;
}

export interface ClassSegmentation {
  name: string;
  /** Token positions of the class in the source prompt (start token at 0). */
  positions: number[];
  /** Per ELBO timestep loss (empty when the ELBO was not computed). */
  losses: number[];
  /** Sum of the losses (NaN when not computed). */
  loss: number;
  normalizedElbo: number;
  temperature: number;
  /** (R*R) aggregated cross-attention, before and after calibration. */
  crossAtt: Float32Array;
  crossTempered: Float32Array;
  /** (R*R) self-attention-propagated mask. */
  maskLowres: Float32Array;
  /** (H*W) the heatmap on the 0..255 scale, float (what the reference hands to cv2). */
  mask: Float32Array;
  /** (H*W) cross_att image of save_cross_att: resized tempered cross-attention * 255. */
  crossImage: Float32Array;
}

export interface SegmentResult {
  width: number;
  height: number;
  /** Grid side of the largest attention layer (masks are R x R before resizing). */
  res: number;
  sourceText: string;
  sourceIds: number[];
  elboTimesteps: number[];
  collectTimesteps: number[];
  /** (1, C, h, w) scaled VAE latent of the image. */
  zSource: Float32Array;
  latentShape: [number, number, number, number];
  classes: ClassSegmentation[];
  /** (R*R, R*R) self-attention operator when wantSelfMatrix. */
  selfAtt?: Float32Array;
}

/** Standard normal noise from a seeded generator (Box-Muller over mulberry32). */
export function seededNormal(n: number, seed: number): Float32Array {
  let a = seed >>> 0;
  const u = (): number => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (((t ^ (t >>> 14)) >>> 0) + 0.5) / 4294967296;
  };
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const r = Math.sqrt(-2 * Math.log(u()));
    const th = 2 * Math.PI * u();
    out[i] = r * Math.cos(th);
    if (i + 1 < n) out[i + 1] = r * Math.sin(th);
  }
  return out;
}

/** Finds the first occurrence of `needle` in `hay`; returns its positions or null. */
export function findTokens(hay: readonly number[], needle: readonly number[]): number[] | null {
  if (needle.length === 0) return null;
  for (let s = 0; s + needle.length <= hay.length; s++) {
    let ok = true;
    for (let j = 0; j < needle.length && ok; j++) ok = hay[s + j] === needle[j];
    if (ok) return needle.map((_, j) => s + j);
  }
  return null;
}

const f32 = Math.fround;

/** z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps, in float32 as torch computes it. */
function noised(z0: Float32Array, eps: Float32Array, epsOffset: number, a: number, s: number, out: Float32Array, outOffset: number): void {
  for (let i = 0; i < z0.length; i++) out[outOffset + i] = f32(f32(a * z0[i]!) + f32(s * eps[epsOffset + i]!));
}

/** Layer location from its module path. */
function placeOf(name: string): 'down' | 'mid' | 'up' {
  return name.startsWith('down') ? 'down' : name.startsWith('mid') ? 'mid' : 'up';
}

/**
 * Segments one image. `classes` are the class names present in it (image-level labels),
 * in the order their outputs are wanted.
 */
export async function segmentImage(pipe: DiffusionPipeline, image: ImageRGB, classes: readonly string[], opts: SegmentOptions): Promise<SegmentResult> {
  const cfg = opts.config;
  const dev = pipe.dev;
  const progress = opts.onProgress ?? (() => {});
  if (classes.length === 0) throw new Error('segment: the class list is empty; give at least one class present in the image');
  const dup = classes.find((c, i) => classes.indexOf(c) !== i);
  if (dup !== undefined) throw new Error(`segment: class "${dup}" is listed twice`);
  for (const c of classes) if (!c.trim()) throw new Error('segment: a class name is empty');

  const elboTimesteps = parseTimesteps(cfg.elbo_timesteps, cfg.seed);
  const collectTimesteps = parseTimesteps(cfg.collect_timesteps, cfg.seed + 1);
  const sched = pipe.schedule;
  const maxBatch = Math.max(1, opts.maxBatch ?? 4);

  // Token positions first: a class missing from the prompt is an input error, found before any UNet work.
  const sourceText = opts.sourceText ?? cfg.source_text.prompt.replace('{classes}', classes.join(', '));
  const sourceIds = pipe.tokenizer.encode(sourceText);
  const positions = classes.map((c, i) => {
    const posText = opts.positionTexts?.[i] ?? c;
    const ids = pipe.tokenizer.encode(posText).slice(1, -1);
    const pos = findTokens(sourceIds, ids);
    if (!pos) {
      const toks = pipe.tokenizer.tokenize(sourceText).join(' ');
      const via = posText === c ? '' : ` (located through "${posText}")`;
      throw new Error(`segment: the tokens of class "${c}"${via} (${ids.join(', ')}) do not occur in the source prompt "${sourceText}" (tokens: ${toks})`);
    }
    if (pos[pos.length - 1]! >= pipe.tokenizer.maxLength - 1) {
      throw new Error(`segment: class "${c}" falls at token positions ${pos.join(', ')}, beyond the ${pipe.tokenizer.maxLength - 2} text tokens the encoder sees; the source prompt "${sourceText}" is too long (use fewer classes per image or a shorter source_text.prompt)`);
    }
    return pos;
  });

  // The layer weights are checked against the UNet's attention layout before any model work.
  {
    const layout = pipe.unet.attentionLayout(pipe.vae.sampleSize / 8);
    const asMaps = (kind: 'self' | 'cross'): LayerMap[] =>
      layout.filter((l) => l.kind === kind).map((l) => ({ name: l.name, place: placeOf(l.name), res: l.res, data: new Float32Array(0) }));
    crossLayerWeights(asMaps('cross'), cfg.cross_gaussian_var, cfg.cross_weight);
    const sw0 = selfLayerWeights(asMaps('self'), cfg.self_weight);
    if (!opts.referenceExact) checkSelfWeightSums(sw0);
  }

  // Which prompts the ELBO needs (none when the temperatures are fixed or given).
  const elboMode = cfg.fix_temperature || cfg.elbo_strength === 1 ? 'fixed' : opts.normalizedElbo ? 'given' : 'computed';
  if (elboMode === 'computed' && opts.elboTexts && opts.elboTexts.length !== classes.length) {
    throw new Error(`segment: ${opts.elboTexts.length} ELBO prompts for ${classes.length} classes`);
  }
  const elboPrompts = elboMode !== 'computed' ? [] : opts.elboTexts ? [...opts.elboTexts] : classes.map((c) => cfg.elbo_text.prompt.replace('{source_cls}', c));
  // Every prompt is embedded first, so the text encoder can be freed before the UNet's work.
  await pipe.prepareEmbeddings([...elboPrompts, sourceText]);
  if (opts.offloadTextEncoder ?? dev.hostMemory) pipe.offloadTextEncoder();

  // 1.1 Encode the image.
  progress({ phase: 'encode', done: 0, total: 1 });
  const S = pipe.vae.sampleSize;
  const pixels = preprocessForVae(image, S);
  const zSource = await scope(() => {
    const x = Tensor.fromArray(dev, pixels, [1, 3, S, S]);
    return pipe.vae.encodeLatent(x);
  }).toArrayAndRelease();
  const C = pipe.unet.config.inChannels;
  const side = S / 8;
  const latentShape: [number, number, number, number] = [1, C, side, side];
  const latN = C * side * side;
  if (zSource.length !== latN) throw new Error(`segment: VAE latent has ${zSource.length} values, expected ${latN} (${C}x${side}x${side})`);
  progress({ phase: 'encode', done: 1, total: 1 });

  // 1.2 Noise: collect noise is drawn first, as the reference does.
  let noise = opts.noise;
  if (noise) {
    if (noise.elbo.length !== elboTimesteps.length * latN) {
      throw new Error(`noise: elbo_noise has ${noise.elbo.length} values, expected (${elboTimesteps.length}, ${C}, ${side}, ${side})`);
    }
    if (noise.collect.length !== collectTimesteps.length * latN) {
      throw new Error(`noise: collect_noise has ${noise.collect.length} values, expected (${collectTimesteps.length}, ${C}, ${side}, ${side})`);
    }
  } else {
    const all = seededNormal((collectTimesteps.length + elboTimesteps.length) * latN, cfg.seed);
    noise = { collect: all.subarray(0, collectTimesteps.length * latN), elbo: all.subarray(collectTimesteps.length * latN) };
  }

  // 1.3 ELBO per class.
  const K = classes.length;
  const losses: number[][] = classes.map(() => []);
  const lossSum = new Float32Array(K).fill(NaN);
  let normalized: Float32Array;
  let temperature: Float32Array;
  if (elboMode === 'fixed') {
    normalized = new Float32Array(K).fill(1);
    temperature = normalized.map(() => f32(cfg.elbo_strength));
  } else if (elboMode === 'given') {
    normalized = Float32Array.from(classes, (c) => {
      const v = opts.normalizedElbo![c];
      if (typeof v !== 'number') throw new Error(`elbo_path: no normalized ELBO for class "${c}" of this image`);
      return v;
    });
    temperature = normalized.map((n) => f32(f32(cfg.elbo_strength) ** n));
  } else {
    const embs = elboPrompts.map((p) => pipe.embed(p));
    lossSum.fill(0);
    const total = elboTimesteps.length * K;
    let done = 0;
    // The UNet calls are independent (the noised latents come from the host), so up to
    // `depth` of them (opts.elboInFlight) are recorded ahead of the oldest one's readback: on a fast GPU
    // the host records the next call while the GPU runs this one. Results are taken in
    // order, so the sums are the same as one call at a time.
    interface Call { ti: number; t: number; c0: number; B: number; zt: Float32Array; out: Promise<Float32Array> }
    const inFlight: Call[] = [];
    const depth = Math.max(1, Math.floor(opts.elboInFlight ?? (Number(process.env.ELBO_IN_FLIGHT) || 2)));
    const finish = async (call: Call): Promise<void> => {
      const { ti, t, c0, B, zt } = call;
      const out = await call.out;
      for (let b = 0; b < B; b++) {
        const pred = out.subarray(b * latN, (b + 1) * latN);
        const eps = sched.toEpsilon(pred, zt, t);
        let acc = 0;
        for (let i = 0; i < latN; i++) {
          const d = noise.elbo[ti * latN + i]! - eps[i]!;
          acc += d * d;
        }
        const l = f32(acc / latN);
        losses[c0 + b]!.push(l);
        lossSum[c0 + b] = f32(lossSum[c0 + b]! + l);
      }
      done += B;
      progress({ phase: 'elbo', done, total, timestep: t });
    };
    try {
      for (let ti = 0; ti < elboTimesteps.length; ti++) {
        const t = elboTimesteps[ti]!;
        const a = sched.sqrtAlphasCumprod[t]!;
        const s = sched.sqrtOneMinusAlphasCumprod[t]!;
        const zt = new Float32Array(latN);
        noised(zSource, noise.elbo, ti * latN, a, s, zt, 0);
        for (let c0 = 0; c0 < K; c0 += maxBatch) {
          const B = Math.min(maxBatch, K - c0);
          const batchZ = new Float32Array(B * latN);
          for (let b = 0; b < B; b++) batchZ.set(zt, b * latN);
          const out = scope(() => {
            const z = Tensor.fromArray(dev, batchZ, [B, C, side, side]);
            return pipe.unet.forward({ sample: z, timesteps: [t], ...pipe.unetConditioning(embs.slice(c0, c0 + B)) });
          }).toArrayAndRelease();
          out.catch(() => undefined); // awaited in order below; not an unhandled rejection meanwhile
          inFlight.push({ ti, t, c0, B, zt, out });
          if (inFlight.length >= depth) await finish(inFlight.shift()!);
        }
      }
      while (inFlight.length) await finish(inFlight.shift()!);
    } finally {
      // After a failure, let the calls already submitted finish before the caller goes on.
      await Promise.allSettled(inFlight.map((c) => c.out));
    }
    let lo = Infinity;
    let hi = -Infinity;
    for (const v of lossSum) {
      lo = Math.min(lo, v);
      hi = Math.max(hi, v);
    }
    const denom = f32(f32(hi - lo) + 1e-10);
    normalized = lossSum.map((v) => f32(f32(v - lo) / denom));
    temperature = normalized.map((n) => f32(f32(cfg.elbo_strength) ** n));
  }

  // 1.4 Attention maps over the collect timesteps, summed on the GPU.
  const store = new AttentionStore(dev, false);
  let crossLayers: LayerMap[];
  let selfLayers: LayerMap[];
  let sw: number[][];
  let crossF: Float32Array[];
  let tempered: Float64Array[];
  let low: Float64Array[];
  try {
    const emb = pipe.embed(sourceText);
    const nC = collectTimesteps.length;
    // Each call is recorded while the GPU runs the one before (as the ELBO calls); progress
    // is reported as each finishes.
    let prev: { done: Promise<void>; count: number; t: number } | undefined;
    const finishPrev = async (): Promise<void> => {
      if (!prev) return;
      await prev.done;
      progress({ phase: 'collect', done: prev.count, total: nC, timestep: prev.t });
    };
    for (let k0 = 0; k0 < nC; k0 += maxBatch) {
      const B = Math.min(maxBatch, nC - k0);
      const batchZ = new Float32Array(B * latN);
      const ts: number[] = [];
      for (let b = 0; b < B; b++) {
        const t = collectTimesteps[k0 + b]!;
        ts.push(t);
        noised(zSource, noise.collect, (k0 + b) * latN, sched.sqrtAlphasCumprod[t]!, sched.sqrtOneMinusAlphasCumprod[t]!, batchZ, b * latN);
      }
      scope(() => {
        const z = Tensor.fromArray(dev, batchZ, [B, C, side, side]);
        pipe.unet.forward({ sample: z, timesteps: ts, ...pipe.unetConditioning(Array<typeof emb>(B).fill(emb)), store });
      });
      const done = dev.sync();
      done.catch(() => undefined); // awaited by finishPrev
      await finishPrev();
      prev = { done, count: k0 + B, t: ts[ts.length - 1]! };
    }
    await finishPrev();
    const inv = 1 / store.steps;
    const gridOf = (l: (typeof store.self)[number]): number => {
      if (l.h !== l.w) throw new Error(`segment: attention layer ${l.name} has a non-square grid ${l.h}x${l.w}; the VAE sample size gives square latents`);
      return l.h;
    };
    const readLayers = async (list: typeof store.self): Promise<LayerMap[]> => {
      const out: LayerMap[] = [];
      for (const l of list) {
        const data = await l.sum.toArray();
        for (let i = 0; i < data.length; i++) data[i] = f32(data[i]! * inv);
        out.push({ name: l.name, place: placeOf(l.name), res: gridOf(l), data });
      }
      return out;
    };
    crossLayers = await readLayers(store.cross);
    // The self-attention maps stay on the GPU (five of 64 MB at 512x512) unless the full
    // operator is asked for: the products L @ t of the propagation run there (gemv).
    // ELBO_SELF_HOST=1 reads them back and multiplies on the host (the earlier way, for A/B).
    const selfOnHost = opts.wantSelfMatrix || process.env.ELBO_SELF_HOST === '1';
    const selfMeta = store.self.map((l) => ({ name: l.name, place: placeOf(l.name), res: gridOf(l) }));
    selfLayers = selfOnHost ? await readLayers(store.self) : selfMeta.map((l) => ({ ...l, data: new Float32Array(0) }));

    // 1.4 / 1.5 Aggregation and masks on the host, but for those products.
    progress({ phase: 'aggregate', done: 0, total: K });
    const cw = crossLayerWeights(crossLayers, cfg.cross_gaussian_var, cfg.cross_weight);
    sw = selfLayerWeights(selfLayers, cfg.self_weight);
    if (!opts.referenceExact) checkSelfWeightSums(sw);
    crossF = classes.map((_, i) => Float32Array.from(aggregateCross(crossLayers, positions[i]!, cw)));
    tempered = crossF.map((c, i) => minMax(c).map((x) => f32(f32(x) ** temperature[i]!)));
    low = selfOnHost
      ? tempered.map((t) => applySelf(selfLayers, sw, t))
      : await applySelfMany(selfMeta, sw, tempered, async (jobs) => {
          const outs = jobs.map((j) =>
            scope(() => gemv(Tensor.fromArray(dev, Float32Array.from(j.t), [1, j.t.length]), store.self[j.layer]!.sum)),
          );
          try {
            // The maps are sums over the collect steps: their mean is inv times that.
            return await Promise.all(outs.map(async (o) => Float64Array.from(await o.toArray(), (x) => x * inv)));
          } finally {
            for (const o of outs) o.release();
          }
        });
  } finally {
    store.reset();
  }

  const R = crossLayers[0]!.res;
  const H = image.height;
  const W = image.width;
  const results: ClassSegmentation[] = classes.map((name, i) => {
    const lowF = Float32Array.from(low[i]!);
    const mask = minMax(resizeBilinear(lowF, 1, R, R, H, W)).map((x) => x * 255);
    const crossImg = resizeBilinear(Float32Array.from(tempered[i]!), 1, R, R, H, W).map((x) => Math.min(1, Math.max(0, x)) * 255);
    progress({ phase: 'aggregate', done: i + 1, total: K });
    return {
      name,
      positions: positions[i]!,
      losses: losses[i]!,
      loss: lossSum[i]!,
      normalizedElbo: normalized[i]!,
      temperature: temperature[i]!,
      crossAtt: crossF[i]!,
      crossTempered: Float32Array.from(tempered[i]!),
      maskLowres: lowF,
      mask: Float32Array.from(mask),
      crossImage: Float32Array.from(crossImg),
    };
  });
  return {
    width: W,
    height: H,
    res: R,
    sourceText,
    sourceIds,
    elboTimesteps,
    collectTimesteps,
    zSource,
    latentShape,
    classes: results,
    selfAtt: opts.wantSelfMatrix ? buildSelf(selfLayers, sw) : undefined,
  };
}

export type { Device };
