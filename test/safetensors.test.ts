import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  SafeTensorsFile,
  encodeSafetensors,
  f16BitsToNumber,
  numberToF16Bits,
  writeSafetensors,
  writeSafetensorsSync,
} from '../src/io/safetensors.ts';

const ROOT = path.resolve(new URL('..', import.meta.url).pathname);
const FIX = path.join(ROOT, 'test/fixtures');

interface IndexEntry {
  tensors?: Map<string, { shape: number[]; dtype: string }>;
  count?: number;
  values?: number;
}

/** Parses TENSORS.md: per file either a table of tensors or "N tensors, M values". */
function parseTensorIndex(): Map<string, IndexEntry> {
  const text = fs.readFileSync(path.join(FIX, 'TENSORS.md'), 'utf8');
  const out = new Map<string, IndexEntry>();
  let cur: IndexEntry | null = null;
  for (const line of text.split('\n')) {
    const h = /^## (.+\.safetensors)\s*$/.exec(line);
    if (h) {
      cur = {};
      out.set(h[1]!, cur);
      continue;
    }
    if (cur === null) continue;
    const c = /^(\d+) tensors, (\d+) values/.exec(line);
    if (c) {
      cur.count = Number(c[1]);
      cur.values = Number(c[2]);
      continue;
    }
    const row = /^\| `(.+)` \| \[([\d, ]*)\] \| (\w+) \|$/.exec(line);
    if (row) {
      cur.tensors ??= new Map();
      const shape = row[2]!.trim() === '' ? [] : row[2]!.split(',').map((s) => Number(s.trim()));
      cur.tensors.set(row[1]!, { shape, dtype: row[3]! });
    }
  }
  return out;
}

function findSafetensors(dir: string): string[] {
  const out: string[] = [];
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...findSafetensors(p));
    else if (e.name.endsWith('.safetensors')) out.push(p);
  }
  return out;
}

/** Key of a file in TENSORS.md: the path below test/fixtures, or below weights/ for the bundled pipeline. */
function indexKey(file: string): string {
  const rel = path.relative(FIX, file);
  if (!rel.startsWith('..')) return rel.split(path.sep).join('/');
  return path.relative(path.join(ROOT, 'weights'), file).split(path.sep).join('/');
}

describe('SafeTensorsFile on the golden files', () => {
  const index = parseTensorIndex();
  const files = [...findSafetensors(FIX), ...findSafetensors(path.join(ROOT, 'weights'))].sort();

  it('finds the golden files', () => {
    expect(files.length).toBeGreaterThanOrEqual(20);
  });

  for (const file of files) {
    it(`reads ${indexKey(file)} as TENSORS.md lists it`, () => {
      const entry = index.get(indexKey(file));
      expect(entry, `TENSORS.md has no section for ${indexKey(file)}`).toBeDefined();
      const st = SafeTensorsFile.open(file);
      try {
        const names = st.names();
        if (entry!.tensors !== undefined) {
          expect(new Set(names)).toEqual(new Set(entry!.tensors.keys()));
          for (const [name, want] of entry!.tensors) {
            const info = st.info(name);
            expect(info.shape, name).toEqual(want.shape);
            expect(info.dtype, name).toBe(want.dtype);
          }
        } else {
          expect(names.length).toBe(entry!.count);
          let values = 0;
          for (const n of names) values += st.info(n).shape.reduce((a, b) => a * b, 1);
          expect(values).toBe(entry!.values);
        }
        // Every tensor decodes, and floats are finite.
        for (const name of names) {
          const info = st.info(name);
          if (info.dtype === 'I64') {
            expect(st.readI64(name).length * 8).toBe(info.byteLength);
          } else {
            const f = st.readF32(name);
            expect(f.length * 4).toBe(info.byteLength);
            for (const v of f) if (!Number.isFinite(v)) throw new Error(`${name} has a non-finite value`);
          }
        }
      } finally {
        st.close();
      }
    });
  }

  it('reads known values', () => {
    const te = SafeTensorsFile.open(path.join(ROOT, 'weights/sd15-tiny/text_encoder/model.safetensors'));
    expect(te.metadata).toEqual({ format: 'pt' });
    const pos = te.info('text_model.embeddings.position_ids');
    expect(pos.dtype).toBe('I64');
    expect(pos.shape).toEqual([1, 77]);
    expect(te.readI64('text_model.embeddings.position_ids')).toEqual(Array.from({ length: 77 }, (_, i) => i));
    expect(Array.from(te.readF32('text_model.embeddings.position_ids').slice(0, 3))).toEqual([0, 1, 2]);
    te.close();

    const clip = SafeTensorsFile.open(path.join(FIX, 'clip-tiny/model.safetensors'));
    expect(clip.info('logit_scale').shape).toEqual([]);
    expect(clip.readF32('logit_scale')[0]).toBeCloseTo(Math.log(100), 4);
    expect(clip.info('vision_model.embeddings.patch_embedding.weight').shape).toEqual([32, 3, 8, 8]);
    clip.close();

    const vae = SafeTensorsFile.open(path.join(FIX, 'sd15-tiny/references/vae.safetensors'));
    const x = vae.readF32('image_preprocessed');
    expect(vae.info('image_preprocessed').shape).toEqual([1, 3, 256, 256]);
    let lo = Infinity;
    let hi = -Infinity;
    for (const v of x) {
      lo = Math.min(lo, v);
      hi = Math.max(hi, v);
    }
    expect(lo).toBeGreaterThanOrEqual(-1);
    expect(hi).toBeLessThanOrEqual(1);
    // Partial reads return the same bytes as the whole read.
    const whole = vae.readBytes('image_preprocessed');
    const part = vae.readBytes('image_preprocessed', 400, 16);
    expect(Array.from(part)).toEqual(Array.from(whole.subarray(400, 416)));
    expect(() => vae.readBytes('image_preprocessed', whole.length - 4, 8)).toThrow(/outside its/);
    expect(() => vae.info('nope')).toThrow(`${path.join(FIX, 'sd15-tiny/references/vae.safetensors')}: tensor "nope" not found`);
    expect(() => vae.getInfo('nope')).toThrow(/tensor "nope" not found/);
    expect(() => vae.readI64('image_preprocessed')).toThrow(/is F32; expected I64/);
    vae.close();
    expect(() => vae.readBytes('image_preprocessed')).toThrow(/closed/);
  });
});

describe('half-precision conversions', () => {
  it('round-trips every finite half and rounds to nearest even', () => {
    for (let h = 0; h < 0x10000; h++) {
      const exp = (h >> 10) & 0x1f;
      if (exp === 0x1f && (h & 0x3ff) !== 0) continue; // NaN
      expect(numberToF16Bits(f16BitsToNumber(h))).toBe(h);
    }
    expect(numberToF16Bits(1 + 2 ** -11)).toBe(0x3c00); // tie -> even (down)
    expect(numberToF16Bits(1 + 3 * 2 ** -11)).toBe(0x3c02); // tie -> even (up)
    expect(numberToF16Bits(65520)).toBe(0x7c00); // rounds to Inf
    expect(numberToF16Bits(65519)).toBe(0x7bff);
    expect(numberToF16Bits(2 ** -25)).toBe(0); // half the smallest subnormal: tie -> 0
    expect(numberToF16Bits(3 * 2 ** -26)).toBe(1);
    expect(numberToF16Bits(-0)).toBe(0x8000);
    expect(Number.isNaN(f16BitsToNumber(numberToF16Bits(NaN)))).toBe(true);
  });
});

describe('writeSafetensors and bad files', () => {
  let dir = '';
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'st-test-'));
  });
  afterAll(() => {
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('round-trips F32, F16, I64, scalars, empty tensors and metadata', async () => {
    const p = path.join(dir, 'sub/rt.safetensors');
    const f32 = Float32Array.from([1.5, -2.25, 3e-8, 1e30, 0, -0]);
    await writeSafetensors(
      p,
      {
        a: { dtype: 'F32', shape: [2, 3], data: f32 },
        h: { dtype: 'F16', shape: [3], data: [1, 0.1, -65504] },
        hb: { dtype: 'F16', shape: [2], data: Uint16Array.from([0x3c00, 0xc000]) },
        i: { dtype: 'I64', shape: [1, 4], data: [0, -1, 49407, 2 ** 40] },
        ib: { dtype: 'I64', shape: [1], data: BigInt64Array.from([7n]) },
        s: { dtype: 'F32', shape: [], data: [4.5] },
        e: { dtype: 'F32', shape: [0, 5], data: [] },
      },
      { format: 'pt', note: 'x' },
    );
    const raw = fs.readFileSync(p);
    const hlen = Number(raw.readBigUInt64LE(0));
    expect(hlen % 8).toBe(0);
    expect(raw.subarray(8, 8 + hlen).toString('utf8')).toMatch(/^\{.*\} *$/);
    expect(fs.readdirSync(path.dirname(p))).toEqual(['rt.safetensors']); // no temp file left

    const st = SafeTensorsFile.open(p);
    expect(st.names()).toEqual(['a', 'h', 'hb', 'i', 'ib', 's', 'e']);
    expect(st.metadata).toEqual({ format: 'pt', note: 'x' });
    expect(Array.from(st.readF32('a'))).toEqual(Array.from(f32));
    expect(st.info('a')).toMatchObject({ dtype: 'F32', shape: [2, 3], byteLength: 24 });
    expect(Array.from(st.readF32('h'))).toEqual([1, f16BitsToNumber(numberToF16Bits(0.1)), -65504]);
    expect(Array.from(st.readF16Bits('h'))).toEqual([0x3c00, 0x2e66, 0xfbff]);
    expect(Array.from(st.readF16Bits('a')).slice(0, 2)).toEqual([0x3e00, 0xc080]);
    expect(Array.from(st.readF32('hb'))).toEqual([1, -2]);
    expect(st.readI64('i')).toEqual([0, -1, 49407, 2 ** 40]);
    expect(st.readI64('ib')).toEqual([7]);
    expect(st.info('s').shape).toEqual([]);
    expect(Array.from(st.readF32('s'))).toEqual([4.5]);
    expect(st.readF32('e').length).toBe(0);
    st.close();
  });

  it('reads BF16', () => {
    const p = path.join(dir, 'bf16.safetensors');
    const header = JSON.stringify({ b: { dtype: 'BF16', shape: [2], data_offsets: [0, 4] } });
    fs.writeFileSync(p, buildFile(header, Buffer.from([0x80, 0x3f, 0x20, 0xc0])));
    const st = SafeTensorsFile.open(p);
    expect(Array.from(st.readF32('b'))).toEqual([1, -2.5]);
    expect(Array.from(st.readF16Bits('b'))).toEqual([0x3c00, 0xc100]);
    st.close();
  });

  it('rejects bad writer input', () => {
    expect(() => encodeSafetensors({ a: { dtype: 'F32', shape: [2, 2], data: [1, 2, 3] } })).toThrow(
      /tensor "a": data has 3 values, expected 4/,
    );
    expect(() => encodeSafetensors({ a: { dtype: 'I64', shape: [1], data: [1.5] } })).toThrow(/not an integer/);
    expect(() => writeSafetensorsSync(path.join(dir, 'x.safetensors'), { a: { dtype: 'F32', shape: [1], data: Uint16Array.from([1]) } })).toThrow(
      /dtype F32 cannot be written from Uint16Array/,
    );
  });

  function buildFile(headerJson: string, data: Buffer, lenOverride?: bigint): Buffer {
    const h = Buffer.from(headerJson, 'utf8');
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(lenOverride ?? BigInt(h.length));
    return Buffer.concat([len, h, data]);
  }

  const good = JSON.stringify({
    __metadata__: { format: 'pt' },
    w: { dtype: 'F32', shape: [2, 2], data_offsets: [0, 16] },
    b: { dtype: 'F32', shape: [2], data_offsets: [16, 24] },
  });

  const bad: [string, () => Buffer, RegExp][] = [
    ['shorter than 8 bytes', () => Buffer.from([1, 2, 3]), /not a safetensors file: 3 bytes/],
    ['truncated data area', () => buildFile(good, Buffer.alloc(20)), /tensor "b": data_offsets \[16, 24\] extend past the end of the data area \(20 bytes\)/],
    ['truncated header', () => buildFile(good, Buffer.alloc(0)).subarray(0, 30), /invalid safetensors header length/],
    ['absurd header length', () => buildFile(good, Buffer.alloc(24), 1n << 60n), /invalid safetensors header length 1152921504606846976/],
    ['invalid JSON', () => buildFile('{"w": {"dtype": "F32",', Buffer.alloc(0)), /header is not valid JSON/],
    ['non-object header', () => buildFile('[1,2]', Buffer.alloc(0)), /must be a JSON object, got an array/],
    [
      'overlapping offsets',
      () =>
        buildFile(
          JSON.stringify({
            w: { dtype: 'F32', shape: [2, 2], data_offsets: [0, 16] },
            b: { dtype: 'F32', shape: [2], data_offsets: [8, 16] },
          }),
          Buffer.alloc(16),
        ),
      /tensor "b" data_offsets \[8, 16\] overlap tensor "w" \[0, 16\]/,
    ],
    [
      'offsets past end',
      () => buildFile(JSON.stringify({ w: { dtype: 'F32', shape: [4], data_offsets: [100, 116] } }), Buffer.alloc(16)),
      /tensor "w": data_offsets \[100, 116\] extend past the end/,
    ],
    [
      'unsupported dtype U8',
      () => buildFile(JSON.stringify({ m: { dtype: 'U8', shape: [4], data_offsets: [0, 4] } }), Buffer.alloc(4)),
      /tensor "m": dtype U8 is unsupported; supported dtypes are F32, F16, BF16, I64/,
    ],
    [
      'unsupported dtype F64',
      () => buildFile(JSON.stringify({ d: { dtype: 'F64', shape: [1], data_offsets: [0, 8] } }), Buffer.alloc(8)),
      /tensor "d": dtype F64 is unsupported/,
    ],
    [
      'shape/size mismatch',
      () => buildFile(JSON.stringify({ w: { dtype: 'F32', shape: [3, 2], data_offsets: [0, 16] } }), Buffer.alloc(16)),
      /tensor "w": data_offsets \[0, 16\] span 16 bytes, expected 24 \(shape \[3,2\] x 4 bytes of F32\)/,
    ],
    [
      'negative shape',
      () => buildFile(JSON.stringify({ w: { dtype: 'F32', shape: [-1], data_offsets: [0, 0] } }), Buffer.alloc(0)),
      /tensor "w": shape must be an array of non-negative integers/,
    ],
    [
      'bad metadata',
      () => buildFile(JSON.stringify({ __metadata__: { a: 1 } }), Buffer.alloc(0)),
      /__metadata__\["a"\] must be a string/,
    ],
  ];

  for (const [what, make, re] of bad) {
    it(`rejects a file with ${what}`, () => {
      const p = path.join(dir, `${what.replace(/\W+/g, '_')}.safetensors`);
      fs.writeFileSync(p, make());
      let msg = '';
      try {
        SafeTensorsFile.open(p).close();
      } catch (err) {
        msg = (err as Error).message;
      }
      expect(msg.startsWith(p + ':'), msg).toBe(true);
      expect(msg).toMatch(re);
    });
  }

  it('a good hand-built file opens', () => {
    const p = path.join(dir, 'good.safetensors');
    const data = Buffer.alloc(24);
    new Float32Array(data.buffer, data.byteOffset, 6).set([1, 2, 3, 4, 5, 6]);
    fs.writeFileSync(p, buildFile(good, data));
    const st = SafeTensorsFile.open(p);
    expect(Array.from(st.readF32('b'))).toEqual([5, 6]);
    st.close();
  });

  it('a missing file names the path', () => {
    const p = path.join(dir, 'missing.safetensors');
    expect(() => SafeTensorsFile.open(p)).toThrow(`${p}: safetensors file not found`);
  });
});
