// The link of one transaction in the hash chain (docs/FAILOVER.md):
// link(n) = sha256(link(n-1) || tid || content of transaction n), computed
// from the transaction's content (chainLink), straight from its stored bytes
// (linkOfStored), or for a whole run of stored transactions (linksOfRun, as
// a secondary checks a raw run). Pure but for contentAt/linkAt, which read
// the storage.

import { createHash, hash } from 'node:crypto';
import type { FileStorage } from '../storage/FileStorage.js';
import { DATA_HEADER_BYTES, TRAILER_BYTES, TXN_HEADER_BYTES, dataRecordLength, readTxnHeader, readU64At, recordsStart, u16At, writeU64At } from '../storage/format.js';

/** Bytes of one link (sha256). */
export const LINK_BYTES = 32;
/** The link before the first transaction. */
export const CHAIN_ORIGIN: Buffer = Buffer.alloc(LINK_BYTES);

/** What a link covers: the transaction's content, with record data resolved. */
export interface ChainContent {
  tid: Buffer;
  user: Buffer;
  description: Buffer;
  extensionBytes: Buffer;
  records: ReadonlyArray<{ oid: Buffer; data: Buffer | null }>;
}

/**
 * sha256 of `bytes`, as a Buffer. Taken as a 'binary' (latin1) string and turned into a
 * Buffer: that Buffer is a slice of Node's shared pool, where the 'buffer'
 * output allocates an ArrayBuffer of its own for each 32 bytes, about a
 * microsecond more per link and one more object for the collector to track.
 */
export const sha256 = (bytes: Buffer): Buffer => Buffer.from(hash('sha256', bytes, 'binary'), 'binary');

/** Scratch space for the bytes a link hashes, grown as needed and reused (links are computed one at a time). */
let scratch = Buffer.allocUnsafe(64 * 1024);

/**
 * The link after `prev` for one transaction: sha256 over prev, tid, then each
 * of user, description and extension as (u64 length, bytes), the record
 * count (u64), and per record its oid and either 0x00 (no data) or 0x01,
 * u64 length and the data. Hashed as one contiguous buffer.
 */
export function chainLink(prev: Buffer, t: ChainContent): Buffer {
  let size = prev.length + t.tid.length + 3 * 8 + t.user.length + t.description.length + t.extensionBytes.length + 8;
  for (const r of t.records) size += r.oid.length + 1 + (r.data === null ? 0 : 8 + r.data.length);
  if (size > scratch.length) scratch = Buffer.allocUnsafe(Math.max(size, scratch.length * 2));
  const out = scratch;
  let off = prev.copy(out, 0);
  off += t.tid.copy(out, off);
  for (const part of [t.user, t.description, t.extensionBytes]) {
    off = putU64(out, off, part.length);
    off += part.copy(out, off);
  }
  off = putU64(out, off, t.records.length);
  for (const r of t.records) {
    off += r.oid.copy(out, off);
    if (r.data === null) out[off++] = 0;
    else {
      out[off++] = 1;
      off = putU64(out, off, r.data.length);
      off += r.data.copy(out, off);
    }
  }
  return sha256(out.subarray(0, off));
}

/**
 * chainLink for a transaction given as its stored bytes (header to records,
 * at least), copied straight from them; null when a record is a backpointer
 * (its data lives elsewhere: use contentAt), or when the bytes do not hold
 * the metadata and records their header announces.
 */
export function linkOfStored(prev: Buffer, body: Buffer): Buffer | null {
  const length = readU64At(body, 8);
  if (length > body.length || length < TXN_HEADER_BYTES) return null;
  const link = storedLink(prev.toString('binary'), body, 0, length);
  return link === null ? null : Buffer.from(link, 'binary');
}

/**
 * linkOfStored for the transaction at `src[start, start + length)`, `length`
 * being its header's, at least TXN_HEADER_BYTES and within `src`. The link
 * is returned, and `prev` taken, as a 32-character 'binary' (latin1)
 * string: a run's links are computed one after another without a Buffer
 * each (see linksOfRun). Always a string: a second path, taken once per
 * run, had no type feedback when the code was first optimized, and cost
 * the new secondary a deoptimization and a second compilation.
 */
function storedLink(prev: string, src: Buffer, start: number, length: number): string | null {
  const end = start + length;
  const recordsAt = recordsStart(src, start);
  if (recordsAt > end) return null;
  let count = 0;
  let largest = 0;
  for (let pos = recordsAt; pos < end; count++) {
    if (pos + DATA_HEADER_BYTES > end) return null;
    const plen = readU64At(src, pos + 34);
    if (plen === 0 || pos + DATA_HEADER_BYTES + plen > end) return null;
    if (plen > largest) largest = plen;
    pos += DATA_HEADER_BYTES + plen;
  }
  // Hashed, a record takes 25 bytes less than stored and the header 17 more, so this always fits
  // (with large data: the header and one record's head or small data at a time).
  const need = LINK_BYTES + 64 + (largest < DIRECT_DATA_BYTES ? length : recordsAt - start + DIRECT_DATA_BYTES);
  if (need > scratch.length) scratch = Buffer.allocUnsafe(Math.max(need, scratch.length * 2));
  const out = scratch;
  out.write(prev, 0, LINK_BYTES, 'binary');
  let off = copyBytes(src, start, start + 8, out, LINK_BYTES);
  let pos = start + TXN_HEADER_BYTES;
  for (let field = 0; field < 3; field++) {
    const len = u16At(src, start + 17 + 2 * field); // user, description, extension lengths
    off = putU64(out, off, len);
    off = copyBytes(src, pos, pos + len, out, off);
    pos += len;
  }
  off = putU64(out, off, count);
  if (largest >= DIRECT_DATA_BYTES) return linkWithLargeData(out, off, src, recordsAt, end);
  // A hashed record is its oid, 0x01, then its length and data, which lie
  // together at the end of the stored record: the records are copied in one
  // go and moved down in place, record by record (never over bytes unread).
  out.set(src.subarray(recordsAt, end), off);
  const stop = off + end - recordsAt;
  for (let r = off; r < stop; ) {
    const plen = readU64At(out, r + 34);
    for (let i = 0; i < 8; i++) out[off + i] = out[r + i]!;
    out[off + 8] = 1;
    out.copyWithin(off + 9, r + 34, r + DATA_HEADER_BYTES + plen);
    off += 17 + plen;
    r += DATA_HEADER_BYTES + plen;
  }
  return hash('sha256', out.subarray(0, off), 'binary');
}

/** storedLink's tail when some record data is large: such data is hashed where it lies instead of through a copy. */
function linkWithLargeData(out: Buffer, headerBytes: number, src: Buffer, recordsAt: number, end: number): string {
  const hasher = createHash('sha256');
  let off = headerBytes;
  for (let pos = recordsAt; pos < end; ) {
    const plen = readU64At(src, pos + 34);
    if (off + 17 + Math.min(plen, DIRECT_DATA_BYTES) > out.length) {
      hasher.update(out.subarray(0, off));
      off = 0;
    }
    off = copyBytes(src, pos, pos + 8, out, off);
    out[off++] = 1;
    off = putU64(out, off, plen);
    const data = pos + DATA_HEADER_BYTES;
    if (plen >= DIRECT_DATA_BYTES) {
      hasher.update(out.subarray(0, off)).update(src.subarray(data, data + plen));
      off = 0;
    } else off = copyBytes(src, data, data + plen, out, off);
    pos = data + plen;
  }
  return hasher.update(out.subarray(0, off)).digest('binary');
}

/**
 * The links of a run of transactions, kept flat (transaction i's tid at
 * `tids[8i]`, its link at `links[32i]`): a run of hundreds of transactions
 * costs three Buffers, not objects per transaction.
 */
export class RunLinks {
  constructor(
    /** The link the run's first transaction follows. */
    readonly prevLink: Buffer,
    readonly tids: Buffer,
    readonly links: Buffer,
  ) {}

  /** The run of `entries` in order, the first following `prevLink`. */
  static of(prevLink: Buffer, entries: ReadonlyArray<{ tid: Buffer; link: Buffer }>): RunLinks {
    return new RunLinks(prevLink, Buffer.concat(entries.map((e) => e.tid)), Buffer.concat(entries.map((e) => e.link)));
  }

  get count(): number {
    return this.tids.length / 8;
  }

  tid(i: number): Buffer {
    return this.tids.subarray(8 * i, 8 * i + 8);
  }

  link(i: number): Buffer {
    return this.links.subarray(LINK_BYTES * i, LINK_BYTES * (i + 1));
  }

  /** Each transaction's tid and link, as views. */
  entries(): Array<{ tid: Buffer; link: Buffer }> {
    return Array.from({ length: this.count }, (_, i) => ({ tid: this.tid(i), link: this.link(i) }));
  }

  /** Whether transaction i's link was computed after `prev`. */
  follows(i: number, prev: Buffer): boolean {
    return i === 0 ? this.prevLink.equals(prev) : this.links.compare(prev, 0, LINK_BYTES, LINK_BYTES * (i - 1), LINK_BYTES * i) === 0;
  }
}

/**
 * The links of a run of whole stored transactions (header to trailer each,
 * as a `txns` message carries them), the first chained after `prev`. Null
 * when the bytes do not split into transactions and records, or a record is
 * a backpointer: a run must hold neither, and the caller refuses it.
 */
export function linksOfRun(prev: Buffer, run: Buffer): RunLinks | null {
  let count = 0;
  for (let off = 0; off < run.length; count++) {
    if (off + TXN_HEADER_BYTES > run.length) return null;
    const length = readU64At(run, off + 8);
    if (length < TXN_HEADER_BYTES || off + length + TRAILER_BYTES > run.length) return null;
    off += length + TRAILER_BYTES;
  }
  const tids = Buffer.allocUnsafe(8 * count);
  const links = Buffer.allocUnsafe(LINK_BYTES * count);
  let link = prev.toString('binary');
  for (let i = 0, off = 0; i < count; i++) {
    const length = readU64At(run, off + 8);
    // storedLink checks every record's extent within the transaction.
    const next = storedLink(link, run, off, length);
    if (next === null) return null;
    links.write(next, LINK_BYTES * i, LINK_BYTES, 'binary');
    copyBytes(run, off, off + 8, tids, 8 * i);
    link = next;
    off += length + TRAILER_BYTES;
  }
  return new RunLinks(prev, tids, links);
}

/** Record data of at least this size is hashed in place (see linkOfStored). */
const DIRECT_DATA_BYTES = 64 * 1024;

/**
 * Copy `src[start, end)` to `out` at `off`; returns the offset after it.
 * Short runs byte by byte: Buffer#copy costs more per call than the bytes.
 */
function copyBytes(src: Buffer, start: number, end: number, out: Buffer, off: number): number {
  if (end - start > 64) {
    out.set(src.subarray(start, end), off);
    return off + end - start;
  }
  for (let i = start; i < end; i++) out[off++] = src[i]!;
  return off;
}

function putU64(out: Buffer, off: number, n: number): number {
  writeU64At(out, off, n);
  return off + 8;
}

/** The stored bytes of the committed transaction at `pos` (at least header to records), read synchronously. */
function storedAt(storage: FileStorage, pos: number): Buffer {
  const first = storage.readAt(pos, 4096);
  const length = readTxnHeader(first).length;
  return length <= first.length ? first : storage.readAt(pos, length);
}

/** The link after `prev` for the committed transaction at `pos`; `body`: its stored bytes, when already at hand. */
export function linkAt(storage: FileStorage, prev: Buffer, pos: number, body: Buffer = storedAt(storage, pos)): Buffer {
  return linkOfStored(prev, body) ?? chainLink(prev, contentAt(storage, pos, body));
}

/** The content of the committed transaction at `pos`; `body`: its stored bytes, when already at hand. */
export function contentAt(storage: FileStorage, pos: number, body: Buffer = storedAt(storage, pos)): ChainContent {
  const h = readTxnHeader(body);
  let off = TXN_HEADER_BYTES;
  const user = body.subarray(off, (off += h.ulen));
  const description = body.subarray(off, (off += h.dlen));
  const extensionBytes = body.subarray(off, (off += h.elen));
  const records: Array<{ oid: Buffer; data: Buffer | null }> = [];
  while (off < h.length) {
    const plen = readU64At(body, off + 34);
    const oid = body.subarray(off, off + 8);
    if (plen > 0) records.push({ oid, data: body.subarray(off + DATA_HEADER_BYTES, off + DATA_HEADER_BYTES + plen) });
    else {
      const back = readU64At(body, off + DATA_HEADER_BYTES);
      records.push({ oid, data: back === 0 ? null : storage.resolveData(back) });
    }
    off += dataRecordLength(plen);
  }
  return { tid: Buffer.from(h.tid), user, description, extensionBytes, records };
}
