// Tid helpers the machines use for ordering assertions and handshake checks.

import { describe, expect, it } from 'vitest';
import { assertTidAfter, compareTids, isWellFormedTid, tidHex } from '../../machines/tid.js';
import { tid } from './helpers.js';

describe('tid helpers', () => {
  it('compares bytewise, big-endian', () => {
    const high = new Uint8Array([0, 0, 0, 1, 0, 0, 0, 0]);
    expect(compareTids(tid(1), tid(2))).toBeLessThan(0);
    expect(compareTids(high, tid(255))).toBeGreaterThan(0);
    expect(compareTids(tid(7), tid(7))).toBe(0);
  });

  it('accepts Buffers, which are Uint8Arrays', () => {
    expect(compareTids(Buffer.from('0000000000000002', 'hex'), tid(2))).toBe(0);
  });

  it('checks length and formats hex', () => {
    expect(isWellFormedTid(tid(1))).toBe(true);
    expect(isWellFormedTid(new Uint8Array(9))).toBe(false);
    expect(tidHex(tid(10))).toBe('000000000000000a');
    expect(tidHex(null)).toBe('none');
  });

  it('asserts strict increase', () => {
    expect(() => assertTidAfter('x', null, tid(1))).not.toThrow();
    expect(() => assertTidAfter('x', tid(1), tid(2))).not.toThrow();
    expect(() => assertTidAfter('x', tid(2), tid(2))).toThrow('bug: x tid 0000000000000002 does not follow 0000000000000002');
  });
});
