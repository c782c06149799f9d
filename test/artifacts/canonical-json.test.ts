import { readdirSync, readFileSync } from "node:fs";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { canonicalBytes, canonicalize, JCS_MAX_DEPTH } from "../../artifacts/canonical-json.js";
import { isCmcpError } from "../../artifacts/errors.js";
import { parseJson } from "../../artifacts/strict-json.js";

const VECTORS = new URL("../../../shared/vectors/rfc8785-jcs/testdata/", import.meta.url);

function listVectors(): string[] {
  try {
    return readdirSync(new URL("input/", VECTORS))
      .filter((f) => f.endsWith(".json"))
      .map((f) => f.slice(0, -".json".length))
      .sort();
  } catch {
    return [];
  }
}
const vectorNames = listVectors();

function parseHex(text: string): Uint8Array {
  const tokens = text.split(/\s+/).filter((t) => t !== "");
  for (const t of tokens) {
    if (!/^[0-9a-f]{2}$/i.test(t)) throw new Error(`bad hex token ${JSON.stringify(t)}`);
  }
  return new Uint8Array(tokens.map((t) => parseInt(t, 16)));
}

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    if (isCmcpError(err)) return err.code;
    throw err;
  }
  throw new Error("expected a CmcpError, nothing was thrown");
}

/** Float from its IEEE 754 binary64 bits, as RFC 8785 appendix B lists them. */
function f64(hex: string): number {
  return Buffer.from(hex, "hex").readDoubleBE(0);
}

/** RFC 8785 section 3.2.2.2 escaping, written out per code point (independent of JSON.stringify). */
function referenceQuote(s: string): string {
  let out = '"';
  for (const ch of s) {
    const c = ch.codePointAt(0)!;
    if (c === 0x22) out += '\\"';
    else if (c === 0x5c) out += "\\\\";
    else if (c === 0x08) out += "\\b";
    else if (c === 0x09) out += "\\t";
    else if (c === 0x0a) out += "\\n";
    else if (c === 0x0c) out += "\\f";
    else if (c === 0x0d) out += "\\r";
    else if (c < 0x20) out += "\\u" + c.toString(16).padStart(4, "0");
    else out += ch;
  }
  return out + '"';
}

/**
 * ECMAScript Number::toString layout (RFC 8785 section 3.2.2.3) applied to the
 * shortest round-trip digits, which toExponential() without an argument gives.
 */
function referenceNumber(x: number): string {
  if (x === 0) return "0";
  if (x < 0) return "-" + referenceNumber(-x);
  const [mantissa, exp] = x.toExponential().split("e") as [string, string];
  const digits = mantissa.replace(".", "");
  const k = digits.length;
  const n = Number(exp) + 1;
  if (k <= n && n <= 21) return digits + "0".repeat(n - k);
  if (0 < n && n <= 21) return digits.slice(0, n) + "." + digits.slice(n);
  if (-6 < n && n <= 0) return "0." + "0".repeat(-n) + digits;
  const e = n - 1;
  const expPart = "e" + (e < 0 ? "-" : "+") + String(Math.abs(e));
  return k === 1 ? digits + expPart : digits[0] + "." + digits.slice(1) + expPart;
}

function nest(depth: number): unknown {
  let v: unknown = 0;
  for (let i = 0; i < depth; i++) v = i % 2 === 0 ? [v] : { k: v };
  return v;
}

describe("RFC 8785 test vectors (cyberphone/json-canonicalization testdata)", () => {
  it("finds the vector directory and at least one case", () => {
    expect(vectorNames, `no vectors under ${VECTORS.pathname}`).not.toHaveLength(0);
    expect(vectorNames).toContain("weird");
  });

  it.each(vectorNames)("%s: parseJson + canonicalize equals output/ and outhex/ byte for byte", (name) => {
    const input = readFileSync(new URL(`input/${name}.json`, VECTORS));
    const expected = readFileSync(new URL(`output/${name}.json`, VECTORS));
    const expectedHex = parseHex(readFileSync(new URL(`outhex/${name}.txt`, VECTORS), "utf8"));
    expect(Buffer.from(expectedHex).equals(expected), "outhex/ and output/ disagree").toBe(true);

    const fromBytes = canonicalBytes(parseJson(new Uint8Array(input)));
    expect(Buffer.from(fromBytes).toString("hex")).toBe(expected.toString("hex"));
    const fromText = canonicalize(parseJson(input.toString("utf8")));
    expect(fromText).toBe(expected.toString("utf8"));
    // Canonical output is a fixed point.
    expect(canonicalize(parseJson(fromText))).toBe(fromText);
  });
});

describe("numbers (RFC 8785 section 3.2.2.3, appendix B)", () => {
  const appendixB: [string, string][] = [
    ["0000000000000000", "0"],
    ["8000000000000000", "0"],
    ["0000000000000001", "5e-324"],
    ["8000000000000001", "-5e-324"],
    ["7fefffffffffffff", "1.7976931348623157e+308"],
    ["ffefffffffffffff", "-1.7976931348623157e+308"],
    ["4340000000000000", "9007199254740992"],
    ["c340000000000000", "-9007199254740992"],
    ["4430000000000000", "295147905179352830000"],
    ["44b52d02c7e14af5", "9.999999999999997e+22"],
    ["44b52d02c7e14af6", "1e+23"],
    ["44b52d02c7e14af7", "1.0000000000000001e+23"],
    ["444b1ae4d6e2ef4e", "999999999999999700000"],
    ["444b1ae4d6e2ef4f", "999999999999999900000"],
    ["444b1ae4d6e2ef50", "1e+21"],
    ["3eb0c6f7a0b5ed8c", "9.999999999999997e-7"],
    ["3eb0c6f7a0b5ed8d", "0.000001"],
    ["41b3de4355555553", "333333333.3333332"],
    ["41b3de4355555554", "333333333.33333325"],
    ["41b3de4355555555", "333333333.3333333"],
    ["41b3de4355555556", "333333333.3333334"],
    ["41b3de4355555557", "333333333.33333343"],
    ["becbf647612f3696", "-0.0000033333333333333333"],
    ["43143ff3c1cb0959", "1424953923781206.2"],
  ];
  it.each(appendixB)("binary64 %s -> %s", (bits, text) => {
    expect(canonicalize(f64(bits))).toBe(text);
  });

  it.each([
    [1e30, "1e+30"],
    [4.5, "4.5"],
    [0.002, "0.002"],
    [1e-7, "1e-7"],
    [1e-27, "1e-27"],
    [333333333.3333333, "333333333.3333333"],
    [-0, "0"],
    [2 ** 53, "9007199254740992"],
    [2 ** -1074, "5e-324"],
    [2 ** -1022, "2.2250738585072014e-308"],
    [1e21, "1e+21"],
    [1e20, "100000000000000000000"],
    [123e-20, "1.23e-18"],
    [0.1 + 0.2, "0.30000000000000004"],
  ])("%s -> %s", (value, text) => {
    expect(canonicalize(value)).toBe(text);
  });

  it.each([
    ["NaN", NaN],
    ["Infinity", Infinity],
    ["-Infinity", -Infinity],
    ["NaN bits", f64("7fffffffffffffff")],
    ["Infinity bits", f64("7ff0000000000000")],
  ])("rejects %s with jcs.non-finite", (_name, value) => {
    expect(codeOf(() => canonicalize(value))).toBe("jcs.non-finite");
    expect(codeOf(() => canonicalize({ a: [1, value] }))).toBe("jcs.non-finite");
  });

  it("matches the RFC 8785 number layout for any finite double, and round-trips", () => {
    fc.assert(
      fc.property(fc.double({ noNaN: true, noDefaultInfinity: true }), (x) => {
        const text = canonicalize(x);
        expect(text).toBe(referenceNumber(x));
        expect(Object.is(Number(text), x === 0 ? 0 : x)).toBe(true);
      }),
      { numRuns: 5000 },
    );
  });
});

describe("strings (RFC 8785 section 3.2.2.2)", () => {
  it("escapes every BMP non-surrogate code unit exactly as the RFC says", () => {
    let all = "";
    for (let c = 0; c <= 0xffff; c++) {
      if (c >= 0xd800 && c <= 0xdfff) continue;
      const s = String.fromCharCode(c);
      all += s;
      const got = canonicalize(s);
      if (got !== referenceQuote(s)) expect(`U+${c.toString(16)} -> ${got}`).toBe(referenceQuote(s));
    }
    expect(canonicalize(all)).toBe(referenceQuote(all));
  });

  it("uses lowercase hex and short escapes", () => {
    expect(canonicalize('\u0000\u001f\u000f\b\t\n\f\r"\\/\u007f\u2028')).toBe(
      '"\\u0000\\u001f\\u000f\\b\\t\\n\\f\\r\\"\\\\/\u007f\u2028"',
    );
  });

  it("matches the reference escaper on arbitrary well-formed strings, including astral characters", () => {
    fc.assert(
      fc.property(fc.string({ unit: "binary", maxLength: 40 }), (s) => {
        expect(canonicalize(s)).toBe(referenceQuote(s));
      }),
      { numRuns: 2000 },
    );
  });

  it.each([
    ["lone high", "\ud800"],
    ["lone low", "\udc00"],
    ["high at end", "abc\udbff"],
    ["reversed pair", "\ude02\ud83d"],
    ["high then ascii", "\ud83dx"],
  ])("rejects a %s surrogate in a value and in a key", (_name, s) => {
    expect(codeOf(() => canonicalize(s))).toBe("jcs.lone-surrogate");
    expect(codeOf(() => canonicalize([1, s]))).toBe("jcs.lone-surrogate");
    expect(codeOf(() => canonicalize({ [s]: 1 }))).toBe("jcs.lone-surrogate");
    expect(codeOf(() => canonicalize({ ok: { [s]: "v" } }))).toBe("jcs.lone-surrogate");
  });

  it("accepts a well-formed surrogate pair", () => {
    expect(canonicalize({ "\ud83d\ude02": "\ud83d\ude02" })).toBe('{"\ud83d\ude02":"\ud83d\ude02"}');
  });
});

describe("objects and arrays", () => {
  it("sorts keys by UTF-16 code units, not code points or locale", () => {
    // U+1F602 (surrogates D83D DE02) sorts before U+FB33 in UTF-16 order, after it by code point.
    const value = { "\ufb33": 1, "\ud83d\ude02": 2, "\u00f6": 3, a: 4, B: 5, "10": 6, "9": 7, "": 8 };
    expect(canonicalize(value)).toBe('{"":8,"10":6,"9":7,"B":5,"a":4,"ö":3,"\ud83d\ude02":2,"\ufb33":1}');
  });

  it("sorts like Array#sort for small and large objects", () => {
    fc.assert(
      fc.property(fc.uniqueArray(fc.string({ unit: "binary", maxLength: 6 }), { maxLength: 60 }), (keys) => {
        const obj: Record<string, number> = {};
        keys.forEach((k, i) => Object.defineProperty(obj, k, { value: i, enumerable: true }));
        const expected =
          "{" +
          [...keys]
            .sort()
            .map((k) => `${referenceQuote(k)}:${obj[k]}`)
            .join(",") +
          "}";
        expect(canonicalize(obj)).toBe(expected);
      }),
      { numRuns: 500 },
    );
  });

  it("serializes the RFC 8785 section 3.2.3 example structure", () => {
    const value = parseJson('{"b":[true,false,null],"a":{"y":"é","x":-0},"":[]}');
    expect(canonicalize(value)).toBe('{"":[],"a":{"x":0,"y":"é"},"b":[true,false,null]}');
  });

  it("accepts null-prototype objects and an own __proto__ key", () => {
    const nullProto = Object.create(null) as Record<string, unknown>;
    nullProto.z = 1;
    nullProto.a = 2;
    expect(canonicalize(nullProto)).toBe('{"a":2,"z":1}');
    const withProto = parseJson('{"__proto__":{"x":1},"a":0}');
    expect(canonicalize(withProto)).toBe('{"__proto__":{"x":1},"a":0}');
  });

  it("canonicalBytes is the UTF-8 of canonicalize", () => {
    const value = { "€": ["é", 1.5, null], a: "\ud83d\ude02" };
    expect(canonicalBytes(value)).toEqual(new Uint8Array(Buffer.from(canonicalize(value), "utf8")));
    expect(canonicalBytes(value)).toBeInstanceOf(Uint8Array);
  });
});

describe("unsupported values", () => {
  class Receipt {
    a = 1;
    toJSON(): unknown {
      throw new Error("toJSON must not be called");
    }
  }
  const cases: [string, unknown][] = [
    ["undefined", undefined],
    ["bigint", 1n],
    ["function", () => 1],
    ["symbol", Symbol("x")],
    ["Date", new Date(0)],
    ["Map", new Map()],
    ["Set", new Set()],
    ["RegExp", /x/],
    ["class instance with toJSON", new Receipt()],
    ["boxed string", new String("x")],
    ["boxed number", new Number(1)],
    ["Uint8Array", new Uint8Array(2)],
    ["Error", new Error("x")],
    ["Promise", Promise.resolve(1)],
  ];
  it.each(cases)("rejects %s with jcs.unsupported-type, at top level and nested", (_name, value) => {
    expect(codeOf(() => canonicalize(value))).toBe("jcs.unsupported-type");
    expect(codeOf(() => canonicalize([value]))).toBe("jcs.unsupported-type");
    expect(codeOf(() => canonicalize({ a: { b: value } }))).toBe("jcs.unsupported-type");
  });

  it("does not call toJSON on plain objects either", () => {
    expect(codeOf(() => canonicalize({ toJSON: () => "x" }))).toBe("jcs.unsupported-type");
  });

  it("rejects undefined properties and sparse array holes instead of dropping them", () => {
    expect(codeOf(() => canonicalize({ a: 1, b: undefined }))).toBe("jcs.unsupported-type");
    // eslint-disable-next-line no-sparse-arrays
    expect(codeOf(() => canonicalize([1, , 3]))).toBe("jcs.unsupported-type");
  });

  it("rejects symbol-keyed properties", () => {
    expect(codeOf(() => canonicalize({ a: 1, [Symbol("s")]: 2 }))).toBe("jcs.unsupported-type");
  });

  it("reports the JSON Pointer of the offending value", () => {
    try {
      canonicalize({ a: [0, { "b/c": [NaN] }] });
      expect.unreachable();
    } catch (err) {
      expect(isCmcpError(err, "jcs.non-finite")).toBe(true);
      expect((err as { detail: unknown }).detail).toEqual({ path: "/a/1/b~1c/0" });
      expect((err as Error).message).toContain('"/a/1/b~1c/0"');
    }
  });
});

describe("depth", () => {
  it(`accepts ${JCS_MAX_DEPTH} nested containers and rejects ${JCS_MAX_DEPTH + 1}`, () => {
    expect(JCS_MAX_DEPTH).toBe(1000);
    expect(() => canonicalize(nest(JCS_MAX_DEPTH))).not.toThrow();
    expect(codeOf(() => canonicalize(nest(JCS_MAX_DEPTH + 1)))).toBe("jcs.depth");
  });

  it("honours a custom maxDepth", () => {
    expect(canonicalize([[0]], { maxDepth: 2 })).toBe("[[0]]");
    expect(codeOf(() => canonicalize([[[0]]], { maxDepth: 2 }))).toBe("jcs.depth");
    expect(canonicalize(7, { maxDepth: 0 })).toBe("7");
    expect(codeOf(() => canonicalize([], { maxDepth: 0 }))).toBe("jcs.depth");
  });

  it("rejects a nonsensical maxDepth", () => {
    expect(codeOf(() => canonicalize([], { maxDepth: NaN }))).toBe("jcs.options");
    expect(codeOf(() => canonicalize([], { maxDepth: -1 }))).toBe("jcs.options");
  });

  it("turns a cycle into jcs.depth, not a stack overflow", () => {
    const a: unknown[] = [];
    a.push({ self: a });
    expect(codeOf(() => canonicalize(a))).toBe("jcs.depth");
  });
});

/** Integer-valued doubles above 2^53 print as integer literals, which parseJson refuses by design. */
function hasBigInteger(v: unknown): boolean {
  if (typeof v === "number") return Number.isInteger(v) && Math.abs(v) > 2 ** 53 && Math.abs(v) < 1e21;
  if (v !== null && typeof v === "object") return Object.values(v).some(hasBigInteger);
  return false;
}

describe("properties", () => {
  const jsonValue = fc.jsonValue({ maxDepth: 5, stringUnit: "binary" }).filter((v) => !hasBigInteger(v));

  it("the canonical text of a large integer-valued double is refused by parseJson", () => {
    // RFC 8785 prints 2^68 as an integer literal; JSON.parse could not tell it from 2^68 + 1.
    expect(canonicalize(2 ** 68)).toBe("295147905179352830000");
    expect(codeOf(() => parseJson(canonicalize(2 ** 68)))).toBe("json.big-integer");
  });

  it("JSON.parse of the output gives back the value, and canonicalize is idempotent through parseJson", () => {
    fc.assert(
      fc.property(jsonValue, (v) => {
        const text = canonicalize(v);
        expect(JSON.parse(text)).toEqual(JSON.parse(JSON.stringify(v)));
        expect(canonicalize(parseJson(text))).toBe(text);
        expect(canonicalBytes(v)).toEqual(new Uint8Array(Buffer.from(text, "utf8")));
      }),
      { numRuns: 1000 },
    );
  });
});
