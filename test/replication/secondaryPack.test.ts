// A secondary packs its own file while it replicates (a primary's pack is not
// replicated): what it applies meanwhile lands in the packed file, objects
// read as on the primary, and its primary, its own secondaries (old and new)
// and a promotion still find its history the same.

import { existsSync, readdirSync, readFileSync, readlinkSync, watch, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { LockedError, StorageClosedError } from '../../src/errors.js';
import { requestPack } from '../../src/replication/packClient.js';
import { Primary } from '../../src/replication/primary.js';
import { Secondary, type SecondaryOptions } from '../../src/replication/secondary.js';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { tidToSeconds } from '../../src/storage/timestamp.js';
import { GarbageCollectionError, PackError, packTimeToTid, type PackProgress } from '../../src/storage/pack.js';
import { zodbReferences } from '../../src/storage/references.js';
import type { TransactionMeta } from '../../src/storage/types.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { FAST_RECONNECT } from './netHelpers.js';
import { allTransactions, commitBlobRevision, commitMany, expectSameHistory, holdNextRead, storageWithBlobRevisions, waitForState, waitForTid, Z64 } from './helpers.js';

afterAll(cleanupTempDirs);

function openPrimary(path: string): Promise<Primary> {
  return Primary.open({ path, replicateTo: '127.0.0.1:0', fsync: false, auditPath: null });
}

function openSecondary(path: string, from: SecondaryOptions['replicateFrom'], extra: Partial<SecondaryOptions> = {}): Promise<Secondary> {
  return Secondary.open({ path, replicateFrom: from, fsync: false, reconnect: FAST_RECONNECT, auditPath: null, ...extra });
}

/** Each object's current data and serial on `storage` equal `primary`'s. */
async function expectSameObjects(primary: Primary, storage: Secondary['storage'], oids: Iterable<string>): Promise<void> {
  for (const oid of oids) {
    const want = await primary.storage.load(Buffer.from(oid, 'hex'));
    const got = await storage.load(Buffer.from(oid, 'hex'));
    expect({ oid, data: got.data.toString('hex'), tid: got.tid.toString('hex') }).toEqual({ oid, data: want.data.toString('hex'), tid: want.tid.toString('hex') });
  }
}

const readlinkOrNull = (link: string): string | null => {
  try {
    return readlinkSync(link);
  } catch {
    return null; // closed meanwhile
  }
};

const u64 = (n: number): Buffer => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(n));
  return b;
};

/** Commit one transaction storing `value` as the next revision of `oid` on `fs`. */
async function commitValueTo(fs: FileStorage, oid: Buffer, value: string): Promise<Buffer> {
  const txn: TransactionMeta = { description: value };
  await fs.tpcBegin(txn);
  fs.store(oid, (await fs.load(oid)).tid, Buffer.from(value), txn);
  await fs.tpcVote(txn);
  return fs.tpcFinish(txn);
}

/** The references of a record in the graphs below: the 8-byte oids it holds. */
const oidsIn = (data: Buffer): Buffer[] => Array.from({ length: Math.floor(data.length / 8) }, (_, i) => data.subarray(8 * i, 8 * i + 8));

/** A root referring to 5000 objects (5001 current at a pack time after it), then a second revision of the first. */
async function commitGraph(fs: FileStorage): Promise<void> {
  const oids = Array.from({ length: 5000 }, (_, i) => u64(i + 1));
  const txn: TransactionMeta = { description: 'graph' };
  await fs.tpcBegin(txn);
  fs.store(Z64, Z64, Buffer.concat(oids), txn);
  for (const oid of oids) fs.store(oid, Z64, Buffer.from('leaf'), txn);
  await fs.tpcVote(txn);
  await fs.tpcFinish(txn);
  await commitValueTo(fs, oids[0]!, 'new');
}

/** Commit one transaction storing `value` under `oid` (its serial tracked in `serials`). */
async function commitValue(primary: Primary, oid: Buffer, value: string, serials: Map<string, Buffer>): Promise<Buffer> {
  const txn: TransactionMeta = { description: value };
  await primary.storage.tpcBegin(txn);
  primary.storage.store(oid, serials.get(oid.toString('hex')) ?? Z64, Buffer.from(value), txn);
  await primary.storage.tpcVote(txn);
  const tid = await primary.storage.tpcFinish(txn);
  serials.set(oid.toString('hex'), tid);
  return tid;
}

describe('Secondary.pack', () => {
  it('packs its own file while it replicates: commits during and after the pack land in it, and its primary and its secondaries, old and new, find its history the same', async () => {
    const dir = await tempDir();
    const primary = await openPrimary(join(dir, 'p.fs'));
    const sPath = join(dir, 's.fs');
    let s = await openSecondary(sPath, primary.address, { replicateTo: '127.0.0.1:0' });
    const downstream = await openSecondary(join(dir, 'd.fs'), s.replicationAddress!);
    let fresh: Secondary | null = null;
    try {
      const serials = new Map<string, Buffer>();
      const before = await commitMany(primary.storage, 40, 3, serials);
      await waitForTid(downstream, before.at(-1)!);
      const [report, during] = await Promise.all([s.pack(tidToSeconds(before.at(-1)!)), commitMany(primary.storage, 30, 3, serials)]);
      expect(report.packed).toBe(true);
      await waitForTid(s, during.at(-1)!);
      expect(existsSync(`${sPath}.pack`)).toBe(false);
      expect(existsSync(`${sPath}.old`)).toBe(true);
      const packedTids = (await allTransactions(s.storage)).filter((t) => t.status === 'p');
      expect(packedTids.length).toBeGreaterThan(0);
      // Commits after the swap update objects whose current revision is in the packed part.
      const after = await commitMany(primary.storage, 20, 3, serials);
      await waitForTid(s, after.at(-1)!);
      await waitForTid(downstream, after.at(-1)!);
      await expectSameObjects(primary, s.storage, serials.keys());
      // Each object's revisions on the packed node are the primary's since the pack time, then the one current at it.
      const packTid = report.packTid;
      for (const oid of serials.keys()) {
        const mine = (await s.storage.history(Buffer.from(oid, 'hex'), 1000)).map((h) => h.tid.toString('hex'));
        const theirs = (await primary.storage.history(Buffer.from(oid, 'hex'), 1000)).map((h) => h.tid.toString('hex'));
        const later = theirs.filter((t) => t > packTid.toString('hex'));
        const atPack = theirs.find((t) => t <= packTid.toString('hex'));
        expect(mine).toEqual(atPack === undefined ? later : [...later, atPack]);
      }
      // Its secondary from before the pack kept the whole history; a new one copies the packed file.
      await expectSameHistory(primary.storage, downstream.storage);
      fresh = await openSecondary(join(dir, 'e.fs'), s.replicationAddress!);
      await waitForTid(fresh, after.at(-1)!);
      await expectSameHistory(s.storage, fresh.storage);
      // Reopened, it replicates on from its primary, and serves its secondaries, without a divergence.
      await s.close();
      s = await openSecondary(sPath, primary.address, { replicateTo: s.replicationAddress! });
      const last = await commitMany(primary.storage, 3, 3, serials);
      for (const node of [s, downstream, fresh]) await waitForTid(node, last.at(-1)!);
      for (const node of [s, downstream, fresh]) {
        expect(node.diverged).toBeNull();
        await expectSameObjects(primary, node.storage, serials.keys());
      }
    } finally {
      await fresh?.close();
      await downstream.close();
      await s.close();
      await primary.close();
    }
  });

  it('a secondary of it whose last transaction the pack dropped catches up without a divergence', async () => {
    const dir = await tempDir();
    const primary = await openPrimary(join(dir, 'p.fs'));
    const s = await openSecondary(join(dir, 's.fs'), primary.address, { replicateTo: '127.0.0.1:0' });
    const dPath = join(dir, 'd.fs');
    let downstream = await openSecondary(dPath, s.replicationAddress!);
    try {
      const serials = new Map<string, Buffer>();
      const root = primary.storage.newOid();
      const x = primary.storage.newOid();
      await commitValue(primary, root, 'root', serials);
      const dropped = await commitValue(primary, x, 'x1', serials);
      await waitForTid(downstream, dropped);
      await downstream.close();
      // x's revision in `dropped` is superseded: packed after this, `dropped` holds nothing and goes.
      const superseding = await commitValue(primary, x, 'x2', serials);
      await waitForTid(s, superseding);
      expect((await s.pack(tidToSeconds(superseding) + 0.001)).packed).toBe(true);
      const kept = (await allTransactions(s.storage)).map((t) => t.tid.toString('hex'));
      expect(kept).not.toContain(dropped.toString('hex'));
      expect(kept).toContain(superseding.toString('hex'));

      downstream = await openSecondary(dPath, s.replicationAddress!);
      const later = await commitValue(primary, root, 'root2', serials);
      await waitForTid(downstream, later);
      expect(downstream.diverged).toBeNull();
      await expectSameObjects(primary, downstream.storage, serials.keys());
      // What it lacked came as the packed node holds it: `superseding` packed.
      const got = (await allTransactions(downstream.storage)).map((t) => `${t.tid.toString('hex')}${t.status}`);
      expect(got.slice(-3)).toEqual([`${dropped.toString('hex')} `, `${superseding.toString('hex')}p`, `${later.toString('hex')} `]);
    } finally {
      await downstream.close();
      await s.close();
      await primary.close();
    }
  });

  it('a packed secondary promoted takes its old primary back as a secondary without a divergence', async () => {
    const dir = await tempDir();
    const pPath = join(dir, 'p.fs');
    const primary = await openPrimary(pPath);
    const s = await openSecondary(join(dir, 's.fs'), primary.address);
    let promoted: Primary | null = null;
    let old: Secondary | null = null;
    try {
      const serials = new Map<string, Buffer>();
      const tids = await commitMany(primary.storage, 30, 3, serials);
      await waitForTid(s, tids.at(-1)!);
      // Packed to a time before the last commits.
      expect((await s.pack(tidToSeconds(tids[20]!))).packed).toBe(true);
      await primary.close();
      promoted = await s.promote({ replicateTo: '127.0.0.1:0' });
      const more = await commitMany(promoted.storage, 5, 3, serials);
      old = await openSecondary(pPath, promoted.address);
      await waitForTid(old, more.at(-1)!);
      expect(old.diverged).toBeNull();
      expect(old.machine.getSnapshot().matches('diverged')).toBe(false);
      await expectSameObjects(promoted, old.storage, serials.keys());
    } finally {
      await old?.close();
      await promoted?.close();
      await s.close();
    }
  });

  it('is refused once the secondary is closed; its storage still refuses pack', async () => {
    const dir = await tempDir();
    const primary = await openPrimary(join(dir, 'p.fs'));
    const s = await openSecondary(join(dir, 's.fs'), primary.address);
    try {
      await waitForTid(s, (await commitMany(primary.storage, 3)).at(-1)!);
      await expect(s.storage.pack(Date.now() / 1000)).rejects.toThrow(/read-only/i);
    } finally {
      await s.close();
      await primary.close();
    }
    await expect(s.pack(Date.now() / 1000)).rejects.toThrow('the secondary is closed');
  });

  it('with a blob directory of its own, deletes the blob files of the revisions its pack removes there, not the primary\'s', async () => {
    const dir = await tempDir();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), blobDir: join(dir, 'p.blobs'), replicateTo: '127.0.0.1:0', fsync: false, auditPath: null });
    const s = await openSecondary(join(dir, 's.fs'), primary.address, { blobDir: join(dir, 's.blobs') });
    try {
      const fs = primary.storage;
      const oid = fs.newOid();
      const serials: Buffer[] = [];
      for (const content of ['first', 'second']) serials.push(await commitBlobRevision(fs, dir, oid, serials.at(-1) ?? Z64, content));
      await waitForTid(s, serials[1]!);
      const own = await s.storage.loadBlob(oid, serials[0]!);
      const report = await s.pack(tidToSeconds(serials[1]!) + 1);
      expect({ blobFiles: report.blobFiles, removedBlobFiles: report.removedBlobFiles }).toEqual({ blobFiles: 'deleted', removedBlobFiles: 1 });
      expect(existsSync(own)).toBe(false);
      expect(readFileSync(await fs.loadBlob(oid, serials[0]!), 'utf8')).toBe('first');
    } finally {
      await s.close();
      await primary.close();
    }
  });

  it("with its blob directory shared with the primary's (transferBlobs: false), leaves the blob files of removed revisions to the primary", async () => {
    const dir = await tempDir();
    const shared = join(dir, 'blobs');
    const primary = await Primary.open({ path: join(dir, 'p.fs'), blobDir: shared, replicateTo: '127.0.0.1:0', fsync: false, auditPath: null });
    const s = await openSecondary(join(dir, 's.fs'), primary.address, { blobDir: shared, transferBlobs: false, replicateTo: '127.0.0.1:0' });
    try {
      const fs = primary.storage;
      const oid = fs.newOid();
      const serials: Buffer[] = [];
      const commitBlob = async (content: string): Promise<Buffer> => {
        serials.push(await commitBlobRevision(fs, dir, oid, serials.at(-1) ?? Z64, content));
        return serials.at(-1)!;
      };
      for (const content of ['first', 'second']) await commitBlob(content);
      await waitForTid(s, serials[1]!);
      const report = await s.pack(tidToSeconds(serials[1]!) + 1);
      expect({ packed: report.packed, removedBlobFiles: report.removedBlobFiles, blobFiles: report.blobFiles }).toEqual({ packed: true, removedBlobFiles: 0, blobFiles: 'kept' });
      // The primary, not packed, still loads the revision the secondary's pack removed.
      expect(readFileSync(await fs.loadBlob(oid, serials[0]!), 'utf8')).toBe('first');
      expect(await s.storage.loadBefore(oid, serials[1]!)).toBeNull();
      expect(readFileSync(await s.storage.loadBlob(oid, serials[1]!), 'utf8')).toBe('second');
      // Asked over its replication address, it packs the same way.
      const again = await commitBlob('third');
      await waitForTid(s, again);
      const asked = await requestPack(s.replicationAddress!, tidToSeconds(again) + 1, { gc: false });
      expect({ packed: asked.packed, blobFiles: asked.blobFiles }).toEqual({ packed: true, blobFiles: 'kept' });
      expect(readFileSync(await fs.loadBlob(oid, serials[1]!), 'utf8')).toBe('second');
    } finally {
      await s.close();
      await primary.close();
    }
  });

  it('close() stops a pack under way and waits for it: the pack rejects, no packed file is left, the file is as it was', async () => {
    const dir = await tempDir();
    const primary = await openPrimary(join(dir, 'p.fs'));
    const sPath = join(dir, 's.fs');
    const s = await openSecondary(sPath, primary.address);
    let closing: Promise<void> | null = null;
    let restore = (): void => undefined;
    try {
      const tids = await commitMany(primary.storage, 300);
      await waitForTid(s, tids.at(-1)!);
      const held = await holdNextRead(dir, () => closing !== null);
      restore = held.restore;
      const reading = held.reading;
      let settled = false;
      const packing = s
        .pack(Date.now() / 1000)
        .catch((err: unknown) => err)
        .finally(() => (settled = true));
      await reading;
      closing = s.close();
      await closing;
      expect(settled).toBe(true);
      expect(await packing).toBeInstanceOf(StorageClosedError);
      expect(existsSync(`${sPath}.pack`)).toBe(false);
      expect(existsSync(`${sPath}.old`)).toBe(false);
      const reopened = await FileStorage.open(sPath, { readOnly: true });
      try {
        await expectSameObjects(primary, reopened as never, (await allTransactions(primary.storage)).flatMap((t) => t.records.map((r) => r.oid.toString('hex'))));
        expect((await allTransactions(reopened)).every((t) => t.status === ' ')).toBe(true);
      } finally {
        await reopened.close();
      }
    } finally {
      restore();
      await s.close();
      await primary.close();
    }
  });

  it('transactions applied while the pack runs are carried into the packed file, after what it packed', async () => {
    const dir = await tempDir();
    const primary = await openPrimary(join(dir, 'p.fs'));
    const s = await openSecondary(join(dir, 's.fs'), primary.address);
    let applied = false;
    let restore = (): void => undefined;
    try {
      const serials = new Map<string, Buffer>();
      const before = await commitMany(primary.storage, 20, 3, serials);
      await waitForTid(s, before.at(-1)!);
      const held = await holdNextRead(dir, () => applied);
      restore = held.restore;
      const reading = held.reading;
      const progress: PackProgress[] = [];
      const packing = s.pack(tidToSeconds(before.at(-1)!) + 1e-5, undefined, { onProgress: (p) => progress.push(p) });
      // The pack holds at its first read; ten transactions arrive meanwhile.
      await reading;
      const during = await commitMany(primary.storage, 10, 3, serials);
      await waitForTid(s, during.at(-1)!);
      applied = true;
      const report = await packing;
      expect(report.packed).toBe(true);
      expect(report.tailTransactions).toBe(10);
      // Without garbage collection the file is read twice; the copy of the tail goes past the size the pack started
      // from, and so does its total.
      expect([...new Set(progress.map((p) => p.step))]).toEqual(['index', 'copy']);
      expect(progress.filter((p) => p.done > p.total)).toEqual([]);
      expect(progress.at(-1)!.total).toBeGreaterThan(report.sizeBefore);
      const kept = await allTransactions(s.storage);
      expect(kept.slice(-10).map((t) => `${t.tid.toString('hex')}${t.status}`)).toEqual(during.map((t) => `${t.toString('hex')} `));
      await expectSameObjects(primary, s.storage, serials.keys());
    } finally {
      restore();
      await s.close();
      await primary.close();
    }
  });

  it('a close() during a rewind that waits for a pack stops the pack, and the rewind goes on', async () => {
    const dir = await tempDir();
    const aPath = join(dir, 'a.fs');
    const old = await openPrimary(aPath);
    const b = await openSecondary(join(dir, 'b.fs'), old.address, { replicateTo: '127.0.0.1:0' });
    const shared = await commitMany(old.storage, 30);
    await waitForTid(b, shared.at(-1)!);
    b.setReplicationAddress('127.0.0.1:1');
    await commitMany(old.storage, 20); // lost with the old primary
    await old.close();
    const promoted = await b.promote();
    const a = await openSecondary(aPath, promoted.address);
    let closing: Promise<void> | null = null;
    let restore = (): void => undefined;
    try {
      await waitForState(a, 'diverged');
      const held = await holdNextRead(dir, () => closing !== null);
      restore = held.restore;
      const reading = held.reading;
      const packing = a.pack(Date.now() / 1000).catch((err: unknown) => err);
      await reading;
      const rewinding = a.rewind();
      closing = a.close();
      await closing;
      expect(await packing).toBeInstanceOf(StorageClosedError);
      expect((await rewinding).cutTids).toHaveLength(20);
    } finally {
      restore();
      await a.close();
      await promoted.close();
    }
    const reopened = await FileStorage.open(aPath, { readOnly: true });
    try {
      expect(reopened.lastTransaction()).toEqual(shared.at(-1));
      expect((await allTransactions(reopened)).every((t) => t.status === ' ')).toBe(true);
    } finally {
      await reopened.close();
    }
  });
});

describe('FileStorage.pack and close', () => {
  it('packs no later than the last transaction: a pack time past it reports that tid', async () => {
    const fs = await FileStorage.open(join(await tempDir(), 'Data.fs'), { create: true, fsync: false });
    try {
      await commitMany(fs, 4);
      const report = await fs.pack(Date.now() / 1000 + 3600);
      expect(report.packed).toBe(true);
      expect(report.packTid).toEqual(fs.lastTransaction());
    } finally {
      await fs.close();
    }
  });

  it('refuses to remove a blob revision when opened without its blob directory (its file would stay there), changing nothing', async () => {
    const { path, blobDir, oid, serial } = await storageWithBlobRevisions(await tempDir(), ['first', 'second']);
    const before = readFileSync(path);
    const blind = await FileStorage.open(path, { fsync: false });
    try {
      const refused = await blind.pack(Date.now() / 1000).then(() => new Error('packed'), (e: unknown) => e as Error);
      expect(refused.message).toContain(`the pack removes a revision of blob oid 0x${oid.toString('hex')}`);
      // Not garbage collection's: without it, the same (no --no-gc hint).
      expect(refused).toBeInstanceOf(PackError);
      expect(refused).not.toBeInstanceOf(GarbageCollectionError);
      const collecting = await blind.pack(Date.now() / 1000, zodbReferences).then(() => new Error('packed'), (e: unknown) => e as Error);
      expect(collecting).toBeInstanceOf(GarbageCollectionError);
    } finally {
      await blind.close();
    }
    expect(readFileSync(path).equals(before)).toBe(true);
    expect(existsSync(`${path}.pack`)).toBe(false);
    // With its blob directory, the old revision's file goes with it.
    const seeing = await FileStorage.open(path, { fsync: false, blobDir });
    try {
      const report = await seeing.pack(Date.now() / 1000);
      expect(report.removedBlobFiles).toBe(1);
      expect(readFileSync(await seeing.loadBlob(oid, serial), 'utf8')).toBe('second');
    } finally {
      await seeing.close();
    }
  });

  it('with keepBlobFiles, removes blob revisions without touching their files, also when opened without the blob directory', async () => {
    for (const withBlobDir of [false, true]) {
      const { path, blobDir, oid, serial } = await storageWithBlobRevisions(await tempDir(), ['first', 'second']);
      const files = (): string[] => (readdirSync(blobDir, { recursive: true }) as string[]).filter((f) => f.endsWith('.blob')).sort();
      const before = files();
      expect(before).toHaveLength(2);
      const fs = await FileStorage.open(path, { fsync: false, ...(withBlobDir ? { blobDir } : {}) });
      try {
        const report = await fs.pack(tidToSeconds(serial) + 1, undefined, { keepBlobFiles: true });
        expect({ packed: report.packed, blobFiles: report.blobFiles, removedBlobFiles: report.removedBlobFiles }).toEqual({ packed: true, blobFiles: 'kept', removedBlobFiles: 0 });
        expect(await fs.loadBefore(oid, serial)).toBeNull();
      } finally {
        await fs.close();
      }
      expect(files()).toEqual(before);
    }
  });

  it("the garbage collection's walk of a large graph lets the event loop turn (commits and replication go on meanwhile)", async () => {
    const fs = await FileStorage.open(join(await tempDir(), 'Data.fs'), { create: true, fsync: false });
    try {
      await commitGraph(fs);
      let turns = 0;
      let ticking = true;
      const tick = (): void => {
        turns += 1;
        if (ticking) setImmediate(tick);
      };
      setImmediate(tick);
      // The event loop's turn count as the walk reached each object.
      const seenAt: number[] = [];
      const refs = (data: Buffer): Buffer[] => {
        seenAt.push(turns);
        return oidsIn(data);
      };
      const progress: PackProgress[] = [];
      const report = await fs.pack(Date.now() / 1000 + 1, refs, { onProgress: (p) => progress.push(p) }).finally(() => (ticking = false));
      expect(report.packed).toBe(true);
      expect(seenAt.length).toBeGreaterThanOrEqual(5001);
      expect(new Set(seenAt).size).toBeGreaterThan(3);
      // The passes in order; the file's passes count bytes of it, the walk counts objects of those current then.
      expect([...new Set(progress.map((p) => p.step))]).toEqual(['index', 'references', 'copy']);
      for (const step of ['index', 'copy'] as const) {
        const mine = progress.filter((p) => p.step === step);
        expect(mine[0]!.done).toBe(4);
        expect(mine.every((p, i) => p.total === report.sizeBefore && (i === 0 || p.done > mine[i - 1]!.done))).toBe(true);
      }
      const walk = progress.filter((p) => p.step === 'references' && p.total === 5001);
      expect(walk.length).toBeGreaterThanOrEqual(4);
      expect(walk.every((p, i) => i === 0 || p.done > walk[i - 1]!.done)).toBe(true);
    } finally {
      await fs.close();
    }
  });

  it("a close() stops the garbage collection's walk where it is", async () => {
    const fs = await FileStorage.open(join(await tempDir(), 'Data.fs'), { create: true, fsync: false });
    await commitGraph(fs);
    let calls = 0;
    let closing: Promise<void> | null = null;
    const refs = (data: Buffer): Buffer[] => {
      if (++calls === 1500) closing = fs.close();
      return oidsIn(data);
    };
    await expect(fs.pack(Date.now() / 1000 + 1, refs)).rejects.toBeInstanceOf(StorageClosedError);
    await closing;
    // Stopped at the walk's next turn of the event loop, not after all 5001 objects.
    expect(calls).toBeLessThan(3000);
  });

  it('reports an empty storage unpacked, at the tid of the pack time asked for', async () => {
    const fs = await FileStorage.open(join(await tempDir(), 'Data.fs'), { create: true, fsync: false });
    try {
      const at = Date.now() / 1000;
      expect(await fs.pack(at)).toMatchObject({ packed: false, packTid: packTimeToTid(at) });
    } finally {
      await fs.close();
    }
  });

  it("packs stopped while the pack scans its output (as a secondary's close does first) stop it at the commit lock: the file is as it was", async () => {
    const dir = await tempDir();
    const path = join(dir, 'Data.fs');
    const fs = await FileStorage.open(path, { create: true, fsync: false });
    const tids = await commitMany(fs, 50);
    const size = fs.getSize();
    // The whole file fits the first pass's one read: once the copy begins, the next read is the scan of the output.
    let copying = false;
    let stopping: Promise<void> | null = null;
    const { reading, restore } = await holdNextRead(dir, () => stopping !== null, () => copying);
    try {
      const packing = fs
        .pack(Date.now() / 1000, undefined, { onProgress: (p) => void (copying ||= p.step === 'copy') })
        .catch((err: unknown) => err);
      await reading;
      stopping = fs.stopPacks();
      await stopping;
      expect(await packing).toBeInstanceOf(StorageClosedError);
      // Stopped for good: the close this announced is the next thing that may happen.
      await expect(fs.pack(Date.now() / 1000)).rejects.toBeInstanceOf(StorageClosedError);
    } finally {
      restore();
      await fs.close();
    }
    expect(existsSync(`${path}.pack`)).toBe(false);
    expect(existsSync(`${path}.old`)).toBe(false);
    const reopened = await FileStorage.open(path, { readOnly: true });
    try {
      expect(reopened.getSize()).toBe(size);
      expect((await allTransactions(reopened)).map((t) => `${t.tid.toString('hex')}${t.status}`)).toEqual(tids.map((t) => `${t.toString('hex')} `));
    } finally {
      await reopened.close();
    }
  });

  // Descriptors are counted in /proc (Linux).
  it.runIf(process.platform === 'linux')("a close() releases the file's lock only once the pack it stopped has ended", async () => {
    const dir = await tempDir();
    const path = join(dir, 'Data.fs');
    const fs = await FileStorage.open(path, { create: true, fsync: false });
    await commitMany(fs, 50);
    const held = await holdNextRead(dir);
    try {
      const packing = fs.pack(Date.now() / 1000).catch((err: unknown) => err);
      await held.reading;
      const closing = fs.close();
      // Once the storage's own descriptors of the file are closed (the pack's is left), the close waits for the
      // pack, still in its read: another open of the file is refused.
      const descriptorsOf = (file: string): number => readdirSync('/proc/self/fd').filter((fd) => readlinkOrNull(`/proc/self/fd/${fd}`) === file).length;
      await expect.poll(() => descriptorsOf(path)).toBe(1);
      await expect(FileStorage.open(path, { fsync: false })).rejects.toBeInstanceOf(LockedError);
      held.release();
      await closing;
      expect(await packing).toBeInstanceOf(StorageClosedError);
      const again = await FileStorage.open(path, { fsync: false });
      await again.close();
    } finally {
      held.restore();
    }
  });

  it('a close() stops a pack at its next transaction: the pack rejects, the file is as it was, no packed file is left', async () => {
    const dir = await tempDir();
    const path = join(dir, 'Data.fs');
    const fs = await FileStorage.open(path, { create: true, fsync: false });
    const tids = await commitMany(fs, 200);
    const size = fs.getSize();
    // Names the directory's events give, in order: a marker written last shows every earlier one arrived.
    const seen: string[] = [];
    const watcher = watch(dir, (_, name) => void seen.push(String(name)));
    // The pack's first read waits until the storage is closed (the pack is under way), then for the close to be
    // done, for at most a second: a close that waits for the pack cannot be done before the read returns, so the
    // pack goes on after that second; one that does not wait is done first.
    let closeDone = false;
    let until = Infinity;
    const { reading: packReading, restore } = await holdNextRead(dir, () => {
      if (!fs.isClosed) return false;
      until = Math.min(until, performance.now() + 1000);
      return closeDone || performance.now() >= until;
    });
    try {
      let settled = false;
      const packing = fs.pack(Date.now() / 1000).catch((err: unknown) => err).finally(() => (settled = true));
      await packReading;
      // A second pack asked for meanwhile is refused, and does not stand in for the first in the close's wait.
      await expect(fs.pack(Date.now() / 1000)).rejects.toThrow('a pack is already running');
      await fs.close();
      closeDone = true;
      // The close waited for the pack to end (its files closed, its output removed).
      expect(settled).toBe(true);
      expect(await packing).toBeInstanceOf(StorageClosedError);
      await new Promise<void>((resolve) => {
        watcher.on('change', (_, name) => String(name) === 'marker' && resolve());
        writeFileSync(join(dir, 'marker'), '');
      });
    } finally {
      restore();
      watcher.close();
    }
    // It stopped before writing any packed output (it read no further than its first transaction).
    expect(seen.filter((name) => name.endsWith('.pack'))).toEqual([]);
    expect(existsSync(`${path}.pack`)).toBe(false);
    expect(existsSync(`${path}.old`)).toBe(false);
    const reopened = await FileStorage.open(path, { readOnly: true });
    try {
      expect(reopened.getSize()).toBe(size);
      expect((await allTransactions(reopened)).map((t) => t.tid.toString('hex'))).toEqual(tids.map((t) => t.toString('hex')));
    } finally {
      await reopened.close();
    }
  });
});
