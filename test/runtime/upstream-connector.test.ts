// The upstream connector against real MCP servers in real processes: the
// reference servers (stdio, Streamable HTTP, SSE) and a raw-JSON-RPC fixture
// that misbehaves on request.
import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { mkdtemp, realpath, rm, writeFile } from "node:fs/promises";
import { createServer as createHttpServer } from "node:http";
import type { IncomingHttpHeaders } from "node:http";
import { createServer as createNetServer } from "node:net";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { isCmcpError } from "../../artifacts/errors.js";
import {
  ReconnectingUpstream,
  UpstreamConnection,
  UpstreamRpcError,
} from "../../runtime/upstream-connector.js";
import type {
  ConnectOptions,
  ProgressUpdate,
  ReconnectEvent,
  UpstreamConfig,
  UpstreamHandlers,
} from "../../runtime/upstream-connector.js";

const here = dirname(fileURLToPath(import.meta.url));
const REPO_ROOT = resolve(here, "..", "..");
const RAW_FIXTURE = join(here, "fixtures", "raw-server.ts");
const LOOPBACK_PRELOAD = join(here, "fixtures", "listen-loopback.ts");
const pkgBin = (pkg: string) =>
  join(REPO_ROOT, "node_modules", "@modelcontextprotocol", pkg, "dist", "index.js");
const EVERYTHING = pkgBin("server-everything");

const CLIENT_INFO = { name: "cmcp-test", version: "0.0.0" };
const ALL_CLIENT_CAPS = { sampling: {}, elicitation: {}, roots: { listChanged: true } };

interface Recorder extends UpstreamHandlers {
  requests: { method: string; params: unknown }[];
  notifications: { method: string; params: unknown }[];
  closes: string[];
  errors: string[];
}

type Answer = (method: string, params: unknown) => Promise<Record<string, unknown>>;

function recorder(answer: Answer = async () => ({})): Recorder {
  const r: Recorder = {
    requests: [],
    notifications: [],
    closes: [],
    errors: [],
    onRequest: async (method, params) => {
      r.requests.push({ method, params });
      return answer(method, params);
    },
    onNotification: (method, params) => void r.notifications.push({ method, params }),
    onClose: (reason) => void r.closes.push(reason),
    onError: (message) => void r.errors.push(message),
  };
  return r;
}

const open: { close(): Promise<void> }[] = [];
afterAll(async () => {
  await Promise.all(open.map((c) => c.close()));
});

async function connect(
  cfg: UpstreamConfig,
  handlers: UpstreamHandlers = recorder(),
  extra: Partial<ConnectOptions> = {},
): Promise<UpstreamConnection> {
  const conn = await UpstreamConnection.connect(cfg, {
    clientInfo: CLIENT_INFO,
    capabilities: ALL_CLIENT_CAPS,
    handlers,
    ...extra,
  });
  open.push(conn);
  return conn;
}

function rawConfig(mode = "normal", over: Partial<UpstreamConfig> = {}): UpstreamConfig {
  return {
    name: `raw-${mode}`,
    transport: "stdio",
    command: process.execPath,
    args: ["--import", "tsx", RAW_FIXTURE, mode],
    cwd: REPO_ROOT,
    ...over,
  };
}

async function waitFor(cond: () => boolean, what: string, limitMs = 15_000): Promise<void> {
  const stop = Date.now() + limitMs;
  while (!cond()) {
    if (Date.now() > stop) throw new Error(`gave up waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function expectCode(p: Promise<unknown>, code: string): Promise<void> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(isCmcpError(err, code), `expected ${code}, got ${String(err)}`).toBe(true);
}

function text(result: Record<string, unknown>): string {
  const content = result["content"] as { type: string; text?: string }[];
  return content.map((c) => c.text ?? "").join("\n");
}

const call = (conn: UpstreamConnection, name: string, args: Record<string, unknown> = {}) =>
  conn.request("tools/call", { name, arguments: args });

async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createNetServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address() as AddressInfo;
      s.close(() => res(port));
    });
  });
}

/** server-everything in one of its HTTP modes, bound to 127.0.0.1 by a preload. */
async function startEverythingHttp(
  mode: "streamableHttp" | "sse",
): Promise<{ child: ChildProcess; port: number }> {
  const port = await freePort();
  const child = spawn(process.execPath, ["--import", "tsx", "--import", LOOPBACK_PRELOAD, EVERYTHING, mode], {
    cwd: REPO_ROOT,
    env: { PATH: process.env["PATH"] ?? "", PORT: String(port) },
    stdio: ["ignore", "ignore", "pipe"],
  });
  open.push({ close: async () => void child.kill("SIGKILL") });
  await new Promise<void>((res, rej) => {
    let seen = "";
    child.stderr?.on("data", (d: Buffer) => {
      seen += d.toString();
      if (/listening on port|running on port/.test(seen)) res();
    });
    child.once("exit", (code) => rej(new Error(`server-everything ${mode} exited (${code}): ${seen}`)));
  });
  return { child, port };
}

describe("stdio: server-everything", () => {
  let conn: UpstreamConnection;
  let rec: Recorder;

  beforeAll(async () => {
    rec = recorder(async (method, params) => {
      if (method === "sampling/createMessage") {
        return { role: "assistant", content: { type: "text", text: "sampled!" }, model: "test-model" };
      }
      if (method === "elicitation/create") return { action: "accept", content: { name: "Ada" } };
      if (method === "roots/list") return { roots: [{ uri: "file:///srv/project", name: "project" }] };
      throw new Error(`unexpected ${method} ${JSON.stringify(params)}`);
    });
    conn = await connect(
      { name: "everything", transport: "stdio", command: process.execPath, args: [EVERYTHING] },
      rec,
    );
  });

  it("initializes and exposes what the upstream negotiated", () => {
    expect(conn.serverInfo?.name).toBe("mcp-servers/everything");
    expect(conn.protocolVersion).toMatch(/^\d{4}-\d{2}-\d{2}$/);
    expect(conn.serverCapabilities?.tools).toBeDefined();
    expect(conn.pid).toBeGreaterThan(0);
    expect(alive(conn.pid as number)).toBe(true);
  });

  it("lists tools, including the ones conditional on client capabilities", async () => {
    const names = ((await conn.request("tools/list", {})).tools as { name: string }[]).map((t) => t.name);
    expect(names).toEqual(
      expect.arrayContaining([
        "echo",
        "trigger-long-running-operation",
        "trigger-sampling-request",
        "trigger-elicitation-request",
        "get-roots-list",
      ]),
    );
  });

  it("calls echo, pings, and relays an unknown method's JSON-RPC error", async () => {
    expect(text(await call(conn, "echo", { message: "hello" }))).toBe("Echo: hello");
    expect(await conn.request("ping", undefined)).toEqual({});
    const err = await conn.request("vendor/not-a-method", {}).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UpstreamRpcError);
    expect((err as UpstreamRpcError).code).toBe(-32601);
  });

  it("lists and reads resources (pagination is the caller's: nextCursor is relayed)", async () => {
    const resources: { uri: string }[] = [];
    let cursor: unknown;
    do {
      const page = await conn.request("resources/list", cursor === undefined ? {} : { cursor });
      resources.push(...(page.resources as { uri: string }[]));
      cursor = page.nextCursor;
    } while (cursor !== undefined);
    expect(resources.length).toBeGreaterThan(0);
    const first = resources[0] as { uri: string };
    const read = await conn.request("resources/read", { uri: first.uri });
    expect((read.contents as { uri: string }[])[0]?.uri).toBe(first.uri);
    expect(await conn.request("resources/subscribe", { uri: first.uri })).toEqual({});
  });

  it("gets a prompt and a completion", async () => {
    const prompt = await conn.request("prompts/get", { name: "simple-prompt" });
    expect((prompt.messages as unknown[]).length).toBeGreaterThan(0);
    const completion = await conn.request("completion/complete", {
      ref: { type: "ref/prompt", name: "completable-prompt" },
      argument: { name: "department", value: "" },
    });
    expect((completion.completion as { values: string[] }).values.length).toBeGreaterThan(0);
  });

  it("sets the log level and receives logging notifications", async () => {
    expect(await conn.request("logging/setLevel", { level: "debug" })).toEqual({});
    await call(conn, "toggle-simulated-logging");
    await waitFor(() => rec.notifications.some((n) => n.method === "notifications/message"), "a log message");
    await call(conn, "toggle-simulated-logging");
  });

  it("delivers progress of a long-running tool to onprogress", async () => {
    const updates: ProgressUpdate[] = [];
    const result = await conn.request(
      "tools/call",
      { name: "trigger-long-running-operation", arguments: { duration: 0.3, steps: 3 } },
      { onprogress: (p) => updates.push(p) },
    );
    expect(text(result)).toContain("Long running operation completed");
    expect(updates).toEqual([
      { progress: 1, total: 3 },
      { progress: 2, total: 3 },
      { progress: 3, total: 3 },
    ]);
  });

  it("cancels a long-running tool through an AbortSignal and stays usable", async () => {
    const ctrl = new AbortController();
    const pending = conn.request(
      "tools/call",
      { name: "trigger-long-running-operation", arguments: { duration: 60, steps: 600 } },
      { signal: ctrl.signal, onprogress: () => ctrl.abort() },
    );
    await expectCode(pending, "upstream.cancelled");
    expect(text(await call(conn, "echo", { message: "still here" }))).toBe("Echo: still here");
  });

  it("routes the upstream's sampling request to onRequest and its answer back into the tool", async () => {
    const result = await call(conn, "trigger-sampling-request", { prompt: "say hi" });
    const sampling = rec.requests.find((r) => r.method === "sampling/createMessage");
    expect(JSON.stringify(sampling?.params)).toContain("say hi");
    expect(text(result)).toContain("sampled!");
  });

  it("routes elicitation to onRequest", async () => {
    const result = await call(conn, "trigger-elicitation-request");
    expect(rec.requests.some((r) => r.method === "elicitation/create")).toBe(true);
    expect(text(result)).toContain("Name: Ada");
  });

  it("answers roots/list through onRequest", async () => {
    await waitFor(() => rec.requests.some((r) => r.method === "roots/list"), "roots/list");
    expect(text(await call(conn, "get-roots-list"))).toContain("file:///srv/project");
    await conn.notify("notifications/roots/list_changed", undefined);
  });
});

describe("stdio: server-filesystem and server-memory", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await realpath(await mkdtemp(join(tmpdir(), "cmcp-upstream-")));
    await writeFile(join(dir, "note.txt"), "from the temp dir\n");
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("server-filesystem asks for roots and serves files inside the one we give", async () => {
    const rec = recorder(async (method) => {
      if (method === "roots/list") return { roots: [{ uri: pathToFileURL(dir).href, name: "tmp" }] };
      return {};
    });
    const conn = await connect(
      { name: "fs", transport: "stdio", command: process.execPath, args: [pkgBin("server-filesystem")] },
      rec,
    );
    await waitFor(() => rec.requests.some((r) => r.method === "roots/list"), "roots/list");
    // The server applies the roots asynchronously after our answer.
    let allowed = "";
    for (let i = 0; i < 100 && !allowed.includes(dir); i++) {
      allowed = text(await call(conn, "list_allowed_directories"));
      if (!allowed.includes(dir)) await new Promise((r) => setTimeout(r, 50));
    }
    expect(allowed).toContain(dir);
    expect(text(await call(conn, "read_text_file", { path: join(dir, "note.txt") }))).toContain(
      "from the temp dir",
    );
    await conn.close();
  });

  it("server-memory stores and reads back an entity (cfg.env reaches the child)", async () => {
    const conn = await connect({
      name: "memory",
      transport: "stdio",
      command: process.execPath,
      args: [pkgBin("server-memory")],
      env: { MEMORY_FILE_PATH: join(dir, "memory.jsonl") },
    });
    await call(conn, "create_entities", {
      entities: [{ name: "cmcp", entityType: "project", observations: ["gateway"] }],
    });
    const graph = await call(conn, "read_graph");
    expect(JSON.stringify(graph)).toContain("cmcp");
    await conn.close();
  });
});

describe("HTTP: server-everything", () => {
  it("Streamable HTTP: calls a tool, then reports the server's death", async () => {
    const { child, port } = await startEverythingHttp("streamableHttp");
    const rec = recorder();
    const conn = await connect(
      { name: "everything-http", transport: "streamable-http", url: `http://127.0.0.1:${port}/mcp` },
      rec,
      { capabilities: {} },
    );
    expect(conn.serverInfo?.name).toBe("mcp-servers/everything");
    expect(conn.protocolVersion).toBeDefined();
    expect(text(await call(conn, "echo", { message: "over http" }))).toBe("Echo: over http");

    const pending = conn.request(
      "tools/call",
      { name: "trigger-long-running-operation", arguments: { duration: 60, steps: 600 } },
      { onprogress: () => void child.kill("SIGKILL") },
    );
    await expectCode(pending, "upstream.disconnected");
    await waitFor(() => rec.closes.length > 0, "onClose");
    expect(rec.closes).toHaveLength(1);
    expect(conn.closed).toBe(true);
    await expectCode(call(conn, "echo", { message: "x" }), "upstream.disconnected");
  });

  it("SSE: calls a tool, then reports the server's death", async () => {
    const { child, port } = await startEverythingHttp("sse");
    const rec = recorder();
    const conn = await connect(
      { name: "everything-sse", transport: "sse", url: `http://127.0.0.1:${port}/sse` },
      rec,
      { capabilities: {} },
    );
    expect(text(await call(conn, "echo", { message: "over sse" }))).toBe("Echo: over sse");
    child.kill("SIGKILL");
    await waitFor(() => rec.closes.length > 0, "onClose");
    expect(rec.closes).toHaveLength(1);
    await expectCode(call(conn, "echo", { message: "x" }), "upstream.disconnected");
  });
});

describe("misbehaving upstreams", () => {
  it("never answers initialize: connect timeout, and the child is killed", async () => {
    const err = await connect(rawConfig("silent", { connectTimeoutMs: 1_500 })).catch((e: unknown) => e);
    expect(isCmcpError(err, "upstream.connect-timeout")).toBe(true);
    const pid = (err as { detail: { pid: number } }).detail.pid;
    expect(pid).toBeGreaterThan(0);
    await waitFor(() => !alive(pid), "the silent child to die");
  });

  it("hangs on a call: upstream.timeout, and the upstream is told to cancel", async () => {
    const conn = await connect(rawConfig());
    await expectCode(conn.request("tools/call", { name: "hang" }, { timeoutMs: 200 }), "upstream.timeout");
    const seen = JSON.parse(text(await call(conn, "cancellations"))) as {
      requestId: unknown;
      reason: string;
    }[];
    expect(seen).toHaveLength(1);
    expect(seen[0]?.reason).toMatch(/timed out/);
  });

  it("an aborted call sends notifications/cancelled upstream; a pre-aborted one sends nothing", async () => {
    const conn = await connect(rawConfig());
    const ctrl = new AbortController();
    const pending = conn.request("tools/call", { name: "hang" }, { signal: ctrl.signal });
    setTimeout(() => ctrl.abort(new Error("agent went away: secret-ish detail")), 50);
    await expectCode(pending, "upstream.cancelled");
    await expectCode(
      conn.request("tools/call", { name: "hang" }, { signal: ctrl.signal }),
      "upstream.cancelled",
    );
    const seen = JSON.parse(text(await call(conn, "cancellations"))) as {
      requestId: unknown;
      reason: string;
    }[];
    expect(seen).toHaveLength(1);
    // The caller's abort reason stays local.
    expect(seen[0]?.reason).toBe("cancelled by the client");
  });

  it("returns a huge result: upstream.response-too-large, and the connection survives", async () => {
    const conn = await connect(rawConfig("normal", { maxResponseBytes: 64 * 1024 }));
    await expectCode(call(conn, "huge", { bytes: 200_000 }), "upstream.response-too-large");
    await expectCode(
      call(conn, "fail", { code: -32000, data: "x".repeat(200_000) }),
      "upstream.response-too-large",
    );
    expect(text(await call(conn, "huge", { bytes: 1_000 }))).toHaveLength(1_000);
  });

  it("sends a message beyond the read buffer: the stream is dropped as disconnected", async () => {
    const rec = recorder();
    // The stdio read buffer is sized from maxResponseBytes (2x + 1 MiB).
    const conn = await connect(rawConfig("normal", { maxResponseBytes: 1024 }), rec);
    await expectCode(call(conn, "huge", { bytes: 3 * 1024 * 1024 }), "upstream.disconnected");
    await waitFor(() => rec.closes.length > 0, "onClose");
    expect(rec.closes[0]).toMatch(/larger than the read buffer/);
  });

  it("the upstream cancelling its own request aborts onRequest's signal", async () => {
    let aborted = false;
    const handlers: UpstreamHandlers = {
      ...recorder(),
      // Never answers: only the upstream's notifications/cancelled ends it.
      onRequest: (_method, _params, { signal }) =>
        new Promise((_, reject) => {
          signal.addEventListener("abort", () => {
            aborted = true;
            reject(new Error("aborted"));
          });
        }),
    };
    const conn = await connect(rawConfig(), handlers);
    expect(text(await call(conn, "sample-then-cancel"))).toBe("cancelled it");
    await waitFor(() => aborted, "the handler's signal to abort");
  });

  it("prints garbage on stdout between messages: skipped, traffic flows", async () => {
    const rec = recorder();
    const conn = await connect(rawConfig("garbage"), rec);
    expect(text(await call(conn, "echo", { message: "through the noise" }))).toBe("through the noise");
    expect(((await conn.request("tools/list", {})).tools as unknown[]).length).toBeGreaterThan(0);
    expect(rec.errors.length).toBeGreaterThan(0);
    expect(rec.closes).toEqual([]);
  });

  it("exits mid-call: upstream.disconnected, onClose fires once with the exit", async () => {
    const rec = recorder();
    const conn = await connect(rawConfig(), rec);
    const pid = conn.pid as number;
    await expectCode(call(conn, "exit"), "upstream.disconnected");
    await waitFor(() => rec.closes.length > 0, "onClose");
    expect(rec.closes).toEqual(["upstream process exited with code 3"]);
    expect(alive(pid)).toBe(false);
    await expectCode(call(conn, "echo", { message: "x" }), "upstream.disconnected");
    await expectCode(conn.notify("notifications/roots/list_changed"), "upstream.disconnected");
    await conn.close();
    expect(rec.closes).toHaveLength(1);
  });

  it("returns JSON-RPC errors: code, message and data relayed verbatim", async () => {
    const conn = await connect(rawConfig());
    const data = { hint: "try again", nested: [1, { deep: true }] };
    const err = await call(conn, "fail", { code: -32099, data }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UpstreamRpcError);
    expect(err).toMatchObject({ code: -32099, message: "fixture failure", data });
    // The SDK rebuilds -32042 data from `elicitations` only; the raw error keeps every field.
    const urlData = { elicitations: [], vendor: "kept" };
    const err2 = await call(conn, "fail", { code: -32042, data: urlData }).catch((e: unknown) => e);
    expect(err2).toMatchObject({ code: -32042, message: "fixture failure", data: urlData });
  });

  it("relays unknown result fields and unknown methods untouched", async () => {
    const conn = await connect(rawConfig());
    const result = await call(conn, "echo", { message: "m" });
    expect(result["futureField"]).toEqual({ nested: [1, 2, 3] });
    expect(result["_meta"]).toEqual({ "example.com/trace": "abc" });
    const future = await conn.request("vendor/future-method", { a: 1 });
    expect(future).toEqual({ echoed: { a: 1 }, unknownShape: true });
  });

  it("progress: ours goes to onprogress (with message), a stranger's to onNotification", async () => {
    const rec = recorder();
    const conn = await connect(rawConfig(), rec);
    const updates: ProgressUpdate[] = [];
    await conn.request("tools/call", { name: "progress" }, { onprogress: (p) => updates.push(p) });
    expect(updates.map((u) => u.message)).toEqual(["step 1", "step 2", "step 3"]);
    await call(conn, "orphan-progress");
    await waitFor(() => rec.notifications.length > 0, "the orphan progress");
    expect(rec.notifications[0]).toEqual({
      method: "notifications/progress",
      params: { progressToken: "not-yours", progress: 1 },
    });
  });

  it("errors thrown by onRequest reach the upstream as JSON-RPC errors; local faults stay opaque", async () => {
    let mode: "rpc" | "local" = "rpc";
    const conn = await connect(
      rawConfig(),
      recorder(async () => {
        if (mode === "rpc") throw new UpstreamRpcError(-32050, "denied by policy", { rule: "r1" });
        throw Object.assign(new Error("governor at /run/cmcp.sock unreachable"), { code: "governor.down" });
      }),
    );
    expect(JSON.parse(text(await call(conn, "sample")))).toEqual({
      code: -32050,
      message: "denied by policy",
      data: { rule: "r1" },
    });
    mode = "local";
    expect(JSON.parse(text(await call(conn, "sample")))).toEqual({ code: -32603, message: "Internal error" });
  });

  it("rejects non-object params and bad configs locally", async () => {
    const conn = await connect(rawConfig());
    await expectCode(conn.request("tools/call", [1, 2]), "upstream.invalid-params");
    await expectCode(
      UpstreamConnection.connect(
        { name: "bad", transport: "stdio" },
        { clientInfo: CLIENT_INFO, capabilities: {}, handlers: recorder() },
      ),
      "upstream.config-invalid",
    );
  });

  it("connect can be aborted", async () => {
    const ctrl = new AbortController();
    const pending = connect(rawConfig("silent"), recorder(), { signal: ctrl.signal });
    setTimeout(() => ctrl.abort(), 100);
    await expectCode(pending, "upstream.cancelled");
  });

  it("close() is idempotent, kills the child, and does not fire onClose", async () => {
    const rec = recorder();
    const conn = await connect(rawConfig(), rec);
    const pid = conn.pid as number;
    await Promise.all([conn.close(), conn.close()]);
    await conn.close();
    expect(alive(pid)).toBe(false);
    expect(rec.closes).toEqual([]);
    await expectCode(call(conn, "echo", { message: "x" }), "upstream.disconnected");
  });
});

describe("credentials", () => {
  const SECRET_VAR = "CMCP_UPSTREAM_TEST_SECRET";
  beforeAll(() => {
    process.env[SECRET_VAR] = "runtime-only-secret";
  });
  afterAll(() => {
    delete process.env[SECRET_VAR];
  });

  it("a stdio child sees cfg.env and a minimal environment, never the runtime's", async () => {
    const conn = await connect(rawConfig("normal", { env: { UPSTREAM_TOKEN: "token-for-this-upstream" } }));
    const env = JSON.parse(text(await call(conn, "env"))) as Record<string, string>;
    expect(env["UPSTREAM_TOKEN"]).toBe("token-for-this-upstream");
    expect(env[SECRET_VAR]).toBeUndefined();
    const allowed = ["HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER", "LANG", "UPSTREAM_TOKEN"];
    expect(Object.keys(env).filter((k) => !allowed.includes(k))).toEqual([]);
  });

  it("connect errors name the server but not env values", async () => {
    const secret = "env-value-that-must-not-leak";
    const err = await connect({
      name: "missing",
      transport: "stdio",
      command: join(REPO_ROOT, "no-such-binary"),
      env: { API_KEY: secret },
    }).catch((e: unknown) => e);
    expect(isCmcpError(err, "upstream.connect-failed")).toBe(true);
    const e = err as Error & { detail: unknown };
    expect(e.message).toContain("missing");
    expect(e.message + JSON.stringify(e.detail) + String(e.cause)).not.toContain(secret);
  });

  describe("HTTP headers", () => {
    let server: ReturnType<typeof createHttpServer>;
    let port: number;
    const seen: IncomingHttpHeaders[] = [];
    beforeAll(async () => {
      // A hostile upstream that echoes the credential back in its error body.
      server = createHttpServer((req, res) => {
        seen.push(req.headers);
        res.writeHead(500, { "content-type": "text/plain" });
        res.end(`rejected ${req.headers["authorization"]}`);
      });
      await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
      port = (server.address() as AddressInfo).port;
    });
    afterAll(async () => {
      await new Promise((r) => server.close(r));
    });
    afterEach(() => {
      seen.length = 0;
    });

    for (const transport of ["streamable-http", "sse"] as const) {
      it(`${transport}: headers reach the upstream, and never the error`, async () => {
        const token = "header-token-that-must-not-leak";
        const err = await connect({
          name: "hostile",
          transport,
          url: `http://127.0.0.1:${port}/mcp`,
          headers: { Authorization: `Bearer ${token}` },
        }).catch((e: unknown) => e);
        expect(isCmcpError(err, "upstream.connect-failed")).toBe(true);
        expect(seen.some((h) => h["authorization"] === `Bearer ${token}`)).toBe(true);
        const e = err as Error & { detail: unknown };
        expect(e.message + JSON.stringify(e.detail) + String(e.cause)).not.toContain(token);
      });
    }
  });
});

describe("ReconnectingUpstream", () => {
  it("reconnects after the upstream dies and reports each step", async () => {
    const events: ReconnectEvent[] = [];
    const rec = recorder();
    const up = new ReconnectingUpstream(
      rawConfig(),
      { clientInfo: CLIENT_INFO, capabilities: {}, handlers: rec },
      { baseDelayMs: 10, maxDelayMs: 50, onEvent: (e) => events.push(e) },
    );
    open.push(up);
    const first = await up.start();
    const firstPid = first.pid;
    await expectCode(up.request("tools/call", { name: "exit" }), "upstream.disconnected");
    await waitFor(() => events.some((e) => e.type === "connected"), "reconnection");
    expect(events.map((e) => e.type)).toEqual(["disconnected", "attempt", "connected"]);
    expect(rec.closes).toHaveLength(1);
    expect(up.current?.pid).not.toBe(firstPid);
    expect(text(await up.request("tools/call", { name: "echo", arguments: { message: "back" } }))).toBe(
      "back",
    );
    await up.close();
  });

  it("gives up after maxAttempts consecutive failures", async () => {
    const dir = await mkdtemp(join(tmpdir(), "cmcp-reconnect-"));
    const events: ReconnectEvent[] = [];
    const up = new ReconnectingUpstream(
      rawConfig("once", { env: { CMCP_FIXTURE_MARKER: join(dir, "started") } }),
      { clientInfo: CLIENT_INFO, capabilities: {}, handlers: recorder() },
      { baseDelayMs: 10, maxDelayMs: 20, maxAttempts: 2, onEvent: (e) => events.push(e) },
    );
    open.push(up);
    await up.start();
    await expectCode(up.request("tools/call", { name: "exit" }), "upstream.disconnected");
    await waitFor(() => events.some((e) => e.type === "gave-up"), "giving up");
    expect(events.map((e) => e.type)).toEqual([
      "disconnected",
      "attempt",
      "failed",
      "attempt",
      "failed",
      "gave-up",
    ]);
    expect(events.filter((e) => e.type === "failed").map((e) => (e as { code: string }).code)).toEqual([
      "upstream.connect-failed",
      "upstream.connect-failed",
    ]);
    await expectCode(up.request("ping", undefined), "upstream.disconnected");
    await up.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("backoff doubles, is capped, and is jittered within [ceiling/2, ceiling]", () => {
    const handlers = recorder();
    const opts = { clientInfo: CLIENT_INFO, capabilities: {}, handlers };
    const low = new ReconnectingUpstream(rawConfig(), opts, {
      baseDelayMs: 100,
      maxDelayMs: 1_000,
      random: () => 0,
    });
    const high = new ReconnectingUpstream(rawConfig(), opts, {
      baseDelayMs: 100,
      maxDelayMs: 1_000,
      random: () => 0.999999,
    });
    expect([1, 2, 3, 4, 5, 6].map((n) => low.delayFor(n))).toEqual([50, 100, 200, 400, 500, 500]);
    expect([1, 2, 3, 4, 5, 6].map((n) => high.delayFor(n))).toEqual([100, 200, 400, 800, 1000, 1000]);
  });
});
