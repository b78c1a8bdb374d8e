// Aggregation and mask maths on the host, against the reference's own tensors: the golden
// sd21-tiny defaults-full run stores every layer's averaged cross-attention map.
import { describe, expect, it } from 'vitest';
import { SafeTensorsFile } from '../src/io/safetensors.js';
import { aggregateCross, applySelf, applySelfMany, crossLayerWeights, resolutionSegments, checkSelfWeightSums, type LayerMap } from '../src/elbo/aggregate.js';
import { minMax, resizeBilinear, toU8 } from '../src/elbo/interp.js';
import { maxAbsDiff } from './helpers/gpu.js';

const dir = 'test/fixtures/sd21-tiny/elbo/defaults-full';
const f = SafeTensorsFile.open(`${dir}/elbo.safetensors`);
const places = ['down', 'down', 'down', 'down', 'down', 'down', 'mid', 'up', 'up', 'up', 'up', 'up', 'up', 'up', 'up', 'up'] as const;
const layers: LayerMap[] = places.map((place, i) => {
  const name = `avg_cross_att.${String(i).padStart(2, '0')}`;
  const shape = f.info(name).shape;
  return { name, place, res: Math.round(Math.sqrt(shape[1]!)), data: f.readF32(name) };
});
const positions = [[4], [6, 7], [9]];

describe('cross-attention aggregation (reference tensors)', () => {
  it('walks resolution segments in call order', () => {
    expect(resolutionSegments(layers)).toEqual([0, 0, 1, 1, 2, 2, 3, 4, 4, 4, 5, 5, 5, 6, 6, 6]);
  });

  it('matches cross_att.i with the default segment weights', () => {
    const w = crossLayerWeights(layers, 0, [1, 1, 10, 15, 10, 1, 1]);
    for (let i = 0; i < 3; i++) {
      const got = aggregateCross(layers, positions[i]!, w);
      const ref = f.readF32(`cross_att.${i}`);
      expect(maxAbsDiff(got, ref)).toBeLessThan(1e-6);
    }
  });

  it('tempers, multiplies by self_att and resizes to the mask as the reference does', () => {
    const temps = f.readF32('temperature');
    const S = f.readF32('self_att');
    const w = crossLayerWeights(layers, 0, [1, 1, 10, 15, 10, 1, 1]);
    for (let i = 0; i < 3; i++) {
      const c = minMax(aggregateCross(layers, positions[i]!, w)).map((x) => x ** temps[i]!);
      expect(maxAbsDiff(c, f.readF32(`cross_att_tempered.${i}`))).toBeLessThan(1.4e-4 * 2);
      const N = 256;
      const low = new Float64Array(N);
      for (let q = 0; q < N; q++) {
        let s = 0;
        for (let k = 0; k < N; k++) s += S[q * N + k]! * c[k]!;
        low[q] = s;
      }
      const ref = f.readF32(`mask_lowres.${i}`);
      expect(maxAbsDiff(low, ref)).toBeLessThan(1e-3 * Math.max(...ref));
      const mask = minMax(resizeBilinear(low, 1, 16, 16, 192, 256)).map((x) => x * 255);
      expect(maxAbsDiff(mask, f.readF32(`mask.${i}`))).toBeLessThan(0.1);
      const png = toU8(mask);
      const refPng = toU8(f.readF32(`mask.${i}`));
      expect(maxAbsDiff(png, refPng)).toBeLessThanOrEqual(1);
    }
  });

  it('applySelfMany with host products equals applySelf per vector, bit for bit', async () => {
    // Self maps at 8x8, 4x4, 8x8 (grids change and return, as in a UNet), rows of weights
    // with a zero entry; three vectors at once.
    let seed = 7;
    const rnd = (): number => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
    const selfLayers: LayerMap[] = [8, 4, 8].map((r, i) => ({ name: `self.${i}`, place: 'down', res: r, data: Float32Array.from({ length: r ** 4 }, rnd) }));
    const rows = [[1, 0, 2], [0.5, 1, 0], [0, 0, 1]];
    const vs = [0, 1, 2].map(() => Float64Array.from({ length: 64 }, rnd));
    const calls: number[] = [];
    const got = await applySelfMany(selfLayers, rows, vs, async (jobs) => {
      calls.push(jobs.length);
      return jobs.map((j) => {
        const l = selfLayers[j.layer]!;
        const n = l.res ** 2;
        return Float64Array.from({ length: n }, (_, q) => {
          let s = 0;
          for (let k = 0; k < n; k++) s += l.data[q * n + k]! * j.t[k]!;
          return s;
        });
      });
    });
    // One call per weight row with every (non-zero layer, vector) product in it.
    expect(calls).toEqual([6, 6, 3]);
    vs.forEach((v, i) => expect(Array.from(got[i]!)).toEqual(Array.from(applySelf(selfLayers, rows, v))));
    // A row of zero weights gives NaN, as the reference's 0 / 0.
    const nan = await applySelfMany(selfLayers, [[0, 0, 0]], vs.slice(0, 1), async () => []);
    expect(nan[0]!.every((x) => Number.isNaN(x))).toBe(true);
  });

  it('rejects weight lists too short for the layout and zero self-weight rows', () => {
    expect(() => crossLayerWeights(layers, 0, [1, 1, 10])).toThrow(/cross_weight has 3 entries/);
    expect(() => checkSelfWeightSums([[1, 0, 0], [0, 0, 0]])).toThrow(/self_weight: row 1/);
  });
});
