// Undo replicates as backpointers: after an undo (and an undo of the undo)
// on the primary, each secondary loads the undone state and its iterator
// shows the same data-transaction pointers as the primary's.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Primary } from '../../src/replication/primary.js';
import { Secondary } from '../../src/replication/secondary.js';
import type { FileStorage } from '../../src/storage/FileStorage.js';
import { Z64 } from '../../src/storage/timestamp.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { allTransactions, expectSameHistory, waitForTid } from './helpers.js';
import { FAST_RECONNECT } from './netHelpers.js';

afterAll(cleanupTempDirs);

async function commitOne(fs: FileStorage, writes: Array<[Buffer, Buffer, string]>): Promise<Buffer> {
  const txn = { description: 'write' };
  await fs.tpcBegin(txn);
  for (const [oid, serial, data] of writes) fs.store(oid, serial, Buffer.from(data), txn);
  await fs.tpcVote(txn);
  return fs.tpcFinish(txn);
}

async function undo(fs: FileStorage, tid: Buffer): Promise<Buffer> {
  const entry = (await fs.undoLog(0, 100)).find((e) => e.tid.equals(tid));
  if (!entry) throw new Error(`no undo log entry for ${tid.toString('hex')}`);
  const txn = { description: `undo ${tid.toString('hex')}` };
  await fs.tpcBegin(txn);
  await fs.undo(entry.id, txn);
  await fs.tpcVote(txn);
  return fs.tpcFinish(txn);
}

describe.each(['native', 'zrs2.1', 'zrs2.0'] as const)('undo over %s', (protocol) => {
  it('replicates backpointers: the undone state loads and the records point at the same data', async () => {
    const dir = await tempDir();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false });
    const fs = primary.storage;
    const secondary = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: primary.address, protocol, fsync: false, reconnect: FAST_RECONNECT });
    try {
      const [a, b] = [fs.newOid(), fs.newOid()];
      const t1 = await commitOne(fs, [
        [a, Z64, 'a1'],
        [b, Z64, 'b1'],
      ]);
      const t2 = await commitOne(fs, [
        [a, t1, 'a2'],
        [b, t1, 'b2'],
      ]);
      const u1 = await undo(fs, t2); // back to a1, b1
      await waitForTid(secondary, u1);
      expect((await secondary.storage.load(a)).data.toString()).toBe('a1');
      expect((await secondary.storage.load(b)).data.toString()).toBe('b1');
      expect((await secondary.storage.load(a)).tid.equals(u1)).toBe(true);

      const u2 = await undo(fs, u1); // undo the undo: a2, b2 again
      await waitForTid(secondary, u2);
      expect((await secondary.storage.load(a)).data.toString()).toBe('a2');
      expect((await secondary.storage.loadBefore(a, u2))!.data.toString()).toBe('a1');

      const [pt, st] = [await allTransactions(fs), await allTransactions(secondary.storage)];
      const undoRecords = (ts: typeof pt) =>
        ts.filter((t) => t.tid.equals(u1) || t.tid.equals(u2)).flatMap((t) => t.records.map((r) => [t.tid.toString('hex'), r.oid.toString('hex'), r.dataTxn?.toString('hex') ?? null]));
      expect(undoRecords(st)).toEqual(undoRecords(pt));
      // They are backpointers: u1 points at t1's data, u2 at t2's.
      expect(undoRecords(st).map((r) => r[2])).toEqual([t1, t1, t2, t2].map((t) => t.toString('hex')));
      await expectSameHistory(fs, secondary.storage);
    } finally {
      await secondary.close();
      await primary.close();
    }
    expect(readFileSync(join(dir, 's.fs')).equals(readFileSync(join(dir, 'p.fs')))).toBe(true);
  });

  it('replicates two undos of one object in one transaction (two records of the oid), and an undo back into it, to a byte-identical file', async () => {
    const dir = await tempDir();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, auditPath: null });
    const fs = primary.storage;
    const secondary = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: primary.address, protocol, fsync: false, reconnect: FAST_RECONNECT, auditPath: null });
    try {
      const a = fs.newOid();
      const t1 = await commitOne(fs, [[a, Z64, 'a1']]);
      const t2 = await commitOne(fs, [[a, t1, 'a2']]);
      const t3 = await commitOne(fs, [[a, t2, 'a3']]);
      const txn = { description: 'undo t3 and t2' };
      await fs.tpcBegin(txn);
      await fs.undo(t3, txn);
      await fs.undo(t2, txn);
      await fs.tpcVote(txn);
      const u = await fs.tpcFinish(txn);
      await waitForTid(secondary, u);
      expect((await secondary.storage.load(a)).data.toString()).toBe('a1');
      // A later change undone again points back into that transaction, at its last record of the
      // object (the one a load sees): the secondary must restore that one, not the first.
      const t4 = await commitOne(fs, [[a, u, 'a4']]);
      const undo4 = { description: 'undo t4' };
      await fs.tpcBegin(undo4);
      await fs.undo(t4, undo4);
      await fs.tpcVote(undo4);
      const v = await fs.tpcFinish(undo4);
      await waitForTid(secondary, v);
      expect((await fs.load(a)).data.toString()).toBe('a1');
      expect((await secondary.storage.load(a)).data.toString()).toBe('a1');
      await expectSameHistory(fs, secondary.storage);
    } finally {
      await secondary.close();
      await primary.close();
    }
    expect(readFileSync(join(dir, 's.fs')).equals(readFileSync(join(dir, 'p.fs')))).toBe(true);
  });
});
