// StreamWatch times silence on the monotonic clock where there is one: a
// wall clock stepped forward (NTP, a resumed VM) must not fake silence, and
// one stepped back must not hide it.

import { describe, expect, it } from 'vitest';
import type { Clock } from '../../src/ports/clock.js';
import { StreamWatch } from '../../src/replication/streamWatch.js';
import { VirtualClock } from '../../src/sim/clock.js';
import type { ZrsError } from '../../src/errors.js';

/** Timers and monotonic time from a virtual clock; a wall clock the test steps apart. */
function steppedClock(): { clock: Clock; timers: VirtualClock; step(ms: number): void } {
  const timers = new VirtualClock(0);
  let offset = 0;
  const clock: Clock = {
    now: () => timers.now() + offset,
    setTimeout: (fn, ms) => timers.setTimeout(fn, ms),
    clearTimeout: (h) => timers.clearTimeout(h),
    load: { elapsedMs: () => timers.now(), mark: () => null, busyShare: () => 0 },
  };
  return { clock, timers, step: (ms) => (offset += ms) };
}

function watch(clock: Clock): { w: StreamWatch; expired: ZrsError[] } {
  const expired: ZrsError[] = [];
  const w = new StreamWatch(clock, { stallMs: 60_000, heartbeatTimeoutMs: undefined, paused: () => false, bufferedBytes: () => 0, expired: (e) => expired.push(e) });
  return { w, expired };
}

describe('StreamWatch', () => {
  it('a wall clock stepped forward just before a check does not fake silence', () => {
    const { clock, timers, step } = steppedClock();
    const { w, expired } = watch(clock);
    w.heartbeatsEvery(1000);
    w.received(60); // the check is due 5 s later
    timers.advance(4900);
    w.received(60);
    step(10_000);
    // Heartbeats go on; the check at 5 s (and every later one) finds the link alive.
    for (let i = 0; i < 20; i++) {
      timers.advance(1000);
      w.received(60);
    }
    expect(expired).toEqual([]);
    w.stop();
  });

  it('a wall clock stepped back does not hide silence', () => {
    const { clock, timers, step } = steppedClock();
    const { w, expired } = watch(clock);
    w.heartbeatsEvery(1000);
    w.received(60);
    timers.advance(100);
    step(-3_600_000);
    timers.advance(4900);
    expect(expired).toEqual([]);
    timers.advance(2);
    expect(expired.map((e) => e.message)).toEqual(['no frame from the primary for 5001 ms though it heartbeats every 1000 ms: the link is taken for dead']);
    w.stop();
  });
});
