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
import { openFileToRead } from '../storage/fileio.js';
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
import { firstFillWithin } from '../storage/prealloc.js';
import { dataEnd as dataEndOf } from '../storage/scan.js';
import { tidToString } from '../storage/timestamp.js';
import type { CommandSpec } from './args.js';
import { EXIT_FAILURE, EXIT_OK, type CliIo } from './io.js';

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
file position and exits 1. Safe on a file a server is using (it checks what
is on disk at the moment it reads it; a problem at the very end of such a
file may be a commit in progress: run it again, damage stays where it is).

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
}

export interface VerifyProblem {
  ok: false;
  /** File offset where the problem is. */
  position: number;
  problem: string;
  /** Complete, good transactions before it. */
  transactions: number;
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
    private readonly fh: FileHandle,
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

/**
 * Verify a Data.fs. `onProgress` gets the fraction of bytes checked.
 *
 * @example
 * const r = await verifyFile('Data.fs');
 * if (!r.ok) console.error(`position ${r.position}: ${r.problem}`);
 */
export async function verifyFile(path: string, onProgress?: (fraction: number) => void): Promise<VerifyResult> {
  const fh = await openFileToRead(path);
  try {
    const size = (await fh.stat()).size;
    // The transactions end where fill written ahead of them begins (src/storage/prealloc.ts).
    const dataEnd = await dataEndOf(fh, size);
    const reader = new Reader(fh, size);
    let transactions = 0;
    try {
      return { ...(await walk(reader, dataEnd, onProgress, () => transactions++)), fillBytes: size - dataEnd };
    } catch (err) {
      if (err instanceof Problem) return { ok: false, position: err.position, problem: err.message, transactions };
      throw err;
    }
  } finally {
    await fh.close();
  }
}

async function walk(reader: Reader, size: number, onProgress: ((f: number) => void) | undefined, countTxn: () => void): Promise<Omit<VerifySummary, 'fillBytes'>> {
  if (size < MAGIC_BYTES) throw new Problem(0, `file is ${size} bytes: too short for the 4-byte magic`);
  const magic = await reader.at(0, MAGIC_BYTES);
  if (!magic.equals(MAGIC_FS30) && !magic.equals(MAGIC_FS21)) {
    throw new Problem(0, `not a FileStorage file: magic ${describeMagic(magic)} (expected "FS30" or "FS21")`);
  }
  const records = new Set<number>();
  const lastOfOid = new Map<string, number>();
  let backpointers = 0;
  let recordCount = 0;
  let lastTid: Buffer | null = null;
  let pos = MAGIC_BYTES;
  let transactions = 0;
  while (pos < size) {
    if (size - pos < TXN_HEADER_BYTES) throw new Problem(pos, `incomplete transaction header: ${size - pos} bytes left, 23 needed`);
    const h = readTxnHeader(await reader.at(pos, TXN_HEADER_BYTES));
    const tid = Buffer.from(h.tid);
    const what = `transaction ${tid.toString('hex')} at ${pos}`;
    if (lastTid && Buffer.compare(tid, lastTid) <= 0) {
      throw new Problem(pos, `${what}: tid is not after the previous one (${lastTid.toString('hex')}, ${tidToString(lastTid)})`);
    }
    if (h.status === 'c') throw new Problem(pos, `${what}: status 'c', an unfinished transaction (voted, never finished); a read-write open cuts it`);
    if (!STATUSES.has(h.status)) throw new Problem(pos + 16, `${what}: invalid status byte 0x${h.status.charCodeAt(0).toString(16).padStart(2, '0')}`);
    const meta = TXN_HEADER_BYTES + h.ulen + h.dlen + h.elen;
    if (h.length < meta) throw new Problem(pos + 8, `${what}: length ${h.length} is shorter than its header and metadata (${meta})`);
    // Fill inside (the data may seem to end early when a torn sync left fill at the transaction's end).
    const end = pos + h.length;
    const fill = await firstFillWithin((at, length) => reader.at(at, length), pos, Math.min(end + TRAILER_BYTES, reader.size), WINDOW_BYTES);
    if (fill >= 0) throw new Problem(fill, `${what}: holds preallocated fill, a sync torn by a crash; a read-write open cuts it`);
    if (pos + h.length > size) throw new Problem(pos, `${what}: runs past the end of the file (needs ${h.length + TRAILER_BYTES} bytes, ${size - pos} left)`);
    if (pos + h.length + TRAILER_BYTES > size) throw new Problem(pos + h.length, `${what}: its 8-byte redundant length is cut off by the end of the file`);
    const trailer = readU64At(await reader.at(pos + h.length, TRAILER_BYTES), 0);
    if (trailer !== h.length) throw new Problem(pos + h.length, `${what}: redundant length ${trailer} differs from the header's ${h.length}`);
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
      const expectedPrev = lastOfOid.get(oid) ?? 0;
      if (d.prev !== expectedPrev) throw new Problem(rpos + 16, `${rwhat}: prev ${d.prev} should be ${expectedPrev} (the oid's previous record)`);
      if (d.plen === 0) {
        const back = readU64At(await reader.at(rpos + DATA_HEADER_BYTES, BACKPOINTER_BYTES), 0);
        if (back !== 0) {
          backpointers++;
          await checkChain(reader, records, rwhat, rpos, d.oid, back);
        }
      }
      records.add(rpos);
      lastOfOid.set(oid, rpos);
      recordCount++;
      rpos += len;
    }
    lastTid = tid;
    transactions++;
    countTxn();
    pos = end + TRAILER_BYTES;
    onProgress?.(pos / size);
  }
  return { ok: true, magic: magic.toString('latin1'), transactions, records: recordCount, objects: lastOfOid.size, backpointers, bytes: size, lastTid };
}

/** A backpointer must name an earlier record of the same oid; its chain must end in data or "no data". */
async function checkChain(reader: Reader, records: ReadonlySet<number>, rwhat: string, rpos: number, oid: Buffer, first: number): Promise<void> {
  let back = first;
  for (let steps = 0; back !== 0; steps++) {
    if (steps > MAX_CHAIN) throw new Problem(rpos + DATA_HEADER_BYTES, `${rwhat}: backpointer chain longer than ${MAX_CHAIN}`);
    if (!records.has(back)) throw new Problem(rpos + DATA_HEADER_BYTES, `${rwhat}: backpointer ${back} is not the position of an earlier data record`);
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
  const r = await verifyFile(path, onProgress);
  if (show) io.err('\r\x1b[2K');
  if (!r.ok) {
    io.err(`${path}: position ${r.position}: ${r.problem} (${r.transactions} good transactions before it)\n`);
    return EXIT_FAILURE;
  }
  const last = r.lastTid ? `, last ${r.lastTid.toString('hex')} (${tidToString(r.lastTid)})` : '';
  await io.out(
    `${path}: OK: ${r.magic}, ${r.transactions} transactions, ${r.records} data records (${r.backpointers} backpointers), ${r.objects} objects, ${r.bytes} bytes${last}${fillNote(r.fillBytes)}\n`,
  );
  return EXIT_OK;
}

function fillNote(bytes: number): string {
  if (bytes === 0) return '';
  return `; then ${bytes} bytes of preallocated fill (a storage has the file open for writing, or crashed with it open; closing or the next read-write open cuts it)`;
}
