// What this machine itself allows, measured beside the live-lag figures:
//  - how steady its CPU is: a fixed computation run every 2 ms on an
//    otherwise idle machine, its CPU time per run (on a shared VM the same
//    instructions take several times longer in some stretches, and every
//    process on it slows down together);
//  - how fast its disk syncs under the live benchmark's load: one file per
//    node (a primary and three secondaries), each appended a transaction's
//    bytes and fdatasync'd 1000 times a second, each in a thread of its
//    own, the sync's latency;
//  - the disk's floor under durable replication's lag: the same files, but
//    each secondary's sync starts when the primary's ends, as a transaction
//    reaches a secondary once the primary made it durable; the time from
//    the end of the primary's sync to the end of each secondary's.

import { createHash } from 'node:crypto';
import { Worker } from 'node:worker_threads';

/** The median, 99th percentile and largest of some latencies (NaN each when there are none). */
export interface Percentiles {
  p50: number;
  p99: number;
  max: number;
}

export function percentiles(values: number[]): Percentiles {
  const sorted = [...values].sort((a, b) => a - b);
  const at = (p: number): number => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] ?? NaN;
  return { p50: at(0.5), p99: at(0.99), max: sorted.at(-1) ?? NaN };
}

/** CPU time (µs) of one run of a fixed computation (integer arithmetic and a sha256 of 2 KB), every 2 ms for `durationS`. */
export async function cpuSteadiness(durationS: number): Promise<Percentiles> {
  const bytes = Buffer.alloc(2048, 1);
  let sink = 0;
  const work = (): void => {
    let x = 0;
    for (let i = 0; i < 20_000; i++) x = (x * 31 + i) | 0;
    sink ^= x ^ createHash('sha256').update(bytes).digest()[0]!;
  };
  for (let i = 0; i < 2000; i++) work(); // compiled before it is timed
  const micros: number[] = [];
  const end = performance.now() + durationS * 1000;
  while (performance.now() < end) {
    const before = process.cpuUsage();
    work();
    const used = process.cpuUsage(before);
    micros.push(used.user + used.system);
    await new Promise((r) => setTimeout(r, 2));
  }
  if (sink === 0.5) console.log(sink); // never: keeps the work from being optimized away
  return percentiles(micros);
}

/** Each thread: append `bytes` and fdatasync, `rate` times a second (paced by blocking waits), for `durationS`; posts the latencies (ms). */
const SYNC_WORKER = `
const { workerData, parentPort } = require('node:worker_threads');
const { openSync, writeSync, fdatasyncSync, closeSync } = require('node:fs');
const { path, bytes, rate, durationS } = workerData;
const fd = openSync(path, 'w');
const buf = Buffer.alloc(bytes, 7);
const pause = new Int32Array(new SharedArrayBuffer(4));
const latencies = [];
const t0 = performance.now();
for (let n = 0, pos = 0; performance.now() - t0 < durationS * 1000; n++, pos += bytes) {
  const ahead = t0 + (n * 1000) / rate - performance.now();
  if (ahead > 0) Atomics.wait(pause, 0, 0, ahead);
  writeSync(fd, buf, 0, bytes, pos);
  const before = performance.now();
  fdatasyncSync(fd);
  latencies.push(performance.now() - before);
}
closeSync(fd);
parentPort.postMessage(latencies);
`;

/** fdatasync latency (ms) of `files` files in `dir`, each appended `bytes` and synced `rate` times a second by a thread of its own. */
export async function syncLatency(dir: string, files: number, bytes: number, rate: number, durationS: number): Promise<Percentiles> {
  const runs = Array.from({ length: files }, (_, i) =>
    nextMessage<number[]>(new Worker(SYNC_WORKER, { eval: true, workerData: { path: `${dir}/sync-floor-${i}`, bytes, rate, durationS } })),
  );
  return percentiles((await Promise.all(runs)).flat());
}

/** The worker's next message; rejects if it fails first. */
function nextMessage<T>(worker: Worker): Promise<T> {
  return new Promise((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
  });
}

/**
 * One thread per file. The primary's thread appends `bytes` and fdatasyncs,
 * `rate` times a second; after each sync it wakes the secondaries' threads,
 * and each appends what it has not yet written (one transaction's bytes per
 * primary sync) and fdatasyncs. Every file is written with zeros and synced
 * before the run, as the storage's fill is, so no append changes a size.
 */
const REPLICATED_SYNC_WORKER = `
const { workerData, parentPort } = require('node:worker_threads');
const { openSync, writeSync, fdatasyncSync, closeSync } = require('node:fs');
const { path, bytes, rate, durationS, primary, shared } = workerData;
// shared: [0] primary syncs done, [1] stop, [2] go; times: when each primary sync ended (ms).
const flags = new Int32Array(shared, 0, 3);
const times = new Float64Array(shared, 16);
const now = () => Number(process.hrtime.bigint()) / 1e6;
const fd = openSync(path, 'w');
const zeros = Buffer.alloc(1 << 20);
for (let pos = 0; pos < (times.length + 8) * bytes; pos += zeros.length) writeSync(fd, zeros, 0, zeros.length, pos);
fdatasyncSync(fd);
const buf = Buffer.alloc(bytes, 7);
const lags = [];
parentPort.postMessage('ready');
Atomics.wait(flags, 2, 0);
if (primary) {
  const pause = new Int32Array(new SharedArrayBuffer(4));
  const t0 = performance.now();
  for (let n = 0; performance.now() - t0 < durationS * 1000 && n < times.length; n++) {
    const ahead = t0 + (n * 1000) / rate - performance.now();
    if (ahead > 0) Atomics.wait(pause, 0, 0, ahead);
    writeSync(fd, buf, 0, bytes, n * bytes);
    fdatasyncSync(fd);
    times[n] = now();
    Atomics.store(flags, 0, n + 1);
    Atomics.notify(flags, 0);
  }
  Atomics.store(flags, 1, 1);
  Atomics.notify(flags, 0);
} else {
  let seen = 0;
  for (;;) {
    Atomics.wait(flags, 0, seen, 100);
    const upTo = Atomics.load(flags, 0);
    if (upTo === seen) {
      if (Atomics.load(flags, 1) === 1) break;
      continue;
    }
    for (let n = seen; n < upTo; n++) writeSync(fd, buf, 0, bytes, n * bytes);
    fdatasyncSync(fd);
    const at = now();
    for (let n = seen; n < upTo; n++) lags.push(at - times[n]);
    seen = upTo;
  }
}
closeSync(fd);
parentPort.postMessage(lags);
`;

/**
 * The disk's floor under durable replication's lag: a primary's file
 * appended and fdatasync'd `rate` times a second, and after each sync
 * `secondaries` files (each in a thread of its own, woken at once) appended
 * the same bytes and fdatasync'd. A secondary's lag here is from the end of
 * the primary's sync to the end of its own, as the live benchmark times a
 * commit: what is left when sending, applying and acknowledging cost
 * nothing, on this disk.
 */
export async function replicatedSyncLatency(dir: string, secondaries: number, bytes: number, rate: number, durationS: number): Promise<Percentiles> {
  const capacity = Math.ceil(rate * durationS) + 16;
  const shared = new SharedArrayBuffer(16 + 8 * capacity);
  const flags = new Int32Array(shared, 0, 3);
  const workers = Array.from(
    { length: 1 + secondaries },
    (_, i) => new Worker(REPLICATED_SYNC_WORKER, { eval: true, workerData: { path: `${dir}/replicated-sync-floor-${i}`, bytes, rate, durationS, primary: i === 0, shared } }),
  );
  await Promise.all(workers.map((w) => nextMessage<'ready'>(w)));
  const done = workers.map((w) => nextMessage<number[]>(w));
  Atomics.store(flags, 2, 1);
  Atomics.notify(flags, 2);
  const lags = await Promise.all(done);
  return percentiles(lags.slice(1).flat());
}
