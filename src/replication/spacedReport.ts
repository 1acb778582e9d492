// The newest of a growing value (a tid), passed on at most once per
// interval: at once when the last one went out at least that long ago,
// else when the interval has passed, then with whatever is newest by then.
// A secondary uses it for what it tells its connection machine about
// applied transactions, which would otherwise cost a machine transition per
// transaction at high rates.

import type { Clock, TimerHandle } from '../ports/clock.js';

export class SpacedReport {
  private sent: Buffer;
  private newest: Buffer;
  private sentAtMs = Number.NEGATIVE_INFINITY;
  private timer: TimerHandle | null = null;

  /**
   * @param initial the value the receiver already has (never sent again).
   * @param send called with each value passed on, strictly newer each time.
   */
  constructor(
    private readonly clock: Clock,
    private readonly intervalMs: number,
    initial: Buffer,
    private readonly send: (value: Buffer) => void,
  ) {
    this.sent = initial;
    this.newest = initial;
  }

  /** Pass on `value` now or once the interval allows; `now`: at once, whatever the interval. */
  note(value: Buffer, now = false): void {
    this.newest = value;
    if (value.equals(this.sent)) return this.cancel();
    // Monotonic where there is such a clock: a wall clock stepped back must not defer a report for the step's length.
    const at = this.clock.load?.elapsedMs() ?? this.clock.now();
    const wait = now ? 0 : this.sentAtMs + this.intervalMs - at;
    if (wait > 0) {
      this.timer ??= this.clock.setTimeout(() => {
        this.timer = null;
        this.note(this.newest);
      }, wait);
      return;
    }
    this.cancel();
    this.sent = value;
    this.sentAtMs = at;
    this.send(value);
  }

  /** Drop a deferred pass: nothing is sent unless noted again. */
  cancel(): void {
    if (this.timer !== null) this.clock.clearTimeout(this.timer);
    this.timer = null;
  }
}
