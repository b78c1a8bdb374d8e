// 3x3 convolution, stride 1, padding 1, by Winograd's F(2x2, 3x3): per 2x2 output tile the
// 3x3 conv becomes 16 elementwise products in a transformed domain, which over all tiles and
// channels are 16 independent matrix products (tiles, Ci) @ (Ci, Co): one batched matmul with
// 2.25x fewer multiply-adds than the direct conv, run by the engine's fastest kernel.
//   U[e] = G g G^T      (shaders/winograd_weight.wgsl, per call: cheap next to the conv)
//   V[e] = B^T d B      (shaders/winograd_input.wgsl)
//   M[e] = V[e] @ U[e]^T (matmul, batch 16)
//   y    = A^T M A (+ bias, SiLU, residual)  (shaders/winograd_output.wgsl)
// Used by conv2d's 'cpu' variant where it pays (see winogradApplies); the direct kernel stays
// the reference path and covers every other case.
import { Tensor, grid1d, uniforms, type Device } from '../tensor/index.js';
import { ACT_CODE, FLAG, buildShader, dummy, matmul, maxBindingBytes, type Act } from './matmul.js';

/** Output tiles below which the direct kernel is used (per-call weight transform dominates). */
const DEFAULT_MIN_TILES = Number(process.env.ELBO_WINOGRAD_MIN_TILES ?? 16);
let minTiles = DEFAULT_MIN_TILES;
const ENABLED = process.env.ELBO_WINOGRAD !== '0';

/** Tests: take the Winograd path from `n` tiles on (Infinity: never; undefined: the default). */
export function setWinogradMinTiles(n: number | undefined): void {
  minTiles = n ?? DEFAULT_MIN_TILES;
}

export interface WinogradArgs {
  x: Tensor; // (B, Ci, H, W) f32
  w: Tensor; // weight data, f32 or f16
  /** element strides of co, ci and tap (3 * ky + kx) in w */
  wStrides: [number, number, number];
  out: Tensor; // (B, Co, H, W) f32
  bias?: Tensor;
  residual?: Tensor;
  act: Act;
  B: number; Ci: number; Co: number; H: number; W: number;
  label: string;
}

/**
 * Whether conv2d should take the Winograd path: 3x3, stride 1, padding 1 on all sides,
 * channels multiples of 4, activation none or SiLU, enough tiles, the input, output and
 * transformed weight each within one storage binding (the transformed input and the matmul
 * output go in chunks of tiles; inputs above one binding, e.g. the VAE's 128 channels at
 * 512x512, keep the direct kernel and its windows).
 */
export function winogradApplies(dev: Device, a: { B: number; Ci: number; Co: number; H: number; W: number; kh: number; kw: number; stride: number; pads: number[]; act: Act }): boolean {
  if (!ENABLED || dev.kind !== 'cpu') return false;
  if (a.kh !== 3 || a.kw !== 3 || a.stride !== 1 || a.pads.some((p) => p !== 1)) return false;
  if (a.Ci % 4 !== 0 || a.Co % 4 !== 0 || (a.act !== 'none' && a.act !== 'silu')) return false;
  const tiles = a.B * Math.ceil(a.H / 2) * Math.ceil(a.W / 2);
  if (tiles < minTiles) return false;
  const lim = maxBindingBytes(dev); // the adapter's limit, or a test's lowered one
  if (Math.max(a.B * a.Ci * a.H * a.W, a.B * a.Co * a.H * a.W) * 4 > lim) return false;
  const coc = coPerChunk(lim, a.Ci, a.Co);
  return coc >= 4 && tilesPerChunk(lim, a.Ci, coc) >= 1;
}

/** Output channels per chunk (a multiple of 4) so that U (16, Co, Ci) fits one binding. */
function coPerChunk(lim: number, Ci: number, Co: number): number {
  return Math.min(Co, Math.floor(lim / (16 * 4 * Ci) / 4) * 4);
}

/** Tiles per chunk so that V (16, tiles, Ci) and M (16, tiles, Co) each fit one binding. */
function tilesPerChunk(lim: number, Ci: number, Co: number): number {
  return Math.floor(lim / (16 * 4 * Math.max(Ci, Co)));
}

export function conv3x3Winograd(dev: Device, g: WinogradArgs): void {
  const { w, B, Ci, Co, H, W } = g;
  const f16 = w.dtype === 'f16';
  const tiles = B * Math.ceil(W / 2) * Math.ceil(H / 2);
  // Per chunk of output channels: U (16, Coc, Ci); per chunk of tiles: V and M. One chunk
  // of each in the UNet except its 2560-channel inputs (U would be 210 MB).
  const lim = maxBindingBytes(dev);
  const coc = coPerChunk(lim, Ci, Co);
  const per = Math.min(tiles, tilesPerChunk(lim, Ci, coc));
  for (let co0 = 0; co0 < Co; co0 += coc) {
    const nco = Math.min(coc, Co - co0);
    const u = Tensor.empty(dev, [16, nco, Ci], 'f32', 'winograd U');
    try {
      const [sCo, sCi, sTap] = g.wStrides;
      {
        const pipeline = dev.pipeline(`winograd_weight:${w.dtype}`, () => buildShader('winograd_weight', { F16: f16 }));
        const [nx, ny] = grid1d(Math.ceil((nco * Ci) / 64));
        dev.dispatch({
          label: `${g.label} winograd weight`, family: 'winograd', pipeline,
          uniforms: uniforms([['u', nco], ['u', Ci], ['u', nx], ['u', co0 * sCo], ['u', sCo], ['u', sCi], ['u', sTap], ['u', 0]]),
          bindings: [w.binding(), u.binding()], workgroups: [nx, ny],
        });
      }
      for (let t0 = 0; t0 < tiles; t0 += per) winogradTiles(dev, g, u, co0, nco, t0, Math.min(per, tiles - t0));
    } finally {
      u.release();
    }
  }
}

/** Input transform, batched matmul and output transform of tiles [t0, t0 + nt), channels [co0, co0 + nco). */
function winogradTiles(dev: Device, g: WinogradArgs, u: Tensor, co0: number, nco: number, t0: number, nt: number): void {
  const { x, out, B, Ci, Co, H, W } = g;
  const tx = Math.ceil(W / 2);
  const v = Tensor.empty(dev, [16, nt, Ci], 'f32', 'winograd V');
  let m: Tensor | undefined;
  try {
    {
      const pipeline = dev.pipeline('winograd_input', () => buildShader('winograd_input', {}));
      const [nx, ny] = grid1d(Math.ceil((nt * (Ci / 4)) / 64));
      dev.dispatch({
        label: `${g.label} winograd input`, family: 'winograd', pipeline,
        uniforms: uniforms([['u', B], ['u', Ci], ['u', H], ['u', W], ['u', tx], ['u', t0], ['u', nt], ['u', nx], ['u', 0], ['u', 0], ['u', 0], ['u', 0]]),
        bindings: [x.binding(), v.binding()], workgroups: [nx, ny],
      });
    }
    m = matmul(v, u, { transB: true, variant: 'cpu' }); // (16, nt, nco)
    {
      const biasF16 = g.bias?.dtype === 'f16';
      const pipeline = dev.pipeline(`winograd_output:${biasF16 ? 'b16' : 'b32'}`, () => buildShader('winograd_output', { BIAS_F16: biasF16 }));
      const [nx, ny] = grid1d(Math.ceil((nt * (nco / 4)) / 64));
      const flags = (g.bias ? FLAG.BIAS : 0) | (g.residual ? FLAG.RES : 0);
      const dm = dummy(dev).binding();
      dev.dispatch({
        label: `${g.label} winograd output`, family: 'winograd', pipeline,
        uniforms: uniforms([['u', B], ['u', nco], ['u', H], ['u', W], ['u', tx], ['u', t0], ['u', nt], ['u', nx], ['u', flags], ['u', ACT_CODE[g.act]], ['u', co0], ['u', Co]]),
        bindings: [m.binding(), g.bias ? g.bias.binding() : dm, g.residual ? g.residual.binding() : dm, out.binding()],
        workgroups: [nx, ny],
      });
    }
  } finally {
    v.release();
    m?.release();
  }
}
