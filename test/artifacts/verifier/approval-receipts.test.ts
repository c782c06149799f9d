/**
 * The verifier's "approvals" step: approver statements recorded in approval
 * receipts, in real chains exported as bundles (signed by the chain's key, so
 * only the statements are wrong).
 */
import { readFile } from "node:fs/promises";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  approvalSigningBytes,
  signApproval,
  type ApprovalBinding,
  type ApprovalStatement,
} from "../../../artifacts/approval.js";
import { toBase64 } from "../../../artifacts/encoding.js";
import { generateSigner } from "../../../artifacts/keys.js";
import { payloadHash, signReceipt, type Receipt, type ReceiptSubject } from "../../../artifacts/receipt.js";
import { checkReceipt } from "../../../artifacts/verifier/check-receipt.js";
import {
  verifyBundleFile,
  type StepResult,
  type VerifyOptions,
  type VerifyReport,
} from "../../../artifacts/verifier/verify-bundle.js";
import type { ReceiptEvent } from "../../../governor/receipt-chain.js";
import { makeBundle, withBundle, type MadeBundle } from "../../helpers/make-bundle.js";

const alice = generateSigner();
const bob = generateSigner();
const FUTURE = "2099-01-01T00:00:00Z";
const ARGS = payloadHash({ a: 2, b: 3 });
const SUBJECT = {
  session: "session-9",
  agent: "agent-1",
  server: "everything",
  method: "tools/call",
  request_id: "42",
  tool: "get-sum",
};

let n = 0;
function bindingOf(subject: ReceiptSubject = SUBJECT, args = ARGS): ApprovalBinding {
  n++;
  return {
    approval_id: n.toString(16).padStart(32, "0"),
    session: subject.session!,
    request_id: subject.request_id!,
    server: subject.server!,
    target: subject.tool ?? subject.resource ?? subject.prompt ?? subject.method!,
    method: subject.method!,
    arguments_hash: args,
  };
}

function sign(
  binding: ApprovalBinding,
  decision: "approve" | "deny" = "approve",
  over: { reason?: string | null; expires?: string; by?: typeof alice } = {},
): ApprovalStatement {
  return signApproval(
    binding,
    { decision, reason: over.reason ?? null, expires: over.expires ?? FUTURE },
    over.by ?? alice,
  );
}

/** The approval receipt the gateway writes for `binding`, recording `data` over its defaults. */
function approvalEvent(
  binding: ApprovalBinding,
  data: Record<string, unknown>,
  subject: ReceiptSubject = SUBJECT,
): ReceiptEvent {
  return {
    type: "approval",
    subject,
    hashes: { arguments: binding.arguments_hash },
    data: { approval_id: binding.approval_id, ...data },
  };
}

const answered = (binding: ApprovalBinding, statement: unknown, decision = "approve") =>
  approvalEvent(binding, { decision, approver: "alice", statement });

const step = (r: VerifyReport): StepResult => r.steps.find((s) => s.id === "approvals")!;

async function verify(made: MadeBundle, options: VerifyOptions = {}): Promise<VerifyReport> {
  return verifyBundleFile(made.bundlePath, {
    trustedKeys: made.signers.map((s) => s.keyId),
    workers: 0,
    ...options,
  });
}

async function approvalSeqs(made: MadeBundle): Promise<number[]> {
  const doc = JSON.parse(await readFile(made.bundlePath, "utf8")) as { receipts: Receipt[] };
  return doc.receipts.filter((r) => r.type === "approval").map((r) => r.seq);
}

const RESOURCE = {
  session: "session-9",
  agent: "agent-1",
  server: "filesystem",
  method: "resources/read",
  request_id: "43",
  resource: "file:///srv/a.txt",
};

let good: MadeBundle;
beforeAll(async () => {
  const approve = bindingOf();
  const deny = bindingOf();
  const read = bindingOf(RESOURCE, payloadHash({ uri: RESOURCE.resource }));
  const timeout = bindingOf();
  const shutdown = bindingOf();
  good = await makeBundle({
    epochs: 2,
    receiptsPerEpoch: 3,
    checkpointEveryReceipts: 4,
    extraEvents: [
      answered(approve, sign(approve)),
      answered(deny, sign(deny, "deny", { reason: "not today" }), "deny"),
      approvalEvent(read, { decision: "approve", approver: "alice", statement: sign(read) }, RESOURCE),
      approvalEvent(timeout, { decision: "timeout", approver: null, statement: null }),
      approvalEvent(shutdown, { decision: "shutdown", approver: null, statement: null }),
    ],
  });
});

afterAll(async () => {
  await good?.cleanup();
});

describe("approver statements in approval receipts", () => {
  it("verify under their own keys, and say the approvers are not pinned", async () => {
    const r = await verify(good);
    expect(r.steps.filter((s) => s.status === "fail")).toEqual([]);
    expect(r.ok).toBe(true);
    expect(step(r)).toMatchObject({ n: 12, title: "Approver statements", status: "pass", failures: 0 });
    expect(step(r).detail).toMatch(/^3 approver statement\(s\) verify under their own keys/);
    expect(step(r).detail).toContain(alice.keyId.slice(0, 16));
    expect(step(r).detail).toMatch(/not pinned \(pass --approver-key to pin them\)/);
    // The same verdict when the statements are checked on worker threads.
    const pooled = await verify(good, { workers: 2, parallelThreshold: 0, batchSize: 2 });
    expect(step(pooled)).toEqual(step(r));
  });

  it("pass pinned to the approver's key (key ID or base64), and fail pinned to another", async () => {
    for (const key of [alice.keyId, toBase64(alice.publicKey)]) {
      const r = await verify(good, { approverKeys: [bob.keyId, key] });
      expect(step(r).status, key).toBe("pass");
      expect(step(r).detail).toMatch(/signed by --approver-key/);
      expect(r.ok).toBe(true);
    }
    const [first] = await approvalSeqs(good);
    const other = await verify(good, { approverKeys: [bob.keyId] });
    expect(other.ok).toBe(false);
    expect(step(other)).toMatchObject({
      status: "fail",
      detail: `receipt seq ${first}: approved by key ${alice.keyId}, not an --approver-key`,
      record: { kind: "receipt", seq: first },
      failures: 3,
    });
    expect(other.summary).toMatch(/^FAILED at step 12 \(Approver statements\)/);
    const garbage = await verify(good, { approverKeys: ["not a key"] });
    expect(step(garbage).status).toBe("fail");
    expect(step(garbage).detail).toMatch(/--approver-key not a key: not a key ID/);
  });

  it("skip when the bundle records no approvals, and pass when none was answered", async () => {
    await withBundle({ epochs: 1, receiptsPerEpoch: 2 }, async (bare) => {
      const r = await verify(bare);
      expect(r.ok).toBe(true);
      expect(step(r)).toMatchObject({ status: "skip", detail: "no approval receipts in the bundle" });
    });
    const b = bindingOf();
    await withBundle(
      {
        epochs: 1,
        receiptsPerEpoch: 2,
        extraEvents: [approvalEvent(b, { decision: "timeout", approver: null, statement: null })],
      },
      async (made) => {
        const r = await verify(made, { approverKeys: [bob.keyId] });
        expect(r.ok).toBe(true);
        expect(step(r).status).toBe("pass");
        expect(step(r).detail).toMatch(/none answered by an approver/);
      },
    );
  });

  const bad: [string, () => ReceiptEvent, RegExp][] = [
    [
      "a statement whose signature was altered",
      () => {
        const b = bindingOf();
        const s = sign(b);
        return answered(b, { ...s, sig: (s.sig[0] === "A" ? "B" : "A") + s.sig.slice(1) });
      },
      /the statement's signature does not verify under its key/,
    ],
    [
      "a statement for another approval ID",
      () => {
        const b = bindingOf();
        return answered(b, sign({ ...b, approval_id: "f".repeat(32) }));
      },
      /for another call \(approval_id differs from the receipt\)/,
    ],
    [
      "a statement for other arguments",
      () => {
        const b = bindingOf();
        return answered(b, sign({ ...b, arguments_hash: payloadHash({ a: 2, b: 4 }) }));
      },
      /for another call \(arguments_hash differs from the receipt\)/,
    ],
    [
      "a statement for another tool",
      () => {
        const b = bindingOf();
        return answered(b, sign({ ...b, target: "get-env" }));
      },
      /for another call \(target differs from the receipt\)/,
    ],
    [
      "a statement for another session",
      () => {
        const b = bindingOf();
        return answered(b, sign({ ...b, session: "session-1" }));
      },
      /for another call \(session differs from the receipt\)/,
    ],
    [
      "a statement whose embedded public key is not its kid",
      () => {
        // Signed by bob under bob's key, but naming alice's key ID: it must not pass as alice's.
        const b = bindingOf();
        const unsigned: Omit<ApprovalStatement, "sig"> = {
          format: "cmcp.approval.v1",
          decision: "approve",
          reason: null,
          expires: FUTURE,
          ...b,
          approver: { kid: alice.keyId, public_key: toBase64(bob.publicKey) },
        };
        return answered(b, { ...unsigned, sig: toBase64(bob.sign(approvalSigningBytes(unsigned))) });
      },
      /the statement's public key is not its kid/,
    ],
    [
      "a statement that expired before the receipt was written",
      () => {
        const b = bindingOf();
        return answered(b, sign(b, "approve", { expires: "2020-01-01T00:00:00Z" }));
      },
      /expired at 2020-01-01T00:00:00Z, not after the receipt's time/,
    ],
    [
      "a statement whose expiry is no real date (30 February)",
      () => {
        const b = bindingOf();
        return answered(b, sign(b, "approve", { expires: "2099-02-30T00:00:00Z" }));
      },
      /expiry 2099-02-30T00:00:00Z is not a real date/,
    ],
    [
      "a timeout carrying a statement",
      () => {
        const b = bindingOf();
        return approvalEvent(b, { decision: "timeout", approver: null, statement: sign(b) });
      },
      /a timeout must record no approver statement/,
    ],
    [
      "a shutdown naming an approver",
      () => approvalEvent(bindingOf(), { decision: "shutdown", approver: "alice", statement: null }),
      /a shutdown must name no approver/,
    ],
    [
      "an approval whose statement denies",
      () => {
        const b = bindingOf();
        return answered(b, sign(b, "deny"), "approve");
      },
      /the receipt records "approve" but the signed statement says "deny"/,
    ],
    [
      "a denial whose statement approves",
      () => {
        const b = bindingOf();
        return answered(b, sign(b, "approve"), "deny");
      },
      /the receipt records "deny" but the signed statement says "approve"/,
    ],
    [
      "an approval without a statement",
      () => answered(bindingOf(), null),
      /an approval is recorded without the approver's signed statement/,
    ],
    [
      "an approval whose statement is malformed",
      () => {
        const b = bindingOf();
        return answered(b, { ...sign(b), extra: 1 });
      },
      /the recorded statement is not an approval statement/,
    ],
    [
      "an unknown decision",
      () => {
        const b = bindingOf();
        return answered(b, sign(b), "maybe");
      },
      /decision "maybe" is not approve, deny, timeout or shutdown/,
    ],
  ];

  it.each(bad)(
    "fail on %s, naming the receipt, without failing the receipt or the chain",
    async (_, event, reason) => {
      const b = bindingOf();
      // A good statement first, so the failure is the tampered receipt's and the count is 1.
      await withBundle(
        { epochs: 1, receiptsPerEpoch: 2, extraEvents: [answered(b, sign(b)), event()] },
        async (made) => {
          const [, seq] = await approvalSeqs(made);
          const r = await verify(made);
          expect(r.ok).toBe(false);
          expect(step(r).status).toBe("fail");
          expect(step(r).detail).toMatch(reason);
          expect(step(r).detail).toMatch(new RegExp(`^receipt seq ${seq}: `));
          expect(step(r).record).toMatchObject({ kind: "receipt", seq });
          expect(step(r).failures).toBe(1);
          expect(r.summary).toMatch(/^FAILED at step 12 \(Approver statements\)/);
          for (const id of ["receipts", "chain", "roots", "claims"])
            expect(r.steps.find((s) => s.id === id)!.status, id).toBe("pass");
        },
      );
    },
  );

  it("never throws on hostile approval data, and never accepts it", () => {
    const gov = generateSigner();
    const decision = fc.constantFrom("approve", "deny", "timeout", "shutdown", "maybe");
    const b = bindingOf();
    const genuine = sign(b);
    const statement = fc.oneof(
      fc.jsonValue(),
      // A real statement with one field replaced by anything.
      fc
        .tuple(fc.constantFrom(...Object.keys(genuine)), fc.jsonValue())
        .map(([k, v]) => ({ ...genuine, [k]: v })),
    );
    fc.assert(
      fc.property(
        fc.record(
          {
            approval_id: fc.oneof(fc.constant(b.approval_id), fc.jsonValue()),
            decision,
            approver: fc.oneof(fc.constant("alice"), fc.jsonValue()),
            statement,
          },
          { requiredKeys: [] },
        ),
        (data) => {
          const { entry } = signReceipt(
            {
              v: 1,
              type: "approval",
              seq: 1,
              ts: "2026-11-21T12:00:00.000Z",
              epoch: 0,
              prev: "0".repeat(64),
              kid: gov.keyId,
              subject: SUBJECT,
              policy: { bundle_hash: null, catalog_hash: null },
              hashes: { arguments: ARGS },
              data: data as Record<string, unknown>,
            },
            gov,
          );
          const c = checkReceipt(entry, 0, new Map([[gov.keyId, gov.publicKey]]));
          if (!c.ok) return;
          const a = c.facts.approval!;
          // Only the untouched statement or a well-formed timeout or shutdown may pass.
          if (a.ok)
            expect(
              (JSON.stringify(data.statement) === JSON.stringify(genuine) &&
                data.decision === "approve" &&
                data.approval_id === b.approval_id) ||
                (a.kid === null && data.statement === null && data.approver === null),
            ).toBe(true);
          expect(structuredClone(a)).toEqual(a);
        },
      ),
      { numRuns: 500 },
    );
  });
});
