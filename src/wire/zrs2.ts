// zc.zrs 2.x replication messages as frame payloads (framing lives in framing.ts); no I/O.
// Control messages are protocol-1 'fast' pickles of (type, fields); data and blob blocks are raw.
// The md5 chain covers the start tid and every primary→secondary payload, never resetting.
import { createHash, type Hash } from 'node:crypto';
import { ChecksumMismatchError, PickleError, ProtocolError } from '../errors.js';
import { dumps, loads, PickleTuple, type PickleDict, type PickleValue } from './pickle.js';

/** The protocol names a secondary sends first; `zrs2.1` is required by primaries with blobs. */
export type Zrs2Protocol = 'zrs2.0' | 'zrs2.1';
export const ZRS2_PROTOCOLS: readonly Zrs2Protocol[] = ['zrs2.0', 'zrs2.1'];

/** zc.zrs sends blob files in blocks of this size; only the last block may be shorter. */
export const BLOB_BLOCK_SIZE_BYTES = 65_536;
export const TID_LENGTH_BYTES = 8;
export const OID_LENGTH_BYTES = 8;
export const MD5_LENGTH_BYTES = 16;

/** `('T', (tid, status, user, description, extension))`: a transaction begins. */
export interface TransactionMessage {
  type: 'T';
  tid: Buffer;
  /** ' ' (committed) or 'p' (kept by a pack). */
  status: string;
  user: Buffer;
  description: Buffer;
  extension: PickleDict;
}

/** `('S', (oid, tid, version, data_txn))`, followed by one raw data frame (empty = no data). */
export interface StoreMessage {
  type: 'S';
  oid: Buffer;
  tid: Buffer;
  /** Always '' (ZODB dropped versions). */
  version: string;
  /** The tid whose record holds this data (a resolved backpointer), or null. */
  dataTxn: Buffer | null;
}

/** `('B', (oid, tid, version, data_txn, blocks))`, then one data frame and `blocks` raw blob frames. */
export interface BlobStoreMessage extends Omit<StoreMessage, 'type'> {
  type: 'B';
  blocks: number;
}

/** `('C', (md5,))`, or `('C', ())` from ZRS primaries older than 2.2.3, which send no checksum (digest null; a secondary refuses it). */
export interface ChecksumMessage {
  type: 'C';
  digest: Buffer | null;
}

export type Zrs2Message = TransactionMessage | StoreMessage | BlobStoreMessage | ChecksumMessage;

/** How many blob frames a blob file of `sizeBytes` takes: ceil(size / 64 KiB), so 0 for an empty blob. */
export function blobBlockCount(sizeBytes: number): number {
  return Math.ceil(sizeBytes / BLOB_BLOCK_SIZE_BYTES);
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

/**
 * Most bytes of one control message, written or read. A `T` carries at
 * most 3 × 65,535 bytes of metadata as stored, but fast mode writes a
 * shared object out each time it is referenced, so an extension built to
 * share one list many times would otherwise grow without bound as it is
 * re-encoded; and a pickle read costs many times its size in memory.
 */
export const MAX_ZRS2_MESSAGE_BYTES = 16 * 1024 * 1024;

/**
 * The exact payload zc.zrs's primary sends for a control message.
 * @example encodeMessage({ type: 'C', digest: null }).toString('hex') // '2858010000004329742e'
 */
export function encodeMessage(message: Zrs2Message): Buffer {
  return dumps(new PickleTuple<PickleValue>([message.type, new PickleTuple(messageFields(message))]), {
    protocol: 1,
    fast: true,
    maxBytes: MAX_ZRS2_MESSAGE_BYTES,
  });
}

function messageFields(m: Zrs2Message): PickleValue[] {
  switch (m.type) {
    case 'T': return [m.tid, m.status, m.user, m.description, m.extension];
    case 'S': return [m.oid, m.tid, m.version, m.dataTxn];
    case 'B': return [m.oid, m.tid, m.version, m.dataTxn, m.blocks];
    case 'C': return m.digest === null ? [] : [m.digest];
  }
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/**
 * Control messages are small: the only open-ended part is the extension, which FileStorage caps at
 * 64 KiB (a u16 length), so these bounds admit any real extension while keeping hostile input cheap.
 * An extension may hold any picklable value (a datetime): what builds it is read as an inert
 * description (`objects`), so it is stored and sent on as it came; every other field is checked
 * for its plain type.
 */
const CONTROL_LOAD_LIMITS = { maxDepth: 64, maxStackItems: 65_536, maxMemoEntries: 65_536, maxLongBytes: 64, objects: true };

/** Decode one control-message payload. Throws `ProtocolError` (with the `PickleError` as cause). */
export function decodeMessage(payload: Uint8Array): Zrs2Message {
  const [type, fields] = envelope(loadControl(payload));
  switch (type) {
    case 'T': return decodeTransaction(fields);
    case 'S': return { type: 'S', ...decodeRecordHeader(fields, 4) };
    case 'B': return decodeBlobStore(fields);
    case 'C': return decodeChecksum(fields);
    default: throw new ProtocolError(`unknown zrs message type ${JSON.stringify(type)}`);
  }
}

function loadControl(payload: Uint8Array): PickleValue {
  try {
    return loads(payload, CONTROL_LOAD_LIMITS);
  } catch (cause) {
    if (cause instanceof PickleError) throw new ProtocolError(`undecodable zrs message: ${cause.message}`, { cause });
    throw cause;
  }
}

function envelope(value: PickleValue): [string, readonly PickleValue[]] {
  if (!(value instanceof PickleTuple) || value.length !== 2) throw new ProtocolError('zrs message is not a (type, fields) tuple');
  const [type, fields] = value.items;
  if (typeof type !== 'string' || !(fields instanceof PickleTuple)) throw new ProtocolError('zrs message is not a (str, tuple) pair');
  return [type, fields.items];
}

function decodeTransaction(f: readonly PickleValue[]): TransactionMessage {
  expectArity('T', f, 5);
  const [tid, status, user, description, extension] = f;
  if (!(extension instanceof Map)) throw new ProtocolError('T extension is not a dict');
  return {
    type: 'T',
    tid: fixedBytes('tid', tid, TID_LENGTH_BYTES),
    status: text('status', status),
    user: anyBytes('user', user),
    description: anyBytes('description', description),
    extension,
  };
}

function decodeRecordHeader(f: readonly PickleValue[], arity: number): Omit<StoreMessage, 'type'> {
  expectArity(arity === 4 ? 'S' : 'B', f, arity);
  const [oid, tid, version, dataTxn] = f;
  return {
    oid: fixedBytes('oid', oid, OID_LENGTH_BYTES),
    tid: fixedBytes('tid', tid, TID_LENGTH_BYTES),
    version: text('version', version),
    dataTxn: dataTxn === null ? null : fixedBytes('data_txn', dataTxn, TID_LENGTH_BYTES),
  };
}

function decodeBlobStore(f: readonly PickleValue[]): BlobStoreMessage {
  const header = decodeRecordHeader(f, 5);
  const blocks = f[4];
  if (typeof blocks !== 'number' || !Number.isSafeInteger(blocks) || blocks < 0) {
    throw new ProtocolError('B blocks is not a non-negative int');
  }
  return { type: 'B', ...header, blocks };
}

function decodeChecksum(f: readonly PickleValue[]): ChecksumMessage {
  if (f.length === 0) return { type: 'C', digest: null };
  expectArity('C', f, 1);
  return { type: 'C', digest: fixedBytes('md5', f[0], MD5_LENGTH_BYTES) };
}

function expectArity(type: string, fields: readonly PickleValue[], n: number): void {
  if (fields.length !== n) throw new ProtocolError(`${type} message has ${fields.length} fields, expected ${n}`);
}

function anyBytes(name: string, v: PickleValue | undefined): Buffer {
  if (!Buffer.isBuffer(v)) throw new ProtocolError(`${name} is not bytes`);
  return v;
}

function fixedBytes(name: string, v: PickleValue | undefined, length: number): Buffer {
  const b = anyBytes(name, v);
  if (b.length !== length) throw new ProtocolError(`${name} has ${b.length} bytes, expected ${length}`);
  return b;
}

function text(name: string, v: PickleValue | undefined): string {
  if (typeof v !== 'string') throw new ProtocolError(`${name} is not a str`);
  return v;
}

// ---------------------------------------------------------------------------------------------
// Checksum
// ---------------------------------------------------------------------------------------------

/**
 * zc.zrs's running md5: seeded with the 8-byte start tid the secondary sent, then fed every
 * primary→secondary payload (C messages included, length prefixes excluded). A C message carries
 * the digest of everything before it.
 * @example const sum = new Zrs2Checksum(startTid); sum.update(payload); sum.digest();
 */
export class Zrs2Checksum {
  private readonly hash: Hash;

  constructor(startTid: Uint8Array) {
    if (startTid.length !== TID_LENGTH_BYTES) throw new ProtocolError(`start tid has ${startTid.length} bytes, expected 8`);
    this.hash = createHash('md5').update(startTid);
  }

  update(payload: Uint8Array): this {
    this.hash.update(payload);
    return this;
  }

  /** The digest so far; the chain continues (digesting a copy leaves this hash open). */
  digest(): Buffer {
    return this.hash.copy().digest();
  }
}

// ---------------------------------------------------------------------------------------------
// Stream parser: payloads in, transaction-level events out
// ---------------------------------------------------------------------------------------------

interface RecordFields {
  oid: Buffer;
  tid: Buffer;
  version: string;
  dataTxn: Buffer | null;
  /** The record data; null for an empty data frame ("no data": an undone creation). */
  data: Buffer | null;
}

export type Zrs2Event =
  | { kind: 'begin'; tid: Buffer; status: string; user: Buffer; description: Buffer; extension: PickleDict }
  | ({ kind: 'record' } & RecordFields)
  | ({ kind: 'blob'; blocks: number } & RecordFields)
  | { kind: 'blobBlock'; oid: Buffer; tid: Buffer; index: number; blocks: number; last: boolean; block: Buffer }
  /** `checksum` was verified against the local chain; null when the primary sent none. */
  | { kind: 'commit'; tid: Buffer; checksum: Buffer | null };

export interface Zrs2StreamParserOptions {
  /** The tid the secondary sent (its lastTransaction); seeds the md5 and bounds the first tid. */
  startTid: Uint8Array;
  /** `zrs2.0` refuses B messages, as a zrs2.0 primary never sends them. Default `zrs2.1`. */
  protocol?: Zrs2Protocol;
  /** Most blob blocks one B message may announce (default 2^24, i.e. 1 TiB). */
  maxBlobBlocks?: number;
  /** Compare each C message's digest (default true; false only in mutation checks, a deliberate bug). */
  verifyChecksum?: boolean;
}

type ParserState =
  | { at: 'between-transactions' }
  | { at: 'in-transaction'; tid: Buffer }
  | { at: 'record-data'; tid: Buffer; header: StoreMessage | BlobStoreMessage }
  | { at: 'blob-blocks'; tid: Buffer; header: BlobStoreMessage; index: number }
  | { at: 'failed'; error: Error };

/**
 * Turns the primary's payloads, in order, into events. Pure: no I/O, no clock. Every payload
 * (keep-alives included) feeds the md5 chain before the next C is checked. After any error the
 * parser stays failed: the connection must be dropped and restarted from the last committed tid.
 * Event buffers are copies, safe to keep.
 * @example const p = new Zrs2StreamParser({ startTid }); for (const f of payloads) handle(p.push(f));
 */
export class Zrs2StreamParser {
  private state: ParserState = { at: 'between-transactions' };
  private readonly checksum: Zrs2Checksum;
  private lastTid: Buffer;
  private readonly protocol: Zrs2Protocol;
  private readonly maxBlobBlocks: number;
  private readonly verifyChecksum: boolean;

  constructor(options: Zrs2StreamParserOptions) {
    this.checksum = new Zrs2Checksum(options.startTid);
    this.lastTid = Buffer.from(options.startTid);
    this.protocol = options.protocol ?? 'zrs2.1';
    this.maxBlobBlocks = options.maxBlobBlocks ?? 1 << 24;
    this.verifyChecksum = options.verifyChecksum ?? true;
  }

  /** The last committed tid (the start tid until the first commit): where to resume after a failure. */
  get lastCommittedTid(): Buffer {
    return Buffer.from(this.lastTid);
  }

  /** True between a T and its C, when a dropped connection loses a partial transaction. */
  get inTransaction(): boolean {
    return this.state.at !== 'between-transactions' && this.state.at !== 'failed';
  }

  push(payload: Uint8Array): Zrs2Event[] {
    if (this.state.at === 'failed') throw new ProtocolError('stream parser already failed', { cause: this.state.error });
    try {
      return this.step(this.state, payload);
    } catch (error) {
      this.state = { at: 'failed', error: error as Error };
      throw error;
    }
  }

  private step(state: Exclude<ParserState, { at: 'failed' }>, payload: Uint8Array): Zrs2Event[] {
    switch (state.at) {
      case 'record-data': return [this.recordData(state.tid, state.header, payload)];
      case 'blob-blocks': return [this.blobBlock(state, payload)];
      default: return this.control(state, payload);
    }
  }

  /** An empty payload where a control message is due is a keep-alive (framing's convention). */
  private control(state: { at: 'between-transactions' } | { at: 'in-transaction'; tid: Buffer }, payload: Uint8Array): Zrs2Event[] {
    if (payload.length === 0) return [];
    // Record data may be as large as the stream allows; a control message never is, and decoded it costs many times its size.
    if (payload.length > MAX_ZRS2_MESSAGE_BYTES) throw new ProtocolError(`control message of ${payload.length} bytes, more than ${MAX_ZRS2_MESSAGE_BYTES}`);
    const message = decodeMessage(payload);
    if (state.at === 'between-transactions') return [this.begin(message, payload)];
    if (message.type === 'C') return [this.commit(state.tid, message, payload)];
    if (message.type === 'T') throw new ProtocolError('T message before the previous transaction committed');
    this.recordHeader(state.tid, message, payload);
    return [];
  }

  private begin(m: Zrs2Message, payload: Uint8Array): Zrs2Event {
    if (m.type !== 'T') throw new ProtocolError(`${m.type} message outside a transaction`);
    if (Buffer.compare(m.tid, this.lastTid) <= 0) {
      throw new ProtocolError(`tid 0x${m.tid.toString('hex')} is not after 0x${this.lastTid.toString('hex')}`);
    }
    if (m.status !== ' ' && m.status !== 'p') throw new ProtocolError(`unexpected transaction status ${JSON.stringify(m.status)}`);
    this.checksum.update(payload);
    this.state = { at: 'in-transaction', tid: m.tid };
    const { tid, status, user, description, extension } = m;
    return { kind: 'begin', tid, status, user, description, extension };
  }

  /** S and B produce no event yet: the record is complete with its data frame. */
  private recordHeader(tid: Buffer, m: StoreMessage | BlobStoreMessage, payload: Uint8Array): void {
    if (!m.tid.equals(tid)) throw new ProtocolError(`record tid 0x${m.tid.toString('hex')} in transaction 0x${tid.toString('hex')}`);
    if (m.version !== '') throw new ProtocolError('versions are not supported');
    if (m.type === 'B') this.checkBlobHeader(m);
    this.checksum.update(payload);
    this.state = { at: 'record-data', tid, header: m };
  }

  private checkBlobHeader(m: BlobStoreMessage): void {
    if (this.protocol === 'zrs2.0') throw new ProtocolError('B message on a zrs2.0 connection');
    if (m.blocks > this.maxBlobBlocks) throw new ProtocolError(`blob of ${m.blocks} blocks exceeds the limit`);
  }

  private recordData(tid: Buffer, header: StoreMessage | BlobStoreMessage, payload: Uint8Array): Zrs2Event {
    this.checksum.update(payload);
    const fields = { oid: header.oid, tid: header.tid, version: header.version, dataTxn: header.dataTxn };
    const data = payload.length === 0 ? null : Buffer.from(payload);
    if (header.type === 'S') {
      this.state = { at: 'in-transaction', tid };
      return { kind: 'record', ...fields, data };
    }
    this.state = header.blocks === 0 ? { at: 'in-transaction', tid } : { at: 'blob-blocks', tid, header, index: 0 };
    return { kind: 'blob', ...fields, data, blocks: header.blocks };
  }

  private blobBlock(state: Extract<ParserState, { at: 'blob-blocks' }>, payload: Uint8Array): Zrs2Event {
    if (payload.length > BLOB_BLOCK_SIZE_BYTES) throw new ProtocolError(`blob block of ${payload.length} bytes exceeds 64 KiB`);
    this.checksum.update(payload);
    const { header, index, tid } = state;
    const last = index + 1 === header.blocks;
    this.state = last ? { at: 'in-transaction', tid } : { ...state, index: index + 1 };
    return { kind: 'blobBlock', oid: header.oid, tid, index, blocks: header.blocks, last, block: Buffer.from(payload) };
  }

  private commit(tid: Buffer, m: ChecksumMessage, payload: Uint8Array): Zrs2Event {
    const computed = this.checksum.digest();
    if (this.verifyChecksum) {
      // Nothing is committed unchecked (zc.zrs's secondary, checking checksums as it does by default, fails here too).
      if (m.digest === null) throw new ProtocolError(`C message without a checksum for tid ${tid.toString('hex')} (a ZRS primary older than 2.2.3 sends none): refused, every transaction is checked`);
      if (!m.digest.equals(computed)) throw new ChecksumMismatchError(computed, m.digest, tid);
    }
    this.checksum.update(payload);
    this.lastTid = tid;
    this.state = { at: 'between-transactions' };
    return { kind: 'commit', tid, checksum: m.digest };
  }
}
