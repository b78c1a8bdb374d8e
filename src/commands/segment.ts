// `elbo-t2ialign segment`: segments images given their classes, writing heatmaps,
// overlays, elbo.json and the resolved configuration; resumable and Ctrl-C safe.
import { existsSync, readFileSync } from 'node:fs';
import { basename, extname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { writeFileAtomic } from '../io/atomic.js';
import { readImageRGB, writeGreyPng, writeRgbPng, type ImageRGB } from '../io/image.js';
import { SafeTensorsFile, writeSafetensors, type TensorToWrite } from '../io/safetensors.js';
import { applyModelDefaults, applyOverrides, defaultConfig, overriddenKeys, parseTimesteps, type SegmentConfig } from '../elbo/config.js';
import { toU8 } from '../elbo/interp.js';
import { overlayHeatmap } from '../elbo/overlay.js';
import { segmentImage, type SegmentProgress, type SegmentResult } from '../elbo/segment.js';
import { loadPipeline } from '../models/pipeline.js';
import { Device } from '../tensor/index.js';
import {
  BUNDLED_PIPELINE,
  BUNDLED_WARNING,
  Interrupted,
  Progress,
  checkInterrupted,
  ensureWritableDir,
  fileSafe,
  installInterruptHandler,
  splitClasses,
} from './common.js';

export const SEGMENT_HELP = `Usage: elbo-t2ialign segment --image IMG [--image IMG2 ...] --classes "cat,potted plant" --out DIR
         [--model DIR|hub-id] [--noise FILE] [--dump FILE] [--force] [--dtype f32|f16] [--batch N] [key=value ...]

Segments each image into the given classes (all present in every image) with ELBO-T2IAlign.
Outputs: DIR/heatmaps/<image-stem>_<class>.png (8-bit grey, as the reference writes them),
DIR/overlays/<image-stem>_<class>.png (heatmap over the image), DIR/elbo.json (per image and
class: loss, normalized ELBO, temperature), DIR/config.json (the resolved configuration), and with
save_cross_att=true DIR/cross_att/<image-stem>_<class>.png, with save_elbo=true
DIR/elbo_min_max.json. Images whose heatmaps all exist are skipped unless --force.

Options:
  --model DIR|ID   diffusers pipeline folder or hub id in the local Hugging Face cache
                   (default: the bundled tiny pipeline with random weights: meaningless maps)
  --noise FILE     safetensors with elbo_noise (n_elbo, C, h, w) and collect_noise (n_collect, C, h, w)
  --dump FILE      write the intermediate tensors (reference names) to a safetensors file
  --dtype f16      store UNet/text-encoder weights in f16 (faster on lavapipe; default f32)
  --batch N        largest UNet batch (default 4)
  --reference-exact  reproduce the reference even where it breaks (SDXL: its 7-entry SD weight lists,
                   a zero self_weight row giving NaN / black heatmaps). Without it, a model whose
                   attention layout differs from SD 1.x/2.x (SDXL: 3 resolution segments) gets
                   weights for its own layout unless cross_weight / self_weight are given, and a
                   self_weight row that sums to zero is an error naming the option.
Default layer weights (used unless cross_weight / self_weight are given, or with --reference-exact):
  SD 1.x/2.x  the reference's 'cross_weight=[1,1,10,15,10,1,1]' 'self_weight=[[1,0,0,0,0,0,1],[0,0,0,0,0,0,1]]'
              over 7 resolution segments [down s, s/2, s/4, mid s/8, up s/4, s/2, s]
  SDXL        'cross_weight=[1,10,1]' 'self_weight=[[1,0,1],[0,0,1]]' over its 3 segments
              [down s/2, down s/4 + mid + up s/4, up s/2] (SDXL has no attention at full latent size):
              the lowest resolution weighted most, as in SD; self rows = the highest-resolution down and
              up layers, then the up layers alone (the reference's SDXL template). The reference's SD
              lists would act as cross [1,1,10] and self rows [1,0,0] / [0,0,0], giving NaN masks.
Overrides (the reference's keys and syntax, configs/run_segmentation.yaml):
  elbo_strength=3  cross_gaussian_var=3  'elbo_timesteps=[[1,999,50]]'  'collect_timesteps=[[20,201,20]]'
  'elbo_timesteps=[["random",1,999,20]]'  fix_temperature=true  elbo_path=FILE.json
  'cross_weight=[1,1,10,15,10,1,1]'  'self_weight=[[1,0,0,0,0,0,1],[0,0,0,0,0,0,1]]'
  'elbo_text.prompt=a photo of {source_cls}'  'source_text.prompt=a photo of {classes}'
  save_cross_att=true  save_elbo=true  seed=4307`;

interface ElboRecord {
  [image: string]: { [cls: string]: { loss: number | null; losses: number[]; normalized_elbo: number; temperature: number } };
}

/** Reads --noise FILE, checking names and shapes against the expected latent layout. */
export function readNoiseFile(path: string): { elbo: Float32Array; collect: Float32Array; elboShape: number[]; collectShape: number[] } {
  const f = SafeTensorsFile.open(path);
  try {
    for (const n of ['elbo_noise', 'collect_noise']) {
      if (!f.has(n)) throw new Error(`--noise ${path}: tensor "${n}" not found (expected elbo_noise (n_elbo_timesteps, C, h, w) and collect_noise (n_collect_timesteps, C, h, w))`);
      if (f.info(n).shape.length !== 4) throw new Error(`--noise ${path}: tensor "${n}" has shape [${f.info(n).shape.join(', ')}], expected 4 dims (n_timesteps, C, h, w)`);
    }
    return { elbo: f.readF32('elbo_noise'), collect: f.readF32('collect_noise'), elboShape: f.info('elbo_noise').shape, collectShape: f.info('collect_noise').shape };
  } finally {
    f.close();
  }
}

/** Checks injected noise shapes against the run (names expected and found). */
export function checkNoiseShapes(noise: ReturnType<typeof readNoiseFile>, path: string, nElbo: number, nCollect: number, latent: readonly number[]): void {
  const [, C, h, w] = latent;
  const want = (n: number): string => `[${n}, ${C}, ${h}, ${w}]`;
  const same = (a: readonly number[], b: readonly number[]): boolean => a.length === b.length && a.every((x, i) => x === b[i]);
  if (!same(noise.elboShape, [nElbo, C!, h!, w!])) {
    throw new Error(`--noise ${path}: elbo_noise has shape [${noise.elboShape.join(', ')}], expected ${want(nElbo)} (${nElbo} ELBO timesteps, latent ${C}x${h}x${w})`);
  }
  if (!same(noise.collectShape, [nCollect, C!, h!, w!])) {
    throw new Error(`--noise ${path}: collect_noise has shape [${noise.collectShape.join(', ')}], expected ${want(nCollect)} (${nCollect} collect timesteps, latent ${C}x${h}x${w})`);
  }
}

/** The --dump tensors, with the golden names and shapes. */
export function dumpTensors(r: SegmentResult): Record<string, TensorToWrite> {
  const N = r.res * r.res;
  const t: Record<string, TensorToWrite> = {
    z_source: { dtype: 'F32', shape: [...r.latentShape], data: r.zSource },
    elbo: { dtype: 'F32', shape: [r.classes.length], data: Float32Array.from(r.classes, (c) => c.loss) },
    elbo_min_max: { dtype: 'F32', shape: [r.classes.length], data: Float32Array.from(r.classes, (c) => c.normalizedElbo) },
    temperature: { dtype: 'F32', shape: [r.classes.length], data: Float32Array.from(r.classes, (c) => c.temperature) },
  };
  const nE = r.classes[0]!.losses.length;
  if (nE > 0) t.elbo_losses = { dtype: 'F32', shape: [r.classes.length, nE], data: Float32Array.from(r.classes.flatMap((c) => c.losses)) };
  if (r.selfAtt) t.self_att = { dtype: 'F32', shape: [N, N], data: r.selfAtt };
  r.classes.forEach((c, i) => {
    t[`cross_att.${i}`] = { dtype: 'F32', shape: [N, 1], data: c.crossAtt };
    t[`cross_att_tempered.${i}`] = { dtype: 'F32', shape: [N, 1], data: c.crossTempered };
    t[`mask_lowres.${i}`] = { dtype: 'F32', shape: [N, 1], data: c.maskLowres };
    t[`mask.${i}`] = { dtype: 'F32', shape: [r.height, r.width], data: c.mask };
    t[`cross_att_img.${i}`] = { dtype: 'F32', shape: [r.height, r.width], data: c.crossImage };
  });
  return t;
}

/** Writes heatmaps, overlays and (optionally) cross-attention images of one image. */
export async function writeImageOutputs(out: string, stem: string, img: ImageRGB, r: SegmentResult, cfg: SegmentConfig, overlays = true): Promise<void> {
  for (const c of r.classes) {
    const heat = toU8(c.mask);
    await writeGreyPng(join(out, 'heatmaps', `${stem}_${fileSafe(c.name)}.png`), r.width, r.height, heat);
    if (overlays) await writeRgbPng(join(out, 'overlays', `${stem}_${fileSafe(c.name)}.png`), r.width, r.height, overlayHeatmap(img.data, heat));
    if (cfg.save_cross_att) await writeGreyPng(join(out, 'cross_att', `${stem}_${fileSafe(c.name)}.png`), r.width, r.height, toU8(c.crossImage));
  }
}

/** Progress text and overall fraction for one image's phases. */
export function describeProgress(p: SegmentProgress, imageIdx: number, nImages: number, label: string): [string, number] {
  const weights = { encode: [0, 0.02], elbo: [0.02, 0.7], collect: [0.72, 0.25], aggregate: [0.97, 0.03] } as const;
  const [start, span] = weights[p.phase];
  const frac = (imageIdx + start + (span * p.done) / Math.max(1, p.total)) / nImages;
  const ts = p.timestep !== undefined ? ` t=${p.timestep}` : '';
  return [`image ${imageIdx + 1}/${nImages} ${label}: ${p.phase} ${p.done}/${p.total}${ts}`, frac];
}

function readJsonObject<T>(path: string, what: string): T {
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as T;
  } catch (e) {
    throw new Error(`${what} ${path}: cannot read JSON (${(e as Error).message})`);
  }
}

export async function runSegment(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      image: { type: 'string', multiple: true },
      classes: { type: 'string' },
      out: { type: 'string' },
      model: { type: 'string' },
      noise: { type: 'string' },
      dump: { type: 'string' },
      force: { type: 'boolean' },
      dtype: { type: 'string' },
      batch: { type: 'string' },
      quiet: { type: 'boolean' },
      'no-overlays': { type: 'boolean' },
      'reference-exact': { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log(SEGMENT_HELP);
    return 0;
  }
  const images = values.image ?? [];
  if (images.length === 0) throw new Error('segment: --image is required (one or more)');
  if (values.classes === undefined) throw new Error('segment: --classes is required, e.g. --classes "cat,potted plant"');
  if (!values.out) throw new Error('segment: --out DIR is required');
  let classes = splitClasses(values.classes);
  if (classes.length === 0) throw new Error('segment: --classes is empty; give the classes present in the image, e.g. --classes "cat,dog"');
  const unique = [...new Set(classes)];
  if (unique.length !== classes.length) {
    console.error(`warning: duplicate class names removed: ${classes.filter((c, i) => classes.indexOf(c) !== i).join(', ')}`);
    classes = unique;
  }
  const dtype = values.dtype ?? 'f32';
  if (dtype !== 'f32' && dtype !== 'f16') throw new Error(`--dtype: expected f32 or f16, got "${dtype}"`);
  const batch = values.batch === undefined ? 4 : Number(values.batch);
  if (!Number.isInteger(batch) || batch < 1) throw new Error(`--batch: expected a positive integer, got "${values.batch}"`);
  const config = applyOverrides(defaultConfig(), positionals);
  const out = resolve(values.out);

  // Cheap checks before any model work: images decode, the noise file is sound, out is writable.
  const decoded: ImageRGB[] = [];
  for (const p of images) decoded.push(await readImageRGB(p));
  const stems = images.map((p) => basename(p, extname(p)));
  const dupStem = stems.find((s, i) => stems.indexOf(s) !== i);
  if (dupStem) throw new Error(`--image: two images share the file stem "${dupStem}"; their outputs would overwrite each other`);
  const noiseFile = values.noise ? readNoiseFile(values.noise) : undefined;
  let elboLookup: Record<string, Record<string, number>> | undefined;
  if (config.elbo_path) {
    if (!existsSync(config.elbo_path)) throw new Error(`elbo_path: file not found: ${config.elbo_path}`);
    elboLookup = readJsonObject(config.elbo_path, 'elbo_path');
  }
  ensureWritableDir(out);

  if (!values.model) console.error(BUNDLED_WARNING);
  installInterruptHandler();
  const dev = await Device.get();
  const pipe = await loadPipeline(dev, values.model ?? BUNDLED_PIPELINE, { weightDtype: dtype, vaeDecoder: false });
  try {
    applyModelDefaults(config, pipe.segmentationDefaults, overriddenKeys(positionals), values['reference-exact']);
    if (noiseFile) {
      const side = pipe.vae.sampleSize / 8;
      const nElbo = parseTimesteps(config.elbo_timesteps, config.seed).length;
      const nCollect = parseTimesteps(config.collect_timesteps, config.seed + 1).length;
      checkNoiseShapes(noiseFile, values.noise!, nElbo, nCollect, [1, pipe.unet.config.inChannels, side, side]);
    }
    const progress = new Progress(values.quiet);
    const elboPath = join(out, 'elbo.json');
    const record: ElboRecord = existsSync(elboPath) ? readJsonObject(elboPath, 'existing') : {};
    const minMaxPath = join(out, 'elbo_min_max.json');
    const savedMinMax: Record<string, Record<string, number>> = existsSync(minMaxPath) ? readJsonObject(minMaxPath, 'existing') : {};
    await writeFileAtomic(
      join(out, 'config.json'),
      JSON.stringify({ ...config, model: values.model ?? BUNDLED_PIPELINE, dtype, classes, images: images.map((p) => resolve(p)) }, null, 1),
    );
    let skipped = 0;
    try {
      for (let i = 0; i < images.length; i++) {
        const stem = stems[i]!;
        const done = classes.every((c) => existsSync(join(out, 'heatmaps', `${stem}_${fileSafe(c)}.png`)));
        if (done && !values.force && !values.dump) {
          skipped++;
          continue;
        }
        const r = await segmentImage(pipe, decoded[i]!, classes, {
          config,
          noise: noiseFile ? { elbo: noiseFile.elbo, collect: noiseFile.collect } : undefined,
          normalizedElbo: elboLookup ? elboLookup[stem] ?? elboLookup[basename(images[i]!)] : undefined,
          wantSelfMatrix: Boolean(values.dump),
          maxBatch: batch,
          referenceExact: values['reference-exact'],
          onProgress: (p) => {
            const [text, frac] = describeProgress(p, i, images.length, stem);
            progress.update(text, frac);
            checkInterrupted();
          },
        });
        await writeImageOutputs(out, stem, decoded[i]!, r, config, !values['no-overlays']);
        record[stem] = Object.fromEntries(
          r.classes.map((c) => [c.name, { loss: Number.isNaN(c.loss) ? null : c.loss, losses: c.losses, normalized_elbo: c.normalizedElbo, temperature: c.temperature }]),
        );
        await writeFileAtomic(elboPath, JSON.stringify(record, null, 1));
        if (config.save_elbo) {
          savedMinMax[stem] = Object.fromEntries(r.classes.map((c) => [c.name, c.normalizedElbo]));
          await writeFileAtomic(minMaxPath, JSON.stringify(savedMinMax));
        }
        if (values.dump) {
          const dumpPath = images.length === 1 ? values.dump : values.dump.replace(/(\.safetensors)?$/, `.${stem}.safetensors`);
          await writeSafetensors(dumpPath, dumpTensors(r));
        }
      }
    } catch (e) {
      progress.done();
      if (e instanceof Interrupted) {
        console.error(`stopped: outputs of finished images are in ${out}; rerun the same command to continue`);
        return 130;
      }
      throw e;
    }
    progress.done();
    if (skipped) console.error(`${skipped} image(s) already done, skipped (use --force to redo)`);
    console.log(`heatmaps: ${join(out, 'heatmaps')}\noverlays: ${join(out, 'overlays')}\nELBO figures: ${elboPath}`);
    return 0;
  } finally {
    pipe.release();
  }
}
