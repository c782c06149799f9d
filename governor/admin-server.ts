/**
 * The local admin interface: a Unix socket in the data directory, mode 0600,
 * so only the governor's own user (root on these machines) can reach it; the
 * runtime user cannot. One request per connection, a JSON line; the reply is
 * a JSON line, followed for `export` by the bundle's bytes.
 */
import { createReadStream } from "node:fs";
import { chmod, lstat, mkdir, mkdtemp, rm, stat, unlink } from "node:fs/promises";
import { createConnection, createServer, type Server, type Socket } from "node:net";
import { pipeline } from "node:stream/promises";
import { dirname, join } from "node:path";
import { CmcpError, isCmcpError } from "../artifacts/errors.js";
import { parseJson } from "../artifacts/strict-json.js";
import { exportFromSource, liveSource } from "./export-bundle.js";
import type { Gateway } from "./gateway.js";

/** Inside a directory of its own (mode 0700), so the socket is never reachable by others, even before its chmod. */
export const ADMIN_SOCKET = "admin/admin.sock";
/** A request is one short JSON line; anything longer is not a request. */
const MAX_REQUEST_BYTES = 64 * 1024;

export type AdminRequest =
  | { cmd: "status" }
  | { cmd: "export" }
  | { cmd: "approvals" }
  | { cmd: "claim"; session: string }
  | { cmd: "answer"; approval_id: string; statement: unknown };

export class AdminServer {
  readonly path: string;
  readonly #server: Server;
  readonly #gateway: Gateway;

  private constructor(path: string, server: Server, gateway: Gateway) {
    this.path = path;
    this.#server = server;
    this.#gateway = gateway;
  }

  static async start(gateway: Gateway, dataDir: string): Promise<AdminServer> {
    const path = join(dataDir, ADMIN_SOCKET);
    const dir = dirname(path);
    await mkdir(dir, { mode: 0o700, recursive: true });
    const st = await lstat(dir);
    if (!st.isDirectory() || st.uid !== process.getuid?.())
      throw new CmcpError("admin.socket-dir", `${dir} is not a directory owned by the governor's user`);
    // mkdir leaves an existing directory's mode alone, and the umask may have narrowed a new one: set it.
    await chmod(dir, 0o700);
    // A socket file left by a crashed governor; the data-dir lock guarantees no live one owns it.
    await unlink(path).catch(() => undefined);
    const server = createServer();
    const admin = new AdminServer(path, server, gateway);
    server.on("connection", (socket) => admin.#serve(socket));
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(path, () => resolve());
    });
    await chmod(path, 0o600);
    return admin;
  }

  #serve(socket: Socket): void {
    let buf = Buffer.alloc(0);
    socket.setTimeout(10_000, () => socket.destroy());
    const onData = (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      if (buf.length > MAX_REQUEST_BYTES) {
        socket.off("data", onData);
        socket.end(`${JSON.stringify({ ok: false, error: "request too large" })}\n`);
        socket.destroySoon();
        return;
      }
      const nl = buf.indexOf(0x0a);
      if (nl < 0) return;
      socket.off("data", onData);
      // The request is in; an export of a large chain may take longer than the idle limit.
      socket.setTimeout(0);
      void this.#handle(socket, buf.subarray(0, nl));
    };
    socket.on("data", onData);
    socket.on("error", () => undefined);
  }

  async #handle(socket: Socket, line: Uint8Array): Promise<void> {
    const fail = (error: string): void => void socket.end(`${JSON.stringify({ ok: false, error })}\n`);
    let req: AdminRequest;
    try {
      req = parseJson(line, { maxBytes: MAX_REQUEST_BYTES, maxDepth: 4 }) as AdminRequest;
    } catch (err) {
      return fail(`malformed request: ${isCmcpError(err) ? err.message : String(err)}`);
    }
    try {
      if (req?.cmd === "status")
        return void socket.end(`${JSON.stringify({ ok: true, status: this.#gateway.status() })}\n`);
      if (req?.cmd === "export") return await this.#export(socket);
      if (req?.cmd === "claim") {
        if (typeof req.session !== "string" || req.session.length === 0 || req.session.length > 1024)
          return fail("claim needs a session id");
        const claim = await this.#gateway.chain.issueClaim(req.session);
        return void socket.end(`${JSON.stringify({ ok: true, claim })}\n`);
      }
      if (req?.cmd === "approvals")
        return void socket.end(
          `${JSON.stringify({ ok: true, pending: this.#gateway.approvals.pending() })}\n`,
        );
      if (req?.cmd === "answer") {
        if (typeof req.approval_id !== "string") return fail("answer needs approval_id");
        const result = await this.#gateway.approvals.answer(req.approval_id, req.statement);
        return void socket.end(`${JSON.stringify({ ok: true, result })}\n`);
      }
      return fail(`unknown command ${JSON.stringify((req as { cmd?: unknown })?.cmd ?? null).slice(0, 64)}`);
    } catch (err) {
      return fail(isCmcpError(err) ? err.message : String(err));
    }
  }

  async #export(socket: Socket): Promise<void> {
    const tmp = await mkdtemp(join(this.#gateway.config.data_dir, ".export-"));
    try {
      const file = join(tmp, "bundle.json");
      const summary = await exportFromSource(await liveSource(this.#gateway.chain), file);
      const { size } = await stat(file);
      socket.write(`${JSON.stringify({ ok: true, ...summary, bytes: size })}\n`);
      // pipeline settles (and the temp copy is removed) even when the client goes away mid-transfer.
      await pipeline(createReadStream(file), socket).catch(() => socket.destroy());
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
    await unlink(this.path).catch(() => undefined);
  }
}

/** Client side, for `cmcp status`, `cmcp export` and the approval commands. */
export async function adminRequest(
  socketPath: string,
  request: AdminRequest,
  onBody?: (chunk: Buffer) => void,
): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const socket = createConnection(socketPath);
    let head: Buffer | null = Buffer.alloc(0);
    let reply: Record<string, unknown> | null = null;
    socket.on("connect", () => socket.write(`${JSON.stringify(request)}\n`));
    socket.on("data", (chunk: Buffer) => {
      if (head === null) return onBody?.(chunk);
      head = Buffer.concat([head, chunk]);
      const nl = head.indexOf(0x0a);
      if (nl < 0) {
        if (head.length > MAX_REQUEST_BYTES * 16) socket.destroy(new Error("admin reply too long"));
        return;
      }
      try {
        reply = parseJson(head.subarray(0, nl)) as Record<string, unknown>;
      } catch (err) {
        socket.destroy(err as Error);
        return;
      }
      const rest = head.subarray(nl + 1);
      head = null;
      if (rest.length > 0) onBody?.(rest);
    });
    socket.on("error", (err: NodeJS.ErrnoException) => {
      const why =
        err.code === "ENOENT" || err.code === "ECONNREFUSED" ? "no governor is running there" : err.message;
      reject(new CmcpError("admin.unreachable", `cannot reach the admin socket ${socketPath}: ${why}`));
    });
    socket.on("close", () => {
      if (!reply)
        return reject(
          new CmcpError("admin.unreachable", "the governor closed the admin connection without a reply"),
        );
      if (reply.ok !== true) return reject(new CmcpError("admin.refused", String(reply.error ?? "refused")));
      resolve(reply);
    });
  });
}
