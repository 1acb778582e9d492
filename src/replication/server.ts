// Serves a storage's history to any number of secondaries: listens on a
// replication address and runs one PrimarySession per connection. Used by a
// primary and by a secondary that replicates further (chains).

import type { ProtocolSpec } from '../../machines/handshake.js';
import type { Clock } from '../ports/clock.js';
import type { ByteStream, Listener, ReplicationAddress, Transport } from '../ports/transport.js';
import type { FileStorage } from '../storage/FileStorage.js';
import { MAX_HEARTBEAT_INTERVAL_MS, type NodeStatus } from '../wire/native.js';
import { ZrsError } from '../errors.js';
import { formatAddress } from './address.js';
import { buildNodeStatus } from './nodeStatus.js';
import { notPackable, notPromotable, PrimarySession, type PrimarySessionOptions, type SessionLog, type SessionStatus } from './primarySession.js';
import { supportedProtocols } from './protocols.js';
import { LiveFeed } from './liveFeed.js';
import { ConnectionLogGate, FLOOD_LOG_INTERVAL_MS, FloodWarning } from './log.js';
import { SendPacer } from './sendPacer.js';
import type { FailoverHistory } from '../failover/history.js';


/**
 * How often a node heartbeats each idle native secondary by default: often
 * enough that the secondary's lag and heartbeat age stay current to about a
 * second, cheap enough (one small frame per session) to leave on.
 */
export const DEFAULT_HEARTBEAT_INTERVAL_MS = 1000;

/**
 * Connections served at once by default (secondaries, and requests not yet
 * past their handshake): a flood of connections to the replication address
 * is turned away here rather than taking every file descriptor the process
 * has, which its storage needs to commit.
 */
export const DEFAULT_MAX_CONNECTIONS = 256;

export interface ReplicationServerOptions {
  storage: FileStorage;
  address: ReplicationAddress;
  transport: Transport;
  clock: Clock;
  log: SessionLog;
  protocols?: readonly ProtocolSpec[];
  /** Heartbeats to idle native secondaries every this many ms; 0 turns them off. Default DEFAULT_HEARTBEAT_INTERVAL_MS. */
  heartbeatIntervalMs?: number;
  followBufferSize?: number;
  /** The share of a busy event loop that sends to secondaries may take (see SendPacer). Default 0.1. */
  sendShare?: number;
  /** Connections served at once; more are closed as they arrive (default DEFAULT_MAX_CONNECTIONS). */
  maxConnections?: number;
  /** Connections logged line by line every 10 s; later ones are counted until they identify themselves (see ConnectionLogGate). */
  connectionLogBurst?: number;
  /**
   * The node's status for a status request, given the sessions other than the
   * asking one. Default: a primary's status from the storage and the sessions.
   */
  nodeStatus?: (sessions: SessionStatus[]) => NodeStatus;
  /** Called with each session as it starts (metrics follow sessions through it). */
  onSession?: (session: PrimarySession) => void;
  /** The storage's generations and hash chain: sessions refuse diverged secondaries and send the history in welcome. */
  history?: FailoverHistory;
  /**
   * Carries out a promote request received on this address (a secondary
   * promoting itself; a primary answers `already-primary`). Default: refused
   * as `not-promotable`.
   */
  promote?: PromoteHandler;
  /** Carries out a pack request received on this address (the node packs its own file). Default: refused as `not-packable`. */
  pack?: PackHandler;
  /** The node's upstream path (its id, then those of the nodes it replicates from), for loop detection; see PrimarySessionOptions. */
  upstreamPath?: () => Buffer[];
}

/** See ReplicationServerOptions.promote. */
export type PromoteHandler = NonNullable<PrimarySessionOptions['promote']>;

/** See ReplicationServerOptions.pack. */
export type PackHandler = NonNullable<PrimarySessionOptions['pack']>;

/** What a node that takes over a running server (a promoted secondary's Primary) replaces. */
export type ServerRole = Pick<ReplicationServerOptions, 'nodeStatus' | 'onSession' | 'promote' | 'pack' | 'upstreamPath'>;

export class ReplicationServer {
  private readonly sessions = new Set<PrimarySession>();
  /** Sockets accepted and not yet closed: the sessions, and those that ended but still hand over their last bytes. */
  private openStreams = 0;
  /** Observers of sessions (sync-replication acks, audit), beside options.onSession. */
  private readonly sessionWatchers = new Set<(session: PrimarySession) => void>();
  private listener: Listener | null = null;
  private closing = false;
  /** While set (an online rewind), new connections are closed at once. */
  private suspended = false;
  /** Connections turned away (over maxConnections), logged at most every 10 s with their count. */
  private readonly turnedAway: FloodWarning;
  /** Short connections past a burst are counted, not logged line by line. */
  private readonly connectionLog: ConnectionLogGate;

  /** Paces every session's sends while the loop is busy with other work. */
  private readonly pacer: SendPacer;
  /** Commits for the live sessions: parsed once, delivered in paced ticks. */
  private readonly feed: LiveFeed;

  private constructor(private options: ReplicationServerOptions) {
    this.turnedAway = new FloodWarning(options.clock, FLOOD_LOG_INTERVAL_MS, (count, lastPeer) =>
      options.log('warn', `turned away ${count} connection(s) (the last from ${lastPeer}): ${this.openStreams} already open, the most allowed (maxConnections)`),
    );
    this.connectionLog = new ConnectionLogGate(options.clock, options.log, options.connectionLogBurst);
    this.pacer = new SendPacer(options.clock, options.sendShare, () => options.storage.durableEnd);
    this.feed = new LiveFeed(options.storage, options.clock, this.pacer);
  }

  static async start(options: ReplicationServerOptions): Promise<ReplicationServer> {
    const max = options.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
    if (!Number.isSafeInteger(max) || max < 1) throw new ZrsError(`maxConnections must be a whole number of at least 1, not ${max}`);
    const heartbeat = options.heartbeatIntervalMs ?? DEFAULT_HEARTBEAT_INTERVAL_MS;
    // A negative one would fire at once, over and over; one past a day is more than a welcome may announce.
    if (!(heartbeat >= 0 && heartbeat <= MAX_HEARTBEAT_INTERVAL_MS)) {
      throw new ZrsError(`heartbeatIntervalMs must be a number of ms from 0 (no heartbeats) to ${MAX_HEARTBEAT_INTERVAL_MS}, not ${heartbeat}`);
    }
    const server = new ReplicationServer(options);
    server.listener = await options.transport.listen(options.address, (s) => server.accept(s), { maxConnections: max });
    try {
      options.log('info', `replicating to ${formatAddress(server.listener.address)}`);
    } catch (err) {
      await server.close(); // not left listening (and holding the process) by a failed start
      throw err;
    }
    return server;
  }

  /** The bound address (the real port when 0 was asked for). */
  get address(): ReplicationAddress {
    return this.listener!.address;
  }

  private accept(stream: ByteStream): void {
    if (this.closing || this.suspended) {
      stream.destroy();
      return;
    }
    const o = this.options;
    if (this.openStreams >= (o.maxConnections ?? DEFAULT_MAX_CONNECTIONS)) {
      stream.destroy();
      this.turnedAway.note(stream.peer);
      return;
    }
    // Looked up when asked: a rebind (promotion) changes who answers.
    const describe = (sessions: SessionStatus[]): NodeStatus =>
      this.options.nodeStatus?.(sessions) ?? buildNodeStatus({ role: 'primary', name: null, storage: o.storage, nowMs: o.clock.now(), sessions });
    const gate = this.connectionLog.open(stream.peer);
    const session: PrimarySession = new PrimarySession({
      storage: o.storage,
      feed: this.feed,
      pacer: this.pacer,
      stream,
      clock: o.clock,
      protocols: o.protocols ?? supportedProtocols(o.storage.blobs !== null),
      log: gate.log,
      identified: gate.identified,
      blobs: o.storage.blobs !== null,
      heartbeatIntervalMs: o.heartbeatIntervalMs ?? DEFAULT_HEARTBEAT_INTERVAL_MS,
      followBufferSize: o.followBufferSize,
      history: o.history,
      upstreamPath: () => this.options.upstreamPath?.() ?? [],
      nodeStatus: () => describe([...this.sessions].filter((s) => s !== session).map((s) => s.status())),
      promote: (request) => (this.options.promote ?? notPromotable)(request),
      pack: (request) => (this.options.pack ?? notPackable)(request),
    });
    this.sessions.add(session);
    this.openStreams += 1;
    void session.streamClosed$.then(() => (this.openStreams -= 1));
    o.onSession?.(session);
    for (const watch of this.sessionWatchers) watch(session);
    session.done$.subscribe({
      complete: () => {
        this.sessions.delete(session);
        gate.ended();
      },
    });
  }

  /**
   * Call `watch` with every open session now and with each new one as it
   * starts (before its first frame is read); returns a function that stops.
   */
  watchSessions(watch: (session: PrimarySession) => void): () => void {
    for (const s of this.sessions) watch(s);
    this.sessionWatchers.add(watch);
    return () => void this.sessionWatchers.delete(watch);
  }

  /**
   * Hand the server to another node object (a secondary promoted to primary):
   * status requests, new sessions and promote requests go to `role` from now
   * on; open sessions keep streaming.
   */
  rebind(role: ServerRole): void {
    this.options = { ...this.options, ...role };
  }

  /** Every open session tells its secondary the node's new upstream path. */
  announcePath(): void {
    for (const s of this.sessions) s.announcePath();
  }

  /** Every open session tells its secondary the node's new generation (after a promotion). */
  announceGeneration(): void {
    for (const s of this.sessions) s.announceGeneration();
  }

  /**
   * Close every session (each first sends what is committed) and turn new
   * connections away until the returned function is called: the served
   * history is about to change under them (an online rewind), so every
   * downstream secondary must handshake again afterwards.
   */
  async suspend(): Promise<() => void> {
    this.suspended = true;
    const done = [...this.sessions].map((s) => new Promise<void>((resolve) => s.done$.subscribe({ complete: () => resolve() })));
    for (const s of this.sessions) s.close();
    await Promise.all(done);
    return () => {
      this.suspended = false;
    };
  }

  /** Status of every connected secondary. */
  status(): SessionStatus[] {
    return [...this.sessions].map((s) => s.status());
  }

  get sessionCount(): number {
    return this.sessions.size;
  }

  /**
   * Stop accepting, let every session drain what is committed, then resolve.
   * Packs of the storage under way stop first (a pack request's session
   * closes once it has answered), and later ones are refused: the node is
   * closing.
   */
  close(): Promise<void> {
    this.closed ??= this.doClose();
    return this.closed;
  }

  private closed: Promise<void> | null = null;

  private async doClose(): Promise<void> {
    this.closing = true;
    this.turnedAway.close();
    // net.Server.close waits for open connections, so do not wait for it first.
    const stopped = this.listener?.close();
    const packsStopped = this.options.storage.stopPacks();
    const done = [...this.sessions].map(
      (s) => new Promise<void>((resolve) => s.done$.subscribe({ complete: () => resolve() })),
    );
    for (const s of this.sessions) s.close();
    await Promise.all(done);
    await packsStopped;
    this.connectionLog.close();
    await stopped;
  }
}
