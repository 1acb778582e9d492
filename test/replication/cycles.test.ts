// Secondaries that come and go: a client that disconnects during a long
// catch-up ends its session (the log scan stops), and many connect /
// disconnect cycles leak no file descriptors.

import { join } from 'node:path';
import { firstValueFrom, from, timeout } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { Primary } from '../../src/replication/primary.js';
import { Secondary } from '../../src/replication/secondary.js';
import { PrimarySession } from '../../src/replication/primarySession.js';
import { TransactionCursor } from '../../src/storage/iterator.js';
import { Z64 } from '../../src/storage/timestamp.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { waitForTid } from './helpers.js';
import { FAST_RECONNECT, FramedSocket, LogCollector, openFdCount, sessionClosed, settleUntil, WAIT_MS } from './netHelpers.js';

afterAll(cleanupTempDirs);

const TXNS = 3000;
let primary: Primary;
let logs: LogCollector;
let dir: string;

beforeAll(async () => {
  dir = await tempDir();
  logs = new LogCollector();
  primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, log: logs.log });
  // About 12 MB: far more than loopback socket buffers hold, so the scan must wait for the reader.
  const fs = primary.storage;
  for (let i = 0; i < TXNS; i++) {
    const txn = { description: `txn ${i}` };
    await fs.tpcBegin(txn);
    fs.store(fs.newOid(), Z64, Buffer.alloc(4096, i % 251), txn);
    await fs.tpcVote(txn);
    await fs.tpcFinish(txn);
  }
}, 120_000);

afterAll(async () => {
  await primary.close();
});

describe('secondaries that leave', () => {
  it('a client that disconnects during a long catch-up ends its session', async () => {
    const before = logs.count(sessionClosed);
    // Watch the session's log scan: how far it got, and that it ended.
    let scanned = 0;
    const take = TransactionCursor.prototype.take;
    const takeSpy = vi.spyOn(TransactionCursor.prototype, 'take').mockImplementation(function (this: TransactionCursor, ...args) {
      const txns = take.apply(this, args);
      scanned += txns.length;
      return txns;
    });
    let resolveScanEnded!: () => void;
    const scanEnded = new Promise<void>((resolve) => (resolveScanEnded = resolve));
    const sessionProto = PrimarySession.prototype as unknown as { sendLog: (...args: unknown[]) => Promise<unknown> };
    const sendLog = sessionProto.sendLog;
    const spy = vi.spyOn(sessionProto, 'sendLog').mockImplementation(function (this: unknown, ...args) {
      return sendLog.apply(this, args).finally(resolveScanEnded);
    });
    const c = await FramedSocket.connect(primary.address);
    c.onChunk = (_chunk, index) => {
      if (index === 0) c.destroy();
    };
    c.send(Buffer.from('zrs2.0'));
    c.send(Z64);
    await c.waitClosed();
    const [entry] = (await logs.waitForCount(sessionClosed, before + 1)).slice(before);
    expect(entry!.fields?.reason).toMatch(/peer-closed|transport-error|effect-failed/);
    expect(primary.secondaries()).toEqual([]);
    await firstValueFrom(from(scanEnded).pipe(timeout(WAIT_MS)));
    spy.mockRestore();
    takeSpy.mockRestore();
    expect(scanned).toBeGreaterThan(0);
    expect(scanned).toBeLessThan(TXNS);
    // The primary still serves a whole catch-up to a real secondary afterwards.
    const s = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: primary.address, fsync: false, reconnect: FAST_RECONNECT });
    try {
      await waitForTid(s, primary.storage.lastTransaction(), 60_000);
      expect(s.storage.transactionCount).toBe(TXNS);
    } finally {
      await s.close();
    }
  }, 90_000);

  it('100 connect/disconnect cycles leak no file descriptors', async () => {
    // Warm up once so lazily opened descriptors (e.g. of the log reader) are counted in the baseline.
    const cycle = async (i: number, protocol: string): Promise<void> => {
      const before = logs.count(sessionClosed);
      const c = await FramedSocket.connect(primary.address);
      c.send(Buffer.from(protocol));
      c.send(i % 2 === 0 ? Z64 : primary.storage.lastTransaction());
      if (i % 6 === 0) await c.frame(0); // sometimes after data started flowing
      c.destroy();
      await c.waitClosed();
      await logs.waitForCount(sessionClosed, before + 1);
    };
    await cycle(0, 'zrs2.0');
    await settleUntil(() => primary.secondaries().length === 0);
    const fdsBefore = openFdCount();
    for (let i = 0; i < 100; i++) await cycle(i, i % 2 === 0 ? 'zrs2.0' : 'zrs2.1');
    await settleUntil(() => primary.secondaries().length === 0);
    await settleUntil(() => openFdCount() <= fdsBefore).catch(() => undefined);
    expect(openFdCount()).toBeLessThanOrEqual(fdsBefore);
  }, 90_000);
});
