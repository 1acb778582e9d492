// Copying a storage through iterator() + restore (as zc.zrs and ZODB's
// copyTransactionsFrom do) reproduces every intact fixture byte for byte:
// tids, statuses, metadata, backpointers (via dataTxn) and blob files.

import { existsSync, readFileSync } from 'node:fs';
import { copyFile, readdir, readFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { POSKeyError } from '../../src/errors.js';
import type { TransactionMeta } from '../../src/storage/types.js';
import { cleanupTempDirs, copyZodbFixture, hex as hexOf, readManifest, tempDir } from '../helpers/fixtures.js';

afterAll(cleanupTempDirs);

const INTACT = ['basic', 'undo', 'packed', 'blobs', 'large', 'fs21-legacy'];

/** Every file under `root` (but not the blob temp area), relative path -> bytes as hex. */
async function tree(root: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (dir: string): Promise<void> => {
    for (const e of await readdir(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      if (e.isDirectory()) {
        if (relative(root, p) !== 'tmp') await walk(p);
      } else out[relative(root, p)] = (await readFile(p)).toString('hex');
    }
  };
  await walk(root);
  return out;
}

/** Copy every transaction of `src` into `dst`; returns how many records carried a blob. */
async function copyAll(src: FileStorage, dst: FileStorage, staging: string): Promise<number> {
  let blobRecords = 0;
  let n = 0;
  for await (const t of src.iterator()) {
    const txn: TransactionMeta = { user: t.user, description: t.description, extensionBytes: t.extensionBytes };
    await dst.tpcBegin(txn, { tid: t.tid, status: t.status });
    for (const r of t.records) {
      const blob = src.blobs
        ? await src.loadBlob(r.oid, r.tid).catch((e: unknown) => {
            if (e instanceof POSKeyError) return null;
            throw e;
          })
        : null;
      if (blob === null) dst.restore(r.oid, r.tid, r.data, r.dataTxn, txn);
      else {
        // restoreBlob takes the file over, so hand it a copy.
        const staged = join(staging, `${n++}.blob`);
        await copyFile(blob, staged);
        await dst.restoreBlob(r.oid, r.tid, r.data, staged, r.dataTxn, txn);
        blobRecords++;
      }
    }
    await dst.tpcVote(txn);
    expect(hexOf(await dst.tpcFinish(txn))).toBe(hexOf(t.tid));
  }
  return blobRecords;
}

describe.each(INTACT)('copy of fixture %s through iterator + restore', (fixture) => {
  it('is byte-identical (Data.fs and blob files)', async () => {
    const srcDir = await copyZodbFixture(fixture);
    const hasBlobs = existsSync(join(srcDir, 'blobs'));
    const src = await FileStorage.open(join(srcDir, 'Data.fs'), {
      readOnly: true,
      blobDir: hasBlobs ? join(srcDir, 'blobs') : undefined,
    });
    const dstDir = await tempDir('zrs-copy-');
    const dstPath = join(dstDir, 'Data.fs');
    const dst = await FileStorage.open(dstPath, {
      create: true,
      blobDir: hasBlobs ? join(dstDir, 'blobs') : undefined,
      fsync: false,
    });
    let blobRecords: number;
    try {
      blobRecords = await copyAll(src, dst, dstDir);
      expect(hexOf(dst.lastTransaction())).toBe(hexOf(src.lastTransaction()));
      expect(dst.objectCount).toBe(src.objectCount);
    } finally {
      await dst.close();
      await src.close();
    }
    const want = readFileSync(join(srcDir, 'Data.fs'));
    const got = readFileSync(dstPath);
    // A new file is always FS30; the FS21 fixture differs only in its magic.
    expect(got.subarray(0, 4).toString('latin1')).toBe('FS30');
    expect(got.length).toBe(want.length);
    expect(got.subarray(4).equals(want.subarray(4))).toBe(true);
    if (fixture !== 'fs21-legacy') expect(got.equals(want)).toBe(true);
    if (hasBlobs) {
      const m = await readManifest(fixture);
      expect(blobRecords).toBe(m.storage.blobs_loadBlob.length);
      expect(blobRecords).toBeGreaterThan(0);
      expect(await tree(join(dstDir, 'blobs'))).toEqual(await tree(join(srcDir, 'blobs')));
    }
  });
});
