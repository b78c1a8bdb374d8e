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
  const n = Math.max(4, Math.ceil(fields.length / 4) * 4);
  const buf = new ArrayBuffer(n * 4);
  const dv = new DataView(buf);
  fields.forEach(([t, v], i) => {
    if (t === 'f') dv.setFloat32(i * 4, v, true);
    else if (t === 'i') dv.setInt32(i * 4, v, true);
    else dv.setUint32(i * 4, v >>> 0, true);
  });
  return buf;
}
