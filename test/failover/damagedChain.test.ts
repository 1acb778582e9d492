// A primary whose hash chain file is damaged under it while it runs (the
// open checked every entry; a stray write came after) cannot judge a
// secondary's history at that place. That is the primary's failure, not the
// peer's: the handshake is refused as `internal` (a zc.zrs peer's connection
// just ends), naming the primary's own file, and the primary logs it as an
// error.

import { closeSync, openSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CHAIN_ENTRY_BYTES, chainPathFor } from '../../src/failover/hashChain.js';
import { Primary } from '../../src/replication/primary.js';
import { Secondary } from '../../src/replication/secondary.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { commitMany, waitForTid } from '../replication/helpers.js';
import { FAST_RECONNECT, FramedSocket, LogCollector } from '../replication/netHelpers.js';

afterAll(cleanupTempDirs);

describe('a chain file damaged while its primary runs', () => {
  it("refuses a secondary's handshake as internal, naming its own file, and logs an error", async () => {
    const dir = await tempDir();
    const primaryPath = join(dir, 'p.fs');
    const secondaryPath = join(dir, 's.fs');
    let primary = await Primary.open({ path: primaryPath, replicateTo: '127.0.0.1:0', fsync: false, auditPath: null });
    const early = await commitMany(primary.storage, 100, 1);
    let secondary = await Secondary.open({ path: secondaryPath, replicateFrom: primary.address, fsync: false, reconnect: FAST_RECONNECT, auditPath: null });
    await waitForTid(secondary, early.at(-1)!);
    await secondary.close();
    await commitMany(primary.storage, 1000, 1);
    await primary.close();
    // Reopened (its open checks every entry), the chain holds only its head in memory: lookups read the file.
    const primaryLogs = new LogCollector();
    primary = await Primary.open({ path: primaryPath, replicateTo: '127.0.0.1:0', fsync: false, auditPath: null, log: primaryLogs.log });
    try {
      const chainPath = chainPathFor(primaryPath);
      const fd = openSync(chainPath, 'r+');
      const at = 8 + 99 * CHAIN_ENTRY_BYTES + 3; // in the entry of the secondary's last tid
      const byte = readFileSync(chainPath)[at]!;
      writeSync(fd, Buffer.from([byte ^ 0x01]), 0, 1, at);
      closeSync(fd);

      const secondaryLogs = new LogCollector();
      secondary = await Secondary.open({ path: secondaryPath, replicateFrom: primary.address, fsync: false, reconnect: FAST_RECONNECT, auditPath: null, log: secondaryLogs.log });
      try {
        const logged = await primaryLogs.waitFor((e) => e.message.includes('could not check'));
        expect(logged.level).toBe('error');
        expect(logged.message).toContain("this node could not check the secondary's history against its own");
        expect(logged.message).toContain(`${chainPath}: chain entry 99 is damaged`);
        const told = await secondaryLogs.waitFor((e) => e.message.includes('could not check'));
        expect(told.level).toBe('error');
        expect(told.message).toContain('refused replication: internal');
        expect(told.message).toContain('chain entry 99 is damaged');
        expect(secondary.storage.lastTransaction()).toEqual(early.at(-1));
      } finally {
        await secondary.close();
      }
      // A zc.zrs secondary gives only its last tid, judged by the same chain: refused the same way
      // (its protocol has no refusal message: the connection ends), with the same error logged.
      const zrs = await FramedSocket.connect(primary.address);
      try {
        zrs.send(Buffer.from('zrs2.1', 'latin1'));
        zrs.send(early.at(-1)!);
        await zrs.waitClosed();
        const logged = await primaryLogs.waitForCount((e) => e.level === 'error' && e.message.includes('could not check'), 2);
        expect(logged[1]!.message).toContain(`${chainPath}: chain entry 99 is damaged`);
      } finally {
        zrs.destroy();
      }
    } finally {
      await primary.close();
    }
  });
});
