/**
 * `cmcp connect`: for agent hosts that launch an MCP server as a command.
 * Relays JSON-RPC between this process's stdio and a running gateway's
 * Streamable HTTP endpoint, message for message; the gateway does all the
 * governing. The bearer token comes from the environment, never argv (which
 * other users can read in the process list).
 */
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { StdioServerTransport } from "@modelcontextprotocol/sdk/server/stdio.js";

const TOKEN_ENV = "CMCP_AGENT_TOKEN";

export async function runConnect(opts: { url: string }): Promise<number> {
  const token = process.env[TOKEN_ENV];
  const upstream = new StreamableHTTPClientTransport(new URL(opts.url), {
    ...(token ? { requestInit: { headers: { authorization: `Bearer ${token}` } } } : {}),
  });
  const host = new StdioServerTransport();
  let done: (code: number) => void = () => undefined;
  const finished = new Promise<number>((r) => (done = r));
  const say = (line: string) => process.stderr.write(`cmcp connect: ${line}\n`);
  host.onmessage = (msg) => {
    upstream.send(msg).catch((err: unknown) => {
      say(`gateway unreachable: ${(err as Error).message}`);
      // Tell the host which request failed instead of leaving it waiting.
      if ("id" in msg && "method" in msg) {
        void host.send({
          jsonrpc: "2.0",
          id: msg.id,
          error: { code: -32011, message: `gateway unreachable: ${(err as Error).message}` },
        });
      }
    });
  };
  upstream.onmessage = (msg) => void host.send(msg).catch(() => undefined);
  upstream.onerror = (err) => say(err.message);
  host.onclose = () => {
    void upstream
      .terminateSession()
      .catch(() => undefined)
      .finally(() => done(0));
  };
  upstream.onclose = () => done(0);
  await upstream.start();
  await host.start();
  // The SDK's stdio transport does not notice the host closing stdin; end the gateway session then.
  process.stdin.once("end", () => void host.close());
  return finished;
}
