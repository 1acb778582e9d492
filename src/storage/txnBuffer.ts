// The bytes of the transaction being built, in one growable buffer laid out
// exactly as it will be written: header and metadata space first, then data
// records appended in place, then the trailer. Vote writes it with one call.
// One buffer serves every transaction of a storage in turn (commits are
// serialised), so a small commit allocates nothing.

import { constants } from 'node:buffer';
import { ZrsError } from '../errors.js';
import { DATA_HEADER_BYTES, TRAILER_BYTES, dataRecordLength, writeU64At } from './format.js';

/** A buffer grown past this by a large transaction is not kept for the next one. */
const KEEP_BYTES = 1 << 20;

export class TxnBuffer {
  private buf: Buffer;
  /** Header plus metadata bytes at the start. */
  private metaBytes = 0;
  /** Bytes used: header and metadata, plus the records appended so far. */
  private used = 0;

  constructor() {
    this.buf = Buffer.allocUnsafe(16 * 1024);
  }

  /** Start a new transaction whose header and metadata take `metaBytes`. */
  reset(metaBytes: number): void {
    if (this.buf.length > KEEP_BYTES) this.buf = Buffer.allocUnsafe(16 * 1024);
    this.metaBytes = metaBytes;
    this.used = metaBytes;
    this.reserve(0);
  }

  /** Bytes of data records appended. */
  get recordBytes(): number {
    return this.used - this.metaBytes;
  }

  private reserve(n: number): void {
    const need = this.used + n + TRAILER_BYTES;
    if (need <= this.buf.length) return;
    if (need > constants.MAX_LENGTH) throw new ZrsError(`a transaction of ${need} bytes: one is written from a single buffer, at most ${constants.MAX_LENGTH} bytes`);
    let size = this.buf.length * 2;
    while (size < need) size *= 2;
    const next = Buffer.allocUnsafe(Math.min(size, constants.MAX_LENGTH));
    this.buf.copy(next, 0, 0, this.used);
    this.buf = next;
  }

  /** Append one data record; returns its offset from the start of the transaction. */
  appendRecord(oid: Buffer, tid: Buffer, prev: number, tloc: number, data: Buffer | null, back: number): number {
    const plen = data === null ? 0 : data.length;
    const len = dataRecordLength(plen);
    this.reserve(len);
    const off = this.used;
    const b = this.buf;
    // Ids byte by byte and data with TypedArray#set: Buffer#copy's per-call checks cost more than 8 bytes do.
    for (let i = 0; i < 8; i++) {
      b[off + i] = oid[i]!;
      b[off + 8 + i] = tid[i]!;
    }
    writeU64At(b, off + 16, prev);
    writeU64At(b, off + 24, tloc);
    b.writeUInt16BE(0, off + 32); // no version
    writeU64At(b, off + 34, plen);
    if (data !== null && plen > 0) b.set(data, off + DATA_HEADER_BYTES);
    else writeU64At(this.buf, off + DATA_HEADER_BYTES, back);
    this.used += len;
    return off;
  }

  /**
   * The 8-byte ids at file positions `positions` (the transaction starting
   * at `base`), copied one after another into one buffer.
   */
  copyIds(positions: Iterable<number>, base: number, count: number): Buffer {
    const out = Buffer.allocUnsafe(8 * count);
    const b = this.buf;
    let o = 0;
    for (const pos of positions) {
      const off = pos - base;
      for (let i = 0; i < 8; i++) out[o + i] = b[off + i]!;
      o += 8;
    }
    return out;
  }

  /** A copy of the finished transaction (see finish) with `status` in its status byte. */
  copyFinished(status: Buffer): Buffer {
    const n = this.used + TRAILER_BYTES;
    const copy = carve(n);
    copy.set(this.buf.subarray(0, n));
    copy[16] = status[0]!;
    return copy;
  }

  /** The whole transaction with `writeHeader` filling the first metaBytes and the trailer set. */
  finish(writeHeader: (buf: Buffer) => void): Buffer {
    this.reserve(0);
    writeHeader(this.buf);
    writeU64At(this.buf, this.used, this.used);
    return this.buf.subarray(0, this.used + TRAILER_BYTES);
  }
}

/**
 * Copies of small finished transactions are carved from shared slabs: a
 * separate allocation per commit cost more than the copy itself. A slab
 * lives as long as any copy carved from it.
 */
const SLAB_BYTES = 256 * 1024;
let slab = Buffer.allocUnsafeSlow(0);
let slabUsed = 0;

function carve(n: number): Buffer {
  if (n > SLAB_BYTES / 8) return Buffer.allocUnsafe(n);
  if (slabUsed + n > slab.length) {
    slab = Buffer.allocUnsafeSlow(SLAB_BYTES);
    slabUsed = 0;
  }
  const out = slab.subarray(slabUsed, slabUsed + n);
  slabUsed += n;
  return out;
}
