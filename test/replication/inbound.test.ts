// The secondary's decoding of raw runs when txnLinks was granted: the
// checksum covers each transaction's hash-chain link, so a change to any
// byte a link covers is caught at the commit, while the file positions
// (rewritten by the secondary anyway) may differ; and the checksum rule
// the welcome grants. Pure: frames built by the primary's codec from a real
// file, fed straight to the decoder.

import { constants } from 'node:buffer';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ChecksumMismatchError, PickleError, ProtocolError } from '../../src/errors.js';
import { linksOfRun } from '../../src/failover/hashChain.js';
import { NativeInbound, Zrs2Inbound, type ApplyEvent } from '../../src/replication/inbound.js';
import { nativeOutbound, WHOLE_TXN_MAX_BYTES, zrs2Outbound, ZRS20_SPEC } from '../../src/replication/protocols.js';
import { FileStorage } from '../../src/storage/FileStorage.js';
import type { TransactionRecord } from '../../src/storage/types.js';
import { FRAME_HEADER_BYTES } from '../../src/wire/framing.js';
import { StreamChecksum } from '../../src/wire/checksum.js';
import { createNativePackr, createNativeUnpackr, decodeNative, encodeNative, MAX_INLINE_RECORDS, RECORD_BLOCK_BYTES } from '../../src/wire/native.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { commitMany, Z64 } from './helpers.js';

afterAll(cleanupTempDirs);

/** The payloads of a run of the first `n` transactions (txns, then commit) as a primary granting txnLinks sends them. */
async function linkedRun(n: number, segmentedChecksum = false): Promise<{ txns: Buffer; commit: Buffer }> {
  const dir = await tempDir();
  const fs = await FileStorage.open(join(dir, 'p.fs'), { create: true, fsync: false });
  try {
    await commitMany(fs, n);
    const txns: TransactionRecord[] = [];
    for await (const t of fs.iterator()) txns.push(t);
    // A chain that holds nothing: the codec computes the links from the bytes.
    const codec = nativeOutbound(fs, Z64, { blobs: false, rawTxns: true, txnLinks: { linksOf: () => null }, segmentedChecksum });
    const [head, bytes, commit] = codec.rawFrames(txns);
    return { txns: Buffer.concat([head!, bytes!]).subarray(FRAME_HEADER_BYTES), commit: commit!.subarray(FRAME_HEADER_BYTES) };
  } finally {
    await fs.close();
  }
}

function welcomed(txnLinks: boolean, segmentedChecksum?: boolean): NativeInbound {
  const inbound = new NativeInbound(Z64, 1 << 24);
  const welcome = { type: 'welcome', lastTid: Z64, generation: { generation: 0, startTid: Z64 }, options: { blobs: false, compression: 'none', rawTxns: true, txnLinks, segmentedChecksum } } as const;
  inbound.push(encodeNative(welcome, createNativePackr()));
  return inbound;
}

/** Where the transactions' bytes start in a txns payload. */
function bytesAt(payload: Buffer): number {
  const msg = decodeNative(payload, createNativeUnpackr(), 'primary');
  if (msg.type !== 'txns') throw new Error('not a txns payload');
  return msg.bytes.byteOffset - payload.byteOffset;
}

describe('NativeInbound with txnLinks', () => {
  it('passes a run on with the links it computed, and accepts its commit', async () => {
    const run = await linkedRun(6);
    const inbound = welcomed(true);
    const [event] = inbound.push(run.txns) as [Extract<ApplyEvent, { kind: 'rawTxns' }>];
    expect(event.kind).toBe('rawTxns');
    expect(event.linked!.links.toString('hex')).toBe(linksOfRun(event.linked!.prevLink, event.bytes)!.links.toString('hex'));
    expect(event.linked!.count).toBe(6);
    expect(inbound.push(run.commit)).toEqual([{ kind: 'commit', tid: event.lastTid }]);
  });

  it("copies a run whose frame buffer is not its own (the storage rewrites positions in the bytes it is given)", async () => {
    const run = await linkedRun(3);
    const before = Buffer.from(run.txns);
    const [event] = welcomed(true).push(run.txns, false) as [Extract<ApplyEvent, { kind: 'rawTxns' }>];
    event.bytes.fill(0);
    expect(run.txns).toEqual(before);
  });

  it('refuses at the commit a run whose record data changed on the way', async () => {
    const run = await linkedRun(6);
    const txns = Buffer.from(run.txns);
    txns[txns.length - 20] = txns[txns.length - 20]! ^ 0xff; // inside the last record’s data
    const inbound = welcomed(true);
    inbound.push(txns);
    expect(() => inbound.push(run.commit)).toThrow(ChecksumMismatchError);
  });

  it('lets file positions differ: they are not in the links, and the storage rewrites them', async () => {
    const run = await linkedRun(6);
    const txns = Buffer.from(run.txns);
    const first = bytesAt(txns);
    const recordAt = first + 23 + txns.readUInt16BE(first + 17) + txns.readUInt16BE(first + 19) + txns.readUInt16BE(first + 21);
    txns.writeUInt32BE(0x12345678, recordAt + 28); // the first record's tloc
    const inbound = welcomed(true);
    inbound.push(txns);
    expect(inbound.push(run.commit)[0]!.kind).toBe('commit');
  });

  it('without txnLinks, the same run fails: the checksum then covers the bytes', async () => {
    const run = await linkedRun(3);
    const inbound = welcomed(false);
    inbound.push(run.txns);
    expect(() => inbound.push(run.commit)).toThrow(ChecksumMismatchError);
  });

  it('rejects a run without prevLink, or whose bytes do not hold the transactions it announces', async () => {
    const run = await linkedRun(3);
    const msg = decodeNative(run.txns, createNativeUnpackr(), 'primary');
    if (msg.type !== 'txns') throw new Error('not a txns payload');
    const packr = createNativePackr();
    const { prevLink, ...withoutLink } = msg;
    expect(() => welcomed(true).push(encodeNative(withoutLink, packr))).toThrow(/prevLink/);
    expect(() => welcomed(true).push(encodeNative({ ...msg, count: 4 }, packr))).toThrow(ProtocolError);
    // The right count, but a last tid its bytes do not end with.
    expect(() => welcomed(true).push(encodeNative({ ...msg, lastTid: Buffer.from('7fffffffffffffff', 'hex') }, packr))).toThrow(/txns announces 3 transactions up to 7fffffffffffffff/);
    expect(() => welcomed(true).push(encodeNative({ ...msg, prevLink, bytes: msg.bytes.subarray(0, msg.bytes.length - 9) }, packr))).toThrow(ProtocolError);
  });
});

describe('NativeInbound and the checksum rule', () => {
  it('follows the segmented rule only when the welcome grants it', async () => {
    const segmented = await linkedRun(4, true);
    const running = await linkedRun(4);
    const ends = (inbound: NativeInbound, run: { txns: Buffer; commit: Buffer }): ApplyEvent['kind'] => {
      inbound.push(run.txns);
      return inbound.push(run.commit)[0]!.kind;
    };
    expect(ends(welcomed(true, true), segmented)).toBe('commit');
    expect(ends(welcomed(true), running)).toBe('commit');
    expect(ends(welcomed(true, false), running)).toBe('commit');
    expect(() => ends(welcomed(true), segmented)).toThrow(ChecksumMismatchError);
    expect(() => ends(welcomed(true, true), running)).toThrow(ChecksumMismatchError);
  });
});

function welcome(options: { blobs: boolean; rawTxns?: boolean; largeRecords?: boolean }): NativeInbound {
  const inbound = new NativeInbound(Z64, 1 << 24);
  inbound.push(encodeNative({ type: 'welcome', lastTid: Z64, generation: { generation: 0, startTid: Z64 }, options: { compression: 'none', ...options } }, createNativePackr()));
  return inbound;
}

describe('NativeInbound takes only what the welcome granted', () => {
  it('refuses a txns run when rawTxns was not granted', async () => {
    const run = await linkedRun(2);
    expect(() => welcome({ blobs: false }).push(run.txns)).toThrow(/txns, but the welcome did not grant rawTxns/);
  });

  it('refuses a blob when blobs were not granted, and takes it when they were', () => {
    const packr = createNativePackr();
    const oid = Buffer.alloc(8, 1);
    const frames = [
      encodeNative({ type: 'txn', tid: Buffer.alloc(8, 2), status: ' ', user: Buffer.alloc(0), description: Buffer.alloc(0), extension: Buffer.alloc(0) }, packr),
      encodeNative({ type: 'record', oid, dataTxn: null, data: Buffer.from('blob record') }, packr),
      encodeNative({ type: 'blob', oid, size: 3 }, packr),
    ];
    const without = welcome({ blobs: false });
    expect(() => frames.forEach((f) => without.push(f))).toThrow(/blob, but the welcome did not grant blobs/);
    const granted = welcome({ blobs: true });
    const events = frames.flatMap((f) => granted.push(f));
    expect(events.map((e) => e.kind)).toEqual(['begin', 'record']);
    expect(events[1]).toMatchObject({ kind: 'record', blob: { blocks: 1 } });
  });
});

describe('NativeInbound refuses a stream that breaks the order of messages', () => {
  const packr = createNativePackr();
  const oid = Buffer.alloc(8, 1);
  const tid = Buffer.alloc(8, 2);
  const begin = encodeNative({ type: 'txn', tid, status: ' ', user: Buffer.alloc(0), description: Buffer.alloc(0), extension: Buffer.alloc(0) }, packr);

  it('a heartbeat inside a transaction (it would adopt a generation, or time the link, halfway through one)', () => {
    const inbound = welcome({ blobs: false });
    inbound.push(begin);
    expect(() => inbound.push(encodeNative({ type: 'heartbeat', lastTid: tid, clockMs: 0 }, packr))).toThrow(/heartbeat inside a transaction/);
    // Between transactions it is taken.
    const idle = welcome({ blobs: false });
    expect(idle.push(encodeNative({ type: 'heartbeat', lastTid: tid, clockMs: 0 }, packr))).toMatchObject([{ kind: 'heartbeat' }]);
  });

  it('a transaction inside another, and a blob naming another oid than its record', () => {
    const inbound = welcome({ blobs: true });
    inbound.push(begin);
    expect(() => inbound.push(begin)).toThrow(/txn inside a transaction/);
    const other = welcome({ blobs: true });
    other.push(begin);
    other.push(encodeNative({ type: 'record', oid, dataTxn: null, data: Buffer.from('blob record') }, packr));
    // Stored under the record's oid, the blob would be another object's.
    expect(() => other.push(encodeNative({ type: 'blob', oid: Buffer.alloc(8, 9), size: 3 }, packr))).toThrow(/blob without its record/);
  });

  it('a blob block beyond the size its blob announced (the file would grow past it)', () => {
    const inbound = welcome({ blobs: true });
    inbound.push(begin);
    inbound.push(encodeNative({ type: 'record', oid, dataTxn: null, data: Buffer.from('blob record') }, packr));
    inbound.push(encodeNative({ type: 'blob', oid, size: 10 }, packr));
    expect(inbound.push(encodeNative({ type: 'blob-block', bytes: Buffer.alloc(6) }, packr))).toMatchObject([{ kind: 'blobBlock', last: false }]);
    expect(() => inbound.push(encodeNative({ type: 'blob-block', bytes: Buffer.alloc(6) }, packr))).toThrow(/blob block beyond the announced size/);
  });
});

describe('NativeInbound refuses messages out of their place', () => {
  const packr = createNativePackr();
  const oid = Buffer.alloc(8, 1);
  const tid = Buffer.alloc(8, 2);
  type Sent = Parameters<typeof encodeNative>[0];
  const txn: Sent = { type: 'txn', tid, status: ' ', user: Buffer.alloc(0), description: Buffer.alloc(0), extension: Buffer.alloc(0) };
  const record: Sent = { type: 'record', oid, dataTxn: null, data: Buffer.from('blob record') };
  const blobDue: Sent[] = [txn, record, { type: 'blob', oid, size: 10 }];
  /** Feed `before` as a primary sends it (a commit with the checksum of the stream so far), then `last`: what the secondary makes of it. */
  const feed = (before: Sent[], last: Sent | 'commit'): (() => void) => {
    const inbound = welcome({ blobs: true, rawTxns: true, largeRecords: true });
    const checksum = new StreamChecksum(Z64);
    const send = (msg: Sent | 'commit'): void => {
      const payload = encodeNative(msg === 'commit' ? { type: 'commit', checksum: checksum.digest() } : msg, packr);
      checksum.update(payload);
      inbound.push(payload);
    };
    for (const m of before) send(m);
    return () => send(last);
  };

  it.each([
    ['a record before any transaction', [], record, /record outside a transaction/],
    ["a record while a blob's blocks are still due", blobDue, record, /record outside a transaction/],
    ['a large record before any transaction', [], { type: 'large-record', oid, dataTxn: null, size: 10 }, /large-record outside a transaction/],
    ["a large record while a blob's blocks are still due", blobDue, { type: 'large-record', oid, dataTxn: null, size: 10 }, /large-record outside a transaction/],
    ['a run of transactions inside a transaction', [txn], { type: 'txns', count: 1, lastTid: tid, bytes: Buffer.alloc(64) }, /txns inside a transaction/],
    ['a commit before any transaction', [], 'commit', /commit outside a transaction/],
    ["a commit while a blob's blocks are still due", blobDue, 'commit', /commit outside a transaction/],
    ['a welcome after the handshake', [], { type: 'welcome', lastTid: Z64, generation: { generation: 0, startTid: Z64 }, options: { blobs: true, compression: 'none' } }, /unexpected welcome after the handshake/],
  ] as Array<[string, Sent[], Sent | 'commit', RegExp]>)('%s', (_name, before, last, error) => {
    const send = feed(before, last);
    expect(send).toThrow(ProtocolError);
    expect(send).toThrow(error);
  });

  it('takes the same commit in its place (the checksum is right, only the order was wrong)', () => {
    const send = feed([txn, { type: 'record', oid, dataTxn: null, data: Buffer.from('x') }], 'commit');
    expect(send).not.toThrow();
  });
});

describe('NativeInbound and large records', () => {
  const wholeTxnMaxBytes = 1000;
  const oid = Buffer.alloc(8, 1);
  const data = Buffer.alloc(2 * RECORD_BLOCK_BYTES + 5);
  for (let i = 0; i < data.length; i++) data[i] = (i * 7) & 0xff;
  const txn = {
    tid: Buffer.alloc(8, 2),
    status: ' ',
    user: Buffer.alloc(0),
    description: Buffer.alloc(0),
    extensionBytes: Buffer.alloc(0),
    records: [
      { oid, dataTxn: null, data },
      { oid: Buffer.alloc(8, 3), dataTxn: Buffer.alloc(8, 1), data: Buffer.from('small') },
    ],
  } as never;

  /** The payloads a primary granting largeRecords (or not) sends for the transaction. */
  async function payloads(largeRecords: boolean): Promise<Buffer[]> {
    const codec = nativeOutbound({ blobs: null } as never, Z64, { blobs: false, largeRecords, wholeTxnMaxBytes });
    const out: Buffer[] = [];
    for await (const f of codec.transaction(txn)) out.push(f.subarray(FRAME_HEADER_BYTES));
    return out;
  }
  const types = (ps: Buffer[]): string[] => ps.map((p) => decodeNative(p, createNativeUnpackr(), 'primary').type);

  it('travel in blocks when granted, and arrive as one record event with the whole data', async () => {
    const sent = await payloads(true);
    expect(types(sent)).toEqual(['txn', 'large-record', 'record-block', 'record-block', 'record-block', 'record', 'commit']);
    expect(types(await payloads(false))).toEqual(['txn', 'record', 'record', 'commit']);
    const inbound = welcome({ blobs: false, largeRecords: true });
    const got = sent.flatMap((p) => inbound.push(p));
    expect(got.map((e) => e.kind)).toEqual(['begin', 'record', 'record', 'commit']);
    expect(got[1]).toMatchObject({ kind: 'record', oid, dataTxn: null, blob: null });
    expect((got[1] as Extract<ApplyEvent, { kind: 'record' }>).data!.equals(data)).toBe(true);
  });

  it('refuses them when not granted, and a block changed on the way at the commit', async () => {
    const sent = await payloads(true);
    const plain = welcome({ blobs: false });
    plain.push(sent[0]!);
    expect(() => plain.push(sent[1]!)).toThrow(/large-record, but the welcome did not grant largeRecords/);

    const changed = sent.map((p) => Buffer.from(p));
    const block = changed[3]!;
    block[block.length - 1] = block[block.length - 1]! ^ 0xff; // the last byte of the second block's data
    const inbound = welcome({ blobs: false, largeRecords: true });
    changed.slice(0, -1).forEach((p) => inbound.push(p));
    expect(() => inbound.push(changed.at(-1)!)).toThrow(ChecksumMismatchError);
  });

  it('refuses a stream that leaves a large record short, overruns it, or sends blocks without one', async () => {
    const sent = await payloads(true);
    const short = welcome({ blobs: false, largeRecords: true });
    sent.slice(0, 4).forEach((p) => short.push(p));
    expect(() => short.push(sent[5]!)).toThrow(/record inside the data of large record 0101010101010101 \(2097152 of 2097157 bytes\)/);

    const packr = createNativePackr();
    const over = welcome({ blobs: false, largeRecords: true });
    sent.slice(0, 4).forEach((p) => over.push(p));
    expect(() => over.push(encodeNative({ type: 'record-block', bytes: Buffer.alloc(6) }, packr))).toThrow(/record-block beyond the 2097157 bytes/);

    const stray = welcome({ blobs: false, largeRecords: true });
    stray.push(sent[0]!);
    expect(() => stray.push(sent[2]!)).toThrow(/record-block without its large-record/);

    // More than a buffer holds: refused when announced, before any block.
    const huge = welcome({ blobs: false, largeRecords: true });
    huge.push(sent[0]!);
    expect(() => huge.push(encodeNative({ type: 'large-record', oid, dataTxn: null, size: constants.MAX_LENGTH + 1 }, packr))).toThrow(ProtocolError);
  });
});

describe('Zrs2Inbound', () => {
  /** A `T` whose extension is {'k': [s, s, …]} with one string s of `chars` stored once and referenced `refs` more times. */
  function sharedStringBegin(refs: number, chars = 65_536): Buffer {
    const u32 = (n: number): Buffer => Buffer.from([n & 0xff, (n >> 8) & 0xff, (n >> 16) & 0xff, n >>> 24]);
    const str = (text: string): Buffer => Buffer.concat([Buffer.from('X'), u32(Buffer.byteLength(text)), Buffer.from(text)]);
    const tid = Buffer.concat([Buffer.from([0x43, 8]), Buffer.alloc(7), Buffer.from([1])]);
    return Buffer.concat([
      str('T'), Buffer.from('('), tid, str(' '), Buffer.from([0x43, 0, 0x43, 0]),
      Buffer.from('}'), str('k'), Buffer.from(']'), str('A'.repeat(chars)), Buffer.from([0x71, 0, 0x61]), // BINPUT 0, APPEND
      Buffer.alloc(3 * refs, Buffer.from([0x68, 0, 0x61])), // BINGET 0, APPEND, `refs` times
      Buffer.from('st'), Buffer.from([0x86]), Buffer.from('.'),
    ]);
  }

  it('refuses an extension that would be stored larger than a transaction allows, before writing it all out', () => {
    const spec = { name: 'zrs2.1' } as never;
    // 2,000 references make 131 MB as stored; the writer stops at the storage's 65,535 bytes.
    expect(() => new Zrs2Inbound(Z64, spec, 256 << 20).push(sharedStringBegin(2000))).toThrow(PickleError);
    expect(() => new Zrs2Inbound(Z64, spec, 256 << 20).push(sharedStringBegin(2000))).toThrow(/larger than 65535 bytes/);
    // Under the bound it goes through, each reference written out.
    const [begin] = new Zrs2Inbound(Z64, spec, 256 << 20).push(sharedStringBegin(10, 1000));
    expect(begin).toMatchObject({ kind: 'begin' });
    expect((begin as Extract<ApplyEvent, { kind: 'begin' }>).extension.length).toBeGreaterThan(11 * 1000);
  });
});

describe('nativeOutbound', () => {
  it('sends a transaction of more than MAX_INLINE_RECORDS records record by record, not inline', () => {
    const codec = nativeOutbound({ blobs: null } as never, Z64, { blobs: false });
    const txn = (n: number) =>
      ({ tid: Buffer.alloc(8, 1), status: ' ', user: Buffer.alloc(0), description: Buffer.alloc(0), extensionBytes: Buffer.alloc(0), records: Array.from({ length: n }, () => ({ oid: Buffer.alloc(8), dataTxn: null, data: null })) }) as never;
    expect(codec.plainFrames(txn(MAX_INLINE_RECORDS))).toHaveLength(2); // txn with its records, commit
    expect(codec.plainFrames(txn(MAX_INLINE_RECORDS + 1))).toBeNull();
  });
});

describe('zrs2Outbound', () => {
  it('sends a transaction of more than WHOLE_TXN_MAX_BYTES frame by frame, the same frames as a smaller one built at once', async () => {
    const txn = (recordBytes: number) =>
      ({ tid: Buffer.alloc(8, 1), status: ' ', user: Buffer.alloc(0), description: Buffer.alloc(0), extensionBytes: Buffer.alloc(0), records: [1, 2].map((i) => ({ oid: Buffer.alloc(8, i), dataTxn: null, data: Buffer.alloc(recordBytes, i) })) }) as never;
    const small = txn(1000);
    const built = zrs2Outbound({ blobs: null } as never, Z64, ZRS20_SPEC).plainFrames(small);
    const streamed: Buffer[] = [];
    for await (const f of zrs2Outbound({ blobs: null } as never, Z64, ZRS20_SPEC).transaction(small)) streamed.push(f);
    expect(Buffer.concat(built!).equals(Buffer.concat(streamed))).toBe(true);
    expect(zrs2Outbound({ blobs: null } as never, Z64, ZRS20_SPEC).plainFrames(txn(WHOLE_TXN_MAX_BYTES / 2))).not.toBeNull();
    expect(zrs2Outbound({ blobs: null } as never, Z64, ZRS20_SPEC).plainFrames(txn(WHOLE_TXN_MAX_BYTES / 2 + 1))).toBeNull();
  });
});
