import { readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { Client } from "@modelcontextprotocol/sdk/client/index.js";
import {
  CallToolResultSchema,
  CreateMessageRequestSchema,
  CreateTaskResultSchema,
  GetTaskResultSchema,
  ListTasksResultSchema,
  ElicitRequestSchema,
  LoggingMessageNotificationSchema,
  type Tool,
} from "@modelcontextprotocol/sdk/types.js";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { toBase64, utf8 } from "../../artifacts/encoding.js";
import { sha256Hex } from "../../artifacts/hash.js";
import { shippedBundlePath } from "../../governor/cedar-bundle.js";
import type { Receipt } from "../../artifacts/receipt.js";
import { verifyBundleFile } from "../../artifacts/verifier/verify-bundle.js";
import { loadConfig } from "../../governor/config.js";
import { exportBundle } from "../../governor/export-bundle.js";
import { ALLOW_ALL, connectClient, startTestGateway, type TestGateway } from "../helpers/gateway.js";

async function toolsUntil(client: Client, name: string): Promise<Tool[]> {
  // server-everything registers capability-dependent tools after initialize and then announces list_changed.
  for (let i = 0; i < 50; i++) {
    const { tools } = await client.listTools();
    if (tools.some((t) => t.name === name)) return tools;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`tool ${name} never appeared`);
}

async function exportedReceipts(tg: TestGateway): Promise<{ receipts: Receipt[]; bundle: string }> {
  const bundle = join(tg.dir, "bundle.json");
  await exportBundle(tg.dataDir, bundle);
  const doc = JSON.parse(await readFile(bundle, "utf8")) as { receipts: Receipt[] };
  return { receipts: doc.receipts, bundle };
}

describe("gateway passthrough with real peers", () => {
  let tg: TestGateway;
  let client: Client;
  const calls: string[] = [];
  const logs: unknown[] = [];
  const progress: number[] = [];

  beforeAll(async () => {
    tg = await startTestGateway();
    client = await connectClient(tg.url, { sampling: {}, elicitation: {} });
    client.setRequestHandler(CreateMessageRequestSchema, async (req) => ({
      role: "assistant",
      model: "test-model",
      content: {
        type: "text",
        text: `sampled: ${JSON.stringify(req.params.messages[0]?.content).slice(0, 40)}`,
      },
    }));
    client.setRequestHandler(ElicitRequestSchema, async () => ({
      action: "accept",
      content: { color: "blue" },
    }));
    client.setNotificationHandler(LoggingMessageNotificationSchema, async (n) => void logs.push(n.params));
  });

  afterAll(async () => {
    await client?.close().catch(() => undefined);
    await tg?.cleanup();
  });

  const call = async (name: string, args: Record<string, unknown> = {}, opts = {}) => {
    calls.push(name);
    return client.callTool({ name, arguments: args }, undefined, opts);
  };

  it("aggregates tools of every upstream, names unchanged without collisions", async () => {
    const tools = await toolsUntil(client, "trigger-sampling-request");
    const names = tools.map((t) => t.name);
    expect(names).toEqual(
      expect.arrayContaining(["echo", "read_text_file", "create_entities", "trigger-elicitation-request"]),
    );
    expect(names.filter((n) => n.includes("."))).toEqual([]);
  });

  it("relays tool calls to the right upstream", async () => {
    expect(await call("echo", { message: "through the gateway" })).toMatchObject({
      content: [{ type: "text", text: "Echo: through the gateway" }],
    });
    await call("write_file", { path: join(tg.sandbox, "note.txt"), content: "hello sandbox" });
    const read = await call("read_text_file", { path: join(tg.sandbox, "note.txt") });
    expect(JSON.stringify(read)).toContain("hello sandbox");
    await call("create_entities", {
      entities: [{ name: "cmcp", entityType: "project", observations: ["governed"] }],
    });
    expect(JSON.stringify(await call("read_graph"))).toContain("governed");
  });

  it("relays progress notifications to the caller's progress token", async () => {
    const result = await call(
      "trigger-long-running-operation",
      { duration: 1, steps: 3 },
      {
        onprogress: (p: { progress: number }) => progress.push(p.progress),
      },
    );
    expect(JSON.stringify(result)).toContain("completed");
    expect(progress.length).toBeGreaterThanOrEqual(1);
  });

  it("relays sampling and elicitation from an upstream to the agent session whose call caused it", async () => {
    const sampled = await call("trigger-sampling-request", { prompt: "hello", maxTokens: 5 });
    expect(JSON.stringify(sampled)).toContain("sampled:");
    const elicited = await call("trigger-elicitation-request");
    expect(JSON.stringify(elicited)).toContain("blue");
  });

  it("relays resources, templates, prompts, completion and logging", async () => {
    const { resources } = await client.listResources();
    expect(resources.length).toBeGreaterThan(0);
    const first = resources[0]!;
    const read = await client.readResource({ uri: first.uri });
    expect(read.contents.length).toBeGreaterThan(0);
    const { resourceTemplates } = await client.listResourceTemplates();
    expect(resourceTemplates.length).toBeGreaterThan(0);
    const { prompts } = await client.listPrompts();
    expect(prompts.map((p) => p.name)).toContain("simple-prompt");
    const prompt = await client.getPrompt({ name: "simple-prompt" });
    expect(prompt.messages.length).toBeGreaterThan(0);
    const completion = await client.complete({
      ref: { type: "ref/prompt", name: "completable-prompt" },
      argument: { name: "department", value: "E" },
    });
    expect(completion.completion.values.length).toBeGreaterThan(0);
    await client.setLoggingLevel("debug");
    await call("toggle-simulated-logging");
    for (let i = 0; i < 100 && logs.length === 0; i++) await new Promise((r) => setTimeout(r, 100));
    await call("toggle-simulated-logging");
    expect(logs.length).toBeGreaterThan(0);
    expect(await client.ping()).toEqual({});
  });

  it("passes task-augmented tool calls and tasks/* through to the upstream that runs the task", async () => {
    calls.push("simulate-research-query");
    const created = await client.request(
      {
        method: "tools/call",
        params: { name: "simulate-research-query", arguments: { topic: "receipts" }, task: { ttl: 60_000 } },
      },
      CreateTaskResultSchema,
    );
    const taskId = created.task.taskId;
    let status = created.task.status;
    for (let i = 0; i < 100 && status !== "completed" && status !== "failed"; i++) {
      await new Promise((r) => setTimeout(r, 200));
      status = (await client.request({ method: "tasks/get", params: { taskId } }, GetTaskResultSchema))
        .status;
    }
    expect(status).toBe("completed");
    const result = await client.request({ method: "tasks/result", params: { taskId } }, CallToolResultSchema);
    expect(JSON.stringify(result)).toContain("receipts");
    const listed = await client.request({ method: "tasks/list", params: {} }, ListTasksResultSchema);
    expect(listed.tasks.map((t) => t.taskId)).toContain(taskId);
    await expect(
      client.request({ method: "tasks/get", params: { taskId: "not-a-task" } }, GetTaskResultSchema),
    ).rejects.toMatchObject({ code: -32602 });
  });

  it("leaves one decision receipt per forwarded tool call and an evidence bundle that verifies", async () => {
    await client.close();
    await tg.stop();
    const { receipts, bundle } = await exportedReceipts(tg);
    const toolCalls = receipts.filter((r) => r.type === "decision" && r.subject.method === "tools/call");
    expect(toolCalls.map((r) => r.subject.tool).sort()).toEqual([...calls].sort());
    for (const r of toolCalls) {
      expect(r.subject.agent).toBe("local");
      expect(r.hashes?.arguments).toMatch(/^[0-9a-f]{64}$/);
      expect(JSON.stringify(r)).not.toContain("through the gateway"); // hashes, never payloads
    }
    expect(receipts.filter((r) => r.type === "response_inspection").length).toBeGreaterThanOrEqual(
      toolCalls.length,
    );
    // The agent's answers to the upstream's sampling and elicitation requests are recorded too.
    const replies = receipts.filter(
      (r) => r.type === "response_inspection" && (r.data as { kind?: string }).kind === "reply",
    );
    expect(replies.map((r) => r.subject.method).sort()).toEqual([
      "elicitation/create",
      "sampling/createMessage",
    ]);
    const report = await verifyBundleFile(bundle, {
      trustedKeys: [tg.signer.keyId],
      issuerKeys: [tg.issuer.keyId],
      policyHash: tg.gateway.sealed.engine.bundleHash,
    });
    expect(report.steps.filter((s) => s.status === "fail")).toEqual([]);
    expect(report.steps.find((s) => s.id === "artifact")?.status).toBe("pass");
    expect(report.ok).toBe(true);
  });
});

/** A gateway whose policy forbids everything/echo, and a client that collects log notifications. */
async function echoDenied(mode: "advisory" | "silent") {
  const tg = await startTestGateway(
    { mode },
    {
      policy: {
        "allow-all.cedar": ALLOW_ALL,
        "deny.cedar":
          '@id("no-echo")\n@reason("echo is not needed")\nforbid (principal, action == Cmcp::Action::"tools/call", resource == Cmcp::Tool::"everything/echo");\n',
      },
    },
  );
  const client = await connectClient(tg.url);
  const logged: unknown[] = [];
  client.setNotificationHandler(LoggingMessageNotificationSchema, (n) => void logged.push(n.params));
  return { tg, client, logged };
}

describe("gateway decisions", () => {
  it("enforcing mode refuses a denied tool before it reaches the upstream, and records why", async () => {
    const tg = await startTestGateway(
      { mode: "enforcing" },
      {
        policy: {
          "allow-all.cedar": ALLOW_ALL,
          "deny.cedar":
            '@id("no-env")\n@reason("environment variables hold secrets")\nforbid (principal, action == Cmcp::Action::"tools/call", resource == Cmcp::Tool::"everything/get-env");\n',
        },
      },
    );
    try {
      const client = await connectClient(tg.url);
      await expect(client.callTool({ name: "get-env", arguments: {} })).rejects.toMatchObject({
        code: -32010,
      });
      expect(await client.callTool({ name: "echo", arguments: { message: "ok" } })).toMatchObject({
        content: [{ text: "Echo: ok" }],
      });
      await client.close();
      await tg.stop();
      const { receipts } = await exportedReceipts(tg);
      const denied = receipts.find((r) => r.type === "decision" && r.subject.tool === "get-env");
      expect(denied?.decision).toMatchObject({
        outcome: "deny",
        policy_ids: ["deny/no-env"],
        reasons: ["deny/no-env: environment variables hold secrets"],
      });
      // Nothing came back from the upstream for the denied call, so no inspection names its request.
      const inspected = receipts.filter(
        (r) => r.type === "response_inspection" && r.subject.request_id === denied?.subject.request_id,
      );
      expect(inspected.filter((r) => r.subject.method === "tools/call")).toEqual([]);
    } finally {
      await tg.cleanup();
    }
  });

  it("never connects (or spawns) an upstream the policy denies", async () => {
    const tg = await startTestGateway(
      { mode: "enforcing" },
      {
        policy: {
          "allow-all.cedar": ALLOW_ALL,
          "deny.cedar": '@id("no-memory")\nforbid (principal, action, resource in Cmcp::Server::"memory");\n',
        },
      },
    );
    try {
      const client = await connectClient(tg.url);
      const names = (await client.listTools()).tools.map((t) => t.name);
      expect(names).toContain("echo");
      expect(names).not.toContain("read_graph");
      await client.close();
      await tg.stop();
      const { receipts } = await exportedReceipts(tg);
      const connects = receipts.filter((r) => r.type === "decision" && r.subject.method === "initialize");
      expect(connects.find((r) => r.subject.server === "memory")?.decision?.outcome).toBe("deny");
      expect(receipts.some((r) => r.subject.server === "memory" && r.type === "response_inspection")).toBe(
        false,
      );
    } finally {
      await tg.cleanup();
    }
  });

  it("advisory mode records the deny but lets the call through, and tells the agent", async () => {
    const { tg, client, logged } = await echoDenied("advisory");
    try {
      const result = await client.callTool({ name: "echo", arguments: { message: "x" } });
      expect(result).toMatchObject({ content: [{ text: "Echo: x" }] });
      expect(result._meta?.["cmcp/decision"]).toMatchObject({
        outcome: "deny",
        would_block: true,
        enforced: false,
        reasons: ["deny/no-echo: echo is not needed"],
      });
      await vi.waitFor(() => expect(logged).toHaveLength(1));
      expect(logged[0]).toMatchObject({ level: "warning", logger: "cmcp" });
      await client.close();
      await tg.stop();
      const { receipts } = await exportedReceipts(tg);
      expect(
        receipts.find((r) => r.subject.tool === "echo" && r.type === "decision")?.decision?.outcome,
      ).toBe("deny");
    } finally {
      await tg.cleanup();
    }
  });

  it("silent mode records the deny, lets the call through and shows the agent nothing", async () => {
    const { tg, client, logged } = await echoDenied("silent");
    try {
      const result = await client.callTool({ name: "echo", arguments: { message: "x" } });
      expect(result).toMatchObject({ content: [{ text: "Echo: x" }] });
      expect(result._meta?.["cmcp/decision"]).toBeUndefined();
      // A later call's round trip: had a notification been sent for the first, it would have arrived by now.
      await client.callTool({ name: "get-sum", arguments: { a: 1, b: 2 } });
      expect(logged).toEqual([]);
      await client.close();
      await tg.stop();
      const { receipts } = await exportedReceipts(tg);
      expect(
        receipts.find((r) => r.subject.tool === "echo" && r.type === "decision")?.decision?.outcome,
      ).toBe("deny");
    } finally {
      await tg.cleanup();
    }
  });

  it("enforcing mode redacts what @redact names, and refuses a data-class redaction it cannot run", async () => {
    const tg = await startTestGateway(
      { mode: "enforcing" },
      {
        policy: {
          "allow-all.cedar": ALLOW_ALL,
          "redact.cedar": [
            '@id("echo-arg")\n@redact("arg:/message")\npermit (principal, action == Cmcp::Action::"tools/call", resource == Cmcp::Tool::"everything/echo");',
            '@id("sum-result")\n@redact("result:")\npermit (principal, action == Cmcp::Action::"tools/call", resource == Cmcp::Tool::"everything/get-sum");',
            '@id("env-pii")\n@redact("class:pii")\npermit (principal, action == Cmcp::Action::"tools/call", resource == Cmcp::Tool::"everything/get-env");',
          ].join("\n"),
        },
      },
    );
    try {
      const client = await connectClient(tg.url);
      const echoed = await client.callTool({ name: "echo", arguments: { message: "my password" } });
      expect(echoed).toMatchObject({ content: [{ text: "Echo: [redacted by cmcp policy]" }] });
      expect(echoed._meta?.["cmcp/decision"]).toMatchObject({
        outcome: "redact",
        would_block: false,
        enforced: true,
      });
      const summed = await client.callTool({ name: "get-sum", arguments: { a: 1, b: 2 } });
      expect(summed.content).toEqual([{ type: "text", text: "[redacted by cmcp policy]" }]);
      await expect(client.callTool({ name: "get-env", arguments: {} })).rejects.toThrow(
        /redaction of class:pii cannot run/,
      );
      await client.close();
      await tg.stop();
      const { receipts } = await exportedReceipts(tg);
      const echo = receipts.find((r) => r.type === "decision" && r.subject.tool === "echo");
      expect(echo?.decision?.outcome).toBe("redact");
      expect(echo?.data).toEqual({ redact: ["arg:/message"] });
    } finally {
      await tg.cleanup();
    }
  });

  it("a workflow scope narrows what the strict bundle allows, per agent token", async () => {
    const bundle = shippedBundlePath("baseline-strict");
    const files: Record<string, string> = {};
    for (const name of await readdir(bundle))
      if (name.endsWith(".cedar")) files[name] = await readFile(join(bundle, name), "utf8");
    const token = (name: string) => `${name}-token-0123456789abcdef`;
    const tg = await startTestGateway(
      {
        mode: "enforcing",
        agents: [
          {
            name: "helpdesk",
            token_sha256: sha256Hex(utf8(token("helpdesk"))),
            workflows: ["support-agent"],
          },
          { name: "ops", token_sha256: sha256Hex(utf8(token("ops"))), workflows: [] },
        ],
      },
      { policy: files },
    );
    try {
      const as = (name: string) => connectClient(tg.url, {}, { Authorization: `Bearer ${token(name)}` });
      const ops = await as("ops");
      expect(await ops.callTool({ name: "echo", arguments: { message: "hi" } })).toMatchObject({
        content: [{ text: "Echo: hi" }],
      });
      const helpdesk = await as("helpdesk");
      await expect(helpdesk.callTool({ name: "echo", arguments: { message: "hi" } })).rejects.toThrow(
        /workflow support-agent may call only/,
      );
      await writeFile(join(tg.sandbox, "faq.txt"), "read me");
      expect(
        await helpdesk.callTool({ name: "read_text_file", arguments: { path: join(tg.sandbox, "faq.txt") } }),
      ).toMatchObject({ content: [{ text: "read me" }] });
      // Neither agent gets what the strict bundle never allows.
      await expect(
        ops.callTool({ name: "write_file", arguments: { path: join(tg.sandbox, "x"), content: "x" } }),
      ).rejects.toMatchObject({
        code: -32010,
      });
      await ops.close();
      await helpdesk.close();
      await tg.stop();
      const { receipts } = await exportedReceipts(tg);
      const denied = receipts.find(
        (r) => r.type === "decision" && r.subject.agent === "helpdesk" && r.subject.tool === "echo",
      );
      expect(denied?.subject.workflow).toBe("support-agent");
      expect(denied?.decision?.policy_ids).toContain("workflows/support-agent-scope");
    } finally {
      await tg.cleanup();
    }
  });

  it("exposes colliding tool names as server.tool under the prefix rule, and drops them under refuse", async () => {
    const twice = (collision: "prefix" | "refuse") =>
      startTestGateway({
        collision,
        upstreams: [
          {
            name: "one",
            transport: "stdio",
            command: process.execPath,
            args: [join(process.cwd(), "node_modules/@modelcontextprotocol/server-memory/dist/index.js")],
          },
          {
            name: "two",
            transport: "stdio",
            command: process.execPath,
            args: [join(process.cwd(), "node_modules/@modelcontextprotocol/server-memory/dist/index.js")],
          },
        ],
      });
    const prefix = await twice("prefix");
    try {
      const client = await connectClient(prefix.url);
      const names = (await client.listTools()).tools.map((t) => t.name);
      expect(names).toEqual(expect.arrayContaining(["one.read_graph", "two.read_graph"]));
      expect(names).not.toContain("read_graph");
      expect(await client.callTool({ name: "two.read_graph", arguments: {} })).toHaveProperty("content");
      await client.close();
    } finally {
      await prefix.cleanup();
    }
    const refuse = await twice("refuse");
    try {
      const client = await connectClient(refuse.url);
      expect((await client.listTools()).tools).toEqual([]);
      await expect(client.callTool({ name: "read_graph", arguments: {} })).rejects.toMatchObject({
        code: -32602,
      });
      await client.close();
    } finally {
      await refuse.cleanup();
    }
  });
});

describe("upstream connections", () => {
  async function childrenRunning(ppid: number, marker: string): Promise<number> {
    const { readdir: list, readFile: read } = await import("node:fs/promises");
    let n = 0;
    for (const pid of await list("/proc")) {
      if (!/^\d+$/.test(pid)) continue;
      try {
        const stat = await read(`/proc/${pid}/stat`, "utf8");
        const parent = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
        if (parent === ppid && (await read(`/proc/${pid}/cmdline`, "utf8")).includes(marker)) n++;
      } catch {
        // the process ended meanwhile
      }
    }
    return n;
  }

  it("gives each agent session its own stdio upstream, and shares one for upstreams marked stateless", async () => {
    const memory = join(process.cwd(), "node_modules/@modelcontextprotocol/server-memory/dist/index.js");
    const everything = join(
      process.cwd(),
      "node_modules/@modelcontextprotocol/server-everything/dist/index.js",
    );
    const tg = await startTestGateway({
      upstreams: [
        { name: "memory", transport: "stdio", command: process.execPath, args: [memory], stateless: true },
        { name: "everything", transport: "stdio", command: process.execPath, args: [everything, "stdio"] },
      ],
    });
    try {
      const a = await connectClient(tg.url);
      const b = await connectClient(tg.url);
      for (const c of [a, b]) {
        expect(await c.callTool({ name: "read_graph", arguments: {} })).toHaveProperty("content");
        expect(await c.callTool({ name: "echo", arguments: { message: "x" } })).toHaveProperty("content");
      }
      const pid = tg.gateway.runtimePid!;
      expect(await childrenRunning(pid, "server-memory")).toBe(1);
      expect(await childrenRunning(pid, "server-everything")).toBe(2);
      await a.close();
      await b.close();
    } finally {
      await tg.cleanup();
    }
  });
});

describe("gateway configuration", () => {
  it("accepts the example configuration shipped in deploy/", async () => {
    const config = await loadConfig(join(process.cwd(), "deploy/config.example.json"));
    expect(config.upstreams.map((u) => u.transport)).toEqual(["stdio", "streamable-http"]);
    expect(config.mode).toBe("enforcing");
    expect(config.artifact?.file).toBe("/etc/cmcp/policy.artifact.json");
  });

  it("refuses a non-loopback listen address without agent tokens and TLS", async () => {
    const { mkdtemp, writeFile } = await import("node:fs/promises");
    const { tmpdir } = await import("node:os");
    const dir = await mkdtemp(join(tmpdir(), "cmcp-cfg-"));
    const path = join(dir, "c.json");
    const sealed = { policy: "p", artifact: { file: "a.json", issuer_key: toBase64(new Uint8Array(32)) } };
    await writeFile(
      path,
      JSON.stringify({ ...sealed, listen: "0.0.0.0:8765", upstreams: [{ name: "a", command: "/bin/true" }] }),
    );
    await expect(loadConfig(path)).rejects.toMatchObject({ code: "config.exposed" });
    await writeFile(
      path,
      JSON.stringify({ ...sealed, listen: "127.0.0.1:8765", upstreams: [{ name: "a" }] }),
    );
    await expect(loadConfig(path)).rejects.toThrow(/needs "command"/);
    await writeFile(
      path,
      JSON.stringify({
        ...sealed,
        listen: "127.0.0.1:8765",
        upstreams: [{ name: "a", command: "x", bogus: 1 }],
      }),
    );
    await expect(loadConfig(path)).rejects.toThrow(
      /upstreams\/0 must NOT have additional properties "bogus"/,
    );
    await writeFile(path, JSON.stringify({ upstreams: [{ name: "a", command: "x" }] }));
    await expect(loadConfig(path)).rejects.toThrow(/must have required property 'policy'/);
    await writeFile(
      path,
      JSON.stringify({
        ...sealed,
        artifact: { file: "a", issuer_key: "A".repeat(42) + "B=" },
        upstreams: [{ name: "a", command: "x" }],
      }),
    );
    await expect(loadConfig(path)).rejects.toThrow(/issuer_key is not a base64 Ed25519 public key/);
  });
});
