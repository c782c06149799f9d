/**
 * Builds a real receipt chain (real store, real fsync, one fresh key per
 * epoch) with decision receipts across sessions, TRACE claims and
 * checkpoints, then exports it as an evidence bundle.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { generateSigner, type Signer } from "../../artifacts/keys.js";
import { sealArtifact, type PolicyArtifact } from "../../artifacts/policy-artifact.js";
import { payloadHash, type DecisionOutcome } from "../../artifacts/receipt.js";
import type { TraceClaim } from "../../artifacts/trace-claim.js";
import { exportBundle } from "../../governor/export-bundle.js";
import { ReceiptChain, type ReceiptEvent } from "../../governor/receipt-chain.js";

export const TEST_ORIGIN = "cmcp.test/log";
export const POLICY_HASH = "a".repeat(64);
export const CATALOG_HASH = "b".repeat(64);

export interface MadeBundle {
  dir: string;
  dataDir: string;
  bundlePath: string;
  signers: Signer[];
  /** Issuer of the sealed policy artifact every epoch enforces (null with `artifact: false`). */
  issuer: Signer | null;
  artifact: PolicyArtifact | null;
  claims: TraceClaim[];
  cleanup(): Promise<void>;
}

const OUTCOMES: DecisionOutcome[] = ["allow", "allow", "deny", "redact", "advisory", "require_approval"];
const TOOLS = ["echo", "read_file", "search_nodes", "add"];

export interface MakeBundleOptions {
  epochs?: number;
  receiptsPerEpoch?: number;
  sessions?: number;
  checkpointEveryReceipts?: number;
  claims?: boolean;
  /** false: epochs run without a sealed artifact; "self": a dev-mode self-sealed one. */
  artifact?: boolean | "self";
  /** Appended in the first epoch after its decision receipts (approval receipts, for instance). */
  extraEvents?: ReceiptEvent[];
}

export async function makeBundle(options: MakeBundleOptions = {}): Promise<MadeBundle> {
  const epochs = options.epochs ?? 2;
  const perEpoch = options.receiptsPerEpoch ?? 6;
  const sessions = options.sessions ?? 2;
  const dir = await mkdtemp(join(tmpdir(), "cmcp-bundle-"));
  const dataDir = join(dir, "data");
  const signers: Signer[] = [];
  const issuer = options.artifact === false ? null : generateSigner();
  const artifact = issuer
    ? sealArtifact(
        {
          policy: { bundle_hash: POLICY_HASH, schema_hash: "c".repeat(64), version: "test-1" },
          catalog_hash: CATALOG_HASH,
          enforcement_mode: "enforcing",
          runtime_measurement: null,
          enforcement: { measurement_interval_seconds: 60, on_drift: "alert" },
          not_before: "2026-01-01T00:00:00Z",
          expires: "2036-01-01T00:00:00Z",
          provenance: { source_commit: null, author: "test", approver: null },
          self_sealed: options.artifact === "self",
        },
        issuer,
      )
    : null;
  const claims: TraceClaim[] = [];
  let n = 0;
  for (let e = 0; e < epochs; e++) {
    const signer = generateSigner();
    signers.push(signer);
    const chain = await ReceiptChain.open({
      dataDir,
      origin: TEST_ORIGIN,
      signer,
      provider: "software",
      policy: {
        bundle_hash: POLICY_HASH,
        catalog_hash: CATALOG_HASH,
        enforcement_mode: "enforcing",
        policy_version: "test-1",
        artifact,
      },
      checkpointEveryReceipts: options.checkpointEveryReceipts ?? 1_000_000,
      checkpointEverySeconds: 0,
    });
    const pending = [];
    for (let i = 0; i < perEpoch; i++, n++) {
      const session = `session-${n % sessions}`;
      pending.push(
        chain.append({
          type: "decision",
          subject: {
            session,
            agent: "agent-1",
            server: "everything",
            tool: TOOLS[n % TOOLS.length]!,
            method: "tools/call",
            request_id: String(n),
          },
          decision: {
            outcome: OUTCOMES[n % OUTCOMES.length]!,
            reasons: [`rule ${n % 3}`],
            policy_ids: ["baseline.read-only"],
          },
          hashes: { arguments: payloadHash({ n }) },
        }),
      );
    }
    await Promise.all(pending);
    if (e === 0) for (const event of options.extraEvents ?? []) await chain.append(event);
    if (options.claims !== false) claims.push(await chain.issueClaim("session-0"));
    await chain.close();
  }
  const bundlePath = join(dir, "bundle.json");
  await exportBundle(dataDir, bundlePath);
  return {
    dir,
    dataDir,
    bundlePath,
    signers,
    issuer,
    artifact,
    claims,
    cleanup: () => rm(dir, { recursive: true, force: true }),
  };
}

/** Makes a bundle for `use` alone, and removes it afterwards whatever happens. */
export async function withBundle<T>(
  options: MakeBundleOptions,
  use: (made: MadeBundle) => Promise<T>,
): Promise<T> {
  const made = await makeBundle(options);
  try {
    return await use(made);
  } finally {
    await made.cleanup();
  }
}
