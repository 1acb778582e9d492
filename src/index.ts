// The public surface of the library: storages, replication, ports and errors.

export { FileStorage, decodeExtension } from './storage/FileStorage.js';
export type {
  CommittedTransaction,
  DataRecord,
  HistoryEntry,
  LoadBeforeResult,
  LoadResult,
  OpenOptions,
  TpcBeginOptions,
  TransactionMeta,
  TransactionRecord,
  UndoLogEntry,
} from './storage/types.js';
export type { IterateOptions } from './storage/iterator.js';
export { GarbageCollectionError, PackError, PackTimeError, type PackBlobFiles, type PackOptions, type PackProgress, type PackReport, type ReferencesOf } from './storage/pack.js';
export { zodbReferences } from './storage/references.js';
export { Z64, laterTid, newTid, tidFromTime, tidToSeconds, tidToString, tidPlusOne } from './storage/timestamp.js';
export { Primary, type PrimaryOptions } from './replication/primary.js';
export { Secondary, type SecondaryOptions, type SecondaryStatus, type SecondaryProtocol } from './replication/secondary.js';
export { ReadOnlyStorage } from './replication/readOnlyStorage.js';
export type { ReplicationConfirmation, SecondaryReplicationStatus, WaitForReplicationOptions } from './replication/syncReplication.js';
export { AuditLog, readAuditLog, readAuditLogStrict, type AuditRecord, type AuditReadResult, type AuditDamage } from './audit/auditLog.js';
export { requestStatus, StatusConnectError, StatusReplyError, type StatusRequestOptions } from './replication/statusClient.js';
export { requestPromotion, PromoteRequestError, type PromoteRequestOptions, type PromoteReply } from './replication/promoteClient.js';
export { requestPack, PackRequestError, PackRefusedError, DEFAULT_PACK_TIMEOUT_MS, type PackRequestOptions, type PackReply } from './replication/packClient.js';
export type { NodeStatus, SessionStatusEntry, StatusHeartbeat, UpstreamStatus } from './replication/nodeStatus.js';
export { rewindStorage, type RewindOptions, type RewindResult } from './failover/rewind.js';
export { PromotionRefusedError, type PromoteOptions } from './failover/promote.js';
export { FailoverHistory } from './failover/history.js';
export { GenerationHistory, type GenerationEntry } from './failover/generations.js';
export { HashChain, type ChainHead } from './failover/hashChain.js';
export { parseAddress, formatAddress } from './replication/address.js';
export { jsonLogger, silentLogger, type Logger } from './replication/log.js';
export type { Clock } from './ports/clock.js';
export { seededRandom, type Random } from './ports/random.js';
export type { ByteStream, Transport, ReplicationAddress, Listener } from './ports/transport.js';
export { socketTransport } from './node/socketTransport.js';
export { tlsTransport, type TlsOptions, type TlsTransportOptions } from './node/tlsTransport.js';
export { serveMetrics, type MetricsServer } from './node/metricsServer.js';
export { ReplicationMetrics } from './replication/metrics.js';
export { systemClock } from './node/clock.js';
export { tuneCollector, DEFAULT_MARKING_START_PERCENT } from './node/collector.js';
export * from './errors.js';
