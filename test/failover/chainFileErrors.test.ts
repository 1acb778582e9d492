// A chain file whose open fails part way (a full disk writing its header)
// leaves no descriptor open behind it; and the chain writes a batch at most
// per write, however many entries wait, so a crash tears no more than the
// open takes for a torn tail.

import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it, vi } from 'vitest';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';

let failWrites = false;
const writes: Array<{ fd: number; bytes: number }> = [];
vi.mock('node:fs', async (original) => {
  const real = await original<typeof import('node:fs')>();
  return {
    ...real,
    write: (...args: unknown[]) => {
      writes.push({ fd: args[0] as number, bytes: args[3] as number });
      return (real.write as (...a: unknown[]) => void)(...args);
    },
    writeSync: (...args: Parameters<typeof real.writeSync>) => {
      if (failWrites) throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
      return (real.writeSync as (...a: unknown[]) => number)(...args);
    },
  };
});
const { FileStorage } = await import('../../src/storage/FileStorage.js');
const { CHAIN_ENTRY_BYTES, HashChain } = await import('../../src/failover/hashChain.js');
const { nodeDisk } = await import('../../src/storage/disk.js');
const { commitMany } = await import('../replication/helpers.js');

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

it('writes a batch of entries at most per write while entries pile up behind a slow sync', async () => {
  const path = join(await tempDir(), 'Data.fs');
  // Each sync of the chain takes a while: the commits go on meanwhile, and their links wait.
  const disk = {
    ...nodeDisk,
    async datasync(fd: number): Promise<void> {
      await nodeDisk.datasync(fd);
      await new Promise((r) => setTimeout(r, 20));
    },
  };
  const fs = await FileStorage.open(path, { create: true, fsync: false, disk });
  const chain = await HashChain.open(fs, { fsync: true });
  try {
    writes.length = 0;
    for (let i = 0; i < 30; i++) {
      await commitMany(fs, 100, 1);
      await new Promise((r) => setImmediate(r));
    }
    await chain.flush();
    // The storage writes with writeSync: these are the chain's.
    const sizes = writes.map((w) => w.bytes / CHAIN_ENTRY_BYTES);
    expect(sizes.reduce((a, b) => a + b, 0)).toBe(3000);
    expect(Math.max(...sizes)).toBeLessThanOrEqual(512);
  } finally {
    await chain.close();
    await fs.close();
  }
});
