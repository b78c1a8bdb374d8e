// `elbo-t2ialign doctor`: what WebGPU adapter we run on and which kernel variants it gets.
import { Device, dawnFlags } from '../tensor/index.js';
import { variants } from '../kernels/index.js';
import { cpuGemmTuning, gpuGemmTuning } from '../kernels/matmul.js';
import { attentionTuning } from '../kernels/attention.js';
import { winogradTuning } from '../kernels/winograd.js';
import { im2colTuning } from '../kernels/im2col.js';
import { convTuning } from '../kernels/conv.js';

export async function runDoctor(args: string[]): Promise<number> {
  if (args.includes('--help') || args.includes('-h')) {
    console.log('Usage: elbo-t2ialign doctor [--json]\nPrints the WebGPU adapter, its features and limits, and the kernel variants chosen for it.\nELBO_KERNELS=gpu|cpu forces the variant family.');
    return 0;
  }
  const dev = await Device.get();
  // Families with a lavapipe-shaped and a GPU-shaped variant pick by adapter kind; the
  // others have one fast variant beside the naive reference.
  const inUse = (available: string[]): string => (available.includes(dev.kind) ? dev.kind : available.find((v) => v !== 'naive') ?? 'naive');
  const kernels = Object.fromEntries(Object.entries(variants()).map(([k, v]) => [k, { inUse: inUse(v), available: v }]));
  // Within the 'gpu' variant: which kernels (docs/GPU.md; ELBO_GPU_GEMM / _WINOGRAD / _ATTN).
  const gpuKernels = {
    gemm: gpuGemmTuning.kernel,
    winograd: gpuGemmTuning.winograd,
    attention: attentionTuning.gpuKernel,
    attentionV2: { R: attentionTuning.gpuV2.R, WG: attentionTuning.gpuV2.WG, KB: attentionTuning.gpuV2.KB },
    attentionWideByGemmAbove: attentionTuning.gpuWideByGemmAbove,
    attentionProbs: attentionTuning.gpuProbs ? 'gpu' : 'cpu',
  };
  // Within the 'cpu' variant: the lavapipe choices (docs/KERNELS.md), each with its switch.
  const on = (b: boolean): string => (b ? 'on' : 'off');
  const cpuKernels = {
    matmulATexture: cpuGemmTuning.aTexture,
    matmulTile: `${cpuGemmTuning.sgTile.TM}x${cpuGemmTuning.sgTile.NV}`,
    matmulTileF16: `${cpuGemmTuning.sgTileF16.TM}x${cpuGemmTuning.sgTileF16.NV}`,
    matmulF16K4: cpuGemmTuning.f16K4,
    attentionTextures: attentionTuning.cpuTextures,
    attentionTile: `${attentionTuning.cpuFwd.R}x${attentionTuning.cpuFwd.JB}`,
    attentionTileWide: `${attentionTuning.cpuFwd.wideR}x${attentionTuning.cpuFwd.JB}`,
    winogradF16U: winogradTuning.f16U,
    winograd: process.env.ELBO_WINOGRAD !== '0',
    winogradF8: winogradTuning.f8,
    winogradS2: !winogradTuning.s2 ? 'off' : winogradTuning.s2Tile ? `F(${winogradTuning.s2Tile}x${winogradTuning.s2Tile}, 2x2)` : 'F(8x8, 2x2) / F(4x4, 2x2)',
    im2colStride1MaxPixels: im2colTuning.s1MaxPixels,
    convNormTexture: convTuning.normTexture,
    winogradRowBlockChunks: winogradTuning.rowBlockChunks,
  };
  const report = {
    adapter: dev.adapter,
    kind: dev.kind,
    features: dev.features,
    limits: dev.limits,
    poolCapMb: dev.poolCap / 2 ** 20,
    maxBatch: dev.maxBatch,
    kernels,
    cpuKernels,
    gpuKernels,
  };
  if (args.includes('--json')) {
    console.log(JSON.stringify(report, null, 1));
    return 0;
  }
  const a = dev.adapter;
  const kindText = dev.kind === 'cpu' ? 'cpu (lavapipe-shaped kernels: workgroup 8, register blocks, no shared memory)' : 'gpu (shared-memory tiled kernels, large workgroups)';
  console.log(`adapter:   ${a.description || a.device || '(no description)'} [vendor ${a.vendor || '?'}, architecture ${a.architecture || '?'}]${a.isFallback ? ' (CPU / fallback adapter)' : ''}`);
  console.log(`dawn:      ${dawnFlags(process.env, dev.hostMemory).join(' ') || '(default toggles)'}${process.env.ELBO_ROBUST === '1' ? ' (ELBO_ROBUST=1: bounds clamps kept)' : ''}${dev.hostMemory && process.env.ELBO_LAZY_CLEAR === '1' ? ' (ELBO_LAZY_CLEAR=1: Dawn zero-fills new buffers)' : ''}`);
  // Set by hand (lavapipe's vector width): the workgroups of 8 then fill part of each vector.
  const lpWidth = process.env.LP_NATIVE_VECTOR_WIDTH;
  if (lpWidth !== undefined) {
    console.log(`lavapipe:  LP_NATIVE_VECTOR_WIDTH=${lpWidth} (the 'cpu' kernels are written for 256 bits: subgroups of 8); shader cache ${process.env.MESA_SHADER_CACHE_DIR ?? "Mesa's default"}`);
  }
  console.log(`kernels:   ${kindText}${process.env.ELBO_KERNELS ? ` (forced by ELBO_KERNELS=${process.env.ELBO_KERNELS})` : ''}`);
  console.log(`features:  shader-f16 ${dev.features.f16 ? 'yes' : 'no'}, subgroups ${dev.features.subgroups ? 'yes' : 'no'}, timestamp-query ${dev.features.timestamp ? 'yes' : 'no'}`);
  console.log(`pool:      free buffers kept for reuse up to ${(dev.poolCap / 2 ** 20).toFixed(0)} MiB${process.env.ELBO_POOL_MB ? ' (ELBO_POOL_MB)' : dev.hostMemory ? ' (a CPU adapter: buffers are host memory; ELBO_POOL_MB sets it)' : ' (ELBO_POOL_MB sets it)'}`);
  console.log(`submits:   every ${dev.maxBatch} dispatches and at each readback${process.env.ELBO_MAX_BATCH ? ' (ELBO_MAX_BATCH)' : ' (ELBO_MAX_BATCH sets it)'}`);
  console.log('limits:');
  for (const [k, v] of Object.entries(dev.limits)) console.log(`  ${k.padEnd(36)} ${v}`);
  console.log('kernel variants (in use / available):');
  for (const [k, v] of Object.entries(kernels)) console.log(`  ${k.padEnd(12)} ${v.inUse.padEnd(8)} / ${v.available.join(', ')}`);
  const g = gpuKernels;
  const a2 = g.attention === 'v2' ? ` (${g.attentionV2.R} row per invocation, ${g.attentionV2.WG} invocations)` : '';
  const wide = Number.isFinite(g.attentionWideByGemmAbove) ? `, heads wider than ${g.attentionWideByGemmAbove} by GEMM (ELBO_GPU_ATTN_WIDE)` : '';
  console.log(
    `'gpu' kernels${dev.kind === 'gpu' ? '' : ' (when asked for)'}: GEMM ${g.gemm}, Winograd ${g.winograd}, attention ${g.attention}${a2}${wide}, ` +
      `head-mean probs by the ${g.attentionProbs} kernel (ELBO_GPU_PROBS)`,
  );
  const c = cpuKernels;
  console.log(
    `'cpu' kernels${dev.kind === 'cpu' ? '' : ' (when asked for)'}: matmul a from a texture ${on(c.matmulATexture)} (ELBO_MATMUL_ATEX), tile ${c.matmulTile} (f32 b) / ${c.matmulTileF16} (f16 b), ` +
      `f16 b read 4 halves of K per load ${on(c.matmulF16K4)} (ELBO_MATMUL_F16_K4); ` +
      `attention q/k/v from textures ${on(c.attentionTextures)} (ELBO_ATTN_TEX), tile ${c.attentionTile} (${c.attentionTileWide} for heads wider than its rows fit in workgroup memory); ` +
      `3x3 convs by Winograd ${on(c.winograd)} (ELBO_WINOGRAD), F(8x8) on large images ${on(c.winogradF8)} (ELBO_WINOGRAD_F8), ` +
      `f16 U for f16 weights ${on(c.winogradF16U)} (ELBO_WINOGRAD_F16U), stride-2 downsamplers by ${c.winogradS2} (ELBO_WINOGRAD_S2), ` +
      `stride-1 convs on up to ${c.im2colStride1MaxPixels} pixels per call by im2col + matmul (ELBO_IM2COL_S1_PIXELS), ` +
      `conv2d's GroupNorm into the Winograd input's texture ${on(c.convNormTexture)} (ELBO_CONV_NORM_TEX), ` +
      `Winograd chunks in whole matmul row blocks ${on(c.winogradRowBlockChunks)} (ELBO_WINOGRAD_ROWBLOCK)`,
  );
  return 0;
}
