import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { preprocessForVae, readImageRGB } from '../src/io/image.js';
import { SafeTensorsFile, writeSafetensorsSync, type TensorToWrite } from '../src/io/safetensors.js';
import { setMaxBindingBytes, setNormMaxBindingBytes, setWindowLimitForTests } from '../src/kernels/index.js';
import { AutoencoderKL } from '../src/models/vae.js';
import { Tensor, type Device } from '../src/tensor/index.js';
import { getDevice, maxAbs, maxAbsDiff } from './helpers/gpu.js';

const ROOT = new URL('../', import.meta.url).pathname;
const PIPES = {
  'sd15-tiny': { vae: `${ROOT}weights/sd15-tiny/vae`, ref: `${ROOT}test/fixtures/sd15-tiny/references/vae.safetensors` },
  'sd21-tiny': { vae: `${ROOT}test/fixtures/sd21-tiny/vae`, ref: `${ROOT}test/fixtures/sd21-tiny/references/vae.safetensors` },
};

/** f32 tolerance: GOLDEN_README's 1e-4 relative to max(1, max|ref|) for single model calls. */
const RTOL = 1e-4;
/** f16 weights: weights carry 2^-11 relative rounding; measured errors are well inside this. */
const RTOL_F16 = 1e-2;

const errors: string[] = [];

/** Checks and records max|got - ref| against rtol * max(1, max|ref|). */
function close(got: Float32Array, ref: Float32Array, rtol: number, what: string): void {
  const err = maxAbsDiff(got, ref);
  const bound = rtol * Math.max(1, maxAbs(ref));
  errors.push(`${what}: max abs err ${err.toExponential(2)} (max|ref| ${maxAbs(ref).toFixed(3)}, bound ${bound.toExponential(2)})`);
  expect(err, `${what}: max abs error ${err} > ${bound}`).toBeLessThanOrEqual(bound);
}

function upload(dev: Device, f: SafeTensorsFile, name: string): Tensor {
  return Tensor.fromArray(dev, f.readF32(name), f.info(name).shape);
}

let dev: Device;
let tmp: string;
beforeAll(async () => {
  dev = await getDevice();
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vae-test-'));
});
afterAll(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
  // the measured errors, for the record
  console.log(errors.join('\n'));
});

/** Copies a VAE folder into tmp, letting the caller edit its config and tensors. */
function copyVae(
  src: string,
  name: string,
  edit: { config?: (c: Record<string, unknown>) => void; tensors?: (t: Record<string, TensorToWrite>) => void; file?: string; f16?: boolean } = {},
): string {
  const dir = path.join(tmp, name, 'vae');
  fs.mkdirSync(dir, { recursive: true });
  const config = JSON.parse(fs.readFileSync(path.join(src, 'config.json'), 'utf8')) as Record<string, unknown>;
  edit.config?.(config);
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config, null, 2));
  const f = SafeTensorsFile.open(path.join(src, 'diffusion_pytorch_model.safetensors'));
  const tensors: Record<string, TensorToWrite> = {};
  for (const n of f.names()) tensors[n] = { dtype: edit.f16 ? 'F16' : 'F32', shape: f.info(n).shape, data: f.readF32(n) };
  f.close();
  edit.tensors?.(tensors);
  writeSafetensorsSync(path.join(dir, edit.file ?? 'diffusion_pytorch_model.safetensors'), tensors, { format: 'pt' });
  return dir;
}

async function run(vae: AutoencoderKL, ref: SafeTensorsFile): Promise<Record<string, Float32Array>> {
  const img = upload(dev, ref, 'image_preprocessed');
  const { mean, logvar } = vae.encode(img);
  const scaled = vae.encodeLatent(img);
  const zIn = upload(dev, ref, 'decode_input_latent');
  const decoded = vae.decode(zIn);
  const zScaled = upload(dev, ref, 'latent_scaled');
  const recon = vae.decode(zScaled);
  const out = {
    latent_mean: await mean.toArray(),
    latent_logvar: await logvar.toArray(),
    latent_scaled: await scaled.toArray(),
    decoded: await decoded.toArray(),
    recon_decoded: await recon.toArray(),
  };
  for (const t of [img, mean, logvar, scaled, zIn, decoded, zScaled, recon]) t.release();
  return out;
}

describe('AutoencoderKL vs golden', () => {
  for (const [name, p] of Object.entries(PIPES)) {
    it(`${name}: encode / encodeLatent / decode (f32 weights)`, async () => {
      const vae = await AutoencoderKL.load(dev, p.vae);
      expect(vae.scalingFactor).toBe(0.18215); // sd15-tiny: key absent -> diffusers default
      expect(vae.shiftFactor).toBeNull();
      expect(vae.sampleSize).toBe(name === 'sd15-tiny' ? 256 : 128);
      const ref = SafeTensorsFile.open(p.ref);
      const got = await run(vae, ref);
      for (const [k, v] of Object.entries(got)) close(v, ref.readF32(k), RTOL, `${name} f32 ${k}`);
      expect(got.latent_mean.length).toBe(ref.info('latent_mean').shape.reduce((a, b) => a * b));
      ref.close();
      vae.release();
    });

    it(`${name}: f16 weights`, async ({ skip }) => {
      if (!dev.hasF16) skip();
      const vae = await AutoencoderKL.load(dev, p.vae, { matrixDtype: 'f16' });
      const ref = SafeTensorsFile.open(p.ref);
      const got = await run(vae, ref);
      for (const [k, v] of Object.entries(got)) close(v, ref.readF32(k), RTOL_F16, `${name} f16 ${k}`);
      ref.close();
      vae.release();
    });
  }

  it('modern attention names (to_q/to_k/to_v/to_out.0) give the same results as the deprecated ones', async () => {
    const rename: Record<string, string> = { query: 'to_q', key: 'to_k', value: 'to_v', proj_attn: 'to_out.0' };
    const dir = copyVae(PIPES['sd21-tiny'].vae, 'modern', {
      tensors: (t) => {
        for (const n of Object.keys(t)) {
          const m = /^(.*\.attentions\.0\.)(query|key|value|proj_attn)(\.(weight|bias))$/.exec(n);
          if (m) {
            t[`${m[1]}${rename[m[2]!]}${m[3]}`] = t[n]!;
            delete t[n];
          }
        }
      },
    });
    expect(SafeTensorsFile.open(path.join(dir, 'diffusion_pytorch_model.safetensors')).has('encoder.mid_block.attentions.0.to_out.0.weight')).toBe(true);
    const a = await AutoencoderKL.load(dev, PIPES['sd21-tiny'].vae);
    const b = await AutoencoderKL.load(dev, dir);
    const ref = SafeTensorsFile.open(PIPES['sd21-tiny'].ref);
    const ra = await run(a, ref);
    const rb = await run(b, ref);
    for (const k of Object.keys(ra)) expect(maxAbsDiff(ra[k]!, rb[k]!), k).toBe(0);
    ref.close();
    a.release();
    b.release();
  });

  it('reads a diffusion_pytorch_model.fp16.safetensors file', async () => {
    const dir = copyVae(PIPES['sd21-tiny'].vae, 'fp16file', { f16: true, file: 'diffusion_pytorch_model.fp16.safetensors' });
    const vae = await AutoencoderKL.load(dev, dir);
    const ref = SafeTensorsFile.open(PIPES['sd21-tiny'].ref);
    const got = await run(vae, ref);
    for (const [k, v] of Object.entries(got)) close(v, ref.readF32(k), RTOL_F16, `sd21-tiny fp16 file ${k}`);
    ref.close();
    vae.release();
  });

  it('shift_factor: encodeLatent = (mean - shift) * scale and decode inverts it', async () => {
    const shift = 0.25;
    const dir = copyVae(PIPES['sd21-tiny'].vae, 'shift', { config: (c) => ((c.shift_factor = shift), (c.scaling_factor = 0.5)) });
    const vae = await AutoencoderKL.load(dev, dir);
    const plain = await AutoencoderKL.load(dev, PIPES['sd21-tiny'].vae);
    expect(vae.shiftFactor).toBe(shift);
    const ref = SafeTensorsFile.open(PIPES['sd21-tiny'].ref);
    const img = upload(dev, ref, 'image_preprocessed');
    const mean = ref.readF32('latent_mean');
    const z = vae.encodeLatent(img);
    const zs = await z.toArray();
    close(zs, mean.map((m) => (m - shift) * 0.5), RTOL, 'shift encodeLatent');
    // decode(z) = decoder(z / 0.5 + 0.25) = plain.decode((z / 0.5 + 0.25) * 0.18215)
    const dShift = await vae.decode(z).toArray();
    const zPlain = Tensor.fromArray(dev, zs.map((v) => (v / 0.5 + shift) * 0.18215), z.shape);
    close(dShift, await plain.decode(zPlain).toArray(), RTOL, 'shift decode');
    ref.close();
    vae.release();
    plain.release();
  });

  it('mid_block_add_attention false and use_quant_conv false drop those weights', async () => {
    const dir = copyVae(PIPES['sd21-tiny'].vae, 'noattn', {
      config: (c) => ((c.mid_block_add_attention = false), (c.use_quant_conv = false), (c.use_post_quant_conv = false)),
      tensors: (t) => {
        for (const n of Object.keys(t)) if (n.includes('attentions') || n.includes('quant_conv')) delete t[n];
      },
    });
    const vae = await AutoencoderKL.load(dev, dir);
    const x = Tensor.fromArray(dev, new Float32Array(3 * 32 * 32).map((_, i) => Math.sin(i)), [1, 3, 32, 32]);
    const { mean, logvar } = vae.encode(x);
    expect(mean.shape).toEqual([1, 4, 4, 4]);
    expect(logvar.shape).toEqual([1, 4, 4, 4]);
    expect(vae.decode(mean).shape).toEqual([1, 3, 32, 32]);
    vae.release();
  });

  it('decoder: false loads the encoder alone: same latents, fewer weight bytes, decode says what is missing', async () => {
    const p = PIPES['sd15-tiny'];
    const live0 = dev.liveBytes;
    const full = await AutoencoderKL.load(dev, p.vae);
    const fullBytes = dev.liveBytes - live0;
    const enc = await AutoencoderKL.load(dev, p.vae, { decoder: false });
    const encBytes = dev.liveBytes - live0 - fullBytes;
    expect(enc.decoder).toBeNull();
    expect(encBytes).toBeGreaterThan(0);
    expect(encBytes).toBeLessThan(fullBytes * 0.7); // the decoder is the larger half
    const ref = SafeTensorsFile.open(p.ref);
    const img = upload(dev, ref, 'image_preprocessed');
    const a = full.encodeLatent(img);
    const b = enc.encodeLatent(img);
    expect(Array.from(await b.toArray())).toEqual(Array.from(await a.toArray()));
    const z = upload(dev, ref, 'latent_scaled');
    expect(() => enc.decode(z)).toThrow('AutoencoderKL.decode: this VAE was loaded without its decoder');
    for (const t of [img, a, b, z]) t.release();
    ref.close();
    full.release();
    enc.release();
  });

  it('encode and decode release every intermediate', async () => {
    const vae = await AutoencoderKL.load(dev, PIPES['sd21-tiny'].vae);
    const x = Tensor.fromArray(dev, new Float32Array(3 * 32 * 32).map((_, i) => Math.sin(i)), [1, 3, 32, 32]);
    const once = async (): Promise<void> => {
      const { mean, logvar } = vae.encode(x);
      const z = vae.encodeLatent(x);
      const d = vae.decode(z);
      await d.toArray();
      for (const t of [mean, logvar, z, d]) t.release();
    };
    await once(); // first calls may create kernels' long-lived helpers
    const live0 = dev.liveBytes;
    await once();
    expect(dev.liveBytes).toBe(live0);
    vae.release();
    x.release();
    expect(dev.liveBytes).toBeLessThan(live0);
  });

  it('activations above the storage-binding limit (windowed kernels) give the same results', async () => {
    // sd21-tiny's full-resolution activations are 8 and 16 x 128 x 128 f32 = 512 KiB / 1 MiB;
    // pretending the binding limit is 320 KiB (above one GroupNorm group, 4 x 128 x 128 f32)
    // sends the VAE through the split / windowed paths that the real VAE takes at 512x512
    // (128 and 256 MiB activations, above lavapipe's 128 MiB).
    const LIMIT = 320 * 1024;
    const vae = await AutoencoderKL.load(dev, PIPES['sd21-tiny'].vae);
    const ref = SafeTensorsFile.open(PIPES['sd21-tiny'].ref);
    setWindowLimitForTests(LIMIT);
    setMaxBindingBytes(LIMIT);
    setNormMaxBindingBytes(LIMIT);
    try {
      const img = upload(dev, ref, 'image_preprocessed');
      const mean = await vae.encode(img).mean.toArray();
      const dec = await vae.decode(upload(dev, ref, 'decode_input_latent')).toArray();
      close(mean, ref.readF32('latent_mean'), RTOL, 'windowed latent_mean');
      close(dec, ref.readF32('decoded'), RTOL, 'windowed decoded');
    } finally {
      setWindowLimitForTests(null);
      setMaxBindingBytes(undefined);
      setNormMaxBindingBytes(undefined);
    }
    ref.close();
    vae.release();
  });

  it('batch of 2 and non-square input: each item as if alone', async () => {
    const vae = await AutoencoderKL.load(dev, PIPES['sd21-tiny'].vae);
    const H = 48;
    const W = 80;
    const a = new Float32Array(3 * H * W).map((_, i) => Math.sin(i * 0.37));
    const b = new Float32Array(3 * H * W).map((_, i) => Math.cos(i * 0.11));
    const both = new Float32Array(2 * a.length);
    both.set(a);
    both.set(b, a.length);
    const m2 = await vae.encode(Tensor.fromArray(dev, both, [2, 3, H, W])).mean.toArray();
    const ma = await vae.encode(Tensor.fromArray(dev, a, [1, 3, H, W])).mean.toArray();
    const mb = await vae.encode(Tensor.fromArray(dev, b, [1, 3, H, W])).mean.toArray();
    expect(m2.length).toBe(2 * 4 * (H / 8) * (W / 8));
    close(m2.subarray(0, ma.length), ma, RTOL, 'batch item 0');
    close(m2.subarray(ma.length), mb, RTOL, 'batch item 1');
    const d = vae.decode(Tensor.fromArray(dev, m2, [2, 4, H / 8, W / 8]));
    expect(d.shape).toEqual([2, 3, H, W]);
    vae.release();
  });
});

// sdxl-tiny: modern attention names (to_q/...), scaling_factor 0.13025, non-square decode.
// Its references do not store the preprocessed image: rebuild it from the test image.
const SDXL = `${ROOT}test/fixtures/sdxl-tiny`;
describe.skipIf(!fs.existsSync(`${SDXL}/references/vae.safetensors`))('AutoencoderKL vs golden: sdxl-tiny', () => {
  it('encode / encodeLatent / non-square decode', async () => {
    const vae = await AutoencoderKL.load(dev, `${SDXL}/vae`);
    expect(vae.scalingFactor).toBe(0.13025);
    const ref = SafeTensorsFile.open(`${SDXL}/references/vae.safetensors`);
    const S = vae.sampleSize;
    const img = Tensor.fromArray(dev, preprocessForVae(await readImageRGB(`${ROOT}test/fixtures/common/test_image.png`), S), [1, 3, S, S]);
    const { mean, logvar } = vae.encode(img);
    close(await mean.toArray(), ref.readF32('latent_mean'), RTOL, 'sdxl-tiny f32 latent_mean');
    close(await logvar.toArray(), ref.readF32('latent_logvar'), RTOL, 'sdxl-tiny f32 latent_logvar');
    close(await vae.encodeLatent(img).toArray(), ref.readF32('latent_scaled'), RTOL, 'sdxl-tiny f32 latent_scaled');
    const dec = vae.decode(upload(dev, ref, 'decode_input_latent')); // (1, 4, 8, 12)
    expect(dec.shape).toEqual([1, 3, 64, 96]);
    close(await dec.toArray(), ref.readF32('decoded'), RTOL, 'sdxl-tiny f32 decoded');
    ref.close();
    vae.release();
  });
});

describe('AutoencoderKL bad inputs', () => {
  const src = PIPES['sd21-tiny'].vae;

  it('an unsupported config value names the key and the file', async () => {
    const d1 = copyVae(src, 'badact', { config: (c) => (c.act_fn = 'gelu') });
    await expect(AutoencoderKL.load(dev, d1)).rejects.toThrow(/vae\/config\.json: unsupported value for "act_fn": "gelu"/);
    const d2 = copyVae(src, 'badblock', { config: (c) => (c.down_block_types = ['DownEncoderBlock2D', 'AttnDownEncoderBlock2D', 'DownEncoderBlock2D', 'DownEncoderBlock2D']) });
    await expect(AutoencoderKL.load(dev, d2)).rejects.toThrow(/vae\/config\.json: unsupported value for "down_block_types"/);
    const d3 = copyVae(src, 'badgroups', { config: (c) => (c.norm_num_groups = 3) });
    await expect(AutoencoderKL.load(dev, d3)).rejects.toThrow(/vae\/config\.json: unsupported value for "norm_num_groups"/);
    const d4 = copyVae(src, 'badlen', { config: (c) => (c.up_block_types = ['UpDecoderBlock2D']) });
    await expect(AutoencoderKL.load(dev, d4)).rejects.toThrow(/"up_block_types" has 1 entries but "block_out_channels" has 4/);
    const d5 = copyVae(src, 'badclass', { config: (c) => (c._class_name = 'AutoencoderTiny') });
    await expect(AutoencoderKL.load(dev, d5)).rejects.toThrow(/unsupported value for "_class_name": "AutoencoderTiny"/);
    const d6 = copyVae(src, 'badshift', { config: (c) => (c.shift_factor = 'x') });
    await expect(AutoencoderKL.load(dev, d6)).rejects.toThrow(/unsupported value for "shift_factor": "x"/);
  });

  it('a missing weight names the tensor (and the partly loaded model is freed)', async () => {
    const d = copyVae(src, 'missing', { tensors: (t) => delete t['decoder.up_blocks.1.resnets.2.conv2.bias'] });
    const live0 = dev.liveBytes;
    await expect(AutoencoderKL.load(dev, d)).rejects.toThrow(/vae\/diffusion_pytorch_model\.safetensors: missing weight "decoder\.up_blocks\.1\.resnets\.2\.conv2\.bias"/);
    expect(dev.liveBytes).toBe(live0);
    const d2 = copyVae(src, 'missingattn', { tensors: (t) => delete t['encoder.mid_block.attentions.0.value.weight'] });
    await expect(AutoencoderKL.load(dev, d2)).rejects.toThrow(/missing weight "encoder\.mid_block\.attentions\.0\.to_v\.weight" \(also looked for "encoder\.mid_block\.attentions\.0\.value\.weight"\)/);
  });

  it('a wrong-shaped weight names the tensor, the expected and the found shape', async () => {
    const d = copyVae(src, 'shape', {
      tensors: (t) => {
        t['encoder.conv_in.weight'] = { dtype: 'F32', shape: [8, 3, 5, 5], data: new Float32Array(8 * 3 * 25) };
      },
    });
    await expect(AutoencoderKL.load(dev, d)).rejects.toThrow(/weight "encoder\.conv_in\.weight" has shape \[8, 3, 5, 5\], expected \[8, 3, 3, 3\]/);
  });

  it('a wrong input shape is an error naming both', async () => {
    const vae = await AutoencoderKL.load(dev, src);
    const x = Tensor.zeros(dev, [1, 4, 16, 16]);
    expect(() => vae.encode(x)).toThrow(/AutoencoderKL\.encode: expected \(B, 3, H, W\), got \(1x4x16x16\)/);
    expect(() => vae.decode(Tensor.zeros(dev, [1, 3, 16, 16]))).toThrow(/AutoencoderKL\.decode: expected \(B, 4, H, W\), got \(1x3x16x16\)/);
    vae.release();
  });

  it('a folder without weights says what it looked for', async () => {
    const d = path.join(tmp, 'empty', 'vae');
    fs.mkdirSync(d, { recursive: true });
    fs.copyFileSync(path.join(src, 'config.json'), path.join(d, 'config.json'));
    await expect(AutoencoderKL.load(dev, d)).rejects.toThrow(/diffusion_pytorch_model\.safetensors/);
  });
});
