// `zrs verify FILE`: an end-to-end check of a Data.fs like ZODB's fstest,
// read straight from the bytes (no index, no FileStorage recovery, so a
// damaged tail is reported rather than skipped). Checks: the magic; for every
// transaction a complete header, a known status, tids strictly increasing,
// metadata inside the record, a redundant length equal to tlen; for every
// data record that it lies inside its transaction, carries the transaction's
// tid and position, has no version, that `prev` is the oid's previous record,
// and that a backpointer names an earlier record of the same oid whose chain
// ends in data (or in "no data"). Memory: one read window plus the set of
// record positions and the last position of each oid.

import type { FileHandle } from 'node:fs/promises';
import { setTimeout as delay } from 'node:timers/promises';
import { fileState, openFileToRead } from '../storage/fileio.js';
import {
  BACKPOINTER_BYTES,
  DATA_HEADER_BYTES,
  MAGIC_BYTES,
  MAGIC_FS21,
  MAGIC_FS30,
  TRAILER_BYTES,
  TXN_HEADER_BYTES,
  dataRecordLength,
  describeMagic,
  readDataHeader,
  readTxnHeader,
  readU64At,
} from '../storage/format.js';
import { BigMap, BigSet } from '../storage/bigMap.js';
import { lockMayBeHeld } from '../storage/lock.js';
import { firstFillWithin } from '../storage/prealloc.js';
import { dataEnd as dataEndOf, intactTransactionAfter } from '../storage/scan.js';
import { tidToString } from '../storage/timestamp.js';
import type { CommandSpec } from './args.js';
import { EXIT_FAILURE, EXIT_OK, type CliIo } from './io.js';
import { printable } from './logging.js';

export const verifySpec: CommandSpec = {
  name: 'verify',
  positionals: ['FILE'],
  flags: [{ name: 'no-progress', help: 'never show the progress line (it only appears when stderr is a terminal)' }],
  summary: 'Check a Data.fs end to end, like ZODB\'s fstest.',
  description: `
Reads the file read-only from the first byte to the last and checks every
transaction header, data record, prev pointer, backpointer chain and
redundant length, and that tids strictly increase. Prints a summary and
exits 0 when everything holds; otherwise prints the first problem with its
file position and exits 1. Safe on a file a server is using: a problem in
such a file (its lock is held) may be a commit in progress, so it is looked
at again once the file changes, and reported when it stays as it was or the
file holds still for 2 s. Transactions committed after the check started
are checked as far as it gets.

example:
  zrs verify /var/db/Data.fs`,
};

export interface VerifySummary {
  ok: true;
  magic: string;
  transactions: number;
  records: number;
  objects: number;
  backpointers: number;
  bytes: number;
  /** Bytes of preallocated fill past the last transaction (a storage has the file open for writing, or crashed with it open). */
  fillBytes: number;
  lastTid: Buffer | null;
  /**
   * A transaction that was still being written when the check ended, and
   * the problem it had then; it began past the end the file had when the
   * check started (`bytes` ends where it begins).
   */
  beingWritten: { position: number; problem: string } | null;
}

/** Said of an unfinished transaction with nothing intact after it: what a crash during its commit leaves, not damage. */
const UNFINISHED_AT_END = 'as a crash while it was written leaves it: a read-write open cuts it, keeping its bytes in a .trN file beside it';
/** Said of a voted transaction that intact ones follow: the open cuts from it all the same, which loses them. */
const VOTED_BEFORE_INTACT = 'yet intact transactions follow it: a read-write open cuts it and every one after it (a torn sync can leave it so), keeping their bytes in a .trN file beside it';
/** Said of one that intact transactions follow: damage, which the storage refuses to open rather than cut. */
const DAMAGE_BEFORE_INTACT = 'yet intact transactions follow it: damage, not what a crash leaves (a read-write open refuses the file)';

export interface VerifyProblem {
  ok: false;
  /** File offset where the problem is. */
  position: number;
  problem: string;
  /** Complete, good transactions before it. */
  transactions: number;
  /** A storage had the file open for writing (its lock was held): the problem was still there when looked at again. */
  inUse: boolean;
}

export type VerifyResult = VerifySummary | VerifyProblem;

/** Size of the sequential read window. */
const WINDOW_BYTES = 4 << 20;
/** Backpointer chains longer than this are reported (ZODB's are a handful). */
const MAX_CHAIN = 10_000;
const STATUSES = new Set([' ', 'p', 'u']);

class Problem extends Error {
  constructor(
    readonly position: number,
    message: string,
  ) {
    super(message);
  }
}

/** Sequential reads through a window; random reads (backpointer targets) straight from the file. */
class Reader {
  private buf = Buffer.alloc(0);
  private start = 0;

  constructor(
    readonly fh: FileHandle,
    readonly size: number,
  ) {}

  async at(pos: number, length: number): Promise<Buffer> {
    if (pos >= this.start && pos + length <= this.start + this.buf.length) return this.buf.subarray(pos - this.start, pos - this.start + length);
    const want = Math.min(Math.max(length, WINDOW_BYTES), this.size - pos);
    const buf = Buffer.allocUnsafe(want);
    let got = 0;
    while (got < want) {
      const { bytesRead } = await this.fh.read(buf, got, want - got, pos + got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    this.buf = buf.subarray(0, got);
    this.start = pos;
    if (got < length) throw new Problem(pos, `file ends (at ${pos + got}) inside a structure that needs ${length} bytes`);
    return this.buf.subarray(0, length);
  }

  async random(pos: number, length: number): Promise<Buffer> {
    const buf = Buffer.alloc(length);
    const { bytesRead } = await this.fh.read(buf, 0, length, pos);
    if (bytesRead < length) throw new Problem(pos, 'read past the end of the file');
    return buf;
  }
}

export interface VerifyOptions {
  /** Gets the fraction of bytes checked. */
  onProgress?: (fraction: number) => void;
  /** Told when a problem turned up in a file a storage has open for writing, before waiting for the file to change (awaited). */
  onWait?: (problem: { position: number; problem: string }) => void | Promise<void>;
  /** How long such a file must hold still before the problem is reported as what is on disk (ms; default SETTLE_MS, 2 s). */
  settleMs?: number;
}

/** How long a file in use must hold still under a problem for it to be reported (ms). */
const SETTLE_MS = 2000;
/** How often a file in use is looked at while waiting for it to change. */
const SETTLE_POLL_MS = 10;
/** Looks at a file in use that keeps changing under a problem before the problem is reported. */
const MAX_LOOKS = 100;

/**
 * Verify a Data.fs. On a file a storage has open for writing (its lock is
 * held), the end may be a commit in progress: a problem there is looked at
 * again once the file changed, from the transaction where it was, and is
 * reported only when it stays as it was or the file holds still for
 * `settleMs`. Transactions that began past the end first seen are not
 * waited for.
 *
 * @example
 * const r = await verifyFile('Data.fs');
 * if (!r.ok) console.error(`position ${r.position}: ${r.problem}`);
 */
export async function verifyFile(path: string, options: VerifyOptions = {}): Promise<VerifyResult> {
  const fh = await openFileToRead(path);
  try {
    const settleMs = options.settleMs ?? SETTLE_MS;
    const walk = new Walk(options.onProgress);
    let firstEnd: number | null = null;
    let seen: Problem | null = null;
    let inUse: boolean | null = null;
    for (let look = 1; ; look++) {
      const { version, size } = fileState(fh.fd);
      // The transactions end where fill written ahead of them begins (src/storage/prealloc.ts).
      const dataEnd = await dataEndOf(fh, size);
      firstEnd ??= dataEnd;
      const problem = await walk.run(new Reader(fh, size), dataEnd);
      if (problem === null) return walk.summary(size, dataEnd, null);
      // The same problem found again, by a walk during which the file held still, after a wait for it to change.
      const still = fileState(fh.fd).version === version;
      const again = still && seen !== null && seen.position === problem.position && seen.message === problem.message;
      // A transaction begun past the first end is another commit than those the check set out to cover
      // (the magic checked first: a file too short for it has no transaction to begin past its end).
      if (walk.magic !== '' && walk.pos >= firstEnd && !again) return walk.summary(size, dataEnd, { position: problem.position, problem: problem.message });
      inUse ??= await lockMayBeHeld(`${path}.lock`);
      if (again || !inUse || look >= MAX_LOOKS) return { ok: false, position: problem.position, problem: problem.message, transactions: walk.transactions, inUse };
      // A walk the file changed under may have read a commit half done: look again at once. Otherwise
      // wait for a change (or the settle time: a change within the file's time granularity goes unseen),
      // then look again; what is read decides, not the file's times.
      seen = still ? problem : null;
      if (still) await changeOf(fh.fd, version, settleMs, () => options.onWait?.({ position: problem.position, problem: problem.message }));
    }
  } finally {
    await fh.close();
  }
}

/** Resolves once the file's version differs from `version` (`waiting` is called first), or after `settleMs`. */
async function changeOf(fd: number, version: string, settleMs: number, waiting: () => void | Promise<void>): Promise<void> {
  await waiting();
  for (let waited = 0; fileState(fd).version === version && waited < settleMs; waited += SETTLE_POLL_MS) await delay(SETTLE_POLL_MS);
}

/**
 * The checks, transaction by transaction, resumable: a transaction's
 * records count only once all of it checked, so a walk stopped by a
 * transaction still being written can start again at that transaction.
 */
class Walk {
  magic = '';
  pos = MAGIC_BYTES;
  transactions = 0;
  private records = new BigSet<number>();
  private lastOfOid = new BigMap<string, number>();
  private backpointers = 0;
  private recordCount = 0;
  private lastTid: Buffer | null = null;

  constructor(private readonly onProgress: ((f: number) => void) | undefined) {}

  /** Check from `pos` to `size`; the problem that stopped it, or null at the end. */
  async run(reader: Reader, size: number): Promise<Problem | null> {
    try {
      if (this.magic === '') this.magic = await checkMagic(reader, size);
      while (this.pos < size) {
        await this.transaction(reader, size);
        this.onProgress?.(this.pos / size);
      }
      return null;
    } catch (err) {
      if (err instanceof Problem) return err;
      throw err;
    }
  }

  summary(size: number, dataEnd: number, beingWritten: VerifySummary['beingWritten']): VerifySummary {
    const { magic, transactions, recordCount: records, backpointers, lastTid } = this;
    return { ok: true, magic, transactions, records, objects: this.lastOfOid.size, backpointers, bytes: this.pos, fillBytes: size - dataEnd, lastTid, beingWritten };
  }

  /**
   * What an unfinished transaction at `pos` is: with nothing intact after it,
   * the leftover of a crash (`what` says how it reads so), else damage, as
   * the storage's open judges it.
   */
  private async unfinished(reader: Reader, pos: number, size: number, what: string): Promise<string> {
    return (await intactTransactionAfter(reader.fh, pos, size, this.lastTid)) ? DAMAGE_BEFORE_INTACT : `${what}${UNFINISHED_AT_END}`;
  }

  private async transaction(reader: Reader, size: number): Promise<void> {
    const pos = this.pos;
    if (size - pos < TXN_HEADER_BYTES) throw new Problem(pos, `incomplete transaction header: ${size - pos} bytes left, 23 needed; a commit cut short by the end of the file, ${UNFINISHED_AT_END}`);
    const h = readTxnHeader(await reader.at(pos, TXN_HEADER_BYTES));
    const tid = Buffer.from(h.tid);
    const what = `transaction ${tid.toString('hex')} at ${pos}`;
    const lastTid = this.lastTid;
    if (lastTid && Buffer.compare(tid, lastTid) <= 0) {
      throw new Problem(pos, `${what}: tid is not after the previous one (${lastTid.toString('hex')}, ${tidToString(lastTid)})`);
    }
    // The open cuts a 'c' whatever follows (a torn sync can leave one before transactions written whole).
    if (h.status === 'c') {
      const after = (await intactTransactionAfter(reader.fh, pos, size, this.lastTid)) ? VOTED_BEFORE_INTACT : UNFINISHED_AT_END;
      throw new Problem(pos, `${what}: status 'c', an unfinished transaction (voted, never finished); ${after}`);
    }
    if (!STATUSES.has(h.status)) throw new Problem(pos + 16, `${what}: invalid status byte 0x${h.status.charCodeAt(0).toString(16).padStart(2, '0')}`);
    const meta = TXN_HEADER_BYTES + h.ulen + h.dlen + h.elen;
    if (h.length < meta) throw new Problem(pos + 8, `${what}: length ${h.length} is shorter than its header and metadata (${meta})`);
    // Fill inside (the data may seem to end early when a torn sync left fill at the transaction's end).
    const end = pos + h.length;
    const fill = await firstFillWithin((at, length) => reader.at(at, length), pos, Math.min(end + TRAILER_BYTES, reader.size), WINDOW_BYTES);
    if (fill >= 0) throw new Problem(fill, `${what}: holds preallocated fill, a sync torn by a crash; a read-write open cuts it`);
    if (pos + h.length > size) throw new Problem(pos, `${what}: runs past the end of the file (needs ${h.length + TRAILER_BYTES} bytes, ${size - pos} left); ${await this.unfinished(reader, pos, size, 'a commit cut short by the end of the file, ')}`);
    if (pos + h.length + TRAILER_BYTES > size) throw new Problem(pos + h.length, `${what}: its 8-byte redundant length is cut off by the end of the file; ${await this.unfinished(reader, pos, size, 'a commit cut short by the end of the file, ')}`);
    const trailer = readU64At(await reader.at(pos + h.length, TRAILER_BYTES), 0);
    if (trailer !== h.length) throw new Problem(pos + h.length, `${what}: redundant length ${trailer} differs from the header's ${h.length}`);
    // The records' positions and each oid's last one within this transaction, kept apart until all of it checked.
    const mine = new Set<number>();
    const lastHere = new Map<string, number>();
    let backpointers = 0;
    let rpos = pos + meta;
    while (rpos < end) {
      if (end - rpos < DATA_HEADER_BYTES) throw new Problem(rpos, `${what}: ${end - rpos} bytes left, too few for a data record header`);
      const d = readDataHeader(await reader.at(rpos, DATA_HEADER_BYTES));
      const oid = d.oid.toString('hex');
      const rwhat = `data record for oid ${oid} at ${rpos} (${what})`;
      const len = dataRecordLength(d.plen);
      if (rpos + len > end) throw new Problem(rpos, `${rwhat}: runs past the end of its transaction (length ${len}, ${end - rpos} left)`);
      if (!d.tid.equals(tid)) throw new Problem(rpos + 8, `${rwhat}: tid ${d.tid.toString('hex')} is not the transaction's`);
      if (d.tloc !== pos) throw new Problem(rpos + 24, `${rwhat}: transaction position ${d.tloc} should be ${pos}`);
      if (d.vlen !== 0) throw new Problem(rpos + 32, `${rwhat}: version length ${d.vlen} (versions are not supported)`);
      // As ZODB writes it: the oid's last record in an earlier transaction, also for its second record in this one;
      // or none in a packed transaction (a pack writes the records it keeps before the pack time without one).
      const expectedPrev = this.lastOfOid.get(oid) ?? 0;
      if (d.prev !== expectedPrev && !(h.status === 'p' && d.prev === 0)) throw new Problem(rpos + 16, `${rwhat}: prev ${d.prev} should be ${expectedPrev} (the oid's record in an earlier transaction)`);
      if (d.plen === 0) {
        const back = readU64At(await reader.at(rpos + DATA_HEADER_BYTES, BACKPOINTER_BYTES), 0);
        if (back !== 0) {
          backpointers++;
          await checkChain(reader, (at) => this.records.has(at) || mine.has(at), rwhat, rpos, d.oid, back);
        }
      }
      mine.add(rpos);
      lastHere.set(oid, rpos);
      rpos += len;
    }
    for (const at of mine) this.records.add(at);
    for (const [oid, at] of lastHere) this.lastOfOid.set(oid, at);
    this.backpointers += backpointers;
    this.recordCount += mine.size;
    this.lastTid = tid;
    this.transactions++;
    this.pos = end + TRAILER_BYTES;
  }
}

async function checkMagic(reader: Reader, size: number): Promise<string> {
  if (size < MAGIC_BYTES) throw new Problem(0, `file is ${size} bytes: too short for the 4-byte magic`);
  const magic = await reader.at(0, MAGIC_BYTES);
  if (!magic.equals(MAGIC_FS30) && !magic.equals(MAGIC_FS21)) {
    throw new Problem(0, `not a FileStorage file: magic ${describeMagic(magic)} (expected "FS30" or "FS21")`);
  }
  return magic.toString('latin1');
}

/** A backpointer must name an earlier record of the same oid; its chain must end in data or "no data". */
async function checkChain(reader: Reader, isRecord: (pos: number) => boolean, rwhat: string, rpos: number, oid: Buffer, first: number): Promise<void> {
  let back = first;
  for (let steps = 0; back !== 0; steps++) {
    if (steps > MAX_CHAIN) throw new Problem(rpos + DATA_HEADER_BYTES, `${rwhat}: backpointer chain longer than ${MAX_CHAIN}`);
    if (!isRecord(back)) throw new Problem(rpos + DATA_HEADER_BYTES, `${rwhat}: backpointer ${back} is not the position of an earlier data record`);
    const target = readDataHeader(await reader.random(back, DATA_HEADER_BYTES));
    if (!target.oid.equals(oid)) throw new Problem(rpos + DATA_HEADER_BYTES, `${rwhat}: backpointer ${back} is a record of oid ${target.oid.toString('hex')}`);
    if (target.plen > 0) return;
    back = readU64At(await reader.random(back + DATA_HEADER_BYTES, BACKPOINTER_BYTES), 0);
  }
}

export async function verify(path: string, io: CliIo, progress: boolean): Promise<number> {
  const show = progress && io.stderrIsTTY;
  let shown = -1;
  const onProgress = show
    ? (f: number): void => {
        const pct = Math.floor(f * 100);
        if (pct === shown) return;
        shown = pct;
        io.err(`\rverifying ${path}: ${pct}%`);
      }
    : undefined;
  const onWait = show ? (): void => io.err(`\rverifying ${path}: ${shown}%, waiting for a commit in progress`) : undefined;
  const r = await verifyFile(path, { onProgress, onWait });
  if (show) io.err('\r\x1b[2K');
  if (!r.ok) {
    const inUse = r.inUse ? `; a storage has the file open: the problem was still there when looked at again, up to ${SETTLE_MS / 1000} s later (a commit held longer between its vote and its finish looks the same: run it again)` : '';
    io.err(`${path}: position ${r.position}: ${printable(r.problem)} (${r.transactions} good transactions before it${inUse})\n`);
    return EXIT_FAILURE;
  }
  const last = r.lastTid ? `, last ${r.lastTid.toString('hex')} (${tidToString(r.lastTid)})` : '';
  await io.out(
    `${path}: OK: ${r.magic === 'FS21' ? "FS21 (Python 2's format: ZODB on Python 3 refuses to open it)" : r.magic}, ${r.transactions} transactions, ${r.records} data records (${r.backpointers} backpointers), ${r.objects} objects, ${r.bytes} bytes${last}${tailNote(r)}\n`,
  );
  return EXIT_OK;
}

function tailNote(r: VerifySummary): string {
  if (r.beingWritten) return `; then a transaction being written at ${r.beingWritten.position}, begun after the check started (not checked)`;
  return fillNote(r.fillBytes);
}

function fillNote(bytes: number): string {
  if (bytes === 0) return '';
  return `; then ${bytes} bytes of preallocated fill (a storage has the file open for writing, or crashed with it open; closing or the next read-write open cuts it)`;
}
