/**
 * RFC 8785 JSON Canonicalization Scheme (JCS).
 *
 * Accepted values: null, booleans, finite numbers, well-formed strings, arrays
 * and plain objects (prototype Object.prototype or null). Everything else is
 * refused rather than coerced: JSON.stringify would silently drop undefined,
 * call toJSON, or turn a Date into a string, and any such silent change would
 * let two different values sign to the same bytes.
 *
 * Limits: containers may nest at most `maxDepth` levels (default
 * JCS_MAX_DEPTH = 1000, top-level container = depth 1). The serializer is
 * recursive (two frames per level); 1000 levels stay well inside V8's default
 * stack, and the limit also turns a cyclic value into a `jcs.depth` error
 * instead of a stack overflow. Objects from another realm (vm contexts) have a
 * different Object.prototype and are refused as non-plain.
 */
import { CmcpError } from "./errors.js";

export const JCS_MAX_DEPTH = 1000;

export interface CanonicalizeOptions {
  /** Maximum container nesting, a non-negative integer; default JCS_MAX_DEPTH. */
  maxDepth?: number;
}

// ES2024 String.prototype.isWellFormed (Node >= 20); tsconfig's lib is ES2022.
interface WellFormedCheck {
  isWellFormed(): boolean;
}

const objectProto = Object.prototype;
const encoder = new TextEncoder();

/** Internal failure; converted to CmcpError once, with the JSON Pointer of the offending value. */
class Fault {
  readonly path: (string | number)[] = [];
  constructor(
    readonly code: string,
    readonly what: string,
  ) {}
}

/** Returns the RFC 8785 canonical JSON text of `value`. */
export function canonicalize(value: unknown, options?: CanonicalizeOptions): string {
  const maxDepth = options?.maxDepth ?? JCS_MAX_DEPTH;
  if (!Number.isInteger(maxDepth) || maxDepth < 0) {
    throw new CmcpError("jcs.options", "maxDepth must be a non-negative integer");
  }
  try {
    return serialize(value, maxDepth);
  } catch (err) {
    if (!(err instanceof Fault)) throw err;
    const pointer = toPointer(err.path.reverse());
    // JSON.stringify keeps a lone-surrogate key readable (escaped) in the message.
    const where = pointer === "" ? "the top level" : JSON.stringify(pointer.slice(0, 200));
    throw new CmcpError(err.code, `${err.what} at ${where}`, { path: pointer });
  }
}

/** UTF-8 bytes of canonicalize(value): the bytes that are hashed and signed. */
export function canonicalBytes(value: unknown, options?: CanonicalizeOptions): Uint8Array {
  return encoder.encode(canonicalize(value, options));
}

// `depthLeft` counts down so the check is one comparison per container.
function serialize(value: unknown, depthLeft: number): string {
  switch (typeof value) {
    case "string":
      return quote(value);
    case "number":
      if (!Number.isFinite(value)) throw new Fault("jcs.non-finite", `number ${value} is not allowed`);
      // Number::toString is exactly RFC 8785 section 3.2.2.3; it already prints -0 as "0".
      return String(value);
    case "boolean":
      return value ? "true" : "false";
    case "object":
      if (value === null) return "null";
      if (depthLeft <= 0) {
        throw new Fault("jcs.depth", "value nests too deeply (or is cyclic)");
      }
      if (Array.isArray(value)) return serializeArray(value, depthLeft - 1);
      {
        const proto: unknown = Object.getPrototypeOf(value);
        if (proto === objectProto || proto === null) {
          return serializeObject(value as Record<string, unknown>, depthLeft - 1);
        }
      }
      throw new Fault("jcs.unsupported-type", `${describe(value)} is not a JSON value`);
    default:
      throw new Fault("jcs.unsupported-type", `${typeof value} is not a JSON value`);
  }
}

function serializeArray(arr: readonly unknown[], depthLeft: number): string {
  const n = arr.length;
  if (n === 0) return "[]";
  let i = 0;
  try {
    let out = "[" + serialize(arr[0], depthLeft);
    for (i = 1; i < n; i++) out += "," + serialize(arr[i], depthLeft);
    return out + "]";
  } catch (err) {
    if (err instanceof Fault) err.path.push(i);
    throw err;
  }
}

function serializeObject(obj: Record<string, unknown>, depthLeft: number): string {
  // Symbol keys are invisible to Object.keys; dropping them silently would sign less than was given.
  if (Object.getOwnPropertySymbols(obj).length !== 0) {
    throw new Fault("jcs.unsupported-type", "object has symbol-keyed properties");
  }
  const keys = sortKeys(Object.keys(obj));
  const n = keys.length;
  if (n === 0) return "{}";
  let key = "";
  try {
    let out = "{";
    for (let i = 0; i < n; i++) {
      key = keys[i]!;
      if (i !== 0) out += ",";
      out += quote(key) + ":" + serialize(obj[key], depthLeft);
    }
    return out + "}";
  } catch (err) {
    if (err instanceof Fault) err.path.push(key);
    throw err;
  }
}

// For well-formed strings JSON.stringify escapes exactly as RFC 8785 section 3.2.2.2:
// \b \t \n \f \r \" \\, other C0 controls as lowercase \u00xx, everything else literal.
// Lone surrogates are the only case where it differs (it would emit \udXXX), hence the check.
function quote(s: string): string {
  if (!(s as unknown as WellFormedCheck).isWellFormed()) {
    throw new Fault("jcs.lone-surrogate", "string contains an unpaired UTF-16 surrogate");
  }
  return JSON.stringify(s);
}

function describe(value: object): string {
  const ctor = (Object.getPrototypeOf(value) as { constructor?: { name?: unknown } } | null)?.constructor;
  return typeof ctor?.name === "string" && ctor.name !== "" ? `${ctor.name} instance` : "non-plain object";
}

function toPointer(path: readonly (string | number)[]): string {
  let out = "";
  for (const p of path) out += "/" + String(p).replaceAll("~", "~0").replaceAll("/", "~1");
  return out;
}

/**
 * RFC 8785 section 3.2.3 orders keys by UTF-16 code units, which is what both
 * the string `>` operator and the default Array#sort compare. Insertion sort
 * is measurably faster for the small objects receipts are made of.
 */
function sortKeys(keys: string[]): string[] {
  const n = keys.length;
  if (n > 24) return keys.sort();
  for (let i = 1; i < n; i++) {
    const k = keys[i]!;
    let j = i - 1;
    while (j >= 0 && keys[j]! > k) {
      keys[j + 1] = keys[j]!;
      j--;
    }
    keys[j + 1] = k;
  }
  return keys;
}
