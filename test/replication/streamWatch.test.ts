// StreamWatch times silence on the monotonic clock where there is one: a
// wall clock stepped forward (NTP, a resumed VM) must not fake silence, and
// one stepped back must not hide it. Time paused by the secondary's own
// backpressure counts as neither silence nor a stall, also when reading
// resumes just before a check.

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
  const w = new StreamWatch(clock, { stallMs: 60_000, heartbeatTimeoutMs: undefined, paused: () => false, insideFrame: () => false, bufferedBytes: () => 0, expired: (e) => expired.push(e) });
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

  it('silence is counted from a resume of reading just before the check, not across the pause', () => {
    const { clock, timers } = steppedClock();
    const expired: ZrsError[] = [];
    let paused = false;
    const w = new StreamWatch(clock, { stallMs: 60_000, heartbeatTimeoutMs: 5000, paused: () => paused, insideFrame: () => false, bufferedBytes: () => 0, expired: (e) => expired.push(e) });
    w.heartbeatsEvery(1000);
    w.received(60); // the silence check is due at 5 s
    timers.advance(100);
    paused = true;
    timers.advance(4880);
    paused = false;
    w.resumed(); // at 4,980 ms
    timers.advance(30); // the check, 30 ms after the resume
    expect(expired).toEqual([]);
    timers.advance(4960); // 4,990 ms after the resume
    expect(expired).toEqual([]);
    timers.advance(20); // over 5 s after the resume (the second look included)
    expect(expired.map((e) => e.message)).toEqual([expect.stringMatching(/^no frame from the primary for 50\d\d ms/)]);
  });

  it('a frame that stops growing after a resume stalls a full timeout after it', () => {
    const { clock, timers } = steppedClock();
    const expired: ZrsError[] = [];
    let paused = false;
    const w = new StreamWatch(clock, { stallMs: 10_000, heartbeatTimeoutMs: undefined, paused: () => paused, insideFrame: () => true, bufferedBytes: () => 100, expired: (e) => expired.push(e) });
    w.received(100);
    timers.advance(1000);
    paused = true;
    timers.advance(8990);
    paused = false;
    w.resumed(); // at 9,990 ms
    timers.advance(20); // the first check, 30 ms after the resume
    expect(expired).toEqual([]);
    timers.advance(9960); // 9,990 ms after the resume
    expect(expired).toEqual([]);
    timers.advance(21); // a full timeout after the resume (the second look included)
    expect(expired.map((e) => e.message)).toEqual(['stream stalled: no byte in 10000 ms inside a frame (100 bytes buffered)']);
  });

  it('a burst right after a frame starts does not buy a corrupted length a second timeout: it stalls a timeout after the last byte (a step later at most)', () => {
    const { clock, timers } = steppedClock();
    const expired: ZrsError[] = [];
    const w = new StreamWatch(clock, { stallMs: 8000, heartbeatTimeoutMs: undefined, paused: () => false, insideFrame: () => true, bufferedBytes: () => 200_000, expired: (e) => expired.push(e) });
    w.received(100); // the header of a frame far longer than what follows
    for (let i = 0; i < 20; i++) {
      timers.advance(1);
      w.received(10_000); // 200 KB at once, then nothing
    }
    timers.advance(8000);
    expect(expired).toEqual([]); // the first window held the burst
    timers.advance(1000); // a step (1 s) later: the last byte is 8 s old
    expect(expired.map((e) => e.message)).toEqual(['stream stalled: no byte in 8000 ms inside a frame (200000 bytes buffered)']);
  });

  it('a stall check looks once more before it gives up: bytes that waited in the socket while the loop was held count', () => {
    const { clock, timers } = steppedClock();
    const expired: ZrsError[] = [];
    const w = new StreamWatch(clock, { stallMs: 8000, heartbeatTimeoutMs: undefined, paused: () => false, insideFrame: () => true, bufferedBytes: () => 100, expired: (e) => expired.push(e) });
    w.received(100);
    timers.advance(8000); // the check runs first after a held loop: no byte yet in its window
    expect(expired).toEqual([]);
    w.received(70_000); // then the loop reads what arrived meanwhile
    timers.advance(1);
    expect(expired).toEqual([]);
    timers.advance(8000 + 1000 + 1); // nothing more: stalled, a step later at most, after its second look
    expect(expired.map((e) => e.message)).toEqual(['stream stalled: no byte in 8000 ms inside a frame (100 bytes buffered)']);
  });

  it('after a burst, heartbeats trickling in do not keep a stalled frame alive past a timeout and a step', () => {
    const { clock, timers } = steppedClock();
    const expired: ZrsError[] = [];
    const w = new StreamWatch(clock, { stallMs: 8000, heartbeatTimeoutMs: undefined, paused: () => false, insideFrame: () => true, bufferedBytes: () => 200_000, expired: (e) => expired.push(e) });
    w.received(100);
    w.received(200_000);
    let at = 0;
    while (expired.length === 0 && at < 30_000) {
      timers.advance(500);
      at += 500;
      w.received(60); // a heartbeat every half second, swallowed by the frame
    }
    expect(expired.map((e) => e.message)).toEqual([expect.stringMatching(/^stream stalled: \d+ bytes \(under 65536\) in 8000 ms inside a frame/)]);
    expect(at).toBeLessThanOrEqual(8000 + 2 * 1000);
  });
});
