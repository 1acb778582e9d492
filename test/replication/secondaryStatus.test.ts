// A secondary's status$ says why a connection was lost: `disconnected` with
// its reason, just before `backoff`; a move to another address, or an
// attempt that never connected, goes to `backoff` without one. Every
// `backoff` says why the last attempt ended, and a new subscriber gets the
// current status at once.

import { createServer } from 'node:net';
import { join } from 'node:path';
import { firstValueFrom, filter, timeout } from 'rxjs';
import { afterAll, describe, expect, it } from 'vitest';
import { Primary } from '../../src/replication/primary.js';
import { Secondary, type SecondaryStatus } from '../../src/replication/secondary.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { commitMany, waitForTid } from './helpers.js';
import { FakeServer, NOWHERE, WAIT_MS } from './netHelpers.js';
import { formatAddress } from '../../src/replication/address.js';

afterAll(cleanupTempDirs);

/**
 * A primary on a Unix socket and a secondary replicating from it, with the
 * secondary's statuses from its open on; `then` runs once it holds a commit,
 * and resolves once the secondary waits to reconnect.
 */
async function statusesAround(then: (primary: Primary, secondary: Secondary) => Promise<void>): Promise<{ statuses: SecondaryStatus[]; address: string }> {
  const dir = await tempDir();
  const address = join(dir, 'p.sock');
  const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: address, fsync: false, auditPath: null });
  const secondary = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: primary.address, fsync: false, auditPath: null, reconnect: { initialMs: 60_000, maxMs: 60_000 } });
  const statuses: SecondaryStatus[] = [];
  const sub = secondary.status$.subscribe((s) => statuses.push(s));
  try {
    await waitForTid(secondary, (await commitMany(primary.storage, 1))[0]!);
    const backoff = firstValueFrom(secondary.status$.pipe(filter((s) => s.kind === 'backoff'), timeout(WAIT_MS)));
    await then(primary, secondary);
    await backoff;
    return { statuses, address };
  } finally {
    sub.unsubscribe();
    await secondary.close();
    await primary.close();
  }
}

describe("a secondary's status$", () => {
  it('emits disconnected with its reason before backoff when the upstream goes away', async () => {
    const { statuses, address } = await statusesAround((primary) => primary.close());
    // Subscribed after open() returned: the first is where the connection stood then.
    expect(['connecting', 'connected']).toContain(statuses[0]!.kind);
    expect(statuses.slice(-2)).toEqual([
      { kind: 'disconnected', address, reason: 'the upstream closed the connection' },
      { kind: 'backoff', retryInMs: expect.any(Number), reason: 'the upstream closed the connection' },
    ]);
  });

  it('emits no disconnected for a move to another address, nor for an attempt that never connected', async () => {
    const { statuses } = await statusesAround(async (_primary, secondary) => secondary.setReplicationAddress(NOWHERE));
    expect(statuses.slice(-2)).toEqual([
      { kind: 'connecting', address: NOWHERE },
      { kind: 'backoff', retryInMs: expect.any(Number), reason: `connect ECONNREFUSED ${NOWHERE}` },
    ]);
    expect(statuses.map((s) => s.kind)).not.toContain('disconnected');
  });

  it('names a peer that is no ZRS node (a web server) in the reason, rather than reading its text as a frame length', async () => {
    const web = createServer((sock) => sock.once('data', () => sock.end('HTTP/1.1 400 Bad Request\r\n\r\n')));
    await new Promise<void>((resolve) => web.listen(0, '127.0.0.1', () => resolve()));
    const dir = await tempDir();
    const address = `127.0.0.1:${(web.address() as { port: number }).port}`;
    const secondary = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: address, fsync: false, auditPath: null, reconnect: { initialMs: 60_000, maxMs: 60_000 } });
    try {
      const backoff = await firstValueFrom(secondary.status$.pipe(filter((s) => s.kind === 'backoff'), timeout(WAIT_MS)));
      expect(backoff).toMatchObject({ reason: `${address} is a web server (it answered in HTTP: a metrics address?), not a ZRS node: check the replication address` });
    } finally {
      await secondary.close();
      await new Promise((resolve) => web.close(resolve));
    }
  });

  it('gives a subscriber the current status at once, then each change', async () => {
    const late: SecondaryStatus[] = [];
    const dir = await tempDir();
    const secondary = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: NOWHERE, fsync: false, auditPath: null, reconnect: { initialMs: 60_000, maxMs: 60_000 } });
    try {
      await firstValueFrom(secondary.status$.pipe(filter((s) => s.kind === 'backoff'), timeout(WAIT_MS)));
      secondary.status$.subscribe((s) => late.push(s)).unsubscribe();
      expect(late).toEqual([{ kind: 'backoff', retryInMs: expect.any(Number), reason: `connect ECONNREFUSED ${NOWHERE}` }]);
    } finally {
      await secondary.close();
    }
  });
});

describe("a secondary's connected status", () => {
  it('says whether the upstream accepted the handshake: false while a peer that never answers holds it, true once a primary welcomed it', async () => {
    const hung = await FakeServer.start(); // reads the handshake, answers nothing
    const dir = await tempDir();
    const waiting = await Secondary.open({ path: join(dir, 'w.fs'), replicateFrom: hung.address, fsync: false, auditPath: null });
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, auditPath: null });
    const following = await Secondary.open({ path: join(dir, 'f.fs'), replicateFrom: primary.address, fsync: false, auditPath: null });
    try {
      const connected = (s: Secondary, replicating: boolean): Promise<SecondaryStatus> =>
        firstValueFrom(s.status$.pipe(filter((st) => st.kind === 'connected' && st.replicating === replicating), timeout(WAIT_MS)));
      expect(await connected(waiting, false)).toEqual({ kind: 'connected', address: formatAddress(hung.address), replicating: false });
      await hung.connection(0);
      expect(await connected(following, true)).toEqual({ kind: 'connected', address: formatAddress(primary.address), replicating: true });
      // Still no answer: still not replicating (the current status, replayed).
      expect(await firstValueFrom(waiting.status$)).toMatchObject({ kind: 'connected', replicating: false });
    } finally {
      await following.close();
      await primary.close();
      await waiting.close();
      await hung.close();
    }
  });
});
