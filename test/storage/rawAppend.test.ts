// FileStorage.appendTransactions: whole transactions copied as file bytes
// from another storage land exactly as restore() would have written them
// (positions rewritten for the target file), and bad bytes write nothing.

import { fstatSync } from 'node:fs';
import { copyFile, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { CorruptedDataError, StorageClosedError } from '../../src/errors.js';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { nodeDisk, type StorageDisk } from '../../src/storage/disk.js';
import { Z64, tidPlusOne } from '../../src/storage/timestamp.js';
import type { TransactionRecord } from '../../src/storage/types.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';

afterAll(cleanupTempDirs);

/** Commit one transaction per entry of `plan`: each entry lists object numbers to write. */
async function commitPlan(fs: FileStorage, plan: number[][], tag: string, after: Buffer | null = null): Promise<void> {
  const oids = new Map<number, Buffer>();
  const serials = new Map<number, Buffer>();
  for (const [i, objects] of plan.entries()) {
    const txn = { user: tag, description: `${tag} ${i}` };
    // With `after`: explicit tids following it, so these transactions can be appended behind another history.
    if (after) after = tidPlusOne(after);
    await fs.tpcBegin(txn, after ? { tid: after } : {});
    // An object may be stored twice in one transaction (ZODB allows it): both records stay.
    for (const n of objects) {
      if (!oids.has(n)) oids.set(n, Buffer.from(n.toString(16).padStart(16, '0'), 'hex'));
      fs.store(oids.get(n)!, serials.get(n) ?? Z64, Buffer.from(`${tag} ${i} ${n} `.repeat(1 + (n % 4))), txn);
    }
    await fs.tpcVote(txn);
    const tid = await fs.tpcFinish(txn);
    for (const n of objects) serials.set(n, tid);
  }
}

async function transactions(fs: FileStorage): Promise<TransactionRecord[]> {
  const out: TransactionRecord[] = [];
  for await (const t of fs.iterator()) out.push(t);
  return out;
}

/** Restore `txns` one record at a time: the reference result. */
async function restoreAll(fs: FileStorage, txns: TransactionRecord[]): Promise<void> {
  for (const t of txns) {
    const meta = { user: t.user, description: t.description, extensionBytes: t.extensionBytes };
    await fs.tpcBegin(meta, { tid: t.tid, status: t.status });
    for (const r of t.records) fs.restore(r.oid, t.tid, r.data, r.dataTxn, meta);
    await fs.tpcVote(meta);
    await fs.tpcFinish(meta);
  }
}

const plans = fc.array(fc.array(fc.integer({ min: 1, max: 12 }), { minLength: 1, maxLength: 5 }), { minLength: 1, maxLength: 12 });

describe('appendTransactions', () => {
  it('writes what restore writes, whatever the target file already holds', async () => {
    await fc.assert(
      fc.asyncProperty(plans, plans, fc.integer({ min: 1, max: 5 }), async (prefixPlan, plan, batches) => {
        const dir = await tempDir();
        // The target's own earlier history (different sizes, overlapping oids), then the source's transactions.
        const prefix = await FileStorage.open(join(dir, 'prefix.fs'), { create: true, fsync: false });
        await commitPlan(prefix, prefixPlan, 'earlier');
        const prefixLast = prefix.lastTransaction();
        await prefix.close();
        const source = await FileStorage.open(join(dir, 'source.fs'), { create: true, fsync: false });
        await commitPlan(source, plan, 'source', prefixLast);
        const txns = await transactions(source);
        await source.close();

        const make = async (name: string): Promise<FileStorage> => {
          await copyFile(join(dir, 'prefix.fs'), join(dir, name));
          return FileStorage.open(join(dir, name), { fsync: false });
        };
        // What commits$ says of each transaction (tid, status, position, oids): the same both ways.
        const published = (fs: FileStorage, out: string[]): void => {
          fs.commits$.subscribe((c) => out.push([c.tid.toString('hex'), c.status, c.pos, c.end, ...c.oids.map((o) => o.toString('hex'))].join(' ')));
        };
        const restored: string[] = [];
        const appended: string[] = [];
        const viaRestore = await make('restore.fs');
        published(viaRestore, restored);
        await restoreAll(viaRestore, txns);
        const viaRaw = await make('raw.fs');
        published(viaRaw, appended);
        const per = Math.ceil(txns.length / batches);
        for (let i = 0; i < txns.length; i += per) {
          const { durable } = await viaRaw.appendTransactions(Buffer.concat(txns.slice(i, i + per).map((t) => Buffer.from(t.raw!))));
          await durable;
        }
        expect(appended).toEqual(restored);
        expect(appended.length).toBe(txns.length);
        for (const t of txns) expect((await viaRaw.loadSerial(t.records[0]!.oid, t.tid)).equals(t.records[0]!.data!)).toBe(true);
        await viaRestore.close();
        await viaRaw.close();
        expect((await readFile(join(dir, 'raw.fs'))).equals(await readFile(join(dir, 'restore.fs')))).toBe(true);
      }),
      { numRuns: 25 },
    );
  });

  it('publishes each transaction on commits$ once durable, in order', async () => {
    const dir = await tempDir();
    const source = await FileStorage.open(join(dir, 'source.fs'), { create: true, fsync: false });
    await commitPlan(source, [[1, 2], [2, 3], [4]], 'src');
    const txns = await transactions(source);
    await source.close();
    const target = await FileStorage.open(join(dir, 'target.fs'), { create: true, fsync: true });
    const seen: string[] = [];
    const sub = target.commits$.subscribe((c) => seen.push(c.tid.toString('hex')));
    const { lastTid, durable } = await target.appendTransactions(Buffer.concat(txns.map((t) => Buffer.from(t.raw!))));
    expect(lastTid.equals(txns[2]!.tid)).toBe(true);
    expect((await durable).equals(lastTid)).toBe(true);
    sub.unsubscribe();
    expect(seen).toEqual(txns.map((t) => t.tid.toString('hex')));
    expect(target.lastTransaction().equals(lastTid)).toBe(true);
    await target.close();
  });

  it('publishes every transaction once, in order, while runs keep arriving during syncs', async () => {
    const dir = await tempDir();
    const source = await FileStorage.open(join(dir, 'source.fs'), { create: true, fsync: false });
    await commitPlan(source, Array.from({ length: 2600 }, (_, i) => [1 + (i % 7)]), 'src');
    const txns = await transactions(source);
    await source.close();
    // Each sync waits until the test lets it end, so commits pile up behind it.
    const syncs: Array<() => void> = [];
    const disk: StorageDisk = { ...nodeDisk, datasyncSync: undefined, datasync: () => new Promise<void>((resolve) => syncs.push(resolve)) };
    const target = await FileStorage.open(join(dir, 'target.fs'), { create: true, fsync: true, syncInline: false, disk });
    const seen: string[] = [];
    const sub = target.commits$.subscribe((c) => seen.push(c.tid.toString('hex')));
    const durable: Array<Promise<Buffer>> = [];
    const append = async (from: number, to: number): Promise<void> => {
      for (let i = from; i < to; i++) durable.push((await target.appendTransactions(Buffer.from(txns[i]!.raw!))).durable);
    };
    const endSync = async (): Promise<void> => {
      for (let turn = 0; syncs.length === 0; turn++) {
        if (turn === 1000) throw new Error(`no sync started; ${seen.length} transactions published`);
        await new Promise((r) => setImmediate(r));
      }
      syncs.shift()!();
    };
    // Two syncs run at once. The first covers transaction 0, the second
    // (started by transaction 1) transaction 1. When the first ends, a third
    // starts, covering the first 1500. 1100 more arrive meanwhile, and the
    // fourth (started when the second ends) covers them: when the third
    // ends, most of the queue is published, not all of it.
    await append(0, 1500);
    expect(syncs).toHaveLength(2);
    await endSync();
    await durable[0];
    expect(seen).toHaveLength(1);
    await append(1500, 2600);
    expect(syncs).toHaveLength(2);
    await endSync();
    await durable[1];
    expect(seen).toHaveLength(2);
    await endSync();
    await durable[1499];
    expect(seen).toHaveLength(1500);
    for (let round = 0; round < 5 && seen.length < 2600; round++) await endSync().then(() => new Promise((r) => setImmediate(r)));
    await Promise.all(durable);
    sub.unsubscribe();
    expect(seen).toEqual(txns.map((t) => t.tid.toString('hex')));
    await target.close().catch(() => {});
    while (syncs.length) syncs.shift()!();
  });

  it('close() waits for a sync still running, though a later one already made everything durable, and the two syncs use two descriptors', async () => {
    const dir = await tempDir();
    const source = await FileStorage.open(join(dir, 'source.fs'), { create: true, fsync: false });
    await commitPlan(source, [[1], [2]], 'src');
    const txns = await transactions(source);
    await source.close();
    const held: Array<{ fd: number; end: () => void }> = [];
    const disk: StorageDisk = { ...nodeDisk, datasyncSync: undefined, datasync: (fd) => new Promise<void>((resolve) => held.push({ fd, end: resolve })) };
    const target = await FileStorage.open(join(dir, 'target.fs'), { create: true, fsync: true, syncInline: false, disk });
    const first = (await target.appendTransactions(Buffer.from(txns[0]!.raw!))).durable;
    const second = (await target.appendTransactions(Buffer.from(txns[1]!.raw!))).durable;
    expect(held).toHaveLength(2);
    expect(held[0]!.fd).not.toBe(held[1]!.fd);
    held[1]!.end(); // the later sync ends first: both transactions are durable
    await Promise.all([first, second]);
    let closed = false;
    const closing = target.close().then(() => (closed = true));
    for (let turn = 0; turn < 20; turn++) await new Promise((r) => setImmediate(r));
    expect(closed).toBe(false);
    // The earlier sync's descriptor is still open.
    expect(() => fstatSync(held[0]!.fd)).not.toThrow();
    held[0]!.end();
    await closing;
    expect(closed).toBe(true);
  });

  describe('bad bytes raise a CorruptedDataError and write nothing', () => {
    const cases: Array<[string, (raw: Buffer, t: TransactionRecord) => Buffer, RegExp]> = [
      ['a trailer that does not repeat the length', (raw) => (raw.writeUInt8(raw[raw.length - 1]! ^ 1, raw.length - 1), raw), /trailer/],
      ['a status other than committed', (raw) => (raw.write('c', 16, 'latin1'), raw), /status "c"/],
      ['bytes cut short', (raw) => raw.subarray(0, raw.length - 3), /runs past|cut short/],
      ['a record tid that is not its transaction (last byte)', (raw, t) => (raw.writeUInt8(raw[t.records[0]!.pos - t.pos + 15]! ^ 1, t.records[0]!.pos - t.pos + 15), raw), /record tid/],
      ['a record tid that is not its transaction (first byte)', (raw, t) => (raw.writeUInt8(raw[t.records[0]!.pos - t.pos + 8]! ^ 0x80, t.records[0]!.pos - t.pos + 8), raw), /record tid/],
      ['a record with a version', (raw, t) => (raw.writeUInt8(1, t.records[0]!.pos - t.pos + 33), raw), /version/],
      ['a backpointer record', (raw, t) => {
        // Turn the first record into a backpointer: data length 0, then an 8-byte position.
        const off = t.records[0]!.pos - t.pos;
        raw.writeUInt32BE(0, off + 34);
        raw.writeUInt32BE(0, off + 38);
        return raw;
      }, /backpointer|runs past/],
    ];
    for (const [name, damage, message] of cases) {
      it(name, async () => {
        const dir = await tempDir();
        const source = await FileStorage.open(join(dir, 'source.fs'), { create: true, fsync: false });
        await commitPlan(source, [[1, 2], [3]], 'src');
        const [first, second] = await transactions(source);
        await source.close();
        const target = await FileStorage.open(join(dir, 'target.fs'), { create: true, fsync: false });
        await target.appendTransactions(Buffer.from(first!.raw!)).then((r) => r.durable);
        const size = (await stat(join(dir, 'target.fs'))).size;
        const bad = damage(Buffer.from(second!.raw!), second!);
        const err = await target.appendTransactions(bad).catch((e: unknown) => e);
        expect(err).toBeInstanceOf(CorruptedDataError);
        expect((err as Error).message).toMatch(message);
        expect((await stat(join(dir, 'target.fs'))).size).toBe(size);
        expect(target.lastTransaction().equals(first!.tid)).toBe(true);
        // Still usable: the good bytes go in afterwards.
        await target.appendTransactions(Buffer.from(second!.raw!)).then((r) => r.durable);
        expect(target.lastTransaction().equals(second!.tid)).toBe(true);
        await target.close();
      });
    }

    it('a failure after records were entered (bad bytes late in the run, or a failing write) leaves every oid where it was', async () => {
      const dir = await tempDir();
      const source = await FileStorage.open(join(dir, 'source.fs'), { create: true, fsync: false });
      await commitPlan(source, [[1, 2], [3, 1], [4, 2]], 'src');
      const [first, second, third] = await transactions(source);
      await source.close();
      let failWrites = false;
      const disk: StorageDisk = {
        ...nodeDisk,
        write: (fd, buf, pos) => {
          if (failWrites) throw Object.assign(new Error('no space left on device'), { code: 'ENOSPC' });
          nodeDisk.write(fd, buf, pos);
        },
      };
      const target = await FileStorage.open(join(dir, 'target.fs'), { create: true, fsync: false, disk });
      await target.appendTransactions(Buffer.from(first!.raw!)).then((r) => r.durable);
      const oid = (n: number): Buffer => Buffer.from(n.toString(16).padStart(16, '0'), 'hex');
      const before = async (): Promise<void> => {
        expect((await target.load(oid(1))).tid.equals(first!.tid)).toBe(true);
        expect((await target.load(oid(2))).tid.equals(first!.tid)).toBe(true);
        await expect(target.load(oid(3))).rejects.toThrow();
        await expect(target.load(oid(4))).rejects.toThrow();
        expect(target.objectCount).toBe(2);
      };
      // The third transaction's trailer is damaged: the second's records were already entered.
      const late = Buffer.concat([Buffer.from(second!.raw!), Buffer.from(third!.raw!)]);
      late.writeUInt8(late[late.length - 1]! ^ 1, late.length - 1);
      await expect(target.appendTransactions(late)).rejects.toBeInstanceOf(CorruptedDataError);
      await before();
      failWrites = true;
      await expect(target.appendTransactions(Buffer.concat([Buffer.from(second!.raw!), Buffer.from(third!.raw!)]))).rejects.toThrow(/ENOSPC|space|write/i);
      await before();
      failWrites = false;
      await target.appendTransactions(Buffer.concat([Buffer.from(second!.raw!), Buffer.from(third!.raw!)])).then((r) => r.durable);
      expect((await target.load(oid(1))).tid.equals(second!.tid)).toBe(true);
      expect((await target.load(oid(4))).tid.equals(third!.tid)).toBe(true);
      await target.close();
    });

    it('a transaction not after the last one', async () => {
      const dir = await tempDir();
      const source = await FileStorage.open(join(dir, 'source.fs'), { create: true, fsync: false });
      await commitPlan(source, [[1]], 'src');
      const [only] = await transactions(source);
      await source.close();
      const target = await FileStorage.open(join(dir, 'target.fs'), { create: true, fsync: false });
      await target.appendTransactions(Buffer.from(only!.raw!)).then((r) => r.durable);
      await expect(target.appendTransactions(Buffer.from(only!.raw!))).rejects.toThrow(/is not after/);
      await target.close();
    });
  });

  it('moves newOid past the largest oid of the transactions it appended', async () => {
    const dir = await tempDir();
    const src = await FileStorage.open(join(dir, 'src.fs'), { create: true, fsync: false });
    const dst = await FileStorage.open(join(dir, 'dst.fs'), { create: true, fsync: false });
    try {
      const txn = { description: 'oid 5' };
      await src.tpcBegin(txn);
      src.store(Buffer.from('0000000000000005', 'hex'), Z64, Buffer.from('five'), txn);
      await src.tpcVote(txn);
      await src.tpcFinish(txn);
      const [t] = await transactions(src);
      await (await dst.appendTransactions(Buffer.from(t!.raw!))).durable;
      expect(dst.newOid().toString('hex')).toBe('0000000000000006');
    } finally {
      await src.close();
      await dst.close();
    }
  });

  it('closeForWrites waits for a voted transaction to finish, so what its caller commits is in the file when it resolves', async () => {
    const fs = await FileStorage.open(join(await tempDir(), 'Data.fs'), { create: true, fsync: true });
    try {
      const txn = { description: 'voted' };
      await fs.tpcBegin(txn);
      fs.store(fs.newOid(), Z64, Buffer.from('v'), txn);
      await fs.tpcVote(txn);
      let closed = false;
      const closing = fs.closeForWrites().then(() => (closed = true));
      for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
      expect(closed).toBe(false);
      const tid = await fs.tpcFinish(txn);
      await closing;
      expect(fs.lastDurableTid.equals(tid)).toBe(true);
    } finally {
      await fs.close();
    }
  });

  it('is refused once the storage is closed to writes, as a new transaction is', async () => {
    const dir = await tempDir();
    const src = await FileStorage.open(join(dir, 'src.fs'), { create: true, fsync: false });
    const dst = await FileStorage.open(join(dir, 'dst.fs'), { create: true, fsync: false });
    try {
      await commitPlan(src, [[1, 2]], 'a');
      const [t] = await transactions(src);
      await dst.closeForWrites();
      await expect(dst.appendTransactions(Buffer.from(t!.raw!))).rejects.toBeInstanceOf(StorageClosedError);
      expect(dst.transactionCount).toBe(0);
    } finally {
      await src.close();
      await dst.close();
    }
  });
});
