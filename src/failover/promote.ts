// Promotion: a secondary becomes a primary. It stops replicating (the
// half-received transaction is aborted), starts generation n + 1 at its last
// tid (durably, before any write is accepted), and serves at its replicateTo
// address, keeping the downstream sessions it already serves.
// Invariant 5: the new generation is strictly greater than every generation
// this node ever saw; with a `claim` hook backed by an external coordinator
// (compare-and-set), no two nodes ever become writable in one generation.

import { auditPast, promotionRunAgain } from '../audit/nodeAudit.js';
import { ZrsError } from '../errors.js';
import type { Clock } from '../ports/clock.js';
import type { ReplicationAddress, Transport } from '../ports/transport.js';
import { toAddress } from '../replication/address.js';
import type { Logger } from '../replication/log.js';
import { Primary, type PrimaryOptions } from '../replication/primary.js';
import { checkSyncOptions } from '../replication/primarySync.js';
import type { ReplicationServer } from '../replication/server.js';
import type { FileStorage } from '../storage/FileStorage.js';
import type { GenerationEntry, PromoteRefusalCode } from '../wire/native.js';
import type { FailoverHistory } from './history.js';

export interface PromoteOptions {
  /** Where to serve when the secondary did not already (replicateTo). */
  replicateTo?: string | number | ReplicationAddress;
  /** Promote even while connected to a live primary, or while diverged (the operator knows better). */
  force?: boolean;
  /**
   * Ask an external coordinator for the generation before taking it (e.g. a
   * compare-and-set in etcd or ZooKeeper); resolve false to refuse. Without
   * it, nothing prevents two nodes promoted at once from both accepting writes.
   * `signal` aborts when the secondary is closed meanwhile: the promotion is
   * then refused without waiting for the answer (pass it on to the
   * coordinator's client, so its request stops too).
   */
  claim?: (generation: GenerationEntry, context: { signal: AbortSignal }) => Promise<boolean>;
  heartbeatIntervalMs?: number;
  /** The new primary's synchronous replication (PrimaryOptions.syncReplicas); default 0. */
  syncReplicas?: number;
  /** PrimaryOptions.syncTimeoutMs for the new primary. */
  syncTimeoutMs?: number;
  /** Who asked, for the audit log: `api` by default, the peer's address for a promote request. */
  requestedBy?: string;
}

/** What a Secondary hands over to be promoted. */
export interface PromotionHandle {
  storage: FileStorage;
  history: FailoverHistory;
  log: Logger;
  transport?: Transport;
  clock?: Clock;
  fsync?: boolean;
  /** Options of the secondary the new Primary keeps: its name, audit log and metrics endpoint. */
  carried?: Pick<PrimaryOptions, 'name' | 'auditPath' | 'metricsAddress' | 'bytesMeteredBy' | 'nodeId'>;
  /** The connection machine's state name, e.g. 'connected.replicating', 'backoff'. */
  upstreamState(): string;
  /** The address it replicates from, for the audit log. */
  upstreamAddress(): string;
  /** The address it already serves further secondaries at, if any. */
  serverAddress(): ReplicationAddress | null;
  /** Stop replicating for good (abort the transaction in progress); returns the server it runs, if any. */
  detach(): Promise<ReplicationServer | null>;
  /** Aborted when the secondary is closed: a claim still waiting for its coordinator is given up. */
  signal?: AbortSignal;
  /** The audit logs that say what this node did (its own, and its default one): a promotion run again is refused by them. */
  auditPaths?: readonly string[];
}

/** The claim's answer, or a refusal as soon as `signal` aborts (a close must not wait on a coordinator). */
function claimed(answer: Promise<boolean>, signal: AbortSignal): Promise<boolean> {
  if (signal.aborted) return Promise.reject(new PromotionRefusedError('the secondary was closed while the coordinator answered'));
  return new Promise((resolve, reject) => {
    const onAbort = (): void => reject(new PromotionRefusedError('the secondary was closed while the coordinator answered'));
    signal.addEventListener('abort', onAbort, { once: true });
    answer.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}

/** Thrown when a promotion is refused; the secondary keeps replicating. */
export class PromotionRefusedError extends ZrsError {
  override name = 'PromotionRefusedError';
  constructor(
    message: string,
    /** Why, as a promote request's answer says it (`refused` for promote() itself). */
    readonly code: PromoteRefusalCode = 'refused',
  ) {
    super(message);
  }
}

/** The generation a promotion of this history would start. */
export function nextGeneration(history: FailoverHistory, startTid: Buffer): GenerationEntry {
  return { generation: history.generations.nextNumber(), startTid: Buffer.from(startTid) };
}

/** The address to serve at (if given); a PromotionRefusedError for an option the new Primary would refuse. */
function checkPromoteOptions(options: PromoteOptions): ReplicationAddress | null {
  try {
    checkSyncOptions(options);
    return options.replicateTo === undefined ? null : toAddress(options.replicateTo, '127.0.0.1');
  } catch (err) {
    throw new PromotionRefusedError(`bad promote option: ${(err as Error).message}`);
  }
}

/** Refuse a promotion the upstream's state forbids without `force`; returns the state. */
/**
 * The upstream state, or a refusal: while the upstream answers (replicating)
 * or when diverged, only a forced promotion goes on. A connection still
 * waiting for the handshake's answer is no sign of a live upstream (a hung
 * one takes connections and never answers), no more than a retry is.
 */
function checkUpstreamState(h: PromotionHandle, options: PromoteOptions): string {
  const state = h.upstreamState();
  const answering = state.startsWith('connected') && state !== 'connected.handshaking';
  if (!options.force && (answering || state === 'diverged')) {
    throw new PromotionRefusedError(
      state === 'diverged'
        ? 'refusing to promote a diverged secondary unless forced (force: true; zrs promote --force)'
        : `refusing to promote while its upstream answers (${state}, from ${h.upstreamAddress()}): stop the upstream first, or force it (force: true; zrs promote --force); with heartbeats off, a hung upstream looks alive: force it then`,
    );
  }
  return state;
}

export async function promoteSecondary(h: PromotionHandle, options: PromoteOptions): Promise<Primary> {
  // A generation noted as seen just before (a refusal's) is what the new one must go past.
  await h.history.generations.idle();
  let state = checkUpstreamState(h, options);
  const lost = h.history.chain.lostLink;
  if (lost && !options.force) {
    // Promoted, it would judge its secondaries by a chain that may lack that link: those holding it would be found diverged.
    throw new PromotionRefusedError(
      `refusing to promote unless forced: packed transaction ${lost.toString('hex')} is in the data file without the link its primary gave (a hash chain write failed); reopen the node first, or force it (force: true; zrs promote --force)`,
    );
  }
  // As offline (zrs promote FILE): promoted, restarted as a secondary, promoted again with nothing written
  // between would start a second generation at the same tid.
  const paths = h.auditPaths;
  if (!options.force && paths) {
    const again = await promotionRunAgain('refusing to promote', h.history.generations.current, h.storage.lastTransaction(), () => auditPast(paths));
    if (again !== null) throw new PromotionRefusedError(`${again}; restart it with a primary configuration, or force another generation (force: true; zrs promote --force)`);
  }
  if (options.replicateTo === undefined && h.serverAddress() === null) throw new PromotionRefusedError('promote needs replicateTo: this secondary does not serve one');
  // Bad options and a full history are refused before detaching, so the secondary keeps replicating.
  const requested = checkPromoteOptions(options);
  const full = h.history.generations.fullAt(h.storage.lastTransaction());
  if (full !== null) throw new PromotionRefusedError(full);
  const planned = nextGeneration(h.history, h.storage.lastTransaction());
  if (options.claim) {
    const signal = h.signal ?? new AbortController().signal;
    if (!(await claimed(options.claim(planned, { signal }), signal))) throw new PromotionRefusedError(`the coordinator refused generation ${planned.generation}`);
    // The secondary kept replicating while the coordinator answered: judge it again, before it stops.
    state = checkUpstreamState(h, options);
    const now = nextGeneration(h.history, h.storage.lastTransaction());
    if (now.generation !== planned.generation || !now.startTid.equals(planned.startTid)) {
      throw new PromotionRefusedError(
        `the secondary moved on while the coordinator answered (generation ${planned.generation} after tid ${planned.startTid.toString('hex')} claimed, now ${now.generation} after ${now.startTid.toString('hex')}); promote again`,
      );
    }
  }
  const previous = h.history.generations.current;
  const upstream = h.upstreamAddress();
  const server = await h.detach();
  const address = server?.address ?? requested;
  // The last tid after detaching: the transaction in progress was aborted, nothing else is applied.
  // The generation starts once the new Primary recorded the promotion (Primary.open, newGeneration).
  const lastTid = h.storage.lastTransaction();
  // Detached, nothing more is noted: plan from what is on disk.
  await h.history.generations.idle();
  const entry = nextGeneration(h.history, lastTid);
  if (options.claim && entry.generation !== planned.generation) {
    throw new PromotionRefusedError(`generation changed during promotion (${planned.generation} claimed, ${entry.generation} planned); promote again`);
  }
  // Downstream secondaries past their handshake keep streaming from the same server.
  const kept = (server?.status() ?? []).filter((s) => s.state === 'catchingUp' || s.state === 'live').map((s) => s.peer);
  h.log('warn', `PROMOTED to primary: generation ${entry.generation} starts after tid ${entry.startTid.toString('hex')}; ${kept.length} downstream session(s) kept`, {
    generation: entry.generation,
    startTid: entry.startTid.toString('hex'),
    sessionsKept: kept.length,
  });
  if (address === null) throw new ZrsError('promote needs replicateTo');
  return Primary.open({
    ...h.carried,
    promotion: {
      previousRole: 'secondary',
      previousUpstream: upstream,
      upstreamState: state,
      previousGeneration: previous?.generation ?? null,
      newGeneration: entry.generation,
      startTid: entry.startTid,
      sessionsKept: kept.length,
      sessions: kept,
      requestedBy: options.requestedBy ?? 'api',
      forced: options.force === true,
    },
    newGeneration: {
      entry,
      start: async () => {
        const started = await h.history.startGeneration(lastTid);
        if (started.generation !== entry.generation) throw new ZrsError(`generation ${started.generation} started where ${entry.generation} was recorded`);
      },
    },
    path: h.storage.path,
    storage: h.storage,
    replicateTo: address,
    server: server ?? undefined,
    history: h.history,
    transport: h.transport,
    clock: h.clock,
    log: h.log,
    fsync: h.fsync,
    heartbeatIntervalMs: options.heartbeatIntervalMs,
    syncReplicas: options.syncReplicas,
    syncTimeoutMs: options.syncTimeoutMs,
  });
}

