// `elbo-t2ialign clip-score`: the CLIP score of generated images, as the reference's
// evaluate_generation.py computes it (transformers CLIPModel + CLIPProcessor, fp32).
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { writeFileAtomic } from '../io/atomic.js';
import { readImageRGB } from '../io/image.js';
import { resolveModel } from '../io/modelFolder.js';
import { ClipModel, clipLogits, l2NormalizeRows } from '../models/clipModel.js';
import { Device } from '../tensor/index.js';
import { Interrupted, Progress, checkInterrupted, ensureWritableDir, installInterruptHandler } from './common.js';

export const DEFAULT_CLIP_MODEL = 'openai/clip-vit-large-patch14';

export const CLIP_SCORE_HELP = `Usage: elbo-t2ialign clip-score --images DIR --prompts FILE [--clip-model DIR|hub-id]

Computes the CLIP score of generated images as the reference's evaluate_generation.py does:
every file in DIR belongs to the prompt whose index is the first number before the first "_"
of its name (run_generation.py writes txt<i>_img<j>_seed<s>.png); each image is scored alone
with its prompt (CLIPProcessor(text=prompt, images=[img], padding=True): no padding, no
truncation) as logits_per_image = 100 * cosine similarity (exp(logit_scale) of the model); the
score is the mean over prompts of the mean over each prompt's images. Prompts without images
are left out of the average (with a warning), as in the reference.

Prints {"avg_clip_score": ...} and writes it to evaluate_generation.json next to DIR (in DIR's
parent folder: the reference reads <output_path>/images and writes
<output_path>/evaluate_generation.json).

Options:
  --images DIR        folder of generated images (PNG, JPEG or WebP)
  --prompts FILE      text file, one prompt per line (line i = prompt index i; lines are
                      stripped of surrounding whitespace, as the reference's TextDataset does)
  --clip-model DIR|ID CLIPModel folder (config.json, model.safetensors, preprocessor_config.json,
                      vocab.json, merges.txt) or hub id in the local Hugging Face cache
                      (default: ${DEFAULT_CLIP_MODEL}; download it once with
                      \`huggingface-cli download ${DEFAULT_CLIP_MODEL}\`. The reference's
                      scripts/template_run_generation.sh scores with openai/clip-vit-base-patch32,
                      which works too: scores of different CLIP models are not comparable)`;

/** Images scored in one vision-tower batch. */
const IMAGE_BATCH = 4;

/** One generated image and the prompt it belongs to. */
export interface ClipScoreImage {
  file: string;
  promptIndex: number;
}

/** Python's `str.isspace()` characters (what `str.strip()` removes). */
const PY_SPACE = '\\t\\n\\v\\f\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000';
const PY_STRIP = new RegExp(`^[${PY_SPACE}]+|[${PY_SPACE}]+$`, 'gu');

/**
 * The reference's TextDataset: `open(path, encoding="utf-8").readlines()`, each stripped. Line i is
 * prompt i; blank lines are kept (as empty prompts) so that indices stay those of the file.
 */
export function readPromptsFile(path: string): string[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new Error(`--prompts ${path}: ${code === 'ENOENT' ? 'file not found' : code === 'EISDIR' ? 'is a folder, expected a text file with one prompt per line' : `cannot read (${(e as Error).message})`}`);
  }
  // Python's text mode: universal newlines (\r\n, \r, \n); no empty last line after a final newline.
  const lines = text.split(/\r\n|\r|\n/);
  if (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();
  const prompts = lines.map((l) => l.replace(PY_STRIP, ''));
  if (prompts.every((p) => p === '')) throw new Error(`--prompts ${path}: no prompts (the file is empty); expected one prompt per line`);
  return prompts;
}

/**
 * The prompt index of an image file name, as evaluate_generation.py reads it:
 * `int(re.search(r"\d+", name.split("_")[0]).group())`; undefined when there is no number.
 */
export function promptIndexOf(name: string): number | undefined {
  const m = /[0-9]+/.exec(name.split('_')[0]!);
  return m ? Number(m[0]) : undefined;
}

/**
 * Lists the images of `dir` (sorted by name, the order the golden data fixes for the reference's
 * os.listdir) with their prompt indices. Sub-folders and hidden files are skipped with a warning
 * (the reference would fail on them); a name without a prompt index, or with an index past the
 * prompts file, is an error naming the file.
 */
export function listClipScoreImages(dir: string, numPrompts: number, promptsPath: string, warn: (msg: string) => void = console.error): ClipScoreImage[] {
  let st;
  try {
    st = statSync(dir);
  } catch {
    throw new Error(`--images ${dir}: folder not found`);
  }
  if (!st.isDirectory()) throw new Error(`--images ${dir}: not a folder (expected the folder of generated images, e.g. <output_path>/images)`);
  const names = readdirSync(dir).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const out: ClipScoreImage[] = [];
  const skipped: string[] = [];
  for (const name of names) {
    const full = join(dir, name);
    let isFile = false;
    try {
      isFile = statSync(full).isFile();
    } catch {
      isFile = false;
    }
    if (!isFile || name.startsWith('.')) {
      skipped.push(name);
      continue;
    }
    const idx = promptIndexOf(name);
    if (idx === undefined) {
      throw new Error(
        `--images ${dir}: cannot tell the prompt of "${name}": the prompt index is the first number before the first "_" ` +
          '(run_generation.py names images txt<prompt index>_img<j>_seed<s>.png)',
      );
    }
    if (idx >= numPrompts) {
      throw new Error(`--images ${dir}: "${name}" belongs to prompt ${idx}, but ${promptsPath} has only ${numPrompts} prompt${numPrompts === 1 ? '' : 's'} (0..${numPrompts - 1})`);
    }
    out.push({ file: full, promptIndex: idx });
  }
  if (skipped.length > 0) warn(`warning: --images ${dir}: skipped ${skipped.length} entr${skipped.length === 1 ? 'y' : 'ies'} that are folders or hidden files: ${skipped.slice(0, 5).join(', ')}${skipped.length > 5 ? ', ...' : ''}`);
  if (out.length === 0) throw new Error(`--images ${dir}: no images (expected files named txt<prompt index>_img<j>_seed<s>.png)`);
  return out;
}

/** numpy's float32 `add.reduce` (pairwise summation, float32 accumulator). */
export function numpyPairwiseSumF32(a: ArrayLike<number>, start = 0, n = a.length): number {
  const f = Math.fround;
  if (n < 8) {
    let res = 0;
    for (let i = 0; i < n; i++) res = f(res + a[start + i]!);
    return res;
  }
  if (n <= 128) {
    const r = Array.from({ length: 8 }, (_, j) => f(a[start + j]!));
    let i = 8;
    for (; i < n - (n % 8); i += 8) for (let j = 0; j < 8; j++) r[j] = f(r[j]! + a[start + i + j]!);
    let res = f(f(f(r[0]! + r[1]!) + f(r[2]! + r[3]!)) + f(f(r[4]! + r[5]!) + f(r[6]! + r[7]!)));
    for (; i < n; i++) res = f(res + a[start + i]!);
    return res;
  }
  let n2 = Math.floor(n / 2);
  n2 -= n2 % 8;
  return f(numpyPairwiseSumF32(a, start, n2) + numpyPairwiseSumF32(a, start + n2, n - n2));
}

/**
 * evaluate_generation.py's average: per prompt `np.mean` of its float32 logits (pairwise float32
 * sum, then float32(sum / n)); those means summed from the Python int 0 in order of first
 * appearance, which numpy 1.24 (the golden data's) promotes to float64; divided by the number of
 * prompts with images. (numpy 2 keeps float32 there: a difference of ~1e-7 relative.)
 */
export function averageClipScore(scores: ReadonlyMap<number, readonly number[]>): number {
  if (scores.size === 0) throw new Error('CLIP score: no images were scored');
  let sum = 0;
  for (const s of scores.values()) sum += Math.fround(numpyPairwiseSumF32(s) / s.length);
  return sum / scores.size;
}

/** Python's `repr(float)` (what json.dump writes): shortest round-trip digits, Python's exponent form. */
export function pyFloatRepr(x: number): string {
  if (Number.isNaN(x)) return 'NaN';
  if (!Number.isFinite(x)) return x > 0 ? 'Infinity' : '-Infinity';
  const ax = Math.abs(x);
  if (ax !== 0 && (ax < 1e-4 || ax >= 1e16)) {
    const [m, e] = x.toExponential().split('e') as [string, string];
    const exp = Number(e);
    return `${m}e${exp < 0 ? '-' : '+'}${String(Math.abs(exp)).padStart(2, '0')}`;
  }
  const s = String(x);
  return Number.isInteger(x) ? `${s}.0` : s;
}

export async function runClipScore(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      images: { type: 'string' },
      prompts: { type: 'string' },
      'clip-model': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log(CLIP_SCORE_HELP);
    return 0;
  }
  if (positionals.length > 0) throw new Error(`clip-score: unexpected argument "${positionals[0]}" (see elbo-t2ialign clip-score --help)`);
  if (!values.images) throw new Error('clip-score: --images DIR is required (the folder of generated images, txt<i>_img<j>_seed<s>.png)');
  if (!values.prompts) throw new Error('clip-score: --prompts FILE is required (one prompt per line)');

  // Cheap checks first: prompts, image names, the output folder, the model folder.
  const prompts = readPromptsFile(values.prompts);
  const imagesDir = resolve(values.images);
  const images = listClipScoreImages(imagesDir, prompts.length, values.prompts);
  const outDir = dirname(imagesDir);
  ensureWritableDir(outDir, 'clip-score: output folder (the parent of --images)');
  const outFile = join(outDir, 'evaluate_generation.json');
  const spec = values['clip-model'] ?? DEFAULT_CLIP_MODEL;
  let modelDir: string;
  try {
    modelDir = resolveModel(spec);
  } catch (e) {
    throw new Error(`--clip-model: ${(e as Error).message.replace('pass --model /path/to/folder', 'pass --clip-model /path/to/folder')}`);
  }

  const used = [...new Set(images.map((im) => im.promptIndex))];
  const missing = prompts.map((_, i) => i).filter((i) => !used.includes(i));
  if (missing.length > 0) {
    console.error(
      `warning: ${missing.length} of ${prompts.length} prompts have no images (index ${missing.slice(0, 10).join(', ')}${missing.length > 10 ? ', ...' : ''}); ` +
        `as in evaluate_generation.py, the average is over the ${used.length} prompt${used.length === 1 ? '' : 's'} that have images`,
    );
  }
  for (const i of used) if (prompts[i] === '') console.error(`warning: prompt ${i} (line ${i + 1} of ${values.prompts}) is empty; its images are scored against the empty prompt`);

  installInterruptHandler();
  const dev = await Device.get();
  const model = await ClipModel.load(dev, modelDir);
  try {
    const P = model.projectionDim;
    const progress = new Progress();
    const total = used.length + images.length;
    let done = 0;

    // The reference never truncates: a prompt past the text model's positions fails there too.
    const maxPos = model.config.text.maxPositions;
    for (const i of used) {
      const n = model.tokenizer.encode(prompts[i]!).length;
      if (n > maxPos) {
        throw new Error(
          `--prompts ${values.prompts}: prompt ${i} (line ${i + 1}) has ${n} tokens with bos/eos, more than the CLIP text model's ${maxPos} positions; ` +
            'evaluate_generation.py does not truncate and fails on it as well: shorten the prompt',
        );
      }
    }

    const textEmb = new Map<number, Float32Array>();
    const scores = new Map<number, number[]>();
    for (const i of used) scores.set(i, []); // first appearance in sorted file order
    try {
      // Text embeddings: each prompt alone, as the reference's one-prompt processor call.
      for (const i of used) {
        checkInterrupted();
        textEmb.set(i, l2NormalizeRows(await model.textFeatures(model.tokenize([prompts[i]!])), 1, P));
        progress.update(`prompt ${++done}/${used.length}`, done / total);
      }
      for (let b = 0; b < images.length; b += IMAGE_BATCH) {
        checkInterrupted();
        const chunk = images.slice(b, b + IMAGE_BATCH);
        const decoded = [];
        for (const im of chunk) decoded.push(await readImageRGB(im.file));
        const feats = l2NormalizeRows(await model.imageFeatures(model.preprocess(decoded), chunk.length), chunk.length, P);
        chunk.forEach((im, k) => {
          const logit = clipLogits(feats.subarray(k * P, (k + 1) * P), textEmb.get(im.promptIndex)!, P, model.logitScale)[0]!;
          scores.get(im.promptIndex)!.push(logit);
        });
        done += chunk.length;
        progress.update(`image ${b + chunk.length}/${images.length}`, done / total);
      }
    } catch (e) {
      progress.done();
      if (e instanceof Interrupted) {
        console.error('interrupted: no score written');
        return 130;
      }
      throw e;
    }
    progress.done();

    const avg = averageClipScore(scores);
    const json = `{"avg_clip_score": ${pyFloatRepr(avg)}}`;
    console.log(json);
    await writeFileAtomic(outFile, json);
    console.error(`wrote ${outFile} (${images.length} image${images.length === 1 ? '' : 's'}, ${used.length} prompt${used.length === 1 ? '' : 's'})`);
    return 0;
  } finally {
    model.release();
  }
}
