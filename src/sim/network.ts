// A simulated network behind the Transport port: no sockets, virtual time,
// seeded randomness. Inside a live connection bytes are delayed, split and
// merged, stalled by partitions, but never reordered, duplicated or lost;
// a connection ends only by close, reset, crash or a deliberate fault.
// Every decision is drawn when an event fires (in virtual-time order), never
// when an actor writes, so racing async work cannot shift the random stream.

import type { Random } from '../ports/random.js';
import type { ByteStream, ByteStreamHandlers, Listener, ReplicationAddress, Transport } from '../ports/transport.js';
import { formatAddress } from '../replication/address.js';
import type { VirtualClock } from './clock.js';

/** A network-level error, shaped like Node's (code ECONNREFUSED, ECONNRESET …). */
export class SimNetworkError extends Error {
  override name = 'SimNetworkError';
  constructor(
    readonly code: 'ECONNREFUSED' | 'ECONNRESET' | 'ETIMEDOUT' | 'EHOSTDOWN' | 'EADDRINUSE',
    message: string,
  ) {
    super(`${code}: ${message}`);
  }
}

export interface SimNetworkOptions {
  clock: VirtualClock;
  random: Random;
  /** One-way latency of each directed link, drawn (deterministically per link) from this range. */
  latencyMs?: { min: number; max: number };
  /** Bytes a direction may hold undelivered before write() returns false. */
  bufferLimitBytes?: number;
  /** Largest chunk delivered at once. */
  maxChunkBytes?: number;
  /** Probability that a delivery takes everything available (merge) rather than a random split. */
  mergeProbability?: number;
  /** After a split, the rest of the bytes arrive 0..splitGapMs later (segments spread in time). */
  splitGapMs?: number;
  /** A connect that gets no answer (partition, host down) fails after this long. */
  synTimeoutMs?: number;
  /** Receives one line per network event (node, text). */
  trace?: (node: string, text: string) => void;
}

export type HealMode = 'deliver' | 'reset';
export type CrashStyle = 'process' | 'host';

/** Counters a soak run reports. */
export interface SimNetworkStats {
  connects: number;
  refused: number;
  timedOut: number;
  resets: number;
  chunks: number;
  bytes: number;
  corrupted: number;
  faults: number;
}

type Side = 'client' | 'server';

interface Segment {
  bytes: Buffer;
  availableAtMs: number;
}

interface Direction {
  readonly from: Side;
  readonly key: string;
  queue: Segment[];
  queuedBytes: number;
  scheduled: boolean;
  /** The sender ended: deliver FIN after the queued bytes. */
  fin: boolean;
  /** The sender closed with bytes it had not read: its end is a reset (ECONNRESET at the peer), not a FIN. */
  reset: boolean;
  waitingDrain: boolean;
  /** Bytes delivered while the way back was blocked: no acknowledgement returned for them (at most one window). */
  unacked: number;
}

interface NodeState {
  incarnation: number;
  up: boolean;
}

interface ListenerEntry {
  node: string;
  incarnation: number;
  address: ReplicationAddress;
  onStream: (s: ByteStream) => void;
}

interface PendingConnect {
  from: string;
  incarnation: number;
  to: string;
  address: ReplicationAddress;
  resolve: (s: ByteStream) => void;
  reject: (e: Error) => void;
  done: boolean;
}

const DEFAULTS = {
  latencyMs: { min: 1, max: 20 },
  bufferLimitBytes: 64 * 1024,
  maxChunkBytes: 64 * 1024,
  mergeProbability: 0.5,
  splitGapMs: 3,
  synTimeoutMs: 20_000,
};

/** A 32-bit FNV-1a hash: per-link values that do not depend on call order. */
function hash32(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

class SimEndpoint implements ByteStream {
  handlers: ByteStreamHandlers | null = null;
  inbox: Buffer[] = [];
  paused = false;
  /** close() was delivered (or is due): nothing more reaches the handlers. */
  closed = false;
  pendingClose: { error: Error | undefined } | null = null;
  ended = false;
  /** This side's process forgot the connection (half-open, crash): bytes to it bounce. */
  gone = false;

  constructor(
    readonly conn: SimConnection,
    readonly side: Side,
    readonly node: string,
    readonly peer: string,
  ) {}

  write(chunk: Uint8Array): boolean {
    return this.conn.net.write(this, chunk);
  }

  /** The network copies what is written (see SimNetwork.write). */
  readonly heldBytes = 0;

  pause(): void {
    this.paused = true;
  }

  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    this.conn.net.kick(this.conn, this.conn.toward(this.side));
  }

  end(): void {
    this.conn.net.end(this);
  }

  destroy(error?: Error): void {
    this.conn.net.destroy(this, error);
  }

  setHandlers(handlers: ByteStreamHandlers): void {
    this.handlers = handlers;
    const held = this.inbox;
    this.inbox = [];
    for (const c of held) {
      if (this.closed) break;
      handlers.data(c);
    }
    if (this.pendingClose && !this.closed) this.notifyClose(this.pendingClose.error);
  }

  /** Deliver close once (held until handlers exist). */
  notifyClose(error: Error | undefined): void {
    if (this.closed) return;
    if (!this.handlers) {
      this.pendingClose = { error };
      return;
    }
    this.closed = true;
    this.handlers.close(error);
  }
}

class SimConnection {
  readonly client: SimEndpoint;
  readonly server: SimEndpoint;
  readonly c2s: Direction;
  readonly s2c: Direction;
  open = true;

  constructor(
    readonly net: SimNetwork,
    readonly id: number,
    readonly clientNode: string,
    readonly serverNode: string,
    readonly address: string,
  ) {
    const pad = String(id).padStart(6, '0');
    this.client = new SimEndpoint(this, 'client', clientNode, `${address}#c${id}`);
    this.server = new SimEndpoint(this, 'server', serverNode, `${clientNode}#c${id}`);
    this.c2s = { from: 'client', key: `~net:${pad}:>`, queue: [], queuedBytes: 0, scheduled: false, fin: false, reset: false, waitingDrain: false, unacked: 0 };
    this.s2c = { from: 'server', key: `~net:${pad}:<`, queue: [], queuedBytes: 0, scheduled: false, fin: false, reset: false, waitingDrain: false, unacked: 0 };
  }

  endpoint(side: Side): SimEndpoint {
    return side === 'client' ? this.client : this.server;
  }

  other(side: Side): Side {
    return side === 'client' ? 'server' : 'client';
  }

  /** The direction carrying bytes to `side`. */
  toward(side: Side): Direction {
    return side === 'client' ? this.s2c : this.c2s;
  }

  /** The direction carrying bytes from `side`. */
  from(side: Side): Direction {
    return side === 'client' ? this.c2s : this.s2c;
  }

  nodeOf(side: Side): string {
    return side === 'client' ? this.clientNode : this.serverNode;
  }

  label(d: Direction): string {
    return d.from === 'client' ? `${this.clientNode}>${this.serverNode}` : `${this.serverNode}>${this.clientNode}`;
  }
}

/** Information about one live connection, for fault schedules and tests. */
export interface SimConnectionInfo {
  id: number;
  client: string;
  server: string;
  address: string;
  queuedToServer: number;
  queuedToClient: number;
}

/**
 * The simulated network. Each node gets its own Transport view
 * (`transport(name)`), so partitions, latency and crashes are per node.
 *
 * @example
 * const clock = new VirtualClock();
 * const net = new SimNetwork({ clock, random: seededRandom(42) });
 * const primary = await Primary.open({ path, replicateTo: 'p:5000', transport: net.transport('p'), clock });
 * net.partition('p', 's1');      // stall both directions
 * net.heal('p', 's1', 'reset');  // … then reset the stalled connections
 */
export class SimNetwork {
  private readonly clock: VirtualClock;
  private readonly random: Random;
  private readonly opts: typeof DEFAULTS;
  private readonly traceFn: ((node: string, text: string) => void) | undefined;
  private readonly nodes = new Map<string, NodeState>();
  private readonly listeners = new Map<string, ListenerEntry>();
  private readonly connections = new Map<number, SimConnection>();
  private readonly blocked = new Set<string>();
  /** Pending flipped bytes per directed link. */
  private readonly corruptions = new Map<string, number>();
  private readonly latency = new Map<string, number>();
  private pendingConnects: PendingConnect[] = [];
  private nextConnId = 1;
  private nextPort = 40_000;
  private readonly seedSalt: string;
  /** Changes on every network event (for settle detection). */
  version = 0;
  readonly stats: SimNetworkStats = { connects: 0, refused: 0, timedOut: 0, resets: 0, chunks: 0, bytes: 0, corrupted: 0, faults: 0 };

  constructor(options: SimNetworkOptions) {
    this.clock = options.clock;
    this.random = options.random;
    this.traceFn = options.trace;
    this.opts = {
      latencyMs: options.latencyMs ?? DEFAULTS.latencyMs,
      bufferLimitBytes: options.bufferLimitBytes ?? DEFAULTS.bufferLimitBytes,
      maxChunkBytes: options.maxChunkBytes ?? DEFAULTS.maxChunkBytes,
      mergeProbability: options.mergeProbability ?? DEFAULTS.mergeProbability,
      splitGapMs: options.splitGapMs ?? DEFAULTS.splitGapMs,
      synTimeoutMs: options.synTimeoutMs ?? DEFAULTS.synTimeoutMs,
    };
    this.seedSalt = String(Math.floor(this.random.next() * 2 ** 32));
  }

  // ---------------------------------------------------------------- nodes and transports

  private node(name: string): NodeState {
    let n = this.nodes.get(name);
    if (!n) {
      n = { incarnation: 0, up: true };
      this.nodes.set(name, n);
    }
    return n;
  }

  /** The Transport of one node (its current incarnation; a crash makes it inert). */
  transport(name: string): Transport {
    const incarnation = this.node(name).incarnation;
    const alive = (): boolean => {
      const n = this.node(name);
      return n.up && n.incarnation === incarnation;
    };
    return {
      connect: (address) => {
        if (!alive()) return Promise.reject(new SimNetworkError('EHOSTDOWN', `${name} is down`));
        return this.connect(name, incarnation, address);
      },
      listen: async (address, onStream) => {
        if (!alive()) throw new SimNetworkError('EHOSTDOWN', `${name} is down`);
        return this.listen(name, incarnation, address, onStream);
      },
    };
  }

  isUp(name: string): boolean {
    return this.node(name).up;
  }

  // ---------------------------------------------------------------- links

  /** One-way latency from `from` to `to` in virtual ms. */
  latencyMs(from: string, to: string): number {
    const key = `${from}>${to}`;
    const set = this.latency.get(key);
    if (set !== undefined) return set;
    const { min, max } = this.opts.latencyMs;
    return min + (hash32(`${this.seedSalt}|${key}`) % (max - min + 1));
  }

  setLatency(a: string, b: string, ms: number, oneWay = false): void {
    this.latency.set(`${a}>${b}`, ms);
    if (!oneWay) this.latency.set(`${b}>${a}`, ms);
  }

  private isBlocked(from: string, to: string): boolean {
    return this.blocked.has(`${from}>${to}`);
  }

  /** Stall traffic from a to b (and b to a unless oneWay). Bytes are held, not lost. */
  partition(a: string, b: string, oneWay = false): void {
    this.stats.faults += 1;
    this.blocked.add(`${a}>${b}`);
    if (!oneWay) this.blocked.add(`${b}>${a}`);
    this.note('net', `partition ${a}${oneWay ? '->' : '<->'}${b}`);
  }

  /** Isolate a node from every other known node. */
  isolate(name: string): void {
    for (const other of this.nodes.keys()) if (other !== name) this.partition(name, other);
  }

  /**
   * Lift partitions between a and b (both given), or touching a (one
   * given), or all. 'deliver' lets held bytes flow; 'reset' resets every
   * connection across a healed link.
   */
  heal(a?: string, b?: string, mode: HealMode = 'deliver'): void {
    const touched: Array<[string, string]> = [];
    for (const k of [...this.blocked]) {
      const [x, y] = k.split('>') as [string, string];
      const match = a === undefined || (b === undefined ? x === a || y === a : (x === a && y === b) || (x === b && y === a));
      if (match) {
        this.blocked.delete(k);
        touched.push([x, y]);
      }
    }
    if (!touched.length) return;
    this.note('net', `heal ${a ?? '*'}${b ? `<->${b}` : ''} (${mode})`);
    const crosses = (c: SimConnection): boolean => touched.some(([x, y]) => (c.clientNode === x && c.serverNode === y) || (c.clientNode === y && c.serverNode === x));
    for (const c of this.sortedConnections()) {
      if (!crosses(c)) continue;
      if (mode === 'reset') this.resetConnection(c, 'reset at heal');
      else {
        // Acknowledgements flow again: a later one-way partition starts a window of its own.
        c.c2s.unacked = c.s2c.unacked = 0;
        this.kick(c, c.c2s);
        this.kick(c, c.s2c);
      }
    }
    this.retryPendingConnects();
  }

  // ---------------------------------------------------------------- faults

  /** Reset one connection: both ends see close with ECONNRESET. */
  reset(id: number): boolean {
    const c = this.connections.get(id);
    if (!c) return false;
    this.stats.faults += 1;
    this.resetConnection(c, 'reset');
    return true;
  }

  /** Reset every connection between two nodes; returns how many. */
  resetBetween(a: string, b: string): number {
    let n = 0;
    for (const c of this.between(a, b)) if (this.reset(c.id)) n++;
    return n;
  }

  /**
   * Make a connection half-open: `deadNode`'s side forgets it (its actor sees
   * a reset), the other side sees nothing until it writes, and then a reset.
   */
  halfOpen(id: number, deadNode: string): boolean {
    const c = this.connections.get(id);
    if (!c || !c.open) return false;
    const side: Side = c.clientNode === deadNode ? 'client' : 'server';
    this.stats.faults += 1;
    this.note('net', `half-open c${id}: ${c.nodeOf(side)} forgets it`);
    this.forget(c, side, new SimNetworkError('ECONNRESET', 'connection forgotten (half-open)'));
    return true;
  }

  /**
   * Flip one byte of the next chunk delivered from `from` to `to`, on
   * whichever connection between them carries bytes next (now or later).
   */
  corruptNext(from: string, to: string): void {
    const key = `${from}>${to}`;
    this.corruptions.set(key, (this.corruptions.get(key) ?? 0) + 1);
    this.stats.faults += 1;
    this.note('net', `corrupt the next chunk ${key}`);
  }

  /**
   * A node crashes. Its listeners vanish, its own actors see their streams
   * reset, and its transport becomes inert. 'process': the system closes
   * its sockets, as destroy() does: what the socket buffers held still goes
   * out, then a FIN, each after the link latency and held by a partition
   * like any byte. 'host': peers hear nothing at all (half-open
   * connections, detected only when they write).
   */
  crash(name: string, style: CrashStyle = 'process'): void {
    const n = this.node(name);
    n.up = false;
    n.incarnation += 1;
    this.stats.faults += 1;
    this.note(name, `crash (${style})`);
    for (const [k, l] of [...this.listeners]) if (l.node === name) this.listeners.delete(k);
    for (const p of this.pendingConnects) if (p.from === name) this.finishConnect(p, new SimNetworkError('EHOSTDOWN', `${name} crashed`));
    for (const c of this.sortedConnections()) {
      for (const side of ['client', 'server'] as const) {
        if (c.nodeOf(side) !== name) continue;
        const err = new SimNetworkError('ECONNRESET', `${name} crashed`);
        if (style === 'process') this.destroy(c.endpoint(side), err);
        else this.forget(c, side, err);
      }
    }
    this.version += 1;
  }

  /** The node is back (a new incarnation: call transport(name) again). */
  restart(name: string): void {
    const n = this.node(name);
    n.up = true;
    this.note(name, 'up');
    // Bytes held for the dead host now bounce (RST) or flow to a new listener.
    for (const c of this.sortedConnections()) {
      if (c.clientNode === name || c.serverNode === name) {
        this.kick(c, c.c2s);
        this.kick(c, c.s2c);
      }
    }
  }

  // ---------------------------------------------------------------- inspection

  /** Live connections, oldest first. */
  liveConnections(): SimConnectionInfo[] {
    return this.sortedConnections().map((c) => ({
      id: c.id,
      client: c.clientNode,
      server: c.serverNode,
      address: c.address,
      queuedToServer: c.c2s.queuedBytes,
      queuedToClient: c.s2c.queuedBytes,
    }));
  }

  /** Bytes written but not yet delivered, over all connections. */
  get bytesInFlight(): number {
    let n = 0;
    for (const c of this.connections.values()) n += c.c2s.queuedBytes + c.s2c.queuedBytes;
    return n;
  }

  get partitions(): string[] {
    return [...this.blocked].sort();
  }

  // ---------------------------------------------------------------- connect / listen

  private lookup(address: ReplicationAddress): ListenerEntry | undefined {
    const exact = this.listeners.get(formatAddress(address));
    if (exact || address.kind === 'unix') return exact;
    return this.listeners.get(String(address.port));
  }

  private listen(node: string, incarnation: number, address: ReplicationAddress, onStream: (s: ByteStream) => void): Listener {
    let bound = address;
    if (address.kind === 'tcp' && address.port === 0) bound = { ...address, port: this.nextPort++ };
    const key = formatAddress(bound);
    if (this.listeners.has(key)) throw new SimNetworkError('EADDRINUSE', `${key} is in use`);
    const entry: ListenerEntry = { node, incarnation, address: bound, onStream };
    this.listeners.set(key, entry);
    this.note(node, `listen ${key}`);
    return {
      address: bound,
      close: async () => {
        if (this.listeners.get(key) === entry) {
          this.listeners.delete(key);
          this.note(node, `unlisten ${key}`);
        }
      },
    };
  }

  private connect(from: string, incarnation: number, address: ReplicationAddress): Promise<ByteStream> {
    this.version += 1;
    return new Promise<ByteStream>((resolve, reject) => {
      const p: PendingConnect = { from, incarnation, to: '', address, resolve, reject, done: false };
      const target = this.lookup(address);
      const label = formatAddress(address);
      if (!target) {
        // Nobody listens: the RST comes back after a round trip to "somewhere".
        this.clock.schedule(2 * this.opts.latencyMs.min, `~connect:${from}`, () => {
          this.stats.refused += 1;
          this.note(from, `refused ${label}`);
          this.finishConnect(p, new SimNetworkError('ECONNREFUSED', `nobody listens on ${label}`));
        });
        return;
      }
      p.to = target.node;
      this.pendingConnects.push(p);
      this.clock.schedule(this.opts.synTimeoutMs, `~connect:${from}`, () => {
        if (p.done) return;
        this.stats.timedOut += 1;
        this.note(from, `connect ${label} timed out`);
        this.finishConnect(p, new SimNetworkError('ETIMEDOUT', `no answer from ${label}`));
      });
      this.tryConnect(p);
    });
  }

  private tryConnect(p: PendingConnect): void {
    if (p.done || this.isBlocked(p.from, p.to) || this.isBlocked(p.to, p.from) || !this.node(p.to).up) return;
    const rtt = this.latencyMs(p.from, p.to) + this.latencyMs(p.to, p.from);
    this.clock.schedule(rtt, `~connect:${p.from}`, () => this.arrive(p));
  }

  private retryPendingConnects(): void {
    for (const p of this.pendingConnects) this.tryConnect(p);
  }

  private arrive(p: PendingConnect): void {
    if (p.done) return;
    const from = this.node(p.from);
    if (!from.up || from.incarnation !== p.incarnation) return this.finishConnect(p, new SimNetworkError('EHOSTDOWN', `${p.from} crashed`));
    if (this.isBlocked(p.from, p.to) || this.isBlocked(p.to, p.from)) return; // partitioned meanwhile: heal retries
    const label = formatAddress(p.address);
    const target = this.lookup(p.address);
    if (!target) {
      this.stats.refused += 1;
      this.note(p.from, `refused ${label}`);
      return this.finishConnect(p, new SimNetworkError('ECONNREFUSED', `nobody listens on ${label}`));
    }
    const c = new SimConnection(this, this.nextConnId++, p.from, target.node, label);
    this.connections.set(c.id, c);
    this.stats.connects += 1;
    this.note(p.from, `connect c${c.id} -> ${target.node} (${label})`);
    p.done = true;
    this.pendingConnects = this.pendingConnects.filter((q) => q !== p);
    target.onStream(c.server);
    p.resolve(c.client);
  }

  private finishConnect(p: PendingConnect, error: Error): void {
    if (p.done) return;
    p.done = true;
    this.pendingConnects = this.pendingConnects.filter((q) => q !== p);
    this.version += 1;
    p.reject(error);
  }

  // ---------------------------------------------------------------- byte streams

  /** @internal */
  write(from: SimEndpoint, chunk: Uint8Array): boolean {
    const c = from.conn;
    const d = c.from(from.side);
    if (!c.open || from.closed || from.ended || from.gone) return true;
    if (chunk.byteLength === 0) return true;
    this.version += 1;
    const to = c.nodeOf(c.other(from.side));
    d.queue.push({ bytes: Buffer.from(chunk), availableAtMs: this.clock.now() + this.latencyMs(from.node, to) });
    d.queuedBytes += chunk.byteLength;
    this.kick(c, d);
    if (d.queuedBytes > this.opts.bufferLimitBytes) {
      d.waitingDrain = true;
      return false;
    }
    return true;
  }

  /** @internal Schedule the next delivery of a direction if it has anything to deliver. */
  kick(c: SimConnection, d: Direction, gapMs = 0): void {
    if (!c.open || d.scheduled || (d.queue.length === 0 && !d.fin)) return;
    const head = d.queue[0];
    const earliest = this.clock.now() + gapMs;
    const at = head ? Math.max(earliest, head.availableAtMs) : earliest;
    d.scheduled = true;
    this.clock.schedule(at - this.clock.now(), d.key, () => {
      d.scheduled = false;
      this.deliver(c, d);
    });
  }

  private deliver(c: SimConnection, d: Direction): void {
    if (!c.open) return;
    const fromNode = c.nodeOf(d.from);
    const toSide = c.other(d.from);
    const toNode = c.nodeOf(toSide);
    const receiver = c.endpoint(toSide);
    if (this.isBlocked(fromNode, toNode)) return; // held: heal kicks it again
    if (receiver.gone) {
      if (d.queue.length === 0) return this.finish(c, undefined); // only our FIN was left
      if (!this.node(toNode).up) return; // a dead host answers nothing; restart() kicks it again
      // The peer host has no such connection: its RST reaches the sender.
      const sender = c.endpoint(d.from);
      this.note(fromNode, `c${c.id} half-open: ${toNode} answers with a reset`);
      this.close(c, sender, new SimNetworkError('ECONNRESET', `${toNode} does not know c${c.id}`));
      return;
    }
    if (receiver.closed) return;
    if (receiver.paused) return; // resume() kicks it again
    // A one-way partition the other way: acknowledgements stop, so a sender stalls after one window (heal kicks it).
    if (this.isBlocked(toNode, fromNode)) {
      if (d.unacked >= this.opts.bufferLimitBytes) return;
    } else d.unacked = 0;
    const now = this.clock.now();
    let available = 0;
    for (const s of d.queue) {
      if (s.availableAtMs > now) break;
      available += s.bytes.length;
    }
    if (this.isBlocked(toNode, fromNode)) available = Math.min(available, this.opts.bufferLimitBytes - d.unacked);
    if (available > 0) {
      const cap = Math.min(available, this.opts.maxChunkBytes);
      const n = this.random.next() < this.opts.mergeProbability ? cap : 1 + Math.floor(this.random.next() * cap);
      const chunk = this.take(d, n);
      const link = `${fromNode}>${toNode}`;
      const pending = this.corruptions.get(link) ?? 0;
      if (pending > 0) {
        if (pending === 1) this.corruptions.delete(link);
        else this.corruptions.set(link, pending - 1);
        const at = Math.floor(this.random.next() * chunk.length);
        chunk[at] = chunk[at]! ^ (1 + Math.floor(this.random.next() * 255));
        this.stats.corrupted += 1;
        this.note(toNode, `c${c.id} ${c.label(d)} byte ${at} of ${chunk.length} flipped`);
      }
      if (this.isBlocked(toNode, fromNode)) d.unacked += chunk.length;
      this.stats.chunks += 1;
      this.stats.bytes += chunk.length;
      this.version += 1;
      this.note(toNode, `c${c.id} ${c.label(d)} chunk ${chunk.length}B`);
      if (receiver.handlers) receiver.handlers.data(chunk);
      else receiver.inbox.push(chunk);
      if (d.waitingDrain && d.queuedBytes <= this.opts.bufferLimitBytes / 2 && c.open) {
        d.waitingDrain = false;
        const sender = c.endpoint(d.from);
        if (!sender.closed) sender.handlers?.drain();
      }
    }
    if (d.queue.length) this.kick(c, d, available > 0 ? Math.floor(this.random.next() * (this.opts.splitGapMs + 1)) : 0);
    else if (d.fin) this.deliverFin(c, d);
  }

  private take(d: Direction, n: number): Buffer {
    const parts: Buffer[] = [];
    let left = n;
    while (left > 0) {
      const head = d.queue[0]!;
      if (head.bytes.length <= left) {
        parts.push(head.bytes);
        left -= head.bytes.length;
        d.queue.shift();
      } else {
        parts.push(head.bytes.subarray(0, left));
        head.bytes = head.bytes.subarray(left);
        left = 0;
      }
    }
    d.queuedBytes -= n;
    return parts.length === 1 ? Buffer.from(parts[0]!) : Buffer.concat(parts, n);
  }

  private deliverFin(c: SimConnection, d: Direction): void {
    d.fin = false;
    const toSide = c.other(d.from);
    const receiver = c.endpoint(toSide);
    if (d.reset) {
      this.note(receiver.node, `c${c.id} ${c.label(d)} reset`);
      this.close(c, receiver, new SimNetworkError('ECONNRESET', `c${c.id} closed by ${c.nodeOf(d.from)} with unread bytes`));
      return;
    }
    this.note(receiver.node, `c${c.id} ${c.label(d)} fin`);
    // The receiver ends too (no half-close): its FIN follows its queued bytes.
    const back = c.from(toSide);
    if (!receiver.ended && !receiver.gone) {
      receiver.ended = true;
      back.fin = true;
      this.kick(c, back);
    }
    const sender = c.endpoint(d.from);
    if (receiver.ended && (sender.ended || sender.gone) && !back.fin && back.queue.length === 0) {
      this.finish(c, undefined);
    } else receiver.notifyClose(undefined);
  }

  /** Both FINs delivered, or a reset: the connection is gone. */
  private finish(c: SimConnection, error: Error | undefined): void {
    if (!c.open) return;
    c.open = false;
    this.connections.delete(c.id);
    this.version += 1;
    c.c2s.queue = [];
    c.s2c.queue = [];
    c.c2s.queuedBytes = c.s2c.queuedBytes = 0;
    if (!c.client.gone) c.client.notifyClose(error);
    if (!c.server.gone) c.server.notifyClose(error);
  }

  private close(c: SimConnection, _at: SimEndpoint, error: Error): void {
    this.stats.resets += 1;
    this.finish(c, error);
  }

  private resetConnection(c: SimConnection, why: string): void {
    if (!c.open) return;
    this.note('net', `c${c.id} ${c.clientNode}<->${c.serverNode} ${why}`);
    this.close(c, c.client, new SimNetworkError('ECONNRESET', `c${c.id} ${why}`));
  }

  /** One side's process forgets the connection: it hears a reset, its peer hears nothing. */
  private forget(c: SimConnection, side: Side, error: Error): void {
    const e = c.endpoint(side);
    if (e.gone) return;
    e.gone = true;
    c.from(side).queue = [];
    c.from(side).queuedBytes = 0;
    c.toward(side).queue = [];
    c.toward(side).queuedBytes = 0;
    this.version += 1;
    e.notifyClose(error);
    const other = c.endpoint(c.other(side));
    if (other.gone || other.closed) this.finish(c, error);
  }

  /** @internal */
  end(e: SimEndpoint): void {
    const c = e.conn;
    if (!c.open || e.ended || e.closed || e.gone) return;
    e.ended = true;
    this.version += 1;
    const d = c.from(e.side);
    d.fin = true;
    this.kick(c, d);
  }

  /**
   * @internal Close at once: this side hears close now; the peer gets what
   * the system's socket buffer held of our writes (up to bufferLimitBytes:
   * what the process still held beyond it is lost with it), then a FIN,
   * after the latency. TCP never ends a stream cleanly after dropping
   * bytes it had taken: closing with bytes not yet read sends a reset
   * instead, which discards what was still to be sent.
   */
  destroy(e: SimEndpoint, error?: Error): void {
    const c = e.conn;
    if (!c.open || e.gone || e.closed) {
      if (!e.closed) queueMicrotask(() => e.notifyClose(error));
      return;
    }
    this.version += 1;
    const out = c.from(e.side);
    const unread = c.toward(e.side).queue.length > 0 || e.inbox.length > 0;
    if (unread) {
      out.queue = [];
      out.queuedBytes = 0;
      out.reset = true;
    } else this.keepSocketBuffer(out);
    c.toward(e.side).queue = [];
    c.toward(e.side).queuedBytes = 0;
    e.gone = true;
    e.ended = true;
    queueMicrotask(() => e.notifyClose(error));
    const other = c.endpoint(c.other(e.side));
    if (other.gone || other.closed) {
      this.finish(c, undefined);
      return;
    }
    this.note(e.node, `c${c.id} close`);
    // The peer hears our FIN after the latency (held by a partition like any byte).
    out.fin = true;
    this.kick(c, out);
  }

  // ---------------------------------------------------------------- helpers

  /** Keep the first bufferLimitBytes queued (what the system's socket buffer holds); the rest was the process's. */
  private keepSocketBuffer(d: Direction): void {
    let kept = 0;
    const queue: Segment[] = [];
    for (const s of d.queue) {
      if (kept >= this.opts.bufferLimitBytes) break;
      const take = Math.min(s.bytes.length, this.opts.bufferLimitBytes - kept);
      queue.push(take === s.bytes.length ? s : { bytes: s.bytes.subarray(0, take), availableAtMs: s.availableAtMs });
      kept += take;
    }
    d.queue = queue;
    d.queuedBytes = kept;
  }

  private sortedConnections(): SimConnection[] {
    return [...this.connections.values()].sort((a, b) => a.id - b.id);
  }

  private between(a: string, b: string): SimConnection[] {
    return this.sortedConnections().filter((c) => (c.clientNode === a && c.serverNode === b) || (c.clientNode === b && c.serverNode === a));
  }

  private note(node: string, text: string): void {
    this.version += 1;
    this.traceFn?.(node, text);
  }
}
