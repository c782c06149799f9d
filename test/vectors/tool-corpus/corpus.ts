// Loader and label checks for the labelled tool-definition corpus (see README.md beside this file).
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { CATEGORIES, type Category } from "../../../governor/tool-scanner-rules.js";

/**
 * The scanner categories of issue 5, one id each: the scanner's own list, so a label and a
 * finding name a category the same way (a category the scanner drops makes its labels fail here).
 */
export const POISON_CATEGORIES = CATEGORIES;
export type PoisonCategory = Category;

export type Severity = "high" | "medium" | "none";

export interface Source {
  title: string;
  url: string;
}

/** One hand-written item (poisoned/*.json and benign-hard/*.json hold arrays of these). */
export interface LabelledTool {
  id: string;
  category: PoisonCategory | "benign";
  /** Poisoned: the least severity a scanner should report. Hard negatives: "none" (nothing at high). */
  severity_expected: Severity;
  technique: string;
  source: Source;
  /** Other categories the item also exhibits (a finding in any of them still counts as detection). */
  also?: PoisonCategory[];
  /** Definition fields carrying the payload, as dotted paths into `tool`. */
  payload_in?: string[];
  /** Rug-pull items: the snapshotted benign tool ("<server>/<tool>") this definition is a mutation of. */
  mutates?: string;
  tool: Record<string, unknown>;
}

/** One benign/<server>.json snapshot written by snapshot-servers.ts. */
export interface Snapshot {
  server: string;
  package: string;
  version: string;
  captured_at: string;
  tools: Record<string, unknown>[];
}

export type ItemKind = "benign" | "benign-hard" | "poisoned";

/** A corpus entry with the key the split hashes and the stratum it is balanced within. */
export interface CorpusItem {
  key: string;
  kind: ItemKind;
  category: PoisonCategory | "benign";
  /** Poisoned: the category; hard negatives: "benign-hard"; snapshots: "benign:<server>". */
  stratum: string;
  severity_expected: Severity;
  tool: Record<string, unknown>;
  file: string;
  label?: LabelledTool;
  server?: string;
}

export interface Corpus {
  snapshots: Snapshot[];
  items: CorpusItem[];
}

export const CORPUS_DIR = dirname(fileURLToPath(import.meta.url));

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function jsonFiles(dir: string): string[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  return names
    .filter((n) => n.endsWith(".json"))
    .sort()
    .map((n) => join(dir, n));
}

/** Problems with one tool object as MCP defines it (name, inputSchema object); empty when fine. */
export function checkToolShape(tool: unknown): string[] {
  if (!isRecord(tool)) return ["tool is not an object"];
  const errs: string[] = [];
  if (typeof tool.name !== "string" || tool.name.length === 0) errs.push("tool.name missing");
  if (tool.description !== undefined && typeof tool.description !== "string")
    errs.push("tool.description not a string");
  if (!isRecord(tool.inputSchema)) errs.push("tool.inputSchema missing");
  return errs;
}

/** Problems with one hand-written label; empty when fine. */
export function checkLabel(x: unknown, kind: "benign-hard" | "poisoned"): string[] {
  if (!isRecord(x)) return ["item is not an object"];
  const errs: string[] = [];
  const where = typeof x.id === "string" ? x.id : "?";
  if (typeof x.id !== "string" || !/^[a-z0-9][a-z0-9-]*$/.test(x.id)) errs.push(`${where}: bad id`);
  if (typeof x.technique !== "string" || x.technique.length < 3) errs.push(`${where}: technique missing`);
  const src = x.source;
  if (
    !isRecord(src) ||
    typeof src.title !== "string" ||
    typeof src.url !== "string" ||
    !/^https:\/\//.test(src.url)
  )
    errs.push(`${where}: source needs title and https url`);
  if (kind === "poisoned") {
    if (!POISON_CATEGORIES.includes(x.category as PoisonCategory)) errs.push(`${where}: bad category`);
    if (x.severity_expected !== "high" && x.severity_expected !== "medium")
      errs.push(`${where}: bad severity`);
  } else {
    if (x.category !== "benign") errs.push(`${where}: hard negatives have category "benign"`);
    if (x.severity_expected !== "none") errs.push(`${where}: hard negatives expect severity "none"`);
  }
  if (x.also !== undefined) {
    if (!Array.isArray(x.also) || !x.also.every((c) => POISON_CATEGORIES.includes(c as PoisonCategory)))
      errs.push(`${where}: bad also`);
  }
  if (
    x.payload_in !== undefined &&
    !(Array.isArray(x.payload_in) && x.payload_in.every((p) => typeof p === "string"))
  )
    errs.push(`${where}: bad payload_in`);
  if (x.mutates !== undefined && (typeof x.mutates !== "string" || !x.mutates.includes("/")))
    errs.push(`${where}: mutates must be "<server>/<tool>"`);
  errs.push(...checkToolShape(x.tool).map((e) => `${where}: ${e}`));
  return errs;
}

function readJson(file: string): unknown {
  return JSON.parse(readFileSync(file, "utf8")) as unknown;
}

/** Loads every corpus file under dir; throws with all problems found when a file is malformed. */
export function loadCorpus(dir: string = CORPUS_DIR): Corpus {
  const errs: string[] = [];
  const snapshots: Snapshot[] = [];
  const items: CorpusItem[] = [];

  for (const file of jsonFiles(join(dir, "benign"))) {
    const doc = readJson(file);
    if (
      !isRecord(doc) ||
      typeof doc.server !== "string" ||
      typeof doc.package !== "string" ||
      typeof doc.version !== "string" ||
      typeof doc.captured_at !== "string" ||
      !Array.isArray(doc.tools)
    ) {
      errs.push(`${file}: not a snapshot`);
      continue;
    }
    const snap = doc as unknown as Snapshot;
    snapshots.push(snap);
    for (const tool of snap.tools) {
      const shape = checkToolShape(tool);
      if (shape.length > 0) {
        errs.push(...shape.map((e) => `${file}: ${e}`));
        continue;
      }
      items.push({
        key: `benign:${snap.server}/${String(tool.name)}`,
        kind: "benign",
        category: "benign",
        stratum: `benign:${snap.server}`,
        severity_expected: "none",
        tool,
        file,
        server: snap.server,
      });
    }
  }

  for (const kind of ["poisoned", "benign-hard"] as const) {
    for (const file of jsonFiles(join(dir, kind))) {
      const doc = readJson(file);
      if (!Array.isArray(doc)) {
        errs.push(`${file}: expected an array of labelled tools`);
        continue;
      }
      for (const x of doc) {
        const e = checkLabel(x, kind);
        if (e.length > 0) {
          errs.push(...e.map((m) => `${file}: ${m}`));
          continue;
        }
        const label = x as LabelledTool;
        items.push({
          key: `${kind}:${label.id}`,
          kind,
          category: label.category,
          stratum: kind === "poisoned" ? label.category : "benign-hard",
          severity_expected: label.severity_expected,
          tool: label.tool,
          file,
          label,
        });
      }
    }
  }

  const seen = new Set<string>();
  for (const it of items) {
    if (seen.has(it.key)) errs.push(`duplicate key ${it.key}`);
    seen.add(it.key);
  }
  if (errs.length > 0) throw new Error(`tool corpus is malformed:\n${errs.join("\n")}`);
  return { snapshots, items };
}
