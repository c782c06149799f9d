/**
 * The approved catalog (cmcp.catalog.v1): which servers agents may reach,
 * each server's pinned identity, and the approved definitions of its tools,
 * resources, resource templates and prompts. Agents are served these
 * definitions, never the live ones; a live definition that differs is drift.
 *
 * Pinned definitions (PINNED_FIELDS): exactly these members of what the
 * server listed, each kept only when present (a present null stays null):
 *   tool               name, title, description, inputSchema, outputSchema, annotations
 *   resource           uri, name, title, description, mimeType, annotations
 *   resource_template  uriTemplate, name, title, description, mimeType, annotations
 *   prompt             name, title, description, arguments
 * Anything else (_meta, icons, execution, size) is neither pinned nor served.
 * For resources and templates, annotations.lastModified is dropped (it moves
 * with the data, not the definition) and annotations left empty are omitted.
 * An entry's sha256 is SHA-256 (hex) of the RFC 8785 (JCS) bytes of its
 * pinned definition; the catalog hash is SHA-256 of the JCS bytes of the
 * whole catalog (review included), the value `cmcp seal --catalog-hash` takes.
 *
 * Parsing (readCatalog / parseCatalog) is strict and bounded: CATALOG_LIMITS
 * for the file, parseJson for duplicate keys and lone surrogates, the JSON
 * Schema policies/catalog.schema.json (errors name the field), then rules a
 * schema cannot state: unique server names, unique names per server, every
 * sha256 matching its definition, the JCS size of each definition, and a tool
 * name bound to exactly one server (a collision needs an alias).
 */
import { readFile, stat } from "node:fs/promises";
import { Ajv2020, type ErrorObject } from "ajv/dist/2020.js";
import { canonicalBytes } from "../artifacts/canonical-json.js";
import { CmcpError, isCmcpError } from "../artifacts/errors.js";
import { sha256Hex } from "../artifacts/hash.js";
import { artifactTime } from "../artifacts/policy-artifact.js";
import { parseJson } from "../artifacts/strict-json.js";
import catalogSchema from "../policies/catalog.schema.json" with { type: "json" };
import { identityDiff, type ServerIdentity } from "./catalog-identity.js";
import { diffJson, type FieldChange } from "./catalog-json-diff.js";
import {
  defaultScannerRules,
  scanToolEntries,
  type Finding,
  type ScannerRules,
  type Severity,
  type ToolEntry,
} from "./tool-scanner.js";

export {
  computeIdentity,
  hashPackageDir,
  identityDiff,
  tlsPublicKeyPin,
  unpinnedLauncher,
  PACKAGE_LIMITS,
  type HttpIdentity,
  type IdentityOptions,
  type PackageHash,
  type PackageIdentity,
  type PackageLimits,
  type ServerIdentity,
  type StdioIdentity,
} from "./catalog-identity.js";
export { diffJson, type FieldChange } from "./catalog-json-diff.js";

export const CATALOG_FORMAT = "cmcp.catalog.v1";

export interface CatalogLimits {
  /** Catalog file size. */
  maxFileBytes: number;
  /** JSON nesting of the file (definitions hold JSON Schemas). */
  maxDepth: number;
  maxServers: number;
  maxToolsPerServer: number;
  maxResourcesPerServer: number;
  maxTemplatesPerServer: number;
  maxPromptsPerServer: number;
  /** JCS bytes of one pinned definition. */
  maxDefinitionBytes: number;
}

// The counts are also in policies/catalog.schema.json (maxItems); a test keeps them equal.
export const CATALOG_LIMITS: Readonly<CatalogLimits> = Object.freeze({
  maxFileBytes: 16 * 1024 * 1024,
  // The scanner reads schemas down to 128 levels; the file adds 6 above a definition.
  maxDepth: 160,
  maxServers: 256,
  maxToolsPerServer: 1000,
  maxResourcesPerServer: 10_000,
  maxTemplatesPerServer: 1000,
  maxPromptsPerServer: 1000,
  // 20x the largest real tool definition in the scanner corpus (~12 KB).
  maxDefinitionBytes: 256 * 1024,
});

export type JsonObject = Record<string, unknown>;

export interface ToolDefinition {
  name: string;
  title?: string;
  description?: string;
  inputSchema?: JsonObject;
  outputSchema?: JsonObject;
  annotations?: JsonObject;
}

export interface ResourceDefinition {
  uri: string;
  name?: string;
  title?: string;
  description?: string;
  mimeType?: string;
  annotations?: JsonObject;
}

export interface ResourceTemplateDefinition {
  uriTemplate: string;
  name?: string;
  title?: string;
  description?: string;
  mimeType?: string;
  annotations?: JsonObject;
}

export interface PromptDefinition {
  name: string;
  title?: string;
  description?: string;
  arguments?: JsonObject[];
}

export interface CatalogToolEntry {
  tool: ToolDefinition;
  sha256: string;
  /** The name agents see instead of tool.name. */
  alias?: string;
}
export interface CatalogResourceEntry {
  resource: ResourceDefinition;
  sha256: string;
}
export interface CatalogResourceTemplateEntry {
  template: ResourceTemplateDefinition;
  sha256: string;
}
export interface CatalogPromptEntry {
  prompt: PromptDefinition;
  sha256: string;
  /** The name agents see instead of prompt.name. */
  alias?: string;
}

export interface CatalogServer {
  /** The upstream's name in the gateway config. */
  name: string;
  server_info?: { name: string; version: string; title?: string };
  identity: ServerIdentity;
  tools: CatalogToolEntry[];
  resources: CatalogResourceEntry[];
  resource_templates: CatalogResourceTemplateEntry[];
  prompts: CatalogPromptEntry[];
}

export interface CatalogReview {
  reviewer: string;
  approved_at: string;
  scanner_rules_version: string;
  /** High-severity scanner findings accepted with --accept-findings (0 otherwise). */
  accepted_high_findings: number;
}

export interface Catalog {
  format: typeof CATALOG_FORMAT;
  created_at: string;
  /** null: a snapshot nobody has approved yet. */
  review: CatalogReview | null;
  servers: CatalogServer[];
}

// ---- pinned definitions -------------------------------------------------------------------------

export type DefinitionKind = "tool" | "resource" | "resource_template" | "prompt";

export const KINDS: readonly DefinitionKind[] = ["tool", "resource", "resource_template", "prompt"];

export const PINNED_FIELDS: Readonly<Record<DefinitionKind, readonly string[]>> = Object.freeze({
  tool: ["name", "title", "description", "inputSchema", "outputSchema", "annotations"],
  resource: ["uri", "name", "title", "description", "mimeType", "annotations"],
  resource_template: ["uriTemplate", "name", "title", "description", "mimeType", "annotations"],
  prompt: ["name", "title", "description", "arguments"],
});

/** The member of a catalog entry holding its definition, per kind. */
export const ENTRY_FIELD = {
  tool: "tool",
  resource: "resource",
  resource_template: "template",
  prompt: "prompt",
} as const satisfies Record<DefinitionKind, string>;

/** The key naming an item within its server, per kind. */
export const KEY_FIELD = {
  tool: "name",
  resource: "uri",
  resource_template: "uriTemplate",
  prompt: "name",
} as const satisfies Record<DefinitionKind, string>;

function isRecord(v: unknown): v is JsonObject {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

/**
 * The pinned projection of a listed definition (see the module comment). The
 * result shares nested values with the input; it is not copied.
 */
export function pinnedDefinition(raw: unknown, kind: DefinitionKind = "tool"): JsonObject {
  if (!isRecord(raw)) throw new CmcpError("catalog.definition", `a ${kind} definition must be an object`);
  const out: JsonObject = {};
  for (const f of PINNED_FIELDS[kind]) if (Object.hasOwn(raw, f)) out[f] = raw[f];
  if ((kind === "resource" || kind === "resource_template") && isRecord(out.annotations)) {
    const { lastModified: _moves, ...rest } = out.annotations;
    if (Object.keys(rest).length === 0) delete out.annotations;
    else out.annotations = rest;
  }
  return out;
}

/** SHA-256 (hex) of the JCS bytes of the pinned definition. Throws on values JCS refuses. */
export function definitionHash(def: unknown, kind: DefinitionKind = "tool"): string {
  return sha256Hex(canonicalBytes(pinnedDefinition(def, kind)));
}

/**
 * Field-level changes between two definitions of the same kind, compared on
 * their pinned projections (so a live tool's _meta or execution is no change).
 * Paths are JSON Pointers into the definition ("/description",
 * "/inputSchema/properties/path/description").
 */
export function diffDefinitions(
  before: unknown,
  after: unknown,
  kind: DefinitionKind = "tool",
): FieldChange[] {
  return diffJson(pinnedDefinition(before, kind), pinnedDefinition(after, kind));
}

// ---- loading ------------------------------------------------------------------------------------

const ajv = new Ajv2020({ strict: true, strictRequired: false, allErrors: true, allowUnionTypes: true });
const validateSchema = ajv.compile(catalogSchema);

/** Checks one definition of `kind` against its part of the catalog schema; returns the problem or null. */
export function definitionShapeProblem(def: unknown, kind: DefinitionKind): string | null {
  const ref = {
    tool: "#/$defs/tool",
    resource: "#/$defs/resourceEntry/properties/resource",
    resource_template: "#/$defs/resourceTemplateEntry/properties/template",
    prompt: "#/$defs/promptEntry/properties/prompt",
  }[kind];
  const v = ajv.getSchema(`${catalogSchema.$id}${ref}`);
  if (!v) throw new CmcpError("catalog.schema", `catalog schema has no ${ref}`);
  if (v(def)) return null;
  return formatErrors(v.errors ?? [], def);
}

function describeLocation(doc: unknown, pointer: string): string {
  // "/servers/0/tools/3/tool/description" reads better with the names of the server and tool.
  const parts = pointer.split("/").slice(1);
  const labels: string[] = [];
  let cur: unknown = doc;
  for (const p of parts) {
    const key = p.replaceAll("~1", "/").replaceAll("~0", "~");
    cur = Array.isArray(cur) ? cur[Number(key)] : isRecord(cur) ? cur[key] : undefined;
    if (!isRecord(cur)) continue;
    const inner = cur.tool ?? cur.prompt ?? cur.resource ?? cur.template;
    const label = isRecord(inner)
      ? (inner.name ?? inner.uri ?? inner.uriTemplate)
      : typeof cur.name === "string" && "identity" in cur
        ? cur.name
        : undefined;
    if (typeof label === "string") labels.push(JSON.stringify(label.slice(0, 80)));
  }
  return labels.length > 0 ? ` (${labels.join(" ")})` : "";
}

function formatErrors(errors: ErrorObject[], doc: unknown): string {
  // if/then/else report "must match then schema" beside the real error: keep the real ones.
  const useful = errors.filter((e) => e.keyword !== "if");
  return [
    ...new Set(
      useful.slice(0, 10).map((e) => {
        const extra =
          e.params && "additionalProperty" in e.params
            ? ` "${String(e.params.additionalProperty)}"`
            : e.params && "allowedValues" in e.params
              ? ` ${JSON.stringify(e.params.allowedValues)}`
              : "";
        return `${e.instancePath || "/"}${describeLocation(doc, e.instancePath)} ${e.message ?? "is invalid"}${extra}`;
      }),
    ),
  ].join("; ");
}

function invalid(source: string, message: string, code = "catalog.invalid"): never {
  throw new CmcpError(code, `${source}: ${message}`);
}

/** Parse limits for catalog files. */
export function catalogJsonLimits(limits: Readonly<CatalogLimits> = CATALOG_LIMITS) {
  return {
    maxBytes: limits.maxFileBytes,
    maxDepth: limits.maxDepth,
    maxStringLength: limits.maxDefinitionBytes,
    maxMembers: Math.max(limits.maxResourcesPerServer, limits.maxServers, 10_000),
    maxValues: 4_000_000,
  };
}

/** How deep a definition sits in a catalog file: catalog, servers, server, list, entry, definition. */
const DEFINITION_DEPTH = 6;

/** Parse limits a single definition must meet to fit in a catalog file (for live listings). */
export function definitionJsonLimits(limits: Readonly<CatalogLimits> = CATALOG_LIMITS) {
  const file = catalogJsonLimits(limits);
  return { ...file, maxBytes: limits.maxDefinitionBytes, maxDepth: file.maxDepth - (DEFINITION_DEPTH - 1) };
}

/** Reads and validates a catalog file. Codes: catalog.read (unreadable, too large, not JSON), catalog.invalid, catalog.collision. */
export async function readCatalog(
  path: string,
  limits: Readonly<CatalogLimits> = CATALOG_LIMITS,
): Promise<Catalog> {
  let bytes: Uint8Array;
  try {
    const st = await stat(path);
    if (!st.isFile()) throw new CmcpError("catalog.read", `catalog ${path} is not a file`);
    if (st.size > limits.maxFileBytes)
      throw new CmcpError("catalog.read", `catalog ${path} is larger than ${limits.maxFileBytes} bytes`);
    bytes = await readFile(path);
  } catch (err) {
    if (isCmcpError(err)) throw err;
    throw new CmcpError(
      "catalog.read",
      `cannot read catalog ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`,
    );
  }
  return parseCatalog(bytes, path, limits);
}

/** Parses and validates catalog JSON text or bytes; `source` names it in messages. */
export function parseCatalog(
  input: string | Uint8Array,
  source = "catalog",
  limits: Readonly<CatalogLimits> = CATALOG_LIMITS,
): Catalog {
  let doc: unknown;
  try {
    doc = parseJson(input, catalogJsonLimits(limits));
  } catch (err) {
    throw new CmcpError(
      "catalog.read",
      `${source} is not valid JSON: ${isCmcpError(err) ? err.message : String(err)}`,
    );
  }
  return validateCatalog(doc, source, limits);
}

/** Validates a parsed value as a catalog (schema, then the rules the schema cannot state). */
export function validateCatalog(
  doc: unknown,
  source = "catalog",
  limits: Readonly<CatalogLimits> = CATALOG_LIMITS,
): Catalog {
  if (!validateSchema(doc)) invalid(source, formatErrors(validateSchema.errors ?? [], doc));
  const catalog = doc as unknown as Catalog;
  if (catalog.servers.length > limits.maxServers)
    invalid(source, `/servers has more than ${limits.maxServers} servers`);
  const names = new Set<string>();
  catalog.servers.forEach((s, i) => {
    const at = `/servers/${i} ("${s.name}")`;
    if (names.has(s.name)) invalid(source, `${at}/name: server "${s.name}" is listed twice`);
    names.add(s.name);
    const counts: [DefinitionKind, unknown[], number][] = [
      ["tool", s.tools, limits.maxToolsPerServer],
      ["resource", s.resources, limits.maxResourcesPerServer],
      ["resource_template", s.resource_templates, limits.maxTemplatesPerServer],
      ["prompt", s.prompts, limits.maxPromptsPerServer],
    ];
    for (const [kind, list, max] of counts) {
      const member = LIST_FIELD[kind];
      if (list.length > max) invalid(source, `${at}/${member} has more than ${max} entries`);
      const seen = new Set<string>();
      list.forEach((raw, j) => {
        const entry = raw as Record<string, unknown>;
        const def = entry[ENTRY_FIELD[kind]] as JsonObject;
        const key = def[KEY_FIELD[kind]] as string;
        const where = `${at}/${member}/${j} (${JSON.stringify(key.slice(0, 120))})`;
        if (seen.has(key)) invalid(source, `${where}: ${kind} ${JSON.stringify(key)} is listed twice`);
        seen.add(key);
        let bytes: Uint8Array;
        try {
          bytes = canonicalBytes(def);
        } catch (err) {
          invalid(source, `${where}: definition cannot be canonicalized: ${(err as Error).message}`);
        }
        if (bytes.length > limits.maxDefinitionBytes)
          invalid(
            source,
            `${where}: definition is ${bytes.length} bytes, more than ${limits.maxDefinitionBytes} (canonical JSON)`,
          );
        const want = sha256Hex(bytes);
        if (entry.sha256 !== want)
          invalid(
            source,
            `${where}/sha256 does not match its definition (the definition hashes to ${want}); a definition edited by hand is not the one the server offers`,
            "catalog.hash-mismatch",
          );
      });
    }
  });
  catalogIndex(catalog, source);
  return catalog;
}

/** The member of a catalog server (and of a catalog_observed report) listing each kind. */
export const LIST_FIELD = {
  tool: "tools",
  resource: "resources",
  resource_template: "resource_templates",
  prompt: "prompts",
} as const satisfies Record<DefinitionKind, keyof CatalogServer>;

// ---- the index the gateway serves from ----------------------------------------------------------

export interface ItemBinding {
  kind: DefinitionKind;
  /** What agents see: a tool's or prompt's alias or own name, a resource's URI, a template's URI template. */
  exposed: string;
  server: string;
  /** The item's key at its server: name, uri or uriTemplate. */
  key: string;
  sha256: string;
  definition: JsonObject;
}

export type ItemMaps = Record<DefinitionKind, Map<string, ItemBinding>>;

export interface CatalogIndex {
  servers: Map<string, CatalogServer>;
  /** Per kind, by what agents see: each bound to exactly one server. */
  exposed: ItemMaps;
  /** Server name, then kind, then the item's key at that server. */
  byServer: Map<string, ItemMaps>;
}

const emptyMaps = (): ItemMaps => ({
  tool: new Map(),
  resource: new Map(),
  resource_template: new Map(),
  prompt: new Map(),
});

const NOUN: Record<DefinitionKind, string> = {
  tool: "tool name",
  prompt: "prompt name",
  resource: "resource URI",
  resource_template: "resource template",
};

/**
 * Lookup tables for serving listings and routing requests. Throws
 * CmcpError("catalog.collision") when two items of a kind would be exposed
 * under one name: a tool or prompt needs an alias, a resource URI or URI
 * template can be approved for one server only.
 */
export function catalogIndex(catalog: Catalog, source = "catalog"): CatalogIndex {
  const servers = new Map<string, CatalogServer>();
  const exposed = emptyMaps();
  const byServer = new Map<string, ItemMaps>();
  for (const s of catalog.servers) {
    servers.set(s.name, s);
    const own = emptyMaps();
    byServer.set(s.name, own);
    for (const kind of KINDS) {
      for (const raw of s[LIST_FIELD[kind]] as unknown as Record<string, unknown>[]) {
        const definition = raw[ENTRY_FIELD[kind]] as JsonObject;
        const key = definition[KEY_FIELD[kind]] as string;
        const alias = typeof raw.alias === "string" ? raw.alias : undefined;
        const b: ItemBinding = {
          kind,
          exposed: alias ?? key,
          server: s.name,
          key,
          sha256: raw.sha256 as string,
          definition,
        };
        const other = exposed[kind].get(b.exposed);
        if (other) {
          const who = (x: ItemBinding) =>
            x.key === x.exposed ? `server "${x.server}"` : `server "${x.server}" (alias of "${x.key}")`;
          const fix =
            kind === "tool" || kind === "prompt"
              ? `a ${kind} name is bound to exactly one server, so give one of them an "alias" (the name agents will see)`
              : `a ${NOUN[kind]} is bound to exactly one server, so approve it for one of them only`;
          throw new CmcpError(
            "catalog.collision",
            `${source}: ${NOUN[kind]} "${b.exposed}" is offered by ${who(other)} and by ${who(b)}; ${fix}`,
          );
        }
        exposed[kind].set(b.exposed, b);
        own[kind].set(key, b);
      }
    }
  }
  return { servers, exposed, byServer };
}

// ---- hashing and approval -----------------------------------------------------------------------

/** SHA-256 (hex) of the JCS bytes of the whole catalog: what `cmcp seal --catalog-hash` takes. */
export function catalogHash(catalog: Catalog): string {
  return sha256Hex(canonicalBytes(catalog));
}

export interface ApproveOptions {
  reviewer: string;
  now?: Date;
  scannerRulesVersion: string;
  acceptedHighFindings: number;
}

/** A copy of the catalog with its review recorded (validated before and after). */
export function approveCatalog(catalog: Catalog, opts: ApproveOptions): Catalog {
  // eslint-disable-next-line no-control-regex
  if (!/^[^\u0000-\u001f\u007f]{1,256}$/.test(opts.reviewer) || opts.reviewer.trim() === "")
    throw new CmcpError("catalog.usage", "the reviewer must be 1-256 characters without control characters");
  const approved: Catalog = {
    ...catalog,
    review: {
      reviewer: opts.reviewer,
      approved_at: artifactTime(opts.now ?? new Date()),
      scanner_rules_version: opts.scannerRulesVersion,
      accepted_high_findings: opts.acceptedHighFindings,
    },
  };
  return validateCatalog(JSON.parse(JSON.stringify(approved)) as unknown, "approved catalog");
}

// ---- scanning -----------------------------------------------------------------------------------

export interface CatalogFinding extends Finding {
  server: string;
  /** The tool's name at its server; null for a finding about another kind of item, the server or the catalog. */
  tool: string | null;
  /** A finding about a prompt, resource or resource template: which one. */
  item?: { kind: Exclude<DefinitionKind, "tool">; key: string };
}

/**
 * Runs the poisoning scanner over every approved tool definition, each with
 * all the catalog's other tools as context (so a description naming another
 * server's tool is recognised).
 */
export function scanCatalog(catalog: Catalog, rules: ScannerRules = defaultScannerRules()): CatalogFinding[] {
  const entries: ToolEntry[] = catalog.servers.flatMap((s) =>
    s.tools.map((t) => ({ tool: t.tool, label: t.tool.name, server: s.name })),
  );
  const out: CatalogFinding[] = [];
  for (const r of scanToolEntries(entries, { rules }))
    for (const f of r.findings) out.push({ ...f, server: r.server ?? "", tool: r.name });
  return out;
}

export function countBySeverity(findings: readonly { severity: Severity }[]): Record<Severity, number> {
  const out: Record<Severity, number> = { high: 0, medium: 0, low: 0 };
  for (const f of findings) out[f.severity]++;
  return out;
}

// ---- catalog diff -------------------------------------------------------------------------------

export type CatalogChangeKind = "server" | "identity" | "server_info" | DefinitionKind;

export interface CatalogChange {
  server: string;
  kind: CatalogChangeKind;
  op: "added" | "removed" | "changed";
  /** Tool or prompt name, resource URI or URI template; absent for server-level changes. */
  item?: string;
  /** Field-level changes: of the definition (pointers into it), the identity or server_info. */
  fields?: FieldChange[];
  /** For tools whose alias changed. */
  alias?: { before?: string; after?: string };
}

export interface CatalogDiff {
  /** No server, identity, server_info, definition or alias differs (created_at and review are not compared). */
  identical: boolean;
  changes: CatalogChange[];
  /** Shown for information; a review alone does not make catalogs differ. */
  review: { before: CatalogReview | null; after: CatalogReview | null } | null;
}

function itemsOf(s: CatalogServer, kind: DefinitionKind): Map<string, { def: JsonObject; alias?: string }> {
  const m = new Map<string, { def: JsonObject; alias?: string }>();
  for (const raw of s[LIST_FIELD[kind]] as unknown as Record<string, unknown>[]) {
    const def = raw[ENTRY_FIELD[kind]] as JsonObject;
    const alias = typeof raw.alias === "string" ? raw.alias : undefined;
    m.set(def[KEY_FIELD[kind]] as string, alias !== undefined ? { def, alias } : { def });
  }
  return m;
}

const byKey = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

/** What changed from `before` to `after`, server by server and tool by tool, with field-level diffs. */
export function diffCatalogs(before: Catalog, after: Catalog): CatalogDiff {
  const changes: CatalogChange[] = [];
  const old = new Map(before.servers.map((s) => [s.name, s]));
  const cur = new Map(after.servers.map((s) => [s.name, s]));
  const order = [
    ...after.servers.map((s) => s.name),
    ...before.servers.map((s) => s.name).filter((n) => !cur.has(n)),
  ];
  for (const name of order) {
    const a = old.get(name);
    const b = cur.get(name);
    if (!a || !b) {
      const s = (a ?? b) as CatalogServer;
      const op = a ? "removed" : "added";
      changes.push({ server: name, kind: "server", op });
      for (const kind of KINDS)
        for (const key of [...itemsOf(s, kind).keys()].sort(byKey))
          changes.push({ server: name, kind, op, item: key });
      continue;
    }
    const id = identityDiff(a.identity, b.identity);
    if (id.length > 0) changes.push({ server: name, kind: "identity", op: "changed", fields: id });
    const info = diffJson(a.server_info, b.server_info);
    if (info.length > 0) changes.push({ server: name, kind: "server_info", op: "changed", fields: info });
    for (const kind of KINDS) {
      const ia = itemsOf(a, kind);
      const ib = itemsOf(b, kind);
      const keys = [...new Set([...ia.keys(), ...ib.keys()])].sort(byKey);
      for (const key of keys) {
        const x = ia.get(key);
        const y = ib.get(key);
        if (!x) changes.push({ server: name, kind, op: "added", item: key });
        else if (!y) changes.push({ server: name, kind, op: "removed", item: key });
        else {
          const fields = diffDefinitions(x.def, y.def, kind);
          const aliasChanged = x.alias !== y.alias;
          if (fields.length === 0 && !aliasChanged) continue;
          changes.push({
            server: name,
            kind,
            op: "changed",
            item: key,
            fields,
            ...(aliasChanged
              ? {
                  alias: {
                    ...(x.alias !== undefined ? { before: x.alias } : {}),
                    ...(y.alias !== undefined ? { after: y.alias } : {}),
                  },
                }
              : {}),
          });
        }
      }
    }
  }
  const reviewDiffers = diffJson(before.review, after.review).length > 0;
  return {
    identical: changes.length === 0,
    changes,
    review: reviewDiffers ? { before: before.review, after: after.review } : null,
  };
}
