import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { toBase64 } from "../../../artifacts/encoding.js";
import { formatVerifierKey } from "../../../artifacts/signed-note.js";
import type { TraceClaim } from "../../../artifacts/trace-claim.js";
import { verifyBundleFile, type VerifyReport } from "../../../artifacts/verifier/verify-bundle.js";
import {
  CATALOG_HASH,
  makeBundle,
  POLICY_HASH,
  TEST_ORIGIN,
  withBundle,
  type MadeBundle,
} from "../../helpers/make-bundle.js";

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

let small: MadeBundle;
let smallJson: { [k: string]: Json };
let trusted: string[];

beforeAll(async () => {
  small = await makeBundle({ epochs: 2, receiptsPerEpoch: 5, sessions: 2, checkpointEveryReceipts: 4 });
  smallJson = JSON.parse(await readFile(small.bundlePath, "utf8"));
  trusted = small.signers.map((s) => s.keyId);
});

afterAll(async () => {
  await small?.cleanup();
});

async function verifyJson(doc: unknown): Promise<VerifyReport> {
  return verifyBundleFile(Buffer.from(JSON.stringify(doc)), { trustedKeys: trusted, workers: 0 });
}

function firstFailure(r: VerifyReport): string {
  return r.steps.find((s) => s.status === "fail")?.id ?? "none";
}

describe("verifyBundleFile on a real chain export", () => {
  it("verifies every step and reports the keys anchored", async () => {
    const r = await verifyBundleFile(small.bundlePath, { trustedKeys: trusted });
    expect(r.steps.filter((s) => s.status === "fail")).toEqual([]);
    expect(r.ok).toBe(true);
    expect(r.anchored).toBe(true);
    expect(r.summary).toMatch(/^VERIFIED/);
    expect(r.counts.epochs).toBe(2);
    expect(r.counts.claims).toBe(2);
    expect(r.steps.find((s) => s.id === "consistency")?.status).toBe("pass");
    expect(r.steps.find((s) => s.id === "inclusion")?.status).toBe("pass");
  });

  it("fails the anchoring step without a trusted key, and never says verified", async () => {
    const r = await verifyBundleFile(small.bundlePath, {});
    expect(r.ok).toBe(false);
    expect(firstFailure(r)).toBe("keys");
    expect(r.summary).not.toMatch(/^VERIFIED/);
  });

  it("passes as UNANCHORED only when the auditor allows it", async () => {
    const r = await verifyBundleFile(small.bundlePath, { allowUnanchored: true });
    expect(r.ok).toBe(true);
    expect(r.anchored).toBe(false);
    expect(r.summary).toMatch(/UNANCHORED/);
    expect(r.steps.find((s) => s.id === "keys")?.status).toBe("warn");
  });

  it("checks the sealed policy artifact: warns while its issuer is unanchored, passes with --issuer-key", async () => {
    const step = (r: VerifyReport) => r.steps.find((s) => s.id === "artifact")!;
    const unanchored = await verifyBundleFile(small.bundlePath, { trustedKeys: trusted, workers: 0 });
    expect(unanchored.ok).toBe(true);
    expect(step(unanchored).status).toBe("warn");
    expect(step(unanchored).detail).toMatch(/not anchored \(pass --issuer-key\)/);
    for (const key of [small.issuer!.keyId, toBase64(small.issuer!.publicKey)]) {
      const r = await verifyBundleFile(small.bundlePath, {
        trustedKeys: trusted,
        issuerKeys: [key],
        workers: 0,
      });
      expect(step(r).status, key).toBe("pass");
      expect(r.ok).toBe(true);
    }
    const other = await verifyBundleFile(small.bundlePath, {
      trustedKeys: trusted,
      issuerKeys: ["f".repeat(64)],
      workers: 0,
    });
    expect(firstFailure(other)).toBe("artifact");
    expect(step(other).detail).toMatch(/which no --issuer-key names/);
    const garbage = await verifyBundleFile(small.bundlePath, {
      trustedKeys: trusted,
      issuerKeys: ["not a key"],
      workers: 0,
    });
    expect(firstFailure(garbage)).toBe("artifact");
  });

  it("fails when an epoch names an artifact the bundle lacks, or ran without one under --issuer-key", async () => {
    const stripped = { ...smallJson, policy_artifacts: [] };
    const r = await verifyJson(stripped);
    expect(firstFailure(r)).toBe("artifact");
    expect(r.steps.find((s) => s.id === "artifact")!.detail).toMatch(/does not include/);

    await withBundle({ epochs: 1, receiptsPerEpoch: 3, artifact: false }, async (bare) => {
      const keys = bare.signers.map((s) => s.keyId);
      const skipped = await verifyBundleFile(bare.bundlePath, { trustedKeys: keys, workers: 0 });
      expect(skipped.ok).toBe(true);
      expect(skipped.steps.find((s) => s.id === "artifact")!.status).toBe("skip");
      const anchored = await verifyBundleFile(bare.bundlePath, {
        trustedKeys: keys,
        issuerKeys: [small.issuer!.keyId],
        workers: 0,
      });
      expect(firstFailure(anchored)).toBe("artifact");
      expect(anchored.steps.find((s) => s.id === "artifact")!.detail).toMatch(
        /without a sealed policy artifact/,
      );
    });
  });

  it("reports a self-sealed (dev-mode) artifact as a warning, and as a failure under --issuer-key", async () => {
    await withBundle({ epochs: 1, receiptsPerEpoch: 3, artifact: "self" }, async (dev) => {
      const keys = dev.signers.map((s) => s.keyId);
      const r = await verifyBundleFile(dev.bundlePath, { trustedKeys: keys, workers: 0 });
      expect(r.ok).toBe(true);
      const s = r.steps.find((x) => x.id === "artifact")!;
      expect(s.status).toBe("warn");
      expect(s.detail).toMatch(/self-sealed/);
      const strict = await verifyBundleFile(dev.bundlePath, {
        trustedKeys: keys,
        issuerKeys: [small.issuer!.keyId],
        workers: 0,
      });
      expect(firstFailure(strict)).toBe("artifact");
      expect(dev.claims[0]!.policy_bundle.self_sealed).toBe(true);
    });
  });

  it("accepts trusted keys as key IDs, raw base64 keys or note verifier keys", async () => {
    const [a, b] = small.signers;
    const r = await verifyBundleFile(small.bundlePath, {
      trustedKeys: [toBase64(a!.publicKey), formatVerifierKey(TEST_ORIGIN, b!.publicKey)],
    });
    expect(r.ok).toBe(true);
    // Keys whose base64 holds '+' characters must not be mistaken for name+hash+key verifier keys.
    const { signerFromSeed } = await import("../../../artifacts/keys.js");
    let found = 0;
    for (let seed = 0; found < 3 && seed < 5000; seed++) {
      const k = signerFromSeed(new Uint8Array(32).fill(seed % 256).map((x, i) => (i === 0 ? seed >> 8 : x)));
      const b64 = toBase64(k.publicKey);
      if (b64.split("+").length !== 3) continue;
      expect(b64.length).toBe(44);
      found++;
      const rr = await verifyBundleFile(small.bundlePath, { trustedKeys: [...trusted, b64] });
      expect(rr.steps.find((s) => s.id === "keys")?.status, b64).toBe("pass"); // an extra trusted key is harmless
    }
    expect(found).toBe(3);
    const bad = await verifyBundleFile(small.bundlePath, { trustedKeys: ["not-a-key"] });
    expect(firstFailure(bad)).toBe("keys");
  });

  it("anchoring one epoch's key does not anchor the other", async () => {
    const r = await verifyBundleFile(small.bundlePath, { trustedKeys: [trusted[0]!] });
    expect(firstFailure(r)).toBe("keys");
  });

  it("checks approved policy and catalog hashes", async () => {
    const ok = await verifyBundleFile(small.bundlePath, {
      trustedKeys: trusted,
      policyHash: POLICY_HASH,
      catalogHash: CATALOG_HASH,
    });
    expect(ok.ok).toBe(true);
    const wrong = await verifyBundleFile(small.bundlePath, {
      trustedKeys: trusted,
      policyHash: "c".repeat(64),
    });
    expect(firstFailure(wrong)).toBe("approved");
    const wrongCatalog = await verifyBundleFile(small.bundlePath, {
      trustedKeys: trusted,
      catalogHash: "d".repeat(64),
    });
    expect(firstFailure(wrongCatalog)).toBe("approved");
  });

  it("verifies a bundle whose members come in another order, and rejects members smuggled after receipts", async () => {
    const { receipts, ...header } = smallJson;
    const reordered = await verifyJson({ receipts, ...header });
    expect(reordered.ok).toBe(true);
    const text = JSON.stringify(smallJson).slice(0, -1) + ',"extra":1}';
    const smuggled = await verifyBundleFile(Buffer.from(text), { trustedKeys: trusted, workers: 0 });
    expect(smuggled.ok).toBe(false);
  });

  it("gives the same verdict with and without worker threads", async () => {
    const pooled = await verifyBundleFile(small.bundlePath, {
      trustedKeys: trusted,
      workers: 2,
      parallelThreshold: 1,
      batchSize: 3,
    });
    const inline = await verifyBundleFile(small.bundlePath, { trustedKeys: trusted, workers: 0 });
    expect(pooled.steps).toEqual(inline.steps);
  });
});

/** Every leaf value of the bundle, with a path to reach it. */
function leaves(
  v: Json,
  path: (string | number)[] = [],
  out: { path: (string | number)[]; value: Json }[] = [],
) {
  if (v !== null && typeof v === "object") {
    if (Array.isArray(v)) v.forEach((x, i) => leaves(x, [...path, i], out));
    else for (const [k, x] of Object.entries(v)) leaves(x, [...path, k], out);
  } else out.push({ path, value: v });
  return out;
}

function setAt(doc: Json, path: (string | number)[], value: Json): Json {
  const copy = structuredClone(doc) as { [k: string]: Json };
  let node: Json = copy;
  for (const p of path.slice(0, -1)) node = (node as Record<string | number, Json>)[p as string]!;
  (node as Record<string | number, Json>)[path[path.length - 1] as string] = value;
  return copy;
}

const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/** Replaces the character at i by another of the same class, so the value stays plausible. */
function mutateChar(s: string, i: number): string {
  const c = s[i]!;
  let r: string;
  if (/[0-9a-f]/.test(c) && /^[0-9a-f]+$/.test(s)) r = c === "0" ? "1" : "0";
  else if (B64.includes(c)) r = B64[(B64.indexOf(c) + 17) % 64]!;
  else if (c === "\n") r = " ";
  else r = c === "x" ? "y" : "x";
  return s.slice(0, i) + r + s.slice(i + 1);
}

/**
 * created_utc is unsigned export metadata; format is the file-type marker, and
 * a bundle with another format is not a cmcp bundle at all (exit 2, tested below).
 */
const UNSIGNED = new Set(["created_utc", "format"]);

describe("tampering", () => {
  it("exhaustive over a small bundle: every value changed fails with exit-1 semantics", async () => {
    const all = leaves(smallJson).filter((l) => !UNSIGNED.has(String(l.path[0])));
    // Records whose every character is mutated: one receipt of each type, the first of every other kind.
    const receipts = smallJson.receipts as { type: string }[];
    const everyChar = new Set<string>([
      "checkpoints.0",
      "claims.0",
      "inclusion_proofs.0",
      "consistency_proofs.0",
      "keys.0",
      "policy_artifacts.0",
      "origin",
    ]);
    for (const t of new Set(receipts.map((r) => r.type)))
      everyChar.add(`receipts.${receipts.findIndex((r) => r.type === t)}`);
    let cases = 0;
    const misses: string[] = [];
    for (const { path, value } of all) {
      const variants: Json[] = [];
      if (typeof value === "number") variants.push(value + 1, value === 0 ? 2 : value - 1);
      else if (typeof value === "boolean") variants.push(!value);
      else if (value === null) variants.push("x");
      else if (typeof value === "string") {
        const record = path.slice(0, 2).join(".");
        const positions =
          everyChar.has(record) || everyChar.has(String(path[0]))
            ? Array.from({ length: value.length }, (_, i) => i)
            : [...new Set([0, value.length >> 1, value.length - 1])].filter((i) => i >= 0);
        for (const i of positions) variants.push(mutateChar(value, i));
        variants.push(value + "x", "");
      }
      for (const v of variants) {
        if (JSON.stringify(v) === JSON.stringify(value)) continue;
        cases++;
        const r = await verifyJson(setAt(smallJson, path, v));
        if (r.ok || r.unreadable) misses.push(`${path.join(".")} -> ${JSON.stringify(v).slice(0, 60)}`);
      }
    }
    expect(misses).toEqual([]);
    expect(cases).toBeGreaterThan(3000);
  }, 600_000);

  it("a changed format marker makes the input unreadable, not verified", async () => {
    const r = await verifyJson({ ...smallJson, format: "cmcp.evidence-bundle.v2" });
    expect(r.ok).toBe(false);
    expect(r.unreadable).toBe(true);
  });

  it("dropping, duplicating or reordering receipts fails the chain step", async () => {
    const receipts = smallJson.receipts as Json[];
    for (let i = 0; i < receipts.length; i++) {
      const dropped = { ...smallJson, receipts: receipts.filter((_, j) => j !== i) };
      const r = await verifyJson(dropped);
      expect(r.ok, `drop ${i}`).toBe(false);
      expect(r.unreadable).toBe(false);
    }
    for (let i = 0; i + 1 < receipts.length; i++) {
      const swapped = [...receipts];
      [swapped[i], swapped[i + 1]] = [swapped[i + 1]!, swapped[i]!];
      const r = await verifyJson({ ...smallJson, receipts: swapped });
      expect(r.ok, `swap ${i}`).toBe(false);
      expect(firstFailure(r)).toBe("chain");
    }
    const dup = [...receipts.slice(0, 3), receipts[2]!, ...receipts.slice(3)];
    expect(firstFailure(await verifyJson({ ...smallJson, receipts: dup }))).toBe("chain");
  });

  it("swapping, dropping or reordering checkpoints fails", async () => {
    const cps = smallJson.checkpoints as string[];
    expect(cps.length).toBeGreaterThanOrEqual(3);
    const reordered = [cps[1]!, cps[0]!, ...cps.slice(2)];
    expect((await verifyJson({ ...smallJson, checkpoints: reordered })).ok).toBe(false);
    const dropped = cps.slice(1);
    expect((await verifyJson({ ...smallJson, checkpoints: dropped })).ok).toBe(false);
    await withBundle({ epochs: 1, receiptsPerEpoch: 5, checkpointEveryReceipts: 4 }, async (other) => {
      const foreign = JSON.parse(await readFile(other.bundlePath, "utf8")).checkpoints as string[];
      const swapped = [foreign[0]!, ...cps.slice(1)];
      const r = await verifyJson({ ...smallJson, checkpoints: swapped });
      expect(r.ok).toBe(false);
      // The chain step may fail first (its checkpoint receipt loses its note); the note itself must fail here.
      expect(r.steps.find((s) => s.id === "checkpoints")?.status).toBe("fail");
    });
  });

  it("a whole bundle re-signed with fresh keys fails anchoring against the original keys", async () => {
    const options = { epochs: 2, receiptsPerEpoch: 5, sessions: 2, checkpointEveryReceipts: 4 };
    await withBundle(options, async (forged) => {
      const selfConsistent = await verifyBundleFile(forged.bundlePath, { allowUnanchored: true });
      expect(selfConsistent.ok).toBe(true);
      const r = await verifyBundleFile(forged.bundlePath, { trustedKeys: trusted });
      expect(r.ok).toBe(false);
      expect(firstFailure(r)).toBe("keys");
    });
  });

  it("random single-value changes over a large bundle all fail", async () => {
    const options = { epochs: 3, receiptsPerEpoch: 700, sessions: 5, checkpointEveryReceipts: 250 };
    await withBundle(options, async (large) => {
      const doc = JSON.parse(await readFile(large.bundlePath, "utf8")) as { [k: string]: Json };
      const all = leaves(doc).filter((l) => !UNSIGNED.has(String(l.path[0])));
      const keys = large.signers.map((s) => s.keyId);
      let seed = 12345;
      const rand = (n: number) => {
        seed = (seed * 1103515245 + 12345) % 2 ** 31;
        return seed % n;
      };
      const misses: string[] = [];
      for (let k = 0; k < 40; k++) {
        const { path, value } = all[rand(all.length)]!;
        const v: Json =
          typeof value === "string" && value.length > 0
            ? mutateChar(value, rand(value.length))
            : typeof value === "number"
              ? value + 1 + rand(5)
              : "x";
        const path2 = join(large.dir, "t.json");
        await writeFile(path2, JSON.stringify(setAt(doc, path, v)));
        const r = await verifyBundleFile(path2, { trustedKeys: keys, workers: 0 });
        if (r.ok || r.unreadable) misses.push(path.join("."));
      }
      expect(misses).toEqual([]);
    });
  });
});

describe("review findings stay fixed", () => {
  it("a retired epoch key cannot sign a checkpoint (or cut the log) inside a later epoch", async () => {
    const { canonicalBytes } = await import("../../../artifacts/canonical-json.js");
    const { signCheckpoint } = await import("../../../artifacts/checkpoint.js");
    const { leafHash, MerkleTree } = await import("../../../artifacts/merkle.js");
    const receipts = smallJson.receipts as { type: string; epoch: number }[];
    const start1 = receipts.findIndex((r) => r.type === "epoch_start" && r.epoch === 1);
    const cut = start1 + 2;
    const kept = receipts.slice(0, cut);
    const tree = new MerkleTree(kept.map((r) => leafHash(canonicalBytes(r))));
    const sizeOf = (n: string) => Number(n.split("\n")[1]);
    const forge = (signer: (typeof small.signers)[number]) => {
      const notes = (smallJson.checkpoints as string[]).filter((n) => sizeOf(n) < cut);
      notes.push(
        signCheckpoint({ origin: TEST_ORIGIN, size: cut, rootHash: tree.root(cut) }, [
          { name: TEST_ORIGIN, signer },
        ]),
      );
      const sizes = notes.map(sizeOf);
      return {
        ...smallJson,
        receipts: kept,
        checkpoints: notes,
        consistency_proofs: sizes.slice(1).map((s, i) => ({
          old_size: sizes[i]!,
          new_size: s,
          proof: tree.consistencyProof(sizes[i]!, s).map(toBase64),
        })),
        inclusion_proofs: [],
        claims: [],
      };
    };
    const byOldKey = await verifyJson(forge(small.signers[0]!));
    expect(byOldKey.ok).toBe(false);
    expect(byOldKey.steps.find((s) => s.id === "checkpoints")?.detail).toMatch(/not signed by epoch key/);
    // The same cut signed by the right epoch's key is a genuine (shorter) log: cutting at a signed checkpoint is allowed.
    expect((await verifyJson(forge(small.signers[1]!))).ok).toBe(true);
  });

  it("--policy-hash fails when a decision was made without any policy", async () => {
    await withBundle({ epochs: 1, receiptsPerEpoch: 3 }, async (mixed) => {
      const { ReceiptChain } = await import("../../../governor/receipt-chain.js");
      const { generateSigner } = await import("../../../artifacts/keys.js");
      const { exportBundle } = await import("../../../governor/export-bundle.js");
      const signer = generateSigner();
      const chain = await ReceiptChain.open({
        dataDir: mixed.dataDir,
        origin: TEST_ORIGIN,
        signer,
        provider: "software",
        checkpointEverySeconds: 0,
      });
      await chain.append({
        type: "decision",
        subject: { session: "x", method: "tools/call", tool: "rm" },
        decision: { outcome: "allow", reasons: [], policy_ids: [] },
      });
      await chain.close();
      await exportBundle(mixed.dataDir, mixed.bundlePath);
      const r = await verifyBundleFile(mixed.bundlePath, {
        trustedKeys: [...mixed.signers.map((s) => s.keyId), signer.keyId],
        policyHash: POLICY_HASH,
      });
      expect(r.ok).toBe(false);
      expect(r.steps.find((s) => s.id === "approved")?.detail).toMatch(/without any policy bundle hash/);
    });
  });

  it("a claim whose drift count disagrees with the receipts fails, even when its key signed it", async () => {
    const { signClaim } = await import("../../../artifacts/trace-claim.js");
    const claims = smallJson.claims as unknown as TraceClaim[];
    const { sig: _sig, ...claim } = claims[0]!;
    const signer = small.signers.find((s) => s.keyId === claim.signing_key.kid)!;
    const lying = signClaim(
      {
        ...claim,
        call_summary: { ...claim.call_summary, drift_events: claim.call_summary.drift_events + 1 },
      },
      signer,
    );
    const r = await verifyJson({ ...smallJson, claims: [lying, ...claims.slice(1)] });
    expect(firstFailure(r)).toBe("claims");
    expect(r.steps.find((s) => s.id === "claims")?.detail).toMatch(/call_summary .* does not match/);
  });

  it("rejects unknown header members before reading them, and bounds the values of known ones", async () => {
    const unknown = await verifyBundleFile(
      Buffer.from('{"format":"cmcp.evidence-bundle.v1","a":[{}],"receipts":[]}'),
    );
    expect(unknown.unreadable).toBe(true);
    expect(unknown.summary).toMatch(/unknown member "a"/);
    const inner = `[${Array(70_000).fill("0").join(",")}]`;
    const many = `{"format":"cmcp.evidence-bundle.v1","keys":[${Array(30).fill(inner).join(",")}],"receipts":[]}`;
    const r = await verifyBundleFile(Buffer.from(many));
    expect(r.unreadable).toBe(true);
    expect(r.summary).toMatch(/more than \d+ values/);
  });
});
