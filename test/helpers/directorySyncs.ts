// A stand-in for fileio.js's syncDirectory, for tests that mock that module
// in (vi.mock, see newFileSync.test.ts): it records each directory synced
// (resolved), and fails with EIO while `fail` is set.

import { resolve } from 'node:path';
import type * as Fileio from '../../src/storage/fileio.js';

export const directorySyncs = { synced: [] as string[], fail: false };

/** fileio.js with syncDirectory recorded: `vi.mock(path, async (original) => (await import(this)).fileioRecordingSyncs(original))`. */
export async function fileioRecordingSyncs(original: () => Promise<typeof Fileio>): Promise<typeof Fileio> {
  const real = await original();
  return {
    ...real,
    syncDirectory: async (dir: string) => {
      if (directorySyncs.fail) throw Object.assign(new Error(`EIO: i/o error, fsync '${dir}'`), { code: 'EIO' });
      directorySyncs.synced.push(resolve(dir));
      return real.syncDirectory(dir);
    },
  };
}
