/**
 * Image I/O with the semantics of the Python reference (PIL + diffusers' VaeImageProcessor).
 *
 * Decoding: PNG goes through fast-png so that every PNG flavour (palette, grey, 1/2/4/16-bit,
 * alpha) is converted exactly as PIL's `Image.open(p).convert('RGB')` does; JPEG / WebP / other
 * formats go through sharp (libjpeg-turbo / libwebp, as PIL uses), with the embedded ICC profile
 * ignored because PIL does not colour-manage either, and without EXIF auto-rotation (PIL's
 * `open` does not rotate).
 */
import * as fs from 'node:fs';
import sharp from 'sharp';
import { decode as decodePng, hasPngSignature } from 'fast-png';
import { writeFileAtomic } from './atomic.ts';
import { resizeU8 } from './resample.ts';

/** An 8-bit RGB image, pixels interleaved (height, width, 3) row-major. */
export interface ImageRGB {
  width: number;
  height: number;
  /** (height, width, 3) uint8 */
  data: Uint8Array;
}

/** A PNG's samples as stored: one element per sample, palette indices (not colours) for palette PNGs. */
export interface PngRaw {
  width: number;
  height: number;
  /** Samples per pixel as stored: 1 (grey or palette index), 2 (grey + alpha), 3 (RGB), 4 (RGBA). */
  channels: number;
  /** Bit depth of the file (1, 2, 4, 8 or 16). Sub-byte samples are unpacked, not rescaled. */
  bitDepth: number;
  /** (height, width, channels): Uint16Array when bitDepth is 16, otherwise Uint8Array. */
  data: Uint8Array | Uint16Array;
  /** Palette entries [r, g, b] or [r, g, b, a] (alpha from tRNS) for palette PNGs. */
  palette?: number[][];
}

function errMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function readFileOrThrow(path: string): Buffer {
  try {
    return fs.readFileSync(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new Error(`${path}: image file not found`);
    if (code === 'EISDIR') throw new Error(`${path}: is a folder, expected an image file`);
    throw new Error(`${path}: cannot read image file: ${errMessage(err)}`);
  }
}

/** Unpacks rows of sub-byte samples (PNG packs MSB first, each row padded to a byte). */
function unpackSubByte(packed: Uint8Array, width: number, height: number, depth: number): Uint8Array {
  const out = new Uint8Array(width * height);
  const rowBytes = Math.ceil((width * depth) / 8);
  const mask = (1 << depth) - 1;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const bit = x * depth;
      const byte = packed[y * rowBytes + (bit >> 3)]!;
      out[y * width + x] = (byte >> (8 - depth - (bit & 7))) & mask;
    }
  }
  return out;
}

function decodePngRaw(path: string, buf: Uint8Array): PngRaw {
  let png: ReturnType<typeof decodePng>;
  try {
    png = decodePng(buf);
  } catch (err) {
    throw new Error(`${path}: cannot decode PNG: ${errMessage(err)}`);
  }
  const { width, height, channels, depth } = png;
  let data: Uint8Array | Uint16Array;
  if (depth < 8) {
    if (channels !== 1) throw new Error(`${path}: PNG with ${channels} channels at bit depth ${depth} is invalid`);
    data = unpackSubByte(png.data as Uint8Array, width, height, depth);
  } else if (depth === 16) {
    data = png.data instanceof Uint16Array ? png.data : Uint16Array.from(png.data);
  } else {
    data = png.data instanceof Uint8Array ? png.data : new Uint8Array(png.data);
  }
  if (data.length !== width * height * channels) {
    throw new Error(`${path}: PNG decoded to ${data.length} samples, expected ${width}x${height}x${channels}`);
  }
  const out: PngRaw = { width, height, channels, bitDepth: depth, data };
  if (png.palette !== undefined) out.palette = png.palette.map((c) => [...c]);
  return out;
}

/**
 * Reads a PNG as stored, without colour conversion: palette PNGs give their palette INDICES
 * (what `np.array(Image.open(p))` gives for a "P" image, e.g. VOC-style label maps).
 */
export function readPngRaw(path: string): PngRaw {
  const buf = readFileOrThrow(path);
  if (!hasPngSignature(buf)) throw new Error(`${path}: not a PNG file (no PNG signature)`);
  return decodePngRaw(path, buf);
}

/** PIL `convert('RGB')` of a decoded PNG. */
function pngToRGB(path: string, png: PngRaw): ImageRGB {
  const { width, height, channels, bitDepth, data, palette } = png;
  const n = width * height;
  const out = new Uint8Array(n * 3);
  if (palette !== undefined) {
    // "P" -> "RGB": palette lookup; tRNS alpha is dropped; indices past the PLTE read as black.
    for (let i = 0; i < n; i++) {
      const c = palette[data[i]!];
      out[i * 3] = c?.[0] ?? 0;
      out[i * 3 + 1] = c?.[1] ?? 0;
      out[i * 3 + 2] = c?.[2] ?? 0;
    }
    return { width, height, data: out };
  }
  if (channels < 1 || channels > 4) throw new Error(`${path}: PNG has ${channels} channels, expected 1 to 4`);
  // 8-bit value of sample s of a channel, as PIL's unpackers / converters produce it.
  let to8: (v: number) => number;
  if (bitDepth === 16) {
    // Grey 16-bit opens as "I;16" and I;16 -> RGB saturates (values > 255 become 255);
    // the RGB / RGBA / LA 16-bit rawmodes ("RGB;16B" ...) keep the high byte.
    to8 = channels === 1 ? (v) => (v > 255 ? 255 : v) : (v) => v >> 8;
  } else if (bitDepth === 8) {
    to8 = (v) => v;
  } else {
    // Grey 1/2/4-bit: mode "1" or "L;2"/"L;4" unpackers scale to the full 0..255 range.
    const scale = 255 / ((1 << bitDepth) - 1);
    to8 = (v) => v * scale;
  }
  for (let i = 0; i < n; i++) {
    let r: number;
    let g: number;
    let b: number;
    if (channels <= 2) {
      r = g = b = to8(data[i * channels]!);
    } else {
      r = to8(data[i * channels]!);
      g = to8(data[i * channels + 1]!);
      b = to8(data[i * channels + 2]!);
    }
    out[i * 3] = r;
    out[i * 3 + 1] = g;
    out[i * 3 + 2] = b;
  }
  return { width, height, data: out };
}

/**
 * Reads an image file as 8-bit RGB the way PIL's `Image.open(path).convert('RGB')` does:
 * alpha dropped (no compositing), grey replicated, palette looked up, 16-bit PNG reduced as PIL
 * does (RGB/RGBA/LA: high byte; grey: saturated at 255).
 * Throws an Error naming the path for a missing or undecodable file.
 */
export async function readImageRGB(path: string): Promise<ImageRGB> {
  const buf = readFileOrThrow(path);
  if (hasPngSignature(buf)) return pngToRGB(path, decodePngRaw(path, buf));
  let raw: { data: Buffer; info: sharp.OutputInfo };
  try {
    raw = await sharp(buf, { ignoreIcc: true }).raw().toBuffer({ resolveWithObject: true });
  } catch (err) {
    throw new Error(`${path}: cannot decode image (expected JPEG, PNG or WebP): ${errMessage(err)}`);
  }
  const { width, height, channels } = raw.info;
  const src = raw.data;
  if (src.length !== width * height * channels) {
    throw new Error(`${path}: decoder returned ${src.length} bytes, expected ${width}x${height}x${channels} 8-bit samples`);
  }
  const n = width * height;
  const out = new Uint8Array(n * 3);
  for (let i = 0; i < n; i++) {
    if (channels <= 2) {
      const v = src[i * channels]!;
      out[i * 3] = v;
      out[i * 3 + 1] = v;
      out[i * 3 + 2] = v;
    } else {
      out[i * 3] = src[i * channels]!;
      out[i * 3 + 1] = src[i * channels + 1]!;
      out[i * 3 + 2] = src[i * channels + 2]!;
    }
  }
  return { width, height, data: out };
}

/**
 * diffusers `VaeImageProcessor.preprocess(img, size, size)` with `resample="bilinear"`:
 * PIL bilinear resize to size x size, then `x / 255` in float32 and `2x - 1`.
 * Float32 rounding of each step is exact here: one double operation rounded to float32 equals
 * the float32 operation.
 *
 * @returns (3, size, size) CHW float32 in [-1, 1] (the batch dim of `[1, 3, S, S]` is implicit)
 */
export function preprocessForVae(img: ImageRGB, size: number): Float32Array {
  const resized = resizeU8(img.data, img.width, img.height, 3, size, size, 'bilinear');
  const plane = size * size;
  const out = new Float32Array(3 * plane);
  const lut = new Float32Array(256);
  for (let v = 0; v < 256; v++) lut[v] = Math.fround(2 * Math.fround(v / 255) - 1);
  for (let i = 0; i < plane; i++) {
    out[i] = lut[resized[i * 3]!]!;
    out[plane + i] = lut[resized[i * 3 + 1]!]!;
    out[2 * plane + i] = lut[resized[i * 3 + 2]!]!;
  }
  return out;
}

/** Round half to even, as numpy's `round`. */
function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * diffusers `VaeImageProcessor.postprocess(x, "pil")`: `clamp(x / 2 + 0.5, 0, 1)` in float32,
 * `* 255` in float32, numpy round (half to even), uint8.
 *
 * @param chw (c, h, w) float32 image in about [-1, 1] (one batch item of the VAE output)
 * @returns (h, w, c) interleaved uint8
 */
export function latentImageToRGB(chw: Float32Array, c: number, h: number, w: number): Uint8Array {
  if (chw.length !== c * h * w) {
    throw new Error(`latentImageToRGB: got ${chw.length} values, expected c*h*w = ${c}*${h}*${w} = ${c * h * w}`);
  }
  const plane = h * w;
  const out = new Uint8Array(plane * c);
  for (let ch = 0; ch < c; ch++) {
    for (let i = 0; i < plane; i++) {
      let y = Math.fround(Math.fround(chw[ch * plane + i]! / 2) + 0.5);
      if (!(y > 0)) y = 0; // also maps NaN to 0 (numpy would give an undefined uint8)
      else if (y > 1) y = 1;
      out[i * c + ch] = roundHalfEven(Math.fround(y * 255));
    }
  }
  return out;
}

async function writePng(path: string, width: number, height: number, channels: 1 | 3, data: Uint8Array): Promise<void> {
  if (data.length !== width * height * channels) {
    throw new Error(`${path}: PNG data has ${data.length} bytes, expected ${width}x${height}x${channels} = ${width * height * channels}`);
  }
  let img = sharp(data, { raw: { width, height, channels } });
  // sharp would otherwise expand one-channel raw input to an RGB PNG.
  if (channels === 1) img = img.toColourspace('b-w');
  const png = await img.png().toBuffer();
  await writeFileAtomic(path, png);
}

/** Writes an 8-bit greyscale PNG atomically. `data`: (height, width) uint8. */
export async function writeGreyPng(path: string, width: number, height: number, data: Uint8Array): Promise<void> {
  await writePng(path, width, height, 1, data);
}

/** Writes an 8-bit RGB PNG atomically. `data`: (height, width, 3) interleaved uint8. */
export async function writeRgbPng(path: string, width: number, height: number, data: Uint8Array): Promise<void> {
  await writePng(path, width, height, 3, data);
}
