// Closing a secondary in every phase of its connection: connecting, waiting
// to reconnect, connected between transactions, and in the middle of a
// transaction. close() resolves, the file holds its last complete
// transaction byte for byte, the lock can be taken again and no socket or
// timer is left behind.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { filter, firstValueFrom, from, timeout } from 'rxjs';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { Primary } from '../../src/replication/primary.js';
import { nativeOutbound } from '../../src/replication/protocols.js';
import { Secondary } from '../../src/replication/secondary.js';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { nodeDisk, type StorageDisk } from '../../src/storage/disk.js';
import { VirtualClock } from '../../src/sim/clock.js';
import { createNativeUnpackr, decodeNative } from '../../src/wire/native.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { allTransactions, commitMany, waitForTid } from './helpers.js';
import { activeResources, FakeServer, LogCollector, NOWHERE, settleUntil, WAIT_MS } from './netHelpers.js';
import { socketTransport } from '../../src/node/socketTransport.js';
import type { ByteStream, Transport } from '../../src/ports/transport.js';
import { KEEP_ALIVE_FRAME } from '../../src/wire/framing.js';

afterAll(cleanupTempDirs);
afterEach(() => {
  vi.restoreAllMocks();
});

const HANDLES = ['TCPSocketWrap', 'TCPServerWrap', 'Timeout'] as const;

/** Resolves once no more sockets, servers or timers are alive than at `baseline`. */
async function expectHandlesBackTo(baseline: Record<string, number>): Promise<void> {
  const excess = (): string[] => HANDLES.filter((h) => (activeResources()[h] ?? 0) > (baseline[h] ?? 0));
  await settleUntil(() => excess().length === 0).catch(() => {
    throw new Error(`handles left: ${excess().join(', ')} (${JSON.stringify(activeResources())} vs ${JSON.stringify(baseline)})`);
  });
}

/** close() resolves within the bound, the lock can be taken again and the file is `expected`. */
async function closeAndCheck(secondary: Secondary, path: string, expected: Buffer): Promise<void> {
  await Promise.race([
    secondary.close(),
    new Promise((_r, reject) => setTimeout(() => reject(new Error('close() did not resolve')), WAIT_MS).unref()),
  ]);
  expect(readFileSync(path).equals(expected)).toBe(true);
  const reopened = await FileStorage.open(path, { fsync: false });
  await reopened.close();
}

function stateOf(secondary: Secondary): string {
  const v = secondary.machine.getSnapshot().value;
  return typeof v === 'string' ? v : Object.keys(v)[0]!;
}

describe('closing a secondary', () => {
  it('while connecting to an address with no listener', async () => {
    const baseline = activeResources();
    const dir = await tempDir();
    const path = join(dir, 's.fs');
    const secondary = await Secondary.open({ path, replicateFrom: NOWHERE, fsync: false, reconnect: { initialMs: 5, maxMs: 50 } });
    expect(['connecting', 'backoff']).toContain(stateOf(secondary));
    await closeAndCheck(secondary, path, readFileSync(path));
    expect(stateOf(secondary)).toBe('closed');
    await expectHandlesBackTo(baseline);
  });

  it('just after its connection is made, before the connection actor hears of it: the socket is closed too', async () => {
    const baseline = activeResources();
    const dir = await tempDir();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, auditPath: null });
    const path = join(dir, 's.fs');
    let secondary: Secondary | null = null;
    let closing: Promise<void> | null = null;
    const made: { destroyed: boolean }[] = [];
    const transport: Transport = {
      listen: socketTransport.listen,
      connect: async (address, signal) => {
        const stream = await socketTransport.connect(address, signal);
        const seen = { destroyed: false };
        made.push(seen);
        const destroy = stream.destroy.bind(stream);
        stream.destroy = (error?: Error) => {
          seen.destroyed = true;
          destroy(error);
        };
        // close() lands after the connect step has its stream, before the machine hears of it.
        queueMicrotask(() => queueMicrotask(() => (closing = secondary!.close())));
        return stream;
      },
    };
    secondary = await Secondary.open({ path, replicateFrom: primary.address, transport, fsync: false, auditPath: null });
    await settleUntil(() => closing !== null);
    await closing;
    expect(made).toEqual([{ destroyed: true }]);
    await primary.close();
    await expectHandlesBackTo(baseline);
  });

  it('while waiting to reconnect', async () => {
    const baseline = activeResources();
    const dir = await tempDir();
    const path = join(dir, 's.fs');
    const secondary = await Secondary.open({ path, replicateFrom: NOWHERE, fsync: false, reconnect: { initialMs: 60_000, maxMs: 60_000 } });
    if (stateOf(secondary) !== 'backoff') await firstValueFrom(secondary.status$.pipe(filter((s) => s.kind === 'backoff'), timeout(WAIT_MS)));
    expect(secondary.machine.getSnapshot().context.nextRetryDelayMs).toBeGreaterThan(1000);
    await closeAndCheck(secondary, path, readFileSync(path));
    await expectHandlesBackTo(baseline);
  });

  it('connected, between transactions', async () => {
    const baseline = activeResources();
    const dir = await tempDir();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false });
    const path = join(dir, 's.fs');
    const tids = await commitMany(primary.storage, 10);
    const secondary = await Secondary.open({ path, replicateFrom: primary.address, fsync: false, reconnect: { initialMs: 5, maxMs: 50 } });
    await waitForTid(secondary, tids.at(-1)!);
    expect(stateOf(secondary)).toBe('connected');
    const before = readFileSync(path);
    await closeAndCheck(secondary, path, before);
    expect(before.equals(readFileSync(join(dir, 'p.fs')))).toBe(true);
    // The primary sees its secondary go.
    await settleUntil(() => primary.secondaries().length === 0);
    await primary.close();
    await expectHandlesBackTo(baseline);
  });

  it('connected, in the middle of a transaction', async () => {
    const baseline = activeResources();
    const dir = await tempDir();
    const source = await FileStorage.open(join(dir, 'source.fs'), { create: true, fsync: false });
    await commitMany(source, 2, 4);
    const [t1, t2] = await allTransactions(source);
    const fake = await FakeServer.start((c) => {
      void (async () => {
        const hello = decodeNative(await c.frame(1), createNativeUnpackr(), 'secondary');
        if (hello.type !== 'hello') throw new Error('expected hello');
        const codec = nativeOutbound(source, hello.startTid, { blobs: false });
        c.sendRaw(codec.welcome(source.lastTransaction())!);
        for (const f of codec.plainFrames(t1!)!) c.sendRaw(f);
        // Every frame of t2 but its commit.
        for (const f of codec.plainFrames(t2!)!.slice(0, -1)) c.sendRaw(f);
      })();
    });
    // The secondary began t2 (and restored what it could): an event, not a sleep.
    const began = new Promise<void>((resolve) => {
      const original = FileStorage.prototype.tpcBegin;
      vi.spyOn(FileStorage.prototype, 'tpcBegin').mockImplementation(async function (this: FileStorage, ...args) {
        await original.apply(this, args);
        if (args[1]?.tid?.equals(t2!.tid)) resolve();
      });
    });
    const path = join(dir, 's.fs');
    const secondary = await Secondary.open({ path, replicateFrom: fake.address, fsync: false, reconnect: { initialMs: 5, maxMs: 50 } });
    await waitForTid(secondary, t1!.tid);
    await firstValueFrom(from(began).pipe(timeout(WAIT_MS)));
    const before = readFileSync(path);
    expect(before.equals(readFileSync(join(dir, 'source.fs')).subarray(0, t2!.pos))).toBe(true);
    await closeAndCheck(secondary, path, before);
    await fake.close();
    await source.close();
    await expectHandlesBackTo(baseline);
  });

  it('after its connection actor failed (an action threw): the connection is dropped, nothing more is applied, close() ends', async () => {
    const baseline = activeResources();
    const dir = await tempDir();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, auditPath: null });
    const path = join(dir, 's.fs');
    const tids = await commitMany(primary.storage, 3);
    // A stream whose keep-alive write throws once armed (as a broken transport might): the machine's action fails.
    let armed = false;
    const transport: Transport = {
      listen: (address, onStream) => socketTransport.listen(address, onStream),
      connect: async (address) => {
        const stream = await socketTransport.connect(address);
        const wrapped: ByteStream = {
          write: (chunk) => {
            if (armed && Buffer.from(chunk).equals(KEEP_ALIVE_FRAME)) throw new Error('keep-alive write exploded');
            return stream.write(chunk);
          },
          pause: () => stream.pause(),
          resume: () => stream.resume(),
          end: () => stream.end(),
          destroy: (error) => stream.destroy(error),
          setHandlers: (handlers) => stream.setHandlers(handlers),
          peer: stream.peer,
        };
        return wrapped;
      },
    };
    const logs = new LogCollector();
    const secondary = await Secondary.open({ path, replicateFrom: primary.address, fsync: false, auditPath: null, transport, keepAliveDelayMs: 1, log: logs.log, reconnect: { initialMs: 5, maxMs: 50 } });
    await waitForTid(secondary, tids.at(-1)!);
    armed = true;
    const failed = await logs.waitFor((e) => e.message.includes('the connection actor failed'));
    expect(failed.message).toMatch(/keep-alive write exploded/);
    // The primary sees the connection go: nothing keeps feeding a storage no machine follows.
    await settleUntil(() => primary.secondaries().length === 0);
    const before = readFileSync(path);
    await commitMany(primary.storage, 2);
    await closeAndCheck(secondary, path, before);
    await primary.close();
    await expectHandlesBackTo(baseline);
  });

  it('a close whose abort outlasts the close timeout (a stalled disk) still waits for it before closing the storage', async () => {
    const dir = await tempDir();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, auditPath: null });
    const clock = new VirtualClock(Date.now());
    // Once `hang` is set, every sync of the secondary's files waits until the test releases it.
    let hang = false;
    const held: Array<() => void> = [];
    const disk: StorageDisk = {
      ...nodeDisk,
      datasyncSync: undefined,
      datasync: (fd) => (hang ? new Promise<void>((resolve) => held.push(resolve)) : nodeDisk.datasync(fd)),
    };
    const [first] = await commitMany(primary.storage, 1);
    const secondary = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: primary.address, fsync: true, disk, clock, auditPath: null });
    try {
      await waitForTid(secondary, first!);
      hang = true;
      await commitMany(primary.storage, 1);
      await settleUntil(() => held.length > 0); // the second transaction is written, its sync stalled
      const closing = secondary.close();
      // The machine gives up on the abort after its close timeout (10 s, virtual here).
      await settleUntil(() => secondary.machine.getSnapshot().value === 'closing');
      clock.advance(10_001);
      await settleUntil(() => secondary.machine.getSnapshot().status !== 'active');
      for (let turn = 0; turn < 200; turn++) await new Promise((r) => setImmediate(r));
      // The storage is still open: close() waits for the abort, which waits for the stalled sync.
      const state = await secondary.storage.load(Buffer.alloc(8)).then(
        () => 'open',
        (err: Error) => (err.name === 'StorageClosedError' ? 'closed' : 'open'),
      );
      expect(state).toBe('open');
      hang = false;
      for (const release of held.splice(0)) release();
      await closing;
      const reopened = await FileStorage.open(join(dir, 's.fs'), { readOnly: true });
      expect(reopened.lastTransaction().equals(primary.storage.lastTransaction())).toBe(true);
      await reopened.close();
    } finally {
      hang = false;
      for (const release of held.splice(0)) release();
      await secondary.close();
      await primary.close();
    }
  });
});

