// Paths of the bundled pipelines and golden references, and readers for them.
import { SafeTensorsFile } from '../../src/io/safetensors.js';

export const PIPELINES = {
  'sd15-tiny': { dir: 'weights/sd15-tiny', refs: 'test/fixtures/sd15-tiny/references', elbo: 'test/fixtures/sd15-tiny/elbo', generation: 'test/fixtures/sd15-tiny/generation' },
  'sd21-tiny': { dir: 'test/fixtures/sd21-tiny', refs: 'test/fixtures/sd21-tiny/references', elbo: 'test/fixtures/sd21-tiny/elbo', generation: 'test/fixtures/sd21-tiny/generation' },
} as const;
export type PipelineName = keyof typeof PIPELINES;

const open = new Map<string, SafeTensorsFile>();
export function golden(path: string): SafeTensorsFile {
  let f = open.get(path);
  if (!f) open.set(path, (f = SafeTensorsFile.open(path)));
  return f;
}

/** Max abs difference relative to max(1e-30, max|ref|). */
export function relErr(got: ArrayLike<number>, ref: ArrayLike<number>): number {
  let m = 0;
  let r = 0;
  for (let i = 0; i < ref.length; i++) {
    m = Math.max(m, Math.abs(got[i]! - ref[i]!));
    r = Math.max(r, Math.abs(ref[i]!));
  }
  if (got.length !== ref.length) return Infinity;
  return m / Math.max(r, 1e-30);
}
