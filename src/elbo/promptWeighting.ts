/**
 * Prompt weighting as the compel library (damian0815/compel, version 2.1.1) does it for
 * Stable Diffusion 1.x/2.x, plus the two helpers run_generation.py of ELBO-T2IAlign uses to
 * turn per-phrase ELBO scores into a weighted prompt.
 *
 * Pipeline (what `Compel(tokenizer, text_encoder)(prompt)` computes with its defaults:
 * truncate_long_prompts=True, padding_attention_mask_value=1, downweight_mode=MASK,
 * LAST_HIDDEN_STATES_NORMALIZED):
 *
 * 1. {@link parseWeightedPrompt}: compel's prompt grammar (prompt_parser.py) -> flat list of
 *    `{text, weight}` fragments, adjacent fragments of equal weight fused with a space.
 * 2. {@link planWeightedTokens}: each fragment tokenized on its own (no bos/eos), concatenated,
 *    truncated to 75, wrapped in bos/eos and padded to 77; per-token weights; for every
 *    fragment with weight < 1 the attention mask with that fragment's tokens zeroed
 *    (embeddings_provider.py: get_token_ids_and_expand_weights, _get_token_ranges_for_fragments).
 * 3. {@link applyPromptWeights}: `empty_z + (z - empty_z) * w` per token, in float32.
 * 4. {@link blendDownWeighted}: for each down-weighted fragment, the prompt encoded with that
 *    fragment masked out is blended in with weight `tan((1 - w) * pi / 2)`; weights
 *    `[1, tan...]` normalised to sum 1, in float32.
 * 5. {@link encodeWeightedPrompt} runs 1-4 around a text-encoder callback.
 *
 * Float arithmetic mirrors torch float32 step by step (`Math.fround` after every operation;
 * double-then-round is exact for + - * / of float32 operands), so the result matches compel bit
 * for bit when the encoder does.
 */

// ------------------------------------------------------------------------------------------
// Types

/** One parsed prompt fragment: text handed to the tokenizer as-is, and its weight (a double). */
export interface WeightedFragment {
  text: string;
  weight: number;
}

/** What {@link planWeightedTokens} needs from a CLIP tokenizer (`CLIPTokenizer` satisfies it). */
export interface FragmentTokenizer {
  readonly bosId: number;
  readonly eosId: number;
  readonly padId: number;
  /** Sequence length including bos/eos (77 for CLIP). */
  readonly maxLength: number;
  /** Token ids of `text` without bos/eos and without truncation. */
  encodeFragment(text: string): number[];
}

/** A fragment with weight < 1 and what compel encodes to blend it away. */
export interface DownWeightedFragment {
  /** Index into the fragments passed to {@link planWeightedTokens}. */
  fragmentIndex: number;
  /** The fragment's weight (double, < 1). */
  weight: number;
  /** First and last token position (inclusive) masked out, as compel finds them. */
  start: number;
  end: number;
  /** Blend weight of the masked encoding before normalisation: `tan((1 - max(1e-5, w)) * pi / 2)`. */
  lerpWeight: number;
  /** Attention mask (length maxLength) with positions start..end set to 0; the ids stay the same. */
  mask: number[];
}

/** Token-level plan for one weighted prompt; every array has length `maxLength` (77). */
export interface WeightedTokenPlan {
  /** `[bos, fragment tokens (at most maxLength - 2), eos, pad...]`. */
  ids: number[];
  /** Per-token weights as float32 values (bos, eos and pad: 1), as compel's float32 tensor holds them. */
  weights: number[];
  /** Attention mask for the main encoding: all ones (compel pads the mask with 1 for SD). */
  mask: number[];
  /** Fragment index of each token; -1 for bos, eos and padding. */
  fragmentOfToken: number[];
  /** One entry per fragment with weight < 1 whose tokens survived truncation, in fragment order. */
  downWeighted: DownWeightedFragment[];
  /** True when the fragments had more than maxLength - 2 tokens and some were dropped. */
  truncated: boolean;
}

/** Text-encoder callback: ids and attention mask (length 77) -> last hidden state `(77, hidden)` row-major. */
export type EncodeFn = (ids: number[], mask: number[]) => Promise<Float32Array>;

/** A prompt compel cannot parse (or that uses compel syntax this port does not implement). */
export class PromptSyntaxError extends Error {
  constructor(
    message: string,
    /** 0-based UTF-16 index into the prompt. */
    readonly position: number,
  ) {
    super(message);
    this.name = 'PromptSyntaxError';
  }
}

/** Options of {@link parseWeightedPrompt}. */
export interface ParseOptions {
  /**
   * compel never rejects an unmatched `(`, `)` or `"`: when a group does not parse it keeps the
   * characters as literal text (`"a (red cat"` -> fragment `"a (red cat"`, weight 1). With
   * `strict: true` such a character throws a {@link PromptSyntaxError} naming its position
   * instead. Default false (compel's behaviour).
   */
  strict?: boolean;
}

// ------------------------------------------------------------------------------------------
// Parser: a recursive-descent port of compel's pyparsing grammar (build_parser_syntax).
// pyparsing's MatchFirst / ZeroOrMore are ordered and greedy without backtracking into
// repetitions, i.e. PEG semantics, so each production below is a function returning the
// position after its match or null. Element order inside each choice follows compel.

type Node = { kind: 'frag'; text: string } | { kind: 'att'; weight: number; children: Node[] };
interface Match {
  end: number;
  nodes: Node[];
}

/** pyparsing's default whitespace, skipped before most elements. */
const PP_WS = ' \n\t\r';
/** Python's `string.whitespace` (what CharsNotIn excludes). */
const PY_STRING_WS = ' \t\n\r\x0b\x0c';
/** compel's syntactic characters: may appear in a bare word only when backslash-escaped. */
const SYNTACTIC = '()",.+-=';
/** Characters Python's `str.strip()` removes (str.isspace). */
const PY_ISSPACE = /^[\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$/;
/** QuotedString(quote_char='"', esc_quote='\\"'), pyparsing >= 3.1 alternative order, no newlines. */
const QUOTED_RE = /"((?:\\"|[^"\n\r])*)"/y;
/** pyparsing_common.real without its sign (a leading +/- is taken by Word('+') / Word('-') first). */
const REAL_RE = /(?:\d+\.\d*|\.\d+)/y;
const INT_RE = /\d+/y;
const KEYWORD_RE = /[A-Za-z0-9_-]+/y;
const SIGNED_NUMBER_RE = /[+-]?(?:\d+\.\d*|\.\d+)|-?\d+/y;

/** compel's `Fragment.__init__`: unescape `\(`, `\)` and `\"` (other escapes keep their backslash). */
function fragmentText(raw: string): string {
  if (raw.includes('\\"') || raw.includes('\\(') || raw.includes('\\)')) {
    return raw.replaceAll('\\(', '(').replaceAll('\\)', ')').replaceAll('\\"', '"');
  }
  return raw;
}

function describeChar(ch: string): string {
  const cp = ch.codePointAt(0) ?? 0;
  return `${JSON.stringify(ch)} (U+${cp.toString(16).toUpperCase().padStart(4, '0')})`;
}

/**
 * Correctly rounded `base ** n` for a positive integer n, as glibc's pow returns for the
 * compel weights 1.1**n / 0.9**n (V8's Math.pow is off by one ulp for 1.1**4).
 */
export function powInt(base: number, n: number): number {
  if (!Number.isInteger(n) || n < 0) throw new Error(`powInt: exponent must be a non-negative integer, got ${n}`);
  if (!(base > 0) || !Number.isFinite(base)) return Math.pow(base, n);
  // base = m * 2^e exactly, with m a 53-bit integer.
  const buf = new DataView(new ArrayBuffer(8));
  buf.setFloat64(0, base);
  const hi = buf.getUint32(0);
  const lo = buf.getUint32(4);
  const biased = (hi >>> 20) & 0x7ff;
  let m = (BigInt(hi & 0xfffff) << 32n) | BigInt(lo);
  let e: number;
  if (biased === 0) {
    e = -1074;
  } else {
    m |= 1n << 52n;
    e = biased - 1075;
  }
  let mn = m ** BigInt(n);
  let en = e * n;
  // Round mn to 53 significant bits, ties to even.
  const bits = mn.toString(2).length;
  if (bits > 53) {
    const drop = BigInt(bits - 53);
    const half = 1n << (drop - 1n);
    const rem = mn & ((1n << drop) - 1n);
    mn >>= drop;
    if (rem > half || (rem === half && (mn & 1n) === 1n)) mn += 1n;
    en += bits - 53;
  }
  // Number(mn) is exact (<= 2^53); scaling by powers of two is exact in the normal range.
  let v = Number(mn);
  while (en > 0) {
    const s = Math.min(en, 1000);
    v *= 2 ** s;
    en -= s;
  }
  while (en < 0) {
    const s = Math.min(-en, 1000);
    v /= 2 ** s;
    en += s;
  }
  return v;
}

class CompelParser {
  // Groups are re-tried by several alternatives at the same position; memoising keeps nested
  // groups linear (the productions are pure).
  private readonly parenMemo = new Map<number, Match | null>();
  private readonly quotedMemo = new Map<number, Match | null>();

  constructor(
    private readonly s: string,
    /** Offset of `s` inside the user's prompt, for error positions (quoted re-parses). */
    private readonly origin: number,
    private readonly strict: boolean,
  ) {}

  private skipWs(pos: number): number {
    while (pos < this.s.length && PP_WS.includes(this.s[pos]!)) pos++;
    return pos;
  }

  private literal(pos: number, lit: string): number | null {
    const p = this.skipWs(pos);
    return this.s.startsWith(lit, p) ? p + lit.length : null;
  }

  private regex(pos: number, re: RegExp, skip = true): { end: number; text: string } | null {
    const p = skip ? this.skipWs(pos) : pos;
    re.lastIndex = p;
    const m = re.exec(this.s);
    if (m === null || m[0].length === 0) return null;
    return { end: p + m[0].length, text: m[0] };
  }

  /** `non_syntax_word`: Combine(OneOrMore(escaped symbol | [+-] not before ws/syntax/end | plain char)). */
  nonSyntaxWord(pos: number): Match | null {
    const s = this.s;
    const start = this.skipWs(pos);
    let i = start;
    while (i < s.length) {
      const c = s[i]!;
      if (c === '\\' && i + 1 < s.length && SYNTACTIC.includes(s[i + 1]!)) {
        i += 2;
      } else if (c === '+' || c === '-') {
        const next = s[i + 1];
        if (next === undefined || ' \t\r\n'.includes(next) || SYNTACTIC.includes(next)) break;
        i += 1;
      } else if (!PY_STRING_WS.includes(c) && !SYNTACTIC.includes(c)) {
        i += 1;
      } else {
        break;
      }
    }
    if (i === start) return null;
    return { end: i, nodes: [{ kind: 'frag', text: fragmentText(s.slice(start, i)) }] };
  }

  /** `quoted_fragment`: a double-quoted string whose content is re-parsed as a fragment list. */
  quoted(pos: number): Match | null {
    if (!this.quotedMemo.has(pos)) this.quotedMemo.set(pos, this.quotedUncached(pos));
    return this.quotedMemo.get(pos)!;
  }

  private quotedUncached(pos: number): Match | null {
    const p = this.skipWs(pos);
    QUOTED_RE.lastIndex = p;
    const m = QUOTED_RE.exec(this.s);
    if (m === null) return null;
    // pyparsing unquoting: whitespace escapes, then the escaped quote.
    let content = m[1]!
      .replace(/\\[tnfr]/g, (x) => ({ '\\t': '\t', '\\n': '\n', '\\f': '\f', '\\r': '\r' })[x]!)
      .replaceAll('\\"', '"');
    const end = p + m[0].length;
    if (PY_ISSPACE.test(content)) return { end, nodes: [{ kind: 'frag', text: '' }] };
    content = content.replaceAll('"', '\\"');
    const inner = new CompelParser(content, this.origin + p + 1, this.strict);
    const r = inner.fragmentList(0, true);
    if (inner.skipWs(r.end) !== content.length) return null; // the parse action's ParseException: alternative fails
    return { end, nodes: r.nodes };
  }

  /** `parenthesized_fragment`: "(" fragment_including_commas_or_periods ")". */
  parenthesized(pos: number): Match | null {
    if (!this.parenMemo.has(pos)) this.parenMemo.set(pos, this.parenthesizedUncached(pos));
    return this.parenMemo.get(pos)!;
  }

  private parenthesizedUncached(pos: number): Match | null {
    const open = this.literal(pos, '(');
    if (open === null) return null;
    const r = this.fragmentList(open, true);
    const close = this.literal(r.end, ')');
    if (close === null) return null;
    return { end: close, nodes: r.nodes };
  }

  /** `potential_operator_target` = quoted | parenthesized | non_syntax_word. */
  operatorTarget(pos: number): Match | null {
    return this.quoted(pos) ?? this.parenthesized(pos) ?? this.nonSyntaxWord(pos);
  }

  /** `attention_weight_operator` = Word('+') | Word('-') | number, as a weight. */
  weightOperator(pos: number, allowNumber: boolean): { end: number; weight: number } | null {
    const p = this.skipWs(pos);
    const c = this.s[p];
    if (c === '+' || c === '-') {
      let q = p;
      while (this.s[q] === c) q++;
      return { end: q, weight: powInt(c === '+' ? 1.1 : 0.9, q - p) };
    }
    if (!allowNumber) return null;
    const num = this.regex(p, REAL_RE, false) ?? this.regex(p, INT_RE, false);
    if (num === null) return null;
    return { end: num.end, weight: Number.parseFloat(num.text) };
  }

  /** `attention` = explicit `target.attend(w)` | implicit `(group)w` / `"group"w` / `word++`. */
  attention(pos: number): Match | null {
    const target = this.operatorTarget(pos);
    if (target !== null) {
      const dot = this.literal(target.end, '.attend');
      const open = dot === null ? null : this.literal(dot, '(');
      const w = open === null ? null : this.weightOperator(open, true);
      const close = w === null ? null : this.literal(w.end, ')');
      if (w !== null && close !== null) {
        return { end: close, nodes: [{ kind: 'att', weight: w.weight, children: target.nodes }] };
      }
    }
    // Implicit forms: no whitespace between the term and the operator (NotAny(White())).
    const group = this.quoted(pos) ?? this.parenthesized(pos);
    if (group !== null && !' \t\r\n'.includes(this.s[group.end] ?? ' ')) {
      const w = this.weightOperator(group.end, true);
      if (w !== null) return { end: w.end, nodes: [{ kind: 'att', weight: w.weight, children: group.nodes }] };
    }
    const word = this.nonSyntaxWord(pos);
    if (word !== null && !' \t\r\n'.includes(this.s[word.end] ?? ' ')) {
      const w = this.weightOperator(word.end, false);
      if (w !== null) return { end: w.end, nodes: [{ kind: 'att', weight: w.weight, children: word.nodes }] };
    }
    return null;
  }

  /** compel's `.swap(...)` (prompt-to-prompt) — recognised only to reject it. */
  private rejectSwap(pos: number): void {
    const target = this.operatorTarget(pos);
    if (target === null) return;
    const dot = this.literal(target.end, '.swap');
    if (dot !== null && this.literal(dot, '(') !== null) {
      const at = this.origin + this.skipWs(pos);
      throw new PromptSyntaxError(
        `prompt weighting: compel's .swap() (cross-attention control) at position ${at} is not supported; only weights are`,
        at,
      );
    }
  }

  /** compel's `useLora(name[, w])` / `withLora(...)` — recognised only to reject it. */
  private rejectLora(pos: number): void {
    const p = this.skipWs(pos);
    const trigger = this.s.startsWith('useLora', p) ? 7 : this.s.startsWith('withLora', p) ? 8 : 0;
    if (trigger === 0) return;
    const open = this.literal(p + trigger, '(');
    const name = open === null ? null : this.regex(open, KEYWORD_RE);
    if (name === null) return;
    let q = name.end;
    const comma = this.literal(q, ',');
    if (comma !== null) {
      const num = this.regex(comma, SIGNED_NUMBER_RE);
      if (num !== null) q = num.end;
    }
    if (this.literal(q, ')') === null) return;
    const at = this.origin + p;
    throw new PromptSyntaxError(`prompt weighting: LoRA syntax at position ${at} is not supported`, at);
  }

  /** `fragment_including_commas_or_periods`: ZeroOrMore(lora | attention | swap | paren | quoted | word | , | .). */
  fragmentList(pos: number, commas: boolean): Match {
    const nodes: Node[] = [];
    let at = pos;
    for (;;) {
      this.rejectLora(at);
      let m = this.attention(at);
      if (m === null) this.rejectSwap(at);
      m ??= this.parenthesized(at) ?? this.quoted(at) ?? this.nonSyntaxWord(at);
      if (m === null && commas) {
        const p = this.skipWs(at);
        const c = this.s[p];
        if (c === ',' || c === '.') m = { end: p + 1, nodes: [{ kind: 'frag', text: c }] };
      }
      if (m === null) return { end: at, nodes };
      nodes.push(...m.nodes);
      at = m.end;
    }
  }

  /** The top-level `prompt`: ZeroOrMore(swap | lora | attention | quoted | paren | free_word | White), then end. */
  topLevel(): Node[] {
    const s = this.s;
    const nodes: Node[] = [];
    let at = 0;
    for (;;) {
      at = this.skipWs(at);
      if (at >= s.length) return nodes;
      this.rejectSwap(at);
      this.rejectLora(at);
      const m = this.attention(at) ?? this.quoted(at) ?? this.parenthesized(at);
      if (m !== null) {
        nodes.push(...m.nodes);
        at = m.end;
        continue;
      }
      // free_word: CharsNotIn(string.whitespace) — swallows any syntax up to the next whitespace.
      let q = at;
      while (q < s.length && !PY_STRING_WS.includes(s[q]!)) q++;
      if (q === at) {
        throw new PromptSyntaxError(
          `prompt weighting: cannot parse prompt at position ${this.origin + at}: character ${describeChar(s[at]!)} ` +
            `is whitespace to Python but not to compel's parser (pyparsing), which rejects the prompt`,
          this.origin + at,
        );
      }
      const word = s.slice(at, q);
      if (this.strict) this.checkLiteralSyntax(word, at);
      nodes.push({ kind: 'frag', text: fragmentText(word) });
      at = q;
    }
  }

  /** Strict mode: a free word holding an unescaped ( ) or " means a group that did not parse. */
  private checkLiteralSyntax(word: string, at: number): void {
    for (let i = 0; i < word.length; i++) {
      const c = word[i]!;
      if (c === '\\' && i + 1 < word.length && SYNTACTIC.includes(word[i + 1]!)) {
        i++;
        continue;
      }
      if (c === '(' || c === ')' || c === '"') {
        const pos = this.origin + at + i;
        const what = c === '(' ? '"(" does not open a group compel can parse' : c === ')' ? 'unmatched ")"' : 'unmatched quote \'"\'';
        throw new PromptSyntaxError(
          `prompt weighting: ${what} at position ${pos} (compel would keep it as literal text; write \\${c} for a literal ${c})`,
          pos,
        );
      }
    }
  }
}

/** Rejects compel's `(a, b).blend(...)` / `.and(...)` / `.add(...)` forms, which must start the prompt. */
function rejectConjunctionOrBlend(prompt: string): void {
  const p = new CompelParser(prompt, 0, false);
  // Mirrors `"(" delimited_list(target | quoted_prompt) ")" (".blend" | ".and" | ".add") "("`.
  const start = prompt.search(/[^ \n\t\r]/);
  if (start < 0 || prompt[start] !== '(') return;
  let q = start + 1;
  for (;;) {
    const t = p.operatorTarget(q);
    if (t === null) return;
    q = t.end;
    while (q < prompt.length && PP_WS.includes(prompt[q]!)) q++;
    if (prompt[q] === ',') {
      q++;
      continue;
    }
    if (prompt[q] !== ')') return;
    q++;
    break;
  }
  while (q < prompt.length && PP_WS.includes(prompt[q]!)) q++;
  const op = /^\.(blend|and|add)[ \n\t\r]*\(/.exec(prompt.slice(q));
  if (op !== null) {
    throw new PromptSyntaxError(
      `prompt weighting: compel's .${op[1]}() at position ${q} is not supported; only weights are`,
      q,
    );
  }
}

function flatten(nodes: Node[], scale: number, out: WeightedFragment[]): void {
  for (const n of nodes) {
    if (n.kind === 'frag') out.push({ text: n.text, weight: 1.0 * scale });
    else flatten(n.children, scale * n.weight, out);
  }
}

/**
 * Parses a prompt with compel 2.1.1's syntax into weighted fragments.
 *
 * Supported: plain text (weight 1); `(group)1.3` / `"group"0.8` / `(group).attend(1.3)`;
 * `word++` / `word-` / `(group)+++` (1.1 or 0.9 per sign); nesting (weights multiply);
 * escaped `\(` `\)` `\"` (unescaped in the fragment text). As compel does, whitespace is
 * normalised (words joined by one space), adjacent fragments of equal weight are fused
 * (`"(a red cat)1.0 and"` -> `[{text: "a red cat and", weight: 1}]`), a group that does not
 * parse is kept as literal text, and a prompt that is empty after Python's `strip()` gives
 * `[{text: "", weight: 1}]`. A prompt whose groups hold no words (`"()"`) gives `[]`
 * (compel itself fails on it later).
 *
 * @throws PromptSyntaxError (with `position`) where compel's parser rejects the prompt (a
 *   vertical tab or form feed between words), for compel features not ported (`.swap()`,
 *   `.blend()`, `.and()`, `.add()`, `useLora()`), and with `strict` for unmatched `(`, `)`, `"`.
 */
export function parseWeightedPrompt(prompt: string, options: ParseOptions = {}): WeightedFragment[] {
  if (PY_ISSPACE.test(prompt)) return [{ text: '', weight: 1.0 }];
  rejectConjunctionOrBlend(prompt);
  const parser = new CompelParser(prompt, 0, options.strict ?? false);
  const flat: WeightedFragment[] = [];
  flatten(parser.topLevel(), 1.0, flat);
  // compel's fuse_fragments: merge neighbours of exactly equal weight.
  const fused: WeightedFragment[] = [];
  for (const f of flat) {
    const last = fused[fused.length - 1];
    if (last !== undefined && last.weight === f.weight) last.text = `${last.text} ${f.text}`;
    else fused.push({ text: f.text, weight: f.weight });
  }
  return fused;
}

// ------------------------------------------------------------------------------------------
// Token planning

/**
 * compel's `_get_token_ranges_for_fragments` in truncate mode, quirks included: a fragment cut by
 * truncation runs to the last position (the eos), fragments starting at or after position
 * maxLength - 1 end the list, and fragments without tokens get null.
 */
function tokenRangesForFragments(ids: number[], perFragment: number[][], maxLength: number): Array<[number, number] | null> {
  const ranges: Array<[number, number] | null> = [];
  const last = ids.length - 1;
  let start = 0;
  for (let f = 0; f < perFragment.length; f++) {
    const tokens = perFragment[f]!;
    if (tokens.length === 0) {
      ranges.push(null);
      continue;
    }
    if (start >= maxLength - 1) break;
    for (;;) {
      if (start >= last) {
        start = last;
        break;
      }
      if (ids[start] === tokens[0]) break;
      start++;
    }
    let end = start;
    let rel = 0;
    for (;;) {
      if (end >= last) {
        end = last;
        break;
      }
      if (ids[end] !== tokens[rel]) {
        throw new Error(
          `prompt weighting: token sequence mismatch for fragment ${f}: expected ${JSON.stringify(tokens)} at position ${start}`,
        );
      }
      rel++;
      if (rel === tokens.length) break;
      end++;
    }
    ranges.push([start, end]);
    start = end + 1;
  }
  return ranges;
}

/** compel's lerp weight for a fragment weight below 1. */
export function downWeightLerp(weight: number): number {
  const w = Math.max(1e-5, weight);
  return Math.tan(((1.0 - w) * Math.PI) / 2);
}

/**
 * Tokenizes weighted fragments the way compel does and lists what the text encoder must be
 * run on. Each fragment is tokenized alone (no bos/eos, at most maxLength - 2 tokens), the
 * sequences are concatenated, truncated to maxLength - 2, wrapped in bos/eos and padded.
 * An empty fragment list means the empty prompt.
 *
 * @returns arrays of length `tokenizer.maxLength` (77); see {@link WeightedTokenPlan}.
 */
export function planWeightedTokens(fragments: readonly WeightedFragment[], tokenizer: FragmentTokenizer): WeightedTokenPlan {
  const L = tokenizer.maxLength;
  if (!Number.isInteger(L) || L < 2) throw new Error(`prompt weighting: tokenizer.maxLength must be an integer >= 2, got ${L}`);
  const frags = fragments.length === 0 ? [{ text: '', weight: 1.0 }] : fragments;
  const perFragment = frags.map((f) => tokenizer.encodeFragment(f.text).slice(0, L - 2));
  const all: number[] = [];
  const allWeights: number[] = [];
  const allFrag: number[] = [];
  perFragment.forEach((ids, f) => {
    const w = Math.fround(frags[f]!.weight);
    for (const id of ids) {
      all.push(id);
      allWeights.push(w);
      allFrag.push(f);
    }
  });
  const kept = Math.min(all.length, L - 2);
  const pad = L - kept - 2;
  const ids = [tokenizer.bosId, ...all.slice(0, kept), tokenizer.eosId, ...new Array<number>(pad).fill(tokenizer.padId)];
  const weights = [1, ...allWeights.slice(0, kept), 1, ...new Array<number>(pad).fill(1)];
  const fragmentOfToken = [-1, ...allFrag.slice(0, kept), -1, ...new Array<number>(pad).fill(-1)];
  const mask = new Array<number>(L).fill(1);

  const downWeighted: DownWeightedFragment[] = [];
  const ranges = tokenRangesForFragments(ids, perFragment, L);
  ranges.forEach((range, f) => {
    const weight = frags[f]!.weight;
    // compel would crash on an empty fragment with weight < 1 (None range); nothing to mask.
    if (!(weight < 1) || range === null) return;
    const [start, end] = range;
    const m = mask.slice();
    for (let i = start; i <= end; i++) m[i] = 0;
    downWeighted.push({ fragmentIndex: f, weight, start, end, lerpWeight: downWeightLerp(weight), mask: m });
  });
  return { ids, weights, mask, fragmentOfToken, downWeighted, truncated: all.length > kept };
}

// ------------------------------------------------------------------------------------------
// Embedding arithmetic (float32, in torch's operation order)

/**
 * `empty_z + (z - empty_z) * w` per token, in float32 (compel's build_weighted_embedding_tensor).
 *
 * @param z encoder output `(T, hidden)` row-major, T = weights.length (77)
 * @param emptyZ encoding of `[bos, eos, pad...]`, same shape
 * @param weights per-token weights (T)
 * @returns `(T, hidden)`
 */
export function applyPromptWeights(z: Float32Array, emptyZ: Float32Array, weights: readonly number[], hidden: number): Float32Array {
  const T = weights.length;
  if (z.length !== T * hidden) throw new Error(`applyPromptWeights: z must have ${T}*${hidden} = ${T * hidden} values, got ${z.length}`);
  if (emptyZ.length !== T * hidden) {
    throw new Error(`applyPromptWeights: emptyZ must have ${T}*${hidden} = ${T * hidden} values, got ${emptyZ.length}`);
  }
  const out = new Float32Array(T * hidden);
  for (let t = 0; t < T; t++) {
    const w = Math.fround(weights[t]!);
    for (let k = t * hidden; k < (t + 1) * hidden; k++) {
      const e = emptyZ[k]!;
      out[k] = e + Math.fround(Math.fround(z[k]! - e) * w);
    }
  }
  return out;
}

/**
 * compel's MASK-mode blend for fragments weighted below 1: embeddings `[base, without_1, ...]`
 * with weights `[1, lerp_1, ...]` (float32), normalised by their float32 sum, then summed in order.
 *
 * @param base weighted embedding of the full prompt `(77, hidden)`
 * @param withoutFragments weighted embeddings with each down-weighted fragment masked out, same shape
 * @param lerpWeights `tan((1 - w) * pi / 2)` per entry of withoutFragments ({@link downWeightLerp})
 * @returns `(77, hidden)`; `base` itself (a copy) when there is nothing to blend
 */
export function blendDownWeighted(base: Float32Array, withoutFragments: readonly Float32Array[], lerpWeights: readonly number[]): Float32Array {
  if (withoutFragments.length !== lerpWeights.length) {
    throw new Error(`blendDownWeighted: ${withoutFragments.length} embeddings but ${lerpWeights.length} lerp weights`);
  }
  if (withoutFragments.length === 0) return base.slice();
  const embs = [base, ...withoutFragments];
  for (const e of embs) {
    if (e.length !== base.length) throw new Error(`blendDownWeighted: embeddings must all have ${base.length} values, got ${e.length}`);
  }
  const w = [1, ...lerpWeights].map((x) => Math.fround(x));
  let sum = 0;
  for (const x of w) sum = Math.fround(sum + x);
  const wn = w.map((x) => Math.fround(x / sum));
  const out = new Float32Array(base.length);
  for (let k = 0; k < base.length; k++) {
    let acc = Math.fround(embs[0]![k]! * wn[0]!);
    for (let i = 1; i < embs.length; i++) acc = Math.fround(acc + Math.fround(embs[i]![k]! * wn[i]!));
    out[k] = acc;
  }
  return out;
}

/** `[bos, eos, pad...]`: the token ids of compel's `empty_z`. */
export function emptyPromptIds(tokenizer: FragmentTokenizer): number[] {
  return [tokenizer.bosId, tokenizer.eosId, ...new Array<number>(tokenizer.maxLength - 2).fill(tokenizer.padId)];
}

/** Options of {@link encodeWeightedPrompt}. */
export interface EncodeWeightedOptions extends ParseOptions {
  /** Precomputed `empty_z` (encoding of {@link emptyPromptIds}); saves one encoder call per prompt. */
  emptyZ?: Float32Array;
}

/**
 * compel's conditioning tensor for one prompt: parse, tokenize, encode, weight and blend.
 * `encode` receives 77 ids and a 77-entry attention mask and returns `(77, hidden)`; it is
 * called once for `empty_z` (all-ones mask; compel passes no mask, which is the same for CLIP),
 * once for the prompt and once per down-weighted fragment.
 *
 * @returns `(77, hidden)` row-major
 */
export async function encodeWeightedPrompt(
  prompt: string,
  tokenizer: FragmentTokenizer,
  encode: EncodeFn,
  hidden: number,
  options: EncodeWeightedOptions = {},
): Promise<Float32Array> {
  const plan = planWeightedTokens(parseWeightedPrompt(prompt, options), tokenizer);
  const L = tokenizer.maxLength;
  const call = async (ids: number[], mask: number[], what: string): Promise<Float32Array> => {
    const z = await encode(ids, mask);
    if (z.length !== L * hidden) {
      throw new Error(`encodeWeightedPrompt: encode() for ${what} returned ${z.length} values, expected ${L}*${hidden} = ${L * hidden}`);
    }
    return z;
  };
  const emptyZ = options.emptyZ ?? (await call(emptyPromptIds(tokenizer), new Array<number>(L).fill(1), 'the empty prompt'));
  if (emptyZ.length !== L * hidden) throw new Error(`encodeWeightedPrompt: options.emptyZ must have ${L * hidden} values, got ${emptyZ.length}`);
  const base = applyPromptWeights(await call(plan.ids, plan.mask, JSON.stringify(prompt)), emptyZ, plan.weights, hidden);
  if (plan.downWeighted.length === 0) return base;
  const without: Float32Array[] = [];
  for (const d of plan.downWeighted) {
    const z = await call(plan.ids, d.mask, `${JSON.stringify(prompt)} without fragment ${d.fragmentIndex}`);
    without.push(applyPromptWeights(z, emptyZ, plan.weights, hidden));
  }
  return blendDownWeighted(base, without, plan.downWeighted.map((d) => d.lerpWeight));
}

// ------------------------------------------------------------------------------------------
// ELBO-T2IAlign (run_generation.py)

/**
 * Python's `repr(float)`: shortest round-trip digits, fixed notation for exponents -4..15
 * (always with a `.0` when integral), otherwise `1.5e-05` / `1e+16` style; `nan`, `inf`.
 */
export function pythonFloatRepr(x: number): string {
  if (Number.isNaN(x)) return 'nan';
  if (x === Infinity) return 'inf';
  if (x === -Infinity) return '-inf';
  if (x === 0) return Object.is(x, -0) ? '-0.0' : '0.0';
  const [mant, expStr] = x.toExponential().split('e') as [string, string];
  const exp = Number(expStr);
  const neg = mant.startsWith('-');
  const digits = mant.replace('-', '').replace('.', '');
  const sign = neg ? '-' : '';
  if (exp >= -4 && exp < 16) {
    let body: string;
    if (exp < 0) body = `0.${'0'.repeat(-exp - 1)}${digits}`;
    else if (digits.length <= exp + 1) body = `${digits}${'0'.repeat(exp + 1 - digits.length)}.0`;
    else body = `${digits.slice(0, exp + 1)}.${digits.slice(exp + 1)}`;
    return sign + body;
  }
  const m = digits.length === 1 ? digits : `${digits[0]}.${digits.slice(1)}`;
  const e = `${exp < 0 ? '-' : '+'}${String(Math.abs(exp)).padStart(2, '0')}`;
  return `${sign}${m}e${e}`;
}

/**
 * run_generation.py's `generate_prompt`: wraps each phrase's first occurrence as
 * `(phrase)weight`, weight printed as Python's repr of the float (e.g. float32 1.2 ->
 * `1.2000000476837158`), replacing from the last occurrence backwards. Like the reference, a
 * phrase that occurs twice, or inside an earlier phrase, gives a garbled prompt.
 *
 * @throws Error if a phrase does not occur in the prompt (the reference would splice at index -1)
 */
export function buildWeightedPrompt(prompt: string, phrases: readonly string[], weights: readonly number[]): string {
  if (phrases.length !== weights.length) {
    throw new Error(`buildWeightedPrompt: ${phrases.length} phrases but ${weights.length} weights`);
  }
  const annotated = phrases.map((phrase, i) => {
    const start = prompt.indexOf(phrase);
    if (start < 0) throw new Error(`buildWeightedPrompt: phrase ${JSON.stringify(phrase)} does not occur in prompt ${JSON.stringify(prompt)}`);
    return { start, end: start + phrase.length, phrase, weight: weights[i]! };
  });
  annotated.sort((a, b) => a.start - b.start); // stable, as Python's sort
  let result = prompt;
  for (let i = annotated.length - 1; i >= 0; i--) {
    const a = annotated[i]!;
    result = `${result.slice(0, a.start)}(${a.phrase})${pythonFloatRepr(a.weight)}${result.slice(a.end)}`;
  }
  return result;
}

/** torch.round(x, decimals=2) on a float32: nearbyint(x * 100) / 100, all float32, ties to even. */
function roundFloat32To2(x: number): number {
  const y = Math.fround(x * Math.fround(100));
  let r = Math.round(y);
  if (Math.abs(y - Math.trunc(y)) === 0.5) r = 2 * Math.round(y / 2);
  return Math.fround(r / 100);
}

/**
 * ELBO weights of run_generation.py, in float32 as torch computes them:
 * `round(strength ** ((s - min) / (max - min)), 2)`. Returns float32 values widened to double
 * (what `.tolist()` gives). With fewer than two phrases the reference does not re-weight and
 * keeps 1.0; when all scores are equal the reference divides 0 by 0 (NaN weights, which then
 * leak into the prompt as the word "nan"); this port returns 1.0 (strength ** 0) instead.
 *
 * @param scores per-phrase misalignment scores (MSE between full-prompt and phrase predictions)
 * @param strength elbo_strength (1.2 in configs/run_generation.yaml)
 */
export function elboWeights(scores: readonly number[], strength: number): number[] {
  return elboWeightsUnrounded(scores, strength).map(roundFloat32To2);
}

/** {@link elboWeights} before rounding: `strength ** minmax(scores)` in float32 (`stepK.weights_unrounded`). */
export function elboWeightsUnrounded(scores: readonly number[], strength: number): number[] {
  if (scores.length < 2) return scores.map(() => 1.0);
  const s = scores.map((x) => Math.fround(x));
  let lo = s[0]!;
  let hi = s[0]!;
  for (const x of s) {
    if (Number.isNaN(x)) throw new Error(`elboWeights: score is NaN in ${JSON.stringify(scores)}`);
    lo = Math.min(lo, x);
    hi = Math.max(hi, x);
  }
  const range = Math.fround(hi - lo);
  const base = Math.fround(strength);
  return s.map((x) => (range === 0 ? 1.0 : Math.fround(Math.pow(base, Math.fround(Math.fround(x - lo) / range)))));
}
