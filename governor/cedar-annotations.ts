/**
 * The annotation vocabulary of cmcp policy bundles and the precedence that
 * turns a set of determining Cedar policies into one decision outcome.
 * Cedar itself only says permit or deny; everything beyond that (approval,
 * redaction, advisories) comes from these annotations, so the whole decision
 * logic lives in the sealed bundle. Documented in policies/README.md.
 */
import { CmcpError } from "../artifacts/errors.js";
import type { DecisionOutcome } from "../artifacts/receipt.js";

/** The only annotation keys a policy may carry. */
export const ANNOTATION_KEYS = ["id", "decision", "redact", "reason"] as const;

/** `@decision(...)` values; only permits carry them (a forbid always denies). */
export const PERMIT_DECISIONS = ["require_approval", "redact", "advisory"] as const;
export type PermitDecision = (typeof PERMIT_DECISIONS)[number];

/** Strongest first: the outcome of a request is the strongest among its determining policies. */
export const OUTCOME_PRECEDENCE: readonly DecisionOutcome[] = [
  "deny",
  "require_approval",
  "redact",
  "advisory",
  "allow",
];

/** Names for the two halves of a policy ID (`<file stem>/<@id>`): no "/", no spaces. */
export const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const CLASS_PATTERN = /^[a-z0-9][a-z0-9_.-]{0,63}$/;
const MAX_REASON = 500;
const MAX_REDACT_TARGETS = 32;

export interface PolicyMeta {
  /** The `@id` annotation (the part after the "/" of the policy ID). */
  localId: string;
  effect: "permit" | "forbid";
  /** What a permit contributes: "allow" unless `@decision`/`@redact` say otherwise; "deny" for a forbid. */
  outcome: DecisionOutcome;
  reason?: string;
  /** Canonical redaction targets (`class:NAME`, `arg:POINTER`, `result:POINTER`), sorted. */
  redact: string[];
}

/**
 * Checks one policy's annotations against the vocabulary. `where` names the
 * policy for messages (file, and ID when known).
 */
export function parseAnnotations(
  raw: Readonly<Record<string, unknown>>,
  effect: "permit" | "forbid",
  where: string,
): PolicyMeta {
  const annotations: Record<string, string> = {};
  for (const [key, value] of Object.entries(raw)) {
    if (!(ANNOTATION_KEYS as readonly string[]).includes(key)) {
      throw new CmcpError(
        "policy.annotation",
        `${where}: unknown annotation @${key} (allowed: ${ANNOTATION_KEYS.map((k) => `@${k}`).join(", ")})`,
      );
    }
    // Cedar accepts `@key` without a value (null in its JSON form); every cmcp annotation needs one.
    if (typeof value !== "string") {
      throw new CmcpError(
        key === "id" ? "policy.id" : "policy.annotation",
        `${where}: @${key} needs a value, as in @${key}("...")`,
      );
    }
    annotations[key] = value;
  }
  const localId = annotations.id;
  if (localId === undefined) {
    throw new CmcpError("policy.id", `${where}: policy has no @id("...") annotation`);
  }
  if (!NAME_PATTERN.test(localId)) {
    throw new CmcpError(
      "policy.id",
      `${where}: @id(${JSON.stringify(localId)}) must be 1-64 of A-Z a-z 0-9 _ . - and start with a letter or digit`,
    );
  }
  const at = `${where} @id("${localId}")`;
  const reason = annotations.reason;
  if (reason !== undefined) {
    // eslint-disable-next-line no-control-regex
    if (reason.trim() === "" || reason.length > MAX_REASON || /[\u0000-\u001f\u007f]/.test(reason)) {
      throw new CmcpError(
        "policy.annotation",
        `${at}: @reason must be non-empty printable text of at most ${MAX_REASON} characters`,
      );
    }
  }
  const decision = annotations.decision;
  const redactSpec = annotations.redact;
  if (effect === "forbid") {
    if (decision !== undefined || redactSpec !== undefined) {
      throw new CmcpError(
        "policy.annotation",
        `${at}: a forbid always denies; @decision and @redact belong on permit policies`,
      );
    }
    return { localId, effect, outcome: "deny", redact: [], ...(reason !== undefined ? { reason } : {}) };
  }
  if (decision !== undefined && !(PERMIT_DECISIONS as readonly string[]).includes(decision)) {
    throw new CmcpError(
      "policy.annotation",
      `${at}: @decision(${JSON.stringify(decision)}) is not one of ${PERMIT_DECISIONS.map((d) => `"${d}"`).join(", ")}`,
    );
  }
  let redact: string[] = [];
  if (redactSpec !== undefined) {
    if (decision !== undefined && decision !== "redact") {
      throw new CmcpError(
        "policy.annotation",
        `${at}: @redact implies @decision("redact"), but the policy says @decision("${decision}")`,
      );
    }
    try {
      redact = parseRedactSpec(redactSpec);
    } catch (err) {
      throw new CmcpError("policy.annotation", `${at}: ${(err as Error).message}`);
    }
  } else if (decision === "redact") {
    throw new CmcpError(
      "policy.annotation",
      `${at}: @decision("redact") needs @redact("...") naming what to redact`,
    );
  }
  const outcome: DecisionOutcome =
    redactSpec !== undefined ? "redact" : ((decision as PermitDecision | undefined) ?? "allow");
  return { localId, effect, outcome, redact, ...(reason !== undefined ? { reason } : {}) };
}

/**
 * `@redact("t1, t2, ...")`, each target one of:
 *   class:NAME     values of data class NAME, wherever inspection finds them
 *   arg:POINTER    the argument at an RFC 6901 JSON Pointer ("" = all arguments)
 *   result:POINTER the result member at a JSON Pointer ("" = the whole result)
 * Returns canonical targets, sorted and without duplicates.
 */
export function parseRedactSpec(spec: string): string[] {
  const parts = spec.split(",").map((p) => p.trim());
  if (parts.length > MAX_REDACT_TARGETS)
    throw new Error(`@redact names more than ${MAX_REDACT_TARGETS} targets`);
  const out = new Set<string>();
  for (const part of parts) {
    const colon = part.indexOf(":");
    const kind = colon < 0 ? part : part.slice(0, colon);
    const value = colon < 0 ? undefined : part.slice(colon + 1);
    if (kind === "class" && value !== undefined && CLASS_PATTERN.test(value)) out.add(`class:${value}`);
    else if ((kind === "arg" || kind === "result") && value !== undefined && isJsonPointer(value))
      out.add(`${kind}:${value}`);
    else
      throw new Error(
        `@redact target ${JSON.stringify(part)} is not class:NAME (lowercase), arg:/json/pointer or result:/json/pointer`,
      );
  }
  return [...out].sort();
}

function isJsonPointer(p: string): boolean {
  // eslint-disable-next-line no-control-regex
  return p.length <= 512 && (p === "" || /^(\/([^~\u0000-\u001f]|~[01])*)+$/.test(p));
}

export function outcomeRank(o: DecisionOutcome): number {
  return OUTCOME_PRECEDENCE.indexOf(o);
}

/** The strongest outcome among the determining policies' contributions; none means default deny. */
export function strongestOutcome(outcomes: Iterable<DecisionOutcome>): DecisionOutcome {
  let best: DecisionOutcome | undefined;
  for (const o of outcomes) if (best === undefined || outcomeRank(o) < outcomeRank(best)) best = o;
  return best ?? "deny";
}
