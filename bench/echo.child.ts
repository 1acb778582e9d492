// Benchmark helper run as a child process: the live-lag baseline. Opens N
// plain TCP connections to the address given and notes when each 8-byte
// message (a sequence number) arrives, on the clock the parent reads
// (performance.timeOrigin + now()). Nothing is decoded, stored or synced:
// what is left is the sockets and the two processes being scheduled.
// Reports to the parent over IPC: 'started', then, once the parent has
// sent 'close' with the number of messages it sent and all have arrived,
// 'arrivals' (per connection, the arrival time of every message, by
// sequence number), and exits.
//
//   fork('bench/echo.child.ts', [port, count])

import { connect } from 'node:net';

export type EchoReport = { type: 'started' } | { type: 'arrivals'; atMs: number[][] };

const [portArg, countArg] = process.argv.slice(2);
/** `then`: once the message is written (a large one still being written when the channel closes would be lost). */
const send = (m: EchoReport, then: () => void = () => {}): void => void process.send!(m, undefined, undefined, then);
const nowMs = (): number => performance.timeOrigin + performance.now();

const arrivals: number[][] = [];
const sockets = Array.from({ length: Number(countArg) }, (_, i) => {
  arrivals.push([]);
  let pending: Buffer = Buffer.alloc(0);
  const socket = connect(Number(portArg), '127.0.0.1');
  socket.setNoDelay(true);
  socket.on('data', (chunk: Buffer) => {
    const at = nowMs();
    pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
    let off = 0;
    for (; off + 8 <= pending.length; off += 8) arrivals[i]![Number(pending.readBigUInt64BE(off))] = at;
    pending = pending.subarray(off);
    finishIfDone();
  });
  return socket;
});

/** Messages each connection must have before the report goes out (set by 'close'). */
let expected: number | null = null;
function finishIfDone(): void {
  if (expected === null || arrivals.some((a) => a.length < expected!)) return;
  expected = null;
  for (const s of sockets) s.destroy();
  send({ type: 'arrivals', atMs: arrivals }, () => process.disconnect());
}

process.on('message', (m: { type: string; sent?: number }) => {
  if (m.type !== 'close') return;
  expected = m.sent ?? 0;
  finishIfDone();
});
send({ type: 'started' });
