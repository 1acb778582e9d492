// Random interleavings of commits, undos, partitions, resets, half-open links,
// flipped bytes, crashes/restarts, chain changes and disk faults over the
// simulated network: the invariants hold after every step and the cluster
// converges. SIM_RUNS sets the number of runs; a failure prints its replay
// command (npm run sim -- --property default --seed … --path …) and trace.

import { afterAll, describe, expect, it } from 'vitest';
import { settleRuns, simRuns, simSeed, totals } from './model.js';
import { assertNamed, type PropertyName } from './properties.js';

// A run the time limit abandoned removes its cluster's files when it ends.
afterAll(() => settleRuns(), 300_000);

/** Coverage is required of the default runs only (a replay or a few SIM_RUNS may see little). */
const coverage = process.env.SIM_PATH === undefined && process.env.SIM_RUNS === undefined;

/**
 * Run a property (a run that hangs past the time limit fails it, with its
 * seed); then require that its runs reached what it is about.
 */
async function assertCovering(name: PropertyName, seen: (moved: typeof totals, runs: number) => void): Promise<void> {
  const before = { ...totals };
  await assertNamed(name, { numRuns: simRuns(100), seed: simSeed(), interruptAfterTimeLimit: 240_000, markInterruptAsFailure: true });
  if (!coverage) return;
  const moved = Object.fromEntries(Object.entries(totals).map(([k, v]) => [k, v - before[k as keyof typeof totals]])) as typeof totals;
  seen(moved, moved.runs);
}

describe('replication under simulated faults', () => {
  it('keeps every secondary a prefix of the primary and converges after faults stop', async () => {
    await assertCovering('default', (moved, runs) => {
      expect(moved.runsWithCommits, 'most runs must commit something').toBeGreaterThan(runs / 2);
      expect(moved.unsyncedCrashes, 'no run crashed a node with written bytes not yet synced').toBeGreaterThan(0);
    });
  }, 300_000);

  it('does the same with heartbeats on, which secondaries time the link out by', async () => {
    await assertCovering('heartbeats', (moved) => {
      expect(moved.heartbeatTimeouts, 'no secondary ever took its link for dead').toBeGreaterThan(0);
    });
  }, 300_000);
});
