import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // A guard against hangs only (no test asserts time): multi-process tests share 2 cores in CI.
    testTimeout: 180_000,
    hookTimeout: 180_000,
    pool: "forks",
  },
});
