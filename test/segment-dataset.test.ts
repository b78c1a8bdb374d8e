// segment-dataset then evaluate, end to end on a small synthetic VOC-layout dataset with
// the bundled pipeline: the reference's heatmap layout, resume, and the metrics file.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { runCli } from './helpers/cli.js';
import { readPngRaw, writeGreyPng } from '../src/io/image.js';

let root: string;

const run = runCli;

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'elbo-ds-'));
  mkdirSync(join(root, 'JPEGImages'));
  mkdirSync(join(root, 'SegmentationClassAug'));
  // Two images: 0 has cat (8) and dog (12), 1 has only background and ignore (no labels).
  const W = 40;
  const H = 30;
  for (const [name, labels] of [
    ['img_a', [8, 12]],
    ['img_b', [0, 255]],
  ] as const) {
    const rgb = new Uint8Array(W * H * 3).map((_, i) => (i * 31 + name.length * 7) % 256);
    await sharp(Buffer.from(rgb), { raw: { width: W, height: H, channels: 3 } }).jpeg().toFile(join(root, 'JPEGImages', `${name}.jpg`));
    const gt = new Uint8Array(W * H).map((_, i) => (i % W < W / 2 ? labels[0] : labels[1]));
    await writeGreyPng(join(root, 'SegmentationClassAug', `${name}.png`), W, H, gt);
  }
  writeFileSync(join(root, 'val_id.txt'), 'img_a\nimg_b\n');
  const info = readFileSync('metadata/voc/info.yaml', 'utf8')
    .replace(/^data_root: .*$/m, `data_root: "${root}"`)
    .replace(/^data_name_list: .*$/m, `data_name_list: "${join(root, 'val_id.txt')}"`);
  writeFileSync(join(root, 'info.yaml'), info);
});

afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('segment-dataset + evaluate', () => {
  const quick = ['elbo_timesteps=[[1,999,500]]', 'collect_timesteps=[[20,201,100]]', '--quiet', '--no-overlays'];

  it('writes heatmaps/<index>_<class>.png for the labels found in the ground truth, and resumes', async () => {
    const out = join(root, 'out');
    const r = await run(['segment-dataset', '--dataset-cfg', join(root, 'info.yaml'), '--out', out, ...quick]);
    expect(r.code, r.err).toBe(0);
    expect(readdirSync(join(out, 'heatmaps')).sort()).toEqual(['0_cat.png', '0_dog.png']);
    const png = readPngRaw(join(out, 'heatmaps', '0_cat.png'));
    expect([png.width, png.height]).toEqual([40, 30]);
    expect(r.out).toMatch(/segmented 1 image\(s\), skipped 0 already done, 1 without foreground labels/);
    const again = await run(['segment-dataset', '--dataset-cfg', join(root, 'info.yaml'), '--out', out, ...quick]);
    expect(again.out).toMatch(/segmented 0 image\(s\), skipped 1 already done/);
  });

  it('evaluates the heatmaps into segmentation_metrics.json', async () => {
    const out = join(root, 'out');
    const r = await run(['evaluate', '--dataset-cfg', join(root, 'info.yaml'), '--out', out]);
    expect(r.code, r.err).toBe(0);
    const m = JSON.parse(readFileSync(join(out, 'segmentation_metrics.json'), 'utf8'));
    expect(Object.keys(m).slice(0, 3)).toEqual(['best threshold', 'overall', 'background']);
    // Classes present in the ground truth get an IoU in [0, 100]; absent ones are null (NaN in the reference).
    for (const c of ['cat', 'dog']) {
      expect(m[c].count).toBe(1);
      expect(m[c].m_IoU[0]).toBeGreaterThanOrEqual(0);
      expect(m[c].m_IoU[0]).toBeLessThanOrEqual(100);
    }
    expect(m.bird.m_IoU).toEqual([null]);
    expect(m.bird.count).toBe(0);
    expect(existsSync(join(out, 'segmentation_metrics.png'))).toBe(true);
  });

  it('AEP file mode: phrases give the ELBO and source prompts, and locate each class through its nouns', async () => {
    writeFileSync(join(root, 'prompts.json'), JSON.stringify({ img_a: { subject: ['dog', 'cat'], phrase: ['the small puppy', 'a sleeping cat'] } }));
    const info = readFileSync(join(root, 'info.yaml'), 'utf8') + `name_to_prompts: "${join(root, 'prompts.pkl')}"\n`;
    writeFileSync(join(root, 'info-aep.yaml'), info);
    const out = join(root, 'out-aep');
    const r = await run(['segment-dataset', '--dataset-cfg', join(root, 'info-aep.yaml'), '--out', out, 'elbo_text.type=file', 'source_text.type=file', ...quick]);
    expect(r.code, r.err).toBe(0);
    expect(readdirSync(join(out, 'heatmaps')).sort()).toEqual(['0_cat.png', '0_dog.png']);
    const elbo = JSON.parse(readFileSync(join(out, 'elbo.json'), 'utf8'));
    expect(Object.keys(elbo.img_a.classes).sort()).toEqual(['cat', 'dog']);
  });

  it('rejects an id list naming absent images', async () => {
    const ids = join(root, 'ids.txt');
    writeFileSync(ids, 'img_a\nnot_there\n');
    const r = await run(['segment-dataset', '--dataset-cfg', join(root, 'info.yaml'), '--out', join(root, 'out2'), '--ids', ids, ...quick]);
    expect(r.code).not.toBe(0);
    expect(r.err).toMatch(/not_there/);
  });
});
