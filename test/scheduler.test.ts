import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { SafeTensorsFile } from '../src/io/safetensors.js';
import { DDIMSchedule, linspaceF32 } from '../src/models/scheduler.js';

const FIX = new URL('./fixtures/', import.meta.url).pathname;
const PIPELINES: Record<string, string> = {
  'sd15-tiny': new URL('../weights/sd15-tiny/scheduler/scheduler_config.json', import.meta.url).pathname,
  'sd21-tiny': `${FIX}sd21-tiny/scheduler/scheduler_config.json`,
};

function load(path: string): DDIMSchedule {
  return DDIMSchedule.fromConfig(JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>, 'scheduler/scheduler_config.json');
}

/** Count of positions where a and b are not bit-identical float32 values. */
function mismatches(a: Float32Array, b: Float32Array): number {
  expect(a.length).toBe(b.length);
  let n = 0;
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) n++;
  return n;
}

describe('DDIM schedule', () => {
  for (const [name, cfgPath] of Object.entries(PIPELINES)) {
    it(`${name}: the four tables equal the golden float32 values bit for bit`, () => {
      const s = load(cfgPath);
      const ref = SafeTensorsFile.open(`${FIX}${name}/references/scheduler.safetensors`);
      expect(mismatches(s.betas, ref.readF32('betas'))).toBe(0);
      expect(mismatches(s.alphasCumprod, ref.readF32('alphas_cumprod'))).toBe(0);
      expect(mismatches(s.sqrtAlphasCumprod, ref.readF32('sqrt_alphas_cumprod'))).toBe(0);
      expect(mismatches(s.sqrtOneMinusAlphasCumprod, ref.readF32('sqrt_one_minus_alphas_cumprod'))).toBe(0);
      ref.close();
    });

    it(`${name}: ddimStep reproduces the golden generation steps bit for bit`, () => {
      const s = load(cfgPath);
      const gen = JSON.parse(readFileSync(`${FIX}${name}/generation/generation.json`, 'utf8')) as { steps: { t: number; next_t: number }[] };
      const ref = SafeTensorsFile.open(`${FIX}${name}/generation/generation.safetensors`);
      gen.steps.forEach((st, k) => {
        const out = s.ddimStep(ref.readF32(`step${k}.eps_cfg`), ref.readF32(`step${k}.z_in`), st.t, st.next_t);
        expect(mismatches(out, ref.readF32(`step${k}.z_out`))).toBe(0);
        if (k + 1 < gen.steps.length) expect(mismatches(out, ref.readF32(`step${k + 1}.z_in`))).toBe(0);
      });
      ref.close();
    });
  }

  it('reads the prediction type and DDIM defaults for absent keys', () => {
    expect(load(PIPELINES['sd15-tiny']!).predictionType).toBe('epsilon');
    expect(load(PIPELINES['sd21-tiny']!).predictionType).toBe('v_prediction');
    const d = DDIMSchedule.fromConfig({}, 'x.json');
    expect(d.numTrainTimesteps).toBe(1000);
    expect(d.betaSchedule).toBe('linear');
    expect(d.betas[0]).toBe(Math.fround(0.0001));
    expect(d.betas[999]).toBe(Math.fround(0.02));
    expect(d.setAlphaToOne).toBe(true);
    expect(d.finalAlphaCumprod).toBe(1);
    expect(d.clipSample).toBe(true);
    // SDXL's EulerDiscreteScheduler keys: the extra keys are ignored
    const xl = DDIMSchedule.fromConfig(
      { _class_name: 'EulerDiscreteScheduler', beta_schedule: 'scaled_linear', beta_start: 0.00085, beta_end: 0.012, interpolation_type: 'linear', num_train_timesteps: 1000, prediction_type: 'epsilon', sample_max_value: 1.0, set_alpha_to_one: false, skip_prk_steps: true, steps_offset: 1, timestep_spacing: 'leading', trained_betas: null, use_karras_sigmas: false },
      'x.json',
    );
    expect(mismatches(xl.alphasCumprod, load(PIPELINES['sd15-tiny']!).alphasCumprod)).toBe(0);
    expect(xl.finalAlphaCumprod).toBe(xl.alphasCumprod[0]);
  });

  it('squaredcos_cap_v2 and trained_betas', () => {
    const c = DDIMSchedule.fromConfig({ beta_schedule: 'squaredcos_cap_v2' }, 'x.json');
    expect(c.betas[999]).toBe(Math.fround(0.999)); // capped at max_beta
    expect(c.betas[0]).toBeCloseTo(1 - Math.cos((1 / 1000 + 0.008) / 1.008 * Math.PI / 2) ** 2 / Math.cos(0.008 / 1.008 * Math.PI / 2) ** 2, 9);
    for (let i = 1; i < 1000; i++) expect(c.alphasCumprod[i]!).toBeLessThanOrEqual(c.alphasCumprod[i - 1]!);
    const tb = DDIMSchedule.fromConfig({ num_train_timesteps: 3, trained_betas: [0.1, 0.2, 0.3] }, 'x.json');
    expect(Array.from(tb.betas)).toEqual([0.1, 0.2, 0.3].map(Math.fround));
    expect(tb.alphasCumprod[2]).toBe(Math.fround(0.9 * 0.8 * 0.7));
  });

  it('linspaceF32 hits both ends exactly', () => {
    const l = linspaceF32(0.1, 0.7, 37);
    expect(l[0]).toBe(Math.fround(0.1));
    expect(l[36]).toBe(Math.fround(0.7));
    expect(linspaceF32(2, 5, 1)[0]).toBe(2);
  });

  it('prediction conversions invert each other and the noising', () => {
    const n = 64;
    const z0 = Float32Array.from({ length: n }, (_, i) => Math.sin(i * 1.3));
    const eps = Float32Array.from({ length: n }, (_, i) => Math.cos(i * 0.7));
    for (const pt of ['epsilon', 'v_prediction', 'sample'] as const) {
      const s = DDIMSchedule.fromConfig({ beta_schedule: 'scaled_linear', beta_start: 0.00085, beta_end: 0.012, prediction_type: pt }, 'x.json');
      for (const t of [1, 500, 999]) {
        const zt = s.addNoise(z0, eps, t);
        const a = Math.sqrt(s.alphasCumprod[t]!);
        const b = Math.sqrt(1 - s.alphasCumprod[t]!);
        // what a perfect model outputs in this parametrisation
        const out = pt === 'epsilon' ? eps : pt === 'sample' ? z0 : eps.map((e, i) => a * e - b * z0[i]!);
        const e2 = s.toEpsilon(out, zt, t);
        const x2 = s.toX0(out, zt, t);
        // sample prediction divides by sqrt(1-ᾱ_1) ≈ 0.03: errors are amplified
        const tol = pt === 'sample' && t === 1 ? 1e-3 : 2e-4;
        for (let i = 0; i < n; i++) {
          expect(Math.abs(e2[i]! - eps[i]!)).toBeLessThan(tol);
          expect(Math.abs(x2[i]! - z0[i]!)).toBeLessThan(t === 999 && pt === 'epsilon' ? 2e-3 : 2e-4);
        }
        // stepping to nextT with a perfect model lands on the noised latent at nextT
        const step = s.ddimStep(out, zt, t, 0);
        const want = s.addNoise(z0, eps, 0);
        for (let i = 0; i < n; i++) expect(Math.abs(step[i]! - want[i]!)).toBeLessThan(t === 999 && pt === 'epsilon' ? 2e-3 : 1e-3);
      }
    }
  });

  it('errors name the key and the value', () => {
    expect(() => DDIMSchedule.fromConfig({ beta_schedule: 'sigmoid' }, 'scheduler/scheduler_config.json')).toThrow(
      /scheduler\/scheduler_config.json: unsupported value for "beta_schedule": "sigmoid"/,
    );
    expect(() => DDIMSchedule.fromConfig({ prediction_type: 'flow' }, 'a.json')).toThrow(/"prediction_type": "flow"/);
    expect(() => DDIMSchedule.fromConfig({ rescale_betas_zero_snr: true }, 'a.json')).toThrow(/"rescale_betas_zero_snr": true/);
    expect(() => DDIMSchedule.fromConfig({ num_train_timesteps: 2.5 }, 'a.json')).toThrow(/"num_train_timesteps"/);
    expect(() => DDIMSchedule.fromConfig({ trained_betas: [0.1] }, 'a.json')).toThrow(/"trained_betas"/);
    expect(() => DDIMSchedule.fromConfig({ set_alpha_to_one: 'yes' }, 'a.json')).toThrow(/"set_alpha_to_one": "yes"/);
    const s = DDIMSchedule.fromConfig({}, 'a.json');
    expect(() => s.ddimStep(new Float32Array(2), new Float32Array(3), 10, 0)).toThrow(/2 vs 3/);
    expect(() => s.ddimStep(new Float32Array(2), new Float32Array(2), 1000, 0)).toThrow(/timestep 1000/);
  });
});
