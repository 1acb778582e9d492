// Rewind: the explicit step that lets a diverged storage (an old primary
// after a failover) rejoin as a secondary. It truncates the data file to the
// last transaction shared with the new primary, after saving every cut
// transaction (with its blob files) in a side FileStorage
// `<data file>.rewound-<forkTid>` that `zrs dump` reads, and fixes the hash
// chain and generation files. Offline: the storage must not be open.

import { copyFile, open as openFile, rm, access } from 'node:fs/promises';
import { ZrsError } from '../errors.js';
import { systemClock } from '../node/clock.js';
import { socketTransport } from '../node/socketTransport.js';
import type { Clock } from '../ports/clock.js';
import type { ReplicationAddress, Transport } from '../ports/transport.js';
import { parseAddress } from '../replication/address.js';
import { isBlobRecord } from '../storage/blobs.js';
import { FileStorage } from '../storage/FileStorage.js';
import { removeIndex } from '../storage/indexFile.js';
import { LockFile } from '../storage/lock.js';
import { tidPlusOne, Z64 } from '../storage/timestamp.js';
import { encodeFrame, FrameDecoder } from '../wire/framing.js';
import { createNativePackr, createNativeUnpackr, decodeNative, encodeNativeFrame, HANDSHAKE_REPLY_MAX_BYTES, nativeProtocolName } from '../wire/native.js';
import { GenerationHistory } from './generations.js';
import { truncateChainFile } from './hashChain.js';
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
  const storage = await FileStorage.open(path, { blobDir: options.blobDir });
  let forkTid: Buffer | null;
  let sidePath: string | null = null;
  let sideBlobDir: string | null = null;
  const cutTids: Buffer[] = [];
  const cutBlobs: string[] = [];
  let cutPos: number | null = null;
  try {
    forkTid = Buffer.isBuffer(options.toCommonWith) ? Buffer.from(options.toCommonWith) : await askForkTid(storage, toAddress(options.toCommonWith), options);
    if (forkTid === null) {
      // The primary accepts this storage as it is: nothing to cut.
      return { forkTid: storage.lastTransaction(), cutTids, sidePath, sideBlobDir };
    }
    if (!forkTid.equals(Z64) && storage.findTransaction(forkTid) === null) {
      throw new ZrsError(`${path}: the fork tid ${forkTid.toString('hex')} is not a transaction of this storage; cannot rewind to it`);
    }
    if (Buffer.compare(forkTid, storage.lastTransaction()) < 0) {
      const tag = forkTid.toString('hex');
      sidePath = await freshPath(`${path}.rewound-${tag}`);
      sideBlobDir = storage.blobs && options.blobDir ? `${sidePath}.blobs` : null;
      const side = await FileStorage.open(sidePath, { create: true, blobDir: sideBlobDir ?? undefined });
      try {
        for await (const txn of storage.iterator(tidPlusOne(forkTid))) {
          cutPos ??= txn.pos;
          cutTids.push(Buffer.from(txn.tid));
          const meta = { user: txn.user, description: txn.description, extensionBytes: txn.extensionBytes };
          await side.tpcBegin(meta, { tid: txn.tid, status: txn.status });
          for (const r of txn.records) {
            const blob = storage.blobs && isBlobRecord(r.data) ? await storage.loadBlob(r.oid, txn.tid).catch(() => null) : null;
            if (blob && side.blobs) {
              // Copied, not moved: the original is removed only once the side file is durable.
              const temp = side.blobs.tempPath();
              await copyFile(blob, temp);
              await side.restoreBlob(r.oid, txn.tid, r.data, temp, null, meta);
              cutBlobs.push(blob);
            } else side.restore(r.oid, txn.tid, r.data, null, meta);
          }
          await side.tpcVote(meta);
          await side.tpcFinish(meta);
        }
      } finally {
        await side.close();
      }
    }
  } finally {
    await storage.close();
  }
  if (cutPos !== null) await truncateDataFile(path, cutPos);
  for (const blob of cutBlobs) await rm(blob, { force: true });
  truncateChainFile(path, forkTid);
  const generations = await GenerationHistory.open(path);
  await generations.cutFrom(forkTid);
  return { forkTid, cutTids, sidePath, sideBlobDir };
}

async function truncateDataFile(path: string, pos: number): Promise<void> {
  const lock = LockFile.acquire(`${path}.lock`);
  try {
    const h = await openFile(path, 'r+');
    try {
      await h.truncate(pos);
      await h.sync();
    } finally {
      await h.close();
    }
    await removeIndex(path);
  } finally {
    lock.release();
  }
}

async function freshPath(base: string): Promise<string> {
  for (let n = 0; ; n++) {
    const candidate = n === 0 ? base : `${base}.${n}`;
    const exists = await access(candidate).then(
      () => true,
      () => false,
    );
    if (!exists) return candidate;
  }
}

/**
 * Ask a primary where this storage forked from it: handshake as a native
 * secondary would, read the verdict, close. Null when the primary welcomes it.
 */
export async function askForkTid(storage: FileStorage, address: ReplicationAddress, options: { transport?: Transport; clock?: Clock; timeoutMs?: number }): Promise<Buffer | null> {
  const history = await FailoverHistory.open(storage, { role: 'secondary' });
  const start = storage.lastTransaction();
  const hello = { type: 'hello' as const, startTid: start, ...history.helloFields(start), options: { blobs: storage.blobs !== null } };
  await history.close();
  const stream = await (options.transport ?? socketTransport).connect(address);
  const timeoutMs = options.timeoutMs ?? 10_000;
  const clock = options.clock ?? systemClock;
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
    stream.setHandlers({
      data: (chunk) => {
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
      close: (error) => finish(new ZrsError(`the primary closed the connection without a verdict${error ? `: ${error.message}` : ''}`)),
    });
    const packr = createNativePackr();
    stream.write(encodeFrame(nativeProtocolName()));
    stream.write(encodeNativeFrame(hello, packr));
  });
}

function describe(a: ReplicationAddress): string {
  return a.kind === 'unix' ? a.path : `${a.host}:${a.port}`;
}

function toAddress(a: string | number | ReplicationAddress): ReplicationAddress {
  return typeof a === 'object' ? a : parseAddress(a, '127.0.0.1');
}
