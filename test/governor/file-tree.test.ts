import { createServer } from "node:net";
import { mkdir, mkdtemp, realpath, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { canonicalize } from "../../artifacts/canonical-json.js";
import { sha256Hex } from "../../artifacts/hash.js";
import {
  readCapped,
  treeHash,
  treeListing,
  walkFileTree,
  type TreeProblem,
  type WalkOptions,
} from "../../governor/file-tree.js";

/** Carries the problem so tests can assert on it rather than on wording. */
class ProblemError extends Error {
  constructor(
    readonly problem: TreeProblem,
    readonly root: string,
  ) {
    super(`${problem.kind} at ${root}`);
  }
}

const LIMITS = { maxFiles: 100, maxFileBytes: 1024, maxTotalBytes: 4096, maxDepth: 8 };

function options(over: Partial<WalkOptions> = {}): WalkOptions {
  return {
    limits: LIMITS,
    skipDotNames: false,
    rejectOddNames: false,
    keepBytes: false,
    error: (problem, root) => new ProblemError(problem, root),
    ...over,
  };
}

async function problemOf(dir: string, over: Partial<WalkOptions> = {}): Promise<TreeProblem> {
  try {
    await walkFileTree(dir, options(over));
  } catch (err) {
    if (err instanceof ProblemError) return err.problem;
    throw err;
  }
  throw new Error("the walk succeeded");
}

const sha = (text: string) => sha256Hex(new TextEncoder().encode(text));

let base: string;
beforeAll(async () => {
  // Resolved: the walker reports real paths and tmpdir may be a link (macOS).
  base = await realpath(await mkdtemp(join(tmpdir(), "cmcp-tree-")));
});
afterAll(async () => {
  await rm(base, { recursive: true, force: true });
});

async function makeTree(name: string, files: Record<string, string>): Promise<string> {
  const root = join(base, name);
  await mkdir(root, { recursive: true });
  for (const [rel, text] of Object.entries(files)) {
    await mkdir(dirname(join(root, rel)), { recursive: true });
    await writeFile(join(root, rel), text);
  }
  return root;
}

describe("walkFileTree listing", () => {
  it("lists every file sorted by full path, whatever the creation order, and hashes the JCS listing", async () => {
    const files = { "a/b": "1", "a-b": "22", B: "333", "z/y/x.txt": "", é: "4" };
    const one = await makeTree("order-1", files);
    const reversed = Object.fromEntries(Object.entries(files).reverse());
    const two = await makeTree("order-2", reversed);
    const t1 = await walkFileTree(one, options());
    const t2 = await walkFileTree(two, options());
    const expected = [
      { path: "B", sha256: sha("333"), size: 3 },
      { path: "a-b", sha256: sha("22"), size: 2 },
      { path: "a/b", sha256: sha("1"), size: 1 },
      { path: "z/y/x.txt", sha256: sha(""), size: 0 },
      { path: "é", sha256: sha("4"), size: 1 },
    ];
    expect(t1.files).toEqual(expected);
    expect(t2.files).toEqual(expected);
    expect(t1.root).toBe(one);
    expect(t1.bytes).toBe(7);
    expect(treeHash(t1.files)).toBe(sha(canonicalize(expected)));
    expect(treeHash(t2.files)).toBe(treeHash(t1.files));
  });

  it("keeps bytes only when asked; the listing and hash ignore them", async () => {
    const root = await makeTree("bytes", { "b.txt": "bee", "a.txt": "ay" });
    const plain = await walkFileTree(root, options());
    expect(plain.files.every((f) => !("bytes" in f))).toBe(true);
    const kept = await walkFileTree(root, { ...options(), keepBytes: true });
    expect(kept.files.map((f) => new TextDecoder().decode(f.bytes))).toEqual(["ay", "bee"]);
    expect(treeListing(kept.files)).toEqual(plain.files);
    expect(treeHash(kept.files)).toBe(treeHash(plain.files));
    // treeListing sorts whatever it is given.
    expect(treeListing([...plain.files].reverse())).toEqual(plain.files);
  });

  it("skips dot names (and what is under them) only when told to", async () => {
    const root = await makeTree("dots", {
      "a.txt": "a",
      ".hidden": "h",
      ".git/HEAD": "ref",
      "sub/.swp": "s",
    });
    const skipped = await walkFileTree(root, options({ skipDotNames: true }));
    expect(skipped.files.map((f) => f.path)).toEqual(["a.txt"]);
    const all = await walkFileTree(root, options());
    expect(all.files.map((f) => f.path)).toEqual([".git/HEAD", ".hidden", "a.txt", "sub/.swp"]);
  });

  it("refuses control characters and backslashes in names only when told to", async () => {
    const root = await makeTree("odd", { "sub/a\\b": "x" });
    expect(await problemOf(root, { rejectOddNames: true })).toEqual({ kind: "name-chars", path: "sub/a\\b" });
    await rm(join(root, "sub", "a\\b"));
    await writeFile(join(root, "sub", "new\nline"), "x");
    expect(await problemOf(root, { rejectOddNames: true })).toMatchObject({ kind: "name-chars" });
    expect((await walkFileTree(root, options())).files.map((f) => f.path)).toEqual(["sub/new\nline"]);
  });

  it("refuses a name that is not UTF-8", async () => {
    const root = await makeTree("latin1", { "sub/ok": "x" });
    await writeFile(Buffer.concat([Buffer.from(join(root, "sub") + "/"), Buffer.from([0x63, 0xe9])]), "x");
    expect(await problemOf(root)).toEqual({ kind: "name-encoding", path: "sub" });
  });
});

describe("walkFileTree links and special files", () => {
  it("hashes a link to a file inside the root as that file, under the link's path", async () => {
    const root = await makeTree("link-in", { "lib/util.js": "u" });
    await symlink("lib/util.js", join(root, "alias.js"));
    await symlink(join(root, "lib", "util.js"), join(root, "lib", "abs.js"));
    const t = await walkFileTree(root, options());
    expect(t.files).toEqual([
      { path: "alias.js", sha256: sha("u"), size: 1 },
      { path: "lib/abs.js", sha256: sha("u"), size: 1 },
      { path: "lib/util.js", sha256: sha("u"), size: 1 },
    ]);
  });

  it("refuses links leaving the root, broken links and links to directories", async () => {
    await writeFile(join(base, "outside.txt"), "o");
    const root = await makeTree("link-out", { "a.txt": "a", "sub/b.txt": "b" });
    await symlink(join(base, "outside.txt"), join(root, "sub", "escape"));
    expect(await problemOf(root)).toEqual({
      kind: "link-outside",
      path: "sub/escape",
      target: join(base, "outside.txt"),
    });
    await rm(join(root, "sub", "escape"));
    // A sibling whose name starts with the root's is still outside.
    await makeTree("link-out-2", { "x.txt": "x" });
    await symlink("../link-out-2/x.txt", join(root, "prefix"));
    expect(await problemOf(root)).toMatchObject({ kind: "link-outside", path: "prefix" });
    await rm(join(root, "prefix"));
    await symlink(base, join(root, "up"));
    expect(await problemOf(root)).toMatchObject({ kind: "link-outside", path: "up" });
    await rm(join(root, "up"));
    await symlink("nowhere", join(root, "broken"));
    expect(await problemOf(root)).toEqual({ kind: "link-broken", path: "broken" });
    await rm(join(root, "broken"));
    await symlink(".", join(root, "sub", "loop"));
    expect(await problemOf(root)).toEqual({ kind: "link-directory", path: "sub/loop" });
    await rm(join(root, "sub", "loop"));
    expect((await walkFileTree(root, options())).files.map((f) => f.path)).toEqual(["a.txt", "sub/b.txt"]);
  });

  it("refuses a file that is neither regular nor a directory", async () => {
    const root = await makeTree("socket", { "a.txt": "a" });
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(join(root, "s.sock"), resolve));
    try {
      expect(await problemOf(root)).toEqual({ kind: "not-regular", path: "s.sock" });
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it("reports a missing root or one that is not a directory with the path as given", async () => {
    const missing = join(base, "missing");
    await expect(walkFileTree(missing, options())).rejects.toMatchObject({
      problem: { kind: "root" },
      root: missing,
    });
    const file = join(await makeTree("file-root", { "f.txt": "f" }), "f.txt");
    await expect(walkFileTree(file, options())).rejects.toMatchObject({
      problem: { kind: "root-not-dir" },
      root: file,
    });
  });
});

describe("walkFileTree limits", () => {
  it("enforces the file count, file size, total size and depth, each at its edge", async () => {
    const root = await makeTree("limits", {
      "a.txt": "x".repeat(10),
      "b.txt": "y".repeat(20),
      "d1/d2/c.txt": "z",
    });
    const limits = (over: Partial<typeof LIMITS>) => ({ limits: { ...LIMITS, ...over } });
    expect((await walkFileTree(root, options(limits({ maxFiles: 3 })))).files).toHaveLength(3);
    expect(await problemOf(root, limits({ maxFiles: 2 }))).toEqual({ kind: "too-many-files", limit: 2 });

    expect((await walkFileTree(root, options(limits({ maxFileBytes: 20 })))).bytes).toBe(31);
    expect(await problemOf(root, limits({ maxFileBytes: 19 }))).toEqual({
      kind: "file-too-large",
      path: "b.txt",
      limit: 19,
    });

    await walkFileTree(root, options(limits({ maxTotalBytes: 31 })));
    expect(await problemOf(root, limits({ maxTotalBytes: 30 }))).toEqual({
      kind: "too-many-bytes",
      limit: 30,
    });

    await walkFileTree(root, options(limits({ maxDepth: 3 })));
    expect(await problemOf(root, limits({ maxDepth: 2 }))).toEqual({
      kind: "too-deep",
      path: "d1/d2",
      limit: 2,
    });
    expect(await problemOf(root, limits({ maxDepth: 1 }))).toEqual({
      kind: "too-deep",
      path: "d1",
      limit: 1,
    });
  });

  it("does not count skipped dot names against the limits", async () => {
    const root = await makeTree("limits-dots", { "a.txt": "a", ".git/objects/x/y/z": "big".repeat(100) });
    const t = await walkFileTree(root, {
      ...options({ skipDotNames: true }),
      limits: { maxFiles: 1, maxFileBytes: 1, maxTotalBytes: 1, maxDepth: 1 },
    });
    expect(t.files.map((f) => f.path)).toEqual(["a.txt"]);
  });

  it("throws what the error factory returns", async () => {
    const root = await makeTree("factory", { "a.txt": "a", "b.txt": "b" });
    const err = new RangeError("mine");
    await expect(
      walkFileTree(root, { ...options(), limits: { ...LIMITS, maxFiles: 1 }, error: () => err }),
    ).rejects.toBe(err);
  });
});

describe("readCapped", () => {
  it("reads up to the cap, hashing as it goes, and returns null past it", async () => {
    const root = await makeTree("capped", { f: "x".repeat(3000), empty: "" });
    const f = join(root, "f");
    expect(await readCapped(f, 3000, false)).toEqual({ sha256: sha("x".repeat(3000)), size: 3000 });
    const kept = await readCapped(f, 3000, true);
    expect(kept?.bytes).toEqual(new TextEncoder().encode("x".repeat(3000)));
    expect(await readCapped(f, 2999, false)).toBeNull();
    expect(await readCapped(f, 2999, true)).toBeNull();
    expect(await readCapped(join(root, "empty"), 0, true)).toEqual({
      sha256: sha(""),
      size: 0,
      bytes: new Uint8Array(0),
    });
    await expect(readCapped(join(root, "missing"), 10, false)).rejects.toMatchObject({ code: "ENOENT" });
  });
});
