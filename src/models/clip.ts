// CLIP text transformer (transformers' CLIPTextModel / CLIPTextModelWithProjection), as
// Stable Diffusion uses it: token + position embeddings, pre-LN encoder layers with a
// causal mask, final LayerNorm, pooled output at the end-of-text token.
import { join } from 'node:path';
import { readJsonConfig } from '../io/modelFolder.js';
import { embedding, layerNorm, linear, add } from '../kernels/index.js';
import { clipEncoderLayer, loadClipEncoderLayers, loadLayerNorm, type ClipEncoderLayer, type ClipLN } from './clipEncoder.js';
import { Tensor, scope, type Device } from '../tensor/index.js';
import { OwnedWeights, WeightLoader, cfg, type WeightSource, isInt, isNum, oneOf, type WeightOptions } from './weights.js';
import { findWeightFile } from '../io/modelFolder.js';

export interface ClipTextConfig {
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  maxPositions: number;
  hiddenAct: 'quick_gelu' | 'gelu';
  layerNormEps: number;
  eosTokenId: number;
  projectionDim: number | null;
}

export function parseClipTextConfig(raw: Record<string, unknown>, where: string): ClipTextConfig {
  // CLIPModel configs nest the text part under text_config.
  const c = (raw.text_config && typeof raw.text_config === 'object' ? raw.text_config : raw) as Record<string, unknown>;
  const act = cfg(c, 'hidden_act', 'quick_gelu', where, oneOf('quick_gelu', 'gelu'));
  return {
    vocabSize: cfg(c, 'vocab_size', 49408, where, isInt),
    hiddenSize: cfg(c, 'hidden_size', 512, where, isInt),
    intermediateSize: cfg(c, 'intermediate_size', 2048, where, isInt),
    numLayers: cfg(c, 'num_hidden_layers', 12, where, isInt),
    numHeads: cfg(c, 'num_attention_heads', 8, where, isInt),
    maxPositions: cfg(c, 'max_position_embeddings', 77, where, isInt),
    hiddenAct: act as 'quick_gelu' | 'gelu',
    layerNormEps: cfg(c, 'layer_norm_eps', 1e-5, where, isNum),
    eosTokenId: cfg(c, 'eos_token_id', 2, where, isInt),
    projectionDim: (raw.projection_dim as number | undefined) ?? (c.projection_dim as number | undefined) ?? null,
  };
}

type LN = ClipLN;
type ClipLayer = ClipEncoderLayer;

export interface ClipTextOutput {
  /** (B, L, H) after the final LayerNorm. */
  lastHiddenState: Tensor;
  /** (B, H): last hidden state at the end-of-text position. */
  pooled: Tensor;
  /** (B, P): text_projection(pooled) when the model has a projection. */
  textEmbeds?: Tensor;
  /** hidden_states[0] = embeddings, [i] = output of layer i (before the final LayerNorm). */
  hiddenStates?: Tensor[];
}

export class ClipTextModel {
  private constructor(
    readonly dev: Device,
    readonly config: ClipTextConfig,
    private tokenEmb: Tensor,
    private posEmb: Tensor,
    private layers: ClipLayer[],
    private finalLn: LN,
    private projection: Tensor | undefined,
    private readonly weights: OwnedWeights,
  ) {}

  /**
   * Loads a text encoder folder (config.json + model(.fp16).safetensors), or the text
   * tower of a CLIPModel folder when `prefix` is 'text_model' inside a joint file.
   */
  static async load(dev: Device, dir: string, opts: WeightOptions = {}): Promise<ClipTextModel> {
    const where = join(dir, 'config.json');
    const config = parseClipTextConfig(readJsonConfig(where), where);
    const w = WeightLoader.open(dev, findWeightFile(dir, 'model', opts.matrixDtype === 'f16'), opts);
    try {
      return ClipTextModel.fromWeights(dev, config, w, 'text_model.', 'text_projection.weight');
    } finally {
      w.close();
    }
  }

  /**
   * Builds the model from `src` (weights under `prefix`, the projection under `projectionName`
   * when config.projectionDim is set and the source has it). The model owns what it loads: a
   * load that fails part-way frees it before the error goes on.
   */
  static fromWeights(dev: Device, config: ClipTextConfig, src: WeightSource, prefix: string, projectionName: string): ClipTextModel {
    const H = config.hiddenSize;
    const F = config.intermediateSize;
    return new OwnedWeights(src).build((w) => {
      const ln = (p: string): LN => loadLayerNorm(w, p, H);
      // The token table stays f32 unless f16 was asked for (it is gathered, not multiplied).
      const tokenEmb = w.load(`${prefix}embeddings.token_embedding.weight`, [config.vocabSize, H], 'matrix');
      const posEmb = w.load(`${prefix}embeddings.position_embedding.weight`, [config.maxPositions, H]);
      const layers = loadClipEncoderLayers(w, prefix, config.numLayers, H, F);
      const finalLn = ln(`${prefix}final_layer_norm`);
      let projection: Tensor | undefined;
      if (config.projectionDim !== null && w.has(projectionName)) {
        projection = w.load(projectionName, [config.projectionDim, H], 'matrix');
      }
      return new ClipTextModel(dev, config, tokenEmb, posEmb, layers, finalLn, projection, w);
    });
  }

  /** Frees the model's weights; the model is unusable afterwards. */
  release(): void {
    this.weights.release();
  }

  /** Bytes of GPU memory the weights hold. */
  get weightBytes(): number {
    return this.weights.bytes;
  }

  get hiddenSize(): number {
    return this.config.hiddenSize;
  }

  /** Whether forward() returns textEmbeds (projection_dim set and text_projection.weight present). */
  get hasProjection(): boolean {
    return this.projection !== undefined;
  }

  /**
   * ids: B sequences of equal length L <= maxPositions. attentionMask (B x L of 1/0) masks
   * keys as transformers does (added to the causal mask). Returns tensors the caller owns.
   */
  forward(ids: readonly (readonly number[])[], opts: { attentionMask?: readonly (readonly number[])[]; hiddenStates?: boolean } = {}): ClipTextOutput {
    const B = ids.length;
    const L = ids[0]?.length ?? 0;
    const { hiddenSize: H, numHeads, maxPositions, vocabSize } = this.config;
    this.weights.checkLive('CLIP text encoder');
    if (B === 0 || L === 0) throw new Error('CLIP text encoder: empty batch of token ids');
    if (L > maxPositions) throw new Error(`CLIP text encoder: ${L} tokens, more than max_position_embeddings ${maxPositions}`);
    for (const row of ids) {
      if (row.length !== L) throw new Error(`CLIP text encoder: token sequences of different lengths (${L} and ${row.length})`);
      for (const id of row) if (!(id >= 0 && id < vocabSize)) throw new Error(`CLIP text encoder: token id ${id} outside the vocabulary (0..${vocabSize - 1})`);
    }
    return scope(() => {
      const flat = ids.flat();
      const tok = embedding(this.tokenEmb, flat).reshape([B, L, H]); // (B, L, H)
      const pos = embedding(this.posEmb, Array.from({ length: L }, (_, i) => i)).reshape([1, L, H]);
      let x = add(tok, pos);
      const hidden: Tensor[] = [x];
      let keyMask: Tensor | undefined;
      if (opts.attentionMask) keyMask = Tensor.fromArray(this.dev, opts.attentionMask.flat(), [B, L]);
      const act = this.config.hiddenAct;
      for (const layer of this.layers) {
        x = clipEncoderLayer(x, layer, numHeads, this.config.layerNormEps, act, { causal: true, keyMask });
        hidden.push(x);
      }
      const last = layerNorm(x, this.finalLn.weight, this.finalLn.bias, this.config.layerNormEps);
      const pooled = embedding(last.reshape([B * L, H]), ids.map((row, b) => b * L + this.eosPosition(row)));
      const out: ClipTextOutput = { lastHiddenState: last, pooled };
      if (this.projection) out.textEmbeds = linear(pooled, this.projection);
      if (opts.hiddenStates) out.hiddenStates = hidden;
      return out;
    });
  }

  /** transformers: legacy configs (eos_token_id 2) pool at argmax(ids), others at the first eos. */
  private eosPosition(row: readonly number[]): number {
    if (this.config.eosTokenId === 2) {
      let best = 0;
      for (let i = 1; i < row.length; i++) if (row[i]! > row[best]!) best = i;
      return best;
    }
    const i = row.indexOf(this.config.eosTokenId);
    return i >= 0 ? i : row.length - 1;
  }
}
