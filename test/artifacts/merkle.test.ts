import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { fromBase64, fromHex, toHex } from "../../artifacts/encoding.js";
import { sha256 } from "../../artifacts/hash.js";
import {
  HASH_SIZE,
  MerkleAccumulator,
  MerkleTree,
  emptyRoot,
  leafHash,
  nodeHash,
  verifyConsistency,
  verifyInclusion,
} from "../../artifacts/merkle.js";

const VECTORS = fileURLToPath(new URL("../../../shared/vectors/rfc9162-merkle/testdata/", import.meta.url));

// Counted by hand from the vector tree (transparency-dev/merkle testdata).
const EXPECTED_INCLUSION_CASES = 98;
const EXPECTED_CONSISTENCY_CASES = 98;

/**
 * Cases where we deliberately disagree with the file. This one expects two
 * 12-byte "roots" ("don't care 2") to be consistent at size 1; we reject every
 * hash that is not 32 bytes, so it must fail with merkle.hash_size instead.
 */
const OVERRIDES: Record<string, { wantErr: boolean; code: string }> = {
  "consistency/additional/sizes-are-equal-one-and-proof-is-empty.json": {
    wantErr: true,
    code: "merkle.hash_size",
  },
};

function walk(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...walk(p));
    else if (e.name.endsWith(".json")) out.push(p);
  }
  return out.sort();
}

/** JSON.parse rounds 2^64-1 (used by the *-sub-@1 cases); read sizes and indices as exact bigints. */
function parseVector(text: string): Record<string, unknown> {
  const exact = text.replace(/"(leafIdx|treeSize|size1|size2)"\s*:\s*(\d+)/g, '"$1":"$2"');
  const obj = JSON.parse(exact) as Record<string, unknown>;
  for (const k of ["leafIdx", "treeSize", "size1", "size2"]) {
    if (typeof obj[k] === "string") obj[k] = BigInt(obj[k]);
  }
  return obj;
}

const b64 = (s: unknown): Uint8Array => fromBase64(s as string);
const proofOf = (p: unknown): Uint8Array[] => ((p ?? []) as string[]).map(b64);

function loadCases(kind: "inclusion" | "consistency") {
  const dir = join(VECTORS, kind);
  if (!existsSync(dir)) throw new Error(`vector directory missing: ${dir}`);
  return walk(dir).map((file) => {
    const rel = relative(VECTORS, file);
    const data = parseVector(readFileSync(file, "utf8"));
    if (typeof data.wantErr !== "boolean") throw new Error(`${rel}: wantErr is not a boolean`);
    return { rel, data, wantErr: data.wantErr };
  });
}

describe("RFC 9162 vectors (transparency-dev/merkle testdata)", () => {
  const inclusion = loadCases("inclusion");
  const consistency = loadCases("consistency");

  it("finds every case", () => {
    expect(inclusion.length).toBe(EXPECTED_INCLUSION_CASES);
    expect(consistency.length).toBe(EXPECTED_CONSISTENCY_CASES);
    // Both outcomes are present, so expectations really come from the files.
    expect(inclusion.filter((c) => !c.wantErr).length).toBe(6);
    expect(consistency.filter((c) => !c.wantErr).length).toBe(6);
  });

  it.each(inclusion.map((c) => [c.rel, c] as const))("inclusion %s", (_rel, c) => {
    const d = c.data;
    expect(typeof d.leafIdx).toBe("bigint");
    const r = verifyInclusion({
      index: d.leafIdx as bigint,
      size: d.treeSize as bigint,
      leafHash: b64(d.leafHash),
      proof: proofOf(d.proof),
      root: b64(d.root),
    });
    expect(r.ok).toBe(!c.wantErr);
  });

  it.each(consistency.map((c) => [c.rel, c] as const))("consistency %s", (rel, c) => {
    const d = c.data;
    const r = verifyConsistency({
      oldSize: d.size1 as bigint,
      newSize: d.size2 as bigint,
      oldRoot: b64(d.root1),
      newRoot: b64(d.root2),
      proof: proofOf(d.proof),
    });
    const override = OVERRIDES[rel];
    if (override) {
      // Fails loudly if the vector changes so the override is no longer needed.
      expect(c.wantErr).not.toBe(override.wantErr);
      expect(r).toMatchObject({ ok: false, code: override.code });
    } else {
      expect(r.ok).toBe(!c.wantErr);
    }
  });

  it("the size-0 traps from the vectors fail before any equal-size shortcut", () => {
    const root = emptyRoot();
    expect(
      verifyConsistency({ oldSize: 0, newSize: 0, oldRoot: root, newRoot: root, proof: [] }),
    ).toMatchObject({
      ok: false,
      code: "merkle.empty_tree",
    });
  });

  it("our tree over the RFC 6962 test leaves reproduces every happy-path proof byte for byte", () => {
    const leaves = [
      "",
      "00",
      "10",
      "2021",
      "3031",
      "40414243",
      "5051525354555657",
      "606162636465666768696a6b6c6d6e6f",
    ].map((h) => leafHash(fromHex(h)));
    const tree = new MerkleTree(leaves);
    expect(toHex(tree.root())).toBe("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328");
    let checked = 0;
    for (const c of inclusion.filter((c) => !c.wantErr && /^inclusion\/\d\//.test(c.rel))) {
      const idx = c.data.leafIdx as bigint;
      const size = c.data.treeSize as bigint;
      expect(toHex(tree.leaf(idx))).toBe(toHex(b64(c.data.leafHash)));
      expect(toHex(tree.root(size))).toBe(toHex(b64(c.data.root)));
      expect(tree.inclusionProof(idx, size).map(toHex)).toEqual(proofOf(c.data.proof).map(toHex));
      checked++;
    }
    for (const c of consistency.filter((c) => !c.wantErr && /^consistency\/\d\//.test(c.rel))) {
      const m = c.data.size1 as bigint;
      const n = c.data.size2 as bigint;
      expect(toHex(tree.root(m))).toBe(toHex(b64(c.data.root1)));
      expect(toHex(tree.root(n))).toBe(toHex(b64(c.data.root2)));
      expect(tree.consistencyProof(m, n).map(toHex)).toEqual(proofOf(c.data.proof).map(toHex));
      checked++;
    }
    expect(checked).toBe(10);
  });
});

/** Direct transcription of the RFC 9162 MTH recursion, as an independent reference. */
function referenceRoot(leaves: Uint8Array[]): Uint8Array {
  if (leaves.length === 0) return sha256();
  if (leaves.length === 1) return leaves[0]!;
  let k = 1;
  while (k * 2 < leaves.length) k *= 2;
  return nodeHash(referenceRoot(leaves.slice(0, k)), referenceRoot(leaves.slice(k)));
}

const leavesFor = (n: number) =>
  Array.from({ length: n }, (_, i) => leafHash(Uint8Array.of(i & 0xff, i >> 8)));

describe("MerkleTree", () => {
  const N = 70;
  const leaves = leavesFor(N);
  const tree = new MerkleTree(leaves);

  it("hashes leaves and nodes with RFC 9162 domain separation", () => {
    expect(toHex(emptyRoot())).toBe("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    expect(toHex(leafHash(new Uint8Array()))).toBe(
      "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    );
    const a = leaves[0]!;
    const b = leaves[1]!;
    expect(toHex(nodeHash(a, b))).toBe(toHex(sha256(Uint8Array.of(1), a, b)));
    expect(() => nodeHash(a, new Uint8Array(31))).toThrow();
    expect(HASH_SIZE).toBe(32);
  });

  it("roots of every prefix match the reference recursion", () => {
    for (let n = 0; n <= N; n++) expect(toHex(tree.root(n))).toBe(toHex(referenceRoot(leaves.slice(0, n))));
  });

  it("inclusion proofs verify for every index and prefix size up to 70", () => {
    for (let n = 1; n <= N; n++) {
      const root = tree.root(n);
      for (let m = 0; m < n; m++) {
        const proof = tree.inclusionProof(m, n);
        expect(verifyInclusion({ index: m, size: n, leafHash: leaves[m]!, proof, root })).toEqual({
          ok: true,
        });
        // Same proof under another index must not verify. (A different size can:
        // a path of left turns does not depend on it, which is why the size is signed.)
        if (n > 1) {
          const other = (m + 1) % n;
          expect(verifyInclusion({ index: other, size: n, leafHash: leaves[m]!, proof, root }).ok).toBe(
            false,
          );
          expect(verifyInclusion({ index: m, size: n, leafHash: leaves[other]!, proof, root }).ok).toBe(
            false,
          );
        }
        expect(
          verifyInclusion({
            index: BigInt(m),
            size: BigInt(n),
            leafHash: leaves[m]!,
            proof,
            root: tree.root(n),
          }),
        ).toEqual({ ok: true });
      }
    }
  });

  it("consistency proofs verify for every pair of sizes up to 70", () => {
    for (let n = 1; n <= N; n++) {
      for (let m = 1; m <= n; m++) {
        const proof = tree.consistencyProof(m, n);
        const input = { oldSize: m, newSize: n, oldRoot: tree.root(m), newRoot: tree.root(n), proof };
        expect(verifyConsistency(input)).toEqual({ ok: true });
        if (m < n) {
          expect(verifyConsistency({ ...input, oldRoot: tree.root(m - 1) }).ok).toBe(false);
          expect(verifyConsistency({ ...input, newRoot: tree.root(n - 1) }).ok).toBe(false);
          expect(verifyConsistency({ ...input, proof: proof.slice(1) })).toMatchObject({
            code: "merkle.proof_length",
          });
          expect(verifyConsistency({ ...input, proof: [...proof, leaves[0]!] })).toMatchObject({
            code: "merkle.proof_length",
          });
        }
      }
    }
  });

  it("rejects every single-bit change to a proof hash", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 2, max: N }),
        fc.nat(),
        fc.nat(),
        fc.nat({ max: 255 }),
        (n, mSeed, hSeed, bit) => {
          const m = mSeed % n;
          const proof = tree.inclusionProof(m, n).map((h) => h.slice());
          const h = proof[hSeed % proof.length]!;
          h[bit >> 3]! ^= 1 << (bit & 7);
          const r = verifyInclusion({ index: m, size: n, leafHash: leaves[m]!, proof, root: tree.root(n) });
          expect(r).toMatchObject({ ok: false, code: "merkle.root_mismatch" });
        },
      ),
    );
  });

  it("append after construction gives the same tree", () => {
    const t = new MerkleTree();
    for (const l of leaves) t.append(l);
    expect(t.size).toBe(N);
    expect(toHex(t.root())).toBe(toHex(tree.root()));
    expect(t.inclusionProof(37, 50).map(toHex)).toEqual(tree.inclusionProof(37, 50).map(toHex));
  });

  it("refuses impossible requests with typed errors", () => {
    expect(() => tree.root(N + 1)).toThrow(expect.objectContaining({ code: "merkle.size_range" }));
    expect(() => tree.inclusionProof(5, 5)).toThrow(expect.objectContaining({ code: "merkle.index_range" }));
    expect(() => tree.inclusionProof(-1)).toThrow(expect.objectContaining({ code: "merkle.invalid_index" }));
    expect(() => tree.consistencyProof(0, 5)).toThrow(expect.objectContaining({ code: "merkle.empty_tree" }));
    expect(() => tree.consistencyProof(6, 5)).toThrow(expect.objectContaining({ code: "merkle.size_order" }));
    expect(() => new MerkleTree([new Uint8Array(31)])).toThrow(
      expect.objectContaining({ code: "merkle.hash_size" }),
    );
    expect(tree.consistencyProof(9, 9)).toEqual([]);
  });
});

describe("MerkleAccumulator", () => {
  it("matches MerkleTree for every size up to 300", () => {
    const leaves = leavesFor(300);
    const tree = new MerkleTree(leaves);
    const acc = new MerkleAccumulator();
    expect(toHex(acc.root())).toBe(toHex(emptyRoot()));
    for (let i = 0; i < leaves.length; i++) {
      acc.append(leaves[i]!);
      expect(acc.size).toBe(i + 1);
      expect(toHex(acc.root())).toBe(toHex(tree.root(i + 1)));
    }
    expect(() => acc.append(new Uint8Array(33))).toThrow(
      expect.objectContaining({ code: "merkle.hash_size" }),
    );
  });
});

describe("verification on hostile input never throws", () => {
  const tree = new MerkleTree(leavesFor(9));
  const good = {
    index: 4,
    size: 9,
    leafHash: tree.leaf(4),
    proof: tree.inclusionProof(4),
    root: tree.root(),
  };
  const goodC = {
    oldSize: 3,
    newSize: 9,
    oldRoot: tree.root(3),
    newRoot: tree.root(),
    proof: tree.consistencyProof(3),
  };

  it("accepts the untouched inputs", () => {
    expect(verifyInclusion(good)).toEqual({ ok: true });
    expect(verifyConsistency(goodC)).toEqual({ ok: true });
  });

  it.each([
    ["negative index", { index: -1 }, "merkle.invalid_index"],
    ["fractional index", { index: 1.5 }, "merkle.invalid_index"],
    ["NaN index", { index: NaN }, "merkle.invalid_index"],
    ["unsafe index", { index: 2 ** 53 }, "merkle.invalid_index"],
    ["string index", { index: "4" }, "merkle.invalid_index"],
    ["negative bigint index", { index: -1n }, "merkle.invalid_index"],
    ["index beyond uint64", { index: 1n << 64n }, "merkle.invalid_index"],
    ["infinite size", { size: Infinity }, "merkle.invalid_size"],
    ["index = size", { index: 9 }, "merkle.index_range"],
    ["index > size", { index: 10n }, "merkle.index_range"],
    ["size 0", { index: 0, size: 0 }, "merkle.index_range"],
    ["short leaf hash", { leafHash: new Uint8Array(31) }, "merkle.hash_size"],
    ["long root", { root: new Uint8Array(33) }, "merkle.hash_size"],
    ["string root", { root: "root" }, "merkle.hash_size"],
    ["short proof hash", { proof: [new Uint8Array(32), new Uint8Array(1)] }, "merkle.hash_size"],
    ["non-array proof", { proof: "x" }, "merkle.proof_type"],
    ["null proof", { proof: null }, "merkle.proof_type"],
    ["huge proof", { proof: new Array(1000).fill(new Uint8Array(32)) }, "merkle.proof_length"],
    ["missing hash", { proof: tree.inclusionProof(4).slice(1) }, "merkle.proof_length"],
    ["extra hash", { proof: [...tree.inclusionProof(4), new Uint8Array(32)] }, "merkle.proof_length"],
  ])("inclusion: %s", (_name, patch, code) => {
    const r = verifyInclusion({ ...good, ...(patch as object) } as never);
    expect(r).toMatchObject({ ok: false, code });
  });

  it.each([
    ["old > new", { oldSize: 10 }, "merkle.size_order"],
    ["old = 0", { oldSize: 0 }, "merkle.empty_tree"],
    ["both 0", { oldSize: 0, newSize: 0, proof: [] }, "merkle.empty_tree"],
    ["equal sizes with proof", { oldSize: 9 }, "merkle.proof_length"],
    ["equal sizes, roots differ", { oldSize: 9, proof: [] }, "merkle.root_mismatch"],
    ["fractional size", { newSize: 9.5 }, "merkle.invalid_size"],
    ["short old root", { oldRoot: new Uint8Array(12) }, "merkle.hash_size"],
    ["empty proof", { proof: [] }, "merkle.proof_length"],
  ])("consistency: %s", (_name, patch, code) => {
    const r = verifyConsistency({ ...goodC, ...(patch as object) } as never);
    expect(r).toMatchObject({ ok: false, code });
  });

  it("returns a failure for arbitrary junk", () => {
    const junk = fc.oneof(
      fc.anything(),
      fc.bigInt(),
      fc.uint8Array({ minLength: 0, maxLength: 40 }),
      fc.array(fc.uint8Array({ minLength: 31, maxLength: 33 }), { maxLength: 6 }),
    );
    fc.assert(
      fc.property(junk, junk, junk, junk, junk, (a, b, c, d, e) => {
        const i = verifyInclusion({ index: a, size: b, leafHash: c, proof: d, root: e } as never);
        const k = verifyConsistency({ oldSize: a, newSize: b, oldRoot: c, newRoot: e, proof: d } as never);
        expect(typeof i.ok).toBe("boolean");
        expect(typeof k.ok).toBe("boolean");
      }),
    );
    expect(verifyInclusion(null as never).ok).toBe(false);
    expect(verifyConsistency(undefined as never).ok).toBe(false);
  });
});

describe("trees beyond 2^32 leaves", () => {
  // A virtual tree of identical leaves: the perfect subtree of 2^k leaves has
  // root P[k] = nodeHash(P[k-1], P[k-1]), so any subtree hash is computable.
  const L = leafHash(new TextEncoder().encode("same"));
  const P: Uint8Array[] = [L];
  for (let k = 1; k <= 40; k++) P.push(nodeHash(P[k - 1]!, P[k - 1]!));
  const p = (k: number) => P[k]!;

  // size = 2^33 + 2^32 + 3 = [P33][P32][P1][L]
  const size = (1n << 33n) + (1n << 32n) + 3n;
  const tail = nodeHash(p(1), L); // last 3 leaves
  const right = nodeHash(p(32), tail); // leaves from 2^33 on
  const root = nodeHash(p(33), right);

  it("accepts a proof for the last leaf and rejects modified ones", () => {
    const index = size - 1n;
    const proof = [p(1), p(32), p(33)];
    expect(verifyInclusion({ index, size, leafHash: L, proof, root })).toEqual({ ok: true });
    const bent = proof.map((h) => h.slice());
    bent[2]![0]! ^= 1;
    expect(verifyInclusion({ index, size, leafHash: L, proof: bent, root })).toMatchObject({ ok: false });
    expect(verifyInclusion({ index: index - 1n, size, leafHash: L, proof, root }).ok).toBe(false);
    // Index with the high bits dropped, as 32-bit arithmetic would.
    expect(verifyInclusion({ index: index % (1n << 32n), size, leafHash: L, proof, root }).ok).toBe(false);
  });

  it("accepts a proof for a leaf inside the 2^32 block past 2^33", () => {
    const index = (1n << 33n) + 5n;
    const proof = [...P.slice(0, 32), tail, p(33)];
    expect(verifyInclusion({ index, size, leafHash: L, proof, root })).toEqual({ ok: true });
    expect(verifyInclusion({ index: Number(index), size: Number(size), leafHash: L, proof, root })).toEqual({
      ok: true,
    });
    expect(verifyInclusion({ index: 5n, size, leafHash: L, proof, root }).ok).toBe(false);
    const swapped = [...P.slice(0, 32), p(33), tail];
    expect(verifyInclusion({ index, size, leafHash: L, proof: swapped, root }).ok).toBe(false);
    expect(verifyInclusion({ index, size, leafHash: L, proof: proof.slice(0, -1), root }).ok).toBe(false);
  });

  it("verifies consistency from 2^33 to the larger tree", () => {
    const proof = [right];
    const input = { oldSize: 1n << 33n, newSize: size, oldRoot: p(33), newRoot: root, proof };
    expect(verifyConsistency(input)).toEqual({ ok: true });
    expect(verifyConsistency({ ...input, proof: [tail] }).ok).toBe(false);
    // From 2^33 + 2^32 (old root node(P33, P32)): SUBPROOF gives [P32, tail, P33].
    const oldSize = (1n << 33n) + (1n << 32n);
    const oldRoot = nodeHash(p(33), p(32));
    expect(
      verifyConsistency({ oldSize, newSize: size, oldRoot, newRoot: root, proof: [p(32), tail, p(33)] }),
    ).toEqual({ ok: true });
  });
});
