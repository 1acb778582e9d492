// Placing a voted transaction's blob files: with fsync, the directories whose
// entries changed (the oid's directory and the parents of new directories)
// are synced before the commit may be reported; a placement that fails part
// way removes the files it already placed. A storage's vote is not done
// until its blobs are placed: a finish waits for it, an abort lets it settle.

import { existsSync, readdirSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { BlobDirectory } from '../../src/storage/blobs.js';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { oidOf } from './storageHarness.js';
import { BLOB_RECORD } from '../replication/helpers.js';
import { tidFromTime, Z64 } from '../../src/storage/timestamp.js';
import { directorySyncs } from '../helpers/directorySyncs.js';
import { onFileHandleSyncs } from '../helpers/fileSyncs.js';

const synced = directorySyncs.synced;

vi.mock('../../src/storage/fileio.js', async (original) => (await import('../helpers/directorySyncs.js')).fileioRecordingSyncs(original));

afterAll(cleanupTempDirs);

async function staged(blobs: BlobDirectory, text: string): Promise<string> {
  const path = blobs.tempPath();
  await writeFile(path, text);
  return path;
}

describe('BlobDirectory.place', () => {
  it("syncs a staged file's bytes before renaming it into place", async () => {
    const dir = await tempDir();
    const blobs = await BlobDirectory.open(join(dir, 'blobs'), { create: true });
    const stagedPath = await staged(blobs, 'bytes first');
    const atSync: boolean[] = [];
    const restore = await onFileHandleSyncs(dir, () => void atSync.push(existsSync(stagedPath)));
    try {
      await blobs.place([{ oid: oidOf(9), tid: tidFromTime(Date.UTC(2030, 0, 1)), stagedPath }], true);
    } finally {
      restore();
    }
    expect(atSync).toContain(true);
  });

  it('syncs the oid directory and every directory a new one was added to', async () => {
    const blobs = await BlobDirectory.open(await tempDir(), { create: true });
    const tid = tidFromTime(Date.UTC(2030, 0, 1));
    synced.length = 0;
    const [placed] = await blobs.place([{ oid: oidOf(7), tid, stagedPath: await staged(blobs, 'seven') }], true);
    // Every directory from the oid's up to the root was new: each one and the root hold a new entry.
    const want: string[] = [];
    for (let d = resolve(dirname(placed!)); d !== dirname(resolve(blobs.root)); d = dirname(d)) want.push(d);
    expect(want.length).toBeGreaterThan(1);
    expect([...synced].sort()).toEqual(want.sort());
    // A committed revision is read-only, as ZODB leaves it.
    expect((await import('node:fs')).statSync(placed!).mode & 0o222).toBe(0);

    // A second revision of the same oid: only its directory changes.
    synced.length = 0;
    await blobs.place([{ oid: oidOf(7), tid: tidFromTime(Date.UTC(2030, 0, 2)), stagedPath: await staged(blobs, 'seven again') }], true);
    expect(synced).toEqual([resolve(dirname(placed!))]);

    // Without fsync nothing is synced.
    synced.length = 0;
    await blobs.place([{ oid: oidOf(8), tid, stagedPath: await staged(blobs, 'eight') }], false);
    expect(synced).toEqual([]);
  });

  it('removes the files it placed when a later one cannot be placed', async () => {
    const blobs = await BlobDirectory.open(await tempDir(), { create: true });
    const tid = tidFromTime(Date.UTC(2030, 0, 1));
    const first = { oid: oidOf(1), tid, stagedPath: await staged(blobs, 'one') };
    const gone = { oid: oidOf(2), tid, stagedPath: blobs.tempPath() }; // never written: its rename fails
    await expect(blobs.place([first, gone], true)).rejects.toMatchObject({ code: 'ENOENT' });
    expect(existsSync(blobs.pathFor(oidOf(1), tid))).toBe(false);
    expect(existsSync(join(blobs.root, 'tmp'))).toBe(true);
  });
});

describe('BlobDirectory.open', () => {
  it('takes only the bushy layout, and an unmarked directory holding files as lawn, as ZODB does', async () => {
    const { mkdirSync, readFileSync, writeFileSync } = await import('node:fs');
    // A marker naming another layout.
    const lawn = await tempDir();
    writeFileSync(join(lawn, '.layout'), 'lawn\n');
    await expect(BlobDirectory.open(lawn, { create: true })).rejects.toThrow(/uses layout "lawn"; only "bushy" is supported/);

    // No marker but files: ZODB picks lawn; opened as bushy every blob in it would be missing.
    const unmarked = await tempDir();
    mkdirSync(join(unmarked, '0x01'));
    writeFileSync(join(unmarked, '0x01', '0x03ead1c2b3a4f5e6.blob'), 'a lawn blob');
    for (const create of [true, false]) {
      await expect(BlobDirectory.open(unmarked, { create })).rejects.toThrow(/has no \.layout file but holds "0x01": ZODB reads it as the "lawn" layout/);
    }
    expect(existsSync(join(unmarked, '.layout'))).toBe(false);

    // Hidden files and a tmp/ alone (a crash before the marker was written) are an unused directory.
    const unused = await tempDir();
    mkdirSync(join(unused, 'tmp'));
    writeFileSync(join(unused, '.hidden'), '');
    await BlobDirectory.open(unused, { create: true });
    expect(readFileSync(join(unused, '.layout'), 'latin1')).toBe('bushy');

    await expect(BlobDirectory.open(join(unused, 'absent'), { create: false })).rejects.toThrow(/does not exist/);
  });

  it('a layout marker it could not write is not left behind (an empty one made every later open fail)', async () => {
    const { open, readFile } = await import('node:fs/promises');
    const root = await tempDir();
    const probe = await open(join(root, 'probe'), 'w');
    const proto = Object.getPrototypeOf(probe) as { write: (...args: unknown[]) => Promise<unknown> };
    await probe.close();
    const spy = vi.spyOn(proto, 'write').mockRejectedValueOnce(Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' }));
    try {
      await expect(BlobDirectory.open(join(root, 'blobs'), { create: true })).rejects.toThrow(/ENOSPC/);
    } finally {
      spy.mockRestore();
    }
    expect(existsSync(join(root, 'blobs', '.layout'))).toBe(false);
    await BlobDirectory.open(join(root, 'blobs'), { create: true });
    expect(await readFile(join(root, 'blobs', '.layout'), 'latin1')).toBe('bushy');
  });
});

describe('FileStorage.tpcVote with blobs', () => {
  async function storageWithBlob(): Promise<{ fs: FileStorage; dir: string; txn: object; before: Buffer }> {
    const dir = await tempDir();
    const fs = await FileStorage.open(join(dir, 'Data.fs'), { create: true, fsync: false, blobDir: join(dir, 'blobs') });
    const before = fs.lastTransaction();
    const txn = {};
    await fs.tpcBegin(txn);
    const blobFile = join(dir, 'upload.tmp');
    await writeFile(blobFile, 'blob');
    await fs.storeBlob(oidOf(1), Z64, BLOB_RECORD, blobFile, txn);
    return { fs, dir, txn, before };
  }

  it('refuses a blob whose record is not a blob record (no secondary would get its file), leaving the file where it was', async () => {
    const dir = await tempDir();
    const fs = await FileStorage.open(join(dir, 'Data.fs'), { create: true, fsync: false, blobDir: join(dir, 'blobs') });
    try {
      const txn = {};
      await fs.tpcBegin(txn);
      const blobFile = join(dir, 'upload.tmp');
      await writeFile(blobFile, 'blob');
      await expect(fs.storeBlob(oidOf(1), Z64, Buffer.from('record'), blobFile, txn)).rejects.toThrow(
        /^storeBlob: the record of oid 0x0000000000000001 is not a blob record \(its first pickle must be the class ZODB\.blob\.Blob itself/,
      );
      expect(await readFile(blobFile, 'latin1')).toBe('blob');
      await fs.tpcVote(txn);
      await fs.tpcFinish(txn);
      await expect(fs.load(oidOf(1))).rejects.toThrow();
    } finally {
      await fs.close();
    }
  });

  it('refuses tpcFinish while the blobs are being placed, and after placing them failed', async () => {
    const { fs, dir, txn, before } = await storageWithBlob();
    try {
      // A plain file where the oid's first directory must go: placing the blob fails.
      await writeFile(join(dir, 'blobs', '0x00'), 'in the way');
      const vote = fs.tpcVote(txn);
      await expect(fs.tpcFinish(txn)).rejects.toThrow('tpcFinish: the vote has not finished');
      await expect(vote).rejects.toThrow();
      await expect(fs.tpcFinish(txn)).rejects.toThrow('tpcFinish: transaction not voted');
      await fs.tpcAbort(txn);
      expect(fs.lastTransaction()).toEqual(before);
      expect(fs.transactionCount).toBe(0);
    } finally {
      await fs.close();
    }
  });

  it('an abort during the vote waits for the blobs to be placed, then removes them', async () => {
    const { fs, dir, txn, before } = await storageWithBlob();
    try {
      const vote = fs.tpcVote(txn);
      const abort = fs.tpcAbort(txn);
      await vote;
      await abort;
      expect(fs.lastTransaction()).toEqual(before);
      // No revision file anywhere under the oid's directory, and nothing left in tmp.
      const oidDir = (await BlobDirectory.open(join(dir, 'blobs'), { create: false })).oidDir(oidOf(1));
      expect(existsSync(oidDir) ? readdirSync(oidDir) : []).toEqual([]);
      expect(readdirSync(join(dir, 'blobs', 'tmp'))).toEqual([]);
    } finally {
      await fs.close();
    }
  });

  describe('while storeBlob moves the file in', () => {
    async function storageInTxn(): Promise<{ fs: FileStorage; dir: string; txn: object; blobFile: string }> {
      const dir = await tempDir();
      const fs = await FileStorage.open(join(dir, 'Data.fs'), { create: true, fsync: false, blobDir: join(dir, 'blobs') });
      const txn = {};
      await fs.tpcBegin(txn);
      const blobFile = join(dir, 'upload.tmp');
      await writeFile(blobFile, 'blob');
      return { fs, dir, txn, blobFile };
    }

    it('refuses a vote: it would commit the record without its file', async () => {
      const { fs, txn, blobFile } = await storageInTxn();
      try {
        const storing = fs.storeBlob(oidOf(1), Z64, BLOB_RECORD, blobFile, txn);
        await expect(fs.tpcVote(txn)).rejects.toThrow(/still being moved or copied in/);
        await storing;
        // Once storeBlob is done, the vote goes through and the blob is there.
        await fs.tpcVote(txn);
        const tid = await fs.tpcFinish(txn);
        expect((await import('node:fs')).readFileSync(await fs.loadBlob(oidOf(1), tid), 'utf8')).toBe('blob');
      } finally {
        await fs.close();
      }
    });

    it('an abort meanwhile removes the moved file and fails the store', async () => {
      const { fs, dir, txn, blobFile } = await storageInTxn();
      try {
        const storing = fs.storeBlob(oidOf(1), Z64, BLOB_RECORD, blobFile, txn).then(() => 'stored', (e: Error) => e.message);
        await fs.tpcAbort(txn);
        expect(await storing).toMatch(/aborted while its blob was moved in/);
        expect(readdirSync(join(dir, 'blobs', 'tmp'))).toEqual([]);
      } finally {
        await fs.close();
      }
    });

    it('a file that cannot be moved in leaves a transaction that can only be aborted', async () => {
      const { fs, dir, txn } = await storageInTxn();
      try {
        const before = fs.lastTransaction();
        await expect(fs.storeBlob(oidOf(1), Z64, BLOB_RECORD, join(dir, 'missing'), txn)).rejects.toMatchObject({ code: 'ENOENT' });
        await expect(fs.tpcVote(txn)).rejects.toThrow(/cannot commit, the blob file for oid 0x0000000000000001 could not be moved in/);
        await fs.tpcAbort(txn);
        expect(fs.lastTransaction()).toEqual(before);
        // The storage takes the next transaction as usual.
        const next = {};
        await fs.tpcBegin(next);
        await fs.store(oidOf(2), Z64, BLOB_RECORD, next);
        await fs.tpcVote(next);
        await fs.tpcFinish(next);
        expect(fs.transactionCount).toBe(1);
      } finally {
        await fs.close();
      }
    });
  });
});
