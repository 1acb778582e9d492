// A primary closed right after a large commit still delivers it, whole, to
// every connected secondary before its close() resolves (draining). And a
// peer that stops reading, or never closes its side, cannot hold close() up
// for ever: the drain and the handshake time out, an orderly end lingers
// for a bounded time (all on the primary's clock, here a virtual one).

import { readFileSync } from 'node:fs';
import { createConnection, type Socket } from 'node:net';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Primary } from '../../src/replication/primary.js';
import { ACK_WAIT_AT_CLOSE_MS, CLOSE_LINGER_MS } from '../../src/replication/primarySession.js';
import { StorageClosedError } from '../../src/errors.js';
import { VirtualClock } from '../../src/sim/clock.js';
import { createNativePackr, createNativeUnpackr, decodeNative, encodeNative, nativeProtocolName } from '../../src/wire/native.js';
import { Secondary } from '../../src/replication/secondary.js';
import { Z64 } from '../../src/storage/timestamp.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { commitLarge, commitMany, waitForTid } from './helpers.js';
import { FAST_RECONNECT, FramedSocket, LogCollector, messageKinds, openFdCount, settleUntil } from './netHelpers.js';
import { FileStorage } from '../../src/storage/FileStorage.js';

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

      // A second close() while the first drains waits for that one (it closed the storage under the drain).
      await Promise.all([primary.close(), primary.close()]);

      // Sent whole before close() resolved: both receive it even though the primary is gone.
      for (const s of secondaries) await waitForTid(s, tid);
      const primaryBytes = readFileSync(join(dir, 'p.fs'));
      for (const n of [1, 2]) expect(readFileSync(join(dir, `s${n}.fs`)).equals(primaryBytes)).toBe(true);
      const closes = logs.entries.filter((e) => e.message.includes('session with'));
      expect(closes.map((e) => e.fields?.reason)).toEqual(['drained', 'drained']);
      // Nothing was sent twice or cut: no secondary saw a protocol error.
      for (const l of secondaryLogs) expect(l.entries.filter((e) => e.level !== 'info')).toEqual([]);
      // Each says why it stopped replicating (a restarted primary otherwise left only "waiting to reconnect").
      for (const l of secondaryLogs) await l.waitFor((e) => e.level === 'info' && /^replication from .* stopped: the upstream closed the connection$/.test(e.message));
    } finally {
      for (const s of secondaries) await s.close();
    }
  });
});

/**
 * A native peer taking raw runs from the start, which stops reading once welcomed: resolves once the
 * primary's catch-up to it waits on its socket, part of the way. `received`: the tids of the transactions it
 * read so far; `kinds`: the messages, a heartbeat with a generation as 'generation'. Resume it with
 * `peer.socket.resume()`.
 */
async function peerCatchingUp(primary: Primary): Promise<{ peer: FramedSocket; received: Buffer[]; kinds: string[] }> {
  const peer = await FramedSocket.connect(primary.address);
  const received: Buffer[] = [];
  const kinds = messageKinds(peer, (msg) => {
    if (msg.type === 'txns') {
      for (let at = 0; at < msg.bytes.length; at += Number(msg.bytes.readBigUInt64BE(at + 8)) + 8) received.push(Buffer.from(msg.bytes.subarray(at, at + 8)));
    } else if (msg.type === 'txn') received.push(Buffer.from(msg.tid));
  });
  peer.send(nativeProtocolName());
  peer.send(encodeNative({ type: 'hello', startTid: Z64, generations: [], options: { blobs: false, rawTxns: true } }, createNativePackr()));
  await settleUntil(() => kinds.length > 0);
  expect(kinds).toEqual(['welcome']);
  peer.socket.pause();
  await settleUntil(() => primary.status().sessions[0]?.state === 'catchingUp' && (primary.secondaries()[0]?.bytesSent ?? 0) > 0);
  return { peer, received, kinds };
}

describe('a secondary catching up', () => {
  it('is sent every transaction once, in order, when the primary closes meanwhile, then the end: the catch-up stops and the drain goes on from where it was', async () => {
    const logs = new LogCollector();
    const primary = await Primary.open({ path: join(await tempDir(), 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, auditPath: null, log: logs.log });
    const tids = await commitLarge(primary.storage);
    const { peer, received } = await peerCatchingUp(primary);
    try {
      const closing = primary.close();
      peer.socket.resume();
      await closing;
      await peer.waitClosed();
      expect(received.map((t) => t.toString('hex'))).toEqual(tids.map((t) => t.toString('hex')));
      expect(logs.entries.filter((e) => e.message.includes('session with')).map((e) => e.fields?.reason)).toEqual(['drained']);
    } finally {
      peer.destroy();
      await primary.close();
    }
  });

  it('is told of a generation announced meanwhile before its catch-up ends, though nothing is committed after it and heartbeats are off', async () => {
    const primary = await Primary.open({ path: join(await tempDir(), 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, auditPath: null, heartbeatIntervalMs: 0 });
    const tids = await commitLarge(primary.storage);
    const { peer, received, kinds } = await peerCatchingUp(primary);
    try {
      // As a promotion does for the sessions it keeps: the node's generation, to every session.
      (primary as unknown as { server: { announceGeneration(): void } }).server.announceGeneration();
      peer.socket.resume();
      await settleUntil(() => received.length === tids.length);
      expect(kinds.filter((k) => k === 'generation')).toHaveLength(1);
      // Before the last transactions of the catch-up, not after it.
      expect(kinds.indexOf('generation')).toBeLessThan(kinds.lastIndexOf('txns'));
    } finally {
      peer.destroy();
      await primary.close();
    }
  });
});

describe('closing a primary whose peer does not cooperate', () => {
  async function primaryOnVirtualClock(): Promise<{ primary: Primary; clock: VirtualClock; logs: LogCollector }> {
    const clock = new VirtualClock(Date.now());
    const logs = new LogCollector();
    const primary = await Primary.open({ path: join(await tempDir(), 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, auditPath: null, clock, heartbeatIntervalMs: 0, log: logs.log });
    return { primary, clock, logs };
  }

  /** Move the virtual clock on, a second per turn of the event loop, until the session closed for `reason`. */
  async function advanceUntilClosed(clock: VirtualClock, logs: LogCollector, reason: string): Promise<void> {
    await settleUntil(() => {
      clock.advance(1000);
      return logs.count((e) => e.message.includes('session with') && e.fields?.reason === reason) > 0;
    });
  }

  /** A raw connection that keeps its side open after the primary ends its own; `ended` resolves when the primary's side ended. */
  function halfOpenPeer(primary: Primary): Promise<{ socket: Socket; ended: Promise<void> }> {
    const address = primary.address as { host: string; port: number };
    return new Promise((resolve, reject) => {
      const socket = createConnection({ host: address.host, port: address.port, allowHalfOpen: true });
      const ended = new Promise<void>((done) => {
        socket.once('end', () => done());
        socket.once('close', () => done());
      });
      socket.on('error', () => undefined);
      socket.once('connect', () => resolve({ socket, ended }));
      socket.once('error', reject);
    });
  }

  it('a secondary that stopped reading is cut off at the drain timeout, and close() resolves', async () => {
    const { primary, clock, logs } = await primaryOnVirtualClock();
    const peer = await FramedSocket.connect(primary.address);
    try {
      peer.send(nativeProtocolName());
      peer.send(encodeNative({ type: 'hello', startTid: Z64, generations: [], options: { blobs: false } }, createNativePackr()));
      await peer.frame(0); // welcome
      peer.socket.pause(); // and then nothing more is read
      const fs = primary.storage;
      for (let i = 0; i < 40; i++) {
        const txn = { description: `t${i}` };
        await fs.tpcBegin(txn);
        fs.store(fs.newOid(), Z64, Buffer.alloc(1 << 20, i), txn);
        await fs.tpcVote(txn);
        await fs.tpcFinish(txn);
      }
      const closing = primary.close();
      await advanceUntilClosed(clock, logs, 'drain-timeout');
      await closing;
      // Once it reads again, what the primary had sent is followed by the end of the connection.
      peer.socket.resume();
      await peer.waitClosed();
    } finally {
      peer.destroy();
      await primary.close();
    }
  });

  it('a second close() while the first drains to a slow secondary waits for that drain instead of closing the storage under it', async () => {
    const { primary, clock, logs } = await primaryOnVirtualClock();
    const peer = await FramedSocket.connect(primary.address);
    const unpackr = createNativeUnpackr();
    const received: Buffer[] = [];
    peer.frames$.subscribe((f) => {
      const m = f.length === 0 ? null : decodeNative(f, unpackr, 'primary');
      if (m?.type === 'txn') received.push(Buffer.from(m.tid));
    });
    try {
      peer.send(nativeProtocolName());
      peer.send(encodeNative({ type: 'hello', startTid: Z64, generations: [], options: { blobs: false } }, createNativePackr()));
      await peer.frame(0); // welcome
      peer.socket.pause(); // slow: reads again only once both closes are under way
      const fs = primary.storage;
      let last = Z64;
      for (let i = 0; i < 30; i++) {
        const txn = { description: `t${i}` };
        await fs.tpcBegin(txn);
        fs.store(fs.newOid(), Z64, Buffer.alloc(1 << 20, i), txn);
        await fs.tpcVote(txn);
        last = await fs.tpcFinish(txn);
      }
      const closes = Promise.all([primary.close(), primary.close()]);
      peer.socket.resume();
      // Everything sent: the session waits for an ack this peer never sends, on the clock.
      await settleUntil(() => received.at(-1)?.equals(last) === true);
      clock.advance(ACK_WAIT_AT_CLOSE_MS);
      await closes;
      await peer.waitClosed();
      expect(received.at(-1)?.toString('hex')).toBe(last.toString('hex'));
      expect(logs.entries.filter((e) => e.message.includes('session with')).map((e) => e.fields?.reason)).toEqual(['drained']);
    } finally {
      peer.destroy();
      await primary.close();
    }
  });

  it('a secondary that already acknowledged everything is not waited for at close (the ack wait is for what is unacknowledged)', async () => {
    const { primary, clock } = await primaryOnVirtualClock();
    const secondary = await Secondary.open({ path: join(await tempDir(), 's.fs'), replicateFrom: primary.address, fsync: false, reconnect: FAST_RECONNECT, auditPath: null });
    try {
      const [last] = (await commitMany(primary.storage, 3)).slice(-1);
      await waitForTid(secondary, last!);
      await settleUntil(() => primary.status().sessions[0]?.ackedTid?.equals(last!) === true);
      let closed = false;
      const before = clock.now();
      const closing = primary.close().then(() => (closed = true));
      // The virtual clock does not move: a wait for an ack would never end.
      await settleUntil(() => closed, 5_000);
      expect(clock.now()).toBe(before);
      await closing;
    } finally {
      await secondary.close();
      await primary.close();
    }
  });

  it('refuses a transaction begun once close() was called: it could commit after the drain and reach no secondary', async () => {
    const dir = await tempDir();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, auditPath: null });
    const closing = primary.close();
    const late = await primary.storage.tpcBegin({ description: 'late' }).then(() => null, (e: unknown) => e);
    await closing;
    expect(late).toBeInstanceOf(StorageClosedError);
  });

  it('a transaction waiting to begin when the primary closes is refused as closed (StorageClosedError), not as read-only', async () => {
    const dir = await tempDir();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, auditPath: null });
    const a = { description: 'in progress' };
    await primary.storage.tpcBegin(a);
    const waiting = primary.storage.tpcBegin({ description: 'waits for a' }).catch((e: unknown) => e);
    await primary.close();
    expect(await waiting).toBeInstanceOf(StorageClosedError);
  });

  it('a transaction its application began and left open is aborted: close() resolves, and the transaction is in no file', async () => {
    const dir = await tempDir();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, auditPath: null });
    const [kept] = await commitMany(primary.storage, 1);
    const txn = { description: 'left open' };
    await primary.storage.tpcBegin(txn);
    primary.storage.store(primary.storage.newOid(), Z64, Buffer.from('x'), txn);
    await primary.close(); // waited for the commit lock for ever
    await expect(primary.storage.tpcVote(txn)).rejects.toThrow();
    const reopened = await FileStorage.open(join(dir, 'p.fs'), { readOnly: true });
    try {
      expect(reopened.lastTransaction()).toEqual(kept);
    } finally {
      await reopened.close();
    }
  });

  it('a peer that never says a word is cut off at the handshake timeout, though it keeps its side open', async () => {
    const { primary, clock, logs } = await primaryOnVirtualClock();
    const { socket, ended } = await halfOpenPeer(primary);
    try {
      await advanceUntilClosed(clock, logs, 'handshake-timeout');
      await ended;
      // The server's close waits for every connection: this one is gone, though the peer never closed it.
      await primary.close();
    } finally {
      socket.destroy();
      await primary.close();
    }
  });

  it('a peer that connected and said nothing does not hold up close(): its socket is destroyed at once', async () => {
    const { primary } = await primaryOnVirtualClock();
    const { socket, ended } = await halfOpenPeer(primary);
    try {
      await settleUntil(() => primary.status().sessions.length === 1); // a session, never past its handshake
      // No virtual time passes: neither the handshake timeout nor a linger can end it.
      await primary.close();
      await ended;
    } finally {
      socket.destroy();
      await primary.close();
    }
  });

  it('an orderly end to a secondary that keeps its side open lingers CLOSE_LINGER_MS, then the socket is destroyed', async () => {
    const { primary, clock, logs } = await primaryOnVirtualClock();
    const { socket, ended } = await halfOpenPeer(primary);
    let closeDone = false;
    try {
      // A native handshake from the start: welcomed, nothing to send, nothing waiting for an ack.
      const framed = new FramedSocket(socket);
      framed.send(nativeProtocolName());
      framed.send(encodeNative({ type: 'hello', startTid: Z64, generations: [], options: { blobs: false } }, createNativePackr()));
      expect(decodeNative(await framed.frame(0), createNativeUnpackr(), 'primary').type).toBe('welcome');
      const closing = primary.close().then(() => (closeDone = true));
      await logs.waitFor((e) => e.message.includes('session with') && e.fields?.reason === 'drained');
      // The orderly end reached the peer, which keeps its side open: the primary's close waits ...
      await ended;
      clock.advance(CLOSE_LINGER_MS - 1);
      await new Promise((r) => setImmediate(r));
      expect(closeDone).toBe(false);
      // ... until the linger is over.
      clock.advance(1);
      await closing;
    } finally {
      socket.destroy();
      await primary.close();
    }
  });

  it('a storage whose close fails still has its hash chain and everything else closed, and the failure is reported', async () => {
    const baseline = openFdCount();
    const dir = await tempDir();
    const storage = await FileStorage.open(join(dir, 'p.fs'), { create: true, fsync: false });
    const primary = await Primary.open({ path: join(dir, 'p.fs'), storage, replicateTo: '127.0.0.1:0', fsync: false, auditPath: null });
    const secondaryPath = join(dir, 's.fs');
    const secondary = await Secondary.open({ path: secondaryPath, replicateFrom: primary.address, fsync: false, auditPath: null, reconnect: FAST_RECONNECT });
    await waitForTid(secondary, (await commitMany(storage, 2)).at(-1)!);
    for (const fs of [storage, (secondary as unknown as { inner: FileStorage }).inner]) {
      const close = fs.close.bind(fs);
      fs.close = async () => {
        await close();
        throw new Error('EIO on close');
      };
    }
    await expect(primary.close()).rejects.toThrow('EIO on close');
    await expect(secondary.close()).rejects.toThrow('EIO on close');
    // Every file the nodes opened (data, lock, chain) is closed.
    await settleUntil(() => openFdCount() <= baseline);
  });
});
