import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { loadDatasetConfig, parseOverrides, type DatasetConfig } from '../src/elbo/dataset.ts';
import {
  evaluateSegmentation,
  metricsToJson,
  minForegroundValue,
  pairwiseSum,
  pyFloatRepr,
  pySetOrder,
  type EvaluationResult,
} from '../src/elbo/evaluate.ts';

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
  beforeAll(() => {
    const dir = fs.mkdtempSync(path.join(tmp, 'golden-'));
    result = evaluateSegmentation(goldenConfig(dir), { heatmapDir: path.join(FX, 'heatmaps'), bucketNum: golden.bucket_num });
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
