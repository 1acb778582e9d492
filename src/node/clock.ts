// Wall-clock time for real deployments: the only Clock that touches Date.now
// and the global timers.

import type { Clock } from '../ports/clock.js';

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, delayMs) => {
    const t = setTimeout(fn, delayMs);
    return t;
  },
  clearTimeout: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>),
};

/** A seed for the default random source (jitter) in real deployments. */
export function randomSeed(): number {
  return Math.floor(Math.random() * 0x7fffffff);
}
