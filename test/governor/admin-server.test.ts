import { createWriteStream } from "node:fs";
import { stat } from "node:fs/promises";
import { dirname, join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { verifyBundleFile } from "../../artifacts/verifier/verify-bundle.js";
import { adminRequest } from "../../governor/admin-server.js";
import { connectClient, startTestGateway, type TestGateway } from "../helpers/gateway.js";

let tg: TestGateway;
beforeAll(async () => {
  tg = await startTestGateway();
});
afterAll(async () => {
  await tg?.cleanup();
});

describe("admin interface", () => {
  it("is a socket only the governor's user can open", async () => {
    const st = await stat(tg.gateway.adminSocket!);
    expect(st.isSocket()).toBe(true);
    expect(st.mode & 0o777).toBe(0o600);
    expect(st.uid).toBe(process.getuid!());
    // Bound inside a private directory, so no umask can leave it open between listen and chmod.
    const dir = await stat(dirname(tg.gateway.adminSocket!));
    expect(dir.mode & 0o777).toBe(0o700);
    expect(dir.uid).toBe(process.getuid!());
  });

  it("reports status", async () => {
    const reply = await adminRequest(tg.gateway.adminSocket!, { cmd: "status" });
    const s = reply.status as Record<string, unknown>;
    expect(s).toMatchObject({
      key_id: tg.signer.keyId,
      provider: "software",
      mode: "enforcing",
      endpoint: tg.url,
      failed: null,
    });
    expect((s.runtime as { user: string }).user).toBe("cmcp-runtime");
  });

  it("exports a verifiable bundle of the chain so far while the gateway keeps serving", async () => {
    const client = await connectClient(tg.url);
    await client.callTool({ name: "echo", arguments: { message: "before export" } });
    const out = join(tg.dir, "live.json");
    const file = createWriteStream(out);
    const reply = await adminRequest(tg.gateway.adminSocket!, { cmd: "export" }, (chunk) =>
      file.write(chunk),
    );
    await new Promise<void>((r) => file.end(() => r()));
    expect((await stat(out)).size).toBe(reply.bytes);
    const report = await verifyBundleFile(out, { trustedKeys: [tg.signer.keyId] });
    expect(report.ok).toBe(true);
    expect(report.counts.receipts).toBeGreaterThan(3);
    // Still serving afterwards.
    expect(await client.callTool({ name: "echo", arguments: { message: "after" } })).toMatchObject({
      content: [{ text: "Echo: after" }],
    });
    await client.close();
  });

  it("answers malformed and unknown requests with an error, not a crash", async () => {
    await expect(
      adminRequest(tg.gateway.adminSocket!, { cmd: "launch-missiles" } as never),
    ).rejects.toMatchObject({ code: "admin.refused" });
    const s = await adminRequest(tg.gateway.adminSocket!, { cmd: "status" });
    expect(s.ok).toBe(true);
  });
});
