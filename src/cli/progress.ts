// Catch-up progress of a secondary for `zrs serve`, estimated from tids:
// how far the secondary's last tid has moved from where it started towards
// the newest tid its upstream announced (welcome, heartbeat, applied), in tid
// time. The rate is the growth of the storage file per wall second over a
// recent window; the ETA is the remaining tid time over the recent tid-time
// rate (the remaining fraction over the fraction's recent rate).
//
// Pure: samples carry their own time (`atMs`, from the caller's clock), and
// every function returns values or strings; serve.ts owns the timer, the
// wall clock and the writes.

import { tidSeconds } from '../replication/nodeStatus.js';

/** One observation of a secondary, taken at `atMs` (ms since the epoch, the caller's clock). */
export interface ProgressSample {
  atMs: number;
  /** The secondary's last (durable) tid; 8 zero bytes when its storage is empty. */
  lastTid: Buffer;
  /** The newest tid its upstream announced or sent; null until it announces one. */
  upstreamTid: Buffer | null;
  /** Size of the storage file (FileStorage.getSize()). */
  bytes: number;
  /** Transactions in the storage (FileStorage.transactionCount). */
  transactions: number;
  /** The storage's first tid when known: where an empty secondary's catch-up is measured from. */
  firstTid?: Buffer | null;
}

/** What a catch-up looks like at one sample. */
export interface ProgressFigures {
  /** Done, in tid time: (current − start) / (upstream − start), in [0, 1]. */
  fraction: number;
  /** Transactions applied since the catch-up began. */
  transactions: number;
  /** Bytes the storage grew by since the catch-up began. */
  bytes: number;
  /** Wall seconds since the catch-up began. */
  elapsedSeconds: number;
  /** Storage growth per wall second over the recent window; null without two samples apart in time. */
  bytesPerSecond: number | null;
  /** Wall seconds left at the recent rate; 0 once caught up; null when the rate is unknown or zero. */
  etaSeconds: number | null;
  /** Upstream tid time minus the secondary's, in seconds; null when either is unknown. */
  lagSeconds: number | null;
}

export interface ProgressOptions {
  /** A catch-up begins when the secondary is at least this far behind in tid time (default 1 s). */
  minLagSeconds?: number;
  /** Rates are measured over about this much wall time (default 10 000 ms). */
  windowMs?: number;
  /** Report progress at most this often (default 0: at every sample). */
  reportEveryMs?: number;
}

/** One catch-up in progress. */
export interface CatchUpState {
  /** The sample the catch-up began with (counts, bytes and elapsed time are measured from it). */
  readonly start: ProgressSample;
  /** Tid time the fraction is measured from: the start tid's, or for an empty secondary its first tid (else the first it was seen to hold). */
  readonly originSeconds: number | null;
  /** Recent samples, oldest first, the newest last. */
  readonly window: readonly ProgressSample[];
  /** When progress was last reported. */
  readonly lastReportMs: number;
}

export type ProgressEvent = { kind: 'progress'; figures: ProgressFigures } | { kind: 'caughtUp'; figures: ProgressFigures };

const DEFAULTS = { minLagSeconds: 1, windowMs: 10_000, reportEveryMs: 0 };

/**
 * The figures of a catch-up that began at `start`, whose fraction counts from
 * `originSeconds`, seen through `window` (oldest first, the newest last).
 *
 * @example progressFigures(start, tidSeconds(start.lastTid), [earlier, now]).fraction // 0.3
 */
export function progressFigures(start: ProgressSample, originSeconds: number | null, window: readonly ProgressSample[]): ProgressFigures {
  const current = window[window.length - 1] ?? start;
  const base = window[0] ?? start;
  const cur = tidSeconds(current.lastTid);
  const up = current.upstreamTid === null ? null : tidSeconds(current.upstreamTid);
  const caughtUp = current.upstreamTid !== null && Buffer.compare(current.lastTid, current.upstreamTid) >= 0;
  let fraction = 0;
  if (caughtUp) fraction = 1;
  else if (cur !== null && up !== null && originSeconds !== null && up > originSeconds) {
    fraction = Math.min(1, Math.max(0, (cur - originSeconds) / (up - originSeconds)));
  }
  const dt = (current.atMs - base.atMs) / 1000;
  const bytesPerSecond = dt > 0 ? Math.max(0, current.bytes - base.bytes) / dt : null;
  let etaSeconds: number | null = null;
  if (caughtUp) etaSeconds = 0;
  else if (dt > 0 && cur !== null && up !== null) {
    const from = tidSeconds(base.lastTid) ?? originSeconds;
    const tidRate = from === null ? 0 : (cur - from) / dt;
    if (tidRate > 0) etaSeconds = Math.max(0, up - cur) / tidRate;
  }
  return {
    fraction,
    transactions: current.transactions - start.transactions,
    bytes: current.bytes - start.bytes,
    elapsedSeconds: (current.atMs - start.atMs) / 1000,
    bytesPerSecond,
    etaSeconds,
    lagSeconds: caughtUp ? 0 : cur !== null && up !== null ? Math.max(0, up - cur) : null,
  };
}

/** Tid time of the sample's first tid, if it says. */
function firstSeconds(sample: ProgressSample): number | null {
  return sample.firstTid ? tidSeconds(sample.firstTid) : null;
}

/**
 * Advance a secondary's catch-up by one sample. A catch-up begins (and is
 * reported at once) when the secondary is at least `minLagSeconds` behind its
 * upstream in tid time (an empty secondary is always behind); it ends with one
 * `caughtUp` event when the secondary's last tid reaches the upstream's.
 * `previous`, the last sample taken while no catch-up was in progress, is
 * where a catch-up is measured from (counts, bytes, time, tid); without it,
 * the sample that begins it.
 *
 * @example
 * let state: CatchUpState | null = null;
 * ({ state, event } = stepProgress(state, sample));
 */
export function stepProgress(
  state: CatchUpState | null,
  sample: ProgressSample,
  options: ProgressOptions = {},
  previous: ProgressSample | null = null,
): { state: CatchUpState | null; event: ProgressEvent | null } {
  const o = { ...DEFAULTS, ...options };
  if (sample.upstreamTid === null) return { state, event: null };
  const behind = Buffer.compare(sample.lastTid, sample.upstreamTid) < 0;
  if (state === null) {
    if (!behind) return { state: null, event: null };
    const own = tidSeconds(sample.lastTid);
    const up = tidSeconds(sample.upstreamTid) ?? 0;
    if (own !== null && up - own < o.minLagSeconds) return { state: null, event: null };
    const start = previous !== null && previous.atMs < sample.atMs ? previous : sample;
    const originSeconds = tidSeconds(start.lastTid) ?? firstSeconds(sample);
    const window = start === sample ? [sample] : [start, sample];
    const begun: CatchUpState = { start, originSeconds, window, lastReportMs: sample.atMs };
    return { state: begun, event: { kind: 'progress', figures: progressFigures(start, originSeconds, window) } };
  }
  const originSeconds = state.originSeconds ?? firstSeconds(sample) ?? tidSeconds(sample.lastTid);
  const window = [...state.window, sample];
  // Keep the newest sample at or before the window's start, so rates span about windowMs.
  while (window.length > 2 && window[1]!.atMs <= sample.atMs - o.windowMs) window.shift();
  const figures = progressFigures(state.start, originSeconds, window);
  if (!behind) return { state: null, event: { kind: 'caughtUp', figures } };
  const report = sample.atMs - state.lastReportMs >= o.reportEveryMs;
  return {
    state: { start: state.start, originSeconds, window, lastReportMs: report ? sample.atMs : state.lastReportMs },
    event: report ? { kind: 'progress', figures } : null,
  };
}

/** The catch-up of one secondary across samples (stepProgress with its state kept). */
export class CatchUpProgress {
  private state: CatchUpState | null = null;
  private previous: ProgressSample | null = null;

  constructor(private readonly options: ProgressOptions = {}) {}

  /** Whether a catch-up is in progress. */
  get active(): boolean {
    return this.state !== null;
  }

  observe(sample: ProgressSample): ProgressEvent | null {
    const { state, event } = stepProgress(this.state, sample, this.options, this.previous);
    this.state = state;
    this.previous = state === null ? sample : null;
    return event;
  }
}

/** A percentage with one decimal, rounded down (so 99.96 % shows 99.9, not 100.0). */
export function formatPercent(fraction: number): string {
  return (Math.floor(fraction * 1000 + 1e-9) / 10).toFixed(1);
}

/** Megabytes (10^6 bytes) with one decimal. */
export function formatMegabytes(bytes: number): string {
  return (bytes / 1e6).toFixed(1);
}

/** `--` when unknown, else `45s`, `3m05s`, `2h03m`. */
export function formatEta(seconds: number | null): string {
  if (seconds === null || !Number.isFinite(seconds)) return '--';
  const s = Math.ceil(seconds);
  if (s < 60) return `${s}s`;
  const two = (n: number): string => String(n).padStart(2, '0');
  if (s < 3600) return `${Math.floor(s / 60)}m${two(s % 60)}s`;
  return `${Math.floor(s / 3600)}h${two(Math.floor((s % 3600) / 60))}m`;
}

/** `[#######-------------]`, the filled part rounded down. */
export function progressBar(fraction: number, width = 20): string {
  const filled = Math.min(width, Math.max(0, Math.floor(fraction * width + 1e-9)));
  return `[${'#'.repeat(filled)}${'-'.repeat(width - filled)}]`;
}

/**
 * The terminal line of a catching-up secondary.
 * @example renderProgressLine('replica', figures) // 'replica [######--------------]  30.0%  120 txns  2.5 MB/s  ETA 1m10s'
 */
export function renderProgressLine(name: string, f: ProgressFigures, barWidth = 20): string {
  const rate = f.bytesPerSecond === null ? '--' : formatMegabytes(f.bytesPerSecond);
  return `${name} ${progressBar(f.fraction, barWidth)} ${formatPercent(f.fraction).padStart(5)}%  ${f.transactions} txns  ${rate} MB/s  ETA ${formatEta(f.etaSeconds)}`;
}

/** The fields of the periodic `catching up` log line. */
export function progressLogFields(f: ProgressFigures): Record<string, unknown> {
  const round = (n: number, digits: number): number => Math.round(n * 10 ** digits) / 10 ** digits;
  return {
    percent: Number(formatPercent(f.fraction)),
    transactions: f.transactions,
    bytes: f.bytes,
    mbPerSecond: f.bytesPerSecond === null ? null : round(f.bytesPerSecond / 1e6, 2),
    etaSeconds: f.etaSeconds === null || !Number.isFinite(f.etaSeconds) ? null : Math.ceil(f.etaSeconds),
    lagSeconds: f.lagSeconds === null ? null : round(f.lagSeconds, 1),
    elapsedSeconds: round(f.elapsedSeconds, 1),
  };
}

/** The final line: `caught up: N transactions, X MB in Y s`. */
export function caughtUpMessage(f: ProgressFigures): string {
  return `caught up: ${f.transactions} transactions, ${formatMegabytes(f.bytes)} MB in ${f.elapsedSeconds.toFixed(1)} s`;
}

/**
 * The progress lines at the bottom of a terminal, one per catching-up
 * secondary, kept below the log lines. Every method returns what to write
 * (escape sequences included); nothing is written here. The block is drawn
 * without a final newline, so the cursor stays on its last line.
 */
export class TerminalBoard {
  private readonly lines = new Map<string, string>();
  private drawn = 0;

  /** Show (or replace) the line of `name`. */
  set(name: string, line: string): string {
    this.lines.set(name, line);
    return this.redraw();
  }

  /** Stop showing the line of `name`. */
  remove(name: string): string {
    if (!this.lines.delete(name)) return '';
    return this.redraw();
  }

  /** Write `text` (whole lines) above the progress lines. */
  around(text: string): string {
    if (this.drawn === 0) return text;
    const erase = this.erase();
    return `${erase}${text}${this.draw()}`;
  }

  /** Erase the progress lines and forget them. */
  clear(): string {
    this.lines.clear();
    return this.erase();
  }

  private redraw(): string {
    return `${this.erase()}${this.draw()}`;
  }

  /** Back to the start of the block's first line, clearing each line. */
  private erase(): string {
    const n = this.drawn;
    this.drawn = 0;
    return n === 0 ? '' : `\r\x1b[2K${'\x1b[1A\x1b[2K'.repeat(n - 1)}`;
  }

  private draw(): string {
    this.drawn = this.lines.size;
    return [...this.lines.values()].join('\n');
  }
}
