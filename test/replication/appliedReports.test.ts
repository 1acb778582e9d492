// The secondary tells its connection machine what it applied (TXN_APPLIED)
// at most every APPLIED_REPORT_MS while transactions stream in, instead of
// once per transaction: the newest tid arrives when that time has passed,
// and at once when the connection ends. Time is a virtual clock here.

import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Primary } from '../../src/replication/primary.js';
import { Secondary } from '../../src/replication/secondary.js';
import { VirtualClock } from '../../src/sim/clock.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { commitMany, waitForTid } from './helpers.js';
import { FAST_RECONNECT } from './netHelpers.js';

afterAll(cleanupTempDirs);

const hex = (b: unknown): string => (b as Buffer).toString('hex');

describe('applied reports to the connection machine', () => {
  it('are at most one per 20 ms of the clock while streaming, the newest tid always follows, and the end of a connection reports at once', async () => {
    const dir = await tempDir();
    const clock = new VirtualClock();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, auditPath: null });
    const secondary = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: primary.address, fsync: false, reconnect: FAST_RECONNECT, auditPath: null, clock });
    let reports = 0;
    const sub = secondary.machine.subscribe(() => reports++);
    const applied = (): string => hex(secondary.machine.getSnapshot().context.lastAppliedTid);
    try {
      const [first] = await commitMany(primary.storage, 1);
      await waitForTid(secondary, first!);
      await new Promise((r) => setImmediate(r));
      expect(applied()).toBe(hex(first)); // the first one at once

      reports = 0;
      const burst = await commitMany(primary.storage, 30);
      await waitForTid(secondary, burst.at(-1)!);
      await new Promise((r) => setImmediate(r));
      expect(applied()).toBe(hex(first)); // the clock has not moved: held back
      expect(reports).toBe(0);
      clock.advance(20);
      expect(applied()).toBe(hex(burst.at(-1)));
      expect(reports).toBe(1);

      const more = await commitMany(primary.storage, 3);
      await waitForTid(secondary, more.at(-1)!);
      await new Promise((r) => setImmediate(r));
      expect(applied()).toBe(hex(burst.at(-1)));
      // The primary goes away: the machine hears of everything applied before it hears of the disconnection.
      const seenAtDisconnect: string[] = [];
      const watch = secondary.machine.subscribe((s) => {
        if (typeof s.value === 'string') seenAtDisconnect.push(hex(s.context.lastAppliedTid)); // left `connected`
      });
      await primary.close();
      if (typeof secondary.machine.getSnapshot().value !== 'string') {
        await new Promise<void>((resolve) => {
          const w = secondary.machine.subscribe((s) => {
            if (typeof s.value === 'string') {
              w.unsubscribe();
              resolve();
            }
          });
        });
      }
      watch.unsubscribe();
      expect(seenAtDisconnect[0]).toBe(hex(more.at(-1)));
    } finally {
      sub.unsubscribe();
      await secondary.close();
    }
  });
});
