/**
 * The governor's receipt chain: epochs, signing, durable appends, checkpoints
 * and TRACE claims over the append-only store. Single writer: a receipt's
 * seq, prev and Merkle leaf are fixed synchronously when it is built, so
 * concurrent callers are ordered by call order, and a receipt is reported
 * written only after the store's fsync covering it returned.
 */
import { mkdir, readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { signCheckpoint } from "../artifacts/checkpoint.js";
import { toBase64, toHex, utf8 } from "../artifacts/encoding.js";
import { CmcpError, isCmcpError } from "../artifacts/errors.js";
import { sha256Hex } from "../artifacts/hash.js";
import { canonicalBytes } from "../artifacts/canonical-json.js";
import { ARTIFACT_JSON_LIMITS, artifactHash, type PolicyArtifact } from "../artifacts/policy-artifact.js";
import type { Signer } from "../artifacts/keys.js";
import { leafHash, MerkleAccumulator } from "../artifacts/merkle.js";
import {
  RECEIPT_VERSION,
  signReceipt,
  utcTimestamp,
  type CheckpointData,
  type EpochStartData,
  type Receipt,
  type ReceiptDecision,
  type ReceiptPolicy,
  type ReceiptSubject,
  type ReceiptType,
  type SignedEntry,
} from "../artifacts/receipt.js";
import { parseJson } from "../artifacts/strict-json.js";
import { RECEIPT_JSON_LIMITS, validateReceipt } from "../artifacts/verifier/check-receipt.js";
import {
  CallSummaryBuilder,
  reportDataForKey,
  signClaim,
  TRACE_VERSION,
  type EnforcementMode,
  type TraceClaim,
} from "../artifacts/trace-claim.js";
import { ChainStore, type ChainStoreOptions } from "./chain-store.js";
import { acquireDataDirLock } from "./data-dir-lock.js";
import { writeFileDurable } from "./durable-file.js";

export interface ReceiptEvent {
  type: Exclude<ReceiptType, "epoch_start" | "checkpoint">;
  subject: ReceiptSubject;
  decision?: ReceiptDecision;
  hashes?: Receipt["hashes"];
  commitments?: Record<string, string>;
  data?: Record<string, unknown>;
  /** Overrides the chain's current policy context for this receipt. */
  policy?: ReceiptPolicy;
}

export interface PolicyContext extends ReceiptPolicy {
  enforcement_mode: EnforcementMode | null;
  policy_version: string | null;
  /** The sealed artifact this epoch enforces; kept under the data directory for export. */
  artifact: PolicyArtifact | null;
}

export interface ReceiptChainOptions {
  dataDir: string;
  /** Checkpoint origin line; fixed for the life of a data directory. */
  origin: string;
  /** The epoch key, created in the governor's memory for this start. */
  signer: Signer;
  /** Attestation provider backing the key ("software" until hardware binding lands). */
  provider: string;
  policy?: PolicyContext;
  /** Checkpoint after this many receipts (default 1000) or seconds (default 60), whichever first. */
  checkpointEveryReceipts?: number;
  checkpointEverySeconds?: number;
  store?: Omit<ChainStoreOptions, "dir">;
  now?: () => Date;
  onEvent?: (event: ChainEvent) => void;
}

export type ChainEvent =
  | { kind: "recovered"; detail: unknown }
  | { kind: "epoch"; epoch: number; kid: string; seq: number }
  | { kind: "checkpoint"; size: number; rootHash: string }
  | { kind: "checkpoint-failed"; error: string }
  | { kind: "failed"; error: string };

export interface AppendedReceipt {
  receipt: Receipt;
  seq: number;
  entryHash: string;
}

export interface StoredCheckpoint {
  size: number;
  rootHash: string;
  note: string;
}

interface LogInfo {
  origin: string;
}

const CHECKPOINT_DIR = "checkpoints";
const CLAIM_DIR = "claims";
const LOG_INFO = "log.json";

function checkpointFileName(size: number): string {
  return `${String(size).padStart(20, "0")}.note`;
}

export class ReceiptChain {
  readonly origin: string;
  readonly signer: Signer;
  readonly provider: string;
  readonly dataDir: string;
  policy: PolicyContext;
  epoch = 0;

  readonly #store: ChainStore;
  readonly #acc: MerkleAccumulator;
  readonly #now: () => Date;
  readonly #onEvent: (e: ChainEvent) => void;
  readonly #everyReceipts: number;
  #prev: string | null;
  #lastCheckpoint: StoredCheckpoint | null;
  #sinceCheckpoint = 0;
  #lastDurable: Promise<unknown> = Promise.resolve();
  #checkpointing: Promise<StoredCheckpoint | null> | null = null;
  #checkpointQueued: Promise<StoredCheckpoint | null> | null = null;
  #timer: NodeJS.Timeout | undefined;
  #failure: CmcpError | undefined;
  #closed = false;
  #closing = false;
  #closePromise: Promise<void> | null = null;
  #lastTs = "";
  #unlock: () => Promise<void> = async () => undefined;

  private constructor(
    options: ReceiptChainOptions,
    store: ChainStore,
    acc: MerkleAccumulator,
    prev: string | null,
    lastCheckpoint: StoredCheckpoint | null,
  ) {
    this.origin = options.origin;
    this.signer = options.signer;
    this.provider = options.provider;
    this.dataDir = options.dataDir;
    this.policy = options.policy ?? {
      bundle_hash: null,
      catalog_hash: null,
      enforcement_mode: null,
      policy_version: null,
      artifact: null,
    };
    this.#store = store;
    this.#acc = acc;
    this.#prev = prev;
    this.#lastCheckpoint = lastCheckpoint;
    this.#now = options.now ?? (() => new Date());
    this.#onEvent = options.onEvent ?? (() => undefined);
    this.#everyReceipts = options.checkpointEveryReceipts ?? 1000;
  }

  /**
   * Opens the data directory, replays the stored chain (refusing to start on
   * broken linkage rather than forking), and starts a new epoch whose first
   * receipt introduces this start's key.
   */
  static async open(options: ReceiptChainOptions): Promise<ReceiptChain> {
    if (!options.origin || /[\n\r]/.test(options.origin)) {
      throw new CmcpError("chain.config", "log origin must be a non-empty single line");
    }
    await mkdir(join(options.dataDir, CHECKPOINT_DIR), { recursive: true, mode: 0o700 });
    await mkdir(join(options.dataDir, CLAIM_DIR), { recursive: true, mode: 0o700 });
    const unlock = await acquireDataDirLock(options.dataDir);
    let store: ChainStore | undefined;
    try {
      await bindOrigin(options.dataDir, options.origin);
      store = await ChainStore.open({ ...options.store, dir: join(options.dataDir, "chain") });
      if (store.recovery.truncated) options.onEvent?.({ kind: "recovered", detail: store.recovery });
      const lastCheckpoint = await newestCheckpoint(options.dataDir);
      // A signed note proves its receipts were durable: if the store lost any, refuse rather than fork.
      if (lastCheckpoint && lastCheckpoint.size > store.durableSize) {
        throw new CmcpError(
          "chain.corrupt",
          `checkpoint of size ${lastCheckpoint.size} exists but the store holds only ${store.durableSize} receipts; acknowledged receipts are missing, refusing to start`,
        );
      }
      const replay = await replayChain(store, lastCheckpoint?.size);
      if (lastCheckpoint && replay.rootAtCheckpoint !== lastCheckpoint.rootHash) {
        throw new CmcpError(
          "chain.corrupt",
          `stored receipts do not match the signed checkpoint of size ${lastCheckpoint.size}; refusing to extend the chain`,
        );
      }
      const chain = new ReceiptChain(options, store, replay.acc, replay.prev, lastCheckpoint);
      chain.#unlock = unlock;
      await chain.#startEpoch(replay);
      const seconds = options.checkpointEverySeconds ?? 60;
      if (seconds > 0) {
        chain.#timer = setInterval(() => chain.#backgroundCheckpoint(), seconds * 1000);
        chain.#timer.unref();
      }
      return chain;
    } catch (err) {
      await store?.close().catch(() => undefined);
      await unlock();
      throw err;
    }
  }

  get size(): number {
    return this.#acc.size;
  }

  get durableSize(): number {
    return this.#store.durableSize;
  }

  /** Durable entries in order (streamed; safe while appends continue). */
  entries(from = 0, to = this.#store.durableSize): AsyncIterable<{ seq: number; entry: Uint8Array }> {
    return this.#store.entries(from, to);
  }

  get failed(): CmcpError | undefined {
    return this.#failure;
  }

  get lastCheckpoint(): StoredCheckpoint | null {
    return this.#lastCheckpoint;
  }

  /** Signs and durably appends one receipt. Rejects (fail closed) once the store has failed. */
  append(event: ReceiptEvent): Promise<AppendedReceipt> {
    const { policy, ...rest } = event;
    return this.#append({
      ...rest,
      policy: policy ?? { bundle_hash: this.policy.bundle_hash, catalog_hash: this.policy.catalog_hash },
    });
  }

  #append(fields: Pick<Receipt, "type" | "subject" | "policy"> & Partial<Receipt>): Promise<AppendedReceipt> {
    if (this.#failure) return Promise.reject(this.#failure);
    // While closing, only the final checkpoint's own receipt may still be written.
    if (this.#closed || (this.#closing && fields.type !== "checkpoint")) {
      return Promise.reject(new CmcpError("chain.closed", "the receipt chain is closed"));
    }
    const seq = this.#acc.size;
    // Timestamps never go backwards within an epoch, even if the wall clock does.
    let ts = utcTimestamp(this.#now());
    if (ts < this.#lastTs) ts = this.#lastTs;
    this.#lastTs = ts;
    const unsigned = {
      v: RECEIPT_VERSION,
      type: fields.type,
      seq,
      ts,
      epoch: this.epoch,
      prev: this.#prev,
      kid: this.signer.keyId,
      subject: fields.subject,
      policy: fields.policy,
      ...(fields.decision ? { decision: fields.decision } : {}),
      ...(fields.hashes ? { hashes: fields.hashes } : {}),
      ...(fields.commitments ? { commitments: fields.commitments } : {}),
      ...(fields.data ? { data: fields.data } : {}),
    } as const;
    let signed: SignedEntry;
    try {
      signed = signReceipt(unsigned, this.signer);
      assertVerifiable(signed);
    } catch (err) {
      // A receipt the verifier could not read is refused before any state changes; the chain stays usable.
      const why = isCmcpError(err) ? err.message : String(err);
      return Promise.reject(
        new CmcpError("chain.invalid-receipt", `refusing to record a ${fields.type} receipt: ${why}`),
      );
    }
    if (seq !== this.#store.nextSeq) {
      return Promise.reject(
        new CmcpError(
          "chain.order",
          `chain and store disagree on the next seq (${seq} vs ${this.#store.nextSeq})`,
        ),
      );
    }
    const durable = this.#store.append(signed.entry);
    this.#acc.append(leafHash(signed.entry));
    this.#prev = signed.entryHash;
    this.#lastDurable = durable;
    const result = durable.then(
      () => ({ receipt: signed.receipt, seq, entryHash: signed.entryHash }),
      (err: unknown) => {
        throw this.#fail(err);
      },
    );
    if (fields.type !== "checkpoint" && ++this.#sinceCheckpoint >= this.#everyReceipts)
      this.#backgroundCheckpoint();
    return result;
  }

  #fail(err: unknown): CmcpError {
    if (!this.#failure) {
      const cause = isCmcpError(err) ? err.message : String(err);
      this.#failure = new CmcpError(
        "chain.failed",
        `receipt chain stopped accepting records: ${cause}`,
        undefined,
        { cause: err },
      );
      this.#onEvent({ kind: "failed", error: this.#failure.message });
    }
    return this.#failure;
  }

  async #startEpoch(replay: Replay): Promise<void> {
    this.epoch = replay.last ? replay.last.epoch + 1 : 0;
    // The artifact is durable before the receipt naming it, so an export can always include it.
    if (this.policy.artifact) await storeArtifact(this.dataDir, this.policy.artifact);
    const data: EpochStartData = {
      public_key: toBase64(this.signer.publicKey),
      provider: this.provider,
      policy_artifact: this.policy.artifact
        ? { hash: artifactHash(this.policy.artifact), self_sealed: this.policy.artifact.self_sealed }
        : null,
      previous: replay.last
        ? {
            kid: replay.last.kid,
            epoch: replay.last.epoch,
            tip_seq: replay.last.seq,
            tip_hash: replay.prev!,
            checkpoint: replay.lastCheckpointReceipt,
          }
        : null,
    };
    const appended = await this.#append({
      type: "epoch_start",
      subject: {},
      policy: { bundle_hash: this.policy.bundle_hash, catalog_hash: this.policy.catalog_hash },
      data: data as unknown as Record<string, unknown>,
    });
    this.#onEvent({ kind: "epoch", epoch: this.epoch, kid: this.signer.keyId, seq: appended.seq });
  }

  #backgroundCheckpoint(): void {
    // Nothing new since the last checkpoint (its own receipt aside): an idle gateway writes nothing.
    if (this.#closing || this.#sinceCheckpoint === 0) return;
    this.checkpoint().catch((err: unknown) => {
      this.#onEvent({ kind: "checkpoint-failed", error: String((err as Error).message ?? err) });
      // Receipts that no checkpoint can cover are evidence nobody can check: stop taking decisions.
      this.#fail(err);
    });
  }

  /**
   * Signs a checkpoint over every receipt appended so far, once they are
   * durable, stores it beside the chain, and records it as a receipt.
   * Concurrent calls share one checkpoint.
   */
  checkpoint(): Promise<StoredCheckpoint | null> {
    // One checkpoint at a time; a request made meanwhile gets one that starts after it, so it covers
    // every receipt appended before the request. Further requests share that queued one.
    if (this.#checkpointing) {
      this.#checkpointQueued ??= this.#checkpointing
        .then(
          () => undefined,
          () => undefined,
        )
        .then(() => {
          this.#checkpointQueued = null;
          return this.checkpoint();
        });
      return this.#checkpointQueued;
    }
    const run = async (): Promise<StoredCheckpoint | null> => {
      const size = this.#acc.size;
      if (size === 0 || this.#lastCheckpoint?.size === size) return this.#lastCheckpoint;
      const root = this.#acc.root();
      this.#sinceCheckpoint = 0;
      await this.#lastDurable;
      if (this.#failure) throw this.#failure;
      const note = signCheckpoint({ origin: this.origin, size, rootHash: root }, [
        { name: this.origin, signer: this.signer },
      ]);
      await writeFileDurable(join(this.dataDir, CHECKPOINT_DIR, checkpointFileName(size)), utf8(note)).catch(
        (err: unknown) => {
          throw this.#fail(err);
        },
      );
      const stored = { size, rootHash: toHex(root), note };
      this.#lastCheckpoint = stored;
      const data: CheckpointData = { origin: this.origin, size, root_hash: stored.rootHash };
      await this.#append({
        type: "checkpoint",
        subject: {},
        policy: { bundle_hash: this.policy.bundle_hash, catalog_hash: this.policy.catalog_hash },
        data: data as unknown as Record<string, unknown>,
      });
      this.#onEvent({ kind: "checkpoint", size, rootHash: stored.rootHash });
      return stored;
    };
    this.#checkpointing = run().finally(() => {
      this.#checkpointing = null;
    });
    return this.#checkpointing;
  }

  /**
   * Issues a TRACE claim for one session over a fresh checkpoint, counting
   * the session's calls from the durable receipts it covers, and stores it
   * beside the chain for export.
   */
  async issueClaim(
    sessionId: string,
    attestation: { measurement: string | null } = { measurement: null },
  ): Promise<TraceClaim> {
    const cp = await this.checkpoint();
    if (!cp) throw new CmcpError("chain.empty", "nothing to claim: the chain is empty");
    const builder = new CallSummaryBuilder(sessionId);
    let last: Uint8Array = new Uint8Array(0);
    for await (const { entry } of this.#store.entries(0, cp.size)) {
      builder.add(parseJson(entry) as Receipt);
      last = entry;
    }
    const claim = signClaim(
      {
        trace_version: TRACE_VERSION,
        session_id: sessionId,
        timestamp_utc: utcTimestamp(this.#now()),
        signing_key: { kid: this.signer.keyId, public_key: toBase64(this.signer.publicKey) },
        attestation_report: {
          provider: this.provider,
          measurement: attestation.measurement,
          report_data: reportDataForKey(this.signer.publicKey),
        },
        policy_bundle: {
          hash: this.policy.bundle_hash,
          enforcement_mode: this.policy.enforcement_mode,
          policy_version: this.policy.policy_version,
          artifact_hash: this.policy.artifact ? artifactHash(this.policy.artifact) : null,
          self_sealed: this.policy.artifact?.self_sealed ?? false,
        },
        tool_catalog: { hash: this.policy.catalog_hash },
        call_summary: builder.summary(),
        audit_chain_root: cp.rootHash,
        audit_chain_tip: sha256Hex(last),
        checkpoint: { origin: this.origin, size: cp.size, root_hash: cp.rootHash },
      },
      this.signer,
    );
    const name = `${String(cp.size).padStart(20, "0")}-${sha256Hex(utf8(sessionId)).slice(0, 16)}.json`;
    await writeFileDurable(join(this.dataDir, CLAIM_DIR, name), utf8(JSON.stringify(claim)));
    return claim;
  }

  /**
   * Stops taking receipts, waits for those in flight, writes a final
   * checkpoint over all of them, then closes the store. Concurrent and
   * repeated calls share one close. Rejects if the chain had failed.
   */
  close(): Promise<void> {
    this.#closePromise ??= (async () => {
      this.#closing = true;
      clearInterval(this.#timer);
      try {
        await this.#lastDurable.catch(() => undefined);
        if (!this.#failure) await this.checkpoint();
      } finally {
        this.#closed = true;
        try {
          await this.#store.close();
        } finally {
          await this.#unlock();
        }
      }
      if (this.#failure) throw this.#failure;
    })();
    return this.#closePromise;
  }
}

/** What the governor writes, the verifier must accept: same schema, same parser limits. */
function assertVerifiable(signed: SignedEntry): void {
  if (!validateReceipt(signed.receipt)) {
    const e = validateReceipt.errors?.[0];
    throw new CmcpError(
      "chain.invalid-receipt",
      `receipt-v1 schema: ${e ? `${e.instancePath || "/"} ${e.message}` : "invalid"}`,
    );
  }
  parseJson(signed.entry, RECEIPT_JSON_LIMITS);
}

interface Replay {
  acc: MerkleAccumulator;
  prev: string | null;
  last: { seq: number; epoch: number; kid: string } | null;
  lastCheckpointReceipt: { size: number; root_hash: string } | null;
  rootAtCheckpoint: string | null;
}

/** Re-reads the durable chain: rebuilds the Merkle state and checks linkage, so a damaged chain is never extended. */
async function replayChain(store: ChainStore, checkpointSize?: number): Promise<Replay> {
  const acc = new MerkleAccumulator();
  let prev: string | null = null;
  let last: Replay["last"] = null;
  let lastCheckpointReceipt: Replay["lastCheckpointReceipt"] = null;
  let rootAtCheckpoint: string | null = null;
  for await (const { seq, entry } of store.entries()) {
    let r: Receipt;
    try {
      r = parseJson(entry) as Receipt;
    } catch (err) {
      throw new CmcpError(
        "chain.corrupt",
        `stored receipt ${seq} is not valid JSON: ${(err as Error).message}`,
      );
    }
    if (r.seq !== seq || r.prev !== prev) {
      throw new CmcpError(
        "chain.corrupt",
        `stored receipt ${seq} does not link to its predecessor; refusing to extend a broken chain`,
      );
    }
    if (r.type === "checkpoint") {
      const d = r.data as unknown as CheckpointData;
      lastCheckpointReceipt = { size: d.size, root_hash: d.root_hash };
    }
    acc.append(leafHash(entry));
    if (acc.size === checkpointSize) rootAtCheckpoint = toHex(acc.root());
    prev = sha256Hex(entry);
    last = { seq, epoch: r.epoch, kid: r.kid };
  }
  return { acc, prev, last, lastCheckpointReceipt, rootAtCheckpoint };
}

async function bindOrigin(dataDir: string, origin: string): Promise<void> {
  const path = join(dataDir, LOG_INFO);
  let existing: LogInfo | undefined;
  try {
    existing = parseJson(await readFile(path)) as LogInfo;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
  if (existing) {
    if (existing.origin !== origin) {
      throw new CmcpError(
        "chain.origin",
        `data directory belongs to log "${existing.origin}", not "${origin}"`,
      );
    }
    return;
  }
  await writeFileDurable(path, utf8(JSON.stringify({ origin } satisfies LogInfo)));
}

export async function readLogInfo(dataDir: string): Promise<LogInfo> {
  try {
    return parseJson(await readFile(join(dataDir, LOG_INFO))) as LogInfo;
  } catch (err) {
    throw new CmcpError(
      "chain.not-found",
      `${dataDir} holds no cmcp receipt chain (${(err as Error).message})`,
    );
  }
}

const NOTE_NAME = /^\d{20}\.note$/;

async function checkpointNames(dataDir: string): Promise<string[]> {
  const names = await readdir(join(dataDir, CHECKPOINT_DIR)).catch(() => [] as string[]);
  return names.filter((n) => NOTE_NAME.test(n)).sort();
}

async function readCheckpoint(dataDir: string, name: string): Promise<StoredCheckpoint> {
  const note = await readFile(join(dataDir, CHECKPOINT_DIR, name), "utf8");
  const rootLine = note.split("\n")[2] ?? "";
  return { size: Number(name.slice(0, 20)), rootHash: Buffer.from(rootLine, "base64").toString("hex"), note };
}

/** Stored checkpoints with size <= maxSize, ascending. */
export async function listCheckpoints(dataDir: string, maxSize: number): Promise<StoredCheckpoint[]> {
  const names = (await checkpointNames(dataDir)).filter((n) => Number(n.slice(0, 20)) <= maxSize);
  return Promise.all(names.map((n) => readCheckpoint(dataDir, n)));
}

/** The largest stored checkpoint (names sort by size), read alone: start-up does not read every note. */
async function newestCheckpoint(dataDir: string): Promise<StoredCheckpoint | null> {
  const names = await checkpointNames(dataDir);
  const last = names[names.length - 1];
  return last ? readCheckpoint(dataDir, last) : null;
}

const ARTIFACT_DIR = "artifacts";

async function storeArtifact(dataDir: string, artifact: PolicyArtifact): Promise<void> {
  const dir = join(dataDir, ARTIFACT_DIR);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const path = join(dir, `${artifactHash(artifact)}.json`);
  const bytes = canonicalBytes(artifact);
  const existing = await readFile(path).catch(() => null);
  if (existing && Buffer.from(existing).equals(bytes)) return;
  await writeFileDurable(path, bytes);
}

/** The stored artifact with this hash; a missing or altered file is an error naming it. */
export async function readStoredArtifact(dataDir: string, hash: string): Promise<PolicyArtifact> {
  const path = join(dataDir, ARTIFACT_DIR, `${hash}.json`);
  const bytes = await readFile(path).catch((err: NodeJS.ErrnoException) => {
    throw new CmcpError("export.artifact-missing", `policy artifact ${hash} is not stored (${err.code})`);
  });
  const value = parseJson(bytes, ARTIFACT_JSON_LIMITS) as PolicyArtifact;
  if (artifactHash(value) !== hash)
    throw new CmcpError("export.artifact-altered", `stored policy artifact ${hash} does not match its hash`);
  return value;
}

export async function listClaims(dataDir: string): Promise<TraceClaim[]> {
  const dir = join(dataDir, CLAIM_DIR);
  const names = (await readdir(dir).catch(() => [] as string[])).filter((n) => n.endsWith(".json")).sort();
  const out: TraceClaim[] = [];
  for (const name of names) out.push(parseJson(await readFile(join(dir, name))) as TraceClaim);
  return out;
}
