// transformers' CLIPModel + CLIPProcessor, for the CLIP score of evaluate_generation.py: a model
// folder in the Hugging Face layout of openai/clip-vit-base-patch32 / clip-vit-large-patch14
// (config.json, model.safetensors, preprocessor_config.json, vocab.json + merges.txt).
//
// logits_per_image[i, t] = exp(logit_scale) * <image_embeds[i], text_embeds[t]>, both embeddings
// projected (bias-free) and divided by their L2 norm; logit_scale is the trained parameter in the
// weights (ln 100 for the OpenAI checkpoints), not the config's logit_scale_init_value.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { ImageRGB } from '../io/image.js';
import { findWeightFile, readJsonConfig } from '../io/modelFolder.js';
import { clipOutputSize, loadClipImageProcessorConfig, preprocessForClip, type ClipImageProcessorConfig } from '../elbo/clipPreprocess.js';
import { scopeAsync, type Device } from '../tensor/index.js';
import { ClipTextModel, parseClipTextConfig, type ClipTextConfig } from './clip.js';
import { ClipVisionModel, parseClipVisionConfig, type ClipVisionConfig } from './clipVision.js';
import { CLIPTokenizer } from './tokenizer.js';
import { OwnedWeights, WeightLoader, cfg, isNum, type WeightOptions } from './weights.js';

export interface ClipModelConfig {
  text: ClipTextConfig;
  vision: ClipVisionConfig;
  /** Width of both projections (top-level projection_dim, default 512). */
  projectionDim: number;
  /** logit_scale_init_value: only the initial value; the loaded weight is what scores use. */
  logitScaleInit: number;
}

/**
 * Parses a CLIPModel config.json (old nested style with `text_config` / `vision_config` full of
 * generic keys, optional `*_config_dict` overrides, or the new style). Absent keys take
 * transformers' defaults.
 */
export function parseClipModelConfig(raw: Record<string, unknown>, where: string): ClipModelConfig {
  const mt = raw['model_type'];
  const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
  if ((mt !== undefined && mt !== 'clip') || !(isObj(raw['vision_config']) || isObj(raw['vision_config_dict']))) {
    throw new Error(
      `${where}: not a CLIPModel config (model_type ${JSON.stringify(mt)}, vision_config ${isObj(raw['vision_config']) ? 'present' : 'missing'}); ` +
        'the CLIP score needs a full CLIP model folder such as openai/clip-vit-large-patch14',
    );
  }
  const projectionDim = cfg(raw, 'projection_dim', 512, where, (v) => Number.isInteger(v) && (v as number) > 0);
  const textRaw: Record<string, unknown> = { ...raw, projection_dim: projectionDim };
  if (isObj(raw['text_config_dict'])) textRaw['text_config'] = { ...(isObj(raw['text_config']) ? raw['text_config'] : {}), ...raw['text_config_dict'] };
  else if (!isObj(raw['text_config'])) textRaw['text_config'] = {};
  const text = parseClipTextConfig(textRaw, `${where} (text_config)`);
  const vision = parseClipVisionConfig({ ...raw, projection_dim: projectionDim }, where);
  return { text: { ...text, projectionDim }, vision, projectionDim, logitScaleInit: cfg(raw, 'logit_scale_init_value', 2.6592, where, isNum) };
}

/** Token ids of a `CLIPProcessor(text=prompts, padding=True)` call. */
export interface ClipTextInputs {
  /** (T, L): bos, tokens, eos, then the pad id up to the longest prompt. */
  inputIds: number[][];
  /** (T, L): 1 for real tokens, 0 for padding. */
  attentionMask: number[][];
}

/** Outputs of {@link ClipModel.forward}, host arrays, row-major. */
export interface ClipForwardResult {
  /** (I, P) visual_projection(pooled), before normalisation. */
  imageEmbedsUnnormalized: Float32Array;
  /** (T, P) text_projection(pooled), before normalisation. */
  textEmbedsUnnormalized: Float32Array;
  /** (I, P) L2-normalised. */
  imageEmbeds: Float32Array;
  /** (T, P) L2-normalised. */
  textEmbeds: Float32Array;
  /** (I, T): logits_per_image. */
  logitsPerImage: Float32Array;
  /** (T, I): logits_per_text. */
  logitsPerText: Float32Array;
}

/** x / sqrt(sum(x^2)) per row of (rows, dim), each step rounded to float32 as torch does. */
export function l2NormalizeRows(x: Float32Array, rows: number, dim: number): Float32Array {
  const out = new Float32Array(rows * dim);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    for (let i = 0; i < dim; i++) s += Math.fround(x[r * dim + i]! * x[r * dim + i]!);
    const n = Math.fround(Math.sqrt(Math.fround(s)));
    for (let i = 0; i < dim; i++) out[r * dim + i] = Math.fround(x[r * dim + i]! / n);
  }
  return out;
}

/**
 * logits_per_image (I, T) = exp(logitScale) * imageEmbeds (I, P) @ textEmbeds (T, P)^T, in float32
 * (dot products accumulated in double, then rounded).
 */
export function clipLogits(imageEmbeds: Float32Array, textEmbeds: Float32Array, dim: number, logitScale: number): Float32Array {
  const I = imageEmbeds.length / dim;
  const T = textEmbeds.length / dim;
  const scale = Math.fround(Math.exp(Math.fround(logitScale)));
  const out = new Float32Array(I * T);
  for (let i = 0; i < I; i++) {
    for (let t = 0; t < T; t++) {
      let s = 0;
      for (let k = 0; k < dim; k++) s += imageEmbeds[i * dim + k]! * textEmbeds[t * dim + k]!;
      out[i * T + t] = Math.fround(Math.fround(s) * scale);
    }
  }
  return out;
}

export class ClipModel {
  private constructor(
    readonly dir: string,
    readonly config: ClipModelConfig,
    readonly text: ClipTextModel,
    readonly vision: ClipVisionModel,
    readonly tokenizer: CLIPTokenizer,
    readonly processor: ClipImageProcessorConfig,
    /** The `logit_scale` weight (a log); logits are scaled by exp(logitScale). */
    readonly logitScale: number,
  ) {}

  /**
   * Loads a CLIPModel folder: config.json, model.safetensors (`text_model.*`, `vision_model.*`,
   * `text_projection.weight`, `visual_projection.weight`, `logit_scale`; the int64 position_ids
   * buffers are ignored), preprocessor_config.json and the tokenizer files.
   */
  static async load(dev: Device, dir: string, opts: WeightOptions = {}): Promise<ClipModel> {
    const where = join(dir, 'config.json');
    if (!existsSync(where) && existsSync(join(dir, 'model_index.json'))) {
      throw new Error(`${dir}: is a diffusers pipeline folder; the CLIP score needs a CLIPModel folder such as openai/clip-vit-large-patch14`);
    }
    const config = parseClipModelConfig(readJsonConfig(where), where);
    const processor = loadClipImageProcessorConfig(dir);
    const [oh, ow] = clipOutputSize(config.vision.imageSize, config.vision.imageSize, processor);
    if (oh !== config.vision.imageSize || ow !== config.vision.imageSize) {
      throw new Error(
        `${join(dir, 'preprocessor_config.json')}: images come out ${ow}x${oh}, but the vision model (${where}) takes ` +
          `${config.vision.imageSize}x${config.vision.imageSize} (crop_size must equal vision_config.image_size)`,
      );
    }
    const tokenizer = CLIPTokenizer.fromFolder(dir);
    const w = WeightLoader.open(dev, findWeightFile(dir, 'model', opts.matrixDtype === 'f16'), opts);
    try {
      for (const n of ['text_projection.weight', 'visual_projection.weight', 'logit_scale']) {
        if (!w.has(n)) throw new Error(`${w.where}: missing weight "${n}"; expected a full CLIPModel checkpoint (text and vision towers with projections)`);
      }
      const ls = w.file.info('logit_scale');
      if (ls.shape.length > 1 || (ls.shape.length === 1 && ls.shape[0] !== 1)) {
        throw new Error(`${w.where}: weight "logit_scale" has shape [${ls.shape.join(', ')}], expected a scalar`);
      }
      const logitScale = w.file.readF32('logit_scale')[0]!;
      // Each tower owns its weights; loading both through one more owner frees the text
      // tower's too when the vision tower fails.
      return new OwnedWeights(w).build((both) => {
        const text = ClipTextModel.fromWeights(dev, config.text, both, 'text_model.', 'text_projection.weight');
        const vision = ClipVisionModel.fromWeights(dev, config.vision, both, 'vision_model.', 'visual_projection.weight');
        return new ClipModel(dir, config, text, vision, tokenizer, processor, logitScale);
      });
    } finally {
      w.close();
    }
  }

  /** Frees both towers' weights; the model is unusable afterwards. */
  release(): void {
    this.text.release();
    this.vision.release();
  }

  get projectionDim(): number {
    return this.config.projectionDim;
  }

  /**
   * `CLIPProcessor(text=prompts, padding=True)`: bos + tokens + eos, padded with the pad id to
   * the longest prompt, never truncated (as evaluate_generation.py calls it). A prompt longer
   * than the text model's positions fails there too: here with an error naming it.
   */
  tokenize(prompts: readonly string[]): ClipTextInputs {
    if (prompts.length === 0) throw new Error('CLIP: no prompts to encode');
    const seqs = prompts.map((p) => this.tokenizer.encode(p));
    const max = this.config.text.maxPositions;
    seqs.forEach((s, i) => {
      if (s.length > max) {
        throw new Error(
          `CLIP: prompt ${i} has ${s.length} tokens with bos/eos, more than the text model's ${max} positions ` +
            `(CLIPProcessor does not truncate here, and transformers fails on it as well): ${JSON.stringify(prompts[i])}`,
        );
      }
    });
    const L = Math.max(...seqs.map((s) => s.length));
    return {
      inputIds: seqs.map((s) => [...s, ...new Array<number>(L - s.length).fill(this.tokenizer.padId)]),
      attentionMask: seqs.map((s) => [...new Array<number>(s.length).fill(1), ...new Array<number>(L - s.length).fill(0)]),
    };
  }

  /** `CLIPProcessor(images=...)`: (I, 3, S, S) float32 pixel_values. */
  preprocess(images: readonly ImageRGB[]): Float32Array {
    const S = this.config.vision.imageSize;
    const n = 3 * S * S;
    const out = new Float32Array(images.length * n);
    images.forEach((img, i) => out.set(preprocessForClip(img, this.processor), i * n));
    return out;
  }

  /** (I, P) visual_projection(pooled) of (I, 3, S, S) pixel_values, not normalised. */
  async imageFeatures(pixels: Float32Array, batch: number): Promise<Float32Array> {
    return scopeAsync(async () => {
      const out = this.vision.forward(pixels, batch);
      return out.imageEmbeds!.toArray();
    });
  }

  /** (T, P) text_projection(pooled) of token ids (one batched call), not normalised. */
  async textFeatures(inputs: ClipTextInputs): Promise<Float32Array> {
    return scopeAsync(async () => {
      const out = this.text.forward(inputs.inputIds, { attentionMask: inputs.attentionMask });
      if (!out.textEmbeds) throw new Error(`${this.dir}: the text model has no text_projection`);
      return out.textEmbeds.toArray();
    });
  }

  /** `CLIPModel(input_ids, attention_mask, pixel_values)`: embeddings and both logit matrices. */
  async forward(inputs: ClipTextInputs, pixels: Float32Array, batch: number): Promise<ClipForwardResult> {
    const P = this.projectionDim;
    const imageEmbedsUnnormalized = await this.imageFeatures(pixels, batch);
    const textEmbedsUnnormalized = await this.textFeatures(inputs);
    const T = inputs.inputIds.length;
    const imageEmbeds = l2NormalizeRows(imageEmbedsUnnormalized, batch, P);
    const textEmbeds = l2NormalizeRows(textEmbedsUnnormalized, T, P);
    const logitsPerImage = clipLogits(imageEmbeds, textEmbeds, P, this.logitScale);
    const logitsPerText = new Float32Array(T * batch);
    for (let i = 0; i < batch; i++) for (let t = 0; t < T; t++) logitsPerText[t * batch + i] = logitsPerImage[i * T + t]!;
    return { imageEmbedsUnnormalized, textEmbedsUnnormalized, imageEmbeds, textEmbeds, logitsPerImage, logitsPerText };
  }

  /**
   * One batched `CLIPProcessor(text=prompts, images=images, padding=True)` + `CLIPModel` call.
   * @returns logits_per_image as rows: result[i][t] for image i and prompt t
   */
  async logitsPerImage(images: readonly ImageRGB[], prompts: readonly string[]): Promise<number[][]> {
    if (images.length === 0) throw new Error('CLIP: no images to score');
    const r = await this.forward(this.tokenize(prompts), this.preprocess(images), images.length);
    const T = prompts.length;
    return images.map((_, i) => Array.from(r.logitsPerImage.subarray(i * T, (i + 1) * T)));
  }
}
