// The tid samples a storage keeps to find a transaction by tid: the answer a
// linear search gives, through growth, with every tid copied in (a sample
// holds no Buffer of its own: see TidSamples).

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { TidSamples } from '../../src/storage/scan.js';

const tidOf = (n: number): Buffer => {
  const b = Buffer.alloc(8);
  b.writeUInt32BE(Math.floor(n / 2 ** 32), 0);
  b.writeUInt32BE(n % 2 ** 32, 4);
  return b;
};

describe('TidSamples', () => {
  it('finds the sample at or before a tid as a linear search does, across growth', () => {
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.nat({ max: 2 ** 40 }), { maxLength: 700 }).map((xs) => xs.sort((a, b) => a - b)),
        fc.array(fc.nat({ max: 2 ** 40 + 5 }), { minLength: 1, maxLength: 20 }),
        (tids, queries) => {
          const samples = new TidSamples();
          tids.forEach((t, i) => samples.add(tidOf(t), 1000 + i));
          expect(samples.count).toBe(tids.length);
          for (const q of [...queries, ...tids.slice(0, 5)]) {
            const at = tids.findLastIndex((t) => t <= q);
            expect(samples.atOrBefore(tidOf(q), 4)).toBe(at < 0 ? 4 : 1000 + at);
          }
        },
      ),
    );
  });

  it('copies each tid in: the buffer it came from may change or go', () => {
    const samples = new TidSamples();
    const source = Buffer.alloc(8 * 600);
    for (let i = 0; i < 600; i++) {
      source.writeUInt32BE(i + 1, 8 * i + 4);
      samples.add(source.subarray(8 * i, 8 * i + 8), 10 * i);
    }
    source.fill(0xff);
    const out = Buffer.alloc(8);
    samples.copyTid(599, out, 0);
    expect(out.equals(tidOf(600))).toBe(true);
    expect(samples.positionAt(599)).toBe(5990);
    expect(samples.atOrBefore(tidOf(300), 0)).toBe(2990);
  });
});
