// Pack: rewrite Data.fs without revisions not current at the pack time (and, given a
// references function, objects unreachable from the root then), byte for byte as ZODB 5
// (except where ZODB's GC would drop what later transactions refer to: kept here).
// Invariants: the live file is only read; the commit lock is held only for the last round of
// the tail committed meanwhile and the swap; memory grows with the oid count, not the file size.

import { open, readdir, rmdir, unlink } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { CorruptedDataError, ReadOnlyError, StorageClosedError, ZrsError } from '../errors.js';
import {
  BACKPOINTER_BYTES,
  DATA_HEADER_BYTES,
  MAGIC_BYTES,
  STATUS_CHECKPOINT,
  STATUS_PACKED,
  TRAILER_BYTES,
  TXN_HEADER_BYTES,
  dataRecordLength,
  readDataHeader,
  readTxnHeader,
  readU64At,
  writeDataHeader,
  writeTxnHeader,
  writeU64At,
  type DataHeader,
  type TxnHeader,
} from './format.js';
import { dataHolder } from './backpointer.js';
import { isBlobRecord } from './blobs.js';
import { BigMap, BigSet } from './bigMap.js';
import { nodeDisk } from './disk.js';
import { WindowReader, preadSync } from './fileio.js';
import { emptyScanState, oidKey, scanWhole, type OidKey, type ScanState } from './scan.js';
import { PassTurns, turn } from './turns.js';
import { Z64 } from './timestamp.js';
import type { FileStorage } from './FileStorage.js';

/** Pack could not run or finish; the data file is left as it was. */
export class PackError extends ZrsError {
  override name = 'PackError';
}

/**
 * What garbage collection refused, nothing changed: a record it cannot read
 * for references, a reference to an object with no revision at the pack
 * time, a transaction committed meanwhile referring to an object it drops.
 * A pack without garbage collection reads no references.
 */
export class GarbageCollectionError extends PackError {
  override name = 'GarbageCollectionError';
}

/** A pack time no tid names (before 1970, or past 9917): nothing changed. */
export class PackTimeError extends PackError {
  override name = 'PackTimeError';
}

/** What a pack did with the blob files of removed revisions: none to do (no blob directory), deleted them, or left them (`keepBlobFiles`). */
export type PackBlobFiles = 'none' | 'deleted' | 'kept';

/** Oids a record's data refers to (ZODB's referencesf; see zodbReferences). */
export type ReferencesOf = (data: Buffer) => Buffer[];

/** What a pack did. */
export interface PackReport {
  /** False when nothing before the pack time could be removed: the file was not touched. */
  packed: boolean;
  /** Tid the pack packed to: the pack time's, or the last transaction's when that is earlier; transactions with tid <= packTid are before the pack. */
  packTid: Buffer;
  /** Committed size when the pack started, and after it (equal when not packed). */
  sizeBefore: number;
  sizeAfter: number;
  /** Transactions committed while the pack ran, copied after what it packed (in rounds, the last under the commit lock). */
  tailTransactions: number;
  /** What was done with the blob files of removed revisions. */
  blobFiles: PackBlobFiles;
  /** Blob files removed with the revisions they belonged to. */
  removedBlobFiles: number;
  /**
   * Blob files of removed revisions that could not be removed (the packed
   * file is in place all the same), and the first such error: orphans that
   * no later pack removes, for an operator to delete.
   */
  blobFilesNotRemoved: number;
  blobRemovalError: string | null;
}

/**
 * Where a pack is: which pass, and how far into it. `index` and `copy` read
 * the file (`done` is the offset of the transaction being read, `total` the
 * file's committed size when the pack started, or, while the transactions
 * committed meanwhile are copied after it, the end of those). `references`
 * (with garbage collection) first walks the objects from the root (`done`
 * objects reached of `total` current at the pack time), then reads the
 * transactions after the pack time (offsets, as the other passes). `done`
 * never exceeds `total`.
 */
export interface PackProgress {
  step: 'index' | 'references' | 'copy';
  done: number;
  total: number;
}

export interface PackOptions {
  /** Called before each transaction a pass reads (throttle it for display). */
  onProgress?: (progress: PackProgress) => void;
  /**
   * Leave the blob files of removed revisions where they are: the blob
   * directory is shared with a node that may still need them (a secondary
   * with `transferBlobs: false` shares its primary's), whose own pack
   * removes them. A storage opened without its blob directory may then
   * remove blob revisions too. Default false.
   */
  keepBlobFiles?: boolean;
}

/** Objects the garbage collection marks between two turns of the event loop. */
const MARKS_PER_TURN = 1024;

/** Output is written in batches of about this many bytes. */
const FLUSH_BYTES = 1 << 20;
/** ZODB's TimeStamp: seconds are stored as whole units of 60 / 2^32 s, truncated. */
const SECONDS_PER_UNIT = 60 / 65536 / 65536;

/** A scan of the packed output so far (see FileStorage.replaceDataFile). */
interface Scanned {
  state: ScanState;
  end: number;
}

/** The scan of the new file at `newPath` carried on from `from` (none: the start) up to `end`, where whole transactions end. */
async function scanOutput(newPath: string, path: string, from: Scanned | null, end: number): Promise<Scanned> {
  const handle = await open(newPath, 'r');
  try {
    const state = await scanWhole(handle, path, from?.end ?? MAGIC_BYTES, end, from?.state ?? emptyScanState(), new PassTurns());
    return { state, end: state.end };
  } finally {
    await handle.close();
  }
}

/**
 * Transactions committed while a pack runs are copied in rounds without the
 * commit lock while more than this many bytes of them are left, so that
 * commits wait under it only for the last few (each byte copied there holds
 * every commit).
 */
const LOCKED_TAIL_BYTES = 256 * 1024;
/** Rounds of that copy before the lock is taken whatever is left (commits may come faster than a round copies them). */
const UNLOCKED_TAIL_ROUNDS = 8;

/** Storages with a pack running: a second pack at the same time is refused (as ZODB). */
const packing = new WeakSet<FileStorage>();

/** The times a tid can name, as `isPackTimeInRange` checks them, in words. */
export const PACK_TIME_RANGE = '1970 to 9917';

/**
 * Whether a tid can name `seconds` (since the epoch) as a pack time: after
 * 1970 and before the last time a tid holds (9917; later times, also past
 * what a Date holds, read as all 0xff).
 */
export function isPackTimeInRange(seconds: number): boolean {
  if (!Number.isFinite(seconds) || seconds <= 0) return false;
  const tid = packTimeToTid(seconds);
  return !tid.equals(Z64) && tid.readUInt32BE(0) !== 0xffffffff;
}

/**
 * The tid ZODB packs to for `packTime` (seconds since the epoch):
 * `TimeStamp(*gmtime(t)[:5] + (t % 60,))`.
 */
export function packTimeToTid(packTime: number): Buffer {
  if (!Number.isFinite(packTime)) throw new PackError(`invalid pack time ${packTime}`);
  const d = new Date(Math.floor(packTime) * 1000);
  const hi = ((((d.getUTCFullYear() - 1900) * 12 + d.getUTCMonth()) * 31 + (d.getUTCDate() - 1)) * 24 + d.getUTCHours()) * 60 + d.getUTCMinutes();
  const seconds = ((packTime % 60) + 60) % 60;
  const out = Buffer.alloc(8);
  // Past what a Date holds (about 275,760 years either way) the fields are NaN: after every tid, or before 1900.
  if (hi < 0 || (Number.isNaN(hi) && packTime < 0)) return out; // before 1900: z64, refused by the caller
  if (Number.isNaN(hi)) return out.fill(0xff);
  out.writeUInt32BE(Math.min(hi, 0xffffffff) >>> 0, 0);
  out.writeUInt32BE(Math.min(Math.trunc(seconds / SECONDS_PER_UNIT), 0xffffffff) >>> 0, 4);
  return out;
}

/**
 * Pack `storage` to `packTime` (seconds since the epoch), as ZODB's
 * `FileStorage.pack(t, referencesf)`: transactions at or before the pack time
 * keep only the revisions current then (written with status 'p' and their
 * data inline); transactions left without records are dropped (but the last: the storage's last tid never goes back); later ones are
 * copied with their offsets adjusted. With `referencesOf`, objects not
 * reachable from the root (oid 0) at the pack time go too. The previous file
 * is kept as `<file>.old`; blob files of removed revisions are deleted
 * (unless `options.keepBlobFiles`).
 * Called by `FileStorage.pack`.
 *
 * @example
 * await packStorage(storage, Date.now() / 1000 - 7 * 86400, zodbReferences);
 */
export async function packStorage(storage: FileStorage, packTime: number, referencesOf?: ReferencesOf, options: PackOptions = {}): Promise<PackReport> {
  if (storage.packsStopped) throw new StorageClosedError(storage.path);
  if (storage.readOnly) throw new ReadOnlyError('pack', storage.path);
  if (!isPackTimeInRange(packTime)) throw new PackTimeError(`pack time ${packTime} is outside the times transactions have (${PACK_TIME_RANGE})`);
  const asked = packTimeToTid(packTime);
  // No later than the last transaction: what was reachable then is judged from transactions this file holds
  // (a secondary's has not yet received those its primary committed since; for a primary nothing lies between).
  const last = storage.lastTransaction();
  const packTid = Buffer.compare(asked, last) > 0 && !last.equals(Z64) ? Buffer.from(last) : asked;
  const blobFiles: PackBlobFiles = options.keepBlobFiles ? 'kept' : storage.blobs ? 'deleted' : 'none';
  if (storage.objectCount === 0) {
    const size = storage.getSize();
    return { packed: false, packTid, sizeBefore: size, sizeAfter: size, tailTransactions: 0, blobFiles, removedBlobFiles: 0, blobFilesNotRemoved: 0, blobRemovalError: null };
  }
  if (packing.has(storage)) throw new PackError(`${storage.path}: a pack is already running`);
  packing.add(storage);
  try {
    const handle = await open(storage.path, 'r');
    try {
      return await new Packer(storage, handle, packTid, referencesOf ?? null, options.onProgress ?? null, blobFiles).run();
    } finally {
      await handle.close();
    }
  } finally {
    packing.delete(storage);
  }
}

/** A transaction header as read, with where its records start and where the next one starts. */
interface TxnAt {
  pos: number;
  header: TxnHeader;
  recordsStart: number;
  recordsEnd: number;
  next: number;
}

/** Sequential and random reads of the pre-pack file through our own handle. */
class Source {
  private reader: WindowReader;

  constructor(
    readonly path: string,
    private readonly handle: FileHandle,
  ) {
    this.reader = new WindowReader(handle);
  }

  /** Bytes at `pos`; the view stays valid after later reads. */
  async view(pos: number, length: number): Promise<Buffer> {
    if (!this.reader.has(pos, length)) await this.reader.fill(pos, length);
    const v = this.reader.view(pos, length);
    if (v.length < length) throw new CorruptedDataError(this.path, pos, 'read past the end of the file');
    return v;
  }

  /** Forget buffered bytes: past the old end they may have been read before a commit finished. */
  forgetWindow(): void {
    this.reader = new WindowReader(this.handle);
  }

  /** Read and check the transaction at `pos`, which must end by `limit`. */
  async txnAt(pos: number, limit: number, lastTid: Buffer | null): Promise<TxnAt> {
    const header = readTxnHeader(Buffer.from(await this.view(pos, TXN_HEADER_BYTES)));
    const recordsStart = pos + TXN_HEADER_BYTES + header.ulen + header.dlen + header.elen;
    const next = pos + header.length + TRAILER_BYTES;
    if (recordsStart > pos + header.length || next > limit) throw new CorruptedDataError(this.path, pos, 'transaction length out of range');
    if (header.status === STATUS_CHECKPOINT) throw new CorruptedDataError(this.path, pos, "transaction still marked in progress ('c')");
    if (lastTid && Buffer.compare(header.tid, lastTid) <= 0) throw new CorruptedDataError(this.path, pos, 'tids do not increase');
    const trailer = readU64At(await this.view(pos + header.length, TRAILER_BYTES), 0);
    if (trailer !== header.length) throw new CorruptedDataError(this.path, pos + header.length, 'redundant length differs from the header');
    return { pos, header, recordsStart, recordsEnd: pos + header.length, next };
  }

  /** Header of the data record at `pos` inside `txn` (streamed). */
  async recordAt(txn: TxnAt, pos: number): Promise<DataHeader> {
    const h = readDataHeader(Buffer.from(await this.view(pos, DATA_HEADER_BYTES)));
    if (pos + dataRecordLength(h.plen) > txn.recordsEnd || h.tloc !== txn.pos) {
      throw new CorruptedDataError(this.path, pos, 'data record does not fit its transaction');
    }
    return h;
  }

  /** Backpointer of a record with plen 0 (streamed). */
  async backAt(pos: number): Promise<number> {
    return readU64At(await this.view(pos + DATA_HEADER_BYTES, BACKPOINTER_BYTES), 0);
  }

  /** Data header at any position (random access). */
  headerAt(pos: number): DataHeader {
    const buf = preadSync(this.handle.fd, pos, DATA_HEADER_BYTES);
    if (buf.length < DATA_HEADER_BYTES) throw new CorruptedDataError(this.path, pos, 'data record header past the end of the file');
    return readDataHeader(buf);
  }

  /** Data of the record at `pos` with backpointers followed; null for "no data". */
  resolve(pos: number): Buffer | null {
    const backAt = (p: number): number => readU64At(preadSync(this.handle.fd, p + DATA_HEADER_BYTES, BACKPOINTER_BYTES), 0);
    const holder = dataHolder(this.path, pos, this.headerAt(pos), (p) => this.headerAt(p), backAt);
    return holder === null ? null : preadSync(this.handle.fd, holder.pos + DATA_HEADER_BYTES, holder.header.plen);
  }
}

/** Buffered positional writer for the new file; headers can be patched until flushed. */
class Output {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  /** Everything before this offset is written to the file. */
  private flushedEnd: number;

  constructor(
    readonly fd: number,
    /** Offset of the next byte. */
    public pos: number,
  ) {
    this.flushedEnd = pos;
  }

  write(buf: Buffer): void {
    this.pending.push(buf);
    this.pendingBytes += buf.length;
    this.pos += buf.length;
    if (this.pendingBytes >= FLUSH_BYTES) this.flush();
  }

  /** Set the u64 at `offset` inside `owner` (a buffer written at `ownerPos`), on disk if already flushed. */
  patchU64(owner: Buffer, ownerPos: number, offset: number, value: number): void {
    writeU64At(owner, offset, value);
    if (ownerPos < this.flushedEnd) nodeDisk.write(this.fd, owner.subarray(offset, offset + 8), ownerPos + offset);
  }

  flush(): void {
    if (this.pending.length === 0) return;
    // One copy per batch: writev takes at most IOV_MAX buffers and small records are many.
    const batch = this.pending.length === 1 ? this.pending[0]! : Buffer.concat(this.pending, this.pendingBytes);
    nodeDisk.write(this.fd, batch, this.flushedEnd);
    this.flushedEnd += batch.length;
    this.pending = [];
    this.pendingBytes = 0;
  }
}

/** Which pre-pack revisions survive: one position per oid, a few oids with more (as ZODB's GC). */
class Reachable {
  readonly first = new BigMap<OidKey, number>();
  readonly extra = new BigMap<OidKey, number[]>();

  has(key: OidKey, pos: number): boolean {
    const p = this.first.get(key);
    if (p === undefined) return false;
    return p === pos || (this.extra.get(key)?.includes(pos) ?? false);
  }
}

/** Old -> new offsets of records after the pack time: a shift that changes only where a record changed size. */
class ShiftTable {
  private readonly from: number[] = [];
  private readonly delta: number[] = [];

  /** From `oldPos` on (until the next change), new = old + delta. */
  set(oldPos: number, delta: number): void {
    if (this.delta.length && this.delta[this.delta.length - 1] === delta) return;
    this.from.push(oldPos);
    this.delta.push(delta);
  }

  map(oldPos: number): number | null {
    let lo = 0;
    let hi = this.from.length - 1;
    let best = -1;
    while (lo <= hi) {
      const mid = Math.floor((lo + hi) / 2);
      if (this.from[mid]! <= oldPos) {
        best = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    return best < 0 ? null : oldPos + this.delta[best]!;
  }
}

interface BlobRevision {
  oid: Buffer;
  tid: Buffer;
}

const BLOB_CLASS_MARK = Buffer.from('ZODB.blob', 'latin1');

class Packer {
  private readonly src: Source;
  /** oid -> record position current at the pack time. */
  private current = new BigMap<OidKey, number>();
  /** First transaction after the pack time (or the end). */
  private packPos = MAGIC_BYTES;
  /** Whether any transaction before the pack time is not yet packed ('p'). */
  private unpacked = false;
  private reachable = new Reachable();
  /** New file: oid -> position of its latest record, for prev pointers. */
  private readonly newIndex = new BigMap<OidKey, number>();
  /** Pre-pack records kept: old position -> new position (backpointer targets). */
  private readonly moved = new BigMap<number, number>();
  private readonly shifts = new ShiftTable();
  private readonly blobRemovals: BlobRevision[] = [];
  private lastTid: Buffer | null = null;
  /** Objects with a record after the pack time (their later records are copied whatever the GC decides). */
  private readonly laterOids = new BigSet<OidKey>();

  constructor(
    private readonly storage: FileStorage,
    handle: FileHandle,
    private readonly packTid: Buffer,
    private readonly referencesOf: ReferencesOf | null,
    private readonly onProgress: ((progress: PackProgress) => void) | null,
    private readonly blobFiles: PackBlobFiles,
  ) {
    this.src = new Source(storage.path, handle);
  }

  /** Objects marked reachable so far (markFrom yields to the event loop every MARKS_PER_TURN), of those current at the pack time. */
  private marked = 0;
  private objectsAtPack = 0;

  /** Where the passes over the file let the event loop turn (commits and replication go on meanwhile). */
  private readonly turns = new PassTurns();

  /** The pass under way and the size it reads to, for onProgress. */
  private step: PackProgress['step'] = 'index';
  private end0 = 0;

  async run(): Promise<PackReport> {
    const epoch = this.storage.fileEpoch;
    // Everything before end0 is committed and never changes; later bytes may be a commit in progress.
    const end0 = this.storage.getSize();
    this.end0 = end0;
    const unchanged: PackReport = {
      packed: false,
      packTid: this.packTid,
      sizeBefore: end0,
      sizeAfter: end0,
      tailTransactions: 0,
      blobFiles: this.blobFiles,
      removedBlobFiles: 0,
      blobFilesNotRemoved: 0,
      blobRemovalError: null,
    };
    await this.buildPackIndex(end0);
    if (await this.redundant(end0)) return unchanged;
    this.step = 'references';
    this.objectsAtPack = this.current.size;
    if (this.referencesOf) await this.findReachable(this.referencesOf, end0);
    else for (const [k, p] of this.current) this.reachable.first.set(k, p);
    this.current = new BigMap(); // no longer needed; may be large
    this.step = 'copy';

    const newPath = `${this.storage.path}.pack`;
    const out = await open(newPath, 'w+');
    let swapped = false;
    try {
      const o = new Output(out.fd, 0);
      o.write(Buffer.from(await this.src.view(0, MAGIC_BYTES)));
      await this.copyBeforePack(o, end0);
      // Nothing freed before the pack time: keep the file as it is (ZODB does the same).
      if (o.pos === this.packPos) return unchanged;
      this.shifts.set(this.packPos, o.pos - this.packPos);
      await this.copyAfterPack(o, this.packPos, end0);
      // What is copied so far is final: the new file's index is read from it while commits go on; then the
      // transactions committed meanwhile, in rounds, and a sync. Under the commit lock only the last of them are
      // (each step there holds every commit: a scan about 12 ms a megabyte of packed file, a sync of it all
      // tens of milliseconds).
      let copied = end0;
      let tailTransactions = 0;
      let scanned: Scanned | null = null;
      for (let round = 0; ; round++) {
        o.flush();
        if (this.storage.packsStopped) throw new StorageClosedError(this.storage.path);
        scanned = await scanOutput(newPath, this.storage.path, scanned, o.pos);
        const end = this.storage.getSize();
        if (end - copied <= LOCKED_TAIL_BYTES || round === UNLOCKED_TAIL_ROUNDS) break;
        tailTransactions += await this.copyTail(o, copied, end, epoch);
        copied = end;
      }
      await out.sync();
      const release = await this.storage.acquireCommitLock();
      let sizeAfter: number;
      try {
        const end1 = this.storage.getSize();
        tailTransactions += await this.copyTail(o, copied, end1, epoch);
        this.checkLaterReferences();
        o.flush();
        await out.sync();
        await out.close();
        sizeAfter = o.pos;
        await this.storage.replaceDataFile(newPath, 'pack', scanned);
        swapped = true;
      } finally {
        release();
      }
      return { ...unchanged, packed: true, sizeAfter, tailTransactions, ...(await this.removeBlobs()) };
    } finally {
      if (!swapped) {
        await out.close().catch(() => undefined);
        await unlink(newPath).catch(() => undefined);
      }
    }
  }

  // ------------------------------------------------------------ what survives

  /** The transaction at `pos`, read for the pack (and reported to onProgress); a storage closed meanwhile stops the pack here (its close waits for it). */
  private async txnAt(pos: number, limit: number, lastTid: Buffer | null): Promise<TxnAt> {
    const turn = this.turns.at(pos);
    if (turn) await turn;
    if (this.storage.packsStopped) throw new StorageClosedError(this.storage.path);
    // The tail committed while the pack ran is copied past the size it started from: the total grows with it.
    this.onProgress?.({ step: this.step, done: pos, total: Math.max(this.end0, limit) });
    return this.src.txnAt(pos, limit, lastTid);
  }

  /** Records current at the pack time, and where the first later transaction starts. */
  private async buildPackIndex(end: number): Promise<void> {
    let pos = MAGIC_BYTES;
    while (pos < end) {
      const txn = await this.txnAt(pos, end, this.lastTid);
      if (Buffer.compare(txn.header.tid, this.packTid) > 0) break;
      this.lastTid = Buffer.from(txn.header.tid);
      if (txn.header.status !== STATUS_PACKED) this.unpacked = true;
      for (let rpos = txn.recordsStart; rpos < txn.recordsEnd; ) {
        const h = await this.src.recordAt(txn, rpos);
        const key = oidKey(h.oid);
        // A record with neither data nor backpointer undoes a creation: no current revision.
        if (h.plen > 0 || (await this.src.backAt(rpos)) !== 0) this.current.set(key, rpos);
        else this.current.delete(key);
        rpos += dataRecordLength(h.plen);
      }
      pos = txn.next;
    }
    this.packPos = pos;
  }

  /** Already packed to this time or later, with nothing new before it (ZODB's RedundantPackWarning). */
  private async redundant(end: number): Promise<boolean> {
    if (this.unpacked) return false;
    if (this.packPos >= end) return true;
    const next = readTxnHeader(Buffer.from(await this.src.view(this.packPos, TXN_HEADER_BYTES)));
    return next.status === STATUS_PACKED;
  }

  /**
   * ZODB's GC: reachable from the root at the pack time, plus backpointer
   * targets from later. Beyond ZODB, what the later transactions refer to is
   * kept too, with what it reaches: an object unlinked before the pack time
   * and linked again after it (an application still holding it), or brought
   * back by an undo after it, would otherwise lose itself or what it refers to.
   */
  private async findReachable(referencesOf: ReferencesOf, end: number): Promise<void> {
    await this.markFrom([Z64], referencesOf);
    const backs: Array<{ oid: Buffer; back: number }> = [];
    let pos = this.packPos;
    let lastTid = this.lastTid;
    while (pos < end) {
      const txn = await this.txnAt(pos, end, lastTid);
      lastTid = Buffer.from(txn.header.tid);
      for (let rpos = txn.recordsStart; rpos < txn.recordsEnd; ) {
        const h = await this.src.recordAt(txn, rpos);
        const back = h.plen === 0 ? await this.src.backAt(rpos) : 0;
        this.laterOids.add(oidKey(h.oid));
        // Data after the pack time (inline, or through a backpointer to later data) is copied: its references stay.
        if (back === 0 || back >= this.packPos) await this.markFrom(this.refsAt(rpos, referencesOf, h.oid, 'after the pack time'), referencesOf, true);
        else backs.push({ oid: Buffer.from(h.oid), back });
        rpos += dataRecordLength(h.plen);
      }
      pos = txn.next;
    }
    const extraRoots: Array<{ oid: Buffer; pos: number }> = [];
    for (const { oid, back } of backs) await this.keepBackTarget(oid, back, extraRoots, referencesOf);
    // An old revision revived by undo may refer to objects otherwise gone.
    for (const root of extraRoots) await this.markFrom(this.refsAt(root.pos, referencesOf, root.oid, 'revived by an undo after the pack time'), referencesOf, true);
  }

  /**
   * Copy the transactions committed while the pack ran, from `from` to `to`;
   * the number copied. With garbage collection, what they write is noted, and
   * what they refer to that is not (yet) known to stay: none may refer to an
   * object the pack drops (checkLaterReferences). A file replaced meanwhile
   * (a rewind) stops the pack.
   */
  private async copyTail(o: Output, from: number, to: number, epoch: number): Promise<number> {
    if (this.storage.packsStopped) throw new StorageClosedError(this.storage.path);
    if (this.storage.fileEpoch !== epoch) throw new PackError(`${this.storage.path}: the data file was replaced during the pack`);
    if (to <= from) return 0;
    this.src.forgetWindow();
    const records: Array<{ oid: Buffer; rpos: number }> | null = this.referencesOf ? [] : null;
    const count = await this.copyAfterPack(o, from, to, records);
    if (this.referencesOf && records) this.noteLaterReferences(this.referencesOf, records);
    return count;
  }

  /** What the tail's `records` write, and what they refer to that is not (yet) known to stay. */
  private noteLaterReferences(referencesOf: ReferencesOf, records: Array<{ oid: Buffer; rpos: number }>): void {
    for (const { oid } of records) this.laterOids.add(oidKey(oid));
    for (const { oid, rpos } of records) {
      for (const ref of this.refsAt(rpos, referencesOf, oid, 'after the pack time')) {
        const key = oidKey(ref);
        if (!this.reachable.first.has(key) && !this.laterOids.has(key)) this.laterRefs.push({ ref, key });
      }
    }
  }

  /** References of the records committed while the pack ran, to objects not (yet) known to stay: checked at the end. */
  private readonly laterRefs: Array<{ ref: Buffer; key: OidKey }> = [];

  /**
   * Once every object the tail writes is known (a reference may come before
   * the record it names), each it refers to stays; otherwise the pack is
   * refused (nothing is replaced; it can run again).
   */
  private checkLaterReferences(): void {
    for (const { ref, key } of this.laterRefs) {
      if (this.reachable.first.has(key) || this.laterOids.has(key)) continue;
      throw new GarbageCollectionError(
        `${this.storage.path}: a transaction committed while the pack ran refers to oid 0x${ref.toString('hex')}, which the pack drops as unreachable at the pack time; nothing was changed, pack again`,
      );
    }
  }

  /** Keep the revision an undo after the pack time points back to (`back`), and follow what it refers to. */
  private async keepBackTarget(oid: Buffer, back: number, extraRoots: Array<{ oid: Buffer; pos: number }>, referencesOf: ReferencesOf): Promise<void> {
    const key = oidKey(oid);
    // Unreachable at the pack time (ZODB keeps the target alone): reachable now, with its revision then.
    if (!this.reachable.first.has(key)) await this.markFrom([oid], referencesOf, true);
    if (!this.reachable.first.has(key)) {
      // No revision at the pack time (its creation was undone): the target is the one kept.
      this.reachable.first.set(key, back);
      extraRoots.push({ oid, pos: back });
      return;
    }
    if (this.reachable.first.get(key) === back) return;
    const list = this.reachable.extra.get(key) ?? [];
    if (!list.includes(back)) {
      list.push(back);
      this.reachable.extra.set(key, list);
      extraRoots.push({ oid, pos: back });
    }
  }

  /**
   * Mark every object reachable from `roots` through revisions current at
   * the pack time. `later`: the roots come from after the pack time, where
   * an object may have no revision at the pack time (created after it, or
   * its creation undone): skipped, as its later records are copied anyway.
   */
  private async markFrom(roots: Buffer[], referencesOf: ReferencesOf, later = false): Promise<void> {
    const todo = [...roots];
    while (todo.length) {
      // Each object is a read and a pickle walk: a large graph, walked in one go, would hold up every commit and
      // the node's replication (heartbeats, acks) for as long. A close meanwhile stops the pack here.
      if (++this.marked % MARKS_PER_TURN === 0) {
        this.onProgress?.({ step: 'references', done: Math.min(this.marked, this.objectsAtPack), total: this.objectsAtPack });
        await turn();
        if (this.storage.packsStopped) throw new StorageClosedError(this.storage.path);
      }
      const oid = todo.pop()!;
      const key = oidKey(oid);
      if (this.reachable.first.has(key)) continue;
      const pos = this.current.get(key);
      if (pos === undefined) {
        if (later) continue;
        // Packing to before the root existed keeps everything; a dangling reference is an error (as ZODB).
        if (oid.equals(Z64) && this.current.size === 0) continue;
        throw new GarbageCollectionError(`${this.storage.path}: oid 0x${oid.toString('hex')} is referenced but has no revision at the pack time`);
      }
      this.reachable.first.set(key, pos);
      for (const ref of this.refsAt(pos, referencesOf, oid, 'current at the pack time')) if (!this.reachable.first.has(oidKey(ref))) todo.push(ref);
    }
  }

  /** The references of the record at `pos` (of `oid`, `when` in words); one that cannot be read is named. */
  private refsAt(pos: number, referencesOf: ReferencesOf, oid: Buffer, when: string): Buffer[] {
    const data = this.src.resolve(pos);
    try {
      return data === null ? [] : referencesOf(data);
    } catch (err) {
      throw new GarbageCollectionError(`${this.storage.path}: the record of oid 0x${oid.toString('hex')} at ${pos}, ${when}, cannot be read for references: ${(err as Error).message}`, {
        cause: err,
      });
    }
  }

  // ------------------------------------------------------------ copying

  /**
   * Transactions up to the pack time, each with the revisions still
   * reachable (data inline, status 'p'); one left with none is dropped (as ZODB does), except the
   * file's last (`end`): its tid stays the storage's last, which never goes
   * back (its secondaries hold it, and its hash chain link).
   */
  private async copyBeforePack(o: Output, end: number): Promise<void> {
    let pos = MAGIC_BYTES;
    this.lastTid = null;
    while (pos < this.packPos) {
      const txn = await this.txnAt(pos, this.packPos, this.lastTid);
      this.lastTid = Buffer.from(txn.header.tid);
      let header: Buffer | null = null;
      let tpos = 0;
      const keptOids = new Set<OidKey>();
      const removedBlobs: BlobRevision[] = [];
      for (let rpos = txn.recordsStart; rpos < txn.recordsEnd; ) {
        const h = await this.src.recordAt(txn, rpos);
        const key = oidKey(h.oid);
        const len = dataRecordLength(h.plen);
        if (!this.reachable.has(key, rpos)) {
          // Kept: the files of removed blob revisions are another node's to remove.
          if (this.blobFiles === 'deleted') await this.noteRemovedBlob(h, rpos, removedBlobs);
          else if (this.blobFiles === 'none') await this.refuseBlobRemoval(h, rpos);
          rpos += len;
          continue;
        }
        if (header === null) {
          tpos = o.pos;
          header = await this.txnHeaderCopy(txn, STATUS_PACKED);
          o.write(header);
        }
        keptOids.add(key);
        const data = h.plen > 0 ? await this.src.view(rpos + DATA_HEADER_BYTES, h.plen) : this.src.resolve(rpos);
        this.moved.set(rpos, o.pos);
        this.newIndex.set(key, o.pos);
        this.writeRecord(o, h, 0, tpos, data, 0);
        rpos += len;
      }
      // A duplicate record of a kept revision (same oid and tid) shares its blob file.
      for (const b of removedBlobs) if (!keptOids.has(oidKey(b.oid))) this.blobRemovals.push(b);
      if (header === null && txn.next === end) {
        tpos = o.pos;
        header = await this.txnHeaderCopy(txn, STATUS_PACKED);
        o.write(header);
      }
      if (header !== null) this.finishTxn(o, header, tpos);
      pos = txn.next;
    }
  }

  /**
   * Transactions from `from` to `to`, after the pack time: copied whole, with
   * prev, tloc and backpointers moved to the new offsets. Returns how many;
   * each record's oid and old position go to `records`, when given.
   */
  private async copyAfterPack(o: Output, from: number, to: number, records: Array<{ oid: Buffer; rpos: number }> | null = null): Promise<number> {
    let count = 0;
    for (let pos = from; pos < to; count++) {
      const txn = await this.txnAt(pos, to, this.lastTid);
      this.lastTid = Buffer.from(txn.header.tid);
      const tpos = o.pos;
      const header = await this.txnHeaderCopy(txn, txn.header.status);
      o.write(header);
      const written = new Map<OidKey, number>();
      for (let rpos = txn.recordsStart; rpos < txn.recordsEnd; ) {
        const h = await this.src.recordAt(txn, rpos);
        const len = dataRecordLength(h.plen);
        const key = oidKey(h.oid);
        records?.push({ oid: Buffer.from(h.oid), rpos });
        const prev = this.newIndex.get(key) ?? 0;
        const here = o.pos;
        written.set(key, here);
        if (h.plen > 0) this.writeRecord(o, h, prev, tpos, await this.src.view(rpos + DATA_HEADER_BYTES, h.plen), 0);
        else {
          const back = await this.src.backAt(rpos);
          // Checked from this record (backwards, the same object), whether its target stays or goes.
          if (back !== 0) this.src.resolve(rpos);
          const target = back === 0 ? 0 : this.newOffset(back);
          // A backpointer whose target was removed gets the data itself.
          if (target === null) this.writeRecord(o, h, prev, tpos, this.src.resolve(rpos), 0);
          else this.writeRecord(o, h, prev, tpos, null, target);
        }
        // Records after this one move by the new difference (only an inlined backpointer changes it).
        if (o.pos - here !== len) this.shifts.set(rpos + len, o.pos - (rpos + len));
        rpos += len;
      }
      // As ZODB: prev pointers follow the index as of the previous transaction.
      for (const [k, p] of written) this.newIndex.set(k, p);
      this.finishTxn(o, header, tpos);
      pos = txn.next;
    }
    return count;
  }

  /** New offset of the record at old offset `back`, or null when pack removed it. */
  private newOffset(back: number): number | null {
    if (back < this.packPos) return this.moved.get(back) ?? null;
    return this.shifts.map(back);
  }

  /** Header and metadata of `txn` with `status`; tlen is set by finishTxn. */
  private async txnHeaderCopy(txn: TxnAt, status: string): Promise<Buffer> {
    const metaBytes = txn.recordsStart - txn.pos;
    const buf = Buffer.alloc(metaBytes);
    writeTxnHeader(buf, 0, { ...txn.header, status, length: 0 });
    (await this.src.view(txn.pos + TXN_HEADER_BYTES, metaBytes - TXN_HEADER_BYTES)).copy(buf, TXN_HEADER_BYTES);
    return buf;
  }

  private finishTxn(o: Output, header: Buffer, tpos: number): void {
    const tlen = o.pos - tpos;
    o.patchU64(header, tpos, 8, tlen);
    const trailer = Buffer.alloc(TRAILER_BYTES);
    writeU64At(trailer, 0, tlen);
    o.write(trailer);
  }

  /** One data record: `data` inline when given (non-empty), else the backpointer `back`. */
  private writeRecord(o: Output, h: DataHeader, prev: number, tloc: number, data: Buffer | null, back: number): void {
    const inline = data !== null && data.length > 0;
    const head = Buffer.alloc(DATA_HEADER_BYTES + (inline ? 0 : BACKPOINTER_BYTES));
    writeDataHeader(head, 0, { oid: h.oid, tid: h.tid, prev, tloc, vlen: 0, plen: inline ? data.length : 0 });
    if (!inline) writeU64At(head, DATA_HEADER_BYTES, back);
    o.write(head);
    if (inline) o.write(data);
  }

  // ------------------------------------------------------------ blobs

  /** A removed blob revision without the blob directory: its file would stay in a directory this storage does not know of, for good. */
  private async refuseBlobRemoval(h: DataHeader, rpos: number): Promise<void> {
    if (h.plen > 0 && isBlobRecord(await this.src.view(rpos + DATA_HEADER_BYTES, h.plen))) {
      throw new PackError(
        `${this.storage.path}: the pack removes a revision of blob oid 0x${h.oid.toString('hex')} (tid ${h.tid.toString('hex')}), and the storage was opened without its blob directory: give it (blobDir, zrs pack --blob-dir DIR), so the blob files of removed revisions go with them; nothing was packed`,
      );
    }
  }

  /** A removed revision may own a blob file: note it (removed only once the new file is in place). */
  private async noteRemovedBlob(h: DataHeader, rpos: number, into: BlobRevision[]): Promise<void> {
    // Cheap filter first: a blob record's pickle names ZODB.blob (a backpointer is checked by its file).
    if (h.plen > 0 && !(await this.src.view(rpos + DATA_HEADER_BYTES, h.plen)).includes(BLOB_CLASS_MARK)) return;
    into.push({ oid: Buffer.from(h.oid), tid: Buffer.from(h.tid) });
  }

  /**
   * Delete blob files of removed revisions, then directories left empty.
   * The packed file is in place: a file that cannot be deleted is counted,
   * not thrown, and the rest are deleted all the same.
   */
  private async removeBlobs(): Promise<Pick<PackReport, 'removedBlobFiles' | 'blobFilesNotRemoved' | 'blobRemovalError'>> {
    const report = { removedBlobFiles: 0, blobFilesNotRemoved: 0, blobRemovalError: null as string | null };
    const blobs = this.storage.blobs;
    if (!blobs || this.blobRemovals.length === 0) return report;
    const dirs = new Set<string>();
    const failed = (err: unknown): void => {
      report.blobFilesNotRemoved++;
      report.blobRemovalError ??= (err as Error).message;
    };
    for (const b of this.blobRemovals) {
      try {
        await unlink(blobs.pathFor(b.oid, b.tid));
        report.removedBlobFiles++;
        dirs.add(blobs.oidDir(b.oid));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') failed(err);
      }
    }
    // Under the commit lock no vote is placing a blob, so an empty directory stays empty.
    const release = await this.storage.acquireCommitLock();
    try {
      for (const dir of dirs) await removeEmptyDirs(dir, blobs.root).catch((err: unknown) => (report.blobRemovalError ??= (err as Error).message));
    } finally {
      release();
    }
    return report;
  }
}

/** Remove `dir` and its parents up to (not including) `root` while they are empty. */
async function removeEmptyDirs(dir: string, root: string): Promise<void> {
  for (let d = dir; d.length > root.length && d.startsWith(root); d = dirname(d)) {
    const entries = await readdir(d).catch(() => null);
    if (entries === null || entries.length > 0) return;
    await rmdir(d).catch(() => undefined);
  }
}
