// `zrs pack FILE`: pack a stopped node's Data.fs (a primary's or a
// secondary's) to a time, as ZODB's zeopack does to a served storage. A
// primary's pack is not replicated: each node's file is packed by itself.
// The node's hash chain is opened with the storage, so the links of the
// transactions as they were are on disk before the packed file replaces
// them (docs/FAILOVER.md): its primary and secondaries still find its
// history the same afterwards.

import { ZrsError } from '../errors.js';
import { HashChain } from '../failover/hashChain.js';
import { FileStorage } from '../storage/FileStorage.js';
import { pathKind, refuseEmptyStorage } from '../storage/fileio.js';
import { PackError, packTimeToTid, type PackProgress, type PackReport } from '../storage/pack.js';
import { zodbReferences } from '../storage/references.js';
import { tidToString, Z64 } from '../storage/timestamp.js';
import { UsageError, type CommandSpec, type ParsedArgs } from './args.js';
import { EXIT_OK, type CliIo } from './io.js';

export const packSpec: CommandSpec = {
  name: 'pack',
  positionals: ['FILE'],
  flags: [
    { name: 'days', value: 'N', help: 'keep every revision of the last N days (default 0: pack to now)' },
    { name: 'time', value: 'WHEN', help: 'pack to this time instead: a date (2026-11-01, UTC), a date and time with its zone (2026-11-01T00:00:00Z), or seconds since the epoch' },
    { name: 'no-gc', help: 'remove only old revisions, keeping objects the root no longer reaches (as pack-gc false)' },
    { name: 'blob-dir', value: 'DIR', help: "the storage's blob directory, needed for a file with blobs: the blob files of removed revisions are deleted" },
    { name: 'keep-blob-files', help: "leave the blob files of removed revisions in place: for a secondary sharing its primary's blob directory (transfer-blobs false), whose own pack removes them" },
    { name: 'no-progress', help: 'never show the progress line (it only appears when stderr is a terminal)' },
  ],
  summary: "Pack a stopped node's Data.fs: remove revisions not current at a time, and objects no longer reachable.",
  description: `
Removes from FILE the revisions that were not current at the pack time, and
(unless --no-gc) the objects the root no longer reached then, as ZODB's
FileStorage pack (zeopack) does; the pack time is now minus --days, or
--time. A primary's pack is not replicated: pack each node's file by itself
(a running node: Secondary.pack or primary.storage.pack in the library).
The storage must not be open. Its hash chain (FILE.chain, created if
missing) gets every link first, so the node's primary and secondaries find
its history the same after the pack. The file before the pack is kept as
FILE.old. Garbage collection reads each record as a ZODB pickle: a file
holding other data needs --no-gc. A secondary sharing its primary's blob
directory is packed with --keep-blob-files: the files are the primary's.
Garbage-collect a secondary's file only
to a time its primary was packed to and well behind what it has received
(see docs/OPERATIONS.md).

examples:
  zrs pack /var/db/Data.fs --days 7 --blob-dir /var/db/blobs
  zrs pack /var/db/Data.fs --time 2026-11-01T00:00:00Z --no-gc`,
};

export async function pack(args: ParsedArgs, io: CliIo, nowMs = Date.now()): Promise<number> {
  const path = args.positionals[0]!;
  const packTime = packTimeOf(args, nowMs);
  const blobDir = args.flags.get('blob-dir');
  const keepBlobFiles = args.flags.has('keep-blob-files');
  // A blob directory that is not there is a mistyped one: opening would make it empty, and the removed
  // revisions' blob files would stay in the real one for ever.
  if (typeof blobDir === 'string' && (await pathKind(blobDir)) !== 'directory') {
    throw new ZrsError(`the blob directory ${blobDir} does not exist: give the storage's own (its blob-dir); nothing was packed`);
  }
  await refuseEmptyStorage(path);
  const show = !args.flags.has('no-progress') && io.stderrIsTTY;
  let shown = '';
  const onProgress = show
    ? (p: PackProgress): void => {
        const line = `packing ${path}: ${STEP_WORDS[p.step]} ${p.total > 0 ? Math.min(100, Math.floor((100 * p.done) / p.total)) : 100}%`;
        if (line === shown) return;
        shown = line;
        io.err(`\r${line}`);
      }
    : undefined;
  const storage = await FileStorage.open(path, { blobDir: typeof blobDir === 'string' ? blobDir : undefined });
  let report: PackReport;
  try {
    // Brought up to the last transaction now, and written in full before the packed file replaces the data file
    // (none for a storage with no transaction: it has nothing to pack).
    const chain = storage.transactionCount > 0 ? await HashChain.open(storage) : null;
    try {
      const gc = !args.flags.has('no-gc');
      report = await storage.pack(packTime, gc ? zodbReferences : undefined, { onProgress, keepBlobFiles }).catch((err: unknown) => {
        // A refused pack changed nothing; the garbage collection's refusals (a record it cannot read, a reference
        // to an object with no revision) are the ones --no-gc avoids.
        if (err instanceof PackError && gc) throw new PackError(`${err.message}; nothing was packed (--no-gc packs without garbage collection)`, { cause: err });
        throw err;
      });
    } finally {
      if (show) io.err('\r\x1b[2K');
      await chain?.close();
    }
  } finally {
    await storage.close();
  }
  // The pack time asked for, or the last transaction's when that is earlier (the pack goes no further).
  const to = `${tidToString(report.packTid)} UTC (tid ${report.packTid.toString('hex')})`;
  if (!report.packed) {
    await io.out(`${path}: nothing to remove up to ${to}: the file is unchanged\n`);
    return EXIT_OK;
  }
  const blobs = keepBlobFiles ? '; blob files of removed revisions left in place' : storage.blobs === null ? '' : `; ${report.removedBlobFiles} blob file(s) removed`;
  await io.out(
    `${path}: packed to ${to}: ${report.sizeBefore} -> ${report.sizeAfter} bytes${blobs}; the file before the pack is kept as ${path}.old\n`,
  );
  if (report.blobFilesNotRemoved > 0) {
    io.err(`zrs pack: ${report.blobFilesNotRemoved} blob file(s) of removed revisions could not be deleted (${report.blobRemovalError}); delete them by hand\n`);
  }
  return EXIT_OK;
}

const STEP_WORDS: Record<PackProgress['step'], string> = { index: 'reading', references: 'following references', copy: 'writing' };

/** The pack time (seconds since the epoch) the command line names: now minus --days, or --time. */
function packTimeOf(args: ParsedArgs, nowMs: number): number {
  const days = args.flags.get('days');
  const time = args.flags.get('time');
  if (days !== undefined && time !== undefined) throw new UsageError('give --days or --time, not both');
  if (typeof time === 'string') {
    // Seconds as digits, or an ISO 8601 date, UTC, or a date and time with its zone (Date.parse alone takes
    // looser forms, and reads a time without a zone as local time).
    const iso = /^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2}))?$/.test(time);
    const seconds = /^\d+(\.\d+)?$/.test(time) ? Number(time) : iso ? Date.parse(time) / 1000 : NaN;
    if (!Number.isFinite(seconds)) {
      throw new UsageError(
        `--time must be an ISO 8601 date (2026-11-01, UTC), date and time with its zone (2026-11-01T00:00:00Z), or seconds since the epoch, got ${JSON.stringify(time)}`,
      );
    }
    return withinTids(seconds, `--time ${time}`);
  }
  const n = typeof days === 'string' ? Number(days) : 0;
  if (typeof days === 'string' && (days.trim() === '' || !Number.isFinite(n) || n < 0)) {
    throw new UsageError(`--days must be a number of days >= 0, got ${JSON.stringify(days)}`);
  }
  return withinTids(nowMs / 1000 - n * 86400, `--days ${days}`);
}

/** `seconds`, when a tid can name it: between 1970 and the last time a tid holds (9917; later times, also past what a Date holds, read as all 0xff). */
function withinTids(seconds: number, given: string): number {
  const tid = packTimeToTid(seconds);
  if (seconds <= 0 || tid.equals(Z64) || tid.readUInt32BE(0) === 0xffffffff) {
    throw new UsageError(`${given} is a pack time outside the times transactions have (1970 to 9917)`);
  }
  return seconds;
}

