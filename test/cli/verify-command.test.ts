import { open, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { cmcp as runCli, type CliRun } from "../helpers/cli.js";
import { makeBundle, type MadeBundle } from "../helpers/make-bundle.js";

const RSS = new URL("../helpers/report-rss.ts", import.meta.url).pathname;

interface Run extends CliRun {
  maxRssKb: number;
}

/** Runs the real CLI and reads its peak RSS from a preload. */
async function cmcp(args: string[]): Promise<Run> {
  const r = await runCli(args, ["--import", RSS]);
  const m = /cmcp-test-maxrss-kb=(\d+)/.exec(r.stderr);
  return {
    ...r,
    stderr: r.stderr.replace(/\ncmcp-test-maxrss-kb=\d+\n/, ""),
    maxRssKb: m ? Number(m[1]) : Infinity,
  };
}

let made: MadeBundle;
let keyArgs: string[];

beforeAll(async () => {
  made = await makeBundle({ epochs: 2, receiptsPerEpoch: 4, checkpointEveryReceipts: 3 });
  keyArgs = made.signers.flatMap((s) => ["--key", s.keyId]);
});

afterAll(async () => {
  await made?.cleanup();
});

describe("cmcp verify", () => {
  it("exits 0 and prints a numbered report for a valid, anchored bundle", async () => {
    const r = await cmcp(["verify", made.bundlePath, ...keyArgs]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^ 1\. \[PASS\] Bundle structure/m);
    expect(r.stdout).toMatch(/^10\. /m);
    expect(r.stdout).toMatch(/^VERIFIED: /m);
  });

  it("exits 1 naming the anchoring step when no key is trusted", async () => {
    const r = await cmcp(["verify", made.bundlePath]);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/FAILED at step 2 \(Signer keys are anchored/);
  });

  it("exits 0 with an UNANCHORED summary under --allow-unanchored", async () => {
    const r = await cmcp(["verify", made.bundlePath, "--allow-unanchored"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^VALID BUT UNANCHORED/m);
  });

  it("prints a machine-readable report with --json", async () => {
    const r = await cmcp(["verify", made.bundlePath, ...keyArgs, "--json"]);
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report.ok).toBe(true);
    expect(report.steps).toHaveLength(12);
    // A bundle without approval receipts has no approver statements to check.
    expect(report.steps[11]).toMatchObject({ n: 12, id: "approvals", status: "skip" });
  });

  it("exits 1 naming the step and record for a tampered receipt", async () => {
    const doc = JSON.parse(await readFile(made.bundlePath, "utf8"));
    doc.receipts[3].subject.tool = "exfiltrate";
    const path = join(made.dir, "tampered.json");
    await writeFile(path, JSON.stringify(doc));
    const r = await cmcp(["verify", path, ...keyArgs]);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(
      /FAILED at step 3 \(Receipt schema and signatures\): receipt seq 3: signature does not verify/,
    );
  });

  it("exits 2 on bad usage", async () => {
    expect((await cmcp(["verify"])).code).toBe(2);
    expect((await cmcp(["verify", made.bundlePath, "--workers", "lots"])).code).toBe(2);
    expect((await cmcp(["frobnicate"])).code).toBe(2);
  });

  it("--help on every subcommand explains itself and exits 0", async () => {
    for (const sub of ["verify", "start", "export"]) {
      const r = await cmcp([sub, "--help"]);
      expect(r.code, sub).toBe(0);
      expect(r.stdout).toMatch(/Usage: cmcp /);
    }
    expect((await cmcp(["verify", "--help"])).stdout).toMatch(/--approver-key <key>/);
  });

  describe("unreadable input exits 2 with a clear message and no stack trace", () => {
    const cases: [string, string | (() => Promise<string>)][] = [
      ["missing file", "/nonexistent/bundle.json"],
      ["empty file", ""],
      ["not JSON", "hello"],
      ["a JSON array", "[1,2,3]"],
      ["truncated", '{"format":"cmcp.evidence-bundle.v1","receipts":[{"v":1'],
      ["wrong types", '{"format":"cmcp.evidence-bundle.v1","receipts":"none"}'],
      ["huge number", `{"format":"cmcp.evidence-bundle.v1","n":1${"0".repeat(400)},"receipts":[]}`],
      [
        "deep nesting",
        `{"format":"cmcp.evidence-bundle.v1","x":${"[".repeat(100_000)}${"]".repeat(100_000)},"receipts":[]}`,
      ],
      ["duplicate member", '{"format":"cmcp.evidence-bundle.v1","format":"x","receipts":[]}'],
      ["trailing garbage", '{"format":"cmcp.evidence-bundle.v1","receipts":[]} xyz'],
      ["other format", '{"format":"something-else","receipts":[]}'],
    ];
    for (const [name, content] of cases) {
      it(name, async () => {
        let path = content as string;
        if (!path.startsWith("/")) {
          path = join(made.dir, `bad-${name.replace(/\W/g, "-")}.json`);
          await writeFile(path, content as string);
        }
        const r = await cmcp(["verify", path, "--allow-unanchored"]);
        expect(r.code).toBe(2);
        expect(r.stdout + r.stderr).toMatch(/cannot|not a cmcp|bundle/i);
        expect(r.stdout + r.stderr).not.toMatch(/\n\s+at .+\(/);
      });
    }
  });

  it("rejects a 200 MB file of garbage quickly, in bounded memory", async () => {
    const path = join(made.dir, "garbage.bin");
    const fh = await open(path, "w");
    const chunk = Buffer.alloc(1 << 20);
    for (let i = 0; i < chunk.length; i++) chunk[i] = (i * 131 + 7) & 0xff;
    for (let i = 0; i < 200; i++) await fh.write(chunk);
    await fh.close();
    const r = await cmcp(["verify", path]);
    expect(r.code).toBe(2);
    expect(r.stdout).toMatch(/cannot read bundle: bundle must be a JSON object at byte 0/);
    expect(r.maxRssKb).toBeLessThan(200 * 1024);
    // A garbage array of 200 MB inside a valid opening is bounded by the member limit.
    const path2 = join(made.dir, "garbage2.json");
    const fh2 = await open(path2, "w");
    await fh2.write('{"format":"cmcp.evidence-bundle.v1","keys":"');
    const letters = Buffer.alloc(1 << 20, 0x61);
    for (let i = 0; i < 200; i++) await fh2.write(letters);
    await fh2.close();
    const r2 = await cmcp(["verify", path2]);
    expect(r2.code).toBe(2);
    expect(r2.stdout).toMatch(/exceeds/);
    // The member limit is 64 MiB; the 200 MB value is never held whole.
    expect(r2.maxRssKb).toBeLessThan(300 * 1024);
  });
});
