// The one source of time every actor receives. It matches xstate's `Clock`
// (setTimeout/clearTimeout) so it can be passed straight to createActor, and
// adds `now()` for timestamps. Real time lives in src/node; virtual in src/sim.

export type TimerHandle = unknown;

/** A reading of the event loop's busy time (see LoadMeter.mark). */
export type LoadMark = unknown;

/**
 * How long work takes and how busy the process is, for pacing work that may
 * wait (replication sends, see SendPacer). Only real time has one: under a
 * virtual clock work takes no time, so nothing is paced and runs stay
 * reproducible.
 */
export interface LoadMeter {
  /** Monotonic milliseconds with sub-millisecond resolution. */
  elapsedMs(): number;
  mark(): LoadMark;
  /** The share (0..1) of the time since `since` that the event loop spent running tasks. */
  busyShare(since: LoadMark): number;
}

export interface Clock {
  /** Milliseconds since the epoch (wall or virtual). */
  now(): number;
  setTimeout(fn: (...args: unknown[]) => void, delayMs: number): TimerHandle;
  clearTimeout(handle: TimerHandle): void;
  /** Present on the real clock only. */
  readonly load?: LoadMeter;
}
