import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { mkdir, mkdtemp, readFile, readdir, rename, rm, symlink, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { isCmcpError } from "../../artifacts/errors.js";
import { acquireDataDirLock, lockHolder } from "../../governor/data-dir-lock.js";

const here = dirname(fileURLToPath(import.meta.url));
const REPO_ROOT = resolve(here, "..", "..");
const LOCK_MODULE = join(REPO_ROOT, "governor", "data-dir-lock.ts");

let root: string;
let data: string;
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), "cmcp-lock-"));
  data = join(root, "data");
  await mkdir(data);
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

const lockPath = (d: string): string => join(d, "governor.lock");

async function expectLocked(p: Promise<unknown>): Promise<Error> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(isCmcpError(err, "chain.locked"), `expected chain.locked, got ${String(err)}`).toBe(true);
  return err as Error;
}

/** Pid of a process that has exited. */
async function deadPid(): Promise<number> {
  const child = spawn(process.execPath, ["-e", ""], { stdio: "ignore" });
  await new Promise((r) => child.on("exit", r));
  expect(child.pid).toBeTypeOf("number");
  return child.pid!;
}

async function age(path: string, seconds: number): Promise<void> {
  const t = new Date(Date.now() - seconds * 1000);
  await utimes(path, t, t);
}

describe("data directory lock in one process", () => {
  it("writes the pid, refuses a second holder and releases once", async () => {
    const release = await acquireDataDirLock(data);
    expect(await readFile(lockPath(data), "utf8")).toBe(`${process.pid}\n`);
    expect(await readdir(data)).toEqual(["governor.lock"]); // no temp file or mutex left behind
    expect(await lockHolder(data)).toBe(process.pid);
    await expectLocked(acquireDataDirLock(data));

    await release();
    await release();
    expect(await readdir(data)).toEqual([]);
    expect(await lockHolder(data)).toBeNull();
    const again = await acquireDataDirLock(data);
    await again();
  });

  it("refuses the same directory reached through a symlink", async () => {
    const alias = join(root, "alias");
    await symlink(data, alias);
    const release = await acquireDataDirLock(data);
    const err = await expectLocked(acquireDataDirLock(alias));
    expect(err.message).toContain("already open in this process");
    expect(await lockHolder(alias)).toBe(process.pid);
    await release();

    const viaAlias = await acquireDataDirLock(alias);
    await expectLocked(acquireDataDirLock(data));
    await viaAlias();
  });

  it("lets exactly one of concurrent calls win", async () => {
    const results = await Promise.allSettled(Array.from({ length: 8 }, () => acquireDataDirLock(data)));
    const won = results.filter((r) => r.status === "fulfilled");
    expect(won).toHaveLength(1);
    for (const r of results)
      if (r.status === "rejected") expect(isCmcpError(r.reason, "chain.locked")).toBe(true);
    await (won[0] as PromiseFulfilledResult<() => Promise<void>>).value();
  });

  it("refuses a lock held by a live process", async () => {
    await writeFile(lockPath(data), `${process.ppid}\n`);
    const err = await expectLocked(acquireDataDirLock(data));
    expect(err.message).toContain(`pid ${process.ppid}`);
    expect(await lockHolder(data)).toBe(process.ppid);
    expect(await readFile(lockPath(data), "utf8")).toBe(`${process.ppid}\n`);
  });

  it("does not steal an empty or unparsable lock while it may still be being written", async () => {
    for (const content of ["", "12ab\n"]) {
      await writeFile(lockPath(data), content);
      await expectLocked(acquireDataDirLock(data));
      expect(await readFile(lockPath(data), "utf8")).toBe(content);
      expect(await lockHolder(data)).toBeNull();

      await age(lockPath(data), 20); // past the grace period: left by a crash
      const release = await acquireDataDirLock(data);
      expect(await readFile(lockPath(data), "utf8")).toBe(`${process.pid}\n`);
      await release();
    }
  });

  it("takes over a lock whose process is gone, or whose pid is this process's without it holding the lock", async () => {
    for (const pid of [await deadPid(), process.pid]) {
      await writeFile(lockPath(data), `${pid}\n`);
      expect(await lockHolder(data)).toBeNull();
      const release = await acquireDataDirLock(data);
      expect(await readFile(lockPath(data), "utf8")).toBe(`${process.pid}\n`);
      expect(await readdir(data)).toEqual(["governor.lock"]);
      await release();
      expect(await readdir(data)).toEqual([]);
    }
  });

  it("removes a takeover mutex left by a process that died in it", async () => {
    await writeFile(lockPath(data), `${await deadPid()}\n`);
    const mutex = join(data, "governor.lock.takeover");
    await mkdir(mutex);
    await age(mutex, 60);
    const release = await acquireDataDirLock(data);
    expect(await readdir(data)).toEqual(["governor.lock"]);
    await release();
  });

  it("waits for a takeover in progress and then re-checks the lock", async () => {
    const stale = `${await deadPid()}\n`;
    const mutex = join(data, "governor.lock.takeover");

    // The other process finishes its takeover: the lock is live, so this one gives up.
    await writeFile(lockPath(data), stale);
    await mkdir(mutex);
    const loser = acquireDataDirLock(data);
    await new Promise((r) => setTimeout(r, 100));
    const tmp = join(data, "other");
    await writeFile(tmp, `${process.ppid}\n`);
    await rename(tmp, lockPath(data));
    await rm(mutex, { recursive: true });
    await expectLocked(loser);

    // The other process vanishes without replacing the lock: this one takes it.
    await writeFile(lockPath(data), stale);
    await mkdir(mutex);
    const winner = acquireDataDirLock(data);
    await new Promise((r) => setTimeout(r, 100));
    await rm(mutex, { recursive: true });
    const release = await winner;
    expect(await readFile(lockPath(data), "utf8")).toBe(`${process.pid}\n`);
    await release();
  });

  it("does not remove a lock it no longer owns on release", async () => {
    const release = await acquireDataDirLock(data);
    const tmp = join(data, "other");
    await writeFile(tmp, `${process.ppid}\n`);
    await rename(tmp, lockPath(data));
    await release();
    expect(await readFile(lockPath(data), "utf8")).toBe(`${process.ppid}\n`);
  });

  it("fails on a missing directory", async () => {
    const err = await acquireDataDirLock(join(root, "missing")).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect((err as { code?: unknown }).code).toBe("ENOENT");
    expect(await lockHolder(join(root, "missing"))).toBeNull();
  });
});

// ---------------------------------------------------------------------------
// Races between processes

const CONTENDERS = 6;
const ROUNDS = 50;
const SPACING_MS = 25;

/**
 * Child: prints "ready", reads the start time from stdin, then at start +
 * i * SPACING_MS tries to lock <base>/d<i> and keeps what it gets. Prints
 * {won, errors} as JSON and stays alive (so its locks stay live) until its
 * stdin closes.
 */
const CHILD = `
import { createInterface } from "node:readline";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
const [modulePath, base, rounds, spacing] = process.argv.slice(1);
const { acquireDataDirLock } = await import(pathToFileURL(modulePath).href);
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
process.stdout.write("ready\\n");
const start = Number((await lines.next()).value);
const won = [];
const errors = [];
for (let i = 0; i < Number(rounds); i++) {
  const at = start + i * Number(spacing);
  while (Date.now() < at) {} // spin, so the contenders start each round together
  try {
    await acquireDataDirLock(join(base, "d" + i));
    won.push(i);
  } catch (e) {
    if (e?.code !== "chain.locked") errors.push(i + ": " + String(e?.stack ?? e));
  }
}
process.stdout.write(JSON.stringify({ won, errors }) + "\\n");
while (!(await lines.next()).done) {}
process.exit(0);
`;

interface Contender {
  child: ChildProcess;
  lines: AsyncIterator<string>;
}

function startContender(base: string): Contender {
  const child = spawn(
    process.execPath,
    [
      "--import",
      "tsx",
      "--input-type=module",
      "-e",
      CHILD,
      LOCK_MODULE,
      base,
      String(ROUNDS),
      String(SPACING_MS),
    ],
    { cwd: REPO_ROOT, stdio: ["pipe", "pipe", "inherit"] },
  );
  const queue: string[] = [];
  const waiting: Array<(line: string) => void> = [];
  let pending = "";
  child.stdout!.setEncoding("utf8").on("data", (chunk: string) => {
    pending += chunk;
    const parts = pending.split("\n");
    pending = parts.pop() ?? "";
    for (const line of parts) {
      const w = waiting.shift();
      if (w !== undefined) w(line);
      else queue.push(line);
    }
  });
  const exited = new Promise<string>((r) => child.on("exit", (code) => r(`child exited (${String(code)})`)));
  const lines: AsyncIterator<string> = {
    next: () =>
      queue.length > 0
        ? Promise.resolve({ value: queue.shift()!, done: false })
        : Promise.race([
            new Promise<string>((r) => waiting.push(r)),
            exited.then((msg) => Promise.reject(new Error(msg))),
          ]).then((value) => ({ value, done: false })),
  };
  return { child, lines };
}

describe("data directory lock across processes", () => {
  let contenders: Contender[] = [];
  afterEach(() => {
    for (const c of contenders) c.child.kill("SIGKILL");
    contenders = [];
  });

  it.each([
    ["no lock", false],
    ["a stale lock", true],
  ] as const)(
    `lets exactly one of ${CONTENDERS} processes win each of ${ROUNDS} rounds, starting from %s`,
    async (_name, stale) => {
      const base = join(root, "race");
      const dead = `${await deadPid()}\n`;
      for (let i = 0; i < ROUNDS; i++) {
        await mkdir(join(base, `d${i}`), { recursive: true });
        if (stale) await writeFile(lockPath(join(base, `d${i}`)), dead);
      }
      contenders = Array.from({ length: CONTENDERS }, () => startContender(base));
      for (const c of contenders) expect((await c.lines.next()).value).toBe("ready");
      const start = Date.now() + 300;
      for (const c of contenders) c.child.stdin!.write(`${start}\n`);

      const results: Array<{ won: number[]; errors: string[] }> = [];
      for (const c of contenders) results.push(JSON.parse((await c.lines.next()).value as string));
      const pids = contenders.map((c) => c.child.pid!);
      // Every contender is still alive here, so every lock taken is still live.
      for (const c of contenders) c.child.stdin!.end();

      expect(results.flatMap((r) => r.errors)).toEqual([]);
      for (let i = 0; i < ROUNDS; i++) {
        const winners = results.flatMap((r, k) => (r.won.includes(i) ? [pids[k]] : []));
        expect(winners, `round ${i}`).toHaveLength(1);
        expect(await readFile(lockPath(join(base, `d${i}`)), "utf8"), `round ${i}`).toBe(`${winners[0]}\n`);
        // No temp file or takeover mutex is left behind.
        expect(await readdir(join(base, `d${i}`)), `round ${i}`).toEqual(["governor.lock"]);
      }
    },
    60_000,
  );
});
