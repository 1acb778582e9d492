// BigMap and BigSet behave as Map and Set, before and after they split into
// shards, and hold more than V8's 2^24 entries a single Map can.

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { BigMap, BigSet } from '../../src/storage/bigMap.js';

const key = fc.oneof(fc.nat({ max: 300 }), fc.string({ minLength: 1, maxLength: 3 }));
const op = fc.oneof(
  fc.record({ kind: fc.constant('set' as const), key, value: fc.integer() }),
  fc.record({ kind: fc.constant('delete' as const), key }),
  fc.record({ kind: fc.constant('clear' as const) }),
);

describe('BigMap and BigSet', () => {
  it('answer as a Map and a Set do, whether split or not (split after 16 entries here)', () => {
    fc.assert(
      fc.property(fc.array(op, { maxLength: 400 }), (ops) => {
        const big = new BigMap<number | string, number>(16);
        const bigSet = new BigSet<number | string>(16);
        const model = new Map<number | string, number>();
        for (const o of ops) {
          if (o.kind === 'set') {
            big.set(o.key, o.value);
            bigSet.add(o.key);
            model.set(o.key, o.value);
          } else if (o.kind === 'delete') {
            expect(big.delete(o.key)).toBe(model.has(o.key));
            expect(bigSet.delete(o.key)).toBe(model.has(o.key));
            model.delete(o.key);
          } else {
            big.clear();
            for (const k of [...bigSet]) bigSet.delete(k);
            model.clear();
          }
          expect(big.size).toBe(model.size);
          expect(bigSet.size).toBe(model.size);
        }
        for (const k of [0, 1, 17, 'a', 'zz']) {
          expect(big.get(k)).toBe(model.get(k));
          expect(big.has(k)).toBe(model.has(k));
          expect(bigSet.has(k)).toBe(model.has(k));
        }
        const byKey = (a: [number | string, number], b: [number | string, number]) => String(a[0]).localeCompare(String(b[0]));
        expect([...big].sort(byKey)).toEqual([...model].sort(byKey));
        expect([...big.keys()].length).toBe(model.size);
        expect([...big.values()].reduce((n, v) => n + v, 0)).toBe([...model.values()].reduce((n, v) => n + v, 0));
        expect([...bigSet].map(String).sort()).toEqual([...model.keys()].map(String).sort());
        const seen: Array<number | string> = [];
        big.forEach((_, k) => seen.push(k));
        expect(seen.length).toBe(model.size);
      }),
    );
  });

  it('spreads keys over its shards: positions a record size apart, and hex oids (a remainder by 64 put them in 1 and 16 shards)', () => {
    const used = (m: BigMap<number | string, number>): number => (m as unknown as { shards: Map<unknown, unknown>[] }).shards.filter((s) => s.size > 0).length;
    const positions = new BigMap<number | string, number>(64);
    const oids = new BigMap<number | string, number>(64);
    for (let i = 0; i < 10_000; i++) {
      positions.set(4 + 64 * i, i);
      oids.set(i.toString(16).padStart(16, '0'), i);
    }
    expect(used(positions)).toBeGreaterThanOrEqual(60);
    expect(used(oids)).toBeGreaterThanOrEqual(60);
    // Told how many it will hold, it starts split (no copy of them all half way).
    const presized = new BigMap<number, number>(64, 100);
    presized.set(1, 1);
    expect(used(presized)).toBe(1);
    expect([...presized]).toEqual([[1, 1]]);
  });

  it('holds more entries than one Map can (2^24, where a storage\'s index of that many objects failed)', () => {
    const n = 2 ** 24 + 1;
    const big = new BigMap<number, number>();
    for (let i = 0; i < n; i++) big.set(i, i);
    expect(big.size).toBe(n);
    expect(big.get(n - 1)).toBe(n - 1);
    expect(big.get(0)).toBe(0);
  }, 120_000);
});
