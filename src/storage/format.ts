// Byte layout of ZODB's FileStorage (see docs/FORMAT.md): a 4-byte magic, then
// transactions of a 23-byte header, metadata, data records (42-byte headers)
// and an 8-byte redundant length. All integers are big-endian unsigned.

export const MAGIC_FS30 = Buffer.from('FS30', 'latin1');
export const MAGIC_FS21 = Buffer.from('FS21', 'latin1');
export const MAGIC_BYTES = 4;
export const TXN_HEADER_BYTES = 23;
export const DATA_HEADER_BYTES = 42;
export const TRAILER_BYTES = 8;
export const BACKPOINTER_BYTES = 8;

export const STATUS_COMMITTED = ' ';
export const STATUS_PACKED = 'p';
export const STATUS_CHECKPOINT = 'c';
export const STATUS_UNDONE = 'u';

export interface TxnHeader {
  tid: Buffer;
  /** tlen: everything but the 8-byte trailer. */
  length: number;
  status: string;
  ulen: number;
  dlen: number;
  elen: number;
}

export interface DataHeader {
  oid: Buffer;
  tid: Buffer;
  prev: number;
  tloc: number;
  vlen: number;
  plen: number;
}

const TWO32 = 4294967296;

/**
 * The big-endian u32 at `off`, by byte arithmetic (about twice as fast as
 * readUInt32BE on hot paths) and unchecked: for bytes whose extent the caller
 * has checked.
 */
export function u32At(buf: Buffer, off: number): number {
  return ((buf[off]! << 24) | (buf[off + 1]! << 16) | (buf[off + 2]! << 8) | buf[off + 3]!) >>> 0;
}

/** Read a u64 that must fit a JS number (file offsets and lengths do). */
function u64At(buf: Buffer, off: number): number {
  if (off >>> 0 !== off || off + 8 > buf.length) throw new RangeError(`u64 at ${off} is outside a buffer of ${buf.length} bytes`);
  const high = u32At(buf, off);
  const low = u32At(buf, off + 4);
  // Below 2^32 the low word as it is: a small integer. Multiplied by 2^32 it
  // would come out boxed in code not yet optimized, and offsets derived from
  // it would make the code that compiled for small integers deoptimize.
  return high === 0 ? low : high * TWO32 + low;
}

function writeU64At(buf: Buffer, off: number, n: number): void {
  // Callers pass non-negative integers below 2^53: >>> 0 keeps the low 32 bits exactly.
  const lo = n >>> 0;
  const hi = (n - lo) / TWO32;
  buf[off] = hi >>> 24;
  buf[off + 1] = hi >>> 16;
  buf[off + 2] = hi >>> 8;
  buf[off + 3] = hi;
  buf[off + 4] = lo >>> 24;
  buf[off + 5] = lo >>> 16;
  buf[off + 6] = lo >>> 8;
  buf[off + 7] = lo;
}

export function readTxnHeader(buf: Buffer, off = 0): TxnHeader {
  return {
    tid: buf.subarray(off, off + 8),
    length: u64At(buf, off + 8),
    status: String.fromCharCode(buf[off + 16]!),
    ulen: buf.readUInt16BE(off + 17),
    dlen: buf.readUInt16BE(off + 19),
    elen: buf.readUInt16BE(off + 21),
  };
}

export function writeTxnHeader(buf: Buffer, off: number, h: TxnHeader): void {
  h.tid.copy(buf, off);
  writeU64At(buf, off + 8, h.length);
  buf[off + 16] = h.status.charCodeAt(0);
  buf.writeUInt16BE(h.ulen, off + 17);
  buf.writeUInt16BE(h.dlen, off + 19);
  buf.writeUInt16BE(h.elen, off + 21);
}

export function readDataHeader(buf: Buffer, off = 0): DataHeader {
  return {
    oid: buf.subarray(off, off + 8),
    tid: buf.subarray(off + 8, off + 16),
    prev: u64At(buf, off + 16),
    tloc: u64At(buf, off + 24),
    vlen: buf.readUInt16BE(off + 32),
    plen: u64At(buf, off + 34),
  };
}

export function writeDataHeader(buf: Buffer, off: number, h: DataHeader): void {
  h.oid.copy(buf, off);
  h.tid.copy(buf, off + 8);
  writeU64At(buf, off + 16, h.prev);
  writeU64At(buf, off + 24, h.tloc);
  buf.writeUInt16BE(h.vlen, off + 32);
  writeU64At(buf, off + 34, h.plen);
}

/** Length of a data record on disk: header plus data, or header plus a backpointer. */
export function dataRecordLength(plen: number): number {
  return DATA_HEADER_BYTES + (plen > 0 ? plen : BACKPOINTER_BYTES);
}

/** A copy of an 8-byte id (oid or tid): for 8 bytes a byte loop beats Buffer.from. */
export function copyId(id: Buffer): Buffer {
  return id.length === 8 ? copyIdAt(id, 0) : Buffer.from(id);
}

/** A copy of the 8-byte id at `off` in `buf`, without a view in between. */
export function copyIdAt(buf: Buffer, off: number): Buffer {
  const out = Buffer.allocUnsafe(8);
  for (let i = 0; i < 8; i++) out[i] = buf[off + i]!;
  return out;
}

/**
 * Buffer.compare for two 8-byte ids, in JS: on the commit path the native
 * call costs more than the comparison.
 */
export function compareIds(a: Buffer, b: Buffer): number {
  if (a.length !== 8 || b.length !== 8) return Buffer.compare(a, b);
  return compareIdsAt(a, 0, b);
}

/** compareIds for the 8 bytes at `off` in `a` and the 8-byte id `b`. */
export function compareIdsAt(a: Buffer, off: number, b: Buffer): number {
  for (let i = 0; i < 8; i++) {
    const d = a[off + i]! - b[i]!;
    if (d !== 0) return d < 0 ? -1 : 1;
  }
  return 0;
}

/** Offset of the first data record of the transaction whose header starts at `off` in `buf` (past user, description and extension). */
export function recordsStart(buf: Buffer, off = 0): number {
  if (off >>> 0 !== off || off + TXN_HEADER_BYTES > buf.length) throw new RangeError(`transaction header at ${off} is outside a buffer of ${buf.length} bytes`);
  return off + TXN_HEADER_BYTES + u16At(buf, off + 17) + u16At(buf, off + 19) + u16At(buf, off + 21);
}

/** The big-endian u16 at `off`, unchecked (see u32At). */
export function u16At(buf: Buffer, off: number): number {
  return (buf[off]! << 8) | buf[off + 1]!;
}

export { u64At as readU64At, writeU64At };

/** A file's first bytes for a message: quoted when printable ASCII, else hex (never raw binary on a terminal). */
export function describeMagic(magic: Buffer): string {
  return /^[\x20-\x7e]*$/.test(magic.toString('latin1')) ? JSON.stringify(magic.toString('latin1')) : `0x${magic.toString('hex')}`;
}
