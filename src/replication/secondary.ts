// A secondary: a FileStorage that only its replication actor writes. The
// secondaryConnection machine decides when to connect, reconnect and stop;
// this edge supplies the socket, the handshake and the applier. It can
// itself serve further secondaries (replicateTo), forming chains.

import { randomBytes } from 'node:crypto';
import { ReplaySubject, takeUntil, type Observable } from 'rxjs';
import { createActor, fromCallback, fromPromise, type ActorRefFrom } from 'xstate';
import type { ProtocolSpec } from '../../machines/handshake.js';
import { connectionSettings, haltsReplication, secondaryConnectionMachine, type ConnectionFailure } from '../../machines/secondaryConnection.js';
import { ChecksumMismatchError, FrameTooLargeError, ProtocolError, ReadOnlyError, ReplicationHaltedError, runEach, ZrsError } from '../errors.js';
import type { Clock } from '../ports/clock.js';
import { seededRandom, type Random } from '../ports/random.js';
import type { ByteStream, ReplicationAddress, Transport } from '../ports/transport.js';
import { systemClock, randomSeed } from '../node/clock.js';
import { socketTransport } from '../node/socketTransport.js';
import { FileStorage } from '../storage/FileStorage.js';
import { Z64 } from '../storage/timestamp.js';
import type { CommittedTransaction } from '../storage/types.js';
import type { PackOptions, PackReport, ReferencesOf } from '../storage/pack.js';
import { encodeFrame, foreignPeer, FrameDecoder, KEEP_ALIVE_FRAME, MAX_FRAME_BYTES_LIMIT } from '../wire/framing.js';
import { createNativePackr, DEFAULT_STREAM_MAX_FRAME_BYTES, encodeAckFrame, encodeNativeFrame, MAX_UPSTREAM_PATH, NODE_ID_BYTES } from '../wire/native.js';
import { connectAddress, formatAddress, toAddress } from './address.js';
import { Applier } from './applier.js';
import { SpacedReport } from './spacedReport.js';
import { StreamWatch } from './streamWatch.js';
import { NO_MUTATIONS, type ReplicationMutations } from './mutations.js';
import type { StorageDisk } from '../storage/disk.js';
import { NativeInbound, Zrs2Inbound, type ApplyEvent, type InboundDecoder } from './inbound.js';
import { logOpenRepairs, silentLogger, type Logger } from './log.js';
import { NATIVE_SPEC, WHOLE_TXN_MAX_BYTES, ZRS20_SPEC, ZRS21_SPEC } from './protocols.js';
import { ReplicationServer } from './server.js';
import type { TlsOptions } from '../node/tlsTransport.js';
import type { ReplicationMetrics } from './metrics.js';
import { openNodeEdges, type NodeEdges } from './nodeEdges.js';
import { ReadOnlyStorage } from './readOnlyStorage.js';
import { buildNodeStatus, lagSeconds, stateName, type NodeStatus } from './nodeStatus.js';
import { packOnRequest } from './packRequest.js';
import type { SessionStatus } from './primarySession.js';
import { DivergedHistoryError } from '../errors.js';
import { FailoverHistory } from '../failover/history.js';
import { sameGeneration } from '../failover/generations.js';
import { rewindAuditDetails, rewindOpenStorage, type RewindResult } from '../failover/rewind.js';
import { PromotionRefusedError, promoteSecondary, type PromoteOptions, type PromotionHandle } from '../failover/promote.js';
import type { PromoteOutcome } from '../../machines/primarySession.js';
import type { Primary } from './primary.js';
import type { AuditLog } from '../audit/auditLog.js';
import { auditSecondary, auditServerSessions, nodeAuditPaths, openNodeAudit } from '../audit/nodeAudit.js';

export type SecondaryProtocol = 'native' | 'zrs2.0' | 'zrs2.1';

export interface SecondaryOptions {
  path: string;
  replicateFrom: string | number | ReplicationAddress;
  /** Also serve further secondaries at this address. */
  replicateTo?: string | number | ReplicationAddress;
  /** As Primary's: the share of a busy event loop that sends to further secondaries may take (default 0.1). */
  sendShare?: number;
  /** As Primary's: connections served at once on replicateTo (default 256). */
  maxConnections?: number;
  /** As Primary's: heartbeats to further native secondaries every this many ms (default 1000; 0: never). */
  heartbeatIntervalMs?: number;
  blobDir?: string;
  /** Set false when the blob directory is shared with the primary. Default true. */
  transferBlobs?: boolean;
  protocol?: SecondaryProtocol;
  fsync?: boolean;
  /** Send a keep-alive every this many ms while connected (zc.zrs's keep-alive-delay). */
  keepAliveDelayMs?: number;
  /**
   * Drop the connection when a frame has started and, for this long (default
   * 60 000), less than 64 KiB arrived: a corrupted length would otherwise
   * wait forever for bytes that never come, or that only heartbeats trickle
   * in. Time spent paused by our own backpressure does not count.
   */
  frameStallTimeoutMs?: number;
  /**
   * Drop the connection (and reconnect) when a primary that announced
   * heartbeats (native protocol, in its welcome) has sent nothing for this
   * long: a link whose far end vanished without closing would otherwise look
   * idle until TCP gives up, which takes many minutes. Default 5 times the
   * announced interval, at least 5000; never less than twice the interval;
   * 0 turns it off. Time paused by our own backpressure does not count.
   */
  heartbeatTimeoutMs?: number;
  reconnect?: { initialMs?: number; maxMs?: number; factor?: number; jitter?: number };
  /**
   * The largest frame taken from the primary (default 256 MiB). At least
   * MIN_STREAM_MAX_FRAME_BYTES (32 MiB), as a primary sends transactions up
   * to 16 MiB whole, in runs. A native primary of this version sends larger
   * records in blocks; from a zc.zrs primary (or a native one from before
   * blocks), it bounds the largest record that can be replicated.
   */
  maxFrameBytes?: number;
  transport?: Transport;
  /** Connect (and serve replicateTo) over TLS: the primary's certificate must verify against `tls.authenticate` (not with `transport`). */
  tls?: TlsOptions;
  /** Serve Prometheus metrics over HTTP here (e.g. '127.0.0.1:9101'). */
  metricsAddress?: string | number | ReplicationAddress;
  /** Time for heartbeats, timeouts, status and audit records, and the tids of the storage it opens (default: the system's). */
  clock?: Clock;
  random?: Random;
  /** This node's id in upstream paths (loop detection); default random. */
  nodeId?: Buffer;
  /** Where log lines go (`jsonLogger(name)` for JSON lines on stderr); default none: the library logs nothing unless given one. */
  log?: Logger;
  /** The node name reported by status() and status requests. */
  name?: string;
  /** The audit log (docs/FAILOVER.md): default `<path>.audit`; null turns it off. */
  auditPath?: string | null;
  /**
   * Defaults for promote() and for a promote request received on replicateTo
   * (`zrs promote ADDRESS`): e.g. the new primary's syncReplicas.
   */
  whenPromoted?: Omit<PromoteOptions, 'force' | 'requestedBy'>;
  /** The data file's disk I/O (default node:fs); the simulator injects a slow or full disk. */
  disk?: StorageDisk;
  /** Bytes of fill written ahead of the data file's end (see OpenOptions.preallocate). */
  preallocate?: number;
  /** Test-only: deliberate bugs for the simulation's mutation checks (see mutations.ts). @internal */
  mutations?: ReplicationMutations;
}

/**
 * Non-fatal conditions, for an app or a dashboard to follow. A connection
 * lost emits `disconnected`, with why, just before `backoff`; every
 * `backoff` says why the last attempt or connection ended.
 */
export type SecondaryStatus =
  | { kind: 'connecting'; address: string }
  /**
   * `replicating`: the upstream accepted the handshake (a welcome; for
   * zc.zrs's protocols, which have none, at once). A connection that is
   * refused, or whose peer never answers, is `connected` with `false` first.
   */
  | { kind: 'connected'; address: string; replicating: boolean }
  | { kind: 'disconnected'; address: string; reason: string }
  /** `reason`: why the last attempt or connection ended. */
  | { kind: 'backoff'; retryInMs: number | null; reason: string }
  | { kind: 'diverged'; reason: string }
  | { kind: 'failed'; reason: string }
  | { kind: 'closed' };

interface Connection {
  stream: ByteStream;
  decoder: FrameDecoder;
  inbound: InboundDecoder;
  applier: Applier;
  /** Serializes apply work: events are applied strictly in order. */
  chain: Promise<void>;
  queued: number;
  queuedBytes: number;
  paused: boolean;
  dead: boolean;
  /** A welcome or refusal arrived (protocols that answer the handshake), or any byte (zc.zrs's, which do not). */
  answered: boolean;
  /** Any byte arrived (the first chunk is checked for a peer that is no ZRS node). */
  sawData: boolean;
  ackPending: boolean;
  lastDurableTid: Buffer;
  /** The timeouts on what is read (set when reading starts). */
  watch: StreamWatch | null;
  /** TXN_APPLIED to the machine, spaced by APPLIED_REPORT_MS. */
  applied: SpacedReport;
  /** The frames the handshake writes (built when the connection opened). */
  handshake: Buffer[];
}

/** See SecondaryOptions.frameStallTimeoutMs. */
const DEFAULT_FRAME_STALL_MS = 60_000;

/**
 * TXN_APPLIED reaches the machine at most this often while transactions
 * stream in: each is a machine transition, and a secondary following 1000
 * commits a second would otherwise spend a tenth of a CPU on them. The
 * newest tid is always reported, and at once when the connection ends.
 */
const APPLIED_REPORT_MS = 20;

/**
 * The smallest stream frame limit a secondary takes: a run of transactions
 * (closed past 1 MiB) ending with one sent whole (up to WHOLE_TXN_MAX_BYTES)
 * must fit, or every attempt fails on the same frame.
 */
export const MIN_STREAM_MAX_FRAME_BYTES = 2 * WHOLE_TXN_MAX_BYTES;

const PROTOCOLS: readonly SecondaryProtocol[] = ['native', 'zrs2.0', 'zrs2.1'];

/** Options the connection could not run with, refused before the storage is opened (ZrsError). */
function checkConnectionOptions(options: SecondaryOptions): void {
  if (options.protocol !== undefined && !PROTOCOLS.includes(options.protocol)) {
    throw new ZrsError(`protocol must be one of ${PROTOCOLS.join(', ')}, not ${JSON.stringify(options.protocol)}`);
  }
  if (options.nodeId !== undefined && !(options.nodeId instanceof Uint8Array && options.nodeId.byteLength === NODE_ID_BYTES)) {
    throw new ZrsError(`nodeId must be ${NODE_ID_BYTES} bytes`);
  }
  const value = options.maxFrameBytes;
  if (value !== undefined && (!Number.isSafeInteger(value) || value < MIN_STREAM_MAX_FRAME_BYTES || value > MAX_FRAME_BYTES_LIMIT)) {
    throw new ZrsError(`maxFrameBytes must be a whole number of bytes from ${MIN_STREAM_MAX_FRAME_BYTES} to ${MAX_FRAME_BYTES_LIMIT}, not ${value}`);
  }
  if (options.frameStallTimeoutMs !== undefined && !(options.frameStallTimeoutMs > 0)) {
    throw new ZrsError(`frameStallTimeoutMs must be > 0, not ${options.frameStallTimeoutMs}`);
  }
  if (options.heartbeatTimeoutMs !== undefined && !(options.heartbeatTimeoutMs >= 0)) {
    throw new ZrsError(`heartbeatTimeoutMs must be >= 0 (0 turns it off), not ${options.heartbeatTimeoutMs}`);
  }
  try {
    connectionSettings(options);
  } catch (err) {
    throw new ZrsError((err as Error).message);
  }
}

/** Queue depth (events) at which reading from the socket pauses. */
const HIGH_WATER_EVENTS = 4096;
/** Bytes of received data (records, runs, blob blocks) queued for the applier past which reading pauses; it resumes below half. */
const HIGH_WATER_BYTES = 32 * 1024 * 1024;

/** The received bytes an event holds while it waits for the applier. */
function eventBytes(e: ApplyEvent): number {
  if (e.kind === 'record') return e.data?.length ?? 0;
  if (e.kind === 'rawTxns' || e.kind === 'blobBlock') return e.bytes.length;
  return 0;
}

type ConnectionActor = ActorRefFrom<typeof secondaryConnectionMachine>;

/** The upstream ended the connection cleanly, between frames, after answering the handshake. */
class UpstreamClosedError extends ZrsError {
  override name = 'UpstreamClosedError';
  constructor() {
    super('the upstream closed the connection');
  }
}

export class Secondary {
  private readonly actor: ConnectionActor;
  /** The current status replayed to each new subscriber: one that subscribes after open() still learns where the connection stands. */
  private readonly statusSubject = new ReplaySubject<SecondaryStatus>(1);
  /** The last status published, and as text: a status is published when it differs. */
  private lastStatus: { status: SecondaryStatus; text: string } | null = null;
  /** Where the connection stands (connecting, connected, disconnected, backoff, diverged …): the current status to each new subscriber, then each change once. */
  readonly status$: Observable<SecondaryStatus> = this.statusSubject.asObservable();
  /** Replays the Primary to late subscribers: a promote request may come before anyone subscribed. */
  private readonly promotedSubject = new ReplaySubject<Primary>(1);
  /** The Primary this secondary became, once promoted: close() closes it. */
  private promotedPrimary: Primary | null = null;
  /**
   * Emits the Primary this secondary became (promote(), or a promote request
   * on its replicateTo address), then completes; completes on close too. A
   * subscriber that comes later still gets it. Whoever runs the node closes
   * that Primary, or this Secondary, whose close() then closes it.
   */
  readonly promoted$: Observable<Primary> = this.promotedSubject.asObservable();
  /** Transactions applied (durable) on this secondary, in tid order. */
  readonly applied$: Observable<CommittedTransaction>;
  /** The storage, read-only to everyone but replication. */
  readonly storage: ReadOnlyStorage;
  private server: ReplicationServer | null = null;
  private readonly packr = createNativePackr();
  private readonly spec: ProtocolSpec;
  private closedPromise: Promise<void> | null = null;
  /** Generations and hash chain of the storage (docs/FAILOVER.md), set up in open(). */
  private failover: FailoverHistory | null = null;
  /** Transport (TLS, metered) and metrics endpoint, set up in open(). */
  private edges: NodeEdges | null = null;
  /** The audit log and what stops feeding it (src/audit/nodeAudit.ts), set up in open(). */
  private audit: AuditLog | null = null;
  private readonly stopAudit: Array<() => void> = [];
  /** Last heartbeat from the primary: its last tid and clock. */
  lastHeartbeat: { lastTid: Buffer; clockMs: number; receivedMs: number } | null = null;
  /** The last dropped connection, until its transaction in flight is finished or aborted. */
  private dropped: Promise<void> = Promise.resolve();
  /** The newest tid the upstream announced (welcome, heartbeat) or sent, for the lag estimate. */
  private upstreamLastTid: Buffer | null = null;
  /** This node's id in upstream paths: a hello carries it, and a path that holds it is a loop. */
  private readonly nodeId: Buffer;
  /** The upstream path of the connected upstream (its id first), as its welcome or last heartbeat gave it. */
  private upstreamPath: Buffer[] = [];
  /** The last diverged refusal, until the address changes or a rewind. */
  private divergence: DivergedHistoryError | null = null;
  /** A rewind or a promotion under way: each refuses to start beside the other (or itself). */
  private operation: 'rewind' | 'promotion' | null = null;
  /** Settles when the rewind under way (if any) ends: a connection waits for it. */
  private rewound: Promise<unknown> = Promise.resolve();

  private constructor(
    private readonly inner: FileStorage,
    private readonly options: SecondaryOptions,
    /** Where it replicates from when opened (options.replicateFrom, parsed). */
    private readonly openedFrom: ReplicationAddress,
  ) {
    this.storage = new ReadOnlyStorage(inner);
    // A secondary's applied transactions: a promoted node's own commits are not.
    this.applied$ = inner.commits$.pipe(takeUntil(this.promotedSubject));
    this.spec = options.protocol === 'zrs2.0' ? ZRS20_SPEC : options.protocol === 'zrs2.1' ? ZRS21_SPEC : NATIVE_SPEC;
    this.nodeId = options.nodeId ? Buffer.from(options.nodeId) : randomBytes(NODE_ID_BYTES);
    const random = options.random ?? seededRandom(randomSeed());
    const machine = secondaryConnectionMachine.provide({
      actors: {
        connect: fromPromise(async ({ input, signal }) => {
          // The hello names the last transaction: the previous connection's one in flight must be durable (or aborted) first.
          await this.dropped;
          // Nothing is applied while a rewind cuts the file (setReplicationAddress may restart the machine meanwhile).
          await this.rewound.catch(() => undefined);
          this.checkLinksKept();
          const stream = await this.transport.connect(input.address as ReplicationAddress, signal);
          if (signal.aborted) {
            stream.destroy();
            throw new ZrsError('connect aborted');
          }
          // Aborted after this point only when the machine stopped this actor (close, a new address)
          // before it heard of the connection: nobody else would ever close the socket. Once the
          // machine has it, the signal stays quiet.
          signal.addEventListener('abort', () => stream.destroy(), { once: true });
          const start = this.inner.lastTransaction();
          let handshake: Buffer[];
          try {
            // Built here, where a failure is a failed connect (then backoff), not an error inside a machine action.
            handshake = this.handshakeFrames(start);
          } catch (err) {
            stream.destroy();
            const error = new ZrsError(`cannot send a handshake: ${asError(err).message}`, { cause: err });
            this.log('error', error.message);
            throw error;
          }
          return { connection: this.makeConnection(stream, start, handshake) };
        }),
        replicate: fromCallback(({ input, sendBack }) => {
          const conn = input.connection as Connection;
          this.run(conn, (e) => sendBack(e));
          return () => undefined;
        }),
        abortInFlight: fromPromise(async ({ input }) => {
          const conn = input.connection as Connection | null;
          if (!conn) return;
          const dropping = this.drop(conn);
          // Waited for by stopReplicating even when the machine's close timeout gives up on it first:
          // until it ends, a transaction may still be finishing (a promotion starts after the last one).
          const before = this.dropped;
          this.dropped = Promise.all([before, dropping.catch(() => undefined)]).then(() => undefined);
          await dropping;
        }),
      },
      actions: {
        sendHandshake: (_a, p) => this.sendHandshake(p.connection as Connection),
        sendKeepAlive: (_a, p) => {
          const conn = p.connection as Connection;
          if (!conn.dead) conn.stream.write(KEEP_ALIVE_FRAME);
        },
        dropConnection: (_a, p) => {
          this.dropped = this.drop(p.connection as Connection).catch((err: Error) => this.log('warn', `could not abort the transaction in flight: ${err.message}`, { error: err.name }));
        },
      },
    });
    this.actor = createActor(machine, {
      input: {
        address: openedFrom,
        protocol: this.spec,
        lastAppliedTid: inner.lastTransaction(),
        random: () => random.next(),
        reconnect: options.reconnect,
        keepAliveDelayMs: options.keepAliveDelayMs ?? null,
      },
      clock: this.clock,
    });
    this.actor.subscribe({
      next: (snap) => this.publishStatus(snap.value, snap.context),
      // Without an observer for it, xstate rethrows an actor's error where nothing can catch it.
      error: (err) => this.connectionActorFailed(asError(err)),
    });
  }

  /**
   * Open the storage and start replicating.
   *
   * @example
   * const secondary = await Secondary.open({ path: 'Replica.fs', replicateFrom: '127.0.0.1:5000' });
   * secondary.applied$.subscribe((t) => console.log('applied', t.tid.toString('hex')));
   */
  static async open(options: SecondaryOptions): Promise<Secondary> {
    // Tids this storage chooses after a promotion come from the injected clock (virtual in simulations).
    const clock = options.clock ?? systemClock;
    // Bad addresses are refused before the storage is opened (and locked).
    const from = connectAddress(options.replicateFrom);
    const listen = options.replicateTo === undefined ? null : toAddress(options.replicateTo, '127.0.0.1');
    checkConnectionOptions(options);
    // Finishes are pipelined (many share one sync): no inline syncs.
    const inner = await FileStorage.open(options.path, { create: true, blobDir: options.blobDir, fsync: options.mutations?.skipSync ? false : options.fsync, now: () => clock.now(), disk: options.disk, preallocate: options.preallocate, syncInline: false });
    const s = new Secondary(inner, options, from);
    logOpenRepairs(s.log, inner);
    try {
      s.failover = await FailoverHistory.open(inner, { role: 'secondary', fsync: options.fsync });
      s.edges = await openNodeEdges(options, s.clock, s.log);
      s.edges.metrics.watchStorage(inner, true);
      s.edges.metrics.watchSecondary(s);
      const metrics = s.edges.metrics;
      s.audit = await openNodeAudit({ dataPath: options.path, auditPath: options.auditPath, node: options.name, clock: s.clock, log: s.log }, s.failover.generations);
      if (s.audit) s.audit.generation = () => s.failover?.generations.current ?? null;
      if (listen !== null) {
        s.server = await ReplicationServer.start({
          storage: inner,
          address: listen,
          transport: s.transport,
          sendShare: options.sendShare,
          maxConnections: options.maxConnections,
          heartbeatIntervalMs: options.heartbeatIntervalMs,
          upstreamPath: () => s.ownPath(),
          onSession: (session) => metrics.onSession(session),
          clock: s.clock,
          log: s.log,
          nodeStatus: (sessions) => s.describe(sessions),
          history: s.failover,
          promote: (request) => s.promoteOnRequest(request),
          // Once promoted, the node records in its Primary's log (this one is closed by then).
          pack: packOnRequest({ pack: (t, refs, o) => s.pack(t, refs, o), audit: () => s.promotedPrimary?.audit ?? s.audit, log: s.log }),
        });
      }
    } catch (err) {
      // The first failure is the one to report; every step runs regardless.
      await runEach([() => s.audit?.close(), () => s.failover?.close(), () => s.edges?.close(), () => inner.close()]).catch(() => undefined);
      throw err;
    }
    s.startAudit();
    s.actor.start();
    s.actor.send({ type: 'START' });
    return s;
  }

  private get transport(): Transport {
    return this.edges?.transport ?? this.options.transport ?? socketTransport;
  }

  private get clock(): Clock {
    return this.options.clock ?? systemClock;
  }

  private get log(): Logger {
    return this.options.log ?? silentLogger;
  }

  /** This node's metrics (its own prom-client registry). */
  get metrics(): ReplicationMetrics {
    // Set in open(), before the Secondary is handed out.
    return this.edges!.metrics;
  }

  /** Where the metrics endpoint listens, when metricsAddress was given. */
  get metricsAddress(): ReplicationAddress | null {
    return this.edges?.metricsServer?.address ?? null;
  }

  /** The machine actor (state, context), for inspection and tests. */
  get machine(): ConnectionActor {
    return this.actor;
  }

  /** Address further secondaries connect to, when replicateTo was given. */
  get replicationAddress(): ReplicationAddress | null {
    return this.server?.address ?? null;
  }

  /** What a call to a closed secondary is told: one that was promoted lives on as the Primary its promotion returned. */
  private closedError(): ZrsError {
    const primary = this.promotedPrimary;
    return new ZrsError(primary ? `the secondary is closed: it was promoted, and the Primary that promote() returned (promoted$) serves its storage now, at ${formatAddress(primary.address)}` : 'the secondary is closed');
  }

  /** Replicate from somewhere else from now on (e.g. a newly promoted primary). */
  setReplicationAddress(address: string | number | ReplicationAddress): void {
    // Closed (or promoted): nothing would connect, and the call must not pass for one that took.
    if (this.closedPromise) throw this.closedError();
    const to = connectAddress(address);
    const from = formatAddress(this.actor.getSnapshot().context.address as ReplicationAddress);
    void this.audit?.decide('config', { change: 'replicateFrom', from, to: formatAddress(to) }).catch(() => undefined);
    this.divergence = null;
    // The new upstream's last tid is not known until it says it: the old one's would show a lag against the wrong node.
    this.upstreamLastTid = null;
    this.actor.send({ type: 'SET_ADDRESS', address: to });
  }

  /** Feed the audit log from the connection actor and the chain server's sessions. */
  private startAudit(): void {
    const audit = this.audit;
    if (!audit) return;
    this.stopAudit.push(auditSecondary(audit, this));
    if (this.server) this.stopAudit.push(auditServerSessions(audit, this.server));
    void audit
      .decide('config', {
        change: 'open',
        role: 'secondary',
        replicateFrom: formatAddress(this.openedFrom),
        replicateTo: this.server ? formatAddress(this.server.address) : null,
        protocol: this.spec.name,
      })
      .catch(() => undefined);
  }

  /** Record the close and release the audit log (before a promoted Primary opens it). */
  private async closeAudit(change: 'close' | 'detach'): Promise<void> {
    const audit = this.audit;
    if (!audit) return;
    for (const stop of this.stopAudit.splice(0)) stop();
    await audit.decide('config', { change, role: 'secondary' }).catch(() => undefined);
    await audit.close();
  }

  private makeConnection(stream: ByteStream, start: Buffer, handshake: Buffer[]): Connection {
    const maxFrame = this.options.maxFrameBytes ?? DEFAULT_STREAM_MAX_FRAME_BYTES;
    const mutations = this.options.mutations ?? NO_MUTATIONS;
    const verifyChecksum = !mutations.skipChecksum;
    const inbound: InboundDecoder =
      this.spec.kind === 'native' ? new NativeInbound(start, maxFrame, verifyChecksum) : new Zrs2Inbound(start, this.spec, maxFrame, verifyChecksum);
    const conn: Connection = {
      stream,
      decoder: new FrameDecoder({ maxFrameBytes: inbound.maxFrameBytes }),
      inbound,
      applier: null as unknown as Applier,
      chain: Promise.resolve(),
      queued: 0,
      queuedBytes: 0,
      paused: false,
      dead: false,
      answered: false,
      sawData: false,
      ackPending: false,
      watch: null,
      handshake,
      lastDurableTid: start,
      applied: new SpacedReport(this.clock, APPLIED_REPORT_MS, start, (tid) => {
        // A transaction can become durable after the actor stopped (closed, or detached by a promotion).
        if (this.actor.getSnapshot().status === 'active') this.actor.send({ type: 'TXN_APPLIED', tid });
      }),
    };
    conn.applier = new Applier(
      this.inner,
      {
        applied: (tid) => this.onApplied(conn, tid),
        link: (tid, link) => this.failover?.chain.expectLink(tid, link),
        linkWritten: () => this.failover?.chain.givenWritten() ?? Promise.resolve(),
        runLinks: (linked) => (linked ? this.failover?.chain.expectComputed(linked) : this.failover?.chain.dropComputed()),
        ackEarly: (tid) => void (this.spec.hasAcks && !conn.dead && conn.stream.write(encodeAckFrame(tid))),
        heartbeat: async (lastTid, clockMs, generation) => {
          this.lastHeartbeat = { lastTid, clockMs, receivedMs: this.clock.now() };
          this.noteUpstreamTid(lastTid);
          // The upstream was promoted while this secondary kept streaming from it.
          if (generation && this.failover) {
            await this.failover.adopt({ generation });
            this.log('info', `upstream announced generation ${generation.generation} (starting after tid ${generation.startTid.toString('hex')})`, { generation: generation.generation });
            // And passes it on, so that every node down the chain holds it before the transactions after it.
            this.server?.announceGeneration();
          }
        },
      },
      this.options.transferBlobs ?? true,
      mutations,
    );
    return conn;
  }

  /**
   * Refuse to connect while a packed transaction is in the data file without
   * the link its primary gave: any connection would acknowledge it (acks and
   * the hello's start are cumulative), and the primary would count it
   * durable here with a link this node no longer holds.
   */
  private checkLinksKept(): void {
    const lost = this.failover?.chain.lostLink;
    if (!lost) return;
    // No retry can help: the connection machine stops in `failed` with this reason.
    const error = new ReplicationHaltedError(
      `packed transaction ${lost.toString('hex')} is in the data file without the link its primary gave, which a hash chain write error may have lost (${this.failover!.chain.failure?.message ?? 'unknown error'}): replication stopped until the node is reopened; if the link did not reach the disk, its primary then finds it diverged at that transaction, and a rewind (zrs rewind) brings it back`,
    );
    this.log('error', error.message);
    throw error;
  }

  /** The protocol name and the start position (a hello, for the native protocol) from `start` on. */
  private handshakeFrames(start: Buffer): Buffer[] {
    const name = encodeFrame(Buffer.from(this.spec.name, 'latin1'));
    if (this.spec.kind !== 'native') return [name, encodeFrame(start)];
    // Asked for even without a blob directory: a primary with blobs then sends them, and the
    // first one stops this secondary loudly (as over zrs2.1) instead of its record being applied
    // without its file. Off only when the blob directory is shared.
    const blobs = this.options.transferBlobs ?? true;
    const history = this.failover?.helloFields(start) ?? { generations: [] };
    return [name, encodeNativeFrame({ type: 'hello', startTid: start, ...history, options: { blobs, rawTxns: true, txnLinks: true, segmentedChecksum: true, largeRecords: true }, nodeId: this.nodeId }, this.packr)];
  }

  /** This node's upstream path: itself, then the nodes it replicates from while connected. */
  private ownPath(): Buffer[] {
    return [this.nodeId, ...this.upstreamPath].slice(0, MAX_UPSTREAM_PATH);
  }

  /**
   * The upstream's path, from its welcome or a heartbeat: this node on it
   * is a loop (the connection fails, and is retried: a configuration fixed
   * or a node promoted ends it); otherwise downstream sessions learn the
   * new path.
   */
  private noteUpstreamPath(conn: Connection, path: Buffer[], fail: (error?: Error) => void): void {
    const at = path.findIndex((id) => id.equals(this.nodeId));
    if (at >= 0) {
      const through = at === 0 ? 'is this node itself (replicate-from names its own replicate-to)' : at === 1 ? 'replicates from this node' : `replicates from this node through ${at - 1} other(s)`;
      return fail(new ZrsError(`replication loop: ${conn.stream.peer} ${through}, and no node on the loop is a primary; point one of them at the primary, or promote one`));
    }
    this.setUpstreamPath(path);
  }

  private setUpstreamPath(path: Buffer[]): void {
    const same = path.length === this.upstreamPath.length && path.every((id, i) => id.equals(this.upstreamPath[i]!));
    if (same) return;
    this.upstreamPath = path;
    this.server?.announcePath();
  }

  private sendHandshake(conn: Connection): void {
    for (const frame of conn.handshake) conn.stream.write(frame);
  }

  /** Read frames, decode them, apply them in order; report the outcome to the machine. */
  private run(conn: Connection, send: (e: { type: string; [k: string]: unknown }) => void): void {
    const fail = (error?: Error): void => {
      if (conn.dead) return;
      conn.dead = true;
      conn.watch?.stop();
      this.setUpstreamPath([]); // replicating from nobody now
      // A clean close (a primary shutting down or restarting) is news, not a fault.
      if (error) this.log(error instanceof UpstreamClosedError ? 'info' : haltsReplication(error) ? 'error' : 'warn', `replication from ${conn.stream.peer} stopped: ${error.message}`, { error: error.name });
      conn.applied.note(conn.lastDurableTid, true); // the machine leaves the connection knowing everything applied so far
      send({ type: 'DISCONNECTED', error });
    };
    // A decoding error or a close ends the connection only after the events decoded before it
    // (transactions whose checksum was verified) are applied, as zc.zrs's secondary does.
    let ending = false;
    const failAfterQueued = (error?: Error): void => {
      ending = true;
      conn.watch?.stop();
      conn.chain = conn.chain.then(() => fail(error));
    };
    const watch = new StreamWatch(this.clock, {
      stallMs: this.options.frameStallTimeoutMs ?? DEFAULT_FRAME_STALL_MS,
      heartbeatTimeoutMs: this.options.heartbeatTimeoutMs,
      paused: () => conn.paused,
      insideFrame: () => conn.decoder.insideFrame,
      bufferedBytes: () => conn.decoder.bufferedBytes,
      expired: (error) => failAfterQueued(error),
    });
    conn.watch = watch;
    conn.stream.setHandlers({
      data: (chunk) => {
        if (conn.dead || ending) return;
        // Text where a frame header belongs is no ZRS node: say what it is, not "message too large".
        const foreign = conn.sawData ? null : foreignPeer(chunk);
        conn.sawData = true;
        if (foreign) return failAfterQueued(new ProtocolError(`${conn.stream.peer} is ${foreign}, not a ZRS node: check the replication address`));
        // Without a verdict, any byte is the primary's answer to the handshake.
        if (!this.spec.hasVerdict) conn.answered = true;
        try {
          conn.decoder.feed(chunk);
          for (let f = conn.decoder.next(); f !== null; f = conn.decoder.next()) {
            for (const e of conn.inbound.push(f, conn.decoder.lastFrameOwned)) this.enqueue(conn, e, send, fail);
            conn.decoder.setMaxFrameBytes(conn.inbound.maxFrameBytes);
          }
          watch.received(chunk.length);
        } catch (err) {
          failAfterQueued(asError(err));
        }
      },
      drain: () => undefined,
      close: (error) => failAfterQueued(this.closeReason(conn, error)),
    });
  }

  /**
   * Why a connection ended: the socket's error, or for a close by the peer, what it most likely
   * means (a clean close after the handshake is logged as news, not a fault). A reset or a broken
   * pipe before any answer is the peer closing as well, only faster than this secondary's
   * handshake went out: it gets the same explanation rather than a bare "write EPIPE".
   */
  private closeReason(conn: Connection, error?: Error): Error {
    const peerClosed = error === undefined || (!conn.sawData && isPeerReset(error));
    if (!peerClosed) return error;
    if (conn.decoder.insideFrame) return new ZrsError('connection closed inside a frame');
    // Logged as why replication stopped: without it a restarted primary left only "waiting to reconnect".
    if (conn.answered) return new UpstreamClosedError();
    const closed = error ? `closed the connection (${error.message})` : 'closed the connection';
    // A zc.zrs primary closes without a word on a protocol name it does not know ...
    if (this.spec.hasVerdict) {
      // Under TLS 1.3 a primary that rejects this secondary's certificate does so after the handshake, just as silently.
      const why = this.options.tls
        ? 'over TLS, most likely the primary rejected this secondary\'s certificate (its log says why); a zc.zrs primary does this too'
        : 'a zc.zrs primary does this; for one, use protocol zrs2.1 or zrs2.0';
      return new ZrsError(`the primary ${closed} without answering the handshake (${why})`);
    }
    // ... and, since its protocols have no refusal, on a handshake it does not take.
    return new ZrsError(
      `the primary ${closed} without sending anything; if this happens at every connect, a zc.zrs primary may be refusing the handshake (a start tid past its last transaction or one it never held, or zrs2.0 asked of a primary with blobs, which needs zrs2.1), and its log says why`,
    );
  }

  private enqueue(
    conn: Connection,
    e: ApplyEvent,
    send: (e: { type: string; [k: string]: unknown }) => void,
    fail: (error?: Error) => void,
  ): void {
    if (e.kind === 'welcome') {
      conn.answered = true;
      conn.watch?.heartbeatsEvery(e.heartbeatIntervalMs ?? 0);
      this.noteUpstreamTid(e.lastTid);
      // An upstream of an older build gives no path: this node's path is then itself alone.
      this.noteUpstreamPath(conn, e.upstreamPath ?? [], fail);
      if (conn.dead) return;
      this.adoptGenerations(conn, e, fail);
      return send({ type: 'WELCOME' });
    }
    if (e.kind === 'heartbeat' && e.upstreamPath) {
      this.noteUpstreamPath(conn, e.upstreamPath, fail);
      if (conn.dead) return;
    }
    if (e.kind === 'refused') {
      conn.answered = true;
      this.log('error', `primary refused replication: ${e.code}: ${e.reason}`, { code: e.code });
      // Its last tid, when it said (diverged, tid-too-high): the status shows where the upstream stands now,
      // also below what an earlier upstream announced (one restored from a backup, say).
      if (e.primaryLastTid) this.upstreamLastTid = Buffer.from(e.primaryLastTid);
      if (e.code === 'diverged') {
        this.reportDiverged(e.reason, e.forkTid, e.primaryLastTid);
        // Forced to promote later, it must not start a generation its refusing primary's history already has.
        if (e.generation) {
          const seen = e.generation.generation;
          void this.failover?.generations.noteSeen(seen).catch((err: Error) => this.log('warn', `could not record generation ${seen} as seen: ${err.message}`));
        }
      }
      conn.dead = true;
      return send({ type: 'REFUSED', code: e.code, reason: e.reason, forkTid: e.forkTid, ...(e.primaryLastTid ? { primaryLastTid: e.primaryLastTid } : {}) });
    }
    const bytes = eventBytes(e);
    conn.queued += 1;
    conn.queuedBytes += bytes;
    if ((conn.queued > HIGH_WATER_EVENTS || conn.queuedBytes > HIGH_WATER_BYTES) && !conn.paused) {
      conn.paused = true;
      conn.stream.pause();
    }
    conn.chain = conn.chain.then(async () => {
      if (conn.dead) return;
      try {
        await conn.applier.apply(e);
      } catch (err) {
        fail(asError(err));
      } finally {
        conn.queued -= 1;
        conn.queuedBytes -= bytes;
        if (conn.paused && conn.queued < HIGH_WATER_EVENTS / 2 && conn.queuedBytes < HIGH_WATER_BYTES / 2) {
          conn.paused = false;
          conn.stream.resume();
          conn.watch?.resumed();
        }
      }
    });
  }

  private onApplied(conn: Connection, tid: Buffer): void {
    conn.lastDurableTid = tid;
    this.noteUpstreamTid(tid);
    if (conn.ackPending) return;
    // One report (and one ack) covers every transaction made durable by the same fsync.
    conn.ackPending = true;
    queueMicrotask(() => {
      conn.ackPending = false;
      if (this.spec.hasAcks && !conn.dead) conn.stream.write(encodeAckFrame(conn.lastDurableTid));
      conn.applied.note(conn.lastDurableTid, conn.dead);
    });
  }

  /**
   * The connection machine stopped on an error (an action threw): replication
   * has stopped for good, so its connection, which would otherwise go on
   * applying what arrives, is dropped (its transaction in flight aborted).
   */
  private connectionActorFailed(err: Error): void {
    this.log('error', `replication stopped: the connection actor failed: ${err.message}`, { error: err.name });
    // An actor that failed while building its context has none.
    const conn = (this.actor.getSnapshot().context as { connection?: Connection | null } | undefined)?.connection ?? null;
    if (conn === null || conn.dead) return;
    const before = this.dropped;
    this.dropped = Promise.all([before, this.drop(conn)])
      .then(() => undefined)
      .catch((e: Error) => this.log('warn', `could not abort the transaction in flight: ${e.message}`, { error: e.name }));
  }

  /** Stop reading, abort the half-received transaction, close the socket. */
  private async drop(conn: Connection): Promise<void> {
    conn.dead = true;
    conn.watch?.stop();
    this.setUpstreamPath([]); // replicating from nobody now (fail() sees the connection dead and returns)
    conn.applied.note(conn.lastDurableTid, true);
    conn.stream.destroy();
    conn.chain = conn.chain.then(() => conn.applier.abort());
    await conn.chain;
    await conn.applier.settle();
  }

  private publishStatus(value: unknown, context: { address: unknown; lastError: unknown; nextRetryDelayMs: number | null }): void {
    const address = formatAddress(context.address as ReplicationAddress);
    const top = typeof value === 'string' ? value : Object.keys(value as object)[0];
    const err = context.lastError as { kind: string; reason?: string } | null;
    const status: SecondaryStatus | null =
      top === 'connecting'
        ? { kind: 'connecting', address }
        : top === 'connected'
          ? { kind: 'connected', address, replicating: (value as { connected?: { link?: unknown } }).connected?.link === 'replicating' }
          : top === 'backoff'
            ? { kind: 'backoff', retryInMs: context.nextRetryDelayMs, reason: failureReason(context.lastError as ConnectionFailure | null) }
            : top === 'diverged'
              ? { kind: 'diverged', reason: err?.reason ?? 'diverged' }
              : top === 'failed'
                ? { kind: 'failed', reason: err?.kind === 'refused' ? (err.reason ?? 'refused') : failureReason(context.lastError as ConnectionFailure | null) }
                : top === 'closed'
                  ? { kind: 'closed' }
                  : null;
    if (!status) return;
    // The machine moves between inner states (keep-alive, a transaction applied) without a change here.
    const text = JSON.stringify(status);
    if (text === this.lastStatus?.text) return;
    // A connection lost says why, before the wait to reconnect.
    if (status.kind === 'backoff' && this.lastStatus?.status.kind === 'connected') {
      this.statusSubject.next({ kind: 'disconnected', address, reason: failureReason(context.lastError as ConnectionFailure | null) });
    }
    this.lastStatus = { status, text };
    this.statusSubject.next(status);
  }

  private noteUpstreamTid(tid: Buffer): void {
    if (this.upstreamLastTid === null || Buffer.compare(tid, this.upstreamLastTid) > 0) this.upstreamLastTid = Buffer.from(tid);
  }

  /**
   * The node's status, the same object a status request receives over the wire.
   *
   * @example
   * const { lastTid, upstream } = secondary.status();
   */
  status(): NodeStatus {
    // Promoted: the node is that Primary now, and says so.
    if (this.promotedPrimary) return this.promotedPrimary.status();
    return this.describe(this.server?.status() ?? []);
  }

  private describe(sessions: SessionStatus[]): NodeStatus {
    const snap = this.actor.getSnapshot();
    const hb = this.lastHeartbeat;
    return buildNodeStatus({
      role: 'secondary',
      name: this.options.name ?? null,
      storage: this.inner,
      nowMs: this.clock.now(),
      sessions,
      // Over zc.zrs's protocols nothing tells a secondary of generations: what it recorded before may be stale.
      generation: this.spec.kind === 'native' ? this.failover?.generations.current : null,
      upstream: {
        address: formatAddress(snap.context.address as ReplicationAddress),
        protocol: this.spec.name,
        state: stateName(snap.value),
        primaryLastTid: this.upstreamLastTid,
        lastHeartbeat: hb && { lastTid: hb.lastTid, clockMs: hb.clockMs, receivedMs: hb.receivedMs },
        lagSeconds: lagSeconds(this.inner.lastDurableTid, this.upstreamLastTid),
        // Kept through a handshake with no answer yet: a hung primary takes connections, then times them out.
        lastError: snap.matches({ connected: { link: 'replicating' } } as never) || snap.context.lastError === null ? null : failureReason(snap.context.lastError as ConnectionFailure),
      },
    });
  }

  /**
   * Abort any half-received transaction, stop replicating and serving, close
   * the storage. During a promotion, waits for it to end, and closes the
   * Primary it opened; after one, the Primary owns the storage (close that).
   */
  close(): Promise<void> {
    // Promoted: this node is that Primary now.
    if (this.promotedPrimary) return this.promotedPrimary.close();
    // A promotion waiting for its coordinator's claim is given up: a close must not wait on it.
    this.closeSignal.abort();
    if (this.promotion) {
      this.closingPromotion ??= this.closeAfterPromotion(this.promotion);
      return this.closingPromotion;
    }
    this.closedPromise ??= this.doClose();
    return this.closedPromise;
  }

  /** A close() that arrived during a promotion (every later call shares it). */
  private closingPromotion: Promise<void> | null = null;

  private async closeAfterPromotion(promotion: Promise<Primary>): Promise<void> {
    const primary = await promotion.catch(() => null);
    if (primary) return primary.close();
    this.closedPromise ??= this.doClose();
    return this.closedPromise;
  }

  /**
   * Make this secondary a primary (see docs/FAILOVER.md): stop replicating
   * (the half-received transaction is aborted), start generation n + 1 at the
   * last tid, and serve at replicateTo, keeping sessions already connected.
   * Refused while connected to a live primary unless `force`.
   *
   * @example
   * const primary = await secondary.promote();
   * console.log(primary.generation); // { generation: 1, startTid: <last tid> }
   */
  promote(options: PromoteOptions = {}): Promise<Primary> {
    const promotion = this.doPromote(options);
    // Only while it runs: a close() then waits for it (see close()).
    if (this.promotion === null) {
      this.promotion = promotion;
      const clear = (): void => {
        if (this.promotion === promotion) this.promotion = null;
      };
      promotion.then(clear, clear);
    }
    return promotion;
  }

  /** The promotion under way, if any. */
  private promotion: Promise<Primary> | null = null;
  /** Aborted by close(): a promotion's claim stops waiting. */
  private readonly closeSignal = new AbortController();

  private async doPromote(options: PromoteOptions): Promise<Primary> {
    let primary: Primary;
    // Whether this call runs the promotion: only then is a detach its own, and the audit log its to
    // close or reopen (a call refused beside another promotion, under way or done, must leave it).
    let own = false;
    try {
      if (this.operation !== null) throw new PromotionRefusedError(`refusing to promote during a ${this.operation}`);
      // Before the checks of what a promotion needs: none of them is the reason.
      if (this.closedPromise) throw this.closedError();
      this.operation = 'promotion';
      own = true;
      try {
        primary = await promoteSecondary(this.promotionHandle(), { ...this.options.whenPromoted, ...options });
      } catch (err) {
        if (this.detached) await this.releaseAfterFailedPromotion(err);
        throw err;
      } finally {
        this.operation = null;
      }
    } catch (err) {
      await this.recordPromotionRefused(err, options, own);
      throw err;
    }
    this.promotedPrimary = primary;
    this.promotedSubject.next(primary);
    this.promotedSubject.complete();
    return primary;
  }

  /** A promote request received on replicateTo: promote, and say how it went (never rejects). */
  private async promoteOnRequest(request: { force: boolean; peer: string }): Promise<PromoteOutcome> {
    this.log('warn', `promote request from ${request.peer}${request.force ? ' (forced)' : ''}`, { peer: request.peer, force: request.force });
    try {
      const primary = await this.promote({ force: request.force, requestedBy: request.peer });
      const g = primary.generation;
      const sessionsKept = primary.status().sessions.filter((s) => s.state === 'catchingUp' || s.state === 'live').length;
      return { kind: 'promoted', generation: g.generation, startTid: g.startTid, sessionsKept };
    } catch (err) {
      const reason = err instanceof Error ? err.message : String(err);
      this.log('error', `promote request from ${request.peer} not carried out: ${reason}`, { peer: request.peer });
      return { kind: 'refused', code: err instanceof PromotionRefusedError ? 'refused' : 'failed', reason };
    }
  }

  /** The promotion detached the secondary (stopped replicating for good). */
  private detached = false;

  /**
   * A promotion failed after detaching (the new Primary did not open): no
   * Primary took the storage over, so close what the secondary still holds,
   * as close() would. A generation it started (only once its record was
   * written) stays.
   */
  private async releaseAfterFailedPromotion(cause: unknown): Promise<void> {
    this.log('error', `promotion failed after replication stopped: ${cause instanceof Error ? cause.message : String(cause)}; the node is closed`);
    await runEach([() => this.server?.close(), () => this.inner.close(), () => this.failover?.close(), () => this.promotedSubject.complete()]).catch(() => undefined);
  }

  /**
   * Record a refused or failed promotion: in the secondary's audit log while
   * it is open (closing it after this call's failed detach, as the node is
   * closed by now), or, once this call's detach closed it, in the log opened
   * again for this one record. `own`: the call ran the promotion (was not
   * refused beside another one).
   */
  private async recordPromotionRefused(err: unknown, options: PromoteOptions, own: boolean): Promise<void> {
    const details = {
      code: err instanceof PromotionRefusedError ? err.code : 'failed',
      reason: err instanceof Error ? err.message : String(err),
      requestedBy: options.requestedBy ?? 'api',
      force: options.force === true,
      ...(this.detached ? { afterDetach: true } : {}),
    };
    if (!this.audit) return;
    if (!this.audit.isClosed) {
      await this.audit.decide('promotion-refused', details).catch(() => undefined);
      if (this.detached && own) await this.closeAudit('close').catch(() => undefined);
      return;
    }
    // Closed without this call's detach: the node was closed, or another promotion's Primary holds
    // the log now (a second writer on it would write over its records); nothing to record here.
    if (!this.detached || !own) return;
    const o = this.options;
    try {
      // Without the generation history: the promotion not started that the open would take back is the one
      // whose failure this records.
      const audit = await openNodeAudit({ dataPath: o.path, auditPath: o.auditPath, node: o.name, clock: this.clock, log: this.log });
      if (!audit) return;
      audit.generation = this.failover?.generations.current ?? null;
      try {
        await audit.decide('promotion-refused', details);
      } finally {
        await audit.close();
      }
    } catch (e) {
      this.log('error', `could not record the failed promotion in the audit log: ${(e as Error).message}`);
    }
  }

  private promotionHandle(): PromotionHandle {
    return {
      signal: this.closeSignal.signal,
      storage: this.inner,
      history: this.failover!,
      log: this.log,
      transport: this.options.transport,
      clock: this.options.clock,
      fsync: this.options.fsync,
      carried: { name: this.options.name, auditPath: this.options.auditPath, metricsAddress: this.options.metricsAddress, bytesMeteredBy: this.edges?.metrics, nodeId: this.nodeId },
      auditPaths: nodeAuditPaths(this.options.path, this.options.auditPath),
      upstreamState: () => stateName(this.actor.getSnapshot().value),
      upstreamAddress: () => formatAddress(this.actor.getSnapshot().context.address as ReplicationAddress),
      serverAddress: () => this.server?.address ?? null,
      detach: async () => {
        if (this.closedPromise) throw this.closedError();
        this.detached = true;
        this.closedPromise = this.stopReplicating();
        // The new generation starts after the last transaction: it is durable by now.
        await this.closedPromise;
        await this.edges?.close();
        await this.closeAudit('detach');
        this.statusSubject.complete();
        return this.server;
      },
    };
  }

  /** Persist the primary's generation history before applying anything it sends. */
  private adoptGenerations(conn: Connection, e: Extract<ApplyEvent, { kind: 'welcome' }>, fail: (error?: Error) => void): void {
    const history = this.failover;
    const generation = e.generation;
    if (!history || !generation) return;
    conn.chain = conn.chain.then(async () => {
      try {
        // A node that recorded none was in generation 0 from the start, as its welcomes said.
        const before = history.generations.current ?? { generation: 0, startTid: Z64 };
        await history.adopt({ generation, generations: e.generations });
        const now = history.generations.current;
        // A generation new to this node (its upstream was promoted while it was away) goes on down the
        // chain, as an announced one does: its secondaries get the transactions after it from here.
        if (now && !sameGeneration(before, now)) this.server?.announceGeneration();
      } catch (err) {
        fail(asError(err));
      }
    });
  }

  private reportDiverged(reason: string, forkTid: Buffer | undefined, primaryLastTid: Buffer | undefined): void {
    const local = this.inner.lastTransaction();
    const err = new DivergedHistoryError(forkTid ?? Buffer.alloc(8), local, primaryLastTid ?? null, reason);
    this.divergence = err;
    this.divergedAtUnknownFork = forkTid === undefined;
    this.log('error', `DIVERGED: this secondary holds history its primary never had; replication stopped until an explicit rewind (rewindStorage / zrs rewind): ${err.message}`, {
      error: err.name,
      forkTid: err.forkTid.toString('hex'),
      localTid: local.toString('hex'),
      remoteTid: err.remoteTid?.toString('hex') ?? null,
    });
  }

  /**
   * Online rewind of a diverged secondary (docs/FAILOVER.md, Rewind): cut its
   * storage back to the fork tid its primary named when it refused it, saving
   * the cut transactions in `<path>.rewound-<forkTid>`, then reconnect to the
   * same primary and converge. Sessions of further secondaries are closed
   * first (they must handshake again against the shorter history), and new
   * ones are turned away until the cut is done.
   *
   * @example
   * secondary.status$.pipe(filter((s) => s.kind === 'diverged')).subscribe(() => void secondary.rewind());
   */
  rewind(): Promise<RewindResult> {
    const rewinding = this.doRewind();
    // A close() waits for it to end (see doClose).
    this.rewindEnded = Promise.all([this.rewindEnded, rewinding.catch(() => undefined)]).then(() => undefined);
    return rewinding;
  }

  /** The last diverged refusal named no fork tid (its DivergedHistoryError says 8 zero bytes). */
  private divergedAtUnknownFork = false;

  /** Settles when every rewind() called so far has ended, its audit record included. */
  private rewindEnded: Promise<void> = Promise.resolve();

  private async doRewind(): Promise<RewindResult> {
    const snap = this.actor.getSnapshot();
    const divergence = this.divergence;
    if (this.closedPromise) throw this.closedError();
    if (!snap.matches('diverged') || divergence === null) {
      throw new ZrsError(`rewind() needs a secondary its primary refused as diverged; this one is ${stateName(snap.value)}`);
    }
    if (this.operation !== null) throw new ZrsError(`rewind() refused during a ${this.operation}`);
    // Not read as "nothing in common": that would cut the whole storage.
    if (this.divergedAtUnknownFork) {
      throw new ZrsError('rewind() refused: the primary said diverged but named no fork tid; rewind offline to a tid you choose (rewindStorage toCommonWith: tid; zrs rewind --to-tid)');
    }
    const address = formatAddress(snap.context.address as ReplicationAddress);
    this.operation = 'rewind';
    let result: RewindResult;
    const cutting = (async () => {
      // A pack under way ends first (a later one is refused until the cut is done; a close stops it).
      await this.inner.packsEnded();
      const resume = this.server ? await this.server.suspend() : () => undefined;
      try {
        const cut = await rewindOpenStorage(this.inner, divergence.forkTid, { history: this.failover!, withBlobs: this.inner.blobs !== null });
        // Before any connection waiting for the cut goes on (a new address may have left `diverged` meanwhile).
        this.actor.send({ type: 'STORAGE_CUT', lastAppliedTid: this.inner.lastTransaction() });
        return cut;
      } finally {
        resume();
      }
    })();
    this.rewound = cutting;
    try {
      result = await cutting;
    } finally {
      this.operation = null;
    }
    this.log('warn', `REWOUND to tid ${result.forkTid.toString('hex')}: ${result.cutTids.length} transaction(s) saved in ${result.sidePath ?? '(nothing cut)'}; reconnecting to ${address}`, {
      forkTid: result.forkTid.toString('hex'),
      transactionsCut: result.cutTids.length,
      sidePath: result.sidePath,
    });
    await this.audit?.decide('rewind', { ...rewindAuditDetails(result, address), online: true }).catch(() => undefined);
    this.divergence = null;
    // Its start position moved back with the cut already (STORAGE_CUT).
    this.actor.send({ type: 'RESET' });
    return result;
  }

  /** Why the primary refused this secondary as diverged (its last refusal), or null. */
  get diverged(): DivergedHistoryError | null {
    return this.divergence;
  }

  /**
   * Pack this node's own data file (FileStorage.pack: revisions not current
   * at `packTime`, in seconds since the epoch, are removed, and with
   * `referencesOf`, such as `zodbReferences`, objects the root no longer
   * reaches then) while it goes on replicating: transactions applied during
   * the pack are carried into the packed file. A primary's pack is not
   * replicated, so each node packs its own file, as with zc.zrs; its hash
   * chain keeps the links of the transactions as they were, so its
   * primary and its own secondaries still find their histories the same.
   * The storage's `pack` stays refused (ReadOnlyError): packing is the
   * node's operator's call, not its readers'. A close() stops a pack
   * under way (it rejects with a StorageClosedError and leaves the file as
   * it was, unless it had begun replacing the file); a rewind() waits for
   * it, and a pack is refused during a rewind. With `transferBlobs: false`
   * (a blob directory shared with the primary) the blob files of removed
   * revisions stay: they are the primary's, whose own pack removes them.
   *
   * With garbage collection, pack the primary first, to at least that
   * time, and pack to a time well behind what this node has received
   * (days, as with ZODB): an object collected here that the primary still
   * holds can come back in transactions received later only as a
   * reference (an undo of an older transaction, or an application linking
   * again an object it still held), and would then be missing here
   * (POSKeyError) though the primary has it (docs/OPERATIONS.md, zrs
   * pack). Without `referencesOf` only old revisions go, and that cannot
   * happen.
   *
   * @example
   * await secondary.pack(Date.now() / 1000 - 7 * 86400, zodbReferences);
   */
  async pack(packTime: number, referencesOf?: ReferencesOf, options?: PackOptions): Promise<PackReport> {
    if (this.closedPromise) throw this.closedError();
    // A rewind cuts the file at a position it found before it took the commit lock: a pack in between would move it.
    if (this.operation === 'rewind') throw new ZrsError('pack() refused during a rewind');
    // A blob directory shared with the primary holds files the primary may still need: its own pack removes them.
    const shared = this.options.transferBlobs === false;
    return this.inner.pack(packTime, referencesOf, shared ? { ...options, keepBlobFiles: true } : options);
  }

  /** The generations and hash chain of this storage. */
  get history(): FailoverHistory | null {
    return this.failover;
  }

  /**
   * Stop the connection machine (aborting a half-received transaction), then
   * wait for a connection dropped earlier (while the node waited to
   * reconnect) to finish or abort the transaction it was still writing.
   */
  private async stopReplicating(): Promise<void> {
    const done = new Promise<void>((resolve) => {
      const sub = this.actor.subscribe({ complete: () => resolve(), error: () => resolve() });
      if (this.actor.getSnapshot().status !== 'active') {
        sub.unsubscribe();
        resolve();
      }
    });
    this.actor.send({ type: 'CLOSE' });
    await done;
    this.actor.stop();
    await this.dropped;
  }

  private async doClose(): Promise<void> {
    // A pack under way stops (a rewind waiting for it goes on at once); a rewind under way finishes first: its
    // cut, chain and generations end together.
    await this.inner.stopPacks();
    await this.rewindEnded;
    await runEach([
      () => this.stopReplicating(),
      () => this.server?.close(),
      () => this.closeAudit('close'),
      () => this.edges?.close(),
      () => this.inner.close(),
      () => this.failover?.close(),
      () => this.statusSubject.complete(),
      () => this.promotedSubject.complete(),
    ]);
  }
}

function asError(err: unknown): Error {
  if (err instanceof ChecksumMismatchError || err instanceof FrameTooLargeError) return err;
  return err instanceof Error ? err : new Error(String(err));
}

export { ReadOnlyError };

/** Why a connection ended, in words (a status's `reason`). */
function failureReason(f: ConnectionFailure | null): string {
  if (f === null) return 'unknown';
  switch (f.kind) {
    case 'disconnected':
      return f.error?.message ?? 'the connection closed';
    case 'connect-failed':
    case 'replicate-failed':
    case 'abort-failed':
      return asError(f.error).message;
    case 'refused':
      return `refused (${f.code}): ${f.reason}`;
    default:
      return `${f.kind} after ${f.timeoutMs} ms`;
  }
}

/** A socket error that only says the peer closed: a reset, or a write into a connection it had closed. */
function isPeerReset(error: Error): boolean {
  const code = (error as NodeJS.ErrnoException).code;
  return code === 'ECONNRESET' || code === 'EPIPE';
}
