/**
 * Receipt build + sign (JCS + Ed25519 + entry hash), node:crypto vs
 * @noble/ed25519, and raw sign/verify for both libraries.
 *   node --import tsx bench/receipt-sign.bench.ts
 */
import { randomBytes } from "node:crypto";
import { canonicalBytes } from "../artifacts/canonical-json.js";
import { nobleSign, nobleVerify, noblePublicKey } from "../artifacts/ed25519-noble.js";
import { signerFromSeed, verifySignature } from "../artifacts/keys.js";
import { payloadHash, receiptSigningBytes, signReceipt, type UnsignedReceipt } from "../artifacts/receipt.js";
import { sha256 } from "../artifacts/hash.js";
import { printRates, rate } from "./harness.js";

const seed = new Uint8Array(randomBytes(32));
const signer = signerFromSeed(seed);
const unsigned: UnsignedReceipt = {
  v: 1,
  type: "decision",
  seq: 123456,
  ts: "2026-11-21T08:47:12.345Z",
  epoch: 4,
  prev: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
  kid: signer.keyId,
  subject: {
    session: "0f0e5c9a-5d1e-4c77-9c59-2b3f8f6f4d11",
    agent: "support-bot",
    workflow: "support-agent",
    server: "filesystem",
    tool: "read_file",
    method: "tools/call",
    request_id: "42",
  },
  policy: { bundle_hash: "a".repeat(64), catalog_hash: "b".repeat(64) },
  decision: {
    outcome: "allow",
    reasons: ["permit: read-only tool in workflow scope"],
    policy_ids: ["baseline.read-only", "workflow.support-agent"],
  },
  hashes: { arguments: payloadHash({ path: "/srv/data/report.csv" }) },
};
const msg = receiptSigningBytes(unsigned);
const sig = signer.sign(msg);
const pub = noblePublicKey(seed);

// Baseline: canonical JSON + SHA-256 only, i.e. the receipt without the signature.
const baseline = await rate("baseline: JCS + SHA-256 (no signature)", () => sha256(canonicalBytes(unsigned)));
const build = await rate("receipt build+sign, node:crypto", () => signReceipt(unsigned, signer));
const buildNoble = await rate("receipt build+sign, @noble/ed25519", () => {
  const s = nobleSign(seed, receiptSigningBytes(unsigned));
  return sha256(canonicalBytes({ ...unsigned, sig: Buffer.from(s).toString("base64") }));
});
printRates("Receipt build + sign", baseline, [build, buildNoble]);

const nodeSign = await rate("sign, node:crypto", () => signer.sign(msg));
const nobleS = await rate("sign, @noble/ed25519", () => nobleSign(seed, msg));
printRates("Ed25519 sign (node:crypto is the baseline)", nodeSign, [nobleS]);
const nodeVerify = await rate("verify, node:crypto", () => verifySignature(signer.publicKey, msg, sig));
const nobleV = await rate("verify, @noble/ed25519", () => nobleVerify(pub, msg, sig), 1500, 20);
printRates("Ed25519 verify (node:crypto is the baseline)", nodeVerify, [nobleV]);
