/**
 * Dataset description in the reference's format (`metadata/<dataset>/info.yaml` of
 * VCG-team/elbo-t2ialign): class names with synonyms, path templates, the image id list and
 * image-level labels.
 *
 * The reference loads info.yaml with OmegaConf and lets the command line override any key with
 * `key=value` (OmegaConf dot-list, values parsed as YAML scalars; an unknown key is an error).
 * Paths in info.yaml are relative to the working directory of the reference repository; here a
 * relative path is tried against the current directory first and then against the folder of
 * info.yaml, so both `metadata/voc/info.yaml` from the project root and a self-contained
 * dataset folder work.
 *
 * Image-level labels: the reference reads them from `cls_labels.npy` (a pickled dict, not
 * readable here). For every benchmark they equal the foreground classes present in the ground
 * truth mask after the dataset's label mapping, so they are derived from the mask
 * ({@link labelsFromGt}), or taken from a user JSON ({@link loadLabelsJson}).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parse as parseYaml, parseDocument } from 'yaml';
import { readPngRaw, type PngRaw } from '../io/image.ts';

/** One foreground category of the dataset: its name and the synonyms a heatmap may use. */
export interface Category {
  /** Category name as written in info.yaml (the key under `category`). */
  name: string;
  /** Synonyms (trimmed) from info.yaml; may be empty. */
  synonyms: string[];
}

/** A parsed info.yaml with overrides applied. */
export interface DatasetConfig {
  /** Path of the info.yaml file that was read. */
  source: string;
  /** `dataset`: the dataset name; "voc" and "coco" switch on the reference's label rules. */
  dataset: string;
  /** `data_root`, resolved to an absolute path (see module comment). */
  dataRoot: string;
  /** `data_name_list`: path of the image id list, resolved to an absolute path. */
  dataNameList: string;
  /** `img_path` template, e.g. `{data_root}/JPEGImages/{img_name}.jpg`. */
  imgPath: string;
  /** `gt_path` template, e.g. `{data_root}/SegmentationClassAug/{img_name}.png`. */
  gtPath: string;
  /** Foreground categories in info.yaml order; class index = position + 1 (0 is background). */
  categories: Category[];
  /** `bg_category`: background words (used by prompts, not by evaluation). */
  bgCategory: string[];
  /** The whole merged configuration as plain data (every key of info.yaml plus overrides). */
  raw: Record<string, unknown>;
}

/** Error raised for a bad dataset description or dataset file; the message names the file. */
export class DatasetError extends Error {
  override name = 'DatasetError';
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Parses `key=value` overrides the way the reference's command line does (OmegaConf
 * `from_dotlist`): the value is parsed as a YAML scalar or flow collection (`3` is a number,
 * `False` a boolean, `"{data_root}/gt/{img_name}.png"` a string); dotted keys address nested
 * maps. Arguments without `=` are appended to the previous one with a space, as the reference
 * does for values that the shell split.
 *
 * @returns the overrides as `[dottedKey, value]` pairs in command-line order
 */
export function parseOverrides(args: readonly string[]): Array<[string, unknown]> {
  const joined: string[] = [];
  for (const arg of args) {
    if (arg.includes('=')) joined.push(arg);
    else if (joined.length > 0) joined[joined.length - 1] += ` ${arg}`;
    else throw new DatasetError(`override "${arg}" must have the form key=value`);
  }
  return joined.map((item) => {
    const eq = item.indexOf('=');
    const key = item.slice(0, eq).trim();
    const text = item.slice(eq + 1);
    if (key === '') throw new DatasetError(`override "${item}" has an empty key`);
    let value: unknown;
    if (text.trim() === '') value = '';
    else {
      try {
        value = parseYaml(text);
      } catch {
        value = text;
      }
    }
    return [key, value];
  });
}

/** Sets `cfg[a][b]... = value` for a dotted key, creating maps as needed. */
function setDotted(cfg: Record<string, unknown>, key: string, value: unknown): void {
  const parts = key.split('.');
  let cur: Record<string, unknown> = cfg;
  for (let i = 0; i < parts.length - 1; i++) {
    const next = cur[parts[i]!];
    if (!isRecord(next)) cur[parts[i]!] = {};
    cur = cur[parts[i]!] as Record<string, unknown>;
  }
  cur[parts[parts.length - 1]!] = value;
}

/** True when the dotted key names an existing key of `cfg` (the reference's `check_key`). */
export function hasDottedKey(cfg: Record<string, unknown>, key: string): boolean {
  const parts = key.split('.');
  let cur: unknown = cfg;
  for (const p of parts) {
    if (!isRecord(cur) || !(p in cur)) return false;
    cur = cur[p];
  }
  return true;
}

/**
 * Resolves a path from info.yaml: absolute paths as they are; relative paths against the
 * current directory when that exists, else against the folder of info.yaml when that exists,
 * else against the current directory (so the error names the path the reference would use).
 */
export function resolveDatasetPath(p: string, cfgDir: string): string {
  if (path.isAbsolute(p)) return p;
  const fromCwd = path.resolve(p);
  if (fs.existsSync(fromCwd)) return fromCwd;
  const fromCfg = path.resolve(cfgDir, p);
  if (fs.existsSync(fromCfg)) return fromCfg;
  return fromCwd;
}

/**
 * Fills a path template the way Python's `str.format(data_root=..., img_name=...)` does:
 * `{data_root}` and `{img_name}` are replaced, `{{` / `}}` are literal braces; any other field is
 * an error (the reference raises KeyError).
 */
export function formatTemplate(template: string, fields: Record<string, string>, what = 'template'): string {
  let out = '';
  for (let i = 0; i < template.length; i++) {
    const ch = template[i]!;
    if (ch === '{') {
      if (template[i + 1] === '{') {
        out += '{';
        i++;
        continue;
      }
      const close = template.indexOf('}', i + 1);
      if (close < 0) throw new DatasetError(`${what} "${template}": unmatched "{"`);
      const field = template.slice(i + 1, close);
      const value = fields[field];
      if (value === undefined) {
        throw new DatasetError(
          `${what} "${template}": unknown field {${field}}; expected one of ${Object.keys(fields)
            .map((k) => `{${k}}`)
            .join(', ')}`,
        );
      }
      out += value;
      i = close;
    } else if (ch === '}') {
      if (template[i + 1] === '}') i++;
      else throw new DatasetError(`${what} "${template}": single "}" (write "}}" for a literal brace)`);
      out += '}';
    } else {
      out += ch;
    }
  }
  return out;
}

function requireString(cfg: Record<string, unknown>, key: string, source: string): string {
  const v = cfg[key];
  if (typeof v === 'string') return v;
  if (typeof v === 'number') return String(v);
  throw new DatasetError(`${source}: "${key}" must be a string, got ${v === undefined ? 'nothing' : JSON.stringify(v)}`);
}

function parseCategories(cfg: Record<string, unknown>, source: string): Category[] {
  const cat = cfg.category;
  if (!isRecord(cat)) {
    throw new DatasetError(`${source}: "category" must be a map of class name -> list of synonyms`);
  }
  const out: Category[] = [];
  for (const [name, syn] of Object.entries(cat)) {
    let synonyms: string[];
    if (syn === null || syn === undefined) synonyms = [];
    else if (Array.isArray(syn)) synonyms = syn.map((s) => String(s).trim());
    else if (typeof syn === 'string') synonyms = [syn.trim()];
    else {
      throw new DatasetError(`${source}: category "${name}" must map to a list of synonyms, got ${JSON.stringify(syn)}`);
    }
    out.push({ name, synonyms });
  }
  if (out.length === 0) throw new DatasetError(`${source}: "category" lists no classes`);
  return out;
}

/**
 * Reads an info.yaml in the reference's format and applies `key=value` overrides.
 *
 * @param file path of info.yaml
 * @param overrides `[dottedKey, value]` pairs (see {@link parseOverrides}); every key must exist
 *   in info.yaml, as the reference's `check_key` demands
 * @throws DatasetError naming the file and key on a missing or malformed entry
 */
export function loadDatasetConfig(file: string, overrides: ReadonlyArray<readonly [string, unknown]> = []): DatasetConfig {
  const source = path.resolve(file);
  let text: string;
  try {
    text = fs.readFileSync(source, 'utf8');
  } catch (err) {
    throw new DatasetError(`dataset config ${file}: cannot read (${(err as Error).message})`);
  }
  const doc = parseDocument(text, { uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new DatasetError(`dataset config ${file}: invalid YAML: ${doc.errors[0]!.message}`);
  }
  const parsed: unknown = doc.toJS();
  if (!isRecord(parsed)) throw new DatasetError(`dataset config ${file}: expected a YAML map at the top level`);
  const raw: Record<string, unknown> = parsed;
  for (const [key, value] of overrides) {
    if (!hasDottedKey(raw, key)) {
      throw new DatasetError(`config param \`${key}\` isn't valid: ${file} has no key "${key}"`);
    }
    setDotted(raw, key, value);
  }
  return configFromRaw(raw, source);
}

/** Builds a {@link DatasetConfig} from already-parsed info.yaml data (`source` names it in errors). */
export function configFromRaw(raw: Record<string, unknown>, source: string): DatasetConfig {
  const cfgDir = path.dirname(source);
  const dataset = requireString(raw, 'dataset', source);
  const dataRoot = resolveDatasetPath(requireString(raw, 'data_root', source), cfgDir);
  const dataNameList = resolveDatasetPath(requireString(raw, 'data_name_list', source), cfgDir);
  const imgPath = requireString(raw, 'img_path', source);
  const gtPath = requireString(raw, 'gt_path', source);
  const categories = parseCategories(raw, source);
  const bg = raw.bg_category;
  const bgCategory = Array.isArray(bg) ? bg.map((s) => String(s).trim()) : [];
  const numCls = raw.num_cls;
  if (numCls !== undefined && numCls !== null && numCls !== categories.length) {
    throw new DatasetError(
      `${source}: num_cls is ${JSON.stringify(numCls)} but "category" lists ${categories.length} classes`,
    );
  }
  return { source, dataset, dataRoot, dataNameList, imgPath, gtPath, categories, bgCategory, raw };
}

/** Class names with background first: index = class index in masks and heatmaps. */
export function classNames(cfg: DatasetConfig): string[] {
  return ['background', ...cfg.categories.map((c) => c.name)];
}

/**
 * Class index (1-based; 0 is background) of a class name as the reference resolves heatmap
 * file names: the first category whose name (trimmed) equals `name` or whose synonyms contain
 * it. Returns -1 when no category matches (the reference exits with "unknown class").
 */
export function classIndexOf(cfg: DatasetConfig, name: string): number {
  for (let i = 0; i < cfg.categories.length; i++) {
    const c = cfg.categories[i]!;
    if (c.name.trim() === name || c.synonyms.includes(name)) return i + 1;
  }
  return -1;
}

/** One entry of the image id list. */
export interface ImageEntry {
  /** Position in the id list: the `{image_index}` of heatmap files `{index}_{class}.png`. */
  index: number;
  /** Image id (line of the list, trimmed). */
  name: string;
  /** Image path from the `img_path` template. */
  imgPath: string;
  /** Ground truth path from the `gt_path` template. */
  gtPath: string;
}

/**
 * Reads the id list (`data_name_list`): one id per line, trimmed, as the reference does.
 * Blank lines keep their position (indices of later images do not move) but are left out,
 * with a warning through `warn`, since the reference would fail on them.
 */
export function loadImageList(cfg: DatasetConfig, warn: (msg: string) => void = () => undefined): ImageEntry[] {
  let text: string;
  try {
    text = fs.readFileSync(cfg.dataNameList, 'utf8');
  } catch (err) {
    throw new DatasetError(`image id list (data_name_list) ${cfg.dataNameList}: cannot read (${(err as Error).message})`);
  }
  const lines = text.split('\n');
  // readlines() yields no entry after a final newline
  if (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();
  const out: ImageEntry[] = [];
  const blank: number[] = [];
  lines.forEach((line, index) => {
    const name = line.trim();
    if (name === '') {
      blank.push(index + 1);
      return;
    }
    const fields = { data_root: cfg.dataRoot, img_name: name };
    out.push({
      index,
      name,
      imgPath: formatTemplate(cfg.imgPath, fields, `${cfg.source}: img_path`),
      gtPath: formatTemplate(cfg.gtPath, fields, `${cfg.source}: gt_path`),
    });
  });
  if (blank.length > 0) {
    warn(`${cfg.dataNameList}: blank line(s) ${blank.slice(0, 10).join(', ')}${blank.length > 10 ? ', ...' : ''} skipped`);
  }
  return out;
}

/** A ground-truth label map after the dataset's label mapping. */
export interface LabelMap {
  width: number;
  height: number;
  /** (height, width) row-major class indices; 255 = ignore (VOC). */
  data: Uint8Array | Uint16Array;
}

/**
 * The reference's label mapping of a raw ground-truth map, in place:
 * COCO (`dataset == "coco"`): `gt + 1` with ids above 80 set to background (GroupViT's
 * 80-object protocol; 255 becomes 0). Other datasets are unchanged (VOC's 255 stays, and is
 * ignored by evaluation).
 */
export function applyLabelMapping(dataset: string, data: Uint8Array | Uint16Array): void {
  if (dataset !== 'coco') return;
  for (let i = 0; i < data.length; i++) {
    const v = data[i]! + 1;
    data[i] = v > 80 ? 0 : v;
  }
}

/**
 * Image-level labels from a (mapped) ground-truth map: 0-based category indices (the
 * reference's `labels`, i.e. positions in `category`) of the foreground classes present,
 * ascending. Background (0), 255 and values above the class count are not labels.
 */
export function labelsFromGt(cfg: DatasetConfig, gt: LabelMap): number[] {
  const n = cfg.categories.length;
  const seen = new Uint8Array(n + 1);
  const d = gt.data;
  for (let i = 0; i < d.length; i++) {
    const v = d[i]!;
    if (v >= 1 && v <= n) seen[v] = 1;
  }
  const out: number[] = [];
  for (let c = 1; c <= n; c++) if (seen[c]) out.push(c - 1);
  return out;
}

/**
 * Reads image-level labels from a user JSON: `{ "<image id>": labels }` where `labels` is a
 * list of class names (category names or synonyms) or a multi-hot list of 0/1 (or booleans)
 * with one entry per category (the layout of the reference's cls_labels.npy).
 *
 * @returns image id -> 0-based category indices, ascending
 */
export function loadLabelsJson(cfg: DatasetConfig, file: string): Map<string, number[]> {
  let data: unknown;
  try {
    data = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    throw new DatasetError(`labels JSON ${file}: cannot read (${(err as Error).message})`);
  }
  if (!isRecord(data)) throw new DatasetError(`labels JSON ${file}: expected an object {"<image id>": [labels]}`);
  const n = cfg.categories.length;
  const out = new Map<string, number[]>();
  for (const [name, labels] of Object.entries(data)) {
    if (!Array.isArray(labels)) {
      throw new DatasetError(`labels JSON ${file}: "${name}" must map to a list of class names or a 0/1 list of length ${n}`);
    }
    const idx = new Set<number>();
    if (labels.every((l) => typeof l === 'string')) {
      for (const l of labels as string[]) {
        const c = classIndexOf(cfg, l.trim());
        if (c < 0) throw new DatasetError(`labels JSON ${file}: "${name}": unknown class "${l}" (not a category or synonym in ${cfg.source})`);
        idx.add(c - 1);
      }
    } else if (labels.every((l) => l === 0 || l === 1 || typeof l === 'boolean')) {
      if (labels.length !== n) {
        throw new DatasetError(`labels JSON ${file}: "${name}": a 0/1 label list must have ${n} entries (one per category), got ${labels.length}`);
      }
      labels.forEach((l, i) => {
        if (l === 1 || l === true) idx.add(i);
      });
    } else {
      throw new DatasetError(`labels JSON ${file}: "${name}" must be a list of class names or a 0/1 list of length ${n}`);
    }
    out.set(name, [...idx].sort((a, b) => a - b));
  }
  return out;
}

/**
 * Reads a ground-truth label map as `np.array(Image.open(path))` gives it (palette PNGs as
 * palette INDICES, not colours; 16-bit grey as uint16; 2/4-bit grey rescaled to 0..255 as PIL's
 * "L" unpackers do; 1-bit as 0/1) and applies the dataset's label mapping
 * ({@link applyLabelMapping}).
 *
 * @throws DatasetError naming the file when it is missing, does not decode, or is not a
 *   single-channel label map (the reference fails on RGB ground truth too)
 */
export function loadGroundTruth(file: string, dataset: string): LabelMap {
  let png: PngRaw;
  try {
    png = readPngRaw(file);
  } catch (err) {
    const msg = (err as Error).message;
    if (!fs.existsSync(file)) throw new DatasetError(`ground truth ${file}: file not found`);
    throw new DatasetError(`ground truth ${file}: ${msg.startsWith(file) ? msg.slice(file.length + 2) : msg}`);
  }
  return labelMapFromPng(file, png, dataset);
}

/**
 * A decoded ground-truth PNG as a label map (see {@link loadGroundTruth}). `file` names the
 * file in errors; with `inPlace` the label map may share (and modify) `png.data`.
 */
export function labelMapFromPng(file: string, png: PngRaw, dataset: string, inPlace = false): LabelMap {
  if (png.channels !== 1) {
    const kind = png.channels === 2 ? 'grey + alpha' : png.channels === 3 ? 'RGB' : 'RGBA';
    throw new DatasetError(
      `ground truth ${file}: expected a single-channel label map (greyscale or palette PNG of class indices), got ${kind}`,
    );
  }
  let data = png.data;
  if (png.palette === undefined && (png.bitDepth === 2 || png.bitDepth === 4)) {
    const scale = 255 / ((1 << png.bitDepth) - 1);
    const scaled = new Uint8Array(data.length);
    for (let i = 0; i < data.length; i++) scaled[i] = data[i]! * scale;
    data = scaled;
  } else if (!inPlace) {
    data = data.slice();
  }
  applyLabelMapping(dataset, data);
  return { width: png.width, height: png.height, data };
}
