/**
 * The sealed policy artifact: the reference the governor enforces against.
 * An issuer (a person or a release pipeline, holding an Ed25519 key the
 * gateway never sees) signs the hashes of the policy bundle, its schema and
 * the approved catalog, the enforcement mode and parameters, and a validity
 * window. The governor refuses to start unless the artifact verifies against
 * the issuer key pinned in its config and every hash matches what is on disk;
 * receipts and claims then name the artifact's hash.
 *
 * Signature: Ed25519 over "cmcp.policy-artifact.v1\n" ‖ JCS(artifact without
 * `sig`). Artifact hash: SHA-256 of JCS(artifact with `sig`).
 */
import { Ajv2020 } from "ajv/dist/2020.js";
import { canonicalBytes } from "./canonical-json.js";
import { concatBytes, fromBase64, toBase64, utf8 } from "./encoding.js";
import { isCmcpError } from "./errors.js";
import { sha256Hex } from "./hash.js";
import { keyId, verifySignature, type Signer } from "./keys.js";
import { parseJson } from "./strict-json.js";
import type { EnforcementMode } from "./trace-claim.js";
import artifactSchema from "./schemas/policy-artifact-v1.schema.json" with { type: "json" };

export const POLICY_ARTIFACT_FORMAT = "cmcp.policy-artifact.v1";
export const ARTIFACT_SIGNING_CONTEXT = "cmcp.policy-artifact.v1\n";

/** What a parser of artifact files accepts: artifacts are small. */
export const ARTIFACT_JSON_LIMITS = {
  maxBytes: 64 * 1024,
  maxDepth: 8,
  maxStringLength: 4096,
  maxMembers: 64,
};

export const DRIFT_ACTIONS = ["alert", "deny_tool", "isolate_server", "quarantine"] as const;
export type DriftAction = (typeof DRIFT_ACTIONS)[number];

export interface PolicyArtifact {
  format: typeof POLICY_ARTIFACT_FORMAT;
  policy: {
    /** SHA-256 (hex) over the canonical listing of the bundle's files. */
    bundle_hash: string;
    schema_hash: string;
    version: string;
  };
  catalog_hash: string | null;
  enforcement_mode: EnforcementMode;
  /** Expected runtime measurement (hex), filled once runtime measurement lands. */
  runtime_measurement: string | null;
  enforcement: {
    measurement_interval_seconds: number;
    /** What the governor does on catalog or runtime drift; "alert" is implied. */
    on_drift: DriftAction;
  };
  /** RFC 3339 UTC, whole seconds. */
  not_before: string;
  expires: string;
  provenance: { source_commit: string | null; author: string; approver: string | null };
  /** True when a dev-mode gateway sealed its own artifact with a throwaway key. */
  self_sealed: boolean;
  issuer: { kid: string; public_key: string };
  sig: string;
}

export type UnsignedPolicyArtifact = Omit<PolicyArtifact, "sig" | "issuer" | "format">;

const ajv = new Ajv2020({ strict: true, strictRequired: false, allErrors: false });
export const validatePolicyArtifact = ajv.compile<PolicyArtifact>(artifactSchema);

export function artifactSigningBytes(artifact: Omit<PolicyArtifact, "sig">): Uint8Array {
  return concatBytes(utf8(ARTIFACT_SIGNING_CONTEXT), canonicalBytes(artifact));
}

export function sealArtifact(fields: UnsignedPolicyArtifact, issuer: Signer): PolicyArtifact {
  const unsigned: Omit<PolicyArtifact, "sig"> = {
    format: POLICY_ARTIFACT_FORMAT,
    ...fields,
    issuer: { kid: issuer.keyId, public_key: toBase64(issuer.publicKey) },
  };
  const artifact = { ...unsigned, sig: toBase64(issuer.sign(artifactSigningBytes(unsigned))) };
  if (!validatePolicyArtifact(artifact)) {
    const e = validatePolicyArtifact.errors?.[0];
    throw new TypeError(`artifact fields do not match the schema: ${e?.instancePath || "/"} ${e?.message}`);
  }
  return artifact;
}

export function artifactHash(artifact: PolicyArtifact): string {
  return sha256Hex(canonicalBytes(artifact));
}

/** Which check failed; `cmcp start` and the verifier name it. */
export type ArtifactCheck = "format" | "issuer" | "signature" | "not-yet-valid" | "expired";

export type ArtifactResult =
  | { ok: true; artifact: PolicyArtifact; hash: string }
  | { ok: false; check: ArtifactCheck; message: string; artifact?: PolicyArtifact };

export interface ArtifactCheckOptions {
  /** The pinned issuer key (raw 32 bytes). Never the key the artifact carries. */
  issuerKey: Uint8Array;
  /** Validity is checked at this time; omit to skip the window (an auditor checks receipts' times instead). */
  now?: Date;
}

/** Parses artifact bytes strictly, then checks them; a result, never a throw. */
export function readPolicyArtifact(bytes: Uint8Array, options: ArtifactCheckOptions): ArtifactResult {
  let value: unknown;
  try {
    value = parseJson(bytes, ARTIFACT_JSON_LIMITS);
  } catch (err) {
    return {
      ok: false,
      check: "format",
      message: `not strict JSON: ${isCmcpError(err) ? err.message : String(err)}`,
    };
  }
  return checkPolicyArtifact(value, options);
}

/**
 * Checks a parsed artifact: schema, issuer pinned, signature, validity
 * window. The order is fixed so that a tampered artifact reports the same
 * check every time.
 */
export function checkPolicyArtifact(value: unknown, options: ArtifactCheckOptions): ArtifactResult {
  if (!validatePolicyArtifact(value)) {
    const e = validatePolicyArtifact.errors?.[0];
    return {
      ok: false,
      check: "format",
      message: `does not match the policy-artifact-v1 schema: ${e ? `${e.instancePath || "/"} ${e.message}` : "invalid"}`,
    };
  }
  const artifact = value;
  const pinnedKid = keyId(options.issuerKey);
  if (artifact.issuer.kid !== pinnedKid) {
    return {
      ok: false,
      check: "issuer",
      message: `sealed by issuer ${artifact.issuer.kid.slice(0, 16)}…, not the pinned issuer ${pinnedKid.slice(0, 16)}…`,
      artifact,
    };
  }
  let good: boolean;
  try {
    const { sig, ...unsigned } = artifact;
    good =
      toBase64(options.issuerKey) === artifact.issuer.public_key &&
      verifySignature(options.issuerKey, artifactSigningBytes(unsigned), fromBase64(sig, 64));
  } catch {
    good = false;
  }
  if (!good) {
    return {
      ok: false,
      check: "signature",
      message: "the signature does not verify against the pinned issuer key",
      artifact,
    };
  }
  const notBefore = Date.parse(artifact.not_before);
  const expires = Date.parse(artifact.expires);
  if (!(notBefore < expires)) {
    return { ok: false, check: "format", message: "not_before is not before expires", artifact };
  }
  if (options.now) {
    const now = options.now.getTime();
    if (now < notBefore)
      return {
        ok: false,
        check: "not-yet-valid",
        message: `not valid before ${artifact.not_before}`,
        artifact,
      };
    if (now >= expires)
      return { ok: false, check: "expired", message: `expired at ${artifact.expires}`, artifact };
  }
  return { ok: true, artifact, hash: artifactHash(artifact) };
}

/** RFC 3339 UTC with whole seconds, the only time form the schema accepts. */
export function artifactTime(d: Date): string {
  return d.toISOString().replace(/\.\d{3}Z$/, "Z");
}
