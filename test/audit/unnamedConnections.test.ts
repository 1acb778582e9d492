// Connections that never name a replication protocol are recorded one by one
// only up to a burst per interval; the rest are counted.

import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { AUDIT_UNNAMED_BURST, AUDIT_UNNAMED_INTERVAL_MS } from '../../src/audit/actorAudit.js';
import { AuditLog, readAuditLogStrict } from '../../src/audit/auditLog.js';
import { auditServerSessions } from '../../src/audit/nodeAudit.js';
import { seededRandom } from '../../src/ports/random.js';
import { ReplicationServer } from '../../src/replication/server.js';
import { VirtualClock } from '../../src/sim/clock.js';
import { SimNetwork } from '../../src/sim/network.js';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { createNativePackr, encodeNative, nativeProtocolName } from '../../src/wire/native.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { SimClients } from '../replication/netHelpers.js';

afterAll(cleanupTempDirs);

describe('the audit of a flood of connections naming no replication protocol', () => {
  it('records the first of each interval one by one and counts the rest, while a secondary is recorded as always (simulated network, virtual clock)', async () => {
    const dir = await tempDir();
    const clock = new VirtualClock();
    const net = new SimNetwork({ clock, random: seededRandom(9), latencyMs: { min: 1, max: 1 } });
    const storage = await FileStorage.open(join(dir, 'p.fs'), { create: true, fsync: false });
    const audit = await AuditLog.open(join(dir, 'p.audit'), { node: 'p', clock, log: () => undefined });
    const server = await ReplicationServer.start({
      storage,
      address: { kind: 'tcp', host: 'p', port: 5000 },
      transport: net.transport('p'),
      clock,
      log: () => undefined,
      heartbeatIntervalMs: 0,
    });
    const stop = auditServerSessions(audit, server);
    const clients = new SimClients(clock, net, server.address);
    const flood = async (n: number): Promise<void> => {
      for (let i = 0; i < n; i++) await clients.bogus();
      await clients.drive(() => server.sessionCount === 0);
    };
    try {
      await flood(AUDIT_UNNAMED_BURST + 3);
      // A new interval: the count is written, and the next connection recorded again.
      clock.advance(AUDIT_UNNAMED_INTERVAL_MS);
      await flood(1);
      await flood(AUDIT_UNNAMED_BURST + 1);
      // A node naming a replication protocol this one does not speak is recorded, refusal and all.
      const otherVersion = await clients.open([Buffer.from('zrs-ts/9')]);
      await clients.drive(() => otherVersion.closed() && server.sessionCount === 0);
      // A secondary past the burst is recorded whole.
      const hello = encodeNative({ type: 'hello', startTid: Buffer.alloc(8), generations: [], options: { blobs: false } }, createNativePackr());
      const s = await clients.open([Buffer.from(nativeProtocolName()), hello]);
      await clients.drive(() => s.replies() > 0);
      s.stream.destroy();
      await clients.drive(() => server.sessionCount === 0);
    } finally {
      stop();
      await server.close();
      await audit.close();
      await storage.close();
    }
    const records = await readAuditLogStrict(join(dir, 'p.audit'));
    const refusals = records.filter((r) => r.kind === 'handshake' && r.details.verdict === 'refused');
    expect(refusals).toHaveLength(2 * AUDIT_UNNAMED_BURST + 1);
    expect(refusals.every((r) => r.details.code === 'unsupported-version')).toBe(true);
    expect(refusals.filter((r) => r.details.protocol !== 'bogus').map((r) => r.details.protocol)).toEqual(['zrs-ts/9']);
    // Past the burst: the first counted at once, the next two once the interval passed, the last two when the audit stopped.
    const counts = records.filter((r) => r.kind === 'connections-unrecorded');
    expect(counts.map((r) => r.details.count)).toEqual([1, 2, 2]);
    expect(counts[0]!.details).toMatchObject({ lastPeer: expect.stringMatching(/^x#c\d+$/), lastReason: expect.stringMatching(/^refused \(unsupported-version\)/) });
    // The first count is written as the next interval starts, before that interval's first connection.
    const firstCount = records.indexOf(counts[0]!);
    expect(records.slice(0, firstCount).filter((r) => r.kind === 'handshake')).toHaveLength(AUDIT_UNNAMED_BURST);
    expect(records.filter((r) => r.kind === 'connection')).toHaveLength(2 * AUDIT_UNNAMED_BURST + 2);
    expect(records.filter((r) => r.kind === 'handshake' && r.details.verdict === 'welcome')).toHaveLength(1);
    expect(records.filter((r) => r.kind === 'disconnection')).toHaveLength(2 * AUDIT_UNNAMED_BURST + 2);
  });
});
