// The worked example from docs/SIMULATION.md, kept running so the docs stay true.

import { afterEach, expect, it } from 'vitest';
import { SimCluster } from '../src/sim/index.js';

let cluster: SimCluster | null = null;
afterEach(async () => {
  await cluster?.close();
  cluster = null;
});

it('a secondary behind a flaky link catches up and holds no corrupted data', async () => {
  cluster = await SimCluster.create({ seed: 7, secondaries: 2 });
  for (let i = 0; i < 5; i++) await cluster.apply({ kind: 'commit', records: 3, bytes: 1000 });
  await cluster.apply({ kind: 'partition', a: 'p', b: 's1' });
  await cluster.apply({ kind: 'commit', records: 2, bytes: 50_000 });
  await cluster.apply({ kind: 'corrupt', from: 'p', to: 's2' });
  await cluster.advance(2_000);
  await cluster.apply({ kind: 'crash', node: 's2', style: 'host' });
  await cluster.apply({ kind: 'heal', mode: 'reset' });
  await cluster.apply({ kind: 'restart', node: 's2' });
  cluster.assertInvariants();
  expect(await cluster.converge(60_000)).toBe(true);
  expect(cluster.violations).toEqual([]);
  expect(cluster.trace.some((l) => l.includes('flipped'))).toBe(true);
});
