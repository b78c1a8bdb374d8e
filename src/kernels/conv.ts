// 2-D convolution, NCHW, with the matmul epilogue (bias, activation, residual) fused.
// Variants: 'naive' (shaders/conv_naive.wgsl, one output per invocation); 'cpu' (lavapipe:
// 1x1 convs through the register-blocked matmul, other kernels as a direct convolution,
// shaders/conv_cpu.wgsl, over weights re-laid out once as (ci, ky, kx, co): at model load
// with prepareConvWeight, or else cached on first use); 'gpu'
// (implicit GEMM with shared-memory tiles, shaders/conv_gpu.wgsl).
//
// Inputs, weights or outputs larger than one storage binding are split into chunks of
// output channels and input channels; input-channel chunks after the first accumulate
// into the output (the epilogue's ACCUM flag), the activation and residual come with the
// last one.
import { GpuError, Tensor, keep, grid1d, uniforms, shapeStr, type Device } from '../tensor/index.js';
import { conv3x3Winograd, winogradApplies, winogradS2Applies, type WinogradArgs } from './winograd.js';
import { convIm2col, im2colApplies } from './im2col.js';
import { groupNorm, groupNormIntoTexture, groupNormTextureFits } from './norm.js';
import {
  ACT_CODE, FLAG, buildShader, dispatchGpu2, dummy, gemmUniforms, gpuGemmTuning, maxBindingBytes, runGemm, subgroupsOf8, windowFor,
  type Act, type GemmParams, type MatmulVariant,
} from './matmul.js';

export type ConvVariant = MatmulVariant;

export interface Conv2dOptions {
  /** (Co) */
  bias?: Tensor;
  stride?: number;
  /** Symmetric zero padding, or [top, bottom, left, right]. */
  padding?: number | readonly [number, number, number, number];
  /** (B, Co, Ho, Wo), added after the activation. */
  residual?: Tensor;
  act?: Act;
  variant?: ConvVariant;
  /**
   * GroupNorm (+ SiLU) of x first, as every diffusers resnet does before its convs:
   * conv2d(x, w, { norm }) = conv2d(groupNorm(x, ...), w). Where the 'cpu' variant takes
   * Winograd and groupNormTextureFits, the normalised x is written straight into the input
   * transform's texture (convTuning.normTexture) instead of a buffer; elsewhere it is the
   * two calls.
   */
  norm?: ConvNorm;
}

/** conv2d's `norm`: groupNorm(x, groups, gamma, beta, eps, { silu }). */
export interface ConvNorm {
  groups: number;
  gamma: Tensor;
  beta: Tensor;
  eps: number;
  silu?: boolean;
  /**
   * x's last use: released once its normalisation is recorded, so that it and the normalised
   * copy are not both live during the conv (as `lastUse(x, groupNorm(x))` before a conv).
   */
  lastUse?: boolean;
}

/** Choices of conv2d. */
export const convTuning = {
  /**
   * conv2d's `norm` into the Winograd input transform's texture (ELBO_CONV_NORM_TEX=0: groupNorm's
   * buffer, then the conv). See winogradTiles for the input transform's figures.
   */
  normTexture: process.env.ELBO_CONV_NORM_TEX !== '0',
};

/** Kernel variants of conv2d, for `doctor` and tests. */
export function convVariants(): string[] {
  return ['naive', 'cpu', 'gpu'];
}

// Register block of the direct conv (benchmarked in bench/kernels-matmul.ts).
const DIRECT_ENV = parseBlock(process.env.ELBO_CONV_TILE);
const DIRECT = { PW: 16, CV: 2 };
/**
 * The block for short reductions (Ci * kh * kw <= 32, the VAE's 3-channel conv_in): 32 output
 * channels per invocation share each input row segment. (1, 3, 512, 512) * (128, 3, 3, 3),
 * median of 5, ms: 16x2 148-153, 16x8 105-111 (compiles 1.2 s longer once), 16x16 96-101
 * (3.8 s longer).
 */
const DIRECT_SHORT_K = { PW: 16, CV: 8 };
const SG = process.env.ELBO_SG !== '0';
const GPU_TILE = 64;

function parseBlock(s: string | undefined): { PW: number; CV: number } | undefined {
  const m = s ? /^(\d+)x(\d+)$/.exec(s) : null;
  return m ? { PW: Number(m[1]), CV: Number(m[2]) } : undefined;
}

// ------------------------------------------------------------------ weight re-layout
// The direct conv reads weights as (ci, ky, kx, co). Two ways to get them:
// - prepareConvWeight(w) at model load: a new tensor of shape (Ci, kh, kw, Co) in that
//   layout, recognised by conv2d (the `prepared` set); the caller releases the original, so
//   3x3 conv weight memory is not doubled.
// - otherwise a cached copy per weight tensor, made on first use and released at the next
//   direct conv after the weight itself is released (deterministically, not by the garbage
//   collector: memory accounting must not move by itself). It doubles 3x3 conv weight memory.
const relaid = new Map<Tensor, Tensor>();
const prepared = new WeakSet<Tensor>();

/** Releases the re-laid copies of weights that were released (also done by every direct conv). */
export function trimConvWeightCache(): void {
  for (const [w, t] of relaid) {
    if (w.released) {
      t.release();
      relaid.delete(w);
    }
  }
}

/**
 * Gathers `src` seen as (A, Bd, T) into a new (B, T, A)-ordered tensor of shape `shape`
 * (shaders/conv_relayout.wgsl). (Co, Ci, kh*kw) -> (Ci, kh*kw, Co) is the forward re-layout;
 * with T = 1 it is a transpose, which undoes it.
 */
function relayout(src: Tensor, shape: readonly number[], A: number, Bd: number, T: number, label: string, what: string): Tensor {
  const dev = src.device;
  const t = Tensor.empty(dev, shape, src.dtype, label);
  const f16 = src.dtype === 'f16';
  const pipeline = dev.pipeline(`conv_relayout:${src.dtype}`, () => buildShader('conv_relayout', { F16: f16 }, { ELEM: f16 ? 'u32' : 'f32' }));
  const n = src.numel;
  const groups = Math.ceil((f16 ? Math.ceil(n / 2) : n) / 64);
  const [gx, gy] = grid1d(groups, dev.limits.maxComputeWorkgroupsPerDimension);
  dev.dispatch({
    label: `conv2d ${what} ${src.describe()}`,
    family: 'conv2d',
    pipeline,
    uniforms: uniforms([['u', A], ['u', Bd], ['u', T], ['u', n], ['u', gx]]),
    bindings: [src.binding(), t.binding()],
    workgroups: [gx, gy],
  });
  return t;
}

/** A (Co, Ci, kh, kw) weight copied into the direct kernel's (ci, ky, kx, co) layout. */
function directLayout(w: Tensor): Tensor {
  const dev = w.device;
  const [Co, Ci, kh, kw] = w.shape as [number, number, number, number];
  if (w.byteSize > dev.limits.maxStorageBufferBindingSize) {
    throw new GpuError(`conv2d: weight ${w.describe()} is larger than one storage binding (${dev.limits.maxStorageBufferBindingSize} bytes); use variant 'naive' or 'gpu'`);
  }
  return relayout(w, [Ci, kh, kw, Co], Co, Ci, kh * kw, 'conv weight (ci,ky,kx,co)', 'relayout');
}

/** The direct kernel's copy of `w`, made on first use and cached while `w` lives. */
function relaidWeights(w: Tensor): Tensor {
  trimConvWeightCache();
  let t = relaid.get(w);
  if (t && !t.released) return t;
  t = keep(directLayout(w));
  relaid.set(w, t);
  return t;
}

/**
 * 3x3 weights with channels in multiples of 4 stay in the checkpoint layout on 'cpu'
 * adapters: their convs run as Winograd (stride 1) or im2col + matmul (strides >= 2), which
 * read that layout (the Winograd weight transform ~2x faster than from (ci, ky, kx, co)).
 * Where one still takes the direct kernel, it gets a temporary re-laid copy per call, not a
 * cached one, which would double the weights of models run on small images.
 */
function keptAsStored(Co: number, Ci: number, kh: number, kw: number): boolean {
  return kh === 3 && kw === 3 && Ci % 4 === 0 && Co % 4 === 0;
}

/** Whether `w` came from prepareConvWeight (stored (Ci, kh, kw, Co) in (ci, ky, kx, co) layout). */
export function isPreparedConvWeight(w: Tensor): boolean {
  return prepared.has(w);
}

/** The (Co, Ci, kh, kw) shape that conv weight `w` stands for, prepared or not. */
export function convWeightShape(w: Tensor): readonly number[] {
  if (!prepared.has(w)) return w.shape;
  const [Ci, kh, kw, Co] = w.shape as [number, number, number, number];
  return [Co, Ci, kh, kw];
}

/**
 * Converts conv weight `w` (Co, Ci, kh, kw) once, at model load, to the layout conv2d's
 * direct kernel reads: where `dev.kind` is 'cpu' and kh*kw > 1 and `w` fits one storage
 * binding, returns a NEW tensor (kept out of scopes, like loaded weights) of shape
 * (Ci, kh, kw, Co) holding the same values as (ci, ky, kx, co); conv2d recognises it and
 * uses it directly. The caller then releases `w` (its data is copied by work already
 * recorded). Otherwise (gpu kind, 1x1 kernels, too large, already prepared) returns `w`
 * itself. A prepared weight still works with the 'naive' and 'gpu' variants, through a
 * temporary converted back per call.
 */
export function prepareConvWeight(w: Tensor): Tensor {
  const dev = w.device;
  if (prepared.has(w) || dev.kind !== 'cpu' || w.rank !== 4) return w;
  const [Co, Ci, kh, kw] = w.shape as [number, number, number, number];
  if (kh * kw <= 1 || w.numel === 0 || w.byteSize > dev.limits.maxStorageBufferBindingSize) return w;
  if (keptAsStored(Co, Ci, kh, kw)) return w;
  trimConvWeightCache();
  let t = relaid.get(w);
  if (t && !t.released) {
    relaid.delete(w); // already converted on an earlier call: adopt that copy
  } else {
    t = keep(directLayout(w));
  }
  prepared.add(t);
  return t;
}

/** A prepared weight back in (Co, Ci, kh, kw) layout, as a temporary for the non-direct variants. */
function unprepared(w: Tensor): Tensor {
  const [Ci, kh, kw, Co] = w.shape as [number, number, number, number];
  return relayout(w, [Co, Ci, kh, kw], Ci * kh * kw, Co, 1, 'conv weight (co,ci,ky,kx)', 'un-relayout');
}

// ------------------------------------------------------------------ public op
/**
 * x (B, Ci, H, W) conv w (Co, Ci, kh, kw) -> (B, Co, Ho, Wo) f32 with
 * Ho = floor((H + padTop + padBottom - kh) / stride) + 1 (likewise Wo);
 * out = act(conv + bias) + residual. w may be f16; accumulation is f32.
 * w may come from prepareConvWeight (then it stands for its (Co, Ci, kh, kw) shape).
 */
export function conv2d(x: Tensor, w: Tensor, opts: Conv2dOptions = {}): Tensor {
  const op = 'conv2d';
  const dev = x.device;
  if (x.dtype !== 'f32') throw new GpuError(`${op}: x must be f32, got ${x.dtype} (weights may be f16)`);
  // A prepared weight is stored (Ci, kh, kw, Co); checks and messages use its (Co, Ci, kh, kw) shape.
  const isPrep = prepared.has(w);
  const wShape = convWeightShape(w);
  const wStr = isPrep ? `${shapeStr(wShape)} (prepared, stored as ${shapeStr(w.shape)})` : shapeStr(w.shape);
  if (x.rank !== 4 || w.rank !== 4) throw new GpuError(`${op}: expected x (B, Ci, H, W) and w (Co, Ci, kh, kw), got x ${shapeStr(x.shape)} and w ${wStr}`);
  const [B, Ci, H, W] = x.shape as [number, number, number, number];
  const [Co, wCi, kh, kw] = wShape as [number, number, number, number];
  if (wCi !== Ci) throw new GpuError(`${op}: input channels differ: x ${shapeStr(x.shape)} vs w ${wStr}`);
  const stride = opts.stride ?? 1;
  const padding = opts.padding ?? 0;
  const [pt, pb, pl, pr] = typeof padding === 'number' ? [padding, padding, padding, padding] : padding;
  if (!(Number.isInteger(stride) && stride >= 1 && [pt, pb, pl, pr].every((v) => Number.isInteger(v) && v >= 0))) {
    throw new GpuError(`${op}: stride ${stride} must be an integer >= 1 and padding ${JSON.stringify(padding)} integers >= 0`);
  }
  const Ho = Math.floor((H + pt + pb - kh) / stride) + 1;
  const Wo = Math.floor((W + pl + pr - kw) / stride) + 1;
  if (Ho < 1 || Wo < 1) throw new GpuError(`${op}: kernel ${kh}x${kw} does not fit x ${shapeStr(x.shape)} with padding ${JSON.stringify(padding)}`);
  const outShape = [B, Co, Ho, Wo];
  if (opts.bias && opts.bias.numel !== Co) throw new GpuError(`${op}: bias ${shapeStr(opts.bias.shape)} does not match w ${wStr}`);
  if (opts.residual) {
    const r = opts.residual;
    if (r.dtype !== 'f32') throw new GpuError(`${op}: residual must be f32, got ${r.dtype}`);
    if (r.rank !== 4 || r.shape.some((d, i) => d !== outShape[i])) {
      throw new GpuError(`${op}: residual ${shapeStr(r.shape)} does not match the output ${shapeStr(outShape)}`);
    }
  }
  const variant = opts.variant ?? dev.kind;
  const act = opts.act ?? 'none';
  const convShape = { B, Ci, Co, H, W, kh, kw, stride, pads: [pt, pb, pl, pr], act };
  const label = `${op} ${shapeStr(x.shape)}*${shapeStr(wShape)}${stride > 1 ? ` s${stride}` : ''}${pt + pb + pl + pr ? ` p${pt},${pb},${pl},${pr}` : ''}`;
  // co, ci and tap strides of the weight as stored: prepared (ci, ky, kx, co) or (co, ci, ky, kx)
  const wStrides: [number, number, number] = isPrep ? [1, 9 * Co, Co] : [Ci * 9, 9, 1];
  const norm = opts.norm;
  if (norm?.lastUse && opts.residual === x) throw new GpuError(`${op}: norm.lastUse releases x ${shapeStr(x.shape)}, which is also the residual`);
  // The 'cpu' variant's paths ahead of Winograd (1x1 convs take neither)
  const s2Path = variant === 'cpu' && winogradS2Applies(dev, convShape);
  const im2colPath = variant === 'cpu' && !s2Path && im2colApplies(dev, { B, Ci, H, W, kh, kw, stride, wDtype: w.dtype, prepared: isPrep });
  if (norm) {
    const byTexture = convTuning.normTexture && variant === 'cpu' && Co > 0 && groupNormTextureFits(x, norm.groups) &&
      !s2Path && !im2colPath && winogradApplies(dev, convShape);
    if (!byTexture) {
      const n = groupNorm(x, norm.groups, norm.gamma, norm.beta, norm.eps, { silu: norm.silu, variant: opts.variant });
      if (norm.lastUse) x.release();
      try {
        return conv2d(n, w, { ...opts, norm: undefined });
      } finally {
        n.release();
      }
    }
    // The normalised x straight into the Winograd input transform's texture; x released (its
    // last use) before out is made, so the two are not live together.
    const tex = dev.allocTexture(W, H, (B * Ci) / 4, 'conv2d normalised x');
    try {
      groupNormIntoTexture(x, norm.groups, norm.gamma, norm.beta, norm.eps, Boolean(norm.silu), tex);
      if (norm.lastUse) x.release();
      const out = Tensor.empty(dev, outShape, 'f32', 'conv2d out');
      conv3x3Winograd(dev, { xTex: tex, w, wStrides, out, bias: opts.bias, residual: opts.residual, act, B, Ci, Co, H, W, label, variant: 'cpu' });
      return out;
    } finally {
      dev.freeTexture(tex);
    }
  }
  const out = Tensor.empty(dev, outShape, 'f32', 'conv2d out');
  if (B === 0 || Co === 0) return out;
  if (Ci === 0) throw new GpuError(`${op}: x ${shapeStr(x.shape)} has no input channels`);

  if (variant === 'cpu' && kh === 1 && kw === 1 && stride === 1 && pt + pb + pl + pr === 0) {
    // 1x1: out[b] (Co, HW) = W (Co, Ci) @ x[b] (Ci, HW), computed as its transpose
    // (HW, Co) = x[b]^T @ W^T so the weights are the kernel's b (where f16 is read packed)
    // and written back through strides as NCHW.
    const HW = H * W;
    runGemm(dev, {
      label,
      M: HW,
      N: Co,
      K: Ci,
      batch: B,
      a: { t: x, off: 0, rs: 1, cs: HW, bs: Ci * HW },
      b: { t: w, off: 0, rs: 1, cs: Ci, bs: 0 },
      out: { t: out, off: 0, rs: 1, cs: HW, bs: Co * HW },
      res: opts.residual ? { t: opts.residual, off: 0 } : undefined,
      bias: opts.bias ? { t: opts.bias, off: 0 } : undefined,
      alpha: 1,
      act,
      variant: 'cpu',
    });
    return out;
  }

  const winograd = (how: Pick<WinogradArgs, 's2' | 'variant'>): Tensor => {
    conv3x3Winograd(dev, { x, w, wStrides, out, bias: opts.bias, residual: opts.residual, act, B, Ci, Co, H, W, label, ...how });
    return out;
  };
  if (s2Path) return winograd({ s2: true });
  if (im2colPath) {
    convIm2col(dev, { x, w, prepared: isPrep, out, bias: opts.bias, residual: opts.residual, act, B, Ci, Co, H, W, Ho, Wo, kh, kw, stride, pt, pl, label });
    return out;
  }
  const winogradVariant = variant === 'cpu' || (variant === 'gpu' && gpuGemmTuning.winograd !== 'off');
  if (winogradVariant && winogradApplies(dev, convShape)) return winograd({ variant: variant === 'gpu' ? 'gpu' : 'cpu' });
  const direct = variant === 'cpu';
  // Prepared weights feed the direct conv as they are; the other variants read a temporary
  // converted back to (co, ci, ky, kx), released once its dispatches are recorded.
  // Weights prepareConvWeight leaves as stored get a temporary copy (see keptAsStored).
  const temp = isPrep && !direct ? unprepared(w) : direct && !isPrep && keptAsStored(Co, Ci, kh, kw) ? directLayout(w) : undefined;
  const wt = temp ?? (direct && !isPrep ? relaidWeights(w) : w);
  try {
    convChunks(dev, { x, wt, out, opts, variant, direct, label, act, B, Ci, H, W, Co, Ho, Wo, kh, kw, stride, pt, pl });
  } finally {
    temp?.release();
  }
  return out;
}

function convChunks(
  dev: Device,
  g: {
    x: Tensor; wt: Tensor; out: Tensor; opts: Conv2dOptions; variant: ConvVariant; direct: boolean; label: string; act: Act;
    B: number; Ci: number; H: number; W: number; Co: number; Ho: number; Wo: number; kh: number; kw: number; stride: number; pt: number; pl: number;
  },
): void {
  const { x, wt, out, opts, variant, direct, label, act, B, Ci, H, W, Co, Ho, Wo, kh, kw, stride, pt, pl } = g;
  const taps = kh * kw;
  const HWo = Ho * Wo;
  const f16 = wt.dtype === 'f16';
  const biasF16 = opts.bias?.dtype === 'f16';
  const dm = dummy(dev).binding();
  for (const ch of planConv(dev, { B, Ci, H, W, Co, HWo, taps }, x, wt, out, opts.residual, direct)) {
    const xs = windowFor(dev, x, ch.z0 * Ci * H * W + ch.c0 * H * W, (ch.z1 - 1) * Ci * H * W + ch.c1 * H * W - 1);
    const ws = direct
      ? windowFor(dev, wt, ch.c0 * taps * Co + ch.o0, (ch.c1 - 1) * taps * Co + (taps - 1) * Co + ch.o1 - 1)
      : windowFor(dev, wt, ch.o0 * Ci * taps + ch.c0 * taps, (ch.o1 - 1) * Ci * taps + ch.c1 * taps - 1);
    const oLo = ch.z0 * Co * HWo + ch.o0 * HWo;
    const oHi = (ch.z1 - 1) * Co * HWo + ch.o1 * HWo - 1;
    const os = windowFor(dev, out, oLo, oHi);
    const rs = opts.residual ? windowFor(dev, opts.residual, oLo, oHi) : undefined;
    const M = ch.o1 - ch.o0;
    const flags =
      (ch.first && opts.bias ? FLAG.BIAS | FLAG.BIAS_ROW : 0) |
      (ch.first ? 0 : FLAG.ACCUM) |
      (ch.last ? FLAG.FINAL : 0) |
      (ch.last && rs ? FLAG.RES : 0);
    const q: GemmParams = {
      M, N: HWo, K: ch.c1 - ch.c0,
      // direct: relaid (ci, tap, co); otherwise (co, ci, tap)
      aOff: ws.off, aRs: direct ? 1 : Ci * taps, aCs: direct ? taps * Co : taps, aBs: 0,
      bOff: xs.off, bRs: H * W, bCs: 1, bBs: Ci * H * W,
      oOff: os.off, oRs: HWo, oCs: 1, oBs: Co * HWo,
      rOff: rs?.off ?? 0, biasOff: ch.o0, flags, act: ACT_CODE[act], alpha: 1, batch: ch.z1 - ch.z0,
      e0: Co, padT: pt, H, W, Ho, Wo, kh, kw, stride, pad: pl,
    };
    const bindings = [ws.binding, xs.binding, opts.bias ? opts.bias.binding() : dm, rs?.binding ?? dm, os.binding];
    if (variant === 'gpu' && gpuGemmTuning.kernel === 'v2') {
      const defines = { CONV: true, A_F16: f16, BIAS_F16: biasF16 };
      dispatchGpu2(dev, { label, family: 'conv2d', defines, q, bindings, Kt: (ch.c1 - ch.c0) * taps });
      continue;
    }
    const u = gemmUniforms(q);
    let pipeline: GPUComputePipeline;
    let workgroups: [number, number, number];
    if (!direct) {
      const d = { A_F16: f16, BIAS_F16: biasF16 };
      pipeline = dev.pipeline(`conv_${variant}:${f16 ? 'f16' : 'f32'}${biasF16 ? ':bias16' : ''}`, () =>
        buildShader(`conv_${variant}`, d, { A_VEC: f16 ? 'u32' : 'f32', TILE: GPU_TILE }, { unroll: !dev.adapter.isFallback }),
      );
      workgroups = variant === 'naive'
        ? [Math.ceil(HWo / 64), M, ch.z1 - ch.z0]
        : [Math.ceil(HWo / GPU_TILE), Math.ceil(M / GPU_TILE), ch.z1 - ch.z0];
    } else {
      const { PW, CV } = DIRECT_ENV ?? (Ci * taps <= 32 ? DIRECT_SHORT_K : DIRECT);
      const m4 = (v: number): boolean => v % 4 === 0;
      const m8 = (v: number): boolean => v % 8 === 0;
      // ACT_NONE: the epilogue's activation switch left out (VAE conv_in, K = 27: 113 ->
      // 93-102 ms on lavapipe).
      const d: Record<string, boolean> = { A_F16: f16, BIAS_F16: biasF16, ACT_NONE: act === 'none' };
      if (!f16 && m4(Co) && m4(M) && m4(ws.off)) d.W_V4 = true;
      if (f16 && m8(Co) && m8(M) && m8(ws.off) && CV % 2 === 0) d.W_H8 = true;
      // Lanes share the weights: each loads a slice, subgroupBroadcast hands it round.
      if ((d.W_V4 || d.W_H8) && SG && subgroupsOf8(dev)) d.SG_W = true;
      const NW = kw * (d.W_H8 ? CV / 2 : CV);
      const A_VEC = d.W_V4 ? 'vec4<f32>' : d.W_H8 ? 'vec4<u32>' : f16 ? 'u32' : 'f32';
      const key = `conv_cpu:${kh}x${kw}s${stride}:${PW}x${CV}:${Object.keys(d).filter((k) => d[k]).sort().join(',')}`;
      pipeline = dev.pipeline(key, () =>
        (d.SG_W ? 'enable subgroups;\n' : '') +
        buildShader('conv_cpu', d, { KH: kh, KW: kw, S: stride, PW, CV, CN: 4 * CV, SEG: (PW - 1) * stride + kw, A_VEC, NW, WPL: Math.ceil(NW / 8) }),
      );
      const tiles = Math.ceil(Wo / PW) * Ho;
      workgroups = [Math.ceil(tiles / 8), Math.ceil(M / (4 * CV)), ch.z1 - ch.z0];
    }
    dev.dispatch({
      label,
      family: 'conv2d',
      pipeline,
      uniforms: u,
      bindings,
      workgroups,
    });
  }
}

interface ConvChunk {
  z0: number; z1: number;
  o0: number; o1: number;
  c0: number; c1: number;
  first: boolean; last: boolean;
}

function split(n: number, count: number): [number, number][] {
  const raw = Math.ceil(n / count);
  const size = raw >= 8 ? Math.ceil(raw / 8) * 8 : raw;
  const out: [number, number][] = [];
  for (let s = 0; s < n; s += size) out.push([s, Math.min(n, s + size)]);
  return out;
}

/**
 * Chunks (batch range, output channels, input channels) whose windows each fit one
 * storage binding: whole batches when everything fits, else one image at a time with
 * as many output- and input-channel chunks as needed.
 */
function planConv(
  dev: Device,
  g: { B: number; Ci: number; H: number; W: number; Co: number; HWo: number; taps: number },
  x: Tensor, w: Tensor, out: Tensor, res: Tensor | undefined, relaidW: boolean,
): ConvChunk[] {
  const limit = maxBindingBytes(dev);
  const { B, Ci, H, W, Co, HWo, taps } = g;
  const fit = (t: Tensor, lo: number, hi: number): boolean => windowFor(dev, t, lo, hi).bytes <= limit;
  const xFits = (z0: number, z1: number, c0: number, c1: number): boolean => fit(x, z0 * Ci * H * W + c0 * H * W, (z1 - 1) * Ci * H * W + c1 * H * W - 1);
  const wFits = (o0: number, o1: number, c0: number, c1: number): boolean =>
    relaidW ? fit(w, c0 * taps * Co + o0, (c1 - 1) * taps * Co + (taps - 1) * Co + o1 - 1) : fit(w, o0 * Ci * taps + c0 * taps, (o1 - 1) * Ci * taps + c1 * taps - 1);
  const oFits = (t: Tensor, z0: number, z1: number, o0: number, o1: number): boolean => fit(t, z0 * Co * HWo + o0 * HWo, (z1 - 1) * Co * HWo + o1 * HWo - 1);
  const allFit = xFits(0, B, 0, Ci) && wFits(0, Co, 0, Ci) && oFits(out, 0, B, 0, Co) && (!res || oFits(res, 0, B, 0, Co));
  const zs: [number, number][] = allFit ? [[0, B]] : Array.from({ length: B }, (_, z) => [z, z + 1]);
  const chunks: ConvChunk[] = [];
  for (const [z0, z1] of zs) {
    let so = 1;
    let sc = 1;
    for (;;) {
      const oP = split(Co, so);
      const cP = split(Ci, sc);
      const xOk = cP.every(([c0, c1]) => xFits(z0, z1, c0, c1));
      const oOk = oP.every(([o0, o1]) => oFits(out, z0, z1, o0, o1) && (!res || oFits(res, z0, z1, o0, o1)));
      const wOk = oP.every(([o0, o1]) => cP.every(([c0, c1]) => wFits(o0, o1, c0, c1)));
      if (xOk && oOk && wOk) {
        for (const [o0, o1] of oP) {
          cP.forEach(([c0, c1], i) => chunks.push({ z0, z1, o0, o1, c0, c1, first: i === 0, last: i === cP.length - 1 }));
        }
        break;
      }
      const canO = oP.length < Co;
      const canC = cP.length < Ci;
      // Input-channel chunks shrink x, output-channel chunks shrink out; weights shrink
      // with either, first along the axis that is major in their layout.
      if (!xOk && canC) sc *= 2;
      else if (!oOk && canO) so *= 2;
      else if (!wOk && (relaidW ? canC : canO)) relaidW ? (sc *= 2) : (so *= 2);
      else if (!wOk && (canC || canO)) canC ? (sc *= 2) : (so *= 2);
      else throw new GpuError(`conv2d: cannot split x ${shapeStr(x.shape)}, w ${shapeStr(w.shape)} into storage bindings of ${limit} bytes (one channel plane is too large)`);
    }
  }
  return chunks;
}
