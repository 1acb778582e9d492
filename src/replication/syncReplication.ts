// Synchronous replication on a primary: follows every session's
// acknowledgements (native protocol `ack {tid}`: durably applied on the
// secondary) to answer "have n secondaries got this tid?", to wait for it
// with a timeout on the injected clock, and to measure each secondary's lag.
// Invariants: only explicit acks from connected native sessions count (never
// a zrs2 session, never a closed one); a wait never reports success before n
// such acks; every timeout is logged and audited (fsynced).

import { SyncReplicationAbortedError, SyncReplicationTimeoutError, ZrsError } from '../errors.js';
import type { Clock, TimerHandle } from '../ports/clock.js';
import type { AuditLog } from '../audit/auditLog.js';
import type { FileStorage } from '../storage/FileStorage.js';
import type { TransactionMeta } from '../storage/types.js';
import type { Logger } from './log.js';
import { isReplicatingState, type PrimarySession, type SessionProgress, type SessionStatus } from './primarySession.js';

/** Default bound on one wait for acknowledgements. */
export const DEFAULT_SYNC_TIMEOUT_MS = 10_000;
/** Send times remembered per session for lag; beyond it, the oldest after the first are merged away. */
const MAX_SENT_TIMES = 4096;

/** What `Primary.secondaries()` reports per connected secondary. */
export interface SecondaryReplicationStatus extends SessionStatus {
  /** The protocol acknowledges durable transactions (native); zrs2 secondaries never do. */
  acks: boolean;
  /**
   * How far behind the secondary is, as the primary sees it: age of the
   * oldest transaction sent but not yet acknowledged (0 when everything sent
   * is acknowledged), null when the protocol has no acks.
   */
  lagMs: number | null;
  /** For the latest ack: time from sending that tid to receiving its ack. */
  lastAckLatencyMs: number | null;
  /** Clock time of the latest ack. */
  lastAckAtMs: number | null;
}

export interface WaitForReplicationOptions {
  /** How many secondaries must acknowledge. Default 1. */
  replicas?: number;
  /** Fail with SyncReplicationTimeoutError after this long. Default DEFAULT_SYNC_TIMEOUT_MS. */
  timeoutMs?: number;
}

/** What a successful wait resolves with. */
export interface ReplicationConfirmation {
  tid: Buffer;
  /** Peers whose acks covered `tid` when the wait ended. */
  peers: string[];
  /** Clock time between the start of the wait and its end. */
  waitedMs: number;
}

interface Tracked {
  session: PrimarySession;
  acks: boolean;
  ackedTid: Buffer | null;
  lastSentTid: Buffer | null;
  /** (tid as a number, time sent), oldest first, all newer than ackedTid. */
  sent: Array<{ tid: bigint; atMs: number }>;
  lastAckLatencyMs: number | null;
  lastAckAtMs: number | null;
}

interface Waiter {
  tid: Buffer;
  /** Resolved, timed out or aborted: no longer pending (it may still sit in the list until it is compacted). */
  settled: boolean;
  replicas: number;
  timeoutMs: number;
  startedMs: number;
  timer: TimerHandle;
  resolve(c: ReplicationConfirmation): void;
  reject(e: Error): void;
}

export interface AckTrackerOptions {
  clock: Clock;
  log: Logger;
  audit?: AuditLog | null;
}

/**
 * Follows the sessions of one replication server. Give it each session as
 * it is created (`track`), then ask `status()` or `waitForReplication()`.
 *
 * @example
 * const tracker = new AckTracker({ clock, log });
 * // ReplicationServer.start({ …, onSession: (s) => tracker.track(s) })
 * await tracker.waitForReplication(tid, { replicas: 2, timeoutMs: 5_000 });
 */
export class AckTracker {
  private readonly tracked = new Map<PrimarySession, Tracked>();
  /**
   * Pending waits by the number of acks they want, each list in tid order
   * with settled waits among them until compacted (commits add theirs in
   * order: appending is the usual case). An ack looks at each list from the
   * oldest and stops at the first wait too few sessions cover: with a
   * secondary missing, thousands of waits pile up, and looking at each on
   * every ack cost waits x sessions per ack.
   */
  private readonly waiting = new Map<number, { list: Waiter[]; settled: number }>();
  private pending = 0;
  private closed = false;

  constructor(private readonly options: AckTrackerOptions) {}

  /** Follow one session until it closes. */
  track(session: PrimarySession): void {
    const t: Tracked = { session, acks: false, ackedTid: null, lastSentTid: null, sent: [], lastAckLatencyMs: null, lastAckAtMs: null };
    this.tracked.set(session, t);
    const sub = session.progress$.subscribe((p) => this.onProgress(t, p));
    session.done$.subscribe({
      complete: () => {
        this.tracked.delete(session);
        queueMicrotask(() => sub.unsubscribe());
      },
    });
  }

  private onProgress(t: Tracked, { acks, lastSentTid: lastSent, ackedTid: acked }: SessionProgress): void {
    const now = this.options.clock.now();
    t.acks = acks;
    if (lastSent !== null && (t.lastSentTid === null || !lastSent.equals(t.lastSentTid))) {
      t.lastSentTid = lastSent;
      if (acks) rememberSent(t.sent, lastSent, now);
    }
    if (acked === null || (t.ackedTid !== null && acked.equals(t.ackedTid))) return;
    t.ackedTid = acked;
    t.lastAckAtMs = now;
    let sentAt: number | null = null;
    const ackedAt = acked.readBigUInt64BE(0);
    while (t.sent.length > 0 && t.sent[0]!.tid <= ackedAt) sentAt = t.sent.shift()!.atMs;
    t.lastAckLatencyMs = sentAt === null ? null : now - sentAt;
    this.recheck();
  }

  /** Sessions serving a secondary (past the handshake: not a status request, nor a connection refused). */
  private secondaries(): Tracked[] {
    return [...this.tracked.values()].filter((t) => isReplicatingState(t.session.machine.getSnapshot().value));
  }

  /** Connected secondaries, each with its acknowledgement lag. */
  status(): SecondaryReplicationStatus[] {
    const now = this.options.clock.now();
    return this.secondaries().map((t) => ({
      ...t.session.status(),
      acks: t.acks,
      lagMs: t.acks ? (t.sent.length > 0 ? now - t.sent[0]!.atMs : 0) : null,
      lastAckLatencyMs: t.lastAckLatencyMs,
      lastAckAtMs: t.lastAckAtMs,
    }));
  }

  /** Peers of the connected sessions whose acks cover `tid`. */
  confirmedBy(tid: Buffer): string[] {
    const peers: string[] = [];
    for (const t of this.tracked.values()) {
      if (t.acks && t.ackedTid !== null && Buffer.compare(t.ackedTid, tid) >= 0) peers.push(t.session.peer);
    }
    return peers;
  }

  /**
   * Resolve once `replicas` connected native secondaries acknowledged `tid`
   * (or a later tid) as durable; reject with SyncReplicationTimeoutError
   * after `timeoutMs` of the injected clock (logged and audited), or with
   * SyncReplicationAbortedError if the tracker closes first.
   */
  waitForReplication(tid: Buffer, options: WaitForReplicationOptions = {}): Promise<ReplicationConfirmation> {
    const replicas = options.replicas ?? 1;
    const timeoutMs = options.timeoutMs ?? DEFAULT_SYNC_TIMEOUT_MS;
    // Rejected, not thrown: a caller's .catch() sees bad input too.
    if (!Number.isInteger(replicas) || replicas < 0) return Promise.reject(new ZrsError(`replicas must be a non-negative integer, got ${replicas}`));
    if (!(timeoutMs > 0) || !Number.isFinite(timeoutMs)) return Promise.reject(new ZrsError(`timeoutMs must be a positive finite number, got ${timeoutMs}`));
    if (!Buffer.isBuffer(tid) || tid.length !== 8) return Promise.reject(new ZrsError(`tid must be 8 bytes, got ${Buffer.isBuffer(tid) ? `${tid.length}` : typeof tid}`));
    const clock = this.options.clock;
    const startedMs = clock.now();
    const peers = this.confirmedBy(tid);
    if (peers.length >= replicas) return Promise.resolve({ tid: Buffer.from(tid), peers, waitedMs: 0 });
    if (this.closed) return Promise.reject(new SyncReplicationAbortedError(Buffer.from(tid), replicas, peers.length));
    return new Promise<ReplicationConfirmation>((resolve, reject) => {
      const waiter: Waiter = { tid: Buffer.from(tid), settled: false, replicas, timeoutMs, startedMs, timer: null, resolve, reject };
      waiter.timer = clock.setTimeout(() => this.timedOut(waiter), timeoutMs);
      let bucket = this.waiting.get(replicas);
      if (bucket === undefined) this.waiting.set(replicas, (bucket = { list: [], settled: 0 }));
      let at = bucket.list.length;
      while (at > 0 && Buffer.compare(bucket.list[at - 1]!.tid, waiter.tid) > 0) at--;
      bucket.list.splice(at, 0, waiter);
      this.pending += 1;
    });
  }

  /** Waits in progress (for tests and status). */
  get pendingWaits(): number {
    return this.pending;
  }

  private recheck(): void {
    if (this.pending === 0) return;
    // The acknowledged tids, newest first: a wait's tid is covered by the first `covering` of them.
    const acked = [...this.tracked.values()].flatMap((t) => (t.acks && t.ackedTid !== null ? [t.ackedTid] : [])).sort((a, b) => Buffer.compare(b, a));
    for (const [replicas, bucket] of this.waiting) {
      let covering = acked.length;
      for (const w of bucket.list) {
        if (w.settled) continue;
        while (covering > 0 && Buffer.compare(acked[covering - 1]!, w.tid) < 0) covering--;
        // Later waits have later tids: none is covered by more sessions than this one.
        if (covering < replicas) break;
        this.settle(w);
        w.resolve({ tid: w.tid, peers: this.confirmedBy(w.tid), waitedMs: this.options.clock.now() - w.startedMs });
      }
      this.compact(replicas, bucket);
    }
  }

  /** Take `w` off the pending waits (it stays in its list until compacted). */
  private settle(w: Waiter): void {
    w.settled = true;
    this.options.clock.clearTimeout(w.timer);
    this.pending -= 1;
    this.waiting.get(w.replicas)!.settled += 1;
  }

  /** Drop settled waits from a list once they are most of it (each is dropped once: linear over a run). */
  private compact(replicas: number, bucket: { list: Waiter[]; settled: number }): void {
    if (bucket.settled * 2 <= bucket.list.length) return;
    bucket.list = bucket.list.filter((w) => !w.settled);
    bucket.settled = 0;
    if (bucket.list.length === 0) this.waiting.delete(replicas);
  }

  private timedOut(w: Waiter): void {
    if (w.settled) return;
    this.settle(w);
    this.compact(w.replicas, this.waiting.get(w.replicas)!);
    const got = this.confirmedBy(w.tid).length;
    const error = new SyncReplicationTimeoutError(w.tid, w.replicas, got, w.timeoutMs);
    const details = { tid: w.tid.toString('hex'), wanted: w.replicas, got, timeoutMs: w.timeoutMs, connected: this.secondaries().length };
    this.options.log('warn', error.message, details);
    const audit = this.options.audit;
    // The caller learns of the timeout only once the decision is on disk.
    const recorded = audit ? audit.decide('sync-timeout', details).catch(() => undefined) : Promise.resolve();
    void recorded.then(() => w.reject(error));
  }

  /** End every wait (SyncReplicationAbortedError) and refuse new ones that are not already satisfied. */
  close(): void {
    this.closed = true;
    for (const bucket of this.waiting.values()) {
      for (const w of bucket.list) {
        if (w.settled) continue;
        this.settle(w);
        w.reject(new SyncReplicationAbortedError(w.tid, w.replicas, this.confirmedBy(w.tid).length));
      }
    }
    this.waiting.clear();
  }
}

/** Keep send times bounded: when full, drop the second oldest (the oldest stays exact for lagMs). */
function rememberSent(sent: Array<{ tid: bigint; atMs: number }>, tid: Buffer, atMs: number): void {
  if (sent.length >= MAX_SENT_TIMES) sent.splice(1, 1);
  // Its value, not the Buffer: an 8-byte Buffer cut from Node's shared pool keeps the pool's whole
  // 8 KiB slab alive, and a secondary that stops acknowledging holds thousands of these.
  sent.push({ tid: tid.readBigUInt64BE(0), atMs });
}

/**
 * The storage a Primary with `syncReplicas > 0` hands out: the same
 * FileStorage, except that `tpcFinish` resolves only once `replicas`
 * secondaries acknowledged the transaction. On timeout it rejects with
 * SyncReplicationTimeoutError while the transaction stays committed locally.
 * Every other member is the FileStorage's own (bound to it).
 */
export function syncCommitStorage(storage: FileStorage, tracker: AckTracker, replicas: number, timeoutMs: number): FileStorage {
  const tpcFinish = async (txn: TransactionMeta): Promise<Buffer> => {
    const tid = await storage.tpcFinish(txn);
    // A transaction that stored nothing wrote nothing (as in ZODB): there is nothing to replicate.
    if (Buffer.compare(storage.lastTransaction(), tid) < 0) return tid;
    await tracker.waitForReplication(tid, { replicas, timeoutMs });
    return tid;
  };
  return new Proxy(storage, {
    get(target, prop) {
      if (prop === 'tpcFinish') return tpcFinish;
      const v: unknown = Reflect.get(target, prop, target);
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}
