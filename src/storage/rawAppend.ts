// Whole committed transactions copied from another storage's file (the
// replication fast path): check every length, tid and record, then rewrite
// the two position fields each data record carries (tloc, the transaction's
// position, and prev, the oid's previous record) for the file they are about
// to be appended to. Everything else in the bytes is position-independent,
// so the result is what restore() would have written record by record.

import { CorruptedDataError } from '../errors.js';
import { oidKeyAt, type OidKey } from './scan.js';
import type { CommittedTransaction } from './types.js';
import { DATA_HEADER_BYTES, STATUS_COMMITTED, TRAILER_BYTES, TXN_HEADER_BYTES, copyIdAt, readU64At, recordsStart, u32At, writeU64At } from './format.js';

/** One transaction of a relocated run, at its new position. */
export interface RelocatedTxn {
  tid: Buffer;
  /** Position of its header in the target file. */
  pos: number;
  /** Position just past its trailer. */
  end: number;
}

/**
 * What commits$ publishes for a relocated transaction. Its oids are read
 * from its bytes when first asked for: a secondary catching up publishes
 * many transactions whose oids nobody looks at.
 */
export class RelocatedCommit implements CommittedTransaction {
  readonly status = STATUS_COMMITTED;
  #oids: Buffer[] | null = null;

  constructor(
    readonly tid: Buffer,
    readonly pos: number,
    readonly end: number,
    /** The transaction's bytes as written (header to trailer). */
    readonly raw: Buffer,
  ) {}

  /** Oids of its records, each once, in file order (views into the bytes). */
  get oids(): Buffer[] {
    if (this.#oids === null) {
      const seen = new Set<OidKey>();
      const oids: Buffer[] = [];
      const length = readU64At(this.raw, 8);
      for (let r = recordsStart(this.raw); r < length; ) {
        const key = oidKeyAt(this.raw, r);
        if (!seen.has(key)) {
          seen.add(key);
          oids.push(this.raw.subarray(r, r + 8));
        }
        r += DATA_HEADER_BYTES + readU64At(this.raw, r + 34);
      }
      this.#oids = oids;
    }
    return this.#oids;
  }
}

export interface RelocatedRun {
  txns: RelocatedTxn[];
  /** The greatest oid in the run. */
  maxOid: Buffer | null;
  /** Put back every index entry the run changed (the write failed). */
  undo(): void;
}

/**
 * Validate `raw` (complete transactions, status ' ', data records without
 * backpointers or versions, tids strictly increasing after `lastTid`) and
 * rewrite it in place for appending at `base`, entering each record's new
 * position in `index` (oid key -> newest record position, every entry below
 * `base`). On an error `index` is left as it was; `raw` may be partly
 * rewritten.
 * @throws CorruptedDataError naming `where` and the offset in `raw`.
 */
export function relocateTransactions(raw: Buffer, base: number, lastTid: Buffer | null, index: Map<OidKey, number>, where: string): RelocatedRun {
  const txns: RelocatedTxn[] = [];
  // First change to each key in this run and what it replaced (-1: nothing), to undo them.
  const changedKeys: OidKey[] = [];
  const replaced: number[] = [];
  const undo = (): void => {
    for (let i = changedKeys.length - 1; i >= 0; i--) {
      const old = replaced[i]!;
      if (old < 0) index.delete(changedKeys[i]!);
      else index.set(changedKeys[i]!, old);
    }
  };
  const bad = (off: number, detail: string): never => {
    undo();
    throw new CorruptedDataError(where, off, detail);
  };
  // Tids and oids compared as two unsigned 32-bit halves.
  let prevHi = lastTid === null ? -1 : lastTid.readUInt32BE(0);
  let prevLo = lastTid === null ? -1 : lastTid.readUInt32BE(4);
  let maxOidAt = -1;
  let maxHi = -1;
  let maxLo = -1;
  let off = 0;
  while (off < raw.length) {
    if (off + TXN_HEADER_BYTES > raw.length) bad(off, 'transaction header cut short');
    const length = readU64At(raw, off + 8);
    const end = off + length + TRAILER_BYTES;
    if (length < TXN_HEADER_BYTES || end > raw.length) bad(off, `transaction length ${length} runs past the bytes sent`);
    if (readU64At(raw, off + length) !== length) bad(off, 'trailer does not repeat the transaction length');
    if (raw[off + 16] !== STATUS_BYTE) bad(off, `status ${JSON.stringify(String.fromCharCode(raw[off + 16]!))} where ' ' is required`);
    const tidHi = u32At(raw, off);
    const tidLo = u32At(raw, off + 4);
    if (tidHi < prevHi || (tidHi === prevHi && tidLo <= prevLo)) {
      bad(off, `tid ${raw.toString('hex', off, off + 8)} is not after ${tidHex(prevHi, prevLo)}`);
    }
    const tpos = base + off;
    let r = recordsStart(raw, off);
    const recordsEnd = off + length;
    if (r > recordsEnd) bad(off, 'metadata runs past the transaction');
    while (r < recordsEnd) {
      if (r + DATA_HEADER_BYTES > recordsEnd) bad(r, 'data record header cut short');
      // Byte by byte: cheaper than Buffer's bounds-checked reads, twice per record.
      for (let i = 0; i < 8; i++) if (raw[r + 8 + i] !== raw[off + i]) bad(r, 'data record tid differs from its transaction');
      if ((raw[r + 32]! | raw[r + 33]!) !== 0) bad(r, 'data record with a version');
      const plen = readU64At(raw, r + 34);
      if (plen === 0) bad(r, 'backpointer records are not accepted here');
      if (r + DATA_HEADER_BYTES + plen > recordsEnd) bad(r, 'data record runs past its transaction');
      const key = oidKeyAt(raw, r);
      // -1 for a new object: the comparison then runs for every record, so a
      // new secondary, which first sees only creations, has it compiled
      // rather than deoptimizing at the first update.
      const old = index.get(key) ?? -1;
      if (old < base) {
        changedKeys.push(key);
        replaced.push(old);
        const hi = u32At(raw, r);
        const lo = u32At(raw, r + 4);
        if (hi > maxHi || (hi === maxHi && lo > maxLo)) {
          maxOidAt = r;
          maxHi = hi;
          maxLo = lo;
        }
      }
      // An oid stored twice in one transaction: each record points where the index stood before
      // the transaction (as a commit writes it), not at the other record.
      const prev = old >= tpos ? readU64At(raw, old - base + 16) : old < 0 ? 0 : old;
      writeU64At(raw, r + 16, prev);
      writeU64At(raw, r + 24, tpos);
      index.set(key, base + r);
      r += DATA_HEADER_BYTES + plen;
    }
    txns.push({ tid: copyIdAt(raw, off), pos: tpos, end: base + end });
    prevHi = tidHi;
    prevLo = tidLo;
    off = end;
  }
  return { txns, maxOid: maxOidAt < 0 ? null : raw.subarray(maxOidAt, maxOidAt + 8), undo };
}

/**
 * Whether one stored transaction (header to trailer) is what
 * relocateTransactions accepts: status ' ', and data records without
 * backpointers or versions; `exclude` rejects it for a record's data too
 * (a blob, whose file must travel with it). Reads the bytes only.
 */
export function isRelocatable(raw: Buffer, exclude?: (data: Buffer) => boolean): boolean {
  if (raw[16] !== STATUS_BYTE) return false;
  const length = readU64At(raw, 8);
  for (let r = recordsStart(raw); r < length; ) {
    const plen = readU64At(raw, r + 34);
    if (plen === 0 || raw.readUInt16BE(r + 32) !== 0) return false;
    if (exclude?.(raw.subarray(r + DATA_HEADER_BYTES, r + DATA_HEADER_BYTES + plen))) return false;
    r += DATA_HEADER_BYTES + plen;
  }
  return true;
}

const STATUS_BYTE = STATUS_COMMITTED.charCodeAt(0);

function tidHex(hi: number, lo: number): string {
  return hi.toString(16).padStart(8, '0') + lo.toString(16).padStart(8, '0');
}
