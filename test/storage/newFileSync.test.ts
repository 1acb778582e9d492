// A new data file's name is made durable (its directory synced) before the
// open returns, so the first commits reported durable cannot vanish with
// their file's directory entry in a crash.

import { dirname, join } from 'node:path';
import { afterAll, expect, it, vi } from 'vitest';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';

const synced: string[] = [];
vi.mock('../../src/storage/fileio.js', async (original) => {
  const real = await original<typeof import('../../src/storage/fileio.js')>();
  return {
    ...real,
    syncDirectory: async (dir: string) => {
      synced.push(dir);
      await real.syncDirectory(dir);
    },
  };
});
const { FileStorage } = await import('../../src/storage/FileStorage.js');

afterAll(cleanupTempDirs);

it('syncs the directory of a data file it creates, and not on every open of an existing one', async () => {
  const path = join(await tempDir(), 'Data.fs');
  const fs = await FileStorage.open(path, { create: true });
  expect(synced).toEqual([dirname(path)]);
  await fs.close();
  synced.length = 0;
  const again = await FileStorage.open(path);
  expect(synced).toEqual([]);
  await again.close();
});

it('syncs a new blob directory and the directory holding it before open returns', async () => {
  const dir = await tempDir();
  synced.length = 0;
  const fs = await FileStorage.open(join(dir, 'Data.fs'), { create: true, blobDir: join(dir, 'blobs') });
  try {
    expect(synced).toEqual(expect.arrayContaining([dir, join(dir, 'blobs')]));
  } finally {
    await fs.close();
  }
});
