// A primary closed right after a large commit still delivers it, whole, to
// every connected secondary before its close() resolves (draining).

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Primary } from '../../src/replication/primary.js';
import { Secondary } from '../../src/replication/secondary.js';
import { Z64 } from '../../src/storage/timestamp.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { commitMany, waitForTid } from './helpers.js';
import { FAST_RECONNECT, LogCollector, settleUntil } from './netHelpers.js';

afterAll(cleanupTempDirs);

const cases = [
  ['native', false],
  ['zrs2.1', false],
  ['native', true],
  ['zrs2.1', true],
] as const;

describe.each(cases)('closing a primary (%s secondaries, mid-write %s)', (protocol, midWrite) => {
  it('delivers a 5 MB transaction committed just before close() to both secondaries', async () => {
    const dir = await tempDir();
    const logs = new LogCollector();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, log: logs.log });
    const start = await commitMany(primary.storage, 5);
    const secondaryLogs = [new LogCollector(), new LogCollector()];
    const secondaries = await Promise.all(
      [1, 2].map((n) =>
        Secondary.open({ path: join(dir, `s${n}.fs`), replicateFrom: primary.address, protocol, fsync: false, reconnect: FAST_RECONNECT, log: secondaryLogs[n - 1]!.log }),
      ),
    );
    try {
      for (const s of secondaries) await waitForTid(s, start.at(-1)!);
      // Both sessions are live, waiting for commits.
      expect(primary.secondaries().map((s) => s.state)).toEqual(['live', 'live']);

      const txn = { user: 'big', description: '5 MB' };
      await primary.storage.tpcBegin(txn);
      for (let i = 0; i < 50; i++) primary.storage.store(primary.storage.newOid(), Z64, Buffer.alloc(100 * 1024, i), txn);
      await primary.storage.tpcVote(txn);
      const sentBefore = primary.secondaries().map((st) => st.bytesSent);
      const tid = await primary.storage.tpcFinish(txn);
      // Optionally close while both sessions are in the middle of writing it.
      if (midWrite) await settleUntil(() => primary.secondaries().every((st, i) => st.bytesSent > sentBefore[i]!));

      await primary.close();

      // Sent whole before close() resolved: both receive it even though the primary is gone.
      for (const s of secondaries) await waitForTid(s, tid);
      const primaryBytes = readFileSync(join(dir, 'p.fs'));
      for (const n of [1, 2]) expect(readFileSync(join(dir, `s${n}.fs`)).equals(primaryBytes)).toBe(true);
      const closes = logs.entries.filter((e) => e.message.includes('session with'));
      expect(closes.map((e) => e.fields?.reason)).toEqual(['drained', 'drained']);
      // Nothing was sent twice or cut: no secondary saw a protocol error.
      for (const l of secondaryLogs) expect(l.entries.filter((e) => e.level !== 'info')).toEqual([]);
    } finally {
      for (const s of secondaries) await s.close();
    }
  });
});
