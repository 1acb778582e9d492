// A ZODB-compatible FileStorage: an append-only transaction log (Data.fs)
// with an in-memory oid index, two-phase commit, MVCC reads and group commit.
// Invariants: tids strictly increase in file order; a transaction is visible
// to readers only after its final status byte is written, and reported
// committed (tpcFinish, commits$) only once it is durable.

import { closeSync, ftruncateSync, fstatSync, openSync, writeSync, fsyncSync } from 'node:fs';
import { open as openHandle, access, link, rename, rm, stat } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { Subject, type Observable } from 'rxjs';
import {
  ConflictError,
  CorruptedDataError,
  FormatError,
  NoSuchStorageError,
  POSKeyError,
  ReadOnlyError,
  StorageClosedError,
  StorageWriteError,
  StorageTransactionError,
  ZrsError,
  runEach,
} from '../errors.js';
import { dumps, loads, type PickleValue } from '../wire/pickle.js';
import {
  BACKPOINTER_BYTES,
  DATA_HEADER_BYTES,
  MAGIC_BYTES,
  MAGIC_FS21,
  MAGIC_FS30,
  STATUS_CHECKPOINT,
  STATUS_COMMITTED,
  TRAILER_BYTES,
  TXN_HEADER_BYTES,
  compareIds,
  compareIdsAt,
  copyId,
  dataRecordLength,
  readDataHeader,
  readTxnHeader,
  readU64At,
  writeTxnHeader,
  describeMagic,
  type DataHeader,
  type TxnHeader,
} from './format.js';
import { fileState, pathKind, preadSync, syncDirectory, writeFileSynced } from './fileio.js';
import { dataHolder, otherObjectError, type DataHolder } from './backpointer.js';
import { TxnBuffer } from './txnBuffer.js';
import { RecentTransactions } from './recentTxns.js';
import { RelocatedCommit, relocateTransactions, type RelocatedTxn } from './rawAppend.js';
import { GroupSync } from './groupSync.js';
import { DEFAULT_PREALLOCATE_BYTES, FillAhead, isFillRange, trailingFill } from './prealloc.js';
import { nodeDisk, type StorageDisk } from './disk.js';
import { loadIndex, removeIndex, saveIndex } from './indexFile.js';
import { LockFile } from './lock.js';
import type { PackOptions, PackReport } from './pack.js';
import { dataEndBefore, emptyScanState, oidKey, type OidKey, recordTransaction, scanFile, scanWhole, tailTidFloor, type ScanState } from './scan.js';
import { Z64, newTid, tidToSeconds } from './timestamp.js';
import { BlobDirectory, isBlobRecord, STALE_STAGING_MS } from './blobs.js';
import { iterateTransactions, type IterateOptions } from './iterator.js';
import { undoLog, undoTransaction } from './undo.js';
import type {
  UndoLogEntry,
  TransactionRecord,
  CommittedTransaction,
  HistoryEntry,
  LoadBeforeResult,
  LoadResult,
  OpenOptions,
  TpcBeginOptions,
  TransactionMeta,
} from './types.js';

/** Longest user / description / extension a transaction header can carry (u16 lengths). */
export const MAX_META_BYTES = 0xffff;

/** Committed transactions up to this size are published on commits$ with a copy of their bytes. */
const PUBLISHED_RAW_MAX_BYTES = 256 * 1024;

interface PendingBlob {
  oid: Buffer;
  /** Staged file inside the blob directory's tmp area. */
  stagedPath: string;
  /** Committed path once the vote placed it. */
  placedPath: string | null;
}

interface PendingTxn {
  txn: TransactionMeta;
  tid: Buffer;
  status: string;
  user: Buffer;
  description: Buffer;
  extension: Buffer;
  /** Header plus metadata bytes. */
  metaBytes: number;
  /** Where the transaction header goes (the committed end at tpcBegin). */
  tpos: number;
  body: TxnBuffer;
  /** oid key -> absolute position of this transaction's record for it (in the order first stored). */
  tindex: Map<OidKey, number>;
  /** oid key -> the record an undo in this transaction pointed it back to (0: none), while that undo's record is its latest here. */
  undoneTo: Map<OidKey, number>;
  /** Committed transactions restore() pointed into (by position): their records read once, not once per record restored. */
  dataTxns: Map<number, Map<OidKey, LastRecord>> | null;
  blobs: PendingBlob[];
  /** tpcVote wrote the transaction's bytes (or found none to write): nothing more may be stored, and an abort cuts them. */
  written: boolean;
  /** Its tid was given (a restore or replication): written even when it holds no record, as the file it mirrors holds it. */
  tidGiven: boolean;
  /** The vote finished (its blobs are placed): tpcFinish may follow. */
  voted: boolean;
  /** A vote placing its blobs, until it settles. */
  voting: Promise<void> | null;
  /** Set when part of it could not be done (a blob that could not be moved or copied in): it can only be aborted. */
  doomed: Error | null;
  /** storeBlob, restoreBlob and undo calls still moving or copying their blobs in: a vote must wait for them (the caller's to do). */
  staging: number;
  release: () => void;
}

/**
 * A new transaction (its tid chosen here) that stored nothing: as ZODB's FileStorage, its vote and finish
 * write nothing, so the file (and a zc.zrs secondary's) never holds one. Nothing can be stored once voted.
 */
function writesNothing(cur: PendingTxn): boolean {
  return !cur.tidGiven && cur.tindex.size === 0;
}

/** An object's last record in a transaction (see FileStorage.lastRecordsIn). */
export interface LastRecord {
  oid: Buffer;
  pos: number;
  prev: number;
  plen: number;
}

/** Scans a read-only open makes of a file that changed while it read (another process writing it) before it reports damage. */
const READ_ONLY_OPEN_ATTEMPTS = 5;
/** A tail cut on open is read and kept this much at a time. */
const TAIL_PIECE_BYTES = 16 << 20;

/** What commits$ publishes for a transaction finished here; its oid list is made when first asked for. */
class FinishedCommit implements CommittedTransaction {
  #oids: Buffer[] | null = null;

  constructor(
    readonly tid: Buffer,
    readonly status: string,
    readonly pos: number,
    readonly end: number,
    /** The oids, 8 bytes each, one after another. */
    private readonly oidBytes: Buffer,
    readonly raw: Buffer | undefined,
  ) {}

  get oids(): Buffer[] {
    this.#oids ??= Array.from({ length: this.oidBytes.length / 8 }, (_, i) => this.oidBytes.subarray(8 * i, 8 * i + 8));
    return this.#oids;
  }
}

/** FIFO mutex: one transaction commits at a time, others wait their turn. */
class CommitLock {
  private held = false;
  private readonly waiters: Array<(release: () => void) => void> = [];

  /** Someone holds the lock (or waits for it). */
  get busy(): boolean {
    return this.held;
  }

  acquire(): Promise<() => void> {
    if (!this.held) {
      this.held = true;
      return Promise.resolve(this.releaser());
    }
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** A release function for one holder; calling it again does nothing. */
  private releaser(): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.waiters.shift();
      if (next) next(this.releaser());
      else this.held = false;
    };
  }
}

function metaBytes(name: string, b: Buffer): Buffer {
  if (b.length > MAX_META_BYTES) throw new ZrsError(`tpcBegin: ${name} is ${b.length} bytes, limit ${MAX_META_BYTES}`);
  return b;
}

const STATUS_BYTES = new Map<string, Buffer>();

/** The one-byte buffer holding a transaction status (shared, never written to). */
function statusByte(status: string): Buffer {
  let b = STATUS_BYTES.get(status);
  if (b === undefined) STATUS_BYTES.set(status, (b = Buffer.from(status, 'latin1')));
  return b;
}

const NO_BYTES = Buffer.alloc(0);

function toBytes(v: string | Buffer | undefined): Buffer {
  if (v === undefined || v === '') return NO_BYTES;
  return typeof v === 'string' ? Buffer.from(v, 'utf8') : v;
}

function encodeExtension(txn: TransactionMeta): Buffer {
  if (txn.extensionBytes) return txn.extensionBytes;
  const ext = txn.extension ?? {};
  // ZODB stores an empty extension dict as zero bytes.
  return Object.keys(ext).length === 0 ? NO_BYTES : dumps(ext, { protocol: 3 });
}

/** Decode an extension pickle; an empty one is `{}`. */
export function decodeExtension(bytes: Buffer): Record<string, PickleValue> {
  if (bytes.length === 0) return {};
  const v = loads(bytes);
  if (v instanceof Map) return Object.fromEntries(v);
  throw new CorruptedDataError('extension', 0, 'transaction extension is not a pickled dict');
}

/**
 * The extension as undoLog and history list it: empty when it cannot be read
 * here (a pickle with globals, say a datetime, outside the safe subset), as
 * ZODB's undo search does, rather than failing the whole listing.
 */
function listedExtension(bytes: Buffer): Record<string, PickleValue> {
  try {
    return decodeExtension(bytes);
  } catch {
    return {};
  }
}

/** Record data longer than this is checked against the file's size before it is read (shorter data costs nothing to read short). */
const LARGE_RECORD_READ_BYTES = 1 << 20;

/** An unfinished transaction cut from the end of a data file when it was opened. */
export interface TailCut {
  /** Where it began: the file's length now. */
  position: number;
  bytes: number;
  /** The `<file>.trN` file holding its bytes, as ZODB keeps them. */
  keptIn: string;
  /** What was wrong with it: still marked in progress, cut short, not wholly written, or damaged. */
  reason: string;
  /**
   * Bytes cut after that transaction's own end, by its header's length (0
   * when it was the last, or when its length cannot be read): the open cuts
   * from the first transaction it cannot take to the end of the file.
   */
  bytesAfter: number;
}

/** Bytes between the end of the transaction at `pos`, by its header's length, and `end`; 0 when that length cannot be read or reaches `end`. */
function bytesAfterTransactionAt(fd: number, pos: number, end: number): number {
  if (pos + TXN_HEADER_BYTES > end) return 0;
  const length = readU64At(preadSync(fd, pos + 8, 8), 0);
  const txnEnd = pos + length + TRAILER_BYTES;
  return length >= TXN_HEADER_BYTES && txnEnd < end ? end - txnEnd : 0;
}

function noSuchFile(path: string, readOnly: boolean): ZrsError {
  return new NoSuchStorageError(path, readOnly ? '' : 'pass create: true to make one');
}

export class FileStorage {
  private readonly commitLock = new CommitLock();
  /** The bytes of the transaction in progress (one at a time, so one buffer). */
  private readonly txnBuffer = new TxnBuffer();
  private readonly commitsSubject = new Subject<CommittedTransaction>();
  /** Committed transactions as they become durable, in tid order. */
  readonly commits$: Observable<CommittedTransaction> = this.commitsSubject.asObservable();
  private current: PendingTxn | null = null;
  private closed = false;
  /**
   * Set by failWrites, with what failed (`fatalWhat`): a failed fsync leaves
   * the file's durability unknown, a failed commit mark its state, a failed
   * directory sync after a swap which file the name holds. Writes are
   * refused from then on.
   */
  private fatal: Error | null = null;
  private fatalWhat = '';
  private groupSync: GroupSync;
  /**
   * Committed transactions not yet published, oldest first, from
   * `unpublishedHead` on; the slots before it are emptied as they are
   * published (an entry may hold a view of a megabyte of received bytes).
   */
  private unpublished: Array<CommittedTransaction | undefined> = [];
  /**
   * First unpublished entry. An index rather than shift(): a run of
   * thousands appended at once is published one shift at a time otherwise,
   * and a subscriber that commits publishes through the same index.
   */
  private unpublishedHead = 0;
  private publishedEnd: number;
  private publishedTid: Buffer;
  /** Set by closeForWrites(): new transactions are refused, reads go on. */
  private writesClosed = false;
  /** The largest oid handed out or stored: newOid returns the one after it. */
  private lastOid: Buffer;
  /** Wakes iterators that follow the file as it grows. */
  private growthWaiters: Array<() => void> = [];
  private epoch = 0;
  /** Record position -> tid for recent writes, so conflict checks skip a read. */
  private readonly recentTxns = new RecentTransactions();
  /** Fill written ahead of the end for commits to overwrite (see prealloc.ts). */
  private fillAhead: FillAhead;

  /**
   * The last transaction this open cut from the end of the file (unfinished
   * or damaged, with nothing intact after it: what a crash during its commit
   * leaves), kept in `keptIn`; null when there was none.
   */
  tailCutOnOpen: TailCut | null = null;

  /**
   * Where the open's scan stopped before the end of the data, and why (an
   * unfinished or damaged transaction), or null when it read to the end. A
   * read-only open cuts nothing, so the bytes from there on stay unread.
   */
  unreadTailOnOpen: { pos: number; reason: string } | null = null;

  /**
   * The bytes of a pack's unfinished output (`<path>.pack`) this open
   * removed: what a process stopped in the middle of a pack leaves (no other
   * process can be packing: this one holds the lock). Null when there was none.
   */
  stalePackRemovedOnOpen: number | null = null;

  private constructor(
    readonly path: string,
    private fd: number,
    private handle: FileHandle,
    private lock: LockFile | null,
    private state: ScanState,
    /** End of the committed transactions: where the next one is written. */
    private end: number,
    readonly readOnly: boolean,
    private readonly fsync: boolean,
    private readonly now: () => number,
    readonly magic: string,
    readonly blobs: BlobDirectory | null,
    /** New tids stay above it: the tid of a cut unfinished transaction, or the last one given to a transaction that wrote nothing. */
    private tidFloor: Buffer | null,
    /** The data file's writes, truncation and datasync (node:fs unless injected). @internal */
    readonly disk: StorageDisk,
    /** See OpenOptions.syncInline. */
    private readonly syncInline: boolean,
    /** See OpenOptions.preallocate. */
    private readonly preallocateBytes: number,
  ) {
    this.publishedEnd = end;
    this.publishedTid = Buffer.from(state.lastTid ?? Z64);
    this.groupSync = new GroupSync(fd, end, () => this.end, disk, this.secondDescriptor());
    this.lastOid = Buffer.from(state.maxOid);
    this.fillAhead = new FillAhead(disk, fd, end, preallocateBytes);
  }

  /**
   * Open (or create) a FileStorage.
   *
   * @example
   * const fs = await FileStorage.open('/var/db/Data.fs', { create: true });
   * const txn = { user: 'alice', description: 'first' };
   * await fs.tpcBegin(txn);
   * fs.store(fs.newOid(), Z64, Buffer.from('data'), txn);
   * await fs.tpcVote(txn);
   * const tid = await fs.tpcFinish(txn);
   */
  static async open(path: string, options: OpenOptions = {}): Promise<FileStorage> {
    const readOnly = options.readOnly ?? false;
    if (options.stopAtDamage && !readOnly) throw new ZrsError('stopAtDamage needs readOnly: a writable open never cuts past damage');
    // Refused before the lock is taken, so a mistyped path leaves no lock file behind.
    const kind = await pathKind(path);
    if (kind === 'missing' && (!options.create || readOnly)) throw noSuchFile(path, readOnly);
    // A pack swaps its output in by renames: a crash between them (Python ZODB renames the data file away
    // first) leaves the packed data under .pack and no data file. Created empty, the node would start from nothing.
    // To start empty (create 'truncate') is to discard it: it goes as any leftover of a pack does.
    if (kind === 'missing' && options.create !== 'truncate' && (await pathKind(`${path}.pack`)) === 'file') {
      throw new ZrsError(
        `${path}: missing, but ${path}.pack (a pack's output) is there: a pack that renames the data file away before renaming its output in (Python ZODB's) leaves the packed data only there when stopped between the two; rename ${path}.pack to ${path} (or ${path}.old, the file before that pack, if it is there), or remove it to start empty, and open again`,
      );
    }
    if (kind === 'directory') throw new ZrsError(`${path}: a directory, not a storage file`);
    if (kind === 'other') throw new ZrsError(`${path}: not a regular file (a storage is one)`);
    // Named here, not by the lock file's ENOENT.
    if (kind === 'missing' && (await pathKind(dirname(path))) !== 'directory') {
      throw new ZrsError(`${path}: cannot create it: directory ${dirname(path)} does not exist`);
    }
    const lock = readOnly ? null : LockFile.acquire(`${path}.lock`);
    try {
      return await FileStorage.openLocked(path, options, readOnly, lock, kind !== 'missing');
    } catch (err) {
      lock?.release();
      throw err;
    }
  }

  private static async openLocked(
    path: string,
    options: OpenOptions,
    readOnly: boolean,
    lock: LockFile | null,
    exists: boolean,
  ): Promise<FileStorage> {
    const truncate = options.create === 'truncate' && !readOnly;
    const fd = openSync(path, readOnly ? 'r' : exists && !truncate ? 'r+' : 'w+');
    let handle: FileHandle | null = null;
    try {
      if (fstatSync(fd).size === 0 && !readOnly) {
        writeSync(fd, MAGIC_FS30, 0, MAGIC_BYTES, 0);
        fsyncSync(fd);
        // A new file's name is durable before its first commit can be reported durable.
        if (!exists || truncate) await syncDirectory(dirname(path));
      }
      const magic = preadSync(fd, 0, MAGIC_BYTES);
      if (!magic.equals(MAGIC_FS30) && !magic.equals(MAGIC_FS21)) {
        throw new FormatError(path, `not a FileStorage file (magic ${describeMagic(magic)})`);
      }
      handle = await openHandle(path, 'r');
      const now = options.now ?? Date.now;
      const { state, end, tailTid, tailCut, tail } = await FileStorage.recover(path, fd, handle, readOnly, now, options.stopAtDamage === true);
      const blobs = options.blobDir ? await BlobDirectory.open(options.blobDir, { create: !readOnly, staleBeforeMs: now() - STALE_STAGING_MS }) : null;
      const storage = new FileStorage(
        path,
        fd,
        handle,
        lock,
        state,
        end,
        readOnly,
        options.fsync ?? true,
        now,
        magic.toString('latin1'),
        blobs,
        tailTid,
        options.disk ?? nodeDisk,
        options.syncInline ?? true,
        readOnly ? 0 : preallocateOption(options),
      );
      storage.tailCutOnOpen = tailCut;
      storage.unreadTailOnOpen = tail;
      if (!readOnly && (exists || truncate)) storage.stalePackRemovedOnOpen = await removeStalePack(`${path}.pack`);
      return storage;
    } catch (err) {
      await handle?.close();
      closeSync(fd);
      throw err;
    }
  }

  /**
   * Load the saved index (or scan), and cut an unfinished tail and any fill
   * past the last transaction (see prealloc.ts) unless read-only.
   */
  private static async recover(
    path: string,
    fd: number,
    handle: FileHandle,
    readOnly: boolean,
    now: () => number,
    stopAtDamage: boolean,
  ): Promise<{ state: ScanState; end: number; tailTid: Buffer | null; tailCut: TailCut | null; tail: { pos: number; reason: string } | null }> {
    for (let attempt = 1; ; attempt++) {
      const before = fileState(fd);
      try {
        return await FileStorage.recoverFrom(path, fd, handle, readOnly, before.size, now, stopAtDamage);
      } catch (err) {
        // Read-only, the file may be another process's, written meanwhile: past the end seen at first an
        // abort or a close cuts bytes back and commits follow, and what was read there reads as damage.
        // Only a file that held still while it was read is reported damaged.
        if (!readOnly || !(err instanceof CorruptedDataError) || attempt >= READ_ONLY_OPEN_ATTEMPTS) throw err;
        if (fileState(fd).version === before.version) throw err;
      }
    }
  }

  private static async recoverFrom(
    path: string,
    fd: number,
    handle: FileHandle,
    readOnly: boolean,
    size: number,
    now: () => number,
    stopAtDamage: boolean,
  ): Promise<{ state: ScanState; end: number; tailTid: Buffer | null; tailCut: TailCut | null; tail: { pos: number; reason: string } | null }> {
    const saved = await loadIndex(path, fd, size);
    const from = saved ? saved.end : MAGIC_BYTES;
    // Fill at the end means the file was written with preallocation and not
    // closed; the scan stops there (and cuts any transaction a torn sync left
    // with fill inside it, wherever the fill ends).
    const fillStart = await trailingFill(handle, from, size);
    const hadFill = fillStart < size;
    // The data may end up to 7 bytes before the whole words of fill (those bytes are fill too, not a
    // truncated header), or inside the first of them (its last bytes happening to be the fill's).
    const dataEnd = hadFill ? Math.max(from, await dataEndBefore(handle, fillStart, size)) : size;
    const result = await scanFile(handle, path, from, dataEnd, saved ?? emptyScanState(), stopAtDamage);
    // New tids must also pass an unfinished transaction's tid, so no tid
    // (or blob file name) that may have been seen is ever reused.
    const tailTid = result.tail ? tailTidFloor(fd, result.tail.pos, dataEnd, result.lastTid, hadFill, now()) : null;
    // An unfinished tail, or fill alone past the last transaction (kept in no side file).
    const tailCut =
      (result.tail || hadFill) && !readOnly
        ? await FileStorage.cutTail(path, fd, result.end, Math.max(fillStart, result.end), hadFill, result.tail?.reason ?? 'bytes after the last transaction', dataEnd)
        : null;
    return { state: result, end: result.end, tailTid, tailCut, tail: result.tail };
  }

  /**
   * Keep the unfinished tail up to `keepEnd` in `<file>.trN` (as ZODB does),
   * then truncate. With fill past `keepEnd` (`hadFill`), the tail may end with
   * up to 7 bytes of it (fill written after a transaction that ends inside a
   * word), and nothing is kept when the tail is only fill. `dataEnd`: where
   * the data ends (before any fill), for `bytesAfter`.
   */
  private static async cutTail(path: string, fd: number, pos: number, keepEnd: number, hadFill: boolean, reason: string, dataEnd: number): Promise<TailCut | null> {
    // Read a piece at a time: a tail may be longer than a buffer can be (a crash while a huge transaction was written).
    const pieces = function* (): Generator<Buffer> {
      for (let at = pos; at < keepEnd; at += TAIL_PIECE_BYTES) yield preadSync(fd, at, Math.min(TAIL_PIECE_BYTES, keepEnd - at));
    };
    let cut: TailCut | null = null;
    let onlyFill = hadFill;
    if (hadFill) {
      let at = pos;
      for (const piece of pieces()) {
        onlyFill = isFillRange(piece, at);
        if (!onlyFill) break;
        at += piece.length;
      }
    }
    if (!onlyFill) {
      let n = 0;
      while (await access(`${path}.tr${n}`).then(() => true, () => false)) n++;
      // What lies after the transaction cut is counted up to the end of the data: not the fill bytes a tail may end with.
      cut = { position: pos, bytes: keepEnd - pos, keptIn: `${path}.tr${n}`, reason, bytesAfter: bytesAfterTransactionAt(fd, pos, Math.min(dataEnd, keepEnd)) };
      await writeFileSynced(cut.keptIn, pieces(), 'wx');
      // The side file's name is durable before the bytes it keeps are cut from the data file.
      await syncDirectory(dirname(path));
    }
    ftruncateSync(fd, pos);
    fsyncSync(fd);
    await removeIndex(path);
    return cut;
  }

  // ---------------------------------------------------------------- writes

  private checkWritable(operation: string): void {
    // Both begin a transaction: closed to writes (or closing) means closed to either.
    const begins = operation === 'tpcBegin' || operation === 'appendTransactions';
    // A transaction still waiting to begin when close() was called never begins.
    // Closed to writes is a close under way (a primary draining), not a read-only storage.
    if (this.closed || ((this.closing !== null || this.writesClosed) && begins)) throw new StorageClosedError(this.path);
    if (this.readOnly) throw new ReadOnlyError(operation, this.path);
    if (this.fatal) throw new ZrsError(`${this.path}: writes disabled after ${this.fatalWhat}`, { cause: this.fatal });
  }

  private pending(txn: TransactionMeta, operation: string): PendingTxn {
    this.checkWritable(operation);
    const cur = this.current;
    if (cur === null || cur.txn !== txn) {
      throw new StorageTransactionError(`${operation}: not the transaction in progress`);
    }
    return cur;
  }

  /** A new, never-used oid. */
  newOid(): Buffer {
    this.checkWritable('newOid');
    // Past the largest oid there is none: wrapping would hand out oid 0, the root (ZODB raises too).
    if (this.lastOid.every((b) => b === 0xff)) throw new ZrsError(`${this.path}: no oid is left after 0xffffffffffffffff`);
    const oid = Buffer.from(this.lastOid);
    for (let i = 7; i >= 0 && ++oid[i]! === 256; i--) oid[i] = 0; // big-endian increment
    this.lastOid = oid;
    return Buffer.from(oid);
  }

  /** Begin a transaction; waits while another one commits. */
  async tpcBegin(txn: TransactionMeta, options: TpcBeginOptions = {}): Promise<void> {
    this.checkWritable('tpcBegin');
    if (this.current?.txn === txn) throw new StorageTransactionError('tpcBegin: transaction already begun');
    const user = metaBytes('user', toBytes(txn.user));
    const description = metaBytes('description', toBytes(txn.description));
    const extension = metaBytes('extension', encodeExtension(txn));
    const status = options.status ?? STATUS_COMMITTED;
    if (status.length !== 1 || status === STATUS_CHECKPOINT) throw new ZrsError(`tpcBegin: invalid status ${JSON.stringify(status)}`);
    if (this.waitingBegins.has(txn)) throw new StorageTransactionError('tpcBegin: transaction already waiting to begin');
    const waiting = { aborted: false };
    this.waitingBegins.set(txn, waiting);
    let release: () => void;
    try {
      release = await this.commitLock.acquire();
    } finally {
      // An abort took it off already (a retry of the same transaction may wait under it now).
      if (this.waitingBegins.get(txn) === waiting) this.waitingBegins.delete(txn);
    }
    try {
      // Aborted while it waited: it must not begin (it would hold the commit lock with nobody to end it).
      if (waiting.aborted) throw new StorageTransactionError('tpcBegin: the transaction was aborted while it waited to begin');
      this.checkWritable('tpcBegin');
      const tid = this.chooseTid(options.tid);
      this.txnBuffer.reset(TXN_HEADER_BYTES + user.length + description.length + extension.length);
      this.current = {
        txn,
        tid,
        status,
        user,
        description,
        extension,
        metaBytes: TXN_HEADER_BYTES + user.length + description.length + extension.length,
        tpos: this.end,
        body: this.txnBuffer,
        tindex: new Map(),
        undoneTo: new Map(),
        dataTxns: null,
        blobs: [],
        written: false,
        tidGiven: options.tid !== undefined,
        doomed: null,
        staging: 0,
        voted: false,
        voting: null,
        release,
      };
    } catch (err) {
      release();
      throw err;
    }
  }

  private chooseTid(requested: Buffer | undefined): Buffer {
    const last = this.state.lastTid;
    if (requested === undefined) {
      const floor = this.tidFloor && (!last || Buffer.compare(this.tidFloor, last) > 0) ? this.tidFloor : last;
      return newTid(this.now(), floor);
    }
    if (requested.length !== 8) throw new ZrsError(`tpcBegin: tid must be 8 bytes, got ${requested.length}`);
    if (last && Buffer.compare(requested, last) <= 0) {
      throw new StorageTransactionError(
        `tpcBegin: tid ${requested.toString('hex')} is not after the last transaction ${last.toString('hex')}`,
      );
    }
    return Buffer.from(requested);
  }

  /**
   * Current record position for an oid (committed, not this transaction's).
   * An oid of another length is one the storage does not have, as in ZODB;
   * one that is not bytes at all is the caller's mistake.
   */
  private committedPos(oid: Buffer): number | undefined {
    if (!Buffer.isBuffer(oid)) throw new ZrsError(`oid must be 8 bytes (a Buffer), got ${kindOf(oid)}`);
    return this.state.index.get(oidKey(oid));
  }

  /** `prev`: the oid's committed record position when the caller already looked it up. */
  private append(cur: PendingTxn, oid: Buffer, data: Buffer | null, back: number, key = oidKey(oid), prev = this.state.index.get(key)): number {
    const pos = cur.tpos + cur.body.appendRecord(oid, cur.tid, prev ?? 0, cur.tpos, data, back);
    // As ZODB's store/restore (set_max_oid): newOid never hands out an oid stored explicitly.
    if (compareIds(oid, this.lastOid) > 0 && cur.tindex.get(key) === undefined) this.lastOid = copyId(oid);
    cur.tindex.set(key, pos);
    cur.undoneTo.delete(key);
    return pos;
  }

  /** Serial (tid) of the record at `pos`, from the recent-writes cache when possible. */
  private serialAt(pos: number): Buffer {
    return this.recentTxns.serialAt(pos) ?? this.readDataHeaderAt(pos).tid;
  }

  /** Whether the record at `pos` has serial `tid`: compared in the recent-writes cache when it holds it. */
  private serialIs(pos: number, tid: Buffer): boolean {
    return this.recentTxns.serialIs(pos, tid) ?? compareIds(this.readDataHeaderAt(pos).tid, tid) === 0;
  }

  /**
   * Store a new revision of `oid`. `expectedSerial` is the tid the writer
   * read (Z64 for a new object); a different current serial is a conflict.
   */
  store(oid: Buffer, expectedSerial: Buffer, data: Buffer, txn: TransactionMeta): void {
    const cur = this.pending(txn, 'store');
    if (cur.written) throw new StorageTransactionError('store: transaction already voted');
    checkOid(oid);
    checkBytes('store: expectedSerial', expectedSerial, 8);
    data = asData('store', data);
    if (data.length === 0) throw new ZrsError('store: data must not be empty (an empty record means a backpointer)');
    const key = oidKey(oid);
    const pos = this.state.index.get(key);
    if (pos !== undefined) {
      if (!this.serialIs(pos, expectedSerial)) {
        throw new ConflictError(Buffer.from(oid), Buffer.from(expectedSerial), this.serialAt(pos));
      }
    }
    this.append(cur, oid, data, 0, key, pos);
  }

  /**
   * Write a record exactly as another storage has it (replication, copies):
   * no conflict check. With `dataTxn`, a backpointer to that transaction's
   * record of the oid is written when its data equals `data`.
   */
  restore(oid: Buffer, tid: Buffer, data: Buffer | null, dataTxn: Buffer | null, txn: TransactionMeta): void {
    const cur = this.pending(txn, 'restore');
    if (cur.written) throw new StorageTransactionError('restore: transaction already voted');
    checkOid(oid);
    checkBytes('restore: tid', tid, 8);
    if (data !== null) data = asData('restore', data);
    if (dataTxn !== null) checkBytes('restore: dataTxn', dataTxn, 8);
    if (!tid.equals(cur.tid)) throw new StorageTransactionError(`restore: record tid ${tid.toString('hex')} differs from the transaction's ${cur.tid.toString('hex')}`);
    let back = 0;
    if (dataTxn !== null) back = this.findDataRecord(cur, oid, dataTxn, data);
    if (data !== null && data.length === 0) data = null;
    this.append(cur, oid, back ? null : data, back);
  }

  /** Position of `oid`'s last record in transaction `tid` if its data matches `data`, else 0 (as ZODB's _data_find). */
  private findDataRecord(cur: PendingTxn, oid: Buffer, tid: Buffer, data: Buffer | null): number {
    const tpos = this.findTransaction(tid);
    if (tpos === null) return 0;
    // A transaction of k backpointers into one of k records read that one k times over (k^2 reads): once now.
    cur.dataTxns ??= new Map();
    let records = cur.dataTxns.get(tpos);
    if (records === undefined) cur.dataTxns.set(tpos, (records = this.lastRecordsIn(tpos)));
    const found = records.get(oidKey(oid));
    if (found === undefined) return 0;
    if (found.plen === 0) return found.pos;
    if (data === null || found.plen !== data.length) return 0;
    return preadSync(this.fd, found.pos + DATA_HEADER_BYTES, found.plen).equals(data) ? found.pos : 0;
  }

  /**
   * @internal Each object's last record in the transaction at `tpos`, in the
   * order the objects first appear there. The last is the revision the
   * transaction left (what a load sees): one transaction may hold several
   * records of an object (stored twice, or undone twice), and restore and
   * undo both go by the last.
   */
  lastRecordsIn(tpos: number): Map<OidKey, LastRecord> {
    const h = this.readTxnHeaderAt(tpos);
    const tend = tpos + h.length;
    const last = new Map<OidKey, LastRecord>();
    for (let pos = tpos + TXN_HEADER_BYTES + h.ulen + h.dlen + h.elen; pos < tend; ) {
      const d = this.readDataHeaderAt(pos);
      const key = oidKey(d.oid);
      last.set(key, { oid: last.get(key)?.oid ?? Buffer.from(d.oid), pos, prev: d.prev, plen: d.plen });
      pos += dataRecordLength(d.plen);
    }
    return last;
  }

  /**
   * Undo transaction `id` (an undo-log id or a tid) within `txn`; returns
   * the oids reverted. Throws UndoError when a later transaction changed one.
   */
  async undo(id: string | Buffer, txn: TransactionMeta): Promise<Buffer[]> {
    const cur = this.pending(txn, 'undo');
    if (cur.written) throw new StorageTransactionError('undo: transaction already voted');
    // Checked and written at once (a store, a vote or another undo must not come in between);
    // the blob copies come after, and when one fails the transaction holds an undo without its
    // blob: it can only be aborted.
    const plan = undoTransaction(this, id, txn);
    await this.whileStaging(cur, 'an undo in it failed', async () => {
      // An object undone twice in this transaction keeps only the last undo's blob.
      if (plan.redone.length > 0) await this.dropPendingBlobs(cur, plan.redone);
      for (const { oid, from } of plan.blobCopies) {
        const stagedPath = await this.stageFor(cur, 'undo', () => this.requireBlobs().stageCopy(from));
        cur.blobs.push({ oid, stagedPath, placedPath: null });
      }
    });
    return plan.oids;
  }

  /** Undoable transactions, newest first (see undo.ts). */
  async undoLog(first = 0, last = -20, filter?: (entry: UndoLogEntry) => boolean): Promise<UndoLogEntry[]> {
    this.checkOpen();
    return undoLog(this, first, last, filter);
  }

  /** @internal Position of this transaction's record for an oid, if any. */
  pendingPos(key: OidKey): number | undefined {
    return this.current?.tindex.get(key);
  }

  /**
   * @internal The record an undo earlier in the transaction in progress
   * pointed `key` back to (0 when it undid the object's creation), while
   * that undo's record is the latest for it here; undefined otherwise.
   */
  pendingUndoTarget(key: OidKey): number | undefined {
    return this.current?.undoneTo.get(key);
  }

  /** @internal Append an undo record (a backpointer) to the transaction in progress. */
  appendUndoRecord(oid: Buffer, back: number, txn: TransactionMeta): void {
    const cur = this.pending(txn, 'undo');
    const key = oidKey(oid);
    this.append(cur, oid, null, back, key);
    cur.undoneTo.set(key, back);
  }

  /** Blobs an earlier undo in the transaction in progress copied for `oids`, undone again since: dropped. */
  private async dropPendingBlobs(cur: PendingTxn, oids: readonly Buffer[]): Promise<void> {
    const keys = new Set(oids.map((oid) => oidKey(oid)));
    const dropped = cur.blobs.filter((b) => keys.has(oidKey(b.oid)));
    if (dropped.length === 0) return;
    cur.blobs = cur.blobs.filter((b) => !keys.has(oidKey(b.oid)));
    await this.blobs?.discard(dropped.map((b) => b.stagedPath));
  }

  /**
   * Store a blob revision: the file at `blobPath` is moved into the blob
   * directory. `data` must be a blob record (its class pickle
   * ZODB.blob.Blob itself, see isBlobRecord): replication, as zc.zrs and
   * ZODB's copies, carries a blob file only with such a record, and another
   * one would be stored here with a file no secondary ever gets.
   */
  async storeBlob(oid: Buffer, expectedSerial: Buffer, data: Buffer, blobPath: string, txn: TransactionMeta): Promise<void> {
    this.checkWritable('storeBlob');
    if (!isBlobRecord(data)) {
      throw new StorageTransactionError(
        `storeBlob: the record of oid 0x${oid.toString('hex')} is not a blob record (its first pickle must be the class ZODB.blob.Blob itself, as ZODB.blob.is_blob_record decides): its blob file would never reach a secondary`,
      );
    }
    this.store(oid, expectedSerial, data, txn);
    await this.stageBlob(oid, blobPath, txn, 'storeBlob');
  }

  /** Restore a blob revision (replication): like restore, plus the blob file. */
  async restoreBlob(
    oid: Buffer,
    tid: Buffer,
    data: Buffer | null,
    blobPath: string,
    dataTxn: Buffer | null,
    txn: TransactionMeta,
  ): Promise<void> {
    this.restore(oid, tid, data, dataTxn, txn);
    await this.stageBlob(oid, blobPath, txn, 'restoreBlob');
  }

  private async stageBlob(oid: Buffer, blobPath: string, txn: TransactionMeta, operation: 'storeBlob' | 'restoreBlob'): Promise<void> {
    const cur = this.pending(txn, operation);
    // The record is in the transaction already: without its file it must not commit.
    const stagedPath = await this.whileStaging(cur, `the blob file for oid 0x${oid.toString('hex')} could not be moved in`, () =>
      this.stageFor(cur, operation, () => this.requireBlobs().stage(blobPath)),
    );
    cur.blobs.push({ oid: Buffer.from(oid), stagedPath, placedPath: null });
  }

  /**
   * Run `body`, which moves or copies blob files in for `cur`, as staging:
   * a vote meanwhile is refused, and a failure (`why`) dooms the transaction.
   */
  private async whileStaging<T>(cur: PendingTxn, why: string, body: () => Promise<T>): Promise<T> {
    cur.staging += 1;
    try {
      return await body();
    } catch (err) {
      this.doom(cur, why, err);
      throw err;
    } finally {
      cur.staging -= 1;
    }
  }

  /**
   * A blob file staged for `cur`; when the transaction was aborted while
   * it was moved or copied in, the file is removed (it belongs to no
   * transaction) and this throws.
   */
  private async stageFor(cur: PendingTxn, what: string, stage: () => Promise<string>): Promise<string> {
    const stagedPath = await stage();
    if (this.current !== cur) {
      await this.blobs?.discard([stagedPath]);
      throw new StorageTransactionError(`${what}: the transaction was aborted while its blob was moved in`);
    }
    return stagedPath;
  }

  /** Mark the transaction in progress `cur` (if still in progress) as one that can only be aborted. */
  private doom(cur: PendingTxn, why: string, err: unknown): void {
    if (this.current === cur) cur.doomed ??= new ZrsError(`${this.path}: the transaction cannot commit, ${why}: ${(err as Error).message}`, { cause: err });
  }

  private requireBlobs(): BlobDirectory {
    if (!this.blobs) throw new ZrsError(`${this.path}: no blob directory configured`);
    return this.blobs;
  }

  /** First commit phase: write the transaction marked in progress ('c'). */
  async tpcVote(txn: TransactionMeta): Promise<void> {
    const cur = this.pending(txn, 'tpcVote');
    if (cur.written) throw new StorageTransactionError('tpcVote: transaction already voted');
    if (cur.doomed) throw cur.doomed;
    if (cur.staging > 0) throw new StorageTransactionError('tpcVote: a blob of this transaction is still being moved or copied in (wait for storeBlob(), restoreBlob() or undo() first)');
    if (!writesNothing(cur)) this.writeAtEnd(this.assemble(cur), cur.tpos);
    cur.written = true;
    if (cur.blobs.length) {
      cur.voting = this.placeBlobs(cur);
      try {
        await cur.voting;
      } finally {
        cur.voting = null;
      }
    }
    // Only now: a finish while the blobs were being placed, or after placing them failed, would commit revisions without their files.
    cur.voted = true;
  }

  /** Write new transaction bytes at `pos` (the committed end); on failure (a full disk) cut back to `pos` and throw. */
  private writeAtEnd(bytes: Buffer, pos: number): void {
    this.fillAhead.beforeWrite(pos, bytes.length);
    try {
      this.disk.write(this.fd, bytes, pos);
    } catch (err) {
      // Nothing half-written stays behind.
      this.cutFile(pos);
      throw new StorageWriteError(this.path, pos, { cause: err });
    }
  }

  /** Cut off the fill past the last transaction, if any (the file as a close leaves it). */
  private cutFill(): void {
    if (this.fillAhead.extendsPast(this.end)) this.cutFile(this.end);
  }

  /** Cut the file to `pos`, dropping any fill past it. */
  private cutFile(pos: number): void {
    this.disk.truncate(this.fd, pos);
    this.fillAhead.cut(pos);
  }

  /** Bookkeeping for a transaction whose final bytes are written (index already updated): publish it once durable. */
  private noteCommitted(c: CommittedTransaction): void {
    recordTransaction(this.state, c.tid, c.pos);
    this.recentTxns.add(c.pos, c.tid);
    this.unpublished.push(c);
    this.end = c.end;
  }

  /** Blob files reach their committed paths before the status byte says committed. */
  private async placeBlobs(cur: PendingTxn): Promise<void> {
    const placed = await this.requireBlobs().place(
      cur.blobs.map((b) => ({ oid: b.oid, tid: cur.tid, stagedPath: b.stagedPath })),
      this.fsync,
    );
    placed.forEach((p, i) => (cur.blobs[i]!.placedPath = p));
  }

  private assemble(cur: PendingTxn): Buffer {
    return cur.body.finish((out) => {
      const header: TxnHeader = {
        tid: cur.tid,
        length: cur.metaBytes + cur.body.recordBytes,
        status: STATUS_CHECKPOINT,
        ulen: cur.user.length,
        dlen: cur.description.length,
        elen: cur.extension.length,
      };
      writeTxnHeader(out, 0, header);
      let off = TXN_HEADER_BYTES;
      off += cur.user.copy(out, off);
      off += cur.description.copy(out, off);
      cur.extension.copy(out, off);
    });
  }

  /**
   * Second commit phase: mark the transaction committed, make it visible,
   * and resolve with its tid once it is durable.
   */
  async tpcFinish(txn: TransactionMeta): Promise<Buffer> {
    const cur = this.pending(txn, 'tpcFinish');
    if (!cur.voted) throw new StorageTransactionError(cur.voting ? 'tpcFinish: the vote has not finished' : 'tpcFinish: transaction not voted');
    if (writesNothing(cur)) {
      // Nothing to mark or publish; the last tid stays, and later tids pass this one (as ZODB's do).
      this.tidFloor = cur.tid;
      this.current = null;
      cur.release();
      await this.makeDurable(this.end);
      return cur.tid;
    }
    const status = statusByte(cur.status);
    try {
      this.disk.write(this.fd, status, cur.tpos + 16);
    } catch (err) {
      // Not committed: it stays marked in progress on disk (a reopen cuts it) and is not visible. A disk that
      // failed this write is not trusted with more; the commit lock is released, so no begin waits for ever.
      this.failWrites(err as Error, 'a failed write of a commit mark');
      await this.endUncommitted(cur).catch(() => undefined);
      throw new ZrsError(`${this.path}: tpcFinish: marking the transaction committed failed; it is not committed, and the storage refuses further writes`, { cause: err });
    }
    const end = cur.tpos + cur.metaBytes + cur.body.recordBytes + TRAILER_BYTES;
    const index = this.state.index;
    for (const [key, pos] of cur.tindex) index.set(key, pos);
    // The transaction's oids in one buffer, read from its records (lastOid already covers them: see append).
    const oids = cur.body.copyIds(cur.tindex.values(), cur.tpos, cur.tindex.size);
    for (let off = 0; off < oids.length; off += 8) {
      if (compareIdsAt(oids, off, this.state.maxOid) > 0) this.state.maxOid = oids.subarray(off, off + 8);
    }
    // A copy of a small transaction's bytes rides along, so followers (replication, the hash chain) need not read the file.
    const raw = end - cur.tpos <= PUBLISHED_RAW_MAX_BYTES && this.commitsSubject.observed ? cur.body.copyFinished(status) : undefined;
    this.noteCommitted(new FinishedCommit(cur.tid, cur.status, cur.tpos, end, oids, raw));
    this.current = null;
    cur.release();
    // With syncInline, the sync comes at the end of this turn of the event loop, shared by every commit of the turn.
    await this.makeDurable(end, this.syncInline);
    return cur.tid;
  }

  /** `atTurnEnd`: sync at the end of this turn of the event loop (see groupSync.ts), not at once. */
  private async makeDurable(end: number, atTurnEnd = false): Promise<void> {
    if (!this.fsync) this.groupSync.markWritten(end);
    else {
      try {
        await this.groupSync.waitDurable(end, atTurnEnd);
      } catch (err) {
        this.failWrites(err as Error, 'a failed fsync');
        throw new ZrsError(`${this.path}: fsync failed; the storage refuses further writes`, { cause: err });
      }
    }
    this.publishDurable();
  }

  /** Publish, in order, every committed transaction that is now durable. */
  private publishDurable(): void {
    const durable = this.groupSync.durable;
    while (this.unpublishedHead < this.unpublished.length && this.unpublished[this.unpublishedHead]!.end <= durable) {
      const c = this.unpublished[this.unpublishedHead]!;
      this.unpublished[this.unpublishedHead++] = undefined;
      this.publishedEnd = c.end;
      this.publishedTid = c.tid;
      this.commitsSubject.next(c);
    }
    // Emptied, or (commits keep arriving faster than syncs) mostly published: drop the published part.
    if (this.unpublishedHead === this.unpublished.length || (this.unpublishedHead >= 1024 && this.unpublishedHead * 2 >= this.unpublished.length)) {
      this.unpublished = this.unpublished.slice(this.unpublishedHead);
      this.unpublishedHead = 0;
    }
    const waiters = this.growthWaiters;
    this.growthWaiters = [];
    for (const w of waiters) w();
  }

  /** Abandon the transaction in progress; nothing of it stays on disk. */
  async tpcAbort(txn: TransactionMeta): Promise<void> {
    if (this.closed) return;
    const waiting = this.waitingBegins.get(txn);
    if (waiting) {
      waiting.aborted = true;
      this.waitingBegins.delete(txn);
      return;
    }
    const cur = this.current;
    if (cur === null || cur.txn !== txn) return; // ZODB ignores aborts of other transactions
    if (cur.voting) {
      // A vote still placing blobs settles first: the files it placed are then known, and removed with the rest.
      await cur.voting.catch(() => undefined);
      if (this.closed || this.current !== cur) return;
    }
    // A failed cut leaves the bytes past the end (the next commit writes over them, a reopen cuts
    // them): the transaction still ends, its blobs are removed, and the failure is reported.
    try {
      if (cur.written && !writesNothing(cur)) this.cutFile(cur.tpos);
    } finally {
      await this.endUncommitted(cur);
    }
  }

  /** End `cur` without committing it: the commit lock goes to the next begin, its blob files are removed. */
  private async endUncommitted(cur: PendingTxn): Promise<void> {
    this.current = null;
    cur.release();
    if (this.blobs) await this.blobs.discard(cur.blobs.map((b) => b.placedPath ?? b.stagedPath));
  }

  /**
   * Append whole committed transactions given as FileStorage bytes from
   * another storage (see rawAppend.ts): one write for all of them, each
   * published on commits$ once durable, like a tpcFinish per transaction.
   * Resolves once written, with the last tid and a promise of it that
   * settles once durable. Bad bytes raise a CorruptedDataError and write
   * nothing. `raw` is rewritten in place.
   */
  async appendTransactions(raw: Buffer): Promise<{ lastTid: Buffer; durable: Promise<Buffer> }> {
    this.checkWritable('appendTransactions');
    const release = await this.commitLock.acquire();
    let last: RelocatedTxn;
    try {
      this.checkWritable('appendTransactions');
      const base = this.end;
      if (raw.length === 0) throw new CorruptedDataError(`${this.path} (transactions received)`, 0, 'no transaction');
      const run = relocateTransactions(raw, base, this.state.lastTid, this.state.index, `${this.path} (transactions received)`);
      try {
        this.writeAtEnd(raw, base);
      } catch (err) {
        run.undo();
        throw err;
      }
      const maxOid = run.maxOid;
      if (maxOid !== null && Buffer.compare(maxOid, this.state.maxOid) > 0) this.state.maxOid = Buffer.from(maxOid);
      if (Buffer.compare(this.state.maxOid, this.lastOid) > 0) this.lastOid = this.state.maxOid;
      for (const t of run.txns) this.noteCommitted(new RelocatedCommit(t.tid, t.pos, t.end, raw.subarray(t.pos - base, t.end - base)));
      last = run.txns[run.txns.length - 1]!;
    } finally {
      release();
    }
    const tid = last.tid;
    return { lastTid: tid, durable: this.makeDurable(last.end).then(() => tid) };
  }

  // ---------------------------------------------------------------- reads

  private checkOpen(): void {
    if (this.closed) throw new StorageClosedError(this.path);
  }

  /** @internal */
  readTxnHeaderAt(pos: number): TxnHeader {
    const buf = preadSync(this.fd, pos, TXN_HEADER_BYTES);
    if (buf.length < TXN_HEADER_BYTES) throw new CorruptedDataError(this.path, pos, 'transaction header past the end of the file');
    return readTxnHeader(buf);
  }

  /** @internal */
  readDataHeaderAt(pos: number): DataHeader {
    const buf = preadSync(this.fd, pos, DATA_HEADER_BYTES);
    if (buf.length < DATA_HEADER_BYTES) throw new CorruptedDataError(this.path, pos, 'data record header past the end of the file');
    return readDataHeader(buf);
  }

  /** @internal */
  readAt(pos: number, length: number): Buffer {
    return preadSync(this.fd, pos, length);
  }

  /**
   * Data of the record at `pos`, following backpointers; null for "no data".
   * @internal
   */
  resolveData(pos: number, header?: DataHeader): Buffer | null {
    const holder = this.dataHolderOf(pos, header ?? this.readDataHeaderAt(pos));
    return holder === null ? null : this.readRecordData(holder.pos, holder.header.plen);
  }

  /**
   * The `plen` bytes of data of the record at `pos`. A damaged length (in a
   * part a saved index vouched for, so the open did not scan it) is damage,
   * not an allocation of exabytes nor a short read.
   */
  private readRecordData(pos: number, plen: number): Buffer {
    const start = pos + DATA_HEADER_BYTES;
    const data = plen > LARGE_RECORD_READ_BYTES && start + plen > fstatSync(this.fd).size ? null : preadSync(this.fd, start, plen);
    if (data === null || data.length < plen) throw new CorruptedDataError(this.path, pos, `data record of ${plen} bytes runs past the end of the file`);
    return data;
  }

  /** The record holding the data of the record at `pos` (see backpointer.ts); null for "no data". @internal */
  dataHolderOf(pos: number, header: DataHeader): DataHolder | null {
    return dataHolder(this.path, pos, header, (p) => this.readDataHeaderAt(p), (p) => readU64At(preadSync(this.fd, p + DATA_HEADER_BYTES, BACKPOINTER_BYTES), 0));
  }

  /**
   * The header of the record at `pos`, reached from the record at `from`
   * (its index entry when undefined) through a previous-record pointer or a
   * backpointer: a record of `oid`, or the file is damaged (following on
   * would answer with another object's data).
   */
  private revisionAt(oid: Buffer, pos: number, from?: number): DataHeader {
    if (from !== undefined && pos >= from) throw new CorruptedDataError(this.path, from, `pointer to ${pos} does not point backwards`);
    const h = this.readDataHeaderAt(pos);
    if (!h.oid.equals(oid)) throw otherObjectError(this.path, pos, h.oid, oid);
    return h;
  }

  /** Current data and serial of an object. */
  async load(oid: Buffer): Promise<LoadResult> {
    this.checkOpen();
    const pos = this.committedPos(oid);
    if (pos === undefined) throw new POSKeyError(Buffer.from(oid));
    const h = this.revisionAt(oid, pos);
    const data = this.resolveData(pos, h);
    if (data === null) throw new POSKeyError(Buffer.from(oid));
    return { data, tid: Buffer.from(h.tid) };
  }

  /** The revision written by transaction `tid`. */
  async loadSerial(oid: Buffer, tid: Buffer): Promise<Buffer> {
    this.checkOpen();
    checkBytes('loadSerial: tid', tid, 8);
    for (const { pos, header } of this.revisions(oid, this.committedPos(oid))) {
      if (header.tid.equals(tid)) {
        const data = this.resolveData(pos, header);
        if (data === null) break;
        return data;
      }
      if (Buffer.compare(header.tid, tid) < 0) break;
    }
    throw new POSKeyError(Buffer.from(oid), Buffer.from(tid));
  }

  /** The revision current just before `tid`, with the tid that replaced it; null if none. */
  async loadBefore(oid: Buffer, tid: Buffer): Promise<LoadBeforeResult | null> {
    this.checkOpen();
    checkBytes('loadBefore: tid', tid, 8);
    // As ZODB (IStorage.loadBefore): an oid the storage never had is a POSKeyError, not None.
    const current = this.committedPos(oid);
    if (current === undefined) throw new POSKeyError(Buffer.from(oid));
    let endTid: Buffer | null = null;
    for (const { pos, header } of this.revisions(oid, current)) {
      if (Buffer.compare(header.tid, tid) < 0) {
        const data = this.resolveData(pos, header);
        if (data === null) throw new POSKeyError(Buffer.from(oid), Buffer.from(tid));
        return { data, tid: Buffer.from(header.tid), endTid };
      }
      endTid = Buffer.from(header.tid);
    }
    return null;
  }

  /** Up to `size` revisions of an object, newest first. */
  async history(oid: Buffer, size = 1): Promise<HistoryEntry[]> {
    this.checkOpen();
    const current = this.committedPos(oid);
    if (current === undefined) throw new POSKeyError(Buffer.from(oid));
    const out: HistoryEntry[] = [];
    if (size <= 0) return out;
    for (const { pos, header } of this.revisions(oid, current)) {
      out.push({ ...this.readTxnMeta(header.tloc, this.transactionHolding(pos, header)), size: header.plen });
      if (out.length >= size) break; // before the walk reads the next revision
    }
    return out;
  }

  /**
   * The revisions of `oid` from the record at `pos` back through each
   * record's previous-record pointer, newest first; each must be a record of
   * the object, before the one that led to it.
   */
  private *revisions(oid: Buffer, pos: number | undefined): Generator<DataHolder> {
    let from: number | undefined;
    while (pos) {
      const header = this.revisionAt(oid, pos, from);
      yield { pos, header };
      from = pos;
      pos = header.prev;
    }
  }

  /**
   * The header of the transaction holding the record at `pos`, found
   * through the record's transaction pointer: one of the record's tid that
   * begins before it and runs past its header, or the file is damaged.
   */
  private transactionHolding(pos: number, h: DataHeader): TxnHeader {
    const t = h.tloc >= MAGIC_BYTES && h.tloc < pos ? this.readTxnHeaderAt(h.tloc) : null;
    if (t === null || !t.tid.equals(h.tid) || h.tloc + t.length < pos + DATA_HEADER_BYTES) {
      throw new CorruptedDataError(this.path, pos, `data record points at transaction ${h.tloc}, which does not hold it`);
    }
    return t;
  }

  /** Tid, time, user, description and decoded extension of the transaction at `tpos`. @internal */
  readTxnMeta(tpos: number, t: TxnHeader): { tid: Buffer; time: number; user: Buffer; description: Buffer; extension: Record<string, PickleValue> } {
    const meta = this.readAt(tpos + TXN_HEADER_BYTES, t.ulen + t.dlen + t.elen);
    return {
      tid: Buffer.from(t.tid),
      time: tidToSeconds(t.tid),
      user: Buffer.from(meta.subarray(0, t.ulen)),
      description: Buffer.from(meta.subarray(t.ulen, t.ulen + t.dlen)),
      extension: listedExtension(Buffer.from(meta.subarray(t.ulen + t.dlen))),
    };
  }

  /** Tid of the last committed transaction (Z64 for an empty storage). */
  lastTransaction(): Buffer {
    return Buffer.from(this.state.lastTid ?? Z64);
  }

  /** Number of objects (oids with a current record), as len(storage) in ZODB. */
  get objectCount(): number {
    return this.state.index.size;
  }

  /** Number of committed transactions. */
  get transactionCount(): number {
    return this.state.txnCount;
  }

  /** Size of the committed part of the file in bytes. */
  getSize(): number {
    return this.end;
  }

  /** Tid of the last transaction published on commits$ (durable). */
  get lastDurableTid(): Buffer {
    return this.publishedTid;
  }

  /**
   * Refuse new transactions (StorageClosedError) from now on and wait for the one
   * committing, if any, to become durable. Reads continue. A transaction
   * begun and not yet voted is aborted, as close() aborts it: it would hold
   * the commit lock for as long as its caller leaves it open. One voting or
   * voted is waited for: its caller is about to finish it.
   */
  async closeForWrites(): Promise<void> {
    this.writesClosed = true;
    const open = this.current;
    if (open && !open.voted && open.voting === null) await this.tpcAbort(open.txn).catch(() => undefined);
    const release = await this.commitLock.acquire();
    release();
    if (this.fsync && !this.readOnly && !this.fatal) await this.groupSync.waitDurable(this.end);
  }

  /** End of the transactions already published on commits$ (durable). */
  get durableEnd(): number {
    return this.publishedEnd;
  }

  /** Largest oid in use. */
  maxOid(): Buffer {
    return Buffer.from(this.state.maxOid);
  }

  /** The oid index (read-only view). @internal */
  get index(): ReadonlyMap<OidKey, number> {
    return this.state.index;
  }

  /**
   * Position of the committed transaction with exactly this tid, or null.
   * Committed means finished, durable or not: restore and undo must see a
   * transaction whose fsync is still pending.
   */
  findTransaction(tid: Buffer): number | null {
    const pos = this.positionAfter(tid, true, this.end);
    if (pos >= this.end) return null;
    return this.readTxnHeaderAt(pos).tid.equals(tid) ? pos : null;
  }

  /**
   * Whether this file shows that it never held a transaction with this tid:
   * none has it, it is older than the last one, and the transaction just
   * before it is a plain committed one. A pack drops transactions only below
   * its pack time and marks every one it keeps there as packed, so no pack
   * can have dropped a tid newer than an unpacked transaction. False when the
   * file cannot tell (a tid in the packed part, before the first, or at or
   * after the last).
   */
  provesNeverHeld(tid: Buffer): boolean {
    if (Buffer.compare(tid, this.lastTransaction()) >= 0) return false;
    let pos = this.state.samples.atOrBefore(tid, MAGIC_BYTES);
    let before: { tid: Buffer; status: string } | null = null;
    while (pos < this.end) {
      const h = this.readTxnHeaderAt(pos);
      const c = Buffer.compare(h.tid, tid);
      if (c === 0) return false;
      if (c > 0) break;
      before = h;
      pos += h.length + TRAILER_BYTES;
    }
    return before !== null && before.status === STATUS_COMMITTED;
  }

  /**
   * Position of the first transaction with a tid >= `tid` (or > when
   * `inclusive` is false) before `limit` (default: the durable end, what
   * iterators and replication may read), or `limit` when there is none.
   */
  positionAfter(tid: Buffer, inclusive: boolean, limit = this.publishedEnd): number {
    let pos = this.state.samples.atOrBefore(tid, MAGIC_BYTES);
    while (pos < limit) {
      const h = this.readTxnHeaderAt(pos);
      const c = Buffer.compare(h.tid, tid);
      if (c > 0 || (inclusive && c === 0)) return pos;
      pos += h.length + TRAILER_BYTES;
    }
    return limit;
  }

  /** Resolve once the durable end moves past `end` (or the storage closes). @internal */
  waitForGrowth(end: number): Promise<void> {
    if (this.publishedEnd > end || this.closed) return Promise.resolve();
    return new Promise((resolve) => this.growthWaiters.push(resolve));
  }

  /** Position of the first transaction (after the magic). */
  get firstTransactionPos(): number {
    return MAGIC_BYTES;
  }

  private readonly beforeReplaceHooks = new Set<(why: 'pack' | 'rewind') => Promise<void>>();

  /**
   * @internal Run `hook` (awaited, under the commit lock) before a pack's
   * file replaces the data file: whatever was computed from the old file's
   * contents and not yet written (a hash chain's pending links) could not
   * be computed again from the packed one. `why` says whose file it is: a
   * pack's, or a rewind's (the old file cut at the fork). Returns the
   * function that stops it.
   */
  beforeDataFileReplaced(hook: (why: 'pack' | 'rewind') => Promise<void>): () => void {
    this.beforeReplaceHooks.add(hook);
    return () => void this.beforeReplaceHooks.delete(hook);
  }

  /** Changes whenever the data file is replaced (pack), invalidating positions. */
  get fileEpoch(): number {
    return this.epoch;
  }

  /**
   * Iterate over committed transactions with start <= tid <= stop.
   *
   * @example
   * for await (const txn of storage.iterator()) console.log(txn.tid.toString('hex'), txn.records.length);
   */
  iterator(start: Buffer | null = null, stop: Buffer | null = null, options: IterateOptions = {}): AsyncGenerator<TransactionRecord> {
    this.checkOpen();
    if (start !== null) checkBytes('iterator: start', start, 8);
    if (stop !== null) checkBytes('iterator: stop', stop, 8);
    // Its end is the one it read at open: another process's commits would never come (it would wait for ever).
    if (options.follow && this.readOnly) throw new ZrsError(`${this.path}: a read-only storage cannot follow the file (it does not see commits made elsewhere); follow the storage that writes it`);
    return iterateTransactions(this, start, stop, options);
  }

  /** Whether close() was called. */
  get isClosed(): boolean {
    return this.closed;
  }

  /**
   * Hand the file's lock (`<path>.lock`) to the caller: close() leaves it
   * held, and the caller releases it once done with the file (an offline
   * operation that goes on after closing). Null for a read-only storage. @internal
   */
  takeLock(): LockFile | null {
    const lock = this.lock;
    this.lock = null;
    return lock;
  }

  /** Wait for the commit lock: used by pack and other whole-file operations. @internal */
  acquireCommitLock(): Promise<() => void> {
    return this.commitLock.acquire();
  }

  /** @internal */
  get fileHandle(): FileHandle {
    return this.handle;
  }

  /** Path of a committed blob revision; POSKeyError when there is none. */
  async loadBlob(oid: Buffer, tid: Buffer): Promise<string> {
    this.checkOpen();
    return this.requireBlobs().committedPath(oid, tid);
  }

  /** A read stream over a committed blob revision (committed blob files never change). */
  async openCommittedBlobFile(oid: Buffer, tid: Buffer): Promise<FileHandle> {
    const path = await this.loadBlob(oid, tid);
    return openHandle(path, 'r');
  }

  /**
   * Swap in a rewritten data file (a pack's, or a rewind's). The caller holds
   * the commit lock and has made `newPath` durable; the current file is kept
   * as `<file>.old`. Positions handed out before this call are invalid
   * afterwards (fileEpoch). `scanned`: the new file's scan up to `end`,
   * made before the lock was taken, so only what follows is scanned here.
   * @internal
   */
  async replaceDataFile(newPath: string, why: 'pack' | 'rewind', scanned?: { state: ScanState; end: number }): Promise<void> {
    this.checkWritable('pack');
    if (this.current) throw new StorageTransactionError('pack: a transaction is in progress');
    // Commits that finished before the caller took the lock may still await
    // their fsync of the old file: settle and publish them now, so no sync
    // runs on a closed fd and no unpublished entry keeps old-file offsets.
    await this.makeDurable(this.end);
    // What was derived from the old file's contents (hash chain links) is durable before they change.
    for (const hook of [...this.beforeReplaceHooks]) await hook(why);
    // Opened and checked under its own name, before the swap: descriptors
    // stay on the file through the rename, so once the data file's name
    // holds the new file nothing is left that can fail and leave this
    // storage writing to the old one (then named .old, and lost).
    const fd = openSync(newPath, 'r+');
    let handle: FileHandle | null = null;
    let result;
    let size;
    try {
      handle = await openHandle(newPath, 'r');
      size = fstatSync(fd).size;
      result = await scanWhole(handle, this.path, scanned?.end ?? MAGIC_BYTES, size, scanned?.state ?? emptyScanState());
      // The old file is kept as it would be closed: without fill.
      this.cutFill();
      // Kept under a second name first, then replaced in one rename: at every
      // instant (and after a crash at any point) the data file's name holds a
      // whole file, the old one or the new one. Two renames, as ZODB does them,
      // leave no data file between the two, and the next open would create an
      // empty one.
      await rm(`${this.path}.old`, { force: true });
      await link(this.path, `${this.path}.old`);
      await rename(newPath, this.path);
    } catch (err) {
      await handle?.close();
      closeSync(fd);
      throw err;
    }
    // Switch everything to the new file first (a new epoch), then close the
    // old one: a reader whose read fails on the closed handle must already see
    // the new epoch, so it re-seeks instead of reporting an error.
    const oldHandle = this.handle;
    const oldFd = this.fd;
    this.fd = fd;
    this.handle = handle;
    this.state = result;
    this.end = result.end;
    this.publishedEnd = result.end;
    this.publishedTid = Buffer.from(result.lastTid ?? Z64);
    const oldSync = this.groupSync;
    this.groupSync = new GroupSync(fd, result.end, () => this.end, this.disk, this.secondDescriptor());
    this.fillAhead = new FillAhead(this.disk, fd, size, this.preallocateBytes);
    this.epoch += 1;
    this.recentTxns.clear();
    await oldHandle.close();
    // A sync of the old file may still run (makeDurable above returns once one covers the end).
    await oldSync.close();
    closeSync(oldFd);
    await removeIndex(this.path);
    // The name now holds the new file, in this process: whether it does after a crash is up to the
    // directory's sync. If that fails, the old file may be the data file again after a crash, and
    // every commit from here on lost with it: no more are taken (the storage is on the new file, so
    // none is written to the old one meanwhile).
    try {
      await syncDirectory(dirname(this.path));
    } catch (err) {
      this.failWrites(err as Error, 'a failed sync of the directory after the data file was replaced');
      throw new ZrsError(`${this.path}: the data file was replaced, but syncing its directory failed; the storage refuses further writes`, { cause: err });
    }
  }

  /** Refuse further writes (checkWritable) for `cause`; the first cause is the one reported. */
  private failWrites(cause: Error, what: string): void {
    if (this.fatal !== null) return;
    this.fatal = cause;
    this.fatalWhat = what;
  }

  /**
   * Remove revisions that were not current at `packTime` (seconds since the
   * epoch), and with `referencesOf` every object unreachable from the root
   * then. Safe while others commit; the old file is kept as `<file>.old`.
   * Resolves with what it did (blob files it could not delete among it).
   * No later than the last transaction (a later pack time packs to it).
   * `options.onProgress` hears how far each pass is; a close() stops the
   * pack (it rejects with a StorageClosedError, nothing changed, unless it
   * had begun replacing the file) and waits for it to end.
   */
  async pack(packTime: number, referencesOf?: (data: Buffer) => Buffer[], options?: PackOptions): Promise<PackReport> {
    this.checkWritable('pack');
    const run = import('./pack.js').then(({ packStorage }) => packStorage(this, packTime, referencesOf, options));
    // Joined, not replaced: a second pack() refused while one runs must not stand in for it.
    this.packRun = Promise.all([this.packRun, run.catch(() => undefined)]).then(() => undefined);
    return run;
  }

  /** Settles once every pack() started so far has ended: a close() waits for them, so no pack's file outlives the storage. */
  private packRun: Promise<void> = Promise.resolve();

  /** Set by stopPacks() (and a close): a pack under way stops at its next step. */
  private packsStopping = false;

  /** Whether a pack under way is to stop (the storage closes, or stopPacks() was called). @internal */
  get packsStopped(): boolean {
    return this.closed || this.packsStopping;
  }

  /**
   * Stop every pack under way and refuse new ones (a close is coming): each
   * rejects with a StorageClosedError at its next step, unless it has begun
   * replacing the file. Resolves once they have ended. @internal
   */
  stopPacks(): Promise<void> {
    this.packsStopping = true;
    return this.packRun;
  }

  /** Settles once every pack() started so far has ended. @internal */
  packsEnded(): Promise<void> {
    return this.packRun;
  }

  /** Abort any transaction in progress, save the index, release the lock. */
  close(): Promise<void> {
    // Every call shares one close: a second one running beside it would close the descriptors twice.
    this.closing ??= this.closeOnce();
    return this.closing;
  }

  /** Transactions whose tpcBegin waits for the commit lock: an abort meanwhile marks them, and they never begin. */
  private readonly waitingBegins = new Map<TransactionMeta, { aborted: boolean }>();

  /** The close under way or done (close()). */
  private closing: Promise<void> | null = null;

  private async closeOnce(): Promise<void> {
    if (this.closed) return;
    // A failed abort (the cut of its bytes, the removal of its blobs) is reported once everything is released.
    const aborted = this.current ? await this.tpcAbort(this.current.txn).then(() => null, (err: unknown) => ({ err })) : null;
    // Let a commit that is finishing reach the disk first.
    const release = await this.commitLock.acquire();
    this.closed = true;
    try {
      if (!this.readOnly && !this.fatal) {
        if (this.fsync) await this.groupSync.waitDurable(this.end);
        // Not synced: if the cut is lost in a crash, the next open makes it again.
        this.cutFill();
        await saveIndex(this.path, this.fd, { ...this.state, end: this.end });
      }
    } finally {
      for (const w of this.growthWaiters) w();
      this.growthWaiters = [];
      this.commitsSubject.complete();
      // Each step runs even when one before it fails: the lock must be released whatever happens.
      await runEach([
        () => this.handle.close(),
        // A sync may still run on the file (the wait above returns once one covers the end).
        () => this.groupSync.close(),
        () => closeSync(this.fd),
        release,
        // A pack running stops at its next transaction (or at the commit lock) and removes its
        // output before the file's lock goes to whoever opens the file next.
        () => this.packRun,
        () => this.lock?.release(),
      ]);
    }
    if (aborted) throw aborted.err;
  }

  /** Another descriptor of the data file, for a second sync at once (see groupSync.ts); none for a read-only storage. */
  private secondDescriptor(): { open(): number; close(fd: number): void } | undefined {
    if (this.readOnly) return undefined;
    const path = this.path;
    return { open: () => openSync(path, 'r+'), close: (fd) => closeSync(fd) };
  }
}

/** Bytes of fill to write ahead (OpenOptions.preallocate): by default some with fsync, none without. */
function preallocateOption(options: OpenOptions): number {
  const bytes = options.preallocate ?? ((options.fsync ?? true) ? DEFAULT_PREALLOCATE_BYTES : 0);
  if (!Number.isSafeInteger(bytes) || bytes < 0) throw new ZrsError(`preallocate must be a whole number of bytes >= 0, got ${bytes}`);
  return bytes;
}

function checkOid(oid: Buffer): void {
  checkBytes('oid', oid, 8);
}

/**
 * `value` is a Buffer of `length` bytes: what a JavaScript caller passes
 * unchecked by types (a string, a number, undefined) must be refused, not
 * read as bytes it is not.
 */
function checkBytes(what: string, value: Buffer, length: number): void {
  if (!Buffer.isBuffer(value)) throw new ZrsError(`${what} must be ${length} bytes (a Buffer), got ${kindOf(value)}`);
  if (value.length !== length) throw new ZrsError(`${what} must be ${length} bytes, got ${value.length}`);
}

/** Record data as a caller gives it: bytes, a Buffer or another Uint8Array (then viewed as a Buffer, not copied). */
function asData(what: string, data: Buffer): Buffer {
  const given: unknown = data;
  if (Buffer.isBuffer(given)) return given;
  if (given instanceof Uint8Array) return Buffer.from(given.buffer, given.byteOffset, given.byteLength);
  throw new ZrsError(`${what}: data must be bytes (a Buffer), got ${kindOf(data)}`);
}

/** What a value is, for a message: its type, or null. */
function kindOf(value: unknown): string {
  return value === null ? 'null' : Array.isArray(value) ? 'an array' : value instanceof Uint8Array ? 'a Uint8Array that is not a Buffer' : typeof value;
}

/** Remove a pack's leftover output file; its size, or null when there was none. */
async function removeStalePack(packPath: string): Promise<number | null> {
  const found = await stat(packPath).catch(() => null);
  if (!found?.isFile()) return null;
  await rm(packPath, { force: true });
  return found.size;
}
