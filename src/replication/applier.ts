// Applies a replication stream to the secondary's storage, one transaction
// at a time, atomically: restore records into the pending transaction, write
// blob files under the blob directory, vote and finish only at the verified
// commit. Anything else (disconnect, close, bad input) aborts the pending
// transaction, so the file stays at its last complete transaction.
// Finishes are not awaited one by one: many transactions share an fsync
// (group commit), and each is reported applied only once durable.

import { open, rm, type FileHandle } from 'node:fs/promises';
import { writeFully } from '../storage/fileio.js';
import { ProtocolError, ReplicationHaltedError } from '../errors.js';
import type { FileStorage } from '../storage/FileStorage.js';
import type { TransactionMeta } from '../storage/types.js';
import type { ApplyEvent } from './inbound.js';
import type { RunLinks } from '../failover/links.js';
import type { GenerationEntry } from '../wire/native.js';
import { NO_MUTATIONS, type ReplicationMutations } from './mutations.js';

/** Transactions finished but not yet durable before the applier waits. */
const MAX_UNSYNCED = 512;
/** Bytes of raw runs written but not yet durable before the applier waits (bounds memory while catching up). */
const MAX_UNSYNCED_BYTES = 16 * 1024 * 1024;

interface PendingBlob {
  oid: Buffer;
  data: Buffer | null;
  dataTxn: Buffer | null;
  path: string;
  handle: FileHandle;
  remaining: number;
}

export interface ApplierHooks {
  /** A transaction is durable on the secondary. */
  applied(tid: Buffer): void;
  /** The upstream is alive; with `generation`, it started that generation (a promotion) and the secondary adopts it. */
  heartbeat(lastTid: Buffer, clockMs: number, generation?: GenerationEntry): void | Promise<void>;
  /** The primary's hash-chain link for a transaction about to be finished (packed ones). */
  link?(tid: Buffer, link: Buffer): void;
  /** Resolves once the links given by link() are on disk: a transaction that came with one is reported applied only then. */
  linkWritten?(): Promise<void>;
  /** Links of a run about to be written, computed from its bytes (the first after `prevLink`); `null`: the run failed, forget them. */
  runLinks?(linked: RunLinks | null): void;
  /** Mutation ackBeforeSync only: acknowledge `tid` upstream now, before it is durable. */
  ackEarly?(tid: Buffer): void;
}

export class Applier {
  private txn: (TransactionMeta & { tid: Buffer }) | null = null;
  private blob: PendingBlob | null = null;
  private unsynced: Array<Promise<Buffer>> = [];
  private failed: Error | null = null;
  /** Mutation commitBeforeCommitMessage only: records still to come, and the tid finished early. */
  private earlyRemaining: number | null = null;
  private finishedEarly: Buffer | null = null;

  constructor(
    private readonly storage: FileStorage,
    private readonly hooks: ApplierHooks,
    private readonly blobs: boolean,
    /** Test-only deliberate bugs (mutations.ts); none by default. */
    private readonly mutations: ReplicationMutations = NO_MUTATIONS,
  ) {}

  get inTransaction(): boolean {
    return this.txn !== null || this.raw !== null;
  }

  /** Raw transactions received, waiting for their commit message. */
  private raw: Extract<ApplyEvent, { kind: 'rawTxns' }> | null = null;

  async apply(e: ApplyEvent): Promise<void> {
    if (this.failed) throw this.failed;
    switch (e.kind) {
      case 'begin':
        return this.begin(e);
      case 'record':
        return this.record(e);
      case 'blobBlock':
        return this.blobBlock(e.bytes, e.last);
      case 'rawTxns':
        return this.rawTxns(e);
      case 'commit':
        if (e.link) this.hooks.link?.(e.tid, e.link);
        return this.commit(e.tid, e.link !== undefined);
      case 'heartbeat':
        await this.hooks.heartbeat(e.lastTid, e.clockMs, e.generation);
        return;
      default:
        throw new ProtocolError(`unexpected ${e.kind} while replicating`);
    }
  }

  private async begin(e: Extract<ApplyEvent, { kind: 'begin' }>): Promise<void> {
    if (this.txn) throw new ProtocolError('transaction begins inside another');
    const meta = { user: e.user, description: e.description, extensionBytes: e.extension, tid: e.tid };
    await this.storage.tpcBegin(meta, { tid: e.tid, status: e.status });
    this.txn = meta;
    if (this.mutations.commitBeforeCommitMessage && e.recordCount !== undefined) {
      this.earlyRemaining = e.recordCount;
      if (e.recordCount === 0) await this.finishEarly();
    }
  }

  private async record(e: Extract<ApplyEvent, { kind: 'record' }>): Promise<void> {
    const txn = this.requireTxn();
    if (e.blob === null || !this.blobs) {
      this.storage.restore(e.oid, txn.tid, e.data, e.dataTxn, txn);
      if (this.earlyRemaining !== null && --this.earlyRemaining === 0) await this.finishEarly();
      return;
    }
    const blobs = this.storage.blobs;
    // A configuration error: every attempt would fail on the same blob, so replication stops (failed).
    if (!blobs) throw new ReplicationHaltedError("the primary sends blobs but this secondary has no blob directory (configure blob-dir, or transfer-blobs false where it shares the primary's)");
    const path = blobs.tempPath();
    const handle = await open(path, 'wx');
    this.blob = { oid: e.oid, data: e.data, dataTxn: e.dataTxn, path, handle, remaining: e.blob.blocks };
    // A 0-byte blob arrives with no blocks and is still a (0-byte) file.
    if (e.blob.blocks === 0) await this.finishBlob();
  }

  private async blobBlock(bytes: Buffer, last: boolean): Promise<void> {
    const b = this.blob;
    if (!b) {
      if (!this.blobs) return; // blob transfer off: the blob directory is shared
      throw new ProtocolError('blob block without a blob record');
    }
    await writeFully(b.handle, bytes, null, b.path);
    b.remaining -= 1;
    if (last || b.remaining <= 0) await this.finishBlob();
  }

  private async finishBlob(): Promise<void> {
    const b = this.blob!;
    const txn = this.requireTxn();
    await b.handle.close();
    this.blob = null;
    try {
      await this.storage.restoreBlob(b.oid, txn.tid, b.data, b.path, b.dataTxn, txn);
    } catch (err) {
      // Not staged, so neither this transaction's abort nor anyone else removes it.
      await rm(b.path, { force: true });
      throw err;
    }
  }

  private async rawTxns(e: Extract<ApplyEvent, { kind: 'rawTxns' }>): Promise<void> {
    if (this.txn || this.raw) throw new ProtocolError('transactions begin inside another');
    this.raw = e;
    if (this.mutations.commitBeforeCommitMessage) {
      this.finishedEarly = e.lastTid;
      await this.finishRaw();
    }
  }

  private async finishRaw(): Promise<void> {
    const e = this.raw!;
    this.raw = null;
    // Handed over before the write: the chain takes them when the run is published durable.
    if (e.linked) this.hooks.runLinks?.(e.linked);
    const { durable } = await this.storage.appendTransactions(e.bytes).catch((err: unknown) => {
      if (e.linked) this.hooks.runLinks?.(null);
      throw err;
    });
    if (this.mutations.ackBeforeSync) this.hooks.ackEarly?.(e.lastTid);
    await this.track(durable, e.bytes.length);
  }

  private async commit(tid: Buffer, linkGiven = false): Promise<void> {
    if (this.finishedEarly !== null && this.finishedEarly.equals(tid)) {
      this.finishedEarly = null;
      return;
    }
    if (this.raw) {
      if (!tid.equals(this.raw.lastTid)) throw new ProtocolError('commit does not close the transactions in progress');
      return this.finishRaw();
    }
    const txn = this.requireTxn();
    if (!tid.equals(txn.tid) || this.blob) throw new ProtocolError('commit does not close the transaction in progress');
    // A link the primary gave cannot be computed here again (docs/FAILOVER.md): acknowledged only once written.
    await this.finish(txn, linkGiven ? this.hooks.linkWritten : undefined);
  }

  /** The mutation commitBeforeCommitMessage: finish once the announced records are in. */
  private async finishEarly(): Promise<void> {
    const txn = this.requireTxn();
    this.earlyRemaining = null;
    this.finishedEarly = txn.tid;
    await this.finish(txn);
  }

  private async finish(txn: TransactionMeta & { tid: Buffer }, written?: () => Promise<void>): Promise<void> {
    await this.storage.tpcVote(txn);
    this.txn = null;
    const finished = this.storage.tpcFinish(txn);
    if (this.mutations.ackBeforeSync) this.hooks.ackEarly?.(txn.tid);
    await this.track(written ? finished.then(async (tid) => (await written(), tid)) : finished);
  }

  /** Report `finished` applied once durable; wait only when too many are still syncing. */
  private async track(durable: Promise<Buffer>, bytes = 0): Promise<void> {
    // Reported in order: one waiting for its given link to be written holds back those after it, and
    // one that failed stops them (a report of a later one would acknowledge it too: acks are cumulative).
    durable.catch(() => undefined); // handled below, or left unreported after an earlier failure
    const finished = this.lastReport.then(() => {
      if (this.failed) throw this.failed;
      return durable;
    });
    this.lastReport = finished.catch((err: Error) => void (this.failed ??= err));
    this.unsynced.push(finished);
    this.unsyncedBytes += bytes;
    finished.then(
      (t) => {
        this.unsynced = this.unsynced.filter((p) => p !== finished);
        this.unsyncedBytes -= bytes;
        this.hooks.applied(t);
      },
      (err: Error) => void (this.failed ??= err),
    );
    while (this.unsynced.length >= MAX_UNSYNCED || (this.unsyncedBytes > MAX_UNSYNCED_BYTES && this.unsynced.length > 1)) {
      await this.unsynced[0];
    }
  }

  /** Settles after the last tracked transaction was reported (or failed). */
  private lastReport: Promise<unknown> = Promise.resolve();

  private unsyncedBytes = 0;

  private requireTxn(): TransactionMeta & { tid: Buffer } {
    if (!this.txn) throw new ProtocolError('record outside a transaction');
    return this.txn;
  }

  /** Abandon a half-received transaction; the storage keeps its last complete one. */
  async abort(): Promise<void> {
    if (this.mutations.noAbortOnDisconnect) return;
    this.earlyRemaining = null;
    this.finishedEarly = null;
    const b = this.blob;
    this.blob = null;
    if (b) {
      await b.handle.close().catch(() => undefined);
      await rm(b.path, { force: true });
    }
    this.raw = null; // nothing of it was written
    const txn = this.txn;
    this.txn = null;
    if (txn) await this.storage.tpcAbort(txn);
  }

  /** Wait until every finished transaction is durable (and reported). */
  async settle(): Promise<void> {
    await Promise.allSettled(this.unsynced);
  }
}
