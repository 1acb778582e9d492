// The storage conformance suite run against a Primary's storage while a
// secondary follows it and is disconnected every 20 transactions. When each
// test closes the storage, the secondary and a brand-new one must hold the
// primary's transactions, byte for byte. Then a smaller soak: 200 random
// transactions with the secondary closed and reopened every 20.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Primary } from '../../src/replication/primary.js';
import { Secondary, type SecondaryProtocol } from '../../src/replication/secondary.js';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { seededRandom } from '../../src/ports/random.js';
import { Z64 } from '../../src/storage/timestamp.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { defineConformanceSuite, type ConformanceStorage } from '../storage/storageHarness.js';
import { expectSameHistory, waitForTid } from './helpers.js';
import { FAST_RECONNECT } from './netHelpers.js';

afterAll(cleanupTempDirs);

const DISCONNECT_EVERY = 20;

/** Wait for both secondaries, compare everything, close all, compare the files. */
async function converge(dir: string, primary: Primary, secondary: Secondary, protocol: SecondaryProtocol): Promise<void> {
  const last = primary.storage.lastTransaction();
  await waitForTid(secondary, last);
  const fresh = await Secondary.open({ path: join(dir, 'fresh.fs'), replicateFrom: primary.address, protocol, fsync: false, reconnect: FAST_RECONNECT });
  try {
    await waitForTid(fresh, last);
    await expectSameHistory(primary.storage, secondary.storage);
    await expectSameHistory(primary.storage, fresh.storage);
  } finally {
    await fresh.close();
    await secondary.close();
    await primary.close();
  }
  const p = readFileSync(join(dir, 'p.fs'));
  expect(readFileSync(join(dir, 's.fs')).equals(p)).toBe(true);
  expect(readFileSync(join(dir, 'fresh.fs')).equals(p)).toBe(true);
}

defineConformanceSuite('Primary with a secondary disconnected every 20 transactions', async (options = {}) => {
  const dir = await tempDir('zrs-repl-conf-');
  const storage = await FileStorage.open(join(dir, 'p.fs'), { create: true, now: options.now, fsync: false });
  const primary = await Primary.open({ path: join(dir, 'p.fs'), storage, replicateTo: '127.0.0.1:0' });
  const secondary = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: primary.address, fsync: false, reconnect: FAST_RECONNECT });
  let commits = 0;
  const sub = storage.commits$.subscribe(() => {
    commits += 1;
    if (commits % DISCONNECT_EVERY === 0) secondary.setReplicationAddress(primary.address);
  });
  let closing: Promise<void> | null = null;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      sub.unsubscribe();
      // Every 20th commit forced a new connection.
      expect(secondary.machine.getSnapshot().context.counters.connects).toBeGreaterThanOrEqual(1 + Math.floor(commits / DISCONNECT_EVERY));
      await converge(dir, primary, secondary, 'native');
    })();
    return closing;
  };
  const wrapped = new Proxy(storage, {
    get(target, prop) {
      if (prop === 'close') return close;
      const value: unknown = Reflect.get(target, prop, target);
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  }) as ConformanceStorage;
  return { storage: wrapped, cleanup: async () => undefined };
});

describe.each(['native', 'zrs2.1', 'zrs2.0'] as const)('200 random transactions with secondary restarts (%s)', (protocol) => {
  it('ends with the secondary and a new one identical to the primary', async () => {
    const dir = await tempDir();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false });
    const fs = primary.storage;
    const open = (): Promise<Secondary> =>
      Secondary.open({ path: join(dir, 's.fs'), replicateFrom: primary.address, protocol, fsync: false, reconnect: FAST_RECONNECT });
    let secondary = await open();
    const rng = seededRandom(20240301);
    const serials = new Map<string, Buffer>();
    const oids: Buffer[] = [];
    for (let i = 1; i <= 200; i++) {
      const txn = { user: `u${i % 7}`, description: `random ${i}`, extension: { i } };
      await fs.tpcBegin(txn);
      const n = Math.floor(rng.next() * 5); // 0..4 records: an empty transaction writes nothing, as in ZODB
      const mine = new Set<string>();
      for (let r = 0; r < n; r++) {
        const reuse = oids.length > 0 && rng.next() < 0.6;
        const oid = reuse ? oids[Math.floor(rng.next() * oids.length)]! : fs.newOid();
        const key = oid.toString('hex');
        if (mine.has(key)) continue;
        mine.add(key);
        fs.store(oid, serials.get(key) ?? Z64, Buffer.alloc(1 + Math.floor(rng.next() * 3000), i % 256), txn);
      }
      await fs.tpcVote(txn);
      if (rng.next() < 0.1) {
        await fs.tpcAbort(txn);
        continue;
      }
      const tid = await fs.tpcFinish(txn);
      for (const key of mine) {
        serials.set(key, tid);
        if (!oids.some((o) => o.toString('hex') === key)) oids.push(Buffer.from(key, 'hex'));
      }
      if (i % DISCONNECT_EVERY === 0) {
        // Sometimes caught up, sometimes mid-stream: close and reopen either way.
        // (The last one written: a transaction that stored nothing wrote nothing.)
        if (rng.next() < 0.5) await waitForTid(secondary, fs.lastTransaction());
        await secondary.close();
        secondary = await open();
      }
    }
    await converge(dir, primary, secondary, protocol);
  });
});
