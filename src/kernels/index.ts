// Every kernel op (docs/KERNELS.md), for models and commands.
import { variants as attentionVariants } from './attention.js';
import { elementwiseVariants } from './elementwise.js';
import { layoutVariants } from './layout.js';
import { resizeVariants } from './resize.js';
import { variants as matmulVariants } from './matmul.js';
import { convVariants } from './conv.js';
import { normVariants } from './norm.js';

export * from './elementwise.js';
export * from './reduce.js';
export * from './resize.js';
export * from './layout.js';
export * from './embedding.js';
export * from './matmul.js';
export * from './conv.js';
export * from './norm.js';
export * from './attention.js';
export { attentionVariants, matmulVariants };

/**
 * Kernel variants per family. Each module's own `variants()` lists its variants; the
 * plain name is ambiguous across `export *`, so the index exports this map under it.
 */
export function variants(): Record<string, string[]> {
  return { matmul: matmulVariants(), conv2d: convVariants(), attention: attentionVariants(), norm: normVariants(), elementwise: elementwiseVariants(), layout: layoutVariants(), resize: resizeVariants() };
}
