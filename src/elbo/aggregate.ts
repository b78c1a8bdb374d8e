// Aggregation of the stored attention maps into per-class cross-attention vectors and the
// self-attention propagation operator, as the reference's aggregate_cross_att /
// aggregate_self_att do (ALGORITHM.md 1.4; golden README "Algorithm notes").
import { resizeBilinear, resizeBilinearAdjoint } from './interp.js';

/** One layer's averaged head-mean map: (res*res, keys) row-major. */
export interface LayerMap {
  /** Module path, for messages ("down_blocks.0.attentions.0..."). */
  name: string;
  /** Where the layer sits in the UNet: down blocks, mid block or up blocks. */
  place: 'down' | 'mid' | 'up';
  res: number;
  data: Float32Array;
}

/**
 * Resolution segment of each layer: starts at 0 and increases by one each time the grid
 * size changes while walking the layers in call order (not an index of unique sizes).
 */
export function resolutionSegments(layers: readonly { res: number }[]): number[] {
  const out: number[] = [];
  let seg = 0;
  layers.forEach((l, i) => {
    if (i > 0 && l.res !== layers[i - 1]!.res) seg++;
    out.push(seg);
  });
  return out;
}

/**
 * Per-layer cross-attention weights. With var != 0: a Gaussian over the layer index
 * centred on the mid block, `exp(-(i - m)^2 / (2 var^2))`, rescaled to sum to the number of
 * layers; otherwise `crossWeight[segment]`.
 */
export function crossLayerWeights(layers: readonly LayerMap[], gaussianVar: number, crossWeight: readonly number[]): number[] {
  if (gaussianVar !== 0) {
    const nDown = layers.filter((l) => l.place === 'down').length;
    const nMid = layers.filter((l) => l.place === 'mid').length;
    const m = nDown + (nMid - 1) / 2;
    const raw = layers.map((_, i) => Math.exp(-((i - m) ** 2) / (2 * gaussianVar * gaussianVar)));
    const s = raw.reduce((a, b) => a + b, 0);
    return raw.map((w) => (w * layers.length) / s);
  }
  const seg = resolutionSegments(layers);
  return seg.map((s, i) => {
    const w = crossWeight[s];
    if (w === undefined) {
      throw new Error(`cross_weight has ${crossWeight.length} entries but layer ${layers[i]!.name} is in resolution segment ${s}; give one weight per segment (${Math.max(...seg) + 1})`);
    }
    return w;
  });
}

/** Per-row, per-layer self-attention weights from `selfWeight[row][segment]`. */
export function selfLayerWeights(layers: readonly LayerMap[], selfWeight: readonly (readonly number[])[]): number[][] {
  const seg = resolutionSegments(layers);
  return selfWeight.map((row, j) =>
    seg.map((s, i) => {
      const w = row[s];
      if (w === undefined) {
        throw new Error(`self_weight row ${j} has ${row.length} entries but layer ${layers[i]!.name} is in resolution segment ${s}; give one weight per segment (${Math.max(...seg) + 1})`);
      }
      return w;
    }),
  );
}

/**
 * Cross-attention aggregate of one class: per layer the mean over the class's token
 * positions, bilinearly resized to the largest grid, weighted, summed and divided by the
 * weight sum. Returns an R*R vector (R = grid of the first layer).
 */
export function aggregateCross(layers: readonly LayerMap[], positions: readonly number[], weights: readonly number[], keys = 77): Float64Array {
  const R = layers[0]!.res;
  const out = new Float64Array(R * R);
  let wsum = 0;
  layers.forEach((l, i) => {
    const n = l.res * l.res;
    const plane = new Float64Array(n);
    for (let q = 0; q < n; q++) {
      let s = 0;
      for (const p of positions) s += l.data[q * keys + p]!;
      plane[q] = s / positions.length;
    }
    const up = l.res === R ? plane : resizeBilinear(plane, 1, l.res, l.res, R, R);
    const w = weights[i]!;
    for (let k = 0; k < R * R; k++) out[k] += up[k]! * w;
    wsum += w;
  });
  for (let k = 0; k < R * R; k++) out[k] /= wsum;
  return out;
}

/** Checks that every self_weight row has a non-zero sum (a zero row gives 0/0 = NaN masks). */
export function checkSelfWeightSums(rows: readonly (readonly number[])[], option = 'self_weight'): void {
  rows.forEach((r, j) => {
    const s = r.reduce((a, b) => a + b, 0);
    if (s === 0) {
      throw new Error(`${option}: row ${j} gives weight 0 to every self-attention layer of this model (weights per layer: [${r.join(', ')}]); the reference would divide by zero and write all-black heatmaps. Give that row a non-zero weight for at least one resolution segment.`);
    }
  });
}

/**
 * Applies the self-attention operator S = M_last @ ... @ M_0 to a vector c (R*R), where
 * M_j is the weighted mean of the layer maps with the key grid resized to R x R and the
 * query grid repeated. Never builds an (R^2, R^2) matrix: each M_j @ v is a sum over
 * layers of L @ (B^T v) expanded over the repeated query rows.
 */
export function applySelf(layers: readonly LayerMap[], rowWeights: readonly (readonly number[])[], c: Float64Array): Float64Array {
  let vs = [c];
  for (const wrow of rowWeights) {
    const jobs = selfRowJobs(layers, wrow, vs);
    vs = selfRowCombine(layers, wrow, vs.length, jobs, jobs.map((j) => layerTimes(layers[j.layer]!, j.t)));
  }
  return vs[0]!;
}

/**
 * applySelf for several vectors at once, with the products L @ t done by `products`, which
 * gets every (layer, t) of one weight row together and returns L @ t for each (in order): the
 * GPU does them where the summed maps already are (segment.ts). `layers` needs no data there.
 */
export async function applySelfMany(
  layers: readonly Omit<LayerMap, 'data'>[],
  rowWeights: readonly (readonly number[])[],
  cs: readonly Float64Array[],
  products: (jobs: readonly SelfJob[]) => Promise<Float64Array[]>,
): Promise<Float64Array[]> {
  let vs = [...cs];
  for (const wrow of rowWeights) {
    const jobs = selfRowJobs(layers, wrow, vs);
    vs = selfRowCombine(layers, wrow, vs.length, jobs, await products(jobs));
  }
  return vs;
}

/** One product L_layer @ t of a self-attention row, for vector `vec`. */
export interface SelfJob {
  layer: number;
  vec: number;
  /** B^T v on the layer's own (res*res) grid. */
  t: Float64Array;
}

function selfRowJobs(layers: readonly { res: number }[], wrow: readonly number[], vs: readonly Float64Array[]): SelfJob[] {
  const R = layers[0]!.res;
  const jobs: SelfJob[] = [];
  layers.forEach((l, i) => {
    if (wrow[i] === 0) return;
    const r = l.res;
    vs.forEach((v, k) => jobs.push({ layer: i, vec: k, t: r === R ? v : resizeBilinearAdjoint(v, r, r, R, R) }));
  });
  return jobs;
}

/** Sums the row's weighted products, each expanded over the repeated query rows. */
function selfRowCombine(layers: readonly { res: number }[], wrow: readonly number[], nVec: number, jobs: readonly SelfJob[], lts: readonly Float64Array[]): Float64Array[] {
  const R = layers[0]!.res;
  const wsum = wrow.reduce((a, b) => a + b, 0);
  const next = Array.from({ length: nVec }, () => new Float64Array(R * R));
  jobs.forEach((j, ji) => {
    const r = layers[j.layer]!.res;
    const w = wrow[j.layer]!;
    const lt = lts[ji]!;
    const out = next[j.vec]!;
    const f = R / r;
    for (let y = 0; y < R; y++) {
      const qy = Math.floor(y / f);
      for (let x = 0; x < R; x++) out[y * R + x] += (w / wsum) * lt[qy * r + Math.floor(x / f)]!;
    }
  });
  if (wsum === 0) for (const n of next) n.fill(NaN);
  return next;
}

/** L @ t for one layer map (n, n) on the host. */
function layerTimes(l: LayerMap, t: Float64Array): Float64Array {
  const n = l.res * l.res;
  const lt = new Float64Array(n);
  for (let q = 0; q < n; q++) {
    let s = 0;
    const row = q * n;
    for (let k = 0; k < n; k++) s += l.data[row + k]! * t[k]!;
    lt[q] = s;
  }
  return lt;
}

/**
 * Builds the full (R^2, R^2) self-attention operator (only for --dump: at SD 1.5 sizes it
 * is 4096 x 4096). Row-major Float32Array.
 */
export function buildSelf(layers: readonly LayerMap[], rowWeights: readonly (readonly number[])[]): Float32Array {
  const R = layers[0]!.res;
  const N = R * R;
  const mats = rowWeights.map((wrow) => {
    const wsum = wrow.reduce((a, b) => a + b, 0);
    const M = new Float64Array(N * N);
    layers.forEach((l, i) => {
      const w = wrow[i]! / wsum;
      if (wrow[i] === 0) return;
      const r = l.res;
      const n = r * r;
      const up = r === R ? l.data : resizeBilinear(l.data, n, r, r, R, R); // (n, N)
      const f = R / r;
      for (let y = 0; y < R; y++) {
        for (let x = 0; x < R; x++) {
          const src = (Math.floor(y / f) * r + Math.floor(x / f)) * N;
          const dst = (y * R + x) * N;
          for (let k = 0; k < N; k++) M[dst + k] += w * up[src + k]!;
        }
      }
    });
    if (wsum === 0) M.fill(NaN);
    return M;
  });
  let S: Float64Array = mats[0]!;
  for (let j = 1; j < mats.length; j++) S = matmulSquare(mats[j]!, S, N);
  return Float32Array.from(S);
}

function matmulSquare(a: Float64Array, b: Float64Array, n: number): Float64Array {
  const out = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    const orow = i * n;
    for (let k = 0; k < n; k++) {
      const aik = a[i * n + k]!;
      if (aik === 0) continue;
      const brow = k * n;
      for (let j = 0; j < n; j++) out[orow + j] += aik * b[brow + j]!;
    }
  }
  return out;
}
