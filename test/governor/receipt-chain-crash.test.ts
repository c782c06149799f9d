import { spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { canonicalBytes } from "../../artifacts/canonical-json.js";
import { sha256Hex } from "../../artifacts/hash.js";
import type { Receipt } from "../../artifacts/receipt.js";
import { parseJson } from "../../artifacts/strict-json.js";
import { verifyBundleFile } from "../../artifacts/verifier/verify-bundle.js";
import { ChainStore } from "../../governor/chain-store.js";
import { exportBundle } from "../../governor/export-bundle.js";

const CHILD = new URL("./fixtures/receipt-loop.ts", import.meta.url).pathname;
const KILLS = 8;
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "cmcp-chain-crash-"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Runs the child until it has acknowledged `acks` more receipts, then SIGKILLs it. */
function runAndKill(dataDir: string, acks: number): Promise<{ maxAck: number; kid: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", CHILD, dataDir], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    let err = "";
    let seen = 0;
    let maxAck = -1;
    let kid = "";
    child.stdout.on("data", (d: Buffer) => {
      out += d.toString();
      const lines = out.split("\n");
      out = lines.pop()!;
      for (const l of lines) {
        if (l.startsWith("epoch ")) kid = l.split(" ")[2]!;
        if (l.startsWith("ack ")) {
          maxAck = Math.max(maxAck, Number(l.slice(4)));
          if (++seen === acks) child.kill("SIGKILL");
        }
      }
    });
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    child.on("close", (code, signal) => {
      if (signal !== "SIGKILL") reject(new Error(`child ended with ${code}/${signal}: ${err}`));
      else resolve({ maxAck, kid });
    });
  });
}

describe("receipt chain under SIGKILL", () => {
  it("keeps every acknowledged receipt, links across epochs, and exports a bundle that verifies", async () => {
    const dataDir = join(dir, "data");
    const keys: string[] = [];
    let maxAck = -1;
    let seed = 7;
    for (let k = 0; k < KILLS; k++) {
      seed = (seed * 48271) % 2147483647;
      const r = await runAndKill(dataDir, 20 + (seed % 150));
      keys.push(r.kid);
      maxAck = Math.max(maxAck, r.maxAck);
      // Every acknowledged receipt is on disk, and the stored chain links.
      const store = await ChainStore.open({ dir: join(dataDir, "chain") });
      expect(store.durableSize).toBeGreaterThan(r.maxAck);
      let prev: string | null = null;
      let i = 0;
      for await (const { entry } of store.entries()) {
        const receipt = parseJson(entry) as Receipt;
        expect(receipt.seq).toBe(i++);
        expect(receipt.prev).toBe(prev);
        expect(Buffer.from(canonicalBytes(receipt)).equals(Buffer.from(entry))).toBe(true);
        prev = sha256Hex(entry);
      }
      await store.close();
    }
    const out = join(dir, "bundle.json");
    const exported = await exportBundle(dataDir, out);
    // The last run died before its final checkpoint, so the bundle ends at the last checkpoint written.
    expect(exported.receipts).toBeGreaterThan(0);
    const report = await verifyBundleFile(out, { trustedKeys: keys });
    expect(report.steps.filter((s) => s.status === "fail")).toEqual([]);
    expect(report.summary).toMatch(/^VERIFIED/);
    expect(maxAck).toBeGreaterThan(0);
  }, 180_000);
});
