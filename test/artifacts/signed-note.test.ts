import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { concatBytes, fromBase64, fromHex, toBase64, toHex } from "../../artifacts/encoding.js";
import { generateSigner, signerFromSeed, type Signer } from "../../artifacts/keys.js";
import {
  MAX_NOTE_BYTES,
  MAX_NOTE_SIGNATURES,
  formatVerifierKey,
  noteKeyHash,
  openNote,
  parseVerifierKey,
  signNote,
} from "../../artifacts/signed-note.js";

const VECTORS = fileURLToPath(
  new URL("../../../shared/vectors/c2sp-signed-note/vectors.json", import.meta.url),
);

interface Vectors {
  _source: string;
  ed25519_key_id_rule: string;
  signature_line_rule: string;
  sign: {
    signer_key: string;
    verifier_key: string;
    text: string;
    expected_signature_line: string;
    expected_key_id_hex: string;
  };
  _note: string;
}

/** Go note signer keys: PRIVATE+KEY+<name>+<hex id>+<base64(0x01 ‖ seed)>. Test-only. */
function parseSignerKey(text: string): { name: string; keyHashHex: string; signer: Signer } {
  const prefix = "PRIVATE+KEY+";
  expect(text.startsWith(prefix)).toBe(true);
  const rest = text.slice(prefix.length);
  const [name, keyHashHex] = rest.split("+", 2) as [string, string];
  const key = fromBase64(rest.slice(name.length + 1 + keyHashHex.length + 1));
  expect(key.length).toBe(33);
  expect(key[0]).toBe(0x01);
  return { name, keyHashHex, signer: signerFromSeed(key.slice(1)) };
}

describe("c2sp-signed-note vectors.json", () => {
  const v = JSON.parse(readFileSync(VECTORS, "utf8")) as Vectors;

  it("has exactly the entries this test checks", () => {
    expect(Object.keys(v).sort()).toEqual([
      "_note",
      "_source",
      "ed25519_key_id_rule",
      "sign",
      "signature_line_rule",
    ]);
    expect(Object.keys(v.sign).sort()).toEqual([
      "expected_key_id_hex",
      "expected_signature_line",
      "signer_key",
      "text",
      "verifier_key",
    ]);
  });

  const { name, keyHashHex, signer } = parseSignerKey(v.sign.signer_key);

  it("key ID rule: SHA-256(name ‖ 0x0A ‖ 0x01 ‖ key)[:4] matches both key strings", () => {
    expect(keyHashHex).toBe(v.sign.expected_key_id_hex);
    expect(toHex(noteKeyHash(name, signer.publicKey))).toBe(v.sign.expected_key_id_hex);
  });

  it("verifier key parses, carries the same public key, and formats back identically", () => {
    const parsed = parseVerifierKey(v.sign.verifier_key);
    expect(parsed.ok).toBe(true);
    if (!parsed.ok) return;
    expect(parsed.name).toBe(name);
    expect(toHex(parsed.keyHash)).toBe(v.sign.expected_key_id_hex);
    expect(toHex(parsed.publicKey)).toBe(toHex(signer.publicKey));
    expect(formatVerifierKey(name, signer.publicKey)).toBe(v.sign.verifier_key);
  });

  it("signature line rule: signNote reproduces the expected line exactly", () => {
    const note = signNote(v.sign.text, [{ name, signer }]);
    expect(note).toBe(v.sign.text + "\n" + v.sign.expected_signature_line);
    expect(v.sign.expected_signature_line.startsWith("\u2014 " + name + " ")).toBe(true);
  });

  it("openNote accepts the vector note with the vector verifier key", () => {
    const parsed = parseVerifierKey(v.sign.verifier_key);
    if (!parsed.ok) throw new Error(parsed.reason);
    const note = v.sign.text + "\n" + v.sign.expected_signature_line;
    expect(openNote(note, [{ name: parsed.name, publicKey: parsed.publicKey }])).toEqual({
      ok: true,
      text: v.sign.text,
      verifiedBy: [name],
    });
    // Changing one character of the text breaks it.
    const forged = note.replace("cryptography", "cryptographY");
    expect(openNote(forged, [{ name: parsed.name, publicKey: parsed.publicKey }])).toMatchObject({
      ok: false,
      code: "note.bad_signature",
    });
  });
});

describe("signed notes", () => {
  const alice = generateSigner();
  const bob = generateSigner();
  const mallory = generateSigner();
  const A = { name: "example.com/alice", publicKey: alice.publicKey };
  const B = { name: "example.com/bob", publicKey: bob.publicKey };
  const text = "example.com/log\n42\nhello world\n";
  const both = signNote(text, [
    { name: A.name, signer: alice },
    { name: B.name, signer: bob },
  ]);

  it("round-trips and reports every known signer", () => {
    expect(openNote(both, [A, B])).toEqual({ ok: true, text, verifiedBy: [A.name, B.name] });
    expect(openNote(both, [B])).toEqual({ ok: true, text, verifiedBy: [B.name] });
  });

  it("ignores signatures by unknown keys (name/ID pair not trusted)", () => {
    const withStranger = signNote(text, [
      { name: "example.com/stranger", signer: mallory },
      { name: A.name, signer: alice },
    ]);
    expect(openNote(withStranger, [A])).toEqual({ ok: true, text, verifiedBy: [A.name] });
    // Same name as a known key but another key (so another ID): ignored, not a failure.
    const sameName = signNote(text, [
      { name: A.name, signer: mallory },
      { name: A.name, signer: alice },
    ]);
    expect(openNote(sameName, [A])).toEqual({ ok: true, text, verifiedBy: [A.name] });
    // Known key ID under another name: ignored as well.
    const line = `\u2014 example.com/other ${toBase64(concatBytes(noteKeyHash(A.name, A.publicKey), new Uint8Array(64)))}\n`;
    expect(openNote(both + line, [A])).toEqual({ ok: true, text, verifiedBy: [A.name] });
  });

  it("rejects a note with no valid signature from a known key", () => {
    expect(openNote(both, [])).toMatchObject({ ok: false, code: "note.unverified" });
    const onlyStranger = signNote(text, [{ name: "example.com/stranger", signer: mallory }]);
    expect(openNote(onlyStranger, [A, B])).toMatchObject({ ok: false, code: "note.unverified" });
  });

  it("rejects the whole note when a known key's signature is bad", () => {
    const lines = both.split("\n");
    const sigLine = lines[lines.length - 2]!; // bob's line
    const [prefix, b64] = [
      sigLine.slice(0, sigLine.lastIndexOf(" ") + 1),
      sigLine.slice(sigLine.lastIndexOf(" ") + 1),
    ];
    const raw = fromBase64(b64);
    raw[10]! ^= 0x01;
    const bad = both.replace(sigLine, prefix + toBase64(raw));
    expect(openNote(bad, [A, B])).toMatchObject({ ok: false, code: "note.bad_signature" });
    // Alice alone does not care about bob's line.
    expect(openNote(bad, [A]).ok).toBe(true);
    // A known key's signature of the wrong length is a bad signature too.
    const short = both.replace(sigLine, prefix + toBase64(raw.subarray(0, 40)));
    expect(openNote(short, [A, B])).toMatchObject({ ok: false, code: "note.bad_signature" });
    // A duplicate line from a known key is verified too: a bad duplicate rejects.
    expect(openNote(both + sigLine + "\n", [A, B])).toEqual({ ok: true, text, verifiedBy: [A.name, B.name] });
    expect(openNote(both + prefix + toBase64(raw) + "\n", [A, B])).toMatchObject({
      code: "note.bad_signature",
    });
  });

  it("rejects a tampered text", () => {
    expect(openNote(both.replace("42", "43"), [A])).toMatchObject({ ok: false, code: "note.bad_signature" });
  });

  it.each([
    ["no blank line", "a\n\u2014 x AAAAAAAA\n", "note.malformed"],
    ["no signature lines", text + "\n", "note.malformed"],
    ["signature block without final newline", both.slice(0, -1), "note.malformed"],
    ["hyphen instead of em dash", text + "\n- a AAAAAAAA\n", "note.signature_line"],
    ["en dash", text + "\n\u2013 a AAAAAAAA\n", "note.signature_line"],
    ["no space after dash", text + "\n\u2014a AAAAAAAA\n", "note.signature_line"],
    ["no signature", text + "\n\u2014 a\n", "note.signature_line"],
    ["empty signature", text + "\n\u2014 a \n", "note.signature_line"],
    ["empty name", text + "\n\u2014  AAAAAAAA\n", "note.signature_line"],
    ["name with plus", text + "\n\u2014 a+b AAAAAAAA\n", "note.signature_line"],
    ["two spaces", text + "\n\u2014 a  AAAAAAAA\n", "note.signature_line"],
    ["trailing space", text + "\n\u2014 a AAAAAAAA \n", "note.signature_line"],
    ["bad base64", text + "\n\u2014 a AAAA*AAA\n", "note.signature_line"],
    ["unpadded base64", text + "\n\u2014 a AAAAAAA\n", "note.signature_line"],
    ["signature under 5 bytes", text + "\n\u2014 a AAAAAA==\n", "note.signature_line"],
    ["text line after signatures", both + "more\n", "note.signature_line"],
    ["carriage return", both.replace("\n\n", "\r\n\n"), "note.invalid_text"],
    ["NUL", "a\u0000\n\n\u2014 a AAAAAAAA\n", "note.invalid_text"],
    ["lone surrogate", "a\ud800\n\n\u2014 a AAAAAAAA\n", "note.invalid_text"],
  ])("rejects malformed notes: %s", (_name, note, code) => {
    expect(openNote(note, [A, B])).toMatchObject({ ok: false, code });
  });

  it("a malformed line rejects even when a known key signed validly", () => {
    expect(openNote(both + "\u2014 bad\n", [A, B])).toMatchObject({ ok: false, code: "note.signature_line" });
  });

  it("name rules: non-empty, no whitespace, no '+'", () => {
    for (const bad of ["", "a b", "a+b", "a\tb", "a\u00a0b", "a\u2003b", "a\u0085b", "a\nb"]) {
      expect(() => signNote(text, [{ name: bad, signer: alice }])).toThrow(
        expect.objectContaining({ code: "note.invalid_name" }),
      );
      expect(() => noteKeyHash(bad, alice.publicKey)).toThrow();
      expect(openNote(both, [{ name: bad, publicKey: alice.publicKey }])).toMatchObject({
        code: "note.verifier",
      });
    }
    expect(() => signNote(text, [{ name: "ok/näme-✓", signer: alice }])).not.toThrow();
  });

  it("text rules: non-empty, ends in newline, no control characters", () => {
    for (const bad of ["", "no newline", "tab\there\n", "cr\r\n", "nul\u0000\n", "lone \udc00\n"]) {
      expect(() => signNote(bad, [{ name: A.name, signer: alice }])).toThrow(
        expect.objectContaining({ code: "note.invalid_text" }),
      );
    }
    expect(() => signNote(text, [])).toThrow(expect.objectContaining({ code: "note.no_signers" }));
  });

  it("text may contain empty lines; the last blank line separates the signatures (spec)", () => {
    const poem =
      "Ognuno sta solo sul cuor della terra\ntrafitto da un raggio di sole:\n\ned è subito sera.\n";
    const note = signNote(poem, [{ name: A.name, signer: alice }]);
    expect(openNote(note, [A])).toEqual({ ok: true, text: poem, verifiedBy: [A.name] });
    const trailingBlank = "a\n\n";
    expect(openNote(signNote(trailingBlank, [{ name: A.name, signer: alice }]), [A])).toEqual({
      ok: true,
      text: trailingBlank,
      verifiedBy: [A.name],
    });
    // Signature lines placed before another blank line become text, so the signature no longer matches.
    const sig = both.slice(both.indexOf("\n\n") + 2);
    const shifted = text + "\n" + sig + "\n" + sig;
    expect(openNote(shifted, [A, B])).toMatchObject({ ok: false, code: "note.bad_signature" });
  });

  it(`limits: at most ${MAX_NOTE_SIGNATURES} signature lines`, () => {
    const stranger = signNote(text, [{ name: "example.com/stranger", signer: mallory }]);
    const strangerLine = stranger.slice(stranger.indexOf("\n\n") + 2);
    const withLines = (n: number) => both + strangerLine.repeat(n - 2);
    expect(openNote(withLines(MAX_NOTE_SIGNATURES), [A, B])).toMatchObject({ ok: true });
    expect(openNote(withLines(MAX_NOTE_SIGNATURES + 1), [A, B])).toMatchObject({
      ok: false,
      code: "note.too_many_signatures",
    });
    const many = Array.from({ length: MAX_NOTE_SIGNATURES + 1 }, () => ({ name: A.name, signer: alice }));
    expect(() => signNote(text, many)).toThrow(expect.objectContaining({ code: "note.too_many_signatures" }));
  });

  it(`limits: at most ${MAX_NOTE_BYTES} bytes`, () => {
    const sigPart = both.slice(both.indexOf("\n\n") + 1); // "\n— ...\n— ...\n"
    const fill = (bytes: number) => "x".repeat(bytes - Buffer.byteLength(sigPart) - 1) + "\n";
    const atLimit = fill(MAX_NOTE_BYTES);
    const signedAtLimit = signNote(atLimit, [
      { name: A.name, signer: alice },
      { name: B.name, signer: bob },
    ]);
    expect(Buffer.byteLength(signedAtLimit)).toBe(MAX_NOTE_BYTES);
    expect(openNote(signedAtLimit, [A]).ok).toBe(true);
    const over = "é".repeat(MAX_NOTE_BYTES / 2) + "\n"; // counted in UTF-8 bytes, not UTF-16 units
    expect(openNote(over + "\n\u2014 a AAAAAAAA\n", [A])).toMatchObject({
      ok: false,
      code: "note.too_large",
    });
    expect(() =>
      signNote(fill(MAX_NOTE_BYTES + 1), [
        { name: A.name, signer: alice },
        { name: B.name, signer: bob },
      ]),
    ).toThrow(expect.objectContaining({ code: "note.too_large" }));
  });

  it("rejects ambiguous verifier sets (two keys with one name and ID) and bad keys", () => {
    expect(openNote(both, [A, { name: A.name, publicKey: new Uint8Array(31) }])).toMatchObject({
      code: "note.verifier",
    });
    expect(openNote(both, [A, A])).toMatchObject({ ok: true });
  });

  it("never throws and never accepts changed text (property)", () => {
    fc.assert(
      fc.property(fc.string({ unit: "binary", maxLength: 300 }), (s) => {
        const r = openNote(s, [A, B]);
        expect(typeof r.ok).toBe("boolean");
      }),
    );
    fc.assert(
      fc.property(
        fc.nat({ max: both.length }),
        fc.nat({ max: both.length }),
        fc.string({ unit: "binary", maxLength: 8 }),
        (start, len, insert) => {
          const mutated = both.slice(0, start) + insert + both.slice(Math.min(both.length, start + len));
          const r = openNote(mutated, [A, B]);
          if (r.ok) expect(r.text).toBe(text);
        },
      ),
    );
    for (const junk of [null, undefined, 42, {}, [], new Uint8Array(4)]) {
      expect(openNote(junk as never, [A]).ok).toBe(false);
      expect(openNote(both, junk as never).ok).toBe(false);
    }
  });
});

describe("verifier keys", () => {
  const s = signerFromSeed(fromHex("11".repeat(32)));
  const name = "example.com/log";
  const key = formatVerifierKey(name, s.publicKey);

  it("round-trips", () => {
    expect(parseVerifierKey(key)).toEqual({
      ok: true,
      name,
      keyHash: noteKeyHash(name, s.publicKey),
      publicKey: s.publicKey,
    });
  });

  it.each([
    ["empty", ""],
    ["no fields", "example.com/log"],
    ["two fields", "example.com/log+abcdef12"],
    ["uppercase hex", key.replace(/\+([0-9a-f]{8})\+/, (_m, h: string) => `+${h.toUpperCase()}+`)],
    ["short hex", key.replace(/\+([0-9a-f]{8})\+/, (_m, h: string) => `+${h.slice(1)}+`)],
    ["wrong key ID", key.replace(/\+([0-9a-f]{8})\+/, "+00000000+")],
    ["wrong name", key.replace(name, "example.com/other")],
    [
      "wrong type byte",
      `${name}+${toHex(noteKeyHash(name, s.publicKey))}+${toBase64(concatBytes(Uint8Array.of(2), s.publicKey))}`,
    ],
    [
      "short key",
      `${name}+${toHex(noteKeyHash(name, s.publicKey))}+${toBase64(concatBytes(Uint8Array.of(1), s.publicKey.subarray(1)))}`,
    ],
    ["bad base64", key + "!"],
    ["space in name", key.replace("example.com/log", "example.com log")],
  ])("rejects %s", (_n, text) => {
    expect(parseVerifierKey(text)).toMatchObject({ ok: false, code: "note.verifier_key" });
  });

  it("never throws", () => {
    fc.assert(fc.property(fc.string({ unit: "binary", maxLength: 120 }), (t) => void parseVerifierKey(t)));
    expect(parseVerifierKey(null as never).ok).toBe(false);
  });
});
