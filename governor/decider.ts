/**
 * The decision interface the governor calls for every forwarded request. The
 * Cedar engine (cedar-policy.ts) implements it; a decision names the policies
 * that determined it so receipts can.
 */
import type { DecisionOutcome } from "../artifacts/receipt.js";

export interface DecisionInput {
  session: string;
  agent: string;
  server: string;
  method: string;
  tool?: string;
  resource?: string;
  prompt?: string;
}

export interface Decision {
  outcome: DecisionOutcome;
  reasons: string[];
  policy_ids: string[];
}

export interface Decider {
  /** SHA-256 (hex) of the policy source the decisions come from. */
  readonly bundleHash: string;
  readonly version: string;
  decide(input: DecisionInput): Decision;
}
