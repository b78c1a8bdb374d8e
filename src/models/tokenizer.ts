/**
 * CLIP byte-level BPE tokenizer, identical to transformers' slow `CLIPTokenizer` when `ftfy` is
 * not installed (the environment of the ELBO-T2IAlign paper), as the golden data records it:
 *
 * 1. special / added tokens (bos, eos, unk, pad, any `added_tokens_decoder` entry) are split out of
 *    the raw text first (transformers' added-tokens trie), so a literal `<|endoftext|>` is one
 *    token and, with SD 2.x's pad token `"!"`, every `!` becomes id 0;
 * 2. the rest goes through `BasicTokenizer(strip_accents=False, do_split_on_punc=False)`:
 *    drop NUL / U+FFFD / category C* characters (control, format such as U+200B, unassigned),
 *    map whitespace to spaces, space out CJK ideographs, NFC, split on whitespace, lower-case,
 *    re-join with single spaces;
 * 3. the CLIP regex splits words, numbers (one digit each) and punctuation runs;
 * 4. each piece's UTF-8 bytes are mapped through GPT-2's byte-to-unicode table and BPE-merged,
 *    the last symbol carrying the `</w>` end-of-word marker.
 *
 * Unicode tables are the JS engine's (ICU); Python's `unicodedata` may be an older Unicode
 * version, so characters assigned after it (new emoji) could be classified differently there.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

/** Output of {@link CLIPTokenizer.call}: what the SD pipelines feed the text encoder. */
export interface TokenizerOutput {
  /** (maxLength,) ids: bos, tokens, eos, then pad. */
  inputIds: number[];
  /** (maxLength,) 1 for bos/tokens/eos, 0 for padding. */
  attentionMask: number[];
  /** Whether the prompt had more than maxLength - 2 tokens (and was cut). */
  truncated: boolean;
}

/** GPT-2's reversible byte -> printable unicode character table. */
function bytesToUnicode(): string[] {
  const bs: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const cs = [...bs];
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n);
      n++;
    }
  }
  const table = new Array<string>(256);
  for (let i = 0; i < bs.length; i++) table[bs[i]!] = String.fromCodePoint(cs[i]!);
  return table;
}

const BYTE_ENCODER = bytesToUnicode();

/** CLIP's pre-tokenization pattern (python `regex`, IGNORECASE). */
const CLIP_PATTERN =
  /<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+/giu;

/** Python's `str.isspace()` characters (what `str.split()` splits on). */
const PY_WHITESPACE = /[\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+/u;

const IS_CONTROL = /^\p{C}$/u; // Cc, Cf, Cs, Co, Cn: BasicTokenizer's `_is_control` (minus \t\n\r)
const IS_ZS = /^\p{Zs}$/u;

function isCjk(cp: number): boolean {
  return (
    (cp >= 0x4e00 && cp <= 0x9fff) ||
    (cp >= 0x3400 && cp <= 0x4dbf) ||
    (cp >= 0x20000 && cp <= 0x2a6df) ||
    (cp >= 0x2a700 && cp <= 0x2b73f) ||
    (cp >= 0x2b740 && cp <= 0x2b81f) ||
    (cp >= 0x2b820 && cp <= 0x2ceaf) ||
    (cp >= 0xf900 && cp <= 0xfaff) ||
    (cp >= 0x2f800 && cp <= 0x2fa1f)
  );
}

/** transformers `BasicTokenizer(strip_accents=False, do_split_on_punc=False).tokenize`, joined by spaces. */
export function basicClean(text: string): string {
  let cleaned = '';
  for (const ch of text) {
    const cp = ch.codePointAt(0)!;
    if (cp === 0 || cp === 0xfffd) continue;
    const isTabNl = ch === '\t' || ch === '\n' || ch === '\r';
    if (!isTabNl && IS_CONTROL.test(ch)) continue;
    if (ch === ' ' || isTabNl || IS_ZS.test(ch)) {
      cleaned += ' ';
    } else if (isCjk(cp)) {
      cleaned += ` ${ch} `;
    } else {
      cleaned += ch;
    }
  }
  const words = cleaned.normalize('NFC').split(PY_WHITESPACE).filter((w) => w.length > 0);
  return words.map((w) => w.toLowerCase()).join(' ');
}

interface SpecialTokenSpec {
  bos: string;
  eos: string;
  unk: string;
  pad: string;
}

function tokenContent(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (typeof v === 'object' && v !== null && typeof (v as { content?: unknown }).content === 'string') {
    return (v as { content: string }).content;
  }
  return undefined;
}

function readJsonObject(file: string, required: boolean): Record<string, unknown> | undefined {
  if (!fs.existsSync(file)) {
    if (required) throw new Error(`${file}: tokenizer file not found`);
    return undefined;
  }
  let value: unknown;
  try {
    value = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    throw new Error(`${file}: invalid JSON (${(err as Error).message})`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new Error(`${file}: expected a JSON object`);
  }
  return value as Record<string, unknown>;
}

/** Number of merges the slow CLIPTokenizer reads: `merges[1 : 49152 - 256 - 2 + 1]`. */
const MAX_MERGES = 49152 - 256 - 2;

/** transformers' slow CLIPTokenizer (no ftfy). See the file comment for the pipeline. */
export class CLIPTokenizer {
  readonly bosId: number;
  readonly eosId: number;
  readonly padId: number;
  readonly unkId: number;
  /** Sequence length the text encoder takes (tokenizer_config `model_max_length`, 77). */
  readonly maxLength: number;
  readonly bosToken: string;
  readonly eosToken: string;
  readonly padToken: string;
  readonly unkToken: string;

  private readonly encoder: Map<string, number>;
  private readonly ranks: Map<string, number>;
  private readonly cache = new Map<string, string[]>();
  /** Added / special tokens split out before BPE, longest first, with their ids. */
  private readonly added: { content: string; id: number }[];

  constructor(
    vocab: Record<string, number>,
    merges: [string, string][],
    special: SpecialTokenSpec,
    maxLength = 77,
    extraAdded: { content: string; id: number }[] = [],
    source = 'CLIPTokenizer',
  ) {
    this.encoder = new Map(Object.entries(vocab));
    this.ranks = new Map();
    merges.forEach(([a, b], i) => this.ranks.set(`${a} ${b}`, i));
    const idOf = (tok: string, role: string): number => {
      const id = this.encoder.get(tok);
      if (id === undefined) throw new Error(`${source}: ${role} token ${JSON.stringify(tok)} is not in the vocabulary`);
      return id;
    };
    this.bosToken = special.bos;
    this.eosToken = special.eos;
    this.unkToken = special.unk;
    this.padToken = special.pad;
    this.bosId = idOf(special.bos, 'bos');
    this.eosId = idOf(special.eos, 'eos');
    this.unkId = idOf(special.unk, 'unk');
    this.padId = idOf(special.pad, 'pad');
    this.maxLength = maxLength;
    const added = new Map<string, number>();
    for (const t of extraAdded) added.set(t.content, t.id);
    for (const [tok, id] of [
      [special.bos, this.bosId],
      [special.eos, this.eosId],
      [special.unk, this.unkId],
      [special.pad, this.padId],
    ] as const) {
      if (!added.has(tok)) added.set(tok, id);
    }
    this.added = [...added].map(([content, id]) => ({ content, id })).sort((a, b) => b.content.length - a.content.length);
    // The slow tokenizer pre-seeds its BPE cache so the special strings map to themselves.
    this.cache.set('<|startoftext|>', ['<|startoftext|>']);
    this.cache.set('<|endoftext|>', ['<|endoftext|>']);
  }

  /**
   * Loads `vocab.json`, `merges.txt`, and (when present) `tokenizer_config.json` /
   * `special_tokens_map.json` from a tokenizer folder.
   */
  static fromFolder(dir: string): CLIPTokenizer {
    const vocabPath = path.join(dir, 'vocab.json');
    const mergesPath = path.join(dir, 'merges.txt');
    const vocabRaw = readJsonObject(vocabPath, true)!;
    const vocab: Record<string, number> = {};
    for (const [k, v] of Object.entries(vocabRaw)) {
      if (typeof v !== 'number' || !Number.isInteger(v)) {
        throw new Error(`${vocabPath}: id of ${JSON.stringify(k)} must be an integer, got ${JSON.stringify(v)}`);
      }
      vocab[k] = v;
    }
    if (!fs.existsSync(mergesPath)) throw new Error(`${mergesPath}: tokenizer file not found`);
    const lines = fs.readFileSync(mergesPath, 'utf8').trim().split('\n').slice(1, MAX_MERGES + 1);
    const merges: [string, string][] = lines.map((line, i) => {
      const parts = line.split(' ');
      if (parts.length !== 2) {
        throw new Error(`${mergesPath}: line ${i + 2} must be two symbols separated by one space, got ${JSON.stringify(line)}`);
      }
      return [parts[0]!, parts[1]!];
    });
    const config = readJsonObject(path.join(dir, 'tokenizer_config.json'), false) ?? {};
    const map = readJsonObject(path.join(dir, 'special_tokens_map.json'), false) ?? {};
    const pick = (key: string, dflt: string): string => tokenContent(map[key]) ?? tokenContent(config[key]) ?? dflt;
    const special: SpecialTokenSpec = {
      bos: pick('bos_token', '<|startoftext|>'),
      eos: pick('eos_token', '<|endoftext|>'),
      unk: pick('unk_token', '<|endoftext|>'),
      pad: pick('pad_token', '<|endoftext|>'),
    };
    const extra: { content: string; id: number }[] = [];
    const decoder = config['added_tokens_decoder'];
    if (typeof decoder === 'object' && decoder !== null) {
      for (const [id, v] of Object.entries(decoder as Record<string, unknown>)) {
        const content = tokenContent(v);
        if (content !== undefined && /^\d+$/.test(id)) extra.push({ content, id: Number(id) });
      }
    }
    const mml = config['model_max_length'];
    // Real files sometimes carry a huge sentinel (int(1e30)) meaning "no limit"; CLIP's is 77.
    const maxLength = typeof mml === 'number' && Number.isInteger(mml) && mml > 2 && mml <= 4096 ? mml : 77;
    return new CLIPTokenizer(vocab, merges, special, maxLength, extra, dir);
  }

  /** BPE of one pre-tokenized piece (already byte-encoded); returns the merged symbols. */
  private bpe(token: string): string[] {
    const cached = this.cache.get(token);
    if (cached !== undefined) return cached;
    const chars = [...token];
    if (chars.length === 0) return [];
    let word = chars.slice(0, -1);
    word.push(chars[chars.length - 1]! + '</w>');
    if (word.length === 1) return [token + '</w>']; // no pairs: not cached, as in transformers
    for (;;) {
      let best = -1;
      let bestRank = Infinity;
      for (let i = 0; i < word.length - 1; i++) {
        const r = this.ranks.get(`${word[i]} ${word[i + 1]}`);
        if (r !== undefined && r < bestRank) {
          bestRank = r;
          best = i;
        }
      }
      if (best < 0) break;
      const first = word[best]!;
      const second = word[best + 1]!;
      // Merge every non-overlapping occurrence of the pair, left to right.
      const next: string[] = [];
      let i = 0;
      while (i < word.length) {
        if (i < word.length - 1 && word[i] === first && word[i + 1] === second) {
          next.push(first + second);
          i += 2;
        } else {
          next.push(word[i]!);
          i += 1;
        }
      }
      word = next;
      if (word.length === 1) break;
    }
    this.cache.set(token, word);
    return word;
  }

  /** `_tokenize`: BasicTokenizer clean-up, regex, byte encoding, BPE (text without special tokens). */
  private tokenizePlain(text: string): string[] {
    const out: string[] = [];
    const clean = basicClean(text);
    for (const m of clean.matchAll(CLIP_PATTERN)) {
      const bytes = Buffer.from(m[0], 'utf8');
      let encoded = '';
      for (const b of bytes) encoded += BYTE_ENCODER[b];
      out.push(...this.bpe(encoded));
    }
    return out;
  }

  /** Splits out added / special tokens (longest match at the earliest position, like the trie). */
  private splitAdded(text: string): { text: string; special: boolean }[] {
    const parts: { text: string; special: boolean }[] = [];
    let start = 0;
    let i = 0;
    while (i < text.length) {
      let hit: string | undefined;
      for (const t of this.added) {
        if (text.startsWith(t.content, i)) {
          hit = t.content;
          break;
        }
      }
      if (hit === undefined) {
        i++;
        continue;
      }
      if (i > start) parts.push({ text: text.slice(start, i), special: false });
      parts.push({ text: hit, special: true });
      i += hit.length;
      start = i;
    }
    if (start < text.length) parts.push({ text: text.slice(start), special: false });
    return parts;
  }

  /** `tokenizer.tokenize(text)`: BPE strings (`</w>` marks word ends), no bos/eos. */
  tokenize(text: string): string[] {
    const out: string[] = [];
    for (const p of this.splitAdded(text)) {
      if (p.special) out.push(p.text);
      else out.push(...this.tokenizePlain(p.text));
    }
    return out;
  }

  /** Token string -> id (unknown strings map to the unk id, as transformers does). */
  tokenToId(token: string): number {
    const added = this.added.find((t) => t.content === token);
    if (added !== undefined) return added.id;
    return this.encoder.get(token) ?? this.unkId;
  }

  /** Ids of `text` without bos / eos, no truncation (used to weight prompt fragments). */
  encodeFragment(text: string): number[] {
    return this.tokenize(text).map((t) => this.tokenToId(t));
  }

  /** `tokenizer(text).input_ids` = `tokenizer.encode(text)`: bos + ids + eos, no truncation or padding. */
  encode(text: string): number[] {
    return [this.bosId, ...this.encodeFragment(text), this.eosId];
  }

  /**
   * `tokenizer(text, padding="max_length", max_length=77, truncation=True)`: keeps the first
   * maxLength - 2 tokens, then eos, then pads with the pad id.
   */
  call(text: string): TokenizerOutput {
    const ids = this.encodeFragment(text);
    const room = this.maxLength - 2;
    const truncated = ids.length > room;
    const kept = truncated ? ids.slice(0, room) : ids;
    const inputIds = [this.bosId, ...kept, this.eosId];
    const attentionMask = inputIds.map(() => 1);
    while (inputIds.length < this.maxLength) {
      inputIds.push(this.padId);
      attentionMask.push(0);
    }
    return { inputIds, attentionMask, truncated };
  }
}
