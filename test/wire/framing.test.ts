// Framing: round-trips, arbitrary splits, limits checked before bodies are buffered, zero-copy
// for frames inside one chunk, and linear time on long streams.

import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { FrameTooLargeError } from '../../src/errors.js';
import {
  FRAME_HEADER_BYTES,
  FrameDecoder,
  KEEP_ALIVE_FRAME,
  encodeFrame,
  encodeFrameHeader,
  foreignPeer,
} from '../../src/wire/framing.js';

/** Cuts `bytes` at the given offsets (sorted, deduplicated, in range) into views. */
function split(bytes: Buffer, cuts: number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => c % (bytes.byteLength + 1)))].sort((a, b) => a - b);
  const chunks: Buffer[] = [];
  let start = 0;
  for (const p of [...points, bytes.byteLength]) {
    chunks.push(bytes.subarray(start, p));
    start = p;
  }
  return chunks;
}

const payloads = fc.array(fc.uint8Array({ minLength: 0, maxLength: 300 }), { maxLength: 30 });

/** What `run` throws (undefined when it returns). */
function thrownBy(run: () => unknown): unknown {
  try {
    run();
  } catch (e) {
    return e;
  }
  return undefined;
}

describe('encodeFrame / encodeFrameHeader', () => {
  it('writes a 4-byte big-endian length before the payload', () => {
    expect(encodeFrame(Buffer.from('zrs2.0')).toString('hex')).toBe('000000067a7273322e30');
    expect(encodeFrameHeader(0x01020304).toString('hex')).toBe('01020304');
    expect(KEEP_ALIVE_FRAME.toString('hex')).toBe('00000000');
    expect(encodeFrame(new Uint8Array(0)).toString('hex')).toBe('00000000');
  });

  it('rejects lengths a header cannot carry', () => {
    expect(() => encodeFrameHeader(-1)).toThrow(RangeError);
    expect(() => encodeFrameHeader(2 ** 32)).toThrow(RangeError);
    expect(() => encodeFrameHeader(1.5)).toThrow(RangeError);
  });
});

describe('foreignPeer', () => {
  it('names text where a frame header belongs, and never a header a ZRS node sends', () => {
    expect(foreignPeer(Buffer.from('HTTP/1.1 400 Bad Request\r\n'))).toBe('a web server (it answered in HTTP: a metrics address?)');
    expect(foreignPeer(Buffer.from('SSH-2.0-OpenSSH_9.6\r\n'))).toBe('an SSH server');
    expect(foreignPeer(Buffer.from('220 smtp.example ESMTP'))).toBe('a server that sent text ("220 smtp.example ESMTP")');
    expect(foreignPeer(Buffer.from('HTT'))).toBeNull(); // too short to tell
    // Any header up to the largest frame limit a node reads first (64 KiB) has a zero byte.
    fc.assert(fc.property(fc.integer({ min: 0, max: 64 * 1024 }), fc.uint8Array({ maxLength: 8 }), (n, rest) => foreignPeer(Buffer.concat([encodeFrameHeader(n), rest])) === null));
  });

  it('reads DEL as not text, so a header ending in it could be a frame', () => {
    expect(foreignPeer(Buffer.from([0x41, 0x42, 0x43, 0x7f]))).toBeNull();
    expect(foreignPeer(Buffer.from([0x41, 0x42, 0x43, 0x7e]))).toBe('a server that sent text ("ABC~")');
  });

  it('tells from exactly 4 bytes', () => {
    expect(foreignPeer(Buffer.from('HTTP'))).toBe('a web server (it answered in HTTP: a metrics address?)');
    expect(foreignPeer(Buffer.from('SSH-'))).toBe('an SSH server');
  });

  it('quotes the first 40 characters of a longer text', () => {
    const text = 'abcdefghij'.repeat(6);
    expect(foreignPeer(Buffer.from(text))).toBe(`a server that sent text ("${text.slice(0, 40)}")`);
  });
});

describe('FrameDecoder', () => {
  it('decodes any split of a frame stream to the same frames (push)', () => {
    fc.assert(
      fc.property(payloads, fc.array(fc.nat(), { maxLength: 40 }), (frames, cuts) => {
        const stream = Buffer.concat(frames.map((p) => encodeFrame(p)));
        const decoder = new FrameDecoder({ maxFrameBytes: 300 });
        const out: Buffer[] = [];
        for (const chunk of split(stream, cuts)) out.push(...decoder.push(chunk));
        expect(out.map((b) => b.toString('hex'))).toEqual(frames.map((p) => Buffer.from(p).toString('hex')));
        expect(decoder.bufferedBytes).toBe(0);
      }),
    );
  });

  it('decodes any split the same with feed/next, including single-byte chunks', () => {
    fc.assert(
      fc.property(payloads, fc.integer({ min: 1, max: 7 }), (frames, step) => {
        const stream = Buffer.concat(frames.map((p) => encodeFrame(p)));
        const decoder = new FrameDecoder({ maxFrameBytes: 300 });
        const out: string[] = [];
        for (let i = 0; i < stream.byteLength; i += step) {
          decoder.feed(stream.subarray(i, i + step));
          for (let f = decoder.next(); f !== null; f = decoder.next()) out.push(f.toString('hex'));
        }
        expect(out).toEqual(frames.map((p) => Buffer.from(p).toString('hex')));
      }),
    );
  });

  it('returns keep-alives as empty frames', () => {
    const decoder = new FrameDecoder({ maxFrameBytes: 8 });
    const frames = decoder.push(Buffer.concat([KEEP_ALIVE_FRAME, encodeFrame(Buffer.from('ab')), KEEP_ALIVE_FRAME]));
    expect(frames.map((f) => f.byteLength)).toEqual([0, 2, 0]);
  });

  it('returns a frame lying inside one chunk as a view, and copies a spanning one once', () => {
    const stream = Buffer.concat([encodeFrame(Buffer.from('hello')), encodeFrame(Buffer.from('world!'))]);
    const decoder = new FrameDecoder({ maxFrameBytes: 100 });
    const [first] = decoder.push(stream.subarray(0, 12));
    const [second] = decoder.push(stream.subarray(12));
    expect(first?.toString()).toBe('hello');
    expect(second?.toString()).toBe('world!');
    stream.fill(0x2e); // the chunks' owner breaks the contract: only the view follows
    expect(first?.toString()).toBe('.....');
    expect(second?.toString()).toBe('world!');
  });

  it('accepts plain Uint8Array chunks and returns Buffers', () => {
    const decoder = new FrameDecoder({ maxFrameBytes: 100 });
    const [frame] = decoder.push(new Uint8Array([0, 0, 0, 2, 7, 9]));
    expect(Buffer.isBuffer(frame)).toBe(true);
    expect([...(frame ?? [])]).toEqual([7, 9]);
  });

  it('throws FrameTooLargeError on the header, before any body byte arrives', () => {
    const decoder = new FrameDecoder({ maxFrameBytes: 8 });
    const error = thrownBy(() => decoder.push(encodeFrameHeader(17)));
    expect(error).toBeInstanceOf(FrameTooLargeError);
    expect(error).toMatchObject({ length: 17, limit: 8 });
    expect(decoder.bufferedBytes).toBe(FRAME_HEADER_BYTES); // the header only
    expect(decoder.insideFrame).toBe(true);
    // The decoder stays failed.
    expect(() => decoder.push(Buffer.alloc(17))).toThrow(FrameTooLargeError);
  });

  it('rethrows the same FrameTooLargeError from a later feed', () => {
    const decoder = new FrameDecoder({ maxFrameBytes: 8 });
    decoder.feed(encodeFrameHeader(17));
    const error = thrownBy(() => decoder.next());
    expect(error).toBeInstanceOf(FrameTooLargeError);
    const again = thrownBy(() => decoder.feed(Buffer.alloc(17)));
    expect(again).toBe(error);
  });

  it('stays failed after an oversized header split across chunks: body bytes are never read as a frame', () => {
    const decoder = new FrameDecoder({ maxFrameBytes: 8 });
    const header = encodeFrameHeader(9);
    decoder.feed(header.subarray(0, 2));
    decoder.feed(header.subarray(2));
    decoder.feed(Buffer.concat([encodeFrameHeader(0), encodeFrame(Buffer.from('abc'))])); // body bytes that look like frames
    const error = thrownBy(() => decoder.next());
    expect(error).toBeInstanceOf(FrameTooLargeError);
    expect(error).toMatchObject({ length: 9, limit: 8 });
    const again = thrownBy(() => decoder.next());
    expect(again).toBe(error);
  });

  it('detects an oversized header split across chunks when its last byte arrives', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 3 }), fc.integer({ min: 9, max: 2 ** 32 - 1 }), (cut, length) => {
        const decoder = new FrameDecoder({ maxFrameBytes: 8 });
        const header = encodeFrameHeader(length);
        expect(decoder.push(header.subarray(0, cut))).toEqual([]);
        expect(() => decoder.push(header.subarray(cut))).toThrow(FrameTooLargeError);
      }),
    );
  });

  it('rejects an announced 4 GiB frame without allocating it', () => {
    const decoder = new FrameDecoder({ maxFrameBytes: 256 * 1024 * 1024 });
    expect(() => decoder.push(Buffer.from('ffffffff00', 'hex'))).toThrow(FrameTooLargeError);
  });

  it('applies a limit changed mid-chunk to the frames after it (handshake then data)', () => {
    const name = encodeFrame(Buffer.from('zrs-ts/1'));
    const hello = encodeFrame(Buffer.alloc(1000, 1));
    const decoder = new FrameDecoder({ maxFrameBytes: 16 });
    decoder.feed(Buffer.concat([name, hello]));
    expect(decoder.next()?.toString()).toBe('zrs-ts/1');
    decoder.setMaxFrameBytes(64 * 1024);
    expect(decoder.next()?.byteLength).toBe(1000);
    expect(decoder.next()).toBeNull();

    const strict = new FrameDecoder({ maxFrameBytes: 16 });
    expect(() => strict.push(Buffer.concat([name, hello]))).toThrow(FrameTooLargeError);
  });

  it('keeps the length of a frame whose header was parsed before the limit shrank', () => {
    const decoder = new FrameDecoder({ maxFrameBytes: 100 });
    const frame = encodeFrame(Buffer.alloc(50, 3));
    expect(decoder.push(frame.subarray(0, 10))).toEqual([]);
    decoder.setMaxFrameBytes(8);
    expect(decoder.push(frame.subarray(10)).map((f) => f.byteLength)).toEqual([50]);
    expect(() => decoder.push(encodeFrameHeader(9))).toThrow(FrameTooLargeError);
  });

  it('reports buffered bytes of a truncated frame', () => {
    const decoder = new FrameDecoder({ maxFrameBytes: 100 });
    const frame = encodeFrame(Buffer.alloc(20, 5));
    decoder.push(frame.subarray(0, 2));
    expect(decoder.bufferedBytes).toBe(2);
    decoder.push(frame.subarray(2, 9));
    expect(decoder.bufferedBytes).toBe(9 - FRAME_HEADER_BYTES);
    decoder.push(frame.subarray(9));
    expect(decoder.bufferedBytes).toBe(0);
    decoder.feed(encodeFrame(Buffer.from('x')));
    expect(decoder.bufferedBytes).toBe(5); // fed, not yet taken
  });

  it('is inside a frame from its header on, also before a byte of its body came', () => {
    const decoder = new FrameDecoder({ maxFrameBytes: 100 });
    expect(decoder.insideFrame).toBe(false);
    expect(decoder.push(encodeFrameHeader(10))).toEqual([]);
    expect(decoder.bufferedBytes).toBe(0); // the header is taken, nothing of the body held
    expect(decoder.insideFrame).toBe(true);
    expect(decoder.push(Buffer.alloc(10, 1))).toHaveLength(1);
    expect(decoder.insideFrame).toBe(false);
  });

  it('validates limits', () => {
    expect(() => new FrameDecoder({ maxFrameBytes: -1 })).toThrow(RangeError);
    expect(() => new FrameDecoder({ maxFrameBytes: 2 ** 32 })).toThrow(RangeError);
    expect(() => new FrameDecoder({ maxFrameBytes: 8 }).setMaxFrameBytes(Number.NaN)).toThrow(RangeError);
  });

  it('is linear: a 64 MiB frame arriving in 1 KiB chunks', () => {
    const payloadBytes = 64 * 1024 * 1024;
    const body = Buffer.alloc(1024, 0xab);
    const decoder = new FrameDecoder({ maxFrameBytes: payloadBytes });
    const started = performance.now();
    expect(decoder.push(encodeFrameHeader(payloadBytes))).toEqual([]);
    let frames: Buffer[] = [];
    for (let sent = 0; sent < payloadBytes; sent += body.byteLength) frames = decoder.push(body);
    const elapsedMs = performance.now() - started;
    expect(frames).toHaveLength(1);
    expect(frames[0]?.byteLength).toBe(payloadBytes);
    expect(frames[0]?.[payloadBytes - 1]).toBe(0xab);
    expect(elapsedMs).toBeLessThan(5_000); // quadratic concatenation would take hours
  });

  it('streams 1 GiB in 64 KiB chunks with mixed frame sizes', () => {
    // One period of frames (small, chunk-sized, spanning several chunks), repeated.
    const sizes = [0, 10, 300, 65_536 - 4, 65_536, 200_000, 1, 1_000_000, 17];
    const period = Buffer.concat(sizes.map((n) => encodeFrame(Buffer.alloc(n, n & 0xff))));
    const chunkBytes = 64 * 1024;
    const totalBytes = 1024 * 1024 * 1024;
    const decoder = new FrameDecoder({ maxFrameBytes: 1_000_000 });
    let frames = 0;
    let payloadBytes = 0;
    let streamed = 0;
    const started = performance.now();
    while (streamed < totalBytes) {
      for (let i = 0; i < period.byteLength; i += chunkBytes) {
        for (const f of decoder.push(period.subarray(i, i + chunkBytes))) {
          frames += 1;
          payloadBytes += f.byteLength;
        }
      }
      streamed += period.byteLength;
    }
    const elapsedMs = performance.now() - started;
    const periods = Math.ceil(totalBytes / period.byteLength);
    expect(frames).toBe(periods * sizes.length);
    expect(payloadBytes).toBe(periods * sizes.reduce((a, b) => a + b, 0));
    expect(decoder.bufferedBytes).toBe(0);
    expect(elapsedMs).toBeLessThan(30_000);
  });
});

describe('FrameDecoder.lastFrameOwned', () => {
  it('is true exactly for frames assembled from several chunks, which share no memory with the chunks', () => {
    const decoder = new FrameDecoder({ maxFrameBytes: 1024 });
    const whole = Buffer.concat([encodeFrame(Buffer.from('inside one chunk')), encodeFrame(Buffer.from('split across two chunks'))]);
    const cut = whole.length - 5;
    const first = whole.subarray(0, cut);
    decoder.feed(first);
    const a = decoder.next()!;
    expect(a.toString()).toBe('inside one chunk');
    expect(decoder.lastFrameOwned).toBe(false);
    expect(a.buffer).toBe(first.buffer); // a view of the chunk
    expect(decoder.next()).toBeNull();
    decoder.feed(whole.subarray(cut));
    const b = decoder.next()!;
    expect(b.toString()).toBe('split across two chunks');
    expect(decoder.lastFrameOwned).toBe(true);
    b.fill(0); // the caller's to modify: the chunks are untouched
    expect(whole.subarray(whole.length - 23).toString()).toBe('split across two chunks');
    decoder.feed(encodeFrame(Buffer.from('next')));
    expect(decoder.next()!.toString()).toBe('next');
    expect(decoder.lastFrameOwned).toBe(false);
  });
});
