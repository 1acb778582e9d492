// Binding a Node server to a replication-style address (TCP host:port, a
// bare port, or a Unix socket path, replacing a stale socket file), shared by
// the plain and TLS transports and the metrics endpoint.

import { rm } from 'node:fs/promises';
import type { Server } from 'node:net';
import type { ReplicationAddress } from '../ports/transport.js';

/** Listen on `address`; resolves with the bound address (the real port when 0 was asked). */
export async function bindServer(server: Server, address: ReplicationAddress): Promise<ReplicationAddress> {
  if (address.kind === 'unix') await rm(address.path, { force: true });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    if (address.kind === 'unix') server.listen(address.path, () => resolve());
    else server.listen(address.port, address.host || undefined, () => resolve());
  });
  const bound = server.address();
  if (address.kind === 'unix' || bound === null || typeof bound === 'string') return address;
  return { kind: 'tcp', host: address.host || bound.address, port: bound.port };
}
