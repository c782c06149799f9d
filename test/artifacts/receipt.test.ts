import { describe, expect, it } from "vitest";
import { canonicalBytes } from "../../artifacts/canonical-json.js";
import { toBase64 } from "../../artifacts/encoding.js";
import { sha256Hex } from "../../artifacts/hash.js";
import { generateSigner } from "../../artifacts/keys.js";
import {
  commitment,
  payloadHash,
  RECEIPT_TYPES,
  signReceipt,
  verifyReceiptSignature,
  type UnsignedReceipt,
} from "../../artifacts/receipt.js";
import { claimSigningBytes, verifyClaimSignature, type TraceClaim } from "../../artifacts/trace-claim.js";
import { validateReceipt } from "../../artifacts/verifier/check-receipt.js";

const signer = generateSigner();

function unsigned(over: Partial<UnsignedReceipt> = {}): UnsignedReceipt {
  return {
    v: 1,
    type: "decision",
    seq: 3,
    ts: "2026-11-21T08:00:00.000Z",
    epoch: 0,
    prev: "1".repeat(64),
    kid: signer.keyId,
    subject: { session: "s1", tool: "echo", method: "tools/call", request_id: "7" },
    policy: { bundle_hash: "a".repeat(64), catalog_hash: null },
    decision: { outcome: "deny", reasons: ["no"], policy_ids: ["baseline.deny-write"] },
    hashes: { arguments: payloadHash({ text: "hi" }) },
    ...over,
  };
}

describe("receipts", () => {
  it("signs over the canonical form; the entry is the JCS bytes of the signed receipt", () => {
    const s = signReceipt(unsigned(), signer);
    expect(verifyReceiptSignature(s.receipt, signer.publicKey)).toBe(true);
    expect(Buffer.from(s.entry).equals(Buffer.from(canonicalBytes(s.receipt)))).toBe(true);
    expect(s.entryHash).toBe(sha256Hex(s.entry));
    expect(validateReceipt(s.receipt)).toBe(true);
  });

  it("any change to a signed field breaks the signature", () => {
    const s = signReceipt(unsigned(), signer);
    for (const tamper of [
      { seq: 4 },
      { subject: { ...s.receipt.subject, tool: "rm" } },
      { decision: { ...s.receipt.decision!, outcome: "allow" as const } },
      { prev: "2".repeat(64) },
    ]) {
      expect(verifyReceiptSignature({ ...s.receipt, ...tamper }, signer.publicKey)).toBe(false);
    }
    expect(verifyReceiptSignature(s.receipt, generateSigner().publicKey)).toBe(false);
    expect(verifyReceiptSignature({ ...s.receipt, sig: "!!" }, signer.publicKey)).toBe(false);
  });

  it("the schema accepts every receipt type it names and rejects unknown fields and payloads", () => {
    for (const type of RECEIPT_TYPES) {
      const data =
        type === "epoch_start"
          ? {
              public_key: toBase64(signer.publicKey),
              provider: "software",
              policy_artifact: null,
              previous: null,
            }
          : type === "checkpoint"
            ? { origin: "o", size: 3, root_hash: "c".repeat(64) }
            : undefined;
      const r = signReceipt(unsigned({ type, ...(data ? { data } : {}) }), signer).receipt;
      expect(validateReceipt(r), `${type}: ${JSON.stringify(validateReceipt.errors)}`).toBe(true);
    }
    const r = signReceipt(unsigned(), signer).receipt;
    expect(validateReceipt({ ...r, arguments: { text: "secret" } })).toBe(false);
    expect(validateReceipt({ ...r, hashes: { arguments: "not-a-hash" } })).toBe(false);
    expect(validateReceipt({ ...r, seq: -1 })).toBe(false);
    expect(validateReceipt({ ...r, ts: "yesterday" })).toBe(false);
    expect(validateReceipt({ ...r, type: "epoch_start" })).toBe(false);
  });

  it("salted commitments hide the value and bind it", () => {
    const salt1 = new Uint8Array(32).fill(1);
    const salt2 = new Uint8Array(32).fill(2);
    expect(commitment("alice@example.com", salt1)).not.toBe(commitment("alice@example.com", salt2));
    expect(commitment("alice@example.com", salt1)).toBe(commitment("alice@example.com", salt1));
    expect(commitment("bob@example.com", salt1)).not.toBe(commitment("alice@example.com", salt1));
  });

  it("a receipt signature cannot be replayed as a claim signature (domain separation)", () => {
    const s = signReceipt(unsigned(), signer);
    const fakeClaim = { ...(s.receipt as unknown as TraceClaim) };
    expect(verifyClaimSignature(fakeClaim, signer.publicKey)).toBe(false);
    const { sig: _sig, ...rest } = fakeClaim;
    expect(Buffer.from(claimSigningBytes(rest)).toString().startsWith("cmcp.trace-claim.v1\n")).toBe(true);
  });
});
