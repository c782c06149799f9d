/**
 * Calls held for approval. A `require_approval` decision in enforcing mode
 * opens an entry; the runtime holds the agent's request and waits on it; an
 * approver answers with a signed statement through the admin socket (or no
 * one does, and the hold deadline denies it). Every settlement is recorded as
 * an `approval` receipt before the waiting call learns of it, and an entry is
 * settled once: a statement cannot be replayed for another call or for an
 * identical later one, which gets its own approval ID.
 */
import { randomBytes } from "node:crypto";
import { checkApproval, type ApprovalBinding, type ApprovalStatement } from "../artifacts/approval.js";
import { CmcpError } from "../artifacts/errors.js";
import { artifactTime } from "../artifacts/policy-artifact.js";

export interface PendingView {
  approval_id: string;
  binding: ApprovalBinding;
  agent: string;
  workflows: readonly string[];
  reasons: string[];
  /** Argument names with their values masked or shortened, for the approver's eyes. */
  arguments: Record<string, string>;
  created: string;
  /** RFC 3339: the hold ends (and the call is denied) at this time; statements must expire by then. */
  deadline: string;
}

export interface ApprovalResult {
  approved: boolean;
  reason: string;
  seq: number;
}

export type ApprovalSettlement =
  | { kind: "approve" | "deny"; statement: ApprovalStatement; approver: string }
  | { kind: "timeout" | "shutdown" };

interface Entry {
  view: PendingView;
  timer: NodeJS.Timeout;
  settled: Promise<ApprovalResult> | null;
  resolve: (r: ApprovalResult) => void;
  result: Promise<ApprovalResult>;
}

export interface ApprovalQueueOptions {
  holdMs: number;
  approvers: ReadonlyMap<string, { name: string; publicKey: Uint8Array }>;
  /** Records the settlement durably; resolves with the receipt's seq. */
  record: (view: PendingView, settlement: ApprovalSettlement) => Promise<number>;
  /** At most this many calls wait at once; more are denied outright. */
  maxPending?: number;
  now?: () => Date;
}

/** A statement expiring sooner than this is refused (see answer). */
const EXPIRY_MARGIN_MS = 2000;

/** Settled entries stay this long for a runtime that asks after the answer came. */
const SETTLED_GRACE_MS = 60_000;

export class ApprovalQueue {
  readonly #opts: ApprovalQueueOptions;
  readonly #entries = new Map<string, Entry>();
  #closed = false;

  constructor(opts: ApprovalQueueOptions) {
    this.#opts = opts;
  }

  get holdMs(): number {
    return this.#opts.holdMs;
  }

  /** Opens a pending approval; null when the queue is full or closed (the caller denies). */
  open(
    binding: Omit<ApprovalBinding, "approval_id">,
    who: { agent: string; workflows: readonly string[] },
    reasons: string[],
    params: unknown,
  ): PendingView | null {
    if (this.#closed || this.pending().length >= (this.#opts.maxPending ?? 1000)) return null;
    const now = this.#now();
    const approvalId = randomBytes(16).toString("hex");
    const view: PendingView = {
      approval_id: approvalId,
      binding: { approval_id: approvalId, ...binding },
      agent: who.agent,
      workflows: who.workflows,
      reasons,
      arguments: summarizeArguments(params),
      created: artifactTime(now),
      deadline: artifactTime(new Date(now.getTime() + this.#opts.holdMs)),
    };
    let resolve!: (r: ApprovalResult) => void;
    const result = new Promise<ApprovalResult>((r) => (resolve = r));
    const timer = setTimeout(() => void this.#settle(approvalId, { kind: "timeout" }), this.#opts.holdMs);
    timer.unref();
    this.#entries.set(approvalId, { view, timer, settled: null, resolve, result });
    return view;
  }

  pending(): PendingView[] {
    return [...this.#entries.values()].filter((e) => e.settled === null).map((e) => e.view);
  }

  /** The runtime's wait for the answer; the session must be the one the call belongs to. */
  wait(session: string, approvalId: string): Promise<ApprovalResult> {
    const e = this.#entries.get(approvalId);
    if (!e || e.view.binding.session !== session)
      return Promise.reject(
        new CmcpError("approval.unknown", `no pending approval ${approvalId.slice(0, 32)}`),
      );
    return e.result;
  }

  /** An approver's signed answer. Refused answers leave the call pending. */
  async answer(approvalId: string, statement: unknown): Promise<ApprovalResult> {
    const e = this.#entries.get(approvalId);
    if (!e) throw new CmcpError("approval.unknown", `no pending approval ${approvalId.slice(0, 32)}`);
    if (e.settled) throw new CmcpError("approval.settled", `approval ${approvalId} was already settled`);
    // Checked as of a moment later: the approval receipt is stamped after this, and the verifier requires
    // the statement to be unexpired at that stamp. A margin, not a guarantee: an append slower than it
    // records a receipt the verifier rejects (which fails closed, as evidence of a late answer).
    const asOf = new Date(this.#now().getTime() + EXPIRY_MARGIN_MS);
    const check = checkApproval(statement, e.view.binding, this.#opts.approvers, asOf);
    if (!check.ok) throw new CmcpError("approval.refused", check.reason);
    const settled = await this.#settle(approvalId, {
      kind: check.statement.decision,
      statement: check.statement,
      approver: check.approver,
    });
    if (!settled) throw new CmcpError("approval.settled", `approval ${approvalId} was already settled`);
    return settled;
  }

  /** Denies every waiting call (the governor is stopping); each denial is recorded. */
  async close(): Promise<void> {
    this.#closed = true;
    await Promise.all([...this.#entries.keys()].map((id) => this.#settle(id, { kind: "shutdown" })));
  }

  #settle(approvalId: string, s: ApprovalSettlement): Promise<ApprovalResult> | null {
    const e = this.#entries.get(approvalId);
    if (!e || e.settled) return null;
    clearTimeout(e.timer);
    e.settled = (async () => {
      let r: ApprovalResult;
      try {
        const seq = await this.#opts.record(e.view, s);
        r = { approved: s.kind === "approve", reason: describe(s), seq };
      } catch (err) {
        // Not recorded means not approved: the call is refused, and the failure named.
        r = { approved: false, reason: `approval could not be recorded: ${(err as Error).message}`, seq: -1 };
      }
      e.resolve(r);
      setTimeout(() => this.#entries.delete(approvalId), SETTLED_GRACE_MS).unref();
      return r;
    })();
    return e.settled;
  }

  #now(): Date {
    return this.#opts.now?.() ?? new Date();
  }
}

function describe(s: ApprovalSettlement): string {
  switch (s.kind) {
    case "approve":
      return `approved by ${s.approver}`;
    case "deny":
      return `denied by ${s.approver}${s.statement.reason ? `: ${s.statement.reason}` : ""}`;
    case "timeout":
      return "no approver answered before the hold ended; denied";
    case "shutdown":
      return "the gateway stopped before an approver answered; denied";
  }
}

const SENSITIVE_NAME = /pass|secret|token|key|auth|cred|cookie|session|private/i;
const SECRET_VALUE = /^(sk-|ghp_|gho_|xox[abp]-|AKIA|eyJ)|-----BEGIN/;
const MAX_SUMMARY_KEYS = 32;

/** What an approver sees of the arguments: names, shapes and short values; anything secret-looking is masked. */
export function summarizeArguments(params: unknown): Record<string, string> {
  const args =
    typeof params === "object" && params !== null && "arguments" in params
      ? (params as { arguments?: unknown }).arguments
      : params;
  const out: Record<string, string> = {};
  if (typeof args !== "object" || args === null || Array.isArray(args)) return out;
  const entries = Object.entries(args);
  for (const [k, v] of entries.slice(0, MAX_SUMMARY_KEYS)) {
    const name = k.slice(0, 64);
    if (SENSITIVE_NAME.test(k)) out[name] = "«masked»";
    else if (typeof v === "string")
      out[name] = SECRET_VALUE.test(v)
        ? "«masked»"
        : v.length > 48
          ? `${JSON.stringify(v.slice(0, 24))}… (${v.length} chars)`
          : JSON.stringify(v);
    else if (typeof v === "number" || typeof v === "boolean" || v === null) out[name] = String(v);
    else if (Array.isArray(v)) out[name] = `[${v.length} items]`;
    else out[name] = `{${Object.keys(v as object).length} keys}`;
  }
  if (entries.length > MAX_SUMMARY_KEYS) out["…"] = `${entries.length - MAX_SUMMARY_KEYS} more`;
  return out;
}
