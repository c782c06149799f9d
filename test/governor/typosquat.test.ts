import { readdirSync, readFileSync } from "node:fs";
import { chmod, copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import type { UpstreamSpec } from "../../governor/boundary.js";
import { approveCatalog, type Catalog, type CatalogFinding } from "../../governor/catalog.js";
import { snapshotCatalog } from "../../governor/catalog-snapshot.js";
import {
  approvedReferences,
  confusableSkeleton,
  damerauLevenshtein,
  findLookAlikes,
  identitySubject,
  parseWellKnownList,
  wellKnownPackages,
  wellKnownReferences,
  type LookAlikeReference,
} from "../../governor/typosquat.js";
import { runCatalogSnapshot } from "../../cli/catalog-command.js";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..", "..");
const FS = "@modelcontextprotocol/server-filesystem";

const refs = wellKnownReferences();
const check = (name: string, references: readonly LookAlikeReference[] = refs) =>
  findLookAlikes({ kind: "package", name }, references);
const rules = (name: string, references: readonly LookAlikeReference[] = refs) =>
  check(name, references).map((m) => `${m.ruleId} ${m.severity} ${m.resembles}`);

describe("the well-known list", () => {
  it("is valid and holds every package of the benign corpus", () => {
    const list = wellKnownPackages();
    expect(list.format).toBe("cmcp.well-known-mcp-packages.v1");
    const dir = join(root, "test", "vectors", "tool-corpus", "benign");
    const corpus = readdirSync(dir)
      .filter((f) => f.endsWith(".json"))
      .map((f) => (JSON.parse(readFileSync(join(dir, f), "utf8")) as { package?: string }).package)
      .filter((p): p is string => typeof p === "string");
    expect(corpus.length).toBeGreaterThan(30);
    for (const p of corpus) expect(list.packages).toContain(p);
    expect(list.packages).toContain(FS);
  });

  it("refuses a malformed list", () => {
    const ok = { format: "cmcp.well-known-mcp-packages.v1", version: "1", packages: ["a"] };
    expect(parseWellKnownList(ok).packages).toEqual(["a"]);
    expect(() => parseWellKnownList({ ...ok, format: "x" })).toThrow(/format/);
    expect(() => parseWellKnownList({ ...ok, packages: ["Bad Name"] })).toThrow(/not an npm package name/);
    expect(() => parseWellKnownList({ ...ok, packages: ["a", "a"] })).toThrow(/twice/);
  });
});

describe("building blocks", () => {
  it("Damerau-Levenshtein counts transpositions as one edit", () => {
    expect(damerauLevenshtein("kitten", "sitting")).toBe(3);
    expect(damerauLevenshtein("abcd", "acbd")).toBe(1);
    expect(damerauLevenshtein("ca", "abc")).toBe(2);
    expect(damerauLevenshtein("", "abc")).toBe(3);
    expect(damerauLevenshtein("filesystem", "filesystem")).toBe(0);
  });

  it("the skeleton maps look-alike characters", () => {
    expect(confusableSkeleton("fi1esystem")).toBe("filesystem");
    expect(confusableSkeleton("fIlesystem")).toBe("fllesystem");
    expect(confusableSkeleton("mоdеlсоntехt")).toBe("modelcontext"); // Cyrillic о е с х
    expect(confusableSkeleton("ρlαywright")).toBe("playwright"); // Greek ρ α
    expect(confusableSkeleton("rnemory")).toBe(confusableSkeleton("memory"));
    expect(confusableSkeleton("ｓｅｒｖｅｒ")).toBe("server"); // full width, NFKC
    expect(confusableSkeleton("fi\u200Blesystém")).toBe("filesystem"); // zero width, accent
  });
});

describe("true positives", () => {
  it("homoglyphs (digits, Cyrillic, Greek, rn for m) are high", () => {
    expect(rules("@modelcontextprotocol/server-fi1esystem")).toEqual([`typosquat.homoglyph high ${FS}`]);
    expect(rules("@modelcontextprotocol/server-filesystеm")).toEqual([`typosquat.homoglyph high ${FS}`]); // Cyrillic е
    expect(rules("@modelcontextprotocol/server-rnemory")).toEqual([
      "typosquat.homoglyph high @modelcontextprotocol/server-memory",
    ]);
    expect(rules("tavi1y-mcp")).toEqual(["typosquat.homoglyph high tavily-mcp"]);
    expect(rules("@modelcontextprotocol/server-ｍemory")).toEqual([
      "typosquat.homoglyph high @modelcontextprotocol/server-memory",
    ]);
    const [m] = check("@modelcontextprotocol/server-filesystеm");
    expect(m?.explanation).toContain(`resembles "${FS}"`);
    expect(m?.explanation).toContain("U+0435");
    expect(m?.explanation).toContain("well-known");
  });

  it("scope swaps: a look-alike scope is high, another or no scope medium", () => {
    expect(rules("@modelcontext-protocol/server-filesystem")).toEqual([`typosquat.scope-swap high ${FS}`]);
    expect(rules("@rnodelcontextprotocol/server-filesystem")).toEqual([`typosquat.scope-swap high ${FS}`]);
    expect(rules("@p1aywright/mcp")).toEqual(["typosquat.scope-swap high @playwright/mcp"]);
    expect(rules("server-filesystem")).toEqual([`typosquat.scope-swap medium ${FS}`]);
    expect(rules("@evil/server-filesystem")).toEqual([`typosquat.scope-swap medium ${FS}`]);
    expect(rules("@acme/airtable-mcp-server")).toEqual(["typosquat.scope-swap medium airtable-mcp-server"]);
    // A generic name ("mcp") under a scope that resembles a known one.
    expect(rules("@playwrigth/mcp")).toEqual(["typosquat.scope-swap medium @playwright/mcp"]);
    expect(check("server-filesystem")[0]?.explanation).toContain("without a scope");
  });

  it("separator tricks are medium", () => {
    expect(rules("@modelcontextprotocol/server_filesystem")).toEqual([`typosquat.separator medium ${FS}`]);
    expect(rules("@modelcontextprotocol/server.file-system")).toEqual([`typosquat.separator medium ${FS}`]);
    expect(rules("tavilymcp")).toEqual(["typosquat.separator medium tavily-mcp"]);
  });

  it("edit distance up to 2 (transpositions count once) is medium", () => {
    expect(rules("@modelcontextprotocol/server-filesytem")).toEqual([`typosquat.edit-distance medium ${FS}`]);
    expect(rules("@modelcontextprotocol/server-fliesystem")).toEqual([
      `typosquat.edit-distance medium ${FS}`,
    ]);
    expect(rules("@modelcontextprotocol/server-filesystme")).toEqual([
      `typosquat.edit-distance medium ${FS}`,
    ]);
    expect(rules("@modelcontextprotocol/server-filesystems")).toEqual([
      `typosquat.edit-distance medium ${FS}`,
    ]);
    expect(rules("mcp-server-kubernets")).toEqual(["typosquat.edit-distance medium mcp-server-kubernetes"]);
    expect(rules("@evil/server-filesytem")).toEqual([`typosquat.edit-distance medium ${FS}`]);
    expect(check("@modelcontextprotocol/server-filesytem")[0]?.distance).toBe(1);
    expect(check("@modelcontextprotocol/server-fllesystm")[0]?.distance).toBe(2);
  });

  it("names approved in a previous catalog count as known", () => {
    const approved: LookAlikeReference[] = [
      { kind: "package", name: "@acme/records-lookup", source: "approved", server: "records" },
    ];
    expect(rules("@acme/records-lookpu", approved)).toEqual([
      "typosquat.edit-distance medium @acme/records-lookup",
    ]);
    expect(rules("@acrne/records-lookup", approved)).toEqual([
      "typosquat.scope-swap high @acme/records-lookup",
    ]);
    const [m] = check("@acme/records-look-up", [...refs, ...approved]);
    expect(m?.ruleId).toBe("typosquat.separator");
    expect(m?.approvedAs).toEqual(["records"]);
    expect(m?.explanation).toContain('approved in the previous catalog for server "records"');
  });

  it("hosts of a previous catalog: homoglyph (IDN too), separator, edit distance", () => {
    const previous = {
      servers: [
        {
          name: "remote",
          identity: { transport: "streamable-http" as const, url: "https://mcp.example.com/mcp" },
        },
      ],
    };
    const hostRefs = approvedReferences(previous);
    expect(hostRefs).toEqual([
      { kind: "host", name: "mcp.example.com", source: "approved", server: "remote" },
    ]);
    const host = (url: string) => {
      const s = identitySubject({ transport: "streamable-http", url });
      return s ? findLookAlikes(s, hostRefs).map((m) => `${m.ruleId} ${m.severity}`) : null;
    };
    expect(host("https://mcp.examp1e.com/mcp")).toEqual(["typosquat.homoglyph high"]);
    // Cyrillic е, which the URL parser turns into punycode.
    expect(host("https://mcp.\u0435xample.com/mcp")).toEqual(["typosquat.homoglyph high"]);
    expect(host("https://mcp-example.com/mcp")).toEqual(["typosquat.separator medium"]);
    expect(host("https://mcp.exmaple.com/mcp")).toEqual(["typosquat.edit-distance medium"]);
    expect(host("https://mcp.example.co/mcp")).toEqual(["typosquat.edit-distance medium"]);
    expect(host("https://mcp.example.com/other")).toEqual([]);
    expect(host("https://mcp.linear.app/mcp")).toEqual([]);
    expect(host("http://127.0.0.1:8080/mcp")).toBeNull();
  });
});

describe("true negatives", () => {
  it("the well-known names themselves are never reported", () => {
    for (const name of wellKnownPackages().packages) expect(check(name), name).toEqual([]);
  });

  it("unrelated names are not reported", () => {
    for (const name of [
      "lodash",
      "raw-server",
      "drifting-server",
      "@acme/inventory-mcp",
      "@modelcontextprotocol/server-git",
      "@modelcontextprotocol/server-time",
      "mcp-server-sqlite",
      "@acme/mcp",
      "@acme/mcp-server",
      "mcp-server",
      "mcp",
    ])
      expect(check(name), name).toEqual([]);
  });

  it("short names are not reported for a few edits", () => {
    const short: LookAlikeReference[] = [
      { kind: "package", name: "a", source: "approved", server: "a" },
      { kind: "package", name: "mcp-server-git", source: "approved", server: "git" },
      { kind: "package", name: "@acme/db", source: "approved", server: "db" },
    ];
    expect(check("b", short)).toEqual([]);
    expect(check("ab", short)).toEqual([]);
    expect(check("mcp-server-gif", short)).toEqual([]);
    expect(check("@acme/dc", short)).toEqual([]);
    expect(check("@eslint/mcq")).toEqual([]);
  });

  it("a name equal to an approved one is not compared with itself", () => {
    const approved: LookAlikeReference[] = [
      { kind: "package", name: "@acme/records-lookup", source: "approved", server: "records" },
    ];
    expect(check("@acme/records-lookup", approved)).toEqual([]);
  });
});

// ---- snapshot level -----------------------------------------------------------------------------

describe("snapshot", () => {
  let dir: string;

  /** A package directory holding the drifting-server fixture under a chosen package name. */
  async function serverPackage(sub: string, name: string): Promise<UpstreamSpec> {
    const pkg = join(dir, sub);
    await mkdir(pkg);
    await chmod(pkg, 0o755);
    await writeFile(join(pkg, "package.json"), JSON.stringify({ name, version: "1.0.0", type: "module" }));
    await copyFile(join(here, "fixtures", "drifting-server.mjs"), join(pkg, "server.mjs"));
    return { name: sub, transport: "stdio", command: process.execPath, args: [join(pkg, "server.mjs")] };
  }

  const typosquats = (findings: readonly CatalogFinding[]) =>
    findings.filter((f) => f.ruleId.startsWith("typosquat."));

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "cmcp-typosquat-"));
    await chmod(dir, 0o755);
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("reports a server whose package name looks like a well-known one", async () => {
    const up = await serverPackage("files", "@modelcontextprotocol/server-fi1esystem");
    const honest = await serverPackage("honest", "@acme/inventory-lookup");
    const r = await snapshotCatalog({ upstreams: [up, honest] });
    expect(r.failures).toEqual([]);
    expect(r.catalog.servers.map((s) => s.name)).toEqual(["files", "honest"]);
    const found = typosquats(r.findings);
    expect(found).toHaveLength(1);
    expect(found[0]).toMatchObject({
      server: "files",
      tool: null,
      ruleId: "typosquat.homoglyph",
      severity: "high",
      path: "$.identity.package.name",
      span: { text: "@modelcontextprotocol/server-fi1esystem" },
      detail: `resembles ${FS}`,
    });
    expect(found[0]?.explanation).toContain(`"${FS}"`);
  });

  it("cmcp catalog snapshot --previous compares with the approved catalog's names", async () => {
    const first = await serverPackage("records", "@acme/records-lookup");
    const r = await snapshotCatalog({ upstreams: [first] });
    expect(typosquats(r.findings)).toEqual([]);
    const approved: Catalog = approveCatalog(r.catalog, {
      reviewer: "test",
      scannerRulesVersion: r.rulesVersion,
      acceptedHighFindings: 0,
    });
    await writeFile(join(dir, "previous.json"), JSON.stringify(approved));

    const swapped = await serverPackage("records2", "@acme/records-lookpu");
    await writeFile(
      join(dir, "gateway.json"),
      JSON.stringify({ upstreams: [{ name: "records", command: swapped.command, args: swapped.args }] }),
    );
    const out = vi.spyOn(process.stdout, "write").mockImplementation(() => true);
    const err = vi.spyOn(process.stderr, "write").mockImplementation(() => true);
    let without: number;
    let withPrevious: number;
    let printed: string;
    try {
      without = await runCatalogSnapshot({ config: join(dir, "gateway.json"), out: join(dir, "a.json") });
      withPrevious = await runCatalogSnapshot({
        config: join(dir, "gateway.json"),
        out: join(dir, "b.json"),
        previous: join(dir, "previous.json"),
      });
      printed = out.mock.calls.map((c) => String(c[0])).join("");
    } finally {
      out.mockRestore();
      err.mockRestore();
    }
    expect(without).toBe(0);
    expect(withPrevious).toBe(0);
    const read = async (f: string) =>
      (JSON.parse(await readFile(join(dir, f), "utf8")) as { findings: CatalogFinding[] }).findings;
    expect(typosquats(await read("a.findings.json"))).toEqual([]);
    const found = typosquats(await read("b.findings.json"));
    expect(found.map((f) => [f.server, f.ruleId, f.severity, f.detail])).toEqual([
      ["records", "typosquat.edit-distance", "medium", "resembles @acme/records-lookup"],
    ]);
    expect(found[0]?.explanation).toContain('approved in the previous catalog for server "records"');
    expect(printed).toContain("typosquat.edit-distance");

    // An unreadable previous catalog is bad input (exit 2).
    const e2 = vi.spyOn(process.stderr, "write").mockImplementation(() => true);
    try {
      expect(
        await runCatalogSnapshot({
          config: join(dir, "gateway.json"),
          out: join(dir, "c.json"),
          previous: join(dir, "missing.json"),
        }),
      ).toBe(2);
      expect(e2.mock.calls.map((c) => String(c[0])).join("")).toContain("--previous");
    } finally {
      e2.mockRestore();
    }
  });
});
