/** SHA-256, the only digest in cmcp's evidence formats. */
import { createHash } from "node:crypto";
import { toHex } from "./encoding.js";

export function sha256(...parts: Uint8Array[]): Uint8Array {
  const h = createHash("sha256");
  for (const p of parts) h.update(p);
  return new Uint8Array(h.digest());
}

export function sha256Hex(...parts: Uint8Array[]): string {
  return toHex(sha256(...parts));
}
