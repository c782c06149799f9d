import { mkdir, mkdtemp, readFile, readdir, rm, stat, truncate, unlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { isCmcpError } from "../../artifacts/errors.js";
import { ChainStore, RECORD_HEADER_BYTES, nodeStoreIo, segmentFileName } from "../../governor/chain-store.js";
import { fsyncDir, writeFileDurable } from "../../governor/durable-file.js";
import type { StoreEvent, StoreHandle, StoreIo, StoreRecovery } from "../../governor/chain-store.js";

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "cmcp-chain-store-"));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

function entry(i: number, length = 40 + ((i * 53) % 400)): Uint8Array {
  const out = new Uint8Array(length);
  for (let k = 0; k < length; k++) out[k] = (i * 29 + k * 11 + 3) & 0xff;
  return out;
}

const segPath = (first: number): string => join(dir, "segments", segmentFileName(first, "seg"));
const idxPath = (first: number): string => join(dir, "segments", segmentFileName(first, "idx"));

async function rejection(p: Promise<unknown>): Promise<unknown> {
  return p.then(
    () => {
      throw new Error("expected a rejection");
    },
    (e: unknown) => e,
  );
}

async function expectCode(p: Promise<unknown>, code: string): Promise<unknown> {
  const err = await rejection(p);
  expect(isCmcpError(err, code), `expected ${code}, got ${String(err)}`).toBe(true);
  return err;
}

async function collect(store: ChainStore, from?: number, to?: number): Promise<Array<[number, Uint8Array]>> {
  const out: Array<[number, Uint8Array]> = [];
  for await (const { seq, entry: e } of store.entries(from, to)) out.push([seq, e]);
  return out;
}

// ---------------------------------------------------------------------------
// Observing / fault-injecting OS layer: wraps the real node:fs io.

type IoEvent =
  | { op: "open"; path: string }
  | { op: "write"; path: string; position: number; length: number }
  | { op: "fsync-start" | "fsync-end"; path: string }
  | { op: "fsync-dir-start" | "fsync-dir-end"; path: string }
  | { op: "ack"; seq: number };

interface Hooks {
  /** Runs before the real write/fsync; may throw to inject an OS error. */
  beforeWrite?: (h: StoreHandle, data: Uint8Array, position: number) => Promise<void> | void;
  beforeFsync?: (h: StoreHandle) => Promise<void> | void;
}

function observingIo(log: IoEvent[], hooks: Hooks = {}): StoreIo {
  return {
    ...nodeStoreIo,
    async open(path, flags) {
      log.push({ op: "open", path });
      return nodeStoreIo.open(path, flags);
    },
    async write(h, data, position) {
      await hooks.beforeWrite?.(h, data, position);
      log.push({ op: "write", path: h.path, position, length: data.length });
      await nodeStoreIo.write(h, data, position);
    },
    async fsync(h) {
      log.push({ op: "fsync-start", path: h.path });
      await hooks.beforeFsync?.(h);
      await nodeStoreIo.fsync(h);
      log.push({ op: "fsync-end", path: h.path });
    },
    async fsyncDir(path) {
      log.push({ op: "fsync-dir-start", path });
      await nodeStoreIo.fsyncDir(path);
      log.push({ op: "fsync-dir-end", path });
    },
  };
}

function osError(code: string, syscall: string): Error {
  return Object.assign(new Error(`${code}: injected, ${syscall}`), { code, syscall });
}

const isSeg = (e: IoEvent): e is Extract<IoEvent, { path: string }> => "path" in e && e.path.endsWith(".seg");

// ---------------------------------------------------------------------------

describe("chain store basics", () => {
  it("appends, reads and streams entries, and keeps them across reopen", async () => {
    const store = await ChainStore.open({ dir });
    expect(store.state).toBe("open");
    expect(store.nextSeq).toBe(0);
    expect(store.durableSize).toBe(0);
    expect(store.lastEntry()).toBeUndefined();
    expect(store.recovery).toMatchObject({ truncated: false, validBytes: 0, droppedBytes: 0 });

    const entries = Array.from({ length: 20 }, (_, i) => entry(i));
    const promises = entries.map((e, i) => {
      expect(store.nextSeq).toBe(i); // seq is assigned synchronously, in call order
      return store.append(e);
    });
    expect(store.nextSeq).toBe(20);
    expect(store.lastEntry()).toEqual(entries[19]); // includes pending entries
    expect(await Promise.all(promises)).toEqual(entries.map((_, i) => i));
    expect(store.durableSize).toBe(20);

    for (let i = 0; i < 20; i++) expect(await store.read(i)).toEqual(entries[i]);
    expect(await collect(store)).toEqual(entries.map((e, i) => [i, e]));
    expect(await collect(store, 5, 8)).toEqual([5, 6, 7].map((i) => [i, entries[i]]));
    expect(await collect(store, 20)).toEqual([]);
    await store.close();
    expect(store.state).toBe("closed");
    await expectCode(store.append(entry(1)), "store.closed");

    const again = await ChainStore.open({ dir });
    expect(again.durableSize).toBe(20);
    expect(again.nextSeq).toBe(20);
    expect(again.lastEntry()).toEqual(entries[19]);
    expect(await again.append(entry(20))).toBe(20);
    expect(await again.read(20)).toEqual(entry(20));
    await again.close();
  });

  it("copies the entry, so later mutation by the caller changes nothing", async () => {
    const store = await ChainStore.open({ dir });
    const e = entry(1);
    const p = store.append(e);
    e.fill(0);
    await p;
    expect(await store.read(0)).toEqual(entry(1));
    const last = store.lastEntry()!;
    last.fill(1);
    expect(store.lastEntry()).toEqual(entry(1));
    await store.close();
  });

  it("accepts empty entries and rejects oversized ones without failing", async () => {
    const store = await ChainStore.open({ dir, maxEntryBytes: 1000 });
    expect(await store.append(new Uint8Array(0))).toBe(0);
    const err = await expectCode(store.append(new Uint8Array(1001)), "store.entry-too-large");
    expect((err as { detail: unknown }).detail).toEqual({ size: 1001, limit: 1000 });
    expect(store.nextSeq).toBe(1); // no seq consumed
    expect(store.state).toBe("open");
    expect(await store.append(new Uint8Array(1000))).toBe(1);
    expect(await store.read(0)).toEqual(new Uint8Array(0));
    await expectCode(store.append("text" as unknown as Uint8Array), "store.invalid-entry");
    await store.close();
  });

  it("rejects reads outside the durable range with store.out-of-range", async () => {
    const store = await ChainStore.open({ dir });
    await expectCode(store.read(0), "store.out-of-range");
    await store.append(entry(0));
    for (const bad of [1, -1, 0.5, Number.NaN, 2 ** 60])
      await expectCode(store.read(bad), "store.out-of-range");
    await expectCode(collect(store, 0, 2), "store.out-of-range");
    await expectCode(collect(store, 1, 0), "store.out-of-range");
    await store.close();
  });

  it("validates options", async () => {
    await expectCode(ChainStore.open({ dir, segmentMaxBytes: 0 }), "store.options");
    await expectCode(ChainStore.open({ dir, maxEntryBytes: 1.5 }), "store.options");
    await expectCode(ChainStore.open({ dir, maxBatchRecords: -1 }), "store.options");
  });

  it("rolls segments, reads across them and finds them again on reopen", async () => {
    const entries = Array.from({ length: 60 }, (_, i) => entry(i));
    const events: StoreEvent[] = [];
    const store = await ChainStore.open({ dir, segmentMaxBytes: 2048, onEvent: (e) => events.push(e) });
    await Promise.all(entries.map((e) => store.append(e)));
    // Sequential appends as well, so rolling happens between batches too.
    for (let i = 60; i < 80; i++) {
      entries.push(entry(i));
      await store.append(entries[i]!);
    }
    await store.close();

    const segs = (await readdir(join(dir, "segments"))).filter((n) => n.endsWith(".seg")).sort();
    expect(segs.length).toBeGreaterThan(5);
    for (const name of segs) expect((await stat(join(dir, "segments", name))).size).toBeLessThanOrEqual(2048);
    const created = events.filter((e) => e.type === "segment-created");
    expect(created.map((e) => e.segment)).toEqual(segs.map((n) => join(dir, "segments", n)));

    const again = await ChainStore.open({ dir, segmentMaxBytes: 2048, verifyOnOpen: "full" });
    expect(again.durableSize).toBe(80);
    for (let i = 0; i < 80; i++) expect(await again.read(i)).toEqual(entries[i]);
    expect(await collect(again, 13, 71)).toEqual(entries.slice(13, 71).map((e, k) => [13 + k, e]));
    await again.close();
  });

  it("puts an entry larger than a segment alone in its own segment", async () => {
    const store = await ChainStore.open({ dir, segmentMaxBytes: 256 });
    const big = entry(1, 1000);
    await Promise.all([store.append(entry(0, 10)), store.append(big), store.append(entry(2, 10))]);
    await store.close();
    expect((await stat(segPath(1))).size).toBe(RECORD_HEADER_BYTES + 1000);
    const again = await ChainStore.open({ dir, segmentMaxBytes: 256 });
    expect(await again.read(1)).toEqual(big);
    expect(await again.read(2)).toEqual(entry(2, 10));
    await again.close();
  });

  it("close waits for queued appends", async () => {
    const store = await ChainStore.open({ dir });
    const ps = [0, 1, 2].map((i) => store.append(entry(i)));
    const closing = store.close();
    await expectCode(store.append(entry(9)), "store.closed");
    await closing;
    expect(await Promise.all(ps)).toEqual([0, 1, 2]);
    const again = await ChainStore.open({ dir });
    expect(again.durableSize).toBe(3);
    await again.close();
  });
});

describe("chain store on-disk format", () => {
  // Reference CRC-32 (IEEE 802.3, reflected, poly 0xEDB88320), written out so the format is pinned.
  function referenceCrc32(bytes: Uint8Array): number {
    let c = 0xffffffff;
    for (const b of bytes) {
      c ^= b;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    }
    return (c ^ 0xffffffff) >>> 0;
  }

  it("lays out records and index entries as documented", async () => {
    const store = await ChainStore.open({ dir });
    await store.append(Buffer.from("first"));
    await store.append(Buffer.from("second entry"));
    await store.close();

    const seg = await readFile(segPath(0));
    expect(seg.length).toBe(2 * RECORD_HEADER_BYTES + 5 + 12);
    const second = seg.subarray(RECORD_HEADER_BYTES + 5);
    expect([...second.subarray(0, 4)]).toEqual([0x43, 0x52, 1, 0]); // "CR", version 1, reserved
    expect(second.readUInt32LE(4)).toBe(12);
    expect(second.readBigUInt64LE(8)).toBe(1n);
    const covered = Buffer.concat([second.subarray(0, 16), second.subarray(RECORD_HEADER_BYTES)]);
    expect(second.readUInt32LE(16)).toBe(referenceCrc32(covered));
    expect(second.subarray(RECORD_HEADER_BYTES).toString()).toBe("second entry");

    const idx = await readFile(idxPath(0));
    expect([idx.readBigUInt64LE(0), idx.readBigUInt64LE(8)]).toEqual([0n, 25n]);
    expect(segmentFileName(12345, "seg")).toBe("00000000000000012345.seg");
  });
});

describe("writeFileDurable", () => {
  it("creates and replaces a file without leaving temp files", async () => {
    const p = join(dir, "state.json");
    await writeFileDurable(p, Buffer.from("one"));
    await writeFileDurable(p, Buffer.from("two, longer"));
    expect((await readFile(p)).toString()).toBe("two, longer");
    expect(await readdir(dir)).toEqual(["state.json"]);
    await fsyncDir(dir);
  });

  it("fails without touching the target or leaving a temp file", async () => {
    const p = join(dir, "state.json");
    await writeFileDurable(p, Buffer.from("keep"));
    await rejection(writeFileDurable(join(dir, "missing", "x"), Buffer.from("x")));
    // A directory in the way makes the rename fail after the temp file was written.
    await mkdir(join(dir, "sub"));
    const err = await rejection(writeFileDurable(join(dir, "sub"), Buffer.from("x")));
    expect((err as { code: string }).code).toBe("EISDIR");
    expect((await readFile(p)).toString()).toBe("keep");
    expect((await readdir(dir)).sort()).toEqual(["state.json", "sub"]);
  });
});

describe("chain store write ordering", () => {
  it("acknowledges each record only after an fsync that started after its write returned", async () => {
    const log: IoEvent[] = [];
    const store = await ChainStore.open({ dir, io: observingIo(log), segmentMaxBytes: 4096 });
    const entries = Array.from({ length: 40 }, (_, i) => entry(i));
    const acked: Array<Promise<void>> = [];
    // Waves of concurrent appends, so several batches and a segment roll happen.
    for (let wave = 0; wave < 4; wave++) {
      for (let i = wave * 10; i < wave * 10 + 10; i++) {
        acked.push(store.append(entries[i]!).then((seq) => void log.push({ op: "ack", seq })));
      }
      await acked[acked.length - 1];
    }
    await Promise.all(acked);
    await store.close();

    // Where each record lives: segment first seqs from the files, offsets from entry sizes.
    const firsts = (await readdir(join(dir, "segments")))
      .filter((n) => n.endsWith(".seg"))
      .map((n) => Number(n.slice(0, 20)))
      .sort((a, b) => a - b);
    expect(firsts.length).toBeGreaterThan(1);
    const place = new Map<number, { path: string; off: number; size: number }>();
    for (let s = 0; s < firsts.length; s++) {
      const end = firsts[s + 1] ?? entries.length;
      let off = 0;
      for (let seq = firsts[s]!; seq < end; seq++) {
        const size = RECORD_HEADER_BYTES + entries[seq]!.length;
        place.set(seq, { path: segPath(firsts[s]!), off, size });
        off += size;
      }
    }

    for (let seq = 0; seq < entries.length; seq++) {
      const { path, off, size } = place.get(seq)!;
      const ackAt = log.findIndex((e) => e.op === "ack" && e.seq === seq);
      const writeAt = log.findIndex(
        (e) =>
          e.op === "write" && e.path === path && e.position <= off && off + size <= e.position + e.length,
      );
      expect(writeAt, `write of seq ${seq}`).toBeGreaterThanOrEqual(0);
      const syncStart = log.findIndex((e, i) => i > writeAt && e.op === "fsync-start" && e.path === path);
      const syncEnd = log.findIndex((e, i) => i > syncStart && e.op === "fsync-end" && e.path === path);
      expect(syncStart, `fsync after write of seq ${seq}`).toBeGreaterThan(writeAt);
      expect(syncEnd, `fsync of seq ${seq} returned`).toBeGreaterThan(syncStart);
      expect(ackAt, `ack of seq ${seq} after its fsync returned`).toBeGreaterThan(syncEnd);
      if (firsts[0] !== firsts.find((f) => segPath(f) === path)) {
        // A new segment's directory entry is durable before anything in it is acknowledged.
        const created = log.findIndex((e) => e.op === "open" && e.path === path);
        const dirSynced = log.findIndex((e, i) => i > created && e.op === "fsync-dir-end");
        expect(dirSynced, `directory fsync for ${path}`).toBeGreaterThan(created);
        expect(dirSynced).toBeLessThan(writeAt);
      }
    }
  });

  it("batches appends made during a slow fsync into one write and one fsync", async () => {
    const log: IoEvent[] = [];
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let fsyncStarted!: () => void;
    const started = new Promise<void>((r) => (fsyncStarted = r));
    let holdNext = false;
    const io = observingIo(log, {
      beforeFsync: async () => {
        if (!holdNext) return;
        holdNext = false;
        fsyncStarted();
        await gate;
      },
    });
    const store = await ChainStore.open({ dir, io });
    log.length = 0;
    holdNext = true;

    const first = store.append(entry(0)).then((seq) => void log.push({ op: "ack", seq }));
    await started;
    const rest = Array.from({ length: 10 }, (_, k) =>
      store.append(entry(k + 1)).then((seq) => void log.push({ op: "ack", seq })),
    );
    expect(store.nextSeq).toBe(11);
    expect(store.durableSize).toBe(0);
    release();
    await Promise.all([first, ...rest]);

    const segOps = log.filter((e) => e.op === "ack" || isSeg(e)).map((e) => e.op);
    expect(segOps).toEqual([
      "write",
      "fsync-start",
      "fsync-end",
      "ack",
      "write",
      "fsync-start",
      "fsync-end",
      ...Array<string>(10).fill("ack"),
    ]);
    const writes = log.filter((e) => e.op === "write" && isSeg(e));
    const sizes = Array.from({ length: 11 }, (_, i) => RECORD_HEADER_BYTES + entry(i).length);
    expect(writes.map((w) => (w.op === "write" ? w.length : -1))).toEqual([
      sizes[0],
      sizes.slice(1).reduce((a, b) => a + b, 0),
    ]);
    await store.close();
  });

  it("writes and fsyncs each record on its own when group commit is off", async () => {
    const log: IoEvent[] = [];
    const store = await ChainStore.open({ dir, io: observingIo(log), groupCommit: false });
    log.length = 0;
    await Promise.all(Array.from({ length: 8 }, (_, i) => store.append(entry(i))));
    const segOps = log.filter(isSeg).map((e) => e.op);
    expect(segOps).toEqual(Array.from({ length: 8 }, () => ["write", "fsync-start", "fsync-end"]).flat());
    await store.close();
  });

  it("respects maxBatchRecords", async () => {
    const log: IoEvent[] = [];
    const store = await ChainStore.open({ dir, io: observingIo(log), maxBatchRecords: 3 });
    log.length = 0;
    await Promise.all(Array.from({ length: 8 }, (_, i) => store.append(entry(i))));
    expect(log.filter((e) => isSeg(e) && e.op === "fsync-start")).toHaveLength(3);
    await store.close();
  });
});

describe("chain store failure", () => {
  async function acknowledged(store: ChainStore, n: number): Promise<Uint8Array[]> {
    const entries = Array.from({ length: n }, (_, i) => entry(i));
    await Promise.all(entries.map((e) => store.append(e)));
    return entries;
  }

  /** Reopens the store: exactly `entries` are there, and appends continue after them. */
  async function expectReopensWith(entries: Uint8Array[], recovery: Partial<StoreRecovery>): Promise<void> {
    const again = await ChainStore.open({ dir });
    expect(again.recovery).toMatchObject(recovery);
    expect(again.durableSize).toBe(entries.length);
    expect(await collect(again)).toEqual(entries.map((e, i) => [i, e]));
    expect(await again.append(entry(entries.length))).toBe(entries.length);
    await again.close();
  }

  it("fails on ENOSPC during a write, rejects later appends, and loses nothing acknowledged", async () => {
    const log: IoEvent[] = [];
    let inject = false;
    const io = observingIo(log, {
      beforeWrite: async (h, data, position) => {
        if (!inject || !h.path.endsWith(".seg")) return;
        // A short write, then the error, as a full disk produces.
        await nodeStoreIo.write(h, data.subarray(0, data.length >> 1), position);
        throw osError("ENOSPC", "write");
      },
    });
    const events: StoreEvent[] = [];
    const store = await ChainStore.open({ dir, io, onEvent: (e) => events.push(e) });
    const entries = await acknowledged(store, 5);

    inject = true;
    const pending = [5, 6, 7].map((i) => store.append(entry(100 + i)));
    for (const p of pending) {
      const err = await expectCode(p, "store.failed");
      expect((err as Error).message).toContain("ENOSPC");
      expect((err as { detail: unknown }).detail).toEqual({ code: "ENOSPC" });
    }
    expect(store.state).toBe("failed");
    expect((store.failure as { code: string }).code).toBe("ENOSPC");
    expect(events.filter((e) => e.type === "failed")).toHaveLength(1);
    expect(store.durableSize).toBe(5);
    expect(store.nextSeq).toBe(5);
    expect(store.lastEntry()).toEqual(entries[4]);

    const opsBefore = log.length;
    await expectCode(store.append(entry(200)), "store.failed");
    await new Promise((r) => setTimeout(r, 10));
    expect(log.slice(opsBefore).filter((e) => e.op === "write" || e.op === "fsync-start")).toEqual([]);
    expect(await store.read(4)).toEqual(entries[4]); // acknowledged data stays readable
    await store.close();
    expect(store.state).toBe("closed");

    // The failure path cut the half-written batch off again, so there is nothing to recover.
    const ackedBytes = entries.reduce((n, e) => n + RECORD_HEADER_BYTES + e.length, 0);
    expect((await stat(segPath(0))).size).toBe(ackedBytes);
    await expectReopensWith(entries, { truncated: false, validBytes: ackedBytes, droppedBytes: 0 });
  });

  it("fails on EIO from fsync; acknowledged entries survive and the rejected ones are cut off", async () => {
    let inject = false;
    const io = observingIo([], {
      beforeFsync: (h) => {
        if (inject && h.path.endsWith(".seg")) {
          inject = false; // fails once: the fsync after the cut succeeds
          throw osError("EIO", "fsync");
        }
      },
    });
    const store = await ChainStore.open({ dir, io });
    const entries = await acknowledged(store, 5);
    const ackedBytes = (await stat(segPath(0))).size;
    inject = true;
    const extra = [0, 1, 2].map((k) => entry(100 + k));
    const results = await Promise.allSettled(extra.map((e) => store.append(e)));
    for (const r of results) {
      expect(r.status).toBe("rejected");
      if (r.status === "rejected") {
        expect(isCmcpError(r.reason, "store.failed")).toBe(true);
        expect((r.reason as Error).message).toContain("EIO");
        expect((r.reason as Error).message).not.toContain("may remain");
      }
    }
    expect(store.state).toBe("failed");
    expect((store.failure as { code: string }).code).toBe("EIO");
    // By the time the appends were rejected, their bytes were gone again.
    expect((await stat(segPath(0))).size).toBe(ackedBytes);
    await expectCode(store.append(entry(9)), "store.failed");
    await store.close();
    await expectReopensWith(entries, { truncated: false, validBytes: ackedBytes });
  });

  it("cuts off a batch whose index write failed after its records were written", async () => {
    let inject = false;
    const io = observingIo([], {
      beforeWrite: (h) => {
        if (inject && h.path.endsWith(".idx")) throw osError("ENOSPC", "write");
      },
    });
    const store = await ChainStore.open({ dir, io });
    const entries = await acknowledged(store, 4);
    inject = true;
    await expectCode(store.append(entry(50)), "store.failed");
    await store.close();
    await expectReopensWith(entries, { truncated: false });
  });

  describe("when the cut itself fails", () => {
    const voidPath = (): string => `${segPath(0)}.void`;

    /** Five acknowledged entries, then a batch of three that fails on fsync; `cut` decides how the cut fails. */
    async function failBatch(
      cut: "ftruncate" | "fsync",
    ): Promise<{ entries: Uint8Array[]; ackedBytes: number }> {
      let inject = false;
      const base = observingIo([], {
        beforeFsync: (h) => {
          if (inject && h.path.endsWith(".seg")) throw osError("EIO", "fsync");
        },
      });
      const io: StoreIo = {
        ...base,
        ftruncate: async (h, length) => {
          if (inject && cut === "ftruncate") throw osError("EIO", "ftruncate");
          await base.ftruncate(h, length);
        },
      };
      const store = await ChainStore.open({ dir, io });
      const entries = await acknowledged(store, 5);
      const ackedBytes = (await stat(segPath(0))).size;
      inject = true;
      const results = await Promise.allSettled([0, 1, 2].map((k) => store.append(entry(100 + k))));
      expect(results.map((r) => r.status)).toEqual(["rejected", "rejected", "rejected"]);
      await store.close();
      return { entries, ackedBytes };
    }

    it.each(["ftruncate", "fsync"] as const)(
      "leaves a durable marker when %s fails, and the next open cuts the rejected records off",
      async (cut) => {
        const { entries, ackedBytes } = await failBatch(cut);
        const sizeAfterFailure = (await stat(segPath(0))).size;
        if (cut === "ftruncate") expect(sizeAfterFailure).toBeGreaterThan(ackedBytes);
        expect(await readFile(voidPath(), "utf8")).toBe(
          `cmcp-chain-void 1\nsegment ${segmentFileName(0, "seg")}\nvalid-bytes ${ackedBytes}\nnext-seq 5\n`,
        );

        const events: StoreEvent[] = [];
        const again = await ChainStore.open({ dir, onEvent: (e) => events.push(e) });
        expect(again.durableSize).toBe(5);
        expect(again.recovery).toEqual({
          truncated: sizeAfterFailure > ackedBytes,
          segment: segPath(0),
          validBytes: ackedBytes,
          droppedBytes: sizeAfterFailure - ackedBytes,
          reason: sizeAfterFailure > ackedBytes ? "rejected-batch" : undefined,
        });
        expect(events.some((e) => e.type === "tail-truncated")).toBe(sizeAfterFailure > ackedBytes);
        expect(await collect(again)).toEqual(entries.map((e, i) => [i, e]));
        expect((await stat(segPath(0))).size).toBe(ackedBytes);
        expect(await readdir(join(dir, "segments"))).not.toContain(`${segmentFileName(0, "seg")}.void`);
        expect(await again.append(entry(5))).toBe(5);
        await again.close();

        const third = await ChainStore.open({ dir });
        expect(third.durableSize).toBe(6);
        expect(third.recovery.truncated).toBe(false);
        await third.close();
      },
    );

    it("refuses to open, changing nothing, when the marker does not match the acknowledged records", async () => {
      await failBatch("ftruncate");
      const seg = await readFile(segPath(0));
      const marker = await readFile(voidPath(), "utf8");
      for (const bad of [
        marker.replace("next-seq 5", "next-seq 6"), // more records than lie before the boundary
        marker.replace(/valid-bytes (\d+)/, (_m, n: string) => `valid-bytes ${Number(n) - 3}`), // inside a record
        marker.replace(/valid-bytes (\d+)/, () => `valid-bytes ${seg.length + 100}`), // beyond the file
        "garbage\n",
      ]) {
        await writeFile(voidPath(), bad);
        const err = await expectCode(ChainStore.open({ dir }), "store.corrupt");
        expect((err as Error).message, bad).toMatch(/void|acknowledged end/);
        expect((await readFile(segPath(0))).equals(seg)).toBe(true);
        expect(await readFile(voidPath(), "utf8")).toBe(bad);
      }
    });

    it("refuses a marker for a segment that is not the last one", async () => {
      const store = await ChainStore.open({ dir, segmentMaxBytes: 1000 });
      for (let i = 0; i < 5; i++) await store.append(entry(i, 400));
      await store.close();
      await writeFile(
        voidPath(),
        `cmcp-chain-void 1\nsegment ${segmentFileName(0, "seg")}\nvalid-bytes 420\nnext-seq 1\n`,
      );
      await expectCode(ChainStore.open({ dir, segmentMaxBytes: 1000 }), "store.corrupt");
    });

    it("says so in the failure when neither the cut nor the marker could be written", async () => {
      let inject = false;
      const base = observingIo([], {
        beforeFsync: (h) => {
          if (inject) throw osError("EIO", `fsync ${h.path}`);
        },
      });
      const io: StoreIo = {
        ...base,
        ftruncate: async (h, length) => {
          if (inject) throw osError("EIO", "ftruncate");
          await base.ftruncate(h, length);
        },
      };
      const store = await ChainStore.open({ dir, io });
      await acknowledged(store, 2);
      inject = true;
      const err = await expectCode(store.append(entry(9)), "store.failed");
      expect((err as Error).message).toContain(`rejected records may remain in ${segPath(0)}`);
      await store.close();
      expect((await readdir(join(dir, "segments"))).filter((n) => !/^\d{20}\.(seg|idx)$/.test(n))).toEqual(
        [],
      );
    });
  });

  it("fails when a new segment cannot be created and keeps earlier segments intact", async () => {
    let inject = false;
    const base = observingIo([]);
    const io: StoreIo = {
      ...base,
      fsyncDir: async (p) => {
        if (inject) throw osError("EIO", "fsync");
        await base.fsyncDir(p);
      },
    };
    const store = await ChainStore.open({ dir, io, segmentMaxBytes: 1000 });
    const entries = [entry(0, 400), entry(1, 400)];
    for (const e of entries) await store.append(e);
    inject = true;
    await expectCode(store.append(entry(2, 400)), "store.failed"); // needs a new segment
    expect(store.state).toBe("failed");
    await store.close();

    const again = await ChainStore.open({ dir, segmentMaxBytes: 1000 });
    expect(await collect(again)).toEqual(entries.map((e, i) => [i, e]));
    await again.close();
  });
});

describe("chain store index", () => {
  const entries = Array.from({ length: 40 }, (_, i) => entry(i, 200));
  const SEG = 1024; // four 220-byte records per segment

  async function setup(): Promise<void> {
    const store = await ChainStore.open({ dir, segmentMaxBytes: SEG });
    await Promise.all(entries.map((e) => store.append(e)));
    await store.close();
  }

  async function openWithEvents(): Promise<{ store: ChainStore; rebuilt: string[] }> {
    const rebuilt: string[] = [];
    const store = await ChainStore.open({
      dir,
      segmentMaxBytes: SEG,
      onEvent: (e) => {
        if (e.type === "index-rebuilt") rebuilt.push(e.segment);
      },
    });
    return { store, rebuilt };
  }

  async function expectAllReadable(store: ChainStore): Promise<void> {
    expect(store.durableSize).toBe(entries.length);
    for (let i = 0; i < entries.length; i++) expect(await store.read(i)).toEqual(entries[i]);
    expect(await collect(store, 2)).toEqual(entries.slice(2).map((e, k) => [k + 2, e]));
  }

  it("rebuilds missing index files on open", async () => {
    await setup();
    const before = await readFile(idxPath(0));
    for (const n of await readdir(join(dir, "segments"))) {
      if (n.endsWith(".idx")) await unlink(join(dir, "segments", n));
    }
    const { store, rebuilt } = await openWithEvents();
    expect(rebuilt.length).toBe(9); // every sealed segment; the last one is always rewritten silently
    await expectAllReadable(store);
    await store.close();
    expect(await readFile(idxPath(0))).toEqual(before);
  });

  it("rebuilds a short index on open", async () => {
    await setup();
    await truncate(idxPath(4), 13);
    const { store, rebuilt } = await openWithEvents();
    expect(rebuilt).toEqual([segPath(4)]);
    await expectAllReadable(store);
    await store.close();
  });

  it("heals an index whose middle entries are wrong when a read trips over them", async () => {
    await setup();
    const idx = await readFile(idxPath(8));
    idx.writeBigUInt64LE(440n, 8); // seq 9 now points at seq 10
    idx.writeBigUInt64LE(99_999n, 16); // seq 10 points past the end
    await writeFile(idxPath(8), idx);
    const { store, rebuilt } = await openWithEvents();
    expect(rebuilt).toEqual([]); // first and last entries are fine, so open trusts it
    expect(await store.read(9)).toEqual(entries[9]);
    expect(rebuilt).toEqual([segPath(8)]);
    await store.close();

    await writeFile(idxPath(8), idx);
    const second = await openWithEvents();
    expect(await collect(second.store, 10, 12)).toEqual([10, 11].map((i) => [i, entries[i]]));
    expect(second.rebuilt).toEqual([segPath(8)]);
    await expectAllReadable(second.store);
    await second.store.close();
  });

  it("rewrites a garbage index of the last segment on open", async () => {
    await setup();
    await writeFile(idxPath(36), Buffer.alloc(64, 0xee));
    const { store } = await openWithEvents();
    await expectAllReadable(store);
    await store.close();
    expect((await stat(idxPath(36))).size).toBe(4 * 8);
  });
});
