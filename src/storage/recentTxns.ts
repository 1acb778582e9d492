// The most recent committed transactions, as (position, tid) pairs in file
// order, in a fixed-size ring. Every data record carries its transaction's
// tid, so the serial of a record at a known position is the tid of the
// newest transaction starting at or before it: a binary search here instead
// of a disk read, for the conflict check of every store. The tids are copied
// into one flat buffer, not kept as a Buffer each: held for the ring's 65,536
// transactions, each would outlive young collections, be promoted and then
// marked, a cost paid by every commit of a busy storage.

import { compareIdsAt, copyIdAt } from './format.js';

export class RecentTransactions {
  /** Allocated slots: grows by doubling up to maxEntries, so a small storage stays small. */
  private positions: Float64Array;
  /** 8 bytes per slot. */
  private tids: Buffer;
  private capacity: number;
  /** Index of the oldest entry (moves only once the ring is full at maxEntries). */
  private head = 0;
  private count = 0;

  constructor(private readonly maxEntries = 1 << 16) {
    this.capacity = Math.min(64, maxEntries);
    this.positions = new Float64Array(this.capacity);
    this.tids = Buffer.alloc(8 * this.capacity);
  }

  /** Record a transaction that starts at `pos`; a position not past the last one (a truncated file) starts over. */
  add(pos: number, tid: Buffer): void {
    if (this.count > 0 && pos <= this.positions[(this.head + this.count - 1) % this.capacity]!) this.clear();
    if (this.count === this.capacity && this.capacity < this.maxEntries) this.grow();
    const slot = (this.head + this.count) % this.capacity;
    this.positions[slot] = pos;
    tid.copy(this.tids, slot * 8, 0, 8);
    if (this.count < this.capacity) this.count += 1;
    else this.head = (this.head + 1) % this.capacity;
  }

  /** Double the slots; the entries are still in order from slot 0 (head is 0 until the ring is full). */
  private grow(): void {
    this.capacity = Math.min(this.capacity * 2, this.maxEntries);
    const positions = new Float64Array(this.capacity);
    positions.set(this.positions);
    this.positions = positions;
    const tids = Buffer.alloc(8 * this.capacity);
    this.tids.copy(tids);
    this.tids = tids;
  }

  /** The tid of the record at `pos` (a copy), or undefined when its transaction is older than the ring. */
  serialAt(pos: number): Buffer | undefined {
    const slot = this.slotOf(pos);
    return slot < 0 ? undefined : copyIdAt(this.tids, slot * 8);
  }

  /** Whether the record at `pos` has serial `tid` (8 bytes), compared in place; undefined when its transaction is older than the ring. */
  serialIs(pos: number, tid: Buffer): boolean | undefined {
    const slot = this.slotOf(pos);
    return slot < 0 ? undefined : compareIdsAt(this.tids, slot * 8, tid) === 0;
  }

  /** The slot of the newest transaction starting at or before `pos`, or -1 when it is older than the ring. */
  private slotOf(pos: number): number {
    if (this.count === 0 || pos < this.positions[this.head]!) return -1;
    // Greatest entry with position <= pos, over logical indexes 0..count-1.
    // (A slot is head + index, less capacity past the end: no division in the loop.)
    const { positions, head, capacity } = this;
    let lo = 0;
    let hi = this.count - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      const slot = head + mid;
      if (positions[slot < capacity ? slot : slot - capacity]! <= pos) lo = mid;
      else hi = mid - 1;
    }
    const slot = head + lo;
    return slot < capacity ? slot : slot - capacity;
  }

  clear(): void {
    this.head = 0;
    this.count = 0;
  }
}
