// Token embedding lookup. The table may exceed the storage-binding limit (CLIP-L's
// 49408 x 768 f32 is 152 MB): it is bound in windows of whole rows, one dispatch each.
import { GpuError, Tensor, fillTemplate, grid1d, loadShader, shapeStr, uniforms, type Binding } from '../tensor/index.js';
import { windowLimitBytes } from './elementwise.js';

/** Gathers rows of table (V, D) (f32 or packed f16) for `ids`: (n, D) f32. */
export function embedding(table: Tensor, ids: ArrayLike<number>): Tensor {
  if (table.rank !== 2) throw new GpuError(`embedding: table must be (V, D), got ${shapeStr(table.shape)}`);
  if (table.dtype !== 'f32' && table.dtype !== 'f16') throw new GpuError(`embedding: table dtype ${String(table.dtype)} is not supported`);
  const [v, d] = table.shape as [number, number];
  const n = ids.length;
  const idArr = new Uint32Array(Math.max(n, 1));
  for (let i = 0; i < n; i++) {
    const id = ids[i]!;
    if (!Number.isInteger(id) || id < 0 || id >= v) throw new GpuError(`embedding: id ${id} at position ${i} is outside the table's ${v} rows`);
    idArr[i] = id;
  }
  const dev = table.device;
  const out = Tensor.empty(dev, [n, d], 'f32');
  if (n === 0 || d === 0) return out;
  const limit = windowLimitBytes(dev);
  const eb = table.dtype === 'f32' ? 4 : 2;
  const room = limit - 256 - 4;
  const rowsPer = Math.floor(room / (d * eb));
  const idsPer = Math.floor(room / (d * 4));
  if (rowsPer < 1 || idsPer < 1) throw new GpuError(`embedding: one row of ${d} elements exceeds the storage-binding limit (${limit} bytes)`);
  // ids as raw u32 in a 4-byte-per-element tensor buffer.
  const idT = Tensor.empty(dev, [idArr.length], 'f32', 'embedding ids');
  dev.write(idT.buffer, 0, idArr);
  const size = dev.kind === 'cpu' ? 64 : 256;
  const f16 = table.dtype === 'f16';
  const pipeline = dev.pipeline(`embedding/${table.dtype}/${size}`, () =>
    fillTemplate(loadShader('embedding'), {
      TT: f16 ? 'u32' : 'f32',
      LOAD: f16 ? 'return unpack2x16float(table[i >> 1u])[i & 1u];' : 'return table[i];',
      WG: size,
    }),
  );
  const label = `embedding ${shapeStr(table.shape)}[${n}]`;
  /** A window over bytes [start, end) of t: the binding and the element offset of `start`. */
  const win = (t: Tensor, start: number, end: number, ebytes: number): [Binding, number] => {
    if (t.byteSize <= limit) return [t.binding(), start / ebytes];
    const off = Math.floor(start / 256) * 256;
    return [t.window(off, Math.min(Math.ceil(end / 4) * 4, t.bufferSize) - off), (start - off) / ebytes];
  };
  for (let i0 = 0; i0 < n; i0 += idsPer) {
    const i1 = Math.min(n, i0 + idsPer);
    const run = idArr.subarray(i0, i1);
    const total = (i1 - i0) * d;
    const [nx, ny] = grid1d(Math.ceil(total / size));
    const [idWin, idBase] = win(idT, i0 * 4, i1 * 4, 4);
    const [outWin, outBase] = win(out, i0 * d * 4, i1 * d * 4, 4);
    for (let r0 = 0; r0 < v; r0 += rowsPer) {
      const rows = Math.min(rowsPer, v - r0);
      if (!run.some((id) => id >= r0 && id < r0 + rows)) continue;
      const [tWin, base] = win(table, r0 * d * eb, (r0 + rows) * d * eb, eb);
      const u = uniforms([['u', total], ['u', nx], ['u', d], ['u', r0], ['u', rows], ['u', base], ['u', idBase], ['u', outBase]]);
      dev.dispatch({ label, family: 'embedding', pipeline, uniforms: u, bindings: [tWin, idWin, outWin], workgroups: [nx, ny] });
    }
  }
  // Later writes to the pooled buffer are queued after the recorded dispatches.
  idT.release();
  return out;
}
