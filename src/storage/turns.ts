// Long passes over a file (a pack's) run on the event loop of a node that
// goes on committing and replicating meanwhile. Their reads are
// mostly served from a window already in memory, which resolves without
// letting timers and I/O in: megabytes of transactions would be processed
// in one go. A pass lets the event loop turn every so many bytes instead.
// Counted in bytes, not time, so that runs stay reproducible.

/** Bytes of a pass between two turns of the event loop (a few milliseconds of work). */
export const PASS_TURN_BYTES = 256 * 1024;

/** One turn of the event loop: timers and I/O that are due run before it resolves. */
export function turn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** Where a pass over a file lets the event loop turn. */
export class PassTurns {
  private last = -1;

  constructor(private readonly every = PASS_TURN_BYTES) {}

  /**
   * A turn of the event loop once the pass is `every` bytes past the last
   * one (a pass that starts over, at a lower position, counts from there),
   * or null: nothing to wait for.
   *
   * @example
   * const turn = turns.at(pos);
   * if (turn) await turn;
   */
  at(pos: number): Promise<void> | null {
    if (this.last < 0 || pos < this.last) this.last = pos;
    if (pos - this.last < this.every) return null;
    this.last = pos;
    return turn();
  }
}
