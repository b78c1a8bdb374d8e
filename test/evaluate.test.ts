import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { encode as encodePng } from 'fast-png';
import sharp from 'sharp';
import { readPngRaw } from '../src/io/image.ts';
import { classIndexOf, loadDatasetConfig, loadGroundTruth, loadImageList, parseOverrides, type DatasetConfig } from '../src/elbo/dataset.ts';
import {
  applyMetrics,
  buildReport,
  evaluateSegmentation,
  loadHeatmap,
  metricsToJson,
  minForegroundValue,
  pairwiseSum,
  pyFloatRepr,
  pySetOrder,
  readPngForEval,
  type EvaluationResult,
  type InstanceStatistic,
} from '../src/elbo/evaluate.ts';
import { runEvaluate } from '../src/commands/evaluate.ts';

const ROOT = new URL('../', import.meta.url).pathname;
const FX = path.join(ROOT, 'test/fixtures/evaluation');
const VOC = path.join(ROOT, 'metadata/voc/info.yaml');

interface GoldenEvaluation {
  images: string[];
  bucket_num: number;
  threshold_search: { start: number; end: number; best_threshold_percent: number; best_threshold: number; best_m_IoU: number };
  m_IoU_by_threshold: Array<{ threshold: number; m_IoU: number }>;
  instance_statistics_at_best: unknown[];
}

const golden = JSON.parse(fs.readFileSync(path.join(FX, 'evaluation.json'), 'utf8')) as GoldenEvaluation;

/** Compares parsed JSON trees: numbers to 1e-9 (relative to max(1, |x|)), everything else exactly. */
function expectJsonClose(actual: unknown, expected: unknown, where = '$'): void {
  if (typeof expected === 'number') {
    expect(typeof actual, where).toBe('number');
    expect(Math.abs((actual as number) - expected), where).toBeLessThanOrEqual(1e-9 * Math.max(1, Math.abs(expected)));
  } else if (Array.isArray(expected)) {
    expect(Array.isArray(actual), where).toBe(true);
    expect((actual as unknown[]).length, where).toBe(expected.length);
    expected.forEach((e, i) => expectJsonClose((actual as unknown[])[i], e, `${where}[${i}]`));
  } else if (expected !== null && typeof expected === 'object') {
    expect(actual !== null && typeof actual === 'object' && !Array.isArray(actual), where).toBe(true);
    expect(Object.keys(actual as object), where).toEqual(Object.keys(expected));
    for (const k of Object.keys(expected)) {
      expectJsonClose((actual as Record<string, unknown>)[k], (expected as Record<string, unknown>)[k], `${where}.${k}`);
    }
  } else {
    expect(actual, where).toBe(expected);
  }
}

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'elbo-eval-test-'));
});
afterAll(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

/** VOC's info.yaml pointed at the golden set, as the reference was run (see evaluation.json `command`). */
function goldenConfig(dir: string): DatasetConfig {
  const ids = path.join(dir, 'val_id.txt');
  fs.writeFileSync(ids, golden.images.join('\n') + '\n');
  return loadDatasetConfig(
    VOC,
    parseOverrides([`data_root=${FX}`, `data_name_list=${ids}`, 'gt_path={data_root}/gt/{img_name}.png', 'img_path={data_root}/images/{img_name}.png']),
  );
}

describe('evaluateSegmentation on the golden set (evaluate_segmentation.py, VOC, bucket_num=3)', () => {
  let result: EvaluationResult;
  beforeAll(async () => {
    const dir = fs.mkdtempSync(path.join(tmp, 'golden-'));
    result = await evaluateSegmentation(goldenConfig(dir), { heatmapDir: path.join(FX, 'heatmaps'), bucketNum: golden.bucket_num });
  });

  it('finds the reference threshold by binary search', () => {
    const t = result.thresholdSearch;
    expect(t.start).toBe(golden.threshold_search.start);
    expect(t.end).toBe(golden.threshold_search.end);
    expect(t.bestThresholdPercent).toBe(golden.threshold_search.best_threshold_percent);
    expect(t.bestThreshold).toBe(golden.threshold_search.best_threshold);
    expect(Math.abs(t.bestMIoU - golden.threshold_search.best_m_IoU)).toBeLessThan(1e-9);
  });

  it('gives the reference mIoU at every threshold 0.01..0.99', () => {
    expect(result.mIoUByThreshold.length).toBe(golden.m_IoU_by_threshold.length);
    golden.m_IoU_by_threshold.forEach((g, i) => {
      const mine = result.mIoUByThreshold[i]!;
      expect(mine.threshold).toBe(g.threshold);
      expect(Math.abs(mine.mIoU - g.m_IoU), `threshold ${g.threshold}`).toBeLessThan(1e-9);
    });
  });

  it('gives the reference per-image statistics, in the reference order', () => {
    expect(result.statistics).toEqual(golden.instance_statistics_at_best);
  });

  it('writes the reference metrics JSON (NaN -> null), and byte for byte with NaN kept', () => {
    const expected: unknown = JSON.parse(fs.readFileSync(path.join(FX, 'metrics.json'), 'utf8'));
    expectJsonClose(JSON.parse(metricsToJson(result.metrics)), expected);
    expect(metricsToJson(result.metrics, false)).toBe(fs.readFileSync(path.join(FX, 'segmentation_metrics.raw.json'), 'utf8'));
  });
});

describe('Python / numpy semantics', () => {
  it('pySetOrder reproduces CPython set iteration order of (set(p) | set(t)) - {255}', () => {
    // orders printed by CPython 3.11
    expect(pySetOrder([0, 8, 12], [0, 8, 12])).toEqual([0, 8, 12]);
    expect(pySetOrder([0, 3, 11], [0, 3])).toEqual([0, 11, 3]);
    expect(pySetOrder([10, 12, 25, 48, 52, 58, 255], [0, 1, 9, 24, 34, 41, 42, 50, 58, 255])).toEqual([
      0, 1, 34, 9, 10, 41, 12, 42, 48, 50, 52, 24, 25, 58,
    ]);
    expect(pySetOrder([8, 53, 99, 144, 151, 166, 199, 205, 252, 255], [9, 69, 80, 102, 167, 173, 255])).toEqual([
      69, 199, 8, 9, 205, 144, 80, 151, 99, 166, 102, 167, 173, 53, 252,
    ]);
    expect(pySetOrder([80, 91, 105, 153, 221, 255], [24, 32, 126, 128, 129, 220, 224, 228, 232, 255])).toEqual([
      128, 129, 32, 224, 228, 232, 105, 80, 24, 153, 91, 220, 221, 126,
    ]);
  });

  it('pyFloatRepr writes floats as Python repr', () => {
    const cases: Array<[number, string]> = [
      [0.64, '0.64'],
      [0, '0.0'],
      [100, '100.0'],
      [1e-5, '1e-05'],
      [1.5e-5, '1.5e-05'],
      [0.0001, '0.0001'],
      [1e16, '1e+16'],
      [1234567890123456, '1234567890123456.0'],
      [3.814697265625e-6, '3.814697265625e-06'],
      [99.99999999999108, '99.99999999999108'],
      [NaN, 'NaN'],
    ];
    for (const [x, s] of cases) expect(pyFloatRepr(x)).toBe(s);
  });

  it('pairwiseSum follows numpy blocking', () => {
    const a = Array.from({ length: 300 }, (_, i) => 1 / (i + 1));
    let naive = 0;
    for (const x of a) naive += x;
    expect(Math.abs(pairwiseSum(a) - naive)).toBeLessThan(1e-12);
    expect(pairwiseSum([])).toBe(0);
  });

  it('minForegroundValue compares in float32 as numpy does', () => {
    for (let pct = 1; pct <= 99; pct++) {
      const v = minForegroundValue(pct);
      const thr = Math.fround(pct / 100);
      expect(Math.fround(v / 255) >= thr).toBe(true);
      expect(Math.fround((v - 1) / 255) >= thr).toBe(false);
    }
    expect(minForegroundValue(0)).toBe(0);
    expect(minForegroundValue(101)).toBe(256);
  });
});

// ---------------------------------------------------------------------------------------------
// Synthetic datasets: the histogram evaluation against a plain per-pixel implementation of the
// reference (float32 stack, argmax, threshold, np.unique counts) at every threshold
// ---------------------------------------------------------------------------------------------

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface SynthSpec {
  dataset: string;
  /** category name -> synonyms */
  categories: Record<string, string[]>;
  images: number;
  seed: number;
  /** draw 255 borders around objects */
  borders: boolean;
  /** COCO raw ids: object of class c is stored as c - 1, background as a stuff id or 255 */
  cocoRaw?: boolean;
}

/** Writes info.yaml, val_id.txt, gt/ and out/heatmaps/ into `dir`; returns the info.yaml path. */
function makeSynth(dir: string, spec: SynthSpec): string {
  const rnd = mulberry32(spec.seed);
  const ri = (lo: number, hi: number): number => lo + Math.floor(rnd() * (hi - lo + 1));
  const names = Object.keys(spec.categories);
  const K = names.length;
  fs.mkdirSync(path.join(dir, 'gt'), { recursive: true });
  fs.mkdirSync(path.join(dir, 'out/heatmaps'), { recursive: true });
  const ids: string[] = [];
  const palette = Array.from({ length: 256 }, (_, i) => [(i * 37) & 255, (i * 91) & 255, (i * 53) & 255]);
  for (let im = 0; im < spec.images; im++) {
    const name = `img_${im}`;
    ids.push(name);
    const w = ri(16, 48);
    const h = ri(12, 40);
    const cls = new Uint8Array(w * h); // class index 0..K
    const objects: Array<{ c: number; x0: number; y0: number; x1: number; y1: number }> = [];
    const nObj = ri(0, 3);
    for (let o = 0; o < nObj; o++) {
      const c = ri(1, K);
      const x0 = ri(0, w - 4);
      const y0 = ri(0, h - 4);
      const x1 = Math.min(w, x0 + ri(3, w));
      const y1 = Math.min(h, y0 + ri(3, h));
      objects.push({ c, x0, y0, x1, y1 });
      for (let y = y0; y < y1; y++) for (let x = x0; x < x1; x++) cls[y * w + x] = c;
    }
    const raw = new Uint8Array(w * h);
    for (let i = 0; i < w * h; i++) {
      if (spec.cocoRaw) raw[i] = cls[i] === 0 ? (rnd() < 0.1 ? 255 : ri(80, 181)) : cls[i]! - 1;
      else raw[i] = cls[i]!;
    }
    if (spec.borders) {
      for (const ob of objects) {
        for (let x = ob.x0; x < ob.x1; x++) {
          raw[ob.y0 * w + x] = 255;
          raw[(ob.y1 - 1) * w + x] = 255;
        }
      }
    }
    const png =
      im % 2 === 0
        ? encodePng({ width: w, height: h, channels: 1, depth: 8, data: raw, palette })
        : encodePng({ width: w, height: h, channels: 1, depth: 8, data: raw });
    fs.writeFileSync(path.join(dir, 'gt', `${name}.png`), png);
    if (im % 7 === 3) continue; // no heatmap at all
    const present = [...new Set(objects.map((o) => o.c))];
    if (rnd() < 0.5) present.push(ri(1, K)); // a false positive
    for (const c of new Set(present)) {
      const small = rnd() < 0.3;
      const hw = small ? Math.max(4, w >> 1) : w;
      const hh = small ? Math.max(4, h >> 1) : h;
      const m = new Uint8Array(hw * hh);
      const coarse = rnd() < 0.5; // coarse values make ties between classes
      for (let y = 0; y < hh; y++) {
        for (let x = 0; x < hw; x++) {
          const gx = Math.floor((x * w) / hw);
          const gy = Math.floor((y * h) / hh);
          const inside = cls[gy * w + gx] === c;
          let v = inside ? 120 + rnd() * 135 : rnd() * 170;
          if (coarse) v = Math.round(v / 51) * 51;
          m[y * hw + x] = Math.min(255, Math.round(v));
        }
      }
      const syn = spec.categories[names[c - 1]!]!;
      const label = syn.length > 0 && rnd() < 0.5 ? syn[ri(0, syn.length - 1)]! : names[c - 1]!;
      fs.writeFileSync(path.join(dir, 'out/heatmaps', `${im}_${label}.png`), encodePng({ width: hw, height: hh, channels: 1, depth: 8, data: m }));
    }
  }
  fs.writeFileSync(path.join(dir, 'val_id.txt'), ids.join('\n') + '\n');
  const cats = names.map((n) => `  ${n}: [${spec.categories[n]!.map((s) => JSON.stringify(s)).join(', ')}]`).join('\n');
  const info = path.join(dir, 'info.yaml');
  fs.writeFileSync(
    info,
    `dataset: "${spec.dataset}"\ndata_root: "${dir}"\ndata_name_list: "${dir}/val_id.txt"\nname_to_cls_labels: "${dir}/cls_labels.npy"\nimg_path: "{data_root}/images/{img_name}.jpg"\ngt_path: "{data_root}/gt/{img_name}.png"\nnum_cls: ${K}\ncategory:\n${cats}\nbg_category: []\n`,
  );
  return info;
}

/** The reference's apply_threshold, pixel by pixel, for one threshold percent. */
function naiveStatistics(cfg: DatasetConfig, heatmapDir: string, pct: number): InstanceStatistic[] {
  const numCls = cfg.categories.length + 1;
  const byIdx = new Map<number, string[]>();
  for (const f of fs.readdirSync(heatmapDir)) {
    const idx = Number(f.split('_')[0]);
    const cls = f.split('_')[1]!.split('.')[0]!.trim();
    byIdx.set(idx, [...(byIdx.get(idx) ?? []), cls]);
  }
  const thr = Math.fround(pct / 100);
  const out: InstanceStatistic[] = [];
  for (const e of loadImageList(cfg)) {
    const gt = loadGroundTruth(e.gtPath, cfg.dataset);
    const n = gt.width * gt.height;
    const stack = Array.from({ length: numCls }, () => new Float32Array(n));
    for (const c of byIdx.get(e.index) ?? []) {
      const m = loadHeatmap(path.join(heatmapDir, `${e.index}_${c}.png`), gt.width, gt.height);
      const k = classIndexOf(cfg, c);
      for (let i = 0; i < n; i++) stack[k]![i] = Math.fround(m[i]! / 255);
    }
    const pred = new Uint8Array(n);
    for (let i = 0; i < n; i++) {
      let best = stack[0]![i]!;
      let arg = 0;
      for (let k = 1; k < numCls; k++) {
        if (stack[k]![i]! > best) {
          best = stack[k]![i]!;
          arg = k;
        }
      }
      pred[i] = best < thr ? 0 : arg;
      if (cfg.dataset === 'voc' && gt.data[i] === 255) pred[i] = 255;
    }
    const p = new Map<number, number>();
    const t = new Map<number, number>();
    const tp = new Map<number, number>();
    for (let i = 0; i < n; i++) {
      p.set(pred[i]!, (p.get(pred[i]!) ?? 0) + 1);
      t.set(gt.data[i]!, (t.get(gt.data[i]!) ?? 0) + 1);
      if (pred[i] === gt.data[i]) tp.set(pred[i]!, (tp.get(pred[i]!) ?? 0) + 1);
    }
    const asc = (m: Map<number, number>): number[] => [...m.keys()].sort((a, b) => a - b);
    for (const k of pySetOrder(asc(p), asc(t))) {
      out.push({ sum_p: p.get(k) ?? 0, sum_t: t.get(k) ?? 0, sum_tp: tp.get(k) ?? 0, h: gt.height, w: gt.width, cls_idx: k, img_idx: e.index });
    }
  }
  return out;
}

describe('evaluateSegmentation on synthetic datasets against a per-pixel implementation', () => {
  const vocLike = {
    plane: ['jet', 'airplane'],
    bird: [],
    cat: ['kitten'],
    dog: ['puppy'],
    'dining table': ['table', 'desk'],
    sofa: ['couch'],
  };
  const coco: Record<string, string[]> = {};
  for (let i = 1; i <= 80; i++) coco[`class${i}`] = i % 3 === 0 ? [`syn${i}`] : [];
  const specs: SynthSpec[] = [
    { dataset: 'voc', categories: vocLike, images: 24, seed: 1, borders: true },
    { dataset: 'context', categories: vocLike, images: 24, seed: 2, borders: true },
    { dataset: 'coco', categories: coco, images: 20, seed: 3, borders: false, cocoRaw: true },
  ];
  for (const spec of specs) {
    it(`${spec.dataset}: mIoU at every threshold, statistics and report`, async () => {
      const dir = fs.mkdtempSync(path.join(tmp, `${spec.dataset}-`));
      const cfg = loadDatasetConfig(makeSynth(dir, spec));
      const heatmapDir = path.join(dir, 'out/heatmaps');
      const result = await evaluateSegmentation(cfg, { heatmapDir, bucketNum: 4 });
      const numCls = cfg.categories.length + 1;
      for (const pct of [1, 5, 20, 33, 47, 50, 64, 80, 99]) {
        const naive = naiveStatistics(cfg, heatmapDir, pct);
        const mIoU = applyMetrics(naive, numCls).m_IoU[0]!;
        expect(result.mIoUByThreshold[pct - 1]!.mIoU, `threshold ${pct}`).toBe(mIoU);
        if (pct === result.thresholdSearch.bestThresholdPercent) expect(result.statistics).toEqual(naive);
      }
      const best = naiveStatistics(cfg, heatmapDir, result.thresholdSearch.bestThresholdPercent);
      expect(result.statistics).toEqual(best);
      const report = buildReport(best, ['background', ...cfg.categories.map((c) => c.name)], result.thresholdSearch.bestThreshold, 4);
      expect(metricsToJson(result.metrics, false)).toBe(metricsToJson(report, false));
      expect(result.metrics.foreground.m_IoU.length).toBe(4);
    });
  }
});

describe('bad input', () => {
  const cats = { cat: ['kitten'], dog: ['puppy'], sofa: ['couch'] };
  function fresh(): { dir: string; cfg: DatasetConfig; heatmapDir: string } {
    const dir = fs.mkdtempSync(path.join(tmp, 'bad-'));
    const cfg = loadDatasetConfig(makeSynth(dir, { dataset: 'voc', categories: cats, images: 6, seed: 9, borders: true }));
    return { dir, cfg, heatmapDir: path.join(dir, 'out/heatmaps') };
  }

  it('a missing ground-truth file is an error naming it; --skip-missing leaves it out with a warning', async () => {
    const { dir, cfg, heatmapDir } = fresh();
    fs.rmSync(path.join(dir, 'gt/img_2.png'));
    await expect(evaluateSegmentation(cfg, { heatmapDir })).rejects.toThrow(/ground truth missing for 1 of 6 images: img_2 \(.*gt\/img_2\.png\)/);
    const warnings: string[] = [];
    const r = await evaluateSegmentation(cfg, { heatmapDir, skipMissing: true, warn: (w) => warnings.push(w) });
    expect(r.skipped.map((e) => e.name)).toEqual(['img_2']);
    expect(r.images.length).toBe(5);
    expect(r.statistics.some((s) => s.img_idx === 2)).toBe(false);
    expect(warnings.join('\n')).toMatch(/img_2/);
  });

  it('an id list naming absent images fails, naming them', async () => {
    const { dir, cfg, heatmapDir } = fresh();
    fs.appendFileSync(path.join(dir, 'val_id.txt'), 'ghost_1\nghost_2\n');
    await expect(evaluateSegmentation(cfg, { heatmapDir })).rejects.toThrow(/missing for 2 of 8 images: ghost_1 .*ghost_2/);
  });

  it('a heatmap of a class the dataset does not know is an error naming file and class', async () => {
    const { cfg, heatmapDir } = fresh();
    fs.copyFileSync(path.join(FX, 'heatmaps/0_cat.png'), path.join(heatmapDir, '0_unicorn.png'));
    await expect(evaluateSegmentation(cfg, { heatmapDir })).rejects.toThrow(/0_unicorn\.png: unknown class: unicorn/);
  });

  it('a heatmap that does not decode is an error naming it', async () => {
    const { cfg, heatmapDir } = fresh();
    fs.writeFileSync(path.join(heatmapDir, '1_dog.png'), 'garbage');
    await expect(evaluateSegmentation(cfg, { heatmapDir })).rejects.toThrow(/1_dog\.png: does not decode/);
  });

  it('malformed heatmap names and duplicate classes are errors; other files and stray indices are warnings', async () => {
    let f = fresh();
    fs.copyFileSync(path.join(FX, 'heatmaps/0_cat.png'), path.join(f.heatmapDir, '0_potted_plant.png'));
    await expect(evaluateSegmentation(f.cfg, { heatmapDir: f.heatmapDir })).rejects.toThrow(/0_potted_plant\.png: file name must be/);
    f = fresh();
    fs.copyFileSync(path.join(FX, 'heatmaps/0_cat.png'), path.join(f.heatmapDir, '0_kitten.png'));
    fs.copyFileSync(path.join(FX, 'heatmaps/0_cat.png'), path.join(f.heatmapDir, '0_cat.png'));
    await expect(evaluateSegmentation(f.cfg, { heatmapDir: f.heatmapDir })).rejects.toThrow(/both resolve to class "cat"/);
    f = fresh();
    fs.writeFileSync(path.join(f.heatmapDir, 'notes.txt'), 'x');
    fs.copyFileSync(path.join(FX, 'heatmaps/0_cat.png'), path.join(f.heatmapDir, '99_cat.png'));
    const warnings: string[] = [];
    await evaluateSegmentation(f.cfg, { heatmapDir: f.heatmapDir, warn: (w) => warnings.push(w) });
    expect(warnings.join('\n')).toMatch(/notes\.txt/);
    expect(warnings.join('\n')).toMatch(/image index\(es\) 99 not in the id list/);
  });

  it('a ground-truth label outside the classes is an error naming the file', async () => {
    const { dir, cfg, heatmapDir } = fresh();
    fs.writeFileSync(path.join(dir, 'gt/img_0.png'), encodePng({ width: 2, height: 1, channels: 1, depth: 8, data: Uint8Array.from([0, 7]) }));
    await expect(evaluateSegmentation(cfg, { heatmapDir })).rejects.toThrow(/img_0\.png: label value\(s\) 7 outside the dataset's classes 0\.\.3/);
  });

  it('rejects start >= end and a bad bucket count', async () => {
    const { cfg, heatmapDir } = fresh();
    await expect(evaluateSegmentation(cfg, { heatmapDir, start: 50, end: 50 })).rejects.toThrow(/start threshold should be less than end/);
    await expect(evaluateSegmentation(cfg, { heatmapDir, bucketNum: 0 })).rejects.toThrow(/bucket_num/);
  });
});

describe('elbo-t2ialign evaluate (runEvaluate)', () => {
  async function run(args: string[]): Promise<{ code: number; out: string; err: string }> {
    let out = '';
    let err = '';
    const o = vi.spyOn(process.stdout, 'write').mockImplementation((s: string | Uint8Array) => ((out += String(s)), true));
    const e = vi.spyOn(process.stderr, 'write').mockImplementation((s: string | Uint8Array) => ((err += String(s)), true));
    try {
      const code = await runEvaluate(args);
      return { code, out, err };
    } finally {
      o.mockRestore();
      e.mockRestore();
    }
  }

  function goldenArgs(dir: string): string[] {
    fs.mkdirSync(path.join(dir, 'out'), { recursive: true });
    fs.cpSync(path.join(FX, 'heatmaps'), path.join(dir, 'out/heatmaps'), { recursive: true });
    fs.writeFileSync(path.join(dir, 'val_id.txt'), golden.images.join('\n') + '\n');
    // the reference's command line (evaluation.json), with --out for output_path
    return [
      '--dataset-cfg',
      VOC,
      '--out',
      path.join(dir, 'out'),
      `data_root=${FX}`,
      `data_name_list=${dir}/val_id.txt`,
      `name_to_cls_labels=${dir}/cls_labels.npy`,
      'img_path={data_root}/images/{img_name}.png',
      'gt_path={data_root}/gt/{img_name}.png',
      'n_jobs=1',
      'bucket_num=3',
      'enable_crf=False',
    ];
  }

  it('writes the reference metrics JSON, the details JSON and the two PNGs', async () => {
    const dir = fs.mkdtempSync(path.join(tmp, 'cli-'));
    const r = await run(goldenArgs(dir));
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/best threshold: 0\.64, best mIoU: 62\.068/);
    const out = path.join(dir, 'out');
    expectJsonClose(
      JSON.parse(fs.readFileSync(path.join(out, 'segmentation_metrics.json'), 'utf8')),
      JSON.parse(fs.readFileSync(path.join(FX, 'metrics.json'), 'utf8')),
    );
    const details = JSON.parse(fs.readFileSync(path.join(out, 'segmentation_evaluation.json'), 'utf8')) as GoldenEvaluation;
    expect(details.instance_statistics_at_best).toEqual(golden.instance_statistics_at_best);
    expect(details.m_IoU_by_threshold.length).toBe(99);
    for (const png of ['segmentation_metrics.png', 'segmentation_examples.png']) {
      const b = fs.readFileSync(path.join(out, png));
      expect(b.subarray(1, 4).toString(), png).toBe('PNG');
      expect(b.length, png).toBeGreaterThan(1000);
    }
    // images are absent in the golden set: the grid says so instead of failing
    expect(r.err).toMatch(/synth_000\.png: image file not found; shown as a grey tile/);
  });

  it('save_mask=True writes the thresholded masks', async () => {
    const dir = fs.mkdtempSync(path.join(tmp, 'cli-'));
    const r = await run([...goldenArgs(dir), 'save_mask=True', '--no-report']);
    expect(r.code, r.err).toBe(0);
    expect(fs.readdirSync(path.join(dir, 'out/masks')).sort()).toEqual(['0.png', '1.png', '2.png', '3.png', '4.png', '5.png']);
    expect(fs.existsSync(path.join(dir, 'out/segmentation_metrics.png'))).toBe(false);
  });

  it('refuses CRF, unknown keys and missing options with exit code 2', async () => {
    const dir = fs.mkdtempSync(path.join(tmp, 'cli-'));
    const args = goldenArgs(dir);
    let r = await run([...args, '--crf']);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/--crf is not supported/);
    r = await run([...args, 'enable_crf=True']);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/enable_crf=True is not supported/);
    r = await run([...args, 'no_such_key=1']);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/config param `no_such_key` isn't valid/);
    r = await run(['--dataset-cfg', VOC]);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/--out DIR is required/);
    r = await run([...args, 'start=60', 'end=40']);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/start threshold should be less than end/);
  });

  it('fails with exit code 1 and the file name on bad data', async () => {
    const dir = fs.mkdtempSync(path.join(tmp, 'cli-'));
    const args = goldenArgs(dir);
    fs.writeFileSync(path.join(dir, 'val_id.txt'), [...golden.images, 'synth_999'].join('\n') + '\n');
    const r = await run(args);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/ground truth missing for 1 of 7 images: synth_999 \(.*synth_999\.png\)/);
    expect(fs.existsSync(path.join(dir, 'out/segmentation_metrics.json'))).toBe(false);
    const ok = await run([...args, '--skip-missing', '--no-report']);
    expect(ok.code, ok.err).toBe(0);
    expect(ok.err).toMatch(/warning: ground truth missing/);
  });
});

describe('readPngForEval (native-zlib PNG decoding for evaluation)', () => {
  it('gives what readPngRaw gives for every fixture PNG and every row filter', async () => {
    const files: string[] = [];
    const walk = (d: string): void => {
      for (const e of fs.readdirSync(d, { withFileTypes: true })) {
        if (e.isDirectory()) walk(path.join(d, e.name));
        else if (e.name.endsWith('.png')) files.push(path.join(d, e.name));
      }
    };
    walk(path.join(ROOT, 'test/fixtures'));
    // libpng's adaptive filtering (sharp) uses all five row filters
    const dir = fs.mkdtempSync(path.join(tmp, 'png-'));
    const rnd = mulberry32(5);
    for (const channels of [1, 2, 3, 4] as const) {
      const w = 37;
      const h = 23;
      const data = Buffer.alloc(w * h * channels);
      for (let i = 0; i < data.length; i++) data[i] = (Math.floor(i / channels) % w) * 3 + Math.floor(rnd() * 40);
      const f = path.join(dir, `c${channels}.png`);
      await sharp(data, { raw: { width: w, height: h, channels } })
        .toColourspace(channels <= 2 ? 'b-w' : 'srgb')
        .png({ adaptiveFiltering: true, compressionLevel: 9 })
        .toFile(f);
      files.push(f);
    }
    const pal = path.join(dir, 'palette.png');
    fs.writeFileSync(
      pal,
      encodePng({ width: 3, height: 2, channels: 1, depth: 8, data: Uint8Array.from([0, 1, 2, 2, 1, 0]), palette: [[1, 2, 3], [4, 5, 6], [7, 8, 9]] }),
    );
    files.push(pal);
    expect(files.length).toBeGreaterThan(60);
    for (const f of files) {
      const mine = await readPngForEval(f);
      const ref = readPngRaw(f);
      expect({ ...mine, data: Array.from(mine.data) }, f).toEqual({ ...ref, data: Array.from(ref.data) });
    }
  });
});
