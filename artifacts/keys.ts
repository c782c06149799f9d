/**
 * Ed25519 keys through node:crypto (OpenSSL): the gateway's hot path and the
 * CLI verifier. `ed25519-noble.ts` holds the pure-JS equivalent for code that
 * must also run in a browser; tests check that both agree.
 */
import {
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  sign,
  verify,
  type KeyObject,
} from "node:crypto";
import { concatBytes, toHex } from "./encoding.js";
import { CmcpError } from "./errors.js";
import { sha256Hex } from "./hash.js";

export const PUBLIC_KEY_SIZE = 32;
export const SIGNATURE_SIZE = 64;

// DER prefixes for raw Ed25519 keys (RFC 8410): SPKI for public, PKCS#8 for private.
const SPKI_PREFIX = Uint8Array.from([0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00]);
const PKCS8_PREFIX = Uint8Array.from([
  0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
]);

/**
 * Stable key ID: lowercase hex SHA-256 of the raw 32-byte public key. It is
 * what receipts name as their signer and what an auditor passes to --key.
 */
export function keyId(publicKey: Uint8Array): string {
  if (publicKey.length !== PUBLIC_KEY_SIZE)
    throw new CmcpError("key.size", "Ed25519 public key must be 32 bytes");
  return sha256Hex(publicKey);
}

/** A signing key whose private half stays inside a non-exportable KeyObject. */
export interface Signer {
  readonly publicKey: Uint8Array;
  readonly keyId: string;
  sign(message: Uint8Array): Uint8Array;
}

class NodeSigner implements Signer {
  readonly publicKey: Uint8Array;
  readonly keyId: string;
  readonly #privateKey: KeyObject;

  constructor(privateKey: KeyObject) {
    this.#privateKey = privateKey;
    const spki = createPublicKey(privateKey).export({ format: "der", type: "spki" });
    this.publicKey = new Uint8Array(spki.subarray(SPKI_PREFIX.length));
    this.keyId = keyId(this.publicKey);
  }

  sign(message: Uint8Array): Uint8Array {
    return new Uint8Array(sign(null, message, this.#privateKey));
  }

  toJSON(): unknown {
    // Never serialize the private half by accident (logs, JSON.stringify).
    return { keyId: this.keyId };
  }
}

export function generateSigner(): Signer {
  return new NodeSigner(generateKeyPairSync("ed25519").privateKey);
}

/** Builds a signer from a 32-byte RFC 8032 seed (approver keys, fixtures). */
export function signerFromSeed(seed: Uint8Array): Signer {
  if (seed.length !== 32) throw new CmcpError("key.size", "Ed25519 seed must be 32 bytes");
  const der = Buffer.from(concatBytes(PKCS8_PREFIX, seed));
  return new NodeSigner(createPrivateKey({ key: der, format: "der", type: "pkcs8" }));
}

/** A fresh Ed25519 key pair: the private half as PKCS#8 PEM (for a key file), the public half raw. */
export function generateKeyPem(): { privatePem: string; publicKey: Uint8Array } {
  const { privateKey } = generateKeyPairSync("ed25519");
  const privatePem = privateKey.export({ format: "pem", type: "pkcs8" }).toString();
  return { privatePem, publicKey: new NodeSigner(privateKey).publicKey };
}

/** A signer from a PKCS#8 PEM key file's text (issuer and approver keys); anything but Ed25519 is refused. */
export function signerFromPem(pem: string): Signer {
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: pem, format: "pem" });
  } catch (err) {
    throw new CmcpError("key.parse", `not a PEM private key: ${(err as Error).message}`);
  }
  if (key.asymmetricKeyType !== "ed25519")
    throw new CmcpError("key.type", `expected an Ed25519 key, got ${key.asymmetricKeyType ?? "unknown"}`);
  return new NodeSigner(key);
}

const publicKeyCache = new Map<string, KeyObject>();
const PUBLIC_KEY_CACHE_MAX = 1024;

function publicKeyObject(publicKey: Uint8Array): KeyObject {
  const hex = toHex(publicKey);
  let key = publicKeyCache.get(hex);
  if (!key) {
    key = createPublicKey({
      key: Buffer.from(concatBytes(SPKI_PREFIX, publicKey)),
      format: "der",
      type: "spki",
    });
    if (publicKeyCache.size >= PUBLIC_KEY_CACHE_MAX) publicKeyCache.clear();
    publicKeyCache.set(hex, key);
  }
  return key;
}

/** Verifies an Ed25519 signature; returns false (never throws) on malformed keys or signatures. */
export function verifySignature(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean {
  if (publicKey.length !== PUBLIC_KEY_SIZE || signature.length !== SIGNATURE_SIZE) return false;
  try {
    return verify(null, message, publicKeyObject(publicKey), signature);
  } catch {
    return false;
  }
}
