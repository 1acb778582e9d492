// `zrs dump FILE`: every transaction and data record, in the format of
// ZODB's fsdump (ZODB.FileStorage.fsdump), so the two can be diffed. Reads
// through a read-only FileStorage, so, like ZODB's FileIterator, it stops
// before an unfinished or damaged last transaction. A file the storage will
// not open (damage before its end) is read straight from its bytes instead,
// as fsdump reads it: the transactions before the damage, then the damage.

import type { FileHandle } from 'node:fs/promises';
import { CorruptedDataError, FormatError } from '../errors.js';
import { FileStorage } from '../storage/FileStorage.js';
import { openFileToRead } from '../storage/fileio.js';
import { BACKPOINTER_BYTES, DATA_HEADER_BYTES, MAGIC_BYTES, TRAILER_BYTES, TXN_HEADER_BYTES, dataRecordLength, readDataHeader, readTxnHeader, readU64At } from '../storage/format.js';
import { dataEnd } from '../storage/scan.js';
import { tidToString } from '../storage/timestamp.js';
import type { CommandSpec } from './args.js';
import { EXIT_FAILURE, EXIT_OK, type CliIo } from './io.js';
import { pickleClass } from './pickleClass.js';

export const dumpSpec: CommandSpec = {
  name: 'dump',
  positionals: ['FILE'],
  flags: [],
  summary: 'List the transactions and data records of a Data.fs, like ZODB\'s fsdump.',
  description: `
For each transaction: its number, tid, time, the offset of its first data
record, status, user and description; for each record: oid, data size,
class (read from the pickle without unpickling it) and, for a backpointer,
the tid of the record it points at (bp=). The file is opened read-only and
may be in use by a running server. A file damaged before its end is listed
up to the damage, which is then named on stderr (exit 1).

example:
  zrs dump /var/db/Data.fs | less`,
};

/** Flush the text buffer to stdout once it holds this many characters. */
const FLUSH_CHARS = 64 * 1024;

/** One transaction as dump prints it. */
interface DumpedTxn {
  tid: Buffer;
  /** Offset of its first data record. */
  offset: number;
  status: string;
  user: Buffer;
  description: Buffer;
  records: Iterable<{ oid: Buffer; data: Buffer | null; dataTxn: Buffer | null }>;
}

/** Lines to stdout, a buffer at a time. */
function lineWriter(io: CliIo): { line(text: string): Promise<void>; flush(): Promise<void> } {
  let buf = '';
  return {
    async line(text) {
      buf += `${text}\n`;
      if (buf.length >= FLUSH_CHARS) {
        const out = buf;
        buf = '';
        await io.out(out);
      }
    },
    async flush() {
      if (buf) await io.out(buf);
      buf = '';
    },
  };
}

async function dumpTxn(line: (text: string) => Promise<void>, i: number, t: DumpedTxn): Promise<void> {
  await line(`Trans #${pad5(i)} tid=${t.tid.toString('hex')} time=${tidToString(t.tid)} offset=${t.offset}`);
  await line(`    status=${pyStrRepr(t.status)} user=${pyBytesRepr(t.user)} description=${pyBytesRepr(t.description)}`);
  let j = 0;
  for (const r of t.records) {
    let size = '';
    let cls = 'undo or abort of object creation';
    if (r.data !== null) {
      const [module, name] = pickleClass(r.data);
      size = ` size=${r.data.length}`;
      cls = `${module}.${name}`;
    }
    const bp = r.dataTxn ? ` bp=${r.dataTxn.toString('hex')}` : '';
    await line(`  data #${pad5(j++)} oid=${r.oid.toString('hex')}${size} class=${cls}${bp}`);
  }
}

export async function dump(path: string, io: CliIo): Promise<number> {
  let fs: FileStorage;
  try {
    fs = await FileStorage.open(path, { readOnly: true });
  } catch (err) {
    if (err instanceof CorruptedDataError || err instanceof FormatError) return dumpFromBytes(path, io);
    throw err;
  }
  const out = lineWriter(io);
  try {
    let i = 0;
    for await (const t of fs.iterator()) {
      const offset = t.pos + TXN_HEADER_BYTES + t.user.length + t.description.length + t.extensionBytes.length;
      await dumpTxn(out.line, i++, { tid: t.tid, offset, status: t.status, user: t.user, description: t.description, records: t.records });
    }
    await out.flush();
    // Silence here would read as "that is all the file holds".
    const tail = fs.unreadTailOnOpen;
    if (tail) io.err(`zrs dump: ${path}: stopped at offset ${tail.pos}, before the end of the data: ${tail.reason} (a transaction still being committed, or damage: zrs verify ${path} tells)\n`);
  } finally {
    await fs.close();
  }
  return EXIT_OK;
}

/**
 * A file the storage refused: its transactions read from the bytes, in order,
 * up to the first one that does not hold together, which is then reported
 * (exit 1). `zrs verify` says more about the damage.
 */
export async function dumpFromBytes(path: string, io: CliIo): Promise<number> {
  const handle = await openFileToRead(path);
  const out = lineWriter(io);
  try {
    const end = await dataEnd(handle, (await handle.stat()).size);
    const read = async (pos: number, length: number): Promise<Buffer> => {
      const buf = Buffer.alloc(length);
      const { bytesRead } = await handle.read(buf, 0, length, pos);
      return buf.subarray(0, bytesRead);
    };
    let pos = MAGIC_BYTES;
    let i = 0;
    let damage: string | null = null;
    let previous: Buffer | null = null;
    while (pos < end) {
      const txn = await rawTransaction(handle, read, pos, end, previous);
      if (typeof txn === 'string') {
        damage = txn;
        break;
      }
      if (txn === null) break; // a commit still in progress at the end
      await dumpTxn(out.line, i++, txn.dumped);
      previous = txn.dumped.tid;
      pos = txn.next;
    }
    await out.flush();
    if (damage === null) return EXIT_OK;
    io.err(`zrs dump: ${path}: damaged at offset ${pos}: ${damage} (the storage does not open it; zrs verify ${path} tells more)\n`);
    return EXIT_FAILURE;
  } finally {
    await handle.close();
  }
}

/** The transaction at `pos`, what is wrong with it, or null for one still being committed at the end. */
async function rawTransaction(
  handle: FileHandle,
  read: (pos: number, length: number) => Promise<Buffer>,
  pos: number,
  end: number,
  previous: Buffer | null,
): Promise<{ dumped: DumpedTxn; next: number } | string | null> {
  const head = await read(pos, TXN_HEADER_BYTES);
  if (head.length < TXN_HEADER_BYTES) return 'a transaction header cut short';
  const h = readTxnHeader(head);
  if (h.length < TXN_HEADER_BYTES + h.ulen + h.dlen + h.elen || pos + h.length + TRAILER_BYTES > end) return `a transaction length (${h.length}) past the data or its own header`;
  if (previous && Buffer.compare(h.tid, previous) <= 0) return `tid ${h.tid.toString('hex')} not after ${previous.toString('hex')}`;
  if (h.status === 'c' && pos + h.length + TRAILER_BYTES === end) return null;
  if (h.status !== ' ' && h.status !== 'p' && h.status !== 'u') return `status ${JSON.stringify(h.status)}`;
  const body = await read(pos, h.length + TRAILER_BYTES);
  if (readU64At(body, h.length) !== h.length) return `a redundant length (${readU64At(body, h.length)}) that is not the transaction's (${h.length})`;
  const records: Array<{ oid: Buffer; data: Buffer | null; dataTxn: Buffer | null }> = [];
  let off = TXN_HEADER_BYTES + h.ulen + h.dlen + h.elen;
  const first = off;
  while (off < h.length) {
    if (off + DATA_HEADER_BYTES > h.length) return `a data record at offset ${pos + off} cut short`;
    const d = readDataHeader(body, off);
    if (d.vlen !== 0) return `a data record at offset ${pos + off} with a version (not read here)`;
    const length = dataRecordLength(d.plen);
    if (off + length > h.length) return `a data record at offset ${pos + off} past its transaction`;
    const oid = Buffer.from(d.oid);
    if (d.plen > 0) records.push({ oid, data: body.subarray(off + DATA_HEADER_BYTES, off + length), dataTxn: null });
    else {
      const back = readU64At(body, off + DATA_HEADER_BYTES);
      const resolved = back === 0 ? { data: null, dataTxn: null } : await resolveBackpointer(read, back, pos);
      if (typeof resolved === 'string') return `a backpointer at offset ${pos + off}: ${resolved}`;
      records.push({ oid, ...resolved });
    }
    off += length;
  }
  return {
    dumped: {
      tid: Buffer.from(h.tid),
      offset: pos + first,
      status: h.status,
      user: body.subarray(TXN_HEADER_BYTES, TXN_HEADER_BYTES + h.ulen),
      description: body.subarray(TXN_HEADER_BYTES + h.ulen, TXN_HEADER_BYTES + h.ulen + h.dlen),
      records,
    },
    next: pos + h.length + TRAILER_BYTES,
  };
}

/** The data a backpointer leads to and the tid of the record it names, or what is wrong. */
async function resolveBackpointer(read: (pos: number, length: number) => Promise<Buffer>, back: number, before: number): Promise<{ data: Buffer | null; dataTxn: Buffer } | string> {
  let dataTxn: Buffer | null = null;
  for (let at = back, hops = 0; ; hops++) {
    if (at < MAGIC_BYTES || at >= before || hops > 1000) return `it names offset ${at}, not an earlier record`;
    const header = await read(at, DATA_HEADER_BYTES + BACKPOINTER_BYTES);
    if (header.length < DATA_HEADER_BYTES + BACKPOINTER_BYTES) return `offset ${at} cut short`;
    const d = readDataHeader(header);
    dataTxn ??= Buffer.from(d.tid);
    if (d.plen > 0) return { data: await read(at + DATA_HEADER_BYTES, d.plen), dataTxn };
    const next = readU64At(header, DATA_HEADER_BYTES);
    if (next === 0) return { data: null, dataTxn };
    before = at;
    at = next;
  }
}

function pad5(n: number): string {
  return String(n).padStart(5, '0');
}

/** Python's repr() of a bytes object. */
export function pyBytesRepr(b: Uint8Array): string {
  return `b${quoted(Array.from(b), b.includes(0x27) && !b.includes(0x22))}`;
}

/** Python's repr() of a short str of Latin-1 characters (the status byte). */
export function pyStrRepr(s: string): string {
  const codes = Array.from(s, (c) => c.charCodeAt(0));
  return quoted(codes, s.includes("'") && !s.includes('"'), true);
}

function quoted(codes: number[], useDouble: boolean, isStr = false): string {
  const q = useDouble ? 0x22 : 0x27;
  let out = String.fromCharCode(q);
  for (const c of codes) {
    if (c === q || c === 0x5c) out += `\\${String.fromCharCode(c)}`;
    else if (c === 0x09) out += '\\t';
    else if (c === 0x0a) out += '\\n';
    else if (c === 0x0d) out += '\\r';
    else if (c < 0x20 || c === 0x7f || (c > 0x7f && !(isStr && c >= 0xa1 && c !== 0xad))) out += `\\x${c.toString(16).padStart(2, '0')}`;
    else out += String.fromCharCode(c);
  }
  return out + String.fromCharCode(q);
}
