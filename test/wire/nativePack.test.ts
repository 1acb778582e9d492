// Native codec of the pack request, its progress and its two answers: round
// trips, senders, strict validation.

import { describe, expect, it } from 'vitest';
import { ProtocolError } from '../../src/errors.js';
import {
  MAX_REFUSAL_MESSAGE_CHARS,
  PACK_BLOB_FILES,
  PACK_REFUSAL_CODES,
  PACK_STEPS,
  createNativePackr,
  createNativeUnpackr,
  decodeNative,
  encodeNative,
  type NativeMessage,
} from '../../src/wire/native.js';
import { decode, roundTrip } from './nativeHelpers.js';


const packed = {
  type: 'packed',
  packed: true,
  packTid: Buffer.alloc(8, 3),
  sizeBefore: 5_000_000_000,
  sizeAfter: 0,
  tailTransactions: 7,
  blobFiles: 'deleted',
  removedBlobFiles: 2,
  blobFilesNotRemoved: 1,
  blobRemovalError: 'EACCES',
} as const;

const { blobRemovalError: _error, ...withoutError } = packed;

describe('pack-request, pack-progress, packed and pack-refused', () => {
  it('round-trip, a fractional pack time exactly', () => {
    const request: NativeMessage = { type: 'pack-request', time: 1_764_460_800.123456, gc: true };
    expect(roundTrip(request)).toEqual(request);
    for (const step of PACK_STEPS) expect(roundTrip({ type: 'pack-progress', step, done: 5, total: 9 })).toEqual({ type: 'pack-progress', step, done: 5, total: 9 });
    for (const blobFiles of PACK_BLOB_FILES) expect(roundTrip({ ...packed, blobFiles })).toEqual({ ...packed, blobFiles });
    expect(roundTrip({ ...packed, blobRemovalError: null })).toEqual({ ...packed, blobRemovalError: null });
    for (const code of PACK_REFUSAL_CODES) {
      const refused: NativeMessage = { type: 'pack-refused', code, message: `no: ${code}` };
      expect(roundTrip(refused)).toEqual(refused);
    }
  });

  it('belong to their side: the request comes from a client, the rest from a node', () => {
    const req = encodeNative({ type: 'pack-request', time: 1, gc: false }, createNativePackr());
    expect(decodeNative(req, createNativeUnpackr(), 'secondary')).toEqual({ type: 'pack-request', time: 1, gc: false });
    expect(() => decodeNative(req, createNativeUnpackr(), 'primary')).toThrow("unexpected 'pack-request' message from a primary");
    for (const msg of [{ type: 'pack-progress', step: 'copy', done: 0, total: 0 }, packed, { type: 'pack-refused', code: 'failed', message: 'x' }] as NativeMessage[]) {
      expect(() => decodeNative(encodeNative(msg, createNativePackr()), createNativeUnpackr(), 'secondary')).toThrow(`unexpected '${msg.type}' message from a secondary`);
    }
  });

  it.each([
    ["pack-request: missing field 'time'", { type: 'pack-request', gc: true }],
    ['pack-request.time must be more than 0 seconds', { type: 'pack-request', time: 0, gc: true }],
    ['pack-request.time must be a finite number >= 0, got number -5', { type: 'pack-request', time: -5, gc: true }],
    ['pack-request.time must be a finite number >= 0', { type: 'pack-request', time: Infinity, gc: true }],
    ['pack-request.time must be a finite number >= 0, got string', { type: 'pack-request', time: '1700000000', gc: true }],
    ['pack-request.gc must be a boolean', { type: 'pack-request', time: 1, gc: 'yes' }],
    ['pack-progress.step must be one of index, references, copy', { type: 'pack-progress', step: 'sweep', done: 0, total: 1 }],
    ['pack-progress.done must be an integer', { type: 'pack-progress', step: 'copy', done: -1, total: 1 }],
    ['pack-progress.total must be an integer', { type: 'pack-progress', step: 'copy', done: 1, total: 1.5 }],
    ['packed.packTid must be 8 bytes, got 7', { ...packed, packTid: Buffer.alloc(7) }],
    ['packed.blobFiles must be one of none, deleted, kept', { ...packed, blobFiles: 'some' }],
    ['packed.sizeAfter must be an integer', { ...packed, sizeAfter: -1 }],
    ['packed.packed must be a boolean', { ...packed, packed: 1 }],
    [`packed.blobRemovalError is longer than ${MAX_REFUSAL_MESSAGE_CHARS} characters`, { ...packed, blobRemovalError: 'x'.repeat(MAX_REFUSAL_MESSAGE_CHARS + 1) }],
    ["packed: missing field 'blobRemovalError'", withoutError],
    ['pack-refused.code must be one of refused, not-packable, gc-refused, failed, got string "busy"', { type: 'pack-refused', code: 'busy', message: 'later' }],
    ['packed.blobRemovalError must be a string, got number', { ...packed, blobRemovalError: 13 }],
    [`pack-refused.message is longer than ${MAX_REFUSAL_MESSAGE_CHARS} characters`, { type: 'pack-refused', code: 'refused', message: 'x'.repeat(MAX_REFUSAL_MESSAGE_CHARS + 1) }],
  ])('rejects a message where %s', (reason, value) => {
    expect(() => decode(value)).toThrow(ProtocolError);
    expect(() => decode(value)).toThrow(reason);
  });
});
