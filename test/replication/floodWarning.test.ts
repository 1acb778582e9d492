// FloodWarning: the first event of a flood at once, then one line an
// interval with the count; at close the line held back goes out, and an
// event after close (a connection still ending) is said at once, with no
// timer left behind.

import { describe, expect, it } from 'vitest';
import { FloodWarning } from '../../src/replication/log.js';
import { VirtualClock } from '../../src/sim/clock.js';

describe('FloodWarning', () => {
  it('says the first at once, counts the rest for an interval, and leaves nothing on the clock once closed', () => {
    const clock = new VirtualClock();
    const lines: string[] = [];
    const warning = new FloodWarning(clock, 10_000, (count, last) => void lines.push(`${count} ${last}`));
    warning.note('a');
    warning.note('b');
    warning.note('c');
    expect(lines).toEqual(['1 a']);
    expect(clock.pendingTimers).toBe(1);
    clock.advance(10_000);
    expect(lines).toEqual(['1 a', '2 c']);
    warning.note('d');
    warning.close();
    expect(lines).toEqual(['1 a', '2 c', '1 d']);
    expect(clock.pendingTimers).toBe(0);
    // A late event, after close: said at once, nothing armed.
    warning.note('e');
    warning.note('f');
    expect(lines).toEqual(['1 a', '2 c', '1 d', '1 e', '1 f']);
    expect(clock.pendingTimers).toBe(0);
  });
});
