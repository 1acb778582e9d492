// The one source of time every actor receives. It matches xstate's `Clock`
// (setTimeout/clearTimeout) so it can be passed straight to createActor, and
// adds `now()` for timestamps. Real time lives in src/node; virtual in src/sim.

export type TimerHandle = unknown;

export interface Clock {
  /** Milliseconds since the epoch (wall or virtual). */
  now(): number;
  setTimeout(fn: (...args: unknown[]) => void, delayMs: number): TimerHandle;
  clearTimeout(handle: TimerHandle): void;
}
