import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { canonicalize } from "../../artifacts/canonical-json.js";
import { isCmcpError } from "../../artifacts/errors.js";
import { sha256Hex } from "../../artifacts/hash.js";
import type { DecisionOutcome } from "../../artifacts/receipt.js";
import { OUTCOME_PRECEDENCE, parseRedactSpec } from "../../governor/cedar-annotations.js";
import {
  BUNDLE_LIMITS,
  bundleHash,
  compileBundle,
  defaultSchemaPath,
  loadPolicyBundle,
  readBundleFiles,
  readSchema,
  shippedBundlePath,
  type BundleFile,
  type SchemaSource,
} from "../../governor/cedar-bundle.js";
import { CedarEngine, type CedarEngineOptions, type CedarRequest } from "../../governor/cedar-policy.js";
import { readTestCases, runPolicyTests } from "../../governor/cedar-test-cases.js";
import type { Decider } from "../../governor/decider.js";

const schema: SchemaSource = await readSchema();
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "cmcp-cedar-"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function file(path: string, text: string): BundleFile {
  const bytes = new TextEncoder().encode(text);
  return { path, size: bytes.length, sha256: sha256Hex(bytes), bytes };
}

/** A bundle compiled from in-memory files (the same path as from disk after reading). */
function bundle(files: Record<string, string>) {
  return compileBundle(
    "mem",
    Object.entries(files).map(([p, t]) => file(p, t)),
    schema,
  );
}

function engine(files: Record<string, string>, options: CedarEngineOptions = {}) {
  return new CedarEngine(bundle(files), options);
}

/** Asserts the thrown CmcpError's code and that its message matches every pattern. */
function refuses(fn: () => unknown, code: string, ...patterns: RegExp[]): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(isCmcpError(err), `expected CmcpError ${code}, got ${String(err)}`).toBe(true);
  const e = err as { code: string; message: string };
  expect(e.code).toBe(code);
  for (const p of patterns) expect(e.message).toMatch(p);
}

const CALL = (tool: string, extra: Partial<CedarRequest> = {}): CedarRequest => ({
  agent: "alice",
  session: "s1",
  server: "filesystem",
  method: "tools/call",
  tool,
  ...extra,
  context: { time: "2026-01-15T12:00:00Z", ...extra.context },
});

describe("shipped bundles", () => {
  for (const name of ["baseline-strict", "demo-advisory"]) {
    it(`${name}: loads, validates without warnings, and its decision table passes (sliced and unsliced)`, async () => {
      const e = await CedarEngine.load(shippedBundlePath(name));
      expect(e.bundle.warnings).toEqual([]);
      expect(e.bundleHash).toMatch(/^[0-9a-f]{64}$/);
      expect(e.version).toBe(`cedar-${e.bundleHash.slice(0, 12)}`);
      const cases = readTestCases(e.bundle);
      expect(cases.length).toBeGreaterThan(30);
      const report = runPolicyTests(e, cases, new CedarEngine(e.bundle, { slice: false }));
      const failed = report.results
        .filter((r) => !r.ok)
        .map((r) => `${r.case.name}: ${r.failures.join("; ")}`);
      expect(failed).toEqual([]);
      // The schema-checked mode decides the same.
      const checked = runPolicyTests(new CedarEngine(e.bundle, { validateRequests: true }), cases);
      expect(checked.failed).toBe(0);
    });
  }

  it("baseline-strict allows exactly the read-only tools of the demo servers", async () => {
    const e = await CedarEngine.load(shippedBundlePath("baseline-strict"));
    // The tool names are those the installed reference servers register (checked in their dist).
    const dist = (pkg: string, f: string) =>
      readFile(new URL(`../../node_modules/@modelcontextprotocol/${pkg}/dist/${f}`, import.meta.url), "utf8");
    const fsSrc = await dist("server-filesystem", "index.js");
    const memSrc = await dist("server-memory", "index.js");
    for (const [server, src] of [
      ["filesystem", fsSrc],
      ["memory", memSrc],
    ] as const) {
      const tools = [...src.matchAll(/registerTool\("([^"]+)",[\s\S]*?readOnlyHint:\s*(true|false)/g)];
      expect(tools.length).toBeGreaterThan(5);
      for (const [, tool, readOnly] of tools) {
        const d = e.evaluate(CALL(tool!, { server }));
        expect(`${server}/${tool} ${d.outcome}`).toBe(
          `${server}/${tool} ${readOnly === "true" ? "allow" : "deny"}`,
        );
      }
    }
  });
});

describe("policy IDs", () => {
  const A = `@id("read") permit (principal, action == Cmcp::Action::"tools/call", resource == Cmcp::Tool::"filesystem/read_file");`;
  const B = `@id("write") forbid (principal, action == Cmcp::Action::"tools/call", resource == Cmcp::Tool::"filesystem/write_file");`;

  it("are <file stem>/<@id> and survive adding policies and files", () => {
    const before = engine({ "base.cedar": `${A}\n${B}` });
    expect(before.bundle.policies.map((p) => p.id)).toEqual(["base/read", "base/write"]);
    // A new policy placed first in the file and a new file rename nothing.
    const after = engine({
      "base.cedar": `@id("aaa") permit (principal, action == Cmcp::Action::"ping", resource);\n${A}\n${B}`,
      "aaa.cedar": `@id("read") permit (principal, action == Cmcp::Action::"tools/list", resource);`,
    });
    expect(after.bundle.policies.map((p) => p.id)).toEqual([
      "aaa/read",
      "base/aaa",
      "base/read",
      "base/write",
    ]);
    expect(after.evaluate(CALL("read_file")).policy_ids).toEqual(
      before.evaluate(CALL("read_file")).policy_ids,
    );
    expect(after.evaluate(CALL("read_file")).policy_ids).toEqual(["base/read"]);
  });

  it("records the file and line of each policy", () => {
    const b = bundle({ "x.cedar": `// comment\n\n${A}\n\n${B}\n` });
    expect(b.policies.map((p) => `${p.id} ${p.file}:${p.line}`)).toEqual([
      "x/read x.cedar:3",
      "x/write x.cedar:5",
    ]);
  });

  it("refuses a policy without @id, naming the file and line", () => {
    refuses(
      () => bundle({ "ok.cedar": A, "bad.cedar": `${B}\n\npermit (principal, action, resource);` }),
      "policy.id",
      /bad\.cedar:3/,
      /no @id/,
    );
  });

  it("refuses a duplicate @id, naming both places", () => {
    refuses(
      () => bundle({ "dup.cedar": `${A}\n${A.replace("read_file", "read_text_file")}` }),
      "policy.id",
      /duplicate policy ID dup\/read/,
      /dup\.cedar:1/,
      /dup\.cedar:2/,
    );
  });

  it("refuses an @id or file stem that is not a plain name", () => {
    refuses(() => bundle({ "x.cedar": A.replace('@id("read")', '@id("a/b")') }), "policy.id", /x\.cedar:1/);
    refuses(() => bundle({ "x.cedar": A.replace('@id("read")', "@id") }), "policy.id", /@id needs a value/);
    refuses(
      () => bundle({ "x.cedar": A.replace('@id("read")', '@id("read") @reason') }),
      "policy.annotation",
      /@reason needs a value/,
    );
    refuses(() => bundle({ "my file.cedar": A }), "policy.bundle", /my file\.cedar/);
  });

  it("refuses templates and unparsable files, naming the file and line", () => {
    refuses(
      () => bundle({ "t.cedar": `${A}\n@id("t") permit (principal == ?principal, action, resource);` }),
      "policy.parse",
      /t\.cedar:2/,
      /templates/,
    );
    refuses(
      () => bundle({ "p.cedar": `${A}\n\n@id("x") permit (principal, action, resource) when { 1 + };` }),
      "policy.parse",
      /p\.cedar: line 3/,
    );
  });
});

describe("schema validation at load", () => {
  it("refuses a bundle with a schema error, naming the policy ID, file, line and error", () => {
    refuses(
      () =>
        bundle({
          "good.cedar": `@id("ok") permit (principal, action, resource);`,
          "typo.cedar": `\n@id("sensitive") forbid (principal, action, resource) when { context.sensitivty > 2 };`,
        }),
      "policy.validation",
      /policy typo\/sensitive \(typo\.cedar:2\)/,
      /sensitivty/,
    );
  });

  it("refuses wrong types and unknown entity types or actions", () => {
    refuses(
      () =>
        bundle({ "a.cedar": `@id("x") permit (principal, action, resource) when { context.drift > 1 };` }),
      "policy.validation",
      /a\/x/,
    );
    refuses(
      () =>
        bundle({
          "a.cedar": `@id("x") permit (principal, action == Cmcp::Action::"tools/delete", resource);`,
        }),
      "policy.validation",
      /a\/x/,
    );
    refuses(
      () => bundle({ "a.cedar": `@id("x") permit (principal in Cmcp::Team::"t", action, resource);` }),
      "policy.validation",
      /a\/x/,
    );
  });

  it("reports an impossible policy as a warning without refusing", () => {
    const b = bundle({
      "w.cedar": `@id("never") permit (principal, action == Cmcp::Action::"tools/list", resource == Cmcp::Tool::"x/y");`,
    });
    expect(b.warnings.join("\n")).toMatch(/w\/never/);
  });

  it("refuses an unreadable or invalid schema", async () => {
    const bad = join(dir, "bad.cedarschema");
    await writeFile(bad, "namespace Cmcp { entity ; }");
    await expect(
      loadPolicyBundle(shippedBundlePath("demo-advisory"), { schemaPath: bad }),
    ).rejects.toMatchObject({
      code: "policy.schema",
    });
    await expect(
      loadPolicyBundle(shippedBundlePath("demo-advisory"), { schemaPath: join(dir, "none") }),
    ).rejects.toMatchObject({ code: "policy.read" });
  });
});

describe("annotation vocabulary", () => {
  const P = `permit (principal, action, resource);`;
  it.each([
    [`@id("x") @severity("high") ${P}`, /unknown annotation @severity/],
    [`@id("x") @decision("deny") ${P}`, /@decision\("deny"\) is not one of/],
    [`@id("x") @decision("allow") ${P}`, /is not one of/],
    [`@id("x") @decision("redact") ${P}`, /needs @redact/],
    [`@id("x") @decision("advisory") @redact("class:pii") ${P}`, /implies @decision\("redact"\)/],
    [`@id("x") @redact("everything") ${P}`, /@redact target "everything"/],
    [`@id("x") @redact("class:PII") ${P}`, /@redact target/],
    [`@id("x") @redact("arg:password") ${P}`, /@redact target/],
    [`@id("x") @redact("arg:/a~2b") ${P}`, /@redact target/],
    [
      `@id("x") @decision("require_approval") forbid (principal, action, resource);`,
      /a forbid always denies/,
    ],
    [`@id("x") @redact("class:pii") forbid (principal, action, resource);`, /a forbid always denies/],
    [`@id("x") @reason("") ${P}`, /@reason must be/],
    [`@id("x") @reason("a\\nb") ${P}`, /@reason must be/],
  ])("refuses %s", (text, message) => {
    refuses(() => bundle({ "v.cedar": text }), "policy.annotation", message, /v\.cedar:1/);
  });

  it("parses redaction targets canonically", () => {
    expect(parseRedactSpec(" result:/content/0 , class:pii,arg:/password, class:pii, arg:")).toEqual([
      "arg:",
      "arg:/password",
      "class:pii",
      "result:/content/0",
    ]);
    const b = bundle({ "r.cedar": `@id("x") @redact("class:pii, arg:/a~1b") ${P}` });
    expect(b.policies[0]).toMatchObject({ outcome: "redact", redact: ["arg:/a~1b", "class:pii"] });
  });

  // One policy per outcome, each applying when its marker is among the argument classes.
  const marker = (o: DecisionOutcome) => `m-${o}`;
  const precedence = engine({
    "p.cedar": [
      `@id("deny") @reason("r-deny") forbid (principal, action, resource) when { context.arg_classes.contains("${marker("deny")}") };`,
      `@id("require_approval") @reason("r-approval") @decision("require_approval") permit (principal, action, resource) when { context.arg_classes.contains("${marker("require_approval")}") };`,
      `@id("redact") @redact("class:pii") permit (principal, action, resource) when { context.arg_classes.contains("${marker("redact")}") };`,
      `@id("redact2") @redact("arg:/secret") permit (principal, action, resource) when { context.arg_classes.contains("${marker("redact")}") };`,
      `@id("advisory") @decision("advisory") permit (principal, action, resource) when { context.arg_classes.contains("${marker("advisory")}") };`,
      `@id("allow") permit (principal, action, resource) when { context.arg_classes.contains("${marker("allow")}") };`,
    ].join("\n"),
  });

  it("precedence: deny > require_approval > redact > advisory > allow, for every combination", () => {
    expect(OUTCOME_PRECEDENCE).toEqual(["deny", "require_approval", "redact", "advisory", "allow"]);
    const all = [...OUTCOME_PRECEDENCE];
    for (let mask = 0; mask < 1 << all.length; mask++) {
      const present = all.filter((_, i) => mask & (1 << i));
      const d = precedence.evaluate(CALL("read_file", { context: { arg_classes: present.map(marker) } }));
      // The strongest present wins; none present is default deny.
      const want = present[0] ?? "deny";
      expect(`${present.join("+") || "none"} -> ${d.outcome}`).toBe(
        `${present.join("+") || "none"} -> ${want}`,
      );
      if (present.includes("deny")) expect(d.policy_ids).toEqual(["p/deny"]);
      else {
        const ids = present.flatMap((o) => (o === "redact" ? ["p/redact", "p/redact2"] : [`p/${o}`])).sort();
        expect(d.policy_ids).toEqual(ids);
      }
      // Redaction targets travel with any non-deny outcome whose determining policies carry them.
      const redacts = present.includes("redact") && !present.includes("deny");
      expect(d.redact).toEqual(redacts ? ["arg:/secret", "class:pii"] : []);
      if (present.length === 0) expect(d.reasons).toEqual(["no policy permits this request (default deny)"]);
    }
  });

  it("orders reasons with the policies that set the outcome first", () => {
    const d = precedence.evaluate(
      CALL("read_file", { context: { arg_classes: [marker("allow"), marker("require_approval")] } }),
    );
    expect(d.reasons).toEqual(["p/require_approval: r-approval", "p/allow: permitted"]);
    expect(d.determining.map((x) => [x.id, x.effect, x.outcome])).toEqual([
      ["p/allow", "permit", "allow"],
      ["p/require_approval", "permit", "require_approval"],
    ]);
  });
});

describe("evaluation", () => {
  it("default deny with no policies at all", () => {
    const e = engine({ "README.md": "no policies yet" });
    const d = e.evaluate(CALL("read_file"));
    expect(d).toMatchObject({ outcome: "deny", policy_ids: [], errors: [] });
  });

  it("fails closed on an evaluation error, even in a forbid Cedar itself would skip", () => {
    const e = engine({
      "e.cedar": [
        `@id("all") permit (principal, action, resource);`,
        // Overflows (and so errors) once the session has made 2 calls or more.
        `@id("overflow") forbid (principal, action == Cmcp::Action::"tools/call", resource) when { context.session_calls * 4611686018427387904 > 0 };`,
      ].join("\n"),
    });
    expect(e.evaluate(CALL("read_file", { context: { session_calls: 0 } })).outcome).toBe("allow");
    const d = e.evaluate(CALL("read_file", { context: { session_calls: 2 } }));
    expect(d.outcome).toBe("deny");
    expect(d.policy_ids).toEqual(["e/overflow"]);
    expect(d.errors[0]).toMatch(/evaluation error in e\/overflow: .*overflow/);
    expect(d.reasons).toEqual(d.errors);
    // Policies that do not apply to the request never run, so cannot error.
    expect(e.evaluate({ ...CALL("x"), method: "tools/list", context: { session_calls: 2 } }).outcome).toBe(
      "allow",
    );
  });

  it("denies requests it cannot build, with the reason", () => {
    const e = engine({ "a.cedar": `@id("all") permit (principal, action, resource);` });
    const bad: [Partial<CedarRequest>, RegExp][] = [
      [{ server: "a/b" }, /server/],
      [{ server: "" }, /server/],
      [{ tool: undefined }, /tools\/call needs a tool name/],
      [{ agent: "" }, /agent/],
      [{ context: { time: "yesterday" } }, /time/],
      [{ context: { time: "2026-01-15T12:00:00.123456Z" } }, /time/],
      [{ context: { time: new Date(Number.NaN) } }, /time/],
      // Shaped right but refused by Cedar's datetime(): invalid whether or not a policy reads the time.
      [{ context: { time: "2026-02-30T12:00:00Z" } }, /time/],
      [{ context: { time: "2025-02-29" } }, /time/],
      [{ context: { time: "2026-01-15T24:00:00Z" } }, /time/],
      [{ context: { time: "2026-01-15T12:00:60Z" } }, /time/],
      [{ context: { time: "2026-01-15T12:00:00+2400" } }, /time/],
      [{ context: { sensitivity: 4 } }, /sensitivity/],
      [{ context: { sensitivity: 1.5 } }, /sensitivity/],
      [{ context: { session_calls: -1 } }, /session_calls/],
      [{ context: { drift: "weird" as never } }, /drift/],
      [{ context: { arg_classes: [""] } }, /arg_classes/],
      [{ context: { flow_sources: Array.from({ length: 65 }, (_, i) => `s${i}`) } }, /flow_sources/],
      [{ workflows: ["x".repeat(300)] }, /workflows/],
      [{ action: "delegate" }, /delegate needs delegate_to/],
    ];
    for (const [extra, why] of bad) {
      const req = { ...CALL("read_file"), ...extra } as CedarRequest;
      if ("tool" in extra && extra.tool === undefined) delete req.tool;
      const d = e.evaluate(req);
      expect(d.outcome, JSON.stringify(extra)).toBe("deny");
      expect(d.errors.join(), JSON.stringify(extra)).toMatch(why);
      expect(d.errors[0]).toMatch(/^invalid request: /);
    }
  });

  it("maps MCP methods to actions and resources", () => {
    const e = engine({
      "m.cedar": [
        `@id("tool") permit (principal, action == Cmcp::Action::"tools/call", resource == Cmcp::Tool::"fs/read");`,
        `@id("res") permit (principal, action == Cmcp::Action::"resources/read", resource == Cmcp::Resource::"fs/file:///a b");`,
        `@id("prompt") permit (principal, action == Cmcp::Action::"prompts/get", resource == Cmcp::Prompt::"fs/p");`,
        `@id("complete-prompt") permit (principal, action == Cmcp::Action::"completion/complete", resource == Cmcp::Prompt::"fs/p");`,
        `@id("discovery") permit (principal, action in Cmcp::Action::"discovery", resource == Cmcp::Server::"fs");`,
        `@id("tasks") permit (principal, action in Cmcp::Action::"tasks", resource in Cmcp::Server::"fs");`,
        `@id("other") permit (principal, action == Cmcp::Action::"other", resource) when { context.method == "vendor/x" };`,
        `@id("mcp") @decision("advisory") permit (principal, action in Cmcp::Action::"mcp", resource in Cmcp::Server::"fs") when { context.method == "logging/setLevel" };`,
      ].join("\n"),
    });
    const base = { agent: "a", session: "s", server: "fs" };
    const check = (req: Partial<CedarRequest>, action: string, ids: string[]) => {
      const d = e.evaluate({ ...base, ...req } as CedarRequest);
      expect([d.action, d.policy_ids], JSON.stringify(req)).toEqual([action, ids]);
    };
    check({ method: "tools/call", tool: "read" }, "tools/call", ["m/tool"]);
    check({ method: "tools/call", tool: "write" }, "tools/call", []);
    check({ method: "resources/read", resource: "file:///a b" }, "resources/read", ["m/res"]);
    check({ method: "prompts/get", prompt: "p" }, "prompts/get", ["m/prompt"]);
    check({ method: "completion/complete", prompt: "p" }, "completion/complete", ["m/complete-prompt"]);
    check({ method: "completion/complete" }, "completion/complete", []);
    for (const m of ["tools/list", "resources/list", "resources/templates/list", "prompts/list"])
      check({ method: m }, m, ["m/discovery"]);
    check({ method: "tools/list", server: "other" }, "tools/list", []);
    check({ method: "tasks/result" }, "tasks/result", ["m/tasks"]);
    check({ method: "vendor/x" }, "other", ["m/other"]);
    check({ method: "vendor/y" }, "other", []);
    check({ method: "logging/setLevel" }, "logging/setLevel", ["m/mcp"]);
  });

  it("scopes by workflow and agent through the entities it passes", () => {
    const e = engine({
      "w.cedar": [
        `@id("support") permit (principal in Cmcp::Workflow::"support", action == Cmcp::Action::"tools/call", resource in Cmcp::Server::"filesystem");`,
        `@id("bob") permit (principal == Cmcp::Agent::"bob", action, resource);`,
        `@id("approvers") permit (principal in Cmcp::Workflow::"release", action == Cmcp::Action::"approve", resource in Cmcp::Server::"filesystem");`,
        `@id("delegate") permit (principal in Cmcp::Workflow::"support", action == Cmcp::Action::"delegate", resource == Cmcp::Agent::"helper");`,
      ].join("\n"),
    });
    expect(e.evaluate(CALL("read_file")).outcome).toBe("deny");
    expect(e.evaluate(CALL("read_file", { workflows: ["ops", "support"] })).policy_ids).toEqual([
      "w/support",
    ]);
    expect(e.evaluate(CALL("read_file", { agent: "bob" })).policy_ids).toEqual(["w/bob"]);
    const approve = { ...CALL("write_file"), action: "approve" as const, method: "cmcp/approve" };
    expect(e.evaluate(approve).outcome).toBe("deny");
    expect(e.evaluate({ ...approve, workflows: ["release"] }).policy_ids).toEqual(["w/approvers"]);
    const delegate = {
      ...CALL("x"),
      action: "delegate" as const,
      method: "cmcp/delegate",
      delegate_to: "helper",
    };
    expect(e.evaluate({ ...delegate, workflows: ["support"] }).policy_ids).toEqual(["w/delegate"]);
    expect(e.evaluate({ ...delegate, workflows: ["support"], delegate_to: "other" }).outcome).toBe("deny");
  });

  it("reads time, sensitivity, flow sources, drift and call counts from the context", () => {
    const e = engine({
      "c.cedar": [
        `@id("all") permit (principal, action, resource);`,
        `@id("night") @decision("advisory") permit (principal, action, resource) when { context.time.toTime() >= duration("22h") };`,
        `@id("after-2027") forbid (principal, action, resource) when { context.time >= datetime("2027-01-01") };`,
        `@id("secret") @decision("require_approval") permit (principal, action, resource) when { context.sensitivity >= 3 && context.flow_sources.contains("untrusted") };`,
        `@id("drift") forbid (principal, action, resource) when { context.drift == "suspect" };`,
        `@id("busy") @redact("result:") permit (principal, action, resource) when { context.session_calls > 10 };`,
      ].join("\n"),
    });
    const o = (ctx: CedarRequest["context"]) => e.evaluate(CALL("x", { context: ctx })).outcome;
    expect(o({})).toBe("allow");
    expect(o({ time: "2026-01-15T22:30:00Z" })).toBe("advisory");
    expect(o({ time: new Date("2026-01-15T23:00:00Z") })).toBe("advisory");
    expect(o({ time: "2027-03-01T10:00:00Z" })).toBe("deny");
    expect(o({ time: "2024-02-29T12:00:00.250+2359" })).toBe("allow");
    expect(o({ sensitivity: 3 })).toBe("allow");
    expect(o({ sensitivity: 3, flow_sources: ["untrusted"] })).toBe("require_approval");
    expect(o({ drift: "suspect" })).toBe("deny");
    expect(o({ session_calls: 11 })).toBe("redact");
    // Without a time the engine's clock decides.
    const late = new CedarEngine(e.bundle, { now: () => new Date("2026-06-01T23:59:00Z") });
    expect(late.evaluate({ ...CALL("x"), context: {} }).outcome).toBe("advisory");
  });

  it("denies an action the schema in use does not define", () => {
    const text = schema.text.replace('action "initialize", "ping" in', 'action "initialize" in');
    expect(text).not.toBe(schema.text);
    const custom = { path: "custom.cedarschema", text, hash: sha256Hex(new TextEncoder().encode(text)) };
    const b = compileBundle(
      "mem",
      [file("a.cedar", `@id("all") permit (principal, action, resource);`)],
      custom,
    );
    for (const o of [{}, { slice: false }, { validateRequests: true }]) {
      const e = new CedarEngine(b, o);
      expect(e.schemaHash).toBe(custom.hash);
      expect(e.evaluate({ ...CALL("x"), method: "initialize" }).outcome).toBe("allow");
      const d = e.evaluate({ ...CALL("x"), method: "ping" });
      expect(d).toMatchObject({ outcome: "deny", errors: ["action ping is not in the schema"] });
    }
  });

  it("stands behind the Decider interface with the fixed policy's inputs", () => {
    const d: Decider = engine({ "a.cedar": `@id("all") permit (principal, action, resource);` });
    expect(
      d.decide({ session: "s", agent: "a", server: "fs", method: "tools/call", tool: "t" }),
    ).toMatchObject({
      outcome: "allow",
      policy_ids: ["a/all"],
    });
    expect(d.bundleHash).toMatch(/^[0-9a-f]{64}$/);
  });

  it("decides the same stateful and stateless, schema-checked or not", () => {
    const b = bundle({
      "a.cedar": [
        `@id("all") permit (principal, action in Cmcp::Action::"mcp", resource);`,
        `@id("w") forbid (principal in Cmcp::Workflow::"w", action, resource in Cmcp::Server::"fs") when { context.time.toTime() > duration("20h") };`,
      ].join("\n"),
    });
    const reqs = [
      CALL("t", { server: "fs" }),
      CALL("t", { server: "fs", workflows: ["w"], context: { time: "2026-01-15T21:00:00Z" } }),
      { ...CALL("t"), method: "ping" },
    ];
    const designs = [{}, { validateRequests: true }, { evaluator: "stateless" as const }, { slice: false }];
    const results = designs.map((o) => reqs.map((r) => new CedarEngine(b, o).evaluate(r)));
    for (const r of results) {
      expect(r.map((d) => [d.outcome, d.policy_ids])).toEqual([
        ["allow", ["a/all"]],
        ["deny", ["a/w"]],
        ["allow", ["a/all"]],
      ]);
    }
  });
});

describe("bundle files and hash", () => {
  async function makeBundle(name: string, files: Record<string, string>): Promise<string> {
    const root = join(dir, name);
    for (const [p, t] of Object.entries(files)) {
      await mkdir(join(root, p, ".."), { recursive: true });
      await writeFile(join(root, p), t);
    }
    return root;
  }
  const POLICY = `@id("all") permit (principal, action, resource);\n`;

  it("hashes the JCS listing of {path, sha256, size}, sorted by path", async () => {
    const root = await makeBundle("h1", {
      "b.cedar": POLICY,
      "a.cedar": POLICY,
      "tests/t.json": '{"cases":[]}',
    });
    const b = await loadPolicyBundle(root);
    const sha = (t: string) => sha256Hex(new TextEncoder().encode(t));
    const listing = [
      { path: "a.cedar", sha256: sha(POLICY), size: POLICY.length },
      { path: "b.cedar", sha256: sha(POLICY), size: POLICY.length },
      { path: "tests/t.json", sha256: sha('{"cases":[]}'), size: 12 },
    ];
    expect(b.listing).toEqual(listing);
    expect(b.hash).toBe(sha(canonicalize(listing)));
    expect(b.schema.hash).toBe(sha256Hex(await readFile(defaultSchemaPath())));
  });

  it("changes with any file's content or name, and ignores dotfiles", async () => {
    const root = await makeBundle("h2", { "a.cedar": POLICY, "notes.md": "x" });
    const h0 = bundleHash(await readBundleFiles(root));
    await writeFile(join(root, ".a.cedar.swp"), "junk");
    await mkdir(join(root, ".git"));
    await writeFile(join(root, ".git", "HEAD"), "ref");
    expect(bundleHash(await readBundleFiles(root))).toBe(h0);
    await writeFile(join(root, "notes.md"), "y");
    const h1 = bundleHash(await readBundleFiles(root));
    expect(h1).not.toBe(h0);
    await rm(join(root, "notes.md"));
    await writeFile(join(root, "notes2.md"), "y");
    expect(bundleHash(await readBundleFiles(root))).not.toBe(h1);
  });

  it("refuses symbolic links that escape the bundle or point at a directory; follows those inside", async () => {
    const root = await makeBundle("links", { "a.cedar": POLICY, "sub/shared.cedar.txt": POLICY });
    await writeFile(join(dir, "outside.cedar"), POLICY);
    await symlink(join(dir, "outside.cedar"), join(root, "escape.cedar"));
    await expect(readBundleFiles(root)).rejects.toMatchObject({
      code: "policy.bundle",
      message: expect.stringMatching(/escape\.cedar points outside the bundle/),
    });
    await rm(join(root, "escape.cedar"));
    await symlink(".", join(root, "sub", "loop"));
    await expect(readBundleFiles(root)).rejects.toMatchObject({
      message: expect.stringMatching(/points at a directory/),
    });
    await rm(join(root, "sub", "loop"));
    await symlink("sub/shared.cedar.txt", join(root, "b.cedar"));
    const b = await loadPolicyBundle(root);
    expect(b.policies.map((p) => p.id)).toEqual(["a/all", "b/all"]);
    await symlink("nowhere", join(root, "broken"));
    await expect(readBundleFiles(root)).rejects.toMatchObject({
      message: expect.stringMatching(/broken is broken/),
    });
  });

  it("enforces the file count, file size, total size and depth limits", async () => {
    const root = await makeBundle("limits", {
      "a.cedar": POLICY,
      "b.md": "x".repeat(100),
      "c.md": "y".repeat(100),
    });
    const limits = { ...BUNDLE_LIMITS };
    await expect(readBundleFiles(root, { ...limits, maxFiles: 2 })).rejects.toMatchObject({
      code: "policy.bundle",
      message: expect.stringMatching(/more than 2 files/),
    });
    await expect(readBundleFiles(root, { ...limits, maxFileBytes: 99 })).rejects.toMatchObject({
      message: expect.stringMatching(/b\.md is larger than 99 bytes/),
    });
    await expect(readBundleFiles(root, { ...limits, maxTotalBytes: 150 })).rejects.toMatchObject({
      message: expect.stringMatching(/more than 150 bytes/),
    });
    await makeBundle("limits", { "d1/d2/d3/x.md": "x" });
    await expect(readBundleFiles(root, { ...limits, maxDepth: 3 })).rejects.toMatchObject({
      message: expect.stringMatching(/nests deeper than 3/),
    });
    expect((await readBundleFiles(root)).length).toBe(4);
    await expect(loadPolicyBundle(root, { limits: { ...limits, maxPolicies: 0 } })).rejects.toMatchObject({
      message: expect.stringMatching(/more than 0 policies/),
    });
  });

  it("refuses .cedar files below the top level and unreadable directories", async () => {
    const root = await makeBundle("nested", { "a.cedar": POLICY, "more/b.cedar": POLICY });
    await expect(loadPolicyBundle(root)).rejects.toMatchObject({
      code: "policy.bundle",
      message: expect.stringMatching(/more\/b\.cedar: policy files must be at the top level/),
    });
    await expect(loadPolicyBundle(join(dir, "missing"))).rejects.toMatchObject({ code: "policy.read" });
    await expect(loadPolicyBundle(join(root, "a.cedar"))).rejects.toMatchObject({ code: "policy.read" });
  });

  it("refuses a policy file that is not UTF-8", () => {
    const bytes = new Uint8Array([0x40, 0xff, 0xfe]);
    refuses(
      () => compileBundle("mem", [{ path: "x.cedar", size: 3, sha256: sha256Hex(bytes), bytes }], schema),
      "policy.parse",
      /not valid UTF-8/,
    );
  });
});

describe("policy test files", () => {
  const ALL = `@id("all") permit (principal, action, resource);`;
  it("merges defaults, fixes the time, and reports mismatches", () => {
    const b = bundle({
      "a.cedar": `${ALL}\n@id("night") @decision("advisory") permit (principal, action, resource) when { context.time.toTime() >= duration("22h") };`,
      "tests/t.json": JSON.stringify({
        defaults: { agent: "a", server: "fs", method: "tools/call", context: { sensitivity: 1 } },
        cases: [
          { name: "noon", request: { tool: "t" }, expect: "allow", policies: ["a/all"] },
          {
            name: "night",
            request: { tool: "t", context: { time: "2026-01-15T23:00:00Z" } },
            expect: "advisory",
          },
          {
            name: "wrong",
            request: { tool: "t" },
            expect: "deny",
            policies: ["a/none"],
            redact: ["class:pii"],
          },
          { name: "invalid", request: { server: "a/b", tool: "t" }, expect: "deny" },
        ],
      }),
    });
    const cases = readTestCases(b);
    expect(cases[0]!.request).toMatchObject({
      session: "test-session",
      context: { time: "2026-01-15T12:00:00Z", sensitivity: 1 },
    });
    const r = runPolicyTests(new CedarEngine(b), cases);
    expect(r.results.map((x) => x.ok)).toEqual([true, true, false, false]);
    expect(r.results[2]!.failures).toEqual([
      "expected deny, got allow",
      "expected policies [a/none], got [a/all]",
      "expected redact [class:pii], got []",
    ]);
    expect(r.results[3]!.failures[0]).toMatch(/invalid request/);
  });

  it("refuses malformed test files, naming the file", () => {
    const load = (t: string) => () => readTestCases(bundle({ "a.cedar": ALL, "tests/x.json": t }));
    refuses(load("{"), "policy.tests", /tests\/x\.json/);
    refuses(load('{"cases":[],"cases":[]}'), "policy.tests", /duplicate/i);
    refuses(
      load('{"cases":[{"name":"n","request":{},"expect":"maybe"}]}'),
      "policy.tests",
      /tests\/x\.json: \/cases\/0\/expect/,
    );
    refuses(
      load('{"cases":[{"name":"n","request":{"tool":"t"},"expect":"deny"}]}'),
      "policy.tests",
      /case 1 \(n\) has no agent, method, server/,
    );
    refuses(
      load('{"cases":[{"name":"n","request":{"agent":"a","bogus":1},"expect":"deny"}]}'),
      "policy.tests",
      /additional/,
    );
  });
});
