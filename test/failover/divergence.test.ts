// Fork points when generation histories collide (no coordinator: two nodes
// can start the same generation at the same tid, or a promoted node's kept
// downstream never hears of its new generation). Each case was found by the
// failover simulation property (b), as a node that rewind could not repair:
// the fork named a tid its storage lacked, or kept a refused generation.

import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { readAuditLog } from '../../src/audit/auditLog.js';
import { RewindIncompleteError } from '../../src/errors.js';
import { forkPoint, judgeHistory } from '../../src/failover/divergence.js';
import { FailoverHistory } from '../../src/failover/history.js';
import { GenerationHistory } from '../../src/failover/generations.js';
import { CHAIN_ENTRY_BYTES, HashChain, chainPathFor } from '../../src/failover/hashChain.js';
import { rewindOpenStorage, rewindStorage } from '../../src/failover/rewind.js';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { tidPlusOne } from '../../src/storage/timestamp.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { BLOB_RECORD, commitMany, diskFailingOnce, Z64 } from '../replication/helpers.js';

afterAll(cleanupTempDirs);

const t = (n: number): Buffer => Buffer.from(n.toString(16).padStart(16, '0'), 'hex');
const h = (n: number, branch: string): Buffer => Buffer.from(`${branch}${n}`.padEnd(32, '.'));

describe('forkPoint', () => {
  // s1 and s2 were both promoted to generation 1 at the empty start. s1
  // committed 1; p followed s1, then was promoted to generation 2 at 1. s2
  // committed 2 on its own and now asks p.
  const p = {
    generations: [
      { generation: 0, startTid: Z64 },
      { generation: 1, startTid: Z64 },
      { generation: 2, startTid: t(1) },
    ],
    hashAt: (tid: Buffer) => (tid.equals(t(1)) ? h(1, 's1') : null),
    lastTid: t(1),
  };
  const s2 = { startTid: t(2), generations: [{ generation: 0, startTid: Z64 }, { generation: 1, startTid: Z64 }], chainHead: { tid: t(2), hash: h(2, 's2') }, chainSamples: [] };

  it('is not a boundary older than the secondary first transaction', () => {
    expect(forkPoint(p, s2)).toEqual(Z64);
    expect(judgeHistory(p, s2)).toMatchObject({ kind: 'diverged', forkTid: Z64 });
  });

  it('is still the boundary when the secondary may hold it', () => {
    // The secondary holds 1 with p's link (sampled), then its own 2 and 3.
    const oldPrimary = {
      startTid: t(3),
      generations: [{ generation: 0, startTid: Z64 }, { generation: 1, startTid: Z64 }],
      chainHead: { tid: t(3), hash: h(3, 'x') },
      chainSamples: [{ tid: t(2), hash: h(2, 'x') }, { tid: t(1), hash: h(1, 's1') }],
    };
    expect(forkPoint(p, oldPrimary)).toEqual(t(1));
  });

  it('goes back to the start of every generation the primary refused, even below shared data', () => {
    // s2 followed p while p was promoted (generation 2 at the start) and kept
    // streaming; s2 never heard of generation 2, then was promoted to its own
    // generation 1 at 1. p holds 1 too, with the same link.
    const s2 = { generations: [{ generation: 0, startTid: Z64 }, { generation: 1, startTid: t(1) }], hashAt: (tid: Buffer) => (tid.equals(t(1)) ? h(1, 'p') : null), lastTid: t(1) };
    const p2 = {
      startTid: t(1),
      generations: [{ generation: 0, startTid: Z64 }, { generation: 1, startTid: Z64 }, { generation: 2, startTid: Z64 }],
      chainHead: { tid: t(1), hash: h(1, 'p') },
      chainSamples: [],
    };
    // Before: the fork was 1, which kept generations 1 and 2 from the start: refused again after every rewind.
    expect(judgeHistory(s2, p2)).toMatchObject({ kind: 'diverged', forkTid: Z64 });
  });
});

describe('a claim without a chain (zc.zrs peers, older builds)', () => {
  const view = (neverHeld?: (tid: Buffer) => boolean) => ({
    generations: [{ generation: 0, startTid: Z64 }],
    hashAt: (tid: Buffer) => (tid.equals(t(1)) || tid.equals(t(3)) ? h(tid[7]!, 'p') : null),
    lastTid: t(3),
    ...(neverHeld ? { neverHeld } : {}),
  });
  const claim = (n: number) => ({ startTid: t(n), generations: [] });

  it('is diverged at a tid the primary lacks where its file proves it never held one', () => {
    expect(judgeHistory(view(() => true), claim(2))).toMatchObject({ kind: 'diverged', reason: expect.stringContaining('0000000000000002 is not in the primary') });
  });

  it('cannot be judged where the file cannot tell (a pack may have dropped it), or without the file', () => {
    expect(judgeHistory(view(() => false), claim(2))).toEqual({ kind: 'unknown' });
    expect(judgeHistory(view(), claim(2))).toEqual({ kind: 'unknown' });
  });

  it('is behind at a tid the primary holds, whatever the file says', () => {
    expect(judgeHistory(view(() => true), claim(1))).toEqual({ kind: 'behind' });
  });
});

describe('FailoverHistory.refusalFor', () => {
  it('refuses as bad-tid a hello whose chain head is not at its start tid (inconsistent), and takes a consistent one', async () => {
    const fs = await FileStorage.open(join(await tempDir(), 'Data.fs'), { create: true, fsync: false });
    const history = await FailoverHistory.open(fs, { role: 'primary', fsync: false });
    try {
      const tids = await commitMany(fs, 3);
      await history.chain.flush();
      const generations = [{ generation: 0, startTid: Buffer.from(Z64) }];
      const headAt = (i: number) => ({ tid: tids[i]!, hash: history.chain.hashAt(tids[i]!)! });
      expect(history.refusalFor({ startTid: tids[2]!, generations, chainHead: headAt(1) })?.code).toBe('bad-tid');
      expect(history.refusalFor({ startTid: tids[1]!, generations, chainHead: headAt(1) })).toBeUndefined();
    } finally {
      await history.close();
      await fs.close();
    }
  });
});

describe('rewinding to a fork tid the storage lacks', () => {
  async function storageWith(n: number): Promise<{ fs: FileStorage; tids: Buffer[]; path: string }> {
    const path = join(await tempDir(), 'Data.fs');
    // A minute between commits: tids with room between them.
    let nowMs = Date.UTC(2024, 0, 1);
    const fs = await FileStorage.open(path, { create: true, fsync: false, now: () => (nowMs += 60_000) });
    return { fs, tids: await commitMany(fs, n), path };
  }

  it('online (the primary named it): keeps what is older, cutting at least the last transaction', async () => {
    const { fs, tids } = await storageWith(3);
    const history = await FailoverHistory.open(fs, { role: 'secondary', fsync: false });
    try {
      const r = await rewindOpenStorage(fs, tidPlusOne(tids[1]!), { history, withBlobs: false });
      expect(r.forkTid).toEqual(tids[1]);
      expect(r.cutTids).toEqual([tids[2]]);
      expect(fs.lastTransaction()).toEqual(tids[1]);
    } finally {
      await history.close();
      await fs.close();
    }
  });

  it('online, on a storage whose hash chain stopped on a write error: cuts the chain and the generations too', async () => {
    const path = join(await tempDir(), 'Data.fs');
    const { disk, failNext } = diskFailingOnce();
    const fs = await FileStorage.open(path, { create: true, disk });
    const history = await FailoverHistory.open(fs, { role: 'secondary' });
    try {
      failNext();
      // More than a batch of chain entries: the batch's write is synced, and that sync fails.
      const tids = await commitMany(fs, 600);
      await expect(history.chain.flush()).rejects.toThrow(/writing the hash chain failed/);
      await history.adopt({ generation: { generation: 1, startTid: tids[500]! }, generations: [{ generation: 0, startTid: Z64 }, { generation: 1, startTid: tids[500]! }] });
      const r = await rewindOpenStorage(fs, tids[100]!, { history, withBlobs: false });
      expect(r.forkTid).toEqual(tids[100]);
      expect(fs.lastTransaction()).toEqual(tids[100]);
      expect(history.generations.list.map((g) => g.generation)).toEqual([0]);
      // The chain was opened again on the shorter file: nothing past the fork, and it works.
      expect(history.chain.hashAt(tids[200]!)).toBeNull();
      expect(history.chain.head?.tid).toEqual(tids[100]);
      await history.chain.flush();
    } finally {
      await history.close();
      await fs.close();
    }
  });

  it('a rewind that fails while saving the cut leaves no partial side file, and cuts nothing', async () => {
    const { fs, tids, path } = await storageWith(4);
    const history = await FailoverHistory.open(fs, { role: 'secondary', fsync: false });
    const finish = FileStorage.prototype.tpcFinish;
    let sideCommits = 0;
    const spy = vi.spyOn(FileStorage.prototype, 'tpcFinish').mockImplementation(async function (this: FileStorage, ...args) {
      if (this.path.includes('.rewound-') && ++sideCommits === 2) throw new Error('disk full');
      return finish.apply(this, args);
    });
    try {
      await expect(rewindOpenStorage(fs, tids[0]!, { history, withBlobs: false })).rejects.toThrow('disk full');
      spy.mockRestore();
      expect(readdirSync(dirname(path)).filter((f) => f.includes('.rewound-'))).toEqual([]);
      expect(fs.lastTransaction()).toEqual(tids[3]);
    } finally {
      spy.mockRestore();
      await history.close();
      await fs.close();
    }
  });

  it("a side file whose close fails: a failed copy still leaves nothing and names its own error, a whole one is kept (the close's error left the partial file and its lock, or failed a rewind that was done)", async () => {
    const { fs, tids, path } = await storageWith(4);
    const history = await FailoverHistory.open(fs, { role: 'secondary', fsync: false });
    const finish = FileStorage.prototype.tpcFinish;
    const close = FileStorage.prototype.close;
    let failCopy = true;
    const finishSpy = vi.spyOn(FileStorage.prototype, 'tpcFinish').mockImplementation(async function (this: FileStorage, ...args) {
      if (this.path.includes('.rewound-') && failCopy) throw new Error('disk full');
      return finish.apply(this, args);
    });
    const closeSpy = vi.spyOn(FileStorage.prototype, 'close').mockImplementation(async function (this: FileStorage) {
      await close.call(this);
      if (this.path.includes('.rewound-')) throw new Error('ENOSPC: saving the index');
    });
    const sideFiles = (): string[] => readdirSync(dirname(path)).filter((f) => f.includes('.rewound-'));
    try {
      await expect(rewindOpenStorage(fs, tids[0]!, { history, withBlobs: false })).rejects.toThrow('disk full');
      expect(sideFiles()).toEqual([]);
      expect(fs.lastTransaction()).toEqual(tids[3]);
      failCopy = false;
      const r = await rewindOpenStorage(fs, tids[0]!, { history, withBlobs: false });
      expect(r.cutTids).toEqual(tids.slice(1));
      expect(sideFiles()).toEqual([basename(r.sidePath!)]);
      expect(fs.lastTransaction()).toEqual(tids[0]);
    } finally {
      finishSpy.mockRestore();
      closeSpy.mockRestore();
      await history.close();
      await fs.close();
    }
  });

  it('writes the side file under a .partial name until it is whole: a rewind killed while it copies leaves nothing under the name the cut is read from', async () => {
    const { fs, tids, path } = await storageWith(4);
    const history = await FailoverHistory.open(fs, { role: 'secondary', fsync: false });
    const finish = FileStorage.prototype.tpcFinish;
    const seen: string[][] = [];
    const sideFiles = (): string[] => readdirSync(dirname(path)).filter((f) => f.includes('.rewound-')).sort();
    const spy = vi.spyOn(FileStorage.prototype, 'tpcFinish').mockImplementation(async function (this: FileStorage, ...args) {
      const tid = await finish.apply(this, args);
      if (this.path.includes('.rewound-')) seen.push(sideFiles()); // what a kill -9 here would leave
      return tid;
    });
    const side = `${basename(path)}.rewound-${tids[0]!.toString('hex')}`;
    try {
      const r = await rewindOpenStorage(fs, tids[0]!, { history, withBlobs: false });
      expect(seen).toHaveLength(3);
      for (const names of seen) expect(names.filter((n) => !n.endsWith('.lock'))).toEqual([`${side}.partial`]);
      expect(basename(r.sidePath!)).toBe(side);
      expect(sideFiles()).toEqual([side]);
    } finally {
      spy.mockRestore();
      await history.close();
      await fs.close();
    }
  });

  it("removes what a rewind killed while it copied left (it cut nothing) and saves the whole cut under the name", async () => {
    const { fs, tids, path } = await storageWith(3);
    const history = await FailoverHistory.open(fs, { role: 'secondary', fsync: false });
    const side = `${path}.rewound-${tids[0]!.toString('hex')}`;
    writeFileSync(`${side}.partial`, 'left by a rewind killed while it copied');
    writeFileSync(`${side}.partial.lock`, '');
    mkdirSync(`${side}.partial.blobs`);
    mkdirSync(`${side}.blobs`); // renamed before the data file when the kill came between the two
    try {
      const r = await rewindOpenStorage(fs, tids[0]!, { history, withBlobs: false });
      expect(r.sidePath).toBe(side);
      expect(readdirSync(dirname(path)).filter((f) => f.includes('.rewound-'))).toEqual([basename(side)]);
      expect(r.cutTids).toEqual(tids.slice(1));
    } finally {
      await history.close();
      await fs.close();
    }
  });

  it('before the first transaction: keeps nothing', async () => {
    const { fs, tids } = await storageWith(2);
    const history = await FailoverHistory.open(fs, { role: 'secondary', fsync: false });
    try {
      const r = await rewindOpenStorage(fs, Buffer.from('0000000000000001', 'hex'), { history, withBlobs: false });
      expect(r.forkTid).toEqual(Z64);
      expect(r.cutTids).toEqual(tids);
    } finally {
      await history.close();
      await fs.close();
    }
  });

  it('offline: the storage stays locked from its first read to the last file cut, and is free after', async () => {
    const { fs, tids, path } = await storageWith(4);
    await fs.close();
    const attempts: string[] = [];
    const tryOpen = async (): Promise<void> => {
      const other = await FileStorage.open(path).catch((err: Error) => err);
      if (other instanceof FileStorage) {
        await other.close();
        attempts.push('opened');
      } else attempts.push(other.name);
    };
    // A node starting tries to open the storage right after the rewind's own storage closed (before the
    // truncation), and again before the generations are cut.
    const closeStorage = FileStorage.prototype.close;
    let probing = false;
    const closeSpy = vi.spyOn(FileStorage.prototype, 'close').mockImplementation(async function (this: FileStorage) {
      await closeStorage.call(this);
      if (probing || this.path !== path) return;
      probing = true;
      await tryOpen();
      probing = false;
    });
    const generationsOpen = GenerationHistory.open.bind(GenerationHistory);
    const spy = vi.spyOn(GenerationHistory, 'open').mockImplementation(async (p: string) => {
      await tryOpen();
      return generationsOpen(p);
    });
    try {
      const r = await rewindStorage(path, { toCommonWith: tids[1]!, auditPath: null });
      expect(r.cutTids).toEqual(tids.slice(2));
    } finally {
      spy.mockRestore();
      closeSpy.mockRestore();
    }
    expect(attempts).toEqual(['LockedError', 'LockedError']);
    const after = await FileStorage.open(path);
    expect(after.lastTransaction()).toEqual(tids[1]);
    await after.close();
  });

  it('offline with blobs: cut blobs go to the side blob directory, and a blob file already missing is named, not passed over', async () => {
    const dir = await tempDir();
    const path = join(dir, 'Data.fs');
    const blobDir = join(dir, 'blobs');
    const fs = await FileStorage.open(path, { create: true, fsync: false, blobDir });
    const [kept] = await commitMany(fs, 1);
    const stored: Array<{ oid: Buffer; tid: Buffer }> = [];
    for (const content of ['one', 'two']) {
      const file = join(dir, `upload-${content}`);
      writeFileSync(file, content);
      const oid = fs.newOid();
      const txn = {};
      await fs.tpcBegin(txn);
      await fs.storeBlob(oid, Z64, BLOB_RECORD, file, txn);
      await fs.tpcVote(txn);
      stored.push({ oid, tid: await fs.tpcFinish(txn) });
    }
    const [present, gone] = stored;
    rmSync(fs.blobs!.pathFor(gone!.oid, gone!.tid));
    const presentPath = fs.blobs!.pathFor(present!.oid, present!.tid);
    await fs.close();

    const r = await rewindStorage(path, { toCommonWith: kept!, blobDir });
    expect(r.cutTids).toEqual([present!.tid, gone!.tid]);
    expect(r.blobsCut).toBe(1);
    expect(r.blobsMissing).toEqual([`oid 0x${gone!.oid.toString('hex')} tid 0x${gone!.tid.toString('hex')}`]);
    expect(existsSync(presentPath)).toBe(false);
    const side = await FileStorage.open(r.sidePath!, { readOnly: true, blobDir: r.sideBlobDir! });
    try {
      expect(readFileSync(await side.loadBlob(present!.oid, present!.tid), 'utf8')).toBe('one');
      expect(side.transactionCount).toBe(2);
    } finally {
      await side.close();
    }
    const rewound = (await readAuditLog(`${path}.audit`)).records.find((rec) => rec.kind === 'rewind')!;
    expect(rewound.details).toMatchObject({ blobsCut: 1, blobsMissing: 1, firstBlobsMissing: r.blobsMissing });
  });

  it('offline: the rewind is recorded before anything is cut, and a step failing after the cut says what was cut and where', async () => {
    const { fs, tids, path } = await storageWith(5);
    await fs.close();
    // Cutting the generations file fails (its temp path is taken by a directory).
    mkdirSync(`${path}.generations.tmp`);
    const err = (await rewindStorage(path, { toCommonWith: tids[1]! }).catch((e: unknown) => e)) as RewindIncompleteError;
    expect(err).toBeInstanceOf(RewindIncompleteError);
    expect([err.forkTid, err.step]).toEqual([tids[1], 'the generations file']);
    expect(err.message).toMatch(new RegExp(`^rewinding to tid ${tids[1]!.toString('hex')} \\(3 transaction\\(s\\), saved in .*; recorded in the audit log\\) failed at cutting the generations file: `));
    const records = (await readAuditLog(`${path}.audit`)).records;
    expect(records.map((r) => r.kind)).toEqual(['rewind']);
    expect(records[0]!.details).toMatchObject({ forkTid: tids[1]!.toString('hex'), transactionsCut: 3, offline: true });
    const after = await FileStorage.open(path, { readOnly: true });
    expect(after.lastTransaction()).toEqual(tids[1]);
    await after.close();
  });

  it('offline: a damaged hash chain stops the rewind before anything is saved aside, recorded or cut', async () => {
    const { fs, tids, path } = await storageWith(1400);
    await (await HashChain.open(fs)).close(); // the chain file, every entry written
    await fs.close();
    const chainPath = chainPathFor(path);
    const chain = readFileSync(chainPath);
    chain[8 + 5 * CHAIN_ENTRY_BYTES + 3]! ^= 0x01; // long before its last write
    writeFileSync(chainPath, chain);
    const data = readFileSync(path);
    await expect(rewindStorage(path, { toCommonWith: tids[1000]! })).rejects.toThrow(/chain entry 5 is damaged/);
    expect(readFileSync(path)).toEqual(data);
    expect(readFileSync(chainPath)).toEqual(chain);
    expect(readdirSync(dirname(path)).filter((f) => f.includes('rewound'))).toEqual([]);
    expect((await readAuditLog(`${path}.audit`)).records.map((r) => r.kind)).not.toContain('rewind');
  });

  it('an explicit tid must be a transaction of the storage', async () => {
    const { fs, tids, path } = await storageWith(2);
    await fs.close();
    await expect(rewindStorage(path, { toCommonWith: tidPlusOne(tids[0]!), auditPath: null })).rejects.toThrow(/not a transaction of this storage/);
  });
});
