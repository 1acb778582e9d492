// `zrs pack FILE|ADDRESS`: pack a node's Data.fs (a primary's or a
// secondary's) to a time, as ZODB's zeopack does to a served storage. A
// primary's pack is not replicated: each node's file is packed by itself.
// ADDRESS: a running node's replication address; it is asked (native pack
// request) to pack its own file while it goes on serving. FILE: a stopped
// node's file. Its hash chain is opened with the storage, so the links of
// the transactions as they were are on disk before the packed file replaces
// them (docs/FAILOVER.md): its primary and secondaries still find its
// history the same afterwards (a running node's chain is open already).

import { ZrsError } from '../errors.js';
import { HashChain } from '../failover/hashChain.js';
import { FileStorage } from '../storage/FileStorage.js';
import { pathKind, refuseEmptyStorage } from '../storage/fileio.js';
import { GarbageCollectionError, isPackTimeInRange, PACK_TIME_RANGE, PackError, type PackProgress, type PackReport } from '../storage/pack.js';
import { zodbReferences } from '../storage/references.js';
import type { ReplicationAddress } from '../ports/transport.js';
import { formatAddress } from '../replication/address.js';
import { DEFAULT_PACK_TIMEOUT_MS, PackRefusedError, requestPack, type PackReply } from '../replication/packClient.js';
import { tidToString } from '../storage/timestamp.js';
import { UsageError, type CommandSpec, type ParsedArgs } from './args.js';
import { EXIT_OK, type CliIo } from './io.js';
import { fileOrAddress, refuseAddressFlags, timeoutOption } from './status.js';
import { tlsClientFlags, tlsClientTransport } from './tlsClient.js';

export const packSpec: CommandSpec = {
  name: 'pack',
  positionals: ['FILE|ADDRESS'],
  flags: [
    { name: 'days', value: 'N', help: 'keep every revision of the last N days (default 0: pack to now)' },
    { name: 'time', value: 'WHEN', help: 'pack to this time instead: a date (2026-11-01, UTC), a date and time with its zone (2026-11-01T00:00:00Z), or seconds since the epoch' },
    { name: 'no-gc', help: 'remove only old revisions, keeping objects the root no longer reaches (as pack-gc false)' },
    { name: 'blob-dir', value: 'DIR', help: "FILE only: the storage's blob directory, needed for a file with blobs: the blob files of removed revisions are deleted" },
    { name: 'keep-blob-files', help: "FILE only: leave the blob files of removed revisions in place: for a secondary sharing its primary's blob directory (transfer-blobs false), whose own pack removes them (a running node knows)" },
    { name: 'timeout', value: 'SECS', help: `ADDRESS only: give up connecting, or when the node has said nothing for SECS seconds while it packs (default ${DEFAULT_PACK_TIMEOUT_MS / 1000})` },
    ...tlsClientFlags('ADDRESS only'),
    { name: 'no-progress', help: 'never show the progress line (it only appears when stderr is a terminal)' },
  ],
  summary: "Pack a node's Data.fs, a running one by its address or a stopped one's file: remove revisions not current at a time, and objects no longer reachable.",
  description: `
Removes from the node's data file the revisions that were not current at
the pack time, and (unless --no-gc) the objects the root no longer reached
then, as ZODB's FileStorage pack (zeopack) does; the pack time is now minus
--days (by this machine's clock), or --time. A primary's pack is not replicated: pack each node's
file by itself.

With ADDRESS (a running node's replicate-to: a port on 127.0.0.1,
host:port, [v6addr]:port or a Unix socket path), the node packs its own
file while it goes on committing or replicating, shows how far it is, and
records the pack in its audit log. Exit 0 once packed; 1 when the node
refused, the pack failed, or it could not be asked. Anyone who can connect
to the replication address can ask for a pack.

With FILE (a stopped node's Data.fs: the storage must not be open), its hash
chain (FILE.chain, created if missing) gets every link first, so the node's
primary and secondaries find its history the same after the pack.

Either way the file before the pack is kept as FILE.old. Garbage
collection reads each record as a ZODB pickle: a file holding other data
needs --no-gc. A stopped secondary sharing its primary's blob directory is
packed with --keep-blob-files: the files are the primary's. Garbage-collect
a secondary's file only to a time its primary was packed to and well behind
what it has received (see docs/OPERATIONS.md).

examples:
  zrs pack 10.0.0.5:5000 --days 7
  zrs pack /var/db/Data.fs --days 7 --blob-dir /var/db/blobs
  zrs pack /var/db/Data.fs --time 2026-11-01T00:00:00Z --no-gc`,
};

export async function pack(args: ParsedArgs, io: CliIo, nowMs = Date.now()): Promise<number> {
  const target = args.positionals[0]!;
  const packTime = packTimeOf(args, nowMs);
  const address = await fileOrAddress(target);
  if (address !== null) {
    for (const flag of ['blob-dir', 'keep-blob-files']) {
      if (args.flags.has(flag)) throw new UsageError(`--${flag} applies to a FILE; a running node packs with its own blob directory`);
    }
    return packNode(address, packTime, args, io);
  }
  refuseAddressFlags(args.flags);
  return packFile(target, packTime, args, io);
}

/** Online: ask the node at `address` to pack its own file. */
async function packNode(address: ReplicationAddress, packTime: number, args: ParsedArgs, io: CliIo): Promise<number> {
  const label = formatAddress(address);
  const progress = progressLine(label, args, io);
  const timeoutMs = timeoutOption(args.flags, DEFAULT_PACK_TIMEOUT_MS);
  const transport = tlsClientTransport(args.flags);
  let reply: PackReply;
  try {
    reply = await requestPack(address, packTime, { gc: !args.flags.has('no-gc'), timeoutMs, transport, onProgress: progress?.show }).catch((err: unknown) => {
      if (err instanceof PackRefusedError && err.code === 'gc-refused') throw new PackRefusedError(`${err.message}; ${NO_GC_HINT}`, err.code);
      throw err;
    });
  } finally {
    progress?.clear();
  }
  await io.out(packedLine(label, reply, 'the node keeps the file before the pack beside its data file (.old)'));
  warnBlobFilesNotRemoved(reply, io);
  return EXIT_OK;
}

/** Offline: pack a stopped node's file. */
async function packFile(path: string, packTime: number, args: ParsedArgs, io: CliIo): Promise<number> {
  const blobDir = args.flags.get('blob-dir');
  const keepBlobFiles = args.flags.has('keep-blob-files');
  // A blob directory that is not there is a mistyped one: opening would make it empty, and the removed
  // revisions' blob files would stay in the real one for ever.
  if (typeof blobDir === 'string' && (await pathKind(blobDir)) !== 'directory') {
    throw new ZrsError(`the blob directory ${blobDir} does not exist: give the storage's own (its blob-dir); nothing was packed`);
  }
  await refuseEmptyStorage(path);
  const progress = progressLine(path, args, io);
  const storage = await FileStorage.open(path, { blobDir: typeof blobDir === 'string' ? blobDir : undefined });
  let report: PackReport;
  try {
    // Brought up to the last transaction now, and written in full before the packed file replaces the data file
    // (none for a storage with no transaction: it has nothing to pack).
    const chain = storage.transactionCount > 0 ? await HashChain.open(storage) : null;
    try {
      const gc = !args.flags.has('no-gc');
      report = await storage.pack(packTime, gc ? zodbReferences : undefined, { onProgress: progress?.show, keepBlobFiles }).catch((err: unknown) => {
        if (err instanceof GarbageCollectionError) throw new PackError(`${err.message}; ${NO_GC_HINT}`, { cause: err });
        throw err;
      });
    } finally {
      progress?.clear();
      await chain?.close();
    }
  } finally {
    await storage.close();
  }
  await io.out(packedLine(path, report, `the file before the pack is kept as ${path}.old`));
  warnBlobFilesNotRemoved(report, io);
  return EXIT_OK;
}

/**
 * Added to what garbage collection refused (a record it cannot read, a
 * reference to an object with no revision): a refused pack changed nothing,
 * and one without garbage collection reads no references.
 */
const NO_GC_HINT = 'nothing was packed (--no-gc packs without garbage collection)';

/** What a pack did, in one line; `oldFile` says where the file before it is. */
function packedLine(what: string, report: PackReport, oldFile: string): string {
  // The pack time asked for, or the last transaction's when that is earlier (the pack goes no further).
  const to = `${tidToString(report.packTid)} UTC (tid ${report.packTid.toString('hex')})`;
  if (!report.packed) return `${what}: nothing to remove up to ${to}: the file is unchanged\n`;
  const blobs = report.blobFiles === 'kept' ? '; blob files of removed revisions left in place' : report.blobFiles === 'none' ? '' : `; ${report.removedBlobFiles} blob file(s) removed`;
  return `${what}: packed to ${to}: ${report.sizeBefore} -> ${report.sizeAfter} bytes${blobs}; ${oldFile}\n`;
}

function warnBlobFilesNotRemoved(report: Pick<PackReport, 'blobFilesNotRemoved' | 'blobRemovalError'>, io: CliIo): void {
  if (report.blobFilesNotRemoved > 0) {
    io.err(`zrs pack: ${report.blobFilesNotRemoved} blob file(s) of removed revisions could not be deleted (${report.blobRemovalError}); delete them by hand\n`);
  }
}

/** The progress line on a terminal (unless --no-progress): shown as the pack goes, cleared at its end. */
function progressLine(what: string, args: ParsedArgs, io: CliIo): { show: (p: PackProgress) => void; clear: () => void } | null {
  if (args.flags.has('no-progress') || !io.stderrIsTTY) return null;
  let shownStep = '';
  let shownPercent = -1;
  return {
    // Called for every transaction a pass reads: the line is written when the pass or its percentage moves.
    show: (p) => {
      const percent = p.total > 0 ? Math.min(100, Math.floor((100 * p.done) / p.total)) : 100;
      if (percent === shownPercent && shownStep === p.step) return;
      shownStep = p.step;
      shownPercent = percent;
      io.err(`\rpacking ${what}: ${STEP_WORDS[p.step]} ${percent}%`);
    },
    clear: () => io.err('\r\x1b[2K'),
  };
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

/** `seconds`, when a tid can name it. */
function withinTids(seconds: number, given: string): number {
  if (!isPackTimeInRange(seconds)) throw new UsageError(`${given} is a pack time outside the times transactions have (${PACK_TIME_RANGE})`);
  return seconds;
}

