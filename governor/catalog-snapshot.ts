/**
 * `cmcp catalog snapshot`: connects to every configured upstream with the
 * official SDK client, lists what it offers (tools, resources, resource
 * templates, prompts; every page), computes its identity, runs the poisoning
 * scanner, and returns a catalog for review (review: null) with the findings.
 *
 * Listings are requested with the SDK's loose ResultSchema so definitions are
 * kept exactly as the server sent them (the typed listTools() would reshape
 * or refuse odd ones). A definition that cannot enter a catalog (not an
 * object, no name, wrong field types, over the size limit, nested deeper or
 * wider than a catalog file may hold, not canonicalizable, listed twice) is
 * left out and reported as a high finding;
 * a server that cannot be pinned, reached or listed within its time is
 * reported as a failure, never silently dropped. Tool names offered by more
 * than one server get the alias "<server>.<tool>" on every side, reported as
 * a medium finding for the reviewer.
 *
 * The client declares sampling and elicitation (some servers register tools
 * only for clients that can answer them, and the gateway forwards those
 * capabilities from agents that have them) and roots when the upstream has
 * roots configured, as the runtime does; requests the server sends are not
 * answered except roots/list.
 *
 * Each server's package name (stdio) or host name (HTTP) is compared with
 * the well-known MCP packages and, when a previous catalog is given, the
 * names approved in it; look-alikes are reported as typosquat.* findings
 * (governor/typosquat.ts, a partial defence: only names near those lists).
 */
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import {
  ListRootsRequestSchema,
  ResultSchema,
  type ClientCapabilities,
  type ClientRequest,
} from "@modelcontextprotocol/sdk/types.js";
import { canonicalBytes } from "../artifacts/canonical-json.js";
import { CmcpError, isCmcpError } from "../artifacts/errors.js";
import { sha256Hex } from "../artifacts/hash.js";
import { artifactTime } from "../artifacts/policy-artifact.js";
import { parseJson } from "../artifacts/strict-json.js";
import { upstreamTransport } from "../runtime/upstream-connector.js";
import type { UpstreamSpec } from "./boundary.js";
import { computeIdentity, type ServerIdentity } from "./catalog-identity.js";
import {
  CATALOG_FORMAT,
  CATALOG_LIMITS,
  ENTRY_FIELD,
  KEY_FIELD,
  PINNED_FIELDS,
  definitionJsonLimits,
  definitionShapeProblem,
  pinnedDefinition,
  scanCatalog,
  validateCatalog,
  type Catalog,
  type CatalogFinding,
  type CatalogLimits,
  type CatalogServer,
  type DefinitionKind,
  type JsonObject,
} from "./catalog.js";
import { defaultScannerRules, type ScannerRules, type Severity } from "./tool-scanner.js";
import {
  approvedReferences,
  findLookAlikes,
  identitySubject,
  wellKnownReferences,
  type LookAlikeReference,
} from "./typosquat.js";

export interface SnapshotOptions {
  /** Per server: identity, connect and every listing (default 60 s, or the upstream's connect_timeout_ms if longer). */
  timeoutMs?: number;
  /** Servers snapshotted at once (default 4). */
  concurrency?: number;
  rules?: ScannerRules;
  limits?: Readonly<CatalogLimits>;
  /** Trust anchors for reading TLS pins of https upstreams (tests); the system store otherwise. */
  ca?: string | Buffer;
  now?: Date;
  /** A previous (approved) catalog: its package names and hosts count as known for the look-alike check. */
  previous?: Catalog;
  /** Called as each server finishes. */
  onServer?: (name: string, outcome: { ok: boolean; message?: string }) => void;
}

export interface SnapshotFailure {
  server: string;
  code: string;
  message: string;
}

export interface SnapshotResult {
  /** Servers that failed are not in it (see failures). */
  catalog: Catalog;
  /** Scanner findings and catalog findings (left-out definitions, collisions, weak identities). */
  findings: CatalogFinding[];
  failures: SnapshotFailure[];
  rulesVersion: string;
}

const DEFAULT_TIMEOUT_MS = 60_000;
/** Pages per listing; a server paging forever is a failure, not a hang. */
const MAX_PAGES = 1000;
const STDERR_TAIL = 1000;

/** Commands whose own hash says little about the server they start. */
const WRAPPERS =
  /^(npm|npm-cli\.js|pnpm|pnpm\.c?js|yarn|yarn\.c?js|corepack|uv|poetry|pipenv|docker|podman|env|sudo)$/;

export function catalogFinding(
  server: string,
  tool: string | null,
  ruleId: string,
  severity: Severity,
  title: string,
  explanation: string,
  detail?: string,
): CatalogFinding {
  return {
    server,
    tool,
    ruleId,
    category: "malformed",
    severity,
    title,
    path: "$",
    target: "value",
    span: { start: 0, end: 0, text: "" },
    explanation,
    ...(detail !== undefined ? { detail } : {}),
  };
}

function isRecord(v: unknown): v is JsonObject {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

/** Replaces configured secrets (env values, header values) in text meant for people. */
function redactor(up: UpstreamSpec): (text: string) => string {
  const secrets = [...Object.values(up.env ?? {}), ...Object.values(up.headers ?? {})]
    .filter((s) => s.length >= 4)
    .sort((a, b) => b.length - a.length);
  return (text) => {
    let out = text;
    for (const s of secrets) out = out.split(s).join("[redacted]");
    return out;
  };
}

const NO_RECONNECT = {
  initialReconnectionDelay: 1000,
  maxReconnectionDelay: 1000,
  reconnectionDelayGrowFactor: 1,
  maxRetries: 0,
};

interface Listing {
  method: string;
  field: string;
  kind: DefinitionKind;
  max: number;
}

async function listAll(
  client: Client,
  l: Listing,
  signal: AbortSignal,
  deadline: number,
): Promise<unknown[]> {
  const out: unknown[] = [];
  const seen = new Set<string>();
  let cursor: string | undefined;
  for (let page = 0; ; page++) {
    if (page >= MAX_PAGES)
      throw new CmcpError("catalog.list", `${l.method} returned more than ${MAX_PAGES} pages`);
    const res = (await client.request(
      { method: l.method, params: cursor !== undefined ? { cursor } : {} } as ClientRequest,
      ResultSchema,
      { signal, timeout: Math.max(1, deadline - Date.now()) },
    )) as Record<string, unknown>;
    const items = res[l.field];
    if (!Array.isArray(items))
      throw new CmcpError("catalog.list", `${l.method} result has no "${l.field}" array`);
    out.push(...(items as unknown[]));
    if (out.length > l.max)
      throw new CmcpError(
        "catalog.limits",
        `${l.method} lists more than ${l.max} ${l.field}, the catalog's limit per server`,
      );
    const next = res.nextCursor;
    if (next === undefined || next === null) break;
    if (typeof next !== "string")
      throw new CmcpError("catalog.list", `${l.method} returned a nextCursor that is not a string`);
    if (seen.has(next))
      throw new CmcpError("catalog.list", `${l.method} returned the same cursor twice (a pagination loop)`);
    seen.add(next);
    cursor = next;
  }
  return out;
}

/** Turns listed items into catalog entries; what cannot be pinned becomes a finding. */
function pinItems(
  server: string,
  kind: DefinitionKind,
  raws: unknown[],
  limits: Readonly<CatalogLimits>,
  findings: CatalogFinding[],
): Record<string, unknown>[] {
  const keyField = KEY_FIELD[kind];
  const entries = new Map<string, Record<string, unknown>>();
  raws.forEach((raw, i) => {
    const key = isRecord(raw) && typeof raw[keyField] === "string" ? (raw[keyField] as string) : null;
    const label = key ?? `${kind} #${i}`;
    const leftOut = (ruleId: string, title: string, why: string) =>
      findings.push(
        catalogFinding(
          server,
          kind === "tool" ? key : null,
          ruleId,
          "high",
          title,
          `The ${kind.replace("_", " ")} ${JSON.stringify(label.slice(0, 200))} was left out of the catalog: ${why}. Agents will not see it.`,
        ),
      );
    if (!isRecord(raw) || key === null || key === "") {
      leftOut(
        "catalog.malformed-definition",
        "Malformed definition",
        `it is not an object with a string "${keyField}"`,
      );
      return;
    }
    const def = pinnedDefinition(raw, kind);
    const problem = definitionShapeProblem(def, kind);
    if (problem !== null) {
      leftOut(
        "catalog.malformed-definition",
        "Malformed definition",
        `its fields do not fit the catalog (${problem})`,
      );
      return;
    }
    let bytes: Uint8Array;
    try {
      bytes = canonicalBytes(def);
    } catch (err) {
      leftOut("catalog.malformed-definition", "Definition cannot be canonicalized", (err as Error).message);
      return;
    }
    if (bytes.length > limits.maxDefinitionBytes) {
      leftOut(
        "catalog.definition-too-large",
        "Definition too large",
        `its canonical form is ${bytes.length} bytes, more than the limit of ${limits.maxDefinitionBytes}`,
      );
      return;
    }
    // A clean copy in canonical key order: the catalog never shares objects with the SDK's result.
    // Parsed under the limits of a catalog file, so what is written here can be read back.
    let copy: JsonObject;
    try {
      copy = parseJson(bytes, definitionJsonLimits(limits)) as JsonObject;
    } catch (err) {
      leftOut(
        "catalog.definition-too-large",
        "Definition too large",
        `it exceeds what a catalog file may hold (${(err as Error).message})`,
      );
      return;
    }
    if (entries.has(key)) {
      leftOut(
        "catalog.duplicate",
        "Listed twice",
        `the server lists ${kind} ${JSON.stringify(key)} more than once; the first one was kept`,
      );
      return;
    }
    // Top-level members in PINNED_FIELDS order (name first) for reviewers; the hash does not depend on it.
    const ordered: JsonObject = {};
    for (const f of PINNED_FIELDS[kind]) if (Object.hasOwn(copy, f)) ordered[f] = copy[f];
    entries.set(key, { sha256: sha256Hex(bytes), [ENTRY_FIELD[kind]]: ordered });
  });
  return [...entries.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([, e]) => e);
}

/** Templates with a `{+x}` or `{#x}` expression cover every path below their literal prefix: say so. */
export function openTemplateFindings(server: string, entries: Record<string, unknown>[]): CatalogFinding[] {
  const out: CatalogFinding[] = [];
  for (const e of entries) {
    const key = (e.template as { uriTemplate?: unknown } | undefined)?.uriTemplate;
    if (typeof key !== "string" || !/\{[+#]/.test(key)) continue;
    out.push({
      ...catalogFinding(
        server,
        null,
        "catalog.open-template",
        "medium",
        "URI template covers any path",
        `Approving ${JSON.stringify(key.slice(0, 200))} lets agents read every URI of ${server} that matches it, across path segments (dot segments and encoded slashes excepted). Approve it only if the server confines such reads itself.`,
      ),
      item: { kind: "resource_template", key },
    });
  }
  return out;
}

const LISTINGS = (
  limits: Readonly<CatalogLimits>,
): (Listing & { capability: "tools" | "resources" | "prompts" })[] => [
  { method: "tools/list", field: "tools", kind: "tool", max: limits.maxToolsPerServer, capability: "tools" },
  {
    method: "resources/list",
    field: "resources",
    kind: "resource",
    max: limits.maxResourcesPerServer,
    capability: "resources",
  },
  {
    method: "resources/templates/list",
    field: "resourceTemplates",
    kind: "resource_template",
    max: limits.maxTemplatesPerServer,
    capability: "resources",
  },
  {
    method: "prompts/list",
    field: "prompts",
    kind: "prompt",
    max: limits.maxPromptsPerServer,
    capability: "prompts",
  },
];

type Outcome =
  { ok: true; server: CatalogServer; findings: CatalogFinding[] } | { ok: false; failure: SnapshotFailure };

async function snapshotServer(up: UpstreamSpec, opts: SnapshotOptions): Promise<Outcome> {
  const limits = opts.limits ?? CATALOG_LIMITS;
  const timeoutMs = opts.timeoutMs ?? Math.max(DEFAULT_TIMEOUT_MS, up.connectTimeoutMs ?? 0);
  const deadline = Date.now() + timeoutMs;
  const redact = redactor(up);
  let stderr = "";
  const abort = new AbortController();
  let client: Client | undefined;
  const work = async (): Promise<CatalogServer & { findings: CatalogFinding[] }> => {
    let identity: ServerIdentity;
    try {
      identity = await computeIdentity(up, {
        ...(opts.ca !== undefined ? { ca: opts.ca } : {}),
        timeoutMs: Math.max(1, deadline - Date.now()),
      });
    } catch (err) {
      throw isCmcpError(err) ? err : new CmcpError("catalog.identity", String(err));
    }
    if (abort.signal.aborted) throw new CmcpError("catalog.timeout", "timed out");
    const capabilities: ClientCapabilities = {
      sampling: {},
      elicitation: { form: {}, url: {} },
      ...(up.roots ? { roots: { listChanged: false } } : {}),
    };
    const c = new Client({ name: "cmcp-catalog-snapshot", version: "0.1.0" }, { capabilities });
    client = c;
    if (up.roots) {
      const roots = up.roots.map((r) => ({ uri: r.uri, ...(r.name !== undefined ? { name: r.name } : {}) }));
      c.setRequestHandler(ListRootsRequestSchema, () => ({ roots }));
    }
    const transport = upstreamTransport(up, {
      // A listing page larger than a whole catalog file could never be approved.
      maxBufferBytes: limits.maxFileBytes + 1024 * 1024,
      reconnection: NO_RECONNECT,
      onStderr: (chunk) => {
        stderr = (stderr + chunk).slice(-STDERR_TAIL);
      },
    });
    try {
      await c.connect(transport, { signal: abort.signal, timeout: Math.max(1, deadline - Date.now()) });
    } catch (err) {
      throw new CmcpError("catalog.connect", `cannot connect: ${(err as Error).message}`);
    }
    const caps = c.getServerCapabilities() ?? {};
    const findings: CatalogFinding[] = [];
    let pinnedBytes = 0;
    const lists: Record<DefinitionKind, Record<string, unknown>[]> = {
      tool: [],
      resource: [],
      resource_template: [],
      prompt: [],
    };
    for (const l of LISTINGS(limits)) {
      if (caps[l.capability] === undefined) continue;
      let raws: unknown[];
      try {
        raws = await listAll(c, l, abort.signal, deadline);
      } catch (err) {
        if (isCmcpError(err)) throw err;
        throw new CmcpError("catalog.list", `${l.method} failed: ${(err as Error).message}`);
      }
      lists[l.kind] = pinItems(up.name, l.kind, raws, limits, findings);
      // A server's definitions must fit one catalog file, or the catalog could not be read back.
      pinnedBytes += lists[l.kind].reduce((n, e) => n + JSON.stringify(e).length, 0);
      if (pinnedBytes > limits.maxFileBytes)
        throw new CmcpError(
          "catalog.limits",
          `its definitions come to more than ${limits.maxFileBytes} bytes, more than a catalog file may hold`,
        );
    }
    findings.push(...openTemplateFindings(up.name, lists.resource_template));
    const info = c.getServerVersion();
    return {
      name: up.name,
      ...(info && typeof info.name === "string" && typeof info.version === "string"
        ? {
            server_info: {
              name: info.name.slice(0, 1024),
              version: info.version.slice(0, 1024),
              ...(typeof info.title === "string" ? { title: info.title.slice(0, 1024) } : {}),
            },
          }
        : {}),
      identity,
      tools: lists.tool as unknown as CatalogServer["tools"],
      resources: lists.resource as unknown as CatalogServer["resources"],
      resource_templates: lists.resource_template as unknown as CatalogServer["resource_templates"],
      prompts: lists.prompt as unknown as CatalogServer["prompts"],
      findings,
    };
  };
  let timer: NodeJS.Timeout | undefined;
  try {
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        abort.abort();
        reject(new CmcpError("catalog.timeout", `no complete answer within ${timeoutMs} ms`));
      }, timeoutMs);
    });
    const running = work();
    // After a timeout the work still settles (aborted); its rejection is already reported.
    running.catch(() => undefined);
    const { findings, ...server } = await Promise.race([running, timeout]);
    findings.push(...identityFindings(up.name, server.identity));
    return { ok: true, server, findings };
  } catch (err) {
    const code = isCmcpError(err) ? err.code : "catalog.connect";
    const tail = stderr.trim() !== "" ? ` (server stderr: ${stderr.trim().slice(-500)})` : "";
    const message = redact(
      `${err instanceof Error ? err.message : String(err)}${code === "catalog.identity" ? "" : tail}`,
    );
    return { ok: false, failure: { server: up.name, code, message } };
  } finally {
    clearTimeout(timer);
    abort.abort();
    await (client as Client | undefined)?.close().catch(() => undefined);
  }
}

function identityFindings(server: string, id: ServerIdentity): CatalogFinding[] {
  if (id.transport !== "stdio") {
    return id.url.startsWith("http://")
      ? [
          catalogFinding(
            server,
            null,
            "catalog.identity-plain-http",
            "medium",
            "Server reached over plain HTTP",
            "The server's URL is http://, so nothing pins who answers: anyone on the path can serve other definitions. Prefer https (the catalog then pins the server's TLS key).",
          ),
        ]
      : [];
  }
  const base = id.command.split("/").pop() ?? "";
  if (WRAPPERS.test(base))
    return [
      catalogFinding(
        server,
        null,
        "catalog.identity-wrapper",
        "medium",
        "Identity pins only a wrapper",
        `The command is ${base}, which starts the server by other means; the identity pins ${base} itself, not the server's code. Point "command" at the interpreter and the server's script (or its installed bin) instead.`,
      ),
    ];
  if (id.script)
    return [
      catalogFinding(
        server,
        null,
        "catalog.identity-script-only",
        "low",
        "Identity covers one script file",
        `The script ${id.script.path} belongs to no package (no package.json or pyproject.toml above it), so only that file is pinned, not what it imports.`,
      ),
    ];
  return [];
}

/** Package and host names that look like well-known or previously approved ones (a partial defence). */
function lookAlikeFindings(
  servers: readonly CatalogServer[],
  previous: Catalog | undefined,
): CatalogFinding[] {
  const refs: LookAlikeReference[] = [
    ...wellKnownReferences(),
    ...(previous !== undefined ? approvedReferences(previous) : []),
  ];
  const out: CatalogFinding[] = [];
  for (const s of servers) {
    const subject = identitySubject(s.identity);
    if (!subject) continue;
    for (const m of findLookAlikes(subject, refs))
      out.push({
        ...catalogFinding(s.name, null, m.ruleId, m.severity, m.title, m.explanation, m.detail),
        path: subject.path,
        span: subject.span,
      });
  }
  return out;
}

/**
 * A name is bound to one server. Tool and prompt names offered by several
 * servers are aliased "<server>.<name>"; a resource URI or URI template
 * offered by several servers stays with the first in config order.
 */
function resolveCollisions(servers: CatalogServer[], findings: CatalogFinding[]): void {
  for (const kind of ["tool", "prompt"] as const) {
    const names = (s: CatalogServer) =>
      kind === "tool" ? s.tools.map((t) => t.tool.name) : s.prompts.map((p) => p.prompt.name);
    const owners = new Map<string, string[]>();
    for (const s of servers) for (const n of names(s)) owners.set(n, [...(owners.get(n) ?? []), s.name]);
    const taken = new Set(owners.keys());
    for (const s of servers) {
      const keep = (e: { alias?: string }, name: string): boolean => {
        const who = owners.get(name) ?? [];
        if (who.length < 2) return true;
        const alias = `${s.name}.${name}`;
        const aliased = /^[A-Za-z0-9_.-]{1,128}$/.test(alias) && !taken.has(alias);
        if (aliased) {
          taken.add(alias);
          e.alias = alias;
        }
        const others = who.filter((n) => n !== s.name).join(", ");
        findings.push({
          ...catalogFinding(
            s.name,
            kind === "tool" ? name : null,
            "catalog.name-collision",
            aliased ? "medium" : "high",
            `${kind === "tool" ? "Tool" : "Prompt"} name offered by several servers`,
            aliased
              ? `Servers ${s.name}, ${others} all offer a ${kind} named ${JSON.stringify(name)}. A name is bound to one server, so agents will see this one as "${alias}". Change the alias if another name suits better.`
              : `Server(s) ${others} also offer a ${kind} named ${JSON.stringify(name)}, and "${alias}" cannot serve as an alias (not a valid name, or already taken), so this ${kind} was left out of the catalog.`,
          ),
          ...(kind === "tool" ? {} : { item: { kind, key: name } }),
        });
        return aliased;
      };
      if (kind === "tool") s.tools = s.tools.filter((t) => keep(t, t.tool.name));
      else s.prompts = s.prompts.filter((p) => keep(p, p.prompt.name));
    }
  }
  for (const kind of ["resource", "resource_template"] as const) {
    const first = new Map<string, string>();
    for (const s of servers) {
      const keep = (key: string): boolean => {
        const owner = first.get(key);
        if (owner === undefined) {
          first.set(key, s.name);
          return true;
        }
        findings.push({
          ...catalogFinding(
            s.name,
            null,
            "catalog.name-collision",
            "high",
            kind === "resource"
              ? "Resource URI offered by several servers"
              : "URI template offered by several servers",
            `Server ${owner} also offers ${JSON.stringify(key.slice(0, 200))}. A ${kind === "resource" ? "URI" : "URI template"} is bound to one server, so it stays with ${owner} (first in the config) and was left out for ${s.name}.`,
          ),
          item: { kind, key },
        });
        return false;
      };
      if (kind === "resource") s.resources = s.resources.filter((r) => keep(r.resource.uri));
      else s.resource_templates = s.resource_templates.filter((t) => keep(t.template.uriTemplate));
    }
  }
}

async function mapLimit<T, R>(items: readonly T[], n: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array<R>(items.length);
  let next = 0;
  const workers = Array.from({ length: Math.max(1, Math.min(n, items.length)) }, async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i] as T);
    }
  });
  await Promise.all(workers);
  return out;
}

/**
 * Snapshots every upstream of the config. Never throws for a server's fault
 * (see failures); throws only when the result would not be a valid catalog,
 * which is a bug.
 */
export async function snapshotCatalog(
  config: { upstreams: readonly UpstreamSpec[] },
  opts: SnapshotOptions = {},
): Promise<SnapshotResult> {
  const rules = opts.rules ?? defaultScannerRules();
  const limits = opts.limits ?? CATALOG_LIMITS;
  if (config.upstreams.length > limits.maxServers)
    throw new CmcpError("catalog.limits", `the config has more than ${limits.maxServers} upstreams`);
  const outcomes = await mapLimit(config.upstreams, opts.concurrency ?? 4, async (up) => {
    const o = await snapshotServer(up, opts);
    opts.onServer?.(up.name, o.ok ? { ok: true } : { ok: false, message: o.failure.message });
    return o;
  });
  const servers: CatalogServer[] = [];
  const findings: CatalogFinding[] = [];
  const failures: SnapshotFailure[] = [];
  for (const o of outcomes) {
    if (o.ok) {
      servers.push(o.server);
      findings.push(...o.findings);
    } else failures.push(o.failure);
  }
  resolveCollisions(servers, findings);
  findings.push(...lookAlikeFindings(servers, opts.previous));
  const catalog = validateCatalog(
    {
      format: CATALOG_FORMAT,
      created_at: artifactTime(opts.now ?? new Date()),
      review: null,
      servers,
    } satisfies Catalog,
    "snapshot",
    limits,
  );
  const size = canonicalBytes(catalog).length;
  if (size > limits.maxFileBytes)
    throw new CmcpError(
      "catalog.limits",
      `the snapshot comes to ${size} bytes, more than the ${limits.maxFileBytes} a catalog file may hold; snapshot fewer upstreams at a time`,
    );
  findings.push(...scanCatalog(catalog, rules));
  return { catalog, findings, failures, rulesVersion: rules.version };
}
