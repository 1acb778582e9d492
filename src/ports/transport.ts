// The byte-stream port actors talk through. A transport yields raw chunks,
// never messages, so every path also exercises framing. Real sockets live in
// src/node; the simulated network in src/sim implements the same interface.

export interface ByteStreamHandlers {
  /** A chunk arrived. Chunk boundaries are arbitrary. */
  data(chunk: Uint8Array): void;
  /** The write buffer drained after write() returned false. */
  drain(): void;
  /** The stream ended (peer closed, reset, or destroy()). Called once. */
  close(error?: Error): void;
}

export interface ByteStream {
  /** Queue bytes; false means the buffer is over its high-water mark: wait for drain. */
  write(chunk: Uint8Array): boolean;
  /** Stop delivering data until resume() (receive-side backpressure). */
  pause(): void;
  resume(): void;
  /** Flush queued bytes, then close. */
  end(): void;
  /** Close at once, dropping queued bytes. */
  destroy(error?: Error): void;
  /** Install handlers; data arriving before this is held. */
  setHandlers(handlers: ByteStreamHandlers): void;
  /** Human-readable peer, for logs. */
  readonly peer: string;
  /**
   * Bytes written whose buffers the stream still holds (not yet taken by the
   * operating system, or copied): 0 means no written buffer is referenced
   * any more and its memory may be reused. Absent: unknown, assume held.
   */
  readonly heldBytes?: number;
}

/** A parsed replication address. */
export type ReplicationAddress =
  | { kind: 'tcp'; host: string; port: number }
  | { kind: 'unix'; path: string };

export interface Listener {
  /** The bound address (with the real port when 0 was asked for). */
  readonly address: ReplicationAddress;
  /** Stop accepting; open streams stay open. */
  close(): Promise<void>;
}

export interface ListenOptions {
  maxConnections?: number;
}

export interface Transport {
  /**
   * Open a stream; rejects when refused or unreachable. `signal`: give up
   * (the attempt's socket destroyed, the promise rejected) when it aborts.
   */
  connect(address: ReplicationAddress, signal?: AbortSignal): Promise<ByteStream>;
  /**
   * Serve `address`. `options.maxConnections`: the most connections the
   * server means to hold; a transport whose connections take a while to be
   * handed over (TLS handshakes) turns away those past it before they are.
   */
  listen(address: ReplicationAddress, onStream: (stream: ByteStream) => void, options?: ListenOptions): Promise<Listener>;
}
