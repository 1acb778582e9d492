// Asks a running node for its status without replicating: sends the native
// protocol name, then a `status-request` instead of `hello`, reads the one
// `status` reply and closes. Bounded: one reply frame of at most
// STATUS_REPLY_MAX_BYTES, and the whole exchange within a timeout.

import { ZrsError } from '../errors.js';
import { systemClock } from '../node/clock.js';
import { socketTransport } from '../node/socketTransport.js';
import type { Clock } from '../ports/clock.js';
import type { ByteStream, ReplicationAddress, Transport } from '../ports/transport.js';
import { encodeFrame, FrameDecoder } from '../wire/framing.js';
import {
  STATUS_REPLY_MAX_BYTES,
  createNativePackr,
  createNativeUnpackr,
  decodeNative,
  encodeNativeFrame,
  nativeProtocolName,
  type NodeStatus,
} from '../wire/native.js';
import { formatAddress, parseAddress } from './address.js';

/** Default bound on connecting and receiving the reply, in ms. */
export const DEFAULT_STATUS_TIMEOUT_MS = 10_000;

/** The node could not be reached (refused, unreachable, no such socket, connect timeout). */
export class StatusConnectError extends ZrsError {
  override name = 'StatusConnectError';
  constructor(
    readonly address: string,
    readonly reason: string,
    options?: { cause?: unknown },
  ) {
    super(`can't connect to ${address}: ${reason}`, options);
  }
}

/** The node was reached but gave no valid status (closed, refused, garbage, timeout). */
export class StatusReplyError extends ZrsError {
  override name = 'StatusReplyError';
  constructor(
    readonly address: string,
    readonly reason: string,
    options?: { cause?: unknown },
  ) {
    super(`no status from ${address}: ${reason}`, options);
  }
}

export interface StatusRequestOptions {
  transport?: Transport;
  clock?: Clock;
  /** Bound on connecting, and again on the reply, in ms. Default DEFAULT_STATUS_TIMEOUT_MS. */
  timeoutMs?: number;
}

/**
 * Ask the node at `address` for its status. A bare port means 127.0.0.1.
 *
 * @throws StatusConnectError when it cannot connect, StatusReplyError when the reply is missing or invalid.
 * @example
 * const status = await requestStatus('127.0.0.1:5000');
 * console.log(status.role, status.lastTid.toString('hex'));
 */
export async function requestStatus(address: string | number | ReplicationAddress, options: StatusRequestOptions = {}): Promise<NodeStatus> {
  const target = typeof address === 'object' ? address : parseAddress(address, '127.0.0.1');
  const label = formatAddress(target);
  const clock = options.clock ?? systemClock;
  const timeoutMs = options.timeoutMs ?? DEFAULT_STATUS_TIMEOUT_MS;
  const stream = await connectWithin(options.transport ?? socketTransport, target, label, clock, timeoutMs);
  return exchange(stream, label, clock, timeoutMs);
}

function connectWithin(transport: Transport, target: ReplicationAddress, label: string, clock: Clock, timeoutMs: number): Promise<ByteStream> {
  return new Promise((resolve, reject) => {
    let timedOut = false;
    const timer = clock.setTimeout(() => {
      timedOut = true;
      reject(new StatusConnectError(label, 'timed out'));
    }, timeoutMs);
    transport.connect(target).then(
      (stream) => {
        clock.clearTimeout(timer);
        if (timedOut) stream.destroy();
        else resolve(stream);
      },
      (err: unknown) => {
        clock.clearTimeout(timer);
        if (!timedOut) reject(new StatusConnectError(label, connectReason(err), { cause: err }));
      },
    );
  });
}

/** The reason a connect failed, as an operator reads it. */
function connectReason(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function exchange(stream: ByteStream, label: string, clock: Clock, timeoutMs: number): Promise<NodeStatus> {
  return new Promise((resolve, reject) => {
    const decoder = new FrameDecoder({ maxFrameBytes: STATUS_REPLY_MAX_BYTES });
    let settled = false;
    const finish = (result: NodeStatus | Error): void => {
      if (settled) return;
      settled = true;
      clock.clearTimeout(timer);
      stream.destroy();
      if (result instanceof Error) reject(result);
      else resolve(result);
    };
    const timer = clock.setTimeout(() => finish(new StatusReplyError(label, `no reply within ${timeoutMs} ms`)), timeoutMs);
    stream.setHandlers({
      data: (chunk) => {
        if (settled) return;
        try {
          decoder.feed(chunk);
          for (let f = decoder.next(); f !== null; f = decoder.next()) {
            if (f.length === 0) continue; // keep-alive
            return finish(readReply(f, label));
          }
        } catch (err) {
          finish(new StatusReplyError(label, (err as Error).message, { cause: err }));
        }
      },
      drain: () => undefined,
      close: (error) =>
        finish(
          new StatusReplyError(
            label,
            error ? error.message : 'the node closed the connection without a status (a zc.zrs node, or a version without status requests?)',
            { cause: error },
          ),
        ),
    });
    const packr = createNativePackr();
    stream.write(encodeFrame(nativeProtocolName()));
    stream.write(encodeNativeFrame({ type: 'status-request' }, packr));
  });
}

function readReply(payload: Buffer, label: string): NodeStatus | Error {
  const msg = decodeNative(payload, createNativeUnpackr(), 'primary');
  if (msg.type === 'refuse') return new StatusReplyError(label, `refused (${msg.code}): ${msg.message}`);
  if (msg.type !== 'status') return new StatusReplyError(label, `expected a status message, got ${msg.type}`);
  const { type: _type, ...status } = msg;
  return status;
}
