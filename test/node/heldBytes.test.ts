// What a stream still holds of what was written (ByteStream.heldBytes), on
// which a primary's catch-up decides to reuse a read window: a socket whose
// peer does not read holds a large write, and holds nothing once 'drain'
// says it was all taken; the simulator copies, so holds nothing; a
// StreamWriter holds nothing only when neither its batch nor its stream does.

import { describe, expect, it } from 'vitest';
import { socketTransport } from '../../src/node/socketTransport.js';
import type { ByteStream } from '../../src/ports/transport.js';
import { StreamWriter } from '../../src/replication/streamWriter.js';
import { SimNetwork } from '../../src/sim/network.js';
import { VirtualClock } from '../../src/sim/clock.js';
import { seededRandom } from '../../src/ports/random.js';

describe('heldBytes', () => {
  it('a socket holds a write its peer has not read, and nothing after drain', async () => {
    let accepted!: (s: ByteStream) => void;
    const server = new Promise<ByteStream>((r) => (accepted = r));
    const listener = await socketTransport.listen({ kind: 'tcp', host: '127.0.0.1', port: 0 }, (s) => accepted(s));
    const client = await socketTransport.connect(listener.address);
    const peer = await server;
    try {
      let received = 0;
      let drained!: () => void;
      const drain = new Promise<void>((r) => (drained = r));
      client.setHandlers({ data: () => {}, drain: () => drained(), close: () => {} });
      expect(client.heldBytes).toBe(0);
      // More than loopback's socket buffers take while the peer reads nothing (its handlers are not set yet).
      const big = Buffer.alloc(64 * 1024 * 1024, 7);
      expect(client.write(big)).toBe(false);
      expect(client.heldBytes).toBeGreaterThan(0);
      const all = new Promise<void>((resolve) =>
        peer.setHandlers({
          data: (c) => {
            received += c.byteLength;
            if (received === big.length) resolve();
          },
          drain: () => {},
          close: () => {},
        }),
      );
      await drain;
      expect(client.heldBytes).toBe(0);
      await all;
    } finally {
      client.destroy();
      peer.destroy();
      await listener.close();
    }
  });

  it('a simulated stream copies what is written, so it holds nothing', async () => {
    const clock = new VirtualClock();
    const net = new SimNetwork({ clock, random: seededRandom(1) });
    let accepted!: (s: ByteStream) => void;
    const server = new Promise<ByteStream>((r) => (accepted = r));
    const listener = await net.transport('p').listen({ kind: 'tcp', host: 'p', port: 5000 }, (s) => accepted(s));
    const connecting = net.transport('s').connect(listener.address);
    clock.runUntilIdle();
    const client = await connecting;
    const peer = await server;
    const got: Buffer[] = [];
    peer.setHandlers({ data: (c) => got.push(Buffer.from(c)), drain: () => {}, close: () => {} });
    client.setHandlers({ data: () => {}, drain: () => {}, close: () => {} });
    const sent = Buffer.from('the bytes as written');
    client.write(sent);
    expect(client.heldBytes).toBe(0);
    sent.fill(0); // reused by the writer before delivery
    clock.runUntilIdle();
    expect(Buffer.concat(got).toString()).toBe('the bytes as written');
    client.destroy();
    await listener.close();
  });

  it('a StreamWriter holds nothing only when neither its batch nor its stream holds bytes', () => {
    let held: number | undefined = 0;
    const stream: ByteStream = {
      peer: 'test',
      get heldBytes() {
        return held;
      },
      write: () => true,
      pause: () => {},
      resume: () => {},
      end: () => {},
      destroy: () => {},
      setHandlers: () => {},
    };
    const writer = new StreamWriter(stream);
    expect(writer.holdsNothing).toBe(true);
    writer.push(Buffer.alloc(10));
    expect(writer.holdsNothing).toBe(false); // batched, not written
    writer.flushNow();
    expect(writer.holdsNothing).toBe(true);
    held = 10;
    expect(writer.holdsNothing).toBe(false); // the stream still holds it
    held = undefined;
    expect(writer.holdsNothing).toBe(false); // a stream that cannot tell holds everything
  });
});
