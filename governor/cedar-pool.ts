/**
 * Cedar decisions in a piscina worker pool instead of on the governor's
 * event loop. Each worker holds its own engine for the same bundle bytes.
 * bench/cedar-decision.bench.ts compares it with inline evaluation.
 */
import type { Piscina } from "piscina";
import type { BundleFile, SchemaSource } from "./cedar-bundle.js";
import type { CedarDecision, CedarEngine, CedarEngineOptions, CedarRequest } from "./cedar-policy.js";

/** What each worker receives (structured-cloned once, at start). */
export interface CedarPoolData {
  dir: string;
  bundleHash: string;
  files: BundleFile[];
  schema: SchemaSource;
  options: Pick<CedarEngineOptions, "slice" | "validateRequests" | "evaluator">;
}

type Pool = Piscina<CedarRequest | CedarRequest[], CedarDecision | CedarDecision[]>;

export class CedarPool {
  readonly bundleHash: string;
  readonly #pool: Pool;

  private constructor(bundleHash: string, pool: Pool) {
    this.bundleHash = bundleHash;
    this.#pool = pool;
  }

  /** Starts `threads` workers for the engine's bundle and waits until they are ready. */
  static async open(
    engine: CedarEngine,
    threads: number,
    options: CedarPoolData["options"] = {},
  ): Promise<CedarPool> {
    const { Piscina } = await import("piscina");
    const fromSource = import.meta.url.endsWith(".ts");
    const data: CedarPoolData = {
      dir: engine.bundle.dir,
      bundleHash: engine.bundleHash,
      files: engine.bundle.files,
      schema: engine.bundle.schema,
      options,
    };
    const pool: Pool = new Piscina({
      filename: new URL(fromSource ? "./cedar-worker.ts" : "./cedar-worker.js", import.meta.url).href,
      minThreads: threads,
      maxThreads: threads,
      workerData: data,
      // Running from TypeScript sources (tests, bench): workers load them through tsx.
      ...(fromSource ? { execArgv: ["--import", "tsx"] } : {}),
    });
    const ready = new CedarPool(engine.bundleHash, pool);
    // A ping per worker so start-up (wasm load, preparse) is not charged to the first decisions.
    await Promise.all(Array.from({ length: threads }, () => pool.run([])));
    return ready;
  }

  async evaluate(req: CedarRequest): Promise<CedarDecision> {
    return (await this.#pool.run(req)) as CedarDecision;
  }

  /** Several requests in one message: amortizes the hand-off for bulk work. */
  async evaluateMany(reqs: CedarRequest[]): Promise<CedarDecision[]> {
    return (await this.#pool.run(reqs)) as CedarDecision[];
  }

  async close(): Promise<void> {
    await this.#pool.destroy();
  }
}
