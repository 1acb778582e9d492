// Catch-up in raw batches (native `txns` messages): runs of plain
// transactions travel as the primary's file bytes and the secondary rewrites
// their positions for its own file; transactions with backpointers (undo)
// travel record by record; the primary reads them into windows it reuses
// once its socket took what was sent from them; and the stream checksum's
// rule is the one the peers agreed on. Over real loopback sockets.

import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { firstValueFrom, filter, take, toArray, timeout } from 'rxjs';
import { afterAll, describe, expect, it } from 'vitest';
import { Primary } from '../../src/replication/primary.js';
import { MIN_STREAM_MAX_FRAME_BYTES, Secondary } from '../../src/replication/secondary.js';
import { WHOLE_TXN_MAX_BYTES } from '../../src/replication/protocols.js';
import { createNativePackr, createNativeUnpackr, decodeNative, encodeNative, nativeProtocolName, RECORD_BLOCK_BYTES, type PrimaryMessage } from '../../src/wire/native.js';
import { cleanupTempDirs, copyZodbFixture, tempDir } from '../helpers/fixtures.js';
import { allTransactions, commitMany, expectSameHistory, waitForTid, Z64 } from './helpers.js';
import { FAST_RECONNECT, FakeServer, FramedSocket, LogCollector, WAIT_MS } from './netHelpers.js';
import { CHAIN_ORIGIN, chainLink, contentAt, linkOfStored, linksOfRun } from '../../src/failover/hashChain.js';
import { StreamChecksum, type ChecksumRule } from '../../src/wire/checksum.js';
import { nativeOutbound } from '../../src/replication/protocols.js';
import { ReplicationServer } from '../../src/replication/server.js';
import { parseAddress } from '../../src/replication/address.js';
import { socketTransport } from '../../src/node/socketTransport.js';
import { systemClock } from '../../src/node/clock.js';
import { silentLogger } from '../../src/replication/log.js';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { WindowRecycler } from '../../src/storage/fileio.js';

afterAll(cleanupTempDirs);

/** `before` plain transactions, an undo of the last (it travels record by record), then `after` plain ones. */
async function historyWithUndo(fs: FileStorage, before: number, after: number): Promise<{ undo: Buffer; last: Buffer }> {
  await commitMany(fs, before);
  const undo = await undoLast(fs);
  return { undo, last: (await commitMany(fs, after)).at(-1)! };
}

async function undoLast(fs: FileStorage): Promise<Buffer> {
  const [entry] = await fs.undoLog(0, 1);
  const txn = { description: 'undo' };
  await fs.tpcBegin(txn);
  await fs.undo(entry!.id, txn);
  await fs.tpcVote(txn);
  return fs.tpcFinish(txn);
}

/**
 * Every message a hand-driven native peer receives until the commit closing
 * `lastTid`; with `then`, that is run once `lastTid` arrived, and the
 * messages are collected on until the commit closing what `then` returns.
 */
async function messagesUntil(primary: Pick<Primary, 'address'>, rawTxns: boolean, lastTid: Buffer, then?: () => Promise<Buffer>, asks: PeerAsks = {}): Promise<PrimaryMessage[]> {
  return (await framesUntil(primary, rawTxns, lastTid, then, asks)).map((f) => f.message);
}

/** Options the hand-driven peer asks for besides rawTxns (none by default). */
interface PeerAsks {
  txnLinks?: boolean;
  segmentedChecksum?: boolean;
  largeRecords?: boolean;
}

/** messagesUntil, each message with its frame payload. */
async function framesUntil(
  primary: Pick<Primary, 'address'>,
  rawTxns: boolean,
  lastTid: Buffer,
  then?: () => Promise<Buffer>,
  asks: PeerAsks = {},
): Promise<Array<{ message: PrimaryMessage; payload: Buffer }>> {
  const peer = await FramedSocket.connect(primary.address);
  try {
    peer.send(nativeProtocolName());
    const options = { blobs: false, ...(rawTxns ? { rawTxns: true } : {}), ...asks };
    peer.send(encodeNative({ type: 'hello', startTid: Z64, generations: [], options }, createNativePackr()));
    const unpackr = createNativeUnpackr();
    const out: Array<{ message: PrimaryMessage; payload: Buffer }> = [];
    let open: Buffer | null = null;
    let decoded = 0;
    const until = (tid: Buffer): Promise<unknown> =>
      firstValueFrom(
        peer.frames$.pipe(
          filter((f, i) => {
            if (i < decoded) return false; // seen while waiting for an earlier tid
            decoded = i + 1;
            const m = decodeNative(f, unpackr, 'primary');
            out.push({ message: m, payload: f });
            if (m.type === 'txn') open = m.tid;
            if (m.type === 'txns') open = m.lastTid;
            return m.type === 'commit' && open !== null && open.equals(tid);
          }),
          timeout(WAIT_MS),
        ),
      );
    await until(lastTid);
    if (then) await until(await then());
    return out;
  } finally {
    peer.destroy();
  }
}

/** `n` transactions, each storing one new object with `data(i)`. */
async function commitNewObjects(fs: FileStorage, n: number, data: (i: number) => Buffer): Promise<void> {
  for (let i = 0; i < n; i++) {
    const txn = { description: `t${i}` };
    await fs.tpcBegin(txn);
    fs.store(fs.newOid(), Z64, data(i), txn);
    await fs.tpcVote(txn);
    await fs.tpcFinish(txn);
  }
}

/** One transaction storing each of `records` as a new object; its tid. */
async function commitRecords(fs: FileStorage, records: Buffer[]): Promise<Buffer> {
  const txn = { description: 'big' };
  await fs.tpcBegin(txn);
  for (const data of records) fs.store(fs.newOid(), Z64, data, txn);
  await fs.tpcVote(txn);
  return fs.tpcFinish(txn);
}

/** Run `body` with a primary (no fsync, no audit log) serving `dir`/p.fs, closed afterwards. */
async function withPrimary(dir: string, body: (primary: Primary) => Promise<void>): Promise<void> {
  const primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, auditPath: null });
  try {
    await body(primary);
  } finally {
    await primary.close();
  }
}

describe('raw transaction batches', () => {
  it('carry runs of plain transactions; an undo travels record by record; only peers that ask get them', async () => {
    const dir = await tempDir();
    await withPrimary(dir, async (primary) => {
      const fs = primary.storage;
      const { undo, last } = await historyWithUndo(fs, 40, 5);

      const raw = await messagesUntil(primary, true, last);
      const kinds = raw.filter((m) => m.type === 'txn' || m.type === 'txns').map((m) => (m.type === 'txns' ? `txns:${m.count}` : `txn:${m.tid.equals(undo) ? 'undo' : 'plain'}`));
      expect(kinds).toEqual(['txns:40', 'txn:undo', 'txns:5']);
      expect(raw.find((m) => m.type === 'welcome')).toMatchObject({ options: { rawTxns: true } });

      const plain = await messagesUntil(primary, false, last);
      expect(plain.filter((m) => m.type === 'txns')).toEqual([]);
      expect(plain.filter((m) => m.type === 'txn')).toHaveLength(46);

      const secondary = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: primary.address, fsync: true, reconnect: FAST_RECONNECT, auditPath: null });
      await waitForTid(secondary, last);
      await expectSameHistory(fs, secondary.storage);
      await secondary.close();
    });
    expect(readFileSync(join(dir, 's.fs')).equals(readFileSync(join(dir, 'p.fs')))).toBe(true);
  });

  it('send live commits made in one burst as one run', async () => {
    const dir = await tempDir();
    await withPrimary(dir, async (primary) => {
      const first = (await commitMany(primary.storage, 2)).at(-1)!;
      let burst: Buffer[] = [];
      const messages = await messagesUntil(primary, true, first, async () => {
        burst = await commitMany(primary.storage, 5); // no turn of the event loop between them
        return burst.at(-1)!;
      });
      const runs = messages.filter((m) => m.type === 'txns' || m.type === 'txn').map((m) => (m.type === 'txns' ? `txns:${m.count}` : 'txn'));
      expect(runs).toEqual(['txns:2', 'txns:5']);
    });
  });

  it('over a history of several read windows: each run is whole consecutive transactions of at most 1 MiB, together all of them in order', async () => {
    const dir = await tempDir();
    await withPrimary(dir, async (primary) => {
      const fs = primary.storage;
      const payload = Buffer.alloc(9000, 3);
      await commitNewObjects(fs, 400, () => payload);
      const txns = await allTransactions(fs);
      const last = txns.at(-1)!.tid;
      const runs = (await messagesUntil(primary, true, last)).filter((m) => m.type === 'txns');
      expect(runs.length).toBeGreaterThanOrEqual(4); // about 3.6 MB in 1 MiB windows
      let next = 0;
      for (const run of runs) {
        expect(run.bytes.length).toBeLessThanOrEqual(1024 * 1024);
        // The run's bytes are exactly the next `count` transactions as the primary's file holds them.
        const expected = Buffer.concat(txns.slice(next, next + run.count).map((t) => t.raw!));
        expect(run.bytes.equals(expected)).toBe(true);
        expect(run.lastTid.equals(txns[next + run.count - 1]!.tid)).toBe(true);
        next += run.count;
      }
      expect(next).toBe(txns.length);
    });
  });

  it('go out of read windows the primary reuses once its socket took them, and a secondary catching up many windows replicates the same', async () => {
    const dir = await tempDir();
    // Every window the primary's catch-up reads into, by its memory.
    const windows: ArrayBufferLike[] = [];
    const take = WindowRecycler.prototype.take;
    WindowRecycler.prototype.take = function (this: WindowRecycler, size: number): Buffer {
      const b = take.call(this, size);
      windows.push(b.buffer);
      return b;
    };
    try {
      await withPrimary(dir, async (primary) => {
        const fs = primary.storage;
        const payload = Buffer.alloc(9000, 5);
        await commitNewObjects(fs, 1000, (i) => Buffer.concat([Buffer.from(String(i)), payload]));
        const secondary = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: primary.address, fsync: false, auditPath: null, reconnect: FAST_RECONNECT });
        try {
          await waitForTid(secondary, fs.lastTransaction());
          await expectSameHistory(fs, secondary.storage);
        } finally {
          await secondary.close();
        }
      });
    } finally {
      WindowRecycler.prototype.take = take;
    }
    expect(windows.length).toBeGreaterThan(5); // about 9 MB in 1 MiB windows
    expect(new Set(windows).size).toBeLessThan(windows.length); // some window was read into again
  });

  it('land at the secondary’s own positions when its file differs from the primary’s (the primary packed)', async () => {
    const dir = await tempDir();
    await withPrimary(dir, async (primary) => {
      const fs = primary.storage;
      const serials = new Map<string, Buffer>();
      const first = await commitMany(fs, 30, 3, serials);
      let secondary = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: primary.address, fsync: false, reconnect: FAST_RECONNECT, auditPath: null });
      await waitForTid(secondary, first.at(-1)!);
      await secondary.close();

      const before = fs.getSize();
      await fs.pack(Date.now() / 1000 + 1);
      // The pack dropped old revisions, so every later transaction sits at a
      // different position in each file, and updates objects the pack moved.
      expect(fs.getSize()).toBeLessThan(before);
      const later = await commitMany(fs, 30, 3, serials);

      secondary = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: primary.address, fsync: false, reconnect: FAST_RECONNECT, auditPath: null });
      const appliedCount = firstValueFrom(secondary.applied$.pipe(take(30), toArray(), timeout(WAIT_MS)));
      await waitForTid(secondary, later.at(-1)!);
      expect((await appliedCount).map((c) => c.tid.toString('hex'))).toEqual(later.map((t) => t.toString('hex')));
      for (const key of serials.keys()) {
        const oid = Buffer.from(key, 'hex');
        const [p, s] = [await fs.load(oid), await secondary.storage.load(oid)];
        expect(s.tid.equals(p.tid) && s.data.equals(p.data)).toBe(true);
        // The secondary's prev chain reaches back through its unpacked history.
        const [ph, sh] = [await fs.history(oid, 100), await secondary.storage.history(oid, 100)];
        expect(sh.length).toBeGreaterThanOrEqual(ph.length);
        expect(sh.slice(0, ph.length).map((h) => h.tid.toString('hex'))).toEqual(ph.map((h) => h.tid.toString('hex')));
      }
      const tail = (ts: Awaited<ReturnType<typeof allTransactions>>) =>
        ts.filter((t) => Buffer.compare(t.tid, first.at(-1)!) > 0).map((t) => [t.tid.toString('hex'), t.records.map((r) => [r.oid.toString('hex'), r.data?.toString('hex')])]);
      expect(tail(await allTransactions(secondary.storage))).toEqual(tail(await allTransactions(fs)));
      await secondary.close();
    });
  });
});

describe('transactions larger than WHOLE_TXN_MAX_BYTES', () => {
  it('travel record by record (no frame holds more than one record), and replicate', async () => {
    const dir = await tempDir();
    await withPrimary(dir, async (primary) => {
      const fs = primary.storage;
      await commitMany(fs, 3);
      const record = Buffer.alloc(WHOLE_TXN_MAX_BYTES / 2 + 1, 7);
      const bigTid = await commitRecords(fs, [record, record, record]);
      const last = (await commitMany(fs, 2)).at(-1)!;

      const messages = await messagesUntil(primary, true, last);
      const kinds = messages.map((m) => (m.type === 'txns' ? `txns:${m.count}` : m.type === 'txn' ? (m.records ? 'txn-inline' : 'txn') : m.type));
      expect(kinds.filter((k) => k !== 'commit' && k !== 'welcome')).toEqual(['txns:3', 'txn', 'record', 'record', 'record', 'txns:2']);
      expect(messages.find((m) => m.type === 'txn' && !m.records)).toMatchObject({ tid: bigTid });

      const secondary = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: primary.address, fsync: false, reconnect: FAST_RECONNECT, auditPath: null });
      await waitForTid(secondary, last);
      await expectSameHistory(fs, secondary.storage);
      await secondary.close();
    });
  });
});

describe('records larger than WHOLE_TXN_MAX_BYTES', () => {
  it('travel in blocks to a secondary that asks, so a record larger than its frame limit replicates', async () => {
    const dir = await tempDir();
    await withPrimary(dir, async (primary) => {
      const fs = primary.storage;
      await commitMany(fs, 2);
      const record = Buffer.alloc(MIN_STREAM_MAX_FRAME_BYTES + 1);
      for (let i = 0; i < record.length; i += 4096) record[i] = (i >> 12) & 0xff;
      const bigTid = await commitRecords(fs, [record, Buffer.from('small')]);
      const last = (await commitMany(fs, 2)).at(-1)!;

      const kinds = (messages: PrimaryMessage[]) => messages.map((m) => m.type).filter((t) => t === 'record' || t === 'large-record' || t === 'record-block');
      const asked = await messagesUntil(primary, true, last, undefined, { largeRecords: true });
      expect(asked.find((m) => m.type === 'welcome')).toMatchObject({ options: { largeRecords: true } });
      const blocks = Math.ceil(record.length / RECORD_BLOCK_BYTES);
      expect(kinds(asked)).toEqual(['large-record', ...Array<string>(blocks).fill('record-block'), 'record']);
      expect(asked.find((m) => m.type === 'large-record')).toMatchObject({ size: record.length, dataTxn: null });
      // A peer that does not ask gets the record whole, and no largeRecords in its welcome.
      const plain = await messagesUntil(primary, true, last);
      expect(kinds(plain)).toEqual(['record', 'record']);
      expect((plain.find((m) => m.type === 'welcome') as { options: object }).options).not.toHaveProperty('largeRecords');

      const secondary = await Secondary.open({
        path: join(dir, 's.fs'),
        replicateFrom: primary.address,
        fsync: false,
        reconnect: FAST_RECONNECT,
        auditPath: null,
        maxFrameBytes: MIN_STREAM_MAX_FRAME_BYTES,
      });
      try {
        await waitForTid(secondary, last);
        await expectSameHistory(fs, secondary.storage);
        const copied = (await allTransactions(secondary.storage)).find((t) => t.tid.equals(bigTid))!;
        expect(copied.records[0]!.data!.equals(record)).toBe(true);
      } finally {
        await secondary.close();
      }
    });
  });
});

describe('raw batches from files Python ZODB wrote', () => {
  // Every intact fixture served by a primary: undo backpointers, packed
  // transactions, blobs, FS21 records and large records take whichever path
  // fits, and a fresh secondary ends with the same history (and, for the
  // FS30 files, the same bytes).
  for (const name of ['basic', 'undo', 'packed', 'fs21-legacy', 'large', 'blobs']) {
    it(name, async () => {
      const src = await copyZodbFixture(name);
      const blobDir = name === 'blobs' ? join(src, 'blobs') : undefined;
      const primary = await Primary.open({ path: join(src, 'Data.fs'), blobDir, replicateTo: '127.0.0.1:0', fsync: false, auditPath: null });
      const dir = await tempDir();
      const secondary = await Secondary.open({
        path: join(dir, 'Data.fs'),
        blobDir: blobDir ? join(dir, 'blobs') : undefined,
        replicateFrom: primary.address,
        fsync: false,
        reconnect: FAST_RECONNECT,
        auditPath: null,
      });
      try {
        await waitForTid(secondary, primary.storage.lastTransaction());
        await expectSameHistory(primary.storage, secondary.storage);
      } finally {
        await secondary.close();
        await primary.close();
      }
      if (name !== 'fs21-legacy') {
        expect(readFileSync(join(dir, 'Data.fs')).equals(readFileSync(join(src, 'Data.fs')))).toBe(true);
      }
    });
  }
});

describe('runs checked by their hash-chain links (txnLinks)', () => {
  it('are granted on request; each run names the link before it, and the checksum covers the links in place of the bytes', async () => {
    const dir = await tempDir();
    await withPrimary(dir, async (primary) => {
      const fs = primary.storage;
      const { last } = await historyWithUndo(fs, 30, 4); // the second run follows the undo’s link
      const frames = await framesUntil(primary, true, last, undefined, { txnLinks: true });
      expect(frames.find((f) => f.message.type === 'welcome')!.message).toMatchObject({ options: { rawTxns: true, txnLinks: true } });

      // Every link, computed here from the file.
      const expected = new Map<string, Buffer>();
      let prev = CHAIN_ORIGIN;
      for (const t of await allTransactions(fs)) {
        prev = linkOfStored(prev, t.raw!) ?? chainLink(prev, contentAt(fs, t.pos, t.raw!));
        expected.set(t.tid.toString('hex'), prev);
      }
      const linkAt = (tid: Buffer): Buffer | undefined => expected.get(tid.toString('hex'));
      // The rule, rebuilt from its description in docs/PROTOCOL.md.
      const checksum = new StreamChecksum(Z64);
      let runs = 0;
      for (const { message: m, payload } of frames) {
        if (m.type === 'welcome') continue;
        if (m.type === 'commit') checksum.verify(m.checksum);
        if (m.type !== 'txns') {
          checksum.update(payload);
          continue;
        }
        runs += 1;
        const links = linksOfRun(m.prevLink!, m.bytes)!;
        // prevLink is the primary's link before the run, and each link the primary's at that tid.
        const firstTid = links.tid(0);
        const before = (await allTransactions(fs)).filter((t) => Buffer.compare(t.tid, firstTid) < 0).at(-1);
        expect(m.prevLink!.equals(before ? linkAt(before.tid)! : CHAIN_ORIGIN)).toBe(true);
        for (const l of links.entries()) expect(l.link.equals(linkAt(l.tid)!)).toBe(true);
        const at = m.bytes.byteOffset - payload.byteOffset;
        checksum.update(payload.subarray(0, at));
        checksum.update(payload.subarray(at + m.bytes.length));
        checksum.update(links.links);
      }
      expect(runs).toBe(2);

      // A peer that did not ask gets the byte-checked runs.
      const plain = await messagesUntil(primary, true, last);
      expect(plain.find((m) => m.type === 'welcome')!.options.txnLinks).toBeUndefined();
      expect(plain.filter((m) => m.type === 'txns').every((m) => m.type === 'txns' && m.prevLink === undefined)).toBe(true);
    });
  });

  it('stop a transaction whose stored bytes changed under the primary’s chain: the secondary commits nothing of its run', async () => {
    const dir = await tempDir();
    const path = join(dir, 'p.fs');
    let tids: Buffer[] = [];
    await withPrimary(dir, async (primary) => {
      await commitMany(primary.storage, 5);
      await commitMany(primary.storage, 1); // its own run below
      tids = (await allTransactions(primary.storage)).map((t) => t.tid);
    });
    // One byte of record data in the last transaction changes on disk (bit rot, a stray write):
    // the file stays well-formed, but no longer says what the chain recorded.
    const bytes = readFileSync(path);
    const at = bytes.lastIndexOf(Buffer.from('value 0.0'));
    expect(at).toBeGreaterThan(bytes.length / 2);
    bytes[at + 6] = bytes[at + 6]! ^ 0x01;
    writeFileSync(path, bytes);

    const logs = new LogCollector();
    await withPrimary(dir, async (primary) => {
      const secondary = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: primary.address, fsync: false, reconnect: FAST_RECONNECT, auditPath: null, log: logs.log });
      try {
        await logs.waitFor((e) => e.message.includes('checksum mismatch'));
        // Nothing of the run with the changed transaction was written.
        expect(Buffer.compare(secondary.storage.lastTransaction(), tids.at(-1)!)).toBeLessThan(0);
      } finally {
        await secondary.close();
      }
    });
  });

  it('are not granted by a server without a hash chain: the secondary then checks the runs by their bytes, and replicates the same', async () => {
    const dir = await tempDir();
    const storage = await FileStorage.open(join(dir, 'p.fs'), { create: true, fsync: false });
    const server = await ReplicationServer.start({ storage, address: parseAddress('127.0.0.1:0'), transport: socketTransport, clock: systemClock, log: silentLogger });
    try {
      const last = (await commitMany(storage, 12)).at(-1)!;
      const welcome = (await messagesUntil(server, true, last, undefined, { txnLinks: true })).find((m) => m.type === 'welcome');
      expect(welcome).toMatchObject({ options: { rawTxns: true } });
      expect(welcome!.type === 'welcome' && welcome!.options.txnLinks).toBeFalsy();
      const secondary = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: server.address, fsync: false, reconnect: FAST_RECONNECT, auditPath: null });
      await waitForTid(secondary, last);
      await expectSameHistory(storage, secondary.storage);
      await secondary.close();
    } finally {
      await server.close();
      await storage.close();
    }
    expect(readFileSync(join(dir, 's.fs')).equals(readFileSync(join(dir, 'p.fs')))).toBe(true);
  });
});

describe('the stream checksum’s rule', () => {
  it('is the segmented one for a peer that asks for it, and the running one for a peer that does not', async () => {
    const dir = await tempDir();
    await withPrimary(dir, async (primary) => {
      const fs = primary.storage;
      const { last } = await historyWithUndo(fs, 10, 3);
      for (const rule of ['segmented', 'running'] as ChecksumRule[]) {
        const frames = await framesUntil(primary, true, last, undefined, rule === 'segmented' ? { segmentedChecksum: true } : {});
        const welcome = frames.find((f) => f.message.type === 'welcome')!.message;
        expect(welcome.type === 'welcome' && welcome.options.segmentedChecksum).toBe(rule === 'segmented' ? true : undefined);
        const checksum = new StreamChecksum(Z64, 'sha256', rule);
        let commits = 0;
        for (const { message, payload } of frames) {
          if (message.type === 'welcome') continue;
          if (message.type === 'commit') {
            checksum.verify(message.checksum);
            commits += 1;
          }
          checksum.update(payload);
        }
        expect(commits).toBe(3); // a run, the undo, a run
      }
    });
  });

  it.each([true, false])('a Secondary asks for the segmented one, and replicates whether the primary grants it (%s) or, from before the option, does not', async (grant) => {
    const dir = await tempDir();
    const source = await FileStorage.open(join(dir, 'source.fs'), { create: true, fsync: false });
    const asked: Array<boolean | undefined> = [];
    const fake = await FakeServer.start((c) => {
      void (async () => {
        await c.frame(0); // the protocol name
        const hello = decodeNative(await c.frame(1), createNativeUnpackr(), 'secondary');
        if (hello.type !== 'hello') throw new Error(`expected hello, got ${hello.type}`);
        asked.push(hello.options.segmentedChecksum);
        const codec = nativeOutbound(source, hello.startTid, { blobs: false, rawTxns: true, segmentedChecksum: grant });
        c.sendRaw(codec.welcome(source.lastTransaction())!);
        const txns = (await allTransactions(source)).filter((t) => Buffer.compare(t.tid, hello.startTid) > 0);
        for (const f of codec.rawFrames(txns.slice(0, 4))) c.sendRaw(f);
        for (const t of txns.slice(4)) for (const f of codec.plainFrames(t)!) c.sendRaw(f);
      })();
    });
    try {
      const last = (await commitMany(source, 7)).at(-1)!;
      const secondary = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: fake.address, fsync: false, reconnect: FAST_RECONNECT, auditPath: null });
      try {
        await waitForTid(secondary, last);
        await expectSameHistory(source, secondary.storage);
      } finally {
        await secondary.close();
      }
      expect(asked).toEqual([true]);
    } finally {
      await fake.close();
      await source.close();
    }
  });
});
