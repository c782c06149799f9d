/**
 * C2SP tlog-checkpoint (c2sp.org/tlog-checkpoint): the note text
 *
 *   <origin>\n<decimal tree size>\n<base64 root hash>\n[<extension line>\n]*
 *
 * signed as a C2SP signed note. Tree sizes are bigint so every uint64 size
 * is exact; sizes above 2^64-1 are rejected (RFC 9162 sizes are uint64).
 * Limits: the text is at most 1 MiB (the signed-note limit) and at most 100
 * extension lines.
 */
import { fromBase64, toBase64 } from "./encoding.js";
import { CmcpError } from "./errors.js";
import { HASH_SIZE } from "./merkle.js";
import { MAX_NOTE_BYTES, openNote, signNote, type NoteSigner, type NoteVerifier } from "./signed-note.js";

export const MAX_CHECKPOINT_EXTENSIONS = 100;

const MAX_SIZE = (1n << 64n) - 1n;
const DECIMAL = /^(0|[1-9][0-9]{0,19})$/;
// eslint-disable-next-line no-control-regex
const BAD_LINE = /[\u0000-\u001f\ud800-\udfff]/u;

export interface Checkpoint {
  origin: string;
  size: bigint;
  rootHash: Uint8Array;
  extensions: string[];
}

export interface CheckpointInput {
  origin: string;
  size: bigint | number;
  rootHash: Uint8Array;
  extensions?: readonly string[];
}

export type ParseCheckpointResult =
  { ok: true; checkpoint: Checkpoint } | { ok: false; code: string; reason: string };

export type OpenCheckpointResult =
  | { ok: true; checkpoint: Checkpoint; text: string; verifiedBy: string[] }
  | { ok: false; code: string; reason: string };

/** Parses an ASCII decimal uint64 with no sign and no leading zeroes. */
export function parseDecimalUint64(text: string): bigint | undefined {
  if (!DECIMAL.test(text)) return undefined;
  const n = BigInt(text);
  return n <= MAX_SIZE ? n : undefined;
}

function lineProblem(line: string): boolean {
  return typeof line !== "string" || line.length === 0 || BAD_LINE.test(line);
}

/** Formats the checkpoint note text. Throws CmcpError on values that cannot be encoded. */
export function formatCheckpoint(cp: CheckpointInput): string {
  if (lineProblem(cp.origin)) {
    throw new CmcpError("checkpoint.origin", "origin must be a non-empty single line");
  }
  const size = typeof cp.size === "number" && Number.isSafeInteger(cp.size) ? BigInt(cp.size) : cp.size;
  if (typeof size !== "bigint" || size < 0n || size > MAX_SIZE) {
    throw new CmcpError("checkpoint.size", "tree size must be an integer in [0, 2^64-1]");
  }
  if (!(cp.rootHash instanceof Uint8Array) || cp.rootHash.length !== HASH_SIZE) {
    throw new CmcpError("checkpoint.root_hash", "root hash must be 32 bytes");
  }
  const extensions = cp.extensions ?? [];
  if (extensions.length > MAX_CHECKPOINT_EXTENSIONS) {
    throw new CmcpError("checkpoint.extension", `at most ${MAX_CHECKPOINT_EXTENSIONS} extension lines`);
  }
  for (const ext of extensions) {
    if (lineProblem(ext)) {
      throw new CmcpError("checkpoint.extension", "extension lines must be non-empty single lines");
    }
  }
  const text = [cp.origin, size.toString(), toBase64(cp.rootHash), ...extensions].join("\n") + "\n";
  if (Buffer.byteLength(text, "utf8") > MAX_NOTE_BYTES) {
    throw new CmcpError("checkpoint.too_large", `checkpoint exceeds ${MAX_NOTE_BYTES} bytes`);
  }
  return text;
}

/** Parses checkpoint note text (not the signed note). Never throws. */
export function parseCheckpoint(text: string): ParseCheckpointResult {
  const fail = (code: string, reason: string): ParseCheckpointResult => ({ ok: false, code, reason });
  if (typeof text !== "string") return fail("checkpoint.malformed", "checkpoint must be a string");
  if (text.length > MAX_NOTE_BYTES || Buffer.byteLength(text, "utf8") > MAX_NOTE_BYTES) {
    return fail("checkpoint.too_large", `checkpoint exceeds ${MAX_NOTE_BYTES} bytes`);
  }
  if (!text.endsWith("\n")) return fail("checkpoint.malformed", "checkpoint text must end in a newline");
  const lines = text.slice(0, -1).split("\n");
  if (lines.length < 3) {
    return fail("checkpoint.malformed", "checkpoint needs origin, size and root hash lines");
  }
  if (lines.length - 3 > MAX_CHECKPOINT_EXTENSIONS) {
    return fail("checkpoint.extension", `more than ${MAX_CHECKPOINT_EXTENSIONS} extension lines`);
  }
  const [origin, sizeLine, rootLine, ...extensions] = lines as [string, string, string, ...string[]];
  if (lineProblem(origin)) return fail("checkpoint.origin", "origin line is empty or has control characters");
  const size = parseDecimalUint64(sizeLine);
  if (size === undefined) {
    return fail("checkpoint.size", "tree size must be decimal without sign or leading zeroes, below 2^64");
  }
  let rootHash: Uint8Array;
  try {
    rootHash = fromBase64(rootLine, HASH_SIZE);
  } catch {
    return fail("checkpoint.root_hash", "root hash must be canonical base64 of 32 bytes");
  }
  for (const ext of extensions) {
    if (lineProblem(ext)) return fail("checkpoint.extension", "extension lines must be non-empty");
  }
  return { ok: true, checkpoint: { origin, size, rootHash, extensions } };
}

/** Formats and signs a checkpoint. The log's key name SHOULD equal the origin (spec). */
export function signCheckpoint(cp: CheckpointInput, signers: readonly NoteSigner[]): string {
  return signNote(formatCheckpoint(cp), signers);
}

/**
 * Opens a signed checkpoint note: signature rules from openNote, then the
 * checkpoint body, then the origin when `expectedOrigin` is given. Which key
 * must have signed is the caller's policy, expressed by `verifiers`.
 */
export function openCheckpoint(
  noteText: string,
  verifiers: readonly NoteVerifier[],
  expectedOrigin?: string,
): OpenCheckpointResult {
  const opened = openNote(noteText, verifiers);
  if (!opened.ok) return opened;
  const parsed = parseCheckpoint(opened.text);
  if (!parsed.ok) return parsed;
  if (expectedOrigin !== undefined && parsed.checkpoint.origin !== expectedOrigin) {
    return {
      ok: false,
      code: "checkpoint.origin_mismatch",
      reason: `checkpoint origin ${JSON.stringify(parsed.checkpoint.origin)} is not the expected origin`,
    };
  }
  return { ok: true, checkpoint: parsed.checkpoint, text: opened.text, verifiedBy: opened.verifiedBy };
}
