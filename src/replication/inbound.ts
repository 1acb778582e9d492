// The secondary's view of the stream, whatever the protocol: frames from the
// primary become protocol-neutral apply events, with the running checksum
// verified before a commit event is produced. Pure: no I/O.

import { constants } from 'node:buffer';
import { ProtocolError } from '../errors.js';
import type { ProtocolSpec } from '../../machines/handshake.js';
import { linksOfRun, type RunLinks } from '../failover/links.js';
import { NATIVE_CHECKSUM_ALGORITHM, StreamChecksum } from '../wire/checksum.js';
import { MAX_META_BYTES } from '../storage/FileStorage.js';
import { dumps } from '../wire/pickle.js';
import { createNativeUnpackr, decodeNative, type GenerationEntry, type PrimaryMessage } from '../wire/native.js';
import { Zrs2StreamParser, type Zrs2Event } from '../wire/zrs2.js';

export type ApplyEvent =
  | { kind: 'welcome'; lastTid: Buffer; generation?: GenerationEntry; generations?: GenerationEntry[]; heartbeatIntervalMs?: number; upstreamPath?: Buffer[] }
  | { kind: 'refused'; code: string; reason: string; forkTid?: Buffer; primaryLastTid?: Buffer; generation?: GenerationEntry }
  /** `recordCount`: set when exactly that many record events follow and nothing else (native inline form). */
  | { kind: 'begin'; tid: Buffer; status: string; user: Buffer; description: Buffer; extension: Buffer; recordCount?: number }
  /** `blobBytes` null: a plain record; a number: a blob of that size follows in blobBlock events. */
  | { kind: 'record'; oid: Buffer; data: Buffer | null; dataTxn: Buffer | null; blob: { blocks: number } | null }
  | { kind: 'blobBlock'; bytes: Buffer; last: boolean }
  /**
   * Whole transactions as FileStorage bytes (native `txns`); the next commit
   * closes them. `linked`: their hash-chain links, computed here, when the
   * checksum covered the links instead of the bytes (txnLinks granted).
   */
  | { kind: 'rawTxns'; bytes: Buffer; count: number; lastTid: Buffer; linked?: RunLinks }
  | { kind: 'commit'; tid: Buffer; link?: Buffer }
  | { kind: 'heartbeat'; lastTid: Buffer; clockMs: number; generation?: GenerationEntry; upstreamPath?: Buffer[] };

export interface InboundDecoder {
  /**
   * Decode one frame payload (keep-alives included) into zero or more events.
   * `owned`: the payload's memory is the caller's to give away (a frame
   * assembled into its own buffer), so events may use it without a copy.
   */
  push(payload: Buffer, owned?: boolean): ApplyEvent[];
  /** The largest frame expected next (handshake replies are small). */
  readonly maxFrameBytes: number;
}

/** Node's largest buffer: the largest record a storage holds. */
const MAX_LENGTH = constants.MAX_LENGTH;

/** Native protocol: verdict, then msgpack messages with a sha256 chain. */
export class NativeInbound implements InboundDecoder {
  private readonly unpackr = createNativeUnpackr();
  private checksum: StreamChecksum;
  private welcomed = false;
  /** The last record, held until the next message says whether a blob follows it. `owned`: its data is not a view into a frame. */
  private pendingRecord: { oid: Buffer; dataTxn: Buffer | null; data: Buffer | null; owned: boolean } | null = null;
  /** A large record whose blocks are arriving: its data is assembled from them. */
  private large: { oid: Buffer; dataTxn: Buffer | null; size: number; blocks: Buffer[]; received: number } | null = null;
  private blobRemaining = 0;
  private tid: Buffer | null = null;
  /** The welcome granted txnLinks: `txns` runs are checked by their links. */
  private linked = false;
  /** What the welcome granted: `txns` runs and blobs come only when it did. */
  private rawGranted = false;
  private blobsGranted = false;
  private largeGranted = false;

  constructor(
    private readonly startTid: Buffer,
    private readonly streamMaxFrameBytes: number,
    /** False only in mutation checks (a deliberate bug: see mutations.ts). */
    private readonly verifyChecksum = true,
  ) {
    this.checksum = new StreamChecksum(startTid);
  }

  get maxFrameBytes(): number {
    return this.welcomed ? this.streamMaxFrameBytes : 64 * 1024;
  }

  push(payload: Buffer, owned = false): ApplyEvent[] {
    if (payload.length === 0) return [];
    const msg = decodeNative(payload, this.unpackr, 'primary');
    if (!this.welcomed) return this.verdict(msg);
    let linked: RunLinks | undefined;
    if (msg.type === 'commit') {
      if (this.verifyChecksum) this.checksum.verify(msg.checksum, this.tid ?? undefined);
      this.checksum.update(payload);
    } else if (msg.type === 'txns' && this.linked) linked = this.feedLinked(payload, msg);
    else this.checksum.update(payload);
    const out: ApplyEvent[] = [];
    if (this.pendingRecord && msg.type !== 'blob') out.push(this.flushRecord(null));
    out.push(...this.message(msg, owned, linked));
    return out;
  }

  /**
   * A run under txnLinks: the checksum takes the payload without the
   * transactions' bytes, then their links, computed here from those bytes.
   * The links cover everything in the bytes but the file positions, which
   * the storage checks and rewrites anyway.
   */
  private feedLinked(payload: Buffer, msg: Extract<PrimaryMessage, { type: 'txns' }>): RunLinks {
    if (msg.prevLink === undefined) throw new ProtocolError('txns without prevLink after txnLinks was granted');
    const links = linksOfRun(msg.prevLink, msg.bytes);
    if (links === null) throw new ProtocolError('txns bytes do not split into transactions without backpointers');
    if (links.count !== msg.count || !links.tid(links.count - 1).equals(msg.lastTid)) {
      throw new ProtocolError(`txns announces ${msg.count} transactions up to ${msg.lastTid.toString('hex')} and carries ${links.count}`);
    }
    const at = msg.bytes.byteOffset - payload.byteOffset;
    if (msg.bytes.buffer !== payload.buffer || at < 0) throw new Error('txns bytes are not a view into their frame'); // decoder contract
    this.checksum.update(payload.subarray(0, at));
    this.checksum.update(payload.subarray(at + msg.bytes.length));
    this.checksum.update(links.links);
    return links;
  }

  private verdict(msg: PrimaryMessage): ApplyEvent[] {
    if (msg.type === 'welcome') {
      this.welcomed = true;
      this.linked = msg.options.rawTxns === true && msg.options.txnLinks === true;
      this.rawGranted = msg.options.rawTxns === true;
      this.blobsGranted = msg.options.blobs;
      this.largeGranted = msg.options.largeRecords === true;
      // Nothing was fed yet: the stream's checksum starts after the welcome.
      if (msg.options.segmentedChecksum === true) this.checksum = new StreamChecksum(this.startTid, NATIVE_CHECKSUM_ALGORITHM, 'segmented');
      return [
        {
          kind: 'welcome',
          lastTid: msg.lastTid,
          generation: msg.generation,
          ...(msg.generations ? { generations: msg.generations } : {}),
          ...(msg.heartbeatIntervalMs ? { heartbeatIntervalMs: msg.heartbeatIntervalMs } : {}),
          ...(msg.upstreamPath ? { upstreamPath: msg.upstreamPath } : {}),
        },
      ];
    }
    if (msg.type === 'refuse') return [{ kind: 'refused', code: msg.code, reason: msg.message, forkTid: msg.forkTid, primaryLastTid: msg.lastTid, ...(msg.generation ? { generation: msg.generation } : {}) }];
    throw new ProtocolError(`expected welcome or refuse, got ${msg.type}`);
  }

  private flushRecord(blob: { blocks: number } | null): ApplyEvent {
    const r = this.pendingRecord!;
    this.pendingRecord = null;
    return { kind: 'record', oid: r.oid, data: r.data && (r.owned ? r.data : Buffer.from(r.data)), dataTxn: r.dataTxn, blob };
  }

  private message(msg: PrimaryMessage, owned: boolean, linked?: RunLinks): ApplyEvent[] {
    if (this.large !== null && msg.type !== 'record-block') {
      throw new ProtocolError(`${msg.type} inside the data of large record ${this.large.oid.toString('hex')} (${this.large.received} of ${this.large.size} bytes)`);
    }
    switch (msg.type) {
      case 'txn':
        if (this.tid !== null) throw new ProtocolError('txn inside a transaction');
        this.tid = msg.tid;
        return [
          {
            kind: 'begin',
            tid: msg.tid,
            status: msg.status,
            user: msg.user,
            description: msg.description,
            extension: msg.extension,
            recordCount: msg.records?.length,
          },
          ...(msg.records ?? []).map((r): ApplyEvent => ({ kind: 'record', oid: r.oid, data: r.data && Buffer.from(r.data), dataTxn: r.dataTxn, blob: null })),
        ];
      case 'txns':
        if (!this.rawGranted) throw new ProtocolError('txns, but the welcome did not grant rawTxns');
        if (this.tid !== null) throw new ProtocolError('txns inside a transaction');
        this.tid = msg.lastTid;
        // The storage rewrites positions in place: a copy unless the frame's buffer is ours (the checksum already covered it).
        return [{ kind: 'rawTxns', bytes: owned ? msg.bytes : Buffer.from(msg.bytes), count: msg.count, lastTid: msg.lastTid, ...(linked ? { linked } : {}) }];
      case 'record':
        if (this.tid === null || this.blobRemaining > 0) throw new ProtocolError('record outside a transaction');
        this.pendingRecord = { oid: msg.oid, dataTxn: msg.dataTxn, data: msg.data, owned: false };
        return [];
      case 'large-record':
        if (!this.largeGranted) throw new ProtocolError('large-record, but the welcome did not grant largeRecords');
        if (this.tid === null || this.blobRemaining > 0) throw new ProtocolError('large-record outside a transaction');
        // The storage holds a record in one buffer: refused before any block arrives, not when they are joined.
        if (msg.size > MAX_LENGTH) throw new ProtocolError(`large-record of ${msg.size} bytes: the largest record this node can hold is ${MAX_LENGTH} bytes`);
        this.large = { oid: msg.oid, dataTxn: msg.dataTxn, size: msg.size, blocks: [], received: 0 };
        return [];
      case 'record-block': {
        const large = this.large;
        if (large === null) throw new ProtocolError('record-block without its large-record');
        if (msg.bytes.length > large.size - large.received) throw new ProtocolError(`record-block beyond the ${large.size} bytes of large record ${large.oid.toString('hex')}`);
        // Blocks are kept as they arrive (memory grows only with bytes received) and joined once.
        large.blocks.push(owned ? msg.bytes : Buffer.from(msg.bytes));
        large.received += msg.bytes.length;
        if (large.received === large.size) {
          this.large = null;
          this.pendingRecord = { oid: large.oid, dataTxn: large.dataTxn, data: Buffer.concat(large.blocks, large.size), owned: true };
        }
        return [];
      }
      case 'blob': {
        if (!this.blobsGranted) throw new ProtocolError('blob, but the welcome did not grant blobs');
        if (!this.pendingRecord || !this.pendingRecord.oid.equals(msg.oid)) throw new ProtocolError('blob without its record');
        this.blobRemaining = msg.size;
        const blocks = Math.ceil(msg.size / (64 * 1024));
        return [this.flushRecord({ blocks })];
      }
      case 'blob-block': {
        if (msg.bytes.length > this.blobRemaining) throw new ProtocolError('blob block beyond the announced size');
        this.blobRemaining -= msg.bytes.length;
        return [{ kind: 'blobBlock', bytes: Buffer.from(msg.bytes), last: this.blobRemaining === 0 }];
      }
      case 'commit': {
        if (this.tid === null || this.blobRemaining > 0) throw new ProtocolError('commit outside a transaction');
        const tid = this.tid;
        this.tid = null;
        return [msg.link ? { kind: 'commit', tid, link: msg.link } : { kind: 'commit', tid }];
      }
      case 'heartbeat':
        if (this.tid !== null) throw new ProtocolError('heartbeat inside a transaction');
        return [{ kind: 'heartbeat', lastTid: msg.lastTid, clockMs: msg.clockMs, ...(msg.generation ? { generation: msg.generation } : {}), ...(msg.upstreamPath ? { upstreamPath: msg.upstreamPath } : {}) }];
      default:
        throw new ProtocolError(`unexpected ${msg.type} after the handshake`);
    }
  }
}

/** zc.zrs protocols: no verdict; pickled control messages with an md5 chain. */
export class Zrs2Inbound implements InboundDecoder {
  private readonly parser: Zrs2StreamParser;

  constructor(
    startTid: Buffer,
    spec: ProtocolSpec,
    readonly maxFrameBytes: number,
    /** False only in mutation checks (a deliberate bug: see mutations.ts). */
    verifyChecksum = true,
  ) {
    this.parser = new Zrs2StreamParser({ startTid, protocol: spec.name === 'zrs2.0' ? 'zrs2.0' : 'zrs2.1', verifyChecksum });
  }

  push(payload: Buffer): ApplyEvent[] {
    return this.parser.push(payload).map(fromZrs2);
  }
}

function fromZrs2(e: Zrs2Event): ApplyEvent {
  switch (e.kind) {
    case 'begin':
      return {
        kind: 'begin',
        tid: e.tid,
        status: e.status,
        user: e.user,
        description: e.description,
        // Stored as ZODB stores it: an empty dict is zero bytes.
        // Bounded as it is written: one string the pickle shares many times is written out each time.
        extension: e.extension.size === 0 ? Buffer.alloc(0) : dumps(e.extension, { protocol: 3, maxBytes: MAX_META_BYTES }),
      };
    case 'record':
      return { kind: 'record', oid: e.oid, data: e.data, dataTxn: e.dataTxn, blob: null };
    case 'blob':
      return { kind: 'record', oid: e.oid, data: e.data, dataTxn: e.dataTxn, blob: { blocks: e.blocks } };
    case 'blobBlock':
      return { kind: 'blobBlock', bytes: e.block, last: e.last };
    case 'commit':
      return { kind: 'commit', tid: e.tid };
  }
}
