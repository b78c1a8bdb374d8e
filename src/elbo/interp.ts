// Host-side resampling with torch.nn.functional.interpolate(mode="bilinear",
// align_corners=False) semantics (no antialias), used on small attention planes and masks.

interface Tap {
  i0: number;
  i1: number;
  l0: number;
  l1: number;
}

/** Source taps of each output index along one axis (torch's area_pixel_compute_source_index). */
export function bilinearTaps(inSize: number, outSize: number): Tap[] {
  const scale = inSize / outSize;
  const taps: Tap[] = [];
  for (let o = 0; o < outSize; o++) {
    let src = scale * (o + 0.5) - 0.5;
    if (src < 0) src = 0;
    const i0 = Math.min(Math.floor(src), inSize - 1);
    const i1 = i0 < inSize - 1 ? i0 + 1 : i0;
    const l1 = src - i0;
    taps.push({ i0, i1, l0: 1 - l1, l1 });
  }
  return taps;
}

/** Resizes `planes` row-major (h, w) planes stored back to back to (outH, outW). */
export function resizeBilinear(src: Float32Array | Float64Array, planes: number, h: number, w: number, outH: number, outW: number): Float64Array {
  const ty = bilinearTaps(h, outH);
  const tx = bilinearTaps(w, outW);
  const out = new Float64Array(planes * outH * outW);
  for (let p = 0; p < planes; p++) {
    const base = p * h * w;
    const obase = p * outH * outW;
    for (let y = 0; y < outH; y++) {
      const { i0: y0, i1: y1, l0: wy0, l1: wy1 } = ty[y]!;
      const r0 = base + y0 * w;
      const r1 = base + y1 * w;
      for (let x = 0; x < outW; x++) {
        const { i0: x0, i1: x1, l0: wx0, l1: wx1 } = tx[x]!;
        out[obase + y * outW + x] =
          wy0 * (wx0 * src[r0 + x0]! + wx1 * src[r0 + x1]!) + wy1 * (wx0 * src[r1 + x0]! + wx1 * src[r1 + x1]!);
      }
    }
  }
  return out;
}

/**
 * The adjoint of bilinear resizing (h, w) -> (outH, outW): given v on the output grid,
 * returns B^T v on the input grid, so that (L resized along keys) @ v = L @ (B^T v).
 */
export function resizeBilinearAdjoint(v: Float64Array, h: number, w: number, outH: number, outW: number): Float64Array {
  const ty = bilinearTaps(h, outH);
  const tx = bilinearTaps(w, outW);
  const out = new Float64Array(h * w);
  for (let y = 0; y < outH; y++) {
    const { i0: y0, i1: y1, l0: wy0, l1: wy1 } = ty[y]!;
    for (let x = 0; x < outW; x++) {
      const { i0: x0, i1: x1, l0: wx0, l1: wx1 } = tx[x]!;
      const val = v[y * outW + x]!;
      out[y0 * w + x0] += wy0 * wx0 * val;
      out[y0 * w + x1] += wy0 * wx1 * val;
      out[y1 * w + x0] += wy1 * wx0 * val;
      out[y1 * w + x1] += wy1 * wx1 * val;
    }
  }
  return out;
}

/** Min-max normalisation to [0, 1] (NaN when max == min, as the reference divides by 0). */
export function minMax(a: ArrayLike<number>): Float64Array {
  let lo = Infinity;
  let hi = -Infinity;
  for (let i = 0; i < a.length; i++) {
    const v = a[i]!;
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  const out = new Float64Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = (a[i]! - lo) / (hi - lo);
  return out;
}

/** cv2's float -> uint8 conversion: round half to even, saturate, NaN -> 0. */
export function toU8(v: ArrayLike<number>): Uint8Array {
  const out = new Uint8Array(v.length);
  for (let i = 0; i < v.length; i++) {
    const x = v[i]!;
    if (!(x > 0)) {
      out[i] = 0;
      continue;
    }
    if (x >= 255) {
      out[i] = 255;
      continue;
    }
    const f = Math.floor(x);
    const d = x - f;
    out[i] = d > 0.5 || (d === 0.5 && f % 2 === 1) ? f + 1 : f;
  }
  return out;
}
