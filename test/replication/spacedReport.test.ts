// SpacedReport on a virtual clock: the first value at once, later ones at
// most once per interval and always the newest, `now` regardless of the
// interval, nothing twice, and no timer left after cancel.

import { describe, expect, it } from 'vitest';
import { SpacedReport } from '../../src/replication/spacedReport.js';
import { VirtualClock } from '../../src/sim/clock.js';
import type { Clock } from '../../src/ports/clock.js';

const t = (n: number): Buffer => Buffer.from(n.toString(16).padStart(16, '0'), 'hex');

describe('SpacedReport', () => {
  it('passes the newest value on at most once per interval', () => {
    const clock = new VirtualClock();
    const sent: number[] = [];
    const r = new SpacedReport(clock, 20, t(0), (v) => sent.push(Number(v.readBigUInt64BE())));
    r.note(t(0));
    expect(sent).toEqual([]); // the receiver has it already
    r.note(t(1));
    expect(sent).toEqual([1]);
    for (let i = 2; i <= 9; i++) r.note(t(i));
    expect(sent).toEqual([1]);
    expect(clock.pendingTimers).toBe(1);
    clock.advance(19);
    expect(sent).toEqual([1]);
    clock.advance(1);
    expect(sent).toEqual([1, 9]);
    r.note(t(10));
    r.note(t(11), true); // at once, whatever the interval
    expect(sent).toEqual([1, 9, 11]);
    r.note(t(12));
    r.cancel();
    expect(clock.pendingTimers).toBe(0);
    clock.advance(100);
    expect(sent).toEqual([1, 9, 11]);
    r.note(t(12));
    expect(sent).toEqual([1, 9, 11, 12]);
  });

  it('spaces reports on the monotonic clock: a wall clock stepped back an hour defers nothing', () => {
    let wall = 10_000_000;
    let mono = 0;
    const delays: number[] = [];
    const clock: Clock = {
      now: () => wall,
      setTimeout: (_fn, ms) => delays.push(ms),
      clearTimeout: () => undefined,
      load: { elapsedMs: () => mono, mark: () => 0, busyShare: () => 0 },
    };
    const sent: number[] = [];
    const r = new SpacedReport(clock, 20, t(0), (v) => sent.push(Number(v.readBigUInt64BE())));
    r.note(t(1));
    wall -= 3_600_000;
    mono += 5;
    r.note(t(2));
    expect(sent).toEqual([1]);
    expect(delays).toEqual([15]);
  });
});
