// Group commit: many transactions written back to back share one fdatasync.
// A transaction is reported committed (tpcFinish resolves, commits$ emits)
// only once a sync that started after its bytes were written has finished.

import type { StorageDisk } from './disk.js';

export class GroupSync {
  /** Everything before this offset is durable. */
  private durableEnd: number;
  private inFlight: Promise<void> | null = null;

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

  /** Resolve once every byte before `end` is on disk. */
  async waitDurable(end: number): Promise<void> {
    while (this.durableEnd < end) {
      if (this.inFlight === null) this.inFlight = this.runSync();
      await this.inFlight;
    }
  }

  private async runSync(): Promise<void> {
    const target = this.writtenEnd();
    try {
      await this.disk.datasync(this.fd);
      if (target > this.durableEnd) this.durableEnd = target;
    } finally {
      this.inFlight = null;
    }
  }

  /**
   * Sync now, in this thread, when no asynchronous sync is running and the
   * disk can; returns whether it did (everything written is then durable).
   */
  syncInline(): boolean {
    const sync = this.disk.datasyncSync;
    if (this.inFlight !== null || sync === undefined) return false;
    const target = this.writtenEnd();
    sync.call(this.disk, this.fd);
    if (target > this.durableEnd) this.durableEnd = target;
    return true;
  }

  /** Without fsync, bytes count as durable as soon as they are written. */
  markWritten(end: number): void {
    if (end > this.durableEnd) this.durableEnd = end;
  }
}
