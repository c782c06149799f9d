/**
 * `cmcp keygen`: an Ed25519 key file for a policy issuer or an approver. The
 * private key stays in that file (PKCS#8 PEM, mode 0600, never overwritten);
 * what the gateway's config pins is the public key this prints.
 */
import { open } from "node:fs/promises";
import { toBase64 } from "../artifacts/encoding.js";
import { CmcpError } from "../artifacts/errors.js";
import { generateKeyPem, keyId } from "../artifacts/keys.js";

export async function runKeygen(opts: { out: string }): Promise<number> {
  const { privatePem, publicKey } = generateKeyPem();
  let fh;
  try {
    fh = await open(opts.out, "wx", 0o600);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new CmcpError(
      "keygen.write",
      code === "EEXIST"
        ? `${opts.out} exists; refusing to overwrite a key file`
        : `cannot create ${opts.out}: ${code ?? String(err)}`,
    );
  }
  try {
    await fh.writeFile(privatePem);
    await fh.sync();
  } finally {
    await fh.close();
  }
  process.stdout.write(
    `wrote private key ${opts.out} (keep it off the gateway host's data directory)\n` +
      `public key: ${toBase64(publicKey)}\n` +
      `key id:     ${keyId(publicKey)}\n`,
  );
  return 0;
}
