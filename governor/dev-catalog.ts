/**
 * Dev mode's own catalog: at start the embedded default snapshots its
 * upstreams and approves the result itself, so dev mode runs under a pinned
 * catalog like a configured gateway (drift included), marked self-approved
 * and sealed by a throwaway key. The snapshot runs `cmcp catalog snapshot` in
 * a child process as the runtime user: the governor itself never speaks MCP.
 */
import { spawn } from "node:child_process";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { CmcpError } from "../artifacts/errors.js";
import { approveCatalog, readCatalog, scanCatalog } from "./catalog.js";
import { upstreamConfigForm, type GatewayConfig } from "./config.js";
import { prepareStateDir, type RuntimeIdentity } from "./runtime-user.js";
import { defaultScannerRules } from "./tool-scanner-rules.js";

const SNAPSHOT_TIMEOUT_MS = 120_000;
export const DEV_REVIEWER = "cmcp dev mode (self-approved, not reviewed)";

function cliCommand(): string[] {
  const here = import.meta.url;
  if (here.endsWith(".ts"))
    return ["--import", import.meta.resolve("tsx"), fileURLToPath(new URL("../cli/cmcp.ts", here))];
  return [fileURLToPath(new URL("../cli/cmcp.js", here))];
}

/** Snapshots and self-approves the dev upstreams into `dir` (the runtime user may write there); returns the path. */
export async function devCatalog(
  config: GatewayConfig,
  identity: RuntimeIdentity | null,
  dir: string,
): Promise<string> {
  const work = join(dir, "snapshot");
  await prepareStateDir(work, identity);
  const upstreamsFile = join(work, "upstreams.json");
  await writeFile(upstreamsFile, JSON.stringify({ upstreams: config.upstreams.map(upstreamConfigForm) }), {
    mode: 0o644,
  });
  const snapshot = join(work, "snapshot.json");
  await new Promise<void>((resolve, reject) => {
    const child = spawn(
      process.execPath,
      [...cliCommand(), "catalog", "snapshot", "--config", upstreamsFile, "--out", snapshot, "--force"],
      {
        cwd: work,
        env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: work, TMPDIR: work },
        stdio: ["ignore", "ignore", "pipe"],
        ...(identity ? { uid: identity.uid, gid: identity.gid } : {}),
        timeout: SNAPSHOT_TIMEOUT_MS,
      },
    );
    let err = "";
    child.stderr.on("data", (d: Buffer) => (err = (err + d.toString()).slice(-4000)));
    child.on("error", reject);
    child.on("close", (code) => (code === 0 ? resolve() : reject(new Error(`exit ${code}: ${err.trim()}`))));
  }).catch((err: unknown) => {
    throw new CmcpError(
      "catalog.dev",
      `dev mode could not snapshot its upstreams: ${(err as Error).message}`,
    );
  });
  const catalog = await readCatalog(snapshot);
  const rules = defaultScannerRules();
  const high = scanCatalog(catalog, rules).filter((f) => f.severity === "high").length;
  const approved = approveCatalog(catalog, {
    reviewer: DEV_REVIEWER,
    scannerRulesVersion: rules.version,
    acceptedHighFindings: high,
  });
  const out = join(dir, "dev-catalog.json");
  await writeFile(out, JSON.stringify(approved, null, 2), { mode: 0o600 });
  return out;
}
