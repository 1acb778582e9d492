import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { RecentTransactions } from '../../src/storage/recentTxns.js';

function tid(n: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt32BE(n, 4);
  return b;
}

describe('RecentTransactions', () => {
  it('answers the tid of the transaction holding a position, across wrap-around', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 200 }), fc.array(fc.integer({ min: 1, max: 500 }), { minLength: 1, maxLength: 400 }), (capacity, sizes) => {
        const ring = new RecentTransactions(capacity);
        const starts: number[] = [];
        let pos = 4;
        sizes.forEach((size, i) => {
          ring.add(pos, tid(i));
          starts.push(pos);
          pos += size;
        });
        const oldest = Math.max(0, starts.length - capacity);
        for (let i = 0; i < starts.length; i++) {
          const end = i + 1 < starts.length ? starts[i + 1]! : pos;
          for (const p of [starts[i]!, end - 1]) {
            const got = ring.serialAt(p);
            if (i < oldest) {
              expect(got).toBeUndefined();
              expect(ring.serialIs(p, tid(i))).toBeUndefined();
            } else {
              expect(got?.equals(tid(i))).toBe(true);
              expect(ring.serialIs(p, tid(i))).toBe(true);
              expect(ring.serialIs(p, tid(i + 1))).toBe(false);
            }
          }
        }
        expect(ring.serialAt(3)).toBeUndefined();
      }),
    );
  });

  it('starts over when a transaction is added at or before the last position (a truncated file)', () => {
    const ring = new RecentTransactions(4);
    ring.add(100, tid(1));
    ring.add(200, tid(2));
    ring.add(150, tid(3));
    expect(ring.serialAt(120)).toBeUndefined();
    expect(ring.serialAt(160)?.equals(tid(3))).toBe(true);
    ring.clear();
    expect(ring.serialAt(160)).toBeUndefined();
  });
});
