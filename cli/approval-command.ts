/**
 * `cmcp approvals`, `cmcp approve ID` and `cmcp deny ID`: a person answers a
 * call the policy held. The statement is signed here with the approver's own
 * key file; the governor only verifies it against the approvers in its
 * config, so it never holds an approver's key.
 */
import { join } from "node:path";
import { signApproval, type ApprovalBinding } from "../artifacts/approval.js";
import { CmcpError } from "../artifacts/errors.js";
import { readSignerFile } from "./key-file.js";
import { ADMIN_SOCKET, adminRequest } from "../governor/admin-server.js";
import type { PendingView } from "../governor/approval-queue.js";

async function pendingList(dataDir: string): Promise<PendingView[]> {
  const reply = await adminRequest(join(dataDir, ADMIN_SOCKET), { cmd: "approvals" });
  return reply.pending as PendingView[];
}

export async function runApprovals(opts: { dataDir: string; json?: boolean }): Promise<number> {
  const pending = await pendingList(opts.dataDir);
  if (opts.json) {
    process.stdout.write(`${JSON.stringify(pending, null, 2)}\n`);
    return 0;
  }
  if (pending.length === 0) {
    process.stdout.write("no calls are waiting for approval\n");
    return 0;
  }
  for (const p of pending) {
    const args = Object.entries(p.arguments)
      .map(([k, v]) => `${k}=${v}`)
      .join(", ");
    process.stdout.write(
      `${p.approval_id}  ${p.binding.method} ${p.binding.target} on ${p.binding.server}\n` +
        `  agent ${p.agent}${p.workflows.length ? ` (workflows: ${p.workflows.join(", ")})` : ""}, session ${p.binding.session}\n` +
        `  arguments: ${args || "(none)"}\n` +
        `  why: ${p.reasons.join("; ") || "policy requires approval"}\n` +
        `  waiting since ${p.created}; denied automatically at ${p.deadline}\n`,
    );
  }
  return 0;
}

export async function runAnswer(
  approvalId: string,
  decision: "approve" | "deny",
  opts: { dataDir: string; key: string; reason?: string },
): Promise<number> {
  if (!/^[0-9a-f]{32}$/.test(approvalId))
    throw new CmcpError(
      "approval.usage",
      `"${approvalId.slice(0, 40)}" is not an approval ID (cmcp approvals lists them)`,
    );
  const approver = await readSignerFile(opts.key, "approver");
  const pending = (await pendingList(opts.dataDir)).find((p) => p.approval_id === approvalId);
  if (!pending)
    throw new CmcpError(
      "approval.unknown",
      `no call is waiting for approval ${approvalId} (it may have timed out)`,
    );
  // Sign exactly what the governor holds: the statement is valid only for this call and only until its hold ends.
  const binding: ApprovalBinding = pending.binding;
  const statement = signApproval(
    binding,
    { decision, reason: opts.reason ?? null, expires: pending.deadline },
    approver,
  );
  const reply = await adminRequest(join(opts.dataDir, ADMIN_SOCKET), {
    cmd: "answer",
    approval_id: approvalId,
    statement,
  });
  const result = reply.result as { approved: boolean; reason: string; seq: number };
  process.stdout.write(
    `${decision === "approve" ? "approved" : "denied"} ${binding.method} ${binding.target} (${result.reason}); receipt ${result.seq}\n`,
  );
  return 0;
}
