// Benchmark helper run as a child process: a primary serving the data file
// given, so its memory can be measured on its own. Reports over IPC:
// 'listening' with its address, then 'closed' with its peak RSS after a
// 'close' request.
//
//   fork('bench/primary.child.ts', [dataFile])

import { formatAddress } from '../src/replication/address.js';
import { Primary } from '../src/replication/primary.js';
import { useCollectorOfParent } from './workload.js';

useCollectorOfParent();

export type PrimaryChildReport = { type: 'listening'; address: string } | { type: 'closed'; peakRss: number };

const send = (m: PrimaryChildReport): void => void process.send!(m);
let peakRss = process.memoryUsage.rss();
const rss = setInterval(() => (peakRss = Math.max(peakRss, process.memoryUsage.rss())), 50);
const primary = await Primary.open({ path: process.argv[2]!, replicateTo: '127.0.0.1:0', auditPath: null });
send({ type: 'listening', address: formatAddress(primary.address) });
process.on('message', (m: { type: string }) => {
  if (m.type !== 'close') return;
  void primary.close().then(() => {
    clearInterval(rss);
    send({ type: 'closed', peakRss });
    process.disconnect();
  });
});
