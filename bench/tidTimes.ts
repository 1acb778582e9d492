// Tids, each with a time, kept flat (8 bytes and one float per entry in two
// growing arrays) rather than as an object per entry: the benchmarks keep
// one per transaction until a run ends, and objects kept that long would
// be copied by every young-generation collection, then promoted and marked,
// adding pauses to the lag under measurement.

export class TidTimes {
  private tids = Buffer.allocUnsafe(8 * 4096);
  private times = new Float64Array(4096);
  length = 0;

  push(tid: Buffer, atMs: number): void {
    if (this.length === this.times.length) {
      const tids = Buffer.allocUnsafe(this.tids.length * 2);
      this.tids.copy(tids);
      this.tids = tids;
      const times = new Float64Array(this.times.length * 2);
      times.set(this.times);
      this.times = times;
    }
    tid.copy(this.tids, this.length * 8, 0, 8);
    this.times[this.length++] = atMs;
  }

  tidHex(i: number): string {
    return this.tids.toString('hex', i * 8, i * 8 + 8);
  }

  at(i: number): number {
    return this.times[i]!;
  }

  /** Every entry, in order, as hex tids and times. */
  lists(): { tids: string[]; atMs: number[] } {
    return { tids: Array.from({ length: this.length }, (_, i) => this.tidHex(i)), atMs: Array.from(this.times.subarray(0, this.length)) };
  }
}
