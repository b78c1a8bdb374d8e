import { describe, expect, it } from 'vitest';
import { runCli } from './helpers/cli.js';
import { getDevice } from './helpers/gpu.js';
import { winogradTuning } from '../src/kernels/winograd.js';
import { convTuning } from '../src/kernels/conv.js';

describe('doctor', () => {
  it('prints the adapter, its features and limits, and the kernel choices in use', async () => {
    const dev = await getDevice();
    const text = await runCli(['doctor']);
    expect(text.code).toBe(0);
    expect(text.out).toMatch(/^adapter: /m);
    expect(text.out).toMatch(/features:\s+shader-f16 (yes|no), subgroups (yes|no), timestamp-query (yes|no)/);
    expect(text.out).toContain(`maxStorageBufferBindingSize          ${dev.limits.maxStorageBufferBindingSize}`);
    // A CPU adapter's buffers are host memory: its pool keeps 512 MiB of free buffers, a GPU's 2 GiB.
    expect(dev.hostMemory).toBe(dev.adapter.isFallback);
    expect(dev.poolCap).toBe((dev.hostMemory ? 512 : 2048) * 2 ** 20);
    expect(text.out).toMatch(new RegExp(`^submits:\\s+every ${dev.maxBatch} dispatches and at each readback`, 'm'));
    expect(text.out).toMatch(new RegExp(`^pool:\\s+free buffers kept for reuse up to ${dev.poolCap / 2 ** 20} MiB`, 'm'));
    expect(text.out).toMatch(new RegExp(`^  matmul\\s+${dev.kind}\\s+/ naive, cpu, gpu$`, 'm'));
    expect(text.out).toMatch(/'cpu' kernels.*F\(8x8\) on large images on \(ELBO_WINOGRAD_F8\), f16 U for f16 weights on \(ELBO_WINOGRAD_F16U\), stride-2 downsamplers by F\(8x8, 2x2\) \/ F\(4x4, 2x2\) \(ELBO_WINOGRAD_S2\)/);
    expect(text.out).toMatch(/'gpu' kernels.*heads wider than 160 by GEMM \(ELBO_GPU_ATTN_WIDE\), head-mean probs by the gpu kernel \(ELBO_GPU_PROBS\)/);

    // No lavapipe line unless the vector width is set by hand; then it names the width and the cache.
    if (process.env.LP_NATIVE_VECTOR_WIDTH === undefined) expect(text.out).not.toMatch(/^lavapipe:/m);
    const saved = { w: process.env.LP_NATIVE_VECTOR_WIDTH, c: process.env.MESA_SHADER_CACHE_DIR };
    process.env.LP_NATIVE_VECTOR_WIDTH = '512';
    process.env.MESA_SHADER_CACHE_DIR = 'lp512-cache'; // only printed, never opened
    try {
      const lp = await runCli(['doctor']);
      expect(lp.out).toMatch(/^lavapipe:  LP_NATIVE_VECTOR_WIDTH=512 \(the 'cpu' kernels are written for 256 bits: subgroups of 8\); shader cache lp512-cache$/m);
    } finally {
      for (const [k, v] of [['LP_NATIVE_VECTOR_WIDTH', saved.w], ['MESA_SHADER_CACHE_DIR', saved.c]] as const) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }

    winogradTuning.f16U = false;
    winogradTuning.s2 = false;
    convTuning.normTexture = false;
    try {
      const json = await runCli(['doctor', '--json']);
      const r = JSON.parse(json.out) as { kind: string; limits: Record<string, number>; poolCapMb: number; maxBatch: number; kernels: Record<string, { inUse: string }>; cpuKernels: Record<string, unknown> };
      expect(r.kind).toBe(dev.kind);
      expect(r.poolCapMb).toBe(dev.poolCap / 2 ** 20);
      expect(r.maxBatch).toBe(dev.maxBatch);
      expect(r.limits.maxBufferSize).toBe(dev.limits.maxBufferSize);
      expect(r.kernels.attention!.inUse).toBe(dev.kind);
      expect(r.cpuKernels).toMatchObject({ winogradF16U: false, winogradF8: true, winogradS2: 'off', matmulTile: '6x8', matmulTileF16: '8x8', matmulF16K4: true, attentionTile: '8x32', attentionTileWide: '4x32', im2colStride1MaxPixels: 64, convNormTexture: false, winogradRowBlockChunks: true });
    } finally {
      winogradTuning.f16U = true;
      winogradTuning.s2 = true;
      convTuning.normTexture = true;
    }
  });
});
