// A chain file whose open fails part way (a full disk writing its header)
// leaves no descriptor open behind it.

import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it, vi } from 'vitest';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';

let failWrites = false;
vi.mock('node:fs', async (original) => {
  const real = await original<typeof import('node:fs')>();
  return {
    ...real,
    writeSync: (...args: Parameters<typeof real.writeSync>) => {
      if (failWrites) throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
      return (real.writeSync as (...a: unknown[]) => number)(...args);
    },
  };
});
const { FileStorage } = await import('../../src/storage/FileStorage.js');
const { HashChain } = await import('../../src/failover/hashChain.js');

afterAll(cleanupTempDirs);

it('closes the chain file when writing its header fails (a descriptor leaked at every attempt)', async () => {
  const fs = await FileStorage.open(join(await tempDir(), 'Data.fs'), { create: true, fsync: false });
  try {
    const open = readdirSync('/proc/self/fd').length;
    failWrites = true;
    for (let i = 0; i < 5; i++) await expect(HashChain.open(fs, { fsync: false })).rejects.toThrow(/ENOSPC/);
    failWrites = false;
    expect(readdirSync('/proc/self/fd').length).toBe(open);
  } finally {
    failWrites = false;
    await fs.close();
  }
});
