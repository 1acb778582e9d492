// The failover properties over the simulator: (a) under random crashes,
// partitions, lost disks and promotions (split brains included) no node ever
// mixes two histories; (b) after heal and rewind every node converges to the
// final primary; (c) with syncReplicas = n, no commit acknowledged to its
// caller is lost when the primary's disk is lost and the most advanced
// surviving secondary is promoted. Then the same checkers with a deliberate
// mistake or bug, each of which they must catch.
// Seeds: CI=true runs the fixed CI_SEED; SIM_SEED, SIM_PATH and
// SIM_REPLAY_PATH (the replayPath printed with the commands) replay a
// failure; SIM_RUNS scales every property.

import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { GenerationHistory } from '../src/failover/generations.js';
import { FailoverHistory } from '../src/failover/history.js';
import { failoverProperty, failoverTotals, lastFailoverRun, type FailoverPropertyOptions } from './failover.model.js';
import { simRuns, simSeed } from './model.js';

function settings(runs: number): fc.Parameters<unknown> {
  return { numRuns: simRuns(runs), seed: simSeed(), path: process.env.SIM_PATH, interruptAfterTimeLimit: 120_000 };
}

/** Run a property and return how the totals moved during it. */
async function assertProperty(o: FailoverPropertyOptions, runs: number): Promise<typeof failoverTotals> {
  const before = { ...failoverTotals };
  await fc.assert(failoverProperty({ ...o, replayPath: process.env.SIM_REPLAY_PATH }), settings(runs));
  const moved = { ...failoverTotals };
  for (const k of Object.keys(moved) as Array<keyof typeof failoverTotals>) moved[k] -= before[k];
  return moved;
}

const restore: Array<() => void> = [];
afterEach(() => {
  while (restore.length) restore.pop()!();
});

function patch<T extends object, K extends keyof T>(target: T, key: K, value: T[K]): void {
  const original = target[key];
  target[key] = value;
  restore.push(() => (target[key] = original));
}

/** The property must fail (fixed seed); returns the failure message. */
async function counterexample(o: FailoverPropertyOptions, numRuns: number): Promise<string> {
  const details = await fc.check(failoverProperty(o), { numRuns, seed: 42, endOnFailure: true });
  expect(details.failed, 'the property did not catch it').toBe(true);
  return String((details.errorInstance as Error | null)?.message ?? '');
}

describe('failover under simulated faults', () => {
  it('(a) no node ever mixes two histories under random crashes, partitions, lost disks and promotions', async () => {
    const t = await assertProperty({ mode: 'chaos', secondaries: 3, converge: false, maxCommands: 30 }, 50);
    expect(t.splitBrains, 'no run promoted a secondary while a primary was running').toBeGreaterThan(0);
    expect(t.refusals, 'no run refused a diverged node').toBeGreaterThan(0);
  }, 200_000);

  it('(b) after heal and rewind every node converges to the final primary', async () => {
    const t = await assertProperty({ mode: 'chaos', secondaries: 2, converge: true, maxCommands: 25 }, 40);
    expect(t.rewindsThatCut, 'no run rewound a diverged node').toBeGreaterThan(0);
  }, 200_000);

  it('(c) with syncReplicas = 1 of 2, no acknowledged commit is lost when the primary disk is lost and the most advanced secondary promoted', async () => {
    const t = await assertProperty(
      { mode: 'durability', promote: 'best', secondaries: 2, converge: true, maxCommands: 25, cluster: { syncReplicas: 1, syncTimeoutMs: 2_000, checkAcknowledged: true } },
      30,
    );
    expect(t.acknowledged).toBeGreaterThan(0);
    expect(t.disksLost).toBeGreaterThan(0);
    expect(t.failedForCaller, 'no commit ever timed out: the property never saw a commit that may be lost').toBeGreaterThan(0);
  }, 200_000);

  it('(c) with syncReplicas = 2 of 3, likewise', async () => {
    const t = await assertProperty(
      { mode: 'durability', promote: 'best', secondaries: 3, converge: true, maxCommands: 25, cluster: { syncReplicas: 2, syncTimeoutMs: 2_000, checkAcknowledged: true } },
      20,
    );
    expect(t.acknowledged).toBeGreaterThan(0);
    expect(t.disksLost).toBeGreaterThan(0);
  }, 200_000);
});

describe('failover simulation determinism', () => {
  it('the same seed gives the same traces, promotions and rewinds included', async () => {
    const tracesOf = async (): Promise<string[]> => {
      const traces: string[] = [];
      const property = failoverProperty({ mode: 'chaos', secondaries: 2, converge: true, maxCommands: 25 }).afterEach(() => void traces.push(lastFailoverRun.trace.join('\n')));
      await fc.assert(property, { numRuns: 6, seed: 99 });
      return traces;
    };
    const first = await tracesOf();
    expect(first.join('\n')).toMatch(/promoted: generation/);
    expect(first.join('\n')).toMatch(/ rewound to /);
    expect(await tracesOf()).toEqual(first);
  }, 60_000);
});

describe('the failover properties catch mistakes and bugs', () => {
  it('(c) fails with syncReplicas = 0: commits acknowledged at once are lost with the primary disk', async () => {
    const message = await counterexample({ mode: 'durability', promote: 'best', secondaries: 2, converge: false, maxCommands: 25, cluster: { checkAcknowledged: true } }, 150);
    expect(message).toMatch(/\[acknowledged\]/);
  }, 120_000);

  it('(c) fails with syncReplicas = 1 of 2 when the least advanced secondary is promoted', async () => {
    const message = await counterexample(
      { mode: 'durability', promote: 'worst', secondaries: 2, converge: false, maxCommands: 40, cluster: { syncReplicas: 1, syncTimeoutMs: 2_000, checkAcknowledged: true } },
      150,
    );
    expect(message).toMatch(/\[acknowledged\]/);
  }, 120_000);

  it('(a) fails when a primary welcomes a diverged secondary', async () => {
    patch(FailoverHistory.prototype, 'refusalFor', () => undefined);
    const message = await counterexample({ mode: 'chaos', secondaries: 2, converge: false, maxCommands: 30 }, 150);
    expect(message).toMatch(/\[(lineage|prefix|corruption)\]/);
  }, 120_000);

  it('(b) fails when a rewind keeps the generations it should cut', async () => {
    patch(GenerationHistory.prototype, 'cutFrom', async () => undefined);
    const message = await counterexample({ mode: 'chaos', secondaries: 2, converge: true, maxCommands: 25 }, 150);
    expect(message).toMatch(/\[convergence\]|after convergence/);
  }, 120_000);
});
