/**
 * Policy test cases kept beside the policies: every `tests/**.json` file of a
 * bundle is a decision table (request, expected outcome, optionally the
 * expected determining policy IDs and redaction targets). They are read from
 * the same bytes the bundle hash covers. Format: policies/README.md.
 *
 * Limits: each file is already capped by the bundle limits (1 MiB); the
 * parser allows JSON nesting 16 deep and 10,000 members per array or object
 * (so at most 10,000 cases per file), and the schema below caps each field.
 */
import { Ajv2020 } from "ajv/dist/2020.js";
import { CmcpError, isCmcpError } from "../artifacts/errors.js";
import { DECISION_OUTCOMES, type DecisionOutcome } from "../artifacts/receipt.js";
import { parseJson } from "../artifacts/strict-json.js";
import type { PolicyBundle } from "./cedar-bundle.js";
import { DRIFT_STATES, type CedarDecision, type CedarEngine, type CedarRequest } from "./cedar-policy.js";

/** Requests in test files without a time are decided at this fixed instant (a Thursday, noon UTC). */
export const DEFAULT_TEST_TIME = "2026-01-15T12:00:00Z";
export const DEFAULT_TEST_SESSION = "test-session";

export interface PolicyTestCase {
  file: string;
  /** 1-based position in the file's `cases`. */
  index: number;
  name: string;
  request: CedarRequest;
  expect: DecisionOutcome;
  policies?: string[];
  redact?: string[];
}

export interface PolicyTestResult {
  case: PolicyTestCase;
  ok: boolean;
  decision: CedarDecision;
  failures: string[];
}

export interface PolicyTestReport {
  bundleHash: string;
  files: string[];
  passed: number;
  failed: number;
  results: PolicyTestResult[];
}

const MAX_CASES = 10_000;
const str = { type: "string", minLength: 1, maxLength: 4096 };
const strings = { type: "array", maxItems: 64, items: str };
const requestSchema = {
  type: "object",
  additionalProperties: false,
  properties: {
    agent: str,
    workflows: strings,
    session: str,
    server: str,
    method: str,
    action: { enum: ["delegate", "approve"] },
    tool: str,
    resource: str,
    prompt: str,
    delegate_to: str,
    context: {
      type: "object",
      additionalProperties: false,
      properties: {
        arg_classes: strings,
        sensitivity: { type: "integer" },
        flow_sources: strings,
        drift: { enum: [...DRIFT_STATES] },
        time: str,
        session_calls: { type: "integer", minimum: 0 },
      },
    },
  },
};
const validateFile = new Ajv2020({ strict: true, allErrors: false }).compile({
  type: "object",
  additionalProperties: false,
  required: ["cases"],
  properties: {
    description: { type: "string" },
    defaults: requestSchema,
    cases: {
      type: "array",
      maxItems: MAX_CASES,
      items: {
        type: "object",
        additionalProperties: false,
        required: ["name", "request", "expect"],
        properties: {
          name: str,
          request: requestSchema,
          expect: { enum: [...DECISION_OUTCOMES] },
          policies: { type: "array", maxItems: 1000, items: str },
          redact: { type: "array", maxItems: 64, items: str },
        },
      },
    },
  },
});

interface TestFile {
  defaults?: Partial<CedarRequest>;
  cases: {
    name: string;
    request: Partial<CedarRequest>;
    expect: DecisionOutcome;
    policies?: string[];
    redact?: string[];
  }[];
}

function isTestFile(path: string): boolean {
  return path.startsWith("tests/") && path.endsWith(".json");
}

/** Reads the bundle's test files; throws `policy.tests` naming the file and the fault. */
export function readTestCases(bundle: PolicyBundle): PolicyTestCase[] {
  const out: PolicyTestCase[] = [];
  for (const f of bundle.files) {
    if (!isTestFile(f.path)) continue;
    let value: unknown;
    try {
      value = parseJson(f.bytes, { maxDepth: 16, maxMembers: MAX_CASES });
    } catch (err) {
      throw new CmcpError("policy.tests", `${f.path}: ${isCmcpError(err) ? err.message : String(err)}`);
    }
    if (!validateFile(value)) {
      const e = validateFile.errors?.[0];
      throw new CmcpError(
        "policy.tests",
        `${f.path}: ${e ? `${e.instancePath || "/"} ${e.message}` : "invalid test file"}`,
      );
    }
    const file = value as TestFile;
    const d = file.defaults ?? {};
    file.cases.forEach((c, i) => {
      const request = {
        session: DEFAULT_TEST_SESSION,
        ...d,
        ...c.request,
        context: { time: DEFAULT_TEST_TIME, ...d.context, ...c.request.context },
      } as CedarRequest;
      const required: ("agent" | "method" | "server")[] =
        request.action === "delegate" ? ["agent", "method"] : ["agent", "method", "server"];
      const missing = required.filter((k) => request[k] === undefined);
      if (missing.length > 0) {
        throw new CmcpError(
          "policy.tests",
          `${f.path}: case ${i + 1} (${c.name}) has no ${missing.join(", ")} (in the case or the file's defaults)`,
        );
      }
      out.push({
        file: f.path,
        index: i + 1,
        name: c.name,
        request,
        expect: c.expect,
        ...(c.policies ? { policies: c.policies } : {}),
        ...(c.redact ? { redact: c.redact } : {}),
      });
    });
  }
  return out;
}

/**
 * Runs every case. With `unsliced`, each case is also decided without
 * slicing and a disagreement fails the case.
 */
export function runPolicyTests(
  engine: CedarEngine,
  cases: readonly PolicyTestCase[],
  unsliced?: CedarEngine,
): PolicyTestReport {
  const results: PolicyTestResult[] = cases.map((c) => {
    const decision = engine.evaluate(c.request);
    const failures: string[] = [];
    const invalid = decision.errors.find((e) => e.startsWith("invalid request"));
    if (invalid) failures.push(invalid);
    if (decision.outcome !== c.expect) failures.push(`expected ${c.expect}, got ${decision.outcome}`);
    if (c.policies && !sameSet(c.policies, decision.policy_ids)) {
      failures.push(
        `expected policies [${[...c.policies].sort().join(", ")}], got [${decision.policy_ids.join(", ")}]`,
      );
    }
    if (c.redact && !sameSet(c.redact, decision.redact)) {
      failures.push(
        `expected redact [${[...c.redact].sort().join(", ")}], got [${decision.redact.join(", ")}]`,
      );
    }
    if (unsliced) {
      const u = unsliced.evaluate(c.request);
      if (u.outcome !== decision.outcome || !sameSet(u.policy_ids, decision.policy_ids)) {
        failures.push(
          `sliced and unsliced evaluation disagree: ${decision.outcome} [${decision.policy_ids.join(", ")}] vs ${u.outcome} [${u.policy_ids.join(", ")}]`,
        );
      }
    }
    return { case: c, ok: failures.length === 0, decision, failures };
  });
  const passed = results.filter((r) => r.ok).length;
  return {
    bundleHash: engine.bundleHash,
    files: [...new Set(cases.map((c) => c.file))],
    passed,
    failed: results.length - passed,
    results,
  };
}

function sameSet(a: readonly string[], b: readonly string[]): boolean {
  const x = [...new Set(a)].sort();
  const y = [...new Set(b)].sort();
  return x.length === y.length && x.every((v, i) => v === y[i]);
}
