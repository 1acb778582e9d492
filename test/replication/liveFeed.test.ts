// The live feed: one subscription to a storage's commits serves every
// listener; commits made in one burst arrive as one batch, parsed once and
// shared; a busy loop's ticks wait on the pacer's clock; the last listener
// leaving ends the subscription; a closing storage delivers what is pending
// and then completes everyone; a tick carries a bounded number of commits,
// and listeners hear they fell behind when too many wait.

import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { DEFAULT_LIVE_FEED_LIMITS, LiveFeed, type LiveCommit, type LiveFeedLimits } from '../../src/replication/liveFeed.js';
import { SendPacer } from '../../src/replication/sendPacer.js';
import { VirtualClock } from '../../src/sim/clock.js';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { Z64 } from '../../src/storage/timestamp.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { meteredClock, progressing } from './pacingHelpers.js';

afterAll(cleanupTempDirs);

async function openStorage(): Promise<FileStorage> {
  return FileStorage.open(join(await tempDir(), 'feed.fs'), { create: true, fsync: false });
}

/** A fresh storage and its feed on a virtual clock (nothing paced), with two listeners subscribed. */
async function twoListeners() {
  const fs = await openStorage();
  const clock = new VirtualClock();
  const feed = new LiveFeed(fs, clock, new SendPacer(clock));
  const a = new Recorder();
  const b = new Recorder();
  return { fs, feed, a, b, stopA: feed.subscribe(a), stopB: feed.subscribe(b) };
}

/** Commit `n` one-record transactions; resolves with their tids. */
async function commit(fs: FileStorage, n: number): Promise<Buffer[]> {
  const tids: Buffer[] = [];
  for (let i = 0; i < n; i++) {
    const txn = { description: `t${i}` };
    await fs.tpcBegin(txn);
    fs.store(fs.newOid(), Z64, Buffer.from(`data ${i}`), txn);
    await fs.tpcVote(txn);
    tids.push(await fs.tpcFinish(txn));
  }
  return tids;
}

const nextTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/** A pacer that has judged the loop busy (two busy windows) and just timed a send step of `stepMs`: the next may start 10 times that after it started. */
function busyPacer(stepMs: number) {
  const { clock, virtual, setBusy } = meteredClock();
  setBusy(1);
  const pacer = new SendPacer(clock, 0.1, progressing());
  for (let i = 0; i < 2; i++) {
    virtual.advance(25);
    pacer.delayMs();
  }
  pacer.step(() => virtual.advance(stepMs));
  return { clock, virtual, pacer };
}

/** A fresh storage and its feed, paced by a busyPacer(stepMs). */
async function pacedFeed(stepMs: number, limits: Partial<LiveFeedLimits> = {}) {
  const fs = await openStorage();
  const { clock, virtual, pacer } = busyPacer(stepMs);
  return { fs, virtual, feed: new LiveFeed(fs, clock, pacer, { ...DEFAULT_LIVE_FEED_LIMITS, ...limits }) };
}

class Recorder {
  batches: (readonly LiveCommit[])[] = [];
  completed = false;
  behind = 0;
  next = (commits: readonly LiveCommit[]): void => void this.batches.push(commits);
  fellBehind = (): void => void (this.behind += 1);
  complete = (): void => void (this.completed = true);
  get tids(): string[] {
    return this.batches.flat().map((c) => c.committed.tid.toString('hex'));
  }
}

describe('LiveFeed', () => {
  it('hands a burst of commits to every listener as one batch, parsed once', async () => {
    const { fs, feed, a, b, stopA, stopB } = await twoListeners();
    try {
      const tids = await commit(fs, 3); // no turn of the loop between them
      expect(a.batches).toEqual([]);
      await nextTurn();
      expect(a.batches.length).toBe(1);
      expect(b.batches[0]).toBe(a.batches[0]); // the same parsed transactions, not a copy each
      expect(a.tids).toEqual(tids.map((t) => t.toString('hex')));
      for (const c of a.batches[0]!) {
        expect(c.txn?.tid.equals(c.committed.tid)).toBe(true);
        expect(c.txn?.raw?.equals(c.committed.raw!)).toBe(true);
        expect(c.txn?.records.length).toBe(1);
      }
      expect(feed.ticks).toBe(1);
    } finally {
      stopA();
      stopB();
      await fs.close();
    }
    expect(a.completed).toBe(false); // they had left before the storage closed
  });

  it('stops listening to the storage when the last listener leaves', async () => {
    const { fs, feed, a, b, stopA, stopB } = await twoListeners();
    stopA();
    await commit(fs, 1);
    await nextTurn();
    expect(a.batches).toEqual([]);
    expect(b.batches.length).toBe(1);
    stopB();
    await commit(fs, 2); // pending for nobody: no tick
    await nextTurn();
    expect(feed.ticks).toBe(1);
    const c = new Recorder();
    feed.subscribe(c);
    const [tid] = await commit(fs, 1);
    await nextTurn();
    expect(c.tids).toEqual([tid!.toString('hex')]);
    await fs.close();
    expect(c.completed).toBe(true);
  });

  it('delivers what is pending when the storage closes, then completes; a late listener completes at once', async () => {
    const fs = await openStorage();
    const clock = new VirtualClock();
    const feed = new LiveFeed(fs, clock, new SendPacer(clock));
    const a = new Recorder();
    feed.subscribe(a);
    const tids = await commit(fs, 2);
    await fs.close(); // before the tick
    expect(a.tids).toEqual(tids.map((t) => t.toString('hex')));
    expect(a.completed).toBe(true);
    const late = new Recorder();
    feed.subscribe(late);
    expect(late.completed).toBe(true);
  });

  it('delivers at close what still waits on the clock for its turn', async () => {
    const { fs, virtual, feed } = await pacedFeed(2);
    const a = new Recorder();
    feed.subscribe(a);
    const tids = await commit(fs, 2);
    await nextTurn();
    expect(a.batches).toEqual([]);
    expect(virtual.pendingTimers).toBe(1);
    await fs.close(); // the clock never moves: the tick would never come
    expect(a.tids).toEqual(tids.map((t) => t.toString('hex')));
    expect(a.completed).toBe(true);
  });

  it('waits on the clock for its turn while the loop is busy', async () => {
    const { fs, virtual, feed } = await pacedFeed(2); // the next step may start 20 ms after the last one started
    const a = new Recorder();
    const stop = feed.subscribe(a);
    try {
      const tids = await commit(fs, 2);
      await nextTurn();
      expect(a.batches).toEqual([]);
      expect(virtual.pendingTimers).toBe(1);
      virtual.advance(17);
      expect(a.batches).toEqual([]);
      virtual.advance(1);
      expect(a.tids).toEqual(tids.map((t) => t.toString('hex')));
    } finally {
      stop();
      await fs.close();
    }
    expect(virtual.pendingTimers).toBe(0);
  });

  it('carries at most `tickCommits` per tick, the rest in the ticks that follow', async () => {
    const { fs, virtual, feed } = await pacedFeed(1, { tickCommits: 4 });
    const a = new Recorder();
    const stop = feed.subscribe(a);
    try {
      const tids = await commit(fs, 10);
      await nextTurn();
      expect(a.batches).toEqual([]); // paced: the first tick waits on the clock
      for (let i = 0; i < 10 && a.tids.length < tids.length; i++) {
        virtual.advance(100);
        await nextTurn();
      }
      expect(a.batches.map((b) => b.length)).toEqual([4, 4, 2]);
      expect(a.tids).toEqual(tids.map((t) => t.toString('hex')));
      expect(a.behind).toBe(0);
    } finally {
      stop();
      await fs.close();
    }
    expect(virtual.pendingTimers).toBe(0);
  });

  it('tells every listener it fell behind when more than `pendingCommits` wait, and drops them', async () => {
    const { fs, virtual, feed } = await pacedFeed(1, { pendingCommits: 8 });
    const a = new Recorder();
    const b = new Recorder();
    const stopA = feed.subscribe(a);
    const stopB = feed.subscribe(b);
    try {
      await commit(fs, 8);
      expect([a.behind, b.behind]).toEqual([0, 0]);
      await commit(fs, 1);
      expect([a.behind, b.behind]).toEqual([1, 1]);
      expect(virtual.pendingTimers).toBe(0); // nothing left to tick for
      stopA(); // a listener that stays gets the commits that follow
      const [later] = await commit(fs, 1);
      virtual.advance(100);
      await nextTurn();
      expect(a.batches).toEqual([]);
      expect(b.tids).toEqual([later!.toString('hex')]);
    } finally {
      stopA();
      stopB();
      await fs.close();
    }
  });

  it('tells listeners they fell behind when the waiting commits hold more than `pendingBytes`, however few', async () => {
    const { fs, feed } = await pacedFeed(1, { pendingBytes: 1000 });
    const a = new Recorder();
    const stop = feed.subscribe(a);
    try {
      // No tick runs (paced): what waits is everything committed since the start, its bytes the file's growth.
      const start = fs.getSize();
      let before = 0;
      let commits = 0;
      while (a.behind === 0) {
        before = fs.getSize() - start;
        await commit(fs, 1);
        commits += 1;
      }
      expect(before).toBeLessThanOrEqual(1000); // without the last commit, it fit
      expect(fs.getSize() - start).toBeGreaterThan(1000);
      expect(commits).toBeLessThan(DEFAULT_LIVE_FEED_LIMITS.pendingCommits);
      expect(a.batches).toEqual([]);
    } finally {
      stop();
      await fs.close();
    }
  });
});
