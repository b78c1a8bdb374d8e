// 3x3 convolution, stride 1, padding 1, by Winograd's F(m x m, 3x3), m = 2, 4, 6 or 8: per m x m
// output tile the 3x3 conv becomes a^2 elementwise products (a = m + 2) in a transformed
// domain, which over all tiles and channels are a^2 independent matrix products
// (tiles, Ci) @ (Ci, Co): one batched matmul with 2.25x (m = 2), 4x (m = 4), 5.1x (m = 6) or 5.8x (m = 8) fewer
// multiply-adds than the direct conv, run by the engine's fastest kernel.
//   U[e] = G g G^T      (shaders/winograd_weight.wgsl, per call: write-bound, ~8% of a UNet)
//   V[e] = B^T d B      (shaders/winograd_input.wgsl)
//   M[e] = V[e] @ U[e]^T (matmul, batch a^2)
//   y    = A^T M A (+ bias, SiLU, residual)  (shaders/winograd_output.wgsl)
// The transforms' arithmetic is generated from the matrices below (zero terms left out).
// F(4x4, 3x3) is numerically weaker than F(2x2, 3x3) (errors several times larger, see F4)
// and needs enough 4x4 tiles to fill the matmul's rows, so small images take m = 2; F(6x6, 3x3)
// and F(8x8, 3x3) are weaker again and pay only on large images (the VAE encoder's), see winogradTileFor.
// Used by conv2d's 'cpu' variant where it pays (see winogradApplies), and by its 'gpu' variant
// with gpuGemmTuning.winograd; the direct kernel stays the reference path and covers every
// other case.
import { GpuError, Tensor, byteSizeOf, grid1d, uniforms, type Device } from '../tensor/index.js';
import { FLAG, buildShader, cpuGemmRowBlock, cpuGemmTuning, dummy, gpuGemmTuning, maxBindingBytes, runGemm, textureBinding, textureHolds, type Act } from './matmul.js';

/** Output 2x2 tiles below which the direct kernel is used (per-call weight transform dominates). */
const DEFAULT_MIN_TILES = Number(process.env.ELBO_WINOGRAD_MIN_TILES ?? 16);
let minTiles = DEFAULT_MIN_TILES;
const ENABLED = process.env.ELBO_WINOGRAD !== '0';
/**
 * 4x4 tiles per image from which F(4x4, 3x3) is used (32x32 images and up: the UNet's 64x64
 * and 32x32 levels); ELBO_WINOGRAD_TILE=2, 4, 6 or 8 forces one size. Measured (lavapipe, f32,
 * equivalent GFLOP/s, median of 10, F(2x2) -> F(4x4)): 320->320 at 64x64 26 -> 39, 640->640
 * at 32x32 23 -> 41. At 16x16 F(4x4) is faster from two images on (batch 2, prepared
 * weights, ms: 1280->1280 960 -> 526, 2560->1280 1309 -> 1142) but not taken: through the
 * attention softmax its larger rounding error moved a self-attention map of the sd21-tiny
 * golden UNet (16x16 latents, CFG batch) by 3.6e-4, above that test's 2e-4.
 */
const MIN_TILES_4 = 64;
type TileSize = 2 | 4 | 6 | 8;
const TILE_ENV = Number(process.env.ELBO_WINOGRAD_TILE);
let forcedTile = [2, 4, 6, 8].includes(TILE_ENV) ? (TILE_ENV as TileSize) : undefined;

/**
 * Choices tests and benchmarks switch: `weightV4` false keeps the one-channel weight
 * transform; `f16U` false (or ELBO_WINOGRAD_F16U=0) writes U in f32 for f16 weights too.
 * f16 U (f16 weights and F(2x2) only; f32 weights keep f32 U) halves the transform's stores
 * and the batched matmul's loads of U. Whole conv, f16 weights, one process, median of 8,
 * ms f32 U -> f16 U: 1280->1280 at 16x16 216 -> 198, at 8x8 95 -> 95 (CPU time 85 -> 78),
 * 2560->1280 at 8x8 197 -> 178; by GPU timestamps, 1280->1280 at 8x8: transform 27.5 ->
 * 22.3, batched matmul 48.5 -> 41.5. Outputs move by ~3e-4 of their largest value.
 */
export const winogradTuning = {
  weightV4: true,
  f16U: process.env.ELBO_WINOGRAD_F16U !== '0',
  /** A large U allocated at one binding's size on a CPU adapter (uFloor; ELBO_WINOGRAD_UFLOOR=0: as needed). */
  uFloor: process.env.ELBO_WINOGRAD_UFLOOR !== '0',
  /**
   * Most bytes of V (and of M) per chunk of tiles; undefined: CPU_CHUNK_BYTES on a CPU
   * adapter, one storage binding on a GPU. V, its texture copy and M are made per chunk.
   */
  chunkBytes: undefined as number | undefined,
  /**
   * On a CPU adapter, chunks of tiles rounded up to whole row blocks of the matmul (chunkTiles;
   * ELBO_WINOGRAD_ROWBLOCK=0: chunks of equal size).
   */
  rowBlockChunks: process.env.ELBO_WINOGRAD_ROWBLOCK !== '0',
  /** cpu kernel: M goes through a texture (ELBO_WINOGRAD_MTEX=0: a buffer), see winogradTiles. */
  mTexture: process.env.ELBO_WINOGRAD_MTEX !== '0',
  /** Stride-2 convs by Winograd on the input's phases (ELBO_WINOGRAD_S2=0: im2col), see winogradS2Applies. */
  s2: process.env.ELBO_WINOGRAD_S2 !== '0',
  /** Its output tile forced (ELBO_WINOGRAD_S2_TILE=4|8); undefined: by size, see winogradS2TileFor. */
  s2Tile: (['4', '8'].includes(process.env.ELBO_WINOGRAD_S2_TILE ?? '') ? Number(process.env.ELBO_WINOGRAD_S2_TILE) : undefined) as 4 | 8 | undefined,
  /** Output pixels per call (batch x height x width) from which stride-2 convs take it. */
  s2MinPixels: 64 * 64,
  /** F(8x8, 3x3) where winogradTileFor takes it (ELBO_WINOGRAD_F8=0: F(4x4) / F(6x6) only). */
  f8: process.env.ELBO_WINOGRAD_F8 !== '0',
};

/**
 * V's chunk on a CPU adapter, where GPU memory is host RAM. The VAE encoder's 128-channel
 * convs at 512x512 took 3 x 128 MB (V, its texture copy, M) for a 128 MB output; in 32 MiB
 * chunks they take 3 x 32.
 */
const CPU_CHUNK_BYTES = 32 * 2 ** 20;

/** Tests and benchmarks: force the output tile size (undefined: chosen per conv). */
export function setWinogradTile(m: TileSize | undefined): void {
  forcedTile = m;
}

/**
 * One Winograd algorithm F(m x m, r x r): its transform matrices (a = m + r - 1) and the name
 * its pipelines are cached under.
 */
interface Algo { m: number; a: number; r: number; key: string; BT: number[][]; G: number[][]; AT: number[][] }

/**
 * The Toom-Cook construction of F(m, r) from a - 1 finite interpolation points and infinity
 * (a = m + r - 1): A^T[i][j] = p_j^i, G[j][k] = p_j^k / prod_{l != j} (p_j - p_l), B^T[j] =
 * the coefficients of prod_{l != j} (x - p_l) (and of prod_l (x - p_l) for infinity);
 * y = A^T [(G g) * (B^T d)] is the 1-D correlation of d with g, and nesting it gives the 2-D one.
 */
function toomCook(p: number[], r = 3): Algo {
  const a = p.length + 1;
  const m = a - r + 1;
  const poly = (roots: number[]): number[] =>
    roots.reduce((c, r) => {
      const o = new Array<number>(c.length + 1).fill(0);
      c.forEach((v, k) => {
        o[k + 1]! += v;
        o[k]! -= r * v;
      });
      return o;
    }, [1]);
  const pad = (c: number[]): number[] => [...c, ...new Array<number>(a - c.length).fill(0)];
  const AT = Array.from({ length: m }, (_, i) => [...p.map((x) => x ** i), i === m - 1 ? 1 : 0]);
  const taps = Array.from({ length: r }, (_, k) => k);
  const G = [...p.map((pj, j) => taps.map((k) => pj ** k / p.reduce((d, pl, l) => (l === j ? d : d * (pj - pl)), 1))), taps.map((k) => (k === r - 1 ? 1 : 0))];
  const BT = [...p.map((_, j) => pad(poly(p.filter((__, l) => l !== j)))), poly(p)];
  return { m, a, r, key: `${m}${r === 3 ? '' : `r${r}`}`, BT, G, AT };
}
const F2 = toomCook([0, 1, -1]);
// Points 0, +-1, 1/2, -2 rather than Lavin & Gray's 0, +-1, +-2: the same cost, and in an
// f32 simulation of 320-channel tiles a 4x smaller worst error (2.7e-5 vs 1.1e-4 at weights
// 0.05 randn; F(2x2) 4.1e-6).
const F4 = toomCook([0, 1, -1, 0.5, -2]);
// F(6x6): points 0, +-1, +-1/2, +-2 (the usual choice; with -1/3 in place of -2 the worst
// error in the same simulation was 20x larger).
const F6 = toomCook([0, 1, -1, 0.5, -0.5, 2, -2]);
// F(8x8): F(6x6)'s points and +-3/4. In the same simulation, among pairs added to F(6x6)'s
// points, +-3/4, +-4/3 and (3/4, -4/3) came out best and alike; +-4 or +-1/4 were 5-10x worse.
const F8 = toomCook([0, 1, -1, 0.5, -0.5, 2, -2, 0.75, -0.75]);

/** WGSL for sum_k c[k] * term(k), zero terms left out, unit coefficients without a product. */
function lin(c: number[], term: (k: number) => string): string {
  let s = '';
  c.forEach((v, k) => {
    if (v === 0) return;
    const mag = Math.abs(v) === 1 ? term(k) : `${Number.isInteger(v) ? Math.abs(v).toFixed(1) : String(Math.abs(v))} * ${term(k)}`;
    s += s ? ` ${v < 0 ? '-' : '+'} ${mag}` : `${v < 0 ? '-' : ''}${mag}`;
  });
  return s;
}

/** Y = L X R^T for L (r, n), X (n, n) named x(i, j), R (c, n): WGSL statements, row sums first. */
function sandwich(L: number[][], R: number[][], x: (i: number, j: number) => string, store: (i: number, j: number, expr: string) => string, n: number): string {
  const lines: string[] = [];
  L.forEach((row, i) => {
    for (let j = 0; j < n; j++) lines.push(`  let s${i}_${j} = ${lin(row, (k) => x(k, j))};`);
    R.forEach((rrow, j) => lines.push(`  ${store(i, j, lin(rrow, (k) => `s${i}_${k}`))}`));
  });
  return lines.join('\n');
}

function transformCode(al: Algo, side: 'input' | 'output' | 'weight'): string {
  const { a, m, BT, G, AT } = al;
  if (side === 'input') return sandwich(BT, BT, (i, j) => `d[${a * i + j}]`, (i, j, e) => `v[${a * i + j}u * plane + o] = ${e};`, a);
  if (side === 'output') return sandwich(AT, AT, (i, j) => `q[${a * i + j}]`, (i, j, e) => `y[${m * i + j}] = ${e};`, a);
  return sandwich(G, G, (i, j) => `g[${al.r * i + j}]`, (i, j, e) => `u[${a * i + j}u * plane + i] = st(${e});`, al.r);
}

/** A transform's shader: winograd_<side>.wgsl, or with `s2` the stride-2 conv's winograd_s2_<side>.wgsl. */
function winoShader(al: Algo, side: 'input' | 'output' | 'weight', defines: Record<string, boolean>, s2 = false): string {
  return buildShader(`winograd_${s2 ? 's2_' : ''}${side}`, defines, { TM: al.m, TA: al.a, TAA: al.a * al.a, TMM: al.m * al.m, TRANSFORM: transformCode(al, side) });
}

/**
 * Output pixels per call (batch x height x width) from which a 'cpu' adapter takes F(6x6, 3x3)
 * (a = 8: 64 products per 36 outputs against F(4x4)'s 36 per 16, so 21% fewer words through
 * every stage, but a weight transform 64/36 as large per call). Alternated with F(4x4) on
 * lavapipe (2-core Zen 5, 2026-11-27, median of 4), f32: the VAE encoder's 128->128 at 512x512
 * x1.11, 256->256 at 256x256 x1.15, 512->512 at 128x128 x1.22, 512->512 at 64x64 x1.06; the
 * UNet's 320->320 at 64x64 x0.91 (batch 1) and x1.02 (batch 2), 640->320 at 64x64 batch 2
 * x1.02, 640->640 at 32x32 batch 2 x0.91, 1280->640 at 32x32 batch 2 x0.69; at the threshold,
 * SDXL's 320->320 and 640->320 at 128x128 x1.09 and x1.22, and 960->320 at 64x64 batch 4
 * x1.29 (the weight transform weighs less the more pixels share it). Its rounding is
 * 4-5x F(4x4)'s (f32 simulation, 128 and 512 channels: 1.2e-5 and 2.6e-5 of max |y|), within
 * the kernel tests' 1e-4. GPU adapters keep F(4x4) (not measured there).
 */
const F6_MIN_PIXELS = 128 * 128;

/**
 * Where a 'cpu' adapter takes F(8x8, 3x3) (a = 10: 100 products per 64 outputs, against
 * F(6x6)'s 64 per 36 and F(4x4)'s 36 per 16; 8x8 tiles also cover SD's power-of-two images
 * without F(6x6)'s cut edge tiles): everywhere F(6x6) applied, and on images of 64x64 and up
 * where both channel counts are >= 512 (the VAE encoder's 64x64 level), where the matmul
 * that F(8x8) shrinks outweighs its larger weight transform. Alternated per conv (2-core
 * Zen 5, f32): F(6x6) -> F(8x8) 128->128 at 512x512 x1.10, 256->256 at 256x256 x0.98 wall
 * (kernels 327 -> 297 ms by timestamps), 512->512 at 128x128 x1.22; F(4x4) -> F(8x8) at 64x64
 * 512->512 x1.20, the UNet's 320->320 x1.00-1.10 (batch 1) and x1.06 (batch 2), 640->320
 * x1.35 (batch 2); at 32x32 x0.65-0.81. The SD 1.5 UNet with f16 weights gained nothing
 * whole (8.45-8.76 -> 8.62-8.83 s) for +25 MB live and +200-300 MB of peak RSS, hence the
 * channel bound. The VAE encoder at 512x512: 7.54 -> 6.68-7.00 s. Only where U (100 Ci Co
 * floats) fits F8_MAX_U_BYTES: the UNet's 640->640 upsampler conv at 64x64 took F(8x8) by the
 * channel bound, and its 164 MB U (F(4x4): 59 MB) raised a short f16 segmentation's peak
 * from 2466 to 2503 MB live and 3588 to 3716 MB of RSS, past its budget. F(6x6)'s batched
 * threshold is not F(8x8)'s: at 128x128 pixels per image (2026-11-27, tenth session) the SD
 * 1.5 UNet with f16 weights at batch 4, where its 64x64 level had taken F(8x8) by the batch,
 * ran 30.15-30.21 / 29.81-30.39 s with F(8x8) and 30.04-30.22 / 29.76-30.73 s with F(6x6)
 * there (alternated processes), for +46 MB live and +50-140 MB of peak RSS.
 * Rounding (f32 simulation, winograd points below): 2.3e-5 (128 channels) and 4.0e-5 (512)
 * of max |y| rms, worst 2.1e-4 and 2.9e-4: 10-15x F(6x6)'s, below what f16 weights round by.
 * ELBO_WINOGRAD_F8=0 keeps the F(4x4) / F(6x6) choice.
 */
const F8_MIN_PIXELS = 64 * 64;
const F8_MIN_CHANNELS = 512;
const F8_MAX_U_BYTES = 128 * 2 ** 20;

/**
 * The output tile size m of F(m x m, 3x3) for a batch of B H x W images: F(2x2) below 64 4x4
 * tiles per image (see MIN_TILES_4), on a 'cpu' adapter F(8x8) from F6_MIN_PIXELS per image
 * on and on large channel counts (see F8_MIN_PIXELS) where W % 4 == 0, F(6x6) from
 * F6_MIN_PIXELS per call (B H W) on otherwise; else F(4x4).
 */
export function winogradTileFor(H: number, W: number, B = 1, cpu = false, Ci = 0, Co = Ci): TileSize {
  // F(8x8) only on rows of a multiple of 4 (each tile row two vec4): its per-value path for
  // other widths would cost ~30 s of lavapipe compile for shapes SD does not make.
  if (forcedTile) return forcedTile === 8 && W % 4 !== 0 ? 6 : forcedTile;
  if (Math.ceil(H / 4) * Math.ceil(W / 4) < MIN_TILES_4) return 2;
  const big = B * H * W >= F6_MIN_PIXELS;
  // Per image: a batch of small images (the UNet's 64x64 level at batch 4) keeps F(6x6).
  const f8 = H * W >= F6_MIN_PIXELS || (H * W >= F8_MIN_PIXELS && Math.min(Ci, Co) >= F8_MIN_CHANNELS);
  if (cpu && winogradTuning.f8 && W % 4 === 0 && f8 && F8.a ** 2 * Ci * Co * 4 <= F8_MAX_U_BYTES) return 8;
  return cpu && big ? 6 : 4;
}

function winogradAlgo(dev: Device, B: number, H: number, W: number, Ci: number, Co: number): Algo {
  const m = winogradTileFor(H, W, B, dev.kind === 'cpu', Ci, Co);
  return m === 8 ? F8 : m === 6 ? F6 : m === 4 ? F4 : F2;
}

/** Tests: take the Winograd path from `n` tiles on (Infinity: never; undefined: the default). */
export function setWinogradMinTiles(n: number | undefined): void {
  minTiles = n ?? DEFAULT_MIN_TILES;
}

export interface WinogradArgs {
  /** (B, Ci, H, W) f32; or, stride 1 on the 'cpu' variant only, xTex */
  x?: Tensor;
  /**
   * The input as a (W, H, B Ci / 4) rgba32float texture, texel (col, row, b Ci / 4 + c / 4)
   * holding channels c .. c + 3 of one pixel (groupNormIntoTexture): the input transform
   * fetches a patch point of four channels at once (X_TEX in winograd_input.wgsl).
   */
  xTex?: GPUTexture;
  w: Tensor; // weight data, f32 or f16
  /** element strides of co, ci and tap (3 * ky + kx) in w */
  wStrides: [number, number, number];
  out: Tensor; // (B, Co, H, W) f32; with s2 (B, Co, H / 2, W / 2)
  bias?: Tensor;
  residual?: Tensor;
  act: Act;
  /** The batched matmul's variant: 'cpu' (lavapipe) or 'gpu' (gpuGemmTuning.winograd). */
  variant?: 'cpu' | 'gpu';
  /** Stride 2, padding 0 top and left and 1 bottom and right (see winogradS2Applies). */
  s2?: boolean;
  B: number; Ci: number; Co: number; H: number; W: number;
  label: string;
}

/**
 * Whether conv2d should take the Winograd path: 3x3, stride 1, padding 1 on all sides,
 * channels multiples of 4, activation none or SiLU, enough tiles, the input, output and
 * transformed weight each within one storage binding (the transformed input and the matmul
 * output go in chunks of tiles; inputs above one binding keep the direct kernel and its
 * windows: the VAE's 128 channels at 512x512 f32 are exactly one 128 MiB binding).
 */
export function winogradApplies(dev: Device, a: { B: number; Ci: number; Co: number; H: number; W: number; kh: number; kw: number; stride: number; pads: number[]; act: Act }): boolean {
  if (!ENABLED) return false;
  if (dev.kind !== 'cpu' && (gpuGemmTuning.winograd === 'off' || (gpuGemmTuning.winograd === 'f4' && winogradTileFor(a.H, a.W) !== 4))) return false;
  if (a.kh !== 3 || a.kw !== 3 || a.stride !== 1 || a.pads.some((p) => p !== 1)) return false;
  if (a.Ci % 4 !== 0 || a.Co % 4 !== 0 || (a.act !== 'none' && a.act !== 'silu')) return false;
  const tiles = a.B * Math.ceil(a.H / 2) * Math.ceil(a.W / 2);
  if (tiles < minTiles) return false;
  const lim = maxBindingBytes(dev); // the adapter's limit, or a test's lowered one
  if (Math.max(a.B * a.Ci * a.H * a.W, a.B * a.Co * a.H * a.W) * 4 > lim) return false;
  const aa = winogradAlgo(dev, a.B, a.H, a.W, a.Ci, a.Co).a ** 2;
  const coc = coPerChunk(lim, aa, a.Ci, a.Co);
  return coc >= 4 && tilesPerChunk(lim, aa, a.Ci, coc) >= 1;
}

/**
 * Stride-2 3x3 convs with padding 0 top and left and 1 bottom and right (diffusers'
 * Downsample2D in the VAE encoder: `F.pad(x, (0, 1, 0, 1))`, then the conv) as Winograd on
 * the input's four phases: x[ci, 2i + p, 2j + q] is channel (ci, p, q) of a half-size image,
 * and the conv is a stride-1 2x2 conv over those 4 Ci channels with the 3x3 kernel split by
 * phase (taps that would be 3 are zero), computed by F(m x m, 2x2) (winogradS2TileFor). Its
 * batched matmul has K = 4 Ci and (m + 1)^2 / m^2 products per output, 4 (m + 1)^2 / m^2 per
 * input channel against the 9 of im2col + matmul: 5.1 at m = 8, 6.25 at m = 4.
 */
// Alternated per conv with im2col + matmul (2-core Zen 5, f32, wall ms, F(6x6, 2x2) / F(8x8,
// 2x2)): 128->128 at 512x512 382 -> 302 / 307, 256->256 at 256x256 324 -> 282 / 234 (8x8 tiles
// fit 128 x 128 outputs exactly), 512->512 at 128x128 312 -> 310 / 313 (64 x 64 outputs: a
// matmul of 64 rows and K = 2048 runs slower, and U is 36x the weight). F(4x4, 2x2) there
// (256 rows, U 25/81 as large): 300 -> 238 ms, and at 256x256 310 -> 281 against F(8x8)'s
// 239. VAE encoder, three alternated pairs of bench -- vae --runs 2, F(8x8, 2x2) from 128 x 128
// outputs: 6.56/6.75/6.54 -> 6.43/6.29/6.47 s; with F(4x4, 2x2) from 64 x 64 (--runs 3):
// 6.45/6.29/6.26 -> 6.22/6.20/6.27 s. Rounding (f32 simulation, 512 channels, of
// max |y|): F(4x4, 2x2) rms 1.6e-6, worst 5e-6; F(6x6, 2x2) rms 2.6e-6, worst 1.4e-5;
// F(8x8, 2x2) rms 3.2e-5, worst 2.5e-4, as F(8x8, 3x3).
// F(6x6, 2x2) (points 0, +-1, +-1/2, 2) was measured above and dropped: never the faster one.
const S2_ALGOS = { 4: toomCook([0, 1, -1, 0.5], 2), 8: toomCook([0, 1, -1, 0.5, -0.5, 2, -2, 0.75], 2) };

/** The stride-2 path's output tile for B Ho x Wo outputs: F(8x8, 2x2) from 128 x 128 pixels, F(4x4, 2x2) below. */
export function winogradS2TileFor(B: number, Ho: number, Wo: number): 4 | 8 {
  return winogradTuning.s2Tile ?? (B * Ho * Wo >= 128 * 128 ? 8 : 4);
}

/**
 * Whether conv2d's 'cpu' variant takes the stride-2 Winograd path: 3x3, stride 2, pads
 * (0, 1, 0, 1), H even and W a multiple of 8 (x rows read as vec4, output rows of even
 * length), channels out a multiple of 4, activation none or SiLU, enough output pixels, and
 * x, the output and one output channel's U within a storage binding.
 */
export function winogradS2Applies(dev: Device, a: { B: number; Ci: number; Co: number; H: number; W: number; kh: number; kw: number; stride: number; pads: number[]; act: Act }): boolean {
  if (!ENABLED || !winogradTuning.s2 || dev.kind !== 'cpu') return false;
  if (a.kh !== 3 || a.kw !== 3 || a.stride !== 2 || a.pads.join() !== '0,1,0,1') return false;
  if (a.H % 2 !== 0 || a.W % 8 !== 0 || a.Co % 4 !== 0 || (a.act !== 'none' && a.act !== 'silu')) return false;
  if ((a.B * a.H * a.W) / 4 < winogradTuning.s2MinPixels) return false;
  const lim = maxBindingBytes(dev);
  if (Math.max(a.B * a.Ci * a.H * a.W, (a.B * a.Co * a.H * a.W) / 4) * 4 > lim) return false;
  const aa = S2_ALGOS[winogradS2TileFor(a.B, a.H / 2, a.W / 2)].a ** 2;
  const coc = coPerChunk(lim, aa, 4 * a.Ci, a.Co);
  return coc >= 4 && tilesPerChunk(lim, aa, 4 * a.Ci, coc) >= 1;
}

/**
 * The least bytes to allocate for a U of `bytes` (0: as needed). On a CPU adapter a U above a
 * quarter of a binding (`lim`) is made a whole binding's size, so that every such conv
 * reuses one pooled buffer instead of a size class per shape: the SD 1.5 UNet's U of 52-134
 * MB were made again each forward once the 512 MiB pool had evicted them, and the transform
 * wrote them at ~1.3 GB/s while their pages faulted in. By GPU timestamps, f32 batch 1:
 * weight transforms 648 / 581 -> 379 / 364 ms, all kernels 8897 / 8552 -> 8106 / 8059 ms;
 * f16 weights 546 / 547 -> 308 / 317 ms, 7862 / 8163 -> 7693 / 7751 ms (a lim / 2 threshold:
 * 383 / 400 ms). The live peak rises by the slack of one U (+24 MB). ELBO_WINOGRAD_UFLOOR=0
 * allocates U as needed.
 */
export function uFloor(dev: Device, bytes: number, lim: number): number {
  return dev.hostMemory && winogradTuning.uFloor && bytes > lim / 4 ? lim : 0;
}

/** Output channels per chunk (a multiple of 4) so that U (aa, Co, Ci) fits one binding. */
function coPerChunk(lim: number, aa: number, Ci: number, Co: number): number {
  return Math.min(Co, Math.floor(lim / (aa * 4 * Ci) / 4) * 4);
}

/** Tiles per chunk so that V (aa, tiles, Ci) and M (aa, tiles, Co) each fit one binding. */
function tilesPerChunk(lim: number, aa: number, Ci: number, Co: number): number {
  return Math.floor(lim / (aa * 4 * Math.max(Ci, Co)));
}

/**
 * Tiles per chunk for `tiles` tiles at most `maxPer` to a chunk: as many chunks as needed, of
 * equal size (a small last chunk would make a ragged matmul of its own), each rounded up to a
 * whole number of the matmul's row blocks where that stays within maxPer (the chunk count
 * cannot grow; the last chunk takes the rest). The cpu matmul covers 48 rows per workgroup
 * with f32 b: the VAE encoder's 256x256 level went from four chunks of 256 tiles (six row
 * blocks each, the last one 1/3 full) to 288, 288, 288 and 160; 256->256 there 313 -> 283-299
 * ms per conv, alternated. The encoder in one process, eight alternated pairs, GPU timestamps:
 * Winograd matmuls 3124-3332 -> 3030-3170 ms (2.6-3% less), all kernels 0.5-1.6% less; its
 * wall time moved within the noise.
 */
export function chunkTiles(tiles: number, maxPer: number, rowBlock: number): number {
  const chunks = Math.ceil(tiles / maxPer);
  const per = Math.ceil(tiles / chunks);
  if (chunks === 1 || rowBlock <= 1) return per;
  const up = Math.ceil(per / rowBlock) * rowBlock;
  return up <= maxPer ? up : per;
}

export function conv3x3Winograd(dev: Device, g: WinogradArgs): void {
  const { w, B, Ci, Co, H, W, s2 } = g;
  if (!g.x === !g.xTex || (g.xTex && (s2 || g.variant === 'gpu'))) {
    throw new GpuError(`${g.label}: the Winograd conv takes x or, stride 1 on the cpu variant, xTex; got ${g.x ? 'x' : 'no x'} and ${g.xTex ? 'xTex' : 'no xTex'}${s2 ? ' with s2' : ''}`);
  }
  const f16 = w.dtype === 'f16';
  const al = s2 ? S2_ALGOS[winogradS2TileFor(B, H / 2, W / 2)] : winogradAlgo(dev, B, H, W, Ci, Co);
  // the batched matmul's K: input channels, or with s2 their four phases
  const K = s2 ? 4 * Ci : Ci;
  const [Ho, Wo] = s2 ? [H / 2, W / 2] : [H, W];
  const plan: TilePlan = { al, K, Ho, Wo };
  // f16 U for F(2x2) only: F(4x4)'s output transform (entries up to 8) magnifies U's
  // rounding (320->320 at 64x64: 3.6e-3 at max |y| 1.7, vs 1.2e-3 at 3.3 for F(2x2)
  // 1280->1280 at 16x16) for a gain within noise (640->640 at 32x32: 129 -> 135 ms).
  const uH = f16 && winogradTuning.f16U && al.m === 2 && !s2;
  const aa = al.a * al.a;
  const tiles = B * Math.ceil(Wo / al.m) * Math.ceil(Ho / al.m);
  // Per chunk of output channels: U (aa, Coc, Ci); per chunk of tiles: V and M. One chunk
  // of each in the UNet except its 2560-channel inputs (U would be 210 MB at m = 2).
  const lim = maxBindingBytes(dev);
  const coc = coPerChunk(lim, aa, K, Co);
  const chunk = Math.min(lim, winogradTuning.chunkBytes ?? (dev.hostMemory ? CPU_CHUNK_BYTES : lim));
  const rowBlock = dev.hostMemory && (g.variant ?? 'cpu') === 'cpu' && winogradTuning.rowBlockChunks ? cpuGemmRowBlock(dev, uH ? 'f16' : 'f32') : 1;
  const per = chunkTiles(tiles, Math.max(1, tilesPerChunk(chunk, aa, K, coc)), rowBlock);
  for (let co0 = 0; co0 < Co; co0 += coc) {
    const nco = Math.min(coc, Co - co0);
    const uType = uH ? 'f16' : 'f32';
    const u = Tensor.empty(dev, [aa, nco, K], uType, 'winograd U', uFloor(dev, byteSizeOf(aa * nco * K, uType), lim));
    try {
      const [sCo, sCi, sTap] = g.wStrides;
      if (s2) {
        // one (co, ci) per invocation: its four phase kernels as one vec4 per store
        const pipeline = dev.pipeline(`winograd_s2_weight:${al.key}:${w.dtype}`, () => winoShader(al, 'weight', { F16: f16 }, true));
        const [nx, ny] = grid1d(Math.ceil((nco * Ci) / 64));
        dev.dispatch({
          label: `${g.label} winograd weight`, family: 'winograd weight', pipeline,
          uniforms: uniforms([['u', nco], ['u', Ci], ['u', nx], ['u', co0 * sCo], ['u', sCo], ['u', sCi], ['u', sTap], ['u', 0]]),
          bindings: [w.binding(), u.binding()], workgroups: [nx, ny],
        });
      } else {
        // F(2x2) on the checkpoint layout: 4 input channels per invocation, vec4 stores (the
        // shader's V4). f16 weights, ms per transform, one process: 1280->1280 49.2 -> 32.6,
        // 2560->1280 91.9 -> 66.0. F(4x4)'s 36 outputs per channel did not gain (640->640
        // 20.6 -> 23.1, 1920->640 62.7 -> 67.7) and keep one channel per invocation, as
        // F(6x6) does; F(8x8)'s 100 did (512->512, f32, GPU timestamps: 20.9 -> 16.3 ms).
        const v4 = winogradTuning.weightV4 && (al.m === 2 || al.m === 8) && sTap === 1 && sCi === 9 && (co0 * sCo) % 4 === 0 && Ci % 4 === 0;
        const pipeline = dev.pipeline(`winograd_weight:${al.key}:${w.dtype}${v4 ? ':v4' : ''}${uH ? ':uh' : ''}`, () => winoShader(al, 'weight', { F16: f16, V4: v4, UH: uH }));
        // channels per invocation: 4 (V4), 2 (f16 U: one u32 per store) or 1
        const [nx, ny] = grid1d(Math.ceil((nco * (Ci / (v4 ? 4 : uH ? 2 : 1))) / 64));
        dev.dispatch({
          label: `${g.label} winograd weight`, family: 'winograd weight', pipeline,
          uniforms: uniforms([['u', nco], ['u', Ci], ['u', nx], ['u', co0 * sCo], ['u', sCo], ['u', sCi], ['u', sTap], ['u', 0]]),
          bindings: [w.binding(), u.binding()], workgroups: [nx, ny],
        });
      }
      for (let t0 = 0; t0 < tiles; t0 += per) winogradTiles(dev, g, plan, u, co0, nco, t0, Math.min(per, tiles - t0));
    } finally {
      u.release();
    }
  }
}

/** A conv's algorithm, its batched matmul's K and its Ho x Wo output (conv3x3Winograd). */
interface TilePlan { al: Algo; K: number; Ho: number; Wo: number }

/** Input transform, batched matmul and output transform of tiles [t0, t0 + nt), channels [co0, co0 + nco). */
function winogradTiles(dev: Device, g: WinogradArgs, plan: TilePlan, u: Tensor, co0: number, nco: number, t0: number, nt: number): void {
  const { out, B, Ci, Co, H, W, s2 } = g;
  const { al, K, Ho, Wo } = plan;
  // conv3x3Winograd has checked that x is given wherever xTex is not
  const x = (): Tensor => g.x!;
  const tx = Math.ceil(Wo / al.m);
  // 4x4 and 8x8 tiles on rows of a multiple of 4: each tile row is one or two aligned vec4 of
  // x and of out; 6x6 tiles on rows of even length: three aligned vec2 (with s2, of out only)
  const v4 = (al.m === 4 || al.m === 8) && Wo % 4 === 0;
  const v2 = al.m === 6 && Wo % 2 === 0;
  const aa = al.a * al.a;
  const variant = g.variant ?? 'cpu';
  const v = Tensor.empty(dev, [aa, nt, K], 'f32', 'winograd V');
  let m: Tensor | undefined;
  let mTex: GPUTexture | undefined;
  try {
    if (s2) {
      // one (tile, input channel) per invocation, its four phases as one vec4
      const pipeline = dev.pipeline(`winograd_s2_input:${al.key}`, () => winoShader(al, 'input', {}, true));
      const [nx, ny] = grid1d(Math.ceil((nt * Ci) / 64));
      dev.dispatch({
        label: `${g.label} winograd input`, family: 'winograd input', pipeline,
        uniforms: uniforms([['u', B], ['u', Ci], ['u', H], ['u', W], ['u', tx], ['u', t0], ['u', nt], ['u', nx], ['u', 0], ['u', Ho], ['u', 0], ['u', 0]]),
        bindings: [x().binding(), v.binding()], workgroups: [nx, ny],
      });
    } else {
      // With xTex, x comes from groupNormIntoTexture's texture: one fetch per patch point of
      // four channels where the buffer path loads a patch row per channel. 128->128 at
      // 512x512, F(8x8), GPU timestamps: input transform 124 -> 78 ms (256->256 at 256x256
      // 56 -> 46, 512->512 at 128x128 29 -> 20, at 64x64 11 -> 4.4).
      const xTex = g.xTex;
      const pipeline = xTex
        ? dev.pipeline(`winograd_input:${al.key}:xtex`, () => winoShader(al, 'input', { X_TEX: true }))
        : dev.pipeline(`winograd_input:${al.key}:${v4}:${v2}`, () => winoShader(al, 'input', { IN_V4: v4, IN_V2: v2 }));
      const [nx, ny] = grid1d(Math.ceil((nt * (Ci / 4)) / 64));
      dev.dispatch({
        label: `${g.label} winograd input`, family: 'winograd input', pipeline,
        uniforms: uniforms([['u', B], ['u', Ci], ['u', H], ['u', W], ['u', tx], ['u', t0], ['u', nt], ['u', nx], ['u', 0], ['u', 0], ['u', 0], ['u', 0]]),
        bindings: xTex ? [null, v.binding(), null, textureBinding(xTex)] : v4 || v2 ? [x().binding(), v.binding(), x().binding()] : [x().binding(), v.binding()],
        workgroups: [nx, ny],
      });
    }
    // On a CPU adapter the matmul writes M into a texture, texel (c4, tile, e), and the output
    // transform reads it with textureLoad: on lavapipe a vectorised fetch where a buffer load
    // is a per-lane loop, and a store per vec4 where the matmul's epilogue stores per value.
    // 128->128 at 512x512, ms, one process: matmul 294 -> 244, output transform 156 -> 77.
    if (variant === 'cpu' && winogradTuning.mTexture && cpuGemmTuning.aTexture && textureHolds(dev, nt, K, aa) && textureHolds(dev, nt, nco, aa)) {
      mTex = dev.allocTexture(nco / 4, nt, aa, 'winograd M');
    } else {
      m = Tensor.empty(dev, [aa, nt, nco], 'f32', 'winograd M');
    }
    runGemm(dev, {
      label: `winograd matmul (${aa}x${nt}x${K})@(${aa}x${nco}x${K})^T`, M: nt, N: nco, K, batch: aa,
      a: { t: v, off: 0, rs: K, cs: 1, bs: nt * K },
      b: { t: u, off: 0, rs: 1, cs: K, bs: nco * K },
      out: { t: m ?? dummy(dev), off: 0, rs: nco, cs: 1, bs: nt * nco },
      outTexture: mTex,
      alpha: 1, act: 'none', variant, family: 'winograd matmul',
    });
    {
      const biasF16 = g.bias?.dtype === 'f16';
      const silu = g.act === 'silu';
      const res = Boolean(g.residual);
      const pipeline = dev.pipeline(`winograd_output:${al.key}:${v4}:${v2}:${biasF16 ? 'b16' : 'b32'}:${Boolean(mTex)}:${silu}:${res}`, () =>
        winoShader(al, 'output', { BIAS_F16: biasF16, OUT_V4: v4, OUT_V2: v2, M_TEX: Boolean(mTex), ACT_SILU: silu, RES: res }),
      );
      const [nx, ny] = grid1d(Math.ceil((nt * (nco / 4)) / 64));
      // the activation and the residual are the pipeline's (ACT_SILU, RES): only the bias is a flag
      const flags = g.bias ? FLAG.BIAS : 0;
      const dm = dummy(dev).binding();
      dev.dispatch({
        label: `${g.label} winograd output`, family: 'winograd output', pipeline,
        uniforms: uniforms([['u', B], ['u', nco], ['u', Ho], ['u', Wo], ['u', tx], ['u', t0], ['u', nt], ['u', nx], ['u', flags], ['u', 0], ['u', co0], ['u', Co]]),
        // (no residual: the shader leaves its binding out, RES)
        bindings: [mTex ? textureBinding(mTex) : m!.binding(), g.bias ? g.bias.binding() : dm, g.residual ? g.residual.binding() : null, out.binding()],
        workgroups: [nx, ny],
      });
    }
  } finally {
    v.release();
    m?.release();
    if (mTex) dev.freeTexture(mTex);
  }
}
