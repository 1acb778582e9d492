// Replaying a counterexample: the property suite reports a replay command
// naming its property, seed, path (and replay path for a shrunk command
// list); `npm run sim` runs it through replay(), which must reproduce the
// failing run with a string-equal trace.

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { SimCluster } from '../src/sim/index.js';
import { lastRun } from './model.js';
import { checkNamed, namedProperty, replay, replayCommand } from './properties.js';

describe('replay', () => {
  it('a shrunk counterexample of a mutation replays with the identical trace', async () => {
    const found = await checkNamed('mutation-checksum', { numRuns: 60, seed: 42 });
    expect(found.details.failed).toBe(true);
    const c = found.counterexample!;
    expect(c.replayPath).toBeDefined();
    expect(replayCommand(c)).toBe(`npm run sim -- --property mutation-checksum --seed 42 --path ${c.path} --replay-path ${c.replayPath}`);
    expect(found.trace.some((l) => l.includes('!!   corruption violated') || l.includes('!!   prefix violated'))).toBe(true);

    const replayed = await replay(c);
    expect(replayed.failed).toBe(true);
    expect(replayed.message).toBe(String((found.details.errorInstance as Error).message).split('\n--- trace')[0]);
    expect(replayed.trace.join('\n')).toBe(found.trace.join('\n'));
  }, 120_000);

  it('without a path, the sim script runs the first case fast-check generates for the seed', async () => {
    await fc.check(namedProperty('default'), { seed: 7, numRuns: 1 });
    const first = lastRun.trace.join('\n');
    const replayed = await replay({ property: 'default', seed: 7 });
    expect(replayed.failed).toBe(false);
    expect(replayed.trace.join('\n')).toBe(first);
    expect(replayed.trace.length).toBeGreaterThan(20);
  }, 60_000);

  it('the heartbeats counterexample of a frame length corrupted upwards, which heartbeats then trickled into, stays fixed', async () => {
    // Found by `npm run soak -- --property heartbeats`: s1 stayed connected, replicating nothing, past the liveness phase.
    // Its case, written out (the generators have changed since, so its seed and path name another case now). Where
    // the flip lands depends on the seed and on every byte sent before it: when the handshake changed, the seed was
    // chosen again (the first whose flip lands in a frame length, then stalls and converges). Since hello, welcome and
    // heartbeats carry node ids and paths, no seed of the first 4,000 did with 3,000-byte records, where a frame
    // length is a small share of the bytes; with 30-byte ones, seed 823 was the first.
    const cluster = await SimCluster.create({
      seed: 823,
      protocol: 'native',
      secondaries: [
        { name: 's1', upstream: 'p' },
        { name: 's2', upstream: 's1' },
        { name: 's3', upstream: 'p' },
      ],
      heartbeatIntervalMs: 200,
      heartbeatTimeoutMs: 1000,
    });
    try {
      await cluster.apply({ kind: 'commit', records: 3, bytes: 30 });
      await cluster.apply({ kind: 'corrupt', from: 'p', to: 's1' });
      await cluster.apply({ kind: 'reset', a: 's3', b: 'p' });
      expect(await cluster.converge(120_000)).toBe(true);
      cluster.assertInvariants();
      expect(cluster.trace.some((l) => l.includes('flipped'))).toBe(true);
      expect(cluster.trace.some((l) => /stream stalled: \d+ bytes \(under 65536\)/.test(l))).toBe(true);
    } finally {
      await cluster.close();
    }
  }, 60_000);
});

