// Shape checks for the labelled tool-definition corpus the poisoning scanner is measured on.
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { CORPUS_DIR, POISON_CATEGORIES, checkLabel, loadCorpus } from "./tool-corpus/corpus.js";
import type { CorpusItem } from "./tool-corpus/corpus.js";
import { assignHalves, splitCorpus } from "./tool-corpus/split.js";

const corpus = loadCorpus();
const of = (kind: CorpusItem["kind"]): CorpusItem[] => corpus.items.filter((i) => i.kind === kind);

describe("tool corpus", () => {
  it("has benign snapshots from at least 15 real servers and 300 tools", () => {
    expect(corpus.snapshots.length).toBeGreaterThanOrEqual(15);
    expect(of("benign").length).toBeGreaterThanOrEqual(300);
    for (const s of corpus.snapshots) {
      expect(s.tools.length, s.server).toBeGreaterThan(0);
      expect(s.version, s.server).toMatch(/^\d+\.\d+\.\d+/);
      expect(Number.isNaN(Date.parse(s.captured_at)), s.server).toBe(false);
    }
    expect(new Set(corpus.snapshots.map((s) => s.server)).size).toBe(corpus.snapshots.length);
  });

  it("has at least 60 poisoned items, at least 6 in every category", () => {
    const poisoned = of("poisoned");
    expect(poisoned.length).toBeGreaterThanOrEqual(60);
    for (const c of POISON_CATEGORIES) {
      expect(poisoned.filter((i) => i.category === c).length, c).toBeGreaterThanOrEqual(6);
    }
  });

  it("carries payloads outside descriptions too", () => {
    const places = new Set(of("poisoned").flatMap((i) => i.label?.payload_in ?? []));
    const has = (re: RegExp): boolean => [...places].some((p) => re.test(p));
    expect(has(/^inputSchema\.properties\..*\.description$/)).toBe(true);
    expect(has(/\.enum$/)).toBe(true);
    expect(has(/^title$/)).toBe(true);
    expect(has(/^annotations\./)).toBe(true);
    expect(has(/^name$/)).toBe(true);
  });

  it("points every payload_in path at a field the tool has", () => {
    for (const it of of("poisoned")) {
      for (const path of it.label?.payload_in ?? []) {
        let at: unknown = it.tool;
        for (const part of path.split(".")) {
          at = typeof at === "object" && at !== null ? (at as Record<string, unknown>)[part] : undefined;
        }
        expect(at, `${it.key} ${path}`).toBeDefined();
      }
    }
  });

  it("rejects malformed labels", () => {
    expect(checkLabel({ id: "x", category: "nope", tool: {} }, "poisoned").length).toBeGreaterThan(0);
    expect(
      checkLabel({ id: "x", category: "benign", severity_expected: "high" }, "benign-hard").length,
    ).toBeGreaterThan(0);
  });

  it("names a snapshotted benign tool for every rug-pull mutation", () => {
    const benign = new Set(of("benign").map((i) => i.key));
    for (const it of of("poisoned").filter((i) => i.label?.mutates !== undefined)) {
      expect(benign.has(`benign:${it.label?.mutates ?? ""}`), it.key).toBe(true);
    }
  });

  it("has at least 30 hard benign negatives", () => {
    expect(of("benign-hard").length).toBeGreaterThanOrEqual(30);
  });

  it("splits every stratum into two non-empty, balanced halves", () => {
    const { tune, holdout } = splitCorpus(corpus);
    expect(tune.length + holdout.length).toBe(corpus.items.length);
    for (const c of [...POISON_CATEGORIES, "benign"] as const) {
      const t = tune.filter((i) => i.category === c).length;
      const h = holdout.filter((i) => i.category === c).length;
      expect(t, `${c} tune`).toBeGreaterThan(0);
      expect(h, `${c} holdout`).toBeGreaterThan(0);
    }
    const strata = new Map<string, [number, number]>();
    for (const [half, list] of [
      [0, tune],
      [1, holdout],
    ] as const) {
      for (const it of list) {
        const n = strata.get(it.stratum) ?? [0, 0];
        n[half]++;
        strata.set(it.stratum, n);
      }
    }
    for (const [s, [t, h]] of strata) expect(Math.abs(t - h), s).toBeLessThanOrEqual(1);
  });

  it("split depends only on the keys, not on their order", () => {
    const keys = corpus.items.map(({ key, stratum }) => ({ key, stratum }));
    const a = assignHalves(keys);
    const b = assignHalves([...keys].reverse());
    expect([...a].every(([k, v]) => b.get(k) === v)).toBe(true);
  });
});

describe("later rounds (round-N/), each held out for one rule version", () => {
  const rounds = [2, 3, 4].map((n) => ({ n, corpus: loadCorpus(join(CORPUS_DIR, `round-${n}`)) }));
  const round1Benign = new Set(of("benign").map((i) => i.key));

  it.each(rounds)("round $n loads and has what a measurement needs", ({ corpus: c }) => {
    const kind = (k: CorpusItem["kind"]) => c.items.filter((i) => i.kind === k);
    expect(c.snapshots.length).toBeGreaterThanOrEqual(15);
    expect(kind("benign").length).toBeGreaterThanOrEqual(300);
    expect(kind("benign-hard").length).toBeGreaterThanOrEqual(30);
    for (const cat of POISON_CATEGORIES)
      expect(kind("poisoned").filter((i) => i.category === cat).length, cat).toBeGreaterThanOrEqual(10);
    // Rug pulls mutate round-1 tools, which the measurement puts in the catalog.
    for (const it of kind("poisoned").filter((i) => i.label?.mutates !== undefined))
      expect(round1Benign.has(`benign:${it.label?.mutates ?? ""}`), it.key).toBe(true);
  });

  it("never repeats a server or a hand-written id across rounds", () => {
    const servers = [corpus, ...rounds.map((r) => r.corpus)].flatMap((c) => c.snapshots.map((s) => s.package));
    expect(new Set(servers).size).toBe(servers.length);
    const ids = [corpus, ...rounds.map((r) => r.corpus)].flatMap((c) =>
      c.items.filter((i) => i.kind !== "benign").map((i) => i.key),
    );
    expect(new Set(ids).size).toBe(ids.length);
  });
});
