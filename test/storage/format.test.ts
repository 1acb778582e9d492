// The small byte helpers on the storage's hot paths agree with Node's own
// (slower) Buffer methods on every input; oid keys are one per oid and
// convert back.

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { compareIds, copyId, readU64At, writeU64At } from '../../src/storage/format.js';
import { oidKey, oidKeyAt, oidOfKey } from '../../src/storage/scan.js';

const id = fc.uint8Array({ minLength: 8, maxLength: 8 }).map((a) => Buffer.from(a));
const anyBytes = fc.uint8Array({ maxLength: 12 }).map((a) => Buffer.from(a));

describe('storage byte helpers', () => {
  it('compareIds orders like Buffer.compare, for ids and any other lengths', () => {
    fc.assert(fc.property(id, id, (a, b) => compareIds(a, b) === Buffer.compare(a, b) && compareIds(a, a) === 0));
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
});
