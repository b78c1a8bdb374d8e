// 2-D convolution, NCHW: out = act(conv(x, w) + bias) + residual.
// shaders/conv_naive.wgsl: one output element per invocation (the reference variant).
// Tensors above the storage-binding limit are processed per batch item in windows over
// output channels, and over input channels with accumulation into the output.
import { GpuError, Tensor, fillTemplate, grid1d, loadShader, shapeStr, uniforms, type Binding, type Device } from '../tensor/index.js';
import { bindingAlign, dummy, maxBindingBytes } from './matmul.js';

export type ConvVariant = 'naive';

export interface Conv2dOptions {
  /** (Co) */
  bias?: Tensor;
  stride?: number;
  /** Symmetric zero padding, or [top, bottom, left, right]. */
  padding?: number | readonly [number, number, number, number];
  /** (B, Co, Ho, Wo), added after the activation. */
  residual?: Tensor;
  act?: 'none' | 'silu';
  variant?: ConvVariant;
}

export function convVariants(): string[] {
  return ['naive'];
}

function pipelineFor(dev: Device, f16: boolean): GPUComputePipeline {
  return dev.pipeline(`conv_naive_${f16 ? 'f16' : 'f32'}`, () =>
    fillTemplate(loadShader('conv_naive'), {
      WTYPE: f16 ? 'u32' : 'f32',
      WREAD: f16 ? '  return unpack2x16float(w[i >> 1u])[i & 1u];' : '  return w[i];',
    }),
  );
}

/** A window of `bytes` bytes at byte `start` of t, aligned down; returns binding + element base. */
function windowOf(dev: Device, t: Tensor, start: number, bytes: number): { binding: Binding; base: number } {
  const align = bindingAlign(dev);
  const a = Math.floor(start / align) * align;
  const size = Math.min(t.buffer.size - a, Math.ceil((start - a + bytes) / 4) * 4);
  return { binding: { buffer: t.buffer, offset: a, size: Math.max(4, size) }, base: (start - a) / 4 };
}

/** x (B, Ci, H, W), w (Co, Ci, kh, kw) f32 or f16 -> (B, Co, Ho, Wo). */
export function conv2d(x: Tensor, w: Tensor, opts: Conv2dOptions = {}): Tensor {
  const dev = x.device;
  if (x.rank !== 4 || w.rank !== 4) throw new GpuError(`conv2d: expected x (B, Ci, H, W) and w (Co, Ci, kh, kw), got x ${shapeStr(x.shape)} and w ${shapeStr(w.shape)}`);
  const [B, Ci, H, W] = x.shape as [number, number, number, number];
  const [Co, Ciw, kh, kw] = w.shape as [number, number, number, number];
  if (Ci !== Ciw) throw new GpuError(`conv2d: input channels differ: x ${shapeStr(x.shape)} has ${Ci}, w ${shapeStr(w.shape)} expects ${Ciw}`);
  if (x.dtype !== 'f32') throw new GpuError(`conv2d: input dtype ${x.dtype} is not supported (f32 activations; weights may be f16)`);
  const stride = opts.stride ?? 1;
  const pad = opts.padding ?? 0;
  const [pt, pb, pl, pr] = typeof pad === 'number' ? [pad, pad, pad, pad] : pad;
  const Ho = Math.floor((H + pt + pb - kh) / stride) + 1;
  const Wo = Math.floor((W + pl + pr - kw) / stride) + 1;
  if (Ho <= 0 || Wo <= 0) throw new GpuError(`conv2d: output would be empty for x ${shapeStr(x.shape)}, kernel ${kh}x${kw}, stride ${stride}, padding ${pad}`);
  if (pb !== pt && Ho !== Math.floor((H + pt + pb - kh) / stride) + 1) throw new GpuError('conv2d: bad padding');
  if (opts.bias && (opts.bias.rank !== 1 || opts.bias.shape[0] !== Co)) throw new GpuError(`conv2d: bias ${shapeStr(opts.bias.shape)} must be (${Co})`);
  const outShape = [B, Co, Ho, Wo];
  const r = opts.residual;
  if (r && r.shape.join() !== outShape.join()) throw new GpuError(`conv2d: residual ${shapeStr(r.shape)} must match the output ${shapeStr(outShape)}`);
  const out = Tensor.empty(dev, outShape, 'f32', 'conv2d out');
  const pipe = pipelineFor(dev, w.dtype === 'f16');
  const limit = maxBindingBytes(dev) - 2 * bindingAlign(dev);
  const label = `conv2d x${shapeStr(x.shape)} w${shapeStr(w.shape)}`;
  const d = dummy(dev).binding();
  const HW = H * W;
  const HWo = Ho * Wo;
  const fits = x.byteSize <= limit && out.byteSize <= limit;
  const flagsBase = (opts.act === 'silu' ? 8 : 0) | 0;
  const run = (b0: number, nb: number, ci0: number, ciN: number, co0: number, coN: number): void => {
    const xw = windowOf(dev, x, (b0 * Ci * HW + ci0 * HW) * 4, ((nb - 1) * Ci * HW + ciN * HW) * 4);
    const ow = windowOf(dev, out, (b0 * Co * HWo + co0 * HWo) * 4, ((nb - 1) * Co * HWo + coN * HWo) * 4);
    const rw = r ? windowOf(dev, r, (b0 * Co * HWo + co0 * HWo) * 4, ((nb - 1) * Co * HWo + coN * HWo) * 4) : { binding: d, base: 0 };
    const first = ci0 === 0;
    const flags = flagsBase | (first && opts.bias ? 1 : 0) | (first && r ? 2 : 0) | (first ? 0 : 4);
    if (!first && opts.act === 'silu') throw new GpuError(`${label}: a fused activation cannot be split over input channels`);
    const total = nb * coN * HWo;
    const [gx, gy] = grid1d(Math.ceil(total / 64));
    dev.dispatch({
      label,
      family: 'conv2d',
      pipeline: pipe,
      uniforms: uniforms([
        ['u', nb], ['u', Ci], ['u', H], ['u', W],
        ['u', Co], ['u', Ho], ['u', Wo], ['u', kh],
        ['u', kw], ['u', stride], ['u', pl], ['u', ci0],
        ['u', ciN], ['u', co0], ['u', coN], ['u', flags],
        ['u', xw.base], ['u', ow.base], ['u', rw.base], ['u', gx],
        ['u', Ci * HW], ['u', Co * HWo], ['u', total], ['u', pt],
      ]),
      bindings: [xw.binding, w.binding(), opts.bias ? opts.bias.binding() : d, rw.binding, ow.binding],
      workgroups: [gx, gy],
    });
  };
  if (fits) {
    run(0, B, 0, Ci, 0, Co);
    return out;
  }
  const ciChunk = Math.max(1, Math.min(Ci, Math.floor(limit / (HW * 4))));
  const coChunk = Math.max(1, Math.min(Co, Math.floor(limit / (HWo * 4))));
  if (ciChunk * HW * 4 > limit || coChunk * HWo * 4 > limit) throw new GpuError(`${label}: one channel plane exceeds the storage-binding limit`);
  for (let b = 0; b < B; b++) {
    for (let co0 = 0; co0 < Co; co0 += coChunk) {
      const coN = Math.min(coChunk, Co - co0);
      for (let ci0 = 0; ci0 < Ci; ci0 += ciChunk) run(b, 1, ci0, Math.min(ciChunk, Ci - ci0), co0, coN);
    }
  }
  return out;
}
