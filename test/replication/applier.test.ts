// The applier reports a transaction applied (what the secondary acks) only
// once it is durable, and one that came with a hash-chain link from the
// primary (a packed transaction, whose link cannot be computed again) only
// once that link is written too.

import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { Applier } from '../../src/replication/applier.js';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { Z64 } from '../../src/storage/timestamp.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';

afterAll(cleanupTempDirs);

const settle = async (turns = 20): Promise<void> => {
  for (let i = 0; i < turns; i++) await new Promise((r) => setImmediate(r));
};

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
    const empty = Buffer.alloc(0);
    const t1 = Buffer.from('0000000000000001', 'hex');
    const t2 = Buffer.from('0000000000000002', 'hex');
    const published: string[] = [];
    const sub = storage.commits$.subscribe((c) => published.push(c.tid.toString('hex')));
    try {
      await applier.apply({ kind: 'begin', tid: t1, status: 'p', user: empty, description: empty, extension: empty });
      await applier.apply({ kind: 'record', oid: Z64, data: Buffer.from('root 1'), dataTxn: null, blob: null });
      await applier.apply({ kind: 'commit', tid: t1, link: Buffer.alloc(32, 7) });
      await applier.apply({ kind: 'begin', tid: t2, status: ' ', user: empty, description: empty, extension: empty });
      await applier.apply({ kind: 'record', oid: Z64, data: Buffer.from('root 2'), dataTxn: null, blob: null });
      await applier.apply({ kind: 'commit', tid: t2 });
      while (published.length < 2) await settle(1);
      await settle();
      expect(applied).toEqual([]);
      releaseLink();
      await applier.settle();
      expect(applied).toEqual([t1.toString('hex'), t2.toString('hex')]);
    } finally {
      sub.unsubscribe();
      releaseLink();
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
});

