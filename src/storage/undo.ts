// Transactional undo for FileStorage: the undo log (newest first, ending at
// the packed part of the file) and undo records written as backpointers to
// each object's previous revision, refused when a later transaction (or
// this one) changed the same object to different data. Several undos may
// revert one object in one transaction, as in ZODB: undoing T2, then T1
// which T2 followed, leaves the object as before T1.

import { CorruptedDataError, UndoError } from '../errors.js';
import { STATUS_COMMITTED, STATUS_PACKED, TRAILER_BYTES } from './format.js';
import type { FileStorage } from './FileStorage.js';
import { oidKey, oidOfKey, type OidKey } from './scan.js';
import { isBlobRecord } from './blobs.js';
import type { TransactionMeta, UndoLogEntry } from './types.js';

/** ZODB's undo id for a transaction: its tid in base64. */
export function undoIdFor(tid: Buffer): string {
  return tid.toString('base64');
}

/** The tid an undo id (or a raw 8-byte tid) names. */
export function tidFromUndoId(id: string | Buffer): Buffer {
  const tid = typeof id === 'string' ? Buffer.from(id, 'base64') : id;
  if (tid.length !== 8) throw new UndoError(`invalid undo id ${JSON.stringify(String(id))}`);
  return tid;
}

/**
 * Undoable transactions, newest first, skipping `first` matches and
 * returning those up to `last` (a negative `last` means a count, as in ZODB).
 */
export function undoLog(
  storage: FileStorage,
  first = 0,
  last = -20,
  filter?: (entry: UndoLogEntry) => boolean,
): UndoLogEntry[] {
  if (last < 0) last = first - last;
  const out: UndoLogEntry[] = [];
  let matched = 0;
  let end = storage.durableEnd;
  while (end > storage.firstTransactionPos && matched < last) {
    const length = Number(storage.readAt(end - TRAILER_BYTES, TRAILER_BYTES).readBigUInt64BE(0));
    const tpos = end - TRAILER_BYTES - length;
    // A damaged length (in a part a saved index vouched for, so the open did not scan it) is damage, never a read elsewhere.
    const h = tpos >= storage.firstTransactionPos ? storage.readTxnHeaderAt(tpos) : null;
    if (h === null || h.length !== length) throw new CorruptedDataError(storage.path, end - TRAILER_BYTES, `redundant length ${length} does not lead back to a transaction of that length`);
    if (h.status === STATUS_PACKED) break;
    end = tpos;
    if (h.status !== STATUS_COMMITTED) continue;
    const entry: UndoLogEntry = { id: undoIdFor(h.tid), ...storage.readTxnMeta(tpos, h), size: h.length };
    if (filter && !filter(entry)) continue;
    if (matched >= first) out.push(entry);
    matched += 1;
  }
  return out;
}

/** Position of the record that finally holds the data of the record at `pos` (0 for no data). */
function dataPosition(storage: FileStorage, pos: number): number {
  return storage.dataHolderOf(pos, storage.readDataHeaderAt(pos))?.pos ?? 0;
}

/**
 * Undo transaction `id` inside the transaction `txn` in progress; returns the
 * oids it reverts. Each object goes back to the revision before the undone
 * one (a backpointer; position 0 when the undone transaction created it).
 */
export interface UndoPlan {
  oids: Buffer[];
  /** Oids an earlier undo in the same transaction had reverted already. */
  redone: Buffer[];
  /** Blob files to copy for the undo transaction: the restored revisions' blobs. */
  blobCopies: Array<{ oid: Buffer; from: string }>;
}

export function undoTransaction(storage: FileStorage, id: string | Buffer, txn: TransactionMeta): UndoPlan {
  const tid = tidFromUndoId(id);
  const tpos = storage.findTransaction(tid);
  if (tpos === null) throw new UndoError(`transaction ${tid.toString('hex')} not found`);
  const h = storage.readTxnHeaderAt(tpos);
  if (h.status !== STATUS_COMMITTED) throw new UndoError(`transaction ${tid.toString('hex')} is not undoable (status ${JSON.stringify(h.status)})`);
  // Each object's last record in the transaction is the revision it left (a transaction may hold
  // several of one object: stored twice, or undone twice); ZODB's undo gives the earlier ones a
  // second chance in the same way, and the last one decides.
  const last = storage.lastRecordsIn(tpos);
  const plan = [...last].map(([key, r]) => ({ oid: r.oid, back: undoTarget(storage, key, r.pos, r.prev) }));
  // Check (and read) everything before writing anything: an undo applies whole or not at all.
  const copies = blobCopies(storage, plan);
  const redone = plan.filter((s) => storage.pendingPos(oidKey(s.oid)) !== undefined).map((s) => s.oid);
  for (const step of plan) storage.appendUndoRecord(step.oid, step.back, txn);
  return { oids: plan.map((s) => s.oid), redone, blobCopies: copies };
}

/**
 * As ZODB does, an undo that brings back a blob revision gives the undo
 * transaction its own copy of that blob file (blob files are per revision).
 */
function blobCopies(storage: FileStorage, plan: Array<{ oid: Buffer; back: number }>): UndoPlan['blobCopies'] {
  const blobs = storage.blobs;
  if (!blobs) return [];
  const out: UndoPlan['blobCopies'] = [];
  for (const { oid, back } of plan) {
    if (back === 0 || !isBlobRecord(storage.resolveData(back))) continue;
    out.push({ oid, from: blobs.pathFor(oid, storage.readDataHeaderAt(back).tid) });
  }
  return out;
}

function undoTarget(storage: FileStorage, key: OidKey, pos: number, prev: number): number {
  const refuse = (why: string): never => {
    const oid = oidOfKey(key);
    throw new UndoError(`oid 0x${oid.toString('hex')}: ${why}`, oid);
  };
  if (storage.pendingPos(key) !== undefined) {
    // Changed in this transaction already: only by an earlier undo that brought back the very data undone now.
    const back = storage.pendingUndoTarget(key);
    if (back === undefined) refuse('already changed in this transaction');
    if (back === 0 || dataPosition(storage, back!) !== dataPosition(storage, pos)) refuse('some data were modified by a later transaction (or by this one)');
    return prev;
  }
  const current = storage.index.get(key);
  if (current !== pos) {
    const same = current !== undefined && dataPosition(storage, current) === dataPosition(storage, pos);
    if (!same) refuse('some data were modified by a later transaction');
  }
  return prev;
}
