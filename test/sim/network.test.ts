// The simulated network's closes, as TCP behaves: a destroyed or crashed
// process's bytes already in its socket buffer still reach the peer, then a
// clean end; what the process held beyond that buffer is lost; a close is
// delayed by the link and held by a partition like any byte; a crashed host
// sends nothing at all.

import { describe, expect, it } from 'vitest';
import type { ByteStream } from '../../src/ports/transport.js';
import { VirtualClock } from '../../src/sim/clock.js';
import { SimNetwork } from '../../src/sim/network.js';
import { seededRandom } from '../../src/ports/random.js';

interface Seen {
  bytes: number;
  closedAtMs: number | null;
  error: string | null;
}

async function pair(bufferLimitBytes = 64 * 1024): Promise<{ clock: VirtualClock; net: SimNetwork; p: ByteStream; s: ByteStream; atS: Seen }> {
  const clock = new VirtualClock();
  const net = new SimNetwork({ clock, random: seededRandom(7), latencyMs: { min: 10, max: 10 }, bufferLimitBytes });
  let accepted!: (s: ByteStream) => void;
  const server = new Promise<ByteStream>((r) => (accepted = r));
  const listener = await net.transport('p').listen({ kind: 'tcp', host: 'p', port: 5000 }, (stream) => accepted(stream));
  const connecting = net.transport('s').connect(listener.address);
  clock.runUntilIdle();
  const s = await connecting;
  const p = await server;
  const atS: Seen = { bytes: 0, closedAtMs: null, error: null };
  s.setHandlers({
    data: (c) => void (atS.bytes += c.length),
    drain: () => {},
    close: (err) => {
      atS.closedAtMs = clock.now();
      atS.error = err ? err.message : null;
    },
  });
  p.setHandlers({ data: () => {}, drain: () => {}, close: () => {} });
  return { clock, net, p, s, atS };
}

describe('closes on the simulated network', () => {
  it('destroy() after a write: the peer gets the bytes, then a clean end, after the latency', async () => {
    const { clock, p, atS } = await pair();
    const t0 = clock.now();
    p.write(Buffer.alloc(1000, 1));
    p.destroy();
    clock.runUntilIdle();
    expect(atS).toEqual({ bytes: 1000, closedAtMs: expect.any(Number), error: null });
    expect(atS.closedAtMs! - t0).toBeGreaterThanOrEqual(10);
  });

  it('destroy() with more queued than the socket buffer holds: the buffer\'s worth arrives, then the end', async () => {
    const { clock, p, atS } = await pair(4096);
    for (let i = 0; i < 10; i++) p.write(Buffer.alloc(1000, i));
    p.destroy();
    clock.runUntilIdle();
    expect(atS.bytes).toBe(4096);
    expect(atS.closedAtMs).not.toBeNull();
  });

  it('a process crash behind a partition is heard only once it heals; its written bytes come first', async () => {
    const { clock, net, p, atS } = await pair();
    net.partition('p', 's');
    p.write(Buffer.alloc(1000, 1));
    net.crash('p', 'process');
    clock.advance(20_000);
    expect(atS).toEqual({ bytes: 0, closedAtMs: null, error: null });
    net.heal('p', 's');
    clock.runUntilIdle();
    expect(atS.bytes).toBe(1000);
    expect(atS.closedAtMs).toBeGreaterThanOrEqual(20_000);
  });

  it('a one-way partition back to the sender stalls it after one window (no acknowledgements return); healed, the rest flows', async () => {
    const { clock, net, p, atS } = await pair(4096);
    net.partition('s', 'p', true);
    for (let i = 0; i < 256; i++) p.write(Buffer.alloc(1000, i));
    clock.advance(60_000);
    expect(atS.bytes).toBe(4096);
    net.heal('s', 'p');
    clock.runUntilIdle();
    expect(atS.bytes).toBe(256_000);
  });

  it('a second one-way partition gets a whole window of its own', async () => {
    const { clock, net, p, atS } = await pair(4096);
    net.partition('s', 'p', true);
    p.write(Buffer.alloc(3000, 1));
    clock.runUntilIdle();
    expect(atS.bytes).toBe(3000);
    net.heal('s', 'p');
    clock.runUntilIdle();
    net.partition('s', 'p', true);
    p.write(Buffer.alloc(8000, 2));
    clock.advance(60_000);
    expect(atS.bytes - 3000).toBe(4096);
  });

  it('closing with bytes not yet read resets the connection: the peer hears ECONNRESET, not a clean end', async () => {
    const { clock, p, s } = await pair();
    const atP: Seen = { bytes: 0, closedAtMs: null, error: null };
    p.setHandlers({ data: (c) => void (atP.bytes += c.length), drain: () => {}, close: () => {} });
    let atSClose: Error | undefined | null = null;
    s.setHandlers({ data: () => {}, drain: () => {}, close: (err) => (atSClose = err) });
    p.pause();
    s.write(Buffer.alloc(1000, 1));
    clock.advance(100);
    p.write(Buffer.alloc(500, 2)); // discarded by the reset
    p.destroy();
    clock.runUntilIdle();
    expect((atSClose as Error | null)?.message).toMatch(/ECONNRESET/);
  });

  it('a host crash sends nothing: the peer hears nothing, however long it waits', async () => {
    const { clock, net, p, atS } = await pair();
    p.write(Buffer.alloc(1000, 1));
    net.crash('p', 'host');
    clock.advance(60_000);
    clock.runUntilIdle();
    expect(atS).toEqual({ bytes: 0, closedAtMs: null, error: null });
  });
});
