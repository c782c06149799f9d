/**
 * Strict hex and base64 codecs. Node's Buffer decoders silently skip bad
 * characters and ignore trailing bits, which would let two different strings
 * name the same bytes; evidence formats need exactly one spelling per value.
 */
import { CmcpError } from "./errors.js";

const HEX_RE = /^[0-9a-f]*$/;
const B64_RE = /^[A-Za-z0-9+/]*={0,2}$/;
const B64URL_RE = /^[A-Za-z0-9_-]*$/;

/** Lowercase hex. */
export function toHex(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("hex");
}

/** Decodes lowercase hex only: odd length, uppercase or any other character is rejected. */
export function fromHex(text: string, expectedLength?: number): Uint8Array {
  if (typeof text !== "string") throw new CmcpError("encoding.hex", "hex value is not a string");
  if (text.length % 2 !== 0) throw new CmcpError("encoding.hex", "hex value has odd length");
  if (!HEX_RE.test(text)) throw new CmcpError("encoding.hex", "hex value has characters outside [0-9a-f]");
  if (expectedLength !== undefined && text.length !== expectedLength * 2) {
    throw new CmcpError(
      "encoding.hex",
      `hex value must encode ${expectedLength} bytes, got ${text.length / 2}`,
    );
  }
  return new Uint8Array(Buffer.from(text, "hex"));
}

/** Standard base64 with padding (RFC 4648 section 4). */
export function toBase64(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64");
}

/**
 * Decodes padded standard base64 and rejects anything that would not
 * re-encode to the same text: bad characters, missing or extra padding,
 * whitespace, and non-zero bits in the final partial group.
 */
export function fromBase64(text: string, expectedLength?: number): Uint8Array {
  if (typeof text !== "string") throw new CmcpError("encoding.base64", "base64 value is not a string");
  if (text.length % 4 !== 0) throw new CmcpError("encoding.base64", "base64 length is not a multiple of 4");
  if (!B64_RE.test(text)) throw new CmcpError("encoding.base64", "base64 value has invalid characters");
  const bytes = new Uint8Array(Buffer.from(text, "base64"));
  if (toBase64(bytes) !== text) {
    throw new CmcpError("encoding.base64", "base64 value is not canonical (non-zero padding bits)");
  }
  if (expectedLength !== undefined && bytes.length !== expectedLength) {
    throw new CmcpError(
      "encoding.base64",
      `base64 value must encode ${expectedLength} bytes, got ${bytes.length}`,
    );
  }
  return bytes;
}

/** Unpadded base64url (RFC 4648 section 5). */
export function toBase64Url(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64url");
}

export function fromBase64Url(text: string, expectedLength?: number): Uint8Array {
  if (typeof text !== "string") throw new CmcpError("encoding.base64url", "base64url value is not a string");
  if (!B64URL_RE.test(text) || text.length % 4 === 1) {
    throw new CmcpError("encoding.base64url", "base64url value has invalid characters or length");
  }
  const bytes = new Uint8Array(Buffer.from(text, "base64url"));
  if (toBase64Url(bytes) !== text) {
    throw new CmcpError("encoding.base64url", "base64url value is not canonical (non-zero padding bits)");
  }
  if (expectedLength !== undefined && bytes.length !== expectedLength) {
    throw new CmcpError(
      "encoding.base64url",
      `base64url value must encode ${expectedLength} bytes, got ${bytes.length}`,
    );
  }
  return bytes;
}

export function utf8(text: string): Uint8Array {
  return new Uint8Array(Buffer.from(text, "utf8"));
}

export function concatBytes(...parts: Uint8Array[]): Uint8Array {
  let total = 0;
  for (const p of parts) total += p.length;
  const out = new Uint8Array(total);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!;
  return diff === 0;
}
