// What a Primary adds around its replication server for auditable failover:
// the audit log (sessions, handshakes, decisions), the ack tracker (lag,
// waitForReplication) and, with `syncReplicas`, the storage whose tpcFinish
// waits for acknowledgements. Primary only opens, attaches and closes it.

import { AuditLog } from '../audit/auditLog.js';
import { auditServerSessions, openNodeAudit, type GenerationsSeen } from '../audit/nodeAudit.js';
import type { Clock } from '../ports/clock.js';
import type { FileStorage } from '../storage/FileStorage.js';
import type { Logger } from './log.js';
import { ZrsError } from '../errors.js';
import type { ReplicationServer } from './server.js';
import {
  AckTracker,
  DEFAULT_SYNC_TIMEOUT_MS,
  syncCommitStorage,
  type ReplicationConfirmation,
  type SecondaryReplicationStatus,
  type WaitForReplicationOptions,
} from './syncReplication.js';

export interface PrimarySyncOptions {
  path: string;
  name?: string;
  /** Commits resolve only once this many native secondaries acknowledged them. Default 0 (asynchronous). */
  syncReplicas?: number;
  /** Bound on that wait. Default DEFAULT_SYNC_TIMEOUT_MS. */
  syncTimeoutMs?: number;
  /** Audit log path; default `<path>.audit`; null turns it off. */
  auditPath?: string | null;
}

/** The sync options with their defaults; throws ZrsError for a bad one. */
export function checkSyncOptions(options: Pick<PrimarySyncOptions, 'syncReplicas' | 'syncTimeoutMs'>): { syncReplicas: number; syncTimeoutMs: number } {
  const syncReplicas = options.syncReplicas ?? 0;
  const syncTimeoutMs = options.syncTimeoutMs ?? DEFAULT_SYNC_TIMEOUT_MS;
  if (!Number.isInteger(syncReplicas) || syncReplicas < 0) throw new ZrsError(`syncReplicas must be a non-negative integer, got ${syncReplicas}`);
  if (!(syncTimeoutMs > 0) || !Number.isFinite(syncTimeoutMs)) throw new ZrsError(`syncTimeoutMs must be a positive number, got ${syncTimeoutMs}`);
  return { syncReplicas, syncTimeoutMs };
}

export class PrimarySync {
  private stopAudit: (() => void) | null = null;
  private stopTracking: (() => void) | null = null;
  private closed = false;
  /** attach() recorded the node's start (`config open`). */
  private opened = false;

  private constructor(
    readonly audit: AuditLog | null,
    readonly tracker: AckTracker,
    /** The storage to hand out: the FileStorage itself, or its sync-commit wrapper. */
    readonly storage: FileStorage,
    readonly syncReplicas: number,
    readonly syncTimeoutMs: number,
    /** The FileStorage itself (tpcFinish never waits). */
    readonly local: FileStorage,
  ) {}

  /** `generations`: the node's history (a promotion its audit log records that never started is taken back). */
  static async open(options: PrimarySyncOptions, storage: FileStorage, clock: Clock, log: Logger, generations?: GenerationsSeen): Promise<PrimarySync> {
    const { syncReplicas, syncTimeoutMs } = checkSyncOptions(options);
    const audit = await openNodeAudit({ dataPath: options.path, auditPath: options.auditPath, node: options.name, clock, log }, generations);
    const tracker = new AckTracker({ clock, log, audit });
    const exposed = syncReplicas > 0 ? syncCommitStorage(storage, tracker, syncReplicas, syncTimeoutMs) : storage;
    return new PrimarySync(audit, tracker, exposed, syncReplicas, syncTimeoutMs, storage);
  }

  /**
   * Follow `server`'s sessions (open ones too) and record the node's start:
   * a `promotion` decision when the primary was opened from an existing
   * history (a promoted secondary); then, once its generation has started
   * (`start`), a `config` record. A promotion that fails to start has no
   * `config` record after it: the failure's record comes next.
   */
  async attach(server: ReplicationServer, details: { generation: () => unknown; address: string; promotion: Record<string, unknown> | null; start?: () => Promise<void> }): Promise<void> {
    this.stopTracking = server.watchSessions((s) => this.tracker.track(s));
    if (this.audit) {
      this.audit.generation = details.generation;
      this.stopAudit = auditServerSessions(this.audit, server);
      // A promotion is recorded before it takes effect: one that cannot be recorded does not happen.
      // (Any other failed write is logged by the audit log itself and fails every later decision.)
      if (details.promotion) await this.audit.decide('promotion', { role: 'primary', address: details.address, ...details.promotion });
    }
    await details.start?.();
    if (!this.audit) return;
    this.opened = true;
    await this.audit
      .decide('config', { change: 'open', role: 'primary', replicateTo: details.address, syncReplicas: this.syncReplicas, syncTimeoutMs: this.syncTimeoutMs })
      .catch(() => undefined);
  }

  status(): SecondaryReplicationStatus[] {
    return this.tracker.status();
  }

  waitForReplication(tid: Buffer, options: WaitForReplicationOptions = {}): Promise<ReplicationConfirmation> {
    return this.tracker.waitForReplication(tid, { replicas: options.replicas ?? Math.max(1, this.syncReplicas), timeoutMs: options.timeoutMs ?? this.syncTimeoutMs });
  }

  /** End pending waits, record the close, close the audit log. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.tracker.close();
    this.stopTracking?.();
    this.stopAudit?.();
    if (this.audit) {
      // A primary that never opened (its address in use, say) ran nothing to close.
      if (this.opened) await this.audit.decide('config', { change: 'close', role: 'primary' }).catch(() => undefined);
      await this.audit.close();
    }
  }
}
