// CLIP text encoder vs transformers (golden text_encoder references of both pipelines).
import { describe, expect, it } from 'vitest';
import { ClipTextModel } from '../src/models/clip.js';
import { getDevice } from './helpers/gpu.js';
import { PIPELINES, golden, relErr } from './helpers/golden.js';

describe.each(Object.entries(PIPELINES))('CLIP text encoder %s', (_, p) => {
  it('matches last_hidden_state, every hidden state and pooler_output (1e-4 relative)', async () => {
    const dev = await getDevice();
    const ref = golden(`${p.refs}/text_encoder.safetensors`);
    const ids = ref.readI64('input_ids');
    const B = ref.info('input_ids').shape[0]!;
    const rows = Array.from({ length: B }, (_, b) => ids.slice(b * 77, (b + 1) * 77));
    const model = await ClipTextModel.load(dev, `${p.dir}/text_encoder`);
    const out = model.forward(rows, { hiddenStates: true });
    expect(relErr(await out.lastHiddenState.toArray(), ref.readF32('last_hidden_state'))).toBeLessThan(1e-4);
    expect(relErr(await out.pooled.toArray(), ref.readF32('pooler_output'))).toBeLessThan(1e-4);
    for (let i = 0; i < out.hiddenStates!.length; i++) {
      expect(relErr(await out.hiddenStates![i]!.toArray(), ref.readF32(`hidden_states.${i}`)), `hidden_states.${i}`).toBeLessThan(1e-4);
    }
  });
});
