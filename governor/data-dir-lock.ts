/**
 * One governor per data directory: the chain has a single writer. Offline
 * readers (export) take the same lock, since opening the store may repair
 * its tail.
 *
 * Protocol, all names inside the data directory:
 *
 *   governor.lock                 "<pid>\n" of the holder. Never visible empty
 *                                 or partial: the content is written to a
 *                                 temp file and fsynced first, then the temp
 *                                 file is hard-linked to this name; link()
 *                                 fails with EEXIST while the lock is held.
 *   governor.lock.tmp-<pid>-<hex> that temp file, removed once linked.
 *   governor.lock.takeover/       mutex for replacing a stale lock, taken
 *                                 with an exclusive mkdir. Its holder checks
 *                                 again that the lock is stale, renames its
 *                                 temp file over the lock (atomic: the name
 *                                 never disappears), then removes the mutex.
 *                                 One older than 30 s was left by a process
 *                                 that died inside that step and is removed.
 *                                 (Two processes removing the same dead mutex
 *                                 in the same instant could both proceed; that
 *                                 needs a crash inside the few-millisecond step
 *                                 first.)
 *
 * A lock is stale when its pid is not running, or is this process's own pid
 * while this process does not hold the directory (a previous process whose
 * pid was reused). Empty or unparsable content (written by an older version
 * between create and write, or cut by a power failure) counts as held for
 * 10 s after the file's mtime, and as stale after that.
 *
 * Within one process the lock is keyed by the directory's device and inode,
 * so the same directory reached through a symlink or bind mount is refused.
 */
import type { BigIntStats } from "node:fs";
import { randomBytes } from "node:crypto";
import { link, mkdir, open, readdir, realpath, rename, rmdir, stat, unlink } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { CmcpError } from "../artifacts/errors.js";

const LOCK_FILE = "governor.lock";
const TEMP_PREFIX = `${LOCK_FILE}.tmp-`;
const TAKEOVER_DIR = `${LOCK_FILE}.takeover`;
/** An empty or unparsable lock younger than this may be mid-creation by an older version. */
const UNREADABLE_LOCK_GRACE_MS = 10_000;
/** A takeover takes milliseconds; a mutex this old belongs to a process that died in it. */
const STALE_TAKEOVER_MS = 30_000;
/** How long to wait for another process's takeover to finish. */
const TAKEOVER_WAIT_MS = 5_000;
/** Rounds of create / inspect before giving up on a lock that keeps changing hands. */
const MAX_ATTEMPTS = 20;
/** link() errors that mean the file system has no hard links. */
const LINK_UNSUPPORTED = new Set(["EPERM", "ENOTSUP", "EOPNOTSUPP", "ENOSYS"]);

/** Directories (device:inode) this process holds or is acquiring. */
const heldHere = new Set<string>();

type FileId = Pick<BigIntStats, "dev" | "ino">;

type LockState =
  { kind: "absent" } | { kind: "live"; pid: number | undefined } | { kind: "stale"; why: string };

function errCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : undefined;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return errCode(err) === "EPERM";
  }
}

function parsePid(text: string): number | undefined {
  const t = text.trim();
  if (!/^[1-9][0-9]{0,15}$/.test(t)) return undefined;
  const pid = Number(t);
  return Number.isSafeInteger(pid) ? pid : undefined;
}

function ageMs(mtimeMs: number): number {
  return Math.abs(Date.now() - mtimeMs);
}

async function dirKey(dir: string): Promise<string> {
  const st = await stat(dir, { bigint: true });
  return `${st.dev}:${st.ino}`;
}

function sameFile(a: FileId, b: FileId): boolean {
  return a.dev === b.dev && a.ino === b.ino;
}

function lockedError(label: string, pid: number | undefined): CmcpError {
  const by =
    pid === undefined ? "another governor (its lock file is still being written)" : `governor pid ${pid}`;
  return new CmcpError("chain.locked", `data directory ${label} is in use by ${by}`);
}

/**
 * Reads the lock. Callers have checked that this process does not hold the
 * directory, so a lock naming this process's pid is a leftover.
 */
async function inspect(path: string): Promise<LockState> {
  let text: string;
  let mtimeMs: number;
  try {
    const fh = await open(path, "r");
    try {
      mtimeMs = (await fh.stat()).mtimeMs;
      text = await fh.readFile("utf8");
    } finally {
      await fh.close();
    }
  } catch (err) {
    if (errCode(err) === "ENOENT") return { kind: "absent" };
    throw err;
  }
  const pid = parsePid(text);
  if (pid === undefined) {
    return ageMs(mtimeMs) < UNREADABLE_LOCK_GRACE_MS
      ? { kind: "live", pid: undefined }
      : { kind: "stale", why: "unreadable and old" };
  }
  if (pid === process.pid) return { kind: "stale", why: "pid reused" };
  return alive(pid) ? { kind: "live", pid } : { kind: "stale", why: `pid ${pid} is gone` };
}

/** Pid of the live governor holding `dataDir`, this process included; null when free or unknown. */
export async function lockHolder(dataDir: string): Promise<number | null> {
  let dir: string;
  let key: string;
  try {
    dir = await realpath(dataDir);
    key = await dirKey(dir);
  } catch {
    return null;
  }
  if (heldHere.has(key)) return process.pid;
  try {
    const state = await inspect(join(dir, LOCK_FILE));
    return state.kind === "live" && state.pid !== undefined ? state.pid : null;
  } catch {
    return null;
  }
}

/**
 * Takes the lock of `dataDir` or rejects with `chain.locked`. Resolves with
 * the release function; releasing twice is harmless, and a release never
 * removes a lock file it did not create.
 */
export async function acquireDataDirLock(dataDir: string): Promise<() => Promise<void>> {
  const dir = await realpath(dataDir);
  const key = await dirKey(dir);
  if (heldHere.has(key)) {
    throw new CmcpError("chain.locked", `data directory ${dataDir} is already open in this process`);
  }
  heldHere.add(key); // synchronously after the check: a concurrent call in this process is refused
  let id: FileId;
  try {
    id = await takeLock(dir, dataDir);
  } catch (err) {
    heldHere.delete(key);
    throw err;
  }
  await removeDeadTemps(dir);
  const path = join(dir, LOCK_FILE);
  let released: Promise<void> | undefined;
  return () => {
    released ??= (async () => {
      try {
        const now = await stat(path, { bigint: true }).catch(() => undefined);
        // Never remove a lock that is not this one (e.g. taken over after being judged stale).
        if (now !== undefined && sameFile(now, id)) await unlink(path).catch(() => undefined);
      } finally {
        heldHere.delete(key);
      }
    })();
    return released;
  };
}

async function takeLock(dir: string, label: string): Promise<FileId> {
  const path = join(dir, LOCK_FILE);
  const tmp = join(dir, `${TEMP_PREFIX}${process.pid}-${randomBytes(6).toString("hex")}`);
  const content = `${process.pid}\n`;
  const fh = await open(tmp, "wx", 0o600);
  try {
    try {
      await fh.writeFile(content);
      await fh.sync();
    } finally {
      await fh.close();
    }
    const id = await stat(tmp, { bigint: true });
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const created = await createExclusive(tmp, path, content, id);
      if (created !== undefined) return created;
      const state = await inspect(path);
      if (state.kind === "absent") continue; // released meanwhile: try again
      if (state.kind === "live") throw lockedError(label, state.pid);
      const won = await underTakeoverMutex(dir, path, label, async () => {
        // Only one process at a time gets here; the lock may have changed since it was read.
        const again = await inspect(path);
        if (again.kind === "live") throw lockedError(label, again.pid);
        if (again.kind === "absent") return false;
        await rename(tmp, path); // replaces the stale file in one step: the name never goes missing
        return true;
      });
      if (won) return id;
    }
    throw new CmcpError(
      "chain.locked",
      `could not lock data directory ${label}: its lock keeps changing hands`,
    );
  } finally {
    await unlink(tmp).catch(() => undefined);
  }
}

/** Links `tmp` to `path`; undefined when `path` exists. */
async function createExclusive(
  tmp: string,
  path: string,
  content: string,
  id: FileId,
): Promise<FileId | undefined> {
  try {
    await link(tmp, path);
    return id;
  } catch (err) {
    const code = errCode(err);
    if (code === "EEXIST") return undefined;
    if (code === undefined || !LINK_UNSUPPORTED.has(code)) throw err;
  }
  // No hard links here: create exclusively, then write. A reader may see the
  // file empty for a moment, which the grace period for unreadable locks covers.
  let fh;
  try {
    fh = await open(path, "wx", 0o600);
  } catch (err) {
    if (errCode(err) === "EEXIST") return undefined;
    throw err;
  }
  try {
    try {
      await fh.writeFile(content);
      await fh.sync();
      return await fh.stat({ bigint: true });
    } finally {
      await fh.close();
    }
  } catch (err) {
    await unlink(path).catch(() => undefined);
    throw err;
  }
}

/**
 * Runs `fn` holding the takeover mutex. Returns false without running it when
 * the lock disappears while waiting; rejects with `chain.locked` when it
 * becomes live or the mutex stays taken.
 */
async function underTakeoverMutex(
  dir: string,
  path: string,
  label: string,
  fn: () => Promise<boolean>,
): Promise<boolean> {
  const mutex = join(dir, TAKEOVER_DIR);
  const deadline = Date.now() + TAKEOVER_WAIT_MS;
  for (;;) {
    try {
      await mkdir(mutex, { mode: 0o700 });
      break;
    } catch (err) {
      if (errCode(err) !== "EEXIST") throw err;
    }
    const state = await inspect(path);
    if (state.kind === "live") throw lockedError(label, state.pid);
    if (state.kind === "absent") return false;
    const m = await stat(mutex).catch(() => undefined);
    if (m !== undefined && ageMs(m.mtimeMs) > STALE_TAKEOVER_MS) {
      await rmdir(mutex).catch(() => undefined); // left by a process that died mid-takeover
      continue;
    }
    if (Date.now() > deadline) {
      throw new CmcpError(
        "chain.locked",
        `data directory ${label}: another process is replacing its stale lock (${mutex} exists)`,
      );
    }
    await sleep(5 + Math.random() * 20);
  }
  try {
    return await fn();
  } finally {
    await rmdir(mutex).catch(() => undefined);
  }
}

/** Best effort: removes temp files of processes that died while acquiring. */
async function removeDeadTemps(dir: string): Promise<void> {
  try {
    for (const name of await readdir(dir)) {
      if (!name.startsWith(TEMP_PREFIX)) continue;
      const pid = parsePid(name.slice(TEMP_PREFIX.length).split("-")[0] ?? "");
      if (pid !== undefined && pid !== process.pid && !alive(pid)) {
        await unlink(join(dir, name)).catch(() => undefined);
      }
    }
  } catch {
    // Leftovers are harmless.
  }
}
