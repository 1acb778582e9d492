// Whole committed transactions copied from another storage's file (the
// replication fast path): check every length, tid and record, then rewrite
// the two position fields each data record carries (tloc, the transaction's
// position, and prev, the oid's previous record) for the file they are about
// to be appended to. Everything else in the bytes is position-independent,
// so the result is what restore() would have written record by record.

import { CorruptedDataError } from '../errors.js';
import { DATA_HEADER_BYTES, STATUS_COMMITTED, TRAILER_BYTES, TXN_HEADER_BYTES, readU64At, writeU64At } from './format.js';

/** One transaction of a relocated run, at its new position. */
export interface RelocatedTxn {
  tid: Buffer;
  /** Position of its header in the target file. */
  pos: number;
  /** Position just past its trailer. */
  end: number;
  /** Oids of its records, each once, in file order (views into the bytes). */
  oids: Buffer[];
}

export interface RelocatedRun {
  txns: RelocatedTxn[];
  /** oid key -> position of its newest record in the run. */
  index: Map<string, number>;
  /** The greatest oid in the run. */
  maxOid: Buffer | null;
}

/**
 * Validate `raw` (complete transactions, status ' ', data records without
 * backpointers or versions, tids strictly increasing after `lastTid`) and
 * rewrite it in place for appending at `base`. `committedPos` answers an
 * oid's current record position in the target file (0 for none).
 * @throws CorruptedDataError naming `where` and the offset in `raw`; `raw` may then be partly rewritten.
 */
export function relocateTransactions(raw: Buffer, base: number, lastTid: Buffer | null, committedPos: (key: string) => number | undefined, where: string): RelocatedRun {
  const txns: RelocatedTxn[] = [];
  const index = new Map<string, number>();
  const bad = (off: number, detail: string): never => {
    throw new CorruptedDataError(where, off, detail);
  };
  let prevTid = lastTid;
  let maxOid: Buffer | null = null;
  let off = 0;
  while (off < raw.length) {
    if (off + TXN_HEADER_BYTES > raw.length) bad(off, 'transaction header cut short');
    const tid = raw.subarray(off, off + 8);
    const length = readU64At(raw, off + 8);
    const end = off + length + TRAILER_BYTES;
    if (length < TXN_HEADER_BYTES || end > raw.length) bad(off, `transaction length ${length} runs past the bytes sent`);
    if (readU64At(raw, off + length) !== length) bad(off, 'trailer does not repeat the transaction length');
    if (raw[off + 16] !== STATUS_COMMITTED.charCodeAt(0)) bad(off, `status ${JSON.stringify(String.fromCharCode(raw[off + 16]!))} where ' ' is required`);
    if (prevTid !== null && Buffer.compare(tid, prevTid) <= 0) bad(off, `tid ${tid.toString('hex')} is not after ${prevTid.toString('hex')}`);
    const tpos = base + off;
    const [tidHi, tidLo] = [raw.readUInt32BE(off), raw.readUInt32BE(off + 4)];
    const oids: Buffer[] = [];
    let r = off + TXN_HEADER_BYTES + raw.readUInt16BE(off + 17) + raw.readUInt16BE(off + 19) + raw.readUInt16BE(off + 21);
    const recordsEnd = off + length;
    if (r > recordsEnd) bad(off, 'metadata runs past the transaction');
    while (r < recordsEnd) {
      if (r + DATA_HEADER_BYTES > recordsEnd) bad(r, 'data record header cut short');
      if (raw.readUInt32BE(r + 8) !== tidHi || raw.readUInt32BE(r + 12) !== tidLo) bad(r, 'data record tid differs from its transaction');
      if (raw.readUInt16BE(r + 32) !== 0) bad(r, 'data record with a version');
      const plen = readU64At(raw, r + 34);
      if (plen === 0) bad(r, 'backpointer records are not accepted here');
      if (r + DATA_HEADER_BYTES + plen > recordsEnd) bad(r, 'data record runs past its transaction');
      const key = raw.toString('latin1', r, r + 8); // oidKey of the record's oid
      const inRun = index.get(key);
      // Seen earlier in this transaction: its record there is at or after tpos.
      if (inRun === undefined || inRun < tpos) {
        const oid = raw.subarray(r, r + 8); // a view: `raw` is the caller's own copy
        oids.push(oid);
        if (maxOid === null || Buffer.compare(oid, maxOid) > 0) maxOid = oid;
      }
      writeU64At(raw, r + 16, inRun ?? committedPos(key) ?? 0);
      writeU64At(raw, r + 24, tpos);
      index.set(key, base + r);
      r += DATA_HEADER_BYTES + plen;
    }
    txns.push({ tid: Buffer.from(tid), pos: tpos, end: base + end, oids });
    prevTid = tid;
    off = end;
  }
  return { txns, index, maxOid };
}
