// Random interleavings of commits, undos, partitions, resets, half-open links,
// flipped bytes, crashes/restarts, chain changes and disk faults over the
// simulated network: the invariants hold after every step and the cluster
// converges. SIM_RUNS sets the number of runs; a failure prints its replay
// command (npm run sim -- --property default --seed … --path …) and trace.

import { afterAll, describe, it } from 'vitest';
import { settleRuns, simRuns, simSeed } from './model.js';
import { assertNamed } from './properties.js';

// A run the time limit abandoned removes its cluster's files when it ends.
afterAll(() => settleRuns(), 300_000);

describe('replication under simulated faults', () => {
  it('keeps every secondary a prefix of the primary and converges after faults stop', async () => {
    await assertNamed('default', { numRuns: simRuns(100), seed: simSeed(), interruptAfterTimeLimit: 240_000 });
  }, 300_000);

  it('does the same with heartbeats on, which secondaries time the link out by', async () => {
    await assertNamed('heartbeats', { numRuns: simRuns(100), seed: simSeed(), interruptAfterTimeLimit: 240_000 });
  }, 300_000);
});
