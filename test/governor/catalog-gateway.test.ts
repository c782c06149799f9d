import { appendFile, chmod, copyFile, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { afterEach, describe, expect, it, vi } from "vitest";
import type { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import type { TraceClaim } from "../../artifacts/trace-claim.js";
import { adminRequest } from "../../governor/admin-server.js";
import type { UpstreamSpec } from "../../governor/boundary.js";
import { approveCatalog, type Catalog } from "../../governor/catalog.js";
import { snapshotCatalog } from "../../governor/catalog-snapshot.js";
import {
  bin,
  connectClient,
  liveReceipts,
  startTestGateway,
  type TestGateway,
  verifiedReceipts,
} from "../helpers/gateway.js";

const DRIFTING = fileURLToPath(new URL("./fixtures/drifting-server.mjs", import.meta.url));

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** A drifting server in a package directory of its own, so its identity is that package. */
async function driftingPackage(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "cmcp-drift-pkg-"));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  await chmod(dir, 0o755);
  await writeFile(
    join(dir, "package.json"),
    JSON.stringify({ name: "drifting-server", version: "1.0.0", type: "module" }),
  );
  await copyFile(DRIFTING, join(dir, "index.mjs"));
  return join(dir, "index.mjs");
}

function drifting(name: string, entry: string, ...args: string[]): UpstreamSpec {
  return { name, transport: "stdio", command: process.execPath, args: [entry, ...args] };
}

async function approved(upstreams: UpstreamSpec[]): Promise<Catalog> {
  const snap = await snapshotCatalog({ upstreams });
  expect(snap.failures).toEqual([]);
  return approveCatalog(snap.catalog, {
    reviewer: "test",
    scannerRulesVersion: snap.rulesVersion,
    acceptedHighFindings: snap.findings.filter((f) => f.severity === "high").length,
  });
}

async function start(
  upstreams: UpstreamSpec[],
  catalog: Catalog,
  enforcement: {
    measurement_interval_seconds: number;
    on_drift: "alert" | "deny_tool" | "isolate_server" | "quarantine";
  },
  configUpstreams = upstreams,
): Promise<{ tg: TestGateway; client: Client }> {
  const tg = await startTestGateway(
    { mode: "enforcing", upstreams: configUpstreams },
    { catalog, enforcement },
  );
  cleanups.push(() => tg.cleanup());
  const client = await connectClient(tg.url);
  cleanups.push(() => client.close());
  return { tg, client };
}

const HONEST = "Looks up a record by its key.";

describe("the approved catalog in the running gateway", () => {
  it("serves the approved definitions; a changed description announced with list_changed is drift, and the tool is denied", async () => {
    const entry = await driftingPackage();
    const ups = [drifting("ledger", entry, "--mutate-after", "2", "--notify", "--notify-same")];
    const { tg, client } = await start(ups, await approved(ups), {
      measurement_interval_seconds: 3600,
      on_drift: "deny_tool",
    });
    const first = await client.listTools();
    expect(first.tools.find((t) => t.name === "lookup")?.description).toBe(HONEST);
    // server-everything style list_changed right after connect, with nothing changed: not drift.
    for (let i = 0; i < 2; i++)
      expect(await client.callTool({ name: "lookup", arguments: { key: `k${i}` } })).toMatchObject({
        content: [{ text: `record k${i}` }],
      });
    // The second call mutated the server, which announced it: the gateway re-lists and finds the drift.
    await vi.waitFor(
      async () =>
        expect(client.callTool({ name: "lookup", arguments: { key: "k3" } })).rejects.toThrow(
          /unknown tool: lookup|drifted/,
        ),
      { timeout: 20_000, interval: 200 },
    );
    const again = await client.listTools();
    expect(again.tools.map((t) => t.name)).toEqual(["count"]);
    // The poisoned text never reached the agent.
    expect(JSON.stringify([first, again])).not.toContain("IMPORTANT");
    expect(await client.callTool({ name: "count", arguments: {} })).toMatchObject({
      content: [{ text: "3" }],
    });
    // The session's TRACE claim reports the drift (cmcp claim goes through the same admin request).
    const session = (client.transport as StreamableHTTPClientTransport).sessionId!;
    const { claim } = (await adminRequest(tg.gateway.adminSocket!, { cmd: "claim", session })) as {
      claim: TraceClaim;
    };
    expect(claim.call_summary).toMatchObject({ drift_events: 1, denied: 0 });
    const all = await verifiedReceipts(tg);
    const drift = all.filter((r) => r.type === "drift");
    expect(drift).toHaveLength(1);
    expect(drift[0]).toMatchObject({
      subject: { server: "ledger", tool: "lookup" },
      data: { kind: "definition", action: "deny_tool", applied: "tool_denied" },
    });
    expect((drift[0]!.data as { changes: { path: string; op: string }[] }).changes).toEqual([
      expect.objectContaining({ path: "/description", op: "changed" }),
    ]);
  });

  it("finds a change the server never announces by re-listing at the sealed cadence", async () => {
    const entry = await driftingPackage();
    const ups = [drifting("ledger", entry, "--mutate-after", "1")];
    const { tg, client } = await start(ups, await approved(ups), {
      measurement_interval_seconds: 1,
      on_drift: "isolate_server",
    });
    await client.listTools();
    await client.callTool({ name: "lookup", arguments: { key: "a" } });
    await vi.waitFor(
      async () =>
        expect(client.callTool({ name: "count", arguments: {} })).rejects.toThrow(
          /unknown tool: count|isolated after drift/,
        ),
      { timeout: 30_000, interval: 250 },
    );
    const drift = (await verifiedReceipts(tg)).filter((r) => r.type === "drift");
    expect(drift[0]).toMatchObject({ data: { kind: "definition", applied: "server_isolated" } });
  });

  it("finds an entry file modified on disk while the server runs, and isolates the server", async () => {
    const entry = await driftingPackage();
    const ups = [drifting("ledger", entry)];
    const { tg, client } = await start(ups, await approved(ups), {
      measurement_interval_seconds: 1,
      on_drift: "deny_tool",
    });
    expect(await client.callTool({ name: "count", arguments: {} })).toMatchObject({
      content: [{ text: "1" }],
    });
    await appendFile(entry, "\n// a silent update\n");
    await vi.waitFor(
      async () =>
        expect(client.callTool({ name: "count", arguments: {} })).rejects.toThrow(
          /isolated after drift \(identity\)/,
        ),
      { timeout: 30_000, interval: 250 },
    );
    const drift = (await verifiedReceipts(tg)).filter((r) => r.type === "drift");
    expect(drift[0]).toMatchObject({
      subject: { server: "ledger" },
      data: { kind: "identity", applied: "server_isolated" },
    });
    expect(JSON.stringify(drift[0]!.data)).toContain("/package/sha256");
  });

  it("never connects a server outside the catalog, and refuses arguments that break the pinned schema", async () => {
    const entry = await driftingPackage();
    const ups = [drifting("ledger", entry)];
    const extra: UpstreamSpec = {
      name: "memory",
      transport: "stdio",
      command: process.execPath,
      args: [bin("server-memory")],
      env: { MEMORY_FILE_PATH: join(tmpdir(), `cmcp-mem-${process.pid}.jsonl`) },
    };
    const { tg, client } = await start(
      ups,
      await approved(ups),
      { measurement_interval_seconds: 3600, on_drift: "deny_tool" },
      [...ups, extra],
    );
    expect((await client.listTools()).tools.map((t) => t.name).sort()).toEqual(["count", "lookup"]);
    await expect(client.callTool({ name: "lookup", arguments: { key: 42 } })).rejects.toThrow(
      /arguments do not match the approved input schema of lookup: \/key must be string/,
    );
    const all = await verifiedReceipts(tg);
    expect(all.find((r) => r.type === "enforcement" && r.subject.server === "memory")?.data).toMatchObject({
      action: "server_not_in_catalog",
    });
    expect(all.some((r) => r.subject.server === "memory" && r.type === "decision")).toBe(false);
  });
});

describe("prompts and resources under the approved catalog", () => {
  type Drift = { subject: Record<string, unknown>; data: Record<string, unknown> };
  const driftReceipts = async (tg: TestGateway, live = false) =>
    (await (live ? liveReceipts(tg) : verifiedReceipts(tg))).filter(
      (r) => r.type === "drift",
    ) as unknown as Drift[];

  it("serves approved prompts, resources and templates; a prompt changed with list_changed is drift and denied", async () => {
    const entry = await driftingPackage();
    const ups = [drifting("ledger", entry, "--mutate-after", "1", "--mutate", "prompt", "--notify")];
    const { tg, client } = await start(ups, await approved(ups), {
      measurement_interval_seconds: 3600,
      on_drift: "deny_tool",
    });
    expect((await client.listPrompts()).prompts).toEqual([
      expect.objectContaining({ name: "summarise", description: "Summarises the ledger." }),
    ]);
    expect((await client.getPrompt({ name: "summarise" })).messages).toHaveLength(1);
    const resources = (await client.listResources()).resources;
    expect(resources.map((r) => r.uri).sort()).toEqual(["ledger://readme", "ledger://records/alpha"]);
    expect((await client.listResourceTemplates()).resourceTemplates.map((t) => t.uriTemplate)).toEqual([
      "ledger://records/{key}",
    ]);
    // Not listed, but covered by the approved template.
    expect((await client.readResource({ uri: "ledger://records/zeta" })).contents[0]).toMatchObject({
      text: "content of ledger://records/zeta",
    });
    await expect(client.readResource({ uri: "ledger://elsewhere" })).rejects.toThrow(/no upstream offers/);

    await client.callTool({ name: "lookup", arguments: { key: "a" } });
    await vi.waitFor(
      async () => expect(client.getPrompt({ name: "summarise" })).rejects.toThrow(/unknown prompt|drifted/),
      { timeout: 20_000, interval: 200 },
    );
    expect((await client.listPrompts()).prompts).toEqual([]);
    // Tools and resources of the same server are untouched by a prompt's drift.
    expect((await client.listTools()).tools.map((t) => t.name).sort()).toEqual(["count", "lookup"]);
    expect((await client.readResource({ uri: "ledger://readme" })).contents).toHaveLength(1);
    const drift = await driftReceipts(tg);
    expect(drift).toHaveLength(1);
    expect(drift[0]).toMatchObject({
      subject: { server: "ledger", prompt: "summarise" },
      data: { kind: "definition", item_kind: "prompt", action: "deny_tool", applied: "item_denied" },
    });
    expect(drift[0]!.data.changes).toEqual([
      expect.objectContaining({ path: "/description", op: "changed" }),
    ]);
    expect(JSON.stringify(drift[0]!.data)).toContain("aws/credentials");
  });

  it("finds a resource changed without notice at the sealed cadence, isolates the server, and stops listing it", async () => {
    const entry = await driftingPackage();
    const ups = [drifting("ledger", entry, "--mutate-after", "1", "--mutate", "resource")];
    const { tg, client } = await start(ups, await approved(ups), {
      measurement_interval_seconds: 1,
      on_drift: "isolate_server",
    });
    const first = await client.listResources();
    expect(first.resources.find((r) => r.uri === "ledger://readme")?.description).toBe(
      "How the ledger works.",
    );
    await client.callTool({ name: "lookup", arguments: { key: "a" } });
    await vi.waitFor(
      async () =>
        expect(client.readResource({ uri: "ledger://readme" })).rejects.toThrow(
          /no upstream offers|isolated after drift/,
        ),
      { timeout: 30_000, interval: 250 },
    );
    // Isolated, the server is no longer re-listed by this session at each cadence.
    const ledgerDecisions = async () =>
      (await liveReceipts(tg)).filter((r) => r.type === "decision" && r.subject.server === "ledger").length;
    const settled = await ledgerDecisions();
    await new Promise((r) => setTimeout(r, 3500));
    expect(await ledgerDecisions()).toBe(settled);
    expect(JSON.stringify(await client.listResources())).not.toContain("collector.example");
    const drift = await driftReceipts(tg);
    expect(drift[0]).toMatchObject({
      subject: { server: "ledger", resource: "ledger://readme" },
      data: { kind: "definition", item_kind: "resource", applied: "server_isolated" },
    });
  });

  it("neither lists nor reads a resource that appears outside the catalog, and records it once", async () => {
    const entry = await driftingPackage();
    const ups = [drifting("ledger", entry, "--mutate-after", "1", "--mutate", "new-resource", "--notify")];
    const { tg, client } = await start(ups, await approved(ups), {
      measurement_interval_seconds: 3600,
      on_drift: "deny_tool",
    });
    await client.listResources();
    await client.callTool({ name: "lookup", arguments: { key: "a" } });
    await vi.waitFor(async () => expect((await driftReceipts(tg, true)).length).toBeGreaterThan(0), {
      timeout: 20_000,
      interval: 200,
    });
    expect((await client.listResources()).resources.map((r) => r.uri).sort()).toEqual([
      "ledger://readme",
      "ledger://records/alpha",
    ]);
    await expect(client.readResource({ uri: "ledger://extra" })).rejects.toThrow(/no upstream offers/);
    const drift = await driftReceipts(tg);
    expect(drift).toHaveLength(1);
    expect(drift[0]).toMatchObject({
      subject: { server: "ledger" },
      data: {
        kind: "unapproved_resource",
        applied: "none",
        changes: [{ path: "/ledger:~1~1extra", op: "added" }],
      },
    });
  });
});

describe("a catalog sealed into the artifact", () => {
  it("refuses to start when the catalog on disk is not the sealed one", async () => {
    const entry = await driftingPackage();
    const ups = [drifting("ledger", entry)];
    const catalog = await approved(ups);
    const dir = await mkdtemp(join(tmpdir(), "cmcp-cat-"));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    await mkdir(join(dir, "x"));
    const tampered: Catalog = { ...catalog, review: { ...catalog.review!, reviewer: "mallory" } };
    const { loadSealedPolicy } = await import("../../governor/sealed-policy.js");
    const { writeSealedPolicy } = await import("../helpers/gateway.js");
    const { catalogHash } = await import("../../governor/catalog.js");
    const sealed = await writeSealedPolicy(join(dir, "x"), "enforcing", undefined, {
      catalogHash: catalogHash(catalog),
    });
    const file = join(dir, "catalog.json");
    await writeFile(file, JSON.stringify(tampered));
    await expect(
      loadSealedPolicy({
        policy: sealed.policy,
        schema: null,
        mode: null,
        dev: false,
        artifact: sealed.artifact,
        catalog: file,
      }),
    ).rejects.toMatchObject({ code: "artifact.catalog-hash" });
    await writeFile(file, JSON.stringify({ ...catalog, review: null }));
    await expect(
      loadSealedPolicy({
        policy: sealed.policy,
        schema: null,
        mode: null,
        dev: false,
        artifact: sealed.artifact,
        catalog: file,
      }),
    ).rejects.toMatchObject({ code: "artifact.catalog-unapproved" });
  });
});
