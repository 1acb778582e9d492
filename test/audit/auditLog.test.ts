// The audit log: records read back in order with consecutive sequence
// numbers; a truncated tail and a flipped byte are reported with the offset
// of the damaged record (never skipped); reopening moves a damaged tail aside
// and records that it did; a replication scenario leaves the expected kinds
// in both nodes' logs.

import { readFile, truncate, writeFile, open as openFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { AUDIT_MAGIC, AUDIT_MAX_PENDING_RECORDS, AuditLog, readAuditLog, readAuditLogStrict, type AuditRecord } from '../../src/audit/auditLog.js';
import { AuditLogDamagedError } from '../../src/errors.js';
import { openNodeAudit, promotionRunAgain } from '../../src/audit/nodeAudit.js';
import { Primary } from '../../src/replication/primary.js';
import { ReplicationServer } from '../../src/replication/server.js';
import { requestStatus } from '../../src/replication/statusClient.js';
import { Secondary } from '../../src/replication/secondary.js';
import { VirtualClock } from '../../src/sim/clock.js';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { interceptFileWrites } from '../helpers/fileWrites.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { onFileHandleSyncs } from '../helpers/fileSyncs.js';
import { commitMany, waitForTid } from '../replication/helpers.js';
import { FAST_RECONNECT, LogCollector, sessionClosed, WAIT_MS } from '../replication/netHelpers.js';
import { filter, firstValueFrom, timeout } from 'rxjs';

afterAll(cleanupTempDirs);

async function threeRecords(path: string): Promise<AuditRecord[]> {
  const clock = new VirtualClock();
  const audit = await AuditLog.open(path, { node: 'n1', clock });
  audit.note('transition', { actor: 'test', from: 'a', to: 'b' });
  clock.advance(1500);
  audit.generation = () => ({ generation: 2, startTid: Buffer.alloc(8, 1) });
  audit.note('connection', { peer: 'x', tid: Buffer.from('0102030405060708', 'hex') });
  await audit.decide('sync-timeout', { tid: '00', wanted: 1, got: 0, timeoutMs: 5 });
  await audit.close();
  return readAuditLogStrict(path);
}

async function flipByte(path: string, offset: number): Promise<void> {
  const fh = await openFile(path, 'r+');
  try {
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, offset);
    b[0] = b[0]! ^ 0x20;
    await fh.write(b, 0, 1, offset);
  } finally {
    await fh.close();
  }
}

describe('audit log format', () => {
  it('reads back every record in order with its fields', async () => {
    const path = join(await tempDir(), 'Data.fs.audit');
    const records = await threeRecords(path);
    expect(records.map((r) => [r.seq, r.kind, r.node])).toEqual([
      [1, 'transition', 'n1'],
      [2, 'connection', 'n1'],
      [3, 'sync-timeout', 'n1'],
    ]);
    expect(records[0]).toMatchObject({ offset: AUDIT_MAGIC.length, time: '2024-01-01T00:00:00.000Z', details: { actor: 'test', from: 'a', to: 'b' } });
    expect(records[0]!.generation).toBeUndefined();
    expect(records[1]).toMatchObject({ timeMs: Date.parse('2024-01-01T00:00:01.500Z'), generation: { generation: 2, startTid: '0101010101010101' } });
    expect(records[1]!.details).toEqual({ peer: 'x', tid: '0102030405060708' });
    expect((await readFile(path)).subarray(0, 8).toString('latin1')).toBe('ZRSAUD1\n');
  });

  it('syncs a decision before it resolves, and a batch of notes with a decision after them', async () => {
    const dir = await tempDir();
    let syncs = 0;
    const restore = await onFileHandleSyncs(dir, () => void (syncs += 1));
    try {
      const audit = await AuditLog.open(join(dir, 'Data.fs.audit'), { node: 'n', clock: new VirtualClock() });
      const opened = syncs;
      await audit.decide('promotion', {});
      expect(syncs).toBe(opened + 1);
      audit.note('transition', { actor: 'test', from: 'a', to: 'b' });
      await audit.decide('rewind', {});
      expect(syncs).toBe(opened + 2);
      await audit.close();
    } finally {
      restore();
    }
  });

  it('tells a promotion run again from one whose generation the node adopted, failed to start, or rewound', async () => {
    const tid = Buffer.from('03ff000000000001', 'hex');
    const current = { generation: 1, startTid: tid };
    const record = (kind: string, details: Record<string, unknown>): AuditRecord => ({ kind, details }) as unknown as AuditRecord;
    const promoted = record('promotion', { newGeneration: 1, startTid: tid.toString('hex') });
    expect(await promotionRunAgain('n', current, tid, async () => [promoted])).toMatch(/^n: generation 1 already starts after its last transaction/);
    // Nothing written since is the point: a node past the start is not promoting again.
    expect(await promotionRunAgain('n', current, Buffer.from('03ff000000000002', 'hex'), async () => [promoted])).toBeNull();
    // Its own promotion to that number at another tid: the generation it holds was adopted.
    expect(await promotionRunAgain('n', current, tid, async () => [record('promotion', { newGeneration: 1, startTid: '03ff000000000000' })])).toBeNull();
    // Recorded, then failed to start (offline, or online after the detach), or undone by a rewind since.
    for (const after of [record('promotion-refused', { afterRecord: true }), record('promotion-refused', { afterDetach: true }), record('rewind', {})]) {
      expect(await promotionRunAgain('n', current, tid, async () => [promoted, after])).toBeNull();
    }
    // A failure of a later promotion (the node opened since, as a primary or a secondary) does not undo it.
    const reopened = record('config', { change: 'open', role: 'secondary' });
    expect(await promotionRunAgain('n', current, tid, async () => [promoted, reopened, record('promotion-refused', { afterDetach: true })])).not.toBeNull();
    // A refusal of another request later on does not undo it.
    expect(await promotionRunAgain('n', current, tid, async () => [promoted, record('promotion-refused', { code: 'already-primary' })])).not.toBeNull();
  });

  it("names records by the data file's base name unless told otherwise", async () => {
    const dir = await tempDir();
    const audit = await openNodeAudit({ dataPath: join(dir, 'Data.fs'), clock: new VirtualClock(), log: () => undefined });
    await audit!.decide('config', { change: 'open' });
    await audit!.close();
    expect((await readAuditLogStrict(join(dir, 'Data.fs.audit'))).map((r) => r.node)).toEqual(['Data.fs']);
  });

  it('rejects a decision it cannot encode (never throws), and goes on', async () => {
    const path = join(await tempDir(), 'a.audit');
    const audit = await AuditLog.open(path, { node: 'n1', clock: new VirtualClock() });
    let thrown: unknown = null;
    let rejected: Promise<void> | null = null;
    try {
      rejected = audit.decide('config', { n: 1n });
    } catch (err) {
      thrown = err;
    }
    expect(thrown).toBeNull();
    await expect(rejected).rejects.toThrow(/BigInt/);
    await expect(audit.decide('config', { text: 'x'.repeat(2_000_000) })).rejects.toThrow(/limit/);
    await audit.decide('config', { change: 'open' });
    await audit.close();
    expect((await readAuditLogStrict(path)).map((r) => [r.seq, r.kind])).toEqual([[1, 'config']]);
  });

  it('stamps a note held back with the time it was taken, not the time it is written', async () => {
    const path = join(await tempDir(), 'a.audit');
    const clock = new VirtualClock();
    const audit = await AuditLog.open(path, { node: 'n1', clock });
    const at = audit.now();
    clock.advance(5000);
    audit.note('connection', { peer: 'x' }, at);
    audit.note('transition', { to: 'live' });
    await audit.close();
    expect((await readAuditLogStrict(path)).map((r) => r.timeMs - at)).toEqual([0, 5000]);
  });

  it('continues the sequence when reopened', async () => {
    const path = join(await tempDir(), 'a.audit');
    await threeRecords(path);
    const audit = await AuditLog.open(path, { node: 'n1', clock: new VirtualClock() });
    await audit.decide('config', { change: 'open' });
    await audit.close();
    expect((await readAuditLogStrict(path)).map((r) => r.seq)).toEqual([1, 2, 3, 4]);
  });

  it('reports a truncated tail with the offset of the cut record', async () => {
    const path = join(await tempDir(), 'a.audit');
    const records = await threeRecords(path);
    const size = (await readFile(path)).length;
    await truncate(path, size - 3);
    const r = await readAuditLog(path);
    expect(r.records.map((x) => x.seq)).toEqual([1, 2]);
    expect(r.damage).toMatchObject({ offset: records[2]!.offset, bytes: size - 3 - records[2]!.offset });
    expect(r.damage!.reason).toMatch(/^truncated record/);
    await expect(readAuditLogStrict(path)).rejects.toThrow(new RegExp(`at offset ${records[2]!.offset}: truncated`));
    // Cut inside a record header too.
    await truncate(path, records[2]!.offset + 5);
    expect((await readAuditLog(path)).damage).toMatchObject({ offset: records[2]!.offset, reason: expect.stringMatching(/^truncated record header/) });
  });

  it('reports a flipped byte as a checksum mismatch at the record it damages, reading the records before and after it', async () => {
    const path = join(await tempDir(), 'a.audit');
    const records = await threeRecords(path);
    await flipByte(path, records[1]!.offset + 8 + 10);
    const r = await readAuditLog(path);
    expect(r.records.map((x) => x.seq)).toEqual([1, 3]);
    expect(r.damage).toEqual({ offset: records[1]!.offset, reason: 'checksum mismatch', bytes: records[2]!.offset - records[1]!.offset });
    expect(r.damages).toEqual([r.damage]);
    const err = await readAuditLogStrict(path).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AuditLogDamagedError);
    expect(err).toMatchObject({ offset: records[1]!.offset, path });
  });

  it('detects a damaged length field too', async () => {
    const path = join(await tempDir(), 'a.audit');
    const records = await threeRecords(path);
    await flipByte(path, records[1]!.offset + 3);
    expect((await readAuditLog(path)).damage).toMatchObject({ offset: records[1]!.offset });
  });

  it('moves a damaged tail aside on reopen and records that it did', async () => {
    const dir = await tempDir();
    const path = join(dir, 'a.audit');
    const records = await threeRecords(path);
    const size = (await readFile(path)).length;
    await truncate(path, size - 1);
    const cut = records[2]!.offset;
    const audit = await AuditLog.open(path, { node: 'n1', clock: new VirtualClock() });
    audit.note('transition', { to: 'after' });
    await audit.close();
    const back = await readAuditLogStrict(path);
    expect(back.map((r) => [r.seq, r.kind])).toEqual([
      [1, 'transition'],
      [2, 'connection'],
      [3, 'audit-damage'],
      [4, 'transition'],
    ]);
    expect(back[2]!.details).toMatchObject({ offset: cut, bytes: size - 1 - cut, savedTo: `${path}.damaged-${cut}` });
    expect((await readFile(`${path}.damaged-${cut}`)).length).toBe(size - 1 - cut);
  });

  it('saves a damaged tail larger than its read chunk byte for byte', async () => {
    const dir = await tempDir();
    const path = join(dir, 'a.audit');
    await threeRecords(path);
    const intact = await readFile(path);
    // A megabyte of noise after the records (a damaged length makes the rest unreadable).
    const noise = Buffer.alloc(1 << 20);
    for (let i = 0; i < noise.length; i++) noise[i] = (i * 131 + 7) & 0xff;
    noise.writeUInt32BE(0xffffffff, 0);
    await writeFile(path, Buffer.concat([intact, noise]));
    const audit = await AuditLog.open(path, { node: 'n1', clock: new VirtualClock() });
    await audit.close();
    expect((await readFile(`${path}.damaged-${intact.length}`)).equals(noise)).toBe(true);
    expect((await readAuditLogStrict(path)).map((r) => r.kind)).toEqual(['transition', 'connection', 'sync-timeout', 'audit-damage']);
  });

  it('keeps a damaged record with intact records after it in place, and records that once, however often it is reopened', async () => {
    const path = join(await tempDir(), 'a.audit');
    const records = await threeRecords(path);
    await flipByte(path, records[0]!.offset + 8 + 10);
    const damage = { offset: records[0]!.offset, reason: 'checksum mismatch', bytes: records[1]!.offset - records[0]!.offset };
    for (let i = 0; i < 3; i++) {
      const audit = await AuditLog.open(path, { node: 'n1', clock: new VirtualClock() });
      audit.note('transition', { to: `reopened ${i}` });
      await audit.close();
    }
    const r = await readAuditLog(path);
    expect(r.damages).toEqual([damage]);
    expect(r.records.map((x) => [x.seq, x.kind])).toEqual([
      [2, 'connection'],
      [3, 'sync-timeout'],
      [4, 'audit-damage'],
      [5, 'transition'],
      [6, 'transition'],
      [7, 'transition'],
    ]);
    expect(r.records[2]!.details).toEqual({ ...damage, kept: true });
    // No side file: nothing was cut.
    await expect(readFile(`${path}.damaged-${damage.offset}`)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('reads past a damaged length field to the next record, and reports a sequence gap where records are missing', async () => {
    const path = join(await tempDir(), 'a.audit');
    const clock = new VirtualClock();
    const audit = await AuditLog.open(path, { node: 'n1', clock });
    for (let i = 0; i < 6; i++) audit.note('transition', { i, pad: 'p'.repeat(i * 50) });
    await audit.close();
    const records = await readAuditLogStrict(path);
    // A length field made impossible: its record's extent is unknown, the next one is found.
    await flipByte(path, records[1]!.offset);
    // Record 5's first bytes overwritten by a copy of record 4 (shorter): seq 4 follows 4, then the rest of 5.
    const file = await readFile(path);
    const r4 = file.subarray(records[3]!.offset, records[4]!.offset);
    await writeFile(path, Buffer.concat([file.subarray(0, records[4]!.offset), r4, file.subarray(records[4]!.offset + r4.length)]));
    const r = await readAuditLog(path);
    expect(r.records.map((x) => x.seq)).toEqual([1, 3, 4, 6]);
    expect(r.damages).toEqual([
      { offset: records[1]!.offset, reason: expect.stringMatching(/^impossible record length/), bytes: records[2]!.offset - records[1]!.offset },
      { offset: records[4]!.offset, reason: 'sequence gap: record 4 follows 4', bytes: records[5]!.offset - records[4]!.offset },
    ]);
  });

  it('reports a log whose first records are gone (its first record is not #1)', async () => {
    const path = join(await tempDir(), 'a.audit');
    const records = await threeRecords(path);
    const file = await readFile(path);
    await writeFile(path, Buffer.concat([AUDIT_MAGIC, file.subarray(records[2]!.offset)]));
    const r = await readAuditLog(path);
    expect(r.records.map((x) => x.seq)).toEqual([3]);
    expect(r.damages).toEqual([{ offset: AUDIT_MAGIC.length, reason: 'sequence gap: record 3 follows 0', bytes: 0 }]);
  });

  it('records the count of dropped notes when flushed or closed, with no record after them', async () => {
    const path = join(await tempDir(), 'a.audit');
    const audit = await AuditLog.open(path, { node: 'n1', clock: new VirtualClock() });
    for (let i = 0; i < AUDIT_MAX_PENDING_RECORDS + 10; i++) audit.note('transition', { i });
    await audit.flush();
    await audit.close();
    const back = await readAuditLogStrict(path);
    expect(back.at(-1)).toMatchObject({ kind: 'audit-dropped', details: { count: 10 } });
    expect(back).toHaveLength(AUDIT_MAX_PENDING_RECORDS + 1);
  });

  it('keeps an earlier save of a damaged tail when the same offset is damaged again', async () => {
    const dir = await tempDir();
    const path = join(dir, 'a.audit');
    const records = await threeRecords(path);
    const size = (await readFile(path)).length;
    await truncate(path, size - 1);
    const first = await readFile(path).then((b) => b.subarray(records[2]!.offset));
    await (await AuditLog.open(path, { node: 'n1', clock: new VirtualClock() })).close();
    // Torn again at the same offset (the audit-damage record itself, say).
    const after = await readFile(path);
    await truncate(path, after.length - 1);
    await (await AuditLog.open(path, { node: 'n1', clock: new VirtualClock() })).close();
    expect((await readFile(`${path}.damaged-${records[2]!.offset}`)).equals(first)).toBe(true);
    expect((await readFile(`${path}.damaged-${records[2]!.offset}-1`)).length).toBe(after.length - 1 - records[2]!.offset);
    const back = await readAuditLogStrict(path);
    expect(back.filter((r) => r.kind === 'audit-damage').map((r) => r.details.savedTo)).toEqual([`${path}.damaged-${records[2]!.offset}-1`]);
  });

  it('writes again what a write did not take, and fails a decision when the file takes nothing', async () => {
    const dir = await tempDir();
    const path = join(dir, 'a.audit');
    // Each write takes at most 7 bytes (a disk filling up does this); then, nothing at all.
    let mode: 'short' | 'none' = 'short';
    const restore = await interceptFileWrites(dir, (real, self, buffer, offset, length, position) =>
      mode === 'none' ? Promise.resolve({ bytesWritten: 0, buffer }) : real.call(self, buffer, offset, Math.min(length, 7), position),
    );
    try {
      const audit = await AuditLog.open(path, { node: 'n1', clock: new VirtualClock() });
      await audit.decide('sync-timeout', { tid: '00', wanted: 1, got: 0, timeoutMs: 5 });
      expect((await readAuditLogStrict(path)).map((r) => r.kind)).toEqual(['sync-timeout']);
      mode = 'none';
      await expect(audit.decide('config', { change: 'close' })).rejects.toThrow(/took none of/);
      await audit.close();
    } finally {
      restore();
    }
    expect((await readAuditLogStrict(path)).map((r) => r.kind)).toEqual(['sync-timeout']);
  });

  it('refuses to append to a file that is not an audit log', async () => {
    const path = join(await tempDir(), 'not.audit');
    await writeFile(path, 'hello world, not an audit log');
    await expect(AuditLog.open(path, { node: 'n', clock: new VirtualClock() })).rejects.toBeInstanceOf(AuditLogDamagedError);
    expect((await readAuditLog(path)).damage).toMatchObject({ offset: 0, reason: 'not an audit log (bad magic)' });
  });
});

describe('audit log of a promotion', () => {
  it('has the promotion on disk before the downstream secondaries kept streaming learn of the new generation', async () => {
    const dir = await tempDir();
    const p = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, auditPath: null });
    const s1 = await Secondary.open({ path: join(dir, 's1.fs'), replicateFrom: p.address, replicateTo: '127.0.0.1:0', fsync: false, reconnect: FAST_RECONNECT });
    const s2Log = new LogCollector();
    const s2 = await Secondary.open({ path: join(dir, 's2.fs'), replicateFrom: s1.replicationAddress!, fsync: false, reconnect: FAST_RECONNECT, auditPath: null, log: s2Log.log });
    const order: string[] = [];
    const original = ReplicationServer.prototype.announceGeneration;
    const spy = vi.spyOn(ReplicationServer.prototype, 'announceGeneration').mockImplementation(function (this: ReplicationServer) {
      order.push('announced');
      original.call(this);
    });
    const decide = AuditLog.prototype.decide;
    const decideSpy = vi.spyOn(AuditLog.prototype, 'decide').mockImplementation(async function (this: AuditLog, kind: string, details?: Record<string, unknown>) {
      await decide.call(this, kind, details);
      if (kind === 'promotion') order.push('recorded');
    });
    let np: Primary | null = null;
    try {
      const tids = await commitMany(p.storage, 2);
      await waitForTid(s2, tids.at(-1)!);
      await p.close();
      np = await s1.promote({ force: true });
      await s2Log.waitFor((e) => e.message.startsWith('upstream announced generation 1'));
      expect(s2.history!.generations.current?.generation).toBe(1);
    } finally {
      spy.mockRestore();
      decideSpy.mockRestore();
      await s2.close();
      await (np ?? s1).close();
    }
    expect(order).toEqual(['recorded', 'announced']);
  });
});

describe('audit log of status requests', () => {
  it('records nothing for a status request, and everything for a secondary connecting meanwhile', async () => {
    const dir = await tempDir();
    const p = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false });
    try {
      await p.audit!.flush();
      const before = (await readAuditLogStrict(join(dir, 'p.fs.audit'))).length;
      for (let i = 0; i < 5; i++) await requestStatus(p.address, { timeoutMs: WAIT_MS });
      const s = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: p.address, fsync: false, auditPath: null });
      await waitForTid(s, (await commitMany(p.storage, 1))[0]!);
      await s.close();
      await p.audit!.flush();
      const added = (await readAuditLogStrict(join(dir, 'p.fs.audit'))).slice(before);
      expect(added.filter((r) => r.kind === 'connection')).toHaveLength(1);
      expect(added.map((r) => r.kind)).toContain('handshake');
    } finally {
      await p.close();
    }
  });
});

describe('audit log of a primary that did not start', () => {
  it('records no close of a primary that never opened (its address in use)', async () => {
    const dir = await tempDir();
    const first = await Primary.open({ path: join(dir, 'a.fs'), replicateTo: '127.0.0.1:0', fsync: false, auditPath: null });
    try {
      const port = (first.address as { port: number }).port;
      await expect(Primary.open({ path: join(dir, 'b.fs'), replicateTo: `127.0.0.1:${port}`, fsync: false })).rejects.toThrow(/EADDRINUSE/);
    } finally {
      await first.close();
    }
    expect((await readAuditLogStrict(join(dir, 'b.fs.audit'))).map((r) => [r.kind, r.details.change])).toEqual([]);
  });
});

describe('audit log of a replication scenario', () => {
  it('records connections, verdicts, transitions and configuration changes on both nodes, in order', async () => {
    const dir = await tempDir();
    const logs = new LogCollector();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, name: 'p', log: logs.log });
    const secondary = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: primary.address, fsync: false, name: 's', reconnect: FAST_RECONNECT });
    const [tid] = await commitMany(primary.storage, 2);
    await waitForTid(secondary, (await commitMany(primary.storage, 1))[0]!);
    expect(tid).toBeDefined();
    const elsewhere = await Primary.open({ path: join(dir, 'q.fs'), replicateTo: '127.0.0.1:0', fsync: false, auditPath: null });
    secondary.setReplicationAddress(elsewhere.address);
    await logs.waitFor(sessionClosed);
    await secondary.close();
    await elsewhere.close();
    await primary.close();

    const p = await readAuditLogStrict(join(dir, 'p.fs.audit'));
    expect(p.every((r) => r.node === 'p')).toBe(true);
    expect(p.map((r) => r.seq)).toEqual(p.map((_r, i) => i + 1));
    expect(p.every((r) => (r.generation as { generation?: number } | undefined)?.generation === 0)).toBe(true);
    const pKinds = p.map((r) => (r.kind === 'transition' ? `${r.kind} ${String(r.details.to)}` : r.kind));
    expect(pKinds).toEqual([
      'config',
      'connection',
      'transition awaitingStart',
      'transition catchingUp',
      'handshake',
      'transition live',
      'transition closed',
      'disconnection',
      'config',
    ]);
    expect(p[0]!.details).toMatchObject({ change: 'open', role: 'primary', syncReplicas: 0 });
    expect(p[4]!.details).toMatchObject({ side: 'primary', verdict: 'welcome', protocol: 'zrs-ts/1', startTid: '0000000000000000' });
    expect(p.at(-2)!.details).toMatchObject({ kind: 'peer-closed' });
    expect(p.at(-1)!.details).toMatchObject({ change: 'close' });

    const s = await readAuditLogStrict(join(dir, 's.fs.audit'));
    const sKinds = s.map((r) => r.kind);
    expect(sKinds.slice(0, 6)).toEqual(['config', 'transition', 'transition', 'connection', 'transition', 'handshake']);
    expect(s[1]!.details).toMatchObject({ actor: 'secondaryConnection', from: 'idle', to: 'connecting' });
    expect(s[4]!.details).toMatchObject({ from: 'connected(link.handshaking, keepAlive.off)', to: 'connected(link.replicating, keepAlive.off)' });
    expect(s[5]!.details).toMatchObject({ side: 'secondary', verdict: 'welcome', startTid: '0000000000000000' });
    const left = s.find((r) => r.kind === 'disconnection');
    expect(left?.details).toMatchObject({ address: `127.0.0.1:${(primary.address as { port: number }).port}` });
    const change = s.find((r) => r.kind === 'config' && r.details.change === 'replicateFrom');
    expect(change?.details).toMatchObject({ from: `127.0.0.1:${(primary.address as { port: number }).port}`, to: `127.0.0.1:${(elsewhere.address as { port: number }).port}` });
    expect(s.at(-1)!.details).toMatchObject({ change: 'close', role: 'secondary' });
  });

  it('records a refusal as a decision on both sides, with its code', async () => {
    const dir = await tempDir();
    // The secondary holds a transaction the empty primary never had.
    const fs = await FileStorage.open(join(dir, 's.fs'), { create: true, fsync: false });
    await commitMany(fs, 1);
    await fs.close();
    const logs = new LogCollector();
    // Decisions (fsynced before they resolve), not notes that a later write carries.
    const decide = vi.spyOn(AuditLog.prototype, 'decide');
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, log: logs.log });
    const secondary = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: primary.address, fsync: false, reconnect: { initialMs: 60_000, maxMs: 60_000 } });
    await firstValueFrom(secondary.status$.pipe(filter((st) => st.kind === 'diverged' || st.kind === 'failed' || st.kind === 'backoff'), timeout(WAIT_MS)));
    await logs.waitFor((e) => e.message.startsWith('refused secondary'));
    await logs.waitFor(sessionClosed);
    await secondary.close();
    await primary.close();
    const decided = decide.mock.calls.filter(([kind, details]) => kind === 'handshake' && details?.verdict === 'refused').map(([, details]) => details!.side);
    decide.mockRestore();
    expect(decided.sort()).toEqual(['primary', 'secondary']);
    const refusals = (path: string) =>
      readAuditLogStrict(path).then((rs) => rs.filter((r) => r.kind === 'handshake' && r.details.verdict === 'refused').map((r) => r.details));
    const [onPrimary] = await refusals(join(dir, 'p.fs.audit'));
    const [onSecondary] = await refusals(join(dir, 's.fs.audit'));
    expect(onPrimary).toMatchObject({ side: 'primary', code: expect.stringMatching(/^(diverged|tid-too-high|bad-tid)$/) });
    expect(onSecondary).toMatchObject({ side: 'secondary', kind: 'refused', code: onPrimary!.code });
  });
});
