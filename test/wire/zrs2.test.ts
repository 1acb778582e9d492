// zc.zrs 2.x messages against real primary transcripts: every frame decodes to the recorded fields,
// every control message re-encodes byte for byte, and the md5 chain matches every recorded C.
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ChecksumMismatchError, PickleError, ProtocolError } from '../../src/errors.js';
import { dumps, loads, PickleObject, type PickleDict, type PickleValue } from '../../src/wire/pickle.js';
import { MESSAGE_TID, REDUCED_ALIKE, REDUCED_PER_PROTOCOL } from '../helpers/cpythonPickles.js';
import {
  blobBlockCount,
  decodeMessage,
  encodeMessage,
  MAX_ZRS2_MESSAGE_BYTES,
  Zrs2Checksum,
  Zrs2StreamParser,
  type Zrs2Event,
  type Zrs2Message,
  type Zrs2Protocol,
} from '../../src/wire/zrs2.js';

const FIXTURES = new URL('../../../shared/fixtures/zrs-protocol/', import.meta.url);
const readFixture = (name: string): Buffer => readFileSync(new URL(name, FIXTURES));
const readJson = (name: string): unknown => JSON.parse(readFixture(name).toString('utf8'));
const hex = (s: string): Buffer => Buffer.from(s, 'hex');
const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

/** A tiny local frame splitter (4-byte big-endian length + payload); framing.ts is tested elsewhere. */
function splitFrames(stream: Buffer): { offset: number; payload: Buffer }[] {
  const frames: { offset: number; payload: Buffer }[] = [];
  for (let pos = 0; pos < stream.length; ) {
    if (stream.length - pos < 4) throw new Error(`partial length prefix at ${pos}`);
    const end = pos + 4 + stream.readUInt32BE(pos);
    if (end > stream.length) throw new Error(`partial frame at ${pos}`);
    frames.push({ offset: pos, payload: stream.subarray(pos + 4, end) });
    pos = end;
  }
  return frames;
}

interface RecordedMessage {
  index: number;
  offset: number;
  length: number;
  type: 'T' | 'S' | 'B' | 'C' | 'data' | 'blob-block';
  pickle_hex?: string;
  sha256?: string;
  hex?: string;
  fields?: Record<string, unknown>;
}

interface Decoded {
  frames: number;
  transactions: number;
  trailing_partial_bytes: number;
  checksum: { C_messages: number; C_ok: number };
  messages: RecordedMessage[];
}

interface Transcript {
  name: string;
  stream: Buffer;
  startTid: Buffer;
  protocol: Zrs2Protocol;
  decoded: Decoded | undefined;
}

/** Every primary→secondary recording: `<scenario>.bin` and `real-secondary-*.primary-to-secondary.bin`. */
function transcripts(): Transcript[] {
  const names = readdirSync(FIXTURES).filter((f) => f.endsWith('.bin') && !f.startsWith('secondary-handshake-') && !f.endsWith('.secondary-to-primary.bin'));
  return names.map((bin) => {
    const real = bin.endsWith('.primary-to-secondary.bin');
    const json = readJson(bin.replace(real ? '.primary-to-secondary.bin' : '.bin', '.json')) as Record<string, unknown>;
    const sent = json.secondary_to_primary_frames as { payload_hex: string }[] | undefined;
    return {
      name: bin,
      stream: readFixture(bin),
      startTid: hex(sent ? sent[1]!.payload_hex : (json.start_tid as string)),
      protocol: (sent ? hex(sent[0]!.payload_hex).toString('latin1') : json.protocol) as Zrs2Protocol,
      decoded: (real ? json.decoded_primary_to_secondary : json.decoded) as Decoded | undefined,
    };
  });
}

const ALL = transcripts();
const WITH_FRAMES = ALL.filter((t) => t.decoded !== undefined);
const byName = (name: string): Transcript => {
  const t = ALL.find((x) => x.name === name);
  if (!t) throw new Error(`missing fixture ${name}`);
  return t;
};

/** Manifest-style JSON → PickleValue: objects are dicts (the decoder's Map). */
function fromJson(v: unknown): PickleValue {
  if (v === null || typeof v === 'boolean' || typeof v === 'string' || typeof v === 'number') return v;
  if (Array.isArray(v)) return v.map(fromJson);
  return new Map(Object.entries(v as Record<string, unknown>).map(([k, x]) => [k, fromJson(x)]));
}

/** What the recorder's `fields` say, in our message shape. */
function expectedMessage(m: RecordedMessage): Zrs2Message {
  const f = m.fields as Record<string, any>;
  const tidOrNull = (s: string | null): Buffer | null => (s === null ? null : hex(s));
  switch (m.type) {
    case 'T':
      return { type: 'T', tid: hex(f.tid), status: f.status, user: hex(f.user.hex), description: hex(f.description.hex), extension: fromJson(f.extension) as Map<string, PickleValue> };
    case 'S':
      return { type: 'S', oid: hex(f.oid), tid: hex(f.tid), version: f.version, dataTxn: tidOrNull(f.data_txn) };
    case 'B':
      return { type: 'B', oid: hex(f.oid), tid: hex(f.tid), version: f.version, dataTxn: tidOrNull(f.data_txn), blocks: f.blocks };
    case 'C':
      return { type: 'C', digest: hex(f.md5) };
    default:
      throw new Error(`not a control message: ${m.type}`);
  }
}

const isControl = (m: RecordedMessage): boolean => ['T', 'S', 'B', 'C'].includes(m.type);

function countBy<T>(items: T[], key: (t: T) => string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const item of items) out[key(item)] = (out[key(item)] ?? 0) + 1;
  return out;
}

describe('fixtures', () => {
  it('has the primary transcripts and the real-secondary recordings', () => {
    expect(WITH_FRAMES.length).toBeGreaterThanOrEqual(14);
    expect(WITH_FRAMES.filter((t) => t.name.startsWith('real-secondary-')).length).toBe(5);
    expect(WITH_FRAMES.some((t) => t.decoded!.messages.some((m) => m.type === 'B'))).toBe(true);
  });

  it.each(ALL.filter((t) => t.decoded === undefined).map((t) => [t.name, t] as const))('%s recorded no frames', (_n, t) => {
    expect(t.stream.length).toBe(0);
  });
});

describe.each(WITH_FRAMES.map((t) => [t.name, t] as const))('%s', (_name, t) => {
  const decoded = t.decoded!;
  const frames = splitFrames(t.stream);

  it('splits into the recorded frames', () => {
    expect(decoded.trailing_partial_bytes).toBe(0);
    expect(frames.length).toBe(decoded.frames);
    expect(frames.map((f) => [f.offset, f.payload.length])).toEqual(decoded.messages.map((m) => [m.offset, m.length]));
  });

  it('decodes every control message to the recorded fields and re-encodes it byte for byte', () => {
    for (const m of decoded.messages.filter(isControl)) {
      const payload = frames[m.index]!.payload;
      const message = decodeMessage(payload);
      expect(message, `frame ${m.index}`).toEqual(expectedMessage(m));
      expect(encodeMessage(message).equals(payload), `frame ${m.index}`).toBe(true);
      if (m.pickle_hex) expect(payload.toString('hex')).toBe(m.pickle_hex);
    }
  });

  it('has the recorded raw data and blob blocks', () => {
    for (const m of decoded.messages.filter((x) => !isControl(x))) {
      const payload = frames[m.index]!.payload;
      expect(sha256(payload), `frame ${m.index}`).toBe(m.sha256);
      if (m.hex !== undefined) expect(payload.toString('hex')).toBe(m.hex);
    }
  });

  it('matches every recorded C with the md5 chain', () => {
    expect(decoded.checksum.C_ok).toBe(decoded.checksum.C_messages);
    const sum = new Zrs2Checksum(t.startTid);
    let checked = 0;
    for (const m of decoded.messages) {
      if (m.type === 'C') {
        expect(sum.digest().toString('hex'), `frame ${m.index}`).toBe(m.fields!.md5);
        checked++;
      }
      sum.update(frames[m.index]!.payload);
    }
    expect(checked).toBe(decoded.checksum.C_messages);
  });

  it('parses into transaction events with every checksum verified', () => {
    const parser = new Zrs2StreamParser({ startTid: t.startTid, protocol: t.protocol });
    const events = frames.flatMap((f) => parser.push(f.payload));
    const kinds = countBy(decoded.messages, (m) => m.type);
    expect(countBy(events, (e) => e.kind)).toEqual(
      Object.fromEntries(
        Object.entries({ begin: kinds.T, record: kinds.S, blob: kinds.B, blobBlock: kinds['blob-block'], commit: kinds.C }).filter(([, n]) => n !== undefined),
      ),
    );
    expect(kinds.T).toBe(decoded.transactions);
    expect(parser.inTransaction).toBe(false);
    const lastBegin = events.filter((e): e is Extract<Zrs2Event, { kind: 'begin' }> => e.kind === 'begin').at(-1)!;
    expect(parser.lastCommittedTid.equals(lastBegin.tid)).toBe(true);
  });
});

describe('stream parser events', () => {
  const blobs = byName('blobs-zrs2.1-from-zero.bin');
  const events = (() => {
    const parser = new Zrs2StreamParser({ startTid: blobs.startTid });
    return splitFrames(blobs.stream).flatMap((f) => parser.push(f.payload));
  })();

  it('a 0-byte blob is a blob event with 0 blocks and no block events', () => {
    const empty = events.findIndex((e) => e.kind === 'blob' && e.blocks === 0);
    expect(events[empty]).toMatchObject({ kind: 'blob', oid: hex('0000000000000002'), tid: hex('03f9b75a26666666'), data: hex('8003635a4f44422e626c6f620a426c6f620a71002e80034e2e') });
    expect(events[empty + 1]!.kind).not.toBe('blobBlock');
  });

  it('blob blocks come indexed, full 64 KiB except the last, summing to the blob size', () => {
    const k300 = events.findIndex((e) => e.kind === 'blob' && e.tid.equals(hex('03f9b75a40000000')));
    const blocks = events.slice(k300 + 1, k300 + 6) as Extract<Zrs2Event, { kind: 'blobBlock' }>[];
    expect(blocks.map((b) => [b.index, b.blocks, b.last, b.block.length])).toEqual([
      [0, 5, false, 65536], [1, 5, false, 65536], [2, 5, false, 65536], [3, 5, false, 65536], [4, 5, true, 45073],
    ]);
    expect(blobBlockCount(307_217)).toBe(5);
    expect(blobBlockCount(0)).toBe(0);
    expect(blobBlockCount(65_536)).toBe(1);
  });

  it('an empty data frame is a record without data (an undone creation)', () => {
    const undo = byName('undo-zrs2.0-from-zero.bin');
    const parser = new Zrs2StreamParser({ startTid: undo.startTid, protocol: 'zrs2.0' });
    const records = splitFrames(undo.stream).flatMap((f) => parser.push(f.payload)).filter((e) => e.kind === 'record');
    expect(records.filter((r) => r.data === null).length).toBe(1);
    expect(records.filter((r) => r.dataTxn !== null).length).toBeGreaterThan(0);
  });

  it('event buffers are copies, not views of the pushed payload', () => {
    const basic = byName('basic-zrs2.0-from-zero.bin');
    const parser = new Zrs2StreamParser({ startTid: basic.startTid });
    const [t, s, data] = splitFrames(basic.stream).map((f) => Buffer.from(f.payload));
    parser.push(t!);
    parser.push(s!);
    const [record] = parser.push(data!) as Extract<Zrs2Event, { kind: 'record' }>[];
    data!.fill(0);
    expect(record!.data!.toString('hex')).toMatch(/^8003/);
  });
});

describe('stream parser errors', () => {
  const basic = byName('basic-zrs2.0-from-zero.bin');
  const basicFrames = splitFrames(basic.stream).map((f) => f.payload);
  const tid = (n: number): Buffer => Buffer.from(`03f58dff8777777${n}`, 'hex');

  it('a flipped digest byte fails at that commit, after the earlier ones (replay-into-real-secondary)', () => {
    const replay = (readJson('replay-into-real-secondary.json') as Record<string, any>)['replay basic with corrupted checksum'];
    expect(replay.corruption).toMatch(/txn index 2/);
    const parser = new Zrs2StreamParser({ startTid: basic.startTid });
    const events: Zrs2Event[] = [];
    let commits = 0;
    let error: unknown;
    for (const [i, payload] of basicFrames.entries()) {
      let frame = payload;
      if (basic.decoded!.messages[i]!.type === 'C' && commits++ === 2) {
        const digest = Buffer.from((decodeMessage(payload) as Extract<Zrs2Message, { type: 'C' }>).digest!);
        digest[0]! ^= 1;
        frame = encodeMessage({ type: 'C', digest });
      }
      try {
        events.push(...parser.push(frame));
      } catch (e) {
        error = e;
        break;
      }
    }
    expect(error).toBeInstanceOf(ChecksumMismatchError);
    const mismatch = error as ChecksumMismatchError;
    expect(mismatch.received[0]! ^ mismatch.expected[0]!).toBe(1);
    expect(events.filter((e) => e.kind === 'commit').length).toBe(2);
    expect(parser.lastCommittedTid.toString('hex')).toBe(replay.tid_of_txn_before_corrupted_one);
    expect(mismatch.tid!.compare(parser.lastCommittedTid)).toBe(1);
    expect(() => parser.push(Buffer.alloc(0))).toThrow(ProtocolError);
  });

  it('refuses a control message over MAX_ZRS2_MESSAGE_BYTES before decoding it, but not record data of that size', () => {
    const parser = new Zrs2StreamParser({ startTid: basic.startTid });
    expect(() => parser.push(Buffer.alloc(MAX_ZRS2_MESSAGE_BYTES + 1, 0x4e))).toThrow(`control message of ${MAX_ZRS2_MESSAGE_BYTES + 1} bytes, more than ${MAX_ZRS2_MESSAGE_BYTES}`);
    const inTxn = new Zrs2StreamParser({ startTid: basic.startTid });
    inTxn.push(basicFrames[0]!); // T
    inTxn.push(basicFrames[1]!); // S
    expect(inTxn.push(Buffer.alloc(MAX_ZRS2_MESSAGE_BYTES + 1))).toMatchObject([{ kind: 'record' }]);
  });

  it('refuses records or commits outside a transaction, and a T inside one', () => {
    const fresh = (): Zrs2StreamParser => new Zrs2StreamParser({ startTid: basic.startTid });
    expect(() => fresh().push(basicFrames[1]!)).toThrow(/S message outside a transaction/);
    expect(() => fresh().push(encodeMessage({ type: 'C', digest: null }))).toThrow(ProtocolError);
    const p = fresh();
    p.push(basicFrames[0]!);
    expect(() => p.push(basicFrames[0]!)).toThrow(/T message before/);
  });

  it('refuses a tid that does not follow the start tid', () => {
    const first = decodeMessage(basicFrames[0]!) as Extract<Zrs2Message, { type: 'T' }>;
    const p = new Zrs2StreamParser({ startTid: first.tid });
    expect(() => p.push(basicFrames[0]!)).toThrow(/is not after/);
  });

  it('refuses a record of another tid, a version, and a bad status', () => {
    const start = Buffer.alloc(8);
    const begin = (status = ' '): Zrs2StreamParser => {
      const p = new Zrs2StreamParser({ startTid: start });
      p.push(encodeMessage({ type: 'T', tid: tid(7), status, user: Buffer.alloc(0), description: Buffer.alloc(0), extension: new Map() }));
      return p;
    };
    expect(() => begin().push(encodeMessage({ type: 'S', oid: Buffer.alloc(8), tid: tid(8), version: '', dataTxn: null }))).toThrow(/record tid/);
    expect(() => begin().push(encodeMessage({ type: 'S', oid: Buffer.alloc(8), tid: tid(7), version: 'v', dataTxn: null }))).toThrow(/versions/);
    expect(() => begin('c')).toThrow(/status/);
    expect(begin('p').inTransaction).toBe(true);
  });

  it('refuses B on a zrs2.0 connection and oversized blob blocks', () => {
    const blobs = byName('blobs-zrs2.1-from-zero.bin');
    const frames = splitFrames(blobs.stream).map((f) => f.payload);
    const old = new Zrs2StreamParser({ startTid: blobs.startTid, protocol: 'zrs2.0' });
    expect(() => frames.forEach((f) => old.push(f))).toThrow(/B message on a zrs2.0 connection/);
    const p = new Zrs2StreamParser({ startTid: blobs.startTid });
    const firstBlock = blobs.decoded!.messages.find((m) => m.type === 'blob-block')!.index;
    frames.slice(0, firstBlock).forEach((f) => p.push(f));
    expect(() => p.push(Buffer.alloc(65_537))).toThrow(/exceeds 64 KiB/);
  });

  it("refuses ('C', ()) from a primary that sends no checksum (nothing is committed unchecked), and ignores keep-alives", () => {
    const p = new Zrs2StreamParser({ startTid: basic.startTid });
    const noChecksum = encodeMessage({ type: 'C', digest: null });
    expect(noChecksum.toString('hex')).toBe('2858010000004329742e'); // CPython: pickle ('C', ()) at protocol 1, fast
    const events = [basicFrames[0]!, Buffer.alloc(0), basicFrames[1]!, basicFrames[2]!, Buffer.alloc(0)].flatMap((f) => p.push(f));
    expect(events.map((e) => e.kind)).toEqual(['begin', 'record']);
    expect(() => p.push(noChecksum)).toThrow(/C message without a checksum for tid [0-9a-f]{16} \(a ZRS primary older than 2\.2\.3 sends none\)/);
    // With the checksum, the same transaction commits.
    const q = new Zrs2StreamParser({ startTid: basic.startTid });
    const committed = basicFrames.slice(0, 4).flatMap((f) => q.push(f));
    expect(committed.map((e) => e.kind)).toEqual(['begin', 'record', 'commit']);
  });
});

describe('encodeMessage', () => {
  it('stops a T whose extension shares one value many times at MAX_ZRS2_MESSAGE_BYTES, instead of writing it out each time without bound', () => {
    const big = 'A'.repeat(65_536);
    // As read from a stored extension of about 64 KiB that references one string 300 times.
    const extension = new Map<string, PickleValue>([['k', Array.from({ length: 300 }, () => big)]]);
    const t: Zrs2Message = { type: 'T', tid: Buffer.alloc(8, 1), status: ' ', user: Buffer.alloc(0), description: Buffer.alloc(0), extension };
    expect(() => encodeMessage(t)).toThrow(PickleError);
    expect(() => encodeMessage(t)).toThrow(`pickle larger than ${MAX_ZRS2_MESSAGE_BYTES} bytes`);
    // Under the bound, the same shape encodes.
    const small: Zrs2Message = { ...t, extension: new Map<string, PickleValue>([['k', Array.from({ length: 3 }, () => big)]]) };
    expect(decodeMessage(encodeMessage(small))).toEqual(small);
  });
});

describe('a T whose extension holds objects (a datetime, a set, an instance)', () => {
  it('is sent as zc.zrs sends it, from the extension as ZODB stored it, byte for byte', () => {
    const extension = loads(REDUCED_ALIKE.stored, { objects: true }) as PickleDict;
    const t: Zrs2Message = { type: 'T', tid: MESSAGE_TID, status: ' ', user: Buffer.alloc(0), description: Buffer.alloc(0), extension };
    expect(encodeMessage(t).toString('hex')).toBe(REDUCED_ALIKE.message.toString('hex'));
  });

  it.each([['alike', REDUCED_ALIKE], ['per protocol', REDUCED_PER_PROTOCOL]] as const)(
    "as zc.zrs sends it (%s) decodes, its objects kept as descriptions, and re-encodes byte for byte",
    (_name, v) => {
      const t = decodeMessage(v.message) as Extract<Zrs2Message, { type: 'T' }>;
      expect(t.type).toBe('T');
      expect(t.tid.equals(MESSAGE_TID)).toBe(true);
      expect([...t.extension.values()].some((x) => x instanceof PickleObject)).toBe(true);
      expect(encodeMessage(t).toString('hex')).toBe(v.message.toString('hex'));
    },
  );

  it('decoded from what zc.zrs sends, is stored as ZODB stores it when the values reduce alike at every protocol', () => {
    const t = decodeMessage(REDUCED_ALIKE.message) as Extract<Zrs2Message, { type: 'T' }>;
    expect(dumps(t.extension, { protocol: 3 }).toString('hex')).toBe(REDUCED_ALIKE.stored.toString('hex'));
  });
});

describe('decodeMessage errors', () => {
  const t = (fields: string): Buffer => Buffer.from(`(X\x01\x00\x00\x00T(${fields}tt.`, 'latin1');

  it.each([
    ['not a pickle', Buffer.from('hello'), /undecodable/],
    ['a pickle that is not a pair', Buffer.from('N.', 'latin1'), /not a \(type, fields\)/],
    ['an unknown type', Buffer.from('(X\x01\x00\x00\x00Q)t.', 'latin1'), /unknown zrs message type "Q"/],
    ['wrong arity', t('N'), /1 fields, expected 5/],
    ['a short tid', Buffer.from('(X\x01\x00\x00\x00C(C\x01\x00\x00\x00\x00\x00\x00\x00\x00tt.', 'latin1'), /undecodable/],
    ['a 5-byte md5', Buffer.from('(X\x01\x00\x00\x00C(c_codecs\nencode\n(X\x05\x00\x00\x00abcdeX\x06\x00\x00\x00latin1tRtt.', 'latin1'), /md5 has 5 bytes/],
    ['a global call where bytes belong', Buffer.from('(X\x01\x00\x00\x00C(cos\nsystem\n(X\x02\x00\x00\x00idtRtt.', 'latin1'), /md5 is not bytes/],
    ['an extension that is an object, not a dict', t('C\x08\x01\x01\x01\x01\x01\x01\x01\x01X\x01\x00\x00\x00 C\x00C\x00cos\nsystem\n(X\x02\x00\x00\x00idtR'), /T extension is not a dict/],
  ])('%s', (_name, payload, message) => {
    expect(() => decodeMessage(payload)).toThrow(ProtocolError);
    expect(() => decodeMessage(payload)).toThrow(message);
  });

  it('random bytes decode or throw ProtocolError', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 96 }), (bytes) => {
        try {
          decodeMessage(bytes);
        } catch (e) {
          if (!(e instanceof ProtocolError)) throw e;
        }
      }),
      { numRuns: 2000 },
    );
  });

  it('decodeMessage(encodeMessage(m)) equals m', () => {
    const bytes = (n: number): fc.Arbitrary<Buffer> => fc.uint8Array({ minLength: n, maxLength: n }).map((a) => Buffer.from(a));
    const any = fc.uint8Array({ maxLength: 40 }).map((a) => Buffer.from(a));
    const header = { oid: bytes(8), tid: bytes(8), version: fc.constant(''), dataTxn: fc.option(bytes(8), { nil: null }) };
    const message: fc.Arbitrary<Zrs2Message> = fc.oneof(
      fc.record({ type: fc.constant('T' as const), tid: bytes(8), status: fc.constantFrom(' ', 'p'), user: any, description: any, extension: fc.array(fc.tuple(fc.string(), fc.oneof(fc.string(), fc.integer(), fc.boolean()))).map((e) => new Map<string, PickleValue>(e)) }),
      fc.record({ type: fc.constant('S' as const), ...header }),
      fc.record({ type: fc.constant('B' as const), ...header, blocks: fc.nat() }),
      fc.record({ type: fc.constant('C' as const), digest: fc.option(bytes(16), { nil: null }) }),
    );
    fc.assert(
      fc.property(message, (m) => {
        expect(decodeMessage(encodeMessage(m))).toEqual(m);
      }),
    );
  });
});
