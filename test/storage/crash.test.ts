// Crash safety as a property: after a few random transactions, a file cut at
// ANY byte inside the last transaction (or with that transaction still marked
// 'c') reopens read-write to exactly the earlier transactions, keeps the cut
// bytes in Data.fs.tr0, and takes the next commit cleanly. fast-check prints
// the seed and path of a failure; replay with fc.assert(..., { seed, path }).

import { existsSync, readFileSync, statSync, truncateSync } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { POSKeyError } from '../../src/errors.js';
import { Z64, tidFromTime, tidPlusOne } from '../../src/storage/timestamp.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { CLOCK_START_MS, Model, collect, commit, fakeClock, hexOf, oidOf, scriptedClock } from './storageHarness.js';

afterAll(cleanupTempDirs);

interface TxnSpec {
  writes: Array<{ oid: number; data: Uint8Array }>;
  user: string;
  description: string;
}

const txnArb: fc.Arbitrary<TxnSpec> = fc.record({
  writes: fc.uniqueArray(fc.record({ oid: fc.integer({ min: 1, max: 5 }), data: fc.uint8Array({ minLength: 1, maxLength: 24 }) }), {
    // At least one: a transaction that stores nothing writes nothing (as in ZODB).
    minLength: 1,
    maxLength: 3,
    selector: (w) => w.oid,
  }),
  user: fc.string({ maxLength: 6 }),
  description: fc.string({ maxLength: 6 }),
});

/** A clock far behind every tid written, so new tids come from the tid floor. */
const PAST_MS = Date.UTC(2000, 0, 1);
/** The clock a day behind the one the files here are written with: gone back, not so far that a torn first transaction's tid reads as junk. */
const BEHIND_MS = CLOCK_START_MS - 86_400_000;

interface Built {
  /** The whole file with the last transaction finished. */
  bytes: Buffer;
  /** The index saved by a clean close just before the last transaction. */
  olderIndex: Buffer;
  /** Start of the last transaction. */
  lastPos: number;
  /** The model after all but the last transaction. */
  before: Model;
}

async function build(dir: string, specs: TxnSpec[]): Promise<Built> {
  const path = join(dir, 'Data.fs');
  const clock = fakeClock();
  const before = new Model();
  const writesOf = (t: TxnSpec): Array<[Buffer, Buffer]> => t.writes.map((w) => [oidOf(w.oid), Buffer.from(w.data)]);
  let fs = await FileStorage.open(path, { create: true, now: clock, fsync: false });
  for (const t of specs.slice(0, -1)) await before.commit(fs, writesOf(t), { user: t.user, description: t.description });
  await fs.close();
  const olderIndex = readFileSync(`${path}.zrs-index`);
  fs = await FileStorage.open(path, { now: clock, fsync: false });
  const lastPos = fs.getSize();
  const after = new Model();
  for (const [k, v] of before.revisions) after.revisions.set(k, [...v]);
  const last = specs.at(-1)!;
  await after.commit(fs, writesOf(last), { user: last.user, description: last.description });
  await fs.close();
  return { bytes: readFileSync(path), olderIndex, lastPos, before };
}

async function expectEarlierTransactions(fs: FileStorage, b: Built): Promise<void> {
  const prev = b.before.txns.at(-1)?.tid ?? Z64;
  expect(hexOf(fs.lastTransaction())).toBe(hexOf(prev));
  expect(fs.transactionCount).toBe(b.before.txns.length);
  expect(fs.getSize()).toBe(b.lastPos);
  const got = await collect(fs.iterator());
  expect(got.map((t) => [hexOf(t.tid), t.records.map((r) => [hexOf(r.oid), hexOf(r.data)])])).toEqual(
    b.before.txns.map((t) => [hexOf(t.tid), t.writes.map((w) => [hexOf(w.oid), hexOf(w.data)])]),
  );
  for (let n = 1; n <= 5; n++) {
    const revs = b.before.revisions.get(oidOf(n).toString('hex'));
    if (revs) expect(await fs.load(oidOf(n))).toEqual({ data: revs.at(-1)!.data, tid: revs.at(-1)!.tid });
    else await expect(fs.load(oidOf(n))).rejects.toBeInstanceOf(POSKeyError);
  }
}

/** Reopen `damaged` read-write in `work` and check recovery, the side file and the next commit. */
async function checkRecovery(work: string, damaged: Buffer, b: Built, withOlderIndex: boolean): Promise<void> {
  await rm(work, { recursive: true, force: true });
  await mkdir(work);
  const path = join(work, 'Data.fs');
  await writeFile(path, damaged);
  if (withOlderIndex) await writeFile(`${path}.zrs-index`, b.olderIndex);
  const cut = damaged.subarray(b.lastPos);
  const fs = await FileStorage.open(path, { now: scriptedClock([BEHIND_MS]), fsync: false });
  let newTid: Buffer;
  try {
    await expectEarlierTransactions(fs, b);
    expect(statSync(path).size).toBe(b.lastPos);
    if (cut.length > 0) expect(readFileSync(`${path}.tr0`)).toEqual(cut);
    else expect(existsSync(`${path}.tr0`)).toBe(false);
    // What was cut, for the node that opened it to log.
    expect(fs.tailCutOnOpen).toEqual(cut.length > 0 ? { position: b.lastPos, bytes: cut.length, keptIn: `${path}.tr0`, reason: expect.any(String), bytesAfter: 0 } : null);
    expect(existsSync(`${path}.tr1`)).toBe(false);
    // The next tid passes the cut transaction's tid when its 8 bytes survived.
    const prev = b.before.txns.at(-1)?.tid ?? null;
    const floor = cut.length >= 8 ? Buffer.from(cut.subarray(0, 8)) : prev;
    const txn = { description: 'after the crash' };
    await fs.tpcBegin(txn);
    fs.store(oidOf(1), b.before.serial(oidOf(1)), Buffer.from('after the crash'), txn);
    await fs.tpcVote(txn);
    newTid = await fs.tpcFinish(txn);
    expect(hexOf(newTid)).toBe(hexOf(floor ? tidPlusOne(floor) : tidFromTime(BEHIND_MS)));
  } finally {
    await fs.close();
  }
  const again = await FileStorage.open(path, { readOnly: true });
  try {
    expect(again.transactionCount).toBe(b.before.txns.length + 1);
    expect(hexOf(again.lastTransaction())).toBe(hexOf(newTid));
    expect(await again.load(oidOf(1))).toEqual({ data: Buffer.from('after the crash'), tid: newTid });
    expect(again.getSize()).toBe(statSync(path).size);
  } finally {
    await again.close();
  }
}

describe('crash safety', () => {
  it('recovers from a cut at every byte of the last transaction, and from a leftover c status', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(txnArb, { minLength: 1, maxLength: 4 }),
        fc.boolean(),
        fc.nat(),
        async (specs, withOlderIndex, roPick) => {
          const dir = await tempDir('zrs-crash-');
          try {
            const b = await build(join(dir), specs);
            const work = join(dir, 'work');
            for (let cutAt = b.lastPos; cutAt < b.bytes.length; cutAt++) {
              await checkRecovery(work, b.bytes.subarray(0, cutAt), b, withOlderIndex);
            }
            const checkpoint = Buffer.from(b.bytes);
            checkpoint[b.lastPos + 16] = 'c'.charCodeAt(0);
            await checkRecovery(work, checkpoint, b, withOlderIndex);

            // Read-only, one cut point: the same view, and the file untouched.
            const cutAt = b.lastPos + (roPick % (b.bytes.length - b.lastPos));
            await rm(work, { recursive: true, force: true });
            await mkdir(work);
            const path = join(work, 'Data.fs');
            await writeFile(path, b.bytes.subarray(0, cutAt));
            const ro = await FileStorage.open(path, { readOnly: true });
            try {
              await expectEarlierTransactions(ro, b);
            } finally {
              await ro.close();
            }
            expect(readFileSync(path)).toEqual(b.bytes.subarray(0, cutAt));
            expect(existsSync(`${path}.tr0`)).toBe(false);
          } finally {
            await rm(dir, { recursive: true, force: true });
          }
        },
      ),
      { numRuns: 15 },
    );
    // A reopen and a commit per byte cut: about 15 s on an idle machine, several times that on a loaded one.
  }, 300_000);

  it('does not trust an index saved over a file that has since lost bytes it covered (a torn last redundant length)', async () => {
    const path = join(await tempDir('zrs-crash-'), 'Data.fs');
    const fs = await FileStorage.open(path, { create: true, fsync: false });
    const tids: Buffer[] = [];
    for (let i = 0; i < 3; i++) tids.push(await commit(fs, [[oidOf(i + 1), Z64, Buffer.from(`v${i}`)]]));
    await fs.close(); // saves the index, covering the whole file
    truncateSync(path, statSync(path).size - 5);
    const again = await FileStorage.open(path, { readOnly: true });
    try {
      expect(again.lastTransaction()).toEqual(tids[1]);
      await expect(again.load(oidOf(3))).rejects.toBeInstanceOf(POSKeyError);
    } finally {
      await again.close();
    }
  });

  it('a transaction found damaged part way leaves none of its records indexed when it is cut as a torn tail', async () => {
    const dir = await tempDir();
    const path = join(dir, 'Data.fs');
    const B = (text: string): Buffer => Buffer.from(text);
    let fs = await FileStorage.open(path, { create: true, fsync: false, preallocate: 0 });
    const t0 = await commit(fs, [[oidOf(1), Z64, B('a0')]]);
    const t1pos = fs.getSize();
    await commit(fs, [[oidOf(1), t0, B('a1')], [oidOf(2), Z64, B('b1')]]);
    await commit(fs, [[oidOf(3), Z64, B('c2')]]);
    await fs.close();
    await rm(`${path}.zrs-index`, { force: true });
    const bytes = readFileSync(path);
    // The second record of the middle transaction: its transaction pointer garbled.
    const meta = bytes.readUInt16BE(t1pos + 17) + bytes.readUInt16BE(t1pos + 19) + bytes.readUInt16BE(t1pos + 21);
    const second = t1pos + 23 + meta + 42 + 2;
    bytes.fill(0, second + 24, second + 32);
    // And the last transaction lost its trailer: the damage reaches the end of the file.
    await writeFile(path, bytes.subarray(0, bytes.length - 3));
    fs = await FileStorage.open(path, { fsync: false, preallocate: 0 });
    try {
      expect(fs.tailCutOnOpen?.position).toBe(t1pos);
      expect(fs.index.get(1)).toBeLessThan(t1pos);
      expect(fs.index.has(2)).toBe(false);
      expect((await fs.load(oidOf(1))).data.toString()).toBe('a0');
      await expect(fs.load(oidOf(2))).rejects.toThrow(POSKeyError);
    } finally {
      await fs.close();
    }
  });

  it('bytes of junk cut from the end are no tid to stay above: the next commits go on as usual', async () => {
    const dir = await tempDir('zrs-crash-');
    const path = join(dir, 'Data.fs');
    let fs = await FileStorage.open(path, { create: true, fsync: false });
    await commit(fs, [[oidOf(1), Z64, Buffer.from('v1')]]);
    await fs.close();
    const cAt16 = Buffer.alloc(30, 0xff);
    cAt16[16] = 'c'.charCodeAt(0);
    const junks = [Buffer.alloc(30, 0xff), cAt16, Buffer.concat([Buffer.from('7f00000000000000', 'hex'), Buffer.alloc(22, 0x41)]), Buffer.from('junk at the end, of the file')];
    for (const junk of junks) {
      await writeFile(path, Buffer.concat([readFileSync(path), junk]));
      fs = await FileStorage.open(path, { fsync: false, now: scriptedClock([PAST_MS]) });
      try {
        expect(fs.tailCutOnOpen?.bytes).toBe(junk.length);
        const last = fs.lastTransaction();
        const next = await commit(fs, [[oidOf(1), (await fs.load(oidOf(1))).tid, Buffer.from('after')]]);
        // The clock is behind: the next tid follows the last transaction, not the junk.
        expect(hexOf(next)).toBe(hexOf(tidPlusOne(last)));
      } finally {
        await fs.close();
      }
    }
    expect(() => tidPlusOne(Buffer.alloc(8, 0xff))).toThrow('no tid follows ffffffffffffffff');
  });

  it("a cut 'c' transaction with whole ones after it: new tids stay above all of them, the clock gone back or not", async () => {
    const path = join(await tempDir('zrs-crash-'), 'Data.fs');
    let fs = await FileStorage.open(path, { create: true, fsync: false });
    let serial = await commit(fs, [[oidOf(1), Z64, Buffer.from('v1')]]);
    const cutFrom = fs.getSize();
    const cut: Buffer[] = [];
    for (const v of ['v2', 'v3', 'v4']) cut.push((serial = await commit(fs, [[oidOf(1), serial, Buffer.from(v)]])));
    await fs.close();
    const bytes = readFileSync(path);
    bytes[cutFrom + 16] = 'c'.charCodeAt(0); // a group sync torn before v2's final status
    await writeFile(path, bytes);
    await rm(`${path}.zrs-index`, { force: true });
    fs = await FileStorage.open(path, { fsync: false, now: scriptedClock([PAST_MS]) });
    try {
      expect(fs.tailCutOnOpen?.position).toBe(cutFrom);
      const next = await commit(fs, [[oidOf(1), (await fs.load(oidOf(1))).tid, Buffer.from('after')]]);
      expect(hexOf(next)).toBe(hexOf(tidPlusOne(cut.at(-1)!)));
    } finally {
      await fs.close();
    }
  });

  it("a torn tail's tid is judged against the storage's clock, not the machine's (a storage on a clock years ahead reused it)", async () => {
    const path = join(await tempDir('zrs-crash-'), 'Data.fs');
    let fs = await FileStorage.open(path, { create: true, fsync: false, now: scriptedClock([Date.UTC(2040, 0, 1)]) });
    const first = await commit(fs, [[oidOf(1), Z64, Buffer.from('v1')]]);
    await fs.close();
    fs = await FileStorage.open(path, { fsync: false, now: scriptedClock([Date.UTC(2041, 5, 1)]) });
    const torn = await commit(fs, [[oidOf(1), first, Buffer.from('v2')]]);
    await fs.close();
    await writeFile(path, readFileSync(path).subarray(0, -3));
    await rm(`${path}.zrs-index`, { force: true });
    // Within a year of this clock, though years past the machine's: a tid that may have been seen.
    fs = await FileStorage.open(path, { fsync: false, now: scriptedClock([Date.UTC(2041, 2, 1)]) });
    try {
      expect(fs.tailCutOnOpen).not.toBeNull();
      const next = await commit(fs, [[oidOf(1), first, Buffer.from('after')]]);
      expect(hexOf(next)).toBe(hexOf(tidPlusOne(torn)));
    } finally {
      await fs.close();
    }
  });
});
