/**
 * Piscina worker for CedarPool: cedar-wasm keeps preparsed policy sets per
 * thread, so each worker compiles its own engine from the bundle bytes the
 * main thread read (never from disk again) and checks it has the same hash.
 */
import { workerData } from "node:worker_threads";
import { CmcpError } from "../artifacts/errors.js";
import { compileBundle } from "./cedar-bundle.js";
import { CedarEngine, type CedarDecision, type CedarRequest } from "./cedar-policy.js";
import type { CedarPoolData } from "./cedar-pool.js";

const data = workerData as CedarPoolData;
const engine = new CedarEngine(compileBundle(data.dir, data.files, data.schema), data.options);
if (engine.bundleHash !== data.bundleHash) {
  throw new CmcpError("policy.worker", "worker compiled a bundle with a different hash");
}

export default function decide(task: CedarRequest | CedarRequest[]): CedarDecision | CedarDecision[] {
  return Array.isArray(task) ? task.map((r) => engine.evaluate(r)) : engine.evaluate(task);
}
