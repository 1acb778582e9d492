// V8's old-generation collector, tuned for a process that replicates: one
// process-wide setting, applied by `zrs serve` and the demo, and by
// embedders who call tuneCollector() themselves (docs/OPERATIONS.md,
// "The garbage collector").
//
// By default V8 starts marking the old generation as soon as the room left
// under its limit is smaller than the young generation. A node's heap holds
// little but its index (about 30 MB per million objects), and its young
// generation grows to 16 MiB under steady traffic: in a heap of a few tens
// of MB that room is always too small, so the process marks without a
// pause and runs a full collection about once a second, each stopping the event loop for 2–9 ms,
// the largest share of the replication lag's tail. Starting to mark only
// once the old generation has filled a share of its limit leaves the limit
// itself as V8 computes it. In a heap whose limit is over 80 MB, 80 % comes
// before V8's own start (16 MiB below the limit): a larger index wants a
// higher percent (docs/OPERATIONS.md).

import v8 from 'node:v8';

/** Percent of its limit the old generation fills before marking starts (what tuneCollector sets by default). */
export const DEFAULT_MARKING_START_PERCENT = 80;

/**
 * Make V8 start marking the old generation only once it fills
 * `percent` of its limit (1–99), for the whole process; 0 gives back V8's
 * own rule. Idempotent; affects every storage and node in the process.
 * @throws RangeError for anything but an integer from 0 to 99.
 */
export function tuneCollector(percent: number = DEFAULT_MARKING_START_PERCENT): void {
  if (!Number.isInteger(percent) || percent < 0 || percent > 99) {
    throw new RangeError(`tuneCollector: percent must be an integer from 0 (V8's own rule) to 99, got ${String(percent)}`);
  }
  v8.setFlagsFromString(`--incremental-marking-soft-trigger=${percent}`);
}
