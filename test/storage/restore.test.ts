// restore() writes a backpointer when dataTxn names a transaction holding the
// same data — also when that transaction is committed but its fsync is still
// pending (a secondary applying a stream finishes many before one fsync).

import { join } from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { Z64, tidPlusOne } from '../../src/storage/timestamp.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';

afterAll(cleanupTempDirs);

describe('restore with dataTxn', () => {
  it('finds a committed transaction whose fsync has not completed', async () => {
    const fs = await FileStorage.open(join(await tempDir(), 'Data.fs'), { create: true, fsync: true });
    try {
      const oid = Buffer.from('0000000000000001', 'hex');
      const t1 = { description: 'one' };
      const tid1 = Buffer.from('03f00000000000a0', 'hex');
      await fs.tpcBegin(t1, { tid: tid1 });
      fs.restore(oid, tid1, Buffer.from('payload'), null, t1);
      await fs.tpcVote(t1);
      const finishing = fs.tpcFinish(t1); // not awaited: its fsync is in flight
      const t2 = { description: 'two' };
      const tid2 = tidPlusOne(tid1);
      await fs.tpcBegin(t2, { tid: tid2 });
      fs.restore(oid, tid2, Buffer.from('payload'), tid1, t2);
      await fs.tpcVote(t2);
      await fs.tpcFinish(t2);
      await finishing;
      const txns = [];
      for await (const t of fs.iterator()) txns.push(t);
      const rec = txns[1]!.records[0]!;
      expect(rec.back).toBe(txns[0]!.records[0]!.pos);
      expect(rec.dataTxn?.equals(tid1)).toBe(true);
      expect(rec.data?.toString()).toBe('payload');
      expect(Z64.length).toBe(8);
    } finally {
      await fs.close();
    }
  });

  const tid0 = Buffer.from('03f0000000000090', 'hex');
  const tid1 = Buffer.from('03f00000000000a0', 'hex');
  it.each([
    ['holds other bytes of the same length', 'new', tid1],
    ['holds bytes of another length', 'newer', tid1],
    ['holds no record of the oid', 'new', tid0],
    ['is not in the file', 'new', tidPlusOne(tid0)],
  ] as const)('writes the data itself, not a backpointer, when the transaction dataTxn names %s', async (_name, data, dataTxn) => {
    const fs = await FileStorage.open(join(await tempDir(), 'Data.fs'), { create: true, fsync: false });
    try {
      const oid = Buffer.from('0000000000000001', 'hex');
      const other = Buffer.from('0000000000000002', 'hex');
      const tid2 = tidPlusOne(tid1);
      for (const [tid, record, written, back] of [[tid0, other, 'other', null], [tid1, oid, 'old', null], [tid2, oid, data, dataTxn]] as const) {
        const txn = { description: written };
        await fs.tpcBegin(txn, { tid });
        fs.restore(record, tid, Buffer.from(written), back, txn);
        await fs.tpcVote(txn);
        await fs.tpcFinish(txn);
      }
      expect((await fs.load(oid)).data.toString()).toBe(data);
      const txns = [];
      for await (const t of fs.iterator()) txns.push(t);
      expect(txns[2]!.records[0]!.back).toBeNull();
      expect(txns[2]!.records[0]!.data?.toString()).toBe(data);
    } finally {
      await fs.close();
    }
  });

  it('reads the transaction pointed into once for all of its records (it read all of them for each: k^2 reads for k records)', async () => {
    const fs = await FileStorage.open(join(await tempDir(), 'Data.fs'), { create: true, fsync: false });
    const k = 300;
    const oids = Array.from({ length: k }, (_, i) => Buffer.from(`${(i + 1).toString(16).padStart(16, '0')}`, 'hex'));
    const read = vi.spyOn(fs, 'lastRecordsIn');
    try {
      const t1 = { description: 'many' };
      await fs.tpcBegin(t1);
      for (const oid of oids) fs.store(oid, Z64, Buffer.from(`v ${oid.toString('hex')}`), t1);
      await fs.tpcVote(t1);
      const tid1 = await fs.tpcFinish(t1);
      const t2 = { description: 'backpointers to all of them' };
      const tid2 = tidPlusOne(tid1);
      await fs.tpcBegin(t2, { tid: tid2 });
      for (const oid of oids) fs.restore(oid, tid2, Buffer.from(`v ${oid.toString('hex')}`), tid1, t2);
      await fs.tpcVote(t2);
      await fs.tpcFinish(t2);
      expect(read).toHaveBeenCalledTimes(1);
      const txns = [];
      for await (const t of fs.iterator()) txns.push(t);
      expect(txns[1]!.records.map((r) => r.back)).toEqual(txns[0]!.records.map((r) => r.pos));
    } finally {
      read.mockRestore();
      await fs.close();
    }
  });
});
