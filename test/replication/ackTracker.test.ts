// AckTracker against a model: waits resolve exactly when enough sessions
// acknowledged their tid, whatever the order of waits, acks and timeouts; and
// with a secondary missing, an ack costs no look at every wait piled up.

import fc from 'fast-check';
import { Subject } from 'rxjs';
import { describe, expect, it, vi } from 'vitest';
import { AckTracker } from '../../src/replication/syncReplication.js';
import type { PrimarySession, SessionProgress } from '../../src/replication/primarySession.js';
import { VirtualClock } from '../../src/sim/clock.js';

function fakeSession(peer: string): { session: PrimarySession; ack(tid: bigint): void } {
  const progress = new Subject<SessionProgress>();
  const session = { peer, progress$: progress, done$: new Subject<null>(), machine: { getSnapshot: () => ({ value: 'live' }) }, status: () => ({ peer }) };
  const tidOf = (n: bigint): Buffer => Buffer.from(n.toString(16).padStart(16, '0'), 'hex');
  return { session: session as unknown as PrimarySession, ack: (n) => progress.next({ acks: true, lastSentTid: tidOf(n), ackedTid: tidOf(n), sentTransactions: 0 }) };
}

const tidOf = (n: number): Buffer => Buffer.from(n.toString(16).padStart(16, '0'), 'hex');

describe('AckTracker', () => {
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
