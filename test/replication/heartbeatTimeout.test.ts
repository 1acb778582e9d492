// A primary announces its heartbeat interval in `welcome`; a secondary that
// then hears nothing for its heartbeat timeout takes the link for dead,
// drops it and reconnects, instead of waiting for TCP to give up on a peer
// that vanished without closing.

import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { nativeOutbound } from '../../src/replication/protocols.js';
import { Primary } from '../../src/replication/primary.js';
import { Secondary } from '../../src/replication/secondary.js';
import { heartbeatTimeoutMs } from '../../src/replication/streamWatch.js';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { createNativePackr, createNativeUnpackr, decodeNative, encodeNative, nativeProtocolName } from '../../src/wire/native.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { FAST_RECONNECT, FakeServer, FramedSocket, LogCollector, until } from './netHelpers.js';

afterAll(cleanupTempDirs);

const deadLink = (message: string): boolean => message.includes('taken for dead');

/** Answer the hello with a welcome announcing `intervalMs`; returns the codec, for heartbeats. */
async function welcome(c: FramedSocket, source: FileStorage, intervalMs: number): Promise<ReturnType<typeof nativeOutbound>> {
  await c.frame(0); // the protocol name
  const hello = decodeNative(await c.frame(1), createNativeUnpackr(), 'secondary');
  if (hello.type !== 'hello') throw new Error(`expected hello, got ${hello.type}`);
  const codec = nativeOutbound(source, hello.startTid, { blobs: false, heartbeatIntervalMs: intervalMs });
  c.sendRaw(codec.welcome(source.lastTransaction())!);
  return codec;
}

/**
 * A fake primary that welcomes its first connection announcing `intervalMs`,
 * sends `heartbeats` heartbeats that far apart (calling `afterHeartbeat`
 * after each), then falls silent; and a Secondary replicating from it with
 * `timeoutMs`. `stoppedAt()`: the connections made when the heartbeats ended
 * (null before).
 */
async function withFakePrimary(
  o: { intervalMs: number; heartbeats: number; timeoutMs: number; afterHeartbeat?: (i: number) => void },
  check: (ctx: { logs: LogCollector; secondary: Secondary; fake: FakeServer; stoppedAt: () => number | null }) => Promise<void>,
): Promise<void> {
  const dir = await tempDir();
  const source = await FileStorage.open(join(dir, 'source.fs'), { create: true, fsync: false });
  let stoppedAt: number | null = null;
  const fake = await FakeServer.start((c, index) => {
    if (index !== 0) return;
    void welcome(c, source, o.intervalMs)
      .then(async (codec) => {
        for (let i = 0; i < o.heartbeats; i++) {
          await new Promise((r) => setTimeout(r, o.intervalMs));
          c.sendRaw(codec.heartbeat!(source.lastTransaction(), Date.now())!);
          o.afterHeartbeat?.(i);
        }
        stoppedAt = fake.connections.length;
      })
      .catch(() => undefined);
  });
  const logs = new LogCollector();
  const secondary = await Secondary.open({
    path: join(dir, 's.fs'),
    replicateFrom: fake.address,
    fsync: false,
    reconnect: FAST_RECONNECT,
    heartbeatTimeoutMs: o.timeoutMs,
    log: logs.log,
    auditPath: null,
  });
  try {
    await check({ logs, secondary, fake, stoppedAt: () => stoppedAt });
  } finally {
    await secondary.close();
    await fake.close();
    await source.close();
  }
}

describe('heartbeat timeout', () => {
  it('the timeout is 5 intervals (at least 5 s) by default, never under 2 intervals, and 0 or no heartbeats turn it off', () => {
    expect(heartbeatTimeoutMs(undefined, 1000)).toBe(5000);
    expect(heartbeatTimeoutMs(undefined, 100)).toBe(5000);
    expect(heartbeatTimeoutMs(undefined, 3000)).toBe(15_000);
    expect(heartbeatTimeoutMs(300, 100)).toBe(300);
    expect(heartbeatTimeoutMs(150, 100)).toBe(200);
    expect(heartbeatTimeoutMs(0, 100)).toBeNull();
    expect(heartbeatTimeoutMs(300, 0)).toBeNull();
  });

  it('a primary that goes silent after its welcome is dropped, and the secondary reconnects', async () => {
    await withFakePrimary({ intervalMs: 50, heartbeats: 0, timeoutMs: 150 }, async ({ logs, fake }) => {
      const line = await logs.waitFor((e) => deadLink(e.message));
      expect(line.message).toMatch(/no frame from the primary for \d+ ms though it heartbeats every 50 ms/);
      expect(await fake.connection(1)).toBeDefined();
      // The first connection was closed by the secondary.
      await fake.connections[0]!.waitClosed();
    });
  });

  it('heartbeats keep the link; when they stop, it is dropped', async () => {
    // 30 heartbeats 40 ms apart: 1.2 s, three times the 400 ms timeout.
    await withFakePrimary({ intervalMs: 40, heartbeats: 30, timeoutMs: 400 }, async ({ logs, secondary, stoppedAt }) => {
      await logs.waitFor((e) => deadLink(e.message));
      // The drop came only after the last heartbeat: no reconnect happened while they arrived.
      expect(stoppedAt()).toBe(1);
      expect(logs.count((e) => deadLink(e.message))).toBe(1);
      expect(secondary.lastHeartbeat).not.toBeNull();
    });
  });

  it('a stall of its own event loop longer than the timeout does not make the secondary drop a link whose bytes are waiting', async () => {
    // The whole process (the fake and the secondary) stalls for 3 timeouts, with the 4th heartbeat in flight.
    const stall = (i: number): void => {
      if (i === 3) for (const until = Date.now() + 450; Date.now() < until; );
    };
    await withFakePrimary({ intervalMs: 50, heartbeats: 10, timeoutMs: 150, afterHeartbeat: stall }, async ({ logs, stoppedAt }) => {
      await logs.waitFor((e) => deadLink(e.message));
      expect(stoppedAt()).toBe(1);
    });
  });

  it.each([
    [30, 30],
    [12.5, 13],
    [0, undefined],
  ])("a primary heartbeating every %s ms announces %s in its welcome", async (intervalMs, announced) => {
    const dir = await tempDir();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, heartbeatIntervalMs: intervalMs, auditPath: null });
    const peer = await FramedSocket.connect(primary.address);
    try {
      peer.send(nativeProtocolName());
      peer.send(encodeNative({ type: 'hello', startTid: Buffer.alloc(8), generations: [], options: { blobs: false } }, createNativePackr()));
      const answer = decodeNative(await peer.frame(0), createNativeUnpackr(), 'primary');
      expect(answer.type).toBe('welcome');
      expect(answer.type === 'welcome' && answer.heartbeatIntervalMs).toBe(announced ?? undefined);
    } finally {
      peer.destroy();
      await primary.close();
    }
  });

  it("a real primary's heartbeats keep an idle link up", async () => {
    const dir = await tempDir();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, heartbeatIntervalMs: 25, auditPath: null });
    const logs = new LogCollector();
    const secondary = await Secondary.open({
      path: join(dir, 's.fs'),
      replicateFrom: primary.address,
      fsync: false,
      reconnect: FAST_RECONNECT,
      heartbeatTimeoutMs: 300,
      log: logs.log,
      auditPath: null,
    });
    try {
      // Forty heartbeats (1 s), over three timeouts, on the first connection.
      const seen = new Set<number>();
      await until(
        () => secondary.lastHeartbeat?.receivedMs,
        (at) => {
          if (at !== undefined) seen.add(at);
          return seen.size >= 40;
        },
      );
      expect(seen.size).toBeGreaterThanOrEqual(40);
      expect(logs.count((e) => deadLink(e.message))).toBe(0);
      expect(logs.count((e) => e.message.includes('stopped'))).toBe(0);
    } finally {
      await secondary.close();
      await primary.close();
    }
  });
});
