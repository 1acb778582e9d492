// Raw loopback peers for replication tests: a frame-speaking client, a fake
// primary (a plain net server), raw clients on a simulated network, a log collector that can be waited on, and
// counters of live handles. Every wait is an observable bounded by timeout.

import { readdirSync } from 'node:fs';
import { createConnection, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { firstValueFrom, filter, ReplaySubject, timeout, take, toArray, type Observable } from 'rxjs';
import type { ByteStream, ReplicationAddress } from '../../src/ports/transport.js';
import type { Logger } from '../../src/replication/log.js';
import type { VirtualClock } from '../../src/sim/clock.js';
import type { SimNetwork } from '../../src/sim/network.js';
import { encodeFrame, FrameDecoder } from '../../src/wire/framing.js';
import { createNativeUnpackr, decodeNative, type PrimaryMessage } from '../../src/wire/native.js';

export const WAIT_MS = 15_000;

/** Poll `read` (no sleeping: one macrotask per try) until `ok` holds, bounded by WAIT_MS; the last value read. */
export async function until<T>(read: () => T, ok: (v: T) => boolean): Promise<T> {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const v = read();
    if (ok(v) || Date.now() > deadline) return v;
    await new Promise((r) => setImmediate(r));
  }
}
/** Fast retries for tests: a reconnect is due within 50 ms. */
export const FAST_RECONNECT = { initialMs: 5, maxMs: 50 } as const;

export interface LogEntry {
  level: string;
  message: string;
  fields?: Record<string, unknown>;
}

/** A Logger that keeps every line and lets a test wait for one. */
export class LogCollector {
  readonly entries: LogEntry[] = [];
  private readonly subject = new ReplaySubject<LogEntry>();
  readonly log: Logger = (level, message, fields) => {
    const e = { level, message, fields };
    this.entries.push(e);
    this.subject.next(e);
  };

  /** The first line (past or future) matching `test`. */
  waitFor(test: (e: LogEntry) => boolean, ms = WAIT_MS): Promise<LogEntry> {
    return firstValueFrom(this.subject.pipe(filter(test), timeout(ms)));
  }

  /** The n-th line (past or future) matching `test`. */
  async waitForCount(test: (e: LogEntry) => boolean, n: number, ms = WAIT_MS): Promise<LogEntry[]> {
    return firstValueFrom(this.subject.pipe(filter(test), take(n), toArray(), timeout(ms)));
  }

  count(test: (e: LogEntry) => boolean): number {
    return this.entries.filter(test).length;
  }
}

export const sessionClosed = (e: LogEntry): boolean => e.message.includes('session with') && e.message.includes('closed');

/** Frames in both directions over one socket. */
export class FramedSocket {
  private readonly decoder = new FrameDecoder({ maxFrameBytes: 512 * 1024 * 1024 });
  private readonly framesSubject = new ReplaySubject<Buffer>();
  /** Every frame received, from the first. */
  readonly frames$: Observable<Buffer> = this.framesSubject.asObservable();
  /** Resolves when the socket closed (either side). */
  readonly closed: Promise<void>;
  private chunkCount = 0;
  /** Called with each raw chunk, before decoding (for tests that act on the first chunk). */
  onChunk: ((chunk: Buffer, index: number) => void) | null = null;

  constructor(readonly socket: Socket) {
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.on('error', () => undefined);
    socket.on('data', (chunk: Buffer) => {
      this.onChunk?.(chunk, this.chunkCount++);
      if (socket.destroyed) return;
      this.decoder.feed(chunk);
      for (let f = this.decoder.next(); f !== null; f = this.decoder.next()) this.framesSubject.next(Buffer.from(f));
    });
    socket.once('close', () => this.framesSubject.complete());
  }

  static connect(address: ReplicationAddress): Promise<FramedSocket> {
    return new Promise((resolve, reject) => {
      const s = address.kind === 'unix' ? createConnection({ path: address.path }) : createConnection({ host: address.host, port: address.port });
      s.once('error', reject);
      s.once('connect', () => {
        s.off('error', reject);
        resolve(new FramedSocket(s));
      });
    });
  }

  send(payload: Uint8Array): void {
    this.socket.write(encodeFrame(payload));
  }

  sendRaw(bytes: Uint8Array): void {
    this.socket.write(bytes);
  }

  /** The n-th frame received (0-based). */
  frame(n: number, ms = WAIT_MS): Promise<Buffer> {
    return firstValueFrom(this.frames$.pipe(filter((_f, i) => i === n), timeout(ms)));
  }

  /** Resolves when the socket closed, failing after `ms`. */
  waitClosed(ms = WAIT_MS): Promise<void> {
    return Promise.race([
      this.closed,
      new Promise<void>((_r, reject) => {
        const t = setTimeout(() => reject(new Error(`socket still open after ${ms} ms`)), ms);
        void this.closed.then(() => clearTimeout(t));
      }),
    ]);
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/**
 * The kinds of the native messages a primary sends `peer`, in order, as they arrive (keep-alives left out; a
 * heartbeat carrying a generation as 'generation'); `onMessage` sees each decoded message too.
 */
export function messageKinds(peer: FramedSocket, onMessage?: (msg: PrimaryMessage) => void): string[] {
  const kinds: string[] = [];
  const unpackr = createNativeUnpackr();
  peer.frames$.subscribe((f) => {
    if (f.length === 0) return;
    const msg = decodeNative(f, unpackr, 'primary');
    kinds.push(msg.type === 'heartbeat' && msg.generation ? 'generation' : msg.type);
    onMessage?.(msg);
  });
  return kinds;
}

/** A fake primary: a plain TCP server handing each connection to the test. */
export class FakeServer {
  private readonly connectionsSubject = new ReplaySubject<FramedSocket>();
  readonly connections: FramedSocket[] = [];

  private constructor(private readonly server: Server) {}

  static async start(onConnection?: (c: FramedSocket, index: number) => void): Promise<FakeServer> {
    let fake: FakeServer | null = null;
    const server = createServer((socket) => {
      const c = new FramedSocket(socket);
      const f = fake!;
      f.connections.push(c);
      onConnection?.(c, f.connections.length - 1);
      f.connectionsSubject.next(c);
    });
    fake = new FakeServer(server);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
    return fake;
  }

  get address(): ReplicationAddress {
    return { kind: 'tcp', host: '127.0.0.1', port: (this.server.address() as AddressInfo).port };
  }

  /** The n-th connection (0-based), past or future. */
  connection(n: number, ms = WAIT_MS): Promise<FramedSocket> {
    return firstValueFrom(this.connectionsSubject.pipe(filter((_c, i) => i === n), timeout(ms)));
  }

  async close(): Promise<void> {
    for (const c of this.connections) c.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.connectionsSubject.complete();
  }
}

/**
 * An address nothing listens on: port 1 of loopback. (A port found free by
 * binding and releasing it could be taken by a test running in parallel.)
 */
export const NOWHERE = '127.0.0.1:1';

/** Counts of live libuv handles by type (TCPSocketWrap, Timeout …). */
export function activeResources(): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const r of process.getActiveResourcesInfo()) counts[r] = (counts[r] ?? 0) + 1;
  return counts;
}

/** Open file descriptors of this process. */
export function openFdCount(): number {
  return readdirSync('/proc/self/fd').length;
}

/** Run `fn` until it returns true, checking again on every macrotask turn; bounded. */
export async function settleUntil(fn: () => boolean, ms = WAIT_MS): Promise<void> {
  const deadline = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${ms} ms`);
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
}

/**
 * Raw clients of a server on a simulated network with 1 ms latency, driven
 * one timer at a time (each a 1 ms hop, so no handshake timeout is reached).
 */
export class SimClients {
  constructor(
    private readonly clock: VirtualClock,
    private readonly net: SimNetwork,
    private readonly address: ReplicationAddress,
  ) {}

  /** Run the network until `done()`; fails if it does not come within 200 hops. */
  async drive(done: () => boolean): Promise<void> {
    for (let i = 0; i < 200 && !done(); i++) {
      this.clock.runNext();
      await new Promise((r) => setImmediate(r));
    }
    if (!done()) throw new Error('the simulated network did not get there in 200 hops');
  }

  /** Connect and send `frames`; count the chunks received and see the close. */
  async open(frames: Buffer[]): Promise<{ stream: ByteStream; replies: () => number; closed: () => boolean }> {
    let stream: ByteStream | null = null;
    void this.net
      .transport('x')
      .connect(this.address)
      .then((s) => (stream = s));
    await this.drive(() => stream !== null);
    let replies = 0;
    let closed = false;
    stream!.setHandlers({ data: () => void (replies += 1), drain: () => undefined, close: () => void (closed = true) });
    for (const f of frames) stream!.write(encodeFrame(f));
    return { stream: stream!, replies: () => replies, closed: () => closed };
  }

  /** A connection naming a protocol nobody speaks, until the server closed it. */
  async bogus(): Promise<void> {
    const c = await this.open([Buffer.from('bogus')]);
    await this.drive(c.closed);
  }
}
