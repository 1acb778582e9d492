// Helpers for replication tests: commit workloads, wait for a secondary to
// reach a tid (by events, never by sleeping), compare two storages.

import { firstValueFrom, filter, timeout } from 'rxjs';
import { expect } from 'vitest';
import { writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { turn } from '../../src/storage/turns.js';
import { join } from 'node:path';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { MAX_GENERATION_HISTORY } from '../../src/wire/native.js';
import { nodeDisk, type StorageDisk } from '../../src/storage/disk.js';
import { Z64 } from '../../src/storage/timestamp.js';
import type { Secondary } from '../../src/replication/secondary.js';
import type { TransactionRecord } from '../../src/storage/types.js';

/** Commit `n` transactions, each writing `records` new or updated objects. */
export async function commitMany(fs: FileStorage, n: number, records = 3, serials = new Map<string, Buffer>()): Promise<Buffer[]> {
  const tids: Buffer[] = [];
  const oids: Buffer[] = [];
  for (let i = 0; i < n; i++) {
    const txn = { user: 'tester', description: `txn ${i}`, extension: { n: i } };
    await fs.tpcBegin(txn);
    const mine: Buffer[] = [];
    for (let r = 0; r < records; r++) {
      const oid = i % 2 === 0 || oids.length < records ? fs.newOid() : oids[(i * 7 + r) % oids.length]!;
      if (mine.some((m) => m.equals(oid))) continue;
      mine.push(oid);
      fs.store(oid, serials.get(oid.toString('hex')) ?? Z64, Buffer.from(`value ${i}.${r} `.repeat(5)), txn);
    }
    await fs.tpcVote(txn);
    const tid = await fs.tpcFinish(txn);
    for (const oid of mine) {
      serials.set(oid.toString('hex'), tid);
      if (!oids.some((o) => o.equals(oid))) oids.push(oid);
    }
    tids.push(tid);
  }
  return tids;
}

/** Commit `n` transactions of one new object of `bytes` bytes each (240 of 100 KiB: more than socket buffers take while a peer does not read); their tids. */
export async function commitLarge(fs: FileStorage, n = 240, bytes = 100 * 1024): Promise<Buffer[]> {
  const tids: Buffer[] = [];
  for (let i = 0; i < n; i++) {
    const txn = { description: `t${i}` };
    await fs.tpcBegin(txn);
    fs.store(fs.newOid(), Z64, Buffer.alloc(bytes, i), txn);
    await fs.tpcVote(txn);
    tids.push(await fs.tpcFinish(txn));
  }
  return tids;
}

/** Resolve once the secondary's storage holds `tid` (or something later). */
export async function waitForTid(secondary: Secondary, tid: Buffer, ms = 20_000): Promise<void> {
  if (Buffer.compare(secondary.storage.lastTransaction(), tid) >= 0) return;
  await firstValueFrom(secondary.applied$.pipe(filter((c) => Buffer.compare(c.tid, tid) >= 0), timeout(ms)));
}

export async function allTransactions(fs: { iterator(): AsyncGenerator<TransactionRecord> }): Promise<TransactionRecord[]> {
  const out: TransactionRecord[] = [];
  for await (const t of fs.iterator()) out.push(t);
  return out;
}

/** Same tids, statuses, metadata and records (data resolved) in the same order. */
export async function expectSameHistory(
  a: { iterator(): AsyncGenerator<TransactionRecord> },
  b: { iterator(): AsyncGenerator<TransactionRecord> },
): Promise<void> {
  const [ta, tb] = [await allTransactions(a), await allTransactions(b)];
  const shape = (ts: TransactionRecord[]) =>
    ts.map((t) => ({
      tid: t.tid.toString('hex'),
      status: t.status,
      user: t.user.toString('hex'),
      description: t.description.toString('hex'),
      ext: t.extensionBytes.toString('hex'),
      records: t.records.map((r) => [r.oid.toString('hex'), r.data?.toString('hex') ?? null, r.dataTxn?.toString('hex') ?? null]),
    }));
  expect(shape(tb)).toEqual(shape(ta));
}

/** A closed storage file at `path` holding `n` commits (no fsync); their tids. */
export async function storageFileWith(path: string, n: number): Promise<Buffer[]> {
  const fs = await FileStorage.open(path, { create: true, fsync: false });
  try {
    return await commitMany(fs, n);
  } finally {
    await fs.close();
  }
}

/** Write, beside the data file at `dataPath`, a generation history already as long as a hello carries (every generation starting at the beginning). */
export function writeFullHistory(dataPath: string): void {
  const generations = Array.from({ length: MAX_GENERATION_HISTORY }, (_, generation) => ({ generation, startTid: '0000000000000000' }));
  writeFileSync(`${dataPath}.generations`, JSON.stringify({ version: 1, maxSeen: generations.length - 1, generations }));
}

/** A real disk whose next asynchronous datasync, once armed with failNext(), fails with EIO (then it works again). */
export function diskFailingOnce(): { disk: StorageDisk; failNext(): void; armed(): boolean } {
  let fail = false;
  const disk: StorageDisk = {
    ...nodeDisk,
    datasync: (fd) => {
      if (!fail) return nodeDisk.datasync(fd);
      fail = false;
      return Promise.reject(Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' }));
    },
  };
  return { disk, failNext: () => void (fail = true), armed: () => fail };
}

export { Z64 };

/** A record as ZODB writes a blob's: the class ZODB.blob.Blob, then an empty state. */
export const BLOB_RECORD = Buffer.from('8003635a4f44422e626c6f620a426c6f620a71002e80034e2e', 'hex');

/** Commit `content` as the next revision (after `serial`) of the blob `oid` on `fs`, staged in `dir`; its tid. */
export async function commitBlobRevision(fs: FileStorage, dir: string, oid: Buffer, serial: Buffer, content: string): Promise<Buffer> {
  const staged = join(dir, `staged-${content}`);
  writeFileSync(staged, content);
  const txn = { description: content };
  await fs.tpcBegin(txn);
  await fs.storeBlob(oid, serial, BLOB_RECORD, staged, txn);
  await fs.tpcVote(txn);
  return fs.tpcFinish(txn);
}

/**
 * A closed storage `dir`/Data.fs with its blob directory `dir`/blobs, holding
 * one blob object with a revision per entry of `contents`; the oid and the
 * last revision's serial.
 */
export async function storageWithBlobRevisions(dir: string, contents: string[]): Promise<{ path: string; blobDir: string; oid: Buffer; serial: Buffer }> {
  const path = join(dir, 'Data.fs');
  const blobDir = join(dir, 'blobs');
  const fs = await FileStorage.open(path, { create: true, fsync: false, blobDir });
  const oid = fs.newOid();
  let serial: Buffer = Z64;
  try {
    for (const content of contents) serial = await commitBlobRevision(fs, dir, oid, serial, content);
  } finally {
    await fs.close();
  }
  return { path, blobDir, oid, serial };
}

/** Resolve once the secondary's connection machine is in `state` (checked on every snapshot). */
export function waitForState(s: Secondary, state: string, ms = 15_000): Promise<void> {
  return new Promise((resolve, reject) => {
    const matches = (): boolean => s.machine.getSnapshot().matches(state as never);
    if (matches()) return resolve();
    const timer = setTimeout(() => {
      sub.unsubscribe();
      reject(new Error(`secondary did not reach ${state}; it is ${JSON.stringify(s.machine.getSnapshot().value)}`));
    }, ms);
    const sub = s.machine.subscribe(() => {
      if (!matches()) return;
      clearTimeout(timer);
      sub.unsubscribe();
      resolve();
    });
  });
}

/** A read held by holdNextRead: `reading` settles once it began; `release()` lets it go on; `restore()` ends the hold for good. */
export interface HeldRead {
  reading: Promise<void>;
  release: () => void;
  restore: () => void;
}

/**
 * Hold the next file read anywhere in this process (a pack's first, where
 * nothing else reads), once `from()` is true, until `release()` is called or
 * `until()` is true, checked at every turn of the event loop. Other reads
 * pass.
 */
export async function holdNextRead(dir: string, until: () => boolean = () => false, from: () => boolean = () => true): Promise<HeldRead> {
  const probe = await open(join(dir, 'probe'), 'w');
  const proto = Object.getPrototypeOf(probe) as { read: (...args: unknown[]) => Promise<unknown> };
  await probe.close();
  const realRead = proto.read;
  let began!: () => void;
  const reading = new Promise<void>((resolve) => (began = resolve));
  let held = false;
  let released = false;
  proto.read = async function (this: unknown, ...args: unknown[]) {
    if (!held && from()) {
      held = true;
      began();
      while (!released && !until()) await turn();
    }
    return realRead.apply(this, args);
  };
  return { reading, release: () => void (released = true), restore: () => void (proto.read = realRead) };
}
