import { afterEach, describe, expect, it } from 'vitest';
import { DEFAULT_MARKING_START_PERCENT, tuneCollector } from '../../src/node/collector.js';

describe('tuneCollector', () => {
  // The setting is process-wide: give V8 back its own rule after each test.
  afterEach(() => tuneCollector(0));

  it('takes an integer percent from 0 to 99, the default in that range', () => {
    expect(Number.isInteger(DEFAULT_MARKING_START_PERCENT) && DEFAULT_MARKING_START_PERCENT > 0 && DEFAULT_MARKING_START_PERCENT < 100).toBe(true);
    for (const ok of [undefined, 0, 1, 50, 99]) expect(() => tuneCollector(ok)).not.toThrow();
  });

  it('refuses a percent out of range or not an integer, naming it', () => {
    for (const bad of [-1, 100, 150, 1.5, Number.NaN, Number.POSITIVE_INFINITY]) {
      expect(() => tuneCollector(bad)).toThrow(RangeError);
      expect(() => tuneCollector(bad)).toThrow(`got ${String(bad)}`);
    }
  });
});
