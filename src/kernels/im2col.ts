// Strided convs on lavapipe as im2col + matmul, and stride-1 ones on few pixels per call
// (im2colTuning.s1MaxPixels: the UNet's 8x8 level at batch 1, where Winograd's per-call
// weight transform outweighs its saving): for a chunk of output pixels, the kh x kw
// input patches are copied into rows of K = Ci * kh * kw values (shaders/im2col.wgsl), then
// one matmul on the kernel's fastest path (its b read along K and shared by the lanes, SG_B):
//   weights as stored (Co, Ci, kh, kw), f32 or f16:  out[b]^T (pixels, Co) = col @ W^T,
//     written through strides as NCHW (as conv2d's 1x1 path);
//   prepared (ci, ky, kx, co) f32 weights:          out[b] (Co, pixels) = W @ col^T,
//     W read as a transposed a, the bias by row. The direct kernel does the
// same arithmetic at ~7-9 GFLOP/s on the VAE's and UNet's stride-2 downsamplers; this path
// pays one extra write and read of the patches (9x the input, in chunks of COL_BYTES).
import { GpuError, Tensor, grid1d, uniforms, type Device } from '../tensor/index.js';
import { buildShader, maxBindingBytes, runGemm, windowFor, type Act, type Operand } from './matmul.js';

const ENABLED = process.env.ELBO_IM2COL !== '0';
/** Bytes of one chunk of patch rows (a cap on the extra memory). */
const COL_BYTES = 32 * 2 ** 20;

/** `c4` false (or ELBO_IM2COL_C4=0) keeps the generic per-vec4 kernel for all channel counts. */
export const im2colTuning = {
  c4: process.env.ELBO_IM2COL_C4 !== '0',
  /**
   * Stride-1 convs on at most this many pixels per call (batch x H x W) take im2col +
   * matmul instead of Winograd (ELBO_IM2COL_S1_PIXELS; 0: never). SD 1.5 UNet at batch 1,
   * three alternated pairs: f32 8.70-9.12 -> 8.68-8.75 s, f16 weights 8.45-8.69 -> 7.92-8.19
   * s; at batch 2 (128 pixels at 8x8) im2col lost (all kernels 16.4 -> 18.4 s): docs/KERNELS.md.
   */
  s1MaxPixels: s1PixelsFrom(process.env.ELBO_IM2COL_S1_PIXELS),
};

/** ELBO_IM2COL_S1_PIXELS: a number of pixels >= 0 when set, else 64. */
export function s1PixelsFrom(value: string | undefined): number {
  if (value === undefined || value.trim() === '') return 64;
  const n = Number(value);
  if (!Number.isFinite(n) || n < 0) throw new GpuError(`ELBO_IM2COL_S1_PIXELS=${value}: expected a number of pixels >= 0`);
  return n;
}

export interface Im2colArgs {
  x: Tensor; // (B, Ci, H, W) f32
  w: Tensor; // weight data: (Co, Ci, kh, kw) f32 or f16, or prepared (ci, ky, kx, co) f32
  prepared: boolean;
  out: Tensor; // (B, Co, Ho, Wo) f32
  bias?: Tensor;
  residual?: Tensor;
  act: Act;
  B: number; Ci: number; Co: number; H: number; W: number; Ho: number; Wo: number;
  kh: number; kw: number; stride: number; pt: number; pl: number;
  label: string;
}

/**
 * Whether conv2d's 'cpu' variant takes im2col + matmul: strides of 2 and more, or stride 1
 * on at most s1MaxPixels input pixels per call (batch x H x W), with a kernel larger than
 * 1x1, K = Ci kh kw a multiple of 4, one image of x within one storage binding; prepared
 * weights only in f32 (the matmul kernel reads its a operand as f32).
 */
export function im2colApplies(dev: Device, a: { B: number; Ci: number; H: number; W: number; kh: number; kw: number; stride: number; wDtype: string; prepared: boolean }): boolean {
  const small = a.stride === 1 && a.B * a.H * a.W <= im2colTuning.s1MaxPixels;
  if (!ENABLED || dev.kind !== 'cpu' || (a.stride < 2 && !small) || a.kh * a.kw < 2 || (a.prepared && a.wDtype !== 'f32')) return false;
  const K = a.Ci * a.kh * a.kw;
  return K % 4 === 0 && a.Ci * a.H * a.W * 4 <= maxBindingBytes(dev) && K * 4 * 4 <= Math.min(COL_BYTES, maxBindingBytes(dev));
}

export function convIm2col(dev: Device, g: Im2colArgs): void {
  const { x, out, B, Ci, Co, H, W, Ho, Wo, kh, kw } = g;
  const K = Ci * kh * kw;
  const P = Ho * Wo;
  // pixels per chunk: a multiple of 4 (the matmul's b rows stay vec4-aligned)
  const per = Math.max(4, Math.floor(Math.min(COL_BYTES, maxBindingBytes(dev)) / (K * 4) / 4) * 4);
  const col = Tensor.empty(dev, [Math.min(per, P), K], 'f32', 'im2col patches');
  try {
    // Channels in groups of 4: the kernel with kernel size and stride baked in.
    const c4 = im2colTuning.c4 && Ci % 4 === 0;
    const pipeline = c4
      ? dev.pipeline(`im2col_c4:${kh}x${kw}s${g.stride}`, () => buildShader('im2col_c4', {}, { KH: kh, KW: kw, S: g.stride }))
      : dev.pipeline('im2col', () => buildShader('im2col', {}));
    for (let b = 0; b < B; b++) {
      const xs = windowFor(dev, x, b * Ci * H * W, (b + 1) * Ci * H * W - 1);
      for (let n0 = 0; n0 < P; n0 += per) {
        const nn = Math.min(per, P - n0);
        const [nx, ny] = grid1d(Math.ceil((nn * (c4 ? Ci / 4 : K / 4)) / 64));
        dev.dispatch({
          label: `${g.label} im2col`, family: 'im2col', pipeline,
          uniforms: uniforms([['u', Ci], ['u', H], ['u', W], ['u', Wo], ['u', kh], ['u', kw], ['u', g.stride], ['u', g.pt], ['u', g.pl], ['u', n0], ['u', nn], ['u', K / 4], ['u', xs.off], ['u', nx], ['u', 0], ['u', 0]]),
          bindings: [xs.binding, col.binding()], workgroups: [nx, ny],
        });
        const off = b * Co * P + n0;
        const common = {
          label: `${g.label} im2col matmul`, family: 'im2col matmul', K, batch: 1,
          res: g.residual ? { t: g.residual, off } : undefined,
          bias: g.bias ? { t: g.bias, off: 0 } : undefined,
          alpha: 1, act: g.act, variant: 'cpu' as const,
        };
        const colT: Operand = { t: col, off: 0, rs: 1, cs: K, bs: 0 }; // (K, pixels)
        if (g.prepared) {
          // (Co, pixels) = W (Co, K), element (co, k) at k * Co + co, @ col^T
          runGemm(dev, { ...common, M: Co, N: nn, a: { t: g.w, off: 0, rs: 1, cs: Co, bs: 0 }, b: colT, out: { t: out, off, rs: P, cs: 1, bs: 0 }, biasRow: true });
        } else {
          // (pixels, Co) = col (pixels, K) @ W^T, W (Co, K) as the nn.Linear-layout b
          runGemm(dev, { ...common, M: nn, N: Co, a: { t: col, off: 0, rs: K, cs: 1, bs: 0 }, b: { t: g.w, off: 0, rs: 1, cs: K, bs: 0 }, out: { t: out, off, rs: 1, cs: P, bs: 0 } });
        }
      }
    }
  } finally {
    col.release();
  }
}
