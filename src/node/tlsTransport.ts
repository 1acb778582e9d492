// TLS on the replication link, with mutual certificate authentication the way
// ZEO's <ssl> section does it. A listener always demands and verifies a client
// certificate against `authenticate`; a connecting side always verifies the
// server's certificate (against `authenticate`, else the system CAs) and, with
// checkHostname, its name. A failed handshake never yields a ByteStream, so no
// replication byte crosses an unverified link; it is logged with the reason.

import { X509Certificate } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { isIP, type Socket } from 'node:net';
import { join } from 'node:path';
import {
  checkServerIdentity,
  connect as tlsConnect,
  createSecureContext,
  createServer as tlsCreateServer,
  type ConnectionOptions,
  type PeerCertificate,
  type TLSSocket,
} from 'node:tls';
import { TlsHandshakeError, ZrsError } from '../errors.js';
import type { ByteStream, Listener, ListenOptions, ReplicationAddress, Transport } from '../ports/transport.js';
import { FLOOD_LOG_INTERVAL_MS, FloodWarning, type Logger } from '../replication/log.js';
import type { Clock } from '../ports/clock.js';
import { systemClock } from './clock.js';
import { acceptedPeer, SocketStream, untilAborted } from './socketTransport.js';
import { bindServer } from './listen.js';

/** The `<ssl>` settings (ZEO's names; `password-function` is not supported). */
export interface TlsOptions {
  /** PEM file with this node's certificate (and its chain); may also hold the key. */
  certificate: string;
  /** PEM file with the private key; defaults to `certificate`. */
  key?: string;
  /**
   * A PEM file, or a directory of PEM files, with the CA certificates that
   * peers' certificates must verify against. Required to listen (client
   * certificates are always verified); when connecting without it the
   * system's CAs verify the server.
   */
  authenticate?: string;
  /** Connecting side: also check that the server certificate names the host (default false, as ZEO). */
  checkHostname?: boolean;
  /** Connecting side: the name to check (and send as SNI) instead of the address's host. */
  serverHostname?: string;
  /** Either side gives up on a handshake that takes longer, counted from the TCP connection (default 30 000). */
  handshakeTimeoutMs?: number;
}

export interface TlsTransportOptions extends TlsOptions {
  /** Where failed handshakes are reported (both sides). */
  log?: Logger;
  /** The clock that spaces the lines of a flood of failed handshakes (default the system's). */
  clock?: Clock;
}

const DEFAULT_HANDSHAKE_TIMEOUT_MS = 30_000;
/** A CA directory holding more files than this is a mistake, not a trust store. */
const MAX_CA_FILES = 1000;

/** Connection failures before any TLS byte: reported as they are. */
const NETWORK_CODES = new Set(['ECONNREFUSED', 'ENOENT', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'ETIMEDOUT', 'EACCES', 'EADDRNOTAVAIL']);
/** OpenSSL's and Node's codes for a server certificate this side rejected. */
const CERTIFICATE_CODE = /^(CERT_|UNABLE_TO_|SELF_SIGNED|DEPTH_ZERO|INVALID_|ERR_TLS_CERT_ALTNAME|HOSTNAME_MISMATCH)/;

/** A certificate or key file's bytes; an error names the file. */
function readTlsFile(what: string, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new ZrsError(`TLS ${what} ${path}: ${reason(err as Error)}`, { cause: err });
  }
}

/** Read CA certificates from a PEM file or every PEM file in a directory; each must parse (an error names its file). */
export function readCaCertificates(path: string): string[] {
  let files: string[];
  let pems: Array<{ file: string; text: string }>;
  try {
    files = statSync(path).isDirectory()
      ? readdirSync(path)
          .sort()
          .map((f) => join(path, f))
          .filter((f) => statSync(f).isFile())
      : [path];
    if (files.length > MAX_CA_FILES) throw new TlsHandshakeError(`authenticate ${path}: more than ${MAX_CA_FILES} files`, path);
    pems = files.map((f) => ({ file: f, text: readFileSync(f, 'latin1') })).filter((p) => p.text.includes('-----BEGIN CERTIFICATE-----'));
  } catch (err) {
    if (err instanceof TlsHandshakeError) throw err;
    // A path that cannot be read is named as the setting it is, not as a bare system error.
    throw new TlsHandshakeError(`authenticate ${path}: ${reason(err as Error)}`, path, { cause: err });
  }
  if (pems.length === 0) throw new TlsHandshakeError(`authenticate ${path}: no PEM certificate found`, path);
  for (const { file, text } of pems) {
    for (const block of text.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? [text]) {
      try {
        new X509Certificate(block);
      } catch (err) {
        throw new TlsHandshakeError(`authenticate ${file}: not a certificate: ${reason(err as Error)}`, path, { cause: err });
      }
    }
  }
  return pems.map((p) => p.text);
}

function label(address: ReplicationAddress): string {
  return address.kind === 'unix' ? address.path : `${address.host || '127.0.0.1'}:${address.port}`;
}

/** The peer's address; after a failed handshake only the wrapped TCP socket still knows it. */
function remotePeer(socket: TLSSocket): string | null {
  const s = socket.remoteAddress ? socket : (socket as unknown as { _parent?: { remoteAddress?: string; remotePort?: number } })._parent;
  return s?.remoteAddress ? `${s.remoteAddress}:${s.remotePort}` : null;
}

function reason(err: Error): string {
  const code = (err as { code?: unknown }).code;
  return typeof code === 'string' && !err.message.includes(code) ? `${err.message} (${code})` : err.message;
}

/**
 * The TLS transport: same ByteStream semantics as socketTransport
 * (backpressure, pause/resume, peer label), after a verified handshake.
 *
 * @example
 * const transport = tlsTransport({ certificate: 'node.pem', key: 'node.key', authenticate: 'ca.pem' });
 * const primary = await Primary.open({ path: 'Data.fs', replicateTo: 5000, transport });
 */
export function tlsTransport(options: TlsTransportOptions): Transport {
  const log = options.log ?? (() => undefined);
  const clock = options.clock ?? systemClock;
  // Read the files once, now: a missing or bad file is an error at open, naming the file, not at the first connection.
  const cert = readTlsFile('certificate', options.certificate);
  const key = options.key === undefined ? cert : readTlsFile('key', options.key);
  const ca = options.authenticate !== undefined ? readCaCertificates(options.authenticate) : undefined;
  try {
    createSecureContext({ cert, key, ca });
  } catch (err) {
    const files = options.key === undefined ? `certificate ${options.certificate} (with its key)` : `certificate ${options.certificate} and key ${options.key}`;
    throw new ZrsError(`TLS ${files}: ${reason(err as Error)}`, { cause: err });
  }
  const handshakeTimeoutMs = options.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS;

  return {
    connect(address: ReplicationAddress, signal?: AbortSignal): Promise<ByteStream> {
      const peer = label(address);
      const host = address.kind === 'tcp' ? address.host || '127.0.0.1' : 'localhost';
      const name = options.serverHostname ?? host;
      const tlsOptions: ConnectionOptions = {
        cert,
        key,
        ca,
        rejectUnauthorized: true,
        // SNI carries names only, never IP addresses.
        ...(isIP(name) ? {} : { servername: name }),
        checkServerIdentity: (_host: string, c: PeerCertificate) => (options.checkHostname ? checkServerIdentity(name, c) : undefined),
      };
      return new Promise((resolve, reject) => {
        const socket: TLSSocket =
          address.kind === 'unix' ? tlsConnect({ ...tlsOptions, path: address.path }) : tlsConnect({ ...tlsOptions, host, port: address.port });
        let handshakeTimer: ReturnType<typeof setTimeout> | null = null;
        const stopWatching = untilAborted(socket, signal, (err) => {
          if (handshakeTimer !== null) clearTimeout(handshakeTimer);
          reject(err);
        });
        // A peer that takes the connection and never completes the handshake (silent, or trickling) is given
        // up on, counted from the TCP connection: reaching the peer is the network's matter.
        socket.once('connect', () => {
          handshakeTimer = setTimeout(() => onError(new TlsHandshakeError(`no TLS handshake within ${handshakeTimeoutMs} ms`, peer)), handshakeTimeoutMs);
        });
        const settle = (): void => {
          stopWatching();
          if (handshakeTimer !== null) clearTimeout(handshakeTimer);
        };
        const onError = (err: Error): void => {
          settle();
          socket.destroy();
          const code = (err as { code?: string }).code;
          // Unreachable is not a TLS matter: the machine retries as for plain TCP.
          if (code !== undefined && NETWORK_CODES.has(code)) return reject(err);
          if (code !== undefined && CERTIFICATE_CODE.test(code)) log('error', `TLS: refused primary ${peer}: ${reason(err)}`, { peer, code });
          else log('error', `TLS: handshake with primary ${peer} failed: ${reason(err)}`, { peer, code });
          reject(new TlsHandshakeError(`TLS handshake with ${peer} failed: ${reason(err)}`, peer, { cause: err }));
        };
        socket.once('error', onError);
        socket.once('secureConnect', () => {
          settle();
          socket.off('error', onError);
          resolve(new SocketStream(socket, peer));
        });
      });
    },

    async listen(address: ReplicationAddress, onStream: (s: ByteStream) => void, options: ListenOptions = {}): Promise<Listener> {
      if (ca === undefined) {
        throw new TlsHandshakeError('a TLS listener needs authenticate (the CA that client certificates must verify against)', label(address));
      }
      let accepted = 0;
      const server = tlsCreateServer(
        { cert, key, ca, requestCert: true, rejectUnauthorized: true, handshakeTimeout: handshakeTimeoutMs },
        (socket) => onStream(new SocketStream(socket, acceptedPeer(socket, address, ++accepted))),
      );
      // Read each TCP peer's address now: net.Socket caches it, and after a failed
      // handshake the TLS socket's handle is gone, so the log line reads it from there.
      server.on('connection', (raw: Socket) => void raw.remoteAddress);
      // Handshakes still under way count too: past the limit a connection is closed before its
      // handshake starts (each would hold a descriptor until the handshake timeout).
      if (options.maxConnections !== undefined) server.maxConnections = options.maxConnections;
      const turnedAway = new FloodWarning(clock, FLOOD_LOG_INTERVAL_MS, (count, last) =>
        log('warn', `TLS: turned away ${count} connection(s) (the last from ${last}): ${options.maxConnections} already open, the most allowed (maxConnections)`),
      );
      server.on('drop', (d) => turnedAway.note(d?.remoteAddress ? `${d.remoteAddress}:${d.remotePort}` : label(address)));
      // Refusals may come in a flood (scanners, a client with a wrong certificate retrying): the first at once, then a count.
      const refused = new FloodWarning(clock, FLOOD_LOG_INTERVAL_MS, (count, last, fields) =>
        log('warn', count === 1 ? `TLS: refused secondary ${last}` : `TLS: refused secondary ${last} (and ${count - 1} more handshakes since the last line)`, { ...fields, count }),
      );
      // A client that hangs up in the handshake refused this node (its certificate, most often): its own log
      // says why. Counted apart, so those lines never hide this node's own refusals.
      const hungUp = new FloodWarning(clock, FLOOD_LOG_INTERVAL_MS, (count, last, fields) =>
        log(
          'warn',
          `TLS: secondary ${last} ended the handshake${count === 1 ? '' : ` (and ${count - 1} more since the last line)`}: it may have refused this node's certificate, and its log says why`,
          { ...fields, count },
        ),
      );
      server.on('tlsClientError', (err, socket) => {
        const peer = remotePeer(socket) ?? label(address);
        // A client certificate that does not verify ends the handshake with only
        // "socket hang up"; the verification error is in authorizationError.
        const authError = socket.authorizationError as unknown as string | undefined;
        const code = (err as { code?: string }).code;
        if (!authError && code === 'ECONNRESET') hungUp.note(peer, { peer, code });
        else refused.note(`${peer}: ${authError ? `client certificate rejected: ${authError}` : reason(err)}`, { peer, code: authError ?? code });
        socket.destroy();
      });
      const actual = await bindServer(server, address);
      return {
        address: actual,
        close: () =>
          new Promise<void>((resolve) => {
            turnedAway.close();
            refused.close();
            hungUp.close();
            server.close(() => resolve());
          }),
      };
    },
  };
}
