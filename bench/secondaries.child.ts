// Benchmark helper run as a child process: N secondaries replicating from
// the address given, so the primary under test has its own process (as in a
// deployment). Reports to the parent over IPC: 'started' once loaded; on an
// 'open' request it opens the secondaries and says 'ready', then reports
// each applied transaction with the time it became
// durable here (performance.timeOrigin + now(): the same clock the parent
// reads), and 'closed' after a 'close' request.
//
//   fork('bench/secondaries.child.ts', [address, count, dir, fsync, report])   report: 'every' (default) or 'newest'

import { join } from 'node:path';
import { Secondary } from '../src/replication/secondary.js';

export type ChildReport = { type: 'started' } | { type: 'ready' } | { type: 'applied'; tids: string[]; atMs: number[] } | { type: 'closed'; peakRss: number };

const [address, countArg, dir, fsyncArg, reportArg] = process.argv.slice(2);
const send = (m: ChildReport): void => void process.send!(m);
const nowMs = (): number => performance.timeOrigin + performance.now();

let peakRss = 0;
const rss = setInterval(() => (peakRss = Math.max(peakRss, process.memoryUsage().rss)), 50);
let secondaries: Secondary[] = [];
// Applied transactions go to the parent in small batches (one IPC message per
// tick, not per transaction). With 'newest', only each secondary's newest one
// of a batch: a catch-up needs no more, and the reports then cost the
// secondaries nothing that scales with the transactions.
const newestOnly = reportArg === 'newest';
let batch: Array<{ tid: Buffer; atMs: number }> = [];
const newest = new Map<number, { tid: Buffer; atMs: number }>();
let scheduled = false;
const report = (secondary: number, tid: Buffer): void => {
  const entry = { tid, atMs: nowMs() };
  if (newestOnly) newest.set(secondary, entry);
  else batch.push(entry);
  if (scheduled) return;
  scheduled = true;
  setImmediate(() => {
    scheduled = false;
    const sent = newestOnly ? [...newest.values()] : batch;
    batch = [];
    newest.clear();
    send({ type: 'applied', tids: sent.map((e) => e.tid.toString('hex')), atMs: sent.map((e) => e.atMs) });
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
      secondaries.forEach((s, i) => s.applied$.subscribe((c) => report(i, c.tid)));
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
