// One request to a running node over its replication address, without
// replicating: send the native protocol name and one message instead of
// `hello`, read one reply frame, close. Status, promote and pack requests
// go through here (a pack request's progress messages come before its
// reply). Bounded: each frame has a size limit, and connecting and replying
// each have a timeout on the injected clock.

import { ZrsError } from '../errors.js';
import { systemClock } from '../node/clock.js';
import { socketTransport } from '../node/socketTransport.js';
import type { Clock } from '../ports/clock.js';
import type { ByteStream, ReplicationAddress, Transport } from '../ports/transport.js';
import { encodeFrame, foreignPeer, FrameDecoder } from '../wire/framing.js';
import {
  createNativePackr,
  createNativeUnpackr,
  decodeNative,
  encodeNativeFrame,
  nativeProtocolName,
  type PrimaryMessage,
  type SecondaryMessage,
} from '../wire/native.js';
import { formatAddress, parseAddress } from './address.js';

/** What a node closing on a request without a word may mean for a port with `<ssl>`, asked over plain TCP. */
export const PLAIN_TO_TLS_HINT = 'a port with <ssl> asked without TLS: --ssl-certificate on the command line, a tlsTransport in the library';

/** A request to a node that failed: where it went, why, and the message saying so. */
export class NodeRequestError extends ZrsError {
  constructor(
    readonly address: string,
    readonly reason: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export interface NodeRequestOptions {
  transport?: Transport;
  clock?: Clock;
  /** Bound on connecting, and again on the reply (on each silence before it, for a request whose kind takes interim messages), in ms. */
  timeoutMs?: number;
}

/** How one kind of request reports what went wrong and reads its reply. */
export interface NodeRequestKind<T> {
  request: SecondaryMessage;
  maxReplyBytes: number;
  defaultTimeoutMs: number;
  /** The node could not be reached. */
  connectError(label: string, reason: string, cause?: unknown): Error;
  /** The node was reached but gave no valid reply. */
  replyError(label: string, reason: string, cause?: unknown): Error;
  /** What a close without a reply most likely means. */
  closedWithoutReply: string;
  /** The reply, or the error it stands for. */
  read(msg: PrimaryMessage, label: string): T | Error;
  /**
   * A message that comes before the reply (a pack's progress): true when
   * `msg` is one, taken here. Each such message starts the reply's timeout
   * over, so the timeout bounds the silence, not the whole request.
   */
  interim?(msg: PrimaryMessage): boolean;
}

/**
 * Send `kind.request` to the node at `address` (a bare port means 127.0.0.1) and read its reply.
 *
 * @example
 * const reply = await askNode('127.0.0.1:5000', statusKind, { timeoutMs: 5_000 });
 */
export async function askNode<T>(address: string | number | ReplicationAddress, kind: NodeRequestKind<T>, options: NodeRequestOptions = {}): Promise<T> {
  const target = typeof address === 'object' ? address : parseAddress(address, '127.0.0.1');
  const label = formatAddress(target);
  const clock = options.clock ?? systemClock;
  const timeoutMs = options.timeoutMs ?? kind.defaultTimeoutMs;
  const stream = await connectWithin(options.transport ?? socketTransport, target, label, clock, timeoutMs, kind);
  return exchange(stream, label, clock, timeoutMs, kind);
}

function connectWithin<T>(transport: Transport, target: ReplicationAddress, label: string, clock: Clock, timeoutMs: number, kind: NodeRequestKind<T>): Promise<ByteStream> {
  return new Promise((resolve, reject) => {
    let timedOut = false;
    // The attempt is abandoned with the wait: its socket does not outlive the request.
    const attempt = new AbortController();
    const timer = clock.setTimeout(() => {
      timedOut = true;
      attempt.abort();
      reject(kind.connectError(label, 'timed out'));
    }, timeoutMs);
    transport.connect(target, attempt.signal).then(
      (stream) => {
        clock.clearTimeout(timer);
        if (timedOut) stream.destroy();
        else resolve(stream);
      },
      (err: unknown) => {
        clock.clearTimeout(timer);
        if (!timedOut) reject(kind.connectError(label, err instanceof Error ? err.message : String(err), err));
      },
    );
  });
}

function exchange<T>(stream: ByteStream, label: string, clock: Clock, timeoutMs: number, kind: NodeRequestKind<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    const decoder = new FrameDecoder({ maxFrameBytes: kind.maxReplyBytes });
    const unpackr = createNativeUnpackr();
    let settled = false;
    const finish = (result: T | Error): void => {
      if (settled) return;
      settled = true;
      clock.clearTimeout(timer);
      stream.destroy();
      if (result instanceof Error) reject(result);
      else resolve(result);
    };
    const expire = (): void => finish(kind.replyError(label, `no reply within ${timeoutMs} ms`));
    let timer = clock.setTimeout(expire, timeoutMs);
    let first = true;
    stream.setHandlers({
      data: (chunk) => {
        if (settled) return;
        // The first bytes read as a length would be absurd; say what they are instead.
        const foreign = first ? foreignPeer(chunk) : null;
        if (foreign) return finish(kind.replyError(label, `this is ${foreign}, not a replication address`));
        first = false;
        try {
          decoder.feed(chunk);
          for (let f = decoder.next(); f !== null; f = decoder.next()) {
            if (f.length === 0) continue; // keep-alive
            const msg = decodeNative(f, unpackr, 'primary');
            if (kind.interim?.(msg)) {
              clock.clearTimeout(timer);
              timer = clock.setTimeout(expire, timeoutMs);
              continue;
            }
            return finish(kind.read(msg, label));
          }
        } catch (err) {
          finish(kind.replyError(label, (err as Error).message, err));
        }
      },
      drain: () => undefined,
      close: (error) => finish(kind.replyError(label, error ? error.message : kind.closedWithoutReply, error)),
    });
    const packr = createNativePackr();
    stream.write(encodeFrame(nativeProtocolName()));
    stream.write(encodeNativeFrame(kind.request, packr));
  });
}
