// UNet noise prediction and every attention map vs diffusers + the reference's attention
// processor (golden unet references: square, non-square and batch-2 cases).
import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { AttentionStore } from '../src/models/attentionStore.js';
import { UNet2DConditionModel, parseUNetConfig } from '../src/models/unet.js';
import { RandomWeights, type WeightSource } from '../src/models/weights.js';
import { Tensor } from '../src/tensor/index.js';
import { getDevice } from './helpers/gpu.js';
import { PIPELINES, golden, relErr } from './helpers/golden.js';

interface Case {
  name: string;
  timesteps: number[];
  self_layers: { module: string; tensor: string; h: number; w: number }[];
  cross_layers: { module: string; tensor: string; h: number; w: number }[];
}

describe.each(Object.entries(PIPELINES))('UNet %s', (_, p) => {
  const cases = (JSON.parse(readFileSync(`${p.refs}/unet.json`, 'utf8')) as { cases: Case[] }).cases;
  it.each(cases.map((c) => [c.name, c] as const))('%s: noise_pred and attention maps (1e-4 relative)', async (_n, c) => {
    const dev = await getDevice();
    const ref = golden(`${p.refs}/unet.safetensors`);
    const unet = await UNet2DConditionModel.load(dev, `${p.dir}/unet`);
    const lat = ref.info(`${c.name}.latent`).shape;
    const ehs = ref.info(`${c.name}.encoder_hidden_states`).shape;
    const store = new AttentionStore(dev, true);
    const out = unet.forward({
      sample: Tensor.fromArray(dev, ref.readF32(`${c.name}.latent`), lat),
      timesteps: ref.readI64(`${c.name}.timesteps`),
      encoderHiddenStates: Tensor.fromArray(dev, ref.readF32(`${c.name}.encoder_hidden_states`), ehs),
      store,
    });
    expect(relErr(await out.toArray(), ref.readF32(`${c.name}.noise_pred`))).toBeLessThan(1e-4);
    expect(store.self.map((l) => l.name)).toEqual(c.self_layers.map((l) => l.module));
    expect(store.cross.map((l) => l.name)).toEqual(c.cross_layers.map((l) => l.module));
    for (const [list, refs] of [[store.self, c.self_layers], [store.cross, c.cross_layers]] as const) {
      for (let i = 0; i < list.length; i++) {
        expect([list[i]!.h, list[i]!.w]).toEqual([refs[i]!.h, refs[i]!.w]);
        expect(relErr(await list[i]!.sum.toArray(), ref.readF32(refs[i]!.tensor)), refs[i]!.tensor).toBeLessThan(2e-4);
      }
    }
    if (lat[2] === lat[3]) {
      // The layout known before any forward equals the one the store saw.
      const layout = unet.attentionLayout(lat[2]!);
      expect(layout.filter((l) => l.kind === 'self').map((l) => [l.name, l.res])).toEqual(store.self.map((l) => [l.name, l.h]));
      expect(layout.filter((l) => l.kind === 'cross').map((l) => [l.name, l.res])).toEqual(store.cross.map((l) => [l.name, l.h]));
    }
    store.reset();
  });
});

describe('UNet weights on the GPU', () => {
  it('release() frees every weight, and a load that fails part-way leaves nothing behind', async () => {
    const dev = await getDevice();
    const dir = `${PIPELINES['sd15-tiny'].dir}/unet`;
    (await UNet2DConditionModel.load(dev, dir)).release(); // first use: pipelines, the kernels' shared dummy
    await dev.sync();
    const base = dev.liveBytes;
    const unet = await UNet2DConditionModel.load(dev, dir);
    expect(dev.liveBytes).toBeGreaterThan(base);
    unet.release();
    await dev.sync();
    expect(dev.liveBytes).toBe(base);
    const sample = Tensor.zeros(dev, [1, unet.config.inChannels, 8, 8]);
    const ehs = Tensor.zeros(dev, [1, 77, unet.config.crossAttentionDim]);
    expect(() => unet.forward({ sample, timesteps: [1], encoderHiddenStates: ehs })).toThrow(/^UNet2DConditionModel: used after release\(\)/);
    for (const t of [sample, ehs]) t.release();

    // a weight source whose 40th tensor is missing: past the first GEGLU and 3x3 convs,
    // whose loaded tensors are replaced by re-laid copies
    const config = parseUNetConfig(JSON.parse(readFileSync(`${dir}/config.json`, 'utf8')) as Record<string, unknown>, 'sd15-tiny unet');
    const rw = new RandomWeights(dev);
    let n = 0;
    const failing: WeightSource = {
      where: 'test source',
      has: () => rw.has(),
      pick: (...names) => rw.pick(...names),
      load: (name, shape, kind, accept) => {
        if (++n === 40) throw new Error(`test source: no tensor ${name}`);
        void accept; // random weights take the first shape asked for
        return rw.load(name, shape, kind);
      },
      maybe: (name, shape, kind) => rw.maybe(name, shape, kind),
    };
    expect(() => UNet2DConditionModel.fromWeights(dev, config, failing)).toThrow(/^test source: no tensor /);
    await dev.sync();
    expect(dev.liveBytes).toBe(base);
  });

  it('a forward frees each block\'s intermediates as the next block consumes them', async () => {
    // sd15-tiny at 64x64 latents, batch 2. The unit is one (B, C0, 64, 64) f32 activation
    // (512 KiB). Measured: 28.2 units over the weights; with one scope around the whole
    // forward (every block's output kept to the end) it was 57.9. The skips (12 of them,
    // ~5.6 units) and the 64x64 up block's working set (concat, norm, Winograd V, its
    // texture and M: ~20 units) make up the rest.
    const dev = await getDevice();
    const unet = await UNet2DConditionModel.load(dev, `${PIPELINES['sd15-tiny'].dir}/unet`);
    const c = unet.config;
    const B = 2;
    const S = 64;
    const ehs = Tensor.fromArray(dev, new Float32Array(B * 77 * c.crossAttentionDim).map((_, i) => Math.sin(i)), [B, 77, c.crossAttentionDim]);
    const sample = Tensor.fromArray(dev, new Float32Array(B * c.inChannels * S * S).map((_, i) => Math.cos(i)), [B, c.inChannels, S, S]);
    try {
      unet.forward({ sample, timesteps: [500], encoderHiddenStates: ehs }).release(); // pipelines, shared dummies
      await dev.sync();
      const base = dev.liveBytes;
      dev.resetPeak();
      const out = await unet.forward({ sample, timesteps: [500], encoderHiddenStates: ehs }).toArrayAndRelease();
      expect(out.every(Number.isFinite)).toBe(true);
      const unit = B * c.blockOutChannels[0]! * S * S * 4;
      const units = (dev.peakLiveBytes - base) / unit;
      expect(units).toBeGreaterThan(5); // the skips alone
      expect(units).toBeLessThan(34);
      await dev.sync();
      expect(dev.liveBytes).toBe(base);
    } finally {
      for (const t of [sample, ehs]) t.release();
      unet.release();
    }
  });
});
