// A secondary whose disk holds its applier up stops reading from the socket
// once the data waiting for the applier passes a bound in bytes, not only
// in events: large transactions would otherwise pile up in memory (a whole
// database of 1 MiB transactions is far fewer than the event bound).

import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { nodeDisk, type StorageDisk } from '../../src/storage/disk.js';
import { socketTransport } from '../../src/node/socketTransport.js';
import type { Transport } from '../../src/ports/transport.js';
import { Primary } from '../../src/replication/primary.js';
import { Secondary } from '../../src/replication/secondary.js';
import { Z64 } from '../../src/storage/timestamp.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { FAST_RECONNECT, settleUntil } from './netHelpers.js';
import { waitForTid } from './helpers.js';

afterAll(cleanupTempDirs);

const MiB = 1024 * 1024;

it('pauses reading once the received data waiting for a held-up disk passes a bound in bytes, and resumes once the disk goes on', async () => {
  const dir = await tempDir();
  const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, auditPath: null });
  for (let i = 0; i < 120; i++) {
    const txn = { description: `t${i}` };
    await primary.storage.tpcBegin(txn);
    primary.storage.store(primary.storage.newOid(), Z64, Buffer.alloc(MiB, i), txn);
    await primary.storage.tpcVote(txn);
    await primary.storage.tpcFinish(txn);
  }
  // The secondary's syncs wait until the test lets them go: its applier stops once enough is unsynced.
  let release: () => void = () => undefined;
  const gate = new Promise<void>((resolve) => (release = resolve));
  const heldDisk: StorageDisk = { ...nodeDisk, datasync: async (fd) => { await gate; await nodeDisk.datasync(fd); } };
  let delivered = 0;
  let deliveredAtPause: number | null = null;
  // Received but not yet in the data file when reading first resumes.
  let waitingAtResume: number | null = null;
  let secondary: Secondary | null = null;
  const counting: Transport = {
    ...socketTransport,
    connect: async (address) => {
      const s = await socketTransport.connect(address);
      return {
        peer: s.peer,
        write: (c) => s.write(c),
        pause: () => {
          deliveredAtPause ??= delivered;
          s.pause();
        },
        resume: () => {
          waitingAtResume ??= delivered - secondary!.storage.getSize();
          s.resume();
        },
        end: () => s.end(),
        destroy: (e) => s.destroy(e),
        setHandlers: (h) => s.setHandlers({ ...h, data: (c) => ((delivered += c.length), h.data(c)) }),
      };
    },
  };
  const path = join(dir, 's.fs');
  secondary = await Secondary.open({ path, replicateFrom: primary.address, fsync: true, disk: heldDisk, transport: counting, reconnect: FAST_RECONNECT, auditPath: null });
  try {
    await settleUntil(() => deliveredAtPause !== null || delivered > 100 * MiB, 30_000);
    expect(deliveredAtPause).not.toBeNull();
    // Received but not yet in the data file: bounded (the queue's 32 MiB, the write the applier waits on, a socket's worth).
    expect(deliveredAtPause! - secondary.storage.getSize()).toBeLessThan(64 * MiB);
    // Once the disk goes on, reading resumes on the same connection: it catches up without a reconnect.
    release();
    await waitForTid(secondary, primary.storage.lastTransaction(), 60_000);
    expect(secondary.machine.getSnapshot().context.counters.connects).toBe(1);
    // It resumed only once the queue was below half its bound (16 MiB, plus the frame being decoded), not as
    // soon as it fell under the bound: reading would otherwise stop and start again for every transaction.
    expect(waitingAtResume).not.toBeNull();
    expect(waitingAtResume!).toBeLessThan(20 * MiB);
  } finally {
    release();
    await secondary.close();
    await primary.close();
  }
});
