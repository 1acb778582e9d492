// Stream checksum: zc.zrs's md5 chain reproduced on a real transcript, and the native sha256
// chain computed identically by a primary and a secondary, catching any flipped byte.

import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { ChecksumMismatchError } from '../../src/errors.js';
import { StreamChecksum } from '../../src/wire/checksum.js';
import { FRAME_HEADER_BYTES, FrameDecoder } from '../../src/wire/framing.js';
import {
  createNativePackr,
  createNativeUnpackr,
  decodeNative,
  encodeNativeFrame,
  type PrimaryMessage,
} from '../../src/wire/native.js';
import { fixturePath } from '../helpers/fixtures.js';

const tidArb = fc.uint8Array({ minLength: 8, maxLength: 8 }).map((a) => Buffer.from(a));

/** A primary's stream: transactions of records, each closed by a commit carrying the chain digest. */
function primaryStream(startTid: Buffer, txns: Buffer[][]): { stream: Buffer; digests: Buffer[] } {
  const packr = createNativePackr();
  const checksum = new StreamChecksum(startTid);
  const frames: Buffer[] = [];
  const digests: Buffer[] = [];
  const send = (msg: PrimaryMessage): void => {
    const frame = encodeNativeFrame(msg, packr);
    checksum.update(frame.subarray(FRAME_HEADER_BYTES));
    frames.push(frame);
  };
  txns.forEach((records, i) => {
    const tid = Buffer.alloc(8);
    tid.writeUInt32BE(i + 1, 4);
    send({ type: 'txn', tid, status: ' ', user: Buffer.from('u'), description: Buffer.alloc(0), extension: Buffer.alloc(0) });
    for (const data of records) send({ type: 'record', oid: Buffer.alloc(8, i), dataTxn: null, data });
    const digest = checksum.digest();
    digests.push(digest);
    send({ type: 'commit', checksum: digest });
  });
  return { stream: Buffer.concat(frames), digests };
}

/** A secondary consuming `stream`: the number of commits verified before the first mismatch. */
function secondaryVerify(startTid: Buffer, stream: Buffer, chunkBytes: number): { verified: number; error?: unknown } {
  const unpackr = createNativeUnpackr();
  const checksum = new StreamChecksum(startTid);
  const decoder = new FrameDecoder({ maxFrameBytes: 1 << 20 });
  let verified = 0;
  try {
    for (let i = 0; i < stream.byteLength; i += chunkBytes) {
      for (const payload of decoder.push(stream.subarray(i, i + chunkBytes))) {
        const msg = decodeNative(payload, unpackr, 'primary');
        if (msg.type === 'commit') {
          checksum.verify(msg.checksum);
          verified += 1;
        }
        checksum.update(payload);
      }
    }
  } catch (error) {
    return { verified, error };
  }
  return { verified };
}

describe('StreamChecksum', () => {
  it('reproduces every zc.zrs md5 digest of a recorded zrs2.0 stream', () => {
    const stream = readFileSync(fixturePath('zrs-protocol', 'basic-zrs2.0-from-zero.bin'));
    const meta = JSON.parse(readFileSync(fixturePath('zrs-protocol', 'basic-zrs2.0-from-zero.json'), 'utf8')) as {
      start_tid: string;
      decoded: { messages: { index: number; type: string; fields: { md5?: string } }[] };
    };
    const expected = new Map(
      meta.decoded.messages.filter((m) => m.type === 'C').map((m) => [m.index, m.fields.md5 as string]),
    );
    expect(expected.size).toBe(53);
    const checksum = new StreamChecksum(Buffer.from(meta.start_tid, 'hex'), 'md5');
    expect(checksum.digestBytes).toBe(16);
    const frames = new FrameDecoder({ maxFrameBytes: 1 << 20 }).push(stream);
    let checked = 0;
    frames.forEach((payload, index) => {
      const md5 = expected.get(index);
      if (md5 !== undefined) {
        expect(checksum.digest().toString('hex')).toBe(md5);
        checksum.verify(Buffer.from(md5, 'hex'));
        checked += 1;
      }
      checksum.update(payload);
    });
    expect(checked).toBe(53);
  });

  it('uses sha256 for native, and digest() does not end the chain', () => {
    const checksum = new StreamChecksum(Buffer.alloc(8));
    expect(checksum.algorithm).toBe('sha256');
    expect(checksum.digestBytes).toBe(32);
    const before = checksum.digest();
    expect(checksum.digest().equals(before)).toBe(true);
    checksum.update(Buffer.from('x'));
    expect(checksum.digest().equals(before)).toBe(false);
    // Empty keep-alive payloads change nothing.
    const after = checksum.digest();
    checksum.update(Buffer.alloc(0));
    expect(checksum.digest().equals(after)).toBe(true);
  });

  it('depends on the start tid', () => {
    const a = new StreamChecksum(Buffer.alloc(8, 0));
    const b = new StreamChecksum(Buffer.alloc(8, 1));
    expect(a.digest().equals(b.digest())).toBe(false);
    expect(() => new StreamChecksum(Buffer.alloc(7))).toThrow(RangeError);
  });

  it('is computed identically by primary and secondary for any stream and any split', () => {
    fc.assert(
      fc.property(
        tidArb,
        fc.array(fc.array(fc.uint8Array({ maxLength: 300 }).map((a) => Buffer.from(a)), { maxLength: 5 }), {
          minLength: 1,
          maxLength: 8,
        }),
        fc.integer({ min: 1, max: 500 }),
        (startTid, txns, chunkBytes) => {
          const { stream } = primaryStream(startTid, txns);
          expect(secondaryVerify(startTid, stream, chunkBytes)).toEqual({ verified: txns.length });
        },
      ),
    );
  });

  it('chains across transactions: each digest differs and a later one covers earlier commits', () => {
    const startTid = Buffer.alloc(8);
    const txns = [[Buffer.from('a')], [Buffer.from('a')]];
    const { digests } = primaryStream(startTid, txns);
    expect(digests[0]?.equals(digests[1] as Buffer)).toBe(false);
  });

  it('detects any flipped byte at or before the commit that covers it', () => {
    fc.assert(
      fc.property(
        tidArb,
        fc.array(fc.array(fc.uint8Array({ minLength: 1, maxLength: 100 }).map((a) => Buffer.from(a)), { minLength: 1, maxLength: 3 }), {
          minLength: 1,
          maxLength: 4,
        }),
        fc.nat(),
        fc.integer({ min: 1, max: 255 }),
        (startTid, txns, at, xor) => {
          const { stream } = primaryStream(startTid, txns);
          // Flip a payload byte (not a header byte: those are caught by framing/decoding instead).
          const decoder = new FrameDecoder({ maxFrameBytes: 1 << 20 });
          const payloadOffsets: number[] = [];
          let offset = 0;
          for (const p of decoder.push(stream)) {
            for (let i = 0; i < p.byteLength; i++) payloadOffsets.push(offset + FRAME_HEADER_BYTES + i);
            offset += FRAME_HEADER_BYTES + p.byteLength;
          }
          const corrupted = Buffer.from(stream);
          const i = payloadOffsets[at % payloadOffsets.length] as number;
          corrupted[i] = (corrupted[i] ?? 0) ^ xor;
          const result = secondaryVerify(startTid, corrupted, 64);
          // Either the checksum catches it, or the corruption broke a message so it fails to decode;
          // it never verifies every commit.
          expect(result.verified).toBeLessThan(txns.length);
          expect(result.error).toBeDefined();
        },
      ),
      { numRuns: 500 },
    );
  });

  it('verify throws ChecksumMismatchError carrying both digests and the tid', () => {
    const checksum = new StreamChecksum(Buffer.alloc(8));
    const good = checksum.digest();
    const bad = Buffer.from(good);
    bad[0] = (bad[0] ?? 0) ^ 1;
    const tid = Buffer.alloc(8, 3);
    let error: unknown;
    try {
      checksum.verify(bad, tid);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ChecksumMismatchError);
    expect(error).toMatchObject({ expected: good, received: bad, tid });
    expect(() => checksum.verify(good.subarray(0, 16))).toThrow(ChecksumMismatchError);
    expect(() => checksum.verify(good)).not.toThrow();
  });
});
