// Wall-clock time for real deployments: the only Clock that touches Date.now
// and the global timers.

import { performance, type EventLoopUtilization } from 'node:perf_hooks';
import type { Clock, LoadMeter } from '../ports/clock.js';

const loadMeter: LoadMeter = {
  elapsedMs: () => performance.now(),
  mark: () => performance.eventLoopUtilization(),
  busyShare: (since) => performance.eventLoopUtilization(since as EventLoopUtilization).utilization,
};

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, delayMs) => {
    const t = setTimeout(fn, delayMs);
    return t;
  },
  clearTimeout: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>),
  load: loadMeter,
};

/** A seed for the default random source (jitter) in real deployments. */
export function randomSeed(): number {
  return Math.floor(Math.random() * 0x7fffffff);
}
