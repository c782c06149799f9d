import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { isCmcpError } from "../../../artifacts/errors.js";
import { BUNDLE_LIMITS, scanBundle } from "../../../artifacts/verifier/bundle-reader.js";

async function scan(text: string, chunkBytes: number) {
  const members: Record<string, unknown> = {};
  const receipts: unknown[] = [];
  const r = await scanBundle(
    Buffer.from(text),
    {
      wantReceipts: true,
      // defineProperty: a member named "__proto__" must become a key, not the object's prototype.
      member: (k, v) =>
        void Object.defineProperty(members, k, {
          value: JSON.parse(v.toString()),
          enumerable: true,
          writable: true,
          configurable: true,
        }),
      receipt: (v) => void receipts.push(JSON.parse(v.toString())),
    },
    { ...BUNDLE_LIMITS, chunkBytes },
  );
  return { members, receipts, count: r.receipts };
}

const objectArb = fc.dictionary(fc.string(), fc.jsonValue({ maxDepth: 3 }), { maxKeys: 4 });

describe("scanBundle", () => {
  it("delimits members and receipts exactly as JSON.parse reads them, at any chunk size", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.dictionary(
          fc.oneof(fc.string(), fc.constant("__proto__")).filter((k) => k !== "receipts"),
          fc.jsonValue({ maxDepth: 3 }),
          { maxKeys: 4 },
        ),
        fc.array(objectArb, { maxLength: 5 }),
        fc.integer({ min: 1, max: 64 }),
        fc.boolean(),
        async (header, receipts, chunk, pretty) => {
          const doc = { ...header, receipts };
          const text = pretty ? JSON.stringify(doc, null, 2) : JSON.stringify(doc);
          const got = await scan(text, chunk);
          expect(got.receipts).toEqual(JSON.parse(JSON.stringify(receipts)));
          expect(got.count).toBe(receipts.length);
          expect(got.members).toEqual(JSON.parse(JSON.stringify(header)));
        },
      ),
      { numRuns: 300 },
    );
  });

  it("handles escaped quotes and backslashes that straddle chunk boundaries", async () => {
    const tricky = {
      a: 'x\\"}]{["\\\\',
      receipts: [{ s: '\\"\\\\"' }, { t: "\u2028\ud83d\ude00\\" }],
      b: "]}",
    };
    for (let chunk = 1; chunk <= 16; chunk++) {
      const got = await scan(JSON.stringify(tricky), chunk);
      expect(got.members).toEqual({ a: tricky.a, b: tricky.b });
      expect(got.receipts).toEqual(tricky.receipts);
    }
  });

  it("stops at receipts when asked, and only then", async () => {
    const seen: string[][] = [];
    const r = await scanBundle(Buffer.from('{"a":1,"receipts":[{}],"b":2}'), {
      wantReceipts: false,
      stopAtReceipts: (s) => (seen.push([...s]), true),
    });
    expect(r.stoppedAtReceipts).toBe(true);
    expect(seen).toEqual([["a", "receipts"]]);
  });

  it("never throws anything but a typed error on random bytes", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.uint8Array({ maxLength: 300 }),
        fc.integer({ min: 1, max: 32 }),
        async (bytes, chunk) => {
          try {
            await scanBundle(
              bytes,
              { wantReceipts: true, receipt: () => undefined },
              { ...BUNDLE_LIMITS, chunkBytes: chunk },
            );
          } catch (err) {
            expect(isCmcpError(err)).toBe(true);
          }
        },
      ),
      { numRuns: 500 },
    );
  });

  it("rejects structural faults with bundle.syntax and oversize values with bundle.too-large", async () => {
    const bad = [
      '{"a":1,}',
      '{"a":1 "b":2}',
      '{"receipts":[1]}',
      '{"receipts":[{},]}',
      '{"a":1}{',
      '{"a":[}',
      '{"a":1,"a":2}',
    ];
    for (const text of bad) {
      await expect(scanBundle(Buffer.from(text), { wantReceipts: true }), text).rejects.toMatchObject({
        code: "bundle.syntax",
      });
    }
    const big = `{"receipts":[{"x":"${"a".repeat(2000)}"}]}`;
    await expect(
      scanBundle(Buffer.from(big), { wantReceipts: true }, { ...BUNDLE_LIMITS, maxReceiptBytes: 1000 }),
    ).rejects.toMatchObject({ code: "bundle.too-large" });
  });
});
