// The references pack's garbage collection follows, found in records
// CPython pickled at every protocol ZODB has written (0 to 5; bytes at 1 and
// 2 as Python 2 wrote them and as zodbpickle does; Python 2's old-style
// instances), each against the oids CPython's own unpickler hands its
// persistent_load (test/helpers/referencePickles.py). A reference missed is
// an object pack deletes while it is still reachable, so each case must
// match exactly, and a record cut short must throw, never answer.

import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { PickleError } from '../../src/errors.js';
import { zodbReferences } from '../../src/storage/references.js';

interface Case {
  name: string;
  pickle: string;
  refs: string[];
}

const CASES: Case[] = JSON.parse(readFileSync(new URL('../helpers/referencePickles.json', import.meta.url), 'utf8'));

describe('zodbReferences on records CPython pickled', () => {
  it('holds cases for every protocol, with references in each', () => {
    expect(CASES.length).toBe(42);
    for (const c of CASES) expect(c.refs.length, c.name).toBeGreaterThan(0);
  });

  it.each(CASES.map((c) => [c.name, c] as const))('%s', (_name, c) => {
    expect(zodbReferences(Buffer.from(c.pickle, 'hex')).map((oid) => oid.toString('hex'))).toEqual(c.refs);
  });

  it('throws a PickleError for a record cut short anywhere but between its two pickles', () => {
    // Every case under 2 KiB (each cut is walked again from the start).
    const small = CASES.filter((c) => c.pickle.length < 4096);
    expect(small.length).toBeGreaterThan(20);
    for (const c of small) {
      const record = Buffer.from(c.pickle, 'hex');
      const answered: number[] = [];
      for (let cut = 1; cut < record.length; cut++) {
        try {
          // Only the class pickle, whole: no references (a class has none), and nothing guessed of the state.
          expect(zodbReferences(record.subarray(0, cut)), `${c.name}, cut at ${cut}`).toEqual([]);
          answered.push(cut);
        } catch (err) {
          expect(err, `${c.name}, cut at ${cut}`).toBeInstanceOf(PickleError);
        }
      }
      expect(answered.length, c.name).toBe(1);
    }
  });
});
