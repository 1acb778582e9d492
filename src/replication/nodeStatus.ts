// What a node says about itself, built from its storage, its serving
// sessions and (for a secondary) its upstream connection. The same object is
// returned by Primary.status() / Secondary.status() and sent as the native
// `status` message, so the API and the wire agree. Pure: no I/O.

import { tidToSeconds } from '../storage/timestamp.js';
import {
  MAX_STATUS_SESSIONS,
  MAX_STATUS_TEXT_CHARS,
  type GenerationEntry,
  type NodeStatus,
  type SessionStatusEntry,
  type StatusHeartbeat,
  type UpstreamStatus,
} from '../wire/native.js';

export type { NodeStatus, SessionStatusEntry, StatusHeartbeat, UpstreamStatus };

const Z64 = Buffer.alloc(8);

/** Seconds since the epoch in `tid`, or null for none or the empty storage's 8 zero bytes. */
export function tidSeconds(tid: Buffer | null): number | null {
  return tid === null || tid.equals(Z64) ? null : tidToSeconds(tid);
}

/** What the storage contributes. */
export interface StorageFacts {
  /** Last durable tid. */
  readonly lastDurableTid: Buffer;
  /** End of the durable part of the file, in bytes. */
  readonly durableEnd: number;
}

export interface NodeStatusInput {
  role: 'primary' | 'secondary';
  name: string | null;
  storage: StorageFacts;
  nowMs: number;
  sessions: readonly SessionStatusEntry[];
  upstream?: UpstreamStatus | null;
  generation?: GenerationEntry | null;
}

const clip = (text: string): string => (text.length > MAX_STATUS_TEXT_CHARS ? text.slice(0, MAX_STATUS_TEXT_CHARS) : text);

/**
 * Assemble a node's status; lists at most MAX_STATUS_SESSIONS sessions.
 * @example buildNodeStatus({ role: 'primary', name: null, storage, nowMs: clock.now(), sessions: server.status() })
 */
export function buildNodeStatus(input: NodeStatusInput): NodeStatus {
  const lastTid = Buffer.from(input.storage.lastDurableTid);
  const status: NodeStatus = {
    role: input.role,
    name: input.name === null ? null : clip(input.name),
    lastTid,
    lastTimeSeconds: tidSeconds(lastTid),
    fileSize: input.storage.durableEnd,
    clockMs: Math.max(0, input.nowMs),
    upstream: input.upstream ?? null,
    sessions: input.sessions.slice(0, MAX_STATUS_SESSIONS).map((s) => ({
      peer: clip(s.peer),
      protocol: s.protocol === null ? null : clip(s.protocol),
      state: clip(s.state),
      lastSentTid: s.lastSentTid,
      ackedTid: s.ackedTid,
      startTid: s.startTid,
      bytesSent: s.bytesSent,
    })),
    sessionCount: input.sessions.length,
  };
  if (input.generation) status.generation = input.generation;
  return status;
}

/**
 * A secondary's lag estimate: the time of the newest tid its upstream
 * announced minus the time of its own last tid, in seconds, never negative;
 * null when the upstream announced nothing yet, or the secondary holds nothing.
 */
export function lagSeconds(ownLastTid: Buffer, upstreamLastTid: Buffer | null): number | null {
  if (upstreamLastTid === null) return null;
  if (Buffer.compare(upstreamLastTid, ownLastTid) <= 0) return 0;
  const own = tidSeconds(ownLastTid);
  const theirs = tidSeconds(upstreamLastTid) ?? 0;
  // An empty secondary has no time of its own to measure a lag in seconds from: unknown.
  return own === null ? null : Math.max(0, theirs - own);
}

/**
 * A machine state value as one string: `live`, or for nested states the
 * path of the first region, e.g. `{ connected: { link: 'replicating', … } }`
 * gives `connected.replicating`.
 */
export function stateName(value: unknown): string {
  if (typeof value === 'string') return value;
  if (value === null || typeof value !== 'object') return String(value);
  const [top, inner] = Object.entries(value as Record<string, unknown>)[0] ?? ['?', null];
  if (inner !== null && typeof inner === 'object') {
    const regions = inner as Record<string, unknown>;
    // A parallel state: name the region that says the most (the link), else the first one.
    const child = 'link' in regions ? regions.link : Object.values(regions)[0];
    return `${top}.${stateName(child)}`;
  }
  return typeof inner === 'string' ? `${top}.${inner}` : top;
}
