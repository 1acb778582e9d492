// The send pacer on a virtual clock with a load meter the test drives: an
// idle loop sends at once, a busy one spaces steps so sends take at most
// their share, sending itself does not make the loop look busy, and without
// a load meter (simulations) nothing ever waits.

import { describe, expect, it } from 'vitest';
import type { Clock, LoadMeter } from '../../src/ports/clock.js';
import { SendPacer } from '../../src/replication/sendPacer.js';
import { VirtualClock } from '../../src/sim/clock.js';

/** A virtual clock whose load meter reads virtual time, with a busy share the test sets. */
function meteredClock(): { clock: Clock; virtual: VirtualClock; setBusy(share: number): void } {
  const virtual = new VirtualClock(0);
  let busy = 0;
  const load: LoadMeter = { elapsedMs: () => virtual.now(), mark: () => null, busyShare: () => busy };
  const clock: Clock = { now: () => virtual.now(), setTimeout: (fn, ms) => virtual.setTimeout(fn, ms), clearTimeout: (h) => virtual.clearTimeout(h), load };
  return { clock, virtual, setBusy: (share) => (busy = share) };
}

/** A step whose work takes `ms` of virtual time. */
const costing = (virtual: VirtualClock, ms: number) => (): string => {
  virtual.advance(ms);
  return 'sent';
};

describe('SendPacer', () => {
  it('never waits without a load meter (virtual time: work costs nothing)', async () => {
    const virtual = new VirtualClock(0);
    const pacer = new SendPacer(virtual, 0.1);
    for (let i = 0; i < 5; i++) {
      expect(pacer.step(() => i)).toBe(i);
      expect(pacer.delayMs()).toBe(0);
    }
    await pacer.turn();
    expect(virtual.pendingTimers).toBe(0);
  });

  it('sends at once while other work leaves the loop mostly idle', () => {
    const { clock, virtual, setBusy } = meteredClock();
    const pacer = new SendPacer(clock, 0.1);
    setBusy(0.2);
    virtual.advance(25);
    expect(pacer.delayMs()).toBe(0); // closes the first load window: idle
    expect(pacer.loopBusy).toBe(false);
    expect(pacer.step(costing(virtual, 2))).toBe('sent');
    expect(pacer.delayMs()).toBe(0);
  });

  it('spaces steps to their share while other work keeps the loop busy', () => {
    const { clock, virtual, setBusy } = meteredClock();
    const pacer = new SendPacer(clock, 0.1);
    setBusy(1);
    virtual.advance(25);
    expect(pacer.delayMs()).toBe(0);
    expect(pacer.loopBusy).toBe(true);
    const start = virtual.now();
    pacer.step(costing(virtual, 1));
    // 1 ms of sending at a share of 0.1: the next step starts 10 ms after this one did.
    expect(pacer.delayMs()).toBeCloseTo(start + 10 - virtual.now(), 9);
    virtual.advance(9);
    expect(pacer.delayMs()).toBe(0);
    const second = virtual.now();
    pacer.step(costing(virtual, 2));
    expect(pacer.delayMs()).toBeCloseTo(second + 20 - virtual.now(), 9);
  });

  it('does not count its own sending as the loop being busy', () => {
    const { clock, virtual, setBusy } = meteredClock();
    const pacer = new SendPacer(clock, 0.5);
    // 20 ms window, 15 ms of it sending: active 19 ms leaves 4 of the 5 other ms busy.
    pacer.step(costing(virtual, 15));
    virtual.advance(5);
    setBusy(19 / 20);
    pacer.delayMs();
    expect(pacer.loopBusy).toBe(true);
    // The next window: 15 of 20 ms sending again, but only 1 ms of other work.
    pacer.step(costing(virtual, 15));
    virtual.advance(5);
    setBusy(16 / 20);
    pacer.delayMs();
    expect(pacer.loopBusy).toBe(false);
  });

  it('turn() waits on the clock for the delay, and an abort ends the wait', async () => {
    const { clock, virtual, setBusy } = meteredClock();
    const pacer = new SendPacer(clock, 0.1);
    setBusy(1);
    virtual.advance(25);
    pacer.delayMs();
    pacer.step(costing(virtual, 1));
    let turned = false;
    const turn = pacer.turn().then(() => (turned = true));
    virtual.advance(8);
    await Promise.resolve();
    expect(turned).toBe(false);
    virtual.advance(1);
    await turn;
    expect(turned).toBe(true);

    pacer.step(costing(virtual, 1));
    const abort = new AbortController();
    const aborted = pacer.turn(abort.signal);
    expect(virtual.pendingTimers).toBe(1);
    abort.abort();
    await aborted;
    expect(virtual.pendingTimers).toBe(0);
  });

  it('refuses a share outside (0, 1]', () => {
    const virtual = new VirtualClock(0);
    expect(() => new SendPacer(virtual, 0)).toThrow(RangeError);
    expect(() => new SendPacer(virtual, 1.5)).toThrow(RangeError);
    expect(() => new SendPacer(virtual, Number.NaN)).toThrow(RangeError);
  });
});
