// `zrs audit FILE`: an audit log as a readable timeline (or, with --json,
// one JSON record per line). Every record's checksum is verified; a damaged
// tail is reported with its offset and the command exits 1, after printing
// the records before it.

import { readAuditLog, type AuditRecord } from '../audit/auditLog.js';
import type { CommandSpec } from './args.js';
import { EXIT_FAILURE, EXIT_OK, type CliIo } from './io.js';

export const auditSpec: CommandSpec = {
  name: 'audit',
  positionals: ['FILE'],
  flags: [{ name: 'json', help: 'print each record as one JSON line (with its file offset) instead of the timeline' }],
  summary: 'Print a node\'s audit log (state transitions, handshakes, failover decisions) as a timeline.',
  description: `
FILE is an audit log, by default the data file's name plus ".audit"
(e.g. /var/db/Data.fs.audit). Each record's checksum is verified. Output:
one line per record, in the order written: time, sequence number, node,
kind and what happened. Exits 0 when the whole file is intact; when a
record is truncated or fails its checksum, prints the records before it,
then the offset of the damage, and exits 1.

examples:
  zrs audit /var/db/Data.fs.audit
  zrs audit --json /var/db/Data.fs.audit | jq 'select(.kind == "handshake")'`,
};

/** Flush to stdout once this many characters are buffered. */
const FLUSH_CHARS = 64 * 1024;

export async function audit(path: string, io: CliIo, json: boolean): Promise<number> {
  const result = await readAuditLog(path);
  let buf = '';
  for (const r of result.records) {
    buf += `${json ? JSON.stringify(r) : timelineLine(r)}\n`;
    if (buf.length >= FLUSH_CHARS) {
      await io.out(buf);
      buf = '';
    }
  }
  if (buf) await io.out(buf);
  const d = result.damage;
  if (d) {
    io.err(`zrs audit: ${path}: damaged at offset ${d.offset}: ${d.reason} (${d.bytes} bytes from there not read; ${result.records.length} intact records before it)\n`);
    return EXIT_FAILURE;
  }
  return EXIT_OK;
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
      return `${str(d.actor)} ${who} connected`;
    case 'disconnection': {
      const err = d.lastError as { kind?: unknown } | undefined | null;
      return `${str(d.actor)} ${who} disconnected: ${str(d.reason ?? err?.kind ?? 'closed')}`;
    }
    case 'handshake':
      return d.verdict === 'refused'
        ? `${str(d.side)} ${who}: REFUSED (${str(d.code)}): ${str(d.reason)}${d.forkTid ? ` fork at ${str(d.forkTid)}` : ''}`
        : `${str(d.side)} ${who}: ${str(d.verdict)} ${str(d.protocol)} from tid ${str(d.startTid)}`;
    case 'sync-timeout':
      return `SYNC TIMEOUT tid ${str(d.tid)}: ${str(d.got)} of ${str(d.wanted)} acks within ${str(d.timeoutMs)} ms (committed on the primary)`;
    case 'config':
      return `${str(d.change)} ${rest('change')}`.trim();
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
