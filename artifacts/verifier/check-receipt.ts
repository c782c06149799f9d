/**
 * Checks one receipt in isolation: strict parse, schema, canonical entry
 * bytes, signature, and the approver's statement an approval receipt
 * records. Runs in worker threads for large bundles; what needs
 * order (linkage, epochs, Merkle roots) is done by the caller on the results.
 * Returns a result for every input; never throws on hostile bytes.
 */
import { Ajv2020 } from "ajv/dist/2020.js";
import {
  approvalExpiry,
  bindingDifference,
  validateApprovalStatement,
  approvalSignatureProblem,
} from "../approval.js";
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
  /** For an approval receipt: whether the answer it records holds up (plain data: crosses workers). */
  approval: ApprovalFact | undefined;
  entryHash: string;
  leafHash: Uint8Array;
}

/** An approver's answer checked (`kid` is null for a timeout or shutdown), or why it does not hold. */
export type ApprovalFact =
  | { ok: true; decision: "approve" | "deny" | "timeout" | "shutdown"; kid: string | null }
  | { ok: false; reason: string };

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
      approval: r.type === "approval" ? checkApprovalReceipt(r) : undefined,
      entryHash: sha256Hex(entry),
      leafHash: leafHash(entry),
    },
  };
}

/**
 * What an approval receipt records against the approver's signed statement:
 * an answer must carry one that verifies under its own key and binds exactly
 * this receipt's call and answer, unexpired when recorded; a timeout or
 * shutdown carries none. Which keys may approve is the caller's question.
 */
export function checkApprovalReceipt(r: Receipt): ApprovalFact {
  const fail = (reason: string): ApprovalFact => ({ ok: false, reason });
  const { approval_id, decision, approver, statement } = r.data ?? {};
  if (typeof approval_id !== "string" || !/^[0-9a-f]{32}$/.test(approval_id))
    return fail("the approval receipt names no approval_id (32 hex digits)");
  if (decision === "timeout" || decision === "shutdown") {
    if (statement !== null)
      return fail(`a ${decision} must record no approver statement ("statement": null)`);
    if (approver !== null) return fail(`a ${decision} must name no approver ("approver": null)`);
    return { ok: true, decision, kid: null };
  }
  if (decision !== "approve" && decision !== "deny")
    return fail(
      `decision ${JSON.stringify(decision)?.slice(0, 40)} is not approve, deny, timeout or shutdown`,
    );
  const answer = decision === "approve" ? "an approval" : "a denial";
  if (typeof approver !== "string" || approver === "") return fail(`${answer} must name its approver`);
  if (statement === null || statement === undefined)
    return fail(`${answer} is recorded without the approver's signed statement`);
  if (!validateApprovalStatement(statement)) {
    const e = validateApprovalStatement.errors?.[0];
    return fail(
      `the recorded statement is not an approval statement: ${e?.instancePath || "/"} ${e?.message}`,
    );
  }
  const s = statement;
  const problem = approvalSignatureProblem(s);
  if (problem === "kid")
    return fail(`the statement's public key is not its kid ${s.approver.kid.slice(0, 16)}…`);
  if (problem === "signature")
    return fail(`the statement's signature does not verify under its key ${s.approver.kid.slice(0, 16)}…`);
  if (s.decision !== decision)
    return fail(`the receipt records "${decision}" but the signed statement says "${s.decision}"`);
  const differs = bindingDifference(s, {
    approval_id,
    session: r.subject.session,
    request_id: r.subject.request_id,
    server: r.subject.server,
    method: r.subject.method,
    target: r.subject.tool ?? r.subject.resource ?? r.subject.prompt ?? r.subject.method,
    arguments_hash: r.hashes?.arguments,
  });
  if (differs) return fail(`the signed statement is for another call (${differs} differs from the receipt)`);
  // Valid when recorded: the governor must not accept a statement after it expires.
  const expires = approvalExpiry(s.expires);
  if (Number.isNaN(expires)) return fail(`the statement's expiry ${s.expires} is not a real date`);
  if (!(Date.parse(r.ts) < expires))
    return fail(`the statement expired at ${s.expires}, not after the receipt's time ${r.ts}`);
  return { ok: true, decision, kid: s.approver.kid };
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
