// The applier reports a transaction applied (what the secondary acks) only
// once it is durable, and one that came with a hash-chain link from the
// primary (a packed transaction, whose link cannot be computed again) only
// once that link is written too.

import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { Applier } from '../../src/replication/applier.js';
import { nodeDisk, type StorageDisk } from '../../src/storage/disk.js';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { Z64 } from '../../src/storage/timestamp.js';
import type { RunLinks } from '../../src/failover/links.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { commitMany } from './helpers.js';

afterAll(cleanupTempDirs);

const settle = async (turns = 20): Promise<void> => {
  for (let i = 0; i < turns; i++) await new Promise((r) => setImmediate(r));
};

/** Two transactions: a packed one with the link its primary gave (T1), then a plain one (T2). */
const T1 = Buffer.from('0000000000000001', 'hex');
const T2 = Buffer.from('0000000000000002', 'hex');
async function applyPackedThenPlain(applier: Applier): Promise<void> {
  const empty = Buffer.alloc(0);
  await applier.apply({ kind: 'begin', tid: T1, status: 'p', user: empty, description: empty, extension: empty });
  await applier.apply({ kind: 'record', oid: Z64, data: Buffer.from('root 1'), dataTxn: null, blob: null });
  await applier.apply({ kind: 'commit', tid: T1, link: Buffer.alloc(32, 7) });
  await applier.apply({ kind: 'begin', tid: T2, status: ' ', user: empty, description: empty, extension: empty });
  await applier.apply({ kind: 'record', oid: Z64, data: Buffer.from('root 2'), dataTxn: null, blob: null });
  await applier.apply({ kind: 'commit', tid: T2 });
}

/** A run of `n` transactions as a primary sends it: a source file's bytes after the magic, and their tids. */
async function rawRun(dir: string, n: number): Promise<{ bytes: Buffer; tids: Buffer[] }> {
  const source = await FileStorage.open(join(dir, 'p.fs'), { create: true, fsync: false });
  const tids = await commitMany(source, n);
  await source.close();
  return { bytes: readFileSync(join(dir, 'p.fs')).subarray(4), tids };
}

/** A disk whose syncs wait until the test lets them go (`held`: each waiting sync's go). */
function heldDisk(): { disk: StorageDisk; held: Array<() => void> } {
  const held: Array<() => void> = [];
  const disk: StorageDisk = { write: nodeDisk.write, truncate: nodeDisk.truncate, datasync: (fd) => new Promise<void>((resolve, reject) => held.push(() => void nodeDisk.datasync(fd).then(resolve, reject))) };
  return { disk, held };
}

describe('Applier', () => {
  it.each([
    ['with a link from the primary, once the link is written', true],
    ['without one, once durable', false],
  ])('reports a transaction applied %s', async (_what, withLink) => {
    const storage = await FileStorage.open(join(await tempDir(), 's.fs'), { create: true, fsync: true, syncInline: false });
    let releaseLink!: () => void;
    const linkWritten = new Promise<void>((resolve) => (releaseLink = resolve));
    const applied: string[] = [];
    const links: string[] = [];
    const applier = new Applier(
      storage,
      {
        applied: (tid) => applied.push(tid.toString('hex')),
        heartbeat: () => undefined,
        link: (tid) => links.push(tid.toString('hex')),
        linkWritten: () => linkWritten,
      },
      false,
    );
    const tid = Buffer.from('0000000000000001', 'hex');
    const published = new Promise<string>((resolve) => {
      const sub = storage.commits$.subscribe((c) => {
        sub.unsubscribe();
        resolve(c.tid.toString('hex'));
      });
    });
    const empty = Buffer.alloc(0);
    try {
      await applier.apply({ kind: 'begin', tid, status: 'p', user: empty, description: empty, extension: empty });
      await applier.apply({ kind: 'record', oid: Z64, data: Buffer.from('root'), dataTxn: null, blob: null });
      await applier.apply(withLink ? { kind: 'commit', tid, link: Buffer.alloc(32, 7) } : { kind: 'commit', tid });
      // Durable on disk (the storage published it) ...
      expect(await published).toBe(tid.toString('hex'));
      await settle();
      expect(links).toEqual(withLink ? [tid.toString('hex')] : []);
      // ... but reported applied only once the given link is written.
      expect(applied).toEqual(withLink ? [] : [tid.toString('hex')]);
      releaseLink();
      await applier.settle();
      expect(applied).toEqual([tid.toString('hex')]);
    } finally {
      releaseLink();
      await storage.close();
    }
  });

  it('a transaction waiting for its given link holds back the reports of those after it, which stay in order', async () => {
    const storage = await FileStorage.open(join(await tempDir(), 's.fs'), { create: true, fsync: true, syncInline: false });
    let releaseLink!: () => void;
    const linkWritten = new Promise<void>((resolve) => (releaseLink = resolve));
    const applied: string[] = [];
    const applier = new Applier(storage, { applied: (tid) => applied.push(tid.toString('hex')), heartbeat: () => undefined, link: () => undefined, linkWritten: () => linkWritten }, false);
    const published: string[] = [];
    const sub = storage.commits$.subscribe((c) => published.push(c.tid.toString('hex')));
    try {
      await applyPackedThenPlain(applier);
      while (published.length < 2) await settle(1);
      await settle();
      expect(applied).toEqual([]);
      releaseLink();
      await applier.settle();
      expect(applied).toEqual([T1.toString('hex'), T2.toString('hex')]);
    } finally {
      sub.unsubscribe();
      releaseLink();
      await storage.close();
    }
  });

  it('reports a run of raw transactions applied only once its sync completed', async () => {
    const dir = await tempDir();
    const { bytes, tids } = await rawRun(dir, 3);
    const { disk, held } = heldDisk();
    const storage = await FileStorage.open(join(dir, 's.fs'), { create: true, fsync: true, syncInline: false, disk });
    const applied: string[] = [];
    const applier = new Applier(storage, { applied: (tid) => applied.push(tid.toString('hex')), heartbeat: () => undefined }, false);
    const last = tids.at(-1)!;
    try {
      await applier.apply({ kind: 'rawTxns', bytes: Buffer.from(bytes), count: tids.length, lastTid: last });
      await applier.apply({ kind: 'commit', tid: last });
      // Written (its sync was asked for), not durable: not reported, so not acknowledged.
      while (held.length === 0) await settle(1);
      await settle();
      expect(storage.lastTransaction().equals(last)).toBe(true);
      expect(applied).toEqual([]);
      while (applied.length === 0) {
        held.splice(0).forEach((go) => go());
        await settle(1);
      }
      await applier.settle();
      expect(applied).toEqual([last.toString('hex')]);
    } finally {
      const releasing = setInterval(() => held.splice(0).forEach((go) => go()), 1);
      await storage.close().finally(() => clearInterval(releasing));
    }
  });

  it('aborting in the middle of a blob removes its partly written staging file', async () => {
    const dir = await tempDir();
    const blobDir = join(dir, 'blobs');
    const storage = await FileStorage.open(join(dir, 's.fs'), { create: true, fsync: false, blobDir });
    const applier = new Applier(storage, { applied: () => undefined, heartbeat: () => undefined }, true);
    const empty = Buffer.alloc(0);
    const tid = Buffer.from('0000000000000001', 'hex');
    try {
      await applier.apply({ kind: 'begin', tid, status: ' ', user: empty, description: empty, extension: empty });
      await applier.apply({ kind: 'record', oid: Z64, data: Buffer.from('blob record'), dataTxn: null, blob: { blocks: 2 } });
      await applier.apply({ kind: 'blobBlock', bytes: Buffer.alloc(1000, 1), last: false });
      expect(readdirSync(join(blobDir, 'tmp'))).toHaveLength(1);
      await applier.abort();
      expect(readdirSync(join(blobDir, 'tmp'))).toEqual([]);
    } finally {
      await storage.close();
    }
  });

  it('a blob whose record the storage refuses leaves no temporary file behind', async () => {
    const dir = await tempDir();
    const blobDir = join(dir, 'blobs');
    const storage = await FileStorage.open(join(dir, 's.fs'), { create: true, fsync: false, blobDir });
    const applier = new Applier(storage, { applied: () => undefined, heartbeat: () => undefined, link: () => undefined, linkWritten: () => Promise.resolve() }, true);
    const empty = Buffer.alloc(0);
    const tid = Buffer.from('0000000000000001', 'hex');
    try {
      await applier.apply({ kind: 'begin', tid, status: ' ', user: empty, description: empty, extension: empty });
      // The storage refuses the record (an I/O error staging the file, say) after the blob file was written.
      vi.spyOn(storage, 'restoreBlob').mockRejectedValueOnce(new Error('refused'));
      await applier.apply({ kind: 'record', oid: Z64, data: Buffer.from('blob record'), dataTxn: null, blob: { blocks: 1 } });
      await expect(applier.apply({ kind: 'blobBlock', bytes: Buffer.from('blob'), last: true })).rejects.toThrow('refused');
      await applier.abort();
      expect(readdirSync(join(blobDir, 'tmp'))).toEqual([]);
    } finally {
      await storage.close();
    }
  });

  it('reports nothing after a transaction that failed: a later one made durable is not reported (acks are cumulative)', async () => {
    const storage = await FileStorage.open(join(await tempDir(), 's.fs'), { create: true, fsync: true, syncInline: false });
    let failLink!: (err: Error) => void;
    const linkWritten = new Promise<void>((_resolve, reject) => (failLink = reject));
    linkWritten.catch(() => undefined);
    const applied: string[] = [];
    const applier = new Applier(storage, { applied: (tid) => applied.push(tid.toString('hex')), heartbeat: () => undefined, link: () => undefined, linkWritten: () => linkWritten }, false);
    try {
      await applyPackedThenPlain(applier);
      // The link of T1 cannot be written (a chain write error): T2, durable, must not be reported either.
      failLink(new Error('chain write failed'));
      await applier.settle();
      expect(applied).toEqual([]);
      await expect(applier.apply({ kind: 'heartbeat', lastTid: T2, clockMs: 0 })).rejects.toThrow('chain write failed');
    } finally {
      await storage.close();
    }
  });

  it('holds at most 512 finished transactions waiting for their sync: the stream waits beyond', async () => {
    const { disk, held } = heldDisk();
    const storage = await FileStorage.open(join(await tempDir(), 's.fs'), { create: true, fsync: true, syncInline: false, disk });
    const applier = new Applier(storage, { applied: () => undefined, heartbeat: () => undefined }, false);
    const empty = Buffer.alloc(0);
    let done = 0;
    const feeding = (async () => {
      for (let i = 1; i <= 600; i++) {
        const tid = Buffer.alloc(8);
        tid.writeUInt32BE(i, 4);
        await applier.apply({ kind: 'begin', tid, status: ' ', user: empty, description: empty, extension: empty });
        await applier.apply({ kind: 'record', oid: Z64, data: Buffer.from(`root ${i}`), dataTxn: null, blob: null });
        await applier.apply({ kind: 'commit', tid });
        done = i;
      }
    })();
    try {
      // Every sync is held: the 512th transaction waits in its commit, and the feed goes on only when syncs return.
      while (done < 511) await settle(1);
      await settle();
      expect(done).toBe(511);
      while (done < 600) {
        held.splice(0).forEach((go) => go());
        await settle(1);
      }
      await feeding;
    } finally {
      const releasing = setInterval(() => held.splice(0).forEach((go) => go()), 1);
      await applier.settle().finally(() => clearInterval(releasing));
      await storage.close();
    }
  });

  it('forgets the links computed for a run whose write failed (they must not be taken for a later transaction)', async () => {
    const dir = await tempDir();
    const { bytes, tids } = await rawRun(dir, 2);
    const storage = await FileStorage.open(join(dir, 's.fs'), { create: true, fsync: false });
    vi.spyOn(storage, 'appendTransactions').mockRejectedValue(new Error('disk full'));
    const given: Array<string | null> = [];
    const applier = new Applier(storage, { applied: () => undefined, heartbeat: () => undefined, runLinks: (linked) => given.push(linked === null ? null : 'links') }, false);
    const linked = { prevLink: Buffer.alloc(32), links: [Buffer.alloc(32, 1), Buffer.alloc(32, 2)] } as unknown as RunLinks;
    try {
      await applier.apply({ kind: 'rawTxns', bytes: Buffer.from(bytes), count: tids.length, lastTid: tids.at(-1)!, linked });
      await expect(applier.apply({ kind: 'commit', tid: tids.at(-1)! })).rejects.toThrow('disk full');
      expect(given).toEqual(['links', null]);
    } finally {
      vi.restoreAllMocks();
      await storage.close();
    }
  });
});
