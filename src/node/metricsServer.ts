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

/** Requests one connection may make (more get 503 and the connection is closed after). */
export const METRICS_REQUESTS_PER_SOCKET = 100;
/** Time a request may take to arrive whole. */
export const METRICS_REQUEST_TIMEOUT_MS = 10_000;
/** Connections open at once; more are refused. */
export const METRICS_MAX_CONNECTIONS = 64;

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
  // Requests that come together share one reading of the registry: a client
  // that pipelines thousands of requests costs one computation, not thousands.
  let reading: Promise<string> | null = null;
  const read = (): Promise<string> => {
    reading ??= source.metrics().finally(() => (reading = null));
    return reading;
  };
  // Node checks the request timeouts below on a sweep, every 30 s unless told: a request held up would get up to 40 s, not 10.
  const server: Server = createServer({ connectionsCheckingInterval: 1_000 }, (req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    if (path !== '/metrics' && path !== '/') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try /metrics\n');
      return;
    }
    read().then(
      (text) => res.writeHead(200, { 'content-type': source.contentType }).end(req.method === 'HEAD' ? undefined : text),
      (err: unknown) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`metrics failed: ${(err as Error).message}\n`),
    );
  });
  // Scrapers keep connections alive; do not let them hold close() up. This
  // endpoint shares the process with replication: a client that pipelines,
  // trickles its headers or opens connections without end is held to a few
  // requests per connection, a bounded wait and a bounded number of sockets.
  server.keepAliveTimeout = 5_000;
  server.maxRequestsPerSocket = METRICS_REQUESTS_PER_SOCKET;
  server.headersTimeout = METRICS_REQUEST_TIMEOUT_MS;
  server.requestTimeout = METRICS_REQUEST_TIMEOUT_MS;
  server.maxConnections = METRICS_MAX_CONNECTIONS;
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
