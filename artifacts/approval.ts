/**
 * Signed approval statements: a person's answer to a call the policy held for
 * approval. The approver signs with their own Ed25519 key (the governor never
 * holds it); the statement binds the pending approval's ID, the session, the
 * request ID, the tool, the hash of the canonical arguments and an expiry, so
 * it cannot approve any other call, and the governor accepts each approval ID
 * once. The governor records the statement in an `approval` receipt.
 *
 * Signature: Ed25519 over "cmcp.approval.v1\n" ‖ JCS(statement without sig).
 */
import { Ajv2020 } from "ajv/dist/2020.js";
import { canonicalBytes } from "./canonical-json.js";
import { concatBytes, fromBase64, toBase64, utf8 } from "./encoding.js";
import { keyId, verifySignature, type Signer } from "./keys.js";

export const APPROVAL_FORMAT = "cmcp.approval.v1";
export const APPROVAL_SIGNING_CONTEXT = "cmcp.approval.v1\n";

/** What a pending approval binds; the statement repeats it exactly. */
export interface ApprovalBinding {
  approval_id: string;
  session: string;
  request_id: string;
  server: string;
  /** The tool, resource or prompt the call targets (the method when none). */
  target: string;
  method: string;
  arguments_hash: string;
}

export interface ApprovalStatement extends ApprovalBinding {
  format: typeof APPROVAL_FORMAT;
  decision: "approve" | "deny";
  reason: string | null;
  /** RFC 3339 UTC: the statement is refused after this. */
  expires: string;
  approver: { kid: string; public_key: string };
  sig: string;
}

const hash = { type: "string", pattern: "^[0-9a-f]{64}$" } as const;
const label = { type: "string", minLength: 1, maxLength: 1024 } as const;

/** What a statement binds: the schema requires them, and checks compare exactly these. */
const BINDING_FIELDS = [
  "approval_id",
  "session",
  "request_id",
  "server",
  "target",
  "method",
  "arguments_hash",
] as const satisfies readonly (keyof ApprovalBinding)[];

const ajv = new Ajv2020({ strict: true, strictRequired: false });
export const validateApprovalStatement = ajv.compile<ApprovalStatement>({
  type: "object",
  additionalProperties: false,
  required: ["format", "decision", ...BINDING_FIELDS, "reason", "expires", "approver", "sig"],
  properties: {
    format: { const: APPROVAL_FORMAT },
    decision: { enum: ["approve", "deny"] },
    approval_id: { type: "string", pattern: "^[0-9a-f]{32}$" },
    session: label,
    request_id: label,
    server: label,
    target: label,
    method: label,
    arguments_hash: hash,
    reason: { oneOf: [{ type: "string", maxLength: 2048 }, { type: "null" }] },
    expires: { type: "string", pattern: "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$" },
    approver: {
      type: "object",
      additionalProperties: false,
      required: ["kid", "public_key"],
      properties: { kid: hash, public_key: { type: "string", pattern: "^[A-Za-z0-9+/]{43}=$" } },
    },
    sig: { type: "string", pattern: "^[A-Za-z0-9+/]{86}==$" },
  },
});

export function approvalSigningBytes(statement: Omit<ApprovalStatement, "sig">): Uint8Array {
  return concatBytes(utf8(APPROVAL_SIGNING_CONTEXT), canonicalBytes(statement));
}

export function signApproval(
  binding: ApprovalBinding,
  answer: { decision: "approve" | "deny"; reason: string | null; expires: string },
  approver: Signer,
): ApprovalStatement {
  const unsigned: Omit<ApprovalStatement, "sig"> = {
    format: APPROVAL_FORMAT,
    ...answer,
    ...binding,
    approver: { kid: approver.keyId, public_key: toBase64(approver.publicKey) },
  };
  return { ...unsigned, sig: toBase64(approver.sign(approvalSigningBytes(unsigned))) };
}

export type ApprovalCheck =
  { ok: true; statement: ApprovalStatement; approver: string } | { ok: false; reason: string };

/**
 * What is wrong with the statement's signature: its embedded key is not its
 * kid ("kid"), or the signature does not verify under it ("signature"); null
 * when both hold. Whether that key may approve is the caller's question.
 * Never throws.
 */
export function approvalSignatureProblem(s: ApprovalStatement): "kid" | "signature" | null {
  let publicKey: Uint8Array;
  try {
    publicKey = fromBase64(s.approver.public_key, 32);
  } catch {
    return "kid";
  }
  if (keyId(publicKey) !== s.approver.kid) return "kid";
  try {
    const { sig, ...unsigned } = s;
    return verifySignature(publicKey, approvalSigningBytes(unsigned), fromBase64(sig, 64))
      ? null
      : "signature";
  } catch {
    return "signature";
  }
}

/** The first bound field in which the statement differs from `binding`, or null. */
export function bindingDifference(
  s: ApprovalStatement,
  binding: Readonly<Record<keyof ApprovalBinding, string | undefined>>,
): keyof ApprovalBinding | null {
  return BINDING_FIELDS.find((k) => s[k] !== binding[k]) ?? null;
}

/**
 * An expiry in milliseconds, or NaN when the text names no real instant:
 * Date.parse admits month 13 as NaN but rolls 30 February over to March.
 */
export function approvalExpiry(expires: string): number {
  const t = Date.parse(expires);
  return Number.isFinite(t) && new Date(t).toISOString() === expires.replace(/Z$/, ".000Z") ? t : NaN;
}

/**
 * Checks a statement against the pending binding and the configured
 * approvers (name by key ID). A result, never a throw.
 */
export function checkApproval(
  value: unknown,
  binding: ApprovalBinding,
  approvers: ReadonlyMap<string, { name: string; publicKey: Uint8Array }>,
  now: Date,
): ApprovalCheck {
  if (!validateApprovalStatement(value)) {
    const e = validateApprovalStatement.errors?.[0];
    return { ok: false, reason: `not an approval statement: ${e?.instancePath || "/"} ${e?.message}` };
  }
  const s = value;
  const approver = approvers.get(s.approver.kid);
  if (!approver)
    return { ok: false, reason: `key ${s.approver.kid.slice(0, 16)}… is not a configured approver` };
  if (toBase64(approver.publicKey) !== s.approver.public_key || approvalSignatureProblem(s) !== null)
    return { ok: false, reason: "the signature does not verify against the configured approver key" };
  const differs = bindingDifference(s, binding);
  if (differs) return { ok: false, reason: `the statement is for another call (${differs} differs)` };
  // An expiry that is no date counts as expired, never as "never".
  if (!(now.getTime() < approvalExpiry(s.expires)))
    return { ok: false, reason: `the statement expired at ${s.expires}` };
  return { ok: true, statement: s, approver: approver.name };
}
