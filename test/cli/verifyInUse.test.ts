// `zrs verify` on a file a storage has open for writing: a problem there may
// be a commit in progress, looked at again once the file changes; damage is
// still reported, at once when no storage holds the file's lock.

import { open as openFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { verifyFile } from '../../src/cli/verify.js';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { LockFile } from '../../src/storage/lock.js';
import type { TransactionRecord } from '../../src/storage/types.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { commitMany } from '../replication/helpers.js';

afterAll(cleanupTempDirs);

const Z64 = Buffer.alloc(8);

async function newStorage(): Promise<{ path: string; fs: FileStorage }> {
  const path = join(await tempDir(), 'Data.fs');
  const fs = await FileStorage.open(path, { create: true, fsync: false });
  await commitMany(fs, 4);
  return { path, fs };
}

async function transactionsOf(fs: FileStorage): Promise<TransactionRecord[]> {
  const all: TransactionRecord[] = [];
  for await (const t of fs.iterator()) all.push(t);
  return all;
}

async function overwrite(path: string, pos: number, bytes: Buffer): Promise<void> {
  const fh = await openFile(path, 'r+');
  try {
    await fh.write(bytes, 0, bytes.length, pos);
  } finally {
    await fh.close();
  }
}

/** Begin, store one new object and vote: the transaction is on disk marked in progress ('c'). */
async function voteOne(fs: FileStorage, description: string): Promise<object> {
  const txn = { description };
  await fs.tpcBegin(txn);
  fs.store(fs.newOid(), Z64, Buffer.from(description), txn);
  await fs.tpcVote(txn);
  return txn;
}

describe('zrs verify on a file in use', () => {
  it('reports a file too short for its magic, in use or not (it passed as a file whose end was being written)', async () => {
    const path = join(await tempDir(), 'Data.fs');
    await writeFile(path, 'FS3');
    const short = { ok: false, position: 0, problem: 'file is 3 bytes: too short for the 4-byte magic' };
    expect(await verifyFile(path)).toMatchObject({ ...short, inUse: false });
    const lock = LockFile.acquire(`${path}.lock`);
    try {
      expect(await verifyFile(path, { settleMs: 0 })).toMatchObject({ ...short, inUse: true });
    } finally {
      lock.release();
    }
  });


  it('waits for a commit voted but not finished, and checks it once finished (it reported damage)', async () => {
    const { path, fs } = await newStorage();
    try {
      const txn = await voteOne(fs, 'voted');
      const waits: string[] = [];
      const r = await verifyFile(path, {
        onWait: async ({ problem }) => {
          waits.push(problem);
          await fs.tpcFinish(txn);
        },
      });
      expect(waits).toHaveLength(1);
      expect(waits[0]).toContain("status 'c'");
      expect(r).toMatchObject({ ok: true, transactions: 5, lastTid: fs.lastTransaction(), beingWritten: null });
    } finally {
      await fs.close();
    }
  });

  it('does not wait for a commit begun after the check started, and says where it is', async () => {
    const { path, fs } = await newStorage();
    try {
      const first = await voteOne(fs, 'first');
      let second: object | null = null;
      let end = 0;
      const r = await verifyFile(path, {
        onWait: async () => {
          await fs.tpcFinish(first);
          end = fs.getSize();
          second = await voteOne(fs, 'second');
        },
      });
      expect(r).toMatchObject({ ok: true, transactions: 5, bytes: end, beingWritten: { position: end } });
      if (r.ok) expect(r.beingWritten!.problem).toContain("status 'c'");
      await fs.tpcFinish(second!);
      expect(await verifyFile(path)).toMatchObject({ ok: true, transactions: 6 });
    } finally {
      await fs.close();
    }
  });

  it('checks a transaction again from its start, counting the records it checked before the change once', async () => {
    const { path, fs } = await newStorage();
    const all = await transactionsOf(fs);
    const last = all.at(-1)!;
    await fs.close();
    const lock = LockFile.acquire(`${path}.lock`);
    try {
      // Its second record's tid reads as another's while a writer is busy there; the first record was checked already.
      const second = last.records[1]!.pos;
      await overwrite(path, second + 8, Buffer.alloc(8, 7));
      const waits: number[] = [];
      const r = await verifyFile(path, {
        onWait: async ({ position }) => {
          waits.push(position);
          await overwrite(path, second + 8, last.tid);
        },
      });
      expect(waits).toEqual([second + 8]);
      expect(r).toMatchObject({ ok: true, transactions: 4, records: all.reduce((n, t) => n + t.records.length, 0), beingWritten: null });
    } finally {
      lock.release();
    }
  });

  it('reports damage that stays where it is while the file changes, and damage in a file that holds still', async () => {
    const { path, fs } = await newStorage();
    const last = (await transactionsOf(fs)).at(-1)!;
    await fs.close();
    await overwrite(path, last.records[0]!.pos + 8, Buffer.alloc(8, 7));
    const damage = { ok: false, position: last.records[0]!.pos + 8, transactions: 3 };
    const lock = LockFile.acquire(`${path}.lock`);
    try {
      const waits: number[] = [];
      const moved = await verifyFile(path, {
        onWait: async ({ position }) => {
          waits.push(position);
          await overwrite(path, 0, Buffer.from('FS30'));
        },
      });
      expect(waits).toEqual([damage.position]);
      expect(moved).toMatchObject({ ...damage, inUse: true });
      const still = await verifyFile(path, { settleMs: 50, onWait: ({ position }) => void waits.push(position) });
      expect(still).toMatchObject({ ...damage, inUse: true });
      expect(waits).toHaveLength(2);
    } finally {
      lock.release();
    }
    const waits: number[] = [];
    const unlocked = await verifyFile(path, { onWait: ({ position }) => void waits.push(position) });
    expect(unlocked).toMatchObject({ ...damage, inUse: false });
    expect(waits).toEqual([]);
  });
});
