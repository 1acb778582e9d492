// ZODB TimeStamp encoding of tids: hi u32 = minutes since 1900 with every
// month counted as 31 days, lo u32 = seconds within the minute * 2^32 / 60.
// New tids strictly increase even when the wall clock steps back.

export const TID_BYTES = 8;
export const Z64: Buffer = Buffer.alloc(8);

/** Minutes from 1900-01-01 to 9917-10-14 04:15: what the first four bytes of a tid hold. */
const MAX_MINUTES = 0xffffffff;
const MINUTES_PER_MONTH = 31 * 1440;
const MINUTES_PER_YEAR = 12 * MINUTES_PER_MONTH;

/**
 * The tid for a wall-clock instant (ms since the epoch), truncated as ZODB
 * does. An instant before 1900 or past the last minute a tid holds is
 * refused (RangeError), as ZODB's TimeStamp refuses a year before 1900:
 * wrapped around, it would start a history in the year 9917.
 */
export function tidFromTime(ms: number): Buffer {
  const d = new Date(ms);
  const year = d.getUTCFullYear();
  const hi = ((((year - 1900) * 12 + d.getUTCMonth()) * 31 + (d.getUTCDate() - 1)) * 24 + d.getUTCHours()) * 60 + d.getUTCMinutes();
  if (!(year >= 1900 && hi <= MAX_MINUTES)) throw new RangeError(`no tid for ${Number.isNaN(d.getTime()) ? `the time ${ms} ms` : d.toISOString()}: tids hold 1900-01-01 to 9917-10-14`);
  const seconds = (ms / 1000) % 60;
  const lo = Math.min(0xffffffff, Math.floor((seconds * 4294967296) / 60));
  const out = Buffer.allocUnsafe(8);
  out.writeUInt32BE(hi, 0);
  out.writeUInt32BE(lo >>> 0, 4);
  return out;
}

/** The next tid in byte order: where a range after `tid` starts. */
export function tidPlusOne(tid: Buffer): Buffer {
  const out = Buffer.from(tid);
  const lo = out.readUInt32BE(4);
  if (lo < 0xffffffff) {
    out.writeUInt32BE(lo + 1, 4);
  } else {
    const hi = out.readUInt32BE(0);
    if (hi === MAX_MINUTES) throw new RangeError(`no tid follows ${tid.toString('hex')}`);
    out.writeUInt32BE(hi + 1, 0);
    out.writeUInt32BE(0, 4);
  }
  return out;
}

/**
 * The tid that follows `tid` for a new commit, as ZODB's
 * TimeStamp.laterThan: one more in the last four bytes, or, when they are
 * full, the start of the next minute of the calendar (after the 30th of
 * April comes the 1st of May, not the 31st of April a tid could encode).
 */
export function laterTid(tid: Buffer): Buffer {
  if (tid.readUInt32BE(4) < 0xffffffff) return tidPlusOne(tid);
  const p = tidParts(tid);
  // The last minute of a month's last day is followed by the first of the next month (of the next year after December).
  const monthEnds = p.hour === 23 && p.minute === 59 && p.day >= daysInMonth(p.year, p.month - 1);
  const next = monthEnds ? (p.year - 1900) * MINUTES_PER_YEAR + p.month * MINUTES_PER_MONTH : tid.readUInt32BE(0) + 1;
  if (next > MAX_MINUTES) throw new RangeError(`no tid follows ${tid.toString('hex')}`);
  const out = Buffer.alloc(8);
  out.writeUInt32BE(next, 0);
  return out;
}

function daysInMonth(year: number, month: number): number {
  return new Date(Date.UTC(year, month + 1, 0)).getUTCDate();
}

/** A new tid for `nowMs` that is strictly later than `last`. */
export function newTid(nowMs: number, last: Buffer | null): Buffer {
  const candidate = tidFromTime(nowMs);
  if (last === null || Buffer.compare(candidate, last) > 0) return candidate;
  return laterTid(last);
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
    month: (Math.floor(hi / MINUTES_PER_MONTH) % 12) + 1,
    year: Math.floor(hi / MINUTES_PER_YEAR) + 1900,
    seconds: (lo * 60) / 4294967296,
  };
}

/** Seconds from 1901-01-01 (where ZODB's TimeStamp counts from) to the epoch. */
const EPOCH_FROM_1901 = 2177452800;

/**
 * Seconds since the epoch, as ZODB's TimeStamp.timeTime() computes them:
 * the minute counted from 1901, plus the seconds, less the epoch, in that
 * order, so the float is the same to the last bit.
 */
export function tidToSeconds(tid: Buffer): number {
  const p = tidParts(tid);
  return Date.UTC(p.year, p.month - 1, p.day, p.hour, p.minute, 0) / 1000 + EPOCH_FROM_1901 + p.seconds - EPOCH_FROM_1901;
}

/**
 * `YYYY-MM-DD HH:MM:SS.ffffff` as str(TimeStamp): the seconds rounded to
 * microseconds as C's printf rounds them, an exact half to even (the
 * seconds are an exact binary fraction, so a half is exact).
 */
export function tidToString(tid: Buffer): string {
  const p = tidParts(tid);
  const two = (n: number): string => String(n).padStart(2, '0');
  return `${String(p.year).padStart(4, '0')}-${two(p.month)}-${two(p.day)} ${two(p.hour)}:${two(p.minute)}:${microseconds(tid.readUInt32BE(4))}`;
}

/** `SS.ffffff` for the last four bytes of a tid: seconds = lo * 60 / 2^32, in integers. */
function microseconds(lo: number): string {
  const scaled = BigInt(lo) * 60_000_000n;
  let micros = scaled >> 32n;
  const rest = scaled & 0xffffffffn;
  if (rest > 0x80000000n || (rest === 0x80000000n && (micros & 1n) === 1n)) micros += 1n;
  const whole = micros / 1_000_000n;
  return `${String(whole).padStart(2, '0')}.${String(micros % 1_000_000n).padStart(6, '0')}`;
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
