// Mutation tests: switch a deliberate bug on (test-only, by patching a
// prototype for the duration of one check) and require the simulation to
// find a counterexample. A suite that passes with the bug on proves nothing.

import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { Applier } from '../src/replication/applier.js';
import { StreamChecksum } from '../src/wire/checksum.js';
import { InvariantViolationError, SimCluster, type ScheduledOp } from '../src/sim/index.js';
import { clusterProperty } from './model.js';

const restore: Array<() => void> = [];
afterEach(() => {
  while (restore.length) restore.pop()!();
});

function patch<T extends object, K extends keyof T>(target: T, key: K, value: T[K]): void {
  const original = target[key];
  target[key] = value;
  restore.push(() => (target[key] = original));
}

async function findCounterexample(property: ReturnType<typeof clusterProperty>, numRuns: number): Promise<string> {
  const details = await fc.check(property, { numRuns, endOnFailure: true, seed: 42 });
  expect(details.failed, 'the simulation did not catch the mutation').toBe(true);
  return String((details.errorInstance as Error | null)?.message ?? '');
}

describe('mutations the simulation must catch', () => {
  it('a secondary that does not verify the stream checksum stores a flipped byte', async () => {
    patch(StreamChecksum.prototype, 'verify', () => undefined);
    const message = await findCounterexample(
      clusterProperty({ kinds: ['commit', 'corrupt', 'advance'], recordBytes: [40_000], maxCommands: 12 }),
      60,
    );
    expect(message).toMatch(/\[(corruption|prefix)\]/);
  }, 120_000);

  it('a secondary that does not abort a half-received transaction on disconnect', async () => {
    patch(Applier.prototype, 'abort', async () => undefined);
    // A scheduled property: large transactions, and resets of p<->s1 at generated instants.
    // zrs2.x sends one frame per record, so a reset can land inside a transaction.
    const property = fc.asyncProperty(
      fc.integer({ min: 0, max: 0x7fffffff }),
      fc.array(fc.integer({ min: 0, max: 300 }), { minLength: 1, maxLength: 6 }),
      async (seed, resetsAtMs) => {
        const cluster = await SimCluster.create({ seed, secondaries: 1, protocol: 'zrs2.1', maxChunkBytes: 4096, bufferLimitBytes: 16_384 });
        try {
          const schedule: ScheduledOp[] = [
            ...Array.from({ length: 6 }, (_, i): ScheduledOp => ({ atMs: i * 50, op: { kind: 'commit', records: 5, bytes: 40_000 } })),
            ...resetsAtMs.map((atMs): ScheduledOp => ({ atMs, op: { kind: 'reset', a: 'p', b: 's1' } })),
          ];
          const result = await cluster.run({ schedule, livenessMs: 30_000 });
          if (!result.ok) throw new InvariantViolationError(result.violations, result.trace);
        } finally {
          await cluster.close();
        }
      },
    );
    const details = await fc.check(property, { numRuns: 40, endOnFailure: true, seed: 42 });
    expect(details.failed, 'the simulation did not catch the mutation').toBe(true);
    expect(String((details.errorInstance as Error | null)?.message)).toMatch(/\[(convergence|partial|prefix|error)\]/);
  }, 120_000);
});
