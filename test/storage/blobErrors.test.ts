// A blob directory on a disk that fails part way: a file moved in from
// another file system whose original cannot be removed is not left in tmp/,
// and a placing that fails reports its own error even when undoing it fails.

import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, expect, it, vi } from 'vitest';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';

const failing = { exdev: false, rmOf: null as string | null, renameInto: null as string | null };
vi.mock('node:fs/promises', async (original) => {
  const real = await original<typeof import('node:fs/promises')>();
  const error = (code: string, what: string) => Object.assign(new Error(`${code}: ${what}`), { code });
  return {
    ...real,
    rename: async (from: string, to: string) => {
      if (failing.exdev && String(to).endsWith('.tmp')) throw error('EXDEV', 'cross-device link not permitted');
      if (failing.renameInto !== null && String(to).endsWith(failing.renameInto)) throw error('EIO', `rename to ${to}`);
      return real.rename(from, to);
    },
    rm: async (path: string, options?: Parameters<typeof real.rm>[1]) => {
      if (failing.rmOf !== null && String(path).includes(failing.rmOf)) throw error('EACCES', `rm ${path}`);
      return real.rm(path, options);
    },
  };
});
const { BlobDirectory } = await import('../../src/storage/blobs.js');

afterAll(cleanupTempDirs);
afterEach(() => Object.assign(failing, { exdev: false, rmOf: null, renameInto: null }));

const oid = (n: number): Buffer => Buffer.from(`000000000000000${n}`, 'hex');
const TID = Buffer.from('03f5e2607a19b377', 'hex');

it('a file copied in from another file system whose original cannot be removed leaves no copy in tmp/ (it stayed there for good)', async () => {
  const dir = await tempDir();
  const blobs = await BlobDirectory.open(join(dir, 'blobs'), { create: true });
  const source = join(dir, 'caller.blob');
  writeFileSync(source, 'data');
  Object.assign(failing, { exdev: true, rmOf: 'caller.blob' });
  await expect(blobs.stage(source)).rejects.toMatchObject({ code: 'EACCES' });
  expect(readdirSync(join(dir, 'blobs', 'tmp'))).toEqual([]);
  expect(existsSync(source)).toBe(true);
});

it('a placing that fails reports why, even when removing what it placed fails too (that error replaced it)', async () => {
  const dir = await tempDir();
  const blobs = await BlobDirectory.open(join(dir, 'blobs'), { create: true });
  const staged = [];
  for (const n of [1, 2]) {
    const file = join(dir, `b${n}`);
    writeFileSync(file, `blob ${n}`);
    staged.push({ oid: oid(n), tid: TID, stagedPath: await blobs.stage(file) });
  }
  Object.assign(failing, { renameInto: blobs.pathFor(oid(2), TID), rmOf: blobs.pathFor(oid(1), TID) });
  await expect(blobs.place(staged, false)).rejects.toThrow(/^EIO: rename to /);
});
