// Every model owns its GPU weights: release() returns the device's live bytes to what they
// were before the load, and a load that fails part-way (a checkpoint with one tensor of the
// wrong shape, parts that do not fit together) leaves them where they were.
import { cpSync, mkdirSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SafeTensorsFile, writeSafetensorsSync, type TensorToWrite } from '../src/io/safetensors.js';
import { ClipTextModel } from '../src/models/clip.js';
import { ClipModel } from '../src/models/clipModel.js';
import { StableDiffusionPipeline, loadPipeline } from '../src/models/pipeline.js';
import type { StableDiffusionXLPipeline } from '../src/models/sdxlPipeline.js';
import { AutoencoderKL } from '../src/models/vae.js';
import { Tensor, type Device } from '../src/tensor/index.js';
import { getDevice } from './helpers/gpu.js';
import { PIPELINES } from './helpers/golden.js';

const SD15 = resolve(PIPELINES['sd15-tiny'].dir);
const SDXL = resolve('test/fixtures/sdxl-tiny');
const CLIP = resolve('test/fixtures/clip-tiny');

let dev: Device;
let tmp: string;
const figures: string[] = [];
beforeAll(async () => {
  dev = await getDevice();
  tmp = mkdtempSync(join(tmpdir(), 'release-test-'));
});
afterAll(() => {
  rmSync(tmp, { recursive: true, force: true });
  console.log(figures.join('\n')); // the measured bytes, for the record
});

/** Live bytes now, after the queued work (a release frees at once; sync keeps the count settled). */
async function live(): Promise<number> {
  await dev.sync();
  return dev.liveBytes;
}

/** Bytes of a checkpoint's float tensors as f32: what a full f32 load must at least upload. */
function f32Bytes(file: string, prefix = ''): number {
  const f = SafeTensorsFile.open(file);
  let n = 0;
  for (const name of f.names()) {
    const info = f.info(name);
    if (name.startsWith(prefix) && info.dtype !== 'I64') n += 4 * info.shape.reduce((a, b) => a * b, 1);
  }
  f.close();
  return n;
}

/** Copies safetensors `src` to `dst` with `name` given `shape` (filled with zeros): a checkpoint that fails at that weight. */
function withWrongShape(src: string, dst: string, name: string, shape: number[]): void {
  const f = SafeTensorsFile.open(src);
  const tensors: Record<string, TensorToWrite> = {};
  for (const n of f.names()) {
    const info = f.info(n);
    if (info.dtype === 'I64') continue; // position_ids buffers: never loaded
    tensors[n] = { dtype: 'F32', shape: [...info.shape], data: f.readF32(n) };
  }
  f.close();
  expect(tensors[name], `${src} has ${name}`).toBeDefined();
  tensors[name] = { dtype: 'F32', shape, data: new Float32Array(shape.reduce((a, b) => a * b, 1)) };
  writeSafetensorsSync(dst, tensors, { format: 'pt' });
}

/** A pipeline folder in tmp whose components link to `src`'s, except those in `replace` (name -> folder). */
function linkedPipeline(name: string, src: string, components: string[], replace: Record<string, string>): string {
  const dir = join(tmp, name);
  mkdirSync(dir);
  cpSync(join(src, 'model_index.json'), join(dir, 'model_index.json'));
  for (const c of components) symlinkSync(replace[c] ?? join(src, c), join(dir, c));
  return dir;
}

describe('CLIP text encoder', () => {
  it('release() frees every weight; a forward afterwards fails naming the model', async () => {
    const dir = `${SD15}/text_encoder`;
    (await ClipTextModel.load(dev, dir)).release(); // first use
    const base = await live();
    const model = await ClipTextModel.load(dev, dir);
    const loaded = (await live()) - base;
    const weights = f32Bytes(`${dir}/model.safetensors`);
    expect(loaded).toBeGreaterThanOrEqual(weights);
    expect(loaded).toBeLessThan(2 * weights); // buffer buckets round up, never double
    model.release();
    const after = await live();
    figures.push(`CLIP text (sd15-tiny): base ${base} B, +${loaded} B loaded (${weights} B of f32 weights), after release ${after} B`);
    expect(after).toBe(base);
    expect(() => model.forward([[49406, 320, 49407]])).toThrow('CLIP text encoder: used after release() (its weights are freed; load the model again)');
  });

  it('a checkpoint with one tensor of the wrong shape frees what it had loaded, and the error names the weight', async () => {
    const dir = join(tmp, 'bad-text-encoder');
    mkdirSync(dir);
    cpSync(`${SD15}/text_encoder/config.json`, join(dir, 'config.json'));
    // layer 1 of 2: the token table (6.3 MB) and all of layer 0 are already on the GPU
    withWrongShape(`${SD15}/text_encoder/model.safetensors`, join(dir, 'model.safetensors'), 'text_model.encoder.layers.1.mlp.fc1.weight', [128, 31]);
    const base = await live();
    await expect(ClipTextModel.load(dev, dir)).rejects.toThrow(
      'bad-text-encoder/model.safetensors: weight "text_model.encoder.layers.1.mlp.fc1.weight" has shape [128, 31], expected [128, 32]',
    );
    const after = await live();
    figures.push(`CLIP text, failed load: before ${base} B, after ${after} B`);
    expect(after).toBe(base);
  });
});

describe('CLIPModel (text and vision towers)', () => {
  it('release() frees both towers; each tower frees its own', async () => {
    (await ClipModel.load(dev, CLIP)).release(); // first use
    const base = await live();
    const model = await ClipModel.load(dev, CLIP);
    const loaded = (await live()) - base;
    const file = `${CLIP}/model.safetensors`;
    const visionWeights = f32Bytes(file, 'vision_model.') + f32Bytes(file, 'visual_projection.');
    expect(loaded).toBeGreaterThanOrEqual(f32Bytes(file) - 4); // all but logit_scale, which stays on the host
    model.vision.release();
    const afterVision = await live();
    figures.push(`CLIPModel (clip-tiny): base ${base} B, +${loaded} B loaded, ${afterVision - base} B after vision.release(), vision weights ${visionWeights} B`);
    expect(base + loaded - afterVision).toBeGreaterThanOrEqual(visionWeights);
    expect(afterVision).toBeGreaterThan(base); // the text tower is still there
    expect(() => model.vision.forward(new Float32Array(3 * 32 * 32), 1)).toThrow(/^CLIP vision model: used after release\(\)/);
    model.release(); // the text tower, and the vision tower again (a no-op)
    const after = await live();
    figures.push(`CLIPModel (clip-tiny): after release() ${after} B`);
    expect(after).toBe(base);
  });

  it('a vision weight of the wrong shape frees the text tower loaded before it', async () => {
    const dir = join(tmp, 'bad-clip');
    cpSync(CLIP, dir, { recursive: true, filter: (p) => !p.includes('references') });
    withWrongShape(`${CLIP}/model.safetensors`, join(dir, 'model.safetensors'), 'vision_model.encoder.layers.0.mlp.fc2.weight', [32, 7]);
    const base = await live();
    await expect(ClipModel.load(dev, dir)).rejects.toThrow(/weight "vision_model\.encoder\.layers\.0\.mlp\.fc2\.weight" has shape \[32, 7\], expected \[32, \d+\]/);
    const after = await live();
    figures.push(`CLIPModel, failed vision load: before ${base} B, after ${after} B`);
    expect(after).toBe(base);
  });
});

describe('VAE', () => {
  it('release() frees every weight, prepared conv weights included; decode afterwards fails naming the model', async () => {
    const dir = `${SD15}/vae`;
    (await AutoencoderKL.load(dev, dir)).release(); // first use: the conv layout kernels
    const base = await live();
    const vae = await AutoencoderKL.load(dev, dir);
    const loaded = (await live()) - base;
    const weights = f32Bytes(`${dir}/diffusion_pytorch_model.safetensors`);
    expect(loaded).toBeGreaterThanOrEqual(weights);
    vae.release();
    const after = await live();
    figures.push(`VAE (sd15-tiny): base ${base} B, +${loaded} B loaded (${weights} B of f32 weights), after release ${after} B`);
    expect(after).toBe(base);
    const z = Tensor.zeros(dev, [1, vae.config.latentChannels, 4, 4]);
    expect(() => vae.decode(z)).toThrow('AutoencoderKL: used after release() (its weights are freed; load the model again)');
    z.release();
  });
});

describe('StableDiffusionPipeline', () => {
  it('release() frees the text encoder, UNet, VAE and the cached prompt embeddings', async () => {
    const warm = await StableDiffusionPipeline.load(dev, SD15);
    warm.encodePrompt('a cat'); // first use of the text encoder's kernels
    warm.release();
    const base = await live();
    const pipe = await StableDiffusionPipeline.load(dev, SD15);
    const models = (await live()) - base;
    const emb = pipe.encodePrompt('a photo of a cat');
    expect(pipe.encodePrompt('a photo of a cat')).toBe(emb); // cached
    const withCache = (await live()) - base;
    expect(withCache - models).toBeGreaterThanOrEqual(emb.byteSize);
    pipe.release();
    const after = await live();
    figures.push(`SD 1.5 pipeline (sd15-tiny): base ${base} B, +${models} B models, +${withCache} B with one cached embedding (${emb.byteSize} B), after release ${after} B`);
    expect(after).toBe(base);
    expect(() => pipe.embed('a dog')).toThrow(/^CLIP text encoder: used after release\(\)/);
  });

  it('offloadTextEncoder() frees the text encoder; cached embeddings stay, prepareEmbeddings() loads it again', async () => {
    const pipe = await StableDiffusionPipeline.load(dev, SD15);
    try {
      const teBytes = pipe.textEncoder.weightBytes;
      await pipe.prepareEmbeddings(['a photo of a cat']);
      const cat = await pipe.embed('a photo of a cat').hidden.toArray();
      const dogBefore = await pipe.encodePrompt('a photo of a dog').toArray();
      const before = await live();
      expect(pipe.offloadTextEncoder()).toBe(teBytes);
      const after = await live();
      figures.push(`SD 1.5 pipeline (sd15-tiny): offloading the text encoder frees ${before - after} B (its weights: ${teBytes} B)`);
      expect(before - after).toBe(teBytes);
      expect(pipe.offloadTextEncoder()).toBe(0); // already offloaded
      expect(await pipe.embed('a photo of a cat').hidden.toArray()).toEqual(cat); // cached
      expect(() => pipe.embed('a photo of a horse')).toThrow(
        `${join(SD15, 'text_encoder')}: the text encoder is offloaded (its weights were freed after the prompts were embedded); call prepareEmbeddings(prompts) to load it again`,
      );
      expect(await live()).toBe(after); // the failed embed left nothing behind
      await pipe.prepareEmbeddings(['a photo of a cat', 'a photo of a horse']);
      expect((await live()) - after).toBeGreaterThanOrEqual(teBytes);
      // The encoder loaded again gives what the first one gave.
      pipe.clearCache();
      expect(await pipe.encodePrompt('a photo of a dog').toArray()).toEqual(dogBefore);
    } finally {
      pipe.release();
    }
  });

  it('prepareEmbeddings() keeps a bounded number of embeddings, never one it was just asked for', async () => {
    const pipe = await StableDiffusionPipeline.load(dev, SD15);
    try {
      pipe.embeddings.limit = 2;
      await pipe.prepareEmbeddings(['a cat', 'a dog']);
      const bytes = pipe.embed('a cat').hidden.buffer.size; // as the pool sizes it
      const two = await live();
      await pipe.prepareEmbeddings(['a cat', 'a horse']); // 'a dog' is now the oldest beyond 2
      expect(await live()).toBe(two);
      expect(pipe.embeddings.has('a dog')).toBe(false);
      expect(pipe.embeddings.has('a cat') && pipe.embeddings.has('a horse')).toBe(true);
      // one call asking for more than the limit keeps all it asked for
      await pipe.prepareEmbeddings(['a bird', 'a boat', 'a bus']);
      expect(pipe.embeddings.size).toBe(3);
      expect(await live()).toBe(two + bytes);
      // the oldest go first: 'a bird' was prepared before 'a bus'
      await pipe.prepareEmbeddings(['a bus']);
      expect(['a bird', 'a boat', 'a bus'].map((p) => pipe.embeddings.has(p))).toEqual([false, true, true]);
      pipe.clearCache();
      expect(pipe.embeddings.size).toBe(0);
    } finally {
      pipe.release();
    }
  });

  it('a pipeline built from parts without a loader keeps its text encoder', async () => {
    const loaded = await StableDiffusionPipeline.load(dev, SD15);
    const pipe = StableDiffusionPipeline.fromParts(dev, { tokenizer: loaded.tokenizer, textEncoder: loaded.textEncoder, unet: loaded.unet, vae: loaded.vae, schedule: loaded.schedule });
    try {
      expect(pipe.offloadTextEncoder()).toBe(0);
      await pipe.prepareEmbeddings(['a photo of a cat']);
      expect(pipe.textEncoder.weightBytes).toBeGreaterThan(0);
    } finally {
      pipe.release();
    }
  });

  it('a VAE that fails to load frees the text encoder and UNet loaded before it', async () => {
    const vae = join(tmp, 'bad-vae');
    mkdirSync(vae);
    cpSync(`${SD15}/vae/config.json`, join(vae, 'config.json'));
    withWrongShape(`${SD15}/vae/diffusion_pytorch_model.safetensors`, join(vae, 'diffusion_pytorch_model.safetensors'), 'decoder.conv_out.bias', [4]);
    const dir = linkedPipeline('bad-sd15', SD15, ['scheduler', 'text_encoder', 'tokenizer', 'unet', 'vae'], { vae });
    const base = await live();
    // (the checkpoint is named through the pipeline's link: vae/...)
    await expect(StableDiffusionPipeline.load(dev, dir)).rejects.toThrow(/^vae\/diffusion_pytorch_model\.safetensors: weight "decoder\.conv_out\.bias" has shape \[4\], expected \[3\]$/);
    const after = await live();
    figures.push(`SD 1.5 pipeline, failed VAE load: before ${base} B, after ${after} B`);
    expect(after).toBe(base);
  });
});

describe('StableDiffusionXLPipeline', () => {
  const parts = ['scheduler', 'text_encoder', 'text_encoder_2', 'tokenizer', 'tokenizer_2', 'unet', 'vae'];

  it('release() frees both text encoders, the UNet, the VAE and the cached embeddings', async () => {
    const warm = await loadPipeline(dev, SDXL);
    warm.embed('a cat');
    warm.release();
    const base = await live();
    const pipe = await loadPipeline(dev, SDXL);
    const e = pipe.embed('a photo of a cat');
    const loaded = (await live()) - base;
    expect(loaded).toBeGreaterThan(e.hidden.byteSize + e.pooled!.byteSize);
    pipe.release();
    const after = await live();
    figures.push(`SDXL pipeline (sdxl-tiny): base ${base} B, +${loaded} B with one cached embedding, after release ${after} B`);
    expect(after).toBe(base);
  });

  it('offloadTextEncoder() frees both text encoders; prepareEmbeddings() loads them again', async () => {
    const pipe = (await loadPipeline(dev, SDXL)) as StableDiffusionXLPipeline;
    try {
      const teBytes = pipe.textEncoder.weightBytes + pipe.textEncoder2.weightBytes;
      await pipe.prepareEmbeddings(['a photo of a cat']);
      const cat = await pipe.embed('a photo of a cat').pooled!.toArray();
      const before = await live();
      expect(pipe.offloadTextEncoder()).toBe(teBytes);
      const after = await live();
      figures.push(`SDXL pipeline (sdxl-tiny): offloading both text encoders frees ${before - after} B (their weights: ${teBytes} B)`);
      expect(before - after).toBe(teBytes);
      expect(() => pipe.embed('a photo of a dog')).toThrow(/text_encoder is offloaded/);
      await pipe.prepareEmbeddings(['a photo of a dog']);
      pipe.clearCache();
      expect(await pipe.embed('a photo of a cat').pooled!.toArray()).toEqual(cat);
    } finally {
      pipe.release();
    }
  });

  it('parts that do not fit together (text_encoder_2 without a projection) are freed', async () => {
    const dir = linkedPipeline('bad-sdxl', SDXL, parts, { text_encoder_2: `${SDXL}/text_encoder` });
    const base = await live();
    await expect(loadPipeline(dev, dir)).rejects.toThrow(/text_encoder_2 must be a CLIPTextModelWithProjection/);
    const after = await live();
    figures.push(`SDXL pipeline, parts that do not fit: before ${base} B, after ${after} B`);
    expect(after).toBe(base);
  });
});
