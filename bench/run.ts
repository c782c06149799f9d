/**
 * `npm run bench`: runs every benchmark in its own process, one after the
 * other, so they do not compete for the two cores.
 */
import { spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";

const here = new URL(".", import.meta.url).pathname;
const only = process.argv.slice(2);
const files = readdirSync(here)
  .filter((f) => f.endsWith(".bench.ts"))
  .filter((f) => only.length === 0 || only.some((o) => f.includes(o)))
  .sort();
console.log(`# cmcp benchmarks: node ${process.version}, ${new Date().toISOString()}`);
let failed = 0;
for (const f of files) {
  const r = spawnSync(process.execPath, ["--import", "tsx", `${here}${f}`], { stdio: "inherit" });
  if (r.status !== 0) {
    failed++;
    console.log(`${f} failed with status ${r.status}`);
  }
}
process.exitCode = failed ? 1 : 0;
