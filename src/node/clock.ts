// Wall-clock time for real deployments: the only Clock that touches Date.now
// and the global timers.

import { performance, type EventLoopUtilization } from 'node:perf_hooks';
import type { Clock, LoadMeter } from '../ports/clock.js';

const loadMeter: LoadMeter = {
  elapsedMs: () => performance.now(),
  mark: () => performance.eventLoopUtilization(),
  busyShare: (since) => performance.eventLoopUtilization(since as EventLoopUtilization).utilization,
};

/** Node's timers take at most this many ms; a longer delay fires at once (after a warning). */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** A timer longer than Node's limit: armed again for what is left each time it fires. */
class LongTimer {
  timer: ReturnType<typeof setTimeout> | undefined;

  constructor(fn: () => void, delayMs: number) {
    this.arm(fn, delayMs);
  }

  private arm(fn: () => void, remainingMs: number): void {
    const step = Math.min(remainingMs, MAX_TIMER_MS);
    this.timer = setTimeout(remainingMs > MAX_TIMER_MS ? () => this.arm(fn, remainingMs - step) : fn, step);
  }
}

export const systemClock: Clock = {
  now: () => Date.now(),
  // A timeout of days (a sync timeout "for ever", a patient status request) waits that long.
  setTimeout: (fn, delayMs) => (delayMs > MAX_TIMER_MS ? new LongTimer(fn, delayMs) : setTimeout(fn, delayMs)),
  clearTimeout: (handle) => clearTimeout(handle instanceof LongTimer ? handle.timer : (handle as ReturnType<typeof setTimeout>)),
  load: loadMeter,
};

/** A seed for the default random source (jitter) in real deployments. */
export function randomSeed(): number {
  return Math.floor(Math.random() * 0x7fffffff);
}
