import { describe, expect, it } from 'vitest';
import sharp from 'sharp';
import { resizeU8, type ResampleFilter } from '../src/io/resample.ts';

const F = new URL('./fixtures/', import.meta.url).pathname;

async function loadRaw(p: string): Promise<{ data: Uint8Array; w: number; h: number; c: number }> {
  const { data, info } = await sharp(p).raw().toBuffer({ resolveWithObject: true });
  return { data: new Uint8Array(data), w: info.width, h: info.height, c: info.channels };
}

describe('resizeU8 (PIL Image.resize)', () => {
  const cases: [string, string, ResampleFilter][] = [
    ['common/test_image.png', 'sd15-tiny/references/vae_resized.png', 'bilinear'],
    ['common/test_image.png', 'sd21-tiny/references/vae_resized.png', 'bilinear'],
    ['common/test_image.png', 'clip-tiny/references/resized_0.png', 'bicubic'],
    ['clip-tiny/references/images/synthetic_1.png', 'clip-tiny/references/resized_1.png', 'bicubic'],
    ['clip-tiny/references/images/synthetic_2.png', 'clip-tiny/references/resized_2.png', 'bicubic'],
  ];
  for (const [srcPath, refPath, filter] of cases) {
    it(`${filter}: ${srcPath} -> ${refPath} exactly`, async () => {
      const s = await loadRaw(F + srcPath);
      const r = await loadRaw(F + refPath);
      expect(s.c).toBe(3);
      expect(r.c).toBe(3);
      const out = resizeU8(s.data, s.w, s.h, s.c, r.w, r.h, filter);
      let ndiff = 0;
      for (let i = 0; i < out.length; i++) if (out[i] !== r.data[i]) ndiff++;
      expect(ndiff).toBe(0);
      expect(out.length).toBe(r.data.length);
    });
  }
});
