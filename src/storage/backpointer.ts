// Following a data record's backpointers (undo, restore with a data
// transaction, pack) to the record that holds its data. One walker for every
// reader, so each hop is checked alike: it points backwards (no loop) and
// reaches a record of the same object (never another object's data).

import { CorruptedDataError } from '../errors.js';
import type { DataHeader } from './format.js';

/** The record a backpointer walk ends at: where it is and its header. */
export interface DataHolder {
  pos: number;
  header: DataHeader;
}

/** The error for a pointer (previous-record or backpointer) that leads to a record of another object. */
export function otherObjectError(path: string, pos: number, found: Buffer, wanted: Buffer): CorruptedDataError {
  return new CorruptedDataError(path, pos, `record of oid 0x${found.toString('hex')} where oid 0x${wanted.toString('hex')}'s revisions lead`);
}

/**
 * From the record at `pos` (header `header`), the record holding its data,
 * or null for "no data" (a backpointer of 0: an undone creation).
 * `headerAt` reads a record's header, `backAt` the backpointer of a record
 * without data.
 */
export function dataHolder(path: string, pos: number, header: DataHeader, headerAt: (pos: number) => DataHeader, backAt: (pos: number) => number): DataHolder | null {
  const oid = Buffer.from(header.oid);
  let h = header;
  for (let hops = 0; ; hops++) {
    if (h.plen > 0) return { pos, header: h };
    const back = backAt(pos);
    if (back === 0) return null;
    if (back >= pos || hops > 1_000_000) throw new CorruptedDataError(path, pos, `backpointer ${back} does not point backwards`);
    h = headerAt(back);
    if (!h.oid.equals(oid)) throw otherObjectError(path, back, h.oid, oid);
    pos = back;
  }
}
