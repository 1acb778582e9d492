// A pack request on a running node's replication address (`zrs pack
// ADDRESS`): the node packs its own file while it goes on serving, sends
// where it is while it packs, answers with its report or why not, and
// records the pack in its audit log. The client's side is checked against a
// scripted node on a virtual clock; the nodes' over real sockets.

import { afterAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { readAuditLog } from '../../src/audit/auditLog.js';
import { ReplicationServer } from '../../src/replication/server.js';
import { PackRefusedError, PackRequestError, requestPack, type PackReply } from '../../src/replication/packClient.js';
import type { PackOutcome } from '../../machines/primarySession.js';
import { seededRandom } from '../../src/ports/random.js';
import { SimNetwork } from '../../src/sim/network.js';
import { Primary } from '../../src/replication/primary.js';
import { Secondary } from '../../src/replication/secondary.js';
import { FileStorage } from '../../src/storage/FileStorage.js';
import type { PackProgress } from '../../src/storage/pack.js';
import { tidToSeconds } from '../../src/storage/timestamp.js';
import { systemClock } from '../../src/node/clock.js';
import { socketTransport } from '../../src/node/socketTransport.js';
import { parseAddress } from '../../src/replication/address.js';
import { VirtualClock } from '../../src/sim/clock.js';
import { createNativePackr, createNativeUnpackr, decodeNative, encodeNative, encodeNativeFrame, MAX_REFUSAL_MESSAGE_CHARS, nativeProtocolName } from '../../src/wire/native.js';
import { encodeFrame } from '../../src/wire/framing.js';
import { connect } from 'node:net';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { allTransactions, commitMany, holdNextRead, waitForTid, type HeldRead } from './helpers.js';
import { FAST_RECONNECT, FakeServer } from './netHelpers.js';

afterAll(cleanupTempDirs);

const answer = (msg: Parameters<typeof encodeNative>[0]): Buffer => encodeNative(msg, createNativePackr());

/** The error a pack request ends with (an answer where an error was due is one too). */
const refusal = (asking: Promise<unknown>): Promise<PackRefusedError> =>
  asking.then(
    () => new PackRefusedError('the node packed', 'failed'),
    (e: unknown) => e as PackRefusedError,
  );

/** Revisions of an object, one per transaction of `commitMany`: what a pack removes. */
const revisionCount = async (fs: Parameters<typeof allTransactions>[0]): Promise<number> => (await allTransactions(fs)).reduce((n, t) => n + t.records.length, 0);

describe('requestPack (the client)', () => {
  it('sends the pack time and gc flag after the native protocol name, passes progress on, and each progress message starts its timeout over', async () => {
    const server = await FakeServer.start();
    const clock = new VirtualClock();
    const progress: PackProgress[] = [];
    try {
      const asking = requestPack(server.address, 1_764_460_800.25, { gc: false, clock, timeoutMs: 5000, onProgress: (p) => progress.push(p) });
      const node = await server.connection(0);
      expect((await node.frame(0)).equals(Buffer.from(nativeProtocolName()))).toBe(true);
      expect(decodeNative(await node.frame(1), createNativeUnpackr(), 'secondary')).toEqual({ type: 'pack-request', time: 1_764_460_800.25, gc: false });
      let settled = false;
      void asking.finally(() => (settled = true));
      for (const done of [10, 20, 30]) {
        clock.advance(4000);
        node.send(answer({ type: 'pack-progress', step: 'copy', done, total: 30 }));
        await expect.poll(() => progress.length).toBe(done / 10);
      }
      // 12 s since the request, 4 s since the last word: still waiting.
      clock.advance(4000);
      await new Promise((resolve) => setImmediate(resolve));
      expect(settled).toBe(false);
      const report = { packed: true, packTid: Buffer.alloc(8, 1), sizeBefore: 30, sizeAfter: 10, tailTransactions: 0, blobFiles: 'none', removedBlobFiles: 0, blobFilesNotRemoved: 0, blobRemovalError: null } as const;
      node.send(answer({ type: 'packed', ...report }));
      expect(await asking).toEqual(report);
      expect(progress).toEqual([10, 20, 30].map((done) => ({ step: 'copy', done, total: 30 })));
    } finally {
      await server.close();
    }
  });

  it('gives up after the timeout of silence, saying the node may still be packing; a refusal is a PackRefusedError with its code', async () => {
    const server = await FakeServer.start();
    const clock = new VirtualClock();
    try {
      let heard = 0;
      const silent = requestPack(server.address, 1_764_460_800, { clock, timeoutMs: 5000, onProgress: () => (heard += 1) }).then(
        () => new Error('answered'),
        (e: unknown) => e as Error,
      );
      const node = await server.connection(0);
      await node.frame(1);
      node.send(answer({ type: 'pack-progress', step: 'index', done: 1, total: 2 }));
      await expect.poll(() => heard).toBe(1);
      clock.advance(5000);
      expect((await silent).message).toMatch(/^pack request to .* failed: no reply within 5000 ms; the node may still be packing: see its log$/);

      const refusing = requestPack(server.address, 1_764_460_800, { clock }).then(() => new Error('answered'), (e: unknown) => e as Error);
      const second = await server.connection(1);
      await second.frame(1);
      second.send(answer({ type: 'pack-refused', code: 'failed', message: 'a pack is already running' }));
      const err = await refusing;
      expect(err).toBeInstanceOf(PackRefusedError);
      expect(err.message).toMatch(/^.* did not pack \(failed\): a pack is already running$/);
      expect((err as PackRefusedError).code).toBe('failed');
    } finally {
      await server.close();
    }
  });
});

describe('requestPack against odd answers', () => {
  it('waits 30 s of silence by default; a refuse (a node that knows no pack requests) is a PackRequestError naming it', async () => {
    const server = await FakeServer.start();
    const clock = new VirtualClock();
    try {
      let settled = false;
      const silent = refusal(requestPack(server.address, 1_764_460_800, { clock }).finally(() => (settled = true)));
      await (await server.connection(0)).frame(1);
      clock.advance(29_999);
      await new Promise((resolve) => setImmediate(resolve));
      expect(settled).toBe(false);
      clock.advance(1);
      expect((await silent).message).toContain('failed: no reply within 30000 ms');

      const refusing = refusal(requestPack(server.address, 1_764_460_800, { clock }));
      const node = await server.connection(1);
      await node.frame(1);
      node.send(answer({ type: 'refuse', code: 'unsupported-version', message: 'speaks zrs-ts/2' }));
      const err = await refusing;
      expect(err).toBeInstanceOf(PackRequestError);
      expect(err.message).toMatch(/^pack request to .* failed: refused \(unsupported-version\): speaks zrs-ts\/2$/);
    } finally {
      await server.close();
    }
  });
});

describe('a pack handler behind a replication server (simulated network, virtual clock)', () => {
  it('sends no progress before the pack reports some, then every second; cuts a long answer to the limit', async () => {
    const clock = new VirtualClock();
    const net = new SimNetwork({ clock, random: seededRandom(3), latencyMs: { min: 1, max: 1 } });
    const storage = await FileStorage.open(join(await tempDir(), 'p.fs'), { create: true, fsync: false });
    let report: ((p: PackProgress) => void) | null = null;
    let finish: ((outcome: PackOutcome) => void) | null = null;
    const server = await ReplicationServer.start({
      storage,
      address: { kind: 'tcp', host: 'p', port: 5000 },
      transport: net.transport('p'),
      clock,
      log: () => undefined,
      heartbeatIntervalMs: 0,
      pack: (request) => {
        report = request.onProgress;
        return new Promise((resolve) => (finish = resolve));
      },
    });
    const run = async (until: () => boolean, ms: number): Promise<void> => {
      for (let t = 0; t < ms && !until(); t += 10) {
        clock.advance(10);
        await new Promise((resolve) => setImmediate(resolve));
      }
    };
    try {
      const ask = async (outcome: PackOutcome): Promise<unknown> => {
        const progress: PackProgress[] = [];
        let result: unknown = undefined;
        void requestPack(server.address, 1_764_460_800, { transport: net.transport('c'), clock, timeoutMs: 60_000, onProgress: (p) => progress.push(p) }).then(
          (r) => (result = r),
          (e: unknown) => (result = e),
        );
        await run(() => finish !== null, 1000);
        // Silent for 5 s: nothing to say yet.
        await run(() => false, 5000);
        expect(progress).toEqual([]);
        report!({ step: 'index', done: 5, total: 10 });
        await run(() => progress.length === 2, 2500);
        expect(progress).toEqual([
          { step: 'index', done: 5, total: 10 },
          { step: 'index', done: 5, total: 10 },
        ]);
        finish!(outcome);
        finish = null;
        await run(() => result !== undefined, 1000);
        return result;
      };
      const refused = (await ask({ kind: 'refused', code: 'failed', reason: 'x'.repeat(5000) })) as PackRefusedError;
      expect(refused).toBeInstanceOf(PackRefusedError);
      expect(refused.message).toMatch(new RegExp(`\\(failed\\): x{${MAX_REFUSAL_MESSAGE_CHARS}}$`));
      const report5000 = { packed: true, packTid: Buffer.alloc(8, 2), sizeBefore: 9, sizeAfter: 4, tailTransactions: 0, blobFiles: 'deleted', removedBlobFiles: 1, blobFilesNotRemoved: 1, blobRemovalError: 'y'.repeat(5000) } as const;
      const packed = (await ask({ kind: 'packed', report: report5000 })) as PackReply;
      expect(packed).toEqual({ ...report5000, blobRemovalError: 'y'.repeat(MAX_REFUSAL_MESSAGE_CHARS) });
    } finally {
      await server.close();
      await storage.close();
    }
  });
});

describe('a node asked to pack', () => {
  it('a primary packs its own file while it commits and replicates, answers with its report, and records the pack in its audit log', async () => {
    const dir = await tempDir();
    const pPath = join(dir, 'p.fs');
    const primary = await Primary.open({ path: pPath, replicateTo: '127.0.0.1:0', fsync: false });
    const secondary = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: primary.address, fsync: false, reconnect: FAST_RECONNECT, auditPath: null });
    let held: HeldRead | null = null;
    let reply: PackReply | null = null;
    let time = 0;
    try {
      const tids = await commitMany(primary.storage, 40);
      time = tidToSeconds(tids.at(-1)!) + 1;
      await waitForTid(secondary, tids.at(-1)!);
      const before = await revisionCount(primary.storage);
      // Held at its first read, the pack has begun: what is committed now lands in its tail, and replicates.
      held = await holdNextRead(dir);
      const asking = requestPack(primary.address, time, { gc: false });
      await held.reading;
      const during = await commitMany(primary.storage, 5);
      await waitForTid(secondary, during.at(-1)!);
      held.release();
      reply = await asking;
      expect(reply).toMatchObject({ packed: true, packTid: tids.at(-1), tailTransactions: 5, blobFiles: 'none', removedBlobFiles: 0 });
      expect(reply.sizeAfter).toBeLessThan(reply.sizeBefore);
      expect(await revisionCount(primary.storage)).toBeLessThan(before);
      expect((await allTransactions(primary.storage)).slice(-5).map((t) => t.tid)).toEqual(during);
      // The secondary's own file is its own: not packed, and it goes on following.
      const onSecondary = await allTransactions(secondary.storage);
      expect({ count: onSecondary.length, packed: onSecondary.some((t) => t.status === 'p') }).toEqual({ count: 45, packed: false });
      // Asked again, to the time it packed to: nothing left to remove.
      expect((await requestPack(primary.address, tidToSeconds(tids.at(-1)!), { gc: false })).packed).toBe(false);
      const more = await commitMany(primary.storage, 3);
      await waitForTid(secondary, more.at(-1)!);
    } finally {
      held?.restore();
      await secondary.close();
      await primary.close();
    }
    const records = (await readAuditLog(`${pPath}.audit`)).records;
    expect(records.some((r) => r.kind === 'handshake' && r.details.verdict === 'pack-request')).toBe(true);
    expect(records.filter((r) => r.kind === 'pack').map((r) => r.details)).toEqual([
      {
        requestedBy: expect.stringMatching(/^127\.0\.0\.1:\d+$/),
        time: new Date(time * 1000).toISOString(),
        gc: false,
        outcome: 'packed',
        packTid: reply!.packTid.toString('hex'),
        sizeBefore: reply!.sizeBefore,
        sizeAfter: reply!.sizeAfter,
        removedBlobFiles: 0,
        blobFilesNotRemoved: 0,
      },
      expect.objectContaining({ outcome: 'unchanged', sizeBefore: reply!.sizeAfter, sizeAfter: reply!.sizeAfter }),
    ]);
  });

  it('a secondary packs its own file and goes on replicating; its primary is not packed', async () => {
    const dir = await tempDir();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, auditPath: null });
    const secondary = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: primary.address, replicateTo: '127.0.0.1:0', fsync: false, reconnect: FAST_RECONNECT, auditPath: null });
    try {
      const tids = await commitMany(primary.storage, 40);
      await waitForTid(secondary, tids.at(-1)!);
      const before = await revisionCount(primary.storage);
      const reply = await requestPack(secondary.replicationAddress!, tidToSeconds(tids.at(-1)!) + 1, { gc: false });
      expect(reply.packed).toBe(true);
      expect(await revisionCount(secondary.storage)).toBeLessThan(before);
      expect(await revisionCount(primary.storage)).toBe(before);
      const more = await commitMany(primary.storage, 3);
      await waitForTid(secondary, more.at(-1)!);
      expect((await allTransactions(secondary.storage)).at(-1)!.tid).toEqual(more.at(-1));
    } finally {
      await secondary.close();
      await primary.close();
    }
  });

  it('refuses a pack time no tid names, and answers what garbage collection refuses (a file without a root object) as gc-refused, the file unchanged', async () => {
    const dir = await tempDir();
    const pPath = join(dir, 'p.fs');
    const primary = await Primary.open({ path: pPath, replicateTo: '127.0.0.1:0', fsync: false });
    try {
      const tids = await commitMany(primary.storage, 10);
      const size = primary.storage.getSize();
      const far = await refusal(requestPack(primary.address, 1e12));
      expect(far).toBeInstanceOf(PackRefusedError);
      expect({ code: far.code, message: far.message }).toEqual({ code: 'refused', message: expect.stringContaining('pack time 1000000000000 is outside the times transactions have (1970 to 9917)') });
      const gc = await refusal(requestPack(primary.address, tidToSeconds(tids.at(-1)!) + 1));
      expect(gc).toBeInstanceOf(PackRefusedError);
      expect({ code: gc.code, message: gc.message }).toEqual({ code: 'gc-refused', message: expect.stringMatching(/: oid 0x0+ is referenced but has no revision at the pack time$/) });
      expect(primary.storage.getSize()).toBe(size);
    } finally {
      await primary.close();
    }
    const packs = (await readAuditLog(`${pPath}.audit`)).records.filter((r) => r.kind === 'pack').map((r) => r.details.outcome);
    expect(packs).toEqual(['refused', 'gc-refused']);
  });

  it('a second pack while one runs is answered failed; a close stops the first, which is answered failed, and the file is as it was', async () => {
    const dir = await tempDir();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, auditPath: null });
    let closing: Promise<void> | null = null;
    let held: HeldRead | null = null;
    try {
      const tids = await commitMany(primary.storage, 20);
      const before = await revisionCount(primary.storage);
      // The pack's first read is held until the close.
      held = await holdNextRead(dir, () => closing !== null);
      const time = tidToSeconds(tids.at(-1)!) + 1;
      const first = refusal(requestPack(primary.address, time, { gc: false }));
      await held.reading;
      const second = await refusal(requestPack(primary.address, time, { gc: false }));
      expect({ code: second.code, message: second.message }).toEqual({ code: 'failed', message: expect.stringContaining('a pack is already running') });
      closing = primary.close();
      const stopped = await first;
      expect(stopped).toBeInstanceOf(PackRefusedError);
      expect({ code: stopped.code, message: stopped.message }).toEqual({ code: 'failed', message: expect.stringMatching(/did not pack \(failed\): storage .*p\.fs is closed$/) });
      await closing;
      const reopened = await FileStorage.open(join(dir, 'p.fs'), { readOnly: true });
      try {
        expect(await revisionCount(reopened)).toBe(before);
      } finally {
        await reopened.close();
      }
    } finally {
      held?.restore();
      await primary.close();
    }
  });

  it("a secondary's close stops a requested pack: answered failed, its file as it was", async () => {
    const dir = await tempDir();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, auditPath: null });
    const sPath = join(dir, 's.fs');
    const secondary = await Secondary.open({ path: sPath, replicateFrom: primary.address, replicateTo: '127.0.0.1:0', fsync: false, reconnect: FAST_RECONNECT, auditPath: null });
    let closing: Promise<void> | null = null;
    let held: HeldRead | null = null;
    try {
      const tids = await commitMany(primary.storage, 20);
      await waitForTid(secondary, tids.at(-1)!);
      const before = await allTransactions(secondary.storage);
      held = await holdNextRead(dir, () => closing !== null);
      const asking = refusal(requestPack(secondary.replicationAddress!, tidToSeconds(tids.at(-1)!) + 1, { gc: false }));
      await held.reading;
      closing = secondary.close();
      const stopped = await asking;
      expect({ code: stopped.code, message: stopped.message }).toEqual({ code: 'failed', message: expect.stringMatching(/did not pack \(failed\): storage .*s\.fs is closed$/) });
      await closing;
      const reopened = await FileStorage.open(sPath, { readOnly: true });
      try {
        expect((await allTransactions(reopened)).map((t) => [t.tid, t.status])).toEqual(before.map((t) => [t.tid, t.status]));
      } finally {
        await reopened.close();
      }
    } finally {
      held?.restore();
      await secondary.close();
      await primary.close();
    }
  });

  it('a secondary promoted while it packs records the pack in the log it goes on with as a primary', async () => {
    const dir = await tempDir();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, auditPath: null });
    const sPath = join(dir, 's.fs');
    const secondary = await Secondary.open({ path: sPath, replicateFrom: primary.address, replicateTo: '127.0.0.1:0', fsync: false, reconnect: FAST_RECONNECT });
    let held: HeldRead | null = null;
    let promoted: Primary | null = null;
    try {
      const tids = await commitMany(primary.storage, 20);
      await waitForTid(secondary, tids.at(-1)!);
      held = await holdNextRead(dir);
      const asking = requestPack(secondary.replicationAddress!, tidToSeconds(tids.at(-1)!) + 1, { gc: false });
      await held.reading;
      await primary.close();
      promoted = await secondary.promote({ force: true });
      held.release();
      expect((await asking).packed).toBe(true);
    } finally {
      held?.restore();
      await (promoted ?? secondary).close();
      await primary.close();
    }
    const records = (await readAuditLog(`${sPath}.audit`)).records;
    expect(records.filter((r) => r.kind === 'pack').map((r) => r.details.outcome)).toEqual(['packed']);
    // After the promotion: recorded by the node as the primary it became.
    expect(records.findIndex((r) => r.kind === 'pack')).toBeGreaterThan(records.findIndex((r) => r.kind === 'promotion'));
  });

  it('a pack whose client hung up goes on to its end, logged and recorded', async () => {
    const dir = await tempDir();
    const pPath = join(dir, 'p.fs');
    const lines: string[] = [];
    const primary = await Primary.open({ path: pPath, replicateTo: '127.0.0.1:0', fsync: false, log: (_level, message) => void lines.push(message) });
    let held: HeldRead | null = null;
    try {
      const tids = await commitMany(primary.storage, 20);
      const before = await revisionCount(primary.storage);
      held = await holdNextRead(dir);
      const client = connect((primary.address as { port: number }).port, '127.0.0.1');
      client.on('error', () => undefined);
      client.write(encodeFrame(nativeProtocolName()));
      client.write(encodeNativeFrame({ type: 'pack-request', time: tidToSeconds(tids.at(-1)!) + 1, gc: false }, createNativePackr()));
      await held.reading;
      client.destroy();
      await expect.poll(() => lines.some((l) => /^session with 127\.0\.0\.1:\d+ closed: peer-closed$/.test(l))).toBe(true);
      held.release();
      await expect.poll(() => lines.find((l) => l.startsWith('pack requested by ') && l.includes(': packed to tid '))).toBeDefined();
      expect(await revisionCount(primary.storage)).toBeLessThan(before);
    } finally {
      held?.restore();
      await primary.close();
    }
    const packRecord = (await readAuditLog(`${pPath}.audit`)).records.find((r) => r.kind === 'pack');
    expect(packRecord?.details).toMatchObject({ outcome: 'packed', gc: false });
  });

  it('says where the pack is every second, on its own clock', async () => {
    const dir = await tempDir();
    const clock = new VirtualClock();
    const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, auditPath: null, clock });
    let held: HeldRead | null = null;
    try {
      const tids = await commitMany(primary.storage, 20);
      const size = primary.storage.getSize();
      // The pack reports its first transaction, then its read of it is held.
      held = await holdNextRead(dir);
      const progress: PackProgress[] = [];
      const asking = requestPack(primary.address, tidToSeconds(tids.at(-1)!) + 1, { gc: false, onProgress: (p) => progress.push(p) });
      await held.reading;
      expect(progress).toEqual([]);
      clock.advance(1000);
      await expect.poll(() => progress.length).toBe(1);
      // Not moved since: said again a second later, so the client knows the node is alive.
      clock.advance(1000);
      await expect.poll(() => progress.length).toBe(2);
      expect(progress).toEqual([
        { step: 'index', done: 4, total: size },
        { step: 'index', done: 4, total: size },
      ]);
      held.release();
      expect((await asking).packed).toBe(true);
    } finally {
      held?.restore();
      await primary.close();
    }
  });

  it('a server without a pack handler answers not-packable', async () => {
    const dir = await tempDir();
    const storage = await FileStorage.open(join(dir, 'Data.fs'), { create: true, fsync: false });
    const server = await ReplicationServer.start({ storage, address: parseAddress('127.0.0.1:0'), transport: socketTransport, clock: systemClock, log: () => undefined });
    try {
      const err = await refusal(requestPack(server.address, 1_764_460_800));
      expect({ code: err.code, message: err.message }).toEqual({ code: 'not-packable', message: expect.stringContaining('this node does not accept pack requests') });
    } finally {
      await server.close();
      await storage.close();
    }
  });
});
