// Aggregation and mask maths on the host, against the reference's own tensors: the golden
// sd21-tiny defaults-full run stores every layer's averaged cross-attention map.
import { describe, expect, it } from 'vitest';
import { SafeTensorsFile } from '../src/io/safetensors.js';
import { aggregateCross, crossLayerWeights, resolutionSegments, checkSelfWeightSums, type LayerMap } from '../src/elbo/aggregate.js';
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

  it('rejects weight lists too short for the layout and zero self-weight rows', () => {
    expect(() => crossLayerWeights(layers, 0, [1, 1, 10])).toThrow(/cross_weight has 3 entries/);
    expect(() => checkSelfWeightSums([[1, 0, 0], [0, 0, 0]])).toThrow(/self_weight: row 1/);
  });
});
