import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import sharp from 'sharp';
import { encode as encodePng } from 'fast-png';
import { resizeU8, type ResampleFilter } from '../src/io/resample.ts';
import { latentImageToRGB, preprocessForVae, readImageRGB, readPngRaw, writeGreyPng, writeRgbPng } from '../src/io/image.ts';
import { writeFileAtomic, writeFileAtomicSync } from '../src/io/atomic.ts';
import { SafeTensorsFile } from '../src/io/safetensors.ts';

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

// ---------------------------------------------------------------------------------------------

const ROOT = path.resolve(new URL('..', import.meta.url).pathname);
const TEST_IMAGE = path.join(ROOT, 'test/fixtures/common/test_image.png');

describe('resizeU8 edge cases', () => {
  it('returns a copy when the size is unchanged and rejects bad arguments', () => {
    const src = Uint8Array.from([1, 2, 3, 4, 5, 6]);
    const out = resizeU8(src, 2, 1, 3, 2, 1, 'bicubic');
    expect(Array.from(out)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(out).not.toBe(src);
    expect(() => resizeU8(src, 2, 2, 3, 4, 4, 'bilinear')).toThrow(/src has 6 bytes, expected/);
    expect(() => resizeU8(src, 2, 1, 3, 0, 4, 'bilinear')).toThrow(/outW must be a positive integer/);
    expect(() => resizeU8(src, 2, 1, 3, 4, 4, 'nearest' as ResampleFilter)).toThrow(/filter must be/);
  });
  it('keeps a constant image constant (weights sum to one in fixed point)', () => {
    const src = new Uint8Array(37 * 23).fill(200);
    for (const f of ['bilinear', 'bicubic'] as const) {
      for (const [w, h] of [[5, 3], [100, 71], [37, 50]] as const) {
        expect(resizeU8(src, 37, 23, 1, w, h, f).every((v) => v === 200)).toBe(true);
      }
    }
  });
});

describe('readImageRGB', () => {
  let dir = '';
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'img-test-'));
  });
  afterAll(() => {
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('reads the test image (256x192 RGB)', async () => {
    const img = await readImageRGB(TEST_IMAGE);
    expect([img.width, img.height]).toEqual([256, 192]);
    const ref = await loadRaw(TEST_IMAGE);
    expect(Buffer.from(img.data).equals(Buffer.from(ref.data))).toBe(true);
  });

  it('converts PNG flavours the way PIL convert("RGB") does', async () => {
    const w = 3;
    const h = 2;
    const cases: { name: string; png: Parameters<typeof encodePng>[0]; want: number[] }[] = [
      {
        name: 'grey8',
        png: { width: w, height: h, channels: 1, depth: 8, data: Uint8Array.from([0, 10, 20, 30, 40, 255]) },
        want: [0, 10, 20, 30, 40, 255].flatMap((v) => [v, v, v]),
      },
      {
        name: 'grey16',
        png: { width: w, height: h, channels: 1, depth: 16, data: Uint16Array.from([0, 100, 255, 256, 1000, 65535]) },
        want: [0, 100, 255, 255, 255, 255].flatMap((v) => [v, v, v]),
      },
      {
        name: 'greyalpha8',
        png: { width: w, height: h, channels: 2, depth: 8, data: Uint8Array.from([5, 0, 6, 10, 7, 20, 8, 30, 9, 40, 10, 255]) },
        want: [5, 6, 7, 8, 9, 10].flatMap((v) => [v, v, v]),
      },
      {
        name: 'rgba8',
        png: { width: w, height: h, channels: 4, depth: 8, data: Uint8Array.from({ length: 24 }, (_, i) => (i * 11) % 256) },
        want: Array.from({ length: 24 }, (_, i) => (i * 11) % 256).filter((_, i) => i % 4 !== 3),
      },
      {
        name: 'rgb16',
        png: { width: w, height: h, channels: 3, depth: 16, data: Uint16Array.from({ length: 18 }, (_, i) => i * 3001) },
        want: Array.from({ length: 18 }, (_, i) => (i * 3001) >> 8),
      },
      {
        name: 'grey1',
        // rows: 1 0 1 / 0 1 1, packed MSB first, each row padded to a byte
        png: { width: w, height: h, channels: 1, depth: 1, data: Uint8Array.from([0b10100000, 0b01100000]) },
        want: [255, 0, 255, 0, 255, 255].flatMap((v) => [v, v, v]),
      },
      {
        name: 'grey4',
        png: { width: w, height: h, channels: 1, depth: 4, data: Uint8Array.from([0x0f, 0x30, 0x12, 0x40]) },
        want: [0, 15, 3, 1, 2, 4].map((v) => v * 17).flatMap((v) => [v, v, v]),
      },
      {
        name: 'palette',
        png: {
          width: w,
          height: h,
          channels: 1,
          depth: 8,
          data: Uint8Array.from([0, 1, 2, 2, 1, 0]),
          palette: [
            [10, 20, 30],
            [40, 50, 60],
            [70, 80, 90],
          ],
        },
        want: [0, 1, 2, 2, 1, 0].flatMap((i) => [10 + 30 * i, 20 + 30 * i, 30 + 30 * i]),
      },
    ];
    for (const c of cases) {
      const p = path.join(dir, `${c.name}.png`);
      fs.writeFileSync(p, encodePng(c.png));
      const img = await readImageRGB(p);
      expect([img.width, img.height], c.name).toEqual([w, h]);
      expect(Array.from(img.data), c.name).toEqual(c.want);
    }
  });

  it('readPngRaw gives palette indices and unpacked samples', () => {
    const p = path.join(dir, 'labels.png');
    fs.writeFileSync(
      p,
      encodePng({
        width: 5,
        height: 1,
        channels: 1,
        depth: 4,
        data: Uint8Array.from([0x01, 0x2f, 0x00]),
        palette: Array.from({ length: 16 }, (_, i) => [i * 16, 0, 255 - i * 16]),
      }),
    );
    const raw = readPngRaw(p);
    expect(raw).toMatchObject({ width: 5, height: 1, channels: 1, bitDepth: 4 });
    expect(Array.from(raw.data)).toEqual([0, 1, 2, 15, 0]);
    expect(raw.palette?.length).toBe(16);
    expect(raw.palette?.[15]).toEqual([240, 0, 15]);

    const g = path.join(dir, 'g16.png');
    fs.writeFileSync(g, encodePng({ width: 2, height: 1, channels: 1, depth: 16, data: Uint16Array.from([1, 65535]) }));
    const r16 = readPngRaw(g);
    expect(r16.data).toBeInstanceOf(Uint16Array);
    expect(Array.from(r16.data)).toEqual([1, 65535]);
    expect(r16.palette).toBeUndefined();
  });

  it('reads JPEG and WebP through sharp, grey replicated', async () => {
    const src = await loadRaw(TEST_IMAGE);
    const jpg = path.join(dir, 'a.jpg');
    const webp = path.join(dir, 'a.webp');
    const greyJpg = path.join(dir, 'g.jpg');
    const base = sharp(Buffer.from(src.data), { raw: { width: src.w, height: src.h, channels: 3 } });
    fs.writeFileSync(jpg, await base.clone().jpeg({ quality: 95 }).toBuffer());
    fs.writeFileSync(webp, await base.clone().webp({ lossless: true }).toBuffer());
    fs.writeFileSync(greyJpg, await base.clone().greyscale().jpeg().toBuffer());
    const a = await readImageRGB(jpg);
    expect([a.width, a.height, a.data.length]).toEqual([256, 192, 256 * 192 * 3]);
    // Lossy: compare the mean error only (sharp edges in the test image ring by up to ~100).
    let sum = 0;
    for (let i = 0; i < a.data.length; i++) sum += Math.abs(a.data[i]! - src.data[i]!);
    expect(sum / a.data.length).toBeLessThan(4);
    const b = await readImageRGB(webp);
    expect(Buffer.from(b.data).equals(Buffer.from(src.data))).toBe(true);
    const g = await readImageRGB(greyJpg);
    for (let i = 0; i < g.width * g.height; i++) {
      expect(g.data[i * 3]).toBe(g.data[i * 3 + 1]);
      expect(g.data[i * 3]).toBe(g.data[i * 3 + 2]);
    }
  });

  it('names the path for missing and undecodable files', async () => {
    const missing = path.join(dir, 'nope.png');
    await expect(readImageRGB(missing)).rejects.toThrow(`${missing}: image file not found`);
    const junk = path.join(dir, 'junk.jpg');
    fs.writeFileSync(junk, 'this is not an image');
    await expect(readImageRGB(junk)).rejects.toThrow(`${junk}: cannot decode image`);
    const badPng = path.join(dir, 'bad.png');
    fs.writeFileSync(badPng, Buffer.concat([fs.readFileSync(TEST_IMAGE).subarray(0, 100)]));
    await expect(readImageRGB(badPng)).rejects.toThrow(`${badPng}: cannot decode PNG`);
    expect(() => readPngRaw(junk)).toThrow(`${junk}: not a PNG file`);
    expect(() => readPngRaw(missing)).toThrow(`${missing}: image file not found`);
  });
});

describe('VAE pre/post-processing against the golden tensors', () => {
  for (const [pipe, size] of [
    ['sd15-tiny', 256],
    ['sd21-tiny', 128],
  ] as const) {
    it(`${pipe}: preprocessForVae equals image_preprocessed exactly`, async () => {
      const st = SafeTensorsFile.open(path.join(ROOT, `test/fixtures/${pipe}/references/vae.safetensors`));
      const ref = st.readF32('image_preprocessed');
      expect(st.info('image_preprocessed').shape).toEqual([1, 3, size, size]);
      st.close();
      const x = preprocessForVae(await readImageRGB(TEST_IMAGE), size);
      expect(x.length).toBe(ref.length);
      let ndiff = 0;
      for (let i = 0; i < x.length; i++) if (x[i] !== ref[i]) ndiff++;
      expect(ndiff).toBe(0);
    });

    it(`${pipe}: latentImageToRGB(recon_decoded) equals vae_recon.png`, async () => {
      const st = SafeTensorsFile.open(path.join(ROOT, `test/fixtures/${pipe}/references/vae.safetensors`));
      const rec = st.readF32('recon_decoded');
      st.close();
      const out = latentImageToRGB(rec, 3, size, size);
      const png = await loadRaw(path.join(ROOT, `test/fixtures/${pipe}/references/vae_recon.png`));
      expect([png.w, png.h, png.c]).toEqual([size, size, 3]);
      let ndiff = 0;
      for (let i = 0; i < out.length; i++) if (out[i] !== png.data[i]) ndiff++;
      expect(ndiff).toBe(0);
    });
  }

  it('latentImageToRGB rounds half to even and clamps', () => {
    // x/2+0.5 = k/255 +- exact halves are rare; check the clamp and the layout instead.
    const chw = Float32Array.from([-3, 3, 0, 1, -1, 0.5]); // c=3, h=1, w=2
    expect(Array.from(latentImageToRGB(chw, 3, 1, 2))).toEqual([0, 128, 0, 255, 255, 191]);
    expect(() => latentImageToRGB(chw, 3, 2, 2)).toThrow(/expected c\*h\*w/);
  });
});

describe('PNG writers and atomic writes', () => {
  let dir = '';
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'png-write-'));
  });
  afterAll(() => {
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('writes grey and RGB PNGs that read back identically, creating folders', async () => {
    const grey = Uint8Array.from({ length: 7 * 5 }, (_, i) => (i * 37) % 256);
    const rgb = Uint8Array.from({ length: 7 * 5 * 3 }, (_, i) => (i * 53) % 256);
    const gp = path.join(dir, 'a/b/grey.png');
    const cp = path.join(dir, 'a/b/rgb.png');
    await writeGreyPng(gp, 7, 5, grey);
    await writeRgbPng(cp, 7, 5, rgb);
    const g = readPngRaw(gp);
    expect(g).toMatchObject({ width: 7, height: 5, channels: 1, bitDepth: 8 });
    expect(Array.from(g.data)).toEqual(Array.from(grey));
    const c = await readImageRGB(cp);
    expect(Array.from(c.data)).toEqual(Array.from(rgb));
    expect(fs.readdirSync(path.join(dir, 'a/b')).sort()).toEqual(['grey.png', 'rgb.png']);
    await expect(writeGreyPng(path.join(dir, 'x.png'), 7, 5, rgb)).rejects.toThrow(/expected 7x5x1 = 35/);
  });

  it('writeFileAtomic / writeFileAtomicSync replace files and leave no temp files', async () => {
    const p = path.join(dir, 'atomic/t.txt');
    writeFileAtomicSync(p, 'one');
    expect(fs.readFileSync(p, 'utf8')).toBe('one');
    await writeFileAtomic(p, new TextEncoder().encode('two'));
    expect(fs.readFileSync(p, 'utf8')).toBe('two');
    expect(fs.readdirSync(path.dirname(p))).toEqual(['t.txt']);
    // A target that is a folder: the rename fails, the error names the target, the temp file is removed.
    const d = path.join(dir, 'atomic/isdir');
    fs.mkdirSync(d);
    await expect(writeFileAtomic(d, 'x')).rejects.toThrow(`${d}: atomic write failed`);
    expect(() => writeFileAtomicSync(d, 'x')).toThrow(`${d}: atomic write failed`);
    expect(fs.readdirSync(path.dirname(p)).sort()).toEqual(['isdir', 't.txt']);
  });
});
