/**
 * Loads and compiles the scanner rules file (policies/scanner-rules.json,
 * format cmcp.scanner-rules.v1). Rules are data: the file holds patterns,
 * keyword lists, thresholds, severities and explanations; this module checks
 * the file against its JSON Schema, refuses any regular expression that could
 * backtrack super-linearly, and compiles each rule for the scanner.
 * Every fault names the rule it was found in.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Ajv2020, type ValidateFunction } from "ajv/dist/2020.js";
import { CmcpError, isCmcpError } from "../artifacts/errors.js";
import { parseJson } from "../artifacts/strict-json.js";
import rulesSchema from "../policies/scanner-rules.schema.json" with { type: "json" };
import { policiesRoot } from "./cedar-bundle.js";
import { isKnownScript } from "./tool-scanner-text.js";

export const SCANNER_RULES_FORMAT = "cmcp.scanner-rules.v1";

export const CATEGORIES = [
  "model-instructions",
  "hidden-markup",
  "shadowing",
  "sensitive-paths",
  "exfiltration-urls",
  "deceptive-unicode",
  "encoded-blobs",
  "abnormal-length",
] as const;
export type Category = (typeof CATEGORIES)[number];

export type Severity = "low" | "medium" | "high";
export type SeverityOrNone = Severity | "none";
export const SEVERITY_RANK: Readonly<Record<SeverityOrNone, number>> = {
  none: 0,
  low: 1,
  medium: 2,
  high: 3,
};

/**
 * Where a string sits in a tool definition. Identifier roles (name, property-name) are
 * matched on their word view (`read_the_file` reads "read the file").
 */
export const FIELD_ROLES = [
  "name",
  "title",
  "description",
  "property-name",
  "value",
  "keyword",
  "other",
] as const;
export type FieldRole = (typeof FIELD_ROLES)[number];
/** Roles text rules look at when a rule names none: everything but schema keywords ("type", "$ref", ...). */
const DEFAULT_ROLES: readonly FieldRole[] = [
  "name",
  "title",
  "description",
  "property-name",
  "value",
  "other",
];

// ---- the file as written ------------------------------------------------------------------------

interface RuleBase {
  id: string;
  category: Category;
  severity: Severity;
  title: string;
  explanation: string;
  fields?: FieldRole[];
  /**
   * A pattern the field's JSON path must match (e.g. only defaults and enum values of a
   * recipient-like parameter); paths are written by the scanner, as in findings.
   */
  path?: string;
  enabled?: boolean;
}
export interface WindowDef {
  pattern: string;
  before?: number;
  after?: number;
}
export interface RegexRuleDef extends RuleBase {
  kind: "regex";
  patterns: string[];
  caseSensitive?: boolean;
  near?: WindowDef[];
  unless?: WindowDef[];
}
export interface KeywordsRuleDef extends RuleBase {
  kind: "keywords";
  words: string[];
  caseSensitive?: boolean;
}
export type UnicodeException =
  "emoji-tag-sequence" | "emoji-zwj-sequence" | "emoji-presentation" | "joiner-in-script";
export interface UnicodeRuleDef extends RuleBase {
  kind: "unicode";
  check: "chars" | "mixed-script" | "compatibility-form";
  chars?: string;
  except?: UnicodeException[];
  decode?: "tags" | "variation-selectors";
  identifierSeverity?: Severity;
  highAtCount?: number;
  /** compatibility-form: severity when a field's look-alike runs spell wordMinLetters letters or more. */
  wordSeverity?: Severity;
  wordMinLetters?: number;
  scripts?: string[];
  allowedCombinations?: string[][];
}
export type BlobEncoding = "base64" | "base32" | "hex" | "percent" | "escapes" | "rot13" | "reversed";
export interface EntropyBlobRuleDef extends RuleBase {
  kind: "entropy-blob";
  encoding: BlobEncoding;
  minLength: number;
  minEntropy?: number;
  blobSeverity: SeverityOrNone;
  textMinWords: number;
  commonWords?: string[];
}
export type LengthMeasure =
  "chars" | "padding-run" | "enum-values" | "properties" | "schema-depth" | "definition-bytes";
export interface LengthRuleDef extends RuleBase {
  kind: "length";
  measure: LengthMeasure;
  thresholds: { atLeast: number; severity: Severity }[];
}
export interface CrossReferenceRuleDef extends RuleBase {
  kind: "cross-reference";
  check: "catalog-mention" | "name-collision" | "lookalike-name";
  context?: string;
  window?: number;
  contextSeverity?: Severity;
  siblingSeverity?: SeverityOrNone;
  minNameLength?: number;
}
/** Escalates when several other rules report in the same field: independent weak signals add up. */
export interface CombinationRuleDef extends RuleBase {
  kind: "combination";
  /** Findings of these categories count. */
  categories: Category[];
  /** Distinct rules that must have reported in one field. */
  minRules: number;
  /** Least severity a finding needs to count. */
  minSeverity: Severity;
  /** Groups of rule ids that are one signal: reporting together, they count once. */
  sameSignal?: string[][];
  /** At least one counted finding must be of one of these categories. */
  requires?: Category[];
  /** Only findings that start this many characters or more into their field count (0: all). */
  minStart?: number;
}
export type RuleDef =
  | RegexRuleDef
  | KeywordsRuleDef
  | UnicodeRuleDef
  | EntropyBlobRuleDef
  | LengthRuleDef
  | CrossReferenceRuleDef
  | CombinationRuleDef;

export interface RulesFile {
  format: typeof SCANNER_RULES_FORMAT;
  version: string;
  description?: string;
  vocabulary?: Record<string, { words: string[] } | { pattern: string }>;
  rules: RuleDef[];
}

// ---- compiled ------------------------------------------------------------------------------------

interface CompiledBase {
  id: string;
  category: Category;
  severity: Severity;
  title: string;
  explanation: string;
  roles: ReadonlySet<FieldRole>;
  /** When set, only fields whose path matches are read. */
  path: RegExp | null;
}
/** A context pattern tested on the text around a match. */
export interface CompiledWindow {
  regex: RegExp;
  before: number;
  after: number;
}
export type CompiledRule =
  | (CompiledBase & { kind: "regex"; regexes: RegExp[]; near: CompiledWindow[]; unless: CompiledWindow[] })
  | (CompiledBase & { kind: "keywords"; regex: RegExp; near: CompiledWindow[]; unless: CompiledWindow[] })
  | (CompiledBase & {
      kind: "unicode";
      check: UnicodeRuleDef["check"];
      chars: RegExp | null;
      except: ReadonlySet<UnicodeException>;
      decode: UnicodeRuleDef["decode"];
      identifierSeverity: Severity;
      highAtCount: number;
      wordSeverity: Severity | undefined;
      wordMinLetters: number;
      scripts: string[];
      allowed: string[][];
    })
  | (CompiledBase & {
      kind: "entropy-blob";
      encoding: BlobEncoding;
      minLength: number;
      minEntropy: number;
      blobSeverity: SeverityOrNone;
      textMinWords: number;
      commonWords: ReadonlySet<string>;
    })
  | (CompiledBase & {
      kind: "length";
      measure: LengthMeasure;
      thresholds: { atLeast: number; severity: Severity }[];
    })
  | (CompiledBase & {
      kind: "cross-reference";
      check: CrossReferenceRuleDef["check"];
      context: RegExp | null;
      window: number;
      contextSeverity: Severity;
      siblingSeverity: SeverityOrNone;
      minNameLength: number;
    })
  | (CompiledBase & {
      kind: "combination";
      categories: ReadonlySet<Category>;
      minRules: number;
      minSeverity: Severity;
      /** Rule id to the id standing for its sameSignal group (rules not in a group map to themselves). */
      signalOf: ReadonlyMap<string, string>;
      requires: ReadonlySet<Category>;
      minStart: number;
    });

export interface ScannerRules {
  format: typeof SCANNER_RULES_FORMAT;
  version: string;
  rules: CompiledRule[];
}

// ---- regular-expression safety ----------------------------------------------------------------

/** Largest bounded repeat a rule may write ({0,N}). */
export const MAX_REPEAT = 300;
/**
 * Upper bound on the backtracking steps a pattern may take per start position, as
 * estimated by patternCost. Real rules stay far below it; it refuses patterns that chain
 * several wide gaps, whose worst case grows with the product of the gaps.
 */
export const MAX_PATTERN_COST = 250_000;

/**
 * work: steps to try the node at one position; ways: how many distinct ways it can match
 * there (each one re-runs what follows on backtracking); literal: its text when it is a
 * plain string, so an alternation of words counts only the words that prefix each other.
 */
interface Cost {
  work: number;
  ways: number;
  quantified: boolean;
  literal: string | null;
  /** Source of a one-character atom (a character, escape or class), for disjointness tests. */
  single?: string;
  /** Least repetitions of that atom (1 when not quantified). */
  min?: number;
}

// Code points sampled to decide that two ASCII classes cannot match the same character;
// with the i and u flags K and S also match U+212A and U+017F, and Ω matches U+2126.
const SAMPLE: string[] = [];
for (let cp = 0; cp < 0x300; cp++) SAMPLE.push(String.fromCodePoint(cp));
SAMPLE.push("\u212a", "\u2126", "\u017f");

function atomTester(single: string): RegExp | null {
  try {
    return new RegExp(`^${single}$`, "iu");
  } catch {
    return null;
  }
}

/**
 * True when no character matches both one-character atoms. Exact when one side is a plain
 * character; for two classes only when both are positive classes without property escapes
 * (sampled over Latin code points); otherwise assumed to overlap.
 */
function disjoint(a: string, b: string): boolean {
  const ta = atomTester(a);
  const tb = atomTester(b);
  if (ta === null || tb === null) return false;
  const plain = (x: string): string | null =>
    x.length === 1 ? x : /^\\[^A-Za-z0-9]$/.test(x) ? (x[1] as string) : null;
  const ca = plain(a);
  const cb = plain(b);
  if (ca !== null) return !tb.test(ca) && !ta.test(cb ?? "\u0000");
  if (cb !== null) return !ta.test(cb);
  const simple = (x: string): boolean => x.startsWith("[") && !x.startsWith("[^") && !/\\[pPSWD]/.test(x);
  if (!simple(a) || !simple(b)) return false;
  return !SAMPLE.some((ch) => ta.test(ch) && tb.test(ch));
}

const CAP = 1e15;
const capped = (n: number): number => (n > CAP ? CAP : n);

/** Longest chain of words each a prefix of the next: how many of them can match at one spot. */
function prefixChain(words: string[]): number {
  const sorted = [...new Set(words)].sort((a, b) => a.length - b.length);
  const best: number[] = [];
  let top = 1;
  sorted.forEach((w, i) => {
    let b = 1;
    for (let j = 0; j < i; j++)
      if (w.startsWith(sorted[j] as string)) b = Math.max(b, (best[j] as number) + 1);
    best.push(b);
    top = Math.max(top, b);
  });
  return top;
}

class PatternLint {
  i = 0;
  constructor(private readonly src: string) {}

  fail(msg: string): never {
    throw new Error(msg);
  }

  alternation(): Cost {
    const branches: Cost[] = [];
    for (;;) {
      branches.push(this.sequence());
      if (this.src[this.i] !== "|") break;
      this.i++;
    }
    if (branches.length === 1) return branches[0] as Cost;
    const work = capped(branches.reduce((a, b) => a + b.work, 0));
    const quantified = branches.some((b) => b.quantified);
    const literals = branches.map((b) => b.literal);
    if (literals.every((l): l is string => l !== null))
      return { work, ways: prefixChain(literals), quantified, literal: null };
    return { work, ways: capped(branches.reduce((a, b) => a + b.ways, 0)), quantified, literal: null };
  }

  sequence(): Cost {
    let work = 0;
    let ways = 1;
    let quantified = false;
    let literal: string | null = "";
    const terms: Cost[] = [];
    while (this.i < this.src.length && this.src[this.i] !== "|" && this.src[this.i] !== ")")
      terms.push(this.term());
    terms.forEach((t, k) => {
      // A repeat followed by a character it cannot match stops in one place: no backtracking.
      const next = terms[k + 1];
      const tWays =
        t.single !== undefined &&
        next?.single !== undefined &&
        (next.min ?? 1) >= 1 &&
        disjoint(t.single, next.single)
          ? 1
          : t.ways;
      work = capped(work + t.work * ways);
      ways = capped(ways * tWays);
      quantified ||= t.quantified;
      literal = literal !== null && t.literal !== null ? literal + t.literal : null;
    });
    return { work: Math.max(work, 1), ways, quantified, literal };
  }

  term(): Cost {
    const src = this.src;
    const at = this.i;
    const c = src[this.i] as string;
    let atom: Cost & { group: boolean };
    if (c === "\\") {
      const n = src[this.i + 1] ?? "";
      if (/[1-9]/.test(n)) this.fail(`backreference "\\${n}" at offset ${at}`);
      if (n === "k") this.fail(`named backreference at offset ${at}`);
      let literal: string | null = null;
      const zeroWidth = n === "b" || n === "B";
      if ((n === "p" || n === "P" || n === "u") && src[this.i + 2] === "{") {
        const close = src.indexOf("}", this.i + 3);
        if (close < 0) this.fail(`unterminated escape at offset ${at}`);
        this.i = close + 1;
      } else if (n === "u") this.i += 6;
      else if (n === "x") this.i += 4;
      else if (n === "c") this.i += 3;
      else {
        if (/[^A-Za-z0-9]/.test(n)) literal = n;
        this.i += 2;
      }
      atom = { work: 1, ways: 1, quantified: false, literal, group: false };
      if (!zeroWidth) atom.single = src.slice(at, this.i);
    } else if (c === "[") {
      let j = this.i + 1;
      if (src[j] === "^") j++;
      if (src[j] === "]") j++;
      while (j < src.length && src[j] !== "]") j += src[j] === "\\" ? 2 : 1;
      if (j >= src.length) this.fail(`unterminated character class at offset ${at}`);
      this.i = j + 1;
      atom = {
        work: 1,
        ways: 1,
        quantified: false,
        literal: null,
        group: false,
        single: src.slice(at, this.i),
      };
    } else if (c === "(") {
      let capture = false;
      if (src.startsWith("(?:", this.i)) this.i += 3;
      else if (src.startsWith("(?=", this.i) || src.startsWith("(?!", this.i)) this.i += 3;
      else if (src.startsWith("(?<=", this.i) || src.startsWith("(?<!", this.i)) this.i += 4;
      else if (src.startsWith("(?<", this.i)) {
        const close = src.indexOf(">", this.i);
        if (close < 0) this.fail(`unterminated group name at offset ${at}`);
        this.i = close + 1;
      } else {
        this.i += 1;
        capture = true;
      }
      const lookaround = !capture && src[at + 2] !== ":" && src[at + 2] !== "<";
      const lookbehind = src.startsWith("(?<=", at) || src.startsWith("(?<!", at);
      const inner = this.alternation();
      if (src[this.i] !== ")") this.fail(`unbalanced "(" at offset ${at}`);
      this.i++;
      // Lookarounds are atomic: tried once, they do not multiply what follows.
      atom =
        lookaround || lookbehind
          ? { work: inner.work, ways: 1, quantified: inner.quantified, literal: null, group: true }
          : { ...inner, group: true };
    } else if (c === "*" || c === "+" || c === "?" || c === "{") {
      return this.fail(`quantifier "${c}" at offset ${at} has nothing to repeat`);
    } else {
      this.i++;
      const anchor = c === "^" || c === "$";
      atom = {
        work: 1,
        ways: 1,
        quantified: false,
        literal: anchor || c === "." ? null : c.toLowerCase(),
        group: false,
      };
      if (!anchor) atom.single = c;
    }
    const q = src[this.i];
    let min = 0;
    let max: number | null = null;
    let text = "";
    if (q === "*" || q === "+")
      this.fail(`unbounded quantifier "${q}" at offset ${this.i} (write {0,N} with N <= ${MAX_REPEAT})`);
    if (q === "?") {
      max = 1;
      text = "?";
      this.i++;
    } else if (q === "{") {
      const m = /^\{(\d{1,6})(,(\d{0,6}))?\}/.exec(src.slice(this.i, this.i + 16));
      if (!m) return this.fail(`malformed repeat at offset ${this.i}`);
      if (m[2] !== undefined && (m[3] ?? "") === "")
        this.fail(`unbounded quantifier "${m[0]}" at offset ${this.i} (write {n,N} with N <= ${MAX_REPEAT})`);
      min = Number(m[1]);
      max = Number(m[3] ?? m[1]);
      text = m[0];
      this.i += m[0].length;
    }
    if (max === null) return { ...atom, min: 1 };
    if (src[this.i] === "?") this.i++; // lazy
    if (src[this.i] === "*" || src[this.i] === "+" || src[this.i] === "{" || src[this.i] === "?")
      this.fail(`stacked quantifiers at offset ${this.i}`);
    if (max > MAX_REPEAT) this.fail(`repeat "${text}" at offset ${at} exceeds ${MAX_REPEAT}`);
    if (atom.group) {
      // A repeated group can match the same text in exponentially many ways.
      if (max > 1)
        this.fail(
          `quantifier "${text}" on a group at offset ${at}: only an optional group (...)? is allowed`,
        );
      return { work: atom.work + 1, ways: atom.ways + 1, quantified: true, literal: null };
    }
    return {
      work: max + 1,
      ways: max - min + 1,
      quantified: true,
      literal: null,
      ...(atom.single !== undefined ? { single: atom.single } : {}),
      min,
    };
  }
}

/**
 * Refuses patterns whose matching time could grow faster than linearly in the input:
 * unbounded quantifiers (*, +, {n,}), repeated groups (only an optional group is allowed),
 * backreferences, and patterns whose estimated backtracking per start position exceeds
 * MAX_PATTERN_COST. Returns the problem, or null.
 */
export function lintPattern(src: string): string | null {
  return patternCost(src).problem;
}

/** The estimated per-position cost of a pattern, or the reason it is refused. */
export function patternCost(src: string): { cost: number; problem: string | null } {
  const lint = new PatternLint(src);
  try {
    const r = lint.alternation();
    if (lint.i < src.length) lint.fail(`unbalanced ")" at offset ${lint.i}`);
    if (r.work > MAX_PATTERN_COST)
      return {
        cost: r.work,
        problem: `estimated backtracking of ${r.work.toExponential(1)} steps per position exceeds ${MAX_PATTERN_COST}; narrow the gaps`,
      };
    return { cost: r.work, problem: null };
  } catch (err) {
    return { cost: Infinity, problem: (err as Error).message };
  }
}

// ---- loading ------------------------------------------------------------------------------------

// Compiled on first use: importers that never load rules (the gateway, through catalog.ts) skip it.
let validateRulesFile: ValidateFunction<RulesFile> | undefined;
function rulesFileValidator(): ValidateFunction<RulesFile> {
  validateRulesFile ??= new Ajv2020({
    strict: true,
    strictRequired: false,
    allErrors: false,
    discriminator: true,
  }).compile<RulesFile>(rulesSchema);
  return validateRulesFile;
}

/** Size and shape limits for a rules file (it is policy data, but still parsed strictly). */
export const RULES_JSON_LIMITS = {
  maxBytes: 1024 * 1024,
  maxDepth: 12,
  maxStringLength: 8 * 1024,
  maxMembers: 4096,
};

/** The shipped rules file: policies/scanner-rules.json, found from this module in source and in dist/. */
export function defaultRulesPath(): string {
  return join(policiesRoot(), "scanner-rules.json");
}

/**
 * Reads, validates and compiles a rules file; throws CmcpError("scanner.rules") naming the fault.
 * Without a path: the shipped rules (defaultScannerRules).
 */
export function loadScannerRules(path?: string): ScannerRules {
  return path === undefined ? defaultScannerRules() : readRulesFile(path);
}

function readRulesFile(path: string): ScannerRules {
  let bytes: Uint8Array;
  try {
    bytes = readFileSync(path);
  } catch (err) {
    throw new CmcpError("scanner.rules", `cannot read rules file ${path}: ${(err as Error).message}`);
  }
  return parseScannerRules(bytes, path);
}

let cachedDefault: ScannerRules | undefined;
/** The shipped rules, loaded once per process. */
export function defaultScannerRules(): ScannerRules {
  cachedDefault ??= readRulesFile(defaultRulesPath());
  return cachedDefault;
}

/** Validates and compiles rules from JSON text or bytes; `source` names the file in messages. */
export function parseScannerRules(input: string | Uint8Array, source = "rules file"): ScannerRules {
  let doc: unknown;
  try {
    doc = parseJson(input, RULES_JSON_LIMITS);
  } catch (err) {
    const msg = isCmcpError(err) ? err.message : String(err);
    throw new CmcpError("scanner.rules", `${source}: not valid JSON: ${msg}`);
  }
  const validate = rulesFileValidator();
  if (!validate(doc)) {
    // The schema also refuses settings that do nothing; the settings check says why in words.
    // On a file too malformed for it, the schema's own message stands.
    try {
      if (Array.isArray((doc as { rules?: unknown } | null)?.rules))
        checkRuleSettings(doc as RulesFile, source);
    } catch (err) {
      if (isCmcpError(err)) throw err;
    }
    const e = validate.errors?.[0];
    const where = e ? describeLocation(doc, e.instancePath) : "";
    throw new CmcpError(
      "scanner.rules",
      `${source}: ${where}${e ? `${e.instancePath || "/"} ${e.message ?? "is invalid"}` : "is invalid"}`,
    );
  }
  return compileRules(doc, source);
}

/** "rule \"id\" (rules[3]): " when the path points into a rule. */
function describeLocation(doc: unknown, instancePath: string): string {
  const m = /^\/rules\/(\d+)/.exec(instancePath);
  if (!m) return "";
  const index = Number(m[1]);
  const rules = (doc as { rules?: unknown }).rules;
  const rule = Array.isArray(rules) ? (rules[index] as { id?: unknown } | undefined) : undefined;
  const id = rule && typeof rule.id === "string" ? `rule "${rule.id}" ` : "rule ";
  return `${id}(rules[${index}]): `;
}

function escapeRegex(s: string): string {
  return s.replace(/[\\^$.*+?()[\]{}|/]/g, "\\$&");
}

function wordsAlternation(words: readonly string[]): string {
  return `(?:${[...words]
    .sort((a, b) => b.length - a.length)
    .map(escapeRegex)
    .join("|")})`;
}

/** Length measures that read fields (and so honour `path`); the others measure the whole definition. */
const FIELD_MEASURES: ReadonlySet<LengthMeasure> = new Set(["chars", "padding-run"]);

/**
 * Checks that need every rule of the file at once, or settings the schema accepts but the scanner
 * would ignore: a setting that does nothing is a mistake a reviewer should hear about. Runs before
 * compiling, over disabled rules too; every fault names its rule.
 */
function checkRuleSettings(file: RulesFile, source: string): void {
  const byId = new Map<string, RuleDef>();
  for (const def of file.rules) if (!byId.has(def.id)) byId.set(def.id, def);
  file.rules.forEach((def, index) => {
    const fail = (msg: string): never => {
      throw new CmcpError("scanner.rules", `${source}: rule "${def.id}" (rules[${index}]): ${msg}`);
    };
    switch (def.kind) {
      case "unicode":
        if (def.check !== "compatibility-form") {
          if (def.wordSeverity !== undefined)
            fail(`"wordSeverity" only applies to check "compatibility-form", not "${def.check}"`);
          if (def.wordMinLetters !== undefined)
            fail(`"wordMinLetters" only applies to check "compatibility-form", not "${def.check}"`);
        }
        if (def.wordMinLetters !== undefined && def.wordSeverity === undefined)
          fail('"wordMinLetters" without "wordSeverity" does nothing');
        break;
      case "entropy-blob": {
        const transform = def.encoding === "rot13" || def.encoding === "reversed";
        if (transform && def.minEntropy !== undefined)
          fail(`"minEntropy" does not apply to encoding "${def.encoding}" (it is judged by commonWords)`);
        if (!transform && def.commonWords !== undefined)
          fail(`"commonWords" only applies to encodings "rot13" and "reversed", not "${def.encoding}"`);
        break;
      }
      case "length":
        if (def.path !== undefined && !FIELD_MEASURES.has(def.measure))
          fail(`"path" is ignored by measure "${def.measure}", which reads the whole definition`);
        break;
      case "combination": {
        if (def.path !== undefined)
          fail('"path" is ignored by a combination (it reads other rules\' findings)');
        if (def.minRules < 2 && (def.minStart ?? 0) === 0)
          fail("minRules 1 needs minStart: otherwise the combination only repeats other rules' findings");
        for (const c of def.requires ?? [])
          if (!def.categories.includes(c))
            fail(`requires category "${c}", which the combination does not count`);
        const categories = new Set<string>(def.categories);
        const signalOf = new Map<string, string>();
        for (const group of def.sameSignal ?? [])
          for (const id of group) {
            if (signalOf.has(id)) fail(`rule "${id}" is in two sameSignal groups`);
            signalOf.set(id, group[0] as string);
          }
        for (const group of def.sameSignal ?? [])
          for (const id of group) {
            const other = byId.get(id);
            if (other === undefined) fail(`sameSignal names unknown rule "${id}"`);
            const o = other as RuleDef;
            if (o.enabled === false) fail(`sameSignal names disabled rule "${id}"`);
            if (o.kind === "combination") fail(`sameSignal names combination "${id}"`);
            if (!categories.has(o.category))
              fail(
                `sameSignal names rule "${id}" of category "${o.category}", which this combination does not count`,
              );
          }
        // Distinct signals the enabled rules of these categories can ever give.
        const signals = new Set<string>();
        for (const r of file.rules)
          if (r.enabled !== false && r.kind !== "combination" && categories.has(r.category))
            signals.add(signalOf.get(r.id) ?? r.id);
        if (signals.size < def.minRules)
          fail(
            `minRules ${def.minRules} can never be reached: the counted categories give ${signals.size} distinct signal${signals.size === 1 ? "" : "s"} (sameSignal groups count once)`,
          );
        break;
      }
      default:
        break;
    }
  });
}

function compileRules(file: RulesFile, source: string): ScannerRules {
  checkRuleSettings(file, source);
  const vocab = new Map<string, string>();
  for (const [name, v] of Object.entries(file.vocabulary ?? {})) {
    vocab.set(name, "words" in v ? wordsAlternation(v.words) : `(?:${v.pattern})`);
  }
  const seen = new Set<string>();
  const rules: CompiledRule[] = [];
  file.rules.forEach((def, index) => {
    const fail = (msg: string): never => {
      throw new CmcpError("scanner.rules", `${source}: rule "${def.id}" (rules[${index}]): ${msg}`);
    };
    if (seen.has(def.id)) fail("duplicate rule id");
    seen.add(def.id);
    const expand = (pattern: string, what: string): string =>
      pattern.replace(/\{\{([a-z0-9-]{1,40})\}\}/g, (_m, name: string) => {
        const v = vocab.get(name);
        if (v === undefined) return fail(`${what} names unknown vocabulary "{{${name}}}"`);
        return v;
      });
    const regex = (pattern: string, what: string, flags: string): RegExp => {
      const expanded = expand(pattern, what);
      const problem = lintPattern(expanded);
      if (problem) fail(`${what} is refused: ${problem}`);
      try {
        return new RegExp(expanded, flags);
      } catch (err) {
        return fail(`${what} does not compile: ${(err as Error).message}`);
      }
    };
    if (def.enabled === false) return;
    const base: CompiledBase = {
      id: def.id,
      category: def.category,
      severity: def.severity,
      title: def.title,
      explanation: def.explanation,
      roles: new Set(def.fields ?? DEFAULT_ROLES),
      path: def.path === undefined ? null : regex(def.path, '"path"', "u"),
    };
    switch (def.kind) {
      case "regex": {
        const flags = def.caseSensitive ? "gmsu" : "gimsu";
        const windows = (list: WindowDef[] | undefined, what: string): CompiledWindow[] =>
          (list ?? []).map((w, k) => ({
            regex: regex(w.pattern, `${what} ${k + 1}`, flags.replace("g", "")),
            before: w.before ?? 0,
            after: w.after ?? 0,
          }));
        rules.push({
          ...base,
          kind: "regex",
          regexes: def.patterns.map((p, k) => regex(p, `pattern ${k + 1}`, flags)),
          near: windows(def.near, "near"),
          unless: windows(def.unless, "unless"),
        });
        break;
      }
      case "keywords": {
        const body = wordsAlternation(def.words);
        // Word edges by lookaround: a keyword inside a longer word is not a match.
        const src = `(?<![\\p{L}\\p{N}_])${body}(?![\\p{L}\\p{N}_])`;
        rules.push({
          ...base,
          kind: "keywords",
          regex: new RegExp(src, def.caseSensitive ? "gu" : "giu"),
          near: [],
          unless: [],
        });
        break;
      }
      case "unicode": {
        let chars: RegExp | null = null;
        if (def.check === "chars") {
          if (def.chars === undefined) fail('check "chars" needs "chars"');
          const src = def.chars as string;
          if (!/^(\[[^\]]{1,400}\]|\\p\{[A-Za-z_=]{1,60}\})$/.test(src))
            fail('"chars" must be one character class, e.g. "[\\u{E0000}-\\u{E007F}]"');
          chars = regex(src, '"chars"', "gu");
        }
        const scripts = def.scripts ?? [];
        const allowed = def.allowedCombinations ?? [];
        for (const s of [...scripts, ...allowed.flat()])
          if (!isKnownScript(s)) fail(`unknown Unicode script "${s}"`);
        if (def.check === "mixed-script" && scripts.length < 2)
          fail('check "mixed-script" needs two or more "scripts"');
        rules.push({
          ...base,
          kind: "unicode",
          check: def.check,
          chars,
          except: new Set(def.except ?? []),
          decode: def.decode,
          identifierSeverity: def.identifierSeverity ?? def.severity,
          highAtCount: def.highAtCount ?? 0,
          wordSeverity: def.wordSeverity,
          wordMinLetters: def.wordMinLetters ?? 8,
          scripts,
          allowed,
        });
        break;
      }
      case "entropy-blob":
        if ((def.encoding === "rot13" || def.encoding === "reversed") && (def.commonWords ?? []).length < 5)
          fail(`encoding "${def.encoding}" needs at least five "commonWords"`);
        rules.push({
          ...base,
          kind: "entropy-blob",
          encoding: def.encoding,
          minLength: def.minLength,
          minEntropy: def.minEntropy ?? 0,
          blobSeverity: def.blobSeverity,
          textMinWords: def.textMinWords,
          commonWords: new Set((def.commonWords ?? []).map((w) => w.toLowerCase())),
        });
        break;
      case "length": {
        const t = [...def.thresholds].sort((a, b) => a.atLeast - b.atLeast);
        for (let k = 1; k < t.length; k++)
          if ((t[k] as { atLeast: number }).atLeast === (t[k - 1] as { atLeast: number }).atLeast)
            fail("two thresholds with the same atLeast");
        rules.push({ ...base, kind: "length", measure: def.measure, thresholds: t });
        break;
      }
      case "cross-reference":
        rules.push({
          ...base,
          kind: "cross-reference",
          check: def.check,
          context: def.context === undefined ? null : regex(def.context, '"context"', "isu"),
          window: def.window ?? 80,
          contextSeverity: def.contextSeverity ?? def.severity,
          siblingSeverity: def.siblingSeverity ?? "none",
          minNameLength: def.minNameLength ?? 6,
        });
        break;
      case "combination": {
        // checkRuleSettings has refused an id in two groups.
        const signalOf = new Map<string, string>();
        for (const group of def.sameSignal ?? [])
          for (const id of group) signalOf.set(id, group[0] as string);
        rules.push({
          ...base,
          kind: "combination",
          categories: new Set(def.categories),
          minRules: def.minRules,
          minSeverity: def.minSeverity,
          signalOf,
          requires: new Set(def.requires ?? []),
          minStart: def.minStart ?? 0,
        });
        break;
      }
    }
  });
  // Combinations read the other rules' findings, so they run last.
  rules.sort((a, b) => Number(a.kind === "combination") - Number(b.kind === "combination"));
  return { format: SCANNER_RULES_FORMAT, version: file.version, rules };
}
