// The small byte helpers on the storage's hot paths agree with Node's own
// (slower) Buffer methods on every input; oid keys are one per oid and
// convert back; tids from the clock match their calendar fields.

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { compareIds, compareIdsAt, copyId, readU64At, writeU64At } from '../../src/storage/format.js';
import { oidKey, oidKeyAt, oidOfKey } from '../../src/storage/scan.js';
import { newTid, tidFromTime, tidPlusOne } from '../../src/storage/timestamp.js';

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
          const want = last === null || Buffer.compare(reference(ms), last) > 0 ? reference(ms) : tidPlusOne(last);
          expect(tid).toEqual(want);
          last = tid;
        }
      }),
    );
  });
});
