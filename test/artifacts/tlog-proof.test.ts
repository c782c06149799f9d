import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { signCheckpoint } from "../../artifacts/checkpoint.js";
import { fromBase64, toBase64 } from "../../artifacts/encoding.js";
import { generateSigner } from "../../artifacts/keys.js";
import { MerkleTree, leafHash } from "../../artifacts/merkle.js";
import {
  MAX_TLOG_PROOF_HASHES,
  TLOG_PROOF_HEADER,
  formatTlogProof,
  parseTlogProof,
  verifyTlogProof,
} from "../../artifacts/tlog-proof.js";

const enc = new TextEncoder();
const origin = "example.com/cmcp-log";
const logKey = generateSigner();
const otherKey = generateSigner();
const log = { name: origin, publicKey: logKey.publicKey };

const entries = Array.from({ length: 13 }, (_, i) => enc.encode(`entry ${i}`));
const tree = new MerkleTree(entries.map(leafHash));
const checkpointNote = signCheckpoint({ origin, size: tree.size, rootHash: tree.root() }, [
  { name: origin, signer: logKey },
]);

function proofFor(index: number, extra?: Uint8Array): string {
  const input = { index, proof: tree.inclusionProof(index), checkpointNote };
  return formatTlogProof(extra === undefined ? input : { ...input, extra });
}

/** Replaces the `line`-th line (0-based) of a proof. */
function replaceLine(text: string, line: number, value: string): string {
  const lines = text.split("\n");
  lines[line] = value;
  return lines.join("\n");
}

describe("tlog-proof layout", () => {
  it("parses the example from the c2sp.org/tlog-proof spec (layout only)", () => {
    const example = [
      "c2sp.org/tlog-proof@v1",
      "extra YWdlLXYxLjIuMS1kYXJ3aW4tYXJtNjQudGFyLmd6kYXJ3aW4tYXJ",
      "index 73894",
      "gSKyXoYZUgZ6jduWYrkDOARinOMGJveXjgMkBTcdPlQ=",
      "B95lDa8R83lS8n0eG+o0buTxRKQTYFi//1U8anccXmA=",
      "EKNzoDWG8LGC0Yp9o+sv3qllpMP9uHQ9B20KNL+Q1zs=",
      "RoopEkOdqkYqMB4MJXrbt/hMjOxsVn0IrWjpz1ZMMes=",
      "AHCioX9nLjsrse6YhjRRmk1WUEirVOLLRoOQ6vfO5vk=",
      "",
      "example.com/fancylog",
      "109482",
      "sFodV/vSp5O8n9a8QpW6PRY97tfOSW5bsc2Xl/EQi08=",
      "",
      "\u2014 example.com/fancylog hI2DJw[...]1roloI=",
      "",
    ].join("\n");
    const r = parseTlogProof(example);
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.tlogProof.index).toBe(73894n);
    expect(r.tlogProof.proof).toHaveLength(5);
    expect(new TextDecoder().decode(r.tlogProof.extra)).toMatch(/^age-v1\.2\.1-darwin-arm64\.tar\.gz/);
    expect(r.tlogProof.checkpointNote.startsWith("example.com/fancylog\n109482\n")).toBe(true);
  });

  it("formats header, optional extra, index, hashes, blank line, checkpoint", () => {
    const text = proofFor(6, Uint8Array.of(1, 2, 3));
    const hashes = tree.inclusionProof(6).map(toBase64);
    expect(text).toBe([TLOG_PROOF_HEADER, "extra AQID", "index 6", ...hashes, "", checkpointNote].join("\n"));
    expect(proofFor(6)).toBe([TLOG_PROOF_HEADER, "index 6", ...hashes, "", checkpointNote].join("\n"));
  });

  it("round-trips", () => {
    for (let i = 0; i < tree.size; i++) {
      for (const extra of [undefined, new Uint8Array(0), enc.encode("context")]) {
        const r = parseTlogProof(proofFor(i, extra));
        const want: Record<string, unknown> = {
          index: BigInt(i),
          proof: tree.inclusionProof(i),
          checkpointNote,
        };
        if (extra !== undefined) want.extra = extra;
        expect(r).toEqual({ ok: true, tlogProof: want });
      }
    }
    // A single-leaf tree has an empty proof: the blank line follows the index line.
    const one = new MerkleTree([leafHash(entries[0]!)]);
    const note1 = signCheckpoint({ origin, size: 1, rootHash: one.root() }, [
      { name: origin, signer: logKey },
    ]);
    const text1 = formatTlogProof({ index: 0, proof: [], checkpointNote: note1 });
    expect(text1).toBe(`${TLOG_PROOF_HEADER}\nindex 0\n\n${note1}`);
    expect(verifyTlogProof(text1, entries[0]!, [log], origin)).toMatchObject({ ok: true, index: 0n });
  });

  it.each([
    ["wrong header", (t: string) => replaceLine(t, 0, "c2sp.org/tlog-proof@v2"), "tlog_proof.header"],
    ["missing index", (t: string) => replaceLine(t, 1, "idx 3"), "tlog_proof.index"],
    ["index leading zero", (t: string) => replaceLine(t, 1, "index 03"), "tlog_proof.index"],
    ["negative index", (t: string) => replaceLine(t, 1, "index -3"), "tlog_proof.index"],
    ["index too large", (t: string) => replaceLine(t, 1, `index ${1n << 64n}`), "tlog_proof.index"],
    ["index two spaces", (t: string) => replaceLine(t, 1, "index  3"), "tlog_proof.index"],
    ["short hash", (t: string) => replaceLine(t, 2, toBase64(new Uint8Array(31))), "tlog_proof.hash"],
    ["garbage hash", (t: string) => replaceLine(t, 2, "not base64!"), "tlog_proof.hash"],
    ["extra after index", (t: string) => replaceLine(t, 2, "extra AQID"), "tlog_proof.hash"],
    ["bad extra", (t: string) => t.replace("index 3", "extra A\nindex 3"), "tlog_proof.extra"],
    // The checkpoint's own lines then sit where hashes belong.
    ["no blank line before checkpoint", (t: string) => t.replace("\n\n", "\n"), "tlog_proof.hash"],
    ["no blank line at all", (t: string) => t.replace(/\n\n/g, "\n"), "tlog_proof.malformed"],
    ["no checkpoint", (t: string) => t.slice(0, t.indexOf("\n\n") + 2), "tlog_proof.checkpoint"],
    ["CRLF", (t: string) => t.replace(/\n/g, "\r\n"), "tlog_proof.malformed"],
  ])("rejects %s", (_name, mutate, code) => {
    const text = mutate(proofFor(3));
    expect(parseTlogProof(text)).toMatchObject({ ok: false, code });
    expect(verifyTlogProof(text, entries[3]!, [log])).toMatchObject({ ok: false, code });
  });

  it(`rejects more than ${MAX_TLOG_PROOF_HASHES} hash lines`, () => {
    const many = Array.from({ length: MAX_TLOG_PROOF_HASHES + 1 }, () => new Uint8Array(32).fill(7));
    const lines = [TLOG_PROOF_HEADER, "index 0", ...many.map(toBase64), "", checkpointNote];
    expect(parseTlogProof(lines.join("\n"))).toMatchObject({ code: "tlog_proof.proof_length" });
    expect(() => formatTlogProof({ index: 0, proof: many, checkpointNote })).toThrow(
      expect.objectContaining({ code: "tlog_proof.proof_length" }),
    );
  });

  it("refuses to format what it could not parse", () => {
    expect(() => formatTlogProof({ index: -1, proof: [], checkpointNote })).toThrow();
    expect(() => formatTlogProof({ index: 1.5, proof: [], checkpointNote })).toThrow();
    expect(() => formatTlogProof({ index: 0, proof: [new Uint8Array(31)], checkpointNote })).toThrow();
    expect(() => formatTlogProof({ index: 0, proof: [], checkpointNote: "no newline" })).toThrow();
  });
});

describe("verifyTlogProof", () => {
  it("accepts every entry's proof", () => {
    for (let i = 0; i < tree.size; i++) {
      const r = verifyTlogProof(proofFor(i, enc.encode("x")), entries[i]!, [log], origin);
      expect(r).toMatchObject({ ok: true, index: BigInt(i), verifiedBy: [origin], extra: enc.encode("x") });
      if (r.ok) expect(r.checkpoint.size).toBe(13n);
    }
  });

  it("fails a tampered index, proof hash, entry or checkpoint, each at its own step", () => {
    const good = proofFor(5);
    const codes = new Map<string, string>();
    const check = (label: string, text: string, entry = entries[5]!) => {
      const r = verifyTlogProof(text, entry, [log], origin);
      expect(r.ok).toBe(false);
      if (!r.ok) codes.set(label, r.code);
    };

    // Index: a different leaf position under the same path does not reach the root.
    check("index", replaceLine(good, 1, "index 4"));
    // Index past the checkpoint's tree size.
    check("index out of range", replaceLine(good, 1, "index 13"));
    // Index whose path has a different length in a 13-leaf tree (12 is alone on the right edge).
    check("index other shape", replaceLine(good, 1, "index 12"));
    // Proof hash: flip one bit.
    const h = fromBase64(good.split("\n")[2]!);
    h[0]! ^= 0x80;
    check("hash", replaceLine(good, 2, toBase64(h)));
    // Proof hashes: one dropped.
    check(
      "hash dropped",
      good
        .split("\n")
        .filter((_l, i) => i !== 2)
        .join("\n"),
    );
    // Entry that is not in the log.
    check("entry", good, enc.encode("entry 99"));
    // Checkpoint text changed without re-signing.
    check("checkpoint", good.replace(`\n13\n`, `\n14\n`));
    // Checkpoint re-signed by a key the verifier does not trust.
    const foreign = signCheckpoint({ origin, size: 13, rootHash: tree.root() }, [
      { name: origin, signer: otherKey },
    ]);
    check("checkpoint key", good.slice(0, good.indexOf("\n\n") + 2) + foreign);
    // Checkpoint of another log, validly signed.
    const otherLog = signCheckpoint({ origin: "example.com/other", size: 13, rootHash: tree.root() }, [
      { name: origin, signer: logKey },
    ]);
    check("checkpoint origin", good.slice(0, good.indexOf("\n\n") + 2) + otherLog);
    // Header damaged.
    check("layout", replaceLine(good, 0, "c2sp.org/tlog-proof"));

    expect(Object.fromEntries(codes)).toEqual({
      index: "merkle.root_mismatch",
      "index out of range": "merkle.index_range",
      "index other shape": "merkle.proof_length",
      hash: "merkle.root_mismatch",
      "hash dropped": "merkle.proof_length",
      entry: "merkle.root_mismatch",
      checkpoint: "note.bad_signature",
      "checkpoint key": "note.unverified",
      "checkpoint origin": "checkpoint.origin_mismatch",
      layout: "tlog_proof.header",
    });
  });

  it("does not authenticate extra data, but returns it", () => {
    const r = verifyTlogProof(proofFor(2, enc.encode("anything")), entries[2]!, [log]);
    expect(r).toMatchObject({ ok: true, extra: enc.encode("anything") });
  });

  it("never throws on hostile input (property)", () => {
    const good = proofFor(7);
    fc.assert(
      fc.property(
        fc.nat({ max: good.length }),
        fc.nat({ max: 40 }),
        fc.string({ unit: "binary", maxLength: 10 }),
        (start, len, insert) => {
          const mutated = good.slice(0, start) + insert + good.slice(start + len);
          const r = verifyTlogProof(mutated, entries[7]!, [log], origin);
          if (r.ok) expect(r.index).toBe(7n);
        },
      ),
    );
    for (const junk of [null, 7, {}, ""])
      expect(verifyTlogProof(junk as never, entries[0]!, [log]).ok).toBe(false);
    expect(verifyTlogProof(good, "entry 7" as never, [log]).ok).toBe(false);
  });
});
