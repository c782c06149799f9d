/**
 * Benchmark helpers. Every benchmark reports its candidate against a baseline
 * measured in the same run, so numbers from machines under different load
 * stay comparable as ratios.
 */

export interface Rate {
  label: string;
  opsPerSec: number;
  usPerOp: number;
}

/** Runs fn repeatedly for about `ms` after a warm-up; returns the rate. */
export async function rate(
  label: string,
  fn: () => unknown | Promise<unknown>,
  ms = 1500,
  batch = 100,
): Promise<Rate> {
  const warmEnd = performance.now() + Math.min(300, ms / 4);
  while (performance.now() < warmEnd) for (let i = 0; i < batch; i++) await fn();
  let n = 0;
  const t0 = performance.now();
  let t = t0;
  while (t - t0 < ms) {
    for (let i = 0; i < batch; i++) await fn();
    n += batch;
    t = performance.now();
  }
  const secs = (t - t0) / 1000;
  return { label, opsPerSec: n / secs, usPerOp: (secs * 1e6) / n };
}

/** Times one run of fn (for work that is itself large, such as a 1M-leaf tree). */
export async function once<T>(fn: () => T | Promise<T>): Promise<{ ms: number; value: T }> {
  const t0 = performance.now();
  const value = await fn();
  return { ms: performance.now() - t0, value };
}

const num = (x: number, digits = 1) => x.toLocaleString("en-US", { maximumFractionDigits: digits });

export function printRates(title: string, baseline: Rate, others: Rate[]): void {
  console.log(`\n## ${title}`);
  console.log(
    `${"".padEnd(44)} ${"ops/s".padStart(12)} ${"us/op".padStart(10)} ${"vs baseline".padStart(12)}`,
  );
  for (const r of [baseline, ...others]) {
    const ratio = r === baseline ? "baseline" : `${num(r.opsPerSec / baseline.opsPerSec, 2)}x`;
    console.log(
      `${r.label.padEnd(44)} ${num(r.opsPerSec, 0).padStart(12)} ${num(r.usPerOp, 2).padStart(10)} ${ratio.padStart(12)}`,
    );
  }
}

export function line(text: string): void {
  console.log(text);
}
