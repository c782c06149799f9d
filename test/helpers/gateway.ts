/**
 * Starts a real gateway for tests: the governor in this process (with a key
 * whose seed the test knows), the runtime as its unprivileged child, and the
 * reference servers as stdio upstreams.
 */
import { randomBytes } from "node:crypto";
import { chmod, mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import type { ClientCapabilities } from "@modelcontextprotocol/sdk/types.js";
import { signerFromSeed, type Signer } from "../../artifacts/keys.js";
import type { UpstreamSpec } from "../../governor/boundary.js";
import { packageBin, type GatewayConfig } from "../../governor/config.js";
import { Gateway, type GatewayOptions } from "../../governor/gateway.js";
import { ensureRuntimeUser, prepareStateDir } from "../../governor/runtime-user.js";

export const bin = packageBin;

export function referenceUpstreams(sandbox: string): UpstreamSpec[] {
  return [
    {
      name: "everything",
      transport: "stdio",
      command: process.execPath,
      args: [bin("server-everything"), "stdio"],
    },
    {
      name: "filesystem",
      transport: "stdio",
      command: process.execPath,
      args: [bin("server-filesystem"), sandbox],
      roots: [{ uri: `file://${sandbox}`, name: "sandbox" }],
    },
    {
      name: "memory",
      transport: "stdio",
      command: process.execPath,
      args: [bin("server-memory")],
      env: { MEMORY_FILE_PATH: join(sandbox, "memory.jsonl") },
    },
  ];
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

export interface TestGateway {
  gateway: Gateway;
  url: string;
  dir: string;
  dataDir: string;
  sandbox: string;
  seed: Uint8Array;
  signer: Signer;
  logs: string[];
  /** Drains and writes the final checkpoint (the data directory stays for export). */
  stop(): Promise<void>;
  /** Stops if needed and removes everything. */
  cleanup(): Promise<void>;
}

export async function startTestGateway(
  over: Partial<GatewayConfig> & { upstreams?: UpstreamSpec[] } = {},
  extra: Pick<GatewayOptions, "runtimeCommand" | "backoff"> & { port?: number; policy?: object } = {},
): Promise<TestGateway> {
  const dir = await mkdtemp(join(tmpdir(), "cmcp-gw-"));
  await chmod(dir, 0o711);
  const sandbox = join(dir, "sandbox");
  const identity = ensureRuntimeUser("cmcp-runtime");
  await prepareStateDir(sandbox, identity);
  let policy: string | null = null;
  if (extra.policy) {
    policy = join(dir, "policy.json");
    await writeFile(policy, JSON.stringify(extra.policy));
  }
  const config: GatewayConfig = {
    listen: { host: "127.0.0.1", port: extra.port ?? 0 },
    data_dir: join(dir, "data"),
    mode: "enforcing",
    policy,
    log: { origin: "cmcp.test/gateway" },
    checkpoint: { every_receipts: 1000, every_seconds: 0 },
    drain_timeout_seconds: 5,
    collision: "prefix",
    tls: null,
    agents: [],
    upstreams: referenceUpstreams(sandbox),
    limits: {
      max_body_bytes: 1024 * 1024,
      governor_timeout_ms: 5000,
      max_sessions: 100,
      session_idle_seconds: 3600,
    },
    runtime: { user: "cmcp-runtime" },
    dev: false,
    ...over,
  };
  const seed = new Uint8Array(randomBytes(32));
  const signer = signerFromSeed(seed);
  const logs: string[] = [];
  const gateway = await Gateway.start({
    config,
    signer,
    log: (l) => logs.push(l),
    ...(extra.runtimeCommand ? { runtimeCommand: extra.runtimeCommand } : {}),
    ...(extra.backoff ? { backoff: extra.backoff } : {}),
  });
  const url = await gateway.endpoint();
  return {
    gateway,
    url,
    dir,
    dataDir: config.data_dir,
    sandbox,
    seed,
    signer,
    logs,
    stop: () => gateway.stop(),
    cleanup: async () => {
      await gateway.stop().catch(() => undefined);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

export async function connectClient(
  url: string,
  capabilities: ClientCapabilities = {},
  headers?: Record<string, string>,
): Promise<Client> {
  const client = new Client({ name: "cmcp-test-agent", version: "1.0.0" }, { capabilities });
  await client.connect(
    new StreamableHTTPClientTransport(new URL(url), headers ? { requestInit: { headers } } : {}),
  );
  return client;
}
