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
  /** The descriptor it synced. */
  fd: number;
  end(): void;
  fail(err: Error): void;
}

function harness(initialEnd = 0) {
  let written = initialEnd;
  const held: HeldSync[] = [];
  const disk: StorageDisk = {
    write() {},
    truncate() {},
    datasync: (fd) => new Promise<void>((resolve, reject) => held.push({ covers: written, fd, end: resolve, fail: reject })),
  };
  // The file is descriptor 3; a second descriptor of it is 4, opened when first needed.
  const descriptors = { opened: 0, closed: [] as number[] };
  const second = { open: () => (descriptors.opened++, 4), close: (fd: number) => void descriptors.closed.push(fd) };
  const sync = new GroupSync(3, initialEnd, () => written, disk, second);
  const released: number[] = [];
  const failed: number[] = [];
  const write = (bytes: number): number => (written += bytes);
  const wait = (end: number): Promise<void> =>
    sync.waitDurable(end).then(
      () => void released.push(end),
      () => void failed.push(end),
    );
  return { sync, held, released, failed, write, wait, descriptors };
}

const settle = (): Promise<void> => new Promise((r) => setImmediate(r));

describe('GroupSync', () => {
  it('starts a second sync for bytes written while one runs, and no third', async () => {
    const h = harness();
    void h.wait(h.write(100));
    expect(h.held.map((s) => s.covers)).toEqual([100]);
    expect(h.descriptors.opened).toBe(0);
    void h.wait(h.write(100));
    expect(h.held.map((s) => s.covers)).toEqual([100, 200]);
    // The two never share a descriptor (a write-back error is reported once per open file).
    expect(h.held.map((s) => s.fd)).toEqual([3, 4]);
    void h.wait(h.write(100));
    expect(h.held).toHaveLength(2);
    // The first ends: the third write gets a sync of its own.
    h.held[0]!.end();
    await settle();
    expect(h.released).toEqual([100]);
    expect(h.held.map((s) => s.covers)).toEqual([100, 200, 300]);
    expect(h.held.map((s) => s.fd)).toEqual([3, 4, 3]);
    expect(h.descriptors.opened).toBe(1);
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

  it('close() waits for the syncs still running, then closes the second descriptor', async () => {
    const h = harness();
    void h.wait(h.write(100));
    void h.wait(h.write(100));
    // The later sync ends first: everything is durable, the earlier sync still runs.
    h.held[1]!.end();
    await settle();
    expect(h.sync.durable).toBe(200);
    let closed = false;
    const closing = h.sync.close().then(() => (closed = true));
    await settle();
    expect(closed).toBe(false);
    expect(h.descriptors.closed).toEqual([]);
    h.held[0]!.end();
    await closing;
    expect(h.descriptors.closed).toEqual([4]);
  });

  it('without a second descriptor, syncs run one at a time', async () => {
    let written = 0;
    const held: Array<() => void> = [];
    const disk: StorageDisk = { write() {}, truncate() {}, datasync: () => new Promise<void>((resolve) => held.push(resolve)) };
    const sync = new GroupSync(3, 0, () => written, disk);
    void sync.waitDurable((written += 100));
    void sync.waitDurable((written += 100));
    expect(held).toHaveLength(1);
    held[0]!();
    await settle();
    expect(held).toHaveLength(2);
    held[1]!();
    await settle();
    expect(sync.durable).toBe(200);
  });
});

