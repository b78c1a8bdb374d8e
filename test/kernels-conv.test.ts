import { afterEach, describe, expect, it } from 'vitest';
import { Tensor, roundToF16, type Device } from '../src/tensor/index.js';
import { conv2d, convTuning, prepareConvWeight } from '../src/kernels/conv.js';
import { groupNorm } from '../src/kernels/norm.js';
import { chunkTiles, setWinogradMinTiles, setWinogradTile, uFloor, winogradS2TileFor, winogradTileFor, winogradTuning } from '../src/kernels/winograd.js';
import { im2colTuning, s1PixelsFrom } from '../src/kernels/im2col.js';
import { cpuGemmRowBlock, cpuGemmTuning, setMaxBindingBytes, type Act } from '../src/kernels/matmul.js';
import { getDevice, randn, expectClose } from './helpers/gpu.js';
import { refGroupNorm } from './helpers/cpuref.js';
import { asVariant, gemmVariants, type TestVariant } from './helpers/variants.js';

const ACTS: Partial<Record<Act, (x: number) => number>> = {
  none: (x) => x,
  silu: (x) => x / (1 + Math.exp(-x)),
  quick_gelu: (x) => x / (1 + Math.exp(-1.702 * x)),
};

interface Case {
  B: number; Ci: number; Co: number; H: number; W: number; k: number;
  stride?: number; pad?: number | [number, number, number, number]; bias?: boolean; residual?: boolean; act?: Act; f16?: boolean;
}

/** Plain-TS NCHW reference (PyTorch Conv2d semantics). */
function refConv(x: Float32Array, w: Float32Array, c: Case, bias?: Float32Array, res?: Float32Array): { out: Float32Array; Ho: number; Wo: number } {
  const s = c.stride ?? 1;
  const pad = c.pad ?? 0;
  const [pt, pb, pl, pr] = typeof pad === 'number' ? [pad, pad, pad, pad] : pad;
  const Ho = Math.floor((c.H + pt + pb - c.k) / s) + 1;
  const Wo = Math.floor((c.W + pl + pr - c.k) / s) + 1;
  const out = new Float32Array(c.B * c.Co * Ho * Wo);
  const act = ACTS[c.act ?? 'none']!;
  for (let b = 0; b < c.B; b++)
    for (let co = 0; co < c.Co; co++)
      for (let oy = 0; oy < Ho; oy++)
        for (let ox = 0; ox < Wo; ox++) {
          let sum = bias ? bias[co]! : 0;
          for (let ci = 0; ci < c.Ci; ci++)
            for (let ky = 0; ky < c.k; ky++) {
              const iy = oy * s + ky - pt;
              if (iy < 0 || iy >= c.H) continue;
              for (let kx = 0; kx < c.k; kx++) {
                const ix = ox * s + kx - pl;
                if (ix < 0 || ix >= c.W) continue;
                sum += x[((b * c.Ci + ci) * c.H + iy) * c.W + ix]! * w[((co * c.Ci + ci) * c.k + ky) * c.k + kx]!;
              }
            }
          const i = ((b * c.Co + co) * Ho + oy) * Wo + ox;
          out[i] = act(sum) + (res ? res[i]! : 0);
        }
  return { out, Ho, Wo };
}

let dev: Device;
/** im2col's stride-1 threshold as configured: the Winograd tests below turn it off, so that
 *  their small images stay on the path they test. */
const S1_MAX_PIXELS = im2colTuning.s1MaxPixels;
const VARIANTS = gemmVariants();
const VARIANTS_WHOLE = gemmVariants({ whole: true });

async function check(variant: TestVariant, c: Case, seed = 1, rtol = 1e-4): Promise<number> {
  const xd = randn(c.B * c.Ci * c.H * c.W, seed);
  let wd = randn(c.Co * c.Ci * c.k * c.k, seed + 1, 0.5);
  if (c.f16) wd = roundToF16(wd);
  const bd = c.bias ? randn(c.Co, seed + 2) : undefined;
  const ref0 = refConv(xd, wd, c, bd);
  const rd = c.residual ? randn(ref0.out.length, seed + 3) : undefined;
  const { out: ref, Ho, Wo } = rd ? refConv(xd, wd, c, bd, rd) : ref0;
  const x = Tensor.fromArray(dev, xd, [c.B, c.Ci, c.H, c.W]);
  const w = Tensor.fromArray(dev, wd, [c.Co, c.Ci, c.k, c.k], c.f16 ? 'f16' : 'f32');
  const bias = bd ? Tensor.fromArray(dev, bd, [c.Co]) : undefined;
  const residual = rd ? Tensor.fromArray(dev, rd, [c.B, c.Co, Ho, Wo]) : undefined;
  const d0 = dev.dispatchCount;
  const out = conv2d(x, w, { bias, residual, stride: c.stride, padding: c.pad, act: c.act, variant: asVariant(variant) });
  const dispatches = dev.dispatchCount - d0;
  expect(out.shape).toEqual([c.B, c.Co, Ho, Wo]);
  expectClose(await out.toArray(), ref, c.f16 ? 2e-2 : rtol, `conv2d ${variant} ${JSON.stringify(c)}`);
  for (const t of [x, w, bias, residual, out]) t?.release();
  return dispatches;
}

describe('conv2d', () => {
  afterEach(() => {
    setMaxBindingBytes(undefined);
    setWinogradMinTiles(undefined);
    setWinogradTile(undefined);
    im2colTuning.s1MaxPixels = S1_MAX_PIXELS;
  });

  it('variants agree with the CPU reference on odd shapes', async () => {
    dev = await getDevice();
    for (const variant of VARIANTS_WHOLE) {
      for (const [Ci, Co] of [[1, 1], [3, 7], [7, 33], [33, 3], [8, 16]] as const) {
        for (const [H, W] of [[1, 1], [5, 5], [17, 5], [5, 17]] as const) {
          await check(variant, { B: 1, Ci, Co, H, W, k: 3, pad: 1 });
        }
      }
      await check(variant, { B: 2, Ci: 7, Co: 33, H: 17, W: 17, k: 1 });
      await check(variant, { B: 2, Ci: 16, Co: 8, H: 5, W: 17, k: 1, bias: true });
      await check(variant, { B: 2, Ci: 3, Co: 7, H: 17, W: 17, k: 3, stride: 2, pad: 1, bias: true });
      await check(variant, { B: 2, Ci: 8, Co: 16, H: 16, W: 16, k: 3, stride: 2, pad: 1 });
      await check(variant, { B: 1, Ci: 3, Co: 5, H: 9, W: 11, k: 3 });
      await check(variant, { B: 1, Ci: 4, Co: 4, H: 9, W: 7, k: 5, pad: 2 });
      await check(variant, { B: 1, Ci: 2, Co: 3, H: 6, W: 6, k: 1, stride: 2, pad: 1 });
      // diffusers' VAE Downsample2D: pad (0, 1, 0, 1), then a 3x3 stride-2 conv
      await check(variant, { B: 2, Ci: 8, Co: 8, H: 9, W: 8, k: 3, stride: 2, pad: [0, 1, 0, 1], bias: true });
      await check(variant, { B: 1, Ci: 3, Co: 5, H: 7, W: 7, k: 3, pad: [2, 0, 1, 3] });
    }
  });

  it('fuses bias, activation and residual; reads f16 weights', async () => {
    dev = await getDevice();
    for (const variant of VARIANTS) {
      await check(variant, { B: 2, Ci: 33, Co: 7, H: 5, W: 17, k: 3, pad: 1, bias: true, residual: true, act: 'silu' });
      await check(variant, { B: 1, Ci: 16, Co: 32, H: 17, W: 17, k: 3, pad: 1, bias: true, residual: true, act: 'quick_gelu' });
      await check(variant, { B: 2, Ci: 8, Co: 24, H: 5, W: 5, k: 1, bias: true, residual: true, act: 'silu' });
      if (!dev.hasF16) continue;
      await check(variant, { B: 2, Ci: 7, Co: 33, H: 17, W: 5, k: 3, pad: 1, bias: true, f16: true });
      await check(variant, { B: 1, Ci: 16, Co: 32, H: 17, W: 17, k: 3, pad: 1, bias: true, f16: true, act: 'silu' });
      await check(variant, { B: 2, Ci: 16, Co: 24, H: 9, W: 9, k: 3, stride: 2, pad: 1, f16: true });
      await check(variant, { B: 2, Ci: 16, Co: 24, H: 5, W: 7, k: 1, f16: true, bias: true });
      await check(variant, { B: 1, Ci: 7, Co: 9, H: 5, W: 7, k: 1, f16: true });
    }
  });

  it('splits tensors larger than the storage binding limit into channel chunks', async () => {
    dev = await getDevice();
    // 24 channels of 17x17 f32 = 27.7 KB per image against an 8 KiB limit: input-channel
    // chunks accumulate through the output, output-channel chunks split the output.
    setMaxBindingBytes(8192);
    for (const variant of VARIANTS) {
      const n1 = await check(variant, { B: 2, Ci: 24, Co: 20, H: 17, W: 17, k: 3, pad: 1, bias: true, residual: true, act: 'silu' });
      expect(n1).toBeGreaterThan(4);
      const n2 = await check(variant, { B: 2, Ci: 24, Co: 16, H: 17, W: 17, k: 1, bias: true, residual: true, act: 'silu' });
      expect(n2).toBeGreaterThan(4);
      await check(variant, { B: 1, Ci: 24, Co: 16, H: 17, W: 17, k: 3, stride: 2, pad: 1, f16: dev.hasF16 });
    }
  });

  it('runs on real tensors above the adapter binding limit (sampled check)', async () => {
    dev = await getDevice();
    const limit = dev.limits.maxStorageBufferBindingSize;
    // x (1, Ci, 512, 512) f32 just above the limit; cheap kernels (few output channels).
    const H = 512;
    const Ci = Math.floor(limit / (H * H * 4)) + 2;
    const xd = randn(Ci * H * H, 5);
    const x = Tensor.fromArray(dev, xd, [1, Ci, H, H]);
    for (const k of [1, 3]) {
      const Co = 4;
      const wd = randn(Co * Ci * k * k, 6, 0.1);
      const w = Tensor.fromArray(dev, wd, [Co, Ci, k, k]);
      const out = await conv2d(x, w, { padding: k >> 1 }).toArray();
      for (const [co, oy, ox] of [[0, 0, 0], [3, 511, 511], [1, 100, 200], [2, 511, 0]] as const) {
        let ref = 0;
        for (let ci = 0; ci < Ci; ci++)
          for (let ky = 0; ky < k; ky++)
            for (let kx = 0; kx < k; kx++) {
              const iy = oy + ky - (k >> 1);
              const ix = ox + kx - (k >> 1);
              if (iy < 0 || iy >= H || ix < 0 || ix >= H) continue;
              ref += xd[(ci * H + iy) * H + ix]! * wd[((co * Ci + ci) * k + ky) * k + kx]!;
            }
        expect(Math.abs(out[(co * H + oy) * H + ox]! - ref)).toBeLessThanOrEqual(1e-4 * Math.max(1, Math.abs(ref)));
      }
      w.release();
    }
    x.release();
  });

  // The 'cpu' variant computes 3x3 stride-1 pad-1 convs with >= 16 output 2x2 tiles (8x8) by
  // Winograd F(2x2, 3x3), with >= 64 4x4 tiles per image by F(4x4, 3x3), and from 128x128
  // output pixels per call by F(6x6, 3x3) (src/kernels/winograd.ts); here from one tile on
  // with each tile size forced, so odd shapes reach all three: edge tiles, batches, channels
  // that are multiples of 4, fused epilogues, rows of a multiple of 4 (F(4x4)'s vec4 rows)
  // and of even length (F(6x6)'s vec2 rows). Same tolerance as the direct kernel
  // (1e-4 x max(1, |ref|)); F(4x4) and F(6x6) lose more bits than F(2x2) but stay within it
  // (bench, 320->320 at 64x64: F(4x4) 2.3e-5 at max |ref| 5.3; 2560->1280: 1.7e-4 at 12.3).
  // F(8x8) rounds 10-15x F(6x6) (winograd.ts) and is held to 3e-4: its 128-channel sums here
  // came to 1.005e-4 x max |ref|. It takes rows of a multiple of 4 only (two vec4 per tile
  // row); forced on other widths it gives way to F(6x6) (winogradTileFor).
  for (const m of [2, 4, 6, 8] as const) {
    it(`cpu: the Winograd F(${m}x${m}, 3x3) path agrees with the CPU reference`, async () => {
      dev = await getDevice();
      if (dev.kind !== 'cpu') return; // the path is lavapipe's ('cpu' adapters) only
      setWinogradMinTiles(1);
      setWinogradTile(m);
      im2colTuning.s1MaxPixels = 0;
      const wino = (c: Case): Promise<number> => check('cpu', { pad: 1, ...c }, 1, m === 8 ? 3e-4 : 1e-4);
      // weight, input, batched matmul, output: at least four dispatches, not the direct kernel's one
      expect(await wino({ B: 2, Ci: 8, Co: 12, H: 9, W: 11, k: 3, bias: true, residual: true, act: 'silu' })).toBeGreaterThanOrEqual(4);
      await wino({ B: 1, Ci: 4, Co: 4, H: 1, W: 1, k: 3 });
      await wino({ B: 1, Ci: 16, Co: 32, H: 17, W: 5, k: 3, bias: true });
      await wino({ B: 3, Ci: 12, Co: 8, H: 6, W: 7, k: 3, residual: true });
      await wino({ B: 1, Ci: 320, Co: 8, H: 8, W: 8, k: 3, bias: true });
      await wino({ B: 1, Ci: 8, Co: 4, H: 13, W: 14, k: 3, act: 'silu' }); // 4x4 tiles cut by 1 and 2
      // W % 4 == 0: F(4x4) reads and writes each tile row as one vec4 (rows still cut at H = 10)
      await wino({ B: 2, Ci: 8, Co: 8, H: 10, W: 12, k: 3, bias: true, residual: true, act: 'silu' });
      await wino({ B: 1, Ci: 4, Co: 4, H: 4, W: 4, k: 3, residual: true });
      // W even, not a multiple of 6: F(6x6)'s vec2 rows with the last tile cut to 2 and to 4 columns
      await wino({ B: 2, Ci: 8, Co: 8, H: 11, W: 8, k: 3, bias: true, residual: true, act: 'silu' });
      await wino({ B: 1, Ci: 128, Co: 8, H: 12, W: 10, k: 3, residual: true }); // 128-channel sums
      // W % 4 == 0, not a multiple of 8: F(8x8)'s last tile of each row keeps one of its two vec4
      await wino({ B: 2, Ci: 8, Co: 8, H: 19, W: 20, k: 3, bias: true, residual: true, act: 'silu' });
      await wino({ B: 1, Ci: 128, Co: 8, H: 12, W: 16, k: 3, residual: true }); // 128-channel sums, W % 4 == 0
      if (dev.hasF16) await wino({ B: 2, Ci: 8, Co: 16, H: 7, W: 9, k: 3, bias: true, f16: true, act: 'silu' });
      // f16 weights on rows of a multiple of 4 (F(8x8) itself, not the F(6x6) it gives way to at W = 9)
      if (dev.hasF16) await wino({ B: 2, Ci: 8, Co: 16, H: 7, W: 12, k: 3, bias: true, f16: true, act: 'silu' });
      // The weight transform one input channel per invocation (the path of other weight
      // layouts and of F(4x4)) instead of four (F(2x2) on stored weights).
      winogradTuning.weightV4 = false;
      try {
        await wino({ B: 2, Ci: 8, Co: 12, H: 9, W: 11, k: 3, bias: true, residual: true, act: 'silu' });
        await wino({ B: 1, Ci: 8, Co: 8, H: 10, W: 16, k: 3, bias: true }); // W % 4 == 0: F(8x8)'s own
        if (dev.hasF16) await wino({ B: 1, Ci: 12, Co: 8, H: 7, W: 9, k: 3, f16: true });
      } finally {
        winogradTuning.weightV4 = true;
      }
      // f16 weights give an f16 U (above); with f16U off, the f32 U of before
      if (dev.hasF16) {
        winogradTuning.f16U = false;
        try {
          await wino({ B: 2, Ci: 8, Co: 16, H: 7, W: 9, k: 3, bias: true, f16: true, act: 'silu' });
        } finally {
          winogradTuning.f16U = true;
        }
      }
      // M through a buffer (the GPU variant's way, and the cpu kernel's with a from its
      // buffer) instead of the texture the matmul writes and the output transform reads
      winogradTuning.mTexture = false;
      try {
        await wino({ B: 2, Ci: 8, Co: 12, H: 9, W: 11, k: 3, bias: true, residual: true, act: 'silu' });
        await wino({ B: 2, Ci: 8, Co: 8, H: 11, W: 8, k: 3, bias: true, residual: true, act: 'silu' });
      } finally {
        winogradTuning.mTexture = true;
      }
      // not taken (the direct kernel: its weight re-layout and the conv; stride 2: im2col, the
      // matmul's texture pack of a and the matmul): Ci not a multiple of 4, quick_gelu, stride 2, pad 0
      expect(await wino({ B: 1, Ci: 7, Co: 8, H: 9, W: 9, k: 3 })).toBeLessThanOrEqual(2);
      expect(await wino({ B: 1, Ci: 8, Co: 8, H: 9, W: 9, k: 3, act: 'quick_gelu' })).toBeLessThanOrEqual(2);
      expect(await wino({ B: 1, Ci: 8, Co: 8, H: 9, W: 9, k: 3, stride: 2 })).toBeLessThanOrEqual(3);
      expect(await wino({ B: 1, Ci: 8, Co: 8, H: 9, W: 9, k: 3, pad: 0 })).toBeLessThanOrEqual(2);
    });
  }

  // U above a quarter of a binding is allocated a whole binding's size on a CPU adapter, so
  // that one pooled buffer serves every such conv (the chunk test below runs through it: its
  // U chunks are above a quarter of the lowered limit).
  it('cpu: a large Winograd U is allocated at one binding size on a CPU adapter', async () => {
    dev = await getDevice();
    const lim = 128 * 2 ** 20;
    if (!dev.hostMemory) {
      expect(uFloor(dev, lim, lim)).toBe(0);
      return;
    }
    expect(uFloor(dev, lim / 4 + 2, lim)).toBe(lim);
    expect(uFloor(dev, 105 * 2 ** 20, lim)).toBe(lim);
    expect(uFloor(dev, lim / 4, lim)).toBe(0);
    expect(uFloor(dev, 6 * 2 ** 20, lim)).toBe(0);
    winogradTuning.uFloor = false;
    try {
      expect(uFloor(dev, lim, lim)).toBe(0);
    } finally {
      winogradTuning.uFloor = true;
    }
  });

  it('cpu: Winograd takes F(4x4, 3x3) from 64 4x4 tiles per image on, F(2x2, 3x3) below, F(8x8, 3x3) on large images', () => {
    expect(winogradTileFor(32, 32)).toBe(4); // the UNet's 32x32 and 64x64 levels
    expect(winogradTileFor(16, 16)).toBe(2); // its 16x16 level, whatever the batch
    expect(winogradTileFor(29, 31)).toBe(4); // 8 x 8 tiles, edge tiles cut
    expect(winogradTileFor(28, 28)).toBe(2); // 7 x 7
    expect(winogradTileFor(8, 512)).toBe(4); // 2 x 128
    // F(6x6) on 'cpu' adapters from 128 x 128 output pixels per call: the VAE encoder's
    // 512, 256 and 128 levels; not the UNet's 64x64 level at batch 1 or 2 (measured slower or even)
    // F(8x8) in F(6x6)'s place, and at 64x64 with both channel counts >= 512 (the VAE
    // encoder's 64x64 level; not the UNet's 320-channel one)
    expect(winogradTileFor(512, 512, 1, true)).toBe(8);
    expect(winogradTileFor(128, 128, 1, true)).toBe(8);
    // per image: a batch of 4 at 64x64 (the UNet's 64x64 level) keeps F(6x6)
    expect(winogradTileFor(64, 64, 4, true)).toBe(6);
    expect(winogradTileFor(64, 64, 4, true, 320, 320)).toBe(6);
    expect(winogradTileFor(64, 64, 4, true, 512, 512)).toBe(8);
    expect(winogradTileFor(128, 128, 2, true, 320, 320)).toBe(8);
    expect(winogradTileFor(64, 64, 2, true)).toBe(4);
    expect(winogradTileFor(64, 64, 1, true)).toBe(4);
    expect(winogradTileFor(64, 64, 1, true, 320, 320)).toBe(4);
    expect(winogradTileFor(64, 64, 1, true, 512, 512)).toBe(8);
    expect(winogradTileFor(64, 64, 1, true, 512, 320)).toBe(4);
    expect(winogradTileFor(32, 32, 1, true, 512, 512)).toBe(4);
    expect(winogradTileFor(512, 512, 1, false, 512, 512)).toBe(4); // GPU adapters keep F(4x4)
    // ... and only where U (100 Ci Co floats) is at most 128 MiB: the UNet's 640->640
    // upsampler conv at 64x64 (164 MB) keeps F(4x4) at batch 2, F(6x6) at batch 4
    expect(winogradTileFor(64, 64, 2, true, 640, 640)).toBe(4);
    expect(winogradTileFor(64, 64, 4, true, 640, 640)).toBe(6);
    expect(winogradTileFor(64, 64, 4, true, 320, 640)).toBe(6);
    expect(winogradTileFor(510, 510, 1, true)).toBe(6); // F(8x8) wants rows of a multiple of 4
    setWinogradTile(8);
    expect(winogradTileFor(16, 20)).toBe(8);
    expect(winogradTileFor(16, 18)).toBe(6);
    setWinogradTile(2);
    expect(winogradTileFor(64, 64)).toBe(2);
    expect(winogradTileFor(512, 512, 1, true)).toBe(2);
  });

  // Stride-2 3x3 convs padded (0, 1, 0, 1) (the VAE encoder's downsamplers) on 'cpu': Winograd
  // F(m x m, 2x2) on the input's four phases (winograd.ts, winogradS2Applies), here from one
  // output pixel on: both tiles, edge tiles cut (H not a multiple of 2 m), batches, channel
  // counts that are not multiples of 4, fused epilogues, f16 and prepared weights, chunks.
  it('cpu: stride-2 convs take F(8x8, 2x2) from 128x128 output pixels on, F(4x4, 2x2) below', () => {
    expect(winogradS2TileFor(1, 256, 256)).toBe(8); // the VAE encoder's first two downsamplers
    expect(winogradS2TileFor(1, 128, 128)).toBe(8);
    expect(winogradS2TileFor(1, 64, 64)).toBe(4); // its third (512 channels)
    expect(winogradS2TileFor(4, 64, 64)).toBe(8);
  });
  for (const m of [4, 8] as const) {
    it(`cpu: stride-2 convs padded (0, 1, 0, 1) by Winograd F(${m}x${m}, 2x2) on the input's phases`, async () => {
      dev = await getDevice();
      if (dev.kind !== 'cpu') return;
      const saved = { ...winogradTuning };
      winogradTuning.s2MinPixels = 1;
      winogradTuning.s2Tile = m;
      try {
        const families = async (c: Omit<Case, 'k'>): Promise<string[]> => {
          dev.startProfile();
          await check('cpu', { k: 3, stride: 2, pad: [0, 1, 0, 1], ...c }, 1, m === 8 ? 3e-4 : 1e-4);
          return [...(await dev.stopProfile()).keys()].sort();
        };
        const wino = ['winograd input', 'winograd matmul', 'winograd output', 'winograd weight'];
        expect(await families({ B: 2, Ci: 8, Co: 12, H: 18, W: 16, bias: true, residual: true, act: 'silu' })).toEqual(wino);
        expect(await families({ B: 1, Ci: 3, Co: 4, H: 2, W: 8 })).toEqual(wino);
        expect(await families({ B: 3, Ci: 5, Co: 8, H: 30, W: 24, bias: true })).toEqual(wino);
        expect(await families({ B: 1, Ci: 128, Co: 8, H: 20, W: 32, residual: true })).toEqual(wino); // 4 x 128-channel sums
        // f16 weights, and M through a buffer instead of a texture: shader branches that do
        // not depend on m, run at F(4x4, 2x2) only (cold, each F(8x8, 2x2) variant costs
        // lavapipe ~10 s of compile)
        if (m === 4) {
          if (dev.hasF16) expect(await families({ B: 2, Ci: 8, Co: 16, H: 14, W: 16, bias: true, f16: true, act: 'silu' })).toEqual(wino);
          winogradTuning.mTexture = false;
          await families({ B: 2, Ci: 8, Co: 12, H: 18, W: 16, bias: true, residual: true, act: 'silu' });
          winogradTuning.mTexture = true;
        }
        // V in chunks of tiles (32 KiB: 6 or 20 tiles of 16 channels)
        winogradTuning.chunkBytes = 4096 * 8;
        expect(await families({ B: 2, Ci: 4, Co: 8, H: 34, W: 32, bias: true })).toEqual(wino);
        winogradTuning.chunkBytes = saved.chunkBytes;
        // U in chunks of output channels under a 64 KiB binding (4 of 24 with F(8x8), 20 with F(4x4))
        setMaxBindingBytes(65536);
        expect(await families({ B: 1, Ci: 8, Co: 24, H: 16, W: 16, bias: true, residual: true })).toEqual(wino);
        setMaxBindingBytes(undefined);
        // not taken (im2col + matmul): odd H, W not a multiple of 8, symmetric padding, stride 3
        const im2col = ['im2col', 'im2col matmul'];
        expect(await families({ B: 1, Ci: 8, Co: 8, H: 17, W: 16 })).toEqual(im2col);
        expect(await families({ B: 1, Ci: 8, Co: 8, H: 16, W: 12 })).toEqual(im2col);
        expect(await families({ B: 1, Ci: 8, Co: 8, H: 16, W: 16, pad: 1 })).toEqual(im2col);
        expect(await families({ B: 1, Ci: 8, Co: 8, H: 16, W: 16, stride: 3 })).toEqual(im2col);
        // prepared f32 weights (Ci = 5 or Co = 7: the direct kernel's (ci, ky, kx, co) layout),
        // read through their strides; Co not a multiple of 4 is not taken
        for (const [ci, co] of [[5, 8], [8, 7]] as const) {
          const x = Tensor.fromArray(dev, randn(2 * ci * 12 * 16, 51), [2, ci, 12, 16]);
          const w = Tensor.fromArray(dev, randn(co * ci * 9, 52, 0.5), [co, ci, 3, 3]);
          const wp = prepareConvWeight(w);
          expect(wp).not.toBe(w);
          const opts = { stride: 2, padding: [0, 1, 0, 1] as [number, number, number, number], act: 'silu' as const };
          const ref = await conv2d(x, w, { ...opts, variant: 'naive' }).toArray();
          dev.startProfile();
          const got = await conv2d(x, wp, { ...opts, variant: 'cpu' }).toArray();
          expect([...(await dev.stopProfile()).keys()].sort()).toEqual(co === 8 ? wino : im2col);
          expectClose(got, ref, m === 8 ? 3e-4 : 1e-4, `stride-2 conv with a prepared weight, Ci ${ci} Co ${co}`);
          for (const t of [x, w, wp]) t.release();
        }
      } finally {
        Object.assign(winogradTuning, saved);
      }
    });
  }

  // Strided convs on 'cpu' (Ci * kh * kw a multiple of 4): im2col patches in chunks of
  // output pixels, then one matmul per chunk.
  it('cpu: strided convs go through im2col + matmul, in chunks of output pixels', async () => {
    dev = await getDevice();
    if (dev.kind !== 'cpu') return;
    const families = async (c: Case): Promise<string[]> => {
      dev.startProfile();
      await check('cpu', c);
      return [...(await dev.stopProfile()).keys()].sort();
    };
    // the VAE / UNet downsampler: pad (0, 1, 0, 1), stride 2; plus batch, residual, SiLU
    expect(await families({ B: 2, Ci: 8, Co: 12, H: 17, W: 15, k: 3, stride: 2, pad: [0, 1, 0, 1], bias: true, residual: true, act: 'silu' })).toEqual(['im2col', 'im2col matmul']);
    expect(await families({ B: 1, Ci: 4, Co: 8, H: 10, W: 9, k: 4, stride: 3, pad: 1, bias: true })).toEqual(['im2col', 'im2col matmul']);
    // channels in groups of 4 take im2col_c4.wgsl; Ci = 3 with K = 12 the per-vec4 kernel,
    // and the same cases with the c4 kernel off
    expect(await families({ B: 1, Ci: 3, Co: 8, H: 11, W: 10, k: 2, stride: 2, pad: [0, 1, 0, 1], bias: true })).toEqual(['im2col', 'im2col matmul']);
    im2colTuning.c4 = false;
    try {
      await check('cpu', { B: 2, Ci: 8, Co: 12, H: 17, W: 15, k: 3, stride: 2, pad: [0, 1, 0, 1], bias: true, residual: true, act: 'silu' });
      await check('cpu', { B: 1, Ci: 4, Co: 8, H: 10, W: 9, k: 4, stride: 3, pad: 1, bias: true });
    } finally {
      im2colTuning.c4 = true;
    }
    // patch rows of K = 36 floats (144 B) against a 4 KiB binding: 28 pixels per chunk, 2
    // chunks of (im2col, the matmul's texture pack of a, matmul)
    setMaxBindingBytes(4096);
    expect(await check('cpu', { B: 1, Ci: 4, Co: 4, H: 13, W: 11, k: 3, stride: 2, pad: 1, bias: true, residual: true })).toBe(6);
    setMaxBindingBytes(undefined);
    // f16 weights as stored: the (pixels, Co) orientation, b read as packed halves
    if (dev.hasF16) expect(await families({ B: 2, Ci: 8, Co: 12, H: 9, W: 10, k: 3, stride: 2, pad: 1, bias: true, residual: true, f16: true })).toEqual(['im2col', 'im2col matmul']);
    // prepared f32 weights (Co = 7 is not a multiple of 4): the (Co, pixels) orientation,
    // the bias by row; the same values as the stored weight and the naive kernel
    const x = Tensor.fromArray(dev, randn(2 * 8 * 11 * 9, 41), [2, 8, 11, 9]);
    const w = Tensor.fromArray(dev, randn(7 * 8 * 9, 42, 0.5), [7, 8, 3, 3]);
    const bias = Tensor.fromArray(dev, randn(7, 43), [7]);
    const wp = prepareConvWeight(w);
    expect(wp).not.toBe(w);
    const opts = { stride: 2, padding: [0, 1, 0, 1] as [number, number, number, number], bias, act: 'silu' as const };
    const ref = await conv2d(x, w, { ...opts, variant: 'naive' }).toArray();
    dev.startProfile();
    const prep = await conv2d(x, wp, { ...opts, variant: 'cpu' }).toArray();
    expect([...(await dev.stopProfile()).keys()].sort()).toEqual(['im2col', 'im2col matmul']);
    expectClose(prep, ref, 1e-4, 'im2col with a prepared weight');
    expectClose(await conv2d(x, w, { ...opts, variant: 'cpu' }).toArray(), ref, 1e-4, 'im2col with the stored weight');
    for (const t of [x, w, wp, bias]) t.release();
    // not taken: K not a multiple of 4 (the VAE's conv_in has Ci = 3)
    expect(await families({ B: 1, Ci: 3, Co: 8, H: 9, W: 9, k: 3, stride: 2, pad: 1 })).not.toContain('im2col');
  });

  // Stride-1 convs on at most im2colTuning.s1MaxPixels pixels per call (64: the SD
  // UNet's 8x8 level at batch 1) take im2col + matmul too; larger ones Winograd or the
  // direct kernel.
  it('cpu: stride-1 convs on few pixels per call go through im2col + matmul', async () => {
    dev = await getDevice();
    if (dev.kind !== 'cpu') return;
    expect(im2colTuning.s1MaxPixels).toBe(64);
    expect(s1PixelsFrom(undefined)).toBe(64);
    expect(s1PixelsFrom('0')).toBe(0);
    expect(s1PixelsFrom('256')).toBe(256);
    expect(() => s1PixelsFrom('many')).toThrow('ELBO_IM2COL_S1_PIXELS=many: expected a number of pixels >= 0');
    expect(() => s1PixelsFrom('-1')).toThrow('ELBO_IM2COL_S1_PIXELS=-1');
    const families = async (c: Case): Promise<string[]> => {
      dev.startProfile();
      await check('cpu', c);
      return [...(await dev.stopProfile()).keys()].sort();
    };
    const im2col = ['im2col', 'im2col matmul'];
    // 8x8, pad 1 (edges of every side), fused epilogue; 7x9 with pad 0 (5x7 outputs)
    expect(await families({ B: 1, Ci: 16, Co: 12, H: 8, W: 8, k: 3, pad: 1, bias: true, residual: true, act: 'silu' })).toEqual(im2col);
    expect(await families({ B: 1, Ci: 8, Co: 8, H: 7, W: 9, k: 3, pad: 0, bias: true })).toEqual(im2col);
    if (dev.hasF16) expect(await families({ B: 1, Ci: 8, Co: 12, H: 8, W: 8, k: 3, pad: 1, bias: true, residual: true, f16: true })).toEqual(im2col);
    // 128 pixels per call: Winograd (batch 2 of the 8x8 level)
    expect(await families({ B: 2, Ci: 16, Co: 12, H: 8, W: 8, k: 3, pad: 1, bias: true })).not.toContain('im2col');
    im2colTuning.s1MaxPixels = 0;
    expect(await families({ B: 1, Ci: 16, Co: 12, H: 8, W: 8, k: 3, pad: 1, bias: true })).not.toContain('im2col');
  });

  it('cpu: Winograd goes in chunks of tiles and of output channels where its operands exceed one binding', async () => {
    dev = await getDevice();
    if (dev.kind !== 'cpu') return;
    setWinogradMinTiles(1);
    setWinogradTile(2);
    im2colTuning.s1MaxPixels = 0;
    // x and out (8 KiB) and U (4 KiB) fit a 12 KiB limit; V (16, 64 tiles, 8) = 32 KiB does not:
    // at most 24 tiles per chunk, so three chunks of 22, 22 and 20 tiles (input transform,
    // matmul, output transform each).
    setMaxBindingBytes(12288);
    expect(await check('cpu', { B: 1, Ci: 8, Co: 8, H: 16, W: 16, k: 3, pad: 1, bias: true, residual: true })).toBeGreaterThanOrEqual(10);
    // U (16, 24, 16) = 24 KiB against 8 KiB: three chunks of 8 output channels, each in two
    // chunks of 8 tiles (the UNet's 2560-channel inputs chunk their output channels so)
    setMaxBindingBytes(8192);
    expect(await check('cpu', { B: 1, Ci: 16, Co: 24, H: 8, W: 8, k: 3, pad: 1, bias: true, residual: true, act: 'silu' })).toBeGreaterThanOrEqual(15);
    // odd sizes, a batch of two: tiles of both images in one chunk sequence
    setMaxBindingBytes(16384);
    await check('cpu', { B: 2, Ci: 8, Co: 4, H: 15, W: 13, k: 3, pad: 1, bias: true, act: 'silu' });
    // F(4x4): U (36, 16, 16) = 36 KiB against 16 KiB: four chunks of 4 output channels, each
    // with V (36, 16 tiles, 16) = 36 KiB in three chunks of 6, 6 and 4 tiles, each an input
    // transform, the matmul's texture pack of V, the matmul and an output transform: 4 x (1 + 3 x 4)
    setWinogradTile(4);
    setMaxBindingBytes(16384);
    expect(await check('cpu', { B: 1, Ci: 16, Co: 16, H: 16, W: 15, k: 3, pad: 1, bias: true, residual: true, act: 'silu' })).toBe(52);
    // Chunks of tiles by bytes (winogradTuning.chunkBytes; 32 MiB on a CPU adapter) under a
    // binding that would hold them all: V (36, 49 tiles, 16) = 113 KiB in 20 KiB chunks, at
    // most 8 tiles each: seven chunks of 7 tiles, 1 + 7 x 4 dispatches.
    setMaxBindingBytes(undefined);
    const saved = winogradTuning.chunkBytes;
    winogradTuning.chunkBytes = 20 * 1024;
    try {
      expect(await check('cpu', { B: 1, Ci: 16, Co: 12, H: 27, W: 25, k: 3, pad: 1, bias: true, act: 'silu' })).toBe(29);
      // chunks rounded to the matmul's row block (48 rows with f32 b): F(2x2) at 24x24 is 144
      // tiles of 512 bytes of V; at most 100 a chunk gives two chunks, 96 and 48 tiles (72 and
      // 72 without the rounding), the same dispatches
      setWinogradTile(2);
      winogradTuning.chunkBytes = 100 * 512;
      const c = { B: 1, Ci: 8, Co: 8, H: 24, W: 24, k: 3, pad: 1, bias: true, residual: true } as const;
      const rounded = await check('cpu', c);
      winogradTuning.rowBlockChunks = false;
      expect(await check('cpu', c)).toBe(rounded);
    } finally {
      winogradTuning.chunkBytes = saved;
      winogradTuning.rowBlockChunks = true;
    }
  });

  it('cpu: chunks of Winograd tiles are whole row blocks of the matmul where the cap allows', async () => {
    dev = await getDevice();
    // the VAE encoder's 256x256 level (1024 tiles, at most 327 a chunk), its 512x512 level
    // (4096, 655) and its 128x128 level (256, 163)
    expect(chunkTiles(1024, 327, 48)).toBe(288);
    expect(chunkTiles(4096, 655, 48)).toBe(624);
    expect(chunkTiles(256, 163, 48)).toBe(144);
    expect(chunkTiles(1024, 327, 1)).toBe(256);
    // rounding up would pass the cap: equal chunks as before; one chunk: all tiles
    expect(chunkTiles(64, 24, 48)).toBe(22);
    expect(chunkTiles(10, 100, 48)).toBe(10);
    if (dev.kind === 'cpu' && dev.features.subgroups) expect(cpuGemmRowBlock(dev, 'f32')).toBe(8 * cpuGemmTuning.sgTile.TM);
  });

  it('cpu: prepareConvWeight leaves 3x3 weights with channels in multiples of 4 as stored (Winograd and im2col read them so)', async () => {
    dev = await getDevice();
    if (dev.kind !== 'cpu') return;
    const w = Tensor.fromArray(dev, randn(16 * 12 * 9, 12, 0.3), [16, 12, 3, 3]);
    expect(prepareConvWeight(w)).toBe(w);
    const w7 = Tensor.fromArray(dev, randn(7 * 12 * 9, 13, 0.3), [7, 12, 3, 3]); // Co = 7: the direct kernel's
    const p7 = prepareConvWeight(w7);
    expect(p7).not.toBe(w7);
    expect(p7.shape).toEqual([12, 3, 3, 7]);
    for (const t of [w, w7, p7]) t.release();
  });

  it("norm: GroupNorm + SiLU first; the cpu Winograd path reads it from groupNorm's texture, bit for bit", async () => {
    dev = await getDevice();
    setWinogradMinTiles(1);
    im2colTuning.s1MaxPixels = 0;
    // which path ran: groupNormIntoTexture's dispatch is labelled '... into texture'
    const labels: string[] = [];
    const dispatch = dev.dispatch.bind(dev);
    dev.dispatch = (a) => {
      labels.push(a.label);
      dispatch(a);
    };
    const run = async (c0: Case & { G: number; m?: 2 | 4 | 6 | 8; lastUse?: boolean; variant?: TestVariant }, texture: boolean): Promise<void> => {
      const c = { pad: 1, ...c0 };
      setWinogradTile(c.m);
      const what = `conv2d norm ${JSON.stringify(c)}`;
      const xd = randn(c.B * c.Ci * c.H * c.W, 5, 2);
      for (let i = 0; i < xd.length; i++) xd[i] += 0.5; // an offset mean
      let wd = randn(c.Co * c.Ci * 9, 6, 0.3);
      if (c.f16) wd = roundToF16(wd);
      const gd = randn(c.Ci, 7);
      const bd = randn(c.Ci, 8);
      const biasD = c.bias ? randn(c.Co, 9) : undefined;
      const nd = Float32Array.from(refGroupNorm(xd, c.B, c.Ci, c.H * c.W, c.G, gd, bd, 1e-5, true));
      const ref0 = refConv(nd, wd, c, biasD);
      const resD = c.residual ? randn(ref0.out.length, 10) : undefined;
      const ref = resD ? refConv(nd, wd, c, biasD, resD).out : ref0.out;
      const x = Tensor.fromArray(dev, xd, [c.B, c.Ci, c.H, c.W]);
      const w = Tensor.fromArray(dev, wd, [c.Co, c.Ci, 3, 3], c.f16 ? 'f16' : 'f32');
      const [gamma, beta] = [Tensor.fromArray(dev, gd, [c.Ci]), Tensor.fromArray(dev, bd, [c.Ci])];
      const bias = biasD ? Tensor.fromArray(dev, biasD, [c.Co]) : undefined;
      const residual = resD ? Tensor.fromArray(dev, resD, [c.B, c.Co, ref0.Ho, ref0.Wo]) : undefined;
      const variant = asVariant(c.variant ?? 'cpu');
      const common = { bias, residual, stride: c.stride, padding: c.pad, variant };
      // the two calls it stands for, on the same variant
      const n = groupNorm(x, c.G, gamma, beta, 1e-5, { silu: true, variant });
      const twoCalls = await conv2d(n, w, common).toArray();
      labels.length = 0;
      const out = conv2d(x, w, { ...common, norm: { groups: c.G, gamma, beta, eps: 1e-5, silu: true, lastUse: c.lastUse } });
      expect(labels.some((l) => l.endsWith('into texture')), what).toBe(texture);
      expect(x.released, what).toBe(Boolean(c.lastUse));
      const got = await out.toArray();
      expectClose(got, ref, c.m === 8 ? 3e-4 : 1e-4, what);
      expect(Array.from(got), what).toEqual(Array.from(twoCalls));
      for (const t of [x, w, gamma, beta, bias, residual, n, out]) if (t && !t.released) t.release();
    };
    try {
      if (dev.kind === 'cpu') {
        // every Winograd tile, edge tiles, batches, bias and residual, f16 weights, x released
        await run({ B: 1, Ci: 8, Co: 12, H: 9, W: 12, k: 3, G: 2, m: 8, bias: true, residual: true }, true);
        await run({ B: 2, Ci: 16, Co: 8, H: 10, W: 8, k: 3, G: 4, m: 4, lastUse: true }, true);
        await run({ B: 1, Ci: 8, Co: 4, H: 5, W: 4, k: 3, G: 1, m: 2, bias: true }, true);
        await run({ B: 1, Ci: 8, Co: 8, H: 7, W: 12, k: 3, G: 2, m: 6, residual: true }, true);
        if (dev.hasF16) await run({ B: 2, Ci: 8, Co: 8, H: 8, W: 8, k: 3, G: 2, m: 4, f16: true, bias: true }, true);
        // groupNorm's buffer, then the conv: groups of 2 channels (a texel holds 4), rows not a
        // multiple of 4, stride 2, the switch off
        await run({ B: 1, Ci: 8, Co: 4, H: 8, W: 8, k: 3, G: 4, m: 4, lastUse: true }, false);
        await run({ B: 1, Ci: 8, Co: 4, H: 8, W: 11, k: 3, G: 2, m: 4 }, false);
        await run({ B: 1, Ci: 8, Co: 4, H: 8, W: 8, k: 3, G: 2, stride: 2, bias: true }, false);
        convTuning.normTexture = false;
        await run({ B: 1, Ci: 8, Co: 12, H: 9, W: 12, k: 3, G: 2, m: 8, bias: true, residual: true }, false);
        convTuning.normTexture = true;
      }
      await run({ B: 2, Ci: 8, Co: 4, H: 6, W: 8, k: 3, G: 2, variant: 'naive', lastUse: true, residual: true }, false);
      const x = Tensor.fromArray(dev, randn(2 * 8 * 16, 1), [2, 8, 4, 4]);
      const w = Tensor.fromArray(dev, randn(8 * 8 * 9, 2), [8, 8, 3, 3]);
      const g = Tensor.fromArray(dev, randn(8, 3), [8]);
      expect(() => conv2d(x, w, { padding: 1, residual: x, norm: { groups: 2, gamma: g, beta: g, eps: 1e-5, lastUse: true } })).toThrow(
        'conv2d: norm.lastUse releases x (2x8x4x4), which is also the residual',
      );
      expect(() => conv2d(x, w, { padding: 1, norm: { groups: 3, gamma: g, beta: g, eps: 1e-5 } })).toThrow('8 channels of x (2x8x4x4) are not divisible into 3 groups');
      for (const t of [x, w, g]) t.release();
    } finally {
      convTuning.normTexture = true;
      delete (dev as { dispatch?: unknown }).dispatch;
    }
  });

  it('names both shapes on a mismatch', async () => {
    dev = await getDevice();
    const x = Tensor.zeros(dev, [1, 4, 8, 8]);
    expect(() => conv2d(x, Tensor.zeros(dev, [8, 3, 3, 3]))).toThrow('conv2d: input channels differ: x (1x4x8x8) vs w (8x3x3x3)');
    expect(() => conv2d(x, Tensor.zeros(dev, [8, 4, 3, 3]), { padding: 1, residual: Tensor.zeros(dev, [1, 8, 7, 7]) })).toThrow(/residual \(1x8x7x7\) does not match the output \(1x8x8x8\)/);
  });
});
