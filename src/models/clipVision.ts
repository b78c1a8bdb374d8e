// CLIP vision transformer (transformers' CLIPVisionTransformer, the `vision_model` of CLIPModel):
// patch embedding (a stride = kernel Conv2d without bias, computed here as a matmul over the
// unfolded patches), class token, position embeddings, `pre_layrnorm` (sic), pre-LN encoder
// layers without a mask, `post_layernorm` on the class token, and the bias-free
// `visual_projection` of CLIPModel.
import { concat, embedding, layerNorm, linear, add } from '../kernels/index.js';
import { clipEncoderLayer, loadClipEncoderLayers, loadLayerNorm, type ClipEncoderLayer, type ClipLN } from './clipEncoder.js';
import { Tensor, scope, type Device } from '../tensor/index.js';
import { OwnedWeights, cfg, isInt, isNum, oneOf, type WeightSource } from './weights.js';

export interface ClipVisionConfig {
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numChannels: number;
  imageSize: number;
  patchSize: number;
  hiddenAct: 'quick_gelu' | 'gelu';
  layerNormEps: number;
  /** Width of visual_projection (CLIPModel's top-level projection_dim); used when the weights have it. */
  projectionDim: number;
}

/**
 * The vision part of a CLIP config: `vision_config` of a CLIPModel config.json (with
 * `vision_config_dict`, when an object, taking precedence as transformers does), or a
 * CLIPVisionModel config itself. Absent keys take CLIPVisionConfig's defaults (ViT-B/32);
 * generic keys (`id2label`, `top_k`, ...) are ignored.
 */
export function parseClipVisionConfig(raw: Record<string, unknown>, where: string): ClipVisionConfig {
  const obj = (v: unknown): Record<string, unknown> | undefined => (v && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined);
  const nested = obj(raw['vision_config']);
  const override = obj(raw['vision_config_dict']);
  const c: Record<string, unknown> = nested || override ? { ...(nested ?? {}), ...(override ?? {}) } : raw;
  const w = nested || override ? `${where} (vision_config)` : where;
  const pos = (v: unknown): boolean => isInt(v) && (v as number) > 0;
  // CLIPModel's visual_projection width is its top-level projection_dim (CLIPConfig default 512);
  // a standalone CLIPVisionModelWithProjection config carries its own.
  const pdRaw = nested || override ? raw : c;
  const config: ClipVisionConfig = {
    hiddenSize: cfg(c, 'hidden_size', 768, w, pos),
    intermediateSize: cfg(c, 'intermediate_size', 3072, w, pos),
    numLayers: cfg(c, 'num_hidden_layers', 12, w, pos),
    numHeads: cfg(c, 'num_attention_heads', 12, w, pos),
    numChannels: cfg(c, 'num_channels', 3, w, pos),
    imageSize: cfg(c, 'image_size', 224, w, pos),
    patchSize: cfg(c, 'patch_size', 32, w, pos),
    hiddenAct: cfg(c, 'hidden_act', 'quick_gelu', w, oneOf('quick_gelu', 'gelu')) as 'quick_gelu' | 'gelu',
    layerNormEps: cfg(c, 'layer_norm_eps', 1e-5, w, isNum),
    projectionDim: cfg(pdRaw, 'projection_dim', 512, where, pos),
  };
  if (config.hiddenSize % config.numHeads !== 0) {
    throw new Error(`${w}: hidden_size ${config.hiddenSize} is not divisible by num_attention_heads ${config.numHeads}`);
  }
  if (config.imageSize % config.patchSize !== 0) {
    throw new Error(`${w}: image_size ${config.imageSize} is not a multiple of patch_size ${config.patchSize}`);
  }
  return config;
}

type LN = ClipLN;
type Layer = ClipEncoderLayer;

export interface ClipVisionOutput {
  /** (B, N, H), N = 1 + (imageSize / patchSize)^2: the last encoder layer's output (no final norm). */
  lastHiddenState: Tensor;
  /** (B, H): post_layernorm(lastHiddenState[:, 0]). */
  pooled: Tensor;
  /** (B, P): visual_projection(pooled), not normalised; when the model has the projection. */
  imageEmbeds?: Tensor;
  /** (B, N, H): class + patch embeddings + position embeddings, before pre_layrnorm. */
  embeddings?: Tensor;
  /** hidden_states[0] = pre_layrnorm(embeddings), [i] = output of encoder layer i. */
  hiddenStates?: Tensor[];
}

/**
 * Unfolds (B, C, S, S) pixels into non-overlapping p x p patches: (B * G * G, C * p * p), patch
 * rows in raster order (gy, gx), each row ordered (c, ky, kx) like a Conv2d weight (O, C, p, p).
 */
export function unfoldPatches(pixels: Float32Array, batch: number, channels: number, size: number, patch: number): Float32Array {
  const g = size / patch;
  const K = channels * patch * patch;
  const out = new Float32Array(batch * g * g * K);
  let o = 0;
  for (let b = 0; b < batch; b++) {
    for (let gy = 0; gy < g; gy++) {
      for (let gx = 0; gx < g; gx++) {
        for (let c = 0; c < channels; c++) {
          const base = ((b * channels + c) * size + gy * patch) * size + gx * patch;
          for (let ky = 0; ky < patch; ky++) {
            const row = base + ky * size;
            for (let kx = 0; kx < patch; kx++) out[o++] = pixels[row + kx]!;
          }
        }
      }
    }
  }
  return out;
}

export class ClipVisionModel {
  private constructor(
    readonly dev: Device,
    readonly config: ClipVisionConfig,
    private patchWeight: Tensor,
    private classEmb: Tensor,
    private posEmb: Tensor,
    private preLn: LN,
    private layers: Layer[],
    private postLn: LN,
    private projection: Tensor | undefined,
    private readonly weights: OwnedWeights,
  ) {}

  /**
   * Loads the tower from `src` under `prefix` ('vision_model.' in a CLIPModel file) and, when
   * config.projectionDim is set and the file has it, `projectionName` ('visual_projection.weight').
   * The model owns what it loads: a load that fails part-way frees it before the error goes on.
   */
  static fromWeights(dev: Device, config: ClipVisionConfig, src: WeightSource, prefix = 'vision_model.', projectionName = 'visual_projection.weight'): ClipVisionModel {
    const { hiddenSize: H, intermediateSize: F, numChannels: C, patchSize: p } = config;
    const N = ClipVisionModel.positions(config);
    return new OwnedWeights(src).build((w) => {
      const ln = (name: string): LN => loadLayerNorm(w, name, H);
      // Stored (H, C, p, p) / (H,); uploaded as the (H, C*p*p) matrix of the unfolded conv and a (1, H) table.
      const patchWeight = w.load(`${prefix}embeddings.patch_embedding.weight`, [H, C * p * p], 'matrix', [[H, C, p, p]]);
      const classEmb = w.load(`${prefix}embeddings.class_embedding`, [1, H], 'vector', [[H]]);
      const posEmb = w.load(`${prefix}embeddings.position_embedding.weight`, [N, H]);
      const preLn = ln(`${prefix}pre_layrnorm`);
      const layers = loadClipEncoderLayers(w, prefix, config.numLayers, H, F);
      const postLn = ln(`${prefix}post_layernorm`);
      let projection: Tensor | undefined;
      if (w.has(projectionName)) projection = w.load(projectionName, [config.projectionDim, H], 'matrix');
      return new ClipVisionModel(dev, config, patchWeight, classEmb, posEmb, preLn, layers, postLn, projection, w);
    });
  }

  /** Frees the model's weights; the model is unusable afterwards. */
  release(): void {
    this.weights.release();
  }

  /** Number of tokens: the class token plus (imageSize / patchSize)^2 patches. */
  static positions(config: ClipVisionConfig): number {
    const g = config.imageSize / config.patchSize;
    return 1 + g * g;
  }

  get hasProjection(): boolean {
    return this.projection !== undefined;
  }

  /**
   * pixels: (B, C, S, S) float32 `pixel_values` (S = config.imageSize, as CLIPImageProcessor
   * gives them). Returns tensors the caller owns (release them, or run inside scope()).
   */
  forward(pixels: Float32Array, batch: number, opts: { hiddenStates?: boolean } = {}): ClipVisionOutput {
    const { hiddenSize: H, numChannels: C, imageSize: S, patchSize: p, numHeads, layerNormEps: eps, hiddenAct: act } = this.config;
    this.weights.checkLive('CLIP vision model');
    if (!Number.isInteger(batch) || batch < 1) throw new Error(`CLIP vision model: batch must be a positive integer, got ${batch}`);
    if (pixels.length !== batch * C * S * S) {
      throw new Error(
        `CLIP vision model: pixel_values has ${pixels.length} values, expected (${batch}, ${C}, ${S}, ${S}) = ${batch * C * S * S} ` +
          `(the model takes ${S}x${S} images: preprocess with the folder's preprocessor_config.json)`,
      );
    }
    const B = batch;
    const N = ClipVisionModel.positions(this.config);
    const P = N - 1;
    return scope(() => {
      const patches = Tensor.fromArray(this.dev, unfoldPatches(pixels, B, C, S, p), [B * P, C * p * p]);
      const patchEmb = linear(patches, this.patchWeight).reshape([B, P, H]); // Conv2d, no bias
      const cls = embedding(this.classEmb, new Array<number>(B).fill(0)).reshape([B, 1, H]);
      const emb = add(concat([cls, patchEmb], 1), this.posEmb.reshape([1, N, H])); // (B, N, H)
      let x = layerNorm(emb, this.preLn.weight, this.preLn.bias, eps);
      const hidden: Tensor[] = [x];
      for (const l of this.layers) {
        x = clipEncoderLayer(x, l, numHeads, eps, act);
        hidden.push(x);
      }
      const clsOut = embedding(x.reshape([B * N, H]), Array.from({ length: B }, (_, b) => b * N)); // (B, H)
      const pooled = layerNorm(clsOut, this.postLn.weight, this.postLn.bias, eps);
      const out: ClipVisionOutput = { lastHiddenState: x, pooled };
      if (this.projection) out.imageEmbeds = linear(pooled, this.projection);
      if (opts.hiddenStates) {
        out.embeddings = emb;
        out.hiddenStates = hidden;
      }
      return out;
    });
  }
}
