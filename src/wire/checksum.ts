// Stream checksum carried by commits: seeded with the start tid, fed every primary->secondary payload, never reset.
// Invariant: primary and secondary feed the same bytes in the same order, so their digests agree at every commit.

import { createHash, hash, type Hash } from 'node:crypto';
import { ChecksumMismatchError } from '../errors.js';

/** Hash algorithms a stream checksum can use: md5 for zc.zrs's zrs2.x, sha256 for native. */
export type ChecksumAlgorithm = 'md5' | 'sha256';

/**
 * The native protocol's algorithm. sha256 rather than md5 because it is faster where it matters
 * (OpenSSL uses the SHA extensions of current x86 and ARM CPUs: ~1.1 GB/s against md5's ~0.5 GB/s
 * on the reference machine) and is not broken; the checksum detects corruption, it does not
 * authenticate (use TLS for that).
 */
export const NATIVE_CHECKSUM_ALGORITHM: ChecksumAlgorithm = 'sha256';

/** Digest length in bytes of each algorithm. */
export const CHECKSUM_DIGEST_BYTES: Readonly<Record<ChecksumAlgorithm, number>> = { md5: 16, sha256: 32 };

const START_TID_BYTES = 8;

/**
 * How the digest at a commit is formed from the bytes fed so far.
 * - 'running': one hash over the whole stream, its digest taken at each
 *   commit without finishing it (zc.zrs's rule, and native peers that did
 *   not ask for segments).
 * - 'segmented' (sha256 only): the stream is cut into segments, each closed
 *   at a commit or after CHECKSUM_SEGMENT_BYTES, and the state after each is
 *   sha256(state before || segment), from 32 zero bytes. See docs/PROTOCOL.md,
 *   Checksum. A digest then costs one hash call and no hash object: Node can
 *   take a running hash's digest only through `Hash.copy()`, whose object
 *   the collector must finalize, about 2 µs of a young collection's pause
 *   for every commit of every session.
 */
export type ChecksumRule = 'running' | 'segmented';

/** Bytes after which the segmented rule closes a segment that no commit closed. */
export const CHECKSUM_SEGMENT_BYTES = 16 * 1024;

const STATE_BYTES = 32;

/**
 * A hash chain over one replication stream.
 *
 * Rule (identical on both sides): seed with the start tid the secondary sent; `update` with
 * every frame payload the primary sends after the handshake (length prefixes excluded, empty
 * keep-alives change nothing); at a commit, `digest()` covers everything before the commit frame;
 * the commit frame's own payload is then fed in too and the chain continues. Under the
 * segmented rule a digest also closes a segment, so each side takes exactly one per commit.
 *
 * @example
 * // primary
 * const digest = checksum.digest();
 * const payload = encodeNative({ type: 'commit', checksum: digest }, packr);
 * checksum.update(payload);
 * // secondary, on receiving the commit frame `payload` decoded to `msg`
 * checksum.verify(msg.checksum, tid); // throws ChecksumMismatchError
 * checksum.update(payload);
 */
export class StreamChecksum {
  /** The running rule's hash; null under the segmented rule. */
  readonly #hash: Hash | null = null;
  /** The segmented rule's state (32 bytes) followed by the open segment; null under the running rule. */
  readonly #segment: Buffer | null = null;
  /** Bytes used in #segment (the state included). */
  #used = STATE_BYTES;
  /** The algorithm in use. */
  readonly algorithm: ChecksumAlgorithm;

  /**
   * @param startTid the 8-byte start tid of the handshake (exclusive start position).
   * @param algorithm 'sha256' for native (default), 'md5' for zrs2.x.
   * @param rule 'running' (default) or 'segmented' (sha256 only).
   */
  constructor(startTid: Uint8Array, algorithm: ChecksumAlgorithm = NATIVE_CHECKSUM_ALGORITHM, readonly rule: ChecksumRule = 'running') {
    if (startTid.byteLength !== START_TID_BYTES) {
      // Callers validate wire tids first; reaching this is a bug.
      throw new RangeError(`start tid must be ${START_TID_BYTES} bytes, got ${startTid.byteLength}`);
    }
    this.algorithm = algorithm;
    if (rule === 'running') {
      this.#hash = createHash(algorithm);
      this.#hash.update(startTid);
      return;
    }
    if (algorithm !== 'sha256') throw new RangeError(`the segmented checksum rule is defined for sha256 only, not ${algorithm}`);
    this.#segment = Buffer.alloc(STATE_BYTES + CHECKSUM_SEGMENT_BYTES);
    this.update(startTid);
  }

  /** Digest length in bytes (16 for md5, 32 for sha256). */
  get digestBytes(): number {
    return CHECKSUM_DIGEST_BYTES[this.algorithm];
  }

  /** Feeds one frame payload (without its length prefix). */
  update(payload: Uint8Array): void {
    const segment = this.#segment;
    if (segment === null) {
      this.#hash!.update(payload);
      return;
    }
    for (let at = 0; at < payload.byteLength; ) {
      const n = Math.min(payload.byteLength - at, segment.length - this.#used);
      segment.set(at === 0 && n === payload.byteLength ? payload : payload.subarray(at, at + n), this.#used);
      this.#used += n;
      at += n;
      if (this.#used === segment.length) this.#closeSegment();
    }
  }

  /**
   * The digest of everything fed so far; the chain continues (the running
   * hash is not finalized; under the segmented rule, the open segment is
   * closed, so a second call without anything fed in between differs). Through a 'binary' string, for the reason links.ts's sha256 gives.
   */
  digest(): Buffer {
    return Buffer.from(this.#segment === null ? this.#hash!.copy().digest('binary') : this.#closeSegment(), 'binary');
  }

  /** Segmented rule: the state becomes sha256(state || open segment), and a new segment opens. */
  #closeSegment(): string {
    const segment = this.#segment!;
    const state = hash('sha256', segment.subarray(0, this.#used), 'binary');
    segment.write(state, 0, STATE_BYTES, 'binary');
    this.#used = STATE_BYTES;
    return state;
  }

  /**
   * Compares a received digest with {@link digest}; does not feed it.
   * @throws ChecksumMismatchError when they differ (in length or content).
   */
  verify(received: Uint8Array, tid?: Buffer): void {
    const expected = this.digest();
    const got = Buffer.from(received.buffer, received.byteOffset, received.byteLength);
    if (!expected.equals(got)) {
      throw new ChecksumMismatchError(expected, Buffer.from(got), tid);
    }
  }
}
