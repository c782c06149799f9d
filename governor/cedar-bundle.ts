/**
 * Cedar policy bundles: a directory of `.cedar` files (plus test cases and
 * notes) validated against the MCP schema before anything evaluates them.
 *
 * Layout and limits (BUNDLE_LIMITS): at most 1,000 files, 1 MiB each and
 * 16 MiB in all, 8 directory levels, 10,000 policies. Names starting with
 * "." (.git, editor files) are ignored and never loaded or hashed. Symbolic
 * links must resolve to a regular file inside the bundle; a link that
 * escapes it, or points at a directory, refuses the bundle. Policies come
 * only from `*.cedar` files at the top level; a `.cedar` file deeper down
 * refuses the bundle rather than being silently ignored.
 *
 * The bundle hash is SHA-256 over the JCS form of the sorted list of
 * {path, sha256, size} of every file, so it covers exactly the bytes that
 * were parsed (files are read once and parsed from those bytes).
 */
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { existsSync } from "node:fs";
import * as cedar from "./cedar-wasm.js";
import type { DetailedError, PolicyJson, SchemaJson } from "@cedar-policy/cedar-wasm/nodejs";
import { CmcpError, isCmcpError } from "../artifacts/errors.js";
import { NAME_PATTERN, parseAnnotations, type PolicyMeta } from "./cedar-annotations.js";
import {
  readCapped,
  treeHash,
  treeListing,
  walkFileTree,
  type TreeEntry,
  type TreeFile,
  type TreeProblem,
} from "./file-tree.js";

export interface BundleLimits {
  maxFiles: number;
  maxFileBytes: number;
  maxTotalBytes: number;
  maxDepth: number;
  maxPolicies: number;
}

export const BUNDLE_LIMITS: Readonly<BundleLimits> = Object.freeze({
  maxFiles: 1000,
  maxFileBytes: 1024 * 1024,
  maxTotalBytes: 16 * 1024 * 1024,
  maxDepth: 8,
  maxPolicies: 10_000,
});

/** The schema file is far smaller; the cap only bounds a mistaken path. */
const MAX_SCHEMA_BYTES = 1024 * 1024;

export type BundleFile = TreeFile;

export type BundleListingEntry = TreeEntry;

export interface SchemaSource {
  path: string;
  text: string;
  /** SHA-256 (hex) of the schema file's bytes. */
  hash: string;
}

export interface LoadedPolicy extends PolicyMeta {
  /** `<file stem>/<@id>`: the ID Cedar reports and receipts name. */
  id: string;
  file: string;
  /** 1-based line of the policy in its file. */
  line: number;
  text: string;
  json: PolicyJson;
}

export interface PolicyBundle {
  /** The directory as given (informational). */
  dir: string;
  hash: string;
  listing: BundleListingEntry[];
  files: BundleFile[];
  schema: SchemaSource;
  /** The schema in JSON form (actions and their groups drive slicing). */
  schemaJson: SchemaJson<string>;
  /** Sorted by ID. */
  policies: LoadedPolicy[];
  /** Validator warnings (for example an impossible policy); they do not refuse the bundle. */
  warnings: string[];
}

const textDecoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: false });

/** The shipped `policies/` directory, found from this module in the source tree and in dist/. */
export function policiesRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 4; i++) {
    const candidate = join(dir, "policies");
    if (existsSync(join(candidate, "schema", "mcp.cedarschema"))) return candidate;
    dir = dirname(dir);
  }
  throw new CmcpError("policy.read", "cannot find the shipped policies/ directory");
}

export function defaultSchemaPath(): string {
  return join(policiesRoot(), "schema", "mcp.cedarschema");
}

/** Path of a bundle shipped under policies/bundles/ (e.g. "baseline-strict"). */
export function shippedBundlePath(name: string): string {
  return join(policiesRoot(), "bundles", name);
}

export async function readSchema(path = defaultSchemaPath()): Promise<SchemaSource> {
  let read;
  try {
    read = await readCapped(path, MAX_SCHEMA_BYTES, true);
  } catch (err) {
    throw readError(`schema ${path}`, err);
  }
  if (!read) throw new CmcpError("policy.too-large", `${path} is larger than ${MAX_SCHEMA_BYTES} bytes`);
  let text: string;
  try {
    text = textDecoder.decode(read.bytes);
  } catch {
    throw new CmcpError("policy.schema", `schema ${path} is not valid UTF-8`);
  }
  return { path, text, hash: read.sha256 };
}

/**
 * Reads every file of the bundle once, within the limits. Throws
 * `policy.read` when the directory cannot be read and `policy.bundle` when
 * its contents break a rule (limits, links, special files, names).
 */
export async function readBundleFiles(
  dir: string,
  limits: Readonly<BundleLimits> = BUNDLE_LIMITS,
): Promise<BundleFile[]> {
  const tree = await walkFileTree(dir, {
    limits,
    skipDotNames: true,
    rejectOddNames: true,
    keepBytes: true,
    error: (problem) => bundleError(dir, problem),
  });
  return tree.files;
}

function bundleError(dir: string, p: TreeProblem): CmcpError {
  const refuse = (message: string) => new CmcpError("policy.bundle", `bundle ${dir}${message}`);
  switch (p.kind) {
    case "root":
    case "read-dir":
      return readError(`bundle ${dir}`, p.cause);
    case "root-not-dir":
      return new CmcpError("policy.read", `${dir} is not a directory`);
    case "read-file":
      return readError(`bundle ${dir}: ${p.path}`, p.cause);
    case "name-encoding":
      return refuse(`: a file name under ${p.path} is not valid UTF-8`);
    case "name-chars":
      return refuse(`: ${JSON.stringify(p.path)} has a control character or backslash in its name`);
    case "link-broken":
      return refuse(`: symbolic link ${p.path} is broken`);
    case "link-outside":
      return refuse(`: symbolic link ${p.path} points outside the bundle`);
    case "link-directory":
      return refuse(`: symbolic link ${p.path} points at a directory`);
    case "too-deep":
      return refuse(`: ${p.path} nests deeper than ${p.limit} levels`);
    case "not-regular":
      return refuse(`: ${p.path} is not a regular file`);
    case "file-too-large":
      return refuse(`: ${p.path} is larger than ${p.limit} bytes`);
    case "too-many-files":
      return refuse(` has more than ${p.limit} files`);
    case "too-many-bytes":
      return refuse(` holds more than ${p.limit} bytes`);
  }
}

export function bundleListing(files: readonly BundleFile[]): BundleListingEntry[] {
  return treeListing(files);
}

/** SHA-256 (hex) of the JCS-canonical sorted listing of {path, sha256, size}. */
export function bundleHash(files: readonly BundleFile[]): string {
  return treeHash(files);
}

export interface LoadOptions {
  /** Schema file; default the shipped policies/schema/mcp.cedarschema. */
  schemaPath?: string;
  limits?: Readonly<BundleLimits>;
}

/** Reads, parses and validates a bundle; throws a CmcpError naming the file and policy at fault. */
export async function loadPolicyBundle(dir: string, options: LoadOptions = {}): Promise<PolicyBundle> {
  const [files, schema] = await Promise.all([
    readBundleFiles(dir, options.limits),
    readSchema(options.schemaPath),
  ]);
  return compileBundle(dir, files, schema, options.limits);
}

/** Parses and validates already-read files (the same bytes the hash covers). */
export function compileBundle(
  dir: string,
  files: readonly BundleFile[],
  schema: SchemaSource,
  limits: Readonly<BundleLimits> = BUNDLE_LIMITS,
): PolicyBundle {
  const schemaJson = parseSchema(schema);
  const policies = new Map<string, LoadedPolicy>();
  for (const file of files) {
    if (!file.path.endsWith(".cedar")) continue;
    if (file.path.includes("/")) {
      throw new CmcpError(
        "policy.bundle",
        `bundle ${dir}: ${file.path}: policy files must be at the top level of the bundle`,
      );
    }
    for (const p of splitPolicyFile(file)) {
      const other = policies.get(p.id);
      if (other) {
        throw new CmcpError(
          "policy.id",
          `${file.path}:${p.line}: duplicate policy ID ${p.id} (also at ${other.file}:${other.line})`,
        );
      }
      policies.set(p.id, p);
      if (policies.size > limits.maxPolicies) {
        throw new CmcpError("policy.bundle", `bundle ${dir} has more than ${limits.maxPolicies} policies`);
      }
    }
  }
  const warnings = validatePolicies(schema, policies);
  const sorted = [...policies.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  return {
    dir,
    hash: bundleHash(files),
    listing: bundleListing(files),
    files: [...files],
    schema,
    schemaJson,
    policies: sorted,
    warnings,
  };
}

function parseSchema(schema: SchemaSource): SchemaJson<string> {
  const r = cedar.schemaToJson(schema.text);
  if (r.type === "failure") {
    throw new CmcpError(
      "policy.schema",
      `schema ${schema.path}: ${r.errors.map((e) => located(schema.text, e)).join("; ")}`,
    );
  }
  return r.json;
}

/**
 * Splits one file into policies with Cedar's own parser; every policy needs
 * an @id. Yields them one by one, so the caller's duplicate-ID and policy
 * count checks stop a file before the rest of it is converted.
 */
function* splitPolicyFile(file: BundleFile): Generator<LoadedPolicy> {
  const stem = file.path.slice(0, -".cedar".length);
  if (!NAME_PATTERN.test(stem)) {
    throw new CmcpError(
      "policy.bundle",
      `${file.path}: the file name (before .cedar) must be 1-64 of A-Z a-z 0-9 _ . - and start with a letter or digit`,
    );
  }
  let text: string;
  try {
    text = textDecoder.decode(file.bytes);
  } catch {
    throw new CmcpError("policy.parse", `${file.path} is not valid UTF-8`);
  }
  const parts = cedar.policySetTextToParts(text);
  if (parts.type === "failure") {
    throw new CmcpError(
      "policy.parse",
      `${file.path}: ${parts.errors.map((e) => located(text, e)).join("; ")}`,
    );
  }
  const lineAt = lineFinder(text);
  if (parts.policy_templates.length > 0) {
    const line = lineAt(text.indexOf(parts.policy_templates[0]!));
    throw new CmcpError(
      "policy.parse",
      `${file.path}:${line}: policy templates (?principal / ?resource slots) are not supported in bundles`,
    );
  }
  // Where to look for each text next: identical texts (a duplicate ID) take successive occurrences.
  const searchFrom = new Map<string, number>();
  for (const policyText of parts.policies) {
    // The parts are verbatim slices of the file (in Cedar's ID order, not file order): find each for its line.
    const at = text.indexOf(policyText, searchFrom.get(policyText) ?? 0);
    searchFrom.set(policyText, at + 1);
    const line = at < 0 ? 0 : lineAt(at);
    const where = line > 0 ? `${file.path}:${line}` : file.path;
    const j = cedar.policyToJson(policyText);
    if (j.type === "failure") {
      throw new CmcpError("policy.parse", `${where}: ${j.errors.map((e) => e.message).join("; ")}`);
    }
    const meta = parseAnnotations(j.json.annotations ?? {}, j.json.effect, where);
    yield {
      ...meta,
      id: `${stem}/${meta.localId}`,
      file: file.path,
      line,
      text: policyText,
      json: j.json,
    };
  }
}

function validatePolicies(schema: SchemaSource, policies: Map<string, LoadedPolicy>): string[] {
  const staticPolicies: Record<string, string> = {};
  for (const [id, p] of policies) staticPolicies[id] = p.text;
  const r = cedar.validate({
    schema: schema.text,
    policies: { staticPolicies },
    validationSettings: { mode: "strict" },
  });
  if (r.type === "failure") {
    throw new CmcpError(
      "policy.validation",
      `validation failed: ${r.errors.map((e) => e.message).join("; ")}`,
    );
  }
  const describe = (e: { policyId: string; error: DetailedError }): string => {
    const p = policies.get(e.policyId);
    const where = p ? `${p.file}:${p.line}` : "?";
    const help = e.error.help ? ` (${e.error.help})` : "";
    return `policy ${e.policyId} (${where}): ${e.error.message}${help}`;
  };
  if (r.validationErrors.length > 0) {
    // One policy often fails once per action it could apply to: report each message once.
    const messages = [...new Set(r.validationErrors.map(describe))];
    throw new CmcpError(
      "policy.validation",
      `${messages.length} schema validation error(s): ${messages.slice(0, 10).join("; ")}${messages.length > 10 ? "; ..." : ""}`,
      { errors: messages },
    );
  }
  return [...new Set([...r.validationWarnings.map(describe), ...r.otherWarnings.map((w) => w.message)])];
}

/** A Cedar error with its first source location turned into line:column. */
function located(text: string, e: DetailedError): string {
  const loc = e.sourceLocations?.[0];
  const pos = loc ? `line ${lineFinder(text)(byteToIndex(text, loc.start))}: ` : "";
  const help = e.help ? ` (${e.help})` : "";
  const label = loc?.label ? `: ${loc.label}` : "";
  return `${pos}${e.message}${label}${help}`;
}

/**
 * The 1-based line of a UTF-16 index in `text`. One pass finds the line
 * breaks; each lookup is a binary search, so a file's policies cost
 * O(size + policies x log lines), not O(size x policies).
 */
function lineFinder(text: string): (index: number) => number {
  const breaks: number[] = [];
  for (let i = text.indexOf("\n"); i >= 0; i = text.indexOf("\n", i + 1)) breaks.push(i);
  return (index) => {
    let lo = 0;
    let hi = breaks.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (breaks[mid]! < index) lo = mid + 1;
      else hi = mid;
    }
    return lo + 1;
  };
}

/** Cedar reports UTF-8 byte offsets; the text is UTF-16. */
function byteToIndex(text: string, byteOffset: number): number {
  const bytes = new TextEncoder().encode(text);
  return new TextDecoder().decode(bytes.subarray(0, Math.min(byteOffset, bytes.length))).length;
}

function readError(what: string, err: unknown): CmcpError {
  if (isCmcpError(err)) return err;
  const e = err as NodeJS.ErrnoException;
  return new CmcpError("policy.read", `cannot read ${what}: ${e.code ?? e.message}`);
}
