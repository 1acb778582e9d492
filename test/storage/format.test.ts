// The small byte helpers on the storage's hot paths agree with Node's own
// (slower) Buffer methods on every input; oid keys are one per oid and
// convert back; tids from the clock match their calendar fields.

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { compareIds, compareIdsAt, copyId, readU64At, writeU64At } from '../../src/storage/format.js';
import { oidKey, oidKeyAt, oidOfKey } from '../../src/storage/scan.js';
import { laterTid, newTid, tidFromTime, tidToSeconds, tidToString } from '../../src/storage/timestamp.js';

const id = fc.uint8Array({ minLength: 8, maxLength: 8 }).map((a) => Buffer.from(a));
const anyBytes = fc.uint8Array({ maxLength: 12 }).map((a) => Buffer.from(a));

describe('storage byte helpers', () => {
  it('compareIds orders like Buffer.compare, for ids and any other lengths', () => {
    fc.assert(fc.property(id, id, (a, b) => compareIds(a, b) === Buffer.compare(a, b) && compareIds(a, a) === 0));
    fc.assert(fc.property(id, id, fc.nat(4), (a, b, pad) => compareIdsAt(Buffer.concat([Buffer.alloc(pad, 7), a]), pad, b) === Buffer.compare(a, b)));
    fc.assert(fc.property(anyBytes, anyBytes, (a, b) => compareIds(a, b) === Buffer.compare(a, b)));
  });

  it('copyId is an equal buffer that does not share memory', () => {
    fc.assert(
      fc.property(fc.oneof(id, anyBytes), (a) => {
        const c = copyId(a);
        const equal = c.equals(a);
        if (c.length > 0) c[0] = c[0]! ^ 0xff;
        return equal && (a.length === 0 || c[0] !== a[0]);
      }),
    );
  });

  it('readU64At reads what writeU64At wrote and what readBigUInt64BE reads, and refuses offsets outside the buffer', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }), fc.nat(8), (n, off) => {
        const buf = Buffer.alloc(16, 0xaa);
        writeU64At(buf, off, n);
        return readU64At(buf, off) === n && BigInt(readU64At(buf, off)) === buf.readBigUInt64BE(off);
      }),
    );
    const buf = Buffer.alloc(10);
    expect(() => readU64At(buf, 3)).toThrow(RangeError);
    expect(() => readU64At(buf, -1)).toThrow(RangeError);
    expect(() => readU64At(buf, 0.5)).toThrow();
  });

  it('oidKey and oidKeyAt give one key per oid (a number below 2^53, else a string), and oidOfKey gives the oid back', () => {
    // Oids near the 2^53 boundary as well as anywhere.
    const boundary = fc.bigInt({ min: (1n << 53n) - 3n, max: (1n << 53n) + 3n }).map((n) => {
      const b = Buffer.alloc(8);
      b.writeBigUInt64BE(n);
      return b;
    });
    const anyOid = fc.oneof(id, boundary);
    fc.assert(
      fc.property(anyOid, anyOid, fc.nat(4), (a, b, pad) => {
        const framed = Buffer.concat([Buffer.alloc(pad, 1), a]);
        const key = oidKey(a);
        const exact = a.readBigUInt64BE() < 1n << 53n;
        return (
          oidKeyAt(framed, pad) === key &&
          typeof key === (exact ? 'number' : 'string') &&
          (!exact || key === Number(a.readBigUInt64BE())) &&
          oidOfKey(key).equals(a) &&
          (oidKey(b) === key) === a.equals(b)
        );
      }),
    );
    expect(oidKey(Buffer.from([0, 0, 0, 0, 0, 0, 1, 2]))).toBe(258);
    expect(oidOfKey(oidKey(Buffer.from('abc')))).toEqual(Buffer.from('abc'));
  });

  it('tidFromTime gives the calendar fields of any instant, in any order of calls, and newTid is strictly later than the last', () => {
    /** ZODB's TimeStamp of an instant, straight from its calendar fields. */
    const reference = (ms: number): Buffer => {
      const d = new Date(ms);
      const hi = ((((d.getUTCFullYear() - 1900) * 12 + d.getUTCMonth()) * 31 + (d.getUTCDate() - 1)) * 24 + d.getUTCHours()) * 60 + d.getUTCMinutes();
      const out = Buffer.alloc(8);
      out.writeUInt32BE(hi, 0);
      out.writeUInt32BE(Math.min(0xffffffff, Math.floor((((ms / 1000) % 60) * 4294967296) / 60)), 4);
      return out;
    };
    const instant = fc.integer({ min: Date.UTC(1990, 0, 1), max: Date.UTC(2100, 0, 1) });
    // Runs of instants close together (the same minute, the next) as well as far apart.
    const run = fc.tuple(instant, fc.array(fc.integer({ min: -90_000, max: 90_000 }), { maxLength: 8 })).map(([t, steps]) => [t, ...steps.map((s) => t + s)]);
    fc.assert(
      fc.property(fc.array(run, { maxLength: 5 }), (runs) => {
        let last: Buffer | null = null;
        for (const ms of runs.flat()) {
          expect(tidFromTime(ms)).toEqual(reference(ms));
          const tid = newTid(ms, last);
          const want = last === null || Buffer.compare(reference(ms), last) > 0 ? reference(ms) : laterTid(last);
          expect(tid).toEqual(want);
          last = tid;
        }
      }),
    );
  });

  // [tid, str(TimeStamp), TimeStamp.timeTime(), TimeStamp.laterThan(itself)], computed with the
  // formulas of persistent's C TimeStamp (_timestamp.c) in CPython: the month ends a full last
  // minute carries over, seconds that are an exact half microsecond, instants across the range, and
  // instants of 2026 whose timeTime differs in the last bit from the epoch's minute plus the seconds.
  const ZODB_TIMESTAMPS: Array<[string, string, number, string]> = [
  ['03f0155fffffffff', '2023-04-30 23:59:60.000000', 1682899200.0, '03f01b0000000000'],
  ['03eead5fffffffff', '2023-02-28 23:59:60.000000', 1677628800.0, '03eebe4000000000'],
  ['03f6df7fffffffff', '2024-02-29 23:59:60.000000', 1709251200.0, '03f6eac000000000'],
  ['03f6d9dfffffffff', '2024-02-28 23:59:60.000000', 1709164800.0, '03f6d9e000000000'],
  ['00014bdfffffffff', '1900-02-28 23:59:60.000000', -2203891200.0, '00015cc000000000'],
  ['0332b37fffffffff', '2000-02-29 23:59:60.000000', 951868800.0, '0332bec000000000'],
  ['03f58dffffffffff', '2023-12-31 23:59:60.000000', 1704067200.0, '03f58e0000000000'],
  ['03ee0fdfffffffff', '2023-01-31 23:59:60.000000', 1675209600.0, '03ee0fe000000000'],
  ['06640fdfffffffff', '2100-02-28 23:59:60.000000', 4107542400.0, '066420c000000000'],
  ['03f01295ffffffff', '2023-04-30 12:05:60.000000', 1682856360.0, '03f0129600000000'],
  ['040d578700800000', '2026-11-29 13:59:00.117188', 1795960740.1171875, '040d578700800001'],
  ['040d578701800000', '2026-11-29 13:59:00.351562', 1795960740.3515625, '040d578701800001'],
  ['040d578702800000', '2026-11-29 13:59:00.585938', 1795960740.5859375, '040d578702800001'],
  ['040d578703800000', '2026-11-29 13:59:00.820312', 1795960740.8203125, '040d578703800001'],
  ['040d57877f800000', '2026-11-29 13:59:29.882812', 1795960769.8828125, '040d57877f800001'],
  ['040d5787ff800000', '2026-11-29 13:59:59.882812', 1795960799.8828125, '040d5787ff800001'],
  ['54aea2f3128b2f33', '4552-03-13 20:03:04.346177', 81486331384.34618, '54aea2f3128b2f34'],
  ['d6cede190ed90475', '8627-09-04 11:37:03.479935', 210095897823.47995, 'd6cede190ed90476'],
  ['84b47f536b0d549b', '6056-04-02 02:27:25.090329', 128949676045.09033, '84b47f536b0d549c'],
  ['124588770f21ddb6', '2472-04-03 17:27:03.546630', 15849710823.54663, '124588770f21ddb7'],
  ['d8478a8ca09f76b5', '8673-10-04 07:40:37.645993', 211550168437.646, 'd8478a8ca09f76b6'],
  ['987671110cb1e29c', '6675-01-19 18:25:02.975359', 148477083902.97537, '987671110cb1e29d'],
  ['39d32e226b4cb242', '3711-01-18 04:18:25.148343', 54942121105.148346, '39d32e226b4cb243'],
  ['25bad2ab8f6d0558', '3081-09-04 18:19:33.615437', 35081144373.61544, '25bad2ab8f6d0559'],
  ['d578f739923a7369', '8585-11-06 03:37:34.272263', 208776022654.27228, 'd578f739923a736a'],
  ['a717ee57b64ce422', '7133-04-12 03:35:42.726646', 162937280142.72665, 'a717ee57b64ce423'],
  ['106f84817f150524', '2414-10-02 19:13:29.784869', 14035058009.78487, '106f84817f150525'],
  ['b1f67d1595e761d1', '7473-09-14 10:29:35.133712', 173680108175.1337, 'b1f67d1595e761d2'],
  ['040afe56965eda32', '2026-08-15 16:54:35.243090', 1786812875.2430897, '040afe56965eda33'],
  ['0408121ea13ffe79', '2026-04-06 16:30:37.792963', 1775493037.7929635, '0408121ea13ffe7a'],
  ['040c96327253edc6', '2026-10-26 05:06:26.795589', 1792991186.795589, '040c96327253edc7'],
  ['0408b79acf44dd3f', '2026-05-05 02:34:48.578672', 1777948488.578672, '0408b79acf44dd40'],
  ['040a50df9d95847e', '2026-07-15 20:47:36.933762', 1784148456.9337626, '040a50df9d95847f'],
  ['040cd754d4ea65d0', '2026-11-06 19:00:49.902098', 1793991649.9020977, '040cd754d4ea65d1'],
  ];

  it('prints, converts and steps tids as ZODB\'s TimeStamp does (a month end stepped to a day that does not exist; a half microsecond rounded up; the last bit of timeTime)', () => {
    for (const [hex, str, seconds, later] of ZODB_TIMESTAMPS) {
      const tid = Buffer.from(hex, 'hex');
      expect([hex, tidToString(tid), tidToSeconds(tid), laterTid(tid).toString('hex')]).toEqual([hex, str, seconds, later]);
    }
    // A clock stuck on the 30th of April: the next commit's tid is in May.
    expect(newTid(Date.UTC(2023, 3, 30, 12), Buffer.from('03f0155fffffffff', 'hex'))).toEqual(Buffer.from('03f01b0000000000', 'hex'));
  });

  it('refuses an instant a tid cannot hold (it wrapped to the year 9917)', () => {
    expect(() => tidFromTime(Date.UTC(1899, 11, 31, 23, 59, 30))).toThrow(/no tid for 1899-12-31T23:59:30.000Z/);
    expect(() => tidFromTime(Date.UTC(9917, 9, 14, 4, 16))).toThrow(RangeError);
    expect(() => tidFromTime(Number.NaN)).toThrow(/no tid for the time NaN ms/);
    expect(() => tidFromTime(1e300)).toThrow(/no tid for the time 1e\+300 ms/);
    expect(tidFromTime(Date.UTC(9917, 9, 14, 4, 15)).toString('hex')).toBe('ffffffff00000000');
    expect(tidFromTime(Date.UTC(1900, 0, 1)).toString('hex')).toBe('0000000000000000');
    expect(() => laterTid(Buffer.from('ffffffffffffffff', 'hex'))).toThrow(RangeError);
  });
});
