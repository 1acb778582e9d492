// The simulator's checkers find what they are for, when it is put in front
// of them: a primary that comes back from a crash without a transaction it
// made durable (no-loss), a secondary whose transaction count holds one that
// does not iterate (partial), and a transaction no primary committed
// (prefix), beside one that differs from its committed self (corruption) and
// one committed elsewhere in the history (lineage).

import { truncateSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { SimCluster } from '../../src/sim/index.js';
import { HistoryTree, LINEAGE_ORIGIN } from '../../src/sim/lineage.js';
import { auditedDecisions } from '../../src/sim/cluster.js';
import type { AuditRecord } from '../../src/audit/auditLog.js';

let cluster: SimCluster | null = null;
afterEach(async () => {
  await cluster?.close();
  cluster = null;
});

const found = (c: SimCluster): string[] => c.violations.map((v) => `${v.invariant} ${v.node}`);

describe("the simulator's checkers", () => {
  it('no-loss: a primary restarted without its last durable transaction', async () => {
    cluster = await SimCluster.create({ seed: 7, secondaries: 1 });
    for (let i = 0; i < 3; i++) await cluster.apply({ kind: 'commit', records: 2, bytes: 100 });
    await cluster.advance(1000);
    let lastPos = 0;
    for await (const t of cluster.primary!.localStorage.iterator()) lastPos = t.pos;
    const path = cluster.primary!.localStorage.path;
    await cluster.apply({ kind: 'crash', node: 'p', style: 'process' });
    // The crash image loses what the disk held durable: the last transaction.
    truncateSync(`${path}.crash`, lastPos + 10);
    await cluster.apply({ kind: 'restart', node: 'p' });
    expect(found(cluster)).toContain('no-loss p');
  });

  it('partial: a secondary counting a transaction that does not iterate', async () => {
    cluster = await SimCluster.create({ seed: 7, secondaries: 1 });
    for (let i = 0; i < 3; i++) await cluster.apply({ kind: 'commit', records: 2, bytes: 100 });
    await cluster.advance(1000);
    expect(await cluster.check()).toEqual([]);
    Object.defineProperty(cluster.secondary('s1')!.storage, 'transactionCount', { get: () => 4, configurable: true });
    expect((await cluster.check()).map((v) => `${v.invariant} ${v.node}`)).toContain('partial s1');
  });

  it('prefix, corruption and lineage: what no primary committed, what differs from it, what was committed elsewhere', () => {
    const tree = new HistoryTree();
    const a = tree.add(LINEAGE_ORIGIN, { tid: '03f58e0000000000', digest: 'aaaa' }, 'p');
    tree.add(LINEAGE_ORIGIN, { tid: '03f58e0000000002', digest: 'cccc' }, 'p');
    expect(tree.follow(LINEAGE_ORIGIN, { tid: '03f58e0000000000', digest: 'aaaa' })).toEqual({ link: a });
    expect(tree.follow(a, { tid: '03f58e0000000001', digest: 'bbbb' })).toMatchObject({ invariant: 'prefix' });
    expect(tree.follow(LINEAGE_ORIGIN, { tid: '03f58e0000000000', digest: 'ffff' })).toMatchObject({ invariant: 'corruption' });
    expect(tree.follow(a, { tid: '03f58e0000000002', digest: 'cccc' })).toMatchObject({ invariant: 'lineage' });
  });
});

describe("the audit verdict's reading of a log", () => {
  let seq = 0;
  const record = (kind: string, details: Record<string, unknown>): AuditRecord => ({ seq: ++seq, time: '', timeMs: seq, node: 'n', kind, details }) as AuditRecord;
  const promotion = (g: number): AuditRecord => record('promotion', { newGeneration: g, startTid: '00000000000000aa' });
  const config = record('config', { change: 'open', role: 'primary' });

  it('takes back a promotion that failed late, online (afterDetach) or offline (afterRecord), and only one recorded since the node last served', () => {
    expect(auditedDecisions([promotion(1), config, promotion(2), record('promotion-refused', { afterDetach: true })])).toEqual(['promotion to generation 1 after 00000000000000aa']);
    expect(auditedDecisions([promotion(1), record('promotion-refused', { afterRecord: true })])).toEqual([]);
    // Failed before its record was written: the promotion before, which the node served, stays.
    expect(auditedDecisions([promotion(1), config, record('promotion-refused', { afterDetach: true })])).toEqual(['promotion to generation 1 after 00000000000000aa']);
    // A refusal before anything started takes nothing back.
    expect(auditedDecisions([promotion(1), record('promotion-refused', { code: 'refused' })])).toEqual(['promotion to generation 1 after 00000000000000aa']);
    expect(auditedDecisions([promotion(1), config, record('rewind', { forkTid: '00000000000000bb' })])).toEqual(['promotion to generation 1 after 00000000000000aa', 'rewind to 00000000000000bb']);
  });
});
