// A Stable Diffusion 1.x / 2.x pipeline folder loaded into our models: tokenizer, text
// encoder, UNet, VAE and the scheduler tables. Text embeddings are cached by prompt.
import { join } from 'node:path';
import { loadPipelineIndex, readJsonConfig, resolveModel } from '../io/modelFolder.js';
import { Tensor, keep, type Device, type DType } from '../tensor/index.js';
import { ClipTextModel } from './clip.js';
import { DDIMSchedule } from './scheduler.js';
import { CLIPTokenizer } from './tokenizer.js';
import { UNet2DConditionModel } from './unet.js';
import { AutoencoderKL } from './vae.js';

export interface PipelineOptions {
  /** Storage of matrix / conv weights; 'f16' where the adapter has shader-f16. */
  weightDtype?: DType;
}

export class StableDiffusionPipeline {
  private embCache = new Map<string, Tensor>();

  private constructor(
    readonly dev: Device,
    readonly dir: string,
    readonly tokenizer: CLIPTokenizer,
    readonly textEncoder: ClipTextModel,
    readonly unet: UNet2DConditionModel,
    readonly vae: AutoencoderKL,
    readonly schedule: DDIMSchedule,
  ) {}

  /** Loads a diffusers folder or a hub id found in the local Hugging Face cache. */
  static async load(dev: Device, spec: string, opts: PipelineOptions = {}): Promise<StableDiffusionPipeline> {
    const dir = resolveModel(spec);
    const index = loadPipelineIndex(dir);
    const paths = index.components;
    if (paths.text_encoder_2) {
      throw new Error(`${dir}: this is an SDXL pipeline (it has text_encoder_2); SDXL is not supported yet, use an SD 1.x / 2.x pipeline`);
    }
    const matrixDtype = opts.weightDtype === 'f16' && dev.hasF16 ? 'f16' : 'f32';
    const schedCfgPath = join(paths.scheduler, 'scheduler_config.json');
    const schedule = DDIMSchedule.fromConfig(readJsonConfig(schedCfgPath), schedCfgPath);
    const tokenizer = CLIPTokenizer.fromFolder(paths.tokenizer);
    const textEncoder = await ClipTextModel.load(dev, paths.text_encoder, { matrixDtype });
    const unet = await UNet2DConditionModel.load(dev, paths.unet, { matrixDtype, predictionType: schedule.predictionType });
    // The VAE stays f32 (diffusers' force_upcast): its activations are large and its
    // latents feed every later step.
    const vae = await AutoencoderKL.load(dev, paths.vae, { matrixDtype: 'f32' });
    return new StableDiffusionPipeline(dev, dir, tokenizer, textEncoder, unet, vae, schedule);
  }

  /** A pipeline from already-built parts (benchmarks with random weights, tests). */
  static fromParts(
    dev: Device,
    parts: { tokenizer: CLIPTokenizer; textEncoder: ClipTextModel; unet: UNet2DConditionModel; vae: AutoencoderKL; schedule: DDIMSchedule },
    dir = '(in memory)',
  ): StableDiffusionPipeline {
    return new StableDiffusionPipeline(dev, dir, parts.tokenizer, parts.textEncoder, parts.unet, parts.vae, parts.schedule);
  }

  get predictionType(): 'epsilon' | 'v_prediction' | 'sample' {
    return this.schedule.predictionType;
  }

  /**
   * The (1, 77, D) text embedding of a prompt (last hidden state, padded to 77 tokens,
   * truncated as the tokenizer does), cached for the pipeline's lifetime.
   */
  encodePrompt(prompt: string): Tensor {
    let e = this.embCache.get(prompt);
    if (!e) {
      const { inputIds } = this.tokenizer.call(prompt);
      const out = this.textEncoder.forward([inputIds]);
      out.pooled.release();
      out.textEmbeds?.release();
      e = keep(out.lastHiddenState);
      this.embCache.set(prompt, e);
    }
    return e;
  }

  /** Frees cached text embeddings. */
  clearCache(): void {
    for (const t of this.embCache.values()) t.release();
    this.embCache.clear();
  }
}
