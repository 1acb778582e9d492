// Typed errors: one class per failure, each with a stable `name`, structured
// fields and an optional `cause`. Callers branch on `instanceof` or `name`.

/** Base class of every error this library raises on purpose. */
export class ZrsError extends Error {
  override name = 'ZrsError';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/**
 * A secondary cannot replicate on, and no retry would change that (a
 * configuration error, a link lost with its chain): its connection machine
 * stops in `failed` (machines/secondaryConnection.ts, haltsReplication).
 */
export class ReplicationHaltedError extends ZrsError {
  override name = 'ReplicationHaltedError';
  readonly haltsReplication = true;
}

/** A storage file that does not exist, opened without `create`. */
export class NoSuchStorageError extends ZrsError {
  override name = 'NoSuchStorageError';
  constructor(
    readonly path: string,
    /** What a library caller can do about it (a command line says its own). */
    hint: string,
  ) {
    super(`${path}: no such storage file${hint ? ` (${hint})` : ''}`);
  }
}

const hex = (b: Uint8Array | null | undefined): string =>
  b ? Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex') : 'none';

/** The object changed since the revision the writer read (ZODB's ConflictError). */
export class ConflictError extends ZrsError {
  override name = 'ConflictError';
  constructor(
    readonly oid: Buffer,
    readonly expectedSerial: Buffer,
    readonly currentSerial: Buffer,
  ) {
    super(
      `conflict on oid 0x${hex(oid)}: expected serial 0x${hex(expectedSerial)}, current serial 0x${hex(currentSerial)}`,
    );
  }
}

/** A write was attempted on a read-only storage (a secondary, or one opened readOnly). */
export class ReadOnlyError extends ZrsError {
  override name = 'ReadOnlyError';
  constructor(readonly operation: string, readonly path?: string) {
    super(`${operation} refused: storage${path ? ` ${path}` : ''} is read-only`);
  }
}

/** No revision of the object exists (ZODB's POSKeyError). */
export class POSKeyError extends ZrsError {
  override name = 'POSKeyError';
  constructor(readonly oid: Buffer, readonly tid?: Buffer) {
    super(`no data for oid 0x${hex(oid)}${tid ? ` at tid 0x${hex(tid)}` : ''}`);
  }
}

/** A two-phase-commit method was called in the wrong state or with the wrong transaction. */
export class StorageTransactionError extends ZrsError {
  override name = 'StorageTransactionError';
}

/** The data file is not a FileStorage, or a structure inside it is damaged. */
export class CorruptedDataError extends ZrsError {
  override name = 'CorruptedDataError';
  constructor(readonly path: string, readonly position: number, readonly detail: string, options?: { cause?: unknown }) {
    super(`${path}: corrupted data at position ${position}: ${detail}`, options);
  }
}

/** The file's magic is not one this library reads. */
export class FormatError extends ZrsError {
  override name = 'FormatError';
  constructor(readonly path: string, detail: string) {
    super(`${path}: ${detail}`);
  }
}

/** Another process (ours or Python ZODB's) holds the storage's lock file. */
export class LockedError extends ZrsError {
  override name = 'LockedError';
  constructor(readonly lockPath: string, options?: { cause?: unknown }) {
    super(`could not lock ${lockPath}: the storage is open for writing elsewhere (another process, or another open storage in this one)`, options);
  }
}

/** An undo cannot be applied because a later transaction changed the same object. */
export class UndoError extends ZrsError {
  override name = 'UndoError';
  constructor(message: string, readonly oid?: Buffer) {
    super(message);
  }
}

/** The storage was closed. */
export class StorageClosedError extends ZrsError {
  override name = 'StorageClosedError';
  constructor(readonly path: string) {
    super(`storage ${path} is closed`);
  }
}

/**
 * Writing a transaction to the data file failed (e.g. `code` 'ENOSPC', a full
 * disk). Nothing of it stays in the file: the storage cut it back to
 * `position`. Recoverable: abort the transaction; later commits may succeed.
 */
export class StorageWriteError extends ZrsError {
  override name = 'StorageWriteError';
  /** The operating system's error code, when it gave one. */
  readonly code: string | undefined;
  constructor(readonly path: string, readonly position: number, options: { cause: unknown }) {
    const cause = options.cause as { message?: string; code?: unknown } | null;
    super(`${path}: could not write transaction at position ${position}: ${cause?.message ?? String(cause)}`, options);
    this.code = typeof cause?.code === 'string' ? cause.code : undefined;
  }
}

/** Bad input to the pickle reader or writer; nothing is ever imported or called. */
export class PickleError extends ZrsError {
  override name = 'PickleError';
  constructor(message: string, readonly position?: number) {
    super(position === undefined ? message : `${message} (at byte ${position})`);
  }
}

/** A frame announced a length over the configured limit. */
export class FrameTooLargeError extends ZrsError {
  override name = 'FrameTooLargeError';
  constructor(readonly length: number, readonly limit: number) {
    super(`message too large: ${length} bytes, limit ${limit}`);
  }
}

/** A wire message could not be decoded or was not expected in this state. */
export class ProtocolError extends ZrsError {
  override name = 'ProtocolError';
}

/** The running checksum a primary sent does not match the one computed locally. */
export class ChecksumMismatchError extends ZrsError {
  override name = 'ChecksumMismatchError';
  constructor(readonly expected: Buffer, readonly received: Buffer, readonly tid?: Buffer) {
    super(
      `checksum mismatch${tid ? ` at tid 0x${hex(tid)}` : ''}: computed ${hex(expected)}, primary sent ${hex(received)}`,
    );
  }
}

/** A blob file a record refers to is missing on the side that must send it. */
export class BlobMissingError extends ZrsError {
  override name = 'BlobMissingError';
  constructor(readonly oid: Buffer, readonly tid: Buffer, readonly path: string) {
    super(`blob for oid 0x${hex(oid)} tid 0x${hex(tid)} is missing: ${path}`);
  }
}

/** A replication start tid newer than the primary's last transaction. */
export class TidTooHighError extends ZrsError {
  override name = 'TidTooHighError';
  constructor(readonly requested: Buffer, readonly last: Buffer) {
    super(`start tid 0x${hex(requested)} is newer than the last transaction 0x${hex(last)}`);
  }
}

/** A replication address string that cannot be parsed. */
export class AddressError extends ZrsError {
  override name = 'AddressError';
}

/** A TLS link could not be set up: a certificate did not verify, the peer spoke plain TCP, or a TLS setting is unusable. */
export class TlsHandshakeError extends ZrsError {
  override name = 'TlsHandshakeError';
  constructor(message: string, readonly peer: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/**
 * Synchronous replication: fewer secondaries than wanted acknowledged `tid`
 * within `timeoutMs`. The transaction stays committed on the primary.
 */
export class SyncReplicationTimeoutError extends ZrsError {
  override name = 'SyncReplicationTimeoutError';
  constructor(readonly tid: Buffer, readonly wanted: number, readonly got: number, readonly timeoutMs: number) {
    super(
      `transaction 0x${hex(tid)} is committed on the primary but only ${got} of ${wanted} secondaries acknowledged it within ${timeoutMs} ms`,
    );
  }
}

/** A wait for secondaries' acknowledgements ended because the primary closed. */
export class SyncReplicationAbortedError extends ZrsError {
  override name = 'SyncReplicationAbortedError';
  constructor(readonly tid: Buffer, readonly wanted: number, readonly got: number) {
    super(`wait for ${wanted} acknowledgements of transaction 0x${hex(tid)} ended by close (${got} received)`);
  }
}

/** An audit log file whose tail (or header) is truncated or fails its checksum. */
export class AuditLogDamagedError extends ZrsError {
  override name = 'AuditLogDamagedError';
  constructor(readonly path: string, readonly offset: number, readonly detail: string) {
    super(`${path}: audit log damaged at offset ${offset}: ${detail}`);
  }
}

/**
 * An offline rewind failed after its decision was recorded in the audit log
 * (and the cut part saved aside), part way through cutting: `step` names
 * what it was cutting (the steps before it are done).
 */
export class RewindIncompleteError extends ZrsError {
  override name = 'RewindIncompleteError';
  constructor(
    /** The last tid the rewind keeps, as recorded. */
    readonly forkTid: Buffer,
    /** What it was cutting when it failed: the data file, the cut blob files, the hash chain, the generations file. */
    readonly step: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/**
 * A secondary holds history its primary never had (for example an old primary
 * that comes back after a failover), or the same tid with different contents.
 * Never merged: rewind the secondary explicitly (rewindStorage / `zrs rewind`).
 */
export class DivergedHistoryError extends ZrsError {
  override name = 'DivergedHistoryError';
  constructor(
    /** The last tid both histories share (8 zero bytes when none). */
    readonly forkTid: Buffer,
    /** The local (secondary's) last tid. */
    readonly localTid: Buffer | null,
    /** The remote (primary's) last tid, when known. */
    readonly remoteTid: Buffer | null,
    readonly reason: string,
    options?: { cause?: unknown },
  ) {
    super(`diverged history: ${reason} (fork at tid 0x${hex(forkTid)}, local 0x${hex(localTid)}, remote 0x${hex(remoteTid)})`, options);
  }
}

/**
 * Run every step in order, also after one fails, then throw the first
 * failure (closing: a step that fails must not leave the later ones, such as
 * releasing a lock, undone).
 */
export async function runEach(steps: ReadonlyArray<() => unknown>): Promise<void> {
  let failure: { error: unknown } | null = null;
  for (const step of steps) {
    try {
      await step();
    } catch (error) {
      failure ??= { error };
    }
  }
  if (failure) throw failure.error;
}
