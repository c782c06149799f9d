/**
 * Offline export of an evidence bundle (and single C2SP tlog-proofs) from a
 * governor's data directory. Needs no key: everything exported was signed
 * when it was written. Refuses while a live governor holds the directory.
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
import type { EpochStartData, Receipt } from "../artifacts/receipt.js";
import { parseJson } from "../artifacts/strict-json.js";
import { formatTlogProof } from "../artifacts/tlog-proof.js";
import { utcTimestamp } from "../artifacts/receipt.js";
import { ChainStore } from "./chain-store.js";
import { acquireDataDirLock } from "./data-dir-lock.js";
import { listCheckpoints, listClaims, readLogInfo, type StoredCheckpoint } from "./receipt-chain.js";

interface ChainIndex {
  store: ChainStore;
  release(): Promise<void>;
  origin: string;
  tree: MerkleTree;
  keys: BundleKey[];
  epochStarts: number[];
  providers: string[];
  checkpoints: StoredCheckpoint[];
}

async function indexChain(dataDir: string): Promise<ChainIndex> {
  const { origin } = await readLogInfo(dataDir);
  // Hold the governor's lock for the whole export: opening the store may repair its tail.
  let unlock: () => Promise<void>;
  try {
    unlock = await acquireDataDirLock(dataDir);
  } catch (err) {
    if (!isCmcpError(err, "chain.locked")) throw err;
    throw new CmcpError(
      "export.locked",
      `${err.message}; stop the governor first (live export arrives with the admin interface)`,
    );
  }
  let store: ChainStore;
  try {
    store = await ChainStore.open({ dir: join(dataDir, "chain") });
  } catch (err) {
    await unlock();
    throw err;
  }
  const release = async () => {
    await store.close();
    await unlock();
  };
  const tree = new MerkleTree();
  const keys: BundleKey[] = [];
  const epochStarts: number[] = [];
  const providers: string[] = [];
  let checkpoints: StoredCheckpoint[];
  try {
    for await (const { seq, entry } of store.entries()) {
      tree.append(leafHash(entry));
      const r = parseJson(entry) as Receipt;
      if (r.type === "epoch_start") {
        const data = r.data as unknown as EpochStartData;
        keys.push({ kid: r.kid, public_key: data.public_key });
        providers.push(data.provider);
        epochStarts.push(seq);
      }
    }
    checkpoints = await listCheckpoints(dataDir, store.durableSize);
  } catch (err) {
    await release();
    throw err;
  }
  return { store, release, origin, tree, keys, epochStarts, providers, checkpoints };
}

function coveringCheckpoint(checkpoints: StoredCheckpoint[], seq: number): StoredCheckpoint | undefined {
  return checkpoints.find((c) => c.size > seq);
}

export async function exportBundle(
  dataDir: string,
  out: string,
): Promise<{ receipts: number; bytes: number; checkpoints: number; claims: number }> {
  const ix = await indexChain(dataDir);
  try {
    // The bundle ends at its last checkpoint: receipts no checkpoint covers could be dropped undetected.
    const end = ix.checkpoints[ix.checkpoints.length - 1]?.size ?? 0;
    const inBundle = ix.epochStarts
      .map((seq, i) => [seq, ix.keys[i]!, ix.providers[i]!] as const)
      .filter(([seq]) => seq < end);
    const keys = inBundle.map(([, k]) => k);
    const claims = (await listClaims(dataDir)).filter((c) => c.checkpoint.size <= end);
    const proofs: InclusionProof[] = [];
    const wanted = new Set<number>([
      ...inBundle.map(([seq]) => seq),
      ...claims.map((c) => c.checkpoint.size - 1),
    ]);
    for (const seq of [...wanted].sort((a, b) => a - b)) {
      const cp = coveringCheckpoint(ix.checkpoints, seq);
      if (!cp) continue;
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
      origin: ix.origin,
      keys,
      // Hardware evidence arrives with the attestation providers; the software provider has none.
      attestation: inBundle.map(([, k, provider]) => ({ kid: k.kid, provider, evidence: null })),
      policy_artifact: null,
      checkpoints: ix.checkpoints.map((c) => c.note),
      consistency_proofs: consistency,
      inclusion_proofs: proofs,
      claims,
    };

    const entries = (async function* () {
      for await (const { entry } of ix.store.entries(0, end)) yield entry;
    })();
    const written = await writeBundle(out, header, entries);
    return { ...written, checkpoints: ix.checkpoints.length, claims: claims.length };
  } finally {
    await ix.release();
  }
}

/** Writes a C2SP tlog-proof for one receipt against the first checkpoint that covers it. */
export async function exportTlogProof(
  dataDir: string,
  seq: number,
  out: string,
): Promise<{ checkpointSize: number }> {
  const ix = await indexChain(dataDir);
  try {
    if (!Number.isSafeInteger(seq) || seq < 0 || seq >= ix.tree.size) {
      throw new CmcpError("export.range", `receipt ${seq} is not in the chain (size ${ix.tree.size})`);
    }
    const cp = coveringCheckpoint(ix.checkpoints, seq);
    if (!cp) throw new CmcpError("export.no-checkpoint", `no checkpoint covers receipt ${seq} yet`);
    const text = formatTlogProof({
      index: seq,
      proof: ix.tree.inclusionProof(seq, cp.size),
      checkpointNote: cp.note,
    });
    await writeFile(out, text);
    return { checkpointSize: cp.size };
  } finally {
    await ix.release();
  }
}
