// TransactionCursor: reads a window (fill) and parses what it holds (take)
// without awaiting, honours maxBytes and the stop tid, finds its place again
// by tid after a pack replaced the file (also before its first take), and
// agrees with the iterator; the iterator hands out consecutive transactions
// to overlapping next() calls and ends on return() or an aborted signal.
// A WindowRecycler hands a retired window out again only at a later fill
// and only once released; a cursor drawing its windows from one still
// yields every transaction in order and, after a pack, resumes after the
// last one taken while windows were being reused.

import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { WindowRecycler } from '../../src/storage/fileio.js';
import { TransactionCursor } from '../../src/storage/iterator.js';
import { Z64 } from '../../src/storage/timestamp.js';
import type { TransactionRecord } from '../../src/storage/types.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';

afterAll(cleanupTempDirs);

const hex = (b: Buffer): string => b.toString('hex');

/** A storage of `n` transactions, each storing one object anew with `bytes` of data. */
async function storageOf(n: number, bytes: number): Promise<{ fs: FileStorage; tids: Buffer[] }> {
  const fs = await FileStorage.open(join(await tempDir(), 'c.fs'), { create: true, fsync: false });
  const oid = fs.newOid();
  let serial = Z64;
  const tids: Buffer[] = [];
  for (let i = 0; i < n; i++) {
    const txn = { description: `t${i}` };
    await fs.tpcBegin(txn);
    fs.store(oid, serial, Buffer.alloc(bytes, i), txn);
    await fs.tpcVote(txn);
    serial = await fs.tpcFinish(txn);
    tids.push(serial);
  }
  return { fs, tids };
}

/** Everything the cursor yields, taking `maxBytes` at a time; also how many fills it took. */
async function drain(cursor: TransactionCursor, maxBytes: number): Promise<{ txns: TransactionRecord[]; fills: number }> {
  const txns: TransactionRecord[] = [];
  let fills = 0;
  for (;;) {
    const got = cursor.take(maxBytes);
    if (got.length > 0) {
      txns.push(...got);
      continue;
    }
    if (cursor.atEnd) return { txns, fills };
    await cursor.fill();
    fills += 1;
  }
}

describe('TransactionCursor', () => {
  it('parses a window at a time, and takes one with maxBytes 0', async () => {
    const { fs, tids } = await storageOf(40, 1000);
    try {
      const cursor = new TransactionCursor(fs, null, null, 8 * 1024);
      expect(cursor.take()).toEqual([]); // nothing read yet
      await cursor.fill();
      const window = cursor.take();
      expect(window.length).toBeGreaterThan(1);
      expect(window.length).toBeLessThan(10); // an 8 KiB window holds a few 1 KB transactions
      expect(window.map((t) => hex(t.tid))).toEqual(tids.slice(0, window.length).map(hex));
      const one = cursor.take(0);
      expect(one.length).toBeLessThanOrEqual(1);
      const rest = await drain(cursor, 0);
      expect([...window, ...one, ...rest.txns].map((t) => hex(t.tid))).toEqual(tids.map(hex));
      expect(rest.txns.every((t) => t.records.length === 1)).toBe(true);
    } finally {
      await fs.close();
    }
  });

  it('stops at maxBytes (the transaction that reaches it included) and at the stop tid', async () => {
    const { fs, tids } = await storageOf(20, 1000);
    try {
      const cursor = new TransactionCursor(fs, tids[2]!, tids[11]!);
      await cursor.fill();
      const first = cursor.take(2500);
      const sizes = first.map((t) => t.raw!.length);
      expect(sizes.slice(0, -1).reduce((a, b) => a + b, 0)).toBeLessThan(2500);
      expect(sizes.reduce((a, b) => a + b, 0)).toBeGreaterThanOrEqual(2500);
      const rest = await drain(cursor, Infinity);
      expect([...first, ...rest.txns].map((t) => hex(t.tid))).toEqual(tids.slice(2, 12).map(hex));
      expect(cursor.stopped).toBe(true);
    } finally {
      await fs.close();
    }
  });

  it('finds its place again by tid after a pack replaced the file', async () => {
    const { fs, tids } = await storageOf(30, 500);
    try {
      const cursor = new TransactionCursor(fs, null, null, 4 * 1024);
      await cursor.fill();
      const before = cursor.take(0);
      expect(before.length).toBe(1);
      // Everything but the last revision goes; the transactions stay (their records were rewritten).
      await fs.pack(Date.now() / 1000 + 60);
      const after = await drain(cursor, Infinity);
      const expected: string[] = [];
      for await (const t of fs.iterator(tids[0]!)) if (Buffer.compare(t.tid, before[0]!.tid) > 0) expected.push(hex(t.tid));
      expect(after.txns.map((t) => hex(t.tid))).toEqual(expected);
      expect(after.txns.at(-1)!.tid.equals(tids.at(-1)!)).toBe(true);
    } finally {
      await fs.close();
    }
  });

  it('a cursor whose file is packed before its first take starts at its start tid in the new file', async () => {
    const fs = await FileStorage.open(join(await tempDir(), 'p.fs'), { create: true, fsync: false });
    try {
      const tids: Buffer[] = [];
      const first = fs.newOid();
      for (let i = 0; i < 12; i++) {
        const txn = { description: `t${i}` };
        await fs.tpcBegin(txn);
        // A new object each time, then the first object again: the pack removes only the first transaction.
        if (i < 11) fs.store(i === 0 ? first : fs.newOid(), Z64, Buffer.from(`object ${i}`), txn);
        else fs.store(first, tids[0]!, Buffer.from('again'), txn);
        await fs.tpcVote(txn);
        tids.push(await fs.tpcFinish(txn));
      }
      const cursor = new TransactionCursor(fs, tids[5]!, null);
      const epoch = fs.fileEpoch;
      await fs.pack(Date.now() / 1000 + 60);
      expect(fs.fileEpoch).not.toBe(epoch);
      const got = await drain(cursor, Infinity);
      expect(got.txns.map((t) => hex(t.tid))).toEqual(tids.slice(5).map(hex));
    } finally {
      await fs.close();
    }
  });
});

describe('iterator()', () => {
  it('hands out consecutive transactions to next() calls made without waiting, then finishes', async () => {
    const { fs, tids } = await storageOf(15, 200);
    try {
      const it = fs.iterator(tids[3]!, tids[9]!);
      const results = await Promise.all(Array.from({ length: 9 }, () => it.next()));
      expect(results.filter((r) => !r.done).map((r) => hex(r.value!.tid))).toEqual(tids.slice(3, 10).map(hex));
      expect(results.slice(7).every((r) => r.done)).toBe(true);
    } finally {
      await fs.close();
    }
  });

  it('return() ends it; a follower ends when its signal aborts', async () => {
    const { fs, tids } = await storageOf(5, 200);
    try {
      const it = fs.iterator();
      expect(hex((await it.next()).value!.tid)).toBe(hex(tids[0]!));
      await it.return(undefined);
      expect((await it.next()).done).toBe(true);
      const abort = new AbortController();
      const seen: string[] = [];
      for await (const t of fs.iterator(null, null, { follow: true, signal: abort.signal })) {
        seen.push(hex(t.tid));
        if (seen.length === tids.length) abort.abort(); // waiting for growth, the follower sees the abort
      }
      expect(seen).toEqual(tids.map(hex));
    } finally {
      await fs.close();
    }
  });
});

describe('WindowRecycler', () => {
  it('reuses a retired window at a later take, only when released, keeping at most `keep`', () => {
    let released = false;
    const r = new WindowRecycler(() => released, 1);
    const a = r.take(64);
    const b = r.take(64);
    r.retire(a);
    r.retire(b);
    expect(r.take(64)).not.toBe(a); // not released: new buffers
    released = true;
    const c = r.take(64);
    expect(c === a || c === b).toBe(true);
    // keep 1: the other retired window was dropped, so the next is new.
    const d = r.take(64);
    expect(d === a || d === b).toBe(false);
    r.retire(c);
    expect(r.take(32)).not.toBe(c); // another size: a new buffer; c is free now
    expect(r.take(64)).toBe(c);
    r.retire(Buffer.alloc(0)); // the reader's initial empty window is not kept
    expect(r.take(0).length).toBe(0);
  });

  it('a cursor drawing from a released recycler reuses windows and still yields every transaction in order', async () => {
    const { fs, tids } = await storageOf(60, 700);
    try {
      const windows = new Set<ArrayBufferLike>();
      let takes = 0;
      const recycler = new WindowRecycler(() => true);
      const take = recycler.take.bind(recycler);
      recycler.take = (size: number): Buffer => {
        takes += 1;
        const b = take(size);
        windows.add(b.buffer);
        return b;
      };
      const cursor = new TransactionCursor(fs, null, null, 4 * 1024, recycler);
      const seen: string[] = [];
      for (;;) {
        const got = cursor.take();
        // Copied now: the window's bytes are overwritten once it is reused.
        for (const t of got) seen.push(hex(t.tid));
        if (got.length > 0) continue;
        if (cursor.atEnd) break;
        await cursor.fill();
      }
      expect(seen).toEqual(tids.map(hex));
      expect(takes).toBeGreaterThan(5);
      expect(windows.size).toBeLessThan(takes); // some window was read into twice
    } finally {
      await fs.close();
    }
  });

  it('after a pack, resumes after the last transaction taken while its windows were being reused', async () => {
    const { fs, tids } = await storageOf(40, 700);
    try {
      const cursor = new TransactionCursor(fs, null, null, 4 * 1024, new WindowRecycler(() => true));
      const taken: string[] = [];
      // Take a few windows' worth, one transaction at a time, then pack.
      while (taken.length < 25) {
        const got = cursor.take(0);
        if (got.length === 0) await cursor.fill();
        else taken.push(hex(got[0]!.tid));
      }
      await fs.pack(Date.now() / 1000 + 60);
      const rest = await drain(cursor, Infinity);
      const expected: string[] = [];
      for await (const t of fs.iterator(tids[0]!)) if (hex(t.tid) > taken.at(-1)!) expected.push(hex(t.tid));
      expect(expected.length).toBeGreaterThan(0);
      expect(rest.txns.map((t) => hex(t.tid))).toEqual(expected);
    } finally {
      await fs.close();
    }
  });
});
