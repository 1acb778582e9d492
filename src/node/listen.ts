// Binding a Node server to a replication-style address (TCP host:port, a
// bare port, or a Unix socket path, replacing a stale socket file), shared by
// the plain and TLS transports and the metrics endpoint.

import { lstat, rm } from 'node:fs/promises';
import { createConnection, type Server } from 'node:net';
import { ZrsError } from '../errors.js';
import type { ReplicationAddress } from '../ports/transport.js';

/** How long a probe of an existing socket file may take before it counts as in use. */
const PROBE_MS = 2000;

/** Listen on `address`; resolves with the bound address (the real port when 0 was asked). */
export async function bindServer(server: Server, address: ReplicationAddress): Promise<ReplicationAddress> {
  if (address.kind === 'unix') await removeStaleSocket(address.path);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    const listening = (): void => {
      server.off('error', reject);
      resolve();
    };
    if (address.kind === 'unix') server.listen(address.path, listening);
    else server.listen(address.port, address.host || undefined, listening);
  });
  const bound = server.address();
  if (address.kind === 'unix' || bound === null || typeof bound === 'string') return address;
  return { kind: 'tcp', host: address.host || bound.address, port: bound.port };
}

/**
 * Remove the socket file at `path` if a server that is gone left it behind.
 * Anything else there is refused, never removed: a file that is not a
 * socket (a data file named by mistake), or a socket a server still answers on.
 */
async function removeStaleSocket(path: string): Promise<void> {
  const found = await lstat(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return null;
    throw err;
  });
  if (found === null) return;
  if (!found.isSocket()) throw new ZrsError(`${path} exists and is not a socket: refusing to replace it with one (choose another socket path)`);
  const probe = await probeSocket(path);
  if (probe !== 'stale') throw new ZrsError(`${path}: ${probe}; not replacing the socket`);
  await rm(path, { force: true });
}

/** 'stale' when nothing accepts connections on the Unix socket at `path`, else why it cannot be taken. */
function probeSocket(path: string): Promise<string> {
  return new Promise((resolve) => {
    const probe = createConnection({ path });
    const done = (verdict: string): void => {
      clearTimeout(timer);
      probe.destroy();
      resolve(verdict);
    };
    const timer = setTimeout(() => done(`no answer within ${PROBE_MS} ms, a server may be listening`), PROBE_MS);
    probe.once('connect', () => done('a server is listening on this socket already (EADDRINUSE)'));
    probe.once('error', (err: NodeJS.ErrnoException) => done(err.code === 'ECONNREFUSED' || err.code === 'ENOENT' ? 'stale' : `cannot tell whether a server listens: ${err.message}`));
  });
}
