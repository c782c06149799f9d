/**
 * Export and verify a bundle of 100,000 receipts built by the real receipt
 * chain (3 epochs, checkpoints, claims). Baseline: verification in one
 * thread; candidate: signature checks spread over a worker per core.
 *   node --import tsx bench/verify-bundle.bench.ts
 */
import { mkdtemp, rm, stat } from "node:fs/promises";
import { availableParallelism, tmpdir } from "node:os";
import { join } from "node:path";
import { generateSigner } from "../artifacts/keys.js";
import { verifyBundleFile } from "../artifacts/verifier/verify-bundle.js";
import { exportBundle } from "../governor/export-bundle.js";
import { ReceiptChain } from "../governor/receipt-chain.js";
import { line, once } from "./harness.js";

const N = Number(process.env.BUNDLE_RECEIPTS ?? 100_000);
const EPOCHS = 3;
const dir = await mkdtemp(join(process.env.BENCH_DIR ?? tmpdir(), "cmcp-bench-verify-"));
try {
  const dataDir = join(dir, "data");
  const keys: string[] = [];
  const build = await once(async () => {
    for (let e = 0; e < EPOCHS; e++) {
      const signer = generateSigner();
      keys.push(signer.keyId);
      const chain = await ReceiptChain.open({
        dataDir,
        origin: "cmcp.bench/verify",
        signer,
        provider: "software",
        checkpointEverySeconds: 0,
        checkpointEveryReceipts: 10_000,
      });
      const per = Math.ceil(N / EPOCHS);
      const inflight: Promise<unknown>[] = [];
      for (let i = 0; i < per; i++) {
        inflight.push(
          chain.append({
            type: "decision",
            subject: {
              session: `s${i % 50}`,
              agent: "bench",
              tool: `tool_${i % 20}`,
              method: "tools/call",
              request_id: String(i),
            },
            decision: {
              outcome: i % 7 === 0 ? "deny" : "allow",
              reasons: ["bench"],
              policy_ids: ["baseline.read-only"],
            },
          }),
        );
        if (inflight.length >= 512) await Promise.all(inflight.splice(0));
      }
      await Promise.all(inflight);
      await chain.issueClaim("s1");
      await chain.close();
    }
  });
  const out = join(dir, "bundle.json");
  const exp = await once(() => exportBundle(dataDir, out));
  const size = (await stat(out)).size;
  line(
    `\n## Evidence bundle of ${exp.value.receipts.toLocaleString("en-US")} receipts (${(size / 1e6).toFixed(1)} MB, ${exp.value.checkpoints} checkpoints, ${exp.value.claims} claims)`,
  );
  line(`build chain (sign + fsync'd appends)   ${(build.ms / 1000).toFixed(2).padStart(7)} s`);
  line(`export bundle                          ${(exp.ms / 1000).toFixed(2).padStart(7)} s`);
  const single = await once(() => verifyBundleFile(out, { trustedKeys: keys, workers: 0 }));
  if (!single.value.ok) throw new Error(single.value.summary);
  const workers = availableParallelism();
  const parallel = await once(() => verifyBundleFile(out, { trustedKeys: keys, workers }));
  if (!parallel.value.ok) throw new Error(parallel.value.summary);
  line(
    `baseline: verify in one thread         ${(single.ms / 1000).toFixed(2).padStart(7)} s   ${Math.round((exp.value.receipts * 1000) / single.ms).toLocaleString("en-US")} receipts/s`,
  );
  line(
    `verify with ${workers} worker thread(s)         ${(parallel.ms / 1000).toFixed(2).padStart(7)} s   ${Math.round((exp.value.receipts * 1000) / parallel.ms).toLocaleString("en-US")} receipts/s   ${(single.ms / parallel.ms).toFixed(2)}x baseline`,
  );
  line(
    `peak RSS of this process               ${(process.resourceUsage().maxRSS / 1024).toFixed(0).padStart(7)} MB`,
  );
} finally {
  await rm(dir, { recursive: true, force: true });
}
