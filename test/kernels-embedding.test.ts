import { afterEach, describe, expect, it } from 'vitest';
import { Tensor, roundToF16 } from '../src/tensor/index.js';
import { embedding } from '../src/kernels/embedding.js';
import { setWindowLimitForTests } from '../src/kernels/elementwise.js';
import { getDevice, randn } from './helpers/gpu.js';

afterEach(() => setWindowLimitForTests(null));

function gatherRef(table: Float32Array, d: number, ids: number[]): Float32Array {
  const out = new Float32Array(ids.length * d);
  ids.forEach((id, i) => out.set(table.subarray(id * d, id * d + d), i * d));
  return out;
}

async function run(limit: number | null): Promise<void> {
  const dev = await getDevice();
  setWindowLimitForTests(limit);
  for (const [v, d] of [[1, 1], [49, 7], [300, 77], [257, 13]]) {
    const table = randn(v * d, v + d);
    const ids = Array.from({ length: 77 }, (_, i) => (i * 31 + 5) % v);
    ids[0] = v - 1;
    const t = Tensor.fromArray(dev, table, [v, d]);
    const out = embedding(t, ids);
    expect(out.shape).toEqual([77, d]);
    expect(Array.from(await out.toArray())).toEqual(Array.from(gatherRef(table, d, ids)));
    if (dev.hasF16) {
      const th = Tensor.fromArray(dev, table, [v, d], 'f16');
      const oh = embedding(th, ids);
      expect(Array.from(await oh.toArray())).toEqual(Array.from(gatherRef(roundToF16(table), d, ids)));
    }
  }
}

describe('embedding', () => {
  it('gathers rows of f32 and f16 tables', async () => {
    await run(null);
  });
  it('gathers from tables larger than the binding limit (row windows)', async () => {
    await run(1024);
  });
  it('rejects ids outside the table', async () => {
    const dev = await getDevice();
    const t = Tensor.zeros(dev, [10, 4]);
    expect(() => embedding(t, [1, 10])).toThrow(/embedding: id 10 at position 1 is outside the table's 10 rows/);
  });
});
