/**
 * The Cedar decision engine: decides one MCP request against a validated
 * policy bundle (governor/cedar-bundle.ts) with cedar-wasm's preparsed
 * (stateful) API, passing only the entities the request needs and only the
 * policies that can apply to it (governor/cedar-slice.ts).
 *
 * Outcomes beyond permit/forbid come from the determining policies'
 * annotations (governor/cedar-annotations.ts). It fails closed: an invalid
 * request, a Cedar error, or an evaluation error in any policy that applied
 * is a deny whose reasons carry the error.
 *
 * Preparsed schemas and policy sets live in cedar-wasm's per-thread cache,
 * keyed by content hash; the cache has no eviction, so loading many distinct
 * bundles in one thread keeps them all. A worker thread must build its own
 * engine (governor/cedar-worker.ts).
 */
import * as cedar from "./cedar-wasm.js";
import type {
  AuthorizationAnswer,
  Context,
  EntityJson,
  EntityUidJson,
} from "@cedar-policy/cedar-wasm/nodejs";
import { CmcpError } from "../artifacts/errors.js";
import { sha256Hex } from "../artifacts/hash.js";
import type { DecisionOutcome } from "../artifacts/receipt.js";
import { outcomeRank, strongestOutcome } from "./cedar-annotations.js";
import { loadPolicyBundle, type LoadOptions, type LoadedPolicy, type PolicyBundle } from "./cedar-bundle.js";
import {
  actionModel,
  addPolicyNeeds,
  allNeeds,
  CEDAR_NAMESPACE,
  noNeeds,
  SliceIndex,
  targetKey,
  type ActionModel,
  type RequestNeeds,
  type Slice,
} from "./cedar-slice.js";
import type { Decider, Decision } from "./decider.js";

export const DRIFT_STATES = ["none", "suspect", "drifted", "quarantined"] as const;
export type DriftState = (typeof DRIFT_STATES)[number];

/** MCP methods with their own Cedar action (the action ID is the method); any other method is "other". */
export const MCP_METHOD_ACTIONS: ReadonlySet<string> = new Set([
  "tools/call",
  "tools/list",
  "resources/read",
  "resources/subscribe",
  "resources/unsubscribe",
  "resources/list",
  "resources/templates/list",
  "prompts/get",
  "prompts/list",
  "completion/complete",
  "logging/setLevel",
  "initialize",
  "ping",
  "tasks/get",
  "tasks/result",
  "tasks/cancel",
  "tasks/list",
  "sampling/createMessage",
  "elicitation/create",
]);

/**
 * What the gateway computes for a request beyond its identity. Every field
 * is optional; a missing one takes the default documented in the schema.
 */
export interface CedarRequestContext {
  /** Data classes found in the arguments ("pii", "credential", ...). */
  arg_classes?: readonly string[];
  /** Session sensitivity: 0 public, 1 internal, 2 confidential, 3 restricted. */
  sensitivity?: number;
  /** Labels of sources whose data flowed into the session. */
  flow_sources?: readonly string[];
  drift?: DriftState;
  /** Decision time: a Date, or an RFC 3339 string with Z or a ±hhmm offset. Default: the engine's clock. */
  time?: Date | string;
  /** Calls already decided in this session. */
  session_calls?: number;
}

/**
 * One request to decide. A superset of the Decider's DecisionInput, so the
 * engine can stand behind the same Decider interface.
 */
export interface CedarRequest {
  /** The agent identity the runtime authenticated. */
  agent: string;
  /** The agent's workflows (its parents in Cedar). */
  workflows?: readonly string[];
  session: string;
  /** The upstream server's configured name (never contains "/"). */
  server: string;
  /** The JSON-RPC method as forwarded. */
  method: string;
  /** Overrides the action derived from `method`: the reserved non-MCP actions. */
  action?: "delegate" | "approve";
  tool?: string;
  resource?: string;
  prompt?: string;
  /** `delegate`: the agent receiving the work. */
  delegate_to?: string;
  context?: CedarRequestContext;
}

export interface DeterminingPolicy {
  id: string;
  effect: "permit" | "forbid";
  /** What this policy contributes under the precedence. */
  outcome: DecisionOutcome;
  reason?: string;
  redact: string[];
}

export interface CedarDecision extends Decision {
  /** The Cedar action the request was decided as. */
  action: string;
  /** Determining policies (Cedar's "reason" set), sorted by ID; empty for default deny. */
  determining: DeterminingPolicy[];
  /** Redaction targets of the determining permits (empty when denied). */
  redact: string[];
  /** Evaluation or request errors; non-empty means the deny was fail-closed. */
  errors: string[];
}

export interface CedarEngineOptions extends LoadOptions {
  /** Evaluate only the policies that can apply (default true). */
  slice?: boolean;
  /**
   * true: every request goes to Cedar with the schema, which checks it and
   * supplies the action groups; all entities and the whole context are
   * passed. false (default): the engine passes the action's entity with its
   * groups, and only the entities and context attributes the slice's
   * policies read. The decisions are the same (tested on generated
   * requests); the default costs about half.
   */
  validateRequests?: boolean;
  /** "stateless" re-parses schema and policies on every call: a benchmark baseline only. */
  evaluator?: "stateful" | "stateless";
  /** Clock for requests that carry no time. */
  now?: () => Date;
}

/** Limits on a request; one beyond them is denied, never truncated. */
export const REQUEST_LIMITS = Object.freeze({
  maxName: 1024,
  maxUri: 4096,
  maxSetItems: 64,
  maxLabel: 256,
});

const T = {
  agent: `${CEDAR_NAMESPACE}::Agent`,
  workflow: `${CEDAR_NAMESPACE}::Workflow`,
  session: `${CEDAR_NAMESPACE}::Session`,
  server: `${CEDAR_NAMESPACE}::Server`,
  tool: `${CEDAR_NAMESPACE}::Tool`,
  resource: `${CEDAR_NAMESPACE}::Resource`,
  prompt: `${CEDAR_NAMESPACE}::Prompt`,
  action: `${CEDAR_NAMESPACE}::Action`,
} as const;

type TargetKind = "tool" | "resource" | "prompt";
const TARGET_TYPES: Record<TargetKind, string> = { tool: T.tool, resource: T.resource, prompt: T.prompt };

// The shapes Cedar's datetime() accepts (nothing finer than milliseconds); isCedarDatetime checks the values.
const DATETIME = /^(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2}):(\d{2})(?:\.\d{3})?(?:Z|[+-](\d{2})(\d{2})))?$/;

interface Built {
  action: string;
  server: string | null;
  principal: EntityUidJson;
  /** The principal with its parents, when it has any. */
  principalEntity: EntityJson | null;
  resource: { type: string; id: string };
  resourceEntity: EntityJson | null;
  /** The whole context; trimmed per slice. */
  context: Context;
}

interface PreparedSlice extends Slice {
  setId: string;
  record: Record<string, string>;
  needs: RequestNeeds;
  /** needs.context as a list, or null for the whole context. */
  contextAttrs: string[] | null;
}

export class CedarEngine implements Decider {
  readonly bundle: PolicyBundle;
  readonly bundleHash: string;
  readonly schemaHash: string;
  readonly version: string;
  readonly #policies: Map<string, LoadedPolicy>;
  readonly #index: SliceIndex | null;
  /** The whole bundle, when unsliced. */
  readonly #all: PreparedSlice | null;
  readonly #prepared = new Map<Slice, PreparedSlice>();
  readonly #schemaName: string;
  readonly #validate: boolean;
  readonly #actionEntities: Map<string, EntityJson>;
  readonly #stateless: boolean;
  readonly #now: () => Date;

  constructor(bundle: PolicyBundle, options: CedarEngineOptions = {}) {
    this.bundle = bundle;
    this.bundleHash = bundle.hash;
    this.schemaHash = bundle.schema.hash;
    this.version = `cedar-${bundle.hash.slice(0, 12)}`;
    this.#policies = new Map(bundle.policies.map((p) => [p.id, p]));
    this.#validate = options.validateRequests ?? false;
    this.#stateless = options.evaluator === "stateless";
    this.#now = options.now ?? (() => new Date());
    this.#schemaName = `cmcp-schema:${bundle.schema.hash}`;
    const model = actionModel(bundle.schemaJson);
    this.#actionEntities = actionEntities(model);
    if (!this.#stateless && this.#validate) {
      const r = cedar.preparseSchema(this.#schemaName, bundle.schema.text);
      if (r.type === "failure") {
        throw new CmcpError("policy.schema", `schema: ${r.errors.map((e) => e.message).join("; ")}`);
      }
    }
    if (options.slice ?? true) {
      this.#index = new SliceIndex(bundle.policies, model);
      this.#all = null;
      for (const s of this.#index.slices) this.#prepared.set(s, this.#prepare(s));
    } else {
      this.#index = null;
      this.#all = this.#prepare({ ids: bundle.policies.map((p) => p.id) });
    }
  }

  static async load(dir: string, options: CedarEngineOptions = {}): Promise<CedarEngine> {
    return new CedarEngine(await loadPolicyBundle(dir, options), options);
  }

  /** Distinct policy sets preparsed for this engine (one per distinct slice, or the whole bundle). */
  get preparedSets(): number {
    return this.#index ? this.#prepared.size : 1;
  }

  #sliceFor(built: Built): PreparedSlice | undefined {
    if (!this.#index) return this.#all!;
    const { type, id } = built.resource;
    const slice = this.#index.lookup(built.action, built.server, targetKey(type, id));
    return slice && this.#prepared.get(slice);
  }

  #prepare(slice: Slice): PreparedSlice {
    const record: Record<string, string> = {};
    const needs = this.#validate ? allNeeds() : noNeeds();
    for (const id of slice.ids) {
      const p = this.#policies.get(id)!;
      record[id] = p.text;
      if (!this.#validate) addPolicyNeeds(needs, p.json);
    }
    // Same bundle and same IDs means the same policies: the ID is safe to share across engines.
    const setId = `cmcp-pset:${sha256Hex(new TextEncoder().encode(`${this.bundleHash}\n${slice.ids.join("\n")}`))}`;
    if (!this.#stateless && slice.ids.length > 0) {
      const r = cedar.preparsePolicySet(setId, { staticPolicies: record });
      if (r.type === "failure") {
        throw new CmcpError("policy.parse", `preparse: ${r.errors.map((e) => e.message).join("; ")}`);
      }
    }
    return {
      ...slice,
      setId,
      record,
      needs,
      contextAttrs: needs.context === "all" ? null : [...needs.context],
    };
  }

  /** The policy IDs a request is evaluated against (its slice, or every policy when unsliced). */
  policiesFor(req: CedarRequest): readonly string[] {
    const built = this.#build(req);
    if (typeof built === "string") return [];
    return this.#sliceFor(built)?.ids ?? [];
  }

  /** Decider interface: the same as evaluate(). */
  decide(input: CedarRequest): CedarDecision {
    return this.evaluate(input);
  }

  evaluate(req: CedarRequest): CedarDecision {
    const built = this.#build(req);
    if (typeof built === "string") return failClosed(actionFor(req), [`invalid request: ${built}`], []);
    const actionEntity = this.#actionEntities.get(built.action);
    const prepared = this.#sliceFor(built);
    if (actionEntity === undefined || prepared === undefined)
      return failClosed(built.action, [`action ${built.action} is not in the schema`], []);
    // Nothing in scope: Cedar would find no satisfied policy and no error, so skip the call.
    if (prepared.ids.length === 0) return defaultDeny(built.action);
    const { needs, contextAttrs } = prepared;
    const entities: EntityJson[] = [];
    if (needs.principal && built.principalEntity) entities.push(built.principalEntity);
    if (needs.resource && built.resourceEntity) entities.push(built.resourceEntity);
    // With the schema, Cedar adds the action entities itself.
    if (needs.action && !this.#validate) entities.push(actionEntity);
    let context = built.context;
    if (contextAttrs !== null) {
      context = {};
      for (const k of contextAttrs) context[k] = built.context[k]!;
    }
    // A fixed-shape literal per call (no spreads): this is the hot path.
    const action = { type: T.action, id: built.action };
    let answer: AuthorizationAnswer;
    try {
      if (this.#stateless) {
        answer = cedar.isAuthorized({
          principal: built.principal,
          action,
          resource: built.resource,
          context,
          entities,
          schema: this.#validate ? this.bundle.schema.text : undefined,
          validateRequest: this.#validate,
          policies: { staticPolicies: prepared.record },
        });
      } else {
        answer = cedar.statefulIsAuthorized({
          principal: built.principal,
          action,
          resource: built.resource,
          context,
          entities,
          preparsedSchemaName: this.#validate ? this.#schemaName : undefined,
          validateRequest: this.#validate,
          preparsedPolicySetId: prepared.setId,
        });
      }
    } catch (err) {
      return failClosed(built.action, [`cedar failed: ${(err as Error).message}`], []);
    }
    if (answer.type === "failure") {
      return failClosed(
        built.action,
        answer.errors.map((e) => `cedar refused the request: ${e.message}`),
        [],
      );
    }
    const { decision, diagnostics } = answer.response;
    if (diagnostics.errors.length > 0) {
      return failClosed(
        built.action,
        diagnostics.errors.map((e) => `evaluation error in ${e.policyId}: ${e.error.message}`),
        [...new Set(diagnostics.errors.map((e) => e.policyId))].sort(),
      );
    }
    if (diagnostics.reason.length === 0) return defaultDeny(built.action);
    const determining: DeterminingPolicy[] = [];
    for (const id of [...diagnostics.reason].sort()) {
      const p = this.#policies.get(id);
      if (!p) return failClosed(built.action, [`cedar named an unknown policy ${id}`], [id]);
      determining.push({
        id,
        effect: p.effect,
        outcome: p.outcome,
        redact: p.redact,
        ...(p.reason !== undefined ? { reason: p.reason } : {}),
      });
    }
    // Cedar's own decision already puts forbid above every permit; the annotations rank the permits.
    const outcome: DecisionOutcome =
      decision === "deny" ? "deny" : strongestOutcome(determining.map((d) => d.outcome));
    const redact = outcome === "deny" ? [] : [...new Set(determining.flatMap((d) => d.redact))].sort();
    // Reasons: the policies that set the outcome first, then the rest.
    const ordered = [...determining].sort((a, b) => outcomeRank(a.outcome) - outcomeRank(b.outcome));
    return {
      outcome,
      reasons: ordered.map(
        (d) => `${d.id}: ${d.reason ?? (d.effect === "forbid" ? "forbidden" : "permitted")}`,
      ),
      policy_ids: determining.map((d) => d.id),
      action: built.action,
      determining,
      redact,
      errors: [],
    };
  }

  #build(req: CedarRequest): Built | string {
    const L = REQUEST_LIMITS;
    if (!isName(req.agent, L.maxName)) return "agent must be a non-empty string";
    if (!isName(req.session, L.maxName)) return "session must be a non-empty string";
    if (!isName(req.method, L.maxLabel)) return "method must be a non-empty string";
    const workflows = req.workflows ?? [];
    if (
      !Array.isArray(workflows) ||
      workflows.length > L.maxSetItems ||
      !workflows.every((w) => isName(w, L.maxLabel))
    )
      return `workflows must be at most ${L.maxSetItems} non-empty strings`;
    const action = actionFor(req);
    const needsServer = action !== "delegate";
    if (needsServer && (!isName(req.server, L.maxName) || req.server.includes("/")))
      return 'server must be a non-empty name without "/"';
    const server = needsServer ? req.server : null;

    const agentUid = { type: T.agent, id: req.agent };
    const parents = workflows.map((w) => ({ type: T.workflow, id: w }));
    let principal: EntityUidJson = agentUid;
    let principalEntity: EntityJson | null = null;
    if (action === "approve") {
      // The session's parents are its agent and the workflows, all direct: no closure to compute.
      principal = { type: T.session, id: req.session };
      principalEntity = { uid: principal, attrs: {}, parents: [agentUid, ...parents] };
    } else if (parents.length > 0) {
      principalEntity = { uid: agentUid, attrs: {}, parents };
    }

    let resource: Built["resource"];
    let resourceEntity: EntityJson | null = null;
    const kind = targetKind(action, req);
    if (action === "delegate") {
      if (!isName(req.delegate_to, L.maxName)) return "delegate needs delegate_to";
      resource = { type: T.agent, id: req.delegate_to };
    } else if (kind === undefined) {
      resource = { type: T.server, id: server! };
    } else {
      const name = req[kind];
      if (!isName(name, kind === "resource" ? L.maxUri : L.maxName)) return `${action} needs a ${kind} name`;
      resource = { type: TARGET_TYPES[kind], id: `${server}/${name}` };
      resourceEntity = { uid: resource, attrs: {}, parents: [{ type: T.server, id: server! }] };
    }

    const c = req.context ?? {};
    const argClasses = c.arg_classes ?? [];
    const flowSources = c.flow_sources ?? [];
    if (!isLabels(argClasses)) return `arg_classes must be at most ${L.maxSetItems} non-empty strings`;
    if (!isLabels(flowSources)) return `flow_sources must be at most ${L.maxSetItems} non-empty strings`;
    const sensitivity = c.sensitivity ?? 0;
    if (!Number.isInteger(sensitivity) || sensitivity < 0 || sensitivity > 3)
      return "sensitivity must be an integer 0..3";
    const calls = c.session_calls ?? 0;
    if (!Number.isSafeInteger(calls) || calls < 0) return "session_calls must be a non-negative integer";
    const drift = c.drift ?? "none";
    if (!(DRIFT_STATES as readonly string[]).includes(drift))
      return `drift must be one of ${DRIFT_STATES.join(", ")}`;
    const time = c.time ?? this.#now();
    const timeText = typeof time === "string" ? time : isNaN(time.getTime()) ? "" : time.toISOString();
    // Checked here, not left to Cedar: a slice whose policies never read the time does not pass it.
    // A valid Date's toISOString() is always a real instant, so only a string needs the calendar check.
    if (typeof time === "string" ? !isCedarDatetime(time) : !DATETIME.test(timeText))
      return "time must be an RFC 3339 date-time (YYYY-MM-DDThh:mm:ss[.sss](Z|±hhmm))";

    return {
      action,
      server,
      principal,
      principalEntity,
      resource,
      resourceEntity,
      context: {
        method: req.method,
        session: { __entity: { type: T.session, id: req.session } },
        arg_classes: argClasses as string[],
        sensitivity,
        flow_sources: flowSources as string[],
        drift,
        time: { __extn: { fn: "datetime", arg: timeText } },
        session_calls: calls,
      },
    };
  }
}

/** Each concrete action's entity, its groups as direct parents (already transitively closed). */
function actionEntities(model: ActionModel): Map<string, EntityJson> {
  const out = new Map<string, EntityJson>();
  for (const [id, ancestors] of model.ancestors) {
    out.set(id, {
      uid: { type: T.action, id },
      attrs: {},
      parents: [...ancestors].filter((a) => a !== id).map((a) => ({ type: T.action, id: a })),
    });
  }
  return out;
}

/**
 * What a request's resource is inside its server: the tool, resource or
 * prompt it names, or undefined for the server itself.
 */
function targetKind(action: string, req: CedarRequest): TargetKind | undefined {
  switch (action) {
    case "tools/call":
      return "tool";
    case "resources/read":
    case "resources/subscribe":
    case "resources/unsubscribe":
      return "resource";
    case "prompts/get":
      return "prompt";
    // These may name a target: the first one named, else the server.
    case "completion/complete":
      return firstNamed(req, ["prompt", "resource"]);
    case "approve":
      return firstNamed(req, ["tool", "resource", "prompt"]);
    default:
      return undefined;
  }
}

function firstNamed(req: CedarRequest, kinds: readonly TargetKind[]): TargetKind | undefined {
  return kinds.find((k) => req[k] !== undefined);
}

/**
 * A date-time Cedar's datetime() accepts: the DATETIME shape with a real
 * calendar date, a time up to 23:59:59 and an offset up to ±2359 (Cedar
 * refuses Feb 30, hour 24, second 60 and offset +2400).
 */
function isCedarDatetime(text: string): boolean {
  const m = DATETIME.exec(text);
  if (!m) return false;
  const n = (group: number) => Number(m[group] ?? 0);
  const year = n(1);
  const leap = year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0);
  const days = [31, leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][n(2) - 1] ?? 0;
  return n(3) >= 1 && n(3) <= days && n(4) < 24 && n(5) < 60 && n(6) < 60 && n(7) < 24 && n(8) < 60;
}

/** The Cedar action a request is decided as. */
function actionFor(req: Pick<CedarRequest, "method" | "action">): string {
  if (req.action === "delegate" || req.action === "approve") return req.action;
  return MCP_METHOD_ACTIONS.has(req.method) ? req.method : "other";
}

function isName(v: unknown, max: number): v is string {
  return typeof v === "string" && v.length > 0 && v.length <= max;
}

function isLabels(v: unknown): boolean {
  return (
    Array.isArray(v) &&
    v.length <= REQUEST_LIMITS.maxSetItems &&
    v.every((x) => isName(x, REQUEST_LIMITS.maxLabel))
  );
}

function defaultDeny(action: string): CedarDecision {
  return {
    outcome: "deny",
    reasons: ["no policy permits this request (default deny)"],
    policy_ids: [],
    action,
    determining: [],
    redact: [],
    errors: [],
  };
}

function failClosed(action: string, errors: string[], policyIds: string[]): CedarDecision {
  return {
    outcome: "deny",
    reasons: errors,
    policy_ids: policyIds,
    action,
    determining: [],
    redact: [],
    errors,
  };
}
