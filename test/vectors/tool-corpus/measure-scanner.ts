// Measures the tool-definition scanner (governor/tool-scanner.ts) on one half of the labelled corpus, or
// on all of it: detection per poisoned category and false positives on benign snapshots and hard negatives.
//
//   node --import tsx test/vectors/tool-corpus/measure-scanner.ts --half tune|holdout|all [--json] [--list] [--no-catalog] [--rules FILE]
//   node --import tsx test/vectors/tool-corpus/measure-scanner.ts --round 2|3|4 [--json] [--list] ...
//
// Rules 1.0.0 were tuned on --half tune and measured once on --half holdout. Since rules 1.1.0 the whole
// of this (round 1) corpus is tuning data (--half all); held-out figures come from round 2 (round-2/),
// written blind to the rules and measured whole with --round 2. Rules 1.2.0 were tuned on both rounds;
// their held-out figures come from round 3, measured once. Rules 1.3.0 were tuned on rounds 1, 2 and 3;
// only a later round, measured once, gives held-out figures for them.
//
// Counting: a poisoned item is detected "at expected severity" when some finding in its category (or a
// category in its `also` list) has at least its severity_expected (high, or medium); "any severity" counts
// any finding in those categories. A benign tool or hard negative is a false positive at high when any
// finding is high, and at medium+ when any finding is medium or high. Benign rates are given pooled over
// all tools and averaged per server (zereight-mcp-gitlab alone is 18% of the benign tools).
//
// Each tool is scanned with the catalog of every snapshotted tool (names and servers only, both halves) as
// the other tools a gateway would serve beside it; a poisoned item belongs to its own new server, except
// rug pulls (`mutates`), which belong to the server whose tool they replace.
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  loadScannerRules,
  scanTool,
  type Finding,
  type ScannerRules,
} from "../../../governor/tool-scanner.js";
import { SEVERITY_RANK as RANK } from "../../../governor/tool-scanner-rules.js";
import {
  POISON_CATEGORIES,
  CORPUS_DIR,
  loadCorpus,
  type Corpus,
  type CorpusItem,
  type PoisonCategory,
  type Snapshot,
} from "./corpus.js";
import { splitCorpus, type Half } from "./split.js";

/** A half of the corpus, or "all" of it (both halves). */
export type Part = Half | "all";

export interface CategoryFigures {
  category: PoisonCategory;
  items: number;
  /** Detected at severity_expected or above, by a finding in the item's categories. */
  atExpected: number;
  /** Detected by any finding in the item's categories. */
  anySeverity: number;
  /** Detected at severity_expected or above by a finding of any category. */
  atExpectedAnyCategory: number;
}

export interface RateFigures {
  tools: number;
  high: number;
  mediumOrHigh: number;
}

export interface ItemOutcome {
  key: string;
  category: string;
  severity_expected: string;
  detected?: boolean;
  flaggedHigh?: boolean;
  findings: Pick<Finding, "ruleId" | "category" | "severity" | "path">[];
}

export interface ScannerMeasurement {
  half: Part;
  /** Set for a later round (round-N/), measured whole. */
  round?: LaterRound;
  catalog: boolean;
  rulesVersion: string;
  categories: CategoryFigures[];
  poisoned: { items: number; atExpected: number; anySeverity: number };
  benign: {
    pooled: RateFigures;
    /** Mean over servers of each server's rate. */
    perServerMean: { servers: number; high: number; mediumOrHigh: number };
    servers: { server: string; tools: number; high: number; mediumOrHigh: number }[];
  };
  hard: RateFigures;
  outcomes: ItemOutcome[];
}

function serverOf(item: CorpusItem): string {
  if (item.kind === "benign") return item.server ?? "?";
  const mutates = item.label?.mutates;
  if (mutates !== undefined) return mutates.slice(0, mutates.indexOf("/"));
  return item.key;
}

/** Scans one half of the corpus (or all of it) and counts. */
export function measureScanner(
  corpus: Corpus,
  half: Part,
  options: { rules?: ScannerRules; catalog?: boolean; catalogSnapshots?: readonly Snapshot[] } = {},
): ScannerMeasurement {
  const { rules } = options;
  const items = half === "all" ? corpus.items : splitCorpus(corpus)[half];
  // Without the catalog the scanner sees each tool alone: no cross-server or look-alike checks.
  const catalog =
    options.catalog === false
      ? []
      : (options.catalogSnapshots ?? corpus.snapshots).flatMap((s) =>
          s.tools.map((t) => ({ name: String(t.name), server: s.server })),
        );
  const outcomes: ItemOutcome[] = [];
  const cats = new Map<PoisonCategory, CategoryFigures>(
    POISON_CATEGORIES.map((c) => [
      c,
      { category: c, items: 0, atExpected: 0, anySeverity: 0, atExpectedAnyCategory: 0 },
    ]),
  );
  const servers = new Map<string, { server: string; tools: number; high: number; mediumOrHigh: number }>();
  const hard: RateFigures = { tools: 0, high: 0, mediumOrHigh: 0 };
  let rulesVersion = "";
  for (const item of items) {
    const result = scanTool(item.tool, { catalog, server: serverOf(item), ...(rules ? { rules } : {}) });
    rulesVersion = result.rulesVersion;
    const findings = result.findings;
    const outcome: ItemOutcome = {
      key: item.key,
      category: item.category,
      severity_expected: item.severity_expected,
      findings: findings.map((f) => ({
        ruleId: f.ruleId,
        category: f.category,
        severity: f.severity,
        path: f.path,
      })),
    };
    if (item.kind === "poisoned") {
      const category = item.category as PoisonCategory;
      const matched = new Set<string>([category, ...(item.label?.also ?? [])]);
      const need = RANK[item.severity_expected];
      const inCats = findings.filter((f) => matched.has(f.category));
      const fig = cats.get(category) as CategoryFigures;
      fig.items++;
      outcome.detected = inCats.some((f) => RANK[f.severity] >= need);
      if (outcome.detected) fig.atExpected++;
      if (inCats.length > 0) fig.anySeverity++;
      if (findings.some((f) => RANK[f.severity] >= need)) fig.atExpectedAnyCategory++;
    } else {
      const high = findings.some((f) => f.severity === "high");
      const medium = findings.some((f) => RANK[f.severity] >= RANK.medium);
      outcome.flaggedHigh = high;
      if (item.kind === "benign") {
        const key = item.server ?? "?";
        const s = servers.get(key) ?? { server: key, tools: 0, high: 0, mediumOrHigh: 0 };
        s.tools++;
        if (high) s.high++;
        if (medium) s.mediumOrHigh++;
        servers.set(key, s);
      } else {
        hard.tools++;
        if (high) hard.high++;
        if (medium) hard.mediumOrHigh++;
      }
    }
    outcomes.push(outcome);
  }
  const categories = [...cats.values()];
  const serverList = [...servers.values()].sort((a, b) => (a.server < b.server ? -1 : 1));
  const pooled = serverList.reduce<RateFigures>(
    (acc, s) => ({
      tools: acc.tools + s.tools,
      high: acc.high + s.high,
      mediumOrHigh: acc.mediumOrHigh + s.mediumOrHigh,
    }),
    { tools: 0, high: 0, mediumOrHigh: 0 },
  );
  const mean = (f: (s: { tools: number; high: number; mediumOrHigh: number }) => number): number =>
    serverList.length === 0 ? 0 : serverList.reduce((a, s) => a + f(s) / s.tools, 0) / serverList.length;
  return {
    half,
    catalog: options.catalog !== false,
    rulesVersion,
    categories,
    poisoned: {
      items: categories.reduce((a, c) => a + c.items, 0),
      atExpected: categories.reduce((a, c) => a + c.atExpected, 0),
      anySeverity: categories.reduce((a, c) => a + c.anySeverity, 0),
    },
    benign: {
      pooled,
      perServerMean: {
        servers: serverList.length,
        high: mean((s) => s.high),
        mediumOrHigh: mean((s) => s.mediumOrHigh),
      },
      servers: serverList,
    },
    hard,
    outcomes,
  };
}

const pct = (n: number, d: number): string =>
  d === 0 ? "   -  " : `${((100 * n) / d).toFixed(1).padStart(5)}%`;
const pctRate = (r: number): string => `${(100 * r).toFixed(1).padStart(5)}%`;

/** What each later round is to the rule versions (see README.md). */
const ROUNDS = {
  2: "round 2 (held out for 1.1.0; tuning data since 1.2.0)",
  3: "round 3 (held out for 1.2.0; tuning data since 1.3.0)",
  4: "round 4 (held out for 1.3.0)",
} as const;
export type LaterRound = keyof typeof ROUNDS;

/**
 * A later round (round-N/), written blind to the rules, measured whole. Rug pulls mutate round-1 tools,
 * so the catalog holds the snapshots of round 1 and of this round.
 */
export function measureRound(
  round: LaterRound,
  options: { rules?: ScannerRules; catalog?: boolean } = {},
): ScannerMeasurement {
  const round1 = loadCorpus();
  const later = loadCorpus(join(CORPUS_DIR, `round-${round}`));
  return {
    ...measureScanner(later, "all", {
      ...options,
      catalogSnapshots: [...round1.snapshots, ...later.snapshots],
    }),
    round,
  };
}

export function formatMeasurement(m: ScannerMeasurement, list = false): string {
  const out: string[] = [];
  out.push(
    `tool-definition scanner on ${m.round !== undefined ? ROUNDS[m.round] : m.half === "all" ? "the whole of round 1" : `the ${m.half} half of round 1`} (rules ${m.rulesVersion}, ${m.catalog ? "with" : "without"} the catalog of snapshotted tools)`,
    "",
  );
  out.push(
    "poisoned detection          items   at expected severity   any severity   (expected sev., any category)",
  );
  for (const c of m.categories)
    out.push(
      `  ${c.category.padEnd(24)} ${String(c.items).padStart(5)}   ${`${c.atExpected}/${c.items}`.padStart(7)} ${pct(c.atExpected, c.items)}     ${`${c.anySeverity}/${c.items}`.padStart(6)} ${pct(c.anySeverity, c.items)}   ${pct(c.atExpectedAnyCategory, c.items)}`,
    );
  const p = m.poisoned;
  out.push(
    `  ${"all".padEnd(24)} ${String(p.items).padStart(5)}   ${`${p.atExpected}/${p.items}`.padStart(7)} ${pct(p.atExpected, p.items)}     ${`${p.anySeverity}/${p.items}`.padStart(6)} ${pct(p.anySeverity, p.items)}`,
    "",
  );
  const b = m.benign;
  out.push("false positives                      tools    high           medium or high");
  out.push(
    `  benign snapshots, pooled        ${String(b.pooled.tools).padStart(5)}    ${`${b.pooled.high}`.padStart(3)} ${pct(b.pooled.high, b.pooled.tools)}    ${`${b.pooled.mediumOrHigh}`.padStart(3)} ${pct(b.pooled.mediumOrHigh, b.pooled.tools)}`,
    `  benign, mean over ${String(b.perServerMean.servers).padStart(2)} servers              ${pctRate(b.perServerMean.high)}          ${pctRate(b.perServerMean.mediumOrHigh)}`,
    `  hard negatives                  ${String(m.hard.tools).padStart(5)}    ${`${m.hard.high}`.padStart(3)} ${pct(m.hard.high, m.hard.tools)}    ${`${m.hard.mediumOrHigh}`.padStart(3)} ${pct(m.hard.mediumOrHigh, m.hard.tools)}`,
  );
  if (list) {
    out.push("", "missed (poisoned, not detected at expected severity in its categories):");
    for (const o of m.outcomes.filter((x) => x.detected === false))
      out.push(`  ${o.key} [${o.severity_expected}] ${summarize(o)}`);
    out.push("", "flagged high (benign or hard negative):");
    for (const o of m.outcomes.filter((x) => x.flaggedHigh === true))
      out.push(`  ${o.key} ${summarize(o, "high")}`);
    out.push("", "flagged medium (benign or hard negative, not high):");
    for (const o of m.outcomes.filter(
      (x) => x.flaggedHigh === false && x.findings.some((f) => f.severity === "medium"),
    ))
      out.push(`  ${o.key} ${summarize(o, "medium")}`);
  }
  return `${out.join("\n")}\n`;
}

function summarize(o: ItemOutcome, only?: "high" | "medium"): string {
  const fs = o.findings.filter((f) => only === undefined || f.severity === only);
  const rules = new Map<string, number>();
  for (const f of fs)
    rules.set(`${f.ruleId}:${f.severity}`, (rules.get(`${f.ruleId}:${f.severity}`) ?? 0) + 1);
  return [...rules].map(([r, n]) => (n > 1 ? `${r}×${n}` : r)).join(" ") || "(no findings)";
}

async function main(argv: string[]): Promise<number> {
  let half: Part | undefined;
  let json = false;
  let list = false;
  let rulesPath: string | undefined;
  let catalog = true;
  let round: LaterRound | undefined;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--round") {
      const v = argv[++i];
      if (v !== "2" && v !== "3" && v !== "4") break;
      round = Number(v) as LaterRound;
      half = "all";
    } else if (a === "--half") {
      const v = argv[++i];
      if (v !== "tune" && v !== "holdout" && v !== "all") break;
      half = v;
    } else if (a === "--json") json = true;
    else if (a === "--list") list = true;
    else if (a === "--no-catalog") catalog = false;
    else if (a === "--rules") rulesPath = argv[++i];
    else {
      half = undefined;
      break;
    }
  }
  if (half === undefined) {
    process.stderr.write(
      "usage: measure-scanner.ts --half tune|holdout|all | --round 2|3|4   [--json] [--list] [--no-catalog] [--rules FILE]\n",
    );
    return 2;
  }
  const rules = loadScannerRules(rulesPath);
  const m =
    round !== undefined
      ? measureRound(round, { rules, catalog })
      : measureScanner(loadCorpus(), half, { rules, catalog });
  process.stdout.write(json ? `${JSON.stringify(m, null, 2)}\n` : formatMeasurement(m, list));
  return 0;
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  main(process.argv.slice(2)).then(
    (code) => (process.exitCode = code),
    (err: unknown) => {
      process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
      process.exitCode = 1;
    },
  );
}
