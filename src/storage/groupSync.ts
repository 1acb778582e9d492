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

import type { StorageDisk } from './disk.js';

interface Waiter {
  end: number;
  resolve: () => void;
  reject: (err: unknown) => void;
}

export class GroupSync {
  /** Everything before this offset is durable. */
  private durableEnd: number;
  private inFlight: Promise<void> | null = null;
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
    return new Promise<void>((resolve, reject) => {
      this.waiters.push({ end, resolve, reject });
      if (atTurnEnd) this.scheduleTurnEndSync();
      else this.kick();
    });
  }

  private scheduleTurnEndSync(): void {
    if (this.turnEndScheduled) return;
    this.turnEndScheduled = true;
    setImmediate(() => {
      this.turnEndScheduled = false;
      // A running asynchronous sync starts the next one when it ends.
      if (this.waiters.length === 0 || this.inFlight !== null) return;
      if (!this.syncInline()) this.kick();
    });
  }

  /** Start an asynchronous sync when someone waits and none is running. */
  private kick(): void {
    if (this.inFlight === null && this.waiters.length > 0) this.inFlight = this.runSync();
  }

  private async runSync(): Promise<void> {
    const target = this.writtenEnd();
    try {
      await this.disk.datasync(this.fd);
    } catch (err) {
      this.inFlight = null;
      this.failAll(err);
      return;
    }
    this.inFlight = null;
    this.advance(target);
    // Bytes written while that sync ran still need one.
    this.kick();
  }

  /** A sync failed; the storage refuses writes from now on, so every waiter fails. */
  private failAll(err: unknown): void {
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
