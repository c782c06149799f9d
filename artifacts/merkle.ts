/**
 * RFC 9162 section 2 Merkle tree hashing, proofs and proof verification.
 *
 * Sizes and indices cross the API as `number` (a safe non-negative integer)
 * or `bigint`. Verification runs on bigint so that logs past 2^32 (or 2^53)
 * leaves are handled exactly; nothing here uses 32-bit `>>`/`&` on sizes.
 *
 * Verification limits: sizes and indices at most 2^64-1 (RFC 9162 uses
 * uint64), hashes exactly 32 bytes, at most 64 hashes in an inclusion proof
 * and 128 in a consistency proof (more cannot be valid for a uint64 tree).
 */
import { bytesEqual } from "./encoding.js";
import { CmcpError } from "./errors.js";
import { sha256 } from "./hash.js";

export const HASH_SIZE = 32;

const LEAF_PREFIX = Uint8Array.of(0x00);
const NODE_PREFIX = Uint8Array.of(0x01);
const MAX_TREE_SIZE = (1n << 64n) - 1n;
const MAX_INCLUSION_PROOF = 64;
const MAX_CONSISTENCY_PROOF = 128;

export type TreeSize = number | bigint;

export type MerkleResult = { ok: true } | { ok: false; code: string; reason: string };

/** SHA-256(0x00 ‖ entry). */
export function leafHash(entry: Uint8Array): Uint8Array {
  return sha256(LEAF_PREFIX, entry);
}

/** SHA-256(0x01 ‖ left ‖ right); both children must be 32-byte hashes. */
export function nodeHash(left: Uint8Array, right: Uint8Array): Uint8Array {
  if (left.length !== HASH_SIZE || right.length !== HASH_SIZE) {
    throw new CmcpError("merkle.hash_size", "Merkle node children must be 32-byte hashes");
  }
  return sha256(NODE_PREFIX, left, right);
}

/** Root of the empty tree: SHA-256 of the empty string. */
export function emptyRoot(): Uint8Array {
  return sha256();
}

function fail(code: string, reason: string): MerkleResult {
  return { ok: false, code, reason };
}

/** Parses a size or index; undefined when it is not a uint64 value. */
function toUint64(value: unknown): bigint | undefined {
  if (typeof value === "bigint") return value >= 0n && value <= MAX_TREE_SIZE ? value : undefined;
  if (typeof value === "number" && Number.isSafeInteger(value) && value >= 0) return BigInt(value);
  return undefined;
}

function isHash(value: unknown): value is Uint8Array {
  return value instanceof Uint8Array && value.length === HASH_SIZE;
}

/** Checks the proof is an array of 32-byte hashes no longer than `max`; returns a failure or undefined. */
function checkProofArray(proof: unknown, max: number): MerkleResult | undefined {
  if (!Array.isArray(proof)) return fail("merkle.proof_type", "proof must be an array of hashes");
  if (proof.length > max) {
    return fail("merkle.proof_length", `proof has ${proof.length} hashes, more than ${max}`);
  }
  for (let i = 0; i < proof.length; i++) {
    if (!isHash(proof[i])) return fail("merkle.hash_size", `proof hash ${i} is not a 32-byte hash`);
  }
  return undefined;
}

function bitLength(x: bigint): number {
  return x === 0n ? 0 : x.toString(2).length;
}

function popCount(x: bigint): number {
  let n = 0;
  for (const c of x.toString(2)) if (c === "1") n++;
  return n;
}

function trailingZeros(x: bigint): number {
  let n = 0;
  while (x > 0n && (x & 1n) === 0n) {
    x >>= 1n;
    n++;
  }
  return n;
}

/**
 * Number of hashes in an inclusion path for `index` in a tree of `size`:
 * siblings below the point where the paths to `index` and `size-1` diverge
 * ("inner"), plus one per left-hand perfect subtree above it ("border").
 */
function inclusionProofLength(index: bigint, size: bigint): { inner: number; border: number } {
  const inner = bitLength(index ^ (size - 1n));
  const border = popCount(index >> BigInt(inner));
  return { inner, border };
}

export interface InclusionInput {
  index: TreeSize;
  size: TreeSize;
  leafHash: Uint8Array;
  proof: readonly Uint8Array[];
  root: Uint8Array;
}

/** Runs a verifier so that hostile input (not an object, throwing getters) yields a failed result. */
function guarded<T extends object>(what: string, input: T, verify: (input: T) => MerkleResult): MerkleResult {
  if (typeof input !== "object" || input === null) {
    return fail("merkle.invalid_input", "input must be an object");
  }
  try {
    return verify(input);
  } catch (err) {
    return fail("merkle.invalid_input", `${what} input could not be read: ${String(err)}`);
  }
}

/** RFC 9162 section 2.1.3.2. Never throws: hostile input yields a failed result. */
export function verifyInclusion(input: InclusionInput): MerkleResult {
  return guarded("inclusion", input, verifyInclusionUnsafe);
}

function verifyInclusionUnsafe(input: InclusionInput): MerkleResult {
  const index = toUint64(input.index);
  if (index === undefined) {
    return fail("merkle.invalid_index", "index must be a non-negative integer below 2^64");
  }
  const size = toUint64(input.size);
  if (size === undefined) {
    return fail("merkle.invalid_size", "tree size must be a non-negative integer below 2^64");
  }
  if (!isHash(input.leafHash)) return fail("merkle.hash_size", "leaf hash is not a 32-byte hash");
  if (!isHash(input.root)) return fail("merkle.hash_size", "root hash is not a 32-byte hash");
  const bad = checkProofArray(input.proof, MAX_INCLUSION_PROOF);
  if (bad) return bad;
  const proof = input.proof;
  if (index >= size) return fail("merkle.index_range", `index ${index} is not below tree size ${size}`);

  const { inner, border } = inclusionProofLength(index, size);
  if (proof.length !== inner + border) {
    return fail("merkle.proof_length", `proof has ${proof.length} hashes, expected ${inner + border}`);
  }

  let fn = index;
  let sn = size - 1n;
  let r = input.leafHash;
  for (const p of proof) {
    if (sn === 0n) return fail("merkle.proof_length", "proof has more hashes than the tree has levels");
    if ((fn & 1n) === 1n || fn === sn) {
      r = nodeHash(p, r);
      while ((fn & 1n) === 0n && fn !== 0n) {
        fn >>= 1n;
        sn >>= 1n;
      }
    } else {
      r = nodeHash(r, p);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n) return fail("merkle.proof_length", "proof has fewer hashes than the tree has levels");
  if (!bytesEqual(r, input.root)) return fail("merkle.root_mismatch", "proof does not lead to the root hash");
  return { ok: true };
}

export interface ConsistencyInput {
  oldSize: TreeSize;
  newSize: TreeSize;
  oldRoot: Uint8Array;
  newRoot: Uint8Array;
  proof: readonly Uint8Array[];
}

/** RFC 9162 section 2.1.4.2. Never throws: hostile input yields a failed result. */
export function verifyConsistency(input: ConsistencyInput): MerkleResult {
  return guarded("consistency", input, verifyConsistencyUnsafe);
}

function verifyConsistencyUnsafe(input: ConsistencyInput): MerkleResult {
  const oldSize = toUint64(input.oldSize);
  const newSize = toUint64(input.newSize);
  if (oldSize === undefined || newSize === undefined) {
    return fail("merkle.invalid_size", "tree sizes must be non-negative integers below 2^64");
  }
  if (!isHash(input.oldRoot)) return fail("merkle.hash_size", "old root is not a 32-byte hash");
  if (!isHash(input.newRoot)) return fail("merkle.hash_size", "new root is not a 32-byte hash");
  const bad = checkProofArray(input.proof, MAX_CONSISTENCY_PROOF);
  if (bad) return bad;
  const proof = input.proof;
  if (oldSize > newSize) {
    return fail("merkle.size_order", `old size ${oldSize} is larger than new size ${newSize}`);
  }
  // Before the equal-size shortcut: an empty old tree proves nothing, even against itself.
  if (oldSize === 0n) {
    return fail("merkle.empty_tree", "a consistency proof from the empty tree is meaningless");
  }
  if (oldSize === newSize) {
    if (proof.length !== 0) return fail("merkle.proof_length", "equal sizes need an empty proof");
    if (!bytesEqual(input.oldRoot, input.newRoot)) {
      return fail("merkle.root_mismatch", "equal sizes but different root hashes");
    }
    return { ok: true };
  }

  // The old tree's last leaf path, minus the levels inside the old tree's
  // rightmost perfect subtree (whose root is either old root or proof[0]).
  const { inner, border } = inclusionProofLength(oldSize - 1n, newSize);
  const shift = trailingZeros(oldSize);
  const oldIsPerfect = oldSize === 1n << BigInt(shift);
  const expected = (oldIsPerfect ? 0 : 1) + (inner - shift) + border;
  if (proof.length !== expected) {
    return fail("merkle.proof_length", `proof has ${proof.length} hashes, expected ${expected}`);
  }

  const path = oldIsPerfect ? [input.oldRoot, ...proof] : [...proof];
  let fn = oldSize - 1n;
  let sn = newSize - 1n;
  while ((fn & 1n) === 1n) {
    fn >>= 1n;
    sn >>= 1n;
  }
  const first = path[0];
  if (first === undefined) return fail("merkle.proof_length", "proof is empty");
  let fr = first;
  let sr = first;
  for (let i = 1; i < path.length; i++) {
    const c = path[i]!;
    if (sn === 0n) return fail("merkle.proof_length", "proof has more hashes than the tree has levels");
    if ((fn & 1n) === 1n || fn === sn) {
      fr = nodeHash(c, fr);
      sr = nodeHash(c, sr);
      while ((fn & 1n) === 0n && fn !== 0n) {
        fn >>= 1n;
        sn >>= 1n;
      }
    } else {
      sr = nodeHash(sr, c);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n) return fail("merkle.proof_length", "proof has fewer hashes than the tree has levels");
  if (!bytesEqual(fr, input.oldRoot)) {
    return fail("merkle.root_mismatch", "proof does not lead to the old root");
  }
  if (!bytesEqual(sr, input.newRoot)) {
    return fail("merkle.root_mismatch", "proof does not lead to the new root");
  }
  return { ok: true };
}

/** Largest power of two strictly below n (n >= 2). Plain arithmetic, valid to 2^53. */
function splitPoint(n: number): number {
  let k = 1;
  while (k * 2 < n) k *= 2;
  return k;
}

function checkLeafHash(hash: Uint8Array): void {
  if (!(hash instanceof Uint8Array) || hash.length !== HASH_SIZE) {
    throw new CmcpError("merkle.hash_size", "leaf hashes must be 32 bytes");
  }
}

/**
 * In-memory tree over leaf hashes. `levels[k][i]` caches the root of the
 * perfect subtree of 2^k leaves starting at leaf i·2^k, so any subtree the
 * RFC 9162 recursion visits is a fold over at most log n cached nodes, and
 * root, inclusion and consistency queries for any prefix size cost O(log n)
 * hashes.
 */
export class MerkleTree {
  readonly #levels: Uint8Array[][] = [[]];

  constructor(leafHashes: readonly Uint8Array[] = []) {
    for (const h of leafHashes) this.append(h);
  }

  get size(): number {
    return this.#levels[0]!.length;
  }

  append(hash: Uint8Array): void {
    checkLeafHash(hash);
    let node = hash;
    for (let k = 0; ; k++) {
      let level = this.#levels[k];
      if (!level) {
        level = [];
        this.#levels.push(level);
      }
      level.push(node);
      const i = level.length - 1;
      if (i % 2 === 0) return;
      node = nodeHash(level[i - 1]!, node);
    }
  }

  /** Leaf hash at `index`. */
  leaf(index: TreeSize): Uint8Array {
    const i = this.#toCount(index, "index");
    const h = this.#levels[0]![i];
    if (!h) throw new CmcpError("merkle.index_range", `index ${i} is not below tree size ${this.size}`);
    return h;
  }

  root(size?: TreeSize): Uint8Array {
    const n = size === undefined ? this.size : this.#toCount(size, "size");
    if (n > this.size) throw new CmcpError("merkle.size_range", `size ${n} exceeds tree size ${this.size}`);
    return n === 0 ? emptyRoot() : this.#rangeHash(0, n);
  }

  /** RFC 9162 PATH(index, D[0:size]), leaf sibling first. */
  inclusionProof(index: TreeSize, size?: TreeSize): Uint8Array[] {
    const n = size === undefined ? this.size : this.#toCount(size, "size");
    if (n > this.size) throw new CmcpError("merkle.size_range", `size ${n} exceeds tree size ${this.size}`);
    let m = this.#toCount(index, "index");
    if (m >= n) throw new CmcpError("merkle.index_range", `index ${m} is not below tree size ${n}`);
    const out: Uint8Array[] = [];
    let base = 0;
    let len = n;
    while (len > 1) {
      const k = splitPoint(len);
      if (m < k) {
        out.push(this.#rangeHash(base + k, base + len));
        len = k;
      } else {
        out.push(this.#rangeHash(base, base + k));
        base += k;
        m -= k;
        len -= k;
      }
    }
    return out.reverse();
  }

  /** RFC 9162 PROOF(oldSize, D[0:newSize]); oldSize must be at least 1. */
  consistencyProof(oldSize: TreeSize, newSize?: TreeSize): Uint8Array[] {
    const n = newSize === undefined ? this.size : this.#toCount(newSize, "size");
    let m = this.#toCount(oldSize, "size");
    if (n > this.size) throw new CmcpError("merkle.size_range", `size ${n} exceeds tree size ${this.size}`);
    if (m > n) throw new CmcpError("merkle.size_order", `old size ${m} is larger than new size ${n}`);
    if (m === 0) throw new CmcpError("merkle.empty_tree", "no consistency proof from the empty tree");
    const out: Uint8Array[] = [];
    let base = 0;
    let len = n;
    let complete = true;
    while (m !== len) {
      const k = splitPoint(len);
      if (m <= k) {
        out.push(this.#rangeHash(base + k, base + len));
        len = k;
      } else {
        out.push(this.#rangeHash(base, base + k));
        base += k;
        m -= k;
        len -= k;
        complete = false;
      }
    }
    if (!complete) out.push(this.#rangeHash(base, base + len));
    return out.reverse();
  }

  #toCount(value: TreeSize, what: string): number {
    if (typeof value === "bigint") {
      if (value < 0n || value > BigInt(Number.MAX_SAFE_INTEGER)) {
        throw new CmcpError(`merkle.invalid_${what}`, `${what} is out of range`);
      }
      return Number(value);
    }
    if (!Number.isSafeInteger(value) || value < 0) {
      throw new CmcpError(`merkle.invalid_${what}`, `${what} must be a non-negative safe integer`);
    }
    return value;
  }

  /**
   * MTH(D[start:end]) for a range the RFC recursion produces: `start` is a
   * multiple of every power of two in the decomposition of end-start, so each
   * perfect chunk is a cached node and the result is their right fold.
   */
  #rangeHash(start: number, end: number): Uint8Array {
    const chunks: Uint8Array[] = [];
    let pos = start;
    let remaining = end - start;
    let level = 0;
    let width = 1;
    while (width * 2 <= remaining) {
      width *= 2;
      level++;
    }
    while (remaining > 0) {
      if (width <= remaining) {
        chunks.push(this.#levels[level]![pos / width]!);
        pos += width;
        remaining -= width;
      }
      width /= 2;
      level--;
    }
    let r = chunks.pop()!;
    while (chunks.length > 0) r = nodeHash(chunks.pop()!, r);
    return r;
  }
}

/**
 * Streaming tree head: a stack of perfect-subtree roots (the compact range
 * [0, size)), so memory is O(log n) and each append costs amortised O(1)
 * hashes. Heights strictly decrease from bottom to top of the stack.
 */
export class MerkleAccumulator {
  readonly #heights: number[] = [];
  readonly #hashes: Uint8Array[] = [];
  #size = 0;

  get size(): number {
    return this.#size;
  }

  append(hash: Uint8Array): void {
    checkLeafHash(hash);
    let node = hash;
    let height = 0;
    while (this.#heights.length > 0 && this.#heights[this.#heights.length - 1] === height) {
      this.#heights.pop();
      node = nodeHash(this.#hashes.pop()!, node);
      height++;
    }
    this.#heights.push(height);
    this.#hashes.push(node);
    this.#size++;
  }

  root(): Uint8Array {
    if (this.#hashes.length === 0) return emptyRoot();
    let r = this.#hashes[this.#hashes.length - 1]!;
    for (let i = this.#hashes.length - 2; i >= 0; i--) r = nodeHash(this.#hashes[i]!, r);
    return r;
  }
}
