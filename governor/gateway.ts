/**
 * The governor's side of the gateway: it holds the epoch key and the receipt
 * chain, decides every request the runtime would forward, records every
 * response the runtime would relay, and supervises the runtime. It never
 * sees HTTP, SSE or JSON-RPC framing: only the boundary table's bodies.
 */
import { chmod, mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CmcpError, isCmcpError } from "../artifacts/errors.js";
import { fromBase64 } from "../artifacts/encoding.js";
import { generateSigner, keyId, type Signer } from "../artifacts/keys.js";
import { payloadHash, type DecisionOutcome, type ReceiptSubject } from "../artifacts/receipt.js";
import type { EnforcementMode } from "../artifacts/trace-claim.js";
import type { Bodies, Handlers, ListedKind, RuntimeConfig } from "./boundary.js";
import type { GatewayConfig } from "./config.js";
import { AdminServer } from "./admin-server.js";
import { KINDS, LIST_FIELD, type DefinitionKind } from "./catalog.js";
import { CatalogGuard, type DriftEvent, type LiveLists } from "./catalog-guard.js";
import { ApprovalQueue, type ApprovalSettlement, type PendingView } from "./approval-queue.js";
import { artifactExpired, loadSealedPolicy, type SealedPolicy } from "./sealed-policy.js";
import { DEV_REVIEWER, devCatalog } from "./dev-catalog.js";
import { ReceiptChain } from "./receipt-chain.js";
import { runtimeEntryFile, RuntimeSupervisor } from "./runtime-supervisor.js";
import {
  assertReadableBy,
  ensureRuntimeUser,
  prepareStateDir,
  type RuntimeIdentity,
} from "./runtime-user.js";

export interface GatewayOptions {
  config: GatewayConfig;
  /** The epoch key; created here in memory when not given (tests pass a known one). */
  signer?: Signer;
  log?: (line: string) => void;
  /** Test hook: node arguments of a substitute runtime (for example one that forges frames). */
  runtimeCommand?: string[];
  backoff?: { initialMs: number; maxMs: number; resetAfterMs: number };
}

export interface GatewayStatus {
  epoch: number;
  key_id: string;
  provider: string;
  mode: EnforcementMode;
  policy: {
    bundle_hash: string;
    version: string;
    artifact_hash: string;
    self_sealed: boolean;
    expires: string;
  };
  data_dir: string;
  endpoint: string | null;
  runtime: { pid: number | null; user: string; restarts: number };
  receipts: { appended: number; durable: number; last_checkpoint: number | null };
  sessions: number;
  approvals_pending: number;
  failed: string | null;
  draining: boolean;
  upstreams: Record<string, { tools: number; resources: number; prompts: number; last_event: string | null }>;
}

export class Gateway {
  readonly config: GatewayConfig;
  readonly chain: ReceiptChain;
  readonly sealed: SealedPolicy;
  readonly mode: EnforcementMode;
  readonly identity: RuntimeIdentity | null;
  readonly #supervisor: RuntimeSupervisor;
  readonly #log: (line: string) => void;
  readonly #sessions = new Map<string, { agent: string; workflows: readonly string[]; calls: number }>();
  readonly #upstreams = new Map<string, GatewayStatus["upstreams"][string]>();
  readonly approvals: ApprovalQueue;
  /** The subject's tool, resource or prompt of each pending approval, for its approval receipt. */
  readonly #approvalTargets = new Map<string, Pick<ReceiptSubject, "tool" | "resource" | "prompt">>();
  /** The approved catalog at run time; null when the artifact seals none. */
  readonly guard: CatalogGuard | null;
  #endpoint: string | null = null;
  #boundPort: number | null = null;
  #admin: AdminServer | null = null;
  #endpointWaiters: ((url: string) => void)[] = [];
  #draining = false;

  private constructor(
    config: GatewayConfig,
    chain: ReceiptChain,
    sealed: SealedPolicy,
    identity: RuntimeIdentity | null,
    log: (line: string) => void,
    options: Pick<GatewayOptions, "runtimeCommand" | "backoff">,
  ) {
    this.config = config;
    this.chain = chain;
    this.sealed = sealed;
    this.mode = sealed.mode;
    this.approvals = new ApprovalQueue({
      holdMs: config.approvals.hold_seconds * 1000,
      approvers: new Map(
        config.approvers.map((a) => {
          const publicKey = fromBase64(a.public_key, 32);
          return [keyId(publicKey), { name: a.name, publicKey }];
        }),
      ),
      record: (view, s) => this.#recordApproval(view, s),
    });
    this.guard = sealed.catalog
      ? new CatalogGuard(sealed.catalog, {
          onDrift: sealed.artifact.enforcement.on_drift,
          record: (e) => this.#recordDrift(e),
          log,
        })
      : null;
    this.identity = identity;
    this.#log = log;
    this.#supervisor = new RuntimeSupervisor({
      identity,
      stateDir: join(config.data_dir, "runtime"),
      handlers: this.#handlers(),
      log,
      ...(options.runtimeCommand ? { command: options.runtimeCommand } : {}),
      ...(options.backoff ? { backoff: options.backoff } : {}),
      onViolation: (reason, code, pid) => {
        log(`runtime pid ${pid} broke the boundary (${code}): ${reason}; terminated`);
        this.#record("enforcement", {
          action: "runtime_terminated",
          reason: reason.slice(0, 2000),
          code,
          pid: pid ?? null,
        });
      },
      onExit: ({ pid, code, signal, restartIn }) => {
        this.#endpoint = null;
        this.#sessions.clear();
        if (restartIn === null) return;
        log(`runtime pid ${pid} exited (code ${code}, signal ${signal}); restarting in ${restartIn} ms`);
        this.#record("enforcement", {
          action: "runtime_restarted",
          pid: pid ?? null,
          code,
          signal,
          restart_in_ms: restartIn,
        });
      },
    });
  }

  static async start(options: GatewayOptions): Promise<Gateway> {
    const { config } = options;
    const log = options.log ?? (() => undefined);
    const identity = ensureRuntimeUser(config.runtime.user);
    if (identity && !options.runtimeCommand)
      await assertReadableBy(identity, [runtimeEntryFile(), process.execPath]);
    const sealed = await Gateway.#sealedPolicy(config, identity, log);
    if (sealed.artifact.self_sealed)
      log(
        "policy artifact SELF-SEALED with a throwaway key (dev mode): every claim says so; no one approved this policy",
      );
    const signer = options.signer ?? generateSigner();
    const chain = await ReceiptChain.open({
      dataDir: config.data_dir,
      origin: config.log.origin,
      signer,
      provider: "software",
      policy: {
        bundle_hash: sealed.engine.bundleHash,
        catalog_hash: sealed.artifact.catalog_hash,
        enforcement_mode: sealed.mode,
        policy_version: sealed.artifact.policy.version,
        artifact: sealed.artifact,
      },
      checkpointEveryReceipts: config.checkpoint.every_receipts,
      checkpointEverySeconds: config.checkpoint.every_seconds,
      onEvent: (e) => {
        if (e.kind === "recovered") log(`recovered a torn chain tail: ${JSON.stringify(e.detail)}`);
        else if (e.kind === "checkpoint-failed") log(`checkpoint failed: ${e.error}`);
        else if (e.kind === "failed") log(`FAIL CLOSED: ${e.error}`);
      },
    });
    let gateway: Gateway | undefined;
    try {
      // The runtime may traverse the data directory to reach its own state, and read nothing else in it.
      if (identity) await chmod(config.data_dir, 0o711);
      await prepareStateDir(join(config.data_dir, "runtime"), identity);
      // Its state directory must be reachable too, or the runtime would die at spawn and restart forever.
      if (identity) await assertReadableBy(identity, [join(config.data_dir, "runtime")]);
      gateway = new Gateway(config, chain, sealed, identity, log, options);
      await gateway.#checkCatalog();
      gateway.#admin = await AdminServer.start(gateway, config.data_dir);
      gateway.#supervisor.start();
      return gateway;
    } catch (err) {
      gateway?.guard?.stop();
      if (gateway) await gateway.#admin?.close().catch(() => undefined);
      await chain.close().catch(() => undefined);
      throw err;
    }
  }

  /** The sealed policy; dev mode first snapshots and self-approves its own catalog so it too runs pinned. */
  static async #sealedPolicy(
    config: GatewayConfig,
    identity: RuntimeIdentity | null,
    log: (line: string) => void,
  ): Promise<SealedPolicy> {
    if (!config.dev || config.catalog !== null) return loadSealedPolicy(config);
    const dir = await mkdtemp(join(tmpdir(), "cmcp-dev-catalog-"));
    try {
      await chmod(dir, 0o711);
      const catalog = await devCatalog(config, identity, dir);
      log(`dev mode: catalog snapshot of the embedded upstreams SELF-APPROVED (${DEV_REVIEWER}) and sealed`);
      return await loadSealedPolicy({ ...config, catalog });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  /** Resolves with the agent-facing URL once the runtime listens. */
  endpoint(): Promise<string> {
    if (this.#endpoint) return Promise.resolve(this.#endpoint);
    return new Promise((resolve) => this.#endpointWaiters.push(resolve));
  }

  get adminSocket(): string | null {
    return this.#admin?.path ?? null;
  }

  get runtimePid(): number | undefined {
    return this.#supervisor.pid;
  }

  status(): GatewayStatus {
    const cp = this.chain.lastCheckpoint;
    return {
      epoch: this.chain.epoch,
      key_id: this.chain.signer.keyId,
      provider: this.chain.provider,
      mode: this.mode,
      policy: {
        bundle_hash: this.sealed.engine.bundleHash,
        version: this.sealed.artifact.policy.version,
        artifact_hash: this.sealed.artifactHash,
        self_sealed: this.sealed.artifact.self_sealed,
        expires: this.sealed.artifact.expires,
      },
      data_dir: this.config.data_dir,
      endpoint: this.#endpoint,
      runtime: {
        pid: this.#supervisor.pid ?? null,
        user: this.identity?.name ?? `(same as governor: not root)`,
        restarts: this.#supervisor.restarts,
      },
      receipts: {
        appended: this.chain.size,
        durable: this.chain.durableSize,
        last_checkpoint: cp?.size ?? null,
      },
      sessions: this.#sessions.size,
      approvals_pending: this.approvals.pending().length,
      failed: this.chain.failed?.message ?? null,
      draining: this.#draining,
      upstreams: Object.fromEntries(this.#upstreams),
    };
  }

  /** Drain: the runtime stops accepting, in-flight calls finish up to the deadline, then a final checkpoint. */
  async stop(): Promise<void> {
    if (this.#draining) return;
    this.#draining = true;
    // Held calls end now, denied and recorded, instead of waiting out their hold in the drain.
    await this.approvals.close();
    this.guard?.stop();
    const deadline = this.config.drain_timeout_seconds * 1000;
    await this.#supervisor.stop(deadline);
    await this.#admin?.close();
    // Decisions in flight already hold their place in the chain; close() waits for them to be durable.
    await this.chain.close();
  }

  /** At start: upstreams outside the catalog are refused and recorded; identities are checked, then watched. */
  async #checkCatalog(): Promise<void> {
    const guard = this.guard;
    if (!guard) return;
    const { approved, refused } = guard.partition(this.config.upstreams);
    for (const u of refused) {
      this.#log(`upstream ${u.name} is not in the approved catalog: not connected`);
      await this.chain.append({
        type: "enforcement",
        subject: { server: u.name },
        data: {
          action: "server_not_in_catalog",
          reason: "not in the approved catalog; never spawned or connected",
        },
      });
    }
    await guard.checkIdentities(approved);
    guard.watch(approved, this.sealed.artifact.enforcement.measurement_interval_seconds * 1000);
  }

  /** Upstreams the runtime may connect: all of them, or with a catalog the approved ones not isolated. */
  #connectable(): GatewayConfig["upstreams"] {
    const guard = this.guard;
    if (!guard) return this.config.upstreams;
    return guard
      .partition(this.config.upstreams)
      .approved.filter((u) => guard.refusal(u.name, undefined) === null);
  }

  /** What this session's agent may see of one server: approved definitions only, never the live ones. */
  async #expose(
    req: Bodies["catalog_observed"]["req"],
  ): Promise<NonNullable<Bodies["catalog_observed"]["rep"]["expose"]>> {
    const live: LiveLists = {};
    for (const kind of KINDS)
      if (req.listed.includes(LIST_FIELD[kind])) live[kind] = req[LIST_FIELD[kind]] ?? [];
    const items = await this.guard!.observe(req.server, req.session, live);
    const session = req.session === undefined ? undefined : this.#sessions.get(req.session);
    const out = [];
    for (const it of items) {
      // Listing is filtered by the policy for this agent and workflow: what it may never use is not shown.
      // Templates are not: each URI read through one is decided on its own.
      if (session && req.session && it.kind !== "resource_template" && this.mode === "enforcing") {
        const d = this.sealed.engine.evaluate({
          agent: session.agent,
          workflows: session.workflows,
          session: req.session,
          server: req.server,
          ...(it.kind === "tool"
            ? { method: "tools/call", tool: it.key }
            : it.kind === "prompt"
              ? { method: "prompts/get", prompt: it.key }
              : { method: "resources/read", resource: it.key.slice(0, 1024) }),
        });
        if (d.outcome === "deny") continue;
      }
      out.push(it);
    }
    return out;
  }

  async #recordDrift(e: DriftEvent): Promise<void> {
    const item = e.item;
    const target =
      item === undefined
        ? {}
        : item.kind === "tool"
          ? { tool: item.key.slice(0, 1024) }
          : item.kind === "prompt"
            ? { prompt: item.key.slice(0, 1024) }
            : { resource: item.key.slice(0, 1024) };
    await this.chain.append({
      type: "drift",
      subject: {
        server: e.server,
        ...(e.session !== undefined ? { session: e.session } : {}),
        ...target,
      },
      data: {
        kind: e.kind,
        ...(item !== undefined ? { item_kind: item.kind } : {}),
        action: e.action,
        applied: e.applied,
        changes: e.changes as unknown as Record<string, unknown>[],
      } as Record<string, unknown>,
    });
  }

  async #recordApproval(view: PendingView, s: ApprovalSettlement): Promise<number> {
    const b = view.binding;
    // As the decision receipt names it, so a verifier can match the statement's target (subscribe, complete too).
    const target = this.#approvalTargets.get(b.approval_id) ?? {};
    this.#approvalTargets.delete(b.approval_id);
    const appended = await this.chain.append({
      type: "approval",
      subject: {
        session: b.session,
        agent: view.agent,
        server: b.server,
        method: b.method,
        request_id: b.request_id,
        ...target,
      },
      hashes: { arguments: b.arguments_hash },
      data: {
        approval_id: b.approval_id,
        decision: s.kind,
        approver: "approver" in s ? s.approver : null,
        // The approver's signed statement, so an auditor can check who answered.
        statement: "statement" in s ? (s.statement as unknown as Record<string, unknown>) : null,
      },
    });
    return appended.seq;
  }

  #record(type: "enforcement", data: Record<string, unknown>): void {
    this.chain.append({ type, subject: {}, data }).catch((err: unknown) => {
      this.#log(`could not record ${type}: ${(err as Error).message}`);
    });
  }

  #runtimeConfig = async (): Promise<RuntimeConfig> => {
    const c = this.config;
    const tls = c.tls
      ? { cert: await readFile(c.tls.cert_file, "utf8"), key: await readFile(c.tls.key_file, "utf8") }
      : undefined;
    return {
      listen: { host: c.listen.host, port: this.#boundPort ?? c.listen.port },
      ...(tls ? { tls } : {}),
      agents: c.agents,
      upstreams: this.#connectable(),
      ...(this.guard
        ? { catalog: { relistMs: this.sealed.artifact.enforcement.measurement_interval_seconds * 1000 } }
        : {}),
      collision: c.collision,
      limits: {
        maxBodyBytes: c.limits.max_body_bytes,
        governorTimeoutMs: c.limits.governor_timeout_ms,
        maxSessions: c.limits.max_sessions,
        sessionIdleMs: c.limits.session_idle_seconds * 1000,
      },
      dev: c.dev,
    };
  };

  #handlers(): Handlers {
    return {
      hello: async () => ({ config: await this.#runtimeConfig() }),
      listening: async ({ url, port }) => {
        this.#endpoint = url;
        // A restarted runtime binds the same port, so agents reconnect to the same URL even with port 0.
        this.#boundPort ??= port;
        for (const w of this.#endpointWaiters.splice(0)) w(url);
        return { ok: true };
      },
      session_opened: async ({ session, agent }) => {
        if (this.#draining) return { accept: false, reason: "gateway is shutting down" };
        if (this.chain.failed)
          return { accept: false, reason: "evidence chain has failed; refusing all calls" };
        const workflows = this.config.agents.find((a) => a.name === agent)?.workflows ?? [];
        this.#sessions.set(session, { agent, workflows, calls: 0 });
        return { accept: true };
      },
      session_closed: async ({ session }) => {
        this.#sessions.delete(session);
        return { ok: true };
      },
      decide: (req) => this.#decide(req),
      await_approval: async ({ session, approval_id }) => this.approvals.wait(session, approval_id),
      inspect: (req) => this.#inspect(req),
      catalog_observed: async (req) => {
        const expose = this.guard ? await this.#expose(req) : undefined;
        const prev = this.#upstreams.get(req.server);
        const count = (k: ListedKind, before: number | undefined) =>
          req.listed.includes(k) ? (req[k]?.length ?? 0) : (before ?? 0);
        this.#upstreams.set(req.server, {
          tools: count("tools", prev?.tools),
          resources: count("resources", prev?.resources),
          prompts: count("prompts", prev?.prompts),
          last_event: prev?.last_event ?? null,
        });
        if (!expose) return { ok: true };
        return this.guard!.isolated(req.server) ? { ok: true, expose, isolated: true } : { ok: true, expose };
      },
      upstream_event: async (req) => {
        const entry = this.#upstreams.get(req.server) ?? {
          tools: 0,
          resources: 0,
          prompts: 0,
          last_event: null,
        };
        entry.last_event = `${req.event}${req.detail ? `: ${req.detail}` : ""}`.slice(0, 300);
        this.#upstreams.set(req.server, entry);
        if (req.event !== "connected") this.#log(`upstream ${req.server}: ${entry.last_event}`);
        return { ok: true };
      },
    };
  }

  async #decide(req: Bodies["decide"]["req"]): Promise<Bodies["decide"]["rep"]> {
    const session = this.#sessions.get(req.session);
    // The agent identity is the one the runtime authenticated when the session opened, not what a later frame says.
    if (!session || session.agent !== req.agent) {
      throw new CmcpError(
        "governor.unknown-session",
        `session ${req.session.slice(0, 64)} was not opened by agent ${req.agent.slice(0, 64)}`,
      );
    }
    const { failClosed, redact, ...decision } = this.#policyDecision(req, session);
    const argumentsHash = hashOrRefuse(req.params, "governor.bad-params", "parameters");
    const appended = await this.chain.append({
      type: "decision",
      subject: {
        session: req.session,
        agent: req.agent,
        server: req.server,
        method: req.method,
        request_id: req.request_id,
        ...(req.tool !== undefined ? { tool: req.tool } : {}),
        ...(req.resource !== undefined ? { resource: req.resource } : {}),
        ...(req.prompt !== undefined ? { prompt: req.prompt } : {}),
        ...(session.workflows.length > 0 ? { workflow: session.workflows.join(",").slice(0, 1024) } : {}),
      },
      decision,
      hashes: { arguments: argumentsHash },
      ...(redact.length > 0 ? { data: { redact } } : {}),
    });
    const blocks = decision.outcome === "deny" || decision.outcome === "require_approval";
    // A fail-closed decision (no valid policy to run) blocks in every mode.
    const allow = !blocks || (this.mode !== "enforcing" && !failClosed);
    const reply = {
      allow,
      outcome: decision.outcome,
      reasons: decision.reasons,
      seq: appended.seq,
      notify: allow && decision.outcome !== "allow" && this.mode !== "silent",
      enforced: this.mode === "enforcing",
      // Redaction is enforcement: applied in enforcing mode only, like blocking.
      ...(redact.length > 0 && this.mode === "enforcing" ? { redact } : {}),
      // The runtime stops listing a server isolated after drift instead of being refused at every cadence.
      ...(!allow && this.guard?.isolated(req.server) ? { isolated: true } : {}),
    };
    if (allow || decision.outcome !== "require_approval") return reply;
    const pending = this.approvals.open(
      {
        session: req.session,
        request_id: req.request_id,
        server: req.server,
        target: req.tool ?? req.resource ?? req.prompt ?? req.method,
        method: req.method,
        arguments_hash: argumentsHash,
      },
      { agent: req.agent, workflows: session.workflows },
      decision.reasons,
      req.params,
    );
    if (!pending) return { ...reply, reasons: [...reply.reasons, "too many calls are waiting for approval"] };
    this.#approvalTargets.set(pending.approval_id, {
      ...(req.tool !== undefined ? { tool: req.tool } : {}),
      ...(req.resource !== undefined ? { resource: req.resource } : {}),
      ...(req.prompt !== undefined ? { prompt: req.prompt } : {}),
    });
    this.#log(
      `call held for approval ${pending.approval_id}: ${req.method} ${pending.binding.target} on ${req.server} (cmcp approvals; cmcp approve ${pending.approval_id})`,
    );
    return { ...reply, hold: { approval_id: pending.approval_id, hold_ms: this.approvals.holdMs } };
  }

  #policyDecision(
    req: Bodies["decide"]["req"],
    session: { workflows: readonly string[]; calls: number },
  ): {
    outcome: DecisionOutcome;
    reasons: string[];
    policy_ids: string[];
    redact: string[];
    failClosed: boolean;
  } {
    const now = new Date();
    if (artifactExpired(this.sealed.artifact, now)) {
      return {
        outcome: "deny",
        reasons: [
          `policy artifact expired at ${this.sealed.artifact.expires}; a new sealed artifact and a restart are needed`,
        ],
        policy_ids: [],
        redact: [],
        failClosed: true,
      };
    }
    const refusal = this.#catalogRefusal(req);
    if (refusal !== null) {
      session.calls++;
      return { outcome: "deny", reasons: [refusal], policy_ids: [], redact: [], failClosed: false };
    }
    const d = this.sealed.engine.evaluate({
      agent: req.agent,
      workflows: session.workflows,
      session: req.session,
      server: req.server,
      method: req.method,
      ...(req.tool !== undefined ? { tool: req.tool } : {}),
      ...(req.resource !== undefined ? { resource: req.resource } : {}),
      ...(req.prompt !== undefined ? { prompt: req.prompt } : {}),
      context: { time: now, session_calls: session.calls },
    });
    session.calls++;
    // Data classes need the data-inspection stage, which is not built: a redaction that cannot run refuses the call.
    const classes = d.redact.filter((t) => t.startsWith("class:"));
    if (classes.length > 0 && this.mode === "enforcing" && d.outcome !== "deny") {
      return {
        outcome: "deny",
        reasons: [
          `redaction of ${classes.join(", ")} cannot run (data classification is not available), so the call is refused`,
          ...d.reasons,
        ],
        policy_ids: d.policy_ids,
        redact: d.redact,
        failClosed: true,
      };
    }
    return {
      outcome: d.outcome,
      reasons: d.reasons,
      policy_ids: d.policy_ids,
      redact: d.redact,
      failClosed: d.errors.length > 0,
    };
  }

  /** The approved catalog's verdict: an isolated server, a tool outside the catalog or drifted, bad arguments. */
  #catalogRefusal(req: Bodies["decide"]["req"]): string | null {
    const guard = this.guard;
    if (!guard) return null;
    const target = catalogTarget(req);
    if (target && "refused" in target) return target.refused;
    const refused = guard.refusal(req.server, target);
    if (refused !== null || target?.kind !== "tool") return refused;
    return guard.argumentsProblem(
      req.server,
      target.key,
      (req.params as { arguments?: unknown } | null)?.arguments,
    );
  }

  async #inspect(req: Bodies["inspect"]["req"]): Promise<Bodies["inspect"]["rep"]> {
    if (!this.#sessions.has(req.session)) {
      throw new CmcpError("governor.unknown-session", `session ${req.session.slice(0, 64)} is not open`);
    }
    const responseHash = hashOrRefuse(req.payload, "governor.bad-payload", "payload");
    const appended = await this.chain.append({
      type: "response_inspection",
      subject: {
        session: req.session,
        agent: this.#sessions.get(req.session)!.agent,
        server: req.server,
        method: req.method,
        ...(req.request_id !== undefined ? { request_id: req.request_id } : {}),
      },
      hashes: { response: responseHash },
      data: { kind: req.kind, action: "pass" },
    });
    // Inspection is a pass-through until the data-inspection issue lands; every payload is still hashed and recorded.
    return { action: "pass", seq: appended.seq };
  }
}

/**
 * The catalog item a request reaches, read from what the upstream will receive (the params), not from
 * the runtime's labels: a label that disagrees with the params is itself a refusal. Completions name
 * theirs in the ref.
 */
export function catalogTarget(
  req: Bodies["decide"]["req"],
): { kind: DefinitionKind; key: string } | { refused: string } | undefined {
  const params = (req.params ?? {}) as Record<string, unknown>;
  const named = (field: "name" | "uri", label: string | undefined, what: string) => {
    const v = params[field];
    if (typeof v !== "string") return { refused: `${req.method} without a string ${field}` };
    // Labels are capped at 1024 characters on the boundary.
    if (label !== undefined && label !== v.slice(0, 1024))
      return { refused: `${req.method}: the ${what} label does not match the request's ${field}` };
    return v;
  };
  switch (req.method) {
    case "tools/call":
    case "prompts/get": {
      const kind = req.method === "tools/call" ? "tool" : "prompt";
      const v = named("name", kind === "tool" ? (req.tool ?? "") : (req.prompt ?? ""), kind);
      return typeof v === "string" ? { kind, key: v } : v;
    }
    case "resources/read":
    case "resources/subscribe":
    case "resources/unsubscribe": {
      const v = named("uri", req.resource, "resource");
      return typeof v === "string" ? { kind: "resource", key: v } : v;
    }
    case "completion/complete": {
      const ref = params.ref as { type?: unknown; name?: unknown; uri?: unknown } | null | undefined;
      if (ref?.type === "ref/prompt" && typeof ref.name === "string")
        return { kind: "prompt", key: ref.name };
      // The URI or URI template of a resource.
      if (ref?.type === "ref/resource" && typeof ref.uri === "string")
        return { kind: "resource_template", key: ref.uri };
      return { refused: "completion/complete without a prompt or resource reference" };
    }
    default:
      return undefined;
  }
}

/** The hash a receipt records; a value that cannot be canonicalized refuses the call (it never passes unrecorded). */
function hashOrRefuse(value: unknown, code: string, what: string): string {
  try {
    return payloadHash(value ?? null);
  } catch (err) {
    throw new CmcpError(
      code,
      `${what} cannot be canonicalized: ${isCmcpError(err) ? err.message : String(err)}`,
    );
  }
}
