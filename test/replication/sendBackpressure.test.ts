// A primary sends to a secondary only as fast as the secondary's socket
// takes the bytes: once a write finds the socket full, the session waits for
// its drain before it writes more, in catch-up and live alike (a blob
// streamed in blocks too). What one slow secondary makes the primary hold
// stays bounded. Here every write reports the socket full and the test gives
// each drain itself, so the bytes written between two drains are exact, and
// a session can be held in the middle of a transaction: a generation
// announced then goes out right after its commit.

import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { socketTransport } from '../../src/node/socketTransport.js';
import type { Transport } from '../../src/ports/transport.js';
import { Primary } from '../../src/replication/primary.js';
import { Secondary } from '../../src/replication/secondary.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { BLOB_RECORD, commitLarge, commitMany, Z64 } from './helpers.js';
import { FAST_RECONNECT, FramedSocket, messageKinds, settleUntil } from './netHelpers.js';
import { createNativePackr, encodeNative, nativeProtocolName } from '../../src/wire/native.js';

afterAll(cleanupTempDirs);

const MiB = 1024 * 1024;
/** The most a session may write between two drains: its largest batch (a raw run of 1 MiB), with room for framing. */
const BETWEEN_DRAINS = 2 * MiB;

/** A server transport whose streams report every write as filling the socket, and pass a drain on only when the test gives it. */
function drainsByHand(): { transport: Transport; drain(): void; writes(): number; mostBetweenDrains(): number } {
  let drainHandler: (() => void) | null = null;
  let writes = 0;
  let sinceDrain = 0;
  let most = 0;
  const transport: Transport = {
    ...socketTransport,
    listen: (address, onStream, options) =>
      socketTransport.listen(
        address,
        (s) =>
          onStream({
            peer: s.peer,
            get heldBytes() {
              return s.heldBytes;
            },
            write: (chunk) => {
              s.write(chunk);
              writes += 1;
              sinceDrain += chunk.length;
              most = Math.max(most, sinceDrain);
              return false;
            },
            pause: () => s.pause(),
            resume: () => s.resume(),
            end: () => s.end(),
            destroy: (e) => s.destroy(e),
            setHandlers: (h) => {
              drainHandler = h.drain;
              s.setHandlers({ ...h, drain: () => undefined });
            },
          }),
        options,
      ),
  };
  return {
    transport,
    drain: () => {
      sinceDrain = 0;
      drainHandler?.();
    },
    writes: () => writes,
    mostBetweenDrains: () => most,
  };
}

/**
 * Give drains one at a time, each once the session wrote again, until `done()`. `owed`: also check that
 * nothing more is written while a drain is owed, over a few turns of the event loop after each write (from
 * the second drain on: the handshake's answer and the first batch go out together).
 */
async function drainUntil(hand: ReturnType<typeof drainsByHand>, done: () => boolean, owed = false): Promise<void> {
  for (let round = 0; !done(); round++) {
    const before = hand.writes();
    hand.drain();
    await settleUntil(() => hand.writes() > before || done());
    if (!owed || round === 0 || done()) continue;
    const wrote = hand.writes();
    for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve));
    expect(hand.writes()).toBe(wrote);
  }
}

/** A primary (blobs in `dir` when `blobs`, heartbeats off) whose sessions' drains the test gives by hand. */
async function primaryWithDrainsByHand(dir: string, blobs = false): Promise<{ primary: Primary; hand: ReturnType<typeof drainsByHand> }> {
  const hand = drainsByHand();
  const primary = await Primary.open({
    path: join(dir, 'p.fs'),
    ...(blobs ? { blobDir: join(dir, 'p.blobs') } : {}),
    replicateTo: '127.0.0.1:0',
    fsync: false,
    auditPath: null,
    transport: hand.transport,
    heartbeatIntervalMs: 0,
  });
  return { primary, hand };
}

/** `secondary` holds `tid` (or something later). */
const holds = (secondary: Secondary, tid: Buffer) => (): boolean => Buffer.compare(secondary.storage.lastTransaction(), tid) >= 0;

/** Commit one transaction holding an 8 MiB blob (streamed in blocks); its tid. */
async function commitBlob(primary: Primary, dir: string): Promise<Buffer> {
  const file = join(dir, 'blob');
  await writeFile(file, Buffer.alloc(8 * MiB, 7));
  const fs = primary.storage;
  const txn = { description: 'an 8 MiB blob' };
  await fs.tpcBegin(txn);
  await fs.storeBlob(fs.newOid(), Z64, BLOB_RECORD, file, txn);
  await fs.tpcVote(txn);
  return fs.tpcFinish(txn);
}

it('catch-up waits for the socket to drain between batches', async () => {
  const dir = await tempDir();
  const { primary, hand } = await primaryWithDrainsByHand(dir);
  const tids = await commitLarge(primary.storage);
  const secondary = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: primary.address, fsync: false, reconnect: FAST_RECONNECT, auditPath: null });
  try {
    await drainUntil(hand, holds(secondary, tids.at(-1)!), true);
    // About 24 MiB went out, never more than a batch between two drains.
    expect(hand.mostBetweenDrains()).toBeGreaterThan(0);
    expect(hand.mostBetweenDrains()).toBeLessThanOrEqual(BETWEEN_DRAINS);
  } finally {
    await secondary.close();
    await primary.close();
  }
});

it('a live blob streamed in blocks waits for the socket to drain between them', async () => {
  const dir = await tempDir();
  const { primary, hand } = await primaryWithDrainsByHand(dir, true);
  const secondary = await Secondary.open({ path: join(dir, 's.fs'), blobDir: join(dir, 's.blobs'), replicateFrom: primary.address, fsync: false, reconnect: FAST_RECONNECT, auditPath: null });
  try {
    await drainUntil(hand, holds(secondary, (await commitMany(primary.storage, 1))[0]!));
    await drainUntil(hand, holds(secondary, await commitBlob(primary, dir)), true);
    expect(hand.mostBetweenDrains()).toBeLessThanOrEqual(BETWEEN_DRAINS);
  } finally {
    await secondary.close();
    await primary.close();
  }
});

it('a generation announced while a transaction is being streamed follows its commit', async () => {
  const dir = await tempDir();
  const { primary, hand } = await primaryWithDrainsByHand(dir, true);
  const peer = await FramedSocket.connect(primary.address);
  const kinds = messageKinds(peer);
  try {
    peer.send(nativeProtocolName());
    peer.send(encodeNative({ type: 'hello', startTid: Z64, generations: [], options: { blobs: true } }, createNativePackr()));
    await drainUntil(hand, () => primary.status().sessions[0]?.state === 'live');
    await commitBlob(primary, dir);
    // Its first blocks are out, the rest wait for drains: the session is in the middle of the transaction.
    await settleUntil(() => kinds.includes('blob-block'));
    expect(kinds).not.toContain('commit');
    (primary as unknown as { server: { announceGeneration(): void } }).server.announceGeneration();
    await drainUntil(hand, () => kinds.includes('generation'));
    expect(kinds.slice(kinds.indexOf('txn'))).toEqual(expect.arrayContaining(['commit', 'generation']));
    // Not inside the transaction: right after its commit.
    expect(kinds.indexOf('generation')).toBe(kinds.indexOf('commit') + 1);
  } finally {
    peer.destroy();
    await primary.close();
  }
});
