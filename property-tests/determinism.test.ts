// The same seed gives the same run: the trace of a simulated run (every
// connect, chunk, state transition, commit and apply, with virtual times)
// is string-equal across two runs of one plan.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { SimCluster, randomPlan } from '../src/sim/index.js';

async function traceOf(seed: number): Promise<string> {
  const shape = [
    { name: 's1', upstream: 'p' },
    { name: 's2', upstream: 's1' },
    { name: 's3', upstream: 'p' },
  ];
  const cluster = await SimCluster.create({ seed, secondaries: shape });
  try {
    const result = await cluster.run(randomPlan(seed, { secondaries: 3, ops: 40 }));
    expect(result.violations).toEqual([]);
    return result.trace.join('\n');
  } finally {
    await cluster.close();
  }
}

describe('simulation determinism', () => {
  for (const seed of [7, 1234, 987_654]) {
    it(`seed ${seed} gives the same trace twice`, async () => {
      const first = await traceOf(seed);
      const second = await traceOf(seed);
      expect(first.split('\n').length).toBeGreaterThan(50);
      expect(second).toBe(first);
    });
  }

  it('different seeds give different traces', async () => {
    expect(await traceOf(1)).not.toBe(await traceOf(2));
  });
});

describe('misuse of the cluster is refused, not a run that silently differs', () => {
  it('a dir holding files (an earlier run would be reopened), a bad advance, an unknown op, and any step after close', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'zrs-sim-dir-'));
    try {
      writeFileSync(join(dir, 'p.1.fs'), 'from an earlier run');
      await expect(SimCluster.create({ seed: 5, secondaries: 1, dir })).rejects.toThrow(/^SimCluster: dir .* is not empty \(p\.1\.fs\): a run reopens the files it finds and does not replay/);
      rmSync(join(dir, 'p.1.fs'));
      const cluster = await SimCluster.create({ seed: 5, secondaries: 1, dir: join(dir, 'made') });
      try {
        for (const ms of [Number.NaN, Number.POSITIVE_INFINITY, -1]) await expect(cluster.advance(ms)).rejects.toBeInstanceOf(RangeError);
        await expect(cluster.apply({ kind: 'explode' } as never)).rejects.toThrow('SimCluster.apply: unknown op kind "explode"');
        await cluster.apply({ kind: 'commit' });
        expect(await cluster.converge(60_000)).toBe(true);
      } finally {
        await cluster.close();
      }
      await expect(cluster.apply({ kind: 'commit' })).rejects.toThrow('SimCluster.apply: the cluster is closed');
      await expect(cluster.converge()).rejects.toThrow('SimCluster.converge: the cluster is closed');
      await expect(cluster.step()).rejects.toThrow('SimCluster.step: the cluster is closed');
      await expect(cluster.run({ schedule: [] } as never)).rejects.toThrow('SimCluster.run: the cluster is closed');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
