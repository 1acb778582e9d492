// `zrs audit FILE [FILE...]`: audit logs as one readable timeline (or, with
// --json, one JSON record per line). Several files (the nodes of a cluster)
// are merged by record time, each file's own order kept. Every record's
// checksum is verified; a damaged tail is reported with its offset and the
// command exits 1, after printing the records before it.

import { readAuditLog, type AuditReadResult, type AuditRecord } from '../audit/auditLog.js';
import type { CommandSpec } from './args.js';
import { EXIT_FAILURE, EXIT_OK, type CliIo } from './io.js';

export const auditSpec: CommandSpec = {
  name: 'audit',
  positionals: ['FILE'],
  repeatLast: true,
  flags: [{ name: 'json', help: 'print each record as one JSON line (with its file offset) instead of the timeline' }],
  summary: 'Print nodes\' audit logs (state transitions, handshakes, failover decisions) as one timeline.',
  description: `
FILE is an audit log, by default the data file's name plus ".audit"
(e.g. /var/db/Data.fs.audit). Each record's checksum is verified. Output:
one line per record, in the order written: time, sequence number, node,
kind and what happened. With several files (copied from the nodes of a
cluster), their records are merged by time into one timeline; each file's
own order is kept, and with --json each record also names its file.
Exits 0 when every file is intact; when a record is truncated or fails its
checksum, prints the records before it, then the offset of the damage,
and exits 1.

examples:
  zrs audit /var/db/Data.fs.audit
  zrs audit db1/Data.fs.audit db2/Data.fs.audit
  zrs audit --json /var/db/Data.fs.audit | jq 'select(.kind == "handshake")'`,
};

/** Flush to stdout once this many characters are buffered. */
const FLUSH_CHARS = 64 * 1024;

export async function audit(paths: string | readonly string[], io: CliIo, json: boolean): Promise<number> {
  const files = typeof paths === 'string' ? [paths] : paths;
  const results: AuditReadResult[] = [];
  for (const path of files) results.push(await readAuditLog(path));
  let buf = '';
  for (const { record, file } of mergeByTime(results)) {
    buf += `${json ? JSON.stringify(files.length > 1 ? { file, ...record } : record) : timelineLine(record)}\n`;
    if (buf.length >= FLUSH_CHARS) {
      await io.out(buf);
      buf = '';
    }
  }
  if (buf) await io.out(buf);
  let code = EXIT_OK;
  for (const result of results) {
    if (result.size === 0) {
      // A node writes the header as it creates a log: an empty file is not one (yet).
      io.err(`zrs audit: ${result.path}: empty: not an audit log (no header)\n`);
      code = EXIT_FAILURE;
    }
    for (const d of result.damages) {
      const before = result.records.filter((r) => r.offset < d.offset).length;
      const extent =
        d.offset + d.bytes === result.size
          ? `${d.bytes} bytes from there not read; ${before} intact records before it`
          : `${d.bytes} bytes skipped; ${before} intact records before it, ${result.records.length - before} after`;
      io.err(`zrs audit: ${result.path}: damaged at offset ${d.offset}: ${d.reason} (${extent})\n`);
      code = EXIT_FAILURE;
    }
  }
  return code;
}

/**
 * The records of several logs in one sequence: always the earliest next
 * record of any file (ties: the file given first), so each file's own order
 * is kept even if its clock stepped back.
 */
export function* mergeByTime(results: readonly AuditReadResult[]): Generator<{ record: AuditRecord; file: string }> {
  const next = results.map(() => 0);
  for (;;) {
    let best = -1;
    for (let i = 0; i < results.length; i++) {
      const r = results[i]!.records[next[i]!];
      if (r && (best < 0 || r.timeMs < results[best]!.records[next[best]!]!.timeMs)) best = i;
    }
    if (best < 0) return;
    yield { record: results[best]!.records[next[best]!]!, file: results[best]!.path };
    next[best]! += 1;
  }
}

/** One record as a line of the timeline. */
export function timelineLine(r: AuditRecord): string {
  const g = r.generation as { generation?: unknown } | null | undefined;
  const gen = g && typeof g === 'object' && g.generation !== undefined ? ` gen ${String(g.generation)}` : '';
  return `${r.time}  #${r.seq}  ${r.node}${gen}  ${r.kind.padEnd(13)}  ${summary(r)}`;
}

function summary(r: AuditRecord): string {
  const d = r.details;
  const who = str(d.peer ?? d.address);
  const rest = (...skip: string[]): string => pairs(d, skip);
  switch (r.kind) {
    case 'transition': {
      const err = d.lastError as { kind?: unknown; reason?: unknown; code?: unknown } | undefined | null;
      const why = err ? ` (${[err.kind, err.code, err.reason].filter((x) => x !== undefined && x !== null).map(String).join(': ')})` : '';
      return `${str(d.actor)} ${who}: ${str(d.from)} -> ${str(d.to)}${why}`;
    }
    case 'connection':
      return d.kept ? `${str(d.actor)} ${who} still connected (${str(d.state)}), kept` : `${str(d.actor)} ${who} connected`;
    case 'disconnection': {
      const err = d.lastError as { kind?: unknown; error?: unknown } | undefined | null;
      if (d.reason === undefined && err) return `${str(d.actor)} ${who} connection lost: ${str(err.kind)}${err.error ? `: ${str(err.error)}` : ''}`;
      return `${str(d.actor)} ${who} disconnected: ${str(d.reason ?? err?.kind ?? 'closed')}`;
    }
    case 'handshake':
      if (d.verdict === 'promote-request') return `${str(d.side)} ${who}: promote request${d.force ? ' (forced)' : ''}`;
      if (d.verdict === 'pack-request') return `${str(d.side)} ${who}: pack request`;
      return d.verdict === 'refused'
        ? `${str(d.side)} ${who}: REFUSED (${str(d.code)}): ${str(d.reason)}${d.forkTid && !str(d.reason).includes(str(d.forkTid)) ? ` fork at ${str(d.forkTid)}` : ''}${d.primaryLastTid ? `; primary's last tid ${str(d.primaryLastTid)}` : ''}`
        : `${str(d.side)} ${who}: ${str(d.verdict)} ${str(d.protocol)} from tid ${str(d.startTid)}`;
    case 'promotion': {
      if (d.newGeneration === undefined) return `PROMOTED to primary at ${str(d.address)}`;
      const by = d.offline ? 'offline' : `requested by ${str(d.requestedBy)}${d.forced ? ', forced' : ''}`;
      const from = d.previousUpstream ? ` (was replicating from ${str(d.previousUpstream)})` : '';
      return `PROMOTED ${str(d.previousRole)} -> primary${from}: generation ${str(d.newGeneration)} starts after tid ${str(d.startTid)}; ${str(d.sessionsKept)} downstream session(s) kept; ${by}`;
    }
    case 'promotion-refused':
      // A promotion recorded that failed later (or never started its generation) is taken back, not refused.
      return `promotion ${d.afterRecord === true || d.afterDetach === true ? 'TAKEN BACK' : 'REFUSED'} (${str(d.code)}): ${str(d.reason)}; requested by ${str(d.requestedBy)}`;
    case 'rewind': {
      const dropped = Array.isArray(d.generationsDropped)
        ? `; dropped generation(s) ${(d.generationsDropped as Array<Record<string, unknown>>).map((g) => `${str(g.generation)} (from tid ${str(g.startTid)})`).join(', ')}`
        : '';
      // `commonWith` is the primary asked, or 'tid' for a tid given (zrs rewind --to-tid).
      const given = d.commonWith === 'tid';
      return Number(d.transactionsCut) === 0
        ? given
          ? `REWIND: nothing to cut after the given tid ${str(d.forkTid)}${dropped}`
          : `REWIND: nothing to cut, shares its history with ${str(d.commonWith)} up to tid ${str(d.forkTid)}${dropped}`
        : `REWOUND to tid ${str(d.forkTid)} (${given ? 'given' : `common with ${str(d.commonWith)}`}): ${str(d.transactionsCut)} transaction(s) cut, ${str(d.firstCutTid)} .. ${str(d.lastCutTid)}, ${str(d.blobsCut)} blob file(s)${d.blobsMissing ? ` (${str(d.blobsMissing)} already missing)` : ''}; saved in ${str(d.sidePath)}${dropped}`;
    }
    case 'pack': {
      const asked = `to ${str(d.time)}${d.gc === false ? ', without garbage collection' : ''}; requested by ${str(d.requestedBy)}`;
      if (d.outcome === 'packed') return `PACKED ${asked}: tid ${str(d.packTid)}, ${str(d.sizeBefore)} -> ${str(d.sizeAfter)} bytes, ${str(d.removedBlobFiles)} blob file(s) removed`;
      if (d.outcome === 'unchanged') return `pack ${asked}: nothing to remove up to tid ${str(d.packTid)}`;
      return `pack ${str(d.outcome).toUpperCase()} ${asked}: ${str(d.reason)}`;
    }
    case 'sync-timeout':
      return `SYNC TIMEOUT tid ${str(d.tid)}: ${str(d.got)} of ${str(d.wanted)} acks within ${str(d.timeoutMs)} ms (committed on the primary)`;
    case 'config':
      return `${str(d.change)} ${rest('change')}`.trim();
    case 'connections-unrecorded':
      return `${str(d.count)} more connection(s) not recorded one by one (${str(d.reason)}); the last from ${str(d.lastPeer)}: ${str(d.lastReason)}`;
    default:
      return rest();
  }
}

function pairs(d: Record<string, unknown>, skip: string[]): string {
  return Object.entries(d)
    .filter(([k, v]) => !skip.includes(k) && v !== null && v !== undefined)
    .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
    .join(' ');
}

function str(v: unknown): string {
  if (v === undefined || v === null) return '-';
  return typeof v === 'string' ? v : JSON.stringify(v);
}
