// Keeps replication sends from taking the event loop from a node's own work.
// Every send step (a live tick, a catch-up window) is synchronous and timed.
// While the loop is busy (over consecutive windows, the node's own work
// moves on, the loop hardly idles, and other work such as committers takes
// a good part of it), steps are spaced so that together they take at most
// `share` of the loop: a step that cost 0.5 ms with a share of 0.1 lets the
// next one start no sooner than 5 ms after it started. A loop that is not
// busy with other work sends without waiting, so catch-up on an otherwise
// idle primary runs at full speed. Secondaries that cannot keep up then
// fall further behind instead of slowing commits: a slow secondary never
// slows the primary.
//
// Sends can hide the load they cause: when they fill the loop, the work
// they starve takes little of it, and a loop full of sends with a little
// progress looks like a catch-up beside a trickle of commits. Only pacing
// tells the two apart, so a loop that stays saturated (progress, hardly any
// idle time) is paced for one window as a probe: starved work then fills
// the loop and pacing stays; a trickle leaves it idle and pacing stops, the
// next probe waiting twice as long (a catch-up beside a trickle keeps
// nearly all its speed).
//
// Only the real clock has a load meter; under a virtual clock steps cost
// nothing and nothing waits, so simulations stay reproducible.

import type { Clock, LoadMark } from '../ports/clock.js';
import { ZrsError } from '../errors.js';

/** The share of a busy event loop that replication sends may take. */
export const DEFAULT_SEND_SHARE = 0.1;
/** The loop counts as busy when it idled less than this share of a window... */
const IDLE_BELOW = 0.2;
/** ...and work other than sending took at least this share of it. */
const OTHER_FROM = 0.25;
/** The loop's load is judged over windows of this length. */
const WINDOW_MS = 20;
/**
 * Steps are spaced only once this many windows in a row were busy: a single
 * busy window (a garbage collection, a burst of commits) is not a loop
 * that sending would starve, and pacing through it only delays the
 * secondaries.
 */
const BUSY_WINDOWS = 2;
/** Saturated windows in a row before the first probe (see the top of the file)... */
const PROBE_AFTER_WINDOWS = 4;
/** ...and the most before any later one (about 1.3 s). */
const PROBE_AFTER_MAX_WINDOWS = 64;

export class SendPacer {
  /** Meter time before which the next step should not start. */
  private nextAt = 0;
  private busy = false;
  /** Busy windows in a row, up to now. */
  private busyWindows = 0;
  /** Saturated windows in a row since the last probe (or the last window that was not). */
  private saturatedWindows = 0;
  /** The node's own work moved on in one of them (without that, a saturated loop is sending only: a catch-up on an idle node). */
  private progressedInStretch = false;
  /** Saturated windows in a row that start the next probe: doubles after each probe that found no starved work. */
  private probeAfter = PROBE_AFTER_WINDOWS;
  /** The current window is a probe: paced because sends may be hiding the load. */
  private probing = false;
  private windowMark: LoadMark = null;
  private windowStart = 0;
  /** Time spent in steps since windowStart. */
  private sentInWindow = 0;

  /** The node's own progress as of the window's start (see `progress`). */
  private windowProgress: unknown;

  /**
   * `progress`: a reading that changes when the node's own work moves on (a
   * storage's durable end: commits on a primary, applied transactions on a
   * secondary). A window without progress is never busy: a catch-up that
   * fills an otherwise quiet loop goes at full speed.
   */
  constructor(
    private readonly clock: Clock,
    private readonly share = DEFAULT_SEND_SHARE,
    private readonly progress: () => unknown = () => null,
  ) {
    if (!(share > 0 && share <= 1)) throw new ZrsError(`sendShare must be in (0, 1], got ${share}`);
    const load = clock.load;
    if (load) {
      this.windowMark = load.mark();
      this.windowStart = load.elapsedMs();
      this.windowProgress = progress();
    }
  }

  /** Whether other work kept the loop busy over the last windows. */
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
      // Sessions waiting for the same moment wake together: each asks again,
      // and waits anew when one that woke first has taken the turn.
      const wake = (): void => {
        const again = this.delayMs();
        if (again > 0) timer = this.clock.setTimeout(wake, again);
        else done();
      };
      let timer = this.clock.setTimeout(wake, ms);
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
    // Busy: the node's own work moved on, the loop hardly idled (saturated),
    // and not only because of sending. (Work done for sends outside the timed
    // steps, such as socket writes the kernel could not take at once, shows up
    // as other work: without progress of its own the node is not held back by
    // it.) A saturated loop that is not busy may be one whose sends starve the
    // rest: see the probe at the top of the file.
    const active = load.busyShare(this.windowMark) * elapsed;
    const progress = this.progress();
    const saturated = elapsed - active < IDLE_BELOW * elapsed;
    const progressed = progress !== this.windowProgress;
    const busyWindow = saturated && progressed && active - this.sentInWindow >= OTHER_FROM * elapsed;
    this.busyWindows = busyWindow ? this.busyWindows + 1 : 0;
    this.saturatedWindows = saturated ? this.saturatedWindows + 1 : 0;
    this.progressedInStretch = saturated && (this.progressedInStretch || progressed);
    if (this.probing) {
      // Paced, did other work fill the loop? Then it was starved: stay paced. If not, probe later next time.
      this.probing = false;
      if (busyWindow) this.busyWindows = BUSY_WINDOWS;
      else this.probeAfter = Math.min(2 * this.probeAfter, PROBE_AFTER_MAX_WINDOWS);
    } else if (!saturated) this.probeAfter = PROBE_AFTER_WINDOWS; // the saturation, if any, ended
    this.busy = this.busyWindows >= BUSY_WINDOWS;
    if (!this.busy && this.progressedInStretch && this.saturatedWindows >= this.probeAfter) {
      this.busy = this.probing = true;
      this.saturatedWindows = 0;
    }
    this.windowProgress = progress;
    this.windowMark = load.mark();
    this.windowStart = now;
    this.sentInWindow = 0;
  }
}
