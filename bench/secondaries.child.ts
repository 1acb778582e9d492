// Benchmark helper run as a child process: N secondaries replicating from
// the address given, so the primary under test has its own process (as in a
// deployment). Reports to the parent over IPC: 'started' once loaded; on an
// 'open' request it opens the secondaries and says 'ready', then reports
// each applied transaction with the time it became
// durable here (performance.timeOrigin + now(): the same clock the parent
// reads), and 'closed' after a 'close' request.
//
//   fork('bench/secondaries.child.ts', [address, count, dir, fsync])

import { join } from 'node:path';
import { Secondary } from '../src/replication/secondary.js';

export type ChildReport = { type: 'started' } | { type: 'ready' } | { type: 'applied'; tids: string[]; atMs: number[] } | { type: 'closed'; peakRss: number };

const [address, countArg, dir, fsyncArg] = process.argv.slice(2);
const send = (m: ChildReport): void => void process.send!(m);
const nowMs = (): number => performance.timeOrigin + performance.now();

let peakRss = 0;
const rss = setInterval(() => (peakRss = Math.max(peakRss, process.memoryUsage().rss)), 50);
let secondaries: Secondary[] = [];
// Applied transactions go to the parent in small batches (one IPC message per tick, not per transaction).
let tids: string[] = [];
let atMs: number[] = [];
let scheduled = false;
const report = (tid: Buffer): void => {
  tids.push(tid.toString('hex'));
  atMs.push(nowMs());
  if (scheduled) return;
  scheduled = true;
  setImmediate(() => {
    scheduled = false;
    send({ type: 'applied', tids, atMs });
    tids = [];
    atMs = [];
  });
};

process.on('message', (m: { type: string }) => {
  if (m.type === 'open') {
    void Promise.all(
      Array.from({ length: Number(countArg) }, (_, i) =>
        Secondary.open({ path: join(dir!, `s${i}.fs`), replicateFrom: address!, fsync: fsyncArg === 'fsync', auditPath: null }),
      ),
    ).then((opened) => {
      secondaries = opened;
      for (const s of secondaries) s.applied$.subscribe((c) => report(c.tid));
      send({ type: 'ready' });
    });
  } else if (m.type === 'close') {
    void Promise.all(secondaries.map((s) => s.close())).then(() => {
      clearInterval(rss);
      send({ type: 'closed', peakRss });
      process.disconnect();
    });
  }
});
send({ type: 'started' });
