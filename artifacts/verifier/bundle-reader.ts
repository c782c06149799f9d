/**
 * Streaming reader for evidence bundles. It finds the byte spans of the
 * top-level members and of each element of `receipts` without building the
 * whole document, so a bundle of hundreds of MB is read in bounded memory and
 * garbage is rejected at its first bad byte. Each span is later parsed by the
 * strict JSON parser; this scanner only delimits.
 *
 * Limits: a member other than `receipts` at most 64 MiB and all of them
 * together at most 128 MiB; one receipt at most 1 MiB; nesting at most 64.
 */
import { open } from "node:fs/promises";
import { CmcpError } from "../errors.js";

export const BUNDLE_LIMITS = {
  maxMemberBytes: 64 * 1024 * 1024,
  maxHeaderBytes: 128 * 1024 * 1024,
  maxReceiptBytes: 1024 * 1024,
  maxDepth: 64,
  maxKeyBytes: 256,
  chunkBytes: 1024 * 1024,
};

export type BundleLimits = typeof BUNDLE_LIMITS;

export interface ScanHandlers {
  /** A top-level member other than `receipts`, as raw JSON bytes; without it, values are not copied out. */
  member?(key: string, value: Buffer): void;
  /** One element of `receipts`, as raw JSON bytes; may apply backpressure. */
  receipt?(value: Buffer, index: number): void | Promise<void>;
  /** When false, receipt elements are delimited but not copied out. */
  wantReceipts: boolean;
  /**
   * Called when `receipts` begins, with the members seen so far; returning
   * true ends the scan there (the caller reads the rest in a later pass).
   */
  stopAtReceipts?(seen: ReadonlySet<string>): boolean;
  /** When given, any other top-level member name is rejected before its value is read. */
  allowedMembers?: ReadonlySet<string>;
}

const WS = new Uint8Array(256);
for (const c of [0x20, 0x09, 0x0a, 0x0d]) WS[c] = 1;

const enum State {
  Start,
  KeyOrEnd,
  Key,
  Colon,
  Value,
  AfterValue,
  ReceiptsOpen,
  ReceiptOrEnd,
  ReceiptElement,
  AfterReceipt,
  Done,
}

function fail(message: string, offset: number): never {
  throw new CmcpError("bundle.syntax", `${message} at byte ${offset}`, { offset });
}

/**
 * Scans a bundle file. Throws CmcpError `bundle.syntax` / `bundle.too-large`
 * (or `bundle.io`) on anything that is not a well-delimited JSON object.
 */
export async function scanBundle(
  source: string | Uint8Array,
  handlers: ScanHandlers,
  limits: BundleLimits = BUNDLE_LIMITS,
): Promise<{ receipts: number; bytes: number; hasReceipts: boolean; stoppedAtReceipts: boolean }> {
  const input = await openSource(source);
  const seenKeys = new Set<string>();
  let state = State.Start;
  let offset = 0; // absolute offset of buf[0]
  let headerBytes = 0;
  let receiptCount = 0;
  // Value/element capture state.
  let capture: Buffer[] = [];
  let captureBytes = 0;
  let captureLimit = 0;
  let depth = 0;
  let inString = false;
  let escaped = false;
  let scalar = false;
  let keyBytes: number[] = [];
  let keyEscaped = false;
  let currentKey = "";
  const buf = Buffer.allocUnsafe(limits.chunkBytes);
  try {
    for (;;) {
      const bytesRead = await input.read(buf);
      if (bytesRead === 0) break;
      const chunk = buf.subarray(0, bytesRead);
      let i = 0;
      let captureStart = -1;
      let nextBackslash = -1;
      const flushCapture = (end: number) => {
        if (captureStart < 0) return;
        const part = chunk.subarray(captureStart, end);
        captureBytes += part.length;
        if (captureBytes > captureLimit) {
          const what = state === State.ReceiptElement ? "a receipt" : `member "${currentKey}"`;
          throw new CmcpError(
            "bundle.too-large",
            `${what} exceeds ${captureLimit} bytes (ends after byte ${offset + end})`,
          );
        }
        // Values no handler will see are delimited and counted against their limit, but not copied.
        if (state === State.ReceiptElement ? handlers.wantReceipts : handlers.member !== undefined) {
          capture.push(Buffer.from(part));
        }
        captureStart = -1;
      };
      while (i < bytesRead) {
        const c = chunk[i]!;
        switch (state) {
          case State.Start:
            if (WS[c]) break;
            if (c !== 0x7b) fail("bundle must be a JSON object", offset + i);
            state = State.KeyOrEnd;
            break;
          case State.AfterValue:
            if (WS[c]) break;
            if (c === 0x7d) state = State.Done;
            else if (c === 0x2c) state = State.KeyOrEnd;
            else fail("expected ',' or '}' after a member", offset + i);
            break;
          case State.KeyOrEnd:
            if (WS[c]) break;
            if (c === 0x7d && seenKeys.size === 0) {
              state = State.Done;
              break;
            }
            if (c !== 0x22) fail("expected a member name", offset + i);
            keyBytes = [];
            keyEscaped = false;
            state = State.Key;
            break;
          case State.Key:
            if (keyEscaped) {
              keyEscaped = false;
              keyBytes.push(c);
            } else if (c === 0x5c) {
              keyEscaped = true;
              keyBytes.push(c);
            } else if (c === 0x22) {
              let key: unknown;
              try {
                key = JSON.parse(`"${Buffer.from(keyBytes).toString("utf8")}"`);
              } catch {
                fail("malformed member name", offset + i);
              }
              currentKey = key as string;
              if (seenKeys.has(currentKey)) fail(`duplicate member "${currentKey}"`, offset + i);
              if (handlers.allowedMembers && !handlers.allowedMembers.has(currentKey)) {
                fail(`unknown member "${currentKey.slice(0, 64)}"`, offset + i);
              }
              seenKeys.add(currentKey);
              state = State.Colon;
            } else {
              if (c < 0x20) fail("control character in member name", offset + i);
              keyBytes.push(c);
              if (keyBytes.length > limits.maxKeyBytes) fail("member name too long", offset + i);
            }
            break;
          case State.Colon:
            if (WS[c]) break;
            if (c !== 0x3a) fail("expected ':'", offset + i);
            if (currentKey === "receipts" && handlers.stopAtReceipts?.(seenKeys)) {
              return { receipts: 0, bytes: offset + i, hasReceipts: true, stoppedAtReceipts: true };
            }
            state = currentKey === "receipts" ? State.ReceiptsOpen : State.Value;
            capture = [];
            captureBytes = 0;
            captureLimit = Math.min(limits.maxMemberBytes, limits.maxHeaderBytes - headerBytes);
            depth = 0;
            inString = false;
            escaped = false;
            scalar = false;
            break;
          case State.ReceiptsOpen:
            if (WS[c]) break;
            if (c !== 0x5b) fail('"receipts" must be an array', offset + i);
            state = State.ReceiptOrEnd;
            break;
          case State.ReceiptOrEnd:
          case State.AfterReceipt:
            if (WS[c]) break;
            if (c === 0x5d) {
              if (state === State.ReceiptOrEnd && receiptCount > 0)
                fail("expected a receipt after ','", offset + i);
              state = State.AfterValue;
              break;
            }
            if (state === State.AfterReceipt) {
              if (c !== 0x2c) fail("expected ',' or ']' after a receipt", offset + i);
              state = State.ReceiptOrEnd;
              break;
            }
            if (c !== 0x7b) fail(`receipt ${receiptCount} is not a JSON object`, offset + i);
            state = State.ReceiptElement;
            capture = [];
            captureBytes = 0;
            captureLimit = limits.maxReceiptBytes;
            depth = 0;
            inString = false;
            escaped = false;
            captureStart = i;
            i--; // re-read '{' inside the element scanner
            break;
          case State.ReceiptElement:
          case State.Value: {
            if (captureStart < 0) captureStart = i;
            if (state === State.Value && depth === 0 && !inString && !scalar) {
              if (WS[c] && captureBytes === 0 && captureStart === i) {
                captureStart = -1;
                break;
              }
              if (c !== 0x7b && c !== 0x5b && c !== 0x22) scalar = true;
            }
            if (scalar) {
              if (WS[c] || c === 0x2c || c === 0x7d) {
                flushCapture(i);
                headerBytes += captureBytes;
                handlers.member?.(currentKey, Buffer.concat(capture));
                state = State.AfterValue;
                continue; // re-read the delimiter
              }
              break;
            }
            if (inString) {
              if (escaped) escaped = false;
              else if (c === 0x5c) escaped = true;
              else if (c === 0x22) inString = false;
              else {
                // Ordinary string bytes: jump natively to the next quote or backslash in this chunk.
                if (nextBackslash <= i) {
                  nextBackslash = chunk.indexOf(0x5c, i);
                  if (nextBackslash < 0) nextBackslash = bytesRead;
                }
                let quote = chunk.indexOf(0x22, i);
                if (quote < 0) quote = bytesRead;
                i = Math.min(quote, nextBackslash);
                continue;
              }
              if (!inString && depth === 0) {
                // A top-level string value ends here.
                flushCapture(i + 1);
                headerBytes += captureBytes;
                handlers.member?.(currentKey, Buffer.concat(capture));
                state = State.AfterValue;
              }
              break;
            }
            if (c === 0x22) inString = true;
            else if (c === 0x7b || c === 0x5b) {
              if (++depth > limits.maxDepth) fail(`nesting deeper than ${limits.maxDepth}`, offset + i);
            } else if (c === 0x7d || c === 0x5d) {
              if (--depth < 0) fail("unbalanced brackets", offset + i);
              if (depth === 0) {
                flushCapture(i + 1);
                if (state === State.ReceiptElement) {
                  const index = receiptCount++;
                  if (handlers.wantReceipts && handlers.receipt) {
                    const p = handlers.receipt(Buffer.concat(capture), index);
                    if (p) await p;
                  }
                  state = State.AfterReceipt;
                } else {
                  headerBytes += captureBytes;
                  handlers.member?.(currentKey, Buffer.concat(capture));
                  state = State.AfterValue;
                }
              }
            }
            break;
          }
          case State.Done:
            if (!WS[c]) fail("data after the end of the bundle", offset + i);
            break;
        }
        i++;
      }
      if (state === State.Value || state === State.ReceiptElement) flushCapture(bytesRead);
      offset += bytesRead;
    }
  } finally {
    await input.close();
  }
  if ((state as State) !== State.Done) fail("bundle is truncated", offset);
  return {
    receipts: receiptCount,
    bytes: offset,
    hasReceipts: seenKeys.has("receipts"),
    stoppedAtReceipts: false,
  };
}

interface ByteSource {
  read(into: Buffer): Promise<number>;
  close(): Promise<void>;
}

/** A file path is streamed; bytes already in memory are read in place. */
async function openSource(source: string | Uint8Array): Promise<ByteSource> {
  if (typeof source !== "string") {
    let pos = 0;
    return {
      async read(into) {
        const n = Math.min(into.length, source.length - pos);
        into.set(source.subarray(pos, pos + n));
        pos += n;
        return n;
      },
      async close() {},
    };
  }
  try {
    const fh = await open(source, "r");
    return {
      read: async (into) => (await fh.read(into, 0, into.length, null)).bytesRead,
      close: () => fh.close(),
    };
  } catch (err) {
    throw new CmcpError("bundle.io", `cannot open ${source}: ${(err as NodeJS.ErrnoException).code ?? err}`);
  }
}
