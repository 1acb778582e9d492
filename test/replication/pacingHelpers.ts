// Shared by the pacing tests: a virtual clock with a load meter the test
// drives, and a progress reading for a node that always has work of its own.

import type { Clock, LoadMeter } from '../../src/ports/clock.js';
import { VirtualClock } from '../../src/sim/clock.js';

/** A virtual clock whose load meter reads virtual time, with a busy share the test sets. */
export function meteredClock(): { clock: Clock; virtual: VirtualClock; setBusy(share: number): void } {
  const virtual = new VirtualClock(0);
  let busy = 0;
  const load: LoadMeter = { elapsedMs: () => virtual.now(), mark: () => null, busyShare: () => busy };
  const clock: Clock = { now: () => virtual.now(), setTimeout: (fn, ms) => virtual.setTimeout(fn, ms), clearTimeout: (h) => virtual.clearTimeout(h), load };
  return { clock, virtual, setBusy: (share) => (busy = share) };
}

/** A progress reading that moves on every time it is read: the node always has work of its own. */
export function progressing(): () => number {
  let n = 0;
  return () => n++;
}
