/**
 * `cmcp seal`: signs the policy artifact a governor enforces against, with
 * the issuer's key (a file the gateway never reads). The bundle is loaded and
 * validated first, so a bundle that would refuse to load is never sealed.
 */
import { open } from "node:fs/promises";
import { canonicalBytes } from "../artifacts/canonical-json.js";
import { CmcpError } from "../artifacts/errors.js";
import { readSignerFile } from "./key-file.js";
import {
  DRIFT_ACTIONS,
  artifactHash,
  artifactTime,
  sealArtifact,
  type DriftAction,
} from "../artifacts/policy-artifact.js";
import type { EnforcementMode } from "../artifacts/trace-claim.js";
import { loadPolicyBundle } from "../governor/cedar-bundle.js";

export interface SealOptions {
  policy: string;
  schema?: string;
  key: string;
  out: string;
  mode: EnforcementMode;
  author: string;
  approver?: string;
  sourceCommit?: string;
  catalogHash?: string;
  policyVersion?: string;
  notBefore?: string;
  expires?: string;
  validDays?: number;
  measurementInterval?: number;
  onDrift?: string;
  runtimeMeasurement?: string;
  force?: boolean;
}

const MODES: readonly EnforcementMode[] = ["enforcing", "advisory", "silent"];

function usage(message: string): never {
  throw new CmcpError("seal.usage", message);
}

function parseTime(text: string, flag: string): Date {
  const ms = Date.parse(text);
  if (!/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/.test(text) || Number.isNaN(ms))
    usage(`${flag} must be an RFC 3339 UTC time such as 2027-01-31T00:00:00Z, got "${text}"`);
  return new Date(Math.floor(ms / 1000) * 1000);
}

export async function runSeal(opts: SealOptions): Promise<number> {
  if (!MODES.includes(opts.mode)) usage(`--mode must be one of ${MODES.join(", ")}`);
  const onDrift = (opts.onDrift ?? "deny_tool") as DriftAction;
  if (!DRIFT_ACTIONS.includes(onDrift)) usage(`--on-drift must be one of ${DRIFT_ACTIONS.join(", ")}`);
  if (opts.catalogHash !== undefined && !/^[0-9a-f]{64}$/.test(opts.catalogHash))
    usage("--catalog-hash must be 64 lowercase hex digits");
  if (opts.sourceCommit !== undefined && !/^[0-9a-f]{7,64}$/.test(opts.sourceCommit))
    usage("--source-commit must be a hex commit id");
  if (opts.runtimeMeasurement !== undefined && !/^[0-9a-f]{64,128}$/.test(opts.runtimeMeasurement))
    usage("--runtime-measurement must be 64 to 128 lowercase hex digits");
  if (opts.expires !== undefined && opts.validDays !== undefined)
    usage("give --expires or --valid-days, not both");

  const notBefore = opts.notBefore ? parseTime(opts.notBefore, "--not-before") : new Date();
  const expires = opts.expires
    ? parseTime(opts.expires, "--expires")
    : new Date(notBefore.getTime() + (opts.validDays ?? 90) * 86_400_000);
  if (expires <= notBefore) usage("the artifact would expire before it becomes valid");

  const issuer = await readSignerFile(opts.key, "issuer");
  const bundle = await loadPolicyBundle(opts.policy, opts.schema ? { schemaPath: opts.schema } : {});
  const artifact = sealArtifact(
    {
      policy: {
        bundle_hash: bundle.hash,
        schema_hash: bundle.schema.hash,
        version: opts.policyVersion ?? `cedar-${bundle.hash.slice(0, 12)}`,
      },
      catalog_hash: opts.catalogHash ?? null,
      enforcement_mode: opts.mode,
      runtime_measurement: opts.runtimeMeasurement ?? null,
      enforcement: {
        measurement_interval_seconds: opts.measurementInterval ?? 60,
        on_drift: onDrift,
      },
      not_before: artifactTime(notBefore),
      expires: artifactTime(expires),
      provenance: {
        source_commit: opts.sourceCommit ?? null,
        author: opts.author,
        approver: opts.approver ?? null,
      },
      self_sealed: false,
    },
    issuer,
  );
  let fh;
  try {
    fh = await open(opts.out, opts.force ? "w" : "wx", 0o644);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new CmcpError(
      "seal.write",
      code === "EEXIST"
        ? `${opts.out} exists (use --force to replace it)`
        : `cannot write ${opts.out}: ${code}`,
    );
  }
  try {
    await fh.writeFile(canonicalBytes(artifact));
    await fh.sync();
  } finally {
    await fh.close();
  }
  process.stdout.write(
    `sealed ${opts.out}\n` +
      `  artifact hash: ${artifactHash(artifact)}\n` +
      `  policy bundle: ${bundle.hash} (${bundle.policies.length} policies)\n` +
      `  schema:        ${bundle.schema.hash}\n` +
      `  catalog:       ${artifact.catalog_hash ?? "none"}\n` +
      `  mode:          ${artifact.enforcement_mode}\n` +
      `  valid:         ${artifact.not_before} to ${artifact.expires}\n` +
      `  issuer:        ${issuer.keyId} (pin its public key in the gateway config: artifact.issuer_key)\n`,
  );
  return 0;
}
