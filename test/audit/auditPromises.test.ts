// What the audit log promises (docs/FAILOVER.md, "Audit log"), each held
// where it could quietly break: a decision resolves only once its fsync has
// returned; notes wait for the next decision or the close; a torn tail is
// saved, made durable under its name, then cut, and the cut recorded durably;
// the reader resynchronises right after damage, reports every later gap, and
// handles records of the largest size; the flood limit holds its documented
// numbers.

import { readlinkSync, statSync } from 'node:fs';
import { open, readFile, truncate, writeFile, type FileHandle } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { UnnamedConnections } from '../../src/audit/actorAudit.js';
import { AUDIT_MAGIC, AUDIT_MAX_PAYLOAD_BYTES, AUDIT_MAX_PENDING_RECORDS, AUDIT_RECORD_HEADER_BYTES, AuditLog, readAuditLog, readAuditLogStrict } from '../../src/audit/auditLog.js';
import { VirtualClock } from '../../src/sim/clock.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { onFileHandleSyncs } from '../helpers/fileSyncs.js';

afterAll(cleanupTempDirs);

const restores: Array<() => void> = [];
afterEach(() => {
  for (const r of restores.splice(0)) r();
  vi.restoreAllMocks();
});

const quiet = (): undefined => undefined;

async function openLog(path: string, clock = new VirtualClock()): Promise<AuditLog> {
  return AuditLog.open(path, { node: 'n', clock, log: quiet });
}

/** A macrotask: every write, sync and resolution already under way has had its turn. */
const turn = (): Promise<void> => new Promise((r) => setImmediate(r));

/** The file an open descriptor names (Linux). */
const pathOf = (fd: number): string => readlinkSync(`/proc/self/fd/${fd}`);

/** Offsets of a log's records (after the magic), read from their length fields. */
function recordOffsets(bytes: Buffer): number[] {
  const out: number[] = [];
  for (let at = AUDIT_MAGIC.length; at < bytes.length; at += AUDIT_RECORD_HEADER_BYTES + bytes.readUInt32BE(at)) out.push(at);
  return out;
}

describe('the writer', () => {
  it('resolves a decision only once its fsync has returned, not when it is asked for', async () => {
    const dir = await tempDir();
    const audit = await openLog(join(dir, 'a.audit'));
    const probe = await open(join(dir, 'probe'), 'w');
    const proto = Object.getPrototypeOf(probe) as FileHandle;
    await probe.close();
    const original = proto.sync;
    let reached: () => void = () => undefined;
    const syncing = new Promise<void>((r) => (reached = r));
    let release: () => void = () => undefined;
    const gate = new Promise<void>((r) => (release = r));
    const events: string[] = [];
    vi.spyOn(proto, 'sync').mockImplementation(async function (this: FileHandle) {
      reached();
      await original.call(this);
      await gate;
      events.push('synced');
    });
    const decided = audit.decide('promotion', { newGeneration: 1 }).then(() => events.push('resolved'));
    await syncing;
    await turn();
    expect(events).toEqual([]);
    release();
    await decided;
    expect(events).toEqual(['synced', 'resolved']);
    vi.restoreAllMocks();
    await audit.close();
  });

  it('writes notes with the next batch without a sync of their own; close() makes them durable', async () => {
    const dir = await tempDir();
    const path = join(dir, 'a.audit');
    const audit = await openLog(path);
    await audit.decide('config', { change: 'open' });
    const synced: string[] = [];
    restores.push(await onFileHandleSyncs(dir, (fd) => synced.push(pathOf(fd))));
    for (let i = 0; i < 3; i++) {
      audit.note('transition', { i });
      await turn();
    }
    expect(synced).toEqual([]);
    expect((await readAuditLogStrict(path)).map((r) => r.seq)).toEqual([1, 2, 3, 4]);
    audit.note('transition', { i: 3 });
    await audit.close();
    expect(synced).toEqual([path]);
    expect((await readAuditLogStrict(path)).map((r) => r.seq)).toEqual([1, 2, 3, 4, 5]);
  });

  it('rejects a decision asked after close(): nothing may go ahead as if it were recorded', async () => {
    const path = join(await tempDir(), 'a.audit');
    const audit = await openLog(path);
    await audit.close();
    await expect(audit.decide('promotion', {})).rejects.toThrow(`audit log ${path} is closed`);
  });

  it('a batch that failed stops the log: decisions queued behind it fail too and nothing after the gap is written', async () => {
    const path = join(await tempDir(), 'a.audit');
    const audit = await openLog(path);
    await audit.decide('config', { change: 'open' });
    const probe = await open(join(dirname(path), 'probe'), 'w');
    const proto = Object.getPrototypeOf(probe) as FileHandle;
    await probe.close();
    const write = proto.write;
    let calls = 0;
    let writing: () => void = () => undefined;
    const firstWrite = new Promise<void>((r) => (writing = r));
    let release: () => void = () => undefined;
    const gate = new Promise<void>((r) => (release = r));
    vi.spyOn(proto, 'write').mockImplementation(async function (this: FileHandle, ...args: unknown[]) {
      // The first write takes nothing (a full disk), once the second decision is queued behind it.
      if (calls++ === 0) {
        writing();
        await gate;
        return { bytesWritten: 0, buffer: args[0] as Buffer };
      }
      return (write as (...a: unknown[]) => Promise<unknown>).apply(this, args);
    } as typeof proto.write);
    const a = audit.decide('promotion', { newGeneration: 1 });
    await firstWrite;
    const b = audit.decide('rewind', { forkTid: '00' });
    release();
    const took = `${path}: the file took none of`;
    await expect(a).rejects.toThrow(took);
    await expect(b).rejects.toThrow(took);
    expect(calls).toBe(1);
    vi.restoreAllMocks();
    await audit.close();
    expect((await readAuditLogStrict(path)).map((r) => r.seq)).toEqual([1]);
  });

  it('leaves no gap when a decision cannot be encoded after notes were dropped', async () => {
    const path = join(await tempDir(), 'a.audit');
    const audit = await openLog(path);
    for (let i = 0; i < AUDIT_MAX_PENDING_RECORDS + 3; i++) audit.note('transition', { i });
    await expect(audit.decide('config', { n: 1n })).rejects.toThrow();
    await audit.decide('config', { change: 'close' });
    await audit.close();
    const records = await readAuditLogStrict(path);
    expect(records.slice(-2).map((r) => [r.seq, r.kind, r.details.count ?? null])).toEqual([
      [AUDIT_MAX_PENDING_RECORDS + 1, 'audit-dropped', 3],
      [AUDIT_MAX_PENDING_RECORDS + 2, 'config', null],
    ]);
  });
});

describe('reopening a damaged log', () => {
  it('saves a torn tail and syncs it, syncs its name into the directory, then cuts it and records the cut durably', async () => {
    const dir = await tempDir();
    const path = join(dir, 'a.audit');
    const audit = await openLog(path);
    await audit.decide('config', { change: 'open' });
    await audit.decide('config', { change: 'close' });
    await audit.close();
    const size = statSync(path).size;
    await truncate(path, size - 1);
    const cut = recordOffsets(await readFile(path)).at(-1)!;
    const synced: string[] = [];
    // The directory is synced through a handle of its own, seen here too.
    restores.push(await onFileHandleSyncs(dir, (fd) => synced.push(pathOf(fd) === dir ? `dir ${dir}, log size ${statSync(path).size}` : pathOf(fd))));
    const reopened = await openLog(path);
    await reopened.close();
    expect(synced).toEqual([`${path}.damaged-${cut}`, `dir ${dir}, log size ${size - 1}`, path, path]);
    const records = await readAuditLogStrict(path);
    expect(records.map((r) => [r.seq, r.kind])).toEqual([
      [1, 'config'],
      [2, 'audit-damage'],
    ]);
    expect(records[1]!.details).toMatchObject({ offset: cut, savedTo: `${path}.damaged-${cut}` });
  });

  it('records damage it keeps (intact records after it) with a sync before the open returns', async () => {
    const dir = await tempDir();
    const path = join(dir, 'a.audit');
    const audit = await openLog(path);
    for (let i = 0; i < 3; i++) await audit.decide('config', { i });
    await audit.close();
    const bytes = await readFile(path);
    const second = recordOffsets(bytes)[1]!;
    bytes[second + AUDIT_RECORD_HEADER_BYTES + 2]! ^= 0x20;
    await writeFile(path, bytes);
    const synced: string[] = [];
    restores.push(await onFileHandleSyncs(dir, (fd) => synced.push(pathOf(fd))));
    const reopened = await openLog(path);
    expect(synced).toEqual([path]);
    await reopened.close();
    const read = await readAuditLog(path);
    expect(read.records.map((r) => r.kind)).toEqual(['config', 'config', 'audit-damage']);
    expect(read.records[2]!.details).toMatchObject({ offset: second, kept: true });
  });
});

describe('the reader', () => {
  async function fiveNotes(): Promise<{ path: string; bytes: Buffer; at: number[] }> {
    const path = join(await tempDir(), 'a.audit');
    const audit = await openLog(path);
    for (let i = 0; i < 5; i++) audit.note('transition', { i });
    await audit.close();
    const bytes = await readFile(path);
    return { path, bytes, at: recordOffsets(bytes) };
  }

  it('finds the record right after a damaged byte, and reports each later gap too', async () => {
    const { path, bytes, at } = await fiveNotes();
    // A stray byte before record 2: record 2 is found one byte on.
    await writeFile(path, Buffer.concat([bytes.subarray(0, at[1]!), Buffer.from([0xff]), bytes.subarray(at[1]!)]));
    let read = await readAuditLog(path);
    expect(read.records.map((r) => r.seq)).toEqual([1, 2, 3, 4, 5]);
    expect(read.damages).toEqual([{ offset: at[1]!, reason: expect.any(String), bytes: 1 }]);
    // A flipped byte in record 2, and record 4 missing: both are reported.
    const damaged = Buffer.concat([bytes.subarray(0, at[3]!), bytes.subarray(at[4]!)]);
    damaged[at[1]! + AUDIT_RECORD_HEADER_BYTES + 2]! ^= 0x20;
    await writeFile(path, damaged);
    read = await readAuditLog(path);
    expect(read.records.map((r) => r.seq)).toEqual([1, 3, 5]);
    expect(read.damages).toEqual([
      { offset: at[1]!, reason: 'checksum mismatch', bytes: at[2]! - at[1]! },
      { offset: at[3]!, reason: 'sequence gap: record 5 follows 3', bytes: 0 },
    ]);
  });

  it('does not take a copy of the last good record inside damage for a second damage', async () => {
    const { path, bytes, at } = await fiveNotes();
    const first = bytes.subarray(at[0]!, at[1]!);
    await writeFile(path, Buffer.concat([bytes.subarray(0, at[1]!), Buffer.from([0xff, 0xff, 0xff, 0xff]), first, bytes.subarray(at[1]!)]));
    const read = await readAuditLog(path);
    expect(read.records.map((r) => r.seq)).toEqual([1, 2, 3, 4, 5]);
    expect(read.damages).toEqual([{ offset: at[1]!, reason: expect.any(String), bytes: 4 + first.length }]);
  });

  it('names zeros past the end (a file a crash extended) as an impossible length', async () => {
    const { path, bytes } = await fiveNotes();
    await writeFile(path, Buffer.concat([bytes, Buffer.alloc(16)]));
    const read = await readAuditLog(path);
    expect(read.records).toHaveLength(5);
    expect(read.damages).toEqual([{ offset: bytes.length, reason: 'impossible record length 0', bytes: 16 }]);
  });

  it('writes and reads records of the largest size, and finds the record after a damaged one of that size', async () => {
    const dir = await tempDir();
    const path = join(dir, 'a.audit');
    const clock = new VirtualClock();
    const audit = await openLog(path, clock);
    // The payload is JSON: find the padding that makes it exactly the largest size.
    const now = clock.now();
    const payloadOf = (pad: string): number => Buffer.byteLength(JSON.stringify({ seq: 2, time: new Date(now).toISOString(), timeMs: now, node: 'n', kind: 'big', details: { pad } }));
    const pad = 'x'.repeat(AUDIT_MAX_PAYLOAD_BYTES - payloadOf(''));
    expect(payloadOf(pad)).toBe(AUDIT_MAX_PAYLOAD_BYTES);
    await audit.decide('small', {});
    await audit.decide('big', { pad });
    await audit.decide('small', {});
    await expect(audit.decide('big', { pad: `${pad}x` })).rejects.toThrow(`audit record of ${AUDIT_MAX_PAYLOAD_BYTES + 1} bytes`);
    await audit.close();
    const bytes = await readFile(path);
    const at = recordOffsets(bytes);
    expect(at[2]! - at[1]!).toBe(AUDIT_RECORD_HEADER_BYTES + AUDIT_MAX_PAYLOAD_BYTES);
    expect((await readAuditLogStrict(path)).map((r) => r.seq)).toEqual([1, 2, 3]);
    bytes[at[1]! + AUDIT_RECORD_HEADER_BYTES + 100]! ^= 0x20;
    await writeFile(path, bytes);
    const read = await readAuditLog(path);
    expect(read.records.map((r) => r.seq)).toEqual([1, 3]);
    expect(read.damages).toEqual([{ offset: at[1]!, reason: 'checksum mismatch', bytes: AUDIT_RECORD_HEADER_BYTES + AUDIT_MAX_PAYLOAD_BYTES }]);
    // Reopened, the record after it is kept, not cut as a torn tail.
    const reopened = await openLog(path);
    await reopened.close();
    expect((await readAuditLog(path)).records.map((r) => r.seq)).toEqual([1, 3, 4]);
  });
});

describe('connections that name no replication protocol', () => {
  it('are recorded one by one up to 50 in 10 s, counted past that, and recorded as any once the count stops', async () => {
    const clock = new VirtualClock();
    const path = join(await tempDir(), 'a.audit');
    const audit = await openLog(path, clock);
    const unnamed = new UnnamedConnections(audit);
    const admitted = (n: number): boolean[] => Array.from({ length: n }, (_, i) => unnamed.admit(`peer${i}`, 'garbage'));
    expect(admitted(50).every(Boolean)).toBe(true);
    expect(admitted(1)).toEqual([false]);
    clock.advance(9_999);
    expect(admitted(1)).toEqual([false]);
    clock.advance(1);
    expect(admitted(50).every(Boolean)).toBe(true);
    expect(admitted(1)).toEqual([false]);
    unnamed.stop();
    expect(admitted(1)).toEqual([true]);
    await audit.close();
    const counts = (await readAuditLogStrict(path)).filter((r) => r.kind === 'connections-unrecorded');
    expect(counts.map((r) => r.details.count)).toEqual([1, 1, 1]);
    expect(counts[0]!.details.reason).toBe('more than 50 connections in 10 s that named no replication protocol');
  });
});
