// The one WebGPU device of the process: adapter, limits, features, pipeline cache, buffer
// pool and command batching. Knows no kernel: kernels hand it a pipeline, bindings,
// uniforms and a workgroup count.
import os from 'node:os';
import path from 'node:path';
import { create, globals } from 'webgpu';

export type DType = 'f32' | 'f16';

/** A storage binding: a whole buffer or a window into one (offset/size in bytes). */
export interface BufferBinding {
  buffer: GPUBuffer;
  offset?: number;
  size?: number;
}

/** A texture bound whole (sampled, or as a storage texture when the shader writes it). */
export interface TextureBinding {
  texture: GPUTextureView;
}

/** One entry of a dispatch's bindings; null leaves that binding number out (a shader that
 *  does not use it, e.g. a texture-reading variant whose buffer operand is unused). */
export type Binding = BufferBinding | TextureBinding;

export interface DispatchArgs {
  /** Op name and shapes, used in error messages and profiles, e.g. "matmul (4096x320)@(320x320)". */
  label: string;
  /** Kernel family for profiling (e.g. "matmul"); defaults to the first word of label. */
  family?: string;
  pipeline: GPUComputePipeline;
  /** Uniform parameters (bound at @binding(0)); storage bindings follow from @binding(1). */
  uniforms?: ArrayBuffer | ArrayBufferView;
  bindings: (Binding | null)[];
  workgroups: readonly [number, number?, number?];
}

export interface AdapterSummary {
  vendor: string;
  architecture: string;
  device: string;
  description: string;
  isFallback: boolean;
}

export class GpuError extends Error {}

const DRIVER_HELP =
  'No WebGPU adapter found. On Debian 12 install the CPU Vulkan driver (Mesa 25 lavapipe) from ' +
  'bookworm-backports: add /etc/apt/sources.list.d/backports.sources with "Types: deb", ' +
  '"URIs: http://deb.debian.org/debian", "Suites: bookworm-backports", "Components: main", ' +
  '"Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg", then run `apt-get update && ' +
  'apt-get install -y -t bookworm-backports mesa-vulkan-drivers libvulkan1`. On a machine with a ' +
  'GPU, install its Vulkan driver (e.g. the NVIDIA driver with Vulkan support).';

/**
 * Flags for Dawn's instance. Tint's robustness transform (a clamp on every storage-buffer
 * index) is turned off unless ELBO_ROBUST=1: every kernel here clamps or masks its own
 * indices (tested on shapes that are not tile multiples), and on lavapipe, where each
 * per-lane load is already a scalar load with a bounds check, the extra clamps cost about a
 * third of the matmul time (4096x320x1280 f32: 8.5 -> 11.8 GFLOP/s).
 * With `hostMemory` (a CPU adapter) Dawn's zero fill of each new buffer and texture before
 * its first use is turned off too, unless ELBO_LAZY_CLEAR=1: the engine never reads memory
 * it has not written (pooled buffers come back holding old data anyway, and Tensor.zeros
 * clears explicitly). On lavapipe the fill is a memset of every buffer made, touching pages
 * a buffer's own writes would not: the VAE encoder at 512x512, which makes its 128 MB
 * activations again past the pool's cap, ran 2-4% faster without it (three alternated
 * pairs, 7.86-8.05 -> 7.57-7.85 s), and a short f16 segmentation's peak RSS fell
 * 3661-3673 -> 3616 MB. GPUs keep the fill: not measured there.
 * ELBO_DAWN_FLAGS replaces the list (space-separated, e.g. "enable-dawn-features=...").
 */
export function dawnFlags(env: NodeJS.ProcessEnv = process.env, hostMemory = false): string[] {
  if (env.ELBO_DAWN_FLAGS !== undefined) return env.ELBO_DAWN_FLAGS.split(' ').filter(Boolean);
  const flags: string[] = [];
  if (env.ELBO_ROBUST !== '1') flags.push('enable-dawn-features=disable_robustness');
  if (hostMemory && env.ELBO_LAZY_CLEAR !== '1') flags.push('disable-dawn-features=lazy_clear_resource_on_first_use');
  return flags;
}

/**
 * MESA_SHADER_CACHE_DIR for a run where LP_NATIVE_VECTOR_WIDTH is set (lavapipe's vector
 * width, read once when the driver loads: 256 bits by default on x86-64 with AVX2 or
 * AVX-512, i.e. subgroups of 8; 512 gives 16): a cache of that width's own beside Mesa's
 * default one (`~/.cache/mesa_shader_cache_lp<width>`, or under XDG_CACHE_HOME). While runs
 * at 256 and 512 bits shared Mesa's on-disk cache here (Mesa 25.0.7), 16-lane kernels read
 * wrong texels (every matmul test failed) until the cache was disabled or deleted; not
 * reproduced from a clean cache (docs/KERNELS.md). Nothing when the width is not set or the
 * user names a cache directory. GPU drivers ignore both variables.
 */
export function lavapipeCacheEnv(env: NodeJS.ProcessEnv, home = os.homedir()): Record<string, string> {
  const width = env.LP_NATIVE_VECTOR_WIDTH?.trim();
  if (!width || env.MESA_SHADER_CACHE_DIR !== undefined) return {};
  return { MESA_SHADER_CACHE_DIR: path.join(env.XDG_CACHE_HOME || path.join(home, '.cache'), `mesa_shader_cache_lp${width.replace(/[^0-9A-Za-z]/g, '_')}`) };
}

/** A CPU adapter (lavapipe, SwiftShader): buffers are host memory. */
function isHostMemoryAdapter(info: GPUAdapterInfo): boolean {
  return Boolean((info as unknown as { isFallbackAdapter?: boolean }).isFallbackAdapter) ||
    /llvmpipe|lavapipe|swiftshader/i.test(`${info.device} ${info.description} ${info.architecture}`);
}

// Dawn's Node binding segfaults later if the object from create() is garbage-collected
// (PLATFORM.md): keep it for the life of the process.
let gpuRoot: GPU | undefined;
let hostRoot: GPU | undefined;
let instance: Promise<Device> | undefined;

const UNIFORM_SLOT = 256;
const UNIFORM_RING_SLOTS = 2048;
const UNIFORM_ARENA_BYTES = 64 * 1024;

interface UniformSlot {
  buffer: GPUBuffer;
  offset: number;
  id: number;
}

/** Bind-group reuse (Device.cachedBindGroup); ELBO_BIND_CACHE=0 makes a group per dispatch. */
export const bindCache = {
  enabled: process.env.ELBO_BIND_CACHE !== '0',
  maxGroups: 16384,
  /** 256 bytes each: 8 MiB at most. */
  maxUniformSlots: 32768,
};
const MAX_BATCH = 128;
/**
 * Dispatches per submit on a CPU adapter. Dawn frees a destroyed buffer's memory only once
 * it sees the submit that used it finished. With 128 per submit, a forward that evicts
 * buffers from the pool ran ~1.4 GB of freed-but-held memory ahead of lavapipe; with 16,
 * 0.8 GB (high-water mark of an SD 1.5 collect call at batch 2: 6109 -> 5551 MB; 4 per
 * submit: 5410), at the same speed (a submit costs ~0.1 ms there).
 */
const CPU_MAX_BATCH = 16;
const MAX_POOLED_BYTES = 2 * 1024 ** 3;

/**
 * The pool's cap where buffers are host memory (a CPU adapter: lavapipe). The 2 GiB cap
 * held ~2 GB of free buffers through a full-size segmentation there. At 512 MiB an SD 1.5
 * forward at batch 2 evicts 288 buffers and the process holds 1.3 GB less. Making buffers
 * again costs page faults and Dawn's zero fill: within this machine's noise for UNet
 * forwards, but the VAE encoder at 512x512 (128-256 MB activations) runs ~15% slower. At
 * 256 MiB a forward evicts 705 (docs/KERNELS.md, "Memory on a CPU adapter").
 */
const CPU_POOLED_BYTES = 512 * 1024 ** 2;

/** Dispatches recorded per submit: ELBO_MAX_BATCH (an integer >= 1) when set, else `fallback`. */
export function maxBatchFrom(value: string | undefined, fallback: number): number {
  if (value === undefined || value.trim() === '') return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new GpuError(`ELBO_MAX_BATCH=${value}: expected an integer >= 1`);
  return n;
}

/** The pool's cap in bytes: ELBO_POOL_MB (MiB of free buffers kept for reuse) when set, else `fallback`. */
export function poolCapFrom(value: string | undefined, fallback: number): number {
  if (value === undefined || value.trim() === '') return fallback;
  const mb = Number(value);
  if (!Number.isFinite(mb) || mb < 0) throw new GpuError(`ELBO_POOL_MB=${value}: expected a number of MiB >= 0`);
  return Math.floor(mb * 2 ** 20);
}

/** Rounds a byte size up to a pool bucket: 1/8 steps of its power of two (<= 12.5% waste). */
export function bucketSize(bytes: number): number {
  const b = Math.max(256, Math.ceil(bytes / 4) * 4);
  if (b <= 4096) return Math.ceil(b / 256) * 256;
  const p = 2 ** Math.floor(Math.log2(b));
  const step = p / 8;
  return Math.ceil(b / step) * step;
}

/** Bytes of an rgba32float texture. */
function textureBytes(width: number, height: number, layers: number): number {
  return width * height * layers * 16;
}

function bytesOf(data: ArrayBuffer | ArrayBufferView): Uint8Array {
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

export class Device {
  readonly gpu: GPUDevice;
  readonly adapter: AdapterSummary;
  readonly features: { f16: boolean; subgroups: boolean; timestamp: boolean };
  readonly limits: {
    maxStorageBufferBindingSize: number;
    maxBufferSize: number;
    maxComputeWorkgroupStorageSize: number;
    maxComputeInvocationsPerWorkgroup: number;
    maxComputeWorkgroupsPerDimension: number;
    maxComputeWorkgroupSizeX: number;
    maxStorageBuffersPerShaderStage: number;
    minUniformBufferOffsetAlignment: number;
    maxTextureDimension2D: number;
    maxTextureArrayLayers: number;
  };
  /** 'cpu' for lavapipe / fallback adapters: kernels pick lavapipe-shaped variants there. */
  readonly kind: 'cpu' | 'gpu';

  private pipelines = new Map<string, GPUComputePipeline>();
  private compiles: PipelineCompile[] = [];
  private pool = new Map<number, GPUBuffer[]>();
  private texturePool = new Map<string, GPUTexture[]>();
  private pooledBytes = 0;
  /** Every pooled buffer and texture, least recently released first (evicted first). */
  private poolOrder = new Set<GPUBuffer | GPUTexture>();
  /** Evicted from the pool, destroyed once the work recorded so far is submitted. */
  private doomed: (GPUBuffer | GPUTexture)[] = [];
  private doomedBytes = 0;
  private encoder: GPUCommandEncoder | null = null;
  private pass: GPUComputePassEncoder | null = null;
  private passPipeline: GPUComputePipeline | null = null;
  private batchLabels: string[] = [];
  private uniformRing: GPUBuffer;
  private uniformStage: Uint8Array;
  private uniformUsed = 0;
  private bindGroups = new Map<string, GPUBindGroup>();
  private uniformSlots = new Map<string, UniformSlot>();
  private uniformArena: GPUBuffer | null = null;
  private uniformArenaUsed = 0;
  private objectIds = new WeakMap<object, number>();
  private nextObjectId = 0;
  private lostReason: string | null = null;
  private uncaptured: string | null = null;
  private stagingPool: GPUBuffer[] = [];
  private profiler: Profiler | null = null;

  /** Bytes in buffers handed out and not yet released (the engine's live GPU memory). */
  liveBytes = 0;
  peakLiveBytes = 0;
  dispatchCount = 0;
  /** Benchmark hook (bench -- record): finished command buffers are dropped, not submitted,
   *  so only the host's cost of recording is measured. Results are garbage meanwhile. */
  skipSubmit = false;
  /** Dispatches that found their bind group cached / had to create it (bindCache). */
  bindGroupHits = 0;
  bindGroupMisses = 0;
  /** Bytes of free buffers and textures the pool keeps for reuse (ELBO_POOL_MB; tests lower it). */
  poolCap: number;
  /** Dispatches recorded before a submit (ELBO_MAX_BATCH; fewer on a CPU adapter). */
  maxBatch: number;
  /**
   * Whether GPU buffers are host RAM, one to one (a CPU adapter such as lavapipe). The
   * memory-saving defaults key on it: the pool's cap and the submits here, Winograd tiles in
   * chunks (winograd.ts), the text encoder offloaded once prompts are embedded (segment.ts),
   * and Dawn's lazy zero fill turned off (dawnFlags, through isHostMemoryAdapter).
   */
  readonly hostMemory: boolean;
  /** Free buffers and textures evicted from the pool because it was full (poolCap). */
  poolEvictions = 0;
  submitCount = 0;

  private constructor(gpu: GPUDevice, adapter: GPUAdapter) {
    this.gpu = gpu;
    const info = adapter.info;
    const isFallback = isHostMemoryAdapter(info);
    this.adapter = {
      vendor: info.vendor ?? '',
      architecture: info.architecture ?? '',
      device: info.device ?? '',
      description: info.description ?? '',
      isFallback,
    };
    this.hostMemory = isFallback;
    this.poolCap = poolCapFrom(process.env.ELBO_POOL_MB, this.hostMemory ? CPU_POOLED_BYTES : MAX_POOLED_BYTES);
    this.maxBatch = maxBatchFrom(process.env.ELBO_MAX_BATCH, this.hostMemory ? CPU_MAX_BATCH : MAX_BATCH);
    this.features = {
      f16: gpu.features.has('shader-f16'),
      subgroups: gpu.features.has('subgroups'),
      timestamp: gpu.features.has('timestamp-query'),
    };
    const l = gpu.limits;
    this.limits = {
      maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
      maxBufferSize: l.maxBufferSize,
      maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
      maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
      maxComputeWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension,
      maxComputeWorkgroupSizeX: l.maxComputeWorkgroupSizeX,
      maxStorageBuffersPerShaderStage: l.maxStorageBuffersPerShaderStage,
      minUniformBufferOffsetAlignment: l.minUniformBufferOffsetAlignment,
      maxTextureDimension2D: l.maxTextureDimension2D,
      maxTextureArrayLayers: l.maxTextureArrayLayers,
    };
    const forced = process.env.ELBO_KERNELS;
    this.kind = forced === 'gpu' ? 'gpu' : forced === 'cpu' ? 'cpu' : isFallback ? 'cpu' : 'gpu';
    this.uniformRing = gpu.createBuffer({
      label: 'uniform ring',
      size: UNIFORM_SLOT * UNIFORM_RING_SLOTS,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    });
    this.uniformStage = new Uint8Array(UNIFORM_SLOT * UNIFORM_RING_SLOTS);
    gpu.lost.then((info) => {
      this.lostReason = `${info.reason}: ${info.message}`;
    });
    gpu.onuncapturederror = (ev: GPUUncapturedErrorEvent) => {
      this.uncaptured ??= ev.error.message;
    };
  }

  /** The process-wide device (created on first use). */
  static get(): Promise<Device> {
    instance ??= Device.create();
    return instance;
  }

  /** The device if one was created (and creation finished), without creating one. */
  static async peek(): Promise<Device | undefined> {
    if (!instance) return undefined;
    try {
      return await instance;
    } catch {
      return undefined;
    }
  }

  private static async create(): Promise<Device> {
    Object.assign(globalThis, globals);
    const request = async (root: GPU): Promise<GPUAdapter> => {
      let a: GPUAdapter | null = null;
      try {
        a = await root.requestAdapter({ powerPreference: 'high-performance' });
      } catch (e) {
        throw new GpuError(`${DRIVER_HELP} (requestAdapter failed: ${(e as Error).message})`);
      }
      if (!a) throw new GpuError(DRIVER_HELP);
      return a;
    };
    // Before the first instance: Mesa reads it when the Vulkan loader loads lavapipe.
    if (!gpuRoot) Object.assign(process.env, lavapipeCacheEnv(process.env));
    const baseFlags = dawnFlags();
    gpuRoot ??= create(baseFlags);
    let adapter = await request(gpuRoot);
    // Flags are the instance's: a CPU adapter's own come from a second one, made once it is known.
    const hostFlags = dawnFlags(process.env, true);
    if (isHostMemoryAdapter(adapter.info) && hostFlags.join(' ') !== baseFlags.join(' ')) {
      hostRoot ??= create(hostFlags);
      adapter = await request(hostRoot);
    }
    const wanted: GPUFeatureName[] = ['shader-f16', 'subgroups', 'timestamp-query'];
    const requiredFeatures = wanted.filter((f) => adapter!.features.has(f));
    if (process.env.ELBO_NO_F16 === '1') requiredFeatures.splice(requiredFeatures.indexOf('shader-f16') >>> 0, 1);
    const al = adapter.limits;
    const requiredLimits: Record<string, number> = {
      maxStorageBufferBindingSize: al.maxStorageBufferBindingSize,
      maxBufferSize: al.maxBufferSize,
      maxComputeWorkgroupStorageSize: al.maxComputeWorkgroupStorageSize,
      maxComputeInvocationsPerWorkgroup: al.maxComputeInvocationsPerWorkgroup,
      maxComputeWorkgroupSizeX: al.maxComputeWorkgroupSizeX,
      maxComputeWorkgroupSizeY: al.maxComputeWorkgroupSizeY,
      maxComputeWorkgroupsPerDimension: al.maxComputeWorkgroupsPerDimension,
      maxStorageBuffersPerShaderStage: Math.min(al.maxStorageBuffersPerShaderStage, 10),
      // The matmul's texture operand (matmul.ts, aTexture): as large as the adapter allows.
      maxTextureDimension2D: al.maxTextureDimension2D,
      maxTextureArrayLayers: al.maxTextureArrayLayers,
    };
    const gpu = await adapter.requestDevice({ requiredFeatures, requiredLimits });
    const device = new Device(gpu, adapter);
    // dawn.node busy-polls the JS thread while a promise is pending, taking a core from
    // lavapipe's workers (PLATFORM.md): lower this thread's priority once the workers exist.
    // Not under the test runner: its worker must keep answering the runner's RPC (60 s
    // timeout) while lavapipe's threads are busy, and tests never time anything.
    if (device.kind === 'cpu' && !process.env.VITEST) {
      try {
        os.setPriority(19);
      } catch {
        /* not permitted: only slower */
      }
    }
    return device;
  }

  get hasF16(): boolean {
    return this.features.f16;
  }

  private checkAlive(what: string): void {
    if (this.lostReason) throw new GpuError(`${what}: the GPU device was lost (${this.lostReason})`);
  }

  /** Returns a cached compute pipeline; `key` identifies shader + specialisation. */
  pipeline(key: string, code: string | (() => string), entryPoint = 'main', constants?: Record<string, number>): GPUComputePipeline {
    // The hot path of every dispatch: no object built for the common no-constants case.
    const cacheKey = constants ? pipelineCacheKey({ key, entryPoint, constants }) : `${key}|${entryPoint}`;
    let p = this.pipelines.get(cacheKey);
    if (p) return p;
    this.checkAlive(`pipeline ${key}`);
    const t0 = performance.now();
    const src = typeof code === 'string' ? code : code();
    const t1 = performance.now();
    const module = this.gpu.createShaderModule({ label: key, code: src });
    const t2 = performance.now();
    // Never pass `constants: undefined`: it segfaults dawn.node (PLATFORM.md).
    const compute: GPUProgrammableStage = constants ? { module, entryPoint, constants } : { module, entryPoint };
    this.gpu.pushErrorScope('validation');
    p = this.gpu.createComputePipeline({ label: key, layout: 'auto', compute });
    // Shader compile errors arrive asynchronously; they surface at the next flush.
    void this.gpu.popErrorScope().then((err) => {
      if (err) this.uncaptured ??= `pipeline "${key}": ${err.message}`;
    });
    const t3 = performance.now();
    this.compiles.push({ key, entryPoint, constants, code: src, generateMs: t1 - t0, moduleMs: t2 - t1, pipelineMs: t3 - t2 });
    this.pipelines.set(cacheKey, p);
    return p;
  }

  /** Every pipeline this device compiled synchronously, in order, with its source and the
   *  host time spent generating the source, creating the module and creating the pipeline. */
  get compileLog(): readonly PipelineCompile[] {
    return this.compiles;
  }

  /** One line on the pipelines compiled since compile-log entry `from`: count, host seconds in
   *  source generation, createShaderModule and createComputePipeline; then the `slowest` few. */
  compileSummary(from = 0, slowest = 0): string {
    const log = this.compiles.slice(from);
    const sum = (f: (c: PipelineCompile) => number): number => log.reduce((a, c) => a + f(c), 0) / 1000;
    let s = `${log.length} pipelines compiled in ${sum((c) => c.generateMs + c.moduleMs + c.pipelineMs).toFixed(2)} s ` +
      `(source ${sum((c) => c.generateMs).toFixed(2)}, modules ${sum((c) => c.moduleMs).toFixed(2)}, pipelines ${sum((c) => c.pipelineMs).toFixed(2)})`;
    const top = [...log].sort((a, b) => b.moduleMs + b.pipelineMs - (a.moduleMs + a.pipelineMs)).slice(0, slowest);
    for (const c of top) s += `\n  ${(c.moduleMs + c.pipelineMs).toFixed(0).padStart(6)} ms  ${(c.code.length / 1024).toFixed(0).padStart(4)} KB  ${c.key}`;
    return s;
  }

  /**
   * Compiles the given pipelines with createComputePipelineAsync, all in flight at once, so a
   * driver that compiles on worker threads does them in parallel; later `pipeline()` calls
   * with the same key, entry point and constants return them. Resolves with the wall time.
   * Entries already compiled are skipped.
   */
  async precompile(entries: readonly PipelineSpec[]): Promise<{ compiled: number; seconds: number }> {
    this.checkAlive('precompile');
    const t0 = performance.now();
    const todo = entries.filter((e) => !this.pipelines.has(pipelineCacheKey(e)));
    const made = await Promise.all(
      todo.map(async (e) => {
        // A bad module's error is captured here (the pipeline's rejection reports it too), so it
        // never reaches the uncaptured-error handler and a later, unrelated flush.
        this.gpu.pushErrorScope('validation');
        const module = this.gpu.createShaderModule({ label: e.key, code: e.code });
        const moduleError = this.gpu.popErrorScope();
        const compute: GPUProgrammableStage = e.constants ? { module, entryPoint: e.entryPoint, constants: e.constants } : { module, entryPoint: e.entryPoint };
        try {
          return await this.gpu.createComputePipelineAsync({ label: e.key, layout: 'auto', compute });
        } catch (err) {
          const first = await moduleError;
          throw new GpuError(`precompile: pipeline "${e.key}": ${(first ?? (err as Error)).message}`);
        }
      }),
    );
    todo.forEach((e, i) => this.pipelines.set(pipelineCacheKey(e), made[i]!));
    return { compiled: todo.length, seconds: (performance.now() - t0) / 1000 };
  }

  /** A storage buffer of at least `bytes` bytes, from the pool when one is free. */
  alloc(bytes: number, label = 'tensor'): GPUBuffer {
    this.checkAlive(`alloc ${label}`);
    if (bytes > this.limits.maxBufferSize) {
      throw new GpuError(`${label}: a buffer of ${bytes} bytes exceeds the adapter's maxBufferSize (${this.limits.maxBufferSize} bytes)`);
    }
    const size = Math.min(bucketSize(bytes), Math.ceil(this.limits.maxBufferSize / 4) * 4 - 4);
    let buf = this.pool.get(size)?.pop();
    if (buf) {
      this.pooledBytes -= size;
      this.poolOrder.delete(buf);
    } else {
      buf = this.gpu.createBuffer({
        label,
        size,
        usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
      });
      this.idOf(buf); // ids in creation order: the pool hands out the oldest (poolInsert)
    }
    this.liveBytes += size;
    if (this.liveBytes > this.peakLiveBytes) this.peakLiveBytes = this.liveBytes;
    return buf;
  }

  /** Returns a buffer to the pool. Work already recorded that uses it still sees its data
   *  because every later write goes through the queue after that work. With `pool` false
   *  (a model's weights given back) it is destroyed once that work is submitted instead:
   *  weights would fill the pool with sizes activations rarely ask for. */
  free(buf: GPUBuffer, pool = true): void {
    const size = buf.size;
    this.liveBytes -= size;
    if (!pool) {
      this.doom(buf, size);
      return;
    }
    let list = this.pool.get(size);
    if (!list) this.pool.set(size, (list = []));
    this.poolInsert(list, buf);
    this.pooledBytes += size;
    this.poolOrder.add(buf);
    this.evictPooled();
  }

  /**
   * A 2D-array rgba32float texture of width x height texels and `layers` layers that
   * kernels write as a storage texture and read with textureLoad, from the pool when one of
   * that size is free. Counted in liveBytes like buffers.
   */
  allocTexture(width: number, height: number, layers: number, label = 'texture'): GPUTexture {
    this.checkAlive(`alloc ${label}`);
    const maxDim = this.limits.maxTextureDimension2D;
    if (width > maxDim || height > maxDim || layers > this.limits.maxTextureArrayLayers) {
      throw new GpuError(`${label}: a ${width}x${height}x${layers} texture exceeds the adapter's maxTextureDimension2D ${maxDim} / maxTextureArrayLayers ${this.limits.maxTextureArrayLayers}`);
    }
    const key = pooledTextureKey({ width, height, depthOrArrayLayers: layers });
    const bytes = textureBytes(width, height, layers);
    let tex = this.texturePool.get(key)?.pop();
    if (tex) {
      this.pooledBytes -= bytes;
      this.poolOrder.delete(tex);
    } else {
      tex = this.gpu.createTexture({
        label,
        size: [width, height, layers],
        format: 'rgba32float',
        dimension: '2d',
        usage: GPUTextureUsage.STORAGE_BINDING | GPUTextureUsage.TEXTURE_BINDING | GPUTextureUsage.COPY_DST,
      });
      this.idOf(tex);
    }
    this.liveBytes += bytes;
    if (this.liveBytes > this.peakLiveBytes) this.peakLiveBytes = this.liveBytes;
    return tex;
  }

  /** Returns a texture from allocTexture to the pool (work already recorded still sees it). */
  freeTexture(tex: GPUTexture): void {
    const bytes = textureBytes(tex.width, tex.height, tex.depthOrArrayLayers);
    this.liveBytes -= bytes;
    const key = pooledTextureKey(tex);
    let list = this.texturePool.get(key);
    if (!list) this.texturePool.set(key, (list = []));
    this.poolInsert(list, tex);
    this.pooledBytes += bytes;
    this.poolOrder.add(tex);
    this.evictPooled();
  }

  /**
   * Keeps the free pool within poolCap bytes by evicting the least recently released
   * buffers and textures (a finished phase's sizes, e.g. the VAE's, go first; the working
   * set of a repeated UNet forward stays). Evicted ones are destroyed after the next submit,
   * since recorded work may still use them; their cached bind groups are never hit again
   * (object ids are not reused) and leave with the cache's own bound.
   */
  private evictPooled(): void {
    if (this.pooledBytes <= this.poolCap) return;
    for (const o of this.poolOrder) {
      if (this.pooledBytes <= this.poolCap) break;
      this.poolOrder.delete(o);
      const isTex = 'depthOrArrayLayers' in o;
      const list = isTex ? this.texturePool.get(pooledTextureKey(o)) : this.pool.get(o.size);
      const i = list ? (list as object[]).indexOf(o) : -1;
      if (i >= 0) list!.splice(i, 1);
      const bytes = isTex ? textureBytes(o.width, o.height, o.depthOrArrayLayers) : o.size;
      this.pooledBytes -= bytes;
      this.doom(o, bytes);
      this.poolEvictions++;
    }
  }

  /** Sets a buffer or texture aside to be destroyed at the next submit (work recorded so far may name it). */
  private doom(o: GPUBuffer | GPUTexture, bytes: number): void {
    this.doomed.push(o);
    this.doomedBytes += bytes;
    // Memory waiting for a submit is bounded too.
    if (this.doomedBytes > this.poolCap) this.flush();
  }

  /** Destroys what evictPooled set aside; only once no unsubmitted work can name it. */
  private destroyDoomed(): void {
    for (const o of this.doomed) o.destroy();
    this.doomed = [];
    this.doomedBytes = 0;
  }

  /** Destroys every pooled (free) buffer and texture. */
  trimPool(): void {
    this.flush();
    // Groups naming the destroyed buffers would never be hit again (ids are not reused);
    // dropping them all frees what they hold.
    this.bindGroups.clear();
    for (const list of this.pool.values()) for (const b of list) b.destroy();
    for (const list of this.texturePool.values()) for (const t of list) t.destroy();
    this.pool.clear();
    this.texturePool.clear();
    this.poolOrder.clear();
    this.pooledBytes = 0;
  }

  get poolBytes(): number {
    return this.pooledBytes;
  }

  resetPeak(): void {
    this.peakLiveBytes = this.liveBytes;
  }

  /** The storage entries of a dispatch (binding i + 1 for bindings[i]), checked against the binding limit. */
  private storageEntries(args: DispatchArgs): GPUBindGroupEntry[] {
    const entries: GPUBindGroupEntry[] = [];
    const maxBind = this.limits.maxStorageBufferBindingSize;
    args.bindings.forEach((b, i) => {
      if (!b) return;
      if ('texture' in b) {
        entries.push({ binding: i + 1, resource: b.texture });
        return;
      }
      const offset = b.offset ?? 0;
      const size = b.size ?? b.buffer.size - offset;
      if (size > maxBind) {
        throw new GpuError(`${args.label}: binding ${i + 1} is ${size} bytes, above the adapter's maxStorageBufferBindingSize (${maxBind} bytes); the kernel must bind windows`);
      }
      entries.push({ binding: i + 1, resource: { buffer: b.buffer, offset, size } });
    });
    return entries;
  }

  private uniformBytes(args: DispatchArgs): Uint8Array | undefined {
    if (!args.uniforms) return undefined;
    const bytes = bytesOf(args.uniforms);
    if (bytes.byteLength > UNIFORM_SLOT) throw new GpuError(`${args.label}: uniforms larger than ${UNIFORM_SLOT} bytes`);
    return bytes;
  }

  /** A new bind group per dispatch, uniforms in the per-submit ring (ELBO_BIND_CACHE=0). */
  private freshBindGroup(args: DispatchArgs): GPUBindGroup {
    const entries = this.storageEntries(args);
    const bytes = this.uniformBytes(args);
    if (bytes) {
      if (this.uniformUsed + UNIFORM_SLOT > this.uniformStage.byteLength) this.flush();
      this.uniformStage.set(bytes, this.uniformUsed);
      entries.unshift({ binding: 0, resource: { buffer: this.uniformRing, offset: this.uniformUsed, size: UNIFORM_SLOT } });
      this.uniformUsed += UNIFORM_SLOT;
    }
    return this.gpu.createBindGroup({ label: args.label, layout: args.pipeline.getBindGroupLayout(0), entries });
  }

  /**
   * The bind group of (pipeline, uniform contents, bound ranges), made once: a model's
   * forward repeats the same dispatches on the same pooled buffers, and createBindGroup was
   * most of the host's time per dispatch (35-120 us; 731 dispatches recorded in 88 ms for a
   * 100 ms UNet forward on an H100). Uniforms live in immutable 256-byte slots keyed by their
   * bytes. Both caches are dropped whole when they grow past their caps (and the groups by
   * trimPool); a group naming a destroyed buffer is never hit, since object ids are not reused.
   */
  private cachedBindGroup(args: DispatchArgs): GPUBindGroup {
    const bytes = this.uniformBytes(args);
    let key = `${this.idOf(args.pipeline)}`;
    let slot: UniformSlot | undefined;
    if (bytes) {
      slot = this.uniformSlot(bytes);
      key += `u${slot.id}`;
    }
    for (const b of args.bindings) {
      if (!b) key += '|-';
      else if ('texture' in b) key += `|t${this.idOf(b.texture)}`;
      else key += `|${this.idOf(b.buffer)}:${b.offset ?? 0}:${b.size ?? -1}`;
    }
    let bg = this.bindGroups.get(key);
    if (bg) this.bindGroupHits++;
    else {
      this.bindGroupMisses++;
      const entries = this.storageEntries(args);
      if (slot) entries.unshift({ binding: 0, resource: { buffer: slot.buffer, offset: slot.offset, size: UNIFORM_SLOT } });
      bg = this.gpu.createBindGroup({ label: args.label, layout: args.pipeline.getBindGroupLayout(0), entries });
      if (this.bindGroups.size >= bindCache.maxGroups) this.bindGroups.clear();
      this.bindGroups.set(key, bg);
    }
    return bg;
  }

  private uniformSlot(bytes: Uint8Array): UniformSlot {
    const words = new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >> 1);
    // The length first, so that no two byte strings share a key (an odd last byte included).
    const key = String.fromCharCode(bytes.byteLength) + String.fromCharCode.apply(null, words as unknown as number[]) + (bytes.byteLength & 1 ? String.fromCharCode(bytes[bytes.byteLength - 1]!) : '');
    let slot = this.uniformSlots.get(key);
    if (slot) return slot;
    if (this.uniformSlots.size >= bindCache.maxUniformSlots) {
      // Groups name the old slots: drop both (recorded work keeps its own references).
      this.uniformSlots.clear();
      this.bindGroups.clear();
      this.uniformArena = null;
    }
    const perArena = UNIFORM_ARENA_BYTES / UNIFORM_SLOT;
    if (!this.uniformArena || this.uniformArenaUsed >= perArena) {
      this.uniformArena = this.gpu.createBuffer({ label: 'uniform slots', size: UNIFORM_ARENA_BYTES, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
      this.uniformArenaUsed = 0;
    }
    const offset = this.uniformArenaUsed++ * UNIFORM_SLOT;
    // Before any command that reads it: queue writes precede later submits.
    this.gpu.queue.writeBuffer(this.uniformArena, offset, bytes.buffer, bytes.byteOffset, bytes.byteLength);
    slot = { buffer: this.uniformArena, offset, id: ++this.nextObjectId };
    this.uniformSlots.set(key, slot);
    return slot;
  }

  /**
   * Puts a free buffer or texture into its size's list, kept in descending order of object
   * id so that pop() hands out the oldest: which buffers a computation gets then depends on
   * the set that is free, not on the order they were released in, and a repeated forward
   * binds the same buffers as the last one (and finds its bind groups cached).
   */
  private poolInsert<T extends object>(list: T[], item: T): void {
    const id = this.idOf(item);
    let lo = 0;
    let hi = list.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.idOf(list[mid]!) > id) lo = mid + 1;
      else hi = mid;
    }
    list.splice(lo, 0, item);
  }

  private idOf(o: object): number {
    let id = this.objectIds.get(o);
    if (id === undefined) this.objectIds.set(o, (id = ++this.nextObjectId));
    return id;
  }

  /** Records one compute dispatch into the current batch. */
  dispatch(args: DispatchArgs): void {
    this.checkAlive(args.label);
    const [x, y = 1, z = 1] = args.workgroups;
    const maxWg = this.limits.maxComputeWorkgroupsPerDimension;
    if (x > maxWg || y > maxWg || z > maxWg) {
      throw new GpuError(`${args.label}: workgroup count ${x}x${y}x${z} exceeds maxComputeWorkgroupsPerDimension ${maxWg}`);
    }
    if (x === 0 || y === 0 || z === 0) return;
    const bindGroup = bindCache.enabled ? this.cachedBindGroup(args) : this.freshBindGroup(args);
    if (!this.encoder) this.encoder = this.gpu.createCommandEncoder();
    if (this.profiler) {
      this.profiler.record(this, this.encoder, args, bindGroup, [x, y, z]);
    } else {
      if (!this.pass) {
        this.pass = this.encoder.beginComputePass();
        this.passPipeline = null;
      }
      // Runs of one kernel (per-head loops, split products) set it once.
      if (this.passPipeline !== args.pipeline) {
        this.pass.setPipeline(args.pipeline);
        this.passPipeline = args.pipeline;
      }
      this.pass.setBindGroup(0, bindGroup);
      this.pass.dispatchWorkgroups(x, y, z);
    }
    this.batchLabels.push(args.label);
    this.dispatchCount++;
    if (this.batchLabels.length >= this.maxBatch) this.flush();
  }

  /** Copies bytes between buffers, in order with the recorded dispatches. */
  copy(src: GPUBuffer, srcOffset: number, dst: GPUBuffer, dstOffset: number, bytes: number): void {
    this.outsidePass('copy').copyBufferToBuffer(src, srcOffset, dst, dstOffset, bytes);
  }

  /** Zeroes `bytes` bytes of a buffer from `offset` (both multiples of 4) on the GPU, in order
   *  with the recorded dispatches: no host data and no flush, unlike a write of zeros. */
  clear(buffer: GPUBuffer, offset: number, bytes: number): void {
    this.outsidePass('clear').clearBuffer(buffer, offset, bytes);
  }

  /** The current encoder with no compute pass open, for a command of its own (`label`). */
  private outsidePass(label: string): GPUCommandEncoder {
    this.checkAlive(label);
    if (!this.encoder) this.encoder = this.gpu.createCommandEncoder();
    if (this.pass) {
      this.pass.end();
      this.pass = null;
    }
    this.batchLabels.push(label);
    return this.encoder;
  }

  /**
   * Copies rows of a buffer into a texture, in order with the recorded dispatches
   * (copyBufferToTexture: bytesPerRow a multiple of 256, offset of the texel size).
   */
  copyToTexture(src: GPUBuffer, offset: number, bytesPerRow: number, rowsPerImage: number, dst: GPUTexture, size: [number, number, number]): void {
    this.outsidePass('copy to texture').copyBufferToTexture({ buffer: src, offset, bytesPerRow, rowsPerImage }, { texture: dst }, size);
  }

  /** Uploads host data. Submits recorded work first, so that work sees the old contents. */
  write(buffer: GPUBuffer, offset: number, data: ArrayBufferView): void {
    this.checkAlive('write');
    if (this.batchLabels.length) this.flush();
    let view = data;
    // writeBuffer with a view over a SharedArrayBuffer fails or segfaults (PLATFORM.md).
    if (typeof SharedArrayBuffer !== 'undefined' && data.buffer instanceof SharedArrayBuffer) {
      view = new Uint8Array(data.byteLength);
      (view as Uint8Array).set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    }
    const bytes = view.byteLength;
    const padded = Math.ceil(bytes / 4) * 4;
    if (padded !== bytes) {
      const tmp = new Uint8Array(padded);
      tmp.set(new Uint8Array(view.buffer, view.byteOffset, bytes));
      view = tmp;
    }
    this.gpu.queue.writeBuffer(buffer, offset, view.buffer, view.byteOffset, padded);
  }

  /** Submits everything recorded so far. */
  flush(): void {
    if (!this.encoder) {
      this.destroyDoomed();
      return;
    }
    if (this.pass) {
      this.pass.end();
      this.pass = null;
    }
    if (this.uniformUsed) {
      this.gpu.queue.writeBuffer(this.uniformRing, 0, this.uniformStage.buffer, 0, this.uniformUsed);
      this.uniformUsed = 0;
    }
    this.profiler?.beforeFinish(this.encoder);
    const cmd = this.encoder.finish();
    this.encoder = null;
    if (!this.skipSubmit) this.gpu.queue.submit([cmd]);
    this.submitCount++;
    this.destroyDoomed();
    this.batchLabels = [];
    this.throwPendingError();
  }

  private throwPendingError(): void {
    if (this.uncaptured) {
      const msg = this.uncaptured;
      this.uncaptured = null;
      throw new GpuError(`GPU error: ${msg}`);
    }
    this.checkAlive('submit');
  }

  /** Waits until the queue is idle (and surfaces asynchronous errors). */
  async sync(): Promise<void> {
    this.flush();
    await this.gpu.queue.onSubmittedWorkDone();
    this.throwPendingError();
  }

  /** Reads `bytes` bytes at `offset` of `buffer` back to the host. */
  async read(buffer: GPUBuffer, offset: number, bytes: number): Promise<ArrayBuffer> {
    this.checkAlive('read');
    const size = Math.ceil(bytes / 4) * 4;
    const out = new ArrayBuffer(size);
    const outU8 = new Uint8Array(out);
    const chunk = 64 * 1024 * 1024;
    for (let done = 0; done < size; done += chunk) {
      const n = Math.min(chunk, size - done);
      const staging = this.takeStaging(n);
      this.outsidePass('read').copyBufferToBuffer(buffer, offset + done, staging, 0, n);
      this.flush();
      try {
        await staging.mapAsync(GPUMapMode.READ, 0, n);
      } catch (e) {
        this.throwPendingError();
        throw new GpuError(`read of ${n} bytes failed: ${(e as Error).message}`);
      }
      outU8.set(new Uint8Array(staging.getMappedRange(0, n)), done);
      staging.unmap();
      this.stagingPool.push(staging);
    }
    this.throwPendingError();
    return bytes === size ? out : out.slice(0, bytes);
  }

  private takeStaging(bytes: number): GPUBuffer {
    const i = this.stagingPool.findIndex((b) => b.size >= bytes);
    if (i >= 0) return this.stagingPool.splice(i, 1)[0]!;
    return this.gpu.createBuffer({ label: 'staging', size: bucketSize(bytes), usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  }

  /** Starts timing every dispatch per kernel family, or per family and label with
   *  `byLabel` (needs timestamp-query). */
  startProfile(opts: { byLabel?: boolean } = {}): void {
    if (!this.features.timestamp) throw new GpuError('profiling needs the adapter feature timestamp-query, which this adapter lacks');
    this.flush();
    this.profiler = new Profiler(this.gpu, Boolean(opts.byLabel));
  }

  /** Stops profiling and returns milliseconds per kernel family (or "family: label"). */
  async stopProfile(): Promise<Map<string, { ms: number; count: number }>> {
    const p = this.profiler;
    if (!p) throw new GpuError('stopProfile without startProfile');
    this.flush();
    this.profiler = null;
    return p.collect(this);
  }

  /** Releases the GPU device (the process can then exit). */
  destroy(): void {
    try {
      this.flush();
    } catch {
      /* already failing: destroy anyway */
    }
    for (const list of this.pool.values()) for (const b of list) b.destroy();
    this.pool.clear();
    for (const list of this.texturePool.values()) for (const t of list) t.destroy();
    this.texturePool.clear();
    for (const b of this.stagingPool) b.destroy();
    this.stagingPool = [];
    this.gpu.destroy();
    instance = undefined;
  }
}

/** A pipeline as `Device.pipeline` builds it: enough to build it again (`precompile`). */
export interface PipelineSpec {
  key: string;
  entryPoint: string;
  constants?: Record<string, number>;
  code: string;
}

export interface PipelineCompile extends PipelineSpec {
  generateMs: number;
  moduleMs: number;
  pipelineMs: number;
}

/** The texture pool's size key. */
function pooledTextureKey(t: { width: number; height: number; depthOrArrayLayers: number }): string {
  return `${t.width}x${t.height}x${t.depthOrArrayLayers}`;
}

function pipelineCacheKey(e: { key: string; entryPoint: string; constants?: Record<string, number> }): string {
  return e.constants ? `${e.key}|${e.entryPoint}|${JSON.stringify(e.constants)}` : `${e.key}|${e.entryPoint}`;
}

/** Per-dispatch timestamps, summed per kernel family. */
class Profiler {
  private querySets: GPUQuerySet[] = [];
  private families: string[] = [];
  private current: GPUQuerySet | null = null;
  private used = 0;
  private readonly perSet = 2048;
  constructor(private gpu: GPUDevice, private byLabel: boolean) {}

  record(_dev: Device, encoder: GPUCommandEncoder, args: DispatchArgs, bindGroup: GPUBindGroup, wg: [number, number, number]): void {
    if (!this.current || this.used + 2 > this.perSet) {
      this.current = this.gpu.createQuerySet({ type: 'timestamp', count: this.perSet });
      this.querySets.push(this.current);
      this.used = 0;
    }
    const pass = encoder.beginComputePass({
      timestampWrites: { querySet: this.current, beginningOfPassWriteIndex: this.used, endOfPassWriteIndex: this.used + 1 },
    });
    pass.setPipeline(args.pipeline);
    pass.setBindGroup(0, bindGroup);
    pass.dispatchWorkgroups(...wg);
    pass.end();
    this.used += 2;
    const family = args.family ?? args.label.split(/[ (]/)[0]!;
    this.families.push(this.byLabel ? `${family}: ${args.label}` : family);
  }

  beforeFinish(_encoder: GPUCommandEncoder): void {}

  async collect(dev: Device): Promise<Map<string, { ms: number; count: number }>> {
    const out = new Map<string, { ms: number; count: number }>();
    let k = 0;
    for (let s = 0; s < this.querySets.length; s++) {
      const qs = this.querySets[s]!;
      const n = s === this.querySets.length - 1 ? this.used : this.perSet;
      if (n === 0) continue;
      const resolve = this.gpu.createBuffer({ size: n * 8, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC });
      const enc = this.gpu.createCommandEncoder();
      enc.resolveQuerySet(qs, 0, n, resolve, 0);
      this.gpu.queue.submit([enc.finish()]);
      const data = new BigUint64Array(await dev.read(resolve, 0, n * 8));
      resolve.destroy();
      for (let i = 0; i < n; i += 2) {
        const fam = this.families[k++]!;
        const ms = Number(data[i + 1]! - data[i]!) / 1e6;
        const e = out.get(fam) ?? { ms: 0, count: 0 };
        e.ms += ms;
        e.count++;
        out.set(fam, e);
      }
      qs.destroy();
    }
    return out;
  }
}
