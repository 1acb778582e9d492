// The metrics endpoint: a plain HTTP server answering GET /metrics (and /)
// with a registry's Prometheus text. It serves nothing else and reads no body.

import { createServer, type Server } from 'node:http';
import type { ReplicationAddress } from '../ports/transport.js';
import { formatAddress } from '../replication/address.js';
import { bindServer } from './listen.js';

/** What the endpoint needs of a registry (prom-client's Registry fits). */
export interface MetricsSource {
  metrics(): Promise<string>;
  readonly contentType: string;
}

export interface MetricsServer {
  /** The bound address (the real port when 0 was asked for). */
  readonly address: ReplicationAddress;
  close(): Promise<void>;
}

/**
 * Where to fetch the metrics served at `address`: an http URL, or for a Unix
 * socket `unix:PATH:/metrics` (curl: `curl --unix-socket PATH http://localhost/metrics`).
 */
export function metricsUrl(address: ReplicationAddress): string {
  return address.kind === 'unix' ? `unix:${address.path}:/metrics` : `http://${formatAddress(address)}/metrics`;
}

/**
 * Serve `source` over HTTP at `address` (host:port or a Unix socket path).
 *
 * @example
 * const server = await serveMetrics(metrics.registry, { kind: 'tcp', host: '127.0.0.1', port: 9100 });
 */
export async function serveMetrics(source: MetricsSource, address: ReplicationAddress): Promise<MetricsServer> {
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    if (path !== '/metrics' && path !== '/') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try /metrics\n');
      return;
    }
    source.metrics().then(
      (text) => res.writeHead(200, { 'content-type': source.contentType }).end(req.method === 'HEAD' ? undefined : text),
      (err: unknown) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`metrics failed: ${(err as Error).message}\n`),
    );
  });
  // Scrapers keep connections alive; do not let them hold close() up.
  server.keepAliveTimeout = 5_000;
  const actual = await bindServer(server, address);
  return {
    address: actual,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
