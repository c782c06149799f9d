/**
 * One governor per data directory: the chain has a single writer. The lock
 * is a pid file created exclusively; a stale one (its process gone) is
 * replaced. Offline readers (export) refuse to run while a live governor
 * holds it, since the store's tail may be mid-write.
 */
import { open, readFile, unlink } from "node:fs/promises";
import { join, resolve } from "node:path";
import { CmcpError } from "../artifacts/errors.js";

const LOCK_FILE = "governor.lock";
/** Directories this process holds: a pid file cannot tell two holders in one process apart. */
const heldHere = new Set<string>();

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

export async function lockHolder(dataDir: string): Promise<number | null> {
  if (heldHere.has(resolve(dataDir))) return process.pid;
  try {
    const pid = Number((await readFile(join(dataDir, LOCK_FILE), "utf8")).trim());
    return Number.isSafeInteger(pid) && pid > 0 && pid !== process.pid && alive(pid) ? pid : null;
  } catch {
    return null;
  }
}

export async function acquireDataDirLock(dataDir: string): Promise<() => Promise<void>> {
  const key = resolve(dataDir);
  if (heldHere.has(key))
    throw new CmcpError("chain.locked", `data directory ${dataDir} is already open in this process`);
  const path = join(dataDir, LOCK_FILE);
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fh = await open(path, "wx", 0o600);
      await fh.writeFile(`${process.pid}\n`);
      await fh.sync();
      await fh.close();
      heldHere.add(key);
      return async () => {
        heldHere.delete(key);
        await unlink(path).catch(() => undefined);
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      const holder = await lockHolder(dataDir);
      if (holder !== null) {
        throw new CmcpError("chain.locked", `data directory ${dataDir} is in use by governor pid ${holder}`);
      }
      await unlink(path).catch(() => undefined); // stale lock from a crashed governor
    }
  }
  throw new CmcpError("chain.locked", `could not lock data directory ${dataDir}`);
}
