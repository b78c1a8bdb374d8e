/**
 * The safetensors format (https://github.com/huggingface/safetensors):
 *
 *   [u64 little-endian N][N bytes of UTF-8 JSON header][data area]
 *
 * The header maps each tensor name to `{dtype, shape, data_offsets: [begin, end]}` with offsets
 * relative to the start of the data area, plus an optional `__metadata__` map of strings.
 * Tensors are row-major and little-endian.
 *
 * The reader opens the file once, validates the whole header up front (so a corrupt or
 * truncated download fails at load time with the file and tensor named), and reads each tensor's
 * byte range on demand with `fs.readSync`: weight files are never loaded whole.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import { writeFileAtomic, writeFileAtomicSync } from './atomic.ts';

/** Element types this project reads. */
export type SafeTensorsDType = 'F32' | 'F16' | 'BF16' | 'I64';

/** Element types the writer produces. */
export type WritableDType = 'F32' | 'F16' | 'I64';

/** One tensor's header entry, resolved to absolute file positions. */
export interface TensorInfo {
  dtype: SafeTensorsDType;
  /** PyTorch row-major shape; `[]` for a scalar. */
  shape: number[];
  /** Size of the tensor data in bytes (= numel * dtype size). */
  byteLength: number;
  /** Absolute byte offset of the tensor data in the file. */
  fileOffset: number;
}

const DTYPE_SIZE: Record<SafeTensorsDType, number> = { F32: 4, F16: 2, BF16: 2, I64: 8 };

/** Dtypes of the format that exist but that this project does not read. */
const KNOWN_UNSUPPORTED = new Set([
  'BOOL',
  'U8',
  'I8',
  'U16',
  'I16',
  'U32',
  'I32',
  'U64',
  'F64',
  'F8_E4M3',
  'F8_E5M2',
]);

/** Upper bound on the JSON header size (the Python library uses 100 MB too). */
const MAX_HEADER_BYTES = 100 * 1024 * 1024;

if (os.endianness() !== 'LE') {
  // Typed-array views below reinterpret little-endian file bytes directly.
  throw new Error('safetensors.ts: a little-endian host is required');
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Product of a shape's dims (1 for a scalar). */
export function numelOf(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

// ---------------------------------------------------------------------------------------------
// Half-precision conversions

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** IEEE binary16 bits -> number (exact). */
export function f16BitsToNumber(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 0x1f) return frac === 0 ? sign * Infinity : NaN;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/** bfloat16 bits -> number (exact: bf16 is the top half of a float32). */
export function bf16BitsToNumber(b: number): number {
  u32Scratch[0] = (b & 0xffff) << 16;
  return f32Scratch[0]!;
}

/** number -> IEEE binary16 bits, rounding the float32 value to nearest, ties to even. */
export function numberToF16Bits(v: number): number {
  f32Scratch[0] = v;
  const x = u32Scratch[0]!;
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  const mant = x & 0x7fffff;
  if (exp === 0xff) {
    // Inf stays Inf; NaN stays a quiet NaN.
    return sign | 0x7c00 | (mant !== 0 ? 0x200 : 0);
  }
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00; // overflow -> Inf
  if (e <= 0) {
    // Subnormal half (or zero): shift the full significand (with implicit 1) into place.
    if (e < -10) return sign; // below half the smallest subnormal -> +-0
    const m = mant | 0x800000;
    const shift = 14 - e; // 24-bit significand -> 10 - (1 - e) bits
    let h = m >>> shift;
    const rem = m & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && (h & 1) === 1)) h += 1;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1) === 1)) h += 1; // may carry into the exponent: correct
  return sign | h;
}

// ---------------------------------------------------------------------------------------------
// Reader

/** A safetensors file opened for random access; call {@link close} when done. */
export class SafeTensorsFile {
  readonly path: string;
  /** `__metadata__` of the header (empty when absent). */
  readonly metadata: Readonly<Record<string, string>>;
  /** Absolute offset of the data area (= 8 + header length). */
  readonly dataOffset: number;
  private readonly entries: Map<string, TensorInfo>;
  private fd: number | null;

  private constructor(
    path: string,
    fd: number,
    metadata: Record<string, string>,
    dataOffset: number,
    entries: Map<string, TensorInfo>,
  ) {
    this.path = path;
    this.fd = fd;
    this.metadata = metadata;
    this.dataOffset = dataOffset;
    this.entries = entries;
  }

  /** Opens and validates `path`; throws an Error naming the file (and tensor) on any problem. */
  static open(path: string): SafeTensorsFile {
    let fd: number;
    try {
      fd = fs.openSync(path, 'r');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') throw new Error(`${path}: safetensors file not found`);
      throw new Error(`${path}: cannot open safetensors file: ${(err as Error).message}`);
    }
    try {
      const { metadata, dataOffset, entries } = parseHeader(path, fd);
      return new SafeTensorsFile(path, fd, metadata, dataOffset, entries);
    } catch (err) {
      fs.closeSync(fd);
      throw err;
    }
  }

  /** Tensor names in header order. */
  names(): string[] {
    return [...this.entries.keys()];
  }

  /** Whether the file holds a tensor called `name`. */
  has(name: string): boolean {
    return this.entries.has(name);
  }

  /** dtype, shape and position of `name`; throws `<file>: tensor "<name>" not found`. */
  info(name: string): TensorInfo {
    const e = this.entries.get(name);
    if (e === undefined) throw new Error(`${this.path}: tensor "${name}" not found`);
    return { dtype: e.dtype, shape: [...e.shape], byteLength: e.byteLength, fileOffset: e.fileOffset };
  }

  /** Alias of {@link info}. */
  getInfo(name: string): TensorInfo {
    return this.info(name);
  }

  /**
   * Raw little-endian bytes of `name`, or of the sub-range [start, start + length) of its data
   * (byte offsets within the tensor). Reads only that range. The result owns a fresh buffer at
   * byte offset 0, so typed-array views on it are aligned.
   */
  readBytes(name: string, start = 0, length?: number): Uint8Array {
    const e = this.info(name);
    const len = length ?? e.byteLength - start;
    if (!Number.isInteger(start) || !Number.isInteger(len) || start < 0 || len < 0 || start + len > e.byteLength) {
      throw new Error(
        `${this.path}: tensor "${name}": byte range [${start}, ${start + len}) is outside its ${e.byteLength} bytes`,
      );
    }
    const fd = this.requireOpen();
    const out = new Uint8Array(len);
    let done = 0;
    while (done < len) {
      const n = fs.readSync(fd, out, done, len - done, e.fileOffset + start + done);
      if (n === 0) {
        throw new Error(`${this.path}: tensor "${name}": unexpected end of file (the file changed or is truncated)`);
      }
      done += n;
    }
    return out;
  }

  /** `name` as float32 (F16 / BF16 widened exactly, I64 converted to the nearest float32). Shape: info(name).shape. */
  readF32(name: string): Float32Array {
    const e = this.info(name);
    const bytes = this.readBytes(name);
    const n = e.byteLength / DTYPE_SIZE[e.dtype];
    switch (e.dtype) {
      case 'F32':
        return new Float32Array(bytes.buffer, 0, n);
      case 'F16': {
        const src = new Uint16Array(bytes.buffer, 0, n);
        const out = new Float32Array(n);
        for (let i = 0; i < n; i++) out[i] = f16BitsToNumber(src[i]!);
        return out;
      }
      case 'BF16': {
        const src = new Uint16Array(bytes.buffer, 0, n);
        const out = new Uint32Array(n);
        for (let i = 0; i < n; i++) out[i] = src[i]! << 16;
        return new Float32Array(out.buffer);
      }
      case 'I64': {
        const src = new BigInt64Array(bytes.buffer, 0, n);
        const out = new Float32Array(n);
        for (let i = 0; i < n; i++) out[i] = Number(src[i]!);
        return out;
      }
    }
  }

  /** `name` as IEEE half bits: F16 as stored; F32 / BF16 rounded to nearest even. I64 is refused. */
  readF16Bits(name: string): Uint16Array {
    const e = this.info(name);
    if (e.dtype === 'I64') {
      throw new Error(`${this.path}: tensor "${name}" is I64; expected a floating dtype (F32, F16 or BF16) for half conversion`);
    }
    if (e.dtype === 'F16') {
      const bytes = this.readBytes(name);
      return new Uint16Array(bytes.buffer, 0, e.byteLength / 2);
    }
    const f = this.readF32(name);
    const out = new Uint16Array(f.length);
    for (let i = 0; i < f.length; i++) out[i] = numberToF16Bits(f[i]!);
    return out;
  }

  /** An I64 tensor as plain numbers; throws if a value is not a safe integer (|v| > 2^53 - 1). */
  readI64(name: string): number[] {
    const e = this.info(name);
    if (e.dtype !== 'I64') throw new Error(`${this.path}: tensor "${name}" is ${e.dtype}; expected I64`);
    const bytes = this.readBytes(name);
    const src = new BigInt64Array(bytes.buffer, 0, e.byteLength / 8);
    const out = new Array<number>(src.length);
    for (let i = 0; i < src.length; i++) {
      const v = src[i]!;
      if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < BigInt(Number.MIN_SAFE_INTEGER)) {
        throw new Error(`${this.path}: tensor "${name}"[${i}] = ${v} does not fit a JS number exactly`);
      }
      out[i] = Number(v);
    }
    return out;
  }

  /** Closes the file descriptor; further reads throw. Idempotent. */
  close(): void {
    if (this.fd !== null) {
      fs.closeSync(this.fd);
      this.fd = null;
    }
  }

  private requireOpen(): number {
    if (this.fd === null) throw new Error(`${this.path}: safetensors file is closed`);
    return this.fd;
  }
}

function parseHeader(
  path: string,
  fd: number,
): { metadata: Record<string, string>; dataOffset: number; entries: Map<string, TensorInfo> } {
  const fileSize = fs.fstatSync(fd).size;
  if (fileSize < 8) {
    throw new Error(`${path}: not a safetensors file: ${fileSize} bytes, expected at least 8 (header length)`);
  }
  const lenBuf = Buffer.alloc(8);
  fs.readSync(fd, lenBuf, 0, 8, 0);
  const headerLen64 = lenBuf.readBigUInt64LE(0);
  if (headerLen64 > BigInt(MAX_HEADER_BYTES) || headerLen64 > BigInt(fileSize - 8)) {
    throw new Error(
      `${path}: invalid safetensors header length ${headerLen64}: expected at most ` +
        `min(100 MB, file size - 8 = ${fileSize - 8}); the file is truncated or not a safetensors file`,
    );
  }
  const headerLen = Number(headerLen64);
  const headerBuf = Buffer.alloc(headerLen);
  fs.readSync(fd, headerBuf, 0, headerLen, 8);
  let header: unknown;
  try {
    header = JSON.parse(headerBuf.toString('utf8'));
  } catch (err) {
    throw new Error(`${path}: safetensors header is not valid JSON (${(err as Error).message})`);
  }
  if (!isRecord(header)) {
    throw new Error(`${path}: safetensors header must be a JSON object, got ${Array.isArray(header) ? 'an array' : typeof header}`);
  }
  const dataOffset = 8 + headerLen;
  const dataSize = fileSize - dataOffset;
  const metadata: Record<string, string> = {};
  const entries = new Map<string, TensorInfo>();
  const ranges: { name: string; begin: number; end: number }[] = [];

  for (const [name, raw] of Object.entries(header)) {
    if (name === '__metadata__') {
      if (!isRecord(raw)) throw new Error(`${path}: __metadata__ must be an object of strings`);
      for (const [k, v] of Object.entries(raw)) {
        if (typeof v !== 'string') {
          throw new Error(`${path}: __metadata__["${k}"] must be a string, got ${JSON.stringify(v)}`);
        }
        metadata[k] = v;
      }
      continue;
    }
    const where = `${path}: tensor "${name}"`;
    if (!isRecord(raw)) throw new Error(`${where}: header entry must be an object with dtype, shape, data_offsets`);
    const dtype = raw['dtype'];
    if (typeof dtype !== 'string') throw new Error(`${where}: dtype must be a string, got ${JSON.stringify(dtype)}`);
    if (!(dtype in DTYPE_SIZE)) {
      const known = KNOWN_UNSUPPORTED.has(dtype) ? 'unsupported' : 'unknown';
      throw new Error(`${where}: dtype ${dtype} is ${known}; supported dtypes are F32, F16, BF16, I64`);
    }
    const dt = dtype as SafeTensorsDType;
    const shape = raw['shape'];
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && (d as number) >= 0)) {
      throw new Error(`${where}: shape must be an array of non-negative integers, got ${JSON.stringify(shape)}`);
    }
    const offs = raw['data_offsets'];
    if (
      !Array.isArray(offs) ||
      offs.length !== 2 ||
      !offs.every((o) => Number.isSafeInteger(o) && (o as number) >= 0) ||
      (offs[0] as number) > (offs[1] as number)
    ) {
      throw new Error(`${where}: data_offsets must be [begin, end] with 0 <= begin <= end, got ${JSON.stringify(offs)}`);
    }
    const [begin, end] = offs as [number, number];
    const numel = numelOf(shape as number[]);
    const expected = numel * DTYPE_SIZE[dt];
    if (end - begin !== expected) {
      throw new Error(
        `${where}: data_offsets [${begin}, ${end}] span ${end - begin} bytes, expected ${expected} ` +
          `(shape ${JSON.stringify(shape)} x ${DTYPE_SIZE[dt]} bytes of ${dt})`,
      );
    }
    if (end > dataSize) {
      throw new Error(
        `${where}: data_offsets [${begin}, ${end}] extend past the end of the data area (${dataSize} bytes); ` +
          `the file is truncated or corrupt`,
      );
    }
    entries.set(name, { dtype: dt, shape: [...(shape as number[])], byteLength: expected, fileOffset: dataOffset + begin });
    if (end > begin) ranges.push({ name, begin, end });
  }

  ranges.sort((a, b) => a.begin - b.begin);
  for (let i = 1; i < ranges.length; i++) {
    const prev = ranges[i - 1]!;
    const cur = ranges[i]!;
    if (cur.begin < prev.end) {
      throw new Error(
        `${path}: tensor "${cur.name}" data_offsets [${cur.begin}, ${cur.end}] overlap tensor "${prev.name}" ` +
          `[${prev.begin}, ${prev.end}]; expected disjoint ranges`,
      );
    }
  }
  return { metadata, dataOffset, entries };
}

// ---------------------------------------------------------------------------------------------
// Writer

/** A tensor to write. `data` length must equal the product of `shape`. */
export interface TensorToWrite {
  dtype: WritableDType;
  shape: number[];
  /**
   * F32: Float32Array or number[]; F16: Uint16Array of half bits, or Float32Array / number[]
   * of values (rounded to nearest even); I64: BigInt64Array or number[] of integers.
   */
  data: Float32Array | Uint16Array | BigInt64Array | number[];
}

function tensorBytes(name: string, t: TensorToWrite): Uint8Array {
  const n = numelOf(t.shape);
  if (!t.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new Error(`writeSafetensors: tensor "${name}": shape must be non-negative integers, got ${JSON.stringify(t.shape)}`);
  }
  if (t.data.length !== n) {
    throw new Error(
      `writeSafetensors: tensor "${name}": data has ${t.data.length} values, expected ${n} for shape ${JSON.stringify(t.shape)}`,
    );
  }
  const bad = (): Error =>
    new Error(`writeSafetensors: tensor "${name}": dtype ${t.dtype} cannot be written from ${t.data.constructor.name}`);
  switch (t.dtype) {
    case 'F32': {
      if (t.data instanceof Uint16Array || t.data instanceof BigInt64Array) throw bad();
      const a = t.data instanceof Float32Array ? t.data : Float32Array.from(t.data);
      return new Uint8Array(a.buffer.slice(a.byteOffset, a.byteOffset + a.byteLength));
    }
    case 'F16': {
      if (t.data instanceof BigInt64Array) throw bad();
      let a: Uint16Array;
      if (t.data instanceof Uint16Array) a = t.data;
      else {
        a = new Uint16Array(n);
        for (let i = 0; i < n; i++) a[i] = numberToF16Bits(t.data[i]!);
      }
      return new Uint8Array(a.buffer.slice(a.byteOffset, a.byteOffset + a.byteLength));
    }
    case 'I64': {
      if (t.data instanceof Float32Array || t.data instanceof Uint16Array) throw bad();
      let a: BigInt64Array;
      if (t.data instanceof BigInt64Array) a = t.data;
      else {
        a = new BigInt64Array(n);
        for (let i = 0; i < n; i++) {
          const v = t.data[i]!;
          if (!Number.isSafeInteger(v)) {
            throw new Error(`writeSafetensors: tensor "${name}"[${i}] = ${v} is not an integer; expected I64 values`);
          }
          a[i] = BigInt(v);
        }
      }
      return new Uint8Array(a.buffer.slice(a.byteOffset, a.byteOffset + a.byteLength));
    }
    default:
      throw new Error(`writeSafetensors: tensor "${name}": dtype ${String(t.dtype)} is not writable; expected F32, F16 or I64`);
  }
}

/**
 * Serialises tensors (in the given key order) to safetensors bytes. The JSON header is padded
 * with spaces so the data area starts at a multiple of 8, as the Python library does.
 */
export function encodeSafetensors(tensors: Record<string, TensorToWrite>, metadata?: Record<string, string>): Uint8Array {
  const header: Record<string, unknown> = {};
  if (metadata !== undefined && Object.keys(metadata).length > 0) header['__metadata__'] = metadata;
  const blobs: Uint8Array[] = [];
  let offset = 0;
  for (const [name, t] of Object.entries(tensors)) {
    if (name === '__metadata__') throw new Error('writeSafetensors: "__metadata__" is reserved and cannot name a tensor');
    const bytes = tensorBytes(name, t);
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes.length] };
    blobs.push(bytes);
    offset += bytes.length;
  }
  let json = Buffer.from(JSON.stringify(header), 'utf8');
  const pad = (8 - (json.length % 8)) % 8;
  if (pad > 0) json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const out = new Uint8Array(8 + json.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  let p = 8 + json.length;
  for (const b of blobs) {
    out.set(b, p);
    p += b.length;
  }
  return out;
}

/** Writes a safetensors file atomically (temp file + rename). See {@link encodeSafetensors}. */
export async function writeSafetensors(
  path: string,
  tensors: Record<string, TensorToWrite>,
  metadata?: Record<string, string>,
): Promise<void> {
  await writeFileAtomic(path, encodeSafetensors(tensors, metadata));
}

/** Synchronous {@link writeSafetensors}. */
export function writeSafetensorsSync(
  path: string,
  tensors: Record<string, TensorToWrite>,
  metadata?: Record<string, string>,
): void {
  writeFileAtomicSync(path, encodeSafetensors(tensors, metadata));
}
