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
