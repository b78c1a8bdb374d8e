// Uniform packing is on every dispatch's path, written for speed (typed arrays, no DataView):
// these pin its bytes against a DataView reference, little-endian as WebGPU reads them.
import { describe, expect, it } from 'vitest';
import { uniforms } from '../src/tensor/index.js';
import { gemmUniforms, gemmUniformsWith, type GemmParams } from '../src/kernels/matmul.js';

type Field = readonly ['u' | 'i' | 'f', number];

/** The reference: each field at byte 4 i through a little-endian DataView, padded to 16 bytes. */
function reference(fields: readonly Field[]): Uint8Array {
  const n = Math.max(4, Math.ceil(fields.length / 4) * 4);
  const dv = new DataView(new ArrayBuffer(n * 4));
  fields.forEach(([t, v], i) => {
    if (t === 'f') dv.setFloat32(i * 4, v, true);
    else if (t === 'i') dv.setInt32(i * 4, v, true);
    else dv.setUint32(i * 4, v >>> 0, true);
  });
  return new Uint8Array(dv.buffer);
}

describe('uniforms', () => {
  it('packs u32, i32 and f32 fields as a little-endian DataView does, padded to 16 bytes', () => {
    const cases: Field[][] = [
      [],
      [['u', 7]],
      [['u', 4096], ['f', 1.01], ['i', -3]],
      [['u', 2 ** 32 - 1], ['u', -1], ['i', -(2 ** 31)], ['f', -0.5], ['f', 3.4e38]],
      [['u', 1], ['u', 2], ['u', 3], ['u', 4], ['f', Math.PI]],
    ];
    for (const c of cases) {
      const got = new Uint8Array(uniforms(c));
      expect(got.byteLength).toBe(Math.max(16, Math.ceil(c.length / 4) * 16));
      expect(Array.from(got)).toEqual(Array.from(reference(c)));
    }
  });

  it('gemmUniforms writes matmul_common.wgsl P: 36 words, alpha as f32, absent conv fields 0', () => {
    const q: GemmParams = {
      M: 4096, N: 320, K: 77, aOff: 5, aRs: 77, aCs: 1, aBs: 315392,
      bOff: 9, bRs: 1, bCs: 77, bBs: 0, oOff: 13, oRs: 320, oCs: 1, oBs: 1310720,
      rOff: 17, biasOff: 21, flags: 13, act: 2, alpha: 0.125, batch: 3,
    };
    const conv: GemmParams = { ...q, e0: 640, padT: 1, H: 64, W: 65, Ho: 32, Wo: 33, kh: 3, kw: 3, stride: 2, pad: 1, nx: 11, ks: 4, kc: 80, sStride: 123 };
    const fields = (p: GemmParams): Field[] => [
      ['u', p.M], ['u', p.N], ['u', p.K], ['u', p.nx ?? 0],
      ['u', p.aOff], ['u', p.aRs], ['u', p.aCs], ['u', p.aBs],
      ['u', p.bOff], ['u', p.bRs], ['u', p.bCs], ['u', p.bBs],
      ['u', p.oOff], ['u', p.oRs], ['u', p.oCs], ['u', p.oBs],
      ['u', p.rOff], ['u', p.biasOff], ['u', p.flags], ['u', p.act],
      ['f', p.alpha], ['u', p.batch], ['u', p.e0 ?? 0], ['u', p.padT ?? 0],
      ['u', p.H ?? 0], ['u', p.W ?? 0], ['u', p.Ho ?? 0], ['u', p.Wo ?? 0],
      ['u', p.kh ?? 0], ['u', p.kw ?? 0], ['u', p.stride ?? 0], ['u', p.pad ?? 0],
      ['u', p.ks ?? 0], ['u', p.kc ?? 0], ['u', p.sStride ?? 0], ['u', 0],
    ];
    for (const p of [q, conv]) {
      const got = new Uint8Array(gemmUniforms(p));
      expect(got.byteLength).toBe(144);
      expect(Array.from(got)).toEqual(Array.from(reference(fields(p))));
    }
    // gemmUniformsWith(q, over) is gemmUniforms({ ...q, ...over }) without the spread
    const overs = [
      { oOff: 0, oRs: 320, oCs: 1, oBs: 4096 * 320, ks: 4, kc: 20, sStride: 9999, flags: 0 },
      { aOff: 0, aRs: 320, aCs: 1, aBs: 7, nx: 12 },
      { M: 100, batch: 2, bOff: 40, rOff: 3, biasOff: 64 },
      { e0: 1, padT: 2, H: 3, W: 4, Ho: 5, Wo: 6, kh: 7, kw: 8, stride: 9, pad: 10, act: 1 },
      { N: 1000, K: 2000, bRs: 3, bCs: 4, bBs: 5 },
    ];
    for (const p of [q, conv]) {
      for (const over of overs) {
        expect(Array.from(new Uint8Array(gemmUniformsWith(p, over)))).toEqual(Array.from(new Uint8Array(gemmUniforms({ ...p, ...over }))));
      }
    }
  });
});
