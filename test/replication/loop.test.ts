// Replication loops: secondaries that replicate, directly or through others,
// from one another (a failover's old configuration left in place, or two
// secondaries pointed at each other) have no primary among them and would
// look healthy for ever. A node refuses a hello from a node on its upstream
// path (`loop`), and a secondary whose upstream's path holds itself (in a
// welcome, or in a heartbeat once a path changed) drops the connection.

import { join } from 'node:path';
import { firstValueFrom, filter, timeout } from 'rxjs';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { nativeOutbound } from '../../src/replication/protocols.js';
import { Primary } from '../../src/replication/primary.js';
import { Secondary, type SecondaryStatus } from '../../src/replication/secondary.js';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { createNativeUnpackr, decodeNative } from '../../src/wire/native.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { commitMany, waitForState, waitForTid } from './helpers.js';
import { FAST_RECONNECT, FakeServer, LogCollector } from './netHelpers.js';

afterAll(cleanupTempDirs);

const open: Array<{ close(): Promise<void> }> = [];
afterEach(async () => {
  for (const n of open.splice(0).reverse()) await n.close();
});

async function secondary(dir: string, name: string, from: string, logs: LogCollector, heartbeatIntervalMs?: number): Promise<Secondary> {
  const s = await Secondary.open({
    heartbeatIntervalMs,
    path: join(dir, `${name}.fs`),
    replicateFrom: join(dir, `${from}.sock`),
    replicateTo: join(dir, `${name}.sock`),
    fsync: false,
    reconnect: FAST_RECONNECT,
    name,
    log: (level, message, fields) => logs.log(level, `${name}: ${message}`, fields),
  });
  open.push(s);
  return s;
}

/** The first status of `s` waiting to reconnect after a loop was found. */
function loopBackoff(s: Secondary): Promise<SecondaryStatus> {
  return firstValueFrom(s.status$.pipe(filter((st) => st.kind === 'backoff' && /loop/.test(st.reason)), timeout(15_000)));
}

describe('a replication loop', () => {
  it('of two secondaries pointed at each other: one is refused (loop) and retries; the other follows it, as a chain', async () => {
    const dir = await tempDir();
    const logs = new LogCollector();
    const a = await secondary(dir, 'a', 'b', logs);
    const b = await secondary(dir, 'b', 'a', logs);
    const refused = await Promise.race([loopBackoff(a).then((st) => ({ st, who: 'a' })), loopBackoff(b).then((st) => ({ st, who: 'b' }))]);
    expect(refused.st).toMatchObject({ kind: 'backoff', reason: expect.stringMatching(/serving it would close a replication loop, in which no node is a primary|replication loop: .* replicates from this node/) });
    const line = await logs.waitFor((e) => /refused secondary .*: loop: the secondary is the node this one replicates from/.test(e.message));
    expect(line.level).toBe('warn');
  });

  it('of a secondary whose replicate-from names its own replicate-to: refused as itself', async () => {
    const dir = await tempDir();
    const logs = new LogCollector();
    const s = await secondary(dir, 'self', 'self', logs);
    const st = await loopBackoff(s);
    expect(st).toMatchObject({ reason: expect.stringContaining('is this node itself') });
  });

  it('closed through three secondaries: found once the paths reach the node that closes it, and never at a plain chain', async () => {
    const dir = await tempDir();
    const logs = new LogCollector();
    // c replicates from a, which is not there yet; then b from c, then a from b: a -> b -> c -> a.
    const c = await secondary(dir, 'c', 'a', logs);
    const b = await secondary(dir, 'b', 'c', logs);
    const a = await secondary(dir, 'a', 'b', logs);
    await Promise.race([loopBackoff(a), loopBackoff(b), loopBackoff(c)]);
    expect(logs.entries.some((e) => /loop/.test(e.message))).toBe(true);
  });

  it('closed where the closing node still has an old path: a changed path is announced downstream, without heartbeats, and the loop found', async () => {
    const dir = await tempDir();
    const logs = new LogCollector();
    // Heartbeats off: only the announcements of changed paths carry them after a welcome.
    const s1 = await secondary(dir, 's1', 'nowhere-1', logs, 0);
    const s2 = await secondary(dir, 's2', 'nowhere-2', logs, 0);
    const s3 = await secondary(dir, 's3', 's2', logs, 0);
    await waitForState(s3, 'connected.link.replicating');
    // s3 learned s2's path when s2 replicated from nobody; now s2 replicates from s1.
    s2.setReplicationAddress(join(dir, 's1.sock'));
    await waitForState(s2, 'connected.link.replicating');
    // s1 -> s3 closes s1 -> s3 -> s2 -> s1.
    s1.setReplicationAddress(join(dir, 's3.sock'));
    await Promise.race([loopBackoff(s1), loopBackoff(s2), loopBackoff(s3)]);
  });

  it('is not seen once the link it needed is gone: a secondary moved away forgets its old upstream path, so the node it followed may follow it', async () => {
    const dir = await tempDir();
    const logs = new LogCollector();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: join(dir, 'p.sock'), fsync: false });
    open.push(primary);
    const x = await secondary(dir, 'x', 'p', logs);
    const s1 = await secondary(dir, 's1', 'x', logs);
    await waitForState(s1, 'connected.link.replicating');
    // s1 leaves x (its path was s1, x, p); then x may replicate from s1: no loop.
    s1.setReplicationAddress(join(dir, 'nowhere.sock'));
    await waitForState(s1, 'backoff');
    x.setReplicationAddress(join(dir, 's1.sock'));
    await waitForState(x, 'connected.link.replicating');
    expect(logs.entries.filter((e) => /loop/.test(e.message))).toEqual([]);
  });

  it('is not seen behind an upstream of an older build, whose welcome has no path: the path is then the node alone', async () => {
    const dir = await tempDir();
    const logs = new LogCollector();
    const source = await FileStorage.open(join(dir, 'source.fs'), { create: true, fsync: false });
    // A native primary of an older build: a welcome without upstreamPath, then silence.
    const older = await FakeServer.start((c) => {
      void (async () => {
        await c.frame(0);
        const hello = decodeNative(await c.frame(1), createNativeUnpackr(), 'secondary');
        if (hello.type === 'hello') c.sendRaw(nativeOutbound(source, hello.startTid, { blobs: false }).welcome(source.lastTransaction())!);
      })().catch(() => undefined);
    });
    try {
      const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: join(dir, 'p.sock'), fsync: false });
      open.push(primary);
      const s1 = await secondary(dir, 's1', 'p', logs);
      const s2 = await secondary(dir, 's2', 's1', logs);
      await waitForState(s2, 'connected.link.replicating'); // its path: s2, s1, p
      s2.setReplicationAddress(older.address);
      await older.connection(0);
      await waitForState(s2, 'connected.link.replicating'); // its path: s2 alone
      s1.setReplicationAddress(join(dir, 's2.sock'));
      await waitForState(s1, 'connected.link.replicating');
      expect(logs.entries.filter((e) => /loop/.test(e.message))).toEqual([]);
    } finally {
      for (const n of open.splice(0).reverse()) await n.close();
      await older.close();
      await source.close();
    }
  });

  it('is not seen in a chain primary -> s1 -> s2, which replicates every transaction', async () => {
    const dir = await tempDir();
    const logs = new LogCollector();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: join(dir, 'p.sock'), fsync: false });
    open.push(primary);
    await secondary(dir, 's1', 'p', logs);
    const s2 = await secondary(dir, 's2', 's1', logs);
    const [, last] = await commitMany(primary.storage, 2);
    await waitForTid(s2, last!);
    expect(logs.entries.filter((e) => /loop/.test(e.message))).toEqual([]);
  });
});

describe('a secondary told its upstream path', () => {
  it('sends its node id in hello, and drops the connection when a later heartbeat puts it on the path (a loop closed elsewhere)', async () => {
    const dir = await tempDir();
    const source = await FileStorage.open(join(dir, 'source.fs'), { create: true, fsync: false });
    const nodeId = Buffer.from('0123456789abcdef', 'hex');
    const other = Buffer.from('fedcba9876543210', 'hex');
    let path = [other];
    const hellos: Buffer[] = [];
    const fake = await FakeServer.start((c, index) => {
      if (index !== 0) return;
      void (async () => {
        await c.frame(0);
        const hello = decodeNative(await c.frame(1), createNativeUnpackr(), 'secondary');
        if (hello.type !== 'hello') throw new Error(`expected hello, got ${hello.type}`);
        if (hello.nodeId) hellos.push(hello.nodeId);
        const codec = nativeOutbound(source, hello.startTid, { blobs: false, upstreamPath: () => path });
        c.sendRaw(codec.welcome(source.lastTransaction())!);
        path = [other, nodeId];
        c.sendRaw(codec.heartbeat!(source.lastTransaction(), Date.now())!);
      })().catch(() => undefined);
    });
    const logs = new LogCollector();
    const s = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: fake.address, fsync: false, reconnect: FAST_RECONNECT, nodeId, log: logs.log });
    try {
      const warning = await logs.waitFor((e) => e.message.startsWith('replication from'));
      expect(warning.message).toMatch(/: replication loop: 127\.0\.0\.1:\d+ replicates from this node, and no node on the loop is a primary; point one of them at the primary, or promote one$/);
      expect(hellos).toEqual([nodeId]);
    } finally {
      await s.close();
      await fake.close();
      await source.close();
    }
  });

  it('refuses a node id that is not 8 bytes', async () => {
    const dir = await tempDir();
    await expect(Secondary.open({ path: join(dir, 's.fs'), replicateFrom: '127.0.0.1:1', nodeId: Buffer.alloc(4) })).rejects.toThrow('nodeId must be 8 bytes');
  });
});
