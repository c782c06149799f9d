/**
 * The rule kinds of the tool-definition scanner. Each kind is code that reads
 * rule data (patterns, keyword lists, character classes, thresholds) from a
 * compiled rule and turns matches in a definition's fields into findings.
 * Every loop here is linear in the text it reads (bounded patterns, bounded
 * windows, capped findings).
 */
import {
  SEVERITY_RANK,
  type Category,
  type CompiledRule,
  type CompiledWindow,
  type FieldRole,
  type Severity,
  type SeverityOrNone,
} from "./tool-scanner-rules.js";
import {
  codepointName,
  confusableView,
  decodeBase32,
  decodeBase64,
  decodeEscapes,
  decodeHex,
  decodePercent,
  entropy,
  escapeRuns,
  foldText,
  gunzipLimited,
  isInvisible,
  leetView,
  mapSpan,
  readableText,
  renderVisible,
  rot13,
  scriptTester,
  spacedView,
  unescapeView,
  type FoldedText,
  type TextView,
} from "./tool-scanner-text.js";
import type { CatalogTool, Finding, ScanLimits } from "./tool-scanner.js";

/** One string read from a definition. */
export interface FieldText {
  path: string;
  role: FieldRole;
  target: "value" | "key";
  /** The string, cut to the scan limit. */
  text: string;
  fullLength: number;
  folded?: FoldedText;
  /**
   * Set on a view derived from a field (decoded, unescaped, ROT13 ...): `text` is the view,
   * and srcStart/srcEnd map each of its code units back into the field's own string.
   */
  view?: TextView & { via: string; source: string };
  /** Decodings found by each entropy-blob rule, computed once per field. */
  decodes?: Map<string, Decoded[]>;
}

export interface StructureStats {
  depth: { value: number; path: string };
  enums: { path: string; value: number }[];
  properties: { path: string; value: number }[];
  bytes: number;
}

export interface ScanContext {
  name: string | null;
  server: string | undefined;
  catalog: readonly CatalogTool[];
  limits: ScanLimits;
  stats: StructureStats;
  truncatedDefinition: boolean;
}

const NON_ASCII = /[\u0080-\u{10FFFF}]/u;
const IDENTIFIER_ROLES: ReadonlySet<FieldRole> = new Set(["name", "property-name"]);

/** Whether a rule reads a field: its role, and its path when the rule restricts paths. */
function applies(rule: CompiledRule, field: FieldText): boolean {
  return rule.roles.has(field.role) && (rule.path === null || rule.path.test(field.path));
}

function folded(field: FieldText): FoldedText {
  field.folded ??= foldText(field.text, IDENTIFIER_ROLES.has(field.role));
  return field.folded;
}

function finding(
  rule: CompiledRule,
  field: Pick<FieldText, "path" | "target" | "text">,
  start: number,
  end: number,
  severity: Severity = rule.severity,
  detail?: string,
): Finding {
  return {
    ruleId: rule.id,
    category: rule.category,
    severity,
    title: rule.title,
    path: field.path,
    target: field.target,
    span: { start, end, text: renderVisible(field.text.slice(start, end)) },
    explanation: rule.explanation,
    ...(detail !== undefined ? { detail } : {}),
  };
}

function maxOf(a: Severity, b: Severity): Severity {
  return SEVERITY_RANK[a] >= SEVERITY_RANK[b] ? a : b;
}

// ---- regex and keywords --------------------------------------------------------------------------

function matchAll(re: RegExp, text: string, cap: number, each: (start: number, end: number) => void): number {
  re.lastIndex = 0;
  let n = 0;
  let total = 0;
  for (;;) {
    const m = re.exec(text);
    if (m === null) break;
    if (m[0].length === 0) {
      re.lastIndex++;
      continue;
    }
    total++;
    if (n < cap) {
      each(m.index, m.index + m[0].length);
      n++;
    }
  }
  return total;
}

/** The text a context window looks at, around [start, end) of `text`. */
function windowText(text: string, w: CompiledWindow, start: number, end: number): string {
  if (w.before > 0 && w.after > 0) return text.slice(Math.max(0, start - w.before), end + w.after);
  if (w.before > 0) return text.slice(Math.max(0, start - w.before), start);
  return text.slice(end, end + w.after);
}

function runPatterns(
  rule: Extract<CompiledRule, { kind: "regex" | "keywords" }>,
  regexes: RegExp[],
  field: FieldText,
  cap: number,
  out: Finding[],
): void {
  const f = folded(field);
  const spans: { start: number; end: number }[] = [];
  for (const re of regexes) {
    if (spans.length >= cap) break;
    // Matches that fail their context do not use up the cap; the scan stays linear because
    // each window is a bounded slice tested by a linted pattern.
    matchAll(re, f.text, Number.MAX_SAFE_INTEGER, (s, e) => {
      if (spans.length >= cap) return;
      if (!rule.near.every((w) => w.regex.test(windowText(f.text, w, s, e)))) return;
      if (rule.unless.some((w) => w.regex.test(windowText(f.text, w, s, e)))) return;
      spans.push(mapSpan(f, s, e));
    });
  }
  const view = field.view;
  if (view !== undefined) {
    // A match in a derived view is reported on the field's own text, with what the view read.
    const source = { path: field.path, target: field.target, text: view.source };
    const seen = new Set<string>();
    for (const sp of spans) {
      let lo = Number.MAX_SAFE_INTEGER;
      let hi = 0;
      for (let k = sp.start; k < sp.end && k < view.srcStart.length; k++) {
        lo = Math.min(lo, view.srcStart[k] as number);
        hi = Math.max(hi, view.srcEnd[k] as number);
      }
      if (lo > hi || seen.has(`${lo}:${hi}`)) continue;
      seen.add(`${lo}:${hi}`);
      const read = renderVisible(field.text.slice(sp.start, sp.end), 160);
      out.push(finding(rule, source, lo, hi, rule.severity, `reads, ${view.via}: "${read}"`));
    }
    return;
  }
  // Overlapping or touching matches of one rule (two alternatives on the same words) are one finding.
  spans.sort((a, b) => a.start - b.start);
  let cur: { start: number; end: number } | undefined;
  for (const sp of spans) {
    if (cur !== undefined && sp.start <= cur.end + 1) cur.end = Math.max(cur.end, sp.end);
    else {
      if (cur !== undefined) out.push(finding(rule, field, cur.start, cur.end));
      cur = { ...sp };
    }
  }
  if (cur !== undefined) out.push(finding(rule, field, cur.start, cur.end));
}

// ---- unicode -------------------------------------------------------------------------------------

const PICTOGRAPHIC = /^\p{Extended_Pictographic}$/u;
const EMOJI = /^[\p{Emoji}\u20e3]$/u;
const EMOJI_MODIFIER = /^[\p{Emoji_Modifier}\ufe0f]$/u;
const LETTER_OR_MARK = /^[\p{L}\p{M}]$/u;
const LATIN_OR_COMMON = /^[\p{Script=Latin}\p{Script=Common}\p{Script=Inherited}]$/u;
const TAG_CANCEL = 0xe007f;
const BLACK_FLAG = 0x1f3f4;

function cpAt(s: string, i: number): number | undefined {
  return i >= 0 && i < s.length ? s.codePointAt(i) : undefined;
}
/** The code point ending just before index i. */
function cpBefore(s: string, i: number): { cp: number; at: number } | undefined {
  if (i <= 0) return undefined;
  const lo = s.charCodeAt(i - 1);
  if (lo >= 0xdc00 && lo <= 0xdfff && i >= 2) {
    const hi = s.charCodeAt(i - 2);
    if (hi >= 0xd800 && hi <= 0xdbff) return { cp: s.codePointAt(i - 2) as number, at: i - 2 };
  }
  return { cp: lo, at: i - 1 };
}
const chr = (cp: number | undefined): string => (cp === undefined ? "" : String.fromCodePoint(cp));

/** Whether the character at [i, i+len) is an accepted use in context (an emoji sequence, a joiner in a script). */
function excepted(
  rule: Extract<CompiledRule, { kind: "unicode" }>,
  s: string,
  i: number,
  cp: number,
  len: number,
): boolean {
  const ex = rule.except;
  if (ex.has("emoji-tag-sequence") && cp >= 0xe0020 && cp <= TAG_CANCEL) {
    // Subdivision flags: U+1F3F4, 1-10 tag characters, U+E007F.
    let j = i;
    let n = 0;
    let b = cpBefore(s, j);
    while (b !== undefined && b.cp >= 0xe0020 && b.cp < TAG_CANCEL && n < 10) {
      j = b.at;
      n++;
      b = cpBefore(s, j);
    }
    if (b?.cp !== BLACK_FLAG) return false;
    let k = i;
    let m = 0;
    while (m <= 10) {
      const c = cpAt(s, k);
      if (c === TAG_CANCEL) return n + m <= 10;
      if (c === undefined || c < 0xe0020 || c > 0xe007e) return false;
      k += 2;
      m++;
    }
    return false;
  }
  if (ex.has("emoji-zwj-sequence") && cp === 0x200d) {
    let b = cpBefore(s, i);
    while (b !== undefined && EMOJI_MODIFIER.test(chr(b.cp))) b = cpBefore(s, b.at);
    const after = chr(cpAt(s, i + len));
    return b !== undefined && PICTOGRAPHIC.test(chr(b.cp)) && PICTOGRAPHIC.test(after);
  }
  if (ex.has("emoji-presentation") && (cp === 0xfe0f || cp === 0xfe0e)) {
    const b = cpBefore(s, i);
    return b !== undefined && EMOJI.test(chr(b.cp));
  }
  if (ex.has("joiner-in-script") && (cp === 0x200c || cp === 0x200d)) {
    // ZWNJ/ZWJ shape letters in Arabic, Persian, Indic scripts: accepted between two such letters.
    const b = cpBefore(s, i);
    const before = chr(b?.cp);
    const after = chr(cpAt(s, i + len));
    return (
      LETTER_OR_MARK.test(before) &&
      LETTER_OR_MARK.test(after) &&
      !LATIN_OR_COMMON.test(before) &&
      !LATIN_OR_COMMON.test(after)
    );
  }
  return false;
}

function decodeHidden(kind: "tags" | "variation-selectors" | undefined, run: string): string | undefined {
  if (kind === "tags") {
    let out = "";
    for (const ch of run) {
      const cp = ch.codePointAt(0) as number;
      if (cp >= 0xe0020 && cp <= 0xe007e) out += String.fromCharCode(cp - 0xe0000);
    }
    return out.length > 0 ? out : undefined;
  }
  if (kind === "variation-selectors") {
    const bytes: number[] = [];
    for (const ch of run) {
      const cp = ch.codePointAt(0) as number;
      if (cp >= 0xfe00 && cp <= 0xfe0f) bytes.push(cp - 0xfe00);
      else if (cp >= 0xe0100 && cp <= 0xe01ef) bytes.push(cp - 0xe0100 + 16);
    }
    const text = readableText(Uint8Array.from(bytes), 1);
    return text ?? undefined;
  }
  return undefined;
}

function unicodeChars(
  rule: Extract<CompiledRule, { kind: "unicode" }>,
  field: FieldText,
  cap: number,
  out: Finding[],
): void {
  const re = rule.chars as RegExp;
  const s = field.text;
  re.lastIndex = 0;
  const runs: { start: number; end: number; count: number }[] = [];
  let total = 0;
  for (;;) {
    const m = re.exec(s);
    if (m === null) break;
    const cp = m[0].codePointAt(0) as number;
    if (excepted(rule, s, m.index, cp, m[0].length)) continue;
    total++;
    const last = runs[runs.length - 1];
    if (last !== undefined && last.end === m.index) {
      last.end = m.index + m[0].length;
      last.count++;
    } else if (runs.length < cap) runs.push({ start: m.index, end: m.index + m[0].length, count: 1 });
  }
  if (total === 0) return;
  let severity = IDENTIFIER_ROLES.has(field.role) ? rule.identifierSeverity : rule.severity;
  if (rule.highAtCount > 0 && total >= rule.highAtCount) severity = "high";
  for (const r of runs) {
    const run = s.slice(r.start, r.end);
    const names = [...new Set([...run].map((c) => codepointName(c.codePointAt(0) as number)))];
    const decoded = decodeHidden(rule.decode, run);
    const detail =
      `${r.count} character${r.count === 1 ? "" : "s"} (${names.slice(0, 6).join(", ")}${names.length > 6 ? ", …" : ""})` +
      (total > r.count ? `; ${total} in this field` : "") +
      (decoded !== undefined ? `; hidden text reads: "${renderVisible(decoded, 200)}"` : "");
    out.push(finding(rule, field, r.start, r.end, severity, detail));
  }
}

function scriptsOf(rule: Extract<CompiledRule, { kind: "unicode" }>, text: string): Set<string> {
  const found = new Set<string>();
  for (const ch of text) {
    if (!LETTER_OR_MARK.test(ch)) continue;
    for (const name of rule.scripts) {
      if (scriptTester(name).test(ch)) {
        found.add(name);
        break;
      }
    }
  }
  return found;
}

function mixedScript(
  rule: Extract<CompiledRule, { kind: "unicode" }>,
  field: FieldText,
  cap: number,
  out: Finding[],
): void {
  const s = field.text;
  const allowed = (set: Set<string>): boolean =>
    set.size < 2 || rule.allowed.some((combo) => [...set].every((x) => combo.includes(x)));
  const identifier = IDENTIFIER_ROLES.has(field.role);
  // Identifiers are judged whole (a Cyrillic word beside a Latin one is still a look-alike name);
  // prose word by word, since honest text mixes scripts across words.
  const units: { start: number; end: number }[] = [];
  if (identifier) units.push({ start: 0, end: s.length });
  else {
    const word = /[\p{L}\p{M}\p{N}]{2,60}/gu;
    matchAll(word, s, Number.MAX_SAFE_INTEGER, (a, b) => {
      if (NON_ASCII.test(s.slice(a, b))) units.push({ start: a, end: b });
    });
  }
  let n = 0;
  for (const u of units) {
    if (n >= cap) break;
    const text = s.slice(u.start, u.end);
    const set = scriptsOf(rule, text);
    if (allowed(set)) continue;
    const foreign = [...text].filter((ch) => LETTER_OR_MARK.test(ch) && !/^\p{Script=Latin}$/u.test(ch));
    const detail = `mixes ${[...set].join(" and ")} letters${
      foreign.length > 0 && foreign.length <= 8
        ? `: ${foreign.map((ch) => `${ch} ${codepointName(ch.codePointAt(0) as number)}`).join(", ")}`
        : ""
    }`;
    out.push(
      finding(rule, field, u.start, u.end, identifier ? rule.identifierSeverity : rule.severity, detail),
    );
    n++;
  }
}

function compatibilityForms(
  rule: Extract<CompiledRule, { kind: "unicode" }>,
  field: FieldText,
  cap: number,
  out: Finding[],
): void {
  const s = field.text;
  let run: { start: number; end: number; plain: string } | null = null;
  const runs: { start: number; end: number; plain: string }[] = [];
  let i = 0;
  while (i < s.length) {
    const cp = s.codePointAt(i) as number;
    const ch = String.fromCodePoint(cp);
    const next = i + ch.length;
    let plain = "";
    if (cp >= 0x80 && /[\p{L}\p{Nd}]/u.test(ch)) {
      const n = ch.normalize("NFKC");
      if (n.length === 1 && /[A-Za-z0-9]/.test(n)) plain = n;
    }
    if (plain !== "") {
      if (run !== null && run.end === i) {
        run.end = next;
        run.plain += plain;
      } else {
        run = { start: i, end: next, plain };
        runs.push(run);
      }
    }
    i = next;
  }
  const base = IDENTIFIER_ROLES.has(field.role) ? rule.identifierSeverity : rule.severity;
  // A long run of look-alike letters (a whole phrase in mathematical or fullwidth letters) is
  // written to slip past word matching: reported at wordSeverity when one is set. The longest
  // single run counts, not the sum: scattered look-alike letters (a unit symbol here, a
  // fullwidth digit there) are not a phrase.
  const letters = runs.reduce((n, r) => Math.max(n, r.plain.replace(/[0-9]/g, "").length), 0);
  const severity =
    rule.wordSeverity !== undefined && letters >= rule.wordMinLetters ? maxOf(base, rule.wordSeverity) : base;
  for (const r of runs.slice(0, cap))
    out.push(finding(rule, field, r.start, r.end, severity, `reads as "${r.plain}" once normalized (NFKC)`));
}

// ---- encoded blobs -------------------------------------------------------------------------------

const B64_CHAR = /[A-Za-z0-9+/]/;
const B64URL_CHAR = /[A-Za-z0-9_-]/;
const ALNUM = /[A-Za-z0-9]/;

interface Candidate {
  start: number;
  end: number;
  /** URL-safe base64: reported only when it decodes to text (ids and tokens use the same alphabet). */
  urlSafe?: boolean;
  /** A list of decimal character codes (String.fromCharCode(102,101,...), chr(...) lists). */
  charCodes?: boolean;
}

/** Comma-separated decimal character codes, eight or more, each 2-3 digits. */
const CHAR_CODE_LIST = /(?<![\d.])\d{2,3}(?:[ \t]{0,2},[ \t]{0,2}\d{2,3}){7,4000}(?![\d.])/g;

function charCodeRuns(s: string, minLength: number): Candidate[] {
  const out: Candidate[] = [];
  matchAll(CHAR_CODE_LIST, s, Number.MAX_SAFE_INTEGER, (start, end) => {
    if (end - start >= minLength) out.push({ start, end, charCodes: true });
  });
  return out;
}

/**
 * What a list of character codes spells, when every code is printable ASCII or a line break and
 * it holds at least `minWords` runs of letters: code needs no spaces to be read.
 */
function charCodeText(list: string, minWords: number): string | null {
  let text = "";
  for (const n of list.split(",")) {
    const c = Number(n.trim());
    // The list holds 2-3 digit codes only, so a tab (9) cannot occur.
    if (!(c === 10 || c === 13 || (c >= 32 && c < 127))) return null;
    text += String.fromCharCode(c);
  }
  return (text.match(/[A-Za-z]{2,}/g) ?? []).length >= minWords ? text : null;
}

/** Magic numbers of binary formats worth a reviewer's look when found base64-encoded in a definition. */
const BINARY_MAGIC: readonly { name: string; bytes: readonly number[] }[] = [
  { name: "ELF executable", bytes: [0x7f, 0x45, 0x4c, 0x46] },
  { name: "Windows executable", bytes: [0x4d, 0x5a] },
  { name: "Mach-O executable", bytes: [0xcf, 0xfa, 0xed, 0xfe] },
  { name: "zip archive", bytes: [0x50, 0x4b, 0x03, 0x04] },
  { name: "7z archive", bytes: [0x37, 0x7a, 0xbc, 0xaf] },
  { name: "bzip2 data", bytes: [0x42, 0x5a, 0x68] },
  { name: "xz data", bytes: [0xfd, 0x37, 0x7a, 0x58, 0x5a] },
  { name: "WebAssembly module", bytes: [0x00, 0x61, 0x73, 0x6d] },
  { name: "Java class", bytes: [0xca, 0xfe, 0xba, 0xbe] },
  // Protocols 2-5; a bare 0x80 would catch every Fernet token and 1 in 256 random blobs.
  { name: "Python pickle", bytes: [0x80, 0x02] },
  { name: "Python pickle", bytes: [0x80, 0x03] },
  { name: "Python pickle", bytes: [0x80, 0x04] },
  { name: "Python pickle", bytes: [0x80, 0x05] },
];

function binaryMagic(bytes: Uint8Array): string | null {
  for (const m of BINARY_MAGIC)
    if (bytes.length >= Math.max(8, m.bytes.length) && m.bytes.every((b, i) => bytes[i] === b)) return m.name;
  return null;
}

/** Share of printable ASCII (and tab, newline) among the bytes. */
function printableShare(bytes: Uint8Array): number {
  let n = 0;
  for (const b of bytes) if ((b >= 32 && b < 127) || b === 9 || b === 10 || b === 13) n++;
  return bytes.length === 0 ? 0 : n / bytes.length;
}

/** Maximal runs of `ok` characters, optionally followed by '=' padding, bounded by non-alphanumerics. */
function runsOf(s: string, ok: RegExp, minLength: number, padding: boolean): Candidate[] {
  const out: Candidate[] = [];
  let i = 0;
  while (i < s.length) {
    if (!ok.test(s[i] as string)) {
      i++;
      continue;
    }
    const start = i;
    while (i < s.length && ok.test(s[i] as string)) i++;
    let end = i;
    if (padding) while (end < s.length && s[end] === "=" && end - i < 6) end++;
    const before = start > 0 ? (s[start - 1] as string) : "";
    const after = end < s.length ? (s[end] as string) : "";
    if (end - start >= minLength && !ALNUM.test(before) && !ALNUM.test(after)) out.push({ start, end });
    i = Math.max(end, i);
  }
  return out;
}

function percentRuns(s: string, minLength: number): Candidate[] {
  const out: Candidate[] = [];
  let i = 0;
  while (i < s.length) {
    if (s[i] === "%" && /^%[0-9A-Fa-f]{2}/.test(s.slice(i, i + 3))) {
      const start = i;
      while (i < s.length && /^%[0-9A-Fa-f]{2}/.test(s.slice(i, i + 3))) i += 3;
      if (i - start >= minLength) out.push({ start, end: i });
    } else i++;
  }
  return out;
}

const reverse = (s: string): string => s.split("").reverse().join("");

/**
 * Sentences of ASCII words that read as words only after `transform` (ROT13, reversal), judged
 * by how many common words appear before and after it. A sentence of at least textMinWords
 * words is reported whole when at least a quarter of its words (and three) turn into common
 * words and they outnumber the words already common three to one. Whatever the sentence's
 * length (textMinWords does not apply here), a stretch of it is reported when three or more
 * consecutive words all turn into common words, one of them four letters or longer: a short
 * transformed phrase ("vtaber cerivbhf vafgehpgvbaf") inside plain text or on its own.
 */
function transformCandidates(
  rule: Extract<CompiledRule, { kind: "entropy-blob" }>,
  s: string,
  transform: (w: string) => string,
): Candidate[] {
  const out: Candidate[] = [];
  const sentence = /[A-Za-z][A-Za-z' ,-]{0,300}/g;
  const word = /[A-Za-z]{1,30}/g;
  matchAll(sentence, s, Number.MAX_SAFE_INTEGER, (a, b) => {
    const text = s.slice(a, b);
    const words: { w: string; start: number; end: number }[] = [];
    matchAll(word, text, Number.MAX_SAFE_INTEGER, (x, y) =>
      words.push({ w: text.slice(x, y).toLowerCase(), start: a + x, end: a + y }),
    );
    const turned = words.map(({ w }) => rule.commonWords.has(transform(w)) && !rule.commonWords.has(w));
    const plain = words.filter(({ w }) => rule.commonWords.has(w)).length;
    const rotated = turned.filter(Boolean).length;
    if (
      words.length >= rule.textMinWords &&
      rotated >= Math.max(3, Math.ceil(words.length / 4)) &&
      rotated > 3 * plain
    ) {
      out.push({ start: a, end: b });
      return;
    }
    let run = 0;
    let long = false;
    for (let k = 0; k <= words.length; k++) {
      if (k < words.length && turned[k] === true) {
        run++;
        long ||= (words[k] as { w: string }).w.length >= 4;
        continue;
      }
      if (run >= 3 && long)
        out.push({
          start: (words[k - run] as { start: number }).start,
          end: (words[k - 1] as { end: number }).end,
        });
      run = 0;
      long = false;
    }
  });
  return out;
}

/** One candidate an entropy-blob rule found in a field, and what it reads as (null: nothing readable). */
export interface Decoded {
  start: number;
  end: number;
  /** How it was read: "base64", "hex+gzip", "ROT13", "reversed" ... */
  via: string;
  /** Readable text it stands for, or null. */
  text: string | null;
  /** How units of `text` map back: "span" (each to the whole candidate), "same" (one to one), "mirror". */
  mapping: "span" | "same" | "mirror";
}

function candidatesFor(rule: Extract<CompiledRule, { kind: "entropy-blob" }>, s: string): Candidate[] {
  switch (rule.encoding) {
    case "base64": {
      // A base64 blob mixes cases with digits, '+' or padding; identifiers, words and paths
      // (whose '/' is also in the alphabet) do not.
      const blobby = (t: string): boolean =>
        /[A-Z]/.test(t) && /[a-z]/.test(t) && (/[0-9+]/.test(t) || t.endsWith("=")) && !t.includes("//");
      const standard = runsOf(s, B64_CHAR, rule.minLength, true).filter(({ start, end }) =>
        blobby(s.slice(start, end)),
      );
      // URL-safe base64 ('-' and '_' for '+' and '/'): only runs that use them, read for text only.
      const urlSafe = runsOf(s, B64URL_CHAR, rule.minLength, true).filter(({ start, end }) => {
        const t = s.slice(start, end);
        return /[-_]/.test(t) && blobby(t) && /[0-9]/.test(t);
      });
      return [...standard, ...urlSafe.map((c) => ({ ...c, urlSafe: true }))];
    }
    case "base32":
      // Upper or lower case, never mixed; a base32 payload of text carries digits 2-7 or padding.
      return [
        ...runsOf(s, /[A-Z2-7]/, rule.minLength, true),
        ...runsOf(s, /[a-z2-7]/, rule.minLength, true),
      ].filter(({ start, end }) => /[2-7=]/.test(s.slice(start, end)));
    case "hex":
      return runsOf(s, /[0-9a-fA-F]/, rule.minLength, false).filter(
        ({ start, end }) => (end - start) % 2 === 0,
      );
    case "percent":
      return percentRuns(s, rule.minLength);
    case "escapes":
      return [
        ...escapeRuns(s, 2).filter(({ start, end }) => end - start >= rule.minLength),
        ...charCodeRuns(s, rule.minLength),
      ];
    case "rot13":
      return transformCandidates(rule, s, rot13);
    case "reversed":
      return transformCandidates(rule, s, reverse);
  }
}

/** Decoded blobs kept per rule and field. */
const MAX_DECODES_PER_FIELD = 32;
/** gunzip output: at most this ratio to the compressed size, and this many bytes. */
const GUNZIP_MAX_RATIO = 8;
const GUNZIP_MAX_BYTES = 16 * 1024;
/** Characters of derived views (decoded, unescaped, de-confused...) per scan, all fields together. */
const DERIVED_VIEW_BUDGET = 1024 * 1024;

/** What an entropy-blob rule finds in a field, computed once per rule and field. */
function blobDecodes(rule: Extract<CompiledRule, { kind: "entropy-blob" }>, field: FieldText): Decoded[] {
  field.decodes ??= new Map();
  const cached = field.decodes.get(rule.id);
  if (cached !== undefined) return cached;
  const s = field.text;
  const out: Decoded[] = [];
  for (const c of candidatesFor(rule, s)) {
    // Decoding (gunzip above all) costs more than finding candidates: stop once enough were read.
    if (out.length >= MAX_DECODES_PER_FIELD) break;
    const blob = s.slice(c.start, c.end);
    if (c.charCodes === true) {
      const text = charCodeText(blob, rule.textMinWords);
      if (text !== null)
        out.push({ start: c.start, end: c.end, via: "character codes", text, mapping: "span" });
      continue;
    }
    if (rule.encoding === "rot13" || rule.encoding === "reversed") {
      const rot = rule.encoding === "rot13";
      out.push({
        ...c,
        via: rot ? "ROT13" : "reversed",
        text: rot ? rot13(blob) : reverse(blob),
        mapping: rot ? "same" : "mirror",
      });
      continue;
    }
    if (rule.minEntropy > 0 && entropy(blob.replace(/=+$/, "")) < rule.minEntropy) continue;
    let bytes: Uint8Array | null;
    if (rule.encoding === "base64") bytes = decodeBase64(blob);
    else if (rule.encoding === "base32") bytes = decodeBase32(blob.toUpperCase());
    else if (rule.encoding === "hex") bytes = decodeHex(blob);
    else if (rule.encoding === "escapes") bytes = decodeEscapes(blob);
    else bytes = decodePercent(blob);
    let via = rule.encoding as string;
    if (bytes !== null) {
      // Bounded by the blob's own size, so a compression bomb cannot turn kilobytes into megabytes of views.
      const unzipped = gunzipLimited(bytes, Math.min(GUNZIP_MAX_BYTES, GUNZIP_MAX_RATIO * bytes.length));
      if (unzipped !== null) {
        bytes = unzipped;
        via += "+gzip";
      }
    }
    const text = bytes === null ? null : readableText(bytes, rule.textMinWords);
    if (c.urlSafe === true && text === null) continue;
    if (text === null && !via.endsWith("+gzip") && rule.encoding === "base64") {
      // An undecodable run is worth a reviewer's look only when it hides something: text that is
      // not words (JSON, a script, a query string) or a known binary format. Identifiers, opaque
      // ids, hashes and keys decode to random bytes and are left alone.
      const magic = bytes === null ? null : binaryMagic(bytes);
      if (magic !== null) via += ` (${magic})`;
      else if (bytes === null || bytes.length < 16 || printableShare(bytes) < 0.95) continue;
      else via += " (printable, not words)";
    }
    out.push({ start: c.start, end: c.end, via, text, mapping: "span" });
  }
  field.decodes.set(rule.id, out);
  return out;
}

/** True when the run at `start` is the payload of a data: URI of an image, font, audio or video (an icon, say). */
function dataUriMedia(s: string, start: number): boolean {
  return /data:(?:image|font|audio|video)\/[\w.+-]{1,40};base64,$/.test(
    s.slice(Math.max(0, start - 64), start),
  );
}

function entropyBlob(
  rule: Extract<CompiledRule, { kind: "entropy-blob" }>,
  field: FieldText,
  cap: number,
  out: Finding[],
): void {
  let n = 0;
  for (const d of blobDecodes(rule, field)) {
    if (n >= cap) break;
    const blob = field.text.slice(d.start, d.end);
    if (d.mapping !== "span") {
      out.push(
        finding(
          rule,
          field,
          d.start,
          d.end,
          rule.severity,
          `reads ${d.mapping === "same" ? "after ROT13" : "backwards"}: "${renderVisible(d.text ?? "", 160)}"`,
        ),
      );
      n++;
    } else if (d.text !== null) {
      out.push(
        finding(
          rule,
          field,
          d.start,
          d.end,
          rule.severity,
          `${d.via} decodes to: "${renderVisible(d.text, 200)}"`,
        ),
      );
      n++;
    } else if (
      (rule.blobSeverity !== "none" && !dataUriMedia(field.text, d.start)) ||
      d.via.endsWith("+gzip")
    ) {
      const gz = d.via.endsWith("+gzip");
      const detail = gz
        ? `${blob.length} characters of ${d.via}: a compressed payload`
        : `${blob.length} characters of ${d.via} that do not decode to readable text`;
      out.push(
        finding(rule, field, d.start, d.end, gz ? rule.severity : (rule.blobSeverity as Severity), detail),
      );
      n++;
    }
  }
}

// ---- derived views -------------------------------------------------------------------------------

/** Escapes a field must hold before its unescaped view is read. */
const UNESCAPE_MIN_TOKENS = 3;

function spanView(field: FieldText, d: Decoded & { text: string }): FieldText {
  const n = d.text.length;
  const srcStart = new Uint32Array(n);
  const srcEnd = new Uint32Array(n);
  for (let k = 0; k < n; k++) {
    if (d.mapping === "same") {
      srcStart[k] = d.start + k;
      srcEnd[k] = d.start + k + 1;
    } else if (d.mapping === "mirror") {
      srcStart[k] = d.end - k - 1;
      srcEnd[k] = d.end - k;
    } else {
      srcStart[k] = d.start;
      srcEnd[k] = d.end;
    }
  }
  const via =
    d.mapping === "span" ? `decoded from ${d.via}` : d.mapping === "same" ? "after ROT13" : "backwards";
  return viewField(field, { text: d.text, srcStart, srcEnd }, via);
}

/** A view of the same length as its source: unit k maps to unit k. */
function sameOffsets(text: string): TextView {
  const srcStart = new Uint32Array(text.length);
  const srcEnd = new Uint32Array(text.length);
  for (let k = 0; k < text.length; k++) {
    srcStart[k] = k;
    srcEnd[k] = k + 1;
  }
  return { text, srcStart, srcEnd };
}

function viewField(field: FieldText, view: TextView, via: string): FieldText {
  return {
    path: field.path,
    role: field.role,
    target: field.target,
    text: view.text,
    fullLength: view.text.length,
    view: { ...view, via, source: field.text },
  };
}

/**
 * Other readings of each field that text rules also run on, so that an instruction written in
 * an encoding is judged by what it says: what the entropy-blob rules decode to readable text
 * (base64, hex, base32, %XX, \xNN escapes, ROT13, reversed), the field with all its escapes
 * replaced (when an escapes or percent rule is on), and the field with look-alike letters read
 * as Latin in words that mix scripts. Each is bounded by the field's length (a gunzipped blob by
 * GUNZIP_MAX_RATIO times its own), and all of them together by DERIVED_VIEW_BUDGET characters: past
 * it, fields are read as written only.
 */
export function derivedViews(
  rules: readonly CompiledRule[],
  fields: readonly FieldText[],
  cap: number,
): FieldText[] {
  const out: FieldText[] = [];
  let budget = DERIVED_VIEW_BUDGET;
  const push = (v: FieldText) => {
    budget -= v.text.length;
    if (budget >= 0) out.push(v);
  };
  const blobRules = rules.filter(
    (r): r is Extract<CompiledRule, { kind: "entropy-blob" }> => r.kind === "entropy-blob",
  );
  const unescape = blobRules.some((r) => r.encoding === "escapes" || r.encoding === "percent");
  for (const f of fields) {
    if (budget < 0) break;
    for (const rule of blobRules) {
      if (!applies(rule, f)) continue;
      let n = 0;
      for (const d of blobDecodes(rule, f)) {
        if (n >= cap) break;
        if (d.text === null) continue;
        push(spanView(f, d as Decoded & { text: string }));
        n++;
      }
    }
    if (unescape) {
      const v = unescapeView(f.text, UNESCAPE_MIN_TOKENS);
      if (v !== null) push(viewField(f, v, "with escapes decoded"));
    }
    if (NON_ASCII.test(f.text)) {
      const c = confusableView(f.text);
      if (c !== null) push(viewField(f, sameOffsets(c), "with look-alike letters read as Latin"));
    }
    const l = leetView(f.text);
    if (l !== null) push(viewField(f, sameOffsets(l), "with digits read as letters"));
    const sp = spacedView(f.text);
    if (sp !== null) push(viewField(f, sp, "with spaced-out letters joined"));
  }
  return out;
}

// ---- length --------------------------------------------------------------------------------------

function thresholdFor(rule: Extract<CompiledRule, { kind: "length" }>, value: number): Severity | null {
  let hit: Severity | null = null;
  for (const t of rule.thresholds) if (value >= t.atLeast) hit = t.severity;
  return hit;
}

const PADDING = /[\s\p{P}\p{S}\p{Cf}\p{Default_Ignorable_Code_Point}]/u;

function longestPadding(s: string): { start: number; end: number } {
  let best = { start: 0, end: 0 };
  let start = -1;
  let i = 0;
  while (i <= s.length) {
    const cp = s.codePointAt(i);
    const ch = cp === undefined ? "" : String.fromCodePoint(cp);
    const pad = ch !== "" && (PADDING.test(ch) || isInvisible(ch));
    if (pad && start < 0) start = i;
    if (!pad && start >= 0) {
      if (i - start > best.end - best.start) best = { start, end: i };
      start = -1;
    }
    i += ch === "" ? 1 : ch.length;
  }
  return best;
}

function lengthRule(
  rule: Extract<CompiledRule, { kind: "length" }>,
  fields: FieldText[],
  ctx: ScanContext,
  out: Finding[],
): void {
  const structural = (items: { path: string; value: number }[], unit: string): void => {
    for (const it of items) {
      const sev = thresholdFor(rule, it.value);
      if (sev === null) continue;
      out.push({
        ...finding(rule, { path: it.path, target: "value", text: "" }, 0, 0, sev),
        detail: `${it.value} ${unit}`,
      });
    }
  };
  switch (rule.measure) {
    case "chars":
      for (const f of fields) {
        if (!applies(rule, f)) continue;
        const sev = thresholdFor(rule, f.fullLength);
        if (sev !== null)
          out.push(finding(rule, f, 0, Math.min(f.text.length, 80), sev, `${f.fullLength} characters`));
      }
      break;
    case "padding-run":
      for (const f of fields) {
        if (!applies(rule, f)) continue;
        const run = longestPadding(f.text);
        const sev = thresholdFor(rule, run.end - run.start);
        if (sev !== null)
          out.push(
            finding(
              rule,
              f,
              run.start,
              run.end,
              sev,
              `${run.end - run.start} characters of blank, punctuation or invisible padding`,
            ),
          );
      }
      break;
    case "enum-values":
      structural(ctx.stats.enums, "enum values");
      break;
    case "properties":
      structural(ctx.stats.properties, "properties");
      break;
    case "schema-depth":
      structural([ctx.stats.depth], "levels of nesting");
      break;
    case "definition-bytes":
      structural([{ path: "$", value: ctx.stats.bytes }], "bytes of text");
      break;
  }
}

// ---- cross-references ----------------------------------------------------------------------------

/** Names worth looking for in prose: identifier-shaped (a separator or a camelCase hump). */
function identifierShaped(name: string, minLength: number): boolean {
  return name.length >= minLength && (/[_\-.]/.test(name) || /[a-z][A-Z]/.test(name));
}

/** A name folded for look-alike comparison: NFKC, no invisible characters, lower case. */
function lookalikeKey(name: string): string {
  return [...name.normalize("NFKC")]
    .filter((ch) => !isInvisible(ch))
    .join("")
    .toLowerCase();
}

function crossReference(
  rule: Extract<CompiledRule, { kind: "cross-reference" }>,
  fields: FieldText[],
  ctx: ScanContext,
  cap: number,
  out: Finding[],
): void {
  const self = ctx.name;
  const others = ctx.catalog.filter((t) => !(t.name === self && t.server === ctx.server));
  const nameField = fields.find((f) => f.path === "$.name" && f.target === "value");
  if (rule.check === "name-collision") {
    if (self === null || nameField === undefined) return;
    const hit = others.find((t) => t.name === self && t.server !== ctx.server);
    if (hit)
      out.push(
        finding(
          rule,
          nameField,
          0,
          self.length,
          rule.severity,
          `"${self}" is also a tool of ${hit.server ?? "another server"}`,
        ),
      );
    return;
  }
  if (rule.check === "lookalike-name") {
    if (self === null || nameField === undefined) return;
    const key = lookalikeKey(self);
    const nonAscii = NON_ASCII.test(self);
    for (const t of others) {
      if (t.name === self) continue;
      let similar = lookalikeKey(t.name) === key;
      if (!similar && nonAscii && [...self].length === [...t.name].length) {
        // Same length, and every ASCII character in place: the rest are stand-ins for letters.
        const a = [...self];
        const b = [...t.name];
        similar = a.every((ch, i) => ch.charCodeAt(0) >= 0x80 || ch === b[i]) && !NON_ASCII.test(t.name);
      }
      if (similar) {
        out.push(
          finding(
            rule,
            nameField,
            0,
            self.length,
            rule.severity,
            `looks like "${t.name}"${t.server !== undefined ? ` (${t.server})` : ""}`,
          ),
        );
        return;
      }
    }
    return;
  }
  // catalog-mention
  const index = new Map<string, CatalogTool[]>();
  for (const t of others) {
    if (t.name === self || !identifierShaped(t.name, rule.minNameLength)) continue;
    const list = index.get(t.name) ?? [];
    list.push(t);
    index.set(t.name, list);
  }
  if (index.size === 0) return;
  const token = /[A-Za-z0-9][A-Za-z0-9_-]{0,127}/g;
  let n = 0;
  for (const f of fields) {
    if (n >= cap || !applies(rule, f)) continue;
    const s = f.text;
    matchAll(token, s, Number.MAX_SAFE_INTEGER, (a, b) => {
      if (n >= cap) return;
      const hits = index.get(s.slice(a, b));
      if (hits === undefined) return;
      // A name the scanned tool's own server also offers refers to that sibling.
      const sibling = hits.some((t) => t.server === ctx.server);
      const owner = hits.find((t) => t.server !== ctx.server) ?? hits[0];
      let sev: SeverityOrNone = sibling ? rule.siblingSeverity : rule.severity;
      if (sev === "none") return;
      let why = sibling ? "a tool of the same server" : `a tool of ${owner?.server ?? "another server"}`;
      if (rule.context !== null) {
        const lo = Math.max(0, a - rule.window);
        const hi = Math.min(s.length, b + rule.window);
        rule.context.lastIndex = 0;
        if (rule.context.test(s.slice(lo, hi))) {
          sev = sibling ? sev : maxOf(sev, rule.contextSeverity);
          if (!sibling) why += ", with instructions about how it must be used";
        }
      }
      out.push(finding(rule, f, a, b, sev, `names ${why}`));
      n++;
    });
  }
}

// ---- combinations ------------------------------------------------------------------------------

/** Reports a field where enough distinct rules of the given categories have already reported. */
function combination(
  rule: Extract<CompiledRule, { kind: "combination" }>,
  fields: FieldText[],
  out: Finding[],
): void {
  // Rules in one sameSignal group count once; the detail still names every rule that reported.
  const byField = new Map<
    string,
    { rules: Set<string>; signals: Set<string>; required: boolean; start: number; end: number }
  >();
  for (const f of out) {
    if (
      !rule.categories.has(f.category as never) ||
      SEVERITY_RANK[f.severity] < SEVERITY_RANK[rule.minSeverity] ||
      f.span.start < rule.minStart
    )
      continue;
    const key = fieldKey(f);
    const g = byField.get(key) ?? {
      rules: new Set<string>(),
      signals: new Set<string>(),
      required: rule.requires.size === 0,
      start: f.span.start,
      end: f.span.end,
    };
    g.rules.add(f.ruleId);
    g.signals.add(rule.signalOf.get(f.ruleId) ?? f.ruleId);
    g.required ||= rule.requires.has(f.category as Category);
    g.start = Math.min(g.start, f.span.start);
    g.end = Math.max(g.end, f.span.end);
    byField.set(key, g);
  }
  for (const field of fields) {
    const key = fieldKey(field);
    const g = byField.get(key);
    if (g === undefined || g.signals.size < rule.minRules || !g.required) continue;
    const where = rule.minStart > 0 ? ` (from character ${g.start} of ${field.fullLength})` : "";
    out.push(
      finding(
        rule,
        field,
        g.start,
        g.end,
        rule.severity,
        `${g.rules.size === 1 ? "buried" : "together"}: ${[...g.rules].sort().join(", ")}${where}`,
      ),
    );
    byField.delete(key);
  }
}

/** One field and its derived views share this key (a view keeps its field's target and path). */
function fieldKey(f: { target: string; path: string }): string {
  return `${f.target}\u0000${f.path}`;
}

// ---- dispatch ------------------------------------------------------------------------------------

export function runRules(rules: readonly CompiledRule[], fields: FieldText[], ctx: ScanContext): Finding[] {
  const out: Finding[] = [];
  const cap = ctx.limits.maxFindingsPerRuleField;
  // Text rules read each field and its derived views; the other kinds read the fields as written.
  const texts = [...fields, ...derivedViews(rules, fields, cap)];
  // A view keeps its field's path and target: the cap holds per rule and field over all its views.
  const textRule = (rule: Extract<CompiledRule, { kind: "regex" | "keywords" }>, regexes: RegExp[]): void => {
    const used = new Map<string, number>();
    for (const f of texts) {
      if (!applies(rule, f)) continue;
      const key = fieldKey(f);
      const n = used.get(key) ?? 0;
      if (n >= cap) continue;
      const before = out.length;
      runPatterns(rule, regexes, f, cap - n, out);
      used.set(key, n + out.length - before);
    }
  };
  for (const rule of rules) {
    switch (rule.kind) {
      case "regex":
        textRule(rule, rule.regexes);
        break;
      case "keywords":
        textRule(rule, [rule.regex]);
        break;
      case "unicode":
        for (const f of fields) {
          if (!applies(rule, f)) continue;
          if (rule.check === "chars") unicodeChars(rule, f, cap, out);
          else if (!NON_ASCII.test(f.text)) continue;
          else if (rule.check === "mixed-script") mixedScript(rule, f, cap, out);
          else compatibilityForms(rule, f, cap, out);
        }
        break;
      case "entropy-blob":
        for (const f of fields) if (applies(rule, f)) entropyBlob(rule, f, cap, out);
        break;
      case "length":
        lengthRule(rule, fields, ctx, out);
        break;
      case "cross-reference":
        crossReference(rule, fields, ctx, cap, out);
        break;
      case "combination":
        combination(rule, fields, out);
        break;
    }
    if (out.length > ctx.limits.maxFindings * 4) break;
  }
  return out;
}
