/**
 * TRACE claims: a signed per-session (or per-call) statement of what the
 * gateway decided, tied to the audit chain by a checkpoint it is included in.
 * The verifier recomputes every number in it from the receipts.
 */
import { canonicalBytes } from "./canonical-json.js";
import { concatBytes, fromBase64, toBase64, utf8 } from "./encoding.js";
import { sha256Hex } from "./hash.js";
import { verifySignature, type Signer } from "./keys.js";
import type { Receipt } from "./receipt.js";

export const TRACE_VERSION = "1.0";
export const CLAIM_SIGNING_CONTEXT = "cmcp.trace-claim.v1\n";
const REPORT_DATA_CONTEXT = utf8("cmcp.report-data.v1\n");

export type EnforcementMode = "enforcing" | "advisory" | "silent";

export interface CallSummary {
  tool_calls_total: number;
  allowed: number;
  denied: number;
  tools_invoked: string[];
  /** Drift receipts seen in this session or for no session in particular (server identity checks). */
  drift_events: number;
}

export interface TraceClaim {
  trace_version: typeof TRACE_VERSION;
  session_id: string;
  timestamp_utc: string;
  signing_key: { kid: string; public_key: string };
  attestation_report: { provider: string; measurement: string | null; report_data: string };
  policy_bundle: {
    hash: string | null;
    enforcement_mode: EnforcementMode | null;
    policy_version: string | null;
    /** Hash of the sealed policy artifact the epoch enforces. */
    artifact_hash: string | null;
    /** True when a dev-mode gateway sealed its own artifact with a throwaway key. */
    self_sealed: boolean;
  };
  tool_catalog: { hash: string | null };
  call_summary: CallSummary;
  /** Merkle root (hex) of the chain at checkpoint.size. */
  audit_chain_root: string;
  /** Entry hash (hex) of the receipt at checkpoint.size - 1. */
  audit_chain_tip: string;
  checkpoint: { origin: string; size: number; root_hash: string };
  sig: string;
}

export type UnsignedTraceClaim = Omit<TraceClaim, "sig">;

/**
 * The value a hardware attestation report carries in its report-data field
 * to bind an epoch key; the software provider records it too, unbacked.
 */
export function reportDataForKey(publicKey: Uint8Array): string {
  return sha256Hex(REPORT_DATA_CONTEXT, publicKey);
}

export function claimSigningBytes(claim: UnsignedTraceClaim): Uint8Array {
  return concatBytes(utf8(CLAIM_SIGNING_CONTEXT), canonicalBytes(claim));
}

export function signClaim(claim: UnsignedTraceClaim, signer: Signer): TraceClaim {
  return { ...claim, sig: toBase64(signer.sign(claimSigningBytes(claim))) };
}

export function verifyClaimSignature(claim: TraceClaim, publicKey: Uint8Array): boolean {
  try {
    const { sig, ...unsigned } = claim;
    return verifySignature(publicKey, claimSigningBytes(unsigned), fromBase64(sig, 64));
  } catch {
    return false;
  }
}

const ALLOWED_OUTCOMES = new Set(["allow", "redact", "advisory"]);

/**
 * Counts one session's tool calls from its decision receipts. A tool call is
 * a `decision` receipt whose subject.method is `tools/call`; allow, redact and
 * advisory count as allowed, deny as denied, require_approval in the total
 * only (its approval receipt settles it). tools_invoked lists the allowed
 * tools, sorted.
 */
export class CallSummaryBuilder {
  readonly sessionId: string;
  #total = 0;
  #allowed = 0;
  #denied = 0;
  #drift = 0;
  readonly #tools = new Set<string>();

  constructor(sessionId: string) {
    this.sessionId = sessionId;
  }

  add(receipt: Pick<Receipt, "type" | "subject" | "decision">): void {
    if (receipt.type === "drift") {
      const s = receipt.subject.session;
      if (s === undefined || s === this.sessionId) this.#drift++;
      return;
    }
    if (receipt.type !== "decision" || receipt.subject.session !== this.sessionId) return;
    if (receipt.subject.method !== "tools/call" || !receipt.decision) return;
    this.#total++;
    const outcome = receipt.decision.outcome;
    if (ALLOWED_OUTCOMES.has(outcome)) {
      this.#allowed++;
      if (receipt.subject.tool !== undefined) this.#tools.add(receipt.subject.tool);
    } else if (outcome === "deny") {
      this.#denied++;
    }
  }

  /** `sharedDrift`: session-less drift receipts counted elsewhere (the verifier counts them once for all sessions). */
  summary(sharedDrift = 0): CallSummary {
    return {
      tool_calls_total: this.#total,
      allowed: this.#allowed,
      denied: this.#denied,
      tools_invoked: [...this.#tools].sort(),
      drift_events: this.#drift + sharedDrift,
    };
  }
}
