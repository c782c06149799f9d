import { randomBytes } from "node:crypto";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { nobleSign, noblePublicKey, nobleVerify } from "../../artifacts/ed25519-noble.js";
import { toHex } from "../../artifacts/encoding.js";
import { generateSigner, keyId, signerFromSeed, verifySignature } from "../../artifacts/keys.js";

// RFC 8032 section 7.1, TEST 1 and TEST 3.
const RFC8032 = [
  {
    seed: "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
    pub: "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
    msg: "",
    sig: "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
  },
  {
    seed: "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
    pub: "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
    msg: "af82",
    sig: "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
  },
];

const hex = (s: string) => Uint8Array.from(Buffer.from(s, "hex"));

describe("Ed25519", () => {
  it("node:crypto and noble both reproduce RFC 8032 test vectors", () => {
    for (const v of RFC8032) {
      const signer = signerFromSeed(hex(v.seed));
      expect(toHex(signer.publicKey)).toBe(v.pub);
      expect(toHex(signer.sign(hex(v.msg)))).toBe(v.sig);
      expect(toHex(noblePublicKey(hex(v.seed)))).toBe(v.pub);
      expect(toHex(nobleSign(hex(v.seed), hex(v.msg)))).toBe(v.sig);
      expect(verifySignature(hex(v.pub), hex(v.msg), hex(v.sig))).toBe(true);
      expect(nobleVerify(hex(v.pub), hex(v.msg), hex(v.sig))).toBe(true);
    }
  });

  it("node:crypto and noble agree on signatures and on rejecting corrupted ones", () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 32, maxLength: 32 }),
        fc.uint8Array({ maxLength: 256 }),
        fc.nat(),
        (seed, msg, flip) => {
          const signer = signerFromSeed(seed);
          const sig = signer.sign(msg);
          expect(toHex(nobleSign(seed, msg))).toBe(toHex(sig));
          expect(nobleVerify(signer.publicKey, msg, sig)).toBe(true);
          const bad = Uint8Array.from(sig);
          bad[flip % 64]! ^= 1 << (flip % 8);
          expect(verifySignature(signer.publicKey, msg, bad)).toBe(nobleVerify(signer.publicKey, msg, bad));
          expect(verifySignature(signer.publicKey, msg, bad)).toBe(false);
        },
      ),
      { numRuns: 200 },
    );
  });

  it("agree on random garbage keys and signatures", () => {
    for (let i = 0; i < 200; i++) {
      const pub = randomBytes(32);
      const sig = randomBytes(64);
      const msg = randomBytes(16);
      expect(verifySignature(pub, msg, sig)).toBe(nobleVerify(pub, msg, sig));
    }
  });

  it("returns false instead of throwing on malformed sizes", () => {
    const s = generateSigner();
    expect(verifySignature(s.publicKey.subarray(0, 31), new Uint8Array(), new Uint8Array(64))).toBe(false);
    expect(verifySignature(s.publicKey, new Uint8Array(), new Uint8Array(63))).toBe(false);
  });

  it("key IDs are stable SHA-256 of the public key, and signers never serialize their secret", () => {
    const s = signerFromSeed(hex(RFC8032[0]!.seed));
    expect(keyId(s.publicKey)).toBe(s.keyId);
    expect(s.keyId).toBe("21fe31dfa154a261626bf854046fd2271b7bed4b6abe45aa58877ef47f9721b9");
    expect(JSON.stringify(s)).not.toMatch(/9d61b19d/);
    expect(() => keyId(new Uint8Array(31))).toThrow(/32 bytes/);
  });
});
