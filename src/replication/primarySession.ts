// The I/O edge of one primary session: binds the pure primarySession machine
// to a byte stream and a storage. Frames in become machine events; the
// machine's named effects (catchUp, follow, drain, sendWelcome, sendRefusal,
// closeStream) become socket writes and log reads. Tids sent strictly increase.

import { Subject, type Observable } from 'rxjs';
import { createActor, fromPromise, type ActorRefFrom } from 'xstate';
import {
  isAckInRange,
  primarySessionMachine,
  type PackInput,
  type PackOutcome,
  type PrimarySessionEvent,
  type PromoteInput,
  type PromoteOutcome,
  type SessionCloseReason,
  type StreamInput,
  type StreamOutput,
} from '../../machines/primarySession.js';
import type { ProtocolSpec } from '../../machines/handshake.js';
import { FrameTooLargeError } from '../errors.js';
import type { Clock } from '../ports/clock.js';
import type { ByteStream } from '../ports/transport.js';
import type { FileStorage } from '../storage/FileStorage.js';
import type { PackProgress } from '../storage/pack.js';
import { WindowReader, WindowRecycler } from '../storage/fileio.js';
import { TransactionCursor, readTransaction } from '../storage/iterator.js';
import { tidPlusOne } from '../storage/timestamp.js';
import type { CommittedTransaction, TransactionRecord } from '../storage/types.js';
import { FrameDecoder } from '../wire/framing.js';
import {
  HELLO_MAX_BYTES,
  MAX_REFUSAL_MESSAGE_CHARS,
  PROTOCOL_NAME_MAX_BYTES,
  SECONDARY_MESSAGE_MAX_BYTES,
  createNativePackr,
  createNativeUnpackr,
  decodeNative,
  encodeNativeFrame,
  type NodeStatus,
  type RefuseCode,
} from '../wire/native.js';
import { isReplicationProtocolName, nativeOutbound, zrs2Outbound, type OutboundCodec } from './protocols.js';
import type { FailoverHistory } from '../failover/history.js';
import { StreamWriter } from './streamWriter.js';
import { heldBytes, type LiveCommit, type LiveFeed } from './liveFeed.js';
import type { SendPacer } from './sendPacer.js';

/** zc.zrs's primary accepts at most 8 bytes per message after the protocol name. */
const ZRS2_MAX_FRAME_BYTES = 8;
/** Unsent commits a live session may hold when more arrive; beyond, it falls back to reading the log. */
export const DEFAULT_FOLLOW_BUFFER = 1024;

/**
 * Most bytes of published transactions a live session holds unsent (each
 * up to 256 KiB): past them it falls back to reading the log, as past
 * DEFAULT_FOLLOW_BUFFER commits. A stalled secondary's session would
 * otherwise pin up to 256 MiB.
 */
export const FOLLOW_BUFFER_BYTES = 16 * 1024 * 1024;

/**
 * Reasons a session gives up on its peer: the socket is destroyed, queued
 * bytes dropped. A drain that timed out did so because the peer stopped
 * reading, and a handshake that timed out has a peer that said nothing:
 * neither would take an orderly close either. A session closed before its
 * handshake ended has sent nothing and has nothing to send: an orderly end
 * would only make the server's close wait on a peer that may never close
 * its side (a health check, a port scanner).
 */
const GIVE_UP_REASONS: ReadonlySet<SessionCloseReason['kind']> = new Set(['transport-error', 'protocol-error', 'effect-failed', 'actor-failed', 'drain-timeout', 'handshake-timeout', 'closed-before-start']);

/** Reasons of an ordinary end, logged at info (an actor failure is an error, everything else a warning). */
const ORDINARY_REASONS: ReadonlySet<SessionCloseReason['kind']> = new Set(['drained', 'peer-closed', 'closed-before-start', 'status-served', 'promote-served', 'pack-served']);

/** How often a session answering a pack request sends where the pack is (also what tells its client the node is alive). */
export const PACK_PROGRESS_INTERVAL_MS = 1_000;

/** How long a session closing waits for its secondary to acknowledge the last transaction sent (native). */
export const ACK_WAIT_AT_CLOSE_MS = 2_000;
/** How long an orderly close waits for the peer to take the last bytes and close its side, before the socket is destroyed. */
export const CLOSE_LINGER_MS = 30_000;
/** Catch-up writes batches of about this size. */
const BATCH_FLUSH_BYTES = 256 * 1024;
/** Largest run of raw transactions in one `txns` message (a single larger transaction goes alone). */
const RAW_BATCH_BYTES = 1024 * 1024;

export interface SessionLog {
  (level: 'info' | 'warn' | 'error', message: string, fields?: Record<string, unknown>): void;
}

export interface PrimarySessionOptions {
  storage: FileStorage;
  /** The storage's commits for live streaming, shared by the server's sessions. */
  feed: LiveFeed;
  /** Paces the session's send steps (catch-up windows, reading acks; the feed's ticks for live), shared by the server's sessions. */
  pacer: SendPacer;
  stream: ByteStream;
  clock: Clock;
  protocols: readonly ProtocolSpec[];
  log: SessionLog;
  /** Send blobs to native secondaries that ask for them. */
  blobs: boolean;
  followBufferSize?: number;
  heartbeatIntervalMs?: number;
  handshakeTimeoutMs?: number;
  /** Answers a native status request (the node's status without this session). Default: none, the request is refused as a protocol error. */
  nodeStatus?: () => NodeStatus;
  /** The served storage's generations and hash chain: judges native hellos (diverged) and fills welcome. */
  history?: FailoverHistory;
  /**
   * The serving node's upstream path: its own id, then the ids of the nodes
   * it replicates from, nearest first. Sent in welcome and heartbeats, and a
   * hello from a node on it is refused (`loop`). Default: none.
   */
  upstreamPath?: () => Buffer[];
  /** Carries out a native promote request ({@link notPromotable} on a node that takes none). */
  promote: (request: PromoteInput & { peer: string }) => Promise<PromoteOutcome>;
  /** Carries out a native pack request, calling `onProgress` as the pack goes ({@link notPackable} on a node that takes none). */
  pack: (request: PackRequest) => Promise<PackOutcome>;
  /**
   * Called when the session starts streaming to a secondary, refuses one that
   * named a replication protocol, or takes a promote or pack request: it is then more
   * than a passing connection.
   */
  identified?: () => void;
}

/** The answer of a node that takes no promote requests. */
export const notPromotable = (): Promise<PromoteOutcome> => Promise.resolve({ kind: 'refused', code: 'not-promotable', reason: 'this node does not accept promote requests' });

/** The answer of a node that takes no pack requests. */
export const notPackable = (): Promise<PackOutcome> => Promise.resolve({ kind: 'refused', code: 'not-packable', reason: 'this node does not accept pack requests' });

/** A pack request as a node's handler gets it. */
export interface PackRequest extends PackInput {
  /** Who asked (the session's peer). */
  peer: string;
  onProgress: (progress: PackProgress) => void;
}

export interface SessionStatus {
  peer: string;
  state: string;
  protocol: string | null;
  lastSentTid: Buffer | null;
  ackedTid: Buffer | null;
  /** The tid the secondary said it holds when it started (null before its start). */
  startTid: Buffer | null;
  /** Its protocol acknowledges durable transactions (native). */
  acks: boolean;
  bytesSent: number;
}

/** A session in one of these states serves a secondary: past its handshake, not yet closed. */
export function isReplicatingState(state: unknown): boolean {
  return state === 'catchingUp' || state === 'live' || state === 'draining';
}

/** Where a session's stream stands, as its edge knows it: current at every write and ack. */
export interface SessionProgress {
  /** Last tid written to the socket. */
  lastSentTid: Buffer | null;
  /** Last tid the secondary acknowledged (native protocol). */
  ackedTid: Buffer | null;
  /** Transactions written in this session. */
  sentTransactions: number;
  /** The protocol acknowledges durable transactions (native). */
  acks: boolean;
}

type SessionActor = ActorRefFrom<typeof primarySessionMachine>;
/** Why a handshake is refused at the edge (before the machine's own checks), if it is. */
type EdgeRefusal = ReturnType<FailoverHistory['refusalFor']>;

/** One connected secondary, served by the primarySession machine. */
export class PrimarySession {
  readonly peer: string;
  private readonly writer: StreamWriter;
  private readonly decoder = new FrameDecoder({ maxFrameBytes: PROTOCOL_NAME_MAX_BYTES });
  private readonly unpackr = createNativeUnpackr();
  private readonly actor: SessionActor;
  private codec: OutboundCodec | null = null;
  private framesSeen = 0;
  private spec: ProtocolSpec | null = null;
  private heartbeat: unknown = null;
  /** Destroys the socket if an orderly close is not over in CLOSE_LINGER_MS. */
  private linger: unknown = null;
  /** The stream closed (its close handler ran): nothing to linger for. */
  private streamClosed = false;
  private streamGone!: () => void;
  /**
   * Settles once the socket is closed: after the session's end (done$) when
   * it lingers to hand over its last bytes. Until then it holds a descriptor.
   */
  readonly streamClosed$: Promise<void> = new Promise((resolve) => (this.streamGone = resolve));
  private readonly doneSubject = new Subject<SessionCloseReason | null>();
  /** Emits once when the session ends, with the reason. */
  readonly done$ = this.doneSubject.asObservable();
  private finished = false;
  /** Frame 2 was a promote or pack request: later frames are ignored. */
  private adminRequest = false;
  /**
   * Writes and acks are the edge's to count: the machine hears of them
   * (SENT, ACK) before any other event and when a streaming actor settles,
   * not once per commit, which cost a machine transition per commit and
   * secondary (see reportProgress).
   */
  private readonly progress: SessionProgress = { lastSentTid: null, ackedTid: null, sentTransactions: 0, acks: false };
  /** Transactions written since the machine last heard (their last tid is progress.lastSentTid). */
  private unreportedSent = 0;
  private unreportedAck = false;
  private readonly progressSubject = new Subject<SessionProgress>();
  /** The progress after each write and each ack in range, as they happen (a copy each); completes when the session ends. */
  readonly progress$: Observable<SessionProgress> = this.progressSubject.asObservable();

  constructor(private readonly options: PrimarySessionOptions) {
    this.peer = options.stream.peer;
    this.writer = new StreamWriter(options.stream);
    const machine = primarySessionMachine.provide({
      actors: {
        // Catch-up aims at the log's end as of its start (under a steady stream of commits the end
        // moves on; what was committed meanwhile is follow's to read); drain goes to the very end.
        catchUp: fromPromise<StreamOutput, StreamInput>(({ input, signal }) => {
          this.options.identified?.();
          return this.reported(this.sendLog(input, signal, this.options.storage.lastDurableTid));
        }),
        follow: fromPromise<void, StreamInput>(({ input, signal }) => this.reported(this.follow(input, signal))),
        drain: fromPromise<StreamOutput, StreamInput>(({ input, signal }) => this.reported(this.sendLog(input, signal, null).then(async (out) => (await this.lastAck(signal), out)))),
        promote: fromPromise<PromoteOutcome, PromoteInput>(({ input }) => this.promote(input)),
        pack: fromPromise<PackOutcome, PackInput>(({ input }) => this.pack(input)),
      },
      actions: {
        sendWelcome: (_a, p) => this.sendWelcome(p.startTid as Buffer),
        sendRefusal: (_a, p) => this.sendRefusal(p.code, p.reason, p.protocolName, p.forkTid as Buffer | undefined),
        sendStatus: () => this.sendStatus(),
        sendPromoteResult: (_a, p) => this.sendPromoteResult(p),
        sendPackResult: (_a, p) => this.sendPackResult(p),
        closeStream: (_a, p) => this.closeStream(p.reason),
      },
    });
    this.actor = createActor(machine, {
      input: { peer: this.peer, supportedProtocols: options.protocols, handshakeTimeoutMs: options.handshakeTimeoutMs },
      clock: options.clock,
    });
    options.stream.setHandlers({
      data: (chunk) => this.onData(chunk),
      drain: () => this.writer.onDrain(),
      close: (error) => {
        this.streamClosed = true;
        this.streamGone();
        if (this.linger !== null) this.options.clock.clearTimeout(this.linger);
        this.linger = null;
        this.writer.onClose();
        // A session that already ended (refused, protocol error) has nothing to hear.
        if (this.actor.getSnapshot().status !== 'active') return;
        this.send(error ? { type: 'TRANSPORT_ERROR', error } : { type: 'PEER_CLOSED' });
      },
    });
    // An action that throws stops the actor short of `closed`: end the session
    // here, or its socket would stay open (and xstate, with no observer of the
    // error, rethrows it where nothing can catch it).
    this.actor.subscribe({ error: (error) => this.closeStream({ kind: 'actor-failed', error }) });
    this.actor.start();
  }

  /** Drain what is committed, then close. */
  close(): void {
    this.send({ type: 'CLOSE' });
  }

  status(): SessionStatus {
    return {
      peer: this.peer,
      state: String(this.actor.getSnapshot().value),
      protocol: this.spec?.name ?? null,
      lastSentTid: this.progress.lastSentTid,
      ackedTid: this.progress.ackedTid,
      startTid: (this.actor.getSnapshot().context.startTid as Buffer | null) ?? null,
      acks: this.progress.acks,
      bytesSent: this.writer.bytesWritten,
    };
  }

  /** An event for the machine, after what it has not heard of the stream's progress. */
  private send(event: PrimarySessionEvent): void {
    this.reportProgress();
    this.actor.send(event);
  }

  /** Tell the machine of the writes and the ack it has not heard of (see `progress`). */
  private reportProgress(): void {
    if (this.actor.getSnapshot().status !== 'active') return;
    if (this.unreportedSent > 0) {
      const count = this.unreportedSent;
      this.unreportedSent = 0;
      this.actor.send({ type: 'SENT', tid: this.progress.lastSentTid!, count });
    }
    if (this.unreportedAck) {
      this.unreportedAck = false;
      this.actor.send({ type: 'ACK', tid: this.progress.ackedTid! });
    }
  }

  /**
   * At close, after the last transaction went out: wait (at most
   * ACK_WAIT_AT_CLOSE_MS) for the secondary to acknowledge it, so a
   * synchronous commit it made durable meanwhile is confirmed, not failed.
   * Nothing to wait for without acks, or once the peer closed.
   */
  private async lastAck(signal: AbortSignal): Promise<void> {
    const p = this.progress;
    const sent = p.lastSentTid;
    const acked = (): boolean => sent === null || !p.acks || this.streamClosed || (p.ackedTid !== null && Buffer.compare(p.ackedTid, sent) >= 0);
    if (acked()) return;
    await this.writer.flush().catch(() => undefined);
    await new Promise<void>((resolve) => {
      let timer: unknown = null;
      let sub: { unsubscribe(): void } | null = null;
      let over = false;
      const done = (): void => {
        if (over) return;
        over = true;
        sub?.unsubscribe();
        if (timer !== null) this.options.clock.clearTimeout(timer);
        signal.removeEventListener('abort', done);
        resolve();
      };
      sub = this.progressSubject.subscribe({ next: () => void (acked() && done()), complete: done });
      if (over) sub.unsubscribe();
      if (over || acked()) return done();
      timer = this.options.clock.setTimeout(done, ACK_WAIT_AT_CLOSE_MS);
      signal.addEventListener('abort', done);
      void this.streamClosed$.then(done);
    });
  }

  /** A streaming actor's promise, settling only after the machine heard of everything it wrote. */
  private reported<T>(streaming: Promise<T>): Promise<T> {
    return streaming.finally(() => this.reportProgress());
  }

  /** The machine actor, for inspection (state transitions, context). */
  get machine(): SessionActor {
    return this.actor;
  }

  // ------------------------------------------------------------ inbound

  private onData(chunk: Uint8Array): void {
    if (this.finished) return; // ended: late acks or keep-alives have no one to hear them
    // Reading acks is part of what serving a secondary costs: it counts against the send share.
    this.options.pacer.step(() => this.readFrames(chunk));
  }

  private readFrames(chunk: Uint8Array): void {
    try {
      this.decoder.feed(chunk);
      for (let f = this.decoder.next(); f !== null; f = this.decoder.next()) {
        this.onFrame(f);
        if (this.finished) return;
      }
    } catch (err) {
      const reason = err instanceof FrameTooLargeError ? err.message : `bad frame: ${(err as Error).message}`;
      this.send({ type: 'PROTOCOL_ERROR', reason });
    }
  }

  private onFrame(payload: Buffer): void {
    // Keep-alives come only after the handshake; an empty frame in its place is an empty protocol
    // name or start tid, refused as zc.zrs refuses it.
    if (payload.length === 0 && this.framesSeen >= 2) {
      this.send({ type: 'KEEPALIVE' });
      return;
    }
    this.framesSeen += 1;
    if (this.framesSeen === 1) return this.onProtocolName(payload);
    if (this.framesSeen === 2) return this.onStart(payload);
    if (this.adminRequest) return; // nothing follows a promote or pack request but its answer
    this.onUpstream(payload);
  }

  /**
   * A judgement of the peer's history (loop, divergence) that needs this
   * node's own files; one that fails on them (a damaged hash chain or data
   * file) is this node's failure, not the peer's: refused as `internal`,
   * naming it, and logged as an error.
   */
  private judged(judge: () => EdgeRefusal): EdgeRefusal {
    try {
      return judge();
    } catch (err) {
      const reason = `this node could not check the secondary's history against its own: ${errorText(err)}`;
      this.options.log('error', `${this.peer}: ${reason}`);
      return { code: 'internal', reason };
    }
  }

  private onProtocolName(payload: Buffer): void {
    const name = payload.toString('latin1');
    this.spec = this.options.protocols.find((p) => p.name === name) ?? null;
    this.progress.acks = this.spec?.hasAcks ?? false;
    this.progressSubject.next({ ...this.progress });
    this.decoder.setMaxFrameBytes(this.spec?.kind === 'native' ? HELLO_MAX_BYTES : ZRS2_MAX_FRAME_BYTES);
    this.send({ type: 'PROTOCOL', name });
  }

  private onStart(payload: Buffer): void {
    const spec = this.spec;
    if (spec === null) return;
    const primaryLastTid = this.options.storage.lastDurableTid;
    let startTid: Buffer;
    let wantsBlobs = false;
    let wantsRaw = false;
    let wantsLinks = false;
    let wantsSegments = false;
    let wantsLargeRecords = false;
    let edgeRefusal: EdgeRefusal = undefined;
    if (spec.kind === 'native') {
      let hello: ReturnType<typeof decodeNative>;
      try {
        hello = decodeNative(payload, this.unpackr, 'secondary');
      } catch (err) {
        // A malformed start tid is refused (bad-tid) so the native peer learns why.
        if (!(err instanceof Error && err.message.startsWith('hello.startTid'))) throw err;
        this.send({ type: 'START', startTid: Buffer.alloc(8), primaryLastTid, edgeRefusal: { code: 'bad-tid', reason: err.message } });
        return;
      }
      if (hello.type === 'status-request' && this.options.nodeStatus) {
        this.send({ type: 'STATUS_REQUEST' });
        return;
      }
      if (hello.type === 'promote-request') {
        this.adminRequest = true;
        this.send({ type: 'PROMOTE_REQUEST', force: hello.force });
        return;
      }
      if (hello.type === 'pack-request') {
        this.adminRequest = true;
        this.send({ type: 'PACK_REQUEST', time: hello.time, gc: hello.gc });
        return;
      }
      if (hello.type !== 'hello') throw new Error(`expected hello, got ${hello.type}`);
      startTid = hello.startTid;
      wantsBlobs = hello.options.blobs;
      wantsRaw = hello.options.rawTxns === true;
      wantsLinks = hello.options.txnLinks === true;
      wantsSegments = hello.options.segmentedChecksum === true;
      wantsLargeRecords = hello.options.largeRecords === true;
      edgeRefusal = this.judged(() => this.loopRefusal(hello.nodeId) ?? this.options.history?.refusalFor(hello));
      const chainFailure = this.options.history?.chain.failure;
      if (chainFailure) {
        const head = this.options.history!.chain.head?.tid.toString('hex') ?? 'its start';
        this.options.log('error', `the hash chain stopped at tid ${head} after an error (${chainFailure.message}): secondaries past it are not checked for divergence until the node is reopened`);
      }
      this.decoder.setMaxFrameBytes(SECONDARY_MESSAGE_MAX_BYTES);
    } else {
      startTid = Buffer.from(payload);
      // Without a chain from the peer, a tid this node never held is the one proof of divergence there is.
      if (startTid.length === 8) edgeRefusal = this.judged(() => this.options.history?.refusalForStartTid(startTid));
    }
    if (startTid.length === 8) {
      this.codec =
        spec.kind === 'native'
          ? nativeOutbound(this.options.storage, startTid, {
              blobs: wantsBlobs && this.options.blobs,
              generations: this.welcomeGenerations(),
              link: this.options.history ? (tid) => this.options.history!.chain.hashAt(tid) : undefined,
              rawTxns: wantsRaw,
              txnLinks: wantsLinks && this.options.history ? this.options.history.chain.cursor() : undefined,
              segmentedChecksum: wantsSegments,
              largeRecords: wantsLargeRecords,
              heartbeatIntervalMs: this.options.heartbeatIntervalMs,
              upstreamPath: this.options.upstreamPath,
            })
          : zrs2Outbound(this.options.storage, startTid, spec);
    }
    this.send({ type: 'START', startTid, primaryLastTid, ...(edgeRefusal ? { edgeRefusal } : {}) });
    if (this.codec && this.actor.getSnapshot().status === 'active') this.startHeartbeat();
  }

  /** The refusal of a secondary that is this node or one it replicates from: served, it would close a loop. */
  private loopRefusal(nodeId: Buffer | undefined): { code: 'loop'; reason: string } | undefined {
    if (!nodeId) return undefined;
    const at = this.options.upstreamPath?.().findIndex((id) => id.equals(nodeId)) ?? -1;
    if (at < 0) return undefined;
    const where = at === 0 ? 'is this node itself (its replicate-from names its own replicate-to)' : at === 1 ? 'is the node this one replicates from' : `is a node this one replicates from, through ${at - 1} other(s)`;
    return { code: 'loop', reason: `the secondary ${where}: serving it would close a replication loop, in which no node is a primary; point one of them at the primary, or promote one` };
  }

  private onUpstream(payload: Buffer): void {
    if (this.spec?.kind !== 'native') {
      this.send({ type: 'PROTOCOL_ERROR', reason: 'Too many messages' });
      return;
    }
    const msg = decodeNative(payload, this.unpackr, 'secondary');
    if (msg.type !== 'ack') {
      this.send({ type: 'PROTOCOL_ERROR', reason: `unexpected ${msg.type} after the handshake` });
      return;
    }
    const p = this.progress;
    // Out of range: the machine judges it (and closes the session) with the position it is told first.
    if (!isAckInRange(p.lastSentTid ?? this.status().startTid, p.ackedTid, msg.tid)) {
      this.send({ type: 'ACK', tid: msg.tid });
      return;
    }
    p.ackedTid = msg.tid;
    this.unreportedAck = true;
    this.progressSubject.next({ ...p });
  }

  // ------------------------------------------------------------ outbound effects

  private sendWelcome(_startTid: Buffer): void {
    const f = this.codec?.welcome(this.options.storage.lastDurableTid);
    if (f) this.writer.writeNow(f);
  }

  private welcomeGenerations(): (() => ReturnType<FailoverHistory['welcomeFields']>) | undefined {
    const history = this.options.history;
    return history ? () => history.welcomeFields() : undefined;
  }

  private sendRefusal(code: string, reason: string, protocolName: string | null, forkTid?: Buffer): void {
    // A replication node refused (diverged, another version …) is no passing connection either.
    if (isReplicationProtocolName(protocolName)) this.options.identified?.();
    this.options.log('warn', `refused secondary ${this.peer}: ${code}: ${reason}`, { code, protocol: protocolName });
    // A refusal is readable only by native peers (zc.zrs just sees the close).
    if (this.codec) {
      // The primary's last tid tells a refused secondary how far the history it was judged against goes.
      const lastTid = code === 'diverged' || code === 'tid-too-high' ? this.options.storage.lastDurableTid : undefined;
      const f = this.codec.refusal(code as RefuseCode, reason, forkTid, lastTid);
      if (f) this.writer.writeNow(f);
    } else if (protocolName?.startsWith('zrs-ts/')) {
      const f = nativeOutbound(this.options.storage, Buffer.alloc(8), { blobs: false }).refusal(code as RefuseCode, reason);
      if (f) this.writer.writeNow(f);
    }
  }

  private async promote(input: PromoteInput): Promise<PromoteOutcome> {
    this.options.identified?.();
    return this.options.promote({ ...input, peer: this.peer });
  }

  private sendPromoteResult(outcome: PromoteOutcome): void {
    const packr = createNativePackr();
    const f =
      outcome.kind === 'promoted'
        ? encodeNativeFrame({ type: 'promoted', generation: { generation: outcome.generation, startTid: Buffer.from(outcome.startTid) }, sessionsKept: outcome.sessionsKept }, packr)
        : encodeNativeFrame({ type: 'promote-refused', code: outcome.code, message: outcome.reason.slice(0, MAX_REFUSAL_MESSAGE_CHARS) }, packr);
    this.writer.writeNow(f);
  }

  /**
   * Run the node's pack handler, sending where the pack is every
   * PACK_PROGRESS_INTERVAL_MS (the same progress again when it has not
   * moved: the client counts its timeout from the last frame), unless the
   * client has not read the last ones (as heartbeats: memory without bound,
   * news for nobody).
   */
  private async pack(input: PackInput): Promise<PackOutcome> {
    this.options.identified?.();
    let latest: PackProgress | null = null;
    const { clock } = this.options;
    const packr = createNativePackr();
    let timer: unknown = null;
    const tick = (): void => {
      if (this.finished) return;
      if (latest !== null && !this.writer.full) this.writer.writeNow(encodeNativeFrame({ type: 'pack-progress', ...latest }, packr));
      timer = clock.setTimeout(tick, PACK_PROGRESS_INTERVAL_MS);
    };
    timer = clock.setTimeout(tick, PACK_PROGRESS_INTERVAL_MS);
    try {
      return await this.options.pack({ ...input, peer: this.peer, onProgress: (p) => void (latest = p) });
    } finally {
      clock.clearTimeout(timer);
    }
  }

  private sendPackResult(outcome: PackOutcome): void {
    const packr = createNativePackr();
    const f =
      outcome.kind === 'packed'
        ? encodeNativeFrame(
            { type: 'packed', ...outcome.report, packTid: Buffer.from(outcome.report.packTid), blobRemovalError: outcome.report.blobRemovalError?.slice(0, MAX_REFUSAL_MESSAGE_CHARS) ?? null },
            packr,
          )
        : encodeNativeFrame({ type: 'pack-refused', code: outcome.code, message: outcome.reason.slice(0, MAX_REFUSAL_MESSAGE_CHARS) }, packr);
    this.writer.writeNow(f);
  }

  private sendStatus(): void {
    const status = this.options.nodeStatus?.();
    if (status) this.writer.writeNow(encodeNativeFrame({ type: 'status', ...status }, createNativePackr()));
  }

  private closeStream(reason: SessionCloseReason): void {
    if (this.finished) return;
    this.finished = true;
    this.stopHeartbeat();
    const level = reason.kind === 'actor-failed' ? 'error' : ORDINARY_REASONS.has(reason.kind) ? 'info' : 'warn';
    this.options.log(level, `session with ${this.peer} closed: ${describeReason(reason)}`, { reason: reason.kind });
    if (GIVE_UP_REASONS.has(reason.kind)) {
      this.options.stream.destroy();
    } else {
      // What is queued goes out, then the end. A peer that neither reads it
      // nor closes its side is cut off after a while: a server's close waits
      // for every connection, and must not wait on one peer for ever.
      if (!this.streamClosed) this.linger = this.options.clock.setTimeout(() => this.options.stream.destroy(), CLOSE_LINGER_MS);
      void this.writer.flush().catch(() => undefined).finally(() => this.options.stream.end());
    }
    this.progressSubject.complete();
    this.doneSubject.next(reason);
    this.doneSubject.complete();
  }

  private startHeartbeat(): void {
    const interval = this.options.heartbeatIntervalMs;
    if (!interval || !this.codec?.heartbeat) return;
    const tick = (): void => {
      this.heartbeat = this.options.clock.setTimeout(tick, interval);
      const state = this.actor.getSnapshot().value;
      // Heartbeats go only between transactions: while live and idle; and not into a socket the peer has
      // stopped taking bytes from (each would wait in its buffer: memory without bound, news for nobody).
      if (state === 'live' && this.idle && !this.writer.full) {
        const f = this.codec!.heartbeat(this.options.storage.lastDurableTid, this.options.clock.now());
        if (f) void this.writer.write(f).then(() => this.writer.flush()).catch(() => undefined);
      }
    };
    this.heartbeat = this.options.clock.setTimeout(tick, interval);
  }

  private stopHeartbeat(): void {
    if (this.heartbeat !== null) this.options.clock.clearTimeout(this.heartbeat);
    this.heartbeat = null;
  }

  /** True while no transaction is being written. */
  private idle = true;

  /** A new generation to announce at the next point between transactions. */
  private generationPending = false;
  /** A changed upstream path to announce at the next point between transactions. */
  private pathPending = false;

  /**
   * Tell this session's secondary, between transactions, that the node's
   * upstream path changed, so that a loop closed meanwhile is seen.
   */
  announcePath(): void {
    this.pathPending = true;
    if (this.idle) this.sendAnnouncement();
  }

  /**
   * Tell this session's secondary, between transactions, that the node
   * started a new generation (it was promoted while the session streamed),
   * so it adopts it without reconnecting. A session not past its handshake
   * needs nothing: its welcome will carry the generation.
   */
  announceGeneration(): void {
    this.generationPending = true;
    if (this.idle) this.sendAnnouncement();
  }

  /**
   * What is pending, in one heartbeat: the current path (every heartbeat
   * carries it) and, when one is pending, the generation. Nothing without
   * heartbeats' codec (zc.zrs's protocols), nor before the stream started.
   */
  private sendAnnouncement(): void {
    const state = this.actor.getSnapshot().value;
    if (!this.codec || (state !== 'live' && state !== 'catchingUp')) return;
    const generation = this.generationPending ? this.options.history?.welcomeFields().generation : undefined;
    this.generationPending = false;
    this.pathPending = false;
    const f = this.codec.heartbeat(this.options.storage.lastDurableTid, this.options.clock.now(), generation);
    if (f) void this.writer.write(f).then(() => this.writer.flush()).catch(() => undefined);
  }

  /**
   * Write one transaction. With `more` set, small transactions stay batched
   * (catch-up); the batch is flushed when it is large or nothing follows.
   */
  private sendTransaction(txn: TransactionRecord, signal: AbortSignal, more = false): Promise<boolean> {
    if (signal.aborted) return Promise.resolve(false);
    return this.track(this.writeTransaction(txn, signal, more));
  }

  /** Remember a write in progress as the one the next streaming actor waits for. */
  private track(sending: Promise<boolean>): Promise<boolean> {
    this.inflight = sending.then(
      () => undefined,
      () => undefined,
    );
    return sending;
  }

  /**
   * The transaction being written, if any. A transaction once started is
   * written whole and reported SENT even if its actor was aborted meanwhile
   * (its frames are in the codec's checksum and on the wire); the next
   * streaming actor waits for it and starts after it, so nothing is sent twice.
   */
  private inflight: Promise<void> = Promise.resolve();
  private lastWrittenTid: Buffer | null = null;

  private async writeTransaction(txn: TransactionRecord, signal: AbortSignal, more: boolean): Promise<boolean> {
    const codec = this.codec!;
    this.idle = false;
    try {
      const frames = codec.plainFrames(txn);
      if (frames) for (const f of frames) this.writer.push(f);
      else {
        // Transactions batched before this one go out first, even if reading its blobs fails.
        await this.writer.flush();
        for await (const f of codec.transaction(txn)) await this.writer.write(f);
      }
      if (!more || this.writer.pending >= BATCH_FLUSH_BYTES) await this.writer.flush();
    } finally {
      this.idle = true;
    }
    return this.wrote(txn.tid, signal);
  }

  /**
   * Send the log's transactions after `input.afterTid` (or what was already
   * written) up to `stop` (inclusive; null: the durable end). Each read
   * window is one synchronous step of the pacer: its transactions are parsed
   * and sent as raw runs; one that must travel in messages (blobs,
   * backpointers, a peer without raw runs) goes on its own afterwards.
   */
  private async sendLog(input: StreamInput, signal: AbortSignal, stop: Buffer | null): Promise<StreamOutput> {
    const storage = this.options.storage;
    const pacer = this.options.pacer;
    const codec = this.codec!;
    // A transaction an aborted actor was writing is finished (and SENT) first.
    await this.inflight;
    const written = this.lastWrittenTid;
    const after = written !== null && Buffer.compare(written, input.afterTid) > 0 ? written : input.afterTid;
    // Read windows are recycled once the socket has taken everything sent from them: the
    // transactions sent are views of a window, and nothing else of them is kept past a send
    // (the tids the session keeps are copies, see wrote()).
    const recycler = new WindowRecycler(() => this.writer.holdsNothing);
    const cursor = new TransactionCursor(storage, tidPlusOne(Buffer.from(after)), stop === null ? null : Buffer.from(stop), undefined, recycler);
    let last: Buffer | null = null;
    /** Taken from the cursor, not yet sent; a transaction that goes in messages leads it. */
    let taken: TransactionRecord[] = [];
    while (!signal.aborted && !storage.isClosed) {
      let windowEmpty = false;
      const room = pacer.step(() => {
        if (taken.length === 0) {
          taken = cursor.take(RAW_BATCH_BYTES);
          windowEmpty = taken.length === 0;
        }
        let n = 0;
        while (n < taken.length && codec.acceptsRaw(taken[n]!)) n += 1;
        if (n === 0) return true;
        const run = taken.slice(0, n);
        taken = taken.slice(n);
        // A copy: the tid is a view of a read window, which may be read into again (recycled) before the end.
        last = Buffer.from(run[n - 1]!.tid);
        return this.sendRawRunNow(run, signal);
      });
      if (windowEmpty) {
        if (cursor.atEnd) break;
        await cursor.fill();
        await pacer.turn(signal); // what was read goes in a step of its own, which waits its turn
        continue;
      }
      if (!room) await this.writer.drained();
      // The step sent the leading raw run: what is left starts with one that goes in messages.
      if (taken.length > 0) {
        const txn = taken.shift()!;
        if (!(await this.sendTransaction(txn, signal, taken.length > 0))) break;
        last = Buffer.from(txn.tid);
      }
      if (taken.length === 0 && cursor.atEnd) break;
      await pacer.turn(signal); // the next step waits its turn
    }
    await this.writer.flush();
    return { lastTid: last };
  }

  /**
   * Write a run of raw transactions at once, SENT naming the last one; false
   * when the socket is full (wait for drained() before the next). Called in
   * one synchronous step (a catch-up window, a live tick), so nothing else
   * writes in between.
   */
  private sendRawRunNow(txns: readonly TransactionRecord[], signal: AbortSignal): boolean {
    for (const f of this.codec!.rawFrames(txns)) this.writer.push(f);
    const room = this.writer.flushNow();
    this.wrote(txns[txns.length - 1]!.tid, signal, txns.length);
    return room;
  }

  /** Note that everything up to `written` (`count` transactions) is on the wire. */
  private wrote(written: Buffer, signal: AbortSignal, count = 1): boolean {
    // A copy: `written` may be a view of a read window, which is reused once sent.
    const tid = Buffer.from(written);
    this.lastWrittenTid = tid;
    if (this.generationPending || this.pathPending) this.sendAnnouncement();
    if (this.actor.getSnapshot().status === 'active') {
      const p = this.progress;
      p.lastSentTid = tid;
      p.sentTransactions += count;
      this.unreportedSent += count;
      this.progressSubject.next({ ...p });
    }
    return !signal.aborted;
  }

  /**
   * Forward commits as they become durable, through a bounded buffer. Runs of
   * raw transactions go out on the feed's tick, synchronously; a transaction
   * that needs its file read or goes out in messages waits its turn.
   */
  private follow(input: StreamInput, signal: AbortSignal): Promise<void> {
    const storage = this.options.storage;
    const limit = this.options.followBufferSize ?? DEFAULT_FOLLOW_BUFFER;
    const codec = this.codec!;
    const epoch = storage.fileEpoch;
    return new Promise<void>((resolve, reject) => {
      const queue: LiveCommit[] = [];
      let queuedBytes = 0;
      const take = (): LiveCommit => {
        const c = queue.shift()!;
        queuedBytes -= heldBytes(c.committed);
        return c;
      };
      let lastTid: Buffer = Buffer.from(input.afterTid);
      /** An asynchronous step (the gap from the log, a file read, a full socket) is under way; it pumps when done. */
      let busy = false;
      let unsubscribe = (): void => {};
      /** Stop following; the queue is let go at once (a wait on a full socket may hold this closure for long). */
      const stop = (): void => {
        unsubscribe();
        queue.length = 0;
        queuedBytes = 0;
      };
      const fail = (err: unknown): void => {
        stop();
        reject(err);
      };
      const overflow = (): void => {
        stop();
        this.send({ type: 'OVERFLOW' });
      };
      const after = (step: Promise<unknown>): void => {
        busy = true;
        step.then(() => {
          busy = false;
          pump();
        }, fail);
      };
      /** The transaction of a commit published without its bytes, or null when a pack replaced the file (positions are void). */
      const readCommit = async (c: CommittedTransaction): Promise<TransactionRecord | null> => {
        const reader = new WindowReader(storage.fileHandle, 256 * 1024, () => storage.durableEnd);
        const txn = await readTransaction(storage, reader, c.pos).catch((err: unknown) => {
          if (storage.fileEpoch === epoch) throw err;
          return null; // the file was replaced under the read
        });
        return storage.fileEpoch === epoch ? txn : null;
      };
      /** One transaction that is not part of a raw run from the tick: parsed but not raw, or to be read from the file. */
      const sendOne = async (c: LiveCommit): Promise<void> => {
        const txn = c.txn ?? (await readCommit(c.committed));
        if (txn === null) return overflow(); // go back to reading by tid
        if (signal.aborted) return; // the next streaming actor sends it
        if (c.txn !== null || !codec.acceptsRaw(txn)) {
          if (await this.sendTransaction(txn, signal, queue.length > 0)) lastTid = txn.tid;
          return;
        }
        lastTid = txn.tid;
        if (!this.sendRawRunNow([txn], signal)) await this.writer.drained();
      };
      const pump = (): void => {
        try {
          while (!busy && queue.length > 0 && !signal.aborted) {
            const first = take();
            if (Buffer.compare(first.committed.tid, lastTid) <= 0) continue;
            if (storage.fileEpoch !== epoch) return overflow();
            if (first.txn === null || !codec.acceptsRaw(first.txn)) return after(sendOne(first));
            // Commits queued behind this one join it in one raw run.
            const run = [first.txn];
            for (let bytes = first.txn.raw!.length; bytes < RAW_BATCH_BYTES && queue.length > 0; ) {
              const next = queue[0]!.txn;
              if (next === null || !codec.acceptsRaw(next)) break; // it goes next, on its own
              take();
              run.push(next);
              bytes += next.raw!.length;
            }
            lastTid = run[run.length - 1]!.tid;
            if (!this.sendRawRunNow(run, signal)) after(this.writer.drained());
          }
        } catch (err) {
          fail(err);
        }
      };
      unsubscribe = this.options.feed.subscribe({
        next: (commits) => {
          // A session that is sending now takes a whole tick (a paced tick may hold
          // many commits, and it sends them at once); one waiting holds at most `limit`.
          if (busy ? queue.length + commits.length > limit : queue.length >= limit) return overflow();
          if (queuedBytes >= FOLLOW_BUFFER_BYTES) return overflow();
          for (const c of commits) {
            queue.push(c);
            queuedBytes += heldBytes(c.committed);
          }
          pump();
        },
        fellBehind: () => overflow(),
        complete: () => resolve(),
      });
      signal.addEventListener('abort', stop, { once: true });
      // Anything made durable between catch-up's end and this subscription is
      // not in the queue: it is read from the log first, while new commits
      // queue up behind it (the pump skips those already sent).
      if (Buffer.compare(storage.lastDurableTid, lastTid) > 0) {
        after(
          this.sendLog({ ...input, afterTid: lastTid }, signal, storage.lastDurableTid).then((out) => {
            if (out.lastTid !== null && Buffer.compare(out.lastTid, lastTid) > 0) lastTid = Buffer.from(out.lastTid);
          }),
        );
      }
    });
  }
}

function errorText(error: unknown): string {
  return (error as Error)?.message ?? String(error);
}

/** One line saying why a session ended, for logs and the audit log. */
export function describeReason(r: SessionCloseReason): string {
  switch (r.kind) {
    case 'refused':
      return `refused (${r.code}): ${r.reason}`;
    case 'transport-error':
      return `transport error: ${r.error.message}`;
    case 'protocol-error':
      return `protocol error: ${r.reason}`;
    case 'effect-failed':
      return `${r.effect} failed: ${errorText(r.error)}`;
    case 'actor-failed':
      return `the session failed: ${errorText(r.error)}`;
    case 'handshake-timeout':
    case 'drain-timeout':
      return `${r.kind} after ${r.timeoutMs} ms`;
    case 'status-served':
      return 'status request answered';
    case 'promote-served':
      return r.outcome === 'promoted' ? 'promote request answered: promoted' : `promote request answered: refused (${r.outcome})`;
    case 'pack-served':
      return r.outcome === 'packed' ? 'pack request answered: packed' : `pack request answered: ${r.outcome === 'failed' ? 'failed' : `refused (${r.outcome})`}`;
    default:
      return r.kind;
  }
}
