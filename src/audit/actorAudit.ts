// Feeds the audit log from the actors: every state change of a primary
// session or of a secondary's connection actor, connections, disconnections
// and handshake verdicts. Observes snapshots only (no effects, no events
// sent), so auditing never changes what an actor does. Refusals are
// decisions (fsynced); the rest is batched. A flood of connections naming
// no replication protocol is counted rather than recorded one by one.

import type { ActorRefFrom } from 'xstate';
import type { SessionCloseReason } from '../../machines/primarySession.js';
import type { ConnectionFailure, SecondaryConnectionMachine } from '../../machines/secondaryConnection.js';
import { formatAddress } from '../replication/address.js';
import type { PrimarySession } from '../replication/primarySession.js';
import type { ReplicationAddress } from '../ports/transport.js';
import type { AuditLog } from './auditLog.js';
import { describeReason } from '../replication/primarySession.js';
import { BurstWindow, FloodWarning } from '../replication/log.js';
import { isReplicationProtocolName } from '../replication/protocols.js';

/** A state value as one readable string: `live`, `connected(link.replicating, keepAlive.ticking)`. */
export function stateName(value: unknown): string {
  if (typeof value === 'string') return value;
  if (value === null || typeof value !== 'object') return String(value);
  const entries = Object.entries(value as Record<string, unknown>);
  if (entries.length === 1) {
    const [k, v] = entries[0]!;
    const inner = stateName(v);
    return inner.startsWith('(') ? `${k}${inner}` : `${k}.${inner}`;
  }
  return `(${entries.map(([k, v]) => `${k}.${stateName(v)}`).join(', ')})`;
}

function describeClose(r: SessionCloseReason | null): string {
  return r === null ? 'unknown' : describeReason(r);
}

/** States before a session says what it is: a secondary, a status request or a promote request. */
const BEFORE_START = new Set(['awaitingProtocol', 'awaitingStart']);

/** Connections that never name a replication protocol, recorded one by one in each interval (see UnnamedConnections). */
export const AUDIT_UNNAMED_BURST = 50;
export const AUDIT_UNNAMED_INTERVAL_MS = 10_000;

/**
 * Connections to a replication address that end before naming a protocol
 * of this family (garbage, a port scanner, a client of another protocol)
 * are no replication peers, and each refusal is an fsynced record: in a
 * flood they would fill the audit log and load the node's disk. The first
 * `AUDIT_UNNAMED_BURST` of each interval are recorded as any session; the
 * rest are only counted, in `connections-unrecorded` records (count, the
 * last one's peer and reason): the first at once, then at most one per
 * interval, and what is still counted when the audit stops following the
 * server. Status requests are never recorded anyway.
 */
export class UnnamedConnections {
  private readonly window = new BurstWindow(AUDIT_UNNAMED_BURST, AUDIT_UNNAMED_INTERVAL_MS);
  private readonly counted: FloodWarning;
  private stopped = false;

  constructor(private readonly audit: AuditLog) {
    this.counted = new FloodWarning(audit.clock, AUDIT_UNNAMED_INTERVAL_MS, (count, lastPeer, fields) =>
      audit.note('connections-unrecorded', {
        count,
        reason: `more than ${AUDIT_UNNAMED_BURST} connections in ${AUDIT_UNNAMED_INTERVAL_MS / 1000} s that named no replication protocol`,
        lastPeer,
        lastReason: fields?.reason,
      }),
    );
  }

  /** Whether a connection that ended unnamed is recorded; if not, it is counted. */
  admit(peer: string, reason: string): boolean {
    if (this.stopped || this.window.take(this.audit.now())) return true;
    this.counted.note(peer, { reason });
    return false;
  }

  /** Write what is still counted, and record every later connection as any other. */
  stop(): void {
    this.stopped = true;
    this.counted.close();
  }
}

/**
 * Audit one primary session (on a primary or on a secondary serving a chain)
 * until it ends. A status request (`zrs status`, `zrs check`, a monitor
 * polling) changes nothing and is not recorded: its records are held until
 * the session says what it is, and dropped when it was one.
 */
export function auditPrimarySession(audit: AuditLog, session: PrimarySession, unnamed?: UnnamedConnections): void {
  const actor = session.machine;
  const peer = session.peer;
  let prev = stateName(actor.getSnapshot().value);
  // Held records keep the time they happened.
  let held: [string, Record<string, unknown>, number][] | null = BEFORE_START.has(prev) ? [] : null;
  const note = (kind: string, details: Record<string, unknown>): void => void (held ? held.push([kind, details, audit.now()]) : audit.note(kind, details));
  // A session already past its first frame was connected before this log followed it (kept through a promotion).
  note('connection', { actor: 'primarySession', peer, state: prev, ...(prev === 'awaitingProtocol' ? {} : { kept: true }) });
  const sub = actor.subscribe({
    next: (snap) => {
      const to = stateName(snap.value);
      if (to === prev) return;
      const from = prev;
      prev = to;
      const c = snap.context;
      if (held && !BEFORE_START.has(to)) {
        const records = held;
        held = null;
        if (to === 'closed' && c.closeReason?.kind === 'status-served') return;
        if (to === 'closed' && from === 'awaitingProtocol' && !isReplicationProtocolName(c.protocolName) && unnamed && !unnamed.admit(peer, describeClose(c.closeReason))) return;
        for (const [kind, details, atMs] of records) audit.note(kind, details, atMs);
      }
      // The edge's progress: the machine hears of writes and acks only at its transitions.
      const { lastSentTid, ackedTid } = session.status();
      note('transition', {
        actor: 'primarySession',
        peer,
        from,
        to,
        protocol: c.protocolName,
        lastSentTid,
        ackedTid,
      });
      if (from === 'awaitingStart' && (to === 'promoting' || to === 'packing')) {
        note('handshake', { side: 'primary', peer, verdict: to === 'promoting' ? 'promote-request' : 'pack-request', protocol: c.protocolName });
      } else if (from === 'awaitingStart' && to !== 'closed') {
        note('handshake', {
          side: 'primary',
          peer,
          verdict: c.protocol?.hasVerdict ? 'welcome' : 'accepted',
          protocol: c.protocolName,
          startTid: c.startTid,
        });
      }
      if (to !== 'closed') return;
      const reason = c.closeReason;
      if (reason?.kind === 'refused') {
        void audit
          .decide('handshake', {
            side: 'primary',
            peer,
            verdict: 'refused',
            code: reason.code,
            reason: reason.reason,
            forkTid: reason.forkTid,
            protocol: c.protocolName,
          })
          .catch(() => undefined);
      }
      note('disconnection', { actor: 'primarySession', peer, reason: describeClose(reason), kind: reason?.kind, lastSentTid, ackedTid });
    },
    complete: () => queueMicrotask(() => sub.unsubscribe()),
    error: () => undefined,
  });
}

/** What auditSecondaryConnection reads: the Secondary's connection actor. */
export interface AuditedSecondary {
  readonly machine: ActorRefFrom<SecondaryConnectionMachine>;
}

const topOf = (name: string): string => name.split(/[.(]/, 1)[0]!;

/** Audit a secondary's connection actor until it stops; returns a function that stops auditing. */
export function auditSecondaryConnection(audit: AuditLog, secondary: AuditedSecondary): () => void {
  const actor = secondary.machine;
  let prev = stateName(actor.getSnapshot().value);
  let prevAddress = formatAddress(actor.getSnapshot().context.address as ReplicationAddress);
  const sub = actor.subscribe({
    next: (snap) => {
      const to = stateName(snap.value);
      const c = snap.context;
      const address = formatAddress(c.address as ReplicationAddress);
      const leftAddress = prevAddress;
      prevAddress = address;
      if (to === prev) return;
      const from = prev;
      prev = to;
      const [fromTop, toTop] = [topOf(from), topOf(to)];
      const failure = c.lastError ? failureDetails(c.lastError) : null;
      audit.note('transition', {
        actor: 'secondaryConnection',
        address,
        from,
        to,
        lastAppliedTid: c.lastAppliedTid,
        ...(toTop === 'backoff' || toTop === 'diverged' || toTop === 'failed' ? { lastError: failure } : {}),
      });
      if (fromTop !== 'connected' && toTop === 'connected') audit.note('connection', { actor: 'secondaryConnection', address });
      if (from.includes('handshaking') && to.includes('replicating')) {
        audit.note('handshake', {
          side: 'secondary',
          address,
          verdict: c.protocol.hasVerdict ? 'welcome' : 'accepted',
          protocol: c.protocol.name,
          startTid: c.lastAppliedTid,
        });
      }
      if (from.includes('handshaking') && toTop !== 'connected' && c.lastError?.kind === 'refused') {
        void audit
          .decide('handshake', { side: 'secondary', address, verdict: 'refused', ...failure, protocol: c.protocol.name, startTid: c.lastAppliedTid })
          .catch(() => undefined);
      }
      // The address just left, even when SET_ADDRESS replaced it in the same step.
      if (fromTop === 'connected' && toTop !== 'connected') audit.note('disconnection', { actor: 'secondaryConnection', address: leftAddress, lastError: failure });
    },
    complete: () => queueMicrotask(() => sub.unsubscribe()),
    error: () => undefined,
  });
  return () => sub.unsubscribe();
}

function failureDetails(f: ConnectionFailure): Record<string, unknown> {
  const out: Record<string, unknown> = { kind: f.kind };
  for (const [k, v] of Object.entries(f)) {
    if (k === 'kind') continue;
    out[k] = v instanceof Error ? v.message : v;
  }
  return out;
}
