// A node's answer to a pack request on its replication address (`zrs pack
// ADDRESS`): it packs its own data file, as Primary.storage.pack or
// Secondary.pack would, logs the outcome and records it in its audit log.
// The request's session sends progress meanwhile (primarySession.ts).

import type { AuditLog } from '../audit/auditLog.js';
import { GarbageCollectionError, PackTimeError, type PackOptions, type PackReport, type ReferencesOf } from '../storage/pack.js';
import { zodbReferences } from '../storage/references.js';
import type { Logger } from './log.js';
import type { PackHandler } from './server.js';

/** What a node lends its pack handler. */
export interface PackTarget {
  pack(packTime: number, referencesOf: ReferencesOf | undefined, options: PackOptions): Promise<PackReport>;
  audit: () => AuditLog | null;
  log: Logger;
}

/**
 * The handler a node gives its replication server for pack requests. The
 * answer's code says why a pack did not happen: `refused` for a pack time
 * no tid names, `gc-refused` for what garbage collection refused, `failed`
 * for anything else (a pack under way already, a rewind, the node closing).
 *
 * @example
 * const pack = packOnRequest({ pack: (t, refs, o) => storage.pack(t, refs, o), audit: () => audit, log });
 */
export function packOnRequest(target: PackTarget): PackHandler {
  return async ({ time, gc, peer, onProgress }) => {
    // The time asked for as a date, or as seconds when no date names it.
    const when = Number.isFinite(new Date(time * 1000).getTime()) ? new Date(time * 1000).toISOString() : time;
    const asked = { requestedBy: peer, time: when, gc };
    const record = async (details: Record<string, unknown>): Promise<void> => {
      const audit = target.audit();
      if (!audit) return;
      await audit.decide('pack', { ...asked, ...details }).catch((err: unknown) => target.log('warn', `pack requested by ${peer}: not recorded in the audit log: ${(err as Error).message}`, { peer }));
    };
    target.log('info', `pack requested by ${peer}: to ${when}${gc ? '' : ', without garbage collection'}`, { peer, gc });
    let report: PackReport;
    try {
      report = await target.pack(time, gc ? zodbReferences : undefined, { onProgress });
    } catch (err) {
      const reason = err instanceof Error ? err.message : String(err);
      const code = err instanceof PackTimeError ? 'refused' : err instanceof GarbageCollectionError ? 'gc-refused' : 'failed';
      target.log(code === 'failed' ? 'error' : 'warn', `pack requested by ${peer} not carried out (${code}): ${reason}`, { peer });
      await record({ outcome: code, reason });
      return { kind: 'refused', code, reason };
    }
    const { packed, packTid, sizeBefore, sizeAfter, removedBlobFiles, blobFilesNotRemoved, blobRemovalError } = report;
    const done = packed ? `packed to tid ${packTid.toString('hex')}: ${sizeBefore} -> ${sizeAfter} bytes` : `nothing to remove up to tid ${packTid.toString('hex')}`;
    const orphans = blobFilesNotRemoved > 0 ? `; ${blobFilesNotRemoved} blob file(s) of removed revisions could not be deleted (${blobRemovalError})` : '';
    target.log(orphans ? 'warn' : 'info', `pack requested by ${peer}: ${done}${orphans}`, { peer });
    await record({ outcome: packed ? 'packed' : 'unchanged', packTid: packTid.toString('hex'), sizeBefore, sizeAfter, removedBlobFiles, blobFilesNotRemoved });
    return { kind: 'packed', report };
  };
}
