/**
 * C2SP tlog-proof (c2sp.org/tlog-proof), the offline inclusion proof:
 *
 *   c2sp.org/tlog-proof@v1\n
 *   [extra <base64>\n]           optional, unauthenticated
 *   index <decimal>\n
 *   [<base64 32-byte hash>\n]*   RFC 6962 audit path, leaf sibling first
 *   \n
 *   <signed checkpoint note, verbatim>
 *
 * Limits: the whole proof at most 2 MiB, the checkpoint note at most 1 MiB
 * (signed-note limit), at most 64 proof hashes, extra data at most 64 KiB.
 */
import { fromBase64, toBase64 } from "./encoding.js";
import { CmcpError } from "./errors.js";
import { openCheckpoint, parseDecimalUint64, type Checkpoint } from "./checkpoint.js";
import { HASH_SIZE, leafHash, verifyInclusion } from "./merkle.js";
import type { NoteVerifier } from "./signed-note.js";

export const TLOG_PROOF_HEADER = "c2sp.org/tlog-proof@v1";
export const MAX_TLOG_PROOF_BYTES = 2 * 1024 * 1024;
export const MAX_TLOG_PROOF_HASHES = 64;
export const MAX_TLOG_PROOF_EXTRA = 64 * 1024;

const MAX_INDEX = (1n << 64n) - 1n;

export interface TlogProof {
  index: bigint;
  /** Leaf sibling first, as in RFC 6962 section 2.1.1. */
  proof: Uint8Array[];
  checkpointNote: string;
  extra?: Uint8Array;
}

export interface TlogProofInput {
  index: bigint | number;
  proof: readonly Uint8Array[];
  checkpointNote: string;
  extra?: Uint8Array;
}

export type ParseTlogProofResult =
  { ok: true; tlogProof: TlogProof } | { ok: false; code: string; reason: string };

export type VerifyTlogProofResult =
  | { ok: true; index: bigint; checkpoint: Checkpoint; verifiedBy: string[]; extra?: Uint8Array }
  | { ok: false; code: string; reason: string };

/** Formats a proof. Throws CmcpError on values that cannot be encoded. */
export function formatTlogProof(input: TlogProofInput): string {
  const index =
    typeof input.index === "number" && Number.isSafeInteger(input.index) ? BigInt(input.index) : input.index;
  if (typeof index !== "bigint" || index < 0n || index > MAX_INDEX) {
    throw new CmcpError("tlog_proof.index", "index must be an integer in [0, 2^64-1]");
  }
  if (input.proof.length > MAX_TLOG_PROOF_HASHES) {
    throw new CmcpError("tlog_proof.proof_length", `at most ${MAX_TLOG_PROOF_HASHES} proof hashes`);
  }
  for (const h of input.proof) {
    if (!(h instanceof Uint8Array) || h.length !== HASH_SIZE) {
      throw new CmcpError("tlog_proof.hash", "proof hashes must be 32 bytes");
    }
  }
  const note = input.checkpointNote;
  if (typeof note !== "string" || !note.endsWith("\n") || note.startsWith("\n")) {
    throw new CmcpError("tlog_proof.checkpoint", "checkpoint must be a signed note ending in a newline");
  }
  if (input.extra !== undefined && input.extra.length > MAX_TLOG_PROOF_EXTRA) {
    throw new CmcpError("tlog_proof.extra", `extra data exceeds ${MAX_TLOG_PROOF_EXTRA} bytes`);
  }
  const lines = [TLOG_PROOF_HEADER];
  if (input.extra !== undefined) lines.push(`extra ${toBase64(input.extra)}`);
  lines.push(`index ${index.toString()}`);
  for (const h of input.proof) lines.push(toBase64(h));
  return lines.join("\n") + "\n\n" + note;
}

/** Parses the proof layout; the checkpoint note is returned unverified. Never throws. */
export function parseTlogProof(text: string): ParseTlogProofResult {
  const fail = (code: string, reason: string): ParseTlogProofResult => ({ ok: false, code, reason });
  if (typeof text !== "string") return fail("tlog_proof.malformed", "proof must be a string");
  if (text.length > MAX_TLOG_PROOF_BYTES || Buffer.byteLength(text, "utf8") > MAX_TLOG_PROOF_BYTES) {
    return fail("tlog_proof.too_large", `proof exceeds ${MAX_TLOG_PROOF_BYTES} bytes`);
  }
  // Header and proof lines are non-empty, so the first blank line ends them.
  const split = text.indexOf("\n\n");
  if (split < 0) return fail("tlog_proof.malformed", "proof has no blank line before the checkpoint");
  const lines = text.slice(0, split).split("\n");
  const checkpointNote = text.slice(split + 2);
  if (checkpointNote.length === 0) return fail("tlog_proof.checkpoint", "proof has no checkpoint");

  let i = 0;
  if (lines[i++] !== TLOG_PROOF_HEADER) {
    return fail("tlog_proof.header", `first line must be ${TLOG_PROOF_HEADER}`);
  }
  let extra: Uint8Array | undefined;
  const maybeExtra = lines[i];
  if (maybeExtra !== undefined && maybeExtra.startsWith("extra ")) {
    try {
      extra = fromBase64(maybeExtra.slice("extra ".length));
    } catch {
      return fail("tlog_proof.extra", "extra data is not canonical base64");
    }
    if (extra.length > MAX_TLOG_PROOF_EXTRA) {
      return fail("tlog_proof.extra", `extra data exceeds ${MAX_TLOG_PROOF_EXTRA} bytes`);
    }
    i++;
  }
  const indexLine = lines[i++];
  if (indexLine === undefined || !indexLine.startsWith("index ")) {
    return fail("tlog_proof.index", "expected an index line");
  }
  const index = parseDecimalUint64(indexLine.slice("index ".length));
  if (index === undefined) {
    return fail("tlog_proof.index", "index must be decimal without sign or leading zeroes, below 2^64");
  }
  const hashLines = lines.slice(i);
  if (hashLines.length > MAX_TLOG_PROOF_HASHES) {
    return fail("tlog_proof.proof_length", `more than ${MAX_TLOG_PROOF_HASHES} proof hashes`);
  }
  const proof: Uint8Array[] = [];
  for (const line of hashLines) {
    try {
      proof.push(fromBase64(line, HASH_SIZE));
    } catch {
      return fail("tlog_proof.hash", "proof lines must be canonical base64 of 32 bytes");
    }
  }
  const tlogProof: TlogProof = { index, proof, checkpointNote };
  if (extra !== undefined) tlogProof.extra = extra;
  return { ok: true, tlogProof };
}

/**
 * Verifies a proof for `entry`: layout, checkpoint signatures (openNote rules
 * against `verifiers`), checkpoint body and origin, then inclusion of
 * leafHash(entry) at the index under the checkpoint's root. Codes come from
 * the step that failed: tlog_proof.*, note.*, checkpoint.*, merkle.*.
 * Never throws. The extra data is returned but not authenticated.
 */
export function verifyTlogProof(
  text: string,
  entry: Uint8Array,
  verifiers: readonly NoteVerifier[],
  expectedOrigin?: string,
): VerifyTlogProofResult {
  try {
    const parsed = parseTlogProof(text);
    if (!parsed.ok) return parsed;
    const { index, proof, checkpointNote, extra } = parsed.tlogProof;
    const opened = openCheckpoint(checkpointNote, verifiers, expectedOrigin);
    if (!opened.ok) return opened;
    if (!(entry instanceof Uint8Array)) {
      return { ok: false, code: "tlog_proof.entry", reason: "entry must be bytes" };
    }
    const included = verifyInclusion({
      index,
      size: opened.checkpoint.size,
      leafHash: leafHash(entry),
      proof,
      root: opened.checkpoint.rootHash,
    });
    if (!included.ok) return included;
    const result: VerifyTlogProofResult = {
      ok: true,
      index,
      checkpoint: opened.checkpoint,
      verifiedBy: opened.verifiedBy,
    };
    if (extra !== undefined) result.extra = extra;
    return result;
  } catch (err) {
    return { ok: false, code: "tlog_proof.invalid_input", reason: `proof could not be read: ${String(err)}` };
  }
}
