// The generate command as a user runs it, on the bundled pipeline: outputs, resume and bad input.
// (Calls runGenerate directly with the dispatcher's error handling, so it does not depend on
// src/cli.ts listing the command.)
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GENERATE_HELP, runGenerate } from '../src/commands/generate.js';
import { readPngRaw } from '../src/io/image.js';
import { writeSafetensors } from '../src/io/safetensors.js';

let tmp: string;

/** runGenerate with console capture; a thrown Error becomes exit code 1 and its message, as in src/cli.ts. */
async function run(args: string[]): Promise<{ code: number; out: string; err: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const log = vi.spyOn(console, 'log').mockImplementation((...a: unknown[]) => void out.push(a.join(' ')));
  const error = vi.spyOn(console, 'error').mockImplementation((...a: unknown[]) => void err.push(a.join(' ')));
  try {
    let code: number;
    try {
      code = await runGenerate(args);
    } catch (e) {
      err.push(`error: ${(e as Error).message}`);
      code = 1;
    }
    return { code, out: out.join('\n'), err: err.join('\n') };
  } finally {
    log.mockRestore();
    error.mockRestore();
  }
}

beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), 'elbo-gen-'));
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe('generate command', () => {
  it('--help names the image files', async () => {
    const r = await run(['--help']);
    expect(r.code).toBe(0);
    expect(r.out).toBe(GENERATE_HELP);
    expect(r.out).toMatch(/images\/NNNN\.png/);
    expect(r.out).toMatch(/0000\.png/);
  });

  it('a 2-step run writes images/0000.png and generation.json, and resumes', async () => {
    const out = join(tmp, 'two');
    const args = ['--prompt', 'a red cat and a blue dog', '--steps', '2', '--out', out, '--quiet'];
    const r = await run(args);
    expect(r.code, r.err).toBe(0);
    expect(r.err).toMatch(/bundled tiny pipeline/);
    const png = readPngRaw(join(out, 'images', '0000.png'));
    expect([png.width, png.height, png.channels]).toEqual([256, 256, 3]);
    const json = JSON.parse(readFileSync(join(out, 'generation.json'), 'utf8'));
    expect(json.steps).toBe(2);
    expect(json.timesteps).toEqual([999, 499]);
    expect(json.seed).toBe(4307);
    expect(json.prompts).toHaveLength(1);
    const p = json.prompts[0];
    expect(p.prompt).toBe('a red cat and a blue dog');
    expect(p.image).toBe('images/0000.png');
    expect(p.phrases).toEqual(['a red cat', 'a blue dog']);
    expect(p.reweighting).toBe(true);
    expect(p.steps.map((s: { t: number }) => s.t)).toEqual([999, 499]);
    for (const s of p.steps as { weights: number[]; weight_prompt: string; elbo: number[] }[]) {
      expect(s.weights).toHaveLength(2);
      expect(s.elbo).toHaveLength(2);
      // min-max normalised: the best aligned phrase gets 1.0, the worst the strength 1.2.
      expect([...s.weights].sort()).toEqual([1, 1.2000000476837158]);
      expect(s.weight_prompt).toMatch(/^\(a red cat\)[\d.]+ and \(a blue dog\)[\d.]+$/);
    }
    const again = await run(args);
    expect(again.code, again.err).toBe(0);
    expect(again.err).toMatch(/1 prompt\(s\) already done, skipped/);
    expect(readdirSync(join(out, 'images'))).toEqual(['0000.png']);
    // Other settings into the same folder: refused rather than mixed.
    const other = await run([...args.slice(0, -1), '--seed', '1', '--quiet']);
    expect(other.code).toBe(1);
    expect(other.err).toMatch(/other settings.*seed/);
  });

  it('--prompts: indices name the images; a prompt without noun phrase runs without reweighting and says so', async () => {
    const out = join(tmp, 'list');
    const file = join(tmp, 'prompts.txt');
    writeFileSync(file, 'very beautiful\n\na cat\n');
    const r = await run(['--prompts', file, '--steps', '1', '--out', out, '--quiet']);
    expect(r.code, r.err).toBe(0);
    expect(r.err).toMatch(/prompt 1\/2: no noun phrase found in "very beautiful": generating without ELBO reweighting/);
    expect(r.err).toMatch(/prompt 2\/2: only one noun phrase/);
    expect(readdirSync(join(out, 'images')).sort()).toEqual(['0000.png', '0001.png']);
    const json = JSON.parse(readFileSync(join(out, 'generation.json'), 'utf8'));
    expect(json.prompts.map((p: { prompt: string }) => p.prompt)).toEqual(['very beautiful', 'a cat']);
    expect(json.prompts[0].phrases).toEqual([]);
    expect(json.prompts[0].reweighting).toBe(false);
    expect(json.prompts[0].note).toMatch(/without ELBO reweighting/);
    expect(json.prompts[0].steps[0]).toMatchObject({ t: 999, weights: [], weight_prompt: 'very beautiful', elbo: null });
    expect(json.prompts[1].steps[0]).toMatchObject({ weights: [1], weight_prompt: '(a cat)1.0', elbo: null });
  });

  it('--latent: reads latent_init and checks its shape', async () => {
    const good = join(tmp, 'latent.safetensors');
    const bad = join(tmp, 'latent-bad.safetensors');
    const noName = join(tmp, 'latent-noname.safetensors');
    const data = new Float32Array(4 * 32 * 32).map((_, i) => Math.sin(i));
    await writeSafetensors(good, { latent_init: { dtype: 'F32', shape: [1, 4, 32, 32], data } });
    await writeSafetensors(bad, { latent_init: { dtype: 'F32', shape: [1, 4, 16, 16], data: data.subarray(0, 1024) } });
    await writeSafetensors(noName, { z: { dtype: 'F32', shape: [1, 4, 32, 32], data } });
    const badRun = await run(['--prompt', 'a cat', '--latent', bad, '--out', join(tmp, 'lat-bad'), '--quiet']);
    expect(badRun.code).toBe(1);
    expect(badRun.err).toMatch(/latent_init has shape \[1, 4, 16, 16\], expected \[1, 4, 32, 32\]/);
    const noNameRun = await run(['--prompt', 'a cat', '--latent', noName, '--out', join(tmp, 'lat-noname'), '--quiet']);
    expect(noNameRun.err).toMatch(/"latent_init" not found \(found: z\)/);
    const ok = await run(['--prompt', 'a cat', '--latent', good, '--steps', '1', '--no-elbo', '--out', join(tmp, 'lat-ok'), '--quiet']);
    expect(ok.code, ok.err).toBe(0);
    const json = JSON.parse(readFileSync(join(tmp, 'lat-ok', 'generation.json'), 'utf8'));
    expect(json.seed).toBeNull();
    expect(json.latent).toBe(good);
    expect(json.no_elbo).toBe(true);
  });

  it('rejects bad input with a clear message before loading the model', async () => {
    const empty = join(tmp, 'empty.txt');
    writeFileSync(empty, '\n  \n');
    const cases: [string[], RegExp][] = [
      [['--prompts', empty, '--out', join(tmp, 'x')], /--prompts .*empty\.txt: the file has no prompts/],
      [['--prompts', join(tmp, 'missing.txt'), '--out', join(tmp, 'x')], /--prompts .*missing\.txt: cannot read \(ENOENT\)/],
      [['--prompt', 'a (red cat and a dog', '--out', join(tmp, 'x')], /--prompt "a \(red cat and a dog": .*at position 2/],
      [['--prompt', 'a red cat) and a dog', '--out', join(tmp, 'x')], /unmatched "\)" at position 9/],
      [['--prompt', '("a", "b").blend(1,1)', '--out', join(tmp, 'x')], /blend\(\) at position 10/],
      [['--prompt', 'a cat', '--prompts', empty, '--out', join(tmp, 'x')], /either --prompt or --prompts/],
      [['--out', join(tmp, 'x')], /--prompt TEXT or --prompts FILE is required/],
      [['--prompt', 'a cat'], /--out DIR is required/],
      [['--prompt', 'a cat', '--steps', '0', '--out', join(tmp, 'x')], /--steps: expected an integer in \[1, 1000\], got "0"/],
      [['--prompt', 'a cat', '--steps', 'many', '--out', join(tmp, 'x')], /--steps: expected an integer/],
      [['--prompt', 'a cat', '--elbo-strength', '0', '--out', join(tmp, 'x')], /--elbo-strength: expected a positive number/],
      [['--prompt', 'a cat', '--seed', '1.5', '--out', join(tmp, 'x')], /--seed: expected a non-negative integer/],
      [['--prompt', 'a cat', '--latent', join(tmp, 'nope.safetensors'), '--out', join(tmp, 'x')], /--latent .*nope\.safetensors: file not found/],
      [['--prompt', 'a cat', 'extra', '--out', join(tmp, 'x')], /unexpected argument "extra"/],
    ];
    for (const [args, msg] of cases) {
      const r = await run(args);
      expect(r.code, args.join(' ')).toBe(1);
      expect(r.err, args.join(' ')).toMatch(msg);
    }
    const prompts = join(tmp, 'bad-prompts.txt');
    writeFileSync(prompts, 'a cat\n\na "dog\n');
    const r = await run(['--prompts', prompts, '--out', join(tmp, 'x')]);
    expect(r.err).toMatch(/bad-prompts\.txt line 3 \(prompt index 1\) "a \\"dog": .*unmatched quote .* at position 2/);
    expect(existsSync(join(tmp, 'x', 'generation.json'))).toBe(false);
  });
});
