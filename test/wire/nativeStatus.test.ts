// Native codec of the status request and its reply: round trips (fast-check),
// senders, strict validation of every field, bounds, and the frame through
// the decoder with the status reply limit.

import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { ProtocolError } from '../../src/errors.js';
import { FrameDecoder } from '../../src/wire/framing.js';
import {
  MAX_STATUS_SESSIONS,
  MAX_STATUS_TEXT_CHARS,
  STATUS_REPLY_MAX_BYTES,
  createNativePackr,
  createNativeUnpackr,
  decodeNative,
  encodeNative,
  encodeNativeFrame,
  type NativeMessage,
  type StatusMessage,
} from '../../src/wire/native.js';
import { decode, packRaw } from './nativeHelpers.js';

const bytes = (n: number) => fc.uint8Array({ minLength: n, maxLength: n }).map((a) => Buffer.from(a));
const tid = bytes(8);
const text = fc.string({ maxLength: 40 });
// msgpack has no -0 (it packs as the integer 0): generate +0 only.
const noNegativeZero = (x: number): number => (x === 0 ? 0 : x);
const seconds = fc.double({ noNaN: true, noDefaultInfinity: true, min: 0, max: 1e12 }).map(noNegativeZero);

const sessionArb = fc.record({
  peer: text,
  protocol: fc.option(text, { nil: null }),
  state: text,
  lastSentTid: fc.option(tid, { nil: null }),
  ackedTid: fc.option(tid, { nil: null }),
  startTid: fc.option(tid, { nil: null }),
  bytesSent: fc.nat(),
});

const statusArb: fc.Arbitrary<StatusMessage> = fc
  .record({
    role: fc.constantFrom('primary' as const, 'secondary' as const),
    name: fc.option(text, { nil: null }),
    lastTid: tid,
    lastTimeSeconds: fc.option(fc.double({ noNaN: true, noDefaultInfinity: true, min: -1e10, max: 1e10 }).map(noNegativeZero), { nil: null }),
    fileSize: fc.nat(),
    clockMs: seconds,
    generation: fc.option(fc.record({ generation: fc.nat(), startTid: tid }), { nil: undefined }),
    upstream: fc.option(
      fc.record({
        address: text,
        protocol: text,
        state: text,
        primaryLastTid: fc.option(tid, { nil: null }),
        lastHeartbeat: fc.option(fc.record({ lastTid: tid, clockMs: seconds, receivedMs: seconds }), { nil: null }),
        lagSeconds: fc.option(seconds, { nil: null }),
        lastError: fc.option(text, { nil: null }),
      }),
      { nil: null },
    ),
    sessions: fc.array(sessionArb, { maxLength: 4 }),
    extra: fc.nat(3),
  })
  .map(({ generation, extra, ...s }): StatusMessage => ({
    type: 'status',
    ...s,
    ...(generation ? { generation } : {}),
    sessionCount: s.sessions.length + extra,
  }));

function sample(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    type: 'status',
    role: 'secondary',
    name: 'replica',
    lastTid: Buffer.alloc(8, 1),
    lastTimeSeconds: 1.5e9,
    fileSize: 1234,
    clockMs: 1e12,
    upstream: { address: 'db1:5000', protocol: 'zrs-ts/1', state: 'connected.replicating', primaryLastTid: Buffer.alloc(8, 2), lastHeartbeat: null, lagSeconds: 3.25 },
    sessions: [{ peer: '10.0.0.2:4000', protocol: 'zrs2.1', state: 'live', lastSentTid: Buffer.alloc(8, 1), ackedTid: null, bytesSent: 10 }],
    sessionCount: 1,
    ...overrides,
  };
}


describe('status-request and status messages', () => {
  it('round-trip (property)', () => {
    fc.assert(
      fc.property(statusArb, (msg) => {
        expect(decodeNative(encodeNative(msg, createNativePackr()), createNativeUnpackr(), 'primary')).toEqual(msg);
      }),
    );
    const req: NativeMessage = { type: 'status-request' };
    expect(decodeNative(encodeNative(req, createNativePackr()), createNativeUnpackr(), 'secondary')).toEqual(req);
  });

  it('belong to their side: the request comes from a client, the status from a node', () => {
    const req = encodeNative({ type: 'status-request' }, createNativePackr());
    expect(() => decodeNative(req, createNativeUnpackr(), 'primary')).toThrow("unexpected 'status-request' message from a primary");
    const st = packRaw(sample());
    expect(() => decodeNative(st, createNativeUnpackr(), 'secondary')).toThrow("unexpected 'status' message from a secondary");
  });

  it('ignores unknown keys in the request and the reply', () => {
    expect(decode({ type: 'status-request', verbose: true })).toEqual({ type: 'status-request' });
    expect(decode(sample({ futureField: 1 }))).not.toHaveProperty('futureField');
  });

  it("reads a session's startTid: absent (an older node) or nil as null", () => {
    expect((decode(sample()) as StatusMessage).sessions[0]!.startTid).toBeNull();
    const session = (sample().sessions as object[])[0]!;
    expect((decode(sample({ sessions: [{ ...session, startTid: Buffer.alloc(8, 4) }] })) as StatusMessage).sessions[0]!.startTid).toEqual(Buffer.alloc(8, 4));
    expect(() => decode(sample({ sessions: [{ ...session, startTid: Buffer.alloc(3) }] }))).toThrow('status.sessions[0].startTid must be 8 bytes');
  });

  it("reads an upstream's lastError: absent (an older node) or nil as null, a long one cut rather than refused", () => {
    expect((decode(sample()) as StatusMessage).upstream!.lastError).toBeNull();
    const upstream = sample().upstream as object;
    expect((decode(sample({ upstream: { ...upstream, lastError: 'connect ECONNREFUSED' } })) as StatusMessage).upstream!.lastError).toBe('connect ECONNREFUSED');
    expect((decode(sample({ upstream: { ...upstream, lastError: 'x'.repeat(5000) } })) as StatusMessage).upstream!.lastError).toHaveLength(MAX_STATUS_TEXT_CHARS);
    expect(() => decode(sample({ upstream: { ...upstream, lastError: 7 } }))).toThrow('status.upstream.lastError must be a string');
  });

  it('omits an absent generation, keeps a present one', () => {
    expect(decode(sample())).not.toHaveProperty('generation');
    expect(decode(sample({ generation: null }))).not.toHaveProperty('generation');
    expect(decode(sample({ generation: { generation: 2, startTid: Buffer.alloc(8, 3) } }))).toMatchObject({ generation: { generation: 2 } });
  });

  it.each([
    [{ role: 'leader' }, "status.role must be 'primary' or 'secondary'"],
    [{ role: undefined }, "status: missing field 'role'"],
    [{ name: 5 }, 'status.name must be a string'],
    [{ name: 'x'.repeat(MAX_STATUS_TEXT_CHARS + 1) }, `status.name is longer than ${MAX_STATUS_TEXT_CHARS} characters`],
    [{ lastTid: Buffer.alloc(7) }, 'status.lastTid must be 8 bytes, got 7'],
    [{ lastTimeSeconds: 'now' }, 'status.lastTimeSeconds must be a finite number'],
    [{ fileSize: -1 }, 'status.fileSize must be an integer'],
    [{ clockMs: -5 }, 'status.clockMs must be a finite number >= 0'],
    [{ sessions: {} }, 'status.sessions must be an array'],
    [{ sessions: [{}] }, "status.sessions[0]: missing field 'peer'"],
    [{ sessions: [{ ...(sample().sessions as object[])[0], ackedTid: Buffer.alloc(9) }] }, 'status.sessions[0].ackedTid must be 8 bytes, got 9'],
    [{ sessions: [{ ...(sample().sessions as object[])[0], bytesSent: 1.5 }] }, 'status.sessions[0].bytesSent must be an integer'],
    [{ sessionCount: 0 }, 'status.sessionCount must be an integer in 1..'],
    [{ upstream: 'db1' }, 'status.upstream must be a map'],
    [{ upstream: { ...(sample().upstream as object), lagSeconds: -1 } }, 'status.upstream.lagSeconds must be a finite number >= 0'],
    [{ upstream: { ...(sample().upstream as object), lastHeartbeat: { lastTid: Buffer.alloc(8), clockMs: 1 } } }, "status.upstream.lastHeartbeat: missing field 'receivedMs'"],
    [{ upstream: { ...(sample().upstream as object), primaryLastTid: Buffer.alloc(2) } }, 'status.upstream.primaryLastTid must be 8 bytes, got 2'],
  ])('rejects %j', (override, reason) => {
    const value = sample(override);
    for (const [k, v] of Object.entries(override)) if (v === undefined) delete value[k];
    expect(() => decode(value)).toThrow(ProtocolError);
    expect(() => decode(value)).toThrow(reason);
  });

  it('bounds the session list', () => {
    const s = (sample().sessions as object[])[0];
    const many = Array.from({ length: MAX_STATUS_SESSIONS + 1 }, () => s);
    expect(() => decode(sample({ sessions: many, sessionCount: many.length }))).toThrow(`status.sessions has more than ${MAX_STATUS_SESSIONS} entries`);
  });

  it('a full status fits the reply limit and passes the frame decoder', () => {
    const s = { peer: 'p'.repeat(100), protocol: 'zrs-ts/1', state: 'live', lastSentTid: Buffer.alloc(8), ackedTid: Buffer.alloc(8), startTid: Buffer.alloc(8), bytesSent: Number.MAX_SAFE_INTEGER };
    const msg = { ...(sample() as unknown as StatusMessage), sessions: Array.from({ length: MAX_STATUS_SESSIONS }, () => s), sessionCount: 5000 };
    const frame = encodeNativeFrame(msg, createNativePackr());
    expect(frame.length).toBeLessThan(STATUS_REPLY_MAX_BYTES);
    const decoder = new FrameDecoder({ maxFrameBytes: STATUS_REPLY_MAX_BYTES });
    decoder.feed(frame);
    const payload = decoder.next()!;
    expect(decodeNative(payload, createNativeUnpackr(), 'primary')).toMatchObject({ type: 'status', sessionCount: 5000 });
  });

  it('throws only ProtocolError on corrupted status frames (or decodes a valid one)', () => {
    fc.assert(
      fc.property(statusArb, fc.nat(), fc.integer({ min: 1, max: 255 }), (msg, at, xor) => {
        const payload = Buffer.from(encodeNative(msg, createNativePackr()));
        payload[at % payload.length]! ^= xor;
        let decoded;
        try {
          decoded = decodeNative(payload, createNativeUnpackr());
        } catch (err) {
          expect(err).toBeInstanceOf(ProtocolError);
          return;
        }
        // Whatever decodes is a valid message that re-encodes.
        expect(() => encodeNative(decoded, createNativePackr())).not.toThrow();
      }),
    );
  });
});
