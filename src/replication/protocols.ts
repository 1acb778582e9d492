// The protocols this project speaks, as data for the machines, and the
// outbound codecs (primary side) that turn stored transactions into frames
// with the protocol's running checksum. The session never branches on the
// protocol: it is handed one of these.

import { open } from 'node:fs/promises';
import type { ProtocolSpec } from '../../machines/handshake.js';
import { BlobMissingError } from '../errors.js';
import { isBlobRecord } from '../storage/blobs.js';
import type { FileStorage } from '../storage/FileStorage.js';
import { isRelocatable } from '../storage/rawAppend.js';
import type { ChainCursor } from '../failover/hashChain.js';
import { CHAIN_ORIGIN, linkOfStored } from '../failover/links.js';
import { loads, type PickleDict } from '../wire/pickle.js';
import type { TransactionRecord } from '../storage/types.js';
import { NATIVE_CHECKSUM_ALGORITHM, StreamChecksum } from '../wire/checksum.js';
import { FRAME_HEADER_BYTES, encodeFrame } from '../wire/framing.js';
import { BLOB_BLOCK_BYTES, RECORD_BLOCK_BYTES, createNativePackr, encodeCommitFrame, encodeNativeFrame, encodeTxnsFrame, MAX_HEARTBEAT_INTERVAL_MS, MAX_INLINE_RECORDS, nativeProtocolName, SUPPORTED_NATIVE_VERSIONS, type GenerationEntry, type NativeMessage, type RefuseCode } from '../wire/native.js';
import { BLOB_BLOCK_SIZE_BYTES, Zrs2Checksum, blobBlockCount, encodeMessage } from '../wire/zrs2.js';

export const NATIVE_SPEC: ProtocolSpec = { name: nativeProtocolName().toString('latin1'), kind: 'native', hasVerdict: true, hasAcks: true };
export const ZRS20_SPEC: ProtocolSpec = { name: 'zrs2.0', kind: 'zrs2', hasVerdict: false, hasAcks: false };
export const ZRS21_SPEC: ProtocolSpec = { name: 'zrs2.1', kind: 'zrs2', hasVerdict: false, hasAcks: false };

/**
 * Whether a protocol name a peer sent is one of this family's, spoken here or
 * not (`zrs2.0` at a node with blobs, a native version of another build): the
 * peer is then a replication node, not a stray connection.
 */
export function isReplicationProtocolName(name: string | null): boolean {
  return name !== null && name.startsWith('zrs');
}

/** Protocols a primary serves: zrs2.0 only when it has no blobs (as zc.zrs). */
export function supportedProtocols(hasBlobs: boolean): ProtocolSpec[] {
  return hasBlobs ? [NATIVE_SPEC, ZRS21_SPEC] : [NATIVE_SPEC, ZRS21_SPEC, ZRS20_SPEC];
}

export { isBlobRecord };

/** Frames for one transaction, yielded one at a time so a blob is never held whole. */
export interface OutboundCodec {
  readonly spec: ProtocolSpec;
  welcome(lastTid: Buffer): Buffer | null;
  /** `lastTid`: the primary's last tid, sent along (optional field) when given. */
  refusal(code: RefuseCode, message: string, forkTid?: Buffer, lastTid?: Buffer): Buffer | null;
  /** `generation`: announce the sender's current generation (after a promotion). */
  heartbeat(lastTid: Buffer, clockMs: number, generation?: GenerationEntry): Buffer | null;
  transaction(txn: TransactionRecord): AsyncGenerator<Buffer>;
  /** All frames of a transaction without blobs, built at once; null when it has blob records or is too large to build at once. */
  plainFrames(txn: TransactionRecord): Buffer[] | null;
  /** True when `txn` may travel in a batch of raw transactions (see rawFrames); always false when the peer did not ask for them. */
  acceptsRaw(txn: TransactionRecord): boolean;
  /** The buffers, to write in this order, carrying consecutive transactions accepted by acceptsRaw as their file bytes (a frame may span two buffers). */
  rawFrames(txns: readonly TransactionRecord[]): Buffer[];
}

/**
 * The raw bytes of consecutive transactions as one buffer: a view when they
 * lie next to each other in one read window (the usual case), else a copy.
 */
function adjacentBytes(txns: readonly TransactionRecord[]): Buffer {
  const first = txns[0]!.raw!;
  for (let i = 1; i < txns.length; i++) if (!follows(txns[i - 1]!.raw!, txns[i]!.raw!)) return Buffer.concat(txns.map((t) => t.raw!));
  const last = txns[txns.length - 1]!.raw!;
  return Buffer.from(first.buffer, first.byteOffset, last.byteOffset + last.length - first.byteOffset);
}

/** Whether `next` starts right where `prev` ends, in the same memory. */
function follows(prev: Buffer, next: Buffer): boolean {
  return next.buffer === prev.buffer && next.byteOffset === prev.byteOffset + prev.length;
}

async function* blobBlocks(storage: FileStorage, oid: Buffer, tid: Buffer, blockBytes: number): AsyncGenerator<Buffer, void, void> {
  let path: string;
  try {
    path = await storage.loadBlob(oid, tid);
  } catch (err) {
    throw new BlobMissingError(oid, tid, storage.blobs?.pathFor(oid, tid) ?? '(no blob directory)');
  }
  const handle = await open(path, 'r');
  try {
    for (let pos = 0; ; ) {
      const block = Buffer.allocUnsafe(blockBytes);
      const { bytesRead } = await handle.read(block, 0, blockBytes, pos);
      if (bytesRead === 0) return;
      pos += bytesRead;
      yield block.subarray(0, bytesRead);
    }
  } finally {
    await handle.close();
  }
}

async function blobSize(storage: FileStorage, oid: Buffer, tid: Buffer): Promise<number> {
  const path = await storage.loadBlob(oid, tid).catch(() => {
    throw new BlobMissingError(oid, tid, storage.blobs?.pathFor(oid, tid) ?? '(no blob directory)');
  });
  const h = await open(path, 'r');
  try {
    return (await h.stat()).size;
  } finally {
    await h.close();
  }
}

/**
 * Largest transaction sent whole, in one frame (inline `txn`, or inside a
 * raw run); a larger one goes record by record. A record larger than this
 * goes in blocks (`large-record`) to a secondary that asked for them; to
 * one that did not, whole, bounded by its frame limit.
 */
export const WHOLE_TXN_MAX_BYTES = 16 * 1024 * 1024;

/** The welcome's heartbeatIntervalMs: whole ms, and only an interval a secondary accepts (longer ones are not announced). */
function announcedInterval(ms: number | undefined): { heartbeatIntervalMs?: number } {
  if (ms === undefined || !(ms > 0) || ms > MAX_HEARTBEAT_INTERVAL_MS) return {};
  return { heartbeatIntervalMs: Math.ceil(ms) };
}

/** Bytes of record data a transaction carries: over a bound, it is not built in memory whole. */
function dataBytes(txn: TransactionRecord): number {
  return txn.records.reduce((n, r) => n + (r.data?.length ?? 0), 0);
}

/** The native (msgpack) protocol's outbound side. */
export function nativeOutbound(
  storage: FileStorage,
  startTid: Buffer,
  options: {
    blobs: boolean;
    generations?: () => { generation: GenerationEntry; generations: GenerationEntry[] };
    /** The hash-chain link at a tid: sent with packed transactions (see docs/FAILOVER.md). */
    link?: (tid: Buffer) => Buffer | null;
    /** The secondary asked for `txns` messages (whole transactions as file bytes). */
    rawTxns?: boolean;
    /** The secondary asked to check runs by their links, and these are the served storage's (see docs/PROTOCOL.md, Checksum). */
    txnLinks?: Pick<ChainCursor, 'linksOf'>;
    /** The secondary asked for the segmented checksum rule (docs/PROTOCOL.md, Checksum). */
    segmentedChecksum?: boolean;
    /** The secondary asked for records larger than wholeTxnMaxBytes in blocks (`large-record`). */
    largeRecords?: boolean;
    /** Default WHOLE_TXN_MAX_BYTES. */
    wholeTxnMaxBytes?: number;
    /** The session heartbeats every this many ms while live and idle (announced in welcome); 0 or absent: never. */
    heartbeatIntervalMs?: number;
    /** The serving node's upstream path, current (sent in welcome and in every heartbeat). */
    upstreamPath?: () => Buffer[];
  },
): OutboundCodec {
  const wholeMax = options.wholeTxnMaxBytes ?? WHOLE_TXN_MAX_BYTES;
  const linked = options.rawTxns === true ? options.txnLinks : undefined;
  const packr = createNativePackr();
  const segmented = options.segmentedChecksum === true;
  const largeRecords = options.largeRecords === true;
  const checksum = new StreamChecksum(startTid, NATIVE_CHECKSUM_ALGORITHM, segmented ? 'segmented' : 'running');
  const frame = (msg: NativeMessage): Buffer => {
    const f = encodeNativeFrame(msg, packr);
    checksum.update(f.subarray(4));
    return f;
  };
  /** A commit without a link, fed to the checksum. */
  const commitFrame = (): Buffer => {
    const f = encodeCommitFrame(checksum.digest());
    checksum.update(f.subarray(FRAME_HEADER_BYTES));
    return f;
  };
  const path = (): { upstreamPath?: Buffer[] } => (options.upstreamPath ? { upstreamPath: options.upstreamPath() } : {});
  const packedLink = (txn: TransactionRecord): { link?: Buffer } => {
    const link = txn.status === 'p' ? options.link?.(txn.tid) : null;
    return link ? { link } : {};
  };
  return {
    spec: NATIVE_SPEC,
    welcome: (lastTid) =>
      encodeNativeFrame(
        {
          type: 'welcome',
          lastTid,
          ...(options.generations?.() ?? { generation: { generation: 0, startTid: Buffer.alloc(8) } }),
          options: { blobs: options.blobs, compression: 'none', ...(options.rawTxns ? { rawTxns: true } : {}), ...(linked ? { txnLinks: true } : {}), ...(segmented ? { segmentedChecksum: true } : {}), ...(largeRecords ? { largeRecords: true } : {}) },
          ...announcedInterval(options.heartbeatIntervalMs),
          ...path(),
        },
        packr,
      ),
    refusal: (code, message, forkTid, lastTid) =>
      encodeNativeFrame(
        {
          type: 'refuse',
          code,
          message,
          ...(forkTid ? { forkTid } : {}),
          ...(lastTid ? { lastTid } : {}),
          // What a diverged node's own promotion must go past.
          ...(code === 'diverged' && options.generations ? { generation: options.generations().generation } : {}),
          // The frozen version refusal names the versions this primary speaks, so a newer peer can fall back.
          ...(code === 'unsupported-version' ? { supportedVersions: [...SUPPORTED_NATIVE_VERSIONS] } : {}),
        },
        packr,
      ),
    heartbeat: (lastTid, clockMs, generation) => frame({ type: 'heartbeat', lastTid, clockMs, ...(generation ? { generation } : {}), ...path() }),
    plainFrames(txn) {
      if (options.blobs && storage.blobs && txn.records.some((r) => isBlobRecord(r.data))) return null;
      if (txn.records.length > MAX_INLINE_RECORDS || dataBytes(txn) > wholeMax) return null;
      // The inline form: one message carries the whole transaction.
      const records = txn.records.map((r) => ({ oid: r.oid, dataTxn: r.dataTxn, data: r.data }));
      const head = frame({ type: 'txn', tid: txn.tid, status: txn.status as ' ' | 'p', user: txn.user, description: txn.description, extension: txn.extensionBytes, records });
      return [head, txn.status === 'p' ? frame({ type: 'commit', checksum: checksum.digest(), ...packedLink(txn) }) : commitFrame()];
    },
    acceptsRaw(txn) {
      if (!options.rawTxns || txn.raw === undefined || txn.raw.length > wholeMax) return false;
      // Backpointers name positions in this file; blobs need their files sent.
      return isRelocatable(txn.raw, options.blobs && storage.blobs !== null ? isBlobRecord : undefined);
    },
    rawFrames(txns) {
      const run = { type: 'txns', count: txns.length, lastTid: txns[txns.length - 1]!.tid, bytes: adjacentBytes(txns) } as const;
      if (linked === undefined) {
        const [head, bytes] = encodeTxnsFrame(run);
        checksum.update(head.subarray(FRAME_HEADER_BYTES));
        checksum.update(bytes);
        return [head, bytes, commitFrame()];
      }
      // The links stand for the bytes in the checksum: the chain's own when it holds them all.
      const known = linked.linksOf(txns.map((t) => t.tid));
      const prevLink = known?.prev ?? CHAIN_ORIGIN;
      let prev = prevLink;
      const links = known?.links ?? txns.map((t) => (prev = linkOfStored(prev, t.raw!)!));
      const [head, bytes] = encodeTxnsFrame({ ...run, prevLink });
      checksum.update(head.subarray(FRAME_HEADER_BYTES)); // the payload but the transactions, which end it
      checksum.update(Buffer.concat(links));
      return [head, bytes, commitFrame()];
    },
    async *transaction(txn) {
      yield frame({ type: 'txn', tid: txn.tid, status: txn.status as ' ' | 'p', user: txn.user, description: txn.description, extension: txn.extensionBytes });
      for (const r of txn.records) {
        if (largeRecords && r.data !== null && r.data.length > wholeMax) {
          yield frame({ type: 'large-record', oid: r.oid, dataTxn: r.dataTxn, size: r.data.length });
          for (let at = 0; at < r.data.length; at += RECORD_BLOCK_BYTES) yield frame({ type: 'record-block', bytes: r.data.subarray(at, at + RECORD_BLOCK_BYTES) });
        } else yield frame({ type: 'record', oid: r.oid, dataTxn: r.dataTxn, data: r.data });
        if (options.blobs && storage.blobs && isBlobRecord(r.data)) {
          const size = await blobSize(storage, r.oid, txn.tid);
          yield frame({ type: 'blob', oid: r.oid, size });
          for await (const bytes of blobBlocks(storage, r.oid, txn.tid, BLOB_BLOCK_BYTES)) yield frame({ type: 'blob-block', bytes });
        }
      }
      const digest = checksum.digest();
      yield frame({ type: 'commit', checksum: digest, ...packedLink(txn) });
    },
  };
}

/** zc.zrs's zrs2.0 / zrs2.1 outbound side: byte-compatible with its primary. */
export function zrs2Outbound(storage: FileStorage, startTid: Buffer, spec: ProtocolSpec): OutboundCodec {
  const checksum = new Zrs2Checksum(startTid);
  const frame = (payload: Buffer): Buffer => {
    checksum.update(payload);
    return encodeFrame(payload);
  };
  const blobs = spec.name === 'zrs2.1' && storage.blobs !== null;
  return {
    spec,
    welcome: () => null,
    refusal: () => null,
    heartbeat: () => null,
    acceptsRaw: () => false,
    rawFrames: () => {
      throw new Error('zc.zrs protocols carry no raw transactions');
    },
    plainFrames(txn) {
      if (blobs && txn.records.some((r) => isBlobRecord(r.data))) return null;
      // A large one goes frame by frame, each written as the socket takes it: built at once, its
      // frames would be a second copy of it in memory for each session sending it.
      if (dataBytes(txn) > WHOLE_TXN_MAX_BYTES) return null;
      const out = [frame(encodeMessage({ type: 'T', tid: txn.tid, status: txn.status, user: txn.user, description: txn.description, extension: extensionDict(txn.extensionBytes) }))];
      for (const r of txn.records) {
        out.push(frame(encodeMessage({ type: 'S', oid: r.oid, tid: txn.tid, version: '', dataTxn: r.dataTxn })));
        out.push(frame(r.data ?? Buffer.alloc(0)));
      }
      out.push(frame(encodeMessage({ type: 'C', digest: checksum.digest() })));
      return out;
    },
    async *transaction(txn) {
      yield frame(
        encodeMessage({ type: 'T', tid: txn.tid, status: txn.status, user: txn.user, description: txn.description, extension: extensionDict(txn.extensionBytes) }),
      );
      for (const r of txn.records) {
        if (blobs && isBlobRecord(r.data)) {
          const size = await blobSize(storage, r.oid, txn.tid);
          yield frame(encodeMessage({ type: 'B', oid: r.oid, tid: txn.tid, version: '', dataTxn: r.dataTxn, blocks: blobBlockCount(size) }));
          yield frame(r.data ?? Buffer.alloc(0));
          for await (const block of blobBlocks(storage, r.oid, txn.tid, BLOB_BLOCK_SIZE_BYTES)) yield frame(block);
        } else {
          yield frame(encodeMessage({ type: 'S', oid: r.oid, tid: txn.tid, version: '', dataTxn: r.dataTxn }));
          yield frame(r.data ?? Buffer.alloc(0));
        }
      }
      yield frame(encodeMessage({ type: 'C', digest: checksum.digest() }));
    },
  };
}


/**
 * The extension as zc.zrs sends it: the stored dict, key order kept, with
 * values outside the plain subset (a datetime) carried as the opcodes that
 * build them.
 */
function extensionDict(bytes: Buffer): PickleDict {
  if (bytes.length === 0) return new Map();
  const v = loads(bytes, { objects: true });
  return v instanceof Map ? v : new Map();
}
