// A Stable Diffusion 1.x / 2.x pipeline folder loaded into our models: tokenizer, text
// encoder, UNet, VAE and the scheduler tables. Text embeddings are cached by prompt.
import { join } from 'node:path';
import { loadPipelineIndex, readJsonConfig, resolveModel } from '../io/modelFolder.js';
import { concat } from '../kernels/index.js';
import { Tensor, keep, type Device, type DType } from '../tensor/index.js';
import { ClipTextModel } from './clip.js';
import { DDIMSchedule } from './scheduler.js';
import { CLIPTokenizer } from './tokenizer.js';
import { UNet2DConditionModel } from './unet.js';
import { AutoencoderKL } from './vae.js';
import { EmbeddingCache } from './embeddingCache.js';
import { Reloadable, loadParts } from './weights.js';

/** A prompt's conditioning: hidden states (1, 77, D), and SDXL's pooled embedding (1, P). */
export interface PromptEmbedding {
  hidden: Tensor;
  pooled?: Tensor;
}

/**
 * What the method needs of a pipeline (SD 1.x/2.x here; SDXL in sdxlPipeline.ts): the
 * tokenizer that locates class tokens, the UNet, VAE and schedule, prompt embeddings, and
 * the extra UNet inputs of a batch (SDXL's pooled text embeddings and time ids).
 */
export interface DiffusionPipeline {
  readonly dev: Device;
  readonly dir: string;
  readonly tokenizer: CLIPTokenizer;
  readonly unet: UNet2DConditionModel;
  readonly vae: AutoencoderKL;
  readonly schedule: DDIMSchedule;
  /** Cached embedding of a prompt (the caller must not release it). */
  embed(prompt: string): PromptEmbedding;
  /**
   * Embeds `prompts` ahead of their embed() calls, loading an offloaded text encoder again
   * first. They become the newest of the pipeline's cached embeddings; the oldest beyond its
   * limit (64 other prompts) are freed, so embeddings from earlier calls may be gone.
   */
  prepareEmbeddings(prompts: readonly string[]): Promise<void>;
  /**
   * Frees the text encoder's weights until prepareEmbeddings() needs them for a new prompt;
   * embeddings already made stay. Returns the bytes freed: 0 where the encoder cannot be
   * loaded again (parts built in memory without a loader) or is offloaded already.
   */
  offloadTextEncoder(): number;
  /** UNet inputs for a batch of embeddings: encoderHiddenStates (B, 77, D) plus extras. */
  unetConditioning(embs: readonly PromptEmbedding[]): { encoderHiddenStates: Tensor; textEmbeds?: Tensor; timeIds?: number[][] };
  /** Default segmentation weights for this model's attention layout (SD: the reference's). */
  readonly segmentationDefaults?: { cross_weight: number[]; self_weight: number[][] };
  /** Frees the cached embeddings and every model's weights; the pipeline is unusable afterwards. */
  release(): void;
}

export interface PipelineOptions {
  /** Storage of matrix / conv weights; 'f16' where the adapter has shader-f16. */
  weightDtype?: DType;
  /** Load the VAE's decoder (default true); segmentation needs only the encoder. */
  vaeDecoder?: boolean;
}

export class StableDiffusionPipeline implements DiffusionPipeline {
  /** Cached prompt embeddings; prepareEmbeddings keeps at most `embeddings.limit` (64) beyond its own. */
  readonly embeddings = new EmbeddingCache<Tensor>((t) => t.release());

  private constructor(
    readonly dev: Device,
    readonly dir: string,
    readonly tokenizer: CLIPTokenizer,
    private readonly te: Reloadable<ClipTextModel>,
    readonly unet: UNet2DConditionModel,
    readonly vae: AutoencoderKL,
    readonly schedule: DDIMSchedule,
  ) {}

  /** The CLIP text encoder; throws while it is offloaded (offloadTextEncoder). */
  get textEncoder(): ClipTextModel {
    return this.te.get();
  }

  /** Loads a diffusers folder or a hub id found in the local Hugging Face cache. */
  static async load(dev: Device, spec: string, opts: PipelineOptions = {}): Promise<StableDiffusionPipeline> {
    const dir = resolveModel(spec);
    const index = loadPipelineIndex(dir);
    const paths = index.components;
    if (paths.text_encoder_2) {
      throw new Error(`${dir}: this is an SDXL pipeline (it has text_encoder_2); load it with loadPipeline()`);
    }
    const matrixDtype = opts.weightDtype === 'f16' && dev.hasF16 ? 'f16' : 'f32';
    const schedCfgPath = join(paths.scheduler, 'scheduler_config.json');
    const schedule = DDIMSchedule.fromConfig(readJsonConfig(schedCfgPath), schedCfgPath);
    const tokenizer = CLIPTokenizer.fromFolder(paths.tokenizer);
    const loadTextEncoder = (): Promise<ClipTextModel> => ClipTextModel.load(dev, paths.text_encoder, { matrixDtype });
    return loadParts(async (own) => {
      const textEncoder = own(new Reloadable(await loadTextEncoder(), `${paths.text_encoder}: the text encoder`, loadTextEncoder));
      const unet = own(await UNet2DConditionModel.load(dev, paths.unet, { matrixDtype, predictionType: schedule.predictionType }));
      // The VAE stays f32 (diffusers' force_upcast): its activations are large and its
      // latents feed every later step.
      const vae = own(await AutoencoderKL.load(dev, paths.vae, { matrixDtype: 'f32', decoder: opts.vaeDecoder }));
      return new StableDiffusionPipeline(dev, dir, tokenizer, textEncoder, unet, vae, schedule);
    });
  }

  /**
   * A pipeline from already-built parts (benchmarks with random weights, tests). With
   * `loadTextEncoder` (a fresh copy of the same encoder) the text encoder can be offloaded.
   */
  static fromParts(
    dev: Device,
    parts: { tokenizer: CLIPTokenizer; textEncoder: ClipTextModel; unet: UNet2DConditionModel; vae: AutoencoderKL; schedule: DDIMSchedule; loadTextEncoder?: () => Promise<ClipTextModel> },
    dir = '(in memory)',
  ): StableDiffusionPipeline {
    const te = new Reloadable(parts.textEncoder, `${dir}: the text encoder`, parts.loadTextEncoder);
    return new StableDiffusionPipeline(dev, dir, parts.tokenizer, te, parts.unet, parts.vae, parts.schedule);
  }

  get predictionType(): 'epsilon' | 'v_prediction' | 'sample' {
    return this.schedule.predictionType;
  }

  /**
   * The (1, 77, D) text embedding of a prompt (last hidden state, padded to 77 tokens,
   * truncated as the tokenizer does), cached (see {@link embeddings}).
   */
  encodePrompt(prompt: string): Tensor {
    let e = this.embeddings.get(prompt);
    if (!e) {
      const { inputIds } = this.tokenizer.call(prompt);
      const out = this.textEncoder.forward([inputIds]);
      out.pooled.release();
      out.textEmbeds?.release();
      e = keep(out.lastHiddenState);
      this.embeddings.set(prompt, e);
    }
    return e;
  }

  embed(prompt: string): PromptEmbedding {
    return { hidden: this.encodePrompt(prompt) };
  }

  prepareEmbeddings(prompts: readonly string[]): Promise<void> {
    return this.embeddings.prepare(prompts, () => this.te.ensure(), (p) => this.encodePrompt(p));
  }

  offloadTextEncoder(): number {
    return this.te.offload();
  }

  unetConditioning(embs: readonly PromptEmbedding[]): { encoderHiddenStates: Tensor } {
    const hs = embs.map((e) => e.hidden);
    return { encoderHiddenStates: hs.length === 1 ? hs[0]! : concat(hs, 0) };
  }

  /** Frees cached text embeddings. */
  clearCache(): void {
    this.embeddings.clear();
  }

  release(): void {
    this.clearCache();
    this.te.release();
    this.unet.release();
    this.vae.release();
  }
}

/** Loads an SD 1.x / 2.x or SDXL pipeline folder (or hub id in the local cache). */
export async function loadPipeline(dev: Device, spec: string, opts: PipelineOptions = {}): Promise<DiffusionPipeline> {
  const dir = resolveModel(spec);
  const index = loadPipelineIndex(dir);
  if (index.components.text_encoder_2) {
    // The SDXL module is optional at build time; a variable keeps the import dynamic.
    const sdxlModule = './sdxlPipeline.js';
    const mod = (await import(sdxlModule).catch((e: Error) => {
      throw new Error(`${dir}: SDXL pipelines are not supported in this build (${e.message})`);
    })) as { StableDiffusionXLPipeline: { load(dev: Device, dir: string, opts: PipelineOptions): Promise<DiffusionPipeline> } };
    return mod.StableDiffusionXLPipeline.load(dev, dir, opts);
  }
  return StableDiffusionPipeline.load(dev, dir, opts);
}
