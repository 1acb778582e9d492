// Keeps replication sends from taking the event loop from a node's own work.
// Every send step (a live tick, a catch-up window) is synchronous and timed.
// While other work (committers, the application) keeps the loop busy, steps
// are spaced so that together they take at most `share` of the loop: a step
// that cost 0.5 ms with a share of 0.1 lets the next one start no sooner than
// 5 ms after it started. A loop that is not busy with other work sends
// without waiting, so catch-up on an otherwise idle primary runs at full
// speed. Secondaries that cannot keep up then fall further behind instead of
// slowing commits: a slow secondary never slows the primary.
//
// Only the real clock has a load meter; under a virtual clock steps cost
// nothing and nothing waits, so simulations stay reproducible.

import type { Clock, LoadMark } from '../ports/clock.js';

/** The share of a busy event loop that replication sends may take. */
export const DEFAULT_SEND_SHARE = 0.1;
/** Other work above this share of the time not spent sending counts as busy. */
const BUSY_FROM = 0.5;
/** The loop's load is judged over windows of this length. */
const WINDOW_MS = 20;

export class SendPacer {
  /** Meter time before which the next step should not start. */
  private nextAt = 0;
  private busy = false;
  private windowMark: LoadMark = null;
  private windowStart = 0;
  /** Time spent in steps since windowStart. */
  private sentInWindow = 0;

  constructor(
    private readonly clock: Clock,
    private readonly share = DEFAULT_SEND_SHARE,
  ) {
    if (!(share > 0 && share <= 1)) throw new RangeError(`sendShare must be in (0, 1], got ${share}`);
    const load = clock.load;
    if (load) {
      this.windowMark = load.mark();
      this.windowStart = load.elapsedMs();
    }
  }

  /** Whether other work kept the loop busy over the last window. */
  get loopBusy(): boolean {
    return this.busy;
  }

  /** Milliseconds the next step should wait; 0 when it may run now. */
  delayMs(): number {
    const load = this.clock.load;
    if (!load) return 0;
    const now = load.elapsedMs();
    this.judge(now);
    return this.busy ? Math.max(0, this.nextAt - now) : 0;
  }

  /** Resolves when the next step may run (at once when it may, or when `signal` aborts). */
  turn(signal?: AbortSignal): Promise<void> {
    const ms = this.delayMs();
    if (ms <= 0 || signal?.aborted) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const done = (): void => {
        this.clock.clearTimeout(timer);
        signal?.removeEventListener('abort', done);
        resolve();
      };
      const timer = this.clock.setTimeout(done, ms);
      signal?.addEventListener('abort', done, { once: true });
    });
  }

  /** Run one synchronous send step and account for what it cost. */
  step<T>(work: () => T): T {
    const load = this.clock.load;
    if (!load) return work();
    const start = load.elapsedMs();
    try {
      return work();
    } finally {
      const end = load.elapsedMs();
      const cost = end - start;
      this.sentInWindow += cost;
      // Steps that start late do not bank the time they waited; an idle loop banks nothing.
      this.nextAt = (this.busy ? Math.max(this.nextAt, start) : start) + cost / this.share;
    }
  }

  /** Close the load window when it is long enough: was the loop busy with other work? */
  private judge(now: number): void {
    const load = this.clock.load!;
    const elapsed = now - this.windowStart;
    if (elapsed < WINDOW_MS) return;
    // Busy: other work filled most of the time the loop was not sending.
    const other = load.busyShare(this.windowMark) * elapsed - this.sentInWindow;
    this.busy = other >= BUSY_FROM * (elapsed - this.sentInWindow);
    this.windowMark = load.mark();
    this.windowStart = now;
    this.sentInWindow = 0;
  }
}
