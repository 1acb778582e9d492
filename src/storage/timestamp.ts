// ZODB TimeStamp encoding of tids: hi u32 = minutes since 1900 with every
// month counted as 31 days, lo u32 = seconds within the minute * 2^32 / 60.
// New tids strictly increase even when the wall clock steps back.

export const TID_BYTES = 8;
export const Z64: Buffer = Buffer.alloc(8);

/** The tid for a wall-clock instant (ms since the epoch), truncated as ZODB does. */
export function tidFromTime(ms: number): Buffer {
  const d = new Date(ms);
  const hi =
    ((((d.getUTCFullYear() - 1900) * 12 + d.getUTCMonth()) * 31 + (d.getUTCDate() - 1)) * 24 + d.getUTCHours()) * 60 +
    d.getUTCMinutes();
  const seconds = (ms / 1000) % 60;
  const lo = Math.min(0xffffffff, Math.floor((seconds * 4294967296) / 60));
  const out = Buffer.allocUnsafe(8);
  out.writeUInt32BE(hi >>> 0, 0);
  out.writeUInt32BE(lo >>> 0, 4);
  return out;
}

/** The smallest tid strictly greater than `tid` (ZODB's laterThan step). */
export function tidPlusOne(tid: Buffer): Buffer {
  const out = Buffer.from(tid);
  const lo = out.readUInt32BE(4);
  if (lo < 0xffffffff) {
    out.writeUInt32BE(lo + 1, 4);
  } else {
    const hi = out.readUInt32BE(0);
    if (hi === 0xffffffff) throw new RangeError(`no tid follows ${tid.toString('hex')}`);
    // Carry into the next minute, as TimeStamp.laterThan does.
    out.writeUInt32BE(hi + 1, 0);
    out.writeUInt32BE(0, 4);
  }
  return out;
}

/** A new tid for `nowMs` that is strictly later than `last`. */
export function newTid(nowMs: number, last: Buffer | null): Buffer {
  const candidate = tidFromTime(nowMs);
  if (last === null || Buffer.compare(candidate, last) > 0) return candidate;
  return tidPlusOne(last);
}

interface TidParts {
  year: number;
  month: number;
  day: number;
  hour: number;
  minute: number;
  seconds: number;
}

function tidParts(tid: Buffer): TidParts {
  const hi = tid.readUInt32BE(0);
  const lo = tid.readUInt32BE(4);
  return {
    minute: hi % 60,
    hour: Math.floor(hi / 60) % 24,
    day: (Math.floor(hi / 1440) % 31) + 1,
    month: (Math.floor(hi / 44640) % 12) + 1,
    year: Math.floor(hi / 535680) + 1900,
    seconds: (lo * 60) / 4294967296,
  };
}

/** Seconds since the epoch, as ZODB's TimeStamp.timeTime(). */
export function tidToSeconds(tid: Buffer): number {
  const p = tidParts(tid);
  return Date.UTC(p.year, p.month - 1, p.day, p.hour, p.minute, 0) / 1000 + p.seconds;
}

/** `YYYY-MM-DD HH:MM:SS.ffffff`, seconds rounded to microseconds, as str(TimeStamp). */
export function tidToString(tid: Buffer): string {
  const p = tidParts(tid);
  const two = (n: number): string => String(n).padStart(2, '0');
  return (
    `${String(p.year).padStart(4, '0')}-${two(p.month)}-${two(p.day)} ${two(p.hour)}:${two(p.minute)}:` +
    p.seconds.toFixed(6).padStart(9, '0')
  );
}

export function tidHex(tid: Buffer): string {
  return tid.toString('hex');
}

export function u64(n: number): Buffer {
  const out = Buffer.allocUnsafe(8);
  out.writeBigUInt64BE(BigInt(n), 0);
  return out;
}

export function readU64(buf: Buffer, offset = 0): number {
  const v = buf.readBigUInt64BE(offset);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new RangeError(`64-bit value ${v} exceeds the safe integer range`);
  return Number(v);
}
