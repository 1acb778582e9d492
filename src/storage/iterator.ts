// Iteration over committed transactions in file order, from any tid (found
// through the sparse tid table, so starting late is cheap), optionally
// following the file as new transactions become durable. Holds one read
// window and one transaction in memory at a time.

import { CorruptedDataError, StorageClosedError } from '../errors.js';
import { DATA_HEADER_BYTES, TRAILER_BYTES, TXN_HEADER_BYTES, dataRecordLength, readDataHeader, readTxnHeader, readU64At, recordsStart } from './format.js';
import { WindowReader, type WindowRecycler } from './fileio.js';
import type { FileStorage } from './FileStorage.js';
import type { DataRecord, TransactionRecord } from './types.js';

export interface IterateOptions {
  /** Keep waiting for new transactions at the end instead of finishing (not on a read-only storage, which sees no commits made elsewhere). */
  follow?: boolean;
  /** Stop (finish the iteration) when aborted. */
  signal?: AbortSignal;
}

/**
 * Transactions with start <= tid <= stop (both optional, inclusive, as ZODB's
 * iterator). Records carry data with backpointers resolved and `dataTxn`.
 */
export async function* iterateTransactions(
  storage: FileStorage,
  start: Buffer | null = null,
  stop: Buffer | null = null,
  options: IterateOptions = {},
): AsyncGenerator<TransactionRecord> {
  const cursor = new TransactionCursor(storage, start, stop);
  for (;;) {
    if (options.signal?.aborted) return;
    if (storage.isClosed) {
      // Following ends with the storage. Any other iteration was cut short: ending it quietly would
      // pass a part of the range for the whole (a copy or a backup racing a shutdown).
      if (options.follow || cursor.atEnd) return;
      throw new StorageClosedError(storage.path);
    }
    // One at a time: a pack between two yields sends the cursor to the new file.
    const txn = cursor.next();
    if (txn !== null) {
      yield txn;
      continue;
    }
    if (cursor.stopped) return;
    if (cursor.atEnd) {
      if (!options.follow) return;
      await waitOrAbort(storage, cursor.position, options.signal);
      continue;
    }
    await cursor.fill();
  }
}

/**
 * Committed transactions in file order from a tid, a read window at a time:
 * fill() reads the window (I/O), take() parses the transactions it holds
 * (no I/O, no awaits), so a caller can do the work of a whole window in one
 * synchronous step. A pack that replaces the file is followed by tid.
 */
export class TransactionCursor {
  private epoch: number;
  private reader: WindowReader;
  private pos: number;
  /** The last transaction taken from the current window... */
  private lastTaken: TransactionRecord | null = null;
  /** ...or, taken from an earlier one, its tid (a copy: a recycled window's bytes change); until there is one, the cursor starts at `start`. */
  private earlierTid: Buffer | null = null;
  /** A transaction past `stop` was reached: nothing more comes. */
  stopped = false;

  constructor(
    private readonly storage: FileStorage,
    private readonly start: Buffer | null,
    private readonly stop: Buffer | null,
    private readonly windowBytes = 1 << 20,
    /** Where windows come from (see WindowRecycler); without one, each is a new buffer. */
    private readonly recycler: WindowRecycler | null = null,
  ) {
    this.epoch = storage.fileEpoch;
    this.reader = this.newReader();
    this.pos = this.resumePosition();
  }

  /** Where to go on from in the current file: after the last transaction taken, else at `start`. */
  private resumePosition(): number {
    const last = this.lastTaken?.tid ?? this.earlierTid;
    if (last) return this.storage.positionAfter(last, false);
    return this.start ? this.storage.positionAfter(this.start, true) : this.storage.firstTransactionPos;
  }

  /** Nothing left to take as of now: past `stop`, or at the durable end. */
  get atEnd(): boolean {
    return this.stopped || this.position >= this.storage.durableEnd;
  }

  /** File position of the next transaction (in the current file). */
  get position(): number {
    this.followReplacement();
    return this.pos;
  }

  /**
   * The transactions the window holds from the current position, in order,
   * up to the first that brings their file bytes to `maxBytes` (so 0 takes
   * one); [] when the next one must be read first (fill()), or at the
   * durable end, or past `stop`. Damage ends what it takes: the
   * transactions before it come out first, and the next take() throws.
   */
  take(maxBytes = Infinity): TransactionRecord[] {
    const out: TransactionRecord[] = [];
    try {
      for (let bytes = 0, txn = this.next(); txn !== null; txn = this.next()) {
        out.push(txn);
        bytes += txn.length + TRAILER_BYTES;
        if (bytes >= maxBytes) break;
      }
    } catch (err) {
      if (out.length === 0) throw err; // next() left the position at the damage: the next call meets it again
    }
    return out;
  }

  /** The next transaction, as take(0) but without the array; null when take() would give none. */
  next(): TransactionRecord | null {
    if (this.atEnd) return null;
    const txn = parseTransactionAt(this.storage, this.reader, this.pos);
    if (txn === null) return null;
    if (this.stop && Buffer.compare(txn.tid, this.stop) > 0) {
      this.stopped = true;
      return null;
    }
    this.lastTaken = txn;
    this.pos += txn.length + TRAILER_BYTES;
    return txn;
  }

  /** Read the window that holds the next transaction (call when take() gave none before the end). */
  async fill(): Promise<void> {
    if (this.lastTaken) {
      this.earlierTid = Buffer.from(this.lastTaken.tid);
      this.lastTaken = null;
    }
    this.followReplacement();
    const epoch = this.epoch;
    try {
      const h = readTxnHeader(await view(this.reader, this.pos, TXN_HEADER_BYTES));
      // A damaged length (in a part the saved index vouched for, so the open did not scan it) is damage, not a read of exabytes.
      // (One shorter than a header is named by next(), which reads its length first.)
      if (this.pos + h.length + TRAILER_BYTES > this.storage.durableEnd) throw runsPastEnd(this.storage, this.pos, h.length);
      await view(this.reader, this.pos, h.length + TRAILER_BYTES);
    } catch (err) {
      if (epoch === this.storage.fileEpoch) throw err;
      // The old handle closed under the read (pack): take() re-seeks in the new file.
    }
  }

  /** After a pack replaced the file, find our place again by tid. */
  private followReplacement(): void {
    if (this.epoch === this.storage.fileEpoch) return;
    this.epoch = this.storage.fileEpoch;
    this.reader = this.newReader();
    this.pos = this.resumePosition();
  }

  private newReader(): WindowReader {
    return new WindowReader(this.storage.fileHandle, this.windowBytes, () => this.storage.durableEnd, this.recycler);
  }
}

function waitOrAbort(storage: FileStorage, pos: number, signal: AbortSignal | undefined): Promise<void> {
  const growth = storage.waitForGrowth(pos);
  if (!signal) return growth;
  return new Promise((resolve) => {
    const done = (): void => {
      signal.removeEventListener('abort', done);
      resolve();
    };
    signal.addEventListener('abort', done);
    void growth.then(done);
  });
}

async function view(reader: WindowReader, pos: number, length: number): Promise<Buffer> {
  if (!reader.has(pos, length)) await reader.fill(pos, length);
  const v = reader.view(pos, length);
  return v;
}

/** The transaction at `pos` if the window holds all of it, else null (no I/O). */
export function parseTransactionAt(storage: FileStorage, reader: WindowReader, pos: number): TransactionRecord | null {
  if (!reader.has(pos, TXN_HEADER_BYTES)) return null;
  const length = reader.u64At(pos + 8);
  if (length < TXN_HEADER_BYTES) throw shorterThanHeader(storage, pos, length);
  if (!reader.has(pos, length + TRAILER_BYTES)) return null;
  return parseTransaction(storage, reader.view(pos, length + TRAILER_BYTES), pos);
}

function shorterThanHeader(storage: FileStorage, pos: number, length: number): CorruptedDataError {
  return new CorruptedDataError(storage.path, pos, `transaction length ${length} is shorter than a transaction header`);
}

function runsPastEnd(storage: FileStorage, pos: number, length: number): CorruptedDataError {
  return new CorruptedDataError(storage.path, pos, `transaction length ${length} runs past the end of the data (${storage.durableEnd})`);
}

/** Read one whole transaction at `pos` with its records. */
export async function readTransaction(storage: FileStorage, reader: WindowReader, pos: number): Promise<TransactionRecord> {
  const h = readTxnHeader(await view(reader, pos, TXN_HEADER_BYTES));
  if (h.length < TXN_HEADER_BYTES) throw shorterThanHeader(storage, pos, h.length);
  const total = h.length + TRAILER_BYTES;
  if (pos + total > storage.durableEnd) throw runsPastEnd(storage, pos, h.length);
  return parseTransaction(storage, await view(reader, pos, total), pos);
}

/**
 * The transaction stored at `pos` whose bytes (header to trailer) are
 * `body`, e.g. a CommittedTransaction's raw; its backpointers are resolved
 * in `storage` now.
 */
export function parseTransaction(storage: FileStorage, body: Buffer, pos: number): TransactionRecord {
  // A damaged header (in a part a saved index vouched for, so the open did not scan it) is damage, never a read outside the transaction.
  if (body.length < TXN_HEADER_BYTES) throw new CorruptedDataError(storage.path, pos, `${body.length} bytes are too few for a transaction header`);
  const length = readU64At(body, 8);
  if (length < TXN_HEADER_BYTES) throw shorterThanHeader(storage, pos, length);
  if (length + TRAILER_BYTES > body.length) throw new CorruptedDataError(storage.path, pos, `transaction length ${length} runs past its ${body.length} bytes`);
  if (readU64At(body, length) !== length) throw new CorruptedDataError(storage.path, pos + length, `redundant length differs from the transaction's ${length}`);
  let off = recordsStart(body);
  if (off > length) throw new CorruptedDataError(storage.path, pos, 'transaction metadata runs past its records');
  const recordsAt = off;
  // Every record's extent is checked now; its object is built when asked for.
  let backpointers = false;
  while (off < length) {
    const plen = off + DATA_HEADER_BYTES <= length ? readU64At(body, off + 34) : Infinity;
    const len = dataRecordLength(plen);
    if (off + len > length) throw new CorruptedDataError(storage.path, pos + off, 'data record runs past its transaction');
    if (plen === 0) backpointers = true;
    off += len;
  }
  const txn = new StoredTransaction(String.fromCharCode(body[16]!), pos, length, body, recordsAt);
  // Backpointers are resolved now, while the file read is the one they point into (a pack may replace it later).
  if (backpointers) txn.resolve(storage);
  return txn;
}

/**
 * A transaction read from the file. Its metadata and record data are views of
 * the read window (see TransactionRecord); the record objects are built on
 * first access, so passing over transactions (counting, copying their raw
 * bytes) costs no per-record work.
 */
class StoredTransaction implements TransactionRecord {
  #tid: Buffer | null = null;
  #records: DataRecord[] | null = null;
  readonly #recordsAt: number;

  constructor(
    readonly status: string,
    readonly pos: number,
    readonly length: number,
    readonly raw: Buffer,
    recordsAt: number,
  ) {
    this.#recordsAt = recordsAt;
  }

  get tid(): Buffer {
    return (this.#tid ??= this.raw.subarray(0, 8));
  }

  // Metadata views are made when asked for, as records are.
  get user(): Buffer {
    return this.raw.subarray(TXN_HEADER_BYTES, TXN_HEADER_BYTES + this.raw.readUInt16BE(17));
  }

  get description(): Buffer {
    const at = TXN_HEADER_BYTES + this.raw.readUInt16BE(17);
    return this.raw.subarray(at, at + this.raw.readUInt16BE(19));
  }

  get extensionBytes(): Buffer {
    const at = TXN_HEADER_BYTES + this.raw.readUInt16BE(17) + this.raw.readUInt16BE(19);
    return this.raw.subarray(at, at + this.raw.readUInt16BE(21));
  }

  get records(): DataRecord[] {
    return (this.#records ??= this.build(null));
  }

  set records(records: DataRecord[]) {
    this.#records = records;
  }

  /** Build the records now, resolving backpointers through `storage`. */
  resolve(storage: FileStorage): void {
    this.#records = this.build(storage);
  }

  private build(storage: FileStorage | null): DataRecord[] {
    const records: DataRecord[] = [];
    for (let off = this.#recordsAt; off < this.length; ) {
      const plen = readU64At(this.raw, off + 34);
      records.push(recordAt(storage, this.raw, off, this.pos + off, this.tid, plen));
      off += dataRecordLength(plen);
    }
    return records;
  }
}

/** `storage`: where backpointers are resolved; null only when the transaction has none. */
function recordAt(storage: FileStorage | null, body: Buffer, off: number, pos: number, tid: Buffer, plen: number): DataRecord {
  const oid = body.subarray(off, off + 8);
  if (plen > 0) {
    const data = body.subarray(off + DATA_HEADER_BYTES, off + DATA_HEADER_BYTES + plen);
    return { oid, tid, data, dataTxn: null, pos, back: null };
  }
  const back = readU64At(body, off + DATA_HEADER_BYTES);
  if (back === 0) return { oid, tid, data: null, dataTxn: null, pos, back };
  if (storage === null) throw new Error('a backpointer record reached without its storage');
  // The holder of the data, every hop checked; the data transaction is the first hop's.
  const holder = storage.dataHolderOf(pos, readDataHeader(body, off));
  const target = storage.readDataHeaderAt(back);
  return { oid, tid, data: holder === null ? null : storage.readAt(holder.pos + DATA_HEADER_BYTES, holder.header.plen), dataTxn: Buffer.from(target.tid), pos, back };
}
