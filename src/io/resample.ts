/**
 * PIL's `Image.resize` for 8-bit images (Pillow `libImaging/Resample.c`), bit for bit.
 *
 * Both the SD VAE preprocessing (`VaeImageProcessor`, BILINEAR) and the CLIP image processor
 * (BICUBIC) run this exact resampler, and the golden PNGs are its output; a "textbook"
 * bilinear or torch's bicubic (a = -0.75, no antialias) differs by up to 113 levels.
 *
 * What PIL does, and what this file reproduces:
 * - separable convolution, horizontal pass first, then vertical;
 * - the filter support is scaled by the downscale factor (antialiasing when shrinking);
 * - per output pixel, the input window [xmin, xmin + n) comes from the pixel centre
 *   `(x + 0.5) * scale` and the support, rounded with `(int)(v + 0.5)` (C truncation);
 * - the window's weights are normalised to sum 1 in double precision, then converted to
 *   fixed point with 22 fractional bits (`PRECISION_BITS = 32 - 8 - 2`), rounding away from 0;
 * - each pass accumulates integers starting at 0.5 (in fixed point), shifts right by 22 and
 *   clips to [0, 255], so the intermediate image is uint8;
 * - a pass is skipped when that dimension is unchanged (PIL's `need_horizontal` /
 *   `need_vertical` with the default box).
 */

/** Resampling filters supported (PIL `Image.Resampling.BILINEAR` / `BICUBIC`). */
export type ResampleFilter = 'bilinear' | 'bicubic';

const PRECISION_BITS = 32 - 8 - 2;
const FIXED_ONE = 1 << PRECISION_BITS;
const FIXED_HALF = 1 << (PRECISION_BITS - 1);

interface FilterDef {
  fn: (x: number) => number;
  support: number;
}

function bilinearFilter(x: number): number {
  if (x < 0) x = -x;
  if (x < 1) return 1 - x;
  return 0;
}

function bicubicFilter(x: number): number {
  // Keys' cubic convolution with a = -0.5 (PIL's choice; torch uses -0.75).
  const a = -0.5;
  if (x < 0) x = -x;
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0;
}

const FILTERS: Record<ResampleFilter, FilterDef> = {
  bilinear: { fn: bilinearFilter, support: 1 },
  bicubic: { fn: bicubicFilter, support: 2 },
};

/** Fixed-point weights of one pass: window start and length per output index, `ksize` weights each. */
interface Coeffs {
  ksize: number;
  /** bounds[2 * i] = first input index, bounds[2 * i + 1] = number of input pixels. */
  bounds: Int32Array;
  /** (outSize, ksize) fixed-point weights; entries past the window length are 0. */
  weights: Int32Array;
}

/** PIL `precompute_coeffs` + `normalize_coeffs_8bpc` for the box [0, inSize). */
function precomputeCoeffs(inSize: number, outSize: number, filter: FilterDef): Coeffs {
  const scale = inSize / outSize;
  const filterscale = scale < 1 ? 1 : scale;
  const support = filter.support * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const weights = new Int32Array(outSize * ksize);
  const k = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale; // in0 = 0
    const ss = 1 / filterscale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      const w = filter.fn((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (let x = 0; x < xmax; x++) {
      if (ww !== 0) k[x] /= ww;
    }
    for (let x = xmax; x < ksize; x++) k[x] = 0;
    for (let x = 0; x < ksize; x++) {
      const v = k[x]!;
      weights[xx * ksize + x] = v < 0 ? Math.trunc(-0.5 + v * FIXED_ONE) : Math.trunc(0.5 + v * FIXED_ONE);
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, weights };
}

/** `clip8`: fixed point -> uint8 with an arithmetic shift (floor) and clamping. */
function clip8(v: number): number {
  const s = v >> PRECISION_BITS;
  return s < 0 ? 0 : s > 255 ? 255 : s;
}

function resampleHorizontal(
  src: Uint8Array,
  width: number,
  height: number,
  channels: number,
  outW: number,
  c: Coeffs,
): Uint8Array {
  const out = new Uint8Array(outW * height * channels);
  const { ksize, bounds, weights } = c;
  for (let y = 0; y < height; y++) {
    const rowIn = y * width * channels;
    const rowOut = y * outW * channels;
    for (let xx = 0; xx < outW; xx++) {
      const xmin = bounds[xx * 2]!;
      const n = bounds[xx * 2 + 1]!;
      const kOff = xx * ksize;
      for (let ch = 0; ch < channels; ch++) {
        // |sum| < 2^31 for 8-bit inputs (PIL chose 22 bits for this), so int32 math is exact.
        let ss = FIXED_HALF;
        for (let x = 0; x < n; x++) {
          ss += src[rowIn + (x + xmin) * channels + ch]! * weights[kOff + x]!;
        }
        out[rowOut + xx * channels + ch] = clip8(ss);
      }
    }
  }
  return out;
}

function resampleVertical(
  src: Uint8Array,
  width: number,
  channels: number,
  outH: number,
  c: Coeffs,
): Uint8Array {
  const out = new Uint8Array(width * outH * channels);
  const { ksize, bounds, weights } = c;
  const stride = width * channels;
  for (let yy = 0; yy < outH; yy++) {
    const ymin = bounds[yy * 2]!;
    const n = bounds[yy * 2 + 1]!;
    const kOff = yy * ksize;
    for (let i = 0; i < stride; i++) {
      let ss = FIXED_HALF;
      for (let y = 0; y < n; y++) {
        ss += src[(y + ymin) * stride + i]! * weights[kOff + y]!;
      }
      out[yy * stride + i] = clip8(ss);
    }
  }
  return out;
}

/**
 * PIL `Image.resize((outW, outH), BILINEAR | BICUBIC)` of an 8-bit image.
 *
 * @param src interleaved pixels, (height, width, channels) row-major, uint8
 * @param channels 1 to 4; every channel is resampled the same way (no alpha premultiplication,
 *   as PIL does for "L" / "RGB"; for "RGBA" PIL premultiplies, which this does not)
 * @returns (outH, outW, channels) uint8; a copy when the size is unchanged
 */
export function resizeU8(
  src: Uint8Array,
  width: number,
  height: number,
  channels: number,
  outW: number,
  outH: number,
  filter: ResampleFilter,
): Uint8Array {
  const def = FILTERS[filter];
  if (def === undefined) {
    throw new Error(`resizeU8: filter must be 'bilinear' or 'bicubic', got ${JSON.stringify(filter)}`);
  }
  for (const [name, v] of [
    ['width', width],
    ['height', height],
    ['outW', outW],
    ['outH', outH],
    ['channels', channels],
  ] as const) {
    if (!Number.isInteger(v) || v < 1) {
      throw new Error(`resizeU8: ${name} must be a positive integer, got ${v}`);
    }
  }
  if (src.length !== width * height * channels) {
    throw new Error(
      `resizeU8: src has ${src.length} bytes, expected width*height*channels = ${width}*${height}*${channels} = ${width * height * channels}`,
    );
  }
  let cur = src;
  if (outW !== width) {
    cur = resampleHorizontal(cur, width, height, channels, outW, precomputeCoeffs(width, outW, def));
  }
  if (outH !== height) {
    cur = resampleVertical(cur, outW, channels, outH, precomputeCoeffs(height, outH, def));
  }
  return cur === src ? src.slice() : cur;
}
