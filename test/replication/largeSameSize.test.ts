// Transactions over a read window's size (1 MiB), all of one size, committed
// while a secondary catches up: the catch-up's last tid is a copy, not a view
// of a window the next read reuses (which then named a transaction never
// sent: the session failed at the end of every catch-up, and the follow's
// gap read could skip one).

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Primary } from '../../src/replication/primary.js';
import { Secondary } from '../../src/replication/secondary.js';
import { Z64 } from '../../src/storage/timestamp.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { waitForTid } from './helpers.js';
import { FAST_RECONNECT, LogCollector } from './netHelpers.js';

afterAll(cleanupTempDirs);

describe('same-size transactions over 1 MiB committed during a catch-up', () => {
  it.each([1, 2, 3])('reach the secondary whole, without the session failing (round %i)', async () => {
    const dir = await tempDir();
    const logs = new LogCollector();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, auditPath: null, log: logs.log, heartbeatIntervalMs: 0 });
    const fs = primary.storage;
    const oid = fs.newOid();
    let serial = Z64;
    const commit = async (i: number): Promise<void> => {
      const txn = { description: 'same size' };
      await fs.tpcBegin(txn);
      fs.store(oid, serial, Buffer.alloc(1200 * 1024, i & 0xff), txn);
      await fs.tpcVote(txn);
      serial = await fs.tpcFinish(txn);
    };
    try {
      for (let i = 0; i < 10; i++) await commit(i);
      const secondary = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: primary.address, fsync: false, auditPath: null, reconnect: FAST_RECONNECT });
      try {
        for (let i = 10; i < 40; i++) {
          await commit(i);
          await new Promise((r) => setImmediate(r));
        }
        await waitForTid(secondary, fs.lastTransaction());
      } finally {
        await secondary.close();
      }
    } finally {
      await primary.close();
    }
    expect(logs.entries.filter((e) => /session failed|bug:/.test(e.message)).map((e) => e.message)).toEqual([]);
    expect(readFileSync(join(dir, 's.fs')).equals(readFileSync(join(dir, 'p.fs')))).toBe(true);
  });
});
