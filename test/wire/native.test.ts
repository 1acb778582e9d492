// Native codec: protocol names, round-trips of every message, strict validation (ProtocolError
// only, for any input), rejected ext types, copies vs views, and frames through the decoder.

import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { Packr } from 'msgpackr';
import { ProtocolError } from '../../src/errors.js';
import { FRAME_HEADER_BYTES, FrameDecoder, encodeFrame } from '../../src/wire/framing.js';
import {
  BLOB_BLOCK_BYTES,
  RECORD_BLOCK_BYTES,
  PROTOCOL_NAME_MAX_BYTES,
  REFUSE_CODES,
  classifyProtocolName,
  createNativePackr,
  createNativeUnpackr,
  decodeNative,
  encodeNative,
  encodeAckFrame,
  encodeCommitFrame,
  encodeNativeFrame,
  encodeTxnsFrame,
  MAX_GENERATION_HISTORY,
  MAX_HEARTBEAT_INTERVAL_MS,
  MAX_INLINE_RECORDS,
  MAX_MSGPACK_VALUES,
  MAX_REFUSAL_MESSAGE_CHARS,
  MAX_STATUS_TEXT_CHARS,
  MAX_UPSTREAM_PATH,
  NODE_ID_BYTES,
  nativeProtocolName,
  type NativeMessage,
} from '../../src/wire/native.js';

const bytes = (n: number) => fc.uint8Array({ minLength: n, maxLength: n }).map((a) => Buffer.from(a));
const tid = bytes(8);
const blob = (max = 200) => fc.uint8Array({ maxLength: max }).map((a) => Buffer.from(a));
const generation = fc.record({ generation: fc.nat(), startTid: tid });

const helloArb = fc
  .record({
    startTid: tid,
    generations: fc.array(generation, { maxLength: 5 }),
    chainHead: fc.option(fc.record({ tid, hash: bytes(32) }), { nil: undefined }),
    blobs: fc.boolean(),
    compression: fc.option(fc.constant('none' as const), { nil: undefined }),
  })
  .map(({ startTid, generations, chainHead, blobs, compression }): NativeMessage => {
    // Valid histories: strictly increasing generations, non-decreasing start tids.
    const sorted = [...generations].sort((a, b) => Buffer.compare(a.startTid, b.startTid));
    const history = sorted.map((g, i) => ({ generation: i * 3 + (g.generation % 3), startTid: g.startTid }));
    return {
      type: 'hello',
      startTid,
      generations: history,
      ...(chainHead ? { chainHead } : {}),
      options: compression ? { blobs, compression } : { blobs },
    };
  });

const messageArb: fc.Arbitrary<NativeMessage> = fc.oneof(
  helloArb,
  tid.map((t): NativeMessage => ({ type: 'ack', tid: t })),
  fc.record({ lastTid: tid, generation, blobs: fc.boolean() }).map(
    ({ lastTid, generation: g, blobs }): NativeMessage => ({
      type: 'welcome',
      lastTid,
      generation: g,
      options: { blobs, compression: 'none' },
    }),
  ),
  fc
    .record({
      code: fc.constantFrom(...REFUSE_CODES),
      message: fc.string({ maxLength: 100 }),
      forkTid: fc.option(tid, { nil: undefined }),
      supportedVersions: fc.option(fc.array(fc.integer({ min: 1, max: 99 }), { maxLength: 3 }), { nil: undefined }),
    })
    .map(({ code, message, forkTid, supportedVersions }): NativeMessage => ({
      type: 'refuse',
      code,
      message,
      ...(forkTid ? { forkTid } : {}),
      ...(supportedVersions ? { supportedVersions } : {}),
    })),
  fc
    .record({
      tid,
      status: fc.constantFrom(' ' as const, 'p' as const),
      user: blob(),
      description: blob(),
      extension: blob(),
    })
    .map((t): NativeMessage => ({ type: 'txn', ...t })),
  fc
    .record({ oid: tid, dataTxn: fc.option(tid, { nil: null }), data: fc.option(blob(2000), { nil: null }) })
    .map((r): NativeMessage => ({ type: 'record', ...r })),
  fc
    .record({ oid: tid, dataTxn: fc.option(tid, { nil: null }), size: fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }) })
    .map((r): NativeMessage => ({ type: 'large-record', ...r })),
  fc
    .uint8Array({ minLength: 1, maxLength: 3000 })
    .map((b): NativeMessage => ({ type: 'record-block', bytes: Buffer.from(b) })),
  fc.record({ oid: tid, size: fc.maxSafeNat() }).map((b): NativeMessage => ({ type: 'blob', ...b })),
  fc
    .uint8Array({ minLength: 1, maxLength: 3000 })
    .map((b): NativeMessage => ({ type: 'blob-block', bytes: Buffer.from(b) })),
  fc.oneof(bytes(16), bytes(32)).map((checksum): NativeMessage => ({ type: 'commit', checksum })),
  fc
    .record({ lastTid: tid, clockMs: fc.oneof(fc.maxSafeNat(), fc.double({ min: 0, max: 1e15, noNaN: true })) })
    .map((h): NativeMessage => ({ type: 'heartbeat', ...h })),
  fc.record({ lastTid: tid, clockMs: fc.maxSafeNat(), generation }).map((h): NativeMessage => ({ type: 'heartbeat', ...h })),
  fc
    .record({ count: fc.integer({ min: 1, max: 1000 }), lastTid: tid, bytes: fc.uint8Array({ minLength: 1, maxLength: 500 }).map((a) => Buffer.from(a)) })
    .map((t): NativeMessage => ({ type: 'txns', ...t })),
);

/** Comparable form: Buffers as hex. */
function plain(value: unknown): unknown {
  if (value instanceof Uint8Array) return Buffer.from(value).toString('hex');
  if (Array.isArray(value)) return value.map(plain);
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, plain(v)]));
  }
  return value;
}

/** Raw msgpack of an arbitrary object, bypassing encodeNative's checks. */
const raw = (value: unknown): Buffer => new Packr({ useRecords: false }).pack(value);

function expectProtocolError(run: () => unknown, reason?: RegExp): void {
  let error: unknown;
  try {
    run();
  } catch (e) {
    error = e;
  }
  expect(error).toBeInstanceOf(ProtocolError);
  if (reason) expect((error as Error).message).toMatch(reason);
}

describe('protocol names', () => {
  it('names version 1 in 8 bytes, within zc.zrs primary limit', () => {
    expect(nativeProtocolName().toString()).toBe('zrs-ts/1');
    expect(nativeProtocolName().byteLength).toBe(8);
    expect(nativeProtocolName(123456).byteLength).toBeLessThanOrEqual(PROTOCOL_NAME_MAX_BYTES);
    expect(() => nativeProtocolName(0)).toThrow(RangeError);
  });

  it('classifies zrs2.x, native (supported or not) and anything else', () => {
    const c = (s: string) => classifyProtocolName(Buffer.from(s, 'latin1'));
    expect(c('zrs2.0')).toEqual({ kind: 'zrs2', version: '2.0' });
    expect(c('zrs2.1')).toEqual({ kind: 'zrs2', version: '2.1' });
    expect(c('zrs-ts/1')).toEqual({ kind: 'native', version: 1, supported: true });
    expect(c('zrs-ts/2')).toEqual({ kind: 'native', version: 2, supported: false });
    expect(c('zrs-ts/123456')).toEqual({ kind: 'native', version: 123456, supported: false });
    for (const other of ['zrs1.0', 'zrs2.2', 'zrs2.0 ', '', 'zrs-ts/', 'zrs-ts/01', 'zrs-ts/0', 'zrs-ts/1a', 'zrs-ts/1234567', 'ZRS-TS/1']) {
      expect(c(other)).toEqual({ kind: 'unknown' });
    }
  });

  it('never throws on arbitrary bytes', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 20 }), (b) => {
        expect(['native', 'zrs2', 'unknown']).toContain(classifyProtocolName(b).kind);
      }),
    );
  });
});

describe('encodeNative / decodeNative', () => {
  it('round-trips every message type', () => {
    const packr = createNativePackr();
    const unpackr = createNativeUnpackr();
    fc.assert(
      fc.property(messageArb, (msg) => {
        const decoded = decodeNative(encodeNative(msg, packr), unpackr);
        expect(plain(decoded)).toEqual(plain(msg));
      }),
    );
  });

  it('encodeNativeFrame equals encodeFrame(encodeNative(...)) and survives the frame decoder', () => {
    const packr = createNativePackr();
    const unpackr = createNativeUnpackr();
    fc.assert(
      fc.property(fc.array(messageArb, { maxLength: 10 }), fc.integer({ min: 1, max: 100 }), (msgs, step) => {
        const frames = msgs.map((m) => encodeNativeFrame(m, packr));
        frames.forEach((f, i) => {
          expect(f.readUInt32BE(0)).toBe(f.byteLength - FRAME_HEADER_BYTES);
          expect(f.equals(encodeFrame(encodeNative(msgs[i] as NativeMessage, packr)))).toBe(true);
        });
        const stream = Buffer.concat(frames);
        const decoder = new FrameDecoder({ maxFrameBytes: 1 << 20 });
        const out: unknown[] = [];
        for (let i = 0; i < stream.byteLength; i += step) {
          for (const p of decoder.push(stream.subarray(i, i + step))) out.push(plain(decodeNative(p, unpackr)));
        }
        expect(out).toEqual(msgs.map(plain));
      }),
    );
  });

  it('encodes a multi-megabyte record in one frame', () => {
    const packr = createNativePackr();
    const data = Buffer.alloc(3 * 1024 * 1024, 0x5a);
    const frame = encodeNativeFrame({ type: 'record', oid: Buffer.alloc(8, 1), dataTxn: null, data }, packr);
    const msg = decodeNative(frame.subarray(FRAME_HEADER_BYTES), createNativeUnpackr(), 'primary');
    expect(msg.type === 'record' && msg.data?.equals(data)).toBe(true);
  });

  it('does not rewrite earlier results on later encodes', () => {
    const packr = createNativePackr();
    const first = encodeNative({ type: 'ack', tid: Buffer.alloc(8, 1) }, packr);
    const copy = Buffer.from(first);
    for (let i = 0; i < 2000; i++) encodeNative({ type: 'ack', tid: Buffer.alloc(8, i & 0xff) }, packr);
    expect(first.equals(copy)).toBe(true);
  });

  it('copies ids but returns record data and blob blocks as views of the payload', () => {
    const packr = createNativePackr();
    const unpackr = createNativeUnpackr();
    const payload = Buffer.from(
      encodeNative({ type: 'record', oid: Buffer.alloc(8, 1), dataTxn: Buffer.alloc(8, 2), data: Buffer.from('abc') }, packr),
    );
    const msg = decodeNative(payload, unpackr, 'primary');
    if (msg.type !== 'record') throw new Error('expected a record');
    payload.fill(0);
    expect(msg.oid.toString('hex')).toBe('0101010101010101');
    expect(msg.dataTxn?.toString('hex')).toBe('0202020202020202');
    expect(msg.data?.toString('hex')).toBe('000000');
  });

  it('ignores unknown fields (room for optional additions)', () => {
    const msg = decodeNative(raw({ type: 'ack', tid: Buffer.alloc(8), later: { x: [1, 2] } }), createNativeUnpackr());
    expect(plain(msg)).toEqual({ type: 'ack', tid: '0000000000000000' });
  });

  it('rejects a message from the wrong side when told the sender', () => {
    const unpackr = createNativeUnpackr();
    const ack = raw({ type: 'ack', tid: Buffer.alloc(8) });
    expect(decodeNative(ack, unpackr, 'secondary').type).toBe('ack');
    expectProtocolError(() => decodeNative(ack, unpackr, 'primary'), /unexpected 'ack' message from a primary/);
  });

  it('rejects tids and oids that are not exactly 8 bytes', () => {
    const unpackr = createNativeUnpackr();
    for (const n of [0, 1, 7, 9, 16]) {
      const id = Buffer.alloc(n, 1);
      expectProtocolError(() => decodeNative(raw({ type: 'ack', tid: id }), unpackr), /ack\.tid must be 8 bytes/);
      expectProtocolError(
        () => decodeNative(raw({ type: 'record', oid: id, dataTxn: null, data: null }), unpackr),
        /record\.oid must be 8 bytes/,
      );
      expectProtocolError(
        () => decodeNative(raw({ type: 'record', oid: Buffer.alloc(8), dataTxn: id, data: null }), unpackr),
        /record\.dataTxn must be 8 bytes/,
      );
      expectProtocolError(
        () =>
          decodeNative(
            raw({ type: 'hello', startTid: id, generations: [], options: { blobs: false } }),
            unpackr,
          ),
        /hello\.startTid must be 8 bytes/,
      );
    }
    // A tid sent as a string or a number is not bytes.
    expectProtocolError(() => decodeNative(raw({ type: 'ack', tid: '01234567' }), unpackr), /must be bytes/);
    expectProtocolError(() => decodeNative(raw({ type: 'ack', tid: 12345678 }), unpackr), /must be bytes/);
  });

  it('rejects missing fields, bad types, unknown types and unknown refusal codes with a reason', () => {
    const u = createNativeUnpackr();
    const t = Buffer.alloc(8);
    const cases: [unknown, RegExp][] = [
      [{ tid: t }, /missing field 'type'/],
      [{ type: 7 }, /message type must be a string/],
      [{ type: 'status-report' }, /unknown message type "status-report"/],
      [{ type: 'record', oid: t, data: null }, /missing field 'dataTxn'/],
      [{ type: 'txn', tid: t, status: 'c', user: t, description: t, extension: t }, /txn\.status/],
      [{ type: 'blob', oid: t, size: -1 }, /blob\.size must be an integer/],
      [{ type: 'blob', oid: t, size: 1.5 }, /blob\.size must be an integer/],
      [{ type: 'blob-block', bytes: Buffer.alloc(0) }, /blob-block\.bytes must be 1\.\.65536 bytes/],
      [{ type: 'blob-block', bytes: Buffer.alloc(BLOB_BLOCK_BYTES + 1) }, /blob-block\.bytes/],
      [{ type: 'large-record', oid: t, dataTxn: null, size: 0 }, /large-record\.size must be an integer in 1\./],
      [{ type: 'large-record', oid: t, size: 5 }, /missing field 'dataTxn'/],
      [{ type: 'large-record', oid: t, dataTxn: null, data: t }, /missing field 'size'/],
      [{ type: 'record-block', bytes: Buffer.alloc(0) }, /record-block\.bytes must be 1\.\.1048576 bytes/],
      [{ type: 'record-block', bytes: Buffer.alloc(RECORD_BLOCK_BYTES + 1) }, /record-block\.bytes/],
      [{ type: 'commit', checksum: Buffer.alloc(20) }, /commit\.checksum must be 16 or 32 bytes/],
      [{ type: 'heartbeat', lastTid: t, clockMs: -1 }, /heartbeat\.clockMs/],
      [{ type: 'heartbeat', lastTid: t, clockMs: 1, generation: { generation: 1, startTid: Buffer.alloc(7) } }, /heartbeat\.generation\.startTid/],
      [{ type: 'txns', count: 0, lastTid: t, bytes: t }, /txns\.count/],
      [{ type: 'txns', count: 1, lastTid: t, bytes: Buffer.alloc(0) }, /txns\.bytes/],
      [{ type: 'refuse', code: 'nope', message: 'go away' }, /unknown code string "nope": go away/],
      [{ type: 'refuse', code: 'internal' }, /missing field 'message'/],
      [{ type: 'welcome', lastTid: t, generation: { generation: 1, startTid: t }, options: { blobs: true, compression: 'zstd' } }, /compression/],
      [{ type: 'hello', startTid: t, generations: {}, options: { blobs: true } }, /generations must be an array/],
      [{ type: 'hello', startTid: t, generations: [], options: { blobs: 'yes' } }, /options\.blobs must be a boolean/],
      [
        {
          type: 'hello',
          startTid: t,
          generations: [
            { generation: 2, startTid: t },
            { generation: 2, startTid: t },
          ],
          options: { blobs: true },
        },
        /strictly increase/,
      ],
      [[{ type: 'ack', tid: t }], /message must be a map, got an array/],
      ['ack', /message must be a map/],
    ];
    for (const [value, reason] of cases) expectProtocolError(() => decodeNative(raw(value), u), reason);
    expectProtocolError(() => decodeNative(Buffer.alloc(0), u), /keep-alive/);
  });

  it('rejects msgpack extension types, records and the reserved byte', () => {
    const u = createNativeUnpackr();
    const t = Buffer.alloc(8);
    const dated = new Packr({ useRecords: false }).pack({ type: 'ack', tid: t, at: new Date(0) });
    expectProtocolError(() => decodeNative(dated, u), /extension type/);
    const withSet = new Packr({ useRecords: false, moreTypes: true }).pack({ type: 'ack', tid: t, s: new Set([1]) });
    expectProtocolError(() => decodeNative(withSet, u), /extension type/);
    const records = new Packr({ useRecords: true }).pack({ type: 'ack', tid: t });
    expectProtocolError(() => decodeNative(records, u), /extension type/);
    expectProtocolError(() => decodeNative(Buffer.from('c1', 'hex'), u), /0xc1/);
    // fixext 1 with the "undefined" ext 0 as a field value
    expectProtocolError(() => decodeNative(Buffer.from('81a474797065d40000', 'hex'), u), /extension type/);
  });

  it('rejects non-string map keys, truncation, trailing bytes and deep nesting', () => {
    const u = createNativeUnpackr();
    expectProtocolError(() => decodeNative(Buffer.from('81 01 02'.replaceAll(' ', ''), 'hex'), u), /key .* not a string/);
    const ack = raw({ type: 'ack', tid: Buffer.alloc(8) });
    expectProtocolError(() => decodeNative(ack.subarray(0, ack.byteLength - 1), u), /truncated/);
    expectProtocolError(() => decodeNative(Buffer.concat([ack, Buffer.from([0])]), u), /trailing bytes/);
    let deep: unknown = 1;
    for (let i = 0; i < 20; i++) deep = [deep];
    expectProtocolError(() => decodeNative(raw({ type: 'ack', tid: Buffer.alloc(8), deep }), u), /nesting/);
    // An array announcing 2^32-1 elements in a few bytes.
    expectProtocolError(() => decodeNative(Buffer.from('dd ffffffff 01'.replaceAll(' ', ''), 'hex'), u), /more values than bytes/);
  });

  it('throws only ProtocolError on garbage', () => {
    const unpackr = createNativeUnpackr();
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 1, maxLength: 200 }), (garbage) => {
        try {
          decodeNative(garbage, unpackr);
        } catch (e) {
          expect(e).toBeInstanceOf(ProtocolError);
        }
      }),
      { numRuns: 2000 },
    );
  });

  it('throws only ProtocolError on corrupted valid messages (or decodes a valid one)', () => {
    const packr = createNativePackr();
    const unpackr = createNativeUnpackr();
    fc.assert(
      fc.property(messageArb, fc.nat(), fc.integer({ min: 1, max: 255 }), fc.nat(), (msg, at, xor, cut) => {
        const payload = Buffer.from(encodeNative(msg, packr));
        const i = at % payload.byteLength;
        payload[i] = (payload[i] ?? 0) ^ xor;
        for (const p of [payload, payload.subarray(0, 1 + (cut % payload.byteLength))]) {
          try {
            const decoded = decodeNative(p, unpackr);
            // Whatever decodes is a valid message that re-encodes.
            expect(() => encodeNative(decoded, packr)).not.toThrow();
          } catch (e) {
            expect(e).toBeInstanceOf(ProtocolError);
          }
        }
      }),
      { numRuns: 2000 },
    );
  });

  it('refuses to encode a malformed message (a caller bug) with TypeError', () => {
    const packr = createNativePackr();
    expect(() => encodeNative({ type: 'ack', tid: Buffer.alloc(7) }, packr)).toThrow(TypeError);
    expect(() => encodeNative({ type: 'blob-block', bytes: Buffer.alloc(BLOB_BLOCK_BYTES + 1) }, packr)).toThrow(
      TypeError,
    );
  });

  it('omits absent optional fields rather than packing undefined', () => {
    const packr = createNativePackr();
    const payload = encodeNative(
      { type: 'refuse', code: 'internal', message: 'x', forkTid: undefined } as NativeMessage,
      packr,
    );
    expect(Object.keys(decodeNative(payload, createNativeUnpackr()))).toEqual(['type', 'code', 'message']);
  });
});

describe('the content check (hello, welcome, ack, heartbeat with a generation, commit with a link, diverged refusal with a generation)', () => {
  const welcomeArb = fc
    .record({
      lastTid: tid,
      generation,
      generations: fc.option(fc.array(generation, { maxLength: 4 }), { nil: undefined }),
      blobs: fc.boolean(),
      rawTxns: fc.option(fc.boolean(), { nil: undefined }),
      txnLinks: fc.option(fc.boolean(), { nil: undefined }),
    })
    .map(({ lastTid, generation: g, generations, blobs, rawTxns, txnLinks }): NativeMessage => ({
      type: 'welcome',
      lastTid,
      generation: g,
      ...(generations ? { generations } : {}),
      options: { blobs, compression: 'none', ...(rawTxns === undefined ? {} : { rawTxns }), ...(txnLinks === undefined ? {} : { txnLinks }) },
    }));
  const heartbeatArb = fc
    .record({ lastTid: tid, clockMs: fc.nat(), generation })
    .map(({ lastTid, clockMs, generation: g }): NativeMessage => ({ type: 'heartbeat', lastTid, clockMs, generation: g }));
  const samplesArb = fc.array(fc.record({ tid, hash: bytes(32) }), { minLength: 1, maxLength: 3 });
  const refuseArb = fc
    .record({ forkTid: tid, generation, message: fc.string({ maxLength: 40 }) })
    .map(({ forkTid, generation: g, message }): NativeMessage => ({ type: 'refuse', code: 'diverged', message, forkTid, generation: g }));
  /** What the receiver acts on (judges, adopts, persists, or is granted) in such a message. */
  const actedOn = (m: NativeMessage): unknown =>
    m.type === 'hello'
      ? plain({ startTid: m.startTid, generations: m.generations, chainHead: m.chainHead, chainSamples: m.chainSamples, options: m.options })
      : m.type === 'welcome'
        ? plain({ lastTid: m.lastTid, generation: m.generation, generations: m.generations, options: m.options })
        : m.type === 'heartbeat'
          ? plain({ lastTid: m.lastTid, generation: m.generation })
          : m.type === 'ack'
            ? plain({ tid: m.tid })
            : m.type === 'commit'
              ? plain({ link: m.link }) // its checksum is compared with the stream's, not acted on
              : m.type === 'refuse'
                ? plain({ code: m.code, generation: m.generation, forkTid: m.forkTid }) // its message is only shown
                : m.type;
  const commitArb = fc
    .record({ checksum: bytes(32), link: fc.integer({ min: 16, max: 64 }).chain((n) => bytes(n)) })
    .map(({ checksum, link }): NativeMessage => ({ type: 'commit', checksum, link }));
  const helloWithSamples = fc.tuple(helloArb, fc.option(samplesArb, { nil: undefined })).map(([h, chainSamples]) => (chainSamples ? { ...h, chainSamples } : h) as NativeMessage);

  it('one byte changed anywhere never changes what the receiver acts on: the message is refused instead', () => {
    const packr = createNativePackr();
    const unpackr = createNativeUnpackr();
    fc.assert(
      fc.property(fc.oneof(helloWithSamples, welcomeArb, heartbeatArb, commitArb, refuseArb, tid.map((t): NativeMessage => ({ type: 'ack', tid: t }))), fc.nat(), fc.integer({ min: 1, max: 255 }), (msg, at, xor) => {
        const payload = Buffer.from(encodeNative(msg, packr));
        const i = at % payload.byteLength;
        payload[i] = payload[i]! ^ xor;
        let decoded: NativeMessage;
        try {
          decoded = decodeNative(payload, unpackr);
        } catch (e) {
          expect(e).toBeInstanceOf(ProtocolError);
          return;
        }
        // Decoded anyway (the change hit a byte that carries nothing adopted): the same content.
        expect(actedOn(decoded)).toEqual(actedOn(msg));
      }),
      { numRuns: 3000 },
    );
  });

  it('a changed start tid is refused by name; a welcome without a check (an older primary) is taken as it is', () => {
    const packr = createNativePackr();
    const unpackr = createNativeUnpackr();
    const welcome: NativeMessage = { type: 'welcome', lastTid: Buffer.alloc(8, 1), generation: { generation: 0, startTid: Buffer.alloc(8) }, options: { blobs: false, compression: 'none' } };
    const payload = Buffer.from(encodeNative(welcome, packr));
    const at = payload.indexOf(Buffer.alloc(8)); // the generation's start tid
    payload[at + 7] = 0x4c;
    expect(() => decodeNative(payload, unpackr)).toThrow(/welcome\.check does not match/);
    // Packed by hand without the field, as a primary before it did.
    const older = new Packr({ useRecords: false }).pack({ ...welcome, generation: { generation: 0, startTid: Buffer.from('000000000000004c', 'hex') } });
    expect(plain(decodeNative(older, unpackr))).toEqual(plain({ ...welcome, generation: { generation: 0, startTid: Buffer.from('000000000000004c', 'hex') } }));
  });
});

describe('the segmentedChecksum option', () => {
  it('round-trips in hello and welcome, and stays out of the content check: a hello asking for it passes the check of a primary that ignores it', () => {
    const packr = createNativePackr();
    const unpackr = createNativeUnpackr();
    const hello: NativeMessage = { type: 'hello', startTid: Buffer.alloc(8, 2), generations: [], options: { blobs: false, rawTxns: true, segmentedChecksum: true } };
    const welcome: NativeMessage = { type: 'welcome', lastTid: Buffer.alloc(8, 1), generation: { generation: 0, startTid: Buffer.alloc(8) }, options: { blobs: false, compression: 'none', segmentedChecksum: true } };
    for (const msg of [hello, welcome]) expect(plain(decodeNative(encodeNative(msg, packr), unpackr))).toEqual(plain(msg));
    // The same hello with the option taken out on the way, check kept: what a peer that drops unknown keys checks.
    const sent = new Packr({ useRecords: false }).unpack(encodeNative(hello, packr)) as { options: Record<string, unknown> };
    expect(sent.options.segmentedChecksum).toBe(true);
    delete sent.options.segmentedChecksum;
    expect(plain(decodeNative(raw(sent), unpackr))).toEqual(plain({ ...hello, options: { blobs: false, rawTxns: true } }));
    expect(() => decodeNative(raw({ ...sent, options: { ...sent.options, segmentedChecksum: 'yes' } }), unpackr)).toThrow(/hello\.options\.segmentedChecksum must be a boolean/);
  });
});

describe("the welcome's heartbeatIntervalMs", () => {
  const welcome: NativeMessage = { type: 'welcome', lastTid: Buffer.alloc(8, 1), generation: { generation: 0, startTid: Buffer.alloc(8) }, options: { blobs: false, compression: 'none' } };

  it('round-trips, 0 reads as absent, and it stays out of the content check: a peer that drops it checks the welcome alike', () => {
    const packr = createNativePackr();
    const unpackr = createNativeUnpackr();
    const announcing = { ...welcome, heartbeatIntervalMs: 1000 } as NativeMessage;
    expect(plain(decodeNative(encodeNative(announcing, packr), unpackr))).toEqual(plain(announcing));
    expect(plain(decodeNative(encodeNative({ ...welcome, heartbeatIntervalMs: 0 } as NativeMessage, packr), unpackr))).toEqual(plain(welcome));
    const sent = new Packr({ useRecords: false }).unpack(encodeNative(announcing, packr)) as Record<string, unknown>;
    expect(sent.heartbeatIntervalMs).toBe(1000);
    delete sent.heartbeatIntervalMs;
    expect(plain(decodeNative(raw(sent), unpackr))).toEqual(plain(welcome));
  });

  it.each([-1, 1.5, 86_400_001, 2 ** 53, '1000', [1000]])('reads %s as absent, so the welcome is still accepted', (value) => {
    const sent = new Packr({ useRecords: false }).unpack(encodeNative(welcome, createNativePackr())) as Record<string, unknown>;
    expect(plain(decodeNative(raw({ ...sent, heartbeatIntervalMs: value }), createNativeUnpackr()))).toEqual(plain(welcome));
  });
});

describe('inline records in txn', () => {
  const packr = createNativePackr();
  const unpackr = createNativeUnpackr();
  const id = (n: number) => Buffer.from([0, 0, 0, 0, 0, 0, 0, n]);

  it('round-trips a transaction carrying its records, including backpointers and no-data records', () => {
    const msg: NativeMessage = {
      type: 'txn',
      tid: id(9),
      status: ' ',
      user: Buffer.from('u'),
      description: Buffer.alloc(0),
      extension: Buffer.alloc(0),
      records: [
        { oid: id(1), dataTxn: null, data: Buffer.from('one') },
        { oid: id(2), dataTxn: id(5), data: Buffer.from('two') },
        { oid: id(3), dataTxn: null, data: null },
      ],
    };
    const back = decodeNative(encodeNative(msg, packr), unpackr, 'primary');
    expect(back).toEqual(msg);
  });

  it('rejects inline records of the wrong shape with a ProtocolError naming the index', () => {
    const wire = (records: unknown) =>
      new Packr({ useRecords: false }).pack({ type: 'txn', tid: id(1), status: ' ', user: Buffer.alloc(0), description: Buffer.alloc(0), extension: Buffer.alloc(0), records });
    expect(() => decodeNative(wire([[id(1), null]]), unpackr)).toThrow(/txn.records\[0\] must have 3 elements/);
    expect(() => decodeNative(wire([[Buffer.alloc(7), null, null]]), unpackr)).toThrow(/txn.records\[0\].oid/);
    expect(() => decodeNative(wire('x'), unpackr)).toThrow(ProtocolError);
  });

  it('bounds what one frame decodes to at MAX_MSGPACK_VALUES values of any kind, and reads more than MAX_INLINE_RECORDS inline records', () => {
    const wire = (records: unknown) =>
      new Packr({ useRecords: false }).pack({ type: 'txn', tid: id(1), status: ' ', user: Buffer.alloc(0), description: Buffer.alloc(0), extension: Buffer.alloc(0), records });
    const record = [id(1), null, null];
    expect((decodeNative(wire(Array.from({ length: MAX_INLINE_RECORDS }, () => record)), unpackr) as { records: unknown[] }).records).toHaveLength(MAX_INLINE_RECORDS);
    // More than a primary of this version inlines is still read: older ones inline any count within 16 MiB.
    expect((decodeNative(wire(Array.from({ length: MAX_INLINE_RECORDS + 1 }, () => record)), unpackr) as { records: unknown[] }).records).toHaveLength(MAX_INLINE_RECORDS + 1);
    // Refused by the scan, before msgpackr builds a value for each (a million nils is 1 MB on the wire).
    const nils = wire(new Array(MAX_MSGPACK_VALUES).fill(null));
    expect(() => decodeNative(nils, unpackr)).toThrow(ProtocolError);
    expect(() => decodeNative(nils, unpackr)).toThrow(`msgpack message holds more than ${MAX_MSGPACK_VALUES} values`);
  });
});

describe('the messages written by hand', () => {
  it('encodeTxnsFrame gives, in two buffers without copying the transactions, the bytes encodeNativeFrame gives', () => {
    const packr = createNativePackr();
    fc.assert(
      fc.property(
        fc.constantFrom(1, 2, 255, 256, 65535, 65536, 1 << 20),
        fc.oneof(fc.integer({ min: 1, max: 300 }), fc.integer({ min: 1, max: 0xffffffff })),
        fc.option(fc.integer({ min: 16, max: 64 }), { nil: undefined }),
        (n, count, linkBytes) => {
          const bytes = Buffer.alloc(n, n % 251);
          const prevLink = linkBytes === undefined ? {} : { prevLink: Buffer.alloc(linkBytes, 7) };
          const msg = { type: 'txns' as const, count, lastTid: Buffer.from('0123456789abcdef', 'hex'), ...prevLink, bytes };
          const [head, body] = encodeTxnsFrame(msg);
          expect(body).toBe(bytes);
          expect(Buffer.concat([head, body]).equals(encodeNativeFrame(msg, packr)), `${n} bytes, count ${count}`).toBe(true);
          const decoded = decodeNative(Buffer.concat([head, body]).subarray(FRAME_HEADER_BYTES), createNativeUnpackr(), 'primary');
          // Field by field: a deep equality over a megabyte of bytes takes seconds.
          if (decoded.type !== 'txns') throw new Error(`decoded a ${decoded.type}`);
          expect(decoded.count).toBe(count);
          expect(decoded.lastTid.equals(msg.lastTid) && decoded.bytes.equals(bytes)).toBe(true);
          expect(decoded.prevLink?.toString('hex')).toBe(msg.prevLink?.toString('hex'));
        },
      ),
      { numRuns: 40 },
    );
    expect(() => encodeTxnsFrame({ type: 'txns', count: 0, lastTid: Buffer.alloc(8), bytes: Buffer.alloc(1) })).toThrow(TypeError);
  });

  it('encodeCommitFrame gives the bytes encodeNativeFrame gives', () => {
    const packr = createNativePackr();
    for (const n of [16, 32]) {
      const checksum = Buffer.alloc(n, n);
      expect(encodeCommitFrame(checksum).equals(encodeNativeFrame({ type: 'commit', checksum }, packr))).toBe(true);
    }
    expect(() => encodeCommitFrame(Buffer.alloc(20))).toThrow(TypeError);
  });

  it('txns and commit laid out as written by hand decode as the same message in any other layout', () => {
    const unpackr = createNativeUnpackr();
    // The same fields, packed by plain Packr in another key order: the general decoder's path.
    const other = (m: Record<string, unknown>): Buffer => new Packr({ useRecords: false }).pack(Object.fromEntries(Object.entries(m).reverse()));
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 70_000 }),
        fc.oneof(fc.integer({ min: 1, max: 300 }), fc.integer({ min: 1, max: 0xffffffff })),
        fc.option(fc.integer({ min: 16, max: 64 }), { nil: undefined }),
        fc.constantFrom(16, 32),
        (n, count, linkBytes, checksumBytes) => {
          const bytes = Buffer.alloc(n, n % 251);
          const msg = { type: 'txns' as const, count, lastTid: Buffer.from('0123456789abcdef', 'hex'), ...(linkBytes ? { prevLink: Buffer.alloc(linkBytes, 7) } : {}), bytes };
          const hand = decodeNative(Buffer.concat(encodeTxnsFrame(msg)).subarray(FRAME_HEADER_BYTES), unpackr, 'primary');
          const general = decodeNative(other(msg), unpackr, 'primary');
          expect(plain(hand)).toEqual(plain(general));
          const checksum = Buffer.alloc(checksumBytes, 3);
          const commitPayload = encodeCommitFrame(checksum).subarray(FRAME_HEADER_BYTES);
          expect(plain(decodeNative(commitPayload, unpackr, 'primary'))).toEqual(plain(decodeNative(other({ type: 'commit', checksum }), unpackr, 'primary')));
        },
      ),
      { numRuns: 60 },
    );
  });

  it('txns and commit payloads that are cut, padded or out of range are refused as from any other layout', () => {
    const unpackr = createNativeUnpackr();
    const txns = Buffer.concat(encodeTxnsFrame({ type: 'txns', count: 2, lastTid: Buffer.alloc(8, 1), prevLink: Buffer.alloc(32, 2), bytes: Buffer.alloc(300, 5) })).subarray(FRAME_HEADER_BYTES);
    const commit = encodeCommitFrame(Buffer.alloc(32, 3)).subarray(FRAME_HEADER_BYTES);
    const zeroCount = Buffer.from(txns);
    zeroCount[1 + 5 + 5 + 6] = 0; // count is the fixint right after the type, txns and count strings
    for (const bad of [txns.subarray(0, txns.length - 1), Buffer.concat([txns, Buffer.alloc(1)]), commit.subarray(0, commit.length - 1), Buffer.concat([commit, Buffer.alloc(1)]), zeroCount]) {
      expect(() => decodeNative(bad, unpackr, 'primary')).toThrow(ProtocolError);
    }
    // A secondary never sends them.
    expect(() => decodeNative(txns, unpackr, 'secondary')).toThrow(/unexpected 'txns'/);
    expect(() => decodeNative(commit, unpackr, 'secondary')).toThrow(/unexpected 'commit'/);
  });

  it('encodeAckFrame gives the bytes encodeNativeFrame gives', () => {
    const packr = createNativePackr();
    for (const tid of [Buffer.alloc(8), Buffer.from('03e1a2b3c4d5e6f7', 'hex'), Buffer.alloc(8, 0xff)]) {
      expect(encodeAckFrame(tid).equals(encodeNativeFrame({ type: 'ack', tid }, packr))).toBe(true);
    }
    expect(() => encodeAckFrame(Buffer.alloc(7))).toThrow(TypeError);
  });
});

describe('limits at their exact boundaries', () => {
  const unpackr = createNativeUnpackr();
  const t = (n: number) => Buffer.from([0, 0, 0, 0, 0, 0, 0, n]);
  /** A hello packed by hand without a `check`, as a secondary from before the field sends it. */
  const hello = (fields: Record<string, unknown>) => raw({ type: 'hello', startTid: t(9), generations: [], options: { blobs: false }, ...fields });
  const welcome = (fields: Record<string, unknown>) =>
    raw({ type: 'welcome', lastTid: t(9), generation: { generation: 0, startTid: Buffer.alloc(8) }, options: { blobs: false, compression: 'none' }, ...fields });

  it('takes a hello whose generations start at the same tid (start tids never decrease, they may stay)', () => {
    const generations = [
      { generation: 1, startTid: t(5) },
      { generation: 2, startTid: t(5) },
    ];
    const msg = decodeNative(hello({ generations }), unpackr, 'secondary');
    expect(plain(msg)).toMatchObject({ generations: plain(generations) });
    // A start tid that goes back is refused.
    expectProtocolError(() => decodeNative(hello({ generations: [generations[0], { generation: 2, startTid: t(4) }] }), unpackr), /start tids must not decrease/);
  });

  it('takes a hello with exactly MAX_GENERATION_HISTORY generations and refuses one more', () => {
    const history = (n: number) => Array.from({ length: n }, (_, i) => ({ generation: i, startTid: t(1) }));
    const msg = decodeNative(hello({ generations: history(MAX_GENERATION_HISTORY) }), unpackr, 'secondary');
    expect(msg.type === 'hello' && msg.generations.length).toBe(MAX_GENERATION_HISTORY);
    expectProtocolError(() => decodeNative(hello({ generations: history(MAX_GENERATION_HISTORY + 1) }), unpackr), /hello\.generations has more than 1024 entries/);
  });

  it("refuses a hello asking for a compression other than 'none', also without a check", () => {
    expect(plain(decodeNative(hello({ options: { blobs: true, compression: 'none' } }), unpackr))).toMatchObject({ options: { blobs: true, compression: 'none' } });
    expectProtocolError(() => decodeNative(hello({ options: { blobs: true, compression: 'zstd' } }), unpackr), /hello\.options\.compression must be 'none'/);
  });

  it('keeps a hello nodeId of exactly NODE_ID_BYTES bytes and reads any other length as absent', () => {
    const nodeId = Buffer.from('0102030405060708', 'hex');
    const kept = decodeNative(hello({ nodeId }), unpackr, 'secondary');
    expect(kept.type === 'hello' && kept.nodeId?.toString('hex')).toBe('0102030405060708');
    for (const n of [NODE_ID_BYTES - 1, NODE_ID_BYTES + 1]) {
      const msg = decodeNative(hello({ nodeId: Buffer.alloc(n, 1) }), unpackr, 'secondary');
      expect(msg.type).toBe('hello');
      expect(msg.type === 'hello' && msg.nodeId).toBeUndefined();
    }
  });

  it('takes a chain head hash of 16 to 64 bytes and refuses 15 or 65', () => {
    for (const n of [16, 64]) {
      const msg = decodeNative(hello({ chainHead: { tid: t(9), hash: Buffer.alloc(n, 7) } }), unpackr, 'secondary');
      expect(msg.type === 'hello' && msg.chainHead?.hash.byteLength).toBe(n);
    }
    for (const n of [15, 65]) {
      expectProtocolError(() => decodeNative(hello({ chainHead: { tid: t(9), hash: Buffer.alloc(n, 7) } }), unpackr), /hello\.chainHead\.hash must be 16\.\.64 bytes/);
    }
  });

  it('keeps an upstream path of exactly MAX_UPSTREAM_PATH ids in a welcome and a heartbeat, and reads a longer one as absent', () => {
    const path = (n: number) => Array.from({ length: n }, (_, i) => Buffer.from([1, 2, 3, 4, 5, 6, i >> 8, i & 0xff]));
    const heartbeat = (upstreamPath: unknown) => raw({ type: 'heartbeat', lastTid: t(9), clockMs: 5, upstreamPath });
    const full = path(MAX_UPSTREAM_PATH);
    for (const wire of [welcome({ upstreamPath: full }), heartbeat(full)]) {
      const msg = decodeNative(wire, unpackr, 'primary');
      expect(plain((msg as { upstreamPath?: Buffer[] }).upstreamPath)).toEqual(plain(full));
    }
    const long = path(MAX_UPSTREAM_PATH + 1);
    for (const wire of [welcome({ upstreamPath: long }), heartbeat(long)]) {
      const msg = decodeNative(wire, unpackr, 'primary');
      expect(msg.type === 'welcome' || msg.type === 'heartbeat').toBe(true);
      expect(Object.hasOwn(msg, 'upstreamPath')).toBe(false);
    }
  });

  it('keeps a heartbeat interval of exactly a day and reads one ms more as absent', () => {
    expect(MAX_HEARTBEAT_INTERVAL_MS).toBe(86_400_000);
    const day = decodeNative(welcome({ heartbeatIntervalMs: 86_400_000 }), unpackr, 'primary');
    expect(day.type === 'welcome' && day.heartbeatIntervalMs).toBe(86_400_000);
    const longer = decodeNative(welcome({ heartbeatIntervalMs: 86_400_001 }), unpackr, 'primary');
    expect(longer.type).toBe('welcome');
    expect(Object.hasOwn(longer, 'heartbeatIntervalMs')).toBe(false);
  });

  it("takes a refusal's supportedVersions of exactly 64 entries and refuses 65", () => {
    const versions = (n: number) => Array.from({ length: n }, (_, i) => i + 1);
    const msg = decodeNative(raw({ type: 'refuse', code: 'unsupported-version', message: 'no', supportedVersions: versions(64) }), unpackr, 'primary');
    expect(msg.type === 'refuse' && msg.supportedVersions).toEqual(versions(64));
    expectProtocolError(
      () => decodeNative(raw({ type: 'refuse', code: 'unsupported-version', message: 'no', supportedVersions: versions(65) }), unpackr),
      /refuse\.supportedVersions must be an array of at most 64 versions/,
    );
  });

  it('refuses an inline record with a fourth element', () => {
    const txn = (records: unknown) => raw({ type: 'txn', tid: t(1), status: ' ', user: Buffer.alloc(0), description: Buffer.alloc(0), extension: Buffer.alloc(0), records });
    expect(decodeNative(txn([[t(2), null, Buffer.from('x')]]), unpackr, 'primary').type).toBe('txn');
    expectProtocolError(() => decodeNative(txn([[t(2), null, Buffer.from('x'), Buffer.from('extra')]]), unpackr), /txn\.records\[0\] must have 3 elements, got 4/);
  });

  it('decodes containers nested 8 deep (the message map counting as one) and refuses 9', () => {
    const nested = (maps: number): unknown => {
      let value: unknown = 1;
      for (let i = 0; i < maps; i++) value = { d: value };
      return value;
    };
    // The ack's map, then 7 maps inside an unknown field: 8 levels.
    expect(plain(decodeNative(raw({ type: 'ack', tid: t(1), deep: nested(7) }), unpackr))).toEqual({ type: 'ack', tid: '0000000000000001' });
    expectProtocolError(() => decodeNative(raw({ type: 'ack', tid: t(1), deep: nested(8) }), unpackr), /msgpack nesting deeper than 8/);
  });

  it('decodes a message of exactly MAX_MSGPACK_VALUES values and refuses one more', () => {
    // The ack's map, its 3 keys and its 3 values (the padding array one of them) are 7 values.
    const padded = (values: number) => raw({ type: 'ack', tid: t(1), pad: new Array(values - 7).fill(null) });
    expect(decodeNative(padded(MAX_MSGPACK_VALUES), unpackr).type).toBe('ack');
    expectProtocolError(() => decodeNative(padded(MAX_MSGPACK_VALUES + 1), unpackr), /msgpack message holds more than 1048576 values/);
  });

  it('takes a refusal message of exactly MAX_REFUSAL_MESSAGE_CHARS characters and refuses a longer one', () => {
    const refuse = (message: string) => raw({ type: 'refuse', code: 'internal', message });
    const msg = decodeNative(refuse('m'.repeat(MAX_REFUSAL_MESSAGE_CHARS)), unpackr, 'primary');
    expect(msg.type === 'refuse' && msg.message.length).toBe(4096);
    expectProtocolError(() => decodeNative(refuse('m'.repeat(MAX_REFUSAL_MESSAGE_CHARS + 1)), unpackr), /refuse\.message is longer than 4096 characters/);
  });

  it("takes a status session's peer of exactly MAX_STATUS_TEXT_CHARS characters and refuses a longer one", () => {
    const status = (peer: string) =>
      raw({
        type: 'status',
        role: 'primary',
        name: null,
        lastTid: t(3),
        lastTimeSeconds: null,
        fileSize: 0,
        clockMs: 0,
        upstream: null,
        sessions: [{ peer, protocol: 'zrs-ts/1', state: 'live', lastSentTid: null, ackedTid: null, bytesSent: 0 }],
        sessionCount: 1,
      });
    const msg = decodeNative(status('p'.repeat(MAX_STATUS_TEXT_CHARS)), unpackr, 'primary');
    expect(msg.type === 'status' && msg.sessions[0]?.peer.length).toBe(1024);
    expectProtocolError(() => decodeNative(status('p'.repeat(MAX_STATUS_TEXT_CHARS + 1)), unpackr), /status\.sessions\[0\]\.peer is longer than 1024 characters/);
  });
});

describe('a txns frame in the hand-written layout', () => {
  /** The payload laid out field by field as encodeTxnsFrame writes it, with a prevLink of `n` bytes. */
  const layout = (n: number): Buffer => {
    const str = (s: string) => Buffer.concat([Buffer.from([0xa0 | s.length]), Buffer.from(s, 'latin1')]);
    return Buffer.concat([
      Buffer.from([0x85]),
      str('type'),
      str('txns'),
      str('count'),
      Buffer.from([1]),
      str('lastTid'),
      Buffer.from([0xc4, 8]),
      Buffer.alloc(8, 1),
      str('prevLink'),
      Buffer.from([0xc4, n]),
      Buffer.alloc(n, 2),
      str('bytes'),
      Buffer.from([0xc4, 3, 9, 9, 9]),
    ]);
  };

  it('refuses a prevLink of 65 bytes (or 15), as any other layout is refused', () => {
    const unpackr = createNativeUnpackr();
    // The layout is the writer's: with a 64-byte link the bytes are the same, and decode.
    const written = Buffer.concat(encodeTxnsFrame({ type: 'txns', count: 1, lastTid: Buffer.alloc(8, 1), prevLink: Buffer.alloc(64, 2), bytes: Buffer.from([9, 9, 9]) }));
    expect(layout(64).equals(written.subarray(FRAME_HEADER_BYTES))).toBe(true);
    expect(decodeNative(layout(64), unpackr, 'primary')).toMatchObject({ type: 'txns', count: 1, prevLink: Buffer.alloc(64, 2) });
    expect(decodeNative(layout(16), unpackr, 'primary')).toMatchObject({ type: 'txns', count: 1, prevLink: Buffer.alloc(16, 2) });
    expectProtocolError(() => decodeNative(layout(65), unpackr, 'primary'), /txns\.prevLink must be 16\.\.64 bytes, got 65/);
    expectProtocolError(() => decodeNative(layout(15), unpackr, 'primary'), /txns\.prevLink must be 16\.\.64 bytes, got 15/);
  });
});

describe('the content check text, as docs/PROTOCOL.md defines it', () => {
  /** The first 8 bytes of sha256 over `text` read as latin1. */
  const check = (text: string): Buffer => createHash('sha256').update(text, 'latin1').digest().subarray(0, 8);
  /** The `check` field a message was sent with. */
  const sentCheck = (payload: Buffer): string => Buffer.from((new Packr({ useRecords: false }).unpack(payload) as { check: Uint8Array }).check).toString('hex');
  const t = (hex: string) => Buffer.from(hex, 'hex');

  it('of an ack is sha256 over ack|<tid>', () => {
    const tid = t('0102030405060708');
    const expected = check('ack|0102030405060708');
    expect(expected.toString('hex')).toBe('eadc32957155b1e2');
    const frame = encodeAckFrame(tid);
    expect(frame.subarray(-8).equals(expected)).toBe(true);
    // The whole frame: header, then the map {type: 'ack', tid, check}.
    expect(frame.toString('hex')).toBe('0000002883a474797065a361636ba3746964c4080102030405060708a5636865636bc408eadc32957155b1e2');
    expect(sentCheck(encodeNative({ type: 'ack', tid }, createNativePackr()))).toBe('eadc32957155b1e2');
  });

  it('of a hello covers its start tid, generations, chain head, samples and options', () => {
    const text = `hello|00000000000000ff|1@0000000000000010,2@0000000000000020|00000000000000ff:${'ab'.repeat(16)}|-|blobs=true compression=none rawTxns=true txnLinks=-`;
    expect(check(text).toString('hex')).toBe('6f06b598eb4418c8');
    const hello: NativeMessage = {
      type: 'hello',
      startTid: t('00000000000000ff'),
      generations: [
        { generation: 1, startTid: t('0000000000000010') },
        { generation: 2, startTid: t('0000000000000020') },
      ],
      chainHead: { tid: t('00000000000000ff'), hash: Buffer.alloc(16, 0xab) },
      options: { blobs: true, compression: 'none', rawTxns: true },
    };
    expect(sentCheck(encodeNative(hello, createNativePackr()))).toBe('6f06b598eb4418c8');
  });

  it('of a welcome covers its last tid, generation, history and granted options', () => {
    const text = 'welcome|0000000000000030|2@0000000000000020|1@0000000000000010,2@0000000000000020|blobs=false rawTxns=true txnLinks=true';
    expect(check(text).toString('hex')).toBe('cc1844fe2f040ffe');
    const welcome: NativeMessage = {
      type: 'welcome',
      lastTid: t('0000000000000030'),
      generation: { generation: 2, startTid: t('0000000000000020') },
      generations: [
        { generation: 1, startTid: t('0000000000000010') },
        { generation: 2, startTid: t('0000000000000020') },
      ],
      options: { blobs: false, compression: 'none', rawTxns: true, txnLinks: true },
    };
    expect(sentCheck(encodeNative(welcome, createNativePackr()))).toBe('cc1844fe2f040ffe');
  });
});
