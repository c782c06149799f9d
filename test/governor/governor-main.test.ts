import { spawn } from "node:child_process";
import { chmod, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { toBase64 } from "../../artifacts/encoding.js";
import { generateSigner } from "../../artifacts/keys.js";
import type { PolicyArtifact } from "../../artifacts/policy-artifact.js";
import { verifyBundleFile } from "../../artifacts/verifier/verify-bundle.js";
import { exportBundle } from "../../governor/export-bundle.js";
import { writeSealedPolicy } from "../helpers/gateway.js";

const CLI = new URL("../../cli/cmcp.ts", import.meta.url).pathname;
let dir: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "cmcp-start-"));
  await chmod(dir, 0o711); // the unprivileged runtime must reach its state directory inside
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

function startGovernor(args: string[]) {
  const child = spawn(process.execPath, ["--import", "tsx", CLI, "start", ...args], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on("close", resolve));
  const started = new Promise<void>((resolve, reject) => {
    child.stderr.on("data", () => {
      if (stderr.includes("SIGTERM or Ctrl-C stops")) resolve();
    });
    void exited.then(() => reject(new Error(`governor exited early: ${stderr}`)));
  });
  started.catch(() => undefined); // observed by the tests that wait for it
  return { child, started, exited, stderr: () => stderr };
}

describe("cmcp start", () => {
  it("starts an epoch, and on SIGTERM writes a final checkpoint and exits 0", async () => {
    const data = join(dir, "data");
    for (let i = 0; i < 2; i++) {
      const g = startGovernor(["--data-dir", data, "--listen", "127.0.0.1:0"]);
      await g.started;
      expect(g.stderr()).toMatch(/NOT hardware-backed/);
      g.child.kill("SIGTERM");
      expect(await g.exited).toBe(0);
      expect(g.stderr()).toMatch(/last checkpoint size \d+/);
    }
    const out = join(dir, "bundle.json");
    await exportBundle(data, out);
    const report = await verifyBundleFile(out, { allowUnanchored: true });
    expect(report.ok).toBe(true);
    expect(report.counts.epochs).toBe(2);
    // Dev mode sealed its own artifact each start and every epoch says so.
    const artifact = report.steps.find((s) => s.id === "artifact")!;
    expect(artifact.status).toBe("warn");
    expect(artifact.detail).toMatch(/2 self-sealed by a dev-mode gateway/);
  });

  it("refuses to start on a tampered or foreign artifact or another mode, naming the check, and records nothing", async () => {
    const { policy, artifact } = await writeSealedPolicy(dir);
    const sealed = JSON.parse(await readFile(artifact.file, "utf8")) as PolicyArtifact;
    const config = (file: string, over: object = {}) => ({
      policy,
      artifact: { ...artifact, file },
      data_dir: join(dir, "data"),
      listen: "127.0.0.1:0",
      upstreams: [{ name: "a", command: "/bin/true" }],
      ...over,
    });
    const cases: [string, unknown, object, RegExp][] = [
      [
        "tampered",
        { ...sealed, enforcement_mode: "advisory" },
        {},
        /issuer signature: .*\[artifact\.signature\]/,
      ],
      [
        "foreign",
        sealed,
        { artifact: { ...artifact, issuer_key: toBase64(generateSigner().publicKey) } },
        /not the pinned issuer/,
      ],
      ["mode", sealed, { mode: "silent" }, /seals mode enforcing, but the config asks for silent/],
    ];
    for (const [name, value, over, message] of cases) {
      const file = join(dir, `${name}.json`);
      await writeFile(file, JSON.stringify(value));
      const cfg = join(dir, `${name}.config.json`);
      await writeFile(cfg, JSON.stringify({ ...config(file), ...over }));
      const g = startGovernor(["--config", cfg]);
      expect(await g.exited, name).toBe(2);
      expect(g.stderr(), name).toMatch(message);
    }
    // Nothing started, so nothing was recorded.
    await expect(readFile(join(dir, "data", "log.json"))).rejects.toMatchObject({ code: "ENOENT" });
  });

  it("refuses, with a clear error, a data directory the runtime user could not reach", async () => {
    const hidden = await mkdtemp(join(tmpdir(), "cmcp-hidden-"));
    try {
      const g = startGovernor(["--data-dir", join(hidden, "data"), "--listen", "127.0.0.1:0"]);
      expect(await g.exited).toBe(2);
      expect(g.stderr()).toMatch(/runtime user cmcp-runtime cannot enter/);
    } finally {
      await rm(hidden, { recursive: true, force: true });
    }
  });

  it("refuses --listen on a non-loopback address without agents and TLS, even in dev mode", async () => {
    const g = startGovernor(["--data-dir", join(dir, "exposed"), "--listen", "0.0.0.0:0"]);
    expect(await g.exited).toBe(2);
    expect(g.stderr()).toMatch(/is not loopback, so agents \(bearer tokens\) and tls must be configured/);
  });

  it("refuses an invalid config with a clear error and exit 2", async () => {
    const cfg = join(dir, "bad.json");
    await writeFile(
      cfg,
      JSON.stringify({ dataDir: join(dir, "d"), checkpoint: { everyReceipts: 0 }, typo: true }),
    );
    const g = startGovernor(["--config", cfg]);
    expect(await g.exited).toBe(2);
    expect(g.stderr()).toMatch(/config .* is invalid/);
    expect(g.stderr()).toMatch(/typo|additional/);
  });
});
