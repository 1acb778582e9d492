// The real clock's timers: delays past Node's limit (2^31 - 1 ms, about 24.8
// days) wait their whole time instead of firing at once.

import { afterEach, describe, expect, it, vi } from 'vitest';
import { MAX_TIMER_MS, systemClock } from '../../src/node/clock.js';

const DAY_MS = 86_400_000;

afterEach(() => {
  vi.useRealTimers();
});

describe('systemClock.setTimeout', () => {
  it('waits 30 days for a 30-day delay, and such a timer can be cleared', () => {
    vi.useFakeTimers();
    const fired: string[] = [];
    systemClock.setTimeout(() => fired.push('long'), 30 * DAY_MS);
    const cleared = systemClock.setTimeout(() => fired.push('cleared'), 60 * DAY_MS);
    systemClock.setTimeout(() => fired.push('limit'), MAX_TIMER_MS);
    vi.advanceTimersByTime(1000);
    expect(fired).toEqual([]);
    vi.advanceTimersByTime(29 * DAY_MS);
    expect(fired).toEqual(['limit']);
    vi.advanceTimersByTime(DAY_MS);
    expect(fired).toEqual(['limit', 'long']);
    vi.advanceTimersByTime(20 * DAY_MS); // past its first step: the cleared one is re-armed by now
    systemClock.clearTimeout(cleared);
    vi.advanceTimersByTime(40 * DAY_MS);
    expect(fired).toEqual(['limit', 'long']);
  });
});
