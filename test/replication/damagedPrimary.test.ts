// A primary whose file is damaged in a part its saved index vouched for
// (so its open did not read it): catch-up sends every transaction before the
// damage, then the session ends naming the damage. A secondary is left as up
// to date as the primary's file allows, the best one to promote.

import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Primary } from '../../src/replication/primary.js';
import { Secondary } from '../../src/replication/secondary.js';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { allTransactions, commitMany, waitForTid } from './helpers.js';
import { FAST_RECONNECT, LogCollector, sessionClosed } from './netHelpers.js';

afterAll(cleanupTempDirs);

describe('a primary with damage behind its saved index', () => {
  it('sends the transactions before the damage, then ends the session naming it', async () => {
    const dir = await tempDir();
    const path = join(dir, 'p.fs');
    let primary = await Primary.open({ path, replicateTo: '127.0.0.1:0', fsync: false, auditPath: null });
    const tids = await commitMany(primary.storage, 30);
    await primary.close(); // saves the index (and the hash chain covers every transaction)
    const intact = await FileStorage.open(path, { readOnly: true });
    const before = await allTransactions(intact);
    await intact.close();
    const damagedAt = before[20]!.pos;
    const bytes = readFileSync(path);
    bytes.fill(0, damagedAt + 8, damagedAt + 16); // the 21st transaction's length
    writeFileSync(path, bytes);

    const logs = new LogCollector();
    primary = await Primary.open({ path, replicateTo: '127.0.0.1:0', fsync: false, auditPath: null, log: logs.log });
    const secondary = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: primary.address, fsync: false, reconnect: FAST_RECONNECT, auditPath: null });
    try {
      const closed = await logs.waitFor((e) => sessionClosed(e) && e.message.includes('catchUp failed'));
      expect(closed.message).toContain(`corrupted data at position ${damagedAt}: transaction length 0 is shorter than a transaction header`);
      await waitForTid(secondary, tids[19]!);
      const got = await allTransactions(secondary.storage);
      expect(got.map((t) => t.tid.toString('hex'))).toEqual(before.slice(0, 20).map((t) => t.tid.toString('hex')));
    } finally {
      await secondary.close();
      await primary.close();
    }
  });
});
