/**
 * Cedar decision latency (p50/p99) and throughput with 10, 100 and 1,000
 * policies: stateful (preparsed) vs stateless cedar-wasm calls, sliced vs
 * unsliced bundles, and inline vs a piscina worker pool. The baseline, in
 * the same run, is the straightforward design: preparsed schema and policy
 * set, the whole bundle evaluated for every request. Ratios are baseline
 * time / candidate time (higher is faster); nothing here is a pass/fail gate.
 *   node --import tsx bench/cedar-decision.bench.ts
 *   CEDAR_BENCH_MS=500 CEDAR_BENCH_SIZES=100 ... for a quicker run
 */
import { availableParallelism } from "node:os";
import { sha256Hex } from "../artifacts/hash.js";
import { compileBundle, readSchema, type BundleFile } from "../governor/cedar-bundle.js";
import { CedarEngine, type CedarEngineOptions, type CedarRequest } from "../governor/cedar-policy.js";
import { CedarPool } from "../governor/cedar-pool.js";
import { line } from "./harness.js";

const MS = Number(process.env.CEDAR_BENCH_MS ?? 1500);
const SIZES = (process.env.CEDAR_BENCH_SIZES ?? "10,100,1000").split(",").map(Number);

/** A bundle shaped like a real one: a few global guards, the rest scoped to one server's tools. */
function bundleText(n: number): { text: string; servers: number } {
  const servers = Math.max(3, Math.round(n / 20));
  const p: string[] = [
    `@id("drift") forbid (principal, action, resource) when { context.drift == "drifted" || context.drift == "quarantined" };`,
    `@id("credentials") forbid (principal, action == Cmcp::Action::"tools/call", resource) when { context.arg_classes.contains("credential") };`,
    `@id("budget") forbid (principal, action == Cmcp::Action::"tools/call", resource) when { context.session_calls >= 100000 };`,
    `@id("discovery") permit (principal, action in Cmcp::Action::"discovery", resource);`,
    `@id("plumbing") permit (principal, action in Cmcp::Action::"session", resource);`,
  ];
  for (let i = 0; p.length < n; i++) {
    const s = `srv${i % servers}`;
    const tool = (k: number) => `Cmcp::Tool::"${s}/tool${k}"`;
    const call = `action == Cmcp::Action::"tools/call"`;
    switch (i % 4) {
      case 0:
        p.push(`@id("p${i}") permit (principal, ${call}, resource == ${tool(i)});`);
        break;
      case 1:
        p.push(
          `@id("p${i}") permit (principal in Cmcp::Workflow::"wf${i % 7}", ${call}, resource in Cmcp::Server::"${s}") when { resource in [${tool(i)}, ${tool(i + servers)}] && context.sensitivity <= 2 };`,
        );
        break;
      case 2:
        p.push(
          `@id("p${i}") @decision("require_approval") permit (principal, ${call}, resource == ${tool(i)}) when { context.arg_classes.contains("pii") };`,
        );
        break;
      default:
        p.push(
          `@id("p${i}") forbid (principal in Cmcp::Workflow::"wf${i % 7}", ${call}, resource in Cmcp::Server::"${s}") unless { resource in [${tool(i)}, ${tool(i - 1)}, ${tool(i - 2)}] };`,
        );
    }
  }
  return { text: p.join("\n"), servers };
}

function requests(n: number, servers: number): CedarRequest[] {
  let seed = 42;
  const rnd = (k: number) => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return (seed >>> 8) % k;
  };
  return Array.from({ length: 1024 }, (_, i) => {
    const tool = rnd(Math.max(n, 8));
    const wf = rnd(9);
    return {
      agent: `agent${rnd(5)}`,
      workflows: wf < 7 ? [`wf${wf}`] : [],
      session: `session${i % 16}`,
      server: `srv${tool % servers}`,
      method: "tools/call",
      tool: `tool${tool}`,
      context: {
        arg_classes: rnd(4) === 0 ? ["pii"] : [],
        sensitivity: rnd(4),
        session_calls: i,
        time: "2026-01-15T12:00:00.000Z",
      },
    };
  });
}

interface Result {
  label: string;
  p50: number;
  p99: number;
  opsPerSec: number;
}

function quantile(sorted: Float64Array, q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

/** Times each call (for p50/p99) for about MS milliseconds after a warm-up. */
async function measure(
  label: string,
  reqs: CedarRequest[],
  fn: (r: CedarRequest) => unknown,
): Promise<Result> {
  const warm = performance.now() + Math.min(300, MS / 4);
  for (let i = 0; performance.now() < warm; i++) await fn(reqs[i % reqs.length]!);
  const samples: number[] = [];
  const t0 = performance.now();
  let t = t0;
  for (let i = 0; t - t0 < MS; i++) {
    const s = performance.now();
    await fn(reqs[i % reqs.length]!);
    t = performance.now();
    samples.push((t - s) * 1000);
  }
  const sorted = Float64Array.from(samples).sort();
  return {
    label,
    p50: quantile(sorted, 0.5),
    p99: quantile(sorted, 0.99),
    opsPerSec: samples.length / ((t - t0) / 1000),
  };
}

/** Throughput with `inflight` requests outstanding (pool only). */
async function throughput(
  label: string,
  reqs: CedarRequest[],
  inflight: number,
  fn: (r: CedarRequest) => Promise<unknown>,
): Promise<Result> {
  let done = 0;
  let i = 0;
  const end = performance.now() + MS;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: inflight }, async () => {
      while (performance.now() < end) {
        await fn(reqs[i++ % reqs.length]!);
        done++;
      }
    }),
  );
  return { label, p50: NaN, p99: NaN, opsPerSec: done / ((performance.now() - t0) / 1000) };
}

const fmt = (x: number, d = 1) =>
  Number.isNaN(x) ? "-" : x.toLocaleString("en-US", { maximumFractionDigits: d });

function print(title: string, baseline: Result, others: Result[]): void {
  line(`\n## ${title}`);
  line(
    `${"".padEnd(52)} ${"p50 us".padStart(9)} ${"p99 us".padStart(9)} ${"ops/s".padStart(9)} ${"p50 vs base".padStart(12)} ${"ops vs base".padStart(12)}`,
  );
  for (const r of [baseline, ...others]) {
    const same = r === baseline;
    line(
      `${r.label.padEnd(52)} ${fmt(r.p50).padStart(9)} ${fmt(r.p99).padStart(9)} ${fmt(r.opsPerSec, 0).padStart(9)} ${(same ? "baseline" : Number.isNaN(r.p50) ? "-" : `${fmt(baseline.p50 / r.p50, 2)}x`).padStart(12)} ${(same ? "baseline" : `${fmt(r.opsPerSec / baseline.opsPerSec, 2)}x`).padStart(12)}`,
    );
  }
}

const schema = await readSchema();
const threads = availableParallelism();
line(`# Cedar decisions (cedar-wasm 4.13), ${threads} cores; ${MS} ms per measurement`);
line("ratios: baseline p50 / candidate p50 and candidate ops / baseline ops (higher is better)");
const summary: string[] = [];
for (const n of SIZES) {
  const { text, servers } = bundleText(n);
  const bytes = new TextEncoder().encode(text);
  const files: BundleFile[] = [{ path: "bench.cedar", size: bytes.length, sha256: sha256Hex(bytes), bytes }];
  const bundle = compileBundle(`generated-${n}`, files, schema);
  const reqs = requests(n, servers);
  const engine = (o: CedarEngineOptions) => new CedarEngine(bundle, o);
  const sliced = engine({});
  const avgSlice = reqs.reduce((a, r) => a + sliced.policiesFor(r).length, 0) / reqs.length;
  const unsliced = engine({ slice: false });
  const checked = engine({ slice: false, validateRequests: true });
  // Decisions must not depend on the design: check before timing anything.
  for (const r of reqs) {
    const want = checked.evaluate(r);
    for (const e of [sliced, unsliced]) {
      const got = e.evaluate(r);
      if (got.outcome !== want.outcome || got.policy_ids.join() !== want.policy_ids.join())
        throw new Error(`designs disagree on ${JSON.stringify(r)}`);
    }
  }
  const baseline = await measure("stateful, unsliced, schema-checked (baseline)", reqs, (r) =>
    checked.evaluate(r),
  );
  const stateless = engine({ slice: false, validateRequests: true, evaluator: "stateless" });
  const statelessSliced = engine({ evaluator: "stateless" });
  const slicedChecked = engine({ validateRequests: true });
  const others = [
    await measure("stateless isAuthorized, unsliced, schema-checked", reqs, (r) => stateless.evaluate(r)),
    await measure("stateless isAuthorized, sliced, trimmed", reqs, (r) => statelessSliced.evaluate(r)),
    await measure("stateful, sliced, schema-checked", reqs, (r) => slicedChecked.evaluate(r)),
    await measure("stateful, unsliced, trimmed", reqs, (r) => unsliced.evaluate(r)),
    await measure("stateful, sliced, trimmed (gateway design)", reqs, (r) => sliced.evaluate(r)),
  ];
  const pool = await CedarPool.open(sliced, threads);
  try {
    others.push(
      await measure(`piscina ${threads} threads, sliced, 1 in flight`, reqs, (r) => pool.evaluate(r)),
    );
    others.push(
      await throughput(`piscina ${threads} threads, sliced, 64 in flight`, reqs, 64, (r) => pool.evaluate(r)),
    );
    const batches = Array.from({ length: 32 }, (_, k) => reqs.slice(k * 32, k * 32 + 32));
    const batched = await throughput(
      `piscina ${threads} threads, sliced, batches of 32`,
      reqs,
      8,
      async () => {
        await pool.evaluateMany(batches[Math.floor(Math.random() * batches.length)]!);
      },
    );
    batched.opsPerSec *= 32;
    others.push(batched);
  } finally {
    await pool.close();
  }
  print(
    `${n} policies (${servers} servers; a tools/call request evaluates ~${avgSlice.toFixed(0)} policies sliced; ${sliced.preparedSets} preparsed sets)`,
    baseline,
    others,
  );
  const chosen = others.find((r) => r.label.endsWith("(gateway design)"))!;
  const target = n === 100 ? 100 : n === 1000 ? 300 : undefined;
  if (target !== undefined)
    summary.push(
      `${n} policies: gateway design p50 ${fmt(chosen.p50)} us (issue target: under ${target} us)`,
    );
}
line("");
for (const s of summary) line(s);
