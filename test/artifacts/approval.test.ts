import { describe, expect, it } from "vitest";
import { checkApproval, signApproval, type ApprovalBinding } from "../../artifacts/approval.js";
import { generateSigner } from "../../artifacts/keys.js";

const alice = generateSigner();
const approvers = new Map([[alice.keyId, { name: "alice", publicKey: alice.publicKey }]]);
const binding: ApprovalBinding = {
  approval_id: "0123456789abcdef0123456789abcdef",
  session: "s-1",
  request_id: "7",
  server: "everything",
  target: "get-sum",
  method: "tools/call",
  arguments_hash: "a".repeat(64),
};
const now = new Date("2026-11-21T12:00:00Z");
const answer = { decision: "approve" as const, reason: null, expires: "2026-11-21T12:01:00Z" };

describe("approval statements", () => {
  it("accept only the call they bind, from a configured approver, before expiry", () => {
    const s = signApproval(binding, answer, alice);
    expect(checkApproval(s, binding, approvers, now)).toMatchObject({ ok: true, approver: "alice" });
    for (const k of Object.keys(binding) as (keyof ApprovalBinding)[]) {
      const other = { ...binding, [k]: k === "arguments_hash" ? "b".repeat(64) : `${binding[k]}x` };
      const r = checkApproval(s, other, approvers, now);
      expect(r.ok, k).toBe(false);
      if (!r.ok) expect(r.reason).toContain(`${k} differs`);
    }
    expect(checkApproval(s, binding, approvers, new Date("2026-11-21T12:01:00Z"))).toMatchObject({
      ok: false,
      reason: expect.stringMatching(/expired/),
    });
    // An expiry the pattern admits but that is no date (month 13) is expired, not "never expires".
    const undated = signApproval(binding, { ...answer, expires: "2026-13-01T00:00:00Z" }, alice);
    expect(checkApproval(undated, binding, approvers, now)).toMatchObject({
      ok: false,
      reason: expect.stringMatching(/expired/),
    });
    // Nor one that Date.parse would roll over (30 February 2027 is not 2 March).
    const rolled = signApproval(binding, { ...answer, expires: "2027-02-30T00:00:00Z" }, alice);
    expect(checkApproval(rolled, binding, approvers, now)).toMatchObject({
      ok: false,
      reason: expect.stringMatching(/expired/),
    });
    expect(checkApproval(s, binding, new Map(), now)).toMatchObject({
      ok: false,
      reason: expect.stringMatching(/not a configured approver/),
    });
  });

  it("refuse any changed signed field and malformed values, without throwing", () => {
    const s = signApproval(binding, answer, alice);
    for (const [k, v] of [
      ["decision", "deny"],
      ["reason", "changed"],
      ["expires", "2026-11-21T12:05:00Z"],
    ] as const) {
      expect(checkApproval({ ...s, [k]: v }, binding, approvers, now), k).toMatchObject({
        ok: false,
        reason: expect.stringMatching(/signature does not verify/),
      });
    }
    for (const bad of [
      null,
      1,
      "x",
      [],
      {},
      { ...s, extra: 1 },
      { ...s, sig: "AA==" },
      { ...s, decision: "maybe" },
    ]) {
      expect(checkApproval(bad, binding, approvers, now).ok).toBe(false);
    }
  });
});
