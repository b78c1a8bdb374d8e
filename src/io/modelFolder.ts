/**
 * Finding model files on disk: a diffusers pipeline folder, a single-model folder (CLIP), or a
 * Hugging Face hub id already present in the local hub cache. Never touches the network: this
 * project runs offline, so a missing model produces an error that says what to download and where.
 *
 * Hugging Face cache layout (huggingface_hub):
 *   <cache>/models--<org>--<name>/refs/main            text file: the commit hash of "main"
 *   <cache>/models--<org>--<name>/snapshots/<commit>/  the repository files (often symlinks to blobs/)
 * with <cache> = $HF_HUB_CACHE, else $HUGGINGFACE_HUB_CACHE (legacy), else $HF_HOME/hub, else
 * $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

/** Hub ids: `org/name` with the characters the hub allows. */
const HUB_ID = /^[A-Za-z0-9][A-Za-z0-9._-]*\/[A-Za-z0-9][A-Za-z0-9._-]*$/;

function isDir(p: string): boolean {
  try {
    return fs.statSync(p).isDirectory();
  } catch {
    return false;
  }
}

function isFile(p: string): boolean {
  try {
    return fs.statSync(p).isFile();
  } catch {
    return false;
  }
}

function hasModelMarker(dir: string): boolean {
  return isFile(path.join(dir, 'model_index.json')) || isFile(path.join(dir, 'config.json'));
}

/** The Hugging Face hub cache folder, from the environment as huggingface_hub computes it. */
export function hfHubCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env['HF_HUB_CACHE']) return env['HF_HUB_CACHE'];
  if (env['HUGGINGFACE_HUB_CACHE']) return env['HUGGINGFACE_HUB_CACHE'];
  if (env['HF_HOME']) return path.join(env['HF_HOME'], 'hub');
  const xdg = env['XDG_CACHE_HOME'];
  if (xdg) return path.join(xdg, 'huggingface', 'hub');
  return path.join(os.homedir(), '.cache', 'huggingface', 'hub');
}

function notFoundMessage(spec: string, detail: string): string {
  return (
    `model '${spec}' not found: ${detail}. Download it on a machine with internet access with ` +
    `\`huggingface-cli download ${spec}\` (or \`git clone https://huggingface.co/${spec}\`) and copy ` +
    `the folder here (or the Hugging Face cache to ${hfHubCacheDir()}), or pass --model /path/to/folder`
  );
}

/** Snapshot folder of a hub id in the cache, or an explanation of why there is none. */
function findSnapshot(spec: string): { dir: string } | { why: string } {
  const cache = hfHubCacheDir();
  const [org, name] = spec.split('/') as [string, string];
  const repoDir = path.join(cache, `models--${org}--${name}`);
  if (!isDir(repoDir)) {
    return { why: `not a folder, and not in the Hugging Face cache at ${repoDir}` };
  }
  const snapshots = path.join(repoDir, 'snapshots');
  const refMain = path.join(repoDir, 'refs', 'main');
  if (isFile(refMain)) {
    const rev = fs.readFileSync(refMain, 'utf8').trim();
    const dir = path.join(snapshots, rev);
    if (isDir(dir)) return { dir };
    return { why: `${refMain} names revision ${rev}, but ${dir} does not exist (incomplete download)` };
  }
  let revs: string[] = [];
  if (isDir(snapshots)) revs = fs.readdirSync(snapshots).filter((r) => isDir(path.join(snapshots, r)));
  if (revs.length === 0) return { why: `the Hugging Face cache folder ${repoDir} has no snapshots (incomplete download)` };
  // No refs/main: take the only snapshot, or the most recently modified one.
  revs.sort((a, b) => fs.statSync(path.join(snapshots, b)).mtimeMs - fs.statSync(path.join(snapshots, a)).mtimeMs);
  return { dir: path.join(snapshots, revs[0]!) };
}

/**
 * Resolves a model spec to a local folder:
 * - an existing folder with `model_index.json` (pipeline) or `config.json` (single model);
 * - a hub id `org/name` found in the local Hugging Face cache (revision from `refs/main`, else the
 *   only / newest snapshot).
 * Throws an Error that says what to download and where otherwise. No network access.
 * @returns absolute path of the folder
 */
export function resolveModel(spec: string): string {
  if (spec.trim() === '') throw new Error('model spec is empty: pass a folder path or a Hugging Face id such as org/name');
  if (fs.existsSync(spec)) {
    const abs = path.resolve(spec);
    if (!isDir(abs)) throw new Error(`model '${spec}': ${abs} is a file, expected a model folder`);
    if (!hasModelMarker(abs)) {
      throw new Error(
        `model '${spec}': folder ${abs} has neither model_index.json (diffusers pipeline) nor config.json (single model)`,
      );
    }
    return abs;
  }
  if (!HUB_ID.test(spec)) {
    throw new Error(`model '${spec}' not found: no such folder, and it is not a Hugging Face id of the form org/name`);
  }
  const snap = findSnapshot(spec);
  if ('why' in snap) throw new Error(notFoundMessage(spec, snap.why));
  if (!hasModelMarker(snap.dir)) {
    throw new Error(
      notFoundMessage(spec, `the cached snapshot ${snap.dir} has neither model_index.json nor config.json (incomplete download)`),
    );
  }
  return snap.dir;
}

/**
 * Picks the weight file of a model folder: `<baseName>.safetensors` or `<baseName>.fp16.safetensors`
 * (the fp16 variant first when `preferFp16`). Throws naming the folder and the files looked for;
 * a folder with only PyTorch `.bin` files gets an error saying only safetensors is supported.
 * @param baseName `diffusion_pytorch_model` (diffusers models) or `model` (transformers models)
 */
export function findWeightFile(dir: string, baseName = 'diffusion_pytorch_model', preferFp16 = false): string {
  const plain = `${baseName}.safetensors`;
  const fp16 = `${baseName}.fp16.safetensors`;
  const order = preferFp16 ? [fp16, plain] : [plain, fp16];
  for (const f of order) {
    const p = path.join(dir, f);
    if (isFile(p)) return p;
  }
  if (!isDir(dir)) throw new Error(`${dir}: model folder does not exist (looking for ${order.join(' or ')})`);
  const files = fs.readdirSync(dir);
  const index = files.filter((f) => f.startsWith(baseName) && f.endsWith('.safetensors.index.json'));
  if (index.length > 0) {
    throw new Error(`${dir}: found sharded weights (${index.join(', ')}); only single-file ${order.join(' / ')} is supported`);
  }
  const bins = files.filter((f) => f.endsWith('.bin') || f.endsWith('.ckpt') || f.endsWith('.pt') || f.endsWith('.pth'));
  if (bins.length > 0) {
    throw new Error(
      `${dir}: found only PyTorch pickle weights (${bins.join(', ')}); only safetensors is supported: ` +
        `download the .safetensors variant (${order.join(' or ')}) or convert the checkpoint`,
    );
  }
  throw new Error(`${dir}: no weight file: looked for ${order.join(' and ')}`);
}

/** Reads a JSON object file (a model config); errors name the file and the problem. */
export function readJsonConfig(file: string): Record<string, unknown> {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new Error(`${file}: config file not found`);
    throw new Error(`${file}: cannot read config file: ${(err as Error).message}`);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new Error(`${file}: invalid JSON (${(err as Error).message})`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new Error(`${file}: expected a JSON object, got ${Array.isArray(value) ? 'an array' : JSON.stringify(value)}`);
  }
  return value as Record<string, unknown>;
}

/** Component folders of a diffusers pipeline. */
export interface PipelineComponents {
  text_encoder: string;
  tokenizer: string;
  unet: string;
  vae: string;
  scheduler: string;
  /** SDXL's second text encoder / tokenizer, when the pipeline has them. */
  text_encoder_2?: string;
  tokenizer_2?: string;
}

/** A parsed `model_index.json` with resolved component folders. */
export interface PipelineIndex {
  /** Absolute pipeline folder. */
  dir: string;
  /** `_class_name`, e.g. `StableDiffusionPipeline` / `StableDiffusionXLPipeline`. */
  className: string;
  /** The whole parsed model_index.json. */
  index: Record<string, unknown>;
  /** Absolute paths of the component folders. */
  components: PipelineComponents;
  /** `[library, class]` of every non-null component, e.g. `unet: ['diffusers', 'UNet2DConditionModel']`. */
  classes: Record<string, [string, string]>;
}

const OPTIONAL = ['text_encoder_2', 'tokenizer_2'] as const;

/**
 * Reads `<dir>/model_index.json` and resolves the folders of text_encoder, tokenizer, unet, vae,
 * scheduler (required) and text_encoder_2 / tokenizer_2 (when listed and not null).
 */
export function loadPipelineIndex(dir: string): PipelineIndex {
  const abs = path.resolve(dir);
  const indexPath = path.join(abs, 'model_index.json');
  const index = readJsonConfig(indexPath);
  const classes: Record<string, [string, string]> = {};
  for (const [k, v] of Object.entries(index)) {
    if (k.startsWith('_')) continue;
    if (Array.isArray(v) && v.length === 2 && typeof v[0] === 'string' && typeof v[1] === 'string') {
      classes[k] = [v[0], v[1]];
    }
  }
  const folderOf = (name: string, required: boolean): string | undefined => {
    if (classes[name] === undefined) {
      if (!required) return undefined;
      throw new Error(`${indexPath}: component "${name}" is missing or null; expected ["library", "ClassName"]`);
    }
    const sub = path.join(abs, name);
    if (!isDir(sub)) {
      throw new Error(`${indexPath}: lists component "${name}" but the folder ${sub} does not exist`);
    }
    return sub;
  };
  const components: PipelineComponents = {
    text_encoder: folderOf('text_encoder', true)!,
    tokenizer: folderOf('tokenizer', true)!,
    unet: folderOf('unet', true)!,
    vae: folderOf('vae', true)!,
    scheduler: folderOf('scheduler', true)!,
  };
  for (const name of OPTIONAL) {
    const sub = folderOf(name, false);
    if (sub !== undefined) components[name] = sub;
  }
  const className = typeof index['_class_name'] === 'string' ? index['_class_name'] : '';
  return { dir: abs, className, index, components, classes };
}
