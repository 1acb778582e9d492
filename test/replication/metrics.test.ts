// The metrics endpoint over HTTP on 127.0.0.1: a primary and a secondary each
// serve their own registry; values move after commits (last tid time,
// transactions and bytes on both sides, connected secondaries, lag, actor
// states), and a reconnect is counted.

import { request } from 'node:http';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { METRICS_REQUESTS_PER_SOCKET, metricsUrl, serveMetrics } from '../../src/node/metricsServer.js';
import { createConnection } from 'node:net';
import { Primary } from '../../src/replication/primary.js';
import { Secondary } from '../../src/replication/secondary.js';
import { requestStatus } from '../../src/replication/statusClient.js';
import { tidFromTime, tidToSeconds } from '../../src/storage/timestamp.js';
import { ReplicationMetrics } from '../../src/replication/metrics.js';
import { VirtualClock } from '../../src/sim/clock.js';
import { NEVER } from 'rxjs';
import { createActor, createMachine } from 'xstate';
import type { ReplicationAddress } from '../../src/ports/transport.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { commitMany, waitForTid } from './helpers.js';
import { FAST_RECONNECT, FramedSocket, settleUntil } from './netHelpers.js';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { createNativePackr, encodeNative, nativeProtocolName } from '../../src/wire/native.js';

afterAll(cleanupTempDirs);

function get(address: ReplicationAddress, path = '/metrics'): Promise<{ status: number; type: string; body: string }> {
  const where = address.kind === 'tcp' ? { host: address.host, port: address.port } : { socketPath: address.path };
  return new Promise((resolve, reject) => {
    const req = request({ ...where, path, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), body }));
    });
    req.on('error', reject);
    req.end();
  });
}

/** The value of one sample (`name{labels} value`), or null when absent. */
function sample(text: string, name: string, labels: Record<string, string> = {}): number | null {
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const m = /^([a-z_]+)(\{[^}]*\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) return Number(m[3]);
  }
  return null;
}

async function scrape(address: ReplicationAddress | null): Promise<string> {
  const r = await get(address!);
  expect(r.status).toBe(200);
  expect(r.type).toMatch(/^text\/plain/);
  return r.body;
}

describe('metrics endpoint', () => {
  it('serves each node its own registry, and the values move after commits', async () => {
    const dir = await tempDir();
    const primary = await Primary.open({
      path: join(dir, 'p.fs'),
      replicateTo: '127.0.0.1:0',
      fsync: false,
      metricsAddress: '127.0.0.1:0',
      heartbeatIntervalMs: 20,
    });
    const secondary = await Secondary.open({
      path: join(dir, 's.fs'),
      replicateFrom: primary.address,
      fsync: false,
      metricsAddress: '127.0.0.1:0',
      reconnect: FAST_RECONNECT,
    });
    try {
      const first = await commitMany(primary.storage, 3);
      await waitForTid(secondary, first.at(-1)!);
      await settleUntil(() => primary.secondaries()[0]?.ackedTid?.equals(first.at(-1)!) ?? false);
      // Catch-up may still be finding the end of the log (its last step waits its turn).
      await settleUntil(() => primary.secondaries()[0]?.state === 'live');
      let p = await scrape(primary.metricsAddress);
      let s = await scrape(secondary.metricsAddress);
      expect(sample(p, 'zrs_last_transaction_timestamp_seconds')).toBeCloseTo(tidToSeconds(first.at(-1)!), 3);
      expect(sample(s, 'zrs_last_transaction_timestamp_seconds')).toBeCloseTo(tidToSeconds(first.at(-1)!), 3);
      expect(sample(p, 'zrs_connected_secondaries')).toBe(1);
      expect(sample(p, 'zrs_transactions_committed_total')).toBe(3);
      expect(sample(p, 'zrs_transactions_sent_total')).toBe(3);
      expect(sample(s, 'zrs_transactions_received_total')).toBe(3);
      const peer = primary.secondaries()[0]!.peer;
      expect(sample(p, 'zrs_secondary_lag_seconds', { peer })).toBe(0);
      const bytesSent1 = sample(p, 'zrs_bytes_sent_total')!;
      expect(bytesSent1).toBeGreaterThan(0);
      expect(sample(s, 'zrs_bytes_received_total')).toBeGreaterThan(0);
      expect(sample(p, 'zrs_secondary_bytes_sent', { peer })).toBeGreaterThan(0);
      expect(sample(s, 'zrs_actor_state', { actor: 'connection', state: 'connected' })).toBe(1);
      expect(sample(s, 'zrs_actor_state', { actor: 'connection', state: 'backoff' })).toBe(0);
      expect(sample(p, 'zrs_actor_state', { actor: `session ${peer}`, state: 'live' })).toBe(1);
      expect(sample(s, 'zrs_reconnects_total')).toBe(0);

      const more = await commitMany(primary.storage, 4);
      await waitForTid(secondary, more.at(-1)!);
      // A heartbeat after the commits gives the secondary its own lag estimate.
      await settleUntil(() => secondary.lastHeartbeat?.lastTid.equals(more.at(-1)!) ?? false);
      p = await scrape(primary.metricsAddress);
      s = await scrape(secondary.metricsAddress);
      expect(sample(p, 'zrs_last_transaction_timestamp_seconds')).toBeCloseTo(tidToSeconds(more.at(-1)!), 3);
      expect(sample(p, 'zrs_transactions_sent_total')).toBe(7);
      expect(sample(s, 'zrs_transactions_received_total')).toBe(7);
      expect(sample(p, 'zrs_bytes_sent_total')).toBeGreaterThan(bytesSent1);
      expect(sample(s, 'zrs_bytes_received_total')).toBeGreaterThan(0);
      expect(sample(s, 'zrs_bytes_sent_total')).toBeGreaterThan(0); // handshake and acks
      expect(sample(s, 'zrs_replication_lag_seconds')).toBe(0);
      expect(sample(s, 'zrs_heartbeat_age_seconds')).toBeGreaterThanOrEqual(0);
      // Not a global registry: the primary's endpoint has no secondary-only samples.
      expect(sample(p, 'zrs_transactions_received_total')).toBe(0);

      // A status request connects to the same address, but it is no secondary.
      expect((await requestStatus(primary.address)).role).toBe('primary');
      p = await scrape(primary.metricsAddress);
      expect(sample(p, 'zrs_secondary_connections_total')).toBe(1);
      expect(sample(p, 'zrs_connected_secondaries')).toBe(1);

      expect((await get(primary.metricsAddress!, '/nothing')).status).toBe(404);
    } finally {
      await secondary.close();
      await primary.close();
    }
  });

  it('serves on a Unix socket and names it as one (unix:PATH:/metrics, not a malformed http URL); values not known yet are absent', async () => {
    const dir = await tempDir();
    const path = join(dir, 'metrics.sock');
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, metricsAddress: path, heartbeatIntervalMs: 0 });
    const secondary = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: primary.address, fsync: false, metricsAddress: '127.0.0.1:0', reconnect: FAST_RECONNECT });
    try {
      expect(primary.metricsAddress).toEqual({ kind: 'unix', path });
      expect(metricsUrl(primary.metricsAddress!)).toBe(`unix:${path}:/metrics`);
      expect(metricsUrl({ kind: 'tcp', host: '::1', port: 9100 })).toBe('http://[::1]:9100/metrics');
      await settleUntil(() => primary.secondaries()[0]?.state === 'live');
      const p = await scrape(primary.metricsAddress);
      expect(sample(p, 'zrs_connected_secondaries')).toBe(1);
      // Nothing to tell yet: absent, not 0 (an empty storage; no heartbeat ever came).
      const s = await scrape(secondary.metricsAddress);
      for (const text of [p, s]) {
        for (const name of ['zrs_last_transaction_timestamp_seconds', 'zrs_replication_lag_seconds', 'zrs_heartbeat_age_seconds']) expect(sample(text, name), name).toBeNull();
      }
    } finally {
      await secondary.close();
      await primary.close();
    }
  });

  it('names each secondary of a Unix socket apart (the path and its connection number), in sessions and in metrics', async () => {
    const dir = await tempDir();
    const socket = join(dir, 'p.sock');
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: socket, fsync: false, metricsAddress: '127.0.0.1:0', auditPath: null });
    const secondaries = await Promise.all(['a', 'b'].map((n) => Secondary.open({ path: join(dir, `${n}.fs`), replicateFrom: socket, fsync: false, reconnect: FAST_RECONNECT, auditPath: null })));
    try {
      const [tid] = await commitMany(primary.storage, 1);
      for (const s of secondaries) await waitForTid(s, tid!);
      await settleUntil(() => primary.secondaries().filter((s) => s.state === 'live').length === 2);
      const peers = primary.secondaries().map((s) => s.peer);
      expect(new Set(peers).size).toBe(2);
      for (const peer of peers) expect(peer).toMatch(new RegExp(`^${socket.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}#\\d+$`));
      const text = await scrape(primary.metricsAddress);
      for (const peer of peers) expect(sample(text, 'zrs_secondary_bytes_sent', { peer }), peer).toBeGreaterThan(0);
    } finally {
      for (const s of secondaries) await s.close();
      await primary.close();
    }
  });

  it('names the metrics address when it cannot listen there, and the storage is left unlocked', async () => {
    const dir = await tempDir();
    const first = await Primary.open({ path: join(dir, 'a.fs'), replicateTo: '127.0.0.1:0', fsync: false, metricsAddress: '127.0.0.1:0', auditPath: null });
    try {
      const taken = first.metricsAddress as Extract<ReplicationAddress, { kind: 'tcp' }>;
      const open = () => Primary.open({ path: join(dir, 'b.fs'), replicateTo: '127.0.0.1:0', fsync: false, metricsAddress: `127.0.0.1:${taken.port}`, auditPath: null });
      await expect(open()).rejects.toThrow(new RegExp(`^metrics address 127\\.0\\.0\\.1:${taken.port}: listen EADDRINUSE`));
      // Nothing of it stays held: the same storage opens once the address is free.
      const again = await Primary.open({ path: join(dir, 'b.fs'), replicateTo: '127.0.0.1:0', fsync: false, auditPath: null });
      await again.close();
    } finally {
      await first.close();
    }
  });

  it("measures a native secondary's lag from what it acknowledged, never from what it was sent", async () => {
    const dir = await tempDir();
    let nowMs = Date.UTC(2026, 0, 1);
    const storage = await FileStorage.open(join(dir, 'p.fs'), { create: true, fsync: false, now: () => nowMs });
    const primary = await Primary.open({ path: join(dir, 'p.fs'), storage, replicateTo: '127.0.0.1:0', metricsAddress: '127.0.0.1:0', auditPath: null });
    const peer = await FramedSocket.connect(primary.address);
    try {
      const [first] = await commitMany(storage, 1);
      // A secondary that holds the first transaction, receives everything and never acknowledges.
      peer.send(nativeProtocolName());
      peer.send(encodeNative({ type: 'hello', startTid: first!, generations: [], options: { blobs: false } }, createNativePackr()));
      await peer.frame(0);
      await settleUntil(() => primary.secondaries()[0]?.state === 'live');
      nowMs += 100_000;
      const [later] = await commitMany(storage, 1);
      await settleUntil(() => primary.secondaries()[0]?.lastSentTid?.equals(later!) ?? false);
      const peerName = primary.secondaries()[0]!.peer;
      expect(sample(await scrape(primary.metricsAddress), 'zrs_secondary_lag_seconds', { peer: peerName })).toBeCloseTo(100, 0);
    } finally {
      peer.destroy();
      await primary.close();
    }
  });

  it('holds a client that pipelines thousands of requests to a few readings of the registry', async () => {
    let readings = 0;
    // A reading takes a while (a large registry): requests that come meanwhile share it.
    const slowReading = async (): Promise<string> => {
      readings += 1;
      await new Promise((r) => setTimeout(r, 20));
      return `reading ${readings}\n`.repeat(100);
    };
    const server = await serveMetrics({ contentType: 'text/plain', metrics: slowReading }, { kind: 'tcp', host: '127.0.0.1', port: 0 });
    const address = server.address as { host: string; port: number };
    const requests = 2000;
    try {
      const statuses = await Promise.all(
        Array.from({ length: 4 }, () =>
          new Promise<number[]>((resolve, reject) => {
            const socket = createConnection({ host: address.host, port: address.port });
            let text = '';
            socket.setEncoding('latin1');
            socket.on('data', (chunk: string) => {
              text += chunk;
              const found = [...text.matchAll(/^HTTP\/1\.1 (\d{3})/gm)].map((m) => Number(m[1]));
              if (found.length === requests) {
                socket.destroy();
                resolve(found);
              }
            });
            socket.on('error', reject);
            socket.write('GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n'.repeat(requests));
          }),
        ),
      );
      for (const st of statuses) {
        expect(st.filter((c) => c === 200)).toHaveLength(METRICS_REQUESTS_PER_SOCKET);
        expect(st.filter((c) => c !== 200).every((c) => c === 503)).toBe(true);
      }
      // 400 answered with the registry, in far fewer readings (each connection's pipelined requests arrive together).
      expect(readings).toBeLessThan(METRICS_REQUESTS_PER_SOCKET);
    } finally {
      await server.close();
    }
  });

  it("a promoted secondary's registry counts the bytes its kept listener and sessions move", async () => {
    const dir = await tempDir();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, auditPath: null });
    const b = await Secondary.open({ path: join(dir, 'b.fs'), replicateFrom: primary.address, replicateTo: '127.0.0.1:0', fsync: false, auditPath: null, metricsAddress: '127.0.0.1:0', reconnect: FAST_RECONNECT });
    const [t] = await commitMany(primary.storage, 2);
    await waitForTid(b, t!);
    await primary.close();
    const promoted = await b.promote();
    const c = await Secondary.open({ path: join(dir, 'c.fs'), replicateFrom: promoted.address, fsync: false, auditPath: null, reconnect: FAST_RECONNECT });
    try {
      const tids = await commitMany(promoted.storage, 5);
      await waitForTid(c, tids.at(-1)!);
      const text = await scrape(promoted.metricsAddress);
      expect(sample(text, 'zrs_transactions_sent_total')).toBeGreaterThanOrEqual(5);
      expect(sample(text, 'zrs_bytes_sent_total')).toBeGreaterThan(0);
      expect(sample(text, 'zrs_bytes_received_total')).toBeGreaterThan(0); // the new secondary's hello and acks
    } finally {
      await c.close();
      await promoted.close();
    }
  });

  it('counts reconnects and shows the backoff state while the primary is away', async () => {
    const dir = await tempDir();
    // A Unix socket, so the primary can come back at the same address (a TCP port let go could be taken by a test in parallel).
    let primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: join(dir, 'p.sock'), fsync: false });
    const address = primary.address;
    const secondary = await Secondary.open({
      path: join(dir, 's.fs'),
      replicateFrom: address,
      fsync: false,
      metricsAddress: '127.0.0.1:0',
      reconnect: { initialMs: 20, maxMs: 40 },
    });
    try {
      await waitForTid(secondary, (await commitMany(primary.storage, 1))[0]!);
      await primary.close();
      await settleUntil(() => (secondary.machine.getSnapshot().context.counters.connects as number) >= 3);
      const s = await scrape(secondary.metricsAddress);
      expect(sample(s, 'zrs_reconnects_total')).toBeGreaterThanOrEqual(2);
      const states = ['connecting', 'backoff'].map((state) => sample(s, 'zrs_actor_state', { actor: 'connection', state }));
      expect(states.reduce((a, b) => a! + b!, 0)).toBe(1);
      primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: address, fsync: false });
      const t = await commitMany(primary.storage, 1);
      await waitForTid(secondary, t[0]!);
    } finally {
      await secondary.close();
      await primary.close();
    }
  });
});

describe("a secondary's lag gauge", () => {
  it('is absent while the secondary holds nothing (it showed the upstream tid\'s seconds since 1970) and follows the heartbeat after', async () => {
    const metrics = new ReplicationMetrics(new VirtualClock());
    let own: Buffer = Buffer.alloc(8);
    const upstream = tidFromTime(Date.UTC(2026, 0, 1, 0, 1));
    metrics.watchStorage({ lastTransaction: () => own, commits$: NEVER });
    metrics.watchSecondary({ machine: createActor(createMachine({})).start(), lastHeartbeat: { lastTid: upstream, clockMs: 0, receivedMs: 0 } });
    try {
      expect(sample(await metrics.metrics(), 'zrs_replication_lag_seconds')).toBeNull();
      own = tidFromTime(Date.UTC(2026, 0, 1));
      expect(sample(await metrics.metrics(), 'zrs_replication_lag_seconds')).toBe(60);
    } finally {
      metrics.close();
    }
  });
});
