// The method end to end against the reference code's own run (golden elbo/ data of both
// public pipelines, every variant), with the reference's noise injected.
import { describe, expect, it } from 'vitest';
import { existsSync, readFileSync } from 'node:fs';
import { readImageRGB, readPngRaw } from '../src/io/image.js';
import { applyOverrides, defaultConfig } from '../src/elbo/config.js';
import { toU8 } from '../src/elbo/interp.js';
import { segmentImage, type SegmentResult } from '../src/elbo/segment.js';
import { StableDiffusionPipeline } from '../src/models/pipeline.js';
import { getDevice, maxAbsDiff } from './helpers/gpu.js';
import { PIPELINES, golden, relErr } from './helpers/golden.js';

const VARIANTS: [keyof typeof PIPELINES, string][] = [
  ['sd15-tiny', 'defaults-small'],
  ['sd15-tiny', 'template-small'],
  ['sd21-tiny', 'defaults-small'],
  ['sd21-tiny', 'template-small'],
  ['sd21-tiny', 'defaults-full'],
];

const pipes = new Map<string, Promise<StableDiffusionPipeline>>();
async function pipeline(name: keyof typeof PIPELINES): Promise<StableDiffusionPipeline> {
  let p = pipes.get(name);
  if (!p) pipes.set(name, (p = getDevice().then((dev) => StableDiffusionPipeline.load(dev, PIPELINES[name].dir))));
  return p;
}

describe.each(VARIANTS)('segmentation %s %s', (name, variant) => {
  const dir = `${PIPELINES[name].elbo}/${variant}`;
  const meta = JSON.parse(readFileSync(`${dir}/elbo.json`, 'utf8')) as {
    config: Record<string, unknown>;
    classes: { class: string; token_positions: number[] }[];
    self_att_stored_in: string;
  };
  let result: SegmentResult;

  it('runs with the reference noise injected', async () => {
    const ref = golden(`${dir}/elbo.safetensors`);
    const pipe = await pipeline(name);
    const c = meta.config;
    const config = applyOverrides(defaultConfig(), [
      `elbo_timesteps=${JSON.stringify(c.elbo_timesteps)}`,
      `collect_timesteps=${JSON.stringify(c.collect_timesteps)}`,
      `elbo_strength=${c.elbo_strength}`,
      `cross_gaussian_var=${c.cross_gaussian_var}`,
    ]);
    const image = await readImageRGB('test/fixtures/common/test_image.png');
    result = await segmentImage(pipe, image, meta.classes.map((k) => k.class), {
      config,
      noise: { elbo: ref.readF32('elbo_noise'), collect: ref.readF32('collect_noise') },
      wantSelfMatrix: meta.self_att_stored_in === 'elbo.safetensors',
      maxBatch: 3,
    });
    expect(result.classes.map((k) => k.positions)).toEqual(meta.classes.map((k) => k.token_positions));
  });

  it('z_source, ELBO losses, normalized ELBO and temperatures agree', () => {
    const ref = golden(`${dir}/elbo.safetensors`);
    expect(relErr(result.zSource, ref.readF32('z_source'))).toBeLessThan(1e-4);
    const losses = Float32Array.from(result.classes.flatMap((k) => k.losses));
    expect(relErr(losses, ref.readF32('elbo_losses'))).toBeLessThan(1e-3);
    expect(relErr(result.classes.map((k) => k.loss), ref.readF32('elbo'))).toBeLessThan(1e-3);
    // Normalisation divides by (max - min): small loss differences are amplified.
    expect(maxAbsDiff(result.classes.map((k) => k.normalizedElbo), ref.readF32('elbo_min_max'))).toBeLessThan(2e-3);
    expect(maxAbsDiff(result.classes.map((k) => k.temperature), ref.readF32('temperature'))).toBeLessThan(5e-3);
  });

  it('cross attention, self attention, masks and heatmap PNGs agree', () => {
    const ref = golden(`${dir}/elbo.safetensors`);
    if (result.selfAtt) expect(relErr(result.selfAtt, ref.readF32('self_att'))).toBeLessThan(1e-3);
    result.classes.forEach((k, i) => {
      expect(relErr(k.crossAtt, ref.readF32(`cross_att.${i}`)), `cross_att.${i}`).toBeLessThan(1e-3);
      expect(maxAbsDiff(k.crossTempered, ref.readF32(`cross_att_tempered.${i}`)), `cross_att_tempered.${i}`).toBeLessThan(5e-3);
      expect(relErr(k.maskLowres, ref.readF32(`mask_lowres.${i}`)), `mask_lowres.${i}`).toBeLessThan(5e-3);
      expect(maxAbsDiff(k.mask, ref.readF32(`mask.${i}`)), `mask.${i}`).toBeLessThan(0.5);
      const png = readPngRaw(`${dir}/heatmap_${i}.png`);
      expect(maxAbsDiff(toU8(k.mask), png.data), `heatmap_${i}.png`).toBeLessThanOrEqual(1);
      if (existsSync(`${dir}/cross_att_${i}.png`)) {
        expect(maxAbsDiff(toU8(k.crossImage), readPngRaw(`${dir}/cross_att_${i}.png`).data), `cross_att_${i}.png`).toBeLessThanOrEqual(1);
      }
    });
  });
});

describe('segmentation: ELBO calls in flight', () => {
  it('one call at a time and four recorded ahead give the same losses, bit for bit', async () => {
    const pipe = await pipeline('sd21-tiny');
    const dir = `${PIPELINES['sd21-tiny'].elbo}/defaults-small`;
    const ref = golden(`${dir}/elbo.safetensors`);
    const meta = JSON.parse(readFileSync(`${dir}/elbo.json`, 'utf8')) as { config: Record<string, unknown>; classes: { class: string }[] };
    const config = applyOverrides(defaultConfig(), [`elbo_timesteps=${JSON.stringify(meta.config.elbo_timesteps)}`, `collect_timesteps=${JSON.stringify(meta.config.collect_timesteps)}`]);
    const image = await readImageRGB('test/fixtures/common/test_image.png');
    const run = async (elboInFlight: number): Promise<number[][]> => {
      const r = await segmentImage(pipe, image, meta.classes.map((k) => k.class), {
        config,
        noise: { elbo: ref.readF32('elbo_noise'), collect: ref.readF32('collect_noise') },
        maxBatch: 1,
        elboInFlight,
      });
      return r.classes.map((k) => k.losses);
    };
    const serial = await run(1);
    const ahead = await run(4);
    expect(serial.flat().length).toBeGreaterThan(4);
    expect(serial.flat().every(Number.isFinite)).toBe(true);
    expect(ahead).toEqual(serial);
  });
});

describe('segmentation: the text encoder offloaded between images', () => {
  it('is freed after the prompts are embedded, loaded again for new ones, and changes no result', async () => {
    const dev = await getDevice();
    const dir = `${PIPELINES['sd15-tiny'].elbo}/defaults-small`;
    const ref = golden(`${dir}/elbo.safetensors`);
    const meta = JSON.parse(readFileSync(`${dir}/elbo.json`, 'utf8')) as { config: Record<string, unknown>; classes: { class: string }[] };
    const config = applyOverrides(defaultConfig(), [`elbo_timesteps=${JSON.stringify(meta.config.elbo_timesteps)}`, `collect_timesteps=${JSON.stringify(meta.config.collect_timesteps)}`]);
    const image = await readImageRGB('test/fixtures/common/test_image.png');
    const classes = meta.classes.map((k) => k.class);
    const noise = { elbo: ref.readF32('elbo_noise'), collect: ref.readF32('collect_noise') };
    const masks = (r: SegmentResult): Float32Array[] => r.classes.map((k) => k.mask);
    const kept = await StableDiffusionPipeline.load(dev, PIPELINES['sd15-tiny'].dir);
    const offloaded = await StableDiffusionPipeline.load(dev, PIPELINES['sd15-tiny'].dir);
    try {
      const want1 = await segmentImage(kept, image, classes, { config, noise, offloadTextEncoder: false });
      expect(kept.textEncoder.weightBytes).toBeGreaterThan(0);
      const teBytes = offloaded.textEncoder.weightBytes;
      const before = dev.liveBytes;
      const got1 = await segmentImage(offloaded, image, classes, { config, noise, offloadTextEncoder: true });
      await dev.sync();
      expect(before - dev.liveBytes).toBeGreaterThanOrEqual(teBytes - 256 * 1024); // embeddings made, the encoder freed
      expect(() => offloaded.textEncoder).toThrow(/the text encoder is offloaded/);
      expect(masks(got1)).toEqual(masks(want1));
      // A second image with other prompts (one class, another source text) loads it again.
      const want2 = await segmentImage(kept, image, [classes[1]!], { config, noise, offloadTextEncoder: false });
      const got2 = await segmentImage(offloaded, image, [classes[1]!], { config, noise, offloadTextEncoder: true });
      expect(got2.sourceText).not.toBe(got1.sourceText);
      expect(masks(got2)).toEqual(masks(want2));
      expect(got2.classes[0]!.losses).toEqual(want2.classes[0]!.losses);
    } finally {
      kept.release();
      offloaded.release();
    }
  });
});
