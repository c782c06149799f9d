/**
 * Checks one receipt in isolation: strict parse, schema, canonical entry
 * bytes, signature. Runs in worker threads for large bundles; what needs
 * order (linkage, epochs, Merkle roots) is done by the caller on the results.
 * Returns a result for every input; never throws on hostile bytes.
 */
import { Ajv2020 } from "ajv/dist/2020.js";
import { canonicalBytes } from "../canonical-json.js";
import { fromBase64 } from "../encoding.js";
import { isCmcpError } from "../errors.js";
import { sha256Hex } from "../hash.js";
import { keyId } from "../keys.js";
import { leafHash } from "../merkle.js";
import {
  verifyReceiptSignature,
  type CheckpointData,
  type EpochStartData,
  type Receipt,
  type ReceiptDecision,
  type ReceiptPolicy,
  type ReceiptSubject,
} from "../receipt.js";
import { parseJson } from "../strict-json.js";
import receiptSchema from "../schemas/receipt-v1.schema.json" with { type: "json" };

/** Per-receipt parser limits: receipts are small; anything bigger is hostile. */
export const RECEIPT_JSON_LIMITS = {
  maxBytes: 1024 * 1024,
  maxDepth: 16,
  maxStringLength: 64 * 1024,
  maxMembers: 1024,
};

const ajv = new Ajv2020({ strict: true, strictRequired: false, allErrors: false });
export const validateReceipt = ajv.compile<Receipt>(receiptSchema);

export interface ReceiptFacts {
  seq: number;
  type: Receipt["type"];
  epoch: number;
  kid: string;
  prev: string | null;
  ts: string;
  subject: ReceiptSubject;
  policy: ReceiptPolicy;
  decision: ReceiptDecision | undefined;
  epochStart: EpochStartData | undefined;
  checkpoint: CheckpointData | undefined;
  entryHash: string;
  leafHash: Uint8Array;
}

export type ReceiptCheck =
  | { index: number; ok: true; facts: ReceiptFacts }
  | { index: number; ok: false; code: string; reason: string; seq?: number };

export function checkReceipt(
  bytes: Uint8Array,
  index: number,
  keys: ReadonlyMap<string, Uint8Array>,
): ReceiptCheck {
  let value: unknown;
  try {
    value = parseJson(bytes, RECEIPT_JSON_LIMITS);
  } catch (err) {
    const reason = isCmcpError(err) ? err.message : String(err);
    return { index, ok: false, code: "receipt.json", reason: `not strict JSON: ${reason}` };
  }
  if (!validateReceipt(value)) {
    const e = validateReceipt.errors?.[0];
    const seq =
      typeof (value as { seq?: unknown })?.seq === "number" ? (value as { seq: number }).seq : undefined;
    return {
      index,
      ok: false,
      code: "receipt.schema",
      reason: `does not match receipt-v1 schema: ${e ? `${e.instancePath || "/"} ${e.message}` : "invalid"}`,
      ...(seq !== undefined ? { seq } : {}),
    };
  }
  const r = value;
  const publicKey = keys.get(r.kid);
  if (!publicKey) {
    return {
      index,
      ok: false,
      code: "receipt.unknown-key",
      reason: `signed by key ${r.kid}, which the bundle does not list`,
      seq: r.seq,
    };
  }
  let epochStart: EpochStartData | undefined;
  if (r.type === "epoch_start") {
    epochStart = r.data as unknown as EpochStartData;
    let introduced: Uint8Array;
    try {
      introduced = fromBase64(epochStart.public_key, 32);
    } catch {
      return {
        index,
        ok: false,
        code: "receipt.epoch-key",
        reason: "epoch_start public_key is not canonical base64",
        seq: r.seq,
      };
    }
    if (keyId(introduced) !== r.kid) {
      return {
        index,
        ok: false,
        code: "receipt.epoch-key",
        reason: "epoch_start public_key does not match its kid",
        seq: r.seq,
      };
    }
  }
  if (!verifyReceiptSignature(r, publicKey)) {
    return {
      index,
      ok: false,
      code: "receipt.signature",
      reason: `signature does not verify under key ${r.kid}`,
      seq: r.seq,
    };
  }
  let entry: Uint8Array;
  try {
    entry = canonicalBytes(r);
  } catch (err) {
    return {
      index,
      ok: false,
      code: "receipt.canonical",
      reason: String((err as Error).message),
      seq: r.seq,
    };
  }
  return {
    index,
    ok: true,
    facts: {
      seq: r.seq,
      type: r.type,
      epoch: r.epoch,
      kid: r.kid,
      prev: r.prev,
      ts: r.ts,
      subject: r.subject,
      policy: r.policy,
      decision: r.decision,
      epochStart,
      checkpoint: r.type === "checkpoint" ? (r.data as unknown as CheckpointData) : undefined,
      entryHash: sha256Hex(entry),
      leafHash: leafHash(entry),
    },
  };
}

/** A batch as sent to a worker: concatenated bytes plus end offsets, one transfer. */
export interface ReceiptBatch {
  firstIndex: number;
  bytes: Uint8Array;
  ends: number[];
  /** The bundle's well-formed keys by key ID (a receipt naming any other fails as unknown). */
  keys: ReadonlyMap<string, Uint8Array>;
}

export function checkBatch(batch: ReceiptBatch): ReceiptCheck[] {
  const out: ReceiptCheck[] = [];
  let start = 0;
  for (let i = 0; i < batch.ends.length; i++) {
    const end = batch.ends[i]!;
    out.push(checkReceipt(batch.bytes.subarray(start, end), batch.firstIndex + i, batch.keys));
    start = end;
  }
  return out;
}
