// The catch-up progress of `zrs serve` (src/cli/progress.ts): figures from
// samples, the catch-up episodes, the rendered terminal line, log fields and
// the terminal board's escape sequences. Samples carry their own time: no
// timers, no wall clock. Tids sit on whole minutes, so tid times are exact.

import { describe, expect, it } from 'vitest';
import {
  CatchUpProgress,
  TerminalBoard,
  caughtUpMessage,
  formatEta,
  formatPercent,
  progressBar,
  progressFigures,
  progressLogFields,
  renderProgressLine,
  stepProgress,
  type CatchUpState,
  type ProgressFigures,
  type ProgressSample,
} from '../../src/cli/progress.js';
import { tidSeconds } from '../../src/replication/nodeStatus.js';
import { tidFromTime, Z64 } from '../../src/storage/timestamp.js';

const T0 = Date.UTC(2024, 0, 16, 12, 0, 0);
/** The tid `minutes` after 2024-01-16 12:00 UTC. */
const tidAt = (minutes: number): Buffer => tidFromTime(T0 + minutes * 60_000);

function sample(atMs: number, minutes: number | null, upstreamMinutes: number | null, bytes: number, transactions: number): ProgressSample {
  return {
    atMs,
    lastTid: minutes === null ? Z64 : tidAt(minutes),
    upstreamTid: upstreamMinutes === null ? null : tidAt(upstreamMinutes),
    bytes,
    transactions,
  };
}

const figures = (over: Partial<ProgressFigures> = {}): ProgressFigures => ({
  fraction: 0.3,
  transactions: 120,
  bytes: 12_500_000,
  elapsedSeconds: 5,
  bytesPerSecond: 2_500_000,
  etaSeconds: 70,
  lagSeconds: 4200,
  ...over,
});

describe('progressFigures', () => {
  it('measures the fraction in tid time, the rate in bytes per wall second, the ETA from the recent tid-time rate', () => {
    const start = sample(1_000_000, 0, 100, 4_000_000, 1000);
    const base = sample(1_005_000, 20, 100, 10_000_000, 1080);
    const now = sample(1_010_000, 30, 100, 22_500_000, 1120);
    const f = progressFigures(start, tidSeconds(start.lastTid), [base, now]);
    expect(f).toEqual({
      fraction: 0.3, // 30 of 100 minutes
      transactions: 120,
      bytes: 18_500_000,
      elapsedSeconds: 10,
      bytesPerSecond: 2_500_000, // 12.5 MB in 5 s
      etaSeconds: 35, // 70 tid-minutes left at 10 tid-minutes per 5 s
      lagSeconds: 4200,
    });
  });

  it('counts the fraction against the upstream as it moves on', () => {
    const start = sample(0, 0, 100, 0, 0);
    const f = progressFigures(start, tidSeconds(start.lastTid), [start, sample(2000, 50, 200, 1000, 10)]);
    expect(f.fraction).toBe(0.25);
    expect(f.etaSeconds).toBe(6); // 150 tid-minutes left at 50 per 2 s
  });

  it('has no rate or ETA from a single sample', () => {
    const start = sample(0, 10, 60, 100, 5);
    const f = progressFigures(start, tidSeconds(start.lastTid), [start]);
    expect(f.bytesPerSecond).toBeNull();
    expect(f.etaSeconds).toBeNull();
    expect(f.fraction).toBe(0);
    expect(f.lagSeconds).toBe(3000);
  });

  it('has no ETA while the tid does not move', () => {
    const a = sample(0, 10, 60, 100, 5);
    const f = progressFigures(a, tidSeconds(a.lastTid), [a, sample(3000, 10, 60, 100, 5)]);
    expect(f.bytesPerSecond).toBe(0);
    expect(f.etaSeconds).toBeNull();
  });

  it('is whole, with no ETA left, once caught up', () => {
    const a = sample(0, 10, 60, 0, 0);
    const f = progressFigures(a, tidSeconds(a.lastTid), [a, sample(4000, 60, 60, 8_000_000, 40)]);
    expect(f).toEqual({ fraction: 1, transactions: 40, bytes: 8_000_000, elapsedSeconds: 4, bytesPerSecond: 2_000_000, etaSeconds: 0, lagSeconds: 0 });
  });
});

describe('stepProgress', () => {
  it('does nothing until the upstream announces a tid, nor when the secondary is not behind enough', () => {
    expect(stepProgress(null, sample(0, 10, null, 0, 0))).toEqual({ state: null, event: null });
    expect(stepProgress(null, sample(0, 10, 10, 0, 0))).toEqual({ state: null, event: null });
    // Half a minute behind: under a minimum lag of 60 s.
    const halfMinute = { ...sample(0, 10, null, 0, 0), upstreamTid: tidFromTime(T0 + 10 * 60_000 + 30_000) };
    expect(stepProgress(null, halfMinute, { minLagSeconds: 60 })).toEqual({ state: null, event: null });
    // "At least" the minimum: exactly that far behind is a catch-up.
    expect(stepProgress(null, halfMinute, { minLagSeconds: tidSeconds(halfMinute.upstreamTid)! - tidSeconds(halfMinute.lastTid)! }).event?.kind).toBe('progress');
  });

  it('begins a catch-up, reports it at once, then at most every reportEveryMs, and ends with caughtUp', () => {
    const options = { reportEveryMs: 10_000, windowMs: 10_000 };
    let state: CatchUpState | null = null;
    const events: Array<[string, number, number | null] | null> = [];
    const feed = (s: ProgressSample): void => {
      const r = stepProgress(state, s, options);
      state = r.state;
      events.push(r.event && [r.event.kind, r.event.figures.fraction, r.event.figures.etaSeconds]);
    };
    feed(sample(0, 0, 100, 1000, 10));
    feed(sample(5_000, 10, 100, 2000, 20));
    feed(sample(10_000, 20, 100, 3000, 30));
    feed(sample(15_000, 30, 100, 4000, 40));
    feed(sample(20_000, 100, 100, 11_000, 110));
    expect(events).toEqual([
      ['progress', 0, null],
      null,
      ['progress', 0.2, 40], // 80 tid-minutes left at 20 per 10 s
      null,
      ['caughtUp', 1, 0],
    ]);
    expect(state).toBeNull();
  });

  it('keeps the window to about windowMs, so the rate is recent', () => {
    let state: CatchUpState | null = null;
    const at = (s: ProgressSample): ProgressFigures | null => {
      const r = stepProgress(state, s, { windowMs: 2000 });
      state = r.state;
      return r.event?.figures ?? null;
    };
    at(sample(0, 0, 100, 0, 0));
    at(sample(1000, 1, 100, 1_000_000, 1));
    at(sample(2000, 2, 100, 2_000_000, 2));
    // A burst: 10 MB in the last second; the window (from 1000 ms) sees 11 MB in 2 s.
    const f = at(sample(3000, 12, 100, 12_000_000, 12))!;
    expect(state!.window.map((s) => s.atMs)).toEqual([1000, 2000, 3000]);
    expect(f.bytesPerSecond).toBe(5_500_000);
    expect(f.etaSeconds).toBe(16); // 88 tid-minutes left at 11 per 2 s
    expect(f.bytes).toBe(12_000_000);
    expect(f.elapsedSeconds).toBe(3);
  });

  it('measures an empty secondary from the first tid it applies', () => {
    let state: CatchUpState | null = null;
    let r = stepProgress(state, sample(0, null, 100, 4, 0));
    state = r.state;
    expect(r.event).toEqual({
      kind: 'progress',
      figures: { fraction: 0, transactions: 0, bytes: 0, elapsedSeconds: 0, bytesPerSecond: null, etaSeconds: null, lagSeconds: null },
    });
    r = stepProgress(state, sample(1000, 0, 100, 1004, 1));
    state = r.state;
    expect(state!.originSeconds).toBe(tidSeconds(tidAt(0)));
    expect(r.event?.figures.fraction).toBe(0);
    r = stepProgress(state, sample(2000, 25, 100, 5004, 50));
    expect(r.event?.figures.fraction).toBe(0.25);
    expect(r.event?.figures.etaSeconds).toBe(6); // 75 left at 25 per 2 s (from the origin)
  });

  it('measures a catch-up from the last sample before it began, and an empty secondary from its first tid', () => {
    const previous = sample(0, null, null, 4, 0); // opened empty, not connected yet
    const r = stepProgress(null, { ...sample(2000, 35, 100, 7_000_004, 35), firstTid: tidAt(0) }, {}, previous);
    expect(r.state!.start).toBe(previous);
    expect(r.state!.originSeconds).toBe(tidSeconds(tidAt(0)));
    expect(r.event).toEqual({
      kind: 'progress',
      figures: { fraction: 0.35, transactions: 35, bytes: 7_000_000, elapsedSeconds: 2, bytesPerSecond: 3_500_000, etaSeconds: 65 / 17.5, lagSeconds: 3900 },
    });
    // CatchUpProgress passes the last idle sample along.
    const p = new CatchUpProgress();
    expect(p.observe(previous)).toBeNull();
    expect(p.observe({ ...sample(2000, 35, 100, 7_000_004, 35), firstTid: tidAt(0) })).toEqual(r.event);
  });

  it('begins a new catch-up after falling behind again', () => {
    const p = new CatchUpProgress();
    expect(p.observe(sample(0, 0, 10, 0, 0))?.kind).toBe('progress');
    expect(p.active).toBe(true);
    expect(p.observe(sample(1000, 10, 10, 500, 5))?.kind).toBe('caughtUp');
    expect(p.active).toBe(false);
    expect(p.observe(sample(2000, 10, 10, 500, 5))).toBeNull();
    const again = p.observe(sample(3000, 10, 30, 500, 5));
    expect(again?.kind).toBe('progress');
    expect(again?.figures.transactions).toBe(0);
    const done = p.observe(sample(5000, 30, 30, 1500, 9));
    expect(done).toEqual({
      kind: 'caughtUp',
      // Measured from the last sample before falling behind (at 2000 ms).
      figures: { fraction: 1, transactions: 4, bytes: 1000, elapsedSeconds: 3, bytesPerSecond: 1000 / 3, etaSeconds: 0, lagSeconds: 0 },
    });
  });
});

describe('rendering', () => {
  it('formats percentages rounded down, megabytes, ETAs and bars', () => {
    expect(formatPercent(0.3)).toBe('30.0');
    expect(formatPercent(0.9996)).toBe('99.9');
    expect(formatPercent(1)).toBe('100.0');
    expect(formatPercent(0.12345)).toBe('12.3');
    expect(formatEta(null)).toBe('--');
    expect(formatEta(Infinity)).toBe('--');
    expect(formatEta(0)).toBe('0s');
    expect(formatEta(44.2)).toBe('45s');
    expect(formatEta(185)).toBe('3m05s');
    expect(formatEta(7380)).toBe('2h03m');
    expect(progressBar(0.3)).toBe('[######--------------]');
    expect(progressBar(0.999)).toBe('[###################-]');
    expect(progressBar(1, 4)).toBe('[####]');
    expect(progressBar(0, 4)).toBe('[----]');
  });

  it('renders the terminal line', () => {
    expect(renderProgressLine('replica', figures())).toBe('replica [######--------------]  30.0%  120 txns  2.5 MB/s  ETA 1m10s');
    expect(renderProgressLine('r2', figures({ fraction: 0.05, transactions: 0, bytesPerSecond: null, etaSeconds: null }), 10)).toBe(
      'r2 [----------]   5.0%  0 txns  -- MB/s  ETA --',
    );
  });

  it('gives the log fields and the final line', () => {
    expect(progressLogFields(figures({ bytesPerSecond: 2_345_678, etaSeconds: 69.2, lagSeconds: 4200.04 }))).toEqual({
      percent: 30,
      transactions: 120,
      bytes: 12_500_000,
      mbPerSecond: 2.35,
      etaSeconds: 70,
      lagSeconds: 4200,
      elapsedSeconds: 5,
    });
    expect(progressLogFields(figures({ bytesPerSecond: null, etaSeconds: null, lagSeconds: null }))).toMatchObject({ mbPerSecond: null, etaSeconds: null, lagSeconds: null });
    expect(caughtUpMessage(figures({ transactions: 1234, bytes: 56_789_000, elapsedSeconds: 89.04 }))).toBe('caught up: 1234 transactions, 56.8 MB in 89.0 s');
  });
});

describe('TerminalBoard', () => {
  it('draws one line per secondary below the logs and erases them', () => {
    const b = new TerminalBoard();
    expect(b.around('log 1\n')).toBe('log 1\n');
    expect(b.set('a', 'A 10%')).toBe('A 10%');
    expect(b.set('a', 'A 20%')).toBe('\r\x1b[2KA 20%');
    expect(b.set('b', 'B 5%')).toBe('\r\x1b[2KA 20%\nB 5%');
    expect(b.around('log 2\n')).toBe('\r\x1b[2K\x1b[1A\x1b[2Klog 2\nA 20%\nB 5%');
    expect(b.remove('a')).toBe('\r\x1b[2K\x1b[1A\x1b[2KB 5%');
    expect(b.remove('a')).toBe('');
    expect(b.remove('b')).toBe('\r\x1b[2K');
    expect(b.around('log 3\n')).toBe('log 3\n');
    b.set('c', 'C');
    expect(b.clear()).toBe('\r\x1b[2K');
    expect(b.around('log 4\n')).toBe('log 4\n');
  });
});
