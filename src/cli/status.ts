// `zrs status ADDRESS`: ask a running primary or secondary for its status
// over the native status request (no replication) and print it, readable or
// as JSON. Exit 0, or 2 when the node cannot be asked.

import { connectAddress, formatAddress } from '../replication/address.js';
import { tidSeconds, type NodeStatus, type SessionStatusEntry } from '../replication/nodeStatus.js';
import { DEFAULT_STATUS_TIMEOUT_MS, requestStatus, StatusConnectError, StatusReplyError } from '../replication/statusClient.js';
import { tidToString } from '../storage/timestamp.js';
import { stat } from 'node:fs/promises';
import { AddressError, ZrsError } from '../errors.js';
import { pathKind } from '../storage/fileio.js';
import type { ReplicationAddress, Transport } from '../ports/transport.js';
import { UsageError, type CommandSpec } from './args.js';
import { EXIT_OK, type CliIo } from './io.js';
import { printable } from './logging.js';
import { TLS_CLIENT_FLAGS, tlsClientTransport } from './tlsClient.js';

/** Exit code when the node could not be asked (as `zrs check`'s CRITICAL). */
export const EXIT_UNREACHABLE = 2;

export const statusSpec: CommandSpec = {
  name: 'status',
  positionals: ['ADDRESS'],
  flags: [
    { name: 'json', help: 'print the status as one JSON object (tids in hex)' },
    { name: 'timeout', value: 'SECS', help: `give up connecting, or waiting for the reply, after SECS seconds (default ${DEFAULT_STATUS_TIMEOUT_MS / 1000})` },
    ...TLS_CLIENT_FLAGS,
  ],
  summary: 'Ask a running primary or secondary for its status: role, last transaction, upstream, secondaries and lag.',
  description: `
ADDRESS is the node's replication address (its replicate-to): a port
(on 127.0.0.1), host:port, [v6addr]:port or a Unix socket path. The node
answers a status request with one message and closes; nothing is
replicated. Exit 0, or 2 when the node cannot be reached or gives no
status ("can't connect to ADDRESS: reason").

examples:
  zrs status 5000
  zrs status --json db1:5000
  zrs status /run/zrs/secondary.sock`,
};

/** `--timeout SECS` (or another seconds option) as milliseconds; a UsageError when malformed. */
export function secondsOption(text: string | true | undefined, option: string, fallbackMs: number): number {
  if (text === undefined || text === true) return fallbackMs;
  const seconds = Number(text);
  if (!/^\d+(\.\d*)?$|^\.\d+$/.test(text) || !Number.isFinite(seconds)) throw new UsageError(`option ${option}: invalid number of seconds: ${JSON.stringify(text)}`);
  return seconds * 1000;
}

/** The longest --timeout: what a timer can wait (about 24.8 days). */
const MAX_TIMEOUT_MS = 2 ** 31 - 1;

/** `--timeout SECS` in ms: more than 0 (a timeout of 0 could only ever fail). */
export function timeoutOption(flags: ReadonlyMap<string, string | true>, fallbackMs: number): number {
  const ms = secondsOption(flags.get('timeout'), '--timeout', fallbackMs);
  if (ms <= 0) throw new UsageError('option --timeout: must be more than 0 seconds');
  // Node's timers take at most 2^31 - 1 ms (a longer one fires at once).
  if (ms > MAX_TIMEOUT_MS) throw new UsageError(`option --timeout: at most ${Math.floor(MAX_TIMEOUT_MS / 1000)} seconds`);
  return ms;
}

/** Parse ADDRESS for a command to connect to; a UsageError when malformed or port 0. */
export function commandAddress(text: string): ReplicationAddress {
  try {
    return connectAddress(text, '127.0.0.1');
  } catch (err) {
    if (err instanceof AddressError) throw new UsageError(err.message);
    throw err;
  }
}

/**
 * What a FILE|ADDRESS argument names: an existing data file (null), or a
 * running node's address. A directory, a special file that is not a socket
 * and a missing `*.fs` path are errors: a path that names nothing here is a
 * mistyped FILE far more often than a socket that is gone.
 */
export async function fileOrAddress(target: string): Promise<ReplicationAddress | null> {
  const kind = await pathKind(target);
  if (kind === 'file') return null;
  if (kind === 'directory') throw new ZrsError(`${target}: a directory, not a data file (FILE) or a running node's socket (ADDRESS)`);
  if (kind === 'other' && !(await stat(target)).isSocket()) throw new ZrsError(`${target}: neither a data file (FILE) nor a running node's socket (ADDRESS)`);
  if (/\.fs$/i.test(target) && kind === 'missing') throw new ZrsError(`${target}: no such file (FILE must be an existing data file; ADDRESS a running node's replication address)`);
  return commandAddress(target);
}

/** Refuse, as usage errors, flags that only a running node's ADDRESS takes (--timeout and the TLS flags) given with a FILE. */
export function refuseAddressFlags(flags: ReadonlyMap<string, string | true>): void {
  for (const flag of ['timeout', ...TLS_CLIENT_FLAGS.map((f) => f.name)]) {
    if (flags.has(flag)) throw new UsageError(`--${flag} applies to a running node's ADDRESS, not to a FILE`);
  }
}

/** Options from the command line. */
export function statusOptions(flags: ReadonlyMap<string, string | true>): { json: boolean; timeoutMs: number; transport?: Transport } {
  return { json: flags.has('json'), timeoutMs: timeoutOption(flags, DEFAULT_STATUS_TIMEOUT_MS), transport: tlsClientTransport(flags) };
}

export async function status(addressText: string, io: CliIo, options: { json?: boolean; timeoutMs?: number; transport?: Transport } = {}): Promise<number> {
  const address = commandAddress(addressText);
  let result: NodeStatus;
  try {
    result = await requestStatus(address, { timeoutMs: options.timeoutMs, transport: options.transport });
  } catch (err) {
    if (err instanceof StatusConnectError) {
      io.err(`zrs status: can't connect to ${formatAddress(address)}: ${printable(err.reason)}\n`);
      return EXIT_UNREACHABLE;
    }
    if (err instanceof StatusReplyError) {
      io.err(`zrs status: no status from ${formatAddress(address)}: ${printable(err.reason)}\n`);
      return EXIT_UNREACHABLE;
    }
    throw err;
  }
  await io.out(options.json ? `${JSON.stringify(statusToJson(result))}\n` : formatStatus(result, formatAddress(address)));
  return EXIT_OK;
}

/** The status with every tid as hex (what `--json` prints). */
export function statusToJson(value: unknown): unknown {
  if (Buffer.isBuffer(value)) return value.toString('hex');
  if (Array.isArray(value)) return value.map(statusToJson);
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, statusToJson(v)]));
  }
  return value;
}

/** `03f5e2607a19b377 (2024-01-16 00:00:28.617280)`, or `none` for the empty storage. */
export function describeTid(tid: Buffer | null): string {
  if (tid === null) return 'none';
  return tidSeconds(tid) === null ? `${tid.toString('hex')} (none: empty storage)` : `${tid.toString('hex')} (${tidToString(tid)})`;
}

/** Seconds of lag of `behind` relative to `ahead`, or null when either is unknown. */
function lagBetween(ahead: Buffer, behind: Buffer | null): number | null {
  if (behind === null) return null;
  if (Buffer.compare(behind, ahead) >= 0) return 0;
  const [a, b] = [tidSeconds(ahead), tidSeconds(behind)];
  return a === null || b === null ? null : a - b;
}

function describeSession(s: SessionStatusEntry, lastTid: Buffer): string {
  // Before anything was sent, where it started is where it stands (as the lag metric reads it).
  const position = s.ackedTid ?? s.lastSentTid ?? s.startTid;
  const lag = lagBetween(lastTid, position);
  const parts = [
    `${s.peer} ${s.protocol ?? '(no protocol yet)'} ${s.state}`,
    s.ackedTid
      ? `acked ${s.ackedTid.toString('hex')}`
      : s.lastSentTid
        ? `sent ${s.lastSentTid.toString('hex')} (no acks)`
        : s.startTid
          ? `started at ${s.startTid.toString('hex')}, nothing sent since`
          : 'nothing sent yet',
    `lag ${lag === null ? 'unknown' : `${lag.toFixed(4)} seconds`}`,
    `${s.bytesSent} bytes sent`,
  ];
  return `  ${parts.join(', ')}`;
}

/** The readable form `zrs status` prints. */
export function formatStatus(s: NodeStatus, address: string): string {
  const rows: [string, string][] = [
    ['node', `${address}${s.name !== null ? ` (${s.name})` : ''}`],
    ['role', s.role],
    ['last transaction', describeTid(s.lastTid)],
    ['file size', `${s.fileSize} bytes`],
  ];
  if (s.generation) rows.push(['generation', `${s.generation.generation} (since ${s.generation.startTid.toString('hex')})`]);
  const u = s.upstream;
  if (u) {
    rows.push(['upstream', `${u.address} (${u.protocol}), ${u.state}`]);
    if (u.lastError) rows.push(['last error', u.lastError]);
    rows.push(['upstream last', describeTid(u.primaryLastTid)]);
    if (u.lastHeartbeat) {
      // Both readings are this node's clock; a step back between them is no negative age.
      const ago = Math.max(0, s.clockMs - u.lastHeartbeat.receivedMs) / 1000;
      rows.push(['last heartbeat', `${u.lastHeartbeat.lastTid.toString('hex')}, ${ago.toFixed(1)} seconds ago`]);
    } else rows.push(['last heartbeat', 'none']);
    // Lag is never negative; a node ahead of its upstream (diverged, or an upstream restored from an older copy) is said to be.
    const ahead = u.primaryLastTid === null ? null : lagBetween(s.lastTid, u.primaryLastTid);
    const aheadNote = ahead !== null && ahead > 0 ? ` (ahead of its upstream by ${ahead.toFixed(4)} seconds: it holds transactions the upstream does not)` : '';
    rows.push(['lag', u.lagSeconds === null ? 'unknown' : `${u.lagSeconds.toFixed(4)} seconds${aheadNote}`]);
  }
  rows.push(['secondaries', String(s.sessionCount)]);
  const width = Math.max(...rows.map(([k]) => k.length)) + 1;
  const lines = rows.map(([k, v]) => `${`${k}:`.padEnd(width)} ${v}`);
  for (const session of s.sessions) lines.push(describeSession(session, s.lastTid));
  if (s.sessionCount > s.sessions.length) lines.push(`  … and ${s.sessionCount - s.sessions.length} more`);
  return `${lines.join('\n')}\n`;
}
