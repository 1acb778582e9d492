// AckTracker against a model: waits resolve exactly when enough sessions
// acknowledged their tid, whatever the order of waits, acks and timeouts; and
// with a secondary missing, an ack costs no look at every wait piled up.

import fc from 'fast-check';
import { Subject } from 'rxjs';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { join } from 'node:path';
import { AckTracker } from '../../src/replication/syncReplication.js';
import { PrimarySync } from '../../src/replication/primarySync.js';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import type { PrimarySession, SessionProgress } from '../../src/replication/primarySession.js';
import { VirtualClock } from '../../src/sim/clock.js';

function fakeSession(peer: string): { session: PrimarySession; ack(tid: bigint): void } {
  const progress = new Subject<SessionProgress>();
  const session = { peer, progress$: progress, done$: new Subject<null>(), machine: { getSnapshot: () => ({ value: 'live' }) }, status: () => ({ peer }) };
  const tidOf = (n: bigint): Buffer => Buffer.from(n.toString(16).padStart(16, '0'), 'hex');
  return { session: session as unknown as PrimarySession, ack: (n) => progress.next({ acks: true, lastSentTid: tidOf(n), ackedTid: tidOf(n), sentTransactions: 0 }) };
}

const tidOf = (n: number): Buffer => Buffer.from(n.toString(16).padStart(16, '0'), 'hex');

afterAll(cleanupTempDirs);

/** A session that sends, acknowledges and ends as the test says (tids as numbers). */
function scriptedSession(peer: string): { session: PrimarySession; sent(n: number): void; ack(n: number): void; end(): void } {
  const progress = new Subject<SessionProgress>();
  const done = new Subject<null>();
  const session = { peer, progress$: progress, done$: done, machine: { getSnapshot: () => ({ value: 'live' }) }, status: () => ({ peer }) };
  return {
    session: session as unknown as PrimarySession,
    sent: (n) => progress.next({ acks: true, lastSentTid: tidOf(n), ackedTid: null, sentTransactions: 0 }),
    ack: (n) => progress.next({ acks: true, lastSentTid: tidOf(n), ackedTid: tidOf(n), sentTransactions: 0 }),
    end: () => done.complete(),
  };
}

const turns = async (): Promise<void> => {
  for (let i = 0; i < 5; i++) await Promise.resolve();
};

describe('AckTracker', () => {
  it("forgets a session that ended: its acks no longer confirm anything", async () => {
    const tracker = new AckTracker({ clock: new VirtualClock(), log: () => undefined });
    const gone = scriptedSession('gone');
    tracker.track(gone.session);
    gone.ack(5);
    gone.end();
    expect(tracker.status()).toEqual([]);
    let outcome = 'pending';
    tracker.waitForReplication(tidOf(5), { replicas: 1, timeoutMs: 100 }).then(() => (outcome = 'ok'), () => (outcome = 'rejected'));
    await turns();
    expect(outcome).toBe('pending');
    tracker.close();
  });

  it('gives the lag of the oldest transaction sent and not acknowledged, and how long a wait waited', async () => {
    const clock = new VirtualClock(1_000_000);
    const tracker = new AckTracker({ clock, log: () => undefined });
    const s = scriptedSession('s');
    tracker.track(s.session);
    s.sent(1);
    clock.advance(100);
    s.sent(2);
    clock.advance(50);
    expect(tracker.status()[0]!.lagMs).toBe(150);
    const waiting = tracker.waitForReplication(tidOf(3), { replicas: 1, timeoutMs: 1000 });
    clock.advance(30);
    s.ack(3);
    expect((await waiting).waitedMs).toBe(30);
    tracker.close();
  });

  it('keeps the lag of the oldest unacknowledged send exact past the bound on remembered send times', () => {
    const clock = new VirtualClock(1_000_000);
    const tracker = new AckTracker({ clock, log: () => undefined });
    const s = scriptedSession('s');
    tracker.track(s.session);
    // 5,000 sends a millisecond apart, none acknowledged: more than the 4,096 send times remembered.
    for (let n = 1; n <= 5000; n++) {
      s.sent(n);
      clock.advance(1);
    }
    clock.advance(5000);
    expect(tracker.status()[0]!.lagMs).toBe(10_000);
    // Acknowledged halfway: the lag is that of a send still remembered, not one dropped to bound the memory.
    s.ack(2500);
    expect(tracker.status()[0]!.lagMs).toBe(10_000 - 2500);
    tracker.close();
  });

  it('rejects a timed-out wait only once its audit record is written', async () => {
    const clock = new VirtualClock();
    let written!: () => void;
    const recorded = new Promise<void>((resolve) => (written = resolve));
    const tracker = new AckTracker({ clock, log: () => undefined, audit: { decide: () => recorded } as never });
    let outcome = 'pending';
    tracker.waitForReplication(tidOf(1), { replicas: 1, timeoutMs: 10 }).then(() => (outcome = 'ok'), () => (outcome = 'rejected'));
    clock.advance(10);
    await turns();
    expect(outcome).toBe('pending');
    written();
    await turns();
    expect(outcome).toBe('rejected');
    tracker.close();
  });

  it("a primary's waitForReplication wants syncReplicas acks unless told how many", async () => {
    const path = join(await tempDir(), 'Data.fs');
    const storage = await FileStorage.open(path, { create: true, fsync: false });
    const sync = await PrimarySync.open({ path, syncReplicas: 2, auditPath: null }, storage, new VirtualClock(), () => undefined);
    try {
      const a = scriptedSession('a');
      await sync.attach({ watchSessions: (watch: (s: PrimarySession) => void) => (watch(a.session), () => undefined) } as never, { generation: () => null, address: 'x', promotion: null });
      a.ack(5);
      let outcome = 'pending';
      sync.waitForReplication(tidOf(5)).then(() => (outcome = 'ok'), () => (outcome = 'rejected'));
      await turns();
      expect(outcome).toBe('pending');
      await expect(sync.waitForReplication(tidOf(5), { replicas: 1 })).resolves.toMatchObject({ peers: ['a'] });
    } finally {
      await sync.close();
      await storage.close();
    }
  });

  it('aborts at once a wait begun after close', async () => {
    const tracker = new AckTracker({ clock: new VirtualClock(), log: () => undefined });
    tracker.close();
    await expect(tracker.waitForReplication(tidOf(1), { replicas: 1, timeoutMs: 60_000 })).rejects.toMatchObject({ name: 'SyncReplicationAbortedError' });
  });

  it('resolves each wait once as many sessions as it wants acknowledged its tid, as a count over the sessions says', async () => {
    const step = fc.oneof(
      fc.record({ kind: fc.constant('wait' as const), tid: fc.integer({ min: 1, max: 40 }), replicas: fc.integer({ min: 1, max: 3 }) }),
      fc.record({ kind: fc.constant('ack' as const), session: fc.integer({ min: 0, max: 2 }), by: fc.integer({ min: 0, max: 10 }) }),
      fc.record({ kind: fc.constant('time' as const), ms: fc.integer({ min: 1, max: 60 }) }),
    );
    await fc.assert(
      fc.asyncProperty(fc.array(step, { maxLength: 80 }), async (steps) => {
        const clock = new VirtualClock();
        const tracker = new AckTracker({ clock, log: () => undefined });
        const sessions = [0, 1, 2].map((i) => fakeSession(`s${i}`));
        for (const s of sessions) tracker.track(s.session);
        const acked = [0n, 0n, 0n];
        const outcome = new Map<number, string>();
        const waits: Array<{ i: number; tid: number; replicas: number }> = [];
        for (const st of steps) {
          if (st.kind === 'wait') {
            const i = waits.length;
            waits.push({ i, tid: st.tid, replicas: st.replicas });
            tracker.waitForReplication(tidOf(st.tid), { replicas: st.replicas, timeoutMs: 50 }).then(
              (c) => outcome.set(i, `ok ${c.peers.length}`),
              () => outcome.set(i, 'timeout'),
            );
          } else if (st.kind === 'ack') {
            acked[st.session] = acked[st.session]! + BigInt(st.by);
            sessions[st.session]!.ack(acked[st.session]!);
          } else clock.advance(st.ms);
          await Promise.resolve();
          await Promise.resolve();
          // The model: a wait not yet timed out is resolved iff enough sessions acknowledged its tid.
          for (const w of waits) {
            const covering = acked.filter((a) => a >= BigInt(w.tid)).length;
            const got = outcome.get(w.i);
            if (got === undefined || got === 'timeout') expect(covering < w.replicas || got === 'timeout').toBe(true);
            else expect(Number(got.split(' ')[1])).toBeGreaterThanOrEqual(w.replicas);
          }
        }
        tracker.close();
      }),
    );
  });

  it('with a secondary missing, looks at no pile of waits on each ack, whatever the acks they want (each ack looked at every wait: quadratic)', async () => {
    const clock = new VirtualClock();
    const tracker = new AckTracker({ clock, log: () => undefined });
    const healthy = fakeSession('healthy');
    tracker.track(healthy.session);
    tracker.track(fakeSession('down').session);
    const n = 2000;
    for (let i = 1; i <= n; i++) void tracker.waitForReplication(tidOf(i), { replicas: 2, timeoutMs: 10_000 }).catch(() => undefined);
    // One wait wanting a single ack, past what the healthy secondary will acknowledge.
    void tracker.waitForReplication(tidOf(n + 1), { replicas: 1, timeoutMs: 10_000 }).catch(() => undefined);
    const compared = vi.spyOn(Buffer, 'compare');
    for (let i = 1; i <= n; i++) healthy.ack(BigInt(i));
    // A few comparisons an ack (sorting the acks, the first wait of each list), not one a wait piled up.
    expect(compared.mock.calls.length).toBeLessThan(10 * n);
    compared.mockRestore();
    expect(tracker.pendingWaits).toBe(n + 1);
    tracker.close();
    expect(tracker.pendingWaits).toBe(0);
  });
});
