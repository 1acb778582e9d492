// The native status request over real loopback sockets: a primary and a
// chained secondary each answer with one `status` message (the same object
// as Primary.status() / Secondary.status()) and close, without replicating.

import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Primary } from '../../src/replication/primary.js';
import { ReplicationServer } from '../../src/replication/server.js';
import { parseAddress } from '../../src/replication/address.js';
import { socketTransport } from '../../src/node/socketTransport.js';
import { systemClock } from '../../src/node/clock.js';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { Secondary } from '../../src/replication/secondary.js';
import { requestStatus, StatusConnectError, StatusReplyError } from '../../src/replication/statusClient.js';
import type { NodeStatus } from '../../src/replication/nodeStatus.js';
import { tidToSeconds } from '../../src/storage/timestamp.js';
import { encodeFrame } from '../../src/wire/framing.js';
import { createNativePackr, encodeNativeFrame } from '../../src/wire/native.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { commitMany, waitForTid } from './helpers.js';
import { FramedSocket, LogCollector, until } from './netHelpers.js';

afterAll(cleanupTempDirs);

/** A status without the parts that change from one moment to the next (a heartbeat may arrive between two reads). */
function stable(s: NodeStatus): Omit<NodeStatus, 'clockMs'> {
  const { clockMs: _c, ...rest } = s;
  return {
    ...rest,
    upstream: rest.upstream && { ...rest.upstream, lastHeartbeat: null },
    sessions: rest.sessions.map((x) => ({ ...x, bytesSent: 0 })),
  };
}

describe('status request', () => {
  it('a primary and a chained secondary answer with their status, then close', async () => {
    const dir = await tempDir();
    const plog = new LogCollector();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, name: 'main', log: plog.log });
    const s1 = await Secondary.open({ path: join(dir, 's1.fs'), replicateFrom: primary.address, replicateTo: '127.0.0.1:0', fsync: false, name: 'middle' });
    const s2 = await Secondary.open({ path: join(dir, 's2.fs'), replicateFrom: s1.replicationAddress!, fsync: false });
    try {
      const tids = await commitMany(primary.storage, 5);
      const last = tids.at(-1)!;
      await waitForTid(s2, last);
      // Wait until both downstream sessions acknowledged the last tid.
      await until(() => primary.status(), (s) => s.sessions[0]?.ackedTid?.equals(last) === true);
      await until(() => s1.status(), (s) => s.sessions[0]?.ackedTid?.equals(last) === true);

      const p = await requestStatus(primary.address);
      expect(p.role).toBe('primary');
      expect(p.name).toBe('main');
      expect(p.lastTid.equals(last)).toBe(true);
      expect(p.lastTimeSeconds).toBe(tidToSeconds(last));
      expect(p.fileSize).toBe(primary.storage.durableEnd);
      expect(p.upstream).toBeNull();
      expect(p.generation).toEqual(primary.generation);
      // The asking session is not listed: only s1.
      expect(p.sessionCount).toBe(1);
      expect(p.sessions[0]).toMatchObject({ protocol: 'zrs-ts/1', state: 'live' });
      expect(p.sessions[0]!.lastSentTid!.equals(last)).toBe(true);
      expect(p.sessions[0]!.ackedTid!.equals(last)).toBe(true);
      expect(p.sessions[0]!.bytesSent).toBeGreaterThan(0);
      expect(stable(p)).toEqual(stable(primary.status()));

      const m = await requestStatus(s1.replicationAddress!);
      expect(m.role).toBe('secondary');
      expect(m.name).toBe('middle');
      expect(m.lastTid.equals(last)).toBe(true);
      expect(m.upstream).toMatchObject({ protocol: 'zrs-ts/1', state: 'connected.replicating', lagSeconds: 0 });
      expect(m.upstream!.address).toBe(`127.0.0.1:${(primary.address as { port: number }).port}`);
      expect(m.upstream!.primaryLastTid!.equals(last)).toBe(true);
      expect(m.sessionCount).toBe(1);
      expect(m.sessions[0]).toMatchObject({ protocol: 'zrs-ts/1', state: 'live' });
      expect(stable(m)).toEqual(stable(s1.status()));

      // A leaf secondary has no server, but its status() still works.
      expect(s2.status()).toMatchObject({ role: 'secondary', name: null, sessions: [], sessionCount: 0 });

      await plog.waitFor((e) => e.message.includes('closed: status request answered') && e.level === 'info');
    } finally {
      await s2.close();
      await s1.close();
      await primary.close();
    }
  });

  it('reads the reply frame by frame and the node closes after it', async () => {
    const dir = await tempDir();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false });
    try {
      const sock = await FramedSocket.connect(primary.address);
      sock.socket.write(encodeFrame(Buffer.from('zrs-ts/1')));
      sock.socket.write(encodeNativeFrame({ type: 'status-request' }, createNativePackr()));
      await sock.closed;
      const frames: Buffer[] = [];
      sock.frames$.subscribe((f) => frames.push(f));
      expect(frames).toHaveLength(1);
      expect(primary.secondaries()).toEqual([]);
      // An empty primary: zero tid, no time, only the magic in the file.
      const s = await requestStatus(primary.address);
      expect(s.lastTid.equals(Buffer.alloc(8))).toBe(true);
      expect(s.lastTimeSeconds).toBeNull();
      expect(s.fileSize).toBe(4);
    } finally {
      await primary.close();
    }
  });

  it('reports a node that cannot be reached, and one that gives no status', async () => {
    const dir = await tempDir();
    await expect(requestStatus(join(dir, 'missing.sock'))).rejects.toBeInstanceOf(StatusConnectError);
    await expect(requestStatus(join(dir, 'missing.sock'))).rejects.toThrow(/^can't connect to .*missing\.sock: /);
    // A zc.zrs-like node: reads and closes without a reply.
    const { createServer } = await import('node:net');
    const server = createServer((s) => s.once('data', () => s.end()));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const port = (server.address() as { port: number }).port;
    try {
      await expect(requestStatus(`127.0.0.1:${port}`)).rejects.toBeInstanceOf(StatusReplyError);
      await expect(requestStatus(port, { timeoutMs: 5_000 })).rejects.toThrow(/^no status from 127\.0\.0\.1:\d+: the node closed the connection without a status \(.*or a port with <ssl> asked without TLS: --ssl-certificate on the command line, a tlsTransport in the library\)$/);
    } finally {
      await new Promise((r) => server.close(r));
    }
    // A web server (a metrics address given by mistake): its reply is named, not read as a frame length.
    const web = createServer((s) => s.once('data', () => s.end('HTTP/1.1 400 Bad Request\r\n\r\n')));
    await new Promise<void>((r) => web.listen(0, '127.0.0.1', () => r()));
    try {
      await expect(requestStatus((web.address() as { port: number }).port)).rejects.toThrow(/: this is a web server \(it answered in HTTP: a metrics address\?\), not a replication address$/);
    } finally {
      await new Promise((r) => web.close(r));
    }
    // Another server that speaks first in text (an SSH banner): named too.
    const ssh = createServer((s) => s.resume().end('SSH-2.0-OpenSSH_9.6\r\n'));
    await new Promise<void>((r) => ssh.listen(0, '127.0.0.1', () => r()));
    try {
      await expect(requestStatus((ssh.address() as { port: number }).port)).rejects.toThrow(/: this is an SSH server, not a replication address$/);
    } finally {
      await new Promise((r) => ssh.close(r));
    }
  });

  it('a session whose answer throws (a failed action) is ended and logged, the socket closed, and the server still closes', async () => {
    const dir = await tempDir();
    const logs = new LogCollector();
    const storage = await FileStorage.open(join(dir, 'p.fs'), { create: true, fsync: false });
    const nodeStatus = (): NodeStatus => {
      throw new Error('status not available');
    };
    const server = await ReplicationServer.start({ storage, address: parseAddress('127.0.0.1:0'), transport: socketTransport, clock: systemClock, log: logs.log, nodeStatus });
    try {
      await expect(requestStatus(server.address)).rejects.toThrow(StatusReplyError);
      const failed = await logs.waitFor((e) => e.fields?.reason === 'actor-failed');
      expect(failed.level).toBe('error');
      expect(failed.message).toMatch(/closed: the session failed: status not available/);
    } finally {
      await server.close();
      await storage.close();
    }
  });
});

