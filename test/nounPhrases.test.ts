// Noun-phrase extraction for ELBO-reweighted generation: what run_generation.py's
// extract_filtered_noun_phrases (spaCy en_core_web_sm noun_chunks, root POS NOUN, root not a
// non-entity keyword) is expected to return on ordinary captions.
import { describe, expect, it } from 'vitest';
import { extractNounPhraseSpans, extractNounPhrases, nounChunks } from '../src/elbo/nounPhrases.js';
import { NON_ENTITY_KEYWORDS, NON_ENTITY_KEYWORD_LIST } from '../src/elbo/nonEntityWords.js';
import { buildWeightedPrompt, parseWeightedPrompt } from '../src/elbo/promptWeighting.js';

// [prompt, expected phrases, why]
const CASES: Array<[string, string[], string]> = [
  // the golden generation prompt (generation.json "phrases")
  ['a red cat and a blue dog on a green sofa', ['a red cat', 'a blue dog', 'a green sofa'], 'conjunction and preposition'],
  // attributes
  ['a very large elephant', ['a very large elephant'], 'adverb before adjective'],
  ['A large brown dog running through a field of tall grass', ['A large brown dog', 'tall grass'], '"field" is a non-entity root'],
  ['a black and white photo of a dog', ['a black and white photo', 'a dog'], 'coordinated adjectives stay in the chunk'],
  ['a black-and-white photo of a man in a t-shirt', ['a black-and-white photo', 'a man', 'a t-shirt'], 'hyphenated words'],
  ['a red-haired girl with 3 balloons', ['a red-haired girl', '3 balloons'], 'hyphenated adjective, digit'],
  ['a small red boat in the distance', ['a small red boat', 'the distance'], 'two adjectives'],
  // numbers and plurals
  ['two cats sleeping on a couch', ['two cats', 'a couch'], 'number word'],
  ['three red apples and a banana', ['three red apples', 'a banana'], 'number and adjective'],
  ['five apples', ['five apples'], 'plural alone'],
  ['skiers on a snowy slope', ['skiers', 'a snowy slope'], 'bare plural'],
  ['a cake with candles', ['a cake', 'candles'], 'bare plural object of a preposition'],
  // compound nouns
  ['a fire hydrant next to a parked car', ['a fire hydrant', 'a parked car'], 'compound; participle adjective'],
  ['a teddy bear wearing a hat', ['a teddy bear', 'a hat'], 'compound subject, object'],
  ['a red double decker bus', ['a red double decker bus'], 'long compound'],
  ['a yellow school bus parked near a building', ['a yellow school bus', 'a building'], 'compound, -ing noun kept as noun'],
  ['a tennis player swinging a racket', ['a tennis player', 'a racket'], 'compound subject'],
  ['a living room with a couch and a tv', ['a living room', 'a couch', 'a tv'], '-ing modifier, conjoined objects'],
  // prepositions and verbs
  ['a man riding a horse on the beach', ['a man', 'a horse', 'the beach'], 'participle clause'],
  ['a woman holding an umbrella in the rain', ['a woman', 'an umbrella', 'the rain'], '"an"'],
  ['a dog that is chasing a ball', ['a dog', 'a ball'], 'relative clause'],
  ['the sun setting behind the mountains', ['the sun', 'the mountains'], '-ing verb after a noun'],
  ['an old lighthouse standing on a rocky cliff above a stormy sea at sunset', ['an old lighthouse', 'a rocky cliff', 'a stormy sea', 'sunset'], 'chain of prepositional phrases'],
  ['wet rocks glistening in the fading light', ['wet rocks', 'the fading light'], '-ing verb and -ing adjective'],
  ['a kitchen with a stove, a sink and a refrigerator', ['a kitchen', 'a stove', 'a sink', 'a refrigerator'], 'comma list'],
  // non-entity roots ("a group of people" style)
  ['a group of people standing on the side of a road', ['people', 'a road'], '"group" and "side" are non-entity roots'],
  ['a pair of scissors', ['scissors'], '"pair"'],
  ['a bunch of bananas on a table', ['bananas'], '"bunch" and "table" are non-entity roots'],
  ['a lot of cars', ['cars'], '"lot"'],
  ['a pile of books on the desk', ['books', 'the desk'], '"pile"'],
  ['a cat sitting on top of a car', ['a cat', 'a car'], '"top"'],
  ['a clock tower in the middle of a city', ['a clock tower', 'a city'], '"middle"'],
  ['a stop sign on a street corner', ['a stop sign'], '"corner" is the root of "a street corner"'],
  ['the front of a train', ['a train'], '"front"'],
  ['a bowl of fruit on a wooden table', ['a bowl', 'fruit'], '"bowl" is not in the list, "table" is'],
  ['a photo of a cat', ['a photo', 'a cat'], '"photo" is not in the list'],
  // possessives, pronouns, proper nouns
  ["the man's hat is on the bed", ["the man's hat", 'the bed'], 'possessor inside the chunk'],
  ["the children's toys on the floor", ["the children's toys", 'the floor'], 'plural possessor'],
  ['his dog and their cats', ['his dog', 'their cats'], 'possessive pronouns'],
  ['someone riding a bike', ['a bike'], 'pronoun root is not a NOUN'],
  ['New York City at night', ['night'], 'proper-noun root is not a NOUN'],
  ['The Eiffel Tower at night', ['night'], 'proper-noun root'],
  ['a cat named Tom', ['a cat'], 'proper noun'],
  // nothing to extract
  ['it is raining', [], 'pronoun only'],
  ['running quickly', [], 'no noun'],
  ['beautiful', [], 'adjective only'],
  ['', [], 'empty prompt'],
];

describe('extractNounPhrases', () => {
  it(`gives spaCy-style filtered noun chunks on ${CASES.length} captions`, () => {
    expect(CASES.length).toBeGreaterThanOrEqual(30);
    const failures: string[] = [];
    for (const [prompt, expected, why] of CASES) {
      const got = extractNounPhrases(prompt);
      if (JSON.stringify(got) !== JSON.stringify(expected)) {
        failures.push(`${JSON.stringify(prompt)} (${why}): expected ${JSON.stringify(expected)}, got ${JSON.stringify(got)}`);
      }
    }
    expect(failures).toEqual([]);
  });

  it('returns exact substrings with their offsets and roots, keeping odd spacing', () => {
    for (const [prompt] of CASES) {
      for (const s of extractNounPhraseSpans(prompt)) {
        expect(prompt.slice(s.start, s.end)).toBe(s.text);
        expect(s.text.endsWith(s.root)).toBe(true);
      }
    }
    expect(extractNounPhraseSpans('a  red   cat.')).toEqual([{ text: 'a  red   cat', start: 0, end: 12, root: 'cat' }]);
    expect(extractNounPhraseSpans('A cat, a dog')).toEqual([
      { text: 'A cat', start: 0, end: 5, root: 'cat' },
      { text: 'a dog', start: 7, end: 12, root: 'dog' },
    ]);
  });

  it('filters on the lower-cased root text only (as the reference: chunk.root.text.lower())', () => {
    // "Group" is filtered whatever its case; plural "groups" is not in the list, so it is kept.
    expect(extractNounPhrases('a Group of birds')).toEqual(['birds']);
    expect(extractNounPhrases('two groups of birds')).toEqual(['two groups', 'birds']);
    // Unfiltered chunks still show the non-entity and non-noun roots.
    expect(nounChunks('a group of people and it').map((c) => [c.text, c.root, c.rootPos])).toEqual([
      ['a group', 'group', 'NOUN'],
      ['people', 'people', 'NOUN'],
      ['it', 'it', 'PRON'],
    ]);
  });

  it('feeds buildWeightedPrompt and the compel parser: each phrase becomes one weighted fragment', () => {
    const prompt = 'a woman holding an umbrella in the rain';
    const phrases = extractNounPhrases(prompt);
    const weighted = buildWeightedPrompt(prompt, phrases, [1.2000000476837158, 1, 1.100000023841858]);
    expect(weighted).toBe('(a woman)1.2000000476837158 holding (an umbrella)1.0 in (the rain)1.100000023841858');
    expect(parseWeightedPrompt(weighted)).toEqual([
      { text: 'a woman', weight: 1.2000000476837158 },
      { text: 'holding an umbrella in', weight: 1 },
      { text: 'the rain', weight: 1.100000023841858 },
    ]);
  });
});

describe('non-entity keywords', () => {
  it('hold the list of configs/run_generation.yaml', () => {
    expect(NON_ENTITY_KEYWORD_LIST).toHaveLength(161); // with the YAML's four repeats
    expect(NON_ENTITY_KEYWORDS.size).toBe(157);
    expect(NON_ENTITY_KEYWORD_LIST.slice(0, 5)).toEqual(['group', 'bunch', 'lot', 'piece', 'part']);
    expect(NON_ENTITY_KEYWORD_LIST.at(-1)).toBe('summary');
    for (const w of ['side', 'top', 'table', 'field', 'corner', 'several', 'many', 'figure']) expect(NON_ENTITY_KEYWORDS.has(w)).toBe(true);
    for (const w of NON_ENTITY_KEYWORD_LIST) expect(w).toBe(w.toLowerCase());
  });
});

describe('AEP file mode: class position text', () => {
  it('uses the class when it is a word of the phrase, else the nouns of the phrase', async () => {
    const { classPositionText, nounTokens } = await import('../src/elbo/nounPhrases.js');
    expect(classPositionText('cat', 'a sleeping cat on the sofa')).toBe('cat');
    expect(nounTokens('the red double-decker bus near a tall building')).toEqual(expect.arrayContaining(['bus', 'building']));
    expect(classPositionText('person', 'a young woman holding an umbrella')).toBe('woman umbrella');
  });
});
