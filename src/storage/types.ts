// Public shapes of the FileStorage API: transactions, records, iterator items
// and the commit notifications replication follows. Oids and tids are 8-byte
// Buffers everywhere (big-endian, as ZODB writes them).

import type { PickleValue, PickleWritable } from '../wire/pickle.js';
import type { StorageDisk } from './disk.js';

/** Transaction metadata given to tpcBegin, as ZODB's transaction object carries it. */
export interface TransactionMeta {
  /** Text (stored UTF-8) or raw bytes. */
  user?: string | Buffer;
  description?: string | Buffer;
  /** Stored as a pickled dict exactly as ZODB stores it; `{}` is stored as zero bytes. */
  extension?: { readonly [key: string]: PickleWritable };
  /** Raw extension bytes to store verbatim (used by restore paths); wins over `extension`. */
  extensionBytes?: Buffer;
}

export interface TpcBeginOptions {
  /** Commit under this tid (restore/replication). Must exceed lastTransaction(). */
  tid?: Buffer;
  /** Status byte to write: ' ' (default) or 'p' for a packed transaction being restored. */
  status?: string;
}

/** One data record as the iterator returns it. */
export interface DataRecord {
  oid: Buffer;
  tid: Buffer;
  /** The object's data with backpointers resolved, or null for "no data" (an undone creation). */
  data: Buffer | null;
  /** Tid of the record a backpointer points at directly (one level), or null. */
  dataTxn: Buffer | null;
  /** File offset of the record header. */
  pos: number;
  /** Raw backpointer when the record stores no data of its own (plen = 0), else null. */
  back: number | null;
}

/**
 * One transaction as the iterator returns it. Its buffers are views into a
 * read window that is never reused, so they stay valid; copy them when you
 * keep a few records for long (each view keeps its window alive).
 */
export interface TransactionRecord {
  tid: Buffer;
  /** ' ', 'p' (packed) … */
  status: string;
  user: Buffer;
  description: Buffer;
  /** The extension pickle exactly as stored (zero bytes for an empty dict). */
  extensionBytes: Buffer;
  /** File offset of the transaction header. */
  pos: number;
  /** tlen: header + metadata + records, without the 8-byte trailer. */
  length: number;
  records: DataRecord[];
  /** The transaction's bytes as stored, header to trailer (a view), when read from a file. */
  raw?: Buffer;
}

/** What tpcFinish publishes on commits$ once the transaction is durable. */
export interface CommittedTransaction {
  tid: Buffer;
  status: string;
  /** File offset of the transaction header. */
  pos: number;
  /** File offset just past the transaction's trailer (the file size after it). */
  end: number;
  /** Oids written by the transaction, in file order. */
  oids: Buffer[];
  /** The transaction's bytes as written (a view), when they were at hand; read the file otherwise. */
  raw?: Buffer;
}

export interface LoadResult {
  data: Buffer;
  tid: Buffer;
}

export interface LoadBeforeResult {
  data: Buffer;
  tid: Buffer;
  /** Tid of the next revision, or null when `tid` is current. */
  endTid: Buffer | null;
}

export interface HistoryEntry {
  tid: Buffer;
  time: number;
  user: Buffer;
  description: Buffer;
  extension: Record<string, PickleValue>;
  /** Stored data length (0 for a backpointer). */
  size: number;
}

export interface UndoLogEntry {
  /** Id to pass to undo(): the tid in base64, as ZODB's undo ids. */
  id: string;
  tid: Buffer;
  time: number;
  user: Buffer;
  description: Buffer;
  extension: Record<string, PickleValue>;
  /** Transaction length (tlen). */
  size: number;
}

export interface OpenOptions {
  /** Create the file if missing (and truncate an existing one when `create === 'truncate'`). */
  create?: boolean | 'truncate';
  readOnly?: boolean;
  /**
   * Read-only only, for tools that read damaged files (zrs dump): damage with
   * intact transactions after it ends the readable data there, as an
   * unfinished tail does (`unreadTailOnOpen`), instead of refusing the file.
   */
  stopAtDamage?: boolean;
  /** Blob directory (bushy layout); blobs are unsupported without it. */
  blobDir?: string;
  /** fsync each commit before tpcFinish resolves (default true). */
  fsync?: boolean;
  /**
   * With fsync, sync at the end of the turn of the event loop in which the
   * transaction finished, in this thread (no thread-pool round trip): every
   * transaction finished during the turn shares that sync. The event loop is
   * blocked for the length of the sync. With false, each finish asks for an
   * asynchronous sync at once (those waiting while one runs share the next).
   * Default true; a Secondary turns it off (it pipelines its finishes).
   */
  syncInline?: boolean;
  /**
   * With fsync, bytes of "fill" written ahead of the file's last transaction
   * at a time, for commits to overwrite (a synced overwrite is cheaper than a
   * synced append: see prealloc.ts). A clean close cuts the fill off; after a
   * crash the next open does. 0 turns it off. Default 256 KiB with fsync, 0
   * without.
   */
  preallocate?: number;
  /** Wall-clock source for new tids (and for the age of blob staging files left in tmp/), in ms since the epoch (tests inject a fake). */
  now?: () => number;
  /** The data file's disk I/O (default: node:fs); the simulator injects a slow or full disk. */
  disk?: StorageDisk;
}
