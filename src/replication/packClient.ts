// Asks a running node to pack its own data file (`zrs pack ADDRESS`): sends
// the native protocol name, then a `pack-request` instead of `hello`, reads
// `pack-progress` messages while the node packs, then the one `packed` or
// `pack-refused` reply. The node accepts it only on its own replication
// address: whoever may replicate from it may pack it (docs/OPERATIONS.md,
// Security).

import { ZrsError } from '../errors.js';
import type { ReplicationAddress } from '../ports/transport.js';
import type { PackProgress, PackReport } from '../storage/pack.js';
import { PACK_REPLY_MAX_BYTES, type PackRefusalCode, type PrimaryMessage } from '../wire/native.js';
import { NodeRequestError, askNode, type NodeRequestKind, type NodeRequestOptions, PLAIN_TO_TLS_HINT } from './nodeRequest.js';

/**
 * Default bound on connecting, and on each silence while the node packs, in
 * ms (a packing node reports where it is every second).
 */
export const DEFAULT_PACK_TIMEOUT_MS = 30_000;

/** The node could not be reached, or gave no valid answer (closed, garbage, silent too long). */
export class PackRequestError extends NodeRequestError {
  override name = 'PackRequestError';
  constructor(address: string, reason: string, options?: { cause?: unknown }) {
    super(address, reason, `pack request to ${address} failed: ${reason}`, options);
  }
}

/** The node answered that it did not pack: `refused`, `not-packable` or `gc-refused` (nothing changed), or `failed` (see PackRefusalCode). */
export class PackRefusedError extends ZrsError {
  override name = 'PackRefusedError';
  constructor(
    message: string,
    readonly code: PackRefusalCode,
  ) {
    super(message);
  }
}

export interface PackRequestOptions extends NodeRequestOptions {
  /** Garbage-collect too (default true, as ZODB's pack). */
  gc?: boolean;
  /** Called with each progress message the node sends (about once a second). */
  onProgress?: (progress: PackProgress) => void;
}

/** What the node answered: its pack's report. */
export type PackReply = PackReport;

/**
 * Ask the node serving at `address` (a bare port means 127.0.0.1) to pack
 * its own data file to `packTime` (seconds since the epoch), and wait for
 * the pack to end.
 *
 * @throws PackRefusedError (with `code`) when the node answered no or its
 *   pack failed; PackRequestError when it could not be asked, or went silent.
 * @example
 * const reply = await requestPack('10.0.0.6:5000', Date.now() / 1000 - 7 * 86400);
 * console.log(`${reply.sizeBefore} -> ${reply.sizeAfter} bytes`);
 */
export function requestPack(address: string | number | ReplicationAddress, packTime: number, options: PackRequestOptions = {}): Promise<PackReply> {
  return askNode(address, packKind(packTime, options.gc ?? true, options.onProgress), options);
}

function packKind(time: number, gc: boolean, onProgress: PackRequestOptions['onProgress']): NodeRequestKind<PackReply> {
  return {
    request: { type: 'pack-request', time, gc },
    maxReplyBytes: PACK_REPLY_MAX_BYTES,
    defaultTimeoutMs: DEFAULT_PACK_TIMEOUT_MS,
    connectError: (label, reason, cause) => new PackRequestError(label, `can't connect: ${reason}`, { cause }),
    // Silent too long: the pack may still be under way, or have ended.
    replyError: (label, reason, cause) =>
      new PackRequestError(label, reason.startsWith('no reply within') ? `${reason}; the node may still be packing: see its log` : reason, { cause }),
    closedWithoutReply:
      `the node closed the connection without an answer (a zc.zrs node, a version without pack requests, a node closing, or ${PLAIN_TO_TLS_HINT})`,
    interim: (msg) => {
      if (msg.type !== 'pack-progress') return false;
      onProgress?.({ step: msg.step, done: msg.done, total: msg.total });
      return true;
    },
    read: readReply,
  };
}

function readReply(msg: PrimaryMessage, label: string): PackReply | Error {
  if (msg.type === 'packed') {
    const { type: _type, ...reply } = msg;
    return reply;
  }
  if (msg.type === 'pack-refused') return new PackRefusedError(`${label} did not pack (${msg.code}): ${msg.message}`, msg.code);
  if (msg.type === 'refuse') return new PackRequestError(label, `refused (${msg.code}): ${msg.message}`);
  return new PackRequestError(label, `expected an answer to the pack request, got ${msg.type}`);
}
