// Asks a running secondary to promote itself (`zrs promote ADDRESS`): sends
// the native protocol name, then a `promote-request` instead of `hello`, and
// reads the one `promoted` or `promote-refused` reply. The node accepts it
// only on its own replication address: whoever may replicate from it may
// promote it (docs/OPERATIONS.md, Security).

import { PromotionRefusedError } from '../failover/promote.js';
import type { ReplicationAddress } from '../ports/transport.js';
import { PROMOTE_REPLY_MAX_BYTES, type GenerationEntry, type PrimaryMessage } from '../wire/native.js';
import { NodeRequestError, askNode, type NodeRequestKind, type NodeRequestOptions, PLAIN_TO_TLS_HINT } from './nodeRequest.js';

/** Default bound on connecting, and again on the reply (the promotion itself), in ms. */
export const DEFAULT_PROMOTE_TIMEOUT_MS = 30_000;

/** The node could not be reached, or gave no valid answer (closed, garbage, timeout). */
export class PromoteRequestError extends NodeRequestError {
  override name = 'PromoteRequestError';
  constructor(address: string, reason: string, options?: { cause?: unknown }) {
    super(address, reason, `promote request to ${address} failed: ${reason}`, options);
  }
}

export interface PromoteRequestOptions extends NodeRequestOptions {
  /** Promote even while the node is connected to a live primary, or diverged. */
  force?: boolean;
}

/** What a promoted node answered. */
export interface PromoteReply {
  /** The new generation; its `startTid` is the node's last tid, the one the new history starts after. */
  generation: GenerationEntry;
  /** Downstream sessions the node kept serving. */
  sessionsKept: number;
}

/**
 * Promote the secondary serving at `address` (a bare port means 127.0.0.1).
 *
 * @throws PromotionRefusedError (with `code`: `already-primary`, `refused`,
 *   `not-promotable`, `failed`) when the node answered no; PromoteRequestError
 *   when it could not be asked.
 * @example
 * const { generation } = await requestPromotion('10.0.0.6:5000');
 * console.log(`generation ${generation.generation} from ${generation.startTid.toString('hex')}`);
 */
export function requestPromotion(address: string | number | ReplicationAddress, options: PromoteRequestOptions = {}): Promise<PromoteReply> {
  return askNode(address, promoteKind(options.force === true), options);
}

function promoteKind(force: boolean): NodeRequestKind<PromoteReply> {
  return {
    request: { type: 'promote-request', force },
    maxReplyBytes: PROMOTE_REPLY_MAX_BYTES,
    defaultTimeoutMs: DEFAULT_PROMOTE_TIMEOUT_MS,
    connectError: (label, reason, cause) => new PromoteRequestError(label, `can't connect: ${reason}`, { cause }),
    // Asked and no answer in time: the node may still carry the promotion out, and a second promoted node is a split brain.
    replyError: (label, reason, cause) =>
      new PromoteRequestError(label, reason.startsWith('no reply within') ? `${reason}; the node may still promote itself: check it (zrs status ${label}, with the same --ssl-* flags) before promoting another` : reason, { cause }),
    closedWithoutReply: `the node closed the connection without an answer (a zc.zrs node, a version without promote requests, or ${PLAIN_TO_TLS_HINT})`,
    read: readReply,
  };
}

function readReply(msg: PrimaryMessage, label: string): PromoteReply | Error {
  if (msg.type === 'promoted') return { generation: msg.generation, sessionsKept: msg.sessionsKept };
  if (msg.type === 'promote-refused') return new PromotionRefusedError(`${label} did not promote itself (${msg.code}): ${msg.message}`, msg.code);
  if (msg.type === 'refuse') return new PromoteRequestError(label, `refused (${msg.code}): ${msg.message}`);
  return new PromoteRequestError(label, `expected an answer to the promote request, got ${msg.type}`);
}
