/**
 * Look-alike package and host names (typosquats), for the catalog snapshot.
 *
 * A PARTIAL DEFENCE, and stated as such: it only compares a name with a list
 * of known ones, the shipped well-known MCP packages
 * (policies/well-known-mcp-packages.json) and the names already approved in a
 * previous catalog. A malicious package whose name resembles nothing on those
 * lists (or that is on them, having been approved) passes unnoticed, and a
 * legitimate package whose name happens to be close to a known one is
 * reported. The findings are hints for the reviewer, never a verdict, and
 * nothing is refused because of them.
 *
 * What is compared: the package name of a stdio server (from its package.json
 * or pyproject.toml; a bare binary has none) with package names, and the host
 * name of an HTTP server's URL (IDN punycode decoded; IP literals skipped)
 * with the hosts of the previous catalog. A name equal to a well-known one is
 * never reported; a name already approved is still compared with the
 * well-known list (it may have been approved before this check existed).
 *
 * Techniques, for a candidate against each known name (npm "@scope/name"
 * split into scope and unscoped name):
 *   - typosquat.homoglyph (high): the names differ but are identical once
 *     look-alike characters are normalized: NFKC, invisible characters and
 *     combining marks removed, then a small table of Latin / Cyrillic / Greek /
 *     digit look-alikes (0/o, 1/I/l, 5/s, rn/m, vv/w, Cyrillic а е о р с х у
 *     і ј ѕ ..., Greek α ο ρ ν ι κ υ χ ...) and lower case.
 *   - typosquat.scope-swap: the same unscoped name under another scope or
 *     without one. High when the scopes themselves are identical after that
 *     normalization and separator removal ("@modelcontext-protocol" for
 *     "@modelcontextprotocol"), medium otherwise. Names published under
 *     several scopes on the lists ("mcp", "mcp-server") are generic: another
 *     scope is reported for them only when it resembles a known scope.
 *   - typosquat.separator (medium): the same name once "-", "_" and "." are
 *     removed ("server_filesystem").
 *   - typosquat.edit-distance (medium): Damerau-Levenshtein distance (with
 *     transpositions) between the normalized unscoped names of at most 2,
 *     scaled by the length of the distinctive part of the shorter name (the
 *     words "mcp", "server", "servers" and, for hosts, "www", "api", "com",
 *     ... do not count): 3 characters or fewer allow no edit, 4-5 allow one.
 *     Skipped when the unscoped name equals a known one (that is a scope
 *     question, or the name itself).
 * Mixed-script and whole-script confusables beyond the table, look-alikes of
 * names that are not on the lists, added or reordered words
 * ("mcp-server-filesystem"), and packages whose name is honest but whose
 * content is not are all out of reach.
 */
import { isIP } from "node:net";
import { domainToUnicode } from "node:url";
import { CmcpError } from "../artifacts/errors.js";
import wellKnownDoc from "../policies/well-known-mcp-packages.json" with { type: "json" };
import type { ServerIdentity } from "./catalog-identity.js";

export const WELL_KNOWN_FORMAT = "cmcp.well-known-mcp-packages.v1";

export type LookAlikeKind = "package" | "host";

export type LookAlikeRule =
  "typosquat.homoglyph" | "typosquat.scope-swap" | "typosquat.separator" | "typosquat.edit-distance";

export interface LookAlikeReference {
  kind: LookAlikeKind;
  name: string;
  /** "well-known": the shipped list; "approved": a previous catalog. */
  source: "well-known" | "approved";
  /** For "approved": the server that had this name in the previous catalog. */
  server?: string;
}

export interface LookAlike {
  ruleId: LookAlikeRule;
  severity: "high" | "medium";
  title: string;
  candidate: string;
  /** The known name it resembles. */
  resembles: string;
  /** The resembled name is on the well-known list. */
  wellKnown: boolean;
  /** Servers of the previous catalog approved with the resembled name. */
  approvedAs: string[];
  /** Damerau-Levenshtein distance of the normalized unscoped names (0 unless edit-distance). */
  distance: number;
  explanation: string;
  detail: string;
}

export interface WellKnownList {
  format: string;
  version: string;
  packages: string[];
}

const NPM_NAME = /^(?:@[a-z0-9~-][a-z0-9._~-]*\/)?[a-z0-9~-][a-z0-9._~-]*$/;

/** Validates a well-known list document (throws CmcpError "typosquat.list"). */
export function parseWellKnownList(doc: unknown): WellKnownList {
  const bad = (why: string): never => {
    throw new CmcpError("typosquat.list", `well-known MCP package list: ${why}`);
  };
  if (doc === null || typeof doc !== "object" || Array.isArray(doc)) bad("not an object");
  const d = doc as Record<string, unknown>;
  if (d["format"] !== WELL_KNOWN_FORMAT) bad(`format is not ${WELL_KNOWN_FORMAT}`);
  if (typeof d["version"] !== "string" || d["version"] === "") bad("version is not a non-empty string");
  const pkgs = d["packages"];
  if (!Array.isArray(pkgs)) bad("packages is not an array");
  const seen = new Set<string>();
  for (const p of pkgs as unknown[]) {
    if (typeof p !== "string" || p.length > 214 || !NPM_NAME.test(p))
      bad(`${JSON.stringify(p)} is not an npm package name`);
    if (seen.has(p as string)) bad(`${JSON.stringify(p)} is listed twice`);
    seen.add(p as string);
  }
  return { format: WELL_KNOWN_FORMAT, version: d["version"] as string, packages: [...seen] };
}

let shipped: WellKnownList | undefined;

/** The shipped list, policies/well-known-mcp-packages.json. */
export function wellKnownPackages(): WellKnownList {
  shipped ??= parseWellKnownList(wellKnownDoc);
  return shipped;
}

export function wellKnownReferences(list: WellKnownList = wellKnownPackages()): LookAlikeReference[] {
  return list.packages.map((name) => ({ kind: "package", name, source: "well-known" }));
}

/** What an identity is known by: its package's name (stdio) or its URL's host (HTTP); null for a bare binary or script. */
export function identitySubject(id: ServerIdentity): {
  kind: LookAlikeKind;
  name: string;
  path: string;
  span: { start: number; end: number; text: string };
} | null {
  if (id.transport === "stdio") {
    const name = id.package?.name;
    if (name === undefined || name === "") return null;
    return {
      kind: "package",
      name,
      path: "$.identity.package.name",
      span: { start: 0, end: name.length, text: name },
    };
  }
  let u: URL;
  try {
    u = new URL(id.url);
  } catch {
    return null;
  }
  const raw = u.hostname;
  if (raw === "" || raw.startsWith("[") || isIP(raw) !== 0) return null;
  const start = id.url.indexOf(raw);
  return {
    kind: "host",
    name: hostDisplay(raw),
    path: "$.identity.url",
    span: start < 0 ? { start: 0, end: 0, text: "" } : { start, end: start + raw.length, text: raw },
  };
}

/** Packages and hosts of a (previous) catalog's servers. */
export function approvedReferences(catalog: {
  servers: readonly { name: string; identity: ServerIdentity }[];
}): LookAlikeReference[] {
  const out: LookAlikeReference[] = [];
  for (const s of catalog.servers) {
    const subject = identitySubject(s.identity);
    if (subject) out.push({ kind: subject.kind, name: subject.name, source: "approved", server: s.name });
  }
  return out;
}

function hostDisplay(host: string): string {
  const h = host.toLowerCase().replace(/\.$/, "");
  const u = h.includes("xn--") ? domainToUnicode(h) : h;
  return u === "" ? h : u;
}

// ---- normalization ------------------------------------------------------------------------------

/** Format and filler characters that render as nothing (variation selectors and joiners that are marks go with the marks). */
const INVISIBLE_RANGES: readonly [number, number][] = [
  [0x00ad, 0x00ad],
  [0x061c, 0x061c],
  [0x115f, 0x1160],
  [0x17b4, 0x17b5],
  [0x180e, 0x180e],
  [0x200b, 0x200f],
  [0x202a, 0x202e],
  [0x2060, 0x206f],
  [0x3164, 0x3164],
  [0xfeff, 0xfeff],
  [0xffa0, 0xffa0],
];

function visible(ch: string): boolean {
  const cp = ch.codePointAt(0) as number;
  return !INVISIBLE_RANGES.some(([lo, hi]) => cp >= lo && cp <= hi);
}

/** Before lower-casing: capitals that look like another letter (I like l) or like a Latin capital. */
const CAPITALS: Readonly<Record<string, string>> = {
  I: "l",
  "|": "l",
  // Cyrillic
  А: "a",
  В: "b",
  Е: "e",
  І: "l",
  Ј: "j",
  К: "k",
  М: "m",
  Н: "h",
  О: "o",
  Р: "p",
  С: "c",
  Ѕ: "s",
  Т: "t",
  Х: "x",
  Ү: "y",
  Ӏ: "l",
  // Greek
  Α: "a",
  Β: "b",
  Ε: "e",
  Ζ: "z",
  Η: "h",
  Ι: "l",
  Κ: "k",
  Μ: "m",
  Ν: "n",
  Ο: "o",
  Ρ: "p",
  Τ: "t",
  Υ: "y",
  Χ: "x",
};

/** After lower-casing. */
const SMALL: Readonly<Record<string, string>> = {
  "0": "o",
  "1": "l",
  "5": "s",
  // Latin
  ı: "i",
  ɩ: "i",
  ɡ: "g",
  ɑ: "a",
  ʟ: "l",
  // Cyrillic
  а: "a",
  в: "b",
  е: "e",
  і: "i",
  ј: "j",
  к: "k",
  о: "o",
  р: "p",
  с: "c",
  ѕ: "s",
  у: "y",
  х: "x",
  ԁ: "d",
  һ: "h",
  ԛ: "q",
  ԝ: "w",
  ӏ: "l",
  // Greek
  α: "a",
  ε: "e",
  ι: "i",
  κ: "k",
  ν: "v",
  ο: "o",
  ρ: "p",
  υ: "u",
  χ: "x",
};

/** Letter pairs that read as one letter. */
const PAIRS: readonly [RegExp, string][] = [
  [/rn/g, "m"],
  [/vv/g, "w"],
];

const SEPARATORS = /[-_.]/g;

/** NFKC, invisible characters and combining marks removed. */
function fold(s: string): string {
  return Array.from(s.normalize("NFKC"))
    .filter(visible)
    .join("")
    .normalize("NFD")
    .replace(/\p{M}/gu, "")
    .normalize("NFC");
}

/** The look-alike skeleton of a name: folded, look-alike characters mapped, lower case (separators kept). */
export function confusableSkeleton(s: string): string {
  let out = "";
  for (const ch of fold(s)) out += CAPITALS[ch] ?? ch;
  let low = "";
  for (const ch of out.toLowerCase()) low += SMALL[ch] ?? ch;
  for (const [re, to] of PAIRS) low = low.replace(re, to);
  return low;
}

/** The skeleton without separators: what two names must share to count as the same. */
export function normalizedName(s: string): string {
  return confusableSkeleton(s).replace(SEPARATORS, "");
}

/**
 * Damerau-Levenshtein distance (insertions, deletions, substitutions and
 * transpositions of adjacent characters, unrestricted), over code points.
 */
export function damerauLevenshtein(a: string, b: string): number {
  const s = Array.from(a);
  const t = Array.from(b);
  const n = s.length;
  const m = t.length;
  if (n === 0) return m;
  if (m === 0) return n;
  const w = m + 2;
  const h = new Int32Array((n + 2) * w);
  const at = (i: number, j: number) => h[i * w + j] as number;
  const max = n + m;
  h[0] = max;
  for (let i = 0; i <= n; i++) {
    h[(i + 1) * w] = max;
    h[(i + 1) * w + 1] = i;
  }
  for (let j = 0; j <= m; j++) {
    h[j + 1] = max;
    h[w + j + 1] = j;
  }
  const last = new Map<string, number>();
  for (let i = 1; i <= n; i++) {
    let lastMatchCol = 0;
    for (let j = 1; j <= m; j++) {
      const i1 = last.get(t[j - 1] as string) ?? 0;
      const j1 = lastMatchCol;
      let cost = 1;
      if (s[i - 1] === t[j - 1]) {
        cost = 0;
        lastMatchCol = j;
      }
      h[(i + 1) * w + j + 1] = Math.min(
        at(i, j) + cost,
        at(i + 1, j) + 1,
        at(i, j + 1) + 1,
        at(i1, j1) + (i - i1 - 1) + 1 + (j - j1 - 1),
      );
    }
    last.set(s[i - 1] as string, i);
  }
  return at(n + 1, m + 1);
}

/** Edits allowed between two names whose distinctive parts are this long. */
export function allowedEdits(distinctiveLength: number): number {
  return distinctiveLength <= 3 ? 0 : distinctiveLength <= 5 ? 1 : 2;
}

const COMMON_WORDS: Readonly<Record<LookAlikeKind, ReadonlySet<string>>> = {
  package: new Set(["mcp", "server", "servers"]),
  host: new Set(["mcp", "api", "www", "com", "net", "org", "io", "app", "dev", "ai", "co"]),
};

/** Longest name compared by edit distance (npm allows 214 characters, hosts 253). */
const MAX_COMPARED = 256;

interface Parsed {
  raw: string;
  scope: string | null;
  bare: string;
  /** Skeleton without separators. */
  bareN: string;
  /** As written without separators: differs from another's when look-alikes were needed. */
  bareRaw: string;
  scopeN: string | null;
  /** Length of the distinctive words of the unscoped name. */
  distinctive: number;
}

function parse(name: string, kind: LookAlikeKind): Parsed {
  let scope: string | null = null;
  let bare = name;
  if (kind === "package" && name.startsWith("@") && name.includes("/")) {
    const slash = name.indexOf("/");
    scope = name.slice(1, slash);
    bare = name.slice(slash + 1);
  }
  const skeleton = confusableSkeleton(bare);
  const distinctive = skeleton
    .split(/[-_.]+/)
    .filter((w) => w !== "" && !COMMON_WORDS[kind].has(w))
    .reduce((a, w) => a + Array.from(w).length, 0);
  return {
    raw: name,
    scope,
    bare,
    bareN: skeleton.replace(SEPARATORS, ""),
    bareRaw: bare.replace(SEPARATORS, ""),
    scopeN: scope === null ? null : normalizedName(scope),
    distinctive,
  };
}

function closeEnough(a: string, b: string, allowed: number): number | null {
  if (allowed <= 0) return null;
  const la = Array.from(a).length;
  const lb = Array.from(b).length;
  if (Math.abs(la - lb) > allowed || la > MAX_COMPARED || lb > MAX_COMPARED) return null;
  const d = damerauLevenshtein(a, b);
  return d > 0 && d <= allowed ? d : null;
}

interface Known {
  parsed: Parsed;
  kind: LookAlikeKind;
  wellKnown: boolean;
  approved: boolean;
  approvedAs: string[];
}

interface Verdict {
  ruleId: LookAlikeRule;
  severity: "high" | "medium";
  distance: number;
  why: string;
}

const q = (s: string): string => {
  const j = JSON.stringify(s);
  return j.length > 202 ? `${j.slice(0, 200)}…"` : j;
};

/** Characters of `name` that the look-alike table or folding changes, for the explanation. */
function lookAlikeChars(name: string, other: string): string[] {
  const out = new Set<string>();
  for (const ch of name) {
    const cp = ch.codePointAt(0) as number;
    const mapped = CAPITALS[ch] !== undefined || SMALL[ch.toLowerCase()] !== undefined;
    if ((cp > 0x7e || cp < 0x20 || mapped) && !other.includes(ch))
      out.add(`${JSON.stringify(ch)} (U+${cp.toString(16).toUpperCase().padStart(4, "0")})`);
  }
  for (const [re] of PAIRS) {
    const pair = re.source;
    if (name.toLowerCase().includes(pair) && !other.toLowerCase().includes(pair)) out.add(`"${pair}"`);
  }
  return [...out];
}

function classify(c: Parsed, k: Known, generic: ReadonlySet<string>, bareIsKnown: boolean): Verdict | null {
  const kp = k.parsed;
  if (c.raw === kp.raw) return null;
  const chars = (a: string, b: string) => {
    const list = lookAlikeChars(a, b);
    return list.length > 0 ? ` (look-alike characters: ${list.join(", ")})` : "";
  };
  if (c.bareN === kp.bareN) {
    if (c.scope === kp.scope) {
      if (c.bareRaw === kp.bareRaw)
        return {
          ruleId: "typosquat.separator",
          severity: "medium",
          distance: 0,
          why: `differs from it only in separators ("-", "_", ".")`,
        };
      return {
        ruleId: "typosquat.homoglyph",
        severity: "high",
        distance: 0,
        why: `is identical to it once look-alike characters are normalized${chars(c.bare, kp.bare)}`,
      };
    }
    if (c.scope !== null && kp.scope !== null && c.scopeN === kp.scopeN)
      return {
        ruleId: "typosquat.scope-swap",
        severity: "high",
        distance: 0,
        why: `has a scope, "@${c.scope}", that reads as "@${kp.scope}" once look-alike characters and separators are normalized${chars(c.scope, kp.scope)}${c.bare !== kp.bare ? `, and the same name after it once normalized` : ""}`,
      };
    const nearScope =
      c.scopeN !== null &&
      kp.scopeN !== null &&
      closeEnough(
        c.scopeN,
        kp.scopeN,
        allowedEdits(Math.min(Array.from(c.scopeN).length, Array.from(kp.scopeN).length)),
      ) !== null;
    if (!nearScope && generic.has(kp.bareN)) return null;
    const where =
      c.scope === null
        ? "without a scope"
        : kp.scope === null
          ? `under the scope "@${c.scope}" (the known package has none)`
          : `under another scope, "@${c.scope}"${nearScope ? `, close to "@${kp.scope}"` : ""}`;
    return {
      ruleId: "typosquat.scope-swap",
      severity: "medium",
      distance: 0,
      why: `has the same name ${q(c.bare)}${c.bare !== kp.bare ? " (once normalized)" : ""} but is published ${where}: it is a different package`,
    };
  }
  if (bareIsKnown) return null;
  const d = closeEnough(c.bareN, kp.bareN, allowedEdits(Math.min(c.distinctive, kp.distinctive)));
  if (d === null) return null;
  const scopeNote =
    c.scope === kp.scope
      ? ""
      : c.scope === null
        ? "; it also has no scope"
        : kp.scope === null
          ? `; it also has a scope, "@${c.scope}"`
          : `; its scope also differs ("@${c.scope}")`;
  return {
    ruleId: "typosquat.edit-distance",
    severity: "medium",
    distance: d,
    why: `is ${d} edit${d === 1 ? "" : "s"} away from it (Damerau-Levenshtein distance of the names without their scope, look-alike characters normalized)${chars(c.bare, kp.bare)}${scopeNote}`,
  };
}

function groupReferences(candidateKind: LookAlikeKind, references: readonly LookAlikeReference[]): Known[] {
  const byName = new Map<string, Known>();
  for (const r of references) {
    if (r.kind !== candidateKind || r.name === "") continue;
    let k = byName.get(r.name);
    if (!k) {
      k = { parsed: parse(r.name, r.kind), kind: r.kind, wellKnown: false, approved: false, approvedAs: [] };
      byName.set(r.name, k);
    }
    if (r.source === "well-known") k.wellKnown = true;
    else {
      k.approved = true;
      if (r.server !== undefined && !k.approvedAs.includes(r.server)) k.approvedAs.push(r.server);
    }
  }
  return [...byName.values()];
}

/** Unscoped names published under several scopes (or with almost nothing distinctive): generic words. */
function genericNames(known: readonly Known[]): Set<string> {
  const scopes = new Map<string, Set<string>>();
  const out = new Set<string>();
  for (const k of known) {
    const p = k.parsed;
    if (p.distinctive < 3) out.add(p.bareN);
    const set = scopes.get(p.bareN) ?? new Set<string>();
    set.add(p.scopeN ?? "");
    scopes.set(p.bareN, set);
  }
  for (const [bare, set] of scopes) if (set.size > 1) out.add(bare);
  return out;
}

const SEVERITY_RANK = { high: 0, medium: 1 } as const;

/**
 * The known names `candidate` looks like, strongest first (high before
 * medium, then by distance and name); empty when it resembles none, or is
 * itself a well-known name. Pure: depends only on its arguments and the
 * fixed normalization tables.
 */
export function findLookAlikes(
  candidate: { kind: LookAlikeKind; name: string },
  references: readonly LookAlikeReference[],
): LookAlike[] {
  if (candidate.name === "") return [];
  const known = groupReferences(candidate.kind, references);
  if (known.some((k) => k.wellKnown && k.parsed.raw === candidate.name)) return [];
  const c = parse(candidate.name, candidate.kind);
  const generic = genericNames(known);
  const bareIsKnown = known.some((k) => k.parsed.bareN === c.bareN);
  const approvedItself = known.some((k) => k.approved && k.parsed.raw === c.raw);
  const what = candidate.kind === "package" ? "package name" : "host name";
  const out: LookAlike[] = [];
  for (const k of known) {
    const v = classify(c, k, generic, bareIsKnown);
    if (!v) continue;
    const approvedServers = k.approvedAs;
    const source = [
      ...(k.wellKnown ? ["a well-known MCP package (policies/well-known-mcp-packages.json)"] : []),
      ...(k.approved
        ? [
            approvedServers.length > 0
              ? `approved in the previous catalog for server${approvedServers.length === 1 ? "" : "s"} ${approvedServers.map(q).join(", ")}`
              : "approved in the previous catalog",
          ]
        : []),
    ].join(", and ");
    const title =
      candidate.kind === "package"
        ? "Package name looks like a known package"
        : "Host name looks like an approved host";
    const already = approvedItself
      ? ` This ${what} was itself approved in the previous catalog; it is reported because it still resembles another known name.`
      : "";
    out.push({
      ruleId: v.ruleId,
      severity: v.severity,
      title,
      candidate: candidate.name,
      resembles: k.parsed.raw,
      wellKnown: k.wellKnown,
      approvedAs: approvedServers,
      distance: v.distance,
      explanation:
        `The ${what} ${q(candidate.name)} resembles ${q(k.parsed.raw)}, ${source}: it ${v.why}. ` +
        `Look-alike names are a common way to get another ${candidate.kind === "package" ? "package installed" : "server reached"} in place of a known one; check that this is the one you meant.${already} ` +
        `(This check only knows the names on its lists: a finding is a hint, and its absence proves nothing.)`,
      detail: `resembles ${k.parsed.raw}`,
    });
  }
  return out.sort(
    (a, b) =>
      SEVERITY_RANK[a.severity] - SEVERITY_RANK[b.severity] ||
      a.distance - b.distance ||
      (a.resembles < b.resembles ? -1 : a.resembles > b.resembles ? 1 : 0),
  );
}
