import { chmod, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { assertReadableBy, ensureRuntimeUser } from "../../governor/runtime-user.js";

describe("runtime user", () => {
  it("is an unprivileged system account, created once", () => {
    const id = ensureRuntimeUser("cmcp-runtime");
    if (process.getuid!() !== 0) return expect(id).toBeNull();
    expect(id!.uid).toBeGreaterThan(0);
    expect(ensureRuntimeUser("cmcp-runtime")).toEqual(id);
  });

  it("refuses to start a runtime that could not read its own code", async () => {
    const id = ensureRuntimeUser("cmcp-runtime");
    if (!id) return;
    const dir = await mkdtemp(join(tmpdir(), "cmcp-perm-"));
    try {
      await mkdir(join(dir, "inner"));
      const file = join(dir, "inner", "runtime.js");
      await writeFile(file, "");
      await chmod(file, 0o644);
      await chmod(dir, 0o755);
      await expect(assertReadableBy(id, [file])).resolves.toBeUndefined();
      await chmod(dir, 0o700);
      await expect(assertReadableBy(id, [file])).rejects.toMatchObject({ code: "runtime.unreadable" });
      await chmod(dir, 0o755);
      await chmod(file, 0o600);
      await expect(assertReadableBy(id, [file])).rejects.toThrow(/cannot read/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
