import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { fromBase64 } from "../../artifacts/encoding.js";
import { checkPolicyArtifact } from "../../artifacts/policy-artifact.js";
import { shippedBundlePath } from "../../governor/cedar-bundle.js";
import { loadSealedPolicy } from "../../governor/sealed-policy.js";
import { cmcp } from "../helpers/cli.js";

let dir: string;
let key: string;
let publicKey: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "cmcp-seal-"));
  key = join(dir, "issuer.key");
  const r = await cmcp(["keygen", "--out", key]);
  expect(r.code, r.stderr).toBe(0);
  publicKey = /public key: (\S+)/.exec(r.stdout)![1]!;
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe("cmcp keygen and cmcp seal", () => {
  it("keygen writes a 0600 PEM key once and refuses to overwrite it", async () => {
    expect((await stat(key)).mode & 0o777).toBe(0o600);
    expect(await readFile(key, "utf8")).toMatch(/^-----BEGIN PRIVATE KEY-----/);
    const again = await cmcp(["keygen", "--out", key]);
    expect(again.code).toBe(2);
    expect(again.stderr).toMatch(/exists; refusing to overwrite/);
  });

  it("seals a shipped bundle into an artifact the gateway's start-up check accepts", async () => {
    const out = join(dir, "strict.artifact.json");
    const policy = shippedBundlePath("baseline-strict");
    const r = await cmcp([
      "seal",
      "--policy",
      policy,
      "--key",
      key,
      "--out",
      out,
      "--mode",
      "enforcing",
      "--author",
      "alice",
      "--approver",
      "bob",
      "--source-commit",
      "0123abcd",
      "--valid-days",
      "7",
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/artifact hash: [0-9a-f]{64}/);
    const value: unknown = JSON.parse(await readFile(out, "utf8"));
    const checked = checkPolicyArtifact(value, { issuerKey: fromBase64(publicKey, 32), now: new Date() });
    expect(checked.ok).toBe(true);
    if (!checked.ok) return;
    expect(checked.artifact).toMatchObject({
      enforcement_mode: "enforcing",
      self_sealed: false,
      provenance: { author: "alice", approver: "bob", source_commit: "0123abcd" },
    });
    const sealed = await loadSealedPolicy({
      policy,
      schema: null,
      mode: "enforcing",
      dev: false,
      artifact: { file: out, issuer_key: publicKey },
    });
    expect(sealed.artifactHash).toBe(checked.hash);
    // Refuses to replace the artifact without --force.
    const again = await cmcp([
      "seal",
      "-p",
      policy,
      "-k",
      key,
      "-o",
      out,
      "-m",
      "enforcing",
      "--author",
      "a",
    ]);
    expect(again.code).toBe(2);
    expect(again.stderr).toMatch(/exists \(use --force/);
  });

  it("refuses bad usage with exit 2 and a message naming the flag", async () => {
    const policy = shippedBundlePath("demo-advisory");
    const base = ["seal", "-p", policy, "-k", key, "-o", join(dir, "x.json"), "--author", "a"];
    const cases: [string[], RegExp][] = [
      [[...base], /--mode/],
      [[...base, "-m", "lenient"], /Allowed choices are enforcing, advisory, silent/],
      [[...base, "-m", "enforcing", "--expires", "tomorrow"], /--expires must be an RFC 3339 UTC time/],
      [[...base, "-m", "enforcing", "--catalog-hash", "xyz"], /--catalog-hash must be 64 lowercase hex/],
      [[...base, "-m", "enforcing", "--expires", "2030-01-01T00:00:00Z", "--valid-days", "3"], /not both/],
      [
        [
          "seal",
          "-p",
          policy,
          "-k",
          join(dir, "none.key"),
          "-o",
          join(dir, "y.json"),
          "-m",
          "silent",
          "--author",
          "a",
        ],
        /cannot read issuer key/,
      ],
    ];
    for (const [args, message] of cases) {
      const r = await cmcp(args);
      expect(r.code, args.join(" ")).toBe(2);
      expect(r.stderr, args.join(" ")).toMatch(message);
    }
  });
});
