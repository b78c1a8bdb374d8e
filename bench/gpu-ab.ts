// `npm run bench -- ab`: the 'gpu' variant's kernel choices side by side on one device, in
// one process, alternating between them (so a drifting clock hits both alike): the GEMM
// kernels (gpuGemmTuning.kernel v1 / v2) on SD 1.5 UNet conv and linear shapes, the
// attention kernels (attentionTuning.gpuKernel v1 / v2) on its attention shapes, then one
// UNet forward per combination and a by-shape profile of the fastest. Meant for a lent GPU
// (bench/gpu.sh runs it); on lavapipe it runs the 'gpu' kernels too, slowly.
import { Tensor, scope, type Device } from '../src/tensor/index.js';
import { conv2d } from '../src/kernels/conv.js';
import { gpuGemmTuning, linear } from '../src/kernels/matmul.js';
import { attention, attentionTuning } from '../src/kernels/attention.js';
import { UNet2DConditionModel, parseUNetConfig } from '../src/models/unet.js';
import { RandomWeights } from '../src/models/weights.js';
import { alternate, rand, row, type Choices } from './common.js';
import { SD15_UNET, printProfile, unetFlops } from './models.js';

type Kernel = 'v1' | 'v2';
export async function benchGpuAb(dev: Device, json: boolean, opts: { reps?: number; rounds?: number } = {}): Promise<void> {
  const reps = opts.reps ?? Number(process.env.AB_REPS ?? 10);
  const rounds = opts.rounds ?? Number(process.env.AB_ROUNDS ?? 5);
  // AB_ONLY=attention,unet (any of conv, linear, attention, unet) runs just those sections.
  const only = process.env.AB_ONLY?.split(',');
  const runs = (section: string): boolean => !only || only.includes(section);
  const gemmDefault = { ...gpuGemmTuning };
  const setAttn = (k: Kernel): void => {
    attentionTuning.gpuKernel = k;
  };
  const attnDefault = attentionTuning.gpuKernel;
  const setGemm = (k: Kernel, winograd: typeof gpuGemmTuning.winograd = 'off'): void => {
    gpuGemmTuning.kernel = k;
    gpuGemmTuning.winograd = winograd;
  };
  const gemmChoices: Choices = { 'v1': () => setGemm('v1'), 'v2': () => setGemm('v2') };
  const convChoices: Choices = { ...gemmChoices, 'wino-v2': () => setGemm('v2', 'all'), 'wino4-v2': () => setGemm('v2', 'f4') };
  const v2Default = { ...attentionTuning.gpuV2 };
  const setV2 = (o: Partial<typeof v2Default>): void => {
    setAttn('v2');
    attentionTuning.gpuV2 = { ...v2Default, ...o };
  };
  const attnChoices: Choices = {
    'v1': () => setAttn('v1'),
    'v2': () => setV2({}),
    'v2-R2': () => setV2({ R: 2 }),
    'v2-R4': () => setV2({ R: 4 }),
    'v2-WG64': () => setV2({ WG: 64 }),
    'v2-KB16': () => setV2({ KB: 16, tileBytes: 32768 }),
  };
  try {
    // 3x3 convs (stride 1, padding 1) and 1x1 convs of the SD 1.5 UNet at 64x64 latents.
    const convs: [ci: number, co: number, side: number, k: number][] = [
      [320, 320, 64, 3], [640, 320, 64, 3], [640, 640, 64, 3], [640, 640, 32, 3], [1920, 640, 32, 3],
      [1280, 1280, 16, 3], [2560, 1280, 16, 3], [1280, 1280, 8, 3], [2560, 1280, 8, 3], [960, 320, 64, 1], [2560, 1280, 8, 1],
    ];
    for (const [ci, co, side, k] of runs('conv') ? convs : []) {
      const x = Tensor.fromArray(dev, rand(ci * side * side, 1, 1), [1, ci, side, side]);
      const w = Tensor.fromArray(dev, rand(co * ci * k * k, 2, 0.05), [co, ci, k, k]);
      const bias = Tensor.fromArray(dev, rand(co, 3, 0.1), [co]);
      const fn = (): void => scope(() => void conv2d(x, w, { bias, padding: (k - 1) / 2, variant: 'gpu' }));
      row('conv2d', `${k}x${k} ${ci}->${co} at ${side}x${side}`, 2 * co * ci * k * k * side * side, await alternate(dev, k === 3 ? convChoices : gemmChoices, fn, reps, rounds), json);
      for (const t of [x, w, bias]) t.release();
    }
    Object.assign(gpuGemmTuning, gemmDefault);
    // nn.Linear layers: (rows, in) x (out, in)^T; the GEGLU projection as a plain 2F-column product.
    const linears: [rows: number, kin: number, kout: number][] = [
      [4096, 320, 320], [4096, 320, 2560], [4096, 1280, 320], [1024, 640, 640], [1024, 640, 5120], [256, 1280, 1280], [64, 1280, 1280], [77, 768, 1280],
    ];
    for (const [rows, kin, kout] of runs('linear') ? linears : []) {
      const x = Tensor.fromArray(dev, rand(rows * kin, 4, 1), [rows, kin]);
      const w = Tensor.fromArray(dev, rand(kout * kin, 5, 0.05), [kout, kin]);
      const fn = (): void => scope(() => void linear(x, w, undefined, { variant: 'gpu' }));
      row('linear', `(${rows}x${kin})@(${kin}x${kout})`, 2 * rows * kin * kout, await alternate(dev, gemmChoices, fn, reps, rounds), json);
      for (const t of [x, w]) t.release();
    }
    Object.assign(gpuGemmTuning, gemmDefault);
    // Self-attention at the four latent sizes, cross-attention to 77 tokens, and the collect
    // steps' head-mean probabilities at 64x64.
    const attns: [nq: number, nk: number, d: number, probs: boolean][] = [
      [4096, 4096, 40, false], [4096, 4096, 40, true], [1024, 1024, 80, false], [256, 256, 160, false], [64, 64, 160, false],
      [4096, 77, 40, false], [4096, 77, 40, true], [1024, 77, 80, false], [256, 77, 160, false],
    ];
    for (const [nq, nk, d, probs] of runs('attention') ? attns : []) {
      const H = 8;
      const q = Tensor.fromArray(dev, rand(nq * H * d, 6, 1), [1, nq, H * d]);
      const k = Tensor.fromArray(dev, rand(nk * H * d, 7, 1), [1, nk, H * d]);
      const v = Tensor.fromArray(dev, rand(nk * H * d, 8, 1), [1, nk, H * d]);
      const pr = probs ? Tensor.zeros(dev, [nq, nk]) : undefined;
      const fn = (): void => scope(() => void attention(q, k, v, H, { variant: 'gpu', probsOut: pr }));
      row('attention', `${nq}x${nk} H8 d${d}${probs ? ' +probs' : ''}`, 4 * H * nq * nk * d, await alternate(dev, attnChoices, fn, reps, rounds), json);
      if (probs) {
        // The head-mean probabilities' kernel: the 'gpu' one against lavapipe's (gpuProbs).
        const probsChoices: Choices = { 'probs gpu': () => void (attentionTuning.gpuProbs = true), 'probs cpu': () => void (attentionTuning.gpuProbs = false) };
        row('attention', `${nq}x${nk} H8 d${d} +probs (v2)`, 4 * H * nq * nk * d, await alternate(dev, probsChoices, fn, reps, rounds), json);
        attentionTuning.gpuProbs = true;
      }
      for (const t of [q, k, v, pr]) t?.release();
    }
    setAttn(attnDefault);

    if (!runs('unet')) return;
    // The whole UNet forward under each combination.
    const config = parseUNetConfig(SD15_UNET as Record<string, unknown>, 'sd15 unet config');
    const unet = UNet2DConditionModel.fromWeights(dev, config, new RandomWeights(dev, { matrixDtype: 'f32' }));
    const side = config.sampleSize;
    const sample = Tensor.fromArray(dev, rand(4 * side * side, 9, 1), [1, 4, side, side]);
    const ctx = Tensor.fromArray(dev, rand(77 * config.crossAttentionDim, 10, 0.5), [1, 77, config.crossAttentionDim]);
    const forward = (): void => scope(() => void unet.forward({ sample, timesteps: [500], encoderHiddenStates: ctx }));
    const combos: [string, () => void][] = [];
    for (const [g, setG] of Object.entries(convChoices)) for (const [a, setA] of Object.entries(attnChoices)) combos.push([`gemm ${g} attention ${a}`, () => (setG(), setA())]);
    // (each combination: 3 timed forwards, alternating with the others)
    const times = await alternate(dev, Object.fromEntries(combos), forward, 1, 3);
    const flops = unetFlops(config, side);
    let best = combos[0]!;
    for (const [key, set] of combos) {
      const ms = times.get(key)!;
      if (ms < times.get(best[0])!) best = [key, set];
      if (json) console.log(JSON.stringify({ model: 'unet', choice: key, seconds: Number((ms / 1000).toFixed(4)), tflops: Number((flops / ms / 1e9).toFixed(3)) }));
      else console.log(`unet forward  ${key.padEnd(28)} ${(ms / 1000).toFixed(4)} s  ${(flops / ms / 1e9).toFixed(2)} TFLOP/s`);
    }
    best[1]();
    await printProfile(dev, `one UNet forward (${best[0]})`, forward, 30);
    for (const t of [sample, ctx]) t.release();
    unet.release();
  } finally {
    Object.assign(gpuGemmTuning, gemmDefault);
    setAttn(attnDefault);
    attentionTuning.gpuV2 = v2Default;
  }
}
