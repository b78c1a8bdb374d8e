// The benchmarks report medians of a few runs (the side-by-side with PyTorch takes two):
// an even count must give the mean of the middle two, not the slower run.
import { describe, expect, it } from 'vitest';
import { median } from '../bench/common.js';

describe('bench median', () => {
  it('is the middle value of an odd count and the mean of the middle two of an even one', () => {
    expect(median([6.58])).toBe(6.58);
    expect(median([6.58, 6.48])).toBeCloseTo(6.53, 12);
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 3, 2])).toBe(2.5);
  });

  it('leaves its input unsorted and refuses an empty list', () => {
    const a = [3, 1, 2];
    median(a);
    expect(a).toEqual([3, 1, 2]);
    expect(() => median([])).toThrow('median of no values');
  });
});
