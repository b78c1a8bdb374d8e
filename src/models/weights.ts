// Loads named weights from a model folder's safetensors file(s) to the GPU, one tensor at
// a time (never the whole file in host memory), checking each shape against the model.
import { basename, dirname } from 'node:path';
import { SafeTensorsFile } from '../io/safetensors.js';
import { Tensor, keep, type Device, type DType } from '../tensor/index.js';

export interface WeightOptions {
  /** Storage type of matrix / conv weights: 'f16' halves memory and is faster on lavapipe. */
  matrixDtype?: DType;
}

/** Where a model takes its named weights from (a checkpoint file, or random for benchmarks). */
export interface WeightSource {
  readonly where: string;
  has(name: string): boolean;
  pick(...names: string[]): string;
  load(name: string, shape: readonly number[], kind?: 'matrix' | 'vector', acceptShapes?: readonly (readonly number[])[]): Tensor;
  maybe(name: string, shape: readonly number[], kind?: 'matrix' | 'vector'): Tensor | undefined;
}

/** Anything that holds GPU memory until release() (a tensor, a model). */
export interface Releasable {
  release(): void;
}

/**
 * A WeightSource through which a model owns its GPU weights: every tensor it hands out is
 * recorded, so release() frees them all, and build() frees what a load that fails part-way
 * had loaded before the error goes on. Models keep one and forward their release() to it.
 */
export class OwnedWeights implements WeightSource {
  private owned = new Set<Tensor>();
  private freed = false;

  constructor(private readonly src: WeightSource) {}

  get where(): string {
    return this.src.where;
  }

  has(name: string): boolean {
    return this.src.has(name);
  }

  pick(...names: string[]): string {
    return this.src.pick(...names);
  }

  load(name: string, shape: readonly number[], kind?: 'matrix' | 'vector', acceptShapes?: readonly (readonly number[])[]): Tensor {
    return this.own(this.src.load(name, shape, kind, acceptShapes));
  }

  maybe(name: string, shape: readonly number[], kind?: 'matrix' | 'vector'): Tensor | undefined {
    const t = this.src.maybe(name, shape, kind);
    return t && this.own(t);
  }

  /** Records a tensor derived from loaded weights (a reshaped view, a re-laid copy), kept out of every scope. */
  own(t: Tensor): Tensor {
    this.owned.add(keep(t));
    return t;
  }

  /** `derived` takes the place of `t` (a re-laid copy): frees t at once and owns derived instead. */
  replace(t: Tensor, derived: Tensor): Tensor {
    if (derived === t) return t;
    this.owned.delete(t);
    t.release();
    return this.own(derived);
  }

  /**
   * Runs a model's loader over these weights and returns what it builds; if it throws,
   * everything loaded so far is freed (a partly loaded model leaves nothing on the GPU).
   */
  build<T>(loader: (w: OwnedWeights) => T): T {
    try {
      return loader(this);
    } catch (e) {
      this.release();
      throw e;
    }
  }

  /** Bytes of GPU buffers the owned tensors hold (a buffer shared by views counted once). */
  get bytes(): number {
    const bufs = new Set<GPUBuffer>();
    for (const t of this.owned) if (!t.released) bufs.add(t.buffer);
    let n = 0;
    for (const b of bufs) n += b.size;
    return n;
  }

  /** Frees every owned tensor (destroyed, not pooled); the model they belong to is unusable afterwards. */
  release(): void {
    for (const t of this.owned) t.release({ pool: false });
    this.owned.clear();
    this.freed = true;
  }

  /** Throws `<model>: used after release()` once release() has run: a clearer error than a freed tensor's. */
  checkLive(model: string): void {
    if (this.freed) throw new Error(`${model}: used after release() (its weights are freed; load the model again)`);
  }
}

/**
 * A part whose weights can be freed between uses and loaded again from where they came from
 * (a pipeline's text encoder: segmentation needs it only to embed a few prompts, and on a CPU
 * adapter its GPU memory is host RAM the UNet's activations could use).
 */
export class Reloadable<M extends Releasable & { readonly weightBytes: number }> implements Releasable {
  private model: M | null;
  private released = false;

  /** `load` gives a fresh copy of the part; without it the part cannot be offloaded. */
  constructor(
    model: M,
    private readonly what: string,
    private readonly load?: () => Promise<M>,
  ) {
    this.model = model;
  }

  /** The part; throws when it is offloaded. After release() it is the released part (whose use throws). */
  get(): M {
    if (this.released && !this.model) throw new Error(`${this.what}: used after release()`);
    if (!this.model) throw new Error(`${this.what} is offloaded (its weights were freed after the prompts were embedded); call prepareEmbeddings(prompts) to load it again`);
    return this.model;
  }

  /** The part, loaded again first if it was offloaded. */
  async ensure(): Promise<M> {
    if (this.model || this.released) return this.get();
    this.model = await this.load!();
    return this.model;
  }

  /** Frees the weights where the part can be loaded again; returns the bytes freed (0: it did not). */
  offload(): number {
    const m = this.model;
    if (!m || this.released || !this.load) return 0;
    const bytes = m.weightBytes;
    m.release();
    this.model = null;
    return bytes;
  }

  /** Frees the part for good: it is not loaded again. */
  release(): void {
    this.model?.release();
    this.released = true;
  }
}

/**
 * Loads a pipeline's parts: `own` records each loaded part and returns it; if `load` throws
 * (a part that fails to load, parts that do not fit together), the parts loaded so far are
 * released before the error goes on.
 */
export async function loadParts<T>(load: (own: <P extends Releasable>(part: P) => P) => Promise<T>): Promise<T> {
  const parts: Releasable[] = [];
  try {
    return await load((part) => (parts.push(part), part));
  } catch (e) {
    for (const p of parts) p.release();
    throw e;
  }
}

/**
 * Seeded random weights of any requested name and shape, for full-size benchmarks without
 * a checkpoint: uniform in +-1/sqrt(fan_in) for matrices (activations stay finite), ones
 * for norm scales, small values for biases.
 */
export class RandomWeights implements WeightSource {
  readonly where = 'random weights';
  private state: number;
  readonly matrixDtype: DType;
  bytes = 0;

  constructor(
    readonly dev: Device,
    opts: WeightOptions & { seed?: number } = {},
  ) {
    this.state = opts.seed ?? 1234;
    this.matrixDtype = opts.matrixDtype === 'f16' && dev.hasF16 ? 'f16' : 'f32';
  }

  has(): boolean {
    return true;
  }

  pick(...names: string[]): string {
    return names[0]!;
  }

  private fill(n: number, scale: number, offset: number): Float32Array {
    const out = new Float32Array(n);
    let a = this.state;
    for (let i = 0; i < n; i++) {
      a = (Math.imul(a, 1664525) + 1013904223) >>> 0;
      out[i] = offset + ((a / 4294967296) * 2 - 1) * scale;
    }
    this.state = a;
    return out;
  }

  load(name: string, shape: readonly number[], kind: 'matrix' | 'vector' = 'vector'): Tensor {
    const n = shape.reduce((x, y) => x * y, 1);
    const isNormScale = kind === 'vector' && /norm|layer_norm|ln_/.test(name) && name.endsWith('weight');
    const fanIn = shape.length > 1 ? n / shape[0]! : 1;
    const data = kind === 'matrix' ? this.fill(n, 1 / Math.sqrt(fanIn), 0) : isNormScale ? this.fill(n, 0, 1) : this.fill(n, 0.01, 0);
    const dtype = kind === 'matrix' ? this.matrixDtype : 'f32';
    this.bytes += n * (dtype === 'f16' ? 2 : 4);
    return keep(Tensor.fromArray(this.dev, data, shape, dtype));
  }

  maybe(name: string, shape: readonly number[], kind: 'matrix' | 'vector' = 'vector'): Tensor | undefined {
    return this.load(name, shape, kind);
  }
}

export class WeightLoader implements WeightSource {
  private used = new Set<string>();
  readonly matrixDtype: DType;

  constructor(
    readonly dev: Device,
    readonly file: SafeTensorsFile,
    readonly path: string,
    opts: WeightOptions = {},
  ) {
    this.matrixDtype = opts.matrixDtype === 'f16' && dev.hasF16 ? 'f16' : 'f32';
  }

  static open(dev: Device, path: string, opts: WeightOptions = {}): WeightLoader {
    return new WeightLoader(dev, SafeTensorsFile.open(path), path, opts);
  }

  /** "unet/diffusion_pytorch_model.safetensors", for messages. */
  get where(): string {
    return `${basename(dirname(this.path))}/${basename(this.path)}`;
  }

  has(name: string): boolean {
    return this.file.has(name);
  }

  /** The first of `names` that the file has (for deprecated checkpoint names), or throws. */
  pick(...names: string[]): string {
    for (const n of names) if (this.file.has(n)) return n;
    throw new Error(`${this.where}: missing weight "${names[0]}"${names.length > 1 ? ` (also looked for ${names.slice(1).map((n) => `"${n}"`).join(', ')})` : ''}`);
  }

  /**
   * Uploads weight `name`, checking its shape. `kind` 'matrix' stores it in the loader's
   * matrix dtype (f16 when asked and supported); 'vector' (biases, norms) stays f32.
   * `viewShape` reinterprets the stored shape (same element count), e.g. 2-D [C, C]
   * deprecated VAE attention weights used as linear layers.
   */
  load(name: string, shape: readonly number[], kind: 'matrix' | 'vector' = 'vector', acceptShapes: readonly (readonly number[])[] = []): Tensor {
    const info = this.file.has(name) ? this.file.info(name) : null;
    if (!info) throw new Error(`${this.where}: missing weight "${name}" (expected shape [${shape.join(', ')}])`);
    const ok = [shape, ...acceptShapes].some((s) => s.length === info.shape.length && s.every((d, i) => d === info.shape[i]));
    if (!ok) {
      throw new Error(`${this.where}: weight "${name}" has shape [${info.shape.join(', ')}], expected [${shape.join(', ')}]`);
    }
    if (info.dtype === 'I64') throw new Error(`${this.where}: weight "${name}" is I64, expected a float tensor`);
    this.used.add(name);
    const dtype = kind === 'matrix' ? this.matrixDtype : 'f32';
    const t =
      dtype === 'f16'
        ? Tensor.fromF16Bits(this.dev, this.file.readF16Bits(name), shape)
        : Tensor.fromArray(this.dev, this.file.readF32(name), shape, 'f32');
    return keep(t);
  }

  /** Loads `name` if present, else undefined. */
  maybe(name: string, shape: readonly number[], kind: 'matrix' | 'vector' = 'vector'): Tensor | undefined {
    return this.file.has(name) ? this.load(name, shape, kind) : undefined;
  }

  /** Float tensors of the file that the model never loaded (ignoring known buffers). */
  unused(): string[] {
    return this.file.names().filter((n) => !this.used.has(n) && !n.endsWith('position_ids'));
  }

  close(): void {
    this.file.close();
  }
}

/** Reads a config key with a default; `check` validates and names the key on failure. */
export function cfg<T>(config: Record<string, unknown>, key: string, def: T, where: string, check?: (v: unknown) => boolean): T {
  const v = config[key];
  if (v === undefined || v === null) return def;
  if (check && !check(v)) throw new Error(`${where}: unsupported value for "${key}": ${JSON.stringify(v)}`);
  return v as T;
}

export const isNum = (v: unknown): boolean => typeof v === 'number' && Number.isFinite(v);
export const isInt = (v: unknown): boolean => Number.isInteger(v);
export const isBool = (v: unknown): boolean => typeof v === 'boolean';
export const isIntList = (v: unknown): boolean => Array.isArray(v) && v.every((x) => Number.isInteger(x));
export const isStrList = (v: unknown): boolean => Array.isArray(v) && v.every((x) => typeof x === 'string');
export const oneOf =
  (...vals: unknown[]) =>
  (v: unknown): boolean =>
    vals.includes(v);
