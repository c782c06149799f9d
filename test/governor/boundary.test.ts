// The governor↔runtime boundary over a real Unix-socket pair: the governor
// side (BoundaryServer) must refuse, never answer, every frame that breaks the
// closed table, and the runtime side (GovernorClient) must fail every call
// closed when the governor is silent or gone.
import { mkdtemp, rm } from "node:fs/promises";
import { createConnection, createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Unpackr } from "msgpackr";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  BOUNDARY,
  BOUNDARY_VERSION,
  BoundaryServer,
  GovernorClient,
  MAX_FRAME_BYTES,
  encodeRawFrame,
  type Bodies,
  type Handlers,
  type RuntimeConfig,
} from "../../governor/boundary.js";

const REQUEST = 0;
const REPLY = 1;
const REPLY_ERROR = 2;
const NOTICE = 3;

const CONFIG: RuntimeConfig = {
  listen: { host: "127.0.0.1", port: 0 },
  agents: [],
  upstreams: [{ name: "everything", transport: "stdio", command: "/bin/true", args: [] }],
  collision: "prefix",
  limits: { maxBodyBytes: 1024 * 1024, governorTimeoutMs: 5000, maxSessions: 10, sessionIdleMs: 60_000 },
  dev: false,
};

const DECIDE: Bodies["decide"]["req"] = {
  session: "s-1",
  agent: "alice",
  server: "everything",
  method: "tools/call",
  request_id: "7",
  tool: "echo",
  params: { name: "echo", arguments: { message: "hi" } },
};

let dir: string;
let server: Server;
const sockets: Socket[] = [];

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "cmcp-boundary-"));
});

afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  await rm(dir, { recursive: true, force: true });
});

/** A connected pair: `gov` is the governor's end (accepted), `rt` the runtime's end (connected). */
async function socketPair(): Promise<{ gov: Socket; rt: Socket }> {
  const path = join(dir, `b-${sockets.length}.sock`);
  let accept!: (s: Socket) => void;
  const accepted = new Promise<Socket>((r) => (accept = r));
  server = createServer((s) => accept(s));
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(path, () => resolve());
  });
  const rt = createConnection(path);
  rt.on("error", () => undefined);
  await new Promise<void>((resolve, reject) => {
    rt.once("connect", () => resolve());
    rt.once("error", reject);
  });
  const gov = await accepted;
  gov.on("error", () => undefined);
  sockets.push(gov, rt);
  return { gov, rt };
}

/** Rejects after `ms` (a bound on waiting, never an assertion about how long something took). */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing after ${ms} ms`)), ms);
  });
  return Promise.race([p, limit]).finally(() => clearTimeout(timer));
}

const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, moreTypes: false });

/** Everything the governor sends to the runtime end, decoded, plus its close. */
function receiver(rt: Socket) {
  let buf = Buffer.alloc(0);
  const frames: [number, number, string, unknown][] = [];
  let bytes = 0;
  const waiters: (() => void)[] = [];
  rt.on("data", (chunk: Buffer) => {
    bytes += chunk.length;
    buf = Buffer.concat([buf, chunk]);
    while (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) {
      const len = buf.readUInt32BE(0);
      frames.push(unpackr.unpack(buf.subarray(4, 4 + len)) as [number, number, string, unknown]);
      buf = buf.subarray(4 + len);
    }
    for (const w of waiters.splice(0)) w();
  });
  const closed = new Promise<void>((resolve) => rt.once("close", () => resolve()));
  return {
    frames,
    get bytes() {
      return bytes;
    },
    closed,
    /** Waits (bounded) for a frame with this id. */
    async frame(id: number) {
      for (let i = 0; i < 200; i++) {
        const f = frames.find((x) => x[1] === id);
        if (f) return f;
        await within(new Promise<void>((r) => waiters.push(r)), 5000, `frame ${id}`);
      }
      throw new Error(`no frame ${id}`);
    },
  };
}

/** A BoundaryServer on the governor end, with handlers that record what reached them. */
function governor(gov: Socket, overrides: Partial<Handlers> = {}) {
  const handled: string[] = [];
  const violations: { reason: string; code: string }[] = [];
  let onViolation!: (v: { reason: string; code: string }) => void;
  const violated = new Promise<{ reason: string; code: string }>((r) => (onViolation = r));
  let seq = 0;
  const handlers: Handlers = {
    hello: async () => (handled.push("hello"), { config: CONFIG }),
    listening: async () => (handled.push("listening"), { ok: true }),
    session_opened: async () => (handled.push("session_opened"), { accept: true }),
    decide: async (b) => (
      handled.push(`decide:${b.request_id}`),
      { allow: true, outcome: "allow", reasons: ["test"], seq: seq++, notify: false }
    ),
    inspect: async () => (handled.push("inspect"), { action: "pass", seq: seq++ }),
    catalog_observed: async () => (handled.push("catalog_observed"), { ok: true }),
    upstream_event: async () => (handled.push("upstream_event"), { ok: true }),
    session_closed: async () => (handled.push("session_closed"), { ok: true }),
    await_approval: async () => (
      handled.push("await_approval"),
      { approved: false, reason: "test", seq: seq++ }
    ),
    ...overrides,
  };
  const server = new BoundaryServer(gov, handlers, (reason, code) => {
    violations.push({ reason, code });
    onViolation({ reason, code });
  });
  return { server, handled, violations, violated };
}

const helloFrame = (id = 1) => encodeRawFrame(REQUEST, id, "hello", { version: BOUNDARY_VERSION, pid: 4242 });

/** Nests `depth` single-element msgpack arrays around nil, as raw msgpack bytes. */
function nestedMsgpack(depth: number): Buffer {
  const b = Buffer.alloc(depth + 1, 0x91);
  b[depth] = 0xc0;
  return b;
}

/** A frame whose body is raw msgpack bytes (not produced by the encoder): [kind, id, type, <raw>]. */
function frameWithRawBody(kind: number, id: number, type: string, rawBody: Buffer): Buffer {
  const prefix = encodeRawFrame(kind, id, type, null);
  // The encoder wrote [kind, id, type, nil]; swap the trailing nil (0xc0) for the raw body.
  const head = prefix.subarray(4, prefix.length - 1);
  const body = Buffer.concat([head, rawBody]);
  const out = Buffer.alloc(4 + body.length);
  out.writeUInt32BE(body.length, 0);
  body.copy(out, 4);
  return out;
}

describe("BoundaryServer and GovernorClient: the well-formed path", () => {
  it("answers hello with the configuration, then decides a call", async () => {
    const { gov, rt } = await socketPair();
    const g = governor(gov);
    const client = new GovernorClient(rt, 5000);
    expect(g.server.phase).toBe("hello");
    const hello = await client.hello({ version: BOUNDARY_VERSION, pid: 4242 });
    expect(hello.config).toEqual(CONFIG);
    expect(g.server.phase).toBe("ready");
    const listening = await client.listening({
      host: "127.0.0.1",
      port: 8080,
      url: "http://127.0.0.1:8080/mcp",
    });
    expect(listening).toEqual({ ok: true });
    const opened = await client.sessionOpened({
      session: "s-1",
      agent: "alice",
      transport: "streamable-http",
    });
    expect(opened).toEqual({ accept: true });
    const d1 = await client.decide(DECIDE);
    const d2 = await client.decide({ ...DECIDE, request_id: "8" });
    expect(d1).toEqual({ allow: true, outcome: "allow", reasons: ["test"], seq: 0, notify: false });
    expect(d2.seq).toBe(1);
    expect(g.handled).toEqual(["hello", "listening", "session_opened", "decide:7", "decide:8"]);
    expect(g.violations).toEqual([]);
    expect(client.closed).toBe(false);
  });

  it("relays a handler's refusal as a typed error, and the connection stays up", async () => {
    const { gov, rt } = await socketPair();
    const { CmcpError } = await import("../../artifacts/errors.js");
    const g = governor(gov, {
      decide: async () => {
        throw new CmcpError("governor.unknown-session", "session s-1 was not opened");
      },
    });
    const client = new GovernorClient(rt, 5000);
    await client.hello({ version: BOUNDARY_VERSION, pid: 1 });
    await expect(client.decide(DECIDE)).rejects.toMatchObject({ code: "governor.unknown-session" });
    expect(await client.upstreamEvent({ server: "everything", event: "connected" })).toEqual({ ok: true });
    expect(g.violations).toEqual([]);
  });

  it("answers a governor reply that breaks its own schema with an error, not with the bad reply", async () => {
    const { gov, rt } = await socketPair();
    governor(gov, {
      decide: async () => ({ allow: true, outcome: "allow", reasons: [], seq: -1, notify: false }),
    });
    const client = new GovernorClient(rt, 5000);
    await client.hello({ version: BOUNDARY_VERSION, pid: 1 });
    await expect(client.decide(DECIDE)).rejects.toMatchObject({ code: "governor.reply-schema" });
  });

  it("delivers the drain notice to the runtime", async () => {
    const { gov, rt } = await socketPair();
    const g = governor(gov);
    const client = new GovernorClient(rt, 5000);
    await client.hello({ version: BOUNDARY_VERSION, pid: 1 });
    const notice = new Promise<unknown>((resolve) => (client.onNotice = (_t, body) => resolve(body)));
    g.server.notify("drain", { deadline_ms: 1234 });
    expect(await within(notice, 5000, "drain notice")).toEqual({ deadline_ms: 1234 });
    expect(g.server.phase).toBe("draining");
    // Decisions are still allowed while draining; a new session is not.
    expect((await client.decide(DECIDE)).allow).toBe(true);
  });
});

interface ViolationCase {
  name: string;
  /** Whether a valid hello precedes the hostile bytes (so they arrive in phase "ready"). */
  afterHello: boolean;
  bytes: () => Buffer;
  code: string;
}

const oversizedDecide = () =>
  encodeRawFrame(REQUEST, 2, "decide", { ...DECIDE, params: { blob: "x".repeat(BOUNDARY.decide.maxBytes) } });

const VIOLATIONS: ViolationCase[] = [
  {
    name: "an unknown request type",
    afterHello: true,
    bytes: () => encodeRawFrame(REQUEST, 2, "sign_this", { bytes: "AAAA" }),
    code: "boundary.unknown-type",
  },
  {
    name: "an unknown request type before hello",
    afterHello: false,
    bytes: () => encodeRawFrame(REQUEST, 1, "__proto__", {}),
    code: "boundary.unknown-type",
  },
  {
    name: "a decide before hello (out of phase)",
    afterHello: false,
    bytes: () => encodeRawFrame(REQUEST, 1, "decide", DECIDE),
    code: "boundary.phase",
  },
  {
    name: "a second hello (out of phase)",
    afterHello: true,
    bytes: () => helloFrame(2),
    code: "boundary.phase",
  },
  {
    name: "a reply-kind frame from the runtime",
    afterHello: true,
    bytes: () => encodeRawFrame(REPLY, 2, "decide", { allow: true, outcome: "allow", reasons: [], seq: 0 }),
    code: "boundary.direction",
  },
  {
    name: "a reply-error-kind frame from the runtime",
    afterHello: false,
    bytes: () => encodeRawFrame(REPLY_ERROR, 1, "hello", { code: "x", message: "y" }),
    code: "boundary.direction",
  },
  {
    name: "a notice-kind frame from the runtime",
    afterHello: true,
    bytes: () => encodeRawFrame(NOTICE, 2, "drain", { deadline_ms: 0 }),
    code: "boundary.direction",
  },
  {
    name: "a governor-direction type sent as a request",
    afterHello: true,
    bytes: () => encodeRawFrame(REQUEST, 2, "drain", { deadline_ms: 0 }),
    code: "boundary.direction",
  },
  {
    name: "a length prefix above MAX_FRAME_BYTES, header only",
    afterHello: true,
    bytes: () => {
      const b = Buffer.alloc(4);
      b.writeUInt32BE(MAX_FRAME_BYTES + 1, 0);
      return b;
    },
    code: "boundary.too-large",
  },
  {
    name: "a length prefix of 4 GiB - 1, header only, before hello",
    afterHello: false,
    bytes: () => Buffer.from([0xff, 0xff, 0xff, 0xff]),
    code: "boundary.too-large",
  },
  {
    name: "a decide frame above its own maxBytes",
    afterHello: true,
    bytes: oversizedDecide,
    code: "boundary.too-large",
  },
  {
    name: "a hello frame above its own maxBytes",
    afterHello: false,
    bytes: () =>
      encodeRawFrame(REQUEST, 1, "hello", { version: BOUNDARY_VERSION, pid: 1, pad: "x".repeat(8192) }),
    code: "boundary.too-large",
  },
  {
    name: "msgpack garbage",
    afterHello: true,
    bytes: () => Buffer.from([0, 0, 0, 2, 0xff, 0xff]),
    code: "boundary.malformed",
  },
  {
    name: "truncated msgpack inside a complete frame",
    afterHello: false,
    bytes: () => Buffer.from([0, 0, 0, 3, 0x94, 0x00, 0x01]),
    code: "boundary.malformed",
  },
  {
    name: "valid msgpack that is not [kind, id, type, body]",
    afterHello: true,
    bytes: () => {
      // A map instead of the 4-array: {"kind": 0}.
      const body = Buffer.from([0x81, 0xa4, 0x6b, 0x69, 0x6e, 0x64, 0x00]);
      return Buffer.concat([Buffer.from([0, 0, 0, body.length]), body]);
    },
    code: "boundary.malformed",
  },
  {
    name: "a non-integer frame id",
    afterHello: true,
    bytes: () => encodeRawFrame(REQUEST, 1.5, "decide", DECIDE),
    code: "boundary.malformed",
  },
  {
    name: "a decide with an extra field",
    afterHello: true,
    bytes: () => encodeRawFrame(REQUEST, 2, "decide", { ...DECIDE, signature: "please sign" }),
    code: "boundary.schema",
  },
  {
    name: "a decide with a field of the wrong type",
    afterHello: true,
    bytes: () => encodeRawFrame(REQUEST, 2, "decide", { ...DECIDE, request_id: 7 }),
    code: "boundary.schema",
  },
  {
    name: "a decide missing a required field",
    afterHello: true,
    bytes: () => {
      const { params: _params, ...rest } = DECIDE;
      return encodeRawFrame(REQUEST, 2, "decide", rest);
    },
    code: "boundary.schema",
  },
  {
    name: "a hello of another boundary version",
    afterHello: false,
    bytes: () => encodeRawFrame(REQUEST, 1, "hello", { version: BOUNDARY_VERSION + 1, pid: 1 }),
    code: "boundary.schema",
  },
  {
    name: "deeply nested msgpack in a hello body",
    afterHello: false,
    bytes: () => frameWithRawBody(REQUEST, 1, "hello", nestedMsgpack(200_000)),
    code: "boundary.malformed",
  },
  {
    name: "deeply nested msgpack in decide params",
    afterHello: true,
    bytes: () => {
      // {"session": ..., "params": <nested>}: a map whose last value is the raw nested bytes.
      const head = encodeRawFrame(REQUEST, 2, "decide", { ...DECIDE, params: null });
      const body = head.subarray(4, head.length - 1); // drop params' nil
      const nested = Buffer.concat([body, nestedMsgpack(200_000)]);
      const out = Buffer.alloc(4 + nested.length);
      out.writeUInt32BE(nested.length, 0);
      nested.copy(out, 4);
      return out;
    },
    code: "boundary.malformed",
  },
];

describe("BoundaryServer: a frame that breaks the table is never answered and ends the connection", () => {
  it.each(VIOLATIONS)("$name → $code", async ({ afterHello, bytes, code }) => {
    const { gov, rt } = await socketPair();
    const g = governor(gov);
    const rx = receiver(rt);
    if (afterHello) {
      rt.write(helloFrame(1));
      const reply = await rx.frame(1);
      expect(reply[0]).toBe(REPLY);
      expect(g.server.phase).toBe("ready");
    }
    const answeredBefore = rx.frames.length;
    const bytesBefore = rx.bytes;
    const handledBefore = [...g.handled];
    rt.write(bytes());
    const v = await within(g.violated, 10_000, "violation");
    expect(v.code).toBe(code);
    expect(v.reason.length).toBeGreaterThan(0);
    // The governor destroyed its end; the runtime end sees it close, with no reply in between.
    await within(rx.closed, 10_000, "runtime end close");
    expect(gov.destroyed).toBe(true);
    expect(rx.frames.length).toBe(answeredBefore);
    expect(rx.bytes).toBe(bytesBefore);
    expect(g.handled).toEqual(handledBefore);
    expect(g.violations).toHaveLength(1);
  });

  it("refuses an oversized length prefix before any of its body arrives", async () => {
    const { gov, rt } = await socketPair();
    const g = governor(gov);
    const rx = receiver(rt);
    const header = Buffer.alloc(4);
    header.writeUInt32BE(MAX_FRAME_BYTES + 1, 0);
    rt.write(header);
    // Not one body byte is sent: the refusal must come from the header alone.
    const v = await within(g.violated, 10_000, "violation");
    expect(v.code).toBe("boundary.too-large");
    await within(rx.closed, 10_000, "close");
    expect(rx.frames).toEqual([]);
  });

  it("a frame split across many writes is still reassembled (control for the size checks)", async () => {
    const { gov, rt } = await socketPair();
    const g = governor(gov);
    const rx = receiver(rt);
    const hello = helloFrame(1);
    for (let i = 0; i < hello.length; i++) {
      rt.write(hello.subarray(i, i + 1));
      await new Promise((r) => setImmediate(r));
    }
    expect((await rx.frame(1))[0]).toBe(REPLY);
    // A decide of just under its limit is accepted.
    const big = { ...DECIDE, params: { blob: "y".repeat(BOUNDARY.decide.maxBytes - 4096) } };
    rt.write(encodeRawFrame(REQUEST, 2, "decide", big));
    expect((await rx.frame(2))[0]).toBe(REPLY);
    expect(g.violations).toEqual([]);
  });

  it("handles nothing after a violation, even frames that arrived in the same chunk", async () => {
    const { gov, rt } = await socketPair();
    const g = governor(gov);
    const rx = receiver(rt);
    rt.write(helloFrame(1));
    await rx.frame(1);
    rt.write(
      Buffer.concat([
        encodeRawFrame(REQUEST, 2, "decide", { ...DECIDE, request_id: "before" }),
        encodeRawFrame(REQUEST, 3, "not_a_type", {}),
        encodeRawFrame(REQUEST, 4, "decide", { ...DECIDE, request_id: "after" }),
      ]),
    );
    const v = await within(g.violated, 10_000, "violation");
    expect(v.code).toBe("boundary.unknown-type");
    await within(rx.closed, 10_000, "close");
    expect(g.handled).toContain("decide:before");
    expect(g.handled).not.toContain("decide:after");
    expect(rx.frames.map((f) => f[1])).not.toContain(3);
    expect(rx.frames.map((f) => f[1])).not.toContain(4);
  });
});

describe("GovernorClient: a silent or absent governor fails every call closed", () => {
  it("a call with no reply fails with governor.timeout", async () => {
    const { gov, rt } = await socketPair();
    const seen: Buffer[] = [];
    gov.on("data", (c: Buffer) => seen.push(c)); // reads, never answers
    const client = new GovernorClient(rt, 100);
    await expect(client.decide(DECIDE)).rejects.toMatchObject({ code: "governor.timeout" });
    // The request did reach the governor end.
    expect(Buffer.concat(seen).length).toBeGreaterThan(4);
    // A late reply to the timed-out call is ignored, and the client stays usable.
    gov.write(encodeRawFrame(REPLY, 1, "decide", { allow: true, outcome: "allow", reasons: [], seq: 0 }));
    await expect(client.call("decide", DECIDE, 50)).rejects.toMatchObject({ code: "governor.timeout" });
    expect(client.closed).toBe(false);
  });

  it("closing the governor end rejects pending calls with governor.unavailable, and later calls at once", async () => {
    const { gov, rt } = await socketPair();
    gov.on("data", () => undefined);
    const client = new GovernorClient(rt, 60_000);
    const closes: string[] = [];
    client.onClose = (reason) => closes.push(reason);
    const pending = [
      client.decide(DECIDE),
      client.inspect({ session: "s", server: "x", method: "m", kind: "result", payload: {} }),
    ];
    const settled = Promise.allSettled(pending);
    // Let the frames leave before the governor goes away.
    await new Promise((r) => setTimeout(r, 50));
    gov.destroy();
    const results = await within(settled, 10_000, "pending calls");
    for (const r of results) {
      expect(r.status).toBe("rejected");
      expect((r as PromiseRejectedResult).reason).toMatchObject({ code: "governor.unavailable" });
    }
    expect(client.closed).toBe(true);
    expect(closes).toHaveLength(1);
    // Deadline of a minute, yet the call fails immediately (the bound below is far shorter than the deadline).
    await within(
      expect(client.call("decide", DECIDE, 60_000)).rejects.toMatchObject({ code: "governor.unavailable" }),
      5_000,
      "call after close",
    );
  });

  it("a governor that sends a bad frame is treated as gone", async () => {
    const { gov, rt } = await socketPair();
    gov.on("data", () => undefined);
    const client = new GovernorClient(rt, 60_000);
    const pending = client.decide(DECIDE);
    pending.catch(() => undefined);
    await new Promise((r) => setTimeout(r, 50));
    gov.write(Buffer.from([0xff, 0xff, 0xff, 0xff]));
    await within(expect(pending).rejects.toMatchObject({ code: "governor.unavailable" }), 10_000, "pending");
    expect(client.closed).toBe(true);
  });

  it("a reply that does not match the table is refused as governor.bad-reply", async () => {
    const { gov, rt } = await socketPair();
    const frames: number[] = [];
    gov.on("data", () => frames.push(1));
    const client = new GovernorClient(rt, 60_000);
    const pending = client.decide(DECIDE);
    pending.catch(() => undefined);
    await new Promise((r) => setTimeout(r, 50));
    // id 1 is the client's first call; an `allow` that is a string must never read as allowed.
    gov.write(encodeRawFrame(REPLY, 1, "decide", { allow: "yes", outcome: "allow", reasons: [], seq: 0 }));
    await within(expect(pending).rejects.toMatchObject({ code: "governor.bad-reply" }), 10_000, "pending");
  });

  // A reply is checked against the type of the pending call, not the type the reply frame names.
  it("a reply of another type than the call is refused as governor.bad-reply", async () => {
    const { gov, rt } = await socketPair();
    gov.on("data", () => undefined);
    const client = new GovernorClient(rt, 60_000);
    const pending = client.decide(DECIDE);
    pending.catch(() => undefined);
    await new Promise((r) => setTimeout(r, 50));
    gov.write(encodeRawFrame(REPLY, 1, "hello", { config: CONFIG }));
    const outcome = await within(
      pending.then(
        (value) => ({ resolved: value as unknown }),
        (err: unknown) => ({ rejected: err }),
      ),
      10_000,
      "pending",
    );
    expect(outcome).toMatchObject({ rejected: { code: "governor.bad-reply" } });
  });

  it("refuses to send a request above its own size limit", async () => {
    const { gov, rt } = await socketPair();
    let received = 0;
    gov.on("data", (c: Buffer) => (received += c.length));
    const client = new GovernorClient(rt, 60_000);
    await expect(
      client.decide({ ...DECIDE, params: { blob: "z".repeat(BOUNDARY.decide.maxBytes) } }),
    ).rejects.toMatchObject({ code: "boundary.too-large" });
    await new Promise((r) => setTimeout(r, 50));
    expect(received).toBe(0);
    expect(client.closed).toBe(false);
  });
});
