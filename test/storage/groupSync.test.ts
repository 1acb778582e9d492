// GroupSync: which waiters a sync releases, with two asynchronous syncs
// running at once and ending in either order, and what a failed sync does
// to the waiters and to a sync still running beside it. The disk is a fake
// whose syncs end when the test says.

import { describe, expect, it } from 'vitest';
import type { StorageDisk } from '../../src/storage/disk.js';
import { GroupSync } from '../../src/storage/groupSync.js';

interface HeldSync {
  /** The written end when the sync started: what it covers. */
  covers: number;
  end(): void;
  fail(err: Error): void;
}

function harness(initialEnd = 0) {
  let written = initialEnd;
  const held: HeldSync[] = [];
  const disk: StorageDisk = {
    write() {},
    truncate() {},
    datasync: () => new Promise<void>((resolve, reject) => held.push({ covers: written, end: resolve, fail: reject })),
  };
  const sync = new GroupSync(3, initialEnd, () => written, disk);
  const released: number[] = [];
  const failed: number[] = [];
  const write = (bytes: number): number => (written += bytes);
  const wait = (end: number): Promise<void> =>
    sync.waitDurable(end).then(
      () => void released.push(end),
      () => void failed.push(end),
    );
  return { sync, held, released, failed, write, wait };
}

const settle = (): Promise<void> => new Promise((r) => setImmediate(r));

describe('GroupSync', () => {
  it('starts a second sync for bytes written while one runs, and no third', async () => {
    const h = harness();
    void h.wait(h.write(100));
    expect(h.held.map((s) => s.covers)).toEqual([100]);
    void h.wait(h.write(100));
    expect(h.held.map((s) => s.covers)).toEqual([100, 200]);
    void h.wait(h.write(100));
    expect(h.held).toHaveLength(2);
    // The first ends: the third write gets a sync of its own.
    h.held[0]!.end();
    await settle();
    expect(h.released).toEqual([100]);
    expect(h.held.map((s) => s.covers)).toEqual([100, 200, 300]);
    h.held[1]!.end();
    h.held[2]!.end();
    await settle();
    expect(h.released).toEqual([100, 200, 300]);
    expect(h.sync.durable).toBe(300);
  });

  it('a wait already covered by a running sync starts none', async () => {
    const h = harness();
    const end = h.write(100);
    void h.wait(end);
    void h.wait(end);
    expect(h.held).toHaveLength(1);
    h.held[0]!.end();
    await settle();
    expect(h.released).toEqual([100, 100]);
  });

  it('a later sync that ends first releases what it covers; the earlier one ending after changes nothing', async () => {
    const h = harness(50);
    void h.wait(h.write(100));
    void h.wait(h.write(100));
    h.held[1]!.end();
    await settle();
    expect(h.released).toEqual([150, 250]);
    expect(h.sync.durable).toBe(250);
    h.held[0]!.end();
    await settle();
    expect(h.sync.durable).toBe(250);
    expect(h.held).toHaveLength(2);
  });

  it('a failed sync fails every waiter, and a sync ending after it releases nothing', async () => {
    const h = harness();
    void h.wait(h.write(100));
    void h.wait(h.write(100));
    h.held[0]!.fail(Object.assign(new Error('EIO'), { code: 'EIO' }));
    await settle();
    expect(h.failed).toEqual([100, 200]);
    h.held[1]!.end();
    await settle();
    expect(h.released).toEqual([]);
    expect(h.sync.durable).toBe(0);
    // Later waits fail at once, with no sync started for them.
    await h.wait(h.write(100));
    expect(h.failed).toEqual([100, 200, 300]);
    expect(h.held).toHaveLength(2);
  });
});
