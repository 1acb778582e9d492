// Virtual time for simulations: a Clock (and xstate clock) whose time moves
// only when the harness says so. Timers fire in (time, key, insertion) order,
// so two runs that schedule the same timers fire them in the same order even
// when async work scheduled them in a different order within one instant.

import type { Clock, TimerHandle } from '../ports/clock.js';

/** 2024-01-01T00:00:00Z: virtual time starts here unless told otherwise. */
export const DEFAULT_VIRTUAL_EPOCH_MS = 1_704_067_200_000;

interface Timer {
  atMs: number;
  /** Ties at the same instant are broken by key, then by insertion order. */
  key: string;
  seq: number;
  fn: () => void;
  cancelled: boolean;
  owner: ClockView | null;
}

/** A Clock whose timers carry a tie-break key; killing it cancels them all. */
export interface ClockView extends Clock {
  readonly key: string;
  /** Cancel every timer of this view and ignore new ones (a crashed process). */
  kill(): void;
  readonly dead: boolean;
}

/**
 * A virtual clock. Nothing fires on its own: call `runNext()`, `advance(ms)`
 * or `runUntilIdle()` (the simulation harness does, settling real async work
 * between timers).
 *
 * @example
 * const clock = new VirtualClock();
 * const actor = createActor(machine, { clock }).start();
 * clock.advance(5_000); // fires every `after` delay due within 5 s, in order
 */
export class VirtualClock implements Clock {
  private nowMs: number;
  private heap: Timer[] = [];
  private seq = 0;
  private live = 0;
  /** Changes whenever a timer is set, cleared or fired (for settle detection). */
  version = 0;
  /** Timers fired so far. */
  fired = 0;

  constructor(startMs: number = DEFAULT_VIRTUAL_EPOCH_MS) {
    this.nowMs = startMs;
  }

  now(): number {
    return this.nowMs;
  }

  setTimeout(fn: (...args: unknown[]) => void, delayMs: number): TimerHandle {
    return this.schedule(delayMs, '', () => fn(), null);
  }

  clearTimeout(handle: TimerHandle): void {
    const t = handle as Timer | null | undefined;
    if (!t || t.cancelled || typeof t !== 'object' || !('seq' in t)) return;
    t.cancelled = true;
    this.live -= 1;
    this.version += 1;
  }

  /** Schedule `fn` after `delayMs` with a tie-break key (network events use the link). */
  schedule(delayMs: number, key: string, fn: () => void, owner: ClockView | null = null): TimerHandle {
    const d = Number.isFinite(delayMs) && delayMs > 0 ? delayMs : 0;
    const t: Timer = { atMs: this.nowMs + d, key, seq: this.seq++, fn, cancelled: false, owner };
    this.push(t);
    this.live += 1;
    this.version += 1;
    return t;
  }

  /** A Clock for one actor or node: same time, its own tie-break key. */
  view(key: string): ClockView {
    const clock = this;
    let dead = false;
    const mine = new Set<Timer>();
    const view: ClockView = {
      key,
      now: () => clock.now(),
      setTimeout(fn, delayMs) {
        if (dead) return null;
        const t = clock.schedule(delayMs, key, () => {
          mine.delete(t);
          fn();
        }, view) as Timer;
        mine.add(t);
        return t;
      },
      clearTimeout(handle) {
        if (handle) mine.delete(handle as Timer);
        clock.clearTimeout(handle);
      },
      kill() {
        dead = true;
        for (const t of mine) clock.clearTimeout(t);
        mine.clear();
      },
      get dead() {
        return dead;
      },
    };
    return view;
  }

  /** Timers not yet fired or cleared. */
  get pendingTimers(): number {
    return this.live;
  }

  /** When the next timer fires, or null when none is pending. */
  nextTimerAt(): number | null {
    this.dropCancelled();
    return this.heap[0]?.atMs ?? null;
  }

  /** Fire the next timer (moving time to it) if it is due by `untilMs`; false when none. */
  runNext(untilMs = Number.POSITIVE_INFINITY): boolean {
    this.dropCancelled();
    const t = this.heap[0];
    if (!t || t.atMs > untilMs) return false;
    this.pop();
    this.live -= 1;
    this.version += 1;
    this.fired += 1;
    t.cancelled = true;
    if (t.atMs > this.nowMs) this.nowMs = t.atMs;
    t.fn();
    return true;
  }

  /** Fire, in order, every timer due within `ms` from now, then set time to now + ms. */
  advance(ms: number): void {
    if (!(ms >= 0)) throw new RangeError(`advance(${ms}): ms must be >= 0`);
    const until = this.nowMs + ms;
    while (this.runNext(until));
    this.nowMs = until;
  }

  /** Move time forward without firing anything (only to an instant before the next timer). */
  skipTo(atMs: number): void {
    const next = this.nextTimerAt();
    if (next !== null && next < atMs) throw new RangeError(`skipTo(${atMs}) would jump over a timer due at ${next}`);
    if (atMs > this.nowMs) this.nowMs = atMs;
  }

  /** Fire timers until none is left (bounded: throws after `maxTimers`). */
  runUntilIdle(maxTimers = 1_000_000): number {
    let n = 0;
    while (this.runNext()) {
      if (++n > maxTimers) throw new Error(`runUntilIdle: more than ${maxTimers} timers fired (a timer loop?)`);
    }
    return n;
  }

  // ---------------------------------------------------------------- binary heap

  private dropCancelled(): void {
    while (this.heap.length && this.heap[0]!.cancelled) this.pop();
  }

  private static before(a: Timer, b: Timer): boolean {
    if (a.atMs !== b.atMs) return a.atMs < b.atMs;
    if (a.key !== b.key) return a.key < b.key;
    return a.seq < b.seq;
  }

  private push(t: Timer): void {
    const h = this.heap;
    h.push(t);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!VirtualClock.before(h[i]!, h[p]!)) break;
      [h[i], h[p]] = [h[p]!, h[i]!];
      i = p;
    }
  }

  private pop(): Timer | undefined {
    const h = this.heap;
    const top = h[0];
    const last = h.pop();
    if (h.length && last) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && VirtualClock.before(h[l]!, h[m]!)) m = l;
        if (r < h.length && VirtualClock.before(h[r]!, h[m]!)) m = r;
        if (m === i) break;
        [h[i], h[m]] = [h[m]!, h[i]!];
        i = m;
      }
    }
    return top;
  }
}
