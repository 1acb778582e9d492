// Real sockets: TCP (IPv4/IPv6) and Unix domain sockets behind the Transport
// port. Backpressure is Node's: write() returns false past the high-water
// mark and 'drain' follows; pause()/resume() stop and restart reading.

import { createConnection, createServer, type Server, type Socket } from 'node:net';
import type { ByteStream, ByteStreamHandlers, Listener, ReplicationAddress, Transport } from '../ports/transport.js';
import { bindServer } from './listen.js';

/** A net.Socket (or tls.TLSSocket) as a ByteStream; also used by tlsTransport. */
export class SocketStream implements ByteStream {
  private handlers: ByteStreamHandlers | null = null;
  private held: Uint8Array[] = [];
  private closed = false;
  private closeError: Error | undefined;

  constructor(
    private readonly socket: Socket,
    readonly peer: string,
  ) {
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => (this.handlers ? this.handlers.data(chunk) : this.held.push(chunk)));
    socket.on('drain', () => this.handlers?.drain());
    socket.on('error', (err) => (this.closeError = err));
    socket.on('close', () => {
      this.closed = true;
      this.handlers?.close(this.closeError);
    });
    // Hold data until handlers are installed.
    socket.pause();
  }

  setHandlers(handlers: ByteStreamHandlers): void {
    this.handlers = handlers;
    const held = this.held;
    this.held = [];
    for (const c of held) handlers.data(c);
    if (this.closed) handlers.close(this.closeError);
    else this.socket.resume();
  }

  write(chunk: Uint8Array): boolean {
    if (this.closed || this.socket.destroyed) return true;
    return this.socket.write(chunk);
  }

  /** Node counts a written chunk until its write completed, when the kernel has its bytes. */
  get heldBytes(): number {
    return this.socket.writableLength;
  }

  pause(): void {
    this.socket.pause();
  }

  resume(): void {
    this.socket.resume();
  }

  end(): void {
    this.socket.end();
  }

  destroy(error?: Error): void {
    if (error) this.closeError = error;
    this.socket.destroy();
  }
}

function describe(socket: Socket, fallback: string): string {
  return socket.remoteAddress ? `${socket.remoteAddress}:${socket.remotePort}` : fallback;
}

/**
 * The name of a peer a listener accepted: its address and port over TCP; over
 * a Unix socket, which names no client, the socket's path and the connection's
 * number on this listener (`/run/zrs/p.sock#3`), so two peers, their log lines
 * and their metrics stay apart.
 */
export function acceptedPeer(socket: Socket, address: ReplicationAddress, number: number): string {
  return describe(socket, address.kind === 'unix' ? `${address.path}#${number}` : 'peer');
}

/**
 * Destroy `socket` and reject when `signal` aborts before the attempt
 * settles; returns what the attempt calls when it settles (stop listening).
 * An attempt nobody waits for any more (timed out, the node closing) must
 * not live on until the kernel or the peer gives up on it.
 */
export function untilAborted(socket: Socket, signal: AbortSignal | undefined, reject: (err: Error) => void): () => void {
  if (!signal) return () => undefined;
  const onAbort = (): void => {
    socket.destroy();
    reject(new Error('connect aborted'));
  };
  if (signal.aborted) onAbort();
  else signal.addEventListener('abort', onAbort, { once: true });
  return () => signal.removeEventListener('abort', onAbort);
}

/** The real-socket transport. */
export const socketTransport: Transport = {
  connect(address: ReplicationAddress, signal?: AbortSignal): Promise<ByteStream> {
    return new Promise((resolve, reject) => {
      const label = address.kind === 'unix' ? address.path : `${address.host || '127.0.0.1'}:${address.port}`;
      const socket =
        address.kind === 'unix'
          ? createConnection({ path: address.path })
          : createConnection({ host: address.host || '127.0.0.1', port: address.port });
      const settle = untilAborted(socket, signal, reject);
      const onError = (err: Error): void => {
        settle();
        socket.destroy();
        reject(err);
      };
      socket.once('error', onError);
      socket.once('connect', () => {
        settle();
        socket.off('error', onError);
        resolve(new SocketStream(socket, label));
      });
    });
  },

  async listen(address: ReplicationAddress, onStream: (s: ByteStream) => void): Promise<Listener> {
    let accepted = 0;
    const server: Server = createServer({ pauseOnConnect: true }, (socket) => {
      onStream(new SocketStream(socket, acceptedPeer(socket, address, ++accepted)));
    });
    const actual = await bindServer(server, address);
    return {
      address: actual,
      close: () =>
        new Promise<void>((resolve) => {
          server.close(() => resolve());
        }),
    };
  },
};
