// A promote request that gets no answer in time: the node may still carry
// it out, so the error says to check it before promoting another (two
// promoted nodes are a split brain). Time is a virtual clock, moved once
// the request has reached the node.

import { afterAll, describe, expect, it } from 'vitest';
import { requestPromotion } from '../../src/replication/promoteClient.js';
import { VirtualClock } from '../../src/sim/clock.js';
import { cleanupTempDirs } from '../helpers/fixtures.js';
import { FakeServer } from './netHelpers.js';

afterAll(cleanupTempDirs);

describe('a promote request without an answer', () => {
  it('fails saying the node may still promote itself, and how to check', async () => {
    const server = await FakeServer.start();
    const clock = new VirtualClock();
    try {
      const asking = requestPromotion(server.address, { clock, timeoutMs: 5000 }).catch((e: unknown) => e as Error);
      const node = await server.connection(0);
      await node.frame(1); // the protocol name, then the request: it reached the node, which says nothing
      clock.advance(5000);
      const err = await asking;
      expect(err).toBeInstanceOf(Error);
      expect((err as Error).message).toMatch(/^promote request to .* failed: no reply within 5000 ms; the node may still promote itself: check it \(zrs status .*, with the same --ssl-\* flags\) before promoting another$/);
    } finally {
      await server.close();
    }
  });
});
