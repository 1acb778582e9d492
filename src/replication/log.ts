// Structured log lines: one JSON object per line by default, so operators
// can ship them; tests pass a collector instead.

import type { Clock, TimerHandle } from '../ports/clock.js';
import type { TailCut } from '../storage/FileStorage.js';
import type { SessionLog } from './primarySession.js';

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

export interface Logger {
  (level: LogLevel | 'info' | 'warn' | 'error', message: string, fields?: Record<string, unknown>): void;
}

/** A logger writing JSON lines to stderr, tagged with a node name. */
export function jsonLogger(node: string, write: (line: string) => void = (l) => process.stderr.write(l)): Logger {
  return (level, message, fields) => {
    write(`${JSON.stringify({ time: new Date().toISOString(), level, node, message, ...fields })}\n`);
  };
}

/** A logger that drops everything (the library default when none is given). */
export const silentLogger: Logger = () => undefined;

/** What opening a storage repaired and says so (see logOpenRepairs). */
export interface OpenRepairs {
  path: string;
  tailCutOnOpen: TailCut | null;
  stalePackRemovedOnOpen?: number | null;
  blobs: { root: string; staleStagingRemoved: { files: number; bytes: number } | null } | null;
}

/**
 * Say what opening a storage repaired: a warning when it cut its last
 * transaction off (unfinished or damaged), naming why and where its bytes
 * are kept; a line when it removed blob staging files no transaction uses,
 * or the output of a pack stopped before its end.
 */
export function logOpenRepairs(log: Logger, storage: OpenRepairs): void {
  const cut = storage.tailCutOnOpen;
  if (cut !== null) {
    const what =
      cut.bytesAfter > 0
        ? `the transaction at position ${cut.position} and the ${cut.bytesAfter} bytes after it (${cut.bytes} bytes, to the end of the file) were cut off`
        : `the last transaction (${cut.bytes} bytes at the end) was cut off`;
    log('warn', `${storage.path}: ${what} and kept in ${cut.keptIn}: ${cut.reason}; a crash during its commit leaves it so, and so would damage to it`, {
      position: cut.position,
      bytes: cut.bytes,
      bytesAfter: cut.bytesAfter,
      keptIn: cut.keptIn,
      reason: cut.reason,
    });
  }
  if (storage.stalePackRemovedOnOpen != null) {
    log('info', `${storage.path}: removed ${storage.path}.pack (${storage.stalePackRemovedOnOpen} bytes), the unfinished output of a pack stopped before its end (the data file is as before that pack)`, {
      bytes: storage.stalePackRemovedOnOpen,
    });
  }
  const blobs = storage.blobs;
  const staging = blobs?.staleStagingRemoved;
  if (blobs && staging && staging.files > 0) {
    log('info', `${blobs.root}: removed ${staging.files} blob staging file(s) (${staging.bytes} bytes) from tmp/ that no transaction was using: left by a process stopped in the middle of a commit or of receiving blobs`, {
      files: staging.files,
      bytes: staging.bytes,
    });
  }
}

/** At most one line this often about events that come in a flood (see FloodWarning). */
export const FLOOD_LOG_INTERVAL_MS = 10_000;

/**
 * A warning about events that may come in a flood (connections turned away,
 * TLS handshakes refused): the first goes out at once, then at most one line
 * every `intervalMs`, saying how many came meanwhile and the last one's
 * detail. `line(count, last, fields)` words it (`fields`: the last one's).
 */
export class FloodWarning {
  private count = 0;
  private last = '';
  private lastFields: Record<string, unknown> | undefined;
  private loggedAtMs = Number.NEGATIVE_INFINITY;
  private timer: TimerHandle | null = null;

  constructor(
    private readonly clock: Clock,
    private readonly intervalMs: number,
    private readonly line: (count: number, last: string, fields?: Record<string, unknown>) => void,
  ) {}

  note(detail: string, fields?: Record<string, unknown>): void {
    // After close (an event of a connection still ending then), a line at once: no timer outlives the closing.
    if (this.closed) return this.line(1, detail, fields);
    this.count += 1;
    this.last = detail;
    this.lastFields = fields;
    this.flush();
  }

  /** The thing warned about is closing: a line still waiting for its interval goes out now, and later ones at once. */
  close(): void {
    this.closed = true;
    if (this.timer !== null) this.clock.clearTimeout(this.timer);
    this.timer = null;
    if (this.count > 0) this.line(this.count, this.last, this.lastFields);
    this.count = 0;
  }

  private closed = false;

  private flush(): void {
    if (this.count === 0 || this.timer !== null) return;
    // Monotonic where there is such a clock: a wall clock stepped back must not hold the next line back.
    const now = this.clock.load?.elapsedMs() ?? this.clock.now();
    const waitMs = this.loggedAtMs + this.intervalMs - now;
    if (waitMs > 0) {
      this.timer = this.clock.setTimeout(() => {
        this.timer = null;
        this.flush();
      }, waitMs);
      return;
    }
    this.line(this.count, this.last, this.lastFields);
    this.count = 0;
    this.loggedAtMs = now;
  }
}

/**
 * The first `burst` events of each window of `intervalMs`: a window starts
 * with the first event once the last one is over (or once a clock stepped
 * back before its start).
 */
export class BurstWindow {
  private startMs = Number.NEGATIVE_INFINITY;
  private taken = 0;

  constructor(
    private readonly burst: number,
    private readonly intervalMs: number,
  ) {}

  /** Whether an event at `nowMs` is within the burst. */
  take(nowMs: number): boolean {
    if (nowMs - this.startMs >= this.intervalMs || nowMs < this.startMs) {
      this.startMs = nowMs;
      this.taken = 0;
    }
    return ++this.taken <= this.burst;
  }
}

/** Connections logged line by line in each FLOOD_LOG_INTERVAL_MS by default (see ConnectionLogGate). */
export const DEFAULT_CONNECTION_LOG_BURST = 50;

/**
 * Keeps a stream of short connections to a replication address (a port
 * scanner, a client retrying in a tight loop, a monitor polling too often)
 * from flooding the log, while a secondary is never hidden. The first
 * `burst` connections of each interval log every line as now. A connection
 * past them is quiet: its lines are held back until it identifies itself
 * (streaming to a secondary starts, a replication node is refused, a
 * promote request); if it does, its `connection from` line goes out then and
 * every later line as usual; if it ends without, it is only counted (the
 * first at once, then at most one line per interval, naming the last one's
 * last line). Errors always go out.
 */
export class ConnectionLogGate {
  private readonly window: BurstWindow;
  private readonly quiet: FloodWarning;

  constructor(
    private readonly clock: Clock,
    private readonly log: SessionLog,
    burst = DEFAULT_CONNECTION_LOG_BURST,
    intervalMs = FLOOD_LOG_INTERVAL_MS,
  ) {
    this.window = new BurstWindow(burst, intervalMs);
    this.quiet = new FloodWarning(clock, intervalMs, (count, last) =>
      log('info', `${count} more connection(s) not logged line by line (past ${burst} in ${intervalMs / 1000} s); the last: ${last}`, { count }),
    );
  }

  /**
   * A new connection from `peer`: logs its `connection from` line (or holds
   * it back) and returns its logger, `identified()` to call once it is more
   * than a passing connection, and `ended()` to call when it ends.
   */
  open(peer: string): { log: SessionLog; identified(): void; ended(): void } {
    const first = `connection from ${peer}`;
    if (this.window.take(this.clock.load?.elapsedMs() ?? this.clock.now())) {
      this.log('info', first);
      return { log: this.log, identified: () => undefined, ended: () => undefined };
    }
    let held = true;
    let last = first;
    const log: SessionLog = (level, message, fields) => {
      if (held && level !== 'error') last = message;
      else this.log(level, message, fields);
    };
    return {
      log,
      identified: () => {
        if (!held) return;
        held = false;
        this.log('info', first, { heldBack: true });
      },
      ended: () => {
        if (held) this.quiet.note(last);
        held = false;
      },
    };
  }

  /** Closing: a count still waiting for its interval goes out now. */
  close(): void {
    this.quiet.close();
  }
}
