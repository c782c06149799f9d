/**
 * `cmcp start`: the governor process. It creates the epoch key in memory,
 * opens the receipt chain, spawns the keyless runtime that serves MCP, and
 * on SIGTERM or SIGINT drains and writes a final checkpoint.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { isCmcpError } from "../artifacts/errors.js";
import { checkExposure, devConfig, loadConfig, parseListen, type GatewayConfig } from "./config.js";
import { Gateway } from "./gateway.js";
import { ensureRuntimeUser, prepareStateDir } from "./runtime-user.js";

export interface StartOptions {
  config?: string;
  dataDir?: string;
  listen?: string;
}

async function resolveConfig(
  options: StartOptions,
): Promise<{ config: GatewayConfig; sandbox: string | null }> {
  let config: GatewayConfig;
  let sandbox: string | null = null;
  if (options.config) config = await loadConfig(options.config);
  else {
    // Dev mode: server-filesystem gets a fresh sandbox the runtime user owns, never the operator's files.
    sandbox = await mkdtemp(join(tmpdir(), "cmcp-dev-sandbox-"));
    config = devConfig(sandbox);
    await prepareStateDir(sandbox, ensureRuntimeUser(config.runtime.user));
  }
  if (options.dataDir) config.data_dir = resolve(options.dataDir);
  else config.data_dir = resolve(config.data_dir);
  if (options.listen) config.listen = parseListen(options.listen);
  // After every override: a --listen on another interface needs agents and TLS like a config file would.
  checkExposure(config, options.config ?? "(embedded default)");
  return { config, sandbox };
}

function clientSnippet(url: string): string {
  return JSON.stringify({ mcpServers: { cmcp: { type: "http", url } } }, null, 2);
}

export async function runGovernor(options: StartOptions): Promise<number> {
  const log = (line: string) => process.stderr.write(`cmcp governor: ${line}\n`);
  // Signals are handled from the first moment: a SIGTERM during start-up still ends with a final checkpoint.
  let stopSignal: string | undefined;
  let wake: () => void = () => undefined;
  const stopped = new Promise<void>((r) => (wake = r));
  const onSignal = (signal: string) => {
    stopSignal ??= signal;
    wake();
  };
  const onTerm = () => onSignal("SIGTERM");
  const onInt = () => onSignal("SIGINT");
  process.once("SIGTERM", onTerm);
  process.once("SIGINT", onInt);
  let sandbox: string | null = null;
  const keepAlive = setInterval(() => undefined, 1 << 30);
  try {
    const resolved = await resolveConfig(options);
    const config = resolved.config;
    sandbox = resolved.sandbox;
    const gateway = await Gateway.start({ config, log });
    const s = gateway.status();
    log(`epoch ${s.epoch} started, key ${s.key_id}`);
    log(
      `provider: software (NOT hardware-backed: the key is anchored only if an auditor trusts it directly)`,
    );
    log(
      `mode: ${gateway.mode}${config.dev ? " (DEV MODE: embedded default, loopback only, no agent authentication)" : ""}`,
    );
    log(
      `policy: bundle ${s.policy.bundle_hash.slice(0, 16)}… (${s.policy.version}), artifact ${s.policy.artifact_hash.slice(0, 16)}…${s.policy.self_sealed ? " SELF-SEALED (dev mode, throwaway issuer key)" : ""}, valid until ${s.policy.expires}`,
    );
    log(`runtime runs as ${s.runtime.user}; evidence in ${config.data_dir}`);
    const url = await Promise.race([gateway.endpoint(), stopped.then(() => null)]);
    if (url) {
      log(`MCP endpoint (Streamable HTTP): ${url}`);
      log(`legacy HTTP+SSE endpoint: ${url.replace(/\/mcp$/, "/sse")}`);
      log(`client config:\n${clientSnippet(url)}`);
      log(`status: cmcp status --data-dir ${config.data_dir}`);
      log(
        `evidence: cmcp export --data-dir ${config.data_dir} --out bundle.json, then cmcp verify bundle.json --key ${s.key_id}`,
      );
      log(`SIGTERM or Ctrl-C stops`);
    }
    await stopped;
    log(`${stopSignal}: draining (up to ${config.drain_timeout_seconds} s), then the final checkpoint`);
    try {
      await gateway.stop();
    } catch (err) {
      log(`stopped FAILED CLOSED: ${isCmcpError(err) ? err.message : String(err)}`);
      return 1;
    }
    const cp = gateway.chain.lastCheckpoint;
    log(`stopped at ${gateway.chain.durableSize} receipts${cp ? `, last checkpoint size ${cp.size}` : ""}`);
    return 0;
  } finally {
    clearInterval(keepAlive);
    process.off("SIGTERM", onTerm);
    process.off("SIGINT", onInt);
    // The dev sandbox is scratch space for server-filesystem; the evidence lives in the data directory.
    if (sandbox) await rm(sandbox, { recursive: true, force: true }).catch(() => undefined);
  }
}
