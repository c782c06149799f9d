/**
 * Shared connections for upstreams configured as `stateless`: one connection
 * serves every agent session. Because such a connection cannot tell which
 * session a server-to-client request belongs to, pooled upstreams get no
 * sampling or elicitation capability; roots come from configuration, and
 * list_changed is told to every session. Everything else about a pooled
 * request (decision, inspection, receipts) is per session, as for any other.
 */
import type { UpstreamSpec } from "../governor/boundary.js";
import { rpcError } from "./rpc-errors.js";
import { UpstreamConnection } from "./upstream-connector.js";

export interface PoolListener {
  /** An upstream's list changed (tools, resources, prompts). */
  onListChanged(server: string, method: string): void;
  onDisconnected(server: string, reason: string): void;
}

export class UpstreamPool {
  readonly #version: string;
  readonly #log: (line: string) => void;
  readonly #conns = new Map<string, Promise<UpstreamConnection>>();
  readonly #listeners = new Set<PoolListener>();

  constructor(version: string, log: (line: string) => void) {
    this.#version = version;
    this.#log = log;
  }

  subscribe(listener: PoolListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** The shared connection, connecting (or reconnecting after a loss) when needed. */
  get(spec: UpstreamSpec): Promise<UpstreamConnection> {
    let conn = this.#conns.get(spec.name);
    if (conn) return conn;
    conn = UpstreamConnection.connect(spec, {
      clientInfo: { name: "cmcp", version: this.#version },
      capabilities: spec.roots ? { roots: { listChanged: false } } : {},
      handlers: {
        onRequest: async (method) => {
          if (method === "roots/list") return { roots: spec.roots ?? [] };
          if (method === "ping") return {};
          throw rpcError(
            -32601,
            `${method} is not available from a gateway connection shared by several sessions`,
          );
        },
        onNotification: (method) => {
          if (method.endsWith("/list_changed"))
            for (const l of this.#listeners) l.onListChanged(spec.name, method);
          // Other notifications cannot be attributed to a session; they are not relayed.
        },
        onClose: (reason) => {
          this.#conns.delete(spec.name);
          this.#log(`pooled upstream ${spec.name} closed: ${reason}; it reconnects on the next request`);
          for (const l of this.#listeners) l.onDisconnected(spec.name, reason);
        },
      },
    });
    this.#conns.set(spec.name, conn);
    conn.catch(() => this.#conns.delete(spec.name));
    return conn;
  }

  async close(): Promise<void> {
    const all = [...this.#conns.values()];
    this.#conns.clear();
    await Promise.allSettled(all.map((p) => p.then((c) => c.close())));
  }
}
