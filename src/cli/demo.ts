// `npm start`: a self-contained demonstration in a fresh temp directory. A
// primary and two secondaries (the second chained behind the first) over
// loopback; a workload commits for a few seconds while a status line per node
// shows last tid, lag and bytes; then the primary stops, the first secondary
// is reopened as the new primary, the chained secondary is pointed at it, and
// the workload goes on. At the end all files must hold the same transactions.

import { rmSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { firstValueFrom, filter, timeout } from 'rxjs';
import { Primary } from '../replication/primary.js';
import { Secondary } from '../replication/secondary.js';
import { jsonLogger } from '../replication/log.js';
import { tuneCollector } from '../node/collector.js';
import type { FileStorage } from '../storage/FileStorage.js';
import { tidToSeconds, tidToString, Z64 } from '../storage/timestamp.js';

interface Node {
  name: string;
  lastTid(): Buffer;
  size(): number;
}

const USAGE = 'usage: npm start [-- [--seconds N] [--verbose]]\n  --seconds N  commit for N seconds before the failover (default 3, at most 3600)\n  --verbose    the nodes\' log lines (JSON) on stderr\n';

/** The demo's options; a usage error (exit 2) for anything else. */
function demoOptions(args: readonly string[]): { seconds: number; verbose: boolean } {
  let seconds = 3;
  let verbose = false;
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--verbose') verbose = true;
    else if (a === '--help' || a === '-h') {
      process.stdout.write(USAGE);
      process.exit(0);
    } else if (a === '--seconds' || a.startsWith('--seconds=')) {
      const text = a === '--seconds' ? args[++i] : a.slice('--seconds='.length);
      if (text === undefined) return usageError('--seconds needs a value (N)');
      seconds = Number(text);
      if (text.trim() === '' || !Number.isFinite(seconds) || seconds <= 0 || seconds > 3600) return usageError(`--seconds must be a number of seconds above 0 and at most 3600, not ${JSON.stringify(text)}`);
    } else return usageError(`unknown argument ${JSON.stringify(a)}`);
  }
  return { seconds, verbose };
}

function usageError(message: string): never {
  process.stderr.write(`npm start: ${message}\n${USAGE}`);
  process.exit(2);
}

const { seconds, verbose } = demoOptions(process.argv.slice(2));
const tty = process.stdout.isTTY;

/** The node's lag behind the primary by tid times, or null while the node holds nothing. */
function lagMs(primary: Node, node: Node): number | null {
  const p = primary.lastTid();
  const s = node.lastTid();
  if (s.equals(Z64)) return p.equals(Z64) ? 0 : null;
  return Math.max(0, (tidToSeconds(p) - tidToSeconds(s)) * 1000);
}

function statusLines(primary: Node, nodes: Node[]): string[] {
  return nodes.map((n) => {
    const ms = lagMs(primary, n);
    const lag = n === primary ? 'primary' : ms === null ? 'catching up' : `lag ${ms.toFixed(1)} ms`;
    // An empty storage's zero tid reads as 1900: say what it is.
    const last = n.lastTid().equals(Z64) ? 'none yet'.padEnd(26) : tidToString(n.lastTid());
    return `  ${n.name.padEnd(12)} last ${last}  ${lag.padEnd(16)} ${(n.size() / 1024).toFixed(1).padStart(8)} KiB`;
  });
}

function show(lines: string[], previous: number): number {
  if (tty && previous) process.stdout.write(`\x1b[${previous}A`);
  for (const l of lines) process.stdout.write(`${tty ? '\x1b[2K' : ''}${l}\n`);
  return lines.length;
}

/** Commit small transactions for `ms`, updating a rolling set of objects. */
async function workload(fs: FileStorage, ms: number, onTick: () => void): Promise<number> {
  const oids: Buffer[] = [];
  const serials = new Map<string, Buffer>();
  const until = Date.now() + ms;
  let n = 0;
  let lastShown = 0;
  while (Date.now() < until) {
    const txn = { user: 'demo', description: `demo transaction ${n}` };
    await fs.tpcBegin(txn);
    const oid = oids.length < 50 ? fs.newOid() : oids[n % oids.length]!;
    fs.store(oid, serials.get(oid.toString('hex')) ?? Z64, Buffer.from(`state ${n} `.repeat(20)), txn);
    await fs.tpcVote(txn);
    const tid = await fs.tpcFinish(txn);
    if (serials.size < 50 && !serials.has(oid.toString('hex'))) oids.push(oid);
    serials.set(oid.toString('hex'), tid);
    n++;
    if (Date.now() - lastShown > 200) {
      lastShown = Date.now();
      onTick();
    }
  }
  return n;
}

async function waitFor(s: Secondary, tid: Buffer): Promise<void> {
  if (Buffer.compare(s.storage.lastTransaction(), tid) >= 0) return;
  await firstValueFrom(s.applied$.pipe(filter((c) => Buffer.compare(c.tid, tid) >= 0), timeout(30_000)));
}

async function sameTransactions(a: { iterator(): AsyncGenerator<{ tid: Buffer; records: unknown[] }> }, b: typeof a): Promise<number> {
  const ta: string[] = [];
  for await (const t of a.iterator()) ta.push(`${t.tid.toString('hex')}:${t.records.length}`);
  const tb: string[] = [];
  for await (const t of b.iterator()) tb.push(`${t.tid.toString('hex')}:${t.records.length}`);
  if (ta.join() !== tb.join()) throw new Error(`histories differ: ${ta.length} vs ${tb.length} transactions`);
  return ta.length;
}

async function main(): Promise<void> {
  tuneCollector(); // as zrs serve does: the demo's nodes run in this process
  const dir = await mkdtemp(join(tmpdir(), 'zrs-demo-'));
  const log = verbose ? jsonLogger('demo') : undefined;
  console.log(`ZRS demo in ${dir}: primary -> secondary-1 -> secondary-2 over loopback (unix sockets and TCP)`);
  // Every node runs in this process and the files are only a demonstration: on Ctrl-C, remove them and go.
  const interrupted = (signal: NodeJS.Signals): void => {
    rmSync(dir, { recursive: true, force: true });
    console.log(`\n${signal}: stopped; ${dir} removed`);
    process.exit(signal === 'SIGINT' ? 130 : 143);
  };
  process.once('SIGINT', interrupted);
  process.once('SIGTERM', interrupted);
  try {
    let primary = await Primary.open({ path: join(dir, 'primary.fs'), replicateTo: '127.0.0.1:0', log });
    const s1 = await Secondary.open({
      path: join(dir, 'secondary-1.fs'),
      replicateFrom: primary.address,
      replicateTo: join(dir, 's1.sock'),
      reconnect: { initialMs: 20, maxMs: 500 },
      log,
    });
    const s2 = await Secondary.open({
      path: join(dir, 'secondary-2.fs'),
      replicateFrom: join(dir, 's1.sock'),
      reconnect: { initialMs: 20, maxMs: 500 },
      log,
    });
    const pNode: Node = { name: 'primary', lastTid: () => primary.storage.lastTransaction(), size: () => primary.storage.getSize() };
    const n1: Node = { name: 'secondary-1', lastTid: () => s1.storage.lastTransaction(), size: () => s1.storage.getSize() };
    const n2: Node = { name: 'secondary-2', lastTid: () => s2.storage.lastTransaction(), size: () => s2.storage.getSize() };
    let shown = 0;

    console.log(`\n1. committing on the primary for ${seconds} s`);
    const t0 = Date.now();
    const first = await workload(primary.storage, seconds * 1000, () => (shown = show(statusLines(pNode, [pNode, n1, n2]), shown)));
    const rate = first / ((Date.now() - t0) / 1000);
    await waitFor(s2, primary.storage.lastTransaction());
    shown = show(statusLines(pNode, [pNode, n1, n2]), shown);
    console.log(`   ${first} transactions committed (${rate.toFixed(0)}/s, fsync on); both secondaries caught up`);

    console.log('\n2. failover: the primary stops; secondary-1 becomes the primary; secondary-2 follows it');
    const lastBefore = primary.storage.lastTransaction();
    await primary.close();
    await s1.close();
    primary = await Primary.open({ path: join(dir, 'secondary-1.fs'), replicateTo: join(dir, 'new-primary.sock'), log });
    s2.setReplicationAddress(join(dir, 'new-primary.sock'));
    console.log(`   new primary starts at ${tidToString(lastBefore)} (nothing lost: ${primary.storage.lastTransaction().equals(lastBefore)})`);
    shown = 0;
    const second = await workload(primary.storage, Math.max(1000, (seconds * 1000) / 3), () => (shown = show(statusLines(pNode, [pNode, n2]), shown)));
    await waitFor(s2, primary.storage.lastTransaction());
    shown = show(statusLines(pNode, [pNode, n2]), shown);
    console.log(`   ${second} more transactions; secondary-2 caught up from the new primary`);

    const total = await sameTransactions(primary.storage, s2.storage);
    await s2.close();
    await primary.close();
    console.log(`\nsummary: ${first + second} transactions committed, ${total} in every remaining file, histories identical`);
  } finally {
    process.off('SIGINT', interrupted);
    process.off('SIGTERM', interrupted);
    await rm(dir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  // Nodes a failed step left open (listeners, reconnect timers) would keep the process alive.
  process.exit(1);
});
