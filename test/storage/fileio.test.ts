// The storage's small file helpers on a disk that fails: a directory sync
// that fails for a reason other than "not supported" is an error, and a
// write the file takes only part of is written again until it is whole.

import { open, readFile, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { syncDirectory, writeFileSynced, writeFully } from '../../src/storage/fileio.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';

afterAll(cleanupTempDirs);
afterEach(() => vi.restoreAllMocks());

/** The prototype every FileHandle shares (there is no exported class to spy on). */
async function fileHandlePrototype(dir: string): Promise<FileHandle> {
  const probe = await open(join(dir, 'probe'), 'w');
  await probe.close();
  return Object.getPrototypeOf(probe) as FileHandle;
}

const failing = (code: string) => () => Promise.reject(Object.assign(new Error(`${code}: directory sync`), { code }));

describe('syncDirectory', () => {
  it('throws a failed sync (it swallowed EIO, so a rename it could not make durable was reported durable)', async () => {
    const dir = await tempDir();
    vi.spyOn(await fileHandlePrototype(dir), 'sync').mockImplementation(failing('EIO'));
    await expect(syncDirectory(dir)).rejects.toMatchObject({ code: 'EIO' });
  });

  it('does nothing where a directory cannot be synced', async () => {
    const dir = await tempDir();
    const sync = vi.spyOn(await fileHandlePrototype(dir), 'sync');
    for (const code of ['EINVAL', 'ENOTSUP']) {
      sync.mockImplementationOnce(failing(code));
      await expect(syncDirectory(dir)).resolves.toBeUndefined();
    }
    await expect(syncDirectory(join(dir, 'missing'))).rejects.toMatchObject({ code: 'ENOENT' });
  });
});

describe('writeFully', () => {
  it('writes again what a write did not take, and fails on a write that takes nothing', async () => {
    const dir = await tempDir();
    const path = join(dir, 'f');
    const handle = await open(path, 'w+');
    try {
      const write = handle.write.bind(handle);
      // A disk filling up: each write takes at most 3 bytes.
      const spy = vi.spyOn(handle, 'write').mockImplementation(((buf: Uint8Array, offset: number, length: number, position: number | null) =>
        write(buf, offset, Math.min(length, 3), position)) as FileHandle['write']);
      const bytes = Buffer.from('0123456789');
      expect(await writeFully(handle, bytes, 5, path)).toBe(10);
      expect(spy).toHaveBeenCalledTimes(4);
      expect((await readFile(path)).subarray(5)).toEqual(bytes);
      spy.mockImplementation((() => Promise.resolve({ bytesWritten: 0, buffer: bytes })) as unknown as FileHandle['write']);
      await expect(writeFully(handle, bytes, 0, path)).rejects.toThrow(`${path}: the file took none of 10 bytes written to it`);
    } finally {
      await handle.close();
    }
  });
});

describe('writeFileSynced', () => {
  it('writes the parts in order, removes a file it could not write whole, and refuses to create one that exists', async () => {
    const dir = await tempDir();
    const path = join(dir, 'f');
    await writeFileSynced(path, [Buffer.from('ab'), Buffer.from('cde')], 'w');
    expect(await readFile(path, 'latin1')).toBe('abcde');
    await expect(writeFileSynced(path, [Buffer.from('x')], 'wx')).rejects.toMatchObject({ code: 'EEXIST' });
    expect(await readFile(path, 'latin1')).toBe('abcde');
    const sync = vi.spyOn(await fileHandlePrototype(dir), 'sync').mockImplementationOnce(failing('EIO'));
    await expect(writeFileSynced(join(dir, 'g'), [Buffer.from('partial')], 'wx')).rejects.toMatchObject({ code: 'EIO' });
    expect(sync).toHaveBeenCalledTimes(1);
    expect(existsSync(join(dir, 'g'))).toBe(false);
    await writeFile(join(dir, 'h'), 'old');
    await expect(writeFileSynced(join(dir, 'h'), [Buffer.alloc(0)], 'w').then(() => readFile(join(dir, 'h'), 'latin1'))).resolves.toBe('');
  });
});
