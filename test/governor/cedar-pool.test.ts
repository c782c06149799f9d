import { describe, expect, it } from "vitest";
import { shippedBundlePath } from "../../governor/cedar-bundle.js";
import { CedarEngine } from "../../governor/cedar-policy.js";
import { CedarPool } from "../../governor/cedar-pool.js";
import { readTestCases } from "../../governor/cedar-test-cases.js";

describe("CedarPool", () => {
  it("decides in worker threads exactly as inline", async () => {
    const engine = await CedarEngine.load(shippedBundlePath("demo-advisory"));
    const pool = await CedarPool.open(engine, 2);
    try {
      expect(pool.bundleHash).toBe(engine.bundleHash);
      const requests = readTestCases(engine.bundle).map((c) => c.request);
      const one = await Promise.all(requests.map((r) => pool.evaluate(r)));
      const many = await pool.evaluateMany(requests);
      const inline = requests.map((r) => engine.evaluate(r));
      expect(one).toEqual(inline);
      expect(many).toEqual(inline);
    } finally {
      await pool.close();
    }
  });
});
