/**
 * Spawns and supervises the keyless runtime: a fresh `node` process (never a
 * fork, so no governor memory is inherited) with a scrubbed environment, no
 * key material in argv or env, its own state directory as cwd, its own
 * unprivileged user when the governor is root, and the boundary socketpair
 * on fd 3. Restarts it with backoff when it exits unexpectedly.
 */
import { spawn, type ChildProcess } from "node:child_process";
import type { Socket } from "node:net";
import { fileURLToPath } from "node:url";
import { BoundaryServer, type Handlers } from "./boundary.js";
import type { RuntimeIdentity } from "./runtime-user.js";

export interface SupervisorOptions {
  identity: RuntimeIdentity | null;
  stateDir: string;
  handlers: Handlers;
  /** Called for a frame that broke the boundary table; the runtime is already being killed. */
  onViolation(reason: string, code: string, pid: number | undefined): void;
  /** Called when the runtime exited; `restartIn` is null when no restart follows. */
  onExit(info: {
    pid: number | undefined;
    code: number | null;
    signal: string | null;
    restartIn: number | null;
  }): void;
  log(line: string): void;
  backoff?: { initialMs: number; maxMs: number; resetAfterMs: number };
  /** Node arguments of the runtime; tests substitute a misbehaving one. */
  command?: string[];
}

/** The runtime's entry file: TypeScript sources in tests, the build otherwise. */
export function runtimeEntryFile(): string {
  const here = import.meta.url;
  return fileURLToPath(
    new URL(here.endsWith(".ts") ? "../runtime/runtime-main.ts" : "../runtime/runtime-main.js", here),
  );
}

/** Node arguments that start the runtime, from sources (tests) or from the build. */
export function runtimeCommand(): string[] {
  const entry = runtimeEntryFile();
  // Absolute loader URL: the runtime's cwd is its state directory, where `tsx` would not resolve.
  return entry.endsWith(".ts") ? ["--import", import.meta.resolve("tsx"), entry] : [entry];
}

/** Only what a Node process needs; nothing of the governor's environment leaks through. */
function scrubbedEnv(stateDir: string): NodeJS.ProcessEnv {
  return {
    PATH: process.env.PATH ?? "/usr/local/bin:/usr/bin:/bin",
    HOME: stateDir,
    TMPDIR: stateDir,
    LANG: "C.UTF-8",
    NODE_ENV: "production",
  };
}

export class RuntimeSupervisor {
  readonly #opts: SupervisorOptions;
  #child: ChildProcess | null = null;
  #boundary: BoundaryServer | null = null;
  #stopping = false;
  /** Backoff exponent; resets after a runtime stayed up long enough. */
  #restarts = 0;
  #totalRestarts = 0;
  #timer: NodeJS.Timeout | undefined;
  #startedAt = 0;
  #exited: Promise<void> = Promise.resolve();

  constructor(opts: SupervisorOptions) {
    this.#opts = opts;
  }

  get pid(): number | undefined {
    return this.#child?.pid;
  }

  get restarts(): number {
    return this.#totalRestarts;
  }

  start(): void {
    this.#stopping = false;
    this.#spawn();
  }

  #spawn(): void {
    const o = this.#opts;
    let child: ChildProcess;
    try {
      child = spawn(process.execPath, o.command ?? runtimeCommand(), {
        cwd: o.stateDir,
        env: scrubbedEnv(o.stateDir),
        stdio: ["ignore", "inherit", "inherit", "pipe"],
        ...(o.identity ? { uid: o.identity.uid, gid: o.identity.gid } : {}),
        detached: false,
      });
    } catch (err) {
      // A synchronous spawn failure (EPERM on setuid, say) is handled like a runtime that died at once.
      o.log(`runtime failed to start: ${(err as Error).message}`);
      this.#afterExit(undefined, null, null);
      return;
    }
    this.#child = child;
    this.#startedAt = Date.now();
    const socket = child.stdio[3] as Socket;
    this.#boundary = new BoundaryServer(socket, o.handlers, (reason, code) => {
      child.kill("SIGKILL");
      o.onViolation(reason, code, child.pid);
    });
    socket.on("error", () => undefined); // the exit handler reports what matters
    let settled = false;
    this.#exited = new Promise((resolve) => {
      const done = (code: number | null, signal: string | null) => {
        if (settled) return;
        settled = true;
        if (this.#child === child) {
          this.#child = null;
          this.#boundary = null;
        }
        this.#afterExit(child.pid, code, signal);
        resolve();
      };
      child.once("exit", done);
      // A spawn that fails asynchronously (ENOENT, EACCES, EAGAIN) emits 'error' and never 'exit'.
      child.once("error", (err) => {
        o.log(`runtime failed to start: ${err.message}`);
        if (child.pid === undefined) done(null, null);
      });
    });
  }

  #afterExit(pid: number | undefined, code: number | null, signal: string | null): void {
    const restartIn = this.#stopping ? null : this.#nextDelay();
    this.#opts.onExit({ pid, code, signal, restartIn });
    if (restartIn !== null) {
      this.#timer = setTimeout(() => {
        this.#restarts++;
        this.#totalRestarts++;
        this.#spawn();
      }, restartIn);
    }
  }

  #nextDelay(): number {
    const b = this.#opts.backoff ?? { initialMs: 200, maxMs: 10_000, resetAfterMs: 30_000 };
    if (Date.now() - this.#startedAt > b.resetAfterMs) this.#restarts = 0;
    return Math.min(b.maxMs, b.initialMs * 2 ** Math.min(this.#restarts, 16));
  }

  /** Asks the runtime to drain, waits up to the deadline, then ends it. No restart follows. */
  async stop(deadlineMs: number): Promise<void> {
    this.#stopping = true;
    clearTimeout(this.#timer);
    const child = this.#child;
    if (!child) return;
    this.#boundary?.notify("drain", { deadline_ms: deadlineMs });
    const exited = this.#exited;
    const timeout = new Promise<"timeout">((r) => setTimeout(() => r("timeout"), deadlineMs + 500).unref());
    if ((await Promise.race([exited, timeout])) === "timeout") {
      child.kill("SIGTERM");
      const hard = new Promise<"timeout">((r) => setTimeout(() => r("timeout"), 2000).unref());
      if ((await Promise.race([exited, hard])) === "timeout") child.kill("SIGKILL");
      await exited;
    }
  }
}
