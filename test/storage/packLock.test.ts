// Pack reads the packed file's index before it takes the commit lock: under
// the lock only the transactions committed while it copied are scanned (a
// scan of the whole packed file there held every commit up).

import { join } from 'node:path';
import { afterAll, expect, it, vi } from 'vitest';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';

const scans: Array<{ from: number; to: number }> = [];
vi.mock('../../src/storage/scan.js', async (original) => {
  const real = await original<typeof import('../../src/storage/scan.js')>();
  return {
    ...real,
    scanWhole: (...args: Parameters<typeof real.scanWhole>) => {
      scans.push({ from: args[2], to: args[3] });
      return real.scanWhole(...args);
    },
  };
});
const { FileStorage } = await import('../../src/storage/FileStorage.js');
const { commitMany } = await import('../replication/helpers.js');

afterAll(cleanupTempDirs);

it('scans under the commit lock only what was committed while it copied', async () => {
  const fs = await FileStorage.open(join(await tempDir(), 'Data.fs'), { create: true, fsync: false });
  try {
    await commitMany(fs, 40);
    const acquire = fs.acquireCommitLock.bind(fs);
    let locked = false;
    let tail: Promise<Buffer[]> | null = null;
    vi.spyOn(fs, 'acquireCommitLock').mockImplementation(async () => {
      // A commit that lands while pack copies: it waits for the lock pack is about to take.
      tail ??= commitMany(fs, 1);
      await tail;
      const release = await acquire();
      locked = true;
      return () => ((locked = false), release());
    });
    scans.length = 0;
    const lockedScans: Array<{ from: number; to: number }> = [];
    const real = scans.push.bind(scans);
    scans.push = (...items) => (locked && lockedScans.push(...items), real(...items));
    await fs.pack(Date.now() / 1000 + 60);
    expect(tail).not.toBeNull();
    expect(scans[0]!.from).toBe(4);
    // Under the lock: from where the copy made before it ended, to the end with the tail.
    expect(lockedScans).toEqual([{ from: scans[0]!.to, to: fs.getSize() }]);
    expect(lockedScans[0]!.to).toBeGreaterThan(lockedScans[0]!.from);
    // The tail is in the new file and its index.
    const [tailTid] = await tail!;
    expect(fs.lastTransaction()).toEqual(tailTid);
    expect(fs.findTransaction(tailTid!)).toBe(lockedScans[0]!.from);
  } finally {
    vi.restoreAllMocks();
    await fs.close();
  }
});
