/**
 * `cmcp start`: the governor process. This issue's governor holds the epoch
 * key and the receipt chain; the runtime it will spawn and supervise (the MCP
 * endpoint) arrives with the two-process gateway.
 */
import { resolve } from "node:path";
import { generateSigner } from "../artifacts/keys.js";
import { loadConfig } from "./config.js";
import { ReceiptChain } from "./receipt-chain.js";

export interface StartOptions {
  config?: string;
  dataDir?: string;
}

export async function runGovernor(options: StartOptions): Promise<number> {
  const log = (line: string) => process.stderr.write(`cmcp governor: ${line}\n`);
  // Signals are handled from the first moment: a SIGTERM during start-up still ends with a final checkpoint.
  let stopSignal: string | undefined;
  let wake: () => void = () => undefined;
  const stopped = new Promise<void>((resolve) => (wake = resolve));
  const onSignal = (signal: string) => {
    stopSignal ??= signal;
    wake();
  };
  process.once("SIGTERM", () => onSignal("SIGTERM"));
  process.once("SIGINT", () => onSignal("SIGINT"));
  // Until the runtime exists nothing else holds the event loop open; keep it until a signal.
  const keepAlive = setInterval(() => undefined, 1 << 30);
  try {
    const config = await loadConfig(options.config);
    const dataDir = resolve(options.dataDir ?? config.dataDir);
    const signer = generateSigner();
    const chain = await ReceiptChain.open({
      dataDir,
      origin: config.log.origin,
      signer,
      provider: "software",
      checkpointEveryReceipts: config.checkpoint.everyReceipts,
      checkpointEverySeconds: config.checkpoint.everySeconds,
      onEvent: (e) => {
        if (e.kind === "recovered") log(`recovered a torn chain tail: ${JSON.stringify(e.detail)}`);
        else if (e.kind === "checkpoint") log(`checkpoint size ${e.size} root ${e.rootHash}`);
        else if (e.kind === "checkpoint-failed") log(`checkpoint failed: ${e.error}`);
        else if (e.kind === "failed") log(`FAIL CLOSED: ${e.error}`);
      },
    });
    log(`epoch ${chain.epoch} started, key ${signer.keyId}`);
    log(
      `provider: software (NOT hardware-backed: the key is anchored only if an auditor trusts it directly)`,
    );
    log(`data dir ${dataDir}, log origin "${chain.origin}", ${chain.size} receipts`);
    log(`no MCP endpoint yet: the runtime arrives with the two-process gateway; SIGTERM or Ctrl-C stops`);
    await stopped;
    log(`${stopSignal}: writing final checkpoint`);
    await chain.close();
    const cp = chain.lastCheckpoint;
    log(`stopped at ${chain.durableSize} receipts${cp ? `, last checkpoint size ${cp.size}` : ""}`);
    return 0;
  } finally {
    clearInterval(keepAlive);
  }
}
