// Asks a running node for its status without replicating: sends the native
// protocol name, then a `status-request` instead of `hello`, reads the one
// `status` reply and closes. Bounded: one reply frame of at most
// STATUS_REPLY_MAX_BYTES, and the whole exchange within a timeout.

import type { ReplicationAddress } from '../ports/transport.js';
import { STATUS_REPLY_MAX_BYTES, type NodeStatus, type PrimaryMessage } from '../wire/native.js';
import { NodeRequestError, askNode, type NodeRequestKind, type NodeRequestOptions, PLAIN_TO_TLS_HINT } from './nodeRequest.js';

/** Default bound on connecting and receiving the reply, in ms. */
export const DEFAULT_STATUS_TIMEOUT_MS = 10_000;

/** The node could not be reached (refused, unreachable, no such socket, connect timeout). */
export class StatusConnectError extends NodeRequestError {
  override name = 'StatusConnectError';
  constructor(address: string, reason: string, options?: { cause?: unknown }) {
    super(address, reason, `can't connect to ${address}: ${reason}`, options);
  }
}

/** The node was reached but gave no valid status (closed, refused, garbage, timeout). */
export class StatusReplyError extends NodeRequestError {
  override name = 'StatusReplyError';
  constructor(address: string, reason: string, options?: { cause?: unknown }) {
    super(address, reason, `no status from ${address}: ${reason}`, options);
  }
}

/** `timeoutMs` defaults to DEFAULT_STATUS_TIMEOUT_MS. */
export type StatusRequestOptions = NodeRequestOptions;

/**
 * Ask the node at `address` for its status. A bare port means 127.0.0.1.
 *
 * @throws StatusConnectError when it cannot connect, StatusReplyError when the reply is missing or invalid.
 * @example
 * const status = await requestStatus('127.0.0.1:5000');
 * console.log(status.role, status.lastTid.toString('hex'));
 */
export async function requestStatus(address: string | number | ReplicationAddress, options: StatusRequestOptions = {}): Promise<NodeStatus> {
  return askNode(address, STATUS_REQUEST, options);
}

const STATUS_REQUEST: NodeRequestKind<NodeStatus> = {
  request: { type: 'status-request' },
  maxReplyBytes: STATUS_REPLY_MAX_BYTES,
  defaultTimeoutMs: DEFAULT_STATUS_TIMEOUT_MS,
  connectError: (label, reason, cause) => new StatusConnectError(label, reason, { cause }),
  replyError: (label, reason, cause) => new StatusReplyError(label, reason, { cause }),
  closedWithoutReply: `the node closed the connection without a status (a zc.zrs node, a version without status requests, or ${PLAIN_TO_TLS_HINT})`,
  read: readReply,
};

function readReply(msg: PrimaryMessage, label: string): NodeStatus | Error {
  if (msg.type === 'refuse') return new StatusReplyError(label, `refused (${msg.code}): ${msg.message}`);
  if (msg.type !== 'status') return new StatusReplyError(label, `expected a status message, got ${msg.type}`);
  const { type: _type, ...status } = msg;
  return status;
}
