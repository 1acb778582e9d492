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
export { Z64, newTid, tidFromTime, tidToSeconds, tidToString, tidPlusOne } from './storage/timestamp.js';
export { Primary, type PrimaryOptions } from './replication/primary.js';
export { Secondary, type SecondaryOptions, type SecondaryStatus, type SecondaryProtocol } from './replication/secondary.js';
export { ReadOnlyStorage } from './replication/readOnlyStorage.js';
export { parseAddress, formatAddress } from './replication/address.js';
export { jsonLogger, silentLogger, type Logger } from './replication/log.js';
export type { Clock } from './ports/clock.js';
export { seededRandom, type Random } from './ports/random.js';
export type { ByteStream, Transport, ReplicationAddress, Listener } from './ports/transport.js';
export { socketTransport } from './node/socketTransport.js';
export { systemClock } from './node/clock.js';
export * from './errors.js';
