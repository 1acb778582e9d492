// Helpers for the zc.zrs interop tests: load the recorded transcripts
// (failing loudly when one is missing), a fake zc.zrs primary that replays a
// recorded stream over loopback, a raw zrs2 client, and a copy of a fixture's
// history up to a tid (FileStorage iterator + restore).

import { copyFile, readdir, readFile, stat } from 'node:fs/promises';
import { createServer, connect, type AddressInfo, type Server, type Socket } from 'node:net';
import { join, relative } from 'node:path';
import { FileStorage } from '../../src/storage/FileStorage.js';
import { isBlobRecord } from '../../src/replication/protocols.js';
import { encodeFrame, FrameDecoder, MAX_FRAME_BYTES_LIMIT } from '../../src/wire/framing.js';
import { decodeMessage, encodeMessage, Zrs2Checksum } from '../../src/wire/zrs2.js';
import { fixturePath, tempDir } from '../helpers/fixtures.js';

/** A scenario's `.json` (only the fields the tests use are typed). */
export interface TranscriptJson {
  scenario: string;
  protocol: string;
  start_tid: string;
  sent: string[];
  closed_by_primary: boolean;
  received_bytes: number;
  primary_lastTransaction: string;
  primary_log: string[];
  [k: string]: unknown;
}

export function zrsFixture(name: string): string {
  return fixturePath('zrs-protocol', name);
}

export async function readBin(name: string): Promise<Buffer> {
  return readFile(zrsFixture(name));
}

export async function readTranscriptJson<T = TranscriptJson>(name: string): Promise<T> {
  return JSON.parse(await readFile(zrsFixture(name), 'utf8')) as T;
}

/** The handshake bytes a transcript's client sent, concatenated (frames are already framed hex). */
export function sentBytes(t: { sent: string[] }): Buffer {
  return Buffer.concat(t.sent.map((h) => Buffer.from(h, 'hex')));
}

/** A seeded PRNG (mulberry32), so random chunkings can be reproduced from the printed seed. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export type Chunking = { kind: 'whole' } | { kind: 'small'; max: number; seed: number } | { kind: 'random'; max: number; seed: number };

export function describeChunking(c: Chunking): string {
  return c.kind === 'whole' ? 'whole' : `${c.kind} (1..${c.max} bytes, seed ${c.seed})`;
}

/** Split `bytes` into the chunks a fake primary writes. */
export function chunk(bytes: Buffer, c: Chunking): Buffer[] {
  if (c.kind === 'whole') return [bytes];
  const rnd = prng(c.seed);
  const out: Buffer[] = [];
  for (let pos = 0; pos < bytes.length; ) {
    const n = 1 + Math.floor(rnd() * c.max);
    out.push(bytes.subarray(pos, pos + n));
    pos += n;
  }
  return out;
}

export interface FakeConnection {
  socket: Socket;
  /** The first `expectedHandshake.length` bytes the secondary sent. */
  handshake: Promise<Buffer>;
}

export interface FakePrimary {
  port: number;
  address: string;
  /** One entry per accepted connection, in order. */
  connections: FakeConnection[];
  /** Resolves with the n-th (0-based) connection once it is accepted. */
  connection(n: number): Promise<FakeConnection>;
  close(): Promise<void>;
}

/**
 * A raw socket server standing in for a zc.zrs primary: for each connection it reads the
 * secondary's handshake (as many bytes as `handshakeBytes`), then calls `serve`, which usually
 * writes a recorded stream. The connection stays open afterwards, as a caught-up zc.zrs primary's does.
 */
export async function startFakePrimary(
  handshakeBytes: number,
  serve: (conn: FakeConnection, index: number, handshake: Buffer) => Promise<void> | void,
): Promise<FakePrimary> {
  const connections: FakeConnection[] = [];
  const waiters: Array<{ n: number; resolve: (c: FakeConnection) => void }> = [];
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.setNoDelay(true);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    const index = connections.length;
    let got = Buffer.alloc(0);
    const handshake = new Promise<Buffer>((resolve, reject) => {
      const onData = (d: Buffer): void => {
        got = Buffer.concat([got, d]);
        if (got.length >= handshakeBytes) {
          socket.off('data', onData);
          resolve(got.subarray(0, handshakeBytes));
        }
      };
      socket.on('data', onData);
      socket.once('close', () => reject(new Error(`connection ${index} closed after ${got.length} handshake bytes`)));
    });
    handshake.catch(() => undefined);
    const conn: FakeConnection = { socket, handshake };
    connections.push(conn);
    for (const w of waiters.filter((w) => w.n === index)) w.resolve(conn);
    void handshake.then((h) => serve(conn, index, h)).catch(() => undefined);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    port,
    address: `127.0.0.1:${port}`,
    connections,
    connection: (n) =>
      connections[n] ? Promise.resolve(connections[n]!) : new Promise<FakeConnection>((resolve) => waiters.push({ n, resolve })),
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** Write chunks one by one, yielding to the event loop between them so they arrive apart. */
export async function writeChunks(socket: Socket, chunks: Buffer[]): Promise<void> {
  for (const c of chunks) {
    if (socket.destroyed) return;
    if (!socket.write(c)) await new Promise<void>((resolve) => socket.once('drain', resolve));
    else if (chunks.length > 1) await new Promise<void>((resolve) => setImmediate(resolve));
  }
}

export interface RawResult {
  data: Buffer;
  /** True when the peer closed (or reset) the connection. */
  closed: boolean;
}

/**
 * A raw zrs2 client: connect, write `send`, then collect what the primary sends until
 * `until(data)` holds, the peer closes, or `timeoutMs` passes (then it rejects, with what it has).
 */
export function rawClient(port: number): {
  socket: Socket;
  send(bytes: Buffer): void;
  read(until: (data: Buffer, closed: boolean) => boolean, timeoutMs?: number): Promise<RawResult>;
  data(): Buffer;
  close(): void;
} {
  const socket = connect({ host: '127.0.0.1', port });
  socket.setNoDelay(true);
  const chunks: Buffer[] = [];
  let size = 0;
  let closed = false;
  const listeners = new Set<() => void>();
  const notify = (): void => {
    for (const l of [...listeners]) l();
  };
  socket.on('data', (d: Buffer) => {
    chunks.push(d);
    size += d.length;
    notify();
  });
  socket.on('error', () => undefined);
  socket.on('close', () => {
    closed = true;
    notify();
  });
  const data = (): Buffer => (chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size));
  return {
    socket,
    send: (bytes) => void socket.write(bytes),
    data,
    read: (until, timeoutMs = 20_000) =>
      new Promise<RawResult>((resolve, reject) => {
        const check = (): void => {
          const d = data();
          if (until(d, closed) || closed) {
            finish();
            resolve({ data: d, closed });
          }
        };
        const timer = setTimeout(() => {
          finish();
          reject(new Error(`raw client: timed out after ${timeoutMs} ms with ${size} bytes, closed=${closed}`));
        }, timeoutMs);
        const finish = (): void => {
          clearTimeout(timer);
          listeners.delete(check);
        };
        listeners.add(check);
        check();
      }),
    close: () => socket.destroy(),
  };
}

/**
 * Copy `source`'s transactions with tid <= `upTo` into a new FileStorage at `dest` (with blobs when
 * both have a blob directory), as zc.zrs's secondary would have written them.
 */
export async function copyHistoryUpTo(source: FileStorage, dest: string, upTo: Buffer, destBlobDir?: string): Promise<void> {
  const out = await FileStorage.open(dest, { create: true, blobDir: destBlobDir, fsync: false });
  const scratch = destBlobDir ? await tempDir('zrs-interop-blobcopy-') : null;
  try {
    let n = 0;
    for await (const t of source.iterator()) {
      if (Buffer.compare(t.tid, upTo) > 0) break;
      const meta = { user: t.user, description: t.description, extensionBytes: t.extensionBytes };
      await out.tpcBegin(meta, { tid: t.tid, status: t.status });
      for (const r of t.records) {
        if (scratch && source.blobs && isBlobRecord(r.data)) {
          const tmp = join(scratch, `${n++}.blob`);
          await copyFile(await source.loadBlob(r.oid, t.tid), tmp);
          await out.restoreBlob(r.oid, t.tid, r.data, tmp, r.dataTxn, meta);
        } else out.restore(r.oid, t.tid, r.data, r.dataTxn, meta);
      }
      await out.tpcVote(meta);
      await out.tpcFinish(meta);
    }
  } finally {
    await out.close();
  }
}

/** Every file under `dir`, as relative path -> content (for blob directory comparisons). */
export async function filesUnder(dir: string): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  const walk = async (d: string): Promise<void> => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else if ((await stat(p)).isFile()) out.set(relative(dir, p), await readFile(p));
    }
  };
  await walk(dir);
  return out;
}

/** A log collector to pass as `log`. */
export function logCollector(): {
  log: (level: string, message: string, fields?: Record<string, unknown>) => void;
  lines: Array<{ level: string; message: string; fields?: Record<string, unknown> }>;
} {
  const lines: Array<{ level: string; message: string; fields?: Record<string, unknown> }> = [];
  return { log: (level, message, fields) => void lines.push({ level, message, fields }), lines };
}

/** One transaction of a recorded zrs2 stream: its frame payloads (T … C), in order. */
export interface StreamTransaction {
  tid: Buffer;
  /** Payloads, each with whether it is a control message (T, S, B, C) or raw data. */
  frames: Array<{ payload: Buffer; control: boolean }>;
}

/** Split a recorded primary->secondary stream into transactions (no checksum check). */
export function splitTransactions(bin: Buffer): StreamTransaction[] {
  const payloads = new FrameDecoder({ maxFrameBytes: MAX_FRAME_BYTES_LIMIT }).push(bin);
  const out: StreamTransaction[] = [];
  let rawToFollow = 0;
  for (const payload of payloads) {
    const p = Buffer.from(payload);
    if (rawToFollow > 0) {
      rawToFollow -= 1;
      out.at(-1)!.frames.push({ payload: p, control: false });
      continue;
    }
    const m = decodeMessage(p);
    if (m.type === 'T') out.push({ tid: m.tid, frames: [] });
    out.at(-1)!.frames.push({ payload: p, control: true });
    if (m.type === 'S') rawToFollow = 1;
    if (m.type === 'B') rawToFollow = 1 + m.blocks;
  }
  return out;
}

/**
 * The stream a zc.zrs primary sends for `txns` to a secondary that sent `startTid`: the recorded
 * payloads with every C message recomputed for the new md5 seed.
 */
export function restream(txns: StreamTransaction[], startTid: Buffer): Buffer {
  const sum = new Zrs2Checksum(startTid);
  const out: Buffer[] = [];
  for (const t of txns) {
    for (const f of t.frames) {
      let payload = f.payload;
      if (f.control && decodeMessage(payload).type === 'C') payload = encodeMessage({ type: 'C', digest: sum.digest() });
      sum.update(payload);
      out.push(encodeFrame(payload));
    }
  }
  return Buffer.concat(out);
}

/** Frame payloads back into bytes, unchanged. */
export function framed(payloads: Buffer[]): Buffer {
  return Buffer.concat(payloads.map((p) => encodeFrame(p)));
}
