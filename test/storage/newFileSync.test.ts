// A new data file's name is made durable (its directory synced) before the
// open returns, so the first commits reported durable cannot vanish with
// their file's directory entry in a crash.

import { appendFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { afterAll, expect, it, vi } from 'vitest';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { directorySyncs } from '../helpers/directorySyncs.js';

const synced = directorySyncs.synced;

vi.mock('../../src/storage/fileio.js', async (original) => (await import('../helpers/directorySyncs.js')).fileioRecordingSyncs(original));
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

it('syncs the directory once it wrote the side file of a cut tail (.trN), before it cuts: the side file holds the only copy of the bytes', async () => {
  const path = join(await tempDir(), 'Data.fs');
  const fs = await FileStorage.open(path, { create: true, fsync: false });
  const txn = { description: 'kept' };
  await fs.tpcBegin(txn);
  fs.store(fs.newOid(), Buffer.alloc(8), Buffer.from('kept'), txn);
  await fs.tpcVote(txn);
  await fs.tpcFinish(txn);
  await fs.close();
  // A transaction header torn after 17 bytes, as a crash in the middle of a commit leaves it.
  appendFileSync(path, Buffer.from('0400000000000000000000000000001763', 'hex'));
  synced.length = 0;
  const again = await FileStorage.open(path, { fsync: false });
  try {
    expect(again.tailCutOnOpen?.keptIn).toBe(`${path}.tr0`);
    expect(synced).toEqual([dirname(path)]);
  } finally {
    await again.close();
  }
});
