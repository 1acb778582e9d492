// The admin commands (`status`, `check`, `promote ADDRESS`, `pack ADDRESS`,
// `rewind --to-common-with`) connect to a node's replication address; a node with an `<ssl>` section takes only
// TLS connections with a certificate its CA signed. These flags give the
// command the client side of that, with the names of ZEO's `<ssl>` keys.

import { tlsTransport, type TlsOptions } from '../node/tlsTransport.js';
import type { Transport } from '../ports/transport.js';
import { UsageError, type FlagSpec } from './args.js';

/** The TLS flags of a command that connects to a node. */
export const TLS_CLIENT_FLAGS: readonly FlagSpec[] = [
  { name: 'ssl-certificate', value: 'FILE', help: "connect with TLS, with this PEM certificate (and its key, unless --ssl-key): a node with <ssl> takes only certificates its CA signed" },
  { name: 'ssl-key', value: 'FILE', help: 'the PEM key of --ssl-certificate, when not in the same file' },
  { name: 'ssl-authenticate', value: 'CA', help: "a PEM file or directory of CA certificates the node's certificate must verify against (default: the system's)" },
  { name: 'ssl-server-hostname', value: 'NAME', help: "check that the node's certificate names NAME (<ssl>'s check-hostname with server-hostname); by default no name is checked" },
];

/** The TLS flags, their help prefixed (`ADDRESS only: …`) for a command that connects only in one of its forms. */
export function tlsClientFlags(prefix: string): FlagSpec[] {
  return TLS_CLIENT_FLAGS.map((f) => ({ ...f, help: `${prefix}: ${f.help}` }));
}


/**
 * The transport the command connects with: TLS when --ssl-certificate is
 * given, else none (plain TCP or a Unix socket). A UsageError for another
 * --ssl-* flag without it; a ZrsError naming a certificate or key file that
 * cannot be used.
 */
export function tlsClientTransport(flags: ReadonlyMap<string, string | true>): Transport | undefined {
  const value = (name: string): string | undefined => {
    const v = flags.get(name);
    return typeof v === 'string' ? v : undefined;
  };
  const certificate = value('ssl-certificate');
  if (certificate === undefined) {
    const other = TLS_CLIENT_FLAGS.find((f) => f.name !== 'ssl-certificate' && flags.has(f.name));
    if (other) throw new UsageError(`--${other.name} needs --ssl-certificate (a node with <ssl> takes only connections with a certificate)`);
    return undefined;
  }
  const options: TlsOptions = { certificate };
  const key = value('ssl-key');
  if (key !== undefined) options.key = key;
  const authenticate = value('ssl-authenticate');
  if (authenticate !== undefined) options.authenticate = authenticate;
  const serverHostname = value('ssl-server-hostname');
  if (serverHostname !== undefined) Object.assign(options, { serverHostname, checkHostname: true });
  return tlsTransport(options);
}
