// `zrs pack FILE`: ZODB's pack of a stopped node's file, with the node's hash
// chain written first; what it refuses and how it says so.

import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { rename } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { runCli } from '../../src/cli/cli.js';
import { HashChain } from '../../src/failover/hashChain.js';
import { Primary } from '../../src/replication/primary.js';
import { Secondary } from '../../src/replication/secondary.js';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { cleanupTempDirs, copyZodbFixture, fixturePath, readManifest, tempDir } from '../helpers/fixtures.js';
import { allTransactions, commitMany, storageFileWith, storageWithBlobRevisions, waitForTid } from '../replication/helpers.js';
import { FAST_RECONNECT, FakeServer } from '../replication/netHelpers.js';
import { createNativePackr, encodeNative } from '../../src/wire/native.js';
import { memoryIo } from './helpers.js';
import { pack } from '../../src/cli/pack.js';
import { tidToSeconds } from '../../src/storage/timestamp.js';

afterAll(cleanupTempDirs);

async function run(...argv: string[]) {
  const io = memoryIo();
  const code = await runCli(argv, io);
  return { code, stdout: io.stdout, stderr: io.stderr };
}

/** A temp copy of ZODB's file just before its recorded pack, as Data.fs. */
async function prepackCopy(): Promise<string> {
  const tmp = await copyZodbFixture('packed');
  const path = join(tmp, 'Data.fs');
  await rename(join(tmp, 'Data.fs.prepack'), path);
  return path;
}

describe('zrs pack', () => {
  it("packs as ZODB packs (garbage collected, byte for byte), keeping the file before as .old, with the node's hash chain of the file as it was", async () => {
    const m = await readManifest('packed');
    const path = await prepackCopy();
    // The links the unpacked file gives, from a chain built on a copy of it.
    const twin = join(await tempDir(), 'Data.fs');
    copyFileSync(path, twin);
    const twinStorage = await FileStorage.open(twin, { readOnly: true });
    const twinChain = await HashChain.open(twinStorage);
    const head = twinChain.head;
    await twinChain.close();
    await twinStorage.close();

    const r = await run('pack', path, '--time', String(m.pack_time));
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe(
      `${path}: packed to 2024-06-01 00:04:05.000000 UTC (tid ${m.pack_time_tid}): ${m.pre_pack_size} -> ${m.file_size} bytes; the file before the pack is kept as ${path}.old\n`,
    );
    expect(readFileSync(path).equals(readFileSync(fixturePath('zodb', 'packed', 'Data.fs')))).toBe(true);
    expect(readFileSync(`${path}.old`).equals(readFileSync(fixturePath('zodb', 'packed', 'Data.fs.prepack')))).toBe(true);
    // Every link was written before the swap, from the transactions as they were.
    expect(readFileSync(`${path}.chain`).equals(readFileSync(`${twin}.chain`))).toBe(true);
    expect(head).not.toBeNull();

    // Packed again to the same time: nothing to remove, nothing touched.
    rmSync(`${path}.old`);
    const again = await run('pack', path, '--time', '2024-06-01T00:04:05Z');
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toContain(`${path}: nothing to remove up to 2024-06-01 00:04:05.000000 UTC (tid ${m.pack_time_tid})`);
    expect(again.stdout).toContain('the file is unchanged');
    expect(existsSync(`${path}.old`)).toBe(false);
  });

  it('packs a stopped secondary, which then replicates on from its primary without a divergence', async () => {
    const dir = await tempDir();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, auditPath: null });
    const sPath = join(dir, 's.fs');
    const open = (): Promise<Secondary> => Secondary.open({ path: sPath, replicateFrom: primary.address, fsync: false, reconnect: FAST_RECONNECT, auditPath: null });
    let s = await open();
    try {
      const serials = new Map<string, Buffer>();
      await waitForTid(s, (await commitMany(primary.storage, 30, 3, serials)).at(-1)!);
      await s.close();
      const r = await run('pack', sPath, '--no-gc');
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/: packed to .*: \d+ -> \d+ bytes;/);
      s = await open();
      const more = await commitMany(primary.storage, 5, 3, serials);
      await waitForTid(s, more.at(-1)!);
      expect(s.diverged).toBeNull();
      expect((await allTransactions(s.storage)).some((t) => t.status === 'p')).toBe(true);
      for (const oid of serials.keys()) {
        const [want, got] = await Promise.all([primary.storage.load(Buffer.from(oid, 'hex')), s.storage.load(Buffer.from(oid, 'hex'))]);
        expect(got.data.equals(want.data) && got.tid.equals(want.tid), oid).toBe(true);
      }
    } finally {
      await s.close();
      await primary.close();
    }
  });

  it("deletes the blob files of removed revisions from the storage's blob directory", async () => {
    const tmp = await copyZodbFixture('blobs');
    const blobFiles = (): string[] => readdirSync(join(tmp, 'blobs'), { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.blob'));
    const before = blobFiles();
    const r = await run('pack', join(tmp, 'Data.fs'), '--blob-dir', join(tmp, 'blobs'));
    expect(r.code, r.stderr).toBe(0);
    const removed = Number(/; (\d+) blob file\(s\) removed;/.exec(r.stdout)?.[1]);
    expect(removed).toBeGreaterThan(0);
    expect(blobFiles()).toHaveLength(before.length - removed);
  });

  it('says which blob files of removed revisions it could not delete, and packs all the same', async () => {
    const { path, blobDir, serial } = await storageWithBlobRevisions(await tempDir(), ['first', 'second']);
    const files = readdirSync(blobDir, { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.blob'));
    const old = files.find((f) => !f.endsWith(`0x${serial.toString('hex')}.blob`))!;
    // A directory where the old revision's file was: unlink fails (as root too).
    rmSync(join(blobDir, old));
    mkdirSync(join(blobDir, old, 'inside'), { recursive: true });
    const r = await run('pack', path, '--blob-dir', blobDir, '--no-gc');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('; 0 blob file(s) removed;');
    expect(r.stderr).toMatch(/^zrs pack: 1 blob file\(s\) of removed revisions could not be deleted \(E\w+: .*\); delete them by hand\n$/);
    expect(existsSync(join(blobDir, old))).toBe(true);
  });

  it('with --keep-blob-files (a blob directory shared with the primary), packs without --blob-dir and leaves every blob file', async () => {
    const tmp = await copyZodbFixture('blobs');
    const blobFiles = (): string[] => readdirSync(join(tmp, 'blobs'), { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.blob')).sort();
    const before = blobFiles();
    const r = await run('pack', join(tmp, 'Data.fs'), '--keep-blob-files');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/: packed to .*; blob files of removed revisions left in place;/);
    expect(blobFiles()).toEqual(before);
  });

  it('shows how far it is on a terminal, and nothing otherwise', async () => {
    const m = await readManifest('packed');
    const tty = memoryIo({ stderrIsTTY: true });
    const path = await prepackCopy();
    expect(await runCli(['pack', path, '--time', String(m.pack_time)], tty)).toBe(0);
    expect(tty.stderr).toMatch(new RegExp(`\\rpacking ${path}: reading \\d+%.*\\rpacking ${path}: following references \\d+%.*\\rpacking ${path}: writing \\d+%`, 's'));
    expect(tty.stderr.endsWith('\r\x1b[2K')).toBe(true);
    // Each line shown differs from the one before it.
    const lines = tty.stderr.split('\r').filter((l) => l.startsWith('packing'));
    expect(lines.filter((l, i) => i > 0 && l === lines[i - 1])).toEqual([]);
    const quiet = memoryIo({ stderrIsTTY: true });
    expect(await runCli(['pack', '--no-progress', await prepackCopy(), '--time', String(m.pack_time)], quiet)).toBe(0);
    expect(quiet.stderr).toBe('');
    const piped = memoryIo();
    expect(await runCli(['pack', await prepackCopy(), '--time', String(m.pack_time)], piped)).toBe(0);
    expect(piped.stderr).toBe('');
  });

  it('refuses what it cannot do, leaving the file as it was', async () => {
    const dir = await tempDir();
    const path = join(dir, 'Data.fs');
    await storageFileWith(path, 5);
    const before = readFileSync(path);
    // Records that are not ZODB pickles: garbage collection cannot read their references.
    const gc = await run('pack', path);
    expect(gc.code).toBe(1);
    expect(gc.stderr).toContain('nothing was packed (--no-gc packs without garbage collection)');
    // A running node holds the file.
    const held = await FileStorage.open(path, { fsync: false });
    try {
      const locked = await run('pack', path, '--no-gc');
      expect(locked.code).toBe(1);
      expect(locked.stderr).toMatch(/lock/i);
    } finally {
      await held.close();
    }
    const noBlobs = await run('pack', path, '--no-gc', '--blob-dir', join(dir, 'nowhere'));
    expect(noBlobs.code).toBe(1);
    expect(noBlobs.stderr).toContain(`the blob directory ${join(dir, 'nowhere')} does not exist`);
    expect(existsSync(join(dir, 'nowhere'))).toBe(false);
    expect(readFileSync(path).equals(before)).toBe(true);
    expect(existsSync(`${path}.old`)).toBe(false);
    expect(existsSync(`${path}.pack`)).toBe(false);
  });

  it.each([
    [['--days', '1', '--time', '0'], 'give --days or --time, not both'],
    [['--days', '-1'], '--days must be a number of days >= 0, got "-1"'],
    [['--days', ''], '--days must be a number of days >= 0, got ""'],
    [['--days', 'week'], '--days must be a number of days >= 0, got "week"'],
    [['--time', 'yesterday'], '--time must be an ISO 8601 date (2026-11-01, UTC), date and time with its zone (2026-11-01T00:00:00Z), or seconds since the epoch, got "yesterday"'],
    [['--time', '2026-13-45'], '--time must be an ISO 8601 date'],
    // A time without its zone would be read as the machine's local time.
    [['--time', '2026-11-01T00:00:00'], '--time must be an ISO 8601 date'],
    [['--time', '99999999999999'], '--time 99999999999999 is a pack time outside the times transactions have (1970 to 9917)'],
    [['--time', '9999-12-31T00:00:00Z'], '--time 9999-12-31T00:00:00Z is a pack time outside the times transactions have'],
    [['--time', '0'], '--time 0 is a pack time outside the times transactions have'],
    [['--days', '1e9'], '--days 1e9 is a pack time outside the times transactions have'],
  ])('refuses %j as a usage error (exit 2)', async (flags, message) => {
    const path = join(await tempDir(), 'Data.fs');
    await storageFileWith(path, 2);
    const before = readFileSync(path);
    const r = await run('pack', path, ...flags);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(message);
    // Refused before the file was opened.
    expect(readFileSync(path).equals(before)).toBe(true);
    expect(existsSync(`${path}.old`)).toBe(false);
    expect(existsSync(`${path}.chain`)).toBe(false);
  });

  it('leaves a storage with no transaction as it is, without a hash chain', async () => {
    const path = join(await tempDir(), 'Data.fs');
    await (await FileStorage.open(path, { create: true, fsync: false })).close();
    const r = await run('pack', path);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('nothing to remove');
    expect(existsSync(`${path}.chain`)).toBe(false);
  });

  it('takes seconds with a fraction, and counts --days in days', async () => {
    const path = join(await tempDir(), 'Data.fs');
    const fs = await FileStorage.open(path, { create: true, fsync: false });
    const tids = await commitMany(fs, 6, 2);
    await fs.close();
    const lastSeconds = tidToSeconds(tids.at(-1)!);
    // Twelve hours after the last commit, a day back is before every transaction.
    const io = memoryIo();
    const args = { help: false, positionals: [path], flags: new Map<string, string | true>([['days', '1'], ['no-gc', true]]) };
    expect(await pack(args, io, (lastSeconds + 12 * 3600) * 1000)).toBe(0);
    expect(io.stdout).toContain('nothing to remove');
    const r = await run('pack', path, '--no-gc', '--time', `${Math.floor(lastSeconds) + 1}.5`);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('packed to');
  });

  it('adds the --no-gc hint only to what garbage collection refused', async () => {
    const { path } = await storageWithBlobRevisions(await tempDir(), ['first', 'second']);
    const r = await run('pack', path, '--no-gc');
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('opened without its blob directory: give it (blobDir, zrs pack --blob-dir DIR)');
    expect(r.stderr).not.toContain('--no-gc packs');
  });

  it('packs to now less --days', async () => {
    const path = join(await tempDir(), 'Data.fs');
    const fs = await FileStorage.open(path, { create: true, fsync: false });
    const tids = await commitMany(fs, 6, 2);
    await fs.close();
    // A day back, everything is later than the pack time: nothing to remove.
    const dayBack = await run('pack', path, '--no-gc', '--days', '1');
    expect(dayBack.stdout).toContain('nothing to remove');
    // To now, the revisions commitMany replaced go.
    const now = await run('pack', path, '--no-gc');
    expect(now.code, now.stderr).toBe(0);
    expect(now.stdout).toContain('packed to');
    const after = await FileStorage.open(path, { readOnly: true });
    try {
      const kept = await allTransactions(after);
      expect(kept.every((t) => t.status === 'p')).toBe(true);
      expect(kept.at(-1)!.tid.equals(tids.at(-1)!)).toBe(true);
    } finally {
      await after.close();
    }
  });
});

describe('zrs pack ADDRESS', () => {
  it('asks the running node to pack its own file, and prints what it did', async () => {
    const dir = await tempDir();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, auditPath: null });
    try {
      const tids = await commitMany(primary.storage, 30);
      const size = primary.storage.getSize();
      const label = `127.0.0.1:${(primary.address as { port: number }).port}`;
      // Garbage collection of records that are not pickles fails on the node: exit 1, saying why, nothing changed.
      const gc = await run('pack', label);
      expect(gc.code).toBe(1);
      expect(gc.stderr).toMatch(new RegExp(`^zrs pack: ${label} did not pack \\(gc-refused\\): .* has no revision at the pack time; nothing was packed \\(--no-gc packs without garbage collection\\)\\n$`));
      expect(primary.storage.getSize()).toBe(size);
      const r = await run('pack', label, '--time', String(tidToSeconds(tids.at(-1)!) + 1), '--no-gc');
      expect(r.code, r.stderr).toBe(0);
      const m = /^(\S+): packed to \S+ \S+ UTC \(tid ([0-9a-f]{16})\): (\d+) -> (\d+) bytes; the node keeps the file before the pack beside its data file \(\.old\)\n$/.exec(r.stdout);
      expect(m, r.stdout).not.toBeNull();
      expect(m![1]).toBe(label);
      expect(m![2]).toBe(tids.at(-1)!.toString('hex'));
      expect(Number(m![3])).toBe(size);
      expect(Number(m![4])).toBe(primary.storage.getSize());
      expect(Number(m![4])).toBeLessThan(size);
    } finally {
      await primary.close();
    }
  });

  it("shows the node's progress on a terminal (a pass with nothing to read at 100 %, a new pass at the same percentage, more than the total capped), clears it, and names the blob files the node could not delete", async () => {
    const server = await FakeServer.start();
    try {
      const io = memoryIo({ stderrIsTTY: true });
      const label = `127.0.0.1:${(server.address as { port: number }).port}`;
      const running = runCli(['pack', label, '--no-gc'], io);
      const node = await server.connection(0);
      await node.frame(1);
      const packr = createNativePackr();
      node.send(encodeNative({ type: 'pack-progress', step: 'index', done: 0, total: 0 }, packr));
      node.send(encodeNative({ type: 'pack-progress', step: 'index', done: 25, total: 100 }, packr));
      node.send(encodeNative({ type: 'pack-progress', step: 'references', done: 25, total: 100 }, packr));
      node.send(encodeNative({ type: 'pack-progress', step: 'copy', done: 130, total: 100 }, packr));
      node.send(
        encodeNative({ type: 'packed', packed: true, packTid: Buffer.alloc(8, 3), sizeBefore: 100, sizeAfter: 50, tailTransactions: 1, blobFiles: 'deleted', removedBlobFiles: 3, blobFilesNotRemoved: 2, blobRemovalError: 'EACCES: permission denied' }, packr),
      );
      expect(await running).toBe(0);
      expect(io.stderr).toBe(
        `\rpacking ${label}: reading 100%\rpacking ${label}: reading 25%\rpacking ${label}: following references 25%\rpacking ${label}: writing 100%\r\x1b[2K` +
          'zrs pack: 2 blob file(s) of removed revisions could not be deleted (EACCES: permission denied); delete them by hand\n',
      );
      expect(io.stdout).toContain(': 100 -> 50 bytes; 3 blob file(s) removed; the node keeps');
    } finally {
      await server.close();
    }
  });

  it('tells a FILE from an ADDRESS: a directory, a device and a missing .fs file are neither', async () => {
    const dir = await tempDir();
    for (const [target, says] of [
      [dir, 'a directory, not a data file (FILE) or a running node\'s socket (ADDRESS)'],
      ['/dev/null', "neither a data file (FILE) nor a running node's socket (ADDRESS)"],
      [join(dir, 'missing.FS'), 'no such file (FILE must be an existing data file'],
    ]) {
      const r = await run('pack', target!, '--no-gc');
      expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 1, stderr: expect.stringContaining(`${target}: ${says}`) });
    }
  });

  it('takes --timeout only with ADDRESS, and --blob-dir and --keep-blob-files only with FILE', async () => {
    const path = join(await tempDir(), 'Data.fs');
    await storageFileWith(path, 2);
    const withTimeout = await run('pack', path, '--timeout', '5');
    expect(withTimeout.code).toBe(2);
    expect(withTimeout.stderr).toContain("--timeout applies to a running node's ADDRESS, not to a FILE");
    for (const flag of [['--blob-dir', '/tmp'], ['--keep-blob-files']]) {
      const r = await run('pack', '127.0.0.1:1', ...flag);
      expect(r.code).toBe(2);
      expect(r.stderr).toContain(`${flag[0]} applies to a FILE; a running node packs with its own blob directory`);
    }
  });
});
