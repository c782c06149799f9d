/** `cmcp verify`: prints the verifier's numbered report. Imports only artifacts/. */
import { verifyBundleFile, type VerifyReport } from "../artifacts/verifier/verify-bundle.js";
import type { VerifyCliOptions } from "./main.js";

const MARK = { pass: "PASS", fail: "FAIL", warn: "WARN", skip: "skip" } as const;

export function formatReport(report: VerifyReport): string {
  const lines = report.steps.map((s) => {
    const rec = s.record
      ? ` [${s.record.kind} #${s.record.index}${s.record.seq !== undefined ? `, seq ${s.record.seq}` : ""}]`
      : "";
    const more = s.failures > 1 ? ` (+${s.failures - 1} more)` : "";
    return `${String(s.n).padStart(2)}. [${MARK[s.status]}] ${s.title}: ${s.detail}${rec}${more}`;
  });
  return `${lines.join("\n")}\n\n${report.summary}\n`;
}

export async function runVerify(bundle: string, opts: VerifyCliOptions): Promise<number> {
  const report = await verifyBundleFile(bundle, {
    trustedKeys: opts.key,
    allowUnanchored: opts.allowUnanchored === true,
    policyHash: opts.policyHash,
    catalogHash: opts.catalogHash,
    issuerKeys: opts.issuerKey,
    approverKeys: opts.approverKey,
    workers: opts.workers,
  });
  process.stdout.write(opts.json ? `${JSON.stringify(report, null, 2)}\n` : formatReport(report));
  if (report.unreadable) return 2;
  return report.ok ? 0 : 1;
}
