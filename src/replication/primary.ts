// A primary: a writable FileStorage that also streams every committed
// transaction to the secondaries connected to its replication address.
// Closing stops accepting, refuses new writes, drains to connected
// secondaries, then closes the storage.

import { randomBytes } from 'node:crypto';
import { runEach, ZrsError } from '../errors.js';
import type { Clock } from '../ports/clock.js';
import type { ReplicationAddress, Transport } from '../ports/transport.js';
import { FileStorage } from '../storage/FileStorage.js';
import { systemClock } from '../node/clock.js';
import type { TlsOptions } from '../node/tlsTransport.js';
import { formatAddress, toAddress } from './address.js';
import { logOpenRepairs, silentLogger, type Logger } from './log.js';
import type { ReplicationMetrics } from './metrics.js';
import { openNodeEdges, type NodeEdges } from './nodeEdges.js';
import { packOnRequest } from './packRequest.js';
import { ReplicationServer, type PromoteHandler } from './server.js';
import type { SessionStatus } from './primarySession.js';
import { buildNodeStatus, type NodeStatus } from './nodeStatus.js';
import { FailoverHistory } from '../failover/history.js';
import { NODE_ID_BYTES, type GenerationEntry } from '../wire/native.js';
import { PrimarySync } from './primarySync.js';
import type { ReplicationConfirmation, SecondaryReplicationStatus, WaitForReplicationOptions } from './syncReplication.js';
import type { AuditLog } from '../audit/auditLog.js';

export interface PrimaryOptions {
  /** Data.fs path (created when missing). */
  path: string;
  /** Where secondaries connect: port, host:port, [v6]:port or a Unix socket path. */
  replicateTo: string | number | ReplicationAddress;
  blobDir?: string;
  fsync?: boolean;
  /** Bytes of fill written ahead of the data file's end (see OpenOptions.preallocate). */
  preallocate?: number;
  /** Send a heartbeat (last tid and clock) to idle native secondaries this often, in ms (default 1000; 0: never). */
  heartbeatIntervalMs?: number;
  /**
   * While committers keep the event loop busy, sends to secondaries take at
   * most this share of it (0 < share <= 1, default 0.1); secondaries that
   * cannot keep up fall behind instead of slowing commits. An otherwise idle
   * loop sends at full speed.
   */
  sendShare?: number;
  /**
   * Connections served at once on replicateTo (default 256): more are closed
   * as they arrive, with a warning at most every 10 s, so a flood of
   * connections cannot take every file descriptor the storage needs.
   */
  maxConnections?: number;
  transport?: Transport;
  /** Serve over TLS, demanding client certificates that verify against `tls.authenticate` (not with `transport`). */
  tls?: TlsOptions;
  /** Serve Prometheus metrics over HTTP here (e.g. '127.0.0.1:9100'). */
  metricsAddress?: string | number | ReplicationAddress;
  /** Time for heartbeats, timeouts, status and audit records, and the tids of the storage it opens (default: the system's). */
  clock?: Clock;
  /** Where log lines go (`jsonLogger(name)` for JSON lines on stderr); default none: the library logs nothing unless given one. */
  log?: Logger;
  /** An already open storage to serve instead of opening `path`. */
  storage?: FileStorage;
  /** The node name reported by status() and status requests. */
  name?: string;
  /** The storage's generations and hash chain, already open (promotion); opened beside `path` otherwise. */
  history?: FailoverHistory;
  /** The registry that meters `server`'s transport (a promoted secondary's): its byte counts move to this primary's. @internal */
  bytesMeteredBy?: ReplicationMetrics;
  /** A replication server already serving this storage (a promoted secondary's): kept, with its sessions. */
  server?: ReplicationServer;
  /**
   * Synchronous replication (docs/FAILOVER.md): `storage.tpcFinish` resolves
   * only once this many native secondaries acknowledged the transaction as
   * durable, else rejects with SyncReplicationTimeoutError after
   * `syncTimeoutMs` (the transaction stays committed here). Default 0.
   */
  syncReplicas?: number;
  /** Bound on each wait for acknowledgements, on `clock`. Default 10 000. */
  syncTimeoutMs?: number;
  /** The audit log (docs/FAILOVER.md): default `<path>.audit`; null turns it off. */
  auditPath?: string | null;
  /** What the promotion that opens this primary decided, for the audit log's `promotion` record (set by Secondary.promote). */
  promotion?: Record<string, unknown>;
  /**
   * The promotion's new generation, started only once its `promotion`
   * record is on disk (a decision is recorded before it takes effect, and
   * before anyone can learn of it). @internal
   */
  newGeneration?: { entry: GenerationEntry; start(): Promise<unknown> };
  /** This node's id in upstream paths (loop detection); default random. A promoted secondary keeps its own. @internal */
  nodeId?: Buffer;
}

/** A primary's answer to a promote request on its replication address, recorded in its audit log. */
function alreadyPrimary(audit: AuditLog | null): PromoteHandler {
  return async (request) => {
    const reason = 'this node is already a primary';
    await audit?.decide('promotion-refused', { code: 'already-primary', reason, requestedBy: request.peer, force: request.force }).catch(() => undefined);
    return { kind: 'refused', code: 'already-primary', reason };
  };
}

export class Primary {
  /** Generations and hash chain of this storage (see docs/FAILOVER.md). */
  private failover: FailoverHistory | null = null;
  /** Audit log, ack tracking and synchronous commits (src/replication/primarySync.ts). */
  private sync: PrimarySync | null = null;

  private constructor(
    /** The writable storage: commit through it as through any FileStorage. */
    readonly storage: FileStorage,
    private readonly server: ReplicationServer,
    private readonly describe: (sessions: SessionStatus[]) => NodeStatus,
    private readonly edges: NodeEdges,
  ) {}

  /**
   * Open the storage and start listening.
   *
   * @example
   * const primary = await Primary.open({ path: 'Data.fs', replicateTo: '127.0.0.1:5000' });
   */
  static async open(options: PrimaryOptions): Promise<Primary> {
    // A bad address is refused before the storage is opened (and locked).
    const address = toAddress(options.replicateTo);
    const clock = options.clock ?? systemClock;
    const storage =
      options.storage ?? (await FileStorage.open(options.path, { create: true, blobDir: options.blobDir, fsync: options.fsync, preallocate: options.preallocate, now: () => clock.now() }));
    if (!options.storage) logOpenRepairs(options.log ?? silentLogger, storage);
    const describe = (sessions: SessionStatus[]): NodeStatus =>
      buildNodeStatus({ role: 'primary', name: options.name ?? null, storage, nowMs: clock.now(), sessions, generation: history?.generations.current });
    let edges: NodeEdges | null = null;
    let history: FailoverHistory | null = options.history ?? null;
    let sync: PrimarySync | null = null;
    // Started here (not a promoted secondary's, which its own failure path releases): closed on a failure.
    let ownServer: ReplicationServer | null = null;
    try {
      history ??= await FailoverHistory.open(storage, { role: 'primary', fsync: options.fsync });
      edges = await openNodeEdges(options, clock, options.log ?? silentLogger);
      edges.metrics.watchStorage(storage);
      const metrics = edges.metrics;
      sync = await PrimarySync.open(options, storage, clock, options.log ?? silentLogger, history.generations);
      // A primary replicates from nobody: its path is itself.
      const path = [options.nodeId ?? randomBytes(NODE_ID_BYTES)];
      const role = {
        nodeStatus: describe,
        onSession: (session: Parameters<typeof metrics.onSession>[0]) => metrics.onSession(session),
        promote: alreadyPrimary(sync.audit),
        pack: packOnRequest({ pack: (t, refs, o) => storage.pack(t, refs, o), audit: () => sync!.audit, log: options.log ?? silentLogger }),
        upstreamPath: () => path,
      };
      let server: ReplicationServer;
      if (options.server) {
        // A promoted secondary's server: its open sessions keep streaming; from now on this primary answers for it.
        server = options.server;
        options.bytesMeteredBy?.handBytesTo(metrics);
        server.rebind({ ...role, onSession: undefined });
        server.watchSessions((session) => metrics.onSession(session)); // open sessions and new ones
      } else {
        server = ownServer = await ReplicationServer.start({
          storage,
          address,
          transport: edges.transport,
          clock: options.clock ?? systemClock,
          log: options.log ?? silentLogger,
          heartbeatIntervalMs: options.heartbeatIntervalMs,
          sendShare: options.sendShare,
          maxConnections: options.maxConnections,
          history,
          ...role,
        });
      }
      const primary = new Primary(sync.storage, server, describe, edges);
      primary.failover = history;
      primary.sync = sync;
      const promotion = options.promotion ?? (options.history !== undefined ? {} : null);
      const starting = options.newGeneration ?? null;
      let started = starting === null;
      // Records written before the new generation starts carry the one they decide.
      const start = async (): Promise<void> => {
        try {
          await starting?.start();
        } finally {
          // Started or not: later records carry the generation the storage is in.
          started = true;
        }
      };
      await sync.attach(server, { generation: () => (started ? primary.generation : starting!.entry), address: formatAddress(server.address), promotion, start });
      // The sessions kept streaming learn the new generation (and path) without reconnecting; only now that the
      // promotion is on disk in the audit log, as every decision is before anyone learns of it.
      if (options.server) server.announceGeneration();
      return primary;
    } catch (err) {
      // The first failure is the one to report; every step runs regardless.
      await runEach([() => ownServer?.close(), () => sync?.close(), () => edges?.close(), () => (options.history ? undefined : history?.close()), () => (options.storage ? undefined : storage.close())]).catch(() => undefined);
      throw err;
    }
  }

  /** The bound replication address. */
  get address(): ReplicationAddress {
    return this.server.address;
  }

  /** This node's metrics (its own prom-client registry). */
  get metrics(): ReplicationMetrics {
    return this.edges.metrics;
  }

  /** Where the metrics endpoint listens, when metricsAddress was given. */
  get metricsAddress(): ReplicationAddress | null {
    return this.edges.metricsServer?.address ?? null;
  }

  /** Connected secondaries with what each was sent and acknowledged, and the lag seen from acks. */
  secondaries(): SecondaryReplicationStatus[] {
    return this.sync!.status();
  }

  /**
   * Resolve once `replicas` (default: syncReplicas, at least 1) connected
   * native secondaries acknowledged `tid` as durable; reject with
   * SyncReplicationTimeoutError after `timeoutMs` (default: syncTimeoutMs).
   *
   * @example
   * const tid = await primary.localStorage.tpcFinish(txn);
   * await primary.waitForReplication(tid, { replicas: 2, timeoutMs: 5_000 });
   */
  waitForReplication(tid: Buffer, options: WaitForReplicationOptions = {}): Promise<ReplicationConfirmation> {
    // A tid this primary has not committed would only time out, and be audited as committed here.
    if (Buffer.isBuffer(tid) && tid.length === 8 && Buffer.compare(tid, this.storage.lastTransaction()) > 0) {
      return Promise.reject(new ZrsError(`tid ${tid.toString('hex')} is not committed on this primary (its last is ${this.storage.lastTransaction().toString('hex')})`));
    }
    return this.sync!.waitForReplication(tid, options);
  }

  /** The FileStorage itself: its tpcFinish never waits for secondaries, even with syncReplicas. */
  get localStorage(): FileStorage {
    return this.sync?.local ?? this.storage;
  }

  /** This node's audit log (null when turned off), for further decisions to be recorded in it. */
  get audit(): AuditLog | null {
    return this.sync?.audit ?? null;
  }

  /**
   * The node's status, the same object a status request receives over the wire.
   *
   * @example
   * const { lastTid, sessions } = primary.status();
   */
  status(): NodeStatus {
    return this.describe(this.server.status());
  }

  /**
   * Refuse new writes, send every committed transaction to connected
   * secondaries, close. Every call waits for the one close. A transaction
   * begun and not yet voted is aborted; one voted is waited for until its
   * caller finishes or aborts it (its tpcFinish may follow other resources'
   * votes, and aborting it then would break their two-phase commit).
   */
  close(): Promise<void> {
    this.closing ??= this.doClose();
    return this.closing;
  }

  private closing: Promise<void> | null = null;

  private async doClose(): Promise<void> {
    await runEach([
      () => this.storage.closeForWrites(),
      () => this.server.close(),
      () => this.sync?.close(),
      () => this.edges.close(),
      () => this.storage.close(),
      () => this.failover?.close(),
    ]);
  }

  /** The current generation of this primary's history. */
  get generation(): GenerationEntry {
    return this.failover!.welcomeFields().generation;
  }

  /** The whole generation history, oldest first. */
  get generations(): GenerationEntry[] {
    return this.failover!.generations.list;
  }

  /** The hash chain head: tid and link of the last transaction (null when empty). */
  get chainHead(): { tid: Buffer; hash: Buffer } | null {
    return this.failover!.chain.head;
  }
}
