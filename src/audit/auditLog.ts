// The audit log: an append-only, checksummed file per node recording every
// actor state transition, connection, handshake verdict and failover
// decision. Invariants: records are written in the order they were made, with
// consecutive sequence numbers; decisions are fsynced (with everything before
// them) before `decide` resolves; damage is reported, never skipped silently,
// and intact records after it are still read.
//
// File format (docs/FAILOVER.md, "Audit log format"):
//   header  8 bytes: "ZRSAUD1\n"
//   record  u32 BE payload length | u32 BE CRC-32 of (length bytes ‖ payload) | payload
//   payload UTF-8 JSON: { seq, time, timeMs, node, kind, generation?, details }

import { crc32 } from 'node:zlib';
import { open, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { AuditLogDamagedError, ZrsError } from '../errors.js';
import type { Clock } from '../ports/clock.js';
import { silentLogger, type Logger } from '../replication/log.js';
import { openFileToRead, syncDirectory, writeFully } from '../storage/fileio.js';

/** The 8 bytes every audit log starts with. */
export const AUDIT_MAGIC = Buffer.from('ZRSAUD1\n', 'latin1');
/** Length and checksum before each payload. */
export const AUDIT_RECORD_HEADER_BYTES = 8;
/** A payload larger than this is refused when writing and is damage when reading. */
export const AUDIT_MAX_PAYLOAD_BYTES = 1024 * 1024;
/** Records waiting for their batch write; beyond this, notes are counted as dropped (and that is recorded). */
export const AUDIT_MAX_PENDING_RECORDS = 65_536;
/** Reading window. */
const READ_CHUNK_BYTES = 256 * 1024;

/** What every record says besides its kind-specific details. */
export interface AuditRecord {
  /** File offset of the record's length field. */
  offset: number;
  /** 1, 2, 3 … within one file, never reused. */
  seq: number;
  /** ISO 8601 time from the node's clock (wall clock, or virtual in simulations). */
  time: string;
  timeMs: number;
  /** Which node wrote it (a data file's base name unless configured). */
  node: string;
  /** What happened: transition, connection, disconnection, handshake, sync-timeout, config, … */
  kind: string;
  /** The node's generation when known (set by the failover code). */
  generation?: unknown;
  details: Record<string, unknown>;
}

/** Bytes that are not a record in sequence: where, why, and how many until the next intact record (or the end). */
export interface AuditDamage {
  offset: number;
  reason: string;
  /** Bytes from `offset` to the next intact record, or to the end of the file when none follows. */
  bytes: number;
}

export interface AuditReadResult {
  path: string;
  /** Every intact record, in file order (also those after a damage). */
  records: AuditRecord[];
  /** The first damage; null when every byte of the file was read as valid records in sequence. */
  damage: AuditDamage | null;
  /** Every damage in file order; only the last can reach the end of the file (a torn tail). */
  damages: AuditDamage[];
  /** Size of the file when read. */
  size: number;
}

export interface AuditLogOptions {
  /** Name of this node in every record. */
  node: string;
  /**
   * Keep the node name of the log's last record instead, when it has one (an
   * offline command appending to a node's log: `zrs rewind`, `zrs promote FILE`).
   */
  continueNode?: boolean;
  /** Source of record times; never Date.now directly. */
  clock: Clock;
  /** Where write failures are reported. */
  log?: Logger;
  /** Called with each intact record the open reads, in file order (what a caller wants of the log's past, read in the same pass). */
  onRecord?: (record: AuditRecord) => void;
}

interface Pending {
  bytes: Buffer;
  durable: boolean;
  resolve: () => void;
  reject: (err: Error) => void;
}

/** Encode one record (header and payload). */
export function encodeAuditRecord(payload: Record<string, unknown>): Buffer {
  const json = Buffer.from(JSON.stringify(payload), 'utf8');
  if (json.length === 0 || json.length > AUDIT_MAX_PAYLOAD_BYTES) {
    throw new ZrsError(`audit record of ${json.length} bytes (limit ${AUDIT_MAX_PAYLOAD_BYTES})`);
  }
  const out = Buffer.allocUnsafe(AUDIT_RECORD_HEADER_BYTES + json.length);
  out.writeUInt32BE(json.length, 0);
  out.writeUInt32BE(crc32(json, crc32(out.subarray(0, 4))) >>> 0, 4);
  json.copy(out, AUDIT_RECORD_HEADER_BYTES);
  return out;
}

/** JSON-friendly form of detail values: Buffers (tids, oids) become hex strings. */
export function auditValue(v: unknown): unknown {
  if (Buffer.isBuffer(v)) return v.toString('hex');
  if (v instanceof Uint8Array) return Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('hex');
  if (v instanceof Error) return { name: v.name, message: v.message };
  if (Array.isArray(v)) return v.map(auditValue);
  if (v !== null && typeof v === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) if (x !== undefined && typeof x !== 'function') out[k] = auditValue(x);
    return out;
  }
  return v;
}

/**
 * The writer. `note` records frequent events (state transitions,
 * connections): they are written in batches, without waiting and without an
 * fsync of their own. `decide` records a decision (refusal, promotion,
 * rewind, sync timeout): it resolves once the record and everything before it
 * is on disk (fsync).
 *
 * @example
 * const audit = await AuditLog.open('Data.fs.audit', { node: 'p', clock: systemClock });
 * audit.note('connection', { peer: '127.0.0.1:50312' });
 * await audit.decide('sync-timeout', { tid: tid.toString('hex'), wanted: 1, got: 0 });
 * await audit.close();
 */
export class AuditLog {
  /**
   * The node's current generation, copied into every record while non-null:
   * a value, or a function asked at each record (the failover code sets it).
   */
  generation: unknown = null;
  private pending: Pending[] = [];
  private writing: Promise<void> | null = null;
  private failure: Error | null = null;
  private closed = false;
  private dropped = 0;
  private readonly log: Logger;

  private constructor(
    readonly path: string,
    private readonly handle: FileHandle,
    private seq: number,
    private end: number,
    private readonly options: AuditLogOptions,
  ) {
    this.log = options.log ?? silentLogger;
  }

  /**
   * Open (or create) an audit log for appending. A damaged tail left by a
   * crash mid-write is moved to `<path>.damaged-<offset>`, cut off, and the
   * recovery itself is recorded (fsynced) as an `audit-damage` record.
   * Damage with intact records after it is left where it is (those records
   * are read as before) and recorded once, as an `audit-damage` record with
   * `kept: true`. A file that is not an audit log at all is refused
   * (AuditLogDamagedError).
   */
  static async open(path: string, options: AuditLogOptions): Promise<AuditLog> {
    // Only the last record is kept: a long log is read through, not held.
    const recorded = new Set<number>();
    const noteRecorded = (r: AuditRecord): void => {
      if (r.kind === 'audit-damage' && r.details.kept === true && typeof r.details.offset === 'number') recorded.add(r.details.offset);
      options.onRecord?.(r);
    };
    const read = await scanAuditLog(path, noteRecorded).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return null;
      throw err;
    });
    const first = read?.damages[0];
    if (read && first && first.offset === 0 && read.size > 0) {
      throw new AuditLogDamagedError(path, 0, first.reason);
    }
    const handle = await open(path, read ? 'r+' : 'wx+').catch((err: NodeJS.ErrnoException) => {
      // Named as the audit log: a bare ENOENT does not say which file a command could not make.
      throw new ZrsError(`cannot open the audit log ${path}: ${err.message}`, { cause: err });
    });
    try {
      let end = read?.size ?? 0;
      if (end === 0) {
        await writeFully(handle, AUDIT_MAGIC, 0, path);
        await handle.sync();
        // The new file's name too: a decision acknowledged as durable must not vanish with its file.
        await syncDirectory(dirname(path));
        end = AUDIT_MAGIC.length;
      }
      const last = read?.last;
      const node = options.continueNode && last ? last.node : options.node;
      const audit = new AuditLog(path, handle, last?.seq ?? 0, end, { ...options, node });
      const damages = read?.damages ?? [];
      const tail = damages.at(-1);
      const torn = tail !== undefined && tail.bytes > 0 && tail.offset + tail.bytes === end ? tail : null;
      if (torn) await audit.cutDamagedTail(torn);
      for (const d of damages) {
        if (d === torn || recorded.has(d.offset)) continue;
        audit.log('warn', `audit log ${path} is damaged at offset ${d.offset}: ${d.reason}; ${d.bytes} bytes left in place, the records after them kept`);
        await audit.decide('audit-damage', { offset: d.offset, reason: d.reason, bytes: d.bytes, kept: true });
      }
      return audit;
    } catch (err) {
      await handle.close();
      throw err;
    }
  }

  private async cutDamagedTail(damage: AuditDamage): Promise<void> {
    // Never over an earlier save: a crash while recording this one leaves damage at the same offset.
    let savedTo = `${this.path}.damaged-${damage.offset}`;
    let side: FileHandle | null = null;
    for (let n = 1; side === null; n++) {
      side = await open(savedTo, 'wx').catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'EEXIST') throw err;
        savedTo = `${this.path}.damaged-${damage.offset}-${n}`;
        return null;
      });
    }
    try {
      // In chunks: a damaged tail can be as large as the file.
      const chunk = Buffer.alloc(Math.min(READ_CHUNK_BYTES, damage.bytes));
      for (let done = 0; done < damage.bytes; ) {
        const { bytesRead } = await this.handle.read(chunk, 0, Math.min(chunk.length, damage.bytes - done), damage.offset + done);
        if (bytesRead === 0) break;
        await writeFully(side, chunk.subarray(0, bytesRead), done, savedTo);
        done += bytesRead;
      }
      await side.sync();
    } finally {
      await side.close();
    }
    // The saved bytes are durable under their name before they are cut from the log.
    await syncDirectory(dirname(savedTo));
    await this.handle.truncate(damage.offset);
    this.end = damage.offset;
    this.log('warn', `audit log ${this.path} had a damaged tail at offset ${damage.offset}: ${damage.reason}; saved to ${savedTo}`);
    await this.decide('audit-damage', { offset: damage.offset, reason: damage.reason, bytes: damage.bytes, savedTo });
  }

  /** The time records are stamped with now (the log's clock). */
  now(): number {
    return this.options.clock.now();
  }

  /** The log's clock (timers of what writes to it follow it too). */
  get clock(): Clock {
    return this.options.clock;
  }

  /**
   * Record a frequent event; written with the next batch. `atMs`: when it
   * happened, if earlier than now (a record held back until it was known to
   * be worth keeping). Never throws on I/O (failures go to the log).
   */
  note(kind: string, details: Record<string, unknown> = {}, atMs?: number): void {
    if (this.closed) return;
    if (this.pending.length >= AUDIT_MAX_PENDING_RECORDS) {
      this.dropped += 1;
      return;
    }
    try {
      void this.enqueue(kind, details, false, atMs).catch(() => undefined);
    } catch (err) {
      this.log('error', `audit log ${this.path}: ${(err as Error).message}`, { kind });
    }
  }

  /** Record a decision; resolves once it (and everything before it) is fsynced. */
  decide(kind: string, details: Record<string, unknown> = {}): Promise<void> {
    if (this.closed) return Promise.reject(new ZrsError(`audit log ${this.path} is closed`));
    try {
      return this.enqueue(kind, details, true);
    } catch (err) {
      // A record that cannot be encoded (too large, a BigInt): a rejection like any other failure.
      return Promise.reject(err instanceof Error ? err : new Error(String(err)));
    }
  }

  /** Write and fsync everything recorded so far (with the count of notes dropped since the last record, if any). */
  flush(): Promise<void> {
    return this.closed ? Promise.resolve() : this.enqueue(null, {}, true);
  }

  /** close() was called: records are no longer taken. */
  get isClosed(): boolean {
    return this.closed;
  }

  /** Flush, then close the file. Later records are ignored (notes) or rejected (decisions). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.enqueue(null, {}, true).catch(() => undefined);
    await this.writing;
    await this.handle.close();
  }

  private enqueue(kind: string | null, details: Record<string, unknown>, durable: boolean, atMs?: number): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    let bytes: Buffer = Buffer.alloc(0);
    // A flush or close records the notes dropped since the last record too.
    if (kind !== null || this.dropped > 0) {
      const [seq, dropped] = [this.seq, this.dropped];
      try {
        const parts: Buffer[] = [];
        if (dropped > 0) parts.push(this.encode('audit-dropped', { count: dropped, reason: `more than ${AUDIT_MAX_PENDING_RECORDS} records waiting` }));
        if (kind !== null) parts.push(this.encode(kind, details, atMs));
        bytes = Buffer.concat(parts);
        this.dropped = 0;
      } catch (err) {
        this.seq = seq;
        throw err;
      }
    }
    return new Promise<void>((resolve, reject) => {
      this.pending.push({ bytes, durable, resolve, reject });
      this.writing ??= this.writeLoop();
    });
  }

  private encode(kind: string, details: Record<string, unknown>, atMs?: number): Buffer {
    const seq = this.seq + 1;
    const timeMs = atMs ?? this.options.clock.now();
    const payload: Record<string, unknown> = { seq, time: new Date(timeMs).toISOString(), timeMs, node: this.options.node, kind };
    const generation = typeof this.generation === 'function' ? safely(this.generation as () => unknown) : this.generation;
    if (generation !== null && generation !== undefined) payload.generation = auditValue(generation);
    payload.details = auditValue(details);
    const bytes = encodeAuditRecord(payload);
    this.seq = seq; // only once encoded: a refused record leaves no gap
    return bytes;
  }

  /** One batch at a time: everything pending goes out in one write, with one fsync if any is a decision. */
  private async writeLoop(): Promise<void> {
    // Let the current turn's notes join the batch.
    await Promise.resolve();
    while (this.pending.length > 0) {
      const batch = this.pending;
      this.pending = [];
      try {
        if (this.failure) throw this.failure;
        const bytes = Buffer.concat(batch.map((p) => p.bytes));
        if (bytes.length > 0) this.end += await writeFully(this.handle, bytes, this.end, this.path);
        if (batch.some((p) => p.durable)) await this.handle.sync();
        for (const p of batch) p.resolve();
      } catch (err) {
        this.failure ??= err instanceof Error ? err : new Error(String(err));
        this.log('error', `audit log ${this.path}: write failed: ${this.failure.message}`);
        for (const p of batch) p.reject(this.failure);
      }
    }
    this.writing = null;
  }
}

/**
 * Read every record of an audit log, in order. Reading stops at the first
 * damage (bad magic, impossible length, truncated record, checksum mismatch,
 * payload that is not a record, sequence gap), which is returned with its
 * offset: the caller reports it, nothing is skipped silently.
 */
export async function readAuditLog(path: string): Promise<AuditReadResult> {
  const records: AuditRecord[] = [];
  const { damages, size } = await scanAuditLog(path, (r) => records.push(r));
  return { path, records, damage: damages[0] ?? null, damages, size };
}

/** What a scan of an audit log found besides its records: its damages, its size and its last record. */
interface AuditScan {
  damages: AuditDamage[];
  size: number;
  last: AuditRecord | null;
}

/** The furthest after a damaged record's start that the next record can start: a whole record of the largest size. */
const RESYNC_SPAN_BYTES = AUDIT_RECORD_HEADER_BYTES + AUDIT_MAX_PAYLOAD_BYTES;

/**
 * A record at `at` of `buf`: its payload's length, or why it is none. Its
 * length, checksum and fields are checked, not its place in the sequence.
 */
function recordIn(buf: Buffer, at: number, offset: number): { record: AuditRecord; bytes: number } | { reason: string } {
  if (buf.length - at < AUDIT_RECORD_HEADER_BYTES) return { reason: `truncated record header: ${buf.length - at} of ${AUDIT_RECORD_HEADER_BYTES} bytes` };
  const length = buf.readUInt32BE(at);
  if (length === 0 || length > AUDIT_MAX_PAYLOAD_BYTES) return { reason: `impossible record length ${length}` };
  const present = buf.length - at - AUDIT_RECORD_HEADER_BYTES;
  if (present < length) return { reason: `truncated record: ${length} payload bytes announced, ${present} present` };
  const payload = buf.subarray(at + AUDIT_RECORD_HEADER_BYTES, at + AUDIT_RECORD_HEADER_BYTES + length);
  if ((crc32(payload, crc32(buf.subarray(at, at + 4))) >>> 0) !== buf.readUInt32BE(at + 4)) return { reason: 'checksum mismatch' };
  const record = parseRecord(payload, offset);
  return typeof record === 'string' ? { reason: record } : { record, bytes: AUDIT_RECORD_HEADER_BYTES + length };
}

/**
 * The first intact record after the damaged one at `from` whose sequence
 * number is above `afterSeq`, looked for where one can start (within one
 * largest record of `from`). A payload is JSON text, which never holds the
 * zero bytes of a length field, so a record is not found inside another.
 */
async function nextIntactRecord(handle: FileHandle, from: number, size: number, afterSeq: number): Promise<number | null> {
  const window = Buffer.alloc(Math.min(size - from, 2 * RESYNC_SPAN_BYTES + 1));
  const { bytesRead } = await handle.read(window, 0, window.length, from);
  const buf = window.subarray(0, bytesRead);
  for (let at = 1; at <= RESYNC_SPAN_BYTES && at + AUDIT_RECORD_HEADER_BYTES < buf.length; at++) {
    const length = buf.readUInt32BE(at);
    if (length === 0 || length > AUDIT_MAX_PAYLOAD_BYTES || at + AUDIT_RECORD_HEADER_BYTES + length > buf.length) continue;
    const found = recordIn(buf, at, from + at);
    if ('record' in found && found.record.seq > afterSeq) return from + at;
  }
  return null;
}

/** Read an audit log record by record, handing each to `take` (so a caller need not hold them all). */
async function scanAuditLog(path: string, take: (record: AuditRecord) => void): Promise<AuditScan> {
  const handle = await openFileToRead(path);
  try {
    const size = (await handle.stat()).size;
    let last: AuditRecord | null = null;
    const damages: AuditDamage[] = [];
    if (size === 0) return { damages, size, last };
    const magic = Buffer.alloc(AUDIT_MAGIC.length);
    const { bytesRead } = await handle.read(magic, 0, magic.length, 0);
    if (bytesRead < magic.length || !magic.equals(AUDIT_MAGIC)) {
      return { damages: [{ offset: 0, reason: bytesRead < magic.length ? 'truncated header' : 'not an audit log (bad magic)', bytes: size }], size, last };
    }
    let buf: Buffer = Buffer.alloc(0);
    let bufStart = AUDIT_MAGIC.length;
    let pos = AUDIT_MAGIC.length;
    const ensure = async (n: number): Promise<boolean> => {
      while (bufStart + buf.length < pos + n && bufStart + buf.length < size) {
        const want = Math.max(READ_CHUNK_BYTES, n);
        const chunk = Buffer.alloc(Math.min(want, size - (bufStart + buf.length)));
        const r = await handle.read(chunk, 0, chunk.length, bufStart + buf.length);
        if (r.bytesRead === 0) break;
        buf = Buffer.concat([buf.subarray(pos - bufStart), chunk.subarray(0, r.bytesRead)]);
        bufStart = pos;
      }
      return bufStart + buf.length >= pos + n;
    };
    /** Just past a damage: the next intact record's seq is above the last one's, not the one after it. */
    let resynced = false;
    while (pos < size) {
      // The header, then the whole record (its length is checked before it is read).
      await ensure(AUDIT_RECORD_HEADER_BYTES);
      const announced = buf.length - (pos - bufStart) >= AUDIT_RECORD_HEADER_BYTES ? buf.readUInt32BE(pos - bufStart) : 0;
      if (announced > 0 && announced <= AUDIT_MAX_PAYLOAD_BYTES) await ensure(AUDIT_RECORD_HEADER_BYTES + announced);
      const view = buf.subarray(pos - bufStart, pos - bufStart + AUDIT_RECORD_HEADER_BYTES + Math.min(announced, AUDIT_MAX_PAYLOAD_BYTES));
      const found = recordIn(view, 0, pos);
      const expected = (last?.seq ?? 0) + 1;
      if ('record' in found && found.record.seq >= expected) {
        // Intact, but records before it are missing (not just past a damage): the gap is the damage, the record is read.
        if (found.record.seq > expected && !resynced) damages.push({ offset: pos, reason: `sequence gap: record ${found.record.seq} follows ${expected - 1}`, bytes: 0 });
        resynced = false;
        take(found.record);
        last = found.record;
        pos += found.bytes;
        continue;
      }
      const reason = 'record' in found ? `sequence gap: record ${found.record.seq} follows ${expected - 1}` : found.reason;
      const next = await nextIntactRecord(handle, pos, size, expected - 1);
      damages.push({ offset: pos, reason, bytes: (next ?? size) - pos });
      if (next === null) break;
      pos = next;
      resynced = true;
      buf = Buffer.alloc(0);
      bufStart = pos;
    }
    return { damages, size, last };
  } finally {
    await handle.close();
  }
}

/** Read an audit log and throw AuditLogDamagedError if any part is damaged. */
export async function readAuditLogStrict(path: string): Promise<AuditRecord[]> {
  const r = await readAuditLog(path);
  if (r.damage) throw new AuditLogDamagedError(path, r.damage.offset, r.damage.reason);
  return r.records;
}

function safely(f: () => unknown): unknown {
  try {
    return f();
  } catch {
    return null;
  }
}

function parseRecord(payload: Buffer, offset: number): AuditRecord | string {
  let v: unknown;
  try {
    v = JSON.parse(payload.toString('utf8'));
  } catch {
    return 'payload is not JSON';
  }
  const o = v as Partial<AuditRecord> | null;
  if (
    o === null ||
    typeof o !== 'object' ||
    typeof o.seq !== 'number' ||
    typeof o.time !== 'string' ||
    typeof o.timeMs !== 'number' ||
    typeof o.node !== 'string' ||
    typeof o.kind !== 'string' ||
    typeof o.details !== 'object' ||
    o.details === null
  ) {
    return 'payload is not an audit record';
  }
  const record: AuditRecord = { offset, seq: o.seq, time: o.time, timeMs: o.timeMs, node: o.node, kind: o.kind, details: o.details };
  if (o.generation !== undefined) record.generation = o.generation;
  return record;
}
