// Rewind: the explicit step that lets a diverged storage (an old primary
// after a failover) rejoin as a secondary. It truncates the data file to the
// last transaction shared with the new primary, after saving every cut
// transaction (with its blob files) in a side FileStorage
// `<data file>.rewound-<forkTid>` that `zrs dump` reads, and fixes the hash
// chain and generation files. rewindStorage works offline (the storage must
// not be open); rewindOpenStorage cuts a diverged Secondary's open storage.

import { constants } from 'node:fs';
import { copyFile, open as openFile, rename, rm } from 'node:fs/promises';
import { RewindIncompleteError, ZrsError } from '../errors.js';
import { PLAIN_TO_TLS_HINT } from '../replication/nodeRequest.js';
import { systemClock } from '../node/clock.js';
import { socketTransport } from '../node/socketTransport.js';
import type { Clock } from '../ports/clock.js';
import type { ByteStream, ReplicationAddress, Transport } from '../ports/transport.js';
import { connectAddress, formatAddress } from '../replication/address.js';
import { basename, dirname } from 'node:path';
import { pathKind, refuseEmptyStorage, syncDirectory } from '../storage/fileio.js';
import { AuditLog } from '../audit/auditLog.js';
import { defaultAuditPath, openAuditLog, type GenerationsSeen } from '../audit/nodeAudit.js';
import { isBlobRecord } from '../storage/blobs.js';
import { FileStorage } from '../storage/FileStorage.js';
import { removeIndex } from '../storage/indexFile.js';
import { readU64At, TRAILER_BYTES } from '../storage/format.js';
import { tidPlusOne, Z64 } from '../storage/timestamp.js';
import { encodeFrame, foreignPeer, FrameDecoder } from '../wire/framing.js';
import { createNativePackr, createNativeUnpackr, decodeNative, encodeNativeFrame, HANDSHAKE_REPLY_MAX_BYTES, nativeProtocolName, type GenerationEntry, type HelloMessage } from '../wire/native.js';
import { GenerationHistory, generationsBefore } from './generations.js';
import { prepareChainCut, type ChainCut } from './hashChain.js';
import { FailoverHistory } from './history.js';

export interface RewindOptions {
  /** The new primary's replication address (asked for the fork point), or the fork tid itself. */
  toCommonWith: string | number | ReplicationAddress | Buffer;
  /** The storage's blob directory, when it has one (cut blob files are saved too). */
  blobDir?: string;
  transport?: Transport;
  clock?: Clock;
  /** Bound on asking the primary, in ms. Default 10 000. */
  timeoutMs?: number;
  /** The storage's audit log, where the rewind is recorded: default `<path>.audit`; null for none. */
  auditPath?: string | null;
  /** The node name in the audit record (default: the name the log already uses, else the data file's base name). */
  node?: string;
}

export interface RewindResult {
  /** The last transaction kept (8 zero bytes: nothing kept). */
  forkTid: Buffer;
  /** Tids of the transactions cut, oldest first (empty: nothing to rewind). */
  cutTids: Buffer[];
  /** The side FileStorage holding the cut transactions, or null when nothing was cut. */
  sidePath: string | null;
  /** The side blob directory, or null. */
  sideBlobDir: string | null;
  /** Blob files moved to the side blob directory. */
  blobsCut: number;
  /** Blob records cut whose file was already missing (`oid 0x… tid 0x…`): kept in the side file without it. */
  blobsMissing: string[];
  /** Generations dropped from the history, which began at or after the fork (a promotion undone), oldest first. */
  generationsDropped: GenerationEntry[];
}

/**
 * Truncate a diverged storage to the last transaction it shares with the new
 * primary, keeping what is cut in a side file.
 *
 * @example
 * const r = await rewindStorage('/var/db/Data.fs', { toCommonWith: 'newprimary:5000' });
 * console.log(`cut ${r.cutTids.length} transactions into ${r.sidePath}`);
 * const secondary = await Secondary.open({ path: '/var/db/Data.fs', replicateFrom: 'newprimary:5000' });
 */
export async function rewindStorage(path: string, options: RewindOptions): Promise<RewindResult> {
  // The primary to ask, or null for a given tid; a bad address is refused before the storage is opened.
  const primary = Buffer.isBuffer(options.toCommonWith) ? null : connectAddress(options.toCommonWith);
  // A blob directory that is not there is a mistyped one: opening would make it empty, and the cut
  // blob files would stay in the real one, their records saved aside without them.
  if (options.blobDir !== undefined && (await pathKind(options.blobDir)) !== 'directory') {
    throw new ZrsError(`the blob directory ${options.blobDir} does not exist: give the storage's own (its blob-dir); nothing was cut`);
  }
  await refuseEmptyStorage(path);
  const storage = await FileStorage.open(path, { blobDir: options.blobDir });
  // Held from the first read to the last file cut: no node can open the storage in between.
  const lock = storage.takeLock();
  let audit: AuditLog | null = null;
  let chainCut: ChainCut | null = null;
  try {
    // The generations, read first: the audit log's open judges its last promotion by them (the lock keeps them
    // as they are). The log is opened before anything is cut: one that cannot be (not an audit log, a wrong
    // path) stops the rewind.
    let generations: GenerationHistory;
    try {
      generations = await GenerationHistory.open(path);
      audit = await openRewindAudit(path, options, generations);
    } catch (err) {
      await storage.close();
      throw err;
    }
    let forkTid: Buffer | null;
    let cut: SavedCut | null = null;
    const last = storage.lastTransaction();
    try {
      forkTid = primary === null ? Buffer.from(options.toCommonWith as Buffer) : await askForkTid(storage, primary, options);
      if (forkTid !== null) {
        forkTid = keptTid(storage, forkTid, primary === null);
        // Opened and checked before anything is saved or cut: a damaged chain file stops the rewind here.
        chainCut = prepareChainCut(path, forkTid);
        cut = await saveCut(storage, forkTid, options.blobDir !== undefined);
      }
    } finally {
      await storage.close();
    }
    if (forkTid === null || cut === null) {
      // The primary accepts this storage as it is: nothing to cut.
      const none = { forkTid: last, cutTids: [], sidePath: null, sideBlobDir: null, blobsCut: 0, blobsMissing: [], generationsDropped: [] };
      await recordRewind(audit, primary, none);
      return none;
    }
    const result = rewindResult(forkTid, cut, generations.list);
    // The decision is on disk before anything is cut (the cut part is already saved aside): a crash or a
    // failing step after it leaves a record of what was being cut, and the error says how far it got.
    const after = generationsBefore(generations.list, forkTid).at(-1) ?? null;
    await recordRewind(audit, primary, result, after);
    let step = 'the data file';
    try {
      if (cut.cutPos !== null) await truncateDataFile(path, cut.cutPos);
      step = 'the cut blob files';
      for (const blob of cut.cutBlobs) await rm(blob, { force: true });
      step = 'the hash chain';
      chainCut?.apply();
      step = 'the generations file';
      await generations.cutFrom(forkTid);
    } catch (err) {
      throw new RewindIncompleteError(
        forkTid,
        step,
        `rewinding to tid ${forkTid.toString('hex')} (${result.cutTids.length} transaction(s)${result.sidePath ? `, saved in ${result.sidePath}` : ''}; recorded in the audit log) failed at cutting ${step}: ${(err as Error).message}`,
        { cause: err },
      );
    }
    return result;
  } finally {
    chainCut?.close();
    await audit?.close().catch(() => undefined);
    lock?.release();
  }
}

interface SavedCut {
  sidePath: string | null;
  sideBlobDir: string | null;
  cutTids: Buffer[];
  /** The storage's blob files of the cut transactions, copied to the side (remove them once the cut is done). */
  cutBlobs: string[];
  /** Blob records cut whose file was missing before the rewind. */
  blobsMissing: string[];
  /** Where the first cut transaction starts in the data file, or null when nothing is cut. */
  cutPos: number | null;
}

/**
 * The last tid to keep: `forkTid` when the storage has it. A fork tid named
 * by the primary that this storage lacks means the primary's guess at the
 * shared history was wrong (without a coordinator two nodes can start the
 * same generation at the same tid, and look alike): keep only the
 * transactions before it, which cuts at least the last one; the next
 * handshake judges again from there. An explicit tid (`exact`) must exist.
 */
function keptTid(storage: FileStorage, forkTid: Buffer, exact: boolean): Buffer {
  if (forkTid.equals(Z64) || storage.findTransaction(forkTid) !== null) return forkTid;
  if (exact) throw new ZrsError(`${storage.path}: the fork tid ${forkTid.toString('hex')} is not a transaction of this storage; cannot rewind to it`);
  // The first transaction at or after forkTid; the one before it ends with its length (the trailer).
  const pos = storage.positionAfter(forkTid, true);
  if (pos <= storage.firstTransactionPos) return Buffer.from(Z64);
  const length = readU64At(storage.readAt(pos - TRAILER_BYTES, TRAILER_BYTES), 0);
  return Buffer.from(storage.readTxnHeaderAt(pos - TRAILER_BYTES - length).tid);
}

/**
 * Copy every transaction after `forkTid` (with its blob files) into a new
 * side FileStorage `<data file>.rewound-<forkTid>`, durably. Changes nothing
 * in `storage`.
 */
async function saveCut(storage: FileStorage, forkTid: Buffer, withBlobs: boolean): Promise<SavedCut> {
  const path = storage.path;
  const out: SavedCut = { sidePath: null, sideBlobDir: null, cutTids: [], cutBlobs: [], blobsMissing: [], cutPos: null };
  if (!forkTid.equals(Z64) && storage.findTransaction(forkTid) === null) {
    throw new ZrsError(`${path}: the fork tid ${forkTid.toString('hex')} is not a transaction of this storage; cannot rewind to it`);
  }
  if (Buffer.compare(forkTid, storage.lastTransaction()) >= 0) return out;
  const final = await freshPath(`${path}.rewound-${forkTid.toString('hex')}`);
  const finalBlobDir = storage.blobs && withBlobs ? `${final}.blobs` : null;
  // Written under a `.partial` name, renamed once whole: a rewind killed while it copies leaves no file
  // under the name an operator reads the cut from (that run cut nothing; the next one saves it again).
  out.sidePath = `${final}${PARTIAL_SUFFIX}`;
  out.sideBlobDir = finalBlobDir ? `${out.sidePath}.blobs` : null;
  const side = await FileStorage.open(out.sidePath, { create: true, blobDir: out.sideBlobDir ?? undefined });
  let saved = false;
  try {
    for await (const txn of storage.iterator(tidPlusOne(forkTid))) {
      out.cutPos ??= txn.pos;
      out.cutTids.push(Buffer.from(txn.tid));
      const meta = { user: txn.user, description: txn.description, extensionBytes: txn.extensionBytes };
      await side.tpcBegin(meta, { tid: txn.tid, status: txn.status });
      for (const r of txn.records) {
        if (storage.blobs === null && isBlobRecord(r.data)) {
          // Opened without its blob directory: the record would be saved without its file, and the file left behind.
          throw new ZrsError(
            `${path}: transaction ${txn.tid.toString('hex')} to cut holds a blob (oid 0x${r.oid.toString('hex')}), and the storage was opened without its blob directory: give it (zrs rewind --blob-dir DIR), so the cut blob files are saved with their transactions and removed from it; nothing was cut`,
          );
        }
        const withBlob = side.blobs !== null && isBlobRecord(r.data);
        const blob = withBlob ? await storage.loadBlob(r.oid, txn.tid).catch(() => null) : null;
        // Missing already (not lost here): the record is kept without it, and the result says so.
        if (withBlob && blob === null) out.blobsMissing.push(`oid 0x${r.oid.toString('hex')} tid 0x${txn.tid.toString('hex')}`);
        if (blob && side.blobs) {
          // Copied, not moved: the original is removed only once the side file is durable.
          const temp = side.blobs.tempPath();
          await copyFile(blob, temp);
          await side.restoreBlob(r.oid, txn.tid, r.data, temp, null, meta);
          out.cutBlobs.push(blob);
        } else side.restore(r.oid, txn.tid, r.data, null, meta);
      }
      await side.tpcVote(meta);
      await side.tpcFinish(meta);
    }
    saved = true;
  } finally {
    // Each transaction was durable at its finish: a close that fails (saving an index removed below) neither
    // loses the saved cut nor may skip the cleanup, nor hide why the copy stopped.
    await side.close().catch(() => undefined);
    // The side file is an archive that nothing holds open: only it (and its blobs) stay beside the data file.
    await removeIndex(out.sidePath);
    // A side file that does not hold the whole cut would pass for its archive: nothing was cut, so it goes.
    if (!saved) await removeSide(out);
    await rm(`${out.sidePath}.lock`, { force: true });
  }
  // The blobs first: a data file under its final name is a whole archive.
  if (out.sideBlobDir && finalBlobDir) {
    await rename(out.sideBlobDir, finalBlobDir);
    out.sideBlobDir = finalBlobDir;
  }
  await rename(out.sidePath, final);
  out.sidePath = final;
  // Its name is durable before the transactions it keeps are cut from the data file.
  await syncDirectory(dirname(out.sidePath));
  return out;
}

/** Remove what saveCut saved aside, for a cut that was not made. */
async function removeSide(cut: SavedCut): Promise<void> {
  if (cut.sidePath) await rm(cut.sidePath, { force: true });
  if (cut.sideBlobDir) await rm(cut.sideBlobDir, { recursive: true, force: true });
}

/** What an online rewind needs besides the open storage. */
export interface OpenRewindOptions {
  /** The storage's generations and hash chain (cut too). */
  history: FailoverHistory;
  /** Save cut blob files beside the side file (the storage has a blob directory). */
  withBlobs: boolean;
}

/**
 * Online: cut an open storage back to `forkTid` (a diverged Secondary's,
 * whose connection is down). Nothing else may write to it meanwhile. The cut
 * transactions go to the side file first; then, under the commit lock, a
 * copy of the data file cut at the fork replaces it (pack's file swap: the
 * file before the rewind is kept as `<data file>.old`), the cut blob files
 * are removed, and the chain and generations are cut.
 */
export async function rewindOpenStorage(storage: FileStorage, refusedAt: Buffer, options: OpenRewindOptions): Promise<RewindResult> {
  const forkTid = keptTid(storage, refusedAt, false);
  const epoch = storage.fileEpoch;
  const cut = await saveCut(storage, forkTid, options.withBlobs);
  if (cut.cutPos !== null) {
    const release = await storage.acquireCommitLock();
    try {
      // The cut's position is in the file it was saved from: one replaced meanwhile (a pack) has others.
      if (storage.fileEpoch !== epoch) {
        await removeSide(cut);
        throw new ZrsError(`${storage.path}: the data file was replaced (packed) while the rewind saved what it cuts; nothing was cut: rewind again`);
      }
      const temp = `${storage.path}.rewind-tmp`;
      try {
        // A clone where the file system can (copy-on-write), else a copy; cut at the fork either way.
        await copyFile(storage.path, temp, constants.COPYFILE_FICLONE);
        const h = await openFile(temp, 'r+');
        try {
          await h.truncate(cut.cutPos);
          await h.sync();
        } finally {
          await h.close();
        }
        await storage.replaceDataFile(temp, 'rewind');
      } catch (err) {
        await rm(temp, { force: true });
        throw err;
      }
    } finally {
      release();
    }
  }
  for (const blob of cut.cutBlobs) await rm(blob, { force: true });
  const result = rewindResult(Buffer.from(forkTid), cut, options.history.generations.list);
  await options.history.cutTo(forkTid);
  return result;
}

/** What a rewind that cut `cut` back to `forkTid`, from a node with these `generations`, reports. */
function rewindResult(forkTid: Buffer, cut: SavedCut, generations: readonly GenerationEntry[]): RewindResult {
  const kept = generationsBefore(generations, forkTid).length;
  return {
    forkTid,
    cutTids: cut.cutTids,
    sidePath: cut.sidePath,
    sideBlobDir: cut.sideBlobDir,
    blobsCut: cut.cutBlobs.length,
    blobsMissing: cut.blobsMissing,
    generationsDropped: generations.slice(kept).map((g) => ({ generation: g.generation, startTid: Buffer.from(g.startTid) })),
  };
}

/** The details of a `rewind` audit record: where it cut, what it cut, where the cut part went. */
export function rewindAuditDetails(r: RewindResult, commonWith: string): Record<string, unknown> {
  return {
    forkTid: r.forkTid,
    commonWith,
    transactionsCut: r.cutTids.length,
    blobsCut: r.blobsCut,
    ...(r.blobsMissing.length > 0 ? { blobsMissing: r.blobsMissing.length, firstBlobsMissing: r.blobsMissing.slice(0, 10) } : {}),
    firstCutTid: r.cutTids[0] ?? null,
    lastCutTid: r.cutTids.at(-1) ?? null,
    sidePath: r.sidePath,
    sideBlobDir: r.sideBlobDir,
    ...(r.generationsDropped.length > 0 ? { generationsDropped: r.generationsDropped.map((g) => ({ generation: g.generation, startTid: g.startTid.toString('hex') })) } : {}),
  };
}

/** The storage's audit log for an offline rewind, or null when it records none. */
async function openRewindAudit(path: string, options: RewindOptions, generations: GenerationsSeen): Promise<AuditLog | null> {
  if (options.auditPath === null) return null;
  return openAuditLog(options.auditPath ?? defaultAuditPath(path), { node: options.node ?? basename(path), continueNode: options.node === undefined, clock: options.clock ?? systemClock }, generations);
}

/** An offline rewind as an audit decision; `primary`: the one asked, or null for a given tid. */
async function recordRewind(audit: AuditLog | null, primary: ReplicationAddress | null, r: RewindResult, generation: unknown = null): Promise<void> {
  if (audit === null) return;
  audit.generation = generation;
  await audit.decide('rewind', { ...rewindAuditDetails(r, primary === null ? 'tid' : formatAddress(primary)), offline: true });
}

/** Cut the data file at `pos` (the caller holds its lock) and drop its saved index. */
async function truncateDataFile(path: string, pos: number): Promise<void> {
  const h = await openFile(path, 'r+');
  try {
    await h.truncate(pos);
    await h.sync();
  } finally {
    await h.close();
  }
  await removeIndex(path);
}

/** A side file written under this suffix is not whole yet (a rewind stopped while it copied). */
const PARTIAL_SUFFIX = '.partial';

/**
 * `base`, or `base.1`, `base.2` …: the first name no whole side file has.
 * What a rewind killed while it copied (or between its renames) left under
 * it (`.partial`, its blobs and lock, or blobs already renamed without their
 * data file) is removed: that run cut nothing, so it holds only copies of
 * transactions still in the data file, and the caller holds the storage's
 * lock, so no other rewind is writing it.
 */
async function freshPath(base: string): Promise<string> {
  for (let n = 0; ; n++) {
    const candidate = n === 0 ? base : `${base}.${n}`;
    if ((await pathKind(candidate)) !== 'missing') continue;
    const partial = `${candidate}${PARTIAL_SUFFIX}`;
    for (const left of [partial, `${partial}.blobs`, `${partial}.lock`, `${partial}.index`, `${candidate}.blobs`]) await rm(left, { recursive: true, force: true });
    return candidate;
  }
}

/**
 * Ask a primary where this storage forked from it: handshake as a native
 * secondary would, read the verdict, close. Null when the primary welcomes it.
 */
export async function askForkTid(storage: FileStorage, address: ReplicationAddress, options: { transport?: Transport; clock?: Clock; timeoutMs?: number }): Promise<Buffer | null> {
  const history = await FailoverHistory.open(storage, { role: 'secondary' });
  const start = storage.lastTransaction();
  let hello: HelloMessage;
  try {
    hello = { type: 'hello', startTid: start, ...history.helloFields(start), options: { blobs: storage.blobs !== null } };
  } finally {
    await history.close();
  }
  const timeoutMs = options.timeoutMs ?? 10_000;
  const clock = options.clock ?? systemClock;
  // The same bound for reaching the primary as for its answer; the attempt is abandoned with it.
  const attempt = new AbortController();
  const connectTimer = clock.setTimeout(() => attempt.abort(), timeoutMs);
  let stream: ByteStream;
  try {
    stream = await (options.transport ?? socketTransport).connect(address, attempt.signal);
  } catch (err) {
    if (attempt.signal.aborted) throw new ZrsError(`can't connect to ${describe(address)} within ${timeoutMs} ms`, { cause: err });
    throw new ZrsError(`can't connect to ${describe(address)} to find the last common tid: ${(err as Error).message}`, { cause: err });
  } finally {
    clock.clearTimeout(connectTimer);
  }
  return new Promise<Buffer | null>((resolve, reject) => {
    const decoder = new FrameDecoder({ maxFrameBytes: HANDSHAKE_REPLY_MAX_BYTES });
    const unpackr = createNativeUnpackr();
    let settled = false;
    const finish = (err: Error | null, value: Buffer | null = null): void => {
      if (settled) return;
      settled = true;
      clock.clearTimeout(timer);
      stream.destroy();
      if (err) reject(err);
      else resolve(value);
    };
    const timer = clock.setTimeout(() => finish(new ZrsError(`no answer from ${describe(address)} within ${timeoutMs} ms`)), timeoutMs);
    let first = true;
    stream.setHandlers({
      data: (chunk) => {
        const foreign = first ? foreignPeer(chunk) : null;
        first = false;
        if (foreign) return finish(new ZrsError(`${describe(address)} is ${foreign}, not a ZRS node`));
        try {
          decoder.feed(chunk);
          for (let f = decoder.next(); f !== null; f = decoder.next()) {
            if (f.length === 0) continue;
            const msg = decodeNative(f, unpackr, 'primary');
            if (msg.type === 'welcome') return finish(null, null);
            if (msg.type === 'refuse' && msg.code === 'diverged') {
              if (!msg.forkTid) return finish(new ZrsError(`the primary says diverged but names no fork tid: ${msg.message}`));
              return finish(null, msg.forkTid);
            }
            if (msg.type === 'refuse') return finish(new ZrsError(`the primary refused (${msg.code}): ${msg.message}`));
            return finish(new ZrsError(`unexpected ${msg.type} from the primary`));
          }
        } catch (err) {
          finish(err as Error);
        }
      },
      drain: () => undefined,
      close: (error) => finish(new ZrsError(`the primary closed the connection without a verdict${error ? `: ${error.message}` : ''} (a zc.zrs node, or ${PLAIN_TO_TLS_HINT})`)),
    });
    const packr = createNativePackr();
    stream.write(encodeFrame(nativeProtocolName()));
    stream.write(encodeNativeFrame(hello, packr));
  });
}

function describe(a: ReplicationAddress): string {
  return a.kind === 'unix' ? a.path : `${a.host}:${a.port}`;
}

