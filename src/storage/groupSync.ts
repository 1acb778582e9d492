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
// started, so syncs may end in any order.

import type { StorageDisk } from './disk.js';

/** Asynchronous syncs of one file that may run at once. */
const MAX_SYNCS_IN_FLIGHT = 2;

interface Waiter {
  end: number;
  resolve: () => void;
  reject: (err: unknown) => void;
}

export class GroupSync {
  /** Everything before this offset is durable. */
  private durableEnd: number;
  /** Asynchronous syncs running. */
  private inFlight = 0;
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
  ) {
    this.durableEnd = initialEnd;
    this.coveredEnd = initialEnd;
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
      if (this.inFlight > 0 || !this.syncInline()) this.kick();
    });
  }

  /** Start an asynchronous sync when someone waits for bytes no running sync covers, and one more may run. */
  private kick(): void {
    if (this.failure || this.inFlight >= MAX_SYNCS_IN_FLIGHT || this.waiters.length === 0) return;
    if (this.highestWaited > Math.max(this.durableEnd, this.coveredEnd)) void this.runSync();
  }

  private async runSync(): Promise<void> {
    const target = this.writtenEnd();
    this.coveredEnd = Math.max(this.coveredEnd, target);
    this.inFlight++;
    try {
      await this.disk.datasync(this.fd);
    } catch (err) {
      this.inFlight--;
      this.failAll(err);
      return;
    }
    this.inFlight--;
    if (this.failure) return;
    this.advance(target);
    // Bytes written while that sync ran still need one.
    this.kick();
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
