// The same seed gives the same run: the trace of a simulated run (every
// connect, chunk, state transition, commit and apply, with virtual times)
// is string-equal across two runs of one plan.

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
