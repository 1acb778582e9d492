// Pack: byte-identical with ZODB's own pack of the `packed` fixture, MVCC reads
// after the pack time unchanged for every pack time, GC only with a references
// function, blobs of removed revisions deleted, and commits during a pack kept.

import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { rename } from 'node:fs/promises';
import { join } from 'node:path';
import { setImmediate as tick } from 'node:timers/promises';
import { afterAll, describe, expect, it } from 'vitest';
import { POSKeyError, PickleError, ReadOnlyError } from '../../src/errors.js';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { GarbageCollectionError, packStorage, packTimeToTid } from '../../src/storage/pack.js';
import { zodbReferences } from '../../src/storage/references.js';
import { oidKey, oidOfKey } from '../../src/storage/scan.js';
import { Z64, tidPlusOne, tidToSeconds } from '../../src/storage/timestamp.js';
import type { TransactionRecord } from '../../src/storage/types.js';
import { cleanupTempDirs, copyZodbFixture, fixturePath, h2b, hex, readManifest, tempDir } from '../helpers/fixtures.js';

afterAll(cleanupTempDirs);

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const oid = (n: number): Buffer => h2b(n.toString(16).padStart(16, '0'));
/** A pack time whose tid is at or just after `tid` (and before any tid a second later). */
const timeOf = (tid: Buffer): number => tidToSeconds(tid) + 1e-6;

/** A record as ZODB 5 writes it: a class pickle, then a state that is a list of persistent ids (the bare oids `refs`). */
function recordReferring(...refs: number[]): Buffer {
  return recordReferringAll(refs);
}

function recordReferringAll(refs: number[]): Buffer {
  const cls = Buffer.from('\x80\x03capp\nK\nq\x00.', 'latin1');
  const ids = refs.map((n) => Buffer.concat([Buffer.from([0x43, 8]), oid(n), Buffer.from('Q', 'latin1')]));
  return Buffer.concat([cls, Buffer.from('\x80\x03](', 'latin1'), ...ids, Buffer.from('e.', 'latin1')]);
}

/** Commit `writes` (oid number, data), each over the object's current revision (a new object when it has none). */
async function commitOver(fs: FileStorage, writes: Array<[number, Buffer]>): Promise<Buffer> {
  const txn = {};
  await fs.tpcBegin(txn);
  for (const [n, data] of writes) fs.store(oid(n), await fs.load(oid(n)).then((r) => r.tid, () => Z64), data, txn);
  await fs.tpcVote(txn);
  return fs.tpcFinish(txn);
}

/** A temp copy of the fixture `dir`; for `packed`, the file just before ZODB's pack. */
async function copyOf(dir: string, prepack = false): Promise<{ tmp: string; path: string; blobDir?: string }> {
  const tmp = await copyZodbFixture(dir);
  const path = join(tmp, 'Data.fs');
  if (prepack) await rename(join(tmp, 'Data.fs.prepack'), path);
  const blobDir = existsSync(join(tmp, 'blobs')) ? join(tmp, 'blobs') : undefined;
  return blobDir ? { tmp, path, blobDir } : { tmp, path };
}

async function allTids(fs: FileStorage): Promise<Buffer[]> {
  const out: Buffer[] = [];
  for await (const t of fs.iterator()) out.push(t.tid);
  return out;
}

/** What a reader sees: `loadBefore` of every oid at every given tid ("none" for no data). */
async function mvccView(fs: FileStorage, oids: Buffer[], tids: Buffer[]): Promise<Map<string, string>> {
  const view = new Map<string, string>();
  for (const o of oids) {
    for (const t of tids) {
      let v: string;
      try {
        const r = await fs.loadBefore(o, t);
        v = r ? `${hex(r.tid)} ${hex(r.endTid)} ${sha(r.data)}` : 'none';
      } catch (err) {
        if (!(err instanceof POSKeyError)) throw err;
        v = 'none'; // an undone creation: as absent as no record at all
      }
      view.set(`${hex(o)}@${hex(t)}`, v);
    }
  }
  return view;
}

async function currentView(fs: FileStorage, oids: Buffer[]): Promise<Map<string, string>> {
  const view = new Map<string, string>();
  for (const o of oids) {
    try {
      const r = await fs.load(o);
      view.set(hex(o)!, `${hex(r.tid)} ${sha(r.data)}`);
    } catch (err) {
      if (!(err instanceof POSKeyError)) throw err;
      view.set(hex(o)!, 'none');
    }
  }
  return view;
}

const oidsOf = (fs: FileStorage): Buffer[] => [...fs.index.keys()].map(oidOfKey);

describe('pack against ZODB', () => {
  it("packing Data.fs.prepack at the recorded time gives ZODB's packed Data.fs byte for byte", async () => {
    const m = await readManifest('packed');
    expect(hex(packTimeToTid(m.pack_time))).toBe(m.pack_time_tid);
    // Past the tids (9917) and past what a Date holds: after every tid (1e13 s gave a tid in 1900, packing nothing).
    for (const far of [1e12, 8.64e12 + 60, 1e13, 1e300]) expect(hex(packTimeToTid(far)), String(far)).toMatch(/^ffffffff/);
    for (const before of [-3e9, -1e13]) expect(hex(packTimeToTid(before)), String(before)).toBe('0000000000000000');
    const { path } = await copyOf('packed', true);
    const fs = await FileStorage.open(path);
    try {
      await fs.pack(m.pack_time, zodbReferences);
      expect(fs.getSize()).toBe(m.file_size);
      expect(fs.fileEpoch).toBe(1);
    } finally {
      await fs.close();
    }
    expect(readFileSync(path).equals(readFileSync(fixturePath('zodb', 'packed', 'Data.fs')))).toBe(true);
    // The file before the pack stays beside it as ZODB's Data.fs.old.
    expect(readFileSync(`${path}.old`).equals(readFileSync(fixturePath('zodb', 'packed', 'Data.fs.prepack')))).toBe(true);
  });

  it('packing again, or to before the first transaction, changes nothing', async () => {
    const m = await readManifest('packed');
    const { path } = await copyOf('packed', true);
    const fs = await FileStorage.open(path);
    try {
      const early = await packStorage(fs, 946684800); // 2000-01-01
      expect(early.packed).toBe(false);
      // With GC too: the root, referred to by nothing, does not exist yet then.
      expect((await packStorage(fs, 946684800, zodbReferences)).packed).toBe(false);
      expect(existsSync(`${path}.old`)).toBe(false);
      expect((await packStorage(fs, m.pack_time, zodbReferences)).packed).toBe(true);
      const again = await packStorage(fs, m.pack_time, zodbReferences);
      expect(again.packed).toBe(false);
      expect(fs.fileEpoch).toBe(1);
    } finally {
      await fs.close();
    }
    expect(readFileSync(path).equals(readFileSync(fixturePath('zodb', 'packed', 'Data.fs')))).toBe(true);
  });

  it('with GC, refuses a pack where a reachable record refers to an object with no revision at the pack time, and changes nothing', async () => {
    const path = join(await tempDir(), 'Data.fs');
    let clockMs = Date.UTC(2024, 0, 1);
    const fs = await FileStorage.open(path, { create: true, fsync: false, now: () => (clockMs += 1000) });
    try {
      await commitOver(fs, [[0, recordReferring(1)], [1, recordReferring(99)]]);
      const last = await commitOver(fs, [[1, recordReferring(99, 2)], [2, recordReferring()]]);
      const before = readFileSync(path);
      await expect(fs.pack(timeOf(last), zodbReferences)).rejects.toThrow(/oid 0x0000000000000063 is referenced but has no revision at the pack time/);
      expect(readFileSync(path).equals(before)).toBe(true);
      expect(existsSync(`${path}.pack`)).toBe(false);
      // Without GC nothing is followed: the older revision of 1 goes.
      expect((await packStorage(fs, timeOf(last))).packed).toBe(true);
      expect((await fs.history(oid(1), 10)).length).toBe(1);
    } finally {
      await fs.close();
    }
  });

  it('without a references function nothing is collected; with one, unreachable objects go', async () => {
    const m = await readManifest('packed');
    const gc = await copyOf('packed', true);
    const nogc = await copyOf('packed', true);
    const a = await FileStorage.open(gc.path);
    const b = await FileStorage.open(nogc.path);
    try {
      const before = await currentView(b, oidsOf(b));
      // Objects 5 and 6 were dropped from the root before the pack time.
      expect(before.get(hex(oid(5))!)).not.toBe('none');
      await a.pack(m.pack_time, zodbReferences);
      await b.pack(m.pack_time);
      expect(await currentView(b, oidsOf(b))).toEqual(before);
      for (const n of [5, 6]) await expect(a.load(oid(n))).rejects.toBeInstanceOf(POSKeyError);
      expect(a.objectCount).toBe(before.size - 2);
      expect(b.objectCount).toBe(before.size);
      expect(b.getSize()).toBeGreaterThan(a.getSize());
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('keeps what transactions after the pack time refer to: an object linked again after it, and what an undo after it brings back', async () => {
    const record = recordReferring;
    const scenario = async (body: (fs: FileStorage, commit: (writes: Array<[number, Buffer]>) => Promise<Buffer>) => Promise<Buffer>, live: number[]): Promise<void> => {
      let nowMs = Date.UTC(2024, 0, 1);
      const fs = await FileStorage.open(join(await tempDir(), 'Data.fs'), { create: true, fsync: false, now: () => (nowMs += 2000) });
      try {
        const commit = (writes: Array<[number, Buffer]>): Promise<Buffer> => commitOver(fs, writes);
        const packTid = await body(fs, commit);
        await fs.pack(timeOf(packTid), zodbReferences);
        for (const n of live) expect((await fs.load(oid(n))).data.length).toBeGreaterThan(0);
      } finally {
        await fs.close();
      }
    };
    const undo = async (fs: FileStorage, tid: Buffer): Promise<Buffer> => {
      const txn = {};
      await fs.tpcBegin(txn);
      await fs.undo(tid, txn);
      await fs.tpcVote(txn);
      return fs.tpcFinish(txn);
    };
    // Unlinked from the root before the pack time, linked again after it.
    await scenario(async (_fs, commit) => {
      await commit([[0, record(1)], [1, record()]]);
      const unlinked = await commit([[0, record()]]);
      await commit([[0, record(1)]]);
      return unlinked;
    }, [0, 1]);
    // 1 -> 2 cut, then 0 -> 1 cut before the pack time; both cuts undone after it: 0 -> 1 -> 2 again.
    await scenario(async (fs, commit) => {
      await commit([[0, record(1)], [1, record(2)], [2, record()]]);
      const cut1 = await commit([[1, record()]]);
      const cut0 = await commit([[0, record()]]);
      await undo(fs, cut1);
      await undo(fs, cut0);
      return cut0;
    }, [0, 1, 2]);
    // 1 created (referring to 3, which nothing else refers to), its creation undone before the pack time (no
    // revision of 1 then), that undo undone after it: the revision of 1 it brings back is kept, and so is 3.
    await scenario(async (fs, commit) => {
      await commit([[0, record()], [3, record()]]);
      const created = await commit([[0, record(1)], [1, record(3)]]);
      const undone = await undo(fs, created);
      await undo(fs, undone);
      return undone;
    }, [0, 1, 3]);
  });

  it('refuses a read-only storage', async () => {
    const { path } = await copyOf('packed', true);
    const fs = await FileStorage.open(path, { readOnly: true });
    try {
      await expect(fs.pack(Date.now() / 1000, zodbReferences)).rejects.toBeInstanceOf(ReadOnlyError);
      await expect(packStorage(fs, Date.now() / 1000)).rejects.toBeInstanceOf(ReadOnlyError);
    } finally {
      await fs.close();
    }
  });
});

describe.each(['basic', 'undo', 'packed', 'blobs', 'large', 'fs21-legacy'])('pack of fixture %s (no GC) at its last transaction', (dir) => {
  it('keeps every current object and removes older revisions', async () => {
    const { path, blobDir } = await copyOf(dir);
    const fs = await FileStorage.open(path, blobDir ? { blobDir } : {});
    try {
      const oids = oidsOf(fs);
      const tids = await allTids(fs);
      const last = tids[tids.length - 1]!;
      const current = await currentView(fs, oids);
      const magic = fs.magic;
      await fs.pack(timeOf(last));
      expect(await currentView(fs, oids)).toEqual(current);
      expect(fs.magic).toBe(magic);
      expect(readFileSync(path).subarray(0, 4).toString('latin1')).toBe(magic);
      // Every remaining transaction is a packed one, and each holds only current records.
      for await (const t of fs.iterator()) {
        expect(t.status).toBe('p');
        for (const r of t.records) expect(fs.index.get(oidKey(r.oid))).toBe(r.pos);
      }
    } finally {
      await fs.close();
    }
  });
});

describe('MVCC reads after the pack time are unchanged', () => {
  // Every tid of the undo fixture as the pack time, with and without GC: the
  // fixture has undo records, an undone creation and backpointer chains.
  for (const withGc of [false, true]) {
    it(`for every pack time of the undo fixture (${withGc ? 'GC' : 'no GC'})`, async () => {
      const probe = await copyOf('undo');
      const ro = await FileStorage.open(probe.path, { readOnly: true });
      const tids = await allTids(ro);
      const oids = oidsOf(ro);
      await ro.close();
      for (let i = 0; i < tids.length; i++) {
        const { path } = await copyOf('undo');
        const fs = await FileStorage.open(path);
        try {
          const later = [...tids.slice(i + 1), tidPlusOne(tids[tids.length - 1]!)];
          const want = await mvccView(fs, oids, later);
          await fs.pack(timeOf(tids[i]!), withGc ? zodbReferences : undefined);
          expect(await mvccView(fs, oids, later)).toEqual(want);
          // Reopening (a fresh scan) reads the same.
          await fs.close();
          const again = await FileStorage.open(path, { readOnly: true });
          expect(await mvccView(again, oids, later)).toEqual(want);
          await again.close();
        } finally {
          await fs.close();
        }
      }
    });
  }

  it('removed revisions are gone for loadBefore and loadSerial; kept ones stay', async () => {
    const m = await readManifest('packed');
    const { path } = await copyOf('packed', true);
    const fs = await FileStorage.open(path);
    try {
      const step0 = h2b('03f8f5e080000000'); // oid 1's revision "step 0", replaced before the pack time
      const step5 = h2b('03f8f5e155555555');
      expect(await fs.loadSerial(oid(1), step0)).toBeInstanceOf(Buffer);
      expect((await fs.loadBefore(oid(1), step5))!.tid).toEqual(step0);
      await fs.pack(m.pack_time, zodbReferences);
      await expect(fs.loadSerial(oid(1), step0)).rejects.toBeInstanceOf(POSKeyError);
      expect(await fs.loadBefore(oid(1), step5)).toBeNull();
      // oid 1 was current at the pack time as of "step 19": that revision stays, with data inline.
      const step19 = h2b('03f8f5e3aaaaaaaa');
      expect((await fs.loadBefore(oid(1), h2b('03f8f5e42aaaaaaa')))!.tid).toEqual(step19);
      expect((await fs.history(oid(1), 100)).map((e) => hex(e.tid))).toContain(hex(step19));
    } finally {
      await fs.close();
    }
  });
});

describe('pack and the rest of the storage', () => {
  it('removes blob files of removed revisions only', async () => {
    const s = (await readManifest('blobs')).storage;
    const { path, blobDir } = await copyOf('blobs');
    const fs = await FileStorage.open(path, { blobDir: blobDir! });
    try {
      const tids = await allTids(fs);
      const current = new Map(oidsOf(fs).map((o) => [hex(o)!, hex(fs.readDataHeaderAt(fs.index.get(oidKey(o))!).tid)!]));
      const report = await packStorage(fs, timeOf(tids[tids.length - 1]!), zodbReferences);
      expect(report.removedBlobFiles).toBe(3); // ten, k100 and empty were each updated once
      let kept = 0;
      for (const b of s.blobs_loadBlob as Array<{ oid: string; tid: string; blob_path: string; sha256: string }>) {
        const file = join(blobDir!, b.blob_path);
        if (current.get(b.oid) === b.tid) {
          kept++;
          expect(await fs.loadBlob(h2b(b.oid), h2b(b.tid))).toBe(file);
          expect(sha(readFileSync(file))).toBe(b.sha256);
        } else {
          expect(existsSync(file)).toBe(false);
          await expect(fs.loadBlob(h2b(b.oid), h2b(b.tid))).rejects.toBeInstanceOf(POSKeyError);
        }
      }
      expect(kept).toBe(s.blobs_loadBlob.length - 3);
    } finally {
      await fs.close();
    }
  });

  it('keeps the file\'s last transaction, empty, when it has nothing left before the pack time: the last tid never goes back', async () => {
    const path = join(await tempDir(), 'Data.fs');
    const fs = await FileStorage.open(path, { create: true, fsync: false });
    let last: Buffer;
    try {
      const oid = fs.newOid();
      let serial = Z64;
      for (let i = 0; i < 3; i++) {
        const txn = { description: `rev ${i}` };
        await fs.tpcBegin(txn);
        fs.store(oid, serial, Buffer.from(`rev ${i}`), txn);
        await fs.tpcVote(txn);
        serial = await fs.tpcFinish(txn);
      }
      // With its tid given (as replication and restores give it), a transaction of no records is written.
      const empty = { description: 'no records' };
      await fs.tpcBegin(empty, { tid: tidPlusOne(serial) });
      await fs.tpcVote(empty);
      last = await fs.tpcFinish(empty);
      const report = await packStorage(fs, tidToSeconds(last) + 1);
      expect(report.packed).toBe(true);
      expect(hex(fs.lastTransaction())).toBe(hex(last));
    } finally {
      await fs.close();
    }
    const again = await FileStorage.open(path, { readOnly: true });
    try {
      expect(hex(again.lastTransaction())).toBe(hex(last));
      const tids = await allTids(again);
      expect(tids.map(hex)).toHaveLength(2); // the last revision's transaction, and the empty last one
      expect(hex(tids.at(-1)!)).toBe(hex(last));
    } finally {
      await again.close();
    }
  });

  it('tells a tid it never held only where no pack can have dropped one (provesNeverHeld)', async () => {
    let nowMs = Date.UTC(2024, 0, 1);
    const fs = await FileStorage.open(join(await tempDir(), 'Data.fs'), { create: true, fsync: false, now: () => (nowMs += 2000) });
    try {
      const kept = await commitOver(fs, [[0, recordReferring()]]);
      const dropped = await commitOver(fs, [[1, recordReferring()]]);
      const packTid = await commitOver(fs, [[1, recordReferring()]]);
      await fs.pack(timeOf(packTid));
      const after = await commitOver(fs, [[2, recordReferring()]]);
      const last = await commitOver(fs, [[2, recordReferring()]]);
      expect(await allTids(fs)).toEqual([kept, packTid, after, last]);
      // Dropped by the pack, or in the packed part where it could have been: the file cannot tell.
      expect(fs.provesNeverHeld(dropped)).toBe(false);
      expect(fs.provesNeverHeld(tidPlusOne(packTid))).toBe(false);
      // Before the first transaction, held, or at or after the last: nothing to prove.
      expect(fs.provesNeverHeld(tidPlusOne(Z64))).toBe(false);
      expect(fs.provesNeverHeld(after)).toBe(false);
      expect(fs.provesNeverHeld(last)).toBe(false);
      expect(fs.provesNeverHeld(tidPlusOne(last))).toBe(false);
      // Just after a committed (unpacked) transaction: no pack reaches there.
      expect(fs.provesNeverHeld(tidPlusOne(after))).toBe(true);
    } finally {
      await fs.close();
    }
  });

  it('an iterator started before the pack continues after it, by tid', async () => {
    const m = await readManifest('packed');
    const { path } = await copyOf('packed', true);
    const fs = await FileStorage.open(path);
    try {
      const early = fs.iterator(); // stops inside what pack rewrites
      const late = fs.iterator(); // stops after the pack time
      const seenEarly: string[] = [];
      const seenLate: string[] = [];
      for (let i = 0; i < 3; i++) seenEarly.push(hex((await early.next()).value!.tid)!);
      for (let i = 0; i < 25; i++) seenLate.push(hex((await late.next()).value!.tid)!);
      await fs.pack(m.pack_time, zodbReferences);
      const packed = (m.transactions as Array<{ tid: string }>).map((t) => t.tid);
      for await (const t of early) seenEarly.push(hex(t.tid)!);
      for await (const t of late) seenLate.push(hex(t.tid)!);
      expect(seenEarly).toEqual([...seenEarly.slice(0, 3), ...packed.filter((t) => t > seenEarly[2]!)]);
      expect(seenLate).toEqual([...seenLate.slice(0, 25), ...packed.filter((t) => t > seenLate[24]!)]);
    } finally {
      await fs.close();
    }
  });

  it('records of transactions read before a pack, looked at only after it, are what the file held when read', async () => {
    const dir = await tempDir();
    let clockMs = Date.UTC(2024, 0, 1);
    const fs = await FileStorage.open(join(dir, 'Data.fs'), { create: true, fsync: false, now: () => (clockMs += 1000) });
    try {
      const oid = fs.newOid();
      let serial = Z64;
      for (const value of ['a', 'b', 'c']) {
        const txn = { description: value };
        await fs.tpcBegin(txn);
        fs.store(oid, serial, Buffer.from(value), txn);
        await fs.tpcVote(txn);
        serial = await fs.tpcFinish(txn);
      }
      // Undo the last one: a backpointer record to the second.
      const undo = { description: 'undo' };
      await fs.tpcBegin(undo);
      await fs.undo((await fs.undoLog(0, 1))[0]!.id, undo);
      await fs.tpcVote(undo);
      await fs.tpcFinish(undo);
      const plain = (t: TransactionRecord): unknown[] => t.records.map((r) => [hex(r.oid), hex(r.tid), hex(r.data), hex(r.dataTxn), r.back, r.pos]);
      const want: unknown[] = [];
      for await (const t of fs.iterator()) want.push(plain(t));
      expect((want.at(-1) as unknown[][])[0]![3]).not.toBeNull(); // the undo's record points back
      const untouched: TransactionRecord[] = [];
      for await (const t of fs.iterator()) untouched.push(t);
      await fs.pack(clockMs / 1000 + 10);
      expect(untouched.map(plain)).toEqual(want);
    } finally {
      await fs.close();
    }
  });

  it('keeps 20 commits made while it runs, and a transaction voted before it started', async () => {
    const dir = await tempDir();
    const path = join(dir, 'Data.fs');
    let clockMs = Date.UTC(2024, 0, 1);
    const now = (): number => (clockMs += 1000);
    const build = await FileStorage.open(path, { create: true, fsync: false, now });
    const objects = Array.from({ length: 20 }, () => build.newOid());
    const serials = objects.map(() => Z64);
    for (let i = 0; i < 3000; i++) {
      const txn = { description: `t${i}` };
      await build.tpcBegin(txn);
      const k = i % objects.length;
      build.store(objects[k]!, serials[k]!, Buffer.alloc(1024, i % 251), txn);
      await build.tpcVote(txn);
      serials[k] = await build.tpcFinish(txn);
    }
    const tids = await allTids(build);
    await build.close();

    const fs = await FileStorage.open(path, { fsync: true, now });
    const published: string[] = [];
    const sub = fs.commits$.subscribe((c) => published.push(hex(c.tid)!));
    try {
      const current = await currentView(fs, objects);
      const held = { description: 'voted before the pack' };
      const heldOid = fs.newOid();
      await fs.tpcBegin(held);
      fs.store(heldOid, Z64, Buffer.from('held'), held);
      await fs.tpcVote(held);

      // A follower (as replication runs one) reads across the swap; it re-seeks by tid.
      const follow = new AbortController();
      const followed: Array<{ tid: Buffer; description: string; data: Array<Buffer | null> }> = [];
      const following = (async () => {
        for await (const t of fs.iterator(null, null, { follow: true, signal: follow.signal })) {
          followed.push({ tid: t.tid, description: t.description.toString(), data: t.records.map((r) => r.data) });
          await tick();
        }
      })();

      const packing = packStorage(fs, timeOf(tids[2000]!));
      while (!existsSync(`${path}.pack`)) await tick(); // the copy has started, without the lock
      const heldTid = fs.tpcFinish(held);
      const commits = Array.from({ length: 20 }, async (_, i) => {
        const o = fs.newOid();
        const txn = { description: `during pack ${i}` };
        await fs.tpcBegin(txn);
        fs.store(o, Z64, Buffer.from(`during ${i}`), txn);
        await fs.tpcVote(txn);
        return { o, data: `during ${i}`, tid: await fs.tpcFinish(txn) };
      });
      const [report, done, ht] = await Promise.all([packing, Promise.all(commits), heldTid]);
      expect(report.packed).toBe(true);
      expect(report.tailTransactions).toBeGreaterThanOrEqual(1);
      expect(existsSync(`${path}.old`)).toBe(true);

      const check = async (s: FileStorage): Promise<void> => {
        expect((await s.load(heldOid)).data.toString()).toBe('held');
        for (const d of done) {
          const r = await s.load(d.o);
          expect(r.data.toString()).toBe(d.data);
          expect(r.tid).toEqual(d.tid);
        }
        expect(await currentView(s, objects)).toEqual(current);
      };
      await check(fs);
      while (!followed.some((f) => f.tid.equals(done[done.length - 1]!.tid)) || !followed.some((f) => f.tid.equals(ht))) await tick();
      follow.abort();
      await following;
      for (let i = 1; i < followed.length; i++) expect(Buffer.compare(followed[i - 1]!.tid, followed[i]!.tid)).toBeLessThan(0);
      for (const f of followed) {
        const n = /^t(\d+)$/.exec(f.description);
        if (n) expect(f.data).toEqual([Buffer.alloc(1024, Number(n[1]) % 251)]);
        else if (f.description.startsWith('during ')) expect(f.data).toEqual([Buffer.from(f.description.replace('during pack ', 'during '))]);
        else expect(f.data).toEqual([Buffer.from('held')]);
      }
      expect(followed.length).toBeGreaterThanOrEqual(21);
      for (const t of [ht, ...done.map((d) => d.tid)]) expect(published).toContain(hex(t));
      await fs.close();

      const reopened = await FileStorage.open(path, { readOnly: true });
      try {
        await check(reopened);
        const after = await allTids(reopened);
        for (let i = 1; i < after.length; i++) expect(Buffer.compare(after[i - 1]!, after[i]!)).toBeLessThan(0);
        // 20 packed transactions (one current record each) + 999 after the pack time + 21 new.
        expect(after.length).toBe(20 + 999 + 21);
      } finally {
        await reopened.close();
      }
    } finally {
      sub.unsubscribe();
      await fs.close();
    }
  });

  it('reads the references of records after the pack time one record at a time: one with 200,000 of them, and one that cannot be read is named', async () => {
    const path = join(await tempDir(), 'Data.fs');
    let clockMs = Date.UTC(2024, 0, 1);
    const fs = await FileStorage.open(path, { create: true, fsync: false, now: () => (clockMs += 1000) });
    try {
      await commitOver(fs, [[0, recordReferring(1)], [1, recordReferring()]]);
      const packTid = await commitOver(fs, [[1, recordReferring()]]);
      // Far more references than a call takes arguments (objects never stored: nothing to keep for them).
      await commitOver(fs, [[2, recordReferringAll(Array.from({ length: 200_000 }, (_, i) => 1_000 + i))], [0, recordReferring(1, 2)]]);
      await fs.pack(timeOf(packTid), zodbReferences);
      for (const n of [0, 1, 2]) expect((await fs.load(oid(n))).data.length).toBeGreaterThan(0);
    } finally {
      await fs.close();
    }
    const other = await FileStorage.open(join(await tempDir(), 'Data.fs'), { create: true, fsync: false, now: () => (clockMs += 1000) });
    try {
      await commitOver(other, [[0, recordReferring(1)], [1, recordReferring()]]);
      const packTid = await commitOver(other, [[1, recordReferring()]]);
      await commitOver(other, [[3, Buffer.from('not a pickle')]]);
      const refused = other.pack(timeOf(packTid), zodbReferences);
      await expect(refused).rejects.toThrow(/the record of oid 0x0000000000000003 at \d+, after the pack time, cannot be read for references/);
      await expect(refused).rejects.toBeInstanceOf(GarbageCollectionError);
    } finally {
      await other.close();
    }
  });

  /**
   * A storage where the root (0) referred to 1 and 40, then to 40 alone (`unlinked`, the pack time), then 3,000
   * commits of objects 2-21 and the root referring to them alone: a pack to `unlinked` copies long enough for a
   * commit of `tail` to land while it runs, then `filler` more of about 1 KB (past 300, what the pack copies in
   * rounds before it takes the lock). `check` runs on the storage and the pack's outcome ('packed' or its error).
   */
  async function packWithTailCommit(
    tail: Array<[number, Buffer]>,
    check: (fs: FileStorage, outcome: string, unlinked: Buffer) => Promise<void>,
    filler = 0,
  ): Promise<void> {
    const path = join(await tempDir(), 'Data.fs');
    let clockMs = Date.UTC(2024, 0, 1);
    const fs = await FileStorage.open(path, { create: true, fsync: false, now: () => (clockMs += 1000) });
    try {
      const commit = (writes: Array<[number, Buffer]>): Promise<Buffer> => commitOver(fs, writes);
      await commit([[0, recordReferring(1, 40)], [1, recordReferring()], [40, recordReferring()]]);
      const unlinked = await commit([[0, recordReferring(40)]]);
      // Enough after the pack time that the copy is still running when the tail commits.
      for (let i = 0; i < 3000; i++) await commit([[2 + (i % 20), Buffer.concat([recordReferring(), Buffer.alloc(1024, i % 251)])]]);
      await commit([[0, recordReferring(...Array.from({ length: 20 }, (_, i) => 2 + i))]]);
      const packing = fs.pack(timeOf(unlinked), zodbReferences).then(() => 'packed', (e: Error) => `${e.name}: ${e.message}`);
      while (!existsSync(`${path}.pack`)) await tick(); // the copy has started, without the lock
      await commit(tail);
      for (let i = 0; i < filler; i++) await commit([[2 + (i % 20), Buffer.concat([recordReferring(), Buffer.alloc(1024, i % 251)])]]);
      // Committed while the pack still ran (its output not yet swapped in): the tail the pack must judge.
      expect(existsSync(`${path}.pack`)).toBe(true);
      await check(fs, await packing, unlinked);
      expect(existsSync(`${path}.pack`)).toBe(false);
    } finally {
      await fs.close();
    }
  }

  it('with GC, refuses a pack when a transaction committed while it ran refers to an object it drops; the next pack keeps it', async () => {
    const relink = recordReferring(1, ...Array.from({ length: 20 }, (_, i) => 2 + i));
    await packWithTailCommit([[0, relink]], async (fs, outcome, unlinked) => {
      expect(outcome).toMatch(/^GarbageCollectionError: .*a transaction committed while the pack ran refers to oid 0x0000000000000001/);
      expect((await fs.load(oid(1))).data.length).toBeGreaterThan(0);
      // Run again, the relink is a transaction after the pack time like any other: the object stays.
      await fs.pack(timeOf(unlinked), zodbReferences);
      expect((await fs.load(oid(1))).data.length).toBeGreaterThan(0);
    });
  });

  it('with GC, still refuses it when that transaction is copied in an early round of a long tail, without the lock', async () => {
    const relink = recordReferring(1, ...Array.from({ length: 20 }, (_, i) => 2 + i));
    await packWithTailCommit(
      [[0, relink]],
      async (fs, outcome) => {
        expect(outcome).toMatch(/^GarbageCollectionError: .*a transaction committed while the pack ran refers to oid 0x0000000000000001/);
        expect((await fs.load(oid(1))).data.length).toBeGreaterThan(0);
      },
      400,
    );
  });

  it('with GC, packs when what a transaction committed while it ran refers to is kept: created after the pack time, or by that transaction', async () => {
    // The root again refers to 40 (reachable at the pack time), to 2 (created after it), and to 30, new in the
    // same transaction, which refers to 7.
    const tail: Array<[number, Buffer]> = [[0, recordReferring(40, 2, 30)], [30, recordReferring(7)]];
    await packWithTailCommit(tail, async (fs, outcome) => {
      expect(outcome).toBe('packed');
      for (const n of [0, 2, 7, 30, 40]) expect((await fs.load(oid(n))).data.length).toBeGreaterThan(0);
      // Unreachable at the pack time, and referred to by nothing after it: gone.
      await expect(fs.load(oid(1))).rejects.toBeInstanceOf(POSKeyError);
    });
  });

  it('refuses a second pack while one runs', async () => {
    const m = await readManifest('packed');
    const { path } = await copyOf('packed', true);
    const fs = await FileStorage.open(path);
    try {
      const first = packStorage(fs, m.pack_time, zodbReferences);
      await expect(packStorage(fs, m.pack_time, zodbReferences)).rejects.toThrow(/already running/);
      expect((await first).packed).toBe(true);
    } finally {
      await fs.close();
    }
  });
});

describe('zodbReferences', () => {
  const u8 = (n: number): Buffer => Buffer.from([n]);
  const str = (s: string): Buffer => Buffer.concat([Buffer.from('X'), Buffer.from([s.length, 0, 0, 0]), Buffer.from(s)]);
  const oidBytes = (n: number): Buffer => Buffer.concat([Buffer.from('C\x08', 'latin1'), oid(n)]);
  const classPickle = Buffer.from('\x80\x03cpersistent.mapping\nPersistentMapping\nq\x00.', 'latin1');

  it('finds (oid, class) tuples, bare oids, and skips weak and cross-database references', () => {
    const state = Buffer.concat([
      Buffer.from('\x80\x03}q\x01(', 'latin1'),
      str('strong'), oidBytes(5), Buffer.from('h\x00\x86Q', 'latin1'), // (oid, class) with the class from the first pickle's memo
      str('bare'), oidBytes(6), Buffer.from('Q', 'latin1'),
      str('weak'), Buffer.from(']q\x02(', 'latin1'), str('w'), oidBytes(7), Buffer.from('\x85eQ', 'latin1'),
      str('xdb'), Buffer.from(']q\x03(', 'latin1'), str('m'), str('other'), oidBytes(8), Buffer.from('h\x00\x87eQ', 'latin1'),
      Buffer.from('u.', 'latin1'),
    ]);
    expect(zodbReferences(Buffer.concat([classPickle, state])).map(hex)).toEqual([hex(oid(5)), hex(oid(6))]);
  });

  it('reads protocol 1 pickles (Python 2 str oids, MARK/TUPLE)', () => {
    const p = Buffer.concat([
      Buffer.from('cpersistent.mapping\nPersistentMapping\nq\x01.', 'latin1'),
      Buffer.from('}q\x02U\x04dataq\x03(U\x08', 'latin1'), oid(9), Buffer.from('q\x04h\x01tQs.', 'latin1'),
    ]);
    expect(zodbReferences(p).map(hex)).toEqual([hex(oid(9))]);
  });

  it("matches the references of the packed fixture's root", async () => {
    const { path } = await copyOf('packed', true);
    const fs = await FileStorage.open(path, { readOnly: true });
    try {
      const root = await fs.loadSerial(oid(0), h2b('03f8f5e400000000'));
      expect(zodbReferences(root).map(hex)).toEqual([1, 2, 3, 4, 7].map((n) => hex(oid(n))));
      // Every record of every fixture written by ZODB parses.
      for (const dir of ['basic', 'undo', 'blobs', 'fs21-legacy']) {
        const c = await copyOf(dir);
        const s = await FileStorage.open(c.path, { readOnly: true });
        for await (const t of s.iterator()) for (const r of t.records) if (r.data) expect(() => zodbReferences(r.data!)).not.toThrow();
        await s.close();
      }
    } finally {
      await fs.close();
    }
  });

  it('throws PickleError on what is not a pickle', () => {
    expect(() => zodbReferences(Buffer.from('not a pickle'))).toThrow(PickleError);
    expect(() => zodbReferences(classPickle.subarray(0, 10))).toThrow(PickleError);
    expect(() => zodbReferences(Buffer.concat([u8(0x80), u8(3), u8(0xff)]))).toThrow(PickleError);
  });
});
