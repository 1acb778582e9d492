// A storage conformance suite that runs against any storage factory (a plain
// FileStorage here; a replicating primary later): store/load, conflicts,
// revisions, history, two-phase-commit state rules, concurrent committers,
// commits$ and the iterator. Behaviours follow ZODB's own storage test groups
// (BasicStorage, RevisionStorage, HistoryStorage, IteratorStorage,
// Synchronization, MTStorage); every assertion is exact and nothing sleeps.

import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import type { FileStorage } from '../../src/storage/FileStorage.js';
import { ConflictError, POSKeyError, StorageTransactionError, ZrsError } from '../../src/errors.js';
import { isFillRange } from '../../src/storage/prealloc.js';
import { Z64, tidFromTime, tidPlusOne, tidToSeconds } from '../../src/storage/timestamp.js';
import type { CommittedTransaction, TransactionMeta, TransactionRecord } from '../../src/storage/types.js';

/**
 * The bytes of the data file at `path` up to `end` (its storage's getSize()),
 * checking that whatever lies past them is preallocated fill.
 */
export function dataBytes(path: string, end: number): Buffer {
  const file = readFileSync(path);
  expect(file.length).toBeGreaterThanOrEqual(end);
  expect(isFillRange(file.subarray(end), end)).toBe(true);
  return file.subarray(0, end);
}

/** The part of the storage API the suite exercises (FileStorage satisfies it). */
export type ConformanceStorage = Pick<
  FileStorage,
  | 'newOid'
  | 'tpcBegin'
  | 'store'
  | 'restore'
  | 'tpcVote'
  | 'tpcFinish'
  | 'tpcAbort'
  | 'load'
  | 'loadSerial'
  | 'loadBefore'
  | 'history'
  | 'iterator'
  | 'lastTransaction'
  | 'objectCount'
  | 'getSize'
  | 'commits$'
  | 'close'
>;

export interface StorageUnderTest {
  storage: ConformanceStorage;
  /** Remove everything the factory made (the suite closes the storage first). */
  cleanup: () => Promise<void>;
}

export interface StorageFactoryOptions {
  /** Wall clock for new tids in ms since the epoch; factories must pass it on. */
  now?: () => number;
}

/** Makes a fresh, empty, writable storage. */
export type StorageFactory = (options?: StorageFactoryOptions) => Promise<StorageUnderTest>;

/** 2024-03-01T12:00:00Z: the fake clocks' default start. */
export const CLOCK_START_MS = Date.UTC(2024, 2, 1, 12, 0, 0);

/** A deterministic clock: each reading is `stepMs` after the previous one. */
export function fakeClock(startMs = CLOCK_START_MS, stepMs = 1000): () => number {
  let t = startMs - stepMs;
  return () => (t += stepMs);
}

/** A clock that returns the given readings in turn (then repeats the last). */
export function scriptedClock(readingsMs: number[]): () => number {
  let i = 0;
  return () => readingsMs[Math.min(i++, readingsMs.length - 1)]!;
}

export const oidOf = (n: number): Buffer => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(n), 0);
  return b;
};

export type Write = readonly [oid: Buffer, serial: Buffer, data: Buffer];

/** One whole transaction through the public API; resolves with its tid. */
export async function commit(
  storage: ConformanceStorage,
  writes: readonly Write[],
  meta: TransactionMeta = {},
  options: { tid?: Buffer; status?: string } = {},
): Promise<Buffer> {
  await storage.tpcBegin(meta, options);
  for (const [oid, serial, data] of writes) storage.store(oid, serial, data, meta);
  await storage.tpcVote(meta);
  return storage.tpcFinish(meta);
}

export async function collect(it: AsyncIterable<TransactionRecord>): Promise<TransactionRecord[]> {
  const out: TransactionRecord[] = [];
  for await (const t of it) out.push(t);
  return out;
}

/** The write methods of a storage, each called once: what a read-only face must refuse, every one of them. */
export type WriteFace = Pick<FileStorage, 'newOid' | 'tpcBegin' | 'store' | 'restore' | 'storeBlob' | 'restoreBlob' | 'tpcVote' | 'tpcFinish' | 'undo' | 'pack'>;

/** The name of each write method of `s` and what it threw (null: it did not), against a blob file and a transaction to undo. */
export async function writeOutcomes(s: WriteFace, blobFile: string, undoTid: Buffer): Promise<Array<[string, unknown]>> {
  const txn = {};
  const oid = oidOf(1);
  const record = Buffer.from('x');
  const calls: Array<[string, () => unknown]> = [
    ['newOid', () => s.newOid()],
    ['tpcBegin', () => s.tpcBegin(txn)],
    ['tpcBegin with tid', () => s.tpcBegin(txn, { tid: Buffer.alloc(8, 0xff) })],
    ['store', () => s.store(oid, Z64, record, txn)],
    ['restore', () => s.restore(oid, Z64, record, null, txn)],
    ['storeBlob', () => s.storeBlob(oid, Z64, record, blobFile, txn)],
    ['restoreBlob', () => s.restoreBlob(oid, Z64, record, blobFile, null, txn)],
    ['tpcVote', () => s.tpcVote(txn)],
    ['tpcFinish', () => s.tpcFinish(txn)],
    ['undo', () => s.undo(undoTid, txn)],
    ['pack', () => s.pack(Date.now() / 1000)],
  ];
  const out: Array<[string, unknown]> = [];
  for (const [name, call] of calls) {
    try {
      await call();
      out.push([name, null]);
    } catch (err) {
      out.push([name, err]);
    }
  }
  return out;
}

export const hexOf = (b: Buffer | null | undefined): string | null => (b ? b.toString('hex') : null);
const cmp = (a: Buffer, b: Buffer): number => Buffer.compare(a, b);

export function expectStrictlyIncreasing(tids: readonly Buffer[]): void {
  for (let i = 1; i < tids.length; i++) {
    if (cmp(tids[i - 1]!, tids[i]!) >= 0) {
      throw new Error(`tid #${i} ${tids[i]!.toString('hex')} does not follow ${tids[i - 1]!.toString('hex')}`);
    }
  }
}

/** What the suite committed: transactions in order and every oid's revisions. */
export interface ModelTxn {
  tid: Buffer;
  status: string;
  user: string;
  description: string;
  writes: Array<{ oid: Buffer; data: Buffer }>;
}

export class Model {
  readonly txns: ModelTxn[] = [];
  /** oid hex -> revisions oldest first. */
  readonly revisions = new Map<string, Array<{ tid: Buffer; data: Buffer }>>();

  serial(oid: Buffer): Buffer {
    return this.revisions.get(oid.toString('hex'))?.at(-1)?.tid ?? Z64;
  }

  async commit(
    storage: ConformanceStorage,
    writes: Array<[oid: Buffer, data: Buffer]>,
    meta: { user?: string; description?: string } = {},
    options: { tid?: Buffer; status?: string } = {},
  ): Promise<Buffer> {
    const txn: TransactionMeta = { ...meta };
    const tid = await commit(
      storage,
      writes.map(([oid, data]) => [oid, this.serial(oid), data] as const),
      txn,
      options,
    );
    this.txns.push({
      tid,
      status: options.status ?? ' ',
      user: meta.user ?? '',
      description: meta.description ?? '',
      writes: writes.map(([oid, data]) => ({ oid, data })),
    });
    for (const [oid, data] of writes) {
      const k = oid.toString('hex');
      const list = this.revisions.get(k) ?? [];
      list.push({ tid, data });
      this.revisions.set(k, list);
    }
    return tid;
  }

  /** Expected loadBefore(oid, tid): the latest revision before tid, with the next one's tid. */
  before(oid: Buffer, tid: Buffer): { data: Buffer; tid: Buffer; endTid: Buffer | null } | null {
    const revs = this.revisions.get(oid.toString('hex')) ?? [];
    for (let i = revs.length - 1; i >= 0; i--) {
      if (cmp(revs[i]!.tid, tid) < 0) return { data: revs[i]!.data, tid: revs[i]!.tid, endTid: revs[i + 1]?.tid ?? null };
    }
    return null;
  }
}

/** Compare the iterator's output with the model and with the storage's own loads. */
export async function expectIteratorMatches(
  storage: ConformanceStorage,
  got: readonly TransactionRecord[],
  want: readonly ModelTxn[],
): Promise<void> {
  expect(got.map((t) => hexOf(t.tid))).toEqual(want.map((t) => hexOf(t.tid)));
  for (const [i, t] of got.entries()) {
    const w = want[i]!;
    expect(t.status).toBe(w.status);
    expect(t.user.toString('utf8')).toBe(w.user);
    expect(t.description.toString('utf8')).toBe(w.description);
    expect(t.records.map((r) => [hexOf(r.oid), hexOf(r.tid), hexOf(r.data)])).toEqual(
      w.writes.map((x) => [hexOf(x.oid), hexOf(t.tid), hexOf(x.data)]),
    );
    if (i > 0) expect(t.pos).toBe(got[i - 1]!.pos + got[i - 1]!.length + 8);
    for (const r of t.records) {
      expect(r.dataTxn).toBeNull();
      expect(await storage.loadSerial(r.oid, r.tid)).toEqual(r.data);
    }
  }
}

/** Follow the iterator in the background; `waitFor(n)` resolves once n transactions arrived. */
export function follow(
  storage: ConformanceStorage,
  start: Buffer | null,
  signal?: AbortSignal,
): { got: TransactionRecord[]; done: Promise<void>; waitFor: (n: number) => Promise<void> } {
  const got: TransactionRecord[] = [];
  const waker: { wake: (() => void) | null } = { wake: null };
  const done = (async () => {
    for await (const t of storage.iterator(start, null, { follow: true, signal })) {
      got.push(t);
      waker.wake?.();
    }
  })();
  const ended = done.then(() => {
    throw new Error(`follow iterator ended after ${got.length} transactions`);
  });
  ended.catch(() => undefined);
  const waitFor = async (n: number): Promise<void> => {
    while (got.length < n) await Promise.race([new Promise<void>((r) => (waker.wake = r)), ended]);
  };
  return { got, done, waitFor };
}

const data = (s: string): Buffer => Buffer.from(s, 'utf8');

/**
 * Register the conformance suite for `name` against `makeStorage`, which must
 * return a fresh empty writable storage honouring `options.now`.
 */
export function defineConformanceSuite(name: string, makeStorage: StorageFactory): void {
  async function withStorage(
    fn: (s: ConformanceStorage) => Promise<void>,
    options: StorageFactoryOptions = { now: fakeClock() },
  ): Promise<void> {
    const { storage, cleanup } = await makeStorage(options);
    try {
      await fn(storage);
    } finally {
      await storage.close();
      await cleanup();
    }
  }

  describe(`${name}: basics`, () => {
    it('starts empty', () =>
      withStorage(async (s) => {
        expect(s.lastTransaction()).toEqual(Z64);
        expect(s.objectCount).toBe(0);
        await expect(s.load(oidOf(1))).rejects.toBeInstanceOf(POSKeyError);
        await expect(s.history(oidOf(1))).rejects.toBeInstanceOf(POSKeyError);
        expect(await collect(s.iterator())).toEqual([]);
        expect(await collect(s.iterator(Z64, Buffer.alloc(8, 0xff)))).toEqual([]);
      }));

    it('hands out distinct, increasing 8-byte oids, never reusing a stored one', () =>
      withStorage(async (s) => {
        const oids = Array.from({ length: 100 }, () => s.newOid());
        for (const o of oids) expect(o.length).toBe(8);
        expectStrictlyIncreasing(oids);
        expect(cmp(oids[0]!, Z64)).toBeGreaterThan(0);
        // An oid stored explicitly is never handed out later.
        await commit(s, [[oidOf(5000), Z64, data('x')]]);
        expect(cmp(s.newOid(), oidOf(5000))).toBeGreaterThan(0);
      }));

    // ZODB's FileStorage.store raises its max oid as soon as a larger oid is stored.
    it('does not hand out, within a transaction, an oid that transaction stored explicitly', () =>
      withStorage(async (s) => {
        const txn = {};
        await s.tpcBegin(txn);
        s.store(oidOf(3), Z64, data('explicit'), txn);
        const fresh = [s.newOid(), s.newOid(), s.newOid()];
        for (const o of fresh) expect(cmp(o, oidOf(3))).toBeGreaterThan(0);
        await s.tpcAbort(txn);
      }));

    it('stores and loads, then loads each update (serial chain)', () =>
      withStorage(async (s) => {
        const oid = s.newOid();
        let serial = await commit(s, [[oid, Z64, data('v7')]]);
        expect(await s.load(oid)).toEqual({ data: data('v7'), tid: serial });
        for (let i = 13; i < 22; i++) {
          const next = await commit(s, [[oid, serial, data(`v${i}`)]]);
          expect(cmp(next, serial)).toBeGreaterThan(0);
          serial = next;
          expect(await s.load(oid)).toEqual({ data: data(`v${i}`), tid: serial });
        }
        expect(s.lastTransaction()).toEqual(serial);
      }));

    it('stores two objects in one transaction under the same tid', () =>
      withStorage(async (s) => {
        const [a, b] = [s.newOid(), s.newOid()];
        const tid = await commit(s, [
          [a, Z64, data('a')],
          [b, Z64, data('b')],
        ]);
        expect(await s.load(a)).toEqual({ data: data('a'), tid });
        expect(await s.load(b)).toEqual({ data: data('b'), tid });
      }));

    it('raises ConflictError naming the oid and both serials; the storage is unchanged', () =>
      withStorage(async (s) => {
        const oid = s.newOid();
        const t1 = await commit(s, [[oid, Z64, data('1')]]);
        const t2 = await commit(s, [[oid, t1, data('2')]]);
        const size = s.getSize();
        for (const stale of [t1, Z64]) {
          const txn = {};
          await s.tpcBegin(txn);
          let err: unknown;
          try {
            s.store(oid, stale, data('3'), txn);
          } catch (e) {
            err = e;
          }
          expect(err).toBeInstanceOf(ConflictError);
          const c = err as ConflictError;
          expect(c.name).toBe('ConflictError');
          expect(c.oid).toEqual(oid);
          expect(c.expectedSerial).toEqual(stale);
          expect(c.currentSerial).toEqual(t2);
          expect(c.message).toContain(oid.toString('hex'));
          expect(c.message).toContain(t2.toString('hex'));
          await s.tpcAbort(txn);
        }
        expect(s.getSize()).toBe(size);
        expect(s.lastTransaction()).toEqual(t2);
        expect(await s.load(oid)).toEqual({ data: data('2'), tid: t2 });
      }));

    // ZODB's FileStorage.store only compares serials when the oid has a
    // current record; a new object's serial is not checked (nor is MappingStorage's).
    it('accepts a new object stored with a non-zero serial, as ZODB does', () =>
      withStorage(async (s) => {
        const oid = s.newOid();
        const tid = await commit(s, [[oid, Buffer.from('0123456789abcdef', 'hex'), data('new')]]);
        expect(await s.load(oid)).toEqual({ data: data('new'), tid });
      }));

    it('writes nothing for transactions that store nothing, as ZODB does, and still gives each a later tid (the commit lock is released)', () =>
      withStorage(async (s) => {
        const first = await commit(s, [[s.newOid(), Z64, data('one')]]);
        const size = s.getSize();
        const published: string[] = [];
        const sub = s.commits$.subscribe((c) => published.push(c.tid.toString('hex')));
        const tids = [await commit(s, []), await commit(s, []), await commit(s, [])];
        const next = await commit(s, [[s.newOid(), Z64, data('two')]]);
        sub.unsubscribe();
        expectStrictlyIncreasing([first, ...tids, next]);
        expect(published).toEqual([next.toString('hex')]);
        expect(s.getSize()).toBeGreaterThan(size);
        const got = await collect(s.iterator());
        expect(got.map((t) => [hexOf(t.tid), t.records.length])).toEqual([
          [hexOf(first), 1],
          [hexOf(next), 1],
        ]);
      }));

    it('leaves the last tid and the file as they were after a transaction that stores nothing', () =>
      withStorage(async (s) => {
        expect(await commit(s, [])).not.toEqual(Z64);
        expect(s.lastTransaction()).toEqual(Z64);
        const oid = s.newOid();
        const first = await commit(s, [[oid, Z64, data('one')]]);
        const size = s.getSize();
        const empty = await commit(s, []);
        expect(Buffer.compare(empty, first)).toBeGreaterThan(0);
        expect(s.lastTransaction()).toEqual(first);
        expect(s.getSize()).toBe(size);
        // Aborted after its vote, it cuts nothing either.
        const txn = { description: 'aborted' };
        await s.tpcBegin(txn);
        await s.tpcVote(txn);
        await s.tpcAbort(txn);
        expect(s.getSize()).toBe(size);
        expect(await s.load(oid)).toEqual({ data: data('one'), tid: first });
      }));

    it('counts objects, not revisions; getSize grows with every commit and equals its end', () =>
      withStorage(async (s) => {
        const ends: number[] = [];
        const sub = s.commits$.subscribe((c) => ends.push(c.end));
        const m = new Model();
        const [a, b, c] = [s.newOid(), s.newOid(), s.newOid()];
        let size = s.getSize();
        const steps: Array<[Array<[Buffer, Buffer]>, number]> = [
          [[[a, data('a1')]], 1],
          [[[a, data('a2')]], 1],
          [[[b, data('b1')], [c, data('c1')]], 3],
          [[[c, data('c2')], [a, data('a3')]], 3],
        ];
        for (const [writes, count] of steps) {
          await m.commit(s, writes);
          expect(s.objectCount).toBe(count);
          expect(s.getSize()).toBeGreaterThan(size);
          size = s.getSize();
          expect(ends.at(-1)).toBe(size);
        }
        sub.unsubscribe();
      }));

    it('writes after an abort, and an abort after vote keeps earlier data', () =>
      withStorage(async (s) => {
        const a = s.newOid();
        const ta = await commit(s, [[a, Z64, data('kept')]]);
        const size = s.getSize();
        for (const vote of [false, true]) {
          const txn = {};
          await s.tpcBegin(txn);
          s.store(s.newOid(), Z64, data('dropped'), txn);
          s.store(a, ta, data('dropped too'), txn);
          if (vote) await s.tpcVote(txn);
          await s.tpcAbort(txn);
          expect(s.getSize()).toBe(size);
          expect(s.lastTransaction()).toEqual(ta);
          expect(await s.load(a)).toEqual({ data: data('kept'), tid: ta });
        }
        const b = s.newOid();
        const tb = await commit(s, [[b, Z64, data('after')], [a, ta, data('a2')]]);
        expect(await s.load(b)).toEqual({ data: data('after'), tid: tb });
        expect(await s.load(a)).toEqual({ data: data('a2'), tid: tb });
        expect((await collect(s.iterator())).map((t) => hexOf(t.tid))).toEqual([hexOf(ta), hexOf(tb)]);
      }));

    it('makes lastTransaction and load agree as soon as tpcFinish is called', () =>
      withStorage(async (s) => {
        const oid = s.newOid();
        const t1 = await commit(s, [[oid, Z64, data('x')]]);
        const txn = {};
        await s.tpcBegin(txn);
        s.store(oid, t1, data('y'), txn);
        await s.tpcVote(txn);
        expect(s.lastTransaction()).toEqual(t1);
        expect(await s.load(oid)).toEqual({ data: data('x'), tid: t1 });
        const finishing = s.tpcFinish(txn);
        const last = s.lastTransaction();
        const loaded = await s.load(oid);
        const t2 = await finishing;
        expect(last).toEqual(t2);
        expect(loaded).toEqual({ data: data('y'), tid: t2 });
      }));
  });

  describe(`${name}: tids`, () => {
    it('derives tids from the clock and keeps them strictly increasing when it steps back', async () => {
      const base = CLOCK_START_MS;
      const readings = [base, base + 5000, base - 3_600_000, base - 86_400_000, base + 5000, base + 5001, base + 60_000];
      await withStorage(
        async (s) => {
          const tids: Buffer[] = [];
          for (let i = 0; i < readings.length; i++) tids.push(await commit(s, [[oidOf(1), tids.at(-1) ?? Z64, data(`${i}`)]]));
          expectStrictlyIncreasing(tids);
          expect(tids[0]).toEqual(tidFromTime(readings[0]!));
          expect(tids[1]).toEqual(tidFromTime(readings[1]!));
          // A clock reading not after the last tid gives the last tid + 1 (ZODB's laterThan).
          expect(tids[2]).toEqual(tidPlusOne(tids[1]!));
          expect(tids[3]).toEqual(tidPlusOne(tids[2]!));
          expect(tids[4]).toEqual(tidPlusOne(tids[3]!));
          expect(tids[5]).toEqual(tidFromTime(readings[5]!));
          expect(tids[6]).toEqual(tidFromTime(readings[6]!));
        },
        { now: scriptedClock(readings) },
      );
    });

    it('commits under an explicit tid only when it exceeds the last one, with status p', () =>
      withStorage(async (s) => {
        const oid = s.newOid();
        const t1 = await commit(s, [[oid, Z64, data('1')]]);
        const below = Buffer.alloc(8);
        below.writeBigUInt64BE(t1.readBigUInt64BE(0) - 1n, 0);
        for (const bad of [t1, below, Z64]) {
          await expect(s.tpcBegin({}, { tid: bad })).rejects.toBeInstanceOf(StorageTransactionError);
        }
        await expect(s.tpcBegin({}, { tid: Buffer.alloc(7, 0xff) })).rejects.toBeInstanceOf(ZrsError);
        await expect(s.tpcBegin({}, { status: 'c' })).rejects.toBeInstanceOf(ZrsError);
        await expect(s.tpcBegin({}, { status: 'pp' })).rejects.toBeInstanceOf(ZrsError);
        // The failed begins released the commit lock.
        const wanted = tidPlusOne(t1);
        const t2 = await commit(s, [[oid, t1, data('2')]], {}, { tid: wanted, status: 'p' });
        expect(t2).toEqual(wanted);
        const far = Buffer.from('7fffffffffffffff', 'hex');
        const t3 = await commit(s, [[oid, t2, data('3')]], {}, { tid: far });
        expect(t3).toEqual(far);
        const got = await collect(s.iterator());
        expect(got.map((t) => [hexOf(t.tid), t.status])).toEqual([
          [hexOf(t1), ' '],
          [hexOf(t2), 'p'],
          [hexOf(far), ' '],
        ]);
        // Clock-chosen tids continue above an explicit one.
        const t4 = await commit(s, [[s.newOid(), Z64, data('t4')]]);
        expect(t4).toEqual(tidPlusOne(far));
      }));
  });

  describe(`${name}: revisions and history`, () => {
    async function build(s: ConformanceStorage): Promise<{ m: Model; oid: Buffer; other: Buffer }> {
      const m = new Model();
      const [oid, other] = [s.newOid(), s.newOid()];
      await m.commit(s, [[other, data('o1')]]);
      await m.commit(s, [[oid, data('r1')]], { user: 'alice', description: 'create' });
      await m.commit(s, [[oid, data('r2')], [other, data('o2')]], { user: 'bob', description: 'second' });
      await m.commit(s, [[other, data('o3')]]);
      await m.commit(s, [[oid, data('r3-longer')]], { user: 'Jürgen Müller', description: 'dritte' });
      await m.commit(s, [[other, data('o4')]]);
      await m.commit(s, [[oid, data('r4')]], { description: 'fourth' });
      // Consecutive tids (ZODB's testLoadBeforeConsecutiveTids).
      const last = m.txns.at(-1)!.tid;
      await m.commit(s, [[oid, data('r5')]], {}, { tid: tidPlusOne(last) });
      await m.commit(s, [[other, data('o4')]], {}, { tid: tidPlusOne(tidPlusOne(last)) });
      return { m, oid, other };
    }

    it('loadSerial returns every revision; other tids raise POSKeyError', () =>
      withStorage(async (s) => {
        const { m, oid, other } = await build(s);
        for (const o of [oid, other]) {
          const revs = m.revisions.get(o.toString('hex'))!;
          const tids = new Set(revs.map((r) => hexOf(r.tid)));
          for (const r of revs) expect(await s.loadSerial(o, r.tid)).toEqual(r.data);
          for (const t of m.txns) {
            if (!tids.has(hexOf(t.tid))) await expect(s.loadSerial(o, t.tid)).rejects.toBeInstanceOf(POSKeyError);
          }
        }
        await expect(s.loadSerial(oidOf(999), m.txns[0]!.tid)).rejects.toBeInstanceOf(POSKeyError);
      }));

    it('loadBefore at, just after and between every tid, including endTid', () =>
      withStorage(async (s) => {
        const { m, oid, other } = await build(s);
        const probes: Buffer[] = [Z64, Buffer.from('0000000000000001', 'hex')];
        for (const t of m.txns) probes.push(t.tid, tidPlusOne(t.tid));
        probes.push(Buffer.alloc(8, 0xff));
        for (const o of [oid, other]) {
          for (const p of probes) {
            const want = m.before(o, p);
            expect(await s.loadBefore(o, p), `oid ${hexOf(o)} before ${hexOf(p)}`).toEqual(want);
          }
        }
        // The creating transaction has nothing before it (testLoadBeforeCreation).
        expect(await s.loadBefore(oid, m.revisions.get(oid.toString('hex'))![0]!.tid)).toBeNull();
      }));

    it('loadBefore of an unknown oid raises POSKeyError, as ZODB', () =>
      withStorage(async (s) => {
        await commit(s, [[oidOf(1), Z64, data('x')]]);
        await expect(s.loadBefore(oidOf(2), Buffer.alloc(8, 0xff))).rejects.toBeInstanceOf(POSKeyError);
      }));

    it('history lists revisions newest first with size, time, user, description and extension', () =>
      withStorage(async (s) => {
        const { m, oid } = await build(s);
        const revs = m.revisions.get(oid.toString('hex'))!;
        const all = await s.history(oid, 100);
        expect(all.map((h) => hexOf(h.tid))).toEqual(revs.map((r) => hexOf(r.tid)).reverse());
        expect(all.map((h) => h.size)).toEqual(revs.map((r) => r.data.length).reverse());
        const byTid = new Map(m.txns.map((t) => [hexOf(t.tid), t]));
        for (const h of all) {
          const t = byTid.get(hexOf(h.tid))!;
          expect(h.user.toString('utf8')).toBe(t.user);
          expect(h.description.toString('utf8')).toBe(t.description);
          expect(h.time).toBe(tidToSeconds(h.tid));
          expect(h.extension).toEqual({});
        }
        expect(await s.history(oid)).toEqual(all.slice(0, 1));
        for (const n of [1, 2, 3, revs.length, revs.length + 1]) expect(await s.history(oid, n)).toEqual(all.slice(0, n));
      }));

    it('history carries the transaction extension', () =>
      withStorage(async (s) => {
        const oid = s.newOid();
        const txn: TransactionMeta = { user: 'u', description: 'd', extension: { app: 'refpeer', n: 1 } };
        const tid = await commit(s, [[oid, Z64, data('x')]], txn);
        const [h] = await s.history(oid, 5);
        expect(h!.tid).toEqual(tid);
        expect(h!.extension).toEqual({ app: 'refpeer', n: 1 });
        const [t] = await collect(s.iterator());
        expect(t!.extensionBytes.length).toBeGreaterThan(0);
      }));
  });

  describe(`${name}: two-phase commit state`, () => {
    it('refuses store, restore, vote and finish outside a transaction', () =>
      withStorage(async (s) => {
        const txn = {};
        expect(() => s.store(oidOf(1), Z64, data('x'), txn)).toThrow(StorageTransactionError);
        expect(() => s.restore(oidOf(1), Z64, data('x'), null, txn)).toThrow(StorageTransactionError);
        await expect(s.tpcVote(txn)).rejects.toBeInstanceOf(StorageTransactionError);
        await expect(s.tpcFinish(txn)).rejects.toBeInstanceOf(StorageTransactionError);
        await s.tpcAbort(txn); // not committing: a no-op
        expect(await collect(s.iterator())).toEqual([]);
      }));

    it('refuses calls with a different transaction object; aborting that one is a no-op', () =>
      withStorage(async (s) => {
        const txn = {};
        const other = {};
        await s.tpcBegin(txn);
        await expect(s.tpcBegin(txn)).rejects.toBeInstanceOf(StorageTransactionError);
        expect(() => s.store(oidOf(1), Z64, data('x'), other)).toThrow(StorageTransactionError);
        s.store(oidOf(1), Z64, data('x'), txn);
        await expect(s.tpcVote(other)).rejects.toBeInstanceOf(StorageTransactionError);
        await expect(s.tpcFinish(other)).rejects.toBeInstanceOf(StorageTransactionError);
        await s.tpcAbort(other);
        await s.tpcVote(txn);
        await expect(s.tpcFinish(other)).rejects.toBeInstanceOf(StorageTransactionError);
        await s.tpcAbort(other);
        const tid = await s.tpcFinish(txn);
        expect(await s.load(oidOf(1))).toEqual({ data: data('x'), tid });
      }));

    it('refuses finish before vote, and store or vote after vote', () =>
      withStorage(async (s) => {
        const txn = {};
        await s.tpcBegin(txn);
        s.store(oidOf(1), Z64, data('x'), txn);
        await expect(s.tpcFinish(txn)).rejects.toBeInstanceOf(StorageTransactionError);
        await s.tpcVote(txn);
        expect(() => s.store(oidOf(2), Z64, data('y'), txn)).toThrow(StorageTransactionError);
        await expect(s.tpcVote(txn)).rejects.toBeInstanceOf(StorageTransactionError);
        const tid = await s.tpcFinish(txn);
        await expect(s.tpcFinish(txn)).rejects.toBeInstanceOf(StorageTransactionError);
        expect(s.lastTransaction()).toEqual(tid);
        expect(s.objectCount).toBe(1);
      }));

    it('makes each tpcBegin wait until the transaction in progress finishes or aborts', () =>
      withStorage(async (s) => {
        const a = {};
        const b = {};
        const c = {};
        await s.tpcBegin(a);
        const order: string[] = [];
        const beginB = s.tpcBegin(b).then(() => order.push('b begun'));
        const beginC = s.tpcBegin(c).then(() => order.push('c begun'));
        s.store(oidOf(1), Z64, data('a'), a);
        await s.tpcVote(a);
        expect(order).toEqual([]);
        order.push('a finishing');
        const ta = await s.tpcFinish(a);
        await beginB;
        expect(order).toEqual(['a finishing', 'b begun']);
        s.store(oidOf(1), ta, data('b'), b);
        order.push('b aborting');
        await s.tpcAbort(b);
        await beginC;
        expect(order).toEqual(['a finishing', 'b begun', 'b aborting', 'c begun']);
        s.store(oidOf(1), ta, data('c'), c);
        await s.tpcVote(c);
        const tc = await s.tpcFinish(c);
        expect(await s.load(oidOf(1))).toEqual({ data: data('c'), tid: tc });
      }));

    it('serialises 8 concurrent writers of 50 transactions each', () =>
      withStorage(async (s) => {
        const WRITERS = 8;
        const TXNS = 50;
        const emitted: CommittedTransaction[] = [];
        const sub = s.commits$.subscribe((c) => emitted.push(c));
        const counter = oidOf(1);
        await commit(s, [[counter, Z64, data('0')]]);
        let inside = 0;
        let maxInside = 0;
        const finished: Buffer[][] = [];
        const writer = async (w: number): Promise<void> => {
          const own = oidOf(100 + w);
          const mine: Buffer[] = [];
          let serial = Z64;
          for (let i = 0; i < TXNS; i++) {
            const txn = { user: `writer ${w}`, description: `txn ${i}` };
            await s.tpcBegin(txn);
            inside += 1;
            maxInside = Math.max(maxInside, inside);
            // Read inside the transaction: the commit lock makes this current.
            const cur = await s.load(counter);
            s.store(counter, cur.tid, data(String(Number(cur.data.toString()) + 1)), txn);
            s.store(own, serial, data(`${w}:${i}`), txn);
            await s.tpcVote(txn);
            const finishing = s.tpcFinish(txn);
            inside -= 1;
            serial = await finishing;
            mine.push(serial);
          }
          finished[w] = mine;
        };
        await Promise.all(Array.from({ length: WRITERS }, (_, w) => writer(w)));
        sub.unsubscribe();
        expect(maxInside).toBe(1);
        expect((await s.load(counter)).data.toString()).toBe(String(WRITERS * TXNS));
        expect(emitted.length).toBe(WRITERS * TXNS + 1);
        expectStrictlyIncreasing(emitted.map((c) => c.tid));
        for (let i = 1; i < emitted.length; i++) expect(emitted[i]!.pos).toBe(emitted[i - 1]!.end);
        const got = await collect(s.iterator());
        expect(got.map((t) => hexOf(t.tid))).toEqual(emitted.map((c) => hexOf(c.tid)));
        for (let w = 0; w < WRITERS; w++) {
          const mine = finished[w]!;
          expectStrictlyIncreasing(mine);
          const hist = await s.history(oidOf(100 + w), 1000);
          expect(hist.map((h) => hexOf(h.tid))).toEqual(mine.map(hexOf).reverse());
          expect((await s.load(oidOf(100 + w))).data.toString()).toBe(`${w}:${TXNS - 1}`);
        }
        expect(s.objectCount).toBe(WRITERS + 1);
      }));
  });

  describe(`${name}: commits$`, () => {
    it('emits every finished transaction once, in tid order, by the time tpcFinish resolves; never aborted ones', () =>
      withStorage(async (s) => {
        const emitted: CommittedTransaction[] = [];
        const sub = s.commits$.subscribe((c) => emitted.push(c));
        const [a, b] = [oidOf(1), oidOf(2)];
        const expected: Array<{ tid: Buffer; status: string; oids: Buffer[] }> = [];
        const run = async (writes: Write[], status?: string, abortAt?: 'store' | 'vote'): Promise<void> => {
          const txn = {};
          const before = emitted.length;
          await s.tpcBegin(txn, status ? { status } : {});
          for (const [o, ser, d] of writes) s.store(o, ser, d, txn);
          if (abortAt === 'store') return s.tpcAbort(txn);
          await s.tpcVote(txn);
          expect(emitted.length).toBe(before);
          if (abortAt === 'vote') return s.tpcAbort(txn);
          const tid = await s.tpcFinish(txn).then((t) => {
            // Published no later than tpcFinish's resolution.
            expect(emitted.map((c) => hexOf(c.tid))).toContain(hexOf(t));
            return t;
          });
          expected.push({ tid, status: status ?? ' ', oids: writes.map((w) => w[0]) });
        };
        await run([[b, Z64, data('b')], [a, Z64, data('a')]]);
        await run([[a, expected[0]!.tid, data('a2')]], 'p');
        await run([], undefined, 'store');
        await run([[b, expected[0]!.tid, data('b2')]], undefined, 'vote');
        await run([[b, expected[0]!.tid, data('b3')]], undefined, 'store');
        await run([[b, expected[0]!.tid, data('b4')], [oidOf(3), Z64, data('c')]]);
        sub.unsubscribe();
        const got = await collect(s.iterator());
        expect(emitted.map((c) => [hexOf(c.tid), c.status, c.oids.map(hexOf)])).toEqual(
          expected.map((e) => [hexOf(e.tid), e.status, e.oids.map(hexOf)]),
        );
        expect(emitted.map((c) => [c.pos, c.end])).toEqual(got.map((t) => [t.pos, t.pos + t.length + 8]));
        expect(emitted.at(-1)!.end).toBe(s.getSize());
      }));

    it('completes when the storage closes', async () => {
      const { storage, cleanup } = await makeStorage({ now: fakeClock() });
      try {
        let completed = false;
        storage.commits$.subscribe({ complete: () => (completed = true) });
        await commit(storage, [[storage.newOid(), Z64, data('x')]]);
        expect(completed).toBe(false);
        await storage.close();
        expect(completed).toBe(true);
      } finally {
        await storage.close();
        await cleanup();
      }
    });
  });

  describe(`${name}: iterator`, () => {
    async function build(s: ConformanceStorage): Promise<Model> {
      const m = new Model();
      for (let i = 0; i < 12; i++) {
        const writes: Array<[Buffer, Buffer]> = [];
        for (let j = 0; j <= i % 4; j++) writes.push([oidOf(1 + ((i * 3 + j) % 5)), data(`t${i}r${j}`.repeat(1 + j))]);
        await m.commit(s, writes, { user: `u${i}`, description: i % 2 ? `d${i}` : '' });
      }
      return m;
    }

    it('yields the whole file, matching what was stored and what loads return', () =>
      withStorage(async (s) => {
        const m = await build(s);
        const got = await collect(s.iterator());
        await expectIteratorMatches(s, got, m.txns);
        for (const [k, revs] of m.revisions) {
          const oid = Buffer.from(k, 'hex');
          expect(await s.load(oid)).toEqual({ data: revs.at(-1)!.data, tid: revs.at(-1)!.tid });
        }
        // Repeatable, and two iterators interleaved see the same thing.
        // Records are built on demand (not own properties): compare them explicitly.
        const withRecords = (t: TransactionRecord): object => ({ ...t, records: t.records });
        expect((await collect(s.iterator())).map(withRecords)).toEqual(got.map(withRecords));
        const [i1, i2] = [s.iterator(), s.iterator()];
        for (const want of got) {
          expect(withRecords((await i1.next()).value as TransactionRecord)).toEqual(withRecords(want));
          expect(withRecords((await i2.next()).value as TransactionRecord)).toEqual(withRecords(want));
        }
        expect((await i1.next()).done).toBe(true);
      }));

    it('honours inclusive start/stop, tids between transactions and ranges beyond the end', () =>
      withStorage(async (s) => {
        const m = await build(s);
        const tids = m.txns.map((t) => t.tid);
        const all = await collect(s.iterator());
        const slice = async (start: Buffer | null, stop: Buffer | null): Promise<Array<string | null>> =>
          (await collect(s.iterator(start, stop))).map((t) => hexOf(t.tid));
        const want = (from: number, to: number): Array<string | null> => all.slice(from, to + 1).map((t) => hexOf(t.tid));
        for (let i = 0; i < tids.length; i += 3) {
          for (let j = i; j < tids.length; j += 2) {
            expect(await slice(tids[i]!, tids[j]!)).toEqual(want(i, j));
            // Between transactions: start after tid i, stop after tid j.
            expect(await slice(tidPlusOne(tids[i]!), tidPlusOne(tids[j]!))).toEqual(want(i + 1, j));
          }
          expect(await slice(tids[i]!, null)).toEqual(want(i, tids.length - 1));
          expect(await slice(null, tids[i]!)).toEqual(want(0, i));
        }
        expect(await slice(Z64, null)).toEqual(want(0, tids.length - 1));
        expect(await slice(tidPlusOne(tids.at(-1)!), null)).toEqual([]);
        expect(await slice(Buffer.alloc(8, 0xff), Buffer.alloc(8, 0xff))).toEqual([]);
        expect(await slice(null, Z64)).toEqual([]);
        expect(await slice(tids[5]!, tids[4]!)).toEqual([]);
        expect(await slice(tids[5]!, tids[5]!)).toEqual(want(5, 5));
      }));

    it('does not show a transaction that is in progress (voted, not finished)', () =>
      withStorage(async (s) => {
        const m = await build(s);
        const txn = {};
        await s.tpcBegin(txn);
        s.store(oidOf(1), m.serial(oidOf(1)), data('pending'), txn);
        await s.tpcVote(txn);
        expect((await collect(s.iterator())).length).toBe(m.txns.length);
        await s.tpcAbort(txn);
        expect((await collect(s.iterator())).length).toBe(m.txns.length);
      }));

    it('follows new commits and stops when its AbortSignal fires', () =>
      withStorage(async (s) => {
        const m = new Model();
        await m.commit(s, [[oidOf(1), data('a')]]);
        await m.commit(s, [[oidOf(2), data('b')]]);
        const ctl = new AbortController();
        const f = follow(s, null, ctl.signal);
        await f.waitFor(2);
        for (let i = 0; i < 5; i++) {
          await m.commit(s, [[oidOf(1 + (i % 3)), data(`n${i}`)]]);
          await f.waitFor(3 + i);
        }
        const voted = {};
        await s.tpcBegin(voted);
        await s.tpcVote(voted);
        await s.tpcAbort(voted);
        ctl.abort();
        await f.done;
        await expectIteratorMatches(s, f.got, m.txns);
        // A late start only sees transactions from there on.
        const ctl2 = new AbortController();
        const late = follow(s, m.txns[5]!.tid, ctl2.signal);
        await late.waitFor(2);
        await m.commit(s, [[oidOf(2), data('late')]]);
        await late.waitFor(3);
        ctl2.abort();
        await late.done;
        expect(late.got.map((t) => hexOf(t.tid))).toEqual(m.txns.slice(5).map((t) => hexOf(t.tid)));
      }));

    it('stops following when the storage closes', async () => {
      const { storage, cleanup } = await makeStorage({ now: fakeClock() });
      try {
        const f = follow(storage, null);
        await commit(storage, [[storage.newOid(), Z64, data('x')]]);
        await f.waitFor(1);
        await storage.close();
        await f.done;
        expect(f.got.length).toBe(1);
      } finally {
        await storage.close();
        await cleanup();
      }
    });
  });
}
