// Crash safety of the chain store with real processes and real files: SIGKILL
// during group-committed appends, and torn or damaged tails written by hand
// (SIGKILL alone leaves everything in the page cache, so it cannot tear a record).
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  copyFile,
  mkdir,
  mkdtemp,
  readFile,
  readdir,
  rm,
  stat,
  truncate,
  unlink,
  writeFile,
} from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { crc32 } from "node:zlib";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { isCmcpError } from "../../artifacts/errors.js";
import { ChainStore, RECORD_HEADER_BYTES, segmentFileName } from "../../governor/chain-store.js";
import type { StoreEvent } from "../../governor/chain-store.js";
import { CHILD_SEGMENT_MAX_BYTES, makeEntry } from "./fixtures/append-loop.js";

const here = dirname(fileURLToPath(import.meta.url));
const FIXTURE = join(here, "fixtures", "append-loop.ts");
const REPO_ROOT = resolve(here, "..", "..");

const KILLS = 15;
const MAX_ACKS_BEFORE_KILL = 400;
const ROUND_LIMIT_MS = 20_000; // a hung child fails the test instead of hanging it

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "cmcp-chain-crash-"));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Small deterministic PRNG so a failing run can be replayed from its seed. */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Round {
  start: number;
  maxAck: number;
  acks: number;
  signal: NodeJS.Signals | null;
  stderr: string;
}

function runUntilKilled(storeDir: string, killAfterAcks: number): Promise<Round> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", FIXTURE, storeDir], {
      cwd: REPO_ROOT,
      stdio: ["ignore", "pipe", "pipe"],
    });
    const round: Round = { start: -1, maxAck: -1, acks: 0, signal: null, stderr: "" };
    let pending = "";
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`child made no progress in time; stderr: ${round.stderr}`));
    }, ROUND_LIMIT_MS);
    child.stderr.setEncoding("utf8").on("data", (s: string) => (round.stderr += s));
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
      pending += chunk;
      const lines = pending.split("\n");
      pending = lines.pop() ?? "";
      for (const line of lines) {
        const [word, num] = line.split(" ");
        if (word === "start") round.start = Number(num);
        else if (word === "ack") {
          // Every ack counts, also those read after the kill was sent: each one was durable when printed.
          round.maxAck = Math.max(round.maxAck, Number(num));
          round.acks++;
          if (round.acks === killAfterAcks) child.kill("SIGKILL");
        }
      }
    });
    child.on("error", reject);
    child.on("close", (_code, signal) => {
      clearTimeout(timer);
      round.signal = signal;
      resolvePromise(round);
    });
  });
}

async function lastSegmentSize(storeDir: string): Promise<number> {
  const segs = (await readdir(join(storeDir, "segments"))).filter((n) => n.endsWith(".seg")).sort();
  return (await stat(join(storeDir, "segments", segs[segs.length - 1]!))).size;
}

describe("chain store under SIGKILL", () => {
  it(
    "keeps every acknowledged entry, in order and linked, across repeated kills and restarts",
    async () => {
      const seed = Number(process.env.CHAIN_STORE_CRASH_SEED ?? Math.floor(Math.random() * 2 ** 31));
      const rng = mulberry32(seed);
      const note = `seed ${seed} (set CHAIN_STORE_CRASH_SEED to replay)`;
      let expectedStart = 0;
      let truncations = 0;

      for (let round = 0; round < KILLS; round++) {
        const killAfter = 1 + Math.floor(rng() * MAX_ACKS_BEFORE_KILL);
        const r = await runUntilKilled(dir, killAfter);
        expect(r.signal, `${note}, round ${round}: child ended on its own: ${r.stderr}`).toBe("SIGKILL");
        expect(r.start, `${note}, round ${round}: child did not continue from nextSeq`).toBe(expectedStart);
        expect(r.acks, note).toBeGreaterThanOrEqual(killAfter);

        const before = await lastSegmentSize(dir);
        const store = await ChainStore.open({
          dir,
          segmentMaxBytes: CHILD_SEGMENT_MAX_BYTES,
          verifyOnOpen: round % 2 === 0 ? "full" : "quick",
        });
        try {
          const rec = store.recovery;
          expect(rec.validBytes + rec.droppedBytes, note).toBe(before);
          expect(rec.truncated, note).toBe(rec.droppedBytes > 0);
          expect(rec.reason === undefined, note).toBe(!rec.truncated);
          if (rec.truncated) truncations++;

          expect(store.durableSize, `${note}, round ${round}`).toBeGreaterThan(r.maxAck);
          let prev: Uint8Array | undefined;
          let atMaxAck: Uint8Array | undefined;
          let n = 0;
          for await (const { seq, entry } of store.entries()) {
            expect(seq, note).toBe(n);
            // Equality with the recomputed entry checks content and the hash link to the previous entry.
            expect(
              Buffer.from(entry).equals(makeEntry(seq, prev)),
              `${note}, round ${round}, seq ${seq}`,
            ).toBe(true);
            prev = entry;
            if (seq === r.maxAck) atMaxAck = entry;
            n++;
          }
          expect(n).toBe(store.durableSize);
          expect(store.lastEntry()).toEqual(prev);
          expect(await store.read(r.maxAck)).toEqual(atMaxAck);
          expectedStart = store.durableSize;
        } finally {
          await store.close();
        }
      }

      const segments = (await readdir(join(dir, "segments"))).filter((n) => n.endsWith(".seg"));
      expect(segments.length, "the run should cross segment boundaries").toBeGreaterThan(3);
      expect(truncations).toBeGreaterThanOrEqual(0); // SIGKILL rarely tears a write; tearing is covered below
    },
    KILLS * ROUND_LIMIT_MS,
  );
});

// ---------------------------------------------------------------------------
// Hand-made torn and damaged tails

function entry(i: number, length = 100 + ((i * 37) % 200)): Uint8Array {
  const out = new Uint8Array(length);
  for (let k = 0; k < length; k++) out[k] = (i * 131 + k * 7) & 0xff;
  return out;
}

const segPath = (d: string, first: number): string => join(d, "segments", segmentFileName(first, "seg"));
const idxPath = (d: string, first: number): string => join(d, "segments", segmentFileName(first, "idx"));

async function build(d: string, entries: Uint8Array[], segmentMaxBytes?: number): Promise<void> {
  const store = await ChainStore.open({ dir: d, segmentMaxBytes });
  await Promise.all(entries.map((e) => store.append(e)));
  await store.close();
}

async function expectCode(p: Promise<unknown>, code: string): Promise<unknown> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(isCmcpError(err, code), `expected ${code}, got ${String(err)}`).toBe(true);
  return err;
}

describe("chain store recovery from a damaged tail", () => {
  const N = 6;
  const entries = Array.from({ length: N }, (_, i) => entry(i));
  const lastSize = RECORD_HEADER_BYTES + entries[N - 1]!.length;

  it("recovers N-1 records from a cut at every byte of the last record, then appends", async () => {
    const base = join(dir, "base");
    await build(base, entries);
    const full = await readFile(segPath(base, 0));
    const idx = await readFile(idxPath(base, 0));
    const lastOff = full.length - lastSize;
    const work = join(dir, "work");

    for (let cut = lastOff; cut < full.length; cut++) {
      await rm(work, { recursive: true, force: true });
      await mkdir(join(work, "segments"), { recursive: true });
      await writeFile(segPath(work, 0), full.subarray(0, cut));
      await writeFile(idxPath(work, 0), idx); // now claims one record too many

      const events: StoreEvent[] = [];
      const store = await ChainStore.open({ dir: work, onEvent: (e) => events.push(e) });
      const torn = cut - lastOff;
      expect(store.durableSize, `cut at ${cut}`).toBe(N - 1);
      expect(store.recovery).toEqual({
        truncated: torn > 0,
        segment: segPath(work, 0),
        validBytes: lastOff,
        droppedBytes: torn,
        reason: torn === 0 ? undefined : torn < RECORD_HEADER_BYTES ? "partial-header" : "partial-payload",
      });
      expect(events.some((e) => e.type === "tail-truncated")).toBe(torn > 0);
      expect((await stat(segPath(work, 0))).size).toBe(lastOff);
      expect(store.lastEntry()).toEqual(entries[N - 2]);
      expect(await store.read(N - 2)).toEqual(entries[N - 2]);
      await expectCode(store.read(N - 1), "store.out-of-range");

      const fresh = entry(1000 + cut, 64);
      expect(await store.append(fresh)).toBe(N - 1);
      await store.close();

      const again = await ChainStore.open({ dir: work });
      expect(again.durableSize).toBe(N);
      expect(again.recovery.truncated).toBe(false);
      expect(await again.read(N - 1)).toEqual(fresh);
      expect(await again.read(N - 2)).toEqual(entries[N - 2]);
      await again.close();
    }
  });

  async function damagedTail(damage: (bytes: Buffer) => Buffer): Promise<ChainStore> {
    await build(dir, entries);
    const p = segPath(dir, 0);
    await writeFile(p, damage(await readFile(p)));
    return ChainStore.open({ dir });
  }

  it("drops a last record whose payload fails its CRC", async () => {
    const store = await damagedTail((b) => {
      b[b.length - 5]! ^= 0x01;
      return b;
    });
    expect(store.durableSize).toBe(N - 1);
    expect(store.recovery).toMatchObject({ truncated: true, reason: "bad-crc", droppedBytes: lastSize });
    expect(await store.append(entry(77))).toBe(N - 1);
    expect(await store.read(N - 1)).toEqual(entry(77));
    await store.close();
  });

  it.each([
    ["0xff garbage", Buffer.alloc(100, 0xff), "bad-header"],
    ["zero fill (size extended, data lost)", Buffer.alloc(4096), "bad-header"],
    ["a few stray bytes", Buffer.from([0x43, 0x52, 0x01]), "partial-header"],
  ] as const)("truncates %s after the last record", async (_name, junk, reason) => {
    const store = await damagedTail((b) => Buffer.concat([b, junk]));
    expect(store.durableSize).toBe(N);
    expect(store.recovery).toMatchObject({ truncated: true, reason, droppedBytes: junk.length });
    expect(await store.append(entry(78))).toBe(N);
    await store.close();
  });

  it("truncates a whole record whose seq does not continue the chain", async () => {
    const store = await damagedTail((b) => Buffer.concat([b, b.subarray(b.length - lastSize)]));
    expect(store.durableSize).toBe(N);
    expect(store.recovery).toMatchObject({
      truncated: true,
      reason: "seq-discontinuity",
      droppedBytes: lastSize,
    });
    await store.close();
  });

  // Offsets of the records built from `entries`.
  const offsets = entries.reduce<number[]>(
    (acc, e, i) => [...acc, i === 0 ? 0 : acc[i - 1]! + RECORD_HEADER_BYTES + entries[i - 1]!.length],
    [],
  );

  const flip =
    (k: number, at: number, mask: number) =>
    (b: Buffer): void => {
      b[offsets[k]! + at]! ^= mask;
    };
  /** Rewrites record k with seq + 7 and a matching CRC: a whole, valid record out of sequence. */
  const reseq =
    (k: number) =>
    (b: Buffer): void => {
      const off = offsets[k]!;
      b.writeUInt32LE(b.readUInt32LE(off + 8) + 7, off + 8);
      const end = off + RECORD_HEADER_BYTES + entries[k]!.length;
      b.writeUInt32LE(
        crc32(b.subarray(off + RECORD_HEADER_BYTES, end), crc32(b.subarray(off, off + 16))),
        off + 16,
      );
    };

  it.each([
    ["a payload byte (bad CRC)", 2, flip(2, RECORD_HEADER_BYTES + 10, 0x01), "bad-crc"],
    ["the magic (bad header)", 2, flip(2, 0, 0x01), "bad-header"],
    ["a high bit of the length (runs past the end)", 2, flip(2, 6, 0x10), "partial-payload"],
    ["a low bit of the length", 3, flip(3, 4, 0x04), "bad-crc"],
    ["a seq bit", 1, flip(1, 8, 0x02), "bad-crc"],
    ["the seq, with a matching CRC", 1, reseq(1), "seq-discontinuity"],
  ] as const)(
    "refuses to open, and changes nothing, when %s of an acknowledged record is damaged and valid records follow",
    async (_name, k, damage, reason) => {
      await build(dir, entries);
      const seg = segPath(dir, 0);
      const bytes = await readFile(seg);
      damage(bytes);
      await writeFile(seg, bytes);
      const idx = await readFile(idxPath(dir, 0));

      const events: StoreEvent[] = [];
      const err = await expectCode(ChainStore.open({ dir, onEvent: (e) => events.push(e) }), "store.corrupt");
      expect((err as { detail: unknown }).detail).toMatchObject({ file: seg, offset: offsets[k] });
      expect((err as Error).message).toContain(reason);
      expect((err as Error).message).toContain(
        `valid record with seq ${k + 1} follows at byte ${offsets[k + 1]}`,
      );
      expect(events).toEqual([]);
      expect((await readFile(seg)).equals(bytes)).toBe(true);
      expect((await readFile(idxPath(dir, 0))).equals(idx)).toBe(true);
    },
  );

  it("refuses also when a torn tail follows the damage", async () => {
    await build(dir, entries);
    const seg = segPath(dir, 0);
    const bytes = await readFile(seg);
    flip(4, RECORD_HEADER_BYTES + 3, 0x20)(bytes);
    const torn = Buffer.concat([bytes, bytes.subarray(offsets[5]!, offsets[5]! + 30)]);
    await writeFile(seg, torn);
    const err = await expectCode(ChainStore.open({ dir }), "store.corrupt");
    expect((err as { detail: unknown }).detail).toMatchObject({ file: seg, offset: offsets[4] });
    expect((await readFile(seg)).equals(torn)).toBe(true);
  });

  it("refuses when the damage is in the last of several segments", async () => {
    // 320-byte records, three per 1000-byte segment: the last segment starts at 9.
    const twelve = Array.from({ length: 12 }, (_, i) => entry(i, 300));
    await build(dir, twelve, 1000);
    const seg = segPath(dir, 9);
    const bytes = await readFile(seg);
    bytes[320 + 100]! ^= 0x01; // payload of seq 10
    await writeFile(seg, bytes);
    const err = await expectCode(ChainStore.open({ dir, segmentMaxBytes: 1000 }), "store.corrupt");
    expect((err as { detail: unknown }).detail).toMatchObject({ file: seg, offset: 320 });
    expect((await readFile(seg)).equals(bytes)).toBe(true);
  });

  it("finds a valid record after a damaged one larger than the scan buffer, across the buffer's edge", async () => {
    // The later record's header straddles the end of the first 1 MiB read after the damage.
    const SCAN_CHUNK = 1 << 20;
    const big = entry(1, SCAN_CHUNK - 29);
    const three = [entry(0), big, entry(2)];
    const store = await ChainStore.open({ dir, maxEntryBytes: 2 * SCAN_CHUNK });
    for (const e of three) await store.append(e);
    await store.close();
    const seg = segPath(dir, 0);
    const bytes = await readFile(seg);
    const bigAt = RECORD_HEADER_BYTES + three[0]!.length;
    bytes[bigAt + RECORD_HEADER_BYTES + 5000]! ^= 0x01;
    await writeFile(seg, bytes);
    const err = await expectCode(ChainStore.open({ dir }), "store.corrupt");
    expect((err as { detail: unknown }).detail).toMatchObject({ file: seg, offset: bigAt });
    expect((err as Error).message).toContain(`at byte ${bigAt + RECORD_HEADER_BYTES + big.length}`);

    // The same damage in the last record is a torn tail.
    bytes[bigAt + RECORD_HEADER_BYTES + 5000]! ^= 0x01;
    await writeFile(seg, bytes.subarray(0, bigAt + RECORD_HEADER_BYTES + big.length - 1));
    const again = await ChainStore.open({ dir });
    expect(again.durableSize).toBe(1);
    expect(again.recovery).toMatchObject({ truncated: true, reason: "partial-payload" });
    await again.close();
  });

  it("recovers into an empty last segment and links lastEntry to the previous segment", async () => {
    // 320-byte records, three per 1000-byte segment: segments start at 0, 3 and 6.
    const seven = Array.from({ length: 7 }, (_, i) => entry(i, 300));
    await build(dir, seven, 1000);
    await truncate(segPath(dir, 6), 10);
    const store = await ChainStore.open({ dir, segmentMaxBytes: 1000 });
    expect(store.durableSize).toBe(6);
    expect(store.recovery).toMatchObject({ truncated: true, segment: segPath(dir, 6), validBytes: 0 });
    expect(store.lastEntry()).toEqual(seven[5]);
    expect(await store.append(entry(99, 300))).toBe(6);
    await store.close();
    expect((await stat(segPath(dir, 6))).size).toBe(320);
  });
});

describe("chain store corruption in a sealed segment", () => {
  // Three 320-byte records per segment; 12 records fill segments 0, 3, 6 and 9.
  const twelve = Array.from({ length: 12 }, (_, i) => entry(i, 300));
  const open = (verifyOnOpen?: "quick" | "full"): Promise<ChainStore> =>
    ChainStore.open({ dir, segmentMaxBytes: 1000, verifyOnOpen });

  async function flipByte(path: string, at: number): Promise<void> {
    const b = await readFile(path);
    b[at]! ^= 0x40;
    await writeFile(path, b);
  }

  it("fails open with store.corrupt naming file and offset when the index must be rebuilt", async () => {
    await build(dir, twelve, 1000);
    await flipByte(segPath(dir, 3), 320 + 100); // payload of seq 4, the middle record
    await unlink(idxPath(dir, 3));
    const err = await expectCode(open(), "store.corrupt");
    expect((err as { detail: unknown }).detail).toMatchObject({ file: segPath(dir, 3), offset: 320 });
  });

  it("fails a full verify on open, and reads of the damaged record in quick mode", async () => {
    await build(dir, twelve, 1000);
    await flipByte(segPath(dir, 3), 320 + 100);
    const err = await expectCode(open("full"), "store.corrupt");
    expect((err as { detail: unknown }).detail).toMatchObject({ file: segPath(dir, 3), offset: 320 });

    const store = await open("quick");
    expect(await store.read(3)).toEqual(twelve[3]);
    expect(await store.read(5)).toEqual(twelve[5]);
    await expectCode(store.read(4), "store.corrupt");
    const seen: number[] = [];
    const iterate = async (): Promise<void> => {
      for await (const { seq } of store.entries()) seen.push(seq);
    };
    await expectCode(iterate(), "store.corrupt");
    expect(seen).toEqual([0, 1, 2, 3]);
    await store.close();
    expect((await stat(segPath(dir, 3))).size).toBe(960); // nothing was truncated
  });

  it("does not truncate a torn tail in a sealed segment", async () => {
    await build(dir, twelve, 1000);
    await truncate(segPath(dir, 6), 900);
    await expectCode(open(), "store.corrupt");
    expect((await stat(segPath(dir, 6))).size).toBe(900);
  });

  it("fails when a segment is missing", async () => {
    await build(dir, twelve, 1000);
    await unlink(segPath(dir, 3));
    await expectCode(open(), "store.corrupt");
    await copyFile(segPath(dir, 0), segPath(dir, 3)); // right size, wrong seqs
    await expectCode(open(), "store.corrupt");
    await unlink(segPath(dir, 0));
    await expectCode(open(), "store.corrupt");
  });

  it("removes leftovers of an interrupted index rewrite", async () => {
    await build(dir, twelve, 1000);
    const leftover = `${idxPath(dir, 0)}.tmp-1234`;
    await writeFile(leftover, randomBytes(24));
    const store = await open();
    expect(store.durableSize).toBe(12);
    await store.close();
    expect((await readdir(join(dir, "segments"))).some((n) => n.includes(".tmp-"))).toBe(false);
  });
});
