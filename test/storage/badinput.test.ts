// Bad input is refused with a typed error that names the file (and the
// position for damage), and the file is left exactly as it was: unknown magic,
// damaged headers and records with intact transactions after them, missing
// files, malformed oids and oversized metadata.

import { existsSync, readFileSync } from 'node:fs';
import { readdir, rm, writeFile } from 'node:fs/promises';
import { indexPathFor } from '../../src/storage/indexFile.js';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { CorruptedDataError, FormatError, POSKeyError, StorageClosedError, ZrsError } from '../../src/errors.js';
import { tidPlusOne, tidToSeconds, Z64 } from '../../src/storage/timestamp.js';
import type { TransactionRecord } from '../../src/storage/types.js';
import { cleanupTempDirs, copyZodbFixture, tempDir } from '../helpers/fixtures.js';
import { collect, commit, fakeClock, oidOf } from './storageHarness.js';
import { oidKey } from '../../src/storage/scan.js';
import { nodeDisk, type StorageDisk } from '../../src/storage/disk.js';
import { undoIdFor } from '../../src/storage/undo.js';
import { readTransaction } from '../../src/storage/iterator.js';
import { WindowReader } from '../../src/storage/fileio.js';
import { logOpenRepairs } from '../../src/replication/log.js';

afterAll(cleanupTempDirs);

async function openError(path: string, readOnly: boolean): Promise<unknown> {
  try {
    const fs = await FileStorage.open(path, { readOnly });
    await fs.close();
  } catch (e) {
    return e;
  }
  return null;
}

/** Both open modes fail with `cls`; the file and its directory are left as they were. */
async function expectRefused<E extends Error>(path: string, bytes: Buffer, cls: new (...args: never[]) => E): Promise<E[]> {
  await writeFile(path, bytes);
  const dir = join(path, '..');
  const before = (await readdir(dir)).sort();
  const errors: E[] = [];
  for (const readOnly of [true, false]) {
    const err = await openError(path, readOnly);
    expect(err, `readOnly=${readOnly}`).toBeInstanceOf(cls);
    errors.push(err as E);
    expect(readFileSync(path).equals(bytes)).toBe(true);
    const after = (await readdir(dir)).filter((f) => f !== 'Data.fs.lock').sort();
    expect(after).toEqual(before.filter((f) => f !== 'Data.fs.lock'));
  }
  return errors;
}

describe('unknown magic', () => {
  it.each([
    ['another magic', Buffer.concat([Buffer.from('FS99'), Buffer.alloc(40)]), 'magic "FS99"'],
    ['a text file', Buffer.from('hello, this is not a storage\n'), 'magic "hell"'],
    ['random bytes', Buffer.concat([Buffer.from([0x25, 0x36, 0xca, 0xd4]), Buffer.alloc(40, 0x07)]), 'magic 0x2536cad4'],
    ['a 2-byte file', Buffer.from('FS'), null],
  ])('refuses %s with FormatError naming the file, and releases the lock', async (_name, bytes, magic) => {
    const dir = await tempDir('zrs-bad-');
    const path = join(dir, 'Data.fs');
    for (const err of await expectRefused(path, bytes, FormatError)) {
      expect(err.path).toBe(path);
      expect(err.message).toContain(path);
      // The first bytes are shown as text only when printable, never as raw binary.
      if (magic !== null) expect(err.message).toContain(magic);
    }
    // The failed writable open released the lock.
    await writeFile(path, Buffer.alloc(0));
    const fs = await FileStorage.open(path);
    await fs.close();
    expect(readFileSync(path).toString('latin1')).toBe('FS30');
  });
});

describe('damage in the middle of a file (intact transactions after it)', () => {
  let original: Buffer;
  let txns: TransactionRecord[];
  let path: string;
  /** A transaction in the middle with records. */
  let victim: TransactionRecord;
  let prior: TransactionRecord;

  beforeAll(async () => {
    const dir = await copyZodbFixture('basic');
    path = join(dir, 'Data.fs');
    original = readFileSync(path);
    const fs = await FileStorage.open(path, { readOnly: true });
    txns = await collect(fs.iterator());
    await fs.close();
    const i = txns.findIndex((t, k) => k >= txns.length / 2 && t.records.length >= 2);
    expect(i).toBeGreaterThan(0);
    expect(i).toBeLessThan(txns.length - 2);
    victim = txns[i]!;
    prior = txns[i - 1]!;
  });

  const damaged = (edit: (b: Buffer) => void): Buffer => {
    const b = Buffer.from(original);
    edit(b);
    return b;
  };

  async function expectCorrupt(bytes: Buffer, position: number): Promise<void> {
    for (const err of await expectRefused(path, bytes, CorruptedDataError)) {
      expect(err.path).toBe(path);
      expect(err.position).toBe(position);
      expect(err.message).toContain(path);
      expect(err.message).toContain(`position ${position}`);
    }
    // A tool reading damage (zrs dump) opens it to stop there: the transactions before the damaged one, the rest unread.
    const stopped = await FileStorage.open(path, { readOnly: true, stopAtDamage: true });
    try {
      expect((await collect(stopped.iterator())).map((t) => t.pos)).toEqual(txns.filter((t) => t.pos < victim.pos).map((t) => t.pos));
      expect(stopped.unreadTailOnOpen?.pos).toBe(victim.pos);
    } finally {
      await stopped.close();
    }
    expect(readFileSync(path).equals(bytes)).toBe(true);
    await expect(FileStorage.open(path, { stopAtDamage: true })).rejects.toThrow('stopAtDamage needs readOnly');
    // Restoring the bytes makes it open again (read-only: no saved index,
    // which would let the next case skip scanning the damaged part).
    await writeFile(path, original);
    expect(existsSync(`${path}.zrs-index`)).toBe(false);
    const fs = await FileStorage.open(path, { readOnly: true });
    expect(fs.transactionCount).toBe(txns.length);
    await fs.close();
  }

  it('a tid that goes backwards', () => expectCorrupt(damaged((b) => prior.tid.copy(b, victim.pos)), victim.pos));

  it('a zero tid', () => expectCorrupt(damaged((b) => Z64.copy(b, victim.pos)), victim.pos));

  it('a broken redundant length', () =>
    expectCorrupt(
      damaged((b) => b.writeUInt32BE(victim.length + 1, victim.pos + victim.length + 4)),
      victim.pos + victim.length,
    ));

  /** The file with an unfinished transaction appended: a copy of the last one, status 'c', as a crash in the middle of the next commit leaves it. */
  const withUnfinishedEnd = (b: Buffer): Buffer => {
    const last = txns.at(-1)!;
    const next = Buffer.from(b.subarray(last.pos, last.pos + last.length + 8));
    tidPlusOne(last.tid).copy(next, 0);
    next[16] = 'c'.charCodeAt(0);
    return Buffer.concat([b, next]);
  };

  it('a broken redundant length, with an unfinished transaction at the end (a crash in the middle of a commit)', () =>
    expectCorrupt(
      withUnfinishedEnd(damaged((b) => b.writeUInt32BE(victim.length + 1, victim.pos + victim.length + 4))),
      victim.pos + victim.length,
    ));

  // It also reads as the start of a torn tail; what follows tells them apart.
  it('a transaction length past the end of the file', () => expectCorrupt(damaged((b) => b.writeUInt8(b[victim.pos + 8]! ^ 0x80, victim.pos + 8)), victim.pos));

  it("a status still 'c' with intact transactions after it is a group sync torn before its final status: cut, kept in .tr0", async () => {
    // Commits write their bytes with status 'c' and set the final status last; one sync can carry that status
    // byte and later transactions, and a crash may write the later sectors and not the status byte's.
    // Nothing from the 'c' one on was reported durable. (No single flipped bit turns ' ' or 'p' into 'c'.)
    const bytes = damaged((b) => (b[victim.pos + 16] = 'c'.charCodeAt(0)));
    await writeFile(path, bytes);
    const fs = await FileStorage.open(path);
    try {
      const bytesAfter = original.length - (victim.pos + victim.length + 8);
      expect(bytesAfter).toBeGreaterThan(0);
      expect(fs.tailCutOnOpen).toEqual({ position: victim.pos, bytes: original.length - victim.pos, keptIn: `${path}.tr0`, reason: "transaction still marked in progress ('c')", bytesAfter });
      // The node that opened it says so: not "the last transaction".
      const lines: string[] = [];
      logOpenRepairs((_level, message) => void lines.push(message), fs);
      expect(lines).toEqual([
        `${path}: the transaction at position ${victim.pos} and the ${bytesAfter} bytes after it (${original.length - victim.pos} bytes, to the end of the file) were cut off and kept in ${path}.tr0: transaction still marked in progress ('c'); a crash during its commit leaves it so, and so would damage to it`,
      ]);
      expect(fs.transactionCount).toBe(txns.indexOf(victim));
      expect(readFileSync(`${path}.tr0`).equals(bytes.subarray(victim.pos))).toBe(true);
    } finally {
      await fs.close();
      await rm(`${path}.tr0`);
      await rm(indexPathFor(path), { force: true });
      await writeFile(path, original);
    }
  });

  it('damage to the last transaction, with nothing after it, is cut as a crash during its commit leaves it, and the cut says why', async () => {
    // Its final status and its other sectors go to disk in one sync: a crash can keep the status and lose the trailer's sector.
    const last = txns.at(-1)!;
    const bytes = damaged((b) => b.writeUInt32BE(last.length + 1, last.pos + last.length + 4));
    await writeFile(path, bytes);
    const fs = await FileStorage.open(path);
    try {
      expect(fs.tailCutOnOpen).toEqual({
        position: last.pos,
        bytes: original.length - last.pos,
        keptIn: `${path}.tr0`,
        reason: `redundant length ${last.length + 1} does not match transaction length ${last.length} (at position ${last.pos + last.length})`,
        bytesAfter: 0,
      });
      expect(fs.transactionCount).toBe(txns.length - 1);
    } finally {
      await fs.close();
      await rm(`${path}.tr0`);
      await rm(indexPathFor(path), { force: true });
      await writeFile(path, original);
    }
  });

  /** The file with a transaction cut short appended (a crash while appending the next commit): its length runs past the end. */
  const withCutShortEnd = (b: Buffer): Buffer => withUnfinishedEnd(b).subarray(0, b.length + 30);

  it.each([
    ['a broken redundant length', (b: Buffer) => b.writeUInt32BE(victim.length + 1, victim.pos + victim.length + 4), () => victim.pos + victim.length],
    ['a length past the end', (b: Buffer) => b.writeUInt8(b[victim.pos + 8]! ^ 0x80, victim.pos + 8), () => victim.pos],
    ['a record pointing at another transaction', (b: Buffer) => b.writeUInt32BE(prior.pos, victim.records[1]!.pos + 28), () => victim.records[1]!.pos],
  ])('%s, with a transaction cut short at the end (its length unknown)', async (_what, edit, position) => {
    const bytes = withCutShortEnd(damaged(edit));
    expect(bytes.length).toBe(original.length + 30);
    await expectCorrupt(bytes, position());
  });

  it('a transaction length shorter than its own header', () =>
    expectCorrupt(damaged((b) => b.writeUInt32BE(10, victim.pos + 12)), victim.pos));

  it('an unknown status byte', () => expectCorrupt(damaged((b) => (b[victim.pos + 16] = 0x78)), victim.pos + 16));

  it('a data record whose length points far outside its transaction', () => {
    const r = victim.records[0]!;
    return expectCorrupt(damaged((b) => b.writeUInt32BE(b.readUInt32BE(r.pos + 38) + 100_000, r.pos + 38)), r.pos);
  });

  it('a last data record one byte longer than its transaction', () => {
    const r = victim.records.at(-1)!;
    return expectCorrupt(damaged((b) => b.writeUInt32BE(b.readUInt32BE(r.pos + 38) + 1, r.pos + 38)), r.pos);
  });

  it('a data record pointing at another transaction (tloc)', () => {
    const r = victim.records[1]!;
    return expectCorrupt(damaged((b) => b.writeUInt32BE(prior.pos, r.pos + 28)), r.pos);
  });

  it('a data record whose previous-record pointer points forward', () => {
    const r = victim.records[0]!;
    return expectCorrupt(damaged((b) => b.writeUInt32BE(r.pos + 1, r.pos + 20)), r.pos);
  });
});

describe('damage inside the last, complete transaction', () => {
  // ZODB's read_index cuts a last transaction only when it runs past the end
  // of the file or is still marked 'c'; a complete one (status ' ', matching
  // redundant length) with a bad data record is a CorruptedError ("data record
  // exceeds transaction record"). Its tpcFinish was reported durable, so
  // cutting it would silently drop a committed transaction.
  it('is refused as corruption, not cut as an unfinished tail', async () => {
    const dir = await copyZodbFixture('basic');
    const path = join(dir, 'Data.fs');
    const fs = await FileStorage.open(path, { readOnly: true });
    const last = (await collect(fs.iterator())).at(-1)!;
    await fs.close();
    expect(last.records.length).toBeGreaterThan(0);
    const r = last.records[0]!;
    const bytes = readFileSync(path);
    bytes.writeUInt32BE(bytes.readUInt32BE(r.pos + 38) + 100_000, r.pos + 38);
    for (const err of await expectRefused(path, bytes, CorruptedDataError)) {
      expect(err.path).toBe(path);
      expect(err.position).toBe(r.pos);
    }
  });
});

describe('damaged pointers found when reading (the open scans no further than each record)', () => {
  /** Commit the undo of transaction `tid`; its tid. */
  async function undoIn(fs: FileStorage, tid: Buffer): Promise<Buffer> {
    const meta = {};
    await fs.tpcBegin(meta);
    await fs.undo(undoIdFor(tid), meta);
    await fs.tpcVote(meta);
    return fs.tpcFinish(meta);
  }

  /** x written three times, y between the first two; the file is closed with its saved index. */
  async function history(): Promise<{ path: string; x: Buffer; tx1: Buffer; tx2: Buffer; tx3: Buffer; xPos: number; yPos: number }> {
    const path = join(await tempDir('zrs-ptr-'), 'Data.fs');
    const fs = await FileStorage.open(path, { create: true, fsync: false });
    const [x, y] = [fs.newOid(), fs.newOid()];
    const tx1 = await commit(fs, [[x, Z64, Buffer.from('x v1')]]);
    await commit(fs, [[y, Z64, Buffer.from('y, another object')]]);
    const tx2 = await commit(fs, [[x, tx1, Buffer.from('x v2')]]);
    const tx3 = await commit(fs, [[x, tx2, Buffer.from('x v3')]]);
    const xPos = fs.index.get(oidKey(x))!;
    const yPos = fs.index.get(oidKey(y))!;
    await fs.close();
    return { path, x, tx1, tx2, tx3, xPos, yPos };
  }

  it("a previous-record pointer to another object's record: an error, never that object's data", async () => {
    const h = await history();
    const bytes = readFileSync(h.path);
    bytes.writeUInt32BE(h.yPos, h.xPos + 20); // x's newest record's prev, low word
    await writeFile(h.path, bytes);
    const fs = await FileStorage.open(h.path, { readOnly: true });
    try {
      await expect(fs.loadBefore(h.x, h.tx3)).rejects.toThrow(CorruptedDataError);
      await expect(fs.loadSerial(h.x, h.tx1)).rejects.toThrow(/record of oid 0x0+2 where oid 0x0+1's revisions lead/);
      await expect(fs.history(h.x, 5)).rejects.toThrow(CorruptedDataError);
      expect(await fs.history(h.x, 1)).toHaveLength(1); // the damage lies past what was asked for
      expect((await fs.load(h.x)).data.toString()).toBe('x v3'); // the current revision is intact
    } finally {
      await fs.close();
    }
  });

  it('a previous-record pointer to itself: an error, not a loop', async () => {
    const h = await history();
    const bytes = readFileSync(h.path);
    bytes.writeUInt32BE(h.xPos, h.xPos + 20);
    await writeFile(h.path, bytes);
    // The saved index spares the open its scan (which refuses such a pointer): reads meet it.
    const fs = await FileStorage.open(h.path, { readOnly: true });
    try {
      await expect(fs.loadBefore(h.x, h.tx1)).rejects.toThrow(/does not point backwards/);
      await expect(fs.history(h.x, 5)).rejects.toThrow(/does not point backwards/);
    } finally {
      await fs.close();
    }
    await rm(indexPathFor(h.path));
    await expect(FileStorage.open(h.path, { readOnly: true })).rejects.toThrow(CorruptedDataError);
  });

  it('a transaction pointer past the end of the file, or to another transaction: history refuses it as damage, load is unaffected', async () => {
    const h = await history();
    const original = readFileSync(h.path);
    const yTxn = original.readUInt32BE(h.yPos + 28); // y's record's transaction pointer, low word
    // The saved index spares the open its scan (which refuses such a pointer): history meets it.
    const xTxn = original.readUInt32BE(h.xPos + 28);
    // Past the end; another transaction; inside its own transaction, one byte on (no transaction begins there).
    for (const [high, low] of [[0x7368_6974, 0], [0, yTxn], [0, xTxn + 1]] as const) {
      const bytes = Buffer.from(original);
      bytes.writeUInt32BE(high, h.xPos + 24);
      bytes.writeUInt32BE(low, h.xPos + 28);
      await writeFile(h.path, bytes);
      const fs = await FileStorage.open(h.path, { readOnly: true });
      try {
        await expect(fs.history(h.x, 1)).rejects.toThrow(new RegExp(`corrupted data at position ${h.xPos}: data record points at transaction \\d+, which does not hold it`));
        expect((await fs.load(h.x)).data.toString()).toBe('x v3');
      } finally {
        await fs.close();
      }
    }
  });

  it("a transaction pointer to the bytes of a record of the same tid: a header whose tid matches but which cannot hold the record is damage too", async () => {
    const path = join(await tempDir('zrs-ptr-'), 'Data.fs');
    let fs = await FileStorage.open(path, { create: true, fsync: false });
    const [x, y] = [fs.newOid(), fs.newOid()];
    const tx1 = await commit(fs, [[x, Z64, Buffer.from('x v1')]]);
    await commit(fs, [[y, Z64, Buffer.from('y, new here')], [x, tx1, Buffer.from('x v2')]]);
    const [xPos, yPos] = [fs.index.get(oidKey(x))!, fs.index.get(oidKey(y))!];
    await fs.close();
    // x's record points 8 bytes into y's, the record before it: read as a transaction header there,
    // its tid is y's record's (the same transaction's) and its length y's prev pointer, 0 (a new object).
    const bytes = readFileSync(path);
    bytes.writeUInt32BE(0, xPos + 24);
    bytes.writeUInt32BE(yPos + 8, xPos + 28);
    await writeFile(path, bytes);
    fs = await FileStorage.open(path, { readOnly: true });
    try {
      await expect(fs.history(x, 1)).rejects.toThrow(`corrupted data at position ${xPos}: data record points at transaction ${yPos + 8}, which does not hold it`);
    } finally {
      await fs.close();
    }
  });

  /** The history, damaged by `edit` (given the file's bytes and x's newest record's transaction's position), opened read-only with its saved index. */
  async function damagedHistory(edit: (bytes: Buffer, tpos: number, h: Awaited<ReturnType<typeof history>>) => void) {
    const h = await history();
    const bytes = readFileSync(h.path);
    edit(bytes, bytes.readUInt32BE(h.xPos + 28), h);
    await writeFile(h.path, bytes);
    return { h, fs: await FileStorage.open(h.path, { readOnly: true }) };
  }

  it('a data length past the end of the file, however large: load refuses it as damage, not as a failed allocation or short data', async () => {
    for (const [high, low] of [[0x7368_6974, 0], [0, 4000]] as const) {
      const { h, fs } = await damagedHistory((bytes, _tpos, { xPos }) => {
        bytes.writeUInt32BE(high, xPos + 34);
        bytes.writeUInt32BE(low, xPos + 38);
      });
      try {
        await expect(fs.load(h.x)).rejects.toThrow(new RegExp(`corrupted data at position ${h.xPos}: data record of \\d+ bytes runs past the end of the file`));
        expect((await fs.loadSerial(h.x, h.tx2)).toString()).toBe('x v2');
      } finally {
        await fs.close();
      }
    }
  });

  it('a transaction length shorter than its header, or a redundant length that differs from it: the iterator refuses it as damage', async () => {
    // Damage to the transaction before the last, tx2 (the open checks the last one: damage there is a torn tail it leaves out).
    const edits: Array<[(bytes: Buffer, tx2: number, tx3: number) => void, RegExp]> = [
      [(bytes, tx2) => bytes.fill(0, tx2 + 8, tx2 + 16), /transaction length 0 is shorter than a transaction header/],
      [(bytes, _tx2, tx3) => bytes.writeUInt8(bytes[tx3 - 1]! ^ 1, tx3 - 1), /redundant length differs from the transaction's/], // tx2's trailer, just before tx3
      [(bytes, tx2) => bytes.writeUInt16BE(0xffff, tx2 + 17), /transaction metadata runs past its records/], // tx2's user length
    ];
    for (const [edit, message] of edits) {
      const { h, fs } = await damagedHistory((bytes, tx3, { xPos }) => {
        const xBefore = bytes.readUInt32BE(xPos + 20); // x's newest record's prev: its record in tx2
        edit(bytes, bytes.readUInt32BE(xBefore + 28), tx3);
      });
      try {
        await expect(collect(fs.iterator(h.tx2))).rejects.toThrow(message);
        await expect(collect(fs.iterator(h.tx2))).rejects.toThrow(CorruptedDataError);
        expect(await collect(fs.iterator(null, h.tx1))).toHaveLength(1);
      } finally {
        await fs.close();
      }
    }
  });

  it('a transaction length past the durable end: reading that transaction alone (as a live session reads a commit) refuses it as damage', async () => {
    const { h, fs } = await damagedHistory((bytes, tx3) => bytes.writeUInt32BE(0x100, tx3 + 8)); // tx3's length, high word: 2^40 and more
    try {
      const tx3 = readFileSync(h.path).readUInt32BE(h.xPos + 28);
      const reader = new WindowReader(fs.fileHandle, 64 * 1024, () => fs.durableEnd);
      await expect(readTransaction(fs, reader, tx3)).rejects.toThrow(new RegExp(`corrupted data at position ${tx3}: transaction length \\d+ runs past the end of the data`));
    } finally {
      await fs.close();
    }
  });

  it('a redundant length that leads before the first transaction or to one of another length: the undo log refuses it as damage', async () => {
    for (const length of [1 << 30, 60]) {
      const { fs } = await damagedHistory((bytes) => bytes.writeUInt32BE(length, bytes.length - 4));
      try {
        await expect(fs.undoLog(0, 10)).rejects.toThrow(new RegExp(`redundant length ${length} does not lead back to a transaction of that length`));
      } finally {
        await fs.close();
      }
    }
  });

  it("a backpointer to another object's record: every reader refuses it (load, the iterator, pack)", async () => {
    const h = await history();
    let fs = await FileStorage.open(h.path, { fsync: false });
    const undoTid = await undoIn(fs, h.tx3);
    const back = fs.index.get(oidKey(h.x))!;
    await fs.close();
    const bytes = readFileSync(h.path);
    bytes.writeUInt32BE(h.yPos, back + 42 + 4); // the undo record's backpointer now names y's record
    await writeFile(h.path, bytes);
    fs = await FileStorage.open(h.path, { fsync: false });
    try {
      await expect(fs.load(h.x)).rejects.toThrow(CorruptedDataError);
      await expect(collect(fs.iterator(undoTid, undoTid))).rejects.toThrow(/record of oid 0x0+2 where oid 0x0+1's revisions lead/);
      await expect(fs.pack(Date.now() / 1000 + 3600)).rejects.toThrow(CorruptedDataError);
      // Packed before the undo (its record is copied, the damaged target goes): refused too, never y's data inlined.
      await expect(fs.pack(tidToSeconds(h.tx3) + 0.0001)).rejects.toThrow(CorruptedDataError);
    } finally {
      await fs.close();
    }
  });

  it('an undo over a backpointer that points at itself: an error, not a hang', async () => {
    const path = join(await tempDir('zrs-ptr-'), 'Data.fs');
    let fs = await FileStorage.open(path, { create: true, fsync: false });
    const x = fs.newOid();
    const t1 = await commit(fs, [[x, Z64, Buffer.from('v1')]]);
    const t2 = await commit(fs, [[x, t1, Buffer.from('v2')]]);
    await undoIn(fs, t2);
    const back = fs.index.get(oidKey(x))!; // the undo's record: a backpointer to v1
    await fs.close();
    const bytes = readFileSync(path);
    bytes.writeUInt32BE(back, back + 42 + 4);
    await writeFile(path, bytes);
    fs = await FileStorage.open(path);
    const meta = {};
    await fs.tpcBegin(meta);
    try {
      await expect(fs.undo(undoIdFor(t1), meta)).rejects.toThrow(/backpointer \d+ does not point backwards/);
    } finally {
      await fs.tpcAbort(meta);
      await fs.close();
    }
  });
});

describe('a close whose abort of the transaction in progress fails', () => {
  it('still releases the lock and the file, and reports the failure', async () => {
    const path = join(await tempDir('zrs-bad-'), 'Data.fs');
    let failTruncate = false;
    const disk: StorageDisk = {
      ...nodeDisk,
      truncate: (fd, length) => {
        if (failTruncate) throw Object.assign(new Error('EIO: i/o error, ftruncate'), { code: 'EIO' });
        nodeDisk.truncate(fd, length);
      },
    };
    const fs = await FileStorage.open(path, { create: true, fsync: false, disk });
    const txn = { description: 'voted, never finished' };
    await fs.tpcBegin(txn);
    fs.store(fs.newOid(), Z64, Buffer.from('x'), txn);
    await fs.tpcVote(txn);
    failTruncate = true;
    await expect(fs.close()).rejects.toThrow(/EIO/);
    // Released: the storage opens again, and the voted transaction is not in it.
    const again = await FileStorage.open(path);
    expect(again.transactionCount).toBe(0);
    await again.close();
  });
});

describe('missing files', () => {
  it('refuses a missing file without create, naming it, and creates nothing', async () => {
    const dir = await tempDir('zrs-bad-');
    const path = join(dir, 'Data.fs');
    for (const readOnly of [false, true]) {
      const err = await openError(path, readOnly);
      expect(err).toBeInstanceOf(ZrsError);
      expect((err as Error).message).toContain(path);
      if (!readOnly) expect((err as Error).message).toContain('create');
      expect(existsSync(path)).toBe(false);
      expect(existsSync(`${path}.lock`)).toBe(false);
    }
    // Read-only never creates, even when asked to.
    const err = await FileStorage.open(path, { readOnly: true, create: true }).then(
      (fs) => fs.close().then(() => null),
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ZrsError);
    expect(existsSync(path)).toBe(false);
  });

  it('refuses a directory, naming it, without making a lock file for it', async () => {
    const dir = await tempDir('zrs-bad-');
    for (const readOnly of [false, true]) {
      const err = await openError(dir, readOnly);
      expect((err as Error).message).toBe(`${dir}: a directory, not a storage file`);
      expect(existsSync(`${dir}.lock`)).toBe(false);
    }
  });

  it('refuses a file in a missing directory with an error naming the path', async () => {
    const dir = await tempDir('zrs-bad-');
    const path = join(dir, 'no', 'such', 'dir', 'Data.fs');
    for (const readOnly of [false, true]) {
      const err = await openError(path, readOnly);
      expect(err).toBeInstanceOf(Error);
      expect((err as Error).message).toContain(join(dir, 'no', 'such', 'dir'));
    }
    // Asked to create it: the missing directory is what the error names (not the lock file's ENOENT).
    await expect(FileStorage.open(path, { create: true })).rejects.toThrow(`${path}: cannot create it: directory ${join(dir, 'no', 'such', 'dir')} does not exist`);
  });
});

describe('malformed arguments', () => {
  /** A new storage holding one commit of oid 1 (`t1`), and the file's bytes then, which refused calls must leave as they are. */
  async function storageWithOneCommit(): Promise<{ fs: FileStorage; path: string; t1: Buffer; bytes: Buffer }> {
    const path = join(await tempDir('zrs-bad-'), 'Data.fs');
    const fs = await FileStorage.open(path, { create: true, now: fakeClock() });
    const t1 = await commit(fs, [[oidOf(1), Z64, Buffer.from('one')]]);
    return { fs, path, t1, bytes: readFileSync(path).subarray(0, fs.getSize()) };
  }

  it('refuses oids that are not 8 bytes, empty data and oversized metadata; the transaction goes on', async () => {
    const { fs, path, t1, bytes } = await storageWithOneCommit();
    try {
      const txn = {};
      await fs.tpcBegin(txn);
      for (const oid of [Buffer.alloc(7, 1), Buffer.alloc(9, 1), Buffer.alloc(0)]) {
        expect(() => fs.store(oid, Z64, Buffer.from('x'), txn)).toThrow(ZrsError);
        expect(() => fs.restore(oid, fs.lastTransaction(), Buffer.from('x'), null, txn)).toThrow(ZrsError);
        await expect(fs.load(oid)).rejects.toBeInstanceOf(POSKeyError);
      }
      expect(() => fs.store(oidOf(2), Z64, Buffer.alloc(0), txn)).toThrow(ZrsError);
      fs.store(oidOf(2), Z64, Buffer.from('two'), txn);
      await fs.tpcVote(txn);
      const t2 = await fs.tpcFinish(txn);
      const got = await collect(fs.iterator());
      expect(got.map((t) => t.records.map((r) => r.oid.toString('hex')))).toEqual([
        [oidOf(1).toString('hex')],
        [oidOf(2).toString('hex')],
      ]);
      expect(readFileSync(path).subarray(0, bytes.length)).toEqual(bytes);
      expect((await fs.load(oidOf(2))).tid).toEqual(t2);
      expect((await fs.load(oidOf(1))).tid).toEqual(t1);

      const big = 'x'.repeat(0x10000);
      for (const meta of [{ user: big }, { description: big }, { extensionBytes: Buffer.alloc(0x10000) }]) {
        await expect(fs.tpcBegin(meta)).rejects.toBeInstanceOf(ZrsError);
      }
      // The refused begins held no lock.
      await commit(fs, [], { user: 'x'.repeat(0xffff) });
    } finally {
      await fs.close();
    }
  });

  it('refuses what an untyped caller passes for bytes (a string, a number, null, undefined) instead of storing or reading it as bytes; the file is left as it was', async () => {
    const { fs, path, t1, bytes } = await storageWithOneCommit();
    try {
      const notBytes = ['hello', 12345, null, undefined, [1, 2, 3]] as unknown as Buffer[];
      const txn = {};
      await fs.tpcBegin(txn);
      for (const bad of notBytes) {
        // A string of 5 characters was stored as 5 zero bytes, and a number too; null and undefined failed with a TypeError.
        expect(() => fs.store(oidOf(2), Z64, bad, txn)).toThrow(/^store: data must be bytes \(a Buffer\), got /);
        expect(() => fs.store(bad, Z64, Buffer.from('x'), txn)).toThrow(/^oid must be 8 bytes \(a Buffer\), got /);
        expect(() => fs.store(oidOf(1), bad, Buffer.from('x'), txn)).toThrow(/^store: expectedSerial must be 8 bytes/);
        if (bad !== null) expect(() => fs.restore(oidOf(2), t1, bad, null, txn)).toThrow(/^restore: data must be bytes/);
        await expect(fs.load(bad)).rejects.toThrow(/^oid must be 8 bytes \(a Buffer\), got /);
      }
      // A Uint8Array is bytes.
      fs.store(oidOf(3), Z64, new Uint8Array([7, 8]) as Buffer, txn);
      await fs.tpcVote(txn);
      const t2 = await fs.tpcFinish(txn);
      expect(readFileSync(path).subarray(0, bytes.length)).toEqual(bytes);
      expect((await collect(fs.iterator())).map((t) => t.records.map((r) => r.oid.toString('hex')))).toEqual([[oidOf(1).toString('hex')], [oidOf(3).toString('hex')]]);
      expect((await fs.load(oidOf(3))).data).toEqual(Buffer.from([7, 8]));
      // restore takes one too, also where it finds a backpointer to the same bytes.
      const t3 = tidPlusOne(t2);
      const restoring = {};
      await fs.tpcBegin(restoring, { tid: t3, status: ' ' });
      fs.restore(oidOf(3), t3, new Uint8Array([7, 8]) as Buffer, t2, restoring);
      await fs.tpcVote(restoring);
      await fs.tpcFinish(restoring);
      const [restored] = await collect(fs.iterator(t3));
      expect(restored!.records[0]!.dataTxn).toEqual(t2);
      expect((await fs.load(oidOf(3))).data).toEqual(Buffer.from([7, 8]));

      // Tids of another length: the iterator gave a RangeError (start) or compared with the short bytes (stop), loadBefore answered null.
      for (const short of [Buffer.alloc(3), 'x' as unknown as Buffer]) {
        expect(() => fs.iterator(short)).toThrow(/^iterator: start must be 8 bytes/);
        expect(() => fs.iterator(null, short)).toThrow(/^iterator: stop must be 8 bytes/);
        await expect(fs.loadBefore(oidOf(1), short)).rejects.toThrow(/^loadBefore: tid must be 8 bytes/);
        await expect(fs.loadSerial(oidOf(1), short)).rejects.toThrow(/^loadSerial: tid must be 8 bytes/);
      }
      expect((await fs.loadBefore(oidOf(3), tidPlusOne(t2)))?.data).toEqual(Buffer.from([7, 8]));
    } finally {
      await fs.close();
    }
  });

  it('an iterator cut short by close() fails instead of ending as if it had reached the end; a following one ends', async () => {
    const dir = await tempDir('zrs-bad-');
    const fs = await FileStorage.open(join(dir, 'Data.fs'), { create: true, now: fakeClock() });
    // More than one read window, so that the iterator must read again after the close.
    for (let i = 0; i < 30; i++) await commit(fs, [[oidOf(1 + i), Z64, Buffer.alloc(100_000, i)]]);
    const cut = fs.iterator();
    expect((await cut.next()).done).toBe(false);
    // One that took everything before the close, all but its final step: it ends as it would have.
    const taken = fs.iterator();
    for (let i = 0; i < 30; i++) expect((await taken.next()).done).toBe(false);
    const following = fs.iterator(null, null, { follow: true });
    const whole = fs.iterator();
    expect((await collect(whole)).length).toBe(30);
    const stopped = fs.iterator(null, fs.lastTransaction());
    expect((await collect(stopped)).length).toBe(30);
    await fs.close();
    let read = 1;
    const rest = (async () => {
      for (;;) {
        const r = await cut.next();
        if (r.done) return;
        read++;
      }
    })();
    await expect(rest).rejects.toThrow(StorageClosedError);
    expect(read).toBeLessThan(30);
    expect(await following.next()).toEqual({ done: true, value: undefined });
    expect(await taken.next()).toEqual({ done: true, value: undefined });
  });
});
