// The hash chain file: links follow commits, survive reopen and pack, a torn
// last entry is dropped and recomputed, missing links are computed
// incrementally; and the pure divergence judgement.

import { createHash } from 'node:crypto';
import { appendFileSync, readFileSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { nodeDisk, type StorageDisk } from '../../src/storage/disk.js';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { tidPlusOne } from '../../src/storage/timestamp.js';
import { CHAIN_ENTRY_BYTES, CHAIN_ORIGIN, HashChain, MAX_CHAIN_SAMPLES, RunLinks, chainLink, chainPathFor, contentAt, linkOfStored, linksOfRun, prepareChainCut } from '../../src/failover/hashChain.js';
import { judgeHistory } from '../../src/failover/divergence.js';
import { GenerationHistory } from '../../src/failover/generations.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { allTransactions, commitMany, diskFailingOnce, Z64 } from '../replication/helpers.js';

afterAll(cleanupTempDirs);

async function linksOf(chain: HashChain, tids: Buffer[]): Promise<string[]> {
  await chain.flush();
  return tids.map((t) => chain.hashAt(t)!.toString('hex'));
}

/** A new storage with `n` commits followed by a chain, closed again: the storage (open), the tids, their links and the chain file. */
async function chainOfCommits(n: number): Promise<{ fs: FileStorage; tids: Buffer[]; links: string[]; chainPath: string }> {
  const path = join(await tempDir(), 'Data.fs');
  const fs = await FileStorage.open(path, { create: true, fsync: false });
  const chain = await HashChain.open(fs);
  const tids = await commitMany(fs, n);
  const links = await linksOf(chain, tids);
  await chain.close();
  return { fs, tids, links, chainPath: chainPathFor(path) };
}

/** A new storage of `n` one-record commits with its chain, both closed; `cut` is where transaction `cutAt` starts. */
async function chainedCommits(n: number, cutAt: number): Promise<{ path: string; tids: Buffer[]; cut: number }> {
  const path = join(await tempDir(), 'Data.fs');
  const fs = await FileStorage.open(path, { create: true, fsync: false });
  const chain = await HashChain.open(fs);
  const tids = await commitMany(fs, n, 1);
  let cut = -1;
  for await (const t of fs.iterator(tids[cutAt]!)) {
    cut = t.pos;
    break;
  }
  await chain.close();
  await fs.close();
  return { path, tids, cut };
}

/**
 * Open the storage at `path` with its chain, commit two transactions, and
 * open both again: the chain holds exactly the data file's transactions, and
 * no link of `stale` (a transaction the data file no longer holds).
 */
async function expectNoStaleLinks(path: string, stale: Buffer): Promise<void> {
  let fs = await FileStorage.open(path, { fsync: false });
  let chain = await HashChain.open(fs);
  await commitMany(fs, 2, 1);
  await chain.close();
  await fs.close();
  fs = await FileStorage.open(path, { fsync: false });
  chain = await HashChain.open(fs);
  try {
    expect(chain.length).toBe(fs.transactionCount);
    expect(chain.hashAt(stale)).toBeNull();
  } finally {
    await chain.close();
    await fs.close();
  }
}

describe('HashChain', () => {
  it('samples keep the first transaction and the steps back from the head, however many tids are asked for', async () => {
    const fs = await FileStorage.open(join(await tempDir(), 'Data.fs'), { create: true, fsync: false });
    const chain = await HashChain.open(fs);
    try {
      const tids = await commitMany(fs, 300);
      await chain.flush();
      // A history of 100 generations, each starting at one of the newer transactions.
      const starts = tids.slice(150, 250);
      const samples = chain.samples(starts);
      const sampled = samples.map((s) => s.tid.toString('hex'));
      expect(samples.length).toBeLessThanOrEqual(MAX_CHAIN_SAMPLES);
      expect(sampled).toContain(tids[0]!.toString('hex'));
      for (const back of [0, 1, 2, 4, 8, 16, 32, 64, 128]) expect(sampled).toContain(tids[299 - back]!.toString('hex'));
      expect(samples.every((s) => chain.hashAt(s.tid)!.equals(s.hash))).toBe(true);
      expect(sampled).toEqual([...sampled].sort().reverse());
    } finally {
      await chain.close();
      await fs.close();
    }
  });

  it('follows commits and is the same after reopen, recompute and pack', async () => {
    const dir = await tempDir();
    const path = join(dir, 'Data.fs');
    let fs = await FileStorage.open(path, { create: true, fsync: false });
    let chain = await HashChain.open(fs);
    const tids = await commitMany(fs, 10);
    const links = await linksOf(chain, tids);
    expect(new Set(links).size).toBe(10);
    expect(chain.head!.tid).toEqual(tids.at(-1));
    await chain.close();
    await fs.close();

    // Reopen: nothing recomputed, same links.
    fs = await FileStorage.open(path, { fsync: false });
    chain = await HashChain.open(fs);
    expect(await linksOf(chain, tids)).toEqual(links);
    await chain.close();

    // Torn last entry plus a missing one: dropped, then recomputed to the same values.
    const chainPath = chainPathFor(path);
    const size = statSync(chainPath).size;
    truncateSync(chainPath, size - CHAIN_ENTRY_BYTES - 5);
    chain = await HashChain.open(fs);
    expect(await linksOf(chain, tids)).toEqual(links);
    await chain.close();
    // A zeroed (whole-size) last entry fails its check.
    truncateSync(chainPath, size - CHAIN_ENTRY_BYTES);
    appendFileSync(chainPath, Buffer.alloc(CHAIN_ENTRY_BYTES));
    chain = await HashChain.open(fs);
    expect(await linksOf(chain, tids)).toEqual(links);

    // Pack does not change stored links; commits after it continue the chain.
    await fs.pack(Date.now() / 1000 + 10);
    const after = await commitMany(fs, 2);
    expect(await linksOf(chain, tids)).toEqual(links);
    expect(chain.hashAt(after[1]!)).not.toBeNull();
    await chain.close();
    await fs.close();

    // Missing file: recomputed from the whole data file.
    writeFileSync(chainPath, '');
    fs = await FileStorage.open(path, { readOnly: true });
    chain = await HashChain.open(fs);
    expect(chain.length).toBe(fs.transactionCount);
    expect(chain.length).toBeGreaterThan(2);
    await chain.close();
    await fs.close();
    expect(readFileSync(chainPath).subarray(0, 8).toString('latin1')).toBe('ZRSCHN02');
  });

  it('takes the commits that land while it catches up from the data file once each, in order, with the links a chain built afterwards gives', async () => {
    const dir = await tempDir();
    const path = join(dir, 'Data.fs');
    const fs = await FileStorage.open(path, { create: true, fsync: false });
    try {
      const before = await commitMany(fs, 3000);
      // The chain is built from the whole file while 20 more transactions commit, one at a time.
      const opening = HashChain.open(fs);
      let opened = false;
      void opening.then(() => (opened = true), () => undefined);
      const during: Buffer[] = [];
      let beforeOpened = 0;
      while (during.length < 20) {
        during.push(...(await commitMany(fs, 1)));
        if (!opened) beforeOpened += 1;
      }
      const chain = await opening;
      // Some landed before the catch-up ended (else nothing here was tested).
      expect(beforeOpened).toBeGreaterThan(0);
      const after = await commitMany(fs, 2);
      const tids = [...before, ...during, ...after];
      const links = await linksOf(chain, tids);
      expect(chain.length).toBe(tids.length);
      await chain.close();
      // A chain built from the finished file, nothing committing.
      writeFileSync(chainPathFor(path), '');
      const fresh = await HashChain.open(fs);
      try {
        expect(await linksOf(fresh, tids)).toEqual(links);
      } finally {
        await fresh.close();
      }
    } finally {
      await fs.close();
    }
  });

  it('drops a last entry with one flipped byte, and keeps reading and extending a version-1 file with its sha256 checks', async () => {
    const { fs, tids, links, chainPath } = await chainOfCommits(4);
    let chain: HashChain;

    const flipped = readFileSync(chainPath);
    flipped[flipped.length - CHAIN_ENTRY_BYTES + 20]! ^= 0x04;
    writeFileSync(chainPath, flipped);
    chain = await HashChain.open(fs);
    expect(chain.length).toBe(4);
    expect(await linksOf(chain, tids)).toEqual(links); // the last one recomputed
    await chain.close();

    // A version-1 file whose second link differs from what the data gives (as
    // a link sent by a primary for a packed transaction would): kept as stored.
    const v1 = readFileSync(chainPath);
    v1.write('ZRSCHN01', 0, 'latin1');
    const bogus = Buffer.alloc(32, 0xab);
    for (let i = 0; i < 4; i++) {
      const off = 8 + i * CHAIN_ENTRY_BYTES;
      if (i === 1) bogus.copy(v1, off + 8);
      createHash('sha256').update(v1.subarray(off, off + 40)).digest().copy(v1, off + 40, 0, 8);
    }
    writeFileSync(chainPath, v1);
    chain = await HashChain.open(fs);
    expect(chain.hashAt(tids[1]!)).toEqual(bogus);
    expect(chain.hashAt(tids[3]!)!.toString('hex')).toBe(links[3]);
    const [more] = await commitMany(fs, 1);
    await chain.close();
    chain = await HashChain.open(fs);
    expect(chain.length).toBe(5);
    expect(chain.hashAt(more!)).not.toBeNull();
    expect(chain.hashAt(tids[1]!)).toEqual(bogus);
    await chain.close();
    await fs.close();
    expect(readFileSync(chainPath).subarray(0, 8).toString('latin1')).toBe('ZRSCHN01');
  });

  it('refuses a chain file of another format or with a damaged header instead of rebuilding it (a primary-given link would be lost); starts over on a header never written', async () => {
    const { fs, tids, links, chainPath } = await chainOfCommits(3);
    let chain: HashChain;
    const good = readFileSync(chainPath);

    const newer = Buffer.from(good);
    newer.write('ZRSCHN03', 0, 'latin1');
    writeFileSync(chainPath, newer);
    await expect(HashChain.open(fs)).rejects.toThrow(/a format this version does not read \(ZRSCHN03: a newer version's\?\); move it away/);
    expect(readFileSync(chainPath).equals(newer)).toBe(true);

    const damaged = Buffer.from(good);
    damaged[2]! ^= 0x01;
    writeFileSync(chainPath, damaged);
    await expect(HashChain.open(fs)).rejects.toThrow(/not a hash chain file \(bad magic\)/);
    expect(readFileSync(chainPath).equals(damaged)).toBe(true);

    // A creation cut short before its header reached the disk: nothing in it to lose.
    writeFileSync(chainPath, Buffer.alloc(8));
    chain = await HashChain.open(fs);
    expect(await linksOf(chain, tids)).toEqual(links);
    await chain.close();
    await fs.close();
    expect(readFileSync(chainPath).subarray(0, 8).toString('latin1')).toBe('ZRSCHN02');
  });

  it('names an entry damaged in the middle of the file, before its last write, on open and on an offline cut, instead of failing on a missing value', async () => {
    const dir = await tempDir();
    const path = join(dir, 'Data.fs');
    const fs = await FileStorage.open(path, { create: true, fsync: false });
    const chain = await HashChain.open(fs);
    const tids = await commitMany(fs, 1400, 1);
    await chain.close();
    await fs.close();
    const chainPath = chainPathFor(path);
    const bytes = readFileSync(chainPath);
    // Entry 700: the first a search for the last tid reads, and before the last write (the last 600 or so).
    bytes[8 + 700 * CHAIN_ENTRY_BYTES + 20]! ^= 0x10;
    writeFileSync(chainPath, bytes);
    const again = await FileStorage.open(path, { readOnly: true });
    try {
      await expect(HashChain.open(again)).rejects.toThrow(/chain entry 700 is damaged; move the file away/);
    } finally {
      await again.close();
    }
    expect(() => prepareChainCut(path, tids[8]!)).toThrow(/chain entry 700 is damaged/);
  });

  /** A storage of `n` one-record transactions with its chain on disk; its path and its chain's. */
  async function chainOnDiskOf(n: number): Promise<{ path: string; chainPath: string }> {
    const path = join(await tempDir(), 'Data.fs');
    const fs = await FileStorage.open(path, { create: true, fsync: false });
    const chain = await HashChain.open(fs);
    await commitMany(fs, n, 1);
    await chain.close();
    await fs.close();
    return { path, chainPath: chainPathFor(path) };
  }

  /** Flip a bit in each of `entries` of the chain file `bytes` (in place); returns them. */
  function damaged(bytes: Buffer, ...entries: number[]): Buffer {
    for (const entry of entries) bytes[8 + entry * CHAIN_ENTRY_BYTES + 3]! ^= 0x01;
    return bytes;
  }

  /** The chain of the storage at `path` refuses to open, naming entry `entry`. */
  async function expectRefusedAt(path: string, entry: number): Promise<void> {
    const again = await FileStorage.open(path, { readOnly: true });
    try {
      await expect(HashChain.open(again)).rejects.toThrow(new RegExp(`chain entry ${entry} is damaged; move the file away`));
    } finally {
      await again.close();
    }
  }

  it('names an entry damaged anywhere before its last write on open, not only those a search reads, and leaves the file as it was', async () => {
    const { path, chainPath } = await chainOnDiskOf(1400);
    const intact = readFileSync(chainPath);
    for (const entry of [0, 212, 777]) {
      // Damage, and a torn partial entry at the end: refused, the file keeps both (nothing is cut first).
      const bytes = damaged(Buffer.concat([intact, Buffer.alloc(20, 0x55)]), entry);
      writeFileSync(chainPath, bytes);
      await expectRefusedAt(path, entry);
      expect(readFileSync(chainPath)).toEqual(bytes);
      writeFileSync(chainPath, intact);
    }
    // A torn last write (entry 1000 bad, in the last 600 or so) cut first must not let damage before it
    // go unchecked: entry 690 lies before the torn window of the file's end and within that of the cut
    // chain's (and on no search's path), where only a check of every kept entry reads it.
    writeFileSync(chainPath, damaged(Buffer.from(intact), 1000, 690));
    await expectRefusedAt(path, 690);
  });

  it('names a damaged entry past the first block the open checks by its index in the file', async () => {
    const { path, chainPath } = await chainOnDiskOf(9000);
    writeFileSync(chainPath, damaged(readFileSync(chainPath), 8195)); // in the second block of 8192 entries, before the last write
    await expectRefusedAt(path, 8195);
  });

  it('takes bad entries inside its last write for a torn write (its pages reach the disk in any order): cut from the first, computed again', async () => {
    const dir = await tempDir();
    const path = join(dir, 'Data.fs');
    const fs = await FileStorage.open(path, { create: true, fsync: false });
    const chain = await HashChain.open(fs);
    const tids = await commitMany(fs, 600, 1);
    const links = tids.map((t) => chain.hashAt(t)!.toString('hex'));
    await chain.close(); // a batch of 512, then the last 88 written on close
    await fs.close();
    const chainPath = chainPathFor(path);
    const bytes = readFileSync(chainPath);
    bytes.fill(0, 8 + 530 * CHAIN_ENTRY_BYTES, 8 + 560 * CHAIN_ENTRY_BYTES); // the middle of the last write never reached the disk
    writeFileSync(chainPath, bytes);
    const again = await FileStorage.open(path, { readOnly: true });
    try {
      const reopened = await HashChain.open(again);
      expect(tids.map((t) => reopened.hashAt(t)!.toString('hex'))).toEqual(links);
      await reopened.close();
    } finally {
      await again.close();
    }
  });
});

describe('linksOfRun', () => {
  it('takes a run only whole: without its last redundant length it is no run', async () => {
    const path = join(await tempDir(), 'Data.fs');
    const fs = await FileStorage.open(path, { create: true, fsync: false });
    try {
      await commitMany(fs, 3, 1);
      const run = readFileSync(path).subarray(4);
      expect(linksOfRun(CHAIN_ORIGIN, run)!.count).toBe(3);
      expect(linksOfRun(CHAIN_ORIGIN, run.subarray(0, run.length - 8))).toBeNull();
    } finally {
      await fs.close();
    }
  });
});

describe('linkOfStored', () => {
  it('gives the link chainLink gives for the same transaction, and null for a backpointer', async () => {
    const dir = await tempDir();
    const fs = await FileStorage.open(join(dir, 'l.fs'), { create: true, fsync: false });
    await commitMany(fs, 12, 4);
    // An undo writes backpointers.
    const [entry] = await fs.undoLog(0, 1);
    const txn = { description: 'undo' };
    await fs.tpcBegin(txn);
    await fs.undo(entry!.id, txn);
    await fs.tpcVote(txn);
    const undoTid = await fs.tpcFinish(txn);
    // Large records, mixed with small ones and with metadata, are hashed in place: the same link.
    const large = { user: 'someone', description: 'large records' };
    await fs.tpcBegin(large);
    [5, 70 * 1024, 12, 64 * 1024, 300 * 1024].forEach((size, i) => fs.store(Buffer.from(`big${i}`.padEnd(8, '_')), Z64, Buffer.alloc(size, i + 1), large));
    await fs.tpcVote(large);
    const largeTid = await fs.tpcFinish(large);
    const prev = Buffer.alloc(32, 7);
    let sawLarge = false;
    for await (const t of fs.iterator()) {
      sawLarge ||= t.tid.equals(largeTid);
      const stored = linkOfStored(prev, t.raw!);
      if (t.tid.equals(undoTid)) expect(stored).toBeNull();
      else expect(stored!.equals(chainLink(prev, contentAt(fs, t.pos)))).toBe(true);
    }
    expect(sawLarge).toBe(true);
    await fs.close();
  });
});

describe('linkOfStored against chainLink (property)', () => {
  it('agrees for any metadata and record sizes, small and large data mixed, and linksOfRun chains them', async () => {
    const dir = await tempDir();
    const txnArb = fc.record({
      user: fc.string({ maxLength: 300 }),
      description: fc.string({ maxLength: 300 }),
      extension: fc.option(fc.dictionary(fc.string({ maxLength: 10 }), fc.integer()), { nil: undefined }),
      sizes: fc.array(fc.oneof({ weight: 9, arbitrary: fc.integer({ min: 1, max: 3000 }) }, { weight: 1, arbitrary: fc.integer({ min: 64 * 1024, max: 150 * 1024 }) }), { minLength: 1, maxLength: 12 }),
      fill: fc.integer({ min: 0, max: 255 }),
    });
    // Each run on a storage of its own, after 0 to 3 earlier transactions, so a printed seed replays it alone.
    let runs = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(txnArb, { minLength: 1, maxLength: 4 }), fc.uint8Array({ minLength: 32, maxLength: 32 }), async (txns, start) => {
        const fs = await FileStorage.open(join(dir, `p${runs++}.fs`), { create: true, fsync: false });
        try {
          let prev: Buffer = Buffer.from(start);
          for (const t of txns) {
            const txn = { user: t.user, description: t.description, ...(t.extension ? { extension: t.extension } : {}) };
            await fs.tpcBegin(txn);
            t.sizes.forEach((size, i) => fs.store(fs.newOid(), Z64, Buffer.alloc(size, (t.fill + i) % 256), txn));
            await fs.tpcVote(txn);
            const tid = await fs.tpcFinish(txn);
            const stored = (await allTransactions(fs)).find((x) => x.tid.equals(tid))!;
            const expected = chainLink(prev, contentAt(fs, stored.pos));
            expect(linkOfStored(prev, stored.raw!)!.toString('hex')).toBe(expected.toString('hex'));
            const [run] = linksOfRun(prev, stored.raw!)!.entries();
            expect(run!.link.equals(expected) && run!.tid.equals(tid)).toBe(true);
            prev = expected;
          }
        } finally {
          await fs.close();
        }
      }),
      { numRuns: 30 },
    );
  });
});

describe('links for replication', () => {
  it('a cursor gives the links of consecutive transactions, across read blocks and unwritten entries, and null for tids it lacks', async () => {
    const dir = await tempDir();
    const fs = await FileStorage.open(join(dir, 'c.fs'), { create: true, fsync: false });
    const chain = await HashChain.open(fs, { fsync: false });
    const tids = await commitMany(fs, 1100, 1); // more than one block of 1024 entries
    await chain.flush();
    const more = await commitMany(fs, 3, 1); // links not yet on disk
    const all = [...tids, ...more];
    const cursor = chain.cursor();
    const hex = (b: Buffer): string => b.toString('hex');
    for (const [from, to] of [[0, 5], [5, 1020], [1020, 1030], [1030, 1103]] as const) {
      const got = cursor.linksOf(all.slice(from, to))!;
      expect(hex(got.prev)).toBe(from === 0 ? hex(CHAIN_ORIGIN) : hex(chain.hashAt(all[from - 1]!)!));
      expect(got.links.map(hex)).toEqual(all.slice(from, to).map((t) => hex(chain.hashAt(t)!)));
    }
    // Out of order (a new session starting over) and missing tids.
    expect(cursor.linksOf([all[7]!])!.links.map(hex)).toEqual([hex(chain.hashAt(all[7]!)!)]);
    expect(cursor.linksOf([Buffer.alloc(8, 0xee)])).toBeNull();
    expect(cursor.linksOf([all[3]!, all[5]!])).toBeNull(); // not consecutive
    await chain.close();
    expect(cursor.linksOf([all[3]!])).toBeNull(); // a closed chain holds nothing
    await fs.close();
  });

  it("a new cursor finds the chain's last entry (a session starting at the head)", async () => {
    const fs = await FileStorage.open(join(await tempDir(), 'c.fs'), { create: true, fsync: false });
    const chain = await HashChain.open(fs, { fsync: false });
    try {
      const tids = await commitMany(fs, 5, 1);
      await chain.flush();
      const got = chain.cursor().linksOf([tids[4]!])!;
      expect(got.links[0]).toEqual(chain.hashAt(tids[4]!));
      expect(got.prev).toEqual(chain.hashAt(tids[3]!));
    } finally {
      await chain.close();
      await fs.close();
    }
  });

  it('cuts from its file the links past a data file cut shorter, so the links written after them are not followed by stale ones on the next open', async () => {
    const { path, tids, cut } = await chainedCommits(40, 30);
    truncateSync(path, cut); // the data file lost its last 10 transactions (a rewind done by hand, a restored copy)
    await expectNoStaleLinks(path, tids[35]!);
  });

  it('cuts a torn last write from its file itself, so links written after it are not followed by stale ones on the next open', async () => {
    const { path, tids, cut } = await chainedCommits(600, 570); // a batch of 512, then the last 88 written on close
    const chainPath = chainPathFor(path);
    const bytes = readFileSync(chainPath);
    bytes.fill(0, 8 + 530 * CHAIN_ENTRY_BYTES, 8 + 560 * CHAIN_ENTRY_BYTES); // the middle of the last write never reached the disk
    writeFileSync(chainPath, bytes);
    truncateSync(path, cut); // and the data file lost its last 30 transactions
    await expectNoStaleLinks(path, tids[580]!);
  });

  it('links computed ahead are taken only after the link they were computed from; others are computed again', async () => {
    const dir = await tempDir();
    const src = await FileStorage.open(join(dir, 'src.fs'), { create: true, fsync: false });
    await commitMany(src, 6, 2);
    const raws: Buffer[] = [];
    for await (const t of src.iterator()) raws.push(Buffer.from(t.raw!));
    await src.close();
    const run = Buffer.concat(raws.slice(0, 3));
    const rest = Buffer.concat(raws.slice(3));

    const fs = await FileStorage.open(join(dir, 'dst.fs'), { create: true, fsync: false });
    const chain = await HashChain.open(fs, { fsync: false });
    // Taken as given when the chain's head is what they follow: a marker shows it was not recomputed.
    const marker = Buffer.alloc(32, 0xab);
    const [first, ...others] = linksOfRun(CHAIN_ORIGIN, run)!.entries();
    chain.expectComputed(RunLinks.of(CHAIN_ORIGIN, [{ tid: first!.tid, link: marker }, ...linksOfRun(marker, run.subarray(raws[0]!.length))!.entries()]));
    expect(others).toHaveLength(2);
    // Computed after some other link: not taken.
    const wrong = linksOfRun(Buffer.alloc(32, 9), rest)!;
    chain.expectComputed(wrong);
    await (await fs.appendTransactions(Buffer.from(run))).durable;
    await (await fs.appendTransactions(Buffer.from(rest))).durable;
    await chain.flush();
    expect(chain.hashAt(first!.tid)!.equals(marker)).toBe(true);
    let prev: Buffer = marker;
    for await (const t of fs.iterator(tidPlusOne(first!.tid))) {
      prev = linkOfStored(prev, t.raw!)!;
      expect(chain.hashAt(t.tid)!.equals(prev)).toBe(true);
    }
    expect(wrong.entries().every((w) => !chain.hashAt(w.tid)!.equals(w.link))).toBe(true);
    await chain.close();
    await fs.close();
  });

  it('keeps at most 65,536 links computed ahead, letting the oldest runs go', async () => {
    const dir = await tempDir();
    const src = await FileStorage.open(join(dir, 'src.fs'), { create: true, fsync: false });
    const [t1, t2] = await commitMany(src, 2, 1);
    const raws: Buffer[] = [];
    for await (const t of src.iterator()) raws.push(Buffer.from(t.raw!));
    await src.close();
    const realFirst = linkOfStored(CHAIN_ORIGIN, raws[0]!)!;

    const fs = await FileStorage.open(join(dir, 'dst.fs'), { create: true, fsync: false });
    const chain = await HashChain.open(fs, { fsync: false });
    const marker1 = Buffer.alloc(32, 0x11);
    const marker2 = Buffer.alloc(32, 0x22);
    chain.expectComputed(RunLinks.of(CHAIN_ORIGIN, [{ tid: t1!, link: marker1 }]));
    // A second run of 70,000 links (t2's, then made-up later tids): over the bound with the first, which goes.
    const extra = 70_000;
    const tids = Buffer.alloc(8 * (extra + 1), 0xff);
    t2!.copy(tids, 0);
    for (let i = 1; i <= extra; i++) tids.writeUInt32BE(i, 8 * i + 4);
    const links = Buffer.alloc(32 * (extra + 1), 0x33);
    marker2.copy(links, 0);
    chain.expectComputed(new RunLinks(realFirst, tids, links));
    await (await fs.appendTransactions(Buffer.concat(raws))).durable;
    await chain.flush();
    expect(chain.hashAt(t1!)!.equals(realFirst)).toBe(true); // computed again: the marker was let go
    expect(chain.hashAt(t2!)!.equals(marker2)).toBe(true); // the newest run is kept whole
    await chain.close();
    await fs.close();
  });
});

/** A fresh storage without fsync and its chain, with the chain file's size and a wait for it to grow. */
async function chainWithSize(name: string) {
  const dir = await tempDir();
  const path = join(dir, name);
  const fs = await FileStorage.open(path, { create: true, fsync: false });
  const chain = await HashChain.open(fs, { fsync: false });
  const size = (): number => statSync(chainPathFor(path)).size;
  const sizeReaches = async (bytes: number): Promise<number> => {
    for (const t0 = Date.now(); size() < bytes && Date.now() - t0 < 10_000; ) await new Promise((r) => setImmediate(r));
    return size();
  };
  return { dir, path, fs, chain, size, sizeReaches };
}

describe('writing the chain file', () => {
  it('holds links back until a batch is full (a crash loses nothing: they are computed again), but writes a link given for a packed transaction at once', async () => {
    const { dir, path, fs, chain, size, sizeReaches } = await chainWithSize('w.fs');
    const empty = size();
    const tids = await commitMany(fs, 10);
    for (let i = 0; i < 50; i++) await new Promise((r) => setImmediate(r));
    expect(size()).toBe(empty); // in memory only
    const links = tids.map((t) => chain.hashAt(t)!.toString('hex'));

    // A crash now: a chain opened afresh on the data file computes the same links.
    const copy = join(dir, 'copy.fs');
    writeFileSync(copy, readFileSync(path));
    const copyFs = await FileStorage.open(copy, { fsync: false });
    const recomputed = await HashChain.open(copyFs, { fsync: false });
    expect(tids.map((t) => recomputed.hashAt(t)!.toString('hex'))).toEqual(links);
    await recomputed.close();
    await copyFs.close();

    const given = Buffer.alloc(32, 0x5a);
    const tid = tidPlusOne(fs.lastTransaction());
    chain.expectLink(tid, given);
    const txn = { description: 'packed' };
    await fs.tpcBegin(txn, { tid, status: 'p' });
    fs.store(fs.newOid(), Z64, Buffer.from('p'), txn);
    await fs.tpcVote(txn);
    await fs.tpcFinish(txn);
    expect(chain.hashAt(tid)!.equals(given)).toBe(true);
    expect(await sizeReaches(empty + 11 * CHAIN_ENTRY_BYTES)).toBe(empty + 11 * CHAIN_ENTRY_BYTES);
    await chain.close();
    await fs.close();
  });
});

describe('a chain stopped by a write error', () => {
  it('never says a link the primary gave is written (the transaction was acknowledged), and refuses a pack (it packed, and the links computed again differed)', async () => {
    const path = join(await tempDir(), 'f.fs');
    const { disk, failNext } = diskFailingOnce();
    const fs = await FileStorage.open(path, { create: true, fsync: false, disk });
    const chain = await HashChain.open(fs, { fsync: true });
    try {
      await commitMany(fs, 3);
      failNext();
      const tid = tidPlusOne(fs.lastTransaction());
      chain.expectLink(tid, Buffer.alloc(32, 0x5a));
      const txn = { description: 'packed' };
      await fs.tpcBegin(txn, { tid, status: 'p' });
      fs.store(fs.newOid(), Z64, Buffer.from('p'), txn);
      await fs.tpcVote(txn);
      await fs.tpcFinish(txn);
      await expect(chain.givenWritten()).rejects.toThrow(/writing the hash chain failed: a link the primary gave is not on disk/);
      expect(chain.failure?.message).toMatch(/EIO/);
      const before = readFileSync(path);
      await expect(fs.pack(Date.now() / 1000 + 60)).rejects.toThrow(/writing the hash chain failed/);
      expect(readFileSync(path).equals(before)).toBe(true);
    } finally {
      await chain.close().catch(() => undefined);
      await fs.close();
    }
  });
});

describe('links a primary gave, with a chain stopped by a write error', () => {
  /** A storage on a disk whose next sync fails, its chain synced through that disk, and a packed transaction's commit. */
  async function failingChain() {
    const { disk, failNext } = diskFailingOnce();
    return { ...(await chainOnDisk(disk)), failNext };
  }

  /** A storage on `disk`, its chain synced through that disk, a packed transaction's commit, and the close of both. */
  async function chainOnDisk(disk: StorageDisk) {
    const fs = await FileStorage.open(join(await tempDir(), 'f.fs'), { create: true, fsync: false, disk });
    const chain = await HashChain.open(fs, { fsync: true });
    const commitPacked = async (tid: Buffer): Promise<void> => {
      const txn = { description: 'packed' };
      await fs.tpcBegin(txn, { tid, status: 'p' });
      fs.store(fs.newOid(), Z64, Buffer.from('p'), txn);
      await fs.tpcVote(txn);
      await fs.tpcFinish(txn);
    };
    const close = async () => {
      await chain.close().catch(() => undefined);
      await fs.close();
    };
    return { fs, chain, commitPacked, close };
  }

  it('names the packed transaction whose link the failed write lost', async () => {
    const { fs, chain, failNext, commitPacked, close } = await failingChain();
    try {
      await commitMany(fs, 3);
      expect(chain.lostLink).toBeNull();
      failNext();
      const tid = tidPlusOne(fs.lastTransaction());
      chain.expectLink(tid, Buffer.alloc(32, 0x5a));
      await commitPacked(tid);
      await expect(chain.givenWritten()).rejects.toThrow(/a link the primary gave is not on disk/);
      expect(chain.lostLink?.toString('hex')).toBe(tid.toString('hex'));
      // Later commits, computed or given, leave the first one named.
      await commitMany(fs, 1);
      expect(chain.lostLink?.toString('hex')).toBe(tid.toString('hex'));
    } finally {
      await close();
    }
  });

  it('names a given link whose write failed after the write before it, still running when it was given, succeeded', async () => {
    const gate: { release: (() => void) | null } = { release: null };
    let syncs = 0;
    const disk: StorageDisk = {
      write: nodeDisk.write,
      truncate: nodeDisk.truncate,
      datasync: async (fd) => {
        syncs += 1;
        if (syncs === 1) await new Promise<void>((resolve) => (gate.release = resolve));
        else if (syncs === 2) throw Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' });
        return nodeDisk.datasync(fd);
      },
    };
    const { fs, chain, commitPacked, close } = await chainOnDisk(disk);
    try {
      await commitMany(fs, 2);
      const t1 = tidPlusOne(fs.lastTransaction());
      chain.expectLink(t1, Buffer.alloc(32, 0x11));
      await commitPacked(t1);
      while (gate.release === null) await new Promise((r) => setImmediate(r)); // t1's write is syncing
      const t2 = tidPlusOne(t1);
      chain.expectLink(t2, Buffer.alloc(32, 0x22));
      await commitPacked(t2);
      gate.release();
      await expect(chain.givenWritten()).rejects.toThrow(/not on disk/);
      expect(chain.lostLink?.toString('hex')).toBe(t2.toString('hex'));
    } finally {
      await close();
    }
  });

  it('names one given before the chain stopped and committed after, and refuses to take a link once stopped', async () => {
    const { fs, chain, failNext, commitPacked, close } = await failingChain();
    try {
      await commitMany(fs, 2);
      const tid = tidPlusOne(fs.lastTransaction());
      chain.expectLink(tid, Buffer.alloc(32, 0x5a));
      failNext();
      await expect(chain.flush()).rejects.toThrow(/writing the hash chain failed/);
      expect(chain.lostLink).toBeNull(); // computed links only: a reopen computes them again
      await commitPacked(tid);
      expect(chain.lostLink?.toString('hex')).toBe(tid.toString('hex'));
      expect(() => chain.expectLink(tidPlusOne(tid), Buffer.alloc(32, 0x5b))).toThrow(/cannot record the link the primary gave for packed transaction/);
    } finally {
      await close();
    }
  });
});

describe('writing the chain file before a pack', () => {
  it('writes every pending link before the packed file replaces the data file (a packed file cannot give them again)', async () => {
    const { dir, path, fs, chain, size } = await chainWithSize('pk.fs');
    const empty = size();
    const tids = await commitMany(fs, 12);
    const links = tids.map((t) => chain.hashAt(t)!.toString('hex'));
    expect(size()).toBe(empty); // pending, in memory
    await fs.pack(Date.now() / 1000 + 60);
    expect(size()).toBe(empty + 12 * CHAIN_ENTRY_BYTES);
    // A crash now: the chain reopened beside the packed file keeps the links the old file gave.
    const copy = join(dir, 'pk-copy.fs');
    writeFileSync(copy, readFileSync(path));
    writeFileSync(chainPathFor(copy), readFileSync(chainPathFor(path)));
    const copyFs = await FileStorage.open(copy, { fsync: false });
    const reopened = await HashChain.open(copyFs, { fsync: false });
    try {
      expect(tids.map((t) => reopened.hashAt(t)?.toString('hex') ?? null)).toEqual(links);
    } finally {
      await reopened.close();
      await copyFs.close();
      await chain.close();
      await fs.close();
    }
  });
});

describe('writing the chain file under a fast committer', () => {
  it('writes full batches: links appended while a batch is being written wait for the next full one', async () => {
    const { fs, chain, size, sizeReaches } = await chainWithSize('f.fs');
    const empty = size();
    const tids = await commitMany(fs, 512 + 100); // the first batch's write is under way while the rest commit
    await sizeReaches(empty + 512 * CHAIN_ENTRY_BYTES);
    for (let i = 0; i < 50; i++) await new Promise((r) => setImmediate(r));
    expect(size()).toBe(empty + 512 * CHAIN_ENTRY_BYTES);
    expect(chain.hashAt(tids.at(-1)!)).not.toBeNull(); // the rest are in memory
    // A cursor reads the just-written batch from memory and the rest from what is pending: the same links.
    for (const [from, to] of [[0, 612], [500, 530], [510, 520], [511, 513], [600, 612]] as const) {
      const run = tids.slice(from, to);
      const got = chain.cursor().linksOf(run);
      expect(got?.links.map((l) => l.toString('hex'))).toEqual(run.map((t) => chain.hashAt(t)!.toString('hex')));
      expect(got?.prev.equals(from === 0 ? CHAIN_ORIGIN : chain.hashAt(tids[from - 1]!)!)).toBe(true);
    }
    await chain.close(); // and written on close
    expect(size()).toBe(empty + 612 * CHAIN_ENTRY_BYTES);
    await fs.close();
  });
});

describe('a cursor following live commits', () => {
  it('gives each new link as it commits, over several written batches, and links it handed out never change', async () => {
    const dir = await tempDir();
    const fs = await FileStorage.open(join(dir, 'live.fs'), { create: true, fsync: false });
    const chain = await HashChain.open(fs, { fsync: false });
    const cursor = chain.cursor();
    const lagging = chain.cursor(); // reads a block at a time, well behind the head
    const seen: Array<{ tid: Buffer; prev: Buffer; link: Buffer }> = [];
    const tids: Buffer[] = [];
    for (let i = 0; i < 2600; i++) {
      const [tid] = await commitMany(fs, 1, 1);
      tids.push(tid!);
      const got = cursor.linksOf([tid!])!;
      seen.push({ tid: tid!, prev: got.prev, link: got.links[0]! });
      await new Promise((r) => setImmediate(r)); // batch writes complete meanwhile, and memory drops what they wrote
      if (i % 700 === 699) {
        const back = tids.slice(i - 650, i - 600);
        expect(lagging.linksOf(back)!.links.map((l) => l.toString('hex'))).toEqual(back.map((t) => chain.hashAt(t)!.toString('hex')));
      }
    }
    await chain.flush();
    seen.forEach((s, i) => {
      expect(s.link.equals(chain.hashAt(s.tid)!)).toBe(true);
      expect(s.prev.equals(i === 0 ? CHAIN_ORIGIN : seen[i - 1]!.link)).toBe(true);
    });
    await chain.close();
    await fs.close();
  });
});

describe('judgeHistory', () => {
  const t = (n: number): Buffer => Buffer.from(n.toString(16).padStart(16, '0'), 'hex');
  const h = (n: number, branch = 'a'): Buffer => Buffer.from(`${branch}${n}`.padEnd(32, '.'));
  // The primary: 1..3 shared, then its generation 1 from 3 with 6, 7.
  const primary = {
    generations: [
      { generation: 0, startTid: Z64 },
      { generation: 1, startTid: t(3) },
    ],
    hashAt: (tid: Buffer) => {
      const n = Number.parseInt(tid.toString('hex'), 16);
      return [1, 2, 3, 6, 7].includes(n) ? h(n) : null;
    },
    lastTid: t(7),
  };

  it('lets a secondary that is behind in an older generation replicate', () => {
    expect(judgeHistory(primary, { startTid: t(2), generations: [{ generation: 0, startTid: Z64 }], chainHead: { tid: t(2), hash: h(2) } })).toEqual({ kind: 'behind' });
  });

  it('finds the fork of an old primary at the new generation start', () => {
    const v = judgeHistory(primary, {
      startTid: t(5),
      generations: [{ generation: 0, startTid: Z64 }],
      chainHead: { tid: t(5), hash: h(5, 'b') },
      chainSamples: [{ tid: t(4), hash: h(4, 'b') }, { tid: t(3), hash: h(3) }, { tid: t(1), hash: h(1) }],
    });
    expect(v).toMatchObject({ kind: 'diverged', forkTid: t(3) });
  });

  it('refuses an unknown generation and equal tids with other contents', () => {
    const unknown = judgeHistory(primary, { startTid: t(2), generations: [{ generation: 0, startTid: Z64 }, { generation: 2, startTid: t(2) }], chainHead: { tid: t(2), hash: h(2) } });
    expect(unknown).toMatchObject({ kind: 'diverged', forkTid: t(2) });
    const other = judgeHistory(primary, { startTid: t(2), generations: [], chainHead: { tid: t(2), hash: h(2, 'x') }, chainSamples: [{ tid: t(1), hash: h(1) }] });
    expect(other).toMatchObject({ kind: 'diverged', forkTid: t(1) });
  });

  it('a secondary claiming a generation it adopted but never reached (it starts after its last tid) is behind, not diverged', () => {
    // The primary: generation 2 from 4 (a node promoted there); the secondary, at 2, adopted another node's generation 1 from 5.
    const promoted = {
      generations: [
        { generation: 0, startTid: Z64 },
        { generation: 2, startTid: t(4) },
      ],
      hashAt: (tid: Buffer) => (Number.parseInt(tid.toString('hex'), 16) <= 4 ? h(Number.parseInt(tid.toString('hex'), 16)) : null),
      lastTid: t(4),
    };
    const claim = { startTid: t(2), generations: [{ generation: 0, startTid: Z64 }, { generation: 1, startTid: t(5) }], chainHead: { tid: t(2), hash: h(2) } };
    expect(judgeHistory(promoted, claim)).toEqual({ kind: 'behind' });
    // Reached (it starts at or before the last tid), the same unknown generation is still another history.
    expect(judgeHistory(promoted, { ...claim, generations: [{ generation: 0, startTid: Z64 }, { generation: 1, startTid: t(2) }] })).toMatchObject({ kind: 'diverged' });
  });

  it('a node with no recorded generation is in generation 0: a downstream that adopted it from its welcome is behind, not diverged', () => {
    // A chain's middle node that has not met its own primary yet welcomes with generation 0 from the start.
    const fresh = { generations: [], hashAt: (tid: Buffer) => (tid.equals(t(1)) ? h(1) : null), lastTid: t(1) };
    expect(judgeHistory(fresh, { startTid: Z64, generations: [{ generation: 0, startTid: Z64 }] })).toEqual({ kind: 'behind' });
    expect(judgeHistory(fresh, { startTid: t(1), generations: [{ generation: 0, startTid: Z64 }], chainHead: { tid: t(1), hash: h(1) } })).toEqual({ kind: 'behind' });
    // Any other generation is still unknown to it.
    expect(judgeHistory(fresh, { startTid: Z64, generations: [{ generation: 1, startTid: Z64 }] })).toMatchObject({ kind: 'diverged' });
  });

  it('a secondary ahead of an upstream secondary that lags is told to wait, unless something proves another history', () => {
    // An upstream that has only 1 (a lagging chain member, no generation recorded yet); the secondary moved behind it holds 1 and 2.
    const lagging = { generations: [], hashAt: (tid: Buffer) => (tid.equals(t(1)) ? h(1) : null), lastTid: t(1), replica: true };
    const gen0 = [{ generation: 0, startTid: Z64 }];
    expect(judgeHistory(lagging, { startTid: t(2), generations: gen0, chainHead: { tid: t(2), hash: h(2) }, chainSamples: [{ tid: t(1), hash: h(1) }] })).toEqual({ kind: 'unknown' });
    // A sample the primary holds otherwise, at or below its last tid: diverged.
    expect(judgeHistory(lagging, { startTid: t(2), generations: gen0, chainHead: { tid: t(2), hash: h(2) }, chainSamples: [{ tid: t(1), hash: h(1, 'x') }] })).toMatchObject({ kind: 'diverged' });
    // An old primary come back ahead of a secondary of the new one (8, after generation 1 began at 3, which it never had): diverged, not told to wait.
    expect(judgeHistory({ ...primary, replica: true }, { startTid: t(8), generations: gen0, chainHead: { tid: t(8), hash: h(8, 'b') }, chainSamples: [{ tid: t(1), hash: h(1) }] })).toMatchObject({ kind: 'diverged', forkTid: t(3) });
    // The same tid from a secondary of the primary's own generations: ahead of an upstream secondary only...
    const ahead = { startTid: t(8), generations: primary.generations, chainHead: { tid: t(8), hash: h(8) }, chainSamples: [{ tid: t(6), hash: h(6) }] };
    expect(judgeHistory({ ...primary, replica: true }, ahead)).toEqual({ kind: 'unknown' });
    // ...but ahead of a primary, whose history grows by its own commits only, another history.
    expect(judgeHistory(primary, ahead)).toMatchObject({ kind: 'diverged' });
    expect(judgeHistory({ ...lagging, replica: false }, { startTid: t(2), generations: gen0, chainHead: { tid: t(2), hash: h(2) } })).toMatchObject({ kind: 'diverged' });
  });

  it('a promotion starts a generation above everything seen', async () => {
    const dir = await tempDir();
    const g = await GenerationHistory.open(join(dir, 'x.fs'));
    await g.replace([{ generation: 0, startTid: Z64 }]);
    await g.noteSeen(4);
    expect(await g.startNext(t(9))).toEqual({ generation: 5, startTid: t(9) });
    const again = await GenerationHistory.open(join(dir, 'x.fs'));
    expect(again.list).toEqual([{ generation: 0, startTid: Z64 }, { generation: 5, startTid: t(9) }]);
    await again.cutFrom(t(9));
    expect(again.list).toEqual([{ generation: 0, startTid: Z64 }]);
    expect(again.maxSeen).toBe(5);
  });
});
