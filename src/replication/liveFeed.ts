// Hands a storage's commits to the live sessions of one server. A single
// subscription to commits$ serves them all: a commit published with its
// bytes is parsed once here, not once per session, and the sessions receive
// the commits in ticks, each a batch of everything committed since the last
// one. A tick is a send step of the server's SendPacer: while committers
// keep the loop busy, ticks are spaced and the commits made meanwhile travel
// together, so a session's cost (a frame, a checksum, a socket write) is per
// tick, not per commit. Otherwise a tick runs on the next turn of the loop.
// A tick carries at most `tickCommits` (256): a step's cost grows with what
// it carries, and committers wait for it to end. Commits beyond it wait for
// the next tick; when more than `pendingCommits` (4096) or `pendingBytes`
// (64 MiB of transactions, whose bytes the feed holds) wait, the sessions
// cannot keep up: every listener is told it fell behind (it reads the log
// instead, in paced windows) and the pending commits are dropped.

import type { Subscription } from 'rxjs';
import type { Clock, TimerHandle } from '../ports/clock.js';
import type { FileStorage } from '../storage/FileStorage.js';
import { parseTransaction } from '../storage/iterator.js';
import type { CommittedTransaction, TransactionRecord } from '../storage/types.js';
import type { SendPacer } from './sendPacer.js';

export interface LiveCommit {
  readonly committed: CommittedTransaction;
  /** Parsed from the bytes it was published with; null when it came without them (read it from the file). */
  readonly txn: TransactionRecord | null;
}

/** How much a feed carries per tick and holds for ticks to come. */
export interface LiveFeedLimits {
  /** Most commits one tick hands over. */
  tickCommits: number;
  /** Most commits waiting for ticks before every listener is told it fell behind... */
  pendingCommits: number;
  /** ...and most bytes of them (the transactions' file bytes, which the feed holds). */
  pendingBytes: number;
}

/** The bytes the feed holds for a pending commit: its published copy (a large one comes without, and is read from the file). */
export const heldBytes = (c: CommittedTransaction): number => c.raw?.length ?? 0;

export const DEFAULT_LIVE_FEED_LIMITS: Readonly<LiveFeedLimits> = { tickCommits: 256, pendingCommits: 4096, pendingBytes: 64 * 1024 * 1024 };

export interface LiveListener {
  /** The commits since the last tick (or the first `tickCommits` of them), oldest first (the same array for every listener: do not change it). */
  next(commits: readonly LiveCommit[]): void;
  /** Commits came faster than ticks could carry them, and were dropped: read them from the log. */
  fellBehind(): void;
  /** The storage closed: no more commits. */
  complete(): void;
}

export class LiveFeed {
  private readonly listeners = new Set<LiveListener>();
  private subscription: Subscription | null = null;
  private pending: CommittedTransaction[] = [];
  /** File bytes of the pending commits. */
  private pendingBytes = 0;
  private immediate: ReturnType<typeof setImmediate> | null = null;
  private timer: TimerHandle | null = null;
  /** Ticks that delivered commits so far. */
  ticks = 0;

  constructor(
    private readonly storage: FileStorage,
    private readonly clock: Clock,
    private readonly pacer: SendPacer,
    private readonly limits: Readonly<LiveFeedLimits> = DEFAULT_LIVE_FEED_LIMITS,
  ) {}

  /**
   * Receive commits from the next tick on (it may hold some made just before
   * this call: skip what you already have); returns a function that stops.
   * Completes at once when the storage is closed.
   */
  subscribe(listener: LiveListener): () => void {
    this.listeners.add(listener);
    if (this.subscription === null) {
      this.subscription = this.storage.commits$.subscribe({
        next: (c) => this.onCommit(c),
        complete: () => this.onComplete(),
      });
      // Subscribing to a closed storage completed at once (and this listener with it).
      if (this.subscription.closed) this.subscription = null;
    }
    return () => {
      if (!this.listeners.delete(listener) || this.listeners.size > 0) return;
      this.subscription?.unsubscribe();
      this.subscription = null;
      this.pending = [];
      this.pendingBytes = 0;
      this.cancelTick();
    };
  }

  private onCommit(c: CommittedTransaction): void {
    this.pending.push(c);
    this.pendingBytes += heldBytes(c);
    if (this.pending.length > this.limits.pendingCommits || this.pendingBytes > this.limits.pendingBytes) {
      this.pending = [];
      this.pendingBytes = 0;
      this.cancelTick();
      // Each leaves (the last one ends the subscription); one that stays still gets the next commits.
      for (const l of [...this.listeners]) l.fellBehind();
      return;
    }
    if (this.immediate === null && this.timer === null) this.schedule();
  }

  private schedule(): void {
    const waitMs = this.pacer.delayMs();
    if (waitMs <= 0) this.immediate = setImmediate(this.tick);
    else this.timer = this.clock.setTimeout(this.tick, waitMs);
  }

  private cancelTick(): void {
    if (this.immediate !== null) clearImmediate(this.immediate);
    if (this.timer !== null) this.clock.clearTimeout(this.timer);
    this.immediate = null;
    this.timer = null;
  }

  private readonly tick = (): void => {
    this.immediate = null;
    this.timer = null;
    this.pacer.step(() => this.deliver());
    if (this.pending.length > 0 && this.subscription !== null) this.schedule();
  };

  private deliver(): void {
    if (this.pending.length === 0) return;
    let batch = this.pending;
    if (batch.length > this.limits.tickCommits) batch = this.pending.splice(0, this.limits.tickCommits);
    else this.pending = [];
    for (const c of batch) this.pendingBytes -= heldBytes(c);
    this.ticks += 1;
    const commits = batch.map((c): LiveCommit => ({ committed: c, txn: this.parse(c) }));
    for (const l of [...this.listeners]) l.next(commits);
  }

  /** The transaction from its published bytes; null (read the file) when it has none or they do not parse. */
  private parse(c: CommittedTransaction): TransactionRecord | null {
    if (c.raw === undefined) return null;
    try {
      return parseTransaction(this.storage, c.raw, c.pos);
    } catch {
      return null; // the file read reports it, with its position
    }
  }

  private onComplete(): void {
    this.cancelTick();
    while (this.pending.length > 0) this.deliver();
    this.subscription = null;
    const listeners = [...this.listeners];
    this.listeners.clear();
    for (const l of listeners) l.complete();
  }
}
