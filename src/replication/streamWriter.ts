// Writes frames to a ByteStream with real backpressure: small frames are
// batched into one write, and a full socket buffer pauses the writer (and
// only this session) until 'drain'. Closing the stream fails pending writes.

import type { ByteStream } from '../ports/transport.js';
import { ZrsError } from '../errors.js';

/** Batches smaller than this are coalesced into one socket write. */
const BATCH_BYTES = 64 * 1024;

export class StreamClosedError extends ZrsError {
  override name = 'StreamClosedError';
}

export class StreamWriter {
  private batch: Buffer[] = [];
  private batchBytes = 0;
  /** Settles on the socket's next 'drain' (or its close); shared by everyone waiting. */
  private drainWaiter: { promise: Promise<void>; resolve: () => void; reject: (e: Error) => void } | null = null;
  private closed = false;
  /** Bytes handed to the socket. */
  bytesWritten = 0;

  constructor(private readonly stream: ByteStream) {}

  /** Call from the stream's drain handler. */
  onDrain(): void {
    const w = this.drainWaiter;
    this.drainWaiter = null;
    w?.resolve();
  }

  /** Call from the stream's close handler. */
  onClose(): void {
    this.closed = true;
    const w = this.drainWaiter;
    this.drainWaiter = null;
    w?.reject(new StreamClosedError('stream closed'));
  }

  /** Resolves when the socket can take more (after a write that filled it); rejects when it closes first. */
  drained(): Promise<void> {
    if (this.closed) return Promise.reject(new StreamClosedError('stream closed'));
    if (this.drainWaiter === null) {
      let resolve!: () => void;
      let reject!: (e: Error) => void;
      const promise = new Promise<void>((res, rej) => ((resolve = res), (reject = rej)));
      this.drainWaiter = { promise, resolve, reject };
    }
    return this.drainWaiter.promise;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** A write filled the socket and someone waits for it to drain: the peer has not taken what it was sent. */
  get full(): boolean {
    return this.drainWaiter !== null;
  }

  /** Queue a frame; flushes (and may wait for drain) when the batch is large. */
  async write(frame: Buffer): Promise<void> {
    if (this.closed) throw new StreamClosedError('stream closed');
    this.batch.push(frame);
    this.batchBytes += frame.length;
    if (this.batchBytes >= BATCH_BYTES) await this.flush();
  }

  /** Add a frame to the batch without writing; call flush() or write() after. */
  push(frame: Buffer): void {
    this.batch.push(frame);
    this.batchBytes += frame.length;
  }

  /** Bytes batched but not yet written. */
  get pending(): number {
    return this.batchBytes;
  }

  /** Nothing written or batched is referenced any more: neither the batch nor the stream holds a buffer. */
  get holdsNothing(): boolean {
    return this.batchBytes === 0 && this.stream.heldBytes === 0;
  }

  /**
   * Write the batch now; resolves when the socket can take more. Small
   * buffers go out coalesced; a large one is handed over as it is (copying
   * a megabyte costs more than one more write call).
   */
  async flush(): Promise<void> {
    if (!this.flushNow()) await this.drained();
  }

  /** Write the batch now, without waiting; false when the socket is full (wait for drained()). */
  flushNow(): boolean {
    if (this.batchBytes === 0) return true;
    if (this.closed) throw new StreamClosedError('stream closed');
    const batch = this.batch;
    this.batch = [];
    this.bytesWritten += this.batchBytes;
    this.batchBytes = 0;
    let room = true;
    let small: Buffer[] = [];
    const writeSmall = (): void => {
      if (small.length > 0) room = this.stream.write(small.length === 1 ? small[0]! : Buffer.concat(small)) && room;
      small = [];
    };
    for (const buf of batch) {
      if (buf.length < BATCH_BYTES) small.push(buf);
      else {
        writeSmall();
        room = this.stream.write(buf) && room;
      }
    }
    writeSmall();
    return room;
  }

  /** Write a frame immediately without waiting (handshake replies, acks). */
  writeNow(frame: Buffer): void {
    if (this.closed) return;
    this.bytesWritten += frame.length;
    this.stream.write(frame);
  }
}
