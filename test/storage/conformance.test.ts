// The storage conformance suite against a plain FileStorage, plus what only a
// file-backed storage has: exact bytes after an abort, read-only mode, the
// lock file, the saved index, and durability across a simulated crash.

import { existsSync, readFileSync, statSync } from 'node:fs';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { CorruptedDataError, LockedError, POSKeyError, ReadOnlyError, StorageClosedError } from '../../src/errors.js';
import { oidOfKey } from '../../src/storage/scan.js';
import { Z64 } from '../../src/storage/timestamp.js';
import type { CommittedTransaction, OpenOptions } from '../../src/storage/types.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { Model, collect, commit, dataBytes, defineConformanceSuite, fakeClock, hexOf, oidOf, writeOutcomes } from './storageHarness.js';

afterAll(cleanupTempDirs);

defineConformanceSuite('FileStorage', async (options = {}) => {
  const dir = await tempDir('zrs-conf-');
  const storage = await FileStorage.open(join(dir, 'Data.fs'), { create: true, now: options.now });
  return { storage, cleanup: () => rm(dir, { recursive: true, force: true }) };
});

const data = (s: string): Buffer => Buffer.from(s, 'utf8');

async function fresh(options: OpenOptions = {}): Promise<{ fs: FileStorage; path: string; dir: string }> {
  const dir = await tempDir('zrs-conf-');
  const path = join(dir, 'Data.fs');
  const fs = await FileStorage.open(path, { create: true, now: fakeClock(), ...options });
  return { fs, path, dir };
}

/** A few transactions over a handful of oids, with metadata. */
async function populate(fs: FileStorage, m = new Model(), n = 6): Promise<Model> {
  for (let i = 0; i < n; i++) {
    const writes: Array<[Buffer, Buffer]> = [];
    for (let j = 0; j <= i % 3; j++) writes.push([oidOf(1 + ((i + j) % 4)), data(`rev ${i}.${j}`)]);
    await m.commit(fs, writes, { user: `user${i}`, description: `txn ${i}` });
  }
  return m;
}

/** Everything a reader can observe, in comparable form. */
async function observe(fs: FileStorage): Promise<unknown> {
  const txns = await collect(fs.iterator());
  const loads: Record<string, unknown> = {};
  for (const key of [...fs.index.keys()].sort()) {
    const oid = oidOfKey(key);
    loads[oid.toString('hex')] = await fs.load(oid).then(
      (r) => [hexOf(r.data), hexOf(r.tid)],
      (e: Error) => e.name,
    );
  }
  return {
    last: hexOf(fs.lastTransaction()),
    objects: fs.objectCount,
    txnCount: fs.transactionCount,
    size: fs.getSize(),
    maxOid: hexOf(fs.maxOid()),
    txns: txns.map((t) => [hexOf(t.tid), t.pos, t.length, t.records.map((r) => [hexOf(r.oid), r.pos, hexOf(r.data)])]),
    index: [...fs.index.entries()].sort(),
    loads,
  };
}

/** Expect a call to fail with `cls`, whether it throws or rejects. */
async function expectFails(call: () => unknown, cls: new (...args: never[]) => Error): Promise<void> {
  let err: unknown = null;
  try {
    await call();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(cls);
}

describe('FileStorage file bytes around two-phase commit', () => {
  it('commits$ carries a copy of a small transaction\'s bytes exactly as the file holds them, and none for a large one', async () => {
    const { fs, path } = await fresh();
    try {
      const seen: CommittedTransaction[] = [];
      const sub = fs.commits$.subscribe((c) => seen.push(c));
      const txn = { description: 'small' };
      await fs.tpcBegin(txn);
      fs.store(oidOf(1), Z64, data('one'), txn);
      fs.store(oidOf(2), Z64, data('two'), txn);
      await fs.tpcVote(txn);
      await fs.tpcFinish(txn);
      // The next transaction reuses the storage's buffer: the published copy must not change.
      await commit(fs, [[oidOf(4), Z64, data('after, and longer than the first')]]);
      const big = { description: 'large' };
      await fs.tpcBegin(big);
      fs.store(oidOf(3), Z64, Buffer.alloc(300 * 1024, 7), big);
      await fs.tpcVote(big);
      await fs.tpcFinish(big);
      sub.unsubscribe();
      const file = readFileSync(path);
      const [small, after, large] = seen;
      expect(after!.raw!.equals(file.subarray(after!.pos, after!.end))).toBe(true);
      expect(small!.raw!.equals(file.subarray(small!.pos, small!.end))).toBe(true);
      expect(small!.raw![16]).toBe(' '.charCodeAt(0));
      expect(large!.raw).toBeUndefined();
    } finally {
      await fs.close();
    }
  });

  it('abort after vote leaves the file exactly as before (size and bytes)', async () => {
    const { fs, path } = await fresh();
    try {
      await populate(fs);
      const before = dataBytes(path, fs.getSize());
      const txn = {};
      await fs.tpcBegin(txn);
      fs.store(oidOf(1), (await fs.load(oidOf(1))).tid, data('doomed'), txn);
      fs.store(oidOf(77), Z64, data('doomed too'), txn);
      await fs.tpcVote(txn);
      const voted = readFileSync(path);
      expect(voted.length).toBeGreaterThan(before.length);
      expect(voted[before.length + 16]).toBe('c'.charCodeAt(0));
      await fs.tpcAbort(txn);
      expect(readFileSync(path)).toEqual(before);
      expect(fs.getSize()).toBe(before.length);
      // An abort before vote never touches the file either.
      const t2 = {};
      await fs.tpcBegin(t2);
      fs.store(oidOf(78), Z64, data('never written'), t2);
      await fs.tpcAbort(t2);
      expect(readFileSync(path)).toEqual(before);
    } finally {
      await fs.close();
    }
  });

  it('publishes on commits$ only once the final status byte is in the file', async () => {
    const { fs, path } = await fresh();
    try {
      const seen: Array<{ c: CommittedTransaction; size: number; status: number }> = [];
      const sub = fs.commits$.subscribe((c) => {
        const bytes = readFileSync(path);
        seen.push({ c, size: bytes.length, status: bytes[c.pos + 16]! });
      });
      const txn = {};
      await fs.tpcBegin(txn, { status: 'p' });
      fs.store(oidOf(1), Z64, data('x'), txn);
      await fs.tpcVote(txn);
      expect(seen).toEqual([]);
      const tid = await fs.tpcFinish(txn);
      await commit(fs, [[oidOf(1), tid, data('y')]]);
      sub.unsubscribe();
      expect(seen.map((s) => [s.status, s.size >= s.c.end])).toEqual([
        ['p'.charCodeAt(0), true],
        [' '.charCodeAt(0), true],
      ]);
      expect(seen[1]!.c.end).toBe(fs.getSize());
      expect(dataBytes(path, fs.getSize()).length).toBe(seen[1]!.c.end);
    } finally {
      await fs.close();
    }
  });

  it('refuses everything but close once closed', async () => {
    const { fs } = await fresh();
    await populate(fs, new Model(), 2);
    await fs.close();
    await fs.close();
    await expectFails(() => fs.load(oidOf(1)), StorageClosedError);
    await expectFails(() => fs.tpcBegin({}), StorageClosedError);
    await expectFails(() => fs.newOid(), StorageClosedError);
    await expectFails(() => fs.iterator(), StorageClosedError);
  });

  it('hands out no oid past 0xffffffffffffffff (never the root oid again), before and after a reopen', async () => {
    const { fs, path } = await fresh();
    await commit(fs, [[Buffer.alloc(8, 0xff), Z64, data('the largest oid')]]);
    expect(() => fs.newOid()).toThrow(/no oid is left after 0xffffffffffffffff/);
    await fs.close();
    const again = await FileStorage.open(path, { now: fakeClock() });
    try {
      expect(() => again.newOid()).toThrow(/no oid is left/);
    } finally {
      await again.close();
    }
  });

  it('a transaction aborted while it waits to begin never begins, and holds nothing', async () => {
    const { fs } = await fresh();
    try {
      const first = {};
      await fs.tpcBegin(first);
      const second = {};
      const begun = fs.tpcBegin(second).then(() => 'begun', (e: Error) => e.message);
      await fs.tpcAbort(second);
      await fs.tpcAbort(first);
      expect(await begun).toMatch(/aborted while it waited to begin/);
      // The commit lock is free: the next transaction begins and commits.
      await commit(fs, [[oidOf(1), Z64, data('after')]]);
      expect(fs.transactionCount).toBe(1);

      // The same transaction may begin again right after its abort, while its first begin still waits.
      const third = {};
      await fs.tpcBegin(third);
      const retried = {};
      const firstTry = fs.tpcBegin(retried).then(() => 'begun', (e: Error) => e.message);
      await fs.tpcAbort(retried);
      const secondTry = fs.tpcBegin(retried).then(() => 'begun', (e: Error) => e.message);
      await fs.tpcAbort(third);
      expect(await firstTry).toMatch(/aborted while it waited to begin/);
      expect(await secondTry).toBe('begun');
      await fs.tpcAbort(retried);
    } finally {
      await fs.close();
    }
  });

  it('two closes at once share one close, read-only ones too', async () => {
    const { fs, path } = await fresh();
    await populate(fs, new Model(), 2);
    const results = await Promise.allSettled([fs.close(), fs.close()]);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'fulfilled']);
    const ro = await FileStorage.open(path, { readOnly: true });
    expect((await Promise.allSettled([ro.close(), ro.close()])).map((r) => r.status)).toEqual(['fulfilled', 'fulfilled']);
  });

  it('a transaction still waiting to begin when close() is called never begins', async () => {
    const { fs } = await fresh();
    const first = {};
    await fs.tpcBegin(first);
    const waiting = fs.tpcBegin({});
    const closing = fs.close();
    await expectFails(() => waiting, StorageClosedError);
    await closing;
    expect(fs.isClosed).toBe(true);
  });
});

describe('FileStorage read-only mode and locking', () => {
  it('raises ReadOnlyError from every write method and still reads', async () => {
    const { fs: writer, path, dir } = await fresh();
    const m = await populate(writer);
    await writer.close();
    const bytes = readFileSync(path);
    const ro = await FileStorage.open(path, { readOnly: true });
    try {
      expect(ro.readOnly).toBe(true);
      const blobFile = join(dir, 'some.blob');
      await writeFile(blobFile, 'blob');
      for (const [name, err] of await writeOutcomes(ro, blobFile, m.txns[1]!.tid)) expect(err, name).toBeInstanceOf(ReadOnlyError);
      expect(existsSync(blobFile)).toBe(true);
      await ro.tpcAbort({}); // nothing to abort: a no-op
      expect(hexOf(ro.lastTransaction())).toBe(hexOf(m.txns.at(-1)!.tid));
      for (const [k, revs] of m.revisions) {
        const oid = Buffer.from(k, 'hex');
        expect(await ro.load(oid)).toEqual({ data: revs.at(-1)!.data, tid: revs.at(-1)!.tid });
        for (const r of revs) expect(await ro.loadSerial(oid, r.tid)).toEqual(r.data);
        expect(await ro.loadBefore(oid, revs[0]!.tid)).toBeNull();
        expect((await ro.history(oid, 100)).length).toBe(revs.length);
      }
      expect((await collect(ro.iterator())).length).toBe(m.txns.length);
    } finally {
      await ro.close();
    }
    expect(readFileSync(path)).toEqual(bytes);
  });

  it('locks <path>.lock: a second writer is refused, a reader is not, close releases it', async () => {
    const { fs, path } = await fresh();
    let again: FileStorage | null = null;
    try {
      const m = await populate(fs, new Model(), 2);
      let err: unknown = null;
      try {
        again = await FileStorage.open(path);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(LockedError);
      expect((err as LockedError).lockPath).toBe(`${path}.lock`);
      expect((err as LockedError).message).toContain(`${path}.lock`);
      // The writer is unaffected, and a reader opens alongside it.
      await m.commit(fs, [[oidOf(9), data('still writable')]]);
      const reader = await FileStorage.open(path, { readOnly: true });
      expect(reader.lastTransaction()).toEqual(fs.lastTransaction());
      expect((await reader.load(oidOf(9))).data).toEqual(data('still writable'));
      await reader.close();
      await expectFails(() => FileStorage.open(path), LockedError);
    } finally {
      await fs.close();
    }
    again = await FileStorage.open(path);
    await commit(again, [[again.newOid(), Z64, Buffer.from('x')]]);
    await again.close();
    const third = await FileStorage.open(path);
    expect(third.transactionCount).toBe(4);
    await third.close();
  });

  it('a close whose file handle fails to close still releases the lock, and says why', async () => {
    const { fs, path } = await fresh();
    await populate(fs, new Model(), 1);
    // The handle closes, then reports an error (as a close on a failing disk may).
    const handle = (fs as unknown as { handle: { close(): Promise<void> } }).handle;
    const closeHandle = handle.close.bind(handle);
    handle.close = async () => {
      await closeHandle();
      throw new Error('EIO on close');
    };
    await expect(fs.close()).rejects.toThrow('EIO on close');
    const again = await FileStorage.open(path);
    expect(again.transactionCount).toBe(1);
    await again.close();
  });
});

describe('FileStorage saved index (<path>.zrs-index)', () => {
  async function scanned(path: string): Promise<unknown> {
    const saved = `${path}.zrs-index`;
    const keep = existsSync(saved) ? await readFile(saved) : null;
    await rm(saved, { force: true });
    const fs = await FileStorage.open(path, { readOnly: true });
    try {
      return await observe(fs);
    } finally {
      await fs.close();
      if (keep) await writeFile(saved, keep);
    }
  }

  async function reopened(path: string): Promise<unknown> {
    const fs = await FileStorage.open(path, { now: fakeClock(Date.UTC(2030, 0, 1)) });
    try {
      return await observe(fs);
    } finally {
      await fs.close();
    }
  }

  it('is written on close and used on reopen', async () => {
    const { fs, path } = await fresh();
    await populate(fs);
    const view = await observe(fs);
    await fs.close();
    expect(existsSync(`${path}.zrs-index`)).toBe(true);
    expect(await reopened(path)).toEqual(view);
    // Evidence that it is used: damage inside an early transaction (its first
    // record's tloc) that only a full scan would notice.
    const bytes = readFileSync(path);
    const ro = await FileStorage.open(path, { readOnly: true });
    const [first] = await collect(ro.iterator());
    await ro.close();
    const damaged = Buffer.from(bytes);
    const tlocAt = first!.records[0]!.pos + 24;
    damaged.writeUInt32BE(damaged.readUInt32BE(tlocAt + 4) + 1, tlocAt + 4);
    await writeFile(path, damaged);
    const withIndex = await FileStorage.open(path, { readOnly: true });
    expect(await observe(withIndex)).toEqual(view);
    await withIndex.close();
    await rm(`${path}.zrs-index`);
    await expectFails(() => FileStorage.open(path, { readOnly: true }), CorruptedDataError);
  });

  it('an older index (from before later commits) gives the same results as a scan', async () => {
    const { fs, path } = await fresh();
    const m = await populate(fs, new Model(), 3);
    await fs.close();
    const older = await readFile(`${path}.zrs-index`);
    const fs2 = await FileStorage.open(path, { now: fakeClock(Date.UTC(2025, 0, 1)) });
    await populate(fs2, m, 5);
    await fs2.close();
    await writeFile(`${path}.zrs-index`, older);
    const want = await scanned(path);
    expect(await reopened(path)).toEqual(want);
    expect((want as { txnCount: number }).txnCount).toBe(8);
  });

  it('an index of a different history of the file is ignored', async () => {
    const { fs, path } = await fresh();
    await populate(fs, new Model(), 3);
    const prefix = readFileSync(path);
    await commit(fs, [[oidOf(1), (await fs.load(oidOf(1))).tid, data('original third')]]);
    await fs.close();
    const originalSize = statSync(path).size;
    const foreign = await readFile(`${path}.zrs-index`);
    // Rewind to the prefix and write a different, longer history.
    await writeFile(path, prefix);
    await rm(`${path}.zrs-index`);
    const fs2 = await FileStorage.open(path, { now: fakeClock() });
    await commit(fs2, [[oidOf(50), Z64, data('a different transaction, longer than the original one')]]);
    await commit(fs2, [[oidOf(51), Z64, data('and one more')]]);
    await fs2.close();
    // Longer than the original, so only the recorded header can tell them apart.
    expect(statSync(path).size).toBeGreaterThan(originalSize);
    await writeFile(`${path}.zrs-index`, foreign);
    const want = await scanned(path);
    expect(await reopened(path)).toEqual(want);
    expect(Object.keys((want as { loads: object }).loads)).toContain(oidOf(51).toString('hex'));
  });

  it('a corrupt, truncated or garbage index is ignored; a deleted one is rebuilt', async () => {
    const { fs, path } = await fresh();
    await populate(fs);
    const view = await observe(fs);
    await fs.close();
    const good = await readFile(`${path}.zrs-index`);
    const flipped = Buffer.from(good);
    flipped[Math.floor(flipped.length / 2)]! ^= 0x40;
    const variants: Array<[string, Buffer | null]> = [
      ['flipped byte', flipped],
      ['truncated', good.subarray(0, good.length - 5)],
      ['header only', good.subarray(0, 8)],
      ['garbage', Buffer.from('not an index at all')],
      ['empty', Buffer.alloc(0)],
      ['deleted', null],
    ];
    for (const [name, bytes] of variants) {
      if (bytes === null) await rm(`${path}.zrs-index`);
      else await writeFile(`${path}.zrs-index`, bytes);
      expect(await reopened(path), name).toEqual(view);
      // Close saved a good index again.
      expect(await readFile(`${path}.zrs-index`), name).toEqual(good);
    }
  });
});

describe('FileStorage durability', () => {
  it('shows every finished transaction after close and reopen (fsync on)', async () => {
    const { fs, path } = await fresh({ fsync: true });
    const m = await populate(fs, new Model(), 10);
    const view = await observe(fs);
    await fs.close();
    const again = await FileStorage.open(path);
    try {
      expect(await observe(again)).toEqual(view);
      expect(hexOf(again.lastTransaction())).toBe(hexOf(m.txns.at(-1)!.tid));
    } finally {
      await again.close();
    }
  });

  it('a crash copy of an unclosed storage reopens to the last finished transaction', async () => {
    const { fs, path } = await fresh({ fsync: true });
    try {
      const m = await populate(fs, new Model(), 4);
      const finishedEnd = fs.getSize();
      const afterFinish = readFileSync(path);
      const finishedView = await observe(fs);
      const txn = {};
      await fs.tpcBegin(txn);
      fs.store(oidOf(1), m.serial(oidOf(1)), data('voted, never finished'), txn);
      fs.store(oidOf(60), Z64, data('new, never finished'), txn);
      await fs.tpcVote(txn);
      const afterVote = readFileSync(path);
      const tid = await fs.tpcFinish(txn);
      const afterLastFinish = readFileSync(path);
      const votedEnd = fs.getSize();

      const crash = async (bytes: Buffer): Promise<{ view: unknown; dir: string; fs: FileStorage }> => {
        const dir = await tempDir('zrs-crash-');
        const copy = join(dir, 'Data.fs');
        await writeFile(copy, bytes);
        const opened = await FileStorage.open(copy);
        return { view: await observe(opened), dir, fs: opened };
      };

      const a = await crash(afterFinish);
      expect(a.view).toEqual(finishedView);
      expect(existsSync(join(a.dir, 'Data.fs.tr0'))).toBe(false);
      await a.fs.close();

      const b = await crash(afterVote);
      expect(b.view).toEqual(finishedView);
      // The side file keeps the unfinished transaction, not the fill after it
      // (but for at most the 7 bytes of fill up to the next whole word).
      const side = readFileSync(join(b.dir, 'Data.fs.tr0'));
      expect(side.subarray(0, votedEnd - finishedEnd)).toEqual(afterVote.subarray(finishedEnd, votedEnd));
      expect(side.length - (votedEnd - finishedEnd)).toBe((8 - (votedEnd % 8)) % 8);
      expect(statSync(join(b.dir, 'Data.fs')).size).toBe(finishedEnd);
      await expectFails(() => b.fs.load(oidOf(60)), POSKeyError);
      await b.fs.close();

      const c = await crash(afterLastFinish);
      expect(hexOf(c.fs.lastTransaction())).toBe(hexOf(tid));
      expect((await c.fs.load(oidOf(60))).data).toEqual(data('new, never finished'));
      await c.fs.close();
    } finally {
      await fs.close();
    }
  });
});
