import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  fromBase64,
  fromBase64Url,
  fromHex,
  toBase64,
  toBase64Url,
  toHex,
} from "../../artifacts/encoding.js";
import { isCmcpError } from "../../artifacts/errors.js";

const rejects = (fn: () => unknown, code: string) => {
  try {
    fn();
  } catch (err) {
    expect(isCmcpError(err, code)).toBe(true);
    return;
  }
  throw new Error("expected a rejection");
};

describe("strict codecs", () => {
  it("round-trip arbitrary bytes", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), (b) => {
        expect(fromHex(toHex(b))).toEqual(b);
        expect(fromBase64(toBase64(b))).toEqual(b);
        expect(fromBase64Url(toBase64Url(b))).toEqual(b);
      }),
    );
  });

  it("hex rejects odd length, uppercase and stray characters", () => {
    rejects(() => fromHex("abc"), "encoding.hex");
    rejects(() => fromHex("AB"), "encoding.hex");
    rejects(() => fromHex("zz"), "encoding.hex");
    rejects(() => fromHex("ab "), "encoding.hex");
    rejects(() => fromHex("abcd", 3), "encoding.hex");
  });

  it("base64 rejects non-zero padding bits, missing padding, bad characters and whitespace", () => {
    expect(fromBase64("QQ==")).toEqual(Uint8Array.of(0x41));
    rejects(() => fromBase64("QR=="), "encoding.base64"); // Buffer would silently decode this to 0x41
    rejects(() => fromBase64("QUJ="), "encoding.base64");
    rejects(() => fromBase64("QQ"), "encoding.base64");
    rejects(() => fromBase64("Q Q=="), "encoding.base64");
    rejects(() => fromBase64("QQ=\n"), "encoding.base64");
    rejects(() => fromBase64("Q-_="), "encoding.base64");
    rejects(() => fromBase64("QQ==", 2), "encoding.base64");
    rejects(() => fromBase64Url("QR"), "encoding.base64url");
    rejects(() => fromBase64Url("Q+"), "encoding.base64url");
  });

  it("no string decodes to bytes that re-encode differently", () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 40 }), (s) => {
        try {
          const b = fromBase64(s);
          expect(toBase64(b)).toBe(s);
        } catch (err) {
          expect(isCmcpError(err)).toBe(true);
        }
        try {
          expect(toHex(fromHex(s))).toBe(s);
        } catch (err) {
          expect(isCmcpError(err)).toBe(true);
        }
      }),
      { numRuns: 2000 },
    );
  });
});
