// Loading WGSL from shaders/, simple templating, and helpers for dispatch sizes and
// uniform blocks.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const shaderDir = fileURLToPath(new URL('../../shaders/', import.meta.url));
const cache = new Map<string, string>();

/** The text of shaders/<name>.wgsl, each `//#include other` line replaced by that file's text. */
export function loadShader(name: string): string {
  let s = cache.get(name);
  if (s === undefined) {
    s = readFileSync(`${shaderDir}${name}.wgsl`, 'utf8').replace(/^\/\/#include (\w+)[ \t]*$/gm, (_, inc: string) => loadShader(inc));
    cache.set(name, s);
  }
  return s;
}

/** Replaces every `{{KEY}}` in `src` by `values[KEY]`; an unknown key is an error. */
export function fillTemplate(src: string, values: Record<string, string | number>): string {
  return src.replace(/\{\{(\w+)\}\}/g, (_, k: string) => {
    const v = values[k];
    if (v === undefined) throw new Error(`shader template: no value for {{${k}}}`);
    return String(v);
  });
}

/**
 * Splits `groups` workgroups into an (x, y) grid within the per-dimension limit.
 * The shader recovers the linear index as `wid.x + wid.y * nx` (nx passed as a uniform)
 * and must skip indices >= groups.
 */
export function grid1d(groups: number, maxPerDim = 65535): [number, number] {
  if (groups <= maxPerDim) return [Math.max(groups, 1), 1];
  const y = Math.ceil(groups / maxPerDim);
  return [Math.ceil(groups / y), y];
}

/** Packs uniform fields: integers as u32/i32 ('u'/'i') or f32 ('f'), 4 bytes each, in order. */
export function uniforms(fields: ReadonlyArray<readonly ['u' | 'i' | 'f', number]>): ArrayBuffer {
  // Typed arrays in the host's byte order (little-endian on every platform Dawn ships for);
  // a plain loop: this runs for every dispatch (a DataView and forEach took ~0.8 us per call).
  const n = Math.max(4, Math.ceil(fields.length / 4) * 4);
  const u = new Uint32Array(n);
  let f: Float32Array | undefined;
  let s: Int32Array | undefined;
  for (let i = 0; i < fields.length; i++) {
    const [t, v] = fields[i]!;
    if (t === 'f') (f ??= new Float32Array(u.buffer))[i] = v;
    else if (t === 'i') (s ??= new Int32Array(u.buffer))[i] = v;
    else u[i] = v; // ToUint32, as v >>> 0
  }
  return u.buffer;
}
