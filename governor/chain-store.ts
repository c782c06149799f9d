/**
 * Durable, append-only record store under the receipt chain. Entries are
 * opaque bytes; entry i has sequence number i. An append resolves only after
 * the fsync covering it returned, so an acknowledged entry survives a crash or
 * power loss; concurrent appends share one write + one fsync (group commit).
 *
 * Layout under `<dir>/segments/`:
 *   <20-digit first seq>.seg  records, back to back, each:
 *     0  2  magic "CR"
 *     2  1  format version (1)
 *     3  1  reserved, 0
 *     4  4  payload length, u32 LE
 *     8  8  seq, u64 LE
 *    16  4  CRC-32 (IEEE) over bytes 0..15 then the payload, u32 LE
 *    20  .. payload
 *   <20-digit first seq>.idx  u64 LE file offset of each record, in seq order.
 *     A cache: never fsynced, checked on open and on every lookup, rebuilt
 *     from the segment when it disagrees.
 *   <20-digit first seq>.seg.void  only after a failed batch whose records
 *     could not be cut off again (see below); ASCII, exactly:
 *       "cmcp-chain-void 1\n"
 *       "segment <20-digit first seq>.seg\n"
 *       "valid-bytes <decimal>\n"   bytes of acknowledged records
 *       "next-seq <decimal>\n"      seq after the last acknowledged record
 *     Written to a temp file, fsynced, renamed into place, directory fsynced.
 *
 * Recovery on open. Only the last segment can hold unacknowledged bytes:
 *  - a torn tail (partial header or payload, a final record failing its CRC,
 *    trailing garbage or zeros) is the unsynced end of the last batch and is
 *    cut off;
 *  - damage followed by any whole, CRC-valid record with a plausible seq is
 *    not a torn tail but damage to acknowledged records: open fails with
 *    `store.corrupt` and leaves the files alone. (A power loss that kept a
 *    later page of the last batch but lost an earlier one is reported the
 *    same way: the store cannot tell it from damage, and refuses rather than
 *    risk dropping acknowledged records.)
 *  - a batch that failed after its bytes were written (index write or fsync
 *    error) was rejected to its callers, so its bytes must not come back as
 *    records: the failure path truncates the segment to its acknowledged
 *    size and fsyncs; if that fails too it writes the .void marker, and the
 *    next open truncates to `valid-bytes` (after checking that exactly the
 *    acknowledged records lie before it) and then removes the marker.
 *
 * Single writer: opening may truncate a torn tail and rewrite index files, so
 * callers must hold the data directory lock before opening.
 */
import { open, mkdir, readdir, rename, unlink } from "node:fs/promises";
import type { FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { crc32 } from "node:zlib"; // present since Node 20.15; engines require >= 20.19
import { CmcpError } from "../artifacts/errors.js";
import { TEMP_MARKER, fsyncDir } from "./durable-file.js";

export const RECORD_HEADER_BYTES = 20;
const MAGIC_0 = 0x43; // "C"
const MAGIC_1 = 0x52; // "R"
const FORMAT_VERSION = 1;
const IDX_ENTRY_BYTES = 8;
const SEGMENTS_DIR = "segments";
const VOID_SUFFIX = ".void";
const SEQ_DIGITS = 20;
const SCAN_CHUNK = 1 << 20;
const MAX_U32 = 0xffff_ffff;
const TWO_32 = 0x1_0000_0000;

const DEFAULT_SEGMENT_MAX_BYTES = 64 * 1024 * 1024;
const DEFAULT_MAX_ENTRY_BYTES = 1024 * 1024;
const DEFAULT_MAX_BATCH_RECORDS = 4096;
const DEFAULT_MAX_BATCH_BYTES = 8 * 1024 * 1024;

// ---------------------------------------------------------------------------
// OS layer

export type OpenFlags = "r" | "r+" | "w" | "wx+";

/** An open file; `path` is there so observers can tell files apart. */
export interface StoreHandle {
  readonly path: string;
}

/**
 * Every file-system call the store makes. Tests wrap `nodeStoreIo` to inject
 * OS errors or record the order of operations.
 */
export interface StoreIo {
  mkdir(path: string): Promise<void>;
  readdir(path: string): Promise<string[]>;
  unlink(path: string): Promise<void>;
  rename(from: string, to: string): Promise<void>;
  open(path: string, flags: OpenFlags): Promise<StoreHandle>;
  /** Reads up to `buf.length` bytes at `position`; fewer only at end of file. */
  read(h: StoreHandle, buf: Uint8Array, position: number): Promise<number>;
  /** Writes all of `data` at `position` or throws. */
  write(h: StoreHandle, data: Uint8Array, position: number): Promise<void>;
  fsync(h: StoreHandle): Promise<void>;
  ftruncate(h: StoreHandle, length: number): Promise<void>;
  size(h: StoreHandle): Promise<number>;
  close(h: StoreHandle): Promise<void>;
  fsyncDir(path: string): Promise<void>;
}

class NodeHandle implements StoreHandle {
  constructor(
    readonly path: string,
    readonly fh: FileHandle,
  ) {}
}

function fileOf(h: StoreHandle): FileHandle {
  if (!(h instanceof NodeHandle)) throw new TypeError("handle was not opened by nodeStoreIo");
  return h.fh;
}

export const nodeStoreIo: StoreIo = {
  async mkdir(path) {
    await mkdir(path, { recursive: true, mode: 0o700 });
  },
  readdir: (path) => readdir(path),
  unlink: (path) => unlink(path),
  rename: (from, to) => rename(from, to),
  async open(path, flags) {
    return new NodeHandle(path, await open(path, flags, 0o600));
  },
  async read(h, buf, position) {
    const fh = fileOf(h);
    let got = 0;
    while (got < buf.length) {
      const { bytesRead } = await fh.read(buf, got, buf.length - got, position + got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    return got;
  },
  async write(h, data, position) {
    const fh = fileOf(h);
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await fh.write(data, done, data.length - done, position + done);
      done += bytesWritten;
    }
  },
  // fdatasync: the data and the size needed to read it back; mtime need not be durable.
  fsync: (h) => fileOf(h).datasync(),
  ftruncate: (h, length) => fileOf(h).truncate(length),
  async size(h) {
    return (await fileOf(h).stat()).size;
  },
  close: (h) => fileOf(h).close(),
  fsyncDir,
};

// ---------------------------------------------------------------------------
// Public types

export type StoreState = "open" | "failed" | "closed";

/**
 * Why the tail of the last segment was cut. "rejected-batch": bytes of a
 * failed batch, recorded in a .void marker.
 */
export type TailDamage =
  "partial-header" | "partial-payload" | "bad-header" | "bad-crc" | "seq-discontinuity" | "rejected-batch";

export interface StoreRecovery {
  /** True when bytes after the last whole record were removed. */
  truncated: boolean;
  /** Path of the last segment, the only one a torn write can touch. */
  segment: string;
  validBytes: number;
  droppedBytes: number;
  reason: TailDamage | undefined;
}

export type StoreEvent =
  | { type: "opened"; records: number; segments: number; recovery: StoreRecovery }
  | { type: "tail-truncated"; recovery: StoreRecovery }
  | { type: "index-rebuilt"; segment: string; reason: string }
  | { type: "segment-created"; segment: string; firstSeq: number }
  | { type: "failed"; error: CmcpError };

export interface ChainStoreOptions {
  dir: string;
  /** Roll to a new segment once the current one would exceed this. Default 64 MiB. */
  segmentMaxBytes?: number;
  /** Larger appends reject with `store.entry-too-large`. Default 1 MiB. */
  maxEntryBytes?: number;
  /** false: one write + fsync per record (baseline for benchmarks). Default true. */
  groupCommit?: boolean;
  maxBatchRecords?: number;
  maxBatchBytes?: number;
  /**
   * "quick" (default) checks each sealed segment's first and last record
   * against its index and the seq chain across segments; "full" reads and
   * CRC-checks every record. Payload damage inside a sealed segment is found
   * by "full" on open and by any read in either mode.
   */
  verifyOnOpen?: "quick" | "full";
  io?: StoreIo;
  onEvent?: (event: StoreEvent) => void;
}

export function segmentFileName(firstSeq: number, ext: "seg" | "idx"): string {
  return `${String(firstSeq).padStart(SEQ_DIGITS, "0")}.${ext}`;
}

// ---------------------------------------------------------------------------
// Record codec

function encodeRecord(seq: number, payload: Uint8Array): Uint8Array {
  const rec = new Uint8Array(RECORD_HEADER_BYTES + payload.length);
  const view = new DataView(rec.buffer);
  rec[0] = MAGIC_0;
  rec[1] = MAGIC_1;
  rec[2] = FORMAT_VERSION;
  view.setUint32(4, payload.length, true);
  view.setUint32(8, seq % TWO_32, true);
  view.setUint32(12, Math.floor(seq / TWO_32), true);
  rec.set(payload, RECORD_HEADER_BYTES);
  view.setUint32(16, crc32(payload, crc32(rec.subarray(0, 16))), true);
  return rec;
}

interface Header {
  length: number;
  seq: number;
  crc: number;
}

/** Parses the 20 header bytes at `off`; undefined when magic, version or seq range is wrong. */
function parseHeader(buf: Uint8Array, off: number): Header | undefined {
  if (buf.length - off < RECORD_HEADER_BYTES) return undefined;
  if (
    buf[off] !== MAGIC_0 ||
    buf[off + 1] !== MAGIC_1 ||
    buf[off + 2] !== FORMAT_VERSION ||
    buf[off + 3] !== 0
  ) {
    return undefined;
  }
  const view = new DataView(buf.buffer, buf.byteOffset + off, RECORD_HEADER_BYTES);
  const hi = view.getUint32(12, true);
  if (hi > 0x1f_ffff) return undefined; // beyond 2^53
  return {
    length: view.getUint32(4, true),
    seq: hi * TWO_32 + view.getUint32(8, true),
    crc: view.getUint32(16, true),
  };
}

function crcOf(buf: Uint8Array, off: number, length: number): number {
  const payload = buf.subarray(off + RECORD_HEADER_BYTES, off + RECORD_HEADER_BYTES + length);
  return crc32(payload, crc32(buf.subarray(off, off + 16)));
}

/** Checks one complete record (exactly `rec.length` bytes); returns its payload or a reason. */
function checkRecord(rec: Uint8Array, seq: number): Uint8Array | string {
  if (rec.length < RECORD_HEADER_BYTES) return "short record";
  const h = parseHeader(rec, 0);
  if (h === undefined) return "bad header";
  if (h.length !== rec.length - RECORD_HEADER_BYTES) return "length does not match index";
  if (h.seq !== seq) return `seq ${h.seq} where ${seq} expected`;
  if (crcOf(rec, 0, h.length) !== h.crc) return "bad crc";
  return rec.subarray(RECORD_HEADER_BYTES);
}

type ScanItem =
  | { kind: "record"; seq: number; offset: number; size: number; payload: Uint8Array }
  | { kind: "damage"; offset: number; reason: TailDamage };

/**
 * Walks records from `start` up to byte `end`, expecting consecutive seqs
 * from `seq`. Stops after the first damage item. A record's payload is a view
 * into a reused buffer, valid until the generator resumes.
 */
async function* scanRecords(
  io: StoreIo,
  h: StoreHandle,
  start: number,
  end: number,
  seq: number,
): AsyncGenerator<ScanItem, void, void> {
  let buf = new Uint8Array(Math.min(SCAN_CHUNK, Math.max(RECORD_HEADER_BYTES, end - start)));
  let bufPos = start; // file position of buf[0]
  let have = 0;
  let cur = 0;

  const ensure = async (n: number): Promise<boolean> => {
    if (have - cur >= n) return true;
    if (cur > 0) {
      buf.copyWithin(0, cur, have);
      bufPos += cur;
      have -= cur;
      cur = 0;
    }
    if (n > buf.length) {
      const bigger = new Uint8Array(n);
      bigger.set(buf.subarray(0, have));
      buf = bigger;
    }
    while (have < n) {
      const want = Math.min(buf.length, end - bufPos) - have;
      if (want <= 0) return false;
      const got = await io.read(h, buf.subarray(have, have + want), bufPos + have);
      if (got === 0) return false;
      have += got;
    }
    return true;
  };

  while (bufPos + cur < end) {
    const offset = bufPos + cur;
    const remaining = end - offset;
    if (remaining < RECORD_HEADER_BYTES || !(await ensure(RECORD_HEADER_BYTES))) {
      yield { kind: "damage", offset, reason: "partial-header" };
      return;
    }
    const header = parseHeader(buf, cur);
    if (header === undefined) {
      yield { kind: "damage", offset, reason: "bad-header" };
      return;
    }
    const size = RECORD_HEADER_BYTES + header.length;
    if (size > remaining || !(await ensure(size))) {
      yield { kind: "damage", offset, reason: "partial-payload" };
      return;
    }
    if (crcOf(buf, cur, header.length) !== header.crc) {
      yield { kind: "damage", offset, reason: "bad-crc" };
      return;
    }
    if (header.seq !== seq) {
      yield { kind: "damage", offset, reason: "seq-discontinuity" };
      return;
    }
    yield { kind: "record", seq, offset, size, payload: buf.subarray(cur + RECORD_HEADER_BYTES, cur + size) };
    cur += size;
    seq++;
  }
}

function encodeOffsets(offsets: readonly number[]): Uint8Array {
  const out = new Uint8Array(offsets.length * IDX_ENTRY_BYTES);
  const view = new DataView(out.buffer);
  offsets.forEach((o, i) => view.setBigUint64(i * IDX_ENTRY_BYTES, BigInt(o), true));
  return out;
}

function decodeOffset(buf: Uint8Array, at: number): number {
  const v = new DataView(buf.buffer, buf.byteOffset + at, IDX_ENTRY_BYTES).getBigUint64(0, true);
  return v > BigInt(Number.MAX_SAFE_INTEGER) ? -1 : Number(v);
}

/** CRC of the record at `offset` whose header is `head`, reading the payload in bounded chunks. */
async function streamedCrc(
  io: StoreIo,
  h: StoreHandle,
  offset: number,
  head: Uint8Array,
  length: number,
): Promise<number | undefined> {
  let crc = crc32(head.subarray(0, 16));
  const buf = new Uint8Array(Math.min(SCAN_CHUNK, Math.max(1, length)));
  for (let done = 0; done < length;) {
    const want = Math.min(buf.length, length - done);
    const got = await io.read(h, buf.subarray(0, want), offset + RECORD_HEADER_BYTES + done);
    if (got < want) return undefined;
    crc = crc32(buf.subarray(0, want), crc);
    done += want;
  }
  return crc;
}

/**
 * First whole, CRC-valid record after the damaged one at `damaged` (which
 * should have held `seq`), up to byte `end`. Only seqs a record at that
 * distance could have count: at least `seq`, at most one more per header's
 * worth of bytes. A torn write loses the end of the last batch, so it leaves
 * no such record behind the damage (unless the disk kept a later page of the
 * batch and lost an earlier one, which is then reported as corruption too).
 */
async function findLaterRecord(
  io: StoreIo,
  h: StoreHandle,
  damaged: number,
  end: number,
  seq: number,
): Promise<{ offset: number; seq: number } | undefined> {
  const buf = new Uint8Array(SCAN_CHUNK + RECORD_HEADER_BYTES);
  for (let pos = damaged + 1; pos + RECORD_HEADER_BYTES <= end; pos += SCAN_CHUNK) {
    const got = await io.read(h, buf.subarray(0, Math.min(buf.length, end - pos)), pos);
    const view = buf.subarray(0, got);
    for (let i = 0; i < SCAN_CHUNK && i + RECORD_HEADER_BYTES <= got; i++) {
      if (view[i] !== MAGIC_0 || view[i + 1] !== MAGIC_1) continue;
      const head = parseHeader(view, i);
      if (head === undefined) continue;
      const at = pos + i;
      if (head.seq < seq || head.seq > seq + Math.floor((at - damaged) / RECORD_HEADER_BYTES)) continue;
      if (at + RECORD_HEADER_BYTES + head.length > end) continue;
      const crc = await streamedCrc(io, h, at, view.slice(i, i + RECORD_HEADER_BYTES), head.length);
      if (crc === head.crc) return { offset: at, seq: head.seq };
    }
  }
  return undefined;
}

interface VoidMarker {
  validBytes: number;
  nextSeq: number;
}

function encodeVoidMarker(segment: { first: number }, m: VoidMarker): Uint8Array {
  const text =
    `cmcp-chain-void 1\nsegment ${segmentFileName(segment.first, "seg")}\n` +
    `valid-bytes ${m.validBytes}\nnext-seq ${m.nextSeq}\n`;
  return new TextEncoder().encode(text);
}

function parseVoidMarker(bytes: Uint8Array, first: number): VoidMarker | undefined {
  const m = /^cmcp-chain-void 1\nsegment (\d{20})\.seg\nvalid-bytes (\d{1,16})\nnext-seq (\d{1,16})\n$/.exec(
    new TextDecoder().decode(bytes),
  );
  if (m === null || Number(m[1]) !== first) return undefined;
  const validBytes = Number(m[2]);
  const nextSeq = Number(m[3]);
  if (!Number.isSafeInteger(validBytes) || !Number.isSafeInteger(nextSeq) || nextSeq < first)
    return undefined;
  return { validBytes, nextSeq };
}

// ---------------------------------------------------------------------------
// Store

interface Segment {
  first: number;
  /** Durable records and bytes. */
  count: number;
  size: number;
  seg: string;
  idx: string;
}

interface Active {
  segment: Segment;
  fh: StoreHandle;
  idxFh: StoreHandle;
  /** Offsets of the active segment's records, so reads never touch its index file. */
  offsets: number[];
}

interface Pending {
  seq: number;
  record: Uint8Array;
  resolve: (seq: number) => void;
  reject: (err: unknown) => void;
}

interface Settings {
  segmentMaxBytes: number;
  maxEntryBytes: number;
  maxBatchRecords: number;
  maxBatchBytes: number;
}

function corrupt(file: string, offset: number, reason: string): CmcpError {
  return new CmcpError("store.corrupt", `chain store is corrupt: ${file} at byte ${offset}: ${reason}`, {
    file,
    offset,
    reason,
  });
}

function errCode(err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : "EUNKNOWN";
}

function ioError(what: string, err: unknown): CmcpError {
  if (err instanceof CmcpError) return err;
  const msg = err instanceof Error ? err.message : String(err);
  return new CmcpError(
    "store.io",
    `chain store ${what} failed: ${msg}`,
    { code: errCode(err) },
    { cause: err },
  );
}

function positiveInt(name: string, value: number | undefined, fallback: number, max: number): number {
  const v = value ?? fallback;
  if (!Number.isSafeInteger(v) || v < 1 || v > max) {
    throw new CmcpError("store.options", `${name} must be an integer in 1..${max}, got ${String(value)}`);
  }
  return v;
}

export class ChainStore {
  readonly dir: string;
  readonly recovery: StoreRecovery;

  private readonly io: StoreIo;
  private readonly segDir: string;
  private readonly settings: Settings;
  private readonly onEvent: Emit;
  private readonly segments: Segment[];
  private active: Active;

  private _state: StoreState = "open";
  private _failure: unknown = undefined;
  private failedMessage = "";
  private closing = false;
  private closed: Promise<void> | undefined;

  private queue: Pending[] = [];
  private inflight: Pending[] = [];
  private pumping = false;
  private drainWaiters: Array<() => void> = [];
  private healing = new Map<Segment, Promise<void>>();

  private _nextSeq: number;
  private _durable: number;
  private lastQueued: Uint8Array | undefined;
  private lastDurable: Uint8Array | undefined;

  private constructor(init: {
    dir: string;
    segDir: string;
    io: StoreIo;
    settings: Settings;
    onEvent: Emit;
    segments: Segment[];
    active: Active;
    recovery: StoreRecovery;
    last: Uint8Array | undefined;
  }) {
    this.dir = init.dir;
    this.segDir = init.segDir;
    this.io = init.io;
    this.settings = init.settings;
    this.onEvent = init.onEvent;
    this.segments = init.segments;
    this.active = init.active;
    this.recovery = init.recovery;
    const seg = init.active.segment;
    this._durable = seg.first + seg.count;
    this._nextSeq = this._durable;
    this.lastQueued = init.last;
    this.lastDurable = init.last;
  }

  /** Seq the next append will receive (counts appends not yet durable). */
  get nextSeq(): number {
    return this._nextSeq;
  }

  /** Number of acknowledged (fsynced) entries; seqs 0..durableSize-1 are readable. */
  get durableSize(): number {
    return this._durable;
  }

  get state(): StoreState {
    return this._state;
  }

  /** The OS error that moved the store into the failed state. */
  get failure(): unknown {
    return this._failure;
  }

  /** Copy of the most recently accepted entry, durable or pending; the chain links to it. */
  lastEntry(): Uint8Array | undefined {
    return this.lastQueued?.slice();
  }

  static async open(opts: ChainStoreOptions): Promise<ChainStore> {
    const settings: Settings = {
      segmentMaxBytes: positiveInt(
        "segmentMaxBytes",
        opts.segmentMaxBytes,
        DEFAULT_SEGMENT_MAX_BYTES,
        2 ** 48,
      ),
      maxEntryBytes: positiveInt("maxEntryBytes", opts.maxEntryBytes, DEFAULT_MAX_ENTRY_BYTES, MAX_U32),
      maxBatchRecords:
        opts.groupCommit === false
          ? 1
          : positiveInt("maxBatchRecords", opts.maxBatchRecords, DEFAULT_MAX_BATCH_RECORDS, 2 ** 31),
      maxBatchBytes: positiveInt("maxBatchBytes", opts.maxBatchBytes, DEFAULT_MAX_BATCH_BYTES, 2 ** 48),
    };
    const verify = opts.verifyOnOpen ?? "quick";
    const io = opts.io ?? nodeStoreIo;
    const emit = safeEmitter(opts.onEvent);
    const segDir = join(opts.dir, SEGMENTS_DIR);

    try {
      await io.mkdir(segDir);
      const names = await io.readdir(segDir);
      const firsts: number[] = [];
      const voids = new Map<number, string>();
      for (const name of names) {
        if (name.includes(TEMP_MARKER)) {
          await io.unlink(join(segDir, name)); // leftover of an interrupted index or marker write
          continue;
        }
        const m = /^(\d{20})\.seg(\.void)?$/.exec(name);
        if (m === null) continue;
        const first = Number(m[1]);
        if (!Number.isSafeInteger(first)) throw corrupt(join(segDir, name), 0, "first seq out of range");
        if (m[2] === undefined) firsts.push(first);
        else voids.set(first, join(segDir, name));
      }
      firsts.sort((a, b) => a - b);
      for (const [first, path] of voids) {
        // Only the active segment ever gets one, and no segment is created while one exists.
        if (first !== firsts[firsts.length - 1])
          throw corrupt(path, 0, "void marker for a segment that is not the last one");
      }

      const segments: Segment[] = [];
      let expected = 0;
      const continuing = (first: number): Segment => {
        const segment = segmentAt(segDir, first);
        if (first !== expected) {
          const why =
            expected === 0
              ? "segments before this one are missing"
              : `segment starts at seq ${first}, previous one ends before ${expected}`;
          throw corrupt(segment.seg, 0, why);
        }
        return segment;
      };
      let opened: OpenedTail;
      if (firsts.length === 0) {
        const active = await createSegment(io, segDir, 0);
        await io.fsyncDir(opts.dir).catch(async (err: unknown) => {
          await closeQuietly(io, active.fh, active.idxFh);
          throw err;
        });
        emit({ type: "segment-created", segment: active.segment.seg, firstSeq: 0 });
        const recovery: StoreRecovery = {
          truncated: false,
          segment: active.segment.seg,
          validBytes: 0,
          droppedBytes: 0,
          reason: undefined,
        };
        opened = { active, recovery, last: undefined };
      } else {
        for (const first of firsts.slice(0, -1)) {
          const segment = continuing(first);
          await openSealed(io, segment, verify, emit);
          segments.push(segment);
          expected = segment.first + segment.count;
        }
        const lastFirst = firsts[firsts.length - 1]!;
        opened = await openTail(
          io,
          segDir,
          continuing(lastFirst),
          voids.get(lastFirst),
          segments.at(-1),
          emit,
        );
      }

      const { active, recovery, last } = opened;
      segments.push(active.segment);
      const records = active.segment.first + active.segment.count;
      emit({ type: "opened", records, segments: segments.length, recovery });
      return new ChainStore({
        dir: opts.dir,
        segDir,
        io,
        settings,
        onEvent: emit,
        segments,
        active,
        recovery,
        last,
      });
    } catch (err) {
      throw ioError("open", err);
    }
  }

  /**
   * Queues `entry` and resolves with its seq once it is durable. The seq is
   * assigned synchronously, in call order: it equals `nextSeq` read just
   * before the call.
   */
  append(entry: Uint8Array): Promise<number> {
    if (this._state === "failed") return Promise.reject(this.failedError());
    if (this._state === "closed" || this.closing) {
      return Promise.reject(new CmcpError("store.closed", "chain store is closed"));
    }
    if (!(entry instanceof Uint8Array)) {
      return Promise.reject(new CmcpError("store.invalid-entry", "entry must be a Uint8Array"));
    }
    if (entry.length > this.settings.maxEntryBytes) {
      return Promise.reject(
        new CmcpError(
          "store.entry-too-large",
          `entry of ${entry.length} bytes exceeds the limit of ${this.settings.maxEntryBytes}`,
          { size: entry.length, limit: this.settings.maxEntryBytes },
        ),
      );
    }
    const seq = this._nextSeq++;
    const record = encodeRecord(seq, entry);
    this.lastQueued = record.subarray(RECORD_HEADER_BYTES);
    return new Promise<number>((resolve, reject) => {
      this.queue.push({ seq, record, resolve, reject });
      if (!this.pumping) {
        this.pumping = true;
        // Deferred so appends made in the same tick share the first batch.
        queueMicrotask(() => void this.pump());
      }
    });
  }

  /** Reads one durable entry: one record read, plus one index read in a sealed segment. */
  async read(seq: number): Promise<Uint8Array> {
    this.checkRange(seq, this._durable - 1);
    const segment = this.segmentOf(seq);
    if (segment === this.active.segment) {
      const k = seq - segment.first;
      const off = this.active.offsets[k]!;
      const end = this.active.offsets[k + 1] ?? segment.size;
      const rec = await withRead(this.io, segment.seg, (h) => readAt(this.io, h, off, end - off)).catch(
        (err: unknown) => Promise.reject(ioError("read", err)),
      );
      const checked = checkRecord(rec, seq);
      if (typeof checked === "string") throw corrupt(segment.seg, off, checked);
      return checked.slice();
    }
    return this.withHealing(segment, () => readSealed(this.io, segment, seq));
  }

  /** Streams entries [from, to) in order with bounded memory. */
  async *entries(from = 0, to: number = this._durable): AsyncGenerator<{ seq: number; entry: Uint8Array }> {
    this.checkRange(to, this._durable);
    this.checkRange(from, to);
    let seq = from;
    while (seq < to) {
      const segment = this.segmentOf(seq);
      const stop = Math.min(to, segment.first + segment.count);
      const end = segment.size;
      const start = await this.offsetOf(segment, seq);
      const h = await this.io
        .open(segment.seg, "r")
        .catch((err: unknown) => Promise.reject(ioError("read", err)));
      try {
        const records = scanRecords(this.io, h, start, end, seq);
        while (seq < stop) {
          const next = await records.next().catch((err: unknown) => Promise.reject(ioError("read", err)));
          if (next.done === true) throw corrupt(segment.seg, end, "segment ends early");
          const item = next.value;
          if (item.kind === "damage") throw corrupt(segment.seg, item.offset, item.reason);
          yield { seq, entry: item.payload.slice() };
          seq++;
        }
      } finally {
        await this.io.close(h).catch(() => undefined);
      }
    }
  }

  /** Waits for queued appends, then releases the files. */
  close(): Promise<void> {
    this.closed ??= this.doClose();
    return this.closed;
  }

  private async doClose(): Promise<void> {
    this.closing = true;
    if (this.pumping) await new Promise<void>((resolve) => this.drainWaiters.push(resolve));
    const wasOpen = this._state === "open";
    if (wasOpen) this._state = "closed";
    const results = await Promise.allSettled([
      this.io.close(this.active.fh),
      this.io.close(this.active.idxFh),
    ]);
    this._state = "closed";
    const bad = results.find((r) => r.status === "rejected");
    if (wasOpen && bad !== undefined) throw ioError("close", bad.reason);
  }

  // -------------------------------------------------------------------------

  private async pump(): Promise<void> {
    let op = "write";
    try {
      while (this.queue.length > 0 && this._state === "open") {
        const seg = this.active.segment;
        if (seg.size > 0 && seg.size + this.queue[0]!.record.length > this.settings.segmentMaxBytes) {
          op = "segment roll";
          await this.roll();
        }
        const batch = this.takeBatch();
        this.inflight = batch;
        const a = this.active;
        const base = a.segment.size;
        const offsets: number[] = [];
        let bytes = 0;
        for (const p of batch) {
          offsets.push(base + bytes);
          bytes += p.record.length;
        }
        const data = batch.length === 1 ? batch[0]!.record : new Uint8Array(bytes);
        if (batch.length > 1) {
          let at = 0;
          for (const p of batch) {
            data.set(p.record, at);
            at += p.record.length;
          }
        }
        op = "write";
        await this.io.write(a.fh, data, base);
        // The index is a cache (checked on every lookup, never trusted), so its write overlaps the fsync.
        op = "fsync";
        const indexed = this.io
          .write(a.idxFh, encodeOffsets(offsets), a.segment.count * IDX_ENTRY_BYTES)
          .then(
            () => undefined,
            (err: unknown) => err,
          );
        // A failed fsync still waits for the index write, so the clean-up never races it.
        await this.io.fsync(a.fh).catch(async (err: unknown) => {
          await indexed;
          throw err;
        });
        op = "index write";
        const indexErr = await indexed;
        if (indexErr !== undefined) throw indexErr;

        for (const o of offsets) a.offsets.push(o);
        a.segment.size += bytes;
        a.segment.count += batch.length;
        this._durable += batch.length;
        this.lastDurable = batch[batch.length - 1]!.record.subarray(RECORD_HEADER_BYTES);
        this.inflight = [];
        for (const p of batch) p.resolve(p.seq);
      }
    } catch (err) {
      // Bytes of the failed batch may be in the segment; its callers are told it failed.
      const wrote = op === "write" || op === "index write" || op === "fsync";
      const kept = wrote ? await this.discardFailedBatch() : undefined;
      this.fail(op, err, kept);
    } finally {
      this.pumping = false;
      const waiters = this.drainWaiters;
      this.drainWaiters = [];
      for (const w of waiters) w();
    }
  }

  private takeBatch(): Pending[] {
    const { maxBatchRecords, maxBatchBytes, segmentMaxBytes } = this.settings;
    const room = segmentMaxBytes - this.active.segment.size;
    let n = 0;
    let bytes = 0;
    while (n < this.queue.length) {
      const size = this.queue[n]!.record.length;
      if (n > 0 && (n >= maxBatchRecords || bytes + size > maxBatchBytes || bytes + size > room)) break;
      bytes += size;
      n++;
    }
    return this.queue.splice(0, n);
  }

  private async roll(): Promise<void> {
    const old = this.active;
    this.active = await createSegment(this.io, this.segDir, old.segment.first + old.segment.count);
    const { segment } = this.active;
    this.segments.push(segment);
    this.onEvent({ type: "segment-created", segment: segment.seg, firstSeq: segment.first });
    await Promise.all([this.io.close(old.fh), this.io.close(old.idxFh)]);
  }

  /**
   * Cuts the segment back to its acknowledged records, so a rejected append
   * cannot reappear on the next open; failing that, leaves a durable marker
   * that makes the next open do it. Returns a note when neither worked.
   */
  private async discardFailedBatch(): Promise<string | undefined> {
    const a = this.active;
    try {
      await this.io.ftruncate(a.fh, a.segment.size);
      await this.io.fsync(a.fh);
      return undefined;
    } catch {
      // The truncation may not be durable: fall back to the marker.
    }
    try {
      await writeVoidMarker(this.io, this.segDir, a.segment, {
        validBytes: a.segment.size,
        nextSeq: a.segment.first + a.segment.count,
      });
      return undefined;
    } catch (err) {
      return `rejected records may remain in ${a.segment.seg} after byte ${a.segment.size} (${errCode(err)})`;
    }
  }

  private fail(op: string, err: unknown, note?: string): void {
    this._state = "failed";
    this._failure = err;
    const msg = err instanceof Error ? err.message : String(err);
    this.failedMessage =
      `chain store failed: ${op} returned ${errCode(err)} (${msg}); no further appends are accepted` +
      (note === undefined ? "" : `; ${note}`);
    const error = this.failedError();
    const rejected = [...this.inflight, ...this.queue];
    this.inflight = [];
    this.queue = [];
    this._nextSeq = this._durable;
    this.lastQueued = this.lastDurable;
    for (const p of rejected) p.reject(this.failedError());
    this.onEvent({ type: "failed", error });
  }

  private failedError(): CmcpError {
    return new CmcpError(
      "store.failed",
      this.failedMessage,
      { code: errCode(this._failure) },
      { cause: this._failure },
    );
  }

  private checkRange(seq: number, max: number): void {
    if (!Number.isSafeInteger(seq) || seq < 0 || seq > max) {
      throw new CmcpError("store.out-of-range", `seq ${String(seq)} is outside 0..${max}`, { seq, max });
    }
  }

  private segmentOf(seq: number): Segment {
    let lo = 0;
    let hi = this.segments.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.segments[mid]!.first <= seq) lo = mid;
      else hi = mid - 1;
    }
    return this.segments[lo]!;
  }

  /** Runs a lookup through a sealed segment's index; on a stale index, rebuilds it and looks again. */
  private async withHealing<T>(segment: Segment, lookup: () => Promise<T>): Promise<T> {
    try {
      return await lookup();
    } catch (err) {
      if (!(err instanceof CmcpError && err.code === "store.corrupt")) throw ioError("read", err);
      // The index is only a cache: rebuild it from the segment and look again.
      return this.heal(segment, err.message).then(lookup, (e: unknown) => Promise.reject(ioError("read", e)));
    }
  }

  private async offsetOf(segment: Segment, seq: number): Promise<number> {
    if (segment === this.active.segment) return this.active.offsets[seq - segment.first]!;
    return this.withHealing(segment, () => sealedOffset(this.io, segment, seq));
  }

  private heal(segment: Segment, reason: string): Promise<void> {
    let p = this.healing.get(segment);
    if (p === undefined) {
      p = rebuildIndex(this.io, segment, reason, this.onEvent).finally(() => this.healing.delete(segment));
      this.healing.set(segment, p);
    }
    return p;
  }
}

// ---------------------------------------------------------------------------
// Helpers and sealed segments

function safeEmitter(fn: ((e: StoreEvent) => void) | undefined): Emit {
  if (fn === undefined) return () => undefined;
  return (e) => {
    try {
      fn(e);
    } catch {
      // A failing logger must not break the store.
    }
  };
}

type Emit = (e: StoreEvent) => void;

async function readAt(io: StoreIo, h: StoreHandle, position: number, length: number): Promise<Uint8Array> {
  const buf = new Uint8Array(length);
  const got = await io.read(h, buf, position);
  return buf.subarray(0, got);
}

async function withRead<T>(io: StoreIo, path: string, fn: (h: StoreHandle) => Promise<T>): Promise<T> {
  const h = await io.open(path, "r");
  try {
    return await fn(h);
  } finally {
    await io.close(h).catch(() => undefined);
  }
}

async function closeQuietly(io: StoreIo, ...handles: Array<StoreHandle | undefined>): Promise<void> {
  for (const h of handles) if (h !== undefined) await io.close(h).catch(() => undefined);
}

function segmentAt(segDir: string, first: number): Segment {
  return {
    first,
    count: 0,
    size: 0,
    seg: join(segDir, segmentFileName(first, "seg")),
    idx: join(segDir, segmentFileName(first, "idx")),
  };
}

/** Creates the files of a new, empty segment. */
async function createSegment(io: StoreIo, segDir: string, first: number): Promise<Active> {
  const segment = segmentAt(segDir, first);
  const fh = await io.open(segment.seg, "wx+");
  let idxFh: StoreHandle | undefined;
  try {
    idxFh = await io.open(segment.idx, "w");
    // The new file's directory entry must be durable before records in it are acknowledged.
    await io.fsyncDir(segDir);
    return { segment, fh, idxFh, offsets: [] };
  } catch (err) {
    await closeQuietly(io, fh, idxFh);
    throw err;
  }
}

interface OpenedTail {
  active: Active;
  recovery: StoreRecovery;
  /** The last durable entry, in this segment or, when it is empty, in `prev`. */
  last: Uint8Array | undefined;
}

/**
 * Opens the last segment for appending: scans it, cuts a torn tail or the
 * bytes a .void marker disowns (refusing damage that is not a torn tail), and
 * rewrites its index.
 */
async function openTail(
  io: StoreIo,
  segDir: string,
  segment: Segment,
  voidPath: string | undefined,
  prev: Segment | undefined,
  emit: Emit,
): Promise<OpenedTail> {
  const fh = await io.open(segment.seg, "r+");
  let idxFh: StoreHandle | undefined;
  try {
    const fileSize = await io.size(fh);
    const marker = voidPath === undefined ? undefined : await readVoidMarker(io, voidPath, segment.first);
    const offsets: number[] = [];
    let last: Uint8Array | undefined;
    let damage: TailDamage | undefined;
    let damageAt = 0;
    let validBytes = 0;
    const scanEnd = marker === undefined ? fileSize : Math.min(fileSize, marker.validBytes);
    for await (const item of scanRecords(io, fh, 0, scanEnd, segment.first)) {
      if (item.kind === "damage") {
        damage = item.reason;
        damageAt = item.offset;
        break;
      }
      offsets.push(item.offset);
      validBytes = item.offset + item.size;
      last = item.payload.slice();
    }
    if (marker !== undefined) {
      // Everything before the marker's boundary was acknowledged: it must all be there, intact.
      if (damage !== undefined) throw corrupt(segment.seg, damageAt, `${damage} before the acknowledged end`);
      if (validBytes !== marker.validBytes || segment.first + offsets.length !== marker.nextSeq) {
        throw corrupt(
          voidPath!,
          0,
          `marker says ${marker.nextSeq - segment.first} records in ${marker.validBytes} bytes, ` +
            `segment holds ${offsets.length} in ${validBytes}`,
        );
      }
      if (fileSize > validBytes) damage = "rejected-batch";
    } else if (damage !== undefined) {
      const later = await findLaterRecord(io, fh, damageAt, fileSize, segment.first + offsets.length);
      if (later !== undefined) {
        throw corrupt(
          segment.seg,
          damageAt,
          `${damage}, but a valid record with seq ${later.seq} follows at byte ${later.offset}: ` +
            "acknowledged records are damaged (not a torn tail); refusing to truncate",
        );
      }
    }
    const recovery: StoreRecovery = {
      truncated: damage !== undefined,
      segment: segment.seg,
      validBytes,
      droppedBytes: fileSize - validBytes,
      reason: damage,
    };
    if (damage !== undefined) {
      // A torn tail is the unacknowledged end of the last batch: cut it so appends continue cleanly.
      await io.ftruncate(fh, validBytes);
      await io.fsync(fh);
      emit({ type: "tail-truncated", recovery });
    }
    if (voidPath !== undefined) {
      // Only once the cut is durable; an append may follow right after open.
      await io.unlink(voidPath);
      await io.fsyncDir(segDir);
    }
    segment.count = offsets.length;
    segment.size = validBytes;
    // The last segment's index is always rewritten: it may be behind or ahead of the data after a crash.
    idxFh = await io.open(segment.idx, "w");
    if (offsets.length > 0) await io.write(idxFh, encodeOffsets(offsets), 0);
    if (last === undefined && prev !== undefined)
      last = await readSealed(io, prev, prev.first + prev.count - 1);
    return { active: { segment, fh, idxFh, offsets }, recovery, last };
  } catch (err) {
    await closeQuietly(io, fh, idxFh);
    throw err;
  }
}

/** Byte offset of `seq` in a sealed segment, checked against the record header there. */
async function sealedOffset(io: StoreIo, segment: Segment, seq: number): Promise<number> {
  const k = seq - segment.first;
  const raw = await withRead(io, segment.idx, (h) =>
    readAt(io, h, k * IDX_ENTRY_BYTES, IDX_ENTRY_BYTES),
  ).catch(() => new Uint8Array(0));
  const off = raw.length === IDX_ENTRY_BYTES ? decodeOffset(raw, 0) : -1;
  if (off < 0 || off + RECORD_HEADER_BYTES > segment.size)
    throw corrupt(segment.idx, k * IDX_ENTRY_BYTES, "bad index");
  const head = await withRead(io, segment.seg, (h) => readAt(io, h, off, RECORD_HEADER_BYTES));
  const header = head.length === RECORD_HEADER_BYTES ? parseHeader(head, 0) : undefined;
  if (header?.seq !== seq) throw corrupt(segment.seg, off, "index points at the wrong record");
  return off;
}

/** Reads and checks one record of a sealed segment via its index. */
async function readSealed(io: StoreIo, segment: Segment, seq: number): Promise<Uint8Array> {
  const k = seq - segment.first;
  const last = k === segment.count - 1;
  const raw = await withRead(io, segment.idx, (h) =>
    readAt(io, h, k * IDX_ENTRY_BYTES, last ? IDX_ENTRY_BYTES : 2 * IDX_ENTRY_BYTES),
  ).catch(() => new Uint8Array(0));
  if (raw.length !== (last ? 1 : 2) * IDX_ENTRY_BYTES) {
    throw corrupt(segment.idx, k * IDX_ENTRY_BYTES, "index too short");
  }
  const off = decodeOffset(raw, 0);
  const end = last ? segment.size : decodeOffset(raw, IDX_ENTRY_BYTES);
  if (off < 0 || end > segment.size || end - off < RECORD_HEADER_BYTES) {
    throw corrupt(segment.idx, k * IDX_ENTRY_BYTES, "index offsets out of range");
  }
  const rec = await withRead(io, segment.seg, (h) => readAt(io, h, off, end - off));
  const checked = checkRecord(rec, seq);
  if (typeof checked === "string") throw corrupt(segment.seg, off, checked);
  return checked.slice();
}

/**
 * Strict scan of a sealed segment: any damage is corruption, since sealed
 * segments were fully fsynced before the next one was created.
 */
async function scanSealed(io: StoreIo, segment: Segment): Promise<{ offsets: number[]; size: number }> {
  return withRead(io, segment.seg, async (h) => {
    const size = await io.size(h);
    const offsets: number[] = [];
    for await (const item of scanRecords(io, h, 0, size, segment.first)) {
      if (item.kind === "damage") throw corrupt(segment.seg, item.offset, item.reason);
      offsets.push(item.offset);
    }
    if (offsets.length === 0) throw corrupt(segment.seg, 0, "sealed segment holds no records");
    return { offsets, size };
  });
}

async function readVoidMarker(io: StoreIo, path: string, first: number): Promise<VoidMarker> {
  const bytes = await withRead(io, path, async (h) => readAt(io, h, 0, Math.min(await io.size(h), 4096)));
  const marker = parseVoidMarker(bytes, first);
  if (marker === undefined) throw corrupt(path, 0, "unreadable void marker");
  return marker;
}

/** Durably records that the active segment holds only `m.validBytes` acknowledged bytes. */
async function writeVoidMarker(io: StoreIo, segDir: string, segment: Segment, m: VoidMarker): Promise<void> {
  const path = `${segment.seg}${VOID_SUFFIX}`;
  const tmp = `${path}${TEMP_MARKER}${process.pid}`;
  const h = await io.open(tmp, "w");
  try {
    try {
      await io.write(h, encodeVoidMarker(segment, m), 0);
      await io.fsync(h);
    } finally {
      await io.close(h);
    }
    await io.rename(tmp, path);
  } catch (err) {
    await io.unlink(tmp).catch(() => undefined); // else removed on the next open
    throw err;
  }
  await io.fsyncDir(segDir);
}

async function writeIndex(io: StoreIo, segment: Segment, offsets: readonly number[]): Promise<void> {
  // Rename so a reader never sees a half-written index; no fsync, the index is a cache.
  const tmp = `${segment.idx}${TEMP_MARKER}${process.pid}`;
  const h = await io.open(tmp, "w");
  try {
    await io.write(h, encodeOffsets(offsets), 0);
  } finally {
    await io.close(h);
  }
  await io.rename(tmp, segment.idx);
}

async function rebuildIndex(io: StoreIo, segment: Segment, reason: string, emit: Emit): Promise<void> {
  const { offsets, size } = await scanSealed(io, segment);
  if (offsets.length !== segment.count || size !== segment.size) {
    throw corrupt(segment.seg, size, "segment changed since it was opened");
  }
  await writeIndex(io, segment, offsets);
  emit({ type: "index-rebuilt", segment: segment.seg, reason });
}

/** Sets count and size of a sealed segment, checking it against its index (or fully). */
async function openSealed(
  io: StoreIo,
  segment: Segment,
  verify: "quick" | "full",
  emit: Emit,
): Promise<void> {
  const quick = await quickCheck(io, segment);
  if (verify === "quick" && quick.ok) return;
  const { offsets, size } = await scanSealed(io, segment);
  segment.count = offsets.length;
  segment.size = size;
  if (!quick.ok) {
    await writeIndex(io, segment, offsets);
    emit({ type: "index-rebuilt", segment: segment.seg, reason: quick.reason });
  }
}

async function quickCheck(
  io: StoreIo,
  segment: Segment,
): Promise<{ ok: true } | { ok: false; reason: string }> {
  let idx: { count: number; first: number; last: number } | undefined;
  try {
    idx = await withRead(io, segment.idx, async (h) => {
      const n = await io.size(h);
      if (n === 0 || n % IDX_ENTRY_BYTES !== 0) return undefined;
      const first = await readAt(io, h, 0, IDX_ENTRY_BYTES);
      const last = await readAt(io, h, n - IDX_ENTRY_BYTES, IDX_ENTRY_BYTES);
      if (first.length !== IDX_ENTRY_BYTES || last.length !== IDX_ENTRY_BYTES) return undefined;
      return { count: n / IDX_ENTRY_BYTES, first: decodeOffset(first, 0), last: decodeOffset(last, 0) };
    });
  } catch (err) {
    if (errCode(err) === "ENOENT") return { ok: false, reason: "index missing" };
    throw err;
  }
  if (idx === undefined) return { ok: false, reason: "index empty or not a whole number of entries" };
  if (idx.first !== 0) return { ok: false, reason: "index does not start at 0" };
  const { count, last } = idx;

  return withRead(io, segment.seg, async (h) => {
    const size = await io.size(h);
    if (last < 0 || last + RECORD_HEADER_BYTES > size) return { ok: false, reason: "index beyond segment" };
    const head0 = parseHeader(await readAt(io, h, 0, RECORD_HEADER_BYTES), 0);
    if (head0?.seq !== segment.first) return { ok: false, reason: "first record does not match" };
    const lastHead = parseHeader(await readAt(io, h, last, RECORD_HEADER_BYTES), 0);
    if (lastHead === undefined || last + RECORD_HEADER_BYTES + lastHead.length !== size) {
      return { ok: false, reason: "last index entry does not end the segment" };
    }
    const checked = checkRecord(await readAt(io, h, last, size - last), segment.first + count - 1);
    if (typeof checked === "string") return { ok: false, reason: `last record: ${checked}` };
    segment.count = count;
    segment.size = size;
    return { ok: true };
  });
}
