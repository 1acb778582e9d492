// Forward scan of a FileStorage: validates every transaction, builds the
// oid -> current-record index and a sparse tid -> position table, and tells a
// torn tail (damage reaching the end of the file, cut on open) from damage in
// the middle (a CorruptedDataError naming the file and position).

import { open, type FileHandle } from 'node:fs/promises';
import { CorruptedDataError } from '../errors.js';
import {
  DATA_HEADER_BYTES,
  STATUS_CHECKPOINT,
  STATUS_COMMITTED,
  STATUS_PACKED,
  TRAILER_BYTES,
  TXN_HEADER_BYTES,
  copyId,
  dataRecordLength,
  readDataHeader,
  readTxnHeader,
  readU64At,
  u32At,
  writeU64At,
  type TxnHeader,
} from './format.js';
import { BigMap } from './bigMap.js';
import { WindowReader, preadSync } from './fileio.js';
import { firstFillWithin, isFillRange, trailingFill } from './prealloc.js';
import { tidToSeconds } from './timestamp.js';
import type { PassTurns } from './turns.js';

/** One sample every this many transactions keeps tid lookups short. */
export const TID_SAMPLE_EVERY = 64;

/**
 * Map key for an oid: the oid as a number when it is below 2^53 (every oid
 * in practice: ZODB counts them up from 0), else its bytes as a latin1
 * string. A Map looks numbers up about twice as fast as short strings, and
 * the commit path does several lookups per record.
 */
export type OidKey = number | string;

/** An oid whose high 32 bits reach this (the oid reaches 2^53, past exact numbers) is keyed by its bytes. */
const EXACT_HIGH_WORD = 0x200000;

export function oidKey(oid: Buffer): OidKey {
  return oid.length === 8 ? oidKeyAt(oid, 0) : oid.toString('latin1');
}

/** oidKey of the 8 bytes at `off`. */
export function oidKeyAt(buf: Buffer, off: number): OidKey {
  const high = u32At(buf, off);
  if (high >= EXACT_HIGH_WORD) return buf.toString('latin1', off, off + 8);
  return high * 0x100000000 + u32At(buf, off + 4);
}

/** The oid an oidKey stands for. */
export function oidOfKey(key: OidKey): Buffer {
  if (typeof key === 'string') return Buffer.from(key, 'latin1');
  const out = Buffer.allocUnsafe(8);
  writeU64At(out, 0, key);
  return out;
}


/**
 * Every TID_SAMPLE_EVERY-th transaction's tid and position, oldest first,
 * for finding a tid's transaction without scanning from the start. The tids
 * are kept side by side in one buffer: each kept as a Buffer of its own
 * would hold a slice of Node's 8 KiB allocation pool, and with it the whole
 * pool, for as long as the storage is open (about 135 bytes per committed
 * transaction, or 470 MB an hour at 1000 commits a second).
 */
export class TidSamples {
  #tids: Buffer = Buffer.allocUnsafeSlow(8 * 256);
  readonly #positions: number[] = [];

  /** How many samples there are. */
  get count(): number {
    return this.#positions.length;
  }

  /** Append a sample; its tid must follow every sampled one. */
  add(tid: Buffer, pos: number): void {
    const at = 8 * this.#positions.length;
    if (at + 8 > this.#tids.length) {
      const grown = Buffer.allocUnsafeSlow(this.#tids.length * 2);
      this.#tids.copy(grown, 0, 0, at);
      this.#tids = grown;
    }
    tid.copy(this.#tids, at, 0, 8);
    this.#positions.push(pos);
  }

  /** Copy sample `i`'s tid into `target` at `offset`. */
  copyTid(i: number, target: Buffer, offset: number): void {
    this.#tids.copy(target, offset, 8 * i, 8 * i + 8);
  }

  positionAt(i: number): number {
    return this.#positions[i]!;
  }

  /**
   * Position of the sampled transaction with the greatest tid <= `tid`, or
   * `firstPos` when `tid` precedes every sample.
   */
  atOrBefore(tid: Buffer, firstPos: number): number {
    let lo = 0;
    let hi = this.#positions.length - 1;
    let best = -1;
    while (lo <= hi) {
      const mid = Math.floor((lo + hi) / 2);
      if (this.#tids.compare(tid, 0, 8, 8 * mid, 8 * mid + 8) <= 0) {
        best = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    return best < 0 ? firstPos : this.#positions[best]!;
  }
}

export interface ScanState {
  index: Map<OidKey, number>;
  maxOid: Buffer;
  lastTid: Buffer | null;
  lastTxnPos: number;
  txnCount: number;
  samples: TidSamples;
}

export interface ScanResult extends ScanState {
  /** End of the last complete transaction: where the next one goes. */
  end: number;
  /** Set when the tail from `pos` to the end of the file is an unfinished transaction. */
  tail: { pos: number; reason: string } | null;
}

export function emptyScanState(): ScanState {
  return {
    index: new BigMap(),
    maxOid: Buffer.alloc(8),
    lastTid: null,
    lastTxnPos: 0,
    txnCount: 0,
    samples: new TidSamples(),
  };
}

/**
 * `unfinished`: the tail is certainly a write that did not finish (a status
 * still 'c': commits write it first and set the final status last, so a
 * sync torn between the two leaves it even with later transactions written
 * whole; or a header cut short, or fill inside), cut without looking
 * further. Otherwise intact transactions after it make it damage.
 */
type TxnVerdict = { kind: 'ok'; next: number } | { kind: 'tail'; reason: string; unfinished: boolean };

/**
 * Scan from `pos` (the start of a transaction) to `fileSize` (the end of the
 * file, or where preallocated fill begins), updating `state` in place. A
 * transaction that still holds fill anywhere was torn by a crash (see
 * prealloc.ts): the tail starts there.
 */
export async function scanFile(
  handle: FileHandle,
  path: string,
  pos: number,
  fileSize: number,
  state: ScanState,
  /** Read-only tools: damage ends the data as a tail does, instead of being thrown. */
  stopAtDamage = false,
  /** Where to let the event loop turn (a scan of a pack's output, while its node commits); none: at reads only. */
  turns: PassTurns | null = null,
): Promise<ScanResult> {
  const reader = new WindowReader(handle, undefined, () => fileSize);
  while (pos < fileSize) {
    const turn = turns?.at(pos);
    if (turn) await turn;
    let verdict: TxnVerdict;
    let damage: CorruptedDataError;
    try {
      verdict = await scanTransaction(reader, path, pos, fileSize, state);
      if (verdict.kind === 'ok') {
        pos = verdict.next;
        continue;
      }
      damage = new CorruptedDataError(path, pos, `${verdict.reason}, yet intact transactions follow`);
    } catch (err) {
      if (!(err instanceof CorruptedDataError)) throw err;
      verdict = { kind: 'tail', reason: `${err.detail} (at position ${err.position})`, unfinished: false };
      damage = err;
    }
    // Damage that reaches the end of the file is an unfinished write (no
    // transaction after it was ever reported committed), whether it reads as
    // a bad record or a length past the end; damage followed by intact
    // transactions is corruption and must not be cut silently, unless fill
    // shows that a sync was torn (several transactions synced together, some
    // of their sectors written and some not).
    if (!stopAtDamage && !verdict.unfinished && (await intactTransactionAfter(handle, pos, fileSize, state.lastTid)) && (await fillInside(reader, pos, fileSize)) < 0) throw damage;
    return { ...state, end: pos, tail: { pos, reason: verdict.reason } };
  }
  return { ...state, end: pos, tail: null };
}

/**
 * scanFile over a file written whole (a pack's or a rewind's new file, from
 * `pos` to `fileSize`): any tail is damage, not a commit cut short.
 */
export async function scanWhole(handle: FileHandle, path: string, pos: number, fileSize: number, state: ScanState, turns: PassTurns | null = null): Promise<ScanResult> {
  const result = await scanFile(handle, path, pos, fileSize, state, false, turns);
  if (result.tail) throw new CorruptedDataError(path, result.tail.pos, `packed file is incomplete: ${result.tail.reason}`);
  return result;
}

/**
 * Whether a well-formed committed transaction starts at or after `pos`. First
 * at the end of the file, possibly followed by one unfinished transaction (a
 * crash in the middle of the next commit leaves its status 'c'; commits are
 * serialized, so there is never more than one). At `pos` itself it is a
 * complete transaction (final status, matching redundant length) with damage
 * inside: corruption, as in ZODB's read_index. Then, when the file ends in a
 * transaction cut short (whose length is unknown), anywhere after `pos`.
 */
export async function intactTransactionAfter(handle: FileHandle, pos: number, fileSize: number, lastTid: Buffer | null): Promise<boolean> {
  // Fill written after a transaction that ends inside a word begins with up
  // to 7 bytes that are not a whole word of fill: the file's data may end there.
  for (let end = fileSize; end > fileSize - 8; end--) {
    const h = await transactionEndingAt(handle, pos, end);
    if (h === null) continue;
    if (isFinalStatus(h.status)) return true;
    const before = await transactionEndingAt(handle, pos, end - TRAILER_BYTES - h.length);
    return before !== null && isFinalStatus(before.status);
  }
  return committedTransactionWithin(handle, pos + 1, fileSize, lastTid);
}

const SEARCH_WINDOW_BYTES = 1024 * 1024;
/** Past each window, enough to hold any transaction header, its metadata and its first record's header. */
const SEARCH_OVERLAP_BYTES = TXN_HEADER_BYTES + 3 * 0xffff + DATA_HEADER_BYTES;

/**
 * Whether a committed transaction starts in [from, fileSize): a final status,
 * a tid after `after`, a redundant length that matches, and a first record
 * (when it has any) that names it (its tid, and its own position as tloc).
 * Searched byte by byte, which only damage ever asks for.
 */
async function committedTransactionWithin(handle: FileHandle, from: number, fileSize: number, after: Buffer | null): Promise<boolean> {
  const window = Buffer.alloc(SEARCH_WINDOW_BYTES + SEARCH_OVERLAP_BYTES);
  const probe = Buffer.alloc(TRAILER_BYTES);
  for (let base = from; base + TXN_HEADER_BYTES + TRAILER_BYTES <= fileSize; base += SEARCH_WINDOW_BYTES) {
    const { bytesRead } = await handle.read(window, 0, Math.min(window.length, fileSize - base), base);
    for (let i = 0; i < SEARCH_WINDOW_BYTES && i + TXN_HEADER_BYTES <= bytesRead; i++) {
      const status = String.fromCharCode(window[i + 16]!);
      if (!isFinalStatus(status)) continue;
      const h = readTxnHeader(window, i);
      const at = base + i;
      const metaBytes = TXN_HEADER_BYTES + h.ulen + h.dlen + h.elen;
      if (h.length < metaBytes || at + h.length + TRAILER_BYTES > fileSize) continue;
      if (after !== null && Buffer.compare(h.tid, after) <= 0) continue;
      if (h.length !== metaBytes && metaBytes + DATA_HEADER_BYTES > h.length) continue;
      // The window holds the first record's header (see SEARCH_OVERLAP_BYTES) but at the file's end:
      // data crafted to look like transaction headers costs no read unless it also names its own position.
      if (h.length !== metaBytes) {
        const d = i + metaBytes + DATA_HEADER_BYTES <= bytesRead ? readDataHeader(window, i + metaBytes) : null;
        if (d === null || d.tloc !== at || !d.tid.equals(h.tid)) continue;
      }
      let trailer: number;
      if (i + h.length + TRAILER_BYTES <= bytesRead) trailer = readU64At(window, i + h.length);
      else {
        await handle.read(probe, 0, TRAILER_BYTES, at + h.length);
        trailer = readU64At(probe, 0);
      }
      if (trailer === h.length) return true;
    }
  }
  return false;
}

function isFinalStatus(status: string): boolean {
  return status === STATUS_COMMITTED || status === STATUS_PACKED;
}

/**
 * The header of the transaction that ends at `end` (its redundant length
 * just before `end` matches its header's) and starts at or after `from`, or
 * null.
 */
async function transactionEndingAt(handle: FileHandle, from: number, end: number): Promise<TxnHeader | null> {
  if (end - TRAILER_BYTES <= from) return null;
  const tail = Buffer.alloc(TRAILER_BYTES);
  await handle.read(tail, 0, TRAILER_BYTES, end - TRAILER_BYTES);
  const length = readU64At(tail, 0);
  const start = end - TRAILER_BYTES - length;
  if (start < from || length < TXN_HEADER_BYTES) return null;
  const head = Buffer.alloc(TXN_HEADER_BYTES);
  await handle.read(head, 0, TXN_HEADER_BYTES, start);
  const h = readTxnHeader(head);
  return h.length === length ? h : null;
}

/** A tid this far past the last transaction's (or the storage's clock's, when later) is taken for junk. */
const TAIL_TID_MAX_AHEAD_MS = 366 * 24 * 3600 * 1000;

/**
 * Whether the first bytes of a cut tail (`head`, up to a header's worth) read
 * as the start of a transaction: a status where it stands, metadata lengths
 * within its length, a tid after `lastTid` that has a successor and is not
 * years ahead. Only then must new tids stay above it.
 */
function plausibleTailTid(head: Buffer, lastTid: Buffer | null, nowMs: number): boolean {
  if (head.length < 8) return false;
  const tid = head.subarray(0, 8);
  if (lastTid !== null && Buffer.compare(tid, lastTid) <= 0) return false;
  if (tid.readUInt32BE(0) === 0xffffffff) return false;
  const horizonMs = Math.max(nowMs, lastTid === null ? 0 : tidToSeconds(lastTid) * 1000) + TAIL_TID_MAX_AHEAD_MS;
  if (tidToSeconds(tid) * 1000 > horizonMs) return false;
  if (head.length > 16 && !' cp'.includes(String.fromCharCode(head[16]!))) return false;
  if (head.length < TXN_HEADER_BYTES) return true;
  const h = readTxnHeader(head);
  return h.length >= TXN_HEADER_BYTES + h.ulen + h.dlen + h.elen;
}

/**
 * The tid new transactions must stay above after a cut tail starting at
 * `pos` (data ending at `end`): the last tid of the transactions there that
 * read as a transaction's start, walked by their lengths (a group sync torn
 * before a status byte leaves whole ones after the first); null when none
 * does (junk is no tid: it would push every new tid past it, or past the
 * last tid there is). The clock is no judge: it may have gone back since the
 * crash. `nowMs` is the storage's clock, for the horizon alone.
 */
export function tailTidFloor(fd: number, pos: number, end: number, lastTid: Buffer | null, hadFill: boolean, nowMs: number): Buffer | null {
  let floor: Buffer | null = null;
  for (let at = pos; at < end; ) {
    const head = preadSync(fd, at, TXN_HEADER_BYTES);
    if (!plausibleTailTid(head, floor ?? lastTid, nowMs) || (hadFill && isFillRange(head.subarray(0, 8), at))) break;
    floor = Buffer.from(head.subarray(0, 8));
    if (head.length < TXN_HEADER_BYTES) break;
    const length = readU64At(head, 8);
    if (at + length + TRAILER_BYTES > end || readU64At(preadSync(fd, at + length, TRAILER_BYTES), 0) !== length) break;
    at += length + TRAILER_BYTES;
  }
  return floor;
}

/**
 * Where the data of a file of `size` bytes ends, without the fill past its
 * last transaction (of a storage open for writing, or of one that crashed):
 * at the end of a transaction whose redundant length matches its header,
 * within 7 bytes of where the whole words of fill begin, either way. Fill
 * written after a transaction that ends inside a word begins with fewer
 * than 8 bytes no whole-word check finds; and the transaction's last bytes
 * may happen to be the fill's there (the lowest byte of its redundant
 * length, one time in 256), making a word of fill out of them.
 */
export async function dataEnd(handle: FileHandle, size: number): Promise<number> {
  return dataEndBefore(handle, await trailingFill(handle, 0, size), size);
}

/** dataEnd() of a file of `size` bytes whose trailing whole words of fill begin at `fillStart`. */
export async function dataEndBefore(handle: FileHandle, fillStart: number, size: number): Promise<number> {
  for (let end = Math.min(size, fillStart + 7); end > fillStart - 8; end--) {
    if ((await transactionEndingAt(handle, 0, end)) === null) continue;
    if (end >= fillStart) return end;
    const partial = Buffer.alloc(fillStart - end);
    await handle.read(partial, 0, partial.length, end);
    if (isFillRange(partial, end)) return end;
  }
  return fillStart;
}

/** dataEnd() of the data file at `path`. */
export async function sizeWithoutFill(path: string): Promise<number> {
  const handle = await open(path, 'r');
  try {
    return await dataEnd(handle, (await handle.stat()).size);
  } finally {
    await handle.close();
  }
}

async function ensure(reader: WindowReader, pos: number, length: number): Promise<Buffer> {
  if (!reader.has(pos, length)) await reader.fill(pos, length);
  return reader.view(pos, length);
}

async function scanTransaction(
  reader: WindowReader,
  path: string,
  pos: number,
  fileSize: number,
  state: ScanState,
): Promise<TxnVerdict> {
  if (pos + TXN_HEADER_BYTES > fileSize) return { kind: 'tail', reason: 'transaction header truncated', unfinished: true };
  const h = readTxnHeader(Buffer.from(await ensure(reader, pos, TXN_HEADER_BYTES)));
  const metaBytes = TXN_HEADER_BYTES + h.ulen + h.dlen + h.elen;
  const end = pos + h.length + TRAILER_BYTES;
  if (h.length < metaBytes) throw new CorruptedDataError(path, pos, `transaction length ${h.length} is shorter than its header`);
  if (h.status === STATUS_CHECKPOINT) {
    const reason = end > fileSize ? "transaction still marked in progress ('c') runs past the end of the file" : "transaction still marked in progress ('c')";
    return { kind: 'tail', reason, unfinished: true };
  }
  // A final status is written last: such a transaction running past the end is damage, unless nothing intact follows.
  if (end > fileSize) return { kind: 'tail', reason: 'transaction runs past the end of the file', unfinished: false };
  if (!' pu'.includes(h.status)) throw new CorruptedDataError(path, pos + 16, `unknown transaction status 0x${h.status.charCodeAt(0).toString(16)}`);
  if (state.lastTid !== null && Buffer.compare(h.tid, state.lastTid) <= 0) {
    throw new CorruptedDataError(path, pos, `tid ${h.tid.toString('hex')} does not follow ${state.lastTid.toString('hex')}`);
  }
  const trailer = readU64At(await ensure(reader, pos + h.length, TRAILER_BYTES), 0);
  if (trailer !== h.length) {
    throw new CorruptedDataError(path, pos + h.length, `redundant length ${trailer} does not match transaction length ${h.length}`);
  }
  const torn = await fillInside(reader, pos, end);
  if (torn >= 0) return { kind: 'tail', reason: `transaction not wholly written: preallocated fill at ${torn}`, unfinished: true };
  await scanRecords(reader, path, pos, pos + metaBytes, pos + h.length, h.tid, state);
  recordTransaction(state, h.tid, pos);
  return { kind: 'ok', next: end };
}

/** File offset of a word of fill in `[pos, end)` (checked one per sector), or -1. */
function fillInside(reader: WindowReader, pos: number, end: number): Promise<number> {
  return firstFillWithin((at, length) => ensure(reader, at, length), pos, end, 1024 * 1024);
}

async function scanRecords(
  reader: WindowReader,
  path: string,
  tpos: number,
  start: number,
  tend: number,
  tid: Buffer,
  state: ScanState,
): Promise<void> {
  let pos = start;
  // Indexed only once every record checks: a transaction found damaged part
  // way is cut as a torn tail, and its first records must not stay indexed.
  const keys: Array<ReturnType<typeof oidKey>> = [];
  const positions: number[] = [];
  let maxOid = state.maxOid;
  while (pos < tend) {
    if (pos + DATA_HEADER_BYTES > tend) throw new CorruptedDataError(path, pos, 'data record header runs past its transaction');
    const d = readDataHeader(await ensure(reader, pos, DATA_HEADER_BYTES));
    const len = dataRecordLength(d.plen);
    if (pos + len > tend) throw new CorruptedDataError(path, pos, 'data record runs past its transaction');
    if (d.tloc !== tpos) throw new CorruptedDataError(path, pos, `data record points at transaction ${d.tloc}, not ${tpos}`);
    if (!d.tid.equals(tid)) throw new CorruptedDataError(path, pos, 'data record tid differs from its transaction');
    if (d.vlen !== 0) throw new CorruptedDataError(path, pos, 'data record has a version (unsupported)');
    if (d.prev >= pos) throw new CorruptedDataError(path, pos, `previous-record pointer ${d.prev} is not before the record`);
    if (Buffer.compare(d.oid, maxOid) > 0) maxOid = Buffer.from(d.oid);
    keys.push(oidKey(d.oid));
    positions.push(pos);
    pos += len;
  }
  for (let i = 0; i < keys.length; i++) state.index.set(keys[i]!, positions[i]!);
  state.maxOid = maxOid;
}

/** Account a complete transaction in the scan state (also used by commits). */
export function recordTransaction(state: ScanState, tid: Buffer, pos: number): void {
  if (state.txnCount % TID_SAMPLE_EVERY === 0) {
    state.samples.add(tid, pos);
  }
  state.txnCount += 1;
  state.lastTid = copyId(tid);
  state.lastTxnPos = pos;
}

