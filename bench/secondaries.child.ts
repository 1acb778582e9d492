// Benchmark helper run as a child process: N secondaries replicating from
// the address given, so the primary under test has its own process (as in a
// deployment). Reports to the parent over IPC: 'started' once loaded; on an
// 'open' request it opens the secondaries and says 'ready'; on a 'waitFor'
// request, 'reached' once that many secondaries applied that transaction or
// a later one (checked at the end of each turn of the loop that applied
// something, and only while a request waits: progress costs neither process
// an IPC message per transaction while lag is measured); after a 'close'
// request, 'closed' with the peak RSS and the time each transaction became
// durable on each secondary (performance.timeOrigin + now(): the same clock
// the parent reads), or with report 'newest' only each secondary's last one,
// timed at the end of the turn that applied it (no clock read per
// transaction). Those times are kept here until the end. With report
// 'every' the report also holds every sync of the secondaries' files (data
// and hash chain): when it started, on the same clock, and how long it took
// as this process's event loop saw it. On a 'cpu'
// request, 'cpu' with the CPU time it used so far (µs). On a
// 'closeSecondaries' request it closes the secondaries (their files stay)
// and says 'secondariesClosed'; a later 'open' opens new ones into new
// files, in a process whose code is already warm.
//
//   fork('bench/secondaries.child.ts', [address, count, dir, fsync, report])   report: 'every' (default) or 'newest'

import { join } from 'node:path';
import { Secondary } from '../src/replication/secondary.js';
import { nodeDisk, type StorageDisk } from '../src/storage/disk.js';
import { TidTimes } from './tidTimes.js';
import { useCollectorOfParent } from './workload.js';

useCollectorOfParent();

export type ChildReport =
  | { type: 'started' }
  | { type: 'ready' }
  | { type: 'reached'; tid: string }
  | { type: 'cpu'; micros: number }
  | { type: 'secondariesClosed' }
  | { type: 'closed'; peakRss: number; applied: { tids: string[]; atMs: number[] }; syncs: SyncTimes };

/** Syncs, each as its start (ms, shared clock) and duration (ms), side by side. */
export interface SyncTimes {
  atMs: number[];
  ms: number[];
}

const [address, countArg, dir, fsyncArg, reportArg] = process.argv.slice(2);
const send = (m: ChildReport, then: () => void = () => {}): void => void process.send!(m, undefined, undefined, then);
const nowMs = (): number => performance.timeOrigin + performance.now();

let peakRss = 0;
const rss = setInterval(() => (peakRss = Math.max(peakRss, process.memoryUsage.rss())), 50);
let secondaries: Secondary[] = [];
/** With 'every': each applied transaction of each secondary, with its time, in order. */
const everyApplied = new TidTimes();
const keepEvery = reportArg !== 'newest';
const syncs: SyncTimes = { atMs: [], ms: [] };
/** With 'every': the disk of node:fs, each sync timed into `syncs`. */
const timedDisk: StorageDisk | undefined = keepEvery
  ? {
      ...nodeDisk,
      async datasync(fd) {
        const at = nowMs();
        await nodeDisk.datasync(fd);
        syncs.atMs.push(at);
        syncs.ms.push(nowMs() - at);
      },
    }
  : undefined;
/** With 'newest': each secondary's last applied transaction, with its time. */
const lastApplied = new Map<number, { tid: Buffer; atMs: number }>();
/** Each secondary's newest applied transaction (hex: tids of equal length compare as their order). */
const newest = new Map<number, string>();
/** Secondaries whose newest changed in this turn of the loop. */
const changed = new Map<number, Buffer>();
/** The parent's pending request: `count` secondaries at `tid` or later. */
let waiting: { tid: string; count: number } | null = null;
let scheduled = false;
const checkWaiting = (): void => {
  if (waiting === null) return;
  let at = 0;
  for (const tid of newest.values()) if (tid >= waiting.tid) at++;
  if (at < waiting.count) return;
  send({ type: 'reached', tid: waiting.tid });
  waiting = null;
};
const report = (secondary: number, tid: Buffer): void => {
  if (keepEvery) everyApplied.push(tid, nowMs());
  changed.set(secondary, tid);
  if (scheduled) return;
  scheduled = true;
  setImmediate(() => {
    scheduled = false;
    const atMs = nowMs();
    for (const [i, t] of changed) {
      newest.set(i, t.toString('hex'));
      if (!keepEvery) lastApplied.set(i, { tid: Buffer.from(t), atMs });
    }
    changed.clear();
    checkWaiting();
  });
};
/** How many times the secondaries were opened: each time into files of their own. */
let opened = 0;
const closeAll = async (): Promise<void> => {
  const closing = secondaries;
  secondaries = [];
  await Promise.all(closing.map((s) => s.close()));
};

process.on('message', (m: { type: string; tid?: string; count?: number }) => {
  if (m.type === 'waitFor') {
    waiting = { tid: m.tid!, count: m.count! };
    checkWaiting();
  } else if (m.type === 'cpu') {
    const used = process.cpuUsage();
    send({ type: 'cpu', micros: used.user + used.system });
  } else if (m.type === 'open') {
    void Promise.all(
      Array.from({ length: Number(countArg) }, (_, i) =>
        Secondary.open({ path: join(dir!, `s${i}${opened ? `-${opened}` : ''}.fs`), replicateFrom: address!, fsync: fsyncArg === 'fsync', auditPath: null, disk: timedDisk }),
      ),
    ).then((opening) => {
      opened++;
      secondaries = opening;
      secondaries.forEach((s, i) => s.applied$.subscribe((c) => report(i, c.tid)));
      send({ type: 'ready' });
    });
  } else if (m.type === 'closeSecondaries') {
    void closeAll().then(() => {
      lastApplied.clear();
      newest.clear();
      send({ type: 'secondariesClosed' });
    });
  } else if (m.type === 'close') {
    void closeAll().then(() => {
      clearInterval(rss);
      // A large report is still being written when send() returns: disconnect once it went out.
      const last = [...lastApplied.values()];
      const applied = keepEvery ? everyApplied.lists() : { tids: last.map((e) => e.tid.toString('hex')), atMs: last.map((e) => e.atMs) };
      send({ type: 'closed', peakRss, applied, syncs }, () => process.disconnect());
    });
  }
});
send({ type: 'started' });
