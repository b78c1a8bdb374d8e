// Stable Diffusion XL models vs the sdxl-tiny goldens (diffusers 0.33.1 / compel 2.1.1, f32):
// both tokenizers, both text encoders, encode_prompt, compel's weighted embeddings and pooled
// output, add_time_ids, the scheduler tables, UNet noise prediction with the added text/time
// conditioning and every attention map, and the VAE (scaling_factor 0.13025).
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { preprocessForVae, readImageRGB, readPngRaw } from '../src/io/image.js';
import { AttentionStore } from '../src/models/attentionStore.js';
import { loadPipeline } from '../src/models/pipeline.js';
import { SDXL_SEGMENTATION_DEFAULTS, StableDiffusionXLPipeline } from '../src/models/sdxlPipeline.js';
import { Tensor, scope, type Device } from '../src/tensor/index.js';
import { getDevice, maxAbs, maxAbsDiff } from './helpers/gpu.js';
import { golden, relErr } from './helpers/golden.js';

const DIR = 'test/fixtures/sdxl-tiny';
const REFS = `${DIR}/references`;
/** Single model calls: max abs error relative to max|ref| (golden README's suggestion). */
const RTOL = 1e-4;
/** Attention probabilities (head means), as test/unet.test.ts. */
const RTOL_ATT = 2e-4;

const measured: string[] = [];
function close(got: ArrayLike<number>, ref: ArrayLike<number>, tol: number, what: string): void {
  const e = relErr(got, ref);
  measured.push(`${what}: ${e.toExponential(2)}`);
  expect(e, what).toBeLessThan(tol);
}

let dev: Device;
let pipe: StableDiffusionXLPipeline;
beforeAll(async () => {
  dev = await getDevice();
  const p = await loadPipeline(dev, DIR);
  expect(p).toBeInstanceOf(StableDiffusionXLPipeline);
  pipe = p as StableDiffusionXLPipeline;
});
afterAll(() => {
  pipe?.clearCache();
  console.log(`sdxl-tiny measured max errors (relative to max|ref|):\n  ${measured.join('\n  ')}`);
});

interface TokCase {
  prompt: string;
  tokenizer: { input_ids: number[]; ids_untruncated: number[]; tokens: string[] };
  tokenizer_2: { input_ids: number[]; ids_untruncated: number[]; tokens: string[] };
}

describe('SDXL loading', () => {
  it('reads both encoders, the UNet added conditioning and the VAE config', () => {
    expect(pipe.tokenizer.padId).toBe(49407);
    expect(pipe.tokenizer2.padId).toBe(0);
    expect(pipe.textEncoder.config.hiddenAct).toBe('quick_gelu');
    expect(pipe.textEncoder2.config.hiddenAct).toBe('gelu');
    expect(pipe.textEncoder2.config.projectionDim).toBe(24);
    expect(pipe.textEncoder2.hasProjection).toBe(true);
    const u = pipe.unet.config;
    expect(u.transformerLayers).toEqual([1, 2, 2]);
    expect(u.numHeads).toEqual([2, 3, 4]);
    expect(u.additionEmbedType).toBe('text_time');
    expect(u.additionTimeEmbedDim).toBe(8);
    expect(u.projectionClassEmbeddingsInputDim).toBe(72);
    expect(u.crossAttentionDim).toBe(40);
    expect(pipe.vae.scalingFactor).toBe(0.13025);
    expect(pipe.vae.sampleSize).toBe(256);
    expect(pipe.segmentationDefaults).toBe(SDXL_SEGMENTATION_DEFAULTS);
  });

  it('add_time_ids = [S, S, 0, 0, S, S] from the VAE sample_size', () => {
    const meta = JSON.parse(readFileSync(`${REFS}/unet.json`, 'utf8')) as { add_time_ids_repo: number[][] };
    expect([pipe.addTimeIds]).toEqual(meta.add_time_ids_repo);
  });

  it('scheduler tables from the EulerDiscreteScheduler config equal the golden DDIM tables bit for bit', () => {
    const ref = golden(`${REFS}/scheduler.safetensors`);
    const s = pipe.schedule;
    expect(s.predictionType).toBe('epsilon');
    expect(maxAbsDiff(s.alphasCumprod, ref.readF32('alphas_cumprod'))).toBe(0);
    expect(maxAbsDiff(s.sqrtAlphasCumprod, ref.readF32('sqrt_alphas_cumprod'))).toBe(0);
    expect(maxAbsDiff(s.sqrtOneMinusAlphasCumprod, ref.readF32('sqrt_one_minus_alphas_cumprod'))).toBe(0);
  });
});

describe('SDXL tokenizers', () => {
  const cases = (JSON.parse(readFileSync(`${REFS}/tokenizer.json`, 'utf8')) as { cases: TokCase[] }).cases;
  it.each(cases.map((c, i) => [i, c] as const))('case %i: both tokenizers\' ids', (_i, c) => {
    for (const [tok, ref] of [
      [pipe.tokenizer, c.tokenizer],
      [pipe.tokenizer2, c.tokenizer_2],
    ] as const) {
      expect(tok.call(c.prompt).inputIds).toEqual(ref.input_ids);
      expect(tok.encode(c.prompt)).toEqual(ref.ids_untruncated);
      expect(tok.tokenize(c.prompt)).toEqual(ref.tokens);
    }
  });
});

describe('SDXL text encoders', () => {
  const meta = JSON.parse(readFileSync(`${REFS}/text_encoders.json`, 'utf8')) as { prompts: string[] };

  it('both encoders: hidden states, last_hidden_state, pooler_output, text_embeds', async () => {
    const ref = golden(`${REFS}/text_encoders.safetensors`);
    for (const [name, te, tok] of [
      ['text_encoder', pipe.textEncoder, pipe.tokenizer],
      ['text_encoder_2', pipe.textEncoder2, pipe.tokenizer2],
    ] as const) {
      const ids = meta.prompts.map((p) => tok.call(p).inputIds);
      expect(ids.flat()).toEqual(Array.from(ref.readI64(`${name}.input_ids`)));
      const out = te.forward(ids, { hiddenStates: true });
      try {
        close(await out.lastHiddenState.toArray(), ref.readF32(`${name}.last_hidden_state`), RTOL, `${name}.last_hidden_state`);
        close(await out.pooled.toArray(), ref.readF32(`${name}.pooler_output`), RTOL, `${name}.pooler_output`);
        for (let i = 0; i < out.hiddenStates!.length; i++) {
          close(await out.hiddenStates![i]!.toArray(), ref.readF32(`${name}.hidden_states.${i}`), RTOL, `${name}.hidden_states.${i}`);
        }
        if (name === 'text_encoder_2') close(await out.textEmbeds!.toArray(), ref.readF32(`${name}.text_embeds`), RTOL, `${name}.text_embeds`);
        else expect(out.textEmbeds).toBeUndefined();
      } finally {
        out.lastHiddenState.release();
        out.pooled.release();
        out.textEmbeds?.release();
        for (const h of out.hiddenStates ?? []) h.release();
      }
    }
  });

  it('encode_prompt: prompt_embeds = concat(hidden_states[-2] of both), pooled = text_embeds', async () => {
    const ref = golden(`${REFS}/text_encoders.safetensors`);
    const hidden: number[] = [];
    const pooled: number[] = [];
    for (const p of meta.prompts) {
      const e = pipe.encodePrompt(p);
      hidden.push(...(await e.hidden.toArrayAndRelease()));
      pooled.push(...(await e.pooled.toArrayAndRelease()));
    }
    close(hidden, ref.readF32('prompt_embeds'), RTOL, 'prompt_embeds');
    close(pooled, ref.readF32('pooled_prompt_embeds'), RTOL, 'pooled_prompt_embeds');
    const empty = pipe.encodePrompt('');
    close(await empty.hidden.toArrayAndRelease(), ref.readF32('negative_prompt_embeds.empty_string'), RTOL, 'negative_prompt_embeds.empty_string');
    close(await empty.pooled.toArrayAndRelease(), ref.readF32('negative_pooled_prompt_embeds.empty_string'), RTOL, 'negative_pooled_prompt_embeds.empty_string');
  });
});

describe('SDXL compel (utils/diffusion.py)', () => {
  interface CompelCase {
    prompt: string;
    tensor: string;
    pooled_tensor: string;
    pooled_token_ids: number[];
  }
  const cases = (JSON.parse(readFileSync(`${REFS}/compel.json`, 'utf8')) as { cases: CompelCase[] }).cases;

  it('empty_z of both encoders', async () => {
    const ref = golden(`${REFS}/compel.safetensors`);
    const [z1, z2] = await pipe.compelEmptyZ();
    close(z1, ref.readF32('empty_z.0'), RTOL, 'compel empty_z.0');
    close(z2, ref.readF32('empty_z.1'), RTOL, 'compel empty_z.1');
  });

  it.each(cases.map((c) => [c.prompt, c] as const))('%j: weighted embedding, pooled token ids and pooled output', async (_p, c) => {
    const ref = golden(`${REFS}/compel.safetensors`);
    expect(pipe.pooledTokenIds(c.prompt)).toEqual(c.pooled_token_ids);
    const e = await pipe.compelEmbedding(c.prompt);
    close(e.hidden, ref.readF32(c.tensor), RTOL, `compel ${c.tensor}`);
    close(e.pooled, ref.readF32(c.pooled_tensor), RTOL, `compel ${c.pooled_tensor}`);
    // The pooled output never sees weights: encode_prompt's pooled equals it.
    const plain = pipe.encodePrompt(c.prompt);
    plain.hidden.release();
    close(await plain.pooled.toArrayAndRelease(), ref.readF32(c.pooled_tensor), RTOL, `encode_prompt pooled vs ${c.pooled_tensor}`);
  });
});

describe('SDXL UNet', () => {
  interface Layer {
    module: string;
    tensor: string;
    h: number;
    w: number;
  }
  interface Case {
    name: string;
    time_ids: number[][];
    self_layers: Layer[];
    cross_layers: Layer[];
  }
  const cases = (JSON.parse(readFileSync(`${REFS}/unet.json`, 'utf8')) as { cases: Case[] }).cases;

  it.each(cases.map((c) => [c.name, c] as const))('%s: noise_pred and all 22 + 22 attention maps', async (_n, c) => {
    const ref = golden(`${REFS}/unet.safetensors`);
    const store = new AttentionStore(dev, true);
    const t = (name: string): Tensor => Tensor.fromArray(dev, ref.readF32(`${c.name}.${name}`), ref.info(`${c.name}.${name}`).shape);
    try {
      const out = scope(() =>
        pipe.unet.forward({
          sample: t('latent'),
          timesteps: Array.from(ref.readI64(`${c.name}.timesteps`), Number),
          encoderHiddenStates: t('encoder_hidden_states'),
          textEmbeds: t('text_embeds'),
          timeIds: c.time_ids,
          store,
        }),
      );
      close(await out.toArrayAndRelease(), ref.readF32(`${c.name}.noise_pred`), RTOL, `unet ${c.name}.noise_pred`);
      expect(store.self.map((l) => l.name)).toEqual(c.self_layers.map((l) => l.module));
      expect(store.cross.map((l) => l.name)).toEqual(c.cross_layers.map((l) => l.module));
      let worst = 0;
      for (const [list, refs] of [
        [store.self, c.self_layers],
        [store.cross, c.cross_layers],
      ] as const) {
        for (let i = 0; i < list.length; i++) {
          expect([list[i]!.h, list[i]!.w]).toEqual([refs[i]!.h, refs[i]!.w]);
          const e = relErr(await list[i]!.sum.toArray(), ref.readF32(refs[i]!.tensor));
          expect(e, refs[i]!.tensor).toBeLessThan(RTOL_ATT);
          worst = Math.max(worst, e);
        }
      }
      measured.push(`unet ${c.name} attention maps (worst of 44): ${worst.toExponential(2)}`);
    } finally {
      store.reset();
    }
  });

  it('the reference encode_prompt embeddings feed the UNet (case0 inputs are encode_prompt of its prompt)', async () => {
    const ref = golden(`${REFS}/unet.safetensors`);
    const e = pipe.encodePrompt('a photo of a cat');
    close(await e.hidden.toArrayAndRelease(), ref.readF32('case0.encoder_hidden_states'), RTOL, 'encodePrompt vs unet case0.encoder_hidden_states');
    close(await e.pooled.toArrayAndRelease(), ref.readF32('case0.text_embeds'), RTOL, 'encodePrompt vs unet case0.text_embeds');
  });

  it('rejects a missing text_embeds / time_ids', () => {
    const ref = golden(`${REFS}/unet.safetensors`);
    expect(() =>
      scope(() =>
        pipe.unet.forward({
          sample: Tensor.fromArray(dev, ref.readF32('case0.latent'), [1, 4, 16, 16]),
          timesteps: [1],
          encoderHiddenStates: Tensor.fromArray(dev, ref.readF32('case0.encoder_hidden_states'), [1, 77, 40]),
        }),
      ),
    ).toThrow(/text_time.*textEmbeds and timeIds/);
  });
});

describe('SDXL VAE (f32, scaling_factor 0.13025)', () => {
  it('latent_mean / latent_scaled of the test image and decoded of a non-square latent', async () => {
    const ref = golden(`${REFS}/vae.safetensors`);
    const img = await readImageRGB('test/fixtures/common/test_image.png');
    const S = pipe.vae.sampleSize;
    const x = preprocessForVae(img, S);
    // The resize is PIL's bilinear (vae_resized.png is the reference's uint8 result).
    const png = readPngRaw(`${REFS}/vae_resized.png`);
    const want = new Float32Array(3 * S * S);
    for (let i = 0; i < S * S; i++) for (let ch = 0; ch < 3; ch++) want[ch * S * S + i] = (png.data[i * png.channels + ch]! / 255) * 2 - 1;
    expect(maxAbsDiff(x, want)).toBeLessThan(1e-6);
    const { mean, scaled } = scope(() => {
      const input = Tensor.fromArray(dev, x, [1, 3, S, S]);
      const m = pipe.vae.encode(input).mean;
      return { mean: m, scaled: pipe.vae.scaleLatent(m) };
    });
    close(await mean.toArrayAndRelease(), ref.readF32('latent_mean'), RTOL, 'vae latent_mean');
    close(await scaled.toArrayAndRelease(), ref.readF32('latent_scaled'), RTOL, 'vae latent_scaled');
    const dec = scope(() => pipe.vae.decode(Tensor.fromArray(dev, ref.readF32('decode_input_latent'), [1, 4, 8, 12])));
    const d = await dec.toArrayAndRelease();
    close(d, ref.readF32('decoded'), RTOL, 'vae decoded');
    expect(maxAbs(d)).toBeGreaterThan(0);
  });
});

describe('SDXL with f16 weights', () => {
  it('encoders and UNet take f16 matrices; the VAE stays f32 (force_upcast)', async (ctx) => {
    if (!dev.hasF16) ctx.skip();
    const p16 = await StableDiffusionXLPipeline.load(dev, DIR, { weightDtype: 'f16' });
    const ref = golden(`${REFS}/unet.safetensors`);
    const t = (name: string): Tensor => Tensor.fromArray(dev, ref.readF32(`case0.${name}`), ref.info(`case0.${name}`).shape);
    const e = p16.encodePrompt('a photo of a cat');
    const hidden = await e.hidden.toArray();
    const pred = scope(() =>
      p16.unet.forward({ sample: t('latent'), timesteps: [1], encoderHiddenStates: e.hidden, textEmbeds: e.pooled, timeIds: [p16.addTimeIds] }),
    );
    e.hidden.release();
    e.pooled.release();
    const e16 = relErr(hidden, ref.readF32('case0.encoder_hidden_states'));
    measured.push(`f16 encode_prompt: ${e16.toExponential(2)}`);
    expect(e16).toBeLessThan(1e-2);
    const u16 = relErr(await pred.toArrayAndRelease(), ref.readF32('case0.noise_pred'));
    measured.push(`f16 unet case0.noise_pred (own f16 embeddings): ${u16.toExponential(2)}`);
    expect(u16).toBeLessThan(2e-2);
    // f32 VAE: same result as the f32 pipeline to f32 rounding.
    const vref = golden(`${REFS}/vae.safetensors`);
    const dec = scope(() => p16.vae.decode(Tensor.fromArray(dev, vref.readF32('decode_input_latent'), [1, 4, 8, 12])));
    const v = relErr(await dec.toArrayAndRelease(), vref.readF32('decoded'));
    measured.push(`f16 pipeline, vae decoded: ${v.toExponential(2)}`);
    expect(v).toBeLessThan(1e-4);
  });
});
