/**
 * Segmentation metrics of the reference's `evaluate_segmentation.py` (VCG-team/elbo-t2ialign),
 * number for number, without rescanning pixels per threshold.
 *
 * What the reference computes (ALGORITHM.md section 2):
 * - per image, heatmaps `{index}_{class}.png` (greyscale, `/255` in float32, PIL-bilinear
 *   resized to the ground-truth size when they differ) are stacked into `(num_cls, h, w)` with
 *   background channel 0 all zeros; per pixel `value = max`, `pred = argmax` (first maximum);
 * - a threshold `t / 100` moves pixels with `value < t` (compared in float32) to background;
 *   VOC: prediction := 255 where the ground truth is 255;
 * - per image and class present in prediction or ground truth (255 excluded): the tuple
 *   `(sum_p, sum_t, sum_tp, h, w, cls_idx, img_idx)`, in the iteration order of the Python set
 *   `(set(p) | set(t)) - {255}` (reproduced by {@link pySetOrder}: it decides ties when the
 *   foreground is sorted by object size);
 * - `apply_metrics`: per class sums of P, T, TP over a bucket; IoU = TP / (T + P - TP + 1e-10)
 *   etc.; means over the classes with at least one tuple (numpy pairwise summation), x 100;
 * - a binary search over integer percents [start, end] for the best mIoU; the report at the best
 *   threshold: overall, every class, and the foreground tuples sorted (stably) by
 *   `sum_t / (h * w)` split into `bucket_num` buckets of `len // bucket_num + 1` tuples.
 *
 * Speed: a pixel's max value (uint8) and argmax class do not depend on the threshold, so each
 * image is reduced once to histograms of the max value per (gt class, argmax class) pair; the
 * statistics at any threshold are sums of suffix counts of these histograms.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { readPngRaw, type PngRaw } from '../io/image.ts';
import { resizeU8 } from '../io/resample.ts';
import {
  classIndexOf,
  classNames,
  DatasetError,
  labelMapFromPng,
  loadImageList,
  type DatasetConfig,
  type ImageEntry,
  type LabelMap,
} from './dataset.ts';

// ---------------------------------------------------------------------------------------------
// Python / numpy semantics that the numbers depend on
// ---------------------------------------------------------------------------------------------

/**
 * numpy's pairwise summation of a float64 array (`np.add.reduce`, used by `np.mean`): blocks of
 * at most 128 summed with 8 accumulators, larger arrays split in halves rounded to multiples of 8.
 */
export function pairwiseSum(a: ArrayLike<number>, start = 0, n = a.length - start): number {
  if (n < 8) {
    let res = 0;
    for (let i = 0; i < n; i++) res += a[start + i]!;
    return res;
  }
  if (n <= 128) {
    const r = [0, 0, 0, 0, 0, 0, 0, 0];
    for (let j = 0; j < 8; j++) r[j] = a[start + j]!;
    let i = 8;
    for (; i < n - (n % 8); i += 8) {
      for (let j = 0; j < 8; j++) r[j]! += a[start + i + j]!;
    }
    let res = r[0]! + r[1]! + (r[2]! + r[3]!) + (r[4]! + r[5]! + (r[6]! + r[7]!));
    for (; i < n; i++) res += a[start + i]!;
    return res;
  }
  let n2 = Math.floor(n / 2);
  n2 -= n2 % 8;
  return pairwiseSum(a, start, n2) + pairwiseSum(a, start + n2, n - n2);
}

/** `np.mean(x)`: pairwise sum / n (NaN for an empty array). */
export function npMean(a: ArrayLike<number>): number {
  return pairwiseSum(a) / a.length;
}

/**
 * A CPython (3.7+) set of non-negative small ints, enough to reproduce iteration order: open
 * addressing with `hash(k) == k`, 9 linear probes then perturbation, resize at 3/5 fill.
 */
class PySet {
  table: Array<number | null> = new Array<number | null>(8).fill(null);
  mask = 7;
  fill = 0;
  used = 0;

  private resize(minused: number): void {
    let newsize = 8;
    while (newsize <= minused) newsize <<= 1;
    const old = this.table;
    this.table = new Array<number | null>(newsize).fill(null);
    this.mask = newsize - 1;
    this.fill = this.used;
    for (const k of old) if (k !== null) this.insertClean(k);
  }

  private insertClean(key: number): void {
    const mask = this.mask;
    let perturb = key;
    let i = key & mask;
    for (;;) {
      if (this.table[i] === null) {
        this.table[i] = key;
        return;
      }
      if (i + 9 <= mask) {
        for (let j = 1; j <= 9; j++) {
          if (this.table[i + j] === null) {
            this.table[i + j] = key;
            return;
          }
        }
      }
      perturb = Math.floor(perturb / 32);
      i = (i * 5 + 1 + perturb) & mask;
    }
  }

  /** `set_add_entry` (no deletions happen here, so there are no dummy entries). */
  add(key: number): void {
    const mask = this.mask;
    let perturb = key;
    let i = key & mask;
    for (;;) {
      let probes = i + 9 <= mask ? 9 : 0;
      let e = i;
      do {
        const k = this.table[e];
        if (k === null) {
          this.table[e] = key;
          this.fill++;
          this.used++;
          if (this.fill * 5 >= mask * 3) this.resize(this.used > 50000 ? this.used * 2 : this.used * 4);
          return;
        }
        if (k === key) return;
        e++;
      } while (probes-- > 0);
      perturb = Math.floor(perturb / 32);
      i = (i * 5 + 1 + perturb) & mask;
    }
  }

  /** `set_merge(this, other)` as used by `set.update` / copying. */
  merge(other: PySet): void {
    if (other === this || other.used === 0) return;
    if ((this.fill + other.used) * 5 >= this.mask * 3) this.resize((this.used + other.used) * 2);
    if (this.fill === 0 && this.mask === other.mask) {
      this.table = other.table.slice();
      this.fill = other.fill;
      this.used = other.used;
      return;
    }
    if (this.fill === 0) {
      this.fill = other.used;
      this.used = other.used;
      for (const k of other.table) if (k !== null) this.insertClean(k);
      return;
    }
    for (const k of other.table) if (k !== null) this.add(k);
  }

  keys(): number[] {
    const out: number[] = [];
    for (const k of this.table) if (k !== null) out.push(k);
    return out;
  }

  static fromIter(keys: readonly number[]): PySet {
    const s = new PySet();
    for (const k of keys) s.add(k);
    return s;
  }

  copy(): PySet {
    const s = new PySet();
    s.merge(this);
    return s;
  }
}

/**
 * Iteration order of the Python expression `(set(p) | set(t)) - {255}` where `p` and `t` are
 * the ascending keys of `np.unique` (ints below 2^31).
 */
export function pySetOrder(pKeys: readonly number[], tKeys: readonly number[]): number[] {
  const union = PySet.fromIter(pKeys).copy();
  union.merge(PySet.fromIter(tKeys));
  // set_difference: copy-and-discard when len >> 2 > len(other), else rebuild by insertion
  if (union.used >> 2 > 1) return union.copy().keys().filter((k) => k !== 255);
  const out = new PySet();
  for (const k of union.keys()) if (k !== 255) out.add(k);
  return out.keys();
}

/** Python `repr(float)` (what `json.dump` writes for a float); NaN as `NaN`. */
export function pyFloatRepr(x: number): string {
  if (Number.isNaN(x)) return 'NaN';
  if (x === Infinity) return 'Infinity';
  if (x === -Infinity) return '-Infinity';
  if (x === 0) return Object.is(x, -0) ? '-0.0' : '0.0';
  const sign = x < 0 ? '-' : '';
  const [mant, expText] = Math.abs(x).toExponential().split('e') as [string, string];
  const digits = mant.replace('.', '');
  const e = Number(expText);
  if (e < -4 || e >= 16) {
    const m = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    const ae = Math.abs(e);
    return `${sign}${m}e${e < 0 ? '-' : '+'}${ae < 10 ? '0' : ''}${ae}`;
  }
  if (e < 0) return `${sign}0.${'0'.repeat(-e - 1)}${digits}`;
  if (digits.length <= e + 1) return `${sign}${digits}${'0'.repeat(e + 1 - digits.length)}.0`;
  return `${sign}${digits.slice(0, e + 1)}.${digits.slice(e + 1)}`;
}

// ---------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------

/** One tuple of the reference's `instance_statistics`: an (image, class) pair. */
export interface InstanceStatistic {
  /** Predicted pixels of the class. */
  sum_p: number;
  /** Ground-truth pixels of the class. */
  sum_t: number;
  /** Pixels both predicted and labelled as the class. */
  sum_tp: number;
  /** Ground-truth height. */
  h: number;
  /** Ground-truth width. */
  w: number;
  /** Class index (0 = background). */
  cls_idx: number;
  /** Image index (position in the id list). */
  img_idx: number;
}

/** The reference's `apply_metrics` output for one group of tuples (NaN where it writes NaN). */
export interface BucketMetrics {
  m_IoU: number[];
  m_TP_T: number[];
  m_TP_P: number[];
  m_FP: number[];
  m_FN: number[];
  m_f1_score: number[];
  /** Number of tuples after filtering (per-class and foreground entries only). */
  count?: number;
  /** Sort key (object size ratio) of each bucket's last tuple (foreground only); null when there is none. */
  boundary?: Array<number | null>;
}

/** The content of segmentation_metrics.json. */
export interface SegmentationMetrics {
  /** `l / 100` of the binary search. */
  bestThreshold: number;
  overall: BucketMetrics;
  /** Every class in index order, background first, keyed by name in the JSON. */
  perClass: Array<{ name: string; metrics: BucketMetrics }>;
  /** `foreground(sort by t_area)`: foreground tuples split into buckets by object size. */
  foreground: BucketMetrics;
}

/** Result of {@link evaluateSegmentation}. */
export interface EvaluationResult {
  metrics: SegmentationMetrics;
  thresholdSearch: {
    start: number;
    end: number;
    bestThresholdPercent: number;
    bestThreshold: number;
    bestMIoU: number;
  };
  /** The reference's key metric (mIoU, percent) at every integer threshold in [start, end]. */
  mIoUByThreshold: Array<{ threshold: number; percent: number; mIoU: number }>;
  /** Instance statistics at the best threshold, in the reference's order. */
  statistics: InstanceStatistic[];
  /** Images evaluated (those skipped because their ground truth is missing are not here). */
  images: ImageEntry[];
  /** Images left out (missing ground truth, with `skipMissing`). */
  skipped: ImageEntry[];
  /** Heatmap files found per image index. */
  heatmaps: Map<number, HeatmapFile[]>;
  /** Warnings issued while evaluating. */
  warnings: string[];
}

/** Options of {@link evaluateSegmentation}. */
export interface EvaluateOptions {
  /** Folder of heatmaps `{image_index}_{class}.png` (the reference's `<output_path>/heatmaps`). */
  heatmapDir: string;
  /** First threshold percent of the search (reference default 1). */
  start?: number;
  /** Last threshold percent of the search (reference default 99). */
  end?: number;
  /** Number of object-size buckets of the foreground report (reference default 10). */
  bucketNum?: number;
  /** Leave out images whose ground truth is missing, with a warning, instead of failing. */
  skipMissing?: boolean;
  /** Images to evaluate (default: the dataset's id list). */
  images?: ImageEntry[];
  /** Receives warnings as they happen (they are also returned). */
  warn?: (msg: string) => void;
  /** Progress of the loading pass. */
  onProgress?: (done: number, total: number) => void;
  /** Images loaded ahead of the one being reduced (default 8). */
  concurrency?: number;
}

/** A heatmap file of one image. */
export interface HeatmapFile {
  /** Absolute path. */
  file: string;
  /** Class name as written in the file name. */
  name: string;
  /** Class index it resolves to (1-based). */
  cls: number;
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

/**
 * Lists `heatmapDir` and resolves every `{index}_{class}.png` to a class index as the reference
 * does (category name or synonym, first match). Files that are not PNGs are skipped with a
 * warning; a PNG whose name does not follow the pattern, a class the dataset does not know,
 * or two files of one image resolving to the same class are errors (the reference exits or
 * crashes on them, or picks one at random).
 *
 * @returns image index -> heatmap files, ascending by class index
 */
export function scanHeatmaps(cfg: DatasetConfig, heatmapDir: string, warn: (msg: string) => void): Map<number, HeatmapFile[]> {
  let names: string[];
  try {
    names = fs.readdirSync(heatmapDir);
  } catch (err) {
    throw new DatasetError(`heatmap folder ${heatmapDir}: cannot list (${(err as Error).message})`);
  }
  names.sort();
  const out = new Map<number, HeatmapFile[]>();
  const ignored: string[] = [];
  for (const name of names) {
    const file = path.join(heatmapDir, name);
    if (!name.toLowerCase().endsWith('.png')) {
      ignored.push(name);
      continue;
    }
    const m = /^(0|[1-9][0-9]*)_([^_.]+)\.png$/.exec(name);
    if (m === null || m[2]!.trim() !== m[2]) {
      throw new DatasetError(
        `heatmap ${file}: file name must be "{image_index}_{class}.png" (decimal index, a class name without "_" or "." or surrounding spaces)`,
      );
    }
    const idx = Number(m[1]);
    const clsName = m[2]!;
    const cls = classIndexOf(cfg, clsName);
    if (cls < 0) {
      throw new DatasetError(`heatmap ${file}: unknown class: ${clsName} (not a category or synonym in ${cfg.source})`);
    }
    let list = out.get(idx);
    if (list === undefined) out.set(idx, (list = []));
    const dup = list.find((h) => h.cls === cls);
    if (dup !== undefined) {
      throw new DatasetError(
        `heatmaps ${dup.file} and ${file}: both resolve to class "${cfg.categories[cls - 1]!.name}" of image ${idx}; keep one`,
      );
    }
    list.push({ file, name: clsName, cls });
  }
  if (ignored.length > 0) {
    warn(`${heatmapDir}: ${ignored.length} file(s) that are not PNG heatmaps ignored (${ignored.slice(0, 3).join(', ')}${ignored.length > 3 ? ', ...' : ''})`);
  }
  for (const list of out.values()) list.sort((a, b) => a.cls - b.cls);
  return out;
}

/** PIL `convert("L")` of a decoded PNG: ITU-R 601 luma `(19595 R + 38470 G + 7471 B + 2^15) >> 16`. */
function pngToL(png: PngRaw): Uint8Array {
  const { width, height, channels, bitDepth, data, palette } = png;
  const n = width * height;
  const out = new Uint8Array(n);
  const l24 = (r: number, g: number, b: number): number => (r * 19595 + g * 38470 + b * 7471 + 0x8000) >>> 16;
  if (palette !== undefined) {
    const lut = new Uint8Array(256);
    for (let i = 0; i < 256; i++) {
      const c = palette[i];
      lut[i] = c === undefined ? 0 : l24(c[0] ?? 0, c[1] ?? 0, c[2] ?? 0);
    }
    for (let i = 0; i < n; i++) out[i] = lut[data[i]!]!;
    return out;
  }
  let to8: (v: number) => number;
  if (bitDepth === 16) to8 = channels <= 2 ? (v) => (v > 255 ? 255 : v) : (v) => v >> 8;
  else if (bitDepth === 8) to8 = (v) => v;
  else {
    const scale = 255 / ((1 << bitDepth) - 1);
    to8 = (v) => v * scale;
  }
  if (channels <= 2) {
    if (bitDepth === 8 && channels === 1) return data as Uint8Array;
    for (let i = 0; i < n; i++) out[i] = to8(data[i * channels]!);
  } else {
    for (let i = 0; i < n; i++) {
      const o = i * channels;
      out[i] = l24(to8(data[o]!), to8(data[o + 1]!), to8(data[o + 2]!));
    }
  }
  return out;
}

/**
 * Decodes a PNG file for evaluation. 8-bit non-interlaced PNGs (what heatmaps and label maps
 * are) are inflated by node's native zlib, several times faster than a pure-JS inflate
 * (evaluation is mostly PNG decoding); every other PNG goes through
 * {@link readPngRaw}. The result is the same {@link PngRaw} (samples as stored, palette
 * indices for palette PNGs).
 */
export async function readPngForEval(file: string): Promise<PngRaw> {
  const buf = await fs.promises.readFile(file);
  const sig = [137, 80, 78, 71, 13, 10, 26, 10];
  if (buf.length < 33 || sig.some((b, i) => buf[i] !== b)) throw new Error(`${file}: not a PNG file (no PNG signature)`);
  const width = buf.readUInt32BE(16);
  const height = buf.readUInt32BE(20);
  const depth = buf[24]!;
  const colorType = buf[25]!;
  const interlace = buf[28]!;
  const channelsOf: Record<number, number> = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 };
  const channels = channelsOf[colorType];
  if (depth !== 8 || interlace !== 0 || channels === undefined || buf.toString('latin1', 12, 16) !== 'IHDR') {
    return readPngRaw(file);
  }
  const idat: Buffer[] = [];
  let palette: number[][] | undefined;
  let alpha: Buffer | undefined;
  let pos = 8;
  while (pos + 8 <= buf.length) {
    const len = buf.readUInt32BE(pos);
    const type = buf.toString('latin1', pos + 4, pos + 8);
    const data = buf.subarray(pos + 8, pos + 8 + len);
    if (data.length !== len) throw new Error(`${file}: truncated PNG (chunk ${type})`);
    if (type === 'IDAT') idat.push(data);
    else if (type === 'PLTE') {
      palette = [];
      for (let i = 0; i + 2 < len; i += 3) palette.push([data[i]!, data[i + 1]!, data[i + 2]!]);
    } else if (type === 'tRNS') alpha = data;
    else if (type === 'IEND') break;
    pos += 12 + len;
  }
  if (colorType === 3 && palette === undefined) throw new Error(`${file}: palette PNG without PLTE chunk`);
  if (palette !== undefined && alpha !== undefined) {
    for (let i = 0; i < alpha.length && i < palette.length; i++) palette[i]!.push(alpha[i]!);
  }
  const stride = width * channels;
  let raw: Buffer;
  try {
    // one output chunk of the known size; synchronous inflate costs less CPU than handing
    // each image to the thread pool
    raw = zlib.inflateSync(idat.length === 1 ? idat[0]! : Buffer.concat(idat), {
      chunkSize: Math.max(64, Math.min(height * (stride + 1), 0x3fffffff)),
    });
  } catch (err) {
    throw new Error(`${file}: cannot decode PNG: ${(err as Error).message}`);
  }
  if (raw.length < height * (stride + 1)) throw new Error(`${file}: truncated PNG image data`);
  const out = new Uint8Array(height * stride);
  const bpp = channels;
  let src = 0;
  for (let y = 0; y < height; y++) {
    const filter = raw[src++]!;
    const o = y * stride;
    const up = o - stride;
    const first = Math.min(bpp, stride);
    switch (filter) {
      case 0:
        out.set(raw.subarray(src, src + stride), o);
        break;
      case 1: // Sub
        for (let i = 0; i < first; i++) out[o + i] = raw[src + i]!;
        for (let i = first; i < stride; i++) out[o + i] = raw[src + i]! + out[o + i - bpp]!;
        break;
      case 2: // Up
        if (y === 0) out.set(raw.subarray(src, src + stride), o);
        else for (let i = 0; i < stride; i++) out[o + i] = raw[src + i]! + out[up + i]!;
        break;
      case 3: // Average
        if (y === 0) {
          for (let i = 0; i < first; i++) out[o + i] = raw[src + i]!;
          for (let i = first; i < stride; i++) out[o + i] = raw[src + i]! + (out[o + i - bpp]! >> 1);
        } else {
          for (let i = 0; i < first; i++) out[o + i] = raw[src + i]! + (out[up + i]! >> 1);
          for (let i = first; i < stride; i++) out[o + i] = raw[src + i]! + ((out[o + i - bpp]! + out[up + i]!) >> 1);
        }
        break;
      case 4: // Paeth; with no row above it predicts from the left (Sub), at the row start from above (Up)
        if (y === 0) {
          for (let i = 0; i < first; i++) out[o + i] = raw[src + i]!;
          for (let i = first; i < stride; i++) out[o + i] = raw[src + i]! + out[o + i - bpp]!;
        } else {
          for (let i = 0; i < first; i++) out[o + i] = raw[src + i]! + out[up + i]!;
          for (let i = first; i < stride; i++) {
            const a = out[o + i - bpp]!;
            const b = out[up + i]!;
            const c = out[up + i - bpp]!;
            const pa = Math.abs(b - c);
            const pb = Math.abs(a - c);
            const pc = Math.abs(a + b - c - c);
            out[o + i] = raw[src + i]! + (pa <= pb && pa <= pc ? a : pb <= pc ? b : c);
          }
        }
        break;
      default:
        throw new Error(`${file}: cannot decode PNG: bad row filter ${filter} in row ${y}`);
    }
    src += stride;
  }
  const png: PngRaw = { width, height, channels, bitDepth: 8, data: out };
  if (palette !== undefined && colorType === 3) png.palette = palette;
  return png;
}

/** Reads a heatmap as PIL `Image.open(p).convert("L")`, resized (PIL bilinear) to w x h if needed. */
export function loadHeatmap(file: string, w: number, h: number): Uint8Array {
  let png: PngRaw;
  try {
    png = readPngRaw(file);
  } catch (err) {
    throw new DatasetError(`heatmap ${file}: does not decode (${(err as Error).message})`);
  }
  return heatmapFromPng(png, w, h);
}

function heatmapFromPng(png: PngRaw, w: number, h: number): Uint8Array {
  const grey = pngToL(png);
  if (png.width === w && png.height === h) return grey;
  return resizeU8(grey, png.width, png.height, 1, w, h, 'bilinear');
}

/** The per-pixel prediction of one image before thresholding. */
export interface ImagePrediction {
  gt: LabelMap;
  /** (h, w) max heatmap value, 0..255 (the reference's `predict_value * 255`). */
  value: Uint8Array;
  /** (h, w) argmax class index (0 where every heatmap is 0). */
  cls: Uint8Array;
}

/** One image's decoded inputs: the label map and the heatmaps at its size, ascending by class. */
interface ImageInputs {
  gt: LabelMap;
  maps: Uint8Array[];
  classes: number[];
}

/** Reads one image's ground truth and heatmaps (in parallel; errors name the file). */
async function loadImageInputs(cfg: DatasetConfig, entry: ImageEntry, heatmaps: readonly HeatmapFile[]): Promise<ImageInputs> {
  const gtPromise = readPngForEval(entry.gtPath).catch((err: unknown) => {
    if (!fs.existsSync(entry.gtPath)) throw new DatasetError(`ground truth ${entry.gtPath}: file not found`);
    throw new DatasetError(`ground truth ${entry.gtPath}: does not decode (${(err as Error).message})`);
  });
  const hmPromises = heatmaps.map((hm) =>
    readPngForEval(hm.file).catch((err: unknown) => {
      throw new DatasetError(`heatmap ${hm.file}: does not decode (${(err as Error).message})`);
    }),
  );
  // no unhandled rejections while an earlier one is awaited
  for (const p of [gtPromise, ...hmPromises]) p.catch(() => undefined);
  const gt = labelMapFromPng(entry.gtPath, await gtPromise, cfg.dataset, true);
  const maps: Uint8Array[] = [];
  for (const p of hmPromises) maps.push(heatmapFromPng(await p, gt.width, gt.height));
  return { gt, maps, classes: heatmaps.map((h) => h.cls) };
}

/**
 * Per-pixel max value and argmax class of the heatmaps (ascending class order + strict ">" =
 * numpy argmax's first maximum; 0 where every heatmap is 0), written into `value` and `cls`.
 */
function argmaxInto(maps: readonly Uint8Array[], classes: readonly number[], n: number, value: Uint8Array, cls: Uint8Array): void {
  if (maps.length === 0) {
    value.fill(0, 0, n);
    cls.fill(0, 0, n);
    return;
  }
  const m0 = maps[0]!;
  const c0 = classes[0]!;
  for (let i = 0; i < n; i++) {
    const x = m0[i]!;
    value[i] = x;
    cls[i] = x > 0 ? c0 : 0;
  }
  for (let k = 1; k < maps.length; k++) {
    const m = maps[k]!;
    const c = classes[k]!;
    for (let i = 0; i < n; i++) {
      const x = m[i]!;
      if (x > value[i]!) {
        value[i] = x;
        cls[i] = c;
      }
    }
  }
}

/**
 * Loads one image's ground truth and heatmaps and reduces them to the per-pixel max value and
 * argmax class, as the reference's `load_gt_and_predict`.
 *
 * @throws DatasetError naming the file for a missing or undecodable ground truth or heatmap
 */
export async function loadImagePrediction(cfg: DatasetConfig, entry: ImageEntry, heatmaps: readonly HeatmapFile[]): Promise<ImagePrediction> {
  const { gt, maps, classes } = await loadImageInputs(cfg, entry, heatmaps);
  const n = gt.width * gt.height;
  const value = new Uint8Array(n);
  const cls = new Uint8Array(n);
  argmaxInto(maps, classes, n, value, cls);
  return { gt, value, cls };
}

/** Buffers reused from image to image. */
interface Scratch {
  /** ((numCls + 1) * numCls * 256) histogram counts, all 0 between images. */
  hist: Uint32Array;
  value: Uint8Array;
  cls: Uint8Array;
}

/** One image reduced to threshold-independent histograms. */
interface ImageSummary {
  entry: ImageEntry;
  h: number;
  w: number;
  /** Ascending ground-truth values present (255 included) and their pixel counts. */
  tKeys: number[];
  tCounts: number[];
  /** VOC and the ground truth has 255: the prediction holds 255 there. */
  p255: boolean;
  /** (gt, argmax class) pairs; gt 255 only for non-VOC datasets. */
  pairG: number[];
  pairC: number[];
  /** Per pair: suffix[v] = pixels with max value >= v, v in 0..256. */
  suffix: Uint32Array[];
}

function summarize(
  cfg: DatasetConfig,
  entry: ImageEntry,
  inputs: ImageInputs,
  scratch: Scratch,
): ImageSummary {
  const numCls = cfg.categories.length + 1;
  const { gt } = inputs;
  const n = gt.data.length;
  // ground-truth counts, and the reference's failure on labels it has no slot for
  const tMap = new Map<number, number>();
  let g: Uint8Array;
  if (gt.data instanceof Uint8Array) {
    g = gt.data;
  } else {
    const wide = gt.data;
    for (let i = 0; i < n; i++) if (wide[i]! >= 256) tMap.set(wide[i]!, (tMap.get(wide[i]!) ?? 0) + 1);
    g = Uint8Array.from(wide, (v) => (v >= 256 ? 0 : v));
  }
  const isVoc = cfg.dataset === 'voc';
  const { hist } = scratch;
  const row255 = numCls; // ground truth 255 of non-VOC datasets: counted in P, never in T / TP
  // histogram row of each ground-truth value; -1: not counted (VOC's 255, or a label outside
  // the classes, which is reported below before any count is used)
  const rowBase = new Int32Array(256).fill(-1);
  for (let v = 0; v < numCls && v < 255; v++) rowBase[v] = v * numCls;
  if (!isVoc) rowBase[255] = row255 * numCls;
  const tHist = new Uint32Array(256);
  // one pass: ground-truth counts and the (gt, argmax class, max value) histograms; the max
  // and argmax of one or two heatmaps are computed in place (ascending class order + strict
  // ">" = numpy argmax's first maximum; class 0 where the max is 0)
  const { maps, classes } = inputs;
  if (maps.length === 0) {
    for (let i = 0; i < n; i++) tHist[g[i]!]++;
    for (let v = 0; v < 256; v++) if (tHist[v]! > 0 && rowBase[v]! >= 0) hist[rowBase[v]! << 8] += tHist[v]!;
  } else if (maps.length === 1) {
    const m0 = maps[0]!;
    const c0 = classes[0]!;
    for (let i = 0; i < n; i++) {
      const gv = g[i]!;
      tHist[gv]++;
      const rb = rowBase[gv]!;
      if (rb < 0) continue;
      const x = m0[i]!;
      hist[((rb + (x > 0 ? c0 : 0)) << 8) | x]++;
    }
  } else if (maps.length === 2) {
    const m0 = maps[0]!;
    const m1 = maps[1]!;
    const c0 = classes[0]!;
    const c1 = classes[1]!;
    for (let i = 0; i < n; i++) {
      const gv = g[i]!;
      tHist[gv]++;
      const rb = rowBase[gv]!;
      if (rb < 0) continue;
      const a = m0[i]!;
      const b = m1[i]!;
      if (b > a) hist[((rb + c1) << 8) | b]++;
      else hist[((rb + (a > 0 ? c0 : 0)) << 8) | a]++;
    }
  } else {
    if (scratch.value.length < n) {
      scratch.value = new Uint8Array(n);
      scratch.cls = new Uint8Array(n);
    }
    const { value, cls } = scratch;
    argmaxInto(maps, classes, n, value, cls);
    for (let i = 0; i < n; i++) {
      const gv = g[i]!;
      tHist[gv]++;
      const rb = rowBase[gv]!;
      if (rb < 0) continue;
      hist[((rb + cls[i]!) << 8) | value[i]!]++;
    }
  }
  for (let v = 0; v < 256; v++) if (tHist[v]! > 0) tMap.set(v, tHist[v]!);
  const tKeys = [...tMap.keys()].sort((a, b) => a - b);
  const bad = tKeys.filter((v) => v >= numCls && v !== 255);
  if (bad.length > 0) {
    hist.fill(0);
    throw new DatasetError(
      `ground truth ${entry.gtPath}: label value(s) ${bad.slice(0, 5).join(', ')} outside the dataset's classes 0..${numCls - 1} (and 255 = ignore)`,
    );
  }
  const pairG: number[] = [];
  const pairC: number[] = [];
  const suffix: Uint32Array[] = [];
  for (const gv of tKeys) {
    if (gv === 255 && isVoc) continue;
    const row = gv === 255 ? row255 : gv;
    for (let c = 0; c < numCls; c++) {
      const base = (row * numCls + c) << 8;
      let total = 0;
      for (let v = 0; v < 256; v++) total += hist[base + v]!;
      if (total === 0) continue;
      pairG.push(gv);
      pairC.push(c);
      const s = new Uint32Array(257);
      for (let v = 255; v >= 0; v--) {
        s[v] = s[v + 1]! + hist[base + v]!;
        hist[base + v] = 0;
      }
      suffix.push(s);
    }
  }
  return {
    entry,
    h: gt.height,
    w: gt.width,
    tKeys,
    tCounts: tKeys.map((k) => tMap.get(k)!),
    p255: isVoc && tMap.has(255),
    pairG,
    pairC,
    suffix,
  };
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

/**
 * Smallest max value (0..255; 256 = none) that stays foreground at threshold `percent`:
 * the reference keeps a pixel when `float32(v / 255) >= float32(percent / 100)`.
 */
export function minForegroundValue(percent: number): number {
  const thr = Math.fround(percent / 100);
  for (let v = 0; v < 256; v++) if (Math.fround(v / 255) >= thr) return v;
  return 256;
}

/** Per-image p / t / tp counts at one threshold (p includes 255 for VOC ignore pixels). */
function imageCounts(s: ImageSummary, vmin: number): { p: Map<number, number>; tp: Map<number, number> } {
  const p = new Map<number, number>();
  const tp = new Map<number, number>();
  const add = (m: Map<number, number>, k: number, v: number): void => {
    if (v > 0) m.set(k, (m.get(k) ?? 0) + v);
  };
  for (let j = 0; j < s.pairG.length; j++) {
    const g = s.pairG[j]!;
    const c = s.pairC[j]!;
    const sf = s.suffix[j]!;
    const total = sf[0]!;
    const above = c === 0 ? 0 : sf[vmin]!;
    const below = total - above;
    add(p, c, above);
    add(p, 0, below);
    if (g === c && c !== 0) add(tp, c, above);
    if (g === 0) add(tp, 0, below);
  }
  if (s.p255) {
    const n255 = s.tCounts[s.tKeys.indexOf(255)]!;
    p.set(255, n255);
    tp.set(255, n255);
  }
  return { p, tp };
}

/** Class totals at one threshold over all images: the reference's `get_key_metric` mIoU. */
function keyMetric(summaries: readonly ImageSummary[], numCls: number, vmin: number, T: Float64Array): number {
  const P = new Float64Array(numCls);
  const TP = new Float64Array(numCls);
  for (const s of summaries) {
    for (let j = 0; j < s.pairG.length; j++) {
      const g = s.pairG[j]!;
      const c = s.pairC[j]!;
      const sf = s.suffix[j]!;
      const total = sf[0]!;
      const above = c === 0 ? 0 : sf[vmin]!;
      P[c] += above;
      P[0] += total - above;
      if (g === c && c !== 0) TP[c] += above;
      if (g === 0) TP[0] += total - above;
    }
  }
  const iou: number[] = [];
  for (let k = 0; k < numCls; k++) {
    if (P[k]! > 0 || T[k]! > 0) iou.push(TP[k]! / (T[k]! + P[k]! - TP[k]! + 1e-10));
  }
  return npMean(iou) * 100;
}

/** The reference's instance statistics of every image at one threshold. */
function instanceStatistics(summaries: readonly ImageSummary[], vmin: number): InstanceStatistic[] {
  const out: InstanceStatistic[] = [];
  for (const s of summaries) {
    const { p, tp } = imageCounts(s, vmin);
    const pKeys = [...p.keys()].sort((a, b) => a - b);
    const t = new Map<number, number>();
    s.tKeys.forEach((k, i) => t.set(k, s.tCounts[i]!));
    for (const k of pySetOrder(pKeys, s.tKeys)) {
      out.push({
        sum_p: p.get(k) ?? 0,
        sum_t: t.get(k) ?? 0,
        sum_tp: tp.get(k) ?? 0,
        h: s.h,
        w: s.w,
        cls_idx: k,
        img_idx: s.entry.index,
      });
    }
  }
  return out;
}

/**
 * The reference's `apply_metrics`: filter, stable sort, split into `bucketNum` buckets of
 * `len // bucketNum + 1` tuples, and per bucket the means over classes with tuples.
 *
 * @param numCls classes including background
 */
export function applyMetrics(
  statistics: readonly InstanceStatistic[],
  numCls: number,
  opts: { filter?: (s: InstanceStatistic) => boolean; sortKey?: (s: InstanceStatistic) => number; bucketNum?: number } = {},
): BucketMetrics {
  const bucketNum = opts.bucketNum ?? 1;
  const m: BucketMetrics = { m_IoU: [], m_TP_T: [], m_TP_P: [], m_FP: [], m_FN: [], m_f1_score: [] };
  let stats = statistics.slice();
  if (opts.filter !== undefined) {
    stats = stats.filter(opts.filter);
    m.count = stats.length;
  }
  const sortKey = opts.sortKey;
  if (sortKey !== undefined) {
    const keyed = stats.map((s, i) => ({ s, k: sortKey(s), i }));
    keyed.sort((a, b) => (a.k < b.k ? -1 : a.k > b.k ? 1 : a.i - b.i));
    stats = keyed.map((x) => x.s);
    m.boundary = [];
  }
  const bucketSize = Math.floor(stats.length / bucketNum) + 1;
  for (let b = 0; b < bucketNum; b++) {
    const start = b * bucketSize;
    const end = Math.min((b + 1) * bucketSize, stats.length);
    const P = new Float64Array(numCls);
    const T = new Float64Array(numCls);
    const TP = new Float64Array(numCls);
    const cnt = new Int32Array(numCls);
    for (let i = start; i < end; i++) {
      const s = stats[i]!;
      P[s.cls_idx] += s.sum_p;
      T[s.cls_idx] += s.sum_t;
      TP[s.cls_idx] += s.sum_tp;
      cnt[s.cls_idx]++;
    }
    const iou: number[] = [];
    const tpT: number[] = [];
    const tpP: number[] = [];
    const fp: number[] = [];
    const fn: number[] = [];
    const f1: number[] = [];
    for (let k = 0; k < numCls; k++) {
      if (cnt[k] === 0) continue;
      const p = P[k]!;
      const t = T[k]!;
      const x = TP[k]!;
      const union = t + p - x + 1e-10;
      iou.push(x / union);
      tpT.push(x / (t + 1e-10));
      tpP.push(x / (p + 1e-10));
      fp.push((p - x) / union);
      fn.push((t - x) / union);
      f1.push((2 * x) / (t + p + 1e-10));
    }
    m.m_IoU.push(npMean(iou) * 100);
    m.m_TP_T.push(npMean(tpT) * 100);
    m.m_TP_P.push(npMean(tpP) * 100);
    m.m_FP.push(npMean(fp) * 100);
    m.m_FN.push(npMean(fn) * 100);
    m.m_f1_score.push(npMean(f1) * 100);
    if (sortKey !== undefined) {
      // Python's stats[end - 1]; with no tuples at all the reference raises IndexError
      const last = end - 1 >= 0 ? stats[end - 1] : stats[stats.length - 1];
      m.boundary!.push(last === undefined ? null : sortKey(last));
    }
  }
  return m;
}

/** Object-size sort key of the foreground report: `sum_t / (h * w)`. */
export const objectSizeRatio = (s: InstanceStatistic): number => s.sum_t / (s.h * s.w);

/** The report at one threshold: overall, every class, foreground by object size. */
export function buildReport(
  statistics: readonly InstanceStatistic[],
  names: readonly string[],
  bestThreshold: number,
  bucketNum: number,
): SegmentationMetrics {
  const numCls = names.length;
  return {
    bestThreshold,
    overall: applyMetrics(statistics, numCls),
    perClass: names.map((name, k) => ({ name, metrics: applyMetrics(statistics, numCls, { filter: (s) => s.cls_idx === k }) })),
    foreground: applyMetrics(statistics, numCls, {
      filter: (s) => s.cls_idx !== 0,
      sortKey: objectSizeRatio,
      bucketNum,
    }),
  };
}

/**
 * Evaluates heatmaps against the dataset's ground truth as `evaluate_segmentation.py` does
 * (without CRF): loads every image once, searches the best threshold, and builds the report.
 *
 * @throws DatasetError naming the file for a missing ground truth (unless `skipMissing`), an
 *   undecodable PNG, a heatmap of an unknown class, or a label outside the dataset's classes
 */
export async function evaluateSegmentation(cfg: DatasetConfig, opts: EvaluateOptions): Promise<EvaluationResult> {
  const warnings: string[] = [];
  const warn = (msg: string): void => {
    warnings.push(msg);
    opts.warn?.(msg);
  };
  const start = opts.start ?? 1;
  const end = opts.end ?? 99;
  const bucketNum = opts.bucketNum ?? 10;
  if (!Number.isInteger(start) || !Number.isInteger(end)) {
    throw new DatasetError(`start and end must be integer percents, got start=${start} end=${end}`);
  }
  if (start >= end) throw new DatasetError(`start threshold should be less than end (start=${start}, end=${end})`);
  if (!Number.isInteger(bucketNum) || bucketNum < 1) throw new DatasetError(`bucket_num must be a positive integer, got ${bucketNum}`);
  const names = classNames(cfg);
  const numCls = names.length;
  if (numCls > 256) {
    throw new DatasetError(`${cfg.source}: ${numCls - 1} classes; at most 255 are supported (the reference stores predictions as uint8)`);
  }

  const all = opts.images ?? loadImageList(cfg, warn);
  const heatmaps = scanHeatmaps(cfg, opts.heatmapDir, warn);
  const known = new Set(all.map((e) => e.index));
  const orphan = [...heatmaps.keys()].filter((i) => !known.has(i)).sort((a, b) => a - b);
  if (orphan.length > 0) {
    warn(
      `${opts.heatmapDir}: heatmaps of image index(es) ${orphan.slice(0, 5).join(', ')}${orphan.length > 5 ? ', ...' : ''} not in the id list (${all.length} images); ignored`,
    );
  }

  const missing = all.filter((e) => !fs.existsSync(e.gtPath));
  if (missing.length > 0) {
    const list = missing.slice(0, 5).map((e) => `${e.name} (${e.gtPath})`).join(', ');
    const more = missing.length > 5 ? ` and ${missing.length - 5} more` : '';
    if (!opts.skipMissing) {
      throw new DatasetError(
        `ground truth missing for ${missing.length} of ${all.length} images: ${list}${more} (check data_root / gt_path, or pass --skip-missing to leave them out)`,
      );
    }
    warn(`ground truth missing for ${missing.length} of ${all.length} images, left out: ${list}${more}`);
  }
  const missingSet = new Set(missing);
  const images = all.filter((e) => !missingSet.has(e));
  if (images.length === 0) throw new DatasetError(`no images to evaluate (id list ${cfg.dataNameList})`);
  const noHeatmap = images.filter((e) => !heatmaps.has(e.index)).length;
  if (noHeatmap > 0) warn(`${noHeatmap} of ${images.length} images have no heatmap; their prediction is all background`);

  const scratch: Scratch = { hist: new Uint32Array((numCls + 1) * numCls * 256), value: new Uint8Array(0), cls: new Uint8Array(0) };
  // a window of images in flight: reading and inflating run on the thread pool while the
  // previous images are reduced on this thread
  const window = Math.max(1, opts.concurrency ?? 8);
  const pending: Array<Promise<ImageInputs> | undefined> = [];
  const startLoad = (i: number): void => {
    const e = images[i]!;
    const p = loadImageInputs(cfg, e, heatmaps.get(e.index) ?? []);
    p.catch(() => undefined);
    pending[i] = p;
  };
  for (let i = 0; i < Math.min(window, images.length); i++) startLoad(i);
  const summaries: ImageSummary[] = [];
  for (let i = 0; i < images.length; i++) {
    const inputs = await pending[i]!;
    pending[i] = undefined;
    if (i + window < images.length) startLoad(i + window);
    summaries.push(summarize(cfg, images[i]!, inputs, scratch));
    opts.onProgress?.(i + 1, images.length);
  }

  const T = new Float64Array(numCls);
  for (const s of summaries) s.tKeys.forEach((k, i) => k !== 255 && (T[k] += s.tCounts[i]!));

  const byPercent = new Map<number, number>();
  const mIoUByThreshold: EvaluationResult['mIoUByThreshold'] = [];
  for (let pct = start; pct <= end; pct++) {
    const v = keyMetric(summaries, numCls, minForegroundValue(pct), T);
    byPercent.set(pct, v);
    mIoUByThreshold.push({ threshold: pct / 100, percent: pct, mIoU: v });
  }
  // the reference's binary search (not an argmax: it assumes a unimodal curve)
  let l = start;
  let r = end;
  while (l < r) {
    const mid = Math.floor((l + r) / 2);
    if (byPercent.get(mid)! < byPercent.get(mid + 1)!) l = mid + 1;
    else r = mid;
  }
  const statistics = instanceStatistics(summaries, minForegroundValue(l));
  const metrics = buildReport(statistics, names, l / 100, bucketNum);
  if (metrics.foreground.count === 0) {
    warn('no foreground in ground truth or prediction: the object-size report is empty (the reference fails here)');
  }
  return {
    metrics,
    thresholdSearch: { start, end, bestThresholdPercent: l, bestThreshold: l / 100, bestMIoU: byPercent.get(l)! },
    mIoUByThreshold,
    statistics,
    images,
    skipped: missing,
    heatmaps,
    warnings,
  };
}

/** The mask the reference saves with `save_mask`: argmax class, 0 where below the threshold. */
export function thresholdMask(pred: ImagePrediction, thresholdPercent: number, dataset: string): Uint8Array {
  const vmin = minForegroundValue(thresholdPercent);
  const n = pred.value.length;
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = pred.value[i]! >= vmin ? pred.cls[i]! : 0;
  if (dataset === 'voc') {
    const g = pred.gt.data;
    for (let i = 0; i < n; i++) if (g[i] === 255) out[i] = 255;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// JSON in the reference's layout
// ---------------------------------------------------------------------------------------------

function jsonString(s: string): string {
  // Python's json.dumps(ensure_ascii=True)
  return JSON.stringify(s).replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

function floatOrNull(x: number | null, nanAsNull: boolean): string {
  if (x === null) return 'null';
  if (nanAsNull && !Number.isFinite(x)) return 'null';
  return pyFloatRepr(x);
}

function bucketJson(m: BucketMetrics, ind: string, nanAsNull: boolean): string {
  const i1 = ind + '    ';
  const i2 = i1 + '    ';
  const lines: string[] = [];
  const list = (key: string, vals: ReadonlyArray<number | null>): string =>
    vals.length === 0
      ? `${i1}${jsonString(key)}: []`
      : `${i1}${jsonString(key)}: [\n${vals.map((v) => i2 + floatOrNull(v, nanAsNull)).join(',\n')}\n${i1}]`;
  lines.push(list('m_IoU', m.m_IoU), list('m_TP_T', m.m_TP_T), list('m_TP_P', m.m_TP_P));
  lines.push(list('m_FP', m.m_FP), list('m_FN', m.m_FN), list('m_f1_score', m.m_f1_score));
  if (m.count !== undefined) lines.push(`${i1}"count": ${m.count}`);
  if (m.boundary !== undefined) lines.push(list('boundary', m.boundary));
  return `{\n${lines.join(',\n')}\n${ind}}`;
}

/**
 * segmentation_metrics.json text, laid out as the reference's `json.dump(log, f, indent=4)`.
 *
 * @param nanAsNull write `null` where the reference writes `NaN` (default; `NaN` is not JSON)
 */
export function metricsToJson(m: SegmentationMetrics, nanAsNull = true): string {
  const ind = '    ';
  const parts: string[] = [`${ind}"best threshold": ${pyFloatRepr(m.bestThreshold)}`];
  parts.push(`${ind}"overall": ${bucketJson(m.overall, ind, nanAsNull)}`);
  for (const { name, metrics } of m.perClass) parts.push(`${ind}${jsonString(name)}: ${bucketJson(metrics, ind, nanAsNull)}`);
  parts.push(`${ind}"foreground(sort by t_area)": ${bucketJson(m.foreground, ind, nanAsNull)}`);
  return `{\n${parts.join(',\n')}\n}`;
}
