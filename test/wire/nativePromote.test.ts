// Native codec of the promote request and its two answers, and the refusal's
// optional `lastTid`: round trips, senders, strict validation.

import { describe, expect, it } from 'vitest';
import { ProtocolError } from '../../src/errors.js';
import {
  MAX_REFUSAL_MESSAGE_CHARS,
  PROMOTE_REFUSAL_CODES,
  createNativePackr,
  createNativeUnpackr,
  decodeNative,
  encodeNative,
  type NativeMessage,
} from '../../src/wire/native.js';
import { decode, roundTrip } from './nativeHelpers.js';


describe('promote-request, promoted and promote-refused', () => {
  it('round-trip', () => {
    expect(roundTrip({ type: 'promote-request', force: true })).toEqual({ type: 'promote-request', force: true });
    const promoted: NativeMessage = { type: 'promoted', generation: { generation: 3, startTid: Buffer.alloc(8, 7) }, sessionsKept: 2 };
    expect(roundTrip(promoted)).toEqual(promoted);
    for (const code of PROMOTE_REFUSAL_CODES) {
      const refused: NativeMessage = { type: 'promote-refused', code, message: `no: ${code}` };
      expect(roundTrip(refused)).toEqual(refused);
    }
  });

  it('belong to their side: the request comes from a client, the answers from a node', () => {
    const req = encodeNative({ type: 'promote-request', force: false }, createNativePackr());
    expect(decodeNative(req, createNativeUnpackr(), 'secondary')).toEqual({ type: 'promote-request', force: false });
    expect(() => decodeNative(req, createNativeUnpackr(), 'primary')).toThrow("unexpected 'promote-request' message from a primary");
    const answer = encodeNative({ type: 'promote-refused', code: 'already-primary', message: 'x' }, createNativePackr());
    expect(() => decodeNative(answer, createNativeUnpackr(), 'secondary')).toThrow("unexpected 'promote-refused' message from a secondary");
  });

  it.each([
    [{ type: 'promote-request' }, "promote-request: missing field 'force'"],
    [{ type: 'promote-request', force: 'yes' }, 'promote-request.force must be a boolean'],
    [{ type: 'promoted', generation: { generation: 1, startTid: Buffer.alloc(7) }, sessionsKept: 0 }, 'promoted.generation.startTid must be 8 bytes, got 7'],
    [{ type: 'promoted', generation: { generation: 1, startTid: Buffer.alloc(8) }, sessionsKept: -1 }, 'promoted.sessionsKept must be an integer'],
    [{ type: 'promote-refused', code: 'busy', message: 'later' }, 'promote-refused with unknown code string "busy": later'],
    [{ type: 'promote-refused', code: 'refused', message: 'x'.repeat(MAX_REFUSAL_MESSAGE_CHARS + 1) }, `promote-refused.message is longer than ${MAX_REFUSAL_MESSAGE_CHARS} characters`],
  ])('rejects %j', (value, reason) => {
    expect(() => decode(value)).toThrow(ProtocolError);
    expect(() => decode(value)).toThrow(reason);
  });
});

describe('refuse.lastTid', () => {
  it('is optional, and checked when present', () => {
    const base = { type: 'refuse', code: 'diverged', message: 'm', forkTid: Buffer.alloc(8, 1) };
    expect(decode(base)).not.toHaveProperty('lastTid');
    expect(decode({ ...base, lastTid: null })).not.toHaveProperty('lastTid');
    expect(decode({ ...base, lastTid: Buffer.alloc(8, 9) })).toEqual({ ...base, lastTid: Buffer.alloc(8, 9) });
    expect(() => decode({ ...base, lastTid: Buffer.alloc(3) })).toThrow('refuse.lastTid must be 8 bytes, got 3');
  });
});
