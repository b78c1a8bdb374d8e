// Tensor: shape, dtype and a reference-counted GPU buffer. Contiguous and row-major;
// reshape shares the storage, everything else that moves data is a kernel.
import { Device, GpuError, type BufferBinding, type DType } from './device.js';
import { f16BitsToF32, f32ToF16Bits } from './half.js';

export type Shape = readonly number[];

/** A GPU buffer shared by a tensor and its reshaped views. */
class Storage {
  refs = 1;
  private bytes = -1;
  constructor(
    readonly device: Device,
    readonly buffer: GPUBuffer,
  ) {}
  /** buffer.size, read once when first asked: a property of Dawn's object is a native call (~55 ns). */
  get size(): number {
    if (this.bytes < 0) this.bytes = this.buffer.size;
    return this.bytes;
  }
  release(pool = true): void {
    if (--this.refs === 0) this.device.free(this.buffer, pool);
  }
}

export function numelOf(shape: Shape): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

export function bytesPerElement(dtype: DType): number {
  return dtype === 'f32' ? 4 : 2;
}

/** Byte size of `numel` elements, padded to 4 bytes (f16 is stored two per u32). */
export function byteSizeOf(numel: number, dtype: DType): number {
  return Math.ceil((numel * bytesPerElement(dtype)) / 4) * 4;
}

export function shapeStr(shape: Shape): string {
  return `(${shape.join('x')})`;
}

function checkShape(shape: Shape, what: string): void {
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0) throw new GpuError(`${what}: invalid shape ${JSON.stringify(shape)}`);
  }
}

// ---------------------------------------------------------------- scopes
type ScopeFrame = Set<Tensor>;
const scopeStack: ScopeFrame[] = [];

function track(t: Tensor): void {
  scopeStack[scopeStack.length - 1]?.add(t);
}

function collectTensors(value: unknown, into: Set<Tensor>, seen = new Set<unknown>()): void {
  if (value instanceof Tensor) {
    into.add(value);
    return;
  }
  if (!value || typeof value !== 'object' || seen.has(value)) return;
  seen.add(value);
  if (Array.isArray(value)) for (const v of value) collectTensors(v, into, seen);
  else if (value instanceof Map) for (const v of value.values()) collectTensors(v, into, seen);
  else if (Object.getPrototypeOf(value) === Object.prototype) for (const v of Object.values(value)) collectTensors(v, into, seen);
}

function closeScope<T>(frame: ScopeFrame, result: T): T {
  scopeStack.pop();
  const keep = new Set<Tensor>();
  collectTensors(result, keep);
  // Release order does not matter to reuse: the pool hands out its oldest free buffer
  // (Device.poolInsert).
  for (const t of frame) {
    if (keep.has(t)) track(t);
    else if (!t.released) t.release();
  }
  return result;
}

/**
 * Runs `fn` and releases every tensor created inside it except those in its result
 * (a Tensor, or arrays / plain objects / Maps holding tensors), which move to the
 * enclosing scope.
 */
export function scope<T>(fn: () => T): T {
  const frame: ScopeFrame = new Set();
  scopeStack.push(frame);
  let result: T;
  try {
    result = fn();
  } catch (e) {
    closeScope(frame, undefined);
    throw e;
  }
  if (result instanceof Promise) throw new GpuError('scope(): use scopeAsync for async functions');
  return closeScope(frame, result);
}

/** Async form of `scope`. Do not interleave two scopeAsync calls concurrently. */
export async function scopeAsync<T>(fn: () => Promise<T>): Promise<T> {
  const frame: ScopeFrame = new Set();
  scopeStack.push(frame);
  let result: T;
  try {
    result = await fn();
  } catch (e) {
    closeScope(frame, undefined);
    throw e;
  }
  return closeScope(frame, result);
}

/** Takes a tensor out of every scope: it lives until released explicitly (e.g. weights). */
export function keep<T extends Tensor>(t: T): T {
  for (const f of scopeStack) f.delete(t);
  return t;
}

/**
 * Releases `used`, whose last use was recording `next`, and returns `next` (unless they are
 * the same tensor). Work already recorded still reads it: the pool hands its buffer out only
 * to work recorded later. For chains such as `h = lastUse(h, conv(h))`.
 */
export function lastUse(used: Tensor, next: Tensor): Tensor {
  if (used !== next) used.release();
  return next;
}

// ---------------------------------------------------------------- tensor
export class Tensor {
  readonly shape: Shape;
  readonly dtype: DType;
  readonly device: Device;
  private storage: Storage | null;

  /** Wraps a storage; use Tensor.empty / fromArray / zeros instead. */
  private constructor(device: Device, storage: Storage, shape: Shape, dtype: DType) {
    this.device = device;
    this.storage = storage;
    this.shape = Object.freeze([...shape]);
    this.dtype = dtype;
    track(this);
  }

  /** An uninitialised tensor; its buffer at least `minBytes` long (a pooled size class shared
   *  by tensors of other shapes, e.g. the Winograd U). */
  static empty(device: Device, shape: Shape, dtype: DType = 'f32', label = 'tensor', minBytes = 0): Tensor {
    checkShape(shape, label);
    if (dtype === 'f16' && !device.hasF16) {
      throw new GpuError(`${label}: f16 tensors need the adapter feature shader-f16, which this adapter lacks; use f32`);
    }
    const bytes = byteSizeOf(numelOf(shape), dtype);
    const buf = device.alloc(Math.max(bytes, 4, minBytes), `${label} ${shapeStr(shape)} ${dtype}`);
    return new Tensor(device, new Storage(device, buf), shape, dtype);
  }

  /** Uploads host data (f32 values; converted to f16 storage when dtype is f16). */
  static fromArray(device: Device, data: Float32Array | number[], shape: Shape, dtype: DType = 'f32'): Tensor {
    const n = numelOf(shape);
    if (data.length !== n) throw new GpuError(`Tensor.fromArray: ${data.length} values for shape ${shapeStr(shape)} (${n} elements)`);
    const t = Tensor.empty(device, shape, dtype);
    const f32 = data instanceof Float32Array ? data : Float32Array.from(data);
    device.write(t.buffer, 0, dtype === 'f32' ? f32 : f32ToF16Bits(f32));
    return t;
  }

  /** Uploads raw f16 bits. */
  static fromF16Bits(device: Device, bits: Uint16Array, shape: Shape): Tensor {
    const n = numelOf(shape);
    if (bits.length !== n) throw new GpuError(`Tensor.fromF16Bits: ${bits.length} values for shape ${shapeStr(shape)}`);
    const t = Tensor.empty(device, shape, 'f16');
    device.write(t.buffer, 0, bits);
    return t;
  }

  static zeros(device: Device, shape: Shape, dtype: DType = 'f32'): Tensor {
    const t = Tensor.empty(device, shape, dtype);
    device.clear(t.buffer, 0, byteSizeOf(numelOf(shape), dtype));
    return t;
  }

  get numel(): number {
    return numelOf(this.shape);
  }

  /** Bytes of data (padded to 4). */
  get byteSize(): number {
    return byteSizeOf(this.numel, this.dtype);
  }

  get rank(): number {
    return this.shape.length;
  }

  get released(): boolean {
    return this.storage === null;
  }

  /** The GPU buffer; throws if the tensor was released. */
  get buffer(): GPUBuffer {
    if (!this.storage) throw new GpuError(`tensor ${shapeStr(this.shape)} ${this.dtype} used after release`);
    return this.storage.buffer;
  }

  /** Bytes of the underlying buffer (its pool bucket: at least byteSize). */
  get bufferSize(): number {
    if (!this.storage) throw new GpuError(`tensor ${shapeStr(this.shape)} ${this.dtype} used after release`);
    return this.storage.size;
  }

  /** The whole tensor as a storage binding. */
  binding(): BufferBinding {
    return { buffer: this.buffer, offset: 0, size: Math.max(4, this.byteSize) };
  }

  /** A binding of bytes [offset, offset+size) of the tensor's data. */
  window(offset: number, size: number): BufferBinding {
    return { buffer: this.buffer, offset, size };
  }

  describe(): string {
    return `${shapeStr(this.shape)} ${this.dtype}`;
  }

  /** A view with another shape over the same storage (free). One dim may be -1. */
  reshape(shape: readonly number[]): Tensor {
    const s = [...shape];
    const neg = s.indexOf(-1);
    if (neg >= 0) {
      const rest = numelOf(s.filter((_, i) => i !== neg));
      s[neg] = rest === 0 ? 0 : this.numel / rest;
    }
    if (numelOf(s) !== this.numel || s.some((d) => !Number.isInteger(d) || d < 0)) {
      throw new GpuError(`reshape: cannot view ${shapeStr(this.shape)} as ${shapeStr(shape)}`);
    }
    const st = this.storage;
    if (!st) throw new GpuError(`tensor ${shapeStr(this.shape)} ${this.dtype} used after release`);
    st.refs++;
    return new Tensor(this.device, st, s, this.dtype);
  }

  /** Releases the GPU memory: back to the pool, or with `opts.pool` false destroyed after
   *  the work recorded so far (when no other view shares it). Idempotent. */
  release(opts?: { pool?: boolean }): void {
    if (!this.storage) return;
    this.storage.release(opts?.pool ?? true);
    this.storage = null;
  }

  /** Reads the values back as f32 (f16 is widened). Submits pending work. */
  async toArray(): Promise<Float32Array> {
    const buf = this.buffer;
    const raw = await this.device.read(buf, 0, this.byteSize);
    if (this.dtype === 'f32') return new Float32Array(raw, 0, this.numel);
    return f16BitsToF32(new Uint16Array(raw, 0, this.numel));
  }

  /** Reads the values back (as toArray) and releases the tensor. */
  async toArrayAndRelease(): Promise<Float32Array> {
    try {
      return await this.toArray();
    } finally {
      this.release();
    }
  }

  /** Reads raw f16 bits back (f16 tensors only). */
  async toF16Bits(): Promise<Uint16Array> {
    if (this.dtype !== 'f16') throw new GpuError(`toF16Bits on a ${this.dtype} tensor`);
    const raw = await this.device.read(this.buffer, 0, this.byteSize);
    return new Uint16Array(raw, 0, this.numel);
  }
}
