// Bad input to a secondary from a fake primary (a plain net server sending
// crafted frames built from a real storage with the real outbound codecs):
// the secondary drops the connection, keeps nothing of the broken
// transaction (same last tid, same bytes on disk) and reconnects after its
// delay, asking for what follows its last complete transaction.

import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Packr } from 'msgpackr';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { nativeOutbound, zrs2Outbound, ZRS21_SPEC, type OutboundCodec } from '../../src/replication/protocols.js';
import { MIN_STREAM_MAX_FRAME_BYTES, Secondary, type SecondaryProtocol } from '../../src/replication/secondary.js';
import { ZrsError } from '../../src/errors.js';
import { FileStorage } from '../../src/storage/FileStorage.js';
import type { TransactionRecord } from '../../src/storage/types.js';
import { encodeFrame } from '../../src/wire/framing.js';
import { createNativeUnpackr, decodeNative } from '../../src/wire/native.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { allTransactions, commitMany, expectSameHistory, waitForTid } from './helpers.js';
import { FAST_RECONNECT, FakeServer, type FramedSocket, LogCollector } from './netHelpers.js';

afterAll(cleanupTempDirs);

let dir: string;
let source: FileStorage;
let txns: TransactionRecord[];
let fake: FakeServer | null = null;
let secondary: Secondary | null = null;

beforeEach(async () => {
  dir = await tempDir();
  source = await FileStorage.open(join(dir, 'source.fs'), { create: true, fsync: false });
  await commitMany(source, 2, 4);
  txns = await allTransactions(source);
});

afterEach(async () => {
  await secondary?.close();
  secondary = null;
  await fake?.close();
  fake = null;
  await source.close();
});

/** The start tid a connection's handshake carried. */
async function handshake(c: FramedSocket, protocol: SecondaryProtocol): Promise<Buffer> {
  const second = await c.frame(1);
  if (protocol !== 'native') return second;
  const hello = decodeNative(second, createNativeUnpackr(), 'secondary');
  if (hello.type !== 'hello') throw new Error(`expected hello, got ${hello.type}`);
  return hello.startTid;
}

function codecFor(protocol: SecondaryProtocol, startTid: Buffer): OutboundCodec {
  return protocol === 'native' ? nativeOutbound(source, startTid, { blobs: false }) : zrs2Outbound(source, startTid, ZRS21_SPEC);
}

/** Frames of every transaction after `startTid` with their welcome, from a fresh codec. */
function stream(protocol: SecondaryProtocol, startTid: Buffer): { welcome: Buffer | null; frames: Buffer[][] } {
  const codec = codecFor(protocol, startTid);
  const welcome = codec.welcome(source.lastTransaction());
  const frames = txns.filter((t) => Buffer.compare(t.tid, startTid) > 0).map((t) => codec.plainFrames(t)!);
  return { welcome, frames };
}

type Corrupt = (txn2: Buffer[], protocol: SecondaryProtocol) => Buffer[];

const packr = new Packr({ useRecords: false });

/** Flip one byte inside the first record's data of the transaction. */
const flipRecordByte: Corrupt = (frames) => {
  const data = txns[1]!.records[0]!.data!;
  const out = frames.map((f) => Buffer.from(f));
  for (const f of out) {
    const at = f.indexOf(data, 4);
    if (at >= 0) {
      f[at + 3] = f[at + 3]! ^ 0x01;
      return out;
    }
  }
  throw new Error('record data not found in the frames');
};
/** Every frame of the transaction but its commit, then a frame no decoder accepts where a message is due. */
const garbage: Corrupt = (frames) => [...frames.slice(0, -1), encodeFrame(Buffer.from([0xc1, 0xff, 0x00, 0x13]))];
/** The transaction header, then a well-formed message of an unknown type. */
const unknownMessage: Corrupt = (frames) => [frames[0]!, encodeFrame(packr.pack({ type: 'bogus', tid: txns[1]!.tid }))];

const cases: Array<[string, SecondaryProtocol, Corrupt, RegExp]> = [
  ['a checksum mismatch', 'native', flipRecordByte, /checksum/i],
  ['a checksum mismatch', 'zrs2.1', flipRecordByte, /checksum/i],
  ['a garbage frame', 'native', garbage, /./],
  ['a garbage frame', 'zrs2.1', garbage, /./],
  ['an unknown message', 'native', unknownMessage, /unknown message type "bogus"/],
];

describe('a secondary given bad input by its primary', () => {
  it.each(cases)('drops the connection on %s (%s), commits nothing of it, reconnects', async (_what, protocol, corrupt, reason) => {
    const logs = new LogCollector();
    fake = await FakeServer.start((c, index) => {
      void (async () => {
        const start = await handshake(c, protocol);
        const { welcome, frames } = stream(protocol, start);
        if (welcome) c.sendRaw(welcome);
        if (index > 0) {
          for (const t of frames) for (const f of t) c.sendRaw(f);
          return;
        }
        for (const f of frames[0]!) c.sendRaw(f);
        for (const f of corrupt(frames[1]!, protocol)) c.sendRaw(f);
      })();
    });
    const path = join(dir, 'secondary.fs');
    secondary = await Secondary.open({ path, replicateFrom: fake.address, protocol, fsync: false, reconnect: FAST_RECONNECT, log: logs.log });

    const second = await fake.connection(1);
    await fake.connections[0]!.waitClosed();
    // The retry asks for what follows the last complete transaction.
    expect((await handshake(second, protocol)).toString('hex')).toBe(txns[0]!.tid.toString('hex'));
    const warning = await logs.waitFor((e) => e.level === 'warn' && e.message.startsWith('replication from'));
    expect(warning.message).toMatch(reason);

    // The second connection sends the transaction intact: the secondary converges.
    await waitForTid(secondary, txns[1]!.tid);
    await expectSameHistory(source, secondary.storage);
    await secondary.close();
    secondary = null;
    expect(readFileSync(path).equals(readFileSync(join(dir, 'source.fs')))).toBe(true);
  });

  it.each(cases)('keeps its file at the last complete transaction after %s (%s)', async (_what, protocol, corrupt) => {
    fake = await FakeServer.start((c, index) => {
      if (index > 0) return; // later connections get nothing: the state stays as the failure left it
      void (async () => {
        const start = await handshake(c, protocol);
        const { welcome, frames } = stream(protocol, start);
        if (welcome) c.sendRaw(welcome);
        for (const f of frames[0]!) c.sendRaw(f);
        for (const f of corrupt(frames[1]!, protocol)) c.sendRaw(f);
      })();
    });
    const path = join(dir, 'secondary.fs');
    secondary = await Secondary.open({ path, replicateFrom: fake.address, protocol, fsync: false, reconnect: FAST_RECONNECT });
    const second = await fake.connection(1);
    expect((await handshake(second, protocol)).equals(txns[0]!.tid)).toBe(true);
    expect(secondary.storage.lastTransaction().equals(txns[0]!.tid)).toBe(true);
    expect(secondary.storage.getSize()).toBe(txns[1]!.pos);
    await secondary.close();
    secondary = null;
    const prefix = readFileSync(join(dir, 'source.fs')).subarray(0, txns[1]!.pos);
    expect(readFileSync(path).equals(prefix)).toBe(true);
    const reopened = await FileStorage.open(path, { fsync: false });
    expect(reopened.lastTransaction().equals(txns[0]!.tid)).toBe(true);
    await reopened.close();
  });
});

describe('a native secondary pointed at a primary that closes without answering (as zc.zrs does)', () => {
  it('warns that it may be zc.zrs, naming the protocol to use, and keeps retrying', async () => {
    const logs = new LogCollector();
    // zc.zrs reads the name, finds it unknown, logs "Invalid protocol" and closes.
    fake = await FakeServer.start((c) => void c.frame(0).then(() => c.destroy(), () => undefined));
    secondary = await Secondary.open({ path: join(dir, 'secondary.fs'), replicateFrom: fake.address, fsync: false, reconnect: FAST_RECONNECT, log: logs.log });
    await fake.connection(1);
    const warning = await logs.waitFor((e) => e.level === 'warn' && e.message.startsWith('replication from'));
    expect(warning.message).toMatch(/closed the connection without answering the handshake \(a zc\.zrs primary does this; for one, use protocol zrs2\.1 or zrs2\.0\)$/);
  });
});

describe('a secondary whose primary resets the connection on its handshake', () => {
  it('explains the reset as a close without an answer, naming the socket error, rather than a bare "read ECONNRESET"', async () => {
    const logs = new LogCollector();
    // A reset, not a FIN, once the handshake's first bytes are in: the secondary sees a socket error.
    fake = await FakeServer.start((c) => {
      c.onChunk = () => c.socket.resetAndDestroy();
    });
    secondary = await Secondary.open({ path: join(dir, 'secondary.fs'), replicateFrom: fake.address, fsync: false, reconnect: FAST_RECONNECT, log: logs.log });
    await fake.connection(1);
    const warning = await logs.waitFor((e) => e.level === 'warn' && e.message.startsWith('replication from'));
    expect(warning.message).toMatch(/: the primary closed the connection \((read|write) (ECONNRESET|EPIPE)\) without answering the handshake \(a zc\.zrs primary does this; /);
    expect(secondary.storage.lastTransaction().equals(Buffer.alloc(8))).toBe(true);
  });
});

describe('a zrs2 secondary whose primary closes without sending anything (zc.zrs refusing a handshake)', () => {
  it('warns why a zc.zrs primary does that, and keeps retrying', async () => {
    const logs = new LogCollector();
    // zc.zrs reads the name and the start tid, refuses them (e.g. zrs2.0 with blobs) and closes.
    fake = await FakeServer.start((c) => void c.frame(1).then(() => c.destroy(), () => undefined));
    secondary = await Secondary.open({ path: join(dir, 'secondary.fs'), replicateFrom: fake.address, protocol: 'zrs2.0', fsync: false, reconnect: FAST_RECONNECT, log: logs.log });
    await fake.connection(1);
    const warning = await logs.waitFor((e) => e.level === 'warn' && e.message.startsWith('replication from'));
    expect(warning.message).toMatch(/closed the connection without sending anything; if this happens at every connect, a zc\.zrs primary may be refusing the handshake \(.*zrs2\.0 asked of a primary with blobs, which needs zrs2\.1\)/);
  });
});


describe('a frame limit too small for what a primary sends whole', () => {
  it('is refused at open, before the storage is created (it would fail on the same frame at every attempt)', async () => {
    const dir = await tempDir();
    for (const maxFrameBytes of [1024 * 1024, MIN_STREAM_MAX_FRAME_BYTES - 1, 2 ** 32, 1.5e7 + 0.5]) {
      await expect(Secondary.open({ path: join(dir, 's.fs'), replicateFrom: '127.0.0.1:1', maxFrameBytes, auditPath: null })).rejects.toThrow(
        `maxFrameBytes must be a whole number of bytes from ${MIN_STREAM_MAX_FRAME_BYTES} to 4294967295, not ${maxFrameBytes}`,
      );
    }
    expect(existsSync(join(dir, 's.fs'))).toBe(false);
    const s = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: '127.0.0.1:1', maxFrameBytes: MIN_STREAM_MAX_FRAME_BYTES, auditPath: null, reconnect: FAST_RECONNECT });
    await s.close();
  });
});

describe('connection settings the secondary could not run with', () => {
  it.each([
    ['a reconnect ceiling under the default first delay', { reconnect: { maxMs: 50 } }, /invalid reconnect settings .*"initialMs":100,"maxMs":50/],
    ['a reconnect factor under 1', { reconnect: { factor: 0.5 } }, /invalid reconnect settings/],
    ['jitter over 1', { reconnect: { jitter: 2 } }, /invalid reconnect settings/],
    ['a keep-alive delay of 0', { keepAliveDelayMs: 0 }, /keepAliveDelayMs must be > 0, got 0/],
    ['a frame stall timeout of 0', { frameStallTimeoutMs: 0 }, /frameStallTimeoutMs must be > 0, not 0/],
    ['a negative heartbeat timeout', { heartbeatTimeoutMs: -1 }, /heartbeatTimeoutMs must be >= 0/],
    ['a protocol there is none of (from JavaScript)', { protocol: 'zrs9' as never }, /protocol must be one of native, zrs2.0, zrs2.1, not "zrs9"/],
  ])('are refused at open, before the storage is created: %s', async (_name, extra, message) => {
    const dir = await tempDir();
    const opening = Secondary.open({ path: join(dir, 's.fs'), replicateFrom: '127.0.0.1:1', auditPath: null, ...extra });
    await expect(opening).rejects.toBeInstanceOf(ZrsError);
    await expect(opening).rejects.toThrow(message);
    expect(existsSync(join(dir, 's.fs'))).toBe(false);
  });
});
