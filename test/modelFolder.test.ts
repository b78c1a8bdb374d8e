import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { findWeightFile, hfHubCacheDir, loadPipelineIndex, readJsonConfig, resolveModel } from '../src/io/modelFolder.ts';

const ROOT = path.resolve(new URL('..', import.meta.url).pathname);

let tmp = '';
const savedEnv = { ...process.env };

function touch(p: string, content = '{}'): void {
  fs.mkdirSync(path.dirname(p), { recursive: true });
  fs.writeFileSync(p, content);
}

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'model-folder-'));
});
afterAll(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});
afterEach(() => {
  for (const k of ['HF_HUB_CACHE', 'HUGGINGFACE_HUB_CACHE', 'HF_HOME', 'XDG_CACHE_HOME']) {
    if (savedEnv[k] === undefined) delete process.env[k];
    else process.env[k] = savedEnv[k];
  }
});

describe('resolveModel', () => {
  it('accepts the bundled pipeline and clip folders', () => {
    expect(resolveModel(path.join(ROOT, 'weights/sd15-tiny'))).toBe(path.join(ROOT, 'weights/sd15-tiny'));
    expect(resolveModel(path.join(ROOT, 'test/fixtures/clip-tiny'))).toBe(path.join(ROOT, 'test/fixtures/clip-tiny'));
  });

  it('rejects a folder without model_index.json / config.json, and a file', () => {
    const d = path.join(tmp, 'empty');
    fs.mkdirSync(d, { recursive: true });
    expect(() => resolveModel(d)).toThrow(/has neither model_index.json \(diffusers pipeline\) nor config.json/);
    const f = path.join(tmp, 'file.txt');
    touch(f, 'x');
    expect(() => resolveModel(f)).toThrow(/is a file, expected a model folder/);
  });

  it('resolves a hub id through refs/main in HF_HUB_CACHE', () => {
    const cache = path.join(tmp, 'hub1');
    process.env['HF_HUB_CACHE'] = cache;
    const repo = path.join(cache, 'models--my-org--sd-model');
    touch(path.join(repo, 'refs/main'), 'abc123\n');
    touch(path.join(repo, 'snapshots/abc123/model_index.json'));
    touch(path.join(repo, 'snapshots/zzz999/model_index.json'));
    expect(resolveModel('my-org/sd-model')).toBe(path.join(repo, 'snapshots/abc123'));
  });

  it('takes the only / newest snapshot without refs/main, and HF_HOME/hub when HF_HUB_CACHE is unset', () => {
    delete process.env['HF_HUB_CACHE'];
    delete process.env['HUGGINGFACE_HUB_CACHE'];
    process.env['HF_HOME'] = path.join(tmp, 'hfhome');
    const cache = path.join(tmp, 'hfhome/hub');
    expect(hfHubCacheDir()).toBe(cache);
    const repo = path.join(cache, 'models--openai--clip-vit-base-patch32');
    touch(path.join(repo, 'snapshots/old/config.json'));
    touch(path.join(repo, 'snapshots/new/config.json'));
    const past = new Date(Date.now() - 3600_000);
    fs.utimesSync(path.join(repo, 'snapshots/old'), past, past);
    expect(resolveModel('openai/clip-vit-base-patch32')).toBe(path.join(repo, 'snapshots/new'));
  });

  it('defaults to ~/.cache/huggingface/hub', () => {
    delete process.env['HF_HUB_CACHE'];
    delete process.env['HUGGINGFACE_HUB_CACHE'];
    delete process.env['HF_HOME'];
    delete process.env['XDG_CACHE_HOME'];
    expect(hfHubCacheDir()).toBe(path.join(os.homedir(), '.cache/huggingface/hub'));
  });

  it('says what to download when the model is nowhere', () => {
    process.env['HF_HUB_CACHE'] = path.join(tmp, 'hub-empty');
    let msg = '';
    try {
      resolveModel('stable-diffusion-v1-5/stable-diffusion-v1-5');
    } catch (err) {
      msg = (err as Error).message;
    }
    expect(msg).toContain("model 'stable-diffusion-v1-5/stable-diffusion-v1-5' not found: not a folder, and not in the Hugging Face cache at");
    expect(msg).toContain(path.join(tmp, 'hub-empty', 'models--stable-diffusion-v1-5--stable-diffusion-v1-5'));
    expect(msg).toContain('huggingface-cli download stable-diffusion-v1-5/stable-diffusion-v1-5');
    expect(msg).toContain('git clone https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5');
    expect(msg).toContain('--model /path/to/folder');
  });

  it('reports incomplete cache entries', () => {
    const cache = path.join(tmp, 'hub2');
    process.env['HF_HUB_CACHE'] = cache;
    touch(path.join(cache, 'models--a--b/refs/main'), 'deadbeef');
    expect(() => resolveModel('a/b')).toThrow(/names revision deadbeef, but .* does not exist \(incomplete download\)/);
    fs.mkdirSync(path.join(cache, 'models--c--d/snapshots'), { recursive: true });
    expect(() => resolveModel('c/d')).toThrow(/has no snapshots/);
    fs.mkdirSync(path.join(cache, 'models--e--f/snapshots/r1'), { recursive: true });
    expect(() => resolveModel('e/f')).toThrow(/snapshot .* has neither model_index.json nor config.json/);
  });

  it('rejects a spec that is neither a folder nor a hub id', () => {
    expect(() => resolveModel('./no/such/dir')).toThrow(/no such folder, and it is not a Hugging Face id/);
    expect(() => resolveModel('')).toThrow(/model spec is empty/);
  });
});

describe('findWeightFile', () => {
  it('finds the bundled weights', () => {
    expect(findWeightFile(path.join(ROOT, 'weights/sd15-tiny/unet'))).toBe(
      path.join(ROOT, 'weights/sd15-tiny/unet/diffusion_pytorch_model.safetensors'),
    );
    expect(findWeightFile(path.join(ROOT, 'weights/sd15-tiny/text_encoder'), 'model')).toBe(
      path.join(ROOT, 'weights/sd15-tiny/text_encoder/model.safetensors'),
    );
  });

  it('prefers fp16 only when asked, falls back to what exists', () => {
    const d = path.join(tmp, 'w1');
    touch(path.join(d, 'diffusion_pytorch_model.safetensors'), '');
    touch(path.join(d, 'diffusion_pytorch_model.fp16.safetensors'), '');
    expect(path.basename(findWeightFile(d))).toBe('diffusion_pytorch_model.safetensors');
    expect(path.basename(findWeightFile(d, 'diffusion_pytorch_model', true))).toBe('diffusion_pytorch_model.fp16.safetensors');
    const d2 = path.join(tmp, 'w2');
    touch(path.join(d2, 'model.fp16.safetensors'), '');
    expect(path.basename(findWeightFile(d2, 'model'))).toBe('model.fp16.safetensors');
  });

  it('errors name the folder and the files looked for; .bin is refused', () => {
    const d = path.join(tmp, 'w3');
    fs.mkdirSync(d, { recursive: true });
    expect(() => findWeightFile(d)).toThrow(
      `${d}: no weight file: looked for diffusion_pytorch_model.safetensors and diffusion_pytorch_model.fp16.safetensors`,
    );
    touch(path.join(d, 'diffusion_pytorch_model.bin'), '');
    expect(() => findWeightFile(d)).toThrow(/found only PyTorch pickle weights \(diffusion_pytorch_model.bin\); only safetensors is supported/);
    expect(() => findWeightFile(path.join(tmp, 'nope'))).toThrow(/model folder does not exist/);
    const d4 = path.join(tmp, 'w4');
    touch(path.join(d4, 'diffusion_pytorch_model.safetensors.index.json'));
    expect(() => findWeightFile(d4)).toThrow(/sharded weights/);
  });
});

describe('readJsonConfig and loadPipelineIndex', () => {
  it('reads configs and names the file on errors', () => {
    const cfg = readJsonConfig(path.join(ROOT, 'weights/sd15-tiny/unet/config.json'));
    expect(cfg['_class_name']).toBe('UNet2DConditionModel');
    const missing = path.join(tmp, 'none.json');
    expect(() => readJsonConfig(missing)).toThrow(`${missing}: config file not found`);
    const bad = path.join(tmp, 'bad.json');
    touch(bad, '{"a": ');
    expect(() => readJsonConfig(bad)).toThrow(new RegExp(`^${bad.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}: invalid JSON`));
    const arr = path.join(tmp, 'arr.json');
    touch(arr, '[1]');
    expect(() => readJsonConfig(arr)).toThrow(`${arr}: expected a JSON object, got an array`);
  });

  it('resolves the components of both SD pipelines', () => {
    for (const dir of [path.join(ROOT, 'weights/sd15-tiny'), path.join(ROOT, 'test/fixtures/sd21-tiny')]) {
      const p = loadPipelineIndex(dir);
      expect(p.className).toBe('StableDiffusionPipeline');
      expect(p.components).toEqual({
        text_encoder: path.join(dir, 'text_encoder'),
        tokenizer: path.join(dir, 'tokenizer'),
        unet: path.join(dir, 'unet'),
        vae: path.join(dir, 'vae'),
        scheduler: path.join(dir, 'scheduler'),
      });
      expect(p.classes['unet']).toEqual(['diffusers', 'UNet2DConditionModel']);
      expect(p.classes['safety_checker']).toBeUndefined();
    }
  });

  it('handles SDXL-style second encoders and reports missing components', () => {
    const d = path.join(tmp, 'xl');
    const index: Record<string, unknown> = { _class_name: 'StableDiffusionXLPipeline' };
    for (const c of ['text_encoder', 'text_encoder_2', 'tokenizer', 'tokenizer_2', 'unet', 'vae', 'scheduler']) {
      index[c] = ['x', 'Y'];
      fs.mkdirSync(path.join(d, c), { recursive: true });
    }
    touch(path.join(d, 'model_index.json'), JSON.stringify(index));
    const p = loadPipelineIndex(d);
    expect(p.className).toBe('StableDiffusionXLPipeline');
    expect(p.components.text_encoder_2).toBe(path.join(d, 'text_encoder_2'));
    expect(p.components.tokenizer_2).toBe(path.join(d, 'tokenizer_2'));

    fs.rmSync(path.join(d, 'vae'), { recursive: true });
    expect(() => loadPipelineIndex(d)).toThrow(/lists component "vae" but the folder .* does not exist/);
    touch(path.join(d, 'model_index.json'), JSON.stringify({ ...index, unet: [null, null] }));
    expect(() => loadPipelineIndex(d)).toThrow(/component "unet" is missing or null/);
    expect(() => loadPipelineIndex(path.join(tmp, 'nothing'))).toThrow(/model_index.json: config file not found/);
  });
});
