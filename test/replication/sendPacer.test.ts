// The send pacer on a virtual clock with a load meter the test drives: an
// idle loop sends at once, one busy over two windows in a row spaces steps
// so sends take at most their share (a single busy window does not), a loop
// busy with sending alone is not held back, a loop that sends keep
// saturated is probed (paced for a window, to see whether the sends starved
// other work), waiters woken together take turns, and without a load meter
// (simulations) nothing ever waits.

import { describe, expect, it } from 'vitest';
import { ZrsError } from '../../src/errors.js';
import type { Clock, LoadMeter } from '../../src/ports/clock.js';
import { SendPacer } from '../../src/replication/sendPacer.js';
import { VirtualClock } from '../../src/sim/clock.js';
import { meteredClock, progressing } from './pacingHelpers.js';

/** A step whose work takes `ms` of virtual time. */
const costing = (virtual: VirtualClock, ms: number) => (): string => {
  virtual.advance(ms);
  return 'sent';
};

/**
 * A pacer driven a 20 ms load window at a time: `window(sendingMs, activeMs,
 * committed)` runs a step costing `sendingMs`, counts `committed` commits
 * (the node's progress), has the loop busy `activeMs` of the window in all,
 * closes the window and says whether the loop now counts as busy.
 */
function windowed(share: number) {
  const { clock, virtual, setBusy } = meteredClock();
  let commits = 0;
  const pacer = new SendPacer(clock, share, () => commits);
  const window = (sendingMs: number, activeMs: number, committed = 1): boolean => {
    pacer.step(costing(virtual, sendingMs));
    commits += committed;
    virtual.advance(20 - sendingMs);
    setBusy(activeMs / 20);
    pacer.delayMs();
    return pacer.loopBusy;
  };
  return { pacer, window };
}

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
    const pacer = new SendPacer(clock, 0.1, progressing());
    setBusy(0.2);
    virtual.advance(25);
    expect(pacer.delayMs()).toBe(0); // closes the first load window: idle
    expect(pacer.loopBusy).toBe(false);
    expect(pacer.step(costing(virtual, 2))).toBe('sent');
    expect(pacer.delayMs()).toBe(0);
  });

  it('spaces steps to their share once other work has kept the loop busy for two windows in a row', () => {
    const { clock, virtual, setBusy } = meteredClock();
    const pacer = new SendPacer(clock, 0.1, progressing());
    setBusy(1);
    virtual.advance(25);
    expect(pacer.delayMs()).toBe(0);
    expect(pacer.loopBusy).toBe(false); // one busy window: a burst, not yet a busy loop
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

  it('counts the loop busy only when the node progressed, the loop hardly idled and other work than sending took a good part of it', () => {
    const { window } = windowed(0.5);
    // Each kind of window twice in a row (the loop is busy after two busy windows), after an idle one.
    const twice = (sendingMs: number, activeMs: number, committed = 1): boolean => {
      window(0, 0);
      window(sendingMs, activeMs, committed);
      return window(sendingMs, activeMs, committed);
    };
    expect(twice(10, 19)).toBe(true); // committers took 9 of 20 ms, 1 ms idle
    expect(twice(15, 19)).toBe(false); // sending filled the loop: 4 ms of other work
    expect(twice(2, 12)).toBe(false); // 8 ms idle: sending takes nothing from anyone
    expect(twice(0, 20)).toBe(true);
    expect(twice(10, 19, 0)).toBe(false); // no commits: the other work is the sends' own (a catch-up)
    // Busy windows that do not follow one another never make the loop busy.
    for (let i = 0; i < 4; i++) expect(window(i % 2 === 0 ? 0 : 10, i % 2 === 0 ? 20 : 5)).toBe(false);
  });

  it('turn() waits on the clock for the delay, and an abort ends the wait', async () => {
    const { clock, virtual, setBusy } = meteredClock();
    const pacer = new SendPacer(clock, 0.1, progressing());
    setBusy(1);
    for (let i = 0; i < 2; i++) {
      virtual.advance(25);
      pacer.delayMs();
    }
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

    // A signal aborted already: no wait at all, and no timer left behind.
    pacer.step(costing(virtual, 1));
    expect(pacer.delayMs()).toBeGreaterThan(0);
    await pacer.turn(AbortSignal.abort());
    expect(virtual.pendingTimers).toBe(0);
  });

  it('probes a loop that sends keep saturated: paced for a window, it stays paced when other work then fills the loop', () => {
    const { window } = windowed(0.1);
    window(0, 0, 0); // an idle window first
    // Sends take 18 of 20 ms, a commit gets through now and then: never busy by the rule, but saturated.
    expect([1, 2, 3].map(() => window(18, 20, 1))).toEqual([false, false, false]);
    expect(window(18, 20, 1)).toBe(true); // the fourth saturated window starts a probe
    // Paced, the committers fill the loop: they were starved, pacing stays.
    expect(window(2, 20, 50)).toBe(true);
    expect(window(2, 20, 50)).toBe(true);
  });

  it('ends a probe that finds no starved work, and waits twice as long for the next', () => {
    const { window } = windowed(0.1);
    // A catch-up fills the loop beside a trickle of commits.
    const saturated = (n: number): boolean[] => Array.from({ length: n }, () => window(18, 20, 1));
    expect(saturated(4)).toEqual([false, false, false, true]); // the first probe
    expect(window(2, 4, 1)).toBe(false); // paced, the loop idled: the trickle needed no help
    expect(saturated(8)).toEqual([...Array(7).fill(false), true]); // the next probe comes after 8 windows
    expect(window(2, 4, 1)).toBe(false);
    expect(saturated(16).filter((b) => b)).toHaveLength(1); // then after 16
    window(2, 4, 1);
    // A window that is not saturated ends the stretch: the next probe comes after 4 again.
    window(0, 2, 1);
    expect(saturated(4)).toEqual([false, false, false, true]);
  });

  it('never probes a loop saturated by sends alone, without progress of the node (a catch-up on an idle primary)', () => {
    const { pacer, window } = windowed(0.1);
    for (let i = 0; i < 100; i++) {
      expect(window(19, 20, 0)).toBe(false);
      expect(pacer.delayMs()).toBe(0);
    }
  });

  it('lets waiters woken at the same moment take turns: the second waits for the step of the first', async () => {
    // Steps cost meter time without moving the virtual clock, so no timer fires inside one.
    const virtual = new VirtualClock(0);
    let stepped = 0;
    const load: LoadMeter = { elapsedMs: () => virtual.now() + stepped, mark: () => null, busyShare: () => 1 };
    const clock: Clock = { now: () => virtual.now(), setTimeout: (fn, ms) => virtual.setTimeout(fn, ms), clearTimeout: (h) => virtual.clearTimeout(h), load };
    const pacer = new SendPacer(clock, 0.1, progressing());
    for (let i = 0; i < 2; i++) {
      virtual.advance(25);
      pacer.delayMs(); // busy: two busy windows in a row
    }
    const step = (): void => pacer.step(() => void (stepped += 1)); // 1 ms: the next may start 10 ms after this one
    step();
    const order: string[] = [];
    const session = (name: string): Promise<void> =>
      pacer.turn().then(() => {
        order.push(name);
        step();
      });
    const both = Promise.all([session('a'), session('b')]);
    expect(virtual.pendingTimers).toBe(2); // both wait for the same moment
    // As in Node, what a waking timer resolves runs before the next timer fires.
    const fireNext = async (): Promise<void> => {
      expect(virtual.runNext()).toBe(true);
      for (let i = 0; i < 3; i++) await Promise.resolve();
    };
    await fireNext();
    expect(order).toEqual(['a']);
    const bWoke = virtual.now();
    await fireNext(); // b wakes at the same moment, finds the turn taken by a's step, and waits 10 ms more
    expect(order).toEqual(['a']);
    expect(virtual.nextTimerAt()).toBeCloseTo(bWoke + 10 - 1, 9); // a's step started 1 ms of meter time before
    await fireNext();
    await both;
    expect(order).toEqual(['a', 'b']);
    expect(virtual.pendingTimers).toBe(0);
  });

  it('refuses a share outside (0, 1]', () => {
    const virtual = new VirtualClock(0);
    expect(() => new SendPacer(virtual, 0)).toThrow(ZrsError);
    expect(() => new SendPacer(virtual, 1.5)).toThrow(ZrsError);
    expect(() => new SendPacer(virtual, Number.NaN)).toThrow(ZrsError);
  });
});
