// `zrs audit FILE` in-process: the timeline of a log written on a virtual
// clock (exact lines), --json records, exit 1 naming the offset of a
// truncated or corrupted record after printing the records before it.

import { open as openFile, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { AuditLog, readAuditLog } from '../../src/audit/auditLog.js';
import { runCli } from '../../src/cli/cli.js';
import { VirtualClock } from '../../src/sim/clock.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { memoryIo } from './helpers.js';

afterAll(cleanupTempDirs);

async function run(...argv: string[]) {
  const io = memoryIo();
  const code = await runCli(argv, io);
  return { code, stdout: io.stdout, stderr: io.stderr };
}

async function writeScenario(path: string): Promise<void> {
  const clock = new VirtualClock();
  const audit = await AuditLog.open(path, { node: 'p', clock });
  audit.generation = { generation: 0, startTid: Buffer.alloc(8) };
  await audit.decide('config', { change: 'open', role: 'primary', replicateTo: '127.0.0.1:5000', syncReplicas: 1 });
  audit.note('connection', { actor: 'primarySession', peer: '127.0.0.1:40000', state: 'awaitingProtocol' });
  clock.advance(10);
  audit.note('transition', { actor: 'primarySession', peer: '127.0.0.1:40000', from: 'awaitingStart', to: 'catchingUp' });
  audit.note('handshake', { side: 'primary', peer: '127.0.0.1:40000', verdict: 'welcome', protocol: 'zrs-ts/1', startTid: '0000000000000000' });
  await audit.decide('handshake', { side: 'primary', peer: '127.0.0.1:40001', verdict: 'refused', code: 'diverged', reason: 'holds transactions this primary never had', forkTid: '03ff000000000000' });
  clock.advance(5000);
  await audit.decide('sync-timeout', { tid: '03ff000000000001', wanted: 1, got: 0, timeoutMs: 5000, connected: 0 });
  audit.note('disconnection', { actor: 'primarySession', peer: '127.0.0.1:40000', reason: 'peer-closed' });
  await audit.close();
}

describe('zrs audit', () => {
  it('prints a readable timeline', async () => {
    const path = join(await tempDir(), 'Data.fs.audit');
    await writeScenario(path);
    const r = await run('audit', path);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout.split('\n')).toEqual([
      '2024-01-01T00:00:00.000Z  #1  p gen 0  config         open role=primary replicateTo=127.0.0.1:5000 syncReplicas=1',
      '2024-01-01T00:00:00.000Z  #2  p gen 0  connection     primarySession 127.0.0.1:40000 connected',
      '2024-01-01T00:00:00.010Z  #3  p gen 0  transition     primarySession 127.0.0.1:40000: awaitingStart -> catchingUp',
      '2024-01-01T00:00:00.010Z  #4  p gen 0  handshake      primary 127.0.0.1:40000: welcome zrs-ts/1 from tid 0000000000000000',
      '2024-01-01T00:00:00.010Z  #5  p gen 0  handshake      primary 127.0.0.1:40001: REFUSED (diverged): holds transactions this primary never had fork at 03ff000000000000',
      '2024-01-01T00:00:05.010Z  #6  p gen 0  sync-timeout   SYNC TIMEOUT tid 03ff000000000001: 0 of 1 acks within 5000 ms (committed on the primary)',
      '2024-01-01T00:00:05.010Z  #7  p gen 0  disconnection  primarySession 127.0.0.1:40000 disconnected: peer-closed',
      '',
    ]);
  });

  it('prints pack requests and what came of them', async () => {
    const path = join(await tempDir(), 'Data.fs.audit');
    const audit = await AuditLog.open(path, { node: 'p', clock: new VirtualClock() });
    const asked = { requestedBy: '127.0.0.1:40002', time: '2023-12-25T00:00:00.000Z' };
    audit.note('handshake', { side: 'primary', peer: '127.0.0.1:40002', verdict: 'pack-request', protocol: 'zrs-ts/1' });
    await audit.decide('pack', { ...asked, gc: true, outcome: 'packed', packTid: '03ff000000000000', sizeBefore: 9000, sizeAfter: 4000, removedBlobFiles: 2, blobFilesNotRemoved: 0 });
    await audit.decide('pack', { ...asked, gc: false, outcome: 'unchanged', packTid: '03ff000000000000', sizeBefore: 4000, sizeAfter: 4000, removedBlobFiles: 0, blobFilesNotRemoved: 0 });
    await audit.decide('pack', { ...asked, gc: true, outcome: 'failed', reason: 'a pack is already running' });
    await audit.decide('pack', { requestedBy: '127.0.0.1:40002', time: 1e12, gc: true, outcome: 'refused', reason: 'pack time 1000000000000 is outside the times transactions have' });
    await audit.close();
    const r = await run('audit', path);
    expect(r.stdout.split('\n').map((l) => l.slice(l.indexOf('#')))).toEqual([
      '#1  p  handshake      primary 127.0.0.1:40002: pack request',
      '#2  p  pack           PACKED to 2023-12-25T00:00:00.000Z; requested by 127.0.0.1:40002: tid 03ff000000000000, 9000 -> 4000 bytes, 2 blob file(s) removed',
      '#3  p  pack           pack to 2023-12-25T00:00:00.000Z, without garbage collection; requested by 127.0.0.1:40002: nothing to remove up to tid 03ff000000000000',
      '#4  p  pack           pack FAILED to 2023-12-25T00:00:00.000Z; requested by 127.0.0.1:40002: a pack is already running',
      '#5  p  pack           pack REFUSED to 1000000000000; requested by 127.0.0.1:40002: pack time 1000000000000 is outside the times transactions have',
      '',
    ]);
  });

  it('prints a count of connections not recorded one by one', async () => {
    const path = join(await tempDir(), 'Data.fs.audit');
    const audit = await AuditLog.open(path, { node: 'p', clock: new VirtualClock() });
    audit.note('connections-unrecorded', { count: 7, reason: 'more than 50 connections in 10 s that named no replication protocol', lastPeer: '10.0.0.9:41000', lastReason: 'peer-closed' });
    await audit.close();
    const r = await run('audit', path);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(
      '2024-01-01T00:00:00.000Z  #1  p  connections-unrecorded  7 more connection(s) not recorded one by one (more than 50 connections in 10 s that named no replication protocol); the last from 10.0.0.9:41000: peer-closed\n',
    );
  });

  it('prints one JSON record per line with --json', async () => {
    const path = join(await tempDir(), 'Data.fs.audit');
    await writeScenario(path);
    const r = await run('audit', '--json', path);
    expect(r.code).toBe(0);
    const records = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(records.map((x) => x.kind)).toEqual(['config', 'connection', 'transition', 'handshake', 'handshake', 'sync-timeout', 'disconnection']);
    expect(records[5]).toMatchObject({ seq: 6, node: 'p', details: { tid: '03ff000000000001', wanted: 1, got: 0 }, generation: { generation: 0 } });
    expect(records[0]!.offset).toBe(8);
  });

  it('exits 1 naming the offset of a truncated tail, after the intact records', async () => {
    const path = join(await tempDir(), 'Data.fs.audit');
    await writeScenario(path);
    const { records, size } = await readAuditLog(path);
    await truncate(path, size - 2);
    const r = await run('audit', path);
    expect(r.code).toBe(1);
    expect(r.stdout.trim().split('\n')).toHaveLength(6);
    expect(r.stderr).toBe(
      `zrs audit: ${path}: damaged at offset ${records[6]!.offset}: truncated record: ${size - records[6]!.offset - 8} payload bytes announced, ${size - 2 - records[6]!.offset - 8} present (${size - 2 - records[6]!.offset} bytes from there not read; 6 intact records before it)\n`,
    );
  });

  it('exits 1 naming the offset of a record with a flipped byte', async () => {
    const path = join(await tempDir(), 'Data.fs.audit');
    await writeScenario(path);
    const { records } = await readAuditLog(path);
    const at = records[2]!.offset + 20;
    const fh = await openFile(path, 'r+');
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, at);
    await fh.write(Buffer.from([b[0]! ^ 1]), 0, 1, at);
    await fh.close();
    const r = await run('audit', '--json', path);
    expect(r.code).toBe(1);
    // Every record but the damaged one: those after it are read too.
    expect(r.stdout.trim().split('\n').map((l) => (JSON.parse(l) as { seq: number }).seq)).toEqual(records.filter((_, i) => i !== 2).map((x) => x.seq));
    expect(r.stderr).toContain(
      `damaged at offset ${records[2]!.offset}: checksum mismatch (${records[3]!.offset - records[2]!.offset} bytes skipped; 2 intact records before it, ${records.length - 3} after)`,
    );
  });

  it('names every damaged record, not only the first', async () => {
    const path = join(await tempDir(), 'Data.fs.audit');
    await writeScenario(path);
    const { records } = await readAuditLog(path);
    const fh = await openFile(path, 'r+');
    for (const at of [records[2]!.offset + 20, records[4]!.offset + 20]) {
      const b = Buffer.alloc(1);
      await fh.read(b, 0, 1, at);
      await fh.write(Buffer.from([b[0]! ^ 1]), 0, 1, at);
    }
    await fh.close();
    const r = await run('audit', path);
    expect(r.code).toBe(1);
    expect(r.stderr.match(/damaged at offset (\d+)/g)).toEqual([`damaged at offset ${records[2]!.offset}`, `damaged at offset ${records[4]!.offset}`]);
  });

  it('merges several logs by time, records of the same time in the order the files were given; --json names the file only then', async () => {
    const dir = await tempDir();
    const paths = ['a', 'b', 'c'].map((n) => join(dir, `${n}.audit`));
    for (const [i, path] of paths.entries()) {
      const audit = await AuditLog.open(path, { node: `n${i}`, clock: new VirtualClock() }); // all at the same instant
      await audit.decide('config', { change: 'open', role: 'primary' });
      await audit.close();
    }
    const merged = await run('audit', '--json', paths[2]!, paths[0]!, paths[1]!);
    expect(merged.code).toBe(0);
    expect(merged.stdout.trim().split('\n').map((l) => (JSON.parse(l) as { file: string }).file)).toEqual([paths[2], paths[0], paths[1]]);
    const single = await run('audit', '--json', paths[0]!);
    expect(JSON.parse(single.stdout)).not.toHaveProperty('file');
    expect((await run('audit', paths[1]!, paths[0]!)).stdout.split('\n').map((l) => l.split('  ')[2])).toEqual(['n1', 'n0', undefined]);
  });

  it('is listed in the help and reports a missing file', async () => {
    expect((await run('--help')).stdout).toContain('  audit ');
    expect((await run('audit', '--help')).stdout).toMatch(/^usage: zrs audit \[--json\] FILE/);
    const missing = await run('audit', join(await tempDir(), 'nope.audit'));
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/^zrs audit: \/.*\/nope\.audit: no such file\n$/);
  });
});
