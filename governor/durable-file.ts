/**
 * Crash-safe whole-file replacement. A reader after a crash sees either the
 * old file or the complete new one, never a prefix: the bytes are made durable
 * in a temporary file first, then renamed over the target, and the directory
 * is synced so the rename itself survives power loss.
 */
import { randomBytes } from "node:crypto";
import { open, rename, unlink } from "node:fs/promises";
import { basename, dirname, join } from "node:path";

/** Temp files carry this marker so a store can recognise and remove leftovers. */
export const TEMP_MARKER = ".tmp-";

export async function writeFileDurable(path: string, bytes: Uint8Array): Promise<void> {
  const dir = dirname(path);
  const tmp = join(dir, `${basename(path)}${TEMP_MARKER}${process.pid}-${randomBytes(6).toString("hex")}`);
  const fh = await open(tmp, "wx", 0o600);
  try {
    try {
      let off = 0;
      while (off < bytes.length) {
        const { bytesWritten } = await fh.write(bytes, off, bytes.length - off, off);
        off += bytesWritten;
      }
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
  await fsyncDir(dir);
}

/** Makes entries created, renamed or removed in `path` durable. */
export async function fsyncDir(path: string): Promise<void> {
  // Windows cannot open a directory for fsync; its metadata journaling covers renames.
  if (process.platform === "win32") return;
  const fh = await open(path, "r");
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
