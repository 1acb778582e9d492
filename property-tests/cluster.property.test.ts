// Random interleavings of commits, undos, partitions, resets, half-open links,
// flipped bytes, crashes/restarts and chain changes over the simulated
// network: the invariants hold after every step and the cluster converges.
// SIM_RUNS sets the number of runs; a failure prints seed, path and trace.

import fc from 'fast-check';
import { describe, it } from 'vitest';
import { clusterProperty, simRuns, simSeed } from './model.js';

describe('replication under simulated faults', () => {
  it('keeps every secondary a prefix of the primary and converges after faults stop', async () => {
    await fc.assert(clusterProperty({ maxCommands: 25 }), { numRuns: simRuns(100), seed: simSeed(), interruptAfterTimeLimit: 240_000 });
  }, 300_000);
});
