/**
 * The governor↔runtime process boundary, declared in one place.
 *
 * A closed table of message types: each names its direction, the phases in
 * which it is allowed, its maximum frame size (checked when sending and when
 * receiving) and the JSON Schemas of its request and reply. Frames are
 * length-prefixed msgpack over the socketpair on the runtime's fd 3.
 *
 * The governor never answers a frame that breaks the table: an unknown,
 * out-of-phase, malformed or oversized frame ends the runtime and is
 * recorded. The runtime side is a set of async stubs with a deadline, so a
 * governor that does not answer fails the call closed.
 *
 * runtime/ may import this module, and nothing else from governor/.
 */
import type { Socket } from "node:net";
import { Ajv2020, type ValidateFunction } from "ajv/dist/2020.js";
import { Packr, Unpackr } from "msgpackr";
import { CmcpError } from "../artifacts/errors.js";

export const BOUNDARY_VERSION = 1;

export type Phase = "hello" | "ready" | "draining";

const KiB = 1024;
const MiB = 1024 * KiB;

/** Any JSON value: arguments, results and payloads the governor hashes and inspects. */
const anyJson = {};
const label = { type: "string", minLength: 1, maxLength: 1024 } as const;
const optLabel = { type: "string", maxLength: 1024 } as const;
/** A tool or prompt name, resource URI or URI template (a catalog allows URIs up to 8192 characters). */
const itemKey = { type: "string", minLength: 1, maxLength: 8192 } as const;

const upstreamSchema = {
  type: "object",
  additionalProperties: false,
  required: ["name", "transport"],
  properties: {
    name: label,
    transport: { enum: ["stdio", "streamable-http", "sse"] },
    command: optLabel,
    args: { type: "array", maxItems: 256, items: { type: "string", maxLength: 4096 } },
    env: { type: "object", maxProperties: 256, additionalProperties: { type: "string", maxLength: 65536 } },
    cwd: optLabel,
    url: { type: "string", maxLength: 4096 },
    headers: {
      type: "object",
      maxProperties: 64,
      additionalProperties: { type: "string", maxLength: 65536 },
    },
    connectTimeoutMs: { type: "integer", minimum: 1 },
    callTimeoutMs: { type: "integer", minimum: 1 },
    maxResponseBytes: { type: "integer", minimum: 1 },
    stateless: { type: "boolean" },
    roots: {
      type: "array",
      maxItems: 64,
      items: {
        type: "object",
        additionalProperties: false,
        required: ["uri"],
        properties: { uri: { type: "string", maxLength: 4096 }, name: optLabel },
      },
    },
  },
} as const;

/** What the runtime is told at hello: everything it needs, and no governor key. */
const runtimeConfigSchema = {
  type: "object",
  additionalProperties: false,
  required: ["listen", "agents", "upstreams", "collision", "limits", "dev"],
  properties: {
    listen: {
      type: "object",
      additionalProperties: false,
      required: ["host", "port"],
      properties: { host: label, port: { type: "integer", minimum: 0, maximum: 65535 } },
    },
    /** PEM certificate and key for the agent-facing TLS listener (not a governor key). */
    tls: {
      type: "object",
      additionalProperties: false,
      required: ["cert", "key"],
      properties: { cert: { type: "string", maxLength: MiB }, key: { type: "string", maxLength: MiB } },
    },
    agents: {
      type: "array",
      maxItems: 10000,
      items: {
        type: "object",
        additionalProperties: false,
        required: ["name", "token_sha256", "workflows"],
        properties: {
          name: label,
          token_sha256: { type: "string", pattern: "^[0-9a-f]{64}$" },
          workflows: { type: "array", maxItems: 256, items: label },
        },
      },
    },
    upstreams: { type: "array", maxItems: 256, items: upstreamSchema },
    collision: { enum: ["refuse", "prefix"] },
    limits: {
      type: "object",
      additionalProperties: false,
      required: ["maxBodyBytes", "governorTimeoutMs", "maxSessions", "sessionIdleMs"],
      properties: {
        maxBodyBytes: { type: "integer", minimum: 1 },
        governorTimeoutMs: { type: "integer", minimum: 1 },
        maxSessions: { type: "integer", minimum: 1 },
        sessionIdleMs: { type: "integer", minimum: 1 },
      },
    },
    /** Dev mode: no auth on loopback; printed loudly by the governor. */
    dev: { type: "boolean" },
    /** An approved catalog decides what is exposed: re-list tools this often (ms) and on list_changed. */
    catalog: {
      type: "object",
      additionalProperties: false,
      required: ["relistMs"],
      properties: { relistMs: { type: "integer", minimum: 1000, maximum: 86_400_000 } },
    },
  },
} as const;

const ok = {
  type: "object",
  additionalProperties: false,
  required: ["ok"],
  properties: { ok: { const: true } },
} as const;

/**
 * The table. `dir` says who sends the request; replies flow the other way.
 * Notices (governor → runtime) have no reply.
 */
export const BOUNDARY = {
  hello: {
    dir: "runtime",
    phases: ["hello"],
    maxBytes: 4 * KiB,
    replyMaxBytes: 4 * MiB,
    request: {
      type: "object",
      additionalProperties: false,
      required: ["version", "pid"],
      properties: { version: { const: BOUNDARY_VERSION }, pid: { type: "integer", minimum: 1 } },
    },
    reply: {
      type: "object",
      additionalProperties: false,
      required: ["config"],
      properties: { config: runtimeConfigSchema },
    },
  },
  listening: {
    dir: "runtime",
    phases: ["ready"],
    maxBytes: 4 * KiB,
    replyMaxBytes: 4 * KiB,
    request: {
      type: "object",
      additionalProperties: false,
      required: ["host", "port", "url"],
      properties: { host: label, port: { type: "integer", minimum: 1, maximum: 65535 }, url: label },
    },
    reply: ok,
  },
  session_opened: {
    dir: "runtime",
    phases: ["ready"],
    maxBytes: 16 * KiB,
    replyMaxBytes: 4 * KiB,
    request: {
      type: "object",
      additionalProperties: false,
      required: ["session", "agent", "transport"],
      properties: {
        session: label,
        agent: label,
        transport: { enum: ["streamable-http", "sse", "stdio"] },
        protocol_version: optLabel,
        client_name: optLabel,
        client_version: optLabel,
      },
    },
    reply: {
      type: "object",
      additionalProperties: false,
      required: ["accept"],
      properties: { accept: { type: "boolean" }, reason: optLabel },
    },
  },
  decide: {
    dir: "runtime",
    phases: ["ready", "draining"],
    maxBytes: 4 * MiB,
    replyMaxBytes: 64 * KiB,
    request: {
      type: "object",
      additionalProperties: false,
      required: ["session", "agent", "server", "method", "request_id", "params"],
      properties: {
        session: label,
        agent: label,
        server: label,
        method: label,
        request_id: label,
        tool: label,
        resource: label,
        prompt: label,
        params: anyJson,
      },
    },
    reply: {
      type: "object",
      additionalProperties: false,
      required: ["allow", "outcome", "reasons", "seq", "notify"],
      properties: {
        allow: { type: "boolean" },
        outcome: { enum: ["allow", "deny", "redact", "require_approval", "advisory"] },
        reasons: { type: "array", maxItems: 64, items: { type: "string", maxLength: 2048 } },
        seq: { type: "integer", minimum: 0 },
        notify: { type: "boolean" },
        /** False in advisory and silent modes: the outcome was recorded, not applied. */
        enforced: { type: "boolean" },
        /** Enforcing mode: redaction targets (arg:/pointer, result:/pointer) the runtime applies. */
        redact: { type: "array", maxItems: 256, items: { type: "string", maxLength: 2048 } },
        /** The server is isolated after drift: the session stops listing it. */
        isolated: { type: "boolean" },
        /** require_approval in enforcing mode: hold the call and wait with await_approval. */
        hold: {
          type: "object",
          additionalProperties: false,
          required: ["approval_id", "hold_ms"],
          properties: {
            approval_id: { type: "string", pattern: "^[0-9a-f]{32}$" },
            hold_ms: { type: "integer", minimum: 1, maximum: 3_600_000 },
          },
        },
      },
    },
  },
  await_approval: {
    dir: "runtime",
    phases: ["ready", "draining"],
    maxBytes: 4 * KiB,
    replyMaxBytes: 16 * KiB,
    request: {
      type: "object",
      additionalProperties: false,
      required: ["session", "approval_id"],
      properties: { session: label, approval_id: { type: "string", pattern: "^[0-9a-f]{32}$" } },
    },
    reply: {
      type: "object",
      additionalProperties: false,
      required: ["approved", "reason", "seq"],
      properties: {
        approved: { type: "boolean" },
        reason: { type: "string", maxLength: 4096 },
        seq: { type: "integer", minimum: -1 },
      },
    },
  },
  inspect: {
    dir: "runtime",
    phases: ["ready", "draining"],
    maxBytes: 16 * MiB,
    replyMaxBytes: 64 * KiB,
    request: {
      type: "object",
      additionalProperties: false,
      required: ["session", "server", "method", "kind", "payload"],
      properties: {
        session: label,
        server: label,
        method: label,
        request_id: label,
        /** "reply": the agent's answer to an upstream's request (sampling, elicitation), on its way upstream. */
        kind: { enum: ["result", "error", "notification", "request", "reply"] },
        payload: anyJson,
      },
    },
    reply: {
      type: "object",
      additionalProperties: false,
      required: ["action", "seq"],
      properties: {
        action: { enum: ["pass", "block"] },
        reason: { type: "string", maxLength: 2048 },
        seq: { type: "integer", minimum: 0 },
      },
    },
  },
  catalog_observed: {
    dir: "runtime",
    phases: ["ready", "draining"],
    maxBytes: 4 * MiB,
    request: {
      type: "object",
      additionalProperties: false,
      required: ["server", "listed"],
      properties: {
        server: label,
        session: label,
        server_name: optLabel,
        server_version: optLabel,
        protocol_version: optLabel,
        /** The kinds this report lists; a kind not named here was not listed (no drift is inferred). */
        listed: {
          type: "array",
          minItems: 1,
          maxItems: 4,
          uniqueItems: true,
          items: { enum: ["tools", "resources", "resource_templates", "prompts"] },
        },
        tools: { type: "array", maxItems: 10000, items: anyJson },
        resources: { type: "array", maxItems: 10000, items: anyJson },
        resource_templates: { type: "array", maxItems: 10000, items: anyJson },
        prompts: { type: "array", maxItems: 10000, items: anyJson },
      },
    },
    replyMaxBytes: 8 * MiB,
    reply: {
      type: "object",
      additionalProperties: false,
      required: ["ok"],
      properties: {
        ok: { const: true },
        /** With an approved catalog: what to expose for this server (approved definitions), nothing else. */
        expose: {
          type: "array",
          maxItems: 40000,
          items: {
            type: "object",
            additionalProperties: false,
            required: ["kind", "name", "key", "definition"],
            properties: {
              kind: { enum: ["tool", "resource", "resource_template", "prompt"] },
              name: itemKey,
              key: itemKey,
              definition: anyJson,
            },
          },
        },
        /** The server is isolated after drift: the session stops listing it. */
        isolated: { type: "boolean" },
      },
    },
  },
  upstream_event: {
    dir: "runtime",
    phases: ["ready", "draining"],
    maxBytes: 16 * KiB,
    replyMaxBytes: 4 * KiB,
    request: {
      type: "object",
      additionalProperties: false,
      required: ["server", "event"],
      properties: {
        server: label,
        session: label,
        event: { enum: ["connected", "disconnected", "list_changed", "error", "collision"] },
        detail: { type: "string", maxLength: 4096 },
      },
    },
    reply: ok,
  },
  session_closed: {
    dir: "runtime",
    phases: ["ready", "draining"],
    maxBytes: 4 * KiB,
    replyMaxBytes: 4 * KiB,
    request: {
      type: "object",
      additionalProperties: false,
      required: ["session"],
      properties: { session: label, reason: optLabel },
    },
    reply: ok,
  },
  drain: {
    dir: "governor",
    phases: ["ready", "draining"],
    maxBytes: 4 * KiB,
    replyMaxBytes: 0,
    request: {
      type: "object",
      additionalProperties: false,
      required: ["deadline_ms"],
      properties: { deadline_ms: { type: "integer", minimum: 0 } },
    },
    reply: ok,
  },
} as const;

export type MessageType = keyof typeof BOUNDARY;
export type RuntimeRequestType = {
  [K in MessageType]: (typeof BOUNDARY)[K]["dir"] extends "runtime" ? K : never;
}[MessageType];

// TypeScript views of the bodies (the schemas above are what is enforced).
export interface UpstreamSpec {
  name: string;
  transport: "stdio" | "streamable-http" | "sse";
  command?: string;
  args?: string[];
  env?: Record<string, string>;
  cwd?: string;
  url?: string;
  headers?: Record<string, string>;
  connectTimeoutMs?: number;
  callTimeoutMs?: number;
  maxResponseBytes?: number;
  stateless?: boolean;
  roots?: { uri: string; name?: string }[];
}
export interface RuntimeConfig {
  listen: { host: string; port: number };
  tls?: { cert: string; key: string };
  agents: { name: string; token_sha256: string; workflows: string[] }[];
  upstreams: UpstreamSpec[];
  collision: "refuse" | "prefix";
  limits: { maxBodyBytes: number; governorTimeoutMs: number; maxSessions: number; sessionIdleMs: number };
  dev: boolean;
  catalog?: { relistMs: number };
}
export type Outcome = "allow" | "deny" | "redact" | "require_approval" | "advisory";
export type ListedKind = "tools" | "resources" | "resource_templates" | "prompts";

export interface Bodies {
  hello: { req: { version: number; pid: number }; rep: { config: RuntimeConfig } };
  listening: { req: { host: string; port: number; url: string }; rep: { ok: true } };
  session_opened: {
    req: {
      session: string;
      agent: string;
      transport: "streamable-http" | "sse" | "stdio";
      protocol_version?: string;
      client_name?: string;
      client_version?: string;
    };
    rep: { accept: boolean; reason?: string };
  };
  decide: {
    req: {
      session: string;
      agent: string;
      server: string;
      method: string;
      request_id: string;
      tool?: string;
      resource?: string;
      prompt?: string;
      params: unknown;
    };
    /** notify: tell the agent what was decided (advisory mode or an advisory outcome; never in silent mode). */
    rep: {
      allow: boolean;
      outcome: Outcome;
      reasons: string[];
      seq: number;
      notify: boolean;
      enforced?: boolean;
      redact?: string[];
      isolated?: boolean;
      hold?: { approval_id: string; hold_ms: number };
    };
  };
  await_approval: {
    req: { session: string; approval_id: string };
    /** seq: the approval receipt (-1 when it could not be recorded, which also means refused). */
    rep: { approved: boolean; reason: string; seq: number };
  };
  inspect: {
    req: {
      session: string;
      server: string;
      method: string;
      request_id?: string;
      kind: "result" | "error" | "notification" | "request" | "reply";
      payload: unknown;
    };
    rep: { action: "pass" | "block"; reason?: string; seq: number };
  };
  catalog_observed: {
    req: {
      server: string;
      session?: string;
      server_name?: string;
      server_version?: string;
      protocol_version?: string;
      listed: ListedKind[];
      tools?: unknown[];
      resources?: unknown[];
      resource_templates?: unknown[];
      prompts?: unknown[];
    };
    rep: {
      ok: true;
      expose?: {
        kind: "tool" | "resource" | "resource_template" | "prompt";
        name: string;
        key: string;
        definition: Record<string, unknown>;
      }[];
      isolated?: boolean;
    };
  };
  upstream_event: {
    req: {
      server: string;
      session?: string;
      event: "connected" | "disconnected" | "list_changed" | "error" | "collision";
      detail?: string;
    };
    rep: { ok: true };
  };
  session_closed: { req: { session: string; reason?: string }; rep: { ok: true } };
  drain: { req: { deadline_ms: number }; rep: { ok: true } };
}

const ajv = new Ajv2020({ strict: true, strictRequired: false, strictTypes: false, allErrors: false });
const validators = Object.fromEntries(
  Object.entries(BOUNDARY).map(([type, spec]) => [
    type,
    { request: ajv.compile(spec.request), reply: ajv.compile(spec.reply) },
  ]),
) as Record<MessageType, { request: ValidateFunction; reply: ValidateFunction }>;

/** Largest frame any table entry allows: the reader refuses a length prefix above it before buffering. */
export const MAX_FRAME_BYTES = Math.max(
  ...Object.values(BOUNDARY).flatMap((s) => [s.maxBytes, s.replyMaxBytes]),
);

// Frame kinds. A frame is the msgpack array [kind, id, type, body].
const REQUEST = 0;
const REPLY = 1;
const REPLY_ERROR = 2;
const NOTICE = 3;
type Frame = [number, number, string, unknown];

const packr = new Packr({ useRecords: false, moreTypes: false });
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, moreTypes: false });

function encode(frame: Frame, maxBytes: number): Buffer {
  const body = packr.pack(frame);
  if (body.length > maxBytes) {
    throw new CmcpError(
      "boundary.too-large",
      `${frame[2]} frame of ${body.length} bytes exceeds its limit of ${maxBytes}`,
    );
  }
  const out = Buffer.allocUnsafe(4 + body.length);
  out.writeUInt32BE(body.length, 0);
  body.copy(out, 4);
  return out;
}

/** Splits a byte stream into frames; refuses a length prefix above MAX_FRAME_BYTES before buffering it. */
class FrameReader {
  #chunks: Buffer[] = [];
  #size = 0;

  push(chunk: Buffer, onFrame: (frame: Frame, size: number) => void): void {
    this.#chunks.push(chunk);
    this.#size += chunk.length;
    while (this.#size >= 4) {
      const head = this.#take(4, false);
      const len = head.readUInt32BE(0);
      if (len > MAX_FRAME_BYTES)
        throw new CmcpError("boundary.too-large", `frame length ${len} exceeds ${MAX_FRAME_BYTES}`);
      if (this.#size < 4 + len) return;
      this.#take(4, true);
      const body = this.#take(len, true);
      let frame: unknown;
      try {
        frame = unpackr.unpack(body);
      } catch (err) {
        throw new CmcpError("boundary.malformed", `frame is not msgpack: ${(err as Error).message}`);
      }
      if (
        !Array.isArray(frame) ||
        frame.length !== 4 ||
        typeof frame[0] !== "number" ||
        !Number.isSafeInteger(frame[1]) ||
        typeof frame[2] !== "string"
      ) {
        throw new CmcpError("boundary.malformed", "frame is not [kind, id, type, body]");
      }
      onFrame(frame as Frame, len);
    }
  }

  /** The first n buffered bytes, joined once; consumed when `consume`. */
  #take(n: number, consume: boolean): Buffer {
    if (this.#chunks[0]!.length < n) this.#chunks = [Buffer.concat(this.#chunks, this.#size)];
    const first = this.#chunks[0]!;
    const out = first.subarray(0, n);
    if (consume) {
      if (first.length === n) this.#chunks.shift();
      else this.#chunks[0] = first.subarray(n);
      this.#size -= n;
    }
    return out;
  }
}

function isMessageType(t: string): t is MessageType {
  return Object.prototype.hasOwnProperty.call(BOUNDARY, t);
}

function schemaError(v: ValidateFunction): string {
  const e = v.errors?.[0];
  return e ? `${e.instancePath || "/"} ${e.message}` : "invalid";
}

export type Handlers = {
  [K in RuntimeRequestType]: (body: Bodies[K]["req"]) => Promise<Bodies[K]["rep"]>;
};

/**
 * Governor side. Dispatches runtime requests to handlers; the first frame
 * that breaks the table calls `onViolation` and nothing more is read.
 */
export class BoundaryServer {
  phase: Phase = "hello";
  readonly #socket: Socket;
  readonly #reader = new FrameReader();
  readonly #handlers: Handlers;
  readonly #onViolation: (reason: string, code: string) => void;
  #violated = false;
  #nextNoticeId = 1;

  constructor(socket: Socket, handlers: Handlers, onViolation: (reason: string, code: string) => void) {
    this.#socket = socket;
    this.#handlers = handlers;
    this.#onViolation = onViolation;
    socket.on("data", (chunk: Buffer) => {
      if (this.#violated) return;
      try {
        this.#reader.push(chunk, (frame, size) => this.#onFrame(frame, size));
      } catch (err) {
        this.#violation(err);
      }
    });
  }

  #violation(err: unknown): void {
    if (this.#violated) return;
    this.#violated = true;
    const e = err instanceof CmcpError ? err : new CmcpError("boundary.malformed", String(err));
    this.#socket.destroy();
    this.#onViolation(e.message, e.code);
  }

  #onFrame([kind, id, type, body]: Frame, size: number): void {
    if (kind !== REQUEST)
      throw new CmcpError("boundary.direction", `the runtime may only send requests, got kind ${kind}`);
    if (!isMessageType(type))
      throw new CmcpError("boundary.unknown-type", `unknown request type "${type.slice(0, 64)}"`);
    const spec = BOUNDARY[type];
    if (spec.dir !== "runtime")
      throw new CmcpError("boundary.direction", `"${type}" is not a runtime request`);
    if (size > spec.maxBytes)
      throw new CmcpError("boundary.too-large", `${type} frame of ${size} bytes exceeds ${spec.maxBytes}`);
    if (!(spec.phases as readonly Phase[]).includes(this.phase)) {
      throw new CmcpError("boundary.phase", `"${type}" is not allowed in phase ${this.phase}`);
    }
    const v = validators[type].request;
    if (!v(body)) throw new CmcpError("boundary.schema", `${type} request: ${schemaError(v)}`);
    if (type === "hello") this.phase = "ready";
    const handler = this.#handlers[type as RuntimeRequestType] as (b: unknown) => Promise<unknown>;
    handler(body).then(
      (reply) => this.#reply(id, type, reply),
      (err: unknown) => {
        const e = err instanceof CmcpError ? err : new CmcpError("governor.error", String(err));
        this.#write([REPLY_ERROR, id, type, { code: e.code, message: e.message }], 64 * KiB);
      },
    );
  }

  #reply(id: number, type: MessageType, reply: unknown): void {
    const spec = BOUNDARY[type];
    const v = validators[type].reply;
    if (!v(reply)) {
      // A governor bug, not a runtime fault: answer with an error so the call fails closed.
      this.#write(
        [REPLY_ERROR, id, type, { code: "governor.reply-schema", message: schemaError(v) }],
        64 * KiB,
      );
      return;
    }
    this.#write([REPLY, id, type, reply], spec.replyMaxBytes);
  }

  #write(frame: Frame, max: number): void {
    if (this.#violated || this.#socket.destroyed) return;
    try {
      this.#socket.write(encode(frame, max));
    } catch (err) {
      if (frame[0] === REPLY_ERROR) return; // cannot happen for small error frames; never loop
      this.#write(
        [
          REPLY_ERROR,
          frame[1],
          frame[2],
          { code: "governor.error", message: String((err as Error).message) },
        ],
        64 * KiB,
      );
    }
  }

  /** Governor → runtime notice (no reply). */
  notify<K extends "drain">(type: K, body: Bodies[K]["req"]): void {
    if (type === "drain") this.phase = "draining";
    this.#write([NOTICE, this.#nextNoticeId++, type, body], BOUNDARY[type].maxBytes);
  }
}

/**
 * Runtime side: one async stub per request type. Every call has a deadline;
 * a governor that is gone or silent makes the call fail, never pass.
 */
export class GovernorClient {
  readonly #socket: Socket;
  readonly #reader = new FrameReader();
  readonly #pending = new Map<
    number,
    { type: MessageType; resolve: (v: unknown) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }
  >();
  #timeoutMs: number;
  #nextId = 1;
  #closed: CmcpError | undefined;
  onNotice: (type: "drain", body: unknown) => void = () => undefined;
  onClose: (reason: string) => void = () => undefined;

  constructor(socket: Socket, timeoutMs: number) {
    this.#socket = socket;
    this.#timeoutMs = timeoutMs;
    socket.on("data", (chunk: Buffer) => {
      try {
        this.#reader.push(chunk, (frame) => this.#onFrame(frame));
      } catch (err) {
        this.#close(`governor sent a bad frame: ${(err as Error).message}`);
      }
    });
    socket.on("close", () => this.#close("governor connection closed"));
    socket.on("error", (err) => this.#close(`governor connection failed: ${err.message}`));
  }

  get closed(): boolean {
    return this.#closed !== undefined;
  }

  /** The deadline for every later call (the configured one arrives with the hello reply). */
  set timeoutMs(ms: number) {
    this.#timeoutMs = ms;
  }

  #close(reason: string): void {
    if (this.#closed) return;
    this.#closed = new CmcpError("governor.unavailable", reason);
    for (const p of this.#pending.values()) {
      clearTimeout(p.timer);
      p.reject(this.#closed);
    }
    this.#pending.clear();
    this.#socket.destroy();
    this.onClose(reason);
  }

  #onFrame([kind, id, type, body]: Frame): void {
    if (kind === NOTICE) {
      if (type === "drain") this.onNotice("drain", body);
      return;
    }
    const p = this.#pending.get(id);
    if (!p) return;
    this.#pending.delete(id);
    clearTimeout(p.timer);
    if (kind === REPLY_ERROR) {
      const e = body as { code?: unknown; message?: unknown };
      p.reject(new CmcpError(String(e?.code ?? "governor.error"), String(e?.message ?? "governor refused")));
    } else if (kind === REPLY && type === p.type && validators[p.type].reply(body)) {
      p.resolve(body);
    } else {
      p.reject(new CmcpError("governor.bad-reply", `governor reply to ${type} does not match the table`));
    }
  }

  call<K extends RuntimeRequestType>(
    type: K,
    body: Bodies[K]["req"],
    timeoutMs?: number,
  ): Promise<Bodies[K]["rep"]> {
    const deadline = timeoutMs ?? this.#timeoutMs;
    if (this.#closed) return Promise.reject(this.#closed);
    const id = this.#nextId++;
    // A body the governor would treat as a violation fails this one call instead of ending the runtime.
    const v = validators[type].request;
    if (!v(body))
      return Promise.reject(new CmcpError("boundary.schema", `${type} request: ${schemaError(v)}`));
    let frame: Buffer;
    try {
      frame = encode([REQUEST, id, type, body], BOUNDARY[type].maxBytes);
    } catch (err) {
      return Promise.reject(err);
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new CmcpError("governor.timeout", `governor did not answer ${type} within ${deadline} ms`));
      }, deadline);
      this.#pending.set(id, { type, resolve: resolve as (v: unknown) => void, reject, timer });
      this.#socket.write(frame);
    });
  }

  hello = (b: Bodies["hello"]["req"]) => this.call("hello", b);
  listening = (b: Bodies["listening"]["req"]) => this.call("listening", b);
  sessionOpened = (b: Bodies["session_opened"]["req"]) => this.call("session_opened", b);
  decide = (b: Bodies["decide"]["req"]) => this.call("decide", b);
  inspect = (b: Bodies["inspect"]["req"]) => this.call("inspect", b);
  catalogObserved = (b: Bodies["catalog_observed"]["req"]) => this.call("catalog_observed", b);
  upstreamEvent = (b: Bodies["upstream_event"]["req"]) => this.call("upstream_event", b);
  sessionClosed = (b: Bodies["session_closed"]["req"]) => this.call("session_closed", b);
  /** Waits for an approver; the deadline is the hold plus a margin, not the usual governor deadline. */
  awaitApproval = (b: Bodies["await_approval"]["req"], holdMs: number) =>
    this.call("await_approval", b, holdMs + 10_000);

  close(): void {
    this.#close("closed by the runtime");
  }
}

/** Test hook: encode an arbitrary (possibly hostile) frame, bypassing the table. */
export function encodeRawFrame(kind: number, id: number, type: string, body: unknown): Buffer {
  return encode([kind, id, type, body], Number.MAX_SAFE_INTEGER);
}
