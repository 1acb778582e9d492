// The injected disk port: FileStorage writes, truncates and syncs its data
// file only through it. A write that fails (a full disk) leaves nothing in
// the file and a typed, recoverable error; a datasync that has not returned
// keeps tpcFinish and commits$ waiting.

import { fstatSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { StorageWriteError } from '../../src/errors.js';
import { nodeDisk, type StorageDisk } from '../../src/storage/disk.js';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { Z64 } from '../../src/storage/timestamp.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';

afterEach(cleanupTempDirs);

/** A disk that can be told to fill up (writes past the end fail after writing half) and counts syncs. */
function testDisk(): StorageDisk & { full: boolean; syncs: number; held: Array<() => void>; hold: boolean } {
  const disk = {
    full: false,
    syncs: 0,
    hold: false,
    held: [] as Array<() => void>,
    write(fd: number, buf: Buffer, pos: number): void {
      if (disk.full && pos + buf.length > fstatSync(fd).size) {
        nodeDisk.write(fd, buf.subarray(0, buf.length >> 1), pos);
        throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
      }
      nodeDisk.write(fd, buf, pos);
    },
    truncate: (fd: number, length: number) => nodeDisk.truncate(fd, length),
    datasync(): Promise<void> {
      disk.syncs += 1;
      if (!disk.hold) return Promise.resolve();
      return new Promise<void>((resolve) => disk.held.push(resolve));
    },
  };
  return disk;
}

async function commitOne(fs: FileStorage, data: string): Promise<Buffer> {
  const txn = { user: 'u', description: data };
  await fs.tpcBegin(txn);
  fs.store(fs.newOid(), Z64, Buffer.from(data), txn);
  await fs.tpcVote(txn);
  return fs.tpcFinish(txn);
}

describe('FileStorage over an injected disk', () => {
  it('a failed write of the commit mark commits nothing and refuses further writes, and a begin waiting meanwhile is refused (it waited for ever)', async () => {
    const path = join(await tempDir(), 'Data.fs');
    let failMark = false;
    const disk: StorageDisk = {
      ...nodeDisk,
      write(fd, buf, pos) {
        if (failMark && buf.length === 1) throw Object.assign(new Error('EIO: i/o error, write'), { code: 'EIO' });
        nodeDisk.write(fd, buf, pos);
      },
    };
    const fs = await FileStorage.open(path, { create: true, disk, fsync: false });
    let closed = false;
    try {
      const first = await commitOne(fs, 'first');
      const txn = { user: 'u', description: 'lost mark' };
      await fs.tpcBegin(txn);
      fs.store(fs.newOid(), Z64, Buffer.from('x'), txn);
      await fs.tpcVote(txn);
      const waiting = commitOne(fs, 'waiting');
      failMark = true;
      await expect(fs.tpcFinish(txn)).rejects.toThrow(/marking the transaction committed failed; it is not committed, and the storage refuses further writes/);
      failMark = false;
      await expect(waiting).rejects.toThrow(/writes disabled after a failed write of a commit mark/);
      expect(fs.lastTransaction()).toEqual(first);
      await fs.close();
      closed = true;
      const again = await FileStorage.open(path, { fsync: false });
      expect(again.tailCutOnOpen).not.toBeNull();
      expect(again.lastTransaction()).toEqual(first);
      await again.close();
    } finally {
      if (!closed) await fs.close();
    }
  });

  it('a full disk fails the vote with StorageWriteError, leaves the file unchanged, and later commits succeed', async () => {
    const path = join(await tempDir(), 'Data.fs');
    const disk = testDisk();
    // No fill ahead of the end, so that every commit grows the file (the next test has fill).
    const fs = await FileStorage.open(path, { create: true, disk, preallocate: 0 });
    try {
      const first = await commitOne(fs, 'first');
      const size = statSync(path).size;
      disk.full = true;
      const txn = { user: 'u', description: 'refused' };
      await fs.tpcBegin(txn);
      fs.store(fs.newOid(), Z64, Buffer.alloc(5000, 1), txn);
      const err = await fs.tpcVote(txn).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(StorageWriteError);
      expect((err as StorageWriteError).code).toBe('ENOSPC');
      expect((err as StorageWriteError).position).toBe(size);
      expect(statSync(path).size).toBe(size);
      await fs.tpcAbort(txn);
      expect(fs.lastTransaction()).toEqual(first);
      disk.full = false;
      const second = await commitOne(fs, 'second');
      expect(Buffer.compare(second, first)).toBeGreaterThan(0);
      const tids: string[] = [];
      for await (const t of fs.iterator()) tids.push(t.tid.toString('hex'));
      expect(tids).toEqual([first.toString('hex'), second.toString('hex')]);
    } finally {
      await fs.close();
    }
  });

  it('a full disk takes commits into the fill written ahead; one larger than what is left fails and cuts the fill', async () => {
    const path = join(await tempDir(), 'Data.fs');
    const disk = testDisk();
    const fs = await FileStorage.open(path, { create: true, disk, preallocate: 64 * 1024 });
    try {
      const first = await commitOne(fs, 'first');
      const fileSize = statSync(path).size;
      expect(fileSize).toBeGreaterThanOrEqual(fs.getSize() + 64 * 1024);
      disk.full = true;
      // Fits in the fill: written over it, nothing grows.
      const second = await commitOne(fs, 'x'.repeat(5000));
      expect(statSync(path).size).toBe(fileSize);
      // Does not fit: fails, and the file is cut back to its last transaction.
      const end = fs.getSize();
      const txn = { user: 'u', description: 'refused' };
      await fs.tpcBegin(txn);
      fs.store(fs.newOid(), Z64, Buffer.alloc(fileSize - end + 1, 1), txn);
      const err = await fs.tpcVote(txn).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(StorageWriteError);
      expect((err as StorageWriteError).position).toBe(end);
      expect(statSync(path).size).toBe(end);
      await fs.tpcAbort(txn);
      // Now small commits find no fill and no room either.
      const small = { user: 'u', description: 'small' };
      await fs.tpcBegin(small);
      fs.store(fs.newOid(), Z64, Buffer.from('small'), small);
      await expect(fs.tpcVote(small)).rejects.toBeInstanceOf(StorageWriteError);
      await fs.tpcAbort(small);
      expect(statSync(path).size).toBe(end);
      disk.full = false;
      const third = await commitOne(fs, 'third');
      const tids: string[] = [];
      for await (const t of fs.iterator()) tids.push(t.tid.toString('hex'));
      expect(tids).toEqual([first, second, third].map((t) => t.toString('hex')));
      expect(statSync(path).size).toBeGreaterThan(fs.getSize());
    } finally {
      await fs.close();
    }
    expect(statSync(path).size).toBe(fs.getSize());
  });

  it('tpcFinish and commits$ wait for the injected datasync', async () => {
    const path = join(await tempDir(), 'Data.fs');
    const disk = testDisk();
    const fs = await FileStorage.open(path, { create: true, disk });
    try {
      const published: string[] = [];
      fs.commits$.subscribe((c) => published.push(c.tid.toString('hex')));
      disk.hold = true;
      let finished = false;
      const finishing = commitOne(fs, 'x').then((tid) => {
        finished = true;
        return tid;
      });
      while (disk.held.length === 0) await new Promise((r) => setImmediate(r));
      expect(finished).toBe(false);
      expect(published).toEqual([]);
      expect(fs.durableEnd).toBeLessThan(fs.getSize());
      disk.hold = false;
      disk.held.shift()!();
      const tid = await finishing;
      expect(published).toEqual([tid.toString('hex')]);
      expect(fs.durableEnd).toBe(fs.getSize());
      expect(disk.syncs).toBe(1);
    } finally {
      await fs.close();
    }
  });
});

describe('inline syncs', () => {
  /** node:fs, counting syncs made in the calling thread and through the thread pool. */
  function countingDisk(): StorageDisk & { inline: number; async: number } {
    const disk = {
      inline: 0,
      async: 0,
      write: (fd: number, buf: Buffer, pos: number) => nodeDisk.write(fd, buf, pos),
      truncate: (fd: number, length: number) => nodeDisk.truncate(fd, length),
      datasync: (fd: number) => {
        disk.async += 1;
        return nodeDisk.datasync(fd);
      },
      datasyncSync: (fd: number) => {
        disk.inline += 1;
        nodeDisk.datasyncSync!(fd);
      },
    };
    return disk;
  }

  async function commitOne(fs: FileStorage, n: number): Promise<Buffer> {
    const txn = { description: `t${n}` };
    await fs.tpcBegin(txn);
    fs.store(fs.newOid(), Z64, Buffer.from(`v${n}`), txn);
    await fs.tpcVote(txn);
    return fs.tpcFinish(txn);
  }

  it('a lone committer syncs in place at the end of the turn of the event loop, before tpcFinish resolves', async () => {
    const disk = countingDisk();
    const fs = await FileStorage.open(join(await tempDir(), 'i.fs'), { create: true, disk });
    for (let i = 0; i < 5; i++) {
      let turned = false;
      setImmediate(() => (turned = true));
      await commitOne(fs, i);
      expect(turned).toBe(true); // sockets and timers got a turn
      expect(fs.durableEnd).toBe(fs.getSize());
    }
    expect(disk.inline).toBe(5);
    expect(disk.async).toBe(0);
    await fs.close();
  });

  it('committers queued behind one another share one sync', async () => {
    const disk = countingDisk();
    const fs = await FileStorage.open(join(await tempDir(), 'q.fs'), { create: true, disk });
    const tids = await Promise.all(Array.from({ length: 8 }, (_, i) => commitOne(fs, i)));
    expect(new Set(tids.map((t) => t.toString('hex'))).size).toBe(8);
    expect(disk.inline).toBe(1);
    expect(disk.async).toBe(0);
    expect(fs.durableEnd).toBe(fs.getSize());
    await fs.close();
  });

  it('a committer whose successor holds the lock and does not finish is durable at the end of the turn', async () => {
    const disk = countingDisk();
    const fs = await FileStorage.open(join(await tempDir(), 'd.fs'), { create: true, disk });
    const first = commitOne(fs, 0);
    const second = { description: 'still open' };
    const begun = fs.tpcBegin(second); // queued behind the first; holds the lock once the first finishes
    const tid = await first;
    expect(fs.lastDurableTid).toEqual(tid);
    expect(disk.inline).toBe(1);
    await begun;
    await fs.tpcAbort(second);
    await fs.close();
  });

  it('a failed sync fails tpcFinish of every transaction it covered, and the storage refuses further writes', async () => {
    for (const where of ['inline', 'async'] as const) {
      let failing = false;
      const eio = (): Error => Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' });
      const disk: StorageDisk = {
        write: (fd, buf, pos) => nodeDisk.write(fd, buf, pos),
        truncate: (fd, length) => nodeDisk.truncate(fd, length),
        datasync: (fd) => (failing ? Promise.reject(eio()) : nodeDisk.datasync(fd)),
        ...(where === 'inline'
          ? {
              datasyncSync: (fd: number) => {
                if (failing) throw eio();
                nodeDisk.datasyncSync!(fd);
              },
            }
          : {}),
      };
      const fs = await FileStorage.open(join(await tempDir(), `${where}.fs`), { create: true, disk });
      await commitOne(fs, 0);
      failing = true;
      const results = await Promise.allSettled([commitOne(fs, 1), commitOne(fs, 2)]);
      for (const r of results) {
        expect(r.status).toBe('rejected');
        expect(String((r as PromiseRejectedResult).reason)).toMatch(/fsync failed/);
      }
      await expect(commitOne(fs, 3)).rejects.toThrow(/writes disabled after a failed fsync/);
      await fs.close();
    }
  });

  it('syncInline: false never syncs in place', async () => {
    const off = countingDisk();
    const fs2 = await FileStorage.open(join(await tempDir(), 'o.fs'), { create: true, disk: off, syncInline: false });
    for (let i = 0; i < 3; i++) await commitOne(fs2, i);
    expect(off.inline).toBe(0);
    expect(off.async).toBe(3);
    await fs2.close();
  });
});
