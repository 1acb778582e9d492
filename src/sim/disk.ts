// A simulated disk per node, behind FileStorage's StorageDisk port. Bytes go
// to the real file (the harness needs them for crash images); what is
// simulated is time and space: 'slow' makes every datasync take a number of
// virtual ms on the VirtualClock, 'full' fails every write that would grow
// the file with ENOSPC (after writing part of it, as a real disk that fills
// up mid-write does), and 'ok' is neither. A failed write is recoverable:
// datasync never fails here, so the storage never goes into its fatal
// "fsync failed" state. The mode belongs to the node and survives restarts;
// each incarnation gets its own view, which a crash kills.

import { fstatSync } from 'node:fs';
import { nodeDisk, type StorageDisk } from '../storage/disk.js';
import type { VirtualClock } from './clock.js';

export type DiskMode = 'ok' | 'slow' | 'full';

/** The error a full simulated disk raises, shaped like Node's own (code 'ENOSPC'). */
export class SimDiskFullError extends Error {
  override name = 'SimDiskFullError';
  readonly code = 'ENOSPC';
  readonly syscall = 'write';
  constructor(readonly bytes: number, readonly position: number) {
    super(`ENOSPC: no space left on device, write (${bytes} bytes at ${position})`);
  }
}

/** One incarnation's view of its node's disk: a StorageDisk, plus the crash. */
export interface SimDiskView extends StorageDisk {
  /**
   * The node finished opening: from now on datasyncs take the disk's time.
   * (While a node opens, syncs are immediate: the harness awaits the open
   * inside one operation, when virtual time cannot move.)
   */
  opened(): void;
  /** The process died: every pending datasync returns now, and later ones at once. */
  kill(): void;
  /**
   * Where the first byte written to the file at `fd` that no completed
   * datasync covers lies, or null when every write to it is synced. Only
   * what lies below it is durable, whatever the storage says: a crash image
   * is cut from here.
   */
  unsyncedFrom(fd: number): number | null;
}

interface PendingSync {
  resolvers: Array<() => void>;
  timer: unknown;
}

/**
 * A node's disk.
 *
 * @example
 * const disk = new SimDisk(clock, 'p', (text) => trace('p', text));
 * const view = disk.view();
 * const storage = await FileStorage.open(path, { create: true, disk: view });
 * view.opened();
 * disk.setMode('slow', 500); // each datasync now takes 500 virtual ms
 */
export class SimDisk {
  private modeNow: DiskMode = 'ok';
  private syncDelayMs = 0;

  constructor(
    private readonly clock: VirtualClock,
    /** The node's name: the tie-break key of its sync timers. */
    private readonly node: string,
    private readonly trace: (text: string) => void = () => undefined,
  ) {}

  get mode(): DiskMode {
    return this.modeNow;
  }

  /** Virtual ms each datasync takes while the disk is 'slow'. */
  get slowMs(): number {
    return this.syncDelayMs;
  }

  /** Change the disk's behaviour; syncs already under way keep their end time. */
  setMode(mode: DiskMode, slowMs = 500): void {
    this.modeNow = mode;
    this.syncDelayMs = mode === 'slow' ? Math.max(1, slowMs) : 0;
  }

  /** A StorageDisk for one incarnation of the node. */
  view(): SimDiskView {
    const disk = this;
    let opening = true;
    let dead = false;
    // Writes no completed datasync covers yet (a sync covers the writes made before it started).
    let writes = 0;
    let unsynced: Array<{ seq: number; ino: number; pos: number }> = [];
    const synced = (ino: number, upTo: number): void => {
      unsynced = unsynced.filter((w) => w.ino !== ino || w.seq > upTo);
    };
    // Syncs due at one instant share one timer, so they return in one step.
    const pending = new Map<number, PendingSync>();
    const finish = (atMs: number): void => {
      const p = pending.get(atMs);
      pending.delete(atMs);
      for (const r of p?.resolvers ?? []) r();
    };
    return {
      write(fd, buf, pos) {
        if (!dead) unsynced.push({ seq: ++writes, ino: fstatSync(fd).ino, pos });
        if (!dead && disk.modeNow === 'full') {
          const size = fstatSync(fd).size;
          if (pos + buf.length > size) {
            // Whatever fits in the file's current extent, then half of the rest.
            const fits = Math.max(0, size - pos);
            const partial = fits + ((buf.length - fits) >> 1);
            if (partial > 0) nodeDisk.write(fd, buf.subarray(0, partial), pos);
            disk.trace(`disk full: write of ${buf.length} B at ${pos} failed after ${partial} B`);
            throw new SimDiskFullError(buf.length, pos);
          }
        }
        nodeDisk.write(fd, buf, pos);
      },
      truncate(fd, length) {
        nodeDisk.truncate(fd, length);
      },
      datasync(fd) {
        if (dead) return Promise.resolve();
        const [ino, upTo] = [fstatSync(fd).ino, writes];
        if (opening || disk.modeNow !== 'slow') {
          synced(ino, upTo);
          return Promise.resolve();
        }
        const atMs = disk.clock.now() + disk.syncDelayMs;
        return new Promise<void>((resolve) => {
          // A kill returns pending syncs without their having happened: they cover nothing.
          const done = (): void => {
            if (!dead) synced(ino, upTo);
            resolve();
          };
          const p = pending.get(atMs);
          if (p) p.resolvers.push(done);
          else pending.set(atMs, { resolvers: [done], timer: disk.clock.schedule(disk.syncDelayMs, `disk:${disk.node}`, () => finish(atMs)) });
        });
      },
      unsyncedFrom(fd) {
        const ino = fstatSync(fd).ino;
        let from: number | null = null;
        for (const w of unsynced) if (w.ino === ino && (from === null || w.pos < from)) from = w.pos;
        return from;
      },
      opened() {
        opening = false;
      },
      kill() {
        dead = true;
        for (const [atMs, p] of [...pending]) {
          disk.clock.clearTimeout(p.timer);
          finish(atMs);
        }
      },
    };
  }
}
