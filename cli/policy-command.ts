/**
 * `cmcp policy validate|hash|test DIR`: policy bundles worked on like code.
 * Exit codes as for `cmcp verify`: 0 success, 1 the bundle is invalid or a
 * test case failed, 2 the bundle or schema cannot be read.
 */
import { isCmcpError } from "../artifacts/errors.js";
import {
  bundleHash,
  bundleListing,
  loadPolicyBundle,
  readBundleFiles,
  readSchema,
  type PolicyBundle,
} from "../governor/cedar-bundle.js";
import { CedarEngine } from "../governor/cedar-policy.js";
import { readTestCases, runPolicyTests } from "../governor/cedar-test-cases.js";

export interface PolicyCliOptions {
  schema?: string;
  json?: boolean;
}

const EXIT_OK = 0;
const EXIT_FAILED = 1;
const EXIT_UNREADABLE = 2;

function out(text: string): void {
  process.stdout.write(text.endsWith("\n") ? text : `${text}\n`);
}

/** Prints a refusal; unreadable input exits 2, anything else about the bundle exits 1. */
function refuse(err: unknown, json: boolean | undefined): number {
  if (!isCmcpError(err)) throw err;
  const code = err.code === "policy.read" ? EXIT_UNREADABLE : EXIT_FAILED;
  if (json)
    out(JSON.stringify({ ok: false, code: err.code, error: err.message, ...(err.detail ?? {}) }, null, 2));
  else process.stderr.write(`cmcp policy: ${err.message} [${err.code}]\n`);
  return code;
}

async function load(dir: string, opts: PolicyCliOptions): Promise<PolicyBundle> {
  return loadPolicyBundle(dir, opts.schema !== undefined ? { schemaPath: opts.schema } : {});
}

export async function runPolicyValidate(dir: string, opts: PolicyCliOptions): Promise<number> {
  let bundle: PolicyBundle;
  try {
    bundle = await load(dir, opts);
  } catch (err) {
    return refuse(err, opts.json);
  }
  if (opts.json) {
    out(
      JSON.stringify(
        {
          ok: true,
          bundle_hash: bundle.hash,
          schema_hash: bundle.schema.hash,
          files: bundle.listing.length,
          policies: bundle.policies.map((p) => ({
            id: p.id,
            file: p.file,
            line: p.line,
            effect: p.effect,
            outcome: p.outcome,
            ...(p.redact.length > 0 ? { redact: p.redact } : {}),
          })),
          warnings: bundle.warnings,
        },
        null,
        2,
      ),
    );
    return EXIT_OK;
  }
  for (const p of bundle.policies) {
    const extra = p.redact.length > 0 ? ` ${p.redact.join(",")}` : "";
    out(`  ${p.id.padEnd(48)} ${p.effect.padEnd(6)} ${p.outcome}${extra}  (${p.file}:${p.line})`);
  }
  for (const w of bundle.warnings) out(`warning: ${w}`);
  out(
    `VALID: ${bundle.policies.length} policies in ${bundle.listing.length} files, bundle sha256:${bundle.hash}, schema sha256:${bundle.schema.hash}`,
  );
  return EXIT_OK;
}

export async function runPolicyHash(dir: string, opts: PolicyCliOptions): Promise<number> {
  let files, schema;
  try {
    [files, schema] = await Promise.all([readBundleFiles(dir), readSchema(opts.schema)]);
  } catch (err) {
    return refuse(err, opts.json);
  }
  const listing = bundleListing(files);
  const hash = bundleHash(files);
  if (opts.json) {
    out(JSON.stringify({ bundle_hash: hash, schema_hash: schema.hash, files: listing }, null, 2));
    return EXIT_OK;
  }
  out(`bundle  sha256:${hash}`);
  out(`schema  sha256:${schema.hash}  ${schema.path}`);
  for (const f of listing) out(`  ${f.sha256}  ${String(f.size).padStart(8)}  ${f.path}`);
  return EXIT_OK;
}

export async function runPolicyTest(dir: string, opts: PolicyCliOptions): Promise<number> {
  let report;
  try {
    const bundle = await load(dir, opts);
    const cases = readTestCases(bundle);
    const engine = new CedarEngine(bundle);
    // Every case is also decided unsliced, so a slicing fault shows up as a failed case.
    report = runPolicyTests(engine, cases, new CedarEngine(bundle, { slice: false }));
  } catch (err) {
    return refuse(err, opts.json);
  }
  // A bundle without test cases proves nothing: that is a failure, not a pass.
  const ok = report.failed === 0 && report.results.length > 0;
  if (opts.json) {
    out(
      JSON.stringify(
        {
          ok,
          bundle_hash: report.bundleHash,
          passed: report.passed,
          failed: report.failed,
          results: report.results.map((r) => ({
            file: r.case.file,
            index: r.case.index,
            name: r.case.name,
            ok: r.ok,
            expect: r.case.expect,
            outcome: r.decision.outcome,
            policy_ids: r.decision.policy_ids,
            ...(r.failures.length > 0 ? { failures: r.failures } : {}),
          })),
        },
        null,
        2,
      ),
    );
  } else {
    for (const r of report.results) {
      const head = `${r.ok ? "PASS" : "FAIL"} ${r.case.file}#${r.case.index} ${r.case.name}`;
      out(
        r.ok
          ? `${head}: ${r.decision.outcome} [${r.decision.policy_ids.join(", ")}]`
          : `${head}: ${r.failures.join("; ")}`,
      );
    }
    if (report.results.length === 0) out("no test cases found (tests/*.json in the bundle)");
    out(
      `\n${ok ? "PASSED" : "FAILED"}: ${report.passed} passed, ${report.failed} failed (bundle sha256:${report.bundleHash})`,
    );
  }
  return ok ? EXIT_OK : EXIT_FAILED;
}
