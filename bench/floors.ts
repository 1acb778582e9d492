// What this machine itself allows, measured beside the live-lag figures:
//  - how steady its CPU is: a fixed computation run every 2 ms on an
//    otherwise idle machine, its CPU time per run (on a shared VM the same
//    instructions take several times longer in some stretches, and every
//    process on it slows down together);
//  - how fast its disk syncs under the live benchmark's load: one file per
//    node (a primary and three secondaries), each appended a transaction's
//    bytes and fdatasync'd 1000 times a second, each in a thread of its
//    own, the sync's latency.

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
  const runs = Array.from(
    { length: files },
    (_, i) =>
      new Promise<number[]>((resolve, reject) => {
        const worker = new Worker(SYNC_WORKER, { eval: true, workerData: { path: `${dir}/sync-floor-${i}`, bytes, rate, durationS } });
        worker.once('message', resolve);
        worker.once('error', reject);
      }),
  );
  return percentiles((await Promise.all(runs)).flat());
}
