// A Stable Diffusion XL pipeline folder (stabilityai/stable-diffusion-xl-base-1.0 layout)
// loaded into our models: two tokenizers and text encoders (CLIPTextModel +
// CLIPTextModelWithProjection), the UNet with SDXL's added text/time conditioning, the VAE
// (always f32: SDXL's VAE sets force_upcast) and the scheduler tables. Prompt encoding is
// StableDiffusionXLPipeline.encode_prompt's, and compel's (as utils/diffusion.py uses it)
// for weighted prompts.
import { join } from 'node:path';
import { loadPipelineIndex, readJsonConfig, resolveModel } from '../io/modelFolder.js';
import { concat } from '../kernels/index.js';
import { encodeWeightedPrompt, emptyPromptIds } from '../elbo/promptWeighting.js';
import { Tensor, keep, scope, type Device } from '../tensor/index.js';
import { ClipTextModel } from './clip.js';
import type { DiffusionPipeline, PipelineOptions, PromptEmbedding } from './pipeline.js';
import { DDIMSchedule } from './scheduler.js';
import { CLIPTokenizer } from './tokenizer.js';
import { UNet2DConditionModel } from './unet.js';
import { AutoencoderKL } from './vae.js';
import { EmbeddingCache } from './embeddingCache.js';
import { Reloadable, loadParts } from './weights.js';

/**
 * Default segmentation layer weights for SDXL's attention layout.
 *
 * The reference's defaults (configs/run_segmentation.yaml) are 7-entry lists for SD 1.x/2.x's
 * 7 resolution segments [down s, s/2, s/4, mid s/8, up s/4, s/2, s]. SDXL's UNet has
 * attention only at s/2 and s/4, walked in call order as 3 segments:
 *   0: down_blocks.1 (s/2), 1: down_blocks.2 + mid_block + up_blocks.0 (s/4, one run),
 *   2: up_blocks.1 (s/2).
 * Indexed by segment, the SD lists silently become cross_weight [1, 1, 10] (the lowest
 * resolution, mid block included, gets weight 1 and the up s/2 layers 10) and self_weight rows
 * [1, 0, 0] and [0, 0, 0] (a zero-sum row: every mask NaN, every heatmap black).
 * These defaults keep the SD defaults' intent on SDXL's layout:
 *   cross_weight [1, 10, 1]: emphasis on the lowest resolution (SD gives s/4 and the mid
 *     block 10-15, the higher resolutions 1);
 *   self_weight [[1, 0, 1], [0, 0, 1]]: row 0 = the highest-resolution down and up layers,
 *     row 1 = the highest-resolution up layers (SD's [1,0,0,0,0,0,1] / [0,0,0,0,0,0,1] with s/2
 *     as SDXL's highest attention resolution; the same rows as the reference's SDXL template).
 */
export const SDXL_SEGMENTATION_DEFAULTS: { cross_weight: number[]; self_weight: number[][] } = Object.freeze({
  cross_weight: [1, 10, 1],
  self_weight: [
    [1, 0, 1],
    [0, 0, 1],
  ],
});

/** A weighted prompt's compel conditioning, host side. */
export interface CompelEmbedding {
  /** (77, D1 + D2) row-major: per encoder compel's weighted hidden_states[-2], concatenated per token. */
  hidden: Float32Array;
  /** (P): text_encoder_2's projected pooled output of the raw prompt text (weights never reach it). */
  pooled: Float32Array;
}

export class StableDiffusionXLPipeline implements DiffusionPipeline {
  readonly segmentationDefaults = SDXL_SEGMENTATION_DEFAULTS;
  /** Cached prompt embeddings; prepareEmbeddings keeps at most `embeddings.limit` (64) beyond its own. */
  readonly embeddings = new EmbeddingCache<{ hidden: Tensor; pooled: Tensor }>((e) => {
    e.hidden.release();
    e.pooled.release();
  });
  private emptyZ: [Float32Array, Float32Array] | undefined;

  private constructor(
    readonly dev: Device,
    readonly dir: string,
    /** tokenizer (pad 49407 in SDXL base); also the one that locates class tokens. */
    readonly tokenizer: CLIPTokenizer,
    /** tokenizer_2 (pad "!" = 0 in SDXL base). */
    readonly tokenizer2: CLIPTokenizer,
    private readonly te1: Reloadable<ClipTextModel>,
    private readonly te2: Reloadable<ClipTextModel>,
    readonly unet: UNet2DConditionModel,
    readonly vae: AutoencoderKL,
    readonly schedule: DDIMSchedule,
  ) {
    StableDiffusionXLPipeline.checkParts(dir, te1.get(), te2.get(), unet);
  }

  /** CLIPTextModel (hidden D1); throws while it is offloaded (offloadTextEncoder). */
  get textEncoder(): ClipTextModel {
    return this.te1.get();
  }

  /** CLIPTextModelWithProjection (hidden D2, projection P); throws while it is offloaded. */
  get textEncoder2(): ClipTextModel {
    return this.te2.get();
  }

  /** Loads a diffusers SDXL folder or a hub id found in the local Hugging Face cache. */
  static async load(dev: Device, spec: string, opts: PipelineOptions = {}): Promise<StableDiffusionXLPipeline> {
    const dir = resolveModel(spec);
    const index = loadPipelineIndex(dir);
    const paths = index.components;
    if (!paths.text_encoder_2 || !paths.tokenizer_2) {
      throw new Error(`${join(dir, 'model_index.json')}: an SDXL pipeline needs "text_encoder_2" and "tokenizer_2" components`);
    }
    const textEncoder2Dir = paths.text_encoder_2;
    const matrixDtype = opts.weightDtype === 'f16' && dev.hasF16 ? 'f16' : 'f32';
    const schedCfgPath = join(paths.scheduler, 'scheduler_config.json');
    const schedule = DDIMSchedule.fromConfig(readJsonConfig(schedCfgPath), schedCfgPath);
    const tokenizer = CLIPTokenizer.fromFolder(paths.tokenizer);
    const tokenizer2 = CLIPTokenizer.fromFolder(paths.tokenizer_2);
    // loadParts also frees the parts when they do not fit together (the constructor's checks).
    const reloadable = async (folder: string, what: string): Promise<Reloadable<ClipTextModel>> => {
      const load = (): Promise<ClipTextModel> => ClipTextModel.load(dev, folder, { matrixDtype });
      return new Reloadable(await load(), `${folder}: ${what}`, load);
    };
    return loadParts(async (own) => {
      const textEncoder = own(await reloadable(paths.text_encoder, 'text_encoder'));
      const textEncoder2 = own(await reloadable(textEncoder2Dir, 'text_encoder_2'));
      const unet = own(await UNet2DConditionModel.load(dev, paths.unet, { matrixDtype, predictionType: schedule.predictionType }));
      // force_upcast: SDXL's VAE overflows in f16; it stays f32 whatever the rest uses.
      const vae = own(await AutoencoderKL.load(dev, paths.vae, { matrixDtype: 'f32', decoder: opts.vaeDecoder }));
      return new StableDiffusionXLPipeline(dev, dir, tokenizer, tokenizer2, textEncoder, textEncoder2, unet, vae, schedule);
    });
  }

  /** Checks that the parts fit together (widths of the encoders vs the UNet's inputs). */
  private static checkParts(dir: string, te: ClipTextModel, te2: ClipTextModel, unet: UNet2DConditionModel): void {
    const u = unet.config;
    const where = join(dir, 'unet', 'config.json');
    if (u.additionEmbedType !== 'text_time') {
      throw new Error(`${where}: an SDXL UNet needs "addition_embed_type": "text_time" (got ${JSON.stringify(u.additionEmbedType)})`);
    }
    const P = te2.config.projectionDim;
    if (P === null || !te2.hasProjection) {
      throw new Error(`${join(dir, 'text_encoder_2')}: text_encoder_2 must be a CLIPTextModelWithProjection ("projection_dim" in config.json and "text_projection.weight" in the weights)`);
    }
    const D = te.hiddenSize + te2.hiddenSize;
    if (u.crossAttentionDim !== D) {
      throw new Error(`${where}: "cross_attention_dim" ${u.crossAttentionDim} != text_encoder hidden_size ${te.hiddenSize} + text_encoder_2 hidden_size ${te2.hiddenSize}`);
    }
    const want = 6 * u.additionTimeEmbedDim + P;
    if (u.projectionClassEmbeddingsInputDim !== want) {
      throw new Error(`${where}: "projection_class_embeddings_input_dim" ${u.projectionClassEmbeddingsInputDim} != 6 x addition_time_embed_dim ${u.additionTimeEmbedDim} + text_encoder_2 projection_dim ${P} = ${want}`);
    }
  }

  get predictionType(): 'epsilon' | 'v_prediction' | 'sample' {
    return this.schedule.predictionType;
  }

  /**
   * The reference's add_time_ids (utils/diffusion.py: `_get_add_time_ids((S, S), (0, 0), (S, S))`
   * with S = the VAE config's sample_size): [S, S, 0, 0, S, S] (original size, crop top-left,
   * target size). It depends on neither the image nor the latent size.
   */
  get addTimeIds(): number[] {
    const S = this.vae.sampleSize;
    return [S, S, 0, 0, S, S];
  }

  /**
   * StableDiffusionXLPipeline.encode_prompt for one prompt: both encoders on their own
   * tokenizer's 77 ids without attention mask. Returns hidden (1, 77, D1 + D2) =
   * concat(hidden_states[-2] of each, not final-layer-normed) and pooled (1, P) =
   * text_encoder_2's text_embeds. The caller owns both.
   */
  encodePrompt(prompt: string): { hidden: Tensor; pooled: Tensor } {
    return scope(() => {
      const ids1 = this.tokenizer.call(prompt).inputIds;
      const ids2 = this.tokenizer2.call(prompt).inputIds;
      const o1 = this.textEncoder.forward([ids1], { hiddenStates: true });
      const o2 = this.textEncoder2.forward([ids2], { hiddenStates: true });
      const h1 = penultimate(o1.hiddenStates!);
      const h2 = penultimate(o2.hiddenStates!);
      return { hidden: concat([h1, h2], 2), pooled: o2.textEmbeds! };
    });
  }

  /** Cached {@link encodePrompt} (the caller must not release it). */
  embed(prompt: string): PromptEmbedding {
    let e = this.embeddings.get(prompt);
    if (!e) {
      const out = this.encodePrompt(prompt);
      e = { hidden: keep(out.hidden), pooled: keep(out.pooled) };
      this.embeddings.set(prompt, e);
    }
    return e;
  }

  prepareEmbeddings(prompts: readonly string[]): Promise<void> {
    return this.embeddings.prepare(
      prompts,
      async () => {
        await this.te1.ensure();
        await this.te2.ensure();
      },
      (p) => this.embed(p),
    );
  }

  offloadTextEncoder(): number {
    return this.te1.offload() + this.te2.offload();
  }

  /**
   * tokenizer_2 ids whose text_embeds compel returns as the pooled output: the raw prompt
   * (compel syntax included) padded/truncated to 77, `[1:-1]` wrapped in bos/eos, so the
   * last pad becomes eos (`..., eos, pad, ..., pad, eos`); pooling takes the first eos.
   */
  pooledTokenIds(prompt: string): number[] {
    const ids = this.tokenizer2.call(prompt).inputIds;
    return [this.tokenizer2.bosId, ...ids.slice(1, -1), this.tokenizer2.eosId];
  }

  /**
   * compel's SDXL conditioning (returned_embeddings_type PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
   * requires_pooled [False, True]): compel's weighting per encoder on hidden_states[-2] (encoders
   * called with compel's mask), concatenated; the pooled output from {@link pooledTokenIds}
   * without mask. For an unweighted prompt this equals {@link encodePrompt} up to rounding.
   */
  async compelEmbedding(prompt: string): Promise<CompelEmbedding> {
    const [z1, z2] = await this.compelEmptyZ();
    const encoder = (te: ClipTextModel) => async (ids: number[], mask: number[]): Promise<Float32Array> =>
      scope(() => penultimate(te.forward([ids], { attentionMask: [mask], hiddenStates: true }).hiddenStates!)).toArrayAndRelease();
    const D1 = this.textEncoder.hiddenSize;
    const D2 = this.textEncoder2.hiddenSize;
    const e1 = await encodeWeightedPrompt(prompt, this.tokenizer, encoder(this.textEncoder), D1, { emptyZ: z1 });
    const e2 = await encodeWeightedPrompt(prompt, this.tokenizer2, encoder(this.textEncoder2), D2, { emptyZ: z2 });
    const L = this.tokenizer.maxLength;
    const hidden = new Float32Array(L * (D1 + D2));
    for (let i = 0; i < L; i++) {
      hidden.set(e1.subarray(i * D1, (i + 1) * D1), i * (D1 + D2));
      hidden.set(e2.subarray(i * D2, (i + 1) * D2), i * (D1 + D2) + D1);
    }
    const ids = this.pooledTokenIds(prompt);
    const pooled = await scope(() => this.textEncoder2.forward([ids]).textEmbeds!).toArrayAndRelease();
    return { hidden, pooled };
  }

  /** compel's empty_z per encoder: hidden_states[-2] of `[bos, eos, pad x 75]`, (77, Dk). */
  async compelEmptyZ(): Promise<[Float32Array, Float32Array]> {
    if (!this.emptyZ) {
      const one = (tok: CLIPTokenizer, te: ClipTextModel): Promise<Float32Array> => {
        const ids = emptyPromptIds(tok);
        return scope(() => penultimate(te.forward([ids], { attentionMask: [ids.map(() => 1)], hiddenStates: true }).hiddenStates!)).toArrayAndRelease();
      };
      this.emptyZ = [await one(this.tokenizer, this.textEncoder), await one(this.tokenizer2, this.textEncoder2)];
    }
    return this.emptyZ;
  }

  /**
   * UNet inputs for a batch: encoderHiddenStates (B, 77, D1 + D2), textEmbeds (B, P) and B rows
   * of {@link addTimeIds}. Embeddings without `pooled` are an error (SDXL needs them).
   */
  unetConditioning(embs: readonly PromptEmbedding[]): { encoderHiddenStates: Tensor; textEmbeds: Tensor; timeIds: number[][] } {
    if (embs.length === 0) throw new Error('SDXL: unetConditioning needs at least one embedding');
    const pooled = embs.map((e, i) => {
      if (!e.pooled) throw new Error(`SDXL: prompt embedding ${i} has no pooled text embedding (SDXL's UNet needs text_embeds)`);
      return e.pooled;
    });
    const hs = embs.map((e) => e.hidden);
    const ids = this.addTimeIds;
    return {
      encoderHiddenStates: hs.length === 1 ? hs[0]! : concat(hs, 0),
      textEmbeds: pooled.length === 1 ? pooled[0]! : concat(pooled, 0),
      timeIds: embs.map(() => [...ids]),
    };
  }

  /** Frees cached text embeddings. */
  clearCache(): void {
    this.embeddings.clear();
  }

  release(): void {
    this.clearCache();
    for (const m of [this.te1, this.te2, this.unet, this.vae]) m.release();
  }
}

/** hidden_states[-2] (the input of the last encoder layer); the other states are released by the caller's scope. */
function penultimate(hs: readonly Tensor[]): Tensor {
  const t = hs[hs.length - 2];
  if (!t) throw new Error('SDXL: the text encoder needs at least one layer for hidden_states[-2]');
  return t;
}

export type { PipelineOptions };
