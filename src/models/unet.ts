// UNet2DConditionModel (diffusers) for SD 1.x / 2.x / XL checkpoints. Config differences
// are data (block types, heads, transformer depth, projections, added conditioning);
// weights keep their checkpoint names, so loading is a walk over module paths.
import { join } from 'node:path';
import { findWeightFile, readJsonConfig } from '../io/modelFolder.js';
import { add, attention, concat, conv2d, gluInterleave, groupNorm, layerNorm, linear, permute, prepareConvWeight, unary, upsampleNearest2x } from '../kernels/index.js';
import { Tensor, lastUse, scope, type Device } from '../tensor/index.js';
import type { AttentionStore } from './attentionStore.js';
import { OwnedWeights, WeightLoader, cfg, type WeightSource, isBool, isInt, isIntList, isNum, isStrList, oneOf, type WeightOptions } from './weights.js';

export interface UNetConfig {
  sampleSize: number;
  inChannels: number;
  outChannels: number;
  downBlockTypes: string[];
  upBlockTypes: string[];
  midBlockType: string | null;
  blockOutChannels: number[];
  layersPerBlock: number;
  normNumGroups: number;
  normEps: number;
  crossAttentionDim: number;
  /** Heads per down block (diffusers' attention_head_dim, which it uses as head count). */
  numHeads: number[];
  transformerLayers: number[];
  useLinearProjection: boolean;
  flipSinToCos: boolean;
  freqShift: number;
  predictionType: 'epsilon' | 'v_prediction' | 'sample';
  additionEmbedType: 'text_time' | null;
  additionTimeEmbedDim: number;
  projectionClassEmbeddingsInputDim: number;
  downsamplePadding: number;
}

const DOWN_TYPES = ['CrossAttnDownBlock2D', 'DownBlock2D'];
const UP_TYPES = ['CrossAttnUpBlock2D', 'UpBlock2D'];

function perBlock(v: number | number[], n: number, key: string, where: string): number[] {
  if (typeof v === 'number') return Array(n).fill(v) as number[];
  if (v.length !== n) throw new Error(`${where}: "${key}" must be a number or a list of ${n} numbers, got ${JSON.stringify(v)}`);
  return v;
}

export function parseUNetConfig(c: Record<string, unknown>, where: string): UNetConfig {
  const blockOut = cfg<number[]>(c, 'block_out_channels', [320, 640, 1280, 1280], where, isIntList);
  const n = blockOut.length;
  const downBlockTypes = cfg<string[]>(c, 'down_block_types', ['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D'], where, isStrList);
  const upBlockTypes = cfg<string[]>(c, 'up_block_types', ['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D'], where, isStrList);
  for (const t of downBlockTypes) if (!DOWN_TYPES.includes(t)) throw new Error(`${where}: unsupported value in "down_block_types": "${t}" (supported: ${DOWN_TYPES.join(', ')})`);
  for (const t of upBlockTypes) if (!UP_TYPES.includes(t)) throw new Error(`${where}: unsupported value in "up_block_types": "${t}" (supported: ${UP_TYPES.join(', ')})`);
  if (downBlockTypes.length !== n || upBlockTypes.length !== n) {
    throw new Error(`${where}: "down_block_types" and "up_block_types" must have ${n} entries like "block_out_channels"`);
  }
  const midBlockType = c.mid_block_type === undefined ? 'UNetMidBlock2DCrossAttn' : (c.mid_block_type as string | null);
  if (midBlockType !== null && midBlockType !== 'UNetMidBlock2DCrossAttn') throw new Error(`${where}: unsupported value for "mid_block_type": ${JSON.stringify(midBlockType)}`);
  const isIntOrList = (v: unknown): boolean => isInt(v) || isIntList(v);
  // diffusers' naming quirk: attention_head_dim is really the head count unless
  // num_attention_heads is given.
  const headsRaw = (c.num_attention_heads ?? cfg<number | number[]>(c, 'attention_head_dim', 8, where, isIntOrList)) as number | number[];
  if (!isIntOrList(headsRaw)) throw new Error(`${where}: "num_attention_heads" must be a number or a list of ${n} numbers, got ${JSON.stringify(headsRaw)}`);
  const tl = cfg<number | number[]>(c, 'transformer_layers_per_block', 1, where, isIntOrList);
  const crossDim = cfg<number | number[]>(c, 'cross_attention_dim', 1280, where, isIntOrList);
  if (Array.isArray(crossDim)) throw new Error(`${where}: per-block "cross_attention_dim" lists are not supported`);
  for (const [k, ok] of [
    ['class_embed_type', null],
    ['encoder_hid_dim', null],
    ['time_cond_proj_dim', null],
    ['num_class_embeds', null],
  ] as const) {
    if (c[k] !== undefined && c[k] !== ok) throw new Error(`${where}: unsupported value for "${k}": ${JSON.stringify(c[k])}`);
  }
  cfg(c, 'resnet_time_scale_shift', 'default', where, oneOf('default'));
  cfg(c, 'time_embedding_type', 'positional', where, oneOf('positional'));
  cfg(c, 'act_fn', 'silu', where, oneOf('silu'));
  cfg(c, 'conv_in_kernel', 3, where, oneOf(3));
  cfg(c, 'conv_out_kernel', 3, where, oneOf(3));
  cfg(c, 'dual_cross_attention', false, where, oneOf(false));
  cfg(c, 'only_cross_attention', false, where, oneOf(false));
  cfg(c, 'center_input_sample', false, where, oneOf(false));
  cfg(c, 'mid_block_scale_factor', 1, where, oneOf(1));
  cfg(c, 'attention_type', 'default', where, oneOf('default'));
  cfg(c, 'upcast_attention', false, where, isBool); // no effect: attention runs in f32
  const additionEmbedType = cfg<string | null>(c, 'addition_embed_type', null, where, oneOf('text_time'));
  return {
    sampleSize: cfg(c, 'sample_size', 64, where, isInt),
    inChannels: cfg(c, 'in_channels', 4, where, isInt),
    outChannels: cfg(c, 'out_channels', 4, where, isInt),
    downBlockTypes,
    upBlockTypes,
    midBlockType,
    blockOutChannels: blockOut,
    layersPerBlock: cfg(c, 'layers_per_block', 2, where, isInt),
    normNumGroups: cfg(c, 'norm_num_groups', 32, where, isInt),
    normEps: cfg(c, 'norm_eps', 1e-5, where, isNum),
    crossAttentionDim: crossDim,
    numHeads: perBlock(headsRaw, n, 'attention_head_dim', where),
    transformerLayers: perBlock(tl, n, 'transformer_layers_per_block', where),
    useLinearProjection: cfg(c, 'use_linear_projection', false, where, isBool),
    flipSinToCos: cfg(c, 'flip_sin_to_cos', true, where, isBool),
    freqShift: cfg(c, 'freq_shift', 0, where, isNum),
    predictionType: 'epsilon',
    additionEmbedType: additionEmbedType as 'text_time' | null,
    additionTimeEmbedDim: cfg(c, 'addition_time_embed_dim', 256, where, isInt),
    projectionClassEmbeddingsInputDim: cfg(c, 'projection_class_embeddings_input_dim', 0, where, isInt),
    downsamplePadding: cfg(c, 'downsample_padding', 1, where, isInt),
  };
}

/** Sinusoidal timestep features as diffusers' get_timestep_embedding (float32). */
export function timestepEmbedding(timesteps: readonly number[], dim: number, flipSinToCos: boolean, freqShift: number): Float32Array {
  const half = Math.floor(dim / 2);
  const out = new Float32Array(timesteps.length * dim);
  const f = Math.fround;
  const freqs = new Float32Array(half);
  for (let i = 0; i < half; i++) freqs[i] = Math.exp(f(f(-Math.log(10000) * i) / (half - freqShift)));
  timesteps.forEach((t, b) => {
    for (let i = 0; i < half; i++) {
      const arg = f(t * freqs[i]!);
      const s = Math.sin(arg);
      const c = Math.cos(arg);
      out[b * dim + i] = flipSinToCos ? c : s;
      out[b * dim + half + i] = flipSinToCos ? s : c;
    }
  });
  return out;
}

interface Lin {
  weight: Tensor;
  bias?: Tensor;
}
interface Norm {
  weight: Tensor;
  bias: Tensor;
}
interface Conv {
  weight: Tensor;
  bias: Tensor;
}
interface Resnet {
  norm1: Norm;
  conv1: Conv;
  timeEmbProj: Lin;
  norm2: Norm;
  conv2: Conv;
  shortcut?: Conv;
}
interface TBlock {
  norm1: Norm;
  q1: Lin;
  k1: Lin;
  v1: Lin;
  o1: Lin;
  norm2: Norm;
  q2: Lin;
  k2: Lin;
  v2: Lin;
  o2: Lin;
  norm3: Norm;
  ff1: Lin;
  ff2: Lin;
}
interface Transformer {
  name: string;
  heads: number;
  norm: Norm;
  projIn: Lin | Conv;
  projOut: Lin | Conv;
  blocks: TBlock[];
}
interface DownBlock {
  resnets: Resnet[];
  attentions: Transformer[];
  downsample?: Conv;
}
interface UpBlock {
  resnets: Resnet[];
  attentions: Transformer[];
  upsample?: Conv;
}

export interface UNetInputs {
  /** (B, C, h, w) latents. */
  sample: Tensor;
  /** One integer timestep per batch item (or one for all). */
  timesteps: readonly number[];
  /** (B, 77, crossAttentionDim), or (1, 77, D) broadcast to the batch. */
  encoderHiddenStates: Tensor;
  /** SDXL: pooled text embeddings (B, P). */
  textEmbeds?: Tensor;
  /** SDXL: time ids, B rows of 6 numbers. */
  timeIds?: readonly (readonly number[])[];
  /** Collects head-mean attention probabilities of every attention layer. */
  store?: AttentionStore;
}

export class UNet2DConditionModel {
  private weights!: {
    convIn: Conv;
    time1: Lin;
    time2: Lin;
    add1?: Lin;
    add2?: Lin;
    down: DownBlock[];
    mid?: { resnets: Resnet[]; attentions: Transformer[] };
    up: UpBlock[];
    normOut: Norm;
    convOut: Conv;
  };

  private constructor(
    readonly dev: Device,
    readonly config: UNetConfig,
  ) {}

  static async load(dev: Device, dir: string, opts: WeightOptions & { predictionType?: UNetConfig['predictionType'] } = {}): Promise<UNet2DConditionModel> {
    const where = join(dir, 'config.json');
    const config = parseUNetConfig(readJsonConfig(where), where);
    if (opts.predictionType) config.predictionType = opts.predictionType;
    const w = WeightLoader.open(dev, findWeightFile(dir, 'diffusion_pytorch_model', opts.matrixDtype === 'f16'), opts);
    try {
      return UNet2DConditionModel.fromWeights(dev, config, w);
    } finally {
      w.close();
    }
  }

  /** Builds the model with the given weights source (checkpoint or random benchmark weights). */
  static fromWeights(dev: Device, config: UNetConfig, w: WeightSource): UNet2DConditionModel {
    const m = new UNet2DConditionModel(dev, config);
    m.loadWeights(w);
    return m;
  }

  /** Every GPU tensor the model holds (loaded weights and their re-laid forms), for release(). */
  private owned!: OwnedWeights;

  /** Frees the model's weights; the model is unusable afterwards. */
  release(): void {
    this.owned.release();
  }

  /** Loads every weight; on a failure, what was loaded so far is freed before the error goes on. */
  private loadWeights(src: WeightSource): void {
    const w = (this.owned = new OwnedWeights(src));
    w.build(() => this.buildWeights(w));
  }

  private buildWeights(w: OwnedWeights): void {
    const c = this.config;
    const ch = c.blockOutChannels;
    const temb = ch[0]! * 4;
    const norm = (p: string, n: number): Norm => ({ weight: w.load(`${p}.weight`, [n]), bias: w.load(`${p}.bias`, [n]) });
    const lin = (p: string, out: number, inp: number, bias = true): Lin => ({
      weight: w.load(`${p}.weight`, [out, inp], 'matrix'),
      bias: bias ? w.load(`${p}.bias`, [out]) : undefined,
    });
    // The GEGLU projection (value rows, then gate rows) re-laid once into (value, gate) row
    // pairs, so that linear's glu writes value * gelu(gate) straight from the matmul.
    const gegluLin = (p: string, out: number, inp: number): Lin => {
      const l = lin(p, out, inp);
      const relaid = (t: Tensor): Tensor => w.replace(t, gluInterleave(t));
      return { weight: relaid(l.weight), bias: l.bias && relaid(l.bias) };
    };
    // Conv weights that the direct kernel reads are converted to its layout as they load and
    // the original freed at once (prepareConvWeight; it leaves the Winograd / im2col ones).
    const conv = (p: string, out: number, inp: number, k: number): Conv => {
      const raw = w.load(`${p}.weight`, [out, inp, k, k], 'matrix');
      return { weight: w.replace(raw, prepareConvWeight(raw)), bias: w.load(`${p}.bias`, [out]) };
    };
    const resnet = (p: string, inp: number, out: number): Resnet => ({
      norm1: norm(`${p}.norm1`, inp),
      conv1: conv(`${p}.conv1`, out, inp, 3),
      timeEmbProj: lin(`${p}.time_emb_proj`, out, temb),
      norm2: norm(`${p}.norm2`, out),
      conv2: conv(`${p}.conv2`, out, out, 3),
      shortcut: inp !== out ? conv(`${p}.conv_shortcut`, out, inp, 1) : undefined,
    });
    const transformer = (p: string, C: number, heads: number, depth: number): Transformer => {
      const D = c.crossAttentionDim;
      const blocks: TBlock[] = [];
      for (let i = 0; i < depth; i++) {
        const b = `${p}.transformer_blocks.${i}`;
        blocks.push({
          norm1: norm(`${b}.norm1`, C),
          q1: lin(`${b}.attn1.to_q`, C, C, false),
          k1: lin(`${b}.attn1.to_k`, C, C, false),
          v1: lin(`${b}.attn1.to_v`, C, C, false),
          o1: lin(`${b}.attn1.to_out.0`, C, C),
          norm2: norm(`${b}.norm2`, C),
          q2: lin(`${b}.attn2.to_q`, C, C, false),
          k2: lin(`${b}.attn2.to_k`, C, D, false),
          v2: lin(`${b}.attn2.to_v`, C, D, false),
          o2: lin(`${b}.attn2.to_out.0`, C, C),
          norm3: norm(`${b}.norm3`, C),
          ff1: gegluLin(`${b}.ff.net.0.proj`, C * 8, C),
          ff2: lin(`${b}.ff.net.2`, C, C * 4),
        });
      }
      const proj = (q: string): Lin | Conv => (c.useLinearProjection ? lin(q, C, C) : conv(q, C, C, 1));
      return { name: p, heads, norm: norm(`${p}.norm`, C), projIn: proj(`${p}.proj_in`), projOut: proj(`${p}.proj_out`), blocks };
    };

    const down: DownBlock[] = [];
    let outCh = ch[0]!;
    const skipChannels: number[] = [outCh];
    c.downBlockTypes.forEach((type, i) => {
      const inCh = outCh;
      outCh = ch[i]!;
      const final = i === ch.length - 1;
      const p = `down_blocks.${i}`;
      const blk: DownBlock = { resnets: [], attentions: [] };
      for (let j = 0; j < c.layersPerBlock; j++) {
        blk.resnets.push(resnet(`${p}.resnets.${j}`, j === 0 ? inCh : outCh, outCh));
        if (type === 'CrossAttnDownBlock2D') blk.attentions.push(transformer(`${p}.attentions.${j}`, outCh, c.numHeads[i]!, c.transformerLayers[i]!));
        skipChannels.push(outCh);
      }
      if (!final) {
        blk.downsample = conv(`${p}.downsamplers.0.conv`, outCh, outCh, 3);
        skipChannels.push(outCh);
      }
      down.push(blk);
    });

    const last = ch[ch.length - 1]!;
    let mid: { resnets: Resnet[]; attentions: Transformer[] } | undefined;
    if (c.midBlockType) {
      const depth = c.transformerLayers[c.transformerLayers.length - 1]!;
      mid = {
        resnets: [resnet('mid_block.resnets.0', last, last), resnet('mid_block.resnets.1', last, last)],
        attentions: [transformer('mid_block.attentions.0', last, c.numHeads[c.numHeads.length - 1]!, depth)],
      };
    }

    const up: UpBlock[] = [];
    const rev = [...ch].reverse();
    const revHeads = [...c.numHeads].reverse();
    const revDepth = [...c.transformerLayers].reverse();
    let prevOut = rev[0]!;
    c.upBlockTypes.forEach((type, i) => {
      const out = rev[i]!;
      const inCh = rev[Math.min(i + 1, ch.length - 1)]!;
      const final = i === ch.length - 1;
      const p = `up_blocks.${i}`;
      const blk: UpBlock = { resnets: [], attentions: [] };
      for (let j = 0; j < c.layersPerBlock + 1; j++) {
        const skip = j === c.layersPerBlock ? inCh : out;
        const rin = j === 0 ? prevOut : out;
        blk.resnets.push(resnet(`${p}.resnets.${j}`, rin + skip, out));
        if (type === 'CrossAttnUpBlock2D') blk.attentions.push(transformer(`${p}.attentions.${j}`, out, revHeads[i]!, revDepth[i]!));
      }
      if (!final) blk.upsample = conv(`${p}.upsamplers.0.conv`, out, out, 3);
      prevOut = out;
      up.push(blk);
    });

    let add1: Lin | undefined;
    let add2: Lin | undefined;
    if (c.additionEmbedType === 'text_time') {
      add1 = lin('add_embedding.linear_1', temb, c.projectionClassEmbeddingsInputDim);
      add2 = lin('add_embedding.linear_2', temb, temb);
    }
    this.weights = {
      convIn: conv('conv_in', ch[0]!, c.inChannels, 3),
      time1: lin('time_embedding.linear_1', temb, ch[0]!),
      time2: lin('time_embedding.linear_2', temb, temb),
      add1,
      add2,
      down,
      mid,
      up,
      normOut: norm('conv_norm_out', ch[0]!),
      convOut: conv('conv_out', c.outChannels, ch[0]!, 3),
    };
  }

  /**
   * The attention layers in forward call order with their grid side for a square latent of
   * `side`: the layout the attention store will have, known before any forward.
   */
  attentionLayout(side: number): { name: string; kind: 'self' | 'cross'; res: number }[] {
    const c = this.config;
    const n = c.blockOutChannels.length;
    const out: { name: string; kind: 'self' | 'cross'; res: number }[] = [];
    const push = (prefix: string, res: number, depth: number): void => {
      for (let k = 0; k < depth; k++) {
        out.push({ name: `${prefix}.transformer_blocks.${k}.attn1`, kind: 'self', res });
        out.push({ name: `${prefix}.transformer_blocks.${k}.attn2`, kind: 'cross', res });
      }
    };
    c.downBlockTypes.forEach((t, i) => {
      if (t !== 'CrossAttnDownBlock2D') return;
      for (let j = 0; j < c.layersPerBlock; j++) push(`down_blocks.${i}.attentions.${j}`, side / 2 ** i, c.transformerLayers[i]!);
    });
    if (c.midBlockType) push('mid_block.attentions.0', side / 2 ** (n - 1), c.transformerLayers[n - 1]!);
    const revDepth = [...c.transformerLayers].reverse();
    c.upBlockTypes.forEach((t, i) => {
      if (t !== 'CrossAttnUpBlock2D') return;
      for (let j = 0; j < c.layersPerBlock + 1; j++) push(`up_blocks.${i}.attentions.${j}`, side / 2 ** (n - 1 - i), revDepth[i]!);
    });
    return out;
  }

  /** Noise prediction (B, outChannels, h, w) in the model's prediction type. */
  forward(inp: UNetInputs): Tensor {
    const { sample, store } = inp;
    const [B, , h, w] = sample.shape as [number, number, number, number];
    this.owned.checkLive('UNet2DConditionModel');
    const c = this.config;
    const W = this.weights;
    const levels = c.blockOutChannels.length - 1;
    if (h % 2 ** levels !== 0 || w % 2 ** levels !== 0) {
      throw new Error(`UNet: latent size ${h}x${w} must be a multiple of ${2 ** levels} for this model`);
    }
    if (sample.shape[1] !== c.inChannels) throw new Error(`UNet: sample has ${sample.shape[1]} channels, the model expects ${c.inChannels}`);
    const ehs = inp.encoderHiddenStates;
    if (ehs.shape.length !== 3 || ehs.shape[2] !== c.crossAttentionDim || (ehs.shape[0] !== B && ehs.shape[0] !== 1)) {
      throw new Error(`UNet: encoder_hidden_states ${ehs.describe()} must be (${B}, L, ${c.crossAttentionDim})`);
    }
    const ts = inp.timesteps.length === 1 ? Array(B).fill(inp.timesteps[0]) : [...inp.timesteps];
    if (ts.length !== B) throw new Error(`UNet: ${inp.timesteps.length} timesteps for a batch of ${B}`);
    store?.beginForward(B);
    return scope(() => {
      // Time embedding: (B, 4*C0); every resnet projects silu(temb).
      const tproj = Tensor.fromArray(this.dev, timestepEmbedding(ts, c.blockOutChannels[0]!, c.flipSinToCos, c.freqShift), [B, c.blockOutChannels[0]!]);
      let temb = linear(linear(tproj, W.time1.weight, W.time1.bias, { act: 'silu' }), W.time2.weight, W.time2.bias);
      if (W.add1 && W.add2) temb = add(temb, this.addedEmbedding(inp, B));
      const tembAct = unary(temb, 'silu');
      const ctx = ehs.shape[0] === B ? ehs : concat(Array<Tensor>(B).fill(ehs), 0); // (B, L, D)
      // Blocks release what they consume as soon as the next block has been recorded: the
      // whole-forward scope alone would keep every block's output alive until the end (SD 1.5
      // at batch 2: ~300 MB more at the last up block). A down-path output stays while it is
      // a skip; the pool hands a released buffer out again only to work recorded after it.
      let x = conv2d(sample, W.convIn.weight, { bias: W.convIn.bias, padding: 1 });
      const skips: Tensor[] = [x];
      const advance = (next: Tensor): void => {
        if (!skips.includes(x)) x.release();
        x = next;
      };
      W.down.forEach((blk) => {
        blk.resnets.forEach((r, j) => {
          advance(this.resnet(x, tembAct, r));
          const at = blk.attentions[j];
          if (at) advance(this.transformer(x, ctx, at, store));
          skips.push(x);
        });
        if (blk.downsample) {
          advance(conv2d(x, blk.downsample.weight, { bias: blk.downsample.bias, stride: 2, padding: c.downsamplePadding }));
          skips.push(x);
        }
      });
      if (W.mid) {
        advance(this.resnet(x, tembAct, W.mid.resnets[0]!));
        W.mid.attentions.forEach((at, k) => {
          advance(this.transformer(x, ctx, at, store));
          advance(this.resnet(x, tembAct, W.mid!.resnets[k + 1]!));
        });
      }
      for (const blk of W.up) {
        blk.resnets.forEach((r, j) => {
          const skip = skips.pop()!;
          const cat = concat([x, skip], 1);
          advance(this.resnet(cat, tembAct, r));
          cat.release();
          skip.release();
          const at = blk.attentions[j];
          if (at) advance(this.transformer(x, ctx, at, store));
        });
        if (blk.upsample) {
          const up = upsampleNearest2x(x);
          advance(conv2d(up, blk.upsample.weight, { bias: blk.upsample.bias, padding: 1 }));
          up.release();
        }
      }
      const hn = groupNorm(x, c.normNumGroups, W.normOut.weight, W.normOut.bias, c.normEps, { silu: true });
      return conv2d(hn, W.convOut.weight, { bias: W.convOut.bias, padding: 1 });
    });
  }

  /** SDXL text_time conditioning: add_embedding(concat(text_embeds, time_proj(time_ids))). */
  private addedEmbedding(inp: UNetInputs, B: number): Tensor {
    const c = this.config;
    if (!inp.textEmbeds || !inp.timeIds) throw new Error('UNet: this model (addition_embed_type text_time) needs textEmbeds and timeIds');
    const ids = inp.timeIds.length === 1 ? Array(B).fill(inp.timeIds[0]) : inp.timeIds;
    if (ids.length !== B) throw new Error(`UNet: ${inp.timeIds.length} time_ids rows for a batch of ${B}`);
    const tdim = c.additionTimeEmbedDim;
    const te = inp.textEmbeds.shape[inp.textEmbeds.shape.length - 1]!;
    const nIds = ids[0]!.length;
    if (te + nIds * tdim !== c.projectionClassEmbeddingsInputDim) {
      throw new Error(`UNet: text_embeds width ${te} + ${nIds} time ids x ${tdim} != projection_class_embeddings_input_dim ${c.projectionClassEmbeddingsInputDim}`);
    }
    const proj = timestepEmbedding(ids.flat(), tdim, c.flipSinToCos, c.freqShift); // (B*6, tdim)
    const timeFeat = Tensor.fromArray(this.dev, proj, [B, nIds * tdim]);
    const text = inp.textEmbeds.shape[0] === B ? inp.textEmbeds : concat(Array(B).fill(inp.textEmbeds), 0);
    const addIn = concat([text.reshape([B, te]), timeFeat], 1);
    const W = this.weights;
    return linear(linear(addIn, W.add1!.weight, W.add1!.bias, { act: 'silu' }), W.add2!.weight, W.add2!.bias);
  }

  // Each block runs in its own scope so its intermediates are freed as soon as it returns
  // (a whole-forward scope would keep every activation of the UNet alive at once).
  private resnet(x: Tensor, tembAct: Tensor, r: Resnet): Tensor {
    return scope(() => this.resnetBody(x, tembAct, r));
  }

  private resnetBody(x: Tensor, tembAct: Tensor, r: Resnet): Tensor {
    const c = this.config;
    const [B, , ,] = x.shape as [number, number, number, number];
    let h = groupNorm(x, c.normNumGroups, r.norm1.weight, r.norm1.bias, c.normEps, { silu: true });
    h = lastUse(h, conv2d(h, r.conv1.weight, { bias: r.conv1.bias, padding: 1 }));
    const t = linear(tembAct, r.timeEmbProj.weight, r.timeEmbProj.bias); // (B, Co)
    h = lastUse(h, add(h, t.reshape([B, t.shape[1]!, 1, 1])));
    h = lastUse(h, groupNorm(h, c.normNumGroups, r.norm2.weight, r.norm2.bias, c.normEps, { silu: true }));
    const shortcut = r.shortcut ? conv2d(x, r.shortcut.weight, { bias: r.shortcut.bias }) : x;
    return conv2d(h, r.conv2.weight, { bias: r.conv2.bias, padding: 1, residual: shortcut });
  }

  private transformer(x: Tensor, ctx: Tensor, t: Transformer, store?: AttentionStore): Tensor {
    return scope(() => this.transformerBody(x, ctx, t, store));
  }

  /** One BasicTransformerBlock: self-attention (attn1), cross-attention (attn2), GEGLU feed-forward. hs: (B, N, C).
   *  Each intermediate is released after its last use (at batch 2 and 64x64 latents they are
   *  10.5 MB each, the feed-forward's 42 MB); hs stays the caller's. */
  private transformerBlock(hs: Tensor, ctx: Tensor, b: TBlock, name: string, heads: number, h: number, w: number, B: number, N: number, store?: AttentionStore): Tensor {
    const sumBatch = store ? !store.perBatch : undefined;
    // attention(q, k, v) then the output projection with the residual; n (the normed input) is
    // released once q (and for self-attention k, v) are recorded.
    const attend = (n: Tensor, kv: Tensor | null, p: { q: Lin; k: Lin; v: Lin; o: Lin }, residual: Tensor, kind: 'self' | 'cross', suffix: string): Tensor => {
      const src = kv ?? n;
      const probs = store?.next(kind, `${name}.${suffix}`, h, w, B, kind === 'self' ? N : src.shape[1]!);
      const q = linear(n, p.q.weight), k = linear(src, p.k.weight), v = linear(src, p.v.weight);
      n.release();
      const a = attention(q, k, v, heads, { probsOut: probs, probsSumBatch: sumBatch });
      q.release();
      k.release();
      v.release();
      return lastUse(a, linear(a, p.o.weight, p.o.bias, { residual }));
    };
    const x1 = attend(layerNorm(hs, b.norm1.weight, b.norm1.bias, 1e-5), null, { q: b.q1, k: b.k1, v: b.v1, o: b.o1 }, hs, 'self', 'attn1');
    const x2 = lastUse(x1, attend(layerNorm(x1, b.norm2.weight, b.norm2.bias, 1e-5), ctx, { q: b.q2, k: b.k2, v: b.v2, o: b.o2 }, x1, 'cross', 'attn2'));
    const n = layerNorm(x2, b.norm3.weight, b.norm3.bias, 1e-5);
    const ff = lastUse(n, linear(n, b.ff1.weight, b.ff1.bias, { glu: 'geglu' })); // ff1 re-laid at load (gegluLin)
    const out = lastUse(ff, linear(ff, b.ff2.weight, b.ff2.bias, { residual: x2 }));
    x2.release();
    return out;
  }

  private transformerBody(x: Tensor, ctx: Tensor, t: Transformer, store?: AttentionStore): Tensor {
    const [B, C, h, w] = x.shape as [number, number, number, number];
    const N = h * w;
    let hs = groupNorm(x, this.config.normNumGroups, t.norm.weight, t.norm.bias, 1e-6);
    if (this.config.useLinearProjection) {
      hs = lastUse(hs, permute(hs.reshape([B, C, N]), [0, 2, 1])); // (B, N, C)
      hs = lastUse(hs, linear(hs, t.projIn.weight, t.projIn.bias));
    } else {
      hs = lastUse(hs, conv2d(hs, t.projIn.weight, { bias: t.projIn.bias }));
      hs = lastUse(hs, permute(hs.reshape([B, C, N]), [0, 2, 1])); // (B, N, C)
    }
    t.blocks.forEach((b, k) => {
      const input = hs;
      hs = lastUse(input, scope(() => this.transformerBlock(input, ctx, b, `${t.name}.transformer_blocks.${k}`, t.heads, h, w, B, N, store)));
    });
    if (this.config.useLinearProjection) {
      hs = linear(hs, t.projOut.weight, t.projOut.bias);
      const back = permute(hs, [0, 2, 1]).reshape([B, C, h, w]);
      return add(back, x);
    }
    const back = permute(hs, [0, 2, 1]).reshape([B, C, h, w]);
    return conv2d(back, t.projOut.weight, { bias: t.projOut.bias, residual: x });
  }
}
