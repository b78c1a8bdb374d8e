// compel-style prompt weighting and run_generation.py's weight helpers, checked against the
// golden compel references (sd15-tiny, sd21-tiny), compel's own parser unit tests
// (damian0815/compel test/test_prompt_parser.py, expectations restated here) and the
// generation run (sd15-tiny/generation).
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import { SafeTensorsFile } from '../src/io/safetensors.js';
import {
  PromptSyntaxError,
  applyPromptWeights,
  blendDownWeighted,
  buildWeightedPrompt,
  downWeightLerp,
  elboWeights,
  elboWeightsUnrounded,
  emptyPromptIds,
  encodeWeightedPrompt,
  parseWeightedPrompt,
  planWeightedTokens,
  powInt,
  pythonFloatRepr,
  type FragmentTokenizer,
  type WeightedFragment,
} from '../src/elbo/promptWeighting.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const fixture = (p: string): string => `${root}test/fixtures/${p}`;

interface CompelCase {
  prompt: string;
  fragments: WeightedFragment[][];
  token_ids: number[];
  per_token_weights: number[];
  mask: number[];
  tensor: string;
}
const PIPELINES = [
  { name: 'sd15-tiny', hidden: 32, tokenizerDir: `${root}weights/sd15-tiny/tokenizer`, encoderFile: `${root}weights/sd15-tiny/text_encoder/model.safetensors`, act: 'quick_gelu' as const },
  { name: 'sd21-tiny', hidden: 40, tokenizerDir: fixture('sd21-tiny/tokenizer'), encoderFile: fixture('sd21-tiny/text_encoder/model.safetensors'), act: 'gelu' as const },
];
function compelCases(pipeline: string): CompelCase[] {
  return (JSON.parse(readFileSync(fixture(`${pipeline}/references/compel.json`), 'utf8')) as { cases: CompelCase[] }).cases;
}
function readTensors(path: string): Map<string, Float32Array> {
  const f = SafeTensorsFile.open(path);
  try {
    return new Map(f.names().filter((n) => f.info(n).dtype === 'F32').map((n) => [n, f.readF32(n)]));
  } finally {
    f.close();
  }
}
function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}
function maxAbs(a: Float32Array): number {
  let m = 0;
  for (const x of a) m = Math.max(m, Math.abs(x));
  return m;
}

// The real tokenizer (src/models/tokenizer.ts) is written elsewhere; tests that need it are
// skipped until it exists.
const tokenizerModule = `${root}src/models/tokenizer.ts`;
const haveTokenizer = existsSync(tokenizerModule);
async function loadTokenizer(dir: string): Promise<FragmentTokenizer> {
  const mod = (await import(tokenizerModule)) as { CLIPTokenizer: { fromFolder(dir: string): FragmentTokenizer | Promise<FragmentTokenizer> } };
  return await mod.CLIPTokenizer.fromFolder(dir);
}

/** Whitespace tokenizer over a fixed vocabulary: enough to test planning without BPE. */
function wordTokenizer(vocab: Record<string, number>, opts: { pad?: number; maxLength?: number } = {}): FragmentTokenizer {
  return {
    bosId: 49406,
    eosId: 49407,
    padId: opts.pad ?? 49407,
    maxLength: opts.maxLength ?? 77,
    encodeFragment(text: string): number[] {
      return text
        .split(/\s+/)
        .filter((w) => w.length > 0)
        .map((w) => {
          const id = vocab[w];
          if (id === undefined) throw new Error(`test vocab lacks ${JSON.stringify(w)}`);
          return id;
        });
    },
  };
}
const GEN_VOCAB = { a: 320, red: 736, cat: 2368, and: 537, blue: 1746, dog: 1929, on: 525, green: 1901, sofa: 15723 };

// ------------------------------------------------------------------------------------------
describe('parseWeightedPrompt', () => {
  for (const p of PIPELINES) {
    it(`gives compel's fragments for every prompt of ${p.name}/references/compel.json`, () => {
      for (const c of compelCases(p.name)) {
        expect(c.fragments).toHaveLength(1); // one conjunction term
        expect(parseWeightedPrompt(c.prompt), c.prompt).toEqual(c.fragments[0]);
      }
    });
  }

  it('merges adjacent fragments of equal weight, as compel does for run_generation prompts', () => {
    expect(parseWeightedPrompt('(a red cat)1.0 and (a blue dog)1.2 on (a green sofa)1.09')).toEqual([
      { text: 'a red cat and', weight: 1 },
      { text: 'a blue dog', weight: 1.2 },
      { text: 'on', weight: 1 },
      { text: 'a green sofa', weight: 1.09 },
    ]);
    expect(parseWeightedPrompt('(a red cat)1.2000000476837158 and (a blue dog)1.0 on (a green sofa)1.100000023841858')).toEqual([
      { text: 'a red cat', weight: 1.2000000476837158 },
      { text: 'and a blue dog on', weight: 1 },
      { text: 'a green sofa', weight: 1.100000023841858 },
    ]);
  });

  // Expectations from compel's test/test_prompt_parser.py (the swap/blend/and/lora cases are
  // not ported). Expected texts there pass through Fragment(), which unescapes \( \) \".
  const compelOwn: Array<[string, Array<[string, number]>]> = [
    ['fire flames', [['fire flames', 1]]],
    ['fire (flames)', [['fire flames', 1]]],
    ['fire, flames', [['fire, flames', 1]]],
    ['fire, flames , fire', [['fire, flames , fire', 1]]],
    ['cat hot-dog eating', [['cat hot-dog eating', 1]]],
    ['Dalí', [['Dalí', 1]]],
    ['(flames)0.5', [['flames', 0.5]]],
    ['(flames).attend(0.5)', [['flames', 0.5]]],
    ['flames.attend(0.5)', [['flames', 0.5]]],
    ['"flames".attend(0.5)', [['flames', 0.5]]],
    ['(fire flames)0.5', [['fire flames', 0.5]]],
    ['(flames)+', [['flames', 1.1]]],
    ['flames+', [['flames', 1.1]]],
    ['"flames"+', [['flames', 1.1]]],
    ['flames.attend(+)', [['flames', 1.1]]],
    ['(flames)-', [['flames', 0.9]]],
    ['flames-', [['flames', 0.9]]],
    ['fire (flames)0.5', [['fire', 1], ['flames', 0.5]]],
    ['fire "flames".attend(0.5)', [['fire', 1], ['flames', 0.5]]],
    ['(flames)++', [['flames', 1.2100000000000002]]],
    ['(flames)--', [['flames', 0.81]]],
    ['(flowers)--- flames+++', [['flowers', 0.7290000000000001], ['flames', 1.3310000000000004]]],
    ['(pretty flowers)+, the flames are too hot', [['pretty flowers', 1.1], [', the flames are too hot', 1]]],
    ['flowers fire++ flames', [['flowers', 1], ['fire', 1.2100000000000002], ['flames', 1]]],
    ['a badly formed +test prompt', [['a badly formed +test prompt', 1]]],
    ['a badly (formed test prompt', [['a badly (formed test prompt', 1]]],
    ['a badly (formed +test )prompt', [['a badly formed +test prompt', 1]]],
    ['(((a badly (formed +test )prompt', [['(((a badly formed +test prompt', 1]]],
    ['(a (ba)dly (f)ormed +test prompt', [['(a ba dly f ormed +test prompt', 1]]],
    ['hamburger ((kaiser roll))', [['hamburger kaiser roll', 1]]],
    ['fire (flames (trees)1.5)2.0', [['fire', 1], ['flames', 2], ['trees', 3]]],
    ['mountain \\(man\\)', [['mountain (man)', 1]]],
    ['mountain (\\(man)\\)', [['mountain (man )', 1]]],
    ['mountain (\\(man\\))+', [['mountain', 1], ['(man)', 1.1]]],
    ['\\"mountain\\" (\\(man\\))+', [['"mountain"', 1], ['(man)', 1.1]]],
    ['(\\"mountain\\")+ (\\(man\\))+', [['"mountain" (man)', 1.1]]],
    ['hairy ((\\(man\\))1.1 "mountain")+', [['hairy', 1], ['(man)', 1.1 * 1.1], ['mountain', 1.1]]],
    ['hairy ("mountain, man")+', [['hairy', 1], ['mountain , man', 1.1]]],
    ['hairy ("mountain, man" with a beard+)+', [['hairy', 1], ['mountain , man with a', 1.1], ['beard', 1.1 * 1.1]]],
    ['hairy ("mountain, \\"man\\"" with a (beard)2.0)+', [['hairy', 1], ['mountain , "man" with a', 1.1], ['beard', 1.1 * 2.0]]],
    ['hairy ("mountain, \\"man" \\(with a (beard)2.0)+', [['hairy', 1], ['mountain , "man (with a', 1.1], ['beard', 1.1 * 2.0]]],
    [' ("mountain, \\"man" with\\) a (beard)2.0)+ hairy', [['mountain , "man with) a', 1.1], ['beard', 1.1 * 2.0], ['hairy', 1]]],
    ['hairy\\(\\( ("mountain, \\"man" with a (beard)2.0)+', [['hairy((', 1], ['mountain , "man with a', 1.1], ['beard', 1.1 * 2.0]]],
  ];
  it("reproduces compel's own parser tests", () => {
    for (const [prompt, expected] of compelOwn) {
      expect(parseWeightedPrompt(prompt), prompt).toEqual(expected.map(([text, weight]) => ({ text, weight })));
    }
  });

  it('handles the remaining corners as compel does', () => {
    const cases: Array<[string, Array<[string, number]>]> = [
      ['', [['', 1]]],
      [' \t\n ', [['', 1]]],
      ['a cat++ and a dog-', [['a', 1], ['cat', 1.2100000000000002], ['and a', 1], ['dog', 0.9]]],
      ['((a)1.2)1.5 b', [['a', 1.5 * 1.2], ['b', 1]]],
      ['(cat) 1.3', [['cat 1.3', 1]]], // whitespace before the weight: no weight
      ['red,cat++', [['red,cat++', 1]]], // compel's free word swallows the operator
      ['c++ code', [['c', 1.2100000000000002], ['code', 1]]],
      ['(a, b.c)1.1', [['a , b . c', 1.1]]], // punctuation inside groups becomes separate words
      ['x   y\t\tz', [['x y z', 1]]], // whitespace normalised
      ['(x)+++ y', [['x', 1.3310000000000004], ['y', 1]]],
      ['(x)1.', [['x', 1]]],
      ['(x).5 y', [['x', 0.5], ['y', 1]]],
      ['a \\- b \\, c', [['a \\- b \\, c', 1]]], // escapes other than ( ) " keep their backslash
      ['a (  ) b', [['a b', 1]]],
    ];
    for (const [prompt, expected] of cases) {
      expect(parseWeightedPrompt(prompt), prompt).toEqual(expected.map(([text, weight]) => ({ text, weight })));
    }
    expect(parseWeightedPrompt('()')).toEqual([]);
  });

  it('computes ++/-- weights with correctly rounded pow, as Python does (V8 differs at 1.1**4)', () => {
    expect(powInt(1.1, 4)).toBe(1.4641000000000004);
    expect(powInt(0.9, 4)).toBe(0.6561);
    expect(parseWeightedPrompt('cat++++')).toEqual([{ text: 'cat', weight: 1.4641000000000004 }]);
    expect(parseWeightedPrompt('(cat)----')).toEqual([{ text: 'cat', weight: 0.6561 }]);
    for (let n = 0; n < 40; n++) expect(powInt(2, n)).toBe(2 ** n);
  });

  function syntaxError(prompt: string, options?: { strict: boolean }): PromptSyntaxError {
    try {
      parseWeightedPrompt(prompt, options);
    } catch (e) {
      expect(e).toBeInstanceOf(PromptSyntaxError);
      return e as PromptSyntaxError;
    }
    throw new Error(`expected ${JSON.stringify(prompt)} to throw`);
  }

  it('rejects what compel rejects, naming the position', () => {
    const e = syntaxError('a cat\x0bon a mat');
    expect(e.position).toBe(5);
    expect(e.message).toContain('position 5');
    expect(syntaxError('(a (red\x0c cat)1.2)1.1').message).toContain('position 7');
  });

  it('rejects compel features that are not ported, naming the position', () => {
    expect(syntaxError('a cat.swap(dog) eating').message).toMatch(/\.swap\(\).*position 2/);
    expect(syntaxError('(mountain, man).blend(0.5, 0.5)').message).toMatch(/\.blend\(\) at position 15/);
    expect(syntaxError('("fire", "flames").and()').message).toMatch(/\.and\(\) at position 18/);
    expect(syntaxError('mountain man withLora(hairy, 0.5)').message).toContain('position 13');
    // Not an operator when the syntax is incomplete: literal text, as in compel.
    expect(parseWeightedPrompt('a cat.swap dog')).toEqual([{ text: 'a cat.swap dog', weight: 1 }]);
  });

  it('in strict mode names the position of a ( ) or " that compel would keep as text', () => {
    expect(syntaxError('a (red cat', { strict: true }).position).toBe(2);
    expect(syntaxError('a (red cat', { strict: true }).message).toContain('position 2');
    expect(syntaxError('a red cat) and', { strict: true }).position).toBe(9);
    expect(syntaxError('a "red cat', { strict: true }).position).toBe(2);
    expect(syntaxError('(a (red cat)1.2', { strict: true }).position).toBe(0);
    expect(syntaxError('x (a - b)1.2', { strict: true }).position).toBe(2);
    // Escaped parentheses and well-formed groups are fine.
    expect(parseWeightedPrompt('a \\(red\\) (cat)1.2', { strict: true })).toEqual([
      { text: 'a (red)', weight: 1 },
      { text: 'cat', weight: 1.2 },
    ]);
  });

  it('stays fast on deep nesting', () => {
    const deep = `${'('.repeat(60)}cat${')1.01'.repeat(60)}`;
    const t0 = performance.now();
    const r = parseWeightedPrompt(deep);
    expect(performance.now() - t0).toBeLessThan(2000);
    expect(r).toHaveLength(1);
    expect(r[0]!.weight).toBeCloseTo(1.01 ** 60, 12);
  });
});

// ------------------------------------------------------------------------------------------
describe('planWeightedTokens (word tokenizer)', () => {
  it('concatenates fragments, wraps in bos/eos, pads, and weights per token in float32', () => {
    const tok = wordTokenizer(GEN_VOCAB, { pad: 0 });
    const plan = planWeightedTokens(parseWeightedPrompt('(a red cat)1.2 and a blue dog on (a green sofa)0.8'), tok);
    expect(plan.ids.slice(0, 14)).toEqual([49406, 320, 736, 2368, 537, 320, 1746, 1929, 525, 320, 1901, 15723, 49407, 0]);
    expect(plan.ids).toHaveLength(77);
    expect(plan.ids.slice(13).every((x) => x === 0)).toBe(true);
    expect(plan.weights.slice(0, 14)).toEqual([1, ...Array(3).fill(Math.fround(1.2)), 1, 1, 1, 1, 1, ...Array(3).fill(Math.fround(0.8)), 1, 1]);
    expect(plan.fragmentOfToken.slice(0, 14)).toEqual([-1, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, -1, -1]);
    expect(plan.mask).toEqual(Array(77).fill(1));
    expect(plan.truncated).toBe(false);
    expect(plan.downWeighted).toHaveLength(1);
    const d = plan.downWeighted[0]!;
    expect([d.fragmentIndex, d.weight, d.start, d.end]).toEqual([2, 0.8, 9, 11]);
    expect(d.mask).toEqual(Array.from({ length: 77 }, (_, i) => (i >= 9 && i <= 11 ? 0 : 1)));
    expect(d.lerpWeight).toBeCloseTo(Math.tan(0.1 * Math.PI), 15);
  });

  it('plans the empty prompt and an empty fragment list as [bos, eos, pad...]', () => {
    const tok = wordTokenizer(GEN_VOCAB);
    for (const frags of [parseWeightedPrompt(''), []]) {
      const plan = planWeightedTokens(frags, tok);
      expect(plan.ids).toEqual(emptyPromptIds(tok));
      expect(plan.weights).toEqual(Array(77).fill(1));
      expect(plan.downWeighted).toEqual([]);
    }
  });

  it("truncates to maxLength - 2 tokens and reproduces compel's token ranges at the cut", () => {
    const vocab: Record<string, number> = {};
    for (let i = 0; i < 100; i++) vocab[`w${i}`] = 1000 + i;
    const tok = wordTokenizer(vocab);
    const words = (a: number, b: number): string => Array.from({ length: b - a }, (_, i) => `w${a + i}`).join(' ');
    // 74 words, then a 3-word fragment cut after its first word, then a fragment cut entirely.
    const frags = [
      { text: words(0, 74), weight: 1 },
      { text: words(74, 77), weight: 0.5 },
      { text: words(77, 80), weight: 0.7 },
    ];
    const plan = planWeightedTokens(frags, tok);
    expect(plan.truncated).toBe(true);
    expect(plan.ids[75]).toBe(1074);
    expect(plan.ids[76]).toBe(49407);
    expect(plan.weights[75]).toBe(0.5);
    expect(plan.weights[76]).toBe(1);
    // compel's range for the cut fragment runs to the last position, so its mask also hides the eos.
    expect(plan.downWeighted.map((d) => [d.fragmentIndex, d.start, d.end])).toEqual([[1, 75, 76]]);
    expect(plan.downWeighted[0]!.mask.slice(74)).toEqual([1, 0, 0]);
  });

  it('gives no down-weight entry for a fragment without tokens', () => {
    const tok = wordTokenizer(GEN_VOCAB);
    const plan = planWeightedTokens([{ text: 'a cat', weight: 1 }, { text: '', weight: 0.5 }, { text: 'dog', weight: 0.5 }], tok);
    expect(plan.downWeighted.map((d) => [d.fragmentIndex, d.start, d.end])).toEqual([[2, 3, 3]]);
  });
});

// ------------------------------------------------------------------------------------------
describe.skipIf(!haveTokenizer)('planWeightedTokens (CLIP tokenizer)', () => {
  for (const p of PIPELINES) {
    it(`gives compel's ids, per-token weights and mask for every prompt of ${p.name}`, async () => {
      const tok = await loadTokenizer(p.tokenizerDir);
      for (const c of compelCases(p.name)) {
        const plan = planWeightedTokens(parseWeightedPrompt(c.prompt), tok);
        expect(plan.ids, c.prompt).toEqual(c.token_ids);
        expect(plan.weights, c.prompt).toEqual(c.per_token_weights);
        expect(plan.mask, c.prompt).toEqual(c.mask);
      }
    });
  }

  it('finds the down-weighted fragments of compel.json case 1 and 3', async () => {
    const tok = await loadTokenizer(PIPELINES[0]!.tokenizerDir);
    const p1 = planWeightedTokens(parseWeightedPrompt('a (red cat)1.3 and a (blue dog)0.8'), tok);
    expect(p1.downWeighted.map((d) => [d.fragmentIndex, d.start, d.end])).toEqual([[3, 6, 7]]);
    const p3 = planWeightedTokens(parseWeightedPrompt('a cat++ and a dog-'), tok);
    expect(p3.downWeighted.map((d) => [d.fragmentIndex, d.start, d.end])).toEqual([[3, 5, 5]]);
  });
});

// ------------------------------------------------------------------------------------------
describe('applyPromptWeights on the golden tensors', () => {
  for (const p of PIPELINES) {
    it(`${p.name}: empty_z + (z - empty_z) * 1 reproduces compel.{00,04,05,06} bit for bit`, () => {
      const compel = readTensors(fixture(`${p.name}/references/compel.safetensors`));
      const te = readTensors(fixture(`${p.name}/references/text_encoder.safetensors`));
      const prompts = (JSON.parse(readFileSync(fixture(`${p.name}/references/text_encoder.json`), 'utf8')) as { prompts: string[] }).prompts;
      const emptyZ = compel.get('empty_z')!;
      const lhs = te.get('last_hidden_state')!;
      const n = 77 * p.hidden;
      const ones = Array<number>(77).fill(1);
      const cases = compelCases(p.name);
      let checked = 0;
      cases.forEach((c, i) => {
        const row = prompts.indexOf(c.prompt);
        if (row < 0) return;
        const z = lhs.slice(row * n, (row + 1) * n);
        const out = applyPromptWeights(z, emptyZ, ones, p.hidden);
        expect(Array.from(out), c.prompt).toEqual(Array.from(compel.get(c.tensor)!));
        if (i === 0) expect(Array.from(z)).toEqual(Array.from(compel.get('raw.00')!));
        checked++;
      });
      expect(checked).toBe(4);
    });
  }

  it('reproduces the generation run: stepK.weight_prompt_emb from text_emb, neg_text_emb = empty_z and the weights', () => {
    const gen = JSON.parse(readFileSync(fixture('sd15-tiny/generation/generation.json'), 'utf8')) as {
      prompt: string;
      phrases: string[];
      steps: Array<{ weights: number[]; weight_prompt: string }>;
    };
    const t = readTensors(fixture('sd15-tiny/generation/generation.safetensors'));
    const emptyZ = readTensors(fixture('sd15-tiny/references/compel.safetensors')).get('empty_z')!;
    expect(Array.from(t.get('neg_text_emb')!)).toEqual(Array.from(emptyZ));
    const textEmb = t.get('text_emb')!; // = empty_z + (z - empty_z) * 1, within an ulp of z
    const tok = wordTokenizer(GEN_VOCAB);
    gen.steps.forEach((step, k) => {
      const plan = planWeightedTokens(parseWeightedPrompt(step.weight_prompt), tok);
      const out = applyPromptWeights(textEmb, emptyZ, plan.weights, 32);
      const ref = t.get(`step${k}.weight_prompt_emb`)!;
      expect(maxAbsDiff(out, ref) / maxAbs(ref), `step ${k}`).toBeLessThan(1e-6);
    });
  });

  it('validates shapes', () => {
    expect(() => applyPromptWeights(new Float32Array(10), new Float32Array(10), [1, 1], 4)).toThrow(/z must have 2\*4 = 8 values, got 10/);
  });
});

// ------------------------------------------------------------------------------------------
describe('blendDownWeighted', () => {
  it("normalises [1, tan((1-w)pi/2)] in float32 and sums in order, as compel's apply_embedding_weights", () => {
    const base = Float32Array.from([1, 2, 3, -4]);
    const without = Float32Array.from([0.5, 0, 3, 4]);
    const lerp = downWeightLerp(0.5); // tan(pi/4) = 1 (up to rounding): halfway
    expect(lerp).toBeCloseTo(1, 15);
    const out = blendDownWeighted(base, [without], [lerp]);
    expect(Array.from(out)).toEqual([0.75, 1, 3, 0]);
    // Two fragments, against a float64 evaluation.
    const w2 = Float32Array.from([9, 9, 9, 9]);
    const l = [downWeightLerp(0.8), downWeightLerp(0.3)];
    const got = blendDownWeighted(base, [without, w2], l);
    const s = 1 + l[0]! + l[1]!;
    for (let i = 0; i < 4; i++) expect(got[i]).toBeCloseTo((base[i]! + l[0]! * without[i]! + l[1]! * w2[i]!) / s, 5);
    expect(Array.from(blendDownWeighted(base, [], []))).toEqual(Array.from(base));
  });

  it('clamps the weight at 1e-5 like compel (weight 0 does not give an infinite lerp)', () => {
    expect(downWeightLerp(0)).toBe(Math.tan(((1 - 1e-5) * Math.PI) / 2));
    expect(Number.isFinite(downWeightLerp(-3))).toBe(true);
  });
});

// ------------------------------------------------------------------------------------------
// A float64 CPU CLIP text encoder (transformers' CLIPTextModel with an attention mask), only to
// check the down-weighting path (compel.01, compel.03) end to end.
function cpuClipEncoder(file: string, act: 'quick_gelu' | 'gelu', hidden: number, heads: number) {
  const w = readTensors(file);
  const get = (n: string): Float32Array => {
    const x = w.get(`text_model.${n}`);
    if (!x) throw new Error(`missing ${n}`);
    return x;
  };
  let layers = 0;
  while (w.has(`text_model.encoder.layers.${layers}.layer_norm1.weight`)) layers++;
  const erf = (x: number): number => {
    // Abramowitz-Stegun 7.1.26 is too coarse; use the series / continued fraction pair.
    const ax = Math.abs(x);
    let r: number;
    if (ax < 2.5) {
      let sum = ax;
      let term = ax;
      for (let n = 1; n < 60; n++) {
        term *= (-ax * ax) / n;
        sum += term / (2 * n + 1);
      }
      r = (2 / Math.sqrt(Math.PI)) * sum;
    } else {
      let f = 0;
      for (let n = 60; n >= 1; n--) f = (n / 2) / (ax + f);
      r = 1 - Math.exp(-ax * ax) / (Math.sqrt(Math.PI) * (ax + f));
    }
    return x < 0 ? -r : r;
  };
  const actFn = act === 'quick_gelu' ? (x: number) => x / (1 + Math.exp(-1.702 * x)) : (x: number) => 0.5 * x * (1 + erf(x / Math.SQRT2));
  const ln = (x: Float64Array, g: Float32Array, b: Float32Array, T: number): Float64Array => {
    const out = new Float64Array(x.length);
    for (let t = 0; t < T; t++) {
      let mean = 0;
      for (let k = 0; k < hidden; k++) mean += x[t * hidden + k]!;
      mean /= hidden;
      let v = 0;
      for (let k = 0; k < hidden; k++) v += (x[t * hidden + k]! - mean) ** 2;
      v /= hidden;
      const inv = 1 / Math.sqrt(v + 1e-5);
      for (let k = 0; k < hidden; k++) out[t * hidden + k] = (x[t * hidden + k]! - mean) * inv * g[k]! + b[k]!;
    }
    return out;
  };
  const lin = (x: Float64Array, W: Float32Array, b: Float32Array, T: number, inF: number, outF: number): Float64Array => {
    const out = new Float64Array(T * outF);
    for (let t = 0; t < T; t++) {
      for (let o = 0; o < outF; o++) {
        let s = b[o]!;
        for (let i = 0; i < inF; i++) s += x[t * inF + i]! * W[o * inF + i]!;
        out[t * outF + o] = s;
      }
    }
    return out;
  };
  return async (ids: number[], mask: number[]): Promise<Float32Array> => {
    const T = ids.length;
    const tokE = get('embeddings.token_embedding.weight');
    const posE = get('embeddings.position_embedding.weight');
    let x = new Float64Array(T * hidden);
    for (let t = 0; t < T; t++) for (let k = 0; k < hidden; k++) x[t * hidden + k] = tokE[ids[t]! * hidden + k]! + posE[t * hidden + k]!;
    const hd = hidden / heads;
    for (let l = 0; l < layers; l++) {
      const P = (n: string): Float32Array => get(`encoder.layers.${l}.${n}`);
      const h = ln(x, P('layer_norm1.weight'), P('layer_norm1.bias'), T);
      const q = lin(h, P('self_attn.q_proj.weight'), P('self_attn.q_proj.bias'), T, hidden, hidden);
      const kk = lin(h, P('self_attn.k_proj.weight'), P('self_attn.k_proj.bias'), T, hidden, hidden);
      const v = lin(h, P('self_attn.v_proj.weight'), P('self_attn.v_proj.bias'), T, hidden, hidden);
      const att = new Float64Array(T * hidden);
      for (let hh = 0; hh < heads; hh++) {
        for (let i = 0; i < T; i++) {
          const scores: number[] = [];
          for (let j = 0; j <= i; j++) {
            if (mask[j] === 0) continue; // causal and padding masks
            let s = 0;
            for (let d = 0; d < hd; d++) s += q[i * hidden + hh * hd + d]! * kk[j * hidden + hh * hd + d]!;
            scores.push(s / Math.sqrt(hd));
          }
          const js = [...Array(i + 1).keys()].filter((j) => mask[j] !== 0);
          const mx = Math.max(...scores);
          const e = scores.map((s) => Math.exp(s - mx));
          const sum = e.reduce((a, b) => a + b, 0);
          js.forEach((j, n) => {
            for (let d = 0; d < hd; d++) att[i * hidden + hh * hd + d] += (e[n]! / sum) * v[j * hidden + hh * hd + d]!;
          });
        }
      }
      const o = lin(att, P('self_attn.out_proj.weight'), P('self_attn.out_proj.bias'), T, hidden, hidden);
      x = x.map((val, i) => val + o[i]!);
      const h2 = ln(x, P('layer_norm2.weight'), P('layer_norm2.bias'), T);
      const inter = P('mlp.fc1.bias').length;
      const f1 = lin(h2, P('mlp.fc1.weight'), P('mlp.fc1.bias'), T, hidden, inter).map(actFn);
      const f2 = lin(f1, P('mlp.fc2.weight'), P('mlp.fc2.bias'), T, inter, hidden);
      x = x.map((val, i) => val + f2[i]!);
    }
    return Float32Array.from(ln(x, get('final_layer_norm.weight'), get('final_layer_norm.bias'), T));
  };
}

describe.skipIf(!haveTokenizer)('encodeWeightedPrompt with a CPU text encoder', () => {
  for (const p of PIPELINES) {
    describe(p.name, () => {
      let tok: FragmentTokenizer;
      let encode: (ids: number[], mask: number[]) => Promise<Float32Array>;
      let compel: Map<string, Float32Array>;
      beforeAll(async () => {
        tok = await loadTokenizer(p.tokenizerDir);
        const heads = p.name === 'sd15-tiny' ? 2 : 5;
        encode = cpuClipEncoder(p.encoderFile, p.act, p.hidden, heads);
        compel = readTensors(fixture(`${p.name}/references/compel.safetensors`));
      });

      it('the CPU encoder matches empty_z (sanity check of the test harness)', async () => {
        const z = await encode(emptyPromptIds(tok), Array(77).fill(1));
        const ref = compel.get('empty_z')!;
        expect(maxAbsDiff(z, ref) / maxAbs(ref)).toBeLessThan(1e-5);
      });

      it('reproduces every compel.NN, including the down-weighted (blended) ones', async () => {
        const calls: number[][] = [];
        const spy = async (ids: number[], mask: number[]): Promise<Float32Array> => {
          calls.push(mask);
          return encode(ids, mask);
        };
        const emptyZ = compel.get('empty_z')!;
        for (const c of compelCases(p.name)) {
          calls.length = 0;
          const out = await encodeWeightedPrompt(c.prompt, tok, spy, p.hidden, { emptyZ });
          const ref = compel.get(c.tensor)!;
          expect(maxAbsDiff(out, ref) / maxAbs(ref), c.prompt).toBeLessThan(1e-5);
          const nDown = parseWeightedPrompt(c.prompt).filter((f) => f.weight < 1).length;
          expect(calls.length, c.prompt).toBe(1 + nDown);
        }
      });
    });
  }
});

describe('encodeWeightedPrompt (stub encoder)', () => {
  it('encodes empty_z once, the prompt with the all-ones mask, and once per down-weighted fragment', async () => {
    const tok = wordTokenizer(GEN_VOCAB);
    const seen: Array<{ ids: number[]; mask: number[] }> = [];
    const hidden = 2;
    const encode = async (ids: number[], mask: number[]): Promise<Float32Array> => {
      seen.push({ ids, mask });
      const z = new Float32Array(77 * hidden);
      // Distinct values per call so the blend is visible.
      z.fill(seen.length);
      return z;
    };
    const out = await encodeWeightedPrompt('(a red cat)0.5 and a (blue dog)2', tok, encode, hidden);
    expect(seen).toHaveLength(3);
    expect(seen[0]!.ids).toEqual(emptyPromptIds(tok));
    expect(seen[1]!.mask).toEqual(Array(77).fill(1));
    expect(seen[2]!.mask.slice(0, 6)).toEqual([1, 0, 0, 0, 1, 1]);
    // Token 1 ("a", weight 0.5): base = 1 + (2-1)*0.5 = 1.5, without = 1 + (3-1)*0.5 = 2; blend 50/50.
    expect(out[1 * hidden]).toBeCloseTo(1.75, 6);
    // Token 6 ("blue", weight 2): base = 1 + (2-1)*2 = 3, without = 1 + (3-1)*2 = 5 -> 4.
    expect(out[6 * hidden]).toBeCloseTo(4, 6);
    await expect(encodeWeightedPrompt('a cat', wordTokenizer(GEN_VOCAB), async () => new Float32Array(5), 2)).rejects.toThrow(
      /returned 5 values, expected 77\*2 = 154/,
    );
  });
});

// ------------------------------------------------------------------------------------------
describe('run_generation.py helpers', () => {
  const gen = JSON.parse(readFileSync(fixture('sd15-tiny/generation/generation.json'), 'utf8')) as {
    prompt: string;
    phrases: string[];
    elbo_strength: number;
    steps: Array<{ elbo: number[]; weights: number[]; weight_prompt: string }>;
  };
  const t = readTensors(fixture('sd15-tiny/generation/generation.safetensors'));

  it('elboWeights = round(1.2 ** minmax(elbo), 2) in float32, as in every generation step', () => {
    gen.steps.forEach((step, k) => {
      const unrounded = elboWeightsUnrounded(step.elbo, gen.elbo_strength);
      const ref = t.get(`step${k}.weights_unrounded`)!;
      // float32 minmax and pow(float32(1.2), e) rounded to float32 give torch's values bit for bit.
      expect(unrounded, `step ${k}`).toEqual(Array.from(ref));
      expect(Array.from(t.get(`step${k}.elbo`)!)).toEqual(step.elbo);
      expect(elboWeights(step.elbo, gen.elbo_strength), `step ${k}`).toEqual(step.weights);
    });
  });

  it('elboWeights keeps 1.0 for fewer than two phrases and for equal scores; rounds half to even', () => {
    expect(elboWeights([], 1.2)).toEqual([]);
    expect(elboWeights([0.3], 1.2)).toEqual([1]);
    expect(elboWeights([0.3, 0.3], 1.2)).toEqual([1, 1]);
    expect(elboWeights([0, 1], 3)).toEqual([1, 3]);
    expect(elboWeights([0, 1, 0.5], 1.2)).toEqual([1, Math.fround(1.2), Math.fround(1.1)]);
  });

  it("buildWeightedPrompt reproduces every step's weight_prompt string", () => {
    for (const step of gen.steps) expect(buildWeightedPrompt(gen.prompt, gen.phrases, step.weights)).toBe(step.weight_prompt);
    expect(buildWeightedPrompt('a red cat and a blue dog', ['a blue dog', 'a red cat'], [1, 1.5])).toBe('(a red cat)1.5 and (a blue dog)1.0');
    expect(() => buildWeightedPrompt('a cat', ['a dog'], [1])).toThrow(/"a dog" does not occur/);
    expect(() => buildWeightedPrompt('a cat', ['a cat'], [])).toThrow(/1 phrases but 0 weights/);
  });

  it('pythonFloatRepr prints floats like Python repr', () => {
    const cases: Array<[number, string]> = [
      [1, '1.0'],
      [1.2000000476837158, '1.2000000476837158'],
      [Math.fround(1.1), '1.100000023841858'],
      [0.0001, '0.0001'],
      [0.00001, '1e-05'],
      [1.5e-7, '1.5e-07'],
      [1e16, '1e+16'],
      [123456789012345.6, '123456789012345.6'],
      [1234567890123456.7, '1234567890123456.8'],
      [-2.5, '-2.5'],
      [100, '100.0'],
      [0, '0.0'],
      [-0, '-0.0'],
      [NaN, 'nan'],
      [Infinity, 'inf'],
    ];
    for (const [x, s] of cases) expect(pythonFloatRepr(x), String(x)).toBe(s);
  });
});
