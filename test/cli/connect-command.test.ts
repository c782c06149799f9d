import { createHash } from "node:crypto";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestGateway, type TestGateway } from "../helpers/gateway.js";

const CLI = new URL("../../cli/cmcp.ts", import.meta.url).pathname;
let tg: TestGateway;

beforeAll(async () => {
  const hash = createHash("sha256").update("secret-token").digest("hex");
  tg = await startTestGateway({ agents: [{ name: "stdio-host", token_sha256: hash, workflows: [] }] });
});
afterAll(async () => {
  await tg?.cleanup();
});

function bridge(): Client {
  return new Client({ name: "stdio-host", version: "1" }, { capabilities: {} });
}

describe("cmcp connect", () => {
  it("bridges a host's stdio to the gateway, authenticating with the token from the environment", async () => {
    const client = bridge();
    await client.connect(
      new StdioClientTransport({
        command: process.execPath,
        args: ["--import", "tsx", CLI, "connect", "--url", tg.url],
        env: { PATH: process.env.PATH ?? "", CMCP_AGENT_TOKEN: "secret-token" },
        cwd: process.cwd(),
      }),
    );
    const { tools } = await client.listTools();
    expect(tools.map((t) => t.name)).toContain("echo");
    expect(await client.callTool({ name: "echo", arguments: { message: "via stdio" } })).toMatchObject({
      content: [{ text: "Echo: via stdio" }],
    });
    await client.close();
  });

  it("fails the host's requests clearly without a valid token", async () => {
    const client = bridge();
    await expect(
      client.connect(
        new StdioClientTransport({
          command: process.execPath,
          args: ["--import", "tsx", CLI, "connect", "--url", tg.url],
          env: { PATH: process.env.PATH ?? "", CMCP_AGENT_TOKEN: "wrong" },
          cwd: process.cwd(),
        }),
      ),
    ).rejects.toThrow(/401|bearer|unreachable/i);
    await client.close().catch(() => undefined);
  });
});
