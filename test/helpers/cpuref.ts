// Plain-TS float64 references for the elementwise kernel tests.

/** erf in float64: Maclaurin series below 2.5, the erfc continued fraction above. */
export function erf64(x: number): number {
  const z = Math.abs(x);
  let r: number;
  if (z < 2.5) {
    let term = z;
    let sum = z;
    for (let n = 1; n < 100; n++) {
      term *= (-z * z) / n;
      const t = term / (2 * n + 1);
      sum += t;
      if (Math.abs(t) < 1e-17 * Math.abs(sum)) break;
    }
    r = (2 / Math.sqrt(Math.PI)) * sum;
  } else {
    let k = z;
    for (let n = 80; n >= 1; n--) k = z + n / 2 / k;
    r = 1 - Math.exp(-z * z) / Math.sqrt(Math.PI) / k;
  }
  return x < 0 ? -r : r;
}

export const UNARY_REF: Record<string, (x: number) => number> = {
  silu: (x) => x / (1 + Math.exp(-x)),
  gelu: (x) => 0.5 * x * (1 + erf64(x / Math.SQRT2)),
  gelu_tanh: (x) => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3))),
  quick_gelu: (x) => x / (1 + Math.exp(-1.702 * x)),
  exp: Math.exp,
  sqrt: Math.sqrt,
  neg: (x) => -x,
  abs: Math.abs,
  sigmoid: (x) => 1 / (1 + Math.exp(-x)),
  tanh: Math.tanh,
  relu: (x) => Math.max(x, 0),
  square: (x) => x * x,
  log: Math.log,
};

/** numpy-broadcast binary op on the CPU. */
export function broadcastRef(
  a: ArrayLike<number>,
  as: readonly number[],
  b: ArrayLike<number>,
  bs: readonly number[],
  f: (x: number, y: number) => number,
): { out: Float64Array; shape: number[] } {
  const r = Math.max(as.length, bs.length);
  const pa = [...new Array<number>(r - as.length).fill(1), ...as];
  const pb = [...new Array<number>(r - bs.length).fill(1), ...bs];
  const shape = pa.map((d, i) => Math.max(d, pb[i]!));
  const n = shape.reduce((x, y) => x * y, 1);
  const out = new Float64Array(n);
  const idx = new Array<number>(r).fill(0);
  for (let i = 0; i < n; i++) {
    let rem = i;
    for (let k = r - 1; k >= 0; k--) {
      idx[k] = rem % shape[k]!;
      rem = Math.floor(rem / shape[k]!);
    }
    let ia = 0;
    let ib = 0;
    for (let k = 0; k < r; k++) {
      ia = ia * pa[k]! + (pa[k] === 1 ? 0 : idx[k]!);
      ib = ib * pb[k]! + (pb[k] === 1 ? 0 : idx[k]!);
    }
    out[i] = f(a[ia]!, b[ib]!);
  }
  return { out, shape };
}

/** Unravels a flat index over `shape` into `idx`. */
export function unravel(i: number, shape: readonly number[], idx: number[]): void {
  let rem = i;
  for (let k = shape.length - 1; k >= 0; k--) {
    idx[k] = rem % shape[k]!;
    rem = Math.floor(rem / shape[k]!);
  }
}

export function prod(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** torch.nn.GroupNorm in f64: biased variance, eps inside the sqrt. */
export function refGroupNorm(x: Float32Array, B: number, C: number, S: number, G: number, gamma: Float32Array, beta: Float32Array, eps: number, silu: boolean): Float64Array {
  const y = new Float64Array(x.length);
  const Cg = C / G;
  const n = Cg * S;
  for (let b = 0; b < B; b++) {
    for (let g = 0; g < G; g++) {
      const off = (b * C + g * Cg) * S;
      let s = 0;
      for (let e = 0; e < n; e++) s += x[off + e]!;
      const mean = s / n;
      let v = 0;
      for (let e = 0; e < n; e++) v += (x[off + e]! - mean) ** 2;
      const rstd = 1 / Math.sqrt(v / n + eps);
      for (let e = 0; e < n; e++) {
        const c = g * Cg + Math.floor(e / S);
        let o = (x[off + e]! - mean) * rstd * gamma[c]! + beta[c]!;
        if (silu) o = o / (1 + Math.exp(-o));
        y[off + e] = o;
      }
    }
  }
  return y;
}
