// Normalisations with f32 statistics: GroupNorm (+ fused SiLU, the UNet / VAE resnet
// pattern), LayerNorm over the last axis, and softmax over the last axis.
// shaders/groupnorm*.wgsl, shaders/layernorm*.wgsl, shaders/softmax*.wgsl.
//
// Every op works on "items" that are contiguous runs of the tensor (a (batch, group) of
// NCHW, a row), so a tensor above the storage binding limit is handled by binding windows
// over ranges of whole items.
import { Device, GpuError, Tensor, fillTemplate, grid1d, loadShader, shapeStr, uniforms } from '../tensor/index.js';
import { buildShader, textureBinding } from './matmul.js';

export type NormVariant = 'naive' | 'cpu' | 'gpu';
const VARIANTS: NormVariant[] = ['naive', 'cpu', 'gpu'];

/** The variants of groupNorm / layerNorm / softmax, for `doctor`. */
export function normVariants(): string[] {
  return [...VARIANTS];
}

export interface GroupNormOptions {
  /** Apply SiLU after the affine (GroupNorm + SiLU, as every diffusers ResnetBlock2D). */
  silu?: boolean;
  variant?: NormVariant;
}

export interface NormOptions {
  variant?: NormVariant;
}

// ------------------------------------------------------------------ binding windows
let maxBindingOverride: number | undefined;

/** Test hook: pretend the storage binding limit is `bytes` (undefined restores the adapter's),
 *  so the windowed paths run on small shapes. */
export function setNormMaxBindingBytes(bytes: number | undefined): void {
  maxBindingOverride = bytes;
}

const ALIGN = 256;

interface Window {
  /** First item and item count of this dispatch. */
  item0: number;
  items: number;
  /** Byte window of x / y holding those items (offset aligned to 256). */
  offset: number;
  size: number;
  /** Element offset of item0 inside the window. */
  base: number;
}

/** Splits `items` runs of `itemElems` f32 each into windows within the binding limit. */
function windows(dev: Device, op: string, t: Tensor, items: number, itemElems: number): Window[] {
  const limit = Math.min(dev.limits.maxStorageBufferBindingSize, maxBindingOverride ?? Infinity);
  const total = items * itemElems * 4;
  if (total <= limit) return [{ item0: 0, items, offset: 0, size: Math.max(4, total), base: 0 }];
  const itemBytes = itemElems * 4;
  // A window starts up to ALIGN - 4 bytes before its first item.
  const per = Math.floor((limit - (ALIGN - 4)) / itemBytes);
  if (per < 1) {
    throw new GpuError(`${op}: one normalised run of ${itemElems} elements of ${shapeStr(t.shape)} exceeds the storage binding limit (${limit} bytes)`);
  }
  const out: Window[] = [];
  for (let item0 = 0; item0 < items; item0 += per) {
    const n = Math.min(per, items - item0);
    const start = item0 * itemBytes;
    const offset = Math.floor(start / ALIGN) * ALIGN;
    out.push({ item0, items: n, offset, size: start - offset + n * itemBytes, base: (start - offset) / 4 });
  }
  return out;
}

function helpers(vec: boolean): string {
  return vec
    ? 'fn hsum(v: vec4<f32>) -> f32 { return dot(v, vec4<f32>(1.0)); }\nfn hmax(v: vec4<f32>) -> f32 { return max(max(v.x, v.y), max(v.z, v.w)); }'
    : 'fn hsum(v: f32) -> f32 { return v; }\nfn hmax(v: f32) -> f32 { return v; }';
}

function shader(name: string, vec: boolean, wg: number): string {
  return fillTemplate(loadShader(name), { V: vec ? 'vec4<f32>' : 'f32', W: vec ? 4 : 1, WG: wg, HELPERS: helpers(vec) });
}

function pickVariant(dev: Device, op: string, v: NormVariant | undefined): NormVariant {
  const variant = v ?? (dev.kind === 'cpu' ? 'cpu' : 'gpu');
  if (!VARIANTS.includes(variant)) throw new GpuError(`${op}: unknown variant "${variant}" (have ${VARIANTS.join(', ')})`);
  return variant;
}

function checkF32(op: string, name: string, t: Tensor): void {
  if (t.dtype !== 'f32') throw new GpuError(`${op}: ${name} must be f32, got dtype ${t.dtype}`);
}

// ------------------------------------------------------------------ groupNorm
/**
 * GroupNorm as torch.nn.GroupNorm: x (B, C, ...spatial) f32, `groups` dividing C, gamma / beta
 * (C). Statistics per (batch, group) in f32, biased variance, eps inside the sqrt.
 * With opts.silu, SiLU is applied to the result. Returns (B, C, ...spatial).
 */
export function groupNorm(x: Tensor, groups: number, gamma: Tensor, beta: Tensor, eps: number, opts: GroupNormOptions = {}): Tensor {
  const op = 'groupNorm';
  const dev = x.device;
  const { S, Cg, n, items } = groupNormSizes(op, x, groups, gamma, beta);
  const variant = pickVariant(dev, op, opts.variant);
  const y = Tensor.empty(dev, x.shape, 'f32', 'groupNorm out');
  if (x.numel === 0) return y;
  const vec = variant !== 'naive' && S % 4 === 0;
  const wg = variant === 'gpu' ? 256 : 8;
  const pipe =
    variant === 'naive'
      ? dev.pipeline('groupnorm_naive', () => loadShader('groupnorm_naive'))
      : dev.pipeline(`groupnorm ${vec ? 'vec4' : 'f32'} wg${wg}`, () => groupNormShader(vec, wg, false));
  const label = `groupNorm ${shapeStr(x.shape)} G${groups}${opts.silu ? ' silu' : ''}`;
  for (const w of windows(dev, op, x, items, n)) {
    const grid = variant === 'naive' ? grid1d(Math.ceil(w.items / 64)) : grid1d(w.items);
    dev.dispatch({
      label,
      family: 'groupNorm',
      pipeline: pipe,
      uniforms: groupNormUniforms(w, n, S, Cg, groups, Boolean(opts.silu), eps, grid[0], 0),
      bindings: [x.window(w.offset, w.size), gamma.binding(), beta.binding(), y.window(w.offset, w.size)],
      workgroups: grid,
    });
  }
  return y;
}

/** Checks groupNorm's operands; its sizes: S pixels, Cg channels per group, n = Cg S per item. */
function groupNormSizes(op: string, x: Tensor, groups: number, gamma: Tensor, beta: Tensor): { S: number; Cg: number; n: number; items: number } {
  checkF32(op, 'x', x);
  checkF32(op, 'gamma', gamma);
  checkF32(op, 'beta', beta);
  if (x.rank < 2) throw new GpuError(`${op}: x must be (B, C, ...), got ${shapeStr(x.shape)}`);
  const [B, C] = x.shape as [number, number];
  if (!Number.isInteger(groups) || groups < 1 || C % groups !== 0) {
    throw new GpuError(`${op}: ${C} channels of x ${shapeStr(x.shape)} are not divisible into ${groups} groups`);
  }
  if (gamma.numel !== C || beta.numel !== C) {
    throw new GpuError(`${op}: gamma ${shapeStr(gamma.shape)} and beta ${shapeStr(beta.shape)} must have ${C} elements for x ${shapeStr(x.shape)}`);
  }
  const S = x.numel / Math.max(1, B * C);
  const Cg = C / groups;
  return { S, Cg, n: Cg * S, items: B * groups };
}

function groupNormShader(vec: boolean, wg: number, tex: boolean): string {
  return buildShader('groupnorm', { OUT_TEX: tex }, { V: vec ? 'vec4<f32>' : 'f32', W: vec ? 4 : 1, WG: wg, HELPERS: helpers(vec) });
}

function groupNormUniforms(w: Window, n: number, S: number, Cg: number, groups: number, silu: boolean, eps: number, nx: number, imgW: number): ArrayBuffer {
  return uniforms([
    ['u', w.items], ['u', n], ['u', S], ['u', Cg],
    ['u', groups], ['u', w.item0], ['u', w.base], ['u', silu ? 1 : 0],
    ['f', eps], ['u', nx], ['u', imgW], ['u', 0],
  ]);
}

/**
 * Whether groupNormIntoTexture takes x (B, C, H, W): the 'cpu' kernel, W a multiple of 4 and
 * groups of a multiple of 4 channels (a texel's four channels in one group), x within one
 * storage binding, and the (W, H, B C / 4) texture within the adapter's limits.
 */
export function groupNormTextureFits(x: Tensor, groups: number): boolean {
  const dev = x.device;
  if (x.rank !== 4 || dev.kind !== 'cpu') return false;
  const [B, C, H, W] = x.shape as [number, number, number, number];
  const limit = Math.min(dev.limits.maxStorageBufferBindingSize, maxBindingOverride ?? Infinity);
  return W % 4 === 0 && C % groups === 0 && (C / groups) % 4 === 0 && x.numel * 4 <= limit && x.numel > 0 &&
    W <= dev.limits.maxTextureDimension2D && H <= dev.limits.maxTextureDimension2D && (B * C) / 4 <= dev.limits.maxTextureArrayLayers;
}

/**
 * groupNorm (+ SiLU) of x (B, C, H, W) written into `tex`, a (W, H, B C / 4) rgba32float
 * texture (dev.allocTexture) whose texel (col, row, b C / 4 + c / 4) holds channels c .. c + 3
 * of one pixel: the layout the Winograd input transform reads (X_TEX). The values are
 * groupNorm's, bit for bit. Only where groupNormTextureFits.
 */
export function groupNormIntoTexture(x: Tensor, groups: number, gamma: Tensor, beta: Tensor, eps: number, silu: boolean, tex: GPUTexture): void {
  const op = 'groupNorm';
  const dev = x.device;
  const { S, Cg, n, items } = groupNormSizes(op, x, groups, gamma, beta);
  if (!groupNormTextureFits(x, groups)) throw new GpuError(`${op}: x ${shapeStr(x.shape)} with ${groups} groups cannot be written into a texture (see groupNormTextureFits)`);
  const [B, C, H, W] = x.shape as [number, number, number, number];
  if (tex.width !== W || tex.height !== H || tex.depthOrArrayLayers !== (B * C) / 4) {
    throw new GpuError(`${op}: x ${shapeStr(x.shape)} needs a ${W}x${H}x${(B * C) / 4} texture, got ${tex.width}x${tex.height}x${tex.depthOrArrayLayers}`);
  }
  const wg = 8;
  const pipe = dev.pipeline(`groupnorm vec4 wg${wg} tex`, () => groupNormShader(true, wg, true));
  const w: Window = { item0: 0, items, offset: 0, size: x.numel * 4, base: 0 };
  const grid = grid1d(items);
  dev.dispatch({
    label: `groupNorm ${shapeStr(x.shape)} G${groups}${silu ? ' silu' : ''} into texture`,
    family: 'groupNorm',
    pipeline: pipe,
    uniforms: groupNormUniforms(w, n, S, Cg, groups, silu, eps, grid[0], x.shape[3]!),
    bindings: [x.binding(), gamma.binding(), beta.binding(), null, textureBinding(tex)],
    workgroups: grid,
  });
}

// ------------------------------------------------------------------ layerNorm
/**
 * LayerNorm over the last axis as torch.nn.LayerNorm: x (..., C) f32, gamma / beta (C).
 * f32 statistics, biased variance, eps inside the sqrt. Returns (..., C).
 */
export function layerNorm(x: Tensor, gamma: Tensor, beta: Tensor, eps: number, opts: NormOptions = {}): Tensor {
  const op = 'layerNorm';
  const dev = x.device;
  checkF32(op, 'x', x);
  checkF32(op, 'gamma', gamma);
  checkF32(op, 'beta', beta);
  if (x.rank < 1) throw new GpuError(`${op}: x must be (..., C), got ${shapeStr(x.shape)}`);
  const C = x.shape[x.rank - 1]!;
  if (gamma.numel !== C || beta.numel !== C) {
    throw new GpuError(`${op}: gamma ${shapeStr(gamma.shape)} and beta ${shapeStr(beta.shape)} must have ${C} elements for x ${shapeStr(x.shape)}`);
  }
  const variant = pickVariant(dev, op, opts.variant);
  const y = Tensor.empty(dev, x.shape, 'f32', 'layerNorm out');
  if (x.numel === 0) return y;
  const rows = x.numel / C;
  const vec = variant !== 'naive' && C % 4 === 0;
  const perRow = variant === 'gpu';
  const pipe = perRow
    ? dev.pipeline(`layernorm_gpu ${vec ? 'vec4' : 'f32'}`, () => shader('layernorm_gpu', vec, 64))
    : dev.pipeline(`layernorm ${vec ? 'vec4' : 'f32'} wg${variant === 'naive' ? 64 : 8}`, () => shader('layernorm', vec, variant === 'naive' ? 64 : 8));
  const wgSize = variant === 'naive' ? 64 : 8;
  const label = `layerNorm ${shapeStr(x.shape)}`;
  for (const w of windows(dev, op, x, rows, C)) {
    const grid = perRow ? grid1d(w.items) : grid1d(Math.ceil(w.items / wgSize));
    dev.dispatch({
      label,
      family: 'layerNorm',
      pipeline: pipe,
      uniforms: uniforms([['u', w.items], ['u', C], ['u', w.base], ['u', grid[0]], ['f', eps]]),
      bindings: [x.window(w.offset, w.size), gamma.binding(), beta.binding(), y.window(w.offset, w.size)],
      workgroups: grid,
    });
  }
  return y;
}

// ------------------------------------------------------------------ softmax
/** Numerically stable softmax over the last axis: x (..., N) f32 -> (..., N). */
export function softmax(x: Tensor, opts: NormOptions = {}): Tensor {
  const op = 'softmax';
  const dev = x.device;
  checkF32(op, 'x', x);
  if (x.rank < 1) throw new GpuError(`${op}: x must be (..., N), got ${shapeStr(x.shape)}`);
  const N = x.shape[x.rank - 1]!;
  const variant = pickVariant(dev, op, opts.variant);
  const y = Tensor.empty(dev, x.shape, 'f32', 'softmax out');
  if (x.numel === 0) return y;
  const rows = x.numel / N;
  const vec = variant !== 'naive' && N % 4 === 0;
  const perRow = variant === 'gpu';
  const wgSize = variant === 'naive' ? 64 : 8;
  const pipe = perRow
    ? dev.pipeline(`softmax_gpu ${vec ? 'vec4' : 'f32'}`, () => shader('softmax_gpu', vec, 64))
    : dev.pipeline(`softmax ${vec ? 'vec4' : 'f32'} wg${wgSize}`, () => shader('softmax', vec, wgSize));
  const label = `softmax ${shapeStr(x.shape)}`;
  for (const w of windows(dev, op, x, rows, N)) {
    const grid = perRow ? grid1d(w.items) : grid1d(Math.ceil(w.items / wgSize));
    dev.dispatch({
      label,
      family: 'softmax',
      pipeline: pipe,
      uniforms: uniforms([['u', w.items], ['u', N], ['u', w.base], ['u', grid[0]]]),
      bindings: [x.window(w.offset, w.size), y.window(w.offset, w.size)],
      workgroups: grid,
    });
  }
  return y;
}
