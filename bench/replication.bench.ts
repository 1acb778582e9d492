// Replication benchmark, every figure with its baseline from the same run:
//  - catch-up of a 20,000 x 10 x 200 B file by a durable (fsync) secondary,
//    against copying the same file through a loopback socket with plain
//    Node streams, and against zc.zrs's figure on this class of machine:
//    by a secondary in a new process, and again by a second one in that
//    process once its code is compiled (a running secondary catching up);
//  - catch-up of large records (1 MiB), against the same plain copy;
//  - live lag at a steady commit rate with 3 secondaries (p50/p99/max),
//    once the same load ran for --warmup-seconds (that first stretch is
//    reported apart), against plain TCP messages at the same rate to 3
//    connections in a child process (bench/echo.child.ts), against the
//    latency of syncs at the same rate on four files, and beside how
//    steady the machine's CPU is (bench/floors.ts): what the machine
//    itself adds; with fsync, also how the secondaries' own syncs went
//    meanwhile (a slow one holds every transaction that arrives behind it);
//  - unpaced commits: does the secondary keep up;
//  - primary commit rate with 0, 1, 4 and 16 connected secondaries, all on
//    one disk, with the secondaries' files apart (as on disks of their own),
//    and with nothing synced;
//  - peak RSS of the primary and of the secondary, each in a process of its
//    own, while a durable secondary catches up about 1 GB (--big-mb, 0 to skip).
// The secondaries run in a child process (bench/secondaries.child.ts), so
// the primary has its own event loop, as in a deployment.
//
//   npm run bench:replication [-- --txns 20000 --live-seconds 5 --warmup-seconds 3 --big-mb 1000 --repeat 3 --send-share 0.1 --default-collector --only catchup,large,live,unpaced,fanout,big]
//
// Every node process runs with its collector tuned as `zrs serve` tunes it
// (src/node/collector.ts), unless --default-collector; the live rows also
// give the lag with V8's collector as it is.

import { fork, type ChildProcess } from 'node:child_process';
import { createReadStream, createWriteStream, existsSync } from 'node:fs';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { createServer, connect, type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { formatAddress } from '../src/replication/address.js';
import { Primary } from '../src/replication/primary.js';
import { FileStorage } from '../src/storage/FileStorage.js';
import { DEFAULT_SEND_SHARE } from '../src/replication/sendPacer.js';
import type { PrimaryChildReport } from './primary.child.js';
import type { EchoReport } from './echo.child.js';
import type { NeighbourReport } from './neighbour.child.js';
import type { ChildReport, SyncTimes } from './secondaries.child.js';
import { cpuSteadiness, percentiles, replicatedSyncLatency, syncLatency, type Percentiles } from './floors.js';
import { TidTimes } from './tidTimes.js';
import { Workload, arg, secondsSince, siblingScript, useCollector } from './workload.js';

const ZRS = { catchupSeconds: 8.07, catchupTxnPerS: 2478, liveP99Ms: 16.9, pacedP99Ms: 2.2 };

const TXNS = arg('txns', 20000);
const LIVE_SECONDS = arg('live-seconds', 4);
/** Seconds of paced commits before live lag is measured (reported apart): new processes compile their code meanwhile. */
const WARMUP_SECONDS = arg('warmup-seconds', 3);
const BIG_MB = arg('big-mb', 1000);
/** Runs of each catch-up figure; the median is reported (this class of machine is noisy). */
const REPEAT = arg('repeat', 3);
/** The live primaries' sendShare (docs/ARCHITECTURE.md, send pacing): what a saturated primary gives its sessions. */
const SEND_SHARE = arg('send-share', DEFAULT_SEND_SHARE);
/** Leave V8's collector as it is in every process (see useCollector). */
const DEFAULT_COLLECTOR = process.argv.includes('--default-collector');
const onlyAt = process.argv.indexOf('--only');
const ONLY = onlyAt >= 0 ? new Set(process.argv[onlyAt + 1]!.split(',')) : null;
/** Whether a section runs (all of them unless --only names some). */
const runs = (section: 'catchup' | 'large' | 'live' | 'unpaced' | 'fanout' | 'big'): boolean => ONLY === null || ONLY.has(section);

const seconds = secondsSince;
/** Bytes one transaction of the live workload (10 records of 200 B) takes in the file. */
const TXN_BYTES = 2459;

async function buildFile(path: string, txns: number, records: number, recordBytes: number): Promise<void> {
  const fs = await FileStorage.open(path, { create: true, fsync: false });
  const work = new Workload(fs, records, recordBytes, Math.min(10_000, txns * records));
  for (let i = 0; i < txns; i++) await work.commit();
  await fs.close();
}

/** Copy a file through a loopback socket with plain streams: the I/O limit. */
async function plainSocketCopy(src: string, dst: string): Promise<number> {
  await rm(dst, { force: true }); // a copy from an earlier run must not look finished
  const server = createServer((sock) => {
    const out = createWriteStream(dst);
    sock.pipe(out);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  const size = (await stat(src)).size;
  const t0 = process.hrtime.bigint();
  await new Promise<void>((resolve, reject) => {
    const sock = connect(port, '127.0.0.1', () => createReadStream(src).pipe(sock));
    sock.on('close', () => resolve());
    sock.on('error', reject);
  });
  // Wait for the receiving side to have written everything.
  for (;;) {
    const s = await stat(dst).catch(() => ({ size: 0 }));
    if (s.size >= size) break;
    await new Promise((r) => setImmediate(r));
  }
  const t = seconds(t0);
  server.close();
  return t;
}

/** Median and range of a figure's runs. */
interface Spread {
  median: number;
  min: number;
  max: number;
}

function spread(values: number[]): Spread {
  const sorted = [...values].sort((a, b) => a - b);
  return { median: sorted[Math.floor(sorted.length / 2)]!, min: sorted[0]!, max: sorted[sorted.length - 1]! };
}

/**
 * A baseline and the figure measured against it, run alternately REPEAT
 * times: a drift of the machine's speed during the run weighs on both alike
 * (one after the other, a plain copy's speed moved between 210 and 360 MB/s).
 */
async function alternating(baseline: () => Promise<number>, measured: () => Promise<number>): Promise<{ baseline: Spread; measured: Spread }> {
  const b: number[] = [];
  const m: number[] = [];
  for (let i = 0; i < REPEAT; i++) {
    b.push(await baseline());
    m.push(await measured());
  }
  return { baseline: spread(b), measured: spread(m) };
}

/** A forked child's reports over IPC, awaited by type. */
class ChildReports<T extends { type: string }> {
  private readonly queued: T[] = [];
  private readonly waiting: Array<{ type: string; resolve: (m: T) => void }> = [];

  constructor(readonly child: ChildProcess) {
    child.on('message', (m: T) => {
      const i = this.waiting.findIndex((w) => w.type === m.type);
      if (i >= 0) this.waiting.splice(i, 1)[0]!.resolve(m);
      else this.queued.push(m);
    });
  }

  /** The next report of `type` not yet taken. */
  next<K extends T['type']>(type: K): Promise<Extract<T, { type: K }>> {
    const i = this.queued.findIndex((m) => m.type === type);
    if (i >= 0) return Promise.resolve(this.queued.splice(i, 1)[0] as Extract<T, { type: K }>);
    return new Promise((resolve) => this.waiting.push({ type, resolve: resolve as (m: T) => void }));
  }

  /** Ask the child to close; resolves with its 'closed' report once it has exited. */
  async close<K extends T['type']>(closed: K): Promise<Extract<T, { type: K }>> {
    this.child.send({ type: 'close' });
    const report = await this.next(closed);
    await new Promise((r) => (this.child.exitCode !== null ? r(null) : this.child.once('exit', r)));
    return report;
  }
}

/** Secondaries in a child process (bench/secondaries.child.ts), driven over IPC. */
class ChildSecondaries {
  /** Directories of children not yet closed, removed at the end (after a failure). */
  static readonly dirs = new Set<string>();

  private readonly reports: ChildReports<ChildReport>;

  private constructor(
    child: ChildProcess,
    /** The secondaries' files: removed on close, as the runs would fill tmpfs otherwise. */
    private readonly dir: string,
  ) {
    this.reports = new ChildReports<ChildReport>(child);
  }

  /**
   * Fork and load the child; the secondaries open on open().
   * `report`: 'newest' when only the last tid matters (a catch-up), so reporting stays off the secondaries' path.
   * `inMemory`: their files go to tmpfs (when it exists), by default when they do not sync: on one
   * machine their writes would otherwise join the primary's journal commits and the figure would
   * measure the shared disk. Secondaries that sync into tmpfs stand for secondaries each on a disk
   * of its own: their syncs take the thread-pool round trip and queue with nobody's.
   */
  static async start(address: string, count: number, dir: string, fsync: boolean, report: 'every' | 'newest' = 'every', inMemory = !fsync): Promise<ChildSecondaries> {
    const base = inMemory && existsSync('/dev/shm') ? '/dev/shm' : dir;
    const sdir = await mkdtemp(join(base, 'zrs-bench-child-'));
    this.dirs.add(sdir);
    const child = fork(siblingScript(import.meta.url, 'secondaries.child'), [address, String(count), sdir, fsync ? 'fsync' : 'nofsync', report]);
    const c = new ChildSecondaries(child, sdir);
    await c.reports.next('started');
    return c;
  }

  /** Open the secondaries (again after closeSecondaries: into new files). */
  async open(): Promise<void> {
    this.reports.child.send({ type: 'open' });
    await this.reports.next('ready');
  }

  /** Close the secondaries but keep the child, its code now warm. */
  async closeSecondaries(): Promise<void> {
    this.reports.child.send({ type: 'closeSecondaries' });
    await this.reports.next('secondariesClosed');
  }

  /** The CPU time (µs) the child has used so far. */
  async cpuMicros(): Promise<number> {
    this.reports.child.send({ type: 'cpu' });
    return (await this.reports.next('cpu')).micros;
  }

  /** Resolves once `count` secondaries applied `tid` or a later transaction (one request at a time). */
  async waitFor(tid: Buffer, count: number): Promise<void> {
    this.reports.child.send({ type: 'waitFor', tid: tid.toString('hex'), count });
    await this.reports.next('reached');
  }

  /**
   * Close the secondaries, end the child and remove their files; resolves with its peak RSS and
   * tid (hex) -> the times (ms, shared clock) at which each secondary made it
   * durable (with report 'newest': each secondary's last transaction only).
   */
  async close(): Promise<{ peakRss: number; applied: Map<string, number[]>; syncs: SyncTimes }> {
    const { peakRss, applied: list, syncs } = await this.reports.close('closed');
    await rm(this.dir, { recursive: true, force: true });
    ChildSecondaries.dirs.delete(this.dir);
    const applied = new Map<string, number[]>();
    list.tids.forEach((tid, i) => {
      const times = applied.get(tid) ?? [];
      times.push(list.atMs[i]!);
      applied.set(tid, times);
    });
    return { peakRss, applied, syncs };
  }
}

const nowMs = (): number => performance.timeOrigin + performance.now();

/**
 * One durable secondary (in a new child process) catches up `source` from a
 * primary in this process. With `again`, a second secondary in the same
 * process then catches it up from scratch into a file of its own, its code
 * already compiled: `warmSeconds`. A new process spends a good part of its
 * first catch-up compiling its code (V8's optimizing compiler runs on the
 * second CPU while the first interprets); a running secondary that falls
 * behind and catches up again does not.
 */
async function catchUp(dir: string, source: string, again = false): Promise<{ seconds: number; warmSeconds: number; txns: number }> {
  const primary = await Primary.open({ path: source, replicateTo: '127.0.0.1:0', auditPath: null });
  const last = primary.storage.lastTransaction();
  const child = await ChildSecondaries.start(formatAddress(primary.address), 1, dir, true, 'newest');
  const timed = async (): Promise<number> => {
    const t0 = process.hrtime.bigint();
    await child.open();
    await child.waitFor(last, 1);
    return seconds(t0);
  };
  const t = await timed();
  let warmSeconds = NaN;
  if (again) {
    await child.closeSecondaries();
    warmSeconds = await timed();
  }
  await child.close();
  const txns = primary.storage.transactionCount;
  await primary.close();
  return { seconds: t, warmSeconds, txns };
}

/** The same with the primary in a process of its own too (bench/primary.child.ts): each one's peak RSS. */
async function separateCatchUp(dir: string, source: string): Promise<{ seconds: number; txns: number; primaryRss: number; secondaryRss: number }> {
  const view = await FileStorage.open(source, { readOnly: true });
  const [last, txns] = [view.lastTransaction(), view.transactionCount];
  await view.close();
  const primary = new ChildReports<PrimaryChildReport>(fork(siblingScript(import.meta.url, 'primary.child'), [source]));
  const { address } = await primary.next('listening');
  const child = await ChildSecondaries.start(address, 1, dir, true, 'newest');
  const t0 = process.hrtime.bigint();
  await child.open();
  await child.waitFor(last, 1);
  const t = seconds(t0);
  const { peakRss: secondaryRss } = await child.close();
  const { peakRss: primaryRss } = await primary.close('closed');
  return { seconds: t, txns, primaryRss, secondaryRss };
}

/**
 * Sleep until event `n` of a steady `ratePerSecond` from `t0` is due, as a
 * paced writer would (a busy wait would take a whole core from the
 * secondaries on a small machine); at once when it is late.
 */
async function dueTime(t0: bigint, n: number, ratePerSecond: number): Promise<void> {
  const aheadMs = Number(t0 + BigInt(Math.round((n / ratePerSecond) * 1e9)) - process.hrtime.bigint()) / 1e6;
  if (aheadMs > 0) await new Promise((r) => setTimeout(r, aheadMs));
}

/**
 * Commit for `durationS` (paced or not) with `secondaries` connected. With
 * `secondaryFsync` off the secondaries do not sync: on this one machine they
 * share the primary's disk, and their syncs would queue with its own.
 * `secondariesInMemory`: their files in tmpfs (ChildSecondaries.start; by default when they do not sync).
 * `neighbourShare`: meanwhile a neighbour process (bench/neighbour.child.ts)
 * keeps that share of a CPU busy. `warmupS`: the same commits run that long
 * first, their lag reported apart (`warmup`): both processes are new, and
 * V8 compiles their code on the same two CPUs for the first seconds. Also
 * returns the share of a CPU the secondaries' process used while the
 * measured commits ran.
 */
async function live(
  dir: string,
  secondaries: number,
  ratePerSecond: number | null,
  durationS: number,
  {
    secondaryFsync = true,
    primaryFsync = true,
    secondariesInMemory = undefined as boolean | undefined,
    report = 'every' as 'every' | 'newest',
    neighbourShare = 0,
    warmupS = 0,
  } = {},
) {
  // Without fsync a commit never waits for I/O: an unpaced loop would never let the event loop
  // turn, and the sessions would send nothing until it ended. A writer yields after each commit,
  // as one serving requests does.
  const yieldEach = ratePerSecond === null && !primaryFsync;
  // A file of its own per run: a run that reopened an earlier one's would first serve its history.
  // Removed after the run: unpaced runs without fsync write hundreds of MB each.
  const runDir = await mkdtemp(join(dir, `live-${secondaries}-${ratePerSecond}-`));
  const primary = await Primary.open({ path: join(runDir, 'primary.fs'), replicateTo: '127.0.0.1:0', fsync: primaryFsync, auditPath: null, sendShare: SEND_SHARE });
  const fs = primary.storage;
  const work = new Workload(fs, 10, 200, 1000);
  const child = secondaries ? await ChildSecondaries.start(formatAddress(primary.address), secondaries, dir, secondaryFsync, report, secondariesInMemory) : null;
  if (child) {
    await child.open();
    // Every secondary connected and caught up: a first transaction reached all of them.
    await child.waitFor(await work.commit(), secondaries);
  }
  const neighbour = neighbourShare > 0 ? new ChildReports<NeighbourReport>(fork(siblingScript(import.meta.url, 'neighbour.child'), [String(neighbourShare)])) : null;
  await neighbour?.next('started');
  /** Commit for `forS` seconds, each commit's tid and time into `into`; the number committed. */
  const commitFor = async (forS: number, into: TidTimes): Promise<number> => {
    const t0 = process.hrtime.bigint();
    let n = 0;
    while (seconds(t0) < forS) {
      if (ratePerSecond !== null) await dueTime(t0, n, ratePerSecond);
      const tid = await work.commit();
      into.push(tid, nowMs());
      n++;
      if (yieldEach) await new Promise((r) => setImmediate(r));
    }
    return n;
  };
  const warmedAt = new TidTimes();
  if (warmupS > 0) await commitFor(warmupS, warmedAt);
  const committedAt = new TidTimes();
  const childCpu0 = child ? await child.cpuMicros() : 0;
  const t0 = process.hrtime.bigint();
  const startMs = nowMs();
  const commitRate = (await commitFor(durationS, committedAt)) / seconds(t0);
  const childCpuShare = child ? (await child.cpuMicros() - childCpu0) / 1e6 / seconds(t0) : 0;
  await neighbour?.close('closed');
  const last = fs.lastTransaction();
  const endMs = nowMs();
  let behindAtEndMs = 0;
  let applied = new Map<string, number[]>();
  let syncs: SyncTimes = { atMs: [], ms: [] };
  if (child) {
    await child.waitFor(last, secondaries);
    ({ applied, syncs } = await child.close());
    // How long after the last commit the slowest secondary had it.
    behindAtEndMs = Math.max(0, Math.max(...applied.get(last.toString('hex'))!) - endMs);
  }
  await primary.close();
  await rm(runDir, { recursive: true, force: true });
  const secondarySyncs = syncsWithin(syncs, startMs, endMs, secondaries);
  return { commitRate, ...lagsOf(committedAt, applied), warmup: lagsOf(warmedAt, applied), behindAtEndMs, childCpuShare, secondarySyncs };
}

/** How the secondaries' syncs went, for a live line. */
function syncSummary(s: ReturnType<typeof syncsWithin>): string {
  return (
    `the secondaries' ${s.count} syncs meanwhile (timed from their event loop): p50 ${s.p50.toFixed(2)} ms, p99 ${s.p99.toFixed(2)} ms, max ${s.max.toFixed(1)} ms;` +
    ` ${s.slow} over ${SLOW_SYNC_MS} ms took ${(s.slowShare * 100).toFixed(1)} % of each secondary's time`
  );
}

/** A sync slower than this counts as slow: a transaction behind it waits past the lag goal. */
const SLOW_SYNC_MS = 2;

/**
 * The secondaries' syncs that started between `fromMs` and `toMs`: their
 * durations' percentiles, and the share of each secondary's time spent in
 * slow ones (every transaction that arrives meanwhile waits for it).
 */
function syncsWithin(syncs: SyncTimes, fromMs: number, toMs: number, secondaries: number): Percentiles & { count: number; slow: number; slowShare: number } {
  const ms = syncs.ms.filter((_, i) => syncs.atMs[i]! >= fromMs && syncs.atMs[i]! < toMs);
  const slow = ms.filter((m) => m > SLOW_SYNC_MS);
  const slowMs = slow.reduce((sum, m) => sum + m, 0);
  return { ...percentiles(ms), count: ms.length, slow: slow.length, slowShare: slowMs / ((toMs - fromMs) * Math.max(1, secondaries)) };
}

/** Lag of the commits in `committed` on every secondary that applied them (`applied`: tid hex -> times). */
function lagsOf(committed: TidTimes, applied: Map<string, number[]>): Percentiles {
  const lags: number[] = [];
  for (let i = 0; i < committed.length; i++) for (const t of applied.get(committed.tidHex(i)) ?? []) lags.push(t - committed.at(i));
  return percentiles(lags);
}

/**
 * The floor under live lag on this machine: plain TCP messages from this
 * process to `connections` sockets in a child process, paced as the live
 * writer is (a timer per message, `ratePerSecond` for `durationS`), each
 * timed from just before it is written to when the child reads it.
 */
async function socketLagBaseline(connections: number, ratePerSecond: number, durationS: number): Promise<Percentiles> {
  const server = createServer();
  const accepted: Socket[] = [];
  const allConnected = new Promise<void>((resolve) =>
    server.on('connection', (s) => {
      s.setNoDelay(true);
      if (accepted.push(s) === connections) resolve();
    }),
  );
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  const child = fork(siblingScript(import.meta.url, 'echo.child'), [String(port), String(connections)]);
  const reports = new ChildReports<EchoReport>(child);
  await reports.next('started');
  await allConnected;
  const sentAt: number[] = [];
  const t0 = process.hrtime.bigint();
  for (let n = 0; seconds(t0) < durationS; n++) {
    await dueTime(t0, n, ratePerSecond);
    const message = Buffer.alloc(8);
    message.writeBigUInt64BE(BigInt(n));
    sentAt.push(nowMs());
    for (const s of accepted) s.write(message);
  }
  // The child reports once every message has reached it.
  child.send({ type: 'close', sent: sentAt.length });
  const { atMs } = await reports.next('arrivals');
  await new Promise((r) => (child.exitCode !== null ? r(null) : child.once('exit', r)));
  for (const s of accepted) s.destroy();
  await new Promise((r) => server.close(r));
  return percentiles(atMs.flatMap((times) => sentAt.map((at, n) => times[n]! - at)));
}

async function main(): Promise<void> {
  useCollector(!DEFAULT_COLLECTOR);
  const dir = await mkdtemp(join(tmpdir(), 'zrs-rbench-'));
  const out: string[] = [];
  const f1 = (n: number): string => n.toFixed(1);
  try {
    if (runs('catchup')) {
      const source = join(dir, 'source.fs');
      await buildFile(source, TXNS, 10, 200);
      const size = (await stat(source)).size;
      const warm: number[] = [];
      const copyRuns = await alternating(
        () => plainSocketCopy(source, join(dir, 'plain-copy')),
        async () => {
          const run = await catchUp(dir, source, true);
          warm.push(run.warmSeconds);
          return run.seconds;
        },
      );
      const plain = copyRuns.baseline.median;
      const txns = TXNS;
      const figures = (label: string, c: Spread): string => {
        const s = c.median;
        return (
          `catch-up ${txns} txns, ${(size / 1e6).toFixed(1)} MB, secondary fsync on, ${label}: ${s.toFixed(2)} s (median of ${REPEAT}, ${c.min.toFixed(2)}-${c.max.toFixed(2)}) = ${(txns / s).toFixed(0)} txn/s, ${(size / 1e6 / s).toFixed(1)} MB/s` +
          ` | ${(ZRS.catchupSeconds / s * (txns / 20000)).toFixed(1)}x zc.zrs (8.07 s for 20,000) | ${(plain / s).toFixed(2)} of a plain socket copy (${f1(plain)} s)`
        );
      };
      out.push(figures('new secondary process', copyRuns.measured), figures('running secondary (its process caught up once before)', spread(warm)));
    }
    if (runs('large')) {
      const big = join(dir, 'big.fs');
      await buildFile(big, 100, 1, 1 << 20);
      const bigSize = (await stat(big)).size;
      const bigRuns = await alternating(
        () => plainSocketCopy(big, join(dir, 'plain-big')),
        async () => (await catchUp(dir, big)).seconds,
      );
      const plainBig = bigRuns.baseline.median;
      const cb = bigRuns.measured;
      out.push(
        `catch-up 100 x 1 MiB records: ${(bigSize / 1e6 / cb.median).toFixed(0)} MB/s (median of ${REPEAT}, ${(bigSize / 1e6 / cb.max).toFixed(0)}-${(bigSize / 1e6 / cb.min).toFixed(0)})` +
          ` | ${(plainBig / cb.median).toFixed(2)} of a plain socket copy (${(bigSize / 1e6 / plainBig).toFixed(0)} MB/s)`,
      );
    }

    if (runs('live')) {
      const cpu = await cpuSteadiness(2);
      out.push(
        `machine steadiness: a fixed computation run every 2 ms on the otherwise idle machine took p50 ${cpu.p50.toFixed(0)} µs, p99 ${cpu.p99.toFixed(0)} µs (${(cpu.p99 / cpu.p50).toFixed(1)}x p50), max ${cpu.max.toFixed(0)} µs of CPU`,
      );
      const floor = await socketLagBaseline(3, 1000, LIVE_SECONDS);
      out.push(
        `live-lag baseline: plain 8-byte TCP messages to 3 connections in a child process, paced 1000/s: lag p50 ${floor.p50.toFixed(2)} ms, p99 ${floor.p99.toFixed(2)} ms, max ${floor.max.toFixed(1)} ms`,
      );
      const disk = await syncLatency(dir, 4, TXN_BYTES, 1000, LIVE_SECONDS);
      out.push(
        `live-lag disk baseline: 4 files (a primary's and 3 secondaries'), each appended ${TXN_BYTES} B and fdatasync'd 1000 times a second by a thread of its own: sync p50 ${disk.p50.toFixed(2)} ms, p99 ${disk.p99.toFixed(2)} ms, max ${disk.max.toFixed(1)} ms`,
      );
      const replicatedDisk = await replicatedSyncLatency(dir, 3, TXN_BYTES, 1000, LIVE_SECONDS);
      out.push(
        `durable-replication disk floor: a primary's file appended ${TXN_BYTES} B and fdatasync'd 1000 times a second, and after each sync 3 secondaries' files (threads woken at once, files written ahead as the storage's fill is) appended the same and fdatasync'd: from the end of the primary's sync to the end of each secondary's, p50 ${replicatedDisk.p50.toFixed(2)} ms, p99 ${replicatedDisk.p99.toFixed(2)} ms, max ${replicatedDisk.max.toFixed(1)} ms`,
      );
      for (const sync of [true, false]) {
        const label = sync ? 'all fsync' : 'no fsync anywhere, secondaries on tmpfs';
        const options = { secondaryFsync: sync, primaryFsync: sync, warmupS: WARMUP_SECONDS };
        const paced = await live(dir, 3, 1000, LIVE_SECONDS, options);
        const w = paced.warmup;
        let untuned = '';
        if (!DEFAULT_COLLECTOR) {
          useCollector(false);
          const plain = await live(dir, 3, 1000, LIVE_SECONDS, options);
          useCollector(true);
          untuned = ` | with V8's collector as it is: p50 ${plain.p50.toFixed(2)} ms, p99 ${plain.p99.toFixed(2)} ms, max ${plain.max.toFixed(1)} ms`;
        }
        out.push(
          `live, 3 secondaries (${label}), paced 1000 txn/s (got ${paced.commitRate.toFixed(0)}), after ${WARMUP_SECONDS} s of the same load: lag p50 ${paced.p50.toFixed(2)} ms, p99 ${paced.p99.toFixed(2)} ms, max ${paced.max.toFixed(1)} ms` +
            ` | p99 ${(paced.p99 / floor.p99).toFixed(1)}x the plain-socket baseline's | p99 ${(paced.p99 / ZRS.pacedP99Ms).toFixed(1)}x zc.zrs's at 500 txn/s (${ZRS.pacedP99Ms} ms)` +
            (WARMUP_SECONDS > 0 ? ` | in those first ${WARMUP_SECONDS} s of new processes: p50 ${w.p50.toFixed(2)} ms, p99 ${w.p99.toFixed(2)} ms, max ${w.max.toFixed(1)} ms` : '') +
            (sync ? ` | p99 ${(paced.p99 / replicatedDisk.p99).toFixed(1)}x the durable-replication disk floor's | ${syncSummary(paced.secondarySyncs)}` : '') +
            untuned,
        );
      }
    }
    if (runs('unpaced')) {
      const unpaced = await live(dir, 1, null, LIVE_SECONDS);
      out.push(
        `live, unpaced, 1 secondary (fsync): ${unpaced.commitRate.toFixed(0)} commits/s, lag p50 ${unpaced.p50.toFixed(2)} ms, p99 ${unpaced.p99.toFixed(2)} ms, max ${unpaced.max.toFixed(1)} ms, behind at end ${unpaced.behindAtEndMs.toFixed(1)} ms`,
      );
    }
    // Three setups. Durable everywhere, all on the one disk here. Durable everywhere, the
    // secondaries' files in tmpfs: as in a deployment, where each secondary has a disk of its own,
    // their syncs do not queue with the primary's (the CPUs are still shared). Nothing synced: the
    // primary's own cost of serving N sessions when commits never wait for a disk.
    const fanoutSetups = [
      { label: 'primary and secondaries fsync, same disk', sync: true, secondariesInMemory: false },
      { label: 'primary and secondaries fsync, secondaries on tmpfs as on disks of their own', sync: true, secondariesInMemory: true },
      { label: 'no fsync anywhere, secondaries on tmpfs', sync: false, secondariesInMemory: true },
    ];
    for (const { label, sync, secondariesInMemory } of runs('fanout') ? fanoutSetups : []) {
      const fan: number[] = [];
      const options = { secondaryFsync: sync, primaryFsync: sync, secondariesInMemory, report: 'newest' as const, warmupS: WARMUP_SECONDS };
      // Each run is measured after WARMUP_SECONDS of the same load, as the live rows are: a new
      // secondaries' process spends its first seconds compiling its code on the CPU the primary
      // shares, which is start-up, not what serving N secondaries costs.
      // Only the commit rate counts here: the child reports no per-transaction times, whose IPC would grow with N in both processes.
      // A first, discarded run with one secondary compiles the commit and send paths, so neither the
      // 0-secondary figure nor the first series' others are taken with code still being compiled: a
      // live session whose first ticks run cold is spaced so far apart that it falls behind and
      // reads the log for the rest of its run.
      await live(dir, 1, null, 1, options);
      // The series runs REPEAT times, interleaved, and each count takes its median: the
      // machine's speed drifts over a series, and a single 0-secondary run moved by 50 %.
      const counts = [0, 1, 4, 16];
      const runSeconds = Math.max(2, LIVE_SECONDS / 2);
      const rates: number[][] = counts.map(() => []);
      // After each 16-secondary run: none, beside a neighbour process as busy as theirs was.
      const besideNeighbour: number[] = [];
      const shares: number[] = [];
      /** How long after the last commit the slowest of the 16 had it, per series (ms). */
      const behind: number[] = [];
      for (let r = 0; r < REPEAT; r++) {
        for (let i = 0; i < counts.length; i++) {
          const run = await live(dir, counts[i]!, null, runSeconds, options);
          rates[i]!.push(run.commitRate);
          if (counts[i] === 16) {
            shares.push(run.childCpuShare);
            behind.push(run.behindAtEndMs);
          }
        }
        besideNeighbour.push((await live(dir, 0, null, runSeconds, { ...options, neighbourShare: shares.at(-1)! })).commitRate);
      }
      const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
      for (const r of rates) fan.push(median(r));
      const losses = rates[3]!.map((r16, i) => (1 - r16 / rates[0]![i]!) * 100);
      const neighbourLosses = rates[3]!.map((r16, i) => (1 - r16 / besideNeighbour[i]!) * 100);
      out.push(
        `fan-out (${label}), commits/s with 0/1/4/16 secondaries (medians of ${REPEAT}): ${fan.map((r) => r.toFixed(0)).join(' / ')} | at 16: ${((1 - fan[3]! / fan[0]!) * 100).toFixed(1)}% loss (per series ${losses.map((l) => l.toFixed(0)).join(', ')} %)` +
          ` | against 0 secondaries beside a neighbour process as busy as the 16 secondaries' (${(median(shares) * 100).toFixed(0)}% of a CPU; ${median(besideNeighbour).toFixed(0)} commits/s): ${median(neighbourLosses).toFixed(1)}% loss (per series ${neighbourLosses.map((l) => l.toFixed(0)).join(', ')} %)` +
          ` | the 16 ended ${behind.map((b) => (b / 1000).toFixed(1)).join(', ')} s behind the last commit (a session that falls behind reads the log within the send share)`,
      );
    }
    if (BIG_MB > 0 && runs('big')) {
      // About BIG_MB of 10 x 4 KiB transactions, caught up by a durable secondary.
      const huge = join(dir, 'huge.fs');
      await buildFile(huge, Math.round((BIG_MB * 1e6) / (10 * 4138 + 100)), 10, 4096);
      const hugeSize = (await stat(huge)).size;
      const ch = await separateCatchUp(dir, huge);
      out.push(
        `catch-up ${(hugeSize / 1e9).toFixed(2)} GB (${ch.txns} txns of 10 x 4 KiB), primary and secondary each in a process of its own: ${f1(ch.seconds)} s, ${(hugeSize / 1e6 / ch.seconds).toFixed(0)} MB/s; peak RSS primary ${(ch.primaryRss / 1e6).toFixed(0)} MB, secondary ${(ch.secondaryRss / 1e6).toFixed(0)} MB`,
      );
    }
  } finally {
    for (const d of ChildSecondaries.dirs) await rm(d, { recursive: true, force: true });
    await rm(dir, { recursive: true, force: true });
  }
  console.log(
    `replication benchmark (primary in this process, secondaries in a child process, loopback TCP; live primaries' send share ${SEND_SHARE}${SEND_SHARE === DEFAULT_SEND_SHARE ? ', the default' : ''}; ` +
      `${DEFAULT_COLLECTOR ? "V8's collector as it is" : 'collector tuned as zrs serve tunes it'})`,
  );
  for (const l of out) console.log(`  ${l}`);
}

await main();
