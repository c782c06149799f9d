import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  MAX_CHECKPOINT_EXTENSIONS,
  formatCheckpoint,
  openCheckpoint,
  parseCheckpoint,
  signCheckpoint,
} from "../../artifacts/checkpoint.js";
import { fromBase64, toBase64 } from "../../artifacts/encoding.js";
import { generateSigner } from "../../artifacts/keys.js";
import { MerkleTree, leafHash } from "../../artifacts/merkle.js";
import { signNote } from "../../artifacts/signed-note.js";

const ROOT_B64 = "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=";
const root = fromBase64(ROOT_B64);

describe("checkpoint text", () => {
  it("parses the example from the tlog-checkpoint spec", () => {
    const r = parseCheckpoint(`example.com/behind-the-sofa\n20852163\n${ROOT_B64}\n`);
    expect(r).toEqual({
      ok: true,
      checkpoint: { origin: "example.com/behind-the-sofa", size: 20852163n, rootHash: root, extensions: [] },
    });
  });

  it("formats exactly and round-trips, with and without extensions", () => {
    const text = formatCheckpoint({ origin: "example.com/log", size: 5, rootHash: root });
    expect(text).toBe(`example.com/log\n5\n${ROOT_B64}\n`);
    const ext = formatCheckpoint({ origin: "o", size: 0n, rootHash: root, extensions: ["— a", "b c"] });
    expect(ext).toBe(`o\n0\n${ROOT_B64}\n— a\nb c\n`);
    expect(parseCheckpoint(ext)).toMatchObject({
      ok: true,
      checkpoint: { extensions: ["— a", "b c"], size: 0n },
    });
  });

  it("keeps sizes exact past 2^53 and up to 2^64-1, and rejects larger ones", () => {
    const big = 9007199254740993n; // 2^53 + 1, which a Number would round
    const text = formatCheckpoint({ origin: "o", size: big, rootHash: root });
    expect(text).toContain("\n9007199254740993\n");
    expect(parseCheckpoint(text)).toMatchObject({ ok: true, checkpoint: { size: big } });
    const max = (1n << 64n) - 1n;
    expect(parseCheckpoint(`o\n${max}\n${ROOT_B64}\n`)).toMatchObject({
      ok: true,
      checkpoint: { size: max },
    });
    expect(parseCheckpoint(`o\n${max + 1n}\n${ROOT_B64}\n`)).toMatchObject({
      ok: false,
      code: "checkpoint.size",
    });
    expect(parseCheckpoint(`o\n${"9".repeat(400)}\n${ROOT_B64}\n`)).toMatchObject({
      code: "checkpoint.size",
    });
    expect(() => formatCheckpoint({ origin: "o", size: max + 1n, rootHash: root })).toThrow(
      expect.objectContaining({ code: "checkpoint.size" }),
    );
    expect(() => formatCheckpoint({ origin: "o", size: 2 ** 60, rootHash: root })).toThrow(
      expect.objectContaining({ code: "checkpoint.size" }),
    );
  });

  it.each([
    ["leading zero", `o\n01\n${ROOT_B64}\n`, "checkpoint.size"],
    ["double zero", `o\n00\n${ROOT_B64}\n`, "checkpoint.size"],
    ["plus sign", `o\n+1\n${ROOT_B64}\n`, "checkpoint.size"],
    ["minus sign", `o\n-1\n${ROOT_B64}\n`, "checkpoint.size"],
    ["fraction", `o\n1.0\n${ROOT_B64}\n`, "checkpoint.size"],
    ["exponent", `o\n1e3\n${ROOT_B64}\n`, "checkpoint.size"],
    ["hex", `o\n0x10\n${ROOT_B64}\n`, "checkpoint.size"],
    ["space", `o\n 1\n${ROOT_B64}\n`, "checkpoint.size"],
    ["trailing space", `o\n1 \n${ROOT_B64}\n`, "checkpoint.size"],
    ["empty size", `o\n\n${ROOT_B64}\n`, "checkpoint.size"],
    ["non-ASCII digit", `o\n\u0661\n${ROOT_B64}\n`, "checkpoint.size"],
    ["short root", `o\n1\n${toBase64(new Uint8Array(31))}\n`, "checkpoint.root_hash"],
    ["long root", `o\n1\n${toBase64(new Uint8Array(33))}\n`, "checkpoint.root_hash"],
    ["unpadded root", `o\n1\n${ROOT_B64.slice(0, -1)}\n`, "checkpoint.root_hash"],
    ["non-canonical root", `o\n1\n${ROOT_B64.slice(0, -2)}3=\n`, "checkpoint.root_hash"],
    ["base64url root", `o\n1\n${ROOT_B64.replace("/", "_")}\n`, "checkpoint.root_hash"],
    ["empty origin", `\n1\n${ROOT_B64}\n`, "checkpoint.origin"],
    ["control char in origin", `o\u0007\n1\n${ROOT_B64}\n`, "checkpoint.origin"],
    ["two lines", `o\n1\n`, "checkpoint.malformed"],
    ["no final newline", `o\n1\n${ROOT_B64}`, "checkpoint.malformed"],
    ["empty", "", "checkpoint.malformed"],
    ["empty extension line", `o\n1\n${ROOT_B64}\n\n`, "checkpoint.extension"],
    ["empty middle extension", `o\n1\n${ROOT_B64}\na\n\nb\n`, "checkpoint.extension"],
    [
      "too many extensions",
      `o\n1\n${ROOT_B64}\n${"e\n".repeat(MAX_CHECKPOINT_EXTENSIONS + 1)}`,
      "checkpoint.extension",
    ],
  ])("rejects %s", (_name, text, code) => {
    expect(parseCheckpoint(text)).toMatchObject({ ok: false, code });
  });

  it("refuses to format values it could not parse back", () => {
    const bad = [
      { origin: "", size: 1, rootHash: root },
      { origin: "a\nb", size: 1, rootHash: root },
      { origin: "o", size: -1, rootHash: root },
      { origin: "o", size: 1.5, rootHash: root },
      { origin: "o", size: 1, rootHash: new Uint8Array(31) },
      { origin: "o", size: 1, rootHash: root, extensions: [""] },
      { origin: "o", size: 1, rootHash: root, extensions: ["a\nb"] },
    ];
    for (const cp of bad) expect(() => formatCheckpoint(cp)).toThrow();
  });

  it("round-trips arbitrary checkpoints (property)", () => {
    const line = fc
      .string({ unit: "grapheme", minLength: 1, maxLength: 20 })
      .filter((s) => ![...s].some((c) => c < " "));
    fc.assert(
      fc.property(
        line,
        fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
        fc.uint8Array({ minLength: 32, maxLength: 32 }),
        fc.array(line, { maxLength: 4 }),
        (origin, size, rootHash, extensions) => {
          const r = parseCheckpoint(formatCheckpoint({ origin, size, rootHash, extensions }));
          expect(r).toEqual({ ok: true, checkpoint: { origin, size, rootHash, extensions } });
        },
      ),
    );
    fc.assert(fc.property(fc.string({ unit: "binary", maxLength: 200 }), (s) => void parseCheckpoint(s)));
    expect(parseCheckpoint(null as never).ok).toBe(false);
  });
});

describe("signed checkpoints", () => {
  const logKey = generateSigner();
  const witness = generateSigner();
  const origin = "example.com/cmcp-log";
  const log = { name: origin, publicKey: logKey.publicKey };
  const wit = { name: "witness.example", publicKey: witness.publicKey };
  const tree = new MerkleTree(["a", "b", "c"].map((s) => leafHash(new TextEncoder().encode(s))));
  const cp = { origin, size: BigInt(tree.size), rootHash: tree.root() };
  const note = signCheckpoint(cp, [
    { name: origin, signer: logKey },
    { name: wit.name, signer: witness },
  ]);

  it("signs and opens", () => {
    expect(note.startsWith(formatCheckpoint(cp) + "\n\u2014 " + origin + " ")).toBe(true);
    expect(openCheckpoint(note, [log], origin)).toEqual({
      ok: true,
      checkpoint: { ...cp, extensions: [] },
      text: formatCheckpoint(cp),
      verifiedBy: [origin],
    });
    expect(openCheckpoint(note, [log, wit])).toMatchObject({ ok: true, verifiedBy: [origin, wit.name] });
  });

  it("checks the expected origin", () => {
    expect(openCheckpoint(note, [log], "example.com/other")).toMatchObject({
      ok: false,
      code: "checkpoint.origin_mismatch",
    });
  });

  it("passes signature failures through with note.* codes", () => {
    expect(openCheckpoint(note, [])).toMatchObject({ ok: false, code: "note.unverified" });
    const forged = note.replace(`\n${cp.size}\n`, `\n${cp.size + 1n}\n`);
    expect(openCheckpoint(forged, [log])).toMatchObject({ ok: false, code: "note.bad_signature" });
  });

  it("rejects a validly signed note whose text is not a checkpoint", () => {
    const notCp = signNote("example.com/cmcp-log\nfive\nroot\n", [{ name: origin, signer: logKey }]);
    expect(openCheckpoint(notCp, [log])).toMatchObject({ ok: false, code: "checkpoint.size" });
  });
});
