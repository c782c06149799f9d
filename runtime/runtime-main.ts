/**
 * The keyless runtime process. The governor spawns it with the boundary
 * socketpair on fd 3 and nothing secret in argv or env; it learns its
 * configuration over the boundary, serves MCP to agents, and exits when the
 * governor goes away (it never serves a call it cannot have decided).
 */
import { Socket } from "node:net";
import { BOUNDARY_VERSION, GovernorClient } from "../governor/boundary.js";
import { AgentServer } from "./agent-server.js";

const VERSION = "0.1.0";
const log = (line: string) => process.stderr.write(`cmcp runtime[${process.pid}]: ${line}\n`);

async function main(): Promise<void> {
  const socket = new Socket({ fd: 3, readable: true, writable: true });
  const gov = new GovernorClient(socket, 5000);
  const state: { server?: AgentServer } = {};
  gov.onClose = (reason) => {
    // Fail closed: without a governor nothing can be decided, so nothing is served.
    log(`governor gone (${reason}); refusing all calls and exiting`);
    process.exit(70);
  };
  gov.onNotice = (type, body) => {
    if (type !== "drain") return;
    const deadline = (body as { deadline_ms: number }).deadline_ms;
    log(`draining (deadline ${deadline} ms)`);
    void (state.server?.drain(deadline) ?? Promise.resolve()).finally(() => process.exit(0));
  };
  const { config } = await gov.hello({ version: BOUNDARY_VERSION, pid: process.pid });
  gov.timeoutMs = config.limits.governorTimeoutMs;
  const server = new AgentServer({ config, gov, log, version: VERSION });
  state.server = server;
  const where = await server.listen();
  await gov.listening(where);
  log(`serving MCP at ${where.url}`);
}

main().catch((err: unknown) => {
  log(`failed to start: ${(err as Error).message}`);
  process.exit(1);
});
