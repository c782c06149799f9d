/**
 * The interim decision policy until Cedar bundles land: allow everything
 * except what a JSON deny-list names. It sits behind the same `Decider`
 * interface the Cedar evaluator will implement.
 */
import { readFile } from "node:fs/promises";
import { Ajv2020 } from "ajv/dist/2020.js";
import { CmcpError, isCmcpError } from "../artifacts/errors.js";
import { sha256Hex } from "../artifacts/hash.js";
import type { DecisionOutcome } from "../artifacts/receipt.js";
import { parseJson } from "../artifacts/strict-json.js";

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

interface DenyList {
  deny_servers?: string[];
  /** Tool names, or `server.tool` to name one server's tool. */
  deny_tools?: string[];
  deny_methods?: string[];
}

const validate = new Ajv2020({ strict: true }).compile({
  type: "object",
  additionalProperties: false,
  properties: {
    deny_servers: { type: "array", maxItems: 10_000, items: { type: "string", maxLength: 1024 } },
    deny_tools: { type: "array", maxItems: 10_000, items: { type: "string", maxLength: 2048 } },
    deny_methods: { type: "array", maxItems: 1000, items: { type: "string", maxLength: 256 } },
  },
});

export class FixedPolicy implements Decider {
  readonly bundleHash: string;
  readonly version: string;
  readonly #servers: Set<string>;
  readonly #tools: Set<string>;
  readonly #methods: Set<string>;

  constructor(list: DenyList, source: Uint8Array) {
    this.bundleHash = sha256Hex(source);
    this.version = `fixed-${this.bundleHash.slice(0, 12)}`;
    this.#servers = new Set(list.deny_servers ?? []);
    this.#tools = new Set(list.deny_tools ?? []);
    this.#methods = new Set(list.deny_methods ?? []);
  }

  static async load(path: string | null): Promise<FixedPolicy> {
    if (path === null) return new FixedPolicy({}, new TextEncoder().encode("{}"));
    let bytes: Uint8Array;
    let value: unknown;
    try {
      bytes = await readFile(path);
      value = parseJson(bytes, { maxBytes: 4 * 1024 * 1024 });
    } catch (err) {
      const why = isCmcpError(err) ? err.message : ((err as NodeJS.ErrnoException).code ?? String(err));
      throw new CmcpError("policy.read", `cannot read policy ${path}: ${why}`);
    }
    if (!validate(value)) {
      const e = validate.errors?.[0];
      throw new CmcpError(
        "policy.invalid",
        `policy ${path}: ${e ? `${e.instancePath || "/"} ${e.message}` : "invalid"}`,
      );
    }
    return new FixedPolicy(value as DenyList, bytes);
  }

  decide(input: DecisionInput): Decision {
    if (this.#servers.has(input.server)) {
      return {
        outcome: "deny",
        reasons: [`server ${input.server} is on the deny list`],
        policy_ids: ["fixed.deny-servers"],
      };
    }
    if (this.#methods.has(input.method)) {
      return {
        outcome: "deny",
        reasons: [`method ${input.method} is on the deny list`],
        policy_ids: ["fixed.deny-methods"],
      };
    }
    if (
      input.tool !== undefined &&
      (this.#tools.has(input.tool) || this.#tools.has(`${input.server}.${input.tool}`))
    ) {
      return {
        outcome: "deny",
        reasons: [`tool ${input.tool} is on the deny list`],
        policy_ids: ["fixed.deny-tools"],
      };
    }
    return { outcome: "allow", reasons: [], policy_ids: ["fixed.allow-all"] };
  }
}
