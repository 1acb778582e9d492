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

it.each([
  [200, true],
  [0, false],
])('with heartbeats every %s ms, a secondary whose primary forgot the link (no keep-alives) notices: %s', async (heartbeatIntervalMs, notices) => {
  cluster = await SimCluster.create({ seed: 11, secondaries: 1, protocol: 'native', keepAliveDelayMs: null, heartbeatIntervalMs, heartbeatTimeoutMs: 1000 });
  for (let i = 0; i < 3; i++) await cluster.apply({ kind: 'commit', records: 2, bytes: 500 });
  await cluster.advance(500);
  await cluster.apply({ kind: 'halfOpen', a: 'p', b: 's1', dead: 'p' });
  await cluster.advance(3_000);
  expect(cluster.trace.some((l) => l.includes('taken for dead'))).toBe(notices);
  if (!notices) return;
  // It reconnected on its own (nothing healed the link), so what the primary commits now reaches it.
  await cluster.apply({ kind: 'commit', records: 2, bytes: 500 });
  await cluster.advance(2_000);
  expect(cluster.lastTidOf('s1')).toBe(cluster.lastTidOf('p'));
  expect(await cluster.converge(30_000)).toBe(true);
  expect(cluster.violations).toEqual([]);
});
