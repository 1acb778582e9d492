// Shared by the benchmarks: command-line numbers, elapsed time, the
// collector setting of the processes under test, and the standard workload
// (transactions of N records updating a rolling set of objects, each store
// with the serial it last read).

import { fileURLToPath } from 'node:url';
import { DEFAULT_MARKING_START_PERCENT, tuneCollector } from '../src/node/collector.js';
import type { FileStorage } from '../src/storage/FileStorage.js';
import { Z64 } from '../src/storage/timestamp.js';

/** `--name N` from the command line, or `fallback`. */
export function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
}

/**
 * Tune this process's collector as `zrs serve` does, or give V8 back its own
 * rule; processes forked after this call follow it (useCollectorOfParent).
 */
export function useCollector(tuned: boolean): void {
  tuneCollector(tuned ? DEFAULT_MARKING_START_PERCENT : 0);
  process.env.ZRS_BENCH_COLLECTOR = tuned ? 'tuned' : 'default';
}

/** In a benchmark's child process: the collector setting of the parent when it forked this one. */
export function useCollectorOfParent(): void {
  useCollector(process.env.ZRS_BENCH_COLLECTOR === 'tuned');
}

/**
 * The path of the benchmark script `name` beside the module at `base` (its
 * import.meta.url), as this run has it: compiled (`.js`, `npm run bench:*`,
 * whose children then run without a loader, as deployed code does) or the
 * source under tsx (`.ts`, whose children inherit tsx's loader).
 */
export function siblingScript(base: string, name: string): string {
  return fileURLToPath(new URL(`./${name}${base.endsWith('.js') ? '.js' : '.ts'}`, base));
}

/** Seconds since a process.hrtime.bigint() reading. */
export function secondsSince(t0: bigint): number {
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

/** Commits transactions of `records` records of `recordBytes` bytes over `objects` objects. */
export class Workload {
  /** The objects the workload updates. */
  readonly oids: Buffer[];
  /** The serial each object was last committed with, by object number. */
  private readonly serials: Buffer[];
  private readonly payload: Buffer;
  private n = 0;

  constructor(
    private readonly fs: FileStorage,
    private readonly records = 10,
    recordBytes = 200,
    objects = 10_000,
  ) {
    this.payload = Buffer.alloc(recordBytes, 7);
    this.oids = Array.from({ length: objects }, () => fs.newOid());
    this.serials = this.oids.map(() => Z64);
  }

  /** Commit one transaction; resolves with its tid once tpcFinish does. */
  async commit(): Promise<Buffer> {
    const i = this.n++;
    const txn = { description: `txn ${i}` };
    await this.fs.tpcBegin(txn);
    const first = (i * this.records) % this.oids.length;
    for (let r = 0; r < this.records; r++) {
      const k = (first + r) % this.oids.length;
      this.fs.store(this.oids[k]!, this.serials[k]!, this.payload, txn);
    }
    await this.fs.tpcVote(txn);
    const tid = await this.fs.tpcFinish(txn);
    for (let r = 0; r < this.records; r++) this.serials[(first + r) % this.oids.length] = tid;
    return tid;
  }
}
