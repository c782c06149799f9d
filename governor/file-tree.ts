/**
 * One walker for directories pinned as a whole (policy bundles, catalog
 * packages): every regular file under a root, within limits, listed as a
 * sorted {path, sha256, size} listing whose hash is SHA-256 over its JCS form.
 *
 * Rules: names must be UTF-8. A symbolic link must resolve to a regular file
 * inside the root and is hashed as that file's bytes; a broken link, one that
 * leaves the root or one that points at a directory refuses the tree (links to
 * directories could loop or repeat the tree). Any other non-regular file
 * (socket, FIFO, device) refuses it too. A tree beyond any limit is refused,
 * never listed in part.
 *
 * Callers word and code their own errors: the walker reports a TreeProblem
 * and throws whatever `error` returns for it.
 */
import { createHash } from "node:crypto";
import { open, readdir, realpath, stat } from "node:fs/promises";
import { join, sep } from "node:path";
import { canonicalBytes } from "../artifacts/canonical-json.js";
import { sha256Hex } from "../artifacts/hash.js";

export interface TreeLimits {
  maxFiles: number;
  maxFileBytes: number;
  maxTotalBytes: number;
  /** Directory levels counting the root: 1 allows no subdirectory. */
  maxDepth: number;
}

export interface TreeEntry {
  /** Relative to the root, "/"-separated. */
  path: string;
  sha256: string;
  size: number;
}

export interface TreeFile extends TreeEntry {
  bytes: Uint8Array;
}

/**
 * What broke a rule. `path` is relative to the root ("." for the root
 * itself); `limit` is the limit exceeded.
 */
export type TreeProblem =
  | { kind: "root"; cause: unknown }
  | { kind: "root-not-dir" }
  | { kind: "read-dir" | "read-file"; path: string; cause: unknown }
  | {
      kind: "name-encoding" | "name-chars" | "link-broken" | "link-directory" | "not-regular";
      path: string;
    }
  | { kind: "link-outside"; path: string; target: string }
  | { kind: "too-deep" | "file-too-large"; path: string; limit: number }
  | { kind: "too-many-files" | "too-many-bytes"; limit: number };

export interface WalkOptions {
  limits: Readonly<TreeLimits>;
  /** Skip names starting with "." (and everything under such a directory) without reading them. */
  skipDotNames: boolean;
  /** Refuse names holding a control character or a backslash. */
  rejectOddNames: boolean;
  /** Keep each file's bytes (for callers that parse what they hashed). */
  keepBytes: boolean;
  /** `root` is the resolved root, or the directory as given for "root" and "root-not-dir". */
  error: (problem: TreeProblem, root: string) => Error;
}

export interface FileTree<F extends TreeEntry> {
  /** Absolute, symbolic links resolved. */
  root: string;
  /** Sorted by path (UTF-16 order). */
  files: F[];
  /** Total size of the files. */
  bytes: number;
}

interface ReadResult {
  sha256: string;
  size: number;
  bytes?: Uint8Array;
}

const nameDecoder = new TextDecoder("utf-8", { fatal: true });
const CHUNK_BYTES = 1024 * 1024;

/**
 * Reads a file to EOF, hashing it, and keeps its bytes when asked. Returns
 * null once it passes `max` bytes: the size is counted as read, not taken
 * from stat, since the file may change underneath.
 */
export function readCapped(
  path: string,
  max: number,
  keepBytes: true,
): Promise<(ReadResult & { bytes: Uint8Array }) | null>;
export function readCapped(path: string, max: number, keepBytes: boolean): Promise<ReadResult | null>;
export async function readCapped(path: string, max: number, keepBytes: boolean): Promise<ReadResult | null> {
  const fh = await open(path, "r");
  try {
    const h = createHash("sha256");
    const chunks: Buffer[] = [];
    // Unsafe is fine: only the bytes read are ever looked at.
    const buf = Buffer.allocUnsafe(Math.min(CHUNK_BYTES, max + 1));
    let n = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      n += bytesRead;
      if (n > max) return null;
      const part = buf.subarray(0, bytesRead);
      h.update(part);
      if (keepBytes) chunks.push(Buffer.from(part));
    }
    const sha256 = h.digest("hex");
    return keepBytes
      ? { sha256, size: n, bytes: new Uint8Array(Buffer.concat(chunks, n)) }
      : { sha256, size: n };
  } finally {
    await fh.close();
  }
}

export function walkFileTree(
  dir: string,
  options: WalkOptions & { keepBytes: true },
): Promise<FileTree<TreeFile>>;
export function walkFileTree(dir: string, options: WalkOptions): Promise<FileTree<TreeEntry>>;
export async function walkFileTree(dir: string, options: WalkOptions): Promise<FileTree<TreeEntry>> {
  const { limits, error } = options;
  let root: string;
  let isDir: boolean;
  try {
    root = await realpath(dir);
    isDir = (await stat(root)).isDirectory();
  } catch (cause) {
    throw error({ kind: "root", cause }, dir);
  }
  if (!isDir) throw error({ kind: "root-not-dir" }, dir);
  const fail: (problem: TreeProblem) => never = (problem) => {
    throw error(problem, root);
  };
  const files: (TreeEntry | TreeFile)[] = [];
  let total = 0;

  const walk = async (abs: string, rel: string, depth: number): Promise<void> => {
    let entries;
    try {
      entries = await readdir(abs, { withFileTypes: true, encoding: "buffer" });
    } catch (cause) {
      fail({ kind: "read-dir", path: rel || ".", cause });
    }
    for (const entry of entries) {
      let name: string;
      try {
        name = nameDecoder.decode(entry.name);
      } catch {
        fail({ kind: "name-encoding", path: rel || "." });
      }
      if (options.skipDotNames && name.startsWith(".")) continue;
      const path = rel === "" ? name : `${rel}/${name}`;
      // eslint-disable-next-line no-control-regex
      if (options.rejectOddNames && /[\u0000-\u001f\u007f\\]/.test(name)) fail({ kind: "name-chars", path });
      let target = join(abs, name);
      let isFile = entry.isFile();
      let isDirectory = entry.isDirectory();
      if (entry.isSymbolicLink()) {
        let real: string;
        try {
          real = await realpath(target);
        } catch {
          fail({ kind: "link-broken", path });
        }
        if (!real.startsWith(root + sep)) fail({ kind: "link-outside", path, target: real });
        let st;
        try {
          st = await stat(real);
        } catch (cause) {
          fail({ kind: "read-file", path, cause });
        }
        if (st.isDirectory()) fail({ kind: "link-directory", path });
        target = real;
        isFile = st.isFile();
        isDirectory = false;
      }
      if (isDirectory) {
        if (depth + 1 >= limits.maxDepth) fail({ kind: "too-deep", path, limit: limits.maxDepth });
        await walk(target, path, depth + 1);
        continue;
      }
      if (!isFile) fail({ kind: "not-regular", path });
      if (files.length >= limits.maxFiles) fail({ kind: "too-many-files", limit: limits.maxFiles });
      let read;
      try {
        read = await readCapped(target, limits.maxFileBytes, options.keepBytes);
      } catch (cause) {
        fail({ kind: "read-file", path, cause });
      }
      if (!read) fail({ kind: "file-too-large", path, limit: limits.maxFileBytes });
      total += read.size;
      if (total > limits.maxTotalBytes) fail({ kind: "too-many-bytes", limit: limits.maxTotalBytes });
      files.push({ path, ...read });
    }
  };
  await walk(root, "", 0);
  return { root, files: files.sort(byPath), bytes: total };
}

function byPath(a: TreeEntry, b: TreeEntry): number {
  return a.path < b.path ? -1 : a.path > b.path ? 1 : 0;
}

/** The {path, sha256, size} listing, sorted by path (bytes and other fields dropped). */
export function treeListing(files: readonly TreeEntry[]): TreeEntry[] {
  return files.map((f) => ({ path: f.path, sha256: f.sha256, size: f.size })).sort(byPath);
}

/** SHA-256 (hex) of the JCS form of the sorted listing. */
export function treeHash(files: readonly TreeEntry[]): string {
  return sha256Hex(canonicalBytes(treeListing(files)));
}
