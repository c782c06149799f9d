/**
 * The approved catalog at run time, on the governor's side: which upstreams
 * may be connected, what agents see of each (the approved tools, prompts,
 * resources and templates, never the live definitions), which resource URIs
 * a read may reach, whether a call's arguments match the pinned input schema,
 * and drift: a live definition or server identity that differs from the
 * pinned one. Each drift is recorded once (per server, item and live state)
 * and answered with the action the sealed artifact names.
 */
import { Ajv2020, type ValidateFunction } from "ajv/dist/2020.js";
import type { DriftAction } from "../artifacts/policy-artifact.js";
import type { UpstreamSpec } from "./boundary.js";
import { sha256Hex } from "../artifacts/hash.js";
import { compileTemplate, templateCovers, uriProblem, type TemplateSteps } from "../runtime/uri-template.js";
import {
  KEY_FIELD,
  catalogIndex,
  computeIdentity,
  definitionHash,
  diffDefinitions,
  identityDiff,
  type Catalog,
  type CatalogIndex,
  type DefinitionKind,
  type FieldChange,
  type ItemBinding,
  type JsonObject,
} from "./catalog.js";

export type DriftKind =
  | "definition"
  | "unapproved_tool"
  | "unapproved_prompt"
  | "unapproved_resource"
  | "unapproved_resource_template"
  | "identity";

export interface DriftEvent {
  kind: DriftKind;
  server: string;
  session?: string;
  /** The tool, prompt, resource or template that moved; absent for identity drift and for unapproved items (a set). */
  item?: { kind: DefinitionKind; key: string };
  /** Field-level differences (JSON pointers), capped; for identity, of the identity record. */
  changes: FieldChange[];
  /** What was done about it; quarantine is not built, so it isolates the server instead. */
  action: DriftAction;
  applied: "none" | "tool_denied" | "item_denied" | "server_isolated";
}

/** What one upstream listed live, per kind; only the kinds present were listed. */
export type LiveLists = Partial<Record<DefinitionKind, readonly unknown[]>>;

export interface ExposedItem {
  kind: DefinitionKind;
  /** The name (or URI, URI template) agents see. */
  name: string;
  /** The item's key at its server. */
  key: string;
  /** The approved definition; for a resource matched by an approved template, its URI and MIME type only. */
  definition: JsonObject;
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
    const out: FieldChange = {
      ...c,
      path: c.path.length > MAX_VALUE_CHARS ? `${c.path.slice(0, MAX_VALUE_CHARS)}…` : c.path,
    };
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
  /** server, kind and key of items denied after drift, with the reason. */
  readonly #denied = new Map<string, string>();
  readonly #templates = new Map<string, { b: ItemBinding; steps: TemplateSteps }[]>();
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
   * What one upstream listed live: compared with what is pinned for it, and
   * answered with the approved items to expose, for the kinds listed.
   */
  async observe(server: string, session: string | undefined, live: LiveLists): Promise<ExposedItem[]> {
    const pinned = this.index.byServer.get(server);
    if (!pinned) return [];
    const out: ExposedItem[] = [];
    const where = session ? { session } : {};
    for (const kind of ["tool", "prompt", "resource_template", "resource"] as const) {
      const list = live[kind];
      if (!list) continue;
      const liveByKey = new Map<string, unknown>();
      for (const d of list) {
        const key = (d as Record<string, unknown> | null)?.[KEY_FIELD[kind]];
        if (typeof key === "string") liveByKey.set(key, d);
      }
      for (const [key, b] of pinned[kind]) {
        const l = liveByKey.get(key);
        // A missing item is not drift: servers offer some tools only to clients with certain capabilities
        // (server-everything's elicitation tools), and what is not there is neither listed nor reachable.
        if (l === undefined) continue;
        let liveHash: string;
        try {
          liveHash = definitionHash(l, kind);
        } catch {
          liveHash = "unhashable";
        }
        if (liveHash === b.sha256) continue;
        let changes: FieldChange[];
        try {
          changes = diffDefinitions(b.definition, l, kind);
        } catch {
          changes = [{ path: "", op: "changed", before: b.sha256, after: liveHash }];
        }
        await this.#drift({ kind: "definition", server, item: { kind, key }, changes, ...where }, liveHash);
      }
      // Resources come and go with the data: one covered by an approved template is served (its URI only).
      const byTemplate: string[] = [];
      const unapproved: string[] = [];
      for (const key of liveByKey.keys()) {
        if (pinned[kind].has(key)) continue;
        if (kind === "resource" && this.#templateFor(server, key)) byTemplate.push(key);
        else unapproved.push(key);
      }
      // What a listing offers outside the catalog is one event per distinct set, not one per item.
      if (unapproved.length > 0) {
        unapproved.sort();
        await this.#drift(
          {
            kind: `unapproved_${kind}`,
            server,
            changes: unapproved.map((key) => ({
              path: `/${key.replaceAll("~", "~0").replaceAll("/", "~1")}`,
              op: "added",
            })),
            ...where,
          },
          sha256Hex(Buffer.from(unapproved.join("\n"), "utf8")),
        );
      }
      for (const [key, b] of pinned[kind])
        if (liveByKey.has(key) && this.refusal(server, { kind, key }) === null)
          out.push({ kind, name: b.exposed, key, definition: b.definition });
      for (const uri of byTemplate) {
        if (this.refusal(server, { kind, key: uri }) !== null) continue;
        const l = liveByKey.get(uri) as Record<string, unknown>;
        const mime =
          typeof l.mimeType === "string" && l.mimeType.length <= 256 ? { mimeType: l.mimeType } : {};
        // Its name and description were never reviewed: the URI stands in for the name.
        out.push({ kind, name: uri, key: uri, definition: { uri, name: uri, ...mime } });
      }
    }
    return out;
  }

  /** Why a request to this server (for this item) is refused, or null. */
  refusal(server: string, item?: { kind: DefinitionKind; key: string }): string | null {
    const isolated = this.#isolated.get(server);
    if (isolated) return isolated;
    if (item === undefined) return null;
    const { kind, key } = item;
    const denied = (k: DefinitionKind, x: string) => this.#denied.get(`${server}\u0000${k}\u0000${x}`);
    if (this.index.byServer.get(server)?.[kind].has(key)) return denied(kind, key) ?? null;
    // A completion may name a template or a URI; a read names a URI, which a template may cover.
    if (kind === "resource" || kind === "resource_template") {
      const t = this.#templateFor(server, key);
      if (t) return denied("resource_template", t.key) ?? null;
      const why = uriProblem(key);
      if (why !== null)
        return `resource ${key.slice(0, 200)} of ${server} is not in the approved catalog, and no template may cover it (${why})`;
    }
    return `${NOUN[kind]} ${key.slice(0, 200)} of ${server} is not in the approved catalog`;
  }

  /** Whether the server is isolated (the runtime stops listing it). */
  isolated(server: string): boolean {
    return this.#isolated.has(server);
  }

  /** The approved template of this server that covers a URI, in catalog order (linear-time matching). */
  #templateFor(server: string, uri: string): ItemBinding | undefined {
    let compiled = this.#templates.get(server);
    if (!compiled) {
      compiled = [];
      for (const b of this.index.byServer.get(server)?.resource_template.values() ?? []) {
        const steps = compileTemplate(b.key);
        if (steps) compiled.push({ b, steps });
        else
          this.#opts.log(
            `the approved URI template ${b.key.slice(0, 200)} of ${server} cannot be parsed; it covers nothing`,
          );
      }
      this.#templates.set(server, compiled);
    }
    if (compiled.length === 0) return undefined;
    return compiled.find(({ steps }) => templateCovers(steps, uri))?.b;
  }

  /** Checks tools/call arguments against the pinned input schema; an error message, or null. */
  argumentsProblem(server: string, tool: string, args: unknown): string | null {
    const b = this.index.byServer.get(server)?.tool.get(tool);
    if (!b) return `tool ${tool} of ${server} is not in the approved catalog`;
    let v = this.#validators.get(b.sha256);
    if (v === undefined) {
      const { $schema: _dialect, ...schema } = (b.definition.inputSchema ?? {}) as Record<string, unknown>;
      try {
        v = this.#ajv.compile(schema);
      } catch (err) {
        v = `the pinned input schema of ${tool} cannot be compiled: ${(err as Error).message}`;
      }
      this.#validators.set(b.sha256, v);
    }
    if (typeof v === "string") return v;
    if (v(args ?? {})) return null;
    const e = v.errors?.[0];
    return `arguments do not match the approved input schema of ${tool}: ${e ? `${e.instancePath || "/"} ${e.message}` : "invalid"}`;
  }

  async #drift(e: Omit<DriftEvent, "action" | "applied">, state = ""): Promise<void> {
    const key = `${e.kind}\u0000${e.server}\u0000${e.item?.kind ?? ""}\u0000${e.item?.key ?? ""}\u0000${state}`;
    if (this.#seen.has(key)) return;
    const action = this.#opts.onDrift;
    // Enforcement first: it holds even when the event is one too many to record.
    const applied = this.#enforce(e, action);
    // A hostile server could change on every listing: record a bounded number of distinct events per server.
    // Separate budgets: a flood of unapproved items must not use up the one that records real drift.
    const budget = `${e.server}\u0000${e.kind.startsWith("unapproved_") ? "unapproved" : "drift"}`;
    const count = (this.#recorded.get(budget) ?? 0) + 1;
    this.#recorded.set(budget, count);
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
      `DRIFT ${e.kind} on ${e.server}${e.item ? ` ${e.item.kind} ${e.item.key.slice(0, 200)}` : ""}: ${event.changes.map((c) => `${c.op} ${c.path || "/"}`).join(", ")}; ${applied}`,
    );
    await this.#opts.record(event);
  }

  #enforce(e: Omit<DriftEvent, "action" | "applied">, action: DriftAction): DriftEvent["applied"] {
    if (action === "alert" || (e.kind !== "definition" && e.kind !== "identity")) return "none";
    // An identity change cannot be pinned to an item, and quarantine is not built: both isolate the server.
    if (action === "deny_tool" && e.item !== undefined) {
      this.#denied.set(
        `${e.server}\u0000${e.item.kind}\u0000${e.item.key}`,
        `${NOUN[e.item.kind]} ${e.item.key.slice(0, 200)} of ${e.server} drifted from its approved definition`,
      );
      return e.item.kind === "tool" ? "tool_denied" : "item_denied";
    }
    this.#isolated.set(
      e.server,
      `server ${e.server} is isolated after drift (${e.kind}${e.item ? ` of ${e.item.kind} ${e.item.key.slice(0, 200)}` : ""})`,
    );
    return "server_isolated";
  }
}

const NOUN: Record<DefinitionKind, string> = {
  tool: "tool",
  prompt: "prompt",
  resource: "resource",
  resource_template: "resource template",
};
