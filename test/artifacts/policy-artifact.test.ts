import { describe, expect, it } from "vitest";
import { canonicalBytes } from "../../artifacts/canonical-json.js";
import { generateSigner } from "../../artifacts/keys.js";
import {
  artifactHash,
  checkPolicyArtifact,
  readPolicyArtifact,
  sealArtifact,
  type PolicyArtifact,
  type UnsignedPolicyArtifact,
} from "../../artifacts/policy-artifact.js";

const issuer = generateSigner();
const fields: UnsignedPolicyArtifact = {
  policy: { bundle_hash: "a".repeat(64), schema_hash: "b".repeat(64), version: "2026.11.1" },
  catalog_hash: "c".repeat(64),
  enforcement_mode: "enforcing",
  runtime_measurement: null,
  enforcement: { measurement_interval_seconds: 60, on_drift: "deny_tool" },
  not_before: "2026-11-01T00:00:00Z",
  expires: "2027-11-01T00:00:00Z",
  provenance: { source_commit: "0123456789abcdef", author: "alice", approver: "bob" },
  self_sealed: false,
};
const now = new Date("2026-11-21T12:00:00Z");

describe("sealed policy artifact", () => {
  it("verifies against the pinned issuer and hashes its canonical bytes", () => {
    const a = sealArtifact(fields, issuer);
    const r = checkPolicyArtifact(a, { issuerKey: issuer.publicKey, now });
    expect(r.ok).toBe(true);
    if (r.ok) expect(r.hash).toBe(artifactHash(a));
    expect(readPolicyArtifact(canonicalBytes(a), { issuerKey: issuer.publicKey, now }).ok).toBe(true);
  });

  it("refuses an artifact sealed by another key, even though it carries that key", () => {
    const a = sealArtifact(fields, generateSigner());
    const r = checkPolicyArtifact(a, { issuerKey: issuer.publicKey, now });
    expect(r).toMatchObject({ ok: false, check: "issuer" });
  });

  it("refuses a re-signed artifact whose issuer block names the pinned key", () => {
    const other = generateSigner();
    const a = sealArtifact(fields, other);
    const forged: PolicyArtifact = {
      ...a,
      issuer: { kid: issuer.keyId, public_key: Buffer.from(issuer.publicKey).toString("base64") },
    };
    expect(checkPolicyArtifact(forged, { issuerKey: issuer.publicKey, now })).toMatchObject({
      ok: false,
      check: "signature",
    });
  });

  it("reports a signature failure for a change to any signed field", () => {
    const a = sealArtifact(fields, issuer);
    const changes: [string, (x: PolicyArtifact) => void][] = [
      ["bundle hash", (x) => (x.policy.bundle_hash = "d".repeat(64))],
      ["schema hash", (x) => (x.policy.schema_hash = "d".repeat(64))],
      ["version", (x) => (x.policy.version = "2026.11.2")],
      ["catalog hash", (x) => (x.catalog_hash = null)],
      ["mode", (x) => (x.enforcement_mode = "advisory")],
      ["measurement", (x) => (x.runtime_measurement = "e".repeat(96))],
      ["cadence", (x) => (x.enforcement.measurement_interval_seconds = 61)],
      ["drift action", (x) => (x.enforcement.on_drift = "alert")],
      ["not_before", (x) => (x.not_before = "2026-10-01T00:00:00Z")],
      ["expires", (x) => (x.expires = "2030-11-01T00:00:00Z")],
      ["commit", (x) => (x.provenance.source_commit = null)],
      ["author", (x) => (x.provenance.author = "mallory")],
      ["approver", (x) => (x.provenance.approver = null)],
      ["self_sealed", (x) => (x.self_sealed = true)],
    ];
    for (const [what, change] of changes) {
      const t = structuredClone(a);
      change(t);
      expect(checkPolicyArtifact(t, { issuerKey: issuer.publicKey, now }), what).toMatchObject({
        ok: false,
        check: "signature",
      });
    }
  });

  it("checks the validity window when given a time", () => {
    const a = sealArtifact(fields, issuer);
    expect(
      checkPolicyArtifact(a, { issuerKey: issuer.publicKey, now: new Date("2026-10-31T23:59:59Z") }),
    ).toMatchObject({ ok: false, check: "not-yet-valid" });
    expect(
      checkPolicyArtifact(a, { issuerKey: issuer.publicKey, now: new Date("2027-11-01T00:00:00Z") }),
    ).toMatchObject({ ok: false, check: "expired" });
    expect(checkPolicyArtifact(a, { issuerKey: issuer.publicKey }).ok).toBe(true);
    const inverted = sealArtifact(
      { ...fields, not_before: fields.expires, expires: fields.not_before },
      issuer,
    );
    expect(checkPolicyArtifact(inverted, { issuerKey: issuer.publicKey })).toMatchObject({
      ok: false,
      check: "format",
    });
  });

  it("returns a format failure, never a throw, for malformed input", () => {
    const a = sealArtifact(fields, issuer);
    const good = new TextDecoder().decode(canonicalBytes(a));
    const inputs = [
      "",
      "null",
      "[]",
      "{",
      good.replace('"format"', '"format","format"'),
      good.slice(0, -1),
      good.replace("}", ',"extra":1}'),
      good.replace('"2026-11-01T00:00:00Z"', '"2026-11-01"'),
      good.replace(/"sig":"[^"]+"/, '"sig":"AA=="'),
      "\uFEFF" + good,
      "[".repeat(100) + "]".repeat(100),
      `{"a":"${"x".repeat(70_000)}"}`,
    ];
    for (const text of inputs) {
      const r = readPolicyArtifact(new TextEncoder().encode(text), { issuerKey: issuer.publicKey, now });
      expect(r.ok, text.slice(0, 40)).toBe(false);
      if (!r.ok) expect(r.check).toBe("format");
    }
  });

  it("never accepts a single-byte mutation of a sealed artifact (seeded)", () => {
    const seed = Number(process.env.ARTIFACT_FUZZ_SEED ?? Date.now() % 1_000_000);
    console.log(`artifact mutation seed ${seed}`);
    let s = seed;
    const rand = () => (s = (s * 1103515245 + 12345) % 2147483648) / 2147483648;
    const bytes = canonicalBytes(sealArtifact(fields, issuer));
    for (let i = 0; i < 500; i++) {
      const m = Uint8Array.from(bytes);
      const at = Math.floor(rand() * m.length);
      const b = Math.floor(rand() * 256);
      if (m[at] === b) continue;
      m[at] = b;
      const r = readPolicyArtifact(m, { issuerKey: issuer.publicKey, now });
      expect(r.ok, `seed ${seed}, byte ${at} := ${b}`).toBe(false);
    }
  });
});
