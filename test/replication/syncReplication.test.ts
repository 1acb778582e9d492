// Synchronous replication over loopback: a Primary with syncReplicas reports
// a commit only once enough native secondaries acknowledged it as durable;
// without them the wait fails with SyncReplicationTimeoutError (driven by the
// injected clock) while the transaction stays committed on the primary.

import { join } from 'node:path';
import { filter, firstValueFrom, ReplaySubject, timeout } from 'rxjs';
import { afterAll, describe, expect, it } from 'vitest';
import { readAuditLog } from '../../src/audit/auditLog.js';
import { SyncReplicationTimeoutError } from '../../src/errors.js';
import type { Clock } from '../../src/ports/clock.js';
import { Primary } from '../../src/replication/primary.js';
import { Secondary } from '../../src/replication/secondary.js';
import { VirtualClock } from '../../src/sim/clock.js';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { commitMany, waitForTid, Z64 } from './helpers.js';
import { FramedSocket, LogCollector, sessionClosed, settleUntil, WAIT_MS } from './netHelpers.js';
import { createNativePackr, encodeNative, nativeProtocolName } from '../../src/wire/native.js';

afterAll(cleanupTempDirs);

/** A virtual clock that also reports each timer's delay as it is set. */
function observedClock(): { clock: Clock; virtual: VirtualClock; timers: ReplaySubject<number> } {
  const virtual = new VirtualClock();
  const timers = new ReplaySubject<number>();
  const clock: Clock = {
    now: () => virtual.now(),
    setTimeout: (fn, ms) => {
      const handle = virtual.setTimeout(fn, ms);
      timers.next(ms);
      return handle;
    },
    clearTimeout: (h) => virtual.clearTimeout(h),
  };
  return { clock, virtual, timers };
}

async function onDisk(path: string): Promise<Buffer> {
  const fs = await FileStorage.open(path, { readOnly: true });
  try {
    return fs.lastTransaction();
  } finally {
    await fs.close();
  }
}

describe('syncReplicas', () => {
  it('resolves tpcFinish only once the native secondary has the transaction durably', async () => {
    const dir = await tempDir();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, syncReplicas: 1, syncTimeoutMs: WAIT_MS });
    const sPath = join(dir, 's.fs');
    const secondary = await Secondary.open({ path: sPath, replicateFrom: primary.address, fsync: true });
    try {
      for (let i = 0; i < 3; i++) {
        const txn = { user: 'sync', description: `txn ${i}` };
        await primary.storage.tpcBegin(txn);
        primary.storage.store(primary.storage.newOid(), Z64, Buffer.from(`value ${i}`), txn);
        await primary.storage.tpcVote(txn);
        const seen = await primary.storage.tpcFinish(txn).then(async (tid) => ({
          tid,
          secondaryLast: secondary.storage.lastTransaction(),
          onDisk: await onDisk(sPath),
        }));
        expect(seen.secondaryLast.equals(seen.tid)).toBe(true);
        expect(seen.onDisk.equals(seen.tid)).toBe(true);
      }
      const [status] = primary.secondaries();
      expect(status).toMatchObject({ acks: true, lagMs: 0, protocol: 'zrs-ts/1' });
      expect(status!.ackedTid!.equals(primary.storage.lastTransaction())).toBe(true);
      expect(status!.lastAckLatencyMs).toBeGreaterThanOrEqual(0);
      // The local storage never waits: commits through it go on without acks.
      expect(primary.localStorage).not.toBe(primary.storage);
      expect(primary.localStorage).toBeInstanceOf(FileStorage);
    } finally {
      await secondary.close();
      await primary.close();
    }
  });

  it('fails with SyncReplicationTimeoutError after syncTimeoutMs of the clock when the secondary is stopped; the commit stays', async () => {
    const dir = await tempDir();
    const { clock, virtual, timers } = observedClock();
    const logs = new LogCollector();
    const SYNC_TIMEOUT_MS = 7_777;
    const primary = await Primary.open({
      path: join(dir, 'p.fs'),
      replicateTo: '127.0.0.1:0',
      fsync: false,
      syncReplicas: 1,
      syncTimeoutMs: SYNC_TIMEOUT_MS,
      clock,
      log: logs.log,
    });
    try {
      const secondary = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: primary.address, fsync: false });
      const [first] = await commitMany(primary.localStorage, 1);
      await waitForTid(secondary, first!);
      await secondary.close();
      await logs.waitFor(sessionClosed);
      expect(primary.secondaries()).toEqual([]);

      const txn = { user: 'sync', description: 'unreplicated' };
      const oid = primary.storage.newOid();
      await primary.storage.tpcBegin(txn);
      primary.storage.store(oid, Z64, Buffer.from('kept'), txn);
      await primary.storage.tpcVote(txn);
      let settled = false;
      const finishing = primary.storage.tpcFinish(txn).finally(() => (settled = true));
      finishing.catch(() => undefined);
      await firstValueFrom(timers.pipe(filter((ms) => ms === SYNC_TIMEOUT_MS), timeout(WAIT_MS)));
      expect(settled).toBe(false);
      virtual.advance(SYNC_TIMEOUT_MS - 1);
      expect(settled).toBe(false);
      virtual.advance(1);
      const err = (await finishing.catch((e: unknown) => e)) as SyncReplicationTimeoutError;
      expect(err).toBeInstanceOf(SyncReplicationTimeoutError);
      expect(err).toMatchObject({ name: 'SyncReplicationTimeoutError', wanted: 1, got: 0, timeoutMs: SYNC_TIMEOUT_MS });
      // Committed locally all the same, and the event is logged and audited (on disk before the rejection).
      expect(primary.localStorage.lastTransaction().equals(err.tid)).toBe(true);
      expect((await primary.storage.load(oid)).data.toString()).toBe('kept');
      expect(logs.count((e) => e.level === 'warn' && e.message.includes('acknowledged') && e.fields?.tid === err.tid.toString('hex'))).toBe(1);
      const audit = await readAuditLog(join(dir, 'p.fs.audit'));
      expect(audit.damage).toBeNull();
      expect(audit.records.filter((r) => r.kind === 'sync-timeout').map((r) => r.details)).toEqual([
        { tid: err.tid.toString('hex'), wanted: 1, got: 0, timeoutMs: SYNC_TIMEOUT_MS, connected: 0 },
      ]);
    } finally {
      await primary.close();
    }
  });
});

describe('syncReplicas and a transaction that stores nothing', () => {
  it('resolves its tpcFinish at once: it wrote nothing, so there is nothing to acknowledge', async () => {
    const dir = await tempDir();
    const { clock, timers } = observedClock();
    const armed: number[] = [];
    const watch = timers.subscribe((ms) => armed.push(ms));
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, syncReplicas: 1, syncTimeoutMs: 7_777, clock });
    try {
      const txn = { description: 'nothing stored' };
      await primary.storage.tpcBegin(txn);
      await primary.storage.tpcVote(txn);
      // No secondary will ever acknowledge: a wait would last the whole (virtual, never advanced) timeout.
      const tid = await Promise.race([
        primary.storage.tpcFinish(txn),
        new Promise<never>((_, reject) => setTimeout(() => reject(new Error('tpcFinish waited for acknowledgements')), WAIT_MS)),
      ]);
      expect(tid.equals(Z64)).toBe(false);
      expect(primary.localStorage.lastTransaction().equals(Z64)).toBe(true);
      expect(armed).not.toContain(7_777);
    } finally {
      watch.unsubscribe();
      await primary.close();
    }
  });
});

describe('waitForReplication', () => {
  it('waits for two native secondaries, and times out wanting three', async () => {
    const dir = await tempDir();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false });
    const secondaries = await Promise.all(
      ['a', 'b'].map((n) => Secondary.open({ path: join(dir, `${n}.fs`), replicateFrom: primary.address, fsync: false })),
    );
    try {
      const [tid] = await commitMany(primary.storage, 1);
      const confirmation = await primary.waitForReplication(tid!, { replicas: 2, timeoutMs: WAIT_MS }).then((c) => ({
        ...c,
        lasts: secondaries.map((s) => s.storage.lastTransaction()),
      }));
      expect(confirmation.peers).toHaveLength(2);
      for (const last of confirmation.lasts) expect(last.equals(tid!)).toBe(true);
      expect(primary.secondaries().map((s) => s.acks)).toEqual([true, true]);

      // Already satisfied: resolves at once.
      await expect(primary.waitForReplication(tid!, { replicas: 2, timeoutMs: 1 })).resolves.toMatchObject({ waitedMs: 0 });
      // A short real timeout (the default clock): only two of three.
      const err = await primary.waitForReplication(tid!, { replicas: 3, timeoutMs: 50 }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(SyncReplicationTimeoutError);
      expect(err).toMatchObject({ wanted: 3, got: 2, timeoutMs: 50 });
    } finally {
      for (const s of secondaries) await s.close();
      await primary.close();
    }
  });

  it('lists and counts as connected secondaries only sessions past their handshake', async () => {
    const dir = await tempDir();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false });
    const peer = await FramedSocket.connect(primary.address);
    try {
      peer.send(nativeProtocolName()); // and no hello: not a secondary (yet)
      await settleUntil(() => primary.status().sessions.length === 1);
      expect(primary.secondaries()).toEqual([]);
      const [tid] = await commitMany(primary.localStorage, 1);
      await expect(primary.waitForReplication(tid!, { replicas: 1, timeoutMs: 50 })).rejects.toBeInstanceOf(SyncReplicationTimeoutError);
      const record = (await readAuditLog(join(dir, 'p.fs.audit'))).records.find((r) => r.kind === 'sync-timeout');
      expect(record?.details).toMatchObject({ wanted: 1, got: 0, connected: 0 });
    } finally {
      peer.destroy();
      await primary.close();
    }
  });

  it('keeps the send times of a secondary that stops acknowledging in 8 bytes a tid, not a pooled 8 KiB slab each', async () => {
    const dir = await tempDir();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, auditPath: null });
    const peer = await FramedSocket.connect(primary.address);
    try {
      peer.send(nativeProtocolName());
      peer.send(encodeNative({ type: 'hello', startTid: Z64, generations: [], options: { blobs: false } }, createNativePackr()));
      await settleUntil(() => primary.secondaries().length === 1);
      for (let i = 0; i < 50; i++) await commitMany(primary.storage, 1);
      await settleUntil(() => primary.secondaries()[0]!.lastSentTid?.equals(primary.storage.lastTransaction()) === true);
      const tracked = [...(primary as unknown as { sync: { tracker: { tracked: Map<unknown, { sent: Array<{ tid: unknown }> }> } } }).sync.tracker.tracked.values()];
      const sent = tracked.flatMap((t) => t.sent);
      expect(sent.length).toBeGreaterThan(10);
      // No entry holds on to memory beyond its 8 bytes (a pooled Buffer view would keep an 8 KiB slab).
      expect(sent.every((e) => !Buffer.isBuffer(e.tid) || e.tid.buffer.byteLength === 8)).toBe(true);
    } finally {
      peer.destroy();
      await primary.close();
    }
  });

  it('never counts a zrs2 secondary, which does not acknowledge', async () => {
    const dir = await tempDir();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false });
    const secondary = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: primary.address, protocol: 'zrs2.0', fsync: false });
    try {
      const [tid] = await commitMany(primary.storage, 1);
      await waitForTid(secondary, tid!);
      expect(primary.secondaries()).toMatchObject([{ protocol: 'zrs2.0', acks: false, lagMs: null, ackedTid: null }]);
      const err = await primary.waitForReplication(tid!, { replicas: 1, timeoutMs: 50 }).catch((e: unknown) => e);
      expect(err).toMatchObject({ name: 'SyncReplicationTimeoutError', wanted: 1, got: 0 });
    } finally {
      await secondary.close();
      await primary.close();
    }
  });

  it('confirms a synchronous commit its secondary acknowledges while the closing primary drains', async () => {
    const dir = await tempDir();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, syncReplicas: 1, syncTimeoutMs: WAIT_MS });
    const sPath = join(dir, 's.fs');
    const secondary = await Secondary.open({ path: sPath, replicateFrom: primary.address, fsync: false });
    try {
      await waitForTid(secondary, (await commitMany(primary.storage, 1))[0]!);
      const txn = { user: 'sync', description: 'finished as the primary closes' };
      await primary.storage.tpcBegin(txn);
      primary.storage.store(primary.storage.newOid(), Z64, Buffer.from('last'), txn);
      await primary.storage.tpcVote(txn);
      const finished = primary.storage.tpcFinish(txn);
      const closed = primary.close();
      const tid = await finished; // before: SyncReplicationAbortedError, the ack arriving after the session had ended
      await closed;
      await waitForTid(secondary, tid);
    } finally {
      await secondary.close();
      await primary.close();
    }
    expect((await onDisk(sPath)).length).toBe(8);
  });

  it('rejects bad input to waitForReplication (never throws it), and a tid it has not committed', async () => {
    const dir = await tempDir();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, auditPath: null });
    try {
      const [tid] = await commitMany(primary.storage, 1);
      const outcome = (p: () => Promise<unknown>): Promise<unknown> => {
        let promise: Promise<unknown>;
        try {
          promise = p();
        } catch (err) {
          return Promise.resolve(`thrown: ${(err as Error).message}`);
        }
        return promise.then(() => 'resolved', (err: Error) => `rejected: ${err.message}`);
      };
      expect(await outcome(() => primary.waitForReplication(tid!, { replicas: -1 }))).toBe('rejected: replicas must be a non-negative integer, got -1');
      expect(await outcome(() => primary.waitForReplication(tid!, { replicas: 1.5 }))).toBe('rejected: replicas must be a non-negative integer, got 1.5');
      for (const timeoutMs of [0, Number.NaN, -5, Number.POSITIVE_INFINITY]) {
        expect(await outcome(() => primary.waitForReplication(tid!, { timeoutMs }))).toBe(`rejected: timeoutMs must be a positive finite number, got ${timeoutMs}`);
      }
      expect(await outcome(() => primary.waitForReplication(Buffer.alloc(3)))).toBe('rejected: tid must be 8 bytes, got 3');
      const future = Buffer.alloc(8, 0xff);
      expect(await outcome(() => primary.waitForReplication(future))).toBe(`rejected: tid ffffffffffffffff is not committed on this primary (its last is ${tid!.toString('hex')})`);
      expect(await outcome(() => primary.waitForReplication(tid!, { replicas: 0 }))).toBe('resolved');
    } finally {
      await primary.close();
    }
  });

  it('ends waits still pending when the primary closes', async () => {
    const dir = await tempDir();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, auditPath: null });
    const [tid] = await commitMany(primary.storage, 1);
    const waiting = primary.waitForReplication(tid!, { replicas: 1, timeoutMs: 60_000 }).catch((e: unknown) => e);
    await primary.close();
    expect(await waiting).toMatchObject({ name: 'SyncReplicationAbortedError', wanted: 1, got: 0 });
  });
});
