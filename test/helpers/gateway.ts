/**
 * Starts a real gateway for tests: the governor in this process (with a key
 * whose seed the test knows), the runtime as its unprivileged child, and the
 * reference servers as stdio upstreams.
 */
import { randomBytes } from "node:crypto";
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import type { ClientCapabilities } from "@modelcontextprotocol/sdk/types.js";
import { expect } from "vitest";
import { canonicalBytes } from "../../artifacts/canonical-json.js";
import type { Receipt } from "../../artifacts/receipt.js";
import { parseJson } from "../../artifacts/strict-json.js";
import { verifyBundleFile } from "../../artifacts/verifier/verify-bundle.js";
import { exportBundle, exportFromSource, liveSource } from "../../governor/export-bundle.js";
import { toBase64 } from "../../artifacts/encoding.js";
import { generateSigner, signerFromSeed, type Signer } from "../../artifacts/keys.js";
import { artifactTime, sealArtifact, type PolicyArtifact } from "../../artifacts/policy-artifact.js";
import { catalogHash, type Catalog } from "../../governor/catalog.js";
import { CedarEngine } from "../../governor/cedar-policy.js";
import type { EnforcementMode } from "../../artifacts/trace-claim.js";
import type { UpstreamSpec } from "../../governor/boundary.js";
import { packageBin, type GatewayConfig } from "../../governor/config.js";
import { Gateway, type GatewayOptions } from "../../governor/gateway.js";
import { ensureRuntimeUser, prepareStateDir } from "../../governor/runtime-user.js";

export const bin = packageBin;

export const ALLOW_ALL = '@id("all")\npermit(principal, action, resource);\n';

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

/**
 * Writes a policy bundle (default: permit everything) under `dir/policy` and
 * an artifact sealed for it by a fresh issuer; returns the config fields.
 */
export async function writeSealedPolicy(
  dir: string,
  mode: EnforcementMode = "enforcing",
  files: Record<string, string> = { "allow-all.cedar": ALLOW_ALL },
  sealed: { catalogHash?: string; enforcement?: PolicyArtifact["enforcement"] } = {},
): Promise<{ policy: string; artifact: { file: string; issuer_key: string }; issuer: Signer }> {
  const policy = join(dir, "policy");
  await mkdir(policy);
  for (const [name, text] of Object.entries(files)) await writeFile(join(policy, name), text);
  const issuer = generateSigner();
  const engine = await CedarEngine.load(policy);
  const file = join(dir, "policy.artifact.json");
  const artifact = sealArtifact(
    {
      policy: { bundle_hash: engine.bundleHash, schema_hash: engine.schemaHash, version: "test-1" },
      catalog_hash: sealed.catalogHash ?? null,
      enforcement_mode: mode,
      runtime_measurement: null,
      enforcement: sealed.enforcement ?? { measurement_interval_seconds: 60, on_drift: "deny_tool" },
      not_before: artifactTime(new Date(Date.now() - 60_000)),
      expires: artifactTime(new Date(Date.now() + 86_400_000)),
      provenance: { source_commit: null, author: "test", approver: null },
      self_sealed: false,
    },
    issuer,
  );
  await writeFile(file, canonicalBytes(artifact));
  return { policy, artifact: { file, issuer_key: toBase64(issuer.publicKey) }, issuer };
}

export interface TestGateway {
  gateway: Gateway;
  url: string;
  dir: string;
  dataDir: string;
  sandbox: string;
  seed: Uint8Array;
  signer: Signer;
  /** Issuer of the sealed artifact the gateway runs under. */
  issuer: Signer;
  logs: string[];
  /** Drains and writes the final checkpoint (the data directory stays for export). */
  stop(): Promise<void>;
  /** Stops if needed and removes everything. */
  cleanup(): Promise<void>;
}

export async function startTestGateway(
  over: Partial<GatewayConfig> & { upstreams?: UpstreamSpec[] } = {},
  extra: Pick<GatewayOptions, "runtimeCommand" | "backoff"> & {
    port?: number;
    /** Policy bundle files (name to Cedar text); default: one policy permitting everything. */
    policy?: Record<string, string>;
    /** An approved catalog, sealed into the artifact and named in the config. */
    catalog?: Catalog;
    enforcement?: PolicyArtifact["enforcement"];
  } = {},
): Promise<TestGateway> {
  const dir = await mkdtemp(join(tmpdir(), "cmcp-gw-"));
  await chmod(dir, 0o711);
  const sandbox = join(dir, "sandbox");
  const identity = ensureRuntimeUser("cmcp-runtime");
  await prepareStateDir(sandbox, identity);
  let catalog: string | null = null;
  if (extra.catalog) {
    catalog = join(dir, "catalog.json");
    await writeFile(catalog, JSON.stringify(extra.catalog));
  }
  const { policy, artifact, issuer } = await writeSealedPolicy(dir, over.mode ?? "enforcing", extra.policy, {
    ...(extra.catalog ? { catalogHash: catalogHash(extra.catalog) } : {}),
    ...(extra.enforcement ? { enforcement: extra.enforcement } : {}),
  });
  const config: GatewayConfig = {
    listen: { host: "127.0.0.1", port: extra.port ?? 0 },
    data_dir: join(dir, "data"),
    mode: "enforcing",
    policy,
    schema: null,
    catalog,
    artifact,
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
    approvers: [],
    approvals: { hold_seconds: 45 },
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
    issuer,
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

/**
 * Stops the gateway, exports its chain, checks that every verifier step
 * passes with its epoch key and artifact issuer anchored, and returns the receipts.
 */
/** The receipts so far, read from the running gateway (not verified; verifiedReceipts does that at the end). */
export async function liveReceipts(tg: TestGateway): Promise<Receipt[]> {
  const out = join(tg.dir, `live-${randomBytes(4).toString("hex")}.json`);
  await exportFromSource(await liveSource(tg.gateway.chain), out);
  const receipts = (parseJson(await readFile(out)) as { receipts: Receipt[] }).receipts;
  await rm(out, { force: true });
  return receipts;
}

export async function verifiedReceipts(tg: TestGateway): Promise<Receipt[]> {
  await tg.stop();
  const out = join(tg.dir, "bundle.json");
  await exportBundle(tg.dataDir, out);
  const report = await verifyBundleFile(out, {
    trustedKeys: [tg.signer.keyId],
    issuerKeys: [tg.issuer.keyId],
  });
  expect(report.steps.filter((s) => s.status === "fail")).toEqual([]);
  return (parseJson(await readFile(out)) as { receipts: Receipt[] }).receipts;
}
