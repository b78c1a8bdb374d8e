// AutoencoderKL (diffusers `models/autoencoders/autoencoder_kl.py` + `vae.py`), the Stable
// Diffusion VAE: image (B, 3, H, W) in [-1, 1] <-> latent (B, 4, H/8, W/8).
//
//   encode: conv_in -> DownEncoderBlock2D x n (resnets, stride-2 conv except the last)
//           -> mid (resnet, attention, resnet) -> GroupNorm+SiLU -> conv_out -> quant_conv
//           -> (mean, logvar) of the diagonal Gaussian posterior
//   decode: post_quant_conv -> conv_in -> mid -> UpDecoderBlock2D x n (layers+1 resnets,
//           nearest 2x + conv except the last) -> GroupNorm+SiLU -> conv_out
//
// Module attributes mirror the checkpoint keys (`encoder.down_blocks.0.resnets.1.conv2.weight`),
// so loading is a walk over names. Every norm in the VAE uses eps 1e-6.
import { basename, join } from 'node:path';
import { findWeightFile, readJsonConfig } from '../io/modelFolder.js';
import {
  addScalar,
  clamp,
  affine,
  attention,
  conv2d,
  convWeightShape,
  groupNorm,
  linear,
  mulScalar,
  prepareConvWeight,
  slice,
  transpose,
  upsampleNearest2x,
} from '../kernels/index.js';
import type { ConvNorm } from '../kernels/conv.js';
import { Tensor, lastUse, scope, shapeStr, type Device } from '../tensor/index.js';
import { OwnedWeights, WeightLoader, cfg, type WeightSource, isBool, isInt, isIntList, isNum, isStrList, oneOf, type WeightOptions } from './weights.js';

const EPS = 1e-6;
/** DiagonalGaussianDistribution clamps logvar to this range. */
const LOGVAR_MIN = -30;
const LOGVAR_MAX = 20;

export interface VaeConfig {
  inChannels: number;
  outChannels: number;
  latentChannels: number;
  blockOutChannels: number[];
  layersPerBlock: number;
  normNumGroups: number;
  sampleSize: number;
  scalingFactor: number;
  /** null = no shift (SD 1.x / 2.x / XL). */
  shiftFactor: number | null;
  useQuantConv: boolean;
  usePostQuantConv: boolean;
  midBlockAddAttention: boolean;
}

/**
 * Reads vae/config.json with the AutoencoderKL defaults for absent keys. `where` names the file
 * in errors. `force_upcast` is accepted and has no effect (the VAE always runs in f32 here);
 * `latents_mean` / `latents_std` are ignored, as the method's `encode_vae_image` ignores them.
 */
export function parseVaeConfig(c: Record<string, unknown>, where: string): VaeConfig {
  cfg(c, '_class_name', 'AutoencoderKL', where, oneOf('AutoencoderKL'));
  const positive = (v: unknown): boolean => isInt(v) && (v as number) > 0;
  const blockOutChannels = cfg<number[]>(c, 'block_out_channels', [64], where, (v) => isIntList(v) && (v as number[]).length > 0 && (v as number[]).every(positive));
  const n = blockOutChannels.length;
  const down = cfg<string[]>(c, 'down_block_types', ['DownEncoderBlock2D'], where, (v) => isStrList(v) && (v as string[]).every((s) => s === 'DownEncoderBlock2D'));
  const up = cfg<string[]>(c, 'up_block_types', ['UpDecoderBlock2D'], where, (v) => isStrList(v) && (v as string[]).every((s) => s === 'UpDecoderBlock2D'));
  if (down.length !== n) throw new Error(`${where}: "down_block_types" has ${down.length} entries but "block_out_channels" has ${n}`);
  if (up.length !== n) throw new Error(`${where}: "up_block_types" has ${up.length} entries but "block_out_channels" has ${n}`);
  cfg(c, 'act_fn', 'silu', where, oneOf('silu', 'swish'));
  cfg(c, 'force_upcast', true, where, isBool);
  const normNumGroups = cfg(c, 'norm_num_groups', 32, where, positive);
  for (const ch of blockOutChannels) {
    if (ch % normNumGroups !== 0) {
      throw new Error(`${where}: unsupported value for "norm_num_groups": ${normNumGroups} does not divide block_out_channels entry ${ch}`);
    }
  }
  return {
    inChannels: cfg(c, 'in_channels', 3, where, positive),
    outChannels: cfg(c, 'out_channels', 3, where, positive),
    latentChannels: cfg(c, 'latent_channels', 4, where, positive),
    blockOutChannels,
    layersPerBlock: cfg(c, 'layers_per_block', 1, where, positive),
    normNumGroups,
    sampleSize: cfg(c, 'sample_size', 32, where, positive),
    scalingFactor: cfg(c, 'scaling_factor', 0.18215, where, (v) => isNum(v) && (v as number) > 0),
    shiftFactor: cfg<number | null>(c, 'shift_factor', null, where, isNum),
    useQuantConv: cfg(c, 'use_quant_conv', true, where, isBool),
    usePostQuantConv: cfg(c, 'use_post_quant_conv', true, where, isBool),
    midBlockAddAttention: cfg(c, 'mid_block_add_attention', true, where, isBool),
  };
}

// ------------------------------------------------------------------------------- modules

class Conv {
  constructor(
    readonly weight: Tensor, // (Co, Ci, k, k), f32 or f16; or prepared (prepareConvWeight)
    readonly bias: Tensor, // (Co)
  ) {}
  static load(w: OwnedWeights, p: string, co: number, ci: number, k: number): Conv {
    // Converted to the direct conv's layout at load (prepareConvWeight), the original freed
    // at once: conv2d would otherwise keep a second, re-laid copy of every 3x3 weight.
    const raw = w.load(`${p}.weight`, [co, ci, k, k], 'matrix');
    return new Conv(w.replace(raw, prepareConvWeight(raw)), w.load(`${p}.bias`, [co]));
  }
  /** (B, Ci, H, W) -> (B, Co, H', W'); `residual` is added after the bias. */
  forward(x: Tensor, opts: { stride?: number; padding?: number | readonly [number, number, number, number]; residual?: Tensor; norm?: ConvNorm } = {}): Tensor {
    return conv2d(x, this.weight, { bias: this.bias, stride: opts.stride, padding: opts.padding ?? (convWeightShape(this.weight)[2]! >> 1), residual: opts.residual, norm: opts.norm });
  }
}

class GroupNorm {
  constructor(
    readonly weight: Tensor,
    readonly bias: Tensor,
    readonly groups: number,
  ) {}
  static load(w: OwnedWeights, p: string, c: number, groups: number): GroupNorm {
    return new GroupNorm(w.load(`${p}.weight`, [c]), w.load(`${p}.bias`, [c]), groups);
  }
  forward(x: Tensor, silu = false): Tensor {
    return groupNorm(x, this.groups, this.weight, this.bias, EPS, { silu });
  }
  /** This norm (+ SiLU) as conv2d's `norm` option: the conv normalises its input first. */
  beforeConv(lastUse = false): ConvNorm {
    return { groups: this.groups, gamma: this.weight, beta: this.bias, eps: EPS, silu: true, lastUse };
  }
}

/** ResnetBlock2D without time embedding: out = shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x)))))). */
class ResnetBlock2D {
  constructor(
    readonly norm1: GroupNorm,
    readonly conv1: Conv,
    readonly norm2: GroupNorm,
    readonly conv2: Conv,
    readonly convShortcut: Conv | null, // 1x1 when in != out channels
  ) {}
  static load(w: OwnedWeights, p: string, cin: number, cout: number, groups: number): ResnetBlock2D {
    return new ResnetBlock2D(
      GroupNorm.load(w, `${p}.norm1`, cin, groups),
      Conv.load(w, `${p}.conv1`, cout, cin, 3),
      GroupNorm.load(w, `${p}.norm2`, cout, groups),
      Conv.load(w, `${p}.conv2`, cout, cout, 3),
      cin !== cout ? Conv.load(w, `${p}.conv_shortcut`, cout, cin, 1) : null,
    );
  }
  forward(x: Tensor): Tensor {
    // Each intermediate is released as soon as its consumer is recorded: at 512x512 the
    // decoder's last block has 256 MiB inputs and 128 MiB intermediates.
    return scope(() => {
      // silu(norm(.)) is each conv's `norm`: on the cpu variant it goes straight into the
      // Winograd input transform's texture (conv2d).
      const h = this.conv1.forward(x, { norm: this.norm1.beforeConv() });
      const shortcut = this.convShortcut ? this.convShortcut.forward(x) : x;
      return this.conv2.forward(h, { residual: shortcut, norm: this.norm2.beforeConv(true) });
    });
  }
}

/**
 * The mid-block self-attention: one head over all H*W positions with head dim C
 * (`Attention(heads = C / attention_head_dim = 1)`), GroupNorm first, residual added.
 * Weights under either the deprecated names (`query/key/value/proj_attn`, from
 * `_from_deprecated_attn_block`) or the current ones (`to_q/to_k/to_v/to_out.0`).
 */
class VaeAttention {
  constructor(
    readonly groupNorm: GroupNorm,
    readonly q: { weight: Tensor; bias: Tensor },
    readonly k: { weight: Tensor; bias: Tensor },
    readonly v: { weight: Tensor; bias: Tensor },
    readonly out: Conv, // to_out.0 viewed as a 1x1 conv, so the residual fuses into it
  ) {}
  static load(w: OwnedWeights, p: string, c: number, groups: number): VaeAttention {
    // [C, C] Linear weights; some old conversions store them as [C, C, 1, 1] 1x1 convs.
    const lin = (name: string): { weight: Tensor; bias: Tensor } => ({
      weight: w.load(`${name}.weight`, [c, c], 'matrix', [[c, c, 1, 1]]),
      bias: w.load(`${name}.bias`, [c]),
    });
    const pick = (modern: string, old: string): string => {
      const name = w.pick(`${p}.${modern}.weight`, `${p}.${old}.weight`);
      return name.slice(0, -'.weight'.length);
    };
    const o = lin(pick('to_out.0', 'proj_attn'));
    const outConv = new Conv(w.own(o.weight.reshape([c, c, 1, 1])), o.bias);
    return new VaeAttention(GroupNorm.load(w, `${p}.group_norm`, c, groups), lin(pick('to_q', 'query')), lin(pick('to_k', 'key')), lin(pick('to_v', 'value')), outConv);
  }
  forward(x: Tensor): Tensor {
    return scope(() => {
      const [B, C, H, W] = x.shape as [number, number, number, number];
      const h = transpose(this.groupNorm.forward(x).reshape([B, C, H * W]), 1, 2); // (B, N, C)
      const q = linear(h, this.q.weight, this.q.bias);
      const k = linear(h, this.k.weight, this.k.bias);
      const v = linear(h, this.v.weight, this.v.bias);
      const a = attention(q, k, v, 1); // (B, N, C), scale C^-0.5
      const aT = transpose(a, 1, 2).reshape([B, C, H, W]);
      return this.out.forward(aT, { residual: x });
    });
  }
}

/** UNetMidBlock2D: resnet, [attention], resnet at constant channels. */
class MidBlock {
  constructor(
    readonly resnets: ResnetBlock2D[],
    readonly attention: VaeAttention | null,
  ) {}
  static load(w: OwnedWeights, p: string, c: number, groups: number, withAttention: boolean): MidBlock {
    return new MidBlock(
      [ResnetBlock2D.load(w, `${p}.resnets.0`, c, c, groups), ResnetBlock2D.load(w, `${p}.resnets.1`, c, c, groups)],
      withAttention ? VaeAttention.load(w, `${p}.attentions.0`, c, groups) : null,
    );
  }
  forward(x: Tensor): Tensor {
    return scope(() => {
      let h = this.resnets[0]!.forward(x);
      if (this.attention) h = this.attention.forward(h);
      return this.resnets[1]!.forward(h);
    });
  }
}

/**
 * Downsample2D with padding=0: F.pad(x, (0, 1, 0, 1)) (one zero column right, one zero row
 * below), then a 3x3 stride-2 convolution: conv2d's asymmetric padding does both at once.
 */
function downsample(conv: Conv, x: Tensor): Tensor {
  return conv.forward(x, { stride: 2, padding: [0, 1, 0, 1] });
}

interface DownBlock {
  resnets: ResnetBlock2D[];
  downsampler: Conv | null;
}
interface UpBlock {
  resnets: ResnetBlock2D[];
  upsampler: Conv | null;
}

class Encoder {
  constructor(
    readonly convIn: Conv,
    readonly downBlocks: DownBlock[],
    readonly midBlock: MidBlock,
    readonly convNormOut: GroupNorm,
    readonly convOut: Conv,
  ) {}
  static load(w: OwnedWeights, c: VaeConfig): Encoder {
    const g = c.normNumGroups;
    const ch = c.blockOutChannels;
    const blocks: DownBlock[] = [];
    let cin = ch[0]!;
    ch.forEach((cout, i) => {
      const p = `encoder.down_blocks.${i}`;
      const resnets: ResnetBlock2D[] = [];
      for (let j = 0; j < c.layersPerBlock; j++) resnets.push(ResnetBlock2D.load(w, `${p}.resnets.${j}`, j === 0 ? cin : cout, cout, g));
      const last = i === ch.length - 1;
      blocks.push({ resnets, downsampler: last ? null : Conv.load(w, `${p}.downsamplers.0.conv`, cout, cout, 3) });
      cin = cout;
    });
    const top = ch[ch.length - 1]!;
    return new Encoder(
      Conv.load(w, 'encoder.conv_in', ch[0]!, c.inChannels, 3),
      blocks,
      MidBlock.load(w, 'encoder.mid_block', top, g, c.midBlockAddAttention),
      GroupNorm.load(w, 'encoder.conv_norm_out', top, g),
      Conv.load(w, 'encoder.conv_out', 2 * c.latentChannels, top, 3),
    );
  }
  /** (B, Cin, H, W) -> (B, 2*latent, H/2^(n-1), W/2^(n-1)) */
  forward(x: Tensor): Tensor {
    let h = this.convIn.forward(x);
    for (const b of this.downBlocks) {
      for (const r of b.resnets) h = lastUse(h, r.forward(h));
      if (b.downsampler) h = lastUse(h, downsample(b.downsampler, h));
    }
    h = lastUse(h, this.midBlock.forward(h));
    return lastUse(h, scope(() => this.convOut.forward(h, { norm: this.convNormOut.beforeConv() })));
  }
}

class Decoder {
  constructor(
    readonly convIn: Conv,
    readonly midBlock: MidBlock,
    readonly upBlocks: UpBlock[],
    readonly convNormOut: GroupNorm,
    readonly convOut: Conv,
  ) {}
  static load(w: OwnedWeights, c: VaeConfig): Decoder {
    const g = c.normNumGroups;
    const rev = [...c.blockOutChannels].reverse();
    const blocks: UpBlock[] = [];
    let cin = rev[0]!;
    rev.forEach((cout, i) => {
      const p = `decoder.up_blocks.${i}`;
      const resnets: ResnetBlock2D[] = [];
      for (let j = 0; j < c.layersPerBlock + 1; j++) resnets.push(ResnetBlock2D.load(w, `${p}.resnets.${j}`, j === 0 ? cin : cout, cout, g));
      const last = i === rev.length - 1;
      blocks.push({ resnets, upsampler: last ? null : Conv.load(w, `${p}.upsamplers.0.conv`, cout, cout, 3) });
      cin = cout;
    });
    return new Decoder(
      Conv.load(w, 'decoder.conv_in', rev[0]!, c.latentChannels, 3),
      MidBlock.load(w, 'decoder.mid_block', rev[0]!, g, c.midBlockAddAttention),
      blocks,
      GroupNorm.load(w, 'decoder.conv_norm_out', c.blockOutChannels[0]!, g),
      Conv.load(w, 'decoder.conv_out', c.outChannels, c.blockOutChannels[0]!, 3),
    );
  }
  /** (B, latent, h, w) -> (B, Cout, h*2^(n-1), w*2^(n-1)) */
  forward(z: Tensor): Tensor {
    let h = this.convIn.forward(z);
    h = lastUse(h, this.midBlock.forward(h));
    for (const b of this.upBlocks) {
      for (const r of b.resnets) h = lastUse(h, r.forward(h));
      // Upsample2D: nearest 2x, then a 3x3 conv
      if (b.upsampler) h = lastUse(h, scope(() => b.upsampler!.forward(upsampleNearest2x(h))));
    }
    return lastUse(h, scope(() => this.convOut.forward(h, { norm: this.convNormOut.beforeConv() })));
  }
}

// ------------------------------------------------------------------------------- model

/** Which halves of the VAE to load: segmentation only encodes, so it leaves out the decoder
 *  (SD 1.5: 49.5M parameters, 198 MB in f32, which the pipeline keeps for the whole run). */
export interface VaeParts {
  decoder?: boolean;
}

export class AutoencoderKL {
  private constructor(
    readonly dev: Device,
    readonly config: VaeConfig,
    readonly encoder: Encoder,
    /** Null when loaded with `decoder: false` (segmentation encodes only). */
    readonly decoder: Decoder | null,
    readonly quantConv: Conv | null,
    readonly postQuantConv: Conv | null,
    private readonly weights: OwnedWeights,
  ) {}

  /** Pixel side the pipeline preprocesses images to (`vae.config.sample_size`). */
  get sampleSize(): number {
    return this.config.sampleSize;
  }
  get scalingFactor(): number {
    return this.config.scalingFactor;
  }
  get shiftFactor(): number | null {
    return this.config.shiftFactor;
  }
  /** Image side / latent side (8 for SD). */
  get downscale(): number {
    return 2 ** (this.config.blockOutChannels.length - 1);
  }

  /**
   * Loads `<dir>/config.json` and `<dir>/diffusion_pytorch_model.safetensors` (or `.fp16.`).
   * `matrixDtype: 'f16'` stores the conv / linear weights as f16 (f32 accumulation).
   */
  static async load(dev: Device, dir: string, opts: WeightOptions & VaeParts = {}): Promise<AutoencoderKL> {
    const configPath = join(dir, 'config.json');
    const config = parseVaeConfig(readJsonConfig(configPath), `${basename(dir)}/config.json`);
    const w = WeightLoader.open(dev, findWeightFile(dir), opts);
    try {
      return AutoencoderKL.fromWeights(dev, config, w, opts);
    } finally {
      w.close();
    }
  }

  /**
   * Builds the model from a parsed config and a weight source (a checkpoint file: every weight
   * is checked; or random weights for benchmarks).
   */
  static fromWeights(dev: Device, config: VaeConfig, loader: WeightSource, parts: VaeParts = {}): AutoencoderKL {
    const L = config.latentChannels;
    const withDecoder = parts.decoder !== false;
    return new OwnedWeights(loader).build((w) => {
      const encoder = Encoder.load(w, config);
      const decoder = withDecoder ? Decoder.load(w, config) : null;
      const quantConv = config.useQuantConv ? Conv.load(w, 'quant_conv', 2 * L, 2 * L, 1) : null;
      const postQuantConv = withDecoder && config.usePostQuantConv ? Conv.load(w, 'post_quant_conv', L, L, 1) : null;
      return new AutoencoderKL(dev, config, encoder, decoder, quantConv, postQuantConv, w);
    });
  }

  private checkInput(x: Tensor, channels: number, what: string): void {
    this.weights.checkLive('AutoencoderKL');
    if (x.rank !== 4 || x.shape[1] !== channels) {
      throw new Error(`AutoencoderKL.${what}: expected (B, ${channels}, H, W), got ${shapeStr(x.shape)}`);
    }
    if (x.dtype !== 'f32') throw new Error(`AutoencoderKL.${what}: expected an f32 tensor, got ${x.dtype}`);
  }

  /**
   * The posterior of an image: `vae.encode(x).latent_dist` = (mean, logvar clamped to
   * [-30, 20]), each (B, latent, H/8, W/8). `image` (B, in_channels, H, W) in [-1, 1].
   */
  encode(image: Tensor): { mean: Tensor; logvar: Tensor } {
    this.checkInput(image, this.config.inChannels, 'encode');
    const L = this.config.latentChannels;
    return scope(() => {
      let moments = this.encoder.forward(image); // (B, 2L, h, w)
      if (this.quantConv) moments = this.quantConv.forward(moments);
      const mean = slice(moments, 1, 0, L);
      const logvar = clamp(slice(moments, 1, L, 2 * L), LOGVAR_MIN, LOGVAR_MAX); // (B, L, h, w)
      return { mean, logvar };
    });
  }

  /**
   * The latent the method works on (`Diffusion.encode_vae_image`): the posterior mean, no
   * sampling, then `(mean - shift_factor) * scaling_factor`. (B, latent, H/8, W/8).
   */
  encodeLatent(image: Tensor): Tensor {
    return scope(() => this.scaleLatent(this.encode(image).mean));
  }

  /** (z - shift_factor) * scaling_factor: from VAE latent space to the UNet's. */
  scaleLatent(z: Tensor): Tensor {
    const { scalingFactor: s, shiftFactor: shift } = this.config;
    // `if shift_factor:` in the original: 0 counts as no shift
    return shift ? scope(() => mulScalar(addScalar(z, -shift), s)) : mulScalar(z, s);
  }

  /**
   * `vae.decode(z / scaling_factor + shift_factor).sample`: z (B, latent, h, w) in the UNet's
   * latent space -> image (B, out_channels, 8h, 8w), unclamped (about [-1, 1]).
   */
  decode(z: Tensor): Tensor {
    this.checkInput(z, this.config.latentChannels, 'decode');
    const decoder = this.decoder;
    if (!decoder) throw new Error('AutoencoderKL.decode: this VAE was loaded without its decoder (decoder: false, as segmentation loads it); load it with the decoder to decode latents');
    const { scalingFactor: s, shiftFactor: shift } = this.config;
    return scope(() => {
      let h = affine(z, 1 / s, shift || 0);
      if (this.postQuantConv) h = this.postQuantConv.forward(h);
      return decoder.forward(h);
    });
  }

  /** Frees every weight; the model is unusable afterwards. */
  release(): void {
    this.weights.release();
  }
}
