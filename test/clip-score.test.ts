// CLIP score: CLIPImageProcessor, CLIPModel (both towers, projections, logits) and the
// clip-score command vs the golden clip-tiny references (transformers 4.51.3 +
// evaluate_generation.py).
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readImageRGB } from '../src/io/image.js';
import {
  clipCropOffset,
  clipResize,
  loadClipImageProcessorConfig,
  parseClipImageProcessorConfig,
  preprocessForClip,
} from '../src/elbo/clipPreprocess.js';
import { ClipModel, parseClipModelConfig } from '../src/models/clipModel.js';
import { readJsonConfig } from '../src/io/modelFolder.js';
import {
  averageClipScore,
  numpyPairwiseSumF32,
  promptIndexOf,
  pyFloatRepr,
  readPromptsFile,
  runClipScore,
} from '../src/commands/clipScore.js';
import { getDevice, maxAbsDiff } from './helpers/gpu.js';
import { golden, relErr } from './helpers/golden.js';

const CLIP = 'test/fixtures/clip-tiny';
const REFS = `${CLIP}/references`;

interface PreprocessCase {
  image: string;
  resized_wh: [number, number];
  resized_png: string;
  crop_top_left: [number, number];
  tensor: string;
}
interface ScoreCall {
  call: number;
  file: string;
  image: string;
  prompt_index: number;
  prompt: string;
  logits_per_image: number;
}
const preprocessJson = JSON.parse(readFileSync(`${REFS}/preprocess.json`, 'utf8')) as { cases: PreprocessCase[] };
const clipJson = JSON.parse(readFileSync(`${REFS}/clip.json`, 'utf8')) as { prompts: string[]; images: string[] };
const scoreJson = JSON.parse(readFileSync(`${REFS}/clip_score.json`, 'utf8')) as { prompts: string[]; calls: ScoreCall[]; evaluate_generation_json: string };

async function run(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const log = vi.spyOn(console, 'log').mockImplementation((...a: unknown[]) => void out.push(a.join(' ')));
  const error = vi.spyOn(console, 'error').mockImplementation((...a: unknown[]) => void err.push(a.join(' ')));
  try {
    const code = await runClipScore(argv);
    return { code, out: out.join('\n'), err: err.join('\n') };
  } finally {
    log.mockRestore();
    error.mockRestore();
  }
}

describe('CLIPImageProcessor (preprocess.safetensors)', () => {
  const cfg = loadClipImageProcessorConfig(CLIP);
  it.each(preprocessJson.cases.map((c, i) => [i, c] as const))('case %i: PIL bicubic resize, floor crop offset, pixel_values', async (_, c) => {
    const img = await readImageRGB(join(REFS, c.image));
    const resized = clipResize(img, cfg);
    expect([resized.width, resized.height]).toEqual(c.resized_wh);
    const png = await readImageRGB(join(REFS, c.resized_png));
    expect(maxAbsDiff(resized.data, png.data)).toBe(0);
    const o = clipCropOffset(resized.width, resized.height, 32, 32);
    expect([o.top, o.left]).toEqual(c.crop_top_left);
    const got = preprocessForClip(img, cfg);
    const want = golden(`${REFS}/preprocess.safetensors`).readF32(c.tensor);
    expect(maxAbsDiff(got, want)).toBeLessThanOrEqual(1e-6);
  });

  it('reads old int sizes and new dict sizes; pads when the crop is larger', () => {
    const a = parseClipImageProcessorConfig({ size: 32, crop_size: 32, resample: 3 }, 'a');
    expect(a.size).toEqual({ shortestEdge: 32 });
    expect([a.cropHeight, a.cropWidth]).toEqual([32, 32]);
    const b = parseClipImageProcessorConfig({ size: { shortest_edge: 224 }, crop_size: { height: 224, width: 224 } }, 'b');
    expect(b.size).toEqual({ shortestEdge: 224 });
    expect(() => parseClipImageProcessorConfig({ size: 'big' }, 'x.json')).toThrow(/x\.json: "size"/);
    expect(() => parseClipImageProcessorConfig({ resample: 1 }, 'x.json')).toThrow(/resample/);
    // Exact-size resize to 4x2, then a 4x4 crop: transformers pads one row of zeros above and below.
    const c = parseClipImageProcessorConfig({ size: { height: 2, width: 4 }, crop_size: 4, do_normalize: false }, 'c');
    const img = { width: 4, height: 2, data: new Uint8Array(4 * 2 * 3).fill(255) };
    const out = preprocessForClip(img, c);
    expect(out.length).toBe(3 * 16);
    expect(Array.from(out.subarray(0, 16))).toEqual([0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0]);
  });
});

describe('CLIPModel config', () => {
  it('parses the nested clip-tiny config, ignoring generic keys; vision num_channels defaults to 3', () => {
    const c = parseClipModelConfig(readJsonConfig(`${CLIP}/config.json`), 'config.json');
    expect(c.projectionDim).toBe(24);
    expect(c.text).toMatchObject({ hiddenSize: 32, numLayers: 2, numHeads: 4, intermediateSize: 128, hiddenAct: 'quick_gelu', eosTokenId: 2, projectionDim: 24 });
    expect(c.vision).toMatchObject({ hiddenSize: 32, numLayers: 2, numHeads: 2, intermediateSize: 128, imageSize: 32, patchSize: 8, numChannels: 3, hiddenAct: 'quick_gelu', projectionDim: 24 });
    expect(() => parseClipModelConfig({ model_type: 'clip_text_model' }, 'text/config.json')).toThrow(/not a CLIPModel config/);
    // openai/clip-vit-large-patch14's layout: *_config_dict overrides, keys absent there come from *_config.
    const large = parseClipModelConfig(
      {
        model_type: 'clip',
        projection_dim: 768,
        text_config: { hidden_size: 512, max_position_embeddings: 77, eos_token_id: 2, id2label: { 0: 'LABEL_0' } },
        text_config_dict: { hidden_size: 768, intermediate_size: 3072, num_attention_heads: 12, num_hidden_layers: 12, projection_dim: 768 },
        vision_config: { hidden_size: 768, image_size: 224, top_k: 50 },
        vision_config_dict: { hidden_size: 1024, intermediate_size: 4096, num_attention_heads: 16, num_hidden_layers: 24, patch_size: 14, projection_dim: 768 },
      },
      'large/config.json',
    );
    expect(large.text).toMatchObject({ hiddenSize: 768, numLayers: 12, numHeads: 12, intermediateSize: 3072, maxPositions: 77, projectionDim: 768 });
    expect(large.vision).toMatchObject({ hiddenSize: 1024, numLayers: 24, numHeads: 16, intermediateSize: 4096, imageSize: 224, patchSize: 14, numChannels: 3, projectionDim: 768 });
  });
});

describe('CLIPModel vs transformers (clip.safetensors)', () => {
  let model: ClipModel;
  const ref = () => golden(`${REFS}/clip.safetensors`);
  beforeAll(async () => {
    model = await ClipModel.load(await getDevice(), CLIP);
  });

  it('tokenizes with padding=True (pad 49407, mask 0) and preprocesses the three images', async () => {
    const inputs = model.tokenize(clipJson.prompts);
    expect(inputs.inputIds.flat()).toEqual(ref().readI64('input_ids'));
    expect(inputs.attentionMask.flat()).toEqual(ref().readI64('attention_mask'));
    const imgs = await Promise.all(clipJson.images.map((p) => readImageRGB(join(REFS, p))));
    expect(maxAbsDiff(model.preprocess(imgs), ref().readF32('pixel_values'))).toBeLessThanOrEqual(1e-6);
    expect(Math.fround(model.logitScale)).toBe(ref().readF32('logit_scale')[0]);
  });

  it('vision tower: embeddings, hidden states, last_hidden_state, pooler_output (1e-4 relative)', async () => {
    const out = model.vision.forward(ref().readF32('pixel_values'), 3, { hiddenStates: true });
    const errs: Record<string, number> = {};
    errs['vision.embeddings'] = relErr(await out.embeddings!.toArray(), ref().readF32('vision.embeddings'));
    for (let i = 0; i < out.hiddenStates!.length; i++) {
      errs[`vision.hidden_states.${i}`] = relErr(await out.hiddenStates![i]!.toArray(), ref().readF32(`vision.hidden_states.${i}`));
    }
    errs['vision.last_hidden_state'] = relErr(await out.lastHiddenState.toArray(), ref().readF32('vision.last_hidden_state'));
    errs['vision.pooler_output'] = relErr(await out.pooled.toArray(), ref().readF32('vision.pooler_output'));
    errs['image_embeds_unnormalized'] = relErr(await out.imageEmbeds!.toArray(), ref().readF32('image_embeds_unnormalized'));
    console.log('clip vision max rel errors', errs);
    for (const [k, e] of Object.entries(errs)) expect(e, k).toBeLessThan(1e-4);
    expect(out.hiddenStates!.length).toBe(3);
  });

  it('batched call: embeds, logits_per_image / logits_per_text (1e-4 relative)', async () => {
    const inputs = model.tokenize(clipJson.prompts);
    const r = await model.forward(inputs, ref().readF32('pixel_values'), 3);
    const errs: Record<string, number> = {
      text_embeds_unnormalized: relErr(r.textEmbedsUnnormalized, ref().readF32('text_embeds_unnormalized')),
      image_embeds: relErr(r.imageEmbeds, ref().readF32('image_embeds')),
      text_embeds: relErr(r.textEmbeds, ref().readF32('text_embeds')),
      logits_per_image: relErr(r.logitsPerImage, ref().readF32('logits_per_image')),
      logits_per_text: relErr(r.logitsPerText, ref().readF32('logits_per_text')),
    };
    console.log('clip model max rel errors', errs);
    for (const [k, e] of Object.entries(errs)) expect(e, k).toBeLessThan(1e-4);
  });

  it('logitsPerImage: batched and each pair alone (logits_per_image_single)', async () => {
    const imgs = await Promise.all(clipJson.images.map((p) => readImageRGB(join(REFS, p))));
    const batched = await model.logitsPerImage(imgs, clipJson.prompts);
    expect(relErr(batched.flat(), ref().readF32('logits_per_image'))).toBeLessThan(1e-4);
    const single: number[] = [];
    for (const img of imgs) for (const p of clipJson.prompts) single.push((await model.logitsPerImage([img], [p]))[0]![0]!);
    const e = relErr(single, ref().readF32('logits_per_image_single'));
    console.log('logits_per_image_single max rel error', e);
    expect(e).toBeLessThan(1e-4);
  });

  it('the evaluate_generation.py calls (clip_score.safetensors)', async () => {
    const f = golden(`${REFS}/clip_score.safetensors`);
    for (const c of scoreJson.calls) {
      const inputs = model.tokenize([c.prompt]);
      expect(inputs.inputIds[0], `call ${c.call}`).toEqual(f.readI64(`call${c.call}.input_ids`));
      const img = await readImageRGB(join(REFS, c.image));
      expect(maxAbsDiff(model.preprocess([img]), f.readF32(`call${c.call}.pixel_values`))).toBeLessThanOrEqual(1e-6);
      const got = (await model.logitsPerImage([img], [c.prompt]))[0]![0]!;
      expect(Math.abs(got - c.logits_per_image) / Math.abs(c.logits_per_image), `call ${c.call}`).toBeLessThan(1e-4);
    }
  });
});

describe('CLIP score averaging', () => {
  it('reproduces the reference average bit for bit from its per-call logits', () => {
    const per = new Map<number, number[]>();
    for (const c of scoreJson.calls) {
      if (!per.has(c.prompt_index)) per.set(c.prompt_index, []);
      per.get(c.prompt_index)!.push(c.logits_per_image);
    }
    const avg = averageClipScore(per);
    expect(`{"avg_clip_score": ${pyFloatRepr(avg)}}`).toBe(scoreJson.evaluate_generation_json);
  });

  it('numpy pairwise float32 sums, Python float repr, file-name prompt indices', () => {
    // np.add.reduce / np.mean of float32 arrays (numpy's pairwise summation), values from numpy.
    const f = Math.fround;
    const want: Record<number, [number, number]> = {
      5: [100.010009765625, 20.002002716064453],
      8: [205.0205078125, 25.6275634765625],
      13: [455.0455322265625, 35.003501892089844],
      130: [33072.0546875, 254.40042114257812],
      300: [171954.6875, 573.1823120117188],
    };
    for (const [n, [sum, mean]] of Object.entries(want)) {
      const x = Array.from({ length: Number(n) }, (_, i) => f(f(f(0.1 * i + 1 / 3) * 37.5) * f(1.0001)));
      expect(numpyPairwiseSumF32(x), `n=${n}`).toBe(sum);
      expect(f(numpyPairwiseSumF32(x) / Number(n)), `n=${n}`).toBe(mean);
    }
    expect(pyFloatRepr(36)).toBe('36.0');
    expect(pyFloatRepr(1e-5)).toBe('1e-05');
    expect(pyFloatRepr(36.76273091634115)).toBe('36.76273091634115');
    expect(promptIndexOf('txt12_img0_seed4307.png')).toBe(12);
    expect(promptIndexOf('3_x.png')).toBe(3);
    expect(promptIndexOf('img_txt1.png')).toBeUndefined();
  });
});

describe('clip-score command', () => {
  let tmp: string;
  beforeAll(() => {
    tmp = mkdtempSync(join(tmpdir(), 'elbo-clip-score-'));
  });
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  function dataset(name: string, calls: readonly ScoreCall[], prompts: readonly string[]): { images: string; prompts: string; out: string } {
    const root = join(tmp, name);
    const images = join(root, 'images');
    mkdirSync(images, { recursive: true });
    for (const c of calls) copyFileSync(join(REFS, c.image), join(images, c.file));
    const promptsPath = join(root, 'prompts.txt');
    writeFileSync(promptsPath, prompts.map((p) => `${p}\n`).join(''));
    return { images, prompts: promptsPath, out: join(root, 'evaluate_generation.json') };
  }

  it('matches evaluate_generation.py on the golden dataset and writes evaluate_generation.json', async () => {
    const d = dataset('golden', scoreJson.calls, scoreJson.prompts);
    const r = await run(['--images', d.images, '--prompts', d.prompts, '--clip-model', CLIP]);
    expect(r.code, r.err).toBe(0);
    const want = JSON.parse(scoreJson.evaluate_generation_json).avg_clip_score as number;
    const got = JSON.parse(r.out).avg_clip_score as number;
    console.log('avg_clip_score', got, 'reference', want, 'rel', Math.abs(got - want) / want);
    expect(Math.abs(got - want) / want).toBeLessThan(1e-4);
    expect(r.out).toMatch(/^\{"avg_clip_score": [0-9.]+\}$/);
    expect(readFileSync(d.out, 'utf8')).toBe(r.out);
  });

  it('warns about a prompt without images and averages over the others, as the reference', async () => {
    const d = dataset('missing', scoreJson.calls.filter((c) => c.prompt_index !== 2), [...scoreJson.prompts, 'a fourth prompt']);
    const r = await run(['--images', d.images, '--prompts', d.prompts, '--clip-model', CLIP]);
    expect(r.code, r.err).toBe(0);
    expect(r.err).toMatch(/2 of 4 prompts have no images \(index 2, 3\)/);
    const c = scoreJson.calls;
    const want = (c[0]!.logits_per_image + Math.fround(Math.fround(c[1]!.logits_per_image + c[2]!.logits_per_image) / 2)) / 2;
    const got = JSON.parse(r.out).avg_clip_score as number;
    expect(Math.abs(got - want) / want).toBeLessThan(1e-4);
  });

  it('rejects bad input with errors naming the option', async () => {
    const d = dataset('bad', scoreJson.calls.slice(0, 1), scoreJson.prompts);
    await expect(run(['--images', join(tmp, 'nope'), '--prompts', d.prompts, '--clip-model', CLIP])).rejects.toThrow(/--images .*nope: folder not found/);
    await expect(run(['--prompts', d.prompts])).rejects.toThrow(/--images DIR is required/);
    await expect(run(['--images', d.images])).rejects.toThrow(/--prompts FILE is required/);
    const empty = join(tmp, 'empty.txt');
    writeFileSync(empty, '\n  \n');
    await expect(run(['--images', d.images, '--prompts', empty, '--clip-model', CLIP])).rejects.toThrow(/--prompts .*empty\.txt: no prompts/);
    await expect(run(['--images', d.images, '--prompts', join(tmp, 'none.txt')])).rejects.toThrow(/--prompts .*none\.txt: file not found/);
    const one = join(tmp, 'one.txt');
    writeFileSync(one, 'only one prompt\n');
    const far = dataset('far', [{ ...scoreJson.calls[1]!, file: 'txt1_img0_seed1.png' }], scoreJson.prompts);
    await expect(run(['--images', far.images, '--prompts', one, '--clip-model', CLIP])).rejects.toThrow(/txt1_img0_seed1\.png" belongs to prompt 1, but .*one\.txt has only 1 prompt/);
    writeFileSync(join(far.images, 'notes.png'), 'x');
    await expect(run(['--images', far.images, '--prompts', d.prompts, '--clip-model', CLIP])).rejects.toThrow(/cannot tell the prompt of "notes\.png"/);
    const emptyDir = join(tmp, 'empty-images', 'images');
    mkdirSync(emptyDir, { recursive: true });
    await expect(run(['--images', emptyDir, '--prompts', d.prompts, '--clip-model', CLIP])).rejects.toThrow(/no images/);
  });

  it('names the download when the default model is missing', async () => {
    const d = dataset('nomodel', scoreJson.calls.slice(0, 1), scoreJson.prompts);
    const saved = process.env['HF_HUB_CACHE'];
    process.env['HF_HUB_CACHE'] = join(tmp, 'empty-cache');
    try {
      await expect(run(['--images', d.images, '--prompts', d.prompts])).rejects.toThrow(/--clip-model: .*openai\/clip-vit-large-patch14.*huggingface-cli download openai\/clip-vit-large-patch14.*--clip-model/);
    } finally {
      if (saved === undefined) delete process.env['HF_HUB_CACHE'];
      else process.env['HF_HUB_CACHE'] = saved;
    }
  });

  it('reads prompts as the reference TextDataset: lines stripped, blank lines keep their index', () => {
    const p = join(tmp, 'p.txt');
    writeFileSync(p, '  a cat \r\n\r\nthird\n');
    expect(readPromptsFile(p)).toEqual(['a cat', '', 'third']);
    expect(existsSync(p)).toBe(true);
  });
});
