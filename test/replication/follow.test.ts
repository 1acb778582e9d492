// A session that catches up while commits keep coming: catch-up aims at the
// log's end as of its start, and the follower reads what was committed in
// the meantime from the log before forwarding new commits, so the session
// goes live once, without overflowing back to catch-up. And a session whose
// secondary stops reading overflows its buffer, catches up from the log and
// goes on over the same connection with nothing lost or repeated, as does one
// whose commits outran the feed's ticks. Real sockets.

import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { firstValueFrom } from 'rxjs';
import { afterAll, describe, expect, it } from 'vitest';
import { parseAddress } from '../../src/replication/address.js';
import { silentLogger } from '../../src/replication/log.js';
import type { PrimarySessionOutput } from '../../machines/primarySession.js';
import { DEFAULT_FOLLOW_BUFFER, FOLLOW_BUFFER_BYTES, type PrimarySession } from '../../src/replication/primarySession.js';
import { Secondary } from '../../src/replication/secondary.js';
import { ReplicationServer } from '../../src/replication/server.js';
import { systemClock } from '../../src/node/clock.js';
import { socketTransport } from '../../src/node/socketTransport.js';
import { FileStorage } from '../../src/storage/FileStorage.js';
import type { ByteStream, Transport } from '../../src/ports/transport.js';
import { Z64 } from '../../src/storage/timestamp.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { DEFAULT_LIVE_FEED_LIMITS, type LiveFeed } from '../../src/replication/liveFeed.js';
import type { CommittedTransaction } from '../../src/storage/types.js';
import { commitMany, expectSameHistory, waitForTid } from './helpers.js';
import { FAST_RECONNECT, until } from './netHelpers.js';

afterAll(cleanupTempDirs);

setFlagsFromString('--expose-gc');
const collectGarbage = runInNewContext('gc') as () => void;

/**
 * Heap and Buffer memory still reachable: the least of several readings,
 * each after a full collection and a turn of the event loop (Buffers are
 * let go of a little after the collection that finds them unreachable).
 */
async function retainedBytes(): Promise<number> {
  let least = Infinity;
  for (let i = 0; i < 6; i++) {
    collectGarbage();
    await new Promise((r) => setTimeout(r, 20));
    const m = process.memoryUsage();
    least = Math.min(least, m.heapUsed + m.arrayBuffers);
  }
  return least;
}

/** A storage served over loopback, with the sessions it starts. */
async function serve(followBufferSize?: number) {
  const dir = await tempDir();
  const storage = await FileStorage.open(join(dir, 'p.fs'), { create: true, fsync: false });
  const sessions: PrimarySession[] = [];
  const server = await ReplicationServer.start({
    storage,
    address: parseAddress('127.0.0.1:0'),
    transport: socketTransport,
    clock: systemClock,
    log: silentLogger,
    followBufferSize,
    onSession: (s) => sessions.push(s),
  });
  return { dir, storage, sessions, server };
}

/** A secondary's transport whose socket the test can hold paused (real TCP backpressure on the primary) and release. */
function holdableTransport(): { transport: Transport; hold(): void; release(): void; socket(): ByteStream } {
  let held: ByteStream | null = null;
  let holding = false;
  const transport: Transport = {
    ...socketTransport,
    connect: async (address) => {
      const s = await socketTransport.connect(address);
      held = s;
      return {
        peer: s.peer,
        write: (c) => s.write(c),
        pause: () => s.pause(),
        resume: () => void (holding || s.resume()),
        end: () => s.end(),
        destroy: (e) => s.destroy(e),
        setHandlers: (h) => s.setHandlers(h),
      };
    },
  };
  return {
    transport,
    hold: () => {
      holding = true;
      held!.pause();
    },
    release: () => {
      holding = false;
      held!.resume();
    },
    socket: () => held!,
  };
}

/** Commit revision `i` of `oid`, `bytes` of data, after `serial`; its tid. */
async function commitRevision(storage: FileStorage, oid: Buffer, serial: Buffer, bytes: number, i: number): Promise<Buffer> {
  const txn = { description: `big ${i}` };
  await storage.tpcBegin(txn);
  storage.store(oid, serial, Buffer.alloc(bytes, i), txn);
  await storage.tpcVote(txn);
  return storage.tpcFinish(txn);
}

/** Commit `bytes`-sized revisions of one object until `session` overflows back to catching up (at most `max`). */
async function commitUntilOverflow(storage: FileStorage, session: PrimarySession, bytes: number, max: number): Promise<void> {
  const oid = storage.newOid();
  let serial = Z64;
  const overflows = (): number => session.machine.getSnapshot().context.counters.overflows;
  for (let i = 0; i < max && overflows() === 0; i++) {
    serial = await commitRevision(storage, oid, serial, bytes, i);
    // Time passes too, for ticks the send pacer holds back while this loop keeps it busy.
    await new Promise((r) => (i % 20 === 19 ? setTimeout(r, 2) : setImmediate(r)));
  }
  expect(overflows()).toBeGreaterThan(0);
}

/** Close what a test opened, the secondary first. */
async function closeAll(secondary: Secondary, server: ReplicationServer, storage: FileStorage): Promise<void> {
  await secondary.close();
  await server.close();
  await storage.close();
}

describe('a live session', () => {
  it('tells its machine of writes and acks at its transitions, not at each commit; its status and progress$ follow each one', async () => {
    const { dir, storage, sessions, server } = await serve();
    const secondary = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: server.address, fsync: false, reconnect: FAST_RECONNECT, auditPath: null });
    try {
      const [first] = await commitMany(storage, 1);
      await waitForTid(secondary, first!);
      const session = sessions[0]!;
      expect(session.machine.getSnapshot().value).toBe('live');
      // The first commit's ack may still be on its way: it would show as progress before the writes below.
      await until(() => session.status().ackedTid, (tid) => tid?.equals(first!) === true);
      let transitions = 0;
      const sub = session.machine.subscribe(() => (transitions += 1));
      const progress: Array<{ sent: string | undefined; acked: string | undefined }> = [];
      const psub = session.progress$.subscribe((p) => progress.push({ sent: p.lastSentTid?.toString('hex'), acked: p.ackedTid?.toString('hex') }));
      const tids: Buffer[] = [];
      for (let i = 0; i < 100; i++) {
        const [tid] = await commitMany(storage, 1);
        tids.push(tid!);
        await waitForTid(secondary, tid!);
        expect(session.status().lastSentTid?.equals(tid!)).toBe(true);
      }
      const last = tids.at(-1)!;
      expect((await until(() => session.status().ackedTid, (tid) => tid?.equals(last) === true))?.toString('hex')).toBe(last.toString('hex'));
      sub.unsubscribe();
      psub.unsubscribe();
      expect(transitions).toBe(0);
      // Every write, then its ack, in order.
      expect(progress.map((p) => p.sent).filter((t, i, all) => t !== all[i - 1])).toEqual(tids.map((t) => t.toString('hex')));
      expect(progress.at(-1)!.acked).toBe(last.toString('hex'));
      // The machine hears of everything when the session ends: its output has the last write and ack.
      await secondary.close();
      const output = await new Promise<PrimarySessionOutput>((resolve) =>
        session.machine.subscribe({ complete: () => resolve(session.machine.getSnapshot().output!) }),
      );
      expect(Buffer.from(output.lastSentTid!).equals(last)).toBe(true);
      expect(Buffer.from(output.ackedTid!).equals(last)).toBe(true);
    } finally {
      await closeAll(secondary, server, storage);
    }
  });
});

describe('catching up under a steady stream of commits', () => {
  it('goes live once: no overflow back to catch-up, nothing missed', async () => {
    const { dir, storage, sessions, server } = await serve();
    const secondary = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: server.address, fsync: false, reconnect: FAST_RECONNECT, auditPath: null });
    try {
      await commitMany(storage, 3000);
      // One commit per turn of the event loop, during the catch-up and a while after it went live.
      let last = storage.lastTransaction();
      let liveFor = 0;
      for (let i = 0; i < 50_000 && liveFor < 200; i++) {
        last = (await commitMany(storage, 1))[0]!;
        await new Promise((r) => setImmediate(r));
        if (sessions[0]?.machine.getSnapshot().value === 'live') liveFor += 1;
      }
      expect(liveFor).toBe(200);
      await waitForTid(secondary, last!);
      const counters = sessions[0]!.machine.getSnapshot().context.counters;
      expect(counters.overflows).toBe(0);
      expect(counters.catchUps).toBe(1);
      await expectSameHistory(storage, secondary.storage);
    } finally {
      await closeAll(secondary, server, storage);
    }
  });

  it('stops following the live feed when it ends: a session gone leaves no listener behind', async () => {
    const { dir, storage, sessions, server } = await serve();
    const listeners = (server as unknown as { feed: { listeners: Set<unknown> } }).feed.listeners;
    const secondary = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: server.address, fsync: false, reconnect: FAST_RECONNECT, auditPath: null });
    try {
      await waitForTid(secondary, (await commitMany(storage, 1))[0]!);
      expect(listeners.size).toBe(1);
      // The secondary goes (its peer closed): the session ends and no longer hears of commits.
      await secondary.close();
      await firstValueFrom(sessions[0]!.done$, { defaultValue: null });
      expect(listeners.size).toBe(0);
    } finally {
      await closeAll(secondary, server, storage);
    }
  });

  it('skips the commits its first tick holds from before it subscribed, which catch-up already sent', async () => {
    const { dir, storage, sessions, server } = await serve();
    // The feed may hand a new listener, in its first tick, commits made just
    // before it subscribed: with another session live, those wait in the feed
    // while catch-up reads them from the log. This feed does so every time,
    // with the last five commits catch-up sent.
    const made: CommittedTransaction[] = [];
    const recording = storage.commits$.subscribe((c) => made.push({ ...c, raw: c.raw && Buffer.from(c.raw) }));
    const feed = (server as unknown as { feed: LiveFeed }).feed;
    const subscribe = feed.subscribe.bind(feed);
    let replayed = 0;
    let armed = true;
    feed.subscribe = (listener) => {
      const earlier = made.slice(-5);
      let first = armed && sessions.length === 2;
      if (first) armed = false;
      return subscribe({
        ...listener,
        next: (commits) => {
          if (first) {
            first = false;
            replayed += earlier.length;
            listener.next([...earlier.map((c) => ({ committed: c, txn: null })), ...commits]);
          } else listener.next(commits);
        },
      });
    };
    const first = await Secondary.open({ path: join(dir, 's1.fs'), replicateFrom: server.address, fsync: false, reconnect: FAST_RECONNECT, auditPath: null });
    let second: Secondary | null = null;
    try {
      await commitMany(storage, 200);
      await waitForTid(first, storage.lastTransaction()!);
      second = await Secondary.open({ path: join(dir, 's2.fs'), replicateFrom: server.address, fsync: false, reconnect: FAST_RECONNECT, auditPath: null });
      await until(() => sessions[1]?.machine.getSnapshot().value, (v) => v === 'live');
      let sent = 0;
      sessions[1]!.progress$.subscribe((p) => (sent = p.sentTransactions));
      const last = (await commitMany(storage, 3)).at(-1)!;
      await waitForTid(second, last);
      expect(replayed).toBe(5);
      // Every transaction went to the second secondary once, over its one connection.
      expect(sent).toBe(203);
      expect(sessions[1]!.machine.getSnapshot().context.counters.catchUps).toBe(1);
      expect(sessions).toHaveLength(2);
      await expectSameHistory(storage, second.storage);
    } finally {
      recording.unsubscribe();
      await second?.close();
      await closeAll(first, server, storage);
    }
  });

  it('falls back to catch-up when a stalled secondary lets its buffer fill, and resumes with every transaction once, in order', async () => {
    const { dir, storage, sessions, server } = await serve(4);
    const { transport, hold, release } = holdableTransport();
    const secondary = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: server.address, fsync: false, reconnect: FAST_RECONNECT, auditPath: null, transport });
    try {
      await waitForTid(secondary, (await commitMany(storage, 1))[0]!);
      hold();
      // 64 KiB commits until the session overflows: once the socket buffers are
      // full, its queue of unsent commits grows past the limit of 4.
      await commitUntilOverflow(storage, sessions[0]!, 64 * 1024, 2000);
      release();
      const last = (await commitMany(storage, 3)).at(-1)!;
      await waitForTid(secondary, last);
      expect(sessions.length).toBe(1); // the same connection all along
      await expectSameHistory(storage, secondary.storage);
    } finally {
      await closeAll(secondary, server, storage);
    }
  });

  it('lets go of the commits it held once it overflows, while its socket stays full', async () => {
    const { dir, storage, sessions, server } = await serve(400);
    const { transport, hold, socket } = holdableTransport();
    const secondary = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: server.address, fsync: false, reconnect: FAST_RECONNECT, auditPath: null, transport });
    try {
      await waitForTid(secondary, (await commitMany(storage, 1))[0]!);
      hold(); // for good: the primary's wait for its socket to drain never ends
      const before = await retainedBytes();
      await commitUntilOverflow(storage, sessions[0]!, 200 * 1024, 1000);
      // Commits of 200 KiB (published with their bytes) were queued until they passed FOLLOW_BUFFER_BYTES and it
      // overflowed; none may stay reachable (what stays is what the socket holds in its own buffer, about 2 MiB).
      expect((await retainedBytes()) - before).toBeLessThan(FOLLOW_BUFFER_BYTES / 2);
    } finally {
      socket().destroy();
      await closeAll(secondary, server, storage);
    }
  });

  it('falls back to catch-up when the commits it holds unsent pass FOLLOW_BUFFER_BYTES, long before their count reaches its limit', async () => {
    const { dir, storage, sessions, server } = await serve();
    const { transport, hold, release } = holdableTransport();
    const secondary = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: server.address, fsync: false, reconnect: FAST_RECONNECT, auditPath: null, transport });
    try {
      await waitForTid(secondary, (await commitMany(storage, 1))[0]!);
      hold();
      const before = storage.transactionCount;
      // 200 KiB commits (published with their bytes): the byte limit comes first.
      await commitUntilOverflow(storage, sessions[0]!, 200 * 1024, DEFAULT_FOLLOW_BUFFER);
      const queued = storage.transactionCount - before;
      expect(queued).toBeLessThan(DEFAULT_FOLLOW_BUFFER / 2);
      expect(queued * 200 * 1024).toBeGreaterThan(FOLLOW_BUFFER_BYTES / 2);
      release();
      const last = (await commitMany(storage, 3)).at(-1)!;
      await waitForTid(secondary, last);
      await expectSameHistory(storage, secondary.storage);
    } finally {
      await closeAll(secondary, server, storage);
    }
  });

  it('a burst of commits too large to be published with their bytes does not count against the feed\'s byte limit', async () => {
    const { dir, storage, sessions, server } = await serve();
    // The burst holds this process's loop, the secondary's with it: no silence timeout.
    const secondary = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: server.address, fsync: false, reconnect: FAST_RECONNECT, auditPath: null, heartbeatTimeoutMs: 0 });
    try {
      await waitForTid(secondary, (await commitMany(storage, 1))[0]!);
      // 70 commits of 1 MiB without a turn of the loop: 70 MiB pending, none of it held by the feed.
      const oid = storage.newOid();
      let serial = Z64;
      for (let i = 0; i < 70; i++) {
        serial = await commitRevision(storage, oid, serial, 1024 * 1024, i);
      }
      await waitForTid(secondary, serial);
      expect(sessions[0]!.machine.getSnapshot().context.counters.overflows).toBe(0);
    } finally {
      await closeAll(secondary, server, storage);
    }
  });

  it('falls back to catch-up when more commits wait for the feed than it holds, and resumes with every transaction once, in order', async () => {
    const { dir, storage, sessions, server } = await serve();
    // The commits below hold this process's loop for seconds on a slow machine, the secondary's with it: no silence timeout.
    const secondary = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: server.address, fsync: false, reconnect: FAST_RECONNECT, auditPath: null, heartbeatTimeoutMs: 0 });
    try {
      await waitForTid(secondary, (await commitMany(storage, 1))[0]!);
      expect(sessions[0]!.machine.getSnapshot().value).toBe('live');
      // Without fsync a commit never waits for the event loop: no tick runs between these.
      await commitMany(storage, DEFAULT_LIVE_FEED_LIMITS.pendingCommits + 1);
      expect(sessions[0]!.machine.getSnapshot().context.counters.overflows).toBe(1);
      const last = (await commitMany(storage, 3)).at(-1)!;
      await waitForTid(secondary, last);
      expect(sessions.length).toBe(1);
      await expectSameHistory(storage, secondary.storage);
    } finally {
      await closeAll(secondary, server, storage);
    }
  });
});
