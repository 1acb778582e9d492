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
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { AuditLog } from '../src/audit/auditLog.js';
import { GenerationHistory } from '../src/failover/generations.js';
import { FailoverHistory } from '../src/failover/history.js';
import { SimCluster, type SimClusterOptions, type SimOp } from '../src/sim/index.js';
import { endPhase, failoverFailure, failoverProperty, failoverTotals, lastFailoverRun, type FailoverPropertyOptions } from './failover.model.js';
import { settleRuns, simRuns, simSeed } from './model.js';

function settings(runs: number): fc.Parameters<unknown> {
  return { numRuns: simRuns(runs), seed: simSeed(), path: process.env.SIM_PATH, interruptAfterTimeLimit: 120_000, markInterruptAsFailure: true };
}

/** Coverage is required of the default runs only (a replay or a few SIM_RUNS may see none). */
const coverage = process.env.SIM_PATH === undefined && process.env.SIM_RUNS === undefined;

/** Run a property; then require that its runs exercised each of `seen` (totals that must have moved). */
async function assertProperty(o: FailoverPropertyOptions, runs: number, seen: Array<keyof typeof failoverTotals>): Promise<void> {
  const before = { ...failoverTotals };
  await fc.assert(failoverProperty({ ...o, replayPath: process.env.SIM_REPLAY_PATH }), settings(runs));
  if (!coverage) return;
  for (const k of seen) expect(failoverTotals[k] - before[k], `no run had any ${k}: the property was not exercised`).toBeGreaterThan(0);
}

const restore: Array<() => void> = [];
afterEach(() => {
  while (restore.length) restore.pop()!();
});
// A run the time limit abandoned removes its cluster's files when it ends.
afterAll(() => settleRuns(), 120_000);

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
    await assertProperty({ mode: 'chaos', secondaries: 3, converge: false, maxCommands: 30 }, 50, ['splitBrains', 'refusals', 'disksLost']);
  }, 200_000);

  it('(b) after heal and rewind every node converges to the final primary', async () => {
    await assertProperty({ mode: 'chaos', secondaries: 2, converge: true, maxCommands: 25 }, 40, ['splitBrains', 'rewindsThatCut']);
  }, 200_000);

  it('(c) with syncReplicas = 1 of 2, no acknowledged commit is lost when the primary disk is lost and the most advanced secondary promoted', async () => {
    // failedForCaller: some commits timed out waiting for acks (those may be lost; acknowledged ones may not).
    await assertProperty(
      { mode: 'durability', promote: 'best', secondaries: 2, converge: true, maxCommands: 25, cluster: { syncReplicas: 1, syncTimeoutMs: 2_000, checkAcknowledged: true } },
      30,
      ['acknowledged', 'failedForCaller', 'disksLost', 'promotions'],
    );
  }, 200_000);

  it('(c) with syncReplicas = 2 of 3, likewise', async () => {
    await assertProperty(
      { mode: 'durability', promote: 'best', secondaries: 3, converge: true, maxCommands: 25, cluster: { syncReplicas: 2, syncTimeoutMs: 2_000, checkAcknowledged: true } },
      20,
      ['acknowledged', 'disksLost', 'promotions'],
    );
  }, 200_000);
});

describe('failover scenarios the properties found', () => {
  async function scenario(ops: Array<SimOp | { kind: 'advance'; ms: number }>, secondaries: SimClusterOptions['secondaries'] = 2, seed = 1): Promise<SimCluster> {
    const cluster = await SimCluster.create({ seed, secondaries, protocol: 'native' });
    try {
      for (const op of ops) await (op.kind === 'advance' ? cluster.advance(op.ms) : cluster.apply(op));
      await endPhase(cluster, 60_000);
      return cluster;
    } catch (err) {
      await cluster.close();
      throw failoverFailure(err, cluster, seed);
    }
  }

  it('a chain promoted twice (runbook steps only): the first promoted node rejoins the second', async () => {
    // s2 stays connected through s1's promotion and never hears of generation
    // 1; promoted in turn, it starts another generation 1. s1, back as its
    // secondary, is refused although it holds the same transactions; its
    // rewind must drop the refused generation (it used to keep it: refused
    // forever).
    const cluster = await scenario(
      [
        { kind: 'commit' },
        { kind: 'advance', ms: 1_000 },
        { kind: 'crash', node: 'p' },
        { kind: 'advance', ms: 500 },
        { kind: 'promote', node: 's1' },
        { kind: 'commit' },
        { kind: 'advance', ms: 1_000 },
        { kind: 'crash', node: 's1' },
        { kind: 'advance', ms: 500 },
        { kind: 'promote', node: 's2' },
        { kind: 'commit' },
      ],
      [
        { name: 's1', upstream: 'p' },
        { name: 's2', upstream: 's1' },
      ],
    );
    try {
      expect(cluster.primaryName).toBe('s2');
      expect(cluster.historyOf('s1')).toEqual(cluster.historyOf('s2'));
      expect(cluster.historyOf('s2')).toHaveLength(3);
    } finally {
      await cluster.close();
    }
  });

  it('two nodes promoted to the same generation at the same start: the fork is not the other one\'s boundary', async () => {
    // s1 and s2 both start generation 1 at the empty start; p follows s1 and
    // starts generation 2 at s1's first commit; s2, which never had it, is
    // told to rewind to it (it used to fail: "not a transaction of this storage").
    const cluster = await scenario([
      { kind: 'promote', node: 's1', force: true },
      { kind: 'promote', node: 's2', force: true },
      { kind: 'commit', node: 's1' },
      { kind: 'demote', node: 'p', upstream: 's1' },
      { kind: 'advance', ms: 1_000 },
      { kind: 'commit', node: 's2' },
      { kind: 'promote', node: 'p', force: true },
      { kind: 'demote', node: 's1', upstream: 'p' },
      { kind: 'demote', node: 's2', upstream: 'p' },
    ]);
    try {
      expect(cluster.trace.some((l) => / s2 .*rewound to 0000000000000000/.test(l))).toBe(true);
      expect(cluster.historyOf('s2')).toEqual(cluster.historyOf('p'));
    } finally {
      await cluster.close();
    }
  });

  it('a secondary promoted before it caught up with the generation it adopted', async () => {
    // s2's slow disk has not made the commit durable when it follows the
    // promoted s1 (adopting generation 1, which starts after that commit),
    // then crashes and loses it. Promoting s2 used to throw after it had
    // stopped replicating ("a new generation cannot start before the current
    // one"), leaving the node dead.
    const cluster = await scenario([
      { kind: 'disk', node: 's2', mode: 'slow', ms: 2_000 },
      { kind: 'commit' },
      { kind: 'advance', ms: 100 },
      { kind: 'crash', node: 'p' },
      { kind: 'promote', node: 's1', force: true },
      { kind: 'reconfigure', node: 's2', upstream: 's1' },
      { kind: 'advance', ms: 100 },
      { kind: 'crash', node: 's2' },
      { kind: 'restart', node: 's2' },
      { kind: 'promote', node: 's2', force: true },
      { kind: 'commit' },
    ]);
    try {
      expect(cluster.primaryName).toBe('s2');
      expect(cluster.historyOf('s1')).toEqual(cluster.historyOf('s2'));
    } finally {
      await cluster.close();
    }
  });

  it('a secondary that switches upstream while a transaction is still syncing names it with its hash link', async () => {
    // s2 is writing p's transaction (slow disk) when it is pointed at s1,
    // which committed other contents under the same tid. Its hello used to
    // name that tid before its link existed, so s1 judged by position only
    // and welcomed it: the two kept different transactions under one tid.
    const cluster = await scenario(
      [
        { kind: 'disk', node: 's2', mode: 'slow', ms: 20 },
        { kind: 'promote', node: 's1', force: true },
        { kind: 'commit', node: 'p' },
        { kind: 'commit', node: 's1' },
        { kind: 'advance', ms: 30 },
        { kind: 'reconfigure', node: 's2', upstream: 's1' },
        { kind: 'advance', ms: 300 },
      ],
      2,
      0,
    );
    try {
      expect(cluster.trace.some((l) => / s2 .*DIVERGED/.test(l))).toBe(true);
      expect(cluster.historyOf('s2')).toEqual(cluster.historyOf('s1'));
    } finally {
      await cluster.close();
    }
  });

  it('a secondary promoted while a received transaction is still syncing starts its generation once it is durable', async () => {
    // s2 has received p's commit and is writing it (slow disk) when p crashes
    // and s2 is promoted. The promotion used to start generation 1 after that
    // transaction before it was durable: as the new primary, s2 then refused p
    // (which holds it) as diverged, and the commit surfaced later on s2 as one
    // nobody had made.
    const cluster = await scenario(
      [
        { kind: 'commit', records: 1, bytes: 16 },
        { kind: 'disk', node: 's2', mode: 'slow', ms: 20 },
        { kind: 'advance', ms: 26 },
        { kind: 'crash', node: 'p', style: 'process' },
        { kind: 'promote', node: 's2', force: true },
        { kind: 'demote', node: 'p', upstream: 's2' },
        { kind: 'advance', ms: 200 },
      ],
      2,
      0,
    );
    try {
      const promoted = cluster.trace.find((l) => / s2 +promoted: generation 1 after /.test(l));
      expect(promoted).toBeDefined();
      expect(promoted).not.toMatch(/after 0{16}/);
      expect(cluster.trace.some((l) => /DIVERGED|refused secondary/.test(l))).toBe(false);
      expect(cluster.historyOf('p')).toEqual(cluster.historyOf('s2'));
      expect(cluster.historyOf('s2')).toHaveLength(1);
    } finally {
      await cluster.close();
    }
  });
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

  it('(b) fails when a node makes a promotion or a rewind its audit log does not show', async () => {
    const decide = AuditLog.prototype.decide;
    patch(AuditLog.prototype, 'decide', function (this: AuditLog, kind, details) {
      return kind === 'promotion' || kind === 'rewind' ? Promise.resolve() : decide.call(this, kind, details);
    });
    const message = await counterexample({ mode: 'chaos', secondaries: 2, converge: true, maxCommands: 25 }, 150);
    expect(message).toMatch(/\[audit\] \S+ .*audit log shows \[.*\], the node made \[(promotion|rewind) to /);
  }, 120_000);

  it('(b) fails when a rewind keeps the generations it should cut', async () => {
    patch(GenerationHistory.prototype, 'cutFrom', async () => undefined);
    const message = await counterexample({ mode: 'chaos', secondaries: 2, converge: true, maxCommands: 25 }, 150);
    expect(message).toMatch(/\[convergence\]|after convergence/);
  }, 120_000);
});
