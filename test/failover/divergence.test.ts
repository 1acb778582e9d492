// forkPoint when two nodes started the same generation at the same tid (no
// coordinator): a generation boundary of the primary that the secondary
// never reached is not the fork. Found by the failover simulation property
// (b): the rewind was told to keep a tid its storage did not have.

import { describe, expect, it } from 'vitest';
import { forkPoint, judgeHistory } from '../../src/failover/divergence.js';
import { Z64 } from '../replication/helpers.js';

const t = (n: number): Buffer => Buffer.from(n.toString(16).padStart(16, '0'), 'hex');
const h = (n: number, branch: string): Buffer => Buffer.from(`${branch}${n}`.padEnd(32, '.'));

describe('forkPoint', () => {
  // s1 and s2 were both promoted to generation 1 at the empty start. s1
  // committed 1; p followed s1, then was promoted to generation 2 at 1. s2
  // committed 2 on its own and now asks p.
  const p = {
    generations: [
      { generation: 0, startTid: Z64 },
      { generation: 1, startTid: Z64 },
      { generation: 2, startTid: t(1) },
    ],
    hashAt: (tid: Buffer) => (tid.equals(t(1)) ? h(1, 's1') : null),
  };
  const s2 = { startTid: t(2), generations: [{ generation: 0, startTid: Z64 }, { generation: 1, startTid: Z64 }], chainHead: { tid: t(2), hash: h(2, 's2') }, chainSamples: [] };

  it('is not a boundary older than the secondary first transaction', () => {
    expect(forkPoint(p, s2)).toEqual(Z64);
    expect(judgeHistory(p, s2)).toMatchObject({ kind: 'diverged', forkTid: Z64 });
  });

  it('is still the boundary when the secondary may hold it', () => {
    // The secondary holds 1 with p's link (sampled), then its own 2 and 3.
    const oldPrimary = {
      startTid: t(3),
      generations: [{ generation: 0, startTid: Z64 }, { generation: 1, startTid: Z64 }],
      chainHead: { tid: t(3), hash: h(3, 'x') },
      chainSamples: [{ tid: t(2), hash: h(2, 'x') }, { tid: t(1), hash: h(1, 's1') }],
    };
    expect(forkPoint(p, oldPrimary)).toEqual(t(1));
  });
});
