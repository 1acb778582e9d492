// Benchmark helper run as a child process: a neighbour that keeps a share of
// one CPU busy with work like a secondary's (allocating buffers, hashing
// them, keeping some objects alive for a while), and no replication. The
// fan-out figure runs the primary with no secondary beside it, busy as the
// secondaries' process was, to tell what serving them costs the primary from
// what sharing this machine with their process costs it.
// Reports over IPC: 'started'; after a 'close' request, 'closed' with the
// CPU time it used (µs), and exits.
//
//   fork('bench/neighbour.child.ts', [share])   share: of one CPU, 0 to 1

import { createHash } from 'node:crypto';

export type NeighbourReport = { type: 'started' } | { type: 'closed'; cpuMicros: number };

const share = Math.min(1, Math.max(0, Number(process.argv[2])));
const SLOT_MS = 10;
const send = (m: NeighbourReport, then: () => void = () => {}): void => void process.send!(m, undefined, undefined, then);
const cpu0 = process.cpuUsage();
/** Recent work kept alive, as a secondary keeps recent transactions and links. */
const recent: Array<{ digest: Buffer; bytes: Buffer }> = [];
let n = 0;
let timer: NodeJS.Timeout | null = null;

/** Busy for `share` of each slot, idle for the rest. */
function slot(): void {
  const start = performance.now();
  while (performance.now() - start < share * SLOT_MS) {
    const bytes = Buffer.allocUnsafe(2500).fill(n++ & 0xff);
    recent.push({ digest: createHash('sha256').update(bytes).digest(), bytes: bytes.subarray(0, 64) });
    if (recent.length > 20_000) recent.splice(0, 10_000);
  }
  timer = setTimeout(slot, Math.max(0, SLOT_MS - (performance.now() - start)));
}

process.on('message', (m: { type: string }) => {
  if (m.type !== 'close') return;
  if (timer !== null) clearTimeout(timer);
  const used = process.cpuUsage(cpu0);
  send({ type: 'closed', cpuMicros: used.user + used.system }, () => process.disconnect());
});
send({ type: 'started' });
slot();
