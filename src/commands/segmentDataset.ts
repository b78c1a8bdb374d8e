// `elbo-t2ialign segment-dataset`: segmentation over a dataset description in the
// reference's format, writing heatmaps/<index>_<class>.png; resumable, Ctrl-C safe.
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { writeFileAtomic } from '../io/atomic.js';
import { readImageRGB } from '../io/image.js';
import { CONFIG_KEYS, applyModelDefaults, applyOverrides, defaultConfig, overriddenKeys } from '../elbo/config.js';
import { loadDatasetConfig, loadGroundTruth, loadImageList, loadLabelsJson, parseOverrides, labelsFromGt, type ImageEntry } from '../elbo/dataset.js';
import { classPositionText } from '../elbo/nounPhrases.js';
import { segmentImage } from '../elbo/segment.js';
import { loadPipeline } from '../models/pipeline.js';
import { Device } from '../tensor/index.js';
import { BUNDLED_PIPELINE, BUNDLED_WARNING, Interrupted, Progress, checkInterrupted, ensureWritableDir, fileSafe, installInterruptHandler } from './common.js';
import { describeProgress, writeImageOutputs } from './segment.js';

export const SEGMENT_DATASET_HELP = `Usage: elbo-t2ialign segment-dataset --dataset-cfg info.yaml --out DIR [--model DIR|hub-id]
         [--limit N] [--ids FILE] [--labels FILE.json] [--force] [--dtype f32|f16] [--batch N] [key=value ...]

Runs ELBO-T2IAlign over the images of a dataset description in the reference's format
(metadata/<dataset>/info.yaml: category names with synonyms, img_path / gt_path templates,
data_root, data_name_list) and writes DIR/heatmaps/<index>_<class>.png (index = position in the
id list), as the reference's run_segmentation.py does, plus DIR/elbo.json. Image-level labels
are the classes present in each ground-truth mask (after the dataset's label mapping), or
come from --labels (JSON: {"<image id>": ["cat", ...]}). Finished images are skipped on a rerun
unless --force; Ctrl-C stops after the current file. Then run \`elbo-t2ialign evaluate\`.

Options:
  --limit N        only the first N images of the list
  --ids FILE       only the image ids listed in FILE (one per line)
key=value overrides: the segmentation keys of \`segment --help\` (elbo_strength=3 ...), or keys of
info.yaml (data_root=/data/VOC2012 ...).`;

interface PromptsFile {
  [image: string]: { subject: string[]; phrase: string[] };
}

export async function runSegmentDataset(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      'dataset-cfg': { type: 'string' },
      out: { type: 'string' },
      model: { type: 'string' },
      limit: { type: 'string' },
      ids: { type: 'string' },
      labels: { type: 'string' },
      force: { type: 'boolean' },
      dtype: { type: 'string' },
      batch: { type: 'string' },
      quiet: { type: 'boolean' },
      'no-overlays': { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log(SEGMENT_DATASET_HELP);
    return 0;
  }
  if (!values['dataset-cfg']) throw new Error('segment-dataset: --dataset-cfg info.yaml is required');
  if (!values.out) throw new Error('segment-dataset: --out DIR is required');
  const methodOverrides: string[] = [];
  const datasetOverrides: string[] = [];
  for (const p of positionals) (CONFIG_KEYS.includes(p.split('=')[0]!.split('.')[0]!) ? methodOverrides : datasetOverrides).push(p);
  const config = applyOverrides(defaultConfig(), methodOverrides);
  const ds = loadDatasetConfig(values['dataset-cfg'], parseOverrides(datasetOverrides));
  let entries: ImageEntry[] = loadImageList(ds, (m) => console.error(`warning: ${m}`));
  if (values.ids) {
    const wanted = readFileSync(values.ids, 'utf8').split('\n').map((s) => s.trim()).filter(Boolean);
    const byName = new Map(entries.map((e) => [e.name, e]));
    const missing = wanted.filter((w) => !byName.has(w));
    if (missing.length) throw new Error(`--ids ${values.ids}: ${missing.length} id(s) not in the dataset list ${ds.dataNameList}: ${missing.slice(0, 5).join(', ')}${missing.length > 5 ? ', ...' : ''}`);
    entries = wanted.map((w) => byName.get(w)!);
  }
  if (values.limit !== undefined) {
    const n = Number(values.limit);
    if (!Number.isInteger(n) || n < 1) throw new Error(`--limit: expected a positive integer, got "${values.limit}"`);
    entries = entries.slice(0, n);
  }
  const labelsJson = values.labels ? loadLabelsJson(ds, values.labels) : undefined;
  let prompts: PromptsFile | undefined;
  if (config.elbo_text.type === 'file' || config.source_text.type === 'file') {
    const f = ds.raw.name_to_prompts;
    if (typeof f !== 'string') throw new Error(`elbo_text.type=file needs "name_to_prompts" (a JSON of image -> {subject, phrase}) in ${ds.source}`);
    const path = f.endsWith('.pkl') ? f.replace(/\.pkl$/, '.json') : f;
    if (!existsSync(path)) throw new Error(`name_to_prompts: ${path} not found (a JSON with the structure of the reference's prompts.pkl: {"<image>": {"subject": [...], "phrase": [...]}})`);
    prompts = JSON.parse(readFileSync(path, 'utf8')) as PromptsFile;
  }
  const elboLookup = config.elbo_path ? (JSON.parse(readFileSync(config.elbo_path, 'utf8')) as Record<string, Record<string, number>>) : undefined;
  const out = resolve(values.out);
  ensureWritableDir(out);
  const dtype = values.dtype === 'f16' ? 'f16' : 'f32';
  const batch = values.batch === undefined ? 4 : Number(values.batch);
  if (!values.model) console.error(BUNDLED_WARNING);
  installInterruptHandler();
  const dev = await Device.get();
  const pipe = await loadPipeline(dev, values.model ?? BUNDLED_PIPELINE, { weightDtype: dtype, vaeDecoder: false });
  try {
    applyModelDefaults(config, pipe.segmentationDefaults, overriddenKeys(methodOverrides));
    const progress = new Progress(values.quiet);
    const elboPath = join(out, 'elbo.json');
    const record: Record<string, unknown> = existsSync(elboPath) ? (JSON.parse(readFileSync(elboPath, 'utf8')) as Record<string, unknown>) : {};
    const minMaxPath = join(out, 'elbo_min_max.json');
    const savedMinMax: Record<string, Record<string, number>> = existsSync(minMaxPath) ? (JSON.parse(readFileSync(minMaxPath, 'utf8')) as Record<string, Record<string, number>>) : {};
    let done = 0;
    let skipped = 0;
    let noLabels = 0;
    try {
      for (let i = 0; i < entries.length; i++) {
        const e = entries[i]!;
        const labelIdx = labelsJson ? labelsJson.get(e.name) : labelsFromGt(ds, loadGroundTruth(e.gtPath, ds.dataset));
        if (!labelIdx) throw new Error(`--labels ${values.labels}: no labels for image "${e.name}"`);
        if (labelIdx.length === 0) {
          noLabels++;
          continue;
        }
        const classes = labelIdx.map((k) => ds.categories[k]!.name);
        const stem = String(e.index);
        if (!values.force && classes.every((c) => existsSync(join(out, 'heatmaps', `${stem}_${fileSafe(c)}.png`)))) {
          skipped++;
          continue;
        }
        const img = await readImageRGB(e.imgPath);
        // AEP "file" mode (run_segmentation.py): a referring phrase per class and image.
        let elboTexts: string[] | undefined;
        let sourceText: string | undefined;
        let positionTexts: string[] | undefined;
        if (prompts) {
          const p = prompts[e.name];
          if (!p) throw new Error(`name_to_prompts: no entry for image "${e.name}"`);
          const phraseOf = (c: string): string => {
            const k = p.subject.indexOf(c);
            if (k < 0) throw new Error(`name_to_prompts: image "${e.name}" has no phrase for class "${c}" (subjects: ${p.subject.join(', ')})`);
            return p.phrase[k]!;
          };
          if (config.elbo_text.type === 'file') elboTexts = classes.map((c) => `a photo of ${phraseOf(c)}`);
          if (config.source_text.type === 'file') {
            sourceText = config.source_text.prompt.replace('{classes}', p.phrase.join(', '));
            positionTexts = classes.map((c) => classPositionText(c, phraseOf(c)));
          }
        }
        const r = await segmentImage(pipe, img, classes, {
          config,
          elboTexts,
          sourceText,
          positionTexts,
          normalizedElbo: elboLookup?.[e.name],
          maxBatch: batch,
          onProgress: (p) => {
            const [text, frac] = describeProgress(p, i, entries.length, e.name);
            progress.update(text, frac);
            checkInterrupted();
          },
        });
        await writeImageOutputs(out, stem, img, r, config, !values['no-overlays']);
        record[e.name] = { index: e.index, classes: Object.fromEntries(r.classes.map((c) => [c.name, { loss: Number.isNaN(c.loss) ? null : c.loss, normalized_elbo: c.normalizedElbo, temperature: c.temperature }])) };
        await writeFileAtomic(elboPath, JSON.stringify(record));
        if (config.save_elbo) {
          savedMinMax[e.name] = Object.fromEntries(r.classes.map((c) => [c.name, c.normalizedElbo]));
          await writeFileAtomic(minMaxPath, JSON.stringify(savedMinMax));
        }
        done++;
      }
    } catch (err) {
      progress.done();
      if (err instanceof Interrupted) {
        console.error(`stopped after ${done} image(s); rerun the same command to continue`);
        return 130;
      }
      throw err;
    }
    progress.done();
    console.log(`segmented ${done} image(s), skipped ${skipped} already done${noLabels ? `, ${noLabels} without foreground labels` : ''}; heatmaps in ${join(out, 'heatmaps')}`);
    return 0;
  } finally {
    pipe.release();
  }
}
