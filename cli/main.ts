/**
 * The `cmcp` command. Each subcommand loads its module only when run, so
 * `cmcp verify` never loads governor code.
 */
import { Command, CommanderError, Option } from "commander";
import { CmcpError, isCmcpError } from "../artifacts/errors.js";
import type { SealOptions } from "./seal-command.js";

/** Exit codes: 0 success, 1 verification failed, 2 bad usage or unreadable input. */
const EXIT_USAGE = 2;

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

export function buildProgram(): Command {
  const program = new Command("cmcp")
    .description("cmcp: an attested MCP gateway whose every decision is a signed, offline-verifiable receipt")
    .version("0.1.0")
    .showHelpAfterError()
    .exitOverride();

  program
    .command("start")
    .description(
      "Start the gateway: the governor (epoch key, receipt chain, decisions) and the keyless runtime it spawns, which serves MCP. With no --config, runs the embedded dev-mode default on 127.0.0.1 with the reference servers as upstreams. SIGTERM drains, writes a final checkpoint and exits 0.",
    )
    .option("-c, --config <file>", "JSON gateway config (default: the embedded dev-mode configuration)")
    .option("-d, --data-dir <dir>", "data directory for the receipt chain (overrides the config)")
    .option(
      "-l, --listen <host:port>",
      "agent-facing listen address (overrides the config; port 0 picks a free port)",
    )
    .action(async (opts: { config?: string; dataDir?: string; listen?: string }) => {
      const { runGovernor } = await import("../governor/governor-main.js");
      process.exitCode = await runGovernor(opts);
    });

  program
    .command("verify")
    .description(
      "Verify an evidence bundle offline, step by step. Exit 0 when every step passes, 1 when any fails, 2 when the input is unreadable.",
    )
    .argument("<bundle>", "evidence bundle file (cmcp.evidence-bundle.v1)")
    .option(
      "-k, --key <key>",
      "trusted signer: key ID (hex), base64 Ed25519 public key, or note verifier key; repeatable",
      collect,
      [],
    )
    .option(
      "--allow-unanchored",
      "report a bundle whose keys no --key anchors as valid but UNANCHORED instead of failing",
    )
    .option("--policy-hash <hex>", "approved policy bundle hash every decision must name")
    .option("--catalog-hash <hex>", "approved tool catalog hash every decision must name")
    .option(
      "--issuer-key <key>",
      "trusted policy artifact issuer: key ID (hex) or base64 Ed25519 public key; repeatable. With it, every epoch must run under an artifact that issuer sealed",
      collect,
      [],
    )
    .option(
      "--approver-key <key>",
      "trusted approver: key ID (hex) or base64 Ed25519 public key; repeatable. With it, every approver statement recorded in the bundle must be signed by one of these keys",
      collect,
      [],
    )
    .option("--json", "print the report as JSON")
    .addOption(
      new Option("--workers <n>", "worker threads for signature checks (0: none)").argParser((v) =>
        parseCount(v, "--workers"),
      ),
    )
    .action(async (bundle: string, opts: VerifyCliOptions) => {
      const { runVerify } = await import("./verify-command.js");
      process.exitCode = await runVerify(bundle, opts);
    });

  program
    .command("connect")
    .description(
      "Bridge this process's stdio to a running gateway, for agent hosts that launch MCP servers as commands. The bearer token, if the gateway requires one, is read from CMCP_AGENT_TOKEN.",
    )
    .option("-u, --url <url>", "the gateway's Streamable HTTP endpoint", "http://127.0.0.1:8765/mcp")
    .action(async (opts: { url: string }) => {
      const { runConnect } = await import("./connect-command.js");
      process.exitCode = await runConnect(opts);
    });

  program
    .command("status")
    .description(
      "Show a running gateway's state (epoch, key, runtime, receipts, sessions, upstreams) through its admin socket.",
    )
    .option("-d, --data-dir <dir>", "the governor's data directory", ".cmcp-data")
    .option("--json", "print the status as JSON")
    .action(async (opts: { dataDir: string; json?: boolean }) => {
      const { adminRequest, ADMIN_SOCKET } = await import("../governor/admin-server.js");
      const { join } = await import("node:path");
      const reply = await adminRequest(join(opts.dataDir, ADMIN_SOCKET), { cmd: "status" });
      const s = reply.status as Record<string, unknown>;
      if (opts.json) process.stdout.write(`${JSON.stringify(s, null, 2)}\n`);
      else
        for (const [k, v] of Object.entries(s))
          process.stdout.write(`${k}: ${typeof v === "object" ? JSON.stringify(v) : String(v)}\n`);
    });

  program
    .command("export")
    .description(
      "Export an evidence bundle: from a running gateway through its admin socket, or from a stopped governor's data directory. --tlog-proof exports one receipt's C2SP tlog-proof (stopped governor only).",
    )
    .option("-d, --data-dir <dir>", "the governor's data directory", ".cmcp-data")
    .requiredOption("-o, --out <file>", "output file")
    .addOption(
      new Option(
        "--tlog-proof <seq>",
        "write a C2SP tlog-proof for receipt <seq> instead of a bundle",
      ).argParser((v) => parseCount(v, "--tlog-proof")),
    )
    .action(async (opts: { dataDir: string; out: string; tlogProof?: number }) => {
      const { exportBundle, exportTlogProof } = await import("../governor/export-bundle.js");
      if (opts.tlogProof !== undefined) {
        const r = await exportTlogProof(opts.dataDir, opts.tlogProof, opts.out);
        process.stdout.write(
          `wrote tlog-proof for receipt ${opts.tlogProof} against checkpoint size ${r.checkpointSize} to ${opts.out}\n`,
        );
        return;
      }
      const { adminRequest, ADMIN_SOCKET } = await import("../governor/admin-server.js");
      const { lockHolder } = await import("../governor/data-dir-lock.js");
      const { join } = await import("node:path");
      let r: { receipts: unknown; checkpoints: unknown; claims: unknown; bytes: unknown };
      if ((await lockHolder(opts.dataDir)) !== null) {
        const { createWriteStream } = await import("node:fs");
        const { unlink } = await import("node:fs/promises");
        const out = createWriteStream(opts.out);
        let received = 0;
        try {
          const reply = await adminRequest(join(opts.dataDir, ADMIN_SOCKET), { cmd: "export" }, (chunk) => {
            received += chunk.length;
            out.write(chunk);
          });
          await new Promise<void>((resolve, reject) =>
            out.end((err?: Error | null) => (err ? reject(err) : resolve())),
          );
          // A transfer cut short must not pass for a bundle.
          if (received !== reply.bytes) {
            throw new CmcpError(
              "admin.truncated",
              `export ended after ${received} of ${String(reply.bytes)} bytes`,
            );
          }
          r = reply as typeof r;
        } catch (err) {
          out.destroy();
          await unlink(opts.out).catch(() => undefined);
          throw err;
        }
      } else {
        r = await exportBundle(opts.dataDir, opts.out);
      }
      process.stdout.write(
        `wrote ${r.receipts} receipts, ${r.checkpoints} checkpoints, ${r.claims} claims (${r.bytes} bytes) to ${opts.out}\n`,
      );
    });

  program
    .command("approvals")
    .description(
      "List the calls the policy holds for approval: tool, server, arguments (secret-looking values masked), session, workflow, and when each is denied if no one answers.",
    )
    .option("-d, --data-dir <dir>", "the governor's data directory", ".cmcp-data")
    .option("--json", "print the pending calls as JSON")
    .action(async (opts: { dataDir: string; json?: boolean }) => {
      const { runApprovals } = await import("./approval-command.js");
      process.exitCode = await runApprovals(opts);
    });

  program
    .command("claim")
    .description(
      "Issue a signed TRACE claim for one agent session through a running gateway: a fresh checkpoint, then the session's call summary (calls, allowed, denied, tools invoked, drift events) bound to that checkpoint's root. It is stored with the chain, so later exports include it; printed as JSON.",
    )
    .argument("<session>", "the agent session id (Mcp-Session-Id), as receipts name it")
    .option("-d, --data-dir <dir>", "the governor's data directory", ".cmcp-data")
    .action(async (session: string, opts: { dataDir: string }) => {
      const { adminRequest, ADMIN_SOCKET } = await import("../governor/admin-server.js");
      const { join } = await import("node:path");
      const reply = await adminRequest(join(opts.dataDir, ADMIN_SOCKET), { cmd: "claim", session });
      process.stdout.write(`${JSON.stringify(reply.claim, null, 2)}\n`);
    });

  for (const decision of ["approve", "deny"] as const) {
    program
      .command(decision)
      .description(
        `${decision === "approve" ? "Approve" : "Deny"} a held call: signs a statement bound to that call (session, request, tool, arguments hash, expiry) with your approver key; the governor accepts it only from an approver in its config, and only once.`,
      )
      .argument("<id>", "approval ID from cmcp approvals")
      .requiredOption("-k, --key <file>", "your approver private key (from cmcp keygen)")
      .option("-r, --reason <text>", "reason, recorded in the approval receipt")
      .option("-d, --data-dir <dir>", "the governor's data directory", ".cmcp-data")
      .action(async (id: string, opts: { dataDir: string; key: string; reason?: string }) => {
        const { runAnswer } = await import("./approval-command.js");
        process.exitCode = await runAnswer(id, decision, opts);
      });
  }

  program
    .command("keygen")
    .description(
      "Create an Ed25519 key file (PKCS#8 PEM, mode 0600) for a policy issuer or an approver, and print its public key for the gateway config. Never overwrites a file.",
    )
    .requiredOption("-o, --out <file>", "private key file to create")
    .action(async (opts: { out: string }) => {
      const { runKeygen } = await import("./keygen-command.js");
      process.exitCode = await runKeygen(opts);
    });

  program
    .command("seal")
    .description(
      "Seal a policy artifact: validate the policy bundle, then sign its bundle and schema hashes, the catalog hash, the enforcement mode and parameters and a validity window with the issuer's key. The gateway refuses to start unless the artifact verifies against the issuer key pinned in its config and every hash matches what is on disk.",
    )
    .requiredOption("-p, --policy <dir>", "policy bundle directory")
    .requiredOption("-k, --key <file>", "issuer private key (from cmcp keygen); keep it off the gateway host")
    .requiredOption("-o, --out <file>", "artifact file to write")
    .addOption(
      new Option("-m, --mode <mode>", "enforcement mode")
        .choices(["enforcing", "advisory", "silent"])
        .makeOptionMandatory(),
    )
    .requiredOption("--author <name>", "who wrote this policy version (provenance)")
    .option("--approver <name>", "who approved it (provenance)")
    .option("--source-commit <sha>", "source commit the bundle was built from (provenance)")
    .option("--schema <file>", "Cedar schema (default: the shipped policies/schema/mcp.cedarschema)")
    .option("--catalog-hash <hex>", "approved tool catalog hash (from cmcp catalog approve)")
    .option("--policy-version <v>", "version label (default: cedar-<first 12 hex of the bundle hash>)")
    .option("--not-before <time>", "RFC 3339 UTC start of validity (default: now)")
    .option("--expires <time>", "RFC 3339 UTC end of validity")
    .addOption(
      new Option("--valid-days <n>", "validity in days when --expires is not given (default 90)").argParser(
        (v) => parseCount(v, "--valid-days"),
      ),
    )
    .addOption(
      new Option("--measurement-interval <seconds>", "runtime measurement cadence (default 60)").argParser(
        (v) => parseCount(v, "--measurement-interval"),
      ),
    )
    .addOption(
      new Option("--on-drift <action>", "action on catalog or runtime drift (default deny_tool)").choices([
        "alert",
        "deny_tool",
        "isolate_server",
        "quarantine",
      ]),
    )
    .option("--runtime-measurement <hex>", "expected runtime measurement")
    .option("--force", "replace an existing artifact file")
    .action(async (opts: SealOptions) => {
      const { runSeal } = await import("./seal-command.js");
      process.exitCode = await runSeal(opts);
    });

  // `cmcp policy validate|hash|test DIR`: Cedar policy bundles, worked on like code.
  const policy = program
    .command("policy")
    .description(
      "Work with a Cedar policy bundle: a directory of .cedar files (each policy with an @id annotation) and tests/*.json decision tables, checked against the MCP schema. Exit 0 on success, 1 when the bundle is invalid or a test fails, 2 when it cannot be read.",
    );
  type PolicyOpts = { schema?: string; json?: boolean };
  const schemaOption = () =>
    new Option(
      "--schema <file>",
      "Cedar schema to validate against (default: the shipped policies/schema/mcp.cedarschema)",
    );
  policy
    .command("validate")
    .description(
      "Parse every policy, check its @id and annotations, and validate it against the schema (strict mode). Lists the policies with their effect and outcome; names the file, line and policy ID of the first fault.",
    )
    .argument("<dir>", "policy bundle directory")
    .addOption(schemaOption())
    .option("--json", "print the result as JSON")
    .action(async (dir: string, opts: PolicyOpts) => {
      const { runPolicyValidate } = await import("./policy-command.js");
      process.exitCode = await runPolicyValidate(dir, opts);
    });
  policy
    .command("hash")
    .description(
      "Print the bundle hash (SHA-256 over the JCS listing of every file's path, sha256 and size; names starting with '.' are ignored) and the schema hash, the values a sealed policy artifact names. Does not parse the policies.",
    )
    .argument("<dir>", "policy bundle directory")
    .addOption(schemaOption())
    .option("--json", "print the hashes and the file listing as JSON")
    .action(async (dir: string, opts: PolicyOpts) => {
      const { runPolicyHash } = await import("./policy-command.js");
      process.exitCode = await runPolicyHash(dir, opts);
    });
  policy
    .command("test")
    .description(
      "Run the bundle's test cases (tests/*.json: request, expected outcome, optionally expected policy IDs and redactions), each decided sliced and unsliced. Exit 1 if any case fails or there are none.",
    )
    .argument("<dir>", "policy bundle directory")
    .addOption(schemaOption())
    .option("--json", "print the results as JSON")
    .action(async (dir: string, opts: PolicyOpts) => {
      const { runPolicyTest } = await import("./policy-command.js");
      process.exitCode = await runPolicyTest(dir, opts);
    });

  // `cmcp scan FILE`: the tool-definition (poisoning) scanner, rules from policies/scanner-rules.json.
  program
    .command("scan")
    .description(
      "Scan MCP tool definitions for poisoning: instructions aimed at the model, hidden markup, references to other servers' tools, secret paths, exfiltration URLs, invisible or look-alike Unicode, encoded blobs and abnormal length. FILE holds a tools/list result, an array of tools, one tool, or a catalog with a tools array. Prints each finding with its rule, severity, JSON path, offending span and explanation. Exit 0 when no finding reaches --fail-on, 1 when one does, 2 when the file or the rules cannot be read.",
    )
    .argument("<file>", "JSON file holding tool definitions")
    .option("--json", "print the findings as JSON")
    .addOption(
      new Option("--fail-on <severity>", "least severity that fails the scan")
        .choices(["low", "medium", "high"])
        .default("high"),
    )
    .option("--rules <file>", "scanner rules (default: the shipped policies/scanner-rules.json)")
    .action(
      async (file: string, opts: { json?: boolean; failOn: "low" | "medium" | "high"; rules?: string }) => {
        const { runScan } = await import("./scan-command.js");
        process.exitCode = await runScan(file, opts);
      },
    );

  // `cmcp catalog snapshot|diff|approve|hash`: the approved tool catalog (governor/catalog.ts).
  {
    const catalog = program
      .command("catalog")
      .description(
        "Work with the approved tool catalog: the servers agents may reach, each server's pinned identity (its executable and package files, or its URL and TLS key), and the approved definitions of its tools, resources and prompts, each pinned by the SHA-256 of its canonical JSON. Agents are served the approved definitions; a live definition that differs is drift. Typical flow: snapshot, review (with diff against the previous catalog), approve, then cmcp seal --catalog-hash.",
      );
    catalog
      .command("snapshot")
      .description(
        "Connect to every upstream in the gateway config, list its tools, resources, resource templates and prompts, compute its identity, run the poisoning scanner, and write a catalog for review (not yet approved) with the findings beside it (catalog.json -> catalog.findings.json). Commands that fetch whatever is newest at start (npx, pnpm dlx, uvx, pipx run, npm exec, ...) are refused: install a pinned version and point the command at it. Exit 0 when every server was listed, 1 when one failed (it is reported and left out), 2 when the config cannot be read or an output exists.",
      )
      .requiredOption(
        "-c, --config <file>",
        "gateway config (only its upstreams are used; policy and artifact may be absent)",
      )
      .requiredOption("-o, --out <file>", "catalog file to write (findings go to <name>.findings.json)")
      .option("--force", "replace existing output files")
      .addOption(
        new Option(
          "--timeout <seconds>",
          "per-server time for identity, connect and listing (default 60)",
        ).argParser((v) => parseCount(v, "--timeout")),
      )
      .option("--rules <file>", "scanner rules (default: the shipped policies/scanner-rules.json)")
      .option(
        "--previous <file>",
        "an earlier (approved) catalog: its package names and hosts count as known when flagging look-alike (typosquat) names",
      )
      .option("--json", "print the summary as JSON")
      .action(
        async (opts: {
          config: string;
          out: string;
          previous?: string;
          force?: boolean;
          timeout?: number;
          rules?: string;
          json?: boolean;
        }) => {
          const { runCatalogSnapshot } = await import("./catalog-command.js");
          process.exitCode = await runCatalogSnapshot(opts);
        },
      );
    catalog
      .command("diff")
      .description(
        "Show what changed from OLD to NEW: servers and tools (also resources, templates, prompts) added or removed, and for each changed one the fields that differ, as JSON Pointers with before and after values; identity changes likewise. created_at and the review are not compared. Exit 0 when identical, 1 when different, 2 when a file cannot be read or is not a valid catalog.",
      )
      .argument("<old>", "catalog file (e.g. the approved one)")
      .argument("<new>", "catalog file (e.g. a fresh snapshot)")
      .option("--json", "print the differences as JSON")
      .action(async (oldFile: string, newFile: string, opts: { json?: boolean }) => {
        const { runCatalogDiff } = await import("./catalog-command.js");
        process.exitCode = await runCatalogDiff(oldFile, newFile, opts);
      });
    catalog
      .command("approve")
      .description(
        "Validate a catalog, re-run the scanner on its tool definitions, record the reviewer and the time, write the approved catalog (in place unless --out), and print the catalog hash for cmcp seal --catalog-hash. Refuses (exit 1) when the scanner reports high-severity findings, unless --accept-findings. Exit 2 when the file cannot be read or is invalid.",
      )
      .argument("<file>", "catalog file (from cmcp catalog snapshot)")
      .requiredOption("-r, --reviewer <name>", "who reviewed and approves it (recorded in the catalog)")
      .option("-o, --out <file>", "write the approved catalog here instead of replacing FILE")
      .option("--accept-findings", "approve despite high-severity scanner findings (their count is recorded)")
      .option("--force", "replace an existing --out file")
      .option("--rules <file>", "scanner rules (default: the shipped policies/scanner-rules.json)")
      .action(
        async (
          file: string,
          opts: { reviewer: string; out?: string; acceptFindings?: boolean; force?: boolean; rules?: string },
        ) => {
          const { runCatalogApprove } = await import("./catalog-command.js");
          process.exitCode = await runCatalogApprove(file, opts);
        },
      );
    catalog
      .command("hash")
      .description(
        "Validate a catalog and print its hash: SHA-256 over the RFC 8785 canonical JSON of the whole catalog, the value cmcp seal --catalog-hash and cmcp verify --catalog-hash take. Exit 2 when the file cannot be read or is invalid.",
      )
      .argument("<file>", "catalog file")
      .action(async (file: string) => {
        const { runCatalogHash } = await import("./catalog-command.js");
        process.exitCode = await runCatalogHash(file);
      });
  }

  return program;
}

export interface VerifyCliOptions {
  key: string[];
  allowUnanchored?: boolean;
  policyHash?: string;
  catalogHash?: string;
  issuerKey: string[];
  approverKey: string[];
  json?: boolean;
  workers?: number;
}

function parseCount(value: string, flag: string): number {
  if (!/^\d{1,15}$/.test(value))
    throw new CommanderError(
      EXIT_USAGE,
      "cmcp.usage",
      `${flag} needs a non-negative integer, got "${value}"`,
    );
  return Number(value);
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv, { from: "user" });
    return typeof process.exitCode === "number" ? process.exitCode : 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      // --help and --version exit 0; every usage error exits 2.
      if (
        err.code === "commander.helpDisplayed" ||
        err.code === "commander.version" ||
        err.code === "commander.help"
      )
        return 0;
      if (err.code === "cmcp.usage") process.stderr.write(`cmcp: ${err.message}\n`);
      return EXIT_USAGE;
    }
    const message = isCmcpError(err)
      ? `${err.message} [${err.code}]`
      : err instanceof Error
        ? err.message
        : String(err);
    process.stderr.write(`cmcp: ${message}\n`);
    return isCmcpError(err) ? EXIT_USAGE : 1;
  }
}
