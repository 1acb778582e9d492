// `zrs status` and `zrs check` against real nodes on loopback: up to date,
// behind (warning and error thresholds, zc.zrs's nagios.rst cases with the
// same 68.5678-second lag), secondary ahead, either side unreachable, usage
// errors; plus the pure pieces (lag verdict, Python float repr, short options).

import { execFile } from 'node:child_process';
import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { filter, firstValueFrom, timeout } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseArgs, usageLine } from '../../src/cli/args.js';
import { checkSpec, lagVerdict, pyFixed, pyFloatRepr, pythonErrorText } from '../../src/cli/check.js';
import { runCli } from '../../src/cli/cli.js';
import { rewindSpec } from '../../src/cli/rewind.js';
import { formatAddress } from '../../src/replication/address.js';
import { formatStatus } from '../../src/cli/status.js';
import type { NodeStatus } from '../../src/replication/nodeStatus.js';
import { Primary } from '../../src/replication/primary.js';
import { Secondary } from '../../src/replication/secondary.js';
import type { FileStorage } from '../../src/storage/FileStorage.js';
import { tidFromTime, tidToSeconds, Z64 } from '../../src/storage/timestamp.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { waitForState, waitForTid } from '../replication/helpers.js';
import { FAST_RECONNECT, FakeServer } from '../replication/netHelpers.js';
import { BIN, memoryIo } from './helpers.js';

async function run(...argv: string[]) {
  const io = memoryIo();
  const code = await runCli(argv, io);
  return { code, stdout: io.stdout, stderr: io.stderr };
}

/** Commit one small transaction under `tid`. */
async function commitAt(fs: FileStorage, tid: Buffer): Promise<Buffer> {
  const txn = { user: 'tester', description: 'controlled tid' };
  await fs.tpcBegin(txn, { tid });
  fs.store(fs.newOid(), Z64, Buffer.from('data'), txn);
  await fs.tpcVote(txn);
  return fs.tpcFinish(txn);
}

// Controlled times: the secondary stops at BASE, the primary goes on to BASE + 68.5678 s.
const BASE_MS = Date.UTC(2031, 0, 1, 0, 0, 0);
const LAG_MS = 68_567.8;

let dir: string;
let primary: Primary;
/** A primary on a copy of the secondary's file: what the stale secondary replicates from. */
let behind: Primary;
/** A status-serving secondary connected to `behind`: it stays behind `primary`. */
let stale: Secondary;
/** A status-serving secondary whose upstream does not exist. */
let unreachable: Secondary;
let P: string;
let S: string;
let U: string;
let upToDate: { primary: Primary; secondary: Secondary; P: string; S: string };

beforeAll(async () => {
  dir = await tempDir();
  // An up-to-date pair.
  const p0 = await Primary.open({ path: join(dir, 'p0.fs'), replicateTo: '127.0.0.1:0', fsync: false, name: 'main' });
  const s0 = await Secondary.open({ path: join(dir, 's0.fs'), replicateFrom: p0.address, replicateTo: '127.0.0.1:0', fsync: false });
  const t0 = await commitAt(p0.storage, tidFromTime(BASE_MS));
  await waitForTid(s0, t0);
  upToDate = { primary: p0, secondary: s0, P: formatAddress(p0.address), S: formatAddress(s0.replicationAddress!) };

  // A secondary left behind: replicate BASE, close it, commit BASE + lag on the primary, then
  // serve the secondary's file again, connected to a primary holding only BASE (a copy of it),
  // and a copy of it from a node whose upstream does not exist.
  primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false });
  const first = await commitAt(primary.storage, tidFromTime(BASE_MS));
  const s = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: primary.address, fsync: false });
  await waitForTid(s, first);
  await s.close();
  await commitAt(primary.storage, tidFromTime(BASE_MS + LAG_MS));
  copyFileSync(join(dir, 's.fs'), join(dir, 'behind.fs'));
  copyFileSync(join(dir, 's.fs'), join(dir, 'u.fs'));
  behind = await Primary.open({ path: join(dir, 'behind.fs'), replicateTo: '127.0.0.1:0', fsync: false });
  stale = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: behind.address, replicateTo: join(dir, 'stale.sock'), fsync: false });
  await waitForState(stale, 'connected');
  unreachable = await Secondary.open({ path: join(dir, 'u.fs'), replicateFrom: join(dir, 'no-upstream.sock'), replicateTo: join(dir, 'u.sock'), fsync: false, reconnect: { initialMs: 60_000, maxMs: 60_000 } });
  P = formatAddress(primary.address);
  S = join(dir, 'stale.sock');
  U = join(dir, 'u.sock');
});

afterAll(async () => {
  await upToDate.secondary.close();
  await upToDate.primary.close();
  await stale.close();
  await unreachable.close();
  await behind.close();
  await primary.close();
  await cleanupTempDirs();
});

describe('zrs status', () => {
  it('prints a primary with its connected secondary', async () => {
    const r = await run('status', upToDate.P);
    expect(r.code).toBe(0);
    expect(r.stderr).toBe('');
    const tid = upToDate.primary.storage.lastTransaction().toString('hex');
    expect(r.stdout).toContain(`node:             ${upToDate.P} (main)\n`);
    expect(r.stdout).toContain('role:             primary\n');
    expect(r.stdout).toContain(`last transaction: ${tid} (2031-01-01 00:00:00.000000)\n`);
    expect(r.stdout).toContain(`generation:       ${upToDate.primary.generation.generation} (since ${upToDate.primary.generation.startTid.toString('hex')})\n`);
    expect(r.stdout).toContain('secondaries:      1\n');
    expect(r.stdout).toMatch(/\n {2}127\.0\.0\.1:\d+ zrs-ts\/1 live, (acked|sent) [0-9a-f]{16}.*, lag 0\.0000 seconds, \d+ bytes sent\n/);
  });

  it('prints a secondary as JSON, tids in hex', async () => {
    const r = await run('status', '--json', upToDate.S);
    expect(r.code).toBe(0);
    const s = JSON.parse(r.stdout) as Record<string, any>;
    expect(s).toMatchObject({
      role: 'secondary',
      name: null,
      lastTid: upToDate.primary.storage.lastTransaction().toString('hex'),
      lastTimeSeconds: BASE_MS / 1000,
      upstream: { address: upToDate.P, protocol: 'zrs-ts/1', state: 'connected.replicating', lagSeconds: 0 },
      sessions: [],
      sessionCount: 0,
    });
  });

  it('shows a secondary that cannot reach its upstream, and why, over a Unix socket', async () => {
    await waitForState(unreachable, 'backoff');
    const r = await run('status', U);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('role:             secondary\n');
    expect(r.stdout).toMatch(/upstream: +.*no-upstream\.sock \(zrs-ts\/1\), backoff\n/);
    expect(r.stdout).toContain(`last error:       connect ENOENT ${join(dir, 'no-upstream.sock')}\n`);
    const json = JSON.parse((await run('status', '--json', U)).stdout) as { upstream: { lastError: string } };
    expect(json.upstream.lastError).toBe(`connect ENOENT ${join(dir, 'no-upstream.sock')}`);
    // Connected, it names none.
    expect((await run('status', S)).stdout).not.toContain('last error');
  });

  it("exits 2 with \"can't connect to ADDRESS: reason\"", async () => {
    const r = await run('status', join(dir, 'nothing.sock'));
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe(`zrs status: can't connect to ${join(dir, 'nothing.sock')}: connect ENOENT ${join(dir, 'nothing.sock')}\n`);
    // A bare port is named as the address it stands for, as zrs promote names it.
    expect((await run('status', '1')).stderr).toBe("zrs status: can't connect to 127.0.0.1:1: connect ECONNREFUSED 127.0.0.1:1\n");
  });

  it('treats a malformed address or timeout as a usage error', async () => {
    expect((await run('status', 'a:b:c')).code).toBe(2);
    // A socket in the current directory needs a '/' to be told from a host name: the message shows how.
    expect((await run('status', 'bs.sock')).stderr).toContain(`a socket path (a path holds a '/', as in ./bs.sock)`);
    const r = await run('status', '--timeout', 'soon', '5000');
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('zrs status: option --timeout: invalid number of seconds: "soon"');
    // A timeout of 0 could only ever fail.
    for (const command of ['status', 'promote']) {
      const zero = await run(command, '--timeout', '0', '5000');
      expect(zero.code, command).toBe(2);
      expect(zero.stderr, command).toContain(`zrs ${command}: option --timeout: must be more than 0 seconds`);
    }
    expect((await run('check', '-m', '--timeout', '0', '5000', '5001')).code).toBe(2);
    // Longer than a timer can wait (it would fire at once).
    const long = await run('status', '--timeout', '2147484', '5000');
    expect(long.code).toBe(2);
    expect(long.stderr).toContain('zrs status: option --timeout: at most 2147483 seconds');
  });
});

describe('zrs check (zc.zrs nagios.rst cases)', () => {
  const lag = 'Secondary behind primary by 68.5678 seconds';
  it.each([
    [['-m'], `${lag}|'lag'=68.5678seconds`, 0],
    [['-w99'], lag, 0],
    [['-w30'], `${lag} > 30`, 1],
    [['-e99'], lag, 0],
    [['-e30'], `${lag} > 30`, 2],
    [['-w99', '-e999', '-m'], `${lag}|'lag'=68.5678seconds`, 0],
    [['-w33', '-e99', '-m'], `${lag} > 33|'lag'=68.5678seconds`, 1],
    [['-w33', '-e44', '-m'], `${lag} > 44|'lag'=68.5678seconds`, 2],
    [['--warning', '33', '--error=44', '--output-metrics'], `${lag} > 44|'lag'=68.5678seconds`, 2],
    [['-mw', '33'], `${lag} > 33|'lag'=68.5678seconds`, 1],
  ])('%j -> %s', async (options, line, code) => {
    const r = await run('check', ...options, P, S);
    expect(r).toEqual({ code, stdout: `${line}\n`, stderr: '' });
  });

  it('up to date: exit 0', async () => {
    expect(await run('check', '-w', '1', '-e', '2', upToDate.P, upToDate.S)).toEqual({ code: 0, stdout: 'Secondary up to date.\n', stderr: '' });
    expect((await run('check', '-m', upToDate.P, upToDate.S)).stdout).toBe("Secondary up to date.|'lag'=0.0000seconds\n");
  });

  it('secondary ahead of the primary: CRITICAL', async () => {
    // A secondary of the primary, checked against the primary holding only BASE.
    const d = await tempDir();
    const ahead = await Secondary.open({ path: join(d, 'a.fs'), replicateFrom: primary.address, replicateTo: join(d, 'a.sock'), fsync: false });
    try {
      await waitForTid(ahead, primary.storage.lastTransaction());
      const r = await run('check', '-w', '30', '-m', formatAddress(behind.address), join(d, 'a.sock'));
      const delta = tidToSeconds(tidFromTime(BASE_MS)) - tidToSeconds(tidFromTime(BASE_MS + LAG_MS));
      expect(r.code).toBe(2);
      expect(r.stdout).toBe(`Primary behind secondary by ${pyFloatRepr(delta)} seconds|'lag'=-68.5678seconds\n`);
      expect(r.stdout).toMatch(/^Primary behind secondary by -68\.567\d+ seconds\|/);
    } finally {
      await ahead.close();
    }
  });

  it("can't connect to the secondary, then to the primary: CRITICAL", async () => {
    const gone = join(dir, 'gone.sock');
    const r1 = await run('check', '-w33', '-e44', '-m', P, gone);
    expect(r1).toEqual({ code: 2, stdout: `Can't connect to secondary at '${gone}': [Errno 2] No such file or directory\n`, stderr: '' });
    const r2 = await run('check', '-w33', '-e44', '-m', gone, S);
    expect(r2).toEqual({ code: 2, stdout: `Can't connect to primary at '${gone}': [Errno 2] No such file or directory\n`, stderr: '' });
    // Both down: the secondary is reported, as zrs-nagios asks it first.
    expect((await run('check', '-m', gone, `${gone}2`)).stdout).toContain("Can't connect to secondary at");
  });

  it('a secondary its primary refused as diverged: CRITICAL, though its last transaction is recent', async () => {
    const d = await tempDir();
    const aPath = join(d, 'a.fs');
    const old = await Primary.open({ path: aPath, replicateTo: '127.0.0.1:0', fsync: false });
    const b = await Secondary.open({ path: join(d, 'b.fs'), replicateFrom: old.address, replicateTo: '127.0.0.1:0', fsync: false, reconnect: FAST_RECONNECT });
    const shared = await commitAt(old.storage, tidFromTime(BASE_MS));
    await waitForTid(b, shared);
    b.setReplicationAddress('127.0.0.1:1');
    await commitAt(old.storage, tidFromTime(BASE_MS + 1000)); // only the old primary has it
    await old.close();
    const promoted = await b.promote();
    let a: Secondary | null = null;
    try {
      await commitAt(promoted.storage, tidFromTime(BASE_MS + 2000));
      a = await Secondary.open({ path: aPath, replicateFrom: promoted.address, replicateTo: join(d, 'a.sock'), fsync: false, reconnect: FAST_RECONNECT });
      const diverged = a;
      await new Promise<void>((resolve) => {
        const sub = diverged.machine.subscribe((snap) => {
          if (snap.matches('diverged')) {
            sub.unsubscribe();
            resolve();
          }
        });
      });
      const [P2, S2] = [formatAddress(promoted.address), join(d, 'a.sock')];
      // One second behind by the times alone: within every threshold.
      expect(await run('check', '-w', '30', '-e', '60', P2, S2)).toEqual({
        code: 2,
        stdout: `Secondary at '${S2}' stopped replicating from '${P2}': diverged\n`,
        stderr: '',
      });
    } finally {
      await a?.close();
      await promoted.close();
    }
  });

  it('a secondary of a node promoted beside its primary (two primaries): CRITICAL, naming its generation, though it is up to date by time', async () => {
    const d = await tempDir();
    const p = await Primary.open({ path: join(d, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false });
    const s1 = await Secondary.open({ path: join(d, 's1.fs'), replicateFrom: p.address, replicateTo: '127.0.0.1:0', fsync: false, reconnect: FAST_RECONNECT });
    const s2 = await Secondary.open({ path: join(d, 's2.fs'), replicateFrom: s1.replicationAddress!, replicateTo: join(d, 's2.sock'), fsync: false, reconnect: FAST_RECONNECT });
    let promoted: Primary | null = null;
    try {
      await waitForTid(s2, await commitAt(p.storage, tidFromTime(BASE_MS)));
      promoted = await s1.promote({ force: true }); // while p still takes writes
      await commitAt(p.storage, tidFromTime(BASE_MS + 1000));
      // s2 learned the new generation before this transaction, which came after it.
      await waitForTid(s2, await commitAt(promoted.storage, tidFromTime(BASE_MS + 1000)));
      const P2 = formatAddress(p.address);
      const S2 = join(d, 's2.sock');
      const start = promoted.generation.startTid.toString('hex');
      expect(await run('check', '-w', '30', '-m', P2, S2)).toEqual({
        code: 2,
        stdout: `Secondary at '${S2}' is in generation 1 (from tid ${start}), which the primary at '${P2}' did not start: it follows another primary\n`,
        stderr: '',
      });
      // Against the node it follows, it is up to date.
      expect((await run('check', '-w', '30', formatAddress(promoted.address), S2)).stdout).toBe('Secondary up to date.\n');
    } finally {
      await s2.close();
      await promoted?.close();
      await s1.close();
      await p.close();
    }
  });

  /**
   * A primary p with secondaries s1 and s3 (serving at s3.sock), one shared
   * transaction at BASE_MS (held by s1, and by s3 too with `waitS3`), then
   * s1 promoted beside p (cut off from it first); `body` checks from there.
   */
  async function promotedBeside(body: (c: { p: Primary; s3: Secondary; s3Sock: string; shared: Buffer; promoted: Primary }) => Promise<void>, waitS3 = false): Promise<void> {
    const d = await tempDir();
    const p = await Primary.open({ path: join(d, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false });
    const s1 = await Secondary.open({ path: join(d, 's1.fs'), replicateFrom: p.address, replicateTo: '127.0.0.1:0', fsync: false, reconnect: FAST_RECONNECT });
    const s3 = await Secondary.open({ path: join(d, 's3.fs'), replicateFrom: p.address, replicateTo: join(d, 's3.sock'), fsync: false, reconnect: FAST_RECONNECT });
    let promoted: Primary | null = null;
    try {
      const shared = await commitAt(p.storage, tidFromTime(BASE_MS));
      await Promise.all([waitForTid(s1, shared), ...(waitS3 ? [waitForTid(s3, shared)] : [])]);
      s1.setReplicationAddress('127.0.0.1:1');
      promoted = await s1.promote();
      await body({ p, s3, s3Sock: join(d, 's3.sock'), shared, promoted });
    } finally {
      await s3.close();
      await promoted?.close();
      await s1.close();
      await p.close();
    }
  }

  it('a secondary of the old primary checked against a node promoted beside it: CRITICAL, it holds transactions past the promotion in the old generation', () =>
    promotedBeside(async ({ p, s3, s3Sock, shared, promoted }) => {
      await waitForTid(s3, await commitAt(p.storage, tidFromTime(BASE_MS + 1000))); // the old primary goes on
      await commitAt(promoted.storage, tidFromTime(BASE_MS + 2000)); // the new one is newer by time: no lag verdict
      const P2 = formatAddress(promoted.address);
      expect(await run('check', '-w', '30', P2, s3Sock)).toEqual({
        code: 2,
        stdout: `Secondary at '${s3Sock}' is in generation 0 (from tid 0000000000000000) and holds transactions past tid ${shared.toString('hex')}, where the primary at '${P2}' began generation 1: it follows another primary\n`,
        stderr: '',
      });
    }));

  it('a secondary of the old primary standing exactly where the promotion began is no other history: only its lag is reported', () =>
    promotedBeside(async ({ s3Sock, promoted }) => {
      await commitAt(promoted.storage, tidFromTime(BASE_MS + 2000));
      expect(await run('check', '-w', '30', formatAddress(promoted.address), s3Sock)).toEqual({ code: 0, stdout: 'Secondary behind primary by 2.0000 seconds\n', stderr: '' });
    }, true));

  it('a zc.zrs-protocol secondary, which learns of no generation, is not taken for another history after a promotion', async () => {
    const d = await tempDir();
    const p = await Primary.open({ path: join(d, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false });
    const s0 = await Secondary.open({ path: join(d, 's0.fs'), replicateFrom: p.address, replicateTo: '127.0.0.1:0', fsync: false, reconnect: FAST_RECONNECT });
    // Natively first: it records generation 0.
    let s1 = await Secondary.open({ path: join(d, 's1.fs'), replicateFrom: p.address, fsync: false, reconnect: FAST_RECONNECT });
    let promoted: Primary | null = null;
    try {
      const shared = await commitAt(p.storage, tidFromTime(BASE_MS));
      await Promise.all([waitForTid(s0, shared), waitForTid(s1, shared)]);
      await s1.close();
      await p.close();
      await waitForState(s0, 'backoff');
      promoted = await s0.promote();
      s1 = await Secondary.open({ path: join(d, 's1.fs'), replicateFrom: promoted.address, replicateTo: join(d, 's1.sock'), protocol: 'zrs2.1', fsync: false, reconnect: FAST_RECONNECT });
      await waitForTid(s1, await commitAt(promoted.storage, tidFromTime(BASE_MS + 1000)));
      expect(await run('check', '-w', '30', formatAddress(promoted.address), join(d, 's1.sock'))).toEqual({ code: 0, stdout: 'Secondary up to date.\n', stderr: '' });
    } finally {
      await s1.close();
      await promoted?.close();
      await s0.close();
    }
  });

  it('two secondaries pointed at each other: WARNING both ways, the loop named, though neither lags', async () => {
    const d = await tempDir();
    const open = (name: string, from: string): Promise<Secondary> =>
      Secondary.open({ path: join(d, `${name}.fs`), replicateFrom: join(d, `${from}.sock`), replicateTo: join(d, `${name}.sock`), fsync: false, reconnect: FAST_RECONNECT });
    const a = await open('a', 'b');
    const b = await open('b', 'a');
    try {
      const loopBackoff = (s: Secondary): Promise<unknown> => firstValueFrom(s.status$.pipe(filter((st) => st.kind === 'backoff' && st.reason.includes('loop')), timeout(15_000)));
      await Promise.race([loopBackoff(a), loopBackoff(b)]);
      const [A, B] = [join(d, 'a.sock'), join(d, 'b.sock')];
      for (const [p, sec] of [[A, B], [B, A]] as const) {
        const r = await run('check', '-w', '30', p, sec);
        expect(r.code).toBe(1);
        expect(r.stdout).toMatch(/^(Secondary at '[^']+' not connected to|Primary at '[^']+' is a secondary not connected to) '[^']+' \((backoff|connecting|connected\.handshaking): (refused \(loop\)|replication loop): /); // refused, or found by the node itself; it retries fast
      }
    } finally {
      await b.close();
      await a.close();
    }
  });

  it('a secondary connected to an upstream that never answers (a hung primary): WARNING, not connected', async () => {
    const hung = await FakeServer.start(); // reads the handshake, answers nothing
    const d = await tempDir();
    const waiting = await Secondary.open({ path: join(d, 'w.fs'), replicateFrom: hung.address, replicateTo: join(d, 'w.sock'), fsync: false });
    try {
      await hung.connection(0);
      await waitForState(waiting, 'connected');
      // Empty, so only -m (no threshold) leaves its lag alone OK.
      const r = await run('check', '-m', upToDate.P, join(d, 'w.sock'));
      expect(r.code).toBe(1);
      expect(r.stdout).toMatch(new RegExp(`^Secondary at '${join(d, 'w.sock')}' not connected to '${formatAddress(hung.address)}' \\(connected\\.handshaking\\)\\|'lag'=\\d+\\.\\d{4}seconds\n$`));
    } finally {
      await waiting.close();
      await hung.close();
    }
  });

  it('a secondary not connected to its upstream: WARNING with why, where the lag alone would be OK', async () => {
    await waitForState(unreachable, 'backoff');
    const why = `backoff: connect ENOENT ${join(dir, 'no-upstream.sock')}`;
    const line = `Secondary at '${U}' not connected to '${join(dir, 'no-upstream.sock')}' (${why})`;
    expect(await run('check', '-w99', P, U)).toEqual({ code: 1, stdout: `${line}\n`, stderr: '' });
    expect((await run('check', '-m', P, U)).stdout).toBe(`${line}|'lag'=68.5678seconds\n`);
    // Past a threshold, the lag says worse, or as bad: its line, not the connection's.
    expect(await run('check', '-e30', P, U)).toEqual({ code: 2, stdout: `${lag} > 30\n`, stderr: '' });
    expect(await run('check', '-w30', P, U)).toEqual({ code: 1, stdout: `${lag} > 30\n`, stderr: '' });
  });

  it('a "primary" that is a secondary not connected to its upstream (the top of a chain): WARNING', async () => {
    await waitForState(unreachable, 'backoff');
    const r = await run('check', '-w99', U, S);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(new RegExp(`^Primary at '${U.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}' is a secondary not connected to `));
  });

  it('a primary named as the secondary: CRITICAL; an empty secondary says so', async () => {
    expect(await run('check', '-w99', P, P)).toEqual({ code: 2, stdout: `Secondary at '${P}' is a primary\n`, stderr: '' });
    const d = await tempDir();
    const empty = await Secondary.open({ path: join(d, 'e.fs'), replicateFrom: join(d, 'none.sock'), replicateTo: join(d, 'e.sock'), fsync: false, reconnect: { initialMs: 60_000, maxMs: 60_000 } });
    try {
      const r = await run('check', '-e99', upToDate.P, join(d, 'e.sock'));
      expect(r.code).toBe(2);
      expect(r.stdout).toMatch(/^Secondary behind primary by \d+\.\d{4} seconds > 99 \(the secondary is empty\)\n$/);
      expect((await run('check', '-e99', '-m', upToDate.P, join(d, 'e.sock'))).stdout).toMatch(/^Secondary behind primary by \d+\.\d{4} seconds > 99 \(the secondary is empty\)\|'lag'=\d+\.\d{4}seconds\n$/);
    } finally {
      await empty.close();
    }
  });

  it('usage: one of -w, -e, -m is required; bad numbers and addresses are usage errors', async () => {
    for (const argv of [['check', P, S], ['check', '-w', '0', P, S], ['check', '-w', 'x', P, S], ['check', '-m', P], ['check', '-m', 'a:b:c', S], ['check', '-q', P, S]]) {
      const r = await run(...argv);
      expect(r.code, argv.join(' ')).toBe(2);
      expect(r.stderr, argv.join(' ')).toMatch(/^zrs check: .*\nusage: zrs check \[-w SECS\] \[-e SECS\] \[-m\] \[--timeout SECS\] \[--ssl-certificate FILE\] \[--ssl-key FILE\] \[--ssl-authenticate CA\] \[--ssl-server-hostname NAME\] PRIMARY SECONDARY\n/);
      expect(r.stdout).toBe('');
    }
    expect((await run('check', P, S)).stderr).toContain('one of -w, -e or -m is required');
    expect((await run('check', '--help')).stdout).toContain('  -w, --warning SECS ');
  });

  it('runs as a process: exit codes and output', async () => {
    const exec = promisify(execFile);
    const ok = await exec(process.execPath, [BIN, 'check', '-w99', P, S]);
    expect(ok.stdout).toBe(`${lag}\n`);
    await expect(exec(process.execPath, [BIN, 'check', '-w30', P, S])).rejects.toMatchObject({ code: 1, stdout: `${lag} > 30\n` });
    await expect(exec(process.execPath, [BIN, 'status', join(dir, 'nothing.sock')])).rejects.toMatchObject({ code: 2 });
    const st = await exec(process.execPath, [BIN, 'status', '--json', P]);
    expect(JSON.parse(st.stdout)).toMatchObject({ role: 'primary', sessionCount: 0 });
  }, 60_000);
});

describe('check pieces', () => {
  it('pyFloatRepr matches Python repr()', () => {
    const cases: [number, string][] = [
      [-68.56779998540878, '-68.56779998540878'],
      [-68, '-68.0'],
      [0.5, '0.5'],
      [1e-5, '1e-05'],
      [-1.5e-5, '-1.5e-05'],
      [0.0001, '0.0001'],
      [1e16, '1e+16'],
      [1234567890123456.7, '1234567890123456.8'],
      [123456789012345680, '1.2345678901234568e+17'],
      [-0.001, '-0.001'],
    ];
    for (const [x, repr] of cases) expect(pyFloatRepr(x)).toBe(repr);
  });

  it("pyFixed matches Python's '%.4f': an exact half rounds to even (Number.toFixed rounds it up)", () => {
    // Computed with CPython's '%.4f' % x.
    const cases: [number, string][] = [
      [0.03125, '0.0312'],
      [0.15625, '0.1562'],
      [1.03125, '1.0312'],
      [123456.78125, '123456.7812'],
      [-0.03125, '-0.0312'],
      [2.5e-5, '0.0000'],
      [7.5e-5, '0.0001'],
      [0.00015, '0.0001'],
      [5e-5, '0.0001'],
      [4.9999e-5, '0.0000'],
      [12.34565, '12.3456'],
      [0.99995, '1.0000'],
      [1e-7, '0.0000'],
      [-1e-7, '-0.0000'],
      [3, '3.0000'],
    ];
    for (const [x, want] of cases) expect(pyFixed(x, 4)).toBe(want);
    // Exact for large values too: 1e300 is 2^996 times an odd mantissa, whose exact digits toFixed cannot give.
    expect(pyFixed(1e300, 4)).toBe(`${BigInt(1e300).toString()}.0000`);
    expect(lagVerdict(100.03125, 100, { warning: 0, error: 0, outputMetrics: true }).text).toBe("Secondary behind primary by 0.0312 seconds|'lag'=0.0312seconds");
  });

  it('lagVerdict: thresholds of 0 are off; error wins over warning', () => {
    const o = { warning: 0, error: 0, outputMetrics: false };
    expect(lagVerdict(100, 100, o)).toEqual({ text: 'Secondary up to date.', level: 0 });
    expect(lagVerdict(200, 100, o)).toEqual({ text: 'Secondary behind primary by 100.0000 seconds', level: 0 });
    expect(lagVerdict(200, 100, { ...o, warning: 10, error: 50 })).toEqual({ text: 'Secondary behind primary by 100.0000 seconds > 50', level: 2 });
    expect(lagVerdict(100, 200, { ...o, outputMetrics: true })).toEqual({ text: "Primary behind secondary by -100.0 seconds|'lag'=-100.0000seconds", level: 2 });
    // "More than SECS": a lag of exactly the threshold passes neither (tid times are exact, so it happens).
    expect(lagVerdict(130, 100, { ...o, warning: 30 })).toEqual({ text: 'Secondary behind primary by 30.0000 seconds', level: 0 });
    expect(lagVerdict(160, 100, { ...o, warning: 30, error: 60 })).toEqual({ text: 'Secondary behind primary by 60.0000 seconds > 30', level: 1 });
  });

  it('pythonErrorText: errno as Python prints it', () => {
    expect(pythonErrorText(Object.assign(new Error('connect ECONNREFUSED'), { errno: -111, code: 'ECONNREFUSED' }))).toBe('[Errno 111] Connection refused');
    expect(pythonErrorText(new Error('other'))).toBe('other');
  });

  it('short options: attached, separate and bundled', () => {
    expect(parseArgs(checkSpec, ['-w30', '-e', '40', '-m', 'a', 'b']).flags).toEqual(new Map<string, string | true>([['warning', '30'], ['error', '40'], ['output-metrics', true]]));
    expect(parseArgs(checkSpec, ['-mw30', 'a', 'b']).flags).toEqual(new Map<string, string | true>([['output-metrics', true], ['warning', '30']]));
    expect(() => parseArgs(checkSpec, ['-w', '1', '-w', '2', 'a', 'b'])).toThrow('option --warning given twice');
    expect(() => parseArgs(checkSpec, ['a', 'b', '-e'])).toThrow('option -e needs a value (SECS)');
  });

  it('a group of options of which exactly one is required: refused with none or both, shown as one choice in the usage line', () => {
    expect(() => parseArgs(rewindSpec, ['Data.fs'])).toThrow('give exactly one of --to-common-with or --to-tid');
    expect(() => parseArgs(rewindSpec, ['--to-tid', '03f5e2607a19b377', '--to-common-with', '5000', 'Data.fs'])).toThrow('give exactly one of --to-common-with or --to-tid');
    expect(parseArgs(rewindSpec, ['--to-tid', '03f5e2607a19b377', 'Data.fs']).flags.get('to-tid')).toBe('03f5e2607a19b377');
    expect(parseArgs(rewindSpec, ['--help']).help).toBe(true);
    expect(usageLine(rewindSpec)).toBe(
      'usage: zrs rewind (--to-common-with ADDRESS | --to-tid TID) [--blob-dir DIR] [--audit-log PATH] [--ssl-certificate FILE] [--ssl-key FILE] [--ssl-authenticate CA] [--ssl-server-hostname NAME] FILE',
    );
  });
});

describe('formatStatus', () => {
  it("gives a session with no acks the lag of what it last sent", () => {
    const [t0, t1, t2] = [0, 10_000, 30_000].map((ms) => tidFromTime(Date.UTC(2026, 0, 1) + ms)) as [Buffer, Buffer, Buffer];
    const session = { peer: '/run/zrs/p.sock#3', protocol: 'zrs-ts/1', state: 'live', lastSentTid: t1, ackedTid: null, bytesSent: 900, startTid: t0 };
    const status: NodeStatus = { role: 'primary', name: null, lastTid: t2, lastTimeSeconds: tidToSeconds(t2), fileSize: 4, clockMs: 0, upstream: null, sessions: [session], sessionCount: 1 };
    expect(formatStatus(status, 'p')).toContain(`sent ${t1.toString('hex')} (no acks), lag 20.0000 seconds`);
  });

  it("gives a session that has sent nothing yet the lag of where it started (as the lag metric does)", () => {
    const tid = tidFromTime(Date.UTC(2026, 0, 1));
    const session = { peer: '/run/zrs/p.sock#2', protocol: 'zrs-ts/1', state: 'live', lastSentTid: null, ackedTid: null, bytesSent: 468 };
    const status: NodeStatus = { role: 'primary', name: null, lastTid: tid, lastTimeSeconds: tidToSeconds(tid), fileSize: 4, clockMs: 0, upstream: null, sessions: [{ ...session, startTid: tid }], sessionCount: 1 };
    expect(formatStatus(status, 'p')).toContain(`  /run/zrs/p.sock#2 zrs-ts/1 live, started at ${tid.toString('hex')}, nothing sent since, lag 0.0000 seconds, 468 bytes sent\n`);
    // Before its start (or from an older node): nothing to go by.
    expect(formatStatus({ ...status, sessions: [{ ...session, startTid: null }] }, 'p')).toContain('live, nothing sent yet, lag unknown, 468 bytes sent\n');
  });

  it("prints a secondary's upstream, heartbeat age and lag, the age never negative when the clock stepped back", () => {
    const tid = tidFromTime(Date.UTC(2026, 0, 1));
    const status: NodeStatus = {
      role: 'secondary',
      name: 's1',
      lastTid: tid,
      lastTimeSeconds: tidToSeconds(tid),
      fileSize: 4,
      clockMs: 10_000,
      upstream: { address: '127.0.0.1:5000', protocol: 'zrs-ts/1', state: 'connected.replicating', primaryLastTid: tid, lastHeartbeat: { lastTid: tid, clockMs: 1, receivedMs: 7_500 }, lagSeconds: 0, lastError: null },
      sessions: [],
      sessionCount: 0,
    };
    const text = formatStatus(status, '127.0.0.1:5001');
    expect(text).toMatch(new RegExp(`^last heartbeat: +${tid.toString('hex')}, 2\\.5 seconds ago$`, 'm'));
    expect(text).toMatch(/^lag: +0\.0000 seconds$/m);
    const stepped = formatStatus({ ...status, clockMs: 7_000 }, '127.0.0.1:5001');
    expect(stepped).toMatch(new RegExp(`^last heartbeat: +${tid.toString('hex')}, 0\\.0 seconds ago$`, 'm'));
    // Ahead of its upstream (a diverged node): the lag stays 0, and the status says by how much it is ahead.
    const ahead = formatStatus({ ...status, lastTid: tidFromTime(Date.UTC(2026, 0, 1) + 48_250) }, '127.0.0.1:5001');
    expect(ahead).toMatch(/^lag: +0\.0000 seconds \(ahead of its upstream by 48\.2500 seconds: it holds transactions the upstream does not\)$/m);
  });
});
