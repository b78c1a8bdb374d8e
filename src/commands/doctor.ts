// `elbo-t2ialign doctor`: what WebGPU adapter we run on and which kernel variants it gets.
import { Device } from '../tensor/index.js';
import * as attention from '../kernels/attention.js';
import * as matmul from '../kernels/matmul.js';
import * as conv from '../kernels/conv.js';
import * as norm from '../kernels/norm.js';

export async function runDoctor(args: string[]): Promise<number> {
  if (args.includes('--help') || args.includes('-h')) {
    console.log('Usage: elbo-t2ialign doctor [--json]\nPrints the WebGPU adapter, its features and limits, and the kernel variants chosen for it.');
    return 0;
  }
  const dev = await Device.get();
  const chosen = (m: { variants?: () => string[]; defaultVariant?: (d: Device) => string }): string =>
    m.defaultVariant ? m.defaultVariant(dev) : dev.kind;
  const report = {
    adapter: dev.adapter,
    kind: dev.kind === 'cpu' ? 'cpu (lavapipe-shaped kernels: workgroup 8, register blocks, no shared memory)' : 'gpu (shared-memory tiled kernels)',
    features: dev.features,
    limits: dev.limits,
    kernels: {
      matmul: { inUse: chosen(matmul as never), available: (matmul as { variants?: () => string[] }).variants?.() ?? [] },
      conv2d: { inUse: chosen(conv as never), available: (conv as { variants?: () => string[] }).variants?.() ?? [] },
      attention: { inUse: chosen(attention as never), available: attention.variants() },
      norm: { inUse: chosen(norm as never), available: (norm as { variants?: () => string[] }).variants?.() ?? [] },
    },
  };
  if (args.includes('--json')) {
    console.log(JSON.stringify(report, null, 1));
    return 0;
  }
  const a = dev.adapter;
  console.log(`adapter:   ${a.description || a.device || '(no description)'} [vendor ${a.vendor || '?'}, architecture ${a.architecture || '?'}]${a.isFallback ? ' (CPU / fallback adapter)' : ''}`);
  console.log(`kernels:   ${report.kind}${process.env.ELBO_KERNELS ? ` (forced by ELBO_KERNELS=${process.env.ELBO_KERNELS})` : ''}`);
  console.log(`features:  shader-f16 ${dev.features.f16 ? 'yes' : 'no'}, subgroups ${dev.features.subgroups ? 'yes' : 'no'}, timestamp-query ${dev.features.timestamp ? 'yes' : 'no'}`);
  console.log('limits:');
  for (const [k, v] of Object.entries(dev.limits)) console.log(`  ${k.padEnd(36)} ${v}`);
  console.log('kernel variants (in use / available):');
  for (const [k, v] of Object.entries(report.kernels)) console.log(`  ${k.padEnd(10)} ${v.inUse.padEnd(6)} / ${v.available.join(', ')}`);
  return 0;
}
