/** Reads a private key file made by `cmcp keygen` (issuer or approver): PEM, Ed25519, small. */
import { open } from "node:fs/promises";
import { CmcpError } from "../artifacts/errors.js";
import { signerFromPem, type Signer } from "../artifacts/keys.js";

/** A PEM Ed25519 key is about 120 bytes; anything near this is not one. */
const MAX_KEY_FILE_BYTES = 16 * 1024;

export async function readSignerFile(path: string, role: "issuer" | "approver"): Promise<Signer> {
  let text: string;
  try {
    const fh = await open(path, "r");
    try {
      const buf = Buffer.alloc(MAX_KEY_FILE_BYTES + 1);
      const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
      if (bytesRead > MAX_KEY_FILE_BYTES)
        throw new CmcpError("key.file", `${role} key ${path} is larger than ${MAX_KEY_FILE_BYTES} bytes`);
      text = buf.subarray(0, bytesRead).toString("utf8");
    } finally {
      await fh.close();
    }
  } catch (err) {
    if (err instanceof CmcpError) throw err;
    throw new CmcpError(
      "key.file",
      `cannot read ${role} key ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`,
    );
  }
  return signerFromPem(text);
}
