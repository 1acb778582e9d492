// A pack whose file swap cannot be made durable (its directory's sync fails)
// takes no more commits: they went to the old file, renamed .old, and were
// lost at the next open.

import { join } from 'node:path';
import { afterAll, expect, it, vi } from 'vitest';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { directorySyncs } from '../helpers/directorySyncs.js';

vi.mock('../../src/storage/fileio.js', async (original) => (await import('../helpers/directorySyncs.js')).fileioRecordingSyncs(original));
const { FileStorage } = await import('../../src/storage/FileStorage.js');
const { commitMany } = await import('../replication/helpers.js');

afterAll(cleanupTempDirs);

it('refuses further commits once the swap could not be made durable, and leaves the packed file in place (a commit after it went to the old file and was lost)', async () => {
  const path = join(await tempDir(), 'Data.fs');
  const fs = await FileStorage.open(path, { create: true, fsync: false });
  let closed = false;
  try {
    const tids = await commitMany(fs, 10);
    directorySyncs.fail = true;
    await expect(fs.pack(Date.now() / 1000 + 60)).rejects.toThrow(/the data file was replaced, but syncing its directory failed; the storage refuses further writes/);
    directorySyncs.fail = false;
    await expect(commitMany(fs, 1)).rejects.toThrow(/writes disabled after a failed sync of the directory after the data file was replaced/);
    await fs.close();
    closed = true;
    const again = await FileStorage.open(path, { fsync: false });
    try {
      expect(again.lastTransaction()).toEqual(tids.at(-1));
      expect(again.getSize()).toBeLessThan((await import('node:fs')).statSync(`${path}.old`).size);
    } finally {
      await again.close();
    }
  } finally {
    directorySyncs.fail = false;
    if (!closed) await fs.close();
  }
});
