// A flood of short connections to a replication address is counted in the
// log, not written line by line; a secondary is never hidden by it.

import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { seededRandom } from '../../src/ports/random.js';
import { ConnectionLogGate } from '../../src/replication/log.js';
import { ReplicationServer } from '../../src/replication/server.js';
import { VirtualClock } from '../../src/sim/clock.js';
import { SimNetwork } from '../../src/sim/network.js';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { createNativePackr, encodeNative, nativeProtocolName } from '../../src/wire/native.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { SimClients } from './netHelpers.js';

afterAll(cleanupTempDirs);

describe('ConnectionLogGate', () => {
  it('logs the first connections of an interval line by line, counts the quiet ones past them, and lets errors and identified connections through', () => {
    const clock = new VirtualClock();
    const lines: string[] = [];
    const gate = new ConnectionLogGate(clock, (level, message) => void lines.push(`${level} ${message}`), 2, 10_000);
    for (const peer of ['a', 'b']) {
      const c = gate.open(peer);
      c.log('warn', `refused ${peer}`);
      c.ended();
    }
    expect(lines).toEqual(['info connection from a', 'warn refused a', 'info connection from b', 'warn refused b']);
    lines.length = 0;

    // Past the burst: held back, but an error goes out; the first quiet one is counted at once.
    const c = gate.open('c');
    c.log('warn', 'refused c');
    c.log('error', 'the session failed: c');
    c.ended();
    expect(lines).toEqual(['error the session failed: c', 'info 1 more connection(s) not logged line by line (past 2 in 10 s); the last: refused c']);
    lines.length = 0;

    // Later ones in the interval wait for it, counted in one line.
    for (const peer of ['d', 'e']) gate.open(peer).ended();
    expect(lines).toEqual([]);
    clock.advance(10_000);
    expect(lines).toEqual(['info 2 more connection(s) not logged line by line (past 2 in 10 s); the last: connection from e']);
    lines.length = 0;

    // A new interval logs line by line again; one past its burst that identifies itself is logged from then on.
    gate.open('f').ended();
    gate.open('g').ended();
    const h = gate.open('h');
    h.log('info', 'before h identified itself');
    h.identified();
    h.log('info', 'session with h closed');
    h.ended();
    expect(lines).toEqual(['info connection from f', 'info connection from g', 'info connection from h', 'info session with h closed']);
    lines.length = 0;

    // A count still waiting for its interval (the last count line went out at the start of this one) goes out on close.
    gate.open('i').ended();
    gate.open('j').ended();
    expect(lines).toEqual([]);
    gate.close();
    expect(lines).toEqual(['info 2 more connection(s) not logged line by line (past 2 in 10 s); the last: connection from j']);
  });
});

describe('a replication server past its connection log burst', () => {
  it('counts a refused connection instead of logging it, and logs a secondary it serves (simulated network, virtual clock)', async () => {
    const clock = new VirtualClock();
    const net = new SimNetwork({ clock, random: seededRandom(5), latencyMs: { min: 1, max: 1 } });
    const storage = await FileStorage.open(join(await tempDir(), 'p.fs'), { create: true, fsync: false });
    const lines: string[] = [];
    const server = await ReplicationServer.start({
      storage,
      address: { kind: 'tcp', host: 'p', port: 5000 },
      transport: net.transport('p'),
      clock,
      log: (level, message) => void lines.push(`${level} ${message}`),
      connectionLogBurst: 1,
      heartbeatIntervalMs: 0,
    });
    const clients = new SimClients(clock, net, server.address);
    expect(lines.splice(0)).toEqual(['info replicating to p:5000']);
    try {
      const bogus = async (): Promise<void> => {
        await clients.bogus();
        await clients.drive(() => server.sessionCount === 0);
      };
      await bogus(); // within the burst: logged line by line
      const refusal = 'refused (unsupported-version): unsupported protocol "bogus" (this node speaks zrs-ts/1, zrs2.1, zrs2.0)';
      const [first, ...rest] = lines.splice(0);
      const peer = /^info connection from (x#c\d+)$/.exec(first!)?.[1];
      expect(peer).toBeDefined();
      expect(rest).toEqual([`warn refused secondary ${peer}: unsupported-version: ${refusal.slice(refusal.indexOf(': ') + 2)}`, `warn session with ${peer} closed: ${refusal}`]);

      await bogus(); // past it: one count line, naming its last line
      expect(lines.splice(0)).toEqual([expect.stringMatching(/^info 1 more connection\(s\) not logged line by line \(past 1 in 10 s\); the last: session with x#c\d+ closed: /)]);

      // Secondaries past the burst, native and zc.zrs's: each connection is logged once it is served, and its end as usual.
      const hello = encodeNative({ type: 'hello', startTid: Buffer.alloc(8), generations: [], options: { blobs: false } }, createNativePackr());
      for (const frames of [[Buffer.from(nativeProtocolName()), hello], [Buffer.from('zrs2.1'), Buffer.alloc(8)]]) {
        const s = await clients.open(frames);
        await clients.drive(() => lines.length > 0);
        expect(lines.splice(0)).toEqual([expect.stringMatching(/^info connection from x#c\d+$/)]);
        s.stream.destroy();
        await clients.drive(() => server.sessionCount === 0);
        expect(lines.splice(0)).toEqual([expect.stringMatching(/^(info|warn) session with x#c\d+ closed: /)]);
      }

      // A secondary refused (its start is past the primary's last tid) and a promote request are logged too.
      const ahead = encodeNative({ type: 'hello', startTid: Buffer.alloc(8, 0xff), generations: [], options: { blobs: false } }, createNativePackr());
      const refused = await clients.open([Buffer.from(nativeProtocolName()), ahead]);
      await clients.drive(() => refused.closed() && server.sessionCount === 0);
      expect(lines.splice(0)).toEqual([
        expect.stringMatching(/^info connection from x#c\d+$/),
        expect.stringMatching(/^warn refused secondary x#c\d+: tid-too-high: /),
        expect.stringMatching(/^warn session with x#c\d+ closed: refused \(tid-too-high\)/),
      ]);
      const promote = await clients.open([Buffer.from(nativeProtocolName()), encodeNative({ type: 'promote-request', force: false }, createNativePackr())]);
      await clients.drive(() => promote.closed() && server.sessionCount === 0);
      expect(lines.splice(0)).toEqual([
        expect.stringMatching(/^info connection from x#c\d+$/),
        expect.stringMatching(/^info session with x#c\d+ closed: promote request answered: refused \(not-promotable\)$/),
      ]);
      // A pack request too, answered whatever follows it (a frame after the request is not read).
      const ack = encodeNative({ type: 'ack', tid: Buffer.alloc(8, 1) }, createNativePackr());
      const pack = await clients.open([Buffer.from(nativeProtocolName()), encodeNative({ type: 'pack-request', time: 1_764_460_800, gc: true }, createNativePackr()), ack]);
      await clients.drive(() => pack.closed() && server.sessionCount === 0);
      expect(lines.splice(0)).toEqual([
        expect.stringMatching(/^info connection from x#c\d+$/),
        expect.stringMatching(/^info session with x#c\d+ closed: pack request answered: refused \(not-packable\)$/),
      ]);

      // A status request past the burst is counted; the count waiting for its interval goes out when the server closes.
      const status = await clients.open([Buffer.from(nativeProtocolName()), encodeNative({ type: 'status-request' }, createNativePackr())]);
      await clients.drive(() => status.closed() && server.sessionCount === 0);
      expect(lines).toEqual([]);
      await server.close();
      expect(lines.splice(0)).toEqual([expect.stringMatching(/^info 1 more connection\(s\) not logged line by line \(past 1 in 10 s\); the last: session with x#c\d+ closed: status request answered$/)]);
    } finally {
      await server.close();
      await storage.close();
    }
  });
});
