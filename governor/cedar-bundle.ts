/**
 * Cedar policy bundles: a directory of `.cedar` files (plus test cases and
 * notes) validated against the MCP schema before anything evaluates them.
 *
 * Layout and limits (BUNDLE_LIMITS): at most 1,000 files, 1 MiB each and
 * 16 MiB in all, 8 directory levels. Names starting with "." (.git, editor
 * files) are ignored and never loaded or hashed. Symbolic links must resolve
 * to a regular file inside the bundle; a link that escapes it, or points at a
 * directory, refuses the bundle. Policies come only from `*.cedar` files at
 * the top level; a `.cedar` file deeper down refuses the bundle rather than
 * being silently ignored.
 *
 * The bundle hash is SHA-256 over the JCS form of the sorted list of
 * {path, sha256, size} of every file, so it covers exactly the bytes that
 * were parsed (files are read once and parsed from those bytes).
 */
import { open, readdir, realpath, stat } from "node:fs/promises";
import { dirname, join, sep } from "node:path";
import { fileURLToPath } from "node:url";
import { existsSync } from "node:fs";
import * as cedar from "./cedar-wasm.js";
import type { DetailedError, PolicyJson, SchemaJson } from "@cedar-policy/cedar-wasm/nodejs";
import { canonicalBytes } from "../artifacts/canonical-json.js";
import { CmcpError, isCmcpError } from "../artifacts/errors.js";
import { sha256Hex } from "../artifacts/hash.js";
import { NAME_PATTERN, parseAnnotations, type PolicyMeta } from "./cedar-annotations.js";

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

export interface BundleFile {
  /** Relative, "/"-separated. */
  path: string;
  size: number;
  sha256: string;
  bytes: Uint8Array;
}

export interface BundleListingEntry {
  path: string;
  sha256: string;
  size: number;
}

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

const nameDecoder = new TextDecoder("utf-8", { fatal: true });
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
  let bytes: Uint8Array;
  try {
    bytes = await readLimited(path, MAX_SCHEMA_BYTES);
  } catch (err) {
    throw readError(`schema ${path}`, err);
  }
  let text: string;
  try {
    text = textDecoder.decode(bytes);
  } catch {
    throw new CmcpError("policy.schema", `schema ${path} is not valid UTF-8`);
  }
  return { path, text, hash: sha256Hex(bytes) };
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
  let root: string;
  try {
    root = await realpath(dir);
    if (!(await stat(root)).isDirectory()) throw new CmcpError("policy.read", `${dir} is not a directory`);
  } catch (err) {
    throw readError(`bundle ${dir}`, err);
  }
  const files: BundleFile[] = [];
  let total = 0;
  const walk = async (abs: string, rel: string, depth: number): Promise<void> => {
    let entries;
    try {
      entries = await readdir(abs, { withFileTypes: true, encoding: "buffer" });
    } catch (err) {
      throw readError(`bundle ${dir}`, err);
    }
    for (const entry of entries) {
      let name: string;
      try {
        name = nameDecoder.decode(entry.name);
      } catch {
        throw new CmcpError(
          "policy.bundle",
          `bundle ${dir}: a file name under ${rel || "."} is not valid UTF-8`,
        );
      }
      if (name.startsWith(".")) continue;
      const relPath = rel === "" ? name : `${rel}/${name}`;
      // eslint-disable-next-line no-control-regex
      if (/[\u0000-\u001f\u007f\\]/.test(name)) {
        throw new CmcpError(
          "policy.bundle",
          `bundle ${dir}: ${JSON.stringify(relPath)} has a control character or backslash in its name`,
        );
      }
      let target = join(abs, name);
      let isFile = entry.isFile();
      let isDir = entry.isDirectory();
      if (entry.isSymbolicLink()) {
        let real: string;
        try {
          real = await realpath(target);
        } catch {
          throw new CmcpError("policy.bundle", `bundle ${dir}: symbolic link ${relPath} is broken`);
        }
        if (!real.startsWith(root + sep)) {
          throw new CmcpError(
            "policy.bundle",
            `bundle ${dir}: symbolic link ${relPath} points outside the bundle`,
          );
        }
        const st = await stat(real);
        if (st.isDirectory()) {
          throw new CmcpError(
            "policy.bundle",
            `bundle ${dir}: symbolic link ${relPath} points at a directory`,
          );
        }
        target = real;
        isFile = st.isFile();
        isDir = false;
      }
      if (isDir) {
        if (depth + 1 >= limits.maxDepth) {
          throw new CmcpError(
            "policy.bundle",
            `bundle ${dir}: ${relPath} nests deeper than ${limits.maxDepth} levels`,
          );
        }
        await walk(target, relPath, depth + 1);
        continue;
      }
      if (!isFile) {
        throw new CmcpError("policy.bundle", `bundle ${dir}: ${relPath} is not a regular file`);
      }
      if (files.length >= limits.maxFiles) {
        throw new CmcpError("policy.bundle", `bundle ${dir} has more than ${limits.maxFiles} files`);
      }
      let bytes: Uint8Array;
      try {
        bytes = await readLimited(target, limits.maxFileBytes);
      } catch (err) {
        if (isCmcpError(err, "policy.too-large")) {
          throw new CmcpError(
            "policy.bundle",
            `bundle ${dir}: ${relPath} is larger than ${limits.maxFileBytes} bytes`,
          );
        }
        throw readError(`bundle ${dir}: ${relPath}`, err);
      }
      total += bytes.length;
      if (total > limits.maxTotalBytes) {
        throw new CmcpError("policy.bundle", `bundle ${dir} holds more than ${limits.maxTotalBytes} bytes`);
      }
      files.push({ path: relPath, size: bytes.length, sha256: sha256Hex(bytes), bytes });
    }
  };
  await walk(root, "", 0);
  return files.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

export function bundleListing(files: readonly BundleFile[]): BundleListingEntry[] {
  return files
    .map((f) => ({ path: f.path, sha256: f.sha256, size: f.size }))
    .sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

/** SHA-256 (hex) of the JCS-canonical sorted listing of {path, sha256, size}. */
export function bundleHash(files: readonly BundleFile[]): string {
  return sha256Hex(canonicalBytes(bundleListing(files)));
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

/** Splits one file into policies with Cedar's own parser; every policy needs an @id. */
function splitPolicyFile(file: BundleFile): LoadedPolicy[] {
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
  if (parts.policy_templates.length > 0) {
    const line = lineOf(text, text.indexOf(parts.policy_templates[0]!));
    throw new CmcpError(
      "policy.parse",
      `${file.path}:${line}: policy templates (?principal / ?resource slots) are not supported in bundles`,
    );
  }
  const out: LoadedPolicy[] = [];
  const used = new Set<number>();
  for (const policyText of parts.policies) {
    // The parts are verbatim slices of the file (in Cedar's ID order, not file order): find each for its line.
    let at = text.indexOf(policyText);
    while (at >= 0 && used.has(at)) at = text.indexOf(policyText, at + 1);
    used.add(at);
    const line = at < 0 ? 0 : lineOf(text, at);
    const where = line > 0 ? `${file.path}:${line}` : file.path;
    const j = cedar.policyToJson(policyText);
    if (j.type === "failure") {
      throw new CmcpError("policy.parse", `${where}: ${j.errors.map((e) => e.message).join("; ")}`);
    }
    const meta = parseAnnotations(j.json.annotations ?? {}, j.json.effect, where);
    out.push({
      ...meta,
      id: `${stem}/${meta.localId}`,
      file: file.path,
      line,
      text: policyText,
      json: j.json,
    });
  }
  return out;
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
  const pos = loc ? `line ${lineOf(text, byteToIndex(text, loc.start))}: ` : "";
  const help = e.help ? ` (${e.help})` : "";
  const label = loc?.label ? `: ${loc.label}` : "";
  return `${pos}${e.message}${label}${help}`;
}

function lineOf(text: string, index: number): number {
  let line = 1;
  for (let i = 0; i < index && i < text.length; i++) if (text.charCodeAt(i) === 10) line++;
  return line;
}

/** Cedar reports UTF-8 byte offsets; the text is UTF-16. */
function byteToIndex(text: string, byteOffset: number): number {
  const bytes = new TextEncoder().encode(text);
  return new TextDecoder().decode(bytes.subarray(0, Math.min(byteOffset, bytes.length))).length;
}

/** Reads at most `max` bytes; a longer file fails with code policy.too-large. */
async function readLimited(path: string, max: number): Promise<Uint8Array> {
  const fh = await open(path, "r");
  try {
    const chunks: Buffer[] = [];
    let n = 0;
    // Read to EOF rather than trusting a size from stat: the file may change underneath.
    while (n <= max) {
      const chunk = Buffer.alloc(Math.min(64 * 1024, max + 1 - n));
      const { bytesRead } = await fh.read(chunk, 0, chunk.length, null);
      if (bytesRead === 0) break;
      chunks.push(chunk.subarray(0, bytesRead));
      n += bytesRead;
    }
    if (n > max) throw new CmcpError("policy.too-large", `${path} is larger than ${max} bytes`);
    return new Uint8Array(Buffer.concat(chunks, n));
  } finally {
    await fh.close();
  }
}

function readError(what: string, err: unknown): CmcpError {
  if (isCmcpError(err)) return err;
  const e = err as NodeJS.ErrnoException;
  return new CmcpError("policy.read", `cannot read ${what}: ${e.code ?? e.message}`);
}
