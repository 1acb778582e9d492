// Damage as a property: a ZODB fixture with bytes flipped, overwritten,
// zeroed, cut off or added, opened with or without a saved index (so that
// the open scans the damage, or trusts the index and leaves it for readers
// to meet). Whatever the damage, `zrs verify` gives a verdict (a file it
// calls sound opens read-only and read-write), and the open
// and every read either work or fail with a ZrsError (CorruptedDataError and
// its kin), never a RangeError or TypeError from reading at a garbage
// position; a read-write open that accepts the file takes a commit and opens
// again. A damaged saved index is never trusted into a wrong answer: with it,
// every object loads as it does from the intact file.
//
// fast-check prints the seed and path of a failure; replay with
// DAMAGE_SEED=<seed> DAMAGE_PATH=<path> npx vitest run test/storage/damage.property.test.ts.
// Under CI the seed is fixed (docs/SIMULATION.md, Seeds in CI).

import { readFileSync } from 'node:fs';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { ZrsError } from '../../src/errors.js';
import { indexPathFor } from '../../src/storage/indexFile.js';
import { verifyFile } from '../../src/cli/verify.js';
import { Z64 } from '../../src/storage/timestamp.js';
import { CI_SEED } from '../../property-tests/model.js';
import { cleanupTempDirs, fixturePath, tempDir } from '../helpers/fixtures.js';

afterAll(cleanupTempDirs);

const FIXTURES = ['basic', 'packed', 'undo', 'blobs'] as const;
type Fixture = (typeof FIXTURES)[number];

/** What each fixture holds, read from the intact file: its bytes, and each object's current data (null: its creation was undone). */
const intact = new Map<Fixture, { bytes: Buffer; loads: Map<string, string | null> }>();

beforeAll(async () => {
  for (const name of FIXTURES) {
    const path = fixturePath('zodb', name, 'Data.fs');
    const fs = await FileStorage.open(path, { readOnly: true });
    const loads = new Map<string, string | null>();
    try {
      for await (const t of fs.iterator()) {
        for (const r of t.records) {
          const key = r.oid.toString('hex');
          if (!loads.has(key)) loads.set(key, await fs.load(r.oid).then((l) => l.data.toString('hex'), () => null));
        }
      }
    } finally {
      await fs.close();
    }
    intact.set(name, { bytes: readFileSync(path), loads });
  }
});

/** A change to a file's bytes; positions are fractions of the length past the magic. */
type Edit =
  | { kind: 'set'; at: number; bytes: number[] }
  | { kind: 'zero'; at: number; length: number }
  | { kind: 'cut'; at: number }
  | { kind: 'append'; bytes: number[] };

const fraction = fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true });
const edit: fc.Arbitrary<Edit> = fc.oneof(
  fc.record({ kind: fc.constant('set' as const), at: fraction, bytes: fc.array(fc.integer({ min: 0, max: 255 }), { minLength: 1, maxLength: 8 }) }),
  fc.record({ kind: fc.constant('zero' as const), at: fraction, length: fc.integer({ min: 1, max: 64 }) }),
  fc.record({ kind: fc.constant('cut' as const), at: fraction }),
  fc.record({ kind: fc.constant('append' as const), bytes: fc.array(fc.integer({ min: 0, max: 255 }), { minLength: 1, maxLength: 40 }) }),
);

function applied(bytes: Buffer, e: Edit): Buffer {
  const at = 4 + Math.floor(('at' in e ? e.at : 0) * (bytes.length - 4));
  const out = Buffer.from(bytes);
  switch (e.kind) {
    case 'set':
      for (let i = 0; i < e.bytes.length && at + i < out.length; i++) out[at + i] = e.bytes[i]!;
      return out;
    case 'zero':
      return out.fill(0, at, Math.min(out.length, at + e.length));
    case 'cut':
      return out.subarray(0, at);
    case 'append':
      return Buffer.concat([out, Buffer.from(e.bytes)]);
  }
}

/** Run `step`; an error it throws must be one of the library's own. */
async function allowed<T>(what: string, step: () => Promise<T>): Promise<T | undefined> {
  try {
    return await step();
  } catch (err) {
    if (!(err instanceof ZrsError)) throw new Error(`${what} failed with ${(err as Error)?.name}, not a ZrsError: ${(err as Error)?.message}`, { cause: err });
    return undefined;
  }
}

/** Every way of reading the file; true when it opened. `expected`: each object's data as it must load. */
async function readAll(path: string, readOnly: boolean, expected?: Map<string, string | null>): Promise<boolean> {
  const fs = await allowed('open', () => FileStorage.open(path, { readOnly, fsync: false }));
  if (fs === undefined) return false;
  try {
    const revisions: Array<[Buffer, Buffer]> = [];
    await allowed('iteration', async () => {
      for await (const t of fs.iterator()) for (const r of t.records) revisions.push([Buffer.from(r.oid), Buffer.from(t.tid)]);
    });
    for (const [oid, tid] of revisions) {
      await allowed('load', () => fs.load(oid));
      await allowed('history', () => fs.history(oid, 100));
      await allowed('loadSerial', () => fs.loadSerial(oid, tid));
      await allowed('loadBefore', () => fs.loadBefore(oid, tid));
    }
    await allowed('undoLog', () => fs.undoLog(0, 1000));
    for (const [key, data] of expected ?? []) {
      const got = await fs.load(Buffer.from(key, 'hex')).then((l) => l.data.toString('hex'), () => null);
      expect(got, `object ${key}`).toBe(data);
    }
    if (!readOnly) {
      const txn = { description: 'after the damage' };
      await fs.tpcBegin(txn);
      fs.store(fs.newOid(), Z64, Buffer.from('new'), txn);
      await fs.tpcVote(txn);
      await fs.tpcFinish(txn);
    }
  } finally {
    await fs.close();
  }
  return true;
}

function seed(): number | undefined {
  const n = Number(process.env.DAMAGE_SEED);
  if (Number.isInteger(n)) return n;
  return process.env.CI ? CI_SEED : undefined;
}

describe('a damaged file', () => {
  it('gets a verdict from verify, and opens and reads, or fails with a ZrsError, with or without a saved index', async () => {
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...FIXTURES), fc.constantFrom('scanned', 'indexed', 'index damaged'), edit, async (name, how, e) => {
        const { bytes, loads } = intact.get(name)!;
        const dir = await tempDir('zrs-damage-');
        try {
          const path = join(dir, 'Data.fs');
          await writeFile(path, bytes);
          if (how !== 'scanned') await (await FileStorage.open(path, { fsync: false })).close(); // saves the index of the intact file
          if (how === 'index damaged') await writeFile(indexPathFor(path), applied(readFileSync(indexPathFor(path)), e));
          else await writeFile(path, applied(bytes, e));
          const verdict = await verifyFile(path, { settleMs: 0 });
          // Only the index damaged: the file's objects load as they are.
          const expected = how === 'index damaged' ? loads : undefined;
          const readOnly = await readAll(path, true, expected);
          const readWrite = await readAll(path, false, expected);
          // A file verify calls sound, every open takes (verify reads more than an open does, never less).
          if (verdict.ok) expect([readOnly, readWrite]).toEqual([true, true]);
          if (readWrite) {
            // What a read-write open accepted, it accepts again, with the commit made since.
            const again = await FileStorage.open(path, { fsync: false });
            await again.close();
          }
        } finally {
          await rm(dir, { recursive: true, force: true });
        }
      }),
      { numRuns: 300, seed: seed(), path: process.env.DAMAGE_PATH },
    );
  }, 300_000);
});
