// Bad input to a primary over real loopback sockets: each case closes only
// the offending connection with a logged reason, while a real secondary
// connected beside it keeps replicating. Keep-alives after the handshake are
// ignored. Native peers that are refused receive a `refuse` message.

import { join } from 'node:path';
import { Packr } from 'msgpackr';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ZrsError } from '../../src/errors.js';
import { seededRandom } from '../../src/ports/random.js';
import { Primary } from '../../src/replication/primary.js';
import { ReplicationServer } from '../../src/replication/server.js';
import { VirtualClock } from '../../src/sim/clock.js';
import { SimNetwork } from '../../src/sim/network.js';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { Secondary } from '../../src/replication/secondary.js';
import { tidPlusOne } from '../../src/storage/timestamp.js';
import { encodeFrame, FRAME_HEADER_BYTES } from '../../src/wire/framing.js';
import type { ByteStream, ByteStreamHandlers, Transport } from '../../src/ports/transport.js';
import { createNativePackr, createNativeUnpackr, decodeNative, encodeNative, nativeProtocolName, type PrimaryMessage } from '../../src/wire/native.js';
import { Zrs2StreamParser, type Zrs2Event } from '../../src/wire/zrs2.js';
import { cleanupTempDirs, tempDir } from '../helpers/fixtures.js';
import { allTransactions, commitMany, waitForTid } from './helpers.js';
import { FAST_RECONNECT, FramedSocket, LogCollector, sessionClosed, settleUntil, until, type LogEntry } from './netHelpers.js';

afterAll(cleanupTempDirs);

const NATIVE = nativeProtocolName();
const hello = (startTid: Buffer): Buffer =>
  encodeNative({ type: 'hello', startTid, generations: [], options: { blobs: false } }, createNativePackr());
/** A hello whose startTid has the wrong length (the codec refuses to encode one). */
const badHello = (startTid: Buffer): Buffer =>
  new Packr({ useRecords: false }).pack({ type: 'hello', startTid, generations: [], options: { blobs: false } });

let primary: Primary;
let good: Secondary;
let logs: LogCollector;
let raw: FramedSocket | null = null;

beforeEach(async () => {
  const dir = await tempDir();
  logs = new LogCollector();
  primary = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, log: logs.log });
  await commitMany(primary.storage, 3);
  good = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: primary.address, fsync: false, reconnect: FAST_RECONNECT });
  await waitForTid(good, primary.storage.lastTransaction());
});

afterEach(async () => {
  raw?.destroy();
  raw = null;
  await good.close();
  await primary.close();
});

/** The rejected connection is closed, its reason logged, and the good secondary still follows. */
async function expectOnlyThatConnectionClosed(reason: RegExp): Promise<LogEntry> {
  await raw!.waitClosed();
  const entry = await logs.waitFor((e) => sessionClosed(e) && reason.test(e.message));
  expect(['warn', 'error']).toContain(entry.level);
  const [tid] = await commitMany(primary.storage, 1);
  await waitForTid(good, tid!);
  expect(primary.secondaries()).toHaveLength(1);
  expect(logs.count((e) => sessionClosed(e))).toBe(1);
  return entry;
}

async function connect(): Promise<FramedSocket> {
  raw = await FramedSocket.connect(primary.address);
  return raw;
}

const decodeRefusal = (f: Buffer): PrimaryMessage => decodeNative(f, createNativeUnpackr(), 'primary');

describe('a primary given bad input closes only that connection', () => {
  it('unknown protocol name', async () => {
    (await connect()).send(Buffer.from('zrs9.9'));
    await expectOnlyThatConnectionClosed(/unsupported protocol "zrs9.9"/);
  });

  it('unknown native protocol version: refused with a refuse message', async () => {
    const c = await connect();
    c.send(Buffer.from('zrs-ts/99'));
    const msg = decodeRefusal(await c.frame(0));
    expect(msg).toMatchObject({ type: 'refuse', code: 'unsupported-version', supportedVersions: [1] });
    await expectOnlyThatConnectionClosed(/unsupported protocol/);
  });

  it('oversized first message (17 bytes)', async () => {
    (await connect()).send(Buffer.alloc(17, 0x61));
    await expectOnlyThatConnectionClosed(/protocol error: .*17/);
  });

  it('oversized message after a zrs2.0 handshake', async () => {
    const c = await connect();
    c.send(Buffer.from('zrs2.0'));
    c.send(primary.storage.lastTransaction());
    c.send(Buffer.alloc(9));
    await expectOnlyThatConnectionClosed(/protocol error: .*9/);
  });

  it('oversized message after a native handshake', async () => {
    const c = await connect();
    c.send(NATIVE);
    c.send(hello(primary.storage.lastTransaction()));
    expect(decodeRefusal(await c.frame(0)).type).toBe('welcome');
    // Only the header: the primary must refuse before reading the body.
    const header = Buffer.alloc(FRAME_HEADER_BYTES);
    header.writeUInt32BE(1024 * 1024);
    c.sendRaw(header);
    await expectOnlyThatConnectionClosed(/protocol error: .*1048576/);
  });

  it('an empty frame in place of the protocol name names no protocol, as zc.zrs takes it', async () => {
    const c = await connect();
    c.send(Buffer.alloc(0));
    c.send(Buffer.from('zrs2.0'));
    c.send(primary.storage.lastTransaction());
    await expectOnlyThatConnectionClosed(/unknown protocol|protocol ""/i);
  });

  it('an empty frame in place of the start tid is a start tid of 0 bytes', async () => {
    const c = await connect();
    c.send(Buffer.from('zrs2.0'));
    c.send(Buffer.alloc(0));
    c.send(primary.storage.lastTransaction());
    await expectOnlyThatConnectionClosed(/bad-tid|0 bytes/);
  });

  it('zrs2.0 start tid that is not 8 bytes', async () => {
    const c = await connect();
    c.send(Buffer.from('zrs2.0'));
    c.send(Buffer.alloc(7));
    await expectOnlyThatConnectionClosed(/bad-tid|7 bytes/);
  });

  it('native start tid that is not 8 bytes: refused with a refuse message', async () => {
    const c = await connect();
    c.send(NATIVE);
    c.send(badHello(Buffer.alloc(7)));
    const msg = decodeRefusal(await c.frame(0));
    expect(msg).toMatchObject({ type: 'refuse', code: 'bad-tid' });
    await expectOnlyThatConnectionClosed(/bad-tid|7 bytes/);
  });

  it('zrs2.1 start tid newer than the primary has', async () => {
    const c = await connect();
    c.send(Buffer.from('zrs2.1'));
    c.send(Buffer.alloc(8, 0xff));
    await expectOnlyThatConnectionClosed(/tid-too-high/);
  });

  it.each(['zrs2.0', 'zrs2.1'])('%s start tid the primary never held, older than its last: refused as diverged, never merged', async (name) => {
    // Tids of one millisecond are consecutive: a commit in the next one leaves a gap before it.
    const last = primary.storage.lastTransaction();
    for (const ms = Date.now(); Date.now() === ms; );
    const [later] = await commitMany(primary.storage, 1);
    const never = tidPlusOne(last); // between two of its transactions, neither of them
    expect(Buffer.compare(never, later!)).toBeLessThan(0);
    const c = await connect();
    c.send(Buffer.from(name));
    c.send(never);
    const entry = await expectOnlyThatConnectionClosed(/diverged/);
    expect(entry.message).toContain(`last transaction ${never.toString('hex')} is not in the primary's history, which holds transactions before and after it`);
    expect(entry.message).toContain('zrs rewind --to-common-with');
  });

  it('zrs2.1 start tid before the primary\'s first transaction: served (nothing shows the primary never held it)', async () => {
    const c = await connect();
    c.send(Buffer.from('zrs2.1'));
    c.send(tidPlusOne(Buffer.alloc(8)));
    await c.frame(0); // the stream began
    expect(logs.count((e) => sessionClosed(e))).toBe(0);
  });

  it('native start tid newer than the primary has: refused with a refuse message', async () => {
    const c = await connect();
    c.send(NATIVE);
    c.send(hello(Buffer.alloc(8, 0xff)));
    const msg = decodeRefusal(await c.frame(0));
    expect(msg).toMatchObject({ type: 'refuse', code: 'tid-too-high' });
    // With the primary's last tid, which the secondary shows as where its upstream stands.
    expect(msg.type === 'refuse' && msg.lastTid).toEqual(primary.storage.lastTransaction());
    await expectOnlyThatConnectionClosed(/tid-too-high/);
  });

  it.each(['zrs2.0', 'zrs2.1'])('any non-empty message after a %s handshake: "Too many messages"', async (name) => {
    const c = await connect();
    c.send(Buffer.from(name));
    c.send(primary.storage.lastTransaction());
    c.send(Buffer.from('hi'));
    await expectOnlyThatConnectionClosed(/Too many messages/);
  });

  it('an unexpected native message after the handshake', async () => {
    const c = await connect();
    c.send(NATIVE);
    c.send(hello(primary.storage.lastTransaction()));
    expect(decodeRefusal(await c.frame(0)).type).toBe('welcome');
    c.send(hello(primary.storage.lastTransaction()));
    await expectOnlyThatConnectionClosed(/unexpected hello/);
  });

  it('a native ack of a tid never sent', async () => {
    const c = await connect();
    c.send(NATIVE);
    c.send(hello(primary.storage.lastTransaction()));
    expect(decodeRefusal(await c.frame(0)).type).toBe('welcome');
    c.send(encodeNative({ type: 'ack', tid: Buffer.alloc(8, 0xff) }, createNativePackr()));
    await expectOnlyThatConnectionClosed(/ack of tid ffffffffffffffff outside/);
  });

  it('a native ack in range shows in the status at once; one going back closes the connection', async () => {
    const [first, second] = (await allTransactions(primary.storage)).map((t) => t.tid);
    const c = await connect();
    c.send(NATIVE);
    c.send(hello(second!));
    expect(decodeRefusal(await c.frame(0)).type).toBe('welcome');
    c.send(encodeNative({ type: 'ack', tid: second! }, createNativePackr()));
    const peer = `${c.socket.localAddress}:${c.socket.localPort}`;
    const acked = await until(() => primary.secondaries().find((s) => s.peer === peer)?.ackedTid, (tid) => tid?.equals(second!) === true);
    expect(acked?.toString('hex')).toBe(second!.toString('hex'));
    c.send(encodeNative({ type: 'ack', tid: first! }, createNativePackr()));
    await expectOnlyThatConnectionClosed(new RegExp(`ack of tid ${first!.toString('hex')} outside`));
  });

  it('empty frames after the handshake are keep-alives: the connection stays and gets live commits', async () => {
    const c = await connect();
    const start = primary.storage.lastTransaction();
    c.send(Buffer.from('zrs2.0'));
    c.send(start);
    for (let i = 0; i < 5; i++) c.send(Buffer.alloc(0));
    const [tid] = await commitMany(primary.storage, 1);
    const parser = new Zrs2StreamParser({ startTid: start, protocol: 'zrs2.0' });
    const events: Zrs2Event[] = [];
    for (let i = 0; !events.some((e) => e.kind === 'commit'); i++) events.push(...parser.push(await c.frame(i)));
    expect(events.at(-1)).toMatchObject({ kind: 'commit', tid });
    for (let i = 0; i < 5; i++) c.send(Buffer.alloc(0));
    const [tid2] = await commitMany(primary.storage, 1);
    await waitForTid(good, tid2!);
    expect(primary.secondaries()).toHaveLength(2);
    expect(logs.count(sessionClosed)).toBe(0);
  });
});


describe('a flood of connections to a primary', () => {
  it('is turned away past maxConnections, logged with a count, while the secondaries served keep replicating; a freed place is taken again', async () => {
    const dir = await tempDir();
    const floodLogs = new LogCollector();
    const p = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, log: floodLogs.log, maxConnections: 3, auditPath: null });
    const idle: FramedSocket[] = [];
    let s: Secondary | null = null;
    try {
      s = await Secondary.open({ path: join(dir, 's.fs'), replicateFrom: p.address, fsync: false, reconnect: FAST_RECONNECT, auditPath: null });
      await waitForTid(s, (await commitMany(p.storage, 1))[0]!);
      // Two connections that never say anything fill the places left.
      for (let i = 0; i < 2; i++) idle.push(await FramedSocket.connect(p.address));
      await settleUntil(() => floodLogs.count((e) => /^connection from/.test(e.message)) === 3);
      const extra = await Promise.all([0, 1, 2].map(() => FramedSocket.connect(p.address)));
      for (const e of extra) await e.waitClosed();
      const warning = await floodLogs.waitFor((e) => e.level === 'warn' && /^turned away/.test(e.message));
      expect(warning.message).toMatch(/^turned away 1 connection\(s\) .*: 3 already open, the most allowed \(maxConnections\)$/);
      // One warning for the three (at most one every 10 s).
      expect(floodLogs.count((e) => /^turned away/.test(e.message))).toBe(1);
      const [tid] = await commitMany(p.storage, 1);
      await waitForTid(s, tid!);
      // A place freed is taken again.
      idle.pop()!.destroy();
      await settleUntil(() => p.secondaries().length === 1 && floodLogs.count((e) => sessionClosed(e)) >= 1);
      const again = await FramedSocket.connect(p.address);
      idle.push(again);
      await settleUntil(() => floodLogs.count((e) => /^connection from/.test(e.message)) === 4);
    } finally {
      for (const i of idle) i.destroy();
      await s?.close();
      await p.close();
    }
  });

  it('counts a connection that was answered but whose peer keeps it open, until its socket closes (it held a descriptor outside the count)', async () => {
    const dir = await tempDir();
    const floodLogs = new LogCollector();
    const p = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, log: floodLogs.log, maxConnections: 2, auditPath: null });
    const peers: FramedSocket[] = [];
    try {
      // Refused (an unknown protocol), then kept open by its peer: the session is over, the socket lingers.
      const lingering = await FramedSocket.connect(p.address);
      peers.push(lingering);
      lingering.send(Buffer.from('no-such-protocol'));
      await settleUntil(() => floodLogs.count((e) => sessionClosed(e)) === 1);
      peers.push(await FramedSocket.connect(p.address));
      await settleUntil(() => floodLogs.count((e) => /^connection from/.test(e.message)) === 2);
      const extra = await FramedSocket.connect(p.address);
      await extra.waitClosed();
      await floodLogs.waitFor((e) => e.level === 'warn' && /^turned away 1 connection\(s\) .*: 2 already open/.test(e.message));
      // Once the lingering socket closes, its place is free again: a probe is taken (logged), not closed at once.
      lingering.destroy();
      await lingering.closed;
      const taken = (): number => floodLogs.count((e) => /^connection from/.test(e.message));
      for (let tries = 0; taken() < 3; tries++) {
        expect(tries, 'the freed place was never taken').toBeLessThan(50);
        const probe = await FramedSocket.connect(p.address);
        peers.push(probe);
        let gone = false;
        void probe.closed.then(() => (gone = true));
        await settleUntil(() => gone || taken() === 3);
      }
    } finally {
      for (const peer of peers) peer.destroy();
      await p.close();
    }
  });

  it('logs connections turned away after a warning once 10 s have passed, with their count (simulated network, virtual clock)', async () => {
    const clock = new VirtualClock();
    const net = new SimNetwork({ clock, random: seededRandom(3), latencyMs: { min: 1, max: 1 } });
    const storage = await FileStorage.open(join(await tempDir(), 'p.fs'), { create: true, fsync: false });
    const lines: string[] = [];
    const server = await ReplicationServer.start({ storage, address: { kind: 'tcp', host: 'p', port: 5000 }, transport: net.transport('p'), clock, log: (_level, message) => void lines.push(message), maxConnections: 1 });
    try {
      const connect = async (): Promise<void> => {
        let done = false;
        const connecting = net.transport('x').connect(server.address).finally(() => (done = true));
        for (let i = 0; i < 100 && !done; i++) {
          clock.runNext();
          await new Promise((r) => setImmediate(r));
        }
        await connecting;
      };
      await connect(); // served
      for (let i = 0; i < 4; i++) await connect(); // turned away: the first logged at once, three held
      clock.advance(1000);
      expect(lines.filter((l) => l.startsWith('turned away'))).toEqual([expect.stringMatching(/^turned away 1 connection\(s\)/)]);
      clock.advance(9000);
      expect(lines.filter((l) => l.startsWith('turned away'))).toEqual([expect.stringMatching(/^turned away 1 /), expect.stringMatching(/^turned away 3 connection\(s\)/)]);
      // One more, held for the interval, is told when the server closes rather than dropped.
      await connect();
      await server.close();
      expect(lines.filter((l) => l.startsWith('turned away')).at(-1)).toMatch(/^turned away 1 connection\(s\)/);
      expect(lines.filter((l) => l.startsWith('turned away'))).toHaveLength(3);
    } finally {
      await server.close();
      await storage.close();
    }
  });

  it.each([-1, Number.NaN, 86_400_001])('refuses a heartbeatIntervalMs of %s (a negative one fired at once, over and over)', async (heartbeatIntervalMs) => {
    const dir = await tempDir();
    await expect(Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, heartbeatIntervalMs, auditPath: null })).rejects.toThrow(
      `heartbeatIntervalMs must be a number of ms from 0 (no heartbeats) to 86400000, not ${heartbeatIntervalMs}`,
    );
  });

  it.each([
    [{ syncReplicas: -1 }, /syncReplicas must be a non-negative integer/],
    [{ syncTimeoutMs: 0 }, /syncTimeoutMs must be a positive number/],
    [{ sendShare: 2 }, /sendShare must be in \(0, 1\]/],
  ])('refuses %j as a ZrsError, as every other option', async (option, message) => {
    const dir = await tempDir();
    const opening = Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, auditPath: null, ...option });
    await expect(opening).rejects.toBeInstanceOf(ZrsError);
    await expect(opening).rejects.toThrow(message);
  });

  it('that fails after it started listening leaves nothing listening: the same address opens again', async () => {
    const dir = await tempDir();
    const address = join(dir, 'p.sock');
    // A logger that is not a function: the first line after the listen throws.
    const broken = Primary.open({ path: join(dir, 'p.fs'), replicateTo: address, fsync: false, auditPath: null, log: {} as never });
    await expect(broken).rejects.toBeInstanceOf(TypeError);
    const again = await Primary.open({ path: join(dir, 'p.fs'), replicateTo: address, fsync: false, auditPath: null });
    await again.close();
  });

  it('refuses a maxConnections under 1', async () => {
    const dir = await tempDir();
    await expect(Primary.open({ path: join(dir, 'p.fs'), replicateTo: '127.0.0.1:0', fsync: false, maxConnections: 0, auditPath: null })).rejects.toThrow(
      'maxConnections must be a whole number of at least 1, not 0',
    );
  });
});

describe('a secondary that stops reading', () => {
  it('gets no heartbeats piled up in its socket while it takes nothing (they grew its buffer without bound)', async () => {
    const clock = new VirtualClock();
    const storage = await FileStorage.open(join(await tempDir(), 'p.fs'), { create: true, fsync: false });
    let handlers: ByteStreamHandlers | null = null;
    const written: Buffer[] = [];
    let full = false;
    const stream: ByteStream = {
      peer: 'reader that stopped',
      write: (chunk) => (written.push(Buffer.from(chunk)), !full),
      pause: () => undefined,
      resume: () => undefined,
      end: () => undefined,
      destroy: () => handlers?.close(),
      setHandlers: (h) => void (handlers = h),
    };
    let accept: ((s: ByteStream) => void) | null = null;
    const transport: Transport = {
      connect: () => Promise.reject(new Error('not used')),
      listen: async (address, onStream) => ((accept = onStream), { address, close: async () => undefined }),
    };
    const server = await ReplicationServer.start({ storage, address: { kind: 'tcp', host: 'p', port: 1 }, transport, clock, log: () => undefined, heartbeatIntervalMs: 10 });
    try {
      accept!(stream);
      handlers!.data(encodeFrame(nativeProtocolName()));
      handlers!.data(encodeFrame(encodeNative({ type: 'hello', startTid: Buffer.alloc(8), generations: [], options: { blobs: false } }, createNativePackr())));
      const heartbeats = (): number => written.filter((w) => decodeNative(w.subarray(4), createNativeUnpackr(), 'primary').type === 'heartbeat').length;
      for (let i = 0; i < 50 && heartbeats() < 2; i++) {
        clock.advance(10);
        await new Promise((r) => setImmediate(r));
      }
      expect(heartbeats()).toBe(2);
      // From here on the socket takes nothing: one more heartbeat fills it, then none is queued.
      full = true;
      for (let i = 0; i < 100; i++) {
        clock.advance(10);
        await new Promise((r) => setImmediate(r));
      }
      expect(heartbeats()).toBe(3);
    } finally {
      handlers!.close();
      await server.close();
      await storage.close();
    }
  });
});
