// Serves a storage's history to any number of secondaries: listens on a
// replication address and runs one PrimarySession per connection. Used by a
// primary and by a secondary that replicates further (chains).

import type { ProtocolSpec } from '../../machines/handshake.js';
import type { Clock } from '../ports/clock.js';
import type { ByteStream, Listener, ReplicationAddress, Transport } from '../ports/transport.js';
import type { FileStorage } from '../storage/FileStorage.js';
import { formatAddress } from './address.js';
import { PrimarySession, type SessionLog, type SessionStatus } from './primarySession.js';
import { supportedProtocols } from './protocols.js';

export interface ReplicationServerOptions {
  storage: FileStorage;
  address: ReplicationAddress;
  transport: Transport;
  clock: Clock;
  log: SessionLog;
  protocols?: readonly ProtocolSpec[];
  heartbeatIntervalMs?: number;
  followBufferSize?: number;
}

export class ReplicationServer {
  private readonly sessions = new Set<PrimarySession>();
  private listener: Listener | null = null;
  private closing = false;

  private constructor(private readonly options: ReplicationServerOptions) {}

  static async start(options: ReplicationServerOptions): Promise<ReplicationServer> {
    const server = new ReplicationServer(options);
    server.listener = await options.transport.listen(options.address, (s) => server.accept(s));
    options.log('info', `replicating to ${formatAddress(server.listener.address)}`);
    return server;
  }

  /** The bound address (the real port when 0 was asked for). */
  get address(): ReplicationAddress {
    return this.listener!.address;
  }

  private accept(stream: ByteStream): void {
    if (this.closing) {
      stream.destroy();
      return;
    }
    const o = this.options;
    const session = new PrimarySession({
      storage: o.storage,
      stream,
      clock: o.clock,
      protocols: o.protocols ?? supportedProtocols(o.storage.blobs !== null),
      log: o.log,
      blobs: o.storage.blobs !== null,
      heartbeatIntervalMs: o.heartbeatIntervalMs,
      followBufferSize: o.followBufferSize,
    });
    this.sessions.add(session);
    o.log('info', `secondary connected from ${stream.peer}`);
    session.done$.subscribe({ complete: () => this.sessions.delete(session) });
  }

  /** Status of every connected secondary. */
  status(): SessionStatus[] {
    return [...this.sessions].map((s) => s.status());
  }

  get sessionCount(): number {
    return this.sessions.size;
  }

  /** Stop accepting, let every session drain what is committed, then resolve. */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    // net.Server.close waits for open connections, so do not wait for it first.
    const stopped = this.listener?.close();
    const done = [...this.sessions].map(
      (s) => new Promise<void>((resolve) => s.done$.subscribe({ complete: () => resolve() })),
    );
    for (const s of this.sessions) s.close();
    await Promise.all(done);
    await stopped;
  }
}
