// The DDIM noise schedule and the deterministic (eta = 0) DDIM step that ELBO-T2IAlign uses:
// `utils/diffusion.py` builds `DDIMScheduler.from_config(pipe.scheduler.config)` from whatever
// scheduler the pipeline ships (PNDM for SD 1.x, DDIM for SD 2.x, EulerDiscrete for SDXL) and
// only reads its `alphas_cumprod` and `prediction_type`; the step itself is the repo's own
// `Diffusion.step`, not `DDIMScheduler.step`.
//
// Everything is float32 and bit-exact with torch 1.13 on CPU, which means copying its order of
// operations: every tensor op rounds to float32 on its own (no fusion across ops), but inside
// one CPU kernel the compiler fuses `a + b * c` into an FMA (see `linspaceF32`).

import { cfg, isBool, isInt, isNum, oneOf } from './weights.js';

export type PredictionType = 'epsilon' | 'v_prediction' | 'sample';
export type BetaSchedule = 'linear' | 'scaled_linear' | 'squaredcos_cap_v2';

const f32 = Math.fround;

/**
 * `torch.linspace(start, end, n, dtype=float32)` as torch 1.13's CPU kernel computes it:
 * step = (end - start) / (n - 1) in float32; the first half counts up from `start`, the second
 * half down from `end`. The kernel is vectorised with 8-wide AVX2 vectors over blocks of 16
 * (the last n mod 16 values take the scalar path): each vector's base value is
 * `start + step * i` (or `end - step * (n - 1 - i)`), compiled to one FMA, and its lanes are
 * `base + j * step`. Reproduces the golden `betas` bit for bit; the plain formula differs in
 * about a quarter of the values by one ulp.
 */
export function linspaceF32(start: number, end: number, n: number): Float32Array {
  const s = f32(start);
  const e = f32(end);
  const out = new Float32Array(n);
  if (n === 1) {
    out[0] = s;
    return out;
  }
  const step = f32(f32(e - s) / (n - 1));
  const half = Math.floor(n / 2);
  // s + step*i exactly, rounded once: step*i (24 + 10 bits) and the sum fit a double exactly.
  const at = (i: number): number => (i < half ? f32(s + step * i) : f32(e - step * (n - 1 - i)));
  const V = 8;
  const vecEnd = Math.floor(n / (2 * V)) * 2 * V;
  for (let b = 0; b < vecEnd; b += V) {
    const base = at(b);
    for (let j = 0; j < V; j++) out[b + j] = f32(base + j * step);
  }
  for (let i = vecEnd; i < n; i++) out[i] = at(i);
  return out;
}

/** diffusers' `betas_for_alpha_bar` (Glide cosine schedule), computed in double, stored as float32. */
function cosineBetas(n: number, maxBeta = 0.999): Float32Array {
  const alphaBar = (t: number): number => Math.cos(((t + 0.008) / 1.008) * Math.PI / 2) ** 2;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.min(1 - alphaBar((i + 1) / n) / alphaBar(i / n), maxBeta);
  return out;
}

/**
 * The training noise schedule of a Stable Diffusion pipeline and the DDIM arithmetic on it.
 * Arrays are indexed by the integer timestep 0..numTrainTimesteps-1.
 */
export class DDIMSchedule {
  readonly numTrainTimesteps: number;
  readonly betaSchedule: BetaSchedule;
  readonly predictionType: PredictionType;
  readonly setAlphaToOne: boolean;
  readonly stepsOffset: number;
  /** Recorded only: `Diffusion.step` never clips (DDIM's default for a config without the key is true). */
  readonly clipSample: boolean;
  readonly betas: Float32Array;
  /** ᾱ_t = cumprod(1 - β) (torch accumulates the product in double and rounds each output). */
  readonly alphasCumprod: Float32Array;
  /** sqrt(ᾱ_t): `Diffusion.alphas`, the signal scale of z_t. */
  readonly sqrtAlphasCumprod: Float32Array;
  /** sqrt(1 - ᾱ_t): `Diffusion.sigmas`, the noise scale of z_t. */
  readonly sqrtOneMinusAlphasCumprod: Float32Array;
  /** ᾱ used for a step to a timestep < 0: 1 with `set_alpha_to_one`, else ᾱ_0. */
  readonly finalAlphaCumprod: number;

  private constructor(opts: {
    numTrainTimesteps: number;
    betaSchedule: BetaSchedule;
    predictionType: PredictionType;
    setAlphaToOne: boolean;
    stepsOffset: number;
    clipSample: boolean;
    betas: Float32Array;
  }) {
    this.numTrainTimesteps = opts.numTrainTimesteps;
    this.betaSchedule = opts.betaSchedule;
    this.predictionType = opts.predictionType;
    this.setAlphaToOne = opts.setAlphaToOne;
    this.stepsOffset = opts.stepsOffset;
    this.clipSample = opts.clipSample;
    this.betas = opts.betas;
    const n = this.betas.length;
    this.alphasCumprod = new Float32Array(n);
    this.sqrtAlphasCumprod = new Float32Array(n);
    this.sqrtOneMinusAlphasCumprod = new Float32Array(n);
    let acc = 1;
    for (let i = 0; i < n; i++) {
      acc *= f32(1 - this.betas[i]!); // alphas = 1.0 - betas is a float32 tensor
      const a = f32(acc);
      this.alphasCumprod[i] = a;
      this.sqrtAlphasCumprod[i] = f32(Math.sqrt(a));
      this.sqrtOneMinusAlphasCumprod[i] = f32(Math.sqrt(f32(1 - a)));
    }
    this.finalAlphaCumprod = this.setAlphaToOne ? 1 : this.alphasCumprod[0]!;
  }

  /**
   * Builds the schedule from a pipeline's `scheduler/scheduler_config.json` (any of the SD
   * 1.x / 2.x / XL scheduler classes), with `DDIMScheduler`'s defaults for absent keys, as
   * `DDIMScheduler.from_config` does. Keys that only other schedulers or `DDIMScheduler.step`
   * read (timestep_spacing, interpolation_type, skip_prk_steps, thresholding, ...) are ignored:
   * the method never calls them. `where` names the file in error messages.
   */
  static fromConfig(config: Record<string, unknown>, where: string): DDIMSchedule {
    const n = cfg(config, 'num_train_timesteps', 1000, where, (v) => isInt(v) && (v as number) >= 2);
    const betaStart = cfg(config, 'beta_start', 0.0001, where, (v) => isNum(v) && (v as number) > 0 && (v as number) < 1);
    const betaEnd = cfg(config, 'beta_end', 0.02, where, (v) => isNum(v) && (v as number) > 0 && (v as number) < 1);
    const betaSchedule = cfg<BetaSchedule>(config, 'beta_schedule', 'linear', where, oneOf('linear', 'scaled_linear', 'squaredcos_cap_v2'));
    const predictionType = cfg<PredictionType>(config, 'prediction_type', 'epsilon', where, oneOf('epsilon', 'v_prediction', 'sample'));
    const setAlphaToOne = cfg(config, 'set_alpha_to_one', true, where, isBool);
    const stepsOffset = cfg(config, 'steps_offset', 0, where, isInt);
    const clipSample = cfg(config, 'clip_sample', true, where, isBool);
    cfg(config, 'rescale_betas_zero_snr', false, where, (v) => v === false);
    const trained = cfg<number[] | null>(config, 'trained_betas', null, where, (v) => Array.isArray(v) && v.length === n && v.every(isNum));

    let betas: Float32Array;
    if (trained) betas = Float32Array.from(trained);
    else if (betaSchedule === 'linear') betas = linspaceF32(betaStart, betaEnd, n);
    else if (betaSchedule === 'scaled_linear') {
      // linspace(sqrt(start), sqrt(end)) ** 2: pow with exponent 2 is x * x in float32.
      betas = linspaceF32(Math.sqrt(betaStart), Math.sqrt(betaEnd), n);
      for (let i = 0; i < n; i++) betas[i] = f32(betas[i]! * betas[i]!);
    } else betas = cosineBetas(n);
    return new DDIMSchedule({ numTrainTimesteps: n, betaSchedule, predictionType, setAlphaToOne, stepsOffset, clipSample, betas });
  }

  /** ᾱ_t; t < 0 gives `finalAlphaCumprod`. */
  alphaCumprod(t: number): number {
    if (!Number.isInteger(t) || t >= this.numTrainTimesteps) {
      throw new Error(`scheduler: timestep ${t} is not an integer in [0, ${this.numTrainTimesteps - 1}]`);
    }
    return t < 0 ? this.finalAlphaCumprod : this.alphasCumprod[t]!;
  }

  /** sqrt(ᾱ_t), sqrt(1 - ᾱ_t), 1 - ᾱ_t in float32, as the torch expressions give them. */
  private coeffs(t: number): { sa: number; sb: number; b: number } {
    const a = this.alphaCumprod(t);
    const b = f32(1 - a);
    return { sa: f32(Math.sqrt(a)), sb: f32(Math.sqrt(b)), b };
  }

  /** z_t = sqrt(ᾱ_t)·z0 + sqrt(1-ᾱ_t)·eps (`Diffusion.noise_input`). Returns a new array. */
  addNoise(z0: Float32Array, eps: Float32Array, t: number): Float32Array {
    checkLen('addNoise', z0, eps);
    const a = this.sqrtAlphasCumprod[this.index(t)]!;
    const s = this.sqrtOneMinusAlphasCumprod[this.index(t)]!;
    const out = new Float32Array(z0.length);
    for (let i = 0; i < out.length; i++) out[i] = f32(f32(a * z0[i]!) + f32(s * eps[i]!));
    return out;
  }

  /**
   * The noise prediction ε from a model output in this schedule's `predictionType`, at z_t and
   * timestep t (as `Diffusion.get_elbo` / `Diffusion.step` derive it). Returns a new array.
   *   epsilon: ε = out;  v_prediction: ε = sqrt(ᾱ)·v + sqrt(1-ᾱ)·z_t;
   *   sample:  ε = (z_t - sqrt(ᾱ)·x0) / sqrt(1-ᾱ)
   */
  toEpsilon(out: Float32Array, zt: Float32Array, t: number): Float32Array {
    checkLen('toEpsilon', out, zt);
    const { sa, sb } = this.coeffs(t);
    const r = new Float32Array(out.length);
    switch (this.predictionType) {
      case 'epsilon':
        r.set(out);
        break;
      case 'v_prediction':
        for (let i = 0; i < r.length; i++) r[i] = f32(f32(sa * out[i]!) + f32(sb * zt[i]!));
        break;
      case 'sample':
        for (let i = 0; i < r.length; i++) r[i] = f32(f32(zt[i]! - f32(sa * out[i]!)) / sb);
        break;
    }
    return r;
  }

  /**
   * The predicted clean latent x0 from a model output (diffusers `DDIMScheduler.step`'s
   * `pred_original_sample`). Returns a new array.
   *   epsilon: x0 = (z_t - sqrt(1-ᾱ)·ε) / sqrt(ᾱ);  v_prediction: x0 = sqrt(ᾱ)·z_t - sqrt(1-ᾱ)·v;
   *   sample:  x0 = out
   */
  toX0(out: Float32Array, zt: Float32Array, t: number): Float32Array {
    checkLen('toX0', out, zt);
    const { sa, sb } = this.coeffs(t);
    const r = new Float32Array(out.length);
    switch (this.predictionType) {
      case 'epsilon':
        for (let i = 0; i < r.length; i++) r[i] = f32(f32(zt[i]! - f32(sb * out[i]!)) / sa);
        break;
      case 'v_prediction':
        for (let i = 0; i < r.length; i++) r[i] = f32(f32(sa * zt[i]!) - f32(sb * out[i]!));
        break;
      case 'sample':
        r.set(out);
        break;
    }
    return r;
  }

  /**
   * One deterministic DDIM step (eta = 0) from z at timestep t to nextT, exactly as the
   * original `Diffusion.step`: `modelOutput` is the UNet output (after classifier-free
   * guidance) in this schedule's prediction type; it is turned into ε, then
   *   x0 = (z - sqrt(1-ᾱ_t)·ε) / sqrt(ᾱ_t),  z' = sqrt(ᾱ_next)·x0 + sqrt(1-ᾱ_next)·ε.
   * Works in both directions (nextT > t is DDIM inversion). nextT < 0 uses
   * `finalAlphaCumprod` (the original clamps next_t at 0 and never gets there).
   * No clipping of x0, whatever `clip_sample` says: the original does not clip.
   */
  ddimStep(modelOutput: Float32Array, z: Float32Array, t: number, nextT: number): Float32Array {
    checkLen('ddimStep', modelOutput, z);
    const { sa, sb } = this.coeffs(t);
    const aNext = this.alphaCumprod(nextT);
    const saNext = f32(Math.sqrt(aNext));
    const sbNext = f32(Math.sqrt(f32(1 - aNext)));
    const eps = this.toEpsilon(modelOutput, z, t);
    const r = new Float32Array(z.length);
    for (let i = 0; i < r.length; i++) {
      const e = eps[i]!;
      const x0 = f32(f32(z[i]! - f32(sb * e)) / sa);
      r[i] = f32(f32(saNext * x0) + f32(sbNext * e));
    }
    return r;
  }

  private index(t: number): number {
    if (!Number.isInteger(t) || t < 0 || t >= this.numTrainTimesteps) {
      throw new Error(`scheduler: timestep ${t} is not an integer in [0, ${this.numTrainTimesteps - 1}]`);
    }
    return t;
  }
}

function checkLen(op: string, a: Float32Array, b: Float32Array): void {
  if (a.length !== b.length) throw new Error(`scheduler.${op}: arrays differ in length: ${a.length} vs ${b.length}`);
}
