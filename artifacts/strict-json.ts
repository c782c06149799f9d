/**
 * Strict RFC 8259 parser for untrusted JSON.
 *
 * Beyond the grammar it rejects what JSON.parse would silently accept and
 * change: duplicate keys (JSON.parse keeps the last), integer literals beyond
 * 2^53 (rounded), \u escapes or raw code units that leave a lone surrogate
 * (not representable in RFC 8785 canonical form), number literals that
 * overflow to ±Infinity, and, for byte input, invalid UTF-8 and a BOM.
 *
 * The parser is iterative with an explicit stack, so nesting depth can never
 * overflow the call stack whatever maxDepth is. Every failure is a CmcpError
 * whose detail.offset is a byte offset for Uint8Array input and a UTF-16 code
 * unit index for string input.
 *
 * `__proto__`: results are ordinary objects (prototype Object.prototype, so
 * hasOwnProperty, toString and friends keep working for ordinary code), and any
 * key that is visible through the prototype chain (`__proto__`, `constructor`,
 * `toString`, ...) is stored with Object.defineProperty as an own data property,
 * exactly as JSON.parse does. Plain assignment would invoke the inherited
 * `__proto__` setter (replacing the object's prototype) or throw on a frozen
 * Object.prototype.
 */
import { CmcpError } from "./errors.js";

export interface JsonLimits {
  /** Input size in UTF-8 bytes (a string input is measured by its UTF-8 encoding). */
  maxBytes: number;
  /** Container nesting; the top-level object or array is depth 1. */
  maxDepth: number;
  /** Length of any string, keys included, in UTF-16 code units after unescaping. */
  maxStringLength: number;
  /** Entries in any single object or array. */
  maxMembers: number;
  /** Values in the whole document, containers included: bounds memory for many tiny values. */
  maxValues: number;
}

export const DEFAULT_JSON_LIMITS: Readonly<JsonLimits> = Object.freeze({
  // Larger than any receipt, capture or bundle section we expect; bounds memory and time per parse.
  maxBytes: 16 * 1024 * 1024,
  // Real protocol messages nest < 20 deep; 64 leaves room while keeping consumers' recursion shallow.
  maxDepth: 64,
  // 1 MiB code units: tool arguments and results can be large text, but not unbounded.
  maxStringLength: 1024 * 1024,
  // Caps per-container work (key sorting, duplicate checks, downstream loops).
  maxMembers: 100_000,
  // 16 MiB of `[0,0,...]` is 8M values (~0.5 GB of heap); real documents hold far fewer.
  maxValues: 2_000_000,
});

const LIMIT_NAMES = ["maxBytes", "maxDepth", "maxStringLength", "maxMembers", "maxValues"] as const;

/** 2^53, as digits: integer literals longer than this, or equally long and greater, are rejected. */
const MAX_INT_DIGITS = "9007199254740992";

const utf8Decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

type Container = unknown[] | Record<string, unknown>;

/** Parses untrusted JSON text or UTF-8 bytes; throws CmcpError (codes `json.*`) on anything else. */
export function parseJson(input: string | Uint8Array, limits?: Partial<JsonLimits>): unknown {
  return parseWith(input, resolveLimits(limits)).value;
}

/** As parseJson, and also reports how many values the document held (for budgets across documents). */
export function parseJsonCounted(
  input: string | Uint8Array,
  limits?: Partial<JsonLimits>,
): { value: unknown; values: number } {
  return parseWith(input, resolveLimits(limits));
}

function parseWith(input: string | Uint8Array, lim: JsonLimits): { value: unknown; values: number } {
  let text: string;
  let fromBytes = false;
  if (typeof input === "string") {
    // UTF-8 length >= UTF-16 length, so the cheap test settles huge inputs without scanning them.
    if (
      input.length > lim.maxBytes ||
      (input.length * 3 > lim.maxBytes && Buffer.byteLength(input, "utf8") > lim.maxBytes)
    ) {
      throw tooLarge(lim.maxBytes);
    }
    text = input;
  } else if (input instanceof Uint8Array) {
    if (input.length > lim.maxBytes) throw tooLarge(lim.maxBytes);
    text = decodeUtf8(input);
    fromBytes = true;
  } else {
    throw new CmcpError("json.syntax", "input must be a string or Uint8Array", { offset: 0 });
  }
  return new Parser(text, lim, fromBytes).parseDocument();
}

function resolveLimits(partial: Partial<JsonLimits> | undefined): JsonLimits {
  if (partial === undefined) return DEFAULT_JSON_LIMITS;
  const out = { ...DEFAULT_JSON_LIMITS };
  for (const name of LIMIT_NAMES) {
    const v = partial[name];
    if (v === undefined) continue;
    if (typeof v !== "number" || !(Number.isInteger(v) || v === Infinity) || v < 0) {
      throw new CmcpError("json.limits", `limit ${name} must be a non-negative integer or Infinity`, {
        offset: 0,
      });
    }
    out[name] = v;
  }
  return out;
}

function tooLarge(maxBytes: number): CmcpError {
  return new CmcpError("json.too-large", `input exceeds ${maxBytes} bytes at offset ${maxBytes}`, {
    offset: maxBytes,
  });
}

function decodeUtf8(bytes: Uint8Array): string {
  if (bytes.length >= 3 && bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf) {
    throw new CmcpError("json.utf8", "byte order mark is not allowed at offset 0", { offset: 0 });
  }
  try {
    return utf8Decoder.decode(bytes);
  } catch {
    // Slow path only: locate the fault for the error message.
    const bad = findInvalidUtf8(bytes);
    if (bad < 0) {
      // Defensive: the decoder refused bytes that are valid UTF-8; decode them another way.
      return Buffer.from(bytes).toString("utf8");
    }
    throw new CmcpError("json.utf8", `invalid UTF-8 sequence at offset ${bad}`, { offset: bad });
  }
}

/** Offset of the first ill-formed sequence per Unicode table 3-7, or -1. */
function findInvalidUtf8(b: Uint8Array): number {
  const n = b.length;
  let i = 0;
  while (i < n) {
    const c = b[i]!;
    if (c < 0x80) {
      i++;
      continue;
    }
    let need: number;
    let lo = 0x80;
    let hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) need = 1;
    else if (c >= 0xe0 && c <= 0xef) {
      need = 2;
      if (c === 0xe0) lo = 0xa0;
      else if (c === 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      need = 3;
      if (c === 0xf0) lo = 0x90;
      else if (c === 0xf4) hi = 0x8f;
    } else return i;
    if (i + need >= n) return i;
    const c1 = b[i + 1]!;
    if (c1 < lo || c1 > hi) return i;
    for (let k = 2; k <= need; k++) {
      const ck = b[i + k]!;
      if (ck < 0x80 || ck > 0xbf) return i;
    }
    i += need + 1;
  }
  return -1;
}

function hexValue(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  const l = c | 0x20;
  if (l >= 0x61 && l <= 0x66) return l - 0x57;
  return -1;
}

function describeChar(c: number): string {
  const hex = "U+" + c.toString(16).toUpperCase().padStart(4, "0");
  return c >= 0x21 && c <= 0x7e ? `'${String.fromCharCode(c)}' (${hex})` : hex;
}

class Parser {
  private pos = 0;
  private readonly len: number;

  constructor(
    private readonly text: string,
    private readonly lim: JsonLimits,
    private readonly fromBytes: boolean,
  ) {
    this.len = text.length;
  }

  private fail(code: string, what: string, at: number): never {
    // Byte offsets for byte input: that is what a hex dump of the rejected message shows.
    const offset = this.fromBytes ? Buffer.byteLength(this.text.slice(0, at), "utf8") : at;
    throw new CmcpError(code, `${what} at offset ${offset}`, { offset });
  }

  parseDocument(): { value: unknown; values: number } {
    const lim = this.lim;
    // Explicit stack of open containers (the innermost lives in `cur`).
    const parents: Container[] = [];
    const parentKeys: string[] = [];
    const parentCounts: number[] = [];
    let cur: Container | null = null;
    let isArray = false;
    let key = "";
    let count = 0;
    let depth = 0;
    let value: unknown;
    let values = 0;

    for (;;) {
      // One value starts here.
      const c = this.skipWs();
      if (++values > lim.maxValues) {
        this.fail("json.too-many-values", `document has more than ${lim.maxValues} values`, this.pos);
      }
      if (c === 0x7b || c === 0x5b) {
        const start = this.pos;
        if (depth >= lim.maxDepth) {
          this.fail("json.depth", `nesting deeper than ${lim.maxDepth}`, start);
        }
        this.pos++;
        const isObj = c === 0x7b;
        const close = isObj ? 0x7d : 0x5d;
        const next = this.skipWs();
        if (next === close) {
          this.pos++;
          value = isObj ? {} : [];
        } else {
          if (lim.maxMembers < 1) this.tooManyMembers(this.pos);
          if (cur !== null) {
            parents.push(cur);
            parentKeys.push(key);
            parentCounts.push(count);
          }
          depth++;
          count = 0;
          if (isObj) {
            const obj: Record<string, unknown> = {};
            cur = obj;
            isArray = false;
            key = this.parseKey(obj);
          } else {
            cur = [];
            isArray = true;
          }
          continue;
        }
      } else if (c === 0x22) {
        value = this.parseString();
      } else if (c === 0x2d || (c >= 0x30 && c <= 0x39)) {
        value = this.parseNumber(c);
      } else if (c === 0x74) {
        value = this.literal("true", true);
      } else if (c === 0x66) {
        value = this.literal("false", false);
      } else if (c === 0x6e) {
        value = this.literal("null", null);
      } else if (c === -1) {
        this.fail("json.syntax", "unexpected end of input", this.pos);
      } else if (c === 0xfeff && this.pos === 0) {
        this.fail("json.syntax", "byte order mark is not allowed", 0);
      } else {
        this.fail("json.syntax", `unexpected character ${describeChar(c)}`, this.pos);
      }

      // Store the value, then consume separators and closers until another value is due.
      for (;;) {
        if (cur === null) {
          if (this.skipWs() !== -1)
            this.fail("json.syntax", "unexpected data after the JSON value", this.pos);
          return { value, values };
        }
        count++;
        if (isArray) {
          (cur as unknown[]).push(value);
        } else {
          const obj = cur as Record<string, unknown>;
          if (key in obj) {
            Object.defineProperty(obj, key, { value, writable: true, enumerable: true, configurable: true });
          } else {
            obj[key] = value;
          }
        }
        const sep = this.skipWs();
        if (sep === 0x2c) {
          this.pos++;
          if (count >= lim.maxMembers) this.tooManyMembers(this.pos);
          if (!isArray) {
            this.skipWs();
            key = this.parseKey(cur as Record<string, unknown>);
          }
          break;
        }
        if (sep === (isArray ? 0x5d : 0x7d)) {
          this.pos++;
          value = cur;
          depth--;
          if (parents.length === 0) {
            cur = null;
          } else {
            cur = parents.pop()!;
            key = parentKeys.pop()!;
            count = parentCounts.pop()!;
            isArray = Array.isArray(cur);
          }
          continue;
        }
        if (sep === -1) this.fail("json.syntax", "unexpected end of input", this.pos);
        this.fail(
          "json.syntax",
          `expected ',' or '${isArray ? "]" : "}"}', found ${describeChar(sep)}`,
          this.pos,
        );
      }
    }
  }

  private tooManyMembers(at: number): never {
    this.fail("json.too-many-members", `object or array has more than ${this.lim.maxMembers} members`, at);
  }

  /** Key string, duplicate check, then the ':' (whitespace before the key already skipped). */
  private parseKey(obj: Record<string, unknown>): string {
    const start = this.pos;
    const c = this.pos < this.len ? this.text.charCodeAt(this.pos) : -1;
    if (c !== 0x22) {
      if (c === -1) this.fail("json.syntax", "unexpected end of input", start);
      this.fail("json.syntax", `expected a string key, found ${describeChar(c)}`, start);
    }
    const key = this.parseString();
    if (Object.hasOwn(obj, key)) {
      const shown = key.length > 64 ? JSON.stringify(key.slice(0, 64)) + "…" : JSON.stringify(key);
      this.fail("json.duplicate-key", `duplicate key ${shown}`, start);
    }
    const colon = this.skipWs();
    if (colon !== 0x3a) {
      if (colon === -1) this.fail("json.syntax", "unexpected end of input", this.pos);
      this.fail("json.syntax", `expected ':', found ${describeChar(colon)}`, this.pos);
    }
    this.pos++;
    return key;
  }

  /** Advances past JSON whitespace; returns the next code unit, or -1 at end of input. */
  private skipWs(): number {
    const text = this.text;
    const len = this.len;
    let pos = this.pos;
    while (pos < len) {
      const c = text.charCodeAt(pos);
      if (c !== 0x20 && c !== 0x0a && c !== 0x0d && c !== 0x09) {
        this.pos = pos;
        return c;
      }
      pos++;
    }
    this.pos = pos;
    return -1;
  }

  private literal<T>(word: string, value: T): T {
    if (!this.text.startsWith(word, this.pos)) this.fail("json.syntax", "invalid literal", this.pos);
    this.pos += word.length;
    return value;
  }

  /** `this.pos` is at the opening quote. */
  private parseString(): string {
    const text = this.text;
    const len = this.len;
    const start = this.pos + 1;
    let pos = start;
    for (;;) {
      if (pos >= len) this.fail("json.syntax", "unterminated string", start - 1);
      const c = text.charCodeAt(pos);
      if (c >= 0x20 && c !== 0x22 && c !== 0x5c && c < 0xd800) {
        pos++;
      } else if (c === 0x22) {
        if (pos - start > this.lim.maxStringLength) this.stringTooLong(start - 1);
        this.pos = pos + 1;
        return text.slice(start, pos);
      } else if (c === 0x5c) {
        return this.parseEscapedString(start, pos);
      } else {
        pos = this.checkOther(c, pos);
      }
    }
  }

  /** Rest of a string that contains escapes; `pos` is at the first backslash. */
  private parseEscapedString(start: number, pos: number): string {
    const text = this.text;
    const len = this.len;
    let out = "";
    let chunk = start;
    for (;;) {
      if (pos >= len) this.fail("json.syntax", "unterminated string", start - 1);
      const c = text.charCodeAt(pos);
      if (c >= 0x20 && c !== 0x22 && c !== 0x5c && c < 0xd800) {
        pos++;
      } else if (c === 0x22) {
        out += text.slice(chunk, pos);
        if (out.length > this.lim.maxStringLength) this.stringTooLong(start - 1);
        this.pos = pos + 1;
        return out;
      } else if (c === 0x5c) {
        out += text.slice(chunk, pos);
        const e = pos + 1 < len ? text.charCodeAt(pos + 1) : -1;
        switch (e) {
          case 0x22:
            out += '"';
            break;
          case 0x5c:
            out += "\\";
            break;
          case 0x2f:
            out += "/";
            break;
          case 0x62:
            out += "\b";
            break;
          case 0x66:
            out += "\f";
            break;
          case 0x6e:
            out += "\n";
            break;
          case 0x72:
            out += "\r";
            break;
          case 0x74:
            out += "\t";
            break;
          case 0x75: {
            const u = this.hex4(pos + 2);
            if (u < 0xd800 || u > 0xdfff) {
              out += String.fromCharCode(u);
              pos += 4;
              break;
            }
            // A surrogate escape must be a high one immediately followed by an escaped low one.
            if (u >= 0xdc00 || text.charCodeAt(pos + 6) !== 0x5c || text.charCodeAt(pos + 7) !== 0x75) {
              this.fail("json.lone-surrogate", "\\u escape leaves an unpaired surrogate", pos);
            }
            const low = this.hex4(pos + 8);
            if (low < 0xdc00 || low > 0xdfff) {
              this.fail("json.lone-surrogate", "\\u escape leaves an unpaired surrogate", pos);
            }
            out += String.fromCharCode(u, low);
            pos += 10;
            break;
          }
          default:
            this.fail("json.syntax", "invalid escape sequence", pos);
        }
        pos += 2;
        chunk = pos;
      } else {
        pos = this.checkOther(c, pos);
      }
    }
  }

  /** Raw control characters and surrogates inside a string; returns the next position. */
  private checkOther(c: number, pos: number): number {
    if (c < 0x20) {
      this.fail("json.syntax", `unescaped control character ${describeChar(c)} in string`, pos);
    }
    if (c > 0xdfff) return pos + 1;
    // Raw surrogates (string input only; decoded bytes are always well-formed) must pair up.
    if (c <= 0xdbff) {
      const next = this.text.charCodeAt(pos + 1);
      if (next >= 0xdc00 && next <= 0xdfff) return pos + 2;
    }
    this.fail("json.lone-surrogate", "string contains an unpaired surrogate", pos);
  }

  /** Value of the 4 hex digits at `at`. */
  private hex4(at: number): number {
    const text = this.text;
    let v = 0;
    for (let k = 0; k < 4; k++) {
      const d = hexValue(text.charCodeAt(at + k));
      if (d < 0) this.fail("json.syntax", "\\u must be followed by 4 hex digits", at - 2);
      v = v * 16 + d;
    }
    return v;
  }

  /** `c` is the first character, already known to be '-' or a digit. */
  private parseNumber(c: number): number {
    const text = this.text;
    const start = this.pos;
    let pos = start;
    const negative = c === 0x2d;
    if (negative) c = text.charCodeAt(++pos);
    const intStart = pos;
    let v = 0;
    if (c === 0x30) {
      c = text.charCodeAt(++pos);
      if (c >= 0x30 && c <= 0x39) this.fail("json.syntax", "leading zeros are not allowed", intStart);
    } else if (c >= 0x31 && c <= 0x39) {
      do {
        v = v * 10 + (c - 0x30);
        c = text.charCodeAt(++pos);
      } while (c >= 0x30 && c <= 0x39);
    } else {
      this.fail("json.syntax", "expected a digit", pos);
    }
    const intDigits = pos - intStart;
    let isInteger = true;
    if (c === 0x2e) {
      isInteger = false;
      c = text.charCodeAt(++pos);
      if (!(c >= 0x30 && c <= 0x39)) this.fail("json.syntax", "expected a digit after '.'", pos);
      do c = text.charCodeAt(++pos);
      while (c >= 0x30 && c <= 0x39);
    }
    if (c === 0x65 || c === 0x45) {
      isInteger = false;
      c = text.charCodeAt(++pos);
      if (c === 0x2b || c === 0x2d) c = text.charCodeAt(++pos);
      if (!(c >= 0x30 && c <= 0x39)) this.fail("json.syntax", "expected a digit in the exponent", pos);
      do c = text.charCodeAt(++pos);
      while (c >= 0x30 && c <= 0x39);
    }
    this.pos = pos;
    if (isInteger) {
      if (
        intDigits > MAX_INT_DIGITS.length ||
        (intDigits === MAX_INT_DIGITS.length && text.slice(intStart, pos) > MAX_INT_DIGITS)
      ) {
        this.fail("json.big-integer", "integer literal beyond ±2^53 would lose precision", start);
      }
      // Every partial value is an integer <= 2^53, so the accumulation above was exact.
      return negative ? -v : v;
    }
    const n = Number(text.slice(start, pos));
    if (!Number.isFinite(n)) this.fail("json.number-range", "number literal overflows to infinity", start);
    return n;
  }

  private stringTooLong(at: number): never {
    this.fail("json.string-too-long", `string longer than ${this.lim.maxStringLength} code units`, at);
  }
}
