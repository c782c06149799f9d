/**
 * Server identity for the approved catalog: what exactly runs behind an
 * upstream name, pinned so that a replaced binary, an updated package or a
 * file edited in place is noticed.
 *
 * stdio: the executable actually run (command looked up on PATH, symbolic
 * links resolved, absolute) with its SHA-256, and the arguments. Then:
 *   - an interpreter (node, python, bun, deno, ruby, perl, php, sh/bash)
 *     running a script, or a command that is itself a `#!` script: the package
 *     the script belongs to — the nearest directory above it holding a
 *     package.json with a "name" (or a pyproject.toml naming a project) — with
 *     every regular file under that root hashed as a sorted JCS listing of
 *     {path, sha256, size}, like the policy bundle hash, plus the package's
 *     name and version and the script's path in it. A script with no package
 *     above it is pinned alone (`script`).
 *   - anything else: the binary's SHA-256 (command_sha256) is the identity.
 * Launchers that fetch whatever is newest when they start (npx, pnpm dlx,
 * yarn dlx, bunx / bun x, npm exec, uvx, uv tool run, pipx run, deno with
 * npm:/jsr:/URL specifiers) are refused: there is nothing on disk to pin.
 *
 * HTTP (streamable-http, sse): the URL (userinfo removed) and, for https, the
 * SHA-256 (base64) of the server certificate's SubjectPublicKeyInfo, read
 * with node:tls.
 *
 * Limits (PACKAGE_LIMITS): files, bytes per file, bytes in all and directory
 * depth of a package; a package beyond any of them is refused with a message
 * naming the limit, never hashed in part. Nothing under the root is skipped
 * (dot files and nested node_modules included). Symbolic links under the root
 * must resolve to a regular file inside it (hashed as that file's bytes); a
 * link leaving the root or pointing at a directory refuses the package.
 */
import { createHash, X509Certificate } from "node:crypto";
import { constants as fsConstants } from "node:fs";
import { access, open, readFile, realpath, stat } from "node:fs/promises";
import { isIP } from "node:net";
import { basename, delimiter, dirname, isAbsolute, join, relative, resolve, sep } from "node:path";
import { connect as tlsConnect, type PeerCertificate } from "node:tls";
import { CmcpError, isCmcpError } from "../artifacts/errors.js";
import { parseJson } from "../artifacts/strict-json.js";
import type { UpstreamSpec } from "./boundary.js";
import { diffJson, type FieldChange } from "./catalog-json-diff.js";
import { readCapped, treeHash, walkFileTree, type TreeEntry, type TreeProblem } from "./file-tree.js";

export interface PackageIdentity {
  /** Absolute, symbolic links resolved. */
  root: string;
  name: string;
  version: string | null;
  /** The script run, relative to root ("/"-separated). */
  entry: string;
  /** SHA-256 (hex) of the JCS listing of every file under root. */
  sha256: string;
  files: number;
  bytes: number;
}

export interface StdioIdentity {
  transport: "stdio";
  /** The executable run: absolute, symbolic links resolved. */
  command: string;
  command_sha256: string;
  args: string[];
  /** The `#!` line when the command is itself a script. */
  interpreter?: string;
  package?: PackageIdentity;
  /** A script outside any package, pinned alone. */
  script?: { path: string; sha256: string; size: number };
}

export interface HttpIdentity {
  transport: "streamable-http" | "sse";
  url: string;
  /** SHA-256 (base64) of the TLS certificate's SubjectPublicKeyInfo; optional. */
  tls_spki_sha256?: string;
}

export type ServerIdentity = StdioIdentity | HttpIdentity;

export interface PackageLimits {
  maxFiles: number;
  maxFileBytes: number;
  maxTotalBytes: number;
  maxDepth: number;
}

export const PACKAGE_LIMITS: Readonly<PackageLimits> = Object.freeze({
  // server-filesystem with its nested dependencies is 60 files; a bundled server a few thousand.
  maxFiles: 20_000,
  maxFileBytes: 128 * 1024 * 1024,
  maxTotalBytes: 512 * 1024 * 1024,
  maxDepth: 32,
});

/** Executables and lone scripts hashed whole (a node binary is ~100 MB). */
export const MAX_EXECUTABLE_BYTES = 1024 * 1024 * 1024;

/** package.json / pyproject.toml files read while looking for the package root. */
const MAX_MANIFEST_BYTES = 1024 * 1024;

export interface IdentityOptions {
  limits?: Readonly<PackageLimits>;
  /** Extra trust anchors for reading the pin (a test CA); the system store otherwise. */
  ca?: string | Buffer;
  /** TLS connect timeout (default 10 s). */
  timeoutMs?: number;
}

function fail(message: string): never {
  throw new CmcpError("catalog.identity", message);
}

// ---- launchers that fetch at start --------------------------------------------------------------

function commandBase(command: string): string {
  return basename(command)
    .toLowerCase()
    .replace(/\.(cmd|exe|ps1|bat)$/, "");
}

function firstWord(args: readonly string[], from = 0): { word: string | undefined; index: number } {
  for (let i = from; i < args.length; i++) {
    const a = args[i] as string;
    if (!a.startsWith("-")) return { word: a, index: i };
  }
  return { word: undefined, index: args.length };
}

const ALWAYS_FETCHING = new Set(["npx", "pnpx", "bunx", "uvx", "npx-cli.js"]);

/** Launcher words inside a shell -c string. */
const INLINE_LAUNCHER =
  /(?:^|[\s;&|()`])(npx|pnpx|bunx|uvx|npm\s+(?:exec|x)|pnpm\s+dlx|yarn\s+dlx|bun\s+x|pipx\s+run|uv\s+tool\s+run)(?=\s|$)/;

/**
 * The launcher a command uses when it downloads whatever is newest at start
 * ("npx", "npm exec", "pnpm dlx", ...), or null. Looks at the command as
 * written, and at shell -c strings.
 */
export function unpinnedLauncher(command: string, args: readonly string[]): string | null {
  const base = commandBase(command);
  if (ALWAYS_FETCHING.has(base)) return base === "npx-cli.js" ? "npx" : base;
  const { word, index } = firstWord(args);
  if ((base === "npm" || base === "npm-cli.js") && (word === "exec" || word === "x")) return "npm exec";
  if (base === "pnpm" && word === "dlx") return "pnpm dlx";
  if (base === "yarn" && word === "dlx") return "yarn dlx";
  if (base === "bun" && word === "x") return "bun x";
  if (base === "pipx" && word === "run") return "pipx run";
  if (base === "uv" && word === "tool" && firstWord(args, index + 1).word === "run") return "uv tool run";
  if (base === "deno" && args.some((a) => /^(npm:|jsr:|https?:\/\/)/.test(a)))
    return "deno with a remote specifier";
  if (SHELLS.test(base)) {
    for (let i = 0; i < args.length - 1; i++) {
      // "-c", or a cluster holding it ("-lc", "-ec").
      if (/^-[A-Za-z]*c[A-Za-z]*$/.test(args[i] as string)) {
        const m = INLINE_LAUNCHER.exec(args[i + 1] as string);
        if (m) return (m[1] as string).replace(/\s+/g, " ");
      }
    }
  }
  return null;
}

function refuseLauncher(up: UpstreamSpec, launcher: string): never {
  fail(
    `upstream "${up.name}": its command runs ${launcher}, which downloads and runs whatever version is newest when it starts, so it cannot be approved. ` +
      `Install a pinned version (for example: npm install --prefix /opt/mcp/${up.name} <package>@<exact version>, or pip install <package>==<version> into a virtual environment) ` +
      `and point "command" at what was installed (node and the package's script, or its bin).`,
  );
}

// ---- interpreters -------------------------------------------------------------------------------

interface InterpreterSpec {
  /** Subcommands that come before the script ("deno run"). */
  sub?: readonly string[];
  /** Options followed by a separate value. */
  value: ReadonlySet<string>;
  /** Options whose value is code: nothing on disk to pin. */
  inline: ReadonlySet<string>;
  /** Options naming a module rather than a file. */
  module?: ReadonlySet<string>;
}

const SHELLS = /^(sh|bash|dash|zsh|ksh)$/;

const INTERPRETERS: { test: RegExp; spec: InterpreterSpec }[] = [
  {
    test: /^(node|nodejs)$/,
    spec: {
      value: new Set([
        "-r",
        "--require",
        "--import",
        "--loader",
        "--experimental-loader",
        "-C",
        "--conditions",
        "--input-type",
        "--title",
        "--env-file",
        "--inspect-port",
        "--watch-path",
      ]),
      inline: new Set(["-e", "--eval", "-p", "--print"]),
    },
  },
  {
    test: /^bun$/,
    spec: {
      sub: ["run"],
      value: new Set(["-r", "--preload", "--cwd", "--env-file", "-c", "--config"]),
      inline: new Set(["-e", "--eval", "-p", "--print"]),
    },
  },
  {
    test: /^deno$/,
    spec: {
      sub: ["run"],
      value: new Set(["-c", "--config", "--import-map", "--location", "--cert", "--lock", "--env-file"]),
      inline: new Set(["eval"]),
    },
  },
  {
    test: /^python(\d+(\.\d+)?)?$/,
    spec: { value: new Set(["-W", "-X"]), inline: new Set(["-c"]), module: new Set(["-m"]) },
  },
  { test: /^ruby$/, spec: { value: new Set(["-I", "-r", "-C"]), inline: new Set(["-e"]) } },
  { test: /^perl$/, spec: { value: new Set(["-I"]), inline: new Set(["-e", "-E"]) } },
  { test: /^php$/, spec: { value: new Set(["-c", "-d"]), inline: new Set(["-r"]) } },
  { test: SHELLS, spec: { value: new Set(["-o", "+o"]), inline: new Set(["-c"]) } },
];

export function interpreterSpec(executable: string): InterpreterSpec | null {
  const base = commandBase(executable);
  return INTERPRETERS.find((i) => i.test.test(base))?.spec ?? null;
}

/** The script argument of an interpreter command line (throws when there is none to pin). */
export function scriptArgument(up: UpstreamSpec, spec: InterpreterSpec, args: readonly string[]): string {
  let i = spec.sub && args[0] !== undefined && spec.sub.includes(args[0]) ? 1 : 0;
  const who = `upstream "${up.name}"`;
  while (i < args.length) {
    const a = args[i] as string;
    if (a === "--") {
      const next = args[i + 1];
      if (next === undefined) break;
      return next;
    }
    if (a === "-") fail(`${who}: the interpreter reads its program from stdin, which cannot be pinned`);
    const long = a.startsWith("--") ? (a.split("=")[0] as string) : null;
    const hit =
      long !== null
        ? spec.inline.has(long)
          ? { flag: long, module: false }
          : spec.module?.has(long)
            ? { flag: long, module: true }
            : null
        : spec.inline.has(a)
          ? { flag: a, module: false }
          : clusterFlag(spec, a);
    if (hit && !hit.module)
      fail(
        `${who}: the interpreter runs inline code (${hit.flag}), which cannot be pinned; put the server in a file and run that`,
      );
    if (hit)
      fail(
        `${who}: the interpreter runs a module by name (${hit.flag}); point "args" at the module's script file so it can be pinned`,
      );
    if (a.startsWith("-") || a.startsWith("+")) {
      i += spec.value.has(a) ? 2 : 1;
      continue;
    }
    return a;
  }
  fail(`${who}: no script to pin among the interpreter's arguments`);
}

/**
 * The inline-code or module flag in a cluster of short flags ("-lc" is -l -c,
 * "-Bm" is -B -m), or null. Letters after a flag that takes a value are that
 * value ("-Werror::ResourceWarning").
 */
function clusterFlag(spec: InterpreterSpec, arg: string): { flag: string; module: boolean } | null {
  if (!/^-[A-Za-z]/.test(arg)) return null;
  for (const ch of arg.slice(1)) {
    if (!/[A-Za-z]/.test(ch)) return null;
    const flag = `-${ch}`;
    if (spec.inline.has(flag)) return { flag, module: false };
    if (spec.module?.has(flag)) return { flag, module: true };
    if (spec.value.has(flag)) return null;
  }
  return null;
}

// ---- files --------------------------------------------------------------------------------------

/** Streams a file through SHA-256; refuses files over `max` bytes (read to EOF, not trusted from stat). */
export async function hashFile(path: string, max: number): Promise<{ sha256: string; size: number }> {
  const h = await readCapped(path, max, false);
  if (!h) throw new CmcpError("catalog.too-large", `${path} is larger than ${max} bytes`);
  return { sha256: h.sha256, size: h.size };
}

/**
 * The executable's hash, re-read only when its stat changes: re-checks at the
 * drift cadence would otherwise hash a ~100 MB node binary every time. Any
 * write changes mtime and ctime (ctime cannot be set back without the
 * clock); package files, the usual target of a silent update, are always
 * re-hashed in full.
 */
const executableHashes = new Map<string, { key: string; hash: { sha256: string; size: number } }>();

async function hashExecutable(path: string): Promise<{ sha256: string; size: number }> {
  const st = await stat(path, { bigint: true });
  const key = `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
  const cached = executableHashes.get(path);
  if (cached?.key === key) return cached.hash;
  const hash = await hashFile(path, MAX_EXECUTABLE_BYTES);
  if (executableHashes.size >= 256) executableHashes.clear();
  executableHashes.set(path, { key, hash });
  return hash;
}

async function readHead(path: string, n: number): Promise<Buffer> {
  const fh = await open(path, "r");
  try {
    const buf = Buffer.alloc(n);
    const { bytesRead } = await fh.read(buf, 0, n, 0);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

function errText(err: unknown): string {
  if (isCmcpError(err)) return err.message;
  const e = err as NodeJS.ErrnoException;
  return e.code ?? e.message ?? String(err);
}

// ---- packages -----------------------------------------------------------------------------------

export type PackageListingEntry = TreeEntry;

export interface PackageHash {
  root: string;
  /** SHA-256 (hex) of the JCS bytes of `listing`. */
  sha256: string;
  files: number;
  bytes: number;
  /** Sorted by path (UTF-16 order). */
  listing: PackageListingEntry[];
}

/**
 * Hashes every regular file under `dir` (see the module comment for links
 * and limits). Throws CmcpError("catalog.identity") naming the file or limit.
 */
export async function hashPackageDir(
  dir: string,
  limits: Readonly<PackageLimits> = PACKAGE_LIMITS,
): Promise<PackageHash> {
  const { root, files, bytes } = await walkFileTree(dir, {
    limits,
    skipDotNames: false,
    rejectOddNames: false,
    keepBytes: false,
    error: (problem, root) => new CmcpError("catalog.identity", packageProblem(dir, root, problem)),
  });
  return { root, sha256: treeHash(files), files: files.length, bytes, listing: files };
}

function packageProblem(dir: string, root: string, p: TreeProblem): string {
  const where = (rel: string) => `package ${root}: ${rel}`;
  switch (p.kind) {
    case "root":
      return `cannot read package ${dir}: ${errText(p.cause)}`;
    case "root-not-dir":
      return `package root ${dir} is not a directory`;
    case "read-dir":
    case "read-file":
      return `cannot read ${where(p.path)}: ${errText(p.cause)}`;
    case "name-encoding":
      return `${where(p.path)}: a file name in it is not valid UTF-8`;
    case "name-chars":
      return `${where(JSON.stringify(p.path))} has a control character or backslash in its name`;
    case "link-broken":
      return `${where(p.path)} is a broken symbolic link`;
    case "link-outside":
      return `${where(p.path)} is a symbolic link out of the package (to ${p.target}); it cannot be pinned`;
    case "link-directory":
      return `${where(p.path)} is a symbolic link to a directory; links may only point at files`;
    case "too-deep":
      return `${where(p.path)} nests deeper than ${p.limit} levels (limit maxDepth)`;
    case "not-regular":
      return `${where(p.path)} is not a regular file`;
    case "file-too-large":
      return `${where(p.path)} is larger than ${p.limit} bytes (limit maxFileBytes)`;
    case "too-many-files":
      return `package ${root} has more than ${p.limit} files (limit maxFiles)`;
    case "too-many-bytes":
      return `package ${root} holds more than ${p.limit} bytes (limit maxTotalBytes)`;
  }
}

interface Manifest {
  name: string;
  version: string | null;
}

async function readManifest(path: string): Promise<Uint8Array | null> {
  try {
    const st = await stat(path);
    if (!st.isFile()) return null;
    if (st.size > MAX_MANIFEST_BYTES) fail(`${path} is larger than ${MAX_MANIFEST_BYTES} bytes`);
    return await readFile(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT" || (err as NodeJS.ErrnoException).code === "ENOTDIR")
      return null;
    throw err;
  }
}

function packageJsonManifest(bytes: Uint8Array, path: string): Manifest | null {
  let doc: unknown;
  try {
    doc = parseJson(bytes, { maxBytes: MAX_MANIFEST_BYTES, maxDepth: 64 });
  } catch (err) {
    fail(`${path} is not valid JSON: ${errText(err)}`);
  }
  if (doc === null || typeof doc !== "object" || Array.isArray(doc)) return null;
  const { name, version } = doc as Record<string, unknown>;
  // A package.json without a name (e.g. dist/package.json holding only "type") is not a package root.
  if (typeof name !== "string" || name === "") return null;
  return { name, version: typeof version === "string" ? version : null };
}

/** [project] or [tool.poetry] name and version, read line by line (enough for a manifest's header). */
function pyprojectManifest(bytes: Uint8Array): Manifest | null {
  let section = "";
  let name: string | undefined;
  let version: string | null = null;
  for (const raw of Buffer.from(bytes).toString("utf8").split(/\r?\n/)) {
    const line = raw.trim();
    const header = /^\[([^\]]+)\]$/.exec(line);
    if (header) {
      section = (header[1] as string).trim();
      continue;
    }
    if (section !== "project" && section !== "tool.poetry") continue;
    const kv = /^(name|version)\s*=\s*["']([^"']+)["']/.exec(line);
    if (!kv) continue;
    if (kv[1] === "name") name ??= kv[2];
    else version ??= kv[2] as string;
  }
  return name ? { name, version } : null;
}

/** The nearest directory at or above `from` that is a package root, or null. */
export async function findPackageRoot(from: string): Promise<{ root: string; manifest: Manifest } | null> {
  let dir = from;
  for (;;) {
    const pj = join(dir, "package.json");
    const pjBytes = await readManifest(pj);
    if (pjBytes) {
      const m = packageJsonManifest(pjBytes, pj);
      if (m) return { root: dir, manifest: m };
    }
    const pyBytes = await readManifest(join(dir, "pyproject.toml"));
    if (pyBytes) {
      const m = pyprojectManifest(pyBytes);
      if (m) return { root: dir, manifest: m };
    }
    const parent = dirname(dir);
    if (parent === dir) return null;
    dir = parent;
  }
}

// ---- stdio identity -----------------------------------------------------------------------------

/** Finds the command as the spawn would (PATH from the upstream's env, else ours) and resolves links. */
export async function resolveCommand(up: UpstreamSpec): Promise<string> {
  const command = up.command;
  if (!command) fail(`upstream "${up.name}" has no command`);
  const cwd = up.cwd ?? process.cwd();
  let found: string | undefined;
  if (command.includes("/")) {
    found = isAbsolute(command) ? command : resolve(cwd, command);
  } else {
    const path = up.env?.["PATH"] ?? process.env["PATH"] ?? "";
    for (const dir of path.split(delimiter)) {
      if (dir === "") continue;
      const candidate = resolve(cwd, dir, command);
      try {
        const st = await stat(candidate);
        if (!st.isFile()) continue;
        await access(candidate, fsConstants.X_OK);
        found = candidate;
        break;
      } catch {
        // not here
      }
    }
    if (!found) fail(`upstream "${up.name}": command "${command}" is not found on PATH`);
  }
  try {
    const real = await realpath(found);
    if (!(await stat(real)).isFile()) fail(`upstream "${up.name}": command ${found} is not a file`);
    return real;
  } catch (err) {
    if (isCmcpError(err)) throw err;
    fail(`upstream "${up.name}": cannot read command ${found}: ${errText(err)}`);
  }
}

async function scriptIdentity(
  up: UpstreamSpec,
  scriptPath: string,
  limits: Readonly<PackageLimits>,
): Promise<Pick<StdioIdentity, "package" | "script">> {
  let real: string;
  try {
    real = await realpath(scriptPath);
    if (!(await stat(real)).isFile()) fail(`upstream "${up.name}": script ${scriptPath} is not a file`);
  } catch (err) {
    if (isCmcpError(err)) throw err;
    fail(`upstream "${up.name}": cannot read script ${scriptPath}: ${errText(err)}`);
  }
  const found = await findPackageRoot(dirname(real));
  if (!found) {
    const h = await hashFile(real, MAX_EXECUTABLE_BYTES).catch((err: unknown) =>
      fail(`upstream "${up.name}": cannot hash ${real}: ${errText(err)}`),
    );
    return { script: { path: real, sha256: h.sha256, size: h.size } };
  }
  const pkg = await hashPackageDir(found.root, limits);
  return {
    package: {
      root: pkg.root,
      name: found.manifest.name,
      version: found.manifest.version,
      entry: relative(pkg.root, real).split(sep).join("/"),
      sha256: pkg.sha256,
      files: pkg.files,
      bytes: pkg.bytes,
    },
  };
}

async function stdioIdentity(up: UpstreamSpec, limits: Readonly<PackageLimits>): Promise<StdioIdentity> {
  const args = up.args ?? [];
  const asWritten = unpinnedLauncher(up.command ?? "", args);
  if (asWritten) refuseLauncher(up, asWritten);
  const command = await resolveCommand(up);
  const resolvedLauncher = unpinnedLauncher(command, args);
  if (resolvedLauncher) refuseLauncher(up, resolvedLauncher);
  const exe = await hashExecutable(command).catch((err: unknown) =>
    fail(`upstream "${up.name}": cannot hash ${command}: ${errText(err)}`),
  );
  const base: StdioIdentity = { transport: "stdio", command, command_sha256: exe.sha256, args: [...args] };
  const head = await readHead(command, 4096);
  if (head[0] === 0x23 && head[1] === 0x21) {
    // A #! script run directly (an npm bin link lands here): its package is the identity.
    const nl = head.indexOf(0x0a);
    const line = head
      .subarray(2, nl < 0 ? head.length : nl)
      .toString("utf8")
      .trim();
    if (SHELLS.test(commandBase(shebangProgram(line)))) await checkShellScript(up, command);
    return { ...base, interpreter: line, ...(await scriptIdentity(up, command, limits)) };
  }
  const spec = interpreterSpec(command);
  if (!spec) return base;
  const script = scriptArgument(up, spec, args);
  if (/^(npm:|jsr:|https?:\/\/)/.test(script))
    refuseLauncher(up, `a remote script (${script.slice(0, 200)})`);
  const scriptPath = resolve(up.cwd ?? process.cwd(), script);
  const scriptLauncher = unpinnedLauncher(scriptPath, args.slice(args.indexOf(script) + 1));
  if (scriptLauncher) refuseLauncher(up, scriptLauncher);
  if (SHELLS.test(commandBase(command))) await checkShellScript(up, scriptPath);
  return { ...base, ...(await scriptIdentity(up, scriptPath, limits)) };
}

/** The program a #! line runs ("/usr/bin/env -S bash -e" runs bash). */
function shebangProgram(line: string): string {
  const words = line.split(/\s+/).filter((w) => w !== "");
  if (words[0] !== undefined && basename(words[0]) === "env")
    return words.slice(1).find((w) => !w.startsWith("-") && !w.includes("=")) ?? "";
  return words[0] ?? "";
}

/** A shell wrapper that starts a launcher (a run.sh holding "npx -y ...") is refused like the launcher. */
async function checkShellScript(up: UpstreamSpec, path: string): Promise<void> {
  let text: string;
  try {
    text = (await readHead(path, MAX_MANIFEST_BYTES)).toString("utf8");
  } catch {
    return; // unreadable scripts are reported when they are hashed
  }
  for (const line of text.split("\n")) {
    const code = line.replace(/(^|\s)#.*$/, "");
    const m = INLINE_LAUNCHER.exec(code);
    if (m) refuseLauncher(up, `${(m[1] as string).replace(/\s+/g, " ")} (from the shell script ${path})`);
  }
}

// ---- HTTP identity ------------------------------------------------------------------------------

/**
 * SHA-256 (base64) of the SubjectPublicKeyInfo of the certificate an https
 * server presents, after normal certificate verification (against `ca` when
 * given, the system store otherwise).
 */
export function tlsPublicKeyPin(
  url: string,
  opts: { ca?: string | Buffer; timeoutMs?: number } = {},
): Promise<string> {
  const u = new URL(url);
  if (u.protocol !== "https:")
    return Promise.reject(new CmcpError("catalog.identity", `${url} is not https`));
  const host = u.hostname.replace(/^\[(.*)\]$/, "$1");
  const port = u.port ? Number(u.port) : 443;
  return new Promise((resolvePin, reject) => {
    const socket = tlsConnect({
      host,
      port,
      ...(isIP(host) === 0 ? { servername: host } : {}),
      ...(opts.ca !== undefined ? { ca: opts.ca } : {}),
      ALPNProtocols: ["http/1.1"],
    });
    const timer = setTimeout(
      () => socket.destroy(new Error(`no TLS handshake within ${opts.timeoutMs ?? 10_000} ms`)),
      opts.timeoutMs ?? 10_000,
    );
    socket.once("secureConnect", () => {
      clearTimeout(timer);
      try {
        const raw = (socket.getPeerCertificate() as PeerCertificate).raw;
        const spki = new X509Certificate(raw).publicKey.export({ type: "spki", format: "der" });
        resolvePin(createHash("sha256").update(spki).digest("base64"));
      } catch (err) {
        reject(
          new CmcpError(
            "catalog.identity",
            `cannot read the TLS certificate of ${u.origin}: ${errText(err)}`,
          ),
        );
      } finally {
        socket.end();
      }
    });
    socket.once("error", (err) => {
      clearTimeout(timer);
      reject(
        new CmcpError("catalog.identity", `cannot read the TLS certificate of ${u.origin}: ${err.message}`),
      );
    });
  });
}

async function httpIdentity(up: UpstreamSpec, opts: IdentityOptions): Promise<HttpIdentity> {
  if (!up.url) fail(`upstream "${up.name}" has no url`);
  let u: URL;
  try {
    u = new URL(up.url);
  } catch {
    fail(`upstream "${up.name}": url ${JSON.stringify(up.url.slice(0, 200))} is not a URL`);
  }
  // Credentials in the URL stay out of the catalog (and of every receipt that quotes it).
  u.username = "";
  u.password = "";
  const transport = up.transport === "sse" ? "sse" : "streamable-http";
  const id: HttpIdentity = { transport, url: u.href };
  if (u.protocol === "https:") {
    id.tls_spki_sha256 = await tlsPublicKeyPin(u.href, {
      ...(opts.ca !== undefined ? { ca: opts.ca } : {}),
      ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}),
    });
  }
  return id;
}

/**
 * The identity of an upstream as it is on this machine now. Throws
 * CmcpError("catalog.identity") for a launcher that cannot be pinned, a
 * command or script that cannot be read, or a package beyond the limits.
 */
export async function computeIdentity(up: UpstreamSpec, opts: IdentityOptions = {}): Promise<ServerIdentity> {
  if (up.transport === "stdio") return stdioIdentity(up, opts.limits ?? PACKAGE_LIMITS);
  return httpIdentity(up, opts);
}

/**
 * What differs between a pinned identity and a live one, field by field
 * (JSON Pointers into the identity). Empty when they match. A pinned HTTP
 * identity without a TLS pin accepts any key.
 */
export function identityDiff(pinned: ServerIdentity, live: ServerIdentity): FieldChange[] {
  let l: ServerIdentity = live;
  if (pinned.transport !== "stdio" && live.transport !== "stdio" && pinned.tls_spki_sha256 === undefined) {
    const { tls_spki_sha256: _ignored, ...rest } = live;
    l = rest;
  }
  return diffJson(pinned, l);
}
