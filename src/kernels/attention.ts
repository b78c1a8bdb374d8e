// Fused multi-head attention on the layout diffusers has before its head split:
// q (B, Nq, H*d), k / v (B, Nk, H*d) -> (B, Nq, H*d). The softmax probabilities are never
// written for the forward result (online softmax over key blocks, f32 statistics). With
// `probsOut`, a second pass recomputes the scores with the final max / sum and adds the
// mean over heads into probsOut; the (B, H, Nq, Nk) tensor never exists.
import { Device, GpuError, Tensor, grid1d, loadShader, scope, shapeStr, uniforms } from '../tensor/index.js';
import { buildShader, packTexture, runGemm, textureBinding, textureHolds } from './matmul.js';
import { softmax } from './norm.js';

export type AttentionVariant = 'naive' | 'cpu' | 'gpu';

export interface AttentionOptions {
  /** Score scale; default d^-0.5. */
  scale?: number;
  /** Query i sees keys j <= i (top-left aligned, as torch's tril mask; CLIP's text encoder). */
  causal?: boolean;
  /** (B, Nk) of 1 / 0: keys with 0 are excluded from the softmax (score -inf). */
  keyMask?: Tensor;
  /** f32 (B, Nq, Nk), or (Nq, Nk) when B is 1 or with probsSumBatch: the head-mean softmax
   *  probabilities are ADDED into it. */
  probsOut?: Tensor;
  /** With probsOut (Nq, Nk): sum the head-mean maps over the batch. */
  probsSumBatch?: boolean;
  variant?: AttentionVariant;
}

const LOG2E = 1.4426950408889634;
const VARIANTS: AttentionVariant[] = ['naive', 'cpu', 'gpu'];

/** The attention variants, for `doctor`. */
export function variants(): string[] {
  return [...VARIANTS];
}

/** Register-block sizes of the 'cpu' variant, chosen by the sweep in
 *  bench/kernels-attention.ts (which changes them to measure alternatives). */
export const attentionTuning = {
  /**
   * R query rows per lane, JB keys per block; `wideR`: R for heads whose rows at R do not fit
   * workgroup memory (outputRowsInWorkgroup). Alternated (2-core Zen 5, 2026-11-27), R 8 ->
   * 4 there: the VAE's d 512 (rows private either way) x1.06-1.12; SD 1.5's d 160 (at R 4 the
   * rows fit workgroup memory) x1.17-1.31 at 64-512 tokens; heads of d <= 128 keep R 8 (R 4:
   * x0.81-0.87).
   */
  cpuFwd: { R: 8, JB: 32, wideR: 4 },
  cpuProbs: { R: 16, JB: 8 },
  /** Share K / V loads across the 8 lanes by subgroupBroadcast where the adapter has subgroups. */
  subgroups: true,
  /**
   * The 'cpu' forward kernel reads q, k and v from textures (copied per call, packTexture)
   * where d % 4 == 0 and they fit the texture limits; false (ELBO_ATTN_TEX=0): from buffers.
   */
  cpuTextures: process.env.ELBO_ATTN_TEX !== '0',
  /** Output rows of the forward kernel in workgroup memory where they fit (outputRowsInWorkgroup); false: always private. */
  outputRowsInWorkgroup: true,
  /** Test hook: a smaller storage binding limit, so the windowed probsOut path runs on small shapes. */
  maxBindingBytes: undefined as number | undefined,
  /** Kernel of the 'gpu' variant: 'v1' attention_gpu.wgsl, 'v2' attention_gpu2.wgsl. */
  gpuKernel: (process.env.ELBO_GPU_ATTN === 'v1' ? 'v1' : 'v2') as 'v1' | 'v2',
  /**
   * attention_gpu2.wgsl: R query rows per invocation, WG invocations per workgroup, KB keys
   * per register block (halved while a K + V tile of KB keys exceeds the budget), K / V
   * tiles of at most tileBytes of workgroup memory together, the channel loops written out
   * (literal indices) for heads of at most unrollMaxD4 vec4. Measured on the H100 (docs/GPU.md,
   * 4096-token self-attention, 8 heads of 40): R 1 / WG 128 0.95 ms, R 1 / WG 64 1.32, R 2
   * 2.18, R 4 3.64; the default is the fastest at every UNet shape but one (a tie).
   */
  gpuV2: { R: 1, WG: 128, KB: 8, tileBytes: 16384, unrollMaxD4: 40 },
  /**
   * The 'gpu' variant's heads wider than this (d; the VAE's one head of 512), without mask,
   * causal or probsOut: scores, softmax and P V through the GEMM and softmax kernels
   * (attentionByGemm) instead of the fused kernel, whose rolled loops over private q / o rows
   * of d floats took NVIDIA's compiler 6.9 s at d = 512 (docs/GPU.md). Infinity
   * (ELBO_GPU_ATTN_WIDE=fused): always fused.
   */
  gpuWideByGemmAbove: process.env.ELBO_GPU_ATTN_WIDE === 'fused' ? Infinity : 160,
  /** attentionByGemm: scores of at most this many bytes at once (query rows in chunks). */
  gemmScoreBytes: 256 * 2 ** 20,
  /**
   * The 'gpu' variant's head-mean probabilities (probsOut) by attention_probs_gpu.wgsl (64 x
   * 64 tiles, workgroups of 256); false (ELBO_GPU_PROBS=cpu): lavapipe's kernel, which that
   * variant used before (workgroups of 8: 0.9 s to compile and ~2.7 ms per 4096-token map on
   * the H100, docs/GPU.md).
   */
  gpuProbs: process.env.ELBO_GPU_PROBS !== 'cpu',
};

function wideByGemm(d: number, causal: boolean, masked: boolean, probs: boolean): boolean {
  return d > attentionTuning.gpuWideByGemmAbove && !causal && !masked && !probs;
}

/**
 * Attention with materialised scores, for wide heads on GPUs: per head and chunk of query
 * rows, S = scale q k^T (B, rows, Nk) by the GEMM, softmax over keys, then P v by the GEMM
 * written straight into the head's columns of out. The operands are strided views of the
 * (B, N, H*d) layout, so nothing is permuted.
 */
function attentionByGemm(dev: Device, a: { q: Tensor; k: Tensor; v: Tensor; out: Tensor; B: number; Nq: number; Nk: number; H: number; d: number; HD: number; scale: number; label: string }): void {
  const { q, k, v, out, B, Nq, Nk, H, d, HD } = a;
  const rows = Math.max(1, Math.min(Nq, Math.floor(attentionTuning.gemmScoreBytes / (B * Nk * 4))));
  const common = { act: 'none' as const, variant: 'gpu' as const, family: 'attention' };
  for (let h = 0; h < H; h++) {
    for (let r0 = 0; r0 < Nq; r0 += rows) {
      const rc = Math.min(rows, Nq - r0);
      scope(() => {
        const s = Tensor.empty(dev, [B, rc, Nk], 'f32', 'attention scores');
        runGemm(dev, {
          ...common, label: `${a.label} scores`, M: rc, N: Nk, K: d, batch: B, alpha: a.scale,
          a: { t: q, off: r0 * HD + h * d, rs: HD, cs: 1, bs: Nq * HD },
          b: { t: k, off: h * d, rs: 1, cs: HD, bs: Nk * HD },
          out: { t: s, off: 0, rs: Nk, cs: 1, bs: rc * Nk },
        });
        const p = softmax(s);
        runGemm(dev, {
          ...common, label: `${a.label} P v`, M: rc, N: d, K: Nk, batch: B, alpha: 1,
          a: { t: p, off: 0, rs: Nk, cs: 1, bs: rc * Nk },
          b: { t: v, off: h * d, rs: HD, cs: 1, bs: Nk * HD },
          out: { t: out, off: r0 * HD + h * d, rs: HD, cs: 1, bs: Nq * HD },
        });
      });
    }
  }
}

/**
 * Loader functions for the templated shaders: ldq / ldk / ldv(base, c4) return channels
 * 4*c4 .. 4*c4+3 of the head row starting at element `base` (zeros past d), sto writes them.
 * With d % 4 == 0 the buffers are array<vec4<f32>> and every access is one vec4.
 */
function loaders(vec: boolean, withV: boolean, withStore: boolean): string {
  const names: Array<[string, string]> = [['ldq', 'qb'], ['ldk', 'kb']];
  if (withV) names.push(['ldv', 'vb']);
  let s = '';
  for (const [fn, buf] of names) {
    s += vec
      ? `fn ${fn}(base: u32, c4: u32) -> vec4<f32> { return ${buf}[base / 4u + c4]; }\n`
      : `fn ${fn}(base: u32, c4: u32) -> vec4<f32> {
  let c = c4 * 4u;
  return vec4<f32>(select(0.0, ${buf}[base + c], c < p.d), select(0.0, ${buf}[base + c + 1u], c + 1u < p.d),
                   select(0.0, ${buf}[base + c + 2u], c + 2u < p.d), select(0.0, ${buf}[base + c + 3u], c + 3u < p.d));
}\n`;
  }
  if (withStore) {
    s += vec
      ? 'fn sto(base: u32, c4: u32, x: vec4<f32>) { ob[base / 4u + c4] = x; }\n'
      : `fn sto(base: u32, c4: u32, x: vec4<f32>) {
  let c = c4 * 4u;
  for (var e = 0u; e < 4u; e++) { if (c + e < p.d) { ob[base + c + e] = x[e]; } }
}\n`;
  }
  return s;
}

const range = (n: number): number[] => Array.from({ length: n }, (_, i) => i);

/**
 * Capacity in vec4 of the private output rows for head size d: one bucket for every SD /
 * CLIP head size (d <= 160), larger ones (the VAE's single 512-wide head) in steps of 128
 * channels, so a model's head sizes share pipelines.
 */
function dmax4(d: number): number {
  const d4 = Math.ceil(d / 4);
  return d4 <= 40 ? 40 : Math.ceil(d4 / 32) * 32;
}

/**
 * Body of attention_cpu.wgsl for R rows and JB keys per block. Rows and keys are unrolled
 * into named variables; the loops over d stay rolled (d is a uniform: one pipeline for
 * every head size), with the output rows touched once per R x JB multiply-adds, in
 * workgroup memory (`oWg`, see outputRowsInWorkgroup) or a private array.
 */
function cpuForwardBody(R: number, JB: number, sg: boolean, DMAX4: number, oWg: boolean, tex = false): string {
  const rs = range(R);
  // Output row block: a private array, or this lane's slots of the workgroup array `ow`
  // (slot i of lane t at i * 8 + t; no lane touches another's, so no barriers).
  const o = (i: string): string => (oWg ? `ow[(${i}) * 8u + t]` : `o[${i}]`);
  const js = range(JB);
  const gs = range(JB / 8);
  const L: string[] = [];
  L.push('  let d4 = (p.d + 3u) / 4u;');
  // tex: q, k and v come from (HD / 4, N, B) textures (texel hc + c of row i, layer b).
  if (tex) L.push('  let hc = hoff / 4u;');
  for (const r of rs) {
    L.push(`  let i${r} = row0 + ${r * 8}u;`);
    L.push(`  let qo${r} = (b * p.Nq + min(i${r}, p.Nq - 1u)) * p.HD + hoff;`);
    if (tex) L.push(`  let qi${r} = min(i${r}, p.Nq - 1u);`);
    L.push(`  var m${r} = NEG;`, `  var l${r} = 0.0;`);
  }
  if (!oWg) L.push(`  var o: array<vec4<f32>, ${R * DMAX4}>;`);
  L.push(`  for (var c = 0u; c < d4 * ${R}u; c++) { ${o('c')} = vec4<f32>(0.0); }`);
  L.push(`  for (var j0 = 0u; j0 < kend; j0 += ${JB}u) {`);
  for (const j of js) {
    L.push(`    let jc${j} = min(j0 + ${j}u, p.Nk - 1u);`);
    L.push(`    let ko${j} = (b * p.Nk + jc${j}) * p.HD + hoff;`);
    L.push(`    var ok${j} = j0 + ${j}u < kend;`);
    L.push(`    if (p.hasMask != 0u) { ok${j} = ok${j} && mask[b * p.Nk + jc${j}] != 0.0; }`);
  }
  // With subgroups, lane t loads key j0 + 8g + t and the subgroup (= the workgroup of 8)
  // shares it by broadcast: one K / V load per lane per 8 keys instead of 8.
  if (sg) for (const g of gs) L.push(tex ? `    let kl${g} = min(j0 + ${g * 8}u + t, p.Nk - 1u);` : `    let kl${g} = (b * p.Nk + min(j0 + ${g * 8}u + t, p.Nk - 1u)) * p.HD + hoff;`);
  // One key row's channels 4c .. 4c + 3: `at` is its buffer offset or (tex) texture row.
  const ldKey = (ld: string, at: string): string => (tex ? `textureLoad(${ld === 'ldk' ? 'kT' : 'vT'}, vec2<u32>(hc + c, ${at}), b, 0)` : `${ld}(${at}, c)`);
  const keyLoads = (name: string, ld: string): void => {
    if (!sg) {
      for (const j of js) L.push(`      let ${name}${j} = ${ldKey(ld, tex ? `jc${j}` : `ko${j}`)};`);
      return;
    }
    for (const g of gs) {
      L.push(`      let ${name}m${g} = ${ldKey(ld, `kl${g}`)};`);
      for (let jj = 0; jj < 8; jj++) L.push(`      let ${name}${g * 8 + jj} = subgroupBroadcast(${name}m${g}, ${jj}u);`);
    }
  };
  for (const r of rs) for (const j of js) L.push(`    var s${r}_${j} = 0.0;`);
  L.push('    for (var c = 0u; c < d4; c++) {');
  for (const r of rs) L.push(tex ? `      let q${r} = textureLoad(qT, vec2<u32>(hc + c, qi${r}), b, 0);` : `      let q${r} = ldq(qo${r}, c);`);
  keyLoads('k', 'ldk');
  for (const r of rs) for (const j of js) L.push(`      s${r}_${j} += dot(q${r}, k${j});`);
  L.push('    }');
  for (const r of rs) {
    for (const j of js) L.push(`    let ok${r}_${j} = ok${j} && (p.causal == 0u || j0 + ${j}u <= i${r});`);
    for (const j of js) L.push(`    let t${r}_${j} = select(NEG, s${r}_${j} * p.scale2, ok${r}_${j});`);
    const mx = js.reduce((acc, j) => `max(${acc}, t${r}_${j})`, `m${r}`);
    L.push(`    let mx${r} = ${mx};`);
    L.push(`    let al${r} = exp2(m${r} - mx${r});`);
    for (const j of js) L.push(`    let p${r}_${j} = select(0.0, exp2(t${r}_${j} - mx${r}), ok${r}_${j});`);
    L.push(`    l${r} = l${r} * al${r} + ${js.map((j) => `p${r}_${j}`).join(' + ')};`);
    L.push(`    m${r} = mx${r};`);
  }
  L.push('    for (var c = 0u; c < d4; c++) {');
  keyLoads('v', 'ldv');
  L.push(`      let oc = c * ${R}u;`);
  for (const r of rs) L.push(`      ${o(`oc + ${r}u`)} = ${o(`oc + ${r}u`)} * al${r} + ${js.map((j) => `p${r}_${j} * v${j}`).join(' + ')};`);
  L.push('    }');
  L.push('  }');
  for (const r of rs) {
    L.push(`  if (i${r} < p.Nq) {`);
    // A query with no visible key (all masked) gets zeros rather than NaN.
    L.push(`    let inv = select(0.0, 1.0 / l${r}, l${r} > 0.0);`);
    L.push(`    for (var c = 0u; c < d4; c++) { sto(qo${r}, c, ${o(`c * ${R}u + ${r}u`)} * inv); }`);
    L.push(`    if (p.wantStats != 0u) { let si = (bh * p.Nq + i${r}) * 2u; stats[si] = m${r}; stats[si + 1u] = l${r}; }`);
    L.push('  }');
  }
  return L.join('\n');
}

/** Body of attention_probs_cpu.wgsl for R rows x JB keys, unrolled as cpuForwardBody. */
function cpuProbsBody(R: number, JB: number, sg: boolean, tex = false): string {
  const rs = range(R);
  const js = range(JB);
  const gs = range(R / 8);
  const L: string[] = [];
  L.push('  let d4 = (p.d + 3u) / 4u;');
  for (const r of rs) L.push(`  let ir${r} = min(i0 + ${r}u, p.Nq - 1u);`);
  for (const j of js) L.push(`  let jk${j} = min(j0 + ${j * 8}u, p.Nk - 1u);`);
  for (const r of rs) for (const j of js) L.push(`  var a${r}_${j} = 0.0;`);
  L.push('  for (var b = b0; b < b1; b++) {');
  for (const j of js) {
    L.push(`    var keep${j} = true;`);
    L.push(`    if (p.hasMask != 0u) { keep${j} = mask[b * p.Nk + jk${j}] != 0.0; }`);
    L.push(`    let ko${j} = (b * p.Nk + jk${j}) * p.HD;`);
  }
  // With subgroups, lane t loads the q row (and statistics) of row i0 + 8g + t and the
  // subgroup shares it by broadcast: the rows are the same for all 8 lanes.
  // tex: q and k come from (HD / 4, N, B) textures (texel hc + c of row i, layer b).
  if (sg) for (const g of gs) L.push(tex ? `    let ql${g} = min(i0 + ${g * 8}u + t, p.Nq - 1u);` : `    let ql${g} = (b * p.Nq + min(i0 + ${g * 8}u + t, p.Nq - 1u)) * p.HD;`);
  else if (!tex) for (const r of rs) L.push(`    let qo${r} = (b * p.Nq + ir${r}) * p.HD;`);
  L.push('    for (var h = 0u; h < p.H; h++) {');
  L.push('      let hoff = h * p.d;');
  if (tex) L.push('      let hc = hoff / 4u;');
  for (const r of rs) for (const j of js) L.push(`      var s${r}_${j} = 0.0;`);
  L.push('      for (var c = 0u; c < d4; c++) {');
  if (sg) {
    for (const g of gs) {
      L.push(tex ? `        let qm${g} = textureLoad(qT, vec2<u32>(hc + c, ql${g}), b, 0);` : `        let qm${g} = ldq(ql${g} + hoff, c);`);
      for (let rr = 0; rr < 8; rr++) L.push(`        let q${g * 8 + rr} = subgroupBroadcast(qm${g}, ${rr}u);`);
    }
  } else {
    for (const r of rs) L.push(tex ? `        let q${r} = textureLoad(qT, vec2<u32>(hc + c, ir${r}), b, 0);` : `        let q${r} = ldq(qo${r} + hoff, c);`);
  }
  for (const j of js) L.push(tex ? `        let k${j} = textureLoad(kT, vec2<u32>(hc + c, jk${j}), b, 0);` : `        let k${j} = ldk(ko${j} + hoff, c);`);
  for (const r of rs) for (const j of js) L.push(`        s${r}_${j} += dot(q${r}, k${j});`);
  L.push('      }');
  if (sg) {
    for (const g of gs) {
      L.push(`      let sil${g} = ((b * p.H + h) * p.Nq + min(i0 + ${g * 8}u + t, p.Nq - 1u)) * 2u;`);
      L.push(`      let mxl${g} = stats[sil${g}];`);
      L.push(`      let invl${g} = select(0.0, 1.0 / stats[sil${g} + 1u], stats[sil${g} + 1u] > 0.0);`);
    }
  }
  for (const r of rs) {
    if (sg) {
      L.push(`      let mx${r} = subgroupBroadcast(mxl${Math.floor(r / 8)}, ${r % 8}u);`);
      L.push(`      let inv${r} = subgroupBroadcast(invl${Math.floor(r / 8)}, ${r % 8}u);`);
    } else {
      L.push(`      let si${r} = ((b * p.H + h) * p.Nq + ir${r}) * 2u;`);
      L.push(`      let mx${r} = stats[si${r}];`);
      L.push(`      let inv${r} = select(0.0, 1.0 / stats[si${r} + 1u], stats[si${r} + 1u] > 0.0);`);
    }
    // A masked key may score above the row max: select, never multiply, to drop it.
    for (const j of js) L.push(`      a${r}_${j} += select(0.0, exp2(s${r}_${j} * p.scale2 - mx${r}) * inv${r}, keep${j});`);
  }
  L.push('    }');
  L.push('  }');
  for (const r of rs) {
    L.push(`  if (i0 + ${r}u < p.Nq) {`);
    for (const j of js) {
      L.push(`    if (j0 + ${j * 8}u < p.Nk && (p.causal == 0u || j0 + ${j * 8}u <= i0 + ${r}u)) {`);
      L.push(`      let pi = (pl * p.Nq + i0 + ${r}u) * p.Nk + j0 + ${j * 8}u;`);
      L.push(`      probs[pi] += a${r}_${j} * p.invH;`);
      L.push('    }');
    }
    L.push('  }');
  }
  return L.join('\n');
}

/**
 * Body of attention_gpu2.wgsl for R rows per invocation, KB keys per register block and D4
 * vec4 per head row. Rows and keys are unrolled into named variables; the channel loops
 * (constant trip count D4) are written out with literal indices when `unroll`, so the q / o
 * row arrays are only ever indexed by constants.
 */
function gpu2Body(R: number, KB: number, D4: number, unroll: boolean, runtimeBounds: boolean): string {
  const rs = range(R);
  const js = range(KB);
  // Emits lines(c) once per channel: a loop over c, or D4 copies with c a literal, each in
  // its own block so their `let`s do not collide.
  const overC = (ind: string, lines: (c: string) => string[]): string[] => {
    if (!unroll) return [`${ind}for (var c = 0u; c < ${runtimeBounds ? 'p.d4' : 'D4'}; c++) {`, ...lines('c').map((x) => `${ind}  ${x}`), `${ind}}`];
    return range(D4).flatMap((c) => {
      const body = lines(`${c}u`);
      return body.length === 1 ? [`${ind}${body[0]}`] : [`${ind}{`, ...body.map((x) => `${ind}  ${x}`), `${ind}}`];
    });
  };
  const L: string[] = [];
  for (const r of rs) {
    L.push(`  let i${r} = row0 + ${r}u * WG;`);
    L.push(`  let qo${r} = (b * p.Nq + min(i${r}, p.Nq - 1u)) * p.HD + hoff;`);
    L.push(`  var q${r}: array<vec4<f32>, D4>;`, `  var o${r}: array<vec4<f32>, D4>;`);
    L.push(`  var m${r} = NEG;`, `  var l${r} = 0.0;`);
  }
  L.push(...overC('  ', (c) => rs.flatMap((r) => [`q${r}[${c}] = ldq(qo${r}, ${c}) * p.scale2;`, `o${r}[${c}] = vec4<f32>(0.0);`])));
  L.push('  for (var j0 = 0u; j0 < kend; j0 += TK) {');
  // Tile of keys j0 .. j0 + TK - 1 (clamped to the last key; the clamped ones are masked).
  L.push('    workgroupBarrier();');
  L.push('    for (var e = t; e < TK * D4; e += WG) {');
  L.push('      let kj = (b * p.Nk + min(j0 + e / D4, p.Nk - 1u)) * p.HD + hoff;');
  L.push('      ks[e] = ldk(kj, e % D4);');
  L.push('      vs[e] = ldv(kj, e % D4);');
  L.push('    }');
  L.push('    workgroupBarrier();');
  L.push(`    for (var g = 0u; g < ${runtimeBounds ? 'p.TK' : 'TK'}; g += KB) {`);
  L.push('      let jb = j0 + g;');
  L.push('      if (jb >= kend) { break; }');
  for (const j of js) {
    L.push(`      var ok${j} = jb + ${j}u < kend;`);
    L.push(`      if (p.hasMask != 0u) { ok${j} = ok${j} && mask[b * p.Nk + min(jb + ${j}u, p.Nk - 1u)] != 0.0; }`);
  }
  // The explicit zero initializer matters: on lavapipe a `var s: array<f32, KB>;` declared
  // in this loop kept the previous group's scores (seen as wrong results from the second group).
  for (const r of rs) L.push(`      var s${r} = array<f32, KB>();`);
  // Scores: each K vec4 read from the tile serves the R rows.
  L.push(...overC('      ', (c) => [
    ...js.map((j) => `let k${j} = ks[(g + ${j}u) * D4 + ${c}];`),
    ...rs.flatMap((r) => js.map((j) => `s${r}[${j}] += dot(q${r}[${c}], k${j});`)),
  ]));
  for (const r of rs) {
    for (const j of js) L.push(`      let ok${r}_${j} = ok${j} && (p.causal == 0u || jb + ${j}u <= i${r});`);
    for (const j of js) L.push(`      let t${r}_${j} = select(NEG, s${r}[${j}], ok${r}_${j});`);
    L.push(`      let mx${r} = ${js.reduce((acc, j) => `max(${acc}, t${r}_${j})`, `m${r}`)};`);
    L.push(`      let al${r} = exp2(m${r} - mx${r});`);
    for (const j of js) L.push(`      let p${r}_${j} = select(0.0, exp2(t${r}_${j} - mx${r}), ok${r}_${j});`);
    L.push(`      l${r} = l${r} * al${r} + ${js.map((j) => `p${r}_${j}`).join(' + ')};`);
    L.push(`      m${r} = mx${r};`);
  }
  // O = alpha O + P V: each V vec4 read from the tile serves the R rows.
  L.push(...overC('      ', (c) => [
    ...js.map((j) => `let v${j} = vs[(g + ${j}u) * D4 + ${c}];`),
    ...rs.map((r) => `o${r}[${c}] = o${r}[${c}] * al${r} + ${js.map((j) => `p${r}_${j} * v${j}`).join(' + ')};`),
  ]));
  L.push('    }');
  L.push('  }');
  for (const r of rs) {
    L.push(`  if (i${r} < p.Nq) {`);
    // A query with no visible key (all masked) gets zeros rather than NaN.
    L.push(`    let inv = select(0.0, 1.0 / l${r}, l${r} > 0.0);`);
    L.push(...overC('    ', (c) => [`sto(qo${r}, ${c}, o${r}[${c}] * inv);`]));
    L.push(`    if (p.wantStats != 0u) { let si = (bh * p.Nq + i${r}) * 2u; stats[si] = m${r}; stats[si + 1u] = l${r}; }`);
    L.push('  }');
  }
  return L.join('\n');
}

/**
 * `oWg`: the output rows live in workgroup memory instead of a private array. Measured on
 * lavapipe (4096-token self-attention, 8 heads of 40, same process): 23.6-24.9 -> 27.3-30.7
 * GFLOP/s; a private array indexed by the rolled channel loop goes through per-lane scratch
 * accesses, workgroup memory does not.
 */
function cpuShader(name: 'attention_cpu' | 'attention_probs_cpu', R: number, JB: number, vec: boolean, sg = false, DMAX4 = 40, oWg = false, tex = false): string {
  const fwd = name === 'attention_cpu';
  // Texture bindings follow the buffers: 7-9 (q, k, v) in the forward kernel, 6-7 (q, k) in the probs one.
  const texDecl = tex ? (fwd ? ['qT', 'kT', 'vT'] : ['qT', 'kT']).map((n, i) => `@group(0) @binding(${(fwd ? 7 : 6) + i}) var ${n}: texture_2d_array<f32>;\n`).join('') : '';
  return buildShader(name, {}, {
    R,
    JB,
    ELEM: vec ? 'vec4<f32>' : 'f32',
    LOADERS: loaders(vec, fwd, fwd) + (oWg ? `\nvar<workgroup> ow: array<vec4<f32>, ${8 * R * DMAX4}>;\n` : '') + texDecl,
    BODY: fwd ? cpuForwardBody(R, JB, sg, DMAX4, oWg, tex) : cpuProbsBody(R, JB, sg, tex),
    ENABLE: sg ? 'enable subgroups;' : '',
  }, { unroll: false });
}

/**
 * True when the 'cpu' forward kernel keeps its output rows (8 lanes x R rows x d channels,
 * f32) in workgroup memory for head size d: when they fit the adapter's limit (32 KiB on
 * lavapipe: d <= 128 at R = 8). Larger heads keep the private array.
 */
export function outputRowsInWorkgroup(dev: Device, d: number, R = attentionTuning.cpuFwd.R): boolean {
  if (attentionTuning.outputRowsInWorkgroup === false) return false;
  return 8 * R * Math.ceil(d / 4) * 16 <= dev.limits.maxComputeWorkgroupStorageSize;
}

/** The 'cpu' forward kernel's rows per lane for head size d: cpuFwd.R where its rows fit
 *  workgroup memory, else cpuFwd.wideR; and whether the rows go to workgroup memory. */
export function cpuForwardRows(dev: Device, d: number): { R: number; inWorkgroup: boolean } {
  const { R, wideR } = attentionTuning.cpuFwd;
  if (outputRowsInWorkgroup(dev, d, R)) return { R, inWorkgroup: true };
  return { R: wideR, inWorkgroup: outputRowsInWorkgroup(dev, d, wideR) };
}

/** Whether (B, N, HD) q and (B, Nk, HD) k / v fit (HD / 4, N, B) textures. */
function textureFits(dev: Device, qs: [number, number, number], ks: [number, number, number]): boolean {
  return textureHolds(dev, qs[1], qs[2], qs[0]) && textureHolds(dev, ks[1], ks[2], ks[0]);
}

/** A (B, N, W) tensor (W % 4 == 0) as a (W / 4, N, B) texture (packTexture). */
function packRows(dev: Device, t: Tensor, label: string, family: string): GPUTexture {
  const [B, N, W] = t.shape as [number, number, number];
  return packTexture(dev, { binding: t.binding(), off: 0, rs: W, cs: 1, bs: N * W }, N, W, B, label, family);
}

/** The broadcasts assume one subgroup per workgroup of 8 lanes: lavapipe's subgroups are its
 *  8-wide vectors; a GPU's subgroup size differs and these kernels are not its variant. */
function subgroupsOf8(dev: Device): boolean {
  return dev.features.subgroups && dev.adapter.isFallback;
}

function defaultVariant(dev: Device): AttentionVariant {
  return dev.kind === 'cpu' ? 'cpu' : 'gpu';
}

/**
 * Multi-head scaled dot-product attention.
 * q (B, Nq, H*d), k (B, Nk, H*d), v (B, Nk, H*d) f32 -> (B, Nq, H*d) f32.
 * out[b, i, h*d:(h+1)*d] = softmax_j(scale * q_h[i] . k_h[j]) @ v_h.
 */
export function attention(q: Tensor, k: Tensor, v: Tensor, heads: number, opts: AttentionOptions = {}): Tensor {
  const dev = q.device;
  for (const [name, t] of [['q', q], ['k', k], ['v', v]] as const) {
    if (t.dtype !== 'f32') throw new GpuError(`attention: ${name} must be f32, got dtype ${t.dtype}`);
    if (t.rank !== 3) throw new GpuError(`attention: ${name} must be (B, N, H*d), got ${shapeStr(t.shape)}`);
  }
  const [B, Nq, HD] = q.shape as [number, number, number];
  const [Bk, Nk, HDk] = k.shape as [number, number, number];
  if (Bk !== B || HDk !== HD) throw new GpuError(`attention: q and k differ in batch or width: q ${shapeStr(q.shape)} vs k ${shapeStr(k.shape)}`);
  if (v.shape[0] !== Bk || v.shape[1] !== Nk || v.shape[2] !== HDk) {
    throw new GpuError(`attention: k and v shapes differ: k ${shapeStr(k.shape)} vs v ${shapeStr(v.shape)}`);
  }
  if (!Number.isInteger(heads) || heads < 1 || HD % heads !== 0) {
    throw new GpuError(`attention: width ${HD} of q ${shapeStr(q.shape)} is not divisible by heads = ${heads}`);
  }
  const H = heads;
  const d = HD / H;
  const { keyMask, probsOut } = opts;
  if (keyMask) {
    if (keyMask.dtype !== 'f32') throw new GpuError(`attention: keyMask must be f32, got dtype ${keyMask.dtype}`);
    if (keyMask.rank !== 2 || keyMask.shape[0] !== B || keyMask.shape[1] !== Nk) {
      throw new GpuError(`attention: keyMask ${shapeStr(keyMask.shape)} does not match keys: expected (${B}x${Nk}) for k ${shapeStr(k.shape)}`);
    }
  }
  const sumBatch = Boolean(opts.probsSumBatch);
  if (probsOut) {
    if (probsOut.dtype !== 'f32') throw new GpuError(`attention: probsOut must be f32, got dtype ${probsOut.dtype}`);
    const s = probsOut.shape;
    const ok3 = s.length === 3 && s[0] === B && s[1] === Nq && s[2] === Nk && (!sumBatch || B === 1);
    const ok2 = s.length === 2 && s[0] === Nq && s[1] === Nk && (B === 1 || sumBatch);
    if (!ok3 && !ok2) {
      const want = sumBatch ? `(${Nq}x${Nk})` : `(${B}x${Nq}x${Nk})${B === 1 ? ` or (${Nq}x${Nk})` : ''}`;
      throw new GpuError(`attention: probsOut ${shapeStr(s)} does not match q ${shapeStr(q.shape)} and k ${shapeStr(k.shape)}: expected ${want}${sumBatch ? ' with probsSumBatch' : ''}`);
    }
  }
  const scale = opts.scale ?? 1 / Math.sqrt(d);
  const causal = Boolean(opts.causal);
  const variant = opts.variant ?? defaultVariant(dev);
  if (!VARIANTS.includes(variant)) throw new GpuError(`attention: unknown variant "${variant}" (have ${VARIANTS.join(', ')})`);

  const out = Tensor.empty(dev, [B, Nq, HD], 'f32', 'attention out');
  if (B * Nq * HD === 0) return out;
  const label = `attention q${shapeStr(q.shape)} k${shapeStr(k.shape)} H${H}`;
  const maskBinding = keyMask ? keyMask.binding() : q.binding();
  const stats = probsOut ? Tensor.empty(dev, [B, H, Nq, 2], 'f32', 'attention stats') : Tensor.empty(dev, [1], 'f32', 'attention stats (unused)');
  let packed: GPUTexture[] | undefined; // q, k, v textures of the 'cpu' forward kernel
  try {
    const scale2 = scale * LOG2E;
    const uni = (nx: number, nRG: number) =>
      uniforms([
        ['u', B], ['u', Nq], ['u', Nk], ['u', H],
        ['u', d], ['u', HD], ['u', causal ? 1 : 0], ['u', keyMask ? 1 : 0],
        ['u', probsOut ? 1 : 0], ['u', nx], ['u', nRG], ['f', scale2],
      ]);
    const bindings = [q.binding(), k.binding(), v.binding(), maskBinding, out.binding(), stats.binding()];
    // The 'gpu' kernels: workgroups of `rows` query rows, uniforms plus d4 and the keys per tile.
    const dispatchGpu = (pipeline: GPUComputePipeline, rows: number, d4: number, TK: number): void => {
      const nRG = Math.ceil(Nq / rows);
      const wg = grid1d(B * H * nRG);
      const u = new Uint32Array(16);
      u.set(new Uint32Array(uni(wg[0], nRG)).subarray(0, 12));
      u[12] = d4;
      u[13] = TK;
      dev.dispatch({ label, family: 'attention', pipeline, uniforms: u, bindings, workgroups: wg });
    };
    // Head sizes above the 'cpu' kernel's private rows (none in SD / CLIP) take the naive kernel.
    if (variant === 'naive' || Nk === 0) {
      const pipe = dev.pipeline('attention_naive', () => loadShader('attention_naive'));
      const wg = grid1d(Math.ceil((B * H * Nq) / 64));
      dev.dispatch({ label, family: 'attention', pipeline: pipe, uniforms: uni(wg[0], 0), bindings, workgroups: wg });
    } else if (variant === 'cpu') {
      const { JB } = attentionTuning.cpuFwd;
      const vec = d % 4 === 0;
      const sg = attentionTuning.subgroups && subgroupsOf8(dev) && JB % 8 === 0;
      const { R: R0, inWorkgroup: oWg } = cpuForwardRows(dev, d);
      // With the rows in workgroup memory the pipeline is made for d's own vec4 count.
      const dm = oWg ? Math.ceil(d / 4) : dmax4(d);
      // NVIDIA's compiler refuses the 16 KiB of private rows of R = 8 at d = 512 ("failed to
      // validate local memory"; 5 KiB at d <= 160 compiles): on GPU adapters, where this
      // variant only runs when asked for, keep R x dmax within 320 vec4.
      const R = dev.kind === 'cpu' || oWg ? R0 : Math.max(1, Math.min(R0, Math.floor(320 / dm)));
      const tex = vec && attentionTuning.cpuTextures && textureFits(dev, [B, Nq, HD], [B, Nk, HD]);
      const pipe = dev.pipeline(`attention_cpu R${R} JB${JB} ${vec ? 'vec4' : 'f32'}${sg ? ' sg' : ''} ${oWg ? 'wg' : 'dmax'}${dm}${tex ? ' tex' : ''}`, () => cpuShader('attention_cpu', R, JB, vec, sg, dm, oWg, tex));
      const nRG = Math.ceil(Nq / (8 * R));
      const wg = grid1d(B * H * nRG);
      if (tex) {
        // q, k and v copied into (HD / 4, N, B) textures: textureLoad fetches the 8 lanes'
        // texels at once where a buffer load loops over the lanes (docs/KERNELS.md). The
        // probs pass below reuses q's and k's.
        packed = [q, k, v].map((t) => packRows(dev, t, `${label} pack`, 'attention'));
        const views = packed.map(textureBinding);
        dev.dispatch({ label, family: 'attention', pipeline: pipe, uniforms: uni(wg[0], nRG), bindings: [null, null, null, maskBinding, out.binding(), stats.binding(), ...views], workgroups: wg });
      } else {
        dev.dispatch({ label, family: 'attention', pipeline: pipe, uniforms: uni(wg[0], nRG), bindings, workgroups: wg });
      }
    } else if (wideByGemm(d, causal, Boolean(keyMask), Boolean(probsOut))) {
      attentionByGemm(dev, { q, k, v, out, B, Nq, Nk, H, d, HD, scale, label });
    } else if (attentionTuning.gpuKernel === 'v2') {
      const { R, WG, tileBytes, unrollMaxD4 } = attentionTuning.gpuV2;
      const D4 = Math.ceil(d / 4);
      const budget = Math.min(tileBytes, dev.limits.maxComputeWorkgroupStorageSize);
      if (!Number.isInteger(R) || R < 1 || !Number.isInteger(WG) || WG < 1 || WG > dev.limits.maxComputeInvocationsPerWorkgroup) {
        throw new GpuError(`attention: attentionTuning.gpuV2 needs integer R >= 1 and 1 <= WG <= ${dev.limits.maxComputeInvocationsPerWorkgroup}, got R ${R}, WG ${WG}`);
      }
      // A K + V tile of KB keys takes 32 * D4 * KB bytes: halve KB until one group fits.
      let KB = attentionTuning.gpuV2.KB;
      while (KB > 1 && 32 * D4 * KB > budget) KB = Math.floor(KB / 2);
      if (32 * D4 * KB > budget) throw new GpuError(`attention: head size ${d} needs ${32 * D4} bytes of workgroup memory per key, over the budget of ${budget}`);
      // Keys per tile: as many groups as the budget holds, at most 256 keys.
      const TK = KB * Math.max(1, Math.min(Math.floor(256 / KB), Math.floor(budget / (32 * D4 * KB))));
      const vec = d % 4 === 0;
      // lavapipe's LLVM takes minutes over a long written-out body (d 160 at R 2, KB 8: 360 s
      // against 2.5 s for the loops), so there only small bodies are written out, and the
      // loops left are bounded by uniforms (p.d4, p.TK): with constant trip counts LLVM
      // unrolls them itself (d 64: 100 s -> 4 s to compile). lavapipe runs this kernel only
      // in tests; a GPU compiler gets the constants.
      const unroll = D4 <= unrollMaxD4 && (!dev.adapter.isFallback || D4 * R * KB <= 40);
      const key = `attention_gpu2 D4${D4} R${R} WG${WG} KB${KB} TK${TK} ${vec ? 'vec4' : 'f32'} ${unroll ? 'unrolled' : 'loops'}`;
      const pipe = dev.pipeline(key, () =>
        buildShader('attention_gpu2', {}, {
          ELEM: vec ? 'vec4<f32>' : 'f32',
          LOADERS: loaders(vec, true, true),
          WG, R, D4, KB, TK,
          BODY: gpu2Body(R, KB, D4, unroll, dev.adapter.isFallback),
        }, { unroll: false }));
      dispatchGpu(pipe, WG * R, D4, TK);
    } else {
      // Keys per shared tile: 512 vec4 per tile (8 KiB each for K and V), at most 128.
      const d4 = Math.ceil(d / 4);
      const TK = Math.min(128, Math.floor(512 / d4));
      const dm = dmax4(d);
      const pipe = dev.pipeline(`attention_gpu dmax${dm}`, () => buildShader('attention_gpu', {}, { DMAX4: dm, ELEM: 'f32' }, { unroll: false }));
      dispatchGpu(pipe, 64, d4, TK);
    }
    if (probsOut) accumulateProbs(dev, q, k, maskBinding, stats, probsOut, { B, Nq, Nk, H, d, HD, causal, hasMask: Boolean(keyMask), sumBatch, scale2, variant }, packed);
  } finally {
    stats.release();
    for (const t of packed ?? []) dev.freeTexture(t);
  }
  return out;
}

interface ProbsArgs {
  B: number; Nq: number; Nk: number; H: number; d: number; HD: number;
  causal: boolean; hasMask: boolean; sumBatch: boolean; scale2: number; variant: AttentionVariant;
}

/** Adds the head-mean probabilities into probsOut, binding it in windows of whole planes
 *  when it exceeds the storage binding limit. */
function accumulateProbs(dev: Device, q: Tensor, k: Tensor, maskBinding: ReturnType<Tensor['binding']>, stats: Tensor, probsOut: Tensor, a: ProbsArgs, packed?: GPUTexture[]): void {
  const planes = probsOut.rank === 3 ? probsOut.shape[0]! : 1;
  const planeBytes = a.Nq * a.Nk * 4;
  const limit = Math.min(dev.limits.maxStorageBufferBindingSize, attentionTuning.maxBindingBytes ?? Infinity);
  let perDispatch = planes;
  if (planes * planeBytes > limit) {
    if (planeBytes > limit || planeBytes % 256 !== 0) {
      throw new GpuError(`attention: probsOut ${shapeStr(probsOut.shape)} exceeds the storage binding limit (${limit} bytes) and its (Nq, Nk) planes cannot be bound as aligned windows`);
    }
    perDispatch = Math.floor(limit / planeBytes);
  }
  const label = `attention probs ${shapeStr(probsOut.shape)} H${a.H}`;
  // The 'gpu' variant's own kernel, or (attentionTuning.gpuProbs off) lavapipe's as before.
  const useGpu = a.variant === 'gpu' && attentionTuning.gpuProbs;
  const useCpu = a.variant === 'cpu' || (a.variant === 'gpu' && !useGpu);
  const { R, JB } = attentionTuning.cpuProbs;
  const sg = attentionTuning.subgroups && subgroupsOf8(dev) && R % 8 === 0;
  const vec = a.d % 4 === 0;
  const tex = useCpu && vec && attentionTuning.cpuTextures && textureFits(dev, [a.B, a.Nq, a.HD], [a.B, a.Nk, a.HD]);
  const pipe = useGpu
    ? dev.pipeline('attention_probs_gpu', () => buildShader('attention_probs_gpu', {}, { ELEM: 'f32' }, { unroll: false }))
    : useCpu
      ? dev.pipeline(`attention_probs_cpu R${R} JB${JB} ${vec ? 'vec4' : 'f32'}${sg ? ' sg' : ''}${tex ? ' tex' : ''}`, () => cpuShader('attention_probs_cpu', R, JB, vec, sg, 40, false, tex))
      : dev.pipeline('attention_probs_naive', () => loadShader('attention_probs_naive'));
  // q and k as (HD / 4, N, B) textures: the forward kernel's when it packed them.
  const own = tex && !packed;
  const texs = !tex ? [] : packed ? packed.slice(0, 2) : [q, k].map((t) => packRows(dev, t, `${label} pack`, 'attention'));
  try {
    const views = texs.map(textureBinding);
    for (let p0 = 0; p0 < planes; p0 += perDispatch) {
      const n = Math.min(perDispatch, planes - p0);
      // Tiles of R rows x 8 JB keys (cpu), 64 x 64 (gpu); the naive kernel takes one element each.
      const nRB = Math.ceil(a.Nq / (useGpu ? 64 : R));
      const nKB = Math.ceil(a.Nk / (useGpu ? 64 : 8 * JB));
      const wg = useGpu || useCpu ? grid1d(n * nRB * nKB) : grid1d(Math.ceil((n * a.Nq * a.Nk) / 64));
      const u = uniforms([
        ['u', a.B], ['u', a.Nq], ['u', a.Nk], ['u', a.H],
        ['u', a.d], ['u', a.HD], ['u', a.causal ? 1 : 0], ['u', a.hasMask ? 1 : 0],
        ['u', a.sumBatch ? 1 : 0], ['u', wg[0]], ['u', p0], ['u', n],
        ['f', a.scale2], ['f', 1 / a.H], ['u', nRB], ['u', nKB],
      ]);
      dev.dispatch({
        label,
        family: 'attention',
        pipeline: pipe,
        uniforms: u,
        bindings: views.length
          ? [null, null, maskBinding, stats.binding(), probsOut.window(p0 * planeBytes, n * planeBytes), ...views]
          : [q.binding(), k.binding(), maskBinding, stats.binding(), probsOut.window(p0 * planeBytes, n * planeBytes)],
        workgroups: wg,
      });
    }
  } finally {
    if (own) for (const t of texs) dev.freeTexture(t);
  }
}
