// Deterministic tune/holdout split of the tool corpus. Within each stratum (a poisoned category, the
// hard negatives, or one snapshotted server) items are ordered by SHA-256 of their key and dealt
// alternately, so every stratum is balanced to within one item and the result depends only on the
// keys: no randomness, no file order. The deal starts on the half given by the parity of the first
// byte of SHA-256("stratum:" + name), so odd-sized strata do not all favour "tune".
import { createHash } from "node:crypto";
import type { Corpus, CorpusItem } from "./corpus.js";

export type Half = "tune" | "holdout";

export interface SplitKey {
  key: string;
  stratum: string;
}

function sha256(s: string): Buffer {
  return createHash("sha256").update(s, "utf8").digest();
}

/** Assigns every key to a half, balanced per stratum. */
export function assignHalves(items: readonly SplitKey[]): Map<string, Half> {
  const strata = new Map<string, { key: string; hash: string }[]>();
  for (const { key, stratum } of items) {
    const list = strata.get(stratum) ?? [];
    list.push({ key, hash: sha256(key).toString("hex") });
    strata.set(stratum, list);
  }
  const out = new Map<string, Half>();
  for (const [stratum, list] of strata) {
    list.sort((a, b) => (a.hash < b.hash ? -1 : a.hash > b.hash ? 1 : a.key < b.key ? -1 : 1));
    const offset = (sha256(`stratum:${stratum}`)[0] ?? 0) & 1;
    list.forEach(({ key }, i) => out.set(key, (i + offset) % 2 === 0 ? "tune" : "holdout"));
  }
  return out;
}

export interface SplitCorpus {
  tune: CorpusItem[];
  holdout: CorpusItem[];
}

/** Splits a loaded corpus (see corpus.ts loadCorpus) into its two halves. */
export function splitCorpus(corpus: Corpus): SplitCorpus {
  const halves = assignHalves(corpus.items);
  const tune: CorpusItem[] = [];
  const holdout: CorpusItem[] = [];
  for (const it of corpus.items) (halves.get(it.key) === "tune" ? tune : holdout).push(it);
  return { tune, holdout };
}
