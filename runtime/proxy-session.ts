/**
 * One agent session: an MCP server facing the agent, and one MCP client per
 * upstream (per session, so a server-to-client request such as sampling
 * always reaches the agent whose call caused it). Every request forwarded to
 * an upstream is decided by the governor first, and every payload that comes
 * back goes through the governor's inspection before the agent sees it.
 */
import { Server } from "@modelcontextprotocol/sdk/server/index.js";
import type { Transport } from "@modelcontextprotocol/sdk/shared/transport.js";
import {
  CallToolRequestSchema,
  McpError,
  CancelTaskRequestSchema,
  CompleteRequestSchema,
  GetTaskPayloadRequestSchema,
  GetTaskRequestSchema,
  ListTasksRequestSchema,
  GetPromptRequestSchema,
  ListPromptsRequestSchema,
  ListResourcesRequestSchema,
  ListResourceTemplatesRequestSchema,
  ListToolsRequestSchema,
  ReadResourceRequestSchema,
  ResultSchema,
  SetLevelRequestSchema,
  SubscribeRequestSchema,
  UnsubscribeRequestSchema,
  type ClientCapabilities,
  type RequestId,
  type ServerNotification,
} from "@modelcontextprotocol/sdk/types.js";
import type {
  Bodies,
  GovernorClient,
  ListedKind,
  RuntimeConfig,
  UpstreamSpec,
} from "../governor/boundary.js";
import { redactArguments, redactResult } from "./redaction.js";
import { rpcError, RpcCode, toRpcError } from "./rpc-errors.js";
import { UpstreamConnection } from "./upstream-connector.js";
import { compileTemplate, templateCovers, type TemplateSteps } from "./uri-template.js";
import type { UpstreamPool } from "./upstream-pool.js";

type Json = Record<string, unknown>;
type Decided = Bodies["decide"]["rep"];
const APPROVAL_PROGRESS_MS = 5000;
type Extra = {
  signal: AbortSignal;
  requestId: RequestId;
  _meta?: { progressToken?: string | number };
  sendNotification: (n: ServerNotification) => Promise<void>;
};

export interface SessionContext {
  id: string;
  agent: string;
  transport: "streamable-http" | "sse" | "stdio";
  config: RuntimeConfig;
  gov: GovernorClient;
  log: (line: string) => void;
  version: string;
  /** Shared connections for upstreams configured as stateless. */
  pool: UpstreamPool;
}

/** Pages fetched per upstream list call before the listing is treated as hostile. */
const MAX_LIST_PAGES = 100;
/** Items per upstream reported to the governor (the boundary's limit). */
const MAX_CATALOG_ITEMS = 10_000;
/** Longer tool and prompt names are not exposed: receipts and the boundary cap names at this length. */
const MAX_NAME_LENGTH = 1024;

/** The URIs and URI templates of served resource definitions, as one comparable string. */
function keysOf(defs: readonly Json[]): string {
  return defs
    .map((d) => String(d.uri ?? d.uriTemplate))
    .sort()
    .join("\n");
}

/** A JSON-RPC id as receipts name it: never empty (an id of "" is legal JSON-RPC). */
function requestLabel(id: RequestId): string {
  const text = String(id);
  return text === "" ? '""' : text.slice(0, 1024);
}

interface Binding {
  server: string;
  name: string;
}

interface ResourceIndex {
  resources: Map<string, string>;
  templates: { server: string; key: string; steps: TemplateSteps }[];
  /** With a catalog: the approved definitions served (the governor's answer); unused without one. */
  served: { resources: Json[]; templates: Json[] };
}

type RelistKind = "tools" | "prompts" | "resources";
const ALL_KINDS: readonly RelistKind[] = ["tools", "prompts", "resources"];

/** The list_changed notification of each kind, upstream and to the agent. */
const LIST_CHANGED: Record<string, RelistKind> = {
  "notifications/tools/list_changed": "tools",
  "notifications/prompts/list_changed": "prompts",
  "notifications/resources/list_changed": "resources",
};

export class ProxySession {
  readonly id: string;
  readonly agent: string;
  readonly server: Server;
  readonly #ctx: SessionContext;
  readonly #specs: Map<string, UpstreamSpec>;
  readonly #upstreams = new Map<string, Promise<UpstreamConnection>>();
  /** Agent request ids in flight per upstream, newest last: where a server-to-client request is related. */
  readonly #inflight = new Map<string, RequestId[]>();
  #opened: Promise<void> | null = null;
  #tools: Map<string, Binding> | null = null;
  #prompts: Map<string, Binding> | null = null;
  #resourceIdx: ResourceIndex | null = null;
  /** Bumped by every invalidation, so a listing that started before one does not overwrite what follows it. */
  #generation = 0;
  /** Servers the governor isolated after drift: this session no longer lists or reaches them. */
  readonly #isolated = new Set<string>();
  #closed = false;
  #relistTimer: NodeJS.Timeout | undefined;
  readonly #relisting = new Set<RelistKind>();
  readonly #relistAgain = new Set<RelistKind>();
  #relists = 0;
  #unsubscribe: () => void = () => undefined;
  /** Which upstream created each task this agent started: tasks/* go back to it. */
  readonly #tasks = new Map<string, string>();
  onClosed: () => void = () => undefined;

  constructor(ctx: SessionContext) {
    this.#ctx = ctx;
    this.id = ctx.id;
    this.agent = ctx.agent;
    this.#specs = new Map(ctx.config.upstreams.map((u) => [u.name, u]));
    this.server = new Server(
      { name: "cmcp", version: ctx.version },
      {
        capabilities: {
          tools: { listChanged: true },
          resources: { subscribe: true, listChanged: true },
          prompts: { listChanged: true },
          logging: {},
          completions: {},
          // Task-augmented tool calls pass through to upstreams that run them as tasks.
          tasks: { list: {}, cancel: {}, requests: { tools: { call: {} } } },
        },
        instructions:
          "cmcp gateway: every call is decided by policy and recorded as a signed receipt before it reaches a tool server.",
      },
    );
    this.#registerHandlers();
    this.server.oninitialized = () => void this.#open().catch(() => undefined);
    const relistMs = ctx.config.catalog?.relistMs;
    if (relistMs !== undefined) {
      this.#relistTimer = setInterval(() => void this.#relist(ALL_KINDS), relistMs);
      this.#relistTimer.unref();
    }
    this.server.onclose = () => void this.close("agent transport closed");
    this.#unsubscribe = ctx.pool.subscribe({
      onListChanged: (server, method) => {
        this.#invalidate();
        const kind = LIST_CHANGED[method];
        if (ctx.config.catalog && kind) void this.#relist([kind]);
        void this.server.notification({ method } as never).catch(() => undefined);
        void ctx.gov
          .upstreamEvent({ server, session: this.id, event: "list_changed", detail: method })
          .catch(() => undefined);
      },
      onDisconnected: () => this.#invalidate(),
    });
  }

  connect(transport: Transport): Promise<void> {
    return this.server.connect(transport);
  }

  /** Registers the session with the governor once; every handler waits for it. */
  #open(): Promise<void> {
    this.#opened ??= (async () => {
      const client = this.server.getClientVersion();
      const reply = await this.#ctx.gov.sessionOpened({
        session: this.id,
        agent: this.agent,
        transport: this.#ctx.transport,
        ...(client?.name ? { client_name: client.name.slice(0, 1024) } : {}),
        ...(client?.version ? { client_version: client.version.slice(0, 1024) } : {}),
      });
      if (!reply.accept)
        throw rpcError(RpcCode.sessionRefused, `session refused: ${reply.reason ?? "by the governor"}`);
    })();
    return this.#opened;
  }

  #capabilitiesFor(spec: UpstreamSpec): ClientCapabilities {
    const agent = this.server.getClientCapabilities() ?? {};
    return {
      ...(agent.sampling ? { sampling: agent.sampling } : {}),
      ...(agent.elicitation ? { elicitation: agent.elicitation } : {}),
      // Roots are governed: an upstream sees the roots the operator configured for it, never the agent's.
      ...(spec.roots ? { roots: { listChanged: false } } : {}),
    };
  }

  #upstream(name: string): Promise<UpstreamConnection> {
    const spec = this.#specs.get(name);
    if (!spec) return Promise.reject(rpcError(RpcCode.unknownTarget, `no upstream named ${name}`));
    if (this.#isolated.has(name))
      return Promise.reject(rpcError(RpcCode.denied, `upstream ${name} is isolated after drift`));
    let conn = this.#upstreams.get(name);
    if (!conn && spec.stateless) {
      // Deciding the connect per session keeps "nothing reaches an upstream undecided" true for pooled ones too.
      conn = this.#decide(name, "initialize", { pooled: true }, `connect:${name}`, {}).then(() =>
        this.#ctx.pool.get(spec),
      );
      // Not cached: the pool owns the connection and reconnects it; each session re-asks, which is cheap.
      return conn;
    }
    if (!conn) {
      const capabilities = this.#capabilitiesFor(spec);
      // Connecting sends initialize to the upstream (and spawns a stdio server): decided like any request.
      conn = this.#decide(name, "initialize", { capabilities }, `connect:${name}`, {}).then(() =>
        UpstreamConnection.connect(spec, {
          clientInfo: { name: "cmcp", version: this.#ctx.version },
          capabilities,
          handlers: {
            onRequest: (method, params, extra) => this.#fromUpstream(spec, method, params, extra.signal),
            onNotification: (method, params) => void this.#upstreamNotification(spec.name, method, params),
            onClose: (reason) => {
              this.#upstreams.delete(name);
              this.#invalidate();
              void this.#ctx.gov
                .upstreamEvent({
                  server: name,
                  session: this.id,
                  event: "disconnected",
                  detail: reason.slice(0, 4000),
                })
                .catch(() => undefined);
            },
          },
        }),
      );
      this.#upstreams.set(name, conn);
      conn.then(
        (c) =>
          void this.#ctx.gov
            .upstreamEvent({
              server: name,
              session: this.id,
              event: "connected",
              detail:
                `${c.serverInfo?.name ?? "?"} ${c.serverInfo?.version ?? ""} protocol ${c.protocolVersion ?? "?"}`.slice(
                  0,
                  4000,
                ),
            })
            .catch(() => undefined),
        (err: unknown) => {
          this.#upstreams.delete(name);
          void this.#ctx.gov
            .upstreamEvent({
              server: name,
              session: this.id,
              event: "error",
              detail: String((err as Error).message).slice(0, 4000),
            })
            .catch(() => undefined);
        },
      );
    }
    return conn;
  }

  async #decide(
    server: string,
    method: string,
    params: unknown,
    requestId: RequestId,
    target: { tool?: string; resource?: string; prompt?: string },
    extra?: Extra,
  ): Promise<Decided> {
    await this.#open();
    const d = await this.#ctx.gov.decide({
      session: this.id,
      agent: this.agent,
      server,
      method,
      request_id: requestLabel(requestId),
      ...(target.tool !== undefined ? { tool: target.tool } : {}),
      ...(target.resource !== undefined ? { resource: target.resource.slice(0, 1024) } : {}),
      ...(target.prompt !== undefined ? { prompt: target.prompt } : {}),
      params: params ?? null,
    });
    if (!d.allow && d.hold) return this.#hold(d, d.hold, method, target, extra);
    if (!d.allow) {
      if (d.isolated) this.#dropIsolated(server);
      throw rpcError(
        RpcCode.denied,
        `denied by policy (${d.outcome}): ${d.reasons.join("; ") || "no reason given"}`,
        {
          outcome: d.outcome,
          receipt: d.seq,
        },
      );
    }
    return d;
  }

  /**
   * Holds a call the policy sent for approval: the agent's request stays open
   * (with progress notifications when it gave a progress token) until an
   * approver answers or the hold ends.
   */
  async #hold(
    d: Decided,
    hold: { approval_id: string; hold_ms: number },
    method: string,
    target: { tool?: string; resource?: string; prompt?: string },
    extra?: Extra,
  ): Promise<Decided> {
    const what = `${method} ${target.tool ?? target.resource ?? target.prompt ?? ""}`.trim();
    const token = extra?._meta?.progressToken;
    const started = Date.now();
    const notify = (n: ServerNotification) => void extra?.sendNotification(n).catch(() => undefined);
    notify({
      method: "notifications/message",
      params: {
        level: "warning",
        logger: "cmcp",
        data: `${what} is held for approval ${hold.approval_id} (up to ${Math.round(hold.hold_ms / 1000)} s): ${d.reasons.join("; ") || "policy requires approval"}`,
      },
    });
    const ticker =
      token === undefined
        ? undefined
        : setInterval(
            () =>
              notify({
                method: "notifications/progress",
                params: {
                  progressToken: token,
                  progress: Math.round((Date.now() - started) / 1000),
                  total: Math.round(hold.hold_ms / 1000),
                  message: `waiting for approval ${hold.approval_id}`,
                },
              }),
            APPROVAL_PROGRESS_MS,
          );
    let onAbort: (() => void) | undefined;
    try {
      const waited = this.#ctx.gov.awaitApproval(
        { session: this.id, approval_id: hold.approval_id },
        hold.hold_ms,
      );
      const signal = extra?.signal;
      const cancelled = new Promise<never>((_, reject) => {
        onAbort = () => reject(rpcError(RpcCode.cancelled, "cancelled while waiting for approval"));
        if (signal?.aborted) onAbort();
        else signal?.addEventListener("abort", onAbort, { once: true });
      });
      const r = await Promise.race([waited, cancelled]);
      if (r.approved) return { ...d, allow: true };
      throw rpcError(RpcCode.approvalRefused, `${what} was not made: ${r.reason}`, {
        approval_id: hold.approval_id,
        outcome: d.outcome,
        receipt: r.seq,
      });
    } finally {
      if (ticker) clearInterval(ticker);
      if (onAbort) extra?.signal.removeEventListener("abort", onAbort);
    }
  }

  /** What the agent is told of a decision that did not block (advisory mode, or an advisory outcome). */
  #tell(d: Decided, method: string, target: string, extra: Extra, result: Json): Json {
    if (!d.notify) return result;
    const wouldBlock = d.outcome === "deny" || d.outcome === "require_approval";
    const enforced = d.enforced !== false;
    const note = {
      outcome: d.outcome,
      reasons: d.reasons,
      receipt: d.seq,
      would_block: wouldBlock,
      enforced,
    };
    void extra
      .sendNotification({
        method: "notifications/message",
        params: {
          level: "warning",
          logger: "cmcp",
          data: `${method} ${target}: policy outcome "${d.outcome}"${enforced ? "" : " (advisory mode: recorded, not enforced)"}${d.reasons.length ? `: ${d.reasons.join("; ")}` : ""} [receipt ${d.seq}]`,
        },
      })
      .catch(() => undefined);
    const meta = result._meta;
    const base = typeof meta === "object" && meta !== null && !Array.isArray(meta) ? meta : {};
    return { ...result, _meta: { ...base, "cmcp/decision": note } };
  }

  async #inspect(
    server: string,
    method: string,
    requestId: RequestId | undefined,
    kind: "result" | "error" | "notification" | "request" | "reply",
    payload: unknown,
  ): Promise<void> {
    const r = await this.#ctx.gov.inspect({
      session: this.id,
      server,
      method,
      ...(requestId !== undefined ? { request_id: requestLabel(requestId) } : {}),
      kind,
      payload: payload ?? null,
    });
    if (r.action === "block")
      throw rpcError(RpcCode.blocked, `response blocked by inspection: ${r.reason ?? "no reason given"}`);
  }

  /** Decide, forward, inspect: the one path from an agent request to an upstream and back. */
  async #forward(
    server: string,
    method: string,
    params: Json,
    extra: Extra,
    target: { tool?: string; resource?: string; prompt?: string } = {},
  ): Promise<Json> {
    try {
      const decided = await this.#decide(server, method, params, extra.requestId, target, extra);
      const up = await this.#upstream(server);
      const token = extra._meta?.progressToken;
      const { _meta, ...given } = params as Json & { _meta?: Json };
      const redact = decided.redact ?? [];
      const rest = redact.length > 0 ? redactArguments(given, redact) : given;
      const meta = _meta
        ? Object.fromEntries(Object.entries(_meta).filter(([k]) => k !== "progressToken"))
        : undefined;
      const list = this.#inflight.get(server) ?? [];
      list.push(extra.requestId);
      this.#inflight.set(server, list);
      let result: Json;
      try {
        result = await up.request(
          method,
          meta && Object.keys(meta).length ? { ...rest, _meta: meta } : rest,
          {
            signal: extra.signal,
            ...(token !== undefined
              ? {
                  onprogress: (p) =>
                    void extra
                      .sendNotification({
                        method: "notifications/progress",
                        params: { progressToken: token, ...p },
                      })
                      .catch(() => undefined),
                }
              : {}),
          },
        );
      } catch (err) {
        const e = toRpcError(err, server);
        // Upstream errors carry upstream text to the agent too: they pass inspection like results.
        await this.#inspect(server, method, extra.requestId, "error", {
          code: e.code,
          message: e.message,
          data: e.data ?? null,
        });
        throw e;
      } finally {
        const i = list.indexOf(extra.requestId);
        if (i >= 0) list.splice(i, 1);
      }
      await this.#inspect(server, method, extra.requestId, "result", result);
      if (redact.length > 0) result = redactResult(result, redact);
      return this.#tell(
        decided,
        method,
        target.tool ?? target.resource ?? target.prompt ?? server,
        extra,
        result,
      );
    } catch (err) {
      throw toRpcError(err, server);
    }
  }

  /** Lists every page of one upstream's listing, decided and inspected like any request. */
  async #listAll(server: string, method: string, key: string, extra: Extra): Promise<Json[]> {
    const out: Json[] = [];
    let cursor: string | undefined;
    for (let page = 0; page < MAX_LIST_PAGES; page++) {
      const result = await this.#forward(server, method, cursor ? { cursor } : {}, extra);
      const items = result[key];
      if (Array.isArray(items)) out.push(...(items as Json[]));
      cursor = typeof result.nextCursor === "string" ? result.nextCursor : undefined;
      if (!cursor) return out;
    }
    throw rpcError(
      RpcCode.upstreamUnavailable,
      `upstream ${server} returned more than ${MAX_LIST_PAGES} pages of ${key}`,
    );
  }

  /** Upstreams that advertise a capability, in configuration order (never arrival order). */
  async #serversWith(
    capability: "tools" | "resources" | "prompts" | "logging" | "completions",
  ): Promise<string[]> {
    const names = [...this.#specs.keys()].filter((n) => !this.#isolated.has(n));
    const conns = await Promise.allSettled(names.map((n) => this.#upstream(n)));
    return names.filter((_, i) => {
      const c = conns[i]!;
      return c.status === "fulfilled" && c.value.serverCapabilities?.[capability] !== undefined;
    });
  }

  /**
   * Reports one upstream's live listings to the governor, which compares them
   * with the approved catalog and answers with what to expose. An isolated
   * server is dropped from this session.
   */
  async #observed(
    server: string,
    lists: Partial<Record<ListedKind, Json[]>>,
  ): Promise<NonNullable<Bodies["catalog_observed"]["rep"]["expose"]>> {
    const listed = Object.keys(lists) as ListedKind[];
    const r = await this.#ctx.gov.catalogObserved({
      server,
      ...(this.#ctx.config.catalog ? { session: this.id } : {}),
      listed,
      ...Object.fromEntries(listed.map((k) => [k, lists[k]!.slice(0, MAX_CATALOG_ITEMS)])),
    });
    if (r.isolated) this.#dropIsolated(server);
    return r.expose ?? [];
  }

  /** #observed for one server of a listing: its failure leaves that server out, not the whole listing. */
  async #observedOrNone(
    server: string,
    lists: Partial<Record<ListedKind, Json[]>>,
  ): Promise<NonNullable<Bodies["catalog_observed"]["rep"]["expose"]>> {
    try {
      return await this.#observed(server, lists);
    } catch (err) {
      this.#ctx.log(
        `the catalog check of ${server}'s listing failed, so nothing of it is offered: ${(err as Error).message}`,
      );
      return [];
    }
  }

  /** The governor isolated this server after drift: stop listing it, close its connection, tell the agent. */
  #dropIsolated(server: string): void {
    if (this.#isolated.has(server)) return;
    this.#isolated.add(server);
    const conn = this.#upstreams.get(server);
    this.#upstreams.delete(server);
    void conn?.then((c) => c.close()).catch(() => undefined);
    this.#invalidate();
    for (const kind of ALL_KINDS)
      void this.server
        .notification({ method: `notifications/${kind}/list_changed` } as never)
        .catch(() => undefined);
  }

  /**
   * Aggregates one kind of named item across upstreams. A name offered by one
   * upstream passes unchanged; a name offered by several is exposed as
   * `server.name` (collision "prefix") or not at all ("refuse").
   */
  async #aggregate(
    capability: "tools" | "prompts",
    method: string,
    key: string,
    extra: Extra,
  ): Promise<{ items: Json[]; bindings: Map<string, Binding> }> {
    const servers = await this.#serversWith(capability);
    const lists = await Promise.all(
      servers.map((s) =>
        this.#listAll(s, method, key, extra).then(
          (items) => ({ server: s, items, listed: true }),
          (err: unknown) => {
            this.#ctx.log(`listing ${key} of ${s} failed: ${(err as Error).message}`);
            return { server: s, items: [] as Json[], listed: false };
          },
        ),
      ),
    );
    const bindings = new Map<string, Binding>();
    const exposed: Json[] = [];
    if (this.#ctx.config.catalog) {
      // An approved catalog decides: agents see its definitions under its names, whatever the upstream says now.
      const kind = capability === "tools" ? "tool" : "prompt";
      for (const { server, items, listed } of lists) {
        // A failed listing says nothing about drift: that server's items are just not offered this time.
        if (!listed) continue;
        for (const e of await this.#observedOrNone(server, { [capability]: items })) {
          if (e.kind !== kind) continue;
          bindings.set(e.name, { server, name: e.key });
          exposed.push({ ...e.definition, name: e.name });
        }
      }
      return { items: exposed, bindings };
    }
    const count = new Map<string, number>();
    for (const { items } of lists)
      for (const it of items) count.set(String(it.name), (count.get(String(it.name)) ?? 0) + 1);
    for (const { server, items } of lists) {
      for (const it of items) {
        const name = String(it.name);
        if (name.length === 0 || name.length + server.length + 1 > MAX_NAME_LENGTH) {
          this.#ctx.log(
            `upstream ${server} offers a ${key.slice(0, -1)} with an empty or over-long name; not exposed`,
          );
          continue;
        }
        if ((count.get(name) ?? 0) > 1) {
          void this.#ctx.gov
            .upstreamEvent({
              server,
              session: this.id,
              event: "collision",
              detail: `${key.slice(0, -1)} "${name.slice(0, 200)}" is offered by several upstreams (${this.#ctx.config.collision})`,
            })
            .catch(() => undefined);
          if (this.#ctx.config.collision === "refuse") continue;
          const alias = `${server}.${name}`;
          bindings.set(alias, { server, name });
          exposed.push({ ...it, name: alias });
        } else {
          bindings.set(name, { server, name });
          exposed.push(it);
        }
      }
      if (key === "tools") void this.#observed(server, { tools: items }).catch(() => undefined);
    }
    return { items: exposed, bindings };
  }

  /** Where each resource URI and template goes; with a catalog, also what is served. Rebuilt when invalidated. */
  async #resourceIndex(extra: Extra): Promise<ResourceIndex> {
    if (this.#resourceIdx) return this.#resourceIdx;
    const generation = this.#generation;
    const servers = await this.#serversWith("resources");
    const idx: ResourceIndex = {
      resources: new Map(),
      templates: [],
      served: { resources: [], templates: [] },
    };
    const addTemplate = (server: string, key: string) => {
      const steps = compileTemplate(key);
      if (steps) idx.templates.push({ server, key, steps });
      else this.#ctx.log(`upstream ${server} offers an unparsable resource template`);
      return steps !== null;
    };
    for (const s of servers) {
      const [rs, ts] = await Promise.all([
        this.#listAll(s, "resources/list", "resources", extra).catch(() => null),
        this.#listAll(s, "resources/templates/list", "resourceTemplates", extra).catch(() => null),
      ]);
      if (this.#ctx.config.catalog) {
        // Served from the catalog: the governor compares the live listings and answers with what is approved.
        if (!rs && !ts) continue;
        const lists: Partial<Record<ListedKind, Json[]>> = {
          ...(rs ? { resources: rs } : {}),
          ...(ts ? { resource_templates: ts } : {}),
        };
        for (const e of await this.#observedOrNone(s, lists)) {
          if (e.kind === "resource" && !idx.resources.has(e.key)) {
            idx.resources.set(e.key, s);
            idx.served.resources.push(e.definition);
          } else if (e.kind === "resource_template" && addTemplate(s, e.key)) {
            idx.served.templates.push(e.definition);
          }
        }
        continue;
      }
      for (const r of rs ?? [])
        if (typeof r.uri === "string" && !idx.resources.has(r.uri)) idx.resources.set(r.uri, s);
      for (const t of ts ?? []) if (typeof t.uriTemplate === "string") addTemplate(s, t.uriTemplate);
    }
    // Kept only if nothing was invalidated meanwhile; the caller still gets this answer.
    if (generation === this.#generation) this.#resourceIdx = idx;
    return idx;
  }

  async #serverForUri(uri: string, extra: Extra): Promise<string> {
    const idx = await this.#resourceIndex(extra);
    const direct = idx.resources.get(uri);
    if (direct) return direct;
    // A completion may name the template itself; a read names a URI one covers.
    for (const t of idx.templates) if (t.key === uri || templateCovers(t.steps, uri)) return t.server;
    throw rpcError(RpcCode.unknownTarget, `no upstream offers resource ${uri.slice(0, 200)}`);
  }

  #invalidate(): void {
    this.#generation++;
    this.#tools = null;
    this.#prompts = null;
    this.#resourceIdx = null;
  }

  #registerHandlers(): void {
    const s = this.server;
    s.setRequestHandler(ListToolsRequestSchema, async (_req, extra) => {
      const { items, bindings } = await this.#aggregate("tools", "tools/list", "tools", extra as Extra);
      this.#tools = bindings;
      return { tools: items } as never;
    });
    s.setRequestHandler(CallToolRequestSchema, async (req, extra) => {
      if (!this.#tools)
        this.#tools = (await this.#aggregate("tools", "tools/list", "tools", extra as Extra)).bindings;
      const b = this.#tools.get(req.params.name);
      if (!b) throw rpcError(RpcCode.unknownTarget, `unknown tool: ${req.params.name.slice(0, 200)}`);
      let result: Json;
      try {
        result = await this.#forward(
          b.server,
          "tools/call",
          { ...req.params, name: b.name },
          extra as Extra,
          {
            tool: b.name,
          },
        );
      } catch (err) {
        // A refused or unanswered approval is an answer, not a failure: the model reads why.
        if (err instanceof McpError && err.code === RpcCode.approvalRefused)
          return {
            isError: true,
            content: [{ type: "text", text: err.message.replace(/^MCP error -?\d+: /, "") }],
            _meta: { "cmcp/approval": err.data },
          } as never;
        throw err;
      }
      const task = (result as { task?: { taskId?: unknown } }).task;
      if (typeof task?.taskId === "string") this.#tasks.set(task.taskId, b.server);
      return result as never;
    });
    s.setRequestHandler(ListPromptsRequestSchema, async (_req, extra) => {
      const { items, bindings } = await this.#aggregate("prompts", "prompts/list", "prompts", extra as Extra);
      this.#prompts = bindings;
      return { prompts: items } as never;
    });
    s.setRequestHandler(GetPromptRequestSchema, async (req, extra) => {
      if (!this.#prompts)
        this.#prompts = (
          await this.#aggregate("prompts", "prompts/list", "prompts", extra as Extra)
        ).bindings;
      const b = this.#prompts.get(req.params.name);
      if (!b) throw rpcError(RpcCode.unknownTarget, `unknown prompt: ${req.params.name.slice(0, 200)}`);
      return (await this.#forward(b.server, "prompts/get", { ...req.params, name: b.name }, extra as Extra, {
        prompt: b.name,
      })) as never;
    });
    s.setRequestHandler(ListResourcesRequestSchema, async (_req, extra) => {
      if (this.#ctx.config.catalog) {
        this.#resourceIdx = null;
        return { resources: (await this.#resourceIndex(extra as Extra)).served.resources } as never;
      }
      const servers = await this.#serversWith("resources");
      const all: Json[] = [];
      for (const sv of servers)
        all.push(...(await this.#listAll(sv, "resources/list", "resources", extra as Extra).catch(() => [])));
      return { resources: all } as never;
    });
    s.setRequestHandler(ListResourceTemplatesRequestSchema, async (_req, extra) => {
      if (this.#ctx.config.catalog) {
        this.#resourceIdx = null;
        return { resourceTemplates: (await this.#resourceIndex(extra as Extra)).served.templates } as never;
      }
      const servers = await this.#serversWith("resources");
      const all: Json[] = [];
      for (const sv of servers) {
        all.push(
          ...(await this.#listAll(sv, "resources/templates/list", "resourceTemplates", extra as Extra).catch(
            () => [],
          )),
        );
      }
      return { resourceTemplates: all } as never;
    });
    s.setRequestHandler(ReadResourceRequestSchema, async (req, extra) => {
      const server = await this.#serverForUri(req.params.uri, extra as Extra);
      return (await this.#forward(server, "resources/read", req.params as Json, extra as Extra, {
        resource: req.params.uri,
      })) as never;
    });
    s.setRequestHandler(SubscribeRequestSchema, async (req, extra) => {
      const server = await this.#serverForUri(req.params.uri, extra as Extra);
      return (await this.#forward(server, "resources/subscribe", req.params as Json, extra as Extra, {
        resource: req.params.uri,
      })) as never;
    });
    s.setRequestHandler(UnsubscribeRequestSchema, async (req, extra) => {
      const server = await this.#serverForUri(req.params.uri, extra as Extra);
      return (await this.#forward(server, "resources/unsubscribe", req.params as Json, extra as Extra, {
        resource: req.params.uri,
      })) as never;
    });
    s.setRequestHandler(CompleteRequestSchema, async (req, extra) => {
      const ref = req.params.ref as { type: string; name?: string; uri?: string };
      let server: string;
      let params = req.params as Json;
      if (ref.type === "ref/prompt") {
        if (!this.#prompts)
          this.#prompts = (
            await this.#aggregate("prompts", "prompts/list", "prompts", extra as Extra)
          ).bindings;
        const b = this.#prompts.get(String(ref.name));
        if (!b) throw rpcError(RpcCode.unknownTarget, `unknown prompt: ${String(ref.name).slice(0, 200)}`);
        server = b.server;
        params = { ...params, ref: { ...ref, name: b.name } };
      } else {
        server = await this.#serverForUri(String(ref.uri), extra as Extra);
      }
      return (await this.#forward(server, "completion/complete", params, extra as Extra)) as never;
    });
    const taskServer = (taskId: string) => {
      const server = this.#tasks.get(taskId);
      if (!server) throw rpcError(RpcCode.unknownTarget, `unknown task: ${taskId.slice(0, 200)}`);
      return server;
    };
    // tasks/get, tasks/result and tasks/cancel all go back to the upstream that created the task.
    for (const [schema, method] of [
      [GetTaskRequestSchema, "tasks/get"],
      [GetTaskPayloadRequestSchema, "tasks/result"],
      [CancelTaskRequestSchema, "tasks/cancel"],
    ] as const) {
      s.setRequestHandler(schema, async (req, extra) => {
        const params = req.params as Json & { taskId: string };
        return (await this.#forward(taskServer(params.taskId), method, params, extra as Extra)) as never;
      });
    }
    s.setRequestHandler(ListTasksRequestSchema, async (_req, extra) => {
      const names = [...this.#specs.keys()];
      const conns = await Promise.allSettled(names.map((n) => this.#upstream(n)));
      const servers = names.filter((_, i) => {
        const c = conns[i]!;
        return c.status === "fulfilled" && c.value.serverCapabilities?.tasks?.list !== undefined;
      });
      const tasks: Json[] = [];
      for (const sv of servers)
        tasks.push(...(await this.#listAll(sv, "tasks/list", "tasks", extra as Extra).catch(() => [])));
      // Only this session's tasks: an upstream shared by sessions must not reveal another agent's work.
      return { tasks: tasks.filter((t) => this.#tasks.has(String(t.taskId))) } as never;
    });
    s.setRequestHandler(SetLevelRequestSchema, async (req, extra) => {
      const servers = await this.#serversWith("logging");
      await Promise.all(
        servers.map((sv) => this.#forward(sv, "logging/setLevel", req.params as Json, extra as Extra)),
      );
      return {} as never;
    });
  }

  /** Server-to-client requests from an upstream: roots are answered from configuration, the rest go to this agent. */
  async #fromUpstream(
    spec: UpstreamSpec,
    method: string,
    params: unknown,
    signal: AbortSignal,
  ): Promise<Json> {
    if (method === "roots/list") return { roots: spec.roots ?? [] };
    if (method === "ping") return {};
    if (method !== "sampling/createMessage" && method !== "elicitation/create") {
      throw rpcError(-32601, `method ${method} is not relayed by the gateway`);
    }
    const inflight = this.#inflight.get(spec.name) ?? [];
    const related = inflight[inflight.length - 1];
    // What the upstream asks of the agent is decided like a request, and its content is inspected before the agent sees it.
    await this.#decide(spec.name, method, params, `upstream:${String(related ?? "none")}`, {});
    await this.#inspect(spec.name, method, related, "request", params);
    const result = await this.server.request({ method, params: params as Json } as never, ResultSchema, {
      signal,
      ...(related !== undefined ? { relatedRequestId: related } : {}),
    });
    // The agent's answer is content on its way to the upstream: recorded (and blockable) like any payload.
    await this.#inspect(spec.name, method, related, "reply", result);
    return result as Json;
  }

  async #upstreamNotification(server: string, method: string, params: unknown): Promise<void> {
    if (this.#closed) return;
    try {
      if (method === "notifications/progress") return; // progress for our requests is relayed by the request path
      if (method.endsWith("/list_changed")) {
        this.#invalidate();
        await this.#ctx.gov.upstreamEvent({
          server,
          session: this.id,
          event: "list_changed",
          detail: method,
        });
        // With a catalog the change is checked now, not when the agent next lists.
        const kind = LIST_CHANGED[method];
        if (this.#ctx.config.catalog && kind) await this.#relist([kind]);
        await this.server.notification({ method } as never);
        return;
      }
      await this.#inspect(server, method, undefined, "notification", params);
      await this.server.notification({ method, params } as never);
    } catch (err) {
      this.#ctx.log(`notification ${method} from ${server} not relayed: ${(err as Error).message}`);
    }
  }

  /**
   * Lists the upstreams' tools, prompts or resources again so the governor
   * compares them with the approved catalog (drift), and tells the agent when
   * what it may see changed.
   */
  async #relist(kinds: readonly RelistKind[]): Promise<void> {
    for (const kind of kinds) {
      if (this.#closed) return;
      // A change announced during a re-listing gets a re-listing of its own once that one ends.
      if (this.#relisting.has(kind)) {
        this.#relistAgain.add(kind);
        continue;
      }
      this.#relisting.add(kind);
      try {
        do {
          this.#relistAgain.delete(kind);
          await this.#relistOnce(kind);
        } while (this.#relistAgain.has(kind) && !this.#closed);
      } catch (err) {
        this.#ctx.log(`re-listing ${kind} for the catalog check failed: ${(err as Error).message}`);
      } finally {
        this.#relisting.delete(kind);
      }
    }
  }

  async #relistOnce(kind: RelistKind): Promise<void> {
    const n = ++this.#relists;
    const extra: Extra = {
      signal: AbortSignal.timeout(60_000),
      requestId: `cmcp-relist-${n}`,
      sendNotification: async () => undefined,
    };
    const generation = this.#generation;
    let before: string | null;
    let after: string;
    if (kind === "resources") {
      const old = this.#resourceIdx;
      before = old ? keysOf([...old.served.resources, ...old.served.templates]) : null;
      this.#resourceIdx = null;
      const idx = await this.#resourceIndex(extra);
      after = keysOf([...idx.served.resources, ...idx.served.templates]);
    } else {
      const held = kind === "tools" ? this.#tools : this.#prompts;
      before = held ? [...held.keys()].sort().join("\n") : null;
      const { bindings } = await this.#aggregate(kind, `${kind}/list`, kind, extra);
      // An invalidation while listing means this result may be older than the change: leave it unset.
      if (generation === this.#generation) {
        if (kind === "tools") this.#tools = bindings;
        else this.#prompts = bindings;
      }
      after = [...bindings.keys()].sort().join("\n");
    }
    if (before !== null && before !== after)
      await this.server.notification({ method: `notifications/${kind}/list_changed` } as never);
  }

  async close(reason: string): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#relistTimer) clearInterval(this.#relistTimer);
    this.#unsubscribe();
    const conns = [...this.#upstreams.values()];
    this.#upstreams.clear();
    await Promise.allSettled(conns.map((p) => p.then((c) => c.close())));
    if (this.#opened) {
      await this.#opened.then(
        () =>
          this.#ctx.gov
            .sessionClosed({ session: this.id, reason: reason.slice(0, 1024) })
            .catch(() => undefined),
        () => undefined,
      );
    }
    await this.server.close().catch(() => undefined);
    this.onClosed();
  }
}
