/**
 * The standalone verifier. It imports nothing from governor/, runtime/ or
 * quarantine/ so an auditor can read it alone, checks a bundle step by step,
 * and returns a report; hostile data yields failed steps, never a throw.
 *
 * Pass 1 reads every top-level member except `receipts` (bounded by
 * BUNDLE_LIMITS); pass 2 streams the receipts through a worker pool that
 * parses and verifies signatures (receipts' and recorded approvers') in
 * parallel, while this thread checks order, linkage and epochs and folds
 * leaves into a Merkle accumulator. Memory is
 * bounded by the header plus a few batches, not by the number of receipts.
 */
import { availableParallelism } from "node:os";
import { Ajv2020 } from "ajv/dist/2020.js";
import { parseCheckpoint } from "../checkpoint.js";
import { bytesEqual, fromBase64, toBase64, toHex } from "../encoding.js";
import { BUNDLE_FORMAT, BUNDLE_HEADER_FIELDS, type BundleHeader } from "../evidence-bundle.js";
import { keyId } from "../keys.js";
import { MerkleAccumulator, verifyConsistency, verifyInclusion } from "../merkle.js";
import { openNote, parseVerifierKey } from "../signed-note.js";
import { checkPolicyArtifact, validatePolicyArtifact, type PolicyArtifact } from "../policy-artifact.js";
import { parseJsonCounted } from "../strict-json.js";
import {
  CallSummaryBuilder,
  reportDataForKey,
  verifyClaimSignature,
  type CallSummary,
  type TraceClaim,
} from "../trace-claim.js";
import bundleSchema from "../schemas/evidence-bundle-v1.schema.json" with { type: "json" };
import { scanBundle, BUNDLE_LIMITS } from "./bundle-reader.js";
import { checkBatch, type ReceiptBatch, type ReceiptCheck, type ReceiptFacts } from "./check-receipt.js";

export type StepStatus = "pass" | "fail" | "warn" | "skip";

export interface StepResult {
  n: number;
  id: StepId;
  title: string;
  status: StepStatus;
  detail: string;
  /** The first offending record, when a record caused the failure. */
  record?: {
    kind: "receipt" | "checkpoint" | "claim" | "inclusion_proof" | "consistency_proof" | "key" | "artifact";
    index: number;
    seq?: number;
  };
  failures: number;
}

export interface VerifyReport {
  /** True when every step passed (anchoring may be a warning only with allowUnanchored). */
  ok: boolean;
  /** True when the input could not be read as a bundle at all (CLI exit 2). */
  unreadable: boolean;
  anchored: boolean;
  summary: string;
  steps: StepResult[];
  counts: { receipts: number; epochs: number; checkpoints: number; claims: number; inclusionProofs: number };
}

export interface VerifyOptions {
  /** Key IDs (hex), raw public keys (base64) or signed-note verifier keys the auditor trusts. */
  trustedKeys?: string[];
  allowUnanchored?: boolean;
  policyHash?: string;
  catalogHash?: string;
  /** Policy artifact issuers the auditor trusts: key IDs (hex) or raw public keys (base64). */
  issuerKeys?: string[];
  /** Approvers the auditor trusts: key IDs (hex) or raw public keys (base64). Without it, any key that signs verifies. */
  approverKeys?: string[];
  /** Worker threads for signature checks; 0 checks in this thread. Default: one per core. */
  workers?: number;
  /** Bundles with fewer receipts than this are checked in this thread (worker start-up costs more). */
  parallelThreshold?: number;
  batchSize?: number;
}

const STEPS = [
  ["bundle", "Bundle structure"],
  ["keys", "Signer keys are anchored by a trusted key"],
  ["receipts", "Receipt schema and signatures"],
  ["chain", "Chain linkage, sequence and epochs"],
  ["checkpoints", "Checkpoint signatures"],
  ["roots", "Checkpoint roots match the receipts"],
  ["consistency", "Consistency between checkpoints"],
  ["inclusion", "Inclusion proofs against checkpoints"],
  ["claims", "TRACE claims"],
  ["artifact", "Sealed policy artifacts"],
  ["approved", "Approved policy and catalog hashes"],
  // Last, so the numbers of the steps before it stay what they were.
  ["approvals", "Approver statements"],
] as const;
export type StepId = (typeof STEPS)[number][0];

class Step {
  status: StepStatus = "pass";
  detail = "";
  record: StepResult["record"];
  failures = 0;
  notes: string[] = [];

  fail(detail: string, record?: StepResult["record"]): void {
    this.failures++;
    if (this.status !== "fail") {
      this.status = "fail";
      this.detail = detail;
      this.record = record;
    }
  }
}

/** A batch is cut at this many bytes too, so 1 MiB receipts do not make 512 MiB batches. */
const MAX_BATCH_BYTES = 8 * 1024 * 1024;
const ALLOWED_MEMBERS: ReadonlySet<string> = new Set([...BUNDLE_HEADER_FIELDS, "receipts"]);
/** Values (containers included) in all header members together: about 0.3 GB of heap at worst (measured). */
const HEADER_MAX_VALUES = 2_000_000;

const ajv = new Ajv2020({ strict: true, strictRequired: false, strictTypes: false });
const validateHeader = ajv.compile<BundleHeader>(bundleSchema);

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function recordName(kind: string, index: number, seq?: number): string {
  return seq !== undefined ? `${kind} seq ${seq}` : `${kind} #${index}`;
}

/** Verifies a bundle given as a file path (streamed) or as bytes in memory. */
export async function verifyBundleFile(
  path: string | Uint8Array,
  options: VerifyOptions = {},
): Promise<VerifyReport> {
  const steps = new Map<StepId, Step>(STEPS.map(([id]) => [id, new Step()]));
  const step = (id: StepId) => steps.get(id)!;
  const counts = { receipts: 0, epochs: 0, checkpoints: 0, claims: 0, inclusionProofs: 0 };

  // Pass 1: header members.
  const members = new Map<string, unknown>();
  let headerValues = 0;
  try {
    const scan = await scanBundle(path, {
      wantReceipts: false,
      allowedMembers: ALLOWED_MEMBERS,
      member(key, value) {
        // One value budget across all header members bounds the heap, not just each member's bytes.
        const parsed = parseJsonCounted(value, {
          maxBytes: BUNDLE_LIMITS.maxMemberBytes,
          maxDepth: BUNDLE_LIMITS.maxDepth,
          maxValues: HEADER_MAX_VALUES - headerValues,
        });
        headerValues += parsed.values;
        members.set(key, parsed.value);
      },
      // Bundles written by cmcp put every other member first; then pass 1 need not walk the receipts.
      stopAtReceipts: (seen) => BUNDLE_HEADER_FIELDS.every((f) => seen.has(f)),
    });
    if (!scan.hasReceipts)
      return unreadable(steps, counts, 'not a cmcp evidence bundle: no "receipts" member');
  } catch (err) {
    return unreadable(steps, counts, `cannot read bundle: ${describe(err)}`);
  }
  const header = Object.fromEntries(members);
  if (header.format !== BUNDLE_FORMAT) {
    return unreadable(steps, counts, `not a cmcp evidence bundle: "format" is not "${BUNDLE_FORMAT}"`);
  }
  if (!validateHeader(header)) {
    // A recognisable bundle with a malformed member is a failed verification, not unreadable input.
    const e = validateHeader.errors?.[0];
    return unreadable(
      steps,
      counts,
      `bundle member does not match the evidence-bundle-v1 schema: ${e ? `${e.instancePath || "/"} ${e.message}` : "invalid"}`,
      false,
    );
  }
  const h = header as unknown as BundleHeader;
  counts.claims = h.claims.length;
  counts.inclusionProofs = h.inclusion_proofs.length;

  // Keys: well-formed, and anchored by something the auditor supplied.
  const keys = new Map<string, Uint8Array>();
  h.keys.forEach((k, index) => {
    try {
      const pub = fromBase64(k.public_key, 32);
      if (keyId(pub) !== k.kid)
        step("keys").fail(`key ${k.kid}: kid is not the SHA-256 of its public key`, { kind: "key", index });
      else if (keys.has(k.kid)) step("keys").fail(`key ${k.kid} is listed twice`, { kind: "key", index });
      else keys.set(k.kid, pub);
    } catch (err) {
      step("keys").fail(`key #${index}: ${describe(err)}`, { kind: "key", index });
    }
  });
  const trusted = resolveKeys(options.trustedKeys ?? [], true, (t) =>
    step("keys").fail(
      `--key "${t.slice(0, 80)}" is neither a key ID, a base64 Ed25519 public key, nor a verifier key`,
    ),
  );

  // Sealed policy artifacts: each must carry a valid issuer signature; which epochs name them is checked below.
  const artifactStep = step("artifact");
  const trustedIssuers = resolveKeys(options.issuerKeys ?? [], false, (t) =>
    artifactStep.fail(`--issuer-key ${t.slice(0, 20)}: not a key ID (64 hex) or a base64 Ed25519 public key`),
  );
  const artifacts = new Map<string, PolicyArtifact>();
  h.policy_artifacts.forEach((value, index) => {
    const r = checkBundledArtifact(value);
    if (!r.ok) artifactStep.fail(`artifact #${index}: ${r.message}`, { kind: "artifact", index });
    else artifacts.set(r.hash, r.artifact);
  });
  const approvalsStep = step("approvals");
  const trustedApprovers = options.approverKeys?.length
    ? resolveKeys(options.approverKeys, false, (t) =>
        approvalsStep.fail(
          `--approver-key ${t.slice(0, 20)}: not a key ID (64 hex) or a base64 Ed25519 public key`,
        ),
      )
    : null;
  let approvalReceipts = 0;
  const approverKids = new Set<string>();
  let statements = 0;
  const artifactOfKid = new Map<string, PolicyArtifact | null>();
  const epochsWithoutArtifact: number[] = [];
  let epochArtifact: PolicyArtifact | null = null;

  // Checkpoints: parsed now for their sizes; their signatures are checked after the receipts, against
  // the key of the epoch that wrote the last receipt each one covers.
  const candidates: Cp[] = [];
  h.checkpoints.forEach((note, index) => {
    const rec = { kind: "checkpoint" as const, index };
    const split = note.lastIndexOf("\n\n");
    const parsed = split < 0 ? null : parseCheckpoint(note.slice(0, split + 1));
    if (!parsed?.ok) {
      return step("checkpoints").fail(`checkpoint #${index}: ${parsed?.reason ?? "not a signed note"}`, rec);
    }
    const cp = parsed.checkpoint;
    if (cp.origin !== h.origin) {
      return step("checkpoints").fail(
        `checkpoint #${index}: origin "${cp.origin}" is not the bundle's "${h.origin}"`,
        rec,
      );
    }
    const size = Number(cp.size);
    const prev = candidates[candidates.length - 1];
    if (prev && size <= prev.size) {
      return step("checkpoints").fail(
        `checkpoint #${index}: size ${size} does not grow past ${prev.size}`,
        rec,
      );
    }
    candidates.push({ index, size, root: cp.rootHash, note });
  });

  // What the receipt stream must capture for later steps.
  const wantLeaf = new Set<number>(h.inclusion_proofs.map((p) => p.seq));
  const leafAt = new Map<number, Uint8Array>();
  const rootAt = new Map<number, Uint8Array>();
  const tipAt = new Map<number, string>();
  const kidAt = new Map<number, string>();
  const sizesOfInterest = new Set<number>([
    ...candidates.map((c) => c.size),
    ...h.claims.map((c) => c.checkpoint.size),
  ]);
  // One running summary per claimed session, snapshotted at each claim's size: linear in receipts + claims.
  const sessionBuilders = new Map(h.claims.map((c) => [c.session_id, new CallSummaryBuilder(c.session_id)]));
  const claimsAtSize = new Map<number, number[]>();
  h.claims.forEach((c, i) => {
    const list = claimsAtSize.get(c.checkpoint.size);
    if (list) list.push(i);
    else claimsAtSize.set(c.checkpoint.size, [i]);
  });
  const summaryOf = new Map<number, CallSummary>();
  // Drift found outside any session (a server identity check) counts in every session's claim.
  let sharedDrift = 0;
  const policyNamed = new NamedHashes(options.policyHash);
  const catalogNamed = new NamedHashes(options.catalogHash);
  const introducedAt = new Map<string, number>();
  const providerOf = new Map<string, string>();

  // Pass 2: receipts, in order.
  const acc = new MerkleAccumulator();
  const chain = step("chain");
  const receiptsStep = step("receipts");
  let expectedSeq = 0;
  let prevHash: string | null = null;
  let epoch = -1;
  let epochKid: string | null = null;
  let lastTs = "";
  let lastCheckpointData: { size: number; root_hash: string } | null = null;
  let tipSeq = -1;
  let brokenAt = -1;

  const consume = (check: ReceiptCheck) => {
    if (!check.ok) {
      receiptsStep.fail(`${recordName("receipt", check.index, check.seq)}: ${check.reason}`, {
        kind: "receipt",
        index: check.index,
        ...(check.seq !== undefined ? { seq: check.seq } : {}),
      });
      // Without a trustworthy entry the chain and Merkle tree cannot continue.
      if (brokenAt < 0) {
        brokenAt = check.index;
        chain.fail(`chain cannot be followed past receipt #${check.index}, which failed its own checks`, {
          kind: "receipt",
          index: check.index,
        });
      }
      return;
    }
    const f: ReceiptFacts = check.facts;
    const rec = { kind: "receipt" as const, index: check.index, seq: f.seq };
    const where = recordName("receipt", check.index, f.seq);
    // A statement stands on its own signature, so it is checked even past a broken chain.
    if (f.approval) {
      const a = f.approval;
      approvalReceipts++;
      if (!a.ok) approvalsStep.fail(`${where}: ${a.reason}`, rec);
      else if (a.kid !== null) {
        statements++;
        // Named in the detail only: a few are enough, and a hostile bundle may carry millions.
        if (approverKids.size < 16) approverKids.add(a.kid);
        if (trustedApprovers && !trustedApprovers.has(a.kid))
          approvalsStep.fail(
            `${where}: ${a.decision === "deny" ? "denied" : "approved"} by key ${a.kid}, not an --approver-key`,
            rec,
          );
      }
    }
    if (brokenAt >= 0) return;
    if (f.seq !== expectedSeq)
      chain.fail(`${where}: expected seq ${expectedSeq} (receipts missing, duplicated or reordered)`, rec);
    if (f.prev !== prevHash) chain.fail(`${where}: prev does not match the hash of the previous entry`, rec);
    if (f.type === "epoch_start") {
      const es = f.epochStart!;
      const expectedEpoch = epoch + 1;
      if (f.epoch !== expectedEpoch)
        chain.fail(`${where}: epoch_start numbers epoch ${f.epoch}, expected ${expectedEpoch}`, rec);
      if (introducedAt.has(f.kid))
        chain.fail(`${where}: key ${f.kid} was already introduced by an earlier epoch`, rec);
      if (es.previous === null) {
        if (f.seq !== 0)
          chain.fail(`${where}: epoch_start claims no previous epoch but is not the first receipt`, rec);
      } else if (
        es.previous.kid !== epochKid ||
        es.previous.epoch !== epoch ||
        es.previous.tip_seq !== tipSeq ||
        es.previous.tip_hash !== prevHash ||
        !sameCheckpoint(es.previous.checkpoint, lastCheckpointData)
      ) {
        chain.fail(
          `${where}: epoch_start does not describe the previous epoch's key, tip and last checkpoint`,
          rec,
        );
      }
      introducedAt.set(f.kid, f.seq);
      providerOf.set(f.kid, es.provider);
      epochArtifact = null;
      if (es.policy_artifact === null) epochsWithoutArtifact.push(f.epoch);
      else {
        const a = artifacts.get(es.policy_artifact.hash);
        if (!a)
          artifactStep.fail(
            `${where}: names policy artifact ${es.policy_artifact.hash}, which the bundle does not include (or which failed its checks)`,
            rec,
          );
        else if (a.self_sealed !== es.policy_artifact.self_sealed)
          artifactStep.fail(`${where}: misstates whether its policy artifact is self-sealed`, rec);
        else epochArtifact = a;
      }
      artifactOfKid.set(f.kid, epochArtifact);
      epoch = f.epoch;
      epochKid = f.kid;
      lastTs = "";
      counts.epochs++;
    } else {
      if (epochKid === null)
        chain.fail(`${where}: the chain does not begin with an epoch_start receipt`, rec);
      else if (f.kid !== epochKid || f.epoch !== epoch)
        chain.fail(
          `${where}: signed by ${f.kid} in epoch ${f.epoch}, but epoch ${epoch} uses key ${epochKid}`,
          rec,
        );
    }
    if (
      epochArtifact &&
      (f.policy.bundle_hash !== epochArtifact.policy.bundle_hash ||
        f.policy.catalog_hash !== epochArtifact.catalog_hash)
    )
      artifactStep.fail(
        `${where}: names policy bundle ${f.policy.bundle_hash} and catalog ${f.policy.catalog_hash}, not the ones its epoch's sealed artifact names`,
        rec,
      );
    if (f.ts < lastTs) chain.fail(`${where}: timestamp goes backwards within an epoch`, rec);
    lastTs = f.ts;
    if (f.type === "checkpoint") {
      const cd = f.checkpoint!;
      const root = rootAt.get(cd.size);
      if (cd.origin !== h.origin) chain.fail(`${where}: checkpoint receipt names origin "${cd.origin}"`, rec);
      else if (cd.size > f.seq)
        chain.fail(`${where}: checkpoint receipt covers ${cd.size} entries, beyond its own position`, rec);
      else if (!root)
        chain.fail(
          `${where}: the bundle has no checkpoint note of size ${cd.size} for this checkpoint receipt`,
          rec,
        );
      else if (toHex(root) !== cd.root_hash)
        chain.fail(`${where}: checkpoint receipt's root does not match the receipts before it`, rec);
      lastCheckpointData = { size: cd.size, root_hash: cd.root_hash };
    }
    policyNamed.add(f.policy.bundle_hash, f.seq, f.decision !== undefined);
    catalogNamed.add(f.policy.catalog_hash, f.seq, f.decision !== undefined);
    if (f.subject.session !== undefined) sessionBuilders.get(f.subject.session)?.add(f);
    else if (f.type === "drift") sharedDrift++;
    if (wantLeaf.has(f.seq)) leafAt.set(f.seq, f.leafHash);
    acc.append(f.leafHash);
    if (sizesOfInterest.has(acc.size)) {
      rootAt.set(acc.size, acc.root());
      tipAt.set(acc.size, f.entryHash);
      kidAt.set(acc.size, epochKid ?? "");
      for (const i of claimsAtSize.get(acc.size) ?? []) {
        summaryOf.set(i, sessionBuilders.get(h.claims[i]!.session_id)!.summary(sharedDrift));
      }
    }
    prevHash = f.entryHash;
    tipSeq = f.seq;
    expectedSeq++;
  };

  let receiptCount: number;
  try {
    receiptCount = await streamReceipts(path, members, keys, options, consume);
  } catch (err) {
    return unreadable(steps, counts, `cannot read receipts: ${describe(err)}`);
  }
  counts.receipts = receiptCount;
  step("bundle").detail =
    `${receiptCount} receipts, ${h.keys.length} keys, ${h.checkpoints.length} checkpoints, ${h.claims.length} claims`;
  if (receiptCount === 0) chain.fail("the bundle holds no receipts");
  const checkpoints: Cp[] = [];
  for (const cp of candidates) {
    const rec = { kind: "checkpoint" as const, index: cp.index };
    if (cp.size > receiptCount) {
      step("checkpoints").fail(
        `checkpoint #${cp.index}: size ${cp.size} exceeds the ${receiptCount} receipts in the bundle`,
        rec,
      );
      continue;
    }
    const kid = kidAt.get(cp.size);
    const publicKey = kid ? keys.get(kid) : undefined;
    if (!kid || !publicKey) {
      step("checkpoints").fail(
        `checkpoint #${cp.index} (size ${cp.size}): the receipts it covers could not all be checked`,
        rec,
      );
      continue;
    }
    // Only the key of the epoch that wrote receipt size-1 may sign: a retired key cannot cut a later epoch.
    const opened = openNote(cp.note, [{ name: h.origin, publicKey }]);
    if (!opened.ok) {
      step("checkpoints").fail(
        `checkpoint #${cp.index} (size ${cp.size}): not signed by epoch key ${kid.slice(0, 16)}: ${opened.reason}`,
        rec,
      );
      continue;
    }
    checkpoints.push(cp);
  }
  counts.checkpoints = checkpoints.length;
  const cpBySize = new Map(checkpoints.map((c) => [c.size, c]));

  // Keys: every listed key must be introduced on the chain, and anchored.
  const keyIndex = new Map(h.keys.map((k, i) => [k.kid, i]));
  for (const kid of keys.keys()) {
    if (!introducedAt.has(kid) && brokenAt < 0)
      step("keys").fail(`key ${kid} is not introduced by any epoch_start receipt`, {
        kind: "key",
        index: keyIndex.get(kid) ?? -1,
      });
  }
  if (h.keys.length === 0) step("keys").fail("the bundle lists no signer keys");
  // Attestation entries: until hardware verifiers land, only the software provider (no evidence) is known.
  h.attestation.forEach((a, index) => {
    const rec = { kind: "key" as const, index };
    if (!keys.has(a.kid))
      step("keys").fail(`attestation #${index} names key ${a.kid}, which the bundle does not list`, rec);
    else if (brokenAt < 0 && providerOf.get(a.kid) !== a.provider) {
      step("keys").fail(
        `attestation #${index}: provider "${a.provider}" is not the one key ${a.kid.slice(0, 16)} was introduced with`,
        rec,
      );
    } else if (a.provider === "software" && a.evidence !== null) {
      step("keys").fail(
        `attestation #${index}: the software provider has no evidence, but some is attached`,
        rec,
      );
    } else if (a.provider !== "software") {
      step("keys").fail(
        `attestation #${index}: provider "${a.provider}" evidence cannot be checked by this verifier yet`,
        rec,
      );
    }
  });
  const unanchored = [...keys.keys()].filter((kid) => !trusted.has(kid));
  const anchored = keys.size > 0 && unanchored.length === 0;
  const keysStep = step("keys");
  if (keysStep.status !== "fail") {
    if (anchored)
      keysStep.detail = `${keys.size} key(s), all anchored by --key: ${[...keys.keys()].map((k) => k.slice(0, 16)).join(", ")}`;
    else {
      const msg = `${unanchored.length} of ${keys.size} signer key(s) not anchored by any trusted key: ${unanchored.map((k) => k.slice(0, 16)).join(", ")}`;
      if (options.allowUnanchored) {
        keysStep.status = "warn";
        keysStep.detail = `${msg} (allowed by --allow-unanchored)`;
      } else keysStep.fail(`${msg}; pass --key with a key or key ID you trust, or --allow-unanchored`);
    }
  }

  // Roots.
  const roots = step("roots");
  for (const cp of checkpoints) {
    const got = rootAt.get(cp.size);
    if (!got)
      roots.fail(
        `checkpoint #${cp.index} (size ${cp.size}): the receipts it covers could not all be checked`,
        { kind: "checkpoint", index: cp.index },
      );
    else if (!bytesEqual(got, cp.root))
      roots.fail(`checkpoint #${cp.index} (size ${cp.size}): root does not match the receipts`, {
        kind: "checkpoint",
        index: cp.index,
      });
  }
  const lastCp = checkpoints[checkpoints.length - 1];
  // Receipts past the last checkpoint could be dropped unnoticed, so a bundle must end at one.
  if (lastCp && lastCp.size !== receiptCount && roots.status !== "fail") {
    roots.fail(
      `the bundle holds ${receiptCount} receipts but its last checkpoint covers ${lastCp.size}; every receipt must be covered`,
      { kind: "checkpoint", index: lastCp.index },
    );
  }
  if (h.checkpoints.length === 0) roots.fail("the bundle holds no checkpoint");
  else if (roots.status === "pass")
    roots.detail = `${checkpoints.length} checkpoint root(s) recomputed from the receipts`;

  // Consistency proofs between consecutive checkpoints.
  const consistency = step("consistency");
  const provided = new Map(h.consistency_proofs.map((p, i) => [`${p.old_size}:${p.new_size}`, { p, i }]));
  for (let i = 1; i < checkpoints.length; i++) {
    const a = checkpoints[i - 1]!;
    const b = checkpoints[i]!;
    const entry = provided.get(`${a.size}:${b.size}`);
    if (!entry) {
      consistency.fail(`no consistency proof from checkpoint size ${a.size} to ${b.size}`, {
        kind: "checkpoint",
        index: b.index,
      });
      continue;
    }
    const proof = decodeProof(entry.p.proof);
    const res = proof
      ? verifyConsistency({ oldSize: a.size, newSize: b.size, oldRoot: a.root, newRoot: b.root, proof })
      : { ok: false as const, reason: "proof hashes are not canonical base64" };
    if (!res.ok)
      consistency.fail(`consistency proof ${a.size} -> ${b.size}: ${res.reason}`, {
        kind: "consistency_proof",
        index: entry.i,
      });
  }
  if (checkpoints.length < 2 && consistency.status === "pass") {
    consistency.status = "skip";
    consistency.detail = "fewer than two checkpoints";
  }

  // Inclusion proofs.
  const inclusion = step("inclusion");
  h.inclusion_proofs.forEach((p, index) => {
    const cp = cpBySize.get(p.checkpoint_size);
    const rec = { kind: "inclusion_proof" as const, index, seq: p.seq };
    if (!cp)
      return inclusion.fail(
        `inclusion proof #${index}: no verified checkpoint of size ${p.checkpoint_size}`,
        rec,
      );
    const leaf = leafAt.get(p.seq);
    if (!leaf)
      return inclusion.fail(
        `inclusion proof #${index}: receipt seq ${p.seq} is not in the bundle or failed its checks`,
        rec,
      );
    const proof = decodeProof(p.proof);
    const res = proof
      ? verifyInclusion({ index: p.seq, size: cp.size, leafHash: leaf, proof, root: cp.root })
      : { ok: false as const, reason: "proof hashes are not canonical base64" };
    if (!res.ok) inclusion.fail(`inclusion proof #${index} for receipt seq ${p.seq}: ${res.reason}`, rec);
  });
  if (h.inclusion_proofs.length === 0 && inclusion.status === "pass") {
    inclusion.status = "skip";
    inclusion.detail = "no inclusion proofs in the bundle";
  }

  // Claims.
  const claims = step("claims");
  const claimContext = { h, keys, cpBySize, rootAt, tipAt, kidAt };
  h.claims.forEach((c, index) => checkClaim(c, index, summaryOf.get(index), claimContext, claims));
  if (h.claims.length === 0 && claims.status === "pass") {
    claims.status = "skip";
    claims.detail = "no TRACE claims in the bundle";
  }

  finishArtifactStep(artifactStep, {
    claims: h.claims,
    artifacts,
    artifactOfKid,
    epochsWithoutArtifact,
    trustedIssuers,
  });

  // Approved hashes: every decision and claim must name the approved hash; a null one is not approved.
  const approved = step("approved");
  const wanted = [
    {
      flag: "--policy-hash",
      label: "policy bundle",
      seen: policyNamed,
      fromClaim: (c: TraceClaim) => c.policy_bundle.hash,
      fromArtifact: [...artifacts.values()].map((a) => a.policy.bundle_hash),
    },
    {
      flag: "--catalog-hash",
      label: "catalog",
      seen: catalogNamed,
      fromClaim: (c: TraceClaim) => c.tool_catalog.hash,
      fromArtifact: [...artifacts.values()].map((a) => a.catalog_hash),
    },
  ];
  let anyWanted = false;
  for (const { flag, label, seen, fromClaim, fromArtifact } of wanted) {
    const { want, nullAt } = seen;
    if (want === undefined) continue;
    anyWanted = true;
    // Receipts first, then artifacts, then claims: the first hash named that is not the approved one.
    const named = [...fromArtifact, ...h.claims.map(fromClaim)].filter((x): x is string => !!x);
    const nullClaim = h.claims.findIndex((c) => fromClaim(c) === null);
    const other = seen.other ?? named.find((x) => x !== want);
    if (other !== undefined)
      approved.fail(`${label} hash ${other} is named in the bundle, not the approved ${want}`);
    else if (nullAt >= 0) {
      approved.fail(
        `receipt seq ${nullAt} records a decision made without any ${label} hash, so not under the approved one`,
        {
          kind: "receipt",
          index: nullAt,
          seq: nullAt,
        },
      );
    } else if (nullClaim >= 0) {
      approved.fail(`claim #${nullClaim} names no ${label} hash`, { kind: "claim", index: nullClaim });
    } else if (!seen.any && named.length === 0)
      approved.fail(`no receipt, claim or artifact names a ${label} hash, so ${flag} cannot be confirmed`);
  }
  if (!anyWanted) {
    approved.status = "skip";
    approved.detail = "no --policy-hash or --catalog-hash given";
  }

  if (approvalsStep.status === "pass") {
    const kids = [...approverKids].map((k) => k.slice(0, 16)).join(", ");
    if (approvalReceipts === 0) {
      approvalsStep.status = "skip";
      approvalsStep.detail = "no approval receipts in the bundle";
    } else if (statements === 0)
      approvalsStep.detail = `${approvalReceipts} approval receipt(s), none answered by an approver (timeouts or shutdowns)`;
    else if (trustedApprovers)
      approvalsStep.detail = `${statements} approver statement(s) verify and bind their calls, signed by --approver-key(s) ${kids}`;
    else
      approvalsStep.detail = `${statements} approver statement(s) verify under their own keys (${kids}) and bind their calls; approvers are not pinned (pass --approver-key to pin them)`;
  }
  if (receiptsStep.status === "pass")
    receiptsStep.detail = `${receiptCount} receipts: schema and Ed25519 signatures valid`;
  if (chain.status === "pass") chain.detail = `seq 0..${receiptCount - 1} linked, ${counts.epochs} epoch(s)`;
  const cps = step("checkpoints");
  if (cps.status === "pass")
    cps.detail = h.checkpoints.length
      ? `${checkpoints.length} checkpoint note(s) signed by bundle keys`
      : "no checkpoints";
  if (inclusion.status === "pass")
    inclusion.detail = `${h.inclusion_proofs.length} inclusion proof(s) verified`;
  if (consistency.status === "pass")
    consistency.detail = `${checkpoints.length - 1} consistency proof(s) verified`;
  if (claims.status === "pass") claims.detail = `${h.claims.length} claim(s) signed and matching the chain`;
  return finish(steps, counts, false, anchored);
}

/** What the receipts name for one hash an auditor may approve, in constant memory however many receipts. */
class NamedHashes {
  /** Some receipt names a hash. */
  any = false;
  /** The first hash a receipt names that is not `want`. */
  other: string | undefined;
  /** Seq of the first decision receipt that names no hash, or -1. */
  nullAt = -1;

  constructor(readonly want: string | undefined) {}

  add(hash: string | null, seq: number, isDecision: boolean): void {
    if (hash) {
      this.any = true;
      if (this.other === undefined && hash !== this.want) this.other = hash;
    } else if (isDecision && this.nullAt < 0) this.nullAt = seq;
  }
}

interface Cp {
  index: number;
  size: number;
  root: Uint8Array;
  note: string;
}

function sameCheckpoint(
  a: { size: number; root_hash: string } | null,
  b: { size: number; root_hash: string } | null,
): boolean {
  if (a === null || b === null) return a === b;
  return a.size === b.size && a.root_hash === b.root_hash;
}

function decodeProof(proof: string[]): Uint8Array[] | null {
  try {
    return proof.map((p) => fromBase64(p, 32));
  } catch {
    return null;
  }
}

interface ClaimContext {
  h: BundleHeader;
  keys: Map<string, Uint8Array>;
  cpBySize: Map<number, { root: Uint8Array }>;
  rootAt: Map<number, Uint8Array>;
  tipAt: Map<number, string>;
  kidAt: Map<number, string>;
}

function checkClaim(
  c: TraceClaim,
  index: number,
  s: CallSummary | undefined,
  { h, keys, cpBySize, rootAt, tipAt, kidAt }: ClaimContext,
  step: Step,
): void {
  const rec = { kind: "claim" as const, index };
  const where = `claim #${index} (session ${c.session_id})`;
  const pub = keys.get(c.signing_key.kid);
  if (!pub || toBase64(pub) !== c.signing_key.public_key) {
    return step.fail(`${where}: signing key ${c.signing_key.kid} is not a bundle key`, rec);
  }
  if (kidAt.get(c.checkpoint.size) !== c.signing_key.kid) {
    return step.fail(`${where}: not signed by the key of the epoch its checkpoint ends in`, rec);
  }
  if (!verifyClaimSignature(c, pub)) return step.fail(`${where}: signature does not verify`, rec);
  if (c.attestation_report.report_data !== reportDataForKey(pub))
    return step.fail(`${where}: report_data does not bind the signing key`, rec);
  const cp = cpBySize.get(c.checkpoint.size);
  if (!cp || c.checkpoint.origin !== h.origin || toHex(cp.root) !== c.checkpoint.root_hash) {
    return step.fail(
      `${where}: its checkpoint (size ${c.checkpoint.size}) is not a verified checkpoint of this bundle`,
      rec,
    );
  }
  const root = rootAt.get(c.checkpoint.size);
  if (!root || toHex(root) !== c.audit_chain_root)
    return step.fail(`${where}: audit_chain_root does not match the receipts`, rec);
  if (tipAt.get(c.checkpoint.size) !== c.audit_chain_tip)
    return step.fail(`${where}: audit_chain_tip is not the last receipt its checkpoint covers`, rec);
  const cs = c.call_summary;
  if (!s) return step.fail(`${where}: the receipts it summarizes could not all be checked`, rec);
  if (
    s.tool_calls_total !== cs.tool_calls_total ||
    s.allowed !== cs.allowed ||
    s.denied !== cs.denied ||
    s.drift_events !== cs.drift_events ||
    s.tools_invoked.join("\u0000") !== cs.tools_invoked.join("\u0000")
  ) {
    return step.fail(
      `${where}: call_summary (${cs.tool_calls_total} calls, ${cs.allowed} allowed, ${cs.denied} denied, ${cs.drift_events} drift) does not match the receipts (${s.tool_calls_total}, ${s.allowed}, ${s.denied}, ${s.drift_events})`,
      rec,
    );
  }
}

/** An artifact from the bundle, checked against the issuer key it carries (anchoring comes later). */
function checkBundledArtifact(
  value: unknown,
): { ok: true; artifact: PolicyArtifact; hash: string } | { ok: false; message: string } {
  if (!validatePolicyArtifact(value)) {
    const e = validatePolicyArtifact.errors?.[0];
    return {
      ok: false,
      message: `does not match the policy-artifact-v1 schema: ${e ? `${e.instancePath || "/"} ${e.message}` : "invalid"}`,
    };
  }
  let issuerKey: Uint8Array;
  try {
    issuerKey = fromBase64(value.issuer.public_key, 32);
  } catch (err) {
    return { ok: false, message: `issuer key: ${describe(err)}` };
  }
  const r = checkPolicyArtifact(value, { issuerKey });
  return r.ok ? r : { ok: false, message: `${r.check}: ${r.message}` };
}

/**
 * Key IDs of the keys an auditor passed: each a key ID (64 hex), a raw public
 * key (base64) or, with `verifierKeys`, a signed-note verifier key.
 */
function resolveKeys(inputs: string[], verifierKeys: boolean, onBad: (text: string) => void): Set<string> {
  const out = new Set<string>();
  for (const raw of inputs) {
    const t = raw.trim();
    if (/^[0-9a-f]{64}$/.test(t)) {
      out.add(t);
      continue;
    }
    // A raw base64 key may itself contain '+', so try it first; a verifier key must parse in full.
    let pub: Uint8Array | undefined;
    try {
      pub = fromBase64(t, 32);
    } catch {
      const vkey = verifierKeys ? parseVerifierKey(t) : undefined;
      if (vkey?.ok) pub = vkey.publicKey;
    }
    if (pub) out.add(keyId(pub));
    else onBad(t);
  }
  return out;
}

function finishArtifactStep(
  step: Step,
  ctx: {
    claims: TraceClaim[];
    artifacts: Map<string, PolicyArtifact>;
    artifactOfKid: Map<string, PolicyArtifact | null>;
    epochsWithoutArtifact: number[];
    trustedIssuers: Set<string>;
  },
): void {
  ctx.claims.forEach((c, index) => {
    const rec = { kind: "claim" as const, index };
    const epochs = ctx.artifactOfKid.get(c.signing_key.kid) ?? null;
    const named = c.policy_bundle.artifact_hash;
    const a = named === null ? null : ctx.artifacts.get(named);
    if (named !== null && !a)
      return step.fail(
        `claim #${index}: names policy artifact ${named}, which the bundle does not include`,
        rec,
      );
    if ((a ?? null) !== epochs)
      return step.fail(`claim #${index}: names a policy artifact other than its epoch's`, rec);
    if (
      a &&
      (c.policy_bundle.hash !== a.policy.bundle_hash ||
        c.policy_bundle.enforcement_mode !== a.enforcement_mode ||
        c.policy_bundle.self_sealed !== a.self_sealed ||
        c.tool_catalog.hash !== a.catalog_hash)
    )
      return step.fail(
        `claim #${index}: its policy hash, mode, catalog or self-sealed flag differs from its sealed artifact`,
        rec,
      );
  });
  if (step.status === "fail") return;
  const used = [...new Set([...ctx.artifactOfKid.values()].filter((a): a is PolicyArtifact => a !== null))];
  const anchoring = ctx.trustedIssuers.size > 0;
  if (anchoring && ctx.epochsWithoutArtifact.length > 0)
    return step.fail(
      `epoch ${ctx.epochsWithoutArtifact[0]} ran without a sealed policy artifact, so not under a trusted issuer's policy`,
    );
  if (used.length === 0) {
    step.status = "skip";
    step.detail = "no epoch in the bundle names a sealed policy artifact";
    return;
  }
  const issuers = [...new Set(used.map((a) => a.issuer.kid))];
  const untrusted = issuers.filter((k) => !ctx.trustedIssuers.has(k));
  const selfSealed = used.filter((a) => a.self_sealed).length;
  if (anchoring && untrusted.length > 0)
    return step.fail(
      `policy artifact sealed by issuer ${untrusted[0]}, which no --issuer-key names${selfSealed ? " (self-sealed by a dev-mode gateway)" : ""}`,
    );
  const modes = [...new Set(used.map((a) => a.enforcement_mode))].join(", ");
  const base = `${used.length} artifact(s) (${modes}) with valid issuer signatures, and every receipt names their policy and catalog hashes`;
  if (selfSealed > 0) {
    step.status = "warn";
    step.detail = `${base}; ${selfSealed} self-sealed by a dev-mode gateway with a throwaway key: no one approved that policy`;
  } else if (!anchoring) {
    step.status = "warn";
    step.detail = `${base}; issuer(s) ${issuers.map((k) => k.slice(0, 16)).join(", ")} not anchored (pass --issuer-key)`;
  } else
    step.detail = `${base}; sealed by trusted issuer(s) ${issuers.map((k) => k.slice(0, 16)).join(", ")}`;
}

/**
 * Pass 2: streams the receipts in order to `consume`, checking them in this
 * thread until `parallelThreshold` have been seen and on a worker pool after
 * that. Returns the number of receipts.
 */
async function streamReceipts(
  path: string | Uint8Array,
  headerMembers: ReadonlyMap<string, unknown>,
  keys: ReadonlyMap<string, Uint8Array>,
  options: VerifyOptions,
  consume: (c: ReceiptCheck) => void,
): Promise<number> {
  const workers = options.workers ?? availableParallelism();
  const threshold = options.parallelThreshold ?? 4096;
  const batchSize = options.batchSize ?? 512;
  let pool: Awaited<ReturnType<typeof createPool>> | null = null;
  const inflight: Promise<ReceiptCheck[]>[] = [];
  let parts: Buffer[] = [];
  let ends: number[] = [];
  let total = 0;
  let firstIndex = 0;
  const consumeAll = (checks: ReceiptCheck[]) => {
    for (const c of checks) consume(c);
  };
  const submit = async () => {
    if (ends.length === 0) return;
    // An unpooled buffer: its ArrayBuffer is transferred to a worker, which must not take other Buffers with it.
    const bytes = Buffer.allocUnsafeSlow(total);
    let at = 0;
    for (const p of parts) {
      bytes.set(p, at);
      at += p.length;
    }
    const batch: ReceiptBatch = { firstIndex, bytes, ends, keys };
    firstIndex += ends.length;
    parts = [];
    ends = [];
    total = 0;
    if (!pool && workers > 0 && firstIndex >= threshold) pool = await createPool(workers);
    if (!pool) return consumeAll(checkBatch(batch));
    inflight.push(pool.run(batch, { transferList: [batch.bytes.buffer as ArrayBuffer] }));
    if (inflight.length >= workers * 3) consumeAll(await inflight.shift()!);
  };
  let count: number;
  try {
    const scan = await scanBundle(path, {
      wantReceipts: true,
      // Pass 1 may have stopped at "receipts": a member after it must be one that pass 1 read.
      allowedMembers: new Set([...headerMembers.keys(), "receipts"]),
      async receipt(value) {
        parts.push(value);
        total += value.length;
        ends.push(total);
        if (ends.length >= batchSize || total >= MAX_BATCH_BYTES) await submit();
      },
    });
    count = scan.receipts;
    await submit();
    while (inflight.length > 0) consumeAll(await inflight.shift()!);
  } finally {
    await Promise.allSettled(inflight);
    await (pool as Awaited<ReturnType<typeof createPool>> | null)?.destroy();
  }
  return count;
}

async function createPool(workers: number) {
  const { Piscina } = await import("piscina");
  const fromSource = import.meta.url.endsWith(".ts");
  return new Piscina<ReceiptBatch, ReceiptCheck[]>({
    filename: new URL(fromSource ? "./receipt-worker.ts" : "./receipt-worker.js", import.meta.url).href,
    minThreads: workers,
    maxThreads: workers,
    // Running from TypeScript sources (tests, bench): workers load them through tsx.
    ...(fromSource ? { execArgv: ["--import", "tsx"] } : {}),
  });
}

function unreadable(
  steps: Map<StepId, Step>,
  counts: VerifyReport["counts"],
  detail: string,
  isUnreadable = true,
): VerifyReport {
  const s = steps.get("bundle")!;
  s.fail(detail);
  for (const [id, st] of steps) {
    if (id !== "bundle") {
      st.status = "skip";
      st.detail = "not run: the bundle could not be read";
    }
  }
  return finish(steps, counts, isUnreadable, false);
}

function finish(
  steps: Map<StepId, Step>,
  counts: VerifyReport["counts"],
  isUnreadable: boolean,
  anchored: boolean,
): VerifyReport {
  const results: StepResult[] = STEPS.map(([id, title], i) => {
    const s = steps.get(id)!;
    return {
      n: i + 1,
      id,
      title,
      status: s.status,
      detail: s.detail,
      failures: s.failures,
      ...(s.record ? { record: s.record } : {}),
    };
  });
  const firstFail = results.find((r) => r.status === "fail");
  const ok = !firstFail;
  let summary: string;
  if (firstFail) {
    summary = `FAILED at step ${firstFail.n} (${firstFail.title}): ${firstFail.detail}`;
  } else if (anchored) {
    summary = `VERIFIED: ${counts.receipts} receipts in ${counts.epochs} epoch(s), ${counts.checkpoints} checkpoint(s), ${counts.claims} claim(s); every signer key is anchored by a trusted key`;
  } else {
    summary = `VALID BUT UNANCHORED: ${counts.receipts} receipts in ${counts.epochs} epoch(s), ${counts.checkpoints} checkpoint(s), ${counts.claims} claim(s) are internally consistent, but no signer key was anchored by a trusted key (--allow-unanchored), so this does not prove who produced them`;
  }
  return { ok, unreadable: isUnreadable, anchored, summary, steps: results, counts };
}
