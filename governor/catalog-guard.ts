/**
 * The approved catalog at run time, on the governor's side: which upstreams
 * may be connected, which tools agents see (the approved definitions, never
 * the live ones), whether a call's arguments match the pinned input schema,
 * and drift: a live definition or server identity that differs from the pinned
 * one. Each drift is recorded once (per server, tool and live state) and
 * answered with the action the sealed artifact names.
 */
import { Ajv2020, type ValidateFunction } from "ajv/dist/2020.js";
import type { DriftAction } from "../artifacts/policy-artifact.js";
import type { UpstreamSpec } from "./boundary.js";
import {
  catalogIndex,
  computeIdentity,
  definitionHash,
  diffDefinitions,
  identityDiff,
  type Catalog,
  type CatalogIndex,
  type FieldChange,
  type ToolBinding,
} from "./catalog.js";

export type DriftKind = "definition" | "unapproved_tool" | "identity";

export interface DriftEvent {
  kind: DriftKind;
  server: string;
  session?: string;
  tool?: string;
  /** Field-level differences (JSON pointers), capped; for identity, of the identity record. */
  changes: FieldChange[];
  /** What was done about it; quarantine is not built, so it isolates the server instead. */
  action: DriftAction;
  applied: "none" | "tool_denied" | "server_isolated";
}

export interface CatalogGuardOptions {
  onDrift: DriftAction;
  /** Records a drift event durably (a `drift` receipt). */
  record: (event: DriftEvent) => Promise<void>;
  log: (line: string) => void;
}

const MAX_CHANGES = 64;
const MAX_EVENTS_PER_SERVER = 1024;
const MAX_VALUE_CHARS = 512;

/** Keeps a change small enough for a receipt while still naming what moved. */
function clip(changes: FieldChange[]): FieldChange[] {
  const shorten = (v: unknown) => {
    if (v === undefined) return undefined;
    const text = typeof v === "string" ? v : JSON.stringify(v);
    return text.length > MAX_VALUE_CHARS ? `${text.slice(0, MAX_VALUE_CHARS)}… (${text.length} chars)` : v;
  };
  return changes.slice(0, MAX_CHANGES).map((c) => {
    const out: FieldChange = { ...c };
    if ("before" in c) out.before = shorten(c.before);
    if ("after" in c) out.after = shorten(c.after);
    return out;
  });
}

export class CatalogGuard {
  readonly catalog: Catalog;
  readonly index: CatalogIndex;
  readonly #opts: CatalogGuardOptions;
  readonly #seen = new Set<string>();
  readonly #recorded = new Map<string, number>();
  readonly #deniedTools = new Map<string, string>();
  readonly #isolated = new Map<string, string>();
  readonly #validators = new Map<string, ValidateFunction | string>();
  readonly #ajv = new Ajv2020({ strict: false, validateFormats: false, allErrors: false });
  #timer: NodeJS.Timeout | undefined;

  constructor(catalog: Catalog, opts: CatalogGuardOptions) {
    this.catalog = catalog;
    this.index = catalogIndex(catalog);
    this.#opts = opts;
  }

  /** Upstreams the catalog approves; the others are never spawned or connected. */
  partition(upstreams: readonly UpstreamSpec[]): { approved: UpstreamSpec[]; refused: UpstreamSpec[] } {
    const approved: UpstreamSpec[] = [];
    const refused: UpstreamSpec[] = [];
    for (const u of upstreams) (this.index.servers.has(u.name) ? approved : refused).push(u);
    return { approved, refused };
  }

  /** Compares each server's live identity with the pinned one; a server that moved is isolated. */
  async checkIdentities(upstreams: readonly UpstreamSpec[]): Promise<void> {
    for (const u of upstreams) {
      const pinned = this.index.servers.get(u.name)?.identity;
      if (!pinned || this.#isolated.has(u.name)) continue;
      let changes: FieldChange[];
      try {
        changes = identityDiff(pinned, await computeIdentity(u));
      } catch (err) {
        changes = [
          {
            path: "",
            op: "changed",
            before: "pinned identity",
            after: `cannot be computed: ${(err as Error).message}`,
          },
        ];
      }
      if (changes.length > 0) await this.#drift({ kind: "identity", server: u.name, changes });
    }
  }

  /** Re-checks identities at the artifact's cadence until stopped. */
  watch(upstreams: readonly UpstreamSpec[], everyMs: number): void {
    this.stop();
    this.#timer = setInterval(() => {
      void this.checkIdentities(upstreams).catch((err: unknown) =>
        this.#opts.log(`identity check failed: ${(err as Error).message}`),
      );
    }, everyMs);
    this.#timer.unref();
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
  }

  /**
   * A live tool listing from one upstream: compared with the pinned tools,
   * and answered with the approved tools to expose for that server.
   */
  async observe(
    server: string,
    session: string | undefined,
    live: readonly unknown[],
  ): Promise<ToolBinding[]> {
    const pinned = this.index.toolsByServer.get(server);
    if (!pinned) return [];
    const liveByName = new Map<string, unknown>();
    for (const t of live) {
      const name = (t as { name?: unknown } | null)?.name;
      if (typeof name === "string") liveByName.set(name, t);
    }
    for (const [name, b] of pinned) {
      const l = liveByName.get(name);
      // A missing tool is not drift: servers offer some tools only to clients with certain capabilities
      // (server-everything's elicitation tools), and a tool that is not there is neither listed nor callable.
      if (l === undefined) continue;
      let liveHash: string;
      try {
        liveHash = definitionHash(l);
      } catch {
        liveHash = "unhashable";
      }
      if (liveHash !== b.entry.sha256) {
        let changes: FieldChange[];
        try {
          changes = diffDefinitions(b.entry.tool, l);
        } catch {
          changes = [{ path: "", op: "changed", before: b.entry.sha256, after: liveHash }];
        }
        await this.#drift(
          { kind: "definition", server, tool: name, changes, ...(session ? { session } : {}) },
          liveHash,
        );
      }
    }
    for (const name of liveByName.keys()) {
      if (!pinned.has(name))
        await this.#drift({
          kind: "unapproved_tool",
          server,
          tool: name,
          changes: [{ path: "", op: "added" }],
          ...(session ? { session } : {}),
        });
    }
    return [...pinned.values()].filter(
      (b) => this.refusal(server, b.name) === null && liveByName.has(b.name),
    );
  }

  /** Why a call to this server's tool is refused, or null. */
  refusal(server: string, tool: string | undefined): string | null {
    const isolated = this.#isolated.get(server);
    if (isolated) return isolated;
    if (tool === undefined) return null;
    if (!this.index.toolsByServer.get(server)?.has(tool))
      return `tool ${tool} of ${server} is not in the approved catalog`;
    return this.#deniedTools.get(`${server}\u0000${tool}`) ?? null;
  }

  /** Checks tools/call arguments against the pinned input schema; an error message, or null. */
  argumentsProblem(server: string, tool: string, args: unknown): string | null {
    const b = this.index.toolsByServer.get(server)?.get(tool);
    if (!b) return `tool ${tool} of ${server} is not in the approved catalog`;
    let v = this.#validators.get(b.entry.sha256);
    if (v === undefined) {
      const { $schema: _dialect, ...schema } = (b.entry.tool.inputSchema ?? {}) as Record<string, unknown>;
      try {
        v = this.#ajv.compile(schema);
      } catch (err) {
        v = `the pinned input schema of ${tool} cannot be compiled: ${(err as Error).message}`;
      }
      this.#validators.set(b.entry.sha256, v);
    }
    if (typeof v === "string") return v;
    if (v(args ?? {})) return null;
    const e = v.errors?.[0];
    return `arguments do not match the approved input schema of ${tool}: ${e ? `${e.instancePath || "/"} ${e.message}` : "invalid"}`;
  }

  async #drift(e: Omit<DriftEvent, "action" | "applied">, state = ""): Promise<void> {
    const key = `${e.kind}\u0000${e.server}\u0000${e.tool ?? ""}\u0000${state}`;
    if (this.#seen.has(key)) return;
    const action = this.#opts.onDrift;
    // Enforcement first: it holds even when the event is one too many to record.
    const applied = this.#enforce(e, action);
    // A hostile server could change on every listing: record a bounded number of distinct events per server.
    const count = (this.#recorded.get(e.server) ?? 0) + 1;
    this.#recorded.set(e.server, count);
    if (count > MAX_EVENTS_PER_SERVER) {
      if (count === MAX_EVENTS_PER_SERVER + 1)
        this.#opts.log(
          `DRIFT on ${e.server}: more than ${MAX_EVENTS_PER_SERVER} distinct events; further ones are enforced but not recorded`,
        );
      return;
    }
    this.#seen.add(key);
    const event: DriftEvent = { ...e, changes: clip(e.changes), action, applied };
    this.#opts.log(
      `DRIFT ${e.kind} on ${e.server}${e.tool ? ` tool ${e.tool}` : ""}: ${event.changes.map((c) => `${c.op} ${c.path || "/"}`).join(", ")}; ${applied}`,
    );
    await this.#opts.record(event);
  }

  #enforce(e: Omit<DriftEvent, "action" | "applied">, action: DriftAction): DriftEvent["applied"] {
    if (action === "alert" || e.kind === "unapproved_tool") return "none";
    // An identity change cannot be pinned to a tool, and quarantine is not built: both isolate the server.
    if (action === "deny_tool" && e.tool !== undefined) {
      this.#deniedTools.set(
        `${e.server}\u0000${e.tool}`,
        `tool ${e.tool} of ${e.server} drifted from its approved definition (${e.kind})`,
      );
      return "tool_denied";
    }
    this.#isolated.set(
      e.server,
      `server ${e.server} is isolated after drift (${e.kind}${e.tool ? ` of ${e.tool}` : ""})`,
    );
    return "server_isolated";
  }
}
