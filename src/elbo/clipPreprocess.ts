/**
 * transformers' slow `CLIPImageProcessor` (4.51), what `CLIPProcessor(images=...)` runs for the
 * CLIP score of evaluate_generation.py, bit for bit on 8-bit RGB input:
 *
 * 1. resize with PIL (`resample` 3 = BICUBIC, antialiased, uint8 between passes) so the shortest
 *    side becomes `size.shortest_edge` and the other `int(shortest * long / short)` (truncated;
 *    256x192 -> 42x32); a `{height, width}` size resizes to exactly that;
 * 2. centre crop `crop_size` at top = (H - ch) // 2, left = (W - cw) // 2 (floor, as transformers'
 *    `center_crop`; OpenAI's torchvision `CenterCrop` rounds instead and lands one pixel off when
 *    the margin is 3 mod 4), zero-padding when the image is smaller than the crop;
 * 3. `astype(float64) * (1/255)` rounded to float32;
 * 4. `(x - mean) / std` in float32 (mean and std rounded to float32 first);
 * 5. channels first: (3, crop_h, crop_w).
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { ImageRGB } from '../io/image.js';
import { readJsonConfig } from '../io/modelFolder.js';
import { resizeU8, type ResampleFilter } from '../io/resample.js';

/** OpenAI's CLIP normalisation (transformers' OPENAI_CLIP_MEAN / OPENAI_CLIP_STD). */
export const OPENAI_CLIP_MEAN: readonly [number, number, number] = [0.48145466, 0.4578275, 0.40821073];
export const OPENAI_CLIP_STD: readonly [number, number, number] = [0.26862954, 0.26130258, 0.27577711];

/** The preprocessing parameters of a CLIP model folder (`preprocessor_config.json`). */
export interface ClipImageProcessorConfig {
  /** Resize target: the shortest edge (aspect kept), or an exact size. */
  size: { shortestEdge: number } | { height: number; width: number };
  cropHeight: number;
  cropWidth: number;
  doResize: boolean;
  doCenterCrop: boolean;
  doRescale: boolean;
  /** Multiplier of the uint8 values (1/255), applied in float64 then rounded to float32. */
  rescaleFactor: number;
  doNormalize: boolean;
  mean: readonly [number, number, number];
  std: readonly [number, number, number];
  resample: ResampleFilter;
}

/** transformers' defaults of CLIPImageProcessor (clip-vit-base/large: 224). */
export function defaultClipImageProcessorConfig(): ClipImageProcessorConfig {
  return {
    size: { shortestEdge: 224 },
    cropHeight: 224,
    cropWidth: 224,
    doResize: true,
    doCenterCrop: true,
    doRescale: true,
    rescaleFactor: 1 / 255,
    doNormalize: true,
    mean: OPENAI_CLIP_MEAN,
    std: OPENAI_CLIP_STD,
    resample: 'bicubic',
  };
}

const posInt = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v > 0;

function triple(v: unknown, key: string, where: string, positive: boolean): [number, number, number] {
  if (typeof v === 'number' && Number.isFinite(v)) v = [v, v, v];
  if (!Array.isArray(v) || v.length !== 3 || !v.every((x) => typeof x === 'number' && Number.isFinite(x) && (!positive || x > 0))) {
    throw new Error(`${where}: "${key}" must be a number or a list of 3 ${positive ? 'positive ' : ''}numbers (one per RGB channel), got ${JSON.stringify(v)}`);
  }
  return [v[0], v[1], v[2]];
}

/**
 * Parses a `preprocessor_config.json` object (old `CLIPFeatureExtractor` files with int `size` /
 * `crop_size`, or new ones with `{"shortest_edge": n}` / `{"height": h, "width": w}`); absent keys
 * take CLIPImageProcessor's defaults. Unknown keys are ignored.
 */
export function parseClipImageProcessorConfig(raw: Record<string, unknown>, where: string): ClipImageProcessorConfig {
  const c = defaultClipImageProcessorConfig();
  const bool = (key: string, def: boolean): boolean => {
    const v = raw[key];
    if (v === undefined || v === null) return def;
    if (typeof v !== 'boolean') throw new Error(`${where}: "${key}" must be true or false, got ${JSON.stringify(v)}`);
    return v;
  };
  const size = raw['size'];
  if (size !== undefined && size !== null) {
    if (posInt(size)) c.size = { shortestEdge: size };
    else if (typeof size === 'object' && !Array.isArray(size)) {
      const s = size as Record<string, unknown>;
      if (posInt(s['shortest_edge'])) c.size = { shortestEdge: s['shortest_edge'] };
      else if (posInt(s['height']) && posInt(s['width'])) c.size = { height: s['height'], width: s['width'] };
      else throw new Error(`${where}: "size" must be an int, {"shortest_edge": n} or {"height": h, "width": w}, got ${JSON.stringify(size)}`);
    } else throw new Error(`${where}: "size" must be an int, {"shortest_edge": n} or {"height": h, "width": w}, got ${JSON.stringify(size)}`);
  }
  const crop = raw['crop_size'];
  if (crop !== undefined && crop !== null) {
    if (posInt(crop)) {
      c.cropHeight = crop;
      c.cropWidth = crop;
    } else if (typeof crop === 'object' && !Array.isArray(crop) && posInt((crop as Record<string, unknown>)['height']) && posInt((crop as Record<string, unknown>)['width'])) {
      c.cropHeight = (crop as Record<string, number>)['height']!;
      c.cropWidth = (crop as Record<string, number>)['width']!;
    } else throw new Error(`${where}: "crop_size" must be an int or {"height": h, "width": w}, got ${JSON.stringify(crop)}`);
  }
  c.doResize = bool('do_resize', c.doResize);
  c.doCenterCrop = bool('do_center_crop', c.doCenterCrop);
  c.doRescale = bool('do_rescale', c.doRescale);
  c.doNormalize = bool('do_normalize', c.doNormalize);
  const rf = raw['rescale_factor'];
  if (rf !== undefined && rf !== null) {
    if (typeof rf !== 'number' || !Number.isFinite(rf)) throw new Error(`${where}: "rescale_factor" must be a number, got ${JSON.stringify(rf)}`);
    c.rescaleFactor = rf;
  }
  if (raw['image_mean'] !== undefined && raw['image_mean'] !== null) c.mean = triple(raw['image_mean'], 'image_mean', where, false);
  if (raw['image_std'] !== undefined && raw['image_std'] !== null) c.std = triple(raw['image_std'], 'image_std', where, true);
  const rs = raw['resample'];
  if (rs !== undefined && rs !== null) {
    // PIL: 2 = BILINEAR, 3 = BICUBIC (the only two the port's resampler implements).
    if (rs === 3) c.resample = 'bicubic';
    else if (rs === 2) c.resample = 'bilinear';
    else throw new Error(`${where}: "resample" ${JSON.stringify(rs)} is not supported (3 = PIL BICUBIC, 2 = BILINEAR)`);
  }
  return c;
}

/** Reads `<dir>/preprocessor_config.json` (errors name the file). */
export function loadClipImageProcessorConfig(dir: string): ClipImageProcessorConfig {
  const file = join(dir, 'preprocessor_config.json');
  if (!existsSync(file)) {
    throw new Error(`${file}: not found; a CLIP model folder needs its preprocessor_config.json (as CLIPProcessor.from_pretrained does)`);
  }
  return parseClipImageProcessorConfig(readJsonConfig(file), file);
}

/**
 * Output (width, height) of the resize step for an input of `width` x `height`
 * (transformers' `get_resize_output_image_size(default_to_square=False)`).
 */
export function clipResizeSize(width: number, height: number, cfg: ClipImageProcessorConfig): [number, number] {
  if (!cfg.doResize) return [width, height];
  if ('height' in cfg.size) return [cfg.size.width, cfg.size.height];
  const s = cfg.size.shortestEdge;
  if (width <= height) return [s, Math.trunc((s * height) / width)];
  return [Math.trunc((s * width) / height), s];
}

/** Step 1: the PIL resize of an 8-bit RGB image (a copy when the size is unchanged). */
export function clipResize(img: ImageRGB, cfg: ClipImageProcessorConfig): ImageRGB {
  const [w, h] = clipResizeSize(img.width, img.height, cfg);
  if (w === img.width && h === img.height) return { width: w, height: h, data: img.data.slice() };
  return { width: w, height: h, data: resizeU8(img.data, img.width, img.height, 3, w, h, cfg.resample) };
}

/**
 * Where transformers' `center_crop` takes the crop of an H x W image: top / left (floor of the
 * halved margin; negative when the crop is larger and the image gets zero-padded).
 */
export function clipCropOffset(width: number, height: number, cropWidth: number, cropHeight: number): { top: number; left: number } {
  return { top: Math.floor((height - cropHeight) / 2), left: Math.floor((width - cropWidth) / 2) };
}

/**
 * The full `CLIPImageProcessor` of one 8-bit RGB image.
 * @returns (3, cropHeight, cropWidth) float32 CHW `pixel_values` (the batch dim is implicit)
 */
export function preprocessForClip(img: ImageRGB, cfg: ClipImageProcessorConfig): Float32Array {
  if (img.data.length !== img.width * img.height * 3) {
    throw new Error(`preprocessForClip: image data has ${img.data.length} bytes, expected ${img.width}x${img.height}x3`);
  }
  const r = clipResize(img, cfg);
  const W = r.width;
  const H = r.height;
  // Crop (or pad) window in the resized image: output pixel (y, x) reads (y + top, x + left).
  let top = 0;
  let left = 0;
  let outH = H;
  let outW = W;
  if (cfg.doCenterCrop) {
    const ch = cfg.cropHeight;
    const cw = cfg.cropWidth;
    const o = clipCropOffset(W, H, cw, ch);
    if (o.top >= 0 && o.left >= 0 && o.top + ch <= H && o.left + cw <= W) {
      top = o.top;
      left = o.left;
      outH = ch;
      outW = cw;
    } else {
      // transformers pads to max(crop, size), centring the image at ceil(margin / 2), then crops
      // [max(0, t), min(newH, t + ch)) around the shifted offset.
      const newH = Math.max(ch, H);
      const newW = Math.max(cw, W);
      const padTop = Math.ceil((newH - H) / 2);
      const padLeft = Math.ceil((newW - W) / 2);
      const t = o.top + padTop;
      const l = o.left + padLeft;
      const t0 = Math.max(0, t);
      const l0 = Math.max(0, l);
      outH = Math.min(newH, t + ch) - t0;
      outW = Math.min(newW, l + cw) - l0;
      top = t0 - padTop;
      left = l0 - padLeft;
    }
  }
  const plane = outH * outW;
  const out = new Float32Array(3 * plane);
  const mean = cfg.mean.map((m) => Math.fround(m));
  const std = cfg.std.map((s) => Math.fround(s));
  const scale = cfg.rescaleFactor;
  for (let y = 0; y < outH; y++) {
    const sy = y + top;
    for (let x = 0; x < outW; x++) {
      const sx = x + left;
      const inside = sy >= 0 && sy < H && sx >= 0 && sx < W;
      for (let c = 0; c < 3; c++) {
        let v = inside ? r.data[(sy * W + sx) * 3 + c]! : 0;
        if (cfg.doRescale) v = Math.fround(v * scale);
        // One double operation on float32 operands, rounded to float32, is the float32 operation.
        if (cfg.doNormalize) v = Math.fround(Math.fround(v - mean[c]!) / std[c]!);
        out[c * plane + y * outW + x] = v;
      }
    }
  }
  return out;
}

/** (height, width) of what {@link preprocessForClip} returns for an input of that size. */
export function clipOutputSize(width: number, height: number, cfg: ClipImageProcessorConfig): [number, number] {
  if (cfg.doCenterCrop) return [cfg.cropHeight, cfg.cropWidth];
  const [w, h] = clipResizeSize(width, height, cfg);
  return [h, w];
}
