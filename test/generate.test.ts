// ELBO-reweighted generation against the reference's own run (run_generation.py, 3 steps) on both
// public pipeline layouts: each step from the stored stepK.z_in, then the whole chain.
import { afterAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { GenerationContext, generate, generationStep, samplingTimesteps, torchRandn } from '../src/elbo/generate.js';
import { extractNounPhrases } from '../src/elbo/nounPhrases.js';
import { readPngRaw } from '../src/io/image.js';
import { StableDiffusionPipeline } from '../src/models/pipeline.js';
import { getDevice, maxAbsDiff } from './helpers/gpu.js';
import { PIPELINES, golden, relErr } from './helpers/golden.js';

interface GoldenGeneration {
  prompt: string;
  phrases: string[];
  seed: number;
  infer_timesteps: number;
  timesteps: number[];
  elbo_strength: number;
  guidance_scale: number;
  steps: { t: number; next_t: number; elbo: number[]; weights: number[]; weight_prompt: string }[];
}

/** Measured errors, printed at the end (for the record of how close the port is). */
const measured: string[] = [];
function check(name: string, got: ArrayLike<number>, ref: ArrayLike<number>, tol: number): void {
  const e = relErr(got, ref);
  measured.push(`${name}: ${e.toExponential(2)}`);
  expect(got.length, `${name} length`).toBe(ref.length);
  expect(e, name).toBeLessThan(tol);
}
afterAll(() => console.log(`generation max relative errors vs golden:\n  ${measured.join('\n  ')}`));

describe('timesteps and the seeded latent', () => {
  it('follows range(999, 0, -(1000 // steps)) with next = max(0, t - ratio)', () => {
    expect(samplingTimesteps(3)).toEqual([
      { t: 999, nextT: 666 },
      { t: 666, nextT: 333 },
      { t: 333, nextT: 0 },
    ]);
    const s50 = samplingTimesteps(50);
    expect(s50.length).toBe(50);
    expect(s50[0]).toEqual({ t: 999, nextT: 979 });
    expect(s50[49]).toEqual({ t: 19, nextT: 0 });
    // 1000 // 7 = 142 does not divide 999: the reference then runs 8 steps.
    expect(samplingTimesteps(7).map((s) => s.t)).toEqual([999, 857, 715, 573, 431, 289, 147, 5]);
    expect(samplingTimesteps(1)).toEqual([{ t: 999, nextT: 0 }]);
    expect(() => samplingTimesteps(0)).toThrow(/steps/);
    expect(() => samplingTimesteps(1001)).toThrow(/steps/);
  });

  it.each(Object.keys(PIPELINES) as (keyof typeof PIPELINES)[])('torch.manual_seed(4307); torch.randn gives %s latent_init', (name) => {
    const ref = golden(`${PIPELINES[name].generation}/generation.safetensors`).readF32('latent_init');
    const got = torchRandn(ref.length, 4307);
    const d = maxAbsDiff(got, ref);
    measured.push(`${name} latent_init from seed (max abs): ${d.toExponential(2)}`);
    expect(d).toBeLessThan(1e-6);
    // The scalar path (fewer than 16 values) is torch's double Box-Muller; just sanity-check it.
    const small = torchRandn(5, 1);
    expect(small.every((x) => Number.isFinite(x) && Math.abs(x) < 6)).toBe(true);
  });
});

/**
 * Tolerances of the chained run. The tiny random UNets are very sensitive to their input: from the
 * stored z_in every step agrees to ~3e-5, but chained, a step's z_out error grows ~12x through the
 * next UNet call (sd21-tiny, v-prediction, measured: z_out 1.8e-5 -> 6.8e-4 -> 1.5e-2). The
 * reference itself moves latent_final by 2.3e-3 between 1 and 2 torch threads (GOLDEN_README).
 * At sd21-tiny's last step the ELBO error reaches ~3e-3, enough to move a weight across a
 * rounding boundary (1.0472 -> 1.05 in the reference; 1.04 has been seen with our kernels), so
 * there chained weights may differ by one rounding step (0.01) and the latents are compared
 * loosely. The exact weights and prompts are checked step by step above.
 */
const CHAIN_TOL: Record<keyof typeof PIPELINES, { latent: number; png: number; weight: number }> = {
  'sd15-tiny': { latent: 1e-2, png: 2, weight: 0 },
  'sd21-tiny': { latent: 5e-2, png: 12, weight: 0.0100001 },
};

describe.each(Object.keys(PIPELINES) as (keyof typeof PIPELINES)[])('generation %s', (name) => {
  const dir = PIPELINES[name].generation;
  const meta = JSON.parse(readFileSync(`${dir}/generation.json`, 'utf8')) as GoldenGeneration;
  const file = (): ReturnType<typeof golden> => golden(`${dir}/generation.safetensors`);
  let pipe: StableDiffusionPipeline;
  let ctx: GenerationContext;

  it('noun phrases and compel embeddings of prompt, phrases and ""', async () => {
    expect(extractNounPhrases(meta.prompt)).toEqual(meta.phrases);
    pipe = await StableDiffusionPipeline.load(await getDevice(), PIPELINES[name].dir);
    ctx = await GenerationContext.create(pipe, meta.prompt, meta.phrases);
    check(`${name} text_emb`, await ctx.textEmb.toArray(), file().readF32('text_emb'), 1e-4);
    check(`${name} neg_text_emb`, await ctx.negEmb.toArray(), file().readF32('neg_text_emb'), 1e-4);
    for (let i = 0; i < meta.phrases.length; i++) check(`${name} phrase_emb.${i}`, await ctx.phraseEmbs[i]!.toArray(), file().readF32(`phrase_emb.${i}`), 1e-4);
  });

  it.each([0, 1, 2])('step %i from the stored z_in', async (k) => {
    const ref = meta.steps[k]!;
    const f = file();
    const r = await generationStep(ctx, f.readF32(`step${k}.z_in`), ref.t, ref.next_t, {
      reweight: true,
      guidance: meta.guidance_scale,
      elboStrength: meta.elbo_strength,
      intermediates: true,
    });
    const im = r.intermediates!;
    expect(r.reweighted).toBe(true);
    check(`${name} step${k}.pred_all`, im.predAll!, f.readF32(`step${k}.pred_all`), 1e-3);
    im.predPhrases.forEach((p, i) => check(`${name} step${k}.pred_phrase.${i}`, p, f.readF32(`step${k}.pred_phrase.${i}`), 1e-3));
    check(`${name} step${k}.elbo`, r.elbo, f.readF32(`step${k}.elbo`), 1e-3);
    check(`${name} step${k}.weights_unrounded`, r.weightsUnrounded, f.readF32(`step${k}.weights_unrounded`), 1e-3);
    expect(r.weights).toEqual(ref.weights);
    expect(r.weightPrompt).toBe(ref.weight_prompt);
    check(`${name} step${k}.weight_prompt_emb`, im.weightPromptEmb, f.readF32(`step${k}.weight_prompt_emb`), 1e-3);
    check(`${name} step${k}.pred_cond_uncond`, im.predCondUncond, f.readF32(`step${k}.pred_cond_uncond`), 1e-3);
    check(`${name} step${k}.eps_cfg`, im.epsCfg, f.readF32(`step${k}.eps_cfg`), 1e-3);
    check(`${name} step${k}.z_out`, r.zOut, f.readF32(`step${k}.z_out`), 1e-3);
  });

  it('a step past elbo_timesteps uses weights 1.0 and no ELBO predictions', async () => {
    const ref = meta.steps[2]!;
    const r = await generationStep(ctx, file().readF32('step2.z_in'), ref.t, ref.next_t, { reweight: false, guidance: 7.5, elboStrength: 1.2 });
    expect(r.reweighted).toBe(false);
    expect(r.elbo).toEqual([]);
    expect(r.weights).toEqual([1, 1, 1]);
    expect(r.weightPrompt).toBe('(a red cat)1.0 and (a blue dog)1.0 on (a green sofa)1.0');
    ctx.release();
  });

  it('the chained run from latent_init: latent_final, decoded and image.png', async () => {
    const f = file();
    const chained = await generate(pipe, meta.prompt, {
      steps: meta.infer_timesteps,
      guidance: meta.guidance_scale,
      elboStrength: meta.elbo_strength,
      elboTimesteps: 50,
      latentInit: f.readF32('latent_init'),
      phrases: meta.phrases,
    });
    expect(chained.reweighting).toBe(true);
    expect(chained.warning).toBeUndefined();
    expect(chained.phrases).toEqual(meta.phrases);
    expect(chained.steps.map((s) => [s.t, s.nextT])).toEqual(meta.steps.map((s) => [s.t, s.next_t]));
    chained.steps.forEach((s, k) => {
      const ref = meta.steps[k]!;
      const d = maxAbsDiff(s.weights, ref.weights);
      if (d > 0) measured.push(`${name} chained step${k} weights ${JSON.stringify(s.weights)} vs ${JSON.stringify(ref.weights)} (rounding flip)`);
      expect(d, `chained step${k} weights`).toBeLessThanOrEqual(CHAIN_TOL[name].weight);
      if (d === 0) expect(s.weightPrompt).toBe(ref.weight_prompt);
    });
    chained.steps.forEach((s, k) => check(`${name} chained step${k}.elbo`, s.elbo, meta.steps[k]!.elbo, 1e-2));
    check(`${name} latent_final`, chained.latent, f.readF32('latent_final'), CHAIN_TOL[name].latent);
    check(`${name} decoded`, chained.decoded, f.readF32('decoded'), CHAIN_TOL[name].latent);
    const png = readPngRaw(`${dir}/image.png`);
    expect([chained.image.width, chained.image.height]).toEqual([png.width, png.height]);
    const d = maxAbsDiff(chained.image.data, png.data);
    measured.push(`${name} image.png (max abs, uint8): ${d}`);
    expect(d).toBeLessThanOrEqual(CHAIN_TOL[name].png);
  });

  it('without ELBO: all weights 1.0, no phrase predictions, and plain guidance', async () => {
    const r = await generate(pipe, meta.prompt, { steps: 1, noElbo: true, latentInit: file().readF32('latent_init') });
    expect(r.reweighting).toBe(false);
    expect(r.warning).toMatch(/no-elbo/);
    expect(r.steps[0]!.reweighted).toBe(false);
    expect(r.steps[0]!.weights).toEqual([1, 1, 1]);
  });
});
