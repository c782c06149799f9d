/**
 * The evidence bundle: one self-contained JSON file an auditor verifies
 * offline. `receipts` comes last and is written as a stream of entry bytes,
 * so bundles of hundreds of MB are produced and read without holding every
 * receipt in memory.
 */
import { open } from "node:fs/promises";
import { canonicalize } from "./canonical-json.js";
import type { PolicyArtifact } from "./policy-artifact.js";
import type { TraceClaim } from "./trace-claim.js";

export const BUNDLE_FORMAT = "cmcp.evidence-bundle.v1";

export interface BundleKey {
  kid: string;
  /** Base64 of the raw 32-byte Ed25519 public key. */
  public_key: string;
}

/** Hardware (or software) evidence binding an epoch key; checked by the attestation issue's verifiers. */
export interface AttestationEvidence {
  kid: string;
  provider: string;
  evidence: unknown;
}

export interface InclusionProof {
  seq: number;
  checkpoint_size: number;
  /** Base64 sibling hashes, leaf to root (RFC 9162). */
  proof: string[];
}

export interface ConsistencyProof {
  old_size: number;
  new_size: number;
  proof: string[];
}

/** Everything but the receipts. */
export interface BundleHeader {
  format: typeof BUNDLE_FORMAT;
  created_utc: string;
  /** Checkpoint origin line of the log the receipts belong to. */
  origin: string;
  keys: BundleKey[];
  attestation: AttestationEvidence[];
  /** The sealed policy artifacts named by the epochs in the bundle. */
  policy_artifacts: PolicyArtifact[];
  /** C2SP signed notes of tlog-checkpoints, ascending by size. */
  checkpoints: string[];
  consistency_proofs: ConsistencyProof[];
  inclusion_proofs: InclusionProof[];
  claims: TraceClaim[];
}

export const BUNDLE_HEADER_FIELDS = [
  "format",
  "created_utc",
  "origin",
  "keys",
  "attestation",
  "policy_artifacts",
  "checkpoints",
  "consistency_proofs",
  "inclusion_proofs",
  "claims",
] as const;

/**
 * Writes a bundle: the header fields in canonical form, then `receipts` as
 * the raw entry bytes (already RFC 8785 canonical) in chain order. The file
 * is fsynced before the promise resolves.
 */
export async function writeBundle(
  path: string,
  header: BundleHeader,
  entries: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
): Promise<{ receipts: number; bytes: number }> {
  const fh = await open(path, "w", 0o644);
  let bytes = 0;
  let receipts = 0;
  let buffered: Buffer[] = [];
  let bufferedBytes = 0;
  const flush = async () => {
    if (bufferedBytes === 0) return;
    const chunk = Buffer.concat(buffered, bufferedBytes);
    buffered = [];
    bufferedBytes = 0;
    await fh.write(chunk);
    bytes += chunk.length;
  };
  const push = async (b: Uint8Array | string) => {
    const buf =
      typeof b === "string" ? Buffer.from(b, "utf8") : Buffer.from(b.buffer, b.byteOffset, b.byteLength);
    buffered.push(buf);
    bufferedBytes += buf.length;
    if (bufferedBytes >= 1 << 20) await flush();
  };
  try {
    const head = canonicalize(header);
    await push(head.slice(0, -1) + ',"receipts":[');
    for await (const entry of entries) {
      if (receipts > 0) await push(",");
      await push(entry);
      receipts++;
    }
    await push("]}\n");
    await flush();
    await fh.sync();
  } finally {
    await fh.close();
  }
  return { receipts, bytes };
}
