// `npm run bench -- cpu-ab`: the 'cpu' variant's switches side by side, in one process,
// alternating between them (bench/common.ts `alternate`): on lavapipe a single figure says
// more about the host's load at that minute than about a kernel, and only alternated
// choices compare. Each row's first choice is the default; x1.10 means 10% faster than it.
//   matmul a from a texture or from its buffer (cpuGemmTuning.aTexture), f32 and f16 b
//   Winograd U in f16 or f32 for f16 weights (winogradTuning.f16U), F(2x2) convs
//   attention q/k/v from textures or buffers (attentionTuning.cpuTextures)
//   Winograd tiles in 32 MiB chunks or in chunks of one binding (winogradTuning.chunkBytes),
//   at the VAE encoder's largest conv and the UNet's 64x64 up-block conv
import { Tensor, type Device } from '../src/tensor/index.js';
import { conv2d } from '../src/kernels/conv.js';
import { cpuGemmTuning, matmul } from '../src/kernels/matmul.js';
import { winogradTuning } from '../src/kernels/winograd.js';
import { attention, attentionTuning } from '../src/kernels/attention.js';
import { alternate, rand, row } from './common.js';

export async function benchCpuAb(dev: Device, json: boolean, opts: { reps?: number; rounds?: number } = {}): Promise<void> {
  const reps = opts.reps ?? Number(process.env.AB_REPS ?? 3);
  const rounds = opts.rounds ?? Number(process.env.AB_ROUNDS ?? 6);
  const saved = { aTexture: cpuGemmTuning.aTexture, f16U: winogradTuning.f16U, attnTex: attentionTuning.cpuTextures, chunk: winogradTuning.chunkBytes };
  const f16 = dev.hasF16 ? (['f32', 'f16'] as const) : (['f32'] as const);
  try {
    const texChoices = { texture: () => void (cpuGemmTuning.aTexture = true), buffer: () => void (cpuGemmTuning.aTexture = false) };
    for (const [M, K, N] of [[4096, 320, 1280], [1024, 640, 640]] as const) {
      const a = Tensor.fromArray(dev, rand(M * K, 1, 1), [M, K]);
      for (const dt of f16) {
        const b = Tensor.fromArray(dev, rand(N * K, 2, 0.05), [N, K], dt);
        const t = await alternate(dev, texChoices, () => matmul(a, b, { transB: true }).release(), reps, rounds);
        row('matmul', `(${M}x${K})@(${K}x${N}) b^T ${dt}`, 2 * M * N * K, t, json, 'GFLOP/s');
        b.release();
      }
      a.release();
    }
    cpuGemmTuning.aTexture = saved.aTexture;

    if (dev.hasF16) {
      const uChoices = { 'f16 U': () => void (winogradTuning.f16U = true), 'f32 U': () => void (winogradTuning.f16U = false) };
      for (const [ci, co, side] of [[1280, 1280, 16], [2560, 1280, 8]] as const) {
        const x = Tensor.fromArray(dev, rand(ci * side * side, 3, 1), [1, ci, side, side]);
        const w = Tensor.fromArray(dev, rand(co * ci * 9, 4, 0.02), [co, ci, 3, 3], 'f16');
        const t = await alternate(dev, uChoices, () => conv2d(x, w, { padding: 1 }).release(), reps, rounds);
        row('conv2d', `3x3 ${ci}->${co} at ${side}x${side} f16`, 2 * co * ci * 9 * side * side, t, json, 'GFLOP/s');
        x.release();
        w.release();
      }
      winogradTuning.f16U = saved.f16U;
    }

    const chunkChoices = { '32 MiB chunks': () => void (winogradTuning.chunkBytes = 32 * 2 ** 20), 'binding chunks': () => void (winogradTuning.chunkBytes = Infinity) };
    for (const [B, ci, co, side] of [[1, 128, 128, 512], [2, 640, 320, 64]] as const) {
      const x = Tensor.fromArray(dev, rand(B * ci * side * side, 8, 1), [B, ci, side, side]);
      const w = Tensor.fromArray(dev, rand(co * ci * 9, 9, 0.02), [co, ci, 3, 3]);
      const t = await alternate(dev, chunkChoices, () => conv2d(x, w, { padding: 1 }).release(), 1, Math.min(rounds, 4));
      row('conv2d', `3x3 ${ci}->${co} at ${side}x${side} batch ${B}`, 2 * B * co * ci * 9 * side * side, t, json, 'GFLOP/s');
      x.release();
      w.release();
    }
    winogradTuning.chunkBytes = saved.chunk;

    const attnChoices = { textures: () => void (attentionTuning.cpuTextures = true), buffers: () => void (attentionTuning.cpuTextures = false) };
    const n = 4096;
    const H = 8;
    const q = Tensor.fromArray(dev, rand(n * 320, 5, 1), [1, n, 320]);
    const k = Tensor.fromArray(dev, rand(n * 320, 6, 1), [1, n, 320]);
    const v = Tensor.fromArray(dev, rand(n * 320, 7, 1), [1, n, 320]);
    const t = await alternate(dev, attnChoices, () => attention(q, k, v, H).release(), 1, rounds);
    row('attention', `${n}x${n} H${H} d40`, 4 * n * n * 320, t, json, 'GFLOP/s');
    for (const x of [q, k, v]) x.release();
  } finally {
    cpuGemmTuning.aTexture = saved.aTexture;
    winogradTuning.f16U = saved.f16U;
    attentionTuning.cpuTextures = saved.attnTex;
    winogradTuning.chunkBytes = saved.chunk;
  }
}
