/**
 * Start-up check of the sealed policy artifact: the governor decides only
 * with the policy bundle an issuer sealed, in the mode the issuer sealed.
 * Each refusal names the check that failed. Dev mode (the embedded default)
 * seals its own artifact with a throwaway key and marks it self-sealed.
 */
import { readFile } from "node:fs/promises";
import { fromBase64 } from "../artifacts/encoding.js";
import { CmcpError, isCmcpError } from "../artifacts/errors.js";
import { generateSigner } from "../artifacts/keys.js";
import {
  artifactHash,
  artifactTime,
  readPolicyArtifact,
  sealArtifact,
  type ArtifactCheck,
  type PolicyArtifact,
} from "../artifacts/policy-artifact.js";
import type { EnforcementMode } from "../artifacts/trace-claim.js";
import { catalogHash, readCatalog, type Catalog } from "./catalog.js";
import { shippedBundlePath } from "./cedar-bundle.js";
import { CedarEngine } from "./cedar-policy.js";
import type { GatewayConfig } from "./config.js";

export interface SealedPolicy {
  engine: CedarEngine;
  artifact: PolicyArtifact;
  artifactHash: string;
  mode: EnforcementMode;
  /** The approved catalog the artifact seals, or null when it seals none. */
  catalog: Catalog | null;
}

/** The bundle dev mode runs when its config names none. */
export const DEV_BUNDLE = "demo-advisory";
const DEV_VALIDITY_DAYS = 30;

const CHECK_NAMES: Record<ArtifactCheck, string> = {
  format: "artifact format",
  issuer: "issuer is not the pinned one",
  signature: "issuer signature",
  "not-yet-valid": "not yet valid",
  expired: "expired",
};

type PolicyConfig = Pick<GatewayConfig, "policy" | "schema" | "artifact" | "mode" | "dev"> &
  Partial<Pick<GatewayConfig, "catalog">>;

export async function loadSealedPolicy(config: PolicyConfig, now = new Date()): Promise<SealedPolicy> {
  const dir = config.policy ?? (config.dev ? shippedBundlePath(DEV_BUNDLE) : null);
  if (dir === null)
    throw new CmcpError(
      "policy.missing",
      "the config names no policy bundle (policy: a directory of .cedar files)",
    );
  let engine: CedarEngine;
  try {
    engine = await CedarEngine.load(dir, config.schema ? { schemaPath: config.schema } : {});
  } catch (err) {
    if (!isCmcpError(err)) throw err;
    throw new CmcpError(err.code, `policy bundle ${dir} refused to load: ${err.message}`);
  }

  if (config.artifact === null) {
    if (!config.dev)
      throw new CmcpError(
        "artifact.missing",
        "the config names no sealed policy artifact (artifact.file and artifact.issuer_key); create one with cmcp seal",
      );
    const catalog = config.catalog ? await readCatalog(config.catalog) : null;
    const artifact = selfSeal(engine, config.mode ?? "advisory", now, catalog ? catalogHash(catalog) : null);
    return {
      engine,
      artifact,
      artifactHash: artifactHash(artifact),
      mode: artifact.enforcement_mode,
      catalog,
    };
  }

  const file = config.artifact.file;
  let bytes: Uint8Array;
  try {
    bytes = await readFile(file);
  } catch (err) {
    throw new CmcpError(
      "artifact.read",
      `cannot read policy artifact ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`,
    );
  }
  const r = readPolicyArtifact(bytes, { issuerKey: fromBase64(config.artifact.issuer_key, 32), now });
  if (!r.ok) {
    throw new CmcpError(
      `artifact.${r.check}`,
      `policy artifact ${file}: ${CHECK_NAMES[r.check]}: ${r.message}`,
    );
  }
  const a = r.artifact;
  const refuse = (check: string, message: string): never => {
    throw new CmcpError(`artifact.${check}`, `policy artifact ${file}: ${message}`);
  };
  if (a.self_sealed)
    refuse(
      "self-sealed",
      "is self-sealed by a dev-mode gateway; a configured gateway needs one made with cmcp seal",
    );
  if (a.policy.bundle_hash !== engine.bundleHash)
    refuse(
      "policy-hash",
      `seals policy bundle ${a.policy.bundle_hash}, but ${dir} hashes to ${engine.bundleHash}`,
    );
  if (a.policy.schema_hash !== engine.schemaHash)
    refuse(
      "schema-hash",
      `seals schema ${a.policy.schema_hash}, but the schema on disk hashes to ${engine.schemaHash}`,
    );
  let catalog: Catalog | null = null;
  if (config.catalog) {
    catalog = await readCatalog(config.catalog);
    if (catalog.review === null)
      refuse("catalog-unapproved", `catalog ${config.catalog} was never approved (cmcp catalog approve)`);
    const hash = catalogHash(catalog);
    if (a.catalog_hash === null)
      refuse("catalog-hash", `seals no catalog, but the config names ${config.catalog}`);
    if (a.catalog_hash !== hash)
      refuse("catalog-hash", `seals catalog ${a.catalog_hash}, but ${config.catalog} hashes to ${hash}`);
  } else if (a.catalog_hash !== null)
    refuse("catalog-hash", `seals catalog ${a.catalog_hash}, but the config names no catalog`);
  if (config.mode !== null && config.mode !== a.enforcement_mode)
    refuse(
      "mode",
      `seals mode ${a.enforcement_mode}, but the config asks for ${config.mode}; changing the mode needs a new artifact`,
    );
  return { engine, artifact: a, artifactHash: r.hash, mode: a.enforcement_mode, catalog };
}

function selfSeal(
  engine: CedarEngine,
  mode: EnforcementMode,
  now: Date,
  catalog: string | null,
): PolicyArtifact {
  const start = new Date(now.getTime() - 60_000);
  return sealArtifact(
    {
      policy: { bundle_hash: engine.bundleHash, schema_hash: engine.schemaHash, version: engine.version },
      catalog_hash: catalog,
      enforcement_mode: mode,
      runtime_measurement: null,
      enforcement: { measurement_interval_seconds: 60, on_drift: "alert" },
      not_before: artifactTime(start),
      expires: artifactTime(new Date(start.getTime() + DEV_VALIDITY_DAYS * 86_400_000)),
      provenance: { source_commit: null, author: "cmcp dev mode (self-sealed)", approver: null },
      self_sealed: true,
    },
    // Throwaway: the key dies with this process, which is why every claim says self-sealed.
    generateSigner(),
  );
}

/** Fail closed once the artifact's validity ends while the governor runs. */
export function artifactExpired(artifact: PolicyArtifact, now = new Date()): boolean {
  return now.getTime() >= Date.parse(artifact.expires);
}
