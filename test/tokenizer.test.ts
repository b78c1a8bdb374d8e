import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CLIPTokenizer, basicClean } from '../src/models/tokenizer.ts';

const ROOT = path.resolve(new URL('..', import.meta.url).pathname);

interface Case {
  prompt: string;
  input_ids: number[];
  attention_mask: number[];
  ids_untruncated: number[];
  tokens: string[];
  truncated: boolean;
}

interface Golden {
  bos_token_id: number;
  eos_token_id: number;
  pad_token_id: number;
  model_max_length: number;
  cases: Case[];
}

const SETS = [
  { name: 'sd15-tiny', tokenizer: 'weights/sd15-tiny/tokenizer', golden: 'test/fixtures/sd15-tiny/references/tokenizer.json' },
  { name: 'sd21-tiny', tokenizer: 'test/fixtures/sd21-tiny/tokenizer', golden: 'test/fixtures/sd21-tiny/references/tokenizer.json' },
];

for (const set of SETS) {
  describe(`CLIPTokenizer ${set.name}`, () => {
    const tok = CLIPTokenizer.fromFolder(path.join(ROOT, set.tokenizer));
    const golden = JSON.parse(fs.readFileSync(path.join(ROOT, set.golden), 'utf8')) as Golden;

    it('has the golden special ids', () => {
      expect(golden.cases.length).toBe(66);
      expect(tok.bosId).toBe(golden.bos_token_id);
      expect(tok.eosId).toBe(golden.eos_token_id);
      expect(tok.padId).toBe(golden.pad_token_id);
      expect(tok.maxLength).toBe(golden.model_max_length);
    });

    golden.cases.forEach((c, i) => {
      it(`case ${i}: ${JSON.stringify(c.prompt).slice(0, 60)}`, () => {
        expect(tok.tokenize(c.prompt)).toEqual(c.tokens);
        expect(tok.encode(c.prompt)).toEqual(c.ids_untruncated);
        expect(tok.encodeFragment(c.prompt)).toEqual(c.ids_untruncated.slice(1, -1));
        const out = tok.call(c.prompt);
        expect(out.inputIds).toEqual(c.input_ids);
        expect(out.attentionMask).toEqual(c.attention_mask);
        expect(out.truncated).toBe(c.truncated);
      });
    });
  });
}

describe('CLIPTokenizer details', () => {
  it('BasicTokenizer clean-up', () => {
    expect(basicClean('  A\tB\u200bC\u00a0D\u3000e\u0007 ')).toBe('a bc d e');
    expect(basicClean('中文x')).toBe('中 文 x');
    expect(basicClean('e\u0301')).toBe('\u00e9');
  });

  let dir = '';
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tok-test-'));
  });
  afterAll(() => {
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('a missing vocab.json or merges.txt names the file', () => {
    expect(() => CLIPTokenizer.fromFolder(dir)).toThrow(`${path.join(dir, 'vocab.json')}: tokenizer file not found`);
    fs.writeFileSync(path.join(dir, 'vocab.json'), '{"a</w>": 0}');
    expect(() => CLIPTokenizer.fromFolder(dir)).toThrow(`${path.join(dir, 'merges.txt')}: tokenizer file not found`);
    fs.writeFileSync(path.join(dir, 'merges.txt'), '#version: 0.2\n');
    expect(() => CLIPTokenizer.fromFolder(dir)).toThrow(/bos token "<\|startoftext\|>" is not in the vocabulary/);
    fs.writeFileSync(path.join(dir, 'vocab.json'), '{"a</w>": ');
    expect(() => CLIPTokenizer.fromFolder(dir)).toThrow(`${path.join(dir, 'vocab.json')}: invalid JSON`);
  });
});

describe('clip-tiny tokenizer', () => {
  it('gives the ids of clip.safetensors (padded to the longest prompt with 49407)', async () => {
    const { SafeTensorsFile } = await import('../src/io/safetensors.ts');
    const dir = path.join(ROOT, 'test/fixtures/clip-tiny');
    const tok = CLIPTokenizer.fromFolder(dir);
    const meta = JSON.parse(fs.readFileSync(path.join(dir, 'references/clip.json'), 'utf8')) as { prompts: string[] };
    const st = SafeTensorsFile.open(path.join(dir, 'references/clip.safetensors'));
    const [n, len] = st.info('input_ids').shape as [number, number];
    const ids = st.readI64('input_ids');
    const mask = st.readI64('attention_mask');
    st.close();
    expect(n).toBe(meta.prompts.length);
    meta.prompts.forEach((p, i) => {
      const enc = tok.encode(p);
      const padded = [...enc, ...new Array<number>(len - enc.length).fill(tok.padId)];
      expect(ids.slice(i * len, (i + 1) * len)).toEqual(padded);
      expect(mask.slice(i * len, (i + 1) * len)).toEqual(padded.map((_, j) => (j < enc.length ? 1 : 0)));
    });
  });
});
