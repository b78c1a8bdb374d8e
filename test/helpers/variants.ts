// GEMM variants as the kernel tests run them: the adapter's variants ('cpu' reading a from a
// texture, as on lavapipe, and 'cpu-buf' from its buffer) plus the 'gpu' variant's
// big-tile kernel (gpuGemmTuning.kernel 'v2'), once with K split over workgroups wherever
// K >= 32 ('gpu2', the small tests' outputs have few tiles), once never split
// ('gpu2-whole'), and once with 3x3 convs by Winograd ('gpu2-wino'). MM_VARIANTS=a,b picks
// some.
import { cpuGemmTuning, gpuGemmTuning, variants, type MatmulVariant } from '../../src/kernels/matmul.js';

export type TestVariant = MatmulVariant | 'cpu-buf' | 'gpu2' | 'gpu2-whole' | 'gpu2-wino';

const DEFAULTS = { ...gpuGemmTuning };
const CPU_DEFAULTS = { ...cpuGemmTuning };

export function gemmVariants(opts: { whole?: boolean } = {}): TestVariant[] {
  const env = process.env.MM_VARIANTS?.split(',') as TestVariant[] | undefined;
  const all: TestVariant[] = [...variants().flatMap((v) => (v === 'cpu' ? ['cpu', 'cpu-buf'] : [v])), 'gpu2', 'gpu2-wino', ...(opts.whole ? (['gpu2-whole'] as const) : [])] as TestVariant[];
  return env ? all.filter((v) => env.includes(v)) : all;
}

/** cpuGemmTuning choices a test sets on top of each variant's (e.g. f16K4 off). */
export const cpuTestOverrides: Partial<typeof cpuGemmTuning> = {};

/** Sets gpuGemmTuning for `v` and returns the variant to pass to matmul / conv2d. */
export function asVariant(v: TestVariant): MatmulVariant {
  Object.assign(gpuGemmTuning, DEFAULTS, { kernel: v.startsWith('gpu2') ? 'v2' : 'v1', winograd: v === 'gpu2-wino' ? 'all' : 'off' });
  if (v === 'gpu2' || v === 'gpu2-wino') gpuGemmTuning.minSplitK = 16;
  if (v === 'gpu2-whole') gpuGemmTuning.targetWorkgroups = 0;
  Object.assign(cpuGemmTuning, CPU_DEFAULTS, { aTexture: v !== 'cpu-buf' }, cpuTestOverrides);
  return v.startsWith('gpu2') ? 'gpu' : v === 'cpu-buf' ? 'cpu' : (v as MatmulVariant);
}
