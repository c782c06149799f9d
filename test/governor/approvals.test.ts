import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { CallToolResultSchema, LoggingMessageNotificationSchema } from "@modelcontextprotocol/sdk/types.js";
import { afterEach, describe, expect, it, vi } from "vitest";
import { signApproval } from "../../artifacts/approval.js";
import { toBase64 } from "../../artifacts/encoding.js";
import { generateKeyPem, signerFromPem, type Signer } from "../../artifacts/keys.js";
import { adminRequest } from "../../governor/admin-server.js";
import { summarizeArguments, type PendingView } from "../../governor/approval-queue.js";
import {
  ALLOW_ALL,
  bin,
  connectClient,
  startTestGateway,
  type TestGateway,
  verifiedReceipts,
} from "../helpers/gateway.js";
import { cmcp } from "../helpers/cli.js";

const HOLD_SUM =
  '@id("ask-sum")\n@decision("require_approval")\n@reason("sums need a human")\npermit (principal, action == Cmcp::Action::"tools/call", resource == Cmcp::Tool::"everything/get-sum");\n';

interface Setup {
  tg: TestGateway;
  client: Client;
  alice: Signer;
  aliceKey: string;
}

const open: TestGateway[] = [];
afterEach(async () => {
  for (const tg of open.splice(0)) await tg.cleanup();
});

const HOLD_SUBSCRIBE =
  '@id("ask-subscribe")\n@decision("require_approval")\npermit (principal, action == Cmcp::Action::"resources/subscribe", resource);\n';

async function setup(holdSeconds = 45, hold = HOLD_SUM): Promise<Setup> {
  const { privatePem } = generateKeyPem();
  const alice = signerFromPem(privatePem);
  const tg = await startTestGateway(
    {
      approvers: [{ name: "alice", public_key: toBase64(alice.publicKey) }],
      approvals: { hold_seconds: holdSeconds },
      upstreams: [
        {
          name: "everything",
          transport: "stdio",
          command: process.execPath,
          args: [bin("server-everything"), "stdio"],
        },
      ],
    },
    { policy: { "allow-all.cedar": ALLOW_ALL, "ask.cedar": hold } },
  );
  open.push(tg);
  const aliceKey = join(tg.dir, "alice.key");
  await writeFile(aliceKey, privatePem, { mode: 0o600 });
  const client = await connectClient(tg.url);
  return { tg, client, alice, aliceKey };
}

async function pendingOf(tg: TestGateway, count = 1): Promise<PendingView[]> {
  let pending: PendingView[] = [];
  await vi.waitFor(
    async () => {
      pending = (await adminRequest(tg.gateway.adminSocket!, { cmd: "approvals" })).pending as PendingView[];
      expect(pending).toHaveLength(count);
    },
    { timeout: 20_000, interval: 100 },
  );
  return pending;
}

const sum = (client: Client, onprogress?: () => void) =>
  client.callTool({ name: "get-sum", arguments: { a: 2, b: 3 } }, CallToolResultSchema, {
    ...(onprogress ? { onprogress } : {}),
    timeout: 120_000,
  });

describe("calls held for approval", () => {
  it("holds the call with progress until an approver approves with cmcp approve, then makes it", async () => {
    const { tg, client, alice, aliceKey } = await setup();
    const logged: string[] = [];
    client.setNotificationHandler(
      LoggingMessageNotificationSchema,
      (n) => void logged.push(String(n.params.data)),
    );
    let progressed = 0;
    const call = sum(client, () => progressed++);
    const [p] = await pendingOf(tg);
    expect(p).toMatchObject({
      binding: { method: "tools/call", target: "get-sum", server: "everything" },
      arguments: { a: "2", b: "3" },
      reasons: expect.arrayContaining(["ask/ask-sum: sums need a human"]),
    });
    const listed = await cmcp(["approvals", "--data-dir", tg.dataDir]);
    expect(listed.code, listed.stderr).toBe(0);
    expect(listed.stdout).toContain(p!.approval_id);
    // The agent hears that its call waits, and sees progress while it does.
    await vi.waitFor(() => expect(progressed).toBeGreaterThan(0), { timeout: 20_000 });
    expect(logged.some((l) => l.includes(`held for approval ${p!.approval_id}`))).toBe(true);
    const approved = await cmcp(["approve", p!.approval_id, "--key", aliceKey, "--data-dir", tg.dataDir]);
    expect(approved.code, approved.stderr).toBe(0);
    expect(approved.stdout).toMatch(/approved tools\/call get-sum \(approved by alice\)/);
    expect(await call).toMatchObject({ content: [{ type: "text", text: expect.stringContaining("5") }] });
    await client.close();
    const receipts = await verifiedReceipts(tg);
    const approval = receipts.find((r) => r.type === "approval");
    expect(approval?.data).toMatchObject({
      approval_id: p!.approval_id,
      decision: "approve",
      approver: "alice",
      statement: { decision: "approve", approval_id: p!.approval_id },
    });
    const decision = receipts.find((r) => r.type === "decision" && r.subject.tool === "get-sum");
    expect(decision?.decision?.outcome).toBe("require_approval");
    // The call reached the upstream only after the approval receipt.
    const inspected = receipts.find(
      (r) =>
        r.type === "response_inspection" &&
        r.subject.method === "tools/call" &&
        r.subject.request_id === decision?.subject.request_id,
    );
    expect(inspected!.seq).toBeGreaterThan(approval!.seq);
    // The exported bundle proves who approved: pinned to alice's key it verifies, pinned to another it fails.
    const verify = (approverKey: string) =>
      cmcp([
        "verify",
        join(tg.dir, "bundle.json"),
        "--key",
        tg.signer.keyId,
        "--issuer-key",
        tg.issuer.keyId,
        "--approver-key",
        approverKey,
        "--json",
      ]);
    const approvalsStep = (stdout: string) =>
      (JSON.parse(stdout) as { steps: { id: string }[] }).steps.find((s) => s.id === "approvals");
    const pinned = await verify(toBase64(alice.publicKey));
    expect(pinned.code, pinned.stdout + pinned.stderr).toBe(0);
    expect(approvalsStep(pinned.stdout)).toMatchObject({
      status: "pass",
      detail: expect.stringMatching(/^1 approver statement\(s\) verify .*signed by --approver-key/),
    });
    const stranger = signerFromPem(generateKeyPem().privatePem);
    const wrong = await verify(stranger.keyId);
    expect(wrong.code).toBe(1);
    expect(approvalsStep(wrong.stdout)).toMatchObject({
      status: "fail",
      detail: `receipt seq ${approval!.seq}: approved by key ${alice.keyId}, not an --approver-key`,
      record: { kind: "receipt", seq: approval!.seq },
    });
  });

  it("a denial ends the call with a clear result naming who denied it and why", async () => {
    const { tg, client, aliceKey } = await setup();
    const call = sum(client);
    const [p] = await pendingOf(tg);
    const denied = await cmcp([
      "deny",
      p!.approval_id,
      "--key",
      aliceKey,
      "--reason",
      "not today",
      "--data-dir",
      tg.dataDir,
    ]);
    expect(denied.code, denied.stderr).toBe(0);
    const result = await call;
    expect(result.isError).toBe(true);
    expect(result.content).toEqual([
      {
        type: "text",
        text: expect.stringMatching(/tools\/call get-sum was not made: denied by alice: not today/),
      },
    ]);
    await client.close();
    const receipts = await verifiedReceipts(tg);
    expect(receipts.find((r) => r.type === "approval")?.data).toMatchObject({
      decision: "deny",
      approver: "alice",
    });
    expect(receipts.some((r) => r.type === "response_inspection" && r.subject.method === "tools/call")).toBe(
      false,
    );
  });

  it("an approved resource subscription is recorded with its resource, so the statement verifies", async () => {
    const { tg, client, alice } = await setup(45, HOLD_SUBSCRIBE);
    const { resources } = await client.listResources();
    const uri = resources[0]!.uri;
    const subscribed = client.subscribeResource({ uri }, { timeout: 120_000 });
    const [p] = await pendingOf(tg);
    expect(p!.binding).toMatchObject({ method: "resources/subscribe", target: uri });
    const statement = signApproval(
      p!.binding,
      { decision: "approve", reason: null, expires: p!.deadline },
      alice,
    );
    await adminRequest(tg.gateway.adminSocket!, { cmd: "answer", approval_id: p!.approval_id, statement });
    await subscribed;
    await client.close();
    // verifiedReceipts fails on any failed step, the approver statements included.
    const receipts = await verifiedReceipts(tg);
    expect(receipts.find((r) => r.type === "approval")?.subject).toMatchObject({
      method: "resources/subscribe",
      resource: uri,
    });
  });

  it("no answer before the hold ends means denied, recorded, and the agent told", async () => {
    const { tg, client } = await setup(2);
    const result = await sum(client);
    expect(result.isError).toBe(true);
    expect((result.content as { text: string }[])[0]!.text).toMatch(
      /no approver answered before the hold ended/,
    );
    await client.close();
    const receipts = await verifiedReceipts(tg);
    expect(receipts.find((r) => r.type === "approval")?.data).toMatchObject({
      decision: "timeout",
      statement: null,
    });
  });

  it("a statement cannot be replayed for another call, nor for an identical later one, nor come from a stranger", async () => {
    const { tg, client, alice } = await setup();
    const first = sum(client);
    const [a] = await pendingOf(tg);
    const statementA = signApproval(
      a!.binding,
      { decision: "approve", reason: null, expires: a!.deadline },
      alice,
    );
    await adminRequest(tg.gateway.adminSocket!, {
      cmd: "answer",
      approval_id: a!.approval_id,
      statement: statementA,
    });
    expect((await first).isError).toBeFalsy();
    // Replaying the settled approval fails, and so does using it for the identical second call.
    await expect(
      adminRequest(tg.gateway.adminSocket!, {
        cmd: "answer",
        approval_id: a!.approval_id,
        statement: statementA,
      }),
    ).rejects.toThrow(/already settled|no pending approval/);
    const second = sum(client);
    const [b] = await pendingOf(tg);
    expect(b!.approval_id).not.toBe(a!.approval_id);
    await expect(
      adminRequest(tg.gateway.adminSocket!, {
        cmd: "answer",
        approval_id: b!.approval_id,
        statement: statementA,
      }),
    ).rejects.toThrow(/for another call \(approval_id differs\)/);
    const stranger = signerFromPem(generateKeyPem().privatePem);
    const forged = signApproval(
      b!.binding,
      { decision: "approve", reason: null, expires: b!.deadline },
      stranger,
    );
    await expect(
      adminRequest(tg.gateway.adminSocket!, {
        cmd: "answer",
        approval_id: b!.approval_id,
        statement: forged,
      }),
    ).rejects.toThrow(/not a configured approver/);
    const tampered = {
      ...signApproval(b!.binding, { decision: "deny", reason: null, expires: b!.deadline }, alice),
    };
    tampered.decision = "approve";
    await expect(
      adminRequest(tg.gateway.adminSocket!, {
        cmd: "answer",
        approval_id: b!.approval_id,
        statement: tampered,
      }),
    ).rejects.toThrow(/signature does not verify/);
    const expired = signApproval(
      b!.binding,
      { decision: "approve", reason: null, expires: "2020-01-01T00:00:00Z" },
      alice,
    );
    await expect(
      adminRequest(tg.gateway.adminSocket!, {
        cmd: "answer",
        approval_id: b!.approval_id,
        statement: expired,
      }),
    ).rejects.toThrow(/expired/);
    // Still pending after every refused attempt; stopping the gateway denies it, recorded.
    expect(await pendingOf(tg)).toHaveLength(1);
    const receipts = await verifiedReceipts(tg);
    expect((await second).isError).toBe(true);
    expect(receipts.filter((r) => r.type === "approval").map((r) => r.data?.decision)).toEqual([
      "approve",
      "shutdown",
    ]);
  });
});

describe("argument summaries for approvers", () => {
  it("masks secret-looking names and values and shortens long strings", () => {
    expect(
      summarizeArguments({
        arguments: {
          path: "/srv/a.txt",
          api_key: "abc",
          note: "sk-live-123",
          body: "x".repeat(100),
          n: 3,
          list: [1, 2],
          obj: { a: 1 },
        },
      }),
    ).toEqual({
      path: '"/srv/a.txt"',
      api_key: "«masked»",
      note: "«masked»",
      body: `"${"x".repeat(24)}"… (100 chars)`,
      n: "3",
      list: "[2 items]",
      obj: "{1 keys}",
    });
    expect(summarizeArguments(null)).toEqual({});
  });
});
