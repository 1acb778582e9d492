// Replication benchmark, every figure with its baseline from the same run:
//  - catch-up of a 20,000 x 10 x 200 B file by a durable (fsync) secondary,
//    against copying the same file through a loopback socket with plain
//    Node streams, and against zc.zrs's figure on this class of machine;
//  - catch-up of large records (1 MiB), against the same plain copy;
//  - live lag at a steady commit rate with 3 secondaries (p50/p99/max);
//  - unpaced commits: does the secondary keep up;
//  - primary commit rate with 0, 1, 4 and 16 connected secondaries;
//  - peak RSS of this process during the catch-up.
//
//   npm run bench:replication [-- --txns 20000 --live-seconds 5]

import { createReadStream, createWriteStream } from 'node:fs';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { createServer, connect, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { firstValueFrom, filter } from 'rxjs';
import { Primary } from '../src/replication/primary.js';
import { Secondary } from '../src/replication/secondary.js';
import { FileStorage } from '../src/storage/FileStorage.js';
import { tidToSeconds } from '../src/storage/timestamp.js';
import { Workload, arg, secondsSince } from './workload.js';

const ZRS = { catchupSeconds: 8.07, catchupTxnPerS: 2478, liveP99Ms: 16.9, pacedP99Ms: 2.2 };

const TXNS = arg('txns', 20000);
const LIVE_SECONDS = arg('live-seconds', 4);
let peakRss = 0;
const rssTimer = setInterval(() => (peakRss = Math.max(peakRss, process.memoryUsage().rss)), 50);

const seconds = secondsSince;

async function buildFile(path: string, txns: number, records: number, recordBytes: number): Promise<void> {
  const fs = await FileStorage.open(path, { create: true, fsync: false });
  const work = new Workload(fs, records, recordBytes, Math.min(10_000, txns * records));
  for (let i = 0; i < txns; i++) await work.commit();
  await fs.close();
}

/** Copy a file through a loopback socket with plain streams: the I/O limit. */
async function plainSocketCopy(src: string, dst: string): Promise<number> {
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

async function catchUp(dir: string, name: string, source: string): Promise<{ seconds: number; txns: number; bytes: number }> {
  const primary = await Primary.open({ path: source, replicateTo: '127.0.0.1:0' });
  const last = primary.storage.lastTransaction();
  const t0 = process.hrtime.bigint();
  const secondary = await Secondary.open({ path: join(dir, `${name}.fs`), replicateFrom: primary.address, fsync: true });
  if (!secondary.storage.lastTransaction().equals(last)) {
    await firstValueFrom(secondary.applied$.pipe(filter((c) => c.tid.equals(last))));
  }
  const t = seconds(t0);
  const result = { seconds: t, txns: secondary.storage.transactionCount, bytes: secondary.storage.getSize() };
  await secondary.close();
  await primary.close();
  return result;
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;
}

async function live(dir: string, secondaries: number, ratePerSecond: number | null, durationS: number) {
  const primary = await Primary.open({ path: join(dir, `live-${secondaries}-${ratePerSecond}.fs`), replicateTo: '127.0.0.1:0', fsync: true });
  const subs = await Promise.all(
    Array.from({ length: secondaries }, (_, i) =>
      Secondary.open({ path: join(dir, `live-${secondaries}-${ratePerSecond}-s${i}.fs`), replicateFrom: primary.address, fsync: true }),
    ),
  );
  await Promise.all(subs.map((s) => firstValueFrom(s.status$.pipe(filter((x) => x.kind === 'connected')))));
  const committedAt = new Map<string, bigint>();
  const lags: number[] = [];
  for (const s of subs) {
    s.applied$.subscribe((c) => {
      const t = committedAt.get(c.tid.toString('hex'));
      if (t !== undefined) lags.push(Number(process.hrtime.bigint() - t) / 1e6);
    });
  }
  const fs = primary.storage;
  const work = new Workload(fs, 10, 200, 1000);
  const t0 = process.hrtime.bigint();
  let n = 0;
  while (seconds(t0) < durationS) {
    if (ratePerSecond !== null) {
      const due = t0 + BigInt(Math.round((n / ratePerSecond) * 1e9));
      while (process.hrtime.bigint() < due) await new Promise((r) => setImmediate(r));
    }
    const tid = await work.commit();
    committedAt.set(tid.toString('hex'), process.hrtime.bigint());
    n++;
  }
  const commitRate = n / seconds(t0);
  const last = fs.lastTransaction();
  const behindAtEndMs = subs.length
    ? Math.max(...subs.map((s) => (tidToSeconds(last) - tidToSeconds(s.storage.lastTransaction())) * 1000))
    : 0;
  await Promise.all(subs.map((s) => (s.storage.lastTransaction().equals(last) ? null : firstValueFrom(s.applied$.pipe(filter((c) => c.tid.equals(last)))))));
  for (const s of subs) await s.close();
  await primary.close();
  lags.sort((a, b) => a - b);
  return { commitRate, p50: percentile(lags, 50), p99: percentile(lags, 99), max: lags.at(-1) ?? NaN, behindAtEndMs };
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'zrs-rbench-'));
  const out: string[] = [];
  const f1 = (n: number): string => n.toFixed(1);
  try {
    const source = join(dir, 'source.fs');
    await buildFile(source, TXNS, 10, 200);
    const size = (await stat(source)).size;
    const plain = await plainSocketCopy(source, join(dir, 'plain-copy'));
    const c = await catchUp(dir, 'catchup', source);
    out.push(
      `catch-up ${c.txns} txns, ${(size / 1e6).toFixed(1)} MB, secondary fsync on: ${f1(c.seconds)} s = ${(c.txns / c.seconds).toFixed(0)} txn/s, ${(size / 1e6 / c.seconds).toFixed(1)} MB/s` +
        ` | ${(ZRS.catchupSeconds / c.seconds * (c.txns / 20000)).toFixed(1)}x zc.zrs (8.07 s for 20,000) | ${(plain / c.seconds).toFixed(2)} of a plain socket copy (${f1(plain)} s)`,
    );
    const big = join(dir, 'big.fs');
    await buildFile(big, 100, 1, 1 << 20);
    const bigSize = (await stat(big)).size;
    const plainBig = await plainSocketCopy(big, join(dir, 'plain-big'));
    const cb = await catchUp(dir, 'catchup-big', big);
    out.push(`catch-up 100 x 1 MiB records: ${(bigSize / 1e6 / cb.seconds).toFixed(0)} MB/s | ${(plainBig / cb.seconds).toFixed(2)} of a plain socket copy (${(bigSize / 1e6 / plainBig).toFixed(0)} MB/s)`);

    const paced = await live(dir, 3, 1000, LIVE_SECONDS);
    out.push(
      `live, 3 secondaries, paced 1000 txn/s (got ${paced.commitRate.toFixed(0)}): lag p50 ${paced.p50.toFixed(2)} ms, p99 ${paced.p99.toFixed(2)} ms, max ${paced.max.toFixed(1)} ms | p99 ${(ZRS.pacedP99Ms / paced.p99).toFixed(1)}x better than zc.zrs at 500 txn/s`,
    );
    const unpaced = await live(dir, 1, null, LIVE_SECONDS);
    out.push(
      `live, unpaced, 1 secondary: ${unpaced.commitRate.toFixed(0)} commits/s, lag p50 ${unpaced.p50.toFixed(2)} ms, p99 ${unpaced.p99.toFixed(2)} ms, max ${unpaced.max.toFixed(1)} ms, behind at end ${unpaced.behindAtEndMs.toFixed(1)} ms`,
    );
    const fan: number[] = [];
    for (const n of [0, 1, 4, 16]) fan.push((await live(dir, n, null, Math.max(2, LIVE_SECONDS / 2))).commitRate);
    out.push(`fan-out, commits/s with 0/1/4/16 secondaries: ${fan.map((r) => r.toFixed(0)).join(' / ')} | at 16: ${((1 - fan[3]! / fan[0]!) * 100).toFixed(1)}% loss`);
    out.push(`peak RSS of this process (primary and secondaries together): ${(peakRss / 1e6).toFixed(0)} MB`);
  } finally {
    clearInterval(rssTimer);
    await rm(dir, { recursive: true, force: true });
  }
  console.log('replication benchmark (primary and secondaries in this one process, loopback TCP)');
  for (const l of out) console.log(`  ${l}`);
}

await main();
