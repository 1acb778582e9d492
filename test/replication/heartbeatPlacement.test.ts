// The primary's heartbeats: sent only between transactions (a secondary
// takes one inside a transaction for a broken stream and drops the link),
// and never after the session ended (its timer goes with it). On the
// primary's clock, here a virtual one moved by the test.

import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Primary } from '../../src/replication/primary.js';
import { VirtualClock } from '../../src/sim/clock.js';
import { createNativePackr, createNativeUnpackr, decodeNative, encodeNative, nativeProtocolName } from '../../src/wire/native.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { BLOB_RECORD, Z64 } from './helpers.js';
import { FramedSocket, settleUntil } from './netHelpers.js';

afterAll(cleanupTempDirs);

const HEARTBEAT_MS = 1000;

async function primaryWithPeer(dir: string): Promise<{ primary: Primary; clock: VirtualClock; peer: FramedSocket; types: string[] }> {
  const clock = new VirtualClock(Date.now());
  const primary = await Primary.open({ path: join(dir, 'p.fs'), blobDir: join(dir, 'blobs'), replicateTo: '127.0.0.1:0', fsync: false, auditPath: null, clock, heartbeatIntervalMs: HEARTBEAT_MS });
  const peer = await FramedSocket.connect(primary.address);
  const unpackr = createNativeUnpackr();
  const types: string[] = [];
  peer.frames$.subscribe((f) => {
    if (f.length > 0) types.push(decodeNative(f, unpackr, 'primary').type);
  });
  peer.send(nativeProtocolName());
  peer.send(encodeNative({ type: 'hello', startTid: Z64, generations: [], options: { blobs: true } }, createNativePackr()));
  await peer.frame(0); // welcome
  await settleUntil(() => primary.status().sessions[0]?.state === 'live');
  return { primary, clock, peer, types };
}

describe("the primary's heartbeats", () => {
  it('go between transactions only, however often the clock ticks while one streams', async () => {
    const dir = await tempDir();
    const { primary, clock, peer, types } = await primaryWithPeer(dir);
    try {
      // Between transactions they flow.
      clock.advance(HEARTBEAT_MS);
      await settleUntil(() => types.includes('heartbeat'));
      // A blob of 8 MiB goes out in blocks over many turns of the event loop: a heartbeat is due on every turn.
      const file = join(dir, 'blob');
      await writeFile(file, randomBytes(8 << 20));
      const fs = primary.storage;
      const txn = { description: 'a large blob' };
      await fs.tpcBegin(txn);
      await fs.storeBlob(fs.newOid(), Z64, BLOB_RECORD, file, txn);
      await fs.tpcVote(txn);
      await fs.tpcFinish(txn);
      await settleUntil(() => {
        clock.advance(HEARTBEAT_MS);
        return types.includes('commit');
      });
      const inside = types.slice(types.indexOf('txn'), types.indexOf('commit'));
      expect(inside.filter((t) => t === 'blob-block').length).toBeGreaterThan(10);
      expect(inside).not.toContain('heartbeat');
      // And after it, they flow again.
      const after = types.length;
      await settleUntil(() => {
        clock.advance(HEARTBEAT_MS);
        return types.slice(after).includes('heartbeat');
      });
    } finally {
      peer.destroy();
      await primary.close();
    }
  });

  it("carry the primary's last committed tid, also one not sent yet", async () => {
    const dir = await tempDir();
    const { primary, clock, peer, types } = await primaryWithPeer(dir);
    const unpackr = createNativeUnpackr();
    const heartbeats: Buffer[] = [];
    peer.frames$.subscribe((f) => {
      if (f.length === 0) return;
      const msg = decodeNative(f, unpackr, 'primary');
      if (msg.type === 'heartbeat') heartbeats.push(Buffer.from(msg.lastTid));
    });
    try {
      const fs = primary.storage;
      const commitOne = async (description: string): Promise<Buffer> => {
        const txn = { description };
        await fs.tpcBegin(txn);
        fs.store(fs.newOid(), Z64, Buffer.from(description), txn);
        await fs.tpcVote(txn);
        return fs.tpcFinish(txn);
      };
      // One sent first: the session has a last tid sent of its own.
      await commitOne('sent');
      await settleUntil(() => types.includes('commit'));
      const from = types.length;
      const tid = await commitOne('committed, then a heartbeat before it is sent');
      // In the same turn, before the live feed sends it: the heartbeat names it already, not the one sent.
      clock.advance(HEARTBEAT_MS);
      await settleUntil(() => types.slice(from).includes('commit') && heartbeats.length > 0);
      const after = types.slice(from);
      expect(after.indexOf('heartbeat')).toBeLessThan(after.indexOf('txn'));
      expect(heartbeats[0]).toEqual(tid);
    } finally {
      peer.destroy();
      await primary.close();
    }
  });

  it('stop when the session ends: no timer of it is left on the clock', async () => {
    const dir = await tempDir();
    const { primary, clock, peer } = await primaryWithPeer(dir);
    try {
      peer.destroy();
      await settleUntil(() => primary.status().sessions.length === 0);
      // Whatever one-shot timers the session's end set (a linger) have run; a heartbeat would re-arm itself.
      clock.advance(10 * 60_000);
      expect(clock.pendingTimers).toBe(0);
    } finally {
      await primary.close();
    }
  });
});
