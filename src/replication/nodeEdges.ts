// What a Primary or Secondary puts around its actors before they start: the
// transport (given, TLS from `tls`, or plain TCP), metered for the node's
// metrics, and the optional HTTP metrics endpoint. Kept here so the two
// node classes only pass options through.

import type { Clock } from '../ports/clock.js';
import type { ReplicationAddress, Transport } from '../ports/transport.js';
import { metricsUrl, serveMetrics, type MetricsServer } from '../node/metricsServer.js';
import { socketTransport } from '../node/socketTransport.js';
import { tlsTransport, type TlsOptions } from '../node/tlsTransport.js';
import { ZrsError } from '../errors.js';
import { formatAddress, parseAddress } from './address.js';
import type { Logger } from './log.js';
import { ReplicationMetrics } from './metrics.js';

/** The options Primary.open and Secondary.open share for these edges. */
export interface NodeEdgeOptions {
  transport?: Transport;
  /** TLS with mutual certificate authentication (ZEO's `<ssl>`); not together with `transport`. */
  tls?: TlsOptions;
  /** Serve Prometheus metrics over HTTP here (host:port, a port on 127.0.0.1, or a Unix socket path). */
  metricsAddress?: string | number | ReplicationAddress;
}

export interface NodeEdges {
  /** The transport actors use: metered. */
  transport: Transport;
  metrics: ReplicationMetrics;
  metricsServer: MetricsServer | null;
  close(): Promise<void>;
}

export async function openNodeEdges(options: NodeEdgeOptions, clock: Clock, log: Logger): Promise<NodeEdges> {
  if (options.tls && options.transport) throw new ZrsError('give either tls or transport, not both');
  const base = options.tls ? tlsTransport({ ...options.tls, log, clock }) : (options.transport ?? socketTransport);
  const metrics = new ReplicationMetrics(clock);
  let metricsServer: MetricsServer | null = null;
  if (options.metricsAddress !== undefined) {
    const a = options.metricsAddress;
    const address = typeof a === 'object' ? a : parseAddress(a, '127.0.0.1');
    // Said as the metrics address: a port in use would otherwise read as the replication address's.
    metricsServer = await serveMetrics(metrics.registry, address).catch((err: Error) => {
      throw new ZrsError(`metrics address ${formatAddress(address)}: ${err.message}`, { cause: err });
    });
    log('info', `metrics at ${metricsUrl(metricsServer.address)}`);
  }
  return {
    transport: metrics.meter(base),
    metrics,
    metricsServer,
    close: async () => {
      metrics.close();
      await metricsServer?.close();
    },
  };
}
