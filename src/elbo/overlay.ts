// A heatmap coloured with the jet colour map and blended over the image, for people.

/** Jet colour map of v in [0, 1] as RGB bytes. */
export function jet(v: number): [number, number, number] {
  const x = Math.min(1, Math.max(0, Number.isFinite(v) ? v : 0));
  const c = (d: number): number => Math.round(255 * Math.min(1, Math.max(0, 1.5 - Math.abs(4 * x - d))));
  return [c(3), c(2), c(1)];
}

/** RGB (w*h*3) of the heatmap (u8, w*h) coloured and blended with `alpha` over the image. */
export function overlayHeatmap(rgb: Uint8Array, heat: Uint8Array, alpha = 0.5): Uint8Array {
  const out = new Uint8Array(rgb.length);
  for (let i = 0; i < heat.length; i++) {
    const [r, g, b] = jet(heat[i]! / 255);
    out[3 * i] = Math.round((1 - alpha) * rgb[3 * i]! + alpha * r);
    out[3 * i + 1] = Math.round((1 - alpha) * rgb[3 * i + 1]! + alpha * g);
    out[3 * i + 2] = Math.round((1 - alpha) * rgb[3 * i + 2]! + alpha * b);
  }
  return out;
}
