// Group commit: many transactions written back to back share one fdatasync.
// A transaction is reported committed (tpcFinish resolves, commits$ emits)
// only once a sync that started after its bytes were written has finished.
//
// When to sync: a committer may ask for the sync at the end of the current
// turn of the event loop (a setImmediate callback, which runs after every
// I/O callback of the turn). Every transaction written during the turn,
// by committers queued one behind another or by requests that arrived
// together, then shares one sync, done in this thread when the disk can
// (no thread-pool round trip), otherwise through the thread pool. Or it may
// ask for an asynchronous sync at once (what a Secondary does: it pipelines
// its appends, and syncs overlap with receiving the next ones).
//
// Up to two asynchronous syncs run at once. Bytes written while one sync
// runs start a second straight away instead of waiting for the first to
// end: a transaction then waits for one sync, not for the rest of an
// earlier one and then its own. Each sync covers what was written before it
// started, so syncs may end in any order. The two never share an open file
// description: Linux reports a failed write-back to each open file once,
// so of two fdatasync calls on one description only one would see it, and
// the other's success would be taken for proof. The second sync goes
// through a second descriptor of the same file, opened when first needed.

import type { StorageDisk } from './disk.js';

/** One asynchronous sync that may run: its own open file description (null until first needed), and whether a sync uses it. */
interface SyncSlot {
  fd: number | null;
  busy: boolean;
}

interface Waiter {
  end: number;
  resolve: () => void;
  reject: (err: unknown) => void;
}

export class GroupSync {
  /** Everything before this offset is durable. */
  private durableEnd: number;
  /** One per asynchronous sync that may run at once, each with its own open file description. */
  private readonly slots: [SyncSlot, SyncSlot];
  /** The asynchronous syncs running (they never reject). */
  private readonly running = new Set<Promise<void>>();
  /** What the newest running sync will make durable: the written end when it started. */
  private coveredEnd: number;
  /** The largest end a waiter waits for (stale only once no one waits). */
  private highestWaited = 0;
  /** A sync failed: later ones prove nothing, and every wait fails with this. */
  private failure: { err: unknown } | null = null;
  /** Waiters for durability, in no particular order. */
  private waiters: Waiter[] = [];
  private turnEndScheduled = false;

  constructor(
    private readonly fd: number,
    initialEnd: number,
    /** End of the transactions whose final status is written (never shrinks). */
    private readonly writtenEnd: () => number,
    private readonly disk: StorageDisk,
    /** Opens (and closes) another descriptor of the same file, for a second sync at once; without it syncs run one at a time. */
    private readonly second?: { open(): number; close(fd: number): void },
  ) {
    this.durableEnd = initialEnd;
    this.coveredEnd = initialEnd;
    this.slots = [
      { fd, busy: false },
      { fd: null, busy: false },
    ];
  }

  get durable(): number {
    return this.durableEnd;
  }

  /**
   * Resolve once every byte before `end` is on disk. `atTurnEnd`: no sync
   * starts for it before the end of this turn of the event loop (then one
   * covers everything written during the turn); otherwise an asynchronous
   * one starts at once unless one is running already.
   */
  waitDurable(end: number, atTurnEnd = false): Promise<void> {
    if (this.durableEnd >= end) return Promise.resolve();
    if (this.failure) return Promise.reject(this.failure.err);
    return new Promise<void>((resolve, reject) => {
      this.waiters.push({ end, resolve, reject });
      if (end > this.highestWaited) this.highestWaited = end;
      if (atTurnEnd) this.scheduleTurnEndSync();
      else this.kick();
    });
  }

  private scheduleTurnEndSync(): void {
    if (this.turnEndScheduled) return;
    this.turnEndScheduled = true;
    setImmediate(() => {
      this.turnEndScheduled = false;
      if (this.waiters.length === 0) return;
      // Beside a running asynchronous sync, an in-thread one would wait for it: start another beside it.
      if (this.running.size > 0 || !this.syncInline()) this.kick();
    });
  }

  /** Start an asynchronous sync when someone waits for bytes no running sync covers, and one more may run. */
  private kick(): void {
    if (this.failure || this.waiters.length === 0) return;
    if (!(this.highestWaited > Math.max(this.durableEnd, this.coveredEnd))) return;
    const slot = this.freeSlot();
    if (slot === null) return;
    const sync = this.runSync(slot);
    this.running.add(sync);
    void sync.then(() => this.running.delete(sync));
  }

  /** A slot no sync uses, its descriptor open; null when both are busy (or a second cannot be had). */
  private freeSlot(): SyncSlot | null {
    const [first, second] = this.slots;
    if (!first.busy) return first;
    if (second.busy || this.second === undefined) return null;
    if (second.fd === null) {
      try {
        second.fd = this.second.open();
      } catch {
        return null; // one sync at a time, then
      }
    }
    return second;
  }

  private async runSync(slot: SyncSlot): Promise<void> {
    const target = this.writtenEnd();
    this.coveredEnd = Math.max(this.coveredEnd, target);
    slot.busy = true;
    try {
      await this.disk.datasync(slot.fd!);
    } catch (err) {
      slot.busy = false;
      this.failAll(err);
      return;
    }
    slot.busy = false;
    if (this.failure) return;
    this.advance(target);
    // Bytes written while that sync ran still need one.
    this.kick();
  }

  /**
   * Wait until no asynchronous sync runs, then close the second descriptor:
   * call before closing the file (a sync still running would run on a closed
   * or reused descriptor). Waiters still waiting stay waiting.
   */
  async close(): Promise<void> {
    while (this.running.size > 0) await Promise.all([...this.running]);
    const second = this.slots[1];
    if (second.fd !== null) this.second?.close(second.fd);
    second.fd = null;
  }

  /** A sync failed; the storage refuses writes from now on, so every waiter fails. */
  private failAll(err: unknown): void {
    this.failure ??= { err };
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w.reject(err);
  }

  /** Everything before `target` is durable: release the waiters it covers. */
  private advance(target: number): void {
    if (target > this.durableEnd) this.durableEnd = target;
    const durable = this.durableEnd;
    if (this.waiters.length === 0) return;
    const still: Waiter[] = [];
    for (const w of this.waiters) {
      if (w.end <= durable) w.resolve();
      else still.push(w);
    }
    this.waiters = still;
  }

  /**
   * Sync in this thread, releasing the waiters (or, if the sync fails,
   * failing them all); false when the disk has no in-thread sync.
   */
  private syncInline(): boolean {
    const sync = this.disk.datasyncSync;
    if (sync === undefined) return false;
    const target = this.writtenEnd();
    try {
      sync.call(this.disk, this.fd);
    } catch (err) {
      this.failAll(err);
      return true;
    }
    this.advance(target);
    return true;
  }

  /** Without fsync, bytes count as durable as soon as they are written. */
  markWritten(end: number): void {
    if (end > this.durableEnd) this.durableEnd = end;
  }
}
