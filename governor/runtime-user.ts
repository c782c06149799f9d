/**
 * The runtime's own unprivileged user. When the governor runs as root (as it
 * does on these machines and in every test), the runtime is spawned as this
 * user, created on first use as a system account without a login shell.
 */
import { execFileSync } from "node:child_process";
import { chown, mkdir, stat } from "node:fs/promises";
import { dirname } from "node:path";
import { CmcpError } from "../artifacts/errors.js";

export interface RuntimeIdentity {
  uid: number;
  gid: number;
  name: string;
}

function lookup(name: string): RuntimeIdentity | null {
  try {
    const uid = Number(
      execFileSync("id", ["-u", name], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim(),
    );
    const gid = Number(
      execFileSync("id", ["-g", name], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim(),
    );
    return { uid, gid, name };
  } catch {
    return null;
  }
}

/** Looked-up identities: start-up asks more than once, and each lookup spawns `id`. */
const known = new Map<string, RuntimeIdentity>();

/** Null when not root: the runtime then runs as the current user, which the governor reports. */
export function ensureRuntimeUser(name: string): RuntimeIdentity | null {
  if (typeof process.getuid !== "function" || process.getuid() !== 0) return null;
  const cached = known.get(name);
  if (cached) return cached;
  const identity = findOrCreate(name);
  known.set(name, identity);
  return identity;
}

function findOrCreate(name: string): RuntimeIdentity {
  const found = lookup(name);
  if (found) {
    if (found.uid === 0)
      throw new CmcpError("runtime.user", `runtime user ${name} is root; it must be unprivileged`);
    return found;
  }
  try {
    execFileSync(
      "useradd",
      ["--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name],
      {
        stdio: ["ignore", "ignore", "pipe"],
      },
    );
  } catch (err) {
    // Another governor may have created it meanwhile.
    const again = lookup(name);
    if (again) return again;
    throw new CmcpError("runtime.user", `cannot create runtime user ${name}: ${(err as Error).message}`);
  }
  const created = lookup(name);
  if (!created)
    throw new CmcpError("runtime.user", `runtime user ${name} was created but cannot be looked up`);
  return created;
}

/** The runtime's writable state directory: its own, mode 0700, owned by the runtime user. */
export async function prepareStateDir(path: string, identity: RuntimeIdentity | null): Promise<void> {
  await mkdir(path, { recursive: true, mode: 0o700 });
  if (identity) await chown(path, identity.uid, identity.gid);
}

/**
 * Fails with a clear error when the runtime user could not read its own code
 * (for example an installation under a mode-0700 home directory): otherwise
 * the runtime would die at start and be restarted forever.
 */
export async function assertReadableBy(identity: RuntimeIdentity, files: string[]): Promise<void> {
  const can = (st: { uid: number; gid: number; mode: number }, bits: number) =>
    st.uid === identity.uid
      ? (st.mode & (bits << 6)) !== 0
      : st.gid === identity.gid
        ? (st.mode & (bits << 3)) !== 0
        : (st.mode & bits) !== 0;
  for (const file of files) {
    if (!can(await stat(file), 4)) {
      throw new CmcpError(
        "runtime.unreadable",
        `runtime user ${identity.name} cannot read ${file}; install cmcp where other users can read it (for example under /opt)`,
      );
    }
    for (let dir = dirname(file); ; dir = dirname(dir)) {
      if (!can(await stat(dir), 1)) {
        throw new CmcpError(
          "runtime.unreadable",
          `runtime user ${identity.name} cannot enter ${dir} (needed for ${file}); install cmcp where other users can read it (for example under /opt), or allow traversal with chmod o+x`,
        );
      }
      if (dirname(dir) === dir) break;
    }
  }
}
