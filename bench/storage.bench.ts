// Storage benchmark (after an unmeasured warm-up of commits and iteration): commit rate (with and without fsync, serial and with 8
// concurrent committers), random loads and full iteration, each printed as a
// ratio against plain Node fs doing the same I/O in the same run, and against
// Python ZODB 5.5.1's figures measured on this class of machine.
//
//   npm run bench:storage [-- --txns 20000 --fsync-txns 2000 --warmup-txns 5000 --repeat 5]

import { closeSync, fdatasyncSync, openSync, readSync, writeSync } from 'node:fs';
import { mkdtemp, rm, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileStorage } from '../src/storage/FileStorage.js';
import { Workload, arg, secondsSince } from './workload.js';

const ZODB = { commitFsync: 3207, commitNoFsync: 21451, iterate: 73047 };
const RECORDS = 10;
const RECORD_BYTES = 200;

const TXNS = arg('txns', 20000);
const FSYNC_TXNS = arg('fsync-txns', 2000);
const WARMUP_TXNS = arg('warmup-txns', 5000);
/** Runs of every figure; medians are reported (this class of machine is noisy). */
const REPEAT = arg('repeat', 5);
/** Passes over the file per iteration figure in each run (the median counts). */
const ITER_PASSES = 3;

function rate(n: number, startNs: bigint): number {
  return n / secondsSince(startNs);
}

async function commitSerial(work: Workload, n: number): Promise<number> {
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) await work.commit();
  return rate(n, t0);
}

/**
 * A plain file taking the same bytes per transaction as the storage does, appended with Node's fs (optionally fdatasync'd each time): the limit.
 * With `preallocatedBytes`, the file first gets that many bytes of zeros (synced), which the transactions' bytes then overwrite, as the storage overwrites its fill.
 */
class PlainLog {
  private readonly fd: number;
  private readonly buf: Buffer;
  private pos = 0;

  constructor(path: string, bytesPerTxn: number, private readonly sync: boolean, preallocatedBytes = 0) {
    this.fd = openSync(path, 'w');
    this.buf = Buffer.alloc(bytesPerTxn, 1);
    const zeros = Buffer.alloc(1024 * 1024);
    for (let at = 0; at < preallocatedBytes; at += zeros.length) writeSync(this.fd, zeros, 0, zeros.length, at);
    if (preallocatedBytes > 0) fdatasyncSync(this.fd);
  }

  /** Append `n` transactions' worth; returns the seconds it took. */
  append(n: number): number {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < n; i++) {
      this.pos += writeSync(this.fd, this.buf, 0, this.buf.length, this.pos);
      if (this.sync) fdatasyncSync(this.fd);
    }
    return secondsSince(t0);
  }

  close(): void {
    closeSync(this.fd);
  }
}

/** Plain appends of `n` transactions' bytes: their rate. */
function plainAppends(path: string, n: number, bytesPerTxn: number, sync: boolean): number {
  const log = new PlainLog(path, bytesPerTxn, sync);
  const seconds = log.append(n);
  log.close();
  return n / seconds;
}

/**
 * Serial commits with fsync, the plain append+fdatasync limit, and plain
 * overwrites of preallocated space with fdatasync (what the storage does
 * over its fill), measured in alternating chunks so that the disk's and the
 * machine's drift during the run weighs on all alike: [commit rate, append
 * limit, overwrite limit].
 */
async function commitSyncedAgainstLimits(fs: FileStorage, path: string, n: number, bytesPerTxn: number): Promise<[number, number, number]> {
  const work = new Workload(fs, RECORDS, RECORD_BYTES, 1000);
  const chunk = Math.max(1, Math.min(100, n));
  const total = Math.ceil(n / chunk) * chunk;
  const appended = new PlainLog(path, bytesPerTxn, true);
  const overwritten = new PlainLog(`${path}-preallocated`, bytesPerTxn, true, total * bytesPerTxn);
  let ours = 0;
  let append = 0;
  let overwrite = 0;
  for (let done = 0; done < n; done += chunk) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < chunk; i++) await work.commit();
    ours += secondsSince(t0);
    append += appended.append(chunk);
    overwrite += overwritten.append(chunk);
  }
  appended.close();
  overwritten.close();
  return [total / ours, total / append, total / overwrite];
}

async function concurrentCommits(fs: FileStorage, writers: number, perWriter: number): Promise<number> {
  const t0 = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: writers }, async () => {
      const work = new Workload(fs, RECORDS, RECORD_BYTES, RECORDS * 4);
      for (let i = 0; i < perWriter; i++) await work.commit();
    }),
  );
  return rate(writers * perWriter, t0);
}

/** One measured figure of one run: its rate, the plain-fs rate it is compared with, and how that comparison reads. */
interface Figure {
  label: string;
  value: number;
  baseline: number;
  /** The comparison with the baseline, given the value and the baseline. */
  versus: (value: number, baseline: number) => string;
  /** ZODB's rate for the same thing, when known. */
  zodb?: number;
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/** One pass over every figure, in files under `dir`. */
async function measure(dir: string): Promise<Figure[]> {
  const figures: Figure[] = [];
  const fmt = (n: number): string => Math.round(n).toLocaleString('en-US');
  // 1. Serial commits without fsync.
  const path = join(dir, 'Data.fs');
  let fs = await FileStorage.open(path, { create: true, fsync: false });
  const work = new Workload(fs, RECORDS, RECORD_BYTES, 10_000);
  const oids = work.oids;
  const noSync = await commitSerial(work, TXNS);
  const bytesPerTxn = Math.round(fs.getSize() / TXNS);
  const plainNoSync = plainAppends(join(dir, 'plain'), TXNS, bytesPerTxn, false);
  figures.push({ label: 'commit, no fsync (txn/s)', value: noSync, baseline: plainNoSync, versus: (v, b) => `${(v / b).toFixed(2)} of plain appends (${fmt(b)})`, zodb: ZODB.commitNoFsync });
  await fs.close();

  // 2. Random loads.
  fs = await FileStorage.open(path, { readOnly: true });
  const loads = 200_000;
  let t0 = process.hrtime.bigint();
  for (let i = 0; i < loads; i++) await fs.load(oids[(i * 7919) % oids.length]!);
  const loadRate = rate(loads, t0);
  const positions = [...fs.index.values()];
  const fd = openSync(path, 'r');
  const buf = Buffer.allocUnsafe(42 + RECORD_BYTES);
  t0 = process.hrtime.bigint();
  for (let i = 0; i < loads; i++) readSync(fd, buf, 0, buf.length, positions[(i * 7919) % positions.length]!);
  const plainLoad = rate(loads, t0);
  closeSync(fd);
  figures.push({ label: 'random load (loads/s)', value: loadRate, baseline: plainLoad, versus: (v, b) => `${(v / b).toFixed(2)} of plain preads (${fmt(b)})` });

  // 3. Full iteration: transactions only, then with every record object built too (they are built on first access).
  // A pass over this file takes about 0.1 s, so each is measured ITER_PASSES times, alternating with a plain read, and takes the median.
  let count = 0;
  let whole = Buffer.alloc(0);
  const iterRates: number[] = [];
  const readRates: number[] = [];
  for (let pass = 0; pass < ITER_PASSES; pass++) {
    t0 = process.hrtime.bigint();
    count = 0;
    for await (const _ of fs.iterator()) count++;
    iterRates.push(rate(count, t0));
    t0 = process.hrtime.bigint();
    whole = await readFile(path);
    readRates.push(rate(count, t0));
  }
  const iterRate = median(iterRates);
  const plainRead = median(readRates);
  figures.push({
    label: `iterate ${fmt(count)} txns, ${(whole.length / 1e6).toFixed(1)} MB (txn/s)`,
    value: iterRate,
    baseline: plainRead,
    versus: (v, b) => `${(v / b).toFixed(2)} of reading the file (${fmt(b)} txn-equivalents/s)`,
    zodb: ZODB.iterate,
  });
  let records = 0;
  const recordRates: number[] = [];
  for (let pass = 0; pass < ITER_PASSES; pass++) {
    t0 = process.hrtime.bigint();
    records = 0;
    for await (const t of fs.iterator()) records += t.records.length;
    recordRates.push(rate(count, t0));
  }
  const iterRecordsRate = median(recordRates);
  figures.push({ label: `iterate, also each of the ${fmt(records)} records (txn/s)`, value: iterRecordsRate, baseline: plainRead, versus: (v, b) => `${(v / b).toFixed(2)} of reading the file`, zodb: ZODB.iterate });
  await fs.close();

  // 4. Serial commits with fsync, alternating with the limit.
  fs = await FileStorage.open(join(dir, 'Sync.fs'), { create: true, fsync: true });
  const [syncRate, plainSync, overwriteSync] = await commitSyncedAgainstLimits(fs, join(dir, 'plain-sync'), FSYNC_TXNS, bytesPerTxn);
  figures.push({ label: 'commit, fsync, serial (txn/s)', value: syncRate, baseline: plainSync, versus: (v, b) => `${(v / b).toFixed(2)} of append+fdatasync (${fmt(b)})`, zodb: ZODB.commitFsync });
  // The storage writes its commits over fill written ahead (docs/STORAGE.md): the floor of that is a plain overwrite and sync.
  figures.push({ label: '  the same, against overwriting', value: syncRate, baseline: overwriteSync, versus: (v, b) => `${(v / b).toFixed(2)} of overwrite+fdatasync of preallocated space (${fmt(b)})` });

  // 5. Eight concurrent committers with fsync (group commit).
  const groupRate = await concurrentCommits(fs, 8, Math.ceil(FSYNC_TXNS / 2));
  figures.push({ label: 'commit, fsync, 8 committers (txn/s)', value: groupRate, baseline: plainSync, versus: (v, b) => `${(v / b).toFixed(2)} of append+fdatasync`, zodb: ZODB.commitFsync });
  await fs.close();
  return figures;
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'zrs-bench-'));
  const runs: Figure[][] = [];
  const fmt = (n: number): string => Math.round(n).toLocaleString('en-US');
  try {
    // 0. Warm-up (JIT, allocator): commits into a scratch storage, not measured.
    const scratch = await FileStorage.open(join(dir, 'warmup.fs'), { create: true, fsync: false });
    await commitSerial(new Workload(scratch, RECORDS, RECORD_BYTES, 1000), WARMUP_TXNS);
    for (let pass = 0; pass < 3; pass++) for await (const _ of scratch.iterator()) void _;
    await scratch.close();
    for (let r = 0; r < REPEAT; r++) {
      const runDir = await mkdtemp(join(dir, 'run-'));
      runs.push(await measure(runDir));
      await rm(runDir, { recursive: true, force: true });
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  // Per figure: the median value and the median baseline of the runs, and the range of the values.
  const rows = runs[0]!.map((f, i) => {
    const values = runs.map((run) => run[i]!.value);
    const value = median(values);
    const baseline = median(runs.map((run) => run[i]!.baseline));
    const range = REPEAT > 1 ? ` (${fmt(Math.min(...values))}-${fmt(Math.max(...values))})` : '';
    return [f.label, `${fmt(value)}${range}`, f.versus(value, baseline), f.zodb ? `${(value / f.zodb).toFixed(2)}x ZODB` : ''];
  });
  const widths = [0, 1, 2, 3].map((c) => Math.max(...rows.map((r) => r[c]!.length)));
  console.log(`storage benchmark: ${TXNS} txns of ${RECORDS} x ${RECORD_BYTES} B (fsync runs: ${FSYNC_TXNS}; after ${WARMUP_TXNS} warm-up commits); median of ${REPEAT} runs (range)`);
  for (const r of rows) console.log(r.map((c, i) => c.padEnd(widths[i]!)).join('  '));
}

await main();
