// The zrs command line in-process: help and usage errors on every command,
// `verify` on every fixture (intact: OK; damaged or corrupted: the position),
// `dump` byte-for-byte against ZODB's own fsdump output.

import { execFile } from 'node:child_process';
import { readFile, rm, writeFile, open as openFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { runCli } from '../../src/cli/cli.js';
import { humanLogger } from '../../src/cli/logging.js';
import { pickleClass } from '../../src/cli/pickleClass.js';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { NoSuchStorageError } from '../../src/errors.js';
import { pyBytesRepr } from '../../src/cli/dump.js';
import { verifyFile } from '../../src/cli/verify.js';
import { writeFill } from '../../src/storage/prealloc.js';
import { cleanupTempDirs, copyZodbFixture, fixturePath, readManifest, tempDir } from '../helpers/fixtures.js';
import { BIN, memoryIo } from './helpers.js';
import { storageFileWith } from '../replication/helpers.js';
import { FakeServer, settleUntil } from '../replication/netHelpers.js';
import { createNativePackr, encodeNativeFrame } from '../../src/wire/native.js';
import { indexPathFor } from '../../src/storage/indexFile.js';
import { packTimeToTid } from '../../src/storage/pack.js';

afterAll(cleanupTempDirs);

const INTACT = ['basic', 'undo', 'packed', 'blobs', 'large', 'fs21-legacy'];
const DUMPED = ['basic', 'undo', 'packed', 'blobs', 'large', 'damaged-truncated', 'damaged-checkpoint', 'damaged-trailer'];

async function run(...argv: string[]) {
  const io = memoryIo();
  const code = await runCli(argv, io);
  return { code, stdout: io.stdout, stderr: io.stderr };
}

async function copy(dir: string): Promise<string> {
  return join(await copyZodbFixture(dir), 'Data.fs');
}

async function overwrite(path: string, pos: number, bytes: Buffer): Promise<void> {
  const fh = await openFile(path, 'r+');
  await fh.write(bytes, 0, bytes.length, pos);
  await fh.close();
}

async function commitOne(fs: FileStorage, data: Buffer): Promise<void> {
  const txn = { description: `${data.length} bytes` };
  await fs.tpcBegin(txn);
  fs.store(fs.newOid(), Buffer.alloc(8), data, txn);
  await fs.tpcVote(txn);
  await fs.tpcFinish(txn);
}

/**
 * `zrs serve` of a standalone storage (a copy of the basic fixture) through
 * an io whose signals the test delivers and whose exits it records (an exit
 * throws, as the real one never returns).
 */
async function signalledServe(): Promise<{ cfg: string; io: ReturnType<typeof memoryIo>; deliver: (signal: NodeJS.Signals) => void; exits: number[] }> {
  const dir = await copyZodbFixture('basic');
  const cfg = join(dir, 'standalone.conf');
  await writeFile(cfg, `<filestorage>\n path ${dir}/Data.fs\n</filestorage>\n`);
  const io = memoryIo();
  const exits: number[] = [];
  let handler: (signal: NodeJS.Signals) => void = () => undefined;
  io.onSignal = (h) => {
    handler = h;
    return () => undefined;
  };
  io.exit = (code) => {
    exits.push(code);
    throw new Error(`exit ${code}`);
  };
  return { cfg, io, deliver: (signal) => handler(signal), exits };
}

function u64(n: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(n));
  return b;
}

describe('zrs help and usage', () => {
  it('prints the command list on --help and exits 0', async () => {
    const r = await run('--help');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^usage: zrs COMMAND/);
    for (const c of ['serve', 'verify', 'dump']) expect(r.stdout).toContain(`  ${c} `);
  });

  it.each(['serve', 'verify', 'dump'])('zrs %s --help prints usage, description and options', async (cmd) => {
    // Help wins over every other problem on the line.
    for (const argv of [[cmd, '--help'], [cmd, 'x', '-h'], ['help', cmd], [cmd, '--bogus', 'a', 'b', '--help'], [cmd, '-zh']]) {
      const r = await run(...argv);
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(new RegExp(`^usage: zrs ${cmd} `));
      expect(r.stdout).toContain('-h, --help');
      expect(r.stdout).toContain('example');
    }
  });

  it.each([
    [[], 'zrs: missing COMMAND'],
    [['frobnicate'], 'zrs: unknown command "frobnicate"'],
    [['serve'], 'zrs serve: missing CONFIG'],
    [['verify', 'a', 'b'], 'zrs verify: unexpected argument "b"'],
    [['dump', '--offset', 'a'], 'zrs dump: unknown option --offset'],
    [['serve', '--log-format', 'xml', 'c'], 'zrs serve: option --log-format must be one of json, human, not "xml"'],
    [['serve', 'c', '--log-format'], 'zrs serve: option --log-format needs a value (FORMAT)'],
    [['serve', '--marking-start', '100', 'c'], 'zrs serve: option --marking-start must be an integer from 0 to 99, not "100"'],
    [['serve', '--marking-start', '8.5', 'c'], 'zrs serve: option --marking-start must be an integer from 0 to 99, not "8.5"'],
    [['help', 'nope'], 'zrs: unknown command "nope"'],
    [['help', 'serve', 'verify'], 'zrs: unexpected argument "verify" after help'],
    [['--version', 'x'], 'zrs: unexpected argument "x" after --version'],
    [['--help', 'serve'], 'zrs: unexpected argument "serve" after --help'],
    // Help only as an option: after `--` it is a positional, and as an option's value it is that value.
    [['verify', 'a', '--', '-h'], 'zrs verify: unexpected argument "-h"'],
    [['serve', '--log-format', '-h', 'c'], 'zrs serve: option --log-format must be one of json, human, not "-h"'],
  ])('%j is a usage error (exit 2)', async (argv, message) => {
    const r = await run(...argv);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(message);
    expect(r.stdout).toBe('');
  });

  it('reports a missing file or a directory as a failure (exit 1) naming it, not a crash', async () => {
    const r = await run('verify', '/nonexistent/Data.fs');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^zrs verify: .*no such file/i);
    const dir = await tempDir();
    for (const command of ['verify', 'audit', 'dump']) {
      const missing = await run(command, join(dir, 'missing'));
      expect(missing, command).toMatchObject({ code: 1, stderr: `zrs ${command}: ${join(dir, 'missing')}: no such ${command === 'dump' ? 'storage ' : ''}file\n` });
      const directory = await run(command, dir);
      expect(directory, command).toMatchObject({ code: 1, stderr: `zrs ${command}: ${dir}: a directory, not a ${command === 'dump' ? 'storage ' : ''}file\n` });
    }
  });

  it('serve reports a configuration error with file:line and key (exit 1)', async () => {
    const dir = await copyZodbFixture('basic');
    const { writeFile } = await import('node:fs/promises');
    const cfg = join(dir, 'bad.conf');
    await writeFile(cfg, `%import zc.zrs\n<zrs>\n replicate-to 127.0.0.1:0\n keep-alive 5\n <filestorage>\n  path ${dir}/Data.fs\n </filestorage>\n</zrs>\n`);
    const r = await run('serve', cfg);
    expect(r.code).toBe(1);
    // Logs are JSON lines here (stderr is no terminal): the reason is one of them.
    expect(JSON.parse(r.stderr)).toMatchObject({ level: 'error', message: expect.stringContaining(`configuration error: ${cfg}:4: keep-alive: unknown key in <zrs>`) });
    const human = await run('serve', '--log-format', 'human', cfg);
    expect(human.code).toBe(1);
    expect(human.stderr).toContain(`zrs serve: configuration error: ${cfg}:4: keep-alive: unknown key in <zrs>`);
    const check = await run('serve', '--check', cfg.replace('bad.conf', 'none.conf'));
    expect(check.code).toBe(1);
    expect(check.stderr).toContain('none.conf: cannot read configuration: no such file');
    // --check answers in plain words whatever the log format: it runs nothing that logs.
    const checkJson = await run('serve', '--check', '--log-format', 'json', cfg);
    expect(checkJson.code).toBe(1);
    expect(checkJson.stderr).toMatch(/^zrs serve: configuration error: .*keep-alive: unknown key in <zrs>/);
  });

  it('serve --check prints what would run', async () => {
    const dir = await copyZodbFixture('basic');
    const { writeFile } = await import('node:fs/promises');
    const cfg = join(dir, 'ok.conf');
    await writeFile(cfg, `%import zc.zrs\n<zrs main>\n replicate-to ${dir}/p.sock\n <filestorage>\n  path ${dir}/Data.fs\n </filestorage>\n</zrs>\n`);
    const r = await run('serve', '--check', cfg);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(`${cfg}:2: primary main: ${dir}/Data.fs, replicating to ${dir}/p.sock, audit log ${dir}/Data.fs.audit\n`);
    // A storage section without a name of its own is named by its path, said once.
    await writeFile(cfg, `<filestorage>\n path ${dir}/Data.fs\n read-only true\n</filestorage>\n`);
    expect((await run('serve', '--check', cfg)).stdout).toBe(`${cfg}:1: filestorage ${dir}/Data.fs (read-only)\n`);
  });

  it('serve fails cleanly (exit 1, lock released) when a replication port is taken', async () => {
    const dir = await copyZodbFixture('basic');
    const { writeFile } = await import('node:fs/promises');
    const { createServer } = await import('node:net');
    const busy = createServer();
    await new Promise<void>((resolve) => busy.listen(0, '127.0.0.1', resolve));
    const port = (busy.address() as { port: number }).port;
    try {
      const cfg = join(dir, 'busy.conf');
      await writeFile(cfg, `%import zc.zrs\n<zrs>\n replicate-to 127.0.0.1:${port}\n <filestorage>\n  path ${dir}/Data.fs\n </filestorage>\n</zrs>\n`);
      const r = await run('serve', cfg);
      expect(r.code).toBe(1);
      const lines = r.stderr.trim().split('\n').map((l) => JSON.parse(l) as { level: string; message: string });
      // The storage that failed and where it is configured, then why.
      expect(lines.find((l) => l.level === 'error')?.message).toMatch(new RegExp(`^failed to start: storage ${dir}/Data.fs \\(${cfg}:2\\): .*EADDRINUSE`));
      expect(lines.at(-1)).toMatchObject({ message: 'stopped', exitCode: 1 });
      const fs = await FileStorage.open(join(dir, 'Data.fs')); // the lock was released
      await fs.close();
    } finally {
      await new Promise((resolve) => busy.close(resolve));
    }
  });

  it('serve: a signal during start-up stops it cleanly; a second one exits at once with 1', async () => {
    for (const signals of [1, 2]) {
      const { cfg, io, deliver, exits } = await signalledServe();
      // Called after the handler is hooked and before the first storage opens.
      io.tuneCollector = () => {
        for (let i = 0; i < signals; i++) deliver('SIGINT');
      };
      const outcome = await runCli(['serve', cfg], io).catch((err: Error) => err.message);
      if (signals === 1) {
        expect(outcome).toBe(0);
        expect(io.stderr).toContain('SIGINT received: closing');
        expect(exits).toEqual([]);
      } else {
        expect(outcome).toBe('exit 1');
        expect(exits).toEqual([1]);
        expect(io.stderr).toContain('second SIGINT during start-up: exiting without closing cleanly');
      }
    }
  });

  it('serve: a second signal while the shutdown waits (a storage slow to close) exits at once with 1', async () => {
    const { cfg, io, deliver, exits } = await signalledServe();
    const realClose = FileStorage.prototype.close;
    let closing: () => void = () => undefined;
    const closeStarted = new Promise<void>((started) => (closing = started));
    let release: () => void = () => undefined;
    const held = new Promise<void>((r) => (release = r));
    const close = vi.spyOn(FileStorage.prototype, 'close').mockImplementation(async function (this: FileStorage) {
      closing();
      await held;
      return realClose.call(this);
    });
    try {
      const serving = runCli(['serve', cfg], io);
      await settleUntil(() => io.stderr.includes('"message":"ready"'));
      deliver('SIGTERM');
      await closeStarted;
      expect(() => deliver('SIGTERM')).toThrow('exit 1');
      expect(exits).toEqual([1]);
      expect(io.stderr).toContain('second SIGTERM during shutdown: exiting without closing cleanly');
      // (A real process ends at the exit; here the shutdown goes on once released.)
      release();
      expect(await serving).toBe(0);
    } finally {
      close.mockRestore();
    }
  });

  it('serve: a storage that fails to close makes the exit code 1, after the others closed', async () => {
    const { cfg, io, deliver } = await signalledServe();
    const realClose = FileStorage.prototype.close;
    const close = vi.spyOn(FileStorage.prototype, 'close').mockImplementation(async function (this: FileStorage) {
      await realClose.call(this);
      throw new Error('disk gone');
    });
    try {
      const serving = runCli(['serve', cfg], io);
      await settleUntil(() => io.stderr.includes('"message":"ready"'));
      deliver('SIGTERM');
      expect(await serving).toBe(1);
      expect(io.stderr).toContain('close failed: disk gone');
    } finally {
      close.mockRestore();
    }
  });

  it('logs readable lines on a terminal', () => {
    const lines: string[] = [];
    humanLogger('p1', (l) => lines.push(l), () => new Date('2024-01-01T12:34:56.789Z'))('warn', 'disconnected', { address: '127.0.0.1:5000', reason: 'peer closed' });
    expect(lines).toEqual(['12:34:56.789 WARN  p1: disconnected  address=127.0.0.1:5000 reason="peer closed"\n']);
  });

  it("writes a peer's words in zrs status's error with their control characters as \\xNN", async () => {
    // A node that refuses the status request with escapes in its message.
    const fake = await FakeServer.start((c) => c.socket.write(encodeNativeFrame({ type: 'refuse', code: 'internal', message: 'no\u001b[2J\u009bstatus\nfor you' }, createNativePackr())));
    try {
      const r = await run('status', '--timeout', '5', `127.0.0.1:${(fake.address as { port: number }).port}`);
      expect(r.code).not.toBe(0);
      expect(r.stderr).toContain('refused (internal): no\\x1b[2J\\x9bstatus\\x0afor you');
      expect(r.stderr.slice(0, -1)).not.toMatch(/[\x00-\x1f\x7f-\x9f]/);
    } finally {
      await fake.close();
    }
  });

  it("writes a peer's control characters in a log line as \\xNN: one line, no terminal escapes", () => {
    const lines: string[] = [];
    humanLogger('p1', (l) => lines.push(l), () => new Date('2024-01-01T12:34:56.789Z'))('error', 'primary refused replication: internal: \u001b[2J\nfake line', { code: '\u001b]0;x\u0007' });
    expect(lines).toEqual(['12:34:56.789 ERROR p1: primary refused replication: internal: \\x1b[2J\\x0afake line  code=\\x1b]0;x\\x07\n']);
    // A value with white space goes through JSON, which leaves C1 controls (CSI, \x9b) as they are.
    humanLogger('p1', (l) => lines.push(l), () => new Date('2024-01-01T12:34:56.789Z'))('warn', 'x', { reason: 'a \u009b2J b' });
    expect(lines[1]).toBe('12:34:56.789 WARN  p1: x  reason="a \\x9b2J b"\n');
  });

  it('the bin/zrs.js shim runs the command line and exits with its code', async () => {
    const exec = promisify(execFile);
    const ok = await exec(process.execPath, [BIN, 'verify', fixturePath('zodb', 'basic', 'Data.fs')]);
    expect(ok.stdout).toContain('OK: FS30, 53 transactions');
    await expect(exec(process.execPath, [BIN, 'verify', fixturePath('zodb', 'damaged-truncated', 'Data.fs')])).rejects.toMatchObject({ code: 1 });
    await expect(exec(process.execPath, [BIN, 'nope'])).rejects.toMatchObject({ code: 2 });
  });
});

describe('zrs verify', () => {
  it.each(INTACT)('accepts the intact fixture %s with the manifest counts', async (dir) => {
    const m = await readManifest(dir);
    const path = await copy(dir);
    const r = await run('verify', path);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    // A Python 2 file passes, and the line says ZODB on Python 3 would not open it.
    const format = m.magic === 'FS21' ? "FS21 (Python 2's format: ZODB on Python 3 refuses to open it)" : m.magic;
    expect(r.stdout).toContain(`${path}: OK: ${format}, ${m.transaction_count} transactions, ${m.record_count} data records`);
    expect(r.stdout).toContain(`${m.file_size} bytes, last ${m.storage.lastTransaction}`);
  });

  it.each([
    ['damaged-truncated', 10539, 'runs past the end of the file'],
    ['damaged-checkpoint', 10539, "status 'c', an unfinished transaction"],
    ['damaged-trailer', 10539 + 219, 'its 8-byte redundant length is cut off'],
  ])('rejects %s at position %i', async (dir, position, what) => {
    const path = await copy(dir);
    const r = await run('verify', path);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain(`${path}: position ${position}: transaction 03f5e2607a19b377 at 10539: ${what}`);
    // Each is what a crash during the last commit leaves: the message says what the next read-write open does.
    expect(r.stderr).toContain('a read-write open cuts it');
    expect(r.stderr).toContain('(52 good transactions before it)');
  });

  it('finds a corrupted redundant length, with its position', async () => {
    const m = await readManifest('basic');
    const t = m.transactions[5];
    const path = await copy('basic');
    await overwrite(path, t.pos + t.tlen, u64(t.tlen + 1));
    const r = await verifyFile(path);
    expect(r).toMatchObject({ ok: false, position: t.pos + t.tlen, transactions: 5 });
    if (!r.ok) expect(r.problem).toBe(`transaction ${t.tid} at ${t.pos}: redundant length ${t.tlen + 1} differs from the header's ${t.tlen}`);
  });

  it('finds a backpointer that does not point at a record of the same oid', async () => {
    const path = await copy('undo');
    await overwrite(path, 811 + 42, u64(496)); // "U1 undo T3" points at 495
    const r = await verifyFile(path);
    expect(r).toMatchObject({ ok: false, position: 811 + 42 });
    if (!r.ok) expect(r.problem).toContain('backpointer 496 is not the position of an earlier data record');
  });

  it('finds a record whose tid is not its transaction\'s, a broken prev, and tids out of order', async () => {
    const m = await readManifest('basic');
    const rec = m.transactions[3].records[0];
    let path = await copy('basic');
    await overwrite(path, rec.pos + 8, Buffer.alloc(8, 1));
    expect(await verifyFile(path)).toMatchObject({ ok: false, position: rec.pos + 8 });
    path = await copy('basic');
    await overwrite(path, rec.pos + 16, u64(rec.prev + 1));
    const prev = await verifyFile(path);
    expect(prev).toMatchObject({ ok: false, position: rec.pos + 16 });
    if (!prev.ok) expect(prev.problem).toContain(`prev ${rec.prev + 1} should be ${rec.prev}`);
    path = await copy('basic');
    await overwrite(path, m.transactions[7].pos, Buffer.from(m.transactions[6].tid, 'hex'));
    const order = await verifyFile(path);
    expect(order).toMatchObject({ ok: false, position: m.transactions[7].pos });
    if (!order.ok) expect(order.problem).toContain('tid is not after the previous one');
  });

  it("passes a transaction holding two records of one object, whose prev both name the object's earlier record (as ZODB writes them), before and after a pack", async () => {
    const path = join(await tempDir(), 'Data.fs');
    const fs = await FileStorage.open(path, { create: true, fsync: false });
    const oid = Buffer.from('0000000000000001', 'hex');
    const store = async (serial: Buffer, ...datas: string[]): Promise<Buffer> => {
      const txn = { description: datas.join(', ') };
      await fs.tpcBegin(txn);
      for (const d of datas) fs.store(oid, serial, Buffer.from(d), txn);
      await fs.tpcVote(txn);
      return fs.tpcFinish(txn);
    };
    try {
      const t0 = await store(Buffer.alloc(8), 'v0');
      const t1 = await store(t0, 'a', 'b');
      await store(t1, 'c');
      await fs.close();
      expect(await verifyFile(path)).toMatchObject({ ok: true, transactions: 3 });
      const packing = await FileStorage.open(path, { fsync: false });
      await packing.pack(Date.now() / 1000 + 60);
      await packing.close();
      expect(await verifyFile(path)).toMatchObject({ ok: true });
    } finally {
      await fs.close();
    }
  });

  it('passes a packed file that keeps two records of one object before the pack time (the current one, and the one a later undo points back to)', async () => {
    const path = join(await tempDir(), 'Data.fs');
    const fs = await FileStorage.open(path, { create: true, fsync: false });
    const T = 1_700_000_000;
    const root = Buffer.alloc(8);
    const commitAt = async (offset: number, writes: Array<[Buffer, Buffer, string]>): Promise<Buffer> => {
      const txn = { description: `at ${offset}` };
      await fs.tpcBegin(txn, { tid: packTimeToTid(T + offset) });
      for (const [oid, serial, data] of writes) fs.store(oid, serial, Buffer.from(data), txn);
      await fs.tpcVote(txn);
      return fs.tpcFinish(txn);
    };
    try {
      const t0 = await commitAt(-200, [[root, Buffer.alloc(8), 'v0']]);
      await commitAt(-150, [[Buffer.from('0000000000000001', 'hex'), Buffer.alloc(8), 'unreachable']]);
      const t2 = await commitAt(-100, [[root, t0, 'v1']]);
      const undo = { description: 'undo v1' };
      await fs.tpcBegin(undo, { tid: packTimeToTid(T + 100) });
      await fs.undo(t2, undo);
      await fs.tpcVote(undo);
      await fs.tpcFinish(undo);
      await fs.pack(T, () => []);
      await fs.close();
      expect(await verifyFile(path)).toMatchObject({ ok: true });
    } finally {
      await fs.close();
    }
  });

  /** The basic fixture with `bytes` written `offset` bytes into its third transaction, and what verify says of it there. */
  async function verifyThirdChanged(offset: number, bytes: Buffer): Promise<{ path: string; pos: number; problem: string }> {
    const t = (await readManifest('basic')).transactions[2];
    const path = await copy('basic');
    await overwrite(path, t.pos + offset, bytes);
    const r = await verifyFile(path);
    expect(r).toMatchObject({ ok: false, position: t.pos, transactions: 2 });
    return { path, pos: t.pos, problem: r.ok ? '' : r.problem };
  }

  it('says of a voted transaction that intact ones follow what the open does: it cuts it and them', async () => {
    const { path, pos, problem } = await verifyThirdChanged(16, Buffer.from('c'));
    expect(problem).toContain("status 'c', an unfinished transaction (voted, never finished); yet intact transactions follow it: a read-write open cuts it and every one after it");
    await rm(indexPathFor(path), { force: true });
    const fs = await FileStorage.open(path);
    try {
      expect(fs.tailCutOnOpen?.position).toBe(pos);
    } finally {
      await fs.close();
    }
  });

  it('tells damage from a crash leftover: a transaction whose length runs past the end while intact transactions follow it is damage', async () => {
    const { problem } = await verifyThirdChanged(8, u64(1_000_000));
    expect(problem).toContain('runs past the end of the file');
    expect(problem).toContain('yet intact transactions follow it: damage, not what a crash leaves (a read-write open refuses the file)');
    expect(problem).not.toContain('a read-write open cuts it');
  });

  it('stops at the fill of a file open for writing, and reports a transaction a torn sync left holding fill', async () => {
    const path = await copy('basic');
    const m = await readManifest('basic');
    const fs = await FileStorage.open(path);
    try {
      const txn = { description: 'over the fill' };
      await fs.tpcBegin(txn);
      fs.store(fs.newOid(), Buffer.alloc(8), Buffer.alloc(1500, 9), txn);
      await fs.tpcVote(txn);
      await fs.tpcFinish(txn);
      const open = await run('verify', path);
      expect(open.code).toBe(0);
      const fill = (await readFile(path)).length - fs.getSize();
      expect(fill).toBeGreaterThan(0);
      expect(open.stdout).toContain(`${m.transaction_count + 1} transactions`);
      expect(open.stdout).toContain(`${fs.getSize()} bytes, last ${fs.lastTransaction().toString('hex')}`);
      expect(open.stdout).toContain(`then ${fill} bytes of preallocated fill`);
      // What a power cut during its sync could leave: the sector holding the new transaction's last bytes not written.
      const sector = Math.floor((fs.getSize() - 16) / 512) * 512;
      const old = Buffer.alloc(512 + 8);
      writeFill(old, sector);
      const from = Math.max(sector, m.file_size);
      await overwrite(path, from, old.subarray(from - sector, Math.min(512, fs.getSize() - sector)));
      // The storage holds the file: a problem is reported once the file held still for the settle time.
      const torn = await verifyFile(path, { settleMs: 0 });
      expect(torn).toMatchObject({ ok: false, position: Math.ceil(from / 8) * 8, transactions: m.transaction_count, inUse: true });
      if (!torn.ok) expect(torn.problem).toContain('holds preallocated fill, a sync torn by a crash');
    } finally {
      await fs.close();
    }
  });

  it('shows a percentage on a terminal and nothing otherwise', async () => {
    const path = await copy('large');
    const tty = memoryIo({ stderrIsTTY: true });
    expect(await runCli(['verify', path], tty)).toBe(0);
    expect(tty.stderr).toContain(`\rverifying ${path}: 100%`);
    const pipe = memoryIo();
    expect(await runCli(['verify', path], pipe)).toBe(0);
    expect(pipe.stderr).toBe('');
    const quiet = memoryIo({ stderrIsTTY: true });
    expect(await runCli(['verify', '--no-progress', path], quiet)).toBe(0);
    expect(quiet.stderr).toBe('');
  });
});

describe('zrs dump', () => {
  it.each(DUMPED)('prints %s exactly as ZODB\'s fsdump', async (dir) => {
    const want = await readFile(fixturePath('zodb', dir, 'fsdump.txt'), 'utf8');
    const r = await run('dump', await copy(dir));
    expect(r.code).toBe(0);
    // A damaged tail stops the dump as it stops ZODB's (which logs it); ours says so on stderr.
    if (dir.startsWith('damaged-')) expect(r.stderr).toMatch(/^zrs dump: .+: stopped at offset \d+, before the end of the data: /);
    else expect(r.stderr).toBe('');
    expect(r.stdout).toBe(want);
  });

  it('lists the transactions before damage the storage will not open past, then names the damage (exit 1)', async () => {
    const path = await copy('basic');
    const whole = (await run('dump', path)).stdout;
    // The tenth transaction's length, made far too large: the storage refuses the file.
    const starts = [...whole.matchAll(/offset=(\d+)/g)].map((m) => Number(m[1]));
    const bytes = await readFile(path);
    let pos = 4;
    for (let i = 0; i < 9; i++) pos += Number(bytes.readBigUInt64BE(pos + 8)) + 8;
    expect(starts[9]).toBeGreaterThan(pos); // the tenth transaction's first record follows its header
    await overwrite(path, pos + 8, u64(1e9));
    await expect(FileStorage.open(path, { readOnly: true })).rejects.toThrow();
    const r = await run('dump', path);
    expect(r.code).toBe(1);
    const lines = whole.split('\n');
    const tenth = lines.findIndex((l) => l.startsWith('Trans #00009 '));
    expect(r.stdout).toBe(`${lines.slice(0, tenth).join('\n')}\n`);
    expect(r.stderr).toMatch(new RegExp(`^zrs dump: ${path}: corrupted data at position ${pos}: .+, yet intact transactions follow \\(listed up to it; zrs verify ${path} tells more\\)\n$`));
  });

  it('stops at damage the storage finds inside a transaction (a record naming another transaction), and names a file that is no storage as before', async () => {
    const path = await copy('basic');
    const whole = (await run('dump', path)).stdout;
    const bytes = await readFile(path);
    let pos = 4;
    for (let i = 0; i < 5; i++) pos += Number(bytes.readBigUInt64BE(pos + 8)) + 8;
    const first = pos + 23 + bytes.readUInt16BE(pos + 17) + bytes.readUInt16BE(pos + 19) + bytes.readUInt16BE(pos + 21);
    await overwrite(path, first + 24, u64(123)); // the sixth transaction's first record: tloc
    await rm(indexPathFor(path), { force: true });
    const r = await run('dump', path);
    expect(r.code).toBe(1);
    const lines = whole.split('\n');
    expect(r.stdout).toBe(`${lines.slice(0, lines.findIndex((l) => l.startsWith('Trans #00005 '))).join('\n')}\n`);
    expect(r.stderr).toContain(`corrupted data at position ${first}: data record points at transaction 123, not ${pos}`);

    const text = join(await tempDir(), 't.txt');
    await writeFile(text, 'hello, this is not a storage file\n');
    expect(await run('dump', text)).toMatchObject({ code: 1, stdout: '', stderr: expect.stringContaining('not a FileStorage file') });
  });

  it('reads class names from GLOBAL, STACK_GLOBAL and tuple class pickles without unpickling', () => {
    expect(pickleClass(Buffer.from('8003635a4f44422e626c6f620a426c6f620a71002e80034e2e', 'hex'))).toEqual(['ZODB.blob', 'Blob']);
    expect(pickleClass(Buffer.from('(cpersistent.mapping\nPersistentMapping\nq\x01Nt.', 'latin1'))).toEqual(['persistent.mapping', 'PersistentMapping']);
    const stackGlobal = Buffer.concat([Buffer.from([0x80, 0x04, 0x95]), Buffer.alloc(8), Buffer.from([0x8c, 3]), Buffer.from('foo'), Buffer.from([0x94, 0x8c, 3]), Buffer.from('Bar'), Buffer.from([0x94, 0x93, 0x94, 0x2e])]);
    expect(pickleClass(stackGlobal)).toEqual(['foo', 'Bar']);
    const tuple = Buffer.concat([Buffer.from([0x80, 0x02, 0x58, 3, 0, 0, 0]), Buffer.from('mod'), Buffer.from([0x58, 4, 0, 0, 0]), Buffer.from('Name'), Buffer.from([0x86, 0x71, 0x01, 0x2e])]);
    expect(pickleClass(tuple)).toEqual(['mod', 'Name']);
    expect(pickleClass(Buffer.from('not a pickle'))).toEqual(['', '']);
    // Records CPython pickled at protocols 0 to 5, the class alone or in a (class, args) tuple.
    const cases: Array<{ name: string; pickle: string }> = JSON.parse(readFileSync(new URL('../helpers/referencePickles.json', import.meta.url), 'utf8'));
    for (const c of cases) expect(pickleClass(Buffer.from(c.pickle, 'hex')), c.name).toEqual(c.name.startsWith('old-style') ? ['__main__', 'Old'] : ['collections', 'OrderedDict']);
  });

  it('says on stderr where it stopped when it cannot read to the end of the data', async () => {
    const dir = await tempDir();
    const path = join(dir, 'Data.fs');
    const tids = await storageFileWith(path, 3);
    const reader = await FileStorage.open(path, { readOnly: true });
    let lastPos = 0;
    for await (const t of reader.iterator()) lastPos = t.pos;
    await reader.close();
    // The first transaction's length made impossible: nothing after it can be read.
    const bytes = await readFile(path);
    bytes.writeUInt32BE(0xffffffff, 4 + 8);
    await writeFile(path, bytes);
    // Trusting the saved index, the open did not scan it: the iterator finds the damage and says so.
    let r = await run('dump', path);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/corrupted data at position 4: transaction length \d+ runs past the end of the data/);
    // Without the index the open scans and finds intact transactions after the damage: the storage refuses
    // the file, and dump opens it again to stop at the damage (here the first transaction): nothing listed.
    await rm(indexPathFor(path));
    await expect(FileStorage.open(path, { readOnly: true })).rejects.toThrow(/corrupted data at position 4: transaction runs past the end of the file, yet intact transactions follow/);
    r = await run('dump', path);
    expect(r).toMatchObject({ code: 1, stdout: '' });
    expect(r.stderr).toMatch(/corrupted data at position 4: transaction runs past the end of the file, yet intact transactions follow \(listed up to it;/);
    // Damage that reaches the end (the last transaction's length): dump lists what precedes it and says where it stopped.
    bytes.writeUInt32BE(0, 4 + 8);
    bytes.writeUInt32BE(0xffffffff, lastPos + 8);
    await writeFile(path, bytes);
    r = await run('dump', path);
    expect(r.stdout.match(/^Trans #/gm)).toHaveLength(tids.length - 1);
    expect(r.stderr).toMatch(new RegExp(`^zrs dump: ${path}: stopped at offset ${lastPos}, before the end of the data: .+ \\(a transaction still being committed, or damage: zrs verify`));
  });

  it('lists a file a server has open (data ending anywhere in a word of fill) without a warning', async () => {
    const path = join(await tempDir(), 'Data.fs');
    const fs = await FileStorage.open(path, { create: true });
    try {
      const ends = new Set<number>();
      for (let i = 0; i < 64 && ends.size < 8; i++) {
        await commitOne(fs, Buffer.alloc(100 + i, i));
        ends.add(fs.getSize() % 8);
        const r = await run('dump', path);
        expect(r.stderr, `data ending at ${fs.getSize()}`).toBe('');
        expect(r.stdout.match(/^Trans #/gm)).toHaveLength(i + 1);
      }
      expect(ends.size).toBe(8); // every offset within a word
    } finally {
      await fs.close();
    }
  });

  it('quotes bytes as Python repr does', () => {
    expect(pyBytesRepr(Buffer.from('Jürgen Müller'))).toBe("b'J\\xc3\\xbcrgen M\\xc3\\xbcller'");
    expect(pyBytesRepr(Buffer.from("it's"))).toBe('b"it\'s"');
    expect(pyBytesRepr(Buffer.from('a\'b"c\\\n\t'))).toBe("b'a\\'b\"c\\\\\\n\\t'");
  });
});

describe('operands named wrongly', () => {
  it('promote, rewind and pack refuse an empty file instead of making it a new storage, and leave it empty', async () => {
    const dir = await tempDir();
    const empty = join(dir, 'z.fs');
    await writeFile(empty, '');
    for (const argv of [['promote', empty], ['rewind', '--to-tid', '03f5e2607a19b377', empty], ['pack', empty]]) {
      const r = await run(...argv);
      expect(r.code, argv.join(' ')).toBe(1);
      expect(r.stderr).toBe(`zrs ${argv[0]}: ${empty}: an empty file, not a storage (a data file holds at least its 4-byte magic)\n`);
      expect((await readFile(empty)).length).toBe(0);
    }
  });

  it('promote and rewind take a storage holding only its magic: empty of transactions, not an empty file', async () => {
    const dir = await tempDir();
    const magicOnly = join(dir, 'm.fs');
    await writeFile(magicOnly, 'FS30');
    const r = await run('promote', magicOnly);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('generation 1 starts after tid 0000000000000000');
  });

  it('promote says what a missing file, a directory or a device is before what its options apply to', async () => {
    const dir = await tempDir();
    // A path under a regular file leads nowhere (ENOTDIR): missing, as any other.
    const plainFile = join(dir, 'plain');
    await writeFile(plainFile, 'x');
    expect((await run('promote', join(plainFile, 'x.fs'))).stderr).toBe(`zrs promote: ${join(plainFile, 'x.fs')}: no such file (FILE must be an existing data file; ADDRESS a running node's replication address)\n`);
    const missing = join(dir, 'missing.fs');
    expect(await run('promote', '--audit-log', join(dir, 'a.audit'), missing)).toEqual({
      code: 1,
      stdout: '',
      stderr: `zrs promote: ${missing}: no such file (FILE must be an existing data file; ADDRESS a running node's replication address)\n`,
    });
    const r = await run('promote', '/dev/null');
    expect(r).toEqual({ code: 1, stdout: '', stderr: "zrs promote: /dev/null: neither a data file (FILE) nor a running node's socket (ADDRESS)\n" });
  });

  it('rewind refuses a malformed address as a usage error (exit 2), as every command taking one does', async () => {
    const plain = await copy('basic');
    for (const address of ['[::1', 'host:', '127.0.0.1:0', '127.0.0.1:99999']) {
      const r = await run('rewind', '--to-common-with', address, plain);
      expect(r.code, address).toBe(2);
    }
  });

  it('a path that cannot be looked at is said as it is, not as a missing file', async () => {
    const long = join(await tempDir(), 'x'.repeat(5000));
    const r = await run('dump', long);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('ENAMETOOLONG');
    expect(r.stderr).not.toContain('no such storage file');
  });

  it('an option given where another one wants its value names that value as missing, not a later operand as extra', async () => {
    for (const argv of [['check', '--warning', '--timeout', '1', '127.0.0.1:1', '127.0.0.1:1'], ['check', '-w', '-m', '127.0.0.1:1', '127.0.0.1:1']]) {
      const r = await run(...argv);
      expect(r.code).toBe(2);
      expect(r.stderr.split('\n')[0]).toMatch(/^zrs check: option (--warning|-w) needs a value \(SECS\), not the option (--timeout|-m)$/);
    }
    // Given with its value (--name=value) it is an option too.
    const r = await run('rewind', '--to-tid', '--audit-log=off', 'f.fs');
    expect(r.code).toBe(2);
    expect(r.stderr.split('\n')[0]).toBe('zrs rewind: option --to-tid needs a value (TID), not the option --audit-log=off');
    // A value attached to its option (--warning=--timeout, -w-m) is that value, refused by its own check.
    for (const argv of [['check', '--warning=--timeout', '127.0.0.1:1', '127.0.0.1:1'], ['check', '-w-m', '127.0.0.1:1', '127.0.0.1:1']]) {
      const attached = await run(...argv);
      expect(attached.code).toBe(2);
      expect(attached.stderr).not.toContain('not the option');
    }
    // A value that only looks like an option of no command is still a value (refused by its own check).
    expect((await run('status', '--timeout', '-5', '127.0.0.1:1')).stderr).toContain('--timeout');
  });

  it('zrs help --help prints the main help', async () => {
    for (const flag of ['--help', '-h']) {
      const r = await run('help', flag);
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(/^usage: zrs COMMAND/);
    }
  });
});

describe('paths that are not regular files', () => {
  it('a FIFO, a device or an empty file is refused at once by verify, dump and audit (a FIFO blocked them until something wrote to it)', async () => {
    const dir = await tempDir();
    const fifo = join(dir, 'fifo.fs');
    await promisify(execFile)('mkfifo', [fifo]);
    for (const command of ['verify', 'dump', 'audit']) {
      for (const path of [fifo, '/dev/null']) {
        const r = await run(command, path);
        expect(r.code, `${command} ${path}`).toBe(1);
        expect(r.stderr).toContain(`${path}: not a regular file`);
      }
    }
    const empty = join(dir, 'empty.audit');
    await writeFile(empty, '');
    const r = await run('audit', empty);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`zrs audit: ${empty}: empty: not an audit log (no header)\n`);
  });

  it('a missing data file or audit log directory is named as such, without library advice', async () => {
    const dir = await tempDir();
    const missing = join(dir, 'nope.fs');
    const r = await run('rewind', '--to-tid', '03f5e2607a19b377', missing);
    expect(r).toEqual({ code: 1, stdout: '', stderr: `zrs rewind: ${missing}: no such storage file\n` });
    // The library's own error says what a caller can do.
    await expect(FileStorage.open(missing)).rejects.toThrow(`${missing}: no such storage file (pass create: true to make one)`);
    await expect(FileStorage.open(missing)).rejects.toBeInstanceOf(NoSuchStorageError);

    const plain = await copy('basic');
    const audit = join(dir, 'no-such-dir', 'a.audit');
    const p = await run('promote', '--audit-log', audit, plain);
    expect(p.code).toBe(1);
    expect(p.stderr).toContain(`cannot open the audit log ${audit}: ENOENT`);
  });

  it('writes the control characters of a damaged file quoted in an error as \\xNN: one line, no terminal escapes', async () => {
    const plain = await copy('basic');
    await writeFile(`${plain}.generations`, '\u001b[31m\r\n{}'); // JSON.parse's error quotes it
    const r = await run('promote', plain);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^zrs promote: .*\.generations: not a generation history: .*\n$/);
    expect(r.stderr).toContain('\\x1b[31m\\x0d\\x0a');
    expect(r.stderr.slice(0, -1)).not.toMatch(/[\x00-\x1f]/);
  });

  it('promote names a directory as neither a data file nor a socket', async () => {
    const dir = await tempDir();
    const r = await run('promote', dir);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`zrs promote: ${dir}: a directory, not a data file (FILE) or a running node's socket (ADDRESS)\n`);
  });
});
