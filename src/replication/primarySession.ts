// The I/O edge of one primary session: binds the pure primarySession machine
// to a byte stream and a storage. Frames in become machine events; the
// machine's named effects (catchUp, follow, drain, sendWelcome, sendRefusal,
// closeStream) become socket writes and log reads. Tids sent strictly increase.

import { Subject, type Subscription } from 'rxjs';
import { createActor, fromPromise, type ActorRefFrom } from 'xstate';
import {
  primarySessionMachine,
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
import { WindowReader } from '../storage/fileio.js';
import { parseTransaction, readTransaction } from '../storage/iterator.js';
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
import { follows, nativeOutbound, zrs2Outbound, type OutboundCodec } from './protocols.js';
import type { FailoverHistory } from '../failover/history.js';
import { StreamWriter } from './streamWriter.js';

/** zc.zrs's primary accepts at most 8 bytes per message after the protocol name. */
const ZRS2_MAX_FRAME_BYTES = 8;
/** Commits queued for a live session before it falls back to reading the log. */
export const DEFAULT_FOLLOW_BUFFER = 1024;
/** Catch-up writes batches of about this size. */
const BATCH_FLUSH_BYTES = 256 * 1024;
/** Largest run of raw transactions in one `txns` message (a single larger transaction goes alone). */
const RAW_BATCH_BYTES = 1024 * 1024;

export interface SessionLog {
  (level: 'info' | 'warn' | 'error', message: string, fields?: Record<string, unknown>): void;
}

export interface PrimarySessionOptions {
  storage: FileStorage;
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
  /** Carries out a native promote request. Default: refused as `not-promotable`. */
  promote?: (request: PromoteInput & { peer: string }) => Promise<PromoteOutcome>;
}

export interface SessionStatus {
  peer: string;
  state: string;
  protocol: string | null;
  lastSentTid: Buffer | null;
  ackedTid: Buffer | null;
  bytesSent: number;
}

type SessionActor = ActorRefFrom<typeof primarySessionMachine>;

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
  private readonly doneSubject = new Subject<SessionCloseReason | null>();
  /** Emits once when the session ends, with the reason. */
  readonly done$ = this.doneSubject.asObservable();
  private finished = false;
  /** Frame 2 was a promote request: later frames are ignored. */
  private adminRequest = false;

  constructor(private readonly options: PrimarySessionOptions) {
    this.peer = options.stream.peer;
    this.writer = new StreamWriter(options.stream);
    const machine = primarySessionMachine.provide({
      actors: {
        // Catch-up aims at the log's end as of its start (under a steady stream of commits the end
        // moves on; what was committed meanwhile is follow's to read); drain goes to the very end.
        catchUp: fromPromise<StreamOutput, StreamInput>(({ input, signal }) => this.sendLog(input, signal, this.options.storage.lastDurableTid)),
        follow: fromPromise<void, StreamInput>(({ input, signal }) => this.follow(input, signal)),
        drain: fromPromise<StreamOutput, StreamInput>(({ input, signal }) => this.sendLog(input, signal, null)),
        promote: fromPromise<PromoteOutcome, PromoteInput>(({ input }) => this.promote(input)),
      },
      actions: {
        sendWelcome: (_a, p) => this.sendWelcome(p.startTid as Buffer),
        sendRefusal: (_a, p) => this.sendRefusal(p.code, p.reason, p.protocolName, p.forkTid as Buffer | undefined),
        sendStatus: () => this.sendStatus(),
        sendPromoteResult: (_a, p) => this.sendPromoteResult(p),
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
        this.writer.onClose();
        // A session that already ended (refused, protocol error) has nothing to hear.
        if (this.actor.getSnapshot().status !== 'active') return;
        this.actor.send(error ? { type: 'TRANSPORT_ERROR', error } : { type: 'PEER_CLOSED' });
      },
    });
    this.actor.start();
  }

  /** Drain what is committed, then close. */
  close(): void {
    this.actor.send({ type: 'CLOSE' });
  }

  status(): SessionStatus {
    const snap = this.actor.getSnapshot();
    return {
      peer: this.peer,
      state: String(snap.value),
      protocol: this.spec?.name ?? null,
      lastSentTid: (snap.context.lastSentTid as Buffer | null) ?? null,
      ackedTid: (snap.context.ackedTid as Buffer | null) ?? null,
      bytesSent: this.writer.bytesWritten,
    };
  }

  /** The machine actor, for inspection (state transitions, context). */
  get machine(): SessionActor {
    return this.actor;
  }

  // ------------------------------------------------------------ inbound

  private onData(chunk: Uint8Array): void {
    if (this.finished) return; // ended: late acks or keep-alives have no one to hear them
    try {
      this.decoder.feed(chunk);
      for (let f = this.decoder.next(); f !== null; f = this.decoder.next()) {
        this.onFrame(f);
        if (this.finished) return;
      }
    } catch (err) {
      const reason = err instanceof FrameTooLargeError ? err.message : `bad frame: ${(err as Error).message}`;
      this.actor.send({ type: 'PROTOCOL_ERROR', reason });
    }
  }

  private onFrame(payload: Buffer): void {
    if (payload.length === 0) {
      this.actor.send({ type: 'KEEPALIVE' });
      return;
    }
    this.framesSeen += 1;
    if (this.framesSeen === 1) return this.onProtocolName(payload);
    if (this.framesSeen === 2) return this.onStart(payload);
    if (this.adminRequest) return; // nothing follows a promote request but its answer
    this.onUpstream(payload);
  }

  private onProtocolName(payload: Buffer): void {
    const name = payload.toString('latin1');
    this.spec = this.options.protocols.find((p) => p.name === name) ?? null;
    this.decoder.setMaxFrameBytes(this.spec?.kind === 'native' ? HELLO_MAX_BYTES : ZRS2_MAX_FRAME_BYTES);
    this.actor.send({ type: 'PROTOCOL', name });
  }

  private onStart(payload: Buffer): void {
    const spec = this.spec;
    if (spec === null) return;
    const primaryLastTid = this.options.storage.lastDurableTid;
    let startTid: Buffer;
    let wantsBlobs = false;
    let wantsRaw = false;
    let wantsLinks = false;
    let edgeRefusal: ReturnType<FailoverHistory['refusalFor']> = undefined;
    if (spec.kind === 'native') {
      let hello: ReturnType<typeof decodeNative>;
      try {
        hello = decodeNative(payload, this.unpackr, 'secondary');
      } catch (err) {
        // A malformed start tid is refused (bad-tid) so the native peer learns why.
        if (!(err instanceof Error && err.message.startsWith('hello.startTid'))) throw err;
        this.actor.send({ type: 'START', startTid: Buffer.alloc(8), primaryLastTid, edgeRefusal: { code: 'bad-tid', reason: err.message } });
        return;
      }
      if (hello.type === 'status-request' && this.options.nodeStatus) {
        this.actor.send({ type: 'STATUS_REQUEST' });
        return;
      }
      if (hello.type === 'promote-request') {
        this.adminRequest = true;
        this.actor.send({ type: 'PROMOTE_REQUEST', force: hello.force });
        return;
      }
      if (hello.type !== 'hello') throw new Error(`expected hello, got ${hello.type}`);
      startTid = hello.startTid;
      wantsBlobs = hello.options.blobs;
      wantsRaw = hello.options.rawTxns === true;
      wantsLinks = hello.options.txnLinks === true;
      edgeRefusal = this.options.history?.refusalFor(hello);
      this.decoder.setMaxFrameBytes(SECONDARY_MESSAGE_MAX_BYTES);
    } else {
      startTid = Buffer.from(payload);
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
            })
          : zrs2Outbound(this.options.storage, startTid, spec);
    }
    this.actor.send({ type: 'START', startTid, primaryLastTid, ...(edgeRefusal ? { edgeRefusal } : {}) });
    if (this.codec && this.actor.getSnapshot().status === 'active') this.startHeartbeat();
  }

  private onUpstream(payload: Buffer): void {
    if (this.spec?.kind !== 'native') {
      this.actor.send({ type: 'PROTOCOL_ERROR', reason: 'Too many messages' });
      return;
    }
    const msg = decodeNative(payload, this.unpackr, 'secondary');
    if (msg.type !== 'ack') {
      this.actor.send({ type: 'PROTOCOL_ERROR', reason: `unexpected ${msg.type} after the handshake` });
      return;
    }
    this.actor.send({ type: 'ACK', tid: msg.tid });
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
    this.options.log('warn', `refused secondary ${this.peer}: ${reason}`, { code, protocol: protocolName });
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
    const handler = this.options.promote;
    if (!handler) return { kind: 'refused', code: 'not-promotable', reason: 'this node does not accept promote requests' };
    return handler({ ...input, peer: this.peer });
  }

  private sendPromoteResult(outcome: PromoteOutcome): void {
    const packr = createNativePackr();
    const f =
      outcome.kind === 'promoted'
        ? encodeNativeFrame({ type: 'promoted', generation: { generation: outcome.generation, startTid: Buffer.from(outcome.startTid) }, sessionsKept: outcome.sessionsKept }, packr)
        : encodeNativeFrame({ type: 'promote-refused', code: outcome.code, message: outcome.reason.slice(0, MAX_REFUSAL_MESSAGE_CHARS) }, packr);
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
    const level =
      reason.kind === 'drained' || reason.kind === 'peer-closed' || reason.kind === 'closed-before-start' || reason.kind === 'status-served' || reason.kind === 'promote-served' ? 'info' : 'warn';
    this.options.log(level, `session with ${this.peer} closed: ${describeReason(reason)}`, { reason: reason.kind });
    if (reason.kind === 'transport-error' || reason.kind === 'protocol-error' || reason.kind === 'effect-failed') {
      this.options.stream.destroy();
    } else {
      void this.writer.flush().catch(() => undefined).finally(() => this.options.stream.end());
    }
    this.doneSubject.next(reason);
    this.doneSubject.complete();
  }

  private startHeartbeat(): void {
    const interval = this.options.heartbeatIntervalMs;
    if (!interval || !this.codec?.heartbeat) return;
    const tick = (): void => {
      this.heartbeat = this.options.clock.setTimeout(tick, interval);
      const state = this.actor.getSnapshot().value;
      // Heartbeats go only between transactions: while live and idle.
      if (state === 'live' && this.idle) {
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

  /**
   * Tell this session's secondary, between transactions, that the node
   * started a new generation (it was promoted while the session streamed),
   * so it adopts it without reconnecting. A session not past its handshake
   * needs nothing: its welcome will carry the generation.
   */
  announceGeneration(): void {
    this.generationPending = true;
    if (this.idle) this.sendGenerationAnnouncement();
  }

  private sendGenerationAnnouncement(): void {
    const generation = this.options.history?.welcomeFields().generation;
    const state = this.actor.getSnapshot().value;
    if (!generation || !this.codec || (state !== 'live' && state !== 'catchingUp')) return;
    this.generationPending = false;
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

  /** Stream every durable transaction after input.afterTid, from the log file. */
  /** Send the log's transactions after `input.afterTid` (or what was already written) up to `stop` (inclusive; null: the end). */
  private async sendLog(input: StreamInput, signal: AbortSignal, stop: Buffer | null): Promise<StreamOutput> {
    const storage = this.options.storage;
    let last: Buffer | null = null;
    // A transaction an aborted actor was writing is finished (and SENT) first.
    await this.inflight;
    const written = this.lastWrittenTid;
    const after = written !== null && Buffer.compare(written, input.afterTid) > 0 ? written : input.afterTid;
    const start = tidPlusOne(Buffer.from(after));
    const codec = this.codec!;
    // Runs of plain transactions go out as raw batches of file bytes, up to RAW_BATCH_BYTES each.
    let batch: TransactionRecord[] = [];
    let batchBytes = 0;
    const sendBatch = async (more: boolean): Promise<boolean> => {
      const txns = batch;
      batch = [];
      batchBytes = 0;
      if (txns.length === 0) return !signal.aborted;
      const sent = await this.sendRawBatch(txns, signal, more);
      if (sent) last = txns[txns.length - 1]!.tid;
      return sent;
    };
    for await (const txn of storage.iterator(start, stop === null ? null : Buffer.from(stop), { signal })) {
      const more = txn.pos + txn.length + 8 < storage.durableEnd;
      if (codec.acceptsRaw(txn)) {
        // A batch stays within one read window, so it goes out as a view of it, never copied.
        if (batch.length > 0 && !follows(batch[batch.length - 1]!.raw!, txn.raw!) && !(await sendBatch(true))) break;
        batch.push(txn);
        batchBytes += txn.raw!.length;
        if ((batchBytes >= RAW_BATCH_BYTES || !more) && !(await sendBatch(more))) break;
        continue;
      }
      if (!(await sendBatch(true))) break;
      if (!(await this.sendTransaction(txn, signal, more))) break;
      last = txn.tid;
    }
    if (!signal.aborted) await sendBatch(false);
    await this.writer.flush();
    return { lastTid: last };
  }

  /** Write a batch of raw transactions; SENT names the last one. */
  private sendRawBatch(txns: readonly TransactionRecord[], signal: AbortSignal, more: boolean): Promise<boolean> {
    if (signal.aborted) return Promise.resolve(false);
    return this.track(
      (async (): Promise<boolean> => {
        this.idle = false;
        try {
          for (const f of this.codec!.rawFrames(txns)) this.writer.push(f);
          if (!more || this.writer.pending >= BATCH_FLUSH_BYTES) await this.writer.flush();
        } finally {
          this.idle = true;
        }
        return this.wrote(txns[txns.length - 1]!.tid, signal, txns.length);
      })(),
    );
  }

  /** Note that everything up to `tid` is on the wire. */
  private wrote(tid: Buffer, signal: AbortSignal, count = 1): boolean {
    this.lastWrittenTid = tid;
    if (this.generationPending) this.sendGenerationAnnouncement();
    if (this.actor.getSnapshot().status === 'active') this.actor.send({ type: 'SENT', tid, count });
    return !signal.aborted;
  }

  /** Forward commits as they become durable, through a bounded buffer. */
  private follow(input: StreamInput, signal: AbortSignal): Promise<void> {
    const storage = this.options.storage;
    const limit = this.options.followBufferSize ?? DEFAULT_FOLLOW_BUFFER;
    return new Promise<void>((resolve, reject) => {
      const queue: CommittedTransaction[] = [];
      let lastTid: Buffer = Buffer.from(input.afterTid);
      let pumping = false;
      let sub: Subscription | null = null;
      const epoch = storage.fileEpoch;
      const overflow = (): void => {
        sub?.unsubscribe();
        this.actor.send({ type: 'OVERFLOW' });
      };
      const pump = async (): Promise<void> => {
        if (pumping) return;
        pumping = true;
        // Windows end at the durable end: a lone new commit reads just its own bytes.
        const reader = new WindowReader(storage.fileHandle, 256 * 1024, () => storage.durableEnd);
        /** The committed transaction, or null when a pack replaced the file (positions are void). */
        const read = async (c: CommittedTransaction): Promise<TransactionRecord | null> => {
          if (storage.fileEpoch !== epoch) return null;
          // Published with its bytes (a small commit): no file read at all.
          if (c.raw !== undefined) return parseTransaction(storage, c.raw, c.pos);
          const txn = await readTransaction(storage, reader, c.pos).catch((err: unknown) => {
            if (storage.fileEpoch === epoch) throw err;
            return null; // the file was replaced under the read
          });
          return storage.fileEpoch === epoch ? txn : null;
        };
        const codec = this.codec!;
        try {
          while (queue.length && !signal.aborted) {
            const c = queue.shift()!;
            if (Buffer.compare(c.tid, lastTid) <= 0) continue;
            const txn = await read(c);
            if (txn === null) return overflow(); // go back to reading by tid
            if (!codec.acceptsRaw(txn)) {
              if (!(await this.sendTransaction(txn, signal, queue.length > 0))) return;
              lastTid = txn.tid;
              continue;
            }
            // Commits queued behind this one join it in one raw batch.
            const batch = [txn];
            for (let bytes = txn.raw!.length; queue.length && bytes < RAW_BATCH_BYTES; ) {
              const next = await read(queue[0]!);
              if (next === null) return overflow();
              if (!codec.acceptsRaw(next)) break; // it goes next, on its own
              queue.shift();
              batch.push(next);
              bytes += next.raw!.length;
            }
            if (!(await this.sendRawBatch(batch, signal, queue.length > 0))) return;
            lastTid = batch[batch.length - 1]!.tid;
          }
        } catch (err) {
          sub?.unsubscribe();
          reject(err);
        } finally {
          pumping = false;
        }
      };
      // The pump runs on its own turn of the event loop, never inside the
      // committer's tpcFinish: a commit does not wait for sends, and commits
      // made in one burst go out together as one raw run.
      let scheduled = false;
      const schedule = (): void => {
        if (scheduled) return;
        scheduled = true;
        setImmediate(() => {
          scheduled = false;
          void pump();
        });
      };
      sub = storage.commits$.subscribe({
        next: (c) => {
          if (queue.length >= limit) return overflow();
          queue.push(c);
          schedule();
        },
        complete: () => resolve(),
      });
      signal.addEventListener('abort', () => sub?.unsubscribe(), { once: true });
      // Anything made durable between catch-up's end and this subscription is
      // not in the queue: it is read from the log first, while new commits
      // queue up behind it (the pump skips those already sent).
      if (Buffer.compare(storage.lastDurableTid, lastTid) > 0) {
        pumping = true;
        this.sendLog({ ...input, afterTid: lastTid }, signal, storage.lastDurableTid).then(
          (out) => {
            if (out.lastTid !== null && Buffer.compare(out.lastTid, lastTid) > 0) lastTid = Buffer.from(out.lastTid);
            pumping = false;
            if (queue.length > 0) schedule();
          },
          (err: unknown) => {
            sub?.unsubscribe();
            reject(err);
          },
        );
      }
    });
  }
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
      return `${r.effect} failed: ${(r.error as Error)?.message ?? String(r.error)}`;
    case 'handshake-timeout':
    case 'drain-timeout':
      return `${r.kind} after ${r.timeoutMs} ms`;
    case 'status-served':
      return 'status request answered';
    case 'promote-served':
      return `promote request answered (${r.outcome})`;
    default:
      return r.kind;
  }
}
