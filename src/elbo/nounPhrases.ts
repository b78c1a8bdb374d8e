/**
 * Noun-phrase extraction for ELBO-reweighted generation.
 *
 * The reference (run_generation.py, `extract_filtered_noun_phrases`) runs spaCy's
 * en_core_web_sm and keeps every `doc.noun_chunks` chunk whose root has POS NOUN (not PROPN or
 * PRON) and whose lower-cased root text is not a non-entity keyword ({@link NON_ENTITY_KEYWORDS}).
 * spaCy's English noun chunk = a nominal head (NOUN/PROPN/PRON in a subject/object/
 * prepositional-object/conjunct/root role) plus everything to its left in its subtree
 * (determiner, possessor, numbers, adjectives and their adverbs, compound nouns); prepositional
 * phrases and relative clauses to the right are not part of it ("a group of people" gives the
 * chunks "a group" and "people").
 *
 * No JavaScript library ships a dependency parser, so this port tags parts of speech with
 * wink-nlp (wink-eng-lite-web-model) and forms the same left-modifier spans over the tags:
 * a chunk is a maximal run of determiners / possessive pronouns, adverbs before adjectives,
 * adjectives (also "black and white", "red-haired"), numbers, nouns and possessive `'s`,
 * ending at its last noun or pronoun, which is the root. Where wink's tagger is known to slip
 * ("-ing" words, nouns it calls adjectives) compromise's tagger gives a second opinion (see
 * refineTags). The result matches spaCy on ordinary captions; where
 * spaCy's parse itself is unusual (long run-on lists, garden-path sentences) the two can differ.
 */
import nlpCompromise from 'compromise/two';
import winkNLP, { type ItemToken } from 'wink-nlp';
import model from 'wink-eng-lite-web-model';
import { NON_ENTITY_KEYWORDS } from './nonEntityWords.js';

/** One extracted noun chunk with its place in the prompt. */
export interface NounPhraseSpan {
  /** Exact substring of the prompt: `prompt.slice(start, end)`. */
  text: string;
  /** UTF-16 offsets into the prompt. */
  start: number;
  end: number;
  /** The chunk's root (head) word as it appears in the prompt. */
  root: string;
}

/** A tagged token with its offsets in the prompt. */
interface Tok {
  text: string;
  pos: string;
  start: number;
  end: number;
}

let wink: ReturnType<typeof winkNLP> | undefined;
function winkInstance(): ReturnType<typeof winkNLP> {
  // Loading the model takes a few hundred milliseconds: do it on first use only.
  wink ??= winkNLP(model);
  return wink;
}

/** Tokens with wink's universal POS tags and character offsets (found by scanning the prompt). */
function tag(prompt: string): Tok[] {
  const nlp = winkInstance();
  const its = nlp.its;
  const doc = nlp.readDoc(prompt);
  const toks: Tok[] = [];
  let cursor = 0;
  doc.tokens().each((t: ItemToken) => {
    const text = t.out(its.value) as string;
    const pos = t.out(its.pos) as string;
    const start = prompt.indexOf(text, cursor);
    if (start < 0) {
      // wink normalised this token: keep it as an unknown that breaks any chunk.
      toks.push({ text, pos: 'X', start: cursor, end: cursor });
      return;
    }
    toks.push({ text, pos, start, end: start + text.length });
    cursor = start + text.length;
  });
  return toks;
}

/** compromise's reading of the word starting at each offset (a second tagger, asked only about doubtful words). */
interface SecondOpinion {
  noun: boolean;
  verb: boolean;
  adj: boolean;
}
function compromiseTags(prompt: string): Map<number, SecondOpinion> {
  type Term = { text: string; tags: string[]; offset: { start: number } };
  const sentences = nlpCompromise(prompt).json({ offset: true, terms: { offset: true } }) as Array<{ terms: Term[] }>;
  const out = new Map<number, SecondOpinion>();
  for (const s of sentences) {
    for (const t of s.terms) {
      out.set(t.offset.start, { noun: t.tags.includes('Noun'), verb: t.tags.includes('Verb'), adj: t.tags.includes('Adjective') });
    }
  }
  return out;
}

/**
 * Where wink's tags are known to be shaky, ask compromise: an "-ing" word wink calls a noun
 * becomes a verb after a noun ("people standing on ...") or an adjective ("the fading light")
 * when compromise says so; an adjective that would end a chunk becomes its noun when compromise
 * reads it as one ("a bright light").
 */
function refineTags(prompt: string, toks: Tok[]): void {
  let second: Map<number, SecondOpinion> | undefined;
  const ask = (t: Tok): SecondOpinion | undefined => (second ??= compromiseTags(prompt)).get(t.start);
  const ing = toks.map((t) => t.pos === 'NOUN' && /ing$/i.test(t.text));
  toks.forEach((t, k) => {
    if (!ing[k]) return;
    const o = ask(t);
    if (o === undefined) return;
    const afterNoun = k > 0 && NOMINAL.has(toks[k - 1]!.pos);
    const final = !toks.slice(k + 1).some((x) => x.pos !== 'PUNCT'); // a caption-final "-ing" word stays a noun
    if (o.adj && !o.noun) t.pos = 'ADJ';
    else if (o.verb && afterNoun && !final) t.pos = 'VERB';
  });
  toks.forEach((t, k) => {
    if (t.pos !== 'ADJ') return;
    const next = toks[k + 1];
    if (next !== undefined && ['NOUN', 'PROPN', 'ADJ', 'NUM'].includes(next.pos)) return;
    const o = ask(t);
    if (o !== undefined && o.noun && !o.adj) t.pos = 'NOUN';
  });
}

const POSSESSIVE_PRONOUNS = new Set(['my', 'your', 'his', 'her', 'its', 'our', 'their']);
const NOMINAL = new Set(['NOUN', 'PROPN']);

/**
 * Noun chunks of a prompt as spaCy's `doc.noun_chunks` would give them, with their roots, in
 * order of appearance; no filtering. See the module comment for how the chunks are formed.
 */
export function nounChunks(prompt: string): Array<NounPhraseSpan & { rootPos: 'NOUN' | 'PROPN' | 'PRON' }> {
  const toks = tag(prompt);
  refineTags(prompt, toks);
  const n = toks.length;
  const glued = (a: Tok | undefined, b: Tok | undefined): boolean => a !== undefined && b !== undefined && a.end === b.start;
  const isDetLike = (t: Tok): boolean => t.pos === 'DET' || (t.pos === 'PRON' && POSSESSIVE_PRONOUNS.has(t.text.toLowerCase()));

  const chunks: Array<NounPhraseSpan & { rootPos: 'NOUN' | 'PROPN' | 'PRON' }> = [];
  let i = 0;
  while (i < n) {
    const first = toks[i]!;
    const startsChunk =
      isDetLike(first) || ['NUM', 'ADJ', 'NOUN', 'PROPN', 'PRON'].includes(first.pos) || (first.pos === 'ADV' && ['ADJ', 'ADV', 'NUM'].includes(toks[i + 1]?.pos ?? ''));
    if (!startsChunk) {
      i++;
      continue;
    }
    // Collect the run of pre-head material.
    let j = i;
    while (j < n && isDetLike(toks[j]!)) j++; // "the", "all the", "my"
    for (;;) {
      const t = toks[j];
      if (t === undefined) break;
      const prev = toks[j - 1];
      const next = toks[j + 1];
      if (NOMINAL.has(t.pos) || t.pos === 'ADJ' || t.pos === 'NUM') {
        j++;
      } else if (t.pos === 'PRON' && j === i) {
        j++; // a pronoun chunk ("it", "someone"): its own root
        break;
      } else if (t.pos === 'ADV' && ['ADJ', 'ADV', 'NUM'].includes(next?.pos ?? '')) {
        j++; // "very large"
      } else if (t.pos === 'CCONJ' && prev?.pos === 'ADJ' && next?.pos === 'ADJ') {
        j++; // "black and white"
      } else if (t.pos === 'PUNCT' && t.text === '-' && glued(prev, t) && glued(t, next) && next !== undefined && next.pos !== 'PUNCT') {
        // Hyphenated word ("red-haired", "t-shirt", "black-and-white", "state-of-the-art"): the
        // word after the hyphen belongs to it whatever its tag.
        j += 2;
      } else if (t.pos === 'PART' && /^['’]s?$/i.test(t.text) && prev !== undefined && NOMINAL.has(prev.pos)) {
        j++; // possessor: "the man's hat"
        while (j < n && isDetLike(toks[j]!)) j++;
      } else {
        break;
      }
    }
    // The root is the last noun or pronoun of the run; what follows it starts the next scan.
    let h = j - 1;
    while (h >= i && !(NOMINAL.has(toks[h]!.pos) || toks[h]!.pos === 'PRON')) h--;
    if (h < i) {
      i = Math.max(j, i + 1);
      continue;
    }
    const root = toks[h]!;
    let rootPos: 'NOUN' | 'PROPN' | 'PRON' = root.pos === 'PRON' ? 'PRON' : root.pos === 'PROPN' ? 'PROPN' : 'NOUN';
    // Capitalised last word of a name ("New York City"): spaCy tags the whole name PROPN.
    if (rootPos === 'NOUN' && h > i && toks[h - 1]!.pos === 'PROPN' && /^\p{Lu}/u.test(root.text)) rootPos = 'PROPN';
    const start = first.start;
    chunks.push({ text: prompt.slice(start, root.end), start, end: root.end, root: root.text, rootPos });
    i = h + 1;
  }
  return chunks;
}

/**
 * run_generation.py's `extract_filtered_noun_phrases` with spans: the noun chunks whose root is
 * a common noun (not a proper noun or pronoun) and whose lower-cased root text is not in
 * {@link NON_ENTITY_KEYWORDS}, in order of appearance.
 */
export function extractNounPhraseSpans(prompt: string): NounPhraseSpan[] {
  return nounChunks(prompt)
    .filter((c) => c.rootPos === 'NOUN' && !NON_ENTITY_KEYWORDS.has(c.root.toLowerCase()))
    .map(({ text, start, end, root }) => ({ text, start, end, root }));
}

/**
 * The object phrases of a prompt, as exact substrings (so they can be wrapped as
 * `(phrase)1.2`): e.g. "a red cat and a blue dog on a green sofa" ->
 * ["a red cat", "a blue dog", "a green sofa"]; "a group of people" -> ["people"].
 * Returns [] when there is none.
 */
export function extractNounPhrases(prompt: string): string[] {
  return extractNounPhraseSpans(prompt).map((s) => s.text);
}

/**
 * The common nouns (spaCy's NOUN tag) of a phrase, in order, as run_segmentation.py's AEP
 * "file" mode collects them (`[t.text for t in nlp(phrase) if t.pos_ == "NOUN"]`) to locate
 * a class in the source prompt when the class name is not a word of its phrase.
 */
export function nounTokens(phrase: string): string[] {
  const toks = tag(phrase);
  refineTags(phrase, toks);
  return toks.filter((t) => t.pos === 'NOUN').map((t) => t.text);
}

/**
 * The text whose tokens locate class `cls` in a source prompt made of referring phrases:
 * the class itself when it is a word of its phrase, otherwise the phrase's nouns joined by
 * spaces (run_segmentation.py, source_text.type "file").
 */
export function classPositionText(cls: string, phrase: string): string {
  if (phrase.split(' ').includes(cls)) return cls;
  return nounTokens(phrase).join(' ');
}
