/**
 * Composable text-to-image generation with ELBO reweighting (ELBO-T2IAlign's run_generation.py)
 * on a Stable Diffusion 1.x / 2.x pipeline.
 *
 * The reference loop, per prompt:
 *   - phrases = noun phrases of the prompt (`extract_filtered_noun_phrases`);
 *   - every text embedding is compel's (`Diffusion.encode_prompt`): the prompt, each phrase and
 *     the empty negative prompt;
 *   - latent z (1, C, s, s) from `torch.randn` after `torch.manual_seed(seed)`;
 *   - timesteps `range(T - 1, 0, -step_ratio)` with `step_ratio = T // steps` (T = 1000 training
 *     steps: 50 steps -> 999, 979, ..., 19; 3 steps -> 999, 666, 333), next_t = max(0, t - step_ratio);
 *   - per step, while the step index is below `elbo_timesteps` and there are at least two
 *     phrases: pred_all = unet(z, t, text_emb), pred_i = unet(z, t, phrase_emb_i),
 *     elbo_i = mse(pred_all, pred_i), weights = round(strength ** minmax(elbo), 2) (float32);
 *     afterwards the weights are all 1.0; with fewer than two phrases they stay 1.0 throughout;
 *   - weight_prompt = the prompt with each phrase written `(phrase)weight`, encoded by compel;
 *   - [cond, uncond] = unet([z, z], [t, t], [weight_prompt_emb, neg_emb]),
 *     eps = uncond + g (cond - uncond), z = DDIM step (eta 0) from t to next_t;
 *   - image = postprocess(vae.decode(z / scaling_factor)).
 *
 * {@link generationStep} is one step of that loop from a given z, so tests can start each step
 * from the reference's own latent. The noun-phrase-alone predictions and the full-prompt
 * prediction of one step share a UNet batch (the reference runs them one by one; the results
 * are the same up to float rounding).
 */
import { extractNounPhrases } from './nounPhrases.js';
import { buildWeightedPrompt, elboWeights, elboWeightsUnrounded, emptyPromptIds, encodeWeightedPrompt, parseWeightedPrompt } from './promptWeighting.js';
import { latentImageToRGB } from '../io/image.js';
import { concat } from '../kernels/layout.js';
import type { StableDiffusionPipeline } from '../models/pipeline.js';
import { Tensor, keep, scope } from '../tensor/index.js';

const f32 = Math.fround;

// ------------------------------------------------------------------------------------------
// Timesteps and the initial latent

/** One sampling step: the UNet runs at `t`, the DDIM step goes to `nextT`. */
export interface SamplingStep {
  t: number;
  nextT: number;
}

/**
 * run_generation.py's timesteps: `range(T - 1, 0, -(T // steps))` with `next_t = max(0, t - T // steps)`.
 * Note the count can exceed `steps` when `T // steps` does not divide T - 1 (e.g. 7 steps -> 8
 * timesteps), exactly as in the reference.
 *
 * @param steps the reference's `infer_timesteps` (1..numTrainTimesteps)
 * @param numTrainTimesteps T, the scheduler's `num_train_timesteps` (1000)
 */
export function samplingTimesteps(steps: number, numTrainTimesteps = 1000): SamplingStep[] {
  if (!Number.isInteger(steps) || steps < 1 || steps > numTrainTimesteps) {
    throw new Error(`steps: expected an integer in [1, ${numTrainTimesteps}], got ${steps}`);
  }
  const ratio = Math.floor(numTrainTimesteps / steps);
  const out: SamplingStep[] = [];
  for (let t = numTrainTimesteps - 1; t > 0; t -= ratio) out.push({ t, nextT: Math.max(0, t - ratio) });
  return out;
}

/**
 * `torch.manual_seed(seed); torch.randn(n)` on the CPU (float32, contiguous): mt19937 seeded
 * with the low 32 bits, 24-bit uniforms, Box-Muller over blocks of 16 (u1 = 1 - data[j],
 * u2 = data[j + 8]), the last 16 values redrawn when n is not a multiple of 16; n < 16 uses
 * torch's scalar path (double Box-Muller pairs: cos value, then the cached sin value). Float32 arithmetic step by step; torch's AVX2 build uses SLEEF's
 * 1-ulp logf/sinf/cosf, so values can differ from it in the last bit or two.
 *
 * @returns n standard normal values
 */
export function torchRandn(n: number, seed: number): Float32Array {
  if (!Number.isInteger(n) || n < 0) throw new Error(`torchRandn: bad length ${n}`);
  if (!Number.isSafeInteger(seed) || seed < 0) throw new Error(`seed: expected a non-negative integer, got ${seed}`);
  const mt = new MT19937(seed);
  const uniform = (): number => (mt.next() & 0xffffff) * 2 ** -24;
  const out = new Float32Array(n);
  if (n >= 16) {
    for (let i = 0; i < n; i++) out[i] = uniform();
    for (let i = 0; i + 16 <= n; i += 16) boxMuller16(out, i);
    if (n % 16 !== 0) {
      for (let i = n - 16; i < n; i++) out[i] = uniform();
      boxMuller16(out, n - 16);
    }
    return out;
  }
  // Scalar path (at::normal_distribution<double>): 53-bit uniforms from two 32-bit draws,
  // r = sqrt(-2 log1p(-u2)), value r cos(2 pi u1); r sin(2 pi u1) is cached for the next value.
  const uniform64 = (): number => {
    const hi = mt.next();
    const lo = mt.next();
    return Number(((BigInt(hi) << 32n) | BigInt(lo)) & ((1n << 53n) - 1n)) * 2 ** -53;
  };
  for (let i = 0; i < n; i += 2) {
    const u1 = uniform64();
    const u2 = uniform64();
    const r = Math.sqrt(-2 * Math.log1p(-u2));
    const theta = 2 * Math.PI * u1;
    out[i] = r * Math.cos(theta);
    if (i + 1 < n) out[i + 1] = r * Math.sin(theta);
  }
  return out;
}

const TWO_PI_F32 = f32(2 * Math.PI);

function boxMuller16(d: Float32Array, at: number): void {
  for (let j = 0; j < 8; j++) {
    const u1 = f32(1 - d[at + j]!);
    const u2 = d[at + j + 8]!;
    const radius = f32(Math.sqrt(f32(-2 * f32(Math.log(u1)))));
    const theta = f32(TWO_PI_F32 * u2);
    d[at + j] = f32(radius * f32(Math.cos(theta)));
    d[at + j + 8] = f32(radius * f32(Math.sin(theta)));
  }
}

/** The 32-bit Mersenne Twister as torch's CPU generator runs it (seed truncated to 32 bits). */
class MT19937 {
  private readonly s = new Uint32Array(624);
  private i = 624;
  constructor(seed: number) {
    const s = this.s;
    s[0] = Number(BigInt(seed) & 0xffffffffn);
    for (let j = 1; j < 624; j++) {
      const p = s[j - 1]! ^ (s[j - 1]! >>> 30);
      s[j] = (Math.imul(1812433253, p) + j) >>> 0;
    }
  }
  next(): number {
    const s = this.s;
    if (this.i >= 624) {
      for (let k = 0; k < 624; k++) {
        const y = (s[k]! & 0x80000000) | (s[(k + 1) % 624]! & 0x7fffffff);
        s[k] = s[(k + 397) % 624]! ^ (y >>> 1) ^ (y & 1 ? 0x9908b0df : 0);
      }
      this.i = 0;
    }
    let y = s[this.i++]!;
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  }
}

// ------------------------------------------------------------------------------------------
// Text embeddings (compel)

/**
 * compel's embedding of `prompt` on this pipeline's text encoder (`Diffusion.encode_prompt`),
 * the encoder called with compel's attention mask. `emptyZ`: the precomputed `(77, H)`
 * empty-prompt encoding (see {@link encodeEmptyZ}).
 *
 * @returns `(77, H)` row-major
 */
export async function compelEmbedding(pipe: StableDiffusionPipeline, prompt: string, emptyZ?: Float32Array): Promise<Float32Array> {
  const encode = async (ids: number[], mask: number[]): Promise<Float32Array> => {
    const out = pipe.textEncoder.forward([ids], { attentionMask: [mask] });
    out.pooled.release();
    out.textEmbeds?.release();
    for (const h of out.hiddenStates ?? []) h.release();
    return out.lastHiddenState.toArrayAndRelease();
  };
  return encodeWeightedPrompt(prompt, pipe.tokenizer, encode, pipe.textEncoder.hiddenSize, { emptyZ });
}

/** compel's `empty_z`: the encoding of `[bos, eos, pad x 75]`, `(77, H)`. */
export async function encodeEmptyZ(pipe: StableDiffusionPipeline): Promise<Float32Array> {
  const ids = emptyPromptIds(pipe.tokenizer);
  const out = pipe.textEncoder.forward([ids], { attentionMask: [ids.map(() => 1)] });
  out.pooled.release();
  out.textEmbeds?.release();
  for (const h of out.hiddenStates ?? []) h.release();
  return out.lastHiddenState.toArrayAndRelease();
}

// ------------------------------------------------------------------------------------------
// One step

/**
 * Everything a prompt's steps share: its phrases and their embeddings on the GPU, the negative
 * embedding, and a cache of weighted-prompt embeddings. Call {@link GenerationContext.release}.
 */
export class GenerationContext {
  private readonly weightedCache = new Map<string, Float32Array>();

  private constructor(
    readonly pipe: StableDiffusionPipeline,
    readonly prompt: string,
    readonly phrases: readonly string[],
    /** compel's `empty_z`, (77, H). */
    readonly emptyZ: Float32Array,
    /** (1, 77, H) compel embedding of the prompt. */
    readonly textEmb: Tensor,
    /** (1, 77, H) compel embedding of each phrase. */
    readonly phraseEmbs: readonly Tensor[],
    /** (1, 77, H) compel embedding of the negative prompt "". */
    readonly negEmb: Tensor,
  ) {}

  /**
   * Encodes the prompt, its phrases and "" with compel.
   *
   * @param phrases the prompt's noun phrases (exact substrings of it), as extractNounPhrases gives them
   * @throws Error if a phrase does not occur in the prompt
   */
  static async create(pipe: StableDiffusionPipeline, prompt: string, phrases: readonly string[]): Promise<GenerationContext> {
    for (const p of phrases) {
      if (!prompt.includes(p)) throw new Error(`generate: phrase ${JSON.stringify(p)} does not occur in prompt ${JSON.stringify(prompt)}`);
    }
    const H = pipe.textEncoder.hiddenSize;
    const L = pipe.tokenizer.maxLength;
    const emptyZ = await encodeEmptyZ(pipe);
    const up = async (text: string): Promise<Tensor> => keep(Tensor.fromArray(pipe.dev, await compelEmbedding(pipe, text, emptyZ), [1, L, H]));
    const made: Tensor[] = [];
    try {
      const textEmb = await up(prompt);
      made.push(textEmb);
      const phraseEmbs: Tensor[] = [];
      for (const p of phrases) {
        const e = await up(p);
        made.push(e);
        phraseEmbs.push(e);
      }
      const negEmb = await up('');
      return new GenerationContext(pipe, prompt, [...phrases], emptyZ, textEmb, phraseEmbs, negEmb);
    } catch (e) {
      for (const t of made) t.release();
      throw e;
    }
  }

  /** compel embedding (77, H) of a weighted prompt, cached per string. */
  async weightedEmbedding(weightPrompt: string): Promise<Float32Array> {
    let e = this.weightedCache.get(weightPrompt);
    if (!e) {
      e = await compelEmbedding(this.pipe, weightPrompt, this.emptyZ);
      this.weightedCache.set(weightPrompt, e);
    }
    return e;
  }

  /** Frees the GPU embeddings. */
  release(): void {
    this.textEmb.release();
    for (const t of this.phraseEmbs) t.release();
    this.negEmb.release();
    this.weightedCache.clear();
  }
}

/** Options of {@link generationStep}. */
export interface StepOptions {
  /** Compute the phrase ELBOs and reweight (the reference does when the step index < elbo_timesteps). */
  reweight: boolean;
  /** Classifier-free guidance scale (7.5). */
  guidance: number;
  /** ELBO strength (1.2): weight = round(strength ** minmax(elbo), 2). */
  elboStrength: number;
  /** Largest UNet batch for the ELBO predictions (default 4). */
  maxBatch?: number;
  /** Also return the step's intermediate tensors (for tests and dumps). */
  intermediates?: boolean;
  /** Shape of z, (1, C, h, w); default (1, in_channels, sample_size, sample_size). */
  shape?: readonly [number, number, number, number];
}

/** The intermediates of one step, flat float32, shapes as the golden `stepK.*` tensors. */
export interface StepIntermediates {
  /** (1, C, h, w) unet(z, t, text_emb); absent when the step did not reweight. */
  predAll?: Float32Array;
  /** (1, C, h, w) each unet(z, t, phrase_emb_i). */
  predPhrases: Float32Array[];
  /** (1, 77, H) compel embedding of the weighted prompt. */
  weightPromptEmb: Float32Array;
  /** (2, C, h, w) unet([z, z], [t, t], [weight_prompt_emb, neg_emb]). */
  predCondUncond: Float32Array;
  /** (1, C, h, w) uncond + g (cond - uncond). */
  epsCfg: Float32Array;
}

/** What one step produced. */
export interface StepResult {
  t: number;
  nextT: number;
  /** Whether ELBOs were computed at this step (reweight requested and >= 2 phrases). */
  reweighted: boolean;
  /** Per-phrase mse(pred_all, pred_phrase) (float32 values); empty when not reweighted. */
  elbo: number[];
  /** `strength ** minmax(elbo)` before rounding; empty when not reweighted. */
  weightsUnrounded: number[];
  /** Per-phrase weights used in the weighted prompt (float32 values widened; 1.0 when not reweighted). */
  weights: number[];
  /** The exact prompt handed to compel, e.g. `(a red cat)1.2000000476837158 and (a blue dog)1.0`. */
  weightPrompt: string;
  /** (1, C, h, w) latent after the DDIM step. */
  zOut: Float32Array;
  intermediates?: StepIntermediates;
}

/** Runs the UNet on one latent with several (1, 77, D) contexts, batched; returns each (1, C, h, w) output. */
async function unetPerContext(
  pipe: StableDiffusionPipeline,
  z: Float32Array,
  shape: readonly [number, number, number, number],
  t: number,
  contexts: readonly Tensor[],
  maxBatch: number,
): Promise<Float32Array[]> {
  const [, C, h, w] = shape;
  const n = C * h * w;
  const outs: Float32Array[] = [];
  for (let c0 = 0; c0 < contexts.length; c0 += maxBatch) {
    const B = Math.min(maxBatch, contexts.length - c0);
    const batchZ = new Float32Array(B * n);
    for (let b = 0; b < B; b++) batchZ.set(z, b * n);
    const out = await scope(() => {
      const zt = Tensor.fromArray(pipe.dev, batchZ, [B, C, h, w]);
      const ctx = B === 1 ? contexts[c0]! : concat(contexts.slice(c0, c0 + B), 0);
      return pipe.unet.forward({ sample: zt, timesteps: [t], encoderHiddenStates: ctx });
    }).toArrayAndRelease();
    for (let b = 0; b < B; b++) outs.push(out.slice(b * n, (b + 1) * n));
  }
  return outs;
}

/** F.mse_loss(a, b, reduction="mean") as a float32 value (summed in double). */
function mse(a: Float32Array, b: Float32Array): number {
  let acc = 0;
  for (let i = 0; i < a.length; i++) {
    const d = f32(a[i]! - b[i]!);
    acc += f32(d * d);
  }
  return f32(acc / a.length);
}

/**
 * One step of the ELBO-reweighted sampler from latent `z` at timestep `t` to `nextT`.
 *
 * @param z (1, C, h, w) float32 latent at t, e.g. the golden `stepK.z_in`; its shape is
 *   `opts.shape`, by default (1, C, s, s) with the UNet's `in_channels` and `sample_size`
 */
export async function generationStep(ctx: GenerationContext, z: Float32Array, t: number, nextT: number, opts: StepOptions): Promise<StepResult> {
  const c = ctx.pipe.unet.config;
  return stepWithShape(ctx, z, opts.shape ?? [1, c.inChannels, c.sampleSize, c.sampleSize], t, nextT, opts);
}

async function stepWithShape(
  ctx: GenerationContext,
  z: Float32Array,
  shape: readonly [number, number, number, number],
  t: number,
  nextT: number,
  opts: StepOptions,
): Promise<StepResult> {
  const { pipe, phrases } = ctx;
  const [B0, C, h, w] = shape;
  if (B0 !== 1 || z.length !== C * h * w) throw new Error(`generationStep: latent has ${z.length} values, expected shape (1, ${C}, ${h}, ${w})`);
  if (C !== pipe.unet.config.inChannels) throw new Error(`generationStep: latent has ${C} channels, the UNet expects ${pipe.unet.config.inChannels}`);
  const maxBatch = Math.max(1, opts.maxBatch ?? 4);
  const P = phrases.length;
  const reweighted = opts.reweight && P > 1;

  // 1. ELBO of each phrase against the full prompt.
  let elbo: number[] = [];
  let weightsUnrounded: number[] = [];
  let weights = phrases.map(() => 1.0);
  let predAll: Float32Array | undefined;
  let predPhrases: Float32Array[] = [];
  if (reweighted) {
    const preds = await unetPerContext(pipe, z, shape, t, [ctx.textEmb, ...ctx.phraseEmbs], maxBatch);
    predAll = preds[0]!;
    predPhrases = preds.slice(1);
    elbo = predPhrases.map((p) => mse(predAll!, p));
    weightsUnrounded = elboWeightsUnrounded(elbo, opts.elboStrength);
    weights = elboWeights(elbo, opts.elboStrength);
  }

  // 2. Weighted prompt, its compel embedding, CFG batch [cond, uncond].
  const weightPrompt = buildWeightedPrompt(ctx.prompt, phrases, weights);
  const wEmb = await ctx.weightedEmbedding(weightPrompt);
  const H = pipe.textEncoder.hiddenSize;
  const L = pipe.tokenizer.maxLength;
  const n = C * h * w;
  const batchZ = new Float32Array(2 * n);
  batchZ.set(z, 0);
  batchZ.set(z, n);
  const predCU = await scope(() => {
    const zt = Tensor.fromArray(pipe.dev, batchZ, [2, C, h, w]);
    const cond = Tensor.fromArray(pipe.dev, wEmb, [1, L, H]);
    return pipe.unet.forward({ sample: zt, timesteps: [t, t], encoderHiddenStates: concat([cond, ctx.negEmb], 0) });
  }).toArrayAndRelease();

  // 3. Guidance and the DDIM step, in float32 as torch does them.
  const g = f32(opts.guidance);
  const eps = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const cv = predCU[i]!;
    const u = predCU[n + i]!;
    eps[i] = f32(u + f32(g * f32(cv - u)));
  }
  const zOut = pipe.schedule.ddimStep(eps, z, t, nextT);
  const res: StepResult = { t, nextT, reweighted, elbo, weightsUnrounded, weights, weightPrompt, zOut };
  if (opts.intermediates) {
    res.intermediates = { predAll, predPhrases, weightPromptEmb: wEmb, predCondUncond: predCU, epsCfg: eps };
  }
  return res;
}

// ------------------------------------------------------------------------------------------
// The whole loop

/** Progress report after each step (throw from it to stop, e.g. on Ctrl-C). */
export interface GenerateProgress {
  /** Steps done so far (1..total); `phase: 'decode'` comes once after the last step. */
  done: number;
  total: number;
  t: number;
  phase: 'step' | 'decode';
}

/** Options of {@link generate}. */
export interface GenerateOptions {
  /** The reference's `infer_timesteps` (default 50 -> 999, 979, ..., 19). */
  steps?: number;
  /** Classifier-free guidance scale (default 7.5). */
  guidance?: number;
  /** ELBO strength (default 1.2). */
  elboStrength?: number;
  /** Number of first steps that reweight (default 50: all of a 50-step run). */
  elboTimesteps?: number;
  /** Seed of the initial latent (torch.manual_seed + torch.randn on the CPU; default 4307, configs/io.yaml). */
  seed?: number;
  /** The initial latent (1, C, s, s) instead of a seeded draw (e.g. the golden `latent_init`). */
  latentInit?: Float32Array;
  /** Plain CFG sampling: every phrase weight 1.0, no ELBO predictions. */
  noElbo?: boolean;
  /** The phrases to reweight instead of the noun-phrase extractor's (exact substrings of the prompt). */
  phrases?: readonly string[];
  /** Largest UNet batch for the ELBO predictions (default 4). */
  maxBatch?: number;
  /** Keep each step's intermediates in the result (tests, dumps). */
  intermediates?: boolean;
  onStep?: (p: GenerateProgress) => void;
}

/** A generated image and how it was made. */
export interface GenerateResult {
  /** (1, C, s, s) final latent. */
  latent: Float32Array;
  latentShape: [number, number, number, number];
  /** (1, 3, H, W) VAE output, about [-1, 1] (unclamped). */
  decoded: Float32Array;
  /** (H, W, 3) uint8 RGB (diffusers postprocess). */
  image: { width: number; height: number; data: Uint8Array };
  phrases: string[];
  /** False when the prompt has fewer than two phrases or noElbo / elboTimesteps 0: no step reweights. */
  reweighting: boolean;
  /** Why no step reweights, when reweighting is false. */
  warning?: string;
  steps: StepResult[];
}

/**
 * Generates one image for `prompt` with ELBO-reweighted DDIM sampling (run_generation.py).
 *
 * @throws PromptSyntaxError (with `position`) for weight syntax compel cannot take; Error for bad options
 */
export async function generate(pipe: StableDiffusionPipeline, prompt: string, opts: GenerateOptions = {}): Promise<GenerateResult> {
  const steps = opts.steps ?? 50;
  const guidance = opts.guidance ?? 7.5;
  const elboStrength = opts.elboStrength ?? 1.2;
  const elboTimesteps = opts.elboTimesteps ?? 50;
  const seed = opts.seed ?? 4307;
  if (!Number.isFinite(guidance)) throw new Error(`guidance: expected a number, got ${guidance}`);
  if (!Number.isFinite(elboStrength) || elboStrength <= 0) throw new Error(`elboStrength: expected a positive number, got ${elboStrength}`);
  if (!Number.isInteger(elboTimesteps) || elboTimesteps < 0) throw new Error(`elboTimesteps: expected a non-negative integer, got ${elboTimesteps}`);
  const schedule = samplingTimesteps(steps, pipe.schedule.numTrainTimesteps);
  parseWeightedPrompt(prompt); // fail on compel syntax errors before any model work

  const c = pipe.unet.config;
  const shape: [number, number, number, number] = [1, c.inChannels, c.sampleSize, c.sampleSize];
  const n = shape[1] * shape[2] * shape[3];
  let z: Float32Array;
  if (opts.latentInit) {
    if (opts.latentInit.length !== n) throw new Error(`latentInit: has ${opts.latentInit.length} values, expected (1, ${shape[1]}, ${shape[2]}, ${shape[3]}) = ${n}`);
    z = Float32Array.from(opts.latentInit);
  } else z = torchRandn(n, seed);

  const phrases = [...(opts.phrases ?? extractNounPhrases(prompt))];
  let warning: string | undefined;
  if (opts.noElbo) warning = 'ELBO reweighting off (--no-elbo): plain classifier-free guidance';
  else if (phrases.length === 0) warning = `no noun phrase found in ${JSON.stringify(prompt)}: generating without ELBO reweighting`;
  else if (phrases.length === 1) warning = `only one noun phrase (${JSON.stringify(phrases[0])}) in ${JSON.stringify(prompt)}: nothing to reweight against, generating without ELBO reweighting`;
  else if (elboTimesteps === 0) warning = 'elbo-timesteps is 0: generating without ELBO reweighting';
  const reweighting = warning === undefined;

  const ctx = await GenerationContext.create(pipe, prompt, phrases);
  const records: StepResult[] = [];
  try {
    for (let i = 0; i < schedule.length; i++) {
      const { t, nextT } = schedule[i]!;
      const r = await generationStep(ctx, z, t, nextT, {
        shape,
        reweight: !opts.noElbo && i < elboTimesteps,
        guidance,
        elboStrength,
        maxBatch: opts.maxBatch,
        intermediates: opts.intermediates,
      });
      z = r.zOut;
      if (!opts.intermediates) r.zOut = new Float32Array(0);
      records.push(r);
      opts.onStep?.({ done: i + 1, total: schedule.length, t, phase: 'step' });
    }
  } finally {
    ctx.release();
  }
  opts.onStep?.({ done: schedule.length, total: schedule.length, t: 0, phase: 'decode' });
  const decodedT = scope(() => pipe.vae.decode(Tensor.fromArray(pipe.dev, z, shape)));
  const [, oc, H, W] = decodedT.shape as [number, number, number, number];
  const decoded = await decodedT.toArrayAndRelease();
  const rgb = latentImageToRGB(decoded, oc, H, W);
  return { latent: z, latentShape: shape, decoded, image: { width: W, height: H, data: rgb }, phrases, reweighting, warning, steps: records };
}
