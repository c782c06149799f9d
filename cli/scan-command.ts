/**
 * `cmcp scan FILE`: runs the tool-definition scanner over the tools in a file
 * (a tools/list result, an array of tools, one tool, or a catalog-like file with
 * a tools array) and prints the findings grouped by tool.
 * Exit 0 when no finding reaches --fail-on (default high), 1 when one does,
 * 2 when the file or the rules cannot be read.
 */
import { readFile, stat } from "node:fs/promises";
import { isCmcpError } from "../artifacts/errors.js";
import { parseJson } from "../artifacts/strict-json.js";
import {
  atLeast,
  extractToolEntries,
  loadScannerRules,
  scanToolEntries,
  type EntryResult,
  type Finding,
  type ScannerRules,
  type Severity,
} from "../governor/tool-scanner.js";

export interface ScanCliOptions {
  json?: boolean;
  failOn?: Severity;
  rules?: string;
}

/** Limits for the file itself; each definition in it is then held to the scanner's own limits. */
export const SCAN_FILE_LIMITS = {
  maxBytes: 64 * 1024 * 1024,
  // Deep enough for catalogs of deeply nested schemas (the scanner reports those itself).
  maxDepth: 1024,
  maxStringLength: 16 * 1024 * 1024,
  maxMembers: 1_000_000,
  maxValues: 10_000_000,
};

export const SCAN_REPORT_FORMAT = "cmcp.scan-report.v1";

export interface ScanReport {
  format: typeof SCAN_REPORT_FORMAT;
  file: string;
  rulesVersion: string;
  failOn: Severity;
  ok: boolean;
  summary: { tools: number; withFindings: number; failing: number; findings: number };
  tools: {
    label: string;
    server?: string;
    name: string | null;
    maxSeverity: EntryResult["maxSeverity"];
    failing: boolean;
    error?: EntryResult["error"];
    findings: Finding[];
  }[];
}

function fail(message: string): number {
  process.stderr.write(`cmcp scan: ${message}\n`);
  return 2;
}

const errText = (err: unknown): string =>
  isCmcpError(err) ? err.message : err instanceof Error ? err.message : String(err);

export async function runScan(file: string, opts: ScanCliOptions): Promise<number> {
  const failOn: Severity = opts.failOn ?? "high";
  let rules: ScannerRules;
  try {
    rules = loadScannerRules(opts.rules);
  } catch (err) {
    return fail(errText(err));
  }
  let doc: unknown;
  try {
    const st = await stat(file);
    if (!st.isFile()) return fail(`${file} is not a file`);
    if (st.size > SCAN_FILE_LIMITS.maxBytes)
      return fail(`${file} is larger than ${SCAN_FILE_LIMITS.maxBytes} bytes`);
    doc = parseJson(await readFile(file), SCAN_FILE_LIMITS);
  } catch (err) {
    return fail(`cannot read ${file}: ${errText(err)}`);
  }
  let results: EntryResult[];
  try {
    results = scanToolEntries(extractToolEntries(doc), { rules });
  } catch (err) {
    return fail(`${file}: ${errText(err)}`);
  }
  const report = buildReport(file, rules.version, failOn, results);
  process.stdout.write(opts.json ? `${JSON.stringify(report, null, 2)}\n` : formatReport(report));
  return report.ok ? 0 : 1;
}

export function buildReport(
  file: string,
  rulesVersion: string,
  failOn: Severity,
  results: EntryResult[],
): ScanReport {
  const tools = results.map((r) => ({
    label: r.label,
    ...(r.server !== undefined ? { server: r.server } : {}),
    name: r.name,
    maxSeverity: r.maxSeverity,
    failing: atLeast(r.maxSeverity, failOn),
    ...(r.error !== undefined ? { error: r.error } : {}),
    findings: r.findings,
  }));
  const failing = tools.filter((t) => t.failing).length;
  return {
    format: SCAN_REPORT_FORMAT,
    file,
    rulesVersion,
    failOn,
    ok: failing === 0,
    summary: {
      tools: tools.length,
      withFindings: tools.filter((t) => t.findings.length > 0).length,
      failing,
      findings: tools.reduce((a, t) => a + t.findings.length, 0),
    },
    tools,
  };
}

const SEVERITY_LABEL = { high: "HIGH  ", medium: "MEDIUM", low: "low   " } as const;

export function formatReport(report: ScanReport): string {
  const out: string[] = [];
  for (const t of report.tools) {
    if (t.findings.length === 0) continue;
    const where = t.server !== undefined ? ` (server ${t.server})` : "";
    const label = t.name !== null && t.name !== t.label ? `${t.label} "${t.name}"` : `"${t.label}"`;
    out.push(
      `tool ${label}${where}: ${t.findings.length} finding${t.findings.length === 1 ? "" : "s"}, highest ${t.maxSeverity}`,
    );
    if (t.error !== undefined) out.push(`  scan incomplete: ${t.error.message} [${t.error.code}]`);
    for (const f of t.findings) {
      const key = f.target === "key" ? " (property name)" : "";
      out.push(
        `  ${SEVERITY_LABEL[f.severity]} ${f.ruleId}  ${f.path}${key}  [${f.span.start}, ${f.span.end})`,
      );
      if (f.span.text !== "") out.push(`         "${f.span.text}"`);
      out.push(`         ${f.title}${f.detail !== undefined ? ` — ${f.detail}` : ""}`);
      out.push(`         ${f.explanation}`);
    }
    out.push("");
  }
  const s = report.summary;
  out.push(
    `${s.tools} tool${s.tools === 1 ? "" : "s"} scanned (rules ${report.rulesVersion}): ${s.findings} finding${s.findings === 1 ? "" : "s"} in ${s.withFindings}; ` +
      (report.ok
        ? `none at or above ${report.failOn}`
        : `${s.failing} with findings at or above ${report.failOn}`),
  );
  return `${out.join("\n")}\n`;
}
