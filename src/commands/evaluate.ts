/**
 * `elbo-t2ialign evaluate`: the reference's `evaluate_segmentation.py` (without CRF).
 *
 *   elbo-t2ialign evaluate --dataset-cfg metadata/voc/info.yaml --out DIR [key=value ...]
 *
 * Reads heatmaps from DIR/heatmaps, writes DIR/segmentation_metrics.json (the reference's
 * layout, null where it writes NaN), DIR/segmentation_evaluation.json (threshold search, mIoU
 * at every threshold, per-image statistics), DIR/segmentation_metrics.png (chart) and
 * DIR/segmentation_examples.png (examples). `key=value` overrides work as in the reference:
 * any info.yaml key (data_root=..., gt_path="{data_root}/gt/{img_name}.png") and the method
 * keys start, end, bucket_num, save_mask, enable_crf, n_jobs; output_path=DIR stands for --out.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { writeFileAtomic } from '../io/atomic.ts';
import { writeGreyPng } from '../io/image.ts';
import { DatasetError, hasDottedKey, loadDatasetConfig, parseOverrides } from '../elbo/dataset.ts';
import { evaluateSegmentation, loadImagePrediction, metricsToJson, thresholdMask, type EvaluationResult } from '../elbo/evaluate.ts';
import { renderExampleGrid, renderMetricsChart } from '../elbo/evalReport.ts';

const USAGE = `usage: elbo-t2ialign evaluate --dataset-cfg INFO.yaml --out DIR [options] [key=value ...]

Evaluates the heatmaps in DIR/heatmaps ({image_index}_{class}.png) against the dataset's ground
truth as the reference evaluate_segmentation.py does (binary threshold search, per-class and
object-size reports).

options:
  --dataset-cfg PATH   dataset description in the reference's format (metadata/<dataset>/info.yaml)
  --out DIR            output folder holding heatmaps/ (the reference's output_path)
  --method-cfg PATH    YAML with start / end / bucket_num / save_mask (reference evaluate_segmentation.yaml)
  --io-cfg PATH        accepted for compatibility; only output_path is read from it
  --skip-missing       leave out images whose ground truth is missing (with a warning) instead of failing
  --examples N         example rows in segmentation_examples.png (default 4; 0 = no example grid)
  --no-report          do not write the PNG chart and example grid
  --crf                not supported (the reference's optional dense CRF post-process)
  -h, --help           this text

key=value overrides (as in the reference): any info.yaml key (data_root, data_name_list,
img_path, gt_path, ...), start (1), end (99), bucket_num (10), save_mask (False), output_path.
n_jobs and enable_crf=False are accepted and have no effect.`;

/** Method keys of the reference's configs/evaluate_segmentation.yaml with their defaults. */
const METHOD_DEFAULTS = { start: 1, end: 99, bucket_num: 10, n_jobs: 6, save_mask: false, enable_crf: false };
/** Keys of the reference's configs/io.yaml (accepted; only output_path is used). */
const IO_KEYS = ['output_path', 'seed', 'cache_dir', 'model_dir', 'diffusion', 'clip', 'img2text'];

class UsageError extends Error {}

interface ParsedArgs {
  datasetCfg?: string;
  out?: string;
  methodCfg?: string;
  ioCfg?: string;
  skipMissing: boolean;
  examples: number;
  report: boolean;
  overrides: string[];
}

function parseArgs(args: readonly string[]): ParsedArgs | 'help' {
  const p: ParsedArgs = { skipMissing: false, examples: 4, report: true, overrides: [] };
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const eq = a.startsWith('--') ? a.indexOf('=') : -1;
    const flag = eq > 0 ? a.slice(0, eq) : a;
    const inline = eq > 0 ? a.slice(eq + 1) : undefined;
    const value = (): string => {
      if (inline !== undefined) return inline;
      const v = args[++i];
      if (v === undefined || v.startsWith('--')) throw new UsageError(`${flag} needs a value`);
      return v;
    };
    switch (flag) {
      case '-h':
      case '--help':
        return 'help';
      case '--dataset-cfg':
        p.datasetCfg = value();
        break;
      case '--out':
      case '--output':
        p.out = value();
        break;
      case '--method-cfg':
        p.methodCfg = value();
        break;
      case '--io-cfg':
        p.ioCfg = value();
        break;
      case '--skip-missing':
        p.skipMissing = true;
        break;
      case '--no-report':
        p.report = false;
        break;
      case '--examples': {
        const v = value();
        const n = Number(v);
        if (!Number.isInteger(n) || n < 0) throw new UsageError(`--examples must be a non-negative integer, got "${v}"`);
        p.examples = n;
        break;
      }
      case '--crf':
      case '--enable-crf':
        throw new UsageError('--crf is not supported: the dense CRF post-process of the reference (enable_crf) is not implemented');
      default:
        if (a.startsWith('-')) throw new UsageError(`unknown option ${a}`);
        p.overrides.push(a);
    }
  }
  return p;
}

function asBool(key: string, v: unknown): boolean {
  if (typeof v === 'boolean') return v;
  if (v === 0 || v === 1) return v === 1;
  throw new UsageError(`${key} must be True or False, got ${JSON.stringify(v)}`);
}

function asInt(key: string, v: unknown): number {
  if (typeof v === 'number' && Number.isInteger(v)) return v;
  throw new UsageError(`${key} must be an integer, got ${JSON.stringify(v)}`);
}

function readYamlMap(file: string, what: string): Record<string, unknown> {
  let data: unknown;
  try {
    data = parseYaml(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    throw new UsageError(`${what} ${file}: cannot read (${(err as Error).message})`);
  }
  if (data === null || data === undefined) return {};
  if (typeof data !== 'object' || Array.isArray(data)) throw new UsageError(`${what} ${file}: expected a YAML map`);
  return data as Record<string, unknown>;
}

function printReport(result: EvaluationResult, log: (s: string) => void): void {
  const m = result.metrics;
  const t = result.thresholdSearch;
  log(
    `threshold range: ${t.start / 100}-${t.end / 100}, best threshold: ${t.bestThreshold}, best mIoU: ${t.bestMIoU.toFixed(3)}`,
  );
  const o = m.overall;
  const f = (x: number | undefined): string => (x === undefined || !Number.isFinite(x) ? '     n/a' : x.toFixed(2).padStart(8));
  log(`overall: mIoU ${f(o.m_IoU[0])}  TP/T ${f(o.m_TP_T[0])}  TP/P ${f(o.m_TP_P[0])}  FP ${f(o.m_FP[0])}  FN ${f(o.m_FN[0])}  F1 ${f(o.m_f1_score[0])}`);
  const width = Math.max(10, ...m.perClass.map((c) => c.name.length));
  log(`${'class'.padEnd(width)}      IoU  count`);
  for (const c of m.perClass) {
    if ((c.metrics.count ?? 0) === 0) continue;
    log(`${c.name.padEnd(width)} ${f(c.metrics.m_IoU[0])}  ${String(c.metrics.count).padStart(5)}`);
  }
  const absent = m.perClass.filter((c) => (c.metrics.count ?? 0) === 0).length;
  if (absent > 0) log(`(${absent} classes neither in the ground truth nor predicted: null in the JSON)`);
  const fg = m.foreground;
  log(`foreground by object size (${fg.m_IoU.length} buckets, ${fg.count ?? 0} instances):`);
  let lo = 0;
  fg.m_IoU.forEach((v, i) => {
    const hi = fg.boundary?.[i] ?? null;
    log(`  area ratio ${lo.toFixed(4)}-${hi === null ? 'n/a' : hi.toFixed(4)}: mIoU ${f(v)}`);
    if (hi !== null) lo = hi;
  });
}

/**
 * Runs `elbo-t2ialign evaluate` with the arguments after the command name.
 *
 * @returns the exit code: 0 on success, 1 for a failed evaluation (bad or missing data), 2 for
 *   bad usage; messages go to stderr, the report to stdout
 */
export async function runEvaluate(args: string[]): Promise<number> {
  const log = (s: string): void => void process.stdout.write(`${s}\n`);
  const warn = (s: string): void => void process.stderr.write(`evaluate: warning: ${s}\n`);
  try {
    const parsed = parseArgs(args);
    if (parsed === 'help') {
      log(USAGE);
      return 0;
    }
    if (parsed.datasetCfg === undefined) throw new UsageError('--dataset-cfg is required (e.g. metadata/voc/info.yaml)');

    // method settings: defaults < --method-cfg < key=value
    const method: Record<string, unknown> = { ...METHOD_DEFAULTS };
    if (parsed.methodCfg !== undefined) {
      for (const [k, v] of Object.entries(readYamlMap(parsed.methodCfg, 'method config'))) {
        if (k in METHOD_DEFAULTS) method[k] = v;
      }
    }
    let out = parsed.out;
    if (out === undefined && parsed.ioCfg !== undefined) {
      const io = readYamlMap(parsed.ioCfg, 'io config');
      if (typeof io.output_path === 'string' && io.output_path !== '') out = io.output_path;
    }
    const datasetOverrides: Array<[string, unknown]> = [];
    const datasetRaw = readYamlMap(parsed.datasetCfg, 'dataset config');
    for (const [key, v] of parseOverrides(parsed.overrides)) {
      const top = key.split('.')[0]!;
      if (key in METHOD_DEFAULTS) method[key] = v;
      else if (key === 'output_path') {
        if (typeof v !== 'string' || v === '') throw new UsageError(`output_path must be a folder path, got ${JSON.stringify(v)}`);
        if (parsed.out !== undefined && path.resolve(parsed.out) !== path.resolve(v)) {
          throw new UsageError(`--out ${parsed.out} and output_path=${v} disagree; give one`);
        }
        out = v;
      } else if (hasDottedKey(datasetRaw, key)) datasetOverrides.push([key, v]);
      else if (IO_KEYS.includes(top)) warn(`${key}=... has no effect on evaluation`);
      else {
        throw new UsageError(
          `config param \`${key}\` isn't valid: not a key of ${parsed.datasetCfg} nor one of ${Object.keys(METHOD_DEFAULTS).join(', ')}, output_path`,
        );
      }
    }
    if (out === undefined) throw new UsageError('--out DIR is required (the folder holding heatmaps/)');
    if (asBool('enable_crf', method.enable_crf)) {
      throw new UsageError('enable_crf=True is not supported: the dense CRF post-process of the reference is not implemented');
    }
    const start = asInt('start', method.start);
    const end = asInt('end', method.end);
    const bucketNum = asInt('bucket_num', method.bucket_num);
    if (start >= end) throw new UsageError(`start threshold should be less than end (start=${start}, end=${end})`);
    if (bucketNum < 1) throw new UsageError(`bucket_num must be at least 1, got ${bucketNum}`);
    const saveMask = asBool('save_mask', method.save_mask);

    const cfg = loadDatasetConfig(parsed.datasetCfg, datasetOverrides);
    const heatmapDir = path.join(out, 'heatmaps');
    if (!fs.existsSync(heatmapDir)) throw new DatasetError(`heatmap folder ${heatmapDir} not found (--out must hold heatmaps/)`);

    const t0 = performance.now();
    const tty = process.stderr.isTTY === true;
    const result = await evaluateSegmentation(cfg, {
      heatmapDir,
      start,
      end,
      bucketNum,
      skipMissing: parsed.skipMissing,
      warn,
      onProgress: tty
        ? (done, total) => {
            if (done === total || done % 50 === 0) process.stderr.write(`\rloading ground truth and heatmaps ${done}/${total}${done === total ? '\n' : ''}`);
          }
        : undefined,
    });
    const seconds = (performance.now() - t0) / 1000;
    log(
      `evaluated ${result.images.length} images of ${cfg.dataset} (${result.skipped.length} skipped) from ${heatmapDir} in ${seconds.toFixed(1)} s`,
    );
    printReport(result, log);

    const metricsPath = path.join(out, 'segmentation_metrics.json');
    await writeFileAtomic(metricsPath, metricsToJson(result.metrics));
    const details = {
      dataset_cfg: cfg.source,
      dataset: cfg.dataset,
      images: result.images.map((e) => e.name),
      skipped: result.skipped.map((e) => e.name),
      bucket_num: bucketNum,
      threshold_search: {
        start,
        end,
        best_threshold_percent: result.thresholdSearch.bestThresholdPercent,
        best_threshold: result.thresholdSearch.bestThreshold,
        best_m_IoU: result.thresholdSearch.bestMIoU,
      },
      m_IoU_by_threshold: result.mIoUByThreshold.map((p) => ({ threshold: p.threshold, m_IoU: Number.isFinite(p.mIoU) ? p.mIoU : null })),
      instance_statistics_at_best: result.statistics,
      warnings: result.warnings,
    };
    const detailsPath = path.join(out, 'segmentation_evaluation.json');
    await writeFileAtomic(detailsPath, `${JSON.stringify(details, null, 1)}\n`);
    log(`wrote ${metricsPath}`);
    log(`wrote ${detailsPath}`);

    if (saveMask) {
      const maskDir = path.join(out, 'masks');
      fs.rmSync(maskDir, { recursive: true, force: true });
      fs.mkdirSync(maskDir, { recursive: true });
      for (const entry of result.images) {
        const pred = await loadImagePrediction(cfg, entry, result.heatmaps.get(entry.index) ?? []);
        const mask = thresholdMask(pred, result.thresholdSearch.bestThresholdPercent, cfg.dataset);
        await writeGreyPng(path.join(maskDir, `${entry.index}.png`), pred.gt.width, pred.gt.height, mask);
      }
      log(`wrote ${result.images.length} masks to ${maskDir}`);
    }

    if (parsed.report) {
      const chartPath = path.join(out, 'segmentation_metrics.png');
      await writeFileAtomic(chartPath, await renderMetricsChart(result, `${cfg.dataset} evaluation`));
      log(`wrote ${chartPath}`);
      if (parsed.examples > 0) {
        const gridPath = path.join(out, 'segmentation_examples.png');
        await writeFileAtomic(gridPath, await renderExampleGrid(cfg, result, { count: parsed.examples, warn }));
        log(`wrote ${gridPath}`);
      }
    }
    return 0;
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`evaluate: ${err.message}\n(see elbo-t2ialign evaluate --help)\n`);
      return 2;
    }
    process.stderr.write(`evaluate: error: ${err instanceof Error ? err.message : String(err)}\n`);
    return 1;
  }
}
