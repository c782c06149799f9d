// The runtime's client side of one upstream MCP server. Everything the agent
// sends upstream, and everything the upstream sends back, passes through here
// as generic JSON-RPC: methods are relayed, not interpreted, so new protocol
// methods need no change in this layer.
import type { ChildProcess } from "node:child_process";
import { EventEmitter } from "node:events";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { SSEClientTransport, SseError } from "@modelcontextprotocol/sdk/client/sse.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import {
  StreamableHTTPClientTransport,
  StreamableHTTPError,
  type StreamableHTTPReconnectionOptions,
} from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import type { Transport } from "@modelcontextprotocol/sdk/shared/transport.js";
import {
  McpError,
  ResultSchema,
  isJSONRPCErrorResponse,
  isJSONRPCRequest,
  isJSONRPCResultResponse,
} from "@modelcontextprotocol/sdk/types.js";
import type {
  ClientCapabilities,
  Implementation,
  JSONRPCMessage,
  Notification,
  Request,
  Result,
  ServerCapabilities,
} from "@modelcontextprotocol/sdk/types.js";
import { CmcpError } from "../artifacts/errors.js";
import type { UpstreamSpec } from "../governor/boundary.js";

export const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;
export const DEFAULT_CALL_TIMEOUT_MS = 55_000;
export const DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024;

// Largest delay setTimeout accepts; the SDK's own request timer is parked here
// because this layer runs its own timers (it must tell timeout from abort).
const SDK_TIMER_PARKED_MS = 2_147_483_647;
const CLOSE_SESSION_GRACE_MS = 1_000;

/** One upstream as the governor configured it: the boundary table's definition is the only one. */
export type UpstreamConfig = UpstreamSpec;

export interface UpstreamHandlers {
  /** Server→client requests (sampling/createMessage, elicitation/create, roots/list, anything else). */
  onRequest(
    method: string,
    params: unknown,
    extra: { signal: AbortSignal },
  ): Promise<Record<string, unknown>>;
  /** Server→client notifications, including progress whose token is not one of ours. */
  onNotification(method: string, params: unknown): void;
  /** Fires once when the connection ends without close() having been called. */
  onClose(reason: string): void;
  /** Diagnostics only: protocol noise such as unparsable lines or late responses. */
  onError?(message: string): void;
}

export interface ConnectOptions {
  clientInfo: Implementation;
  capabilities: ClientCapabilities;
  handlers: UpstreamHandlers;
  signal?: AbortSignal;
  /** Receives the stdio child's stderr; without it, stderr is discarded. */
  onStderr?: (chunk: string) => void;
}

export interface ProgressUpdate {
  progress: number;
  total?: number;
  message?: string;
}

export interface RequestOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
  onprogress?: (p: ProgressUpdate) => void;
}

/** A JSON-RPC error returned by the upstream (or to it), with its code, message and data verbatim. */
export class UpstreamRpcError extends Error {
  readonly code: number;
  readonly data: unknown;

  constructor(code: number, message: string, data?: unknown) {
    super(message);
    this.name = "UpstreamRpcError";
    this.code = code;
    this.data = data;
  }
}

type State = "connecting" | "open" | "closed";

interface InFlight {
  rpcError?: { code: number; message: string; data?: unknown };
  oversizedBytes?: number;
}

let connectionCounter = 0;

/**
 * The SDK transport for one upstream (also used by catalog snapshots). A stdio
 * server gets only the SDK's safe default variables (HOME, LOGNAME, PATH,
 * SHELL, TERM, USER), LANG and its own configured env: the caller's
 * environment never leaks; its output buffer is bounded.
 */
export function upstreamTransport(
  cfg: UpstreamSpec,
  opts: {
    maxBufferBytes: number;
    onStderr?: (chunk: string) => void;
    reconnection: StreamableHTTPReconnectionOptions;
  },
): Transport {
  if (cfg.transport === "stdio") {
    const env: Record<string, string> = {};
    if (process.env["LANG"] !== undefined) env["LANG"] = process.env["LANG"];
    Object.assign(env, cfg.env);
    const t = new StdioClientTransport({
      command: cfg.command as string,
      args: cfg.args ?? [],
      env,
      ...(cfg.cwd !== undefined && { cwd: cfg.cwd }),
      stderr: opts.onStderr ? "pipe" : "ignore",
      maxBufferSize: opts.maxBufferBytes,
    });
    const onStderr = opts.onStderr;
    if (onStderr) t.stderr?.on("data", (chunk: Buffer) => onStderr(chunk.toString("utf8")));
    return t;
  }
  const url = new URL(cfg.url as string);
  const requestInit: RequestInit = cfg.headers ? { headers: { ...cfg.headers } } : {};
  if (cfg.transport === "sse") return new SSEClientTransport(url, { requestInit });
  return new StreamableHTTPClientTransport(url, { requestInit, reconnectionOptions: opts.reconnection });
}

export class UpstreamConnection {
  readonly #cfg: UpstreamConfig;
  readonly #handlers: UpstreamHandlers;
  readonly #client: Client;
  readonly #transport: Transport;
  readonly #maxResponseBytes: number;
  readonly #tokenPrefix: string;
  readonly #progress = new Map<string, (p: ProgressUpdate) => void>();
  // Keyed like the SDK keys responses: Number(id).
  readonly #inFlight = new Map<number, InFlight>();
  #state: State = "connecting";
  #closing: Promise<void> | undefined;
  #closeReason: string | undefined;
  #protocolVersion: string | undefined;
  #pid: number | undefined;
  #child: ChildProcess | undefined;
  #lastSentRequestId: number | undefined;
  #nextToken = 0;

  private constructor(cfg: UpstreamConfig, options: ConnectOptions) {
    this.#cfg = cfg;
    this.#handlers = options.handlers;
    this.#maxResponseBytes = cfg.maxResponseBytes ?? DEFAULT_MAX_RESPONSE_BYTES;
    this.#tokenPrefix = `cmcp-${process.pid}-${++connectionCounter}-`;
    this.#transport = this.#makeTransport(options);
    this.#client = new Client(options.clientInfo, { capabilities: options.capabilities });
    this.#wire();
  }

  static async connect(cfg: UpstreamConfig, options: ConnectOptions): Promise<UpstreamConnection> {
    checkConfig(cfg);
    const conn = new UpstreamConnection(cfg, options);
    await conn.#open(options.signal);
    return conn;
  }

  get name(): string {
    return this.#cfg.name;
  }
  get serverInfo(): Implementation | undefined {
    return this.#client.getServerVersion();
  }
  get serverCapabilities(): ServerCapabilities | undefined {
    return this.#client.getServerCapabilities();
  }
  get instructions(): string | undefined {
    return this.#client.getInstructions();
  }
  /** The protocol version the upstream answered initialize with. */
  get protocolVersion(): string | undefined {
    return this.#protocolVersion;
  }
  /** The stdio child's pid (kept after it exits, for supervision). */
  get pid(): number | undefined {
    return this.#pid;
  }
  get closed(): boolean {
    return this.#state === "closed";
  }
  get closeReason(): string | undefined {
    return this.#closeReason;
  }

  async request(
    method: string,
    params: unknown,
    opts: RequestOptions = {},
  ): Promise<Record<string, unknown>> {
    if (this.#state !== "open") throw this.#disconnectedError(method);
    let sendParams = paramsObject(params, this.#cfg.name, method);
    const timeoutMs = Math.min(
      opts.timeoutMs ?? this.#cfg.callTimeoutMs ?? DEFAULT_CALL_TIMEOUT_MS,
      SDK_TIMER_PARKED_MS,
    );
    if (opts.signal?.aborted) throw cancelledError(this.#cfg.name, method);

    // One controller per call, so the SDK's abort listener dies with the call
    // even when the caller's signal lives long; the reason string is what the
    // upstream sees in notifications/cancelled.
    const ctrl = new AbortController();
    let cause: "timeout" | "cancelled" | undefined;
    const onAbort = () => {
      cause ??= "cancelled";
      ctrl.abort("cancelled by the client");
    };
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    const timer = setTimeout(() => {
      cause ??= "timeout";
      ctrl.abort(`timed out after ${timeoutMs} ms`);
    }, timeoutMs);

    let token: string | undefined;
    if (opts.onprogress) {
      token = `${this.#tokenPrefix}${++this.#nextToken}`;
      this.#progress.set(token, opts.onprogress);
      const meta = isPlainObject(sendParams?.["_meta"]) ? sendParams["_meta"] : {};
      sendParams = { ...sendParams, _meta: { ...meta, progressToken: token } };
    }

    this.#lastSentRequestId = undefined;
    let id: number | undefined;
    try {
      const pending = this.#client.request({ method, params: sendParams } as Request, ResultSchema, {
        signal: ctrl.signal,
        timeout: SDK_TIMER_PARKED_MS,
      });
      // The SDK sends synchronously inside request(), so the hooked send() has
      // just recorded the JSON-RPC id of this call.
      id = this.#lastSentRequestId;
      if (id !== undefined) this.#inFlight.set(id, {});
      const result = await pending;
      const oversized = id === undefined ? undefined : this.#inFlight.get(id)?.oversizedBytes;
      if (oversized !== undefined) throw this.#tooLarge(method, oversized);
      return result as Record<string, unknown>;
    } catch (err) {
      if (err instanceof CmcpError) throw err;
      const entry = id === undefined ? undefined : this.#inFlight.get(id);
      if (entry?.oversizedBytes !== undefined) throw this.#tooLarge(method, entry.oversizedBytes);
      throw this.#mapRequestError(err, method, cause, entry?.rpcError);
    } finally {
      clearTimeout(timer);
      opts.signal?.removeEventListener("abort", onAbort);
      if (token !== undefined) this.#progress.delete(token);
      if (id !== undefined) this.#inFlight.delete(id);
    }
  }

  async notify(method: string, params?: unknown): Promise<void> {
    if (this.#state !== "open") throw this.#disconnectedError(method);
    const sendParams = paramsObject(params, this.#cfg.name, method);
    try {
      await this.#client.notification({ method, params: sendParams } as Notification);
    } catch (err) {
      if (this.#state !== "open") throw this.#disconnectedError(method);
      throw new CmcpError(
        "upstream.transport-error",
        `upstream ${this.#cfg.name}: ${method} notification failed: ${this.#describe(err)}`,
        { server: this.#cfg.name, method },
      );
    }
  }

  /** Ends the connection (stdio: stdin closed, then SIGTERM, then SIGKILL). Idempotent. */
  close(): Promise<void> {
    this.#closing ??= this.#shutdown();
    return this.#closing;
  }

  async #shutdown(): Promise<void> {
    this.#closeReason ??= "closed by the runtime";
    if (this.#state !== "closed" && this.#transport instanceof StreamableHTTPClientTransport) {
      // Polite DELETE of the session, bounded so a dead server cannot stall close().
      const t = this.#transport;
      await Promise.race([t.terminateSession().catch(() => undefined), delay(CLOSE_SESSION_GRACE_MS)]);
    }
    this.#state = "closed";
    await this.#client.close().catch(() => undefined);
  }

  #makeTransport(options: ConnectOptions): Transport {
    return upstreamTransport(this.#cfg, {
      // Room for one oversized result to be read and dropped; beyond this the SDK gives up on the stream.
      maxBufferBytes: this.#maxResponseBytes * 2 + 1024 * 1024,
      ...(options.onStderr ? { onStderr: options.onStderr } : {}),
      reconnection: {
        initialReconnectionDelay: 250,
        maxReconnectionDelay: 2_000,
        reconnectionDelayGrowFactor: 2,
        maxRetries: 2,
      },
    });
  }

  #wire(): void {
    const t = this.#transport;
    const client = this.#client;

    // Protocol.connect() keeps and calls a pre-set onmessage first, with the
    // same object the SDK then handles: raw errors are kept verbatim and
    // oversized results are dropped before the SDK parses them.
    t.onmessage = (message: JSONRPCMessage) => {
      if (isJSONRPCResultResponse(message)) {
        const entry = this.#inFlight.get(Number(message.id));
        if (!entry) return;
        const bytes = jsonBytes(message.result);
        if (bytes > this.#maxResponseBytes) {
          entry.oversizedBytes = bytes;
          (message as { result: unknown }).result = {};
        }
      } else if (isJSONRPCErrorResponse(message) && message.id !== undefined) {
        const entry = this.#inFlight.get(Number(message.id));
        if (!entry) return;
        const bytes = jsonBytes(message.error);
        if (bytes > this.#maxResponseBytes) entry.oversizedBytes = bytes;
        else entry.rpcError = { ...message.error };
      }
    };
    const send = t.send.bind(t);
    t.send = (message, opts) => {
      if (isJSONRPCRequest(message)) this.#lastSentRequestId = Number(message.id);
      return send(message, opts);
    };
    // The Client tells HTTP transports the negotiated version through this
    // hook; stdio has none, so one is added to learn the version.
    const setVersion = t.setProtocolVersion?.bind(t);
    t.setProtocolVersion = (version: string) => {
      this.#protocolVersion = version;
      setVersion?.(version);
    };

    // The Protocol registers its own notifications/progress handler that drops
    // unknown tokens; removing it routes every progress through the fallback.
    client.removeNotificationHandler("notifications/progress");
    // Nothing reaches the handlers once the connection is closed.
    client.fallbackNotificationHandler = async (n) => {
      if (this.#state === "closed") return;
      if (n.method === "notifications/progress" && isPlainObject(n.params)) {
        const token = n.params["progressToken"];
        if (typeof token === "string" && token.startsWith(this.#tokenPrefix)) {
          const cb = this.#progress.get(token);
          const update = progressUpdate(n.params);
          // Progress for a finished call of ours is late noise, not an orphan.
          if (cb && update) cb(update);
          return;
        }
      }
      this.#handlers.onNotification(n.method, n.params);
    };
    client.fallbackRequestHandler = async (request, extra) => {
      try {
        return (await this.#handlers.onRequest(request.method, request.params, {
          signal: extra.signal,
        })) as Result;
      } catch (err) {
        throw rpcErrorOf(err);
      }
    };
    client.onclose = () => this.#onTransportClosed();
    client.onerror = (err) => this.#onTransportError(err);
  }

  async #open(signal: AbortSignal | undefined): Promise<void> {
    const cfg = this.#cfg;
    const timeoutMs = cfg.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    const ctrl = new AbortController();
    let cause: "timeout" | "cancelled" | undefined;
    const onAbort = () => {
      cause ??= "cancelled";
      ctrl.abort("cancelled");
    };
    if (signal?.aborted) throw cancelledError(cfg.name, "connect");
    signal?.addEventListener("abort", onAbort, { once: true });
    const timer = setTimeout(() => {
      cause ??= "timeout";
      ctrl.abort("timeout");
    }, timeoutMs);
    // transport.start() (spawn, SSE endpoint) is not abortable by the SDK, so
    // the whole handshake races the controller.
    const aborted = new Promise<never>((_, reject) => {
      ctrl.signal.addEventListener("abort", () => reject(new Error("aborted")), { once: true });
    });
    aborted.catch(() => undefined);
    try {
      // No signal for the SDK: initialize must not be cancelled, the child is killed instead.
      const started = this.#client.connect(this.#transport, { timeout: SDK_TIMER_PARKED_MS });
      this.#capturePid();
      await Promise.race([started, aborted]);
      this.#capturePid();
      if (this.#state !== "connecting") throw new Error(this.#closeReason ?? "connection closed");
      this.#state = "open";
    } catch (err) {
      const reason = this.#closeReason ?? this.#describe(err);
      this.#state = "closed";
      this.#closeReason =
        cause === "timeout" ? "connect timeout" : cause === "cancelled" ? "cancelled" : reason;
      await this.#killForFailedConnect();
      const detail = { server: cfg.name, ...(this.#pid !== undefined && { pid: this.#pid }) };
      if (cause === "timeout") {
        throw new CmcpError(
          "upstream.connect-timeout",
          `upstream ${cfg.name}: no initialize response within ${timeoutMs} ms`,
          { ...detail, timeoutMs },
        );
      }
      if (cause === "cancelled") throw cancelledError(cfg.name, "connect");
      throw new CmcpError("upstream.connect-failed", `upstream ${cfg.name}: connect failed: ${reason}`, {
        ...detail,
        reason,
      });
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
    }
  }

  #capturePid(): void {
    if (this.#pid !== undefined || !(this.#transport instanceof StdioClientTransport)) return;
    const pid = this.#transport.pid;
    if (pid === null) return;
    this.#pid = pid;
    // The SDK does not report how the child ended; its private handle is used
    // only when present, for a useful close reason.
    const child = (this.#transport as unknown as { _process?: ChildProcess })._process;
    if (child instanceof EventEmitter) {
      this.#child = child;
      child.once("exit", (code: number | null, sig: NodeJS.Signals | null) => {
        if (this.#state === "closed") return;
        this.#closeReason ??=
          sig !== null ? `upstream process killed by ${sig}` : `upstream process exited with code ${code}`;
      });
    }
  }

  async #killForFailedConnect(): Promise<void> {
    // A child that failed the handshake gets no graceful shutdown. Through the
    // handle, not the pid: a reaped pid may already belong to someone else.
    this.#child?.kill("SIGKILL");
    await this.#client.close().catch(() => undefined);
  }

  #onTransportClosed(): void {
    const wasOpen = this.#state === "open";
    if (this.#state === "connecting" && this.#closeReason === undefined) {
      this.#closeReason = "connection closed during initialize";
    }
    if (!wasOpen) return;
    this.#state = "closed";
    if (this.#closing) return;
    this.#closeReason ??= "connection closed";
    try {
      this.#handlers.onClose(this.#closeReason);
    } catch {
      // a faulty handler must not break teardown
    }
  }

  #onTransportError(err: Error): void {
    const message = this.#describe(err);
    if (this.#state === "open") {
      // Streamable HTTP: the event stream died and could not be resumed.
      if (this.#cfg.transport === "streamable-http" && /^Maximum reconnection attempts/.test(err.message)) {
        this.#lose("upstream event stream lost");
      }
      // Legacy SSE: a dropped stream is a dropped session.
      if (this.#cfg.transport === "sse" && err instanceof SseError) this.#lose("upstream SSE stream lost");
      if (/ReadBuffer exceeded maximum size/.test(err.message)) {
        this.#closeReason ??= "upstream sent a message larger than the read buffer";
      }
    }
    if (this.#state !== "closed") this.#handlers.onError?.(message);
  }

  #lose(reason: string): void {
    if (this.#state !== "open") return;
    this.#closeReason ??= reason;
    // client.close() ends in onclose, which reports the reason once.
    void this.#client.close().catch(() => undefined);
  }

  #mapRequestError(
    err: unknown,
    method: string,
    cause: "timeout" | "cancelled" | undefined,
    raw: InFlight["rpcError"],
  ): Error {
    const name = this.#cfg.name;
    if (cause === "timeout") {
      return new CmcpError("upstream.timeout", `upstream ${name}: ${method} timed out`, {
        server: name,
        method,
      });
    }
    if (cause === "cancelled") return cancelledError(name, method);
    if (raw) return new UpstreamRpcError(raw.code, raw.message, raw.data);
    if (this.#state !== "open") return this.#disconnectedError(method);
    if (err instanceof McpError) return rpcErrorOf(err);
    if (isConnectionLoss(err)) {
      this.#lose("upstream unreachable");
      return this.#disconnectedError(method);
    }
    if (err instanceof Error && err.name === "ZodError") {
      return new CmcpError(
        "upstream.protocol-error",
        `upstream ${name}: ${method} returned a malformed result`,
        {
          server: name,
          method,
        },
      );
    }
    return new CmcpError(
      "upstream.transport-error",
      `upstream ${name}: ${method} failed: ${this.#describe(err)}`,
      {
        server: name,
        method,
      },
    );
  }

  #tooLarge(method: string, bytes: number): CmcpError {
    const limit = this.#maxResponseBytes;
    return new CmcpError(
      "upstream.response-too-large",
      `upstream ${this.#cfg.name}: ${method} response of ${bytes} bytes exceeds the ${limit}-byte limit`,
      { server: this.#cfg.name, method, bytes, limit },
    );
  }

  #disconnectedError(method: string): CmcpError {
    const reason = this.#closeReason ?? "not connected";
    return new CmcpError("upstream.disconnected", `upstream ${this.#cfg.name}: ${method}: ${reason}`, {
      server: this.#cfg.name,
      method,
      reason,
    });
  }

  /** An error's text with every configured credential value blanked out. */
  #describe(err: unknown): string {
    let text = err instanceof Error ? err.message : String(err);
    const cause = err instanceof Error ? (err.cause as { code?: unknown } | undefined) : undefined;
    if (typeof cause?.code === "string") text += ` (${cause.code})`;
    const values = [...Object.values(this.#cfg.env ?? {}), ...Object.values(this.#cfg.headers ?? {})];
    // Whole values first, then their words ("Bearer <token>" leaks as "<token>" too).
    const secrets = [...values, ...values.flatMap((v) => v.split(/\s+/))].filter((s) => s.length >= 4);
    for (const s of secrets) text = text.split(s).join("[redacted]");
    return text.length > 500 ? `${text.slice(0, 500)}…` : text;
  }
}

export interface ReconnectOptions {
  baseDelayMs?: number;
  maxDelayMs?: number;
  /** Consecutive failed attempts before giving up; unbounded when omitted. */
  maxAttempts?: number;
  onEvent?: (e: ReconnectEvent) => void;
  /** Injected for tests; returns [0, 1). */
  random?: () => number;
}

export type ReconnectEvent =
  | { type: "disconnected"; reason: string }
  | { type: "attempt"; attempt: number; delayMs: number }
  | { type: "connected"; attempt: number; pid?: number }
  | { type: "failed"; attempt: number; code: string; message: string }
  | { type: "gave-up"; attempts: number };

/**
 * Keeps one UpstreamConnection alive across unexpected closes, reconnecting
 * with jittered exponential backoff. Calls made while down fail with
 * upstream.disconnected; nothing is queued or retried.
 */
export class ReconnectingUpstream {
  readonly #cfg: UpstreamConfig;
  readonly #options: ConnectOptions;
  readonly #base: number;
  readonly #max: number;
  readonly #maxAttempts: number;
  readonly #onEvent: (e: ReconnectEvent) => void;
  readonly #random: () => number;
  #conn: UpstreamConnection | undefined;
  #stopped = false;
  #timer: NodeJS.Timeout | undefined;
  #wake: (() => void) | undefined;

  constructor(cfg: UpstreamConfig, options: ConnectOptions, reconnect: ReconnectOptions = {}) {
    this.#cfg = cfg;
    this.#base = reconnect.baseDelayMs ?? 500;
    this.#max = reconnect.maxDelayMs ?? 30_000;
    this.#maxAttempts = reconnect.maxAttempts ?? Number.POSITIVE_INFINITY;
    this.#onEvent = reconnect.onEvent ?? (() => undefined);
    this.#random = reconnect.random ?? Math.random;
    const user = options.handlers;
    this.#options = {
      ...options,
      handlers: {
        onRequest: (m, p, e) => user.onRequest(m, p, e),
        onNotification: (m, p) => user.onNotification(m, p),
        onError: (m) => user.onError?.(m),
        onClose: (reason) => {
          this.#conn = undefined;
          this.#onEvent({ type: "disconnected", reason });
          void this.#reconnectLoop();
          user.onClose(reason);
        },
      },
    };
  }

  /** First connection; its failure is thrown, not retried. */
  async start(): Promise<UpstreamConnection> {
    this.#conn = await UpstreamConnection.connect(this.#cfg, this.#options);
    return this.#conn;
  }

  get current(): UpstreamConnection | undefined {
    return this.#conn;
  }

  request(method: string, params: unknown, opts?: RequestOptions): Promise<Record<string, unknown>> {
    const conn = this.#conn;
    if (!conn) {
      return Promise.reject(
        new CmcpError("upstream.disconnected", `upstream ${this.#cfg.name}: ${method}: reconnecting`, {
          server: this.#cfg.name,
          method,
        }),
      );
    }
    return conn.request(method, params, opts);
  }

  async close(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.#wake?.();
    const conn = this.#conn;
    this.#conn = undefined;
    await conn?.close();
  }

  /** Backoff before attempt n (1-based): equal jitter over min(max, base·2^(n-1)). */
  delayFor(attempt: number): number {
    const ceiling = Math.min(this.#max, this.#base * 2 ** (attempt - 1));
    return Math.round(ceiling / 2 + (this.#random() * ceiling) / 2);
  }

  async #reconnectLoop(): Promise<void> {
    for (let attempt = 1; !this.#stopped; attempt++) {
      if (attempt > this.#maxAttempts) {
        this.#onEvent({ type: "gave-up", attempts: attempt - 1 });
        return;
      }
      const delayMs = this.delayFor(attempt);
      this.#onEvent({ type: "attempt", attempt, delayMs });
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
        this.#timer = setTimeout(resolve, delayMs);
      });
      if (this.#stopped) return;
      try {
        const conn = await UpstreamConnection.connect(this.#cfg, this.#options);
        if (this.#stopped) {
          await conn.close();
          return;
        }
        this.#conn = conn;
        this.#onEvent({ type: "connected", attempt, ...(conn.pid !== undefined && { pid: conn.pid }) });
        return;
      } catch (err) {
        const code = err instanceof CmcpError ? err.code : "upstream.connect-failed";
        const message = err instanceof Error ? err.message : String(err);
        this.#onEvent({ type: "failed", attempt, code, message });
      }
    }
  }
}

function checkConfig(cfg: UpstreamConfig): void {
  const bad = (why: string) =>
    new CmcpError("upstream.config-invalid", `upstream ${cfg.name}: ${why}`, { server: cfg.name });
  if (cfg.transport === "stdio") {
    if (!cfg.command) throw bad("stdio transport needs a command");
  } else if (cfg.transport === "streamable-http" || cfg.transport === "sse") {
    if (!cfg.url || !URL.canParse(cfg.url)) throw bad(`${cfg.transport} transport needs a valid url`);
  } else {
    throw bad("unknown transport");
  }
}

function paramsObject(params: unknown, server: string, method: string): Record<string, unknown> | undefined {
  if (params === undefined || params === null) return undefined;
  if (isPlainObject(params)) return params;
  throw new CmcpError("upstream.invalid-params", `upstream ${server}: ${method} params must be an object`, {
    server,
    method,
  });
}

function cancelledError(server: string, method: string): CmcpError {
  return new CmcpError("upstream.cancelled", `upstream ${server}: ${method} cancelled`, { server, method });
}

/** A JSON-RPC error from any thrown value; only JSON-RPC shaped errors keep their text. */
function rpcErrorOf(err: unknown): UpstreamRpcError {
  if (err instanceof McpError) {
    const prefix = `MCP error ${err.code}: `;
    const message = err.message.startsWith(prefix) ? err.message.slice(prefix.length) : err.message;
    return new UpstreamRpcError(err.code, message, err.data);
  }
  if (isPlainObject(err) || err instanceof Error) {
    const e = err as { code?: unknown; message?: unknown; data?: unknown };
    if (Number.isSafeInteger(e.code) && typeof e.message === "string") {
      return new UpstreamRpcError(e.code as number, e.message, e.data);
    }
  }
  // Local faults (string codes, bugs) must not leak their text upstream.
  return new UpstreamRpcError(-32603, "Internal error");
}

function isConnectionLoss(err: unknown): boolean {
  if (err instanceof StreamableHTTPError) return err.code === 404; // session gone
  // undici reports refused/reset connections as TypeError("fetch failed").
  return err instanceof TypeError && /fetch failed/.test(err.message);
}

function progressUpdate(params: Record<string, unknown>): ProgressUpdate | undefined {
  const { progress, total, message } = params;
  if (typeof progress !== "number") return undefined;
  return {
    progress,
    ...(typeof total === "number" && { total }),
    ...(typeof message === "string" && { message }),
  };
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function jsonBytes(v: unknown): number {
  try {
    return Buffer.byteLength(JSON.stringify(v) ?? "", "utf8");
  } catch {
    return Number.POSITIVE_INFINITY;
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}
