// How a real socket's end reaches a stream's close handler: with the error
// when the peer reset the connection (the cause a log then names), without
// one when it ended in order.

import { createConnection } from 'node:net';
import { describe, expect, it } from 'vitest';
import { socketTransport } from '../../src/node/socketTransport.js';

/** How the first accepted stream closed, after `peer` (a raw client) does its part. */
async function closeSeenByServer(peer: (socket: ReturnType<typeof createConnection>) => void): Promise<Error | undefined> {
  let closed!: (e: Error | undefined) => void;
  const ended = new Promise<Error | undefined>((resolve) => (closed = resolve));
  const noop = (): void => undefined;
  const listener = await socketTransport.listen({ kind: 'tcp', host: '127.0.0.1', port: 0 }, (s) => s.setHandlers({ data: noop, drain: noop, close: (e) => closed(e) }));
  try {
    const address = listener.address as { host: string; port: number };
    const raw = createConnection({ host: address.host, port: address.port });
    raw.on('error', noop);
    await new Promise((resolve) => raw.once('connect', resolve));
    peer(raw);
    return await ended;
  } finally {
    await listener.close();
  }
}

describe('socketTransport streams', () => {
  it('close with the error when the peer resets the connection', async () => {
    const error = await closeSeenByServer((raw) => raw.resetAndDestroy());
    expect((error as NodeJS.ErrnoException | undefined)?.code).toBe('ECONNRESET');
  });

  it('close without one when the peer ends in order', async () => {
    expect(await closeSeenByServer((raw) => raw.end())).toBeUndefined();
  });
});
