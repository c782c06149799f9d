/**
 * Export of evidence bundles and single C2SP tlog-proofs, from a stopped
 * governor's data directory (offline) or from the running chain (through the
 * admin interface). Needs no key: everything exported was signed when it was
 * written. The bundle ends at the last checkpoint, so every receipt in it is
 * covered by a signed root.
 */
import { join } from "node:path";
import { writeFile } from "node:fs/promises";
import { toBase64 } from "../artifacts/encoding.js";
import { CmcpError, isCmcpError } from "../artifacts/errors.js";
import {
  BUNDLE_FORMAT,
  writeBundle,
  type BundleHeader,
  type BundleKey,
  type InclusionProof,
} from "../artifacts/evidence-bundle.js";
import { leafHash, MerkleTree } from "../artifacts/merkle.js";
import { utcTimestamp, type EpochStartData, type Receipt } from "../artifacts/receipt.js";
import { parseJson } from "../artifacts/strict-json.js";
import { formatTlogProof } from "../artifacts/tlog-proof.js";
import { ChainStore } from "./chain-store.js";
import { acquireDataDirLock } from "./data-dir-lock.js";
import {
  listCheckpoints,
  listClaims,
  readLogInfo,
  readStoredArtifact,
  type ReceiptChain,
  type StoredCheckpoint,
} from "./receipt-chain.js";

/** What an export reads: a stopped data directory's store, or the running chain. */
export interface ChainSource {
  dataDir: string;
  origin: string;
  durableSize: number;
  entries(from?: number, to?: number): AsyncIterable<{ seq: number; entry: Uint8Array }>;
}

interface ChainIndex {
  tree: MerkleTree;
  epochStarts: { seq: number; key: BundleKey; provider: string; artifact: string | null }[];
  checkpoints: StoredCheckpoint[];
}

async function indexChain(src: ChainSource): Promise<ChainIndex> {
  const tree = new MerkleTree();
  const epochStarts: ChainIndex["epochStarts"] = [];
  const size = src.durableSize;
  for await (const { seq, entry } of src.entries(0, size)) {
    tree.append(leafHash(entry));
    const r = parseJson(entry) as Receipt;
    if (r.type === "epoch_start") {
      const data = r.data as unknown as EpochStartData;
      epochStarts.push({
        seq,
        key: { kid: r.kid, public_key: data.public_key },
        provider: data.provider,
        artifact: data.policy_artifact?.hash ?? null,
      });
    }
  }
  return { tree, epochStarts, checkpoints: await listCheckpoints(src.dataDir, size) };
}

/** Opens a stopped governor's data directory, holding its lock for the whole export. */
async function withStoppedChain<T>(dataDir: string, fn: (src: ChainSource) => Promise<T>): Promise<T> {
  const { origin } = await readLogInfo(dataDir);
  let unlock: () => Promise<void>;
  try {
    unlock = await acquireDataDirLock(dataDir);
  } catch (err) {
    if (!isCmcpError(err, "chain.locked")) throw err;
    throw new CmcpError(
      "export.locked",
      `${err.message}; a running governor exports through its admin socket`,
    );
  }
  try {
    // Opening the store may repair its tail, which is why the lock is held.
    const store = await ChainStore.open({ dir: join(dataDir, "chain") });
    try {
      return await fn({
        dataDir,
        origin,
        durableSize: store.durableSize,
        entries: (f, t) => store.entries(f, t),
      });
    } finally {
      await store.close();
    }
  } finally {
    await unlock();
  }
}

/** A running chain as an export source; a fresh checkpoint first covers everything appended so far. */
export async function liveSource(chain: ReceiptChain): Promise<ChainSource> {
  await chain.checkpoint();
  return {
    dataDir: chain.dataDir,
    origin: chain.origin,
    durableSize: chain.durableSize,
    entries: (f, t) => chain.entries(f, t),
  };
}

export interface ExportSummary {
  receipts: number;
  bytes: number;
  checkpoints: number;
  claims: number;
}

export async function exportFromSource(src: ChainSource, out: string): Promise<ExportSummary> {
  const ix = await indexChain(src);
  const end = ix.checkpoints[ix.checkpoints.length - 1]?.size ?? 0;
  const inBundle = ix.epochStarts.filter((e) => e.seq < end);
  const claims = (await listClaims(src.dataDir)).filter((c) => c.checkpoint.size <= end);
  const artifactHashes = [...new Set(inBundle.flatMap((e) => (e.artifact ? [e.artifact] : [])))];
  const artifacts = await Promise.all(artifactHashes.map((h) => readStoredArtifact(src.dataDir, h)));
  const proofs: InclusionProof[] = [];
  const wanted = new Set<number>([
    ...inBundle.map((e) => e.seq),
    ...claims.map((c) => c.checkpoint.size - 1),
  ]);
  for (const seq of [...wanted].sort((a, b) => a - b)) {
    const cp = ix.checkpoints.find((c) => c.size > seq);
    if (cp)
      proofs.push({
        seq,
        checkpoint_size: cp.size,
        proof: ix.tree.inclusionProof(seq, cp.size).map(toBase64),
      });
  }
  const consistency = [];
  for (let i = 1; i < ix.checkpoints.length; i++) {
    const a = ix.checkpoints[i - 1]!.size;
    const b = ix.checkpoints[i]!.size;
    consistency.push({ old_size: a, new_size: b, proof: ix.tree.consistencyProof(a, b).map(toBase64) });
  }
  const header: BundleHeader = {
    format: BUNDLE_FORMAT,
    created_utc: utcTimestamp(),
    origin: src.origin,
    keys: inBundle.map((e) => e.key),
    // Hardware evidence arrives with the attestation providers; the software provider has none.
    attestation: inBundle.map((e) => ({ kid: e.key.kid, provider: e.provider, evidence: null })),
    policy_artifacts: artifacts,
    checkpoints: ix.checkpoints.map((c) => c.note),
    consistency_proofs: consistency,
    inclusion_proofs: proofs,
    claims,
  };
  const entries = (async function* () {
    for await (const { entry } of src.entries(0, end)) yield entry;
  })();
  const written = await writeBundle(out, header, entries);
  return { ...written, checkpoints: ix.checkpoints.length, claims: claims.length };
}

/** Offline export from a stopped governor's data directory. */
export function exportBundle(dataDir: string, out: string): Promise<ExportSummary> {
  return withStoppedChain(dataDir, (src) => exportFromSource(src, out));
}

/** Writes a C2SP tlog-proof for one receipt against the first checkpoint that covers it. */
export function exportTlogProof(
  dataDir: string,
  seq: number,
  out: string,
): Promise<{ checkpointSize: number }> {
  return withStoppedChain(dataDir, async (src) => {
    const ix = await indexChain(src);
    if (!Number.isSafeInteger(seq) || seq < 0 || seq >= ix.tree.size) {
      throw new CmcpError("export.range", `receipt ${seq} is not in the chain (size ${ix.tree.size})`);
    }
    const cp = ix.checkpoints.find((c) => c.size > seq);
    if (!cp) throw new CmcpError("export.no-checkpoint", `no checkpoint covers receipt ${seq} yet`);
    const text = formatTlogProof({
      index: seq,
      proof: ix.tree.inclusionProof(seq, cp.size),
      checkpointNote: cp.note,
    });
    await writeFile(out, text);
    return { checkpointSize: cp.size };
  });
}
