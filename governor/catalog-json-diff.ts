/**
 * Field-level difference between two JSON values, as a list of changes named
 * by RFC 6901 JSON Pointer. Used by `cmcp catalog diff`, by identity
 * comparison and (through diffDefinitions) by drift receipts.
 *
 * Objects are compared key by key (keys in UTF-16 order, as in JCS), arrays
 * index by index (elements past the shorter array are added or removed), and
 * anything else, including a change of type, is one "changed" entry at that
 * path. Equal values produce no entry. Numbers compare with === after JSON
 * parsing, so -0 and 0 are equal, as they are in JCS.
 */

export interface FieldChange {
  /** JSON Pointer of the field, relative to the values compared ("" for the whole value). */
  path: string;
  op: "added" | "removed" | "changed";
  /** Absent when op is "added". */
  before?: unknown;
  /** Absent when op is "removed". */
  after?: unknown;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

export function pointerToken(key: string | number): string {
  return String(key).replaceAll("~", "~0").replaceAll("/", "~1");
}

/** Structural equality of JSON values. */
export function jsonEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (Array.isArray(a)) {
    if (!Array.isArray(b) || a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (!jsonEqual(a[i], b[i])) return false;
    return true;
  }
  if (isPlainObject(a)) {
    if (!isPlainObject(b)) return false;
    const ka = Object.keys(a);
    if (ka.length !== Object.keys(b).length) return false;
    for (const k of ka) if (!Object.hasOwn(b, k) || !jsonEqual(a[k], b[k])) return false;
    return true;
  }
  return false;
}

/**
 * Changes that turn `before` into `after`. `undefined` stands for "absent":
 * diffJson(undefined, x) is one "added" entry at the root.
 */
export function diffJson(before: unknown, after: unknown, base = ""): FieldChange[] {
  const out: FieldChange[] = [];
  walk(before, after, base, out);
  return out;
}

function walk(a: unknown, b: unknown, path: string, out: FieldChange[]): void {
  if (a === undefined && b === undefined) return;
  if (a === undefined) {
    out.push({ path, op: "added", after: b });
    return;
  }
  if (b === undefined) {
    out.push({ path, op: "removed", before: a });
    return;
  }
  if (jsonEqual(a, b)) return;
  if (isPlainObject(a) && isPlainObject(b)) {
    const keys = [...new Set([...Object.keys(a), ...Object.keys(b)])].sort();
    for (const k of keys) {
      walk(
        Object.hasOwn(a, k) ? a[k] : undefined,
        Object.hasOwn(b, k) ? b[k] : undefined,
        `${path}/${pointerToken(k)}`,
        out,
      );
    }
    return;
  }
  if (Array.isArray(a) && Array.isArray(b)) {
    const n = Math.max(a.length, b.length);
    for (let i = 0; i < n; i++) {
      walk(i < a.length ? a[i] : undefined, i < b.length ? b[i] : undefined, `${path}/${i}`, out);
    }
    return;
  }
  out.push({ path, op: "changed", before: a, after: b });
}
