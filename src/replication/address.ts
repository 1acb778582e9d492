// Replication addresses as zc.zrs and ZConfig write them: a bare port, a
// `host:port`, an IPv6 `[addr]:port`, or a Unix socket path.

import { AddressError } from '../errors.js';
import type { ReplicationAddress } from '../ports/transport.js';

function parsePort(text: string, original: string): number {
  if (!/^\d+$/.test(text)) throw new AddressError(`invalid port in address ${JSON.stringify(original)}`);
  const port = Number(text);
  if (port > 65535) throw new AddressError(`port out of range in address ${JSON.stringify(original)}`);
  return port;
}

/**
 * The longest Unix socket path the system binds or connects to, in bytes
 * (sockaddr_un holds 108 on Linux, 104 on macOS and the BSDs, with the
 * terminating zero): a longer one would be cut short without a word, and the
 * socket made under another name.
 */
export const MAX_SOCKET_PATH_BYTES = process.platform === 'linux' ? 107 : 103;

/**
 * Parse an address. A bare port listens/connects on all interfaces /
 * localhost as zc.zrs does; anything containing `/` is a Unix socket path.
 *
 * @example parseAddress('5000'); parseAddress('db1:5000'); parseAddress('[::1]:5000'); parseAddress('/run/zrs.sock')
 */
export function parseAddress(text: string | number, defaultHost = ''): ReplicationAddress {
  if (typeof text === 'number') return { kind: 'tcp', host: defaultHost, port: parsePort(String(text), String(text)) };
  const s = text.trim();
  if (s === '') throw new AddressError('empty replication address');
  if (s.includes('/')) {
    const bytes = Buffer.byteLength(s);
    if (bytes > MAX_SOCKET_PATH_BYTES) {
      throw new AddressError(`socket path ${JSON.stringify(s)} is ${bytes} bytes, the most a socket path may have here is ${MAX_SOCKET_PATH_BYTES} (use a shorter directory, or a relative path)`);
    }
    return { kind: 'unix', path: s };
  }
  if (/^\d+$/.test(s)) return { kind: 'tcp', host: defaultHost, port: parsePort(s, text) };
  const v6 = /^\[([^\]]+)\]:(\d+)$/.exec(s);
  if (v6) return { kind: 'tcp', host: checkedHost(v6[1]!, text), port: parsePort(v6[2]!, text) };
  const i = s.lastIndexOf(':');
  if (i <= 0 || s.indexOf(':') !== i) throw new AddressError(`invalid replication address ${JSON.stringify(text)}: expected port, host:port, [v6]:port or a socket path (a path holds a '/', as in ./${s})`);
  return { kind: 'tcp', host: checkedHost(s.slice(0, i), text), port: parsePort(s.slice(i + 1), text) };
}

/** A host name or address as given: no name holds white space or brackets (those go round an IPv6 address only). */
function checkedHost(host: string, text: string): string {
  if (/[\s[\]]/.test(host)) throw new AddressError(`invalid host ${JSON.stringify(host)} in replication address ${JSON.stringify(text)}`);
  return host;
}

/** An address given as text or a port (parsed: parseAddress) or as an address object (taken as it is). */
export function toAddress(a: string | number | ReplicationAddress, defaultHost = ''): ReplicationAddress {
  return typeof a === 'object' ? a : parseAddress(a, defaultHost);
}

/**
 * An address to connect to: as toAddress, but a TCP port 0, which only asks the system for a free port when
 * listening, is refused: nothing can be reached there.
 *
 * @example connectAddress('db1:5000'); connectAddress(5000) // 127.0.0.1:5000
 */
export function connectAddress(a: string | number | ReplicationAddress, defaultHost = '127.0.0.1'): ReplicationAddress {
  const address = toAddress(a, defaultHost);
  if (address.kind === 'tcp' && address.port === 0) {
    throw new AddressError(`cannot connect to port 0 in address ${JSON.stringify(typeof a === 'object' ? formatAddress(a) : String(a))}: port 0 only asks for a free port when listening`);
  }
  return address;
}

export function formatAddress(a: ReplicationAddress): string {
  if (a.kind === 'unix') return a.path;
  if (a.host.includes(':')) return `[${a.host}]:${a.port}`;
  return a.host ? `${a.host}:${a.port}` : String(a.port);
}

export function sameAddress(a: ReplicationAddress, b: ReplicationAddress): boolean {
  return formatAddress(a) === formatAddress(b);
}
