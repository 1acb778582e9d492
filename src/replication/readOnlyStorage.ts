// The face a secondary's storage shows to everyone but its replication
// actor: every read of FileStorage, and every write method raising
// ReadOnlyError.

import type { FileHandle } from 'node:fs/promises';
import type { Observable } from 'rxjs';
import { ReadOnlyError } from '../errors.js';
import type { FileStorage } from '../storage/FileStorage.js';
import type { IterateOptions } from '../storage/iterator.js';
import type {
  CommittedTransaction,
  HistoryEntry,
  LoadBeforeResult,
  LoadResult,
  TransactionRecord,
  UndoLogEntry,
} from '../storage/types.js';

export class ReadOnlyStorage {
  constructor(private readonly inner: FileStorage) {}

  get path(): string {
    return this.inner.path;
  }
  get commits$(): Observable<CommittedTransaction> {
    return this.inner.commits$;
  }
  load(oid: Buffer): Promise<LoadResult> {
    return this.inner.load(oid);
  }
  loadSerial(oid: Buffer, tid: Buffer): Promise<Buffer> {
    return this.inner.loadSerial(oid, tid);
  }
  loadBefore(oid: Buffer, tid: Buffer): Promise<LoadBeforeResult | null> {
    return this.inner.loadBefore(oid, tid);
  }
  history(oid: Buffer, size?: number): Promise<HistoryEntry[]> {
    return this.inner.history(oid, size);
  }
  lastTransaction(): Buffer {
    return this.inner.lastTransaction();
  }
  get objectCount(): number {
    return this.inner.objectCount;
  }
  get transactionCount(): number {
    return this.inner.transactionCount;
  }
  getSize(): number {
    return this.inner.getSize();
  }
  iterator(start: Buffer | null = null, stop: Buffer | null = null, options: IterateOptions = {}): AsyncGenerator<TransactionRecord> {
    return this.inner.iterator(start, stop, options);
  }
  undoLog(first?: number, last?: number, filter?: (entry: UndoLogEntry) => boolean): Promise<UndoLogEntry[]> {
    return this.inner.undoLog(first, last, filter);
  }
  loadBlob(oid: Buffer, tid: Buffer): Promise<string> {
    return this.inner.loadBlob(oid, tid);
  }
  openCommittedBlobFile(oid: Buffer, tid: Buffer): Promise<FileHandle> {
    return this.inner.openCommittedBlobFile(oid, tid);
  }
  get lastDurableTid(): Buffer {
    return this.inner.lastDurableTid;
  }
  get isClosed(): boolean {
    return this.inner.isClosed;
  }
  /** Nothing to abort: no transaction begins here (the usual begin-then-abort-on-failure code runs unchanged). */
  async tpcAbort(_txn: unknown): Promise<void> {}

  private refuse(operation: string): never {
    throw new ReadOnlyError(operation, this.inner.path);
  }
  newOid(): never {
    return this.refuse('newOid');
  }
  async tpcBegin(..._args: unknown[]): Promise<never> {
    return this.refuse('tpcBegin');
  }
  store(..._args: unknown[]): never {
    return this.refuse('store');
  }
  restore(..._args: unknown[]): never {
    return this.refuse('restore');
  }
  async storeBlob(..._args: unknown[]): Promise<never> {
    return this.refuse('storeBlob');
  }
  async restoreBlob(..._args: unknown[]): Promise<never> {
    return this.refuse('restoreBlob');
  }
  async tpcVote(..._args: unknown[]): Promise<never> {
    return this.refuse('tpcVote');
  }
  async tpcFinish(..._args: unknown[]): Promise<never> {
    return this.refuse('tpcFinish');
  }
  async undo(..._args: unknown[]): Promise<never> {
    return this.refuse('undo');
  }
  async pack(..._args: unknown[]): Promise<never> {
    return this.refuse('pack');
  }
}
