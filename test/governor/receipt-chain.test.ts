import { mkdtemp, readdir, readFile, rm, unlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { canonicalBytes } from "../../artifacts/canonical-json.js";
import { generateSigner } from "../../artifacts/keys.js";
import type { EpochStartData, Receipt } from "../../artifacts/receipt.js";
import { parseJson } from "../../artifacts/strict-json.js";
import { verifyTlogProof } from "../../artifacts/tlog-proof.js";
import { verifyBundleFile } from "../../artifacts/verifier/verify-bundle.js";
import { ChainStore, nodeStoreIo, type StoreIo } from "../../governor/chain-store.js";
import { exportBundle, exportTlogProof } from "../../governor/export-bundle.js";
import {
  ReceiptChain,
  type ChainEvent,
  type ReceiptChainOptions,
  type ReceiptEvent,
} from "../../governor/receipt-chain.js";

const ORIGIN = "cmcp.test/chain";
let dir: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "cmcp-chain-"));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

function open(extra: Partial<ReceiptChainOptions> = {}) {
  const signer = generateSigner();
  return ReceiptChain.open({
    dataDir: join(dir, "data"),
    origin: ORIGIN,
    signer,
    provider: "software",
    checkpointEverySeconds: 0,
    ...extra,
  });
}

const decision = (session: string, tool: string, outcome: "allow" | "deny"): ReceiptEvent => ({
  type: "decision",
  subject: { session, tool, method: "tools/call" },
  decision: { outcome, reasons: [], policy_ids: [] },
});

async function storedReceipts(): Promise<Receipt[]> {
  const store = await ChainStore.open({ dir: join(dir, "data", "chain") });
  const out: Receipt[] = [];
  for await (const { entry } of store.entries()) out.push(parseJson(entry) as Receipt);
  await store.close();
  return out;
}

describe("ReceiptChain", () => {
  it("starts each governor start as a new epoch introduced by its own key", async () => {
    const keys: string[] = [];
    for (let e = 0; e < 3; e++) {
      const chain = await open();
      keys.push(chain.signer.keyId);
      expect(chain.epoch).toBe(e);
      await chain.append(decision("s", "echo", "allow"));
      await chain.close();
    }
    const receipts = await storedReceipts();
    const starts = receipts.filter((r) => r.type === "epoch_start");
    expect(starts.map((r) => r.kid)).toEqual(keys);
    expect((starts[0]!.data as unknown as EpochStartData).previous).toBeNull();
    const second = starts[1]!;
    const prevInfo = (second.data as unknown as EpochStartData).previous!;
    expect(prevInfo.kid).toBe(keys[0]);
    expect(prevInfo.tip_seq).toBe(second.seq - 1);
    expect(prevInfo.checkpoint).not.toBeNull();
    receipts.forEach((r, i) => expect(r.seq).toBe(i));
    const out = join(dir, "bundle.json");
    await exportBundle(join(dir, "data"), out);
    const report = await verifyBundleFile(out, { trustedKeys: keys });
    expect(report.summary).toMatch(/^VERIFIED/);
    expect(report.counts.epochs).toBe(3);
  });

  it("checkpoints every N receipts and records each checkpoint as a receipt", async () => {
    const events: ChainEvent[] = [];
    const chain = await open({ checkpointEveryReceipts: 5, onEvent: (e) => events.push(e) });
    for (let i = 0; i < 12; i++) await chain.append(decision("s", "echo", "allow"));
    await chain.close();
    const sizes = events.filter((e) => e.kind === "checkpoint").map((e) => (e as { size: number }).size);
    expect(sizes.length).toBeGreaterThanOrEqual(3);
    const receipts = await storedReceipts();
    expect(
      receipts.filter((r) => r.type === "checkpoint").map((r) => (r.data as { size: number }).size),
    ).toEqual(sizes);
  });

  it("checkpoints on a timer too", async () => {
    const chain = await open({ checkpointEverySeconds: 1 });
    await chain.append(decision("s", "echo", "allow"));
    const before = chain.lastCheckpoint;
    expect(before).toBeNull();
    await new Promise<void>((resolve) => {
      const t = setInterval(() => {
        if (chain.lastCheckpoint) {
          clearInterval(t);
          resolve();
        }
      }, 50);
    });
    expect(chain.lastCheckpoint!.size).toBeGreaterThanOrEqual(2);
    await chain.close();
  });

  it("an idle chain stops checkpointing once everything is covered", async () => {
    const chain = await open({ checkpointEverySeconds: 1 });
    for (let i = 0; i < 100 && !chain.lastCheckpoint; i++) await new Promise((r) => setTimeout(r, 50));
    const settled = chain.size; // the epoch start, the first checkpoint and its own receipt
    await new Promise((r) => setTimeout(r, 2500));
    expect(chain.size).toBe(settled);
    await chain.close();
  });

  it("orders concurrent appends by call order with linked prev hashes", async () => {
    const chain = await open();
    const results = await Promise.all(
      Array.from({ length: 50 }, (_, i) => chain.append(decision(`s${i % 3}`, `t${i}`, "allow"))),
    );
    expect(results.map((r) => r.seq)).toEqual(Array.from({ length: 50 }, (_, i) => i + 1));
    for (let i = 1; i < results.length; i++) expect(results[i]!.receipt.prev).toBe(results[i - 1]!.entryHash);
    await chain.close();
  });

  it("issues TRACE claims whose call summary counts the session's decisions", async () => {
    const chain = await open();
    await chain.append(decision("a", "echo", "allow"));
    await chain.append(decision("a", "rm", "deny"));
    await chain.append(decision("b", "echo", "allow"));
    await chain.append(decision("a", "add", "allow"));
    // Drift in this session and drift outside any session count; another session's does not.
    for (const session of ["a", undefined, "b"])
      await chain.append({
        type: "drift",
        subject: { server: "s", ...(session ? { session } : {}) },
        data: { kind: "definition" },
      });
    const claim = await chain.issueClaim("a");
    expect(claim.call_summary).toEqual({
      tool_calls_total: 3,
      allowed: 2,
      denied: 1,
      tools_invoked: ["add", "echo"],
      drift_events: 2,
    });
    expect(claim.attestation_report.provider).toBe("software");
    await chain.close();
    const out = join(dir, "bundle.json");
    await exportBundle(join(dir, "data"), out);
    const report = await verifyBundleFile(out, { trustedKeys: [chain.signer.keyId] });
    expect(report.ok).toBe(true);
    expect(report.counts.claims).toBe(1);
  });

  it("fails closed when the disk fails, and keeps every acknowledged receipt", async () => {
    let writes = 0;
    const io: StoreIo = {
      ...nodeStoreIo,
      async write(h, data, pos) {
        if (h.path.endsWith(".seg") && ++writes > 4) {
          throw Object.assign(new Error("ENOSPC: no space left on device"), { code: "ENOSPC" });
        }
        return nodeStoreIo.write(h, data, pos);
      },
    };
    const events: ChainEvent[] = [];
    const chain = await open({ store: { io }, onEvent: (e) => events.push(e) });
    const acked: number[] = [];
    let failure: unknown;
    for (let i = 0; i < 10; i++) {
      try {
        acked.push((await chain.append(decision("s", "echo", "allow"))).seq);
      } catch (err) {
        failure = err;
        break;
      }
    }
    expect((failure as { code: string }).code).toBe("chain.failed");
    expect(String((failure as Error).message)).toMatch(/ENOSPC/);
    await expect(chain.append(decision("s", "echo", "allow"))).rejects.toMatchObject({
      code: "chain.failed",
    });
    expect(events.some((e) => e.kind === "failed")).toBe(true);
    await chain.close().catch(() => undefined);
    const receipts = await storedReceipts();
    for (const seq of acked) expect(receipts[seq]?.seq).toBe(seq);
    // A new start continues the chain from the last durable record.
    const next = await open();
    await next.append(decision("s", "echo", "allow"));
    await next.close();
    const out = join(dir, "b.json");
    await exportBundle(join(dir, "data"), out);
    expect((await verifyBundleFile(out, { allowUnanchored: true })).ok).toBe(true);
  });

  it("refuses a second governor on the same data directory", async () => {
    const chain = await open();
    await expect(open()).rejects.toMatchObject({ code: "chain.locked" });
    await expect(exportBundle(join(dir, "data"), join(dir, "x.json"))).rejects.toMatchObject({
      code: "export.locked",
    });
    await chain.close();
    const again = await open();
    await again.close();
  });

  it("refuses a data directory that belongs to another log origin", async () => {
    const chain = await open();
    await chain.close();
    await expect(open({ origin: "cmcp.test/other" })).rejects.toMatchObject({ code: "chain.origin" });
  });

  it("refuses to extend a chain whose stored linkage is broken", async () => {
    const chain = await open();
    await chain.append(decision("s", "echo", "allow"));
    await chain.close();
    const store = await ChainStore.open({ dir: join(dir, "data", "chain") });
    const bogus = { v: 1, seq: store.nextSeq, prev: "0".repeat(64), type: "decision" };
    await store.append(Buffer.from(JSON.stringify(bogus)));
    await store.close();
    await expect(open()).rejects.toMatchObject({ code: "chain.corrupt" });
  });

  it("exports a C2SP tlog-proof that verifies offline against the checkpoint", async () => {
    const chain = await open();
    for (let i = 0; i < 7; i++) await chain.append(decision("s", "echo", "allow"));
    await chain.close();
    const receipts = await storedReceipts();
    const out = join(dir, "proof.txt");
    await exportTlogProof(join(dir, "data"), 4, out);
    const text = await readFile(out, "utf8");
    expect(text.startsWith("c2sp.org/tlog-proof@v1\n")).toBe(true);
    const proves = (r: Receipt | undefined) =>
      verifyTlogProof(text, canonicalBytes(r), [{ name: ORIGIN, publicKey: chain.signer.publicKey }], ORIGIN)
        .ok;
    expect(proves(receipts[4])).toBe(true);
    expect(proves(receipts[5])).toBe(false);
    await expect(exportTlogProof(join(dir, "data"), 999, out)).rejects.toMatchObject({
      code: "export.range",
    });
  });
});

describe("ReceiptChain refuses receipts the verifier could not read", () => {
  it("rejects them with a clear error and stays usable", async () => {
    const chain = await open();
    await expect(chain.append(decision("s", "bad\ud800name", "allow"))).rejects.toMatchObject({
      code: "chain.invalid-receipt",
    });
    await expect(
      chain.append({
        type: "decision",
        subject: { session: "s", tool: "x".repeat(2000) },
        decision: { outcome: "allow", reasons: [], policy_ids: [] },
      }),
    ).rejects.toMatchObject({ code: "chain.invalid-receipt" });
    await expect(
      chain.append({ type: "drift", subject: { server: "s" }, data: { blob: "y".repeat(100_000) } }),
    ).rejects.toMatchObject({ code: "chain.invalid-receipt" });
    const ok = await chain.append(decision("s", "echo", "allow"));
    expect(ok.seq).toBe(1);
    await chain.close();
    const out = join(dir, "bundle.json");
    await exportBundle(join(dir, "data"), out);
    expect((await verifyBundleFile(out, { trustedKeys: [chain.signer.keyId] })).ok).toBe(true);
  });
});

describe("ReceiptChain review findings stay fixed", () => {
  it("close is shared by concurrent callers, refuses appends meanwhile, and its checkpoint covers every acknowledged receipt", async () => {
    const chain = await open();
    const acked = [chain.append(decision("s", "a", "allow")), chain.append(decision("s", "b", "allow"))];
    const closes = [chain.close(), chain.close()];
    await expect(chain.append(decision("s", "late", "allow"))).rejects.toMatchObject({
      code: "chain.closed",
    });
    await Promise.all(closes);
    const seqs = (await Promise.all(acked)).map((r) => r.seq);
    expect(chain.lastCheckpoint!.size).toBeGreaterThan(Math.max(...seqs));
  });

  it("a checkpoint that cannot be written fails the chain closed", async () => {
    const chain = await open({ checkpointEveryReceipts: 3 });
    await rm(join(dir, "data", "checkpoints"), { recursive: true });
    await writeFile(join(dir, "data", "checkpoints"), "not a directory");
    let failure: unknown;
    for (let i = 0; i < 20 && !failure; i++) {
      try {
        await chain.append(decision("s", "echo", "allow"));
        await new Promise((r) => setTimeout(r, 5));
      } catch (err) {
        failure = err;
      }
    }
    expect(failure).toMatchObject({ code: "chain.failed" });
    expect(chain.failed).toBeDefined();
    await expect(chain.close()).rejects.toMatchObject({ code: "chain.failed" });
  });

  it("refuses to start when a signed checkpoint covers receipts the store no longer has, or disagrees with them", async () => {
    const chain = await open();
    for (let i = 0; i < 4; i++) await chain.append(decision("s", "echo", "allow"));
    await chain.close();
    const cpDir = join(dir, "data", "checkpoints");
    const names = (await readdir(cpDir)).sort();
    const last = names[names.length - 1]!;
    const note = await readFile(join(cpDir, last), "utf8");
    // A note claiming more receipts than the store holds.
    await writeFile(join(cpDir, `${String(999).padStart(20, "0")}.note`), note);
    await expect(open()).rejects.toMatchObject({ code: "chain.corrupt" });
    await unlink(join(cpDir, `${String(999).padStart(20, "0")}.note`));
    // A note whose root differs from the stored receipts at its size.
    const lines = note.split("\n");
    lines[2] = Buffer.alloc(32, 7).toString("base64");
    await writeFile(join(cpDir, last), lines.join("\n"));
    await expect(open()).rejects.toMatchObject({ code: "chain.corrupt" });
  });
});
