// A node's answer to a pack request on its replication address (`zrs pack
// ADDRESS`): it packs its own data file, as Primary.storage.pack or
// Secondary.pack would, logs the outcome and records it in its audit log.
// The request's session sends progress meanwhile (primarySession.ts).

import type { PackOutcome } from '../../machines/primarySession.js';
import type { AuditLog } from '../audit/auditLog.js';
import { GarbageCollectionError, isPackTimeInRange, PACK_TIME_RANGE, type PackOptions, type PackReport, type ReferencesOf } from '../storage/pack.js';
import { zodbReferences } from '../storage/references.js';
import type { PackBlobFiles } from '../wire/native.js';
import type { Logger } from './log.js';
import type { PackHandler } from './server.js';

/** What a node lends its pack handler. */
export interface PackTarget {
  pack(packTime: number, referencesOf: ReferencesOf | undefined, options: PackOptions): Promise<PackReport>;
  /** What the node's pack does with the blob files of removed revisions. */
  blobFiles: PackBlobFiles;
  audit: () => AuditLog | null;
  log: Logger;
}

/**
 * The handler a node gives its replication server for pack requests. A pack
 * time no tid can name is refused (`refused`) before anything starts; a pack
 * that throws (one under way already, a rewind, the node closing, a record
 * garbage collection cannot read) is answered `failed` with the error.
 *
 * @example
 * const pack = packOnRequest({ pack: (t, refs, o) => storage.pack(t, refs, o), blobFiles: 'deleted', audit: () => audit, log });
 */
export function packOnRequest(target: PackTarget): PackHandler {
  return async ({ time, gc, peer, onProgress }) => {
    if (!isPackTimeInRange(time)) {
      const reason = `pack time ${time} is outside the times transactions have (${PACK_TIME_RANGE})`;
      // Seconds as given: no date names them.
      await target.audit()?.decide('pack', { requestedBy: peer, time, gc, outcome: 'refused', reason }).catch(() => undefined);
      return { kind: 'refused', code: 'refused', reason };
    }
    const asked = { requestedBy: peer, time: new Date(time * 1000).toISOString(), gc };
    target.log('info', `pack requested by ${peer}: to ${asked.time}${gc ? '' : ', without garbage collection'}`, { peer, gc });
    let report: PackReport;
    try {
      report = await target.pack(time, gc ? zodbReferences : undefined, { onProgress, keepBlobFiles: target.blobFiles === 'kept' });
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      const reason = err instanceof GarbageCollectionError ? `${message}; nothing was packed (a pack without garbage collection reads no references: zrs pack --no-gc)` : message;
      target.log('error', `pack requested by ${peer} failed: ${reason}`, { peer });
      await target.audit()?.decide('pack', { ...asked, outcome: 'failed', reason }).catch(() => undefined);
      return { kind: 'refused', code: 'failed', reason };
    }
    const { packed, packTid, sizeBefore, sizeAfter, tailTransactions, removedBlobFiles, blobFilesNotRemoved, blobRemovalError } = report;
    const done = packed ? `packed to tid ${packTid.toString('hex')}: ${sizeBefore} -> ${sizeAfter} bytes` : `nothing to remove up to tid ${packTid.toString('hex')}`;
    target.log(blobFilesNotRemoved > 0 ? 'warn' : 'info', `pack requested by ${peer}: ${done}${blobFilesNotRemoved > 0 ? `; ${blobFilesNotRemoved} blob file(s) of removed revisions could not be deleted (${blobRemovalError})` : ''}`, {
      peer,
    });
    await target
      .audit()
      ?.decide('pack', { ...asked, outcome: packed ? 'packed' : 'unchanged', packTid: packTid.toString('hex'), sizeBefore, sizeAfter, removedBlobFiles, blobFilesNotRemoved })
      .catch(() => undefined);
    const outcome: PackOutcome = {
      kind: 'packed',
      report: { packed, packTid, sizeBefore, sizeAfter, tailTransactions, blobFiles: target.blobFiles, removedBlobFiles, blobFilesNotRemoved, blobRemovalError },
    };
    return outcome;
  };
}
