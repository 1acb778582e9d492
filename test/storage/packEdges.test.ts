// Pack at its edges, on small files built with known tids: a transaction
// exactly at the pack time, an object stored twice in one transaction (with
// and without a blob), the conflict check and undo right after a pack, and
// the packed file made durable before it replaces the old one.

import { existsSync, fstatSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ConflictError, POSKeyError, UndoError } from '../../src/errors.js';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { packTimeToTid } from '../../src/storage/pack.js';
import { Z64 } from '../../src/storage/timestamp.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { onFileHandleSyncs } from '../helpers/fileSyncs.js';
import { logOpenRepairs } from '../../src/replication/log.js';
import { BLOB_RECORD } from '../replication/helpers.js';

afterAll(cleanupTempDirs);

const OID = Buffer.from('0000000000000001', 'hex');
const OTHER = Buffer.from('0000000000000002', 'hex');
/** The pack time of these tests (seconds); transactions are placed around it. */
const T = 1_700_000_000;
const at = (offset: number): Buffer => packTimeToTid(T + offset);

/** Commit `writes` (oid, serial, data) as one transaction with `tid`. */
async function commitAt(fs: FileStorage, tid: Buffer, writes: Array<[Buffer, Buffer, string]>): Promise<Buffer> {
  const txn = { description: tid.toString('hex') };
  await fs.tpcBegin(txn, { tid });
  for (const [oid, serial, data] of writes) fs.store(oid, serial, Buffer.from(data), txn);
  await fs.tpcVote(txn);
  return fs.tpcFinish(txn);
}

async function withStorage(body: (fs: FileStorage, dir: string) => Promise<void>, blobs = false): Promise<void> {
  const dir = await tempDir();
  const fs = await FileStorage.open(join(dir, 'Data.fs'), { create: true, fsync: false, ...(blobs ? { blobDir: join(dir, 'blobs') } : {}) });
  try {
    await body(fs, dir);
  } finally {
    await fs.close();
  }
}

describe('pack at its edges', () => {
  it('takes a transaction at exactly the pack time as before it: the revision it replaced goes', () =>
    withStorage(async (fs) => {
      const t0 = await commitAt(fs, at(-100), [[OID, Z64, 'v0']]);
      const t1 = await commitAt(fs, at(0), [[OID, t0, 'v1']]);
      await commitAt(fs, at(100), [[OTHER, Z64, 'x']]);
      await fs.pack(T);
      await expect(fs.loadSerial(OID, t0)).rejects.toBeInstanceOf(POSKeyError);
      expect((await fs.loadSerial(OID, t1)).toString()).toBe('v1');
    }));

  it('keeps the history of an object stored twice in a transaction after the pack time as it was, less what the pack removed', () =>
    withStorage(async (fs) => {
      const t0 = await commitAt(fs, at(-200), [[OID, Z64, 'v0']]);
      const t1 = await commitAt(fs, at(-100), [[OID, t0, 'v1']]);
      await commitAt(fs, at(100), [[OID, t1, 'a'], [OID, t1, 'b']]);
      const before = (await fs.history(OID, 10)).map((h) => h.tid.toString('hex'));
      await fs.pack(T);
      expect((await fs.history(OID, 10)).map((h) => h.tid.toString('hex'))).toEqual(before.filter((t) => t !== t0.toString('hex')));
      expect((await fs.load(OID)).data.toString()).toBe('b');
    }));

  it('checks conflicts against the packed file right after the swap: a store over a removed serial is refused', () =>
    withStorage(async (fs) => {
      const t0 = await commitAt(fs, at(-200), [[OID, Z64, 'v0']]);
      await commitAt(fs, at(-100), [[OID, t0, 'v1']]);
      await commitAt(fs, at(100), [[OTHER, Z64, 'x']]);
      await fs.pack(T);
      const txn = { description: 'over a stale serial' };
      await fs.tpcBegin(txn);
      try {
        expect(() => fs.store(OID, t0, Buffer.from('lost update'), txn)).toThrow(ConflictError);
      } finally {
        await fs.tpcAbort(txn);
      }
    }));

  it('refuses to undo a transaction the pack marked packed', () =>
    withStorage(async (fs) => {
      const t0 = await commitAt(fs, at(-200), [[OID, Z64, 'v0']]);
      const t1 = await commitAt(fs, at(-100), [[OID, t0, 'v1']]);
      await commitAt(fs, at(100), [[OTHER, Z64, 'x']]);
      await fs.pack(T);
      const txn = { description: 'undo' };
      await fs.tpcBegin(txn);
      try {
        await expect(fs.undo(t1, txn)).rejects.toBeInstanceOf(UndoError);
      } finally {
        await fs.tpcAbort(txn);
      }
      expect((await fs.load(OID)).data.toString()).toBe('v1');
    }));

  it('keeps the blob file of an object stored twice in a transaction: its last record uses it', () =>
    withStorage(async (fs, dir) => {
      const txn = { description: 'a blob, twice' };
      await fs.tpcBegin(txn, { tid: at(-100) });
      for (const content of ['first', 'second']) {
        const file = join(dir, content);
        await writeFile(file, content);
        await fs.storeBlob(OID, Z64, BLOB_RECORD, file, txn);
      }
      await fs.tpcVote(txn);
      const tid = await fs.tpcFinish(txn);
      await commitAt(fs, at(100), [[OTHER, Z64, 'x']]);
      await fs.pack(T);
      expect(await readFile(await fs.loadBlob(OID, tid), 'utf8')).toBe('second');
    }, true));

  it('syncs the packed file before it replaces the data file', () =>
    withStorage(async (fs, dir) => {
      const t0 = await commitAt(fs, at(-200), [[OID, Z64, 'v0']]);
      await commitAt(fs, at(-100), [[OID, t0, 'v1']]);
      const synced = new Set<number>();
      const restore = await onFileHandleSyncs(dir, (fd) => void synced.add(fstatSync(fd).ino));
      try {
        expect((await fs.pack(T)).packed).toBe(true);
      } finally {
        restore();
      }
      expect(synced.has(statSync(join(dir, 'Data.fs')).ino)).toBe(true);
    }));

  it("removes at a read-write open the output a pack stopped before its end left (Data.fs.pack), and says so; a read-only open leaves it", async () => {
    const dir = await tempDir();
    const path = join(dir, 'Data.fs');
    const fs = await FileStorage.open(path, { create: true, fsync: false });
    await commitAt(fs, at(-100), [[OID, Z64, 'v0']]);
    await fs.close();
    writeFileSync(`${path}.pack`, Buffer.alloc(5000, 1));
    const readOnly = await FileStorage.open(path, { readOnly: true });
    await readOnly.close();
    expect(existsSync(`${path}.pack`)).toBe(true);
    const again = await FileStorage.open(path, { fsync: false });
    try {
      expect(existsSync(`${path}.pack`)).toBe(false);
      expect(again.stalePackRemovedOnOpen).toBe(5000);
      const lines: string[] = [];
      logOpenRepairs((level, message) => void lines.push(`${level} ${message}`), again);
      expect(lines).toEqual([`info ${path}: removed ${path}.pack (5000 bytes), the unfinished output of a pack stopped before its end (the data file is as before that pack)`]);
      expect((await again.load(OID)).data.toString()).toBe('v0');
    } finally {
      await again.close();
    }
    const clean = await FileStorage.open(path, { fsync: false });
    expect(clean.stalePackRemovedOnOpen).toBeNull();
    await clean.close();
  });

  it('refuses to create a missing data file beside a pack output (a pack stopped between its renames), keeping that output', async () => {
    const dir = await tempDir();
    const path = join(dir, 'Data.fs');
    const fs = await FileStorage.open(path, { create: true, fsync: false });
    await commitAt(fs, at(-100), [[OID, Z64, 'v0']]);
    await fs.close();
    renameSync(path, `${path}.pack`);
    await expect(FileStorage.open(path, { create: true, fsync: false })).rejects.toThrow(`${path}: missing, but ${path}.pack (a pack's output) is there`);
    expect(existsSync(path)).toBe(false);
    expect(statSync(`${path}.pack`).size).toBeGreaterThan(4);
    renameSync(`${path}.pack`, path);
    const again = await FileStorage.open(path, { fsync: false });
    try {
      expect((await again.load(OID)).data.toString()).toBe('v0');
    } finally {
      await again.close();
    }
    // To start empty is to discard it: create 'truncate' goes on, and the leftover goes with the rest.
    renameSync(path, `${path}.pack`);
    const fresh = await FileStorage.open(path, { create: 'truncate', fsync: false });
    try {
      expect(fresh.transactionCount).toBe(0);
      expect(existsSync(`${path}.pack`)).toBe(false);
    } finally {
      await fresh.close();
    }
  });
});
