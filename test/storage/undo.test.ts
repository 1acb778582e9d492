// Undo: the undo log as ZODB reports it for the fixtures, undo records as
// backpointers (including undo of a creation and undo of an undo), and a
// refused undo when a later transaction changed the same object.

import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { UndoError, POSKeyError } from '../../src/errors.js';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { undoIdFor } from '../../src/storage/undo.js';
import { Z64 } from '../../src/storage/timestamp.js';
import { cleanupTempDirs, copyZodbFixture, hex, readManifest, tempDir } from '../helpers/fixtures.js';
import { toJsonish } from '../helpers/pickleJson.js';

afterAll(cleanupTempDirs);

describe.each(['basic', 'undo', 'packed', 'blobs'])('undoLog of fixture %s', (dir) => {
  it('lists the same entries as ZODB, newest first', async () => {
    const want = (await readManifest(dir)).storage.undoLog_first_1000;
    const tmp = await copyZodbFixture(dir);
    const fs = await FileStorage.open(join(tmp, 'Data.fs'), { readOnly: true });
    try {
      const got = await fs.undoLog(0, 1000);
      expect(got.length).toBe(want.length);
      got.forEach((g, i) => {
        const w = want[i];
        expect(g.id).toBe(w.id.text);
        expect(g.time).toBeCloseTo(w.time, 5);
        expect(hex(g.user)).toBe(w.user_name.__bytes_hex__);
        expect(hex(g.description)).toBe(w.description.__bytes_hex__);
        expect(g.size).toBe(w.size);
        const extra = Object.fromEntries(
          Object.entries(w).filter(([k]) => !['id', 'time', 'user_name', 'description', 'size'].includes(k)),
        );
        expect(toJsonish(g.extension)).toEqual(extra);
      });
      const page = await fs.undoLog(2, 5);
      expect(page.map((e) => e.id)).toEqual(want.slice(2, 5).map((w: any) => w.id.text));
    } finally {
      await fs.close();
    }
  });
});

async function commit(fs: FileStorage, writes: Array<[Buffer, Buffer, string]>, description = ''): Promise<Buffer> {
  const txn = { description };
  await fs.tpcBegin(txn);
  for (const [oid, serial, data] of writes) fs.store(oid, serial, Buffer.from(data), txn);
  await fs.tpcVote(txn);
  return fs.tpcFinish(txn);
}

async function undo(fs: FileStorage, id: string | Buffer): Promise<Buffer[]> {
  const txn = { description: 'undo' };
  await fs.tpcBegin(txn);
  try {
    const oids = await fs.undo(id, txn);
    await fs.tpcVote(txn);
    await fs.tpcFinish(txn);
    return oids;
  } catch (err) {
    await fs.tpcAbort(txn);
    throw err;
  }
}

describe('undo', () => {
  it('reverts a change, an undo, and a creation', async () => {
    const fs = await FileStorage.open(join(await tempDir(), 'Data.fs'), { create: true, fsync: false });
    try {
      const a = fs.newOid();
      const t1 = await commit(fs, [[a, Z64, 'v1']]);
      const t2 = await commit(fs, [[a, t1, 'v2']]);
      expect((await undo(fs, t2)).map(hex)).toEqual([hex(a)]);
      expect((await fs.load(a)).data.toString()).toBe('v1');
      const [u1] = await fs.undoLog(0, 1);
      await undo(fs, u1!.id);
      expect((await fs.load(a)).data.toString()).toBe('v2');
      const b = fs.newOid();
      const t4 = await commit(fs, [[b, Z64, 'new']]);
      await undo(fs, t4);
      await expect(fs.load(b)).rejects.toBeInstanceOf(POSKeyError);
      expect(fs.objectCount).toBe(2);
      // The undo records are backpointers: iterating shows the data and its source.
      const txns = [];
      for await (const t of fs.iterator()) txns.push(t);
      const undo1 = txns[2]!.records[0]!;
      expect(undo1.data!.toString()).toBe('v1');
      expect(hex(undo1.dataTxn)).toBe(hex(t1));
      expect(txns.at(-1)!.records[0]!.data).toBeNull();
    } finally {
      await fs.close();
    }
  });

  it('undoLog with a negative last takes -last entries from first (ZODB: first to first - last)', async () => {
    const fs = await FileStorage.open(join(await tempDir(), 'Data.fs'), { create: true, fsync: false });
    try {
      const oid = fs.newOid();
      let serial = Z64;
      for (let i = 0; i < 8; i++) serial = await commit(fs, [[oid, serial, `v${i}`]]);
      const all = (await fs.undoLog(0, 100)).map((e) => e.id);
      expect(all).toHaveLength(8);
      expect((await fs.undoLog(5, -2)).map((e) => e.id)).toEqual(all.slice(5, 7));
      expect((await fs.undoLog(2, 4)).map((e) => e.id)).toEqual(all.slice(2, 4));
    } finally {
      await fs.close();
    }
  });

  it('undoing the newest change, then the one before it in another transaction, gives the object as before both', async () => {
    const fs = await FileStorage.open(join(await tempDir(), 'Data.fs'), { create: true, fsync: false });
    try {
      const oid = fs.newOid();
      const t0 = await commit(fs, [[oid, Z64, 'x']]);
      const t1 = await commit(fs, [[oid, t0, 'y']]);
      const t2 = await commit(fs, [[oid, t1, 'z']]);
      await undo(fs, t2);
      expect((await fs.load(oid)).data.toString()).toBe('y');
      // t1's change is now current again (through the undo's backpointer): it can be undone.
      await undo(fs, t1);
      expect((await fs.load(oid)).data.toString()).toBe('x');
    } finally {
      await fs.close();
    }
  });

  it('refuses when a later transaction changed the object, writing nothing', async () => {
    const fs = await FileStorage.open(join(await tempDir(), 'Data.fs'), { create: true, fsync: false });
    try {
      const a = fs.newOid();
      const b = fs.newOid();
      const t1 = await commit(fs, [[a, Z64, 'a1'], [b, Z64, 'b1']]);
      const t2 = await commit(fs, [[a, t1, 'a2'], [b, t1, 'b2']]);
      await commit(fs, [[b, t2, 'b3']]);
      const size = fs.getSize();
      const err = await undo(fs, t2).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(UndoError);
      expect(hex((err as UndoError).oid)).toBe(hex(b));
      expect(fs.getSize()).toBe(size);
      expect((await fs.load(a)).data.toString()).toBe('a2');
    } finally {
      await fs.close();
    }
  });
});

/** A ZODB.blob.Blob record: the class pickle alone, then an empty state. */
const BLOB_RECORD = Buffer.from('8003635a4f44422e626c6f620a426c6f620a71002e80034e2e', 'hex');

/** Commit a revision of blob `oid` whose file holds `content`. */
async function storeBlobRevision(fs: FileStorage, dir: string, oid: Buffer, serial: Buffer, content: string): Promise<Buffer> {
  const txn = { description: content };
  await fs.tpcBegin(txn);
  const src = join(dir, `upload-${content}`);
  writeFileSync(src, content);
  await fs.storeBlob(oid, serial, BLOB_RECORD, src, txn);
  await fs.tpcVote(txn);
  return fs.tpcFinish(txn);
}

/** Run `body` on a new storage (no fsync), closed afterwards. */
async function withStorage(body: (fs: FileStorage) => Promise<void>): Promise<void> {
  const fs = await FileStorage.open(join(await tempDir(), 'Data.fs'), { create: true, fsync: false });
  try {
    await body(fs);
  } finally {
    await fs.close();
  }
}

describe('several undos in one transaction', () => {
  /** Undo `ids` in one transaction, in order. */
  async function undoAll(fs: FileStorage, ids: Buffer[]): Promise<Buffer> {
    const txn = { description: 'undo several' };
    await fs.tpcBegin(txn);
    try {
      for (const id of ids) await fs.undo(id, txn);
      await fs.tpcVote(txn);
      return await fs.tpcFinish(txn);
    } catch (err) {
      await fs.tpcAbort(txn);
      throw err;
    }
  }

  it('undo the newest, then the one before it, touching the same object: the object as before both (ZODB accepts it too)', async () => {
    const fs = await FileStorage.open(join(await tempDir(), 'Data.fs'), { create: true, fsync: false });
    try {
      const a = fs.newOid();
      const b = fs.newOid();
      const t1 = await commit(fs, [[a, Z64, 'a1'], [b, Z64, 'b1']]);
      const t2 = await commit(fs, [[a, t1, 'a2']]);
      const t3 = await commit(fs, [[a, t2, 'a3'], [b, t1, 'b3']]);
      const u = await undoAll(fs, [t3, t2]);
      expect((await fs.load(a)).data.toString()).toBe('a1');
      expect((await fs.load(b)).data.toString()).toBe('b1');
      // Both undos' records are in the one transaction; the object's last one counts, here and after a reopen.
      const txns = [];
      for await (const t of fs.iterator()) txns.push(t);
      expect(txns.at(-1)!.tid).toEqual(u);
      expect(txns.at(-1)!.records.map((r) => [hex(r.oid), r.data?.toString()])).toEqual([
        [hex(a), 'a2'],
        [hex(b), 'b1'],
        [hex(a), 'a1'],
      ]);
      const path = fs.path;
      await fs.close();
      const again = await FileStorage.open(path, { fsync: false });
      try {
        expect((await again.load(a)).data.toString()).toBe('a1');
        expect((await again.history(a, 10)).map((h) => h.tid.toString('hex'))).toEqual([u, t3, t2, t1].map((t) => t.toString('hex')));
      } finally {
        await again.close();
      }
    } finally {
      await fs.close().catch(() => undefined);
    }
  });

  it('undoes a transaction holding several records of one object by its last, as ZODB does: stored twice, or undone twice', () =>
    withStorage(async (fs) => {
      const a = fs.newOid();
      const t0 = await commit(fs, [[a, Z64, 'v0']]);
      // Stored twice in one transaction: the load sees the second, and an undo goes back to before both.
      const twice = await commit(fs, [
        [a, t0, 'first'],
        [a, t0, 'second'],
      ]);
      expect((await fs.load(a)).data.toString()).toBe('second');
      await undo(fs, twice);
      expect((await fs.load(a)).data.toString()).toBe('v0');

      // The transaction of two undos (T2, then T1) undone in turn: the object is back as after T2.
      const t1 = await commit(fs, [[a, fs.lastTransaction(), 'w1']]);
      const t2 = await commit(fs, [[a, t1, 'w2']]);
      const both = await undoAll(fs, [t2, t1]);
      expect((await fs.load(a)).data.toString()).toBe('v0');
      await undo(fs, both);
      expect((await fs.load(a)).data.toString()).toBe('w2');
      // And it stays refused when a later transaction changed the object.
      const t3 = await commit(fs, [[a, fs.lastTransaction(), 'w3']]);
      await expect(undo(fs, both)).rejects.toThrow(/modified by a later transaction/);
      expect((await fs.load(a)).tid).toEqual(t3);
    }));

  it('undoing a creation after undoing the change that followed it removes the object', () =>
    withStorage(async (fs) => {
      const a = fs.newOid();
      const t1 = await commit(fs, [[a, Z64, 'a1']]);
      const t2 = await commit(fs, [[a, t1, 'a2']]);
      await undoAll(fs, [t2, t1]);
      await expect(fs.load(a)).rejects.toBeInstanceOf(POSKeyError);
    }));

  it('refuses an undo of data this transaction changed otherwise: the same undo twice, an older one first, or after a store', () =>
    withStorage(async (fs) => {
      const a = fs.newOid();
      const t1 = await commit(fs, [[a, Z64, 'a1']]);
      const t2 = await commit(fs, [[a, t1, 'a2']]);
      const t3 = await commit(fs, [[a, t2, 'a3']]);
      const size = fs.getSize();
      await expect(undoAll(fs, [t3, t3])).rejects.toThrow(/modified by a later transaction \(or by this one\)/);
      await expect(undoAll(fs, [t3, t1])).rejects.toThrow(/modified by a later transaction \(or by this one\)/);
      const txn = { description: 'store, then undo' };
      await fs.tpcBegin(txn);
      fs.store(a, t3, Buffer.from('a4'), txn);
      await expect(fs.undo(t3, txn)).rejects.toThrow(/already changed in this transaction/);
      await fs.tpcAbort(txn);
      expect(fs.getSize()).toBe(size);
      expect((await fs.load(a)).data.toString()).toBe('a3');
    }));

  it('with blobs, the object gets the blob of the last undo only', async () => {
    const dir = await tempDir();
    const fs = await FileStorage.open(join(dir, 'Data.fs'), { create: true, fsync: false, blobDir: join(dir, 'blobs') });
    const { readFileSync, readdirSync } = await import('node:fs');
    try {
      const oid = fs.newOid();
      const store = (serial: Buffer, content: string): Promise<Buffer> => storeBlobRevision(fs, dir, oid, serial, content);
      const t1 = await store(Z64, 'first');
      const t2 = await store(t1, 'second');
      const t3 = await store(t2, 'third');
      const u = await undoAll(fs, [t3, t2]);
      expect(readFileSync(await fs.loadBlob(oid, u), 'utf8')).toBe('first');
      // The copy the first undo made ('second') was dropped, not left in the temp area.
      expect(readdirSync(join(dir, 'blobs', 'tmp'))).toEqual([]);
    } finally {
      await fs.close();
    }
  });
});

describe('listing transactions whose extension this storage cannot read', () => {
  it('lists them with an empty extension instead of failing the whole undoLog or history', async () => {
    const fs = await FileStorage.open(join(await tempDir(), 'Data.fs'), { create: true, fsync: false });
    try {
      // pickle.dumps({'when': datetime.date(2024, 1, 2)}, 3): a global outside the safe subset.
      const extensionBytes = Buffer.from('80037d710058040000007768656e7101636461746574696d650a646174650a7102430407e801027103857104527105732e', 'hex');
      const txn = { description: 'dated', extensionBytes };
      const oid = fs.newOid();
      await fs.tpcBegin(txn);
      fs.store(oid, Z64, Buffer.from('x'), txn);
      await fs.tpcVote(txn);
      const tid = await fs.tpcFinish(txn);
      const log = await fs.undoLog(0, 20);
      expect(log.map((e) => [e.description.toString(), e.extension])).toEqual([['dated', {}]]);
      expect((await fs.history(oid, 5)).map((h) => [hex(h.tid), h.extension])).toEqual([[hex(tid), {}]]);
    } finally {
      await fs.close();
    }
  });
});

describe('undo with blobs', () => {
  it('gives the undo transaction its own copy of the restored blob, as ZODB does', async () => {
    const dir = await tempDir();
    const fs = await FileStorage.open(join(dir, 'Data.fs'), { create: true, fsync: false, blobDir: join(dir, 'blobs') });
    const { readFileSync, existsSync, readdirSync } = await import('node:fs');
    try {
      const oid = fs.newOid();
      const store = (serial: Buffer, content: string): Promise<Buffer> => storeBlobRevision(fs, dir, oid, serial, content);
      const t1 = await store(Z64, 'first');
      const t2 = await store(t1, 'second');
      await undo(fs, t2);
      const undoTid = fs.lastTransaction();
      expect(readFileSync(await fs.loadBlob(oid, undoTid), 'utf8')).toBe('first');
      expect(readFileSync(await fs.loadBlob(oid, t1), 'utf8')).toBe('first');
      expect(readFileSync(await fs.loadBlob(oid, t2), 'utf8')).toBe('second');

      // The blob to restore is gone: the undo fails and leaves nothing in the transaction.
      const t3 = await store(undoTid, 'third');
      const { rmSync } = await import('node:fs');
      rmSync(await fs.loadBlob(oid, undoTid));
      const txn = { description: 'an undo that fails' };
      await fs.tpcBegin(txn);
      await expect(fs.undo(undoIdFor(t3), txn)).rejects.toThrow();
      // The undo's records are in the transaction without their blob: it can only be aborted.
      await expect(fs.tpcVote(txn)).rejects.toThrow(/the transaction cannot commit, an undo in it failed/);
      await fs.tpcAbort(txn);
      expect((await fs.load(oid)).tid.toString('hex')).toBe(t3.toString('hex')); // not undone

      // A vote while an undo still copies its blob is refused: it would commit the undo without it.
      const racing = { description: 'an undo and a vote at once' };
      await fs.tpcBegin(racing);
      const undone = fs.undo(undoIdFor(t3), racing).catch((e: unknown) => e);
      await expect(fs.tpcVote(racing)).rejects.toThrow(/still being moved or copied in/);
      await fs.tpcAbort(racing);
      await undone;

      // An abort while an undo copies a blob: the undo fails, and its copy is not left in the staging directory.
      const tmp = join(dir, 'blobs', 'tmp');
      const staged = (): string[] => (existsSync(tmp) ? readdirSync(tmp) : []);
      const before = staged();
      const t5 = await store(t3, 'fifth');
      const aborted = { description: 'aborted during an undo' };
      await fs.tpcBegin(aborted);
      const pending = fs.undo(undoIdFor(t5), aborted).then(() => 'resolved', (e: Error) => e.message);
      await fs.tpcAbort(aborted);
      expect(await pending).toMatch(/aborted while its blob was moved in/);
      expect(staged()).toEqual(before);
    } finally {
      await fs.close();
    }
  });
});
