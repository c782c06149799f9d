import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { canonicalize } from "../../artifacts/canonical-json.js";
import { CmcpError, isCmcpError } from "../../artifacts/errors.js";
import { DEFAULT_JSON_LIMITS, parseJson, type JsonLimits } from "../../artifacts/strict-json.js";

const enc = new TextEncoder();
const strictDecoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

function failure(fn: () => unknown): CmcpError {
  try {
    fn();
  } catch (err) {
    if (err instanceof CmcpError) return err;
    throw err;
  }
  throw new Error("expected a CmcpError, nothing was thrown");
}

function expectFail(
  input: string | Uint8Array,
  code: string,
  offset?: number,
  limits?: Partial<JsonLimits>,
): CmcpError {
  const err = failure(() => parseJson(input, limits));
  const shown = typeof input === "string" ? JSON.stringify(input.slice(0, 80)) : `${input.length} bytes`;
  expect(err.code, `${err.message} (input ${shown})`).toBe(code);
  expect(typeof err.detail?.offset).toBe("number");
  if (offset !== undefined) {
    expect(err.detail?.offset).toBe(offset);
    expect(err.message).toContain(`offset ${offset}`);
  }
  return err;
}

/** Deep equality that also checks key order, prototypes, and -0. */
function sameJson(a: unknown, b: unknown): boolean {
  if (typeof a !== "object" || a === null || typeof b !== "object" || b === null) return Object.is(a, b);
  if (Object.getPrototypeOf(a) !== Object.getPrototypeOf(b)) return false;
  const ka = Object.keys(a);
  const kb = Object.keys(b);
  if (ka.length !== kb.length) return false;
  for (let i = 0; i < ka.length; i++) {
    if (ka[i] !== kb[i]) return false;
    if (!Object.hasOwn(b, ka[i]!)) return false;
    const va = (a as Record<string, unknown>)[ka[i]!];
    const vb = (b as Record<string, unknown>)[kb[i]!];
    if (!sameJson(va, vb)) return false;
  }
  return true;
}

/**
 * Runs both parsers on the same text and checks they agree: whatever we accept,
 * JSON.parse accepts with the same result; whatever JSON.parse rejects, we reject;
 * and json.syntax is only ever raised where JSON.parse also fails.
 */
function differential(text: string, bytes?: Uint8Array): void {
  let ours: unknown;
  let ourErr: unknown;
  try {
    ours = parseJson(bytes ?? text);
  } catch (err) {
    ourErr = err;
  }
  let theirs: unknown;
  let theyFailed = false;
  try {
    theirs = JSON.parse(text);
  } catch {
    theyFailed = true;
  }
  if (ourErr === undefined) {
    expect(theyFailed).toBe(false);
    expect(sameJson(ours, theirs)).toBe(true);
    return;
  }
  expect(ourErr).toBeInstanceOf(CmcpError);
  const e = ourErr as CmcpError;
  expect(e.code).toMatch(/^json\./);
  const offset = e.detail?.offset;
  expect(Number.isInteger(offset)).toBe(true);
  expect(offset as number).toBeGreaterThanOrEqual(0);
  expect(offset as number).toBeLessThanOrEqual(bytes?.length ?? text.length);
  if (e.code === "json.syntax") expect(theyFailed).toBe(true);
}

describe("accepts RFC 8259 JSON", () => {
  it.each([
    ["null", null],
    ["true", true],
    ["false", false],
    ["0", 0],
    ["-0", -0],
    ["12.5e-1", 1.25],
    ["1E+2", 100],
    ['"a\\u00e9\\ud83d\\ude02\\n\\/"', "aé\ud83d\ude02\n/"],
    [' \t\r\n[ 1 , {"a" : [ ] } ] \n', [1, { a: [] }]],
    ['{"a":{"a":1},"b":{"a":2}}', { a: { a: 1 }, b: { a: 2 } }],
    ["1e-400", 0],
    ['"\u007f\u2028\ufeff"', "\u007f\u2028\ufeff"],
  ])("%s", (text, expected) => {
    const got = parseJson(text);
    expect(sameJson(got, expected)).toBe(true);
    expect(sameJson(parseJson(enc.encode(text)), expected)).toBe(true);
  });

  it("returns ordinary objects and arrays", () => {
    const v = parseJson('{"a":[1,2],"b":{"c":null}}') as Record<string, unknown>;
    expect(Object.getPrototypeOf(v)).toBe(Object.prototype);
    expect(Array.isArray(v.a)).toBe(true);
    expect(Object.keys(v)).toEqual(["a", "b"]);
    expect("b" in v).toBe(true);
    expect(Object.prototype.hasOwnProperty.call(v, "a")).toBe(true);
    expect(JSON.stringify(v)).toBe('{"a":[1,2],"b":{"c":null}}');
  });

  it("accepts byte input with a byteOffset (subarray, Buffer)", () => {
    const whole = enc.encode('xx{"é":[1]}yy');
    expect(parseJson(whole.subarray(2, whole.length - 2))).toEqual({ é: [1] });
    expect(parseJson(Buffer.from('{"k":"v"}'))).toEqual({ k: "v" });
  });
});

describe("rejects non-JSON with json.syntax", () => {
  it.each([
    ["", 0],
    ["   ", 3],
    ["{", 1],
    ["[1,]", 3],
    ['{"a":1,}', 7],
    ["[1 2]", 3],
    ['{"a" 1}', 5],
    ["{a:1}", 1],
    ["{'a':1}", 1],
    ["01", 0],
    ["-01", 1],
    ["1.", 2],
    [".5", 0],
    ["1e", 2],
    ["1e+", 3],
    ["+1", 0],
    ["-", 1],
    ["0x10", 1],
    ["NaN", 0],
    ["Infinity", 0],
    ["-Infinity", 1],
    ["undefined", 0],
    ["tru", 0],
    ["nul", 0],
    ["True", 0],
    ["[1]x", 3],
    ["1 2", 2],
    ["// c\n1", 0],
    ["/* c */1", 0],
    ["[1]// c", 3],
    ['"abc', 0],
    ['"a\u0000"', 2],
    ['"a\nb"', 2],
    ['"\\x41"', 1],
    ['"\\u12"', 1],
    ['"\\u12G4"', 1],
    ['"\\', 1],
    ["\u00a01", 0],
    ["\ufeff1", 0],
    ["[1]\u0000", 3],
  ])("%j at offset %i", (text, offset) => {
    expectFail(text, "json.syntax", offset);
    expect(() => JSON.parse(text)).toThrow(SyntaxError);
  });

  it("rejects a non-string, non-bytes input", () => {
    expect(expectFail(42 as unknown as string, "json.syntax").detail).toEqual({ offset: 0 });
  });
});

describe("json.duplicate-key", () => {
  it.each([
    ['{"a":1,"a":2}', 7],
    ['{"a":1,"\\u0061":2}', 7],
    ['{"a\\/b":1,"a/b":2}', 10],
    ['{"x":{"a":1,"b":2,"a":3}}', 18],
    ['{"__proto__":1,"__proto__":2}', 15],
    ['{"toString":1,"toString":2}', 14],
    ['{"\\ud83d\\ude02":1,"\ud83d\ude02":2}', 18],
  ])("%s", (text, offset) => {
    expectFail(text, "json.duplicate-key", offset);
  });

  it("names the key in the message", () => {
    expect(expectFail('{"a":1,"\\u0061":2}', "json.duplicate-key").message).toContain('"a"');
  });
});

describe("json.big-integer and non-finite numbers", () => {
  it.each(["9007199254740992", "-9007199254740992", "9007199254740991", "1000000000000000", "-0"])(
    "accepts %s",
    (text) => {
      expect(parseJson(text)).toBe(JSON.parse(text));
    },
  );

  it.each([
    "9007199254740993",
    "-9007199254740993",
    "9007199254740994",
    "10000000000000000",
    "18446744073709551616",
    "123456789012345678901234567890",
  ])("rejects %s", (text) => {
    expectFail(text, "json.big-integer", 0);
    expectFail(`{"n":[${text}]}`, "json.big-integer", 6);
  });

  it("applies only to integer literals (fraction or exponent forms are ordinary doubles)", () => {
    expect(parseJson("9007199254740993.0")).toBe(9007199254740992);
    expect(parseJson("1e20")).toBe(1e20);
  });

  it.each(["1e400", "-1e400", "1.8e308", "123456789e999"])("rejects %s (overflows to infinity)", (text) => {
    expectFail(text, "json.number-range", 0);
  });

  it("accepts 1.7976931348623157e308 (largest finite double)", () => {
    expect(parseJson("1.7976931348623157e308")).toBe(Number.MAX_VALUE);
  });
});

describe("json.lone-surrogate", () => {
  it.each([
    ['"\\uD800"', 1],
    ['"\\udc00"', 1],
    ['"ab\\uD83D"', 3],
    ['"\\uD83Dx"', 1],
    ['"\\uD83D\\u0041"', 1],
    ['"\\uD83D\\n"', 1],
    ['"\\uDE02\\uD83D"', 1],
    ['{"\\uD800":1}', 2],
    ['"\ud800"', 1],
    ['"\udc00x"', 1],
    ['"x\ud83d"', 2],
    // Escaped half plus a raw half is still not well-formed text.
    ['"\\ud83d\ude02"', 1],
    ['"\ud83d\\ude02"', 1],
  ])("%j", (text, offset) => {
    expectFail(text, "json.lone-surrogate", offset);
  });

  it("accepts escaped and raw surrogate pairs", () => {
    expect(parseJson('"\\uD83D\\uDE02"')).toBe("\ud83d\ude02");
    expect(parseJson('"\ud83d\ude02"')).toBe("\ud83d\ude02");
    expect(parseJson('{"\\udbff\\udfff":0}')).toEqual({ "\udbff\udfff": 0 });
  });
});

describe("json.utf8 (byte input)", () => {
  const cases: [string, number[], number][] = [
    ["stray continuation byte", [0x22, 0x80, 0x22], 1],
    ["0xff", [0x22, 0x61, 0xff, 0x22], 2],
    ["overlong NUL", [0x22, 0xc0, 0x80, 0x22], 1],
    ["overlong slash", [0x22, 0xe0, 0x80, 0xaf, 0x22], 1],
    ["UTF-8 encoded surrogate", [0x22, 0xed, 0xa0, 0x80, 0x22], 1],
    ["code point above U+10FFFF", [0x22, 0xf4, 0x90, 0x80, 0x80, 0x22], 1],
    ["truncated at end", [0x22, 0xe2, 0x82], 1],
    ["truncated before quote", [0x22, 0xe2, 0x82, 0x22], 1],
    ["after valid multibyte", [0x22, 0xc3, 0xa9, 0xf8, 0x22], 3],
    ["BOM", [0xef, 0xbb, 0xbf, 0x7b, 0x7d], 0],
  ];
  it.each(cases)("%s", (_name, bytes, offset) => {
    expectFail(new Uint8Array(bytes), "json.utf8", offset);
  });

  it("reports byte offsets (not UTF-16 indexes) for later errors in byte input", () => {
    // "é€😂" is 2 + 3 + 4 bytes but 1 + 1 + 2 code units.
    const text = '["é€😂",]';
    expectFail(text, "json.syntax", 8);
    expectFail(enc.encode(text), "json.syntax", 13);
  });

  it("agrees with a fatal TextDecoder on random bytes", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 12 }), (body) => {
        const bytes = new Uint8Array([0x22, ...body.map((b) => (b === 0x22 || b === 0x5c ? 0x20 : b)), 0x22]);
        let decoded: string | undefined;
        try {
          decoded = strictDecoder.decode(bytes);
        } catch {
          decoded = undefined;
        }
        if (decoded === undefined) {
          expectFail(bytes, "json.utf8");
        } else {
          differential(decoded, bytes);
        }
      }),
      { numRuns: 3000 },
    );
  });
});

describe("limits", () => {
  it("has the documented defaults", () => {
    expect(DEFAULT_JSON_LIMITS).toEqual({
      maxBytes: 16 * 1024 * 1024,
      maxDepth: 64,
      maxStringLength: 1024 * 1024,
      maxMembers: 100_000,
      maxValues: 2_000_000,
    });
    expect(Object.isFrozen(DEFAULT_JSON_LIMITS)).toBe(true);
  });

  it("json.too-large counts UTF-8 bytes, for strings too", () => {
    expect(parseJson('"ab"', { maxBytes: 4 })).toBe("ab");
    expectFail('"abc"', "json.too-large", 4, { maxBytes: 4 });
    expect(parseJson('"éé"', { maxBytes: 6 })).toBe("éé");
    expectFail('"éé"', "json.too-large", 5, { maxBytes: 5 });
    expectFail(enc.encode('"éé"'), "json.too-large", 5, { maxBytes: 5 });
  });

  it("rejects a 200 MB string and a 32 MB buffer before looking at them", () => {
    const huge = "x".repeat(200 * 1024 * 1024);
    const bytes = new Uint8Array(32 * 1024 * 1024).fill(0xff);
    const t0 = performance.now();
    const errors = [failure(() => parseJson(huge)), failure(() => parseJson(bytes))];
    expect(performance.now() - t0).toBeLessThan(100);
    expect(errors.map((e) => e.code)).toEqual(["json.too-large", "json.too-large"]);
  });

  it("json.depth: default 64", () => {
    const ok = "[".repeat(64) + "]".repeat(64);
    expect(() => parseJson(ok)).not.toThrow();
    expectFail("[".repeat(65) + "]".repeat(65), "json.depth", 64);
    expectFail('{"a":'.repeat(64) + "{}" + "}".repeat(64), "json.depth", 64 * 5);
  });

  it("json.depth: custom limits, and no stack overflow for any depth", () => {
    expect(parseJson("[[1]]", { maxDepth: 2 })).toEqual([[1]]);
    expectFail("[[[]]]", "json.depth", 2, { maxDepth: 2 });
    expect(parseJson("1", { maxDepth: 0 })).toBe(1);
    expectFail("{}", "json.depth", 0, { maxDepth: 0 });
    expectFail("[".repeat(1_000_000), "json.depth", 64);
    const n = 200_000;
    expectFail("[".repeat(n), "json.syntax", n, { maxDepth: Infinity });
    let v = parseJson("[".repeat(n) + "]".repeat(n), { maxDepth: Infinity });
    let depth = 0;
    while (Array.isArray(v)) {
      depth++;
      v = v[0];
    }
    expect(depth).toBe(n);
  });

  it("json.string-too-long counts code units after unescaping, for values and keys", () => {
    const lim = { maxStringLength: 3 };
    expect(parseJson('"abc"', lim)).toBe("abc");
    expect(parseJson('"\\u0041\\u0042\\u0043"', lim)).toBe("ABC");
    expect(parseJson('"😂a"', lim)).toBe("😂a");
    expectFail('"abcd"', "json.string-too-long", 0, lim);
    expectFail('["\\u0041\\u0042\\u0043\\n"]', "json.string-too-long", 1, lim);
    expectFail('{"abcd":1}', "json.string-too-long", 1, lim);
    expectFail('"😂ab"', "json.string-too-long", 0, lim);
  });

  it("json.too-many-members counts entries per object or array", () => {
    const lim = { maxMembers: 3 };
    expect(parseJson("[1,2,3]", lim)).toEqual([1, 2, 3]);
    expect(parseJson('{"a":[1,2,3],"b":[4,5,6],"c":{}}', lim)).toBeTruthy();
    expectFail("[1,2,3,4]", "json.too-many-members", 7, lim);
    expectFail('{"a":1,"b":2,"c":3,"d":4}', "json.too-many-members", 19, lim);
    expectFail("[1]", "json.too-many-members", 1, { maxMembers: 0 });
    expect(parseJson("[]", { maxMembers: 0 })).toEqual([]);
  });

  it.each([
    { maxDepth: -1 },
    { maxBytes: 1.5 },
    { maxMembers: NaN },
    { maxStringLength: "10" as unknown as number },
  ])("rejects invalid limits %j", (limits) => {
    expectFail("1", "json.limits", undefined, limits);
  });

  it("treats explicitly undefined limits as defaults", () => {
    expect(parseJson("[[1]]", { maxDepth: undefined } as unknown as Partial<JsonLimits>)).toEqual([[1]]);
  });
});

describe("prototype pollution", () => {
  it("stores __proto__ as an own data property and leaves prototypes alone", () => {
    const v = parseJson('{"__proto__":{"polluted":true},"a":1}') as Record<string, unknown>;
    expect(Object.getPrototypeOf(v)).toBe(Object.prototype);
    expect(Object.keys(v)).toEqual(["__proto__", "a"]);
    expect(Object.getOwnPropertyDescriptor(v, "__proto__")).toEqual({
      value: { polluted: true },
      writable: true,
      enumerable: true,
      configurable: true,
    });
    expect("polluted" in v).toBe(false);
    expect((v as { polluted?: unknown }).polluted).toBeUndefined();
    expect(({} as { polluted?: unknown }).polluted).toBeUndefined();
    expect(JSON.stringify(v)).toBe('{"__proto__":{"polluted":true},"a":1}');
    expect(canonicalize(v)).toBe('{"__proto__":{"polluted":true},"a":1}');
    expect(sameJson(v, JSON.parse('{"__proto__":{"polluted":true},"a":1}'))).toBe(true);
  });

  it("does not turn an object into an array through __proto__", () => {
    const v = parseJson('{"__proto__":[]}');
    expect(Array.isArray(v)).toBe(false);
    expect(Object.getPrototypeOf(v)).toBe(Object.prototype);
  });

  it("stores keys shadowing Object.prototype members as own properties", () => {
    const v = parseJson('{"constructor":1,"toString":2,"hasOwnProperty":3,"valueOf":{}}') as Record<
      string,
      unknown
    >;
    expect(Object.keys(v)).toEqual(["constructor", "toString", "hasOwnProperty", "valueOf"]);
    expect(v.toString).toBe(2);
    expect(Object.hasOwn(v, "constructor")).toBe(true);
    expect(canonicalize(v)).toBe('{"constructor":1,"hasOwnProperty":3,"toString":2,"valueOf":{}}');
  });
});

/** JSON values with the corners that matter here: unicode keys, __proto__, escapes, safe numbers. */
const jsonArb = fc.letrec<{ value: unknown }>((tie) => ({
  value: fc.oneof(
    { depthSize: "small", withCrossShrink: true },
    fc.constantFrom(null, true, false),
    fc.maxSafeInteger(),
    fc
      .double({ noNaN: true, noDefaultInfinity: true })
      .filter((d) => !(Number.isInteger(d) && Math.abs(d) > 2 ** 53 && Math.abs(d) < 1e21)),
    fc.string({ unit: "binary", maxLength: 12 }),
    fc.array(tie("value"), { maxLength: 5 }),
    fc.dictionary(
      fc.oneof(
        fc.string({ unit: "binary", maxLength: 6 }),
        fc.constantFrom("__proto__", "constructor", "toString", "10", "9", "", '"\\\n'),
      ),
      tie("value"),
      { maxKeys: 5 },
    ),
  ),
})).value;

describe("properties", () => {
  it("parseJson(JSON.stringify(v)) deep-equals JSON.parse of the same text (string and bytes)", () => {
    fc.assert(
      fc.property(jsonArb, fc.constantFrom(0, 2), (v, indent) => {
        const text = JSON.stringify(v, null, indent);
        const expected: unknown = JSON.parse(text);
        expect(sameJson(parseJson(text), expected)).toBe(true);
        expect(sameJson(parseJson(enc.encode(text)), expected)).toBe(true);
      }),
      { numRuns: 1500 },
    );
  });

  it("canonicalize is a fixed point through parseJson", () => {
    fc.assert(
      fc.property(jsonArb, (v) => {
        const once = canonicalize(v);
        expect(canonicalize(parseJson(once))).toBe(once);
      }),
      { numRuns: 1000 },
    );
  });

  it("any double literal parses like JSON.parse, or is refused as a big integer", () => {
    fc.assert(
      fc.property(fc.double({ noNaN: true, noDefaultInfinity: true }), (d) => {
        const text = JSON.stringify(d);
        if (Number.isInteger(d) && Math.abs(d) > 2 ** 53 && Math.abs(d) < 1e21) {
          expectFail(text, "json.big-integer", 0);
        } else {
          expect(Object.is(parseJson(text), JSON.parse(text))).toBe(true);
        }
      }),
      { numRuns: 3000 },
    );
  });

  it("random strings only ever produce a value or a CmcpError, in agreement with JSON.parse", () => {
    const anyUnit = fc.integer({ min: 0, max: 0xffff }).map((c) => String.fromCharCode(c));
    const jsonish = fc.constantFrom(...'{}[],:"\\ \n0123456789.-+eEtrufalsn/ubx\u00e9\ud83d\ude02'.split(""));
    fc.assert(
      fc.property(
        fc.oneof(
          fc.string({ unit: anyUnit, maxLength: 30 }),
          fc.string({ unit: "binary", maxLength: 30 }),
          fc.string({ unit: jsonish, maxLength: 40 }),
        ),
        (text) => differential(text),
      ),
      { numRuns: 5000 },
    );
  });

  it("random mutations of valid JSON only ever produce a value or a CmcpError, in agreement with JSON.parse", () => {
    const mutation = fc.record({
      op: fc.constantFrom("insert", "delete", "replace", "truncate", "duplicate"),
      at: fc.nat(),
      len: fc.nat({ max: 8 }),
      ch: fc.oneof(
        fc.constantFrom(...'{}[],:"\\ 0-.eE+tn\u0000\u001f\ud800\udc00'.split("")),
        fc.string({ unit: "binary", minLength: 1, maxLength: 1 }),
      ),
    });
    fc.assert(
      fc.property(jsonArb, fc.array(mutation, { minLength: 1, maxLength: 4 }), (v, muts) => {
        let text = JSON.stringify(v);
        for (const m of muts) {
          const at = m.at % (text.length + 1);
          if (m.op === "insert") text = text.slice(0, at) + m.ch + text.slice(at);
          else if (m.op === "delete") text = text.slice(0, at) + text.slice(at + 1);
          else if (m.op === "replace") text = text.slice(0, at) + m.ch + text.slice(at + 1);
          else if (m.op === "truncate") text = text.slice(0, at);
          else text = text.slice(0, at + m.len) + text.slice(at, at + m.len) + text.slice(at + m.len);
        }
        differential(text);
        // UTF-8 encoding replaces lone surrogates, so compare the bytes against what they decode to.
        const bytes = enc.encode(text);
        differential(strictDecoder.decode(bytes), bytes);
      }),
      { numRuns: 5000 },
    );
  });

  it("never throws anything but CmcpError on random bytes", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 40 }), (bytes) => {
        try {
          parseJson(bytes);
        } catch (err) {
          expect(isCmcpError(err)).toBe(true);
        }
      }),
      { numRuns: 3000 },
    );
  });
});

describe("parseJson maxValues", () => {
  it("bounds the total number of values, containers included", () => {
    expect(parseJson("[0,0,0]", { maxValues: 4 })).toEqual([0, 0, 0]);
    expect(() => parseJson("[0,0,0]", { maxValues: 3 })).toThrow(/more than 3 values/);
    expect(() => parseJson('{"a":[{},{}]}', { maxValues: 3 })).toThrow(
      expect.objectContaining({ code: "json.too-many-values" }),
    );
    expect(() => parseJson("[]", { maxValues: -1 })).toThrow(
      expect.objectContaining({ code: "json.limits" }),
    );
  });
});
