// The two processes under crash and attack, with real processes and real
// peers: a runtime killed mid-call is restarted and recorded; a governor killed
// takes the runtime down (fail closed); the runtime holds no key material in
// its environment, argv, files or memory; a runtime that forges a frame is
// killed and recorded.
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { chmod, lstat, mkdtemp, open, readFile, readdir, readlink, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterEach, describe, expect, it } from "vitest";
import type { Client } from "@modelcontextprotocol/sdk/client/index.js";
import type { Receipt } from "../../artifacts/receipt.js";
import { verifyBundleFile } from "../../artifacts/verifier/verify-bundle.js";
import type { UpstreamSpec } from "../../governor/boundary.js";
import { exportBundle } from "../../governor/export-bundle.js";
import {
  bin,
  connectClient,
  startTestGateway,
  writeSealedPolicy,
  type TestGateway,
} from "../helpers/gateway.js";

const CLI = fileURLToPath(new URL("../../cli/cmcp.ts", import.meta.url));
const FORGER = fileURLToPath(new URL("./fixtures/forging-runtime.ts", import.meta.url));
const TSX = import.meta.resolve("tsx");
const LONG = "trigger-long-running-operation";

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
});

function everythingOnly(env?: Record<string, string>): UpstreamSpec[] {
  return [
    {
      name: "everything",
      transport: "stdio",
      command: process.execPath,
      args: [bin("server-everything"), "stdio"],
      ...(env ? { env } : {}),
    },
  ];
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Polls until `cond` holds; a bounded number of tries, never an assertion about time. */
async function waitFor(
  cond: () => boolean | Promise<boolean>,
  what: string,
  tries = 300,
  everyMs = 100,
): Promise<void> {
  for (let i = 0; i < tries; i++) {
    if (await cond()) return;
    await sleep(everyMs);
  }
  throw new Error(`gave up waiting for ${what}`);
}

function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing after ${ms} ms`)), ms);
  });
  return Promise.race([p, limit]).finally(() => clearTimeout(timer));
}

const alive = (pid: number) => existsSync(`/proc/${pid}`) && !isZombie(pid);
function isZombie(pid: number): boolean {
  try {
    // /proc/PID/stat: "pid (comm) S ..." — the state follows the last ')'.
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) === "Z";
  } catch {
    return false;
  }
}

/** Every live descendant of `pid`, from /proc (children before their parents are gone). */
async function descendants(pid: number): Promise<number[]> {
  const parents = new Map<number, number>();
  for (const name of await readdir("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = await readFile(`/proc/${name}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      parents.set(Number(name), ppid);
    } catch {
      // gone meanwhile
    }
  }
  const out: number[] = [];
  const walk = (p: number) => {
    for (const [child, parent] of parents) {
      if (parent === p) {
        out.push(child);
        walk(child);
      }
    }
  };
  walk(pid);
  return out;
}

function killQuietly(pid: number): void {
  try {
    process.kill(pid, "SIGKILL");
  } catch {
    // already gone
  }
}

async function exportReceipts(tg: { dir: string; dataDir: string; signer: { keyId: string } }) {
  const out = join(tg.dir, `bundle-${Date.now()}.json`);
  await exportBundle(tg.dataDir, out);
  const report = await verifyBundleFile(out, { trustedKeys: [tg.signer.keyId], workers: 0 });
  const bundle = JSON.parse(await readFile(out, "utf8")) as { receipts: Receipt[] };
  return { report, receipts: bundle.receipts };
}

const text = (r: unknown) => ((r as { content?: { type: string; text?: string }[] }).content ?? [])[0]?.text;

async function echo(client: Client, message: string): Promise<string | undefined> {
  // Bounded: a call into a dead gateway must fail, not wait out the SDK's 60 s default.
  return text(
    await client.callTool({ name: "echo", arguments: { message } }, undefined, { timeout: 15_000 }),
  );
}

describe("runtime crash", () => {
  it("a runtime SIGKILLed mid-call fails that call, is restarted and recorded; evidence still verifies", async () => {
    // Port 0: the restarted runtime re-binds the port its predecessor got, so the URL stays valid.
    const tg = await startTestGateway(
      { upstreams: everythingOnly() },
      { backoff: { initialMs: 100, maxMs: 1000, resetAfterMs: 60_000 } },
    );
    cleanups.push(() => tg.cleanup());
    const c1 = await connectClient(tg.url);
    c1.onerror = () => undefined;
    cleanups.push(() => c1.close());
    expect(await echo(c1, "before the crash")).toBe("Echo: before the crash");

    let sawProgress!: () => void;
    const progressed = new Promise<void>((r) => (sawProgress = r));
    // Had the runtime survived, this call would complete after 5 s, well inside its 12 s deadline.
    const long = c1
      .callTool({ name: LONG, arguments: { duration: 5, steps: 5 } }, undefined, {
        onprogress: () => sawProgress(),
        timeout: 12_000,
      })
      .then(
        (value) => ({ value }),
        (error: unknown) => ({ error }),
      );
    await within(progressed, 30_000, "first progress of the long call");
    const pid = tg.gateway.runtimePid!;
    expect(pid).toBeGreaterThan(0);
    process.kill(pid, "SIGKILL");

    await waitFor(() => {
      const now = tg.gateway.runtimePid;
      return now !== undefined && now !== pid;
    }, "a restarted runtime");
    const url = await within(tg.gateway.endpoint(), 30_000, "the restarted runtime's endpoint");
    expect(url).toBe(tg.url);
    expect(tg.gateway.status().runtime.restarts).toBeGreaterThanOrEqual(1);

    const c2 = await connectClient(url);
    c2.onerror = () => undefined;
    expect(await echo(c2, "after the restart")).toBe("Echo: after the restart");
    expect(await echo(c2, "and again")).toBe("Echo: and again");

    const outcome = await long;
    expect(outcome).toHaveProperty("error");
    expect(outcome).not.toHaveProperty("value");
    expect(alive(pid)).toBe(false);
    expect(tg.logs.some((l) => l.includes(`runtime pid ${pid} exited`) && l.includes("SIGKILL"))).toBe(true);

    await c2.close();
    await c1.close().catch(() => undefined);
    await tg.stop();
    const { report, receipts } = await exportReceipts(tg);
    expect(report.summary).toBeTypeOf("string");
    expect(report.ok).toBe(true);
    expect(report.anchored).toBe(true);

    const restarted = receipts.filter(
      (r) => r.type === "enforcement" && r.data?.["action"] === "runtime_restarted",
    );
    expect(restarted).toHaveLength(1);
    expect(restarted[0]!.data).toMatchObject({ pid, signal: "SIGKILL", code: null });
    const decisions = receipts.filter((r) => r.type === "decision" && r.subject.method === "tools/call");
    const echoes = decisions.filter((r) => r.subject.tool === "echo");
    // The one call before the crash (first session) and the two after (second session).
    expect(echoes).toHaveLength(3);
    expect(new Set(echoes.map((r) => r.subject.session)).size).toBe(2);
    expect(decisions.filter((r) => r.subject.tool === LONG)).toHaveLength(1);
    // Every successful call's result was inspected (and recorded) before the agent saw it.
    const inspected = receipts.filter(
      (r) => r.type === "response_inspection" && r.subject.method === "tools/call",
    );
    for (const d of echoes) {
      expect(
        inspected.some(
          (r) => r.subject.session === d.subject.session && r.subject.request_id === d.subject.request_id,
        ),
      ).toBe(true);
    }
    // The restart receipt sits between the sessions' decisions in the chain.
    const seqOf = (r: Receipt) => r.seq;
    const firstSession = echoes[0]!.subject.session;
    const before = echoes.filter((r) => r.subject.session === firstSession).map(seqOf);
    const after = echoes.filter((r) => r.subject.session !== firstSession).map(seqOf);
    expect(Math.max(...before)).toBeLessThan(restarted[0]!.seq);
    expect(Math.min(...after)).toBeGreaterThan(restarted[0]!.seq);
  });
});

describe("governor crash", () => {
  it("a SIGKILLed governor takes the runtime down: every later call fails, nothing is served undecided", async () => {
    const dir = await mkdtemp(join(tmpdir(), "cmcp-govkill-"));
    await chmod(dir, 0o711);
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const configPath = join(dir, "cmcp.json");
    const { policy, artifact } = await writeSealedPolicy(dir);
    await writeFile(
      configPath,
      JSON.stringify({
        policy,
        artifact,
        listen: "127.0.0.1:0",
        data_dir: join(dir, "data"),
        mode: "enforcing",
        drain_timeout_seconds: 1,
        upstreams: [
          {
            name: "everything",
            transport: "stdio",
            command: process.execPath,
            args: [bin("server-everything"), "stdio"],
          },
        ],
      }),
    );
    const gov: ChildProcess = spawn(
      process.execPath,
      ["--import", "tsx", CLI, "start", "--config", configPath],
      {
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    let stderr = "";
    gov.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
    gov.stdout!.resume();
    const govExited = new Promise<NodeJS.Signals | number | null>((resolve) =>
      gov.once("exit", (code, signal) => resolve(signal ?? code)),
    );
    let tree: number[] = [];
    cleanups.push(async () => {
      killQuietly(gov.pid!);
      for (const p of tree) killQuietly(p);
    });

    await waitFor(
      () => /MCP endpoint \(Streamable HTTP\): \S+/.test(stderr) && /cmcp runtime\[\d+\]/.test(stderr),
      `the endpoint line (stderr so far: ${stderr.slice(-2000)})`,
      600,
    );
    const url = /MCP endpoint \(Streamable HTTP\): (\S+)/.exec(stderr)![1]!;
    const runtimePid = Number(/cmcp runtime\[(\d+)\]/.exec(stderr)![1]);
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/mcp$/);
    expect(alive(runtimePid)).toBe(true);

    const client = await connectClient(url);
    client.onerror = () => undefined;
    cleanups.push(() => client.close());
    expect(await echo(client, "governor alive")).toBe("Echo: governor alive");
    tree = await descendants(gov.pid!);
    expect(tree).toContain(runtimePid);

    gov.kill("SIGKILL");
    expect(await within(govExited, 30_000, "governor exit")).toBe("SIGKILL");

    // Calls on the open session and brand-new sessions alike fail; none is answered with a result.
    for (let i = 0; i < 5; i++) {
      await expect(echo(client, `governor dead ${i}`)).rejects.toThrow();
      const res = await fetch(url, {
        method: "POST",
        headers: { "content-type": "application/json", accept: "application/json, text/event-stream" },
        body: JSON.stringify({
          jsonrpc: "2.0",
          id: 1,
          method: "initialize",
          params: {
            protocolVersion: "2025-06-18",
            capabilities: {},
            clientInfo: { name: "x", version: "1" },
          },
        }),
        signal: AbortSignal.timeout(10_000),
      }).then(
        async (r) => ({ status: r.status, body: await r.text() }),
        (err: unknown) => ({ error: String(err) }),
      );
      // Either nothing listens any more, or whatever answers does not hand out a working session.
      if ("status" in res) expect(res.body).not.toMatch(/"result"\s*:\s*\{[^}]*"serverInfo"/);
      await sleep(100);
    }
    await waitFor(() => !alive(runtimePid), `runtime pid ${runtimePid} to exit`);
    // Upstream children of the runtime do not outlive it either.
    await waitFor(() => tree.every((p) => !alive(p)), `the runtime's children (${tree.join(", ")}) to exit`);
    expect(stderr).toMatch(/governor gone/);
  }, 180_000);
});

/** The encodings a leaked seed would take in memory or files: raw, hex, base64, base64url. */
function seedPatterns(seed: Uint8Array): { name: string; bytes: Buffer }[] {
  const raw = Buffer.from(seed);
  const hex = raw.toString("hex");
  const b64 = raw.toString("base64").replace(/=+$/, "");
  const b64url = raw.toString("base64url");
  const texts: [string, string][] = [
    ["hex", hex],
    ["HEX", hex.toUpperCase()],
    ["base64", b64],
    ["base64url", b64url],
  ];
  return [
    { name: "raw", bytes: raw },
    ...texts.flatMap(([name, t]) => [
      { name: `${name} (latin1)`, bytes: Buffer.from(t, "latin1") },
      { name: `${name} (utf16le)`, bytes: Buffer.from(t, "utf16le") },
    ]),
  ];
}

function textPatterns(name: string, t: string): { name: string; bytes: Buffer }[] {
  return [
    { name: `${name} (latin1)`, bytes: Buffer.from(t, "latin1") },
    { name: `${name} (utf16le)`, bytes: Buffer.from(t, "utf16le") },
  ];
}

function findAll(buf: Buffer, patterns: { name: string; bytes: Buffer }[], found: Set<string>): void {
  for (const p of patterns) if (!found.has(p.name) && buf.indexOf(p.bytes) >= 0) found.add(p.name);
}

const CHUNK = 8 * 1024 * 1024;
const REGION_CAP = 1024 * 1024 * 1024;

/** Scans every readable mapping of `pid` through /proc/PID/mem (as root); unreadable parts are skipped. */
async function scanMemory(pid: number, patterns: { name: string; bytes: Buffer }[]) {
  const found = new Set<string>();
  const overlap = Math.max(...patterns.map((p) => p.bytes.length)) - 1;
  const maps = (await readFile(`/proc/${pid}/maps`, "utf8")).trim().split("\n");
  const mem = await open(`/proc/${pid}/mem`, "r");
  let scanned = 0;
  let anonymous = 0;
  let regions = 0;
  try {
    for (const line of maps) {
      const [range, perms, , , , ...rest] = line.split(/\s+/);
      const path = rest.join(" ");
      if (!range || !perms?.startsWith("r")) continue;
      if (path === "[vvar]" || path === "[vsyscall]" || path === "[vvar_vclock]") continue;
      const [lo, hi] = range.split("-").map((h) => parseInt(h, 16)) as [number, number];
      if (!Number.isSafeInteger(hi)) continue;
      regions++;
      const end = Math.min(hi, lo + REGION_CAP);
      let tail = Buffer.alloc(0);
      for (let at = lo; at < end; at += CHUNK) {
        const len = Math.min(CHUNK, end - at);
        const buf = Buffer.alloc(len);
        let n = 0;
        try {
          ({ bytesRead: n } = await mem.read(buf, 0, len, at));
        } catch {
          tail = Buffer.alloc(0);
          continue; // an unreadable page range (guard pages, device mappings)
        }
        const view = Buffer.concat([tail, buf.subarray(0, n)]);
        findAll(view, patterns, found);
        tail = view.subarray(Math.max(0, view.length - overlap));
        scanned += n;
        if (path === "" || path.startsWith("[heap]") || path.startsWith("[anon")) anonymous += n;
      }
    }
  } finally {
    await mem.close();
  }
  return { found, scanned, anonymous, regions };
}

/** The runtime's environment, argv and the regular files it holds open. */
async function scanProcFiles(pid: number, patterns: { name: string; bytes: Buffer }[]) {
  const found = new Set<string>();
  const environ = await readFile(`/proc/${pid}/environ`);
  const cmdline = await readFile(`/proc/${pid}/cmdline`);
  findAll(environ, patterns, found);
  findAll(cmdline, patterns, found);
  const files: string[] = [];
  for (const fd of await readdir(`/proc/${pid}/fd`)) {
    let target: string;
    try {
      target = await readlink(`/proc/${pid}/fd/${fd}`);
    } catch {
      continue;
    }
    if (!target.startsWith("/") || target.startsWith("/dev/") || target.startsWith("/proc/")) continue;
    try {
      const st = await lstat(target.replace(/ \(deleted\)$/, ""));
      if (!st.isFile()) continue;
    } catch {
      // a deleted file: still readable through the fd link
    }
    let content: Buffer;
    try {
      const h = await open(`/proc/${pid}/fd/${fd}`, "r");
      try {
        const buf = Buffer.alloc(64 * 1024 * 1024);
        const { bytesRead } = await h.read(buf, 0, buf.length, 0);
        content = buf.subarray(0, bytesRead);
      } finally {
        await h.close();
      }
    } catch {
      continue;
    }
    files.push(target);
    findAll(content, patterns, found);
  }
  return { found, environ: environ.toString("latin1"), cmdline: cmdline.toString("latin1"), files };
}

describe("the runtime holds no key", () => {
  it("the governor's seed is nowhere in the runtime's environment, argv, open files or memory", async () => {
    const marker = `cmcp-scan-marker-${Math.random().toString(36).slice(2)}${Date.now().toString(36)}`;
    const tg: TestGateway = await startTestGateway({
      upstreams: everythingOnly({ CMCP_SCAN_MARKER: marker }),
    });
    cleanups.push(() => tg.cleanup());
    const client = await connectClient(tg.url);
    cleanups.push(() => client.close());
    const argMarker = `${marker}-in-a-call`;
    for (let i = 0; i < 3; i++)
      expect(await echo(client, `${argMarker} ${i}`)).toBe(`Echo: ${argMarker} ${i}`);
    await client.listTools();

    const pid = tg.gateway.runtimePid!;
    expect(pid).toBeGreaterThan(0);
    const seed = seedPatterns(tg.seed);
    const controls = [...textPatterns("config marker", marker), ...textPatterns("call marker", argMarker)];

    const proc = await scanProcFiles(pid, [...seed, ...controls]);
    expect([...proc.found].filter((n) => !n.includes("marker"))).toEqual([]);
    // The runtime's own environment is scrubbed: the upstream's env reaches only the upstream.
    expect(proc.environ).not.toContain(marker);
    expect(proc.environ).not.toMatch(/SEED|PRIVATE|SECRET|KEY=/i);
    expect(proc.cmdline).toContain("runtime-main");

    const mem = await scanMemory(pid, [...seed, ...controls]);
    console.log(
      `runtime ${pid}: scanned ${mem.regions} readable regions, ${(mem.scanned / 2 ** 20).toFixed(1)} MiB ` +
        `(${(mem.anonymous / 2 ** 20).toFixed(1)} MiB anonymous/heap); open files: ${proc.files.join(", ") || "none"}`,
    );
    // Control: the scan does read the runtime's heap — it finds strings known to be there.
    expect(mem.anonymous).toBeGreaterThan(1024 * 1024);
    expect([...mem.found].some((n) => n.startsWith("config marker"))).toBe(true);
    expect([...mem.found].some((n) => n.startsWith("call marker"))).toBe(true);
    // And the seed is there in no encoding.
    expect([...mem.found].filter((n) => !n.includes("marker"))).toEqual([]);

    // The same scan of this (governor) process does find the seed: the patterns are right.
    const self = await scanMemory(process.pid, seed);
    expect(self.found.size).toBeGreaterThan(0);
  });
});

describe("a forging runtime", () => {
  it("is killed on its first out-of-table frame, the violation recorded, and it is restarted", async () => {
    const tg = await startTestGateway(
      { upstreams: everythingOnly(), drain_timeout_seconds: 1 },
      {
        runtimeCommand: ["--import", TSX, FORGER, "unknown-type"],
        backoff: { initialMs: 200, maxMs: 2000, resetAfterMs: 60_000 },
      },
    );
    const pids = new Set<number>();
    cleanups.push(async () => {
      await tg.cleanup();
      for (const p of pids) killQuietly(p);
    });
    const forgers = () =>
      tg.logs.flatMap((l) => {
        const m = /forger pid (\d+); unopened decide: (\S+);/.exec(l);
        return m ? [{ pid: Number(m[1]), unopened: m[2]! }] : [];
      });
    await waitFor(() => forgers().length >= 1, `the forger's report (logs: ${tg.logs.join(" | ")})`);
    const first = forgers()[0]!;
    pids.add(first.pid);
    // A decide for a session nobody opened is refused (answered, not a violation).
    expect(first.unopened).toBe("governor.unknown-session");

    await waitFor(
      () =>
        tg.logs.some((l) =>
          l.startsWith(`runtime pid ${first.pid} broke the boundary (boundary.unknown-type)`),
        ),
      `the violation log (logs: ${tg.logs.join(" | ")})`,
    );
    await waitFor(() => !alive(first.pid), `forger ${first.pid} to be killed`);
    expect(
      tg.logs.some((l) => l.includes(`runtime pid ${first.pid} exited (code null, signal SIGKILL)`)),
    ).toBe(true);

    // Supervision restarts it (and the substitute forges again, and is killed again).
    await waitFor(() => forgers().some((f) => f.pid !== first.pid), "a restarted runtime");
    for (const f of forgers()) pids.add(f.pid);
    await tg.stop();

    const { report, receipts } = await exportReceipts(tg);
    expect(report.ok).toBe(true);
    const terminated = receipts.filter(
      (r) => r.type === "enforcement" && r.data?.["action"] === "runtime_terminated",
    );
    const mine = terminated.find((r) => r.data?.["pid"] === first.pid);
    expect(mine?.data).toMatchObject({
      action: "runtime_terminated",
      code: "boundary.unknown-type",
      pid: first.pid,
    });
    expect(String(mine?.data?.["reason"])).toContain("sign_receipt");
    const restarted = receipts.filter(
      (r) =>
        r.type === "enforcement" &&
        r.data?.["action"] === "runtime_restarted" &&
        r.data?.["pid"] === first.pid,
    );
    expect(restarted).toHaveLength(1);
    expect(restarted[0]!.data).toMatchObject({ signal: "SIGKILL" });
    // The termination is recorded before the restart.
    expect(mine!.seq).toBeLessThan(restarted[0]!.seq);
    // The forged decide left no decision receipt.
    expect(receipts.filter((r) => r.type === "decision")).toEqual([]);
    for (const p of pids) expect(alive(p)).toBe(false);
  });

  it("a reply-kind frame from the runtime is a violation too", async () => {
    const tg = await startTestGateway(
      { upstreams: everythingOnly(), drain_timeout_seconds: 1 },
      {
        runtimeCommand: ["--import", TSX, FORGER, "reply-kind"],
        backoff: { initialMs: 60_000, maxMs: 60_000, resetAfterMs: 60_000 },
      },
    );
    cleanups.push(() => tg.cleanup());
    await waitFor(
      () => tg.logs.some((l) => /runtime pid \d+ broke the boundary \(boundary\.direction\)/.test(l)),
      `the violation log (logs: ${tg.logs.join(" | ")})`,
    );
    const pid = Number(
      /runtime pid (\d+) broke/.exec(tg.logs.find((l) => l.includes("broke the boundary"))!)![1],
    );
    await waitFor(() => !alive(pid), `forger ${pid} to be killed`);
    await tg.stop();
    const { receipts } = await exportReceipts(tg);
    expect(
      receipts.some(
        (r) =>
          r.type === "enforcement" &&
          r.data?.["action"] === "runtime_terminated" &&
          r.data?.["code"] === "boundary.direction" &&
          r.data?.["pid"] === pid,
      ),
    ).toBe(true);
  });
});
