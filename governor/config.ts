/**
 * Gateway configuration: one JSON file, validated on load with errors that
 * name the field, or — with no file — the embedded dev-mode default (loopback
 * only, advisory, the reference servers as upstreams).
 */
import { readFile } from "node:fs/promises";
import { hostname } from "node:os";
import { isAbsolute, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Ajv2020 } from "ajv/dist/2020.js";
import { fromBase64 } from "../artifacts/encoding.js";
import { CmcpError, isCmcpError } from "../artifacts/errors.js";
import { parseJson } from "../artifacts/strict-json.js";
import type { EnforcementMode } from "../artifacts/trace-claim.js";
import type { UpstreamSpec } from "./boundary.js";

export interface GatewayConfig {
  listen: { host: string; port: number };
  data_dir: string;
  /** null: the sealed artifact's mode. A config naming another mode than the artifact refuses to start. */
  mode: EnforcementMode | null;
  /** Cedar policy bundle directory (dev mode without one: the shipped demo-advisory bundle). */
  policy: string | null;
  /** Cedar schema file; null: the shipped policies/schema/mcp.cedarschema. */
  schema: string | null;
  /** The approved catalog (cmcp catalog approve); its hash must be the one the artifact seals. */
  catalog: string | null;
  /** The sealed policy artifact and its issuer's pinned public key (base64); dev mode self-seals when null. */
  artifact: { file: string; issuer_key: string } | null;
  log: { origin: string };
  checkpoint: { every_receipts: number; every_seconds: number };
  drain_timeout_seconds: number;
  collision: "refuse" | "prefix";
  tls: { cert_file: string; key_file: string } | null;
  agents: { name: string; token_sha256: string; workflows: string[] }[];
  upstreams: UpstreamSpec[];
  limits: {
    max_body_bytes: number;
    governor_timeout_ms: number;
    max_sessions: number;
    session_idle_seconds: number;
  };
  runtime: { user: string };
  /** People who may answer held calls (`cmcp approve`), by their Ed25519 public key (base64). */
  approvers: { name: string; public_key: string }[];
  /** How long a call waits for an approver before it is denied (under the SDK client's 60 s default). */
  approvals: { hold_seconds: number };
  /** True only for the embedded default: no auth on loopback, loudly labelled. */
  dev: boolean;
}

const APPROVAL_HOLD_DEFAULT = 45;

const LIMIT_DEFAULTS: GatewayConfig["limits"] = {
  max_body_bytes: 4 * 1024 * 1024,
  governor_timeout_ms: 5000,
  max_sessions: 1000,
  session_idle_seconds: 3600,
};

function defaultOrigin(): string {
  return `cmcp.local/${hostname().replace(/[^A-Za-z0-9.-]/g, "-") || "governor"}`;
}

/** Entry file of a reference server package (a regular dependency, resolved, never fetched at start). */
export function packageBin(pkg: string): string {
  return fileURLToPath(import.meta.resolve(`@modelcontextprotocol/${pkg}/dist/index.js`));
}

/**
 * The embedded default: dev mode on 127.0.0.1 with server-everything and
 * server-filesystem (over `filesystemRoot`) as stdio upstreams, advisory.
 */
export function devConfig(filesystemRoot: string): GatewayConfig {
  return {
    listen: { host: "127.0.0.1", port: 8765 },
    data_dir: ".cmcp-data",
    mode: "advisory",
    policy: null,
    schema: null,
    catalog: null,
    artifact: null,
    log: { origin: defaultOrigin() },
    checkpoint: { every_receipts: 1000, every_seconds: 60 },
    drain_timeout_seconds: 10,
    collision: "prefix",
    tls: null,
    agents: [],
    upstreams: [
      {
        name: "everything",
        transport: "stdio",
        command: process.execPath,
        args: [packageBin("server-everything"), "stdio"],
      },
      {
        name: "filesystem",
        transport: "stdio",
        command: process.execPath,
        args: [packageBin("server-filesystem"), filesystemRoot],
        roots: [{ uri: `file://${filesystemRoot}`, name: "dev sandbox" }],
      },
    ],
    limits: { ...LIMIT_DEFAULTS },
    runtime: { user: "cmcp-runtime" },
    approvers: [],
    approvals: { hold_seconds: APPROVAL_HOLD_DEFAULT },
    dev: true,
  };
}

const str = (max = 1024) => ({ type: "string", minLength: 1, maxLength: max }) as const;

const schema = {
  type: "object",
  additionalProperties: false,
  required: ["upstreams", "policy", "artifact"],
  properties: {
    listen: { type: "string", pattern: "^(\\[[0-9a-fA-F:.]+\\]|[A-Za-z0-9.-]+):[0-9]{1,5}$" },
    data_dir: str(4096),
    mode: { enum: ["enforcing", "advisory", "silent"] },
    policy: str(4096),
    schema: str(4096),
    catalog: str(4096),
    artifact: {
      type: "object",
      additionalProperties: false,
      required: ["file", "issuer_key"],
      properties: {
        file: str(4096),
        issuer_key: { type: "string", pattern: "^[A-Za-z0-9+/]{43}=$" },
      },
    },
    log: {
      type: "object",
      additionalProperties: false,
      properties: {
        origin: { type: "string", minLength: 1, maxLength: 256, pattern: "^[\\x21-\\x7e][\\x20-\\x7e]*$" },
      },
    },
    checkpoint: {
      type: "object",
      additionalProperties: false,
      properties: {
        every_receipts: { type: "integer", minimum: 1, maximum: 10_000_000 },
        every_seconds: { type: "integer", minimum: 0, maximum: 86_400 },
      },
    },
    drain_timeout_seconds: { type: "integer", minimum: 0, maximum: 3600 },
    collision: { enum: ["refuse", "prefix"] },
    tls: {
      type: "object",
      additionalProperties: false,
      required: ["cert_file", "key_file"],
      properties: { cert_file: str(4096), key_file: str(4096) },
    },
    agents: {
      type: "array",
      maxItems: 10_000,
      items: {
        type: "object",
        additionalProperties: false,
        required: ["name", "token_sha256"],
        properties: {
          name: str(),
          token_sha256: { type: "string", pattern: "^[0-9a-f]{64}$" },
          workflows: { type: "array", maxItems: 256, items: str() },
        },
      },
    },
    upstreams: {
      type: "array",
      minItems: 1,
      maxItems: 256,
      items: {
        type: "object",
        additionalProperties: false,
        required: ["name"],
        properties: {
          name: { type: "string", pattern: "^[A-Za-z0-9_-]{1,64}$" },
          transport: { enum: ["stdio", "streamable-http", "sse"] },
          command: str(4096),
          args: { type: "array", maxItems: 256, items: { type: "string", maxLength: 4096 } },
          env: {
            type: "object",
            maxProperties: 256,
            additionalProperties: { type: "string", maxLength: 65_536 },
          },
          cwd: str(4096),
          url: { type: "string", pattern: "^https?://", maxLength: 4096 },
          headers: {
            type: "object",
            maxProperties: 64,
            additionalProperties: { type: "string", maxLength: 65_536 },
          },
          connect_timeout_ms: { type: "integer", minimum: 1, maximum: 600_000 },
          call_timeout_ms: { type: "integer", minimum: 1, maximum: 3_600_000 },
          max_response_bytes: { type: "integer", minimum: 1, maximum: 256 * 1024 * 1024 },
          stateless: { type: "boolean" },
          roots: {
            type: "array",
            maxItems: 64,
            items: {
              type: "object",
              additionalProperties: false,
              required: ["uri"],
              properties: { uri: str(4096), name: str() },
            },
          },
        },
      },
    },
    limits: {
      type: "object",
      additionalProperties: false,
      properties: {
        max_body_bytes: { type: "integer", minimum: 1024, maximum: 256 * 1024 * 1024 },
        governor_timeout_ms: { type: "integer", minimum: 10, maximum: 600_000 },
        max_sessions: { type: "integer", minimum: 1, maximum: 1_000_000 },
        session_idle_seconds: { type: "integer", minimum: 1, maximum: 604_800 },
      },
    },
    runtime: {
      type: "object",
      additionalProperties: false,
      properties: { user: { type: "string", pattern: "^[a-z_][a-z0-9_-]{0,31}$" } },
    },
    approvers: {
      type: "array",
      maxItems: 1000,
      items: {
        type: "object",
        additionalProperties: false,
        required: ["name", "public_key"],
        properties: { name: str(256), public_key: { type: "string", pattern: "^[A-Za-z0-9+/]{43}=$" } },
      },
    },
    approvals: {
      type: "object",
      additionalProperties: false,
      properties: { hold_seconds: { type: "integer", minimum: 1, maximum: 3600 } },
    },
  },
} as const;

const validateFull = new Ajv2020({ strict: true, allErrors: true }).compile(schema);
// loadConfig(path, { upstreamsOnly: true }) (cmcp catalog snapshot): "policy" and "artifact" may be absent.
const validateUpstreamsOnly = new Ajv2020({ strict: true, allErrors: true }).compile({
  ...schema,
  required: ["upstreams"],
});

/** Config files are small; anything larger is a mistake. */
const MAX_CONFIG_BYTES = 1024 * 1024;

type RawUpstream = {
  name: string;
  transport?: UpstreamSpec["transport"];
  command?: string;
  args?: string[];
  env?: Record<string, string>;
  cwd?: string;
  url?: string;
  headers?: Record<string, string>;
  connect_timeout_ms?: number;
  call_timeout_ms?: number;
  max_response_bytes?: number;
  stateless?: boolean;
  roots?: { uri: string; name?: string }[];
};

export async function loadConfig(
  path: string,
  options: { upstreamsOnly?: boolean } = {},
): Promise<GatewayConfig> {
  const validate = options.upstreamsOnly ? validateUpstreamsOnly : validateFull;
  let value: unknown;
  try {
    value = parseJson(await readFile(path), { maxBytes: MAX_CONFIG_BYTES, maxDepth: 32 });
  } catch (err) {
    const why = isCmcpError(err) ? err.message : ((err as NodeJS.ErrnoException).code ?? String(err));
    throw new CmcpError("config.read", `cannot read config ${path}: ${why}`);
  }
  if (!validate(value)) {
    const problems = (validate.errors ?? [])
      .map(
        (e) =>
          `${e.instancePath || "/"} ${e.message}${e.params && "additionalProperty" in e.params ? ` "${String(e.params.additionalProperty)}"` : ""}`,
      )
      .join("; ");
    throw new CmcpError("config.invalid", `config ${path} is invalid: ${problems}`);
  }
  const v = value as unknown as Record<string, unknown> & { upstreams: RawUpstream[] };
  const base = resolve(path, "..");
  const rel = (p: string) => (isAbsolute(p) ? p : resolve(base, p));
  const names = new Set<string>();
  const upstreams = v.upstreams.map((u, i): UpstreamSpec => {
    const where = `/upstreams/${i}`;
    if (names.has(u.name))
      throw new CmcpError("config.invalid", `config ${path}: ${where}/name "${u.name}" is used twice`);
    names.add(u.name);
    const transport = u.transport ?? (u.url ? "streamable-http" : "stdio");
    if (transport === "stdio" && !u.command)
      throw new CmcpError("config.invalid", `config ${path}: ${where} needs "command" for a stdio upstream`);
    if (transport !== "stdio" && !u.url)
      throw new CmcpError(
        "config.invalid",
        `config ${path}: ${where} needs "url" for a ${transport} upstream`,
      );
    return {
      name: u.name,
      transport,
      ...(u.command ? { command: u.command, args: u.args ?? [] } : {}),
      ...(u.env ? { env: u.env } : {}),
      ...(u.cwd ? { cwd: rel(u.cwd) } : {}),
      ...(u.url ? { url: u.url } : {}),
      ...(u.headers ? { headers: u.headers } : {}),
      ...(u.connect_timeout_ms ? { connectTimeoutMs: u.connect_timeout_ms } : {}),
      ...(u.call_timeout_ms ? { callTimeoutMs: u.call_timeout_ms } : {}),
      ...(u.max_response_bytes ? { maxResponseBytes: u.max_response_bytes } : {}),
      ...(u.stateless !== undefined ? { stateless: u.stateless } : {}),
      ...(u.roots ? { roots: u.roots } : {}),
    };
  });
  const issuerKey = (v.artifact as { issuer_key: string } | undefined)?.issuer_key;
  try {
    if (issuerKey !== undefined || !options.upstreamsOnly) fromBase64(issuerKey as string, 32);
  } catch {
    throw new CmcpError(
      "config.invalid",
      `config ${path}: /artifact/issuer_key is not a base64 Ed25519 public key (print one with cmcp keygen)`,
    );
  }
  for (const [i, a] of ((v.approvers as GatewayConfig["approvers"] | undefined) ?? []).entries()) {
    try {
      fromBase64(a.public_key, 32);
    } catch {
      throw new CmcpError(
        "config.invalid",
        `config ${path}: /approvers/${i}/public_key is not a base64 Ed25519 public key`,
      );
    }
  }
  const listen = parseListen((v.listen as string | undefined) ?? "127.0.0.1:8765");
  const tls = v.tls as { cert_file: string; key_file: string } | undefined;
  const agents = ((v.agents as GatewayConfig["agents"] | undefined) ?? []).map((a) => ({
    ...a,
    workflows: a.workflows ?? [],
  }));
  const config: GatewayConfig = {
    listen,
    data_dir: rel((v.data_dir as string | undefined) ?? ".cmcp-data"),
    mode: (v.mode as EnforcementMode | undefined) ?? null,
    policy: v.policy !== undefined ? rel(v.policy as string) : null,
    schema: v.schema ? rel(v.schema as string) : null,
    catalog: v.catalog ? rel(v.catalog as string) : null,
    artifact: v.artifact
      ? {
          file: rel((v.artifact as { file: string }).file),
          issuer_key: (v.artifact as { issuer_key: string }).issuer_key,
        }
      : null,
    log: { origin: defaultOrigin(), ...(v.log as object | undefined) },
    checkpoint: { every_receipts: 1000, every_seconds: 60, ...(v.checkpoint as object | undefined) },
    drain_timeout_seconds: (v.drain_timeout_seconds as number | undefined) ?? 10,
    collision: (v.collision as GatewayConfig["collision"] | undefined) ?? "refuse",
    tls: tls ? { cert_file: rel(tls.cert_file), key_file: rel(tls.key_file) } : null,
    agents,
    upstreams,
    limits: { ...LIMIT_DEFAULTS, ...(v.limits as object | undefined) },
    runtime: { user: "cmcp-runtime", ...(v.runtime as object | undefined) },
    approvers: (v.approvers as GatewayConfig["approvers"] | undefined) ?? [],
    approvals: { hold_seconds: APPROVAL_HOLD_DEFAULT, ...(v.approvals as object | undefined) },
    dev: false,
  };
  checkExposure(config, path);
  return config;
}

/** An upstream back in the config file's shape: the inverse of loadConfig's mapping (dev mode's snapshot uses it). */
export function upstreamConfigForm(u: UpstreamSpec): RawUpstream {
  return {
    name: u.name,
    transport: u.transport,
    ...(u.command ? { command: u.command, args: u.args ?? [] } : {}),
    ...(u.env ? { env: u.env } : {}),
    ...(u.cwd ? { cwd: u.cwd } : {}),
    ...(u.url ? { url: u.url } : {}),
    ...(u.headers ? { headers: u.headers } : {}),
    ...(u.connectTimeoutMs ? { connect_timeout_ms: u.connectTimeoutMs } : {}),
    ...(u.callTimeoutMs ? { call_timeout_ms: u.callTimeoutMs } : {}),
    ...(u.maxResponseBytes ? { max_response_bytes: u.maxResponseBytes } : {}),
    ...(u.stateless !== undefined ? { stateless: u.stateless } : {}),
    ...(u.roots ? { roots: u.roots } : {}),
  };
}

export function parseListen(text: string): { host: string; port: number } {
  const i = text.lastIndexOf(":");
  const host = text.slice(0, i).replace(/^\[(.*)\]$/, "$1");
  const port = Number(text.slice(i + 1));
  if (!Number.isInteger(port) || port > 65535)
    throw new CmcpError("config.invalid", `listen port in "${text}" is not a port`);
  return { host, port };
}

export function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || /^127\.\d+\.\d+\.\d+$/.test(host);
}

/** A gateway reachable from other hosts needs both agent authentication and TLS, or it does not start. */
export function checkExposure(config: GatewayConfig, path: string): void {
  if (isLoopback(config.listen.host)) return;
  const missing = [
    config.agents.length === 0 ? "agents (bearer tokens)" : "",
    config.tls ? "" : "tls",
  ].filter(Boolean);
  if (missing.length > 0) {
    throw new CmcpError(
      "config.exposed",
      `config ${path}: listen address ${config.listen.host} is not loopback, so ${missing.join(" and ")} must be configured`,
    );
  }
}
