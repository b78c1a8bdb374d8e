export { Device, GpuError, bindCache, bucketSize, dawnFlags, lavapipeCacheEnv, maxBatchFrom, poolCapFrom, type Binding, type BufferBinding, type DType, type DispatchArgs, type AdapterSummary, type PipelineSpec, type PipelineCompile } from './device.js';
export { Tensor, scope, scopeAsync, keep, lastUse, numelOf, byteSizeOf, bytesPerElement, shapeStr, type Shape } from './tensor.js';
export { toHalfBits, fromHalfBits, f32ToF16Bits, f16BitsToF32, roundToF16 } from './half.js';
export { loadShader, fillTemplate, grid1d, uniforms } from './shader.js';
