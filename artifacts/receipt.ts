/**
 * Receipts: one signed, JCS-canonical record per governance event. A receipt
 * holds hashes of payloads, never payloads, so its JCS bytes are its log
 * entry: `prev` chains entries by SHA-256 and the Merkle leaf is
 * SHA-256(0x00 ‖ entry).
 */
import { canonicalBytes } from "./canonical-json.js";
import { concatBytes, fromBase64, toBase64, utf8 } from "./encoding.js";
import { sha256Hex } from "./hash.js";
import { verifySignature, type Signer } from "./keys.js";

export const RECEIPT_VERSION = 1;

/** Domain separation: a receipt signature can never be replayed as a claim or note signature. */
export const RECEIPT_SIGNING_CONTEXT = "cmcp.receipt.v1\n";

export const RECEIPT_TYPES = [
  "epoch_start",
  "decision",
  "response_inspection",
  "measurement",
  "drift",
  "enforcement",
  "quarantine_capture",
  "approval",
  "delegation",
  "checkpoint",
] as const;
export type ReceiptType = (typeof RECEIPT_TYPES)[number];

export const DECISION_OUTCOMES = ["allow", "deny", "redact", "require_approval", "advisory"] as const;
export type DecisionOutcome = (typeof DECISION_OUTCOMES)[number];

export interface ReceiptSubject {
  session?: string;
  agent?: string;
  workflow?: string;
  server?: string;
  tool?: string;
  resource?: string;
  prompt?: string;
  method?: string;
  request_id?: string;
}

export interface ReceiptDecision {
  outcome: DecisionOutcome;
  reasons: string[];
  policy_ids: string[];
}

export interface ReceiptPolicy {
  bundle_hash: string | null;
  catalog_hash: string | null;
}

/** Everything the signature covers. */
export interface UnsignedReceipt {
  v: typeof RECEIPT_VERSION;
  type: ReceiptType;
  seq: number;
  ts: string;
  epoch: number;
  prev: string | null;
  kid: string;
  subject: ReceiptSubject;
  policy: ReceiptPolicy;
  decision?: ReceiptDecision;
  /** SHA-256 (hex) of the canonical JSON of payloads that crossed the gateway. */
  hashes?: { arguments?: string; response?: string };
  /** Salted commitments (hex) to values that must be provable without being revealed. */
  commitments?: Record<string, string>;
  /** Type-specific fields (epoch_start: public key and previous epoch; checkpoint: size and root). */
  data?: Record<string, unknown>;
}

export interface Receipt extends UnsignedReceipt {
  /** Base64 Ed25519 signature over RECEIPT_SIGNING_CONTEXT ‖ JCS(receipt without sig). */
  sig: string;
}

export interface EpochStartData {
  public_key: string;
  provider: string;
  /** The sealed policy artifact this epoch enforces (null: none, e.g. a bare chain in tests). */
  policy_artifact: null | { hash: string; self_sealed: boolean };
  previous: null | {
    kid: string;
    epoch: number;
    tip_seq: number;
    tip_hash: string;
    checkpoint: null | { size: number; root_hash: string };
  };
}

export interface CheckpointData {
  origin: string;
  size: number;
  root_hash: string;
}

export function receiptSigningBytes(unsigned: UnsignedReceipt): Uint8Array {
  return concatBytes(utf8(RECEIPT_SIGNING_CONTEXT), canonicalBytes(unsigned));
}

export interface SignedEntry {
  receipt: Receipt;
  /** JCS bytes of the signed receipt: the log entry. */
  entry: Uint8Array;
  /** SHA-256 (hex) of the entry: what the next receipt names as `prev`. */
  entryHash: string;
}

export function signReceipt(unsigned: UnsignedReceipt, signer: Signer): SignedEntry {
  const sig = toBase64(signer.sign(receiptSigningBytes(unsigned)));
  const receipt: Receipt = { ...unsigned, sig };
  const entry = canonicalBytes(receipt);
  return { receipt, entry, entryHash: sha256Hex(entry) };
}

/** Checks the signature only; structure is the schema's job. Never throws. */
export function verifyReceiptSignature(receipt: Receipt, publicKey: Uint8Array): boolean {
  try {
    const { sig, ...unsigned } = receipt;
    const sigBytes = fromBase64(sig, 64);
    return verifySignature(publicKey, receiptSigningBytes(unsigned as UnsignedReceipt), sigBytes);
  } catch {
    return false;
  }
}

/** SHA-256 (hex) of a payload's canonical JSON: what receipts carry instead of the payload. */
export function payloadHash(value: unknown): string {
  return sha256Hex(canonicalBytes(value));
}

const COMMITMENT_CONTEXT = utf8("cmcp.commitment.v1\n");

/**
 * Salted commitment to a value: revealing (salt, value) later proves the
 * receipt committed to it, while the receipt alone reveals nothing guessable.
 */
export function commitment(value: unknown, salt: Uint8Array): string {
  return sha256Hex(COMMITMENT_CONTEXT, salt, canonicalBytes(value));
}

/** UTC timestamp with millisecond precision, the only form receipts and claims use. */
export function utcTimestamp(date: Date = new Date()): string {
  return date.toISOString();
}
