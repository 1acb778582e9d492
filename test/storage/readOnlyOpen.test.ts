// A read-only open of a file another process writes: what it read past the
// end it saw at first may have changed under it (an abort or a close cuts
// bytes back, commits follow) and read as damage. It scans again when the
// file changed while it read, and reports damage only from a file that held
// still; a writable open (the file is its own) never scans twice.

import { utimesSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { CorruptedDataError } from '../../src/errors.js';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { commit, oidOf } from './storageHarness.js';
import { Z64 } from '../../src/storage/timestamp.js';

/** Run once by the next scan, which then fails as a scan of a moving file does. */
let interfere: (() => void) | null = null;
vi.mock('../../src/storage/scan.js', async (importOriginal) => {
  const real = await importOriginal<typeof import('../../src/storage/scan.js')>();
  return {
    ...real,
    scanFile: async (...args: Parameters<typeof real.scanFile>) => {
      const act = interfere;
      if (act) {
        interfere = null;
        act();
        throw new CorruptedDataError(args[1], 4, 'transaction runs past the end of the file, yet intact transactions follow');
      }
      return real.scanFile(...args);
    },
  };
});

afterAll(cleanupTempDirs);

async function fileWithTwo(): Promise<string> {
  const path = join(await tempDir(), 'Data.fs');
  const fs = await FileStorage.open(path, { create: true, fsync: false });
  await commit(fs, [[oidOf(1), Z64, Buffer.from('one')]]);
  await commit(fs, [[oidOf(2), Z64, Buffer.from('two')]]);
  await fs.close();
  return path;
}

/** Touch the file as a writer would (its modification time moves). */
const written = (path: string) => (): void => utimesSync(path, new Date(), new Date(Date.now() + 5_000));

describe('opening a file another process writes', () => {
  it('read-only, scans again when the file changed while it read, and then opens it', async () => {
    const path = await fileWithTwo();
    interfere = written(path);
    const ro = await FileStorage.open(path, { readOnly: true });
    try {
      expect(ro.transactionCount).toBe(2);
    } finally {
      await ro.close();
    }
  });

  it('read-only, reports damage from a file that held still', async () => {
    const path = await fileWithTwo();
    interfere = () => undefined;
    await expect(FileStorage.open(path, { readOnly: true })).rejects.toBeInstanceOf(CorruptedDataError);
  });

  it('writable, reports what it found at once (nobody else writes its file)', async () => {
    const path = await fileWithTwo();
    interfere = written(path);
    await expect(FileStorage.open(path, { fsync: false })).rejects.toBeInstanceOf(CorruptedDataError);
  });
});

describe('following a file read-only', () => {
  it('is refused: a read-only storage sees no commits made elsewhere, and would wait for ever', async () => {
    const path = await fileWithTwo();
    const ro = await FileStorage.open(path, { readOnly: true });
    try {
      expect(() => ro.iterator(null, null, { follow: true })).toThrow(/a read-only storage cannot follow the file/);
      let seen = 0;
      for await (const _ of ro.iterator()) seen++;
      expect(seen).toBe(2);
    } finally {
      await ro.close();
    }
  });
});
