/**
 * `cmcp catalog snapshot|diff|approve|hash`: the approved catalog's life
 * cycle. A snapshot records what the configured upstreams offer now (with the
 * scanner's findings beside it) for a reviewer; diff shows what changed, tool
 * by tool and field by field; approve records the reviewer and prints the
 * catalog hash that `cmcp seal --catalog-hash` signs into the policy artifact.
 *
 * With --previous, the package names and hosts of an earlier catalog count as
 * known for the snapshot's look-alike (typosquat) check, beside the shipped
 * list of well-known MCP packages.
 *
 * Exit codes: 0 success (diff: identical), 1 refused or different (a server
 * failed to snapshot, high findings at approve, catalogs differ), 2 unreadable
 * input or bad usage.
 */
import { link, rename, stat, unlink, writeFile } from "node:fs/promises";
import { randomBytes } from "node:crypto";
import { CmcpError, isCmcpError } from "../artifacts/errors.js";
import {
  approveCatalog,
  catalogHash,
  countBySeverity,
  diffCatalogs,
  readCatalog,
  scanCatalog,
  type Catalog,
  type CatalogChange,
  type CatalogDiff,
  type CatalogFinding,
  type CatalogReview,
  type FieldChange,
} from "../governor/catalog.js";
import { snapshotCatalog, type SnapshotFailure } from "../governor/catalog-snapshot.js";
import { loadConfig } from "../governor/config.js";
import { loadScannerRules, type ScannerRules } from "../governor/tool-scanner.js";

export const CATALOG_FINDINGS_FORMAT = "cmcp.catalog-findings.v1";

export interface SnapshotCliOptions {
  config: string;
  out: string;
  force?: boolean;
  timeout?: number;
  rules?: string;
  json?: boolean;
  /** An earlier catalog (normally the approved one): its package names and hosts count as known. */
  previous?: string;
}

export interface DiffCliOptions {
  json?: boolean;
}

export interface ApproveCliOptions {
  reviewer: string;
  out?: string;
  acceptFindings?: boolean;
  force?: boolean;
  rules?: string;
}

const errText = (err: unknown): string =>
  isCmcpError(err) ? err.message : err instanceof Error ? err.message : String(err);

function say(text: string): void {
  process.stdout.write(`${text}\n`);
}

function complain(cmd: string, text: string): void {
  process.stderr.write(`cmcp catalog ${cmd}: ${text}\n`);
}

/** catalog.json -> catalog.findings.json */
export function findingsPath(out: string): string {
  return out.endsWith(".json") ? `${out.slice(0, -".json".length)}.findings.json` : `${out}.findings.json`;
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * Writes through a temporary file in the same directory, then renames (or,
 * without force, links, which fails rather than replace a file that appeared
 * meanwhile), so a reader never sees half a catalog.
 */
async function writeOutput(path: string, text: string, force: boolean): Promise<void> {
  const tmp = `${path}.${randomBytes(6).toString("hex")}.tmp`;
  await writeFile(tmp, text, { flag: "wx", mode: 0o644 });
  try {
    if (force) await rename(tmp, path);
    else {
      await link(tmp, path).catch((err: NodeJS.ErrnoException) => {
        throw err.code === "EEXIST"
          ? new CmcpError("catalog.exists", `${path} exists; use --force to replace it`)
          : err;
      });
      await unlink(tmp);
    }
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
}

function pretty(value: unknown): string {
  return `${JSON.stringify(value, null, 2)}\n`;
}

function summarize(catalog: Catalog): {
  servers: number;
  tools: number;
  resources: number;
  resource_templates: number;
  prompts: number;
} {
  const sum = (f: (s: Catalog["servers"][number]) => number) => catalog.servers.reduce((a, s) => a + f(s), 0);
  return {
    servers: catalog.servers.length,
    tools: sum((s) => s.tools.length),
    resources: sum((s) => s.resources.length),
    resource_templates: sum((s) => s.resource_templates.length),
    prompts: sum((s) => s.prompts.length),
  };
}

function findingLines(findings: readonly CatalogFinding[], min: "high" | "medium" | "low"): string[] {
  const rank = { low: 1, medium: 2, high: 3 } as const;
  return findings
    .filter((f) => rank[f.severity] >= rank[min])
    .map((f) => {
      const where = f.tool !== null ? `${f.server}/${f.tool}` : f.server;
      const span = f.span.text !== "" ? ` "${f.span.text.slice(0, 80)}"` : "";
      return `  ${f.severity.toUpperCase().padEnd(6)} ${where}: ${f.ruleId} ${f.path}${span} — ${f.title}`;
    });
}

// ---- snapshot -----------------------------------------------------------------------------------

export async function runCatalogSnapshot(opts: SnapshotCliOptions): Promise<number> {
  if (opts.timeout !== undefined && opts.timeout < 1) {
    complain("snapshot", "--timeout must be at least 1 second");
    return 2;
  }
  const fpath = findingsPath(opts.out);
  if (!opts.force) {
    for (const p of [opts.out, fpath])
      if (await exists(p)) {
        complain("snapshot", `${p} exists; use --force to replace it`);
        return 2;
      }
  }
  let rules: ScannerRules;
  try {
    rules = loadScannerRules(opts.rules);
  } catch (err) {
    complain("snapshot", errText(err));
    return 2;
  }
  let previous: Catalog | undefined;
  if (opts.previous !== undefined) {
    try {
      previous = await readCatalog(opts.previous);
    } catch (err) {
      complain("snapshot", `--previous: ${errText(err)}`);
      return 2;
    }
    if (previous.review === null)
      complain(
        "snapshot",
        `note: ${opts.previous} is not approved (review is null); its names are still compared as known ones`,
      );
  }
  let upstreams;
  try {
    upstreams = (await loadConfig(opts.config, { upstreamsOnly: true })).upstreams;
  } catch (err) {
    complain("snapshot", errText(err));
    return 2;
  }
  const r = await snapshotCatalog(
    { upstreams },
    {
      rules,
      ...(previous !== undefined ? { previous } : {}),
      ...(opts.timeout !== undefined ? { timeoutMs: opts.timeout * 1000 } : {}),
      onServer: (name, o) => process.stderr.write(`  ${o.ok ? "listed" : "FAILED"} ${name}\n`),
    },
  );
  const hash = catalogHash(r.catalog);
  const counts = countBySeverity(r.findings);
  const sizes = summarize(r.catalog);
  const findingsDoc = {
    format: CATALOG_FINDINGS_FORMAT,
    catalog: opts.out,
    snapshot_hash: hash,
    created_at: r.catalog.created_at,
    rules_version: r.rulesVersion,
    summary: { ...sizes, failed: r.failures.length, findings: counts },
    failures: r.failures,
    findings: r.findings,
  };
  try {
    await writeOutput(opts.out, pretty(r.catalog), opts.force === true);
    await writeOutput(fpath, pretty(findingsDoc), opts.force === true);
  } catch (err) {
    complain("snapshot", `cannot write: ${errText(err)}`);
    return 2;
  }
  if (opts.json) {
    say(
      JSON.stringify(
        { catalog: opts.out, findings_file: fpath, ...findingsDoc.summary, failures: r.failures },
        null,
        2,
      ),
    );
  } else {
    say(
      `wrote ${opts.out}: ${sizes.servers} server${sizes.servers === 1 ? "" : "s"}, ${sizes.tools} tools, ${sizes.resources} resources, ${sizes.resource_templates} resource templates, ${sizes.prompts} prompts (not yet approved)`,
    );
    say(
      `wrote ${fpath}: ${r.findings.length} findings (high ${counts.high}, medium ${counts.medium}, low ${counts.low}; rules ${r.rulesVersion})`,
    );
    for (const line of findingLines(r.findings, "medium")) say(line);
    for (const f of r.failures) say(failureLine(f));
    say(
      r.failures.length > 0
        ? `${r.failures.length} server(s) FAILED and are not in the catalog: the gateway will refuse them until a snapshot that includes them is approved`
        : `review it, then: cmcp catalog approve ${opts.out} --reviewer NAME`,
    );
  }
  return r.failures.length > 0 ? 1 : 0;
}

function failureLine(f: SnapshotFailure): string {
  return `  FAILED ${f.server}: ${f.message} [${f.code}]`;
}

// ---- diff ---------------------------------------------------------------------------------------

const show = (v: unknown): string => {
  const s = JSON.stringify(v) ?? "undefined";
  return s.length > 300 ? `${s.slice(0, 300)}…` : s;
};

function fieldLines(fields: readonly FieldChange[], indent: string): string[] {
  return fields.map((f) => {
    const path = f.path === "" ? "(whole value)" : f.path;
    if (f.op === "added") return `${indent}+ ${path}: ${show(f.after)}`;
    if (f.op === "removed") return `${indent}- ${path}: ${show(f.before)}`;
    return `${indent}~ ${path}: ${show(f.before)} -> ${show(f.after)}`;
  });
}

const KIND_LABEL: Record<CatalogChange["kind"], string> = {
  server: "server",
  identity: "identity of",
  server_info: "server info of",
  tool: "tool",
  resource: "resource",
  resource_template: "resource template",
  prompt: "prompt",
};

export function formatDiff(d: CatalogDiff): string {
  const out: string[] = [];
  for (const c of d.changes) {
    const what = c.item !== undefined ? `${c.server}/${c.item}` : c.server;
    out.push(`${c.op.toUpperCase()} ${KIND_LABEL[c.kind]} ${what}`);
    if (c.alias) out.push(`    ~ alias: ${show(c.alias.before)} -> ${show(c.alias.after)}`);
    if (c.fields) out.push(...fieldLines(c.fields, "    "));
  }
  if (d.review) {
    const r = (x: CatalogReview | null) =>
      x === null ? "not approved" : `approved by ${x.reviewer} at ${x.approved_at}`;
    out.push(`(review: ${r(d.review.before)} -> ${r(d.review.after)}; not counted as a difference)`);
  }
  out.push(
    d.identical
      ? "identical: no server, identity, definition or alias differs"
      : `${d.changes.length} change${d.changes.length === 1 ? "" : "s"}`,
  );
  return `${out.join("\n")}\n`;
}

export async function runCatalogDiff(
  oldPath: string,
  newPath: string,
  opts: DiffCliOptions,
): Promise<number> {
  let a: Catalog;
  let b: Catalog;
  try {
    [a, b] = await Promise.all([readCatalog(oldPath), readCatalog(newPath)]);
  } catch (err) {
    complain("diff", errText(err));
    return 2;
  }
  const d = diffCatalogs(a, b);
  process.stdout.write(opts.json ? pretty({ old: oldPath, new: newPath, ...d }) : formatDiff(d));
  return d.identical ? 0 : 1;
}

// ---- approve ------------------------------------------------------------------------------------

export async function runCatalogApprove(file: string, opts: ApproveCliOptions): Promise<number> {
  let catalog: Catalog;
  let rules: ScannerRules;
  try {
    catalog = await readCatalog(file);
    rules = loadScannerRules(opts.rules);
  } catch (err) {
    complain("approve", errText(err));
    return 2;
  }
  const out = opts.out ?? file;
  if (opts.out !== undefined && opts.out !== file && !opts.force && (await exists(opts.out))) {
    complain("approve", `${opts.out} exists; use --force to replace it`);
    return 2;
  }
  // The scanner runs again here: the file may have been edited since the snapshot, and the rules may be newer.
  const findings = scanCatalog(catalog, rules);
  const counts = countBySeverity(findings);
  if (counts.high > 0 && !opts.acceptFindings) {
    complain(
      "approve",
      `refusing to approve ${file}: the scanner (rules ${rules.version}) reports ${counts.high} high-severity finding${counts.high === 1 ? "" : "s"}:`,
    );
    for (const line of findingLines(findings, "high")) process.stderr.write(`${line}\n`);
    process.stderr.write(
      "Remove those tools or servers from the catalog, or approve with --accept-findings after reviewing them (the count is recorded in the review).\n",
    );
    return 1;
  }
  let approved: Catalog;
  try {
    approved = approveCatalog(catalog, {
      reviewer: opts.reviewer,
      scannerRulesVersion: rules.version,
      acceptedHighFindings: counts.high,
    });
  } catch (err) {
    complain("approve", errText(err));
    return 2;
  }
  try {
    await writeOutput(out, pretty(approved), out === file || opts.force === true);
  } catch (err) {
    complain("approve", `cannot write ${out}: ${errText(err)}`);
    return 2;
  }
  const hash = catalogHash(approved);
  const sizes = summarize(approved);
  const review = approved.review as NonNullable<Catalog["review"]>;
  if (catalog.review !== null)
    say(`replaced the review by ${catalog.review.reviewer} (${catalog.review.approved_at})`);
  say(
    `approved ${out}: ${sizes.servers} servers, ${sizes.tools} tools; reviewer ${review.reviewer} at ${review.approved_at}` +
      (counts.high > 0 ? `; ${counts.high} high-severity finding(s) accepted` : ""),
  );
  say(`catalog hash: ${hash}`);
  say(`seal it with: cmcp seal ... --catalog-hash ${hash}`);
  return 0;
}

// ---- hash ---------------------------------------------------------------------------------------

export async function runCatalogHash(file: string): Promise<number> {
  let catalog: Catalog;
  try {
    catalog = await readCatalog(file);
  } catch (err) {
    complain("hash", errText(err));
    return 2;
  }
  say(catalogHash(catalog));
  if (catalog.review === null)
    complain(
      "hash",
      `note: ${file} is not approved (review is null); cmcp catalog approve records the reviewer`,
    );
  return 0;
}
