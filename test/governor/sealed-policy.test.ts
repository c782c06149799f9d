import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { canonicalBytes } from "../../artifacts/canonical-json.js";
import { toBase64 } from "../../artifacts/encoding.js";
import { generateSigner } from "../../artifacts/keys.js";
import {
  artifactHash,
  sealArtifact,
  type PolicyArtifact,
  type UnsignedPolicyArtifact,
} from "../../artifacts/policy-artifact.js";
import { CedarEngine } from "../../governor/cedar-policy.js";
import type { GatewayConfig } from "../../governor/config.js";
import { loadSealedPolicy } from "../../governor/sealed-policy.js";
import { ALLOW_ALL } from "../helpers/gateway.js";

let dir: string;
let policy: string;
let fields: UnsignedPolicyArtifact;
const issuer = generateSigner();
const now = new Date("2026-11-21T12:00:00Z");

type PolicyConfig = Pick<GatewayConfig, "policy" | "schema" | "artifact" | "mode" | "dev">;

async function configFor(
  artifact: PolicyArtifact | Uint8Array,
  over: Partial<PolicyConfig> = {},
): Promise<PolicyConfig & { artifact: NonNullable<PolicyConfig["artifact"]> }> {
  const file = join(dir, `artifact-${Math.random().toString(36).slice(2)}.json`);
  await writeFile(file, artifact instanceof Uint8Array ? artifact : canonicalBytes(artifact));
  return {
    policy,
    schema: null,
    mode: null,
    dev: false,
    artifact: { file, issuer_key: toBase64(issuer.publicKey) },
    ...over,
  } as PolicyConfig & { artifact: NonNullable<PolicyConfig["artifact"]> };
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "cmcp-sealed-"));
  policy = join(dir, "policy");
  await mkdir(policy);
  await writeFile(join(policy, "allow-all.cedar"), ALLOW_ALL);
  const engine = await CedarEngine.load(policy);
  fields = {
    policy: { bundle_hash: engine.bundleHash, schema_hash: engine.schemaHash, version: "v1" },
    catalog_hash: null,
    enforcement_mode: "enforcing",
    runtime_measurement: null,
    enforcement: { measurement_interval_seconds: 60, on_drift: "deny_tool" },
    not_before: "2026-11-01T00:00:00Z",
    expires: "2026-12-01T00:00:00Z",
    provenance: { source_commit: null, author: "alice", approver: "bob" },
    self_sealed: false,
  };
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe("start-up check of the sealed policy artifact", () => {
  it("loads the sealed bundle in the sealed mode", async () => {
    const a = sealArtifact(fields, issuer);
    const sealed = await loadSealedPolicy(await configFor(a), now);
    expect(sealed.mode).toBe("enforcing");
    expect(sealed.artifactHash).toBe(artifactHash(a));
    expect(sealed.engine.bundleHash).toBe(fields.policy.bundle_hash);
  });

  it("refuses a tampered artifact, whatever field changed, naming the signature check", async () => {
    const a = sealArtifact(fields, issuer);
    const changes: ((x: PolicyArtifact) => void)[] = [
      (x) => (x.policy.bundle_hash = "d".repeat(64)),
      (x) => (x.policy.schema_hash = "d".repeat(64)),
      (x) => (x.policy.version = "v2"),
      (x) => (x.catalog_hash = "d".repeat(64)),
      (x) => (x.enforcement_mode = "advisory"),
      (x) => (x.runtime_measurement = "e".repeat(64)),
      (x) => (x.enforcement.measurement_interval_seconds = 1),
      (x) => (x.enforcement.on_drift = "alert"),
      (x) => (x.not_before = "2026-11-02T00:00:00Z"),
      (x) => (x.expires = "2030-01-01T00:00:00Z"),
      (x) => (x.provenance.source_commit = "abcdef0"),
      (x) => (x.provenance.author = "mallory"),
      (x) => (x.provenance.approver = null),
      (x) => (x.self_sealed = true),
    ];
    for (const change of changes) {
      const t = structuredClone(a);
      change(t);
      await expect(loadSealedPolicy(await configFor(t), now)).rejects.toMatchObject({
        code: "artifact.signature",
        message: expect.stringMatching(/issuer signature: the signature does not verify/),
      });
    }
  });

  it("refuses an artifact sealed by another issuer, an expired one and one not yet valid", async () => {
    await expect(
      loadSealedPolicy(await configFor(sealArtifact(fields, generateSigner())), now),
    ).rejects.toMatchObject({
      code: "artifact.issuer",
      message: expect.stringMatching(/not the pinned issuer/),
    });
    const a = sealArtifact(fields, issuer);
    await expect(
      loadSealedPolicy(await configFor(a), new Date("2026-12-01T00:00:00Z")),
    ).rejects.toMatchObject({
      code: "artifact.expired",
      message: expect.stringMatching(/expired at 2026-12-01T00:00:00Z/),
    });
    await expect(
      loadSealedPolicy(await configFor(a), new Date("2026-10-01T00:00:00Z")),
    ).rejects.toMatchObject({
      code: "artifact.not-yet-valid",
    });
  });

  it("refuses when a hash in the artifact differs from what is on disk", async () => {
    const other = sealArtifact(
      { ...fields, policy: { ...fields.policy, bundle_hash: "d".repeat(64) } },
      issuer,
    );
    await expect(loadSealedPolicy(await configFor(other), now)).rejects.toMatchObject({
      code: "artifact.policy-hash",
      message: expect.stringMatching(/hashes to/),
    });
    const schema = sealArtifact(
      { ...fields, policy: { ...fields.policy, schema_hash: "d".repeat(64) } },
      issuer,
    );
    await expect(loadSealedPolicy(await configFor(schema), now)).rejects.toMatchObject({
      code: "artifact.schema-hash",
    });
    const catalog = sealArtifact({ ...fields, catalog_hash: "d".repeat(64) }, issuer);
    await expect(loadSealedPolicy(await configFor(catalog), now)).rejects.toMatchObject({
      code: "artifact.catalog-hash",
    });
    // A policy edited after sealing: the bundle hash moves.
    const a = sealArtifact(fields, issuer);
    const cfg = await configFor(a);
    const edited = join(dir, "edited");
    await mkdir(edited);
    await writeFile(join(edited, "allow-all.cedar"), ALLOW_ALL.replace("permit", "forbid"));
    await expect(loadSealedPolicy({ ...cfg, policy: edited }, now)).rejects.toMatchObject({
      code: "artifact.policy-hash",
    });
  });

  it("refuses a config that names another mode than the artifact", async () => {
    const a = sealArtifact(fields, issuer);
    await expect(loadSealedPolicy(await configFor(a, { mode: "advisory" }), now)).rejects.toMatchObject({
      code: "artifact.mode",
      message: expect.stringMatching(/seals mode enforcing, but the config asks for advisory/),
    });
    expect((await loadSealedPolicy(await configFor(a, { mode: "enforcing" }), now)).mode).toBe("enforcing");
  });

  it("refuses a self-sealed artifact, a missing one and malformed bytes outside dev mode", async () => {
    const self = sealArtifact({ ...fields, self_sealed: true }, issuer);
    await expect(loadSealedPolicy(await configFor(self), now)).rejects.toMatchObject({
      code: "artifact.self-sealed",
    });
    const cfg = await configFor(sealArtifact(fields, issuer));
    await expect(loadSealedPolicy({ ...cfg, artifact: null }, now)).rejects.toMatchObject({
      code: "artifact.missing",
    });
    await expect(
      loadSealedPolicy({ ...cfg, artifact: { ...cfg.artifact, file: join(dir, "nope.json") } }, now),
    ).rejects.toMatchObject({ code: "artifact.read" });
    for (const bytes of ["", "{", "[]", '{"format":"cmcp.policy-artifact.v1"}', "\u0000".repeat(70_000)]) {
      await expect(
        loadSealedPolicy(await configFor(new TextEncoder().encode(bytes)), now),
        bytes.slice(0, 20),
      ).rejects.toMatchObject({ code: "artifact.format" });
    }
  });

  it("dev mode seals its own artifact with a throwaway key and says so", async () => {
    const sealed = await loadSealedPolicy({
      policy: null,
      schema: null,
      artifact: null,
      mode: "advisory",
      dev: true,
    });
    expect(sealed.artifact.self_sealed).toBe(true);
    expect(sealed.mode).toBe("advisory");
    expect(sealed.artifact.provenance.author).toMatch(/self-sealed/);
    expect(sealed.artifact.policy.bundle_hash).toBe(sealed.engine.bundleHash);
  });

  it("refuses a bundle with a schema error, naming the policy", async () => {
    const bad = join(dir, "bad");
    await mkdir(bad);
    await writeFile(
      join(bad, "typo.cedar"),
      '@id("typo")\npermit (principal, action == Cmcp::Action::"tools/call", resource) when { context.no_such_field };\n',
    );
    const cfg = await configFor(sealArtifact(fields, issuer));
    await expect(loadSealedPolicy({ ...cfg, policy: bad }, now)).rejects.toThrow(
      /refused to load.*typo\/typo/s,
    );
  });
});
