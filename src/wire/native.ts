// Native protocol `zrs-ts/<version>`: name classification, per-phase limits, msgpack codec of NativeMessage; no I/O.
// Invariants: decoding trusts nothing (no ext types, every field checked, else ProtocolError); tids/oids are 8 bytes.

import { hash } from 'node:crypto';
import { Packr, Unpackr, RESERVE_START_SPACE } from 'msgpackr';
import { ProtocolError } from '../errors.js';
import type { PackBlobFiles, PackProgress, PackReport } from '../storage/pack.js';
import { FRAME_HEADER_BYTES } from './framing.js';

// ---------------------------------------------------------------------------------------------
// Protocol names

/** The native protocol version this code speaks. */
export const NATIVE_PROTOCOL_VERSION = 1;

/** Versions this code can speak (offered in an 'unsupported-version' refusal). */
export const SUPPORTED_NATIVE_VERSIONS: readonly number[] = [NATIVE_PROTOCOL_VERSION];

/** Prefix of every native protocol name; the version follows in decimal. */
export const NATIVE_PROTOCOL_PREFIX = 'zrs-ts/';

/**
 * Limit for the first frame a primary reads from a peer (the protocol name), in bytes. zc.zrs
 * allows 8; `zrs-ts/1` is exactly 8 bytes, so a zc.zrs primary answers "Invalid protocol" to it.
 */
export const PROTOCOL_NAME_MAX_BYTES = 16;

/** Limit for the native `hello` (frame 2 from a secondary), in bytes. */
export const HELLO_MAX_BYTES = 64 * 1024;

/** Limit for each frame a native secondary sends after `hello` (acks, keep-alives), in bytes. */
export const SECONDARY_MESSAGE_MAX_BYTES = 4 * 1024;

/** Limit for frames a secondary reads before `welcome`/`refuse` has arrived, in bytes. */
export const HANDSHAKE_REPLY_MAX_BYTES = 64 * 1024;

/**
 * Default limit for frames a secondary reads after `welcome`, in bytes (configurable). A record
 * over WHOLE_TXN_MAX_BYTES travels in blocks when largeRecords was granted; otherwise whole, in one
 * `record` frame, so this bounds the largest record a peer without blocks can replicate.
 */
export const DEFAULT_STREAM_MAX_FRAME_BYTES = 256 * 1024 * 1024;

/** Bytes of a tid or an oid. */
export const TID_BYTES = 8;
/** Bytes of the `check` some messages carry (see contentCheck). */
const CONTENT_CHECK_BYTES = 8;
/** Bytes of an oid. */
export const OID_BYTES = 8;

/** Largest `blob-block` payload; every block but the last of a blob has exactly this size. */
export const BLOB_BLOCK_BYTES = 64 * 1024;

/** Largest `record-block` payload; every block but the last of a large record has exactly this size. */
export const RECORD_BLOCK_BYTES = 1024 * 1024;

/** Largest number of entries in a hello's generation history. */
export const MAX_GENERATION_HISTORY = 1024;

/** Largest `refuse.message`, in UTF-16 code units. */
export const MAX_REFUSAL_MESSAGE_CHARS = 4096;

/** Limit for the `status` reply a status client reads, in bytes. */
export const STATUS_REPLY_MAX_BYTES = 1024 * 1024;

/** Limit for the `promoted` / `promote-refused` reply an admin client reads, in bytes. */
export const PROMOTE_REPLY_MAX_BYTES = 64 * 1024;

/** Limit for each frame of the answer to a `pack-request` (`pack-progress`, `packed`, `pack-refused`), in bytes. */
export const PACK_REPLY_MAX_BYTES = 64 * 1024;

/** Most sessions listed in one `status` (`sessionCount` still counts them all). */
export const MAX_STATUS_SESSIONS = 1024;

/** Largest text field of a `status` (name, address, peer, state, protocol), in UTF-16 code units. */
export const MAX_STATUS_TEXT_CHARS = 1024;

const ZRS20 = Buffer.from('zrs2.0', 'latin1');
const ZRS21 = Buffer.from('zrs2.1', 'latin1');
const NATIVE_PREFIX_BYTES = Buffer.from(NATIVE_PROTOCOL_PREFIX, 'latin1');
const NATIVE_VERSION_DIGITS_MAX = 6;

/** What a peer's first frame says it speaks. */
export type ProtocolClass =
  | { kind: 'native'; version: number; supported: boolean }
  | { kind: 'zrs2'; version: '2.0' | '2.1' }
  | { kind: 'unknown' };

/**
 * The first frame a native secondary sends: `zrs-ts/<version>` in ASCII.
 * @example stream.write(encodeFrame(nativeProtocolName())); // "zrs-ts/1"
 */
export function nativeProtocolName(version: number = NATIVE_PROTOCOL_VERSION): Buffer {
  if (!Number.isSafeInteger(version) || version < 1 || String(version).length > NATIVE_VERSION_DIGITS_MAX) {
    throw new RangeError(`native protocol version must be 1..999999, got ${version}`);
  }
  return Buffer.from(`${NATIVE_PROTOCOL_PREFIX}${version}`, 'latin1');
}

/**
 * Classifies a peer's first frame. A native name with a version this code does not speak is
 * `{ kind: 'native', supported: false }`: answer it with a `refuse` of code
 * 'unsupported-version' (encoded in v1, which every version keeps decodable), then close.
 *
 * @example
 * classifyProtocolName(Buffer.from('zrs2.1')); // { kind: 'zrs2', version: '2.1' }
 * classifyProtocolName(Buffer.from('zrs-ts/2')); // { kind: 'native', version: 2, supported: false }
 */
export function classifyProtocolName(bytes: Uint8Array): ProtocolClass {
  const name = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (name.equals(ZRS20)) return { kind: 'zrs2', version: '2.0' };
  if (name.equals(ZRS21)) return { kind: 'zrs2', version: '2.1' };
  const digits = name.byteLength - NATIVE_PREFIX_BYTES.byteLength;
  if (digits < 1 || digits > NATIVE_VERSION_DIGITS_MAX) return { kind: 'unknown' };
  if (!name.subarray(0, NATIVE_PREFIX_BYTES.byteLength).equals(NATIVE_PREFIX_BYTES)) return { kind: 'unknown' };
  let version = 0;
  for (let i = NATIVE_PREFIX_BYTES.byteLength; i < name.byteLength; i++) {
    const digit = (name[i] ?? 0) - 0x30;
    if (digit < 0 || digit > 9) return { kind: 'unknown' };
    version = version * 10 + digit;
  }
  if (version === 0 || name[NATIVE_PREFIX_BYTES.byteLength] === 0x30) return { kind: 'unknown' }; // no leading zeros
  return { kind: 'native', version, supported: SUPPORTED_NATIVE_VERSIONS.includes(version) };
}

// ---------------------------------------------------------------------------------------------
// Messages

/** One entry of a generation history: generation `generation` began after tid `startTid`. */
export interface GenerationEntry {
  generation: number;
  startTid: Buffer;
}

/** Head of a secondary's hash chain over its history (reserved; may be absent). */
export interface ChainHead {
  tid: Buffer;
  hash: Buffer;
}

/** Options a secondary asks for. */
export interface HelloOptions {
  blobs: boolean;
  compression?: 'none';
  /** The secondary applies `txns` messages (whole transactions in FileStorage bytes). */
  rawTxns?: boolean;
  /** The secondary checks `txns` runs by their hash-chain links (docs/PROTOCOL.md, Checksum). */
  txnLinks?: boolean;
  /** The secondary takes the segmented checksum rule (docs/PROTOCOL.md, Checksum). */
  segmentedChecksum?: boolean;
  /** The secondary takes `large-record` messages (a record's data in `record-block`s). */
  largeRecords?: boolean;
}

/** Options a primary granted. */
export interface AcceptedOptions {
  blobs: boolean;
  compression: 'none';
  /** `txns` messages may follow (only when the hello asked for them). */
  rawTxns?: boolean;
  /** `txns` runs carry `prevLink` and the checksum covers their links instead of their bytes (only with rawTxns, when asked for). */
  txnLinks?: boolean;
  /** The stream's checksum follows the segmented rule (only when asked for). */
  segmentedChecksum?: boolean;
  /** `large-record` messages may follow (only when asked for). */
  largeRecords?: boolean;
}

/** Secondary -> primary, frame 2: where to start and what history the secondary holds. */
export interface HelloMessage {
  type: 'hello';
  /** The secondary's last tid (8 zero bytes when empty); the stream starts after it. */
  startTid: Buffer;
  /** Oldest first; generations strictly increase, start tids never decrease. */
  generations: GenerationEntry[];
  chainHead?: ChainHead;
  /** Optional: the secondary's links at a few older tids (newest first), so a primary can find the fork point. */
  chainSamples?: ChainHead[];
  options: HelloOptions;
  /**
   * Optional: the secondary node's id (NODE_ID_BYTES, random per open). A
   * node that replicates, directly or through others, from that node refuses
   * it (`loop`). Outside the content check, as the upstream paths.
   */
  nodeId?: Buffer;
}

/** Secondary -> primary: every transaction up to and including `tid` is durably applied. */
export interface AckMessage {
  type: 'ack';
  tid: Buffer;
}

/** Primary -> secondary: handshake accepted; transactions after hello.startTid follow. */
export interface WelcomeMessage {
  type: 'welcome';
  lastTid: Buffer;
  generation: GenerationEntry;
  /** Optional: the primary's whole generation history, oldest first; the secondary adopts it. */
  generations?: GenerationEntry[];
  options: AcceptedOptions;
  /**
   * Optional: the session heartbeats every this many ms while live and idle
   * (absent: it does not). The secondary may time the link out on silence.
   * Outside the content check: older peers check a welcome without it.
   */
  heartbeatIntervalMs?: number;
  /** Optional: the serving node's upstream path (see UpstreamPath). Outside the content check. */
  upstreamPath?: Buffer[];
}

/** Why a primary refused a handshake. */
export type RefuseCode =
  | 'tid-too-high'
  | 'bad-tid'
  | 'diverged'
  | 'unsupported-version'
  | 'blobs-unavailable'
  | 'loop'
  | 'internal';

/** Every RefuseCode, for validation and exhaustive tests. */
export const REFUSE_CODES: readonly RefuseCode[] = [
  'tid-too-high',
  'bad-tid',
  'diverged',
  'unsupported-version',
  'blobs-unavailable',
  'loop',
  'internal',
];

/** Primary -> secondary, then close: handshake refused. */
export interface RefuseMessage {
  type: 'refuse';
  code: RefuseCode;
  message: string;
  /** For 'diverged': the last tid both histories share. */
  forkTid?: Buffer;
  /** Optional: the primary's last tid when it refused (sent with 'diverged' and 'tid-too-high'). */
  lastTid?: Buffer;
  /** For 'unsupported-version': the native versions the primary speaks. */
  supportedVersions?: number[];
  /**
   * Optional, with 'diverged': the primary's current generation. The refused
   * node notes its number as seen, so a later promotion of it (forced) starts
   * a generation past it instead of one with the same number.
   */
  generation?: GenerationEntry;
}

/** FileStorage transaction status as replicated: ' ' committed, 'p' packed. */
export type TxnStatus = ' ' | 'p';

/** One record carried inside a `txn` message (the inline form). */
export interface InlineRecord {
  oid: Buffer;
  /** Backpointer target when the primary's record is a backpointer, else null. */
  dataTxn: Buffer | null;
  /** Resolved data (a view into the frame), or null for "no data". */
  data: Buffer | null;
}

/** Primary -> secondary: a transaction begins. */
export interface TxnMessage {
  type: 'txn';
  tid: Buffer;
  status: TxnStatus;
  user: Buffer;
  description: Buffer;
  /** The extension exactly as stored (pickled bytes), so the secondary's file stays identical. */
  extension: Buffer;
  /**
   * Inline form: every record of a transaction without blobs, in file order;
   * no `record` messages follow, only `commit`. Absent: `record` messages follow.
   */
  records?: InlineRecord[];
}

/**
 * Primary -> secondary: `count` consecutive committed transactions exactly as
 * the primary's data file holds them (FileStorage bytes, header to trailer),
 * each with status ' ', no backpointers and no blobs to transfer; a `commit`
 * with the checksum follows. The secondary rewrites the file positions inside
 * (record tloc and prev) for its own file. `bytes` is a view into the frame.
 */
export interface TxnsMessage {
  type: 'txns';
  count: number;
  /** The tid of the last transaction in `bytes` (the `commit` closes it). */
  lastTid: Buffer;
  /** With `txnLinks`: the primary's hash-chain link before the first transaction in `bytes`. */
  prevLink?: Buffer;
  bytes: Buffer;
}

/** Primary -> secondary: one data record of the current transaction. */
export interface RecordMessage {
  type: 'record';
  oid: Buffer;
  /** Backpointer target when the primary's record is a backpointer, else null. */
  dataTxn: Buffer | null;
  /** Resolved record data (a view into the frame), or null for "no data" (an undone creation). */
  data: Buffer | null;
}

/**
 * Primary -> secondary: one data record of the current transaction whose
 * data, `size` bytes, follows in `record-block` messages (only after a
 * welcome that granted largeRecords). It stands where a `record` would.
 */
export interface LargeRecordMessage {
  type: 'large-record';
  oid: Buffer;
  /** Backpointer target when the primary's record is a backpointer, else null. */
  dataTxn: Buffer | null;
  /** Bytes of the record's data, at least 1. */
  size: number;
}

/** Primary -> secondary: the next 1..RECORD_BLOCK_BYTES bytes of the current large record's data (a view). */
export interface RecordBlockMessage {
  type: 'record-block';
  bytes: Buffer;
}

/** Primary -> secondary: the preceding record of `oid` has a blob of `size` bytes; blocks follow. */
export interface BlobMessage {
  type: 'blob';
  oid: Buffer;
  size: number;
}

/** Primary -> secondary: the next 1..BLOB_BLOCK_BYTES bytes of the current blob (a view). */
export interface BlobBlockMessage {
  type: 'blob-block';
  bytes: Buffer;
}

/** Primary -> secondary: the transaction is complete; checksum of the stream before this frame. */
export interface CommitMessage {
  type: 'commit';
  checksum: Buffer;
  /** Optional: the primary's hash-chain link at this transaction (sent for packed ones, whose content no longer gives it). */
  link?: Buffer;
}

/** Primary -> secondary, when idle: liveness and lag information. */
export interface HeartbeatMessage {
  type: 'heartbeat';
  lastTid: Buffer;
  /** The primary's (injected) clock in ms. */
  clockMs: number;
  /** Optional: the sender's current generation, announced when it started one (a promotion) to sessions it kept. */
  generation?: GenerationEntry;
  /** Optional: the sender's upstream path (see UpstreamPath), current. Outside the content check. */
  upstreamPath?: Buffer[];
}

/** Bytes of a node id. */
export const NODE_ID_BYTES = 8;
/** Most node ids an upstream path carries: a loop longer than this is not seen. */
export const MAX_UPSTREAM_PATH = 64;

/** Status client -> node, frame 2 instead of `hello`: answer with one `status`, then close. */
export interface StatusRequestMessage {
  type: 'status-request';
}

/**
 * Admin client -> node, frame 2 instead of `hello`: promote this secondary to
 * primary, answer with one `promoted` or `promote-refused`, then close.
 */
export interface PromoteRequestMessage {
  type: 'promote-request';
  /** Promote even while connected to a live primary, or while diverged. */
  force: boolean;
}

/** Node -> admin client, then close: the secondary is now a primary. */
export interface PromotedMessage {
  type: 'promoted';
  /** The generation it started: `startTid` is its last tid, the tid the new history starts after. */
  generation: GenerationEntry;
  /** Downstream replication sessions it kept serving through the promotion. */
  sessionsKept: number;
}

/** Why a promote request was not carried out. */
export type PromoteRefusalCode = 'already-primary' | 'refused' | 'not-promotable' | 'failed';

/** Every PromoteRefusalCode, for validation. */
export const PROMOTE_REFUSAL_CODES: readonly PromoteRefusalCode[] = ['already-primary', 'refused', 'not-promotable', 'failed'];

/** Node -> admin client, then close: the promote request was not carried out. */
export interface PromoteRefusedMessage {
  type: 'promote-refused';
  code: PromoteRefusalCode;
  message: string;
}

/**
 * Admin client -> node, frame 2 instead of `hello`: pack this node's own
 * data file to `time`, sending `pack-progress` while it packs, then one
 * `packed` or `pack-refused`, then close.
 */
export interface PackRequestMessage {
  type: 'pack-request';
  /** The pack time, in seconds since the epoch (a float; > 0). */
  time: number;
  /** Garbage-collect: also remove the objects the root no longer reached at the pack time. */
  gc: boolean;
}

/** The passes of a pack, in order (`references` only with garbage collection). */
export const PACK_STEPS = ['index', 'references', 'copy'] as const satisfies readonly PackProgress['step'][];

/** Node -> admin client, about once a second while a requested pack runs: which pass, and how far into it. */
export interface PackProgressMessage extends PackProgress {
  type: 'pack-progress';
}

export type { PackBlobFiles };

/** Every PackBlobFiles, for validation. */
export const PACK_BLOB_FILES: readonly PackBlobFiles[] = ['none', 'deleted', 'kept'];

/** Node -> admin client, then close: the pack ended, with FileStorage.pack's report. */
export interface PackedMessage extends PackReport {
  type: 'packed';
}

/**
 * Why a pack request was not carried out: `refused` (a pack time no tid
 * names), `not-packable` (a node that takes no pack requests),
 * `gc-refused` (garbage collection refused: a record it cannot read, a
 * reference to an object with no revision at the pack time; nothing
 * changed, and a pack without it reads no references), `failed` (anything
 * else: a pack under way already, a rewind, the node closing).
 */
export type PackRefusalCode = 'refused' | 'not-packable' | 'gc-refused' | 'failed';

/** Every PackRefusalCode, for validation. */
export const PACK_REFUSAL_CODES: readonly PackRefusalCode[] = ['refused', 'not-packable', 'gc-refused', 'failed'];

/** Node -> admin client, then close: the pack was not carried out (see PackRefusalCode). */
export interface PackRefusedMessage {
  type: 'pack-refused';
  code: PackRefusalCode;
  message: string;
}

/** The last heartbeat a secondary received from its primary. */
export interface StatusHeartbeat {
  /** The primary's last tid, as announced. */
  lastTid: Buffer;
  /** The primary's clock when it sent the heartbeat (not comparable with this node's clock). */
  clockMs: number;
  /** This node's clock when the heartbeat arrived. */
  receivedMs: number;
}

/** A secondary's view of its upstream (the primary or secondary it replicates from). */
export interface UpstreamStatus {
  address: string;
  /** Protocol name the secondary speaks (`zrs-ts/1`, `zrs2.1` …). */
  protocol: string;
  /** The connection machine's state, e.g. `connected.replicating`, `backoff`. */
  state: string;
  /** The newest tid the upstream announced (welcome or heartbeat) or sent, or null. */
  primaryLastTid: Buffer | null;
  lastHeartbeat: StatusHeartbeat | null;
  /** Time of `primaryLastTid` minus time of this node's last tid, in seconds (>= 0); null when unknown. */
  lagSeconds: number | null;
  /** While not connected, why the last attempt or connection ended; else null (and null from older nodes, which send none). */
  lastError: string | null;
}

/** One connected downstream session, as the serving node sees it. */
export interface SessionStatusEntry {
  peer: string;
  protocol: string | null;
  state: string;
  lastSentTid: Buffer | null;
  ackedTid: Buffer | null;
  /** The tid the secondary said it holds when its session started; null before that (and from older nodes, which send none). */
  startTid: Buffer | null;
  bytesSent: number;
}

/** What a node says about itself: `Primary.status()`, `Secondary.status()` and the `status` message. */
export interface NodeStatus {
  role: 'primary' | 'secondary';
  name: string | null;
  /** The node's last durable tid (8 zero bytes when empty). */
  lastTid: Buffer;
  /** The time in `lastTid`, in seconds since the epoch (ZODB's TimeStamp.timeTime()); null when empty. */
  lastTimeSeconds: number | null;
  /** Bytes of the durable part of the data file. */
  fileSize: number;
  /** The node's clock when the status was taken, in ms. */
  clockMs: number;
  /** The node's current generation, when it knows one. */
  generation?: GenerationEntry;
  /** For a secondary: its upstream; null on a primary. */
  upstream: UpstreamStatus | null;
  /** Connected downstream sessions (at most MAX_STATUS_SESSIONS). */
  sessions: SessionStatusEntry[];
  /** Every connected session, including any not listed. */
  sessionCount: number;
}

/** Node -> status client, then close: the answer to `status-request`. */
export interface StatusMessage extends NodeStatus {
  type: 'status';
}

/** Messages a secondary sends. */
export type SecondaryMessage = HelloMessage | AckMessage | StatusRequestMessage | PromoteRequestMessage | PackRequestMessage;

/** Messages a primary sends. */
export type PrimaryMessage =
  | WelcomeMessage
  | RefuseMessage
  | TxnMessage
  | TxnsMessage
  | RecordMessage
  | LargeRecordMessage
  | RecordBlockMessage
  | BlobMessage
  | BlobBlockMessage
  | CommitMessage
  | HeartbeatMessage
  | StatusMessage
  | PromotedMessage
  | PromoteRefusedMessage
  | PackProgressMessage
  | PackedMessage
  | PackRefusedMessage;

/** Every native message, discriminated by `type`. */
export type NativeMessage = SecondaryMessage | PrimaryMessage;

/** Which side sent a message. */
export type NativeSender = 'primary' | 'secondary';

const SENDER_OF: Readonly<Record<NativeMessage['type'], NativeSender>> = {
  hello: 'secondary',
  ack: 'secondary',
  welcome: 'primary',
  refuse: 'primary',
  txn: 'primary',
  txns: 'primary',
  record: 'primary',
  'large-record': 'primary',
  'record-block': 'primary',
  blob: 'primary',
  'blob-block': 'primary',
  commit: 'primary',
  heartbeat: 'primary',
  'status-request': 'secondary',
  status: 'primary',
  'promote-request': 'secondary',
  promoted: 'primary',
  'promote-refused': 'primary',
  'pack-request': 'secondary',
  'pack-progress': 'primary',
  packed: 'primary',
  'pack-refused': 'primary',
};

// ---------------------------------------------------------------------------------------------
// Codec

/**
 * A Packr for one connection's outgoing messages: plain maps, no records, no ext types.
 * @example const packr = createNativePackr();
 */
export function createNativePackr(): Packr {
  return new Packr({ useRecords: false, variableMapSize: true, structuredClone: false, moreTypes: false });
}

/**
 * An Unpackr for one connection's incoming messages (decodeNative additionally rejects ext types
 * before msgpackr sees them).
 * @example const unpackr = createNativeUnpackr();
 */
export function createNativeUnpackr(): Unpackr {
  return new Unpackr({
    useRecords: false,
    mapsAsObjects: true,
    int64AsType: 'number',
    structuredClone: false,
    moreTypes: false,
  });
}

/**
 * Encodes a message into a frame payload (no length prefix). The result stays valid after later
 * calls (msgpackr never rewrites returned bytes).
 * @throws TypeError when `msg` is malformed (a bug in the caller).
 * @example stream.write(encodeFrame(encodeNative({ type: 'ack', tid }, packr)));
 */
export function encodeNative(msg: NativeMessage, packr: Packr): Buffer {
  return packr.pack(toWire(msg)) as Buffer;
}

/**
 * Encodes a message as a complete frame (4-byte header included) with no extra copy;
 * `frame.subarray(FRAME_HEADER_BYTES)` is the payload to feed into the stream checksum.
 * @throws TypeError when `msg` is malformed (a bug in the caller).
 * @example const frame = encodeNativeFrame({ type: 'record', oid, dataTxn: null, data }, packr);
 */
export function encodeNativeFrame(msg: NativeMessage, packr: Packr): Buffer {
  const frame = packr.pack(toWire(msg), RESERVE_START_SPACE | FRAME_HEADER_BYTES) as Buffer;
  frame.writeUInt32BE(frame.byteLength - FRAME_HEADER_BYTES, 0);
  return frame;
}

// The two messages sent with every commit, `txns` and `commit`, and the
// secondary's `ack`, are written by hand: the same bytes Packr gives (tests
// compare them), without building and validating an object per frame.

/** fixstr of a short ASCII key or value. */
function fixstr(text: string): Buffer {
  return Buffer.concat([Buffer.from([0xa0 | text.length]), Buffer.from(text, 'latin1')]);
}

/** Bytes of the bin header msgpack uses for `n` bytes: bin8, bin16 or bin32. */
function binHeaderBytes(n: number): number {
  return n <= 0xff ? 2 : n <= 0xffff ? 3 : 5;
}

function putBinHeader(out: Buffer, off: number, n: number): number {
  const size = binHeaderBytes(n);
  out[off] = size === 2 ? 0xc4 : size === 3 ? 0xc5 : 0xc6;
  out.writeUIntBE(n, off + 1, size - 1);
  return off + size;
}

/** Bytes msgpack (as Packr writes it) takes for a non-negative integer below 2^32. */
function uintBytes(n: number): number {
  return n < 0x80 ? 1 : n < 0x100 ? 2 : n < 0x10000 ? 3 : 5;
}

function putUint(out: Buffer, off: number, n: number): number {
  const size = uintBytes(n);
  if (size === 1) out[off] = n;
  else {
    out[off] = size === 2 ? 0xcc : size === 3 ? 0xcd : 0xce;
    out.writeUIntBE(n, off + 1, size - 1);
  }
  return off + size;
}

function putBin(out: Buffer, off: number, bytes: Buffer): number {
  off = putBinHeader(out, off, bytes.length);
  return off + bytes.copy(out, off);
}

const COMMIT_HEAD = Buffer.concat([Buffer.from([0x82]), fixstr('type'), fixstr('commit'), fixstr('checksum')]);
const TXNS_KEYS = { lastTid: fixstr('lastTid'), prevLink: fixstr('prevLink'), bytes: fixstr('bytes') };
/** The start of a `txns` map after its size byte: the type pair, then the count key. */
const TXNS_HEAD = Buffer.concat([fixstr('type'), fixstr('txns'), fixstr('count')]);

/**
 * The frame of a `commit` without `link`: byte for byte what
 * encodeNativeFrame gives for `{ type: 'commit', checksum }`.
 * @throws TypeError when the checksum is not 16 or 32 bytes.
 */
export function encodeCommitFrame(checksum: Buffer): Buffer {
  if (checksum.length !== 16 && checksum.length !== 32) throw new TypeError(`cannot encode native message: commit.checksum must be 16 or 32 bytes, got ${checksum.length}`);
  const payload = COMMIT_HEAD.length + 2 + checksum.length;
  const frame = Buffer.allocUnsafe(FRAME_HEADER_BYTES + payload);
  frame.writeUInt32BE(payload, 0);
  putBin(frame, FRAME_HEADER_BYTES + COMMIT_HEAD.copy(frame, FRAME_HEADER_BYTES), checksum);
  return frame;
}

const ACK_HEAD = Buffer.concat([Buffer.from([0x83]), fixstr('type'), fixstr('ack'), fixstr('tid'), Buffer.from([0xc4, TID_BYTES])]);
const ACK_CHECK_HEAD = Buffer.concat([fixstr('check'), Buffer.from([0xc4, CONTENT_CHECK_BYTES])]);

/**
 * The frame of an `ack`: byte for byte what encodeNativeFrame gives for
 * `{ type: 'ack', tid }`.
 * @throws TypeError when the tid is not 8 bytes.
 */
export function encodeAckFrame(tid: Buffer): Buffer {
  if (tid.length !== TID_BYTES) throw new TypeError(`cannot encode native message: ack.tid must be ${TID_BYTES} bytes, got ${tid.length}`);
  const length = ACK_HEAD.length + TID_BYTES + ACK_CHECK_HEAD.length + CONTENT_CHECK_BYTES;
  const frame = Buffer.allocUnsafe(FRAME_HEADER_BYTES + length);
  frame.writeUInt32BE(length, 0);
  let off = FRAME_HEADER_BYTES + ACK_HEAD.copy(frame, FRAME_HEADER_BYTES);
  off += tid.copy(frame, off);
  off += ACK_CHECK_HEAD.copy(frame, off);
  frame.write(contentCheckText({ type: 'ack', tid }), off, CONTENT_CHECK_BYTES, 'latin1');
  return frame;
}

/**
 * A `txns` frame as two buffers, the second being `msg.bytes` itself (not
 * copied): the first holds the frame header and the msgpack map up to the
 * bin header of `bytes`, which is its last field. Written one after the
 * other they are byte for byte the frame encodeNativeFrame gives, without
 * copying a megabyte of transactions twice.
 * @throws TypeError when a field is out of range (a bug in the caller).
 */
export function encodeTxnsFrame(msg: Extract<NativeMessage, { type: 'txns' }>): [Buffer, Buffer] {
  const { count, lastTid, prevLink, bytes } = msg;
  if (!Number.isInteger(count) || count < 1 || count > 0xffffffff || lastTid.length !== TID_BYTES || bytes.length < 1) {
    throw new TypeError(`cannot encode native message: txns with count ${count}, a ${lastTid.length}-byte lastTid and ${bytes.length} bytes`);
  }
  if (prevLink !== undefined && (prevLink.length < 16 || prevLink.length > 64)) throw new TypeError(`cannot encode native message: txns.prevLink of ${prevLink.length} bytes`);
  const k = TXNS_KEYS;
  const headBytes =
    1 + TXNS_HEAD.length + uintBytes(count) + k.lastTid.length + 2 + TID_BYTES +
    (prevLink ? k.prevLink.length + 2 + prevLink.length : 0) + k.bytes.length + binHeaderBytes(bytes.length);
  const head = Buffer.allocUnsafe(FRAME_HEADER_BYTES + headBytes);
  head.writeUInt32BE(headBytes + bytes.length, 0);
  let off = FRAME_HEADER_BYTES;
  head[off++] = 0x80 | (prevLink ? 5 : 4);
  off += TXNS_HEAD.copy(head, off);
  off = putUint(head, off, count);
  off += k.lastTid.copy(head, off);
  off = putBin(head, off, lastTid);
  if (prevLink) {
    off += k.prevLink.copy(head, off);
    off = putBin(head, off, prevLink);
  }
  off += k.bytes.copy(head, off);
  putBinHeader(head, off, bytes.length);
  return [head, bytes];
}

/**
 * The message of a payload laid out exactly as encodeTxnsFrame or
 * encodeCommitFrame write it (with the same copies and views decodeNative
 * gives), or null for anything else: the general decoder then judges it.
 * A secondary gets these two with every transaction; unpacking them into an
 * object and validating it cost several times more.
 */
function decodeHotMessage(src: Buffer): NativeMessage | null {
  const end = src.length;
  const checksumBytes = end - COMMIT_HEAD.length - 2;
  if ((checksumBytes === 16 || checksumBytes === 32) && src[COMMIT_HEAD.length] === 0xc4 && src[COMMIT_HEAD.length + 1] === checksumBytes && startsWith(src, COMMIT_HEAD, 0)) {
    return { type: 'commit', checksum: Buffer.from(src.subarray(end - checksumBytes)) };
  }
  const k = TXNS_KEYS;
  const fields = src[0]! - 0x80;
  if (fields !== 4 && fields !== 5) return null;
  if (!startsWith(src, TXNS_HEAD, 1)) return null;
  let off = 1 + TXNS_HEAD.length;
  const marker = src[off];
  const size = marker === undefined ? 0 : marker < 0x80 ? 1 : marker === 0xcc ? 2 : marker === 0xcd ? 3 : marker === 0xce ? 5 : 0;
  if (size === 0 || off + size > end) return null;
  const count = size === 1 ? marker! : src.readUIntBE(off + 1, size - 1);
  if (count < 1) return null;
  off += size;
  if (!startsWith(src, k.lastTid, off)) return null;
  off += k.lastTid.length;
  if (src[off] !== 0xc4 || src[off + 1] !== TID_BYTES || off + 2 + TID_BYTES > end) return null;
  const lastTid = Buffer.from(src.subarray(off + 2, off + 2 + TID_BYTES));
  off += 2 + TID_BYTES;
  let prevLink: Buffer | undefined;
  if (fields === 5) {
    if (!startsWith(src, k.prevLink, off)) return null;
    off += k.prevLink.length;
    const n = src[off + 1];
    if (src[off] !== 0xc4 || n === undefined || n < 16 || n > 64 || off + 2 + n > end) return null;
    prevLink = Buffer.from(src.subarray(off + 2, off + 2 + n));
    off += 2 + n;
  }
  if (!startsWith(src, k.bytes, off)) return null;
  off += k.bytes.length;
  const bin = src[off];
  const lengthBytes = bin === 0xc4 ? 1 : bin === 0xc5 ? 2 : bin === 0xc6 ? 4 : 0;
  if (lengthBytes === 0 || off + 1 + lengthBytes > end) return null;
  const length = src.readUIntBE(off + 1, lengthBytes);
  off += 1 + lengthBytes;
  if (length < 1 || off + length !== end) return null;
  return { type: 'txns', count, lastTid, ...(prevLink ? { prevLink } : {}), bytes: src.subarray(off) };
}

/** Whether `src` holds `head` at `off`. */
function startsWith(src: Buffer, head: Buffer, off: number): boolean {
  // A loop: for these few bytes, Buffer#compare's native call costs more.
  if (off + head.length > src.length) return false;
  for (let i = 0; i < head.length; i++) if (src[off + i] !== head[i]) return false;
  return true;
}

/**
 * Decodes and validates one non-empty frame payload. With `from`, messages the other side would
 * send are rejected too. Fixed-size ids (tids, oids, checksums, hashes) are copies; `record.data`
 * and `blob-block.bytes` are views into `payload` (copy them if `payload`'s memory may be reused).
 * Unknown map keys are ignored (room for optional fields); unknown types are not.
 * @throws ProtocolError with the reason, for any malformed, unknown or unexpected message.
 * @example
 * const msg = decodeNative(frame, unpackr, 'primary');
 * if (msg.type === 'commit') checksum.verify(msg.checksum, tid);
 */
export function decodeNative(payload: Uint8Array, unpackr: Unpackr, from: 'primary'): PrimaryMessage;
export function decodeNative(payload: Uint8Array, unpackr: Unpackr, from: 'secondary'): SecondaryMessage;
export function decodeNative(payload: Uint8Array, unpackr: Unpackr, from?: NativeSender): NativeMessage;
export function decodeNative(payload: Uint8Array, unpackr: Unpackr, from?: NativeSender): NativeMessage {
  if (payload.byteLength === 0) throw new ProtocolError('empty frame is a keep-alive, not a message');
  const bytes = Buffer.isBuffer(payload) ? payload : Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
  const msg = decodeHotMessage(bytes) ?? decodeGeneral(bytes, unpackr);
  if (from !== undefined && SENDER_OF[msg.type] !== from) {
    throw new ProtocolError(`unexpected '${msg.type}' message from a ${from}`);
  }
  return msg;
}

/** Any message: unpacked by msgpackr (after a scan that rejects ext types), then validated. */
function decodeGeneral(bytes: Buffer, unpackr: Unpackr): NativeMessage {
  scanMsgpack(bytes);
  let value: unknown;
  try {
    value = unpackr.unpack(bytes);
  } catch (error) {
    throw new ProtocolError(`malformed msgpack: ${(error as Error).message}`, { cause: error });
  }
  return parseMessage(value, true);
}

/** A message's object as packed: explicit fields only, never undefined. */
function toWire(msg: NativeMessage): Record<string, unknown> {
  try {
    const wire = parseMessage(msg, false) as unknown as Record<string, unknown>;
    if (carriesCheck(msg)) wire.check = contentCheck(msg);
    // Inline records travel as [oid, dataTxn, data] arrays: smaller and faster than maps.
    if (msg.type === 'txn' && wire.records) wire.records = (wire.records as InlineRecord[]).map((r) => [r.oid, r.dataTxn, r.data]);
    return wire;
  } catch (error) {
    throw new TypeError(`cannot encode native message: ${(error as Error).message}`, { cause: error });
  }
}

// ---------------------------------------------------------------------------------------------
// Validation. parseMessage rebuilds the message from known fields only, so the result never
// carries peer-chosen keys or undefined values. `copyIds` copies fixed-size byte fields.

type Obj = Record<string, unknown>;

const fail = (reason: string): never => {
  throw new ProtocolError(reason);
};

function isObj(value: unknown): value is Obj {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !ArrayBuffer.isView(value);
}

function get(obj: Obj, key: string, where: string): unknown {
  if (!Object.hasOwn(obj, key) || obj[key] === undefined) fail(`${where}: missing field '${key}'`);
  return obj[key];
}

function getOptional(obj: Obj, key: string): unknown {
  return Object.hasOwn(obj, key) ? obj[key] : undefined;
}

function asBytes(value: unknown, what: string, copy: boolean, minBytes = 0, maxBytes = Infinity): Buffer {
  if (!(value instanceof Uint8Array)) return fail(`${what} must be bytes, got ${describe(value)}`);
  if (value.byteLength < minBytes || value.byteLength > maxBytes) {
    const expected = minBytes === maxBytes ? `${minBytes}` : `${minBytes}..${maxBytes}`;
    fail(`${what} must be ${expected} bytes, got ${value.byteLength}`);
  }
  if (copy) return Buffer.from(value);
  return Buffer.isBuffer(value) ? value : Buffer.from(value.buffer, value.byteOffset, value.byteLength);
}

const asId = (value: unknown, what: string, copy: boolean): Buffer => asBytes(value, what, copy, TID_BYTES, TID_BYTES);

function asInt(value: unknown, what: string, min: number, max: number = Number.MAX_SAFE_INTEGER): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min || value > max) {
    fail(`${what} must be an integer in ${min}..${max}, got ${describe(value)}`);
  }
  return value as number;
}

function asString(value: unknown, what: string, maxChars: number): string {
  if (typeof value !== 'string') return fail(`${what} must be a string, got ${describe(value)}`);
  if (value.length > maxChars) fail(`${what} is longer than ${maxChars} characters`);
  return value;
}

function oneOf<T extends string>(value: unknown, allowed: readonly T[], what: string): T {
  if (typeof value !== 'string' || !(allowed as readonly string[]).includes(value)) fail(`${what} must be one of ${allowed.join(', ')}, got ${describe(value)}`);
  return value as T;
}

function asObj(value: unknown, what: string): Obj {
  if (!isObj(value)) return fail(`${what} must be a map, got ${describe(value)}`);
  return value;
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (value instanceof Uint8Array) return `${value.byteLength} bytes`;
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'string') return `string ${JSON.stringify(value.slice(0, 40))}`;
  if (typeof value === 'number' || typeof value === 'boolean') return `${typeof value} ${String(value)}`;
  return typeof value;
}

function parseMessage(value: unknown, copyIds: boolean): NativeMessage {
  const obj = asObj(value, 'message');
  const type = get(obj, 'type', 'message');
  if (typeof type !== 'string') return fail(`message type must be a string, got ${describe(type)}`);
  const msg = parseFields(obj, type, copyIds);
  if (checkable(msg)) verifyContentCheck(obj, msg);
  return msg;
}

function parseFields(obj: Obj, type: string, copyIds: boolean): NativeMessage {
  switch (type) {
    case 'hello':
      return parseHello(obj, copyIds);
    case 'ack':
      return { type, tid: asId(get(obj, 'tid', type), 'ack.tid', copyIds) };
    case 'welcome':
      return parseWelcome(obj, copyIds);
    case 'refuse':
      return parseRefuse(obj, copyIds);
    case 'txn':
      return parseTxn(obj, copyIds);
    case 'txns':
      return {
        type,
        count: asInt(get(obj, 'count', type), 'txns.count', 1),
        lastTid: asId(get(obj, 'lastTid', type), 'txns.lastTid', copyIds),
        ...parsePrevLink(getOptional(obj, 'prevLink'), copyIds),
        // Last: encodeTxnsFrame relies on the bytes ending the message.
        bytes: asBytes(get(obj, 'bytes', type), 'txns.bytes', false, 1),
      };
    case 'record':
      return parseRecord(obj, copyIds);
    case 'large-record': {
      const dataTxn = get(obj, 'dataTxn', type);
      return {
        type,
        oid: asId(get(obj, 'oid', type), 'large-record.oid', copyIds),
        dataTxn: dataTxn === null ? null : asId(dataTxn, 'large-record.dataTxn', copyIds),
        size: asInt(get(obj, 'size', type), 'large-record.size', 1),
      };
    }
    case 'record-block':
      return { type, bytes: asBytes(get(obj, 'bytes', type), 'record-block.bytes', false, 1, RECORD_BLOCK_BYTES) };
    case 'blob':
      return {
        type,
        oid: asId(get(obj, 'oid', type), 'blob.oid', copyIds),
        size: asInt(get(obj, 'size', type), 'blob.size', 0),
      };
    case 'blob-block':
      return { type, bytes: asBytes(get(obj, 'bytes', type), 'blob-block.bytes', false, 1, BLOB_BLOCK_BYTES) };
    case 'commit': {
      const link = getOptional(obj, 'link');
      const checksum = parseChecksum(get(obj, 'checksum', type), copyIds);
      return link === undefined || link === null ? { type, checksum } : { type, checksum, link: asBytes(link, 'commit.link', copyIds, 16, 64) };
    }
    case 'heartbeat':
      return parseHeartbeat(obj, copyIds);
    case 'status-request':
      return { type };
    case 'status':
      return parseStatus(obj, copyIds);
    case 'promote-request':
      return { type, force: asBool(get(obj, 'force', type), 'promote-request.force') };
    case 'promoted':
      return {
        type,
        generation: parseGeneration(get(obj, 'generation', type), 'promoted.generation', copyIds),
        sessionsKept: asInt(get(obj, 'sessionsKept', type), 'promoted.sessionsKept', 0),
      };
    case 'promote-refused': {
      const code = get(obj, 'code', type);
      const message = asString(get(obj, 'message', type), 'promote-refused.message', MAX_REFUSAL_MESSAGE_CHARS);
      if (typeof code !== 'string' || !(PROMOTE_REFUSAL_CODES as readonly string[]).includes(code)) {
        return fail(`promote-refused with unknown code ${describe(code)}: ${message}`);
      }
      return { type, code: code as PromoteRefusalCode, message };
    }
    case 'pack-request': {
      const time = asFinite(get(obj, 'time', type), 'pack-request.time', 0);
      if (time === 0) fail('pack-request.time must be more than 0 seconds');
      return { type, time, gc: asBool(get(obj, 'gc', type), 'pack-request.gc') };
    }
    case 'pack-progress':
      return {
        type,
        step: oneOf(get(obj, 'step', type), PACK_STEPS, 'pack-progress.step'),
        done: asInt(get(obj, 'done', type), 'pack-progress.done', 0),
        total: asInt(get(obj, 'total', type), 'pack-progress.total', 0),
      };
    case 'packed':
      return {
        type,
        packed: asBool(get(obj, 'packed', type), 'packed.packed'),
        packTid: asId(get(obj, 'packTid', type), 'packed.packTid', copyIds),
        sizeBefore: asInt(get(obj, 'sizeBefore', type), 'packed.sizeBefore', 0),
        sizeAfter: asInt(get(obj, 'sizeAfter', type), 'packed.sizeAfter', 0),
        tailTransactions: asInt(get(obj, 'tailTransactions', type), 'packed.tailTransactions', 0),
        blobFiles: oneOf(get(obj, 'blobFiles', type), PACK_BLOB_FILES, 'packed.blobFiles'),
        removedBlobFiles: asInt(get(obj, 'removedBlobFiles', type), 'packed.removedBlobFiles', 0),
        blobFilesNotRemoved: asInt(get(obj, 'blobFilesNotRemoved', type), 'packed.blobFilesNotRemoved', 0),
        blobRemovalError: asNullable(get(obj, 'blobRemovalError', type), (v) => asString(v, 'packed.blobRemovalError', MAX_REFUSAL_MESSAGE_CHARS)),
      };
    case 'pack-refused':
      return {
        type,
        code: oneOf(get(obj, 'code', type), PACK_REFUSAL_CODES, 'pack-refused.code'),
        message: asString(get(obj, 'message', type), 'pack-refused.message', MAX_REFUSAL_MESSAGE_CHARS),
      };
    default:
      return fail(`unknown message type ${JSON.stringify(type.slice(0, 40))}`);
  }
}

function parseChecksum(value: unknown, copy: boolean): Buffer {
  const checksum = asBytes(value, 'commit.checksum', copy);
  if (checksum.byteLength !== 16 && checksum.byteLength !== 32) {
    fail(`commit.checksum must be 16 or 32 bytes, got ${checksum.byteLength}`);
  }
  return checksum;
}

function parseGeneration(value: unknown, what: string, copy: boolean): GenerationEntry {
  const obj = asObj(value, what);
  return {
    generation: asInt(get(obj, 'generation', what), `${what}.generation`, 0),
    startTid: asId(get(obj, 'startTid', what), `${what}.startTid`, copy),
  };
}

function parseHello(obj: Obj, copy: boolean): HelloMessage {
  const list = get(obj, 'generations', 'hello');
  if (!Array.isArray(list)) return fail(`hello.generations must be an array, got ${describe(list)}`);
  if (list.length > MAX_GENERATION_HISTORY) fail(`hello.generations has more than ${MAX_GENERATION_HISTORY} entries`);
  const generations = list.map((entry, i) => parseGeneration(entry, `hello.generations[${i}]`, copy));
  for (let i = 1; i < generations.length; i++) {
    const [before, after] = [generations[i - 1] as GenerationEntry, generations[i] as GenerationEntry];
    if (after.generation <= before.generation) fail('hello.generations: generation numbers must strictly increase');
    if (Buffer.compare(after.startTid, before.startTid) < 0) fail('hello.generations: start tids must not decrease');
  }
  const optionsObj = asObj(get(obj, 'options', 'hello'), 'hello.options');
  const options: HelloOptions = { blobs: asBool(get(optionsObj, 'blobs', 'hello.options'), 'hello.options.blobs'), ...optionalFlags(optionsObj, 'hello.options') };
  const compression = getOptional(optionsObj, 'compression');
  if (compression !== undefined && compression !== null) {
    if (compression !== 'none') fail(`hello.options.compression must be 'none', got ${describe(compression)}`);
    options.compression = 'none';
  }
  const hello: HelloMessage = {
    type: 'hello',
    startTid: asId(get(obj, 'startTid', 'hello'), 'hello.startTid', copy),
    generations,
    options,
  };
  const head = getOptional(obj, 'chainHead');
  if (head !== undefined && head !== null) {
    const headObj = asObj(head, 'hello.chainHead');
    hello.chainHead = {
      tid: asId(get(headObj, 'tid', 'hello.chainHead'), 'hello.chainHead.tid', copy),
      hash: asBytes(get(headObj, 'hash', 'hello.chainHead'), 'hello.chainHead.hash', copy, 16, 64),
    };
  }
  const nodeId = getOptional(obj, 'nodeId');
  if (nodeId instanceof Uint8Array && nodeId.byteLength === NODE_ID_BYTES) hello.nodeId = Buffer.from(nodeId);
  const samples = getOptional(obj, 'chainSamples');
  if (samples !== undefined && samples !== null) {
    if (!Array.isArray(samples) || samples.length > MAX_GENERATION_HISTORY) fail(`hello.chainSamples must be an array of at most ${MAX_GENERATION_HISTORY} entries`);
    hello.chainSamples = (samples as unknown[]).map((entry, i) => {
      const where = `hello.chainSamples[${i}]`;
      const o = asObj(entry, where);
      return { tid: asId(get(o, 'tid', where), `${where}.tid`, copy), hash: asBytes(get(o, 'hash', where), `${where}.hash`, copy, 16, 64) };
    });
  }
  return hello;
}

function asBool(value: unknown, what: string): boolean {
  if (typeof value !== 'boolean') return fail(`${what} must be a boolean, got ${describe(value)}`);
  return value;
}

function parseWelcome(obj: Obj, copy: boolean): WelcomeMessage {
  const optionsObj = asObj(get(obj, 'options', 'welcome'), 'welcome.options');
  const compression = get(optionsObj, 'compression', 'welcome.options');
  if (compression !== 'none') fail(`welcome.options.compression must be 'none', got ${describe(compression)}`);
  return {
    type: 'welcome',
    lastTid: asId(get(obj, 'lastTid', 'welcome'), 'welcome.lastTid', copy),
    generation: parseGeneration(get(obj, 'generation', 'welcome'), 'welcome.generation', copy),
    options: { blobs: asBool(get(optionsObj, 'blobs', 'welcome.options'), 'welcome.options.blobs'), compression: 'none', ...optionalFlags(optionsObj, 'welcome.options') },
    ...parseWelcomeGenerations(getOptional(obj, 'generations'), copy),
    ...parseHeartbeatInterval(getOptional(obj, 'heartbeatIntervalMs')),
    ...parseUpstreamPath(getOptional(obj, 'upstreamPath')),
  };
}

/**
 * A path that is not a list of at most MAX_UPSTREAM_PATH node ids reads as
 * absent: it is outside the content check, and only serves to find loops.
 */
function parseUpstreamPath(value: unknown): { upstreamPath?: Buffer[] } {
  if (!Array.isArray(value) || value.length > MAX_UPSTREAM_PATH) return {};
  if (!value.every((id) => id instanceof Uint8Array && id.byteLength === NODE_ID_BYTES)) return {};
  return { upstreamPath: (value as Uint8Array[]).map((id) => Buffer.from(id)) };
}

/** Longest heartbeat interval a welcome may announce (a day). */
export const MAX_HEARTBEAT_INTERVAL_MS = 86_400_000;

/**
 * Anything but a whole number of ms in 1 … MAX_HEARTBEAT_INTERVAL_MS reads
 * as absent: the field only tunes the secondary's silence timeout, and it
 * is outside the content check, so neither a later peer's wider range nor
 * a damaged value may fail the handshake.
 */
function parseHeartbeatInterval(value: unknown): { heartbeatIntervalMs?: number } {
  const usable = typeof value === 'number' && Number.isSafeInteger(value) && value > 0 && value <= MAX_HEARTBEAT_INTERVAL_MS;
  return usable ? { heartbeatIntervalMs: value } : {};
}

/** A message that carries a `check` of its content (see contentCheck). */
type CheckedMessage = HelloMessage | WelcomeMessage | HeartbeatMessage | AckMessage | CommitMessage | RefuseMessage;

/** The messages a `check` they carry is verified for (a heartbeat's or a commit's whether or not its optional field survived the way). */
function checkable(msg: NativeMessage): msg is CheckedMessage {
  return msg.type === 'hello' || msg.type === 'welcome' || msg.type === 'ack' || msg.type === 'heartbeat' || msg.type === 'commit' || msg.type === 'refuse';
}

/** The messages sent with a `check`: every checkable one but a heartbeat announcing nothing and a commit without a link. */
function carriesCheck(msg: NativeMessage): msg is CheckedMessage {
  if (msg.type === 'heartbeat') return msg.generation !== undefined;
  if (msg.type === 'commit') return msg.link !== undefined;
  // A refusal's generation is persisted (noted as seen); refusals without one are sent as before.
  if (msg.type === 'refuse') return msg.generation !== undefined;
  return checkable(msg);
}

/**
 * The `check` of a hello, a welcome, an ack, a heartbeat announcing a
 * generation or a commit carrying a link: the first 8 bytes of sha256 over what the receiver judges,
 * adopts, persists or counts from it, as text (docs/PROTOCOL.md). Nothing
 * else covers these messages before the receiver acts on them: a byte
 * changed on the way in a generation's start tid or a chain link would
 * otherwise be persisted, or judged a diverged history, and the secondary
 * refused from then on; in an ack's tid, it would count transactions as
 * durable on the secondary (synchronous replication releases commits on
 * that) which are not; in a commit's link (a packed transaction's), it
 * would be written into the secondary's chain, and the secondary found
 * diverged at its next connection.
 */
function contentCheck(msg: CheckedMessage): Buffer {
  return Buffer.from(contentCheckText(msg), 'latin1');
}

/** contentCheck as 8 latin1 characters: an ack is checked on every commit, without a Buffer. */
function contentCheckText(msg: CheckedMessage): string {
  if (msg.type === 'ack') return digestText(`ack|${msg.tid.toString('hex')}`);
  // The stream checksum a commit carries covers what came before it, not its own link.
  if (msg.type === 'commit') return digestText(`commit|${msg.link?.toString('hex') ?? '-'}`);
  const gen = (g: GenerationEntry): string => `${g.generation}@${g.startTid.toString('hex')}`;
  const link = (l: ChainHead): string => `${l.tid.toString('hex')}:${l.hash.toString('hex')}`;
  const list = <T>(items: readonly T[] | undefined, show: (item: T) => string): string => (items ? items.map(show).join(',') : '-');
  let fields: string[];
  // segmentedChecksum stays out of the text, so peers from before it check a hello that asks for it
  // alike: a peer that got it wrong computes other digests, and the first commit fails its checksum.
  // largeRecords too: a peer that got it wrong fails on the first large-record it does not expect.
  if (msg.type === 'hello') {
    const o = msg.options;
    fields = [msg.startTid.toString('hex'), list(msg.generations, gen), msg.chainHead ? link(msg.chainHead) : '-', list(msg.chainSamples, link), `blobs=${o.blobs} compression=${o.compression ?? '-'} rawTxns=${o.rawTxns ?? '-'} txnLinks=${o.txnLinks ?? '-'}`];
  } else if (msg.type === 'welcome') {
    const o = msg.options;
    fields = [msg.lastTid.toString('hex'), gen(msg.generation), list(msg.generations, gen), `blobs=${o.blobs} rawTxns=${o.rawTxns ?? '-'} txnLinks=${o.txnLinks ?? '-'}`];
  } else if (msg.type === 'refuse') {
    fields = [msg.code, msg.generation ? gen(msg.generation) : '-', msg.forkTid?.toString('hex') ?? '-'];
  } else fields = [msg.lastTid.toString('hex'), msg.generation ? gen(msg.generation) : '-'];
  return digestText([msg.type, ...fields].join('|'));
}

/** The first CONTENT_CHECK_BYTES of sha256 over `text` (latin1), as latin1 characters. */
function digestText(text: string): string {
  return hash('sha256', text, 'binary').slice(0, CONTENT_CHECK_BYTES);
}

/** A `check` sent with `msg` must match it (peers before it sent none: accepted as they are). */
function verifyContentCheck(obj: Obj, msg: CheckedMessage): void {
  const check = getOptional(obj, 'check');
  if (check === undefined || check === null) return;
  const sent = asBytes(check, `${msg.type}.check`, false, CONTENT_CHECK_BYTES, CONTENT_CHECK_BYTES);
  if (sent.toString('latin1') !== contentCheckText(msg)) fail(`${msg.type}.check does not match the message: it changed on the way`);
}

/** The optional flags of a hello's options (asked for) or a welcome's (granted); nil is absent. */
type OptionalFlag = 'rawTxns' | 'txnLinks' | 'segmentedChecksum' | 'largeRecords';

function optionalFlags(options: Obj, where: string): Pick<HelloOptions & AcceptedOptions, OptionalFlag> {
  const flags: Pick<HelloOptions & AcceptedOptions, OptionalFlag> = {};
  for (const key of ['rawTxns', 'txnLinks', 'segmentedChecksum', 'largeRecords'] as const) {
    const v = getOptional(options, key);
    if (v !== undefined && v !== null) flags[key] = asBool(v, `${where}.${key}`);
  }
  return flags;
}

function parsePrevLink(value: unknown, copy: boolean): { prevLink?: Buffer } {
  return value === undefined || value === null ? {} : { prevLink: asBytes(value, 'txns.prevLink', copy, 16, 64) };
}

function parseWelcomeGenerations(list: unknown, copy: boolean): { generations?: GenerationEntry[] } {
  if (list === undefined || list === null) return {};
  if (!Array.isArray(list) || list.length > MAX_GENERATION_HISTORY) return fail(`welcome.generations must be an array of at most ${MAX_GENERATION_HISTORY} entries`);
  return { generations: list.map((entry, i) => parseGeneration(entry, `welcome.generations[${i}]`, copy)) };
}

function parseRefuse(obj: Obj, copy: boolean): RefuseMessage {
  const code = get(obj, 'code', 'refuse');
  const message = asString(get(obj, 'message', 'refuse'), 'refuse.message', MAX_REFUSAL_MESSAGE_CHARS);
  if (typeof code !== 'string' || !(REFUSE_CODES as readonly string[]).includes(code)) {
    // Keep the primary's text: it is what an operator needs to see.
    return fail(`refuse with unknown code ${describe(code)}: ${message}`);
  }
  const refuse: RefuseMessage = { type: 'refuse', code: code as RefuseCode, message };
  const forkTid = getOptional(obj, 'forkTid');
  if (forkTid !== undefined && forkTid !== null) refuse.forkTid = asId(forkTid, 'refuse.forkTid', copy);
  const lastTid = getOptional(obj, 'lastTid');
  if (lastTid !== undefined && lastTid !== null) refuse.lastTid = asId(lastTid, 'refuse.lastTid', copy);
  const generation = getOptional(obj, 'generation');
  if (generation !== undefined && generation !== null) refuse.generation = parseGeneration(generation, 'refuse.generation', copy);
  const versions = getOptional(obj, 'supportedVersions');
  if (versions !== undefined && versions !== null) {
    if (!Array.isArray(versions) || versions.length > 64) {
      fail(`refuse.supportedVersions must be an array of at most 64 versions, got ${describe(versions)}`);
    }
    refuse.supportedVersions = (versions as unknown[]).map((v, i) => asInt(v, `refuse.supportedVersions[${i}]`, 1));
  }
  return refuse;
}

function parseTxn(obj: Obj, copy: boolean): TxnMessage {
  const status = get(obj, 'status', 'txn');
  if (status !== ' ' && status !== 'p') return fail(`txn.status must be ' ' or 'p', got ${describe(status)}`);
  return {
    type: 'txn',
    tid: asId(get(obj, 'tid', 'txn'), 'txn.tid', copy),
    status,
    // Small metadata kept with the transaction: copied so it does not pin the frame.
    user: asBytes(get(obj, 'user', 'txn'), 'txn.user', copy),
    description: asBytes(get(obj, 'description', 'txn'), 'txn.description', copy),
    extension: asBytes(get(obj, 'extension', 'txn'), 'txn.extension', copy),
    ...parseInlineRecords(getOptional(obj, 'records'), copy),
  };
}

/** Inline records: arrays [oid, dataTxn, data] on the wire, objects from a local caller. */
function parseInlineRecords(value: unknown, copy: boolean): { records?: InlineRecord[] } {
  if (value === undefined) return {};
  if (!Array.isArray(value)) return fail(`txn.records must be an array, got ${describe(value)}`);
  const records = value.map((item: unknown, i): InlineRecord => {
    const [oid, dataTxn, data] = Array.isArray(item)
      ? item.length === 3
        ? item
        : fail(`txn.records[${i}] must have 3 elements, got ${item.length}`)
      : [asObj(item, `txn.records[${i}]`).oid, (item as Obj).dataTxn, (item as Obj).data];
    return {
      oid: asId(oid, `txn.records[${i}].oid`, copy),
      dataTxn: dataTxn === null ? null : asId(dataTxn, `txn.records[${i}].dataTxn`, copy),
      data: data === null ? null : asBytes(data, `txn.records[${i}].data`, false),
    };
  });
  return { records };
}

function parseRecord(obj: Obj, copy: boolean): RecordMessage {
  const dataTxn = get(obj, 'dataTxn', 'record');
  const data = get(obj, 'data', 'record');
  return {
    type: 'record',
    oid: asId(get(obj, 'oid', 'record'), 'record.oid', copy),
    dataTxn: dataTxn === null ? null : asId(dataTxn, 'record.dataTxn', copy),
    data: data === null ? null : asBytes(data, 'record.data', false),
  };
}

function parseHeartbeat(obj: Obj, copy: boolean): HeartbeatMessage {
  const clockMs = get(obj, 'clockMs', 'heartbeat');
  if (typeof clockMs !== 'number' || !Number.isFinite(clockMs) || clockMs < 0) {
    fail(`heartbeat.clockMs must be a finite number >= 0, got ${describe(clockMs)}`);
  }
  const generation = getOptional(obj, 'generation');
  return {
    type: 'heartbeat',
    lastTid: asId(get(obj, 'lastTid', 'heartbeat'), 'heartbeat.lastTid', copy),
    clockMs: clockMs as number,
    ...(generation === undefined || generation === null ? {} : { generation: parseGeneration(generation, 'heartbeat.generation', copy) }),
    ...parseUpstreamPath(getOptional(obj, 'upstreamPath')),
  };
}

// Status: every text bounded, every tid 8 bytes, every number finite.

function asNullable<T>(value: unknown, parse: (v: unknown) => T): T | null {
  return value === null ? null : parse(value);
}

function asFinite(value: unknown, what: string, min = -Infinity): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < min) {
    fail(`${what} must be a finite number${min > -Infinity ? ` >= ${min}` : ''}, got ${describe(value)}`);
  }
  return value as number;
}

function parseStatus(obj: Obj, copy: boolean): StatusMessage {
  const text = (v: unknown, what: string): string => asString(v, what, MAX_STATUS_TEXT_CHARS);
  const role = get(obj, 'role', 'status');
  if (role !== 'primary' && role !== 'secondary') return fail(`status.role must be 'primary' or 'secondary', got ${describe(role)}`);
  const list = get(obj, 'sessions', 'status');
  if (!Array.isArray(list)) return fail(`status.sessions must be an array, got ${describe(list)}`);
  if (list.length > MAX_STATUS_SESSIONS) fail(`status.sessions has more than ${MAX_STATUS_SESSIONS} entries`);
  const sessions = list.map((entry: unknown, i): SessionStatusEntry => {
    const where = `status.sessions[${i}]`;
    const s = asObj(entry, where);
    return {
      peer: text(get(s, 'peer', where), `${where}.peer`),
      protocol: asNullable(get(s, 'protocol', where), (v) => text(v, `${where}.protocol`)),
      state: text(get(s, 'state', where), `${where}.state`),
      lastSentTid: asNullable(get(s, 'lastSentTid', where), (v) => asId(v, `${where}.lastSentTid`, copy)),
      ackedTid: asNullable(get(s, 'ackedTid', where), (v) => asId(v, `${where}.ackedTid`, copy)),
      startTid: asNullable(getOptional(s, 'startTid') ?? null, (v) => asId(v, `${where}.startTid`, copy)),
      bytesSent: asInt(get(s, 'bytesSent', where), `${where}.bytesSent`, 0),
    };
  });
  const status: StatusMessage = {
    type: 'status',
    role,
    name: asNullable(get(obj, 'name', 'status'), (v) => text(v, 'status.name')),
    lastTid: asId(get(obj, 'lastTid', 'status'), 'status.lastTid', copy),
    lastTimeSeconds: asNullable(get(obj, 'lastTimeSeconds', 'status'), (v) => asFinite(v, 'status.lastTimeSeconds')),
    fileSize: asInt(get(obj, 'fileSize', 'status'), 'status.fileSize', 0),
    clockMs: asFinite(get(obj, 'clockMs', 'status'), 'status.clockMs', 0),
    upstream: asNullable(get(obj, 'upstream', 'status'), (v) => parseUpstream(v, copy)),
    sessions,
    sessionCount: asInt(get(obj, 'sessionCount', 'status'), 'status.sessionCount', sessions.length),
  };
  const generation = getOptional(obj, 'generation');
  if (generation !== undefined && generation !== null) status.generation = parseGeneration(generation, 'status.generation', copy);
  return status;
}

function parseUpstream(value: unknown, copy: boolean): UpstreamStatus {
  const where = 'status.upstream';
  const u = asObj(value, where);
  return {
    address: asString(get(u, 'address', where), `${where}.address`, MAX_STATUS_TEXT_CHARS),
    protocol: asString(get(u, 'protocol', where), `${where}.protocol`, MAX_STATUS_TEXT_CHARS),
    state: asString(get(u, 'state', where), `${where}.state`, MAX_STATUS_TEXT_CHARS),
    primaryLastTid: asNullable(get(u, 'primaryLastTid', where), (v) => asId(v, `${where}.primaryLastTid`, copy)),
    lastHeartbeat: asNullable(get(u, 'lastHeartbeat', where), (v) => {
      const h = asObj(v, `${where}.lastHeartbeat`);
      return {
        lastTid: asId(get(h, 'lastTid', `${where}.lastHeartbeat`), `${where}.lastHeartbeat.lastTid`, copy),
        clockMs: asFinite(get(h, 'clockMs', `${where}.lastHeartbeat`), `${where}.lastHeartbeat.clockMs`, 0),
        receivedMs: asFinite(get(h, 'receivedMs', `${where}.lastHeartbeat`), `${where}.lastHeartbeat.receivedMs`, 0),
      };
    }),
    lagSeconds: asNullable(get(u, 'lagSeconds', where), (v) => asFinite(v, `${where}.lagSeconds`, 0)),
    lastError: optionalText(getOptional(u, 'lastError'), `${where}.lastError`),
  };
}

/** An optional text field: absent or nil is null; a long one is cut to MAX_STATUS_TEXT_CHARS, not refused. */
function optionalText(value: unknown, what: string): string | null {
  if (value === undefined || value === null) return null;
  if (typeof value !== 'string') return fail(`${what} must be a string, got ${describe(value)}`);
  return value.slice(0, MAX_STATUS_TEXT_CHARS);
}

// ---------------------------------------------------------------------------------------------
// Structural pre-scan: walks msgpack headers (skipping string/binary bodies in O(1)) and rejects
// what msgpackr would otherwise interpret: ext types (Date, Set, RegExp, Error, typed arrays,
// records, structured-clone references, bundled strings), the reserved 0xc1, non-string map
// keys, nesting deeper than MAX_NESTING_DEPTH, more than MAX_MSGPACK_VALUES values, truncation
// and trailing bytes.

const MAX_NESTING_DEPTH = 8;
/**
 * Most values (scalars, strings, containers, each counted) in one message
 * decoded by msgpackr. Each costs tens to hundreds of bytes of heap once
 * decoded against one byte or a few on the wire: a frame of a million tiny
 * inline records would take gigabytes. The largest legitimate message, an
 * inline `txn` of MAX_INLINE_RECORDS records, holds about 4 per record.
 */
export const MAX_MSGPACK_VALUES = 1 << 20;
/**
 * Most records a primary sends inline in one `txn` (more go record by
 * record). Not refused on receipt: older primaries inline any count within
 * 16 MiB, and MAX_MSGPACK_VALUES bounds what a frame decodes to.
 */
export const MAX_INLINE_RECORDS = 65_536;

// Per-token class, indexed by the first byte (see classify below).
const T_SCALAR = 0; // fixint, nil, bool: 1 byte
const T_FIXMAP = 1;
const T_FIXARRAY = 2;
const T_FIXSTR = 3;
const T_FIXED = 4; // numbers with a fixed-size body
const T_BIN = 5;
const T_STR = 6;
const T_ARRAY = 7;
const T_MAP = 8;
const T_FORBIDDEN = 9; // 0xc1, ext
const TOKEN_CLASS = new Uint8Array(256);
/** Body bytes of fixed-size numbers, or length-field bytes of bin/str/array/map. */
const TOKEN_SIZE = new Uint8Array(256);
(() => {
  const set = (from: number, to: number, tokenClass: number, size = 0): void => {
    for (let b = from; b <= to; b++) {
      TOKEN_CLASS[b] = tokenClass;
      TOKEN_SIZE[b] = size;
    }
  };
  set(0x00, 0xff, T_SCALAR);
  set(0x80, 0x8f, T_FIXMAP);
  set(0x90, 0x9f, T_FIXARRAY);
  set(0xa0, 0xbf, T_FIXSTR);
  set(0xc1, 0xc1, T_FORBIDDEN);
  set(0xc4, 0xc4, T_BIN, 1);
  set(0xc5, 0xc5, T_BIN, 2);
  set(0xc6, 0xc6, T_BIN, 4);
  set(0xc7, 0xc9, T_FORBIDDEN);
  [4, 8, 1, 2, 4, 8, 1, 2, 4, 8].forEach((size, i) => set(0xca + i, 0xca + i, T_FIXED, size));
  set(0xd4, 0xd8, T_FORBIDDEN);
  set(0xd9, 0xd9, T_STR, 1);
  set(0xda, 0xda, T_STR, 2);
  set(0xdb, 0xdb, T_STR, 4);
  set(0xdc, 0xdc, T_ARRAY, 2);
  set(0xdd, 0xdd, T_ARRAY, 4);
  set(0xde, 0xde, T_MAP, 2);
  set(0xdf, 0xdf, T_MAP, 4);
})();

// Scan stack (scanMsgpack is synchronous and not re-entrant): values left per open container,
// and whether it is a map (its keys and values are counted separately, keys at even counts).
const scanRemaining = new Float64Array(MAX_NESTING_DEPTH);
const scanIsMap = new Uint8Array(MAX_NESTING_DEPTH);

function readLength(src: Buffer, position: number, bytes: number): number {
  if (bytes === 1) return src[position] as number;
  if (bytes === 2) return src.readUInt16BE(position);
  return src.readUInt32BE(position);
}

function scanMsgpack(src: Buffer): void {
  const end = src.byteLength;
  let position = 0;
  let depth = 0;
  let topLeft = 1;
  let seen = 0;
  for (;;) {
    while (depth > 0 && scanRemaining[depth - 1] === 0) depth -= 1;
    let expectKey = false;
    if (depth > 0) {
      const left = scanRemaining[depth - 1] as number;
      expectKey = scanIsMap[depth - 1] === 1 && left % 2 === 0;
      scanRemaining[depth - 1] = left - 1;
    } else if (topLeft-- === 0) {
      break;
    }
    if (position >= end) fail(`truncated msgpack at byte ${position}`);
    if (++seen > MAX_MSGPACK_VALUES) fail(`msgpack message holds more than ${MAX_MSGPACK_VALUES} values`);
    const at = position;
    const token = src[position++] as number;
    const tokenClass = TOKEN_CLASS[token] as number;
    const size = TOKEN_SIZE[token] as number;
    if (expectKey && tokenClass !== T_FIXSTR && tokenClass !== T_STR) {
      fail(`msgpack map key at byte ${at} is not a string`);
    }
    let skip = 0;
    let values = -1;
    switch (tokenClass) {
      case T_SCALAR:
        break;
      case T_FIXSTR:
        skip = token & 0x1f;
        break;
      case T_FIXED:
        skip = size;
        break;
      case T_FIXMAP:
        values = (token & 0x0f) * 2;
        break;
      case T_FIXARRAY:
        values = token & 0x0f;
        break;
      case T_FORBIDDEN:
        return fail(`msgpack ${token === 0xc1 ? 'reserved byte 0xc1' : 'extension type'} at byte ${at} is not allowed`);
      default: {
        // bin, str, array, map: a big-endian length field of `size` bytes
        if (size > end - position) fail(`truncated msgpack at byte ${position}`);
        const length = readLength(src, position, size);
        position += size;
        if (tokenClass === T_ARRAY) values = length;
        else if (tokenClass === T_MAP) values = length * 2;
        else skip = length;
      }
    }
    if (skip > end - position) fail(`truncated msgpack at byte ${position}`);
    position += skip;
    if (values >= 0) {
      // Every value takes at least one byte: bounds msgpackr's allocation by the payload size.
      if (values > end - position) fail(`msgpack container at byte ${at} announces more values than bytes left`);
      if (depth === MAX_NESTING_DEPTH) fail(`msgpack nesting deeper than ${MAX_NESTING_DEPTH}`);
      scanRemaining[depth] = values;
      scanIsMap[depth] = tokenClass === T_FIXMAP || tokenClass === T_MAP ? 1 : 0;
      depth += 1;
    }
  }
  if (position !== end) fail(`${end - position} trailing bytes after the msgpack value`);
}
