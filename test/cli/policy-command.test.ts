import { cp, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadPolicyBundle, shippedBundlePath } from "../../governor/cedar-bundle.js";
import { cmcp } from "../helpers/cli.js";

const STRICT = shippedBundlePath("baseline-strict");
const DEMO = shippedBundlePath("demo-advisory");
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "cmcp-policy-cli-"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A copy of a shipped bundle to modify. */
async function copyOf(bundle: string, name: string): Promise<string> {
  const to = join(dir, name);
  await cp(bundle, to, { recursive: true });
  return to;
}

describe("cmcp policy", () => {
  it("--help explains the subcommands and exit codes", async () => {
    const r = await cmcp(["policy", "--help"]);
    expect(r.code).toBe(0);
    for (const word of ["validate", "hash", "test", "@id", "Exit 0", "cannot be read"])
      expect(r.stdout).toContain(word);
    const t = await cmcp(["policy", "test", "--help"]);
    expect(t.code).toBe(0);
    expect(t.stdout).toMatch(/tests\/\*\.json/);
    expect(t.stdout).toMatch(/--schema <file>/);
  });

  it("a missing argument is a usage error (exit 2)", async () => {
    const r = await cmcp(["policy", "validate"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/missing required argument/);
  });

  it("validate: exit 0 listing the policies of a shipped bundle", async () => {
    const r = await cmcp(["policy", "validate", STRICT]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/read-only\/filesystem-read-only\s+permit allow\s+\(read-only\.cedar:\d+\)/);
    expect(r.stdout).toMatch(
      /^VALID: 10 policies in 6 files, bundle sha256:[0-9a-f]{64}, schema sha256:[0-9a-f]{64}$/m,
    );
    const j = await cmcp(["policy", "validate", DEMO, "--json"]);
    expect(j.code).toBe(0);
    const report = JSON.parse(j.stdout);
    expect(report.ok).toBe(true);
    expect(report.policies).toContainEqual(
      expect.objectContaining({
        id: "advisories/get-env-redact",
        outcome: "redact",
        redact: ["class:credential"],
      }),
    );
  });

  it("validate: exit 1 naming the policy and the schema error", async () => {
    const bad = await copyOf(STRICT, "bad-schema");
    await writeFile(
      join(bad, "typo.cedar"),
      `@id("drift-typo")\nforbid (principal, action, resource) when { context.drfit == "drifted" };\n`,
    );
    const r = await cmcp(["policy", "validate", bad]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/policy typo\/drift-typo \(typo\.cedar:1\): .*drfit/);
    expect(r.stderr).toMatch(/\[policy\.validation\]/);
    const j = await cmcp(["policy", "validate", bad, "--json"]);
    expect(j.code).toBe(1);
    expect(JSON.parse(j.stdout)).toMatchObject({ ok: false, code: "policy.validation" });
  });

  it("validate: exit 1 for a missing @id, exit 2 for an unreadable bundle or schema", async () => {
    const bad = await copyOf(STRICT, "no-id");
    await writeFile(join(bad, "anon.cedar"), "permit (principal, action, resource);\n");
    const r = await cmcp(["policy", "validate", bad]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/anon\.cedar:1: policy has no @id/);
    const missing = await cmcp(["policy", "validate", join(dir, "nope")]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/cannot read bundle/);
    const noSchema = await cmcp(["policy", "validate", STRICT, "--schema", join(dir, "nope.cedarschema")]);
    expect(noSchema.code).toBe(2);
  });

  it("hash: prints the bundle and schema hashes the loader computes", async () => {
    const b = await loadPolicyBundle(DEMO);
    const r = await cmcp(["policy", "hash", DEMO]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`bundle  sha256:${b.hash}`);
    expect(r.stdout).toContain(`schema  sha256:${b.schema.hash}`);
    expect(r.stdout).toMatch(/[0-9a-f]{64}\s+\d+\s+tests\/decisions\.json/);
    const j = JSON.parse((await cmcp(["policy", "hash", DEMO, "--json"])).stdout);
    expect(j).toEqual({ bundle_hash: b.hash, schema_hash: b.schema.hash, files: b.listing });
  });

  it("test: the shipped decision tables pass (exit 0)", async () => {
    for (const bundle of [STRICT, DEMO]) {
      const r = await cmcp(["policy", "test", bundle]);
      expect(r.code, r.stdout + r.stderr).toBe(0);
      expect(r.stdout).toMatch(/^PASSED: \d+ passed, 0 failed \(bundle sha256:[0-9a-f]{64}\)$/m);
      expect(r.stdout).not.toMatch(/^FAIL /m);
    }
  });

  it("test: exit 1 naming a failing case, and when there are no cases", async () => {
    const bad = await copyOf(DEMO, "failing");
    await writeFile(
      join(bad, "tests", "extra.json"),
      JSON.stringify({
        defaults: { agent: "dev-agent", server: "everything", method: "tools/call" },
        cases: [{ name: "echo needs approval?", request: { tool: "echo" }, expect: "require_approval" }],
      }),
    );
    const r = await cmcp(["policy", "test", bad]);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(
      /^FAIL tests\/extra\.json#1 echo needs approval\?: expected require_approval, got allow$/m,
    );
    expect(r.stdout).toMatch(/^FAILED: \d+ passed, 1 failed/m);
    const j = JSON.parse((await cmcp(["policy", "test", bad, "--json"])).stdout);
    expect(j).toMatchObject({ ok: false, failed: 1 });

    const empty = join(dir, "empty");
    await cp(join(DEMO, "base.cedar"), join(empty, "base.cedar"), { recursive: true });
    const e = await cmcp(["policy", "test", empty]);
    expect(e.code).toBe(1);
    expect(e.stdout).toMatch(/no test cases found/);
  });
});
