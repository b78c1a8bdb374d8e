// The transformer layer shared by CLIP's text and vision towers (transformers'
// CLIPEncoderLayer): pre-LN self-attention and MLP, each with a residual.
import { attention, layerNorm, linear } from '../kernels/index.js';
import type { Tensor } from '../tensor/index.js';
import type { WeightSource } from './weights.js';

export interface ClipLN {
  weight: Tensor;
  bias: Tensor;
}
export interface ClipLin {
  weight: Tensor;
  bias?: Tensor;
}
export interface ClipEncoderLayer {
  ln1: ClipLN;
  ln2: ClipLN;
  q: ClipLin;
  k: ClipLin;
  v: ClipLin;
  o: ClipLin;
  fc1: ClipLin;
  fc2: ClipLin;
}

/** A LayerNorm's weight and bias (H). */
export function loadLayerNorm(w: WeightSource, name: string, H: number): ClipLN {
  return { weight: w.load(`${name}.weight`, [H]), bias: w.load(`${name}.bias`, [H]) };
}

/** `${prefix}encoder.layers.{0..n-1}` with hidden size H and MLP width F. */
export function loadClipEncoderLayers(w: WeightSource, prefix: string, n: number, H: number, F: number): ClipEncoderLayer[] {
  const lin = (name: string, out: number, inp: number): ClipLin => ({ weight: w.load(`${name}.weight`, [out, inp], 'matrix'), bias: w.load(`${name}.bias`, [out]) });
  const layers: ClipEncoderLayer[] = [];
  for (let i = 0; i < n; i++) {
    const p = `${prefix}encoder.layers.${i}`;
    layers.push({
      ln1: loadLayerNorm(w, `${p}.layer_norm1`, H),
      ln2: loadLayerNorm(w, `${p}.layer_norm2`, H),
      q: lin(`${p}.self_attn.q_proj`, H, H),
      k: lin(`${p}.self_attn.k_proj`, H, H),
      v: lin(`${p}.self_attn.v_proj`, H, H),
      o: lin(`${p}.self_attn.out_proj`, H, H),
      fc1: lin(`${p}.mlp.fc1`, F, H),
      fc2: lin(`${p}.mlp.fc2`, H, F),
    });
  }
  return layers;
}

/** One layer on x (B, N, H): x + attn(ln1(x)), then + mlp(ln2(.)). */
export function clipEncoderLayer(
  x: Tensor,
  l: ClipEncoderLayer,
  heads: number,
  eps: number,
  act: 'quick_gelu' | 'gelu',
  opts: { causal?: boolean; keyMask?: Tensor } = {},
): Tensor {
  const h = layerNorm(x, l.ln1.weight, l.ln1.bias, eps);
  const a = attention(linear(h, l.q.weight, l.q.bias), linear(h, l.k.weight, l.k.bias), linear(h, l.v.weight, l.v.bias), heads, opts);
  const y = linear(a, l.o.weight, l.o.bias, { residual: x });
  const h2 = layerNorm(y, l.ln2.weight, l.ln2.bias, eps);
  const m = linear(h2, l.fc1.weight, l.fc1.bias, { act });
  return linear(m, l.fc2.weight, l.fc2.bias, { residual: y });
}
