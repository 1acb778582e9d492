// Framing shared by zc.zrs and native: u32 big-endian length + payload, 0-length = keep-alive; no I/O.
// Invariants: a byte is copied at most once (only when its frame spans chunks); an over-limit header throws before its body is buffered.

import { FrameTooLargeError } from '../errors.js';

/** Bytes in a frame header (the big-endian u32 payload length). */
export const FRAME_HEADER_BYTES = 4;

/**
 * What a peer is when the first bytes it sent, read as a frame header, are
 * text: four printable ASCII characters make a length over 538 MB, which no
 * ZRS node sends first, so the peer is something else (a web server, an SSH
 * server …). Null when they could be a header, or fewer than 4 arrived.
 * @example foreignPeer(Buffer.from('HTTP/1.1 400')) // 'a web server (it answered in HTTP: a metrics address?)'
 */
export function foreignPeer(first: Uint8Array): string | null {
  if (first.length < FRAME_HEADER_BYTES) return null;
  const head = Buffer.from(first.buffer, first.byteOffset, FRAME_HEADER_BYTES);
  if (!head.every((b) => b >= 0x20 && b < 0x7f)) return null;
  const text = head.toString('latin1');
  if (text === 'HTTP') return 'a web server (it answered in HTTP: a metrics address?)';
  if (text === 'SSH-') return 'an SSH server';
  return `a server that sent text (${JSON.stringify(Buffer.from(first.buffer, first.byteOffset, Math.min(first.length, 40)).toString('latin1'))})`;
}

/** The largest payload length a 4-byte header can announce. */
export const MAX_FRAME_BYTES_LIMIT = 0xffff_ffff;

/** A complete keep-alive frame (length 0, no payload). Never mutate it. */
export const KEEP_ALIVE_FRAME: Buffer = Buffer.alloc(FRAME_HEADER_BYTES);

function assertFrameLength(payloadBytes: number, what: string): void {
  if (!Number.isInteger(payloadBytes) || payloadBytes < 0 || payloadBytes > MAX_FRAME_BYTES_LIMIT) {
    throw new RangeError(`${what} must be an integer in 0..${MAX_FRAME_BYTES_LIMIT}, got ${payloadBytes}`);
  }
}

/**
 * The 4-byte header announcing a payload of `payloadBytes` bytes. Write it, then the payload, to
 * send a large payload without copying it.
 *
 * @example
 * stream.write(encodeFrameHeader(data.byteLength));
 * stream.write(data);
 */
export function encodeFrameHeader(payloadBytes: number): Buffer {
  assertFrameLength(payloadBytes, 'frame length');
  const header = Buffer.allocUnsafe(FRAME_HEADER_BYTES);
  header.writeUInt32BE(payloadBytes, 0);
  return header;
}

/**
 * Header plus payload in one new buffer (copies the payload; meant for small frames, see
 * {@link encodeFrameHeader} for large ones).
 *
 * @example
 * stream.write(encodeFrame(Buffer.from('zrs2.0')));
 */
export function encodeFrame(payload: Uint8Array): Buffer {
  assertFrameLength(payload.byteLength, 'frame length');
  const frame = Buffer.allocUnsafe(FRAME_HEADER_BYTES + payload.byteLength);
  frame.writeUInt32BE(payload.byteLength, 0);
  frame.set(payload, FRAME_HEADER_BYTES);
  return frame;
}

/** Options of a {@link FrameDecoder}. */
export interface FrameDecoderOptions {
  /** Largest payload accepted, in bytes; a header announcing more throws FrameTooLargeError. */
  maxFrameBytes: number;
}

const asBuffer = (bytes: Uint8Array): Buffer =>
  Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);

/**
 * Splits a byte stream cut at arbitrary boundaries into frame payloads.
 *
 * Ownership: the decoder keeps the chunks it is given (a frame lying wholly inside one chunk is
 * returned as a view of it), so callers must not reuse or mutate a chunk after passing it in;
 * Node sockets never do. A frame spanning chunks is assembled once into its own buffer.
 *
 * Limits are checked when a header is parsed, which happens in frame order; use
 * {@link feed} and {@link next} when handling a frame can change the limit for the frames after
 * it (a handshake), or {@link push} to take every complete frame at once.
 *
 * After a FrameTooLargeError the decoder is failed: every later call rethrows it.
 *
 * @example
 * const decoder = new FrameDecoder({ maxFrameBytes: 16 });
 * decoder.feed(chunk);
 * for (let frame = decoder.next(); frame !== null; frame = decoder.next()) {
 *   handle(frame); // may call decoder.setMaxFrameBytes(...) for what follows
 * }
 */
export class FrameDecoder {
  #maxFrameBytes: number;
  /** Chunks not yet consumed; `#chunks[#chunkIndex]` is read from `#chunkOffset`. */
  #chunks: Buffer[] = [];
  #chunkIndex = 0;
  #chunkOffset = 0;
  #queuedBytes = 0;
  /** A header split across chunks: `#headerFillBytes` of its 4 bytes are in `#header`. */
  readonly #header: Buffer = Buffer.alloc(FRAME_HEADER_BYTES);
  #headerFillBytes = 0;
  /** A body split across chunks, being assembled. */
  #body: Buffer | null = null;
  #bodyFillBytes = 0;
  #failure: FrameTooLargeError | null = null;
  #lastOwned = false;

  constructor(options: FrameDecoderOptions) {
    assertFrameLength(options.maxFrameBytes, 'maxFrameBytes');
    this.#maxFrameBytes = options.maxFrameBytes;
  }

  /** The current payload limit in bytes. */
  get maxFrameBytes(): number {
    return this.#maxFrameBytes;
  }

  /**
   * Changes the limit for headers parsed from now on (a frame whose header was already parsed
   * keeps its length). Typical use: small before the handshake completes, large after.
   */
  setMaxFrameBytes(maxFrameBytes: number): void {
    assertFrameLength(maxFrameBytes, 'maxFrameBytes');
    this.#maxFrameBytes = maxFrameBytes;
  }

  /**
   * Bytes received but not yet returned as frames. Non-zero when the stream closes (after all
   * frames were taken) means the last frame was truncated.
   */
  get bufferedBytes(): number {
    return this.#queuedBytes + this.#headerFillBytes + this.#bodyFillBytes;
  }

  /**
   * Whether the stream stands inside a frame: bytes of one are held, or its header was read and
   * not a byte of its body yet (bufferedBytes is then 0). False only between frames.
   */
  get insideFrame(): boolean {
    return this.bufferedBytes > 0 || this.#body !== null;
  }

  /** Takes ownership of `chunk` without parsing it; pull frames with {@link next}. */
  feed(chunk: Uint8Array): void {
    this.#throwIfFailed();
    if (chunk.byteLength === 0) return;
    this.#chunks.push(asBuffer(chunk));
    this.#queuedBytes += chunk.byteLength;
  }

  /**
   * The next complete frame payload (empty for a keep-alive), or null when more bytes are needed.
   * @throws FrameTooLargeError when the next header announces more than maxFrameBytes.
   */
  next(): Buffer | null {
    this.#throwIfFailed();
    this.#lastOwned = false;
    if (this.#body !== null) return this.#fillBody();
    const chunk = this.#chunks[this.#chunkIndex];
    if (chunk === undefined) return null;
    const available = chunk.byteLength - this.#chunkOffset;
    if (this.#headerFillBytes === 0 && available >= FRAME_HEADER_BYTES) {
      // Fast path: header and (often) body inside the current chunk.
      const payloadBytes = chunk.readUInt32BE(this.#chunkOffset);
      this.#checkLimit(payloadBytes);
      if (available - FRAME_HEADER_BYTES >= payloadBytes) {
        const start = this.#chunkOffset + FRAME_HEADER_BYTES;
        this.#consume(FRAME_HEADER_BYTES + payloadBytes);
        return chunk.subarray(start, start + payloadBytes);
      }
      this.#consume(FRAME_HEADER_BYTES);
      return this.#startBody(payloadBytes);
    }
    if (!this.#fillHeader()) return null;
    this.#headerFillBytes = 0;
    const payloadBytes = this.#header.readUInt32BE(0);
    this.#checkLimit(payloadBytes);
    return this.#startBody(payloadBytes);
  }

  /**
   * Feeds `chunk` and returns every frame now complete, in order (keep-alives as empty buffers).
   * @throws FrameTooLargeError as soon as a header announces more than maxFrameBytes; frames
   * before it in the same chunk are then dropped with the connection.
   */
  push(chunk: Uint8Array): Buffer[] {
    this.feed(chunk);
    const frames: Buffer[] = [];
    for (let frame = this.next(); frame !== null; frame = this.next()) frames.push(frame);
    return frames;
  }

  #throwIfFailed(): void {
    if (this.#failure !== null) throw this.#failure;
  }

  #checkLimit(payloadBytes: number): void {
    if (payloadBytes > this.#maxFrameBytes) {
      this.#failure = new FrameTooLargeError(payloadBytes, this.#maxFrameBytes);
      throw this.#failure;
    }
  }

  /** Advances the read position by `bytes`, which must lie within the current chunk. */
  #consume(bytes: number): void {
    this.#chunkOffset += bytes;
    this.#queuedBytes -= bytes;
    const chunk = this.#chunks[this.#chunkIndex];
    if (chunk !== undefined && this.#chunkOffset === chunk.byteLength) {
      this.#chunkIndex += 1;
      this.#chunkOffset = 0;
      if (this.#chunkIndex === this.#chunks.length) {
        this.#chunks = [];
        this.#chunkIndex = 0;
      }
    }
  }

  /** Copies header bytes from queued chunks; true once all 4 are present. */
  #fillHeader(): boolean {
    while (this.#headerFillBytes < FRAME_HEADER_BYTES) {
      const chunk = this.#chunks[this.#chunkIndex];
      if (chunk === undefined) return false;
      const bytes = Math.min(FRAME_HEADER_BYTES - this.#headerFillBytes, chunk.byteLength - this.#chunkOffset);
      chunk.copy(this.#header, this.#headerFillBytes, this.#chunkOffset, this.#chunkOffset + bytes);
      this.#headerFillBytes += bytes;
      this.#consume(bytes);
    }
    return true;
  }

  #startBody(payloadBytes: number): Buffer | null {
    // allocUnsafe: every byte is overwritten before the frame is returned; pages of a large
    // frame are only committed as its bytes arrive.
    this.#body = Buffer.allocUnsafe(payloadBytes);
    this.#bodyFillBytes = 0;
    return this.#fillBody();
  }

  /** Copies body bytes from queued chunks; the frame once complete, else null. */
  #fillBody(): Buffer | null {
    const body = this.#body;
    if (body === null) throw new Error('FrameDecoder: no frame body in progress'); // a bug
    while (this.#bodyFillBytes < body.byteLength) {
      const chunk = this.#chunks[this.#chunkIndex];
      if (chunk === undefined) return null;
      const bytes = Math.min(body.byteLength - this.#bodyFillBytes, chunk.byteLength - this.#chunkOffset);
      chunk.copy(body, this.#bodyFillBytes, this.#chunkOffset, this.#chunkOffset + bytes);
      this.#bodyFillBytes += bytes;
      this.#consume(bytes);
    }
    this.#body = null;
    this.#bodyFillBytes = 0;
    this.#lastOwned = true;
    return body;
  }

  /**
   * Whether the frame next() returned last was assembled into a buffer of its
   * own (it spanned chunks), which the caller may then modify in place; else
   * it is a view of a chunk it was given.
   */
  get lastFrameOwned(): boolean {
    return this.#lastOwned;
  }
}
