// The attention store of the method: per attention layer of the UNet, in forward call
// order, the head-mean softmax probabilities, summed on the GPU over every call until
// reset. The attention kernel adds into these buffers directly, so no per-head map exists.
import { Tensor, keep, type Device } from '../tensor/index.js';

export interface StoredLayer {
  /** Module name, e.g. "down_blocks.0.attentions.1.transformer_blocks.0.attn1". */
  name: string;
  kind: 'self' | 'cross';
  /** Grid (h, w) of the layer's queries. */
  h: number;
  w: number;
  /** Summed head-mean probabilities: (Nq, Nk), or (B, Nq, Nk) when perBatch. */
  sum: Tensor;
}

export class AttentionStore {
  readonly self: StoredLayer[] = [];
  readonly cross: StoredLayer[] = [];
  /** Number of UNet calls (or batch items, when the batch is summed) accumulated. */
  steps = 0;
  private selfCursor = 0;
  private crossCursor = 0;

  /**
   * perBatch: keep one map per batch item (B, Nq, Nk), as the golden UNet references do;
   * otherwise all batch items of all calls are summed into one (Nq, Nk) map per layer.
   */
  constructor(
    readonly dev: Device,
    readonly perBatch = false,
  ) {}

  /** Called by the UNet at the start of each forward. */
  beginForward(batch: number): void {
    this.selfCursor = 0;
    this.crossCursor = 0;
    this.steps += this.perBatch ? 1 : batch;
  }

  /** The accumulation buffer of the next layer of `kind` (created zeroed on first use). */
  next(kind: 'self' | 'cross', name: string, h: number, w: number, batch: number, nk: number): Tensor {
    const list = kind === 'self' ? this.self : this.cross;
    const i = kind === 'self' ? this.selfCursor++ : this.crossCursor++;
    const shape = this.perBatch ? [batch, h * w, nk] : [h * w, nk];
    let layer = list[i];
    if (!layer) {
      layer = { name, kind, h, w, sum: keep(Tensor.zeros(this.dev, shape)) };
      list.push(layer);
    } else if (layer.h !== h || layer.w !== w || layer.sum.shape.join() !== shape.join()) {
      throw new Error(`attention store: layer ${i} (${name}) changed shape between calls: ${layer.sum.shape.join('x')} vs ${shape.join('x')}`);
    }
    return layer.sum;
  }

  /** Frees the maps and starts over. */
  reset(): void {
    for (const l of [...this.self, ...this.cross]) l.sum.release();
    this.self.length = 0;
    this.cross.length = 0;
    this.steps = 0;
  }
}
