/**
 * Pure-JS Ed25519 (@noble/ed25519) for code that must also run in a browser
 * (the verifier page). About 8x slower than node:crypto, so the gateway and
 * CLI use keys.ts; tests check that both agree.
 */
import * as ed from "@noble/ed25519";
import { sha512 } from "@noble/hashes/sha2.js";

ed.hashes.sha512 = sha512;

export function noblePublicKey(seed: Uint8Array): Uint8Array {
  return ed.getPublicKey(seed);
}

export function nobleSign(seed: Uint8Array, message: Uint8Array): Uint8Array {
  return ed.sign(message, seed);
}

/** RFC 8032 verification (not ZIP-215), matching OpenSSL's acceptance rules. */
export function nobleVerify(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean {
  try {
    return ed.verify(signature, message, publicKey, { zip215: false });
  } catch {
    return false;
  }
}
