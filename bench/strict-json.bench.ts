/**
 * parseJson vs JSON.parse, and canonicalize vs JSON.stringify, on a ~1 KB
 * receipt-like object (and a ~90 KB array of them). Reports ops/s and the
 * ratio against the baseline measured in the same run.
 *   node --import tsx bench/strict-json.bench.ts
 */
import { canonicalize } from "../artifacts/canonical-json.js";
import { parseJson } from "../artifacts/strict-json.js";

const sample = {
  jsonrpc: "2.0",
  id: 4711,
  method: "tools/call",
  params: {
    name: "filesystem.read_file",
    arguments: { path: "/srv/projects/cmcp/docs/design/receipts.md", encoding: "utf-8", maxBytes: 65536 },
    _meta: {
      progressToken: "c0ffee-1234",
      traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    },
  },
  receipt: {
    version: 1,
    epoch: 17,
    seq: 902114,
    prev: "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    request: "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
    policy: "sha256:fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9",
    catalog: "sha256:baa5a0964d3320fbc0c6a922140453c8513ea24ab8fd0577034804a967248096",
    decision: "allow",
    reasons: ["policy0", "workflow:read-only", "server:filesystem"],
    timestamp: "2025-11-21T08:47:12.345Z",
    latencyMs: 1.75,
    flags: { quarantined: false, drift: false, phantom: null },
  },
  note: "Zoë's café — naïve résumé ✓",
};
const text = JSON.stringify(sample);
const bytes = new TextEncoder().encode(text);

function opsPerSec(fn: () => unknown, ms = 1500): number {
  const warm = performance.now();
  while (performance.now() - warm < 300) fn(); // let the JIT settle
  let n = 0;
  const t0 = performance.now();
  let t = t0;
  while (t - t0 < ms) {
    for (let i = 0; i < 1000; i++) fn();
    n += 1000;
    t = performance.now();
  }
  return n / ((t - t0) / 1000);
}

const fmt = (x: number): string => Math.round(x).toLocaleString("en-US").padStart(12);

function compare(label: string, baseline: () => unknown, candidate: () => unknown): void {
  const b = opsPerSec(baseline);
  const c = opsPerSec(candidate);
  console.log(
    `${label.padEnd(46)} baseline ${fmt(b)} ops/s   ours ${fmt(c)} ops/s   ratio ${(b / c).toFixed(2)}`,
  );
}

const decoder = new TextDecoder();
const value = JSON.parse(text) as unknown;
const bigText = JSON.stringify(Array.from({ length: 100 }, (_, i) => ({ ...sample, id: i })));

console.log(`sample: ${bytes.length} bytes; ratio = baseline ops/s / ours ops/s (higher is slower)`);
compare(
  "parseJson(string) vs JSON.parse",
  () => JSON.parse(text),
  () => parseJson(text),
);
compare(
  "parseJson(bytes) vs JSON.parse(decode(bytes))",
  () => JSON.parse(decoder.decode(bytes)),
  () => parseJson(bytes),
);
compare(
  `parseJson vs JSON.parse, ${Math.round(bigText.length / 1024)} KB array`,
  () => JSON.parse(bigText),
  () => parseJson(bigText),
);
compare(
  "canonicalize vs JSON.stringify",
  () => JSON.stringify(value),
  () => canonicalize(value),
);
