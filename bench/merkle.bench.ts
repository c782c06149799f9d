/**
 * Merkle root and proofs over 1M leaves (RFC 9162). Baseline: hashing the
 * same 1M leaf hashes once each with SHA-256 (a tree needs ~2x that).
 *   node --import tsx bench/merkle.bench.ts
 */
import { sha256 } from "../artifacts/hash.js";
import {
  leafHash,
  MerkleAccumulator,
  MerkleTree,
  verifyConsistency,
  verifyInclusion,
} from "../artifacts/merkle.js";
import { line, once } from "./harness.js";

const N = Number(process.env.MERKLE_LEAVES ?? 1_000_000);
const leaves: Uint8Array[] = [];
for (let i = 0; i < N; i++) {
  const e = new Uint8Array(8);
  new DataView(e.buffer).setUint32(0, i, true);
  leaves.push(leafHash(e));
}
const base = await once(() => {
  for (const l of leaves) sha256(l);
});
const acc = await once(() => {
  const a = new MerkleAccumulator();
  for (const l of leaves) a.append(l);
  return a.root();
});
const tree = await once(() => new MerkleTree(leaves));
const root = await once(() => tree.value.root());
const PROOFS = 10_000;
const proofs = await once(() => {
  const out = [];
  for (let k = 0; k < PROOFS; k++) out.push(tree.value.inclusionProof((k * 7919) % N));
  return out;
});
const verify = await once(() => {
  for (let k = 0; k < PROOFS; k++) {
    const i = (k * 7919) % N;
    const r = verifyInclusion({
      index: i,
      size: N,
      leafHash: leaves[i]!,
      proof: proofs.value[k]!,
      root: root.value,
    });
    if (!r.ok) throw new Error(r.reason);
  }
});
const cons = tree.value.consistencyProof(N >> 1, N);
const consOk = verifyConsistency({
  oldSize: N >> 1,
  newSize: N,
  oldRoot: tree.value.root(N >> 1),
  newRoot: root.value,
  proof: cons,
});
if (!consOk.ok) throw new Error("consistency proof failed");
if (Buffer.compare(Buffer.from(acc.value), Buffer.from(root.value)) !== 0)
  throw new Error("accumulator and tree disagree");

line(`\n## Merkle, ${N.toLocaleString("en-US")} leaves`);
line(`baseline: SHA-256 of every leaf hash once     ${base.ms.toFixed(0).padStart(8)} ms`);
line(
  `streaming root (MerkleAccumulator)            ${acc.ms.toFixed(0).padStart(8)} ms   ${(acc.ms / base.ms).toFixed(2)}x baseline`,
);
line(
  `tree build (cached levels)                    ${tree.ms.toFixed(0).padStart(8)} ms   ${(tree.ms / base.ms).toFixed(2)}x baseline`,
);
line(`root from built tree                          ${root.ms.toFixed(2).padStart(8)} ms`);
line(
  `${PROOFS} inclusion proofs (generate)          ${proofs.ms.toFixed(0).padStart(8)} ms   ${((proofs.ms * 1000) / PROOFS).toFixed(1)} us/proof`,
);
line(
  `${PROOFS} inclusion proofs (verify)            ${verify.ms.toFixed(0).padStart(8)} ms   ${((verify.ms * 1000) / PROOFS).toFixed(1)} us/proof`,
);
line(`consistency proof ${N >> 1} -> ${N}: ${cons.length} hashes, verified`);
