// The segment command as a user runs it: outputs, resume, edge cases and bad input.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { runCli } from './helpers/cli.js';
import { readPngRaw } from '../src/io/image.js';
import { SafeTensorsFile, writeSafetensors } from '../src/io/safetensors.js';

let tmp: string;
const quick = ['elbo_timesteps=[[1,999,400]]', 'collect_timesteps=[[20,201,100]]', '--quiet', '--no-overlays'];

const run = runCli;

function filesUnder(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true, encoding: 'utf8' }).filter((f) => !f.endsWith('/'));
}

beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'elbo-cli-'));
  // Edge-case inputs: grey, RGBA, 16-bit, odd non-square sizes.
  const base = new Uint8Array(37 * 23 * 3).map((_, i) => (i * 37) % 251);
  await sharp(Buffer.from(base), { raw: { width: 37, height: 23, channels: 3 } }).greyscale().png().toFile(join(tmp, 'grey.png'));
  await sharp(Buffer.from(new Uint8Array(31 * 45 * 4).map((_, i) => (i * 13) % 256)), { raw: { width: 31, height: 45, channels: 4 } }).png().toFile(join(tmp, 'rgba.png'));
  await sharp(Buffer.from(new Uint16Array(29 * 17 * 3).map((_, i) => (i * 2999) % 65536).buffer), { raw: { width: 29, height: 17, channels: 3 } })
    .toColourspace('rgb16')
    .png()
    .toFile(join(tmp, 'deep16.png'));
  writeFileSync(join(tmp, 'broken.png'), 'not an image');
});

afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe('segment command', () => {
  it('writes heatmaps at image size, elbo.json and config.json; one class gets temperature 1', async () => {
    const out = join(tmp, 'one');
    const r = await run(['segment', '--image', join(tmp, 'grey.png'), '--classes', 'cat', '--out', out, ...quick]);
    expect(r.code, r.err).toBe(0);
    expect(r.err).toMatch(/random/);
    const png = readPngRaw(join(out, 'heatmaps', 'grey_cat.png'));
    expect([png.width, png.height, png.channels]).toEqual([37, 23, 1]);
    expect(Math.max(...png.data)).toBe(255);
    const elbo = JSON.parse(readFileSync(join(out, 'elbo.json'), 'utf8'));
    expect(elbo.grey.cat.temperature).toBe(1);
    expect(elbo.grey.cat.normalized_elbo).toBe(0);
    expect(JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')).elbo_strength).toBe(3);
  });

  it('handles RGBA and 16-bit inputs, class names with spaces and unicode, and resumes', async () => {
    const out = join(tmp, 'multi');
    const args = ['segment', '--image', join(tmp, 'rgba.png'), '--image', join(tmp, 'deep16.png'), '--classes', 'potted plant, café', '--out', out, ...quick];
    const r = await run(args);
    expect(r.code, r.err).toBe(0);
    for (const f of ['rgba_potted plant.png', 'rgba_café.png', 'deep16_potted plant.png', 'deep16_café.png']) expect(existsSync(join(out, 'heatmaps', f)), f).toBe(true);
    const elbo = JSON.parse(readFileSync(join(out, 'elbo.json'), 'utf8'));
    const temps = Object.values(elbo.rgba as Record<string, { temperature: number }>).map((c) => c.temperature).sort();
    expect(temps[0]).toBeCloseTo(1, 6);
    expect(temps[1]).toBeCloseTo(3, 5);
    const again = await run(args);
    expect(again.code).toBe(0);
    expect(again.err).toMatch(/2 image\(s\) already done, skipped/);
    expect(filesUnder(out).filter((f) => f.includes('.tmp-'))).toEqual([]);
  });

  it('rejects bad input with a clear message and writes nothing', async () => {
    const out = join(tmp, 'bad');
    const img = join(tmp, 'grey.png');
    const cases: [string[], RegExp][] = [
      [['--image', join(tmp, 'missing.png'), '--classes', 'cat'], /missing\.png/],
      [['--image', join(tmp, 'broken.png'), '--classes', 'cat'], /broken\.png/],
      [['--image', img, '--classes', ' , '], /--classes is empty/],
      [['--image', img, '--classes', 'cat', 'elbo_strenght=3'], /unknown configuration key "elbo_strenght"/],
      [['--image', img, '--classes', 'cat', 'elbo_timesteps=[[1,999]]'], /elbo_timesteps: expected a list/],
      [['--image', img, '--classes', 'car., cat'], /tokens of class "car\." .* do not occur in the source prompt/],
    ];
    for (const [args, msg] of cases) {
      const r = await run(['segment', '--out', out, ...quick, ...args]);
      expect(r.code, args.join(' ')).not.toBe(0);
      expect(r.err).toMatch(msg);
      expect(filesUnder(join(out, 'heatmaps'))).toEqual([]);
    }
    const longClasses = Array.from({ length: 40 }, (_, i) => `thing${i}`).join(',');
    const r = await run(['segment', '--image', img, '--classes', longClasses, '--out', out, ...quick]);
    expect(r.code).not.toBe(0);
    expect(r.err).toMatch(/beyond the 75 text tokens/);
  });

  it('checks the noise file shapes, naming expected and found', async () => {
    const noise = join(tmp, 'noise.safetensors');
    await writeSafetensors(noise, {
      elbo_noise: { dtype: 'F32', shape: [5, 4, 32, 32], data: new Float32Array(5 * 4 * 32 * 32) },
      collect_noise: { dtype: 'F32', shape: [2, 4, 32, 32], data: new Float32Array(2 * 4 * 32 * 32) },
    });
    const out = join(tmp, 'noise-out');
    const r = await run(['segment', '--image', join(tmp, 'grey.png'), '--classes', 'cat', '--out', out, '--noise', noise, ...quick]);
    expect(r.code).not.toBe(0);
    expect(r.err).toMatch(/elbo_noise has shape \[5, 4, 32, 32\], expected \[3, 4, 32, 32\]/);
    expect(filesUnder(join(out, 'heatmaps'))).toEqual([]);
  });

  it('reproduces the reference run from the command line: --noise, overrides, --dump and heatmaps', async () => {
    const dir = 'test/fixtures/sd21-tiny/elbo/template-small';
    const out = join(tmp, 'golden-cli');
    const dump = join(tmp, 'dump.safetensors');
    const r = await run([
      'segment', '--image', 'test/fixtures/common/test_image.png', '--classes', 'cat,potted plant,car', '--out', out,
      '--model', 'test/fixtures/sd21-tiny', '--noise', `${dir}/elbo.safetensors`, '--dump', dump, '--quiet',
      'elbo_timesteps=[[1,999,200]]', 'collect_timesteps=[[20,201,60]]', 'cross_gaussian_var=3', 'elbo_strength=3',
    ]);
    expect(r.code, r.err).toBe(0);
    const got = SafeTensorsFile.open(dump);
    const ref = SafeTensorsFile.open(`${dir}/elbo.safetensors`);
    for (const name of ['z_source', 'elbo_losses', 'elbo', 'cross_att.0', 'cross_att.1', 'cross_att.2', 'mask_lowres.0', 'mask_lowres.1', 'mask_lowres.2']) {
      expect(got.info(name).shape, name).toEqual(ref.info(name).shape);
      const a = got.readF32(name);
      const b = ref.readF32(name);
      const scale = Math.max(...b.map(Math.abs));
      expect(Math.max(...a.map((v, i) => Math.abs(v - b[i]!))) / scale, name).toBeLessThan(2e-3);
    }
    expect(got.info('self_att').shape).toEqual([256, 256]);
    for (const [i, cls] of ['cat', 'potted plant', 'car'].entries()) {
      const mine = readPngRaw(join(out, 'heatmaps', `test_image_${cls}.png`)).data;
      const theirs = readPngRaw(`${dir}/heatmap_${i}.png`).data;
      expect(Math.max(...Array.from(mine, (v, k) => Math.abs(v - theirs[k]!))), cls).toBeLessThanOrEqual(1);
    }
  });

  it('fails clearly when the output directory cannot be written', async () => {
    const file = join(tmp, 'a-file');
    writeFileSync(file, 'x');
    const r = await run(['segment', '--image', join(tmp, 'grey.png'), '--classes', 'cat', '--out', join(file, 'sub'), ...quick]);
    expect(r.code).not.toBe(0);
    expect(r.err).toMatch(/--out .*a-file\/sub: cannot write there/);
  });
});
