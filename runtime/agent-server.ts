/**
 * The agent-facing HTTP listener: MCP Streamable HTTP at /mcp and the legacy
 * HTTP+SSE transport at /sse + /messages. Before any MCP code sees a request
 * it checks Host and Origin (DNS rebinding), authenticates the agent by
 * bearer token (stored hashed, compared in constant time), bounds the body,
 * and parses it with the strict JSON parser.
 */
import { createHash, randomUUID, timingSafeEqual } from "node:crypto";
import {
  createServer as createHttpServer,
  type IncomingMessage,
  type Server as HttpServer,
  type ServerResponse,
} from "node:http";
import { createServer as createHttpsServer } from "node:https";
import type { AddressInfo } from "node:net";
import { SSEServerTransport } from "@modelcontextprotocol/sdk/server/sse.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import { isInitializeRequest } from "@modelcontextprotocol/sdk/types.js";
import { isCmcpError } from "../artifacts/errors.js";
import { parseJson } from "../artifacts/strict-json.js";
import type { GovernorClient, RuntimeConfig } from "../governor/boundary.js";
import { ProxySession } from "./proxy-session.js";
import { UpstreamPool } from "./upstream-pool.js";

/** Slow clients get this long to send their headers and body; then the socket is closed. */
const HEADERS_TIMEOUT_MS = 10_000;
const REQUEST_TIMEOUT_MS = 60_000;

export interface AgentServerOptions {
  config: RuntimeConfig;
  gov: GovernorClient;
  log: (line: string) => void;
  version: string;
}

interface Entry {
  session: ProxySession;
  transport: StreamableHTTPServerTransport | SSEServerTransport;
  kind: "streamable-http" | "sse";
  lastSeen: number;
}

function sendJson(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  if (res.headersSent) {
    res.end();
    return;
  }
  res.writeHead(status, { "content-type": "application/json", ...headers });
  res.end(JSON.stringify(body));
}

function rpcFailure(
  res: ServerResponse,
  status: number,
  code: number,
  message: string,
  headers?: Record<string, string>,
): void {
  sendJson(res, status, { jsonrpc: "2.0", error: { code, message }, id: null }, headers);
}

export class AgentServer {
  readonly #opts: AgentServerOptions;
  readonly #http: HttpServer;
  readonly #sessions = new Map<string, Entry>();
  readonly #tokens: { name: string; hash: Buffer }[];
  readonly #pool: UpstreamPool;
  #allowedHosts = new Set<string>();
  #allowedOrigins = new Set<string>();
  #draining = false;
  #sweeper: NodeJS.Timeout | undefined;

  constructor(opts: AgentServerOptions) {
    this.#opts = opts;
    this.#tokens = opts.config.agents.map((a) => ({
      name: a.name,
      hash: Buffer.from(a.token_sha256, "hex"),
    }));
    this.#pool = new UpstreamPool(opts.version, opts.log);
    const handler = (req: IncomingMessage, res: ServerResponse) => {
      this.#handle(req, res).catch((err: unknown) => {
        opts.log(`request failed: ${(err as Error).message}`);
        rpcFailure(res, 500, -32603, "internal error");
      });
    };
    const tls = opts.config.tls;
    this.#http = tls
      ? createHttpsServer({ cert: tls.cert, key: tls.key }, handler)
      : createHttpServer(handler);
    this.#http.headersTimeout = HEADERS_TIMEOUT_MS;
    this.#http.requestTimeout = REQUEST_TIMEOUT_MS;
  }

  get sessionCount(): number {
    return this.#sessions.size;
  }

  async listen(): Promise<{ host: string; port: number; url: string }> {
    const { host, port } = this.#opts.config.listen;
    await new Promise<void>((resolve, reject) => {
      this.#http.once("error", reject);
      this.#http.listen(port, host, () => resolve());
    });
    const bound = (this.#http.address() as AddressInfo).port;
    const scheme = this.#opts.config.tls ? "https" : "http";
    const loopback = host === "localhost" || host === "::1" || /^127\./.test(host);
    const names = loopback
      ? ["localhost", "127.0.0.1", "[::1]", host.includes(":") ? `[${host}]` : host]
      : [host.includes(":") ? `[${host}]` : host];
    this.#allowedHosts = new Set(names.map((n) => `${n}:${bound}`));
    this.#allowedOrigins = new Set(names.map((n) => `${scheme}://${n}:${bound}`));
    const shown = host.includes(":") ? `[${host}]` : host;
    this.#sweeper = setInterval(
      () => this.#sweepIdle(),
      Math.min(60_000, this.#opts.config.limits.sessionIdleMs),
    );
    this.#sweeper.unref();
    return { host, port: bound, url: `${scheme}://${shown}:${bound}/mcp` };
  }

  /** Stops taking new sessions and requests, lets in-flight ones finish up to the deadline, then closes all. */
  async drain(deadlineMs: number): Promise<void> {
    this.#draining = true;
    this.#http.close();
    const until = Date.now() + deadlineMs;
    while (Date.now() < until && this.#busy()) await new Promise((r) => setTimeout(r, 50));
    await Promise.allSettled(
      [...this.#sessions.values()].map((e) => e.session.close("gateway shutting down")),
    );
    this.#http.closeAllConnections();
    await this.#pool.close();
    clearInterval(this.#sweeper);
  }

  #inflight = 0;
  #busy(): boolean {
    return this.#inflight > 0;
  }

  #sweepIdle(): void {
    const cutoff = Date.now() - this.#opts.config.limits.sessionIdleMs;
    for (const [id, e] of this.#sessions) {
      if (e.lastSeen < cutoff) {
        this.#sessions.delete(id);
        void e.session.close("idle timeout");
      }
    }
  }

  /** DNS rebinding: only our own Host, and no Origin but our own. */
  #checkOrigin(req: IncomingMessage): string | null {
    const host = req.headers.host;
    if (!host || !this.#allowedHosts.has(host.toLowerCase()))
      return `Host header ${JSON.stringify(host ?? "")} is not this gateway`;
    const origin = req.headers.origin;
    if (origin !== undefined && !this.#allowedOrigins.has(origin.toLowerCase()))
      return `Origin ${JSON.stringify(origin)} is not allowed`;
    return null;
  }

  /** The agent identity: a bearer token's agent, or — with no agents configured, on loopback only — "local". */
  #authenticate(req: IncomingMessage): string | null {
    if (this.#tokens.length === 0) return this.#opts.config.dev ? "dev-agent" : "local";
    const auth = req.headers.authorization ?? "";
    const m = /^Bearer ([\x21-\x7e]{1,4096})$/.exec(auth);
    if (!m) return null;
    const presented = createHash("sha256").update(m[1]!).digest();
    let found: string | null = null;
    // Compare against every agent so timing does not reveal which one matched.
    for (const t of this.#tokens) if (timingSafeEqual(presented, t.hash) && found === null) found = t.name;
    return found;
  }

  async #readBody(req: IncomingMessage, res: ServerResponse): Promise<unknown | undefined> {
    const max = this.#opts.config.limits.maxBodyBytes;
    const declared = Number(req.headers["content-length"] ?? 0);
    if (declared > max) {
      rpcFailure(res, 413, -32600, `request body exceeds ${max} bytes`);
      req.resume();
      return undefined;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    // An oversized body is read to its end and discarded (up to a hard cap), then answered with 413:
    // clients send the whole body before reading, so answering early would reach them as a reset.
    const cap = max * 16 + 1024 * 1024;
    for await (const chunk of req) {
      size += (chunk as Buffer).length;
      if (size <= max) chunks.push(chunk as Buffer);
      else if (size > cap) {
        rpcFailure(res, 413, -32600, `request body exceeds ${max} bytes`, { connection: "close" });
        req.destroy();
        return undefined;
      }
    }
    if (size > max) {
      rpcFailure(res, 413, -32600, `request body exceeds ${max} bytes`);
      return undefined;
    }
    try {
      return parseJson(Buffer.concat(chunks), { maxBytes: max, maxDepth: 64 });
    } catch (err) {
      rpcFailure(res, 400, -32700, `parse error: ${isCmcpError(err) ? err.message : "invalid JSON"}`);
      return undefined;
    }
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", "http://gateway");
    const refused = this.#checkOrigin(req);
    if (refused) return rpcFailure(res, 403, -32600, refused);
    const agent = this.#authenticate(req);
    if (agent === null) {
      return rpcFailure(res, 401, -32600, "missing or invalid bearer token", {
        "www-authenticate": 'Bearer realm="cmcp"',
      });
    }
    if (this.#draining)
      return rpcFailure(res, 503, -32600, "gateway is shutting down", { connection: "close" });
    this.#inflight++;
    try {
      if (url.pathname === "/mcp") return await this.#streamable(req, res, agent);
      if (url.pathname === "/sse" && req.method === "GET") return await this.#sseOpen(res, agent);
      if (url.pathname === "/messages" && req.method === "POST")
        return await this.#sseMessage(req, res, url, agent);
      return rpcFailure(res, 404, -32601, `no MCP endpoint at ${url.pathname.slice(0, 100)}`);
    } finally {
      this.#inflight--;
    }
  }

  #newSession(agent: string, kind: "streamable-http" | "sse", id: string): ProxySession {
    const c = this.#opts.config;
    return new ProxySession({
      id,
      agent,
      transport: kind,
      config: c,
      gov: this.#opts.gov,
      log: this.#opts.log,
      version: this.#opts.version,
      pool: this.#pool,
    });
  }

  async #streamable(req: IncomingMessage, res: ServerResponse, agent: string): Promise<void> {
    const sid = req.headers["mcp-session-id"];
    let body: unknown;
    if (req.method === "POST") {
      body = await this.#readBody(req, res);
      if (body === undefined) return;
    }
    if (typeof sid === "string") {
      const e = this.#sessions.get(sid);
      // Another agent's session id is answered exactly like an unknown one.
      if (!e || e.kind !== "streamable-http" || e.session.agent !== agent)
        return rpcFailure(res, 404, -32001, "session not found");
      e.lastSeen = Date.now();
      await (e.transport as StreamableHTTPServerTransport).handleRequest(req, res, body);
      return;
    }
    if (req.method !== "POST" || !isInitializeRequest(body)) {
      return rpcFailure(res, 400, -32600, "no Mcp-Session-Id: the first request must be initialize");
    }
    if (this.#sessions.size >= this.#opts.config.limits.maxSessions)
      return rpcFailure(res, 503, -32600, "too many sessions");
    const id = randomUUID();
    const session = this.#newSession(agent, "streamable-http", id);
    const transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => id,
      onsessioninitialized: () => {
        this.#sessions.set(id, { session, transport, kind: "streamable-http", lastSeen: Date.now() });
      },
      onsessionclosed: () => void session.close("agent ended the session"),
    });
    session.onClosed = () => this.#sessions.delete(id);
    await session.connect(transport);
    // The SDK sends no response to a cancelled request and would keep its POST stream open until the
    // session ends; end that stream so cancelled calls do not pin connections.
    const deliver = transport.onmessage;
    transport.onmessage = (msg, extra) => {
      deliver?.(msg, extra);
      if ("method" in msg && msg.method === "notifications/cancelled") {
        const rid = (msg.params as { requestId?: string | number } | undefined)?.requestId;
        if (rid !== undefined) queueMicrotask(() => transport.closeSSEStream(rid));
      }
    };
    await transport.handleRequest(req, res, body);
  }

  async #sseOpen(res: ServerResponse, agent: string): Promise<void> {
    if (this.#sessions.size >= this.#opts.config.limits.maxSessions)
      return rpcFailure(res, 503, -32600, "too many sessions");
    const transport = new SSEServerTransport("/messages", res);
    const id = transport.sessionId;
    const session = this.#newSession(agent, "sse", id);
    session.onClosed = () => this.#sessions.delete(id);
    this.#sessions.set(id, { session, transport, kind: "sse", lastSeen: Date.now() });
    res.on("close", () => void session.close("agent disconnected"));
    await session.connect(transport);
  }

  async #sseMessage(req: IncomingMessage, res: ServerResponse, url: URL, agent: string): Promise<void> {
    const id = url.searchParams.get("sessionId") ?? "";
    const e = this.#sessions.get(id);
    if (!e || e.kind !== "sse" || e.session.agent !== agent) {
      req.resume();
      return rpcFailure(res, 404, -32001, "session not found");
    }
    const body = await this.#readBody(req, res);
    if (body === undefined) return;
    e.lastSeen = Date.now();
    await (e.transport as SSEServerTransport).handlePostMessage(req, res, body);
  }
}
