// Prometheus metrics of one node (a primary or a secondary), in a registry of
// its own (never prom-client's global one, so several nodes share a process).
// Values are read from the actors at scrape time where they already exist
// (session status, machine context, heartbeats); counters that must survive a
// connection (bytes, transactions) are counted as they happen.

import { Counter, Gauge, Registry } from 'prom-client';
import type { Observable } from 'rxjs';
import type { AnyActorRef } from 'xstate';
import { primarySessionMachine } from '../../machines/primarySession.js';
import { secondaryConnectionMachine } from '../../machines/secondaryConnection.js';
import type { Clock } from '../ports/clock.js';
import type { ByteStream, ByteStreamHandlers, Transport } from '../ports/transport.js';
import { lagSeconds, tidSeconds } from './nodeStatus.js';
import { isReplicatingState, type PrimarySession } from './primarySession.js';

/** What the metrics read of a storage. */
export interface MeteredStorage {
  lastTransaction(): Buffer;
  readonly commits$: Observable<{ tid: Buffer }>;
}

/** What the metrics read of a secondary. */
export interface MeteredSecondary {
  readonly machine: AnyActorRef;
  readonly lastHeartbeat: { lastTid: Buffer; clockMs: number; receivedMs: number } | null;
}

const SESSION_STATES = Object.keys(primarySessionMachine.root.states);
const CONNECTION_STATES = Object.keys(secondaryConnectionMachine.root.states);

/**
 * A gauge without labels that is left out of a scrape while it has no value
 * (prom-client shows such a gauge as 0, which would read as "no lag" or "a
 * heartbeat just now" when there is none).
 */
class OptionalGauge extends Gauge {
  private present = false;

  constructor(config: { name: string; help: string; registers: Registry[]; value: () => number | null }) {
    super({
      name: config.name,
      help: config.help,
      registers: config.registers,
      collect() {
        const v = config.value();
        (this as OptionalGauge).present = v !== null;
        if (v !== null) this.set(v);
      },
    });
  }

  override async get(): ReturnType<Gauge['get']> {
    const all = await super.get();
    return this.present ? all : { ...all, values: [] };
  }
}

function topState(value: unknown): string {
  return typeof value === 'string' ? value : Object.keys(value as object)[0] ?? 'unknown';
}

/**
 * One node's metrics. Wrap the node's transport with `meter`, hand sessions
 * to `onSession`, and watch the storage (and the secondary, if any).
 *
 * @example
 * const metrics = new ReplicationMetrics(systemClock);
 * const transport = metrics.meter(socketTransport);
 * console.log(await metrics.registry.metrics());
 */
export class ReplicationMetrics {
  readonly registry = new Registry();
  private readonly sessions = new Set<PrimarySession>();
  private readonly subscriptions: { unsubscribe(): void }[] = [];
  /** What each session still open is followed by, dropped when it ends (a node sees many connections). */
  private readonly sessionSubscriptions = new Map<PrimarySession, { unsubscribe(): void }[]>();
  private storage: MeteredStorage | null = null;
  private secondary: MeteredSecondary | null = null;
  private connectsSeen = 0;

  private readonly bytesSent = this.counter('zrs_bytes_sent_total', 'Bytes written to replication connections (both roles, all peers).');
  private readonly bytesReceived = this.counter('zrs_bytes_received_total', 'Bytes read from replication connections (both roles, all peers).');
  private readonly txnsSent = this.counter('zrs_transactions_sent_total', 'Transactions sent to secondaries.');
  private readonly txnsReceived = this.counter('zrs_transactions_received_total', 'Transactions received from upstream and applied (secondary).');
  private readonly txnsCommitted = this.counter('zrs_transactions_committed_total', 'Transactions made durable in this storage (commits on a primary, applied on a secondary).');
  private readonly reconnects = this.counter('zrs_reconnects_total', 'Connection attempts to the upstream after the first (secondary).');
  private readonly connectionsAccepted = this.counter('zrs_secondary_connections_total', 'Secondary connections whose replication handshake was accepted (status, promote and pack requests are not counted).');

  constructor(private readonly clock: Clock) {
    const self = this;
    new OptionalGauge({
      name: 'zrs_last_transaction_timestamp_seconds',
      help: "Time of the storage's last committed transaction (its tid), seconds since the epoch; absent for an empty storage.",
      registers: [this.registry],
      value: () => (self.storage ? tidSeconds(self.storage.lastTransaction()) : null),
    });
    new Gauge({
      name: 'zrs_connected_secondaries',
      help: 'Secondaries connected to this node now.',
      registers: [this.registry],
      collect() {
        this.set(self.sessions.size);
      },
    });
    new Gauge({
      name: 'zrs_secondary_lag_seconds',
      labelNames: ['peer'] as const,
      help: "Primary side, per connected secondary: last committed tid's time minus the time of the tid the secondary acknowledged (before its first ack, where it started; zrs2 secondaries, which never ack, what was sent).",
      registers: [this.registry],
      collect() {
        this.reset();
        const last = self.storage ? tidSeconds(self.storage.lastTransaction()) : null;
        for (const s of self.sessions) {
          const st = s.status();
          // What was sent is no measure where acks say what is durable: a secondary that stops acking falls behind.
          const at = tidSeconds(st.ackedTid ?? (st.acks ? st.startTid : st.lastSentTid));
          if (last === null) this.set({ peer: st.peer }, 0);
          else if (at !== null) this.set({ peer: st.peer }, Math.max(0, last - at));
          else if (st.state === 'live' && !st.acks) this.set({ peer: st.peer }, 0);
        }
      },
    });
    new Gauge({
      name: 'zrs_secondary_bytes_sent',
      labelNames: ['peer'] as const,
      help: 'Primary side, per connected secondary: bytes sent on its current connection.',
      registers: [this.registry],
      collect() {
        this.reset();
        for (const s of self.sessions) {
          const st = s.status();
          this.set({ peer: st.peer }, st.bytesSent);
        }
      },
    });
    new OptionalGauge({
      name: 'zrs_replication_lag_seconds',
      help: "Secondary side: the upstream's last tid (from its latest heartbeat) minus the last applied tid, in seconds; absent until a heartbeat arrives, and while the secondary holds nothing.",
      registers: [this.registry],
      value: () => {
        const hb = self.secondary?.lastHeartbeat;
        return hb && self.storage ? lagSeconds(self.storage.lastTransaction(), hb.lastTid) : null;
      },
    });
    new OptionalGauge({
      name: 'zrs_heartbeat_age_seconds',
      help: "Secondary side: seconds since the upstream's latest heartbeat; absent until one arrives.",
      registers: [this.registry],
      value: () => {
        const hb = self.secondary?.lastHeartbeat;
        return hb ? Math.max(0, (self.clock.now() - hb.receivedMs) / 1000) : null;
      },
    });
    new Gauge({
      name: 'zrs_actor_state',
      labelNames: ['actor', 'state'] as const,
      help: 'Current state of each actor: 1 for the state it is in, 0 for the others. actor="connection" is a secondary\'s upstream connection, actor="session PEER" a connected secondary.',
      registers: [this.registry],
      collect() {
        this.reset();
        const sec = self.secondary;
        if (sec) {
          const current = topState((sec.machine.getSnapshot() as { value: unknown }).value);
          for (const state of CONNECTION_STATES) this.set({ actor: 'connection', state }, state === current ? 1 : 0);
        }
        for (const s of self.sessions) {
          const st = s.status();
          for (const state of SESSION_STATES) this.set({ actor: `session ${st.peer}`, state }, state === st.state ? 1 : 0);
        }
      },
    });
  }

  private counter(name: string, help: string): Counter {
    return new Counter({ name, help, registers: [this.registry] });
  }

  /** Where the bytes this registry's metered transports move are counted: itself, until handed over. */
  private bytesCountedBy: ReplicationMetrics = this;

  /**
   * Count the bytes of this registry's metered transports, streams already
   * open and listeners already bound included, in `next` from now on: a
   * promoted secondary's listener and sessions go on under the primary's
   * registry.
   */
  handBytesTo(next: ReplicationMetrics): void {
    this.bytesCountedBy = next;
  }

  /** The same transport, counting every byte written and read. */
  meter(transport: Transport): Transport {
    const wrap = (stream: ByteStream): ByteStream =>
      meteredStream(stream, (n) => this.bytesCountedBy.bytesSent.inc(n), (n) => this.bytesCountedBy.bytesReceived.inc(n));
    return {
      connect: async (address, signal) => wrap(await transport.connect(address, signal)),
      listen: (address, onStream, options) => transport.listen(address, (s) => onStream(wrap(s)), options),
    };
  }

  /** Follow the storage: last tid, commits. `received` counts them also as received from upstream. */
  watchStorage(storage: MeteredStorage, received = false): void {
    this.storage = storage;
    this.subscriptions.push(
      storage.commits$.subscribe(() => {
        this.txnsCommitted.inc();
        if (received) this.txnsReceived.inc();
      }),
    );
  }

  /** Follow a secondary's connection actor (states, reconnects) and heartbeats. */
  watchSecondary(secondary: MeteredSecondary): void {
    this.secondary = secondary;
    // Reconnects are connection attempts after the first (the machine counts attempts).
    const sub = secondary.machine.subscribe({
      next: (snap: { context?: { counters?: { connects?: number } } }) => {
        const connects = snap.context?.counters?.connects ?? 0;
        if (connects > this.connectsSeen) {
          this.reconnects.inc(Math.max(0, connects - 1) - Math.max(0, this.connectsSeen - 1));
          this.connectsSeen = connects;
        }
      },
      error: () => undefined, // the secondary logs it
    });
    this.subscriptions.push(sub);
  }

  /**
   * A session started (ReplicationServer's onSession hook). It counts as a
   * secondary once its handshake is accepted: status, promote and pack requests
   * on the same address are connections too, but not secondaries.
   */
  onSession(session: PrimarySession): void {
    const replicating = (state: unknown): void => {
      if (this.sessions.has(session) || !isReplicatingState(state)) return;
      this.sessions.add(session);
      this.connectionsAccepted.inc();
    };
    replicating(session.machine.getSnapshot().value); // a session kept through a promotion is already past it
    let sent = 0;
    this.sessionSubscriptions.set(session, [
      // An error observer of its own: xstate rethrows a failed actor's error while any observer lacks one (the session ends it).
      session.machine.subscribe({ next: (snap) => replicating(snap.value), error: () => undefined }),
      session.progress$.subscribe((p) => {
        if (p.sentTransactions > sent) this.txnsSent.inc(p.sentTransactions - sent);
        sent = p.sentTransactions;
      }),
    ]);
    session.done$.subscribe({
      complete: () => {
        this.sessions.delete(session);
        for (const s of this.sessionSubscriptions.get(session) ?? []) s.unsubscribe();
        this.sessionSubscriptions.delete(session);
      },
    });
  }

  /** The exposition text (Prometheus format). */
  metrics(): Promise<string> {
    return this.registry.metrics();
  }

  /** Stop following; the registry stays readable. */
  close(): void {
    for (const s of [...this.subscriptions, ...[...this.sessionSubscriptions.values()].flat()]) s.unsubscribe();
    this.subscriptions.length = 0;
    this.sessionSubscriptions.clear();
  }
}

/** A ByteStream that reports the size of every chunk written and delivered. */
function meteredStream(stream: ByteStream, sent: (n: number) => void, received: (n: number) => void): ByteStream {
  return {
    get peer() {
      return stream.peer;
    },
    get heldBytes() {
      return stream.heldBytes;
    },
    write(chunk) {
      sent(chunk.byteLength);
      return stream.write(chunk);
    },
    pause: () => stream.pause(),
    resume: () => stream.resume(),
    end: () => stream.end(),
    destroy: (error) => stream.destroy(error),
    setHandlers(handlers: ByteStreamHandlers) {
      stream.setHandlers({
        data: (chunk) => {
          received(chunk.byteLength);
          handlers.data(chunk);
        },
        drain: () => handlers.drain(),
        close: (error) => handlers.close(error),
      });
    },
  };
}
