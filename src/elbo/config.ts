// The segmentation configuration: the keys and defaults of the reference's
// configs/run_segmentation.yaml, `key=value` overrides in its syntax (YAML flow values,
// dotted keys for nested ones), and timestep lists in both of its forms.
import { parse as parseYaml } from 'yaml';

export interface TextSpec {
  type: 'prompt' | 'file';
  prompt: string;
}

/** A timestep list: [start, end_exclusive, step] ranges or ["random", lo, hi_inclusive, n]. */
export type TimestepSpec = (number[] | [string, number, number, number])[];

export interface SegmentConfig {
  seed: number;
  elbo_text: TextSpec;
  source_text: TextSpec;
  elbo_timesteps: TimestepSpec;
  collect_timesteps: TimestepSpec;
  elbo_strength: number;
  fix_temperature: boolean;
  elbo_path: string;
  cross_gaussian_var: number;
  cross_weight: number[];
  self_weight: number[][];
  save_cross_att: boolean;
  save_elbo: boolean;
}

/** The reference's defaults (configs/run_segmentation.yaml). */
export function defaultConfig(): SegmentConfig {
  return {
    seed: 4307,
    elbo_text: { type: 'prompt', prompt: 'a photo of {source_cls}' },
    source_text: { type: 'prompt', prompt: 'a photo of {classes}' },
    elbo_timesteps: [[1, 999, 50]],
    collect_timesteps: [[20, 201, 20]],
    elbo_strength: 3.0,
    fix_temperature: false,
    elbo_path: '',
    cross_gaussian_var: 0,
    cross_weight: [1, 1, 10, 15, 10, 1, 1],
    self_weight: [
      [1, 0, 0, 0, 0, 0, 1],
      [0, 0, 0, 0, 0, 0, 1],
    ],
    save_cross_att: false,
    save_elbo: false,
  };
}

export const CONFIG_KEYS = Object.keys(defaultConfig());

function isTimestepSpec(v: unknown): boolean {
  if (!Array.isArray(v) || v.length === 0) return false;
  return v.every(
    (t) =>
      Array.isArray(t) &&
      ((t.length === 3 && t.every((x) => Number.isInteger(x))) ||
        (t.length === 4 && t[0] === 'random' && t.slice(1).every((x) => Number.isInteger(x)))),
  );
}

function normaliseTimesteps(v: unknown, key: string): TimestepSpec {
  // Also accept one range or one random spec without the outer list.
  if (Array.isArray(v) && (typeof v[0] === 'number' || v[0] === 'random')) v = [v];
  if (!isTimestepSpec(v)) {
    throw new Error(`${key}: expected a list of [start, end, step] ranges or ["random", lo, hi, n], e.g. [[1,999,50]], got ${JSON.stringify(v)}`);
  }
  return v as TimestepSpec;
}

/** Validates a whole config object, naming the key of the first problem. */
export function validateConfig(c: SegmentConfig): SegmentConfig {
  const num = (k: keyof SegmentConfig): void => {
    if (typeof c[k] !== 'number' || !Number.isFinite(c[k] as number)) throw new Error(`${k}: expected a number, got ${JSON.stringify(c[k])}`);
  };
  const bool = (k: keyof SegmentConfig): void => {
    if (typeof c[k] !== 'boolean') throw new Error(`${k}: expected true or false, got ${JSON.stringify(c[k])}`);
  };
  num('seed');
  num('elbo_strength');
  num('cross_gaussian_var');
  bool('fix_temperature');
  bool('save_cross_att');
  bool('save_elbo');
  if (c.elbo_strength <= 0) throw new Error(`elbo_strength: expected a positive number, got ${c.elbo_strength}`);
  for (const k of ['elbo_text', 'source_text'] as const) {
    const t = c[k];
    if (!t || typeof t !== 'object' || typeof t.prompt !== 'string') throw new Error(`${k}: expected {type: prompt, prompt: "..."}, got ${JSON.stringify(t)}`);
    if (t.type !== 'prompt' && t.type !== 'file') throw new Error(`${k}.type: expected "prompt" or "file", got ${JSON.stringify(t.type)}`);
  }
  if (!c.source_text.prompt.includes('{classes}') && c.source_text.type === 'prompt') {
    throw new Error(`source_text.prompt: must contain {classes}, got ${JSON.stringify(c.source_text.prompt)}`);
  }
  c.elbo_timesteps = normaliseTimesteps(c.elbo_timesteps, 'elbo_timesteps');
  c.collect_timesteps = normaliseTimesteps(c.collect_timesteps, 'collect_timesteps');
  if (!Array.isArray(c.cross_weight) || !c.cross_weight.every((x) => typeof x === 'number')) {
    throw new Error(`cross_weight: expected a list of numbers, got ${JSON.stringify(c.cross_weight)}`);
  }
  if (!Array.isArray(c.self_weight) || c.self_weight.length === 0 || !c.self_weight.every((r) => Array.isArray(r) && r.every((x) => typeof x === 'number'))) {
    throw new Error(`self_weight: expected a list of rows of numbers, e.g. [[1,0,0,0,0,0,1],[0,0,0,0,0,0,1]], got ${JSON.stringify(c.self_weight)}`);
  }
  if (typeof c.elbo_path !== 'string') throw new Error(`elbo_path: expected a file path, got ${JSON.stringify(c.elbo_path)}`);
  return c;
}

/**
 * Applies `key=value` overrides (reference syntax: `elbo_strength=3`,
 * `'elbo_timesteps=[[1,999,200]]'`, `elbo_text.prompt="a photo of a {source_cls}"`).
 * An unknown key is an error naming it.
 */
export function applyOverrides(base: SegmentConfig, overrides: readonly string[]): SegmentConfig {
  const c = structuredClone(base) as unknown as Record<string, unknown>;
  for (const o of overrides) {
    const eq = o.indexOf('=');
    if (eq <= 0) throw new Error(`override "${o}": expected key=value`);
    const key = o.slice(0, eq).trim();
    const raw = o.slice(eq + 1);
    let value: unknown;
    try {
      value = raw === '' ? '' : parseYaml(raw);
    } catch (e) {
      throw new Error(`override ${key}: cannot parse value ${JSON.stringify(raw)} (${(e as Error).message.split('\n')[0]})`);
    }
    if (value === null) value = raw === '' || raw === 'null' ? '' : raw;
    const path = key.split('.');
    if (!CONFIG_KEYS.includes(path[0]!)) {
      throw new Error(`unknown configuration key "${key}" (known keys: ${CONFIG_KEYS.join(', ')})`);
    }
    let obj = c;
    for (let i = 0; i < path.length - 1; i++) {
      const next = obj[path[i]!];
      if (!next || typeof next !== 'object' || Array.isArray(next)) throw new Error(`unknown configuration key "${key}"`);
      obj = next as Record<string, unknown>;
    }
    const last = path[path.length - 1]!;
    if (path.length > 1 && !(last in obj)) throw new Error(`unknown configuration key "${key}"`);
    if (typeof value === 'number' && typeof obj[last] === 'string' && path.length > 1) value = String(value);
    obj[last] = value;
  }
  return validateConfig(c as unknown as SegmentConfig);
}

/** Seeded uniform integers for the "random" timestep form (mulberry32). */
function seededInt(seed: number): (lo: number, hi: number) => number {
  let a = seed >>> 0;
  return (lo, hi) => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    const u = ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    return lo + Math.floor(u * (hi - lo + 1));
  };
}

/**
 * Expands a timestep list: ranges as Python's range(start, end, step); random specs draw
 * n integers in [lo, hi] (inclusive, as random.randint) from a generator seeded by `seed`.
 */
export function parseTimesteps(spec: TimestepSpec, seed: number, maxT = 1000): number[] {
  const out: number[] = [];
  const rnd = seededInt(seed);
  for (const t of spec) {
    if (t[0] === 'random') {
      const [, lo, hi, n] = t as [string, number, number, number];
      for (let i = 0; i < n; i++) out.push(rnd(lo, hi));
    } else {
      const [a, b, s] = t as number[];
      if (s === 0) throw new Error(`timestep range [${a}, ${b}, ${s}]: step must not be 0`);
      for (let x = a!; s! > 0 ? x < b! : x > b!; x += s!) out.push(x);
    }
  }
  for (const x of out) {
    if (!(x >= 0 && x < maxT)) throw new Error(`timestep ${x} outside the scheduler's range 0..${maxT - 1}`);
  }
  if (out.length === 0) throw new Error(`timestep list ${JSON.stringify(spec)} is empty`);
  return out;
}

/** Keys set explicitly by `key=value` overrides (top-level names). */
export function overriddenKeys(overrides: readonly string[]): Set<string> {
  return new Set(overrides.map((o) => o.slice(0, Math.max(0, o.indexOf('='))).split('.')[0]!.trim()));
}

/**
 * Uses a model's own default layer weights (e.g. SDXL's three resolution segments) for
 * cross_weight / self_weight unless the user set them or asked for the reference's exact
 * behaviour.
 */
export function applyModelDefaults(
  c: SegmentConfig,
  defaults: { cross_weight: number[]; self_weight: number[][] } | undefined,
  userKeys: Set<string>,
  referenceExact = false,
): SegmentConfig {
  if (!defaults || referenceExact) return c;
  if (!userKeys.has('cross_weight')) c.cross_weight = [...defaults.cross_weight];
  if (!userKeys.has('self_weight')) c.self_weight = defaults.self_weight.map((r) => [...r]);
  return c;
}
