/**
 * Durable appends. Baseline: a plain file write + fsync per record (what the
 * disk allows). Candidates: the chain store with one fsync per record, the
 * store with group commit under concurrent appends, and the full receipt
 * chain (build + sign + group-committed append).
 *   node --import tsx bench/chain-append.bench.ts
 */
import { mkdtemp, open, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { generateSigner } from "../artifacts/keys.js";
import { ChainStore } from "../governor/chain-store.js";
import { ReceiptChain } from "../governor/receipt-chain.js";
import { printRates, type Rate } from "./harness.js";

const dir = await mkdtemp(join(process.env.BENCH_DIR ?? tmpdir(), "cmcp-bench-append-"));
const entry = new Uint8Array(900).fill(0x61);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 3);

async function timed(label: string, run: (deadline: number) => Promise<number>): Promise<Rate> {
  const t0 = performance.now();
  const n = await run(t0 + SECONDS * 1000);
  const secs = (performance.now() - t0) / 1000;
  return { label, opsPerSec: n / secs, usPerOp: (secs * 1e6) / n };
}

try {
  const baseline = await timed("baseline: raw write + fsync per record", async (deadline) => {
    const fh = await open(join(dir, "raw.bin"), "w");
    let n = 0;
    let pos = 0;
    while (performance.now() < deadline) {
      await fh.write(entry, 0, entry.length, pos);
      pos += entry.length;
      await fh.sync();
      n++;
    }
    await fh.close();
    return n;
  });
  const perRecord = await timed("store, one fsync per record", async (deadline) => {
    const store = await ChainStore.open({ dir: join(dir, "single"), groupCommit: false });
    let n = 0;
    while (performance.now() < deadline) {
      await store.append(entry);
      n++;
    }
    await store.close();
    return n;
  });
  const grouped = (inFlight: number) =>
    timed(`store, group commit, ${inFlight} in flight`, async (deadline) => {
      const store = await ChainStore.open({ dir: join(dir, `group-${inFlight}`) });
      let n = 0;
      const worker = async () => {
        while (performance.now() < deadline) {
          await store.append(entry);
          n++;
        }
      };
      await Promise.all(Array.from({ length: inFlight }, worker));
      await store.close();
      return n;
    });
  const g16 = await grouped(16);
  const g256 = await grouped(256);
  const chain = await timed("receipt chain build+sign+append, 256 in flight", async (deadline) => {
    const c = await ReceiptChain.open({
      dataDir: join(dir, "chain"),
      origin: "cmcp.bench/append",
      signer: generateSigner(),
      provider: "software",
      checkpointEverySeconds: 0,
      checkpointEveryReceipts: 10_000,
    });
    let n = 0;
    const worker = async () => {
      while (performance.now() < deadline) {
        await c.append({
          type: "decision",
          subject: { session: "s", tool: "read_file", method: "tools/call", request_id: String(n) },
          decision: { outcome: "allow", reasons: [], policy_ids: ["baseline.read-only"] },
        });
        n++;
      }
    };
    await Promise.all(Array.from({ length: 256 }, worker));
    await c.close();
    return n;
  });
  printRates(`Durable append (${entry.length}-byte records, ${SECONDS} s each)`, baseline, [
    perRecord,
    g16,
    g256,
    chain,
  ]);
} finally {
  await rm(dir, { recursive: true, force: true });
}
