// A hash chain over a storage's transactions, kept in `<data file>.chain`:
// link(n) = sha256(link(n-1) || tid || content of transaction n), with
// link(-1) = 32 zero bytes. Two storages hold the same history up to a tid
// exactly when their links at that tid are equal, so a primary can tell a
// secondary that is behind from one that diverged, even at equal tids.
//
// The content hashed is position-independent (tid, user, description,
// extension, and each record's oid and resolved data, in file order), so a
// primary and its secondaries compute the same links though their files may
// differ in offsets (a packed primary); src/failover/links.ts computes
// them. Links are computed once, when a
// transaction becomes durable (commits$), and stored per tid: a later pack
// never changes them. The file is an 8-byte magic, then fixed-size entries
// (tid, link, check) appended 512 at a time (and on close, and before a
// pack replaces the data file), each write fsynced: the data file can give a
// lost link again, so a crash only costs recomputing it (a packed file could
// not give the same links, so every one is written before it replaces the
// old). A torn or zeroed entry in the last write (whose pages reach the disk
// in any order) fails its check and is dropped on open, with everything
// after it, and missing links are recomputed from the last stored one; a bad
// entry before that is damage, named.
// Memory: the unwritten entries and the last written ones (for sessions
// following live commits), encoded as on file in one buffer, so a busy
// storage keeps no object per transaction; lookups binary-search the file.

import { closeSync, existsSync, fdatasyncSync, fstatSync, ftruncateSync, openSync, readSync, write as fsWrite, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import type { Subscription } from 'rxjs';
import { ZrsError } from '../errors.js';
import type { FileStorage } from '../storage/FileStorage.js';
import { preadSync, syncDirectory } from '../storage/fileio.js';
import { compareIdsAt } from '../storage/format.js';
import { tidPlusOne } from '../storage/timestamp.js';
import type { CommittedTransaction } from '../storage/types.js';
import type { ChainHead } from '../wire/native.js';

import { CHAIN_ORIGIN, LINK_BYTES, linkAt, sha256, type RunLinks } from './links.js';

export type { ChainHead };
export { CHAIN_ORIGIN, LINK_BYTES, RunLinks, chainLink, contentAt, linkOfStored, linksOfRun, type ChainContent } from './links.js';

/** Version 1 files check each entry with sha256; version 2 (written now) with a cheap 64-bit mix. */
const MAGIC_V1 = Buffer.from('ZRSCHN01', 'latin1');
const MAGIC = Buffer.from('ZRSCHN02', 'latin1');
const HEADER_BYTES = MAGIC.length;
const CHECK_BYTES = 8;
/** tid (8) + link (32) + check (8). */
export const CHAIN_ENTRY_BYTES = 8 + LINK_BYTES + CHECK_BYTES;
/** Most links from the primary waiting for their transaction to commit (the applier finishes at most 512 ahead). */
const MAX_EXPECTED_LINKS = 4096;
/** Most links computed ahead of their commits that a replica keeps (a few runs' worth). */
const MAX_COMPUTED_LINKS = 65_536;
/** Entries kept in memory before they are written (see HashChain.append). */
const WRITE_BATCH_ENTRIES = 512;
/** Entries one torn write can hold bad ones among: a batch, and a page it shares with the write before. */
const TORN_WRITE_ENTRIES = WRITE_BATCH_ENTRIES + Math.ceil(4096 / CHAIN_ENTRY_BYTES) + 1;
/**
 * Entries written last that stay in memory: a cursor following live commits
 * finds them there instead of reading back what was just written.
 */
const WRITTEN_TAIL_ENTRIES = 2 * WRITE_BATCH_ENTRIES;
/** Entries a cursor reads at once. */
const CURSOR_BLOCK_ENTRIES = 1024;
/** Most samples a secondary sends in its hello. */
export const MAX_CHAIN_SAMPLES = 64;

/** Path of the hash chain of the storage at `dataPath`. */
export function chainPathFor(dataPath: string): string {
  return `${dataPath}.chain`;
}

interface Entry {
  tid: Buffer;
  hash: Buffer;
}

/** Writes the 8-byte check of `buf[off, off + 40)` at `off + 40`. */
type EntryCheck = (buf: Buffer, off: number, out: Buffer, outOff: number) => void;

/** Version 1: the first 8 bytes of sha256 (kept to read and extend older files). */
const shaCheck: EntryCheck = (buf, off, out, outOff) => {
  sha256(buf.subarray(off, off + 8 + LINK_BYTES)).copy(out, outOff, 0, CHECK_BYTES);
};

/**
 * Version 2: two multiplicative 32-bit mixes over the 40 bytes. It only has
 * to catch torn and zeroed entries (the link itself is the cryptographic
 * part), and a hash call per entry cost as much as the link's own.
 */
const mixCheck: EntryCheck = (buf, off, out, outOff) => {
  let a = 0x811c9dc5;
  let b = 0x9e3779b9;
  for (let i = off; i < off + 8 + LINK_BYTES; i++) {
    const x = buf[i]!;
    a = Math.imul(a ^ x, 0x01000193);
    b = Math.imul(b ^ x, 0x5bd1e995) ^ (b >>> 13);
  }
  // Byte by byte: writeUInt32BE checks its value, and a word of 2^31 or more
  // (not a small integer) made that check deoptimize once compiled.
  for (let i = 0; i < 4; i++) {
    out[outOff + i] = a >>> (24 - 8 * i);
    out[outOff + 4 + i] = b >>> (24 - 8 * i);
  }
};

const checkScratch = Buffer.allocUnsafe(CHECK_BYTES);

/** The entry encoded at `off` in `buf`, as views into it (entries held in memory are never rewritten in place). */
function entryView(buf: Buffer, off: number): Entry {
  return { tid: buf.subarray(off, off + 8), hash: buf.subarray(off + 8, off + 8 + LINK_BYTES) };
}

/** Whether the entry encoded at `off` in `buf` passes its check. */
function entryChecks(buf: Buffer, off: number, check: EntryCheck): boolean {
  check(buf, off, checkScratch, 0);
  return checkScratch.compare(buf, off + 8 + LINK_BYTES, off + CHAIN_ENTRY_BYTES) === 0;
}

/** How many whole entries at the start of `buf` pass their check. */
function validEntries(buf: Buffer, check: EntryCheck): number {
  let n = 0;
  while ((n + 1) * CHAIN_ENTRY_BYTES <= buf.length && entryChecks(buf, n * CHAIN_ENTRY_BYTES, check)) n++;
  return n;
}

function decodeEntry(buf: Buffer, check: EntryCheck): Entry | null {
  if (!entryChecks(buf, 0, check)) return null;
  return { tid: Buffer.from(buf.subarray(0, 8)), hash: Buffer.from(buf.subarray(8, 8 + LINK_BYTES)) };
}

/** An open chain file: its descriptor and the check its version uses. */
interface ChainFile {
  fd: number;
  check: EntryCheck;
}

function readEntry(file: ChainFile, index: number): Entry | null {
  const buf = Buffer.alloc(CHAIN_ENTRY_BYTES);
  const n = readSync(file.fd, buf, 0, CHAIN_ENTRY_BYTES, HEADER_BYTES + index * CHAIN_ENTRY_BYTES);
  return n === CHAIN_ENTRY_BYTES ? decodeEntry(buf, file.check) : null;
}

/** Entry `index`, which must be whole (it is before the last one checked on open). */
function readWholeEntry(path: string, file: ChainFile, index: number): Entry {
  const e = readEntry(file, index);
  if (e === null) throw damagedEntry(path, index);
  return e;
}

/** Number of entries with tid <= `tid` among the first `count` (entries are in tid order). */
function countUpTo(at: (i: number) => Entry, count: number, tid: Buffer): number {
  let lo = 0;
  let hi = count;
  while (lo < hi) {
    const mid = Math.floor((lo + hi) / 2);
    if (Buffer.compare(at(mid).tid, tid) <= 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Open (creating) a chain file; drop a torn tail; returns the file and the number of whole, valid entries. */
function openChainFile(path: string): { file: ChainFile; entries: number; created: boolean } {
  const created = !existsSync(path);
  const fd = openSync(path, created ? 'w+' : 'r+');
  try {
    return { ...chainFileOn(fd, path), created };
  } catch (err) {
    closeSync(fd);
    throw err;
  }
}

/** The chain file open at `fd` (at `path`), its torn tail dropped (see openChainFile). */
function chainFileOn(fd: number, path: string): { file: ChainFile; entries: number } {
  const size = fstatSync(fd).size;
  const head = Buffer.alloc(HEADER_BYTES);
  const whole = size >= HEADER_BYTES && readSync(fd, head, 0, HEADER_BYTES, 0) === HEADER_BYTES;
  // New, or its creation cut short before its header reached the disk (it held no entry yet): start
  // over, the links recomputed from the data file.
  if (!whole || (size === HEADER_BYTES && head.equals(Buffer.alloc(HEADER_BYTES)))) {
    ftruncateSync(fd, 0);
    writeSync(fd, MAGIC, 0, HEADER_BYTES, 0);
    return { file: { fd, check: mixCheck }, entries: 0 };
  }
  if (!(head.equals(MAGIC) || head.equals(MAGIC_V1))) {
    // Another format (a newer version's) or a damaged header: never rebuilt silently, since the links a
    // primary gave for packed transactions cannot be computed again, and without them the node reads as diverged.
    const what = head.subarray(0, 6).toString('latin1') === 'ZRSCHN' ? `a format this version does not read (${head.toString('latin1')}: a newer version's?)` : 'not a hash chain file (bad magic)';
    throw new ZrsError(
      `${path}: ${what}; move it away to rebuild the chain from the data file (links a primary gave for packed transactions are then lost, see docs/FAILOVER.md)`,
    );
  }
  // An older file keeps its own check, so its entries (some maybe sent by a primary) stay valid.
  const file = { fd, check: head.equals(MAGIC) ? mixCheck : shaCheck };
  let entries = Math.floor((size - HEADER_BYTES) / CHAIN_ENTRY_BYTES);
  // A torn append: a partial entry, or a whole one whose check fails (zeroed blocks). The pages of
  // one write reach the disk in any order, so a bad entry inside the last write (and the page it
  // shares with the one before) is torn too, with whole ones after it: cut from the first.
  while (entries > 0 && readEntry(file, entries - 1) === null) entries -= 1;
  for (let i = Math.max(0, entries - TORN_WRITE_ENTRIES); i < entries; i++) {
    if (readEntry(file, i) === null) entries = i;
  }
  // What is kept must check whole: a bad entry before the last write (written whole and synced) is
  // damage (a stray write, bit rot), named now rather than when a lookup first reads it. Refused
  // before the torn tail is cut, so a refused file is left as it was.
  const bad = firstBadEntry(file, entries);
  if (bad !== null) throw damagedEntry(path, bad);
  if (size !== HEADER_BYTES + entries * CHAIN_ENTRY_BYTES) ftruncateSync(fd, HEADER_BYTES + entries * CHAIN_ENTRY_BYTES);
  return { file, entries };
}

/** Entries the open checks per read. */
const CHECK_BLOCK_ENTRIES = 8192;

/** The index of the first of the first `count` entries that fails its check, or null. */
function firstBadEntry(file: ChainFile, count: number): number | null {
  for (let first = 0; first < count; first += CHECK_BLOCK_ENTRIES) {
    const n = Math.min(CHECK_BLOCK_ENTRIES, count - first);
    const valid = validEntries(preadSync(file.fd, HEADER_BYTES + first * CHAIN_ENTRY_BYTES, n * CHAIN_ENTRY_BYTES), file.check);
    if (valid < n) return first + valid;
  }
  return null;
}

function damagedEntry(path: string, index: number): ZrsError {
  return new ZrsError(`${path}: chain entry ${index} is damaged; move the file away to have the chain computed again from the data file`);
}

/** A cut of a chain file prepared (see prepareChainCut): `apply()` makes it, durably; `close()` in any case. */
export interface ChainCut {
  apply(): void;
  close(): void;
}

/**
 * Prepare to cut the chain file of `dataPath` after `tid` (rewind): the file
 * is opened and checked now, so a damaged one stops a rewind before it cuts
 * anything; null without a chain file. Offline: the storage must not be open.
 */
export function prepareChainCut(dataPath: string, tid: Buffer): ChainCut | null {
  const path = chainPathFor(dataPath);
  if (!existsSync(path)) return null;
  const { file, entries } = openChainFile(path);
  try {
    const keep = countUpTo((i) => readWholeEntry(path, file, i), entries, tid);
    return {
      apply: () => {
        ftruncateSync(file.fd, HEADER_BYTES + keep * CHAIN_ENTRY_BYTES);
        fdatasyncSync(file.fd);
      },
      close: () => closeSync(file.fd),
    };
  } catch (err) {
    closeSync(file.fd);
    throw err;
  }
}

function writeAt(fd: number, buf: Buffer, pos: number): Promise<void> {
  return new Promise((resolve, reject) =>
    fsWrite(fd, buf, 0, buf.length, pos, (err, n) => (err ? reject(err) : n !== buf.length ? reject(new ZrsError('short write to the chain file')) : resolve())),
  );
}

export interface HashChainOptions {
  /** fsync each write of entries (a batch, or a link given by a primary). Default true. */
  fsync?: boolean;
}

/**
 * The hash chain of one open storage, following its commits.
 *
 * @example
 * const chain = await HashChain.open(storage);
 * chain.head; // { tid, hash } of the last transaction, or null when empty
 * chain.hashAt(tid); // the link at tid, or null when the storage has no such transaction
 */
export class HashChain {
  /**
   * Entries from index memFirst on, encoded as on file: written ones (at most
   * WRITTEN_TAIL_ENTRIES, up to fileEntries), then unwritten ones. Bytes once
   * encoded here never change: room is made in a new buffer, so views handed
   * out and a write under way stay valid.
   */
  private mem = Buffer.allocUnsafe(64 * CHAIN_ENTRY_BYTES);
  private memFirst: number;
  private memCount = 0;
  private flushing: Promise<void> | null = null;
  private stopFlushBeforeReplace: (() => void) | null = null;
  private sub: Subscription | null = null;
  private failed: Error | null = null;
  private closed = false;
  /** Links the primary sent for packed transactions about to commit here (bounded). */
  private readonly expected = new Map<string, Buffer>();
  /** Entry index and tid of each link a primary gave that is not on disk yet, oldest first. */
  private givenUnwritten: Array<{ index: number; tid: Buffer }> = [];
  /** The first packed transaction committed here whose given link a write error lost (see lostLink). */
  private lost: Buffer | null = null;
  /**
   * Runs of links computed here ahead of their commits, oldest first, from
   * entry computedAt of run computedRun on (at most MAX_COMPUTED_LINKS).
   */
  private computed: Array<RunLinks | undefined> = [];
  private computedRun = 0;
  private computedAt = 0;
  private computedCount = 0;

  private constructor(
    readonly path: string,
    private readonly file: ChainFile,
    private fileEntries: number,
    private headEntry: Entry | null,
    private readonly fsync: boolean,
    private readonly storage: FileStorage,
  ) {
    this.memFirst = fileEntries;
  }

  /** Entries not yet written. */
  private get pendingCount(): number {
    return this.memFirst + this.memCount - this.fileEntries;
  }

  /** Where entry `i` (at least memFirst) starts in `mem`. */
  private memOffset(i: number): number {
    return (i - this.memFirst) * CHAIN_ENTRY_BYTES;
  }

  /** Open the chain beside `storage`, bring it up to the storage's last durable transaction, follow commits. */
  static async open(storage: FileStorage, options: HashChainOptions = {}): Promise<HashChain> {
    const path = chainPathFor(storage.path);
    const { file, entries, created } = openChainFile(path);
    let chain: HashChain;
    try {
      // A new file's name durable too: links it holds may be ones a primary gave, which cannot be recomputed.
      if (created && (options.fsync ?? true)) await syncDirectory(dirname(path));
      // Links past the data file's end (the data lost its tail) no longer describe it.
      const keep = countUpTo((i) => readWholeEntry(path, file, i), entries, storage.lastDurableTid);
      if (keep < entries) {
        ftruncateSync(file.fd, HEADER_BYTES + keep * CHAIN_ENTRY_BYTES);
        // Durable before new links follow: links of cut transactions coming back after a crash would be taken for the new ones' predecessors.
        if (options.fsync ?? true) fdatasyncSync(file.fd);
      }
      chain = new HashChain(path, file, keep, keep > 0 ? readWholeEntry(path, file, keep - 1) : null, options.fsync ?? true, storage);
    } catch (err) {
      closeSync(file.fd);
      throw err;
    }
    try {
      await chain.catchUp();
    } catch (err) {
      await chain.close().catch(() => undefined);
      throw err;
    }
    return chain;
  }

  private async catchUp(): Promise<void> {
    // A pack changes what the data file can give links from: every link is written before it swaps the file.
    // A chain stopped by a write error refuses (flush throws): the links it did not write would be computed
    // again from the packed file, different from the ones secondaries hold. Reopened, it completes first.
    // A rewind's file is the old one cut at the fork, and the chain is cut and opened again on it after.
    this.stopFlushBeforeReplace = this.storage.beforeDataFileReplaced((why) => (why === 'rewind' && this.failed ? Promise.resolve() : this.flush()));
    const early: CommittedTransaction[] = [];
    let following = false;
    this.sub = this.storage.commits$.subscribe((c) => (following ? this.onCommit(c) : early.push(c)));
    const from = this.headEntry ? tidPlusOne(this.headEntry.tid) : null;
    for await (const txn of this.storage.iterator(from)) this.append(txn.tid, linkAt(this.storage, this.headEntry?.hash ?? CHAIN_ORIGIN, txn.pos, txn.raw));
    for (const c of early) this.onCommit(c);
    following = true;
    await this.flush();
  }

  private onCommit(c: CommittedTransaction): void {
    if (this.closed || (this.headEntry && Buffer.compare(c.tid, this.headEntry.tid) <= 0)) return;
    if (this.failed) {
      // Taken no more; a link only the primary could give is lost with it.
      if (this.expected.delete(c.tid.toString('hex')) && c.status === 'p') this.lost ??= Buffer.from(c.tid);
      return;
    }
    try {
      let given: Buffer | undefined;
      if (this.expected.size > 0) {
        const key = c.tid.toString('hex');
        given = this.expected.get(key);
        this.expected.delete(key);
      }
      const prev = this.headEntry?.hash ?? CHAIN_ORIGIN;
      // A packed transaction lost records: its content no longer gives the link, the primary's does.
      const link = given && c.status === 'p' ? given : (this.takeComputed(c.tid, prev) ?? linkAt(this.storage, prev, c.pos, c.raw));
      // A link given by the primary cannot be computed here again: written at once.
      if (link === given) this.givenUnwritten.push({ index: this.length, tid: Buffer.from(c.tid) });
      this.append(c.tid, link, link === given);
    } catch (err) {
      // Never thrown into the storage's publisher: the chain stops here and is
      // completed from the data file on the next open.
      this.failed = err as Error;
    }
  }

  /**
   * Entries are written a batch at a time: one lost in a crash is computed
   * again from the data file on the next open. `now`: write it without
   * waiting for the batch (a link that only the primary could give).
   */
  private append(tid: Buffer, hash: Buffer, now = false): void {
    if ((this.memCount + 1) * CHAIN_ENTRY_BYTES > this.mem.length) this.makeRoom();
    const off = this.memOffset(this.length);
    tid.copy(this.mem, off, 0, 8);
    hash.copy(this.mem, off + 8, 0, LINK_BYTES);
    this.file.check(this.mem, off, this.mem, off + 8 + LINK_BYTES);
    this.memCount += 1;
    this.headEntry = entryView(this.mem, off);
    if (now) this.mustWrite = this.pendingCount;
    if (now || this.pendingCount >= WRITE_BATCH_ENTRIES) this.flushing ??= this.runFlush();
  }

  /** A new buffer for `mem`, keeping the unwritten entries and the last WRITTEN_TAIL_ENTRIES written, with room to grow. */
  private makeRoom(): void {
    const first = Math.max(this.memFirst, this.fileEntries - WRITTEN_TAIL_ENTRIES);
    const keep = this.memFirst + this.memCount - first;
    const from = this.memOffset(first);
    const mem = Buffer.allocUnsafe(Math.max(64, 2 * (keep + 1)) * CHAIN_ENTRY_BYTES);
    this.mem.copy(mem, 0, from, from + keep * CHAIN_ENTRY_BYTES);
    this.mem = mem;
    this.memFirst = first;
    this.memCount = keep;
  }

  /** Pending entries that must be written without waiting for a full batch (a flush, a given link). */
  private mustWrite = 0;

  /**
   * Write batches while a full one is pending or entries must be written.
   * Entries appended while a write is under way wait for the next full batch:
   * a fast committer does not turn the batches into one write per commit.
   */
  private async runFlush(): Promise<void> {
    try {
      while (this.pendingCount >= WRITE_BATCH_ENTRIES || this.mustWrite > 0) {
        // A batch at most per write, however many wait (they pile up during a slow sync): a crash tears
        // at most the last write, which is all the open may take for torn (TORN_WRITE_ENTRIES).
        const count = Math.min(this.pendingCount, WRITE_BATCH_ENTRIES);
        const from = this.memOffset(this.fileEntries);
        await writeAt(this.file.fd, this.mem.subarray(from, from + count * CHAIN_ENTRY_BYTES), HEADER_BYTES + this.fileEntries * CHAIN_ENTRY_BYTES);
        // Through the storage's disk: a simulated slow disk delays these syncs too.
        if (this.fsync) await this.storage.disk.datasync(this.file.fd);
        this.fileEntries += count;
        this.mustWrite = Math.max(0, this.mustWrite - count);
        if (this.givenUnwritten.length > 0) this.givenUnwritten = this.givenUnwritten.filter((g) => g.index >= this.fileEntries);
      }
    } catch (err) {
      // Unwritten links are recomputed from the data file on the next open, but for those a primary gave.
      this.failed = err as Error;
      this.lost ??= this.givenUnwritten[0]?.tid ?? null;
    } finally {
      this.flushing = null;
    }
  }

  /**
   * The primary's link for a packed transaction this replica is about to
   * commit (its content was reduced by pack, so the replica cannot compute it).
   */
  expectLink(tid: Buffer, link: Buffer): void {
    if (this.failed) {
      throw new ZrsError(
        `${this.path}: the hash chain stopped after an error (${this.failed.message}): it cannot record the link the primary gave for packed transaction ${tid.toString('hex')}, so that transaction is not committed here; reopen the node once its disk is fixed`,
        { cause: this.failed },
      );
    }
    if (this.expected.size >= MAX_EXPECTED_LINKS) this.expected.delete(this.expected.keys().next().value!);
    this.expected.set(tid.toString('hex'), Buffer.from(link));
  }

  /**
   * Links of transactions about to commit here, computed from their bytes
   * before they were written (a replica checks a run by its links). Each is
   * used only if, at its commit, the chain's head is the link it was
   * computed after; otherwise it is computed again.
   */
  expectComputed(run: RunLinks): void {
    if (run.count === 0) return;
    this.computed.push(run);
    this.computedCount += run.count;
    // Over the bound: the oldest runs go (their transactions' links are computed again if they commit).
    while (this.computedCount > MAX_COMPUTED_LINKS && this.computedRun < this.computed.length - 1) this.dropRun();
    if (this.computedRun > 64 && this.computedRun * 2 > this.computed.length) {
      this.computed = this.computed.slice(this.computedRun);
      this.computedRun = 0;
    }
  }

  /** Forget the links computed ahead (the transactions they were for will not commit as sent). */
  dropComputed(): void {
    this.computed = [];
    this.computedRun = 0;
    this.computedAt = 0;
    this.computedCount = 0;
  }

  /** Let go of the oldest run of computed links (or what is left of it). */
  private dropRun(): void {
    this.computedCount -= this.computed[this.computedRun]!.count - this.computedAt;
    this.computed[this.computedRun++] = undefined;
    this.computedAt = 0;
  }

  /** The link computed ahead for `tid` after `prev`, if any; older ones are dropped. */
  private takeComputed(tid: Buffer, prev: Buffer): Buffer | null {
    while (this.computedRun < this.computed.length) {
      const run = this.computed[this.computedRun]!;
      const i = this.computedAt;
      const order = compareIdsAt(run.tids, 8 * i, tid);
      if (order > 0) return null;
      // Taken or passed: a run is let go once its last link is, so links used at once die young.
      if (i + 1 === run.count) this.dropRun();
      else {
        this.computedAt = i + 1;
        this.computedCount -= 1;
      }
      if (order === 0) return run.follows(i, prev) ? run.link(i) : null;
    }
    return null;
  }

  /** A reader of consecutive links, for one session sending transactions in tid order. */
  cursor(): ChainCursor {
    return new ChainCursor(
      (first, max) => (this.closed ? EMPTY_BLOCK : this.entriesFrom(first, max)),
      () => (this.closed ? 0 : this.length),
    );
  }

  /**
   * Up to `max` whole entries from index `first`, encoded as on file: a read
   * of those only on file (up to the first damaged one), or a view of those
   * in memory.
   */
  private entriesFrom(first: number, max: number): Buffer {
    if (first >= this.memFirst) {
      const from = this.memOffset(first);
      const count = Math.max(0, Math.min(max, this.memFirst + this.memCount - first));
      return this.mem.subarray(from, from + count * CHAIN_ENTRY_BYTES);
    }
    const buf = Buffer.allocUnsafe(Math.min(max, this.memFirst - first) * CHAIN_ENTRY_BYTES);
    const n = readSync(this.file.fd, buf, 0, buf.length, HEADER_BYTES + first * CHAIN_ENTRY_BYTES);
    return buf.subarray(0, validEntries(buf.subarray(0, n), this.file.check) * CHAIN_ENTRY_BYTES);
  }

  /** The entry at `i` when memory holds it: unwritten, or among the last written. */
  private memoryEntry(i: number): Entry | undefined {
    if (i < this.memFirst || i >= this.memFirst + this.memCount) return undefined;
    return entryView(this.mem, this.memOffset(i));
  }

  /** Resolve once every link computed so far is on disk. */
  async flush(): Promise<void> {
    if (this.pendingCount > 0 && !this.failed) {
      this.mustWrite = this.pendingCount;
      this.flushing ??= this.runFlush();
    }
    while (this.flushing) await this.flushing;
    if (this.failed) throw new ZrsError(`${this.path}: writing the hash chain failed`, { cause: this.failed });
  }

  /**
   * Resolve once the links a primary gave (packed transactions, written at
   * once) are on disk. Rejects once a write stopped the chain (see
   * failure): such a link is lost (a reopened chain computes another from
   * the packed records), so its transaction must not be acknowledged.
   */
  async givenWritten(): Promise<void> {
    while (this.mustWrite > 0 && this.flushing) await this.flushing;
    if (this.failed) throw new ZrsError(`${this.path}: writing the hash chain failed: a link the primary gave is not on disk`, { cause: this.failed });
  }

  /**
   * The first packed transaction in the data file whose link, given by the
   * primary, a write error may have lost, or null. If the link did not reach
   * the disk, a reopened chain computes another for it from the packed
   * records, and the node's primary then finds it diverged there: so it must
   * not acknowledge that transaction (a secondary stops replicating while
   * this is set). Reopening the chain (a restart, a rewind) clears it.
   */
  get lostLink(): Buffer | null {
    return this.lost;
  }

  /**
   * The error that stopped the chain (a failed write or sync), or null. From
   * then on it takes no new links until reopened, which completes it from
   * the data file: its head stays at the last link taken.
   */
  get failure(): Error | null {
    return this.failed;
  }

  /** Tid and link of the last transaction, or null for an empty storage. */
  get head(): ChainHead | null {
    return this.headEntry ? { tid: Buffer.from(this.headEntry.tid), hash: Buffer.from(this.headEntry.hash) } : null;
  }

  /** Number of links. */
  get length(): number {
    return this.memFirst + this.memCount;
  }

  private entryAt(i: number): Entry {
    return this.memoryEntry(i) ?? readWholeEntry(this.path, this.file, i);
  }

  /** The link at `tid`, or null when no transaction has exactly this tid. */
  hashAt(tid: Buffer): Buffer | null {
    const n = countUpTo((i) => this.entryAt(i), this.length, tid);
    if (n === 0) return null;
    const e = this.entryAt(n - 1);
    return e.tid.equals(tid) ? Buffer.from(e.hash) : null;
  }

  /**
   * Links at a few tids, newest first: the head, then 1, 2, 4, 8 … entries
   * back, plus the first; with `alsoAt`, links at those tids when present,
   * newest first, as many as fit in `max`. A primary finds the last shared
   * tid among them.
   */
  samples(alsoAt: readonly Buffer[] = [], max = MAX_CHAIN_SAMPLES): ChainHead[] {
    const n = this.length;
    const indexes = new Set<number>();
    // However many tids are asked for, up to half the samples still step back from the head.
    const steps = Math.max(max - alsoAt.length - 1, Math.floor(max / 2));
    for (let step = 0; n - 1 - step >= 0 && indexes.size < steps; step = step === 0 ? 1 : step * 2) indexes.add(n - 1 - step);
    if (n > 0) indexes.add(0);
    const out: ChainHead[] = [...indexes].map((i) => this.entryAt(i)).map((e) => ({ tid: Buffer.from(e.tid), hash: Buffer.from(e.hash) }));
    // The asked-for tids fill what is left, newest first (the steps and the first transaction stay: forkPoint relies on the first).
    for (const tid of [...alsoAt].sort((a, b) => Buffer.compare(b, a))) {
      if (out.length >= max) break;
      const hash = this.hashAt(tid);
      if (hash && !out.some((s) => s.tid.equals(tid))) out.push({ tid: Buffer.from(tid), hash });
    }
    return out.sort((a, b) => Buffer.compare(b.tid, a.tid));
  }

  /** Stop following commits, write what is pending, close the file. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.sub?.unsubscribe();
    this.stopFlushBeforeReplace?.();
    try {
      await this.flush();
    } finally {
      closeSync(this.file.fd);
    }
  }
}

/**
 * Links of consecutive transactions, read a block of entries at a time
 * from where the last lookup ended: a session sending transactions in tid
 * order finds each next link without searching the file.
 */
export class ChainCursor {
  /** Entries from blockFirst on, encoded as on file. */
  private block: Buffer = EMPTY_BLOCK;
  private blockFirst = 0;
  private next = 0;
  /** The link at `next - 1` when the last lookup ended there, else null. */
  private lastLink: Buffer | null = null;

  constructor(
    private readonly read: (first: number, max: number) => Buffer,
    private readonly count: () => number,
  ) {}

  /**
   * The links at `tids` (consecutive transactions of the chain, oldest
   * first) and the link before the first (CHAIN_ORIGIN before the very
   * first), or null when the chain does not hold every one of them.
   */
  linksOf(tids: readonly Buffer[]): { prev: Buffer; links: Buffer[] } | null {
    if (tids.length === 0) return null;
    let i = this.next;
    // Right after the last lookup (the usual case), the link before is the last one returned.
    let prev: Buffer | undefined = this.lastLink ?? undefined;
    if (!this.tidIs(i, tids[0]!)) {
      // Searched one entry at a time; the block is read from where it is found.
      const entryAt = (k: number): Entry => {
        const one = this.read(k, 1);
        return one.length > 0 ? entryView(one, 0) : { tid: MAX_TID, hash: CHAIN_ORIGIN };
      };
      i = countUpTo(entryAt, this.count(), tids[0]!) - 1;
      if (i < 0 || !this.tidIs(i, tids[0]!)) return null;
      prev = undefined;
    }
    if (prev === undefined) {
      if (i === 0) prev = CHAIN_ORIGIN;
      else {
        const at = this.offsetOf(i - 1);
        if (at < 0) return null;
        prev = this.block.subarray(at + 8, at + 8 + LINK_BYTES);
      }
    }
    const links: Buffer[] = [];
    for (const tid of tids) {
      if (!this.tidIs(i, tid)) return null;
      const at = this.offsetOf(i++);
      links.push(this.block.subarray(at + 8, at + 8 + LINK_BYTES));
    }
    this.next = i;
    this.lastLink = links[links.length - 1]!;
    return { prev, links };
  }

  /** Whether entry `i` exists and has tid `tid`. */
  private tidIs(i: number, tid: Buffer): boolean {
    const at = this.offsetOf(i);
    return at >= 0 && compareIdsAt(this.block, at, tid) === 0;
  }

  /** Where entry `i` starts in the block (reading the block from `i` when it is not there), or -1 when the chain does not hold it. */
  private offsetOf(i: number): number {
    if (i < this.blockFirst || (i - this.blockFirst) * CHAIN_ENTRY_BYTES >= this.block.length) {
      if (i < 0 || i >= this.count()) return -1;
      this.block = this.read(i, CURSOR_BLOCK_ENTRIES);
      this.blockFirst = i;
      if (this.block.length === 0) return -1;
    }
    return (i - this.blockFirst) * CHAIN_ENTRY_BYTES;
  }
}

const MAX_TID = Buffer.alloc(8, 0xff);
const EMPTY_BLOCK = Buffer.alloc(0);
