// `zrs promote FILE|ADDRESS`: make a secondary the primary. ADDRESS: a
// running secondary's replication address; it is asked (native promote
// request) to stop replicating, start generation n + 1 and accept writes,
// keeping its downstream sessions. FILE: a stopped secondary's Data.fs; its
// generation n + 1 is started offline (the storage lock makes sure no server
// has it open), then `zrs serve` with a primary configuration serves it.
// Either way the promotion is recorded in the node's audit log.

import { basename } from 'node:path';
import { AuditLog, type AuditRecord } from '../audit/auditLog.js';
import { auditPast, defaultAuditPath, nodeAuditPaths, openAuditLog, promotionNotStarted, promotionRunAgain, promotionTakenBack, type GenerationsSeen } from '../audit/nodeAudit.js';
import { runEach, ZrsError } from '../errors.js';
import { FailoverHistory } from '../failover/history.js';
import { nextGeneration } from '../failover/promote.js';
import { systemClock } from '../node/clock.js';
import { formatAddress } from '../replication/address.js';
import { DEFAULT_PROMOTE_TIMEOUT_MS, requestPromotion } from '../replication/promoteClient.js';
import { FileStorage } from '../storage/FileStorage.js';
import { refuseEmptyStorage } from '../storage/fileio.js';
import { UsageError, type CommandSpec, type ParsedArgs } from './args.js';
import { EXIT_OK, type CliIo } from './io.js';
import { fileOrAddress, refuseAddressFlags, timeoutOption } from './status.js';
import { tlsClientFlags, tlsClientTransport } from './tlsClient.js';

export const promoteSpec: CommandSpec = {
  name: 'promote',
  positionals: ['FILE|ADDRESS'],
  flags: [
    { name: 'force', help: 'ADDRESS: promote even while the node is connected to a live primary, or diverged; FILE: promote even when its audit log says it diverged, or start another generation where the last one this node started begins at its last transaction (a promotion run twice)' },
    { name: 'timeout', value: 'SECS', help: `ADDRESS only: give up connecting, or waiting for the answer, after SECS seconds (default ${DEFAULT_PROMOTE_TIMEOUT_MS / 1000})` },
    { name: 'audit-log', value: 'PATH', help: 'FILE only: the audit log to record the promotion in (default FILE.audit; "off" for none)' },
    ...tlsClientFlags('ADDRESS only'),
  ],
  summary: 'Make a secondary the primary: a running one by its address, or a stopped one\'s Data.fs.',
  description: `
With ADDRESS (a running secondary's replicate-to: a port on 127.0.0.1,
host:port, [v6addr]:port or a Unix socket path), the node stops
replicating (a half-received transaction is discarded), starts generation
n + 1 at its last transaction, where n is the largest generation it ever
saw, and accepts writes as a primary on the same address; the secondaries
replicating from it stay connected. It refuses while it is still connected
to a live primary (stop that one first, or --force), when it is already
a primary, and, as with FILE, when it was promoted before and nothing was
written since (restarted with its secondary configuration). Prints the new generation and the tid it starts after; exit 0,
or 1 when refused or unreachable.

With FILE (an existing Data.fs of a stopped secondary), starts generation
n + 1 offline and writes FILE.generations; then serve FILE with a primary
configuration. Run again on a file whose last generation starts at its
last transaction and whose audit log records starting it (promoted,
nothing written since), it refuses rather than start another one, unless
--force. It also refuses, unless --force, a node whose audit log (the
one given, and FILE.audit) says its primary last refused it as diverged:
promoted, it would start a history beside that one; rewind it first.

Make sure the old primary is down first: without an external coordinator,
nothing stops two nodes promoted at once from both accepting writes.
Anyone who can connect to the replication address can promote the node
(configure <ssl> to restrict that to certificate holders).

examples:
  zrs promote 10.0.0.6:5000
  zrs promote /var/db/Data.fs && zrs serve primary.conf`,
};

export async function promote(args: ParsedArgs, io: CliIo): Promise<number> {
  const target = args.positionals[0]!;
  const address = await fileOrAddress(target);
  if (address === null) {
    refuseAddressFlags(args.flags);
    const audit = args.flags.get('audit-log');
    return promoteFile(target, io, typeof audit === 'string' ? (audit.toLowerCase() === 'off' ? null : audit) : undefined, args.flags.has('force'));
  }
  if (args.flags.has('audit-log')) throw new UsageError('--audit-log applies to a FILE; a running node records in its own audit log');
  const timeoutMs = timeoutOption(args.flags, DEFAULT_PROMOTE_TIMEOUT_MS);
  const reply = await requestPromotion(address, { force: args.flags.has('force'), timeoutMs, transport: tlsClientTransport(args.flags) });
  const g = reply.generation;
  await io.out(`promoted ${formatAddress(address)}: generation ${g.generation} starts after tid ${g.startTid.toString('hex')}; ${reply.sessionsKept} downstream session(s) kept\n`);
  return EXIT_OK;
}


/**
 * The record of the node's last handshake as a secondary, when its primary
 * refused it as diverged and no rewind or promotion came after: a rewind
 * recorded in one log answers a refusal recorded in another. A promotion
 * counts only when it happened: not taken back, and its generation started.
 */
function divergedIn(past: AuditRecord[], generations: GenerationsSeen): AuditRecord | null {
  const last = past.findLast(
    (r, i) =>
      (r.kind === 'handshake' && r.details.side === 'secondary') ||
      r.kind === 'rewind' ||
      (r.kind === 'promotion' && !promotionTakenBack(past, i) && promotionNotStarted(r, generations) === null),
  );
  return last?.kind === 'handshake' && last.details.verdict === 'refused' && last.details.code === 'diverged' ? last : null;
}

/** Offline: a new generation on a stopped storage, recorded in its audit log. */
export async function promoteFile(path: string, io: CliIo, auditPath?: string | null, force = false): Promise<number> {
  await refuseEmptyStorage(path);
  const storage = await FileStorage.open(path);
  try {
    const history = await FailoverHistory.open(storage, { role: 'secondary' });
    let audit: AuditLog | null = null;
    try {
      // Refused before the audit log is touched. The decision is on disk before the generation
      // starts: a log that cannot take it stops the promotion before it is made.
      const full = history.generations.fullAt(storage.lastTransaction());
      if (full !== null) throw new ZrsError(full);
      // A promotion run again (was the first one done?) would start another generation at the same tid. Only
      // when its audit log says this node started that generation: one it adopted from its primary (promoted,
      // then lost before writing anything) is this node's to promote now.
      const current = history.generations.current;
      const log = auditPath === null ? null : (auditPath ?? defaultAuditPath(path));
      // Where the node's past is read from: the log it records in, and its default one too (a promotion
      // recorded elsewhere, or in none, must not pass for one on a node with nothing against it).
      // Read once, and only when a refusal is possible.
      const past = force ? [] : await auditPast(nodeAuditPaths(path, log));
      const again = force ? null : await promotionRunAgain(path, current, storage.lastTransaction(), async () => past);
      if (again !== null) throw new ZrsError(`${again}; serve it as a primary, or --force for another generation`);
      // As online: a node its primary refused as diverged is promoted only when forced.
      const diverged = divergedIn(past, history.generations);
      if (diverged) {
        const by = typeof diverged.details.address === 'string' ? diverged.details.address : 'its primary';
        throw new ZrsError(
          `${path}: its audit log says ${by} refused it as diverged (${diverged.time}): promoted, it would start a history beside that one; rewind it first (zrs rewind --to-common-with ${by}), or --force`,
        );
      }
      if (log !== null) audit = await openAuditLog(log, { node: basename(path), continueNode: true, clock: systemClock }, history.generations);
      const previous = history.generations.current;
      const planned = nextGeneration(history, storage.lastTransaction());
      const requestedBy = 'zrs promote FILE';
      if (audit) {
        audit.generation = planned;
        await audit.decide('promotion', {
          previousRole: 'secondary',
          offline: true,
          previousGeneration: previous?.generation ?? null,
          newGeneration: planned.generation,
          startTid: planned.startTid,
          sessionsKept: 0,
          requestedBy,
        });
      }
      const entry = await history.startGeneration(storage.lastTransaction()).catch(async (err: unknown) => {
        if (audit) audit.generation = previous ?? null;
        await audit?.decide('promotion-refused', { code: 'failed', reason: (err as Error).message, requestedBy, force: false, afterRecord: true }).catch(() => undefined);
        throw err;
      });
      if (entry.generation !== planned.generation) throw new Error('bug: generation changed during promote');
      await io.out(`promoted ${path}: generation ${entry.generation} starts after tid ${entry.startTid.toString('hex')}\n`);
    } finally {
      await runEach([() => audit?.close(), () => history.close()]);
    }
  } finally {
    await storage.close();
  }
  return EXIT_OK;
}
