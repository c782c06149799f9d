import { spawn, type ChildProcess } from "node:child_process";
import { readFileSync, realpathSync } from "node:fs";
import { chmod, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { UpstreamSpec } from "../../governor/boundary.js";
import {
  CATALOG_LIMITS,
  catalogHash,
  definitionHash,
  hashPackageDir,
  parseCatalog,
  type StdioIdentity,
} from "../../governor/catalog.js";
import {
  openTemplateFindings,
  snapshotCatalog,
  type SnapshotResult,
} from "../../governor/catalog-snapshot.js";
import { bin, freePort, referenceUpstreams } from "../helpers/gateway.js";

let dir: string;
let sandbox: string;

/**
 * A raw stdio MCP server (no SDK, so it can send what an SDK server would
 * refuse to): pages of tools from pages.json beside it, or a pagination loop,
 * or silence.
 */
const RAW_SERVER = `
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
const mode = process.argv[2] ?? "pages";
const pages = JSON.parse(readFileSync(new URL("./pages.json", import.meta.url), "utf8"));
const send = (m) => process.stdout.write(JSON.stringify(m) + "\\n");
if (mode === "crash") {
  console.error("boom: cannot start, key " + process.env.API_KEY + " was rejected");
  process.exit(3);
}
createInterface({ input: process.stdin }).on("line", (line) => {
  const msg = JSON.parse(line);
  if (msg.id === undefined || mode === "hang") return;
  const reply = (result) => send({ jsonrpc: "2.0", id: msg.id, result });
  if (msg.method === "initialize")
    reply({ protocolVersion: msg.params.protocolVersion, capabilities: { tools: {} }, serverInfo: { name: "raw", version: "9.9.9" } });
  else if (msg.method === "tools/list") {
    if (mode === "loop") return reply({ tools: [], nextCursor: "again" });
    const i = msg.params && msg.params.cursor ? Number(msg.params.cursor) : 0;
    // The page text is sent as written, so a lone surrogate escape survives.
    process.stdout.write('{"jsonrpc":"2.0","id":' + JSON.stringify(msg.id) + ',"result":{"tools":' + pages[i] +
      (i + 1 < pages.length ? ',"nextCursor":"' + (i + 1) + '"' : "") + "}}\\n");
  } else send({ jsonrpc: "2.0", id: msg.id, error: { code: -32601, message: "method not found" } });
});
`;

const oddTool = {
  name: "a",
  description: "first",
  inputSchema: { type: "object", "x-odd": { deep: [1, { z: null }] }, properties: {} },
  execution: { taskSupport: "forbidden" },
  _meta: { k: 1 },
};

/** Small, but nested deeper than a catalog file may hold: a catalog holding it could not be read back. */
const deepSchema: Record<string, unknown> = { type: "object" };
for (let i = 0, cur = deepSchema; i < CATALOG_LIMITS.maxDepth; i++)
  cur = cur.not = {} as Record<string, unknown>;

const PAGES = [
  JSON.stringify([oddTool, { description: "no name" }]),
  JSON.stringify([
    { name: "b", description: 42, inputSchema: { type: "object" } },
    { name: "a", description: "listed again" },
    { name: "c", title: "C", inputSchema: { type: "object" } },
    { name: "deep", inputSchema: deepSchema },
  ]),
  '[{"name":"d","description":"lone \\ud800 surrogate","inputSchema":{"type":"object"}},' +
    JSON.stringify({
      name: "big",
      title: "t".repeat(100 * 1024),
      description: "x".repeat(200 * 1024),
      inputSchema: { type: "object" },
    }) +
    "]",
];

let rawRoot: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "cmcp-snapshot-"));
  await chmod(dir, 0o711);
  sandbox = join(dir, "sandbox");
  await mkdir(sandbox);
  rawRoot = join(dir, "raw-server");
  await mkdir(rawRoot);
  await writeFile(
    join(rawRoot, "package.json"),
    JSON.stringify({ name: "raw-server", version: "0.0.1", type: "module" }),
  );
  await writeFile(join(rawRoot, "server.mjs"), RAW_SERVER);
  await writeFile(join(rawRoot, "pages.json"), JSON.stringify(PAGES));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const raw = (name: string, mode: string, extra: Partial<UpstreamSpec> = {}): UpstreamSpec => ({
  name,
  transport: "stdio",
  command: process.execPath,
  args: [join(rawRoot, "server.mjs"), mode],
  ...extra,
});

function packageRoot(pkg: string): string {
  return dirname(dirname(realpathSync(bin(pkg))));
}

describe("snapshot of the reference servers", () => {
  let r: SnapshotResult;
  beforeAll(async () => {
    r = await snapshotCatalog({ upstreams: referenceUpstreams(sandbox) });
  });

  it("lists every server's tools, resources, templates and prompts", () => {
    expect(r.failures).toEqual([]);
    const byName = new Map(r.catalog.servers.map((s) => [s.name, s]));
    expect([...byName.keys()]).toEqual(["everything", "filesystem", "memory"]);
    const tools = (n: string) => byName.get(n)!.tools.map((t) => t.tool.name);
    // server-everything registers its sampling/elicitation tools only for clients that can answer them.
    expect(tools("everything")).toEqual(
      expect.arrayContaining([
        "echo",
        "get-sum",
        "get-env",
        "trigger-sampling-request",
        "trigger-elicitation-request",
      ]),
    );
    expect(tools("everything").length).toBe(16);
    expect(tools("filesystem").length).toBe(14);
    expect(tools("filesystem")).toEqual(
      expect.arrayContaining(["read_text_file", "write_file", "list_directory"]),
    );
    expect(tools("memory").length).toBe(9);
    expect(tools("memory")).toEqual(
      expect.arrayContaining(["create_entities", "read_graph", "search_nodes"]),
    );
    for (const s of r.catalog.servers) expect(tools(s.name)).toEqual([...tools(s.name)].sort());
    expect(byName.get("everything")!.resources.length).toBeGreaterThan(0);
    expect(byName.get("everything")!.resource_templates.length).toBeGreaterThan(0);
    expect(byName.get("everything")!.prompts.length).toBeGreaterThan(0);
    expect(byName.get("memory")!.server_info?.name).toBe("memory-server");
  });

  it("pins each tool's definition and hash, without fields outside the pinned set", () => {
    for (const s of r.catalog.servers)
      for (const t of s.tools) {
        expect(t.sha256).toBe(definitionHash(t.tool));
        expect(
          Object.keys(t.tool).every((k) =>
            ["name", "title", "description", "inputSchema", "outputSchema", "annotations"].includes(k),
          ),
        ).toBe(true);
      }
    const echo = r.catalog.servers[0]!.tools.find((t) => t.tool.name === "echo")!;
    expect(echo.tool.description).toBe("Echoes back the input string");
    expect(r.catalog.review).toBeNull();
    // What was written loads back as a valid catalog with the same hash.
    const again = parseCatalog(JSON.stringify(r.catalog, null, 2));
    expect(catalogHash(again)).toBe(catalogHash(r.catalog));
  });

  it("records each server's identity: node, and the package its script belongs to", async () => {
    for (const [name, pkg] of [
      ["everything", "server-everything"],
      ["filesystem", "server-filesystem"],
      ["memory", "server-memory"],
    ] as const) {
      const id = r.catalog.servers.find((s) => s.name === name)!.identity as StdioIdentity;
      const root = packageRoot(pkg);
      const manifest = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as {
        name: string;
        version: string;
      };
      expect(id.transport).toBe("stdio");
      expect(id.command).toBe(realpathSync(process.execPath));
      expect(id.package).toMatchObject({
        root,
        name: manifest.name,
        version: manifest.version,
        entry: "dist/index.js",
        sha256: (await hashPackageDir(root)).sha256,
      });
    }
  });

  it("returns the scanner's findings as a list naming server and tool", () => {
    expect(Array.isArray(r.findings)).toBe(true);
    for (const f of r.findings) {
      expect(typeof f.ruleId).toBe("string");
      expect(["low", "medium", "high"]).toContain(f.severity);
      expect(["everything", "filesystem", "memory"]).toContain(f.server);
    }
    // get-env describes returning every environment variable: a real high finding on the reference server.
    expect(
      r.findings.some((f) => f.server === "everything" && f.tool === "get-env" && f.severity === "high"),
    ).toBe(true);
    expect(r.rulesVersion).toMatch(/^\d/);
  });
});

describe("snapshot of odd and failing servers", () => {
  it("fails a server whose definitions would not fit one catalog file", async () => {
    const r = await snapshotCatalog(
      { upstreams: [raw("raw", "pages")] },
      { limits: { ...CATALOG_LIMITS, maxFileBytes: 100 } },
    );
    expect(r.catalog.servers).toEqual([]);
    expect(r.failures[0]?.message).toMatch(/more than 100 bytes, more than a catalog file may hold/);
    // Each server fits, the whole does not: the snapshot refuses rather than write an unreadable file.
    const whole = await snapshotCatalog(
      { upstreams: [raw("raw", "pages")] },
      { limits: { ...CATALOG_LIMITS, maxFileBytes: 900 } },
    ).catch((err: unknown) => err);
    expect(whole).toMatchObject({
      code: "catalog.limits",
      message: expect.stringMatching(/snapshot fewer upstreams/),
    });
  });

  it("tells the reviewer when a URI template covers any path", () => {
    const entries = [
      { sha256: "0".repeat(64), template: { uriTemplate: "file:///srv/{+path}" } },
      { sha256: "0".repeat(64), template: { uriTemplate: "notes://items/{id}" } },
    ];
    expect(openTemplateFindings("files", entries)).toEqual([
      expect.objectContaining({
        ruleId: "catalog.open-template",
        severity: "medium",
        item: { kind: "resource_template", key: "file:///srv/{+path}" },
      }),
    ]);
  });

  it("keeps definitions as listed across pages and reports what it cannot pin", async () => {
    const r = await snapshotCatalog({ upstreams: [raw("raw", "pages")] });
    expect(r.failures).toEqual([]);
    const s = r.catalog.servers[0]!;
    expect(s.server_info).toEqual({ name: "raw", version: "9.9.9" });
    expect(s.tools.map((t) => t.tool.name)).toEqual(["a", "c"]);
    const { execution: _e, _meta: _m, ...pinned } = oddTool;
    expect(s.tools[0]!.tool).toEqual(pinned);
    expect(s.tools[0]!.sha256).toBe(definitionHash(oddTool));
    const left = r.findings.filter((f) => f.ruleId.startsWith("catalog."));
    expect(left.map((f) => [f.ruleId, f.tool, f.severity])).toEqual(
      expect.arrayContaining([
        ["catalog.malformed-definition", null, "high"],
        ["catalog.malformed-definition", "b", "high"],
        ["catalog.duplicate", "a", "high"],
        ["catalog.malformed-definition", "d", "high"],
        ["catalog.definition-too-large", "big", "high"],
        ["catalog.definition-too-large", "deep", "high"],
      ]),
    );
    expect(left.find((f) => f.tool === "b")!.explanation).toContain("/description must be string");
    expect((s.identity as StdioIdentity).package?.name).toBe("raw-server");
  });

  it("reports every failing server, each for its own reason, and keeps the others", async () => {
    const r = await snapshotCatalog(
      {
        upstreams: [
          raw("crash", "crash", { env: { API_KEY: "supersecretvalue" } }),
          raw("hang", "hang"),
          raw("loop", "loop"),
          {
            name: "fetcher",
            transport: "stdio",
            command: "npx",
            args: ["-y", "@modelcontextprotocol/server-memory"],
          },
          { name: "nowhere", transport: "streamable-http", url: "http://127.0.0.1:9/mcp" },
          raw("fine", "pages"),
        ],
      },
      { timeoutMs: 4000 },
    );
    expect(r.catalog.servers.map((s) => s.name)).toEqual(["fine"]);
    const why = new Map(r.failures.map((f) => [f.server, f]));
    expect([...why.keys()].sort()).toEqual(["crash", "fetcher", "hang", "loop", "nowhere"]);
    expect(why.get("crash")).toMatchObject({ code: "catalog.connect" });
    expect(why.get("crash")!.message).toContain("boom: cannot start");
    expect(why.get("crash")!.message).toContain("[redacted]");
    expect(why.get("crash")!.message).not.toContain("supersecretvalue");
    expect(why.get("hang")).toMatchObject({ code: "catalog.timeout" });
    expect(why.get("loop")!.message).toMatch(/same cursor twice/);
    expect(why.get("fetcher")).toMatchObject({ code: "catalog.identity" });
    expect(why.get("fetcher")!.message).toMatch(/pinned version/);
    expect(why.get("nowhere")).toMatchObject({ code: "catalog.connect" });
  });

  it("aliases a tool name offered by two servers and says so", async () => {
    const mem = (name: string): UpstreamSpec => ({
      name,
      transport: "stdio",
      command: process.execPath,
      args: [bin("server-memory")],
      env: { MEMORY_FILE_PATH: join(sandbox, `${name}.jsonl`) },
    });
    const r = await snapshotCatalog({ upstreams: [mem("mem1"), mem("mem2")] });
    expect(r.failures).toEqual([]);
    const [a, b] = r.catalog.servers;
    for (const [s, prefix] of [
      [a!, "mem1"],
      [b!, "mem2"],
    ] as const)
      for (const t of s.tools) expect(t.alias).toBe(`${prefix}.${t.tool.name}`);
    const collisions = r.findings.filter((f) => f.ruleId === "catalog.name-collision");
    const tools = collisions.filter((f) => f.tool !== null);
    expect(tools.length).toBe(a!.tools.length * 2);
    expect(tools.every((f) => f.severity === "medium")).toBe(true);
    // Both offer the resource memory://knowledge-graph: a URI stays with the first server, and the reviewer is told.
    expect(collisions.filter((f) => f.tool === null)).toEqual([
      expect.objectContaining({
        server: "mem2",
        severity: "high",
        item: { kind: "resource", key: "memory://knowledge-graph" },
      }),
    ]);
    expect(a!.resources.map((x) => x.resource.uri)).toEqual(["memory://knowledge-graph"]);
    expect(b!.resources).toEqual([]);
  });
});

describe("snapshot over HTTP", () => {
  const children: ChildProcess[] = [];
  afterAll(() => {
    for (const c of children) c.kill("SIGKILL");
  });

  /** server-everything in its HTTP modes, bound to loopback by the runtime tests' preload. */
  async function startEverything(mode: "streamableHttp" | "sse"): Promise<number> {
    const port = await freePort();
    const preload = fileURLToPath(new URL("../runtime/fixtures/listen-loopback.ts", import.meta.url));
    const child = spawn(
      process.execPath,
      ["--import", "tsx", "--import", preload, bin("server-everything"), mode],
      {
        env: { PATH: process.env["PATH"] ?? "", PORT: String(port) },
        stdio: ["ignore", "ignore", "pipe"],
      },
    );
    children.push(child);
    await new Promise<void>((resolve, reject) => {
      let seen = "";
      child.stderr?.on("data", (d: Buffer) => {
        seen += d.toString();
        if (/listening on port|running on port/.test(seen)) resolve();
      });
      child.once("exit", (code) => reject(new Error(`server-everything ${mode} exited (${code}): ${seen}`)));
    });
    return port;
  }

  it("lists Streamable HTTP and SSE servers and pins them by URL", async () => {
    const [http, sse] = await Promise.all([startEverything("streamableHttp"), startEverything("sse")]);
    const r = await snapshotCatalog({
      upstreams: [
        { name: "http", transport: "streamable-http", url: `http://127.0.0.1:${http}/mcp` },
        { name: "sse", transport: "sse", url: `http://127.0.0.1:${sse}/sse` },
      ],
    });
    expect(r.failures).toEqual([]);
    const [a, b] = r.catalog.servers;
    expect(a!.identity).toEqual({ transport: "streamable-http", url: `http://127.0.0.1:${http}/mcp` });
    expect(b!.identity).toEqual({ transport: "sse", url: `http://127.0.0.1:${sse}/sse` });
    expect(a!.tools.map((t) => t.tool.name)).toContain("echo");
    expect(b!.tools.map((t) => t.tool.name)).toContain("echo");
    // The same server over two transports: every tool name collides, so both sides are aliased.
    expect(a!.tools.find((t) => t.tool.name === "echo")!.alias).toBe("http.echo");
    expect(r.findings.filter((f) => f.ruleId === "catalog.identity-plain-http").map((f) => f.server)).toEqual(
      ["http", "sse"],
    );
  });
});
