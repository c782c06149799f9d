/**
 * Text helpers for the tool-definition scanner: the folded views that rules
 * match against (with a map back to offsets in the original string), visible
 * rendering of invisible characters, and the decoders used to look inside
 * encoded blobs. Everything here is linear in the input length.
 */
import { gunzipSync } from "node:zlib";

/** Characters that render as nothing (or nearly): format controls, default-ignorables, tags, selectors. */
const INVISIBLE = /[\p{Cf}\p{Default_Ignorable_Code_Point}\p{Cc}\p{Co}\p{Cs}]/u;
const WHITESPACE = /\p{White_Space}/u;
const NEWLINE = /[\n\r\u2028\u2029\u0085\v\f]/u;
const ASCII_PRINTABLE = /^[\x20-\x7e]$/;

/** A view of a string that rules match against, with each code unit mapped to its source span. */
export interface FoldedText {
  text: string;
  /** srcStart[i], srcEnd[i]: the original [start, end) the i-th folded code unit came from. */
  srcStart: Uint32Array;
  srcEnd: Uint32Array;
}

export function isInvisible(ch: string): boolean {
  // Ordinary line breaks and tabs are visible layout, not hidden content.
  if (ch === "\n" || ch === "\t" || ch === "\r") return false;
  return INVISIBLE.test(ch);
}

/**
 * Folds text for matching: drops invisible characters (so "ig<U+200B>nore" reads "ignore"),
 * collapses every whitespace run to one space (or one newline when the run holds a line
 * break), and applies NFKC per code point (fullwidth and mathematical letters become ASCII).
 * With `identifier`, separators and camelCase humps become spaces, so
 * `before_calling_readTheFile` reads as words.
 */
export function foldText(s: string, identifier = false): FoldedText {
  const out: string[] = [];
  const starts: number[] = [];
  const ends: number[] = [];
  let pendingSpace: "" | " " | "\n" = "";
  let spaceAt = 0;
  let prevLower = false;
  const emit = (piece: string, start: number, end: number): void => {
    if (pendingSpace !== "") {
      if (out.length > 0) {
        out.push(pendingSpace);
        starts.push(spaceAt);
        ends.push(start);
      }
      pendingSpace = "";
    }
    for (let k = 0; k < piece.length; k++) {
      out.push(piece[k] as string);
      starts.push(start);
      ends.push(end);
    }
  };
  let i = 0;
  while (i < s.length) {
    const cp = s.codePointAt(i) as number;
    const ch = String.fromCodePoint(cp);
    const end = i + ch.length;
    if (WHITESPACE.test(ch) || (identifier && (ch === "_" || ch === "-" || ch === "."))) {
      if (pendingSpace === "") spaceAt = i;
      if (NEWLINE.test(ch)) pendingSpace = "\n";
      else if (pendingSpace === "") pendingSpace = " ";
      prevLower = false;
    } else if (isInvisible(ch)) {
      // dropped: hidden characters must not split the words rules look for
    } else {
      const piece = cp < 0x80 ? ch : ch.normalize("NFKC");
      if (identifier && prevLower && /^\p{Lu}/u.test(piece) && pendingSpace === "") {
        pendingSpace = " ";
        spaceAt = i;
      }
      emit(piece, i, end);
      prevLower = /\p{Ll}$|\p{Nd}$/u.test(piece);
    }
    i = end;
  }
  return { text: out.join(""), srcStart: Uint32Array.from(starts), srcEnd: Uint32Array.from(ends) };
}

/** Maps a [start, end) range of a folded view back to the original string. */
export function mapSpan(f: FoldedText, start: number, end: number): { start: number; end: number } {
  if (f.text.length === 0) return { start: 0, end: 0 };
  const s = Math.min(Math.max(start, 0), f.text.length - 1);
  const e = Math.min(Math.max(end - 1, s), f.text.length - 1);
  return { start: f.srcStart[s] as number, end: f.srcEnd[e] as number };
}

/** U+XXXX notation. */
export function codepointName(cp: number): string {
  return `U+${cp.toString(16).toUpperCase().padStart(4, "0")}`;
}

/**
 * Renders text for a reviewer: invisible and control characters become <U+XXXX>, runs of
 * the same one <U+XXXX ×n>, line breaks and tabs \n and \t; long text is cut with a count.
 */
export function renderVisible(s: string, maxChars = 240): string {
  const out: string[] = [];
  let len = 0;
  let i = 0;
  while (i < s.length && len < maxChars) {
    const cp = s.codePointAt(i) as number;
    const ch = String.fromCodePoint(cp);
    let piece: string;
    let step = ch.length;
    if (ch === "\n") piece = "\\n";
    else if (ch === "\t") piece = "\\t";
    else if (ch === "\r") piece = "\\r";
    else if (isInvisible(ch) || cp === 0xa0 || (WHITESPACE.test(ch) && ch !== " ")) {
      let n = 1;
      while (s.codePointAt(i + step) === cp) {
        n++;
        step += ch.length;
      }
      piece = n > 2 ? `<${codepointName(cp)} ×${n}>` : `<${codepointName(cp)}>`.repeat(n);
    } else piece = ch;
    out.push(piece);
    len += piece.length;
    i += step;
  }
  let r = out.join("");
  if (i < s.length) r += `… (+${s.length - i} more)`;
  return r;
}

/** Shannon entropy in bits per character. */
export function entropy(s: string): number {
  if (s.length === 0) return 0;
  const counts = new Map<string, number>();
  for (const ch of s) counts.set(ch, (counts.get(ch) ?? 0) + 1);
  let h = 0;
  for (const n of counts.values()) {
    const p = n / s.length;
    h -= p * Math.log2(p);
  }
  return h;
}

/** Printable-text check for decoded bytes: mostly printable, and at least `minWords` words. */
export function readableText(bytes: Uint8Array, minWords: number): string | null {
  if (bytes.length === 0) return null;
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    return null;
  }
  let printable = 0;
  let total = 0;
  for (const ch of text) {
    total++;
    if (ASCII_PRINTABLE.test(ch) || ch === "\n" || ch === "\t" || ch === "\r" || /\p{L}/u.test(ch))
      printable++;
  }
  if (total === 0 || printable / total < 0.9) return null;
  const words = text.match(/\p{L}{2,20}/gu) ?? [];
  const spaces = text.match(/\s/gu) ?? [];
  if (words.length < minWords || spaces.length < minWords - 1) return null;
  return text;
}

const B64 = new Map<string, number>();
"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".split("").forEach((c, i) => B64.set(c, i));
B64.set("-", 62);
B64.set("_", 63);
const B32 = new Map<string, number>();
"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567".split("").forEach((c, i) => B32.set(c, i));

/** Packs `bitsPerChar` bits per character of `body` into bytes (trailing bits dropped); null on a foreign character. */
function decodeBits(
  body: string,
  bitsPerChar: number,
  alphabet: ReadonlyMap<string, number>,
): Uint8Array | null {
  const out = new Uint8Array(Math.floor((body.length * bitsPerChar) / 8));
  let acc = 0;
  let bits = 0;
  let o = 0;
  for (const c of body) {
    const v = alphabet.get(c);
    if (v === undefined) return null;
    acc = ((acc << bitsPerChar) | v) & 0xffffff;
    bits += bitsPerChar;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (acc >> bits) & 0xff;
    }
  }
  return out.subarray(0, o);
}

/** Decodes standard or URL-safe base64 (padding optional); null when it is not base64. */
export function decodeBase64(s: string): Uint8Array | null {
  const body = s.replace(/=+$/, "");
  return body.length % 4 === 1 ? null : decodeBits(body, 6, B64);
}

/** Decodes RFC 4648 base32 (upper case, padding optional); null when it is not base32. */
export function decodeBase32(s: string): Uint8Array | null {
  return decodeBits(s.replace(/=+$/, ""), 5, B32);
}

export function decodeHex(s: string): Uint8Array | null {
  if (s.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(s)) return null;
  return Uint8Array.from(Buffer.from(s, "hex"));
}

/** Decodes a run of %XX escapes. */
export function decodePercent(s: string): Uint8Array | null {
  const hex = s.replace(/%/g, "");
  return hex.length * 3 === s.length * 2 ? decodeHex(hex) : null;
}

export function rot13(s: string): string {
  return s.replace(/[A-Za-z]/g, (c) => {
    const base = c <= "Z" ? 65 : 97;
    return String.fromCharCode(((c.charCodeAt(0) - base + 13) % 26) + base);
  });
}

/** Gunzips at most maxOutput bytes; null when the input is not gzip. */
export function gunzipLimited(bytes: Uint8Array, maxOutput: number): Uint8Array | null {
  if (bytes.length < 18 || bytes[0] !== 0x1f || bytes[1] !== 0x8b) return null;
  try {
    return gunzipSync(bytes, { maxOutputLength: maxOutput });
  } catch (err) {
    // A truncated stream or one that exceeds the cap still tells us it was gzip; show nothing.
    return (err as NodeJS.ErrnoException).code === "ERR_BUFFER_TOO_LARGE" ? new Uint8Array(0) : null;
  }
}

/** Names of the scripts the scanner distinguishes, tested with \p{Script=...}. */
const scriptCache = new Map<string, RegExp>();
export function scriptTester(name: string): RegExp {
  let re = scriptCache.get(name);
  if (re === undefined) {
    re = new RegExp(`^\\p{Script=${name}}$`, "u");
    scriptCache.set(name, re);
  }
  return re;
}

/** True when `name` is a Unicode script name this engine's RegExp understands. */
export function isKnownScript(name: string): boolean {
  if (!/^[A-Za-z_]{2,40}$/.test(name)) return false;
  try {
    scriptTester(name);
    return true;
  } catch {
    return false;
  }
}

// ---- escape sequences ---------------------------------------------------------------------------

/**
 * One escape token at a position: \xHH, \uHHHH, \u{H..}, \NNN (octal), &#xH..; or &#D..;,
 * %HH, and 0xHH (a byte written as a hex literal, as in "0x72, 0x6d").
 */
const ESCAPE_TOKEN =
  /\\x([0-9A-Fa-f]{2})|\\u([0-9A-Fa-f]{4})|\\u\{([0-9A-Fa-f]{1,6})\}|\\([0-3][0-7]{2})|&#[xX]([0-9A-Fa-f]{1,6});|&#([0-9]{1,7});|%([0-9A-Fa-f]{2})|0[xX]([0-9A-Fa-f]{2})(?![0-9A-Za-z])/y;

interface EscapeToken {
  end: number;
  /** A 0xHH literal: such tokens may be separated by ", " or blanks. */
  literal?: boolean;
  /** A byte of UTF-8 (\x, octal, %) or a code point (\u, &#). */
  byte?: number;
  cp?: number;
}

function escapeAt(s: string, i: number, percent: boolean): EscapeToken | null {
  const c = s.charCodeAt(i);
  // '\\', '&', '%' or '0' start every token; anything else is skipped without running the regex.
  if (c !== 0x5c && c !== 0x26 && c !== 0x25 && c !== 0x30) return null;
  // A hex literal starts a word ("0x41", not "100x41").
  if (c === 0x30 && i > 0 && /[0-9A-Za-z_]/.test(s[i - 1] as string)) return null;
  ESCAPE_TOKEN.lastIndex = i;
  const m = ESCAPE_TOKEN.exec(s);
  if (m === null) return null;
  const end = i + m[0].length;
  if (m[1] !== undefined) return { end, byte: parseInt(m[1], 16) };
  if (m[2] !== undefined) return { end, cp: parseInt(m[2], 16) };
  if (m[4] !== undefined) return { end, byte: parseInt(m[4], 8) };
  if (m[7] !== undefined) return percent ? { end, byte: parseInt(m[7], 16) } : null;
  if (m[8] !== undefined) return { end, byte: parseInt(m[8], 16), literal: true };
  const cp = parseInt((m[3] ?? m[5] ?? m[6]) as string, m[6] !== undefined ? 10 : 16);
  return cp <= 0x10ffff ? { end, cp } : null;
}

/** Accumulates bytes and code points into text, decoding byte runs as UTF-8 (lenient). */
class EscapeDecoder {
  private bytes: number[] = [];
  private byteStarts: number[] = [];
  private byteEnds: number[] = [];
  readonly out: string[] = [];
  readonly starts: number[] = [];
  readonly ends: number[] = [];

  byte(b: number, start: number, end: number): void {
    this.bytes.push(b);
    this.byteStarts.push(start);
    this.byteEnds.push(end);
  }

  text(t: string, start: number, end: number): void {
    this.flush();
    for (let k = 0; k < t.length; k++) {
      this.out.push(t[k] as string);
      this.starts.push(start);
      this.ends.push(end);
    }
  }

  flush(): void {
    if (this.bytes.length === 0) return;
    const text = new TextDecoder("utf-8").decode(Uint8Array.from(this.bytes));
    // Every decoded unit maps to the whole byte run: UTF-8 sequences do not map one to one.
    const start = this.byteStarts[0] as number;
    const end = this.byteEnds[this.byteEnds.length - 1] as number;
    if (text.length === this.bytes.length) {
      // ASCII: one unit per byte, so each keeps its own escape.
      for (let k = 0; k < text.length; k++) {
        this.out.push(text[k] as string);
        this.starts.push(this.byteStarts[k] as number);
        this.ends.push(this.byteEnds[k] as number);
      }
    } else
      for (let k = 0; k < text.length; k++) {
        this.out.push(text[k] as string);
        this.starts.push(start);
        this.ends.push(end);
      }
    this.bytes = [];
    this.byteStarts = [];
    this.byteEnds = [];
  }
}

/** After a 0xHH literal at `end`: where the next literal starts when only ", " or blanks separate them, or -1. */
function nextLiteral(s: string, end: number): number {
  let k = end;
  while (k < s.length && k - end < 3 && (s[k] === "," || s[k] === " ")) k++;
  if (k === end) return -1;
  const t = escapeAt(s, k, false);
  return t?.literal === true ? k : -1;
}

/**
 * The one escape tokenizer the run finder, the run decoder and the unescaped view share: the token
 * at `i` and where the next one may start (past the ", " between 0xHH literals), or null.
 */
function escapeStep(s: string, i: number, percent: boolean): (EscapeToken & { next: number }) | null {
  const t = escapeAt(s, i, percent);
  if (t === null) return null;
  const lit = t.literal === true ? nextLiteral(s, t.end) : -1;
  return { ...t, next: lit >= 0 ? lit : t.end };
}

/** Feeds one token to a decoder, mapped to its own span [start, token end). */
function decodeToken(d: EscapeDecoder, t: EscapeToken, start: number): void {
  if (t.byte !== undefined) d.byte(t.byte, start, t.end);
  else d.text(String.fromCodePoint(t.cp as number), start, t.end);
}

/** Maximal runs of at least minTokens consecutive escape tokens (\x, \u, \u{}, octal, &#), as [start, end). */
export function escapeRuns(s: string, minTokens: number): { start: number; end: number; tokens: number }[] {
  const out: { start: number; end: number; tokens: number }[] = [];
  let i = 0;
  while (i < s.length) {
    let t = escapeStep(s, i, false);
    if (t === null) {
      i++;
      continue;
    }
    const start = i;
    let tokens = 0;
    while (t !== null) {
      tokens++;
      i = t.next;
      t = escapeStep(s, i, false);
    }
    if (tokens >= minTokens) out.push({ start, end: i, tokens });
  }
  return out;
}

/** Decodes a run made only of escape tokens to UTF-8 bytes; null when something else is in it. */
export function decodeEscapes(run: string): Uint8Array | null {
  const d = new EscapeDecoder();
  let i = 0;
  while (i < run.length) {
    const t = escapeStep(run, i, false);
    if (t === null) return null;
    decodeToken(d, t, i);
    i = t.next;
  }
  d.flush();
  return Uint8Array.from(Buffer.from(d.out.join(""), "utf8"));
}

/** A string read another way, with each code unit mapped back to its source span. */
export interface TextView {
  text: string;
  srcStart: Uint32Array;
  srcEnd: Uint32Array;
}

/**
 * The string with every escape (\xHH, \uHHHH, \u{H}, octal, &#..;, %HH, 0xHH) replaced by what
 * it stands for, when it holds at least minTokens of them; null otherwise. Text between escapes
 * is kept, so "ignore%20previous%20instructions" reads "ignore previous instructions".
 */
export function unescapeView(s: string, minTokens: number): TextView | null {
  const d = new EscapeDecoder();
  let tokens = 0;
  let i = 0;
  while (i < s.length) {
    const t = escapeStep(s, i, true);
    if (t === null) {
      const cp = s.codePointAt(i) as number;
      const ch = String.fromCodePoint(cp);
      d.text(ch, i, i + ch.length);
      i += ch.length;
      continue;
    }
    tokens++;
    decodeToken(d, t, i);
    i = t.next;
  }
  d.flush();
  if (tokens < minTokens) return null;
  return { text: d.out.join(""), srcStart: Uint32Array.from(d.starts), srcEnd: Uint32Array.from(d.ends) };
}

// ---- look-alike letters -------------------------------------------------------------------------

/**
 * Cyrillic, Greek and other letters that render like Latin ones (a subset of the UTS #39
 * confusables), each one UTF-16 unit mapped to one ASCII letter.
 */
const CONFUSABLE_TO_LATIN: Readonly<Record<string, string>> = {
  // Cyrillic
  а: "a",
  в: "b",
  е: "e",
  ё: "e",
  к: "k",
  м: "m",
  н: "h",
  о: "o",
  р: "p",
  с: "c",
  т: "t",
  у: "y",
  х: "x",
  ѕ: "s",
  і: "i",
  ї: "i",
  ј: "j",
  һ: "h",
  ԁ: "d",
  ԛ: "q",
  ԝ: "w",
  ӏ: "l",
  ɡ: "g",
  ʏ: "y",
  А: "A",
  В: "B",
  Е: "E",
  К: "K",
  М: "M",
  Н: "H",
  О: "O",
  Р: "P",
  С: "C",
  Т: "T",
  Х: "X",
  У: "Y",
  Ѕ: "S",
  І: "I",
  Ј: "J",
  Ԁ: "D",
  Ԛ: "Q",
  Ԝ: "W",
  Ӏ: "I",
  // Greek
  α: "a",
  ο: "o",
  ρ: "p",
  ν: "v",
  τ: "t",
  ι: "i",
  κ: "k",
  ε: "e",
  υ: "u",
  χ: "x",
  ϲ: "c",
  ϳ: "j",
  Α: "A",
  Β: "B",
  Ε: "E",
  Ζ: "Z",
  Η: "H",
  Ι: "I",
  Κ: "K",
  Μ: "M",
  Ν: "N",
  Ο: "O",
  Ρ: "P",
  Τ: "T",
  Υ: "Y",
  Χ: "X",
  // Armenian and others
  օ: "o",
  ս: "u",
  ց: "g",
  հ: "h",
  ո: "n",
  ք: "f",
};
const LATIN_LETTER = /^\p{Script=Latin}$/u;

/**
 * The string with look-alike letters replaced by the Latin letters they imitate, in words that
 * mix them with Latin letters ("ignоre" with a Cyrillic о); null when no word does. Each unit
 * maps to itself, so offsets are unchanged. Words wholly in another script are left alone.
 */
export function confusableView(s: string): string | null {
  let out: string[] | null = null;
  const word = /[\p{L}\p{M}]{1,200}/gu;
  for (const m of s.matchAll(word)) {
    const w = m[0];
    let latin = false;
    let lookalike = false;
    for (const ch of w) {
      if (CONFUSABLE_TO_LATIN[ch] !== undefined) lookalike = true;
      else if (LATIN_LETTER.test(ch)) latin = true;
    }
    if (!latin || !lookalike) continue;
    out ??= s.split("");
    for (let k = 0; k < w.length; k++) {
      const rep = CONFUSABLE_TO_LATIN[w[k] as string];
      if (rep !== undefined) out[m.index + k] = rep;
    }
  }
  if (out === null) return null;
  return out.join("");
}

// ---- leetspeak and spaced-out letters -----------------------------------------------------------

const LEET: Readonly<Record<string, string>> = {
  "0": "o",
  "1": "i",
  "3": "e",
  "4": "a",
  "5": "s",
  "7": "t",
  "8": "b",
  "@": "a",
  $: "s",
};

/**
 * The string with digits and symbols standing in for letters read as letters ("1gn0r3" reads
 * "ignore") in tokens that mix them with letters, when at least two tokens of three or more
 * characters with two or more letters do (so "A1:B2" or "v2" alone change nothing); null
 * otherwise. One unit maps to one unit, so offsets are unchanged.
 */
export function leetView(s: string): string | null {
  const tokens: { at: number; w: string }[] = [];
  let strong = 0;
  for (const m of s.matchAll(/[A-Za-z0-9@$]{2,64}/g)) {
    const w = m[0];
    if (!/[A-Za-z]/.test(w) || !/[0134578@$]/.test(w)) continue;
    tokens.push({ at: m.index, w });
    if (w.length >= 3 && /[A-Za-z][^A-Za-z]{0,64}[A-Za-z]/.test(w)) strong++;
  }
  if (strong < 2) return null;
  const out = s.split("");
  for (const { at, w } of tokens)
    for (let k = 0; k < w.length; k++) {
      const rep = LEET[w[k] as string];
      if (rep !== undefined) out[at + k] = rep;
    }
  return out.join("");
}

const LETTER = /^\p{L}$/u;
const SPACER = new Set([" ", ".", "-", "_", "*", "\u00b7", "|", "/", "+", "~"]);

/**
 * Text spelled out one letter at a time ("i g n o r e  a l l", "i.g.n.o.r.e") joined back into
 * words: letters separated by the run's spacer character join; a wider gap, or another spacer
 * ("d.o n.o.t"), becomes one space. Only
 * runs of at least minLetters letters are joined; null when there is none. Each unit of the
 * view maps back to the letter (or gap) it came from.
 */
export function spacedView(s: string, minLetters = 6): TextView | null {
  const out: string[] = [];
  const starts: number[] = [];
  const ends: number[] = [];
  const push = (ch: string, a: number, b: number): void => {
    out.push(ch);
    starts.push(a);
    ends.push(b);
  };
  let joined = false;
  let i = 0;
  const isLetterAt = (k: number): boolean => k < s.length && LETTER.test(s[k] as string);
  while (i < s.length) {
    // A run: letter, then repeatedly (one spacer, letter) or (a gap of 2-4 blanks, letter),
    // where each letter stands alone (no letter right after it).
    const single = (k: number): boolean => isLetterAt(k) && !isLetterAt(k + 1) && !isLetterAt(k - 1);
    if (!single(i)) {
      push(s[i] as string, i, i + 1);
      i++;
      continue;
    }
    const letters: { at: number; gapBefore: boolean }[] = [{ at: i, gapBefore: false }];
    // The spacer inside words is the first one used; another one (a blank between "d.o n.o.t") is a word gap.
    let sep: string | undefined;
    let k = i + 1;
    for (;;) {
      const c = s[k] as string;
      if (k < s.length && SPACER.has(c) && single(k + 1)) {
        sep ??= c;
        letters.push({ at: k + 1, gapBefore: c !== sep });
        k += 2;
        continue;
      }
      let g = k;
      while (g < s.length && g - k < 4 && (s[g] === " " || s[g] === "\t")) g++;
      if (g - k >= 2 && single(g) && letters.length > 0) {
        letters.push({ at: g, gapBefore: true });
        k = g + 1;
        continue;
      }
      break;
    }
    if (letters.length >= minLetters) {
      joined = true;
      for (const l of letters) {
        if (l.gapBefore) push(" ", l.at - 1, l.at);
        push(s[l.at] as string, l.at, l.at + 1);
      }
      i = k;
    } else {
      push(s[i] as string, i, i + 1);
      i++;
    }
  }
  if (!joined) return null;
  return { text: out.join(""), srcStart: Uint32Array.from(starts), srcEnd: Uint32Array.from(ends) };
}
