// Spatial resizing of (B, C, H, W) tensors: nearest 2x (UNet / VAE upsamplers) and torch's
// bilinear interpolate (align_corners=False), both windowed for tensors above the binding
// limit.
import { Device, GpuError, Tensor, fillTemplate, grid1d, loadShader, shapeStr, uniforms } from '../tensor/index.js';
import { planChunks } from './elementwise.js';

function wg(dev: Device): number {
  return dev.kind === 'cpu' ? 64 : 256;
}

function need4d(op: string, x: Tensor): [number, number, number, number] {
  if (x.rank !== 4) throw new GpuError(`${op}: x must be (B, C, H, W), got ${shapeStr(x.shape)}`);
  if (x.dtype !== 'f32') throw new GpuError(`${op}: dtype ${x.dtype} is not supported (f32 only)`);
  return x.shape as unknown as [number, number, number, number];
}

/** 'naive': one input element, four scalar stores per invocation; 'vec': two input
 *  elements, two vec4 stores (needs W even). */
export type ResizeVariant = 'naive' | 'vec';

/** Names of the upsampleNearest2x variants (for `doctor` and tests). */
export function resizeVariants(): ResizeVariant[] {
  return ['naive', 'vec'];
}

/** Nearest-neighbour 2x upsampling: (B, C, H, W) -> (B, C, 2H, 2W). */
export function upsampleNearest2x(x: Tensor, opts: { variant?: ResizeVariant } = {}): Tensor {
  const [b, c, h, w] = need4d('upsampleNearest2x', x);
  const dev = x.device;
  const out = Tensor.empty(dev, [b, c, 2 * h, 2 * w], 'f32');
  if (out.numel === 0) return out;
  const rows = b * c * h;
  const size = wg(dev);
  const vec = opts.variant !== 'naive' && w % 2 === 0;
  const label = `upsampleNearest2x ${shapeStr(x.shape)}`;
  if (vec) {
    // Domain (rows, W/2 pairs); output offsets stay multiples of 4 elements.
    const pipeline = dev.pipeline(`resize/nearest2x-vec/${size}`, () => fillTemplate(loadShader('resize_nearest_vec'), { WG: size }));
    const chunks = planChunks(label, dev, [rows, w / 2], [
      { tensor: x, strides: [w, 2], extra: 1 },
      { tensor: out, strides: [4 * w, 4], extra: 2 * w + 3 },
    ]);
    for (const ch of chunks) {
      const [nx, ny] = grid1d(Math.ceil(ch.numel / size));
      const u = uniforms([
        ['u', ch.numel], ['u', ch.dims[1]!], ['u', nx], ['u', ch.bases[0]!],
        ['u', ch.bases[1]! / 4], ['u', w], ['u', w], ['u', w / 2],
      ]);
      dev.dispatch({ label, family: 'resize', pipeline, uniforms: u, bindings: ch.windows, workgroups: [nx, ny] });
    }
    return out;
  }
  const pipeline = dev.pipeline(`resize/nearest2x/${size}`, () => fillTemplate(loadShader('resize_nearest'), { WG: size }));
  const chunks = planChunks(label, dev, [rows, w], [
    { tensor: x, strides: [w, 1] },
    { tensor: out, strides: [4 * w, 2], extra: 2 * w + 1 },
  ]);
  for (const ch of chunks) {
    const [nx, ny] = grid1d(Math.ceil(ch.numel / size));
    const u = uniforms([
      ['u', ch.numel], ['u', ch.dims[1]!], ['u', nx], ['u', ch.bases[0]!],
      ['u', ch.bases[1]!], ['u', w], ['u', 4 * w], ['u', 2 * w],
    ]);
    dev.dispatch({ label, family: 'resize', pipeline, uniforms: u, bindings: ch.windows, workgroups: [nx, ny] });
  }
  return out;
}

/**
 * torch.nn.functional.interpolate(x, size=(outH, outW), mode='bilinear',
 * align_corners=False, antialias=False), up or down: (B, C, H, W) -> (B, C, outH, outW).
 */
export function resizeBilinear(x: Tensor, outH: number, outW: number): Tensor {
  const [b, c, h, w] = need4d('resizeBilinear', x);
  if (!(Number.isInteger(outH) && Number.isInteger(outW) && outH > 0 && outW > 0)) {
    throw new GpuError(`resizeBilinear: output size ${outH}x${outW} must be positive integers`);
  }
  const dev = x.device;
  const out = Tensor.empty(dev, [b, c, outH, outW], 'f32');
  if (out.numel === 0 || x.numel === 0) return out;
  const size = wg(dev);
  const pipeline = dev.pipeline(`resize/bilinear/${size}`, () => fillTemplate(loadShader('resize_bilinear'), { WG: size }));
  const label = `resizeBilinear ${shapeStr(x.shape)}->${outH}x${outW}`;
  // ATen computes scale = in / out in the op's float type (area_pixel_compute_scale).
  const sh = Math.fround(h / outH);
  const sw = Math.fround(w / outW);
  const chunks = planChunks(label, dev, [b * c, outH, outW], [
    { tensor: x, strides: [h * w, 0, 0], extra: h * w - 1 },
    { tensor: out, strides: [outH * outW, outW, 1] },
  ]);
  for (const ch of chunks) {
    const [nx, ny] = grid1d(Math.ceil(ch.numel / size));
    const u = uniforms([
      ['u', ch.numel], ['u', nx], ['u', ch.bases[0]!], ['u', ch.bases[1]!],
      ['u', h], ['u', w], ['u', ch.dims[1]!], ['u', ch.dims[2]!],
      ['u', ch.starts[1]!], ['u', ch.starts[2]!], ['u', outH], ['u', outW],
      ['f', sh], ['f', sw], ['u', 0], ['u', 0],
    ]);
    dev.dispatch({ label, family: 'resize', pipeline, uniforms: u, bindings: ch.windows, workgroups: [nx, ny] });
  }
  return out;
}
