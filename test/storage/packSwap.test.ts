// The moment a pack swaps the rewritten file in. The process may die at any
// instant; here the swap's rename of the new file onto the data file's name
// fails as that stand-in, and the data file must still be there, whole,
// holding every transaction (a missing data file would be created empty by
// the next open with create: true, as every node does). And a swap that
// fails opening the new file must leave the storage writing to the file the
// data file's name holds, never to the old one renamed away.

import { readFileSync } from 'node:fs';
import * as fsPromises from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { tidToSeconds, Z64 } from '../../src/storage/timestamp.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { commit, oidOf } from './storageHarness.js';

/** When set, a rename onto this path fails (the process "dies" there). */
let failRenameTo: string | null = null;
/** When set, an open for reading only that this says yes to fails as if out of descriptors. */
let failOpenForReading: ((path: string) => boolean) | null = null;
/** Paths something was renamed onto, in order. */
const renamedOnto: string[] = [];

vi.mock('node:fs/promises', async (importOriginal) => {
  const real = await importOriginal<typeof fsPromises>();
  return {
    ...real,
    rename: async (from: string, to: string) => {
      if (to === failRenameTo) throw Object.assign(new Error(`rename onto ${to}: injected crash`), { code: 'EIO' });
      await real.rename(from, to);
      renamedOnto.push(to);
    },
    open: async (path: string, flags?: string, mode?: number) => {
      if (flags === 'r' && failOpenForReading?.(path)) throw Object.assign(new Error(`open ${path}: injected EMFILE`), { code: 'EMFILE' });
      return real.open(path, flags, mode);
    },
  };
});

afterAll(cleanupTempDirs);

describe('pack swapping the rewritten file in', () => {
  it('leaves the whole old data file under its name when the swap stops before the new one is in place', async () => {
    const dir = await tempDir();
    const path = join(dir, 'Data.fs');
    const fs = await FileStorage.open(path, { create: true, fsync: false, preallocate: 0 });
    let serial = Z64;
    for (let i = 0; i < 10; i++) serial = await commit(fs, [[oidOf(1), serial, Buffer.from(`revision ${i}`)]]);
    const before = readFileSync(path);
    failRenameTo = path;
    try {
      await expect(fs.pack(tidToSeconds(serial) + 1e-6)).rejects.toThrow(/injected crash/);
    } finally {
      failRenameTo = null;
      await fs.close().catch(() => undefined);
    }
    expect(readFileSync(path).equals(before)).toBe(true);
    const reopened = await FileStorage.open(path, { readOnly: true });
    try {
      expect(reopened.transactionCount).toBe(10);
      expect(reopened.lastTransaction()).toEqual(serial);
    } finally {
      await reopened.close();
    }
  });

  it('a swap that fails opening the packed file leaves the storage on a file its name still holds: later commits survive a reopen', async () => {
    const dir = await tempDir();
    const path = join(dir, 'Data.fs');
    let fs = await FileStorage.open(path, { create: true, fsync: false, preallocate: 0 });
    let serial = Z64;
    for (let i = 0; i < 10; i++) serial = await commit(fs, [[oidOf(1), serial, Buffer.from(`revision ${i}`)]]);
    // The swap's open of the packed file fails, under whichever name it is opened.
    renamedOnto.length = 0;
    failOpenForReading = (p) => p === `${path}.pack` || (p === path && renamedOnto.includes(path));
    let after: Buffer;
    try {
      await expect(fs.pack(tidToSeconds(serial) + 1e-6)).rejects.toThrow(/injected EMFILE/);
      failOpenForReading = null;
      after = await commit(fs, [[oidOf(1), serial, Buffer.from('after the failed pack')]]);
    } finally {
      failOpenForReading = null;
      await fs.close();
    }
    fs = await FileStorage.open(path, { readOnly: true });
    try {
      expect(fs.lastTransaction()).toEqual(after);
      expect((await fs.load(oidOf(1))).data.toString()).toBe('after the failed pack');
    } finally {
      await fs.close();
    }
  });
});

