// A secondary: a FileStorage that only its replication actor writes. The
// secondaryConnection machine decides when to connect, reconnect and stop;
// this edge supplies the socket, the handshake and the applier. It can
// itself serve further secondaries (replicateTo), forming chains.

import { Subject, type Observable } from 'rxjs';
import { createActor, fromCallback, fromPromise, type ActorRefFrom } from 'xstate';
import type { ProtocolSpec } from '../../machines/handshake.js';
import { secondaryConnectionMachine } from '../../machines/secondaryConnection.js';
import { ChecksumMismatchError, FrameTooLargeError, ReadOnlyError, ZrsError } from '../errors.js';
import type { Clock } from '../ports/clock.js';
import { seededRandom, type Random } from '../ports/random.js';
import type { ByteStream, ReplicationAddress, Transport } from '../ports/transport.js';
import { systemClock, randomSeed } from '../node/clock.js';
import { socketTransport } from '../node/socketTransport.js';
import { FileStorage } from '../storage/FileStorage.js';
import type { CommittedTransaction } from '../storage/types.js';
import { encodeFrame, FrameDecoder, KEEP_ALIVE_FRAME } from '../wire/framing.js';
import { createNativePackr, DEFAULT_STREAM_MAX_FRAME_BYTES, encodeNativeFrame } from '../wire/native.js';
import { formatAddress, parseAddress } from './address.js';
import { Applier } from './applier.js';
import { NativeInbound, Zrs2Inbound, type ApplyEvent, type InboundDecoder } from './inbound.js';
import { silentLogger, type Logger } from './log.js';
import { NATIVE_SPEC, ZRS20_SPEC, ZRS21_SPEC } from './protocols.js';
import { ReplicationServer } from './server.js';
import { ReadOnlyStorage } from './readOnlyStorage.js';

export type SecondaryProtocol = 'native' | 'zrs2.0' | 'zrs2.1';

export interface SecondaryOptions {
  path: string;
  replicateFrom: string | number | ReplicationAddress;
  /** Also serve further secondaries at this address. */
  replicateTo?: string | number | ReplicationAddress;
  blobDir?: string;
  /** Set false when the blob directory is shared with the primary. Default true. */
  transferBlobs?: boolean;
  protocol?: SecondaryProtocol;
  fsync?: boolean;
  /** Send a keep-alive every this many ms while connected (zc.zrs's keep-alive-delay). */
  keepAliveDelayMs?: number;
  reconnect?: { initialMs?: number; maxMs?: number; factor?: number; jitter?: number };
  maxFrameBytes?: number;
  transport?: Transport;
  clock?: Clock;
  random?: Random;
  log?: Logger;
}

/** Non-fatal conditions, for an app or a dashboard to follow. */
export type SecondaryStatus =
  | { kind: 'connecting'; address: string }
  | { kind: 'connected'; address: string }
  | { kind: 'disconnected'; address: string; reason: string }
  | { kind: 'backoff'; retryInMs: number | null }
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
  paused: boolean;
  dead: boolean;
  ackPending: boolean;
  lastDurableTid: Buffer;
}

/** Queue depth (events) at which reading from the socket pauses. */
const HIGH_WATER_EVENTS = 4096;

type ConnectionActor = ActorRefFrom<typeof secondaryConnectionMachine>;

export class Secondary {
  private readonly actor: ConnectionActor;
  private readonly statusSubject = new Subject<SecondaryStatus>();
  /** Non-fatal status changes (connecting, connected, disconnected, backoff, diverged …). */
  readonly status$: Observable<SecondaryStatus> = this.statusSubject.asObservable();
  /** Transactions applied (durable) on this secondary, in tid order. */
  readonly applied$: Observable<CommittedTransaction>;
  /** The storage, read-only to everyone but replication. */
  readonly storage: ReadOnlyStorage;
  private server: ReplicationServer | null = null;
  private readonly packr = createNativePackr();
  private readonly spec: ProtocolSpec;
  private closedPromise: Promise<void> | null = null;
  /** Last heartbeat from the primary: its last tid and clock. */
  lastHeartbeat: { lastTid: Buffer; clockMs: number; receivedMs: number } | null = null;

  private constructor(
    private readonly inner: FileStorage,
    private readonly options: SecondaryOptions,
  ) {
    this.storage = new ReadOnlyStorage(inner);
    this.applied$ = inner.commits$;
    this.spec = options.protocol === 'zrs2.0' ? ZRS20_SPEC : options.protocol === 'zrs2.1' ? ZRS21_SPEC : NATIVE_SPEC;
    const address = toAddress(options.replicateFrom);
    const random = options.random ?? seededRandom(randomSeed());
    const machine = secondaryConnectionMachine.provide({
      actors: {
        connect: fromPromise(async ({ input, signal }) => {
          const stream = await this.transport.connect(input.address as ReplicationAddress);
          if (signal.aborted) {
            stream.destroy();
            throw new ZrsError('connect aborted');
          }
          return { connection: this.makeConnection(stream) };
        }),
        replicate: fromCallback(({ input, sendBack }) => {
          const conn = input.connection as Connection;
          this.run(conn, (e) => sendBack(e));
          return () => undefined;
        }),
        abortInFlight: fromPromise(async ({ input }) => {
          const conn = input.connection as Connection | null;
          if (conn) await this.drop(conn);
        }),
      },
      actions: {
        sendHandshake: (_a, p) => this.sendHandshake(p.connection as Connection),
        sendKeepAlive: (_a, p) => {
          const conn = p.connection as Connection;
          if (!conn.dead) conn.stream.write(KEEP_ALIVE_FRAME);
        },
        dropConnection: (_a, p) => void this.drop(p.connection as Connection),
      },
    });
    this.actor = createActor(machine, {
      input: {
        address,
        protocol: this.spec,
        lastAppliedTid: inner.lastTransaction(),
        random: () => random.next(),
        reconnect: options.reconnect,
        keepAliveDelayMs: options.keepAliveDelayMs ?? null,
      },
      clock: this.clock,
    });
    this.actor.subscribe((snap) => this.publishStatus(snap.value, snap.context));
  }

  /**
   * Open the storage and start replicating.
   *
   * @example
   * const secondary = await Secondary.open({ path: 'Replica.fs', replicateFrom: '127.0.0.1:5000' });
   * secondary.applied$.subscribe((t) => console.log('applied', t.tid.toString('hex')));
   */
  static async open(options: SecondaryOptions): Promise<Secondary> {
    const inner = await FileStorage.open(options.path, { create: true, blobDir: options.blobDir, fsync: options.fsync });
    const s = new Secondary(inner, options);
    try {
      if (options.replicateTo !== undefined) {
        s.server = await ReplicationServer.start({
          storage: inner,
          address: toAddress(options.replicateTo),
          transport: s.transport,
          clock: s.clock,
          log: s.log,
        });
      }
    } catch (err) {
      await inner.close();
      throw err;
    }
    s.actor.start();
    s.actor.send({ type: 'START' });
    return s;
  }

  private get transport(): Transport {
    return this.options.transport ?? socketTransport;
  }

  private get clock(): Clock {
    return this.options.clock ?? systemClock;
  }

  private get log(): Logger {
    return this.options.log ?? silentLogger;
  }

  /** The machine actor (state, context), for inspection and tests. */
  get machine(): ConnectionActor {
    return this.actor;
  }

  /** Address further secondaries connect to, when replicateTo was given. */
  get replicationAddress(): ReplicationAddress | null {
    return this.server?.address ?? null;
  }

  /** Replicate from somewhere else from now on (e.g. a newly promoted primary). */
  setReplicationAddress(address: string | number | ReplicationAddress): void {
    this.actor.send({ type: 'SET_ADDRESS', address: toAddress(address) });
  }

  private makeConnection(stream: ByteStream): Connection {
    const start = this.inner.lastTransaction();
    const maxFrame = this.options.maxFrameBytes ?? DEFAULT_STREAM_MAX_FRAME_BYTES;
    const inbound: InboundDecoder =
      this.spec.kind === 'native' ? new NativeInbound(start, maxFrame) : new Zrs2Inbound(start, this.spec, maxFrame);
    const conn: Connection = {
      stream,
      decoder: new FrameDecoder({ maxFrameBytes: inbound.maxFrameBytes }),
      inbound,
      applier: null as unknown as Applier,
      chain: Promise.resolve(),
      queued: 0,
      paused: false,
      dead: false,
      ackPending: false,
      lastDurableTid: start,
    };
    conn.applier = new Applier(
      this.inner,
      {
        applied: (tid) => this.onApplied(conn, tid),
        heartbeat: (lastTid, clockMs) => (this.lastHeartbeat = { lastTid, clockMs, receivedMs: this.clock.now() }),
      },
      this.options.transferBlobs ?? true,
    );
    return conn;
  }

  private sendHandshake(conn: Connection): void {
    const start = this.inner.lastTransaction();
    conn.stream.write(encodeFrame(Buffer.from(this.spec.name, 'latin1')));
    if (this.spec.kind === 'native') {
      const blobs = (this.options.transferBlobs ?? true) && this.inner.blobs !== null;
      conn.stream.write(encodeNativeFrame({ type: 'hello', startTid: start, generations: [], options: { blobs } }, this.packr));
    } else conn.stream.write(encodeFrame(start));
  }

  /** Read frames, decode them, apply them in order; report the outcome to the machine. */
  private run(conn: Connection, send: (e: { type: string; [k: string]: unknown }) => void): void {
    const fail = (error?: Error): void => {
      if (conn.dead) return;
      conn.dead = true;
      if (error) this.log('warn', `replication from ${conn.stream.peer} stopped: ${error.message}`, { error: error.name });
      send({ type: 'DISCONNECTED', error });
    };
    // A decoding error or a close ends the connection only after the events decoded before it
    // (transactions whose checksum was verified) are applied, as zc.zrs's secondary does.
    let ending = false;
    const failAfterQueued = (error?: Error): void => {
      ending = true;
      conn.chain = conn.chain.then(() => fail(error));
    };
    conn.stream.setHandlers({
      data: (chunk) => {
        if (conn.dead || ending) return;
        try {
          conn.decoder.feed(chunk);
          for (let f = conn.decoder.next(); f !== null; f = conn.decoder.next()) {
            for (const e of conn.inbound.push(f)) this.enqueue(conn, e, send, fail);
            conn.decoder.setMaxFrameBytes(conn.inbound.maxFrameBytes);
          }
        } catch (err) {
          failAfterQueued(asError(err));
        }
      },
      drain: () => undefined,
      close: (error) => failAfterQueued(error ?? (conn.decoder.bufferedBytes > 0 ? new ZrsError('connection closed inside a frame') : undefined)),
    });
  }

  private enqueue(
    conn: Connection,
    e: ApplyEvent,
    send: (e: { type: string; [k: string]: unknown }) => void,
    fail: (error?: Error) => void,
  ): void {
    if (e.kind === 'welcome') return send({ type: 'WELCOME' });
    if (e.kind === 'refused') {
      this.log('error', `primary refused replication: ${e.code}: ${e.reason}`, { code: e.code });
      conn.dead = true;
      return send({ type: 'REFUSED', code: e.code, reason: e.reason, forkTid: e.forkTid });
    }
    conn.queued += 1;
    if (conn.queued > HIGH_WATER_EVENTS && !conn.paused) {
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
        if (conn.paused && conn.queued < HIGH_WATER_EVENTS / 2) {
          conn.paused = false;
          conn.stream.resume();
        }
      }
    });
  }

  private onApplied(conn: Connection, tid: Buffer): void {
    conn.lastDurableTid = tid;
    if (conn.ackPending) return;
    // One report (and one ack) covers every transaction made durable by the same fsync.
    conn.ackPending = true;
    queueMicrotask(() => {
      conn.ackPending = false;
      this.actor.send({ type: 'TXN_APPLIED', tid: conn.lastDurableTid });
      if (this.spec.hasAcks && !conn.dead) conn.stream.write(encodeNativeFrame({ type: 'ack', tid: conn.lastDurableTid }, this.packr));
    });
  }

  /** Stop reading, abort the half-received transaction, close the socket. */
  private async drop(conn: Connection): Promise<void> {
    conn.dead = true;
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
          ? { kind: 'connected', address }
          : top === 'backoff'
            ? { kind: 'backoff', retryInMs: context.nextRetryDelayMs }
            : top === 'diverged'
              ? { kind: 'diverged', reason: err?.reason ?? 'diverged' }
              : top === 'failed'
                ? { kind: 'failed', reason: err?.reason ?? err?.kind ?? 'failed' }
                : top === 'closed'
                  ? { kind: 'closed' }
                  : null;
    if (status) this.statusSubject.next(status);
  }

  /** Abort any half-received transaction, stop replicating and serving, close the storage. */
  close(): Promise<void> {
    this.closedPromise ??= this.doClose();
    return this.closedPromise;
  }

  private async doClose(): Promise<void> {
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
    await this.server?.close();
    await this.inner.close();
    this.statusSubject.complete();
  }
}

function toAddress(a: string | number | ReplicationAddress): ReplicationAddress {
  return typeof a === 'object' ? a : parseAddress(a, '127.0.0.1');
}

function asError(err: unknown): Error {
  if (err instanceof ChecksumMismatchError || err instanceof FrameTooLargeError) return err;
  return err instanceof Error ? err : new Error(String(err));
}

export { ReadOnlyError };
