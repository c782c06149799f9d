/**
 * Checkpoint sign and verify (C2SP signed note over a tlog-checkpoint body).
 *   node --import tsx bench/checkpoint.bench.ts
 */
import { randomBytes } from "node:crypto";
import { formatCheckpoint, openCheckpoint, signCheckpoint } from "../artifacts/checkpoint.js";
import { generateSigner, verifySignature } from "../artifacts/keys.js";
import { printRates, rate } from "./harness.js";

const signer = generateSigner();
const origin = "cmcp.example/governor";
const cp = { origin, size: 1_234_567, rootHash: new Uint8Array(randomBytes(32)) };
const note = signCheckpoint(cp, [{ name: origin, signer }]);
const body = new TextEncoder().encode(formatCheckpoint(cp));
const rawSig = signer.sign(body);

const baseSign = await rate("baseline: raw Ed25519 sign of the body", () => signer.sign(body));
const sign = await rate("checkpoint format + signed-note sign", () =>
  signCheckpoint(cp, [{ name: origin, signer }]),
);
printRates("Checkpoint sign", baseSign, [sign]);
const baseVerify = await rate("baseline: raw Ed25519 verify of the body", () =>
  verifySignature(signer.publicKey, body, rawSig),
);
const open = await rate("signed-note open + checkpoint parse", () => {
  const r = openCheckpoint(note, [{ name: origin, publicKey: signer.publicKey }], origin);
  if (!r.ok) throw new Error(r.reason);
});
printRates("Checkpoint verify", baseVerify, [open]);
