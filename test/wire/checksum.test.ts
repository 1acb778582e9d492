// Stream checksum: zc.zrs's md5 chain reproduced on a real transcript, and the native sha256
// chain, under both rules, computed identically by a primary and a secondary, catching any
// flipped byte; the segmented rule rebuilt from its description in docs/PROTOCOL.md.

import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { ChecksumMismatchError } from '../../src/errors.js';
import { CHECKSUM_SEGMENT_BYTES, StreamChecksum, type ChecksumRule } from '../../src/wire/checksum.js';
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
function primaryStream(startTid: Buffer, txns: Buffer[][], rule: ChecksumRule = 'running'): { stream: Buffer; digests: Buffer[] } {
  const packr = createNativePackr();
  const checksum = new StreamChecksum(startTid, 'sha256', rule);
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
function secondaryVerify(startTid: Buffer, stream: Buffer, chunkBytes: number, rule: ChecksumRule = 'running'): { verified: number; error?: unknown } {
  const unpackr = createNativeUnpackr();
  const checksum = new StreamChecksum(startTid, 'sha256', rule);
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

  it.each(['running', 'segmented'] as const)('is computed identically by primary and secondary for any stream and any split (%s)', (rule) => {
    fc.assert(
      fc.property(
        tidArb,
        fc.array(fc.array(fc.uint8Array({ maxLength: 300 }).map((a) => Buffer.from(a)), { maxLength: 5 }), {
          minLength: 1,
          maxLength: 8,
        }),
        fc.integer({ min: 1, max: 500 }),
        (startTid, txns, chunkBytes) => {
          const { stream } = primaryStream(startTid, txns, rule);
          expect(secondaryVerify(startTid, stream, chunkBytes, rule)).toEqual({ verified: txns.length });
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

  it.each(['running', 'segmented'] as const)('detects any flipped byte at or before the commit that covers it (%s)', (rule) => {
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
          const { stream } = primaryStream(startTid, txns, rule);
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
          const result = secondaryVerify(startTid, corrupted, 64, rule);
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

/**
 * The segmented rule as docs/PROTOCOL.md states it, over the whole stream at once: the state starts
 * as 32 zero bytes; the start tid opens the first segment; a segment closes at each digest
 * (`digestsAt`: offsets into `stream`) and once it holds CHECKSUM_SEGMENT_BYTES; closing one makes
 * the state sha256(state || segment); a digest is the state after it closed its segment.
 */
function segmentedReference(startTid: Buffer, stream: Buffer, digestsAt: readonly number[]): string[] {
  const bytes = Buffer.concat([startTid, stream]);
  let state = Buffer.alloc(32);
  let from = 0;
  const close = (to: number): void => {
    state = createHash('sha256').update(state).update(bytes.subarray(from, to)).digest();
    from = to;
  };
  return digestsAt.map((offset) => {
    const at = startTid.length + offset;
    while (at - from >= CHECKSUM_SEGMENT_BYTES) close(from + CHECKSUM_SEGMENT_BYTES);
    close(at);
    return state.toString('hex');
  });
}

/** `n` bytes that depend on `seed` only. */
function pseudoRandomBytes(n: number, seed: number): Buffer {
  const out = Buffer.allocUnsafe(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

describe('StreamChecksum, segmented rule', () => {
  it('gives the digests its description gives, however the bytes are fed and wherever segments and digests fall', () => {
    fc.assert(
      fc.property(
        tidArb,
        // Up to four segments' worth, so digests land before, on and after segment ends.
        fc.integer({ min: 0, max: 4 * CHECKSUM_SEGMENT_BYTES + 100 }),
        fc.integer(),
        fc.array(fc.nat(), { minLength: 1, maxLength: 6 }),
        fc.array(fc.integer({ min: 1, max: 3 * CHECKSUM_SEGMENT_BYTES }), { minLength: 1, maxLength: 8 }),
        (startTid, length, seed, digestPicks, pieceSizes) => {
          const stream = pseudoRandomBytes(length, seed);
          const digestsAt = [...new Set(digestPicks.map((p) => p % (length + 1)))].sort((a, b) => a - b);
          const checksum = new StreamChecksum(startTid, 'sha256', 'segmented');
          const got: string[] = [];
          let fed = 0;
          let piece = 0;
          for (const at of digestsAt) {
            while (fed < at) {
              const n = Math.min(at - fed, pieceSizes[piece++ % pieceSizes.length]!);
              checksum.update(stream.subarray(fed, fed + n));
              fed += n;
            }
            got.push(checksum.digest().toString('hex'));
          }
          expect(got).toEqual(segmentedReference(startTid, stream, digestsAt));
        },
      ),
      { numRuns: 200 },
    );
  });

  it('closes a segment at every digest: a second digest with nothing fed between differs, unlike the running rule', () => {
    const checksum = new StreamChecksum(Buffer.alloc(8), 'sha256', 'segmented');
    expect(checksum.rule).toBe('segmented');
    expect(checksum.digestBytes).toBe(32);
    checksum.update(Buffer.alloc(0)); // an empty keep-alive feeds nothing
    const first = checksum.digest();
    expect(first.toString('hex')).toBe(segmentedReference(Buffer.alloc(8), Buffer.alloc(0), [0])[0]);
    expect(checksum.digest().equals(first)).toBe(false);
  });

  it('gives other digests than the running rule, so peers that disagree on the rule fail at the first commit', () => {
    const txns = [[Buffer.from('a'), Buffer.from('b')]];
    const { stream, digests } = primaryStream(Buffer.alloc(8), txns, 'segmented');
    expect(digests[0]!.equals(primaryStream(Buffer.alloc(8), txns, 'running').digests[0]!)).toBe(false);
    const result = secondaryVerify(Buffer.alloc(8), stream, 1 << 20, 'running');
    expect(result.verified).toBe(0);
    expect(result.error).toBeInstanceOf(ChecksumMismatchError);
  });

  it('is defined for sha256 only', () => {
    expect(() => new StreamChecksum(Buffer.alloc(8), 'md5', 'segmented')).toThrow(RangeError);
  });
});
