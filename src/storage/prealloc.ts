// Preallocated space past the data file's last transaction. A synced commit
// that only overwrites blocks the file already has is cheaper than one that
// appends: the file system need not journal a new size or allocate blocks
// (on ext4 about 0.6 of the time of an append and fdatasync). So the storage
// writes ahead of its end a region of "fill", and transactions overwrite it.
//
// The fill is not zeros: each aligned 8-byte word holds a value computed from
// its own file offset (a pseudo-random table entry XOR the word's index). That is what keeps a torn sync detectable. When power
// fails during a sync, some sectors of the last transactions written may keep
// their old content; appending, the file system hid them behind the old file
// size, but overwriting, nothing does. Their old content is the fill (or a
// transaction before them), so a transaction that still holds the fill in a
// sector (one aligned word is checked per 512-byte sector) was not wholly
// written, and recovery cuts it. Real data equals the fill at a given word
// with probability 2^-56.
//
// Every byte of the fill has its high bit set (7 bits of each vary). Python
// ZODB reading a file with fill (one a crash left, or one a storage has open)
// takes the 23 bytes where the data ends for a transaction header: its
// read_index sets the file's last tid from such a header before it finds
// the header runs past the file, and then gives every new transaction a
// later tid. Fill read as a tid is centuries away, so a ZODB that took it
// would date every later commit there. ZODB on Python 3 decodes the status
// byte as ASCII first, and a byte with its high bit set makes it refuse the
// file instead, whatever offset the data ends at. Files written before this
// fill used all 64 bits of each word (ZODB refused half of such ends and took
// the other half's meaningless tid); that fill is still recognised, so a file
// a crash left with it opens as before.
//
// The fill only ever lies past the last transaction: a clean close cuts it
// off, and so does the next open after a crash (keeping no side file for it).

import type { FileHandle } from 'node:fs/promises';
import type { StorageDisk } from './disk.js';

/**
 * Bytes written ahead of the end by default, when commits are synced. The
 * commit that writes them waits for their blocks in its sync: a smaller
 * chunk makes that stall shorter and more frequent, which live lag's tail
 * prefers (docs/STORAGE.md, fill ahead of the end).
 */
export const DEFAULT_PREALLOCATE_BYTES = 256 * 1024;

const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

function mix32(x: number): number {
  x = Math.imul(x ^ (x >>> 16), 0x7feb352d);
  x = Math.imul(x ^ (x >>> 15), 0x846ca68b);
  return (x ^ (x >>> 16)) >>> 0;
}

/**
 * The fill of word `w` (at file offset 8w) is a pseudo-random table entry for
 * `w mod 512`, XOR the word index spread over the low 7 bits of each byte,
 * with each byte's high bit set: unique per offset (for 2^56 words), and a
 * table lookup per word to make (a hash per word cost about 1 ms per MiB, on
 * the commit that extends the fill).
 */
const TABLE_WORDS = 512;
const TABLE_LOW = Uint32Array.from({ length: TABLE_WORDS }, (_, i) => mix32(mix32(i ^ 0x5a52_5346) + 0x9e37_79b9));
const TABLE_HIGH = Uint32Array.from({ length: TABLE_WORDS }, (_, i) => mix32(TABLE_LOW[i]! ^ 0x4c4c_4946));
const WORD_INDEX_HALF = 2 ** 28;

/** 28 bits of a word index, 7 to a byte. */
function spread28(x: number): number {
  return (x & 0x7f) | ((x & 0x3f80) << 1) | ((x & 0x1fc000) << 2) | ((x & 0xfe00000) << 3);
}

/** A 32-bit half with each byte's high bit set. */
function highBits(x: number): number {
  return (x | 0x80808080) >>> 0;
}

/** The fill's two 32-bit halves for word `w` (little-endian: low half first). */
function fillLow(w: number): number {
  return highBits(TABLE_LOW[w % TABLE_WORDS]! ^ spread28(w % WORD_INDEX_HALF));
}

function fillHigh(w: number): number {
  return highBits(TABLE_HIGH[w % TABLE_WORDS]! ^ spread28(Math.floor(w / WORD_INDEX_HALF)));
}

/** The halves of the fill files were written with before its bytes had their high bit set. */
function legacyFillLow(w: number): number {
  return (TABLE_LOW[w % TABLE_WORDS]! ^ w) >>> 0;
}

function legacyFillHigh(w: number): number {
  return (TABLE_HIGH[w % TABLE_WORDS]! ^ Math.floor(w / 0x1_0000_0000)) >>> 0;
}

/**
 * Fill `buf` with the fill of the file range starting at `filePos` (8-aligned)
 * and as long as `buf` (a multiple of 8).
 */
export function writeFill(buf: Buffer, filePos: number): void {
  if (filePos % 8 !== 0 || buf.length % 8 !== 0) throw new RangeError('fill ranges are whole 8-byte words');
  const words = buf.length / 8;
  const first = filePos / 8;
  const u32 = buf.byteOffset % 4 === 0 && LITTLE_ENDIAN ? new Uint32Array(buf.buffer, buf.byteOffset, words * 2) : null;
  // The word index's halves and its table slot, stepped rather than divided out per word.
  let lo = first % WORD_INDEX_HALF;
  let hi = Math.floor(first / WORD_INDEX_HALF);
  let slot = first % TABLE_WORDS;
  for (let i = 0; i < words; i++) {
    const low = highBits(TABLE_LOW[slot]! ^ spread28(lo));
    const high = highBits(TABLE_HIGH[slot]! ^ spread28(hi));
    if (u32) {
      u32[2 * i] = low;
      u32[2 * i + 1] = high;
    } else {
      buf.writeUInt32LE(low, 8 * i);
      buf.writeUInt32LE(high, 8 * i + 4);
    }
    slot = (slot + 1) & (TABLE_WORDS - 1);
    lo += 1;
    if (lo === WORD_INDEX_HALF) {
      lo = 0;
      hi += 1;
    }
  }
}

/**
 * writeFill for the fill files were written with before its bytes had their
 * high bit set: read only (recovery of such a file, and tests), so word by word.
 */
export function writeLegacyFill(buf: Buffer, filePos: number): void {
  if (filePos % 8 !== 0 || buf.length % 8 !== 0) throw new RangeError('fill ranges are whole 8-byte words');
  for (let off = 0; off < buf.length; off += 8) {
    const w = (filePos + off) / 8;
    buf.writeUInt32LE(legacyFillLow(w), off);
    buf.writeUInt32LE(legacyFillHigh(w), off + 4);
  }
}

/** Whether the 8 bytes at `buf[off]` are the fill of the word at file offset `filePos` (8-aligned). */
export function isFillWord(buf: Buffer, off: number, filePos: number): boolean {
  const w = filePos / 8;
  const low = buf.readUInt32LE(off);
  const high = buf.readUInt32LE(off + 4);
  return (low === fillLow(w) && high === fillHigh(w)) || (low === legacyFillLow(w) && high === legacyFillHigh(w));
}

/** A disk writes whole sectors: after a torn sync each holds all it was given or none of it. */
export const SECTOR_BYTES = 512;

/**
 * In `[from, from + buf.length)` (`buf` holds those bytes), the file offset of
 * the first word found holding the fill, or -1. One aligned word is checked
 * per 512-byte sector (the first whole one in range): a sector a torn sync did
 * not write holds the fill in every word.
 */
export function firstFillSector(buf: Buffer, from: number): number {
  const end = from + buf.length;
  for (let sector = Math.floor(from / SECTOR_BYTES) * SECTOR_BYTES; sector < end; sector += SECTOR_BYTES) {
    const pos = Math.ceil(Math.max(sector, from) / 8) * 8;
    if (pos + 8 <= Math.min(end, sector + SECTOR_BYTES) && isFillWord(buf, pos - from, pos)) return pos;
  }
  return -1;
}

/**
 * In the file range `[pos, end)`, the offset of the first word found holding
 * the fill (one checked per sector, see firstFillSector), or -1; `read`
 * gives the file's bytes, at most `step` at a time.
 */
export async function firstFillWithin(read: (at: number, length: number) => Promise<Buffer>, pos: number, end: number, step: number): Promise<number> {
  for (let at = pos; at < end; at += step) {
    const found = firstFillSector(await read(at, Math.min(step, end - at)), at);
    if (found >= 0) return found;
  }
  return -1;
}

/**
 * Where the fill at the end of a file of `size` bytes begins: the offset of
 * the first of the aligned words that hold the fill up to the end, looking no
 * further back than `from`; `size` when there is none. Only whole aligned
 * words count (a file with fill ends on one), so a file's real last bytes are
 * taken for fill with probability 2^-56.
 */
export async function trailingFill(handle: FileHandle, from: number, size: number): Promise<number> {
  if (size % 8 !== 0) return size;
  const floor = Math.ceil(from / 8) * 8;
  const block = Buffer.allocUnsafe(64 * 1024);
  let start = size;
  while (start > floor) {
    const blockStart = Math.max(floor, start - block.length);
    const bytes = block.subarray(0, start - blockStart);
    const { bytesRead } = await handle.read(bytes, 0, bytes.length, blockStart);
    if (bytesRead < bytes.length) return size;
    while (start > blockStart && isFillWord(bytes, start - 8 - blockStart, start - 8)) start -= 8;
    if (start > blockStart) break;
  }
  return start;
}

/** The fill of the file range `[from, from + length)`, which need not be whole words. */
export function fillOf(from: number, length: number, legacy = false): Buffer {
  const start = Math.floor(from / 8) * 8;
  const cover = Buffer.allocUnsafe(Math.ceil((from + length - start) / 8) * 8);
  (legacy ? writeLegacyFill : writeFill)(cover, start);
  return cover.subarray(from - start, from - start + length);
}

/** Whether `buf` (the bytes at file offset `from`) is exactly the fill of that range (either kind). */
export function isFillRange(buf: Buffer, from: number): boolean {
  return fillOf(from, buf.length).equals(buf) || fillOf(from, buf.length, true).equals(buf);
}

/**
 * The fill ahead of a data file's end. Before a small write at the end it
 * writes a new region of fill past that write when the current one is used
 * up; larger writes (a secondary's runs of transactions) go past the fill as
 * plain appends, since writing the fill first would double their bytes.
 */
export class FillAhead {
  /** Where the file's bytes end: the data's end, or the fill's past it. */
  private fileEnd: number;
  private buf: Buffer = Buffer.alloc(0);

  constructor(
    private readonly disk: StorageDisk,
    private readonly fd: number,
    /** The file's size when opened (its data end: open cuts any fill). */
    size: number,
    /** Bytes of fill written ahead at a time; 0 writes none. */
    private readonly chunkBytes: number,
  ) {
    this.fileEnd = size;
  }

  /** Whether there is fill past `end` (the data's end). */
  extendsPast(end: number): boolean {
    return this.fileEnd > end;
  }

  /**
   * About to write `length` bytes at `pos`: when they are small and run past
   * the fill, write a new region of fill first, from the file's end (under
   * the part of the write past it, too) to a chunk past the write. Every
   * sector the write lands in then held fill before it, so a sync torn
   * inside the write leaves fill there, never a hole that reads as zeros.
   * A failed fill write (a full disk) is undone and leaves the write to
   * append as usual.
   */
  beforeWrite(pos: number, length: number): void {
    const writeEnd = pos + length;
    if (this.chunkBytes > 0 && writeEnd > this.fileEnd && length <= this.chunkBytes / 8) {
      const startAt = Math.max(pos, this.fileEnd);
      const alignedStart = Math.floor(startAt / 8) * 8;
      const fillEnd = Math.ceil((writeEnd + this.chunkBytes) / 8) * 8;
      // At most the write (no more than an eighth of a chunk), a chunk, and alignment.
      if (this.buf.length < fillEnd - alignedStart) this.buf = Buffer.allocUnsafeSlow(this.chunkBytes + Math.ceil(this.chunkBytes / 8) + 16);
      const fill = this.buf.subarray(0, fillEnd - alignedStart);
      writeFill(fill, alignedStart);
      try {
        this.disk.write(this.fd, fill.subarray(startAt - alignedStart), startAt);
        this.fileEnd = fillEnd;
        return;
      } catch {
        this.disk.truncate(this.fd, this.fileEnd);
      }
    }
    if (writeEnd > this.fileEnd) this.fileEnd = writeEnd;
  }

  /** The file was cut to `size`: no fill is left. */
  cut(size: number): void {
    this.fileEnd = size;
  }
}
