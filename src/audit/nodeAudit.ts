// Wiring of a node's audit log: where it lives by default (`<data file>.audit`),
// and which actors feed it (every session of a replication server, a
// secondary's connection actor). Kept apart from Primary and Secondary so
// both only call these helpers.

import { basename } from 'node:path';
import type { Clock } from '../ports/clock.js';
import type { Logger } from '../replication/log.js';
import type { ReplicationServer } from '../replication/server.js';
import { auditPrimarySession, auditSecondaryConnection, UnnamedConnections, type AuditedSecondary } from './actorAudit.js';
import { pathKind } from '../storage/fileio.js';
import { AuditLog, readAuditLog, type AuditLogOptions, type AuditRecord } from './auditLog.js';
import type { GenerationEntry } from '../wire/native.js';

export interface NodeAuditOptions {
  /** The node's data file; the audit log defaults to `<dataPath>.audit`. */
  dataPath: string;
  /** Another path, or null for no audit log. */
  auditPath?: string | null;
  /** Node name in records (default: the data file's base name). */
  node?: string | null;
  clock: Clock;
  log: Logger;
}

/** The audit log path a node uses. */
export function defaultAuditPath(dataPath: string): string {
  return `${dataPath}.audit`;
}

/** The audit logs that say what a node did: the one it records in (`auditPath`, null for none), and its default one. */
export function nodeAuditPaths(dataPath: string, auditPath: string | null | undefined): string[] {
  return [...new Set([auditPath === null ? null : (auditPath ?? defaultAuditPath(dataPath)), defaultAuditPath(dataPath)].filter((l): l is string => l !== null))];
}

/**
 * What a node's audit logs say of its past: the records of the logs at
 * `paths` (its own, and its default one when it records elsewhere), in time
 * order. A missing or unreadable log says nothing.
 */
export async function auditPast(paths: readonly string[]): Promise<AuditRecord[]> {
  const records: AuditRecord[] = [];
  for (const path of new Set(paths)) {
    if ((await pathKind(path)) !== 'file') continue;
    records.push(...(await readAuditLog(path).catch(() => ({ records: [] as AuditRecord[] }))).records);
  }
  return records.sort((a, b) => a.timeMs - b.timeMs);
}

/**
 * A record that a promotion failed late: after its own record was written
 * (`zrs promote FILE`), or after the secondary stopped replicating (online),
 * when its record may have been written already.
 */
export function promotionFailedLate(r: AuditRecord): boolean {
  return r.kind === 'promotion-refused' && (r.details.afterRecord === true || r.details.afterDetach === true);
}

/**
 * Whether `past` records this node starting `generation` at `startTid` (a
 * promotion), not adopting it from a primary: its last such promotion did
 * not fail (the record of a failure after it comes next, before the node
 * opened again or promoted again) and no rewind came after it.
 */
function promotedTo(past: readonly AuditRecord[], generation: number, startTid: Buffer): boolean {
  const tid = startTid.toString('hex');
  const at = past.findLastIndex((r) => r.kind === 'promotion' && r.details.newGeneration === generation && r.details.startTid === tid);
  return at >= 0 && !promotionTakenBack(past, at) && !past.slice(at + 1).some((r) => r.kind === 'rewind');
}

/**
 * Whether the promotion at `past[at]` is taken back: the record of its
 * failure comes next, before the node opened again or promoted again.
 */
export function promotionTakenBack(past: readonly AuditRecord[], at: number): boolean {
  const next = past.slice(at + 1).find((r) => r.kind === 'config' || r.kind === 'promotion' || promotionFailedLate(r));
  return next !== undefined && promotionFailedLate(next);
}

/** A node's generation history as the audit rules read it (a GenerationHistory). */
export interface GenerationsSeen {
  readonly list: readonly GenerationEntry[];
  /** The largest generation number the node ever saw: a generation it started raised it, and no cut lowers it. */
  readonly maxSeen: number;
}

/**
 * The refusal of a promotion run again: the node's current generation starts
 * at its last transaction and its audit log says it started it (promoted,
 * nothing written since), so another promotion would start a second
 * generation at the same tid; null when that is not the case.
 */
export async function promotionRunAgain(
  what: string,
  current: { generation: number; startTid: Buffer } | null,
  lastTid: Buffer,
  /** The node's past (auditPast), asked for only when the generation starts at the last transaction. */
  past: () => Promise<readonly AuditRecord[]>,
): Promise<string | null> {
  if (!current || current.generation === 0 || !current.startTid.equals(lastTid) || !promotedTo(await past(), current.generation, current.startTid)) return null;
  return `${what}: generation ${current.generation} already starts after its last transaction (tid ${current.startTid.toString('hex')}), and its audit log says this node started it: it was promoted and nothing was written since`;
}

/**
 * Open the audit log at `path` for a node whose generation history is
 * `generations`. A promotion it records that never started its generation
 * (the process stopped between the record and the start: the record is
 * written first, so a log that cannot take it stops the promotion) is taken
 * back first by a `promotion-refused` record (code `not-started`,
 * `afterRecord`), as a promotion that fails late is: the log then says
 * what the node did. Judged by the last promotion not already taken back
 * nor followed by a rewind.
 */
export async function openAuditLog(path: string, options: AuditLogOptions, generations: GenerationsSeen): Promise<AuditLog> {
  // The last promotion read, unless a record taking it back or a rewind came after it.
  const last: { promotion: AuditRecord | null } = { promotion: null };
  const onRecord = (r: AuditRecord): void => {
    if (r.kind === 'promotion') last.promotion = r;
    else if (r.kind === 'rewind' || promotionFailedLate(r)) last.promotion = null;
  };
  const audit = await AuditLog.open(path, { ...options, onRecord });
  const stopped = last.promotion;
  const notStarted = stopped === null ? null : promotionNotStarted(stopped, generations);
  if (stopped !== null && notStarted !== null) {
    const { requestedBy, forced } = stopped.details;
    // Recorded in the generation the node is in (the promotion's never began).
    audit.generation = generations.list.at(-1) ?? null;
    // A log that cannot take it reports that itself, and refuses every later decision.
    await audit.decide('promotion-refused', { code: 'not-started', reason: notStarted, afterRecord: true, requestedBy, force: forced === true }).catch(() => undefined);
  }
  return audit;
}

/**
 * Why the promotion `r` recorded did not start its generation, or null when
 * it did or cannot be told: the generation is not in the node's history and
 * above every generation the node has seen (a generation started raises
 * that, and a rewind that cuts it does not lower it).
 */
export function promotionNotStarted(r: AuditRecord, generations: GenerationsSeen): string | null {
  const { newGeneration, startTid } = r.details;
  if (typeof newGeneration !== 'number' || typeof startTid !== 'string' || newGeneration <= generations.maxSeen) return null;
  if (generations.list.some((g) => g.generation === newGeneration && g.startTid.toString('hex') === startTid)) return null;
  return `the promotion recorded at ${r.time} (seq ${r.seq}) did not start generation ${newGeneration} after tid ${startTid}: the node's generation history has never held it (a process stopped between the record and the start leaves it so, and so does a generations file restored from before the promotion)`;
}

/**
 * Open the node's audit log, or return null when it is turned off (`auditPath: null`). With the node's
 * `generations`, a promotion that never started is taken back first (see openAuditLog).
 */
export async function openNodeAudit(o: NodeAuditOptions, generations?: GenerationsSeen): Promise<AuditLog | null> {
  if (o.auditPath === null) return null;
  const path = o.auditPath ?? defaultAuditPath(o.dataPath);
  const options = { node: o.node ?? basename(o.dataPath), clock: o.clock, log: o.log };
  return generations ? openAuditLog(path, options, generations) : AuditLog.open(path, options);
}

/** Audit every session of `server`, open ones included; returns a function that stops (sessions already followed stay followed). */
export function auditServerSessions(audit: AuditLog, server: ReplicationServer): () => void {
  const unnamed = new UnnamedConnections(audit);
  const stop = server.watchSessions((session) => auditPrimarySession(audit, session, unnamed));
  return () => {
    stop();
    unnamed.stop();
  };
}

/** Audit a secondary's connection actor. */
export function auditSecondary(audit: AuditLog, secondary: AuditedSecondary): () => void {
  return auditSecondaryConnection(audit, secondary);
}
