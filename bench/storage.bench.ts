// Storage benchmark (after an unmeasured warm-up of commits and iteration): commit rate (with and without fsync, serial and with 8
// concurrent committers), random loads and full iteration, each printed as a
// ratio against plain Node fs doing the same I/O in the same run, and against
// Python ZODB 5.5.1's figures measured on this class of machine.
//
//   npm run bench:storage [-- --txns 20000 --fsync-txns 2000 --warmup-txns 5000]

import { closeSync, fdatasyncSync, openSync, readSync, writeSync, fdatasync } from 'node:fs';
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

function rate(n: number, startNs: bigint): number {
  return n / secondsSince(startNs);
}

async function commitSerial(work: Workload, n: number): Promise<number> {
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) await work.commit();
  return rate(n, t0);
}

/** Plain appends of the same bytes a transaction takes, optionally fdatasync'd each time. */
function plainAppends(path: string, n: number, bytesPerTxn: number, sync: boolean): number {
  const fd = openSync(path, 'w');
  const buf = Buffer.alloc(bytesPerTxn, 1);
  const t0 = process.hrtime.bigint();
  let pos = 0;
  for (let i = 0; i < n; i++) {
    pos += writeSync(fd, buf, 0, buf.length, pos);
    if (sync) fdatasyncSync(fd);
  }
  const r = rate(n, t0);
  closeSync(fd);
  return r;
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

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'zrs-bench-'));
  const rows: Array<[string, string, string, string]> = [];
  const fmt = (n: number): string => Math.round(n).toLocaleString('en-US');
  try {
    // 0. Warm-up (JIT, allocator): commits into a scratch storage, not measured.
    const scratch = await FileStorage.open(join(dir, 'warmup.fs'), { create: true, fsync: false });
    await commitSerial(new Workload(scratch, RECORDS, RECORD_BYTES, 1000), WARMUP_TXNS);
    for (let pass = 0; pass < 3; pass++) for await (const _ of scratch.iterator()) void _;
    await scratch.close();

    // 1. Serial commits without fsync.
    const path = join(dir, 'Data.fs');
    let fs = await FileStorage.open(path, { create: true, fsync: false });
    const work = new Workload(fs, RECORDS, RECORD_BYTES, 10_000);
    const oids = work.oids;
    const noSync = await commitSerial(work, TXNS);
    const bytesPerTxn = Math.round(fs.getSize() / TXNS);
    const plainNoSync = plainAppends(join(dir, 'plain'), TXNS, bytesPerTxn, false);
    rows.push(['commit, no fsync (txn/s)', fmt(noSync), `${(noSync / plainNoSync).toFixed(2)} of plain appends (${fmt(plainNoSync)})`, `${(noSync / ZODB.commitNoFsync).toFixed(2)}x ZODB`]);
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
    rows.push(['random load (loads/s)', fmt(loadRate), `${(loadRate / plainLoad).toFixed(2)} of plain preads (${fmt(plainLoad)})`, '']);

    // 3. Full iteration.
    t0 = process.hrtime.bigint();
    let count = 0;
    for await (const _ of fs.iterator()) count++;
    const iterRate = rate(count, t0);
    t0 = process.hrtime.bigint();
    const whole = await readFile(path);
    const plainRead = rate(count, t0);
    rows.push([`iterate ${fmt(count)} txns, ${(whole.length / 1e6).toFixed(1)} MB (txn/s)`, fmt(iterRate), `${(iterRate / plainRead).toFixed(2)} of reading the file (${fmt(plainRead)} txn-equivalents/s)`, `${(iterRate / ZODB.iterate).toFixed(2)}x ZODB`]);
    // The same with every record object built too (records are built on first access).
    t0 = process.hrtime.bigint();
    let records = 0;
    for await (const t of fs.iterator()) records += t.records.length;
    const iterRecordsRate = rate(count, t0);
    rows.push([`iterate, also each of the ${fmt(records)} records (txn/s)`, fmt(iterRecordsRate), `${(iterRecordsRate / plainRead).toFixed(2)} of reading the file`, `${(iterRecordsRate / ZODB.iterate).toFixed(2)}x ZODB`]);
    await fs.close();

    // 4. Serial commits with fsync.
    const spath = join(dir, 'Sync.fs');
    fs = await FileStorage.open(spath, { create: true, fsync: true });
    const syncRate = await commitSerial(new Workload(fs, RECORDS, RECORD_BYTES, 1000), FSYNC_TXNS);
    const plainSync = plainAppends(join(dir, 'plain-sync'), FSYNC_TXNS, bytesPerTxn, true);
    rows.push(['commit, fsync, serial (txn/s)', fmt(syncRate), `${(syncRate / plainSync).toFixed(2)} of append+fdatasync (${fmt(plainSync)})`, `${(syncRate / ZODB.commitFsync).toFixed(2)}x ZODB`]);

    // 5. Eight concurrent committers with fsync (group commit).
    const groupRate = await concurrentCommits(fs, 8, Math.ceil(FSYNC_TXNS / 2));
    rows.push(['commit, fsync, 8 committers (txn/s)', fmt(groupRate), `${(groupRate / plainSync).toFixed(2)} of append+fdatasync`, `${(groupRate / ZODB.commitFsync).toFixed(2)}x ZODB`]);
    await fs.close();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  const widths = [0, 1, 2, 3].map((c) => Math.max(...rows.map((r) => r[c]!.length)));
  console.log(`storage benchmark: ${TXNS} txns of ${RECORDS} x ${RECORD_BYTES} B (fsync runs: ${FSYNC_TXNS}; after ${WARMUP_TXNS} warm-up commits)`);
  for (const r of rows) console.log(r.map((c, i) => c.padEnd(widths[i]!)).join('  '));
}

void fdatasync;
await main();
