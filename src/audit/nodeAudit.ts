// Wiring of a node's audit log: where it lives by default (`<data file>.audit`),
// and which actors feed it (every session of a replication server, a
// secondary's connection actor). Kept apart from Primary and Secondary so
// both only call these helpers.

import { basename } from 'node:path';
import type { Clock } from '../ports/clock.js';
import type { Logger } from '../replication/log.js';
import type { ReplicationServer } from '../replication/server.js';
import { auditPrimarySession, auditSecondaryConnection, UnnamedConnections, type AuditedSecondary } from './actorAudit.js';
import { AuditLog } from './auditLog.js';

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

/** Open the node's audit log, or return null when it is turned off (`auditPath: null`). */
export async function openNodeAudit(o: NodeAuditOptions): Promise<AuditLog | null> {
  if (o.auditPath === null) return null;
  return AuditLog.open(o.auditPath ?? defaultAuditPath(o.dataPath), { node: o.node ?? basename(o.dataPath), clock: o.clock, log: o.log });
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
