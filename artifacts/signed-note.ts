/**
 * C2SP signed-note (c2sp.org/signed-note) with Ed25519 (signature type 0x01).
 *
 *   <text ending in "\n">
 *   <blank line>
 *   — <key name> <base64(4-byte key ID ‖ signature)>\n   (one or more)
 *
 * Limits on untrusted notes: at most 1 MiB of UTF-8 and at most 100
 * signature lines (the spec requires accepting at least 16).
 *
 * Text rules follow the spec: valid UTF-8, no ASCII control characters other
 * than newline, non-empty, ends in "\n". The spec lets the text contain empty
 * lines and separates it from the signatures at the *last* blank line; we
 * accept that when opening notes, so notes from other implementations verify.
 */
import { bytesEqual, concatBytes, fromBase64, fromHex, toBase64, toHex, utf8 } from "./encoding.js";
import { CmcpError } from "./errors.js";
import { sha256 } from "./hash.js";
import { PUBLIC_KEY_SIZE, verifySignature, type Signer } from "./keys.js";

export const MAX_NOTE_BYTES = 1024 * 1024;
export const MAX_NOTE_SIGNATURES = 100;
export const ED25519_SIGNATURE_TYPE = 0x01;

const SIG_PREFIX = "\u2014 ";
const KEY_HASH_SIZE = 4;
// JS \s covers Unicode White_Space except U+0085 (NEL), which Go's unicode.IsSpace also counts.
const NAME_FORBIDDEN = /[\s\u0085+]/u;
// ASCII controls other than newline, and (in /u mode, only lone) surrogates, which UTF-8 cannot encode.
// eslint-disable-next-line no-control-regex
const BAD_TEXT = /[\u0000-\u0009\u000b-\u001f\ud800-\udfff]/u;

export interface NoteVerifier {
  name: string;
  publicKey: Uint8Array;
}

export interface NoteSigner {
  name: string;
  signer: Signer;
}

export type OpenNoteResult =
  { ok: true; text: string; verifiedBy: string[] } | { ok: false; code: string; reason: string };

export type ParseVerifierKeyResult =
  | { ok: true; name: string; keyHash: Uint8Array; publicKey: Uint8Array }
  | { ok: false; code: string; reason: string };

/** Key names: non-empty, no Unicode whitespace, no '+', no control characters. */
export function isValidKeyName(name: unknown): name is string {
  return typeof name === "string" && name.length > 0 && !NAME_FORBIDDEN.test(name) && !BAD_TEXT.test(name);
}

/** Ed25519 key ID: SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)[:4]. */
export function noteKeyHash(name: string, publicKey: Uint8Array): Uint8Array {
  if (!isValidKeyName(name)) throw new CmcpError("note.invalid_name", "invalid signed-note key name");
  if (publicKey.length !== PUBLIC_KEY_SIZE) {
    throw new CmcpError("key.size", "Ed25519 public key must be 32 bytes");
  }
  const digest = sha256(utf8(name), Uint8Array.of(0x0a, ED25519_SIGNATURE_TYPE), publicKey);
  return digest.subarray(0, KEY_HASH_SIZE);
}

/** `<name>+<8 hex key ID>+<base64(0x01 ‖ public key)>`, as used by Go's note package. */
export function formatVerifierKey(name: string, publicKey: Uint8Array): string {
  const hash = noteKeyHash(name, publicKey);
  return `${name}+${toHex(hash)}+${toBase64(concatBytes(Uint8Array.of(ED25519_SIGNATURE_TYPE), publicKey))}`;
}

/**
 * Parses a verifier key string; returns a failed result, never throws. The
 * key ID must be lowercase hex and must match the name and key.
 */
export function parseVerifierKey(text: string): ParseVerifierKeyResult {
  const bad = (reason: string): ParseVerifierKeyResult => ({ ok: false, code: "note.verifier_key", reason });
  if (typeof text !== "string" || text.length > 1024) return bad("verifier key must be a short string");
  // Names contain no '+', but the base64 key may: split only the first two fields.
  const p1 = text.indexOf("+");
  const p2 = p1 < 0 ? -1 : text.indexOf("+", p1 + 1);
  if (p2 < 0) return bad("verifier key must be name+keyid+key");
  const name = text.slice(0, p1);
  const hashHex = text.slice(p1 + 1, p2);
  const keyB64 = text.slice(p2 + 1);
  if (!isValidKeyName(name)) return bad("verifier key has an invalid name");
  let keyHash: Uint8Array;
  let key: Uint8Array;
  try {
    keyHash = fromHex(hashHex, KEY_HASH_SIZE);
    key = fromBase64(keyB64);
  } catch {
    return bad("verifier key ID or key is not valid hex/base64");
  }
  if (key.length !== 1 + PUBLIC_KEY_SIZE || key[0] !== ED25519_SIGNATURE_TYPE) {
    return bad("verifier key is not an Ed25519 (type 0x01) key");
  }
  const publicKey = key.slice(1);
  if (!bytesEqual(keyHash, noteKeyHash(name, publicKey))) {
    return bad("verifier key ID does not match name and key");
  }
  return { ok: true, name, keyHash, publicKey };
}

/** Why the text cannot be a note text, or undefined when it can. */
function textProblem(text: string): string | undefined {
  if (text.length === 0) return "note text is empty";
  if (!text.endsWith("\n")) return "note text does not end in a newline";
  if (BAD_TEXT.test(text)) return "note text has control characters or invalid UTF-16";
  return undefined;
}

/** Signs `text` with each signer, in order. Throws CmcpError on invalid input. */
export function signNote(text: string, signers: readonly NoteSigner[]): string {
  if (typeof text !== "string") throw new CmcpError("note.invalid_text", "note text must be a string");
  const problem = textProblem(text);
  if (problem) throw new CmcpError("note.invalid_text", problem);
  if (signers.length === 0) throw new CmcpError("note.no_signers", "a note needs at least one signature");
  if (signers.length > MAX_NOTE_SIGNATURES) {
    throw new CmcpError("note.too_many_signatures", `at most ${MAX_NOTE_SIGNATURES} signatures`);
  }
  const message = utf8(text);
  let out = text + "\n";
  for (const { name, signer } of signers) {
    if (!isValidKeyName(name)) {
      throw new CmcpError("note.invalid_name", `invalid signed-note key name: ${name}`);
    }
    const sig = signer.sign(message);
    out += `${SIG_PREFIX}${name} ${toBase64(concatBytes(noteKeyHash(name, signer.publicKey), sig))}\n`;
  }
  if (Buffer.byteLength(out, "utf8") > MAX_NOTE_BYTES) {
    throw new CmcpError("note.too_large", `signed note exceeds ${MAX_NOTE_BYTES} bytes`);
  }
  return out;
}

interface SignatureLine {
  name: string;
  keyHashHex: string;
  signature: Uint8Array;
}

function parseSignatureLine(line: string): SignatureLine | undefined {
  if (!line.startsWith(SIG_PREFIX)) return undefined;
  const rest = line.slice(SIG_PREFIX.length);
  const space = rest.indexOf(" ");
  if (space < 0) return undefined;
  const name = rest.slice(0, space);
  const b64 = rest.slice(space + 1);
  if (!isValidKeyName(name) || b64.length === 0) return undefined;
  let raw: Uint8Array;
  try {
    raw = fromBase64(b64);
  } catch {
    return undefined;
  }
  if (raw.length < KEY_HASH_SIZE + 1) return undefined;
  return { name, keyHashHex: toHex(raw.subarray(0, KEY_HASH_SIZE)), signature: raw.subarray(KEY_HASH_SIZE) };
}

/**
 * Verifies a signed note against trusted keys. Signatures from keys not in
 * `verifiers` (by name and key ID) are ignored; a signature from a known key
 * that fails verification rejects the note; at least one known key must have
 * signed. Never throws.
 */
export function openNote(note: string, verifiers: readonly NoteVerifier[]): OpenNoteResult {
  try {
    return openNoteUnsafe(note, verifiers);
  } catch (err) {
    return { ok: false, code: "note.invalid_input", reason: `note could not be read: ${String(err)}` };
  }
}

function openNoteUnsafe(note: string, verifiers: readonly NoteVerifier[]): OpenNoteResult {
  const fail = (code: string, reason: string): OpenNoteResult => ({ ok: false, code, reason });
  if (typeof note !== "string") return fail("note.malformed", "note must be a string");
  if (note.length > MAX_NOTE_BYTES || Buffer.byteLength(note, "utf8") > MAX_NOTE_BYTES) {
    return fail("note.too_large", `note exceeds ${MAX_NOTE_BYTES} bytes`);
  }
  if (BAD_TEXT.test(note)) return fail("note.invalid_text", "note has control characters or invalid UTF-16");

  const split = note.lastIndexOf("\n\n");
  if (split < 0) return fail("note.malformed", "note has no blank line before the signatures");
  const text = note.slice(0, split + 1);
  const sigBlock = note.slice(split + 2);
  if (sigBlock.length === 0 || !sigBlock.endsWith("\n")) {
    return fail("note.malformed", "note must end with newline-terminated signature lines");
  }
  const lines = sigBlock.slice(0, -1).split("\n");
  if (lines.length > MAX_NOTE_SIGNATURES) {
    return fail("note.too_many_signatures", `note has more than ${MAX_NOTE_SIGNATURES} signature lines`);
  }
  const parsed: SignatureLine[] = [];
  for (const line of lines) {
    const sig = parseSignatureLine(line);
    if (!sig) return fail("note.signature_line", "malformed signature line");
    parsed.push(sig);
  }

  const known = new Map<string, NoteVerifier>();
  if (!Array.isArray(verifiers)) return fail("note.verifier", "verifiers must be an array");
  for (const v of verifiers) {
    if (
      !isValidKeyName(v?.name) ||
      !(v.publicKey instanceof Uint8Array) ||
      v.publicKey.length !== PUBLIC_KEY_SIZE
    ) {
      return fail("note.verifier", "verifier has an invalid name or public key");
    }
    const id = `${v.name} ${toHex(noteKeyHash(v.name, v.publicKey))}`;
    const prior = known.get(id);
    if (prior && !bytesEqual(prior.publicKey, v.publicKey)) {
      return fail("note.verifier", `two verifier keys share name and key ID: ${v.name}`);
    }
    known.set(id, v);
  }

  const message = utf8(text);
  const verifiedBy: string[] = [];
  for (const sig of parsed) {
    const v = known.get(`${sig.name} ${sig.keyHashHex}`);
    if (!v) continue;
    // Every signature by a known key is checked, duplicates included.
    if (!verifySignature(v.publicKey, message, sig.signature)) {
      return fail("note.bad_signature", `signature by known key ${sig.name} does not verify`);
    }
    if (!verifiedBy.includes(sig.name)) verifiedBy.push(sig.name);
  }
  if (verifiedBy.length === 0) return fail("note.unverified", "note has no valid signature from a known key");
  return { ok: true, text, verifiedBy };
}
