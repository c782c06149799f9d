/**
 * Tool-definition scanner (issue 5, "poisoning"). Reads an MCP tool definition
 * — name, title, description, annotations, and the input and output schemas
 * recursively (property names and descriptions, titles, enum values, defaults,
 * examples) — and reports findings from the rules in policies/scanner-rules.json:
 * instructions addressed to the model (in English and other major languages),
 * hidden markup, references to other tools or servers, sensitive paths,
 * exfiltration URLs and values, invisible or deceptive Unicode, encoded blobs
 * and abnormal length. Text rules also read derived views of each string (what
 * its encodings decode to, its escapes decoded, look-alike letters, digits and
 * spaced-out letters read as words), so an instruction is judged by what it
 * says however it is written; such findings point at the encoded span.
 *
 * The input is untrusted. Limits (DEFAULT_SCAN_LIMITS): definition size, nesting
 * depth, number of fields, characters scanned per string, findings kept. The
 * walk is iterative, every rule pattern is linted against super-linear
 * backtracking when the rules load, and scanTool never throws: hostile input
 * yields findings and, when it cannot be scanned fully, an error beside them.
 */
import { CmcpError, isCmcpError } from "../artifacts/errors.js";
import { runRules, type FieldText, type ScanContext, type StructureStats } from "./tool-scanner-kinds.js";
import {
  SEVERITY_RANK,
  defaultScannerRules,
  type Category,
  type FieldRole,
  type ScannerRules,
  type Severity,
  type SeverityOrNone,
} from "./tool-scanner-rules.js";
import { isInvisible } from "./tool-scanner-text.js";

export type { Category, Severity, SeverityOrNone, ScannerRules } from "./tool-scanner-rules.js";
export { defaultScannerRules, loadScannerRules, parseScannerRules } from "./tool-scanner-rules.js";

export interface ScanLimits {
  /** UTF-8 bytes of all keys and strings in one definition; beyond it the walk stops. */
  maxDefinitionBytes: number;
  /** Container nesting below the tool object; deeper values are not read. */
  maxDepth: number;
  /** Strings and keys read per definition. */
  maxFields: number;
  /** Code units of one string that rules read; the rest is reported, not scanned. */
  maxStringLength: number;
  /** Findings kept per definition (highest severity first). */
  maxFindings: number;
  /** Findings one rule may report in one field. */
  maxFindingsPerRuleField: number;
}

export const DEFAULT_SCAN_LIMITS: Readonly<ScanLimits> = Object.freeze({
  // 1 MiB: 80x the largest real definition in the corpus (mongodb explain, ~12 KB).
  maxDefinitionBytes: 1024 * 1024,
  // Real schemas nest < 25 containers; 128 leaves room for odd generators.
  maxDepth: 128,
  // The largest real definitions hold a few hundred strings.
  maxFields: 20_000,
  // Descriptions run to a few KB; 128 Ki code units bounds per-string rule work.
  maxStringLength: 128 * 1024,
  maxFindings: 200,
  maxFindingsPerRuleField: 3,
});

/** A tool another server (or this one) offers, so references to it can be recognised. */
export interface CatalogTool {
  name: string;
  /** Server the tool belongs to; tools with the same server as the scanned one are siblings. */
  server?: string;
}

export interface ScanOptions {
  rules?: ScannerRules;
  limits?: Partial<ScanLimits>;
  /** The other tools in the catalog (the scanned tool itself may be included; it is skipped). */
  catalog?: readonly CatalogTool[];
  /** Server of the scanned tool. */
  server?: string;
}

export interface Span {
  /** UTF-16 offsets into the field's string (or key). */
  start: number;
  end: number;
  /** The offending text, with invisible characters shown as <U+XXXX>. */
  text: string;
}

export interface Finding {
  ruleId: string;
  category: Category | "malformed";
  severity: Severity;
  title: string;
  /** JSONPath-style location of the field, e.g. $.inputSchema.properties.city.description. */
  path: string;
  /** "key" when the span is in the property name at `path`, "value" when in the string there. */
  target: "value" | "key";
  span: Span;
  explanation: string;
  /** Specifics of this occurrence (decoded text, counts, the tool referenced). */
  detail?: string;
}

export interface ScanError {
  code: string;
  message: string;
}

export interface ScanResult {
  /** The tool's name when it has a string one. */
  name: string | null;
  findings: Finding[];
  /** Highest severity among the findings ("none" when there are none). */
  maxSeverity: SeverityOrNone;
  /** Present when the definition could not be scanned completely; findings hold what was read. */
  error?: ScanError;
  rulesVersion: string;
}

function resolveLimits(partial: Partial<ScanLimits> | undefined): ScanLimits {
  const out = { ...DEFAULT_SCAN_LIMITS };
  if (partial === undefined) return out;
  for (const key of Object.keys(DEFAULT_SCAN_LIMITS) as (keyof ScanLimits)[]) {
    const v = partial[key];
    if (v === undefined) continue;
    if (typeof v !== "number" || !Number.isInteger(v) || v < 1)
      throw new CmcpError("scanner.limits", `scan limit ${key} must be a positive integer`);
    out[key] = v;
  }
  return out;
}

// ---- paths --------------------------------------------------------------------------------------

const PLAIN_KEY = /^[A-Za-z_$][A-Za-z0-9_$]{0,100}$/;

function escapeKey(key: string): string {
  // JSON quoting, then \u escapes for invisible characters so a path never hides anything.
  const q = JSON.stringify(key.length > 200 ? `${key.slice(0, 200)}…` : key);
  let out = "";
  for (const ch of q) {
    if (!isInvisible(ch) && ch !== "\u00a0") out += ch;
    // Astral characters as their surrogate pair, as JSON writes them.
    else for (let k = 0; k < ch.length; k++) out += `\\u${ch.charCodeAt(k).toString(16).padStart(4, "0")}`;
  }
  return out;
}

export function childPath(parent: string, key: string | number): string {
  if (typeof key === "number") return `${parent}[${key}]`;
  return PLAIN_KEY.test(key) ? `${parent}.${key}` : `${parent}[${escapeKey(key)}]`;
}

// ---- the walk -----------------------------------------------------------------------------------

/** Keys whose value maps names to subschemas. */
const SCHEMA_MAPS = new Set(["properties", "patternProperties", "$defs", "definitions", "dependentSchemas"]);
/** Keys holding one subschema (or, for items, possibly an array of them). */
const SCHEMA_ONE = new Set([
  "items",
  "additionalProperties",
  "additionalItems",
  "unevaluatedProperties",
  "unevaluatedItems",
  "not",
  "if",
  "then",
  "else",
  "contains",
  "propertyNames",
]);
const SCHEMA_LIST = new Set(["allOf", "anyOf", "oneOf", "prefixItems"]);
/** Schema keywords whose string values are machine syntax, not prose. */
const SCHEMA_KEYWORDS = new Set([
  "type",
  "format",
  "$ref",
  "$schema",
  "$id",
  "$anchor",
  "$dynamicRef",
  "$dynamicAnchor",
  "pattern",
  "contentEncoding",
  "contentMediaType",
  "required",
  "dependentRequired",
]);

class LimitExceeded extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

interface WalkState {
  limits: ScanLimits;
  fields: FieldText[];
  stats: StructureStats;
  bytes: number;
  count: number;
  seen: WeakSet<object>;
  findings: Finding[];
}

function malformed(state: WalkState, path: string, message: string): void {
  state.findings.push({
    ruleId: "scanner.malformed",
    category: "malformed",
    severity: "medium",
    title: "Malformed tool definition",
    path,
    target: "value",
    span: { start: 0, end: 0, text: "" },
    explanation: message,
  });
}

function countField(state: WalkState, s: string): void {
  state.count++;
  if (state.count > state.limits.maxFields)
    throw new LimitExceeded(
      "scan.too-many-fields",
      `definition has more than ${state.limits.maxFields} strings and keys`,
    );
  // UTF-8 size without encoding: at most 3 bytes per UTF-16 code unit.
  state.bytes += s.length <= 64 ? Buffer.byteLength(s, "utf8") : Math.min(s.length * 3, Buffer.byteLength(s));
  if (state.bytes > state.limits.maxDefinitionBytes)
    throw new LimitExceeded(
      "scan.too-large",
      `definition is larger than ${state.limits.maxDefinitionBytes} bytes`,
    );
}

function addField(state: WalkState, s: string, path: string, role: FieldRole, target: "value" | "key"): void {
  countField(state, s);
  const max = state.limits.maxStringLength;
  state.fields.push({
    path,
    role,
    target,
    text: s.length > max ? s.slice(0, max) : s,
    fullLength: s.length,
  });
}

type Frame =
  | { kind: "schema"; value: unknown; path: string; depth: number }
  | { kind: "value"; value: unknown; path: string; depth: number; role: FieldRole };

function enter(state: WalkState, value: object, path: string, depth: number): boolean {
  if (depth > state.limits.maxDepth)
    throw new LimitExceeded("scan.too-deep", `${path} is nested deeper than ${state.limits.maxDepth}`);
  if (depth > state.stats.depth.value) state.stats.depth = { value: depth, path };
  // JSON has no shared or cyclic references; an object seen twice is skipped, not walked again.
  if (state.seen.has(value)) return false;
  state.seen.add(value);
  return true;
}

function walk(state: WalkState, start: Frame[]): void {
  const stack: Frame[] = [...start].reverse();
  while (stack.length > 0) {
    const f = stack.pop() as Frame;
    const v = f.value;
    if (typeof v === "string") {
      addField(state, v, f.path, f.kind === "value" ? f.role : "other", "value");
      continue;
    }
    if (v === null || typeof v !== "object") continue;
    if (!enter(state, v, f.path, f.depth)) continue;
    const next: Frame[] = [];
    if (Array.isArray(v)) {
      v.forEach((item, i) => {
        const path = childPath(f.path, i);
        next.push(
          f.kind === "schema"
            ? { kind: "value", value: item, path, depth: f.depth + 1, role: "other" }
            : { kind: "value", value: item, path, depth: f.depth + 1, role: f.role },
        );
      });
    } else if (f.kind === "value") {
      for (const [k, item] of Object.entries(v)) {
        const path = childPath(f.path, k);
        addField(state, k, path, f.role === "value" ? "value" : "other", "key");
        next.push({ kind: "value", value: item, path, depth: f.depth + 1, role: f.role });
      }
    } else {
      for (const [k, item] of Object.entries(v)) {
        const path = childPath(f.path, k);
        const depth = f.depth + 1;
        if (SCHEMA_MAPS.has(k) && item !== null && typeof item === "object" && !Array.isArray(item)) {
          if (!enter(state, item, path, depth)) continue;
          const names = Object.keys(item);
          if (k === "properties") state.stats.properties.push({ path, value: names.length });
          for (const name of names) {
            const p = childPath(path, name);
            addField(
              state,
              name,
              p,
              k === "properties" || k === "patternProperties" ? "property-name" : "other",
              "key",
            );
            next.push({
              kind: "schema",
              value: (item as Record<string, unknown>)[name],
              path: p,
              depth: depth + 1,
            });
          }
        } else if (SCHEMA_ONE.has(k)) {
          if (Array.isArray(item)) {
            if (!enter(state, item, path, depth)) continue;
            item.forEach((s, i) =>
              next.push({ kind: "schema", value: s, path: childPath(path, i), depth: depth + 1 }),
            );
          } else next.push({ kind: "schema", value: item, path, depth });
        } else if (SCHEMA_LIST.has(k) && Array.isArray(item)) {
          if (!enter(state, item, path, depth)) continue;
          item.forEach((s, i) =>
            next.push({ kind: "schema", value: s, path: childPath(path, i), depth: depth + 1 }),
          );
        } else if (k === "description" || k === "$comment") {
          next.push({ kind: "value", value: item, path, depth, role: "description" });
        } else if (k === "title") {
          next.push({ kind: "value", value: item, path, depth, role: "title" });
        } else if (k === "enum" || k === "examples" || k === "const" || k === "default") {
          if (k === "enum" && Array.isArray(item)) state.stats.enums.push({ path, value: item.length });
          next.push({ kind: "value", value: item, path, depth, role: "value" });
        } else if (SCHEMA_KEYWORDS.has(k)) {
          next.push({ kind: "value", value: item, path, depth, role: "keyword" });
        } else {
          // An unknown keyword is read like any other text: prose can hide anywhere.
          addField(state, k, path, "other", "key");
          next.push({ kind: "value", value: item, path, depth, role: "other" });
        }
      }
    }
    for (let i = next.length - 1; i >= 0; i--) stack.push(next[i] as Frame);
  }
}

const TOOL_TEXT: Record<string, FieldRole> = { name: "name", title: "title", description: "description" };

function walkTool(state: WalkState, tool: Record<string, unknown>): void {
  const frames: Frame[] = [];
  for (const [k, v] of Object.entries(tool)) {
    const path = childPath("$", k);
    const role = TOOL_TEXT[k];
    if (role !== undefined) {
      if (typeof v !== "string") malformed(state, path, `"${k}" should be a string, found ${describe(v)}`);
      frames.push({ kind: "value", value: v, path, depth: 1, role });
    } else if (k === "inputSchema" || k === "outputSchema") {
      if (v === null || typeof v !== "object" || Array.isArray(v))
        malformed(state, path, `"${k}" should be a JSON Schema object, found ${describe(v)}`);
      frames.push({ kind: "schema", value: v, path, depth: 1 });
    } else if (k === "annotations" && v !== null && typeof v === "object" && !Array.isArray(v)) {
      if (!enter(state, v, path, 1)) continue;
      for (const [ak, av] of Object.entries(v)) {
        const p = childPath(path, ak);
        if (ak !== "title") addField(state, ak, p, "other", "key");
        frames.push({
          kind: "value",
          value: av,
          path: p,
          depth: 2,
          role: ak === "title" ? "title" : "other",
        });
      }
    } else {
      addField(state, k, path, "other", "key");
      frames.push({ kind: "value", value: v, path, depth: 1, role: "other" });
    }
  }
  if (typeof tool.name !== "string") {
    if (!("name" in tool)) malformed(state, "$", 'the tool has no "name"');
  }
  walk(state, frames);
}

function describe(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  return typeof v === "object" ? "an object" : `a ${typeof v}`;
}

// ---- results ------------------------------------------------------------------------------------

function finish(findings: Finding[], limits: ScanLimits): Finding[] {
  // One finding per rule, path, target and span: kinds may see the same text twice.
  const seen = new Set<string>();
  const unique = findings.filter((f) => {
    const key = `${f.ruleId}\u0000${f.path}\u0000${f.target}\u0000${f.span.start}\u0000${f.span.end}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
  unique.sort(
    (a, b) =>
      SEVERITY_RANK[b.severity] - SEVERITY_RANK[a.severity] ||
      (a.path < b.path ? -1 : a.path > b.path ? 1 : 0) ||
      a.span.start - b.span.start ||
      (a.ruleId < b.ruleId ? -1 : a.ruleId > b.ruleId ? 1 : 0),
  );
  return unique.slice(0, limits.maxFindings);
}

export function maxSeverity(findings: readonly Finding[]): SeverityOrNone {
  let best: SeverityOrNone = "none";
  for (const f of findings) if (SEVERITY_RANK[f.severity] > SEVERITY_RANK[best]) best = f.severity;
  return best;
}

/** Scans one tool definition. Never throws on hostile input; see ScanResult.error. */
export function scanTool(tool: unknown, options: ScanOptions = {}): ScanResult {
  let rules: ScannerRules;
  let limits: ScanLimits;
  try {
    rules = options.rules ?? defaultScannerRules();
    limits = resolveLimits(options.limits);
  } catch (err) {
    // A bad rules file or bad limits are the caller's configuration, not hostile input.
    throw isCmcpError(err) ? err : new CmcpError("scanner.rules", String(err));
  }
  const base = { rulesVersion: rules.version };
  if (tool === null || typeof tool !== "object" || Array.isArray(tool)) {
    return {
      ...base,
      name: null,
      findings: [],
      maxSeverity: "none",
      error: {
        code: "scan.not-a-tool",
        message: `a tool definition must be an object, found ${describe(tool)}`,
      },
    };
  }
  const state: WalkState = {
    limits,
    fields: [],
    stats: { depth: { value: 0, path: "$" }, enums: [], properties: [], bytes: 0 },
    bytes: 0,
    count: 0,
    seen: new WeakSet(),
    findings: [],
  };
  let name: string | null = null;
  let error: ScanError | undefined;
  try {
    const t = tool as Record<string, unknown>;
    name = typeof t.name === "string" ? t.name : null;
    walkTool(state, t);
  } catch (err) {
    error =
      err instanceof LimitExceeded
        ? { code: err.code, message: `${err.message}; scanned what was read before the limit` }
        : { code: "scan.unreadable", message: `definition could not be read: ${String(err)}` };
  }
  state.stats.bytes = state.bytes;
  try {
    const ctx: ScanContext = {
      name,
      server: options.server,
      catalog: options.catalog ?? [],
      limits,
      stats: state.stats,
      truncatedDefinition: error !== undefined,
    };
    state.findings.push(...runRules(rules.rules, state.fields, ctx));
  } catch (err) {
    // A rule kind failing on some input is a scanner bug; report it rather than pass the tool.
    error ??= {
      code: "scan.internal",
      message: `scanner failed: ${err instanceof Error ? err.message : String(err)}`,
    };
  }
  if (error !== undefined) {
    state.findings.push({
      ruleId: "scanner.incomplete",
      category: "malformed",
      severity: "high",
      title: "Definition could not be scanned completely",
      path: "$",
      target: "value",
      span: { start: 0, end: 0, text: "" },
      explanation:
        "The scanner stopped before reading the whole definition, so parts of it were not checked. A definition this large or deep cannot be reviewed and should not be approved.",
      detail: error.message,
    });
  }
  const findings = finish(state.findings, limits);
  return { ...base, name, findings, maxSeverity: maxSeverity(findings), ...(error ? { error } : {}) };
}

// ---- files holding tools ------------------------------------------------------------------------

export interface ToolEntry {
  tool: unknown;
  /** How the tool is named in reports: its name, or its position when it has none. */
  label: string;
  server?: string;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

function toolLabel(tool: unknown, where: string): string {
  return isRecord(tool) && typeof tool.name === "string" ? tool.name : where;
}

function fromList(list: unknown[], where: string, server?: string): ToolEntry[] {
  return list.map((item, i) => {
    // Labelled corpus items ({id, tool}) carry the tool one level down.
    if (isRecord(item) && isRecord(item.tool) && !("inputSchema" in item)) {
      const label = typeof item.id === "string" ? item.id : toolLabel(item.tool, `${where}[${i}]`);
      return { tool: item.tool, label, ...(server !== undefined ? { server } : {}) };
    }
    return {
      tool: item,
      label: toolLabel(item, `${where}[${i}]`),
      ...(server !== undefined ? { server } : {}),
    };
  });
}

/**
 * Finds the tool definitions in a parsed file: a tools/list result ({tools}), a JSON-RPC
 * response around one ({result: {tools}}), an array of tools (or of labelled {id, tool}
 * items), a single tool, or a catalog-like document with a tools array or servers each
 * holding one. Throws CmcpError("scan.no-tools") when there are none.
 */
export function extractToolEntries(doc: unknown): ToolEntry[] {
  if (Array.isArray(doc)) return fromList(doc, "$");
  if (isRecord(doc)) {
    const server = typeof doc.server === "string" ? doc.server : undefined;
    if (Array.isArray(doc.tools)) return fromList(doc.tools, "$.tools", server);
    if (isRecord(doc.result) && Array.isArray(doc.result.tools))
      return fromList(doc.result.tools, "$.result.tools");
    if (Array.isArray(doc.servers) || isRecord(doc.servers)) {
      const servers = Array.isArray(doc.servers)
        ? doc.servers.map(
            (s, i) => [isRecord(s) && typeof s.name === "string" ? s.name : `servers[${i}]`, s] as const,
          )
        : Object.entries(doc.servers as Record<string, unknown>);
      const out: ToolEntry[] = [];
      for (const [name, s] of servers)
        if (isRecord(s) && Array.isArray(s.tools))
          out.push(...fromList(s.tools, `$.servers.${name}.tools`, name));
      if (out.length > 0) return out;
    }
    if (typeof doc.name === "string" || "inputSchema" in doc)
      return [{ tool: doc, label: toolLabel(doc, "$") }];
  }
  throw new CmcpError(
    "scan.no-tools",
    'no tool definitions found: expected a tools/list result ({"tools": [...]}), an array of tools, a single tool, or a catalog with a tools array',
  );
}

export interface EntryResult extends ScanResult {
  label: string;
  server?: string;
}

/**
 * Scans several tools, each against the others as its catalog (so a tool naming another
 * server's tool is recognised) unless options.catalog is given.
 */
export function scanToolEntries(
  entries: readonly ToolEntry[],
  options: Omit<ScanOptions, "server"> = {},
): EntryResult[] {
  const catalog =
    options.catalog ??
    entries.flatMap((e) =>
      isRecord(e.tool) && typeof e.tool.name === "string"
        ? [{ name: e.tool.name, ...(e.server !== undefined ? { server: e.server } : {}) }]
        : [],
    );
  return entries.map((e) => ({
    ...scanTool(e.tool, { ...options, catalog, ...(e.server !== undefined ? { server: e.server } : {}) }),
    label: e.label,
    ...(e.server !== undefined ? { server: e.server } : {}),
  }));
}

export function atLeast(severity: SeverityOrNone, threshold: Severity): boolean {
  return SEVERITY_RANK[severity] >= SEVERITY_RANK[threshold];
}
