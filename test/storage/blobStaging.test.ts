// Blob staging files left in tmp/ by a process stopped in the middle of a
// commit (or a secondary in the middle of receiving blobs) are removed by
// the next writable open once old enough; other files in tmp/, recent
// staging files and read-only opens are left alone.

import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BlobDirectory, STALE_STAGING_MS } from '../../src/storage/blobs.js';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { logOpenRepairs } from '../../src/replication/log.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';

afterAll(cleanupTempDirs);

describe('a writable open of a blob directory', () => {
  it('removes the staging files unchanged since before the limit, and nothing else', async () => {
    const root = join(await tempDir(), 'blobs');
    const first = await BlobDirectory.open(root, { create: true });
    expect(first.staleStagingRemoved).toEqual({ files: 0, bytes: 0 });
    const left = [first.tempPath(), first.tempPath()];
    await writeFile(left[0]!, 'x'.repeat(1000));
    await writeFile(left[1]!, '');
    const zodbClient = join(root, 'tmp', 'tmpk3_9zq1a'); // a ZODB client sharing the directory names its files so
    await writeFile(zodbClient, 'not ours');
    const dirNamedLikeOne = join(root, 'tmp', '0123456789abcdef.tmp');
    await mkdir(dirNamedLikeOne);
    const otherTmp = join(root, 'tmp', 'upload-by-another-writer.tmp'); // a .tmp file not named as ours
    await writeFile(otherTmp, 'not ours either');

    // Changed after the limit: kept (a transaction may still be using them).
    const recent = await BlobDirectory.open(root, { create: true, staleBeforeMs: Date.now() - STALE_STAGING_MS });
    expect(recent.staleStagingRemoved).toEqual({ files: 0, bytes: 0 });
    // A read-only open removes nothing.
    const readOnly = await BlobDirectory.open(root, { create: false, staleBeforeMs: Date.now() + 60_000 });
    expect(readOnly.staleStagingRemoved).toBeNull();
    expect(left.every((p) => existsSync(p))).toBe(true);

    const later = await BlobDirectory.open(root, { create: true, staleBeforeMs: Date.now() + 60_000 });
    expect(later.staleStagingRemoved).toEqual({ files: 2, bytes: 1000 });
    expect(left.some((p) => existsSync(p))).toBe(false);
    expect(existsSync(zodbClient)).toBe(true);
    expect(existsSync(dirNamedLikeOne)).toBe(true);
    expect(existsSync(otherTmp)).toBe(true);
  });

  it('leaves staging files just written alone by default (another storage sharing the directory may be using them)', async () => {
    const root = join(await tempDir(), 'blobs');
    const first = await BlobDirectory.open(root, { create: true });
    const fresh = first.tempPath();
    await writeFile(fresh, 'in use');
    expect((await BlobDirectory.open(root, { create: true })).staleStagingRemoved).toEqual({ files: 0, bytes: 0 });
    expect(existsSync(fresh)).toBe(true);
  });

  it('is done by a storage opened an hour after they were left, which says so', async () => {
    const dir = await tempDir();
    const blobDir = join(dir, 'blobs');
    const fs = await FileStorage.open(join(dir, 'Data.fs'), { create: true, blobDir, fsync: false });
    const leftover = fs.blobs!.tempPath();
    await writeFile(leftover, 'half a blob');
    await fs.close();

    const lines: string[] = [];
    const soon = await FileStorage.open(join(dir, 'Data.fs'), { blobDir, fsync: false });
    logOpenRepairs((level, message) => void lines.push(`${level} ${message}`), soon);
    await soon.close();
    expect(existsSync(leftover)).toBe(true);
    expect(lines).toEqual([]);

    const hourLater = Date.now() + STALE_STAGING_MS + 1000;
    const later = await FileStorage.open(join(dir, 'Data.fs'), { blobDir, fsync: false, now: () => hourLater });
    logOpenRepairs((level, message) => void lines.push(`${level} ${message}`), later);
    await later.close();
    expect(existsSync(leftover)).toBe(false);
    expect(lines).toEqual([
      `info ${blobDir}: removed 1 blob staging file(s) (11 bytes) from tmp/ that no transaction was using: left by a process stopped in the middle of a commit or of receiving blobs`,
    ]);
  });
});
