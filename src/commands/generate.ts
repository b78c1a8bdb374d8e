// `elbo-t2ialign generate`: ELBO-reweighted text-to-image generation (run_generation.py) for
// one prompt or a file of prompts, writing PNGs and generation.json; resumable and Ctrl-C safe.
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { writeFileAtomic } from '../io/atomic.js';
import { writeRgbPng } from '../io/image.js';
import { SafeTensorsFile } from '../io/safetensors.js';
import { generate, samplingTimesteps, type GenerateResult } from '../elbo/generate.js';
import { PromptSyntaxError, parseWeightedPrompt } from '../elbo/promptWeighting.js';
import { StableDiffusionPipeline } from '../models/pipeline.js';
import { Device } from '../tensor/index.js';
import { BUNDLED_PIPELINE, BUNDLED_WARNING, Interrupted, Progress, checkInterrupted, ensureWritableDir, installInterruptHandler } from './common.js';

export const GENERATE_HELP = `Usage: elbo-t2ialign generate --prompt "a red cat and a blue dog" --out DIR
         [--prompts FILE] [--model DIR|hub-id] [--steps 50] [--guidance 7.5] [--elbo-strength 1.2]
         [--elbo-timesteps 50] [--seed 4307] [--latent FILE] [--no-elbo] [--force] [--dtype f32|f16]

Generates an image per prompt with ELBO-T2IAlign's reweighted sampling (run_generation.py):
DDIM with classifier-free guidance; during the first --elbo-timesteps steps each noun phrase of
the prompt ("a red cat", "a blue dog") is scored by how far the UNet's prediction for the phrase
alone is from the prediction for the whole prompt, and the worse-aligned phrases get a higher
prompt weight, (a red cat)1.2, encoded with compel's weighting rules. A prompt with fewer than
two noun phrases has nothing to reweight and is generated with plain guidance (a note says so).

Outputs: DIR/images/NNNN.png, named by the prompt's 0-based index (0000.png, 0001.png, ...;
more digits past 9999), and DIR/generation.json: the settings and, per prompt, its prompt,
image, phrases and steps (t, next_t, elbo, weights, weight_prompt). Prompts whose image exists
are skipped (rerun the same command to resume), unless --force.

Options:
  --prompt TEXT       the prompt (compel weight syntax allowed: (red cat)1.3, cat++)
  --prompts FILE      one prompt per line (UTF-8; blank lines skipped, indices count the others)
  --out DIR           output folder (created)
  --model DIR|ID      diffusers SD 1.x/2.x pipeline folder or hub id in the local Hugging Face
                      cache (default: the bundled tiny pipeline with random weights: noise images)
  --steps N           the reference's infer_timesteps: timesteps 999, 999-k, ... with k = 1000 // N
                      (default 50)
  --guidance G        classifier-free guidance scale (default 7.5)
  --elbo-strength S   phrase weight = round(S ** normalized score, 2), in [1, S] (default 1.2)
  --elbo-timesteps K  reweight during the first K steps only (default 50)
  --seed N            seed of the initial latent, drawn as torch.manual_seed(N); torch.randn does
                      on the CPU, so a seed gives the reference's latent (default 4307)
  --latent FILE       safetensors file with tensor latent_init (1, C, s, s): the initial latent
                      for every prompt (overrides --seed)
  --no-elbo           plain guidance, no reweighting (all weights 1.0)
  --force             regenerate prompts whose image exists
  --dtype f16         store UNet/text-encoder weights in f16 (default f32)
  --quiet             no progress bar`;

/** One prompt's entry in generation.json. */
export interface GenerationRecord {
  index: number;
  prompt: string;
  /** Path relative to DIR, e.g. images/0000.png. */
  image: string;
  phrases: string[];
  reweighting: boolean;
  note?: string;
  steps: { t: number; next_t: number; elbo: number[] | null; weights: number[]; weight_prompt: string }[];
}

interface GenerationJson {
  model: string;
  steps: number;
  timesteps: number[];
  guidance: number;
  elbo_strength: number;
  elbo_timesteps: number;
  seed: number | null;
  latent: string | null;
  no_elbo: boolean;
  prompts: GenerationRecord[];
}

function parseNumber(v: string | undefined, name: string, def: number, check: (x: number) => boolean, expect: string): number {
  if (v === undefined) return def;
  const x = Number(v);
  if (v.trim() === '' || !Number.isFinite(x) || !check(x)) throw new Error(`${name}: expected ${expect}, got "${v}"`);
  return x;
}

/** The prompts of --prompts FILE: one per line (trimmed), blank lines skipped; `lines` are 1-based line numbers. */
export function readPromptsFile(path: string): { prompts: string[]; lines: number[] } {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new Error(`--prompts ${path}: cannot read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  const prompts: string[] = [];
  const lines: number[] = [];
  text.split(/\r?\n/).forEach((l, i) => {
    const p = l.trim();
    if (p.length > 0) {
      prompts.push(p);
      lines.push(i + 1);
    }
  });
  if (prompts.length === 0) throw new Error(`--prompts ${path}: the file has no prompts (expected one prompt per line)`);
  return { prompts, lines };
}

/** Reads --latent FILE's `latent_init`, checking its shape against (1, C, s, s). */
export function readLatentFile(path: string, expected: readonly [number, number, number, number]): Float32Array {
  let f: SafeTensorsFile;
  try {
    f = SafeTensorsFile.open(path);
  } catch (e) {
    throw new Error(`--latent ${path}: ${(e as Error).message}`);
  }
  try {
    const want = `[${expected.join(', ')}]`;
    if (!f.has('latent_init')) {
      throw new Error(`--latent ${path}: tensor "latent_init" not found (found: ${f.names().join(', ') || 'none'}); expected latent_init with shape ${want}`);
    }
    const shape = f.info('latent_init').shape;
    if (shape.length !== 4 || shape.some((d, i) => d !== expected[i])) {
      throw new Error(`--latent ${path}: latent_init has shape [${shape.join(', ')}], expected ${want} for this model (in_channels ${expected[1]}, sample_size ${expected[2]})`);
    }
    return f.readF32('latent_init');
  } finally {
    f.close();
  }
}

function imageName(index: number, count: number): string {
  return `${String(index).padStart(Math.max(4, String(count - 1).length), '0')}.png`;
}

function toRecord(index: number, prompt: string, image: string, r: GenerateResult): GenerationRecord {
  const rec: GenerationRecord = {
    index,
    prompt,
    image,
    phrases: r.phrases,
    reweighting: r.reweighting,
    steps: r.steps.map((s) => ({ t: s.t, next_t: s.nextT, elbo: s.reweighted ? s.elbo : null, weights: s.weights, weight_prompt: s.weightPrompt })),
  };
  if (r.warning) rec.note = r.warning;
  return rec;
}

export async function runGenerate(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      prompt: { type: 'string' },
      prompts: { type: 'string' },
      out: { type: 'string' },
      model: { type: 'string' },
      steps: { type: 'string' },
      guidance: { type: 'string' },
      'elbo-strength': { type: 'string' },
      'elbo-timesteps': { type: 'string' },
      seed: { type: 'string' },
      latent: { type: 'string' },
      'no-elbo': { type: 'boolean' },
      force: { type: 'boolean' },
      dtype: { type: 'string' },
      quiet: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log(GENERATE_HELP);
    return 0;
  }
  if (positionals.length > 0) throw new Error(`generate: unexpected argument "${positionals[0]}" (quote the prompt: --prompt "a red cat and a blue dog")`);
  if (values.prompt !== undefined && values.prompts !== undefined) throw new Error('generate: give either --prompt or --prompts FILE, not both');
  if (values.prompt === undefined && values.prompts === undefined) throw new Error('generate: --prompt TEXT or --prompts FILE is required');
  if (!values.out) throw new Error('generate: --out DIR is required');
  const fromFile = values.prompts !== undefined ? readPromptsFile(values.prompts) : undefined;
  const prompts = fromFile ? fromFile.prompts : [values.prompt!];
  const where = (i: number): string =>
    fromFile ? `--prompts ${values.prompts} line ${fromFile.lines[i]} (prompt index ${i}) ${JSON.stringify(prompts[i])}` : `--prompt ${JSON.stringify(prompts[i])}`;
  prompts.forEach((p, i) => {
    if (p.trim() === '') throw new Error(`${where(i)}: the prompt is empty`);
    try {
      parseWeightedPrompt(p, { strict: true });
    } catch (e) {
      if (e instanceof PromptSyntaxError) throw new Error(`${where(i)}: ${e.message}`);
      throw e;
    }
  });
  const steps = parseNumber(values.steps, '--steps', 50, (x) => Number.isInteger(x) && x >= 1 && x <= 1000, 'an integer in [1, 1000]');
  const guidance = parseNumber(values.guidance, '--guidance', 7.5, () => true, 'a number');
  const elboStrength = parseNumber(values['elbo-strength'], '--elbo-strength', 1.2, (x) => x > 0, 'a positive number');
  const elboTimesteps = parseNumber(values['elbo-timesteps'], '--elbo-timesteps', 50, (x) => Number.isInteger(x) && x >= 0, 'a non-negative integer');
  const seed = parseNumber(values.seed, '--seed', 4307, (x) => Number.isSafeInteger(x) && x >= 0, 'a non-negative integer');
  const dtype = values.dtype ?? 'f32';
  if (dtype !== 'f32' && dtype !== 'f16') throw new Error(`--dtype: expected f32 or f16, got "${dtype}"`);
  if (values.latent !== undefined && !existsSync(values.latent)) throw new Error(`--latent ${values.latent}: file not found`);
  const out = resolve(values.out);
  ensureWritableDir(out);
  ensureWritableDir(join(out, 'images'), '--out images folder');

  if (!values.model) console.error(BUNDLED_WARNING.replace('heatmaps are meaningless', 'images are noise'));
  installInterruptHandler();
  const dev = await Device.get();
  const pipe = await StableDiffusionPipeline.load(dev, values.model ?? BUNDLED_PIPELINE, { weightDtype: dtype });
  try {
    const c = pipe.unet.config;
    const shape: [number, number, number, number] = [1, c.inChannels, c.sampleSize, c.sampleSize];
    const latentInit = values.latent !== undefined ? readLatentFile(values.latent, shape) : undefined;
    const timesteps = samplingTimesteps(steps, pipe.schedule.numTrainTimesteps).map((s) => s.t);

    const jsonPath = join(out, 'generation.json');
    const settings: Omit<GenerationJson, 'prompts'> = {
      model: values.model ?? BUNDLED_PIPELINE,
      steps,
      timesteps,
      guidance,
      elbo_strength: elboStrength,
      elbo_timesteps: elboTimesteps,
      seed: latentInit ? null : seed,
      latent: values.latent !== undefined ? resolve(values.latent) : null,
      no_elbo: Boolean(values['no-elbo']),
    };
    let previous: GenerationRecord[] = [];
    if (existsSync(jsonPath) && !values.force) {
      let old: GenerationJson;
      try {
        old = JSON.parse(readFileSync(jsonPath, 'utf8')) as GenerationJson;
      } catch (e) {
        throw new Error(`${jsonPath}: cannot read the previous run's JSON (${(e as Error).message}); use --force or another --out`);
      }
      const changed = (Object.keys(settings) as (keyof typeof settings)[]).filter((k) => JSON.stringify(old[k]) !== JSON.stringify(settings[k]));
      if (changed.length > 0) {
        throw new Error(
          `--out ${out} holds images made with other settings (${changed.map((k) => `${k}: ${JSON.stringify(old[k])} then, ${JSON.stringify(settings[k])} now`).join('; ')}); ` +
            'use another --out, or --force to regenerate them all',
        );
      }
      previous = Array.isArray(old.prompts) ? old.prompts : [];
    }
    const records = new Map<number, GenerationRecord>();
    for (const r of previous) {
      // Keep what still describes an image on disk for the same prompt at the same index.
      if (r.prompt === prompts[r.index] && existsSync(join(out, r.image))) records.set(r.index, r);
    }
    const todo = prompts.map((_, i) => i).filter((i) => values.force || !records.has(i));
    const save = async (): Promise<void> => {
      const json: GenerationJson = { ...settings, prompts: [...records.values()].sort((a, b) => a.index - b.index) };
      await writeFileAtomic(jsonPath, `${JSON.stringify(json, null, 1)}\n`);
    };

    const progress = new Progress(values.quiet);
    let doneCount = 0;
    try {
      for (const i of todo) {
        const image = join('images', imageName(i, prompts.length));
        const label = prompts.length > 1 ? `prompt ${i + 1}/${prompts.length}` : 'prompt';
        progress.update(`${label}: starting`, doneCount / todo.length);
        const r = await generate(pipe, prompts[i]!, {
          steps,
          guidance,
          elboStrength,
          elboTimesteps,
          seed,
          latentInit,
          noElbo: values['no-elbo'],
          onStep: (p) => {
            const text = p.phase === 'decode' ? `${label}: decoding` : `${label}: step ${p.done}/${p.total} t=${p.t}`;
            progress.update(text, (doneCount + (p.phase === 'decode' ? 0.99 : (0.98 * p.done) / p.total)) / todo.length);
            checkInterrupted();
          },
        });
        if (r.warning && !values['no-elbo']) {
          progress.done();
          console.error(`note: ${label}: ${r.warning}`);
        }
        await writeRgbPng(join(out, image), r.image.width, r.image.height, r.image.data);
        records.set(i, toRecord(i, prompts[i]!, image, r));
        await save();
        doneCount++;
        checkInterrupted();
      }
    } catch (e) {
      progress.done();
      if (e instanceof Interrupted) {
        console.error(`stopped: finished images are in ${join(out, 'images')}; rerun the same command to continue`);
        return 130;
      }
      throw e;
    }
    if (todo.length === 0) await save();
    progress.done();
    const skipped = prompts.length - todo.length;
    if (skipped) console.error(`${skipped} prompt(s) already done, skipped (use --force to redo)`);
    console.log(`images: ${join(out, 'images')}\nrecord: ${jsonPath}`);
    return 0;
  } finally {
    pipe.release();
  }
}
