// `zrs check PRIMARY SECONDARY`: zc.zrs's Nagios plugin (zrs-nagios) over the
// status request. Compares the times of the last transactions of a primary
// and a secondary; prints one Nagios line (with `|'lag'=…seconds` performance
// data under -m) and exits 0 OK, 1 WARNING, 2 CRITICAL. The wording follows
// zc.zrs's nagios.py and nagios.rst so existing alert rules keep matching.

import { getSystemErrorMap } from 'node:util';
import { tidToSeconds, Z64 } from '../storage/timestamp.js';
import { sameGeneration } from '../failover/generations.js';
import { ZrsError } from '../errors.js';
import type { GenerationEntry } from '../wire/native.js';
import { DEFAULT_STATUS_TIMEOUT_MS, requestStatus, StatusConnectError, StatusReplyError } from '../replication/statusClient.js';
import { UsageError, type CommandSpec } from './args.js';
import type { CliIo } from './io.js';
import { commandAddress, secondsOption, timeoutOption } from './status.js';
import type { Transport } from '../ports/transport.js';
import { TLS_CLIENT_FLAGS, tlsClientTransport } from './tlsClient.js';
import { printable } from './logging.js';

export const checkSpec: CommandSpec = {
  name: 'check',
  positionals: ['PRIMARY', 'SECONDARY'],
  flags: [
    { name: 'warning', short: 'w', value: 'SECS', help: 'WARNING (exit 1) when the secondary is more than SECS seconds behind' },
    { name: 'error', short: 'e', value: 'SECS', help: 'CRITICAL (exit 2) when the secondary is more than SECS seconds behind' },
    { name: 'output-metrics', short: 'm', help: "append the lag as Nagios performance data (|'lag'=SECONDSseconds)" },
    { name: 'timeout', value: 'SECS', help: `give up on a node after SECS seconds (default ${DEFAULT_STATUS_TIMEOUT_MS / 1000})` },
    ...TLS_CLIENT_FLAGS,
  ],
  summary: "Nagios check of a secondary's lag behind its primary (zc.zrs's zrs-nagios).",
  description: `
Asks both nodes (replication addresses, as for 'zrs status') for their last
transaction and compares its time. At least one of -w, -e or -m is
required, as with zc.zrs's zrs-nagios; a threshold of 0 is off.

  exit 0  Secondary up to date.
  exit 0  Secondary behind primary by 68.5678 seconds
  exit 1  Secondary behind primary by 68.5678 seconds > 30        (-w 30)
  exit 2  Secondary behind primary by 68.5678 seconds > 60        (-e 60)
  exit 2  Primary behind secondary by -68.56779998540878 seconds  (secondary ahead)
  exit 2  Can't connect to primary at 'db1:5000': [Errno 111] Connection refused
  exit 2  Secondary at 'db2:5000' stopped replicating from 'db1:5000': diverged
          (also 'failed'; zc.zrs's secondaries never stop, so zrs-nagios has no such line)
  exit 2  Secondary at 'db1:5000' is a primary           (both addresses name primaries)
  exit 2  Secondary at 'db2:5000' is in generation 2 (from tid 03f1…), which the primary at 'db1:5000' did not start: it follows another primary
          (or: is in an older generation and holds transactions past the start of the primary's)
  exit 1  Secondary at 'db2:5000' not connected to 'db1:5000' (backoff: connect ECONNREFUSED 10.0.0.5:5000)
          (also connected.handshaking: an upstream that takes the connection and never answers;
          and "Primary at ... is a secondary not connected to ...": the top of a chain, or of a loop cut)
          (when the lag alone would be OK: an idle primary shows no lag)
A secondary holding nothing yet is 'behind primary by ... seconds (the secondary is empty)'.
With -m the line ends in performance data: ...|'lag'=68.5678seconds

examples:
  zrs check -w 60 -e 300 db1:5000 db2:5000
  zrs check -m -w 60 5000 /run/zrs/secondary.sock`,
};

export interface CheckOptions {
  /** Seconds; 0 is off. */
  warning: number;
  /** Seconds; 0 is off. */
  error: number;
  outputMetrics: boolean;
  timeoutMs?: number;
  /** How to connect to both nodes (TLS, from the --ssl-* flags); default plain TCP or a Unix socket. */
  transport?: () => Transport | undefined;
}

/** Nagios levels as exit codes. */
export const OK = 0;
export const WARNING = 1;
export const CRITICAL = 2;
/** The check itself could not run (a TLS setting it cannot use). */
export const UNKNOWN = 3;

/** Options from the command line; a UsageError as zrs-nagios's usage when none of -w, -e, -m is given. */
export function checkOptions(flags: ReadonlyMap<string, string | true>): CheckOptions {
  const threshold = (name: string, short: string): number => secondsOption(flags.get(name), `-${short}`, 0) / 1000;
  const options: CheckOptions = {
    warning: threshold('warning', 'w'),
    error: threshold('error', 'e'),
    outputMetrics: flags.has('output-metrics'),
    timeoutMs: timeoutOption(flags, DEFAULT_STATUS_TIMEOUT_MS),
  };
  if (!options.outputMetrics && !options.warning && !options.error) throw new UsageError('one of -w, -e or -m is required');
  // Read when the check runs: one that cannot use them says UNKNOWN, as Nagios expects.
  options.transport = () => tlsClientTransport(flags);
  return options;
}

/**
 * Python's `'%.Nf' % x` of a finite number: its exact binary value rounded
 * to `digits` decimals, an exact half to even. Number.toFixed rounds an
 * exact half up, and lags that are exact halves at the fourth decimal do
 * occur (a tid's time is a multiple of 2^-22 s).
 */
export function pyFixed(x: number, digits: number): string {
  const view = new DataView(new ArrayBuffer(8));
  view.setFloat64(0, Math.abs(x));
  const bits = view.getBigUint64(0);
  const biased = Number(bits >> 52n);
  // |x| = mantissa * 2^exponent, exactly.
  const mantissa = biased === 0 ? bits & 0xf_ffff_ffff_ffffn : (bits & 0xf_ffff_ffff_ffffn) | (1n << 52n);
  const exponent = (biased === 0 ? 1 : biased) - 1075;
  const scaled = mantissa * 10n ** BigInt(digits);
  let units: bigint;
  if (exponent >= 0) units = scaled << BigInt(exponent);
  else {
    const divisor = 1n << BigInt(-exponent);
    units = scaled / divisor;
    const twiceRest = (scaled % divisor) * 2n;
    if (twiceRest > divisor || (twiceRest === divisor && (units & 1n) === 1n)) units += 1n;
  }
  const text = units.toString().padStart(digits + 1, '0');
  const sign = x < 0 || Object.is(x, -0) ? '-' : '';
  return digits === 0 ? `${sign}${text}` : `${sign}${text.slice(0, -digits)}.${text.slice(-digits)}`;
}

/** Python's repr() of a float (zrs-nagios prints the negative lag with `%s`). */
export function pyFloatRepr(x: number): string {
  if (Number.isNaN(x)) return 'nan';
  if (!Number.isFinite(x)) return x > 0 ? 'inf' : '-inf';
  if (x === 0) return Object.is(x, -0) ? '-0.0' : '0.0';
  const [mantissa, exp] = x.toExponential().split('e') as [string, string];
  const sign = mantissa.startsWith('-') ? '-' : '';
  const digits = mantissa.replace('-', '').replace('.', '');
  const e = Number(exp);
  if (e < -4 || e >= 16) {
    const m = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    return `${sign}${m}e${e < 0 ? '-' : '+'}${String(Math.abs(e)).padStart(2, '0')}`;
  }
  if (e < 0) return `${sign}0.${'0'.repeat(-e - 1)}${digits}`;
  const whole = digits.padEnd(e + 1, '0');
  return `${sign}${whole.slice(0, e + 1)}.${whole.slice(e + 1) || '0'}`;
}

/**
 * zrs-nagios's verdict for one storage from the two last-transaction times
 * (seconds since the epoch): the output line and the level.
 */
export function lagVerdict(primarySeconds: number, secondarySeconds: number, options: CheckOptions): { text: string; level: number } {
  const delta = primarySeconds - secondarySeconds;
  let text: string;
  let level = OK;
  if (delta < 0) {
    text = `Primary behind secondary by ${pyFloatRepr(delta)} seconds`;
    level = CRITICAL;
  } else if (delta > 0) {
    text = `Secondary behind primary by ${pyFixed(delta, 4)} seconds`;
    if (options.error && delta > options.error) {
      text += ` > ${options.error}`;
      level = CRITICAL;
    } else if (options.warning && delta > options.warning) {
      text += ` > ${options.warning}`;
      level = WARNING;
    }
  } else text = 'Secondary up to date.';
  if (options.outputMetrics) text += `|'lag'=${pyFixed(delta, 4)}seconds`;
  return { text, level };
}

/** An OS error as Python's socket.error prints it: `[Errno 111] Connection refused`. */
export function pythonErrorText(err: unknown): string {
  const e = err as NodeJS.ErrnoException | undefined;
  if (e && typeof e.errno === 'number') {
    const known = getSystemErrorMap().get(e.errno);
    if (known && e.errno < 0) return `[Errno ${-e.errno}] ${known[1].charAt(0).toUpperCase()}${known[1].slice(1)}`;
  }
  return err instanceof Error ? err.message : String(err);
}

const pyRepr = (s: string): string => (s.includes("'") && !s.includes('"') ? `"${s}"` : `'${s.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`);

/** What a node's status says for the check. */
interface NodeTime {
  /** Seconds since the epoch of the node's last transaction. */
  seconds: number;
  /** The node holds no transaction. */
  empty: boolean;
  /** A secondary not connected to its upstream: the WARNING line, unless the lag says worse. */
  notConnected: string | null;
  /** The generation the node is in, when its status says. */
  generation: GenerationEntry | null;
  lastTid: Buffer;
}

/** The node's last transaction time and state, or a CRITICAL line. */
async function lastTime(addressText: string, role: 'primary' | 'secondary', timeoutMs: number | undefined, transport: Transport | undefined): Promise<NodeTime | string> {
  try {
    const status = await requestStatus(commandAddress(addressText), { timeoutMs, transport });
    if (role === 'secondary' && status.upstream === null) return `Secondary at ${pyRepr(addressText)} is a primary`;
    // zc.zrs's secondaries always retry; ours stop for good when their primary refused them as
    // diverged or for a configuration error. Their last transaction may still look recent.
    const upstream = role === 'secondary' ? status.upstream : null;
    if (upstream && (upstream.state === 'diverged' || upstream.state === 'failed')) {
      return `Secondary at ${pyRepr(addressText)} stopped replicating from ${pyRepr(upstream.address)}: ${upstream.state}`;
    }
    // A node retrying, or connected to an upstream that never answers (a hung primary), replicates
    // nothing, though its last transaction may look recent while its primary is idle. So does a
    // "primary" that is itself such a secondary (checking down a chain): the top of a chain whose
    // primary is gone, or of a cut loop. The peer's words go into a Nagios line: a '|' there would
    // start the performance data.
    const follows = status.upstream;
    const node = role === 'secondary' ? `Secondary at ${pyRepr(addressText)}` : `Primary at ${pyRepr(addressText)} is a secondary`;
    const notConnected =
      follows && (!follows.state.startsWith('connected') || follows.state === 'connected.handshaking')
        ? `${node} not connected to ${pyRepr(follows.address)} (${follows.state}${follows.lastError ? `: ${follows.lastError}` : ''})`.replaceAll('|', '/')
        : null;
    // zrs-nagios uses TimeStamp(tid).timeTime(), also for an empty storage's zero tid.
    return { seconds: tidToSeconds(status.lastTid), empty: status.lastTid.equals(Z64), notConnected, generation: status.generation ?? null, lastTid: status.lastTid };
  } catch (err) {
    if (err instanceof StatusConnectError) {
      const reason = err.reason === 'timed out' ? 'timed out' : pythonErrorText(err.cause);
      return `Can't connect to ${role} at ${pyRepr(addressText)}: ${reason}`;
    }
    if (err instanceof StatusReplyError) return `No status from ${role} at ${pyRepr(addressText)}: ${printable(err.reason)}`;
    throw err;
  }
}

export async function check(primaryText: string, secondaryText: string, io: CliIo, options: CheckOptions): Promise<number> {
  // Addresses are checked before anything connects (a malformed one is a usage error).
  commandAddress(primaryText);
  commandAddress(secondaryText);
  let transport: Transport | undefined;
  try {
    transport = options.transport?.();
  } catch (err) {
    if (!(err instanceof ZrsError)) throw err;
    return report(io, `Can't check: ${printable(err.message)}`, UNKNOWN);
  }
  // As zrs-nagios: the secondary first, so a dead secondary is reported even when both are down.
  const secondary = await lastTime(secondaryText, 'secondary', options.timeoutMs, transport);
  if (typeof secondary === 'string') return report(io, secondary, CRITICAL);
  const primary = await lastTime(primaryText, 'primary', options.timeoutMs, transport);
  if (typeof primary === 'string') return report(io, primary, CRITICAL);
  const other = otherHistory(secondary, primary, pyRepr(primaryText));
  if (other) return report(io, `Secondary at ${pyRepr(secondaryText)} ${other}: it follows another primary`, CRITICAL);
  let { text, level } = lagVerdict(primary.seconds, secondary.seconds, options);
  // A zero tid's time is in 1900: say why the lag is a century (after zrs-nagios's words, before any performance data).
  if (secondary.empty && !primary.empty) text = text.replace(/^(Secondary behind primary by [^|]*)/, '$1 (the secondary is empty)');
  const notConnected = secondary.notConnected ?? primary.notConnected;
  if (level === OK && notConnected !== null) {
    level = WARNING;
    text = notConnected + (options.outputMetrics ? text.slice(text.indexOf('|')) : '');
  }
  return report(io, text, level);
}

/**
 * How the secondary's generation shows another history than the primary's,
 * or null: a generation the primary never started (a promotion beside it:
 * two primaries), or an older one with transactions past the start of the
 * primary's (it follows a primary that was not promoted: every node that
 * replicates the new generation's transactions is told of it first). A
 * lower generation alone says nothing: the secondary may just be behind.
 */
function otherHistory(secondary: NodeTime, primary: NodeTime, primaryName: string): string | null {
  const [s, p] = [secondary.generation, primary.generation];
  if (!s || !p) return null;
  const what = `is in generation ${s.generation} (from tid ${s.startTid.toString('hex')})`;
  if (s.generation > p.generation || (s.generation === p.generation && !sameGeneration(s, p))) return `${what}, which the primary at ${primaryName} did not start`;
  if (s.generation < p.generation && Buffer.compare(secondary.lastTid, p.startTid) > 0) {
    return `${what} and holds transactions past tid ${p.startTid.toString('hex')}, where the primary at ${primaryName} began generation ${p.generation}`;
  }
  return null;
}

async function report(io: CliIo, text: string, level: number): Promise<number> {
  await io.out(`${text}\n`);
  return level;
}
