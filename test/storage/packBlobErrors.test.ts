// A pack whose packed file is in place but one of whose old blob files cannot
// be deleted: the pack succeeds, deletes the rest and says what it left.

import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it, vi } from 'vitest';
import { cleanupTempDirs, copyZodbFixture } from '../helpers/fixtures.js';

let failed = 0;
vi.mock('node:fs/promises', async (original) => {
  const real = await original<typeof import('node:fs/promises')>();
  return {
    ...real,
    unlink: async (path: string) => {
      // The first blob file there is that pack deletes fails, as on a disk giving EIO.
      if (String(path).endsWith('.blob') && existsSync(path) && failed++ === 0) throw Object.assign(new Error(`EIO: i/o error, unlink '${path}'`), { code: 'EIO' });
      return real.unlink(path);
    },
  };
});
const { FileStorage } = await import('../../src/storage/FileStorage.js');
const { zodbReferences } = await import('../../src/storage/references.js');

afterAll(cleanupTempDirs);

it('a blob file it cannot delete after the swap is reported, not thrown (the pack failed with the file already packed, and the rest were never deleted)', async () => {
  const packCopy = async () => {
    const dir = await copyZodbFixture('blobs');
    const path = join(dir, 'Data.fs');
    const fs = await FileStorage.open(path, { blobDir: join(dir, 'blobs') });
    try {
      return { report: await fs.pack(Date.now() / 1000, zodbReferences), old: existsSync(`${path}.old`) };
    } finally {
      await fs.close();
    }
  };
  const failing = await packCopy();
  const clean = await packCopy();
  expect(failed).toBeGreaterThan(1);
  expect(clean.report).toMatchObject({ packed: true, blobFilesNotRemoved: 0, blobRemovalError: null });
  expect(failing.report).toMatchObject({ packed: true, removedBlobFiles: clean.report.removedBlobFiles - 1, blobFilesNotRemoved: 1 });
  expect(failing.report.blobRemovalError).toMatch(/^EIO: i\/o error, unlink '.*\.blob'$/);
  expect(failing.old).toBe(true);
});
